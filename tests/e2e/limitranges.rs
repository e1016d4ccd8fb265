//! LimitRange and the LimitRanger admission end to end, with the real kubectl: `kubectl get|describe
//! limits`, a pod without resources gets the defaults and the annotation, a pod above the max is refused
//! with kube-apiserver's 403, and an inconsistent LimitRange with its 422. Only the API server runs: the
//! pods need no node.

use std::process::Output;

use crate::harness::{Backend, Cluster};

const LIMIT_RANGE: &str = "apiVersion: v1
kind: LimitRange
metadata:
  name: memory
spec:
  limits:
  - type: Container
    default: {memory: 64Mi}
    max: {memory: 1Gi}
";

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: registry.local/app:1\n    resources: {resources}\n"
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn limit_ranges_default_and_bound_pods() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let out = cluster.with_stdin(&["apply", "-f", "-"], LIMIT_RANGE);
    assert!(out.status.success(), "{}", stderr(&out));

    // kube-apiserver's default table, and kubectl's describer with the defaults the server filled in.
    let listed = cluster.ok(&["get", "limits"]);
    let header: Vec<&str> = listed.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"], "{listed}");
    assert!(listed.lines().nth(1).is_some_and(|row| row.starts_with("memory ")), "{listed}");
    let described = cluster.ok(&["describe", "limits", "memory"]);
    assert!(
        described.lines().any(|line| line.split_whitespace().collect::<Vec<_>>()
            == ["Container", "memory", "-", "1Gi", "64Mi", "64Mi", "-"]),
        "{described}"
    );

    // A pod that asks for nothing gets the defaults, and the annotation says so.
    let out = cluster.with_stdin(&["apply", "-f", "-"], &pod("plain", "{}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cluster.ok(&["get", "pod", "plain", "-o", "jsonpath={.spec.containers[0].resources}"]),
        r#"{"limits":{"memory":"64Mi"},"requests":{"memory":"64Mi"}}"#
    );
    assert_eq!(
        cluster.ok(&["get", "pod", "plain", "-o", r"jsonpath={.metadata.annotations.kubernetes\.io/limit-ranger}"]),
        "LimitRanger plugin set: memory request for container app; memory limit for container app"
    );

    // Above the max: kube-apiserver's 403.
    let out = cluster.with_stdin(&["apply", "-f", "-"], &pod("big", "{limits: {memory: 2Gi}}"));
    assert!(!out.status.success(), "big was admitted");
    let expected = r#"Error from server (Forbidden): error when creating "STDIN": pods "big" is forbidden: maximum memory usage per Container is 1Gi, but limit is 2Gi"#;
    assert!(stderr(&out).contains(expected), "{}\nexpected {expected}", stderr(&out));

    // A default request above the default limit: kube-apiserver's 422.
    let backwards = LIMIT_RANGE
        .replace("name: memory", "name: backwards")
        .replace("max: {memory: 1Gi}", "defaultRequest: {memory: 128Mi}");
    let out = cluster.with_stdin(&["apply", "-f", "-"], &backwards);
    assert!(!out.status.success(), "backwards was admitted");
    let expected = r#"The LimitRange "backwards" is invalid: spec.limits[0].defaultRequest[memory]: Invalid value: "128Mi": default request value 128Mi is greater than default limit value 64Mi"#;
    assert!(stderr(&out).contains(expected), "{}\nexpected {expected}", stderr(&out));
}
