//! What lives in a guest's `Store`: its WASI context, its memory limit, its CPU meter; and how a store is set
//! up (limiter, epoch callback).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_shim::{Meter, Mount, OutputSink, ShimError, Stream, Usage};
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outbound::{Outbound, OutboundHooks};

/// The CPU accounting period, the CFS default (`cpu.cfs_period_us` = 100000): a container with `cpu: 100m`
/// may run 10 ms of each 100 ms.
pub(crate) const CPU_PERIOD: Duration = Duration::from_millis(100);

/// What every store of one container is made from.
pub(crate) struct GuestSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub output: Arc<dyn OutputSink>,
    pub memory_limit: MemoryCap,
    /// Shared by all stores of the container (the instances of a wasi:http server), like a cgroup's quota.
    pub cpu: Option<Arc<CpuQuota>>,
    /// Where the container's outgoing HTTP may go.
    pub outbound: Arc<Outbound>,
    /// What all stores of the container use, for the node's metrics.
    pub usage: Arc<GuestUsage>,
}

impl GuestSpec {
    /// A WASI context with exactly what the spec grants. wasmtime-wasi's defaults are the secure ones and
    /// are kept: stdin closed (reads see EOF), no inherited environment or arguments, no host directories
    /// but the mounts, sockets denied for every address but the pod's nameservers, no name lookups. Clocks
    /// and randomness are the host's.
    pub(crate) fn wasi(&self) -> Result<WasiCtxBuilder, ShimError> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.argv).envs(&self.env);
        b.stdout(SinkStream { sink: self.output.clone(), stream: Stream::Stdout });
        b.stderr(SinkStream { sink: self.output.clone(), stream: Stream::Stderr });
        if let Some(dir) = &self.working_dir {
            b.initial_cwd(dir);
        }
        // A guest may ask its pod's nameservers itself, over UDP (a resolver library, dig), and nothing else
        // over wasi:sockets: an unbound socket, datagrams to and from those addresses' port 53.
        let nameservers = self.outbound.guest_nameservers().clone();
        if !nameservers.is_empty() {
            b.allow_udp(true);
            b.socket_addr_check(move |addr, reason| {
                let allowed = match reason {
                    SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => nameservers.contains(&addr),
                    _ => false,
                };
                Box::pin(std::future::ready(allowed))
            });
        }
        for m in &self.mounts {
            let perms = if m.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            b.preopened_dir(&m.host_path, &m.container_path, perms).map_err(|e| ShimError::Setup {
                message: format!("cannot mount {} at {}: {e:#}", m.host_path.display(), m.container_path),
                source: Some(e.into()),
            })?;
        }
        Ok(b)
    }

    pub(crate) fn ctl(&self) -> Ctl {
        self.usage.instances.fetch_add(1, Ordering::Relaxed);
        Ctl {
            memory: MemoryLimit::new(self.memory_limit, self.usage.clone()),
            meter: Arc::new(TaskMeter::new(self.cpu.clone(), self.usage.clone())),
        }
    }
}

/// The shim's own part of a store's data.
pub(crate) struct Ctl {
    pub memory: MemoryLimit,
    pub meter: Arc<TaskMeter>,
}

/// A store's data is dropped with the store: its instance is gone.
impl Drop for Ctl {
    fn drop(&mut self) {
        self.meter.usage.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a container's guests use of the node, summed over its stores (one for a command, one per request
/// for a wasi:http server), as a cgroup sums its processes: the time their tasks ran, their memories and
/// tables, the instances alive and the requests served.
pub(crate) struct GuestUsage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
    instances: AtomicU64,
    /// Counted for a wasi:http server only.
    requests: Option<AtomicU64>,
}

impl GuestUsage {
    pub(crate) fn new(serves_http: bool) -> Arc<Self> {
        Arc::new(GuestUsage {
            cpu_nanos: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            requests: serves_http.then(|| AtomicU64::new(0)),
        })
    }

