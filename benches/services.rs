//! `cargo bench --bench services` (as root): a Service's data path and the cluster DNS, in one run on this
//! machine's cores.
//!
//! One `skiff server` (embedded store) on the host and one `skiff agent` in a network namespace of its own
//! on a test bridge, as the multi-node tests run a node: with its pod network (the CNI plugins), its service
//! proxy (nftables) and its cluster DNS, all inside that namespace, which takes them along when it goes. The
//! clients run in a busybox pod's network namespace on that node (`wrk` entered by `nsenter`, this process's
//! clients on threads that joined it), so their packets take a pod's path: the pod's veth, the node's
//! bridge and, to a Service, the node's prerouting DNAT. (The node's own traffic to a cluster IP would take
//! the proxy's output chain instead, which pods never do.)
//!
//! 1. Data path: the http-hello sample (wasi:http, a fresh instance per request, the agent's fastest
//!    server; node bench part 3) as a pod on the node's bridge, and a ClusterIP Service in front of it. The
//!    closed-loop generator of the node bench (`wrk` when installed, else reqwest) at 16 connections, then
//!    at 1, alternating between the pod's IP and the cluster IP in rounds, which start with each target in
//!    turn, so that drift on the machine falls on both alike: req/s and p50/p99 of each, and what the Service
//!    costs.
//! 2. DNS: A queries for the Service's name (`bench.default.svc.cluster.local`) from the client pod to the
//!    `kube-dns` Service's address (its nameserver), which the node DNATs to its own DNS server: N queries
//!    outstanding (closed loops, a UDP socket each, as resolvers open one per lookup) for N = 1, 8, 32;
//!    queries/s, p50, p99 and errors. Cluster names only: a forwarded name would measure the upstream.
//!
//! `SKIFF_BENCH_ONLY=datapath,dns` runs parts; `SKIFF_BENCH_SECONDS` (5) sets each run's length and
//! `SKIFF_BENCH_ROUNDS` (3) the data path's rounds. Every child process (server, agent, registry, relay) is
//! killed when its guard drops, and the test network with it. Results: README.md, Performance.

mod common;
// The end-to-end tests' registry (docker-registry on loopback), busybox image and sample builder, and their
// test network (a bridge, and a namespace per node); the rest is unused here.
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/e2e/testnet.rs"]
#[allow(dead_code)]
mod testnet;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use common::{
    Guard, HttpGenerator, HttpLoad, Latency, Server, create, in_netns, load, ms, wait_node_ready, wait_until,
};
use harness::Registry;
use testnet::TestNet;

