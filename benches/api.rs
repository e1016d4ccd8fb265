//! `cargo bench --bench api`: Skiff's API server against its peers, in one run on one machine, loopback only.
//!
//! 1. Durable creates: 16 clients (one connection each) create 10,000 ConfigMaps through the HTTPS API, on
//!    the embedded store and on etcd; the peer baseline is 16 etcd clients doing raw puts of the same bytes.
//! 2. Watch latency: one watcher, one writer doing sequential creates and merge patches; for every event,
//!    the time from the writer's response to the watcher reading the event line. Same for etcd's own watch.
//! 3. Memory and disk: RSS of an idle `skiff server`, then RSS and store size while one object is updated
//!    100,000 times (compaction must keep both flat).
//! 4. Authorization: on one embedded server holding 100 Roles and 1,000 RoleBindings, the durable creates
//!    of (1) as the admin (system:masters) and as a user RBAC allows, side by side; and the time of one
//!    authorization decision (Node authorizer, then RBAC) from the same policy in memory, p50 and p99.
//! 5. Encryption at rest: the durable creates of (1), of Secrets, on three embedded servers side by side
//!    whose EncryptionConfiguration stores Secrets with identity, aesgcm and secretbox; each rate also as a
//!    share of identity's (the target: aesgcm within 15%).
//!
//! The create table also shows the CPU the server side and the clients spend per write (from /proc): the
//! clients run on the same cores, so together they bound the rate. `SKIFF_BENCH_ONLY` and
//! `SKIFF_BENCH_CLIENTS` (see [`Settings`]) run parts and experiments. Every child process (skiff, etcd) is
//! killed when its guard drops, so an error leaves nothing behind. Results: README.md, Performance.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use common::{Guard, Latency, Server, free_port, load, mb, ms, read_watch, wait_until};

/// Concurrent clients for the create benchmark (the figure).
const CREATE_CLIENTS: usize = 16;
/// ConfigMaps created per backend.
const CREATES: usize = 10_000;
/// Bytes of `data` in every ConfigMap.
const PAYLOAD_BYTES: usize = 256;
/// Secrets created per encryption provider.
const SECRET_CREATES: usize = 2_000;
/// Bytes of `data` in every Secret: about 1 KiB, a multiple of 3 so its base64 is "xxx"'s repeated.
const SECRET_BYTES: usize = 1_023;
/// Writes (half creates, half patches) whose watch events are timed.
const WATCH_EVENTS: usize = 2_000;
/// Updates of the one object in the memory/disk run, measured every quarter.
const CHURN_UPDATES: usize = 100_000;
const CHURN_STEPS: usize = 4;
/// A few concurrent patchers on the same object: they contend on its revision, which is the point.
const CHURN_CLIENTS: usize = 4;
/// How long the freshly started server idles before its RSS is read.
const IDLE: Duration = Duration::from_secs(5);
const NAMESPACE: &str = "default";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no filters, so arguments are ignored.
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

