//! `cargo bench --bench proxy_scale` (as root): the service proxy's control path at scale, as the Kubernetes
//! nftables blog measures kube-proxy, and the agent's memory with those Services (issue 14).
//!
//! The benchmark runs in a network namespace of its own, made before anything starts: the server, the agent,
//! its nftables table, the clients and `nft` all live there. The agent's table maps thousands of addresses of
//! the service range that other agents on this machine use too, so on the host it would catch their traffic;
//! and the kernel drops the namespace with everything in it when the benchmark's processes end, however they
//! end. In it: loopback, and a veth pair standing for the node's network card, holding the node's address,
//! with a route to the service range (as a host's default route would take it).
//!
//! One `skiff server` (embedded store) and one `skiff agent` (`--pod-network cni`: the service proxy runs
//! where pods have addresses of their own; no pod is made):
//! 1. Memory and sync: the idle agent's RSS (after settling as `--bench node` lets it), then 10 Services (a
//!    probe with one endpoint and 9 others), then ClusterIP Services without selectors up to
//!    `SKIFF_BENCH_SERVICES`, each with an EndpointSlice of 10 ready endpoints (in 10.200.0.0/15, which nothing
//!    holds), written through the API by 8 concurrent clients. Timed until the proxy's verdict map in the
//!    kernel holds every one (`nft -j list map`, polled every second); the agent's transactions meanwhile
//!    (from its debug log); its RSS once settled.
//! 2. Endpoint change: one Service's slice gets one address replaced, `SKIFF_BENCH_CHANGES` times one at a
//!    time; each timed from the API's response until the kernel announces the new endpoint (an element of
//!    the proxy's backends maps). The benchmark reads nftables' notifications from netlink, as `nft monitor`
//!    does: the kernel sends them as the transaction commits, so nothing polls (which on two cores would
//!    take CPU from the agent and round each figure to an `nft` run), and the ruleset is never listed.
//! 3. First packet: TCP connects (`connect` returning at the SYN/ACK) to the probe's ClusterIP, whose endpoint
//!    is a listener of the benchmark on the node's address, one for one with connects to the listener itself
//!    (the machine's drift shows there), `SKIFF_BENCH_CONNECTS` of each: with 10 Services, with all of them,
//!    and with 10 again once the rest are deleted (the deletion is timed as the fill is). The connections
//!    start on the node: the proxy's output chain DNATs them as its prerouting chain does a pod's.
//!
//! Then every Service is deleted, the agent is stopped, and no `skiff` table may be left. Every child process
//! is killed when its guard drops. `SKIFF_BENCH_IDLE_SECS` shortens the idle settling for trial runs.
//! Results: README.md, Performance.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use common::{Guard, Latency, Server, load, mb, ms, wait_until};

/// Services with 10 endpoints each in the published run (the figure).
const SERVICES: usize = 10_000;
/// The small case of the first-packet comparison, the probe included.
const SMALL: usize = 10;
const ENDPOINTS: u32 = 10;
const CHANGES: usize = 100;
const CONNECTS: usize = 2_000;
/// As `--bench node`: past the start-up trim of the binary's pages, at the idle agent's steady state.
const IDLE_SETTLE: Duration = Duration::from_secs(75);
/// Settling before the agent is read with every Service programmed.
const SETTLE: Duration = Duration::from_secs(10);
/// Concurrent writers of the Services and slices, each with a connection of its own.
const CLIENTS: usize = 8;
/// How often the kernel's map is counted while it fills or drains.
const POLL: Duration = Duration::from_secs(1);
/// A fill or drain that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(120);
/// How long one endpoint change may take to reach the kernel before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Untimed connects before each measured run.
const CONNECT_WARM_UP: usize = 50;
const NAMESPACE: &str = "default";
const NODE: &str = "bench-node";
/// The node's address, on the namespace's veth.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
/// Skiff's service range (10.43.0.0/16), which the host routes out of its network card.
const SERVICE_RANGE: &str = "10.43.0.0/16";
/// The bench Services' endpoints: addresses no one holds, 10 per Service (10.200.0.0/15).
const ENDPOINT_BASE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// The bench Services' ClusterIPs, asked for rather than allocated: the API server's allocator lists every
/// Service at each create, which would make the fill quadratic and measure the allocator instead of the proxy.
/// Above the range's lowest 256 addresses, which the server keeps for addresses asked for by name.
const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(10, 43, 1, 0);
/// The probe's ClusterIP.
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 200);
/// The addresses the endpoint changes bring in, a new one each time.
const CHANGE_BASE: Ipv4Addr = Ipv4Addr::new(10, 220, 0, 0);
/// The proxy's verdict map from a Service's address, protocol and port to its chain (node/src/proxy/nft.rs).
const SERVICE_MAP: &str = "service-ips";
/// The namespace's stand-in for the node's network card, and its peer.
const VETH: [&str; 2] = ["bench0", "bench1"];

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no filters, so arguments are ignored.
    let settings = Settings::from_env()?;
    isolate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