    pub(crate) fn count_request(&self) {
        if let Some(requests) = &self.requests {
            requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Meter for GuestUsage {
    fn usage(&self) -> Usage {
        Usage {
            cpu_nanos: self.cpu_nanos.load(Ordering::Relaxed),
            memory_working_set_bytes: self.memory_bytes.load(Ordering::Relaxed),
            http_requests: self.requests.as_ref().map(|r| r.load(Ordering::Relaxed)),
            instances: Some(self.instances.load(Ordering::Relaxed)),
        }
    }
}

pub(crate) trait HasCtl: Send + 'static {
    fn ctl(&mut self) -> &mut Ctl;
}

/// A store with the memory limiter and the epoch callback installed.
pub(crate) fn new_store<T: HasCtl>(engine: &Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|data| &mut data.ctl().memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let yield_until = cx.data_mut().ctl().meter.charge(Instant::now());
        // Every tick yields to the runtime so guests share worker threads fairly (and a dropped future
        // stops the guest). tokio's yield_now lets timers and IO run before the guest resumes.
        Ok(match yield_until {
            Some(until) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep_until(until.into()))),
            None => UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())),
        })
    });
    store
}

/// What a guest's memories may hold in all: its container's `limits.memory`, else the node's default.
/// Never unbounded: a guest's memory is the agent's, and one guest growing without end would take the
/// agent and every other guest with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryCap {
    pub bytes: u64,
    /// Set by the node for a container without `limits.memory`.
    pub node_default: bool,
}

impl MemoryCap {
    pub(crate) fn new(limit: Option<u64>, node_default: u64) -> Self {
        MemoryCap { bytes: limit.unwrap_or(node_default), node_default: limit.is_none() }
    }
}

/// What one table element holds in the host: a pointer.
const TABLE_ELEMENT_BYTES: u64 = 8;

/// The [`MemoryCap`] over all linear memories and tables of a store. Growing past it traps (`memory.grow` does not
/// return -1): Kubernetes' answer to a container over its limit is OOMKilled, and most guests would abort
/// on a failed allocation anyway.
pub(crate) struct MemoryLimit {
    cap: MemoryCap,
    used: u64,
    pub exceeded: bool,
    /// Where the store's memory is counted with its container's other stores'.
    usage: Arc<GuestUsage>,
}

impl MemoryLimit {
    fn new(cap: MemoryCap, usage: Arc<GuestUsage>) -> Self {
        MemoryLimit { cap, used: 0, exceeded: false, usage }
    }

    pub(crate) fn message(&self) -> String {
        let MemoryCap { bytes, node_default } = self.cap;
        if node_default {
            format!(
                "memory limit of {bytes} bytes exceeded (the node's default for wasm containers without limits.memory)"
            )
        } else {
            format!("memory limit of {bytes} bytes exceeded")
        }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let total = self.used.saturating_add(grow);
        if total > self.cap.bytes {
            self.exceeded = true;
            return Err(wasmtime::format_err!("{}", self.message()));
        }
        self.used = total;
        self.usage.memory_bytes.fetch_add(grow, Ordering::Relaxed);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not map the memory although the limit allowed it: the same outcome for the pod.
        self.exceeded = true;
        Err(wasmtime::format_err!("the host could not allocate more guest memory"))
    }

    /// Tables live in the agent's memory too (a slot per element): without this, `table.grow` would hold
    /// gigabytes the memory limit never saw.
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| (elements as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        self.memory_growing(bytes(current) as usize, bytes(desired) as usize, maximum.map(|m| bytes(m) as usize))
    }
}

/// The store's memories and tables go with it.
impl Drop for MemoryLimit {
    fn drop(&mut self) {
        self.usage.memory_bytes.fetch_sub(self.used, Ordering::Relaxed);
    }
}

