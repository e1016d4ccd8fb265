//! `cargo bench --bench node`: the node agent with wasm pods, loopback only, on this machine's cores.
//!
//! 1. Pod startup: one `skiff server` (embedded store) and one `skiff agent`, the ticker sample imported and
//!    compiled once by a warm-up pod. 100 pods bound to the node are created one at a time; for each, the
//!    time from the create's response to the moment one long-lived watch on pods shows its container
//!    running (the SLO's "creation to all containers started, seen by watch", image pull excluded).
//! 2. Agent memory: the agent's RSS idle with no pods (75 s after it started: past its start-up trim, at
//!    its steady state), then with 1,000 and 2,000 idle long-running ticker pods (INTERVAL_MS=60000), with
//!    PSS, threads, open files and CPU; where it stops and why. The agent runs from its own copy of the
//!    binary, as on a node without a server. At each step, the cost of the node's metrics: 50 sequential
//!    GETs of `/metrics/resource` and of `/stats/summary` (what Prometheus and the metrics API read) on the
//!    agent's port, each timed from request to last byte, and the agent's CPU time over them, as a share of
//!    a core at one scrape of each per 15 s (Prometheus' and metrics-server's usual intervals).
//! 3. HTTP: the http-hello sample (wasi:http, a fresh instance per request) as a pod with a containerPort,
//!    loaded by a closed-loop generator over keep-alive connections: Debian's `wrk` when installed, else
//!    reqwest clients in this process. Requests/s and latency at 1, 4, 16 and 64 connections.
//!
//! 3b. Ingress overhead: the same http-hello pod behind a Service and an Ingress (the agent's ingress on a
//!    loopback port); the same closed-loop load straight to the pod's address and through the Ingress, one
//!    after the other, at 1, 16 and 64 connections.
//!
//! 3c. Cold start from zero: a Deployment of the http-hello sample (wasm) and one of busybox's httpd (a
//!    container, as root) at zero replicas behind a Service marked to scale from zero and an Ingress host,
//!    each woken by one request through the node's ingress, 100 trials each (containers: 20), one workload
//!    after the other in the same run: the time from sending the request to its 200. Between trials the
//!    Deployment is put back to zero and the trial starts once its pod is gone.
//!
//! 3d. Black Friday: an Ingress host in front of http-hello at one replica, an autoscaling/v2 HPA on the pods'
//!    `http_requests_per_second` (an average of 500 per pod, 1 to 10 replicas, scale-down stabilization
//!    30 s), the metrics and the HPA at Kubernetes' defaults (15 s resolution, 15 s sync). Debian's `hey`
//!    sends an open-loop rate through the node's ingress in steps of 60 s: 100, 2,000, 10,000, 2,000 and
//!    100 requests/s (as far as the two cores carry, `hey` included). Per step: the rate served, p50/p99,
//!    failed requests (non-2xx or none), the ready replicas at its end and the time from its start until
//!    the Deployment reached them. Rate and replicas over time are charted in
//!    `benches/results/black-friday.svg`.
//!
//! 4. A Deployment of 1,000 ticker replicas (no nodeName: the scheduler places them, the agent takes
//!    `--max-pods 1100`), from the create until its status shows every replica Ready; then the server's CPU
//!    (API server, scheduler and controllers) and the agent's over 30 s with those 1,000 pods idle.
//! 5. OCI pods (as root): a busybox image from a real registry on loopback, pulled once by a warm-up pod;
//!    then 50 pods (`sleep`) created one at a time, create -> running seen by the watch as in 1 (each pod
//!    gets its network namespace from the CNI plugins first); and the agent's RSS before and with those 50
//!    idle containers, the runtime's cost per container beyond the containers' own processes.
//!
//! `SKIFF_BENCH_ONLY=startup,memory,http,ingress,coldstart,blackfriday,deploy,oci` runs parts; `SKIFF_BENCH_PODS=1000,2000` sets the memory steps
//! (cumulative pod counts). Every child process (server, agent) is killed when its guard drops. Results:
//! README.md, Performance.

mod common;
// The end-to-end tests' registry (docker-registry on loopback) and busybox image builder; the rest of that
// harness is unused here.
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use common::{
    Guard, HttpGenerator, HttpLoad, Latency, Server, create, free_port, load, mb, ms, read_watch, wait_node_ready,
    wait_until,
};
use tokio::sync::watch;

/// Pods timed one at a time in the startup run.
const STARTUP_PODS: usize = 100;
/// Cumulative pod counts at which the agent's memory is read (the startup pods count towards them).
const MEMORY_STEPS: [usize; 2] = [1_000, 2_000];
/// Concurrent creators while filling the node: enough to keep the API server busy, few enough that the
/// agent's own writes (status, events) are not starved.
const FILL_CLIENTS: usize = 8;
/// A step ends when no further pod has started for this long (pods that cannot start wait in back-off).
const FILL_STALL: Duration = Duration::from_secs(20);
/// Settling time before a reading, so the pods' status writes and queued events are done.
const SETTLE: Duration = Duration::from_secs(10);
/// Settling time before the idle agent is read: past the start-up trim of the binary's pages (10 s after
/// start) and long enough for the pages its idle work runs to be back (steady from about 60 s).
const IDLE_SETTLE: Duration = Duration::from_secs(75);
/// The window over which the agent's CPU use is measured, after settling.
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// The ticker prints once a minute: the pods are idle, as most of a node's pods are most of the time.
const TICKER_INTERVAL_MS: &str = "60000";
/// The ticker's linear memory is about 1 MiB.
const TICKER_MEMORY: &str = "4Mi";
/// The file-descriptor limit the agent is started with (each pod keeps its log file open).
const AGENT_NOFILE: u64 = 65_536;
const HTTP_CONNECTIONS: [usize; 4] = [1, 4, 16, 64];
const HTTP_DURATION: Duration = Duration::from_secs(5);
const NAMESPACE: &str = "default";
const NODE: &str = "bench-node";
const TICKER_IMAGE: &str = "local/ticker:bench";
const HTTP_IMAGE: &str = "local/http-hello:bench";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no filters, so arguments are ignored.
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