/// Knobs for experiments; the defaults are the published figures.
struct Settings {
    /// `SKIFF_BENCH_ONLY=creates,watch,memory,rbac,encryption` runs a subset; `experiments` (not run by
    /// default) splits the create cost into store, namespace check and HTTP.
    sections: Vec<String>,
    /// `SKIFF_BENCH_CLIENTS=N` changes the create concurrency, to see whether it is latency or CPU bound.
    create_clients: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let sections = std::env::var("SKIFF_BENCH_ONLY")
            .unwrap_or_else(|_| "creates,watch,memory,rbac,encryption".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let create_clients = match std::env::var("SKIFF_BENCH_CLIENTS") {
            Ok(n) => n.parse().context("SKIFF_BENCH_CLIENTS")?,
            Err(_) => CREATE_CLIENTS,
        };
        ensure!(create_clients > 0, "SKIFF_BENCH_CLIENTS must be positive");
        Ok(Settings { sections, create_clients })
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("skiff API benchmarks ({cores} cores; skiff, etcd and the clients share them; load {})\n", load());
    // Memory first, on a server nothing else has touched.
    if settings.runs("memory") {
        let skiff = Skiff::start("embedded").await?;
        let churn = memory_and_disk(&skiff).await?;
        print_churn(&churn);
    }
    if settings.runs("rbac") {
        let creates = rbac_creates(settings.create_clients).await?;
        print_creates(&creates, settings.create_clients);
        print_decisions(&decisions());
    }
    if settings.runs("encryption") {
        print_secret_creates(&secret_creates(settings.create_clients).await?, settings.create_clients);
    }
    if !settings.runs("creates") && !settings.runs("watch") && !settings.runs("experiments") {
        return Ok(());
    }
    let etcd_for_skiff = Etcd::start().await?;
    let etcd_raw = Etcd::start().await?;
    let embedded = Skiff::start("embedded").await?;
    let on_etcd = Skiff::start(&format!("etcd://{}", etcd_for_skiff.endpoint)).await?;
    if settings.runs("creates") {
        let clients = settings.create_clients;
        let creates = [
            ("skiff + embedded", skiff_creates(&embedded, &[embedded.pid()], clients).await?),
            ("skiff + etcd", skiff_creates(&on_etcd, &[on_etcd.pid(), etcd_for_skiff.pid()], clients).await?),
            ("raw etcd puts", etcd_puts(&etcd_raw, clients).await?),
        ];
        print_creates(&creates, clients);
    }
    if settings.runs("experiments") {
        let clients = settings.create_clients;
        let creates = [
            ("embedded store direct", store_creates(clients).await?),
            ("embedded, cluster-scoped", skiff_cluster_creates(&embedded, &[embedded.pid()], clients).await?),
            (
                "etcd, cluster-scoped",
                skiff_cluster_creates(&on_etcd, &[on_etcd.pid(), etcd_for_skiff.pid()], clients).await?,
            ),
        ];
        println!(
            "experiments: the store without HTTP (in this process); RuntimeClasses, which skip the namespace read"
        );
        print_creates(&creates, clients);
    }
    if settings.runs("watch") {
        let watches = [
            ("skiff + embedded", skiff_watch(&embedded).await?),
            ("skiff + etcd", skiff_watch(&on_etcd).await?),
            ("raw etcd watch", etcd_watch(&etcd_raw.endpoint).await?),
        ];
        print_watches(&watches);
    }
    Ok(())
}

fn print_creates(creates: &[(&str, Throughput)], clients: usize) {
    println!("durable creates: {CREATES} objects, {clients} clients, {PAYLOAD_BYTES}-byte data (load {})", load());
    println!("   target: >= 5,000/s, p99 < 50 ms");
    print_throughputs(creates);
    println!();
}

/// The first run is identity's, which the others are compared with.
fn print_secret_creates(creates: &[(&str, Throughput)], clients: usize) {
    println!(
        "Secret creates encrypted at rest (embedded store): {SECRET_CREATES} Secrets, {clients} clients, \
         {SECRET_BYTES}-byte data (load {})",
        load()
    );
    println!("   target: aesgcm within 15% of identity");
    print_throughputs(creates);
    let identity = creates[0].1.rate;
    for (name, r) in &creates[1..] {
        println!("   {name}: {:.0}% of identity's creates/s", 100.0 * r.rate / identity);
    }
    println!();
}

fn print_throughputs(creates: &[(&str, Throughput)]) {
    println!(
        "   {:<24} {:>10} {:>9} {:>9} {:>9} {:>16} {:>16}",
        "", "creates/s", "p50 ms", "p99 ms", "max ms", "server CPU us/op", "client CPU us/op"
    );
    for (name, r) in creates {
        println!(
            "   {name:<24} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>16} {:>16}",
            r.rate,
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
            r.server_cpu.as_micros(),
            r.client_cpu.as_micros()
        );
    }
}

fn print_watches(watches: &[(&str, WatchLatency)]) {
    println!(
        "watch latency: write acknowledged -> event read by the watcher, {WATCH_EVENTS} sequential writes (load {})",
        load()
    );
    println!("   target: p99 < 5 ms");
    println!("   {:<24} {:>9} {:>9} {:>9} {:>12} {:>10}", "", "p50 ms", "p99 ms", "max ms", "before ack", "writes/s");
    for (name, r) in watches {
        println!(
            "   {name:<24} {:>9.3} {:>9.3} {:>9.3} {:>12} {:>10.0}",
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
            format!("{}/{}", r.early, r.events),
            r.write_rate
        );
    }
    println!();
}

fn print_churn(churn: &Churn) {
    println!("skiff + embedded memory and disk (target: idle RSS < 40 MB; flat under churn) (load {})", load());
    println!("   idle RSS after {}s: {:.1} MB", IDLE.as_secs(), mb(churn.idle_rss));
    println!(
        "   {CHURN_UPDATES} merge patches of one object by {CHURN_CLIENTS} clients: {:.0} updates/s, {} client retries on 409",
        churn.rate, churn.retries
    );
    println!("   {:>9} {:>9} {:>12} {:>14}", "updates", "RSS MB", "store du MB", "store size MB");
    for s in &churn.samples {
        println!("   {:>9} {:>9.1} {:>12.1} {:>14.1}", s.updates, mb(s.rss), mb(s.disk_used), mb(s.disk_size));
    }
    println!();
}

// ---------------------------------------------------------------------------------------------------------
// Processes

/// Debian's etcd 3.4 with its defaults (fsync on every commit), a private data dir and free loopback ports.
struct Etcd {
    child: Guard,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg(format!("--listen-client-urls=http://{endpoint}"))
            .arg(format!("--advertise-client-urls=http://{endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start etcd (Debian package etcd-server)")?;
        let etcd = Etcd { child: Guard(child), endpoint, _dir: dir };
        let url = format!("http://{}", etcd.endpoint);
        wait_until("etcd", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                match etcd_client::Client::connect([url], None).await {
                    Ok(mut c) => c.get("\0", None).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await?;
        Ok(etcd)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    async fn client(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([format!("http://{endpoint}")], None).await?)
    }
}

/// A `skiff server` with its own data dir; `store` is its `--store` argument.
struct Skiff {
    server: Server,
    dir: tempfile::TempDir,
}

impl Skiff {
    async fn start(store: &str) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, store, &[]).await
    }