/// Knobs for trial runs; the defaults are the published figures.
struct Settings {
    /// `SKIFF_BENCH_SERVICES`: Services in the large case, the probe included.
    services: usize,
    /// `SKIFF_BENCH_CHANGES`: timed endpoint changes.
    changes: usize,
    /// `SKIFF_BENCH_CONNECTS`: connects of each kind in each first-packet run.
    connects: usize,
    /// `SKIFF_BENCH_IDLE_SECS`: how long the agent idles before its RSS is read.
    idle_settle: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(text) => text.trim().parse().with_context(|| format!("{name}={text}")),
                Err(_) => Ok(default),
            }
        };
        let settings = Settings {
            services: number("SKIFF_BENCH_SERVICES", SERVICES)?,
            changes: number("SKIFF_BENCH_CHANGES", CHANGES)?,
            connects: number("SKIFF_BENCH_CONNECTS", CONNECTS)?,
            idle_settle: Duration::from_secs(number("SKIFF_BENCH_IDLE_SECS", IDLE_SETTLE.as_secs() as usize)? as u64),
        };
        ensure!(
            (SMALL..=60_000).contains(&settings.services),
            "SKIFF_BENCH_SERVICES must be from {SMALL} to 60,000 (the service range's addresses)"
        );
        ensure!(settings.changes > 0 && settings.connects > 0, "SKIFF_BENCH_CHANGES and _CONNECTS must be positive");
        Ok(settings)
    }
}

