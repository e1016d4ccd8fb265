//! Running a guest as a tokio task, and how its end becomes an [`Exit`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use skiff_shim::{Container, ContainerSpec, Exit, ExitReason, ShimError};
use tokio::sync::{oneshot, watch};
use wasmtime::{InstancePre, Store, Trap};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::outbound::{Origin, Outbound};
use crate::state::{CpuQuota, Ctl, GuestSpec, GuestUsage, HasCtl, MemoryCap, Metered, P1State, P2State, new_store};
use crate::{Guest, Inner, http};

/// The exit code of a guest that trapped. 134 is 128 + SIGABRT, what a native process that aborts reports:
/// a trap is wasm's abort (Rust's panic=abort and C's abort() both end in `unreachable`).
pub const TRAP_EXIT_CODE: i32 = 134;
/// The exit code of a guest interrupted by `stop()` or over its memory limit: 128 + SIGKILL, as the
/// kubelet shows for a killed container.
pub const STOPPED_EXIT_CODE: i32 = 137;

/// A running wasm container: a tokio task executing the guest (or serving HTTP).
///
/// Dropping it without waiting stops the guest: nothing else could observe or stop it afterwards.
pub struct WasmContainer {
    exit: watch::Receiver<Option<Exit>>,
    stop: watch::Sender<Option<Duration>>,
    usage: Arc<GuestUsage>,
    /// A wasi:http component's server, for requests handed over inside the agent.
    http: Option<Arc<http::InProcess>>,
}

#[async_trait::async_trait]
impl Container for WasmContainer {
    async fn wait(&mut self) -> Exit {
        // `wait_for` only borrows the channel, so a cancelled wait leaves nothing behind.
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or_else(task_failed),
            Err(_) => task_failed(),
        }
    }

    /// WASI has no signals, so a command guest is interrupted at once (at its next epoch tick, ≤ 1 ms of
    /// guest time, or immediately if it waits in a host call) and ends with 137 "stopped". A wasi:http
    /// server stops accepting, lets in-flight requests finish within `grace`, then ends.
    fn stop(&self, grace: Duration) {
        // A later stop may shorten the grace, never lengthen it.
        self.stop.send_if_modified(|current| match current {
            Some(g) if *g <= grace => false,
            _ => {
                *current = Some(grace);
                true
            }
        });
    }

    fn meter(&self) -> Option<Arc<dyn skiff_shim::Meter>> {
        Some(self.usage.clone())
    }

    fn http(&self) -> Option<Arc<dyn skiff_shim::HttpService>> {
        self.http.clone().map(|http| http as Arc<dyn skiff_shim::HttpService>)
    }
}

/// Resolves once `stop()` was called or the container handle was dropped.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not across the caller's awaits.
    let _ = stop.wait_for(Option::is_some).await.is_ok();
}

/// The exit reported if the guest's task vanished without reporting (it panicked).
fn task_failed() -> Exit {
    Exit { code: TRAP_EXIT_CODE, reason: ExitReason::Error, message: Some("the wasm runtime task failed".into()) }
}

pub(crate) fn stopped() -> Exit {
    Exit { code: STOPPED_EXIT_CODE, reason: ExitReason::Error, message: Some("stopped".into()) }
}

pub(crate) fn code_exit(code: i32) -> Exit {
    let reason = if code == 0 { ExitReason::Completed } else { ExitReason::Error };
    Exit { code, reason, message: None }
}

/// How a guest's run (its `_start`, `run` or instantiation) ended.
pub(crate) fn exit_of(ctl: &Ctl, result: wasmtime::Result<i32>) -> Exit {
    if ctl.memory.exceeded {
        return Exit { code: STOPPED_EXIT_CODE, reason: ExitReason::OomKilled, message: Some(ctl.memory.message()) };
    }
    match result {
        Ok(code) => code_exit(code),
        Err(err) => match err.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => code_exit(*code),
            None => Exit { code: TRAP_EXIT_CODE, reason: ExitReason::Error, message: Some(trap_message(&err)) },
        },
    }
}

/// A trap reads `wasm trap: <what>` (wasmtime's own wording, e.g. "wasm trap: integer divide by zero");
/// any other failure of the guest (a host function's error) reads `wasm error: <chain>`.
pub(crate) fn trap_message(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("wasm error: {err:#}"),
    }
}