/// Knobs for experiments; the defaults are the published figures.
struct Settings {
    sections: Vec<String>,
    memory_steps: Vec<usize>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let sections = std::env::var("SKIFF_BENCH_ONLY")
            .unwrap_or_else(|_| "startup,memory,http,ingress,coldstart,blackfriday,deploy,oci".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let memory_steps = match std::env::var("SKIFF_BENCH_PODS") {
            Ok(steps) => steps.split(',').map(|s| s.trim().parse()).collect::<Result<Vec<usize>, _>>()?,
            Err(_) => MEMORY_STEPS.to_vec(),
        };
        ensure!(memory_steps.windows(2).all(|w| w[0] < w[1]), "SKIFF_BENCH_PODS must increase");
        Ok(Settings { sections, memory_steps })
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let samples = build_samples()?;
    println!(
        "skiff node benchmarks ({cores} cores shared by server, agent and clients; load {}; this shell's nofile {})\n",
        load(),
        nofile("self")?
    );
    if settings.runs("startup") || settings.runs("memory") {
        let cluster = Cluster::start(&[(samples.join("ticker.wasm"), TICKER_IMAGE)], &[]).await?;
        let idle = Footprint::of(cluster.agent.pid(), IDLE_SETTLE).await?;
        println!(
            "agent started with nofile {} (raised from {})",
            nofile(&cluster.agent.pid().to_string())?,
            nofile("self")?
        );
        print_idle(&idle);
        let pods = PodWatch::start(&cluster).await?;
        // The warm-up pod compiles the module (Cranelift, then the disk cache) and links it once.
        let compiled = Instant::now();
        cluster.create(&ticker_pod("warm-up")).await?;
        pods.wait_running("warm-up", Duration::from_secs(120)).await?;
        println!("warm-up pod running after {:.0} ms (module compiled once)\n", ms(compiled.elapsed()));
        if settings.runs("startup") {
            let startup = startup(&cluster, &pods).await?;
            print_startup(&startup);
        }
        if settings.runs("memory") {
            // Each step prints as it ends, so a run that stops part way still shows what it reached.
            memory(&cluster, &pods, &settings.memory_steps, idle.rss).await?;
        }
    }
    if settings.runs("http") {
        let cluster = Cluster::start(&[(samples.join("http-hello.wasm"), HTTP_IMAGE)], &[]).await?;
        let runs = http(&cluster).await?;
        print_http(&runs);
    }
    if settings.runs("ingress") {
        let port = free_port()?;
        let flags = ["--ingress-http-port".to_string(), port.to_string(), "--ingress-https-port".into(), "0".into()];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cluster = Cluster::start(&[(samples.join("http-hello.wasm"), HTTP_IMAGE)], &flags).await?;
        print_ingress(&ingress(&cluster, port).await?);
    }
    if settings.runs("coldstart") {
        let port = free_port()?;
        let flags = ["--ingress-http-port".to_string(), port.to_string(), "--ingress-https-port".into(), "0".into()];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cluster = Cluster::start(&[(samples.join("http-hello.wasm"), HTTP_IMAGE)], &flags).await?;
        let wasm = cold_starts(&cluster, port, "wasm", HTTP_IMAGE, None, COLD_TRIALS).await?;
        print_cold_starts("wasm (http-hello)", &wasm);
        if harness::is_root() {
            let registry = tokio::task::block_in_place(harness::Registry::start)?;
            let files = [("www/index.html", "hello from a container\n")];
            let exec = json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]});
            let image = tokio::task::block_in_place(|| registry.push_busybox_with("bench/httpd", exec, &files));
            let command = json!(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]);
            let containers = cold_starts(&cluster, port, "box", &image, Some(command), COLD_CONTAINER_TRIALS).await?;
            print_cold_starts("container (busybox httpd)", &containers);
        }
    }
    if settings.runs("blackfriday") {
        let port = free_port()?;
        let flags = ["--ingress-http-port".to_string(), port.to_string(), "--ingress-https-port".into(), "0".into()];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cluster = Cluster::start(&[(samples.join("http-hello.wasm"), HTTP_IMAGE)], &flags).await?;
        let run = black_friday(&cluster, port).await?;
        print_black_friday(&run);
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/black-friday.svg");
        chart_black_friday(&run, &chart)?;
        println!("   chart: {}\n", chart.display());
    }
    if settings.runs("deploy") {
        deploy(&samples).await?;
    }
    if settings.runs("oci") {
        oci().await?;
    }
    Ok(())
}

/// Builds the samples (a no-op when they are up to date) and returns `samples/out`.
fn build_samples() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/build-samples")).current_dir(root).output()?;
    ensure!(output.status.success(), "scripts/build-samples failed:\n{}", String::from_utf8_lossy(&output.stderr));
    Ok(root.join("samples/out"))
}

// ---------------------------------------------------------------------------------------------------------
// Processes

/// A `skiff server` on the embedded store and one `skiff agent` joined to it, each logging to a file.
struct Cluster {
    agent: Agent,
    server: Server,
    dir: tempfile::TempDir,
    base: String,
    client: reqwest::Client,
}

struct Agent {
    child: Guard,
    /// The OCI shim's tmpfs for runtime files, which outlives a killed agent (a new one adopts the containers
    /// in it).
    oci_run: PathBuf,
}

impl Drop for Cluster {
    /// Stops both processes and removes the directory before the fields drop, so that a directory left
    /// behind is seen: it would keep the pod range the agent claimed on this machine claimed for good.
    fn drop(&mut self) {
        for child in [&mut self.agent.child.0, &mut self.server.child.0] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.agent.oci_run).stderr(Stdio::null()).status();
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!("warning: cannot remove the benchmark's directory {}: {e}", self.dir.path().display());
        }
    }
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

impl Cluster {
    /// Starts both, with `images` imported into the agent's store beforehand and `agent_flags` added to the
    /// agent's command line.
    async fn start(images: &[(PathBuf, &str)], agent_flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        let server = Server::start(&data, "embedded", "warn", &dir.path().join("server.log")).await?;
        let base = server.base.clone();
        let client = server.client()?;

        let agent_dir = dir.path().join("agent");
        for (file, reference) in images {
            let output = Command::new(env!("CARGO_BIN_EXE_skiff"))
                .args(["image", "import"])
                .arg(file)
                .arg(reference)
                .arg("--data-dir")
                .arg(&agent_dir)
                .output()?;
            ensure!(output.status.success(), "skiff image import: {}", String::from_utf8_lossy(&output.stderr));
        }
        // Each pod keeps its log file open, so a thousand pods need more than the common soft limit of 1024.
        // Raising the soft limit up to the hard one needs no privilege.
        let script = format!("ulimit -n {AGENT_NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"");
        // The agent runs from its own copy of the binary, as on a node where it is the only skiff process: a
        // page of the file that the server also maps stays resident in both (the start-up trim leaves pages
        // another process maps), which a node on its own machine does not pay.
        let agent_binary = dir.path().join("skiff-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_skiff"), &agent_binary)?;
        let agent = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg(&agent_binary)
            .args(["agent", "--server", &base, "--name", NODE])
            .args(["--node-ip", "127.0.0.1", "--kubelet-port", "0"])
            // The host's ports 80 and 443 stay free unless a section asks for an ingress port.
            .args(match agent_flags.iter().any(|flag| flag.starts_with("--ingress-")) {
                true => &[][..],
                false => &["--ingress-http-port", "0", "--ingress-https-port", "0"][..],
            })
            .args(agent_flags)
            .arg("--token-file")
            .arg(data.join("node-token"))
            .arg("--data-dir")
            .arg(&agent_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
            .spawn()
            .context("cannot start skiff agent")?;
        let agent = Agent { child: Guard(agent), oci_run: agent_dir.join("oci/run") };
        let cluster = Cluster { agent, server, dir, base, client };
        wait_node_ready(&cluster.client, &cluster.base, NODE).await.with_context(|| cluster.agent_log())?;
        Ok(cluster)
    }

    /// A client with its own connection pool.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.server.client()
    }