/// `limits.cpu` as a CFS-style quota: the guest time allowed per [`CPU_PERIOD`].
pub(crate) struct CpuQuota {
    quota: Duration,
    period: Mutex<Period>,
}

struct Period {
    start: Instant,
    used: Duration,
}

impl CpuQuota {
    pub(crate) fn new(millicores: u64) -> Arc<Self> {
        let quota = CPU_PERIOD.saturating_mul(u32::try_from(millicores).unwrap_or(u32::MAX)) / 1000;
        // A zero quota would never let the guest run; 1 ms is the smallest slice the epoch can measure.
        let quota = quota.max(Duration::from_millis(1));
        Arc::new(CpuQuota { quota, period: Mutex::new(Period { start: Instant::now(), used: Duration::ZERO }) })
    }

    /// Adds `ran` to the current period; returns when the period ends if the quota is used up.
    fn charge(&self, ran: Duration, now: Instant) -> Option<Instant> {
        let mut p = lock(&self.period);
        if now >= p.start + CPU_PERIOD {
            // A new period. Overshoot of the last one (up to a tick) is carried over so the average holds;
            // after an idle gap there is nothing to carry.
            let carried =
                if now < p.start + 2 * CPU_PERIOD { p.used.saturating_sub(self.quota) } else { Duration::ZERO };
            p.start = now;
            p.used = carried.min(self.quota);
        }
        p.used += ran;
        (p.used >= self.quota).then_some(p.start + CPU_PERIOD)
    }
}

/// One task's CPU meter: its container's usage and quota. The guest is charged the wall time it spends
/// inside polls of its task (guest code and synchronous host work), never the time it waits: a poll runs on
/// one thread from start to end, so this is the thread's time (plus any preemption by the host OS, which
/// makes the quota err on the strict side). The epoch callback charges mid-poll so a busy loop is caught.
pub(crate) struct TaskMeter {
    quota: Option<Arc<CpuQuota>>,
    usage: Arc<GuestUsage>,
    charged_until: Mutex<Instant>,
}

impl TaskMeter {
    fn new(quota: Option<Arc<CpuQuota>>, usage: Arc<GuestUsage>) -> Self {
        TaskMeter { quota, usage, charged_until: Mutex::new(Instant::now()) }
    }

    fn resume(&self, now: Instant) {
        *lock(&self.charged_until) = now;
    }

    fn charge(&self, now: Instant) -> Option<Instant> {
        let ran = {
            let mut since = lock(&self.charged_until);
            let ran = now.saturating_duration_since(*since);
            *since = now;
            ran
        };
        let nanos = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        self.usage.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.quota.as_ref()?.charge(ran, now)
    }
}

/// The lock holds plain numbers that are valid after any panic, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wraps a guest's task so the CPU meter sees when its polls start and end.
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    meter: Arc<TaskMeter>,
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(meter: Arc<TaskMeter>, inner: F) -> Self {
        Metered { inner: Box::pin(inner), meter }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.meter.resume(Instant::now());
        let result = self.inner.as_mut().poll(cx);
        // Over-quota is acted on at the next epoch tick, where the guest can be parked.
        let _ = self.meter.charge(Instant::now());
        result
    }
}

/// A guest's stdout or stderr, written straight into the node's log sink.
#[derive(Clone)]
pub(crate) struct SinkStream {
    sink: Arc<dyn OutputSink>,
    stream: Stream,
}

/// The most a guest may write in one call; the sink takes any size, this only bounds one copy.
const MAX_WRITE: usize = 64 * 1024;

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_WRITE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for SinkStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The store data of a core (wasip1) module.
pub(crate) struct P1State {
    pub wasi: WasiP1Ctx,
    pub ctl: Ctl,
}

impl HasCtl for P1State {
    fn ctl(&mut self) -> &mut Ctl {
        &mut self.ctl
    }
}

/// The store data of a component (wasi:cli/run or wasi:http/incoming-handler).
pub(crate) struct P2State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub hooks: OutboundHooks,
    pub ctl: Ctl,
}

