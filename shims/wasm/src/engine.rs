//! The node's one wasmtime [`Engine`] and the thread that ticks its epoch.

use std::sync::mpsc;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::WasmError;

/// How often the engine epoch advances. Every running guest reaches a yield point at each tick, so this is
/// the granularity of three things: how long a busy guest can hold a runtime worker thread before other
/// tasks get a turn, how quickly `stop()` interrupts a guest stuck in a loop, and how precisely a CPU quota
/// is enforced (a 100m quota is 10 ms per 100 ms period, so 1 ms keeps the error near 10%). The cost is one
/// callback and a task yield per running guest per tick, a few microseconds per millisecond.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Core instances a component may take: a wasip2 component built by Rust is its main module, the wasip1
/// adapter and a few shim modules (4-6); a generous bound keeps odd toolchains working.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Linear memories per component: the main one plus the adapter's (and some slack).
const MEMORIES_PER_COMPONENT: u32 = 4;
/// Tables per component: the main one, the adapter's and the indirect-call shims'.
const TABLES_PER_COMPONENT: u32 = 8;

/// Which instance allocator the engine ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots for instances, memories, tables and stacks: fast instantiation (a few µs).
    Pooling,
    /// mmap per instance: used when the host's address space could not hold the pool.
    OnDemand,
}

pub(crate) fn build(max_instances: u32) -> Result<(Engine, Allocator), WasmError> {
    match Engine::new(&config(Some(pooling(max_instances)))) {
        Ok(engine) => {
            tracing::info!(max_instances, "wasm engine uses the pooling allocator");
            Ok((engine, Allocator::Pooling))
        }
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "pooling allocator unavailable, wasm engine allocates on demand");
            let engine = Engine::new(&config(None)).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
            Ok((engine, Allocator::OnDemand))
        }
    }
}

fn config(pooling: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    // Async support is always on in wasmtime 48 (`Config::async_support` is a no-op): guests run as fibers
    // polled by tokio tasks, so a host call that waits parks the fiber, not a thread.
    config.epoch_interruption(true);
    config.strategy(wasmtime::Strategy::Cranelift);
    config.parallel_compilation(true);
    config.wasm_component_model(true);
    if let Some(pooling) = pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// Sizes the pool for `max_instances` live guests, each possibly a component made of several core
/// instances. A wasi:http container takes one slot per in-flight request. Each memory slot reserves the
/// default 4 GiB (+ guard) of address space so bounds checks stay elided; 2 × 1000 slots is ~8 TiB of the
/// 128 TiB x86-64 user address space, which is why creation can fail and falls back to on-demand.
fn pooling(max_instances: u32) -> PoolingAllocationConfig {
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT / 2))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        // Reusing a slot zeroes this much with memset instead of madvise: an HTTP guest takes a slot per
        // request, and each madvise costs TLB-shootdown interrupts across the agent's threads. Small enough
        // that slots of idle pods keep little extra resident.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .async_stack_keep_resident(KEEP_RESIDENT);
    pool
}

/// Bytes of a reused pool slot's memory, table and stack that are zeroed in place rather than released.
const KEEP_RESIDENT: usize = 64 * 1024;

/// Advances the engine epoch every [`EPOCH_TICK`] on its own OS thread (a tokio timer would stall exactly
/// when a runtime thread is busy in a guest, which is when the tick matters). Dropping the ticker ends the
/// thread within one tick; it is not joined, so dropping never blocks the async caller.
pub(crate) struct Ticker {
    _stop: mpsc::Sender<()>,
}

impl Ticker {
    pub(crate) fn start(engine: Engine) -> Result<Self, WasmError> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .map_err(WasmError::Ticker)?;
        Ok(Ticker { _stop: stop })
    }
}
