//! One task per pod: prepares volumes, runs init containers in order, then supervises each container
//! (pull, start, wait, restart with back-off, probes), writes the pod's status on every change, on eviction
//! kills the containers and fails the pod, and on deletion stops the containers within the grace period and
//! removes the pod.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use skiff_shim::{Exit, Shim};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission;
use super::events::Kind;
use super::spec::{self, ConfigError};
use super::status::{ContainerState, Ending, PodState, State, Terminated};
use super::volumes::Volumes;
use super::{Context, PodRef};
use crate::images::{ImageError, PullPolicy, RegistryAuth};
use crate::logs::ContainerLog;
use crate::network::{Need, PodAddress};

/// The shim whose containers run inside the agent: a pod of those alone needs no network namespace.
const IN_PROCESS_SHIM: &str = "wasm";

/// A running pod worker.
pub struct Worker {
    pod: watch::Sender<Pod>,
    /// The eviction message, once the pod is to be evicted.
    evict: watch::Sender<Option<String>>,
    /// Cancelled when the worker must end without touching the API (the pod is gone, the agent stops).
    abandon: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub fn spawn(ctx: Arc<Context>, pod: Pod) -> Self {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let (tx, rx) = watch::channel(pod);
        let (evict, evictions) = watch::channel(None);
        let abandon = CancellationToken::new();
        let span = tracing::info_span!("pod", pod = %name);
        let task = tokio::spawn(run(ctx, rx, evictions, abandon.clone()).instrument(span));
        Self { pod: tx, evict, abandon, task }
    }

    /// Hands the worker the newest version of its pod.
    pub fn update(&self, pod: Pod) {
        self.pod.send_replace(pod);
    }

    /// The newest version of the pod.
    pub fn pod(&self) -> watch::Ref<'_, Pod> {
        self.pod.borrow()
    }

    /// Evicts the pod with the kubelet's `message`: its containers are killed at once and it fails with
    /// reason Evicted. Only the first eviction counts.
    pub fn evict(&self, message: String) {
        self.evict.send_if_modified(|evicted| {
            if evicted.is_some() {
                return false;
            }
            *evicted = Some(message);
            true
        });
    }

    /// Stops the worker's containers at once and waits for it to end.
    pub async fn abandon(self) {
        self.abandon.cancel();
        let _ = self.task.await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Whether the pod still holds a place on the node: not yet Succeeded or Failed.
    pub fn is_active(&self) -> bool {
        let pod = self.pod.borrow();
        !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    }
}

/// Shared between a pod's worker, its supervisors and its status writer.
struct Shared {
    ctx: Arc<Context>,
    state: Mutex<PodState>,
    changed: Notify,
    pod: watch::Receiver<Pod>,
    /// The pod's identity, which never changes.
    who: PodRef,
    /// Set once the pod's network is up, before its first container starts.
    sandbox: OnceLock<Sandbox>,
    /// When this worker first saw the pod; cleared once its start is measured (or when it was running
    /// before the agent started, so that an adopted pod is not measured).
    seen: Mutex<Option<Instant>>,
}

/// What all containers of a pod share: the network, and the `/etc/hosts` and `/etc/resolv.conf` files
/// made for it.
struct Sandbox {
    address: PodAddress,
    files: Vec<skiff_shim::Mount>,
    /// What the pod's resolv.conf says, for the shims that resolve names for their guests.
    resolver: skiff_shim::Resolver,
}

impl Shared {
    fn pod(&self) -> Pod {
        self.pod.borrow().clone()
    }

    /// How long the containers get to stop: none for a pod the node ended, as the kubelet gives none when a
    /// volume outgrows its limit.
    fn grace_period(&self) -> Duration {
        if self.ended() {
            return Duration::ZERO;
        }
        grace_period(&self.pod.borrow())
    }

    /// Whether the node ended the pod (evicted it, or refused it at admission).
    fn ended(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ended.is_some()
    }

    fn update(&self, init: bool, index: usize, change: impl FnOnce(&mut ContainerState)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let list = if init { &mut state.init } else { &mut state.main };
        if let Some(container) = list.get_mut(index) {
            change(container);
        }
        drop(state);
        self.changed.notify_one();
    }

    fn event(&self, container: Option<&str>, kind: Kind, reason: &str, message: &str) {
        self.ctx.events.record(&self.who, container, kind, reason, message);
    }
}