impl P2State {
    pub(crate) fn new(spec: &GuestSpec) -> Result<Self, ShimError> {
        Ok(P2State {
            wasi: spec.wasi()?.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks(spec.outbound.clone()),
            ctl: spec.ctl(),
        })
    }
}

impl HasCtl for P2State {
    fn ctl(&mut self) -> &mut Ctl {
        &mut self.ctl
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_counts_all_memories_and_flags_the_excess() {
        let usage = GuestUsage::new(false);
        let mut m = MemoryLimit::new(MemoryCap::new(Some(4 * 65536), 65536), usage.clone());
        assert!(m.memory_growing(0, 2 * 65536, None).unwrap());
        assert!(m.memory_growing(0, 2 * 65536, None).unwrap());
        assert!(!m.exceeded);
        let err = m.memory_growing(2 * 65536, 3 * 65536, None).unwrap_err();
        assert_eq!(err.to_string(), "memory limit of 262144 bytes exceeded");
        assert!(m.exceeded);
        assert_eq!(usage.usage().memory_working_set_bytes, 4 * 65536, "what was granted is counted");
        drop(m);
        assert_eq!(usage.usage().memory_working_set_bytes, 0, "a dropped store's memory is gone");
        let mut tables = MemoryLimit::new(MemoryCap::new(Some(65536), 65536), usage.clone());
        assert!(tables.table_growing(0, 4096, None).unwrap(), "32 KiB of table elements fit");
        assert!(tables.table_growing(4096, 100_000, None).is_err(), "800 KiB do not");
        assert!(tables.exceeded);
        let mut defaulted = MemoryLimit::new(MemoryCap::new(None, 65536), usage);
        let err = defaulted.memory_growing(0, usize::MAX, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory limit of 65536 bytes exceeded (the node's default for wasm containers without limits.memory)"
        );
    }

    #[test]
    fn quota_throttles_until_the_period_ends_and_carries_overshoot() {
        let q = CpuQuota::new(100);
        assert_eq!(q.quota, Duration::from_millis(10));
        let start = lock(&q.period).start;
        assert_eq!(q.charge(Duration::from_millis(6), start + Duration::from_millis(6)), None);
        let until = q.charge(Duration::from_millis(6), start + Duration::from_millis(12));
        assert_eq!(until, Some(start + CPU_PERIOD));
        // The next period starts with the 2 ms overshoot already used.
        let next = start + CPU_PERIOD + Duration::from_millis(1);
        assert_eq!(q.charge(Duration::from_millis(7), next), None);
        assert!(q.charge(Duration::from_millis(1), next).is_some());
        // After a long idle gap nothing is carried.
        let later = next + 5 * CPU_PERIOD;
        assert_eq!(q.charge(Duration::from_millis(9), later), None);
    }

    #[test]
    fn a_meter_counts_every_poll_and_the_instances_alive() {
        let usage = GuestUsage::new(true);
        let meter = Arc::new(TaskMeter::new(None, usage.clone()));
        let start = Instant::now();
        meter.resume(start);
        assert_eq!(meter.charge(start + Duration::from_millis(3)), None, "no quota, never throttled");
        meter.resume(start + Duration::from_millis(10));
        let _ = meter.charge(start + Duration::from_millis(12));
        usage.count_request();
        let seen = usage.usage();
        assert_eq!(seen.cpu_nanos, 5_000_000, "the time between polls is not counted");
        assert_eq!((seen.http_requests, seen.instances), (Some(1), Some(0)));
        assert_eq!(GuestUsage::new(false).usage().http_requests, None);
    }

    #[test]
    fn quota_is_never_zero() {
        assert_eq!(CpuQuota::new(0).quota, Duration::from_millis(1));
        assert_eq!(CpuQuota::new(2000).quota, Duration::from_millis(200));
    }
}
