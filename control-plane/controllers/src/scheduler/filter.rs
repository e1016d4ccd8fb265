//! Which nodes a pod may go to, and why not the others, in kube-scheduler's words. Pure functions over
//! [`PodInfo`] and [`NodeInfo`].
//!
//! The checks run in kube-scheduler's plugin order (NodeUnschedulable, TaintToleration, NodeAffinity,
//! RuntimeClass, NodeResourcesFit, PodTopologySpread) and stop at the first that fails, except resources,
//! which name every resource that is short, as kube-scheduler's NodeResourcesFit does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{Taint, Toleration};

use super::info::{NodeInfo, PodInfo, TAINT_UNSCHEDULABLE};
use crate::placement;

/// Why one node does not fit a pod; the Display form is kube-scheduler's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    UntoleratedTaint {
        key: String,
        value: String,
    },
    NodeAffinity,
    /// The node lacks the runtime handler the pod's RuntimeClass names.
    NoRuntime(String),
    InsufficientCpu,
    InsufficientMemory,
    TooManyPods,
    SpreadMissingLabel,
    SpreadSkew,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::NoRuntime(handler) => write!(f, "node(s) had no \"{handler}\" runtime handler"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::SpreadMissingLabel => {
                f.write_str("node(s) didn't match pod topology spread constraints (missing required label)")
            }
            Reason::SpreadSkew => f.write_str("node(s) didn't match pod topology spread constraints"),
        }
    }
}

/// What a pod needs beyond its own fields: the runtime handler its RuntimeClass names, and the spread
/// counts computed once per placement.
pub struct Needs<'a> {
    pub handler: Option<&'a str>,
    pub spread: SpreadCounts,
}

/// Checks one node; `Err` holds the reasons it does not fit (one, or several resources).
pub fn filter(pod: &PodInfo, node: &NodeInfo, needs: &Needs) -> Result<(), Vec<Reason>> {
    if node.unschedulable && !tolerates(&pod.tolerations, TAINT_UNSCHEDULABLE, "", "NoSchedule") {
        return Err(vec![Reason::Unschedulable]);
    }
    if let Some(taint) = untolerated(&pod.tolerations, &node.taints) {
        let value = taint.value.clone().unwrap_or_default();
        return Err(vec![Reason::UntoleratedTaint { key: taint.key.clone(), value }]);
    }
    if !matches_affinity(pod, node) {
        return Err(vec![Reason::NodeAffinity]);
    }
    if let Some(handler) = needs.handler
        && !node.runtime_handlers.iter().any(|h| h == handler)
    {
        return Err(vec![Reason::NoRuntime(handler.to_owned())]);
    }
    fits_resources(pod, node)?;
    needs.spread.filter(pod, node).map_err(|r| vec![r])
}

fn fits_resources(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let (asked, total, used) = (&pod.requests, &node.allocatable, &node.requested);
    let mut short = Vec::new();
    if used.pods + 1 > total.pods {
        short.push(Reason::TooManyPods);
    }
    // As in kube-scheduler, a pod asking for none of a resource fits a node that has none left.
    if asked.cpu > 0 && asked.cpu > total.cpu - used.cpu {
        short.push(Reason::InsufficientCpu);
    }
    if asked.memory > 0 && asked.memory > total.memory - used.memory {
        short.push(Reason::InsufficientMemory);
    }
    if short.is_empty() { Ok(()) } else { Err(short) }
}

/// The first NoSchedule or NoExecute taint no toleration covers (PreferNoSchedule only steers scoring).
fn untolerated<'t>(tolerations: &[Toleration], taints: &'t [Taint]) -> Option<&'t Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| placement::tolerates(t, taint)))
}

/// Whether a toleration covers the taint `key=value:effect`.
fn tolerates(tolerations: &[Toleration], key: &str, value: &str, effect: &str) -> bool {
    let taint = Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), time_added: None };
    tolerations.iter().any(|t| placement::tolerates(t, &taint))
}

/// nodeSelector and required node affinity, both of which must hold.
pub fn matches_affinity(pod: &PodInfo, node: &NodeInfo) -> bool {
    let selector_ok = pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    selector_ok
        && pod.required_affinity.as_ref().is_none_or(|required| placement::selects(required, &node.labels, &node.name))
}