async fn run(
    ctx: Arc<Context>,
    pod_rx: watch::Receiver<Pod>,
    mut evictions: watch::Receiver<Option<String>>,
    abandon: CancellationToken,
) {
    let (shared, spec, finished) = {
        let pod = pod_rx.borrow();
        let shared = Arc::new(Shared {
            state: Mutex::new(initial_state(&pod, &ctx.node_ip.to_string())),
            changed: Notify::new(),
            pod: pod_rx.clone(),
            who: PodRef::of(&pod),
            ctx: ctx.clone(),
            sandbox: OnceLock::new(),
            seen: Mutex::new(
                matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), None | Some("Pending"))
                    .then(Instant::now),
            ),
        });
        // A pod that already ended (before an agent restart) is not run again.
        let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        // Boxed: the spec (1.4 KB inline) passes through two futures that live as long as the pod.
        (shared, Box::new(pod.spec.clone().unwrap_or_default()), finished)
    };
    let stop = CancellationToken::new();
    let runner =
        (!finished).then(|| tokio::spawn(run_containers(shared.clone(), spec, stop.clone()).in_current_span()));
    let mut pod_rx = pod_rx;
    // The worker writes the status itself whenever it changes: one task per pod for that, not two.
    loop {
        if pod_rx.borrow().metadata.deletion_timestamp.is_some() {
            break;
        }
        tokio::select! {
            _ = abandon.cancelled() => {
                stop.cancel();
                if let Some(runner) = runner {
                    let _ = runner.await;
                }
                return;
            }
            // Boxed, as are the other API calls here: this task lives as long as the pod, and inlined
            // request futures would make it kilobytes larger for all that time.
            _ = shared.changed.notified() => Box::pin(flush_status(&shared)).await,
            changed = pod_rx.changed() => if changed.is_err() { return },
            Ok(()) = evictions.changed() => {
                let message = evictions.borrow_and_update().clone();
                if let Some(message) = message {
                    end(&shared, Ending { reason: "Evicted", message }, &stop);
                }
            }
        }
    }
    // Graceful deletion: leave the Services, stop the containers within the grace period, report, then
    // remove the pod.
    tracing::info!("pod deleted: stopping its containers");
    Box::pin(leave_endpoints(&shared)).await;
    stop.cancel();
    if let Some(runner) = runner {
        let _ = runner.await;
    }
    let uid = shared.who.uid.as_str();
    Box::pin(ctx.network.release(uid)).await;
    Box::pin(flush_status(&shared)).await;
    // Nothing of a deleted pod stays on the node: its volumes and logs go before the pod object does, as
    // the kubelet keeps a pod until its volumes are torn down.
    if !uid.is_empty() {
        Box::pin(super::volumes::tear_down(&ctx.pods_dir.join(uid), &abandon)).await;
        if abandon.is_cancelled() {
            return;
        }
    }
    Box::pin(delete_pod(&ctx, &shared.who)).await;
}

/// The node ends a pod, as the kubelet evicts one or refuses it at admission: a Warning event, the pod
/// Failed with the ending's reason and message, its containers killed with no grace period and not
/// restarted (`stop`). A pod that already ended stays as it ended.
fn end(shared: &Shared, ending: Ending, stop: &CancellationToken) {
    {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(state.phase(), "Succeeded" | "Failed") {
            return;
        }
        state.ended = Some(ending.clone());
    }
    tracing::warn!(reason = ending.reason, message = %ending.message, "the node ends the pod");
    shared.event(None, Kind::Warning, ending.reason, &ending.message);
    shared.changed.notify_one();
    stop.cancel();
}

/// How long other nodes' proxies get to stop sending a deleted pod new connections after this node's has:
/// they follow the same watch events, and program them in milliseconds.
const ENDPOINT_PROPAGATION: Duration = Duration::from_millis(500);
/// How often the worker looks whether this node's proxy still sends the pod connections.
const ENDPOINT_POLL: Duration = Duration::from_millis(20);

/// Before its containers get SIGTERM, a deleted pod leaves the Services that send it traffic, so that a
/// rolling update fails no request: the endpoint controller marks it terminating once the deletion is
/// seen, and every node's proxy then stops choosing it for new connections. The worker waits until this
/// node's proxy has seen that, plus [`ENDPOINT_PROPAGATION`] for the other nodes', within half the grace
/// period (the rest is the containers'). A pod no Service sends traffic to stops at once.
async fn leave_endpoints(shared: &Shared) {
    let Some(ip) = shared.sandbox.get().map(|sandbox| sandbox.address.ip.to_string()) else { return };
    let is_endpoint = || {
        let services = shared.ctx.services.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        services.is_ready_endpoint(&ip)
    };
    let deadline = tokio::time::Instant::now() + shared.grace_period() / 2;
    if shared.grace_period().is_zero() || !is_endpoint() {
        return;
    }
    while is_endpoint() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(ENDPOINT_POLL).await;
    }
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + ENDPOINT_PROPAGATION)).await;
    tracing::debug!(%ip, "the pod left its Services' endpoints");
}

/// The state a worker starts from. After an agent restart the pod's reported restart counts carry on, and a
/// container that was running when the agent died is adopted, or else counts as restarted.
fn initial_state(pod: &Pod, host_ip: &str) -> PodState {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let carry = |containers: &[Container], statuses: &[k8s_openapi::api::core::v1::ContainerStatus]| {
        containers
            .iter()
            .map(|c| {
                let mut state = ContainerState::new(&c.name, c.image.as_deref().unwrap_or(""));
                if let Some(old) = statuses.iter().find(|s| s.name == c.name) {
                    // A running one is counted when it cannot be adopted (see `adopt`).
                    let ran = old.state.as_ref().is_some_and(|s| s.terminated.is_some());
                    state.restart_count = old.restart_count + i32::from(ran);
                }
                state
            })
            .collect::<Vec<_>>()
    };
    let init = carry(
        spec.init_containers.as_deref().unwrap_or_default(),
        status.init_container_statuses.as_deref().unwrap_or_default(),
    );
    let main = carry(&spec.containers, status.container_statuses.as_deref().unwrap_or_default());
    let mut state = PodState::new(init, main, host_ip.to_string());
    if let Some(start) = status.start_time {
        state.start_time = skiff_api::format_time(start.0);
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        state.initialized = true;
    }
    state
}