/// Moves this process, and so every child it starts, into a network namespace of its own, and lays out the
/// node's network there.
fn isolate() -> anyhow::Result<()> {
    ensure!(
        std::fs::metadata("/proc/self")?.uid() == 0,
        "proxy_scale runs as root: it makes a network namespace, and the agent's service proxy programs nftables"
    );
    let nft = Command::new("nft").arg("--version").output();
    ensure!(nft.is_ok_and(|o| o.status.success()), "proxy_scale needs nft (Debian package nftables)");
    // SAFETY: unshare takes no pointers. Called from main before any thread starts, so the whole process
    // moves, and the children it spawns later start in the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a network namespace (unshare)");
    }
    let node = format!("{NODE_IP}/32");
    let steps: [&[&str]; 6] = [
        &["link", "set", "lo", "up"],
        &["link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1]],
        &["address", "add", &node, "dev", VETH[0]],
        &["link", "set", VETH[0], "up"],
        &["link", "set", VETH[1], "up"],
        &["route", "add", SERVICE_RANGE, "dev", VETH[0]],
    ];
    for args in steps {
        let output = Command::new("ip").args(args).output().context("cannot run ip (Debian package iproute2)")?;
        ensure!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "skiff service proxy at scale ({cores} cores shared by server, agent, nft and clients; {} Services of {ENDPOINTS} endpoints; load {})\n",
        settings.services,
        load()
    );
    let mut bench = Bench::start().await?;
    let idle = {
        tokio::time::sleep(settings.idle_settle).await;
        common::memory(bench.agent_pid())?
    };
    println!(
        "agent idle, service proxy on, no Services but kubernetes and kube-dns: RSS {:.1} MB (anonymous {:.1} MB)\n",
        mb(idle.rss),
        mb(idle.anonymous)
    );
    let listener = Listener::start()?;

    // The small case: the probe and the first fillers.
    let probe_ip = bench.create_probe(listener.address.port()).await?;
    let probe = SocketAddr::from((probe_ip, 80));
    let mut ips = HashSet::from([probe_ip]);
    ips.extend(bench.create_fillers(0..SMALL - 1).await?);
    bench.wait_programmed(&ips, SMALL).await?;
    bench.log.transactions()?;
    let small_before = first_packet(probe, listener.address, settings.connects).await?;

    // 1. The fill.
    let fillers = settings.services - 1;
    let started = Instant::now();
    ips.extend(bench.create_fillers(SMALL - 1..fillers).await?);
    let fill = bench.until_programmed(&ips, settings.services, started).await?;
    let created = fillers + 1 - SMALL;
    print_fill(
        &format!("fill: {created} Services and their EndpointSlices created, up to {}", settings.services),
        &fill,
    );
    tokio::time::sleep(SETTLE).await;
    let full = common::memory(bench.agent_pid())?;
    print_memory(settings.services, &idle, &full);

    // 2. Endpoint changes, on a Service in the middle of the fill.
    let changes = bench.endpoint_changes(fillers / 2, settings.changes).await?;
    print_changes(&changes);

    // 3. The first packet with every Service, then with 10 again.
    let large = first_packet(probe, listener.address, settings.connects).await?;
    let started = Instant::now();
    bench.delete_fillers(SMALL - 1..fillers).await?;
    let drain = bench.until_programmed(&ips, SMALL, started).await?;
    let small_after = first_packet(probe, listener.address, settings.connects).await?;
    print_first_packet(settings.services, settings.connects, &small_before, &large, &small_after);
    print_fill(&format!("deletion: {created} Services and their EndpointSlices deleted, back to {SMALL}"), &drain);

    bench.delete_fillers(0..SMALL - 1).await?;
    bench.delete(&bench.services_url("probe"), &bench.slices_url("probe-bench")).await?;
    bench.wait_programmed(&ips, 0).await?;
    bench.stop_agent().await?;
    println!("clean-up: every Service deleted; the agent stopped and left no skiff table in nftables");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The cluster

/// A `skiff server` and a `skiff agent` in the benchmark's network namespace. The agent stops first (see
/// Drop), then the fields drop in order: the server, and the directory last.
struct Bench {
    agent: Guard,
    server: Server,
    /// One client per concurrent writer.
    clients: Vec<reqwest::Client>,
    /// The proxy's nftables table.
    table: String,
    log: AgentLog,
    agent_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        let server = Server::start(&data, "embedded", "warn", &dir.path().join("server.log")).await?;
        // The agent runs from its own copy of the binary, as on a node where it is the only skiff process
        // (see `--bench node`): its idle RSS is then the same figure as there.
        let binary = dir.path().join("skiff-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_skiff"), &binary)?;
        let agent_dir = dir.path().join("agent");
        let log = dir.path().join("agent.log");
        let agent = Command::new(&binary)
            .args(["--log-format", "json", "agent", "--server", &server.base, "--name", NODE])
            .args(["--node-ip", &NODE_IP.to_string(), "--kubelet-port", "0", "--pod-network", "cni"])
            .arg("--token-file")
            .arg(data.join("node-token"))
            .arg("--data-dir")
            .arg(&agent_dir)
            // The proxy logs each transaction it applies, with its size and time, at debug.
            .env("RUST_LOG", "warn,skiff_node::proxy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start skiff agent")?;
        let clients = (0..CLIENTS).map(|_| server.client()).collect::<anyhow::Result<Vec<_>>>()?;
        let mut bench = Bench {
            agent: Guard(agent),
            server,
            clients,
            table: String::new(),
            log: AgentLog { path: log, read: 0 },
            agent_dir,
            _dir: dir,
        };
        let mut table = None;
        wait_until("the service proxy's nftables table", Duration::from_secs(60), || {
            // Not there yet, or nft failed: both are a table not yet made.
            table = proxy_table().ok().flatten();
            let found = table.is_some();
            async move { found }
        })
        .await
        .with_context(|| bench.agent_log())?;
        bench.table = table.unwrap_or_default();
        Ok(bench)
    }

    fn agent_pid(&self) -> u32 {
        self.agent.0.id()
    }

    fn agent_log(&self) -> String {
        let log = std::fs::read_to_string(&self.log.path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn services_url(&self, name: &str) -> String {
        format!("{}/api/v1/namespaces/{NAMESPACE}/services/{name}", self.server.base)
    }

    fn slices_url(&self, name: &str) -> String {
        format!("{}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{name}", self.server.base)
    }

    /// The probe: one endpoint, the benchmark's listener on the node's address at `port`. Returns its
    /// ClusterIP.
    async fn create_probe(&self, port: u16) -> anyhow::Result<Ipv4Addr> {
        create_service(&self.clients[0], &self.server.base, "probe", PROBE_IP, &[NODE_IP], port).await?;
        Ok(PROBE_IP)
    }

    /// Creates fillers `range` (Services `bench-I` with their slices), spread over the clients; returns
    /// their ClusterIPs.
    async fn create_fillers(&self, range: std::ops::Range<usize>) -> anyhow::Result<Vec<Ipv4Addr>> {
        let tasks: Vec<_> = self
            .clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let (client, base, range) = (client.clone(), self.server.base.clone(), range.clone());
                tokio::spawn(async move {
                    let mut ips = Vec::new();
                    for i in (range.start + c..range.end).step_by(CLIENTS) {
                        let ip = offset(SERVICE_BASE, i as u32);
                        create_service(&client, &base, &filler(i), ip, &filler_endpoints(i), 80).await?;
                        ips.push(ip);
                    }
                    anyhow::Ok(ips)
                })
            })
            .collect();
        let mut ips = Vec::new();
        for task in tasks {
            ips.extend(task.await??);
        }
        Ok(ips)
    }

    async fn delete_fillers(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let urls: Vec<(String, String)> = (range.start + c..range.end)
                    .step_by(CLIENTS)
                    .map(|i| (self.services_url(&filler(i)), self.slices_url(&format!("{}-bench", filler(i)))))
                    .collect();
                let client = self.clients[c].clone();
                tokio::spawn(async move {
                    for (service, slice) in urls {
                        delete(&client, &service).await?;
                        delete(&client, &slice).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    async fn delete(&self, service: &str, slice: &str) -> anyhow::Result<()> {
        delete(&self.clients[0], service).await?;
        delete(&self.clients[0], slice).await
    }

    /// Waits until `count` of `ips` are in the proxy's verdict map; returns when a poll first saw that.
    async fn wait_programmed(&self, ips: &HashSet<Ipv4Addr>, count: usize) -> anyhow::Result<Instant> {
        let mut last = (usize::MAX, Instant::now());
        loop {
            let found = programmed(&self.table, ips).await?;
            if found == count {
                return Ok(Instant::now());
            }
            if found != last.0 {
                last = (found, Instant::now());
            }
            ensure!(
                last.1.elapsed() < STALL,
                "the kernel's map stuck at {found} of the Services (want {count}):\n{}",
                self.agent_log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// What a fill or a drain started at `started` took, its requests all answered now: until the kernel's
    /// map holds `count` of `ips`, and the agent's transactions meanwhile.
    async fn until_programmed(
        &mut self,
        ips: &HashSet<Ipv4Addr>,
        count: usize,
        started: Instant,
    ) -> anyhow::Result<Fill> {
        let answered = Instant::now();
        let programmed = self.wait_programmed(ips, count).await?;
        Ok(Fill {
            api: answered - started,
            kernel: programmed - started,
            after_api: programmed.saturating_duration_since(answered),
            transactions: Transactions::of(self.log.transactions()?),
        })
    }

    /// Replaces the first address of filler `index`'s slice `count` times, one change at a time, each timed
    /// until the kernel announces the new endpoint.
    async fn endpoint_changes(&mut self, index: usize, count: usize) -> anyhow::Result<Changes> {
        let mut events = EndpointEvents::start()?;
        let url = self.slices_url(&format!("{}-bench", filler(index)));
        let mut addresses = filler_endpoints(index);
        let client = &self.clients[0];
        self.log.transactions()?;
        let (mut from_response, mut from_request) = (Vec::new(), Vec::new());
        for k in 0..count {
            addresses[0] = offset(CHANGE_BASE, k as u32);
            let body = json!({"endpoints": endpoints(&addresses)});
            let sent = Instant::now();
            patch(client, &url, &body).await?;
            let answered = Instant::now();
            let seen = events.wait_for(addresses[0], CHANGE_TIMEOUT).await.with_context(|| self.agent_log())?;
            from_response.push(seen.saturating_duration_since(answered));
            from_request.push(seen - sent);
        }
        Ok(Changes {
            count,
            from_response: Latency::of(from_response),
            from_request: Latency::of(from_request),
            transactions: Transactions::of(self.log.wait_transactions(count).await?),
        })
    }

    /// Stops the agent as a node's service manager does (SIGTERM), then checks that its tables are gone.
    async fn stop_agent(&mut self) -> anyhow::Result<()> {
        let pid = self.agent_pid().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(status.success(), "cannot signal the agent");
        let agent = &mut self.agent.0;
        wait_until("the agent to stop", Duration::from_secs(30), || {
            let stopped = agent.try_wait().is_ok_and(|status| status.is_some());
            async move { stopped }
        })
        .await?;
        let tables = nft(&["list", "tables"])?;
        ensure!(!tables.contains("skiff"), "the stopped agent left tables behind:\n{tables}");
        Ok(())
    }
}

impl Drop for Bench {
    /// Whatever happened: the agent is stopped before its directory goes, and what it keeps outside the
    /// directory with it.
    fn drop(&mut self) {
        let _ = self.agent.0.kill();
        let _ = self.agent.0.wait();
        // The OCI shim's tmpfs over its runtime files, which a killed agent leaves mounted (as `--bench node`).
        let run = self.agent_dir.join("oci/run");
        let _ = Command::new("umount").arg("-l").arg(&run).stderr(Stdio::null()).status();
        release_claim(&self.agent_dir);
    }
}

fn filler(i: usize) -> String {
    format!("bench-{i}")
}

fn filler_endpoints(i: usize) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS).map(|e| offset(ENDPOINT_BASE, i as u32 * ENDPOINTS + e)).collect()
}

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

fn endpoints(addresses: &[Ipv4Addr]) -> Value {
    addresses.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}})).collect()
}