/// For each topologySpreadConstraint, how many matching pods each domain (value of the topology label)
/// holds, over the nodes the pod could go to by its node affinity (kube's nodeAffinityPolicy Honor).
#[derive(Debug, Default)]
pub struct SpreadCounts {
    constraints: Vec<ConstraintCounts>,
}

#[derive(Debug)]
struct ConstraintCounts {
    domains: HashMap<String, u32>,
    /// The fewest matching pods in any domain (0 while fewer domains exist than minDomains).
    min: u32,
}

impl SpreadCounts {
    pub fn new<'n>(pod: &PodInfo, nodes: impl Iterator<Item = &'n NodeInfo> + Clone) -> Self {
        let constraints = pod
            .spread
            .iter()
            .map(|constraint| {
                let mut domains: HashMap<String, u32> = HashMap::new();
                let eligible = nodes.clone().filter(|n| n.present && matches_affinity(pod, n));
                for node in eligible {
                    let Some(domain) = node.labels.get(&constraint.topology_key) else { continue };
                    let matching = node
                        .pods
                        .values()
                        .filter(|p| p.namespace == pod.namespace && constraint.selector.matches(&p.labels))
                        .count() as u32;
                    *domains.entry(domain.clone()).or_default() += matching;
                }
                let min = if (domains.len() as u32) < constraint.min_domains {
                    0
                } else {
                    domains.values().copied().min().unwrap_or(0)
                };
                ConstraintCounts { domains, min }
            })
            .collect();
        SpreadCounts { constraints }
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        for (constraint, counts) in pod.spread.iter().zip(&self.constraints).filter(|(c, _)| c.hard) {
            let Some(domain) = node.labels.get(&constraint.topology_key) else {
                return Err(Reason::SpreadMissingLabel);
            };
            let here = counts.domains.get(domain).copied().unwrap_or(0);
            let itself = u32::from(constraint.selector.matches(&pod.labels));
            if here + itself > counts.min + constraint.max_skew {
                return Err(Reason::SpreadSkew);
            }
        }
        Ok(())
    }

    /// Matching pods in the node's domains for the ScheduleAnyway constraints: fewer is better.
    pub fn soft_count(&self, pod: &PodInfo, node: &NodeInfo) -> u32 {
        pod.spread
            .iter()
            .zip(&self.constraints)
            .filter(|(c, _)| !c.hard)
            .filter_map(|(c, counts)| counts.domains.get(node.labels.get(&c.topology_key)?))
            .sum()
    }
}

/// Why a pod fits nowhere: reasons counted over the nodes, or one cause that rules out every node.
#[derive(Debug, Default)]
pub struct Diagnosis {
    pub nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
    /// Set when the pod could not be considered at all (a missing RuntimeClass, a bad selector).
    pub pod_error: Option<String>,
}

impl Diagnosis {
    pub fn add(&mut self, reasons: Vec<Reason>) {
        for reason in reasons {
            *self.reasons.entry(reason).or_default() += 1;
        }
    }

