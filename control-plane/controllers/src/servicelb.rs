//! LoadBalancer Services without a cloud, as k3s's ServiceLB: every Ready node accepts a LoadBalancer
//! Service's traffic on its ports (the node's service proxy does the rest), so the Service's
//! `status.loadBalancer.ingress` lists the InternalIP of each Ready node. Services naming a
//! `loadBalancerClass` belong to another implementation and are left alone.
//!
//! Services every node serves itself (the cluster DNS, a server inside each agent), labelled
//! [`SERVED_BY_NODES`], get from the same loop an EndpointSlice of each Ready node's InternalIP, with the
//! node's name, so `internalTrafficPolicy: Local` keeps each node's queries on the node.
//!
//! Its own loop rather than part of the endpointslice controller: it needs Nodes and no pods, and every
//! Service is looked at again when the set of Ready nodes' addresses changes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;

/// The label of a Service whose endpoints are the nodes themselves (value `true`).
pub const SERVED_BY_NODES: &str = "skiff.dev/served-by-nodes";
/// The field manager, and the slices' managed-by label: the endpointslice controller leaves them alone.
const MANAGER: &str = "servicelb.skiff.dev";

struct Context {
    client: kube::Client,
    nodes: Store<Node>,
    shutdown: CancellationToken,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (nodes, node_changes) = node_addresses(&client);
    let context = Arc::new(Context { client: client.clone(), nodes, shutdown: shutdown.clone() });
    Controller::new(Api::<Service>::all(client), watcher::Config::default())
        .reconcile_all_on(node_changes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// A cache of the Nodes, and a stream that yields when a node's ingress address comes or goes (heartbeats
/// change nothing): what a controller handing out the Ready nodes' addresses reconciles everything on.
pub(crate) fn node_addresses(client: &kube::Client) -> (Store<Node>, impl futures::Stream<Item = ()> + Send + 'static) {
    let (nodes, writer) = reflector::store::<Node>();
    let mut seen: HashMap<String, Option<IpAddr>> = HashMap::new();
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
    (nodes, node_changes)
}

fn error_policy(service: Arc<Service>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(service = %service.name_any(), namespace = ?service.namespace(), error = ?error, "servicelb reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", service = %service.name_any(), namespace = ?service.namespace());
    sync(&service, &context).instrument(span).await
}

async fn sync(service: &Service, context: &Context) -> Result<Action, Error> {
    let Some(namespace) = service.namespace() else { return Ok(Action::await_change()) };
    if !crate::caches_ready(&context.shutdown, context.nodes.wait_until_ready()).await {
        return Ok(Action::await_change());
    }
    let nodes = context.nodes.state();
    if service.labels().get(SERVED_BY_NODES).is_some_and(|v| v == "true") {
        let slices: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
        let slice = node_endpoints(service, &nodes);
        // Applying what is already there writes nothing: the API server skips no-op updates.
        let params = PatchParams::apply(MANAGER).force();
        slices.patch(&slice.name_any(), &params, &Patch::Apply(&slice)).await?;
    }
    let spec = service.spec.clone().unwrap_or_default();
    if spec.load_balancer_class.is_some() {
        return Ok(Action::await_change());
    }
    // A Service that stopped being a LoadBalancer loses the addresses it was given.
    let desired = match spec.type_.as_deref() {
        Some("LoadBalancer") => ingress(&nodes),
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

/// The EndpointSlice of a Service served by every node: each Ready node's InternalIP on the Service's
/// target ports, owned by the Service.
fn node_endpoints(service: &Service, nodes: &[Arc<Node>]) -> EndpointSlice {
    let mut ready: Vec<(IpAddr, String)> =
        nodes.iter().filter_map(|node| Some((ingress_address(node)?, node.name_any()))).collect();
    ready.sort();
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref()).into_iter().flatten();
    let ports: Vec<serde_json::Value> = ports
        .map(|port| {
            let target = match &port.target_port {
                Some(IntOrString::Int(number)) => *number,
                _ => port.port,
            };
            json!({"name": port.name.clone().unwrap_or_default(), "protocol": port.protocol.as_deref().unwrap_or("TCP"), "port": target})
        })
        .collect();
    let endpoints: Vec<serde_json::Value> = ready
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip.to_string()], "nodeName": node, "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    let name = service.name_any();
    let owner = json!({"apiVersion": "v1", "kind": "Service", "name": name, "uid": service.uid(), "controller": true, "blockOwnerDeletion": true});
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-nodes"),
            "namespace": service.namespace(),
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGER},
            "ownerReferences": [owner],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
    .expect("an EndpointSlice's shape")
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

/// Each Ready node's InternalIP, in address order, once each.
pub(crate) fn ready_addresses(nodes: &[Arc<Node>]) -> BTreeSet<IpAddr> {
    nodes.iter().filter_map(|node| ingress_address(node)).collect()
}

/// The ingress of every LoadBalancer Service: the Ready nodes' addresses.
fn ingress(nodes: &[Arc<Node>]) -> Vec<LoadBalancerIngress> {
    let addresses = ready_addresses(nodes);
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

    #[test]
    fn a_service_served_by_nodes_gets_the_ready_nodes_as_endpoints() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "uid": "u1", "labels": {SERVED_BY_NODES: "true"}},
            "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}, {"name": "dns-tcp", "port": 53}]},
        }))
        .unwrap();
        let nodes =
            vec![node("b", "True", "10.0.0.2"), node("a", "True", "10.0.0.1"), node("down", "False", "10.0.0.3")];
        let slice = serde_json::to_value(node_endpoints(&service, &nodes)).unwrap();
        assert_eq!(slice["metadata"]["name"], "kube-dns-nodes");
        assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "kube-dns");
        let endpoints: Vec<(&str, &str)> = slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["addresses"][0].as_str().unwrap(), e["nodeName"].as_str().unwrap()))
            .collect();
        assert_eq!(endpoints, [("10.0.0.1", "a"), ("10.0.0.2", "b")]);
        assert_eq!(
            slice["ports"],
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
        );
    }
}
