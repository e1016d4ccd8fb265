//! Node lifecycle, as kube-controller-manager's node lifecycle controller and taint manager: a node whose
//! Lease in kube-node-lease is not renewed within the grace period gets its conditions set to Unknown, the
//! `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints, and its pods marked not Ready; pods on a
//! NoExecute-tainted node are deleted once their toleration runs out, so their controllers replace them
//! elsewhere. When the Lease is renewed again the taints go, and the agent reports Ready itself.
//!
//! Health is judged on this controller's own clock, from when it saw each renewal, so nodes with skewed
//! clocks are judged alike (and a new leader gives every node a full grace period).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Config;
use crate::Error;
use crate::events::{Kind, Recorder};
use crate::placement::tolerates;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How often node health is checked (Kubernetes: 5 s; the grace period here is shorter).
const MONITOR_PERIOD: Duration = Duration::from_secs(1);
/// How often pods on a NoExecute-tainted node are looked at again when none is due for eviction.
const EVICTION_RECHECK: Duration = Duration::from_secs(10);

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When a pod with `tolerations` must leave a node with `taints`, or None when it may stay for good. A pod
/// without a toleration for the unreachable or not-ready taint gets one of `default` seconds, as Kubernetes'
/// DefaultTolerationSeconds admission gives every pod.
pub(crate) fn eviction_time(
    tolerations: &[Toleration],
    taints: &[Taint],
    default: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut earliest: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let seconds = if matching.is_empty() {
            if taint.key != UNREACHABLE && taint.key != NOT_READY {
                return Some(added);
            }
            Some(default.as_secs() as i64)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            matching.iter().filter_map(|t| t.toleration_seconds).min()
        };
        if let Some(seconds) = seconds {
            let due = added + jiff::SignedDuration::from_secs(seconds.max(0));
            earliest = Some(earliest.map_or(due, |e| e.min(due)));
        }
    }
    earliest
}

/// The taints Skiff manages for a node's health: unreachable when its Lease is stale, not-ready when the
/// agent says it is not Ready; kept with their original timeAdded while they stay.
fn health_taints(healthy: bool, ready: Option<&str>, current: &[Taint], now: Timestamp) -> Vec<Taint> {
    let key = match (healthy, ready) {
        (false, _) => Some(UNREACHABLE),
        (true, Some("False")) => Some(NOT_READY),
        _ => None,
    };
    let mut taints: Vec<Taint> =
        current.iter().filter(|t| t.key != UNREACHABLE && t.key != NOT_READY).cloned().collect();
    if let Some(key) = key {
        for effect in [NO_SCHEDULE, NO_EXECUTE] {
            let kept = current.iter().find(|t| t.key == key && t.effect == effect).cloned();
            taints.push(kept.unwrap_or_else(|| Taint {
                key: key.into(),
                effect: effect.into(),
                time_added: Some(Time(now)),
                value: None,
            }));
        }
    }
    taints
}

/// The node's conditions once its agent stopped reporting: all Unknown, as Kubernetes sets them.
fn unknown_conditions(conditions: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let mut conditions = conditions.to_vec();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(NodeCondition { type_: "Ready".into(), ..NodeCondition::default() });
    }
    for condition in &mut conditions {
        if condition.status != "Unknown" {
            condition.last_transition_time = Some(Time(now));
        }
        condition.status = "Unknown".into();
        condition.reason = Some("NodeStatusUnknown".into());
        condition.message = Some("Kubelet stopped posting node status.".into());
    }
    conditions
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

struct Monitor {
    client: kube::Client,
    config: Config,
    recorder: Recorder,
    leases: Store<Lease>,
    /// Per node: the last Lease renewal and status heartbeat seen, and when they were seen.
    renewals: HashMap<String, (String, Instant)>,
    /// Per tainted node: when its pods are next looked at for eviction.
    next_eviction: HashMap<String, Instant>,
}

