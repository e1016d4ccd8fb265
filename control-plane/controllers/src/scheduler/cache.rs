//! The scheduler's picture of the cluster, kept up to date from the Node and Pod watches: every node with
//! the pods counted on it, including pods assumed onto a node while their binding is in flight, so that
//! binds running side by side never overcommit a node. Placement ([`Cache::place`]) is pure: no IO.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::filter::{self, Diagnosis, Needs, SpreadCounts};
use super::info::{NodeInfo, PodInfo};
use super::score;

/// Below this many nodes every node is checked; above, kube-scheduler's adaptive percentageOfNodesToScore
/// stops once enough feasible nodes are found (50% less 1% per 125 nodes, at least 5%, at least this many).
const MIN_FEASIBLE_NODES: usize = 100;

#[derive(Debug)]
pub struct PodEntry {
    pub info: Arc<PodInfo>,
    /// The node the pod counts on: bound there, or assumed while its binding is in flight.
    pub node: Option<String>,
    pub assumed: bool,
    /// Waiting for this scheduler: no node, its schedulerName ours, not being deleted, not assumed.
    pub pending: bool,
    /// The Unschedulable message last reported for it, so that the same one is not reported again.
    pub reported: Option<String>,
}

/// What a pod event changed, for the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodUpdate {
    pub pending: bool,
    /// It stopped counting on a node (deleted, finished, moved): room for parked pods.
    pub freed: bool,
}

#[derive(Debug, Default)]
pub struct Cache {
    /// Nodes in a stable order for rotating the search, and placeholders for pods on unknown nodes.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    present: usize,
    pods: HashMap<String, PodEntry>,
    /// Where the next search starts, so that successive pods are not all checked against the same nodes.
    next_start: usize,
}

impl Cache {
    /// Takes a Node; true when it changed anything placement reads.
    pub fn apply_node(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.as_deref() else { return false };
        let slot = self.slot(name);
        let was_present = self.nodes[slot].present;
        let changed = self.nodes[slot].update(node);
        self.present += usize::from(!was_present);
        changed
    }

    pub fn delete_node(&mut self, name: &str) {
        let Some(&slot) = self.index.get(name) else { return };
        if self.nodes[slot].present {
            self.nodes[slot].present = false;
            self.present -= 1;
        }
        self.release_if_unused(slot);
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter(|n| n.present).map(|n| n.name.as_str())
    }

