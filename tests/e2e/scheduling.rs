//! The scheduler end to end: one `skiff server` (which runs the scheduler under its leader Lease) and agents
//! as separate processes, each its own node; pods without a nodeName, driven with the real kubectl.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

const TIMEOUT: Duration = Duration::from_secs(90);

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).expect("kubectl printed JSON")
}

fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
}

/// A pod with no nodeName: `spec` is YAML indented for `spec:`.
fn pod(cluster: &Cluster, name: &str, labels: &str, spec: &str) {
    apply(
        cluster,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{spec}"
        ),
    );
}

fn ticker(image: &str) -> String {
    format!(
        "  containers:\n  - name: ticker\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"1000\"}}]\n    resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
    )
}

/// The pod's PodScheduled condition once it has one with `status`.
fn scheduled_condition(cluster: &Cluster, name: &str, status: &str) -> Value {
    eventually(&format!("{name} PodScheduled={status}"), TIMEOUT, || {
        let pod = json(cluster, &["get", "pod", name, "-o", "json"]);
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions.into_iter().find(|c| c["type"] == "PodScheduled" && c["status"] == status)
    })
}

fn running_on(cluster: &Cluster, name: &str) -> String {
    eventually(&format!("{name} Running"), TIMEOUT, || {
        let pod = json(cluster, &["get", "pod", name, "-o", "json"]);
        (pod["status"]["phase"] == "Running").then(|| pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned())
    })
}

fn events(cluster: &Cluster, pod: &str, reason: &str) -> Vec<Value> {
    let selector = format!("involvedObject.name={pod},reason={reason}");
    let list = json(cluster, &["get", "events", "--field-selector", &selector, "-o", "json"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn scheduling_places_spreads_and_explains_what_cannot_fit() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let wasm_only = ["--no-oci"];
    let _edges: Vec<Agent> =
        ["edge-1", "edge-2"].iter().map(|name| Agent::join_with(&cluster, name, &wasm_only).unwrap()).collect();
    let image = registry.push_sample("ticker");

    // A pod without nodeName is bound through pods/binding and runs.
    pod(&cluster, "solo", "app: solo", &ticker(&image));
    let node = running_on(&cluster, "solo");
    assert!(node.starts_with("edge-"), "bound to a node: {node}");
    let scheduled = events(&cluster, "solo", "Scheduled");
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    assert_eq!(scheduled[0]["message"], format!("Successfully assigned default/solo to {node}"));
    assert_eq!(scheduled[0]["source"]["component"], "default-scheduler");

    // Replicas of one workload spread over the nodes.
    for i in 0..4 {
        pod(&cluster, &format!("web-{i}"), "app: web", &ticker(&image));
    }
    let nodes: Vec<String> = (0..4).map(|i| running_on(&cluster, &format!("web-{i}"))).collect();
    for edge in ["edge-1", "edge-2"] {
        assert_eq!(nodes.iter().filter(|n| *n == edge).count(), 2, "two replicas on each node: {nodes:?}");
    }

    // A pod needing OCI on wasm-only nodes stays Pending, with kube-scheduler's explanation, once.
    let busybox = registry.push_busybox("tools/busybox");
    let oci = format!(
        "  runtimeClassName: oci\n  containers:\n  - name: box\n    image: {busybox}\n    command: [sleep, \"3600\"]\n"
    );
    pod(&cluster, "needs-oci", "app: box", &oci);
    let condition = scheduled_condition(&cluster, "needs-oci", "False");
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(condition["message"], "0/2 nodes are available: 2 node(s) had no \"oci\" runtime handler.");
    let described = cluster.ok(&["describe", "pod", "needs-oci"]);
    assert!(described.contains("FailedScheduling"), "{described}");
    assert_eq!(json(&cluster, &["get", "pod", "needs-oci", "-o", "json"])["status"]["phase"], "Pending");

    // A node selector nothing matches; a label change on a node retries it.
    let selective = format!("  nodeSelector: {{disk: ssd}}\n{}", ticker(&image));
    pod(&cluster, "wants-ssd", "app: ssd", &selective);
    let condition = scheduled_condition(&cluster, "wants-ssd", "False");
    assert_eq!(condition["message"], "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.");
    cluster.ok(&["label", "node", "edge-2", "disk=ssd"]);
    assert_eq!(running_on(&cluster, "wants-ssd"), "edge-2");
    // The node change retried needs-oci too, with the same outcome: not reported again.
    let failed = events(&cluster, "needs-oci", "FailedScheduling");
    assert_eq!(failed.len(), 1, "one FailedScheduling event per distinct message: {failed:?}");

    // A node that can run containers joins: the pending pod goes there.
    let _mixed = Agent::join_with(&cluster, "mixed-1", &[]).unwrap();
    let runtimes = cluster.ok(&["get", "node", "mixed-1", "-o", "jsonpath={.status.runtimeHandlers[*].name}"]);
    assert_eq!(runtimes, "wasm oci", "as root an agent has both runtimes");
    assert_eq!(running_on(&cluster, "needs-oci"), "mixed-1");
    assert_eq!(scheduled_condition(&cluster, "needs-oci", "True")["status"], "True");

    // A pod asking for more memory than any node has explains that per node.
    let greedy =
        "  containers:\n  - name: c\n    image: registry.local/none:1\n    resources: {requests: {memory: 100Ti}}\n";
    pod(&cluster, "greedy", "app: greedy", greedy);
    let condition = scheduled_condition(&cluster, "greedy", "False");
    assert_eq!(condition["message"], "0/3 nodes are available: 3 Insufficient memory.");
}
