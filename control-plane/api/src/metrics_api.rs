//! The resource metrics API (`metrics.k8s.io/v1beta1`: PodMetrics, NodeMetrics) and the custom metrics API
//! (`custom.metrics.k8s.io/v1beta2`: pods' `http_requests_per_second`), as metrics-server and a custom
//! metrics adapter serve them, made from two of each node's Summary readings (see [`crate::stats`]). These
//! groups are not stored: discovery lists them from [`served`], and the API server answers them from its
//! latest readings.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::stats::{ContainerStats, HTTP_REQUESTS, PodReference, Summary};

pub const METRICS_GROUP: &str = "metrics.k8s.io";
pub const METRICS_VERSION: &str = "v1beta1";
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
pub const CUSTOM_VERSION: &str = "v1beta2";
/// The per-pod request rate a wasi:http guest's runtime measures.
pub const HTTP_REQUESTS_PER_SECOND: &str = "http_requests_per_second";

/// A resource of a group served from readings rather than the store.
pub struct ServedResource {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
}

pub struct ServedGroup {
    pub group: &'static str,
    pub version: &'static str,
    pub resources: &'static [ServedResource],
}

const READ: &[&str] = &["get", "list"];

/// What discovery lists of these groups, as metrics-server and the custom metrics adapters register them.
pub fn served() -> &'static [ServedGroup] {
    &[
        ServedGroup {
            group: CUSTOM_GROUP,
            version: CUSTOM_VERSION,
            resources: &[ServedResource {
                plural: "pods/http_requests_per_second",
                singular: "",
                kind: "MetricValueList",
                namespaced: true,
                verbs: &["get"],
            }],
        },
        ServedGroup {
            group: METRICS_GROUP,
            version: METRICS_VERSION,
            resources: &[
                ServedResource { plural: "nodes", singular: "", kind: "NodeMetrics", namespaced: false, verbs: READ },
                ServedResource { plural: "pods", singular: "", kind: "PodMetrics", namespaced: true, verbs: READ },
            ],
        },
    ]
}

/// A figure over a window: what two readings tell.
#[derive(Clone, Debug, PartialEq)]
pub struct Rated {
    /// The later reading's time (RFC 3339).
    pub timestamp: String,
    pub window_seconds: f64,
}

