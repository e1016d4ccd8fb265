//! One task per pod: prepares volumes, runs init containers in order, then supervises each container
//! (pull, start, wait, restart with back-off, probes), writes the pod's status on every change, and on
//! deletion stops the containers within the grace period and removes the pod.

use std::sync::{Arc, Mutex};
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

use super::Context;
use super::events::Kind;
use super::spec::{self, ConfigError, Volumes};
use super::status::{ContainerState, PodState, State, Terminated};
use crate::images::{ImageError, PullPolicy, RegistryAuth};
use crate::logs::ContainerLog;

/// A running pod worker.
pub struct Worker {
    pod: watch::Sender<Pod>,
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
        let abandon = CancellationToken::new();
        let span = tracing::info_span!("pod", pod = %name);
        let task = tokio::spawn(run(ctx, rx, abandon.clone()).instrument(span));
        Self { pod: tx, abandon, task }
    }

    /// Hands the worker the newest version of its pod.
    pub fn update(&self, pod: Pod) {
        self.pod.send_replace(pod);
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
}

impl Shared {
    fn pod(&self) -> Pod {
        self.pod.borrow().clone()
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
        self.ctx.events.record(&self.pod(), container, kind, reason, message);
    }
}

async fn run(ctx: Arc<Context>, pod_rx: watch::Receiver<Pod>, abandon: CancellationToken) {
    let pod = pod_rx.borrow().clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let shared = Arc::new(Shared {
        state: Mutex::new(initial_state(&pod, &ctx.node_ip.to_string())),
        changed: Notify::new(),
        pod: pod_rx.clone(),
        ctx: ctx.clone(),
    });
    let stop = CancellationToken::new();
    // A pod that already ended (before an agent restart) is not run again.
    let finished = matches!(phase.as_str(), "Succeeded" | "Failed");
    let runner = (!finished).then(|| tokio::spawn(run_containers(shared.clone(), spec.clone(), stop.clone())));
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
            _ = shared.changed.notified() => flush_status(&shared).await,
            changed = pod_rx.changed() => if changed.is_err() { return },
        }
    }
    // Graceful deletion: stop the containers within the grace period, report, then remove the pod.
    tracing::info!("pod deleted: stopping its containers");
    stop.cancel();
    if let Some(runner) = runner {
        let _ = runner.await;
    }
    flush_status(&shared).await;
    delete_pod(&ctx, &shared.pod()).await;
}

