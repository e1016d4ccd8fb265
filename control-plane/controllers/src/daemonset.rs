//! The DaemonSet controller: one pod per node the template fits (nodeSelector, required node affinity,
//! taints against the pod's tolerations), created as Kubernetes does it, with a required node affinity on
//! that node's `metadata.name` for the scheduler to honour; template changes roll out node by node within
//! `maxUnavailable`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::events::{Kind, Recorder};
use crate::nodelifecycle::{NOT_READY, UNREACHABLE, pod_ready};
use crate::placement::{self, tolerates};
use crate::replicaset::{api_message, namespace_terminating};

/// The template version a daemon pod was made from, as Kubernetes labels it.
const REVISION_HASH: &str = "controller-revision-hash";
const TEMPLATE_GENERATION: &str = "pod-template-generation";
/// Failed daemon pods are replaced after this long, so a crashing template does not spin.
const FAILED_POD_BACKOFF: Duration = Duration::from_secs(2);

struct Context {
    client: kube::Client,
    recorder: Recorder,
    nodes: Store<Node>,
    shutdown: CancellationToken,
}

/// Runs the DaemonSet controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (nodes, writer) = reflector::store::<Node>();
    let mut seen: HashMap<String, u64> = HashMap::new();
    // Every DaemonSet is looked at again when a node comes, goes, or changes what daemons fit it.
    let node_changes = reflector::reflector(writer, watcher(Api::<Node>::all(client.clone()), Default::default()))
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    seen.insert(node.name_any(), fingerprint(&node)) != Some(fingerprint(&node))
                }
                Ok(watcher::Event::Delete(node)) => seen.remove(&node.name_any()).is_some(),
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) | Err(_) => false,
            };
            std::future::ready(changed.then_some(()))
        });
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
        client: client.clone(),
        nodes,
        shutdown: shutdown.clone(),
    });
    Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default().labels(TEMPLATE_GENERATION))
        .reconcile_all_on(node_changes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// What about a node decides which daemons run there: its labels, name and taints.
fn fingerprint(node: &Node) -> u64 {
    let mut hasher = DefaultHasher::new();
    node.labels().hash(&mut hasher);
    for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
        (&taint.key, &taint.value, &taint.effect).hash(&mut hasher);
    }
    hasher.finish()
}

fn error_policy(set: Arc<DaemonSet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(daemonset = %set.name_any(), namespace = ?set.namespace(), %error, "daemonset reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(set: Arc<DaemonSet>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", daemonset = %set.name_any(), namespace = ?set.namespace());
    sync(&set, &context).instrument(span).await
}