    fn pods(&self) -> String {
        format!("{}/api/v1/namespaces/{NAMESPACE}/pods", self.base)
    }

    async fn create(&self, pod: &Value) -> anyhow::Result<()> {
        create(&self.client, &self.pods(), pod).await
    }

    fn agent_log(&self) -> String {
        common::log_tail(&self.dir.path().join("agent.log"))
    }
}

fn ticker_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE,
            "containers": [ticker_container()],
        },
    })
}

/// The ticker, with the memory limit that lets a node admit a thousand of them: a wasm guest without one is
/// counted at the node's default (128 MiB), as it may grow that far in the agent.
fn ticker_container() -> Value {
    json!({
        "name": "ticker",
        "image": TICKER_IMAGE,
        "imagePullPolicy": "Never",
        "env": [{"name": "INTERVAL_MS", "value": TICKER_INTERVAL_MS}],
        "resources": {"limits": {"memory": TICKER_MEMORY}},
    })
}

// ---------------------------------------------------------------------------------------------------------
// The pod watch

/// What the watch last showed of one pod.
#[derive(Clone, Default)]
struct Seen {
    /// When an event first showed every container running.
    running_at: Option<Instant>,
    /// Whether the last event showed every container running.
    running: bool,
    /// The last waiting reason and message of a container that is not running.
    waiting: Option<String>,
}

/// One long-lived watch on the namespace's pods, read by its own task into a map by pod name.
struct PodWatch {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Bumped on every event, so waiters wake without polling.
    events: watch::Receiver<u64>,
    reader: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl PodWatch {
    async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let client = cluster.client()?;
        let list: Value = client.get(cluster.pods()).send().await?.error_for_status()?.json().await?;
        let rv = list["metadata"]["resourceVersion"].as_str().context("list without a resourceVersion")?.to_owned();
        let response = client
            .get(cluster.pods())
            .query(&[("watch", "true"), ("resourceVersion", &rv), ("allowWatchBookmarks", "false")])
            .send()
            .await?
            .error_for_status()?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (tx, events) = watch::channel(0);
        let map = Arc::clone(&seen);
        let reader = tokio::spawn(read_watch(response, move |pod, arrived| {
            record(&map, pod, arrived);
            tx.send_modify(|n| *n += 1);
            Ok(ControlFlow::Continue(()))
        }));
        Ok(PodWatch { seen, events, reader })
    }

    fn get(&self, name: &str) -> Seen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned().unwrap_or_default()
    }

    /// Pods running now.
    fn running(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|s| s.running).count()
    }

    /// Last waiting reasons of pods not running now, with how many pods show each.
    fn not_running(&self) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for seen in self.seen.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if !seen.running {
                *reasons.entry(seen.waiting.clone().unwrap_or_else(|| "(no status yet)".into())).or_default() += 1;
            }
        }
        reasons
    }

    /// Waits until the watch shows `name` running; returns when it did.
    async fn wait_running(&self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let mut events = self.events.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marking the current value seen before looking avoids missing an event between the two.
            events.borrow_and_update();
            let seen = self.get(name);
            if let Some(at) = seen.running_at {
                return Ok(at);
            }
            ensure!(!self.reader.is_finished(), "the pod watch ended");
            match tokio::time::timeout_at(deadline, events.changed()).await {
                Ok(result) => result?,
                Err(_) => bail!("pod {name} not running after {timeout:?} (last waiting: {:?})", seen.waiting),
            }
        }
    }

    /// Waits until `count` pods are running, or none started for [`FILL_STALL`]; returns how many run.
    async fn wait_count(&self, count: usize) -> anyhow::Result<usize> {
        let mut events = self.events.clone();
        let mut last = (self.running(), Instant::now());
        loop {
            events.borrow_and_update();
            let running = self.running();
            if running >= count {
                return Ok(running);
            }
            if running > last.0 {
                last = (running, Instant::now());
            } else if last.1.elapsed() >= FILL_STALL {
                return Ok(running);
            }
            ensure!(!self.reader.is_finished(), "the pod watch ended");
            let _ = tokio::time::timeout(Duration::from_secs(1), events.changed()).await;
        }
    }
}