    /// A server on the embedded store that encrypts Secrets with `provider`, a providers list entry of an
    /// EncryptionConfiguration.
    async fn encrypting(provider: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("encryption.yaml");
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets]\n  providers:\n  - {provider}\n"
        );
        std::fs::write(&config, text)?;
        Self::start_in(dir, "embedded", &[OsStr::new("--encryption-provider-config"), config.as_os_str()]).await
    }

    /// A server with its data dir and log in `dir`, `args` added to its command line.
    async fn start_in(dir: tempfile::TempDir, store: &str, args: &[&OsStr]) -> anyhow::Result<Self> {
        let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
        let server = Server::start_with(&data, store, "info", &log, args).await?;
        Ok(Skiff { server, dir })
    }

    /// A client with its own connection pool: every benchmark client is its own connection, like separate
    /// controllers or kubectl processes.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.server.client()
    }

    fn configmaps(&self) -> String {
        format!("{}/api/v1/namespaces/{NAMESPACE}/configmaps", self.server.base)
    }

    fn secrets(&self) -> String {
        format!("{}/api/v1/namespaces/{NAMESPACE}/secrets", self.server.base)
    }

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("store")
    }
}

// ---------------------------------------------------------------------------------------------------------
// Statistics

// ---------------------------------------------------------------------------------------------------------
// 1. Creates

struct Throughput {
    rate: f64,
    latency: Latency,
    /// CPU used per write by the server side (skiff, etcd or both) and by this process's clients: on two
    /// shared cores, their sum bounds the rate.
    server_cpu: Duration,
    client_cpu: Duration,
}

/// Measures the CPU the server processes and this process spend from `start` to `per_op`.
struct CpuMeter {
    servers: Vec<u32>,
    start_servers: Duration,
    start_self: Duration,
}

impl CpuMeter {
    fn start(servers: &[u32]) -> anyhow::Result<Self> {
        Ok(CpuMeter { servers: servers.to_vec(), start_servers: cpu_of(servers)?, start_self: cpu_time("self")? })
    }

    /// Server and client CPU per op since `start`.
    fn per_op(&self, ops: usize) -> anyhow::Result<(Duration, Duration)> {
        let ops = u32::try_from(ops.max(1))?;
        let servers = cpu_of(&self.servers)?.saturating_sub(self.start_servers);
        let client = cpu_time("self")?.saturating_sub(self.start_self);
        Ok((servers / ops, client / ops))
    }
}

