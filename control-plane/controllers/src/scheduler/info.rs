//! What the scheduler keeps of Pods and Nodes: the fields filtering and scoring read, parsed once per watch
//! event (quantities to integers, selectors to matchers) so that placing a pod never re-parses an object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Node, NodeSelector, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Map, Value};
use skiff_api::selectors::LabelSelector;
use skiff_api::validation::parse_quantity;

/// kube-scheduler's requests for scoring a container that asks for nothing: without them a node full of
/// request-less pods would look empty and take every new one.
const DEFAULT_SCORE_CPU_MILLIS: i64 = 100;
const DEFAULT_SCORE_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts in the units the scheduler compares: millicores, bytes and a pod count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, other: &Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.pods += other.pods;
    }

    fn sub(&mut self, other: &Resources) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.pods -= other.pods;
    }

    fn max(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
    }
}

/// One topologySpreadConstraint, its selector parsed (with matchLabelKeys folded in).
#[derive(Clone, Debug)]
pub struct SpreadConstraint {
    pub max_skew: u32,
    pub topology_key: String,
    pub min_domains: u32,
    /// DoNotSchedule: a filter; ScheduleAnyway: a preference in scoring.
    pub hard: bool,
    pub selector: LabelSelector,
}

/// A pod as the scheduler sees it.
#[derive(Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Map<String, Value>,
    /// What it asks for (containers summed, the largest init container, overhead); `pods` is 1.
    pub requests: Resources,
    /// The same with kube-scheduler's defaults for containers that ask for nothing, for scoring only.
    pub score_requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// requiredDuringSchedulingIgnoredDuringExecution.
    pub required_affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
    pub runtime_class: Option<String>,
    pub spread: Vec<SpreadConstraint>,
    /// Its replicas' common identity: the controller's uid, or else its labels; replicas avoid each other.
    pub workload: Option<String>,
    /// Succeeded or Failed: it holds nothing on its node any more.
    pub terminal: bool,
    /// Why no node can take it whatever their state (an invalid spread selector, which validation
    /// should have refused); the pod still counts where it is bound.
    pub problem: Option<String>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let labels: Map<String, Value> =
            meta.labels.iter().flatten().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let mut spread = Vec::new();
        let mut problem = None;
        for constraint in spec.topology_spread_constraints.iter().flatten() {
            let mut selector = constraint.label_selector.clone().unwrap_or_default();
            // matchLabelKeys narrows the selector to pods sharing this pod's values (e.g. pod-template-hash).
            for key in constraint.match_label_keys.iter().flatten() {
                if let Some(Value::String(value)) = labels.get(key) {
                    selector.match_labels.get_or_insert_default().insert(key.clone(), value.clone());
                }
            }
            match LabelSelector::from_k8s(&selector) {
                Ok(selector) => spread.push(SpreadConstraint {
                    max_skew: u32::try_from(constraint.max_skew).unwrap_or(1).max(1),
                    topology_key: constraint.topology_key.clone(),
                    min_domains: constraint.min_domains.and_then(|m| u32::try_from(m).ok()).unwrap_or(1),
                    hard: constraint.when_unsatisfiable != "ScheduleAnyway",
                    selector,
                }),
                Err(error) => problem = Some(format!("invalid topologySpreadConstraints labelSelector: {error}")),
            }
        }
        let workload =
            meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone()).or_else(
                || {
                    let labels = meta.labels.as_ref().filter(|l| !l.is_empty())?;
                    Some(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
                },
            );
        let (requests, score_requests) =
            pod_requests(&spec.containers, spec.init_containers.as_deref(), &spec.overhead);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        PodInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels,
            requests,
            score_requests,
            node_selector: spec.node_selector.unwrap_or_default(),
            required_affinity: spec
                .affinity
                .and_then(|a| a.node_affinity)
                .and_then(|a| a.required_during_scheduling_ignored_during_execution),
            tolerations: spec.tolerations.unwrap_or_default(),
            runtime_class: spec.runtime_class_name.filter(|c| !c.is_empty()),
            spread,
            workload,
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            problem,
        }
    }
}