/// Creates a selector-less ClusterIP Service `name` at `ip` (port 80) and its slice `NAME-bench` with
/// `addresses` on `port`.
async fn create_service(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    ip: Ipv4Addr,
    addresses: &[Ipv4Addr],
    port: u16,
) -> anyhow::Result<()> {
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80, "protocol": "TCP", "targetPort": port}]},
    });
    let created = post(client, &format!("{base}/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    ensure!(created["spec"]["clusterIP"] == ip.to_string(), "Service {name} got {}", created["spec"]["clusterIP"]);
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-bench"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"port": port, "protocol": "TCP"}],
        "endpoints": endpoints(addresses),
    });
    post(client, &format!("{base}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"), &slice).await?;
    Ok(())
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(status == reqwest::StatusCode::CREATED, "create answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(serde_json::from_slice(&body)?)
}

async fn patch(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<()> {
    let response = client
        .patch(url)
        .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(status.is_success(), "patch answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(())
}

async fn delete(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let response = client.delete(url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(status.is_success(), "delete answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(())
}

/// The agent keeps its claim on its pod range (in /run/skiff/pod-cidrs, shared by the machine's agents) for
/// its next start; this one has none. The next agent on the machine would reclaim it, once the data dir is
/// gone, but the benchmark leaves nothing behind.
fn release_claim(agent_dir: &Path) {
    let Ok(data_dir) = agent_dir.canonicalize() else { return };
    for entry in std::fs::read_dir("/run/skiff/pod-cidrs").into_iter().flatten().flatten() {
        let claim = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if claim.lines().next() == Some(&*data_dir.to_string_lossy()) {
            // The claim's third line is the agent's directory of pod namespaces (none were made).
            if let Some(run_dir) = claim.lines().nth(2) {
                let _ = std::fs::remove_dir_all(run_dir);
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The kernel's side

/// `nft ARGS`' output.
fn nft(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("nft").args(args).output()?;
    ensure!(output.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?)
}

/// The proxy's table (`skiff-ID`; `skiff-policy-ID` is the network policies'), once the agent made it.
fn proxy_table() -> anyhow::Result<Option<String>> {
    let tables: Value = serde_json::from_str(&nft(&["-j", "list", "tables"])?)?;
    let mut names = tables["nftables"].as_array().into_iter().flatten().filter_map(|t| t["table"]["name"].as_str());
    Ok(names.find(|name| name.starts_with("skiff-") && !name.starts_with("skiff-policy-")).map(str::to_owned))
}

/// How many of `ips` the proxy's verdict map sends to a Service's chain (a Service without endpoints is
/// in another set, so this counts Services with their endpoints programmed).
async fn programmed(table: &str, ips: &HashSet<Ipv4Addr>) -> anyhow::Result<usize> {
    let table = table.to_owned();
    let text = tokio::task::spawn_blocking(move || nft(&["-j", "list", "map", "ip", &table, SERVICE_MAP])).await??;
    let listed: Value = serde_json::from_str(&text)?;
    let maps = listed["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("map"));
    // Each element is [{"concat": [address, protocol, port]}, verdict].
    let elements = maps.flat_map(|map| map["elem"].as_array().into_iter().flatten());
    let addresses = elements.filter_map(|e| e[0]["concat"][0].as_str()?.parse::<Ipv4Addr>().ok());
    Ok(addresses.filter(|a| ips.contains(a)).count())
}

/// The kernel's nftables notifications, read from netlink by a thread of their own: when each new endpoint
/// (an element of one of the proxy's `cluster-backends-SLOT` maps, whose value is the endpoint's address
/// and port) was announced, by its address. The kernel announces a transaction's objects as it commits,
/// so this is when the endpoint took effect. (`nft monitor` reads the same notifications, but lists the
/// whole ruleset first.)
struct EndpointEvents {
    seen: tokio::sync::mpsc::UnboundedReceiver<(Ipv4Addr, Instant)>,
}

/// The multicast group of nftables' notifications, as a bit of `sockaddr_nl.nl_groups`.
const NFTABLES_GROUP: u32 = 1 << (libc::NFNLGRP_NFTABLES - 1);
/// A new set element's notification: the nftables subsystem's `NFT_MSG_NEWSETELEM`.
const NEW_ELEMENT: u16 = ((libc::NFNL_SUBSYS_NFTABLES << 8) | libc::NFT_MSG_NEWSETELEM) as u16;
/// Attributes of linux/netfilter/nf_tables.h: a set element list's set name and elements; one element
/// (`NFTA_LIST_ELEM`); an element's data; a data's value.
const LIST_SET: u16 = 2;
const LIST_ELEMENTS: u16 = 3;
const LIST_ELEMENT: u16 = 1;
const ELEMENT_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
/// The maps holding the endpoints of cluster IPs (node/src/proxy/nft.rs).
const BACKENDS_MAPS: &str = "cluster-backends-";
/// A netlink message's header (`nlmsghdr`), and the nfnetlink one after it (`nfgenmsg`).
const NLMSG_HEADER: usize = 16;
const NFGEN_HEADER: usize = 4;

impl EndpointEvents {
    fn start() -> anyhow::Result<Self> {
        let socket = nftables_events()?;
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            // The socket's receive timeout wakes the loop to see whether anyone still listens.
            while !tx.is_closed() {
                // SAFETY: the buffer is valid for writes of its length; `socket` keeps the descriptor open.
                let read = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
                // A timeout, or notifications lost to a full buffer: a change whose notification was lost
                // times out below.
                let Ok(read) = usize::try_from(read) else { continue };
                let at = Instant::now();
                for address in new_endpoints(&buffer[..read]) {
                    let _ = tx.send((address, at));
                }
            }
        });
        Ok(EndpointEvents { seen })
    }

    /// When an endpoint at `address` was announced (others are passed over).
    async fn wait_for(&mut self, address: Ipv4Addr, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some((seen, at))) if seen == address => return Ok(at),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the nftables notifications ended"),
                Err(_) => bail!("no endpoint {address} in the kernel after {timeout:?}"),
            }
        }
    }
}

/// A netlink socket subscribed to nftables' notifications.
fn nftables_events() -> anyhow::Result<OwnedFd> {
    let error = |what: &str| Err(std::io::Error::last_os_error()).context(format!("netlink: cannot {what}"));
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        return error("open a netfilter socket");
    }
    // SAFETY: the descriptor was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data, for which all zeroes is valid.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = NFTABLES_GROUP;
    let length = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `address` is a sockaddr_nl of the length given, alive for the call.
    if unsafe { libc::bind(fd, (&raw const address).cast(), length) } != 0 {
        return error("join nftables' notifications");
    }
    // A large transaction's notifications arrive at once, more than the default buffer holds.
    let buffer: libc::c_int = 16 << 20;
    let wake = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    if set_option(&socket, libc::SO_RCVBUFFORCE, &buffer) != 0 {
        return error("enlarge the receive buffer");
    }
    if set_option(&socket, libc::SO_RCVTIMEO, &wake) != 0 {
        return error("set a receive timeout");
    }
    Ok(socket)
}

/// `setsockopt` at the socket level; 0 or -1.
fn set_option<T>(socket: &OwnedFd, name: libc::c_int, value: &T) -> libc::c_int {
    let length = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a T of the length given, alive for the call.
    unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, name, (value as *const T).cast(), length) }
}

/// Netlink attributes: length (header included) and type, then the value, each padded to 4 bytes.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let u16_at = |bytes: &[u8], at: usize| Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    std::iter::from_fn(move || {
        let (size, kind) = (usize::from(u16_at(bytes, 0)?), u16_at(bytes, 2)?);
        let value = bytes.get(4..size)?;
        bytes = bytes.get((size + 3) & !3..).unwrap_or_default();
        Some((kind & libc::NLA_TYPE_MASK as u16, value))
    })
}

