//! Pod Security admission end to end, with the real kubectl: the server's default level refuses pods that
//! take the host, a namespace's labels change that, workloads are warned about and their controllers say
//! why their pods are refused. Only the API server runs: creation is the point, no pod needs a node.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Backend, Cluster, eventually};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Pods that take the host, by name: a YAML fragment for the pod's spec and one for its container "c", and
/// the PodSecurity message kube-apiserver refuses each with under baseline.
const HOSTILE: &[(&str, &str, &str, &str)] = &[
    (
        "priv",
        "",
        "    securityContext: {privileged: true}\n",
        r#"privileged (container "c" must not set securityContext.privileged=true)"#,
    ),
    ("host", "  volumes: [{name: h, hostPath: {path: /etc}}]\n", "", r#"hostPath volumes (volume "h")"#),
    ("net", "  hostNetwork: true\n", "", "host namespaces (hostNetwork=true)"),
    // A wasm pod: the same fields mean the same.
    (
        "wasm-host",
        "  runtimeClassName: wasm\n  volumes: [{name: h, hostPath: {path: /etc}}]\n",
        "",
        r#"hostPath volumes (volume "h")"#,
    ),
];

fn pod(name: &str, namespace: &str, spec: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}  containers:\n  - name: c\n    image: registry.local/app:1\n{container}"
    )
}

fn workload(kind: &str, name: &str, spec: &str) -> String {
    let (api_version, extra) = match kind {
        "Deployment" => ("apps/v1", format!("  selector: {{matchLabels: {{app: {name}}}}}\n")),
        _ => ("batch/v1", String::new()),
    };
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{extra}  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      restartPolicy: {}\n{spec}      containers:\n      - name: {name}\n        image: registry.local/app:1\n",
        if kind == "Job" { "Never" } else { "Always" }
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The warnings kubectl printed, without their `Warning: ` prefix.
fn warnings(output: &Output) -> Vec<String> {
    stderr(output).lines().filter_map(|l| l.strip_prefix("Warning: ")).map(str::to_string).collect()
}

/// The message of the FailedCreate event on `kind` `name` in the default namespace.
fn failed_create(cluster: &Cluster, kind: &str, name_prefix: &str) -> String {
    eventually(&format!("a FailedCreate event on {kind} {name_prefix}"), TIMEOUT, || {
        let selector = format!("reason=FailedCreate,involvedObject.kind={kind}");
        let out = cluster.ok(&["get", "events", "--field-selector", &selector, "-o", "json"]);
        let events: Value = serde_json::from_str(&out).ok()?;
        events["items"]
            .as_array()?
            .iter()
            .find(|e| e["involvedObject"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
            .and_then(|e| e["message"].as_str().map(str::to_string))
    })
}

pub fn pod_security_admits_pods_by_their_namespace_level(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();

    // The default, baseline: each pod refused with kube-apiserver's 403 message; kube-system is exempt.
    for (name, spec, container, reason) in HOSTILE {
        let out = cluster.with_stdin(&["apply", "-f", "-"], &pod(name, "default", spec, container));
        assert!(!out.status.success(), "{name} was admitted");
        let expected = format!(
            r#"Error from server (Forbidden): error when creating "STDIN": pods "{name}" is forbidden: violates PodSecurity "baseline:latest": {reason}"#
        );
        assert!(stderr(&out).contains(&expected), "{name}: {}\nexpected {expected}", stderr(&out));
    }
    let (_, spec, container, _) = HOSTILE[0];
    let out = cluster.with_stdin(&["apply", "-f", "-"], &pod("system", "kube-system", spec, container));
    assert!(out.status.success(), "{}", stderr(&out));

    // A namespace labelled privileged takes them, without a warning.
    cluster.ok(&["create", "namespace", "trusted"]);
    cluster.ok(&["label", "namespace", "trusted", "pod-security.kubernetes.io/enforce=privileged"]);
    for (name, spec, container, _) in HOSTILE {
        let out = cluster.with_stdin(&["apply", "-f", "-"], &pod(name, "trusted", spec, container));
        assert!(out.status.success() && warnings(&out).is_empty(), "{name}: {}", stderr(&out));
    }
    // Tightening its level warns about them (they stay); an invalid level is refused.
    let out =
        cluster.kubectl(&["label", "ns", "trusted", "pod-security.kubernetes.io/enforce=baseline", "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        warnings(&out),
        [
            r#"existing pods in namespace "trusted" violate the new PodSecurity enforce level "baseline:latest""#,
            "host (and 1 other pod): hostPath volumes",
            "net: host namespaces",
            "priv: privileged",
        ]
    );
    let refused = cluster.fails(&["label", "ns", "trusted", "pod-security.kubernetes.io/enforce=bogus", "--overwrite"]);
    assert!(
        refused.contains(r#"The Namespace "trusted" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "bogus": must be one of privileged, baseline, restricted"#),
        "{refused}"
    );

    // warn=restricted: a Deployment is admitted with kubectl's warning about its template.
    cluster.ok(&["create", "namespace", "strict"]);
    cluster.ok(&["label", "namespace", "strict", "pod-security.kubernetes.io/warn=restricted"]);
    let out = cluster.with_stdin(&["apply", "-n", "strict", "-f", "-"], &workload("Deployment", "web", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        warnings(&out),
        [concat!(
            r#"would violate PodSecurity "restricted:latest": "#,
            r#"allowPrivilegeEscalation != false (container "web" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (container "web" must set securityContext.capabilities.drop=["ALL"]), "#,
            r#"runAsNonRoot != true (pod or container "web" must set securityContext.runAsNonRoot=true), "#,
            r#"seccompProfile (pod or container "web" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        )]
    );

    // Under the default, a workload that would take the host is warned about, and its controller's pods are
    // refused: the ReplicaSet and the Job say so in FailedCreate events, as in Kubernetes.
    let host_path = "      volumes: [{name: h, hostPath: {path: /etc}}]\n";
    let out = cluster.with_stdin(&["apply", "-f", "-"], &workload("Deployment", "hostile", host_path));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(warnings(&out), [r#"would violate PodSecurity "baseline:latest": hostPath volumes (volume "h")"#]);
    let message = failed_create(&cluster, "ReplicaSet", "hostile-");
    assert!(
        message.starts_with(r#"Error creating: pods "hostile-"#)
            && message
                .ends_with(r#"" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "h")"#),
        "{message}"
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &workload("Job", "hostile-job", "      hostNetwork: true\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let message = failed_create(&cluster, "Job", "hostile-job");
    assert!(
        message.contains(r#"is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#),
        "{message}"
    );
}