fn record(map: &Mutex<HashMap<String, Seen>>, pod: &Value, arrived: Instant) {
    let Some(name) = pod["metadata"]["name"].as_str() else { return };
    let statuses = pod["status"]["containerStatuses"].as_array().map(Vec::as_slice).unwrap_or_default();
    let running = !statuses.is_empty() && statuses.iter().all(|s| s["state"]["running"].is_object());
    let waiting = statuses.iter().find_map(|s| {
        let reason = s["state"]["waiting"]["reason"].as_str()?;
        // A crash-looping container's own message names the pod and the back-off; the cause is in how its
        // last run ended.
        let last = &s["lastState"]["terminated"];
        let detail = match last["exitCode"].as_i64() {
            Some(code) => format!("last exit {code} {}", last["message"].as_str().unwrap_or("")),
            None => s["state"]["waiting"]["message"].as_str().unwrap_or("").to_owned(),
        };
        Some(format!("{reason}: {}", detail.chars().take(160).collect::<String>()))
    });
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let seen = map.entry(name.to_owned()).or_default();
    if running && seen.running_at.is_none() {
        seen.running_at = Some(arrived);
    }
    seen.running = running;
    if waiting.is_some() {
        seen.waiting = waiting;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. Pod startup

struct Startup {
    /// Create response → watch shows the container running.
    from_ack: Latency,
    /// Create sent → watch shows the container running (adds the create's own round trip).
    from_send: Latency,
    create: Latency,
}

async fn startup(cluster: &Cluster, pods: &PodWatch) -> anyhow::Result<Startup> {
    let (mut from_ack, mut from_send, mut create) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..STARTUP_PODS {
        let name = format!("start-{i}");
        let sent = Instant::now();
        cluster.create(&ticker_pod(&name)).await?;
        let acked = Instant::now();
        let running = pods.wait_running(&name, Duration::from_secs(30)).await?;
        // The watch may show the pod before the create's response is read: that counts as zero.
        from_ack.push(running.saturating_duration_since(acked));
        from_send.push(running.saturating_duration_since(sent));
        create.push(acked - sent);
    }
    Ok(Startup { from_ack: Latency::of(from_ack), from_send: Latency::of(from_send), create: Latency::of(create) })
}

fn print_startup(s: &Startup) {
    println!(
        "pod startup: {STARTUP_PODS} ticker pods created one at a time, until the watch shows them running (load {})",
        load()
    );
    println!("   target: p50 < 10 ms, p99 < 50 ms (Kubernetes SLO: p99 <= 5 s)");
    println!("   {:<34} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    for (name, l) in [
        ("create response -> running", &s.from_ack),
        ("create sent -> running", &s.from_send),
        ("(the create request alone)", &s.create),
    ] {
        println!("   {name:<34} {:>9.2} {:>9.2} {:>9.2}", ms(l.p50), ms(l.p99), ms(l.max));
    }
    println!();
}

// ---------------------------------------------------------------------------------------------------------
// 2. Agent memory

/// The agent process at one moment.
struct Footprint {
    rss: u64,
    pss: u64,
    anonymous: u64,
    virtual_size: u64,
    threads: u64,
    fds: usize,
    /// Of the open fds, sockets: the agent's connections to the API server, mostly.
    sockets: usize,
    /// CPU the agent used over [`CPU_WINDOW`], in cores.
    cpu: f64,
}

impl Footprint {
    /// Reads the agent after letting it settle for `settle`, then measures its CPU over [`CPU_WINDOW`].
    async fn of(pid: u32, settle: Duration) -> anyhow::Result<Self> {
        tokio::time::sleep(settle).await;
        let before = (cpu_time(pid)?, Instant::now());
        tokio::time::sleep(CPU_WINDOW).await;
        let cpu = cpu_time(pid)?.saturating_sub(before.0).as_secs_f64() / before.1.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let (mut fds, mut sockets) = (0, 0);
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            fds += 1;
            // An fd closed between listing and reading is simply not counted as a socket.
            if std::fs::read_link(fd?.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:")) {
                sockets += 1;
            }
        }
        Ok(Footprint {
            rss: kb_field(&status, "VmRSS:")? * 1024,
            pss: kb_field(&rollup, "Pss:")? * 1024,
            anonymous: kb_field(&rollup, "Anonymous:")? * 1024,
            virtual_size: kb_field(&status, "VmSize:")? * 1024,
            threads: kb_field(&status, "Threads:")?,
            fds,
            sockets,
            cpu,
        })
    }
}

/// The number after `name` in a `/proc` key-value file (kB for sizes).
fn kb_field(text: &str, name: &str) -> anyhow::Result<u64> {
    let line = text.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
    Ok(line.split_whitespace().nth(1).with_context(|| format!("malformed {name}"))?.parse()?)
}

/// User plus system CPU time of a process from /proc/PID/stat.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; the fields after its closing one do not.
    let fields: Vec<&str> = stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15 (indexes 11 and 12 after the name), in USER_HZ = 100 per second.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// The soft open-files limit of a process (`self` or a pid).
fn nofile(pid: &str) -> anyhow::Result<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no open-files limit")?;
    Ok(line.split_whitespace().nth(3).context("malformed limits")?.to_owned())
}

struct Step {
    wanted: usize,
    running: usize,
    /// Pods started per second while filling this step.
    rate: f64,
    footprint: Footprint,
    not_running: BTreeMap<String, usize>,
}