/// Runs the pod's containers; once they have all ended for good (not stopped for the pod's deletion or the
/// agent's), its network goes.
async fn run_containers(shared: Arc<Shared>, spec: Box<k8s_openapi::api::core::v1::PodSpec>, stop: CancellationToken) {
    Box::pin(run_pod(&shared, spec, &stop)).await;
    shared.ctx.memory.release(&shared.who.uid);
    if !stop.is_cancelled() || shared.ended() {
        Box::pin(shared.ctx.network.release(&shared.who.uid)).await;
    }
}

async fn run_pod(shared: &Arc<Shared>, spec: Box<k8s_openapi::api::core::v1::PodSpec>, stop: &CancellationToken) {
    // A copy for preparing the pod, dropped before its containers run: they live long, copies cost.
    let pod = shared.pod();
    let pod_dir = shared.ctx.pods_dir.join(&shared.who.uid);
    let (volumes, projections) = loop {
        // The steps before the containers run are boxed: inlined, each would make this future (kept for the
        // pod's whole life) as large as its largest step.
        let prepared = tokio::select! {
            _ = stop.cancelled() => return,
            prepared = Box::pin(Volumes::prepare(&shared.ctx.client, &pod, &pod_dir)) => prepared,
        };
        match prepared {
            Ok(prepared) => break prepared,
            Err(ConfigError(message)) => {
                for index in 0..spec.containers.len() {
                    shared.update(false, index, |c| {
                        c.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(message.clone()),
                        };
                    });
                }
                shared.event(None, Kind::Warning, "FailedMount", &message);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(shared.ctx.backoff.initial) => continue,
                }
            }
        }
    };
    // The volumes the agent writes follow their sources while the containers run, and no longer: a pod
    // that is done renews no tokens. The follower is awaited, so it writes nothing once the pod's
    // directory may go.
    let following = stop.child_token();
    let follower = (!projections.is_empty()).then(|| {
        let follow = projections.follow(shared.ctx.client.clone(), shared.pod.clone(), following.clone());
        tokio::spawn(follow.instrument(tracing::info_span!("volumes")))
    });
    Box::pin(run_prepared(shared, spec, pod, &pod_dir, Arc::new(volumes), stop)).await;
    following.cancel();
    if let Some(follower) = follower {
        let _ = follower.await;
    }
}

/// Runs the pod once its volumes are ready: the network, then init containers in order, then a supervisor
/// per container.
async fn run_prepared(
    shared: &Arc<Shared>,
    mut spec: Box<k8s_openapi::api::core::v1::PodSpec>,
    pod: Pod,
    pod_dir: &std::path::Path,
    volumes: Arc<Volumes>,
    stop: &CancellationToken,
) {
    // Every image first (init containers' included): the shims that run them decide the network the pod
    // needs. The pulls run together; a failed one is retried by its container's supervisor.
    let init_containers = spec.init_containers.take().unwrap_or_default();
    let pulls = init_containers.iter().enumerate().map(|(i, c)| (true, i, c));
    let pulls = pulls.chain(spec.containers.iter().enumerate().map(|(i, c)| (false, i, c)));
    let mut pulled =
        Box::pin(futures::future::join_all(pulls.map(|(init, index, c)| pull(shared, init, index, c)))).await;
    let shims = Box::pin(shims_of(shared, &pod, &pulled)).await;
    let need = network_need(&shims);
    let (init_shims, main_shims) = shims.split_at(init_containers.len());
    let held = |containers: &[Container], shims: &[Option<Arc<dyn Shim>>]| {
        containers
            .iter()
            .zip(shims)
            .map(|(container, shim)| memory_held(container, shim.as_deref()))
            .collect::<Vec<_>>()
    };
    let memory = admission::pod_memory(held(&spec.containers, main_shims), held(&init_containers, init_shims));
    if let Err(refused) = shared.ctx.memory.admit(&shared.who.uid, memory, started_before(&pod)) {
        end(shared, Ending { reason: admission::OUT_OF_MEMORY, message: refused.to_string() }, stop);
        return;
    }
    let mut main_pulls = pulled.split_off(init_containers.len()).into_iter();
    let mut init_pulls = pulled.into_iter();
    // The pod's sandbox, before any container (init containers included).
    let sandbox = loop {
        match Box::pin(create_sandbox(shared, &pod, pod_dir, need)).await {
            Ok(sandbox) => break sandbox,
            Err(message) => {
                for index in 0..spec.containers.len() {
                    shared.update(false, index, |c| {
                        c.state = State::Waiting { reason: "ContainerCreating".into(), message: Some(message.clone()) };
                    });
                }
                shared.event(None, Kind::Warning, "FailedCreatePodSandBox", &message);
                if !sleep_or_stop(shared.ctx.backoff.initial, stop).await {
                    return;
                }
            }
        }
    };
    for index in 0..spec.containers.len() {
        shared.update(false, index, |c| {
            if matches!(&c.state, State::Waiting { reason, .. } if reason == "ContainerCreating") {
                c.state = State::Waiting { reason: "ContainerCreating".into(), message: None };
            }
        });
    }
    drop(pod);
    let ip = sandbox.address.ip.to_string();
    let _ = shared.sandbox.set(sandbox);
    shared.state.lock().unwrap_or_else(|p| p.into_inner()).pod_ip = Some(ip);
    shared.changed.notify_one();
    let policy = spec.restart_policy.take().unwrap_or_else(|| "Always".into());
    // The containers are all this task needs of the spec from here on, for as long as the pod runs.
    let containers = std::mem::take(&mut spec.containers);
    drop(spec);
    for (index, container) in init_containers.into_iter().enumerate() {
        // Init containers restart on failure unless the pod's policy is Never; they never restart on success.
        let init_policy = if policy == "Never" { "Never" } else { "OnFailure" };
        let pulled = init_pulls.next().map(Box::new);
        // Boxed: inlined, the supervisor's state machine would make every pod's task as large as both.
        let exit =
            Box::pin(supervise(shared, &volumes, true, index, Box::new(container), pulled, init_policy, stop)).await;
        match exit {
            Some(exit) if exit.code == 0 => {}
            Some(_) => {
                shared.state.lock().unwrap_or_else(|p| p.into_inner()).init_failed = true;
                shared.changed.notify_one();
                return;
            }
            None => return,
        }
    }
    shared.state.lock().unwrap_or_else(|p| p.into_inner()).initialized = true;
    shared.changed.notify_one();
    let supervisors: Vec<_> = containers
        .into_iter()
        .enumerate()
        .map(|(index, container)| {
            let (shared, volumes, policy, stop) = (shared.clone(), volumes.clone(), policy.clone(), stop.clone());
            let pulled = main_pulls.next().map(Box::new);
            let span = tracing::info_span!("container", container = %container.name);
            // Boxed: the container (2 KB inline) would sit both in this block and in the supervisor.
            let container = Box::new(container);
            tokio::spawn(
                async move { supervise(&shared, &volumes, false, index, container, pulled, &policy, &stop).await }
                    .instrument(span),
            )
        })
        .collect();
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
}