/// The state a worker starts from. After an agent restart the pod's reported restart counts carry on, and a
/// container that was running when the agent died counts as restarted.
fn initial_state(pod: &Pod, host_ip: &str) -> PodState {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let carry = |containers: &[Container], statuses: &[k8s_openapi::api::core::v1::ContainerStatus]| {
        containers
            .iter()
            .map(|c| {
                let mut state = ContainerState::new(&c.name, c.image.as_deref().unwrap_or(""));
                if let Some(old) = statuses.iter().find(|s| s.name == c.name) {
                    let ran = old.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some());
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

async fn run_containers(shared: Arc<Shared>, spec: k8s_openapi::api::core::v1::PodSpec, stop: CancellationToken) {
    let pod = shared.pod();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_dir = shared.ctx.pods_dir.join(&uid);
    let volumes = loop {
        match Volumes::prepare(&shared.ctx.client, &pod, &pod_dir).await {
            Ok(volumes) => break volumes,
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
    let volumes = Arc::new(volumes);
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    for (index, container) in spec.init_containers.clone().unwrap_or_default().into_iter().enumerate() {
        // Init containers restart on failure unless the pod's policy is Never; they never restart on success.
        let init_policy = if policy == "Never" { "Never" } else { "OnFailure" };
        // Boxed: inlined, the supervisor's state machine would make every pod's task as large as both.
        let exit = Box::pin(supervise(&shared, &volumes, true, index, container, init_policy, &stop)).await;
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
    let supervisors: Vec<_> = spec
        .containers
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, container)| {
            let (shared, volumes, policy, stop) = (shared.clone(), volumes.clone(), policy.clone(), stop.clone());
            let span = tracing::info_span!("container", container = %container.name);
            tokio::spawn(
                async move { supervise(&shared, &volumes, false, index, container, &policy, &stop).await }
                    .instrument(span),
            )
        })
        .collect();
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
}

/// Back-off of one container: the kubelet's 10 s doubling to 5 min, reset after 10 min of good running.
struct Backoff {
    next: Duration,
}

/// Keeps one container running under `policy` until it is done or `stop` fires. Returns its last exit
/// (None when stopped before it ran to an end).
async fn supervise(
    shared: &Arc<Shared>,
    volumes: &Arc<Volumes>,
    init: bool,
    index: usize,
    container: Container,
    policy: &str,
    stop: &CancellationToken,
) -> Option<Exit> {
    let ctx = shared.ctx.clone();
    let config = ctx.backoff;
    let mut backoff = Backoff { next: config.initial };
    let name = container.name.clone();
    let reference = container.image.clone().unwrap_or_default();
    loop {
        // Pull.
        // Pulling and starting are boxed so that a supervisor waiting on its container keeps only its own
        // small state, not the larger state of those steps: it waits for as long as the pod runs.
        let image = match Box::pin(pull(shared, &container)).await {
            Ok(image) => image,
            Err((reason, message, retry)) => {
                shared.update(init, index, |c| {
                    c.state = State::Waiting { reason: reason.into(), message: Some(message.clone()) }
                });
                if !retry {
                    stop.cancelled().await;
                    return None;
                }
                let delay = backoff.next;
                backoff.next = (backoff.next * 2).min(config.max);
                if !sleep_or_stop(delay, stop).await {
                    return None;
                }
                shared.update(init, index, |c| {
                    c.state = State::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!("Back-off pulling image \"{reference}\": {message}")),
                    }
                });
                shared.event(Some(&name), Kind::Normal, "BackOff", &format!("Back-off pulling image \"{reference}\""));
                continue;
            }
        };
        // Start.
        let restart_count = {
            let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let list = if init { &state.init } else { &state.main };
            list.get(index).map(|c| c.restart_count).unwrap_or(0)
        };
        let pod = shared.pod();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let log_dir = ctx.pods_dir.join(&uid).join("logs").join(&name);
        let image_id = image_id(&image);
        let started = Box::pin(start(shared, volumes, &container, image, &log_dir, restart_count)).await;
        let (mut running, log, shim_name, id) = match started {
            Ok(started) => started,
            Err(message) => {
                shared.update(init, index, |c| {
                    c.state = State::Waiting { reason: "CreateContainerError".into(), message: Some(message.clone()) }
                });
                shared.event(Some(&name), Kind::Warning, "Failed", &format!("Error: {message}"));
                let delay = backoff.next;
                backoff.next = (backoff.next * 2).min(config.max);
                if !sleep_or_stop(delay, stop).await {
                    return None;
                }
                continue;
            }
        };
        let started_at = crate::now();
        let container_id = format!("{shim_name}://{id}");
        let ran_since = Instant::now();
        shared.update(init, index, |c| {
            c.state = State::Running { started_at: started_at.clone() };
            c.container_id = Some(container_id.clone());
            c.image_id = image_id.clone();
            c.started = container.startup_probe.is_none();
            c.ready = false;
        });
        shared.event(Some(&name), Kind::Normal, "Created", &format!("Created container: {name}"));
        shared.event(Some(&name), Kind::Normal, "Started", &format!("Started container {name}"));

        // Run, probing, until it exits, fails a probe, or the pod is deleted.
        let probe_cancel = CancellationToken::new();
        let (verdicts_tx, mut verdicts) = mpsc::channel(4);
        let probed = container.readiness_probe.is_some()
            || container.liveness_probe.is_some()
            || container.startup_probe.is_some();
        if probed && !init {
            tokio::spawn(super::probes::run(container.clone(), ctx.node_ip, verdicts_tx, probe_cancel.clone()));
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
                    let grace = grace_period(&shared.pod());
                    shared.event(Some(&name), Kind::Normal, "Killing", &format!("Stopping container {name}"));
                    running.stop(grace);
                }
                Some(verdict) = verdicts.recv() => match verdict {
                    super::probes::Verdict::Ready(ready) => shared.update(init, index, |c| { c.ready = ready; c.started = true; }),
                    super::probes::Verdict::Restart(message) => {
                        shared.event(Some(&name), Kind::Warning, "Unhealthy", &message);
                        shared.event(Some(&name), Kind::Normal, "Killing", &format!("Container {name} failed a probe, will be restarted"));
                        running.stop(grace_period(&shared.pod()));
                    }
                },
            }
        };
        probe_cancel.cancel();
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
                &format!("Back-off restarting failed container {name} in pod {}", pod_label(&pod)),
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
                    pod_label(&pod)
                )),
            };
        });
        if !sleep_or_stop(delay, stop).await {
            return Some(exit);
        }
        shared.update(init, index, |c| c.restart_count += 1);
    }
}