async fn memory(cluster: &Cluster, pods: &PodWatch, steps: &[usize], idle: u64) -> anyhow::Result<()> {
    let clients = (0..FILL_CLIENTS).map(|_| cluster.client()).collect::<anyhow::Result<Vec<_>>>()?;
    let mut created = pods.seen.lock().unwrap_or_else(|p| p.into_inner()).len();
    for &wanted in steps {
        let from = created;
        if wanted > from {
            let started = (Instant::now(), pods.running());
            // The creators share the names to create: pod i goes to client i % FILL_CLIENTS.
            let tasks: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(c, client)| {
                    let (client, url) = (client.clone(), cluster.pods());
                    tokio::spawn(async move {
                        for i in (from + c..wanted).step_by(FILL_CLIENTS) {
                            create(&client, &url, &ticker_pod(&format!("idle-{i}"))).await?;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            created = wanted;
            let running = pods.wait_count(wanted).await?;
            let rate = (running - started.1) as f64 / started.0.elapsed().as_secs_f64();
            let footprint = Footprint::of(cluster.agent.pid(), SETTLE).await?;
            let step = Step { wanted, running, rate, footprint, not_running: pods.not_running() };
            print_step(&step, idle);
            for path in ["/metrics/resource", "/stats/summary"] {
                print_scrapes(path, &scrapes(cluster, path).await?);
            }
            if step.running < wanted {
                println!("   stopped at {running} running pods\n");
                break;
            }
        }
    }
    Ok(())
}

/// Scrapes timed back to back on the agent's port, and the agent's CPU time over all of them.
struct Scrapes {
    latency: Latency,
    bytes: usize,
    cpu_per_scrape: Duration,
}

const SCRAPES: usize = 50;
/// The scrape interval the cost is reported at.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);

async fn scrapes(cluster: &Cluster, path: &str) -> anyhow::Result<Scrapes> {
    let node: Value = cluster.client.get(format!("{}/api/v1/nodes/{NODE}", cluster.base)).send().await?.json().await?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().context("no kubelet port")?;
    let url = format!("https://127.0.0.1:{port}{path}");
    // The admin token: the agent asks the API server about it once (TokenReview), then from its cache.
    let client = cluster.client()?;
    let get = || async {
        let response = client.get(&url).send().await?.error_for_status()?;
        anyhow::Ok(response.bytes().await?.len())
    };
    let bytes = get().await?;
    let cpu = cpu_time(cluster.agent.pid())?;
    let mut times = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let started = Instant::now();
        get().await?;
        times.push(started.elapsed());
    }
    let cpu_per_scrape = (cpu_time(cluster.agent.pid())? - cpu) / SCRAPES as u32;
    Ok(Scrapes { latency: Latency::of(times), bytes, cpu_per_scrape })
}

fn print_scrapes(path: &str, s: &Scrapes) {
    println!(
        "   GET {path}: p50 {:.1} ms, p99 {:.1} ms ({:.0} KB); agent CPU {:.1} ms per scrape = {:.2}% of a core at one per {} s (target: < 50 ms, < 5%)",
        ms(s.latency.p50),
        ms(s.latency.p99),
        s.bytes as f64 / 1e3,
        ms(s.cpu_per_scrape),
        s.cpu_per_scrape.as_secs_f64() / SCRAPE_INTERVAL.as_secs_f64() * 100.0,
        SCRAPE_INTERVAL.as_secs()
    );
}

fn print_idle(f: &Footprint) {
    println!("agent idle, no pods (load {})", load());
    println!("   target: < 15 MB (k3s agent ~275 MB)");
    println!(
        "   RSS {:.1} MB, PSS {:.1} MB, anon {:.1} MB, virtual {:.0} GB, {} threads, {} open fds ({} sockets), CPU {:.1}% of a core",
        mb(f.rss),
        mb(f.pss),
        mb(f.anonymous),
        f.virtual_size as f64 / (1u64 << 30) as f64,
        f.threads,
        f.fds,
        f.sockets,
        f.cpu * 100.0
    );
    println!();
}

/// `idle` is the agent's RSS with no pods: the per-pod figure is what each pod adds to it.
fn print_step(s: &Step, idle: u64) {
    let f = &s.footprint;
    println!("agent with idle ticker pods (INTERVAL_MS={TICKER_INTERVAL_MS}) (load {})", load());
    println!("   target: < 15 MB + 100 KiB per pod (~113 MB at 1,000); runwasi 16-67 MB per container");
    println!(
        "   {}/{} running, started at {:.0} pods/s: RSS {:.1} MB ({:.0} KiB per pod over idle), PSS {:.1} MB, anon {:.1} MB",
        s.running,
        s.wanted,
        s.rate,
        mb(f.rss),
        f.rss.saturating_sub(idle) as f64 / 1024.0 / s.running.max(1) as f64,
        mb(f.pss),
        mb(f.anonymous),
    );
    println!(
        "   virtual {:.0} GB, {} threads, {} open fds ({} sockets), agent CPU {:.1}% of a core",
        f.virtual_size as f64 / (1u64 << 30) as f64,
        f.threads,
        f.fds,
        f.sockets,
        f.cpu * 100.0
    );
    for (reason, count) in &s.not_running {
        println!("      not running: {count} x {reason}");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------------------
// 3. HTTP

struct HttpRun {
    connections: usize,
    load: HttpLoad,
    /// Agent CPU per request, to see where the cores go.
    agent_cpu: Duration,
}

/// The http-hello pod on its own address, answering: its URL.
async fn http_pod(cluster: &Cluster) -> anyhow::Result<String> {
    let port = free_port()?;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "http-hello", "labels": {"app": "http-hello"}},
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "http-hello",
                "image": HTTP_IMAGE,
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": port}],
                "env": [{"name": "GREETING", "value": "bench"}],
            }],
        },
    });
    cluster.create(&pod).await?;
    // The pod serves on its own address (the node's with `--pod-network host`).
    let mut ip = None;
    while ip.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pod: Value = cluster.client.get(format!("{}/http-hello", cluster.pods())).send().await?.json().await?;
        ip = pod["status"]["podIP"].as_str().map(str::to_owned);
    }
    let url = format!("http://{}:{port}/", ip.unwrap_or_default());
    let probe = reqwest::Client::builder().no_proxy().build()?;
    // The first request compiles the component; later ones reuse it. Only the sample's own answer counts.
    wait_until("http-hello answering", Duration::from_secs(120), || {
        let request = probe.get(&url).timeout(Duration::from_secs(10)).send();
        async move {
            match request.await {
                Ok(response) => response.text().await.is_ok_and(|body| body.contains("hello from skiff")),
                Err(_) => false,
            }
        }
    })
    .await
    .with_context(|| cluster.agent_log())?;
    Ok(url)
}

async fn http(cluster: &Cluster) -> anyhow::Result<(String, Vec<HttpRun>)> {
    let url = http_pod(cluster).await?;
    let generator = HttpGenerator::detect();
    let mut runs = Vec::new();
    for connections in HTTP_CONNECTIONS {
        let before = cpu_time(cluster.agent.pid())?;
        let load = generator.run(&url, connections, HTTP_DURATION, None).await?;
        let requests = (load.rate * HTTP_DURATION.as_secs_f64()).max(1.0);
        let agent_cpu = cpu_time(cluster.agent.pid())?.saturating_sub(before).div_f64(requests);
        runs.push(HttpRun { connections, load, agent_cpu });
    }
    Ok((generator.describe().to_owned(), runs))
}

fn print_http((generator, runs): &(String, Vec<HttpRun>)) {
    println!(
        "wasi:http hello (a fresh instance per request), closed loop over keep-alive connections, {}s each, {generator} (load {})",
        HTTP_DURATION.as_secs(),
        load()
    );
    println!("   target: >= 10,000 req/s with p99 < 5 ms (wasmCloud ~17-23k req/s on 8-16 cores)");
    println!(
        "   {:>11} {:>10} {:>9} {:>9} {:>8} {:>18}",
        "connections", "req/s", "p50 ms", "p99 ms", "errors", "agent CPU us/req"
    );
    for r in runs {
        println!(
            "   {:>11} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>18.1}",
            r.connections,
            r.load.rate,
            ms(r.load.p50),
            ms(r.load.p99),
            r.load.errors,
            r.agent_cpu.as_secs_f64() * 1e6
        );
    }
    println!();
}

const INGRESS_CONNECTIONS: [usize; 3] = [1, 16, 64];

/// The same load straight to the pod and through the Ingress on `port`.
struct IngressRuns {
    generator: &'static str,
    /// (connections, straight to the pod, through the Ingress).
    runs: Vec<(usize, HttpRun, HttpRun)>,
}

