//! Services end to end: the endpoints of a Deployment's pods in EndpointSlices and Endpoints as they scale,
//! NodePort allocation and its conflicts, the `kubernetes` Service, and LoadBalancer status, with two agents
//! running the http-hello sample and the real kubectl.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

const TIMEOUT: Duration = Duration::from_secs(120);

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).expect("kubectl printed JSON")
}

fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
}

/// The IPs of the running pods with `selector`, not being deleted.
fn pod_ips(cluster: &Cluster, selector: &str) -> BTreeSet<String> {
    let pods = json(cluster, &["get", "pods", "-l", selector, "-o", "json"]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect()
}

/// (ready, all) endpoint addresses of the Service's slices, and the ports the slices name.
fn slice_endpoints(cluster: &Cluster, service: &str) -> (BTreeSet<String>, Vec<String>, Vec<Value>) {
    let selector = format!("kubernetes.io/service-name={service}");
    let slices = json(cluster, &["get", "endpointslices", "-l", &selector, "-o", "json"]);
    let (mut ready, mut all, mut ports) = (BTreeSet::new(), Vec::new(), Vec::new());
    for slice in slices["items"].as_array().unwrap() {
        assert_eq!(slice["addressType"], "IPv4");
        ports.extend(slice["ports"].as_array().cloned().unwrap_or_default());
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            let address = endpoint["addresses"][0].as_str().unwrap().to_string();
            if endpoint["conditions"]["ready"] == true {
                ready.insert(address.clone());
            }
            all.push(address);
        }
    }
    (ready, all, ports)
}

/// The ready addresses of the Service's v1 Endpoints.
fn endpoints_addresses(cluster: &Cluster, service: &str) -> BTreeSet<String> {
    let endpoints = json(cluster, &["get", "endpoints", service, "-o", "json"]);
    let subsets = endpoints["subsets"].as_array().cloned().unwrap_or_default();
    subsets
        .iter()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

fn deployment(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

fn service(name: &str, kind: &str, node_port: Option<i64>) -> String {
    let node_port = node_port.map(|p| format!(", nodePort: {p}")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  selector: {{app: hello}}\n  ports: [{{name: web, port: 80, targetPort: http{node_port}}}]\n"
    )
}

pub fn services_track_pods_and_allocate_ports(backend: Backend) {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(backend).unwrap();
    let _agents: Vec<Agent> =
        ["node-a", "node-b"].iter().map(|name| Agent::join_with(&cluster, name, &[]).unwrap()).collect();
    let image = registry.push_sample("http-hello");

    // Three replicas behind a ClusterIP Service whose targetPort names the pods' container port.
    apply(&cluster, &deployment(&image, 3));
    apply(&cluster, &service("hello", "ClusterIP", None));
    let ips = eventually("3 running pods with addresses", TIMEOUT, || {
        let ips = pod_ips(&cluster, "app=hello");
        (ips.len() == 3).then_some(ips)
    });
    let (ready, _, ports) = eventually("3 ready endpoints in the slices", TIMEOUT, || {
        let found = slice_endpoints(&cluster, "hello");
        (found.0 == ips && found.1.len() == 3).then_some(found)
    });
    assert_eq!(ready, ips);
    assert_eq!(ports, [serde_json::json!({"name": "web", "port": 8080, "protocol": "TCP"})]);
    eventually("the Endpoints agreeing", TIMEOUT, || (endpoints_addresses(&cluster, "hello") == ips).then_some(()));
    let table = cluster.ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=hello"]);
    assert!(table.contains("ADDRESSTYPE") && table.contains("IPv4") && table.contains("8080"), "{table}");

    // Scaled to one: one endpoint, once the others have terminated.
    cluster.ok(&["scale", "deployment", "hello", "--replicas=1"]);
    let left = eventually("one endpoint left", TIMEOUT, || {
        let (ready, all, _) = slice_endpoints(&cluster, "hello");
        (all.len() == 1 && ready.len() == 1).then_some(ready)
    });
    assert!(ips.is_superset(&left));
    eventually("the Endpoints agreeing", TIMEOUT, || (endpoints_addresses(&cluster, "hello") == left).then_some(()));

    // Nothing changed, nothing written: the reconcile a change of the Service's annotations starts leaves the
    // slice and the Endpoints as they are.
    let versions = || {
        let slices = ["get", "endpointslices", "-l", "kubernetes.io/service-name=hello"];
        let jsonpath = "jsonpath={.items[*].metadata.resourceVersion}";
        let slices = cluster.ok(&[&slices[..], &["-o", jsonpath]].concat());
        (slices, cluster.ok(&["get", "endpoints", "hello", "-o", "jsonpath={.metadata.resourceVersion}"]))
    };
    let before = versions();
    cluster.ok(&["annotate", "svc", "hello", "touched=yes"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(versions(), before);

    // A NodePort Service gets a port of the range, kept when an update leaves it out; asking for a port
    // another Service holds is refused as Kubernetes refuses it.
    apply(&cluster, &service("np", "NodePort", None));
    let node_port =
        json(&cluster, &["get", "svc", "np", "-o", "json"])["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let out = cluster.with_stdin(&["replace", "-f", "-"], &service("np", "NodePort", None));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kept = json(&cluster, &["get", "svc", "np", "-o", "json"])["spec"]["ports"][0]["nodePort"].as_i64();
    assert_eq!(kept, Some(node_port), "an update without nodePort keeps it");
    let out = cluster.with_stdin(&["create", "-f", "-"], &service("np-taken", "NodePort", Some(node_port)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "The Service \"np-taken\" is invalid: spec.ports[0].nodePort: Invalid value: {node_port}: provided port is already allocated"
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // The API server's own Service, at the first address of the service range, with its endpoints.
    assert_eq!(cluster.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]), "10.43.0.1");
    let port = cluster.listen.rsplit(':').next().unwrap().to_string();
    let slice = json(&cluster, &["get", "endpointslice", "kubernetes", "-o", "json"]);
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "kubernetes");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"].to_string(), port);
    let endpoints = cluster.ok(&["get", "endpoints", "kubernetes"]);
    assert!(endpoints.contains(&format!("127.0.0.1:{port}")), "{endpoints}");

    // A LoadBalancer Service is reached at every Ready node's address (both agents report 127.0.0.1).
    apply(&cluster, &service("lb", "LoadBalancer", None));
    let ingress = eventually("the load balancer's ingress", TIMEOUT, || {
        let status = json(&cluster, &["get", "svc", "lb", "-o", "json"])["status"].clone();
        status["loadBalancer"]["ingress"].as_array().cloned()
    });
    assert_eq!(ingress, [serde_json::json!({"ip": "127.0.0.1"})]);
    let lb = json(&cluster, &["get", "svc", "lb", "-o", "json"]);
    assert!(lb["spec"]["ports"][0]["nodePort"].as_i64().is_some_and(|p| p != node_port));

    // A deleted Service takes its slices and Endpoints with it.
    cluster.ok(&["delete", "svc", "hello"]);
    eventually("the slices and Endpoints gone", TIMEOUT, || {
        let slices = cluster.ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=hello", "-o", "name"]);
        let endpoints = cluster.kubectl(&["get", "endpoints", "hello"]);
        (slices.trim().is_empty() && !endpoints.status.success()).then_some(())
    });
}