    /// kube-scheduler's FitError message: "0/3 nodes are available: 1 node(s) had untolerated taint
    /// {node.kubernetes.io/unreachable: }, 2 Insufficient memory." (entries sorted as strings, as there).
    pub fn message(&self) -> String {
        if self.nodes == 0 && self.pod_error.is_none() {
            return "no nodes available to schedule pods".into();
        }
        let mut message = format!("0/{} nodes are available:", self.nodes);
        if let Some(error) = &self.pod_error {
            message.push_str(&format!(" {error}."));
            return message;
        }
        let mut entries: Vec<String> = self.reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
        entries.sort();
        message.push_str(&format!(" {}.", entries.join(", ")));
        message
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use super::*;
    use crate::scheduler::info::Resources;

    fn node(name: &str, extra: Value) -> NodeInfo {
        let mut object = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "runtimeHandlers": [{"name": "wasm"}, {"name": "oci"}]}});
        merge(&mut object, extra);
        let node: Node = serde_json::from_value(object).unwrap();
        let mut info = NodeInfo::placeholder(name);
        info.update(&node);
        info
    }

    fn pod(name: &str, extra: Value) -> PodInfo {
        let mut object = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
        merge(&mut object, extra);
        let pod: Pod = serde_json::from_value(object).unwrap();
        PodInfo::from_pod(&pod)
    }

    fn merge(target: &mut Value, patch: Value) {
        json_merge(target, &patch);
        fn json_merge(target: &mut Value, patch: &Value) {
            match (target, patch) {
                (Value::Object(t), Value::Object(p)) => {
                    for (k, v) in p {
                        json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
                (t, p) => *t = p.clone(),
            }
        }
    }

    fn check(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let spread = SpreadCounts::new(pod, std::iter::once(node));
        filter(pod, node, &Needs { handler: None, spread })
    }

    fn reasons(result: Result<(), Vec<Reason>>) -> Vec<String> {
        result.err().unwrap_or_default().iter().map(Reason::to_string).collect()
    }

    #[test]
    fn a_ready_node_with_room_fits() {
        assert_eq!(check(&pod("p", json!({})), &node("n", json!({}))), Ok(()));
    }

    #[test]
    fn cordoned_nodes_refuse_unless_tolerated() {
        let cordoned = node("n", json!({"spec": {"unschedulable": true}}));
        assert_eq!(reasons(check(&pod("p", json!({})), &cordoned)), ["node(s) were unschedulable"]);
        let tolerant = pod(
            "p",
            json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(check(&tolerant, &cordoned), Ok(()));
    }

    #[test]
    fn taints_need_tolerations() {
        let tainted =
            node("n", json!({"spec": {"taints": [{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}]}}));
        assert_eq!(reasons(check(&pod("p", json!({})), &tainted)), ["node(s) had untolerated taint {dedicated: edge}"]);
        for toleration in [
            json!({"key": "dedicated", "value": "edge"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}),
            json!({"operator": "Exists"}),
        ] {
            let tolerant = pod("p", json!({"spec": {"tolerations": [toleration]}}));
            assert_eq!(check(&tolerant, &tainted), Ok(()), "{:?}", tolerant.tolerations);
        }
        for toleration in [
            json!({"key": "dedicated", "value": "cloud"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
        ] {
            let intolerant = pod("p", json!({"spec": {"tolerations": [toleration]}}));
            assert!(check(&intolerant, &tainted).is_err(), "{:?}", intolerant.tolerations);
        }
        let preferred = node("n", json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}));
        assert_eq!(check(&pod("p", json!({})), &preferred), Ok(()), "PreferNoSchedule does not filter");
    }

    #[test]
    fn a_node_that_stopped_reporting_is_refused_by_its_implied_taint() {
        let gone = node("n", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}));
        assert_eq!(
            reasons(check(&pod("p", json!({})), &gone)),
            ["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"]
        );
        let daemon = pod(
            "p",
            json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}}),
        );
        assert_eq!(check(&daemon, &gone), Ok(()));
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let edge = node("edge-1", json!({"metadata": {"labels": {"zone": "edge", "generation": "3"}}}));
        let affinity = |expressions: Value| {
            pod(
                "p",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": expressions}]}}}}}),
            )
        };
        let fits = |p: &PodInfo| check(p, &edge).is_ok();
        assert!(fits(&pod("p", json!({"spec": {"nodeSelector": {"zone": "edge"}}}))));
        assert_eq!(
            reasons(check(&pod("p", json!({"spec": {"nodeSelector": {"zone": "cloud"}}})), &edge)),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        assert!(fits(&affinity(json!([{"key": "zone", "operator": "In", "values": ["edge", "x"]}]))));
        assert!(!fits(&affinity(json!([{"key": "zone", "operator": "NotIn", "values": ["edge"]}]))));
        assert!(fits(&affinity(json!([{"key": "zone", "operator": "Exists"}]))));
        assert!(!fits(&affinity(json!([{"key": "zone", "operator": "DoesNotExist"}]))));
        assert!(fits(&affinity(json!([{"key": "gpu", "operator": "DoesNotExist"}]))));
        assert!(fits(&affinity(json!([{"key": "generation", "operator": "Gt", "values": ["2"]}]))));
        assert!(!fits(&affinity(json!([{"key": "generation", "operator": "Lt", "values": ["3"]}]))));
        assert!(!fits(&affinity(json!([{"key": "zone", "operator": "Gt", "values": ["2"]}]))), "not a number");
        assert!(
            !fits(&affinity(json!([
                {"key": "zone", "operator": "In", "values": ["edge"]},
                {"key": "gpu", "operator": "Exists"},
            ]))),
            "expressions of a term are ANDed"
        );
        let by_name = |names: Value, operator: &str| {
            pod(
                "p",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
                    {"matchFields": [{"key": "metadata.name", "operator": operator, "values": names}]},
                ]}}}}}),
            )
        };
        assert!(fits(&by_name(json!(["edge-1"]), "In")), "terms are ORed; matchFields names the node");
        assert!(!fits(&by_name(json!(["edge-2"]), "In")));
        assert!(fits(&by_name(json!(["edge-2"]), "NotIn")));
        let empty = pod(
            "p",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{}]}}}}}),
        );
        assert!(!fits(&empty), "an empty term matches nothing");
    }

    #[test]
    fn the_runtime_class_handler_must_be_on_the_node() {
        let wasm_only = node("n", json!({"status": {"runtimeHandlers": [{"name": "wasm"}]}}));
        let pod = pod("p", json!({}));
        let spread = SpreadCounts::default();
        assert_eq!(
            filter(&pod, &wasm_only, &Needs { handler: Some("oci"), spread }).unwrap_err()[0].to_string(),
            "node(s) had no \"oci\" runtime handler"
        );
        let spread = SpreadCounts::default();
        assert_eq!(filter(&pod, &wasm_only, &Needs { handler: Some("wasm"), spread }), Ok(()));
    }

    #[test]
    fn every_short_resource_is_named() {
        let mut full = node("n", json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2"}}}));
        let big = pod(
            "big",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "950m", "memory": "1000Mi"}}}]}}),
        );
        full.add_pod(Arc::new(big));
        assert_eq!(check(&pod("p", json!({})), &full), Err(vec![Reason::InsufficientCpu, Reason::InsufficientMemory]));
        full.add_pod(Arc::new(pod("other", json!({"spec": {"containers": [{"name": "c"}]}}))));
        let nothing = pod("p", json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(reasons(check(&nothing, &full)), ["Too many pods"], "a request-less pod still needs a pod slot");
        assert_eq!(full.requested, Resources { cpu: 950, memory: 1000 << 20, pods: 2 });
    }

    #[test]
    fn hard_spread_constraints_bound_the_skew() {
        let spread = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}}]}});
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        a.add_pod(Arc::new(pod("web-1", json!({"metadata": {"labels": {"app": "web"}}}))));
        a.add_pod(Arc::new(pod("other", json!({"metadata": {"labels": {"app": "db"}}}))));
        let next = pod("web-2", spread.clone());
        let counts = SpreadCounts::new(&next, [&a, &b].into_iter());
        let needs = Needs { handler: None, spread: counts };
        assert_eq!(
            reasons(filter(&next, &a, &needs)),
            ["node(s) didn't match pod topology spread constraints"],
            "a already has one more than b"
        );
        assert_eq!(filter(&next, &b, &needs), Ok(()));
        let unlabelled = node("c", json!({"metadata": {"labels": null}}));
        assert_eq!(
            reasons(filter(&next, &unlabelled, &needs)),
            ["node(s) didn't match pod topology spread constraints (missing required label)"]
        );
        let mut soft = spread;
        soft["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"] = json!("ScheduleAnyway");
        let next = pod("web-2", soft);
        let counts = SpreadCounts::new(&next, [&a, &b].into_iter());
        assert_eq!((counts.soft_count(&next, &a), counts.soft_count(&next, &b)), (1, 0));
        assert_eq!(filter(&next, &a, &Needs { handler: None, spread: counts }), Ok(()), "ScheduleAnyway never filters");
    }

    #[test]
    fn messages_read_like_kube_schedulers() {
        let mut diagnosis = Diagnosis { nodes: 3, ..Diagnosis::default() };
        diagnosis.add(vec![Reason::InsufficientMemory]);
        diagnosis.add(vec![Reason::InsufficientMemory]);
        diagnosis
            .add(vec![Reason::UntoleratedTaint { key: "node.kubernetes.io/unreachable".into(), value: String::new() }]);
        assert_eq!(
            diagnosis.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 Insufficient memory."
        );
        let mut runtime = Diagnosis { nodes: 3, ..Diagnosis::default() };
        (0..3).for_each(|_| runtime.add(vec![Reason::NoRuntime("oci".into())]));
        assert_eq!(runtime.message(), "0/3 nodes are available: 3 node(s) had no \"oci\" runtime handler.");
        let missing =
            Diagnosis { nodes: 2, pod_error: Some("RuntimeClass \"gpu\" not found".into()), ..Diagnosis::default() };
        assert_eq!(missing.message(), "0/2 nodes are available: RuntimeClass \"gpu\" not found.");
        assert_eq!(Diagnosis::default().message(), "no nodes available to schedule pods");
    }
}
