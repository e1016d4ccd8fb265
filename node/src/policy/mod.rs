//! NetworkPolicy (networking.k8s.io/v1), enforced in the kernel by every agent for its own pods, container
//! and wasm pods alike, as kube-router and Calico do it: each node judges the traffic its pods send and
//! receive, so a connection between two nodes passes the sender's egress rules on one and the receiver's
//! ingress rules on the other.
//!
//! One loop watches NetworkPolicies, Pods (all of them: selectors name pods on other nodes too) and
//! Namespaces into kube-runtime reflector stores, and after each burst of events computes what the node
//! needs from the whole of them ([`model`], pure) and programs the difference from what it applied last
//! ([`nft`]): one nftables transaction per sync, so a pod joining a peer set is one set element. A watch
//! restart relists into the stores, and the next sync compares again: level-triggered, a missed event
//! heals. A transaction the kernel refuses makes the table afresh. On shutdown the table is removed.

mod model;
mod nft;

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long to wait before making the table afresh after the kernel refused a transaction.
const RETRY: Duration = Duration::from_secs(1);

/// The store an event went to.
#[derive(Clone, Copy)]
enum Source {
    Policies,
    Pods,
    Namespaces,
}

/// Enforces NetworkPolicies for the pods of node `node_name` until `shutdown`, then removes its table,
/// `skiff-policy-<network_id>` (named as the node's bridge and service table are, so that agents sharing
/// one machine's network keep apart).
pub async fn run(client: Client, node_name: String, network_id: &str, shutdown: CancellationToken) {
    let span = tracing::info_span!("network_policy", node = %node_name);
    let table = crate::nft::policy_table(network_id);
    enforce(client, node_name, table, shutdown).instrument(span).await;
}

async fn enforce(client: Client, node_name: String, table: String, shutdown: CancellationToken) {
    let (policies, policy_writer) = reflector::store::<NetworkPolicy>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let config = watcher::Config::default();
    let policy_events = watcher(Api::<NetworkPolicy>::all(client.clone()), config.clone()).default_backoff();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), config.clone()).default_backoff().modify(slim);
    let namespace_events = watcher(Api::<Namespace>::all(client), config).default_backoff().modify(|namespace| {
        namespace.metadata.managed_fields = None;
        namespace.metadata.annotations = None;
        namespace.spec = None;
        namespace.status = None;
    });
    let mut events = futures::stream::select_all([
        reflector::reflector(policy_writer, policy_events).map(|e| seen(Source::Policies, e)).boxed(),
        reflector::reflector(pod_writer, pod_events).map(|e| seen(Source::Pods, e)).boxed(),
        reflector::reflector(namespace_writer, namespace_events).map(|e| seen(Source::Namespaces, e)).boxed(),
    ]);
    // Nothing is programmed before every store has listed once: a half-known cluster would cut pods off
    // their peers (policies known, peers not yet).
    let mut listed = [false; 3];
    let mut applied: Option<model::Rules> = None;
    let mut retry = false;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = events.next() => batch.push(event),
            // A refused transaction is tried again, from scratch.
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
        // Everything already waiting joins this sync: under a burst of events, fewer transactions.
        while let Some(Some(event)) = events.next().now_or_never() {
            batch.push(event);
        }
        for event in batch {
            match event {
                Ok(Some(source)) => listed[source as usize] = true,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "network policy watch failed; retrying"),
            }
        }
        if !listed.iter().all(|listed| *listed) {
            continue;
        }
        let desired = desired(&policies, &pods, &namespaces, &node_name);
        let Some(document) = nft::plan(&table, applied.as_ref(), &desired) else {
            retry = false;
            continue;
        };
        let started = std::time::Instant::now();
        match crate::nft::apply(&document).await {
            Ok(()) => {
                tracing::debug!(
                    chains = desired.chains.len(),
                    sets = desired.sets.len(),
                    elapsed = ?started.elapsed(),
                    "network policy rules applied"
                );
                (applied, retry) = (Some(desired), false);
            }
            Err(e) => {
                tracing::error!(error = %e, "network policy rules not applied: making the table afresh");
                (applied, retry) = (None, true);
            }
        }
    }
    let mut transaction = nft::Transaction::new(&table);
    transaction.delete_table();
    if let Err(e) = crate::nft::apply(&transaction.into_document()).await {
        tracing::warn!(error = %e, "cannot remove the network policy table");
    }
    tracing::info!("network policies no longer enforced");
}

/// The store an event went to when it ends a list (Some), as a watch (re)start does.
fn seen<K>(source: Source, event: Result<watcher::Event<K>, watcher::Error>) -> Result<Option<Source>, watcher::Error> {
    Ok(matches!(event?, watcher::Event::InitDone).then_some(source))
}

fn desired(
    policies: &Store<NetworkPolicy>,
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    node_name: &str,
) -> model::Rules {
    let (policies, pods, namespaces) = (policies.state(), pods.state(), namespaces.state());
    model::rules(&model::Cluster { policies: &policies, pods: &pods, namespaces: &namespaces }, node_name)
}

/// Keeps of a pod what policies look at (labels, node, host networking, named ports, phase, address): the
/// store holds every pod of the cluster.
fn slim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    let ports_only = |container: Container| Container {
        name: container.name,
        ports: container.ports,
        restart_policy: container.restart_policy,
        ..Container::default()
    };
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            containers: spec.containers.into_iter().map(ports_only).collect(),
            init_containers: spec.init_containers.map(|init| init.into_iter().map(ports_only).collect()),
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus { phase: status.phase, pod_ip: status.pod_ip, ..PodStatus::default() });
    }
}