/// Whether a failed instantiation is the guest's own doing (a trap in its start function, an exit, memory
/// over the limit: the container ran and ended) rather than a setup failure.
fn guest_caused(ctl: &Ctl, err: &wasmtime::Error) -> bool {
    ctl.memory.exceeded || err.is::<Trap>() || err.is::<I32Exit>()
}

pub(crate) async fn start(inner: Arc<Inner>, guest: &Guest, spec: ContainerSpec) -> Result<WasmContainer, ShimError> {
    inner.disk.refuse_writable(&spec.mounts)?;
    let usage = GuestUsage::new(matches!(guest, Guest::Http(_)));
    let guest_spec = Arc::new(GuestSpec {
        // A guest reads argv[0] as its program name; with no command at all it gets the image's reference.
        argv: if spec.argv.is_empty() { vec![spec.image.reference.clone()] } else { spec.argv.clone() },
        env: spec.env.clone(),
        working_dir: spec.working_dir.clone(),
        mounts: spec.mounts.clone(),
        output: spec.output.clone(),
        memory_limit: MemoryCap::new(spec.limits.memory_bytes, inner.default_memory_limit),
        cpu: spec.limits.cpu_millis.map(CpuQuota::new),
        outbound: Arc::new(Outbound::new(
            spec.egress.clone(),
            Origin { netns: spec.netns.clone(), source: spec.host_ip },
            spec.output.clone(),
        )),
        usage: usage.clone(),
    });
    let (exit_tx, exit_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut container = WasmContainer { exit: exit_rx, stop: stop_tx, usage, http: None };
    let (started_tx, started_rx) = oneshot::channel();
    match guest {
        Guest::Module(pre) => {
            let store =
                new_store(&inner.engine, P1State { wasi: guest_spec.wasi()?.build_p1(), ctl: guest_spec.ctl() });
            spawn_guest(inner, store, stop_rx, exit_tx, |store| run_module(store, pre.clone(), started_tx));
        }
        Guest::Command(pre) => {
            let store = new_store(&inner.engine, P2State::new(&guest_spec)?);
            spawn_guest(inner, store, stop_rx, exit_tx, |store| run_command(store, pre.clone(), started_tx));
        }
        Guest::Http(pre) => {
            let port = spec.ports.first().copied().ok_or_else(|| ShimError::Setup {
                message: "a wasi:http component needs a container port to listen on".into(),
                source: None,
            })?;
            let addr = std::net::SocketAddr::new(spec.host_ip, port);
            let listener = match &spec.netns {
                Some(netns) => crate::netns::bind(netns, addr).await,
                None => tokio::net::TcpListener::bind(addr).await,
            };
            let listener = listener.map_err(|e| ShimError::Setup {
                message: format!("cannot listen on {addr}: {e}"),
                source: Some(Box::new(e)),
            })?;
            tracing::info!(container = %spec.name, %addr, netns = ?spec.netns, "wasi:http component listening");
            let server = http::Server::new(inner, pre.clone(), guest_spec, spec.limits.concurrent_requests);
            container.http = Some(Arc::new(http::InProcess { server: server.clone(), port }));
            tokio::spawn(async move {
                let exit = server.serve(listener, stop_rx).await;
                exit_tx.send_replace(Some(exit));
            });
            return Ok(container);
        }
    }
    match started_rx.await {
        Ok(Err(err)) => Err(err),
        // Started, or stopped before it got that far: either way there is a container to wait for.
        Ok(Ok(())) | Err(_) => Ok(container),
    }
}

/// Runs `main` on a task until it ends or the container is stopped (or dropped), then reports the exit.
fn spawn_guest<T, F, Fut>(
    inner: Arc<Inner>,
    mut store: Store<T>,
    mut stop: watch::Receiver<Option<Duration>>,
    exit_tx: watch::Sender<Option<Exit>>,
    main: F,
) where
    T: HasCtl,
    F: FnOnce(Store<T>) -> Fut,
    Fut: Future<Output = Exit> + Send + 'static,
{
    let meter = store.data_mut().ctl().meter.clone();
    let run = Metered::new(meter, main(store));
    tokio::spawn(async move {
        // Keeps the engine's epoch ticking while this guest runs, even after the shim is dropped.
        let _inner = inner;
        let exit = tokio::select! {
            biased;
            // Dropping `run` drops the guest's fiber and store wherever it was: in wasm code (it yields at
            // every epoch tick) or waiting in a host call.
            () = stop_requested(&mut stop) => stopped(),
            exit = run => exit,
        };
        exit_tx.send_replace(Some(exit));
    });
}

async fn run_module(
    mut store: Store<P1State>,
    pre: InstancePre<P1State>,
    started: oneshot::Sender<Result<(), ShimError>>,
) -> Exit {
    let instance = match pre.instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(err) => return instantiation_failed(&store.data().ctl, err, started),
    };
    // `link_module` checked the export exists; its type may still be wrong.
    let entry = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
        Ok(entry) => entry,
        Err(err) => {
            let _ = started.send(Err(ShimError::InvalidImage(format!("bad _start function: {err:#}"))));
            return code_exit(1);
        }
    };
    let _ = started.send(Ok(()));
    let result = entry.call_async(&mut store, ()).await.map(|()| 0);
    exit_of(&store.data().ctl, result)
}

