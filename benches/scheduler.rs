//! `cargo bench --bench scheduler`: the scheduler's throughput with 1,000 simulated nodes and 10,000 pending
//! pods, on this machine's cores, loopback only.
//!
//! One `skiff server` (embedded store) runs the scheduler under its leader Lease, as always. The benchmark
//! first takes that Lease (the server stops leading, as when another server takes over), then creates the
//! simulated nodes — Node objects that are Ready with room for 110 pods each, whose node Leases a
//! background task keeps renewing like kubelets — and the pending pods (100 workloads, requests 100m cpu
//! and 128Mi). It then releases the Lease: the server leads again, its scheduler lists the cluster and
//! binds. One watch on pods times every binding. The figure is bindings per second from the first to the
//! last, with the time from the release and how evenly the pods were spread.
//!
//! `SKIFF_BENCH_NODES` and `SKIFF_BENCH_PODS` change the sizes. Every child process is killed when its guard
//! drops. Results: README.md, Performance.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

use common::{Server, load, read_watch, wait_until};

const NODES: usize = 1_000;
const PODS: usize = 10_000;
/// Pods are spread over this many workloads (label `app`), which the scheduler spreads over the nodes.
const WORKLOADS: usize = 100;
/// Concurrent clients creating objects, each on its own connection.
const CLIENTS: usize = 16;
/// How often the simulated kubelets renew their node Leases (the kubelet's period).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The scheduler and controllers' leader Lease, which the benchmark holds while it fills the cluster.
const LEADER_LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-controller-manager";
const NAMESPACE: &str = "default";
const BIND_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no filters, so arguments are ignored.
    let size = |name: &str, default: usize| -> anyhow::Result<usize> {
        std::env::var(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name}={v}")))
    };
    let (nodes, pods) = (size("SKIFF_BENCH_NODES", NODES)?, size("SKIFF_BENCH_PODS", PODS)?);
    ensure!(nodes > 0 && pods > 0, "SKIFF_BENCH_NODES and SKIFF_BENCH_PODS must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(nodes, pods))
}

async fn run(nodes: usize, pods: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("skiff scheduler benchmark ({cores} cores shared by the server and this process; load {})\n", load());
    let server = Skiff::start().await?;
    server.wait_log("became leader", Duration::from_secs(30)).await?;
    let leader = server.hold_leader_lease().await?;
    server.wait_log("stopped leading", Duration::from_secs(30)).await?;

    let started = Instant::now();
    server.post_all(nodes, |i| ("/api/v1/nodes".into(), node(i))).await?;
    server
        .post_all(nodes, |i| ("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases".into(), lease(i)))
        .await?;
    println!("{nodes} simulated nodes and their Leases created in {:.1} s", started.elapsed().as_secs_f64());
    let _heartbeats = AbortOnDrop(tokio::spawn(heartbeats(server.clone(), nodes)));
    let started = Instant::now();
    server.post_all(pods, |i| (format!("/api/v1/namespaces/{NAMESPACE}/pods"), pod(i))).await?;
    let created = started.elapsed();
    println!(
        "{pods} pending pods created in {:.1} s ({:.0}/s)",
        created.as_secs_f64(),
        pods as f64 / created.as_secs_f64()
    );

    let watch = BindWatch::start(&server, pods).await?;
    let cpu_before = cpu_time(server.pid())?;
    let released = Instant::now();
    server.release_leader_lease(leader).await?;
    let bound = watch.wait(BIND_TIMEOUT).await?;
    let server_cpu = cpu_time(server.pid())?.saturating_sub(cpu_before);
    print_result(&bound, released, server_cpu);
    Ok(())
}

fn print_result(bound: &Bound, released: Instant, server_cpu: Duration) {
    let pods = bound.nodes.len();
    let window = bound.last.duration_since(bound.first);
    let per_node = {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for node in bound.nodes.values() {
            *counts.entry(node).or_default() += 1;
        }
        let min = counts.values().copied().min().unwrap_or(0);
        (counts.len(), min, counts.values().copied().max().unwrap_or(0))
    };
    println!("\nscheduler throughput: {pods} pods onto {} nodes (load {})\n", per_node.0, load());
    println!(
        "| pods bound/s (first → last binding) | first binding after release | all bound after release | server CPU ms/pod | pods per node (min–max) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.2} s | {:.2} s | {:.3} | {}–{} |",
        pods as f64 / window.as_secs_f64().max(f64::EPSILON),
        bound.first.duration_since(released).as_secs_f64(),
        bound.last.duration_since(released).as_secs_f64(),
        server_cpu.as_secs_f64() * 1e3 / pods.max(1) as f64,
        per_node.1,
        per_node.2,
    );
    println!("\nbindings per second, second by second after the first: {:?}", bound.per_second);
}

// ---------------------------------------------------------------------------------------------------------
// The objects

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn node(i: usize) -> Value {
    let name = node_name(i);
    let resources = json!({"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "skiff.dev/simulated": "true"}},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "runtimeHandlers": [{"name": "wasm"}, {"name": "oci"}],
        },
    })
}

fn lease(i: usize) -> Value {
    let name = node_name(i);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
    })
}

fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": format!("app-{}", i % WORKLOADS)}},
        "spec": {"containers": [{"name": "app", "image": "bench.local/app:1",
                                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    })
}

