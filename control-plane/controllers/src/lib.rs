//! The control loops that make Skiff an orchestrator: the scheduler and the controllers, all plain clients of
//! the Kubernetes API (watch → cache → reconcile with kube-runtime), run by one server at a time under a
//! leader Lease, as kube-controller-manager and kube-scheduler are.
//!
//! Code map: [`scheduler`] (pure `filter` and `score`, and the bind loop), `replicaset`, `deployment`,
//! `daemonset`, `job`, `nodelifecycle`, `gc` (ownerReferences), `endpointslice` (a Service's pods as
//! EndpointSlices and Endpoints), `servicelb` (LoadBalancer status from the Ready nodes), `ingress` (the
//! same addresses as the status of the Ingresses Skiff's nodes serve), `csr` (approving
//! node agents' certificate signing requests, and signing approved ones with the cluster CA),
//! `clusterroles` (ClusterRole aggregation), `tokencleaner` (deleting expired bootstrap tokens), [`hpa`]
//! (HorizontalPodAutoscalers: the pure `algorithm`, the loop over `/scale` and the metrics APIs), [`events`],
//! [`leader`].

mod clusterroles;
mod csr;
mod daemonset;
mod deployment;
mod endpointslice;
pub mod events;
mod gc;
pub mod hpa;
mod ingress;
mod job;
pub mod leader;
mod metrics;
mod nodelifecycle;
mod placement;
mod replicaset;
mod scaletozero;
pub mod scheduler;
mod servicelb;
mod tokencleaner;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use csr::ApiServerNames;
pub use metrics::Metrics;

/// Tunables of the control loops; the defaults are Skiff's, shorter than Kubernetes' where noted.
#[derive(Clone, Debug)]
pub struct Config {
    /// A node whose Lease is older than this is NotReady (Kubernetes: 40–50 s).
    pub node_grace: Duration,
    /// How long pods tolerate an unreachable or not-ready node before eviction, unless they say otherwise
    /// (Kubernetes: 300 s).
    pub eviction_toleration: Duration,
    /// The cluster CA, with which approved certificate signing requests are signed; without it they are
    /// approved but not signed.
    pub signing_ca: Option<SigningCa>,
    /// What clients take for the API server, which no node's serving certificate may name.
    pub apiserver_names: ApiServerNames,
    /// How often each HorizontalPodAutoscaler is synced (Kubernetes: 15 s).
    pub hpa_sync_period: Duration,
    /// Where the loops count what they do (unregistered by default).
    pub metrics: Metrics,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_grace: Duration::from_secs(20),
            eviction_toleration: Duration::from_secs(5),
            signing_ca: None,
            apiserver_names: ApiServerNames::default(),
            hpa_sync_period: hpa::DEFAULT_SYNC_PERIOD,
            metrics: Metrics::default(),
        }
    }
}

/// A CA certificate and its private key, in PEM.
#[derive(Clone)]
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The key stays out of logs.
impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Waits until `ready` (a controller's caches have listed) unless `shutdown` comes first: a controller
/// shutting down stops polling its watches, so a reconcile still waiting for them would hold the shutdown
/// for ever (a server stopped right after it started never exited). False when shutting down, or when a
/// cache is gone.
pub(crate) async fn caches_ready<E>(
    shutdown: &CancellationToken,
    ready: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        result = ready => result.is_ok(),
    }
}

/// The API clients the control loops use, each its own identity with its own RBAC role.
#[derive(Clone)]
pub struct Clients {
    /// `system:kube-controller-manager`.
    pub controllers: kube::Client,
    /// `system:kube-scheduler`.
    pub scheduler: kube::Client,
}

/// Runs the scheduler and every controller until `shutdown`.
pub async fn run(clients: Clients, config: Config, shutdown: CancellationToken) {
    let Clients { controllers: client, scheduler } = clients;
    let hpa_sync_period = config.hpa_sync_period;
    tokio::join!(
        scheduler::run(scheduler, config.metrics.clone(), shutdown.clone()),
        clusterroles::run(client.clone(), shutdown.clone()),
        replicaset::run(client.clone(), shutdown.clone()),
        deployment::run(client.clone(), shutdown.clone()),
        gc::run(client.clone(), shutdown.clone()),
        csr::run(client.clone(), config.signing_ca.clone(), config.apiserver_names.clone(), shutdown.clone()),
        nodelifecycle::run(client.clone(), config, shutdown.clone()),
        job::run(client.clone(), shutdown.clone()),
        endpointslice::run(client.clone(), shutdown.clone()),
        servicelb::run(client.clone(), shutdown.clone()),
        ingress::run(client.clone(), shutdown.clone()),
        tokencleaner::run(client.clone(), shutdown.clone()),
        hpa::run(client.clone(), hpa_sync_period, shutdown.clone()),
        scaletozero::run(client.clone(), shutdown.clone()),
        daemonset::run(client, shutdown),
    );
}

/// A short hash of `text` that is the same in every build and process (FNV-1a, 40 bits as 10 hex digits),
/// for names and labels derived from content.
pub(crate) fn stable_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{:010x}", hash & 0xff_ffff_ffff)
}
