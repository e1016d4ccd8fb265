//! What the node measures, served on its kubelet port as the kubelet serves it:
//!
//! - `/stats/summary`: the Summary API's CPU and memory of the node and of every running container (what the
//!   API server's metrics API is made from, as metrics-server reads it), with the requests a runtime served
//!   for a container as a user-defined metric.
//! - `/metrics/resource`: the same figures in Prometheus' text format, under the kubelet's names.
//! - `/metrics`: the agent's own instruments (`kubelet_running_pods`, `kubelet_pod_start_duration_seconds`,
//!   ...) and Skiff's wasm figures per pod (`skiff_wasm_instances`, `skiff_wasm_http_requests_total`).
//!
//! Every figure is read when asked for: a container's meter is a few atomics (wasm) or two small cgroup
//! files (containers), so there is no collection loop to pay for between scrapes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use skiff_api::stats::{self, ContainerStats, CpuStats, MemoryStats, NodeStats, PodStats, Summary};

use crate::running::{Running, Sample};

/// The kubelet's buckets for `kubelet_pod_start_duration_seconds`, with finer ones below half a second,
/// where wasm pods start.
const POD_START_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
    180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// The agent's instruments, and the registry `/metrics` encodes.
pub struct AgentMetrics {
    /// From the worker first seeing a pod to all its containers running, as the kubelet measures it.
    pub pod_start_duration: Histogram,
    /// What the node's ingress forwarded, for the Summary.
    pub forwarded: Forwarded,
    /// Deployments this node scaled from zero for a held request, by namespace and name.
    pub cold_starts: Family<[(&'static str, String); 2], Counter>,
    /// How long requests held for a Service at zero waited for its endpoint.
    pub cold_start_wait: Histogram,
    registry: Registry,
}

/// Requests the node's ingress forwarded, by the endpoint's address, since the agent started.
#[derive(Default)]
pub struct Forwarded(std::sync::Mutex<std::collections::HashMap<std::net::Ipv4Addr, u64>>);

impl Forwarded {
    pub fn count(&self, endpoint: std::net::Ipv4Addr) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(endpoint).or_default() += 1;
    }

    /// The counts now, as the Summary carries them; None before the first request.
    pub fn stats(&self) -> Option<stats::ForwardedStats> {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if counts.is_empty() {
            return None;
        }
        let mut requests: Vec<stats::AddressCount> = counts
            .iter()
            .map(|(address, requests)| stats::AddressCount { address: address.to_string(), requests: *requests })
            .collect();
        requests.sort_by(|a, b| a.address.cmp(&b.address));
        Some(stats::ForwardedStats { time: rfc3339(SystemTime::now()), requests })
    }
}

impl AgentMetrics {
    pub fn new(running: Arc<Running>) -> Self {
        let mut registry = Registry::default();
        let pod_start_duration = Histogram::new(POD_START_BUCKETS.iter().copied());
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            pod_start_duration.clone(),
        );
        let cold_starts = Family::default();
        registry.register(
            "skiff_cold_starts",
            "Deployments this node's ingress scaled from zero for a request it held",
            cold_starts.clone(),
        );
        let cold_start_wait = Histogram::new(POD_START_BUCKETS.iter().copied());
        registry.register(
            "skiff_cold_start_wait_seconds",
            "How long a request held for a Service at zero waited for a ready endpoint",
            cold_start_wait.clone(),
        );
        registry.register_collector(Box::new(RunningCollector(running)));
        AgentMetrics { pod_start_duration, forwarded: Forwarded::default(), cold_starts, cold_start_wait, registry }
    }

    /// The Prometheus text of `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The figures read from the running containers at each scrape.
struct RunningCollector(Arc<Running>);

impl std::fmt::Debug for RunningCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningCollector")
    }
}

impl Collector for RunningCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (containers, pods) = self.0.counts();
        gauge(&mut encoder, "kubelet_running_pods", "Number of pods that have a running pod sandbox", pods)?;
        let running = ConstGauge::new(containers as i64);
        let mut family = encoder.encode_descriptor(
            "kubelet_running_containers",
            "Number of containers currently running",
            None,
            running.metric_type(),
        )?;
        running.encode(family.encode_family(&[("container_state", "running")])?)?;
        // Per pod: a pod's wasm guests summed, as its cgroup would sum its processes.
        let mut instances: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut requests: BTreeMap<(String, String), u64> = BTreeMap::new();
        for sample in self.0.samples() {
            let key = (sample.pod.namespace.clone(), sample.pod.name.clone());
            if let Some(n) = sample.usage.instances {
                *instances.entry(key.clone()).or_default() += n;
            }
            if let Some(n) = sample.usage.http_requests {
                *requests.entry(key).or_default() += n;
            }
        }
        let mut family = encoder.encode_descriptor(
            "skiff_wasm_instances",
            "Wasm instances alive in the pod's guests",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for ((namespace, pod), n) in &instances {
            ConstGauge::new(*n as i64).encode(family.encode_family(&pod_labels(namespace, pod))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "skiff_wasm_http_requests",
            "Requests the pod's wasi:http guests were handed",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for ((namespace, pod), n) in &requests {
            ConstCounter::new(*n).encode(family.encode_family(&pod_labels(namespace, pod))?)?;
        }
        Ok(())
    }
}

fn pod_labels<'a>(namespace: &'a str, pod: &'a str) -> [(&'static str, &'a str); 2] {
    [("namespace", namespace), ("pod", pod)]
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value as i64);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// The node's own CPU time and working set, from the kernel's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeUsage {
    pub cpu_nanos: u64,
    pub memory_working_set_bytes: u64,
    pub at: Option<SystemTime>,
}