    #[cfg(test)]
    fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&slot| &self.nodes[slot])
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.index.get(name) {
            return slot;
        }
        self.nodes.push(NodeInfo::placeholder(name));
        self.index.insert(name.to_owned(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// Drops a node that is gone and holds no pods.
    fn release_if_unused(&mut self, slot: usize) {
        let node = &self.nodes[slot];
        if node.present || !node.pods.is_empty() {
            return;
        }
        self.index.remove(&node.name);
        self.nodes.swap_remove(slot);
        if let Some(moved) = self.nodes.get(slot) {
            self.index.insert(moved.name.clone(), slot);
        }
    }

    /// Takes a Pod as the watch shows it; `scheduler` is the schedulerName this scheduler answers to.
    pub fn apply_pod(&mut self, pod: &Pod, scheduler: &str) -> PodUpdate {
        let Some(uid) = pod.metadata.uid.clone() else { return PodUpdate::default() };
        let info = Arc::new(PodInfo::from_pod(pod));
        let spec = pod.spec.as_ref();
        let bound = spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let previous = self.pods.remove(&uid);
        let was_counted = previous.as_ref().and_then(|p| p.node.clone());
        // A pod still unbound while our binding is in flight stays where it was assumed.
        let assumed = bound.is_none() && previous.as_ref().is_some_and(|p| p.assumed);
        let node = match (&bound, assumed) {
            _ if info.terminal => None,
            (Some(node), _) => Some(node.clone()),
            (None, true) => was_counted.clone(),
            (None, false) => None,
        };
        if let Some(old) = &was_counted {
            self.uncount(old, &uid);
        }
        if let Some(new) = &node {
            let slot = self.slot(new);
            self.nodes[slot].add_pod(info.clone());
        }
        let ours = spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|s| s.is_empty() || s == scheduler);
        let pending =
            bound.is_none() && !assumed && !info.terminal && ours && pod.metadata.deletion_timestamp.is_none();
        let reported = previous.and_then(|p| p.reported).or_else(|| unschedulable_message(pod));
        let freed = was_counted.is_some() && was_counted != node;
        self.pods.insert(uid, PodEntry { info, node, assumed, pending, reported });
        PodUpdate { pending, freed }
    }

    /// Forgets a deleted pod; true when it freed room on a node.
    pub fn delete_pod(&mut self, uid: &str) -> bool {
        let Some(entry) = self.pods.remove(uid) else { return false };
        if let Some(node) = &entry.node {
            self.uncount(node, uid);
        }
        entry.node.is_some()
    }

    fn uncount(&mut self, node: &str, uid: &str) {
        if let Some(&slot) = self.index.get(node) {
            self.nodes[slot].remove_pod(uid);
            self.release_if_unused(slot);
        }
    }

    pub fn pod(&self, uid: &str) -> Option<&PodEntry> {
        self.pods.get(uid)
    }

    pub fn pod_uids(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    /// Notes the message reported for an unschedulable pod; false when it is the one reported already.
    pub fn note_reported(&mut self, uid: &str, message: &str) -> bool {
        match self.pods.get_mut(uid) {
            Some(entry) if entry.reported.as_deref() != Some(message) => {
                entry.reported = Some(message.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Forgets a report that did not reach the API server, so the next attempt makes it again.
    pub fn clear_reported(&mut self, uid: &str) {
        if let Some(entry) = self.pods.get_mut(uid) {
            entry.reported = None;
        }
    }

    /// Counts a pending pod on `node` while it is being bound.
    pub fn assume(&mut self, uid: &str, node: &str) {
        let Some(entry) = self.pods.get_mut(uid).filter(|e| e.pending) else { return };
        entry.pending = false;
        entry.assumed = true;
        entry.node = Some(node.to_owned());
        let info = entry.info.clone();
        let slot = self.slot(node);
        self.nodes[slot].add_pod(info);
    }

    /// Undoes [`Cache::assume`] after a failed binding; true when the pod is pending again.
    pub fn forget(&mut self, uid: &str) -> bool {
        let Some(entry) = self.pods.get_mut(uid).filter(|e| e.assumed) else { return false };
        entry.assumed = false;
        entry.pending = true;
        if let Some(node) = entry.node.take() {
            self.uncount(&node, uid);
        }
        true
    }

    /// Chooses a node for a pending pod: filter, then score the feasible nodes. `handler` is the runtime
    /// handler its RuntimeClass names, or why that class cannot be used.
    pub fn place(&mut self, pod: &PodInfo, handler: Result<Option<&str>, String>) -> Result<String, Diagnosis> {
        let mut diagnosis = Diagnosis { nodes: self.present, ..Diagnosis::default() };
        let handler = match (&pod.problem, handler) {
            (None, Ok(handler)) => handler,
            (Some(problem), _) => return Err(Diagnosis { pod_error: Some(problem.clone()), ..diagnosis }),
            (None, Err(error)) => return Err(Diagnosis { pod_error: Some(error), ..diagnosis }),
        };
        if self.present == 0 {
            return Err(diagnosis);
        }
        let spread =
            if pod.spread.is_empty() { SpreadCounts::default() } else { SpreadCounts::new(pod, self.nodes.iter()) };
        let needs = Needs { handler, spread };
        let wanted = feasible_nodes_to_find(self.present);
        let total = self.nodes.len();
        let mut feasible = Vec::with_capacity(wanted);
        let mut checked = 0;
        for offset in 0..total {
            let slot = (self.next_start + offset) % total;
            let node = &self.nodes[slot];
            checked = offset + 1;
            if !node.present {
                continue;
            }
            match filter::filter(pod, node, &needs) {
                Ok(()) => feasible.push(slot),
                Err(reasons) => diagnosis.add(reasons),
            }
            if feasible.len() == wanted {
                break;
            }
        }
        self.next_start = (self.next_start + checked) % total;
        if feasible.is_empty() {
            return Err(diagnosis);
        }
        let candidates: Vec<&NodeInfo> = feasible.iter().map(|&slot| &self.nodes[slot]).collect();
        let best = score::select(pod, &candidates, &needs.spread);
        Ok(candidates[best].name.clone())
    }
}

/// kube-scheduler's numFeasibleNodesToFind with the adaptive default.
fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes < MIN_FEASIBLE_NODES {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN_FEASIBLE_NODES)
}

/// The message of a PodScheduled=False condition the pod already carries (from an earlier attempt, maybe
/// by an earlier leader).
fn unschedulable_message(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    scheduled.message.clone()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::scheduler::info::Resources;

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "runtimeHandlers": [{"name": "wasm"}]}}))
        .unwrap()
    }

    fn pod(name: &str, cpu: &str, node: Option<&str>) -> Pod {
        pod_with(name, cpu, node, json!({}))
    }

    fn pod_with(name: &str, cpu: &str, node: Option<&str>, extra: Value) -> Pod {
        let mut object = json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        for (key, value) in extra.as_object().into_iter().flatten() {
            object[key] = value.clone();
        }
        serde_json::from_value(object).unwrap()
    }

    fn place(cache: &mut Cache, uid: &str) -> Result<String, String> {
        let info = cache.pod(uid).unwrap().info.clone();
        cache.place(&info, Ok(None)).map_err(|d| d.message())
    }

    fn requested(cache: &Cache, node: &str) -> Resources {
        cache.node(node).unwrap().requested
    }

    #[test]
    fn assumed_pods_hold_room_until_bound_or_forgotten() {
        let mut cache = Cache::default();
        cache.apply_node(&node("a", "1"));
        for name in ["p1", "p2"] {
            assert!(cache.apply_pod(&pod(name, "600m", None), "default-scheduler").pending);
        }
        assert_eq!(place(&mut cache, "p1").as_deref(), Ok("a"));
        cache.assume("p1", "a");
        assert_eq!(place(&mut cache, "p2"), Err("0/1 nodes are available: 1 Insufficient cpu.".into()));
        // An update of the pod while its binding is in flight keeps it assumed.
        assert_eq!(cache.apply_pod(&pod("p1", "600m", None), "default-scheduler"), PodUpdate::default());
        assert_eq!(requested(&cache, "a").cpu, 600);
        assert!(cache.forget("p1"), "a failed binding makes the pod pending again");
        assert_eq!(requested(&cache, "a").cpu, 0);
        cache.assume("p1", "a");
        cache.apply_pod(&pod("p1", "600m", Some("a")), "default-scheduler");
        assert!(!cache.forget("p1"), "a bound pod is no longer assumed");
        assert_eq!(requested(&cache, "a").cpu, 600);
        let finished = pod_with("p1", "600m", Some("a"), json!({"status": {"phase": "Succeeded"}}));
        assert!(cache.apply_pod(&finished, "default-scheduler").freed);
        assert_eq!(requested(&cache, "a").cpu, 0);
        assert_eq!(place(&mut cache, "p2").as_deref(), Ok("a"));
    }

    #[test]
    fn only_our_unbound_live_pods_are_pending() {
        let mut cache = Cache::default();
        let other = pod_with("x", "0", None, json!({"spec": {"schedulerName": "other", "containers": []}}));
        assert!(!cache.apply_pod(&other, "default-scheduler").pending);
        let deleting = pod_with(
            "y",
            "0",
            None,
            json!({"metadata": {"name": "y", "uid": "y", "deletionTimestamp": "2025-01-01T00:00:00Z"}}),
        );
        assert!(!cache.apply_pod(&deleting, "default-scheduler").pending);
        let named = pod_with("z", "0", None, json!({"spec": {"schedulerName": "default-scheduler", "containers": []}}));
        assert!(cache.apply_pod(&named, "default-scheduler").pending);
        assert!(!cache.apply_pod(&pod("b", "0", Some("a")), "default-scheduler").pending);
    }

    #[test]
    fn pods_on_unknown_nodes_count_once_the_node_appears_and_survive_its_deletion() {
        let mut cache = Cache::default();
        cache.apply_pod(&pod("early", "500m", Some("late")), "default-scheduler");
        assert_eq!(cache.node_names().count(), 0, "a placeholder is not a node");
        cache.apply_node(&node("late", "1"));
        assert_eq!(requested(&cache, "late").cpu, 500);
        cache.delete_node("late");
        assert!(cache.node("late").is_some(), "kept while it holds pods");
        assert!(cache.delete_pod("early"));
        assert!(cache.node("late").is_none());
    }

    #[test]
    fn node_deletion_keeps_the_index_consistent() {
        let mut cache = Cache::default();
        for name in ["a", "b", "c"] {
            cache.apply_node(&node(name, "1"));
        }
        cache.delete_node("a");
        assert_eq!(cache.node_names().collect::<Vec<_>>(), ["c", "b"]);
        assert_eq!(cache.node("c").unwrap().name, "c");
        cache.apply_pod(&pod("p", "0", None), "default-scheduler");
        let placed = place(&mut cache, "p").unwrap();
        assert!(["b", "c"].contains(&placed.as_str()));
    }

    #[test]
    fn replicas_spread_over_the_nodes() {
        let mut cache = Cache::default();
        for name in ["a", "b", "c"] {
            cache.apply_node(&node(name, "4"));
        }
        let mut placed = Vec::new();
        for i in 0..6 {
            let uid = format!("web-{i}");
            cache.apply_pod(&pod(&uid, "100m", None), "default-scheduler");
            let node = place(&mut cache, &uid).unwrap();
            cache.assume(&uid, &node);
            placed.push(node);
        }
        for name in ["a", "b", "c"] {
            assert_eq!(placed.iter().filter(|n| *n == name).count(), 2, "{placed:?}");
        }
    }

    #[test]
    fn runtime_class_problems_rule_out_every_node() {
        let mut cache = Cache::default();
        assert_eq!(
            cache.place(&PodInfo::from_pod(&pod("p", "0", None)), Ok(None)).unwrap_err().message(),
            "no nodes available to schedule pods"
        );
        cache.apply_node(&node("a", "1"));
        cache.apply_node(&node("b", "1"));
        let info = PodInfo::from_pod(&pod("p", "0", None));
        let missing = cache.place(&info, Err("RuntimeClass \"gpu\" not found".into())).unwrap_err();
        assert_eq!(missing.message(), "0/2 nodes are available: RuntimeClass \"gpu\" not found.");
        let oci = cache.place(&info, Ok(Some("oci"))).unwrap_err();
        assert_eq!(oci.message(), "0/2 nodes are available: 2 node(s) had no \"oci\" runtime handler.");
    }

    #[test]
    fn large_clusters_are_sampled_but_a_lone_fit_is_still_found() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(150), 100);
        let mut cache = Cache::default();
        for i in 0..300 {
            cache.apply_node(&node(&format!("n{i}"), if i == 217 { "2" } else { "1" }));
        }
        cache.apply_pod(&pod("big", "1500m", None), "default-scheduler");
        assert_eq!(place(&mut cache, "big").as_deref(), Ok("n217"));
        cache.apply_pod(&pod("huge", "3", None), "default-scheduler");
        assert_eq!(place(&mut cache, "huge"), Err("0/300 nodes are available: 300 Insufficient cpu.".into()));
    }

    #[test]
    fn reports_are_not_repeated() {
        let mut cache = Cache::default();
        let reported = pod_with(
            "p",
            "0",
            None,
            json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "old"}]}}),
        );
        cache.apply_pod(&reported, "default-scheduler");
        assert!(!cache.note_reported("p", "old"), "the condition on the pod counts as reported");
        assert!(cache.note_reported("p", "new"));
        assert!(!cache.note_reported("p", "new"));
        cache.clear_reported("p");
        assert!(cache.note_reported("p", "new"));
    }
}
