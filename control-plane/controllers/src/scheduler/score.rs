//! Which feasible node suits a pod best: kube-scheduler's default scores, reduced to the two that matter
//! most for Skiff's workloads. Each is 0..=[`MAX_SCORE`]; the weights are kube-scheduler's (spreading
//! counts twice as much as resources).

use super::filter::SpreadCounts;
use super::info::{NodeInfo, PodInfo};

pub const MAX_SCORE: i64 = 100;
const RESOURCES_WEIGHT: i64 = 1;
const SPREAD_WEIGHT: i64 = 2;

/// LeastAllocated: the share of cpu and of memory left once the pod is there, averaged, so that load
/// evens out across nodes. Request-less pods count at kube-scheduler's defaults.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let free_share = |total: i64, used: i64| {
        if total <= 0 || used > total { 0 } else { (total - used) * MAX_SCORE / total }
    };
    let used = &node.score_requested;
    let cpu = free_share(node.allocatable.cpu, used.cpu + pod.score_requests.cpu);
    let memory = free_share(node.allocatable.memory, used.memory + pod.score_requests.memory);
    (cpu + memory) / 2
}

/// Spreading: the node with the fewest of the pod's fellow replicas (same controller or same labels, and
/// pods its ScheduleAnyway constraints select) scores highest, relative to the most crowded candidate, as
/// kube-scheduler's selector spreading normalises.
pub fn spread(count: u32, most: u32) -> i64 {
    if most == 0 { MAX_SCORE } else { i64::from(most - count.min(most)) * MAX_SCORE / i64::from(most) }
}

/// The best of `candidates` (non-empty) for `pod`: its index, the first among equals.
pub fn select(pod: &PodInfo, candidates: &[&NodeInfo], counts: &SpreadCounts) -> usize {
    let crowding: Vec<u32> =
        candidates.iter().map(|node| node.workload_count(pod) + counts.soft_count(pod, node)).collect();
    let most = crowding.iter().copied().max().unwrap_or(0);
    let scores = candidates
        .iter()
        .zip(&crowding)
        .map(|(node, &crowd)| RESOURCES_WEIGHT * least_allocated(pod, node) + SPREAD_WEIGHT * spread(crowd, most));
    let mut best = (0, i64::MIN);
    for (index, score) in scores.enumerate() {
        if score > best.1 {
            best = (index, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use super::*;

    fn node(name: &str, cpu: &str, memory: &str) -> NodeInfo {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        let mut info = NodeInfo::placeholder(name);
        info.update(&node);
        info
    }

    fn pod(name: &str, labels: Value, cpu: &str, memory: &str) -> Arc<PodInfo> {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}),
        )
        .unwrap();
        Arc::new(PodInfo::from_pod(&pod))
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let incoming = pod("p", json!({}), "1", "1Gi");
        let empty = node("a", "4", "4Gi");
        assert_eq!(least_allocated(&incoming, &empty), 75);
        let mut busy = node("b", "4", "4Gi");
        busy.add_pod(pod("q", json!({}), "2", "1Gi"));
        assert_eq!(least_allocated(&incoming, &busy), (25 + 50) / 2);
        let overfull = node("c", "500m", "4Gi");
        assert_eq!(least_allocated(&incoming, &overfull), 75 / 2, "cpu past allocatable scores zero");
        assert_eq!(select(&incoming, &[&busy, &empty], &SpreadCounts::default()), 1);
    }

    #[test]
    fn request_less_pods_still_fill_a_node_for_scoring() {
        let incoming = pod("p", json!({}), "0", "0");
        let mut crowded = node("a", "1", "1Gi");
        for i in 0..5 {
            crowded.add_pod(pod(&format!("q{i}"), json!({}), "0", "0"));
        }
        assert!(least_allocated(&incoming, &crowded) < least_allocated(&incoming, &node("b", "1", "1Gi")));
    }

    #[test]
    fn replicas_spread_across_nodes() {
        assert_eq!((spread(0, 0), spread(0, 4), spread(1, 4), spread(4, 4)), (100, 100, 75, 0));
        let web = json!({"app": "web"});
        let (mut a, b) = (node("a", "4", "4Gi"), node("b", "4", "4Gi"));
        a.add_pod(pod("web-1", web.clone(), "100m", "64Mi"));
        let incoming = pod("web-2", web, "100m", "64Mi");
        assert_eq!(select(&incoming, &[&a, &b], &SpreadCounts::default()), 1, "the node without a replica wins");
        let stranger = pod("db-1", json!({"app": "db"}), "100m", "64Mi");
        assert_eq!(a.workload_count(&stranger), 0, "other workloads do not crowd");
    }

    #[test]
    fn spreading_outweighs_a_small_resource_difference() {
        let web = json!({"app": "web"});
        let (mut a, mut b) = (node("a", "4", "4Gi"), node("b", "4", "4Gi"));
        a.add_pod(pod("web-1", web.clone(), "100m", "64Mi"));
        b.add_pod(pod("big", json!({"app": "batch"}), "1", "1Gi"));
        let incoming = pod("web-2", web, "100m", "64Mi");
        assert_eq!(select(&incoming, &[&a, &b], &SpreadCounts::default()), 1);
    }
}