impl NodeUsage {
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/stat").ok().and_then(|s| busy_nanos(&s));
        let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| working_set(&s));
        NodeUsage {
            cpu_nanos: cpu.unwrap_or(0),
            memory_working_set_bytes: memory.unwrap_or(0),
            at: Some(SystemTime::now()),
        }
    }
}

/// The kernel's clock ticks per second for /proc/stat (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: u64 = 100;

/// CPU time spent on anything but idling and waiting for IO, from /proc/stat's `cpu` line.
fn busy_nanos(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Some(busy * (1_000_000_000 / USER_HZ))
}

/// Memory in use that the kernel cannot simply drop: total less available.
fn working_set(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// RFC 3339 with nanoseconds, the Summary API's `time`.
fn rfc3339(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map(|t| t.to_string()).unwrap_or_default()
}

/// The Summary API's view of the node and its running containers, with what its ingress forwarded.
pub fn summary(
    node_name: &str,
    node: NodeUsage,
    samples: &[Sample],
    forwarded: Option<stats::ForwardedStats>,
) -> Summary {
    let node_time = rfc3339(node.at.unwrap_or(UNIX_EPOCH));
    let mut pods: BTreeMap<stats::PodReference, Vec<ContainerStats>> = BTreeMap::new();
    for sample in samples {
        let time = rfc3339(sample.at);
        let reference = stats::PodReference {
            name: sample.pod.name.clone(),
            namespace: sample.pod.namespace.clone(),
            uid: sample.pod.uid.clone(),
        };
        let requests = sample.usage.http_requests.map(|n| stats::UserDefinedMetric {
            name: stats::HTTP_REQUESTS.into(),
            kind: "cumulative".into(),
            units: "requests".into(),
            time: time.clone(),
            value: n as f64,
        });
        pods.entry(reference).or_default().push(ContainerStats {
            name: sample.container.clone(),
            start_time: rfc3339(sample.started_at),
            cpu: Some(CpuStats { time: time.clone(), usage_core_nano_seconds: sample.usage.cpu_nanos }),
            memory: Some(MemoryStats { time, working_set_bytes: sample.usage.memory_working_set_bytes }),
            user_defined_metrics: requests.into_iter().collect(),
        });
    }
    Summary {
        node: NodeStats {
            node_name: node_name.to_string(),
            cpu: Some(CpuStats { time: node_time.clone(), usage_core_nano_seconds: node.cpu_nanos }),
            memory: Some(MemoryStats { time: node_time, working_set_bytes: node.memory_working_set_bytes }),
        },
        pods: pods.into_iter().map(|(pod_ref, containers)| PodStats { pod_ref, containers }).collect(),
        forwarded,
    }
}

/// `/metrics/resource`: the kubelet's resource metrics, in the Prometheus text format it serves them in
/// (with each sample's time in milliseconds, which rates are taken over).
pub fn resource_metrics(node: NodeUsage, samples: &[Sample]) -> String {
    let millis = |at: SystemTime| at.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    let node_at = millis(node.at.unwrap_or(UNIX_EPOCH));
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: &mut dyn Iterator<Item = String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{name}{line}");
        }
    };
    let labels = |s: &Sample| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&s.container),
            escape(&s.pod.namespace),
            escape(&s.pod.name)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        &mut samples.iter().map(|s| format!("{} {} {}", labels(s), seconds(s.usage.cpu_nanos), millis(s.at))),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
        &mut samples.iter().map(|s| format!("{} {} {}", labels(s), s.usage.memory_working_set_bytes, millis(s.at))),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
        &mut samples.iter().map(|s| format!("{} {}", labels(s), millis(s.started_at) as f64 / 1e3)),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        &mut std::iter::once(format!(" {} {node_at}", seconds(node.cpu_nanos))),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
        &mut std::iter::once(format!(" {} {node_at}", node.memory_working_set_bytes)),
    );
    let mut pods: BTreeMap<(&str, &str), (u64, u64, u128)> = BTreeMap::new();
    for s in samples {
        let pod = pods.entry((&s.pod.namespace, &s.pod.name)).or_default();
        pod.0 += s.usage.cpu_nanos;
        pod.1 += s.usage.memory_working_set_bytes;
        pod.2 = pod.2.max(millis(s.at));
    }
    let pod_labels = |ns: &str, name: &str| format!("{{namespace=\"{}\",pod=\"{}\"}}", escape(ns), escape(name));
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        &mut pods.iter().map(|((ns, name), (cpu, _, at))| format!("{} {} {at}", pod_labels(ns, name), seconds(*cpu))),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
        &mut pods.iter().map(|((ns, name), (_, memory, at))| format!("{} {memory} {at}", pod_labels(ns, name))),
    );
    family(
        "scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        &mut std::iter::once(" 0".to_string()),
    );
    out
}