/// One container's usage over its window.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub nanocores: u64,
    pub memory_bytes: u64,
    /// Requests per second, where the runtime counts them.
    pub requests_per_second: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodUsage {
    pub pod: PodReference,
    pub window: Rated,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeUsage {
    pub name: String,
    pub window: Rated,
    pub nanocores: u64,
    pub memory_bytes: u64,
}

fn seconds_between(earlier: &str, later: &str) -> Option<f64> {
    let (a, b) = (earlier.parse::<jiff::Timestamp>().ok()?, later.parse::<jiff::Timestamp>().ok()?);
    let seconds = (b - a).total(jiff::Unit::Second).ok()?;
    (seconds > 0.0).then_some(seconds)
}

fn per_second(delta: f64, seconds: f64) -> f64 {
    (delta / seconds).max(0.0)
}

/// A node's usage between its `previous` and `latest` readings, None without two readings of it.
pub fn node_usage(previous: Option<&Summary>, latest: &Summary) -> Option<NodeUsage> {
    let (now, before) = (latest.node.cpu.as_ref()?, previous?.node.cpu.as_ref()?);
    let seconds = seconds_between(&before.time, &now.time)?;
    let delta = now.usage_core_nano_seconds.saturating_sub(before.usage_core_nano_seconds) as f64;
    Some(NodeUsage {
        name: latest.node.node_name.clone(),
        window: Rated { timestamp: now.time.clone(), window_seconds: seconds },
        nanocores: per_second(delta, seconds) as u64,
        memory_bytes: latest.node.memory.as_ref().map_or(0, |m| m.working_set_bytes),
    })
}

/// Every pod's usage in `latest`. A container's rate is taken against its reading in `previous`, or, for a
/// container started since, against nothing used at its start (as metrics-server does, so a new pod has
/// figures at once). A pod with a container that has no rate yet is left out, as metrics-server leaves
/// out incomplete pods.
pub fn pod_usage(previous: Option<&Summary>, latest: &Summary) -> Vec<PodUsage> {
    let before: HashMap<(&str, &str), &ContainerStats> = previous
        .into_iter()
        .flat_map(|s| &s.pods)
        .flat_map(|p| p.containers.iter().map(move |c| ((p.pod_ref.uid.as_str(), c.name.as_str()), c)))
        .collect();
    let mut pods = Vec::new();
    'pods: for pod in &latest.pods {
        let mut containers = Vec::new();
        let mut window: Option<Rated> = None;
        for c in &pod.containers {
            let Some(cpu) = &c.cpu else { continue 'pods };
            let earlier =
                before.get(&(pod.pod_ref.uid.as_str(), c.name.as_str())).filter(|b| b.start_time == c.start_time);
            let (from_time, from_cpu, from_requests) = match earlier {
                Some(b) => match &b.cpu {
                    Some(bcpu) => (bcpu.time.clone(), bcpu.usage_core_nano_seconds, requests(b)),
                    None => continue 'pods,
                },
                None => (c.start_time.clone(), 0, Some(0.0)),
            };
            let Some(seconds) = seconds_between(&from_time, &cpu.time) else { continue 'pods };
            let delta = cpu.usage_core_nano_seconds.saturating_sub(from_cpu) as f64;
            let requests_per_second = requests(c).map(|now| per_second(now - from_requests.unwrap_or(0.0), seconds));
            window.get_or_insert(Rated { timestamp: cpu.time.clone(), window_seconds: seconds });
            containers.push(ContainerUsage {
                name: c.name.clone(),
                nanocores: per_second(delta, seconds) as u64,
                memory_bytes: c.memory.as_ref().map_or(0, |m| m.working_set_bytes),
                requests_per_second,
            });
        }
        if let Some(window) = window {
            pods.push(PodUsage { pod: pod.pod_ref.clone(), window, containers });
        }
    }
    pods
}

/// Requests per second a node's ingress forwarded to each endpoint address between two readings.
pub fn forwarded_rates(previous: Option<&Summary>, latest: &Summary) -> HashMap<String, f64> {
    let (Some(before), Some(now)) = (previous.and_then(|s| s.forwarded.as_ref()), latest.forwarded.as_ref()) else {
        return HashMap::new();
    };
    let Some(seconds) = seconds_between(&before.time, &now.time) else { return HashMap::new() };
    let earlier: HashMap<&str, u64> = before.requests.iter().map(|c| (c.address.as_str(), c.requests)).collect();
    now.requests
        .iter()
        .map(|c| {
            let from = earlier.get(c.address.as_str()).copied().unwrap_or(0);
            (c.address.clone(), per_second(c.requests.saturating_sub(from) as f64, seconds))
        })
        .collect()
}

fn requests(c: &ContainerStats) -> Option<f64> {
    c.user_defined_metrics.iter().find(|m| m.name == HTTP_REQUESTS).map(|m| m.value)
}

/// `window` as Go's `metav1.Duration` prints it (`15.002s`, `1m0.5s`).
fn go_duration(seconds: f64) -> String {
    let millis = (seconds * 1000.0).round() as u64;
    let (minutes, rest) = (millis / 60_000, millis % 60_000);
    let secs =
        if rest.is_multiple_of(1000) { format!("{}s", rest / 1000) } else { format!("{}s", rest as f64 / 1000.0) };
    if minutes > 0 { format!("{minutes}m{secs}") } else { secs }
}

/// A count in nano-units as a canonical decimal quantity (`12m`, `250u`, `3`, `1234n`), as
/// `resource.NewScaledQuantity(n, resource.Nano)` prints.
pub fn nano_quantity(nanos: u64) -> String {
    for (factor, suffix) in [(1_000_000_000, ""), (1_000_000, "m"), (1_000, "u")] {
        if nanos.is_multiple_of(factor) {
            return format!("{}{suffix}", nanos / factor);
        }
    }
    format!("{nanos}n")
}

/// Bytes as a canonical binary quantity (`65536Ki`, `1Gi`, `1000`), as `resource.NewQuantity(n,
/// resource.BinarySI)` prints.
pub fn bytes_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (factor, suffix) in
        [(1u64 << 60, "Ei"), (1 << 50, "Pi"), (1 << 40, "Ti"), (1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki")]
    {
        if bytes.is_multiple_of(factor) {
            return format!("{}{suffix}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// A PodMetrics object; `labels` are the pod's.
pub fn pod_metrics(usage: &PodUsage, labels: &Value) -> Value {
    let containers: Vec<Value> = usage
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "usage": {"cpu": nano_quantity(c.nanocores), "memory": bytes_quantity(c.memory_bytes)}})
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{METRICS_GROUP}/{METRICS_VERSION}"),
        "metadata": {
            "name": usage.pod.name,
            "namespace": usage.pod.namespace,
            "creationTimestamp": usage.window.timestamp,
            "labels": labels,
        },
        "timestamp": usage.window.timestamp,
        "window": go_duration(usage.window.window_seconds),
        "containers": containers,
    })
}

/// A NodeMetrics object; `labels` are the node's.
pub fn node_metrics(usage: &NodeUsage, labels: &Value) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{METRICS_GROUP}/{METRICS_VERSION}"),
        "metadata": {"name": usage.name, "creationTimestamp": usage.window.timestamp, "labels": labels},
        "timestamp": usage.window.timestamp,
        "window": go_duration(usage.window.window_seconds),
        "usage": {"cpu": nano_quantity(usage.nanocores), "memory": bytes_quantity(usage.memory_bytes)},
    })
}