async fn ingress(cluster: &Cluster, port: u16) -> anyhow::Result<IngressRuns> {
    let direct = http_pod(cluster).await?;
    let pod_port: u16 = direct.rsplit(':').next().unwrap_or_default().trim_end_matches('/').parse()?;
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "http-hello"},
        "spec": {"selector": {"app": "http-hello"}, "ports": [{"port": 80, "targetPort": pod_port}]},
    });
    create(&cluster.client, &format!("{}/api/v1/namespaces/{NAMESPACE}/services", cluster.base), &service).await?;
    // No host: every request to the node's ingress port goes to the Service, as wrk sends no Host of its own.
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "http-hello"},
        "spec": {"rules": [{"http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "http-hello", "port": {"number": 80}}},
        }]}}]},
    });
    let url = format!("{}/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses", cluster.base);
    create(&cluster.client, &url, &ingress).await?;
    let through = format!("http://127.0.0.1:{port}/");
    let probe = reqwest::Client::builder().no_proxy().build()?;
    wait_until("the ingress answering", Duration::from_secs(60), || {
        let request = probe.get(&through).timeout(Duration::from_secs(10)).send();
        async move {
            match request.await {
                Ok(response) => response.text().await.is_ok_and(|body| body.contains("hello from skiff")),
                Err(_) => false,
            }
        }
    })
    .await
    .with_context(|| cluster.agent_log())?;
    let generator = HttpGenerator::detect();
    let mut runs = Vec::new();
    for connections in INGRESS_CONNECTIONS {
        let measure = async |url: &str| {
            let before = cpu_time(cluster.agent.pid())?;
            let load = generator.run(url, connections, HTTP_DURATION, None).await?;
            let requests = (load.rate * HTTP_DURATION.as_secs_f64()).max(1.0);
            let agent_cpu = cpu_time(cluster.agent.pid())?.saturating_sub(before).div_f64(requests);
            anyhow::Ok(HttpRun { connections, load, agent_cpu })
        };
        let straight = measure(&direct).await?;
        let via = measure(&through).await?;
        runs.push((connections, straight, via));
    }
    Ok(IngressRuns { generator: generator.describe(), runs })
}

fn print_ingress(r: &IngressRuns) {
    println!(
        "Ingress overhead: wasi:http hello straight to the pod vs through the node's Ingress, {}s each, {} (load {})",
        HTTP_DURATION.as_secs(),
        r.generator,
        load()
    );
    println!("   target: through the Ingress at least as fast as the pod's own port");
    println!(
        "   {:>11} {:>22} {:>22} {:>14} {:>14} {:>8}",
        "connections", "pod req/s (p50/p99)", "ingress req/s (p50/p99)", "pod CPU us/req", "ing. CPU us/req", "errors"
    );
    for (connections, pod, via) in &r.runs {
        let cell = |run: &HttpRun| format!("{:.0} ({:.2}/{:.2} ms)", run.load.rate, ms(run.load.p50), ms(run.load.p99));
        println!(
            "   {:>11} {:>22} {:>22} {:>14.1} {:>14.1} {:>8}",
            connections,
            cell(pod),
            cell(via),
            pod.agent_cpu.as_secs_f64() * 1e6,
            via.agent_cpu.as_secs_f64() * 1e6,
            pod.load.errors + via.load.errors
        );
    }
    println!();
}

const COLD_TRIALS: usize = 100;
/// Between a Deployment's pod and endpoint being gone in the API and the next trial.
const COLD_SETTLE: Duration = Duration::from_millis(300);
const COLD_CONTAINER_TRIALS: usize = 20;

/// `trials` wake-ups of a Deployment `name` of `image` (listening on 8080, with `command` if given) at zero
/// behind the ingress on `port`: each request's time to its answer, and how many failed.
async fn cold_starts(
    cluster: &Cluster,
    port: u16,
    name: &str,
    image: &str,
    command: Option<Value>,
    trials: usize,
) -> anyhow::Result<(Latency, usize)> {
    let mut container = json!({
        "name": "web",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 8080}],
    });
    if let Some(command) = command {
        container["command"] = command;
    }
    // A long idle period: only the benchmark puts it back to zero, between trials.
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"skiff.dev/scale-to-zero-after": "1h"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]},
            },
        },
    });
    let apps = format!("{}/apis/apps/v1/namespaces/{NAMESPACE}/deployments", cluster.base);
    create(&cluster.client, &apps, &deployment).await?;
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": {"skiff.dev/scale-from-zero": name}},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    create(&cluster.client, &format!("{}/api/v1/namespaces/{NAMESPACE}/services", cluster.base), &service).await?;
    let host = format!("{name}.bench");
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": name, "port": {"number": 80}}},
        }]}}]},
    });
    create(
        &cluster.client,
        &format!("{}/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses", cluster.base),
        &ingress,
    )
    .await?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build()?;
    let url = format!("http://127.0.0.1:{port}/");
    let pods = format!("{}?labelSelector=app%3D{name}", cluster.pods());
    let scale = format!("{apps}/{name}/scale");
    let slices = format!(
        "{}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}",
        cluster.base
    );
    let (mut times, mut failed) = (Vec::new(), 0);
    // The first wake-up pulls and prepares the image: a warm-up, not a trial.
    for trial in 0..=trials {
        let sent = Instant::now();
        let answered = client.get(&url).header("host", &host).send().await?.status().is_success();
        let took = sent.elapsed();
        if trial > 0 {
            times.push(took);
            failed += usize::from(!answered);
        }
        let zero = json!({"spec": {"replicas": 0}});
        let response = cluster
            .client
            .patch(&scale)
            .header("content-type", "application/merge-patch+json")
            .body(zero.to_string())
            .send()
            .await?;
        ensure!(response.status().is_success(), "cannot scale {name} to zero: {}", response.status());
        // At zero: no pod, and no endpoint left in the Service's slices (which the ingress routes by).
        for (what, url) in [("the woken pod gone", &pods), ("its endpoint gone", &slices)] {
            wait_until(what, Duration::from_secs(60), || {
                let request = cluster.client.get(url).send();
                async move {
                    let Ok(response) = request.await else { return false };
                    let Ok(list) = response.json::<Value>().await else { return false };
                    let empty = |items: &Value| items.as_array().is_none_or(Vec::is_empty);
                    // A pod list is empty; every slice of the Service lists no endpoint.
                    list["items"].as_array().is_some_and(|items| items.iter().all(|i| empty(&i["endpoints"])))
                        && (url.contains("endpointslices") || empty(&list["items"]))
                }
            })
            .await?;
        }
        // The node's ingress routes by its own watch of the slices, a few milliseconds behind the API: a
        // request sent at once could still be sent to the pod just deleted. A real idle period is minutes.
        tokio::time::sleep(COLD_SETTLE).await;
    }
    Ok((Latency::of(times), failed))
}

fn print_cold_starts(what: &str, (latency, failed): &(Latency, usize)) {
    println!("Cold start from zero through the Ingress, {what}: request sent -> 200 (load {})", load());
    if what.starts_with("wasm") {
        println!("   target: p50 < 20 ms, p99 < 50 ms (Knative: seconds)");
    }
    println!(
        "   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   failed {failed}",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max)
    );
    println!();
}

/// Offered requests per second in each step, and `hey`'s workers for it (each sends at most rate/workers).
const BLACK_FRIDAY_STEPS: [(u32, u32); 5] = [(100, 10), (2_000, 50), (10_000, 100), (2_000, 50), (100, 10)];
const BLACK_FRIDAY_STEP: Duration = Duration::from_secs(60);