/// Joins the client tasks of a create run (each returns its latencies) into its throughput figures.
async fn throughput(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
    started: Instant,
    meter: &CpuMeter,
) -> anyhow::Result<Throughput> {
    let mut latencies = Vec::with_capacity(CREATES);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let (server_cpu, client_cpu) = meter.per_op(latencies.len())?;
    Ok(Throughput {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        latency: Latency::of(latencies),
        server_cpu,
        client_cpu,
    })
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|pid| cpu_time(&pid.to_string())).sum()
}

/// User plus system CPU time of a process (`self` or a pid) from /proc/PID/stat.
fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; the fields after its closing one do not.
    let fields: Vec<&str> = stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15; after the name, the state (field 3) is index 0. They count in
    // USER_HZ, which the kernel ABI fixes at 100 per second.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"payload": "x".repeat(PAYLOAD_BYTES)},
    })
}

async fn skiff_creates(skiff: &Skiff, servers: &[u32], clients: usize) -> anyhow::Result<Throughput> {
    let clients = (0..clients).map(|_| skiff.client()).collect::<anyhow::Result<Vec<_>>>()?;
    http_creates(clients, servers, skiff.configmaps(), configmap, CREATES).await
}

/// A cluster-scoped object of the same size: its create reads no namespace first.
fn runtime_class(name: &str) -> Value {
    json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name, "annotations": {"payload": "x".repeat(PAYLOAD_BYTES)}},
        "handler": "wasm",
    })
}

async fn skiff_cluster_creates(skiff: &Skiff, servers: &[u32], clients: usize) -> anyhow::Result<Throughput> {
    let url = format!("{}/apis/node.k8s.io/v1/runtimeclasses", skiff.server.base);
    let clients = (0..clients).map(|_| skiff.client()).collect::<anyhow::Result<Vec<_>>>()?;
    http_creates(clients, servers, url, runtime_class, CREATES).await
}

/// `count` creates of `object`s at `url`, spread over `clients` (one connection each).
async fn http_creates(
    clients: Vec<reqwest::Client>,
    servers: &[u32],
    url: String,
    object: fn(&str) -> Value,
    count: usize,
) -> anyhow::Result<Throughput> {
    // Open every connection (TLS handshake, HTTP/2 settings) before the clock starts.
    for client in &clients {
        client.get(&url).query(&[("limit", "1")]).send().await?.error_for_status()?;
    }
    let per_client = count / clients.len();
    let meter = CpuMeter::start(servers)?;
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let body = object(&format!("create-{c}-{i}"));
                    let sent = Instant::now();
                    let response = client.post(&url).json(&body).send().await?;
                    let status = response.status();
                    response.bytes().await?;
                    latencies.push(sent.elapsed());
                    ensure!(status == reqwest::StatusCode::CREATED, "create answered {status}");
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    throughput(tasks, started, &meter).await
}

// ---------------------------------------------------------------------------------------------------------
// 4. Authorization

/// Roles and RoleBindings in the cluster during the authorization runs (the figures).
const ROLES: usize = 100;
const ROLE_BINDINGS: usize = 1_000;
/// The user the non-admin run creates as, and its group.
const USER: &str = "bench-user";
const GROUP: &str = "bench-group";

/// A role allowing one verb set on one resource: `index` picks which, so the roles differ.
fn bench_role(namespace: &str, index: usize, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": format!("role-{index}"), "namespace": namespace},
        "rules": rules,
    })
}

fn bench_binding(namespace: &str, index: usize, role: &str, subject: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": format!("binding-{index}"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [subject],
    })
}

/// The bench's policy: `ROLES` Roles and `ROLE_BINDINGS` RoleBindings in `namespace`, all but one binding
/// for other users and groups (so a decision finds the user's among many), and the one that lets `USER`
/// (through `GROUP`) create ConfigMaps there.
fn policy(namespace: &str) -> (Vec<Value>, Vec<Value>) {
    const RESOURCES: [&str; 5] = ["pods", "services", "secrets", "endpoints", "events"];
    let roles = (0..ROLES)
        .map(|i| {
            let rules = if i == 0 {
                json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list"]}])
            } else {
                json!([{"apiGroups": [""], "resources": [RESOURCES[i % RESOURCES.len()]], "verbs": ["get", "list"]}])
            };
            bench_role(namespace, i, rules)
        })
        .collect();
    let bindings = (0..ROLE_BINDINGS)
        .map(|i| {
            let subject = match i {
                0 => json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": GROUP}),
                i if i % 2 == 0 => {
                    json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")})
                }
                i => json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("group-{i}")}),
            };
            bench_binding(namespace, i, &format!("role-{}", (i * 7) % ROLES), subject)
        })
        .collect();
    (roles, bindings)
}

