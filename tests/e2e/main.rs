//! End-to-end tests: the real `skiff` binary, the real kubectl, a real etcd. Every scenario runs once per
//! store backend (the `scenarios!` macro at the bottom), so both backends meet the same Kubernetes
//! behaviour.

mod abuse;
mod abuse_http;
mod audit;
mod autoscaling;
mod confinement;
mod connections;
mod containers;
mod deployments;
mod emptydir;
mod encryption;
mod etcd_tls;
mod exec;
mod ha;
mod harness;
mod identity;
mod incluster;
mod ingress;
mod kubelet;
mod lifecycle;
mod limitranges;
mod metrics;
mod multinode;
mod network;
mod networkpolicy;
mod node;
mod podsecurity;
mod portforward;
mod rbac;
mod scaletozero;
mod scheduling;
mod serviceaccounts;
mod services;
mod testnet;

use std::process::Stdio;
use std::time::{Duration, Instant};

use abuse::abuse_is_refused_and_the_server_stays_small;
use autoscaling::hpa_autoscale_serves_both_versions_and_reports_missing_metrics;
use encryption::encryption_at_rest_hides_secrets_and_rotates_keys;
use harness::{Backend, Cluster};
use podsecurity::pod_security_admits_pods_by_their_namespace_level;
use rbac::rbac_grants_users_exactly_what_they_were_given;
use serde_json::Value;
use serviceaccounts::service_accounts_get_tokens_and_pods_get_credentials;
use services::services_track_pods_and_allocate_ports;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1.0
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: production
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).expect("kubectl printed JSON")
}

fn api_resources_and_get_all(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let resources = cluster.ok(&["api-resources"]);
    for (name, short) in [
        ("namespaces", "ns"),
        ("nodes", "no"),
        ("pods", "po"),
        ("services", "svc"),
        ("endpoints", "ep"),
        ("configmaps", "cm"),
        ("serviceaccounts", "sa"),
        ("events", "ev"),
        ("deployments", "deploy"),
        ("replicasets", "rs"),
        ("daemonsets", "ds"),
    ] {
        let line = resources
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} listed:\n{resources}"));
        assert!(line.split_whitespace().nth(1) == Some(short), "{name} has short name {short}: {line}");
    }
    for name in ["secrets", "jobs", "leases", "runtimeclasses"] {
        assert!(resources.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} listed:\n{resources}");
    }
    cluster.ok(&["create", "deployment", "web", "--image=registry.local/web:1"]);
    let all = cluster.ok(&["get", "all"]);
    assert!(all.contains("deployment.apps/web"), "get all shows the deployment:\n{all}");
    let namespaces = cluster.ok(&["get", "ns"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(ns), "{ns} exists from the start:\n{namespaces}");
    }
}

