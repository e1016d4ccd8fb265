//! Ingress status, as an ingress controller publishes where it listens: every node serves the Ingresses of
//! Skiff's classes (IngressClasses whose controller is `skiff.dev/ingress`) on its HTTP and HTTPS ports, so
//! each such Ingress's `status.loadBalancer.ingress` lists the InternalIP of each Ready node, the addresses
//! k3s's ServiceLB gives Traefik's LoadBalancer Service. Ingresses of other classes belong to another
//! controller and are left alone.
//!
//! The Ready nodes' addresses come from the servicelb controller's node cache and its change stream, so
//! both controllers agree on them; every Ingress is looked at again when they change, or a class does.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_api::ingress::{SKIFF_CONTROLLER, served_by};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::servicelb::{node_addresses, ready_addresses};

struct Context {
    client: kube::Client,
    nodes: Store<Node>,
    classes: Store<IngressClass>,
    shutdown: CancellationToken,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (nodes, node_changes) = node_addresses(&client);
    let (classes, writer) = reflector::store::<IngressClass>();
    let class_changes =
        reflector::reflector(writer, watcher(Api::<IngressClass>::all(client.clone()), Default::default()))
            .default_backoff()
            .filter_map(|event| {
                let changed = matches!(
                    event,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
                );
                std::future::ready(changed.then_some(()))
            });
    let context = Arc::new(Context { client: client.clone(), nodes, classes, shutdown: shutdown.clone() });
    Controller::new(Api::<Ingress>::all(client), watcher::Config::default())
        .reconcile_all_on(futures::stream::select(node_changes, class_changes))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

fn error_policy(ingress: Arc<Ingress>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(ingress = %ingress.name_any(), namespace = ?ingress.namespace(), error = ?error, "ingress status reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ingress: Arc<Ingress>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", ingress = %ingress.name_any(), namespace = ?ingress.namespace());
    sync(&ingress, &context).instrument(span).await
}

async fn sync(ingress: &Ingress, context: &Context) -> Result<Action, Error> {
    let Some(namespace) = ingress.namespace() else { return Ok(Action::await_change()) };
    let ready = async {
        context.nodes.wait_until_ready().await?;
        context.classes.wait_until_ready().await
    };
    if !crate::caches_ready(&context.shutdown, ready).await {
        return Ok(Action::await_change());
    }
    let classes: Vec<IngressClass> = context.classes.state().iter().map(|class| (**class).clone()).collect();
    let Some(desired) = desired_status(ingress, &classes, &context.nodes.state()) else {
        return Ok(Action::await_change());
    };
    let current = ingress.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone());
    if current.unwrap_or_default() == desired {
        return Ok(Action::await_change());
    }
    let addresses = (!desired.is_empty()).then_some(desired);
    let patch = json!({"status": {"loadBalancer": {"ingress": addresses}}});
    let ingresses: Api<Ingress> = Api::namespaced(context.client.clone(), &namespace);
    ingresses.patch_status(&ingress.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(ingress = %patch["status"]["loadBalancer"]["ingress"], "ingress status set");
    Ok(Action::await_change())
}

/// The load balancer status of `ingress`: each Ready node's InternalIP when Skiff's nodes serve it, None
/// when another controller does.
fn desired_status(
    ingress: &Ingress,
    classes: &[IngressClass],
    nodes: &[Arc<Node>],
) -> Option<Vec<IngressLoadBalancerIngress>> {
    served_by(ingress, classes, SKIFF_CONTROLLER).then(|| {
        let addresses = ready_addresses(nodes).into_iter();
        addresses.map(|ip| IngressLoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() }).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, ip: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}],
                           "addresses": [{"type": "InternalIP", "address": ip}]},
            }))
            .unwrap(),
        )
    }

    fn class(name: &str, controller: &str) -> IngressClass {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"controller": controller}})).unwrap()
    }

    fn ingress(class: &str) -> Ingress {
        serde_json::from_value(
            json!({"metadata": {"name": "shop", "namespace": "web"}, "spec": {"ingressClassName": class}}),
        )
        .unwrap()
    }

    #[test]
    fn skiffs_ingresses_get_the_ready_nodes_and_others_are_left_alone() {
        let classes = [class("skiff", SKIFF_CONTROLLER), class("nginx", "k8s.io/ingress-nginx")];
        let nodes = [node("b", "True", "10.0.0.2"), node("a", "True", "10.0.0.1"), node("c", "False", "10.0.0.3")];
        let ips: Vec<Option<String>> =
            desired_status(&ingress("skiff"), &classes, &nodes).unwrap().into_iter().map(|i| i.ip).collect();
        assert_eq!(ips, [Some("10.0.0.1".into()), Some("10.0.0.2".into())]);
        assert_eq!(desired_status(&ingress("nginx"), &classes, &nodes), None);
        assert_eq!(desired_status(&ingress("skiff"), &classes, &[]), Some(vec![]));
    }
}
