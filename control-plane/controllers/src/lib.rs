//! The control loops that make Skiff an orchestrator: the scheduler and the controllers, all plain clients of
//! the Kubernetes API (watch → cache → reconcile with kube-runtime), run by one server at a time under a
//! leader Lease, as kube-controller-manager and kube-scheduler are.
//!
//! Code map: [`scheduler`] (pure `filter` and `score`, and the bind loop), `replicaset`, `deployment`,
//! `daemonset`, `job`, `nodelifecycle`, `gc` (ownerReferences), [`events`], [`leader`].

mod daemonset;
mod deployment;
pub mod events;
mod gc;
mod job;
pub mod leader;
mod nodelifecycle;
mod placement;
mod replicaset;
pub mod scheduler;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Tunables of the control loops; the defaults are Skiff's, shorter than Kubernetes' where noted.
#[derive(Clone, Debug)]
pub struct Config {
    /// A node whose Lease is older than this is NotReady (Kubernetes: 40–50 s).
    pub node_grace: Duration,
    /// How long pods tolerate an unreachable or not-ready node before eviction, unless they say otherwise
    /// (Kubernetes: 300 s).
    pub eviction_toleration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self { node_grace: Duration::from_secs(20), eviction_toleration: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api request failed")]
    Kube(#[from] kube::Error),
}

/// Runs the scheduler and every controller until `shutdown`.
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) {
    tokio::join!(
        scheduler::run(client.clone(), shutdown.clone()),
        replicaset::run(client.clone(), shutdown.clone()),
        deployment::run(client.clone(), shutdown.clone()),
        gc::run(client.clone(), shutdown.clone()),
        nodelifecycle::run(client.clone(), config, shutdown.clone()),
        job::run(client.clone(), shutdown.clone()),
        daemonset::run(client, shutdown),
    );
}