/// Whether a container of `pod` was started on this node before (an agent restart): such a pod was admitted
/// then, and its containers, which may still run, are the worker's to adopt, never to leave running unseen.
fn started_before(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    let statuses = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    statuses.into_iter().any(|status| status.container_id.is_some())
}

/// The shim each pulled image goes to, in the pulls' order; None where the pull failed or no shim runs the
/// image (its container's supervisor reports that).
async fn shims_of(shared: &Shared, pod: &Pod, pulled: &[Pulled]) -> Vec<Option<Arc<dyn Shim>>> {
    let mut shims = Vec::with_capacity(pulled.len());
    for pulled in pulled {
        let shim = match pulled {
            Ok(image) => choose_shim(&shared.ctx, pod, image).await.ok(),
            Err(_) => None,
        };
        shims.push(shim);
    }
    shims
}

/// What the pod needs of the network: only an address when every container's image goes to the in-process
/// shim; a namespace when one does not, or when that is not known yet (a pull failed).
fn network_need(shims: &[Option<Arc<dyn Shim>>]) -> Need {
    let in_process = |shim: &Option<Arc<dyn Shim>>| shim.as_ref().is_some_and(|shim| shim.name() == IN_PROCESS_SHIM);
    if shims.iter().all(in_process) { Need::Address } else { Need::Namespace }
}

/// What `container` holds of the node's memory: its request (its limit when it names only that, as the API
/// defaults it), or what its shim says it may take, whichever is more. A container whose first pull failed
/// counts its request alone, for the pod's whole life: which shim runs it was not known at admission.
fn memory_held(container: &Container, shim: Option<&dyn Shim>) -> u64 {
    let resources = container.resources.as_ref();
    let memory =
        |map: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            skiff_api::validation::parse_quantity(&map?.get("memory")?.0).map(|bytes| bytes.max(0.0).ceil() as u64)
        };
    let request = memory(resources.and_then(|r| r.requests.as_ref()))
        .or_else(|| memory(resources.and_then(|r| r.limits.as_ref())))
        .unwrap_or(0);
    let held = shim.and_then(|shim| shim.memory_held(&spec::limits(container))).unwrap_or(0);
    request.max(held)
}