/// Runs the node lifecycle controller until `shutdown`.
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let watch_nodes = drive(reflector::reflector(node_writer, watcher(Api::all(client.clone()), Default::default())));
    let lease_api = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let watch_leases = drive(reflector::reflector(lease_writer, watcher(lease_api, Default::default())));
    let mut monitor = Monitor {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        config,
        leases: leases.clone(),
        renewals: HashMap::new(),
        next_eviction: HashMap::new(),
    };
    let monitoring = async {
        if nodes.wait_until_ready().await.is_err() || leases.wait_until_ready().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(MONITOR_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            monitor.pass(&nodes.state()).await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = watch_nodes => {}
        _ = watch_leases => {}
        _ = monitoring => {}
    }
}

/// Polls a reflector's watch (with back-off on errors) so its store stays current.
async fn drive<K>(stream: impl Stream<Item = watcher::Result<watcher::Event<K>>>) {
    stream
        .default_backoff()
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::debug!(%error, "node lifecycle watch failed; retrying");
            }
        })
        .await;
}

impl Monitor {
    async fn pass(&mut self, nodes: &[std::sync::Arc<Node>]) {
        let present: HashSet<&str> = nodes.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
        self.renewals.retain(|name, _| present.contains(name.as_str()));
        self.next_eviction.retain(|name, _| present.contains(name.as_str()));
        for node in nodes {
            let span = tracing::debug_span!("node", node = %node.name_any());
            if let Err(error) = self.check(node).instrument(span).await {
                tracing::warn!(node = %node.name_any(), %error, "node lifecycle check failed");
            }
        }
    }