/// A label value as the text format escapes it.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_shim::Usage;

    use super::*;
    use crate::pods::PodRef;

    fn sample(pod: &str, container: &str, usage: Usage) -> Sample {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Sample {
            pod: PodRef { namespace: "default".into(), name: pod.into(), uid: format!("uid-{pod}") },
            container: container.into(),
            started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            at,
            usage,
        }
    }

    #[test]
    fn proc_files_give_busy_time_and_the_working_set() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(busy_nanos(stat), Some((100 + 5 + 50 + 1 + 2 + 3) * 10_000_000));
        let meminfo = "MemTotal:        4000 kB\nMemFree:          100 kB\nMemAvailable:     1000 kB\n";
        assert_eq!(working_set(meminfo), Some(3000 * 1024));
    }

    #[test]
    fn the_summary_groups_containers_by_pod_and_carries_requests() {
        let wasm = Usage { cpu_nanos: 5, memory_working_set_bytes: 65536, http_requests: Some(7), instances: Some(1) };
        let samples =
            [sample("web", "a", wasm), sample("web", "b", Usage::default()), sample("db", "main", Usage::default())];
        let node = NodeUsage { cpu_nanos: 9, memory_working_set_bytes: 10, at: Some(UNIX_EPOCH) };
        let summary = summary("n1", node, &samples, None);
        assert_eq!(summary.node.node_name, "n1");
        let names: Vec<(&str, usize)> =
            summary.pods.iter().map(|p| (p.pod_ref.name.as_str(), p.containers.len())).collect();
        assert_eq!(names, [("db", 1), ("web", 2)]);
        let a = &summary.pods[1].containers[0];
        assert_eq!(a.cpu.as_ref().unwrap().usage_core_nano_seconds, 5);
        assert_eq!(a.cpu.as_ref().unwrap().time, "2023-11-14T22:13:20.123Z");
        assert_eq!(a.user_defined_metrics[0].value, 7.0);
        assert!(summary.pods[1].containers[1].user_defined_metrics.is_empty());
        // It is what the API server reads back.
        let json = serde_json::to_string(&summary).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), summary);
    }

    #[test]
    fn forwarded_requests_are_counted_by_address() {
        let forwarded = Forwarded::default();
        assert_eq!(forwarded.stats(), None);
        for _ in 0..3 {
            forwarded.count([10, 42, 0, 7].into());
        }
        forwarded.count([10, 42, 0, 5].into());
        let stats = forwarded.stats().unwrap();
        let counts: Vec<(&str, u64)> = stats.requests.iter().map(|c| (c.address.as_str(), c.requests)).collect();
        assert_eq!(counts, [("10.42.0.5", 1), ("10.42.0.7", 3)]);
    }

    #[test]
    fn resource_metrics_use_the_kubelet_s_names_and_sum_pods() {
        let usage = Usage { cpu_nanos: 1_500_000_000, memory_working_set_bytes: 1024, ..Usage::default() };
        let samples = [sample("web", "a", usage), sample("web", "b", usage)];
        let text =
            resource_metrics(NodeUsage { cpu_nanos: 2_000_000_000, memory_working_set_bytes: 5, at: None }, &samples);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"a\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123\n"
        ));
        assert!(text.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 3 1700000000123\n"));
        assert!(text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 2048 1700000000123\n"));
        assert!(text.contains("node_cpu_usage_seconds_total 2 0\n"));
        assert!(text.contains("# TYPE container_memory_working_set_bytes gauge\n"));
    }

    #[test]
    fn agent_metrics_count_running_pods_and_wasm_requests() {
        let running = Arc::new(Running::default());
        let metrics = AgentMetrics::new(running);
        metrics.pod_start_duration.observe(0.01);
        metrics.cold_starts.get_or_create(&[("namespace", "shop".into()), ("deployment", "web".into())]).inc();
        let text = metrics.encode();
        assert!(text.contains("skiff_cold_starts_total{namespace=\"shop\",deployment=\"web\"} 1\n"), "{text}");
        assert!(text.contains("kubelet_running_pods 0\n"), "{text}");
        assert!(text.contains("kubelet_running_containers{container_state=\"running\"} 0\n"), "{text}");
        assert!(text.contains("kubelet_pod_start_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("# TYPE skiff_wasm_http_requests counter\n"), "{text}");
    }
}