/// The pod's network, and the files naming it (only containers with a filesystem of their own read them).
async fn create_sandbox(shared: &Shared, pod: &Pod, pod_dir: &std::path::Path, need: Need) -> Result<Sandbox, String> {
    let failed = |e: &dyn std::fmt::Display| format!("Failed to create pod sandbox: {e}");
    // A pod with `hostUsers: false` gets a user namespace of its own for its containers; wasm guests run in
    // the agent and have no ids to map, so a pod of them alone needs none.
    let ids = match (pod.spec.as_ref().and_then(|s| s.host_users), need) {
        (Some(false), Need::Namespace) => {
            Some(shared.ctx.user_namespaces.range_of(&shared.who.uid).map_err(|e| failed(&e))?)
        }
        _ => None,
    };
    let address = shared.ctx.network.attach(pod, need, ids).await.map_err(|e| failed(&e))?;
    let dns = shared.ctx.dns.as_ref();
    let node_resolv_path = dns.map_or(std::path::Path::new("/etc/resolv.conf"), |d| d.resolv_conf.as_path());
    let node_resolv = std::fs::read_to_string(node_resolv_path).unwrap_or_default();
    let resolv = crate::dns::pod_resolv_conf(pod, dns, &node_resolv);
    let files = match need {
        Need::Address => Vec::new(),
        Need::Namespace => {
            let hostname = pod.metadata.name.as_deref().unwrap_or_default();
            crate::network::write_pod_files(pod_dir, hostname, address.ip, &resolv).map_err(|e| failed(&e))?
        }
    };
    Ok(Sandbox { address, files, resolver: skiff_shim::Resolver::from_resolv_conf(&resolv) })
}

/// Back-off of one container: the kubelet's 10 s doubling to 5 min, reset after 10 min of good running.
struct Backoff {
    next: Duration,
}

/// Keeps one container running under `policy` until it is done or `stop` fires, its first start from the
/// image pulled before the pod's network was made (boxed: the supervisor keeps the slot as long as the
/// container runs). Returns its last exit (None when stopped before it ran to an end).
#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: &Arc<Shared>,
    volumes: &Arc<Volumes>,
    init: bool,
    index: usize,
    container: Box<Container>,
    mut pulled: Option<Box<Pulled>>,
    policy: &str,
    stop: &CancellationToken,
) -> Option<Exit> {
    let ctx = shared.ctx.clone();
    let config = ctx.backoff;
    let mut backoff = Backoff { next: config.initial };
    let name = container.name.clone();
    let mut adopted = Box::pin(adopt(shared, init, index, &container)).await;
    loop {
        let launched = match adopted.take() {
            Some(adopted) => adopted,
            None => {
                let first = pulled.take();
                Box::pin(launch(shared, volumes, init, index, &container, first, &mut backoff, stop)).await?
            }
        };
        let Launched { mut running, log, shim_name, id, image_id, started_at, fresh, subpaths: _held } = launched;
        let uid = shared.who.uid.as_str();
        let pod_ip = shared.sandbox.get().map_or(ctx.node_ip, |sandbox| sandbox.address.ip);
        // The API's time has seconds only; the metrics' start time is the container's, to the second too.
        let since = started_at.parse::<jiff::Timestamp>().map(std::time::SystemTime::from);
        ctx.running.started(crate::running::RunningContainer {
            pod: shared.who.clone(),
            name: name.clone(),
            id: id.clone(),
            runtime: shim_name,
            exec: running.exec(),
            meter: running.meter(),
            http: running.http(),
            address: pod_ip,
            started_at: since.unwrap_or_else(|_| std::time::SystemTime::now()),
        });
        let container_id = format!("{shim_name}://{id}");
        let ran_since = Instant::now();
        shared.update(init, index, |c| {
            c.state = State::Running { started_at: started_at.clone() };
            c.container_id = Some(container_id.clone());
            c.image_id = image_id.clone();
            c.started = container.startup_probe.is_none();
            c.ready = false;
        });
        if fresh {
            shared.event(Some(&name), Kind::Normal, "Created", &format!("Created container: {name}"));
            shared.event(Some(&name), Kind::Normal, "Started", &format!("Started container {name}"));
        }

        // Run, probing, until it exits, fails a probe, or the pod is deleted.
        let probe_cancel = CancellationToken::new();
        let (verdicts_tx, mut verdicts) = mpsc::channel(4);
        let probed = container.readiness_probe.is_some()
            || container.liveness_probe.is_some()
            || container.startup_probe.is_some();
        if probed && !init {
            // The kubelet probes the pod's address.
            tokio::spawn(super::probes::run(Container::clone(&container), pod_ip, verdicts_tx, probe_cancel.clone()));
        } else if !init {
            // No probes: ready as soon as it runs, and no task per container to say so.
            shared.update(init, index, |c| {
                c.ready = true;
                c.started = true;
            });
        }
        let mut stopped_by_us = false;
        let exit = loop {
            tokio::select! {
                exit = running.wait() => break exit,
                _ = stop.cancelled(), if !stopped_by_us => {
                    stopped_by_us = true;
                    let grace = shared.grace_period();
                    shared.event(Some(&name), Kind::Normal, "Killing", &format!("Stopping container {name}"));
                    running.stop(grace);
                }
                Some(verdict) = verdicts.recv() => match verdict {
                    super::probes::Verdict::Ready(ready) => shared.update(init, index, |c| { c.ready = ready; c.started = true; }),
                    super::probes::Verdict::Restart(message) => {
                        shared.event(Some(&name), Kind::Warning, "Unhealthy", &message);
                        shared.event(Some(&name), Kind::Normal, "Killing", &format!("Container {name} failed a probe, will be restarted"));
                        running.stop(shared.grace_period());
                    }
                },
            }
        };
        probe_cancel.cancel();
        ctx.running.ended(uid, &name, &id);
        log.finish();
        let terminated = Terminated {
            exit_code: exit.code,
            reason: exit.reason.as_str().to_string(),
            message: exit.message.clone(),
            started_at: Some(started_at),
            finished_at: crate::now(),
            container_id: Some(container_id),
        };
        let restart = !stopped_by_us
            && match policy {
                "Always" => true,
                "OnFailure" => exit.code != 0,
                _ => false,
            };
        shared.update(init, index, |c| {
            c.state = State::Terminated(terminated.clone());
            c.ready = false;
            c.done = !restart;
        });
        if !restart {
            return Some(exit);
        }
        if exit.code != 0 {
            shared.event(
                Some(&name),
                Kind::Warning,
                "BackOff",
                &format!("Back-off restarting failed container {name} in pod {}", shared.who.label()),
            );
        }
        // Back-off before the restart, shown as CrashLoopBackOff like the kubelet.
        if ran_since.elapsed() >= config.reset_after {
            backoff.next = config.initial;
        }
        let delay = backoff.next;
        backoff.next = (backoff.next * 2).min(config.max);
        shared.update(init, index, |c| {
            c.last = Some(terminated.clone());
            c.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {} restarting failed container={name} pod={}",
                    human(delay),
                    shared.who.label()
                )),
            };
        });
        if !sleep_or_stop(delay, stop).await {
            return Some(exit);
        }
        shared.update(init, index, |c| c.restart_count += 1);
    }
}