fn attribute(bytes: &[u8], wanted: u16) -> Option<&[u8]> {
    attributes(bytes).find(|(kind, _)| *kind == wanted).map(|(_, value)| value)
}

/// The endpoint addresses the `NFT_MSG_NEWSETELEM` messages in `buffer` (one read of the socket) add to the
/// backends maps.
fn new_endpoints(mut buffer: &[u8]) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    while let Some(length) = buffer.get(..4).and_then(|b| Some(u32::from_ne_bytes(b.try_into().ok()?) as usize)) {
        let Some(message) = buffer.get(..length).filter(|_| length >= NLMSG_HEADER) else { break };
        let kind = message.get(4..6).and_then(|b| Some(u16::from_ne_bytes(b.try_into().ok()?)));
        let body = message.get(NLMSG_HEADER + NFGEN_HEADER..).unwrap_or_default();
        let set = attribute(body, LIST_SET).map(|name| String::from_utf8_lossy(name).trim_end_matches('\0').to_owned());
        if kind == Some(NEW_ELEMENT) && set.is_some_and(|set| set.starts_with(BACKENDS_MAPS)) {
            let elements = attribute(body, LIST_ELEMENTS).unwrap_or_default();
            for (_, element) in attributes(elements).filter(|(kind, _)| *kind == LIST_ELEMENT) {
                let value = attribute(element, ELEMENT_DATA).and_then(|data| attribute(data, DATA_VALUE));
                if let Some(octets) = value.and_then(|v| <[u8; 4]>::try_from(v.get(..4)?).ok()) {
                    found.push(Ipv4Addr::from(octets));
                }
            }
        }
        buffer = buffer.get((length + 3) & !3..).unwrap_or_default();
    }
    found
}