/// Durable creates as the admin and as `USER` on one server holding the bench's policy, each into a
/// namespace of its own so both start from the same state.
async fn rbac_creates(clients: usize) -> anyhow::Result<[(&'static str, Throughput); 2]> {
    let skiff = Skiff::start("embedded").await?;
    let admin = skiff.client()?;
    let base = &skiff.server.base;
    for namespace in ["rbac-admin", "rbac-user"] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        admin.post(format!("{base}/api/v1/namespaces")).json(&body).send().await?.error_for_status()?;
    }
    let (roles, bindings) = policy("rbac-user");
    let rbac = format!("{base}/apis/rbac.authorization.k8s.io/v1/namespaces/rbac-user");
    for role in roles {
        admin.post(format!("{rbac}/roles")).json(&role).send().await?.error_for_status()?;
    }
    for binding in bindings {
        admin.post(format!("{rbac}/rolebindings")).json(&binding).send().await?.error_for_status()?;
    }
    let data = skiff.dir.path().join("data");
    let (cert, key) = skiff_apiserver::pki::client_certificate(&data, USER, Some(GROUP), 1)?;
    let identity = format!("{cert}{key}");
    let url = |namespace: &str| format!("{base}/api/v1/namespaces/{namespace}/configmaps");
    let admins = (0..clients).map(|_| skiff.client()).collect::<anyhow::Result<Vec<_>>>()?;
    let admin_run = http_creates(admins, &[skiff.pid()], url("rbac-admin"), configmap, CREATES).await?;
    let users =
        (0..clients).map(|_| skiff.server.client_as(identity.as_bytes())).collect::<anyhow::Result<Vec<_>>>()?;
    let user_run = http_creates(users, &[skiff.pid()], url("rbac-user"), configmap, CREATES).await?;
    Ok([("admin (system:masters)", admin_run), ("user through RBAC", user_run)])
}

/// The time of one decision by the Node authorizer and then RBAC, as the API server takes it from its
/// caches, over the bench's policy and 1,000 pods on 10 nodes: allowed and refused requests of users,
/// groups and nodes in turn.
fn decisions() -> Latency {
    use k8s_openapi::api::core::v1::Pod;
    use skiff_api::authz::{Attributes, Decision, UserInfo};
    let (roles, bindings) = policy("rbac-user");
    let rbac = skiff_api::rbac::Rbac::new(
        typed(roles),
        skiff_api::rbac::bootstrap::cluster_roles(),
        typed(bindings),
        skiff_api::rbac::bootstrap::cluster_role_bindings(),
    );
    let mut graph = skiff_api::node_authorizer::NodeGraph::default();
    for i in 0..1_000 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("pod-{i}"), "namespace": "rbac-user"},
            "spec": {"nodeName": format!("node-{}", i % 10), "containers": [{"name": "c", "image": "i",
                "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": format!("secret-{i}"), "key": "k"}}}]}]},
        }))
        .expect("pod");
        graph.upsert_pod(&pod);
    }
    let user = |name: &str, groups: &[&str]| UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).chain(["system:authenticated".to_string()]).collect(),
        ..UserInfo::default()
    };
    let request = |user: UserInfo, verb: &str, resource: &str, name: &str| Attributes {
        user,
        verb: verb.into(),
        resource_request: true,
        namespace: "rbac-user".into(),
        api_version: "v1".into(),
        resource: resource.into(),
        name: name.into(),
        ..Attributes::default()
    };
    let requests = [
        request(user(USER, &[GROUP]), "create", "configmaps", ""),
        request(user(USER, &[GROUP]), "delete", "secrets", "x"),
        // binding-2 gives user-2 role-14, which reads events.
        request(user("user-2", &[]), "list", "events", ""),
        request(user("nobody", &["group-3"]), "get", "pods", "p"),
        request(user("system:node:node-3", &["system:nodes"]), "get", "secrets", "secret-3"),
        request(user("system:node:node-3", &["system:nodes"]), "get", "secrets", "secret-4"),
    ];
    let mut samples = Vec::with_capacity(120_000);
    let mut allowed = 0usize;
    for round in 0..20_000 {
        for attributes in &requests {
            let started = Instant::now();
            let mut decision = skiff_api::node_authorizer::authorize(attributes, &graph);
            if decision == Decision::NoOpinion {
                decision = rbac.authorize(attributes);
            }
            let took = started.elapsed();
            if round > 0 {
                samples.push(took);
            }
            allowed += usize::from(std::hint::black_box(decision) == Decision::Allow);
        }
    }
    // Half the requests are allowed (the user's create, user-2's list, node-3's own Secret): a check that
    // the loop measured real decisions.
    assert_eq!(allowed, 20_000 * 3, "the bench's decisions are not the expected ones");
    Latency::of(samples)
}