/// A container to supervise: started by this worker, or adopted from before an agent restart.
struct Launched {
    running: Box<dyn skiff_shim::Container>,
    log: Arc<ContainerLog>,
    shim_name: &'static str,
    id: String,
    image_id: String,
    started_at: String,
    /// Started now rather than adopted.
    fresh: bool,
    /// Held until the container ends (an adopted container's mounts are made already).
    subpaths: Vec<super::subpath::SubPath>,
}

/// How long a failed pull shows as ErrImagePull before ImagePullBackOff: the kubelet's next sync.
const ERR_IMAGE_PULL_SHOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// Pulls (unless given the pull's outcome) and starts the container, retrying with back-off. None when
/// stopped first.
#[allow(clippy::too_many_arguments)]
async fn launch(
    shared: &Arc<Shared>,
    volumes: &Arc<Volumes>,
    init: bool,
    index: usize,
    container: &Container,
    mut pulled: Option<Box<Pulled>>,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Option<Launched> {
    let ctx = shared.ctx.clone();
    let config = ctx.backoff;
    let name = container.name.clone();
    let reference = container.image.clone().unwrap_or_default();
    loop {
        // Pull.
        // Pulling and starting are boxed so that a supervisor waiting on its container keeps only its own
        // small state, not the larger state of those steps: it waits for as long as the pod runs.
        let pulled = match pulled.take() {
            Some(pulled) => *pulled,
            None => Box::pin(pull(shared, init, index, container)).await,
        };
        let image = match pulled {
            Ok(image) => image,
            Err(PullFailed { message, retry }) => {
                if !retry {
                    stop.cancelled().await;
                    return None;
                }
                let delay = backoff.next;
                backoff.next = (backoff.next * 2).min(config.max);
                // As from the kubelet: the pull's ErrImagePull until the next sync (half the wait, 10 s at most),
                // then ImagePullBackOff until the next pull. Shown only between the wait and the next pull, the
                // back-off lasted a few milliseconds.
                let shown = (delay / 2).min(ERR_IMAGE_PULL_SHOWN);
                if !sleep_or_stop(shown, stop).await {
                    return None;
                }
                shared.update(init, index, |c| {
                    c.state = State::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!("Back-off pulling image \"{reference}\": {message}")),
                    }
                });
                shared.event(Some(&name), Kind::Normal, "BackOff", &format!("Back-off pulling image \"{reference}\""));
                if !sleep_or_stop(delay - shown, stop).await {
                    return None;
                }
                continue;
            }
        };
        // Start.
        let restart_count = {
            let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let list = if init { &state.init } else { &state.main };
            list.get(index).map(|c| c.restart_count).unwrap_or(0)
        };
        let log_dir = ctx.pods_dir.join(&shared.who.uid).join("logs").join(&name);
        let image_id = image_id(&image);
        let started = Box::pin(start(shared, volumes, container, image, &log_dir, restart_count)).await;
        match started {
            Ok(Started { running, log, shim_name, id, subpaths }) => {
                let started_at = crate::now();
                return Some(Launched { running, log, shim_name, id, image_id, started_at, fresh: true, subpaths });
            }
            Err((reason, message)) => {
                shared.update(init, index, |c| {
                    c.state = State::Waiting { reason: reason.into(), message: Some(message.clone()) }
                });
                shared.event(Some(&name), Kind::Warning, "Failed", &format!("Error: {message}"));
                let delay = backoff.next;
                backoff.next = (backoff.next * 2).min(config.max);
                if !sleep_or_stop(delay, stop).await {
                    return None;
                }
                continue;
            }
        }
    }
}