/// Each run's length (`SKIFF_BENCH_SECONDS`).
const RUN: Duration = Duration::from_secs(5);
/// Runs per target and connection count (`SKIFF_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
/// Throughput near the server's saturation, then latency alone.
const HTTP_CONNECTIONS: [usize; 2] = [16, 1];
/// An unreported run per target first: the wasm instance pool and the code paths warm up.
const WARM_UP: Duration = Duration::from_secs(1);
const DNS_IN_FLIGHT: [usize; 3] = [1, 8, 32];
/// A query unanswered this long counts as an error and its loop goes on (a lost datagram would otherwise
/// stop it; resolvers wait 5 s).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a pod may take to run, its image pulled (and the wasm component compiled, in a debug build).
const POD_TIMEOUT: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "default";
const NODE: &str = "bench-node";
const SERVICE: &str = "bench";
const SERVICE_PORT: u16 = 80;
const HTTP_PORT: u16 = 8080;
const CLIENT: &str = "client";
const SERVER: &str = "http-hello";
/// Where the agent keeps pods' network namespace files (`<node>-<network id>/netns/<pod uid>`).
const RUN_DIR: &str = "/run/skiff";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no filters, so arguments are ignored.
    let settings = Settings::from_env()?;
    ensure!(
        harness::is_root(),
        "the services benchmark needs root (network namespaces, nftables, containers): run it as root"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

/// Knobs for experiments; the defaults are the published figures.
struct Settings {
    sections: Vec<String>,
    run: Duration,
    rounds: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let sections: Vec<String> = std::env::var("SKIFF_BENCH_ONLY")
            .unwrap_or_else(|_| "datapath,dns".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        if let Some(unknown) = sections.iter().find(|s| !["datapath", "dns"].contains(&s.as_str())) {
            bail!("SKIFF_BENCH_ONLY: no part {unknown:?} (datapath, dns)");
        }
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            let value =
                std::env::var(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name}={v}")))?;
            ensure!(value > 0, "{name} must be positive");
            Ok(value)
        };
        // Whole seconds: wrk takes no less.
        let run = Duration::from_secs(number("SKIFF_BENCH_SECONDS", RUN.as_secs() as usize)? as u64);
        Ok(Settings { sections, run, rounds: number("SKIFF_BENCH_ROUNDS", ROUNDS)? })
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("skiff services benchmarks ({cores} cores shared by server, agent and clients; load {})\n", load());
    let bench = Bench::start().await?;
    let measured = measure(&bench, &settings).await;
    // The client's container outlives the agent by design: the pods go first, whatever the outcome.
    let removed = bench.delete_pods().await;
    measured.and(removed)
}

async fn measure(bench: &Bench, settings: &Settings) -> anyhow::Result<()> {
    let service_ip = bench.create_service().await?;
    bench.create(&client_pod(&bench.busybox)).await?;
    if settings.runs("datapath") {
        bench.create(&server_pod(&bench.http_hello)).await?;
    }
    let (client_ip, client_uid) = bench.running(CLIENT).await?;
    let netns = pod_netns(&client_uid)?;
    println!("client: busybox pod {client_ip} on node {NODE} (its network namespace {})", netns.display());
    if settings.runs("datapath") {
        let (pod_ip, _) = bench.running(SERVER).await?;
        println!("server: http-hello pod {pod_ip}:{HTTP_PORT}, Service {SERVICE} {service_ip}:{SERVICE_PORT}\n");
        let targets = [
            ("pod IP", format!("http://{pod_ip}:{HTTP_PORT}/")),
            ("ClusterIP", format!("http://{service_ip}:{SERVICE_PORT}/")),
        ];
        let rows = data_path(bench, &netns, &targets, settings).await?;
        print_data_path(&rows, settings);
    }
    if settings.runs("dns") {
        let dns_ip = bench.kube_dns().await?;
        let name = Name::from_ascii(format!("{SERVICE}.{NAMESPACE}.svc.cluster.local."))?;
        let runs = dns(bench, &netns, SocketAddr::from((dns_ip, 53)), &name, service_ip, settings.run).await?;
        print_dns(&runs, &name, dns_ip, settings.run);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The cluster

/// The server on the host, the agent in its node's namespace on the test network, and the registry both
/// pull from.
struct Bench {
    agent: Guard,
    server: Server,
    client: reqwest::Client,
    agent_dir: PathBuf,
    dir: tempfile::TempDir,
    /// The images, as pods name them.
    busybox: String,
    http_hello: String,
    // Dropped after the processes: the node's namespace and the registry.
    _net: TestNet,
    _registry: Registry,
}

impl Drop for Bench {
    /// Stops both processes and removes the directory before the fields drop, so that a directory left
    /// behind is seen: it would keep the pod range the agent claimed on this machine claimed for good.
    fn drop(&mut self) {
        for child in [&mut self.agent.0, &mut self.server.child.0] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(self.agent_dir.join("oci/run")).stderr(Stdio::null()).status();
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!("warning: cannot remove the benchmark's directory {}: {e}", self.dir.path().display());
        }
    }
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let (net, netns, node_ip, registry, port, busybox, http_hello) = tokio::task::block_in_place(|| {
            let mut net = TestNet::new();
            let (netns, node_ip) = net.add_node(1);
            let registry = Registry::start()?;
            let port: u16 = registry.address.rsplit(':').next().context("the registry's port")?.parse()?;
            net.relay_loopback(port);
            let busybox = registry.push_busybox("bench/busybox");
            let http_hello = registry.push_sample("http-hello");
            anyhow::Ok((net, netns, node_ip, registry, port, busybox, http_hello))
        })?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        let log = dir.path().join("server.log");
        let server = Server::start_listening(net.gateway().into(), &data, "embedded", "warn", &log, &[]).await?;
        let client = server.client()?;
        // The registry is on the host's loopback, which is not the node's: the agent pulls through a mirror
        // at the bridge's address, as the multi-node tests' agents do.
        let registries = dir.path().join("registries.yaml");
        let gateway = net.gateway();
        std::fs::write(
            &registries,
            format!("mirrors:\n  \"127.0.0.1:{port}\":\n    endpoint: [\"http://{gateway}:{port}\"]\n"),
        )?;
        // No upstream resolver: only cluster names are asked, and nothing leaves the test network.
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(&resolv_conf, "")?;
        let agent_dir = dir.path().join("agent");
        // `nsenter --net`, not `ip netns exec`, which remounts /sys and hides the cgroups from the agent.
        let agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(env!("CARGO_BIN_EXE_skiff"))
            .args(["agent", "--server", &server.base, "--name", NODE])
            .args(["--node-ip", &node_ip.to_string(), "--kubelet-port", "0", "--pod-network", "cni"])
            .arg("--registries")
            .arg(&registries)
            .arg("--resolv-conf")
            .arg(&resolv_conf)
            .arg("--token-file")
            .arg(data.join("node-token"))
            .arg("--data-dir")
            .arg(&agent_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
            .spawn()
            .context("cannot start skiff agent (through nsenter)")?;
        let bench = Bench {
            agent: Guard(agent),
            server,
            client,
            agent_dir,
            dir,
            busybox,
            http_hello,
            _net: net,
            _registry: registry,
        };
        wait_node_ready(&bench.client, &bench.server.base, NODE).await.with_context(|| bench.agent_log())?;
        Ok(bench)
    }

    fn pods(&self) -> String {
        format!("{}/api/v1/namespaces/{NAMESPACE}/pods", self.server.base)
    }

    async fn create(&self, pod: &Value) -> anyhow::Result<()> {
        create(&self.client, &self.pods(), pod).await
    }

    /// Creates the ClusterIP Service in front of the server pod; its cluster IP.
    async fn create_service(&self) -> anyhow::Result<Ipv4Addr> {
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE},
            "spec": {"selector": {"app": SERVER}, "ports": [{"port": SERVICE_PORT, "targetPort": HTTP_PORT}]},
        });
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/services", self.server.base);
        create(&self.client, &url, &service).await?;
        self.cluster_ip(&format!("{url}/{SERVICE}")).await
    }

    /// The `kube-dns` Service's address: the pods' nameserver.
    async fn kube_dns(&self) -> anyhow::Result<Ipv4Addr> {
        self.cluster_ip(&format!("{}/api/v1/namespaces/kube-system/services/kube-dns", self.server.base)).await
    }

    /// The cluster IP of the Service at `url`, once it has one.
    async fn cluster_ip(&self, url: &str) -> anyhow::Result<Ipv4Addr> {
        let started = Instant::now();
        loop {
            let response = self.client.get(url).send().await?;
            if response.status().is_success() {
                let service: Value = response.json().await?;
                if let Some(ip) = service["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse().ok()) {
                    return Ok(ip);
                }
            }
            ensure!(started.elapsed() < Duration::from_secs(30), "no cluster IP at {url} after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until pod `name` runs with an address of its own; its address and uid.
    async fn running(&self, name: &str) -> anyhow::Result<(Ipv4Addr, String)> {
        let url = format!("{}/{name}", self.pods());
        let started = Instant::now();
        loop {
            let pod: Value = self.client.get(&url).send().await?.error_for_status()?.json().await?;
            let status = &pod["status"];
            if status["phase"] == "Running"
                && let (Some(ip), Some(uid)) = (status["podIP"].as_str(), pod["metadata"]["uid"].as_str())
            {
                return Ok((ip.parse()?, uid.to_owned()));
            }
            if started.elapsed() > POD_TIMEOUT {
                bail!("pod {name} not running after {POD_TIMEOUT:?}: {status}\n{}", self.agent_log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes every pod and waits until they are gone and their containers removed.
    async fn delete_pods(&self) -> anyhow::Result<()> {
        let response = self.client.delete(self.pods()).send().await?;
        ensure!(response.status().is_success(), "deleting the pods answered {}", response.status());
        let (client, url, oci) = (&self.client, self.pods(), self.agent_dir.join("oci"));
        wait_until("the pods removed", POD_TIMEOUT, || {
            let request = client.get(&url).send();
            let containers = ["run", "upper", "work", "trash"]
                .iter()
                .any(|dir| std::fs::read_dir(oci.join(dir)).is_ok_and(|mut entries| entries.next().is_some()));
            async move {
                let Ok(response) = request.await else { return false };
                let Ok(list) = response.json::<Value>().await else { return false };
                !containers && list["items"].as_array().is_some_and(Vec::is_empty)
            }
        })
        .await
        .with_context(|| self.agent_log())
    }

    fn agent_log(&self) -> String {
        common::log_tail(&self.dir.path().join("agent.log"))
    }
}

fn client_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": CLIENT},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
        },
    })
}

fn server_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": SERVER, "labels": {"app": SERVER}},
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": SERVER,
                "image": image,
                "ports": [{"containerPort": HTTP_PORT}],
                "env": [{"name": "GREETING", "value": "bench"}],
            }],
        },
    })
}

