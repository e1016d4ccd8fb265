//! Deployments and ReplicaSets end to end: one `skiff server` (running the scheduler and the controllers)
//! and two agents as separate processes, a wasm app from a real registry, driven with the real kubectl
//! (`rollout status|history|undo|pause|resume|restart`, `scale`, `set image`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A server, two agents (`node-a`, `node-b`) and a registry with the ticker sample as `v1` and `v2`.
struct Fleet {
    cluster: Cluster,
    // Kept for their lifetime: dropping an agent kills it.
    _agents: Vec<Agent>,
    v1: String,
    v2: String,
    registry: Registry,
}

impl Fleet {
    fn start() -> Self {
        let registry = Registry::start().unwrap();
        let cluster = Cluster::start(Backend::Embedded).unwrap();
        let agents = ["node-a", "node-b"].iter().map(|name| Agent::join_with(&cluster, name, &[]).unwrap()).collect();
        let v1 = push_ticker(&registry, "v1");
        let v2 = push_ticker(&registry, "v2");
        Fleet { cluster, _agents: agents, v1, v2, registry }
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.cluster.ok(args)).expect("kubectl printed JSON")
    }

    /// The pods with `selector`, not being deleted.
    fn active_pods(&self, selector: &str) -> Vec<Value> {
        let list = self.json(&["get", "pods", "-l", selector, "-o", "json"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }

    fn rollout_status(&self, deployment: &str) {
        let out = self.cluster.kubectl(&["rollout", "status", deployment, "--timeout=120s"]);
        assert!(
            out.status.success(),
            "rollout status {deployment}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    }

    /// The deployment's ReplicaSets: name → (image, spec.replicas, revision).
    fn replicasets(&self, selector: &str) -> HashMap<String, (String, i64, String)> {
        let list = self.json(&["get", "rs", "-l", selector, "-o", "json"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rs| {
                let name = rs["metadata"]["name"].as_str().unwrap().to_string();
                let image = rs["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
                let revision = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str();
                (name, (image, rs["spec"]["replicas"].as_i64().unwrap(), revision.unwrap_or_default().to_string()))
            })
            .collect()
    }

    fn images(&self, selector: &str) -> Vec<String> {
        let pods = self.active_pods(selector);
        pods.iter().map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap().to_string()).collect()
    }

    fn logs(&self) -> String {
        let server = self.cluster.server_log();
        let tail: Vec<&str> = server.lines().rev().take(40).collect();
        format!("server log (last lines, newest first):\n{}", tail.join("\n"))
    }
}

/// Publishes the ticker sample under `samples/ticker:<tag>`.
fn push_ticker(registry: &Registry, tag: &str) -> String {
    let reference = format!("{}/samples/ticker:{tag}", registry.address);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "push"])
        .arg(crate::harness::samples_dir().join("ticker.wasm"))
        .arg(&reference)
        .output()
        .unwrap();
    assert!(output.status.success(), "skiff image push: {}", String::from_utf8_lossy(&output.stderr));
    reference
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn deployment_manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: tick
  annotations: {{kubernetes.io/change-cause: first}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: tick}}
  template:
    metadata:
      labels: {{app: tick}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: ticker
        image: {image}
        env: [{{name: INTERVAL_MS, value: "500"}}]
"#
    )
}

/// Watches pods with `selector` through `kubectl get -w` and keeps the fewest ready and the most pods seen
/// at once (pods being deleted count for neither, as for Kubernetes' rollout bounds).
struct PodWatch {
    child: std::process::Child,
    bounds: Arc<Mutex<(usize, usize, usize)>>,
}

impl PodWatch {
    fn start(cluster: &Cluster, selector: &str) -> Self {
        let mut child = cluster
            .kubectl_command(&["get", "pods", "-l", selector, "-w", "--output-watch-events", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // (min ready, max pods, events seen)
        let bounds = Arc::new(Mutex::new((usize::MAX, 0, 0)));
        let shared = bounds.clone();
        std::thread::spawn(move || {
            let mut pods: HashMap<String, Value> = HashMap::new();
            for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(event) = event else { return };
                let object = &event["object"];
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if event["type"] == "DELETED" || !object["metadata"]["deletionTimestamp"].is_null() {
                    pods.remove(&name);
                } else {
                    pods.insert(name, object.clone());
                }
                let ready = pods.values().filter(|p| is_ready(p)).count();
                let mut bounds = shared.lock().unwrap();
                *bounds = (bounds.0.min(ready), bounds.1.max(pods.len()), bounds.2 + 1);
            }
        });
        PodWatch { child, bounds }
    }

    /// Waits for the watch to list the `n` current pods, then starts counting from there.
    fn listed(&self, n: usize) {
        eventually("the watch lists the pods", TIMEOUT, || (self.bounds.lock().unwrap().2 >= n).then_some(()));
        let mut bounds = self.bounds.lock().unwrap();
        *bounds = (usize::MAX, 0, bounds.2);
    }

    /// Stops watching; returns (fewest ready, most pods, events seen).
    fn stop(mut self) -> (usize, usize, usize) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self.bounds.lock().unwrap()
    }
}

#[test]
fn deployment_rolls_out_scales_undoes_and_stops_at_its_progress_deadline() {
    let fleet = Fleet::start();
    let cluster = &fleet.cluster;

    // Five replicas come up over both nodes, placed by the scheduler.
    let out = cluster.with_stdin(&["apply", "-f", "-"], &deployment_manifest(&fleet.v1, 5));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fleet.rollout_status("deployment/tick");
    let pods = fleet.active_pods("app=tick");
    assert_eq!(pods.len(), 5);
    assert!(pods.iter().all(is_ready), "all ready");
    assert!(
        pods.iter().all(|p| p["metadata"]["name"].as_str().unwrap().starts_with("tick-")
            && p["metadata"]["ownerReferences"][0]["controller"] == true
            && p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] == true),
        "pods are <rs>-<suffix>, controlled by their ReplicaSet"
    );
    let nodes: std::collections::HashSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "spread over both nodes: {nodes:?}");
    let deploy = fleet.json(&["get", "deploy", "tick", "-o", "json"]);
    let available =
        deploy["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(
        (available["status"].as_str(), available["reason"].as_str()),
        (Some("True"), Some("MinimumReplicasAvailable"))
    );
    assert_eq!(deploy["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let first = fleet.replicasets("app=tick");
    assert_eq!(first.len(), 1);
    let (first_rs, (_, _, revision)) = first.into_iter().next().unwrap();
    assert_eq!(revision, "1");
    let hash = first_rs.strip_prefix("tick-").unwrap().to_string();
    assert!(pods.iter().all(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()));

    // kubectl scale goes through the scale subresource: up to 8, down to 3.
    cluster.ok(&["scale", "deployment/tick", "--replicas=8"]);
    fleet.rollout_status("deployment/tick");
    assert_eq!(fleet.active_pods("app=tick").len(), 8);
    cluster.ok(&["scale", "deployment/tick", "--replicas=3"]);
    eventually("3 pods after scaling down", TIMEOUT, || (fleet.active_pods("app=tick").len() == 3).then_some(()));
    fleet.rollout_status("deployment/tick");
    let described = cluster.ok(&["describe", "deployment", "tick"]);
    assert!(described.contains("ScalingReplicaSet") && described.contains("to 3"), "{described}");

    // A new image rolls out within replicas − maxUnavailable ready and replicas + maxSurge pods (3 replicas,
    // 25%: surge 1, unavailable 0).
    let watch = PodWatch::start(cluster, "app=tick");
    watch.listed(3);
    cluster.ok(&["set", "image", "deployment/tick", &format!("ticker={}", fleet.v2)]);
    fleet.rollout_status("deployment/tick");
    eventually("old pods gone", TIMEOUT, || fleet.images("app=tick").iter().all(|i| *i == fleet.v2).then_some(()));
    let (min_ready, max_pods, events) = watch.stop();
    assert!(events > 6, "the watch saw the rollout ({events} events)");
    assert!(min_ready >= 3, "never fewer than replicas − maxUnavailable ready pods: {min_ready}");
    assert!(max_pods <= 4, "never more than replicas + maxSurge pods: {max_pods}");
    assert_eq!(max_pods, 4, "the rollout surged by one pod");
    let sets = fleet.replicasets("app=tick");
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!(sets[&first_rs].1, 0, "the old ReplicaSet is scaled to zero and kept for history");

    // rollout undo brings the first template back by reusing its ReplicaSet, now revision 3.
    cluster.ok(&["rollout", "undo", "deployment/tick"]);
    fleet.rollout_status("deployment/tick");
    let sets = fleet.replicasets("app=tick");
    assert_eq!(sets.len(), 2, "no new ReplicaSet for an old template: {sets:?}");
    assert_eq!(sets[&first_rs], (fleet.v1.clone(), 3, "3".to_string()));
    eventually("v1 pods only", TIMEOUT, || fleet.images("app=tick").iter().all(|i| *i == fleet.v1).then_some(()));
    let history = cluster.ok(&["rollout", "history", "deployment/tick"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    assert!(history.contains("first"), "change-cause is handed down: {history}");
    assert!(cluster.ok(&["rollout", "history", "deployment/tick", "--revision=2"]).contains(&fleet.v2));

    // Paused, a template change makes no progress; resumed, it rolls out.
    cluster.ok(&["rollout", "pause", "deployment/tick"]);
    cluster.ok(&["set", "image", "deployment/tick", &format!("ticker={}", fleet.v2)]);
    eventually("the paused change observed", TIMEOUT, || {
        let d = fleet.json(&["get", "deploy", "tick", "-o", "json"]);
        let progressing = d["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Progressing")?.clone();
        (d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && progressing["reason"] == "DeploymentPaused")
            .then_some(())
    });
    let sets = fleet.replicasets("app=tick");
    assert!(sets.values().all(|(image, replicas, _)| image == &fleet.v1 || *replicas == 0), "{sets:?}");
    assert_eq!(fleet.images("app=tick"), vec![fleet.v1.clone(); 3]);
    cluster.ok(&["rollout", "resume", "deployment/tick"]);
    fleet.rollout_status("deployment/tick");
    eventually("v2 pods after resume", TIMEOUT, || {
        fleet.images("app=tick").iter().all(|i| *i == fleet.v2).then_some(())
    });

    // rollout restart replaces every pod with the same image.
    let before: Vec<String> =
        fleet.active_pods("app=tick").iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    cluster.ok(&["rollout", "restart", "deployment/tick"]);
    fleet.rollout_status("deployment/tick");
    eventually("all pods replaced", TIMEOUT, || {
        let pods = fleet.active_pods("app=tick");
        (pods.len() == 3 && pods.iter().all(|p| !before.contains(&p["metadata"]["name"].as_str().unwrap().to_string())))
            .then_some(())
    });

    // A tag that does not exist never becomes ready: the rollout stops at its deadline and the old pods stay.
    cluster.ok(&["patch", "deployment/tick", "-p", r#"{"spec":{"progressDeadlineSeconds":10}}"#]);
    fleet.rollout_status("deployment/tick");
    let missing = format!("{}/samples/ticker:nonexistent", fleet.registry.address);
    cluster.ok(&["set", "image", "deployment/tick", &format!("ticker={missing}")]);
    let out = cluster.kubectl(&["rollout", "status", "deployment/tick", "--timeout=120s"]);
    assert!(!out.status.success(), "rollout status fails at the deadline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeded its progress deadline"), "{stderr}");
    let d = fleet.json(&["get", "deploy", "tick", "-o", "json"]);
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").unwrap();
    assert_eq!(
        (progressing["status"].as_str(), progressing["reason"].as_str()),
        (Some("False"), Some("ProgressDeadlineExceeded"))
    );
    let serving: Vec<Value> = fleet
        .active_pods("app=tick")
        .into_iter()
        .filter(|p| p["spec"]["containers"][0]["image"] == fleet.v2.as_str())
        .collect();
    assert_eq!(serving.len(), 3, "the old pods keep running");
    assert!(serving.iter().all(is_ready), "and stay ready");
    let name = serving[0]["metadata"]["name"].as_str().unwrap();
    assert!(cluster.ok(&["logs", name, "--tail=1"]).starts_with("tick "), "and keep working");

    // Beyond revisionHistoryLimit, old empty ReplicaSets go (once a rollout is done, or while paused).
    cluster.ok(&["rollout", "pause", "deployment/tick"]);
    cluster.ok(&["patch", "deployment/tick", "-p", r#"{"spec":{"revisionHistoryLimit":1}}"#]);
    let sets = eventually("history trimmed", TIMEOUT, || {
        let sets = fleet.replicasets("app=tick");
        (sets.len() == 2).then_some(sets)
    });
    let mut revisions: Vec<&str> = sets.values().map(|(_, _, revision)| revision.as_str()).collect();
    revisions.sort();
    assert_eq!(revisions, ["5", "6"], "the restarted pods' set stays, and the stuck new one: {sets:?}");
}

#[test]
fn replicaset_scales_adopts_and_releases_pods() {
    let fleet = Fleet::start();
    let cluster = &fleet.cluster;
    let manifest = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: solo\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: solo}}\n  template:\n    metadata:\n      labels: {{app: solo}}\n    spec:\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: ticker\n        image: {}\n",
        fleet.v1
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ready = |n: usize| {
        eventually(&format!("{n} ready pods of solo"), TIMEOUT, || {
            let rs = fleet.json(&["get", "rs", "solo", "-o", "json"]);
            let pods = fleet.active_pods("app=solo");
            (pods.len() == n
                && pods.iter().all(is_ready)
                && rs["status"]["readyReplicas"] == n
                && rs["status"]["availableReplicas"] == n)
                .then_some(pods)
        })
    };
    ready(2);
    cluster.ok(&["scale", "rs/solo", "--replicas=3"]);
    let pods = ready(3);
    let rs = fleet.json(&["get", "rs", "solo", "-o", "json"]);
    assert_eq!(rs["status"]["observedGeneration"], rs["metadata"]["generation"]);
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3);

    // A pod relabelled out of the selector is released and replaced.
    let released = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    cluster.ok(&["label", "pod", &released, "app=elsewhere", "--overwrite"]);
    ready(3);
    eventually("the relabelled pod released", TIMEOUT, || {
        let pod = fleet.json(&["get", "pod", &released, "-o", "json"]);
        pod["metadata"]["ownerReferences"].as_array().is_none_or(Vec::is_empty).then_some(())
    });

    // A matching orphan is adopted, and the surplus of four deleted.
    let orphan = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  labels: {{app: solo}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: ticker\n    image: {}\n",
        fleet.v1
    );
    assert!(cluster.with_stdin(&["apply", "-f", "-"], &orphan).status.success());
    let pods = ready(3);
    let uid = fleet.json(&["get", "rs", "solo", "-o", "json"])["metadata"]["uid"].clone();
    assert!(pods.iter().all(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid), "all controlled by solo");
    let stray = cluster.kubectl(&["get", "pod", "stray", "-o", "json"]);
    if stray.status.success() {
        let stray: Value = serde_json::from_slice(&stray.stdout).unwrap();
        assert!(
            stray["metadata"]["deletionTimestamp"].is_string() || stray["metadata"]["ownerReferences"][0]["uid"] == uid,
            "the orphan was adopted or deleted as surplus: {stray}"
        );
    }
    let described = cluster.ok(&["describe", "rs", "solo"]);
    assert!(described.contains("SuccessfulCreate") && described.contains("SuccessfulDelete"), "{described}");
}