async fn run_command(
    mut store: Store<P2State>,
    pre: CommandPre<P2State>,
    started: oneshot::Sender<Result<(), ShimError>>,
) -> Exit {
    let command = match pre.instantiate_async(&mut store).await {
        Ok(command) => command,
        Err(err) => return instantiation_failed(&store.data().ctl, err, started),
    };
    let _ = started.send(Ok(()));
    // wasi:cli/run returns result<_, _> with no detail: an error is exit code 1, as wasmtime's CLI reports.
    let result = command.wasi_cli_run().call_run(&mut store).await.map(|r| if r.is_ok() { 0 } else { 1 });
    exit_of(&store.data().ctl, result)
}

fn instantiation_failed(ctl: &Ctl, err: wasmtime::Error, started: oneshot::Sender<Result<(), ShimError>>) -> Exit {
    if guest_caused(ctl, &err) {
        let _ = started.send(Ok(()));
        return exit_of(ctl, Err(err));
    }
    let message = format!("cannot instantiate the wasm guest: {err:#}");
    let exit = Exit { code: 1, reason: ExitReason::Error, message: Some(message.clone()) };
    let _ = started.send(Err(ShimError::Setup { message, source: Some(err.into()) }));
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;

    impl skiff_shim::OutputSink for Discard {
        fn write(&self, _: skiff_shim::Stream, _: &[u8]) {}
    }

    fn ctl(exceeded: bool) -> Ctl {
        let spec = GuestSpec {
            argv: vec![],
            env: vec![],
            working_dir: None,
            mounts: vec![],
            output: Arc::new(Discard),
            memory_limit: MemoryCap::new(Some(65536), 1 << 20),
            cpu: None,
            outbound: Arc::new(Outbound::new(
                Default::default(),
                Origin { netns: None, source: std::net::Ipv4Addr::UNSPECIFIED.into() },
                Arc::new(Discard),
            )),
            usage: GuestUsage::new(false),
        };
        let mut ctl = spec.ctl();
        ctl.memory.exceeded = exceeded;
        ctl
    }

    #[test]
    fn exits_map_to_kubernetes_reasons() {
        assert_eq!(exit_of(&ctl(false), Ok(0)), Exit { code: 0, reason: ExitReason::Completed, message: None });
        assert_eq!(exit_of(&ctl(false), Ok(1)).reason, ExitReason::Error);
        let exit = exit_of(&ctl(false), Err(I32Exit(3).into()));
        assert_eq!((exit.code, exit.reason), (3, ExitReason::Error));
        assert_eq!(exit_of(&ctl(false), Err(I32Exit(0).into())).reason, ExitReason::Completed);
        let trap = exit_of(&ctl(false), Err(Trap::UnreachableCodeReached.into()));
        assert_eq!(trap.code, TRAP_EXIT_CODE);
        assert_eq!(trap.message.as_deref(), Some("wasm trap: wasm `unreachable` instruction executed"));
        let oom = exit_of(&ctl(true), Err(Trap::UnreachableCodeReached.into()));
        assert_eq!(
            oom,
            Exit {
                code: 137,
                reason: ExitReason::OomKilled,
                message: Some("memory limit of 65536 bytes exceeded".into())
            }
        );
    }
}
