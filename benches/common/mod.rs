//! What the benchmark targets share: a `skiff server` child with its credentials, child processes killed on
//! drop, readiness polling, reading a watch, free loopback ports, latency percentiles, and the machine's load.
// Every bench target compiles this module and uses a part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::future::Future;
use std::net::TcpListener;
use std::ops::ControlFlow;
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
        let listen = format!("127.0.0.1:{}", free_port()?);
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