async fn sync(set: &DaemonSet, context: &Context) -> Result<Action, Error> {
    let (Some(namespace), Some(uid), Some(spec)) = (set.namespace(), set.uid(), set.spec.as_ref()) else {
        return Ok(Action::await_change());
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let selector = match spec.selector.match_labels.is_some() || spec.selector.match_expressions.is_some() {
        true => skiff_api::selectors::LabelSelector::from_k8s(&spec.selector).map(|s| s.to_string()),
        false => Ok(String::new()),
    };
    let Ok(selector) = selector else {
        tracing::warn!("daemonset selector is invalid; nothing to do");
        return Ok(Action::await_change());
    };
    if !crate::caches_ready(&context.shutdown, context.nodes.wait_until_ready()).await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let owned: Vec<Pod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|pod| pod.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid))
        .collect();
    let nodes: Vec<Arc<Node>> = context.nodes.state();
    let hash = template_hash(spec);
    let now = Timestamp::now();
    let plan = plan(spec, &hash, &nodes, &owned, now);

    for pod in &plan.delete {
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => context.recorder.record(set, Kind::Normal, "SuccessfulDelete", format!("Deleted pod: {pod}")),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut failure = None;
    for node in &plan.create {
        match pods.create(&PostParams::default(), &new_pod(set, spec, &hash, node)).await {
            Ok(pod) => context.recorder.record(
                set,
                Kind::Normal,
                "SuccessfulCreate",
                format!("Created pod: {}", pod.name_any()),
            ),
            // The namespace is being deleted: nothing may be created in it any more.
            Err(error) if namespace_terminating(&error) => {
                tracing::debug!(%error, "cannot create daemon pods");
                break;
            }
            // Refused (Pod Security, an invalid template): said on the DaemonSet, as Kubernetes does, and
            // retried once its status is written.
            Err(error) => {
                context.recorder.record(
                    set,
                    Kind::Warning,
                    "FailedCreate",
                    format!("Error creating: {}", api_message(&error)),
                );
                failure = Some(error);
                break;
            }
        }
    }
    let status = DaemonSetStatus { observed_generation: set.metadata.generation, ..plan.status };
    let current = set.status.clone().unwrap_or_default();
    if status != (DaemonSetStatus { collision_count: None, conditions: None, ..current }) {
        let sets: Api<DaemonSet> = Api::namespaced(context.client.clone(), &namespace);
        sets.patch_status(&set.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    Ok(plan.retry_after.map_or_else(Action::await_change, Action::requeue))
}

/// A short, stable hash of the pod template: pods carrying another one are from an older version.
fn template_hash(spec: &DaemonSetSpec) -> String {
    crate::stable_hash(&serde_json::to_string(&spec.template).unwrap_or_default())
}

/// The tolerations Kubernetes gives every daemon pod: it stays through node trouble, as node agents do.
fn daemon_tolerations(own: &[Toleration]) -> Vec<Toleration> {
    let mut tolerations = own.to_vec();
    let implied = [
        (NOT_READY, "NoExecute"),
        (UNREACHABLE, "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    for (key, effect) in implied {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)) {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    }
    tolerations
}

/// Whether a daemon pod should be started on `node`, and whether one already there may keep running.
fn fits(pod: &PodSpec, node: &Node) -> (bool, bool) {
    let labels = node.labels();
    let selected = pod.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref())
            .is_none_or(|required| placement::selects(required, labels, &node.name_any()));
    if !selected {
        return (false, false);
    }
    let tolerations = daemon_tolerations(pod.tolerations.as_deref().unwrap_or_default());
    let untolerated: Vec<&str> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        .map(|taint| taint.effect.as_str())
        .collect();
    let keep = !untolerated.contains(&"NoExecute");
    (keep && !untolerated.contains(&"NoSchedule"), keep)
}

/// The node a daemon pod is for: where it is bound, or the node its affinity requires.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let required =
        spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?;
    required.node_selector_terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find_map(|r| {
        (r.key == "metadata.name" && r.operator == "In").then(|| r.values.as_ref()?.first().cloned()).flatten()
    })
}

/// Ready for at least `min_ready` seconds.
fn available(pod: &Pod, min_ready: i32, now: Timestamp) -> bool {
    let ready_since = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map_or(now, |t| t.0));
    ready_since.is_some_and(|since| since + jiff::SignedDuration::from_secs(min_ready.max(0).into()) <= now)
}

#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Nodes to start a daemon pod on.
    create: Vec<String>,
    /// Pods to delete, by name.
    delete: Vec<String>,
    status: DaemonSetStatus,
    retry_after: Option<Duration>,
}

fn plan(spec: &DaemonSetSpec, hash: &str, nodes: &[Arc<Node>], pods: &[Pod], now: Timestamp) -> Plan {
    let template = spec.template.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    let mut plan = Plan::default();
    for pod in pods {
        match target_node(pod) {
            Some(node) => by_node.entry(node).or_default().push(pod),
            None => plan.delete.push(pod.name_any()),
        }
    }
    let updated = |pod: &Pod| pod.labels().get(REVISION_HASH).map(String::as_str) == Some(hash);
    let (mut desired, mut current, mut misscheduled, mut ready, mut available_count, mut updated_count) =
        (0, 0, 0, 0, 0, 0);
    // Old pods on nodes they should run on, with whether each is available, for the rolling update.
    let mut old = Vec::new();
    let mut unavailable = 0;
    for node in nodes {
        let name = node.name_any();
        let (should_run, may_stay) = fits(&template, node);
        let here = by_node.remove(&name).unwrap_or_default();
        let terminating = here.iter().any(|p| p.metadata.deletion_timestamp.is_some());
        let mut live: Vec<&Pod> = here.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        if !should_run {
            if !live.is_empty() {
                misscheduled += 1;
                if !may_stay {
                    plan.delete.extend(live.iter().map(|p| p.name_any()));
                }
            }
            continue;
        }
        desired += 1;
        let (failed, running): (Vec<&Pod>, Vec<&Pod>) =
            live.drain(..).partition(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
        if !failed.is_empty() {
            plan.delete.extend(failed.iter().map(|p| p.name_any()));
            plan.retry_after = Some(FAILED_POD_BACKOFF);
        }
        let mut running = running;
        running.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let Some(pod) = running.first().copied() else {
            // Wait for a pod still terminating here, so a node never runs two daemons at once.
            if !terminating && failed.is_empty() {
                plan.create.push(name);
            }
            unavailable += 1;
            continue;
        };
        plan.delete.extend(running[1..].iter().map(|p| p.name_any()));
        current += 1;
        ready += i32::from(pod_ready(pod));
        let is_available = available(pod, min_ready, now);
        if pod_ready(pod) && !is_available {
            plan.retry_after = Some(plan.retry_after.map_or(Duration::from_secs(1), |r| r.min(Duration::from_secs(1))));
        }
        available_count += i32::from(is_available);
        unavailable += i32::from(!is_available);
        if updated(pod) {
            updated_count += 1;
        } else {
            old.push((pod.name_any(), is_available));
        }
    }
    // Pods for nodes that are gone would wait for them forever.
    plan.delete.extend(
        by_node.into_values().flatten().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| p.name_any()),
    );

    let rolling = spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
    if rolling {
        let max_unavailable = max_unavailable(spec, desired);
        for (name, is_available) in old {
            if !is_available {
                plan.delete.push(name);
            } else if unavailable < max_unavailable {
                unavailable += 1;
                plan.delete.push(name);
            }
        }
    }
    plan.status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available_count),
        number_unavailable: Some(desired - available_count),
        updated_number_scheduled: Some(updated_count),
        ..DaemonSetStatus::default()
    };
    plan
}

