//! What the benchmark targets share: a `skiff server` child with its credentials, child processes killed on
//! drop, readiness polling, reading a watch, free loopback ports, latency percentiles, the machine's load, a
//! closed-loop HTTP load generator, and running clients inside a network namespace.
// Every bench target compiles this module and uses a part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use serde_json::Value;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} not ready after {timeout:?}")
}

/// A child process killed (and reaped) on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Latency { p50: at(0.50), p99: at(0.99), max: at(1.0) }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A process's memory: its resident set, and the anonymous part of it (heap and stacks, as opposed to the
/// binary's pages), in bytes.
pub struct Memory {
    pub rss: u64,
    pub anonymous: u64,
}

/// Reads `pid`'s [`Memory`] from /proc.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let kb = |file: &str, name: &str| -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
        let line = text.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in {file}"))?;
        Ok(line.split_whitespace().nth(1).with_context(|| format!("malformed {name}"))?.parse::<u64>()? * 1024)
    };
    Ok(Memory { rss: kb("status", "VmRSS:")?, anonymous: kb("smaps_rollup", "Anonymous:")? })
}

/// The 1-minute load average: other work on the machine shows here and skews every figure.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// A `skiff server` child process and what a client needs to reach it.
pub struct Server {
    pub child: Guard,
    pub base: String,
    pub ca: reqwest::Certificate,
    pub token: String,
}

impl Server {
    /// Starts `skiff server` on a free loopback port with `--store store` and data dir `data`, logging to
    /// `log` at `rust_log`, and waits until it answers /readyz.
    pub async fn start(data: &Path, store: &str, rust_log: &str, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(data, store, rust_log, log, &[]).await
    }

    /// As [`start`](Self::start), with `args` added to the server's command line.
    pub async fn start_with(
        data: &Path,
        store: &str,
        rust_log: &str,
        log: &Path,
        args: &[&OsStr],
    ) -> anyhow::Result<Self> {
        Self::start_listening(Ipv4Addr::LOCALHOST.into(), data, store, rust_log, log, args).await
    }

