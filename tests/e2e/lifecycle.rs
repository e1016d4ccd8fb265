//! Jobs, DaemonSets, garbage collection and node failure end to end: one `skiff server` and several
//! `skiff agent` processes, each its own node, driven with the real kubectl.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

/// A server, `n` agents (`node-1`…) and a registry holding the samples.
struct Fleet {
    cluster: Cluster,
    agents: Vec<Agent>,
    registry: Registry,
}

impl Fleet {
    fn start(nodes: usize) -> Self {
        let registry = Registry::start().unwrap();
        let cluster = Cluster::start(Backend::Embedded).unwrap();
        let agents = (1..=nodes).map(|i| Agent::join_with(&cluster, &format!("node-{i}"), &[]).unwrap()).collect();
        Fleet { cluster, agents, registry }
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.cluster.ok(args)).expect("kubectl printed JSON")
    }

    fn apply(&self, manifest: &str) {
        let out = self.cluster.with_stdin(&["apply", "-f", "-"], manifest);
        assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
    }

    fn pods(&self, selector: &str) -> Vec<Value> {
        let list = self.json(&["get", "pods", "-A", "-l", selector, "-o", "json"]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Pods of `selector` that are Running and not being deleted, by name → node.
    fn running(&self, selector: &str) -> BTreeMap<String, String> {
        self.pods(selector)
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| (name(p), p["spec"]["nodeName"].as_str().unwrap_or_default().to_string()))
            .collect()
    }

    /// Waits for `kubectl wait` on `what` (e.g. `condition=complete`), with the server log on failure.
    fn wait(&self, resource: &str, what: &str, timeout: &str) {
        let out = self.cluster.kubectl(&["wait", resource, &format!("--for={what}"), &format!("--timeout={timeout}")]);
        assert!(
            out.status.success(),
            "kubectl wait {resource} --for={what}: {}\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.cluster.ok(&["get", resource, "-o", "yaml"]),
            tail(&self.cluster.server_log())
        );
    }
}

fn name(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn job(name: &str, spec: &str, container: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: main\n{container}"
    )
}