/// Takes over the container an earlier run of the agent left running (its status says running, with a
/// container id of a shim that still has it). The restart count stays; when nothing is adopted, the
/// container that was running counts as restarted.
async fn adopt(shared: &Shared, init: bool, index: usize, container: &Container) -> Option<Launched> {
    let pod = shared.pod();
    let status = pod.status.as_ref()?;
    let statuses = if init { &status.init_container_statuses } else { &status.container_statuses };
    let previous = statuses.as_deref()?.iter().find(|s| s.name == container.name)?;
    let started_at = previous.state.as_ref()?.running.as_ref()?.started_at.as_ref().map(|t| t.0);
    let adopted = async {
        let (shim_name, id) = previous.container_id.as_deref()?.split_once("://")?;
        let shim = shared.ctx.shims.iter().find(|s| s.name() == shim_name)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let log_dir = shared.ctx.pods_dir.join(&uid).join("logs").join(&container.name);
        // The log of the running start, appended to.
        let log = ContainerLog::create(&log_dir, u32::try_from(previous.restart_count).ok()?).ok()?;
        let log = Arc::new(log);
        let running = shim.adopt(id, log.clone()).await?;
        tracing::info!(container = %container.name, id, "adopted the running container");
        Some(Launched {
            running,
            log,
            shim_name: shim.name(),
            id: id.to_owned(),
            image_id: previous.image_id.clone(),
            started_at: started_at.map(skiff_api::format_time).unwrap_or_else(crate::now),
            fresh: false,
            subpaths: Vec::new(),
        })
    }
    .await;
    if adopted.is_none() {
        shared.update(init, index, |c| c.restart_count += 1);
    }
    adopted
}

/// A pull's outcome.
type Pulled = Result<skiff_shim::Image, PullFailed>;

/// A failed pull, already shown as the container's waiting state.
struct PullFailed {
    message: String,
    /// False when retrying cannot help.
    retry: bool,
}

/// Pulls the container's image, with the kubelet's events; a failure becomes the container's waiting state.
async fn pull(shared: &Shared, init: bool, index: usize, container: &Container) -> Pulled {
    let ctx = &shared.ctx;
    let reference = container.image.clone().unwrap_or_default();
    let policy = PullPolicy::from_k8s(container.image_pull_policy.as_deref(), &reference);
    let present = matches!(ctx.images.get(&reference), Ok(Some(_)));
    let announce = policy == PullPolicy::Always || !present;
    if announce && policy != PullPolicy::Never {
        shared.event(Some(&container.name), Kind::Normal, "Pulling", &format!("Pulling image \"{reference}\""));
    }
    let auth = registry_auth(shared).await;
    let started = Instant::now();
    match ctx.images.ensure(&reference, policy, &auth).await {
        Ok(image) => {
            let message = if announce && policy != PullPolicy::Never {
                format!("Successfully pulled image \"{reference}\" in {:.3}s", started.elapsed().as_secs_f64())
            } else {
                format!("Container image \"{reference}\" already present on machine")
            };
            shared.event(Some(&container.name), Kind::Normal, "Pulled", &message);
            Ok(image)
        }
        Err(error) => {
            // A reference that does not parse will not parse on a retry either.
            let retry = !matches!(error, ImageError::InvalidReference { .. });
            let reason = error.waiting_reason();
            let message = error.to_string();
            shared.event(
                Some(&container.name),
                Kind::Warning,
                "Failed",
                &format!("Failed to pull image \"{reference}\": {message}"),
            );
            shared.update(init, index, |c| {
                c.state = State::Waiting { reason: reason.into(), message: Some(message.clone()) }
            });
            Err(PullFailed { message, retry })
        }
    }
}

/// Credentials from the pod's imagePullSecrets.
async fn registry_auth(shared: &Shared) -> RegistryAuth {
    let references = shared.pod.borrow().spec.as_ref().and_then(|s| s.image_pull_secrets.clone()).unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(shared.ctx.client.clone(), &shared.who.namespace);
    let mut auth = RegistryAuth::anonymous();
    for reference in references {
        match secrets.get_opt(&reference.name).await {
            Ok(Some(secret)) => {
                match spec::docker_config(&secret).map(|json| RegistryAuth::from_docker_config_json(&json)) {
                    Some(Ok(more)) => auth.merge(more),
                    Some(Err(e)) => tracing::warn!(secret = %reference.name, error = %e, "unusable imagePullSecret"),
                    None => tracing::warn!(secret = %reference.name, "imagePullSecret has no .dockerconfigjson"),
                }
            }
            Ok(None) => tracing::warn!(secret = %reference.name, "imagePullSecret not found"),
            Err(e) => tracing::warn!(secret = %reference.name, error = %e, "cannot read imagePullSecret"),
        }
    }
    auth
}

/// A container the shim started, and the handles of its subPaths, which must stay open while it runs.
struct Started {
    running: Box<dyn skiff_shim::Container>,
    log: Arc<ContainerLog>,
    shim_name: &'static str,
    id: String,
    subpaths: Vec<super::subpath::SubPath>,
}