    /// As [`start_with`](Self::start_with), listening on `ip` (a test network's bridge address, which agents
    /// in network namespaces of their own reach) instead of loopback.
    pub async fn start_listening(
        ip: IpAddr,
        data: &Path,
        store: &str,
        rust_log: &str,
        log: &Path,
        args: &[&OsStr],
    ) -> anyhow::Result<Self> {
        let listen = std::net::SocketAddr::new(ip, free_port()?).to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--listen", &listen, "--store", store, "--data-dir"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("cannot start skiff server")?;
        let child = Guard(child);
        let log_tail = || std::fs::read_to_string(log).unwrap_or_default();
        wait_until("skiff credentials", Duration::from_secs(30), || {
            let ready = ["admin-token", "ca.crt", "node-token"].iter().all(|f| data.join(f).exists());
            async move { ready }
        })
        .await
        .with_context(log_tail)?;
        // The files may exist a moment before their contents are written; a short pause avoids a torn read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(data.join("ca.crt"))?)?;
        let token = std::fs::read_to_string(data.join("admin-token"))?.trim().to_owned();
        let server = Server { child, base: format!("https://{listen}"), ca, token };
        let probe = server.client()?;
        wait_until("skiff /readyz", Duration::from_secs(30), || {
            let request = probe.get(format!("{}/readyz", server.base)).timeout(Duration::from_secs(2)).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .with_context(log_tail)?;
        Ok(server)
    }

    /// A client with its own connection pool, like a separate controller or kubectl process.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", self.token).parse()?);
        Ok(reqwest::Client::builder().add_root_certificate(self.ca.clone()).default_headers(headers).build()?)
    }

    /// A client authenticating with a client certificate (`identity_pem`: certificate and key) instead of
    /// the admin token.
    pub fn client_as(&self, identity_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
        let identity = reqwest::Identity::from_pem(identity_pem)?;
        Ok(reqwest::Client::builder().add_root_certificate(self.ca.clone()).identity(identity).build()?)
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// Reads a watch response's newline-delimited events, handing `each` every event's object with the time its
/// chunk arrived, until `each` breaks. The watch ending first, or an ERROR event, is an error.
pub async fn read_watch(
    response: reqwest::Response,
    mut each: impl FnMut(&Value, Instant) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<()> {
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let arrived = Instant::now();
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)?;
            ensure!(event["type"] != "ERROR", "watch error: {}", event["object"]);
            if each(&event["object"], arrived)?.is_break() {
                return Ok(());
            }
        }
    }
    bail!("the watch ended")
}

/// Waits until the Node `name` reports Ready.
pub async fn wait_node_ready(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<()> {
    let node = format!("{base}/api/v1/nodes/{name}");
    wait_until("node Ready", Duration::from_secs(30), || {
        let request = client.get(&node).send();
        async move {
            let Ok(response) = request.await else { return false };
            let Ok(node) = response.json::<Value>().await else { return false };
            node["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        }
    })
    .await
}

/// Runs `task` on a runtime of its own whose threads all live in the network namespace `netns` (a namespace
/// file, such as a pod's): every socket it opens is the namespace's, as a process of that pod's would be.
///
/// A thread joins the namespace with `setns`, and threads inherit the namespace of the thread that makes
/// them, so the runtime built on that thread has its workers inside; this process's other threads never
/// change namespace.
pub async fn in_netns<F, Fut, T>(netns: &Path, task: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let namespace = std::fs::File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("bench-netns".into()).spawn(move || {
        let run = || -> anyhow::Result<T> {
            // SAFETY: setns only reads the descriptor, which `namespace` keeps open for the call.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot join the network namespace");
            }
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(task())
        };
        let _ = tx.send(run());
    })?;
    rx.await.context("the namespace's thread ended without a result")?
}

/// What one closed-loop HTTP run measured.
#[derive(Clone, Copy, Debug)]
pub struct HttpLoad {
    /// Requests answered per second.
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Answers with an error status.
    pub errors: u64,
}

/// A closed-loop HTTP load generator over keep-alive connections: each connection sends its next request
/// when the last is answered.
#[derive(Clone, Copy, Debug)]
pub enum HttpGenerator {
    /// Debian's `wrk` with one thread, so the generator takes at most one of the cores.
    Wrk,
    /// reqwest clients in this process, one task and connection each.
    Reqwest,
}

impl HttpGenerator {
    /// `wrk` when installed, else reqwest.
    pub fn detect() -> Self {
        if Command::new("wrk").arg("--version").output().is_ok() { HttpGenerator::Wrk } else { HttpGenerator::Reqwest }
    }

    pub fn describe(self) -> &'static str {
        match self {
            HttpGenerator::Wrk => "wrk (1 thread)",
            HttpGenerator::Reqwest => "reqwest clients in the bench process",
        }
    }

    /// `connections` connections to `url` for `duration` (whole seconds, as wrk takes them), from the network
    /// namespace `netns` (a namespace file) if given, else from this process's.
    pub async fn run(
        self,
        url: &str,
        connections: usize,
        duration: Duration,
        netns: Option<&Path>,
    ) -> anyhow::Result<HttpLoad> {
        match (self, netns) {
            (HttpGenerator::Wrk, _) => run_wrk(url, connections, duration, netns),
            (HttpGenerator::Reqwest, None) => run_reqwest(url.to_owned(), connections, duration).await,
            (HttpGenerator::Reqwest, Some(netns)) => {
                let url = url.to_owned();
                in_netns(netns, move || run_reqwest(url, connections, duration)).await
            }
        }
    }
}

/// One `wrk` run, entered into `netns` by `nsenter` if given.
fn run_wrk(url: &str, connections: usize, duration: Duration, netns: Option<&Path>) -> anyhow::Result<HttpLoad> {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={}", netns.display())).arg("wrk");
            command
        }
        None => Command::new("wrk"),
    };
    let output = command
        .args(["-t1", "-c", &connections.to_string(), "-d", &format!("{}s", duration.as_secs()), "--latency"])
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let field = |prefix: &str| -> anyhow::Result<&str> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("wrk printed no {prefix}: {text}"))?;
        line.split_whitespace().nth(prefix.split_whitespace().count()).context("malformed wrk output")
    };
    let errors = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(Ok(0), |n| n.trim().parse())?;
    Ok(HttpLoad {
        rate: field("Requests/sec:")?.parse()?,
        p50: wrk_duration(field("50%")?)?,
        p99: wrk_duration(field("99%")?)?,
        errors,
    })
}

/// wrk's durations: `123.45us`, `1.23ms`, `1.02s`, `2.00m`.
fn wrk_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {text}"))?;
    let value: f64 = text[..split].parse()?;
    let seconds = match &text[split..] {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        unit => bail!("unknown wrk unit {unit}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// The fallback generator: `connections` tasks, each one keep-alive connection, each sending its next
/// request when the last is answered.
async fn run_reqwest(url: String, connections: usize, duration: Duration) -> anyhow::Result<HttpLoad> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(1).build()?;
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = client.get(&url).send().await?;
                    let ok = response.status().is_success();
                    response.bytes().await?;
                    latencies.push(sent.elapsed());
                    errors += u64::from(!ok);
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
    let latency = Latency::of(latencies);
    Ok(HttpLoad { rate, p50: latency.p50, p99: latency.p99, errors })
}

/// POSTs `object` to `url` (a collection) and fails unless it was created.
pub async fn create(client: &reqwest::Client, url: &str, object: &Value) -> anyhow::Result<()> {
    let response = client.post(url).json(object).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status == reqwest::StatusCode::CREATED,
        "create answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// The last 20 lines of the log at `path`, for a failure's context.
pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