struct StepRun {
    offered: u32,
    started: Duration,
    served: f64,
    p50: Duration,
    p99: Duration,
    failed: u64,
    replicas: i64,
    /// From the step's start until the ready replicas first reached what they were at its end.
    reached: Option<Duration>,
}

struct BlackFriday {
    steps: Vec<StepRun>,
    /// (seconds since the start, ready replicas).
    replicas: Vec<(f64, i64)>,
}

async fn black_friday(cluster: &Cluster, port: u16) -> anyhow::Result<BlackFriday> {
    let shop = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": HTTP_IMAGE,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }]},
            },
        },
    });
    let base = &cluster.base;
    create(&cluster.client, &format!("{base}/apis/apps/v1/namespaces/{NAMESPACE}/deployments"), &shop).await?;
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    create(&cluster.client, &format!("{base}/api/v1/namespaces/{NAMESPACE}/services"), &service).await?;
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
        "spec": {"rules": [{"host": "shop.bench", "http": {"paths": [{
            "path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": {"number": 80}}},
        }]}}]},
    });
    create(&cluster.client, &format!("{base}/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses"), &ingress)
        .await?;
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "shop"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "http_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "500"},
            }}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
        },
    });
    let hpas = format!("{base}/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers");
    create(&cluster.client, &hpas, &hpa).await?;
    let url = format!("http://127.0.0.1:{port}/");
    let probe = reqwest::Client::builder().no_proxy().build()?;
    wait_until("the shop answering through the ingress", Duration::from_secs(120), || {
        let request = probe.get(&url).header("host", "shop.bench").timeout(Duration::from_secs(10)).send();
        async move { request.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await
    .with_context(|| cluster.agent_log())?;

    // Ready replicas, sampled every second while the load runs.
    let started = Instant::now();
    let deployment = format!("{base}/apis/apps/v1/namespaces/{NAMESPACE}/deployments/shop");
    let (stop, mut stopped) = watch::channel(false);
    let sampler = {
        let (client, deployment) = (cluster.client.clone(), deployment.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Ok(response) = client.get(&deployment).send().await
                    && let Ok(d) = response.json::<Value>().await
                {
                    samples.push((started.elapsed().as_secs_f64(), d["status"]["readyReplicas"].as_i64().unwrap_or(0)));
                }
                tokio::select! {
                    _ = stopped.changed() => return samples,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    };
    let mut steps = Vec::new();
    for (offered, workers) in BLACK_FRIDAY_STEPS {
        let step_start = started.elapsed();
        let url = url.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("hey")
                .args(["-z", &format!("{}s", BLACK_FRIDAY_STEP.as_secs()), "-c", &workers.to_string()])
                .args(["-q", &(offered / workers).to_string(), "-t", "10", "-host", "shop.bench"])
                .arg(&url)
                .output()
        })
        .await??;
        ensure!(output.status.success(), "hey failed: {}", String::from_utf8_lossy(&output.stderr));
        let report = parse_hey(&String::from_utf8_lossy(&output.stdout))?;
        steps.push(StepRun {
            offered,
            started: step_start,
            served: report.served,
            p50: report.p50,
            p99: report.p99,
            failed: report.failed,
            replicas: 0,
            reached: None,
        });
    }
    let _ = stop.send(true);
    let replicas = sampler.await?;
    for step in &mut steps {
        let end = (step.started + BLACK_FRIDAY_STEP).as_secs_f64();
        let within: Vec<&(f64, i64)> =
            replicas.iter().filter(|(t, _)| *t >= step.started.as_secs_f64() && *t < end).collect();
        step.replicas = within.last().map_or(0, |(_, r)| *r);
        step.reached = within
            .iter()
            .find(|(_, r)| *r == step.replicas)
            .map(|(t, _)| Duration::from_secs_f64(t - step.started.as_secs_f64()));
    }
    Ok(BlackFriday { steps, replicas })
}

struct HeyReport {
    served: f64,
    p50: Duration,
    p99: Duration,
    failed: u64,
}

/// `hey`'s summary: requests/s, the latency distribution's 50% and 99%, and every answer that was not a
/// 2xx plus every request that got no answer.
fn parse_hey(text: &str) -> anyhow::Result<HeyReport> {
    let line = |prefix: &str| text.lines().map(str::trim).find(|l| l.starts_with(prefix));
    let served: f64 = line("Requests/sec:")
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("hey printed no rate: {text}"))?;
    let percentile = |p: &str| -> anyhow::Result<Duration> {
        let seconds: f64 = line(&format!("{p}% in"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .with_context(|| format!("hey printed no {p}%: {text}"))?;
        Ok(Duration::from_secs_f64(seconds))
    };
    let mut failed = 0;
    let mut section = "";
    for l in text.lines().map(str::trim) {
        if l.ends_with("distribution:") {
            section = l;
            continue;
        }
        let count = || l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        match section {
            "Status code distribution:" if l.starts_with('[') && !l.starts_with("[2") => failed += count(),
            "Error distribution:" if l.starts_with('[') => {
                failed += l[1..].split(']').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    Ok(HeyReport { served, p50: percentile("50")?, p99: percentile("99")?, failed })
}

fn print_black_friday(run: &BlackFriday) {
    println!(
        "Black Friday: http-hello behind an Ingress, an HPA on http_requests_per_second (500/pod, 1-10), `hey` open loop, {} s steps (load {})",
        BLACK_FRIDAY_STEP.as_secs(),
        load()
    );
    println!("   goal: no failed request; enough replicas soon after each step");
    println!(
        "   {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>16}",
        "offered/s", "served/s", "p50 ms", "p99 ms", "failed", "replicas", "reached after s"
    );
    for s in &run.steps {
        println!(
            "   {:>9} {:>9.0} {:>9.2} {:>9.2} {:>8} {:>9} {:>16}",
            s.offered,
            s.served,
            ms(s.p50),
            ms(s.p99),
            s.failed,
            s.replicas,
            s.reached.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64()))
        );
    }
}

/// Offered and served rate (top) and ready replicas (bottom) over time, as an SVG at `path`.
fn chart_black_friday(run: &BlackFriday, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let end = run.replicas.last().map_or(1.0, |(t, _)| *t).max(1.0);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(300);
    let rate_max = run.steps.iter().map(|s| s.offered as f64).fold(1.0, f64::max) * 1.1;
    let mut rates = ChartBuilder::on(&top)
        .caption("Black Friday: requests/s through the Ingress", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..rate_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    rates.configure_mesh().x_desc("seconds").y_desc("requests/s").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = |value: &dyn Fn(&StepRun) -> f64| -> Vec<(f64, f64)> {
        run.steps
            .iter()
            .flat_map(|s| {
                let from = s.started.as_secs_f64();
                [(from, value(s)), ((from + BLACK_FRIDAY_STEP.as_secs_f64()).min(end), value(s))]
            })
            .collect()
    };
    rates
        .draw_series(LineSeries::new(steps(&|s| s.offered as f64), &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    rates
        .draw_series(LineSeries::new(steps(&|s| s.served), &RED))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("served")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    rates.configure_series_labels().border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let replica_max = run.replicas.iter().map(|(_, r)| *r).max().unwrap_or(1).max(1) as f64 + 1.0;
    let mut replicas = ChartBuilder::on(&bottom)
        .caption("ready replicas", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..replica_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    replicas.configure_mesh().x_desc("seconds").y_desc("replicas").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    replicas
        .draw_series(LineSeries::new(run.replicas.iter().map(|(t, r)| (*t, *r as f64)), &GREEN))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Statistics

// ---------------------------------------------------------------------------------------------------------
// 4. A Deployment of 1,000 replicas

const DEPLOY_REPLICAS: i64 = 1_000;
const IDLE_WINDOW: Duration = Duration::from_secs(30);

async fn deploy(samples: &Path) -> anyhow::Result<()> {
    let cluster = Cluster::start(&[(samples.join("ticker.wasm"), TICKER_IMAGE)], &["--max-pods", "1100"]).await?;
    let pods = PodWatch::start(&cluster).await?;
    cluster.create(&ticker_pod("warm-up")).await?;
    pods.wait_running("warm-up", Duration::from_secs(120)).await?;
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fleet"},
        "spec": {
            "replicas": DEPLOY_REPLICAS,
            "selector": {"matchLabels": {"app": "fleet"}},
            "template": {
                "metadata": {"labels": {"app": "fleet"}},
                "spec": {"containers": [ticker_container()]},
            },
        },
    });
    let url = format!("{}/apis/apps/v1/namespaces/{NAMESPACE}/deployments", cluster.base);
    let started = Instant::now();
    create(&cluster.client, &url, &deployment).await?;
    let mut ready = 0;
    while ready < DEPLOY_REPLICAS && started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status: Value = cluster.client.get(format!("{url}/fleet")).send().await?.error_for_status()?.json().await?;
        ready = status["status"]["readyReplicas"].as_i64().unwrap_or(0);
    }
    let took = started.elapsed();
    println!(
        "Deployment of {DEPLOY_REPLICAS} wasm replicas on one node, create -> status readyReplicas (load {})",
        load()
    );
    println!("   target: all Ready within 10 s of the create");
    println!("   {ready} Ready after {:.1} s", took.as_secs_f64());
    ensure!(ready == DEPLOY_REPLICAS, "not every replica became Ready: {:?}", pods.not_running());

    tokio::time::sleep(SETTLE).await;
    let (server, agent) = (cluster.server.pid(), cluster.agent.pid());
    let before = (cpu_time(server)?, cpu_time(agent)?, Instant::now());
    tokio::time::sleep(IDLE_WINDOW).await;
    let window = before.2.elapsed().as_secs_f64();
    let share = |now: Duration, then: Duration| now.saturating_sub(then).as_secs_f64() / window * 100.0;
    println!("idle with {} pods, CPU over {} s (load {})", DEPLOY_REPLICAS + 1, IDLE_WINDOW.as_secs(), load());
    println!("   target: controller-manager work < 5% of a core");
    println!(
        "   server (API server, scheduler, controllers) {:.1}% of a core, agent {:.1}%",
        share(cpu_time(server)?, before.0),
        share(cpu_time(agent)?, before.1)
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 5. OCI pods

const OCI_PODS: usize = 50;

fn busybox_pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
        },
    })
}

async fn oci() -> anyhow::Result<()> {
    if !harness::is_root() {
        println!("OCI pods: skipped (containers need root)");
        return Ok(());
    }
    let registry = tokio::task::block_in_place(harness::Registry::start)?;
    let image = tokio::task::block_in_place(|| registry.push_busybox("bench/busybox"));
    let cluster = Cluster::start(&[], &[]).await?;
    let pods = PodWatch::start(&cluster).await?;
    let pulled = Instant::now();
    cluster.create(&busybox_pod("oci-warm-up", &image)).await?;
    pods.wait_running("oci-warm-up", Duration::from_secs(120)).await.with_context(|| cluster.agent_log())?;
    println!("OCI warm-up pod running after {:.0} ms (image pulled, layer unpacked once)", ms(pulled.elapsed()));
    let before = Footprint::of(cluster.agent.pid(), SETTLE).await?;
    let mut samples = Vec::new();
    for i in 0..OCI_PODS {
        let name = format!("oci-{i}");
        cluster.create(&busybox_pod(&name, &image)).await?;
        let acked = Instant::now();
        let running = pods.wait_running(&name, Duration::from_secs(60)).await.with_context(|| cluster.agent_log())?;
        samples.push(running.saturating_duration_since(acked));
    }
    let startup = Latency::of(samples);
    let after = Footprint::of(cluster.agent.pid(), SETTLE).await?;
    println!("OCI pod startup: {OCI_PODS} busybox pods created one at a time, until the watch shows them running");
    println!("   target: p50 < 100 ms");
    println!(
        "   create response -> running       p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms (load {})",
        ms(startup.p50),
        ms(startup.p99),
        ms(startup.max),
        load()
    );
    let per_container = after.rss.saturating_sub(before.rss) as f64 / OCI_PODS as f64;
    println!(
        "OCI agent memory: RSS {:.1} MB with 1 container, {:.1} MB with {}",
        mb(before.rss),
        mb(after.rss),
        OCI_PODS + 1
    );
    println!("   target: < 1 MB per idle container beyond its own processes");
    println!(
        "   per container: {:.0} KiB (agent anonymous {:.1} -> {:.1} MB)",
        per_container / 1024.0,
        mb(before.anonymous),
        mb(after.anonymous)
    );
    // The containers outlive the agent by design: delete the pods so nothing is left running.
    let response = cluster.client.delete(cluster.pods()).send().await?;
    ensure!(response.status().is_success(), "deleting the pods answered {}", response.status());
    let oci = cluster.dir.path().join("agent/oci");
    wait_until("the containers removed", Duration::from_secs(120), || {
        let left = ["run", "upper", "work", "trash"]
            .iter()
            .any(|dir| std::fs::read_dir(oci.join(dir)).is_ok_and(|mut entries| entries.next().is_some()));
        async move { !left }
    })
    .await?;
    Ok(())
}
