//! LoadBalancer Services without a cloud, as k3s's ServiceLB: every Ready node accepts a LoadBalancer
//! Service's traffic on its ports (the node's service proxy does the rest), so the Service's
//! `status.loadBalancer.ingress` lists the InternalIP of each Ready node. Services naming a
//! `loadBalancerClass` belong to another implementation and are left alone.
//!
//! Its own loop rather than part of the endpointslice controller: it needs Nodes and no pods, and every
//! Service is looked at again when the set of Ready nodes' addresses changes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;

struct Context {
    client: kube::Client,
    nodes: Store<Node>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (nodes, writer) = reflector::store::<Node>();
    let mut seen: HashMap<String, Option<IpAddr>> = HashMap::new();
    // Every Service is looked at again when a node's ingress address comes or goes; heartbeats change nothing.
    let node_changes = reflector::reflector(writer, watcher(Api::<Node>::all(client.clone()), Default::default()))
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    let address = ingress_address(&node);
                    seen.insert(node.name_any(), address) != Some(address)
                }
                Ok(watcher::Event::Delete(node)) => seen.remove(&node.name_any()).is_some(),
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) | Err(_) => false,
            };
            std::future::ready(changed.then_some(()))
        });
    let context = Arc::new(Context { client: client.clone(), nodes });
    Controller::new(Api::<Service>::all(client), watcher::Config::default())
        .reconcile_all_on(node_changes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

fn error_policy(service: Arc<Service>, error: &Error, _: Arc<Context>) -> Action {
    tracing::debug!(service = %service.name_any(), namespace = ?service.namespace(), %error, "servicelb reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", service = %service.name_any(), namespace = ?service.namespace());
    sync(&service, &context).instrument(span).await
}

async fn sync(service: &Service, context: &Context) -> Result<Action, Error> {
    let Some(namespace) = service.namespace() else { return Ok(Action::await_change()) };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.load_balancer_class.is_some() {
        return Ok(Action::await_change());
    }
    if context.nodes.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    // A Service that stopped being a LoadBalancer loses the addresses it was given.
    let desired = match spec.type_.as_deref() {
        Some("LoadBalancer") => ingress(&context.nodes.state()),
        _ => Vec::new(),
    };
    let current = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone());
    if current.unwrap_or_default() == desired {
        return Ok(Action::await_change());
    }
    let ingress = (!desired.is_empty()).then_some(desired);
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    let services: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
    services.patch_status(&service.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(ingress = %patch["status"]["loadBalancer"]["ingress"], "load balancer status set");
    Ok(Action::await_change())
}

/// The InternalIP of a Ready node, where a LoadBalancer Service is reached.
fn ingress_address(node: &Node) -> Option<IpAddr> {
    let status = node.status.as_ref()?;
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    status.addresses.iter().flatten().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse().ok())
}

/// The ingress of every LoadBalancer Service: each Ready node's InternalIP, in address order, once each.
fn ingress(nodes: &[Arc<Node>]) -> Vec<LoadBalancerIngress> {
    let addresses: BTreeSet<IpAddr> = nodes.iter().filter_map(|node| ingress_address(node)).collect();
    addresses.into_iter().map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, ip: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}],
                           "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ingress_lists_ready_nodes_once_each_in_address_order() {
        let nodes = vec![
            node("c", "True", "10.0.0.10"),
            node("a", "True", "10.0.0.9"),
            node("b", "True", "10.0.0.9"),
            node("down", "Unknown", "10.0.0.1"),
            node("odd", "True", "not an address"),
        ];
        let ips: Vec<Option<String>> = ingress(&nodes).into_iter().map(|i| i.ip).collect();
        assert_eq!(ips, [Some("10.0.0.9".into()), Some("10.0.0.10".into())]);
        assert!(ingress(&[]).is_empty());
    }
}