    /// Whether the node's agent showed signs of life within the grace period, by this controller's clock: a
    /// Lease renewal, or a status post (a new Ready heartbeat, which a returning agent writes before it
    /// renews its Lease).
    fn healthy(&mut self, node: &Node) -> bool {
        let name = node.name_any();
        let lease = self.leases.get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE));
        let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let heartbeat = node.status.as_ref().and_then(|s| {
            s.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?.last_heartbeat_time.as_ref().map(|t| t.0)
        });
        let signal = format!("{renewed:?}/{heartbeat:?}");
        let seen = self.renewals.entry(name).or_insert_with(|| (signal.clone(), Instant::now()));
        if seen.0 != signal {
            *seen = (signal, Instant::now());
        }
        seen.1.elapsed() < self.config.node_grace
    }

    async fn check(&mut self, node: &Node) -> Result<(), Error> {
        let name = node.name_any();
        let healthy = self.healthy(node);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = Timestamp::now();
        let mut node = std::borrow::Cow::Borrowed(node);
        if !healthy && ready_status(&node) != Some("Unknown") {
            tracing::info!(grace = ?self.config.node_grace, "node lease not renewed, marking the node Unknown");
            let conditions = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            // The resourceVersion keeps this from overwriting a status the agent just posted.
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "status": {"conditions": unknown_conditions(&conditions, now)},
            });
            let updated = match nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(updated) => updated,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.recorder.record(
                &updated,
                Kind::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
            self.mark_pods_not_ready(&name).await?;
            node = std::borrow::Cow::Owned(updated);
        }
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let wanted = health_taints(healthy, ready_status(&node), &current, now);
        if wanted != current {
            tracing::info!(taints = ?wanted.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "updating node health taints");
            let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": wanted}});
            match nodes.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                // Someone else changed the node; the next pass sees it and tries again.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if wanted.iter().any(|t| t.effect == NO_EXECUTE) {
            if self.next_eviction.get(&name).is_none_or(|at| *at <= Instant::now()) {
                let next = self.evict(&name, &wanted, now).await?;
                self.next_eviction.insert(name, next);
            }
        } else {
            self.next_eviction.remove(&name);
        }
        Ok(())
    }

    async fn pods_on(&self, node: &str) -> Result<Vec<Pod>, Error> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        Ok(pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?.items)
    }

    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), Error> {
        for pod in self.pods_on(node).await? {
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else { continue };
            if !conditions.iter().any(|c| c.type_ == "Ready" && c.status != "False") {
                continue;
            }
            let conditions: Vec<PodCondition> = conditions
                .into_iter()
                .map(|c| match c.type_.as_str() {
                    "Ready" => {
                        PodCondition { status: "False".into(), last_transition_time: Some(Time(Timestamp::now())), ..c }
                    }
                    _ => c,
                })
                .collect();
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
            match pods.patch_status(&pod.name_any(), &PatchParams::default(), &patch).await {
                Ok(_) => self.recorder.record(&pod, Kind::Warning, "NodeNotReady", "Node is not ready".into()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes the node's pods whose toleration of its NoExecute taints ran out; returns when to look again.
    async fn evict(&self, node: &str, taints: &[Taint], now: Timestamp) -> Result<Instant, Error> {
        let mut next = Instant::now() + EVICTION_RECHECK;
        for pod in self.pods_on(node).await? {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            // Finished pods hold nothing on the node, and their Job counts them.
            if pod.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            let Some(due) = eviction_time(&tolerations, taints, self.config.eviction_toleration, now) else { continue };
            let left = due.duration_since(now);
            if left.is_positive() {
                next = next.min(Instant::now() + left.unsigned_abs());
                continue;
            }
            let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            tracing::info!(pod = %name, %namespace, "evicting a pod from a NoExecute-tainted node");
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let params = DeleteParams {
                preconditions: pod.uid().map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => self.recorder.record(
                    &pod,
                    Kind::Normal,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {namespace}/{name}"),
                ),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: i64) -> Taint {
        Taint { key: key.into(), effect: effect.into(), time_added: Some(Time(at(added))), value: None }
    }

    fn toleration(key: &str, operator: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()).filter(|k: &String| !k.is_empty()),
            operator: Some(operator.into()),
            effect: Some(effect.into()).filter(|e: &String| !e.is_empty()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    const FIVE: Duration = Duration::from_secs(5);

    #[test]
    fn eviction_waits_for_the_toleration_or_the_default() {
        let taints = [taint(UNREACHABLE, NO_SCHEDULE, 0), taint(UNREACHABLE, NO_EXECUTE, 10)];
        assert_eq!(eviction_time(&[], &taints, FIVE, at(12)), Some(at(15)), "the default toleration");
        let thirty = [toleration(UNREACHABLE, "Exists", NO_EXECUTE, Some(30))];
        assert_eq!(eviction_time(&thirty, &taints, FIVE, at(12)), Some(at(40)), "the pod's own tolerationSeconds");
        let forever = [toleration(UNREACHABLE, "Exists", NO_EXECUTE, None)];
        assert_eq!(eviction_time(&forever, &taints, FIVE, at(12)), None, "tolerated for good (daemon pods)");
        let other = [taint("dedicated", NO_EXECUTE, 3)];
        assert_eq!(eviction_time(&[], &other, FIVE, at(12)), Some(at(3)), "an untolerated taint evicts at once");
        let schedule_only = [taint(UNREACHABLE, NO_SCHEDULE, 0)];
        assert_eq!(eviction_time(&[], &schedule_only, FIVE, at(12)), None, "NoSchedule never evicts");
    }

    #[test]
    fn health_taints_follow_the_lease_and_keep_their_time() {
        let others = vec![taint("dedicated", NO_SCHEDULE, 0)];
        let tainted = health_taints(false, Some("True"), &others, at(50));
        let keys: Vec<(&str, &str)> = tainted.iter().map(|t| (t.key.as_str(), t.effect.as_str())).collect();
        assert_eq!(keys, [("dedicated", NO_SCHEDULE), (UNREACHABLE, NO_SCHEDULE), (UNREACHABLE, NO_EXECUTE)]);
        assert_eq!(health_taints(false, Some("Unknown"), &tainted, at(90)), tainted, "timeAdded is kept");
        assert_eq!(health_taints(true, Some("Unknown"), &tainted, at(90)), others, "a renewed lease clears them");
        let not_ready = health_taints(true, Some("False"), &others, at(90));
        assert!(not_ready.iter().any(|t| t.key == NOT_READY && t.effect == NO_EXECUTE));
    }

    #[test]
    fn an_unreachable_node_has_every_condition_unknown() {
        let ready = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(at(0))),
            ..NodeCondition::default()
        };
        let conditions = unknown_conditions(&[ready], at(30));
        assert_eq!(conditions[0].status, "Unknown");
        assert_eq!(conditions[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(conditions[0].last_transition_time, Some(Time(at(30))));
        assert_eq!(unknown_conditions(&conditions, at(60)), conditions, "already Unknown: unchanged");
        assert_eq!(unknown_conditions(&[], at(0))[0].type_, "Ready");
    }
}
