//! Workloads use the standard in-cluster configuration, end to end: a `skiff server` on a test bridge and an
//! agent in a network namespace (a node as on another machine), so a pod reaches the API server only as in
//! Kubernetes, through the `kubernetes` Service (10.43.0.1:443) its `KUBERNETES_SERVICE_*` variables name,
//! with its ServiceAccount's projected token and CA. The clients are unchanged third-party code: a kube-rs
//! program written as kube-rs's examples are (`examples/in_cluster.rs`) and the Python client's own
//! in-cluster example, both run inside a busybox container from the host's `/usr`.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::harness::{Agent, Backend, Cluster, Registry};
use crate::testnet::TestNet;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The Python client's `examples/in_cluster_config.py` (kubernetes-client/python), listing the pods of the
/// pod's own namespace instead of all (a Role grants no more), and printing the API's message on failure.
const PYTHON_EXAMPLE: &str = r#"#!/usr/bin/python3
import json
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException

NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def main():
    config.load_incluster_config()
    with open(NAMESPACE) as f:
        namespace = f.read().strip()

    v1 = client.CoreV1Api()
    print("Listing pods with their IPs:")
    try:
        ret = v1.list_namespaced_pod(namespace, watch=False)
    except ApiException as e:
        sys.exit("%s: %s" % (e.status, json.loads(e.body)["message"]))
    for i in ret.items:
        print("%s\t%s\t%s" % (i.status.pod_ip, i.metadata.namespace, i.metadata.name))


if __name__ == '__main__':
    main()
"#;

const RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-lister}\nrules:\n- apiGroups: ['']\n  resources: [pods]\n  verbs: [list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: lister}\nsubjects:\n- {kind: ServiceAccount, name: lister, namespace: default}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-lister}\n";

/// The kube-rs example's directory: `cargo test` builds examples next to the test binary's `deps`.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples");
    assert!(
        dir.join("in_cluster").exists(),
        "{} missing: `cargo test` builds it, or `cargo build --example in_cluster`",
        dir.join("in_cluster").display()
    );
    dir
}

/// A command's exit status, standard output and error together.
fn outcome(out: &Output) -> (bool, String) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn workloads_use_the_in_cluster_configuration() {
    // Declared in the order they must outlive each other: locals drop in reverse, the agent first.
    let mut net = TestNet::new();
    let (netns, ip) = net.add_node(1);
    let registry = Registry::start().unwrap();
    let port: u16 = registry.address.rsplit(':').next().unwrap().parse().unwrap();
    net.relay_loopback(port);
    let cluster = Cluster::start_listening(Backend::Embedded, net.gateway()).unwrap();
    let registries =
        format!("mirrors:\n  \"127.0.0.1:{port}\":\n    endpoint: [\"http://{}:{port}\"]\n", net.gateway());
    let registries = cluster.write_file("registries.yaml", &registries);
    let flags = ["--pod-network", "cni", "--registries", registries.to_str().unwrap()];
    let agent = Agent::join_in(&cluster, "node-a", &netns, ip, &flags).unwrap();
    let image = registry.push_busybox_with(
        "tools/in-cluster",
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]}),
        &[("in_cluster.py", PYTHON_EXAMPLE)],
    );
    let logs = || format!("--- agent:\n{}\n--- server:\n{}", agent.log(), cluster.server_log());

    // The host's programs run inside the pod from hostPath volumes, which only the privileged level admits.
    cluster.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged"]);
    cluster.ok(&["create", "serviceaccount", "lister"]);
    let pod = |name: &str, extra: &str| {
        let spec = format!(
            "{extra}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: client\n    image: {image}\n    command: [sleep, '3600']\n    volumeMounts:\n    - {{name: usr, mountPath: /usr, readOnly: true}}\n    - {{name: examples, mountPath: /examples, readOnly: true}}\n  volumes:\n  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}\n  - {{name: examples, hostPath: {{path: {}, type: Directory}}}}\n",
            examples_dir().display()
        );
        cluster.create_pod(name, "node-a", &spec);
        cluster.wait_pod_phase(name, "Running", TIMEOUT, &agent);
    };
    pod("lister", "  serviceAccountName: lister\n");
    let exec = |pod: &str, command: &[&str]| {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        outcome(&cluster.kubectl(&args))
    };
    let (_, env) = exec("lister", &["env"]);
    assert!(env.contains("KUBERNETES_SERVICE_HOST=10.43.0.1\n"), "the API server's Service in the environment: {env}");
    assert!(env.contains("KUBERNETES_SERVICE_PORT=443\n"), "{env}");
    let kube_rs = ["/examples/in_cluster"];
    let python = ["/in_cluster.py"];

    // Without a binding the ServiceAccount may not list pods: both clients get Kubernetes' 403.
    let forbidden = "pods is forbidden: User \"system:serviceaccount:default:lister\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"";
    for client in [&kube_rs[..], &python[..]] {
        let (listed, text) = exec("lister", client);
        assert!(!listed && text.contains(forbidden) && text.contains("403"), "{client:?}: {text}\n{}", logs());
    }

    // A Role that lists pods, bound to the ServiceAccount: both list the pods, their own among them, at once
    // (the authorizer's caches catch up with the store before they deny).
    let out = cluster.with_stdin(&["apply", "-f", "-"], RBAC);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (listed, listing) = exec("lister", &kube_rs);
    assert!(listed && listing.lines().any(|line| line == "lister"), "kube-rs: {listing}\n{}", logs());
    let (listed, listing) = exec("lister", &python);
    assert!(listed && listing.lines().any(|line| line.ends_with("\tdefault\tlister")), "python: {listing}");

    // automountServiceAccountToken: false leaves the container without a token, and the clients without
    // an in-cluster configuration.
    pod("tokenless", "  serviceAccountName: lister\n  automountServiceAccountToken: false\n");
    let (present, text) = exec("tokenless", &["ls", "/var/run/secrets/kubernetes.io/serviceaccount/token"]);
    assert!(!present && text.contains("No such file"), "a token file: {text}");
    let (listed, text) = exec("tokenless", &kube_rs);
    assert!(!listed, "kube-rs listed pods without a token: {text}");
}