// ---------------------------------------------------------------------------------------------------------
// The agent's transactions

/// The agent's log, read on from where the last read stopped.
struct AgentLog {
    path: PathBuf,
    /// Bytes already read.
    read: usize,
}

/// One transaction the proxy applied: how many Services it looked at and how long `nft` took.
struct Transaction {
    services: u64,
    elapsed: Duration,
}

impl AgentLog {
    /// The transactions logged since the last call.
    fn transactions(&mut self) -> anyhow::Result<Vec<Transaction>> {
        let text = std::fs::read(&self.path)?;
        // Only whole lines: the agent may be writing the last one.
        let end = text.iter().rposition(|b| *b == b'\n').map_or(self.read, |i| i + 1);
        let fresh = String::from_utf8_lossy(&text[self.read.min(end)..end]).into_owned();
        self.read = end;
        let mut syncs = Vec::new();
        for line in fresh.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            let fields = &event["fields"];
            if fields["message"] != "service rules applied" {
                continue;
            }
            let elapsed = fields["elapsed"].as_str().context("a transaction without its time")?;
            syncs.push(Transaction {
                services: fields["services"].as_u64().unwrap_or(0),
                elapsed: debug_duration(elapsed)?,
            });
        }
        Ok(syncs)
    }

    /// The transactions logged since the last read, once there are at least `count` (or after a second,
    /// however many there are).
    async fn wait_transactions(&mut self, count: usize) -> anyhow::Result<Vec<Transaction>> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut syncs = self.transactions()?;
        while syncs.len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            syncs.extend(self.transactions()?);
        }
        Ok(syncs)
    }
}