/// Pulls the container's image. Errors carry the waiting reason, a message, and whether to retry.
async fn pull(shared: &Shared, container: &Container) -> Result<skiff_shim::Image, (&'static str, String, bool)> {
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
            Err((reason, message, retry))
        }
    }
}

/// Credentials from the pod's imagePullSecrets.
async fn registry_auth(shared: &Shared) -> RegistryAuth {
    let pod = shared.pod();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let secrets: Api<Secret> = Api::namespaced(shared.ctx.client.clone(), &namespace);
    let mut auth = RegistryAuth::anonymous();
    for reference in pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone()).unwrap_or_default() {
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

type Started = (Box<dyn skiff_shim::Container>, Arc<ContainerLog>, &'static str, String);

/// Chooses the shim and starts the container; errors are CreateContainerError messages.
async fn start(
    shared: &Shared,
    volumes: &Volumes,
    container: &Container,
    image: skiff_shim::Image,
    log_dir: &std::path::Path,
    restart_count: i32,
) -> Result<Started, String> {
    let ctx = &shared.ctx;
    let pod = shared.pod();
    let shim = choose_shim(ctx, &pod, &image).await?;
    let log = Arc::new(
        ContainerLog::create(log_dir, restart_count.max(0) as u32)
            .map_err(|e| format!("cannot open the container log: {e}"))?,
    );
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let id = format!("{}-{}-{restart_count}", &uid[..uid.len().min(8)], container.name);
    let spec = spec::container_spec(&ctx.client, &pod, container, image, volumes, id.clone(), ctx.node_ip, log.clone())
        .await
        .map_err(|e| e.0)?;
    let running = shim.start(spec).await.map_err(|e| e.to_string())?;
    Ok((running, log, shim.name(), id))
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

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// Durations as the kubelet prints them in back-off messages (`10s`, `5m0s`).
fn human(delay: Duration) -> String {
    let seconds = delay.as_secs();
    if seconds >= 60 { format!("{}m{}s", seconds / 60, seconds % 60) } else { format!("{seconds}s") }
}

async fn flush_status(shared: &Shared) {
    let status = shared.state.lock().unwrap_or_else(|p| p.into_inner()).status();
    let pod = shared.pod();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(shared.ctx.client.clone(), &namespace);
    let patch = Patch::Merge(json!({"status": status}));
    if let Err(e) = pods.patch_status(&name, &PatchParams::default(), &patch).await {
        match e {
            kube::Error::Api(ref status) if status.code == 404 => {}
            e => tracing::warn!(error = %e, "cannot write the pod status"),
        }
    }
}

/// Removes a pod whose containers have stopped: a delete with no grace, for this pod's uid only.
async fn delete_pod(ctx: &Context, pod: &Pod) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match pods.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the deleted pod"),
    }
    if let Some(uid) = &pod.metadata.uid {
        ctx.events.forget(uid);
    }
}
