//! Scale to zero end to end: a wasi:http Deployment and a container HTTP server, each annotated
//! `skiff.dev/scale-to-zero-after`, behind a Service and an Ingress host on the node's ingress port. Once
//! idle they have no replica and no pod; a request through the Ingress is held, wakes the Deployment, and is
//! answered 200 by the pod that appears; the events say why each scaled.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, free_port};

/// A Deployment of `image` (serving on 8080, with `args`), its Service, and an Ingress for `host`.
fn workload(name: &str, host: &str, image: &str, command: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations: {{skiff.dev/scale-to-zero-after: 3s}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]{command}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  rules:
  - host: {host}
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}]
"#
    )
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).unwrap()
}

/// GET `path` on `host` through the ingress on `port`: the status and the body.
fn through_ingress(port: u16, host: &str, path: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    let response = client.get(format!("http://127.0.0.1:{port}{path}")).header("host", host).send().unwrap();
    (response.status().as_u16(), response.text().unwrap_or_default())
}

fn pods_of(cluster: &Cluster, app: &str) -> usize {
    json(cluster, &["get", "pods", "-l", &format!("app={app}"), "-o", "json"])["items"].as_array().map_or(0, Vec::len)
}

fn reasons(cluster: &Cluster, name: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={name},involvedObject.kind=Deployment");
    let events = json(cluster, &["get", "events", "--field-selector", &selector, "-o", "json"]);
    events["items"].as_array().into_iter().flatten().filter_map(|e| e["reason"].as_str().map(str::to_string)).collect()
}

/// Waits until the Deployment `name` is idle at zero: no replica, no pod, the Service marked.
fn asleep(cluster: &Cluster, name: &str) {
    eventually(&format!("{name} scaled to zero"), Duration::from_secs(90), || {
        let deployment = json(cluster, &["get", "deployment", name, "-o", "json"]);
        (deployment["spec"]["replicas"] == 0 && pods_of(cluster, name) == 0).then_some(())
    });
    let listed = cluster.ok(&["get", "deployment", name, "--no-headers"]);
    assert_eq!(listed.split_whitespace().nth(1), Some("0/0"), "{listed}");
    let marked =
        cluster.ok(&["get", "service", name, "-o", r"jsonpath={.metadata.annotations.skiff\.dev/scale-from-zero}"]);
    assert_eq!(marked, name);
    assert!(reasons(cluster, name).iter().any(|r| r == "ScaledToZero"), "{:?}", reasons(cluster, name));
}

pub fn idle_deployments_scale_to_zero_and_a_request_wakes_them() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start_with(Backend::Embedded, &["--metric-resolution", "1s"]).unwrap();
    let port = free_port();
    let flags = ["--ingress-http-port", &port.to_string(), "--ingress-https-port", "0"];
    let _agent = Agent::join_with(&cluster, "node-1", &flags).unwrap();
    let http = registry.push_sample("http-hello");
    let files = [("www/index.html", "hello from a container\n")];
    let busybox =
        registry.push_busybox_with("tools/httpd", serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]}), &files);

    // A wasi:http guest, whose runtime counts its requests.
    let out = cluster.with_stdin(&["apply", "-f", "-"], &workload("hello", "hello.test", &http, ""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = eventually("the first answer", Duration::from_secs(60), || {
        let answer = through_ingress(port, "hello.test", "/");
        (answer.0 == 200).then_some(answer)
    });
    assert!(body.contains("hello from skiff"), "{status} {body}");
    asleep(&cluster, "hello");
    let held = Instant::now();
    let (status, body) = through_ingress(port, "hello.test", "/woken");
    let waited = held.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path: /woken"), "{body}");
    assert_eq!(pods_of(&cluster, "hello"), 1, "the request brought one replica");
    assert!(reasons(&cluster, "hello").iter().any(|r| r == "ScaledFromZero"), "{:?}", reasons(&cluster, "hello"));
    eprintln!("wasm: answered from zero in {waited:?}");

    // A container, whose requests the ingress counts.
    let command = "\n        command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]";
    let out = cluster.with_stdin(&["apply", "-f", "-"], &workload("box", "box.test", &busybox, command));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the container's first answer", Duration::from_secs(60), || {
        (through_ingress(port, "box.test", "/").0 == 200).then_some(())
    });
    asleep(&cluster, "box");
    let held = Instant::now();
    let (status, body) = through_ingress(port, "box.test", "/");
    assert_eq!((status, body.as_str()), (200, "hello from a container\n"));
    eprintln!("container: answered from zero in {:?}", held.elapsed());
}