/// The pod's `http_requests_per_second` as a custom metrics API value: what its runtime counted, else what
/// the nodes' ingresses forwarded to it (`forwarded`, by its address); None when neither counts.
pub fn http_rate_value(usage: &PodUsage, forwarded: Option<f64>) -> Option<Value> {
    let rates: Vec<f64> = usage.containers.iter().filter_map(|c| c.requests_per_second).collect();
    let per_second: f64 = match (rates.is_empty(), forwarded) {
        (false, _) => rates.iter().sum(),
        (true, Some(forwarded)) => forwarded,
        (true, None) => return None,
    };
    Some(json!({
        "describedObject": {"kind": "Pod", "namespace": usage.pod.namespace, "name": usage.pod.name, "apiVersion": "/v1"},
        "metric": {"name": HTTP_REQUESTS_PER_SECOND},
        "timestamp": usage.window.timestamp,
        "windowSeconds": usage.window.window_seconds.round() as i64,
        "value": nano_quantity(((per_second * 1000.0).round() as u64) * 1_000_000),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CpuStats, MemoryStats, NodeStats, PodStats, UserDefinedMetric};

    fn container(name: &str, start: &str, time: &str, cpu: u64, requests: Option<f64>) -> ContainerStats {
        ContainerStats {
            name: name.into(),
            start_time: start.into(),
            cpu: Some(CpuStats { time: time.into(), usage_core_nano_seconds: cpu }),
            memory: Some(MemoryStats { time: time.into(), working_set_bytes: 64 << 20 }),
            user_defined_metrics: requests
                .map(|value| UserDefinedMetric {
                    name: HTTP_REQUESTS.into(),
                    kind: "cumulative".into(),
                    units: "requests".into(),
                    time: time.into(),
                    value,
                })
                .into_iter()
                .collect(),
        }
    }

    fn summary(time: &str, node_cpu: u64, containers: Vec<ContainerStats>) -> Summary {
        Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats { time: time.into(), usage_core_nano_seconds: node_cpu }),
                memory: Some(MemoryStats { time: time.into(), working_set_bytes: 1 << 30 }),
            },
            pods: vec![PodStats {
                pod_ref: PodReference { name: "web".into(), namespace: "default".into(), uid: "u1".into() },
                containers,
            }],
            forwarded: None,
        }
    }

    #[test]
    fn rates_come_from_two_readings() {
        let start = "2026-12-07T10:00:00Z";
        let before = summary(
            "2026-12-07T10:00:10Z",
            0,
            vec![container("app", start, "2026-12-07T10:00:10Z", 1_000_000_000, Some(100.0))],
        );
        let after = summary(
            "2026-12-07T10:00:20Z",
            5_000_000_000,
            vec![container("app", start, "2026-12-07T10:00:20Z", 6_000_000_000, Some(600.0))],
        );
        let node = node_usage(Some(&before), &after).unwrap();
        assert_eq!((node.nanocores, node.memory_bytes), (500_000_000, 1 << 30));
        let pods = pod_usage(Some(&before), &after);
        assert_eq!(pods[0].containers[0].nanocores, 500_000_000);
        assert_eq!(pods[0].containers[0].requests_per_second, Some(50.0));
        let object = pod_metrics(&pods[0], &json!({"app": "web"}));
        assert_eq!(object["containers"][0]["usage"], json!({"cpu": "500m", "memory": "64Mi"}));
        assert_eq!(object["window"], "10s");
        assert_eq!(http_rate_value(&pods[0], Some(7.0)).unwrap()["value"], "50", "the runtime's count first");
        assert!(node_usage(None, &after).is_none(), "one reading has no rate");
    }

    #[test]
    fn a_new_or_restarted_container_is_rated_from_its_start() {
        let before = summary(
            "2026-12-07T10:00:10Z",
            0,
            vec![container("app", "2026-12-07T10:00:00Z", "2026-12-07T10:00:10Z", 9_000_000_000, None)],
        );
        let restarted = "2026-12-07T10:00:15Z";
        let after = summary(
            "2026-12-07T10:00:20Z",
            0,
            vec![container("app", restarted, "2026-12-07T10:00:20Z", 1_000_000_000, None)],
        );
        let pods = pod_usage(Some(&before), &after);
        assert_eq!(pods[0].containers[0].nanocores, 200_000_000, "1 s of CPU over the 5 s since its start");
        assert_eq!(pod_usage(None, &after)[0].containers[0].nanocores, 200_000_000);
        assert_eq!(pods[0].containers[0].requests_per_second, None);
        assert_eq!(http_rate_value(&pods[0], None), None);
        assert_eq!(http_rate_value(&pods[0], Some(2.5)).unwrap()["value"], "2500m", "else the ingress's");
    }

    #[test]
    fn forwarded_requests_are_rated_by_address() {
        let forwarded = |time: &str, counts: &[(&str, u64)]| Summary {
            forwarded: Some(crate::stats::ForwardedStats {
                time: time.into(),
                requests: counts
                    .iter()
                    .map(|(a, n)| crate::stats::AddressCount { address: (*a).into(), requests: *n })
                    .collect(),
            }),
            ..Summary::default()
        };
        let before = forwarded("2026-12-07T10:00:00Z", &[("10.42.0.5", 100)]);
        let after = forwarded("2026-12-07T10:00:10Z", &[("10.42.0.5", 300), ("10.42.0.6", 50)]);
        let rates = forwarded_rates(Some(&before), &after);
        assert_eq!((rates["10.42.0.5"], rates["10.42.0.6"]), (20.0, 5.0));
        assert!(forwarded_rates(None, &after).is_empty());
    }

    #[test]
    fn quantities_print_as_kubernetes_prints_them() {
        assert_eq!(nano_quantity(12_000_000), "12m");
        assert_eq!(nano_quantity(1_234), "1234n");
        assert_eq!(nano_quantity(2_000_000_000), "2");
        assert_eq!(nano_quantity(0), "0");
        assert_eq!(bytes_quantity(65536 * 1024), "64Mi");
        assert_eq!(bytes_quantity(1536 * 1024), "1536Ki");
        assert_eq!(bytes_quantity(1000), "1000");
        assert_eq!(go_duration(15.0), "15s");
        assert_eq!(go_duration(15.25), "15.25s");
        assert_eq!(go_duration(60.5), "1m0.5s");
    }
}