/// Objects of the bench's policy as their k8s-openapi type.
fn typed<T: k8s_openapi::serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<T> {
    values.into_iter().map(|v| serde_json::from_value(v).expect("the bench's policy is well formed")).collect()
}

fn print_decisions(latency: &Latency) {
    println!(
        "authorization decision (Node authorizer, then RBAC; {ROLES} Roles, {ROLE_BINDINGS} RoleBindings, 1,000 pods)"
    );
    println!("   target: p99 < 20 us");
    println!(
        "   p50 {:.2} us, p99 {:.2} us, max {:.2} us\n",
        latency.p50.as_secs_f64() * 1e6,
        latency.p99.as_secs_f64() * 1e6,
        latency.max.as_secs_f64() * 1e6
    );
}

/// The embedded store in this process, no HTTP: the ceiling the API server's create path works under.
async fn store_creates(clients: usize) -> anyhow::Result<Throughput> {
    use skiff_store::Store;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path())?);
    let value = bytes::Bytes::from(serde_json::to_vec(&configmap("direct-0000-0000"))?);
    let per_client = CREATES / clients;
    let meter = CpuMeter::start(&[])?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (store, value) = (Arc::clone(&store), value.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    store.create(&format!("/registry/configmaps/default/direct-{c}-{i}"), value.clone()).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let result = throughput(tasks, started, &meter).await;
    store.close().await;
    result
}

async fn etcd_puts(etcd: &Etcd, count: usize) -> anyhow::Result<Throughput> {
    let endpoint = etcd.endpoint.as_str();
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = Etcd::client(endpoint).await?;
        client.get("\0", None).await?;
        clients.push(client);
    }
    // The same bytes a client sends skiff, so the two columns store comparable values.
    let value = serde_json::to_vec(&configmap("raw-0000-0000"))?;
    let per_client = CREATES / clients.len();
    let meter = CpuMeter::start(&[etcd.pid()])?;
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let value = value.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    client.put(format!("/bench/raw/{c}-{i}"), value.clone(), None).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    throughput(tasks, started, &meter).await
}

// ---------------------------------------------------------------------------------------------------------
// 2. Watch latency

struct WatchLatency {
    latency: Latency,
    /// Events the watcher read before the writer had its response (counted as zero latency).
    early: usize,
    events: usize,
    /// The writer's sequential rate, for context: one round trip and one commit per write.
    write_rate: f64,
}

/// Matches acknowledgements with receptions by revision. An event read before its write was acknowledged
/// counts as zero: the watcher could not have been faster.
fn match_up(acks: &[(i64, Instant)], seen: &HashMap<i64, Instant>) -> anyhow::Result<(Latency, usize)> {
    let mut latencies = Vec::with_capacity(acks.len());
    let mut early = 0;
    for (revision, acked) in acks {
        let received = seen.get(revision).with_context(|| format!("no watch event for revision {revision}"))?;
        match received.checked_duration_since(*acked) {
            Some(latency) => latencies.push(latency),
            None => {
                early += 1;
                latencies.push(Duration::ZERO);
            }
        }
    }
    Ok((Latency::of(latencies), early))
}

