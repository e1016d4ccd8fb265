//! The audit log end to end: a policy recording Secrets at Metadata and ConfigMaps at RequestResponse, real
//! kubectl requests (a Secret made and read, a request alice may not make, a ConfigMap made), and the log
//! the server leaves once SIGTERM has flushed it. Only the API server runs; one backend is enough, the log
//! knows nothing of the store.

use std::process::Command;

use serde_json::Value;

use crate::harness::{Backend, Cluster};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps"]
"#;

/// The ResponseComplete events about `resource` named `name` by `verb`.
fn completed<'a>(events: &'a [Value], verb: &str, resource: &str, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete" && e["verb"] == verb && e["objectRef"]["resource"] == resource)
        .filter(|e| {
            e["objectRef"]["name"].as_str().unwrap_or("") == name || e["requestObject"]["metadata"]["name"] == name
        })
        .collect()
}

pub fn audit_log_records_requests_without_secret_values() {
    let files = tempfile::tempdir().unwrap();
    let policy = files.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let log = files.path().join("audit.log");
    let (policy_flag, log_flag) = (policy.to_str().unwrap(), log.to_str().unwrap());
    let mut cluster =
        Cluster::start_with(Backend::Embedded, &["--audit-policy-file", policy_flag, "--audit-log-path", log_flag])
            .unwrap();

    cluster.ok(&["create", "secret", "generic", "s", "--from-literal=password=hunter2"]);
    cluster.ok(&["get", "secret", "s"]);
    let minted = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["kubeconfig", "--user", "alice", "--data-dir"])
        .arg(cluster.data_dir())
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let alice = cluster.write_file("alice.kubeconfig", &String::from_utf8_lossy(&minted.stdout));
    let denied = cluster.kubectl_command(&["get", "secret", "s"]).env("KUBECONFIG", &alice).output().unwrap();
    assert!(!denied.status.success(), "alice read a secret");
    cluster.ok(&["create", "configmap", "c", "--from-literal=color=blue"]);
    // The audit ID kube-apiserver returns in a header names the request's events.
    let answer =
        cluster.http().request(reqwest::Method::GET, "/api/v1/namespaces/default/configmaps/c").send().unwrap();
    assert!(answer.status().is_success());
    let audit_id = answer.headers()["audit-id"].to_str().unwrap().to_string();

    // SIGTERM: the writer flushes what is queued before the server exits.
    assert!(cluster.terminate().unwrap().success(), "{}", cluster.server_log());
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["hunter2", "aHVudGVyMg=="] {
        assert!(!text.contains(secret), "the audit log holds the secret's value {secret}");
    }
    let events: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(events.iter().all(|e| e["kind"] == "Event" && e["apiVersion"] == "audit.k8s.io/v1"));
    assert!(events.iter().all(|e| e["stage"] != "RequestReceived"), "the policy omits RequestReceived");

    let created = completed(&events, "create", "secrets", "");
    assert_eq!(created.len(), 1, "{created:#?}");
    let created = created[0];
    assert_eq!(created["level"], "Metadata");
    assert_eq!(created["user"]["username"], "system:admin");
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["annotations"]["authorization.k8s.io/decision"], "allow");
    assert!(created.get("requestObject").is_none() && created.get("responseObject").is_none());

    let read: Vec<_> = completed(&events, "get", "secrets", "s");
    let (admin, alice): (Vec<&Value>, Vec<&Value>) = read.iter().partition(|e| e["user"]["username"] == "system:admin");
    assert_eq!(admin.len(), 1, "{read:#?}");
    assert_eq!(admin[0]["responseStatus"]["code"], 200);
    assert_eq!(alice.len(), 1, "{read:#?}");
    assert_eq!(alice[0]["user"]["username"], "alice");
    assert_eq!(alice[0]["responseStatus"]["code"], 403);
    assert_eq!(alice[0]["responseStatus"]["reason"], "Forbidden");
    assert_eq!(alice[0]["annotations"]["authorization.k8s.io/decision"], "forbid");

    let configmap = completed(&events, "create", "configmaps", "c");
    assert_eq!(configmap.len(), 1, "{configmap:#?}");
    assert_eq!(configmap[0]["level"], "RequestResponse");
    assert_eq!(configmap[0]["requestObject"]["data"]["color"], "blue");
    assert_eq!(configmap[0]["responseObject"]["data"]["color"], "blue");
    assert_eq!(configmap[0]["responseStatus"]["code"], 201);

    let fetched: Vec<_> = events.iter().filter(|e| e["auditID"] == audit_id.as_str()).collect();
    assert_eq!(fetched.len(), 1, "{audit_id} in {:#?}", &events[events.len().saturating_sub(3)..]);
    assert_eq!(fetched[0]["verb"], "get");
    assert_eq!(fetched[0]["requestURI"], "/api/v1/namespaces/default/configmaps/c");
    assert!(fetched[0]["stageTimestamp"].as_str().unwrap().len() == "2026-01-01T00:00:00.000000Z".len());
}
