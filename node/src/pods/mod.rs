//! The pods bound to this node: a watch on `spec.nodeName=<node>` (kube-runtime's watcher, level-triggered:
//! every relist reconciles the full set) keeps one [`worker::Worker`] per pod; the same loop measures their
//! emptyDirs and evicts those over their limits ([`eviction`]).

mod admission;
mod atomic;
mod downward;
mod events;
mod eviction;
mod probes;
mod spec;
pub mod status;
mod subpath;
mod token;
mod userns;
mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use skiff_shim::Shim;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use admission::MemoryLedger;
pub use events::Recorder;
pub use userns::UserNamespaces;
use worker::Worker;

use crate::images::ImageStore;

/// The kubelet's crash-loop back-off: 10 s doubling to 5 min, reset after 10 min of running. Tests shorten it.
#[derive(Clone, Copy, Debug)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(10), max: Duration::from_secs(300), reset_after: Duration::from_secs(600) }
    }
}

/// Who a pod is: what events, status writes and the final delete name. Kept instead of copies of the pod,
/// which cost kilobytes each.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        PodRef {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }

    /// The kubelet's `name_namespace(uid)` form in messages.
    fn label(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }
}

/// What every pod worker shares.
pub struct Context {
    pub client: kube::Client,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub images: ImageStore,
    /// In the order they are asked whether they can run an image: wasm first.
    pub shims: Vec<Arc<dyn Shim>>,
    /// `<data dir>/pods/<pod uid>/{volumes,logs}`.
    pub pods_dir: PathBuf,
    pub backoff: BackoffConfig,
    pub events: Recorder,
    /// `capacity.pods`: pods beyond it are refused at admission, as the kubelet does.
    pub max_pods: u32,
    /// Pods' network namespaces and addresses.
    pub network: crate::network::Network,
    /// The cluster DNS pods are pointed at; None on a node without Services (host networking).
    pub dns: Option<crate::dns::DnsConfig>,
    /// The service proxy's view of Services and their endpoints (empty without a pod network).
    pub services: crate::proxy::SharedCaches,
    /// The running containers, for `kubectl exec`.
    pub running: Arc<crate::running::Running>,
    /// The agent's instruments.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
    /// The node's memory as its pods hold it, for admission.
    pub memory: admission::MemoryLedger,
    /// The id ranges of pods with `hostUsers: false`.
    pub user_namespaces: UserNamespaces,
}

/// Watches this node's pods and keeps a worker per pod until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    remove_orphans(&ctx, &pods, &shutdown).await;
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher(pods, config).boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut housekeeping = eviction::Housekeeping::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            due = housekeeping.next() => {
                match due {
                    eviction::Due::Measure => {
                        let running = workers.values().filter(|worker| worker.is_active()).map(Worker::pod);
                        let running = running.filter(|pod| pod.metadata.deletion_timestamp.is_none());
                        housekeeping.measure(running, &ctx.pods_dir);
                    }
                    eviction::Due::Evict { uid, message } => {
                        if let Some(worker) = workers.get(&uid) {
                            worker.evict(message);
                        }
                    }
                }
                continue;
            }
        };
        match event {
            Ok(watcher::Event::Apply(pod)) => apply(&ctx, &mut workers, pod),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                apply(&ctx, &mut workers, pod);
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    if let Some(worker) = workers.remove(uid) {
                        gone(&ctx, uid, worker, &shutdown).await;
                    }
                    ctx.network.release(uid).await;
                }
            }
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitDone) => {
                // A relist is the truth: workers of pods no longer bound here end.
                let left: Vec<String> = workers.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                for uid in left {
                    if let Some(worker) = workers.remove(&uid) {
                        gone(&ctx, &uid, worker, &shutdown).await;
                    }
                    ctx.network.release(&uid).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        workers.retain(|_, worker| !worker.is_finished());
    }
    for (_, worker) in workers.drain() {
        worker.abandon().await;
    }
}

/// Ends the worker of a pod the API no longer has (deleted at once, `--force`), which stops its containers,
/// then tears its directory down, as the worker does after a graceful deletion.
async fn gone(ctx: &Context, uid: &str, worker: Worker, shutdown: &CancellationToken) {
    worker.abandon().await;
    tear_down_in_background(ctx.pods_dir.join(uid), shutdown);
}

/// Tears a pod's directory down on a task of its own: it is retried until done, which must not hold up the
/// other pods.
fn tear_down_in_background(pod_dir: PathBuf, shutdown: &CancellationToken) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move { volumes::tear_down(&pod_dir, &shutdown).await }.in_current_span());
}

/// Before any worker starts: removes the containers an earlier run of the agent left for pods that are no
/// longer bound here (deleted while the agent was away), then their directories. Containers the pods'
/// statuses name are kept for their workers to adopt.
async fn remove_orphans(ctx: &Context, pods: &Api<Pod>, shutdown: &CancellationToken) {
    let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let list = match pods.list(&params).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this node's pods: leftover containers stay until the next start");
            return;
        }
    };
    let named: Vec<(String, String)> = list
        .items
        .iter()
        .filter_map(|pod| pod.status.as_ref())
        .flat_map(|status| {
            status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.container_id.as_deref()?.split_once("://").map(|(shim, id)| (shim.to_owned(), id.to_owned())))
        .collect();
    for shim in &ctx.shims {
        let keep: HashSet<String> = named.iter().filter(|(s, _)| s == shim.name()).map(|(_, id)| id.clone()).collect();
        let removed = shim.remove_others(&keep).await;
        if removed > 0 {
            tracing::info!(shim = shim.name(), removed, "removed containers of pods deleted while the agent was away");
        }
    }
    // Their tmpfs volumes would otherwise hold the node's memory for ever.
    let bound: HashSet<&str> = list.items.iter().filter_map(|pod| pod.metadata.uid.as_deref()).collect();
    for entry in std::fs::read_dir(&ctx.pods_dir).into_iter().flatten().flatten() {
        if !bound.contains(entry.file_name().to_string_lossy().as_ref()) {
            tear_down_in_background(entry.path(), shutdown);
        }
    }
}

fn apply(ctx: &Arc<Context>, workers: &mut HashMap<String, Worker>, mut pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else { return };
    // A worker's watch channel keeps its pod; field ownership is the largest part of it and nothing reads it.
    pod.metadata.managed_fields = None;
    if let Some(worker) = workers.get(&uid) {
        worker.update(pod);
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let active = workers.values().filter(|w| w.is_active()).count();
    if !terminal && pod.metadata.deletion_timestamp.is_none() && active >= ctx.max_pods as usize {
        tokio::spawn(refuse(ctx.clone(), pod, active));
        return;
    }
    workers.insert(uid, Worker::spawn(ctx.clone(), pod));
}

/// Kubelet admission: a pod that would exceed `capacity.pods` fails with reason OutOfpods instead of
/// starting (a wasm guest beyond the pool would only crash-loop on a full instance pool).
async fn refuse(ctx: Arc<Context>, pod: Pod, active: usize) {
    let who = PodRef::of(&pod);
    let message = format!(
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {active}, capacity: {}",
        ctx.max_pods
    );
    tracing::warn!(pod = %who.name, "{message}");
    ctx.events.record(&who, None, events::Kind::Warning, "OutOfpods", &message);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &who.namespace);
    let status = serde_json::json!({"status": {"phase": "Failed", "reason": "OutOfpods", "message": message}});
    if let Err(e) =
        pods.patch_status(&who.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(status)).await
    {
        tracing::warn!(pod = %who.name, error = %e, "cannot record the rejection");
    }
}