/// A `Duration` as its `Debug` prints it: `1.5s`, `7.61ms`, `850.2µs`, `12ns`.
fn debug_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).with_context(|| format!("no unit in {text}"))?;
    let value: f64 = text[..split].parse()?;
    let seconds = match &text[split..] {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        unit => bail!("unknown unit {unit} in {text}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// A phase's transactions, summed up.
struct Transactions {
    count: usize,
    elapsed: Latency,
    total: Duration,
    /// The most Services one transaction looked at.
    largest: u64,
}

impl Transactions {
    fn of(syncs: Vec<Transaction>) -> Self {
        Transactions {
            count: syncs.len(),
            total: syncs.iter().map(|s| s.elapsed).sum(),
            largest: syncs.iter().map(|s| s.services).max().unwrap_or(0),
            elapsed: Latency::of(syncs.into_iter().map(|s| s.elapsed).collect()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The first packet

/// A listener on the node's address that accepts and closes; stops when dropped.
struct Listener {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((NODE_IP, 0))?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                drop(stream);
            }
        });
        Ok(Listener { address, stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The accept loop notices the flag at its next connection.
        let _ = TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connect times through the ClusterIP and to the listener directly.
struct FirstPacket {
    service: Vec<Duration>,
    direct: Vec<Duration>,
}

/// `count` connects to `service` and as many to `direct`, one for one (which goes first alternates).
async fn first_packet(service: SocketAddr, direct: SocketAddr, count: usize) -> anyhow::Result<FirstPacket> {
    tokio::task::spawn_blocking(move || {
        let connect = |target: SocketAddr| -> anyhow::Result<Duration> {
            let started = Instant::now();
            let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
                .with_context(|| format!("cannot connect to {target}"))?;
            let took = started.elapsed();
            drop(stream);
            Ok(took)
        };
        for _ in 0..CONNECT_WARM_UP {
            connect(service)?;
            connect(direct)?;
        }
        let (mut through, mut direct_times) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count {
            if i % 2 == 0 {
                through.push(connect(service)?);
                direct_times.push(connect(direct)?);
            } else {
                direct_times.push(connect(direct)?);
                through.push(connect(service)?);
            }
        }
        Ok(FirstPacket { service: through, direct: direct_times })
    })
    .await?
}

// ---------------------------------------------------------------------------------------------------------
// Output

struct Fill {
    /// From the first request until the last response.
    api: Duration,
    /// From the first request until a poll saw the kernel's map complete.
    kernel: Duration,
    after_api: Duration,
    transactions: Transactions,
}

struct Changes {
    count: usize,
    from_response: Latency,
    from_request: Latency,
    transactions: Transactions,
}

fn print_fill(title: &str, f: &Fill) {
    println!("{title} through the API by {CLIENTS} clients (load {})", load());
    println!(
        "   API {:.1} s; the kernel's map complete {:.1} s after the first request, {:.1} s after the last response (polled every {} s)",
        f.api.as_secs_f64(),
        f.kernel.as_secs_f64(),
        f.after_api.as_secs_f64(),
        POLL.as_secs()
    );
    let s = &f.transactions;
    println!(
        "   agent: {} transactions, {:.1} s in nft; per transaction p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; up to {} Services in one",
        s.count,
        s.total.as_secs_f64(),
        ms(s.elapsed.p50),
        ms(s.elapsed.p99),
        ms(s.elapsed.max),
        s.largest
    );
    println!();
}

fn print_memory(services: usize, idle: &common::Memory, full: &common::Memory) {
    let over = full.rss.saturating_sub(idle.rss);
    let anonymous = full.anonymous.saturating_sub(idle.anonymous);
    println!("agent memory with {services} Services of {ENDPOINTS} endpoints programmed (load {})", load());
    println!("   target: < 30 MB over the idle agent");
    println!(
        "   RSS {:.1} MB against {:.1} MB idle: {:.1} MB over idle, {:.1} KiB per Service; anonymous {:.1} MB against {:.1}: {:.1} MB over idle",
        mb(full.rss),
        mb(idle.rss),
        mb(over),
        over as f64 / 1024.0 / services as f64,
        mb(full.anonymous),
        mb(idle.anonymous),
        mb(anonymous)
    );
    println!();
}

fn print_changes(c: &Changes) {
    println!(
        "endpoint change: one address of a Service's slice replaced, {} times one at a time, until the kernel announces it (load {})",
        c.count,
        load()
    );
    println!("   target: p99 < 50 ms");
    println!("   {:<42} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    let s = &c.transactions;
    for (name, l) in [
        ("API response -> endpoint in the kernel", &c.from_response),
        ("API request sent -> endpoint in the kernel", &c.from_request),
        ("(the agent's nft run alone)", &s.elapsed),
    ] {
        println!("   {name:<42} {:>9.2} {:>9.2} {:>9.2}", ms(l.p50), ms(l.p99), ms(l.max));
    }
    println!("   {} transactions for {} changes, each looking at up to {} Services", s.count, c.count, s.largest);
    println!();
}

fn print_first_packet(services: usize, count: usize, before: &FirstPacket, large: &FirstPacket, after: &FirstPacket) {
    println!(
        "first packet: TCP connect to a ClusterIP (DNAT to a listener on the node) and to the listener directly, {count} of each, interleaved (load {})",
        load()
    );
    println!("   target: the same time with {SMALL} or {services} Services (within 10%)");
    println!("   {:<22} {:>14} {:>14} {:>14} {:>14}", "Services", "ClusterIP p50", "p99 ms", "direct p50", "p99 ms");
    for (name, run) in
        [(format!("{SMALL} (before)"), before), (format!("{services}"), large), (format!("{SMALL} (after)"), after)]
    {
        let (service, direct) = (Latency::of(run.service.clone()), Latency::of(run.direct.clone()));
        println!(
            "   {name:<22} {:>14.3} {:>14.3} {:>14.3} {:>14.3}",
            ms(service.p50),
            ms(service.p99),
            ms(direct.p50),
            ms(direct.p99)
        );
    }
    let pooled = |pick: fn(&FirstPacket) -> &Vec<Duration>| {
        Latency::of(pick(before).iter().chain(pick(after)).copied().collect())
    };
    let (small, small_direct) = (pooled(|r| &r.service), pooled(|r| &r.direct));
    let (big, big_direct) = (Latency::of(large.service.clone()), Latency::of(large.direct.clone()));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "   {services} against {SMALL} (before and after together): ClusterIP p50 x{:.2}, p99 x{:.2}; direct p50 x{:.2}, p99 x{:.2}",
        ratio(big.p50, small.p50),
        ratio(big.p99, small.p99),
        ratio(big_direct.p50, small_direct.p50),
        ratio(big_direct.p99, small_direct.p99)
    );
    println!();
}