/// Requests as kube-scheduler computes them: the containers' sum, raised to the largest init container
/// (they run one at a time, before the others), plus the pod's overhead. A container with only limits asks
/// for its limits (the API's defaulting). The second value adds the scoring defaults.
fn pod_requests(
    containers: &[Container],
    init_containers: Option<&[Container]>,
    overhead: &Option<BTreeMap<String, Quantity>>,
) -> (Resources, Resources) {
    let mut requests = Resources { pods: 1, ..Resources::default() };
    let mut score = requests;
    for container in containers {
        let asked = container_requests(container);
        requests.add(&asked);
        score.add(&with_score_defaults(asked));
    }
    for container in init_containers.into_iter().flatten() {
        let asked = container_requests(container);
        requests.max(&asked);
        score.max(&with_score_defaults(asked));
    }
    let overhead = Resources {
        cpu: quantity(overhead.as_ref(), "cpu", 1000.0),
        memory: quantity(overhead.as_ref(), "memory", 1.0),
        pods: 0,
    };
    requests.add(&overhead);
    score.add(&overhead);
    (requests, score)
}

fn container_requests(container: &Container) -> Resources {
    let resources = container.resources.as_ref();
    let amount = |name: &str, unit: f64| {
        let requests = resources.and_then(|r| r.requests.as_ref()).filter(|r| r.contains_key(name));
        quantity(requests.or_else(|| resources.and_then(|r| r.limits.as_ref())), name, unit)
    };
    Resources { cpu: amount("cpu", 1000.0), memory: amount("memory", 1.0), pods: 0 }
}

fn with_score_defaults(mut asked: Resources) -> Resources {
    if asked.cpu == 0 {
        asked.cpu = DEFAULT_SCORE_CPU_MILLIS;
    }
    if asked.memory == 0 {
        asked.memory = DEFAULT_SCORE_MEMORY;
    }
    asked
}

/// A quantity in `unit`s per one (1000 for millicores), rounded up as Kubernetes' MilliValue and Value do;
/// absent or unparsable is zero (validation rejects those on write).
fn quantity(map: Option<&BTreeMap<String, Quantity>>, name: &str, unit: f64) -> i64 {
    let Some(value) = map.and_then(|m| m.get(name)).and_then(|q| parse_quantity(&q.0)) else { return 0 };
    let scaled = value * unit;
    // The parse is in binary floating point: 950m is 0.95000000000000006, which must stay 950 millicores.
    let nearest = scaled.round();
    (if (scaled - nearest).abs() < 1e-6 { nearest } else { scaled.ceil() }) as i64
}

/// A node as the scheduler sees it, with the pods counted on it (bound, or assumed while being bound).
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    /// False for a node that is gone (or not yet seen) while pods still name it: it holds them, takes none.
    pub present: bool,
    pub labels: BTreeMap<String, String>,
    pub unschedulable: bool,
    /// Its taints, plus the not-ready or unreachable taint its Ready condition implies when the node
    /// lifecycle controller has not added it yet, so that a node that stopped reporting takes no new pods
    /// but DaemonSet pods, which tolerate those taints, still go there.
    pub taints: Vec<Taint>,
    pub runtime_handlers: Vec<String>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub score_requested: Resources,
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// How many pods of each workload are here.
    pub workloads: HashMap<String, u32>,
}

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

impl NodeInfo {
    pub fn placeholder(name: &str) -> Self {
        NodeInfo { name: name.to_owned(), ..NodeInfo::default() }
    }