/// Renews every simulated node's Lease each [`LEASE_RENEW`], as its kubelet would.
async fn heartbeats(server: Skiff, nodes: usize) -> anyhow::Result<()> {
    let client = server.client()?;
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let renewals = (0..nodes).map(|i| {
            let url = format!(
                "{}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
                server.base,
                node_name(i)
            );
            let patch = json!({"spec": {"renewTime": now()}});
            let request =
                client.patch(url).header("content-type", "application/merge-patch+json").body(patch.to_string()).send();
            async move { request.await.and_then(|r| r.error_for_status()).map(drop) }
        });
        let results: Vec<_> = futures::stream::iter(renewals).buffer_unordered(4).collect().await;
        if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
            eprintln!("a node Lease renewal failed: {error}");
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The server

/// A `skiff server` on the embedded store, logging to a file the benchmark reads for leadership changes;
/// shared by the tasks that load it.
#[derive(Clone)]
struct Skiff {
    inner: Arc<Running>,
    base: String,
}

struct Running {
    server: Server,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Skiff {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let server =
            Server::start(&dir.path().join("data"), "embedded", "warn,skiff_controllers::leader=info", &log).await?;
        let base = server.base.clone();
        Ok(Skiff { inner: Arc::new(Running { server, log, _dir: dir }), base })
    }

    /// A client with its own connection.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.inner.server.client()
    }

    fn pid(&self) -> u32 {
        self.inner.server.pid()
    }

    async fn wait_log(&self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let log = self.inner.log.clone();
        wait_until(&format!("\"{line}\" in the server log"), timeout, || {
            let found = std::fs::read_to_string(&log).is_ok_and(|l| l.contains(line));
            async move { found }
        })
        .await
    }

    /// Takes the leader Lease for an hour, so that the server's scheduler stops; returns the Lease as taken.
    async fn hold_leader_lease(&self) -> anyhow::Result<Value> {
        let client = self.client()?;
        let url = format!("{}{LEADER_LEASE}", self.base);
        let mut lease: Value = client.get(&url).send().await?.error_for_status()?.json().await?;
        lease["spec"]["holderIdentity"] = json!("skiff-bench");
        lease["spec"]["leaseDurationSeconds"] = json!(3600);
        lease["spec"]["renewTime"] = json!(now());
        let response = client.put(&url).json(&lease).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    /// Frees the leader Lease: the server takes it at its next attempt and its scheduler starts.
    async fn release_leader_lease(&self, mut lease: Value) -> anyhow::Result<()> {
        lease["spec"]["holderIdentity"] = Value::Null;
        lease["spec"]["renewTime"] = Value::Null;
        let url = format!("{}{LEADER_LEASE}", self.base);
        self.client()?.put(&url).json(&lease).send().await?.error_for_status()?;
        Ok(())
    }

    /// POSTs `count` objects, `object(i)` giving each one's collection path and body, from [`CLIENTS`]
    /// concurrent clients.
    async fn post_all<F>(&self, count: usize, object: F) -> anyhow::Result<()>
    where
        F: Fn(usize) -> (String, Value) + Send + Sync + 'static,
    {
        let object = Arc::new(object);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (object, next, client, base) = (object.clone(), next.clone(), self.client()?, self.base.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(());
                    }
                    let (path, body) = object(i);
                    let response = client.post(format!("{base}{path}")).json(&body).send().await?;
                    let status = response.status();
                    ensure!(status.is_success(), "POST {path} answered {status}: {}", response.text().await?);
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// The bindings

struct BindWatch {
    reader: tokio::task::JoinHandle<anyhow::Result<Bound>>,
}

/// When the watch saw each pod bound, and where.
struct Bound {
    nodes: HashMap<String, String>,
    first: Instant,
    last: Instant,
    per_second: Vec<usize>,
}

impl BindWatch {
    /// Watches the namespace's pods from now on, until `expected` of them have a node.
    async fn start(server: &Skiff, expected: usize) -> anyhow::Result<Self> {
        let client = server.client()?;
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/pods", server.base);
        let list: Value = client.get(&url).query(&[("limit", "1")]).send().await?.error_for_status()?.json().await?;
        let rv = list["metadata"]["resourceVersion"].as_str().context("list without a resourceVersion")?.to_owned();
        let response = client
            .get(&url)
            .query(&[("watch", "true"), ("resourceVersion", &rv), ("allowWatchBookmarks", "false")])
            .send()
            .await?
            .error_for_status()?;
        let reader = tokio::spawn(async move {
            let mut nodes = HashMap::new();
            let mut times = Vec::new();
            read_watch(response, |pod, arrived| {
                if let (Some(name), Some(node)) = (pod["metadata"]["name"].as_str(), pod["spec"]["nodeName"].as_str())
                    && nodes.insert(name.to_owned(), node.to_owned()).is_none()
                {
                    times.push(arrived);
                }
                Ok(if nodes.len() < expected { ControlFlow::Continue(()) } else { ControlFlow::Break(()) })
            })
            .await
            .with_context(|| format!("after {} bindings", nodes.len()))?;
            Ok(Bound::of(nodes, &times))
        });
        Ok(BindWatch { reader })
    }

    async fn wait(self, timeout: Duration) -> anyhow::Result<Bound> {
        match tokio::time::timeout(timeout, self.reader).await {
            Ok(result) => result?,
            Err(_) => bail!("not all pods bound after {timeout:?}"),
        }
    }
}

impl Bound {
    /// `times` (when each binding was seen, in order) is not empty.
    fn of(nodes: HashMap<String, String>, times: &[Instant]) -> Bound {
        let (first, last) = (times[0], times[times.len() - 1]);
        let mut per_second = vec![0; last.duration_since(first).as_secs() as usize + 1];
        for time in times {
            per_second[time.duration_since(first).as_secs() as usize] += 1;
        }
        Bound { nodes, first, last, per_second }
    }
}

/// User plus system CPU time of a process from /proc/PID/stat.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis(ticks * 10))
}