fn resource_version(object: &Value) -> anyhow::Result<i64> {
    let rv = object["metadata"]["resourceVersion"].as_str().context("object without a resourceVersion")?;
    Ok(rv.parse()?)
}

async fn skiff_watch(skiff: &Skiff) -> anyhow::Result<WatchLatency> {
    let writer = skiff.client()?;
    let url = skiff.configmaps();
    let first = writer.post(&url).json(&configmap("watch-start")).send().await?.error_for_status()?;
    let start = resource_version(&first.json().await?)?;

    let watcher = skiff.client()?;
    let response = watcher
        .get(&url)
        .query(&[("watch", "true"), ("resourceVersion", &start.to_string())])
        .send()
        .await?
        .error_for_status()?;
    let reader = tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(WATCH_EVENTS);
        read_watch(response, |object, arrived| {
            seen.insert(resource_version(object)?, arrived);
            Ok(if seen.len() < WATCH_EVENTS { ControlFlow::Continue(()) } else { ControlFlow::Break(()) })
        })
        .await
        .with_context(|| format!("after {} events", seen.len()))?;
        anyhow::Ok(seen)
    });

    let mut acks = Vec::with_capacity(WATCH_EVENTS);
    let started = Instant::now();
    for i in 0..WATCH_EVENTS / 2 {
        let name = format!("watch-{i}");
        let created = writer.post(&url).json(&configmap(&name)).send().await?.error_for_status()?;
        let body = created.bytes().await?;
        acks.push((resource_version(&serde_json::from_slice(&body)?)?, Instant::now()));
        let patched = writer
            .patch(format!("{url}/{name}"))
            .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
            .body(json!({"data": {"n": i.to_string()}}).to_string())
            .send()
            .await?
            .error_for_status()?;
        let body = patched.bytes().await?;
        acks.push((resource_version(&serde_json::from_slice(&body)?)?, Instant::now()));
    }
    let write_rate = acks.len() as f64 / started.elapsed().as_secs_f64();
    let seen = tokio::time::timeout(Duration::from_secs(30), reader).await.context("watch events missing")???;
    let (latency, early) = match_up(&acks, &seen)?;
    Ok(WatchLatency { latency, early, events: acks.len(), write_rate })
}

async fn etcd_watch(endpoint: &str) -> anyhow::Result<WatchLatency> {
    let mut writer = Etcd::client(endpoint).await?;
    let mut watcher = Etcd::client(endpoint).await?;
    let prefix = "/bench/watch/";
    let mut stream = watcher.watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix())).await?;
    // etcd confirms the watch first; writes before that could be missed.
    let created = stream.message().await?.context("watch closed")?;
    ensure!(created.created(), "first watch response is not the creation");
    let reader = tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(WATCH_EVENTS);
        while seen.len() < WATCH_EVENTS {
            let response = stream.message().await?.context("watch closed")?;
            let arrived = Instant::now();
            for event in response.events() {
                let kv = event.kv().context("event without kv")?;
                seen.insert(kv.mod_revision(), arrived);
            }
        }
        anyhow::Ok(seen)
    });
    let value = serde_json::to_vec(&configmap("watch-0000"))?;
    let mut acks = Vec::with_capacity(WATCH_EVENTS);
    let started = Instant::now();
    for i in 0..WATCH_EVENTS {
        let response = writer.put(format!("{prefix}{}", i / 2), value.clone(), None).await?;
        let revision = response.header().context("put without header")?.revision();
        acks.push((revision, Instant::now()));
    }
    let write_rate = acks.len() as f64 / started.elapsed().as_secs_f64();
    let seen = tokio::time::timeout(Duration::from_secs(30), reader).await.context("watch events missing")???;
    let (latency, early) = match_up(&acks, &seen)?;
    Ok(WatchLatency { latency, early, events: acks.len(), write_rate })
}

// ---------------------------------------------------------------------------------------------------------
// 3. Memory and disk

struct Sample {
    updates: usize,
    rss: u64,
    disk_used: u64,
    disk_size: u64,
}

struct Churn {
    idle_rss: u64,
    rate: f64,
    retries: u64,
    samples: Vec<Sample>,
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kb * 1024)
}

