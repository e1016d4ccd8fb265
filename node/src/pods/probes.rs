//! Liveness, readiness and startup probes (httpGet and tcpSocket) with the kubelet's timing rules. Exec
//! probes need a process to exec into, which a wasm guest is not; they are reported and ignored.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;

/// What probing decided, reported to the container's supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ready(bool),
    /// The container failed its liveness or startup probe: kill it (the restart policy decides the rest).
    Restart(String),
}

/// Runs `container`'s probes until `cancel`, sending verdicts on `tx`.
pub async fn run(
    container: Container,
    host: IpAddr,
    tx: tokio::sync::mpsc::Sender<Verdict>,
    cancel: CancellationToken,
) {
    if let Some(startup) = &container.startup_probe {
        match until_threshold(startup, host, &container, &cancel).await {
            Some(true) => {}
            Some(false) => {
                let _ = tx.send(Verdict::Restart("Startup probe failed".into())).await;
                return;
            }
            None => return,
        }
    }
    if container.readiness_probe.is_none() {
        let _ = tx.send(Verdict::Ready(true)).await;
    }
    let mut readiness = container.readiness_probe.clone().map(|p| Prober::new(p, true));
    let mut liveness = container.liveness_probe.clone().map(|p| Prober::new(p, false));
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let elapsed = started.elapsed();
        if let Some(prober) = readiness.as_mut()
            && let Some(change) = prober.step(elapsed, host, &container).await
        {
            let _ = tx.send(Verdict::Ready(change)).await;
        }
        if let Some(prober) = liveness.as_mut()
            && prober.step(elapsed, host, &container).await == Some(false)
        {
            let _ = tx.send(Verdict::Restart(format!("Liveness probe failed: {}", prober.last_error))).await;
            return;
        }
    }
}

/// Runs a startup probe until it succeeds (Some(true)), fails its threshold (Some(false)) or is cancelled.
async fn until_threshold(
    probe: &Probe,
    host: IpAddr,
    container: &Container,
    cancel: &CancellationToken,
) -> Option<bool> {
    let mut prober = Prober::new(probe.clone(), false);
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if let Some(result) = prober.step(started.elapsed(), host, container).await {
            return Some(result);
        }
    }
}

struct Prober {
    probe: Probe,
    next_at: Duration,
    successes: i32,
    failures: i32,
    /// The last reported result (readiness reports changes only).
    reported: Option<bool>,
    reports_changes: bool,
    last_error: String,
}

impl Prober {
    fn new(probe: Probe, reports_changes: bool) -> Self {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        Self {
            probe,
            next_at: delay,
            successes: 0,
            failures: 0,
            reported: None,
            reports_changes,
            last_error: String::new(),
        }
    }

    /// Probes if due; returns a result when a threshold is crossed.
    async fn step(&mut self, elapsed: Duration, host: IpAddr, container: &Container) -> Option<bool> {
        if elapsed < self.next_at {
            return None;
        }
        let period = Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        self.next_at = elapsed + period;
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        match tokio::time::timeout(timeout, check(&self.probe, host, container)).await {
            Ok(Ok(())) => {
                self.successes += 1;
                self.failures = 0;
            }
            Ok(Err(e)) => {
                self.last_error = e;
                self.failures += 1;
                self.successes = 0;
            }
            Err(_) => {
                self.last_error = format!("timeout after {}s", timeout.as_secs());
                self.failures += 1;
                self.successes = 0;
            }
        }
        let result = if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
            Some(true)
        } else if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
            Some(false)
        } else {
            None
        }?;
        if self.reports_changes && self.reported == Some(result) {
            return None;
        }
        self.reported = Some(result);
        Some(result)
    }
}

async fn check(probe: &Probe, host: IpAddr, container: &Container) -> Result<(), String> {
    if let Some(get) = &probe.http_get {
        let port = port(&get.port, container)?;
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let stream = tokio::net::TcpStream::connect(SocketAddr::new(host, port)).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = http::Request::get(path).header(http::header::HOST, format!("{host}:{port}"));
        for header in get.http_headers.as_deref().unwrap_or_default() {
            request = request.header(header.name.as_str(), header.value.as_str());
        }
        let request = request.body(Empty::<bytes::Bytes>::new()).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(&tcp.port, container)?;
        tokio::net::TcpStream::connect(SocketAddr::new(host, port)).await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    // Exec (and gRPC) probes cannot run against a wasm guest; treat them as passing rather than killing it.
    Ok(())
}

fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name}")),
    }
}