#[test]
fn jobs_complete_fail_expire_and_count_their_pods() {
    let fleet = Fleet::start(2);
    let hello = fleet.registry.push_sample("hello");
    let ticker = fleet.registry.push_sample("ticker");

    fleet.apply(&job("hello", "  completions: 3\n  parallelism: 2\n", &format!("        image: {hello}\n")));
    fleet.wait("job/hello", "condition=complete", "120s");
    let done = fleet.json(&["get", "job", "hello", "-o", "json"]);
    assert_eq!(done["status"]["succeeded"], 3, "{}", done["status"]);
    assert!(done["status"]["completionTime"].is_string() && done["status"]["startTime"].is_string());
    let conditions: Vec<&str> =
        done["status"]["conditions"].as_array().unwrap().iter().filter_map(|c| c["type"].as_str()).collect();
    assert!(conditions.contains(&"SuccessCriteriaMet") && conditions.contains(&"Complete"), "{conditions:?}");
    let pods = fleet.pods("job-name=hello");
    assert_eq!(pods.len(), 3, "one pod per completion, none extra");
    let uid = done["metadata"]["uid"].as_str().unwrap();
    for pod in &pods {
        assert_eq!(pod["status"]["phase"], "Succeeded");
        assert_eq!(pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let described = fleet.cluster.ok(&["describe", "job", "hello"]);
    assert!(described.contains("SuccessfulCreate") && described.contains("Completed"), "{described}");

    fleet.cluster.ok(&["create", "job", "once", &format!("--image={hello}")]);
    fleet.wait("job/once", "condition=complete", "120s");

    fleet.apply(&job(
        "failing",
        "  backoffLimit: 1\n",
        &format!("        image: {hello}\n        env: [{{name: EXIT_CODE, value: \"3\"}}]\n"),
    ));
    fleet.wait("job/failing", "condition=failed", "120s");
    let failed = fleet.json(&["get", "job", "failing", "-o", "json"]);
    assert_eq!(failed["status"]["failed"], 2, "one try and one retry: {}", failed["status"]);
    let reason = failed["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap();
    assert_eq!(reason["reason"], "BackoffLimitExceeded");
    assert!(
        fleet
            .cluster
            .ok(&["get", "events", "--field-selector", "involvedObject.name=failing"])
            .contains("BackoffLimitExceeded")
    );

    fleet.apply(&job("forever", "  activeDeadlineSeconds: 3\n", &format!("        image: {ticker}\n")));
    fleet.wait("job/forever", "condition=failed", "120s");
    let over = fleet.json(&["get", "job", "forever", "-o", "json"]);
    let reason = over["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap();
    assert_eq!(reason["reason"], "DeadlineExceeded");
    eventually("the deadline's pods stopped", Duration::from_secs(60), || {
        fleet.running("job-name=forever").is_empty().then_some(())
    });

    fleet.apply(&job("brief", "  ttlSecondsAfterFinished: 2\n", &format!("        image: {hello}\n")));
    eventually("the finished job deleted after its TTL, with its pods", Duration::from_secs(90), || {
        let gone = !fleet.cluster.kubectl(&["get", "job", "brief"]).status.success();
        (gone && fleet.pods("job-name=brief").is_empty()).then_some(())
    });
}

#[test]
fn a_daemonset_runs_one_pod_per_node_and_rolls_out_a_new_template() {
    let fleet = Fleet::start(2);
    let ticker = fleet.registry.push_sample("ticker");
    let daemonset = |interval: u32| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: ticker\nspec:\n  selector:\n    matchLabels: {{app: ticker}}\n  template:\n    metadata:\n      labels: {{app: ticker}}\n    spec:\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: ticker\n        image: {ticker}\n        env: [{{name: INTERVAL_MS, value: \"{interval}\"}}]\n"
        )
    };
    fleet.apply(&daemonset(500));
    let per_node = |count: usize| {
        eventually(&format!("one running daemon pod on each of {count} nodes"), Duration::from_secs(90), || {
            let running = fleet.running("app=ticker");
            let nodes: HashSet<&String> = running.values().collect();
            (running.len() == count && nodes.len() == count).then_some(running)
        })
    };
    per_node(2);
    let pod = &fleet.pods("app=ticker")[0];
    let required = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(required["nodeSelectorTerms"][0]["matchFields"][0]["key"], "metadata.name", "{required}");

    let _third = Agent::join_with(&fleet.cluster, "node-3", &[]).unwrap();
    let before = per_node(3);
    let out = fleet.cluster.kubectl(&["rollout", "status", "ds/ticker", "--timeout=90s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = fleet.json(&["get", "ds", "ticker", "-o", "json"])["status"].clone();
    for field in
        ["desiredNumberScheduled", "currentNumberScheduled", "numberReady", "numberAvailable", "updatedNumberScheduled"]
    {
        assert_eq!(status[field], 3, "{field}: {status}");
    }

    fleet.apply(&daemonset(700));
    let out = fleet.cluster.kubectl(&["rollout", "status", "ds/ticker", "--timeout=120s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = per_node(3);
    assert!(after.keys().all(|p| !before.contains_key(p)), "every pod was replaced: {before:?} → {after:?}");
    for pod in fleet.pods("app=ticker") {
        assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], "700");
    }
    let generation = fleet.json(&["get", "ds", "ticker", "-o", "json"]);
    assert_eq!(generation["status"]["observedGeneration"], generation["metadata"]["generation"]);
}

#[test]
fn deleting_owners_cascades_in_the_background_or_foreground_or_orphans() {
    let fleet = Fleet::start(2);
    let ticker = fleet.registry.push_sample("ticker");
    let replica_set = |deployment: &str| {
        eventually(&format!("{deployment}'s replica set and 2 pods"), Duration::from_secs(90), || {
            let sets = fleet.json(&["get", "rs", "-l", &format!("app={deployment}"), "-o", "json"]);
            let set = sets["items"].as_array()?.first()?.clone();
            (fleet.pods(&format!("app={deployment}")).len() == 2).then_some(set)
        })
    };
    let pod_uids = |app: &str| -> HashSet<String> {
        fleet.pods(&format!("app={app}")).iter().map(|p| p["metadata"]["uid"].as_str().unwrap().to_string()).collect()
    };

    fleet.cluster.ok(&["create", "deployment", "kept", &format!("--image={ticker}"), "--replicas=2"]);
    let set = replica_set("kept");
    assert_eq!(set["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let pods = pod_uids("kept");
    fleet.cluster.ok(&["delete", "deployment", "kept", "--cascade=orphan"]);
    let orphaned = eventually("the replica set orphaned", Duration::from_secs(30), || {
        let set = fleet.json(&["get", "rs", &name(&set), "-o", "json"]);
        set["metadata"]["ownerReferences"].as_array().is_none_or(Vec::is_empty).then_some(set)
    });
    assert!(orphaned["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty));
    assert!(!fleet.cluster.kubectl(&["get", "deployment", "kept"]).status.success(), "the deployment is gone");
    assert_eq!(pod_uids("kept"), pods, "the orphaned replica set keeps its pods");

    // Foreground: kubectl waits for the replica set, which goes only after its pods.
    fleet.cluster.ok(&["delete", "rs", &name(&set), "--cascade=foreground", "--timeout=60s"]);
    assert!(pod_uids("kept").is_empty(), "the pods went before their owner");

    fleet.cluster.ok(&["create", "deployment", "gone", &format!("--image={ticker}"), "--replicas=2"]);
    let set = replica_set("gone");
    fleet.cluster.ok(&["delete", "deployment", "gone", "--cascade=background"]);
    eventually("the replica set and its pods collected", Duration::from_secs(60), || {
        let set_gone = !fleet.cluster.kubectl(&["get", "rs", &name(&set)]).status.success();
        (set_gone && pod_uids("gone").is_empty()).then_some(())
    });

    // Controllers creating pods do not keep a namespace from finishing its deletion.
    fleet.cluster.ok(&["create", "namespace", "busy"]);
    fleet.cluster.ok(&["create", "deployment", "app", "-n", "busy", &format!("--image={ticker}"), "--replicas=2"]);
    fleet.apply(
        &job("work", "  parallelism: 2\n  completions: 4\n", &format!("        image: {ticker}\n"))
            .replace("metadata:\n  name: work\n", "metadata:\n  name: work\n  namespace: busy\n"),
    );
    eventually("pods in the namespace", Duration::from_secs(60), || {
        (fleet.json(&["get", "pods", "-n", "busy", "-o", "json"])["items"].as_array()?.len() >= 4).then_some(())
    });
    fleet.cluster.ok(&["delete", "namespace", "busy", "--timeout=90s"]);
    assert!(fleet.cluster.fails(&["get", "ns", "busy"]).contains("not found"));
}

#[test]
fn a_killed_agents_pods_run_elsewhere_within_30_s_and_stop_when_it_returns() {
    let mut fleet = Fleet::start(3);
    let ticker = fleet.registry.push_sample("ticker");
    fleet.cluster.ok(&["create", "deployment", "web", &format!("--image={ticker}"), "--replicas=4"]);
    let placed = eventually("4 running replicas", Duration::from_secs(90), || {
        let running = fleet.running("app=web");
        (running.len() == 4).then_some(running)
    });
    let victim = placed.values().next().unwrap().clone();
    let stale: HashSet<&String> = placed.iter().filter(|(_, node)| **node == victim).map(|(pod, _)| pod).collect();
    let index = fleet.agents.iter().position(|a| a.name == victim).unwrap();

    fleet.agents[index].kill();
    let killed = Instant::now();
    let replaced = eventually("4 running replicas on the other nodes", Duration::from_secs(60), || {
        let running = fleet.running("app=web");
        (running.len() == 4 && running.values().all(|node| *node != victim)).then_some(running)
    });
    let took = killed.elapsed();
    let node = fleet.json(&["get", "node", &victim, "-o", "json"]);
    let ready = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("Unknown"), Some("NodeStatusUnknown")));
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}:{}", t["key"].as_str().unwrap(), t["effect"].as_str().unwrap()))
        .collect();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string())
            && taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{taints:?}"
    );
    for pod in &stale {
        let left = fleet.json(&["get", "pod", pod, "-o", "json"]);
        assert!(left["metadata"]["deletionTimestamp"].is_string(), "{pod} was evicted: {}", left["metadata"]);
    }
    assert!(took < Duration::from_secs(30), "replacements ran {took:?} after the kill: {replaced:?}");

    fleet.agents[index].launch(&fleet.cluster).unwrap();
    eventually("the returning node's stale pods stopped and removed", Duration::from_secs(60), || {
        let names: HashSet<String> = fleet.pods("app=web").iter().map(name).collect();
        stale.iter().all(|p| !names.contains(*p)).then_some(())
    });
    eventually("the unreachable taints removed", Duration::from_secs(30), || {
        let taints = fleet.cluster.ok(&["get", "node", &victim, "-o", "jsonpath={.spec.taints}"]);
        (!taints.contains("unreachable")).then_some(())
    });
    let running = fleet.running("app=web");
    assert_eq!(running.len(), 4, "no more than the replicas run: {running:?}");
}