/// Chooses the shim and starts the container; errors are CreateContainerError messages.
async fn start(
    shared: &Shared,
    volumes: &Volumes,
    container: &Container,
    image: skiff_shim::Image,
    log_dir: &std::path::Path,
    restart_count: i32,
) -> Result<Started, (&'static str, String)> {
    const CREATE: &str = "CreateContainerError";
    const CONFIG: &str = "CreateContainerConfigError";
    let ctx = &shared.ctx;
    let pod = shared.pod();
    let shim = choose_shim(ctx, &pod, &image).await.map_err(|e| (CREATE, e))?;
    let log = Arc::new(
        ContainerLog::create(log_dir, restart_count.max(0) as u32)
            .map_err(|e| (CREATE, format!("cannot open the container log: {e}")))?,
    );
    let uid = &shared.who.uid;
    let id = format!("{}-{}-{restart_count}", &uid[..uid.len().min(8)], container.name);
    let sandbox = shared.sandbox.get().ok_or((CREATE, "the pod's network is not set up".to_owned()))?;
    // Where the node runs the service proxy (pods with addresses of their own, as for the cluster DNS), a
    // container's Service variables come from its caches: the kubelet's words until they have been filled.
    let services_listed = || ctx.services.read().unwrap_or_else(|poisoned| poisoned.into_inner()).services_listed();
    if ctx.dns.is_some() && !services_listed() {
        return Err((CONFIG, "services have not yet been read at least once, cannot construct envvars".to_owned()));
    }
    let (mut spec, subpaths) = spec::container_spec(
        &ctx.client,
        &ctx.services,
        &pod,
        container,
        image,
        volumes,
        id.clone(),
        ctx.node_ip,
        &sandbox.address,
        &sandbox.resolver,
        log.clone(),
    )
    .await
    .map_err(|e| (CONFIG, e.0))?;
    // Containers get the pod's /etc/hosts and /etc/resolv.conf unless they mount their own there; wasm guests
    // are given directories only.
    if shim.name() == "oci" {
        let own: Vec<String> = spec.mounts.iter().map(|m| m.container_path.clone()).collect();
        spec.mounts.extend(sandbox.files.iter().filter(|f| !own.contains(&f.container_path)).cloned());
    }
    let running = shim.start(spec).await.map_err(|e| match e {
        skiff_shim::ShimError::Config(message) => (CONFIG, message),
        other => (CREATE, other.to_string()),
    })?;
    Ok(Started { running, log, shim_name: shim.name(), id, subpaths })
}

/// The shim for a container: the one its pod's RuntimeClass names, else the first that can handle the image.
async fn choose_shim(ctx: &Context, pod: &Pod, image: &skiff_shim::Image) -> Result<Arc<dyn Shim>, String> {
    if let Some(class) = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone()) {
        let classes: Api<RuntimeClass> = Api::all(ctx.client.clone());
        let handler = match classes.get_opt(&class).await {
            Ok(Some(rc)) => rc.handler,
            Ok(None) => return Err(format!("RuntimeClass \"{class}\" not found")),
            Err(e) => return Err(format!("cannot read RuntimeClass \"{class}\": {e}")),
        };
        return ctx
            .shims
            .iter()
            .find(|s| s.name() == handler)
            .cloned()
            .ok_or_else(|| format!("this node has no \"{handler}\" runtime (RuntimeClass \"{class}\")"));
    }
    ctx.shims.iter().find(|s| s.can_handle(image)).cloned().ok_or_else(|| {
        let names: Vec<&str> = ctx.shims.iter().map(|s| s.name()).collect();
        format!("no runtime on this node can run image \"{}\" (runtimes: {})", image.reference, names.join(", "))
    })
}

/// `repository@digest`, the kubelet's imageID: the reference without its tag, pinned to the manifest digest.
fn image_id(image: &skiff_shim::Image) -> String {
    let repository = image.reference.split('@').next().unwrap_or_default();
    let repository = match repository.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => repository,
    };
    format!("{repository}@{}", image.digest)
}

fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Sleeps unless stopped first; false when stopped.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Durations as the kubelet prints them in back-off messages (`10s`, `5m0s`).
fn human(delay: Duration) -> String {
    let seconds = delay.as_secs();
    if seconds >= 60 { format!("{}m{}s", seconds / 60, seconds % 60) } else { format!("{seconds}s") }
}

async fn flush_status(shared: &Shared) {
    let status = shared.state.lock().unwrap_or_else(|p| p.into_inner()).status();
    if status["phase"] == "Running"
        && let Some(seen) = shared.seen.lock().unwrap_or_else(|p| p.into_inner()).take()
    {
        shared.ctx.metrics.pod_start_duration.observe(seen.elapsed().as_secs_f64());
    }
    let pods: Api<Pod> = Api::namespaced(shared.ctx.client.clone(), &shared.who.namespace);
    let patch = Patch::Merge(json!({"status": status}));
    if let Err(e) = pods.patch_status(&shared.who.name, &PatchParams::default(), &patch).await {
        match e {
            kube::Error::Api(ref status) if status.code == 404 => {}
            e => tracing::warn!(error = %e, "cannot write the pod status"),
        }
    }
}

/// Removes a pod whose containers have stopped: a delete with no grace, for this pod's uid only.
async fn delete_pod(ctx: &Context, pod: &PodRef) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(pod.uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the deleted pod"),
    }
    ctx.events.forget(&pod.uid);
}