fn apply_diff_and_server_side_apply(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let path = cluster.write_file("shop.yaml", MANIFEST);
    let path = path.to_str().unwrap();
    let created = cluster.ok(&["apply", "-f", path]);
    for object in ["namespace/shop", "configmap/settings", "secret/creds", "deployment.apps/web", "service/web"] {
        assert!(created.contains(&format!("{object} created")), "{object} created:\n{created}");
    }
    let again = cluster.ok(&["apply", "-f", path]);
    assert_eq!(again.matches("unchanged").count(), 5, "everything unchanged:\n{again}");

    let changed = MANIFEST.replace("color: blue", "color: green");
    let changed_path = cluster.write_file("shop-green.yaml", &changed);
    let changed_path = changed_path.to_str().unwrap();
    let diff = cluster.kubectl(&["diff", "-f", changed_path]);
    let diff_text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff exits 1 when something changes: {diff_text} {}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(
        diff_text.contains("-  color: blue") && diff_text.contains("+  color: green"),
        "diff shows the change:\n{diff_text}"
    );
    assert_eq!(
        cluster.ok(&["get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data.color}"]),
        "blue",
        "diff changes nothing"
    );

    let configured = cluster.ok(&["apply", "-f", changed_path]);
    assert!(configured.contains("configmap/settings configured"), "{configured}");
    assert_eq!(configured.matches("unchanged").count(), 4, "only the configmap changed:\n{configured}");
    assert_eq!(cluster.ok(&["get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data.color}"]), "green");
    let deployment = json(&cluster, &["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    assert_eq!(deployment["metadata"]["generation"], 1, "the deployment was not rewritten");

    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  size: small\n";
    let out = cluster.with_stdin(&["apply", "--server-side", "-f", "-"], ssa);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap/ssa serverside-applied"));
    let out = cluster.with_stdin(&["apply", "--server-side", "-f", "-"], &ssa.replace("small", "large"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cm = json(&cluster, &["get", "cm", "ssa", "-n", "shop", "-o", "json", "--show-managed-fields"]);
    assert_eq!(cm["data"]["size"], "large");
    let managers: Vec<&str> =
        cm["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"kubectl"), "server-side apply records its field manager: {managers:?}");
}

fn create_get_and_edit_commands(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    cluster.ok(&["create", "namespace", "team"]);
    cluster.ok(&["create", "configmap", "app-config", "-n", "team", "--from-literal=level=debug"]);
    cluster.ok(&["create", "secret", "generic", "app-secret", "-n", "team", "--from-literal=token=s3cret"]);
    cluster.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "team",
        "--image=registry.local/api:2.1",
        "--replicas=3",
        "--port=8080",
    ]);

    let secret = json(&cluster, &["get", "secret", "app-secret", "-n", "team", "-o", "json"]);
    assert_eq!(secret["data"]["token"], "czNjcmV0", "secret data is base64 of the literal");
    let yaml = cluster.ok(&["get", "configmap", "app-config", "-n", "team", "-o", "yaml"]);
    assert!(yaml.contains("level: debug"), "{yaml}");
    assert_eq!(cluster.ok(&["get", "deploy", "-n", "team", "-o", "name"]).trim(), "deployment.apps/api");
    assert_eq!(cluster.ok(&["get", "deploy", "api", "-n", "team", "-o", "jsonpath={.spec.replicas}"]), "3");
    let wide = cluster.ok(&["get", "deploy", "-n", "team", "-o", "wide"]);
    assert!(wide.contains("CONTAINERS") && wide.contains("registry.local/api:2.1"), "{wide}");
    let table = cluster.ok(&["get", "deploy", "-n", "team"]);
    assert!(table.starts_with("NAME") && table.contains("READY") && table.contains("UP-TO-DATE"), "{table}");
    let everywhere = cluster.ok(&["get", "configmaps", "-A"]);
    assert!(
        everywhere.contains("NAMESPACE") && everywhere.contains("team") && everywhere.contains("app-config"),
        "{everywhere}"
    );

    cluster.ok(&["label", "configmap", "app-config", "-n", "team", "tier=backend"]);
    cluster.ok(&["annotate", "configmap", "app-config", "-n", "team", "owner=alice"]);
    let labelled = cluster.ok(&["get", "cm", "-n", "team", "-l", "tier=backend", "--show-labels"]);
    assert!(labelled.contains("app-config") && labelled.contains("tier=backend"), "{labelled}");
    assert!(!cluster.ok(&["get", "cm", "-n", "team", "-l", "tier notin (backend)"]).contains("app-config"));
    assert_eq!(
        cluster.ok(&["get", "cm", "app-config", "-n", "team", "-o", "jsonpath={.metadata.annotations.owner}"]),
        "alice"
    );

    let described = cluster.ok(&["describe", "deployment", "api", "-n", "team"]);
    assert!(described.contains("Replicas:") && described.contains("registry.local/api:2.1"), "{described}");

    let editor = cluster.write_file("editor.sh", "#!/bin/sh\nsed -i 's/level: debug/level: trace/' \"$1\"\n");
    std::process::Command::new("chmod").arg("+x").arg(&editor).status().unwrap();
    let out = cluster
        .kubectl_command(&["edit", "configmap", "app-config", "-n", "team"])
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(out.status.success(), "edit: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cluster.ok(&["get", "cm", "app-config", "-n", "team", "-o", "jsonpath={.data.level}"]), "trace");

    cluster.ok(&["patch", "cm", "app-config", "-n", "team", "--type=merge", "-p", r#"{"data":{"merged":"yes"}}"#]);
    cluster.ok(&[
        "patch",
        "cm",
        "app-config",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/json","value":"yes"}]"#,
    ]);
    cluster.ok(&[
        "patch",
        "deploy",
        "api",
        "-n",
        "team",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"api","image":"registry.local/api:2.2"}]}}}}"#,
    ]);
    let cm = json(&cluster, &["get", "cm", "app-config", "-n", "team", "-o", "json"]);
    assert_eq!((cm["data"]["merged"].as_str(), cm["data"]["json"].as_str()), (Some("yes"), Some("yes")));
    let deploy = json(&cluster, &["get", "deploy", "api", "-n", "team", "-o", "json"]);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.local/api:2.2", "strategic merge by container name");
    assert_eq!(container["ports"][0]["containerPort"], 8080, "strategic merge kept the rest of the container");
    assert_eq!(deploy["metadata"]["generation"], 2, "a spec change bumps generation");

    cluster.ok(&["scale", "deployment", "api", "-n", "team", "--replicas=5"]);
    assert_eq!(cluster.ok(&["get", "deploy", "api", "-n", "team", "-o", "jsonpath={.spec.replicas}"]), "5");

    cluster.ok(&["create", "configmap", "a", "-n", "team", "--from-literal=x=1"]);
    cluster.ok(&["create", "configmap", "b", "-n", "team", "--from-literal=x=1"]);
    cluster.ok(&["label", "cm", "a", "b", "-n", "team", "batch=old"]);
    cluster.ok(&["delete", "cm", "app-config", "-n", "team"]);
    cluster.ok(&["delete", "cm", "-n", "team", "-l", "batch=old"]);
    let left = cluster.ok(&["get", "cm", "-n", "team", "-o", "name"]);
    assert!(!left.contains("app-config") && !left.contains("configmap/a") && !left.contains("configmap/b"), "{left}");
    cluster.ok(&["delete", "namespace", "team", "--timeout=60s"]);
    let gone = cluster.kubectl(&["get", "deploy", "api", "-n", "team"]);
    assert!(!gone.status.success(), "contents of a deleted namespace are gone");
    assert!(cluster.fails(&["get", "ns", "team"]).contains("namespaces \"team\" not found"));
}