/// `maxUnavailable` of the rolling update as a pod count (percentages of the desired count round up), at least 1.
fn max_unavailable(spec: &DaemonSetSpec, desired: i32) -> i32 {
    let value = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()?.max_unavailable.clone());
    let count = match value {
        Some(IntOrString::Int(n)) => n,
        Some(IntOrString::String(percent)) => {
            let percent: i64 = percent.trim_end_matches('%').parse().unwrap_or(0);
            ((i64::from(desired) * percent + 99) / 100) as i32
        }
        None => 1,
    };
    count.max(1)
}

fn new_pod(set: &DaemonSet, spec: &DaemonSetSpec, hash: &str, node: &str) -> Pod {
    let template = spec.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(TEMPLATE_GENERATION.into(), set.metadata.generation.unwrap_or(1).to_string());
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(pod_spec.tolerations.as_deref().unwrap_or_default()));
    // The DaemonSet already checked the node's labels: the scheduler only needs to place it on this node.
    let mut affinity = pod_spec.affinity.take().unwrap_or_default();
    let mut node_affinity = affinity.node_affinity.take().unwrap_or_default();
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    pod_spec.affinity = Some(Affinity { node_affinity: Some(NodeAffinity { ..node_affinity }), ..affinity });
    let owner = set.controller_owner_ref(&()).map(|mut owner| {
        owner.block_owner_deletion = Some(true);
        owner
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use k8s_openapi::api::core::v1::{PodTemplateSpec, Taint};

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
                "spec": {"taints": taints.iter().map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Taint::default() }).collect::<Vec<_>>()},
            }))
            .unwrap(),
        )
    }

    fn spec(template: serde_json::Value) -> DaemonSetSpec {
        DaemonSetSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(
                    serde_json::from_value(json!({"containers": [{"name": "c", "image": "i"}]}))
                        .map(|mut s: PodSpec| {
                            let extra: PodSpec = serde_json::from_value(template).unwrap();
                            s.node_selector = extra.node_selector;
                            s.affinity = extra.affinity;
                            s.tolerations = extra.tolerations;
                            s
                        })
                        .unwrap(),
                ),
            },
            ..DaemonSetSpec::default()
        }
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {REVISION_HASH: hash}, "creationTimestamp": skiff_api::format_time(at(created))},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": skiff_api::format_time(at(created))}]},
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn daemons_fit_nodes_by_selector_affinity_and_taints() {
        let plain = spec(json!({}));
        let edge = node("edge", &[("zone", "edge"), ("cores", "4")], &[]);
        let tainted = node("gpu", &[("zone", "core")], &[("dedicated", "NoSchedule")]);
        let evicting = node("bad", &[], &[("dedicated", "NoExecute")]);
        let unreachable =
            node("lost", &[], &[(UNREACHABLE, "NoExecute"), ("node.kubernetes.io/unschedulable", "NoSchedule")]);
        let template = plain.template.spec.unwrap();
        assert_eq!(fits(&template, &edge), (true, true));
        assert_eq!(fits(&template, &tainted), (false, true), "NoSchedule: none new, the old one stays");
        assert_eq!(fits(&template, &evicting), (false, false));
        assert_eq!(fits(&template, &unreachable), (true, true), "daemons tolerate node trouble and cordons");

        let selective = spec(json!({"nodeSelector": {"zone": "edge"}})).template.spec.unwrap();
        assert!(fits(&selective, &edge).0);
        assert_eq!(fits(&selective, &tainted), (false, false));
        let affine = spec(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu"]}]},
        ]}}}}))
        .template
        .spec
        .unwrap();
        assert!(fits(&affine, &edge).0, "the first term");
        assert_eq!(fits(&affine, &tainted), (false, true), "the second term, but tainted");
        assert_eq!(fits(&affine, &evicting), (false, false));
        let tolerant =
            spec(json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]})).template.spec.unwrap();
        assert_eq!(fits(&tolerant, &evicting), (true, true));
    }

    #[test]
    fn one_pod_per_fitting_node() {
        let spec = spec(json!({}));
        let hash = template_hash(&spec);
        let nodes = [node("a", &[], &[]), node("b", &[], &[]), node("c", &[], &[("dedicated", "NoExecute")])];
        let pods =
            [pod("on-b", "b", &hash, true, 0), pod("extra-b", "b", &hash, true, 5), pod("on-c", "c", &hash, true, 0)];
        let plan = plan(&spec, &hash, &nodes, &pods, at(10));
        assert_eq!(plan.create, ["a"]);
        assert_eq!(plan.delete, ["extra-b", "on-c"], "the newer duplicate and the pod on an evicting node go");
        let status = &plan.status;
        assert_eq!(
            (status.desired_number_scheduled, status.current_number_scheduled, status.number_misscheduled),
            (2, 1, 1)
        );
        assert_eq!(
            (status.number_ready, status.number_available, status.updated_number_scheduled),
            (1, Some(1), Some(1))
        );
    }

    #[test]
    fn pending_pods_count_for_the_node_their_affinity_names() {
        let spec = spec(json!({}));
        let hash = template_hash(&spec);
        let set = DaemonSet {
            metadata: ObjectMeta { name: Some("agent".into()), ..ObjectMeta::default() },
            ..DaemonSet::default()
        };
        let mut pending = new_pod(&set, &spec, &hash, "a");
        pending.metadata.name = Some("agent-x".into());
        assert_eq!(target_node(&pending).as_deref(), Some("a"));
        let plan = plan(&spec, &hash, &[node("a", &[], &[])], &[pending.clone()], at(0));
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
        let gone = super::plan(&spec, &hash, &[node("b", &[], &[])], &[pending], at(0));
        assert_eq!((gone.create, gone.delete), (vec!["b".to_string()], vec!["agent-x".to_string()]));
    }

    #[test]
    fn rolling_update_replaces_within_max_unavailable() {
        let mut spec = spec(json!({}));
        spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: None,
            }),
        });
        let hash = template_hash(&spec);
        let nodes = [node("a", &[], &[]), node("b", &[], &[]), node("c", &[], &[])];
        let old = [pod("pa", "a", "old", true, 0), pod("pb", "b", "old", true, 0), pod("pc", "c", "old", false, 0)];
        let first = plan(&spec, &hash, &nodes, &old, at(10));
        assert_eq!(first.delete, ["pc"], "an unavailable old pod goes first, and uses up maxUnavailable");
        let healthy = [pod("pa", "a", "old", true, 0), pod("pb", "b", "old", true, 0), pod("pc", "c", &hash, true, 0)];
        assert_eq!(plan(&spec, &hash, &nodes, &healthy, at(10)).delete, ["pa"], "then one at a time");
        spec.update_strategy = Some(DaemonSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None });
        assert!(plan(&spec, &hash, &nodes, &healthy, at(10)).delete.is_empty(), "OnDelete waits for the user");
        assert_eq!(max_unavailable(&DaemonSetSpec::default(), 10), 1);
    }

    #[test]
    fn daemon_pods_require_their_node_and_tolerate_node_trouble() {
        let spec = spec(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]}}}}),
        );
        let set = DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                uid: Some("u1".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
        };
        let pod = new_pod(&set, &spec, "h1", "edge-7");
        let value = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            value["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["edge-7"]}]}]})
        );
        assert_eq!(value["metadata"]["labels"], json!({REVISION_HASH: "h1", TEMPLATE_GENERATION: "3"}));
        assert_eq!(value["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);
        let tolerations = pod.spec.unwrap().tolerations.unwrap();
        assert!(tolerations.iter().any(|t| t.key.as_deref() == Some(UNREACHABLE) && t.toleration_seconds.is_none()));
        assert_eq!(template_hash(&DaemonSetSpec::default()), template_hash(&DaemonSetSpec::default()));
        assert_ne!(template_hash(&DaemonSetSpec::default()), template_hash(&spec));
    }
}