/// Blocks allocated (what `du` shows) and apparent size of every file under `dir`.
fn disk_usage(dir: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut used, mut size) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (u, s) = disk_usage(&entry.path())?;
            used += u;
            size += s;
        } else {
            used += meta.blocks() * 512;
            size += meta.len();
        }
    }
    Ok((used, size))
}

fn sample(skiff: &Skiff, updates: usize) -> anyhow::Result<Sample> {
    let (disk_used, disk_size) = disk_usage(&skiff.store_dir())?;
    Ok(Sample { updates, rss: rss(skiff.pid())?, disk_used, disk_size })
}

async fn memory_and_disk(skiff: &Skiff) -> anyhow::Result<Churn> {
    tokio::time::sleep(IDLE).await;
    let idle_rss = rss(skiff.pid())?;

    let name = "churn";
    let url = format!("{}/{name}", skiff.configmaps());
    let clients = (0..CHURN_CLIENTS).map(|_| skiff.client()).collect::<anyhow::Result<Vec<_>>>()?;
    clients[0].post(skiff.configmaps()).json(&configmap(name)).send().await?.error_for_status()?;
    let mut samples = vec![sample(skiff, 0)?];
    let retries = Arc::new(AtomicU64::new(0));
    let per_step = CHURN_UPDATES / CHURN_STEPS / CHURN_CLIENTS;
    let started = Instant::now();
    for step in 0..CHURN_STEPS {
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let (client, url, retries) = (client.clone(), url.clone(), Arc::clone(&retries));
                tokio::spawn(async move {
                    for i in 0..per_step {
                        // Unique per client and step, so no patch is a no-op the server would skip.
                        let patch = json!({"data": {"n": format!("{step}-{c}-{i}")}}).to_string();
                        loop {
                            let response = client
                                .patch(&url)
                                .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
                                .body(patch.clone())
                                .send()
                                .await?;
                            let status = response.status();
                            response.bytes().await?;
                            if status == reqwest::StatusCode::CONFLICT {
                                retries.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            ensure!(status.is_success(), "patch answered {status}");
                            break;
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        samples.push(sample(skiff, (step + 1) * per_step * CHURN_CLIENTS)?);
    }
    let rate = CHURN_UPDATES as f64 / started.elapsed().as_secs_f64();
    Ok(Churn { idle_rss, rate, retries: retries.load(Ordering::Relaxed), samples })
}

// ---------------------------------------------------------------------------------------------------------
// 5. Encryption at rest

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        // "eHh4" is the base64 of "xxx".
        "data": {"payload": "eHh4".repeat(SECRET_BYTES / 3)},
    })
}

/// Secret creates on three servers started side by side, Secrets stored by identity, aesgcm and secretbox
/// (256-bit keys both), in that order.
async fn secret_creates(clients: usize) -> anyhow::Result<Vec<(&'static str, Throughput)>> {
    // Fixed keys: the bench measures the ciphers, nothing it stores is secret.
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let keys = format!("keys:\n      - name: bench\n        secret: {KEY}");
    let servers = [
        ("identity", Skiff::encrypting("identity: {}").await?),
        ("aesgcm", Skiff::encrypting(&format!("aesgcm:\n      {keys}")).await?),
        ("secretbox", Skiff::encrypting(&format!("secretbox:\n      {keys}")).await?),
    ];
    let mut runs = Vec::with_capacity(servers.len());
    for (name, skiff) in &servers {
        let connections = (0..clients).map(|_| skiff.client()).collect::<anyhow::Result<Vec<_>>>()?;
        runs.push((*name, http_creates(connections, &[skiff.pid()], skiff.secrets(), secret, SECRET_CREATES).await?));
    }
    // The figures compare providers only if each server stored what its configuration says.
    let plaintext = "eHh4".repeat(8);
    for (name, skiff) in &servers {
        let mut stored = Vec::new();
        read_tree(&skiff.store_dir(), &mut stored)?;
        let found = stored.windows(plaintext.len()).any(|w| w == plaintext.as_bytes());
        ensure!(found == (*name == "identity"), "{name}: Secrets' data in the store in the clear: {found}");
    }
    Ok(runs)
}

/// The bytes of every file under `dir`.
fn read_tree(dir: &Path, bytes: &mut Vec<u8>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_tree(&path, bytes)?;
        } else {
            bytes.extend(std::fs::read(&path)?);
        }
    }
    Ok(())
}