/// The network namespace file the agent made for the pod `uid`.
fn pod_netns(uid: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(RUN_DIR)?
        .flatten()
        .map(|entry| entry.path().join("netns").join(uid))
        .find(|path| path.exists())
        .with_context(|| format!("no network namespace of pod {uid} under {RUN_DIR}"))
}

// ---------------------------------------------------------------------------------------------------------
// 1. Data path

/// One connection count's figures for each target, in the targets' order.
struct Row {
    connections: usize,
    targets: Vec<Summary>,
}

/// A target's runs summed up: the mean of their rates, the median of their percentiles.
struct Summary {
    name: &'static str,
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

impl Summary {
    fn of(name: &'static str, runs: &[HttpLoad]) -> Self {
        let median = |pick: fn(&HttpLoad) -> Duration| Latency::of(runs.iter().map(pick).collect()).p50;
        Summary {
            name,
            rate: runs.iter().map(|r| r.rate).sum::<f64>() / runs.len().max(1) as f64,
            p50: median(|r| r.p50),
            p99: median(|r| r.p99),
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

async fn data_path(
    bench: &Bench,
    netns: &Path,
    targets: &[(&'static str, String)],
    settings: &Settings,
) -> anyhow::Result<Vec<Row>> {
    // The first request compiles the component; later ones reuse it. Only the sample's own answer counts,
    // through each target, from the client's namespace.
    let urls: Vec<String> = targets.iter().map(|(_, url)| url.clone()).collect();
    in_netns(netns, move || async move {
        let probe = reqwest::Client::builder().no_proxy().build()?;
        for url in &urls {
            wait_until(&format!("{url} answering"), POD_TIMEOUT, || {
                let request = probe.get(url).timeout(Duration::from_secs(10)).send();
                async move {
                    match request.await {
                        Ok(response) => response.text().await.is_ok_and(|body| body.contains("hello from skiff")),
                        Err(_) => false,
                    }
                }
            })
            .await?;
        }
        Ok(())
    })
    .await
    .with_context(|| bench.agent_log())?;
    let generator = HttpGenerator::detect();
    for (_, url) in targets {
        generator.run(url, HTTP_CONNECTIONS[0], WARM_UP, Some(netns)).await?;
    }
    println!("data path runs ({}, {} s each, load {})", generator.describe(), settings.run.as_secs(), load());
    let mut rows = Vec::new();
    for connections in HTTP_CONNECTIONS {
        let mut runs: Vec<Vec<HttpLoad>> = vec![Vec::new(); targets.len()];
        for round in 0..settings.rounds {
            // Each round starts with the other target, so a trend over the run favours neither.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            order.rotate_left(round % targets.len());
            for t in order {
                let (name, url) = &targets[t];
                let run = generator.run(url, connections, settings.run, Some(netns)).await?;
                println!(
                    "   {connections:>3} connections, round {}/{}, {:<10} {:>8.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
                    round + 1,
                    settings.rounds,
                    format!("{name}:"),
                    run.rate,
                    ms(run.p50),
                    ms(run.p99),
                    run.errors
                );
                runs[t].push(run);
            }
        }
        let targets = targets.iter().zip(&runs).map(|((name, _), runs)| Summary::of(name, runs)).collect();
        rows.push(Row { connections, targets });
    }
    println!();
    Ok(rows)
}

fn print_data_path(rows: &[Row], settings: &Settings) {
    println!(
        "data path: http-hello (wasi:http, a fresh instance per request) from a busybox pod on the same node, by the pod's IP and through a ClusterIP Service; {} x {} s per target, alternating (load {})",
        settings.rounds,
        settings.run.as_secs(),
        load()
    );
    println!("   target: the Service costs < 5% of req/s and < 0.1 ms of p99");
    println!("   req/s: the rounds' mean; p50, p99: the rounds' median; the Service's cost: req/s lost, latency added");
    println!("   {:>11}  {:<12} {:>10} {:>9} {:>9} {:>8}", "connections", "to", "req/s", "p50 ms", "p99 ms", "errors");
    for row in rows {
        for t in &row.targets {
            println!(
                "   {:>11}  {:<12} {:>10.0} {:>9.3} {:>9.3} {:>8}",
                row.connections,
                t.name,
                t.rate,
                ms(t.p50),
                ms(t.p99),
                t.errors
            );
        }
        if let [direct, service] = row.targets.as_slice() {
            println!(
                "   {:>11}  {:<12} {:>9.1}% {:>+9.3} {:>+9.3}",
                row.connections,
                "Service cost",
                (1.0 - service.rate / direct.rate) * 100.0,
                ms(service.p50) - ms(direct.p50),
                ms(service.p99) - ms(direct.p99)
            );
        }
    }
    println!();
}

// ---------------------------------------------------------------------------------------------------------
// 2. DNS

struct DnsRun {
    in_flight: usize,
    /// Answers per second (errors not counted).
    rate: f64,
    latency: Latency,
    /// Queries unanswered within [`QUERY_TIMEOUT`], or answered with an error or without the address.
    errors: u64,
}

async fn dns(
    bench: &Bench,
    netns: &Path,
    server: SocketAddr,
    name: &Name,
    expected: Ipv4Addr,
    run: Duration,
) -> anyhow::Result<Vec<DnsRun>> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.queries.push(Query::query(name.clone(), RecordType::A));
    let query = query.to_vec()?;
    // The name resolves once the agent has the Service and the kube-dns Service's DNAT is in place; until
    // then a query may fail at once (no route to the address yet), which the probe retries.
    let probe = query.clone();
    in_netns(netns, move || async move {
        let started = Instant::now();
        loop {
            let run = dns_load(server, probe.clone(), expected, 1, Duration::from_millis(100)).await;
            if run.is_ok_and(|run| run.errors == 0 && run.rate > 0.0) {
                return Ok(());
            }
            ensure!(started.elapsed() < Duration::from_secs(30), "the cluster DNS at {server} gives no {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| bench.agent_log())?;
    let mut runs = Vec::new();
    for in_flight in DNS_IN_FLIGHT {
        let query = query.clone();
        runs.push(in_netns(netns, move || dns_load(server, query, expected, in_flight, run)).await?);
    }
    Ok(runs)
}

/// `in_flight` closed loops for `duration`, each a UDP socket of its own sending `query` (with an id of its
/// own) when the last one is answered; an answer counts when it gives `expected`.
async fn dns_load(
    server: SocketAddr,
    query: Vec<u8>,
    expected: Ipv4Addr,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<DnsRun> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let mut message = query.clone();
            tokio::spawn(async move {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
                socket.connect(server).await?;
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut buffer = vec![0u8; 4096];
                let mut id = 0u16;
                while Instant::now() < deadline {
                    // The message is built once; only its id (its first two bytes) changes.
                    id = id.wrapping_add(1);
                    message[..2].copy_from_slice(&id.to_be_bytes());
                    let sent = Instant::now();
                    socket.send(&message).await?;
                    match tokio::time::timeout(QUERY_TIMEOUT, receive(&socket, &mut buffer, id)).await {
                        Ok(length) => {
                            let took = sent.elapsed();
                            if gives(&buffer[..length?], expected) {
                                latencies.push(took);
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                anyhow::Ok((latencies, errors))
            })
        })
        .collect();
    let started = Instant::now();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await??;
        latencies.extend(l);
        errors += e;
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok(DnsRun { in_flight, rate, latency: Latency::of(latencies), errors })
}

/// Reads answers until the one to query `id`: a late answer to an earlier, timed-out query is skipped.
async fn receive(socket: &UdpSocket, buffer: &mut [u8], id: u16) -> std::io::Result<usize> {
    loop {
        let length = socket.recv(buffer).await?;
        if buffer[..length].starts_with(&id.to_be_bytes()) {
            return Ok(length);
        }
    }
}

/// Whether `answer` is a success giving the address `expected`.
fn gives(answer: &[u8], expected: Ipv4Addr) -> bool {
    Message::from_vec(answer).is_ok_and(|message| {
        message.metadata.response_code == ResponseCode::NoError
            && message.answers.iter().any(|record| matches!(record.data, RData::A(A(ip)) if ip == expected))
    })
}

fn print_dns(runs: &[DnsRun], name: &Name, server: Ipv4Addr, run: Duration) {
    println!(
        "cluster DNS: A queries for {name} from a pod to {server} (the kube-dns Service, DNATed to the node's DNS server), closed loops of a UDP socket each, {} s each, clients in the bench process (load {})",
        run.as_secs(),
        load()
    );
    println!("   target: >= 20,000 queries/s with p99 < 1 ms (CoreDNS ~30k qps per core with its cache)");
    println!("   {:>9} {:>11} {:>9} {:>9} {:>8}", "in flight", "queries/s", "p50 ms", "p99 ms", "errors");
    for r in runs {
        println!(
            "   {:>9} {:>11.0} {:>9.3} {:>9.3} {:>8}",
            r.in_flight,
            r.rate,
            ms(r.latency.p50),
            ms(r.latency.p99),
            r.errors
        );
    }
    println!();
}