    /// Takes the node's current spec and status, keeping the pods counted on it; true when anything the
    /// scheduler reads changed (heartbeats alone change nothing).
    pub fn update(&mut self, node: &Node) -> bool {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let resources = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let implied = match ready {
            Some("True") => None,
            Some("False") => Some(TAINT_NOT_READY),
            _ => Some(TAINT_UNREACHABLE),
        };
        if let Some(key) = implied
            && !taints.iter().any(|t| t.key == key)
        {
            taints.push(Taint { key: key.into(), effect: "NoSchedule".into(), ..Taint::default() });
        }
        let handlers = status.and_then(|s| s.runtime_handlers.as_ref()).into_iter().flatten();
        let runtime_handlers: Vec<String> = handlers.filter_map(|h| h.name.clone()).collect();
        let allocatable = Resources {
            cpu: quantity(resources, "cpu", 1000.0),
            memory: quantity(resources, "memory", 1.0),
            pods: quantity(resources, "pods", 1.0),
        };
        let changed = !self.present
            || self.labels != labels
            || self.unschedulable != unschedulable
            || self.taints != taints
            || self.runtime_handlers != runtime_handlers
            || self.allocatable != allocatable;
        self.present = true;
        self.labels = labels;
        self.unschedulable = unschedulable;
        self.taints = taints;
        self.runtime_handlers = runtime_handlers;
        self.allocatable = allocatable;
        changed
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.score_requested.add(&pod.score_requests);
        if let Some(workload) = &pod.workload {
            *self.workloads.entry(workload.clone()).or_default() += 1;
        }
        if let Some(old) = self.pods.insert(pod.uid.clone(), pod) {
            self.forget(&old);
        }
    }

    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(pod) = self.pods.remove(uid) {
            self.forget(&pod);
        }
    }

    fn forget(&mut self, pod: &PodInfo) {
        self.requested.sub(&pod.requests);
        self.score_requested.sub(&pod.score_requests);
        if let Some(workload) = &pod.workload
            && let Some(count) = self.workloads.get_mut(workload)
        {
            *count -= 1;
            if *count == 0 {
                self.workloads.remove(workload);
            }
        }
    }

    pub fn workload_count(&self, pod: &PodInfo) -> u32 {
        pod.workload.as_ref().and_then(|w| self.workloads.get(w)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> PodInfo {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec}))
                .unwrap();
        PodInfo::from_pod(&pod)
    }

    #[test]
    fn requests_sum_containers_take_the_largest_init_container_and_overhead() {
        let info = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"memory": "128Mi"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "overhead": {"memory": "10Mi"},
        }));
        assert_eq!(info.requests, Resources { cpu: 2000, memory: (192 + 10) << 20, pods: 1 });
        let odd =
            pod(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "950m", "memory": "0.5"}}}]}));
        assert_eq!((odd.requests.cpu, odd.requests.memory), (950, 1), "no float noise; fractions round up");
    }

    #[test]
    fn scoring_counts_request_less_containers_at_kube_defaults() {
        let info = pod(json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "1"}}}]}));
        assert_eq!(info.requests, Resources { cpu: 1000, memory: 0, pods: 1 });
        assert_eq!(info.score_requests, Resources { cpu: 1100, memory: 400 << 20, pods: 1 });
    }

    #[test]
    fn the_workload_is_the_controller_else_the_labels() {
        let owned: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]},
            "spec": {"containers": []}}))
        .unwrap();
        assert_eq!(PodInfo::from_pod(&owned).workload.as_deref(), Some("rs-uid"));
        let labelled: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p", "labels": {"tier": "db", "app": "web"}}, "spec": {"containers": []}}),
        )
        .unwrap();
        assert_eq!(PodInfo::from_pod(&labelled).workload.as_deref(), Some("app=web,tier=db"));
        assert_eq!(pod(json!({"containers": []})).workload, None);
    }

    #[test]
    fn a_node_that_stopped_reporting_is_tainted_unreachable() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {
            "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "Unknown"}],
            "runtimeHandlers": [{"name": "wasm"}]}}))
        .unwrap();
        let mut info = NodeInfo::placeholder("n");
        assert!(info.update(&node), "a new node is a change");
        assert!(!info.update(&node), "the same node again is not");
        assert_eq!(info.allocatable, Resources { cpu: 2000, memory: 1 << 30, pods: 110 });
        assert_eq!(info.runtime_handlers, ["wasm"]);
        assert_eq!(info.taints.len(), 1);
        assert_eq!((info.taints[0].key.as_str(), info.taints[0].effect.as_str()), (TAINT_UNREACHABLE, "NoSchedule"));
    }

    #[test]
    fn pods_are_counted_and_uncounted() {
        let mut node = NodeInfo::placeholder("n");
        let info = Arc::new(pod(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]})));
        node.add_pod(info.clone());
        node.add_pod(info.clone());
        assert_eq!(node.requested, Resources { cpu: 1000, memory: 0, pods: 1 }, "adding twice counts once");
        node.remove_pod("u");
        assert_eq!(node.requested, Resources::default());
        assert!(node.workloads.is_empty());
    }
}