fn watch_sees_another_clients_create(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let mut watcher = cluster
        .kubectl_command(&["get", "pods", "-w", "--request-timeout=60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = harness::lines(watcher.stdout.take().unwrap());
    // Give the watch time to be established before the create, so the event comes from the watch.
    std::thread::sleep(Duration::from_millis(1500));
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: watched\nspec:\n  containers:\n  - name: c\n    image: registry.local/app:1\n";
    let out = cluster.with_stdin(&["create", "-f", "-"], pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with("watched") {
                stop(&mut watcher);
                assert!(line.contains("Pending"), "the watch prints a table row: {line}");
                return;
            }
            seen.push(line);
        }
    }
    stop(&mut watcher);
    panic!("kubectl get pods -w did not print the new pod; saw {seen:?}");
}

fn conflicts_and_invalid_objects(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    cluster.ok(&["create", "configmap", "shared", "--from-literal=v=1"]);
    let stale = cluster.ok(&["get", "cm", "shared", "-o", "json"]);
    cluster.ok(&["patch", "cm", "shared", "--type=merge", "-p", r#"{"data":{"v":"2"}}"#]);
    let out = cluster.with_stdin(&["replace", "-f", "-"], &stale.replace("\"v\": \"1\"", "\"v\": \"3\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the object has been modified"),
        "stale PUT is a conflict: {stderr}"
    );
    assert_eq!(cluster.ok(&["get", "cm", "shared", "-o", "jsonpath={.data.v}"]), "2", "the object is unchanged");

    let http = cluster.http();
    let mut body: Value = serde_json::from_str(&stale).unwrap();
    body["data"]["v"] = "4".into();
    let response =
        http.request(reqwest::Method::PUT, "/api/v1/namespaces/default/configmaps/shared").json(&body).send().unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let status: Value = response.json().unwrap();
    assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("Conflict")));

    let invalid = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: Bad_Name
spec:
  replicas: -1
  selector:
    matchLabels: {app: one}
  template:
    metadata:
      labels: {app: two}
    spec:
      containers:
      - name: c
"#;
    let out = cluster.with_stdin(&["create", "-f", "-"], invalid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is invalid"), "{stderr}");
    for field in
        ["metadata.name", "spec.replicas", "spec.template.metadata.labels", "spec.template.spec.containers[0].image"]
    {
        assert!(stderr.contains(field), "422 names {field}: {stderr}");
    }
    let response = http
        .request(reqwest::Method::POST, "/apis/apps/v1/namespaces/default/deployments")
        .header("content-type", "application/yaml")
        .body(invalid)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let status: Value = response.json().unwrap();
    assert!(status["details"]["causes"].as_array().is_some_and(|c| c.len() >= 4), "one cause per field: {status}");
    assert!(cluster.ok(&["get", "deploy", "-o", "name"]).is_empty(), "nothing was written");

    cluster.ok(&["create", "deployment", "good", "--image=registry.local/x:1"]);
    // The controllers write the deployment's status and revision annotation meanwhile; the spec is the user's.
    let spec = |cluster: &Cluster| {
        let deployment = json(cluster, &["get", "deploy", "good", "-o", "json"]);
        (deployment["spec"].clone(), deployment["metadata"]["generation"].clone())
    };
    let before = spec(&cluster);
    let broken = cluster.with_stdin(
        &["patch", "deploy", "good", "--type=merge", "-p", r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#],
        "",
    );
    assert!(!broken.status.success(), "an immutable field cannot change");
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("field is immutable"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    assert_eq!(spec(&cluster), before, "the object is unchanged");
}

fn raw_http_errors_are_statuses(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let http = cluster.http();
    let anonymous = http.client.get(format!("{}/api/v1/namespaces", http.base)).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(anonymous.json::<Value>().unwrap()["reason"], "Unauthorized");
    let version: Value = http.client.get(format!("{}/version", http.base)).send().unwrap().json().unwrap();
    assert_eq!((version["major"].as_str(), version["minor"].as_str()), (Some("1"), Some("33")));

    let path = "/api/v1/namespaces/default/configmaps";
    let malformed = http
        .request(reqwest::Method::POST, path)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let unknown_type =
        http.request(reqwest::Method::POST, path).header("content-type", "text/csv").body("a,b").send().unwrap();
    assert_eq!(unknown_type.status().as_u16(), 415);
    let huge = format!(r#"{{"metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#, "a".repeat(4 * 1024 * 1024));
    let too_large =
        http.request(reqwest::Method::POST, path).header("content-type", "application/json").body(huge).send().unwrap();
    assert_eq!(too_large.status().as_u16(), 413);
    let missing = http.request(reqwest::Method::GET, "/api/v1/namespaces/default/configmaps/nope").send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(missing.json::<Value>().unwrap()["message"], "configmaps \"nope\" not found");
    let no_namespace = http
        .request(reqwest::Method::POST, "/api/v1/namespaces/ghost/configmaps")
        .json(&serde_json::json!({"metadata": {"name": "x"}}))
        .send()
        .unwrap();
    assert_eq!(no_namespace.status().as_u16(), 404, "namespaces must exist");
    let strict = http
        .request(reqwest::Method::POST, &format!("{path}?fieldValidation=Strict"))
        .json(&serde_json::json!({"metadata": {"name": "x"}, "dataz": {}}))
        .send()
        .unwrap();
    assert_eq!(strict.status().as_u16(), 400);
    assert!(strict.text().unwrap().contains("unknown field \\\"dataz\\\""));
    let warned = http
        .request(reqwest::Method::POST, &format!("{path}?fieldValidation=Warn"))
        .json(&serde_json::json!({"metadata": {"name": "warned"}, "dataz": {}}))
        .send()
        .unwrap();
    assert_eq!(warned.status().as_u16(), 201);
    assert!(warned.headers().get("warning").is_some_and(|w| w.to_str().unwrap().contains("dataz")));
    let dry = http
        .request(reqwest::Method::POST, &format!("{path}?dryRun=All"))
        .json(&serde_json::json!({"metadata": {"name": "dry"}}))
        .send()
        .unwrap();
    assert_eq!(dry.status().as_u16(), 201);
    assert_eq!(
        http.request(reqwest::Method::GET, &format!("{path}/dry")).send().unwrap().status().as_u16(),
        404,
        "dry run writes nothing"
    );
}

fn sigterm_drains_and_exits(backend: Backend) {
    let mut cluster = Cluster::start(backend).unwrap();
    let mut watcher =
        cluster.kubectl_command(&["get", "cm", "-w"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = cluster.terminate().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(started.elapsed() < Duration::from_secs(10), "open watches do not hold the shutdown");
    stop(&mut watcher);
    assert!(cluster.server_log().contains("all connections closed"), "{}", cluster.server_log());
}

fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let mut cluster = Cluster::start(backend).unwrap();
    let http = std::sync::Arc::new(cluster.http());
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (http, acknowledged) = (http.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let name = format!("w{writer}-{i}");
                    let body = serde_json::json!({"metadata": {"name": name}, "data": {"i": i.to_string()}});
                    match http
                        .request(reqwest::Method::POST, "/api/v1/namespaces/default/configmaps")
                        .json(&body)
                        .send()
                    {
                        Ok(r) if r.status().as_u16() == 201 => acknowledged.lock().unwrap().push(name),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill();
    for writer in writers {
        writer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "writes were acknowledged before the kill: {}", acknowledged.len());
    cluster.launch().unwrap();
    let names = cluster.ok(&["get", "cm", "-o", "name"]);
    let present: std::collections::HashSet<&str> = names.lines().filter_map(|l| l.strip_prefix("configmap/")).collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|n| !present.contains(n.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

fn paging_watch_replay_and_finalizers(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let http = cluster.http();
    let path = "/api/v1/namespaces/default/configmaps";
    let mut revisions = Vec::new();
    for i in 0..5 {
        let body = serde_json::json!({"metadata": {"generateName": "page-", "labels": {"i": i.to_string()}}});
        let created: Value = http.request(reqwest::Method::POST, path).json(&body).send().unwrap().json().unwrap();
        assert!(created["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("page-") && n.len() == 10));
        revisions.push(created["metadata"]["resourceVersion"].as_str().unwrap().to_string());
    }
    let mut names = Vec::new();
    let mut next = format!("{path}?limit=2");
    loop {
        let page: Value = http.request(reqwest::Method::GET, &next).send().unwrap().json().unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "a page holds at most limit items");
        names.extend(items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        match page["metadata"]["continue"].as_str() {
            Some(token) => next = format!("{path}?limit=2&continue={token}"),
            None => break,
        }
    }
    // Every namespace also holds the cluster's `kube-root-ca.crt`.
    names.retain(|name| name.starts_with("page-"));
    assert_eq!(names.len(), 5, "paging returns every object once: {names:?}");
    let selected: Value = http
        .request(reqwest::Method::GET, &format!("{path}?labelSelector=i%20in%20(1,3)"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(selected["items"].as_array().unwrap().len(), 2);

    // A watch from the second create's resourceVersion replays the three creates after it, then ends at
    // timeoutSeconds.
    let started = Instant::now();
    let watch = http
        .request(reqwest::Method::GET, &format!("{path}?watch=true&resourceVersion={}&timeoutSeconds=2", revisions[1]))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the watch ends at its timeout");
    let events: Vec<Value> = watch.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let replayed: Vec<&str> =
        events.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap()).collect();
    assert_eq!(replayed, revisions[2..].iter().map(String::as_str).collect::<Vec<_>>(), "replay in order: {watch}");
    assert!(events.iter().all(|e| e["type"] == "ADDED"));

    // Finalizers hold a delete until they are removed.
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n";
    assert!(cluster.with_stdin(&["create", "-f", "-"], held).status.success());
    cluster.ok(&["delete", "cm", "held", "--wait=false"]);
    let pending = json(&cluster, &["get", "cm", "held", "-o", "json"]);
    assert!(pending["metadata"]["deletionTimestamp"].is_string(), "marked for deletion: {pending}");
    cluster.ok(&["patch", "cm", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(cluster.fails(&["get", "cm", "held"]).contains("not found"), "gone once the finalizer is removed");

    // Foreground propagation is recorded for the garbage collector, which removes its finalizer once the
    // dependents are gone; a finalizer of the test's own holds the object so both steps can be seen.
    cluster.ok(&["create", "deployment", "fg", "--image=registry.local/x:1"]);
    cluster.ok(&["patch", "deployment", "fg", "--type=merge", "-p", r#"{"metadata":{"finalizers":["test/hold"]}}"#]);
    cluster.ok(&["delete", "deployment", "fg", "--cascade=foreground", "--wait=false"]);
    let deleting = json(&cluster, &["get", "deployment", "fg", "-o", "json"]);
    let finalizers = deleting["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    assert!(
        finalizers == [serde_json::json!("test/hold"), serde_json::json!("foregroundDeletion")]
            || finalizers == [serde_json::json!("test/hold")],
        "{finalizers:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deleting = json(&cluster, &["get", "deployment", "fg", "-o", "json"]);
        if deleting["metadata"]["finalizers"] == serde_json::json!(["test/hold"]) {
            break;
        }
        assert!(Instant::now() < deadline, "the garbage collector kept foregroundDeletion: {}", deleting["metadata"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.ok(&["patch", "deployment", "fg", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(cluster.fails(&["get", "deployment", "fg"]).contains("not found"));

    // Every namespace gets a default ServiceAccount.
    cluster.ok(&["create", "namespace", "fresh"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.kubectl(&["get", "serviceaccount", "default", "-n", "fresh"]).status.success() {
        assert!(Instant::now() < deadline, "no default ServiceAccount in a new namespace");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli_prints_kubeconfig_and_version(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let skiff = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).output().unwrap();
        assert!(output.status.success(), "skiff {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let data_dir = cluster.data_dir();
    let printed = skiff(&["kubeconfig", "--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(printed, std::fs::read_to_string(cluster.kubeconfig()).unwrap());
    assert!(skiff(&["version"]).contains("Kubernetes API v1.33"));
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n";
    let out = cluster.with_stdin(&["apply", "-f", "-"], typo);
    assert!(!out.status.success(), "kubectl apply validates strictly by default");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"datta\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Embedded) })*
        }
        mod etcd {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Etcd) })*
        }
    };
}

/// One backend: the audit log knows nothing of the store.
#[test]
fn audit_log_records_requests_without_secret_values() {
    audit::audit_log_records_requests_without_secret_values();
}

/// One backend: the metrics come from the nodes, not the store.
#[test]
fn metrics_hpas_follow_cpu_and_request_rate_under_load() {
    metrics::hpas_follow_cpu_and_request_rate_under_load();
}

/// One backend: the metrics come from the nodes, not the store.
#[test]
fn metrics_top_shows_what_pods_use_and_prometheus_scrapes_every_endpoint() {
    metrics::top_shows_what_pods_use_and_prometheus_scrapes_every_endpoint();
}

/// One backend: the idle period and the wake-up are the nodes' and the controllers', not the store's.
#[test]
fn scale_to_zero_idle_deployments_sleep_and_a_request_wakes_them() {
    scaletozero::idle_deployments_scale_to_zero_and_a_request_wakes_them();
}

/// One backend: LimitRanger reads LimitRanges as any other object.
#[test]
fn limitranges_default_and_bound_pods() {
    limitranges::limit_ranges_default_and_bound_pods();
}

#[test]
fn node_hello_runs_to_completion_with_logs_exit_codes_and_events() {
    node::hello_runs_to_completion_with_logs_exit_codes_and_events();
}

#[test]
fn node_a_trapping_module_crash_loops_with_growing_back_off() {
    node::a_trapping_module_crash_loops_with_growing_back_off();
}

#[test]
fn node_memory_and_cpu_limits_hold() {
    node::memory_and_cpu_limits_hold();
}

#[test]
fn node_http_sample_answers_and_logs_follow() {
    node::http_sample_answers_and_logs_follow();
}

#[test]
fn node_bad_images_report_kubelet_reasons() {
    node::bad_images_report_kubelet_reasons();
}

#[test]
fn node_pods_beyond_capacity_are_refused_out_of_pods_or_memory() {
    node::pods_beyond_capacity_are_refused_out_of_pods_or_memory();
}

#[test]
fn node_wasm_and_container_side_by_side_in_one_pod() {
    node::wasm_and_container_side_by_side_in_one_pod();
}

#[test]
fn node_killing_the_agent_neither_loses_nor_doubles_pods() {
    node::killing_the_agent_neither_loses_nor_doubles_pods();
}

#[test]
fn node_an_agent_without_root_runs_wasm_pods() {
    node::an_agent_without_root_runs_wasm_pods();
}

#[test]
fn node_registries_file_sends_pulls_to_mirrors() {
    node::registries_file_sends_pulls_to_mirrors();
}

#[test]
fn node_a_bad_registries_file_stops_the_agent() {
    node::a_bad_registries_file_stops_the_agent();
}

#[test]
fn identity_an_agent_trades_the_join_token_for_a_certificate_of_its_own() {
    identity::an_agent_trades_the_join_token_for_a_certificate_of_its_own();
}

#[test]
fn identity_the_kubelet_port_serves_only_the_api_server() {
    identity::the_kubelet_port_serves_only_the_api_server();
}

#[test]
fn kubelet_the_kubelet_port_authorizes_callers_through_the_api_server() {
    kubelet::the_kubelet_port_authorizes_callers_through_the_api_server();
}

#[test]
fn identity_a_node_acts_only_on_what_is_its_own() {
    identity::a_node_acts_only_on_what_is_its_own();
}

#[test]
fn identity_deleting_a_node_locks_its_certificate_out() {
    identity::deleting_a_node_locks_its_certificate_out();
}

#[test]
fn identity_a_node_joins_with_a_bootstrap_token_of_its_own_that_deleting_revokes() {
    identity::a_node_joins_with_a_bootstrap_token_of_its_own_that_deleting_revokes();
}

#[test]
fn identity_the_kubelet_port_serves_a_certificate_issued_through_a_csr() {
    identity::the_kubelet_port_serves_a_certificate_issued_through_a_csr();
}

#[test]
fn connections_idle_connections_neither_block_nor_stay() {
    connections::idle_connections_neither_block_nor_stay();
}

#[test]
fn abuse_http_slow_clients_of_one_wasi_http_pod_hurt_no_other() {
    abuse_http::slow_clients_of_one_wasi_http_pod_hurt_no_other();
}

#[test]
fn exec_kubectl_exec_runs_commands_in_containers() {
    exec::kubectl_exec_runs_commands_in_containers();
}

#[test]
fn portforward_kubectl_port_forward_reaches_pods_and_services() {
    portforward::kubectl_port_forward_reaches_pods_and_services();
}

#[test]
fn network_pods_reach_each_other_and_the_node_reaches_them() {
    network::pods_reach_each_other_and_the_node_reaches_them();
}

#[test]
fn network_a_wasm_app_and_a_container_sidecar_share_localhost() {
    network::a_wasm_app_and_a_container_sidecar_share_localhost();
}

#[test]
fn network_a_pod_without_an_address_waits_and_gets_one_once_freed() {
    network::a_pod_without_an_address_waits_and_gets_one_once_freed();
}

#[test]
fn network_wasm_pods_get_addresses_of_their_own_without_namespaces() {
    network::wasm_pods_get_addresses_of_their_own_without_namespaces();
}

#[test]
fn encryption_a_bad_config_stops_the_server() {
    encryption::a_bad_encryption_config_stops_the_server();
}

#[test]
fn multinode_pods_and_services_span_nodes() {
    multinode::pods_and_services_span_nodes();
}

#[test]
fn ingress_routes_hosts_and_paths_over_http_and_https() {
    ingress::ingress_routes_hosts_and_paths_over_http_and_https();
}

#[test]
fn ingress_on_every_node_reaches_pods_on_any_node() {
    ingress::ingress_on_every_node_reaches_pods_on_any_node();
}

#[test]
fn incluster_workloads_use_the_in_cluster_configuration() {
    incluster::workloads_use_the_in_cluster_configuration();
}

scenarios!(
    api_resources_and_get_all,
    apply_diff_and_server_side_apply,
    create_get_and_edit_commands,
    watch_sees_another_clients_create,
    conflicts_and_invalid_objects,
    raw_http_errors_are_statuses,
    sigterm_drains_and_exits,
    acknowledged_writes_survive_kill_9,
    paging_watch_replay_and_finalizers,
    cli_prints_kubeconfig_and_version,
    services_track_pods_and_allocate_ports,
    abuse_is_refused_and_the_server_stays_small,
    pod_security_admits_pods_by_their_namespace_level,
    rbac_grants_users_exactly_what_they_were_given,
    service_accounts_get_tokens_and_pods_get_credentials,
    encryption_at_rest_hides_secrets_and_rotates_keys,
    hpa_autoscale_serves_both_versions_and_reports_missing_metrics,
);
