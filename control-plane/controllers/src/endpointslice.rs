//! The EndpointSlice and Endpoints controllers of kube-controller-manager, in one loop over one pod cache: for
//! every Service with a selector, the pods it selects that have an address and have not finished become
//! endpoints, in `discovery.k8s.io/v1` EndpointSlices (ready, serving, terminating) and in the v1 Endpoints of
//! the Service's name (ready and not-ready addresses), each resolved to the ports the Service's ports reach on
//! that pod. What to write is computed purely ([`desired_slices`], [`desired_endpoints`], [`plan`]) and
//! compared with what is stored, so a reconcile that finds nothing changed writes nothing.
//!
//! Services without a selector (and ExternalName ones) are left alone: their slices and Endpoints are written
//! by hand. A deleted Service's slices and Endpoints go with it through their ownerReferences (the garbage
//! collector), since kube-runtime never reconciles an object that is gone.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    self as core, EndpointAddress, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use skiff_api::selectors;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::nodelifecycle::pod_ready;
use crate::replicaset::{is_not_found, owner_reference, parse_selector, selects};

/// The label naming a slice's Service, which kube-proxy and every client select slices by.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label saying which controller manages a slice; slices without ours (hand-written ones) are never touched.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Set on the slices and Endpoints of a headless Service, as Kubernetes does, so service proxies skip them.
const HEADLESS: &str = "service.kubernetes.io/headless";
/// kube-controller-manager's `--max-endpoints-per-slice` default.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// A periodic resync, so a missed event heals without any change.
const RESYNC: Duration = Duration::from_secs(300);

struct Context {
    client: kube::Client,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    shutdown: CancellationToken,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (endpoints, endpoints_writer) = reflector::store::<Endpoints>();
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = controller.store();
    let pod_events = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), Default::default()))
        .default_backoff()
        .touched_objects();
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER}"));
    let slice_events = reflector::reflector(slice_writer, watcher(Api::<EndpointSlice>::all(client.clone()), ours))
        .default_backoff()
        .touched_objects();
    let endpoints_events =
        reflector::reflector(endpoints_writer, watcher(Api::<Endpoints>::all(client.clone()), Default::default()))
            .default_backoff()
            .touched_objects();
    let listed = slices.clone();
    let context = Arc::new(Context { client, pods, slices, endpoints, shutdown: shutdown.clone() });
    controller
        .watches_stream(pod_events, move |pod: Pod| services_of(&pod, &services, &listed))
        .owns_stream(slice_events)
        // Endpoints carry the Service's name, so an Endpoints changed by anyone is put back by its Service.
        .watches_stream(endpoints_events, |endpoints: Endpoints| {
            let reference = ObjectRef::new(&endpoints.name_any());
            endpoints.namespace().map(|ns| reference.within(&ns))
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// The Services to reconcile when `pod` changes: those selecting it now, and those whose slices still list it
/// (it may have just stopped matching, or been deleted).
fn services_of(pod: &Pod, services: &Store<Service>, slices: &Store<EndpointSlice>) -> Vec<ObjectRef<Service>> {
    let namespace = pod.namespace();
    let mut names: HashSet<String> = services
        .state()
        .iter()
        .filter(|service| service.namespace() == namespace)
        .filter(|service| service_selector(service).is_some_and(|s| selects(&s, pod.metadata.labels.as_ref())))
        .map(|service| service.name_any())
        .collect();
    let lists_pod = |slice: &EndpointSlice| {
        slice.endpoints.iter().filter_map(|e| e.target_ref.as_ref()).any(|r| r.name == pod.metadata.name)
    };
    names.extend(
        slices
            .state()
            .iter()
            .filter(|slice| slice.namespace() == namespace && lists_pod(slice))
            .filter_map(|slice| slice.labels().get(SERVICE_NAME).cloned()),
    );
    names
        .into_iter()
        .map(|name| {
            let reference = ObjectRef::new(&name);
            match &namespace {
                Some(ns) => reference.within(ns),
                None => reference,
            }
        })
        .collect()
}

/// The selector of a Service this controller manages endpoints for; None for one without a selector, whose
/// endpoints are written by hand, and for ExternalName services, which have none.
fn service_selector(service: &Service) -> Option<selectors::LabelSelector> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = LabelSelector { match_labels: spec.selector.clone(), match_expressions: None };
    parse_selector(Some(&selector)).ok().flatten()
}

fn error_policy(service: Arc<Service>, error: &Error, _: Arc<Context>) -> Action {
    tracing::debug!(service = %service.name_any(), namespace = ?service.namespace(), %error, "endpoints reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", service = %service.name_any(), namespace = ?service.namespace());
    sync(&service, &context).instrument(span).await
}

async fn sync(service: &Service, context: &Context) -> Result<Action, Error> {
    let Some(namespace) = service.namespace() else { return Ok(Action::await_change()) };
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let caches = async {
        futures::try_join!(
            context.pods.wait_until_ready(),
            context.slices.wait_until_ready(),
            context.endpoints.wait_until_ready()
        )
        .map(drop)
    };
    if !crate::caches_ready(&context.shutdown, caches).await {
        return Ok(Action::await_change());
    }
    let name = service.name_any();
    let selector = service_selector(service);
    let pods: Vec<Arc<Pod>> = match &selector {
        Some(selector) => context
            .pods
            .state()
            .into_iter()
            .filter(|pod| pod.namespace().as_deref() == Some(&namespace))
            .filter(|pod| selects(selector, pod.metadata.labels.as_ref()))
            .collect(),
        None => Vec::new(),
    };
    let existing: Vec<Arc<EndpointSlice>> = context
        .slices
        .state()
        .into_iter()
        .filter(|slice| slice.namespace().as_deref() == Some(&namespace))
        .filter(|slice| slice.labels().get(SERVICE_NAME) == Some(&name))
        .collect();
    // A Service that lost its selector keeps no slice of ours: their endpoints would be stale for good.
    let desired = if selector.is_some() { desired_slices(service, &pods) } else { Vec::new() };
    let plan = plan(desired, &existing);
    let slices: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
    for slice in &plan.create {
        slices.create(&PostParams::default(), slice).await?;
        tracing::debug!(slice = %slice.name_any(), "created endpointslice");
    }
    for slice in &plan.update {
        slices.replace(&slice.name_any(), &PostParams::default(), slice).await?;
        tracing::debug!(slice = %slice.name_any(), "updated endpointslice");
    }
    for name in &plan.delete {
        match slices.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::debug!(slice = %name, "deleted endpointslice"),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(error.into()),
        }
    }
    if selector.is_some() {
        let desired = desired_endpoints(service, &pods);
        let current = context.endpoints.get(&ObjectRef::new(&name).within(&namespace));
        let endpoints: Api<Endpoints> = Api::namespaced(context.client.clone(), &namespace);
        match current {
            None => {
                endpoints.create(&PostParams::default(), &desired).await?;
            }
            Some(current) if !same_endpoints(&current, &desired) => {
                let updated = Endpoints {
                    metadata: ObjectMeta {
                        labels: desired.metadata.labels,
                        owner_references: desired.metadata.owner_references,
                        ..current.metadata.clone()
                    },
                    subsets: desired.subsets,
                };
                endpoints.replace(&name, &PostParams::default(), &updated).await?;
            }
            Some(_) => {}
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// The protocol of a port, which the API server defaults to TCP.
fn protocol(protocol: Option<&String>) -> &str {
    protocol.map_or("TCP", String::as_str)
}

/// The port `service_port` reaches on `pod`, as Kubernetes' `FindPort`: a number as is (absent or zero means
/// the Service's own port), a name looked up among the container ports of the same protocol of the pod's
/// containers and sidecars. None when the pod has no port of that name.
fn target_port(service_port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &service_port.target_port {
        None | Some(IntOrString::Int(0)) => Some(service_port.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars =
                spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_ref() == Some(name)
                        && protocol(p.protocol.as_ref()) == protocol(service_port.protocol.as_ref())
                })
                .map(|p| p.container_port)
        }
    }
}

/// The Service's ports as they resolve on `pod`, in the Service's order; ports the pod lacks are left out.
fn endpoint_ports(ports: &[ServicePort], pod: &Pod) -> Vec<EndpointPort> {
    ports
        .iter()
        .filter_map(|port| {
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(target_port(port, pod)?),
                protocol: Some(protocol(port.protocol.as_ref()).to_string()),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// The pod's IPv4 address if it may be an endpoint at all: it has one and has not finished.
fn endpoint_address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    // Services are IPv4 single-stack, so their slices carry IPv4 addresses only.
    status.pod_ip.clone().filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
}

fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The slice endpoint of `pod`, as Kubernetes' `podToEndpoint`: `serving` is the Ready condition, `ready` is
/// serving and not terminating (or anything, with publishNotReadyAddresses).
fn pod_endpoint(publish_not_ready: bool, pod: &Pod, address: String) -> Endpoint {
    let serving = pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Endpoint {
        addresses: vec![address],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        target_ref: Some(pod_reference(pod)),
        ..Endpoint::default()
    }
}

/// Labels of the Service's slices and Endpoints: the Service's own, and headless for a headless Service.
fn service_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels().clone();
    if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS.into(), String::new());
    }
    labels
}

/// A short, stable name suffix: the same group and index give the same slice name in every reconcile and
/// every controller process.
fn slice_name(service: &str, ports: &[EndpointPort], index: usize) -> String {
    let key = serde_json::to_string(&(ports, index)).unwrap_or_default();
    format!("{service}-{}", crate::stable_hash(&key))
}

/// The slices `service` should have for `pods` (those its selector matches): pods grouped by the ports they
/// resolve to (pods whose ports differ cannot share a slice), each group split into slices of at most
/// [`MAX_ENDPOINTS_PER_SLICE`], endpoints ordered by address. With no endpoint at all, one empty slice, as
/// Kubernetes keeps a placeholder so that clients can tell "no endpoints" from "not handled yet".
///
/// Names are deterministic, `<service>-<hash of the group's ports and the slice's index>`, where Kubernetes
/// uses `generateName`: a reconcile working from a cache that has not yet seen the previous one's create then
/// fails with a conflict and retries, instead of creating a second slice listing the same pods.
pub(crate) fn desired_slices(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSlice> {
    let spec = service.spec.clone().unwrap_or_default();
    let service_ports = spec.ports.unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        let Some(address) = endpoint_address(pod) else { continue };
        let ports = endpoint_ports(&service_ports, pod);
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups.entry(key).or_insert_with(|| (ports, Vec::new())).1.push(pod_endpoint(publish_not_ready, pod, address));
    }
    if groups.is_empty() {
        groups.insert(String::new(), (Vec::new(), Vec::new()));
    }
    let name = service.name_any();
    let mut labels = service_labels(service);
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), CONTROLLER.into());
    let mut slices = Vec::new();
    for (ports, mut endpoints) in groups.into_values() {
        endpoints.sort_by_key(|e| (e.addresses.clone(), e.target_ref.as_ref().and_then(|r| r.name.clone())));
        let chunks: Vec<Vec<Endpoint>> = match endpoints.is_empty() {
            true => vec![Vec::new()],
            false => endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).map(<[Endpoint]>::to_vec).collect(),
        };
        for (index, endpoints) in chunks.into_iter().enumerate() {
            slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name(&name, &ports, index)),
                    namespace: service.namespace(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner_reference(service)]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                // An empty list is stored as absent; writing it as absent keeps the comparison exact.
                ports: (!ports.is_empty()).then(|| ports.clone()),
            });
        }
    }
    slices
}

/// The writes that turn `existing` (the Service's slices that this controller manages) into `desired`.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub create: Vec<EndpointSlice>,
    /// Stored slices with their new content, keeping their resourceVersion as a precondition.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

/// Compares by what this controller sets, so a slice that already says it is left as it is.
pub(crate) fn plan(desired: Vec<EndpointSlice>, existing: &[Arc<EndpointSlice>]) -> Plan {
    let mut plan = Plan::default();
    let wanted: HashSet<String> = desired.iter().map(|s| s.name_any()).collect();
    for slice in desired {
        match existing.iter().find(|e| e.metadata.name == slice.metadata.name) {
            None => plan.create.push(slice),
            Some(current) if same_slice(current, &slice) => {}
            Some(current) => plan.update.push(EndpointSlice {
                metadata: ObjectMeta {
                    labels: slice.metadata.labels,
                    owner_references: slice.metadata.owner_references,
                    ..current.metadata.clone()
                },
                ..slice
            }),
        }
    }
    plan.delete = existing.iter().map(|e| e.name_any()).filter(|name| !wanted.contains(name)).collect();
    plan
}

fn same_slice(current: &EndpointSlice, desired: &EndpointSlice) -> bool {
    current.metadata.labels == desired.metadata.labels
        && current.metadata.owner_references == desired.metadata.owner_references
        && current.address_type == desired.address_type
        && current.endpoints == desired.endpoints
        && current.ports == desired.ports
}

fn same_endpoints(current: &Endpoints, desired: &Endpoints) -> bool {
    let labels = |e: &Endpoints| e.metadata.labels.clone().unwrap_or_default();
    labels(current) == labels(desired)
        && current.metadata.owner_references == desired.metadata.owner_references
        && current.subsets.as_deref().unwrap_or_default() == desired.subsets.as_deref().unwrap_or_default()
}

/// The v1 Endpoints of `service` for `pods` (those its selector matches), as Kubernetes' endpoints controller
/// writes them: terminating pods are left out (unless publishNotReadyAddresses), and so is a pod none of the
/// Service's ports resolve on; addresses sharing the same resolved ports form one subset, ready ones under
/// `addresses` and the others under `notReadyAddresses`.
pub(crate) fn desired_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Endpoints {
    let spec = service.spec.clone().unwrap_or_default();
    let service_ports = spec.ports.unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut subsets: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = endpoint_address(pod) else { continue };
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
            continue;
        }
        let ports: Vec<core::EndpointPort> = endpoint_ports(&service_ports, pod)
            .into_iter()
            .map(|p| core::EndpointPort {
                name: p.name.filter(|n| !n.is_empty()),
                port: p.port.unwrap_or_default(),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        // A headless Service may have no ports; one with ports that this pod lacks all cannot reach it.
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            target_ref: Some(pod_reference(pod)),
            ..EndpointAddress::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let subset = subsets.entry(key).or_insert_with(|| EndpointSubset {
            ports: (!ports.is_empty()).then_some(ports),
            ..EndpointSubset::default()
        });
        let list = match publish_not_ready || pod_ready(pod) {
            true => &mut subset.addresses,
            false => &mut subset.not_ready_addresses,
        };
        list.get_or_insert_with(Vec::new).push(address);
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_values()
        .map(|mut subset| {
            for list in [&mut subset.addresses, &mut subset.not_ready_addresses].into_iter().flatten() {
                list.sort_by_key(|a| (a.ip.clone(), a.target_ref.as_ref().and_then(|r| r.name.clone())));
            }
            subset
        })
        .collect();
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.namespace(),
            labels: Some(service_labels(service)).filter(|l| !l.is_empty()),
            owner_references: Some(vec![owner_reference(service)]),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": spec,
        }))
        .unwrap()
    }

    /// A running pod at `ip` on node `n1`; `ready` sets its Ready condition.
    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    fn http_port() -> serde_json::Value {
        json!([{"name": "http", "containerPort": 8080}])
    }

    fn named_service() -> Service {
        service(json!({"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}))
    }

    fn terminating(pod: &Pod) -> Arc<Pod> {
        let mut pod = pod.clone();
        pod.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        Arc::new(pod)
    }

    /// (pod name, ready, serving, terminating) of every endpoint of every slice.
    fn conditions(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
        slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                let name = e.target_ref.as_ref().unwrap().name.clone().unwrap();
                (name, c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect()
    }

    #[test]
    fn endpoints_are_ready_serving_or_terminating_as_their_pods() {
        let ready = pod("a", "10.42.0.1", true, http_port());
        let unready = pod("b", "10.42.0.2", false, http_port());
        let leaving = terminating(&pod("c", "10.42.0.3", true, http_port()));
        let no_ip: Arc<Pod> = Arc::new(Pod { status: None, ..(*pod("d", "", true, http_port())).clone() });
        let mut done = (*pod("e", "10.42.0.5", false, http_port())).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = vec![ready, unready, leaving, no_ip, Arc::new(done)];

        let slices = desired_slices(&named_service(), &pods);
        assert_eq!(slices.len(), 1);
        assert_eq!(
            conditions(&slices),
            [("a".into(), true, true, false), ("b".into(), false, false, false), ("c".into(), false, true, true)]
        );
        let slice = &slices[0];
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.addresses, ["10.42.0.1"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("n1"));
        let target = endpoint.target_ref.clone().unwrap();
        assert_eq!(
            (target.kind.as_deref(), target.namespace.as_deref(), target.uid.as_deref()),
            (Some("Pod"), Some("ns"), Some("uid-a"))
        );
        assert_eq!(slice.address_type, "IPv4");
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port, port.protocol.as_deref()), (Some("web"), Some(8080), Some("TCP")));
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME], "web");
        assert_eq!(labels[MANAGED_BY], CONTROLLER);
        assert_eq!(labels["team"], "a");
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller, owner.block_owner_deletion),
            ("Service", "svc-uid", Some(true), Some(true))
        );
        assert!(slice.metadata.name.as_deref().unwrap().starts_with("web-"));

        let endpoints = desired_endpoints(&named_service(), &pods);
        let subsets = endpoints.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let ips = |list: &Option<Vec<EndpointAddress>>| list.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.42.0.2"], "the terminating pod is left out");
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(endpoints.metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_endpoint_ready() {
        let mut svc = named_service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let pods =
            vec![pod("a", "10.42.0.1", false, http_port()), terminating(&pod("b", "10.42.0.2", false, http_port()))];
        assert_eq!(
            conditions(&desired_slices(&svc, &pods)),
            [("a".into(), true, false, false), ("b".into(), true, false, true)]
        );
        let subsets = desired_endpoints(&svc, &pods).subsets.unwrap();
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(2));
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn pods_resolving_different_ports_go_to_different_slices() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ]}));
        let pods = vec![
            pod("a", "10.42.0.1", true, http_port()),
            pod("b", "10.42.0.2", true, json!([{"name": "http", "containerPort": 9000}])),
            pod("c", "10.42.0.3", true, json!([])),
            // The named port is UDP, the Service's TCP: no match.
            pod("d", "10.42.0.4", true, json!([{"name": "http", "containerPort": 8080, "protocol": "UDP"}])),
        ];
        let slices = desired_slices(&svc, &pods);
        let mut groups: Vec<(Vec<Option<i32>>, Vec<String>)> = slices
            .iter()
            .map(|s| {
                let ports = s.ports.iter().flatten().map(|p| p.port).collect();
                (ports, s.endpoints.iter().map(|e| e.addresses[0].clone()).collect())
            })
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                (vec![Some(8080), Some(9090)], vec!["10.42.0.1".to_string()]),
                (vec![Some(9000), Some(9090)], vec!["10.42.0.2".to_string()]),
                (vec![Some(9090)], vec!["10.42.0.3".to_string(), "10.42.0.4".to_string()]),
            ]
        );
        let names: HashSet<String> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(names.len(), 3);

        // Endpoints: one subset per port set; a pod lacking only the named port still serves `metrics`.
        let subsets = desired_endpoints(&svc, &pods).subsets.unwrap();
        assert_eq!(subsets.len(), 3);
        let svc = named_service();
        let lacking = vec![pod("c", "10.42.0.3", true, json!([]))];
        assert!(desired_endpoints(&svc, &lacking).subsets.is_none(), "no port of the Service reaches it");
        assert!(desired_slices(&svc, &lacking)[0].ports.is_none(), "Kubernetes lists it with no ports");
    }

    #[test]
    fn numeric_and_absent_target_ports() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [
            {"name": "a", "port": 80, "targetPort": 8080},
            {"name": "b", "port": 81, "protocol": "UDP"},
        ]}));
        let slices = desired_slices(&svc, &[pod("a", "10.42.0.1", true, json!([]))]);
        let ports: Vec<(Option<i32>, Option<String>)> =
            slices[0].ports.iter().flatten().map(|p| (p.port, p.protocol.clone())).collect();
        assert_eq!(ports, [(Some(8080), Some("TCP".into())), (Some(81), Some("UDP".into()))]);
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints() {
        let pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| pod(&format!("p{i}"), &format!("10.42.{}.{}", i / 200, i % 200 + 1), true, http_port()))
            .collect();
        let slices = desired_slices(&named_service(), &pods);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let names: HashSet<String> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(names.len(), 3, "each slice has a name of its own");
        let all: HashSet<&String> = slices.iter().flat_map(|s| &s.endpoints).flat_map(|e| &e.addresses).collect();
        assert_eq!(all.len(), 250);
    }

    #[test]
    fn a_service_without_endpoints_keeps_one_empty_slice() {
        let slices = desired_slices(&named_service(), &[]);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty() && slices[0].ports.is_none());
        assert!(desired_endpoints(&named_service(), &[]).subsets.is_none());
    }

    /// The object as the API stores and returns it: through JSON, with server-owned metadata added.
    fn stored(slice: &EndpointSlice) -> Arc<EndpointSlice> {
        let mut value = serde_json::to_value(slice).unwrap();
        value["metadata"]["resourceVersion"] = json!("7");
        value["metadata"]["uid"] = json!("slice-uid");
        value["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn nothing_is_written_when_nothing_changed() {
        let svc = named_service();
        let pods = vec![pod("a", "10.42.0.1", true, http_port()), pod("b", "10.42.0.2", false, http_port())];
        let existing: Vec<Arc<EndpointSlice>> = desired_slices(&svc, &pods).iter().map(stored).collect();
        let unchanged = plan(desired_slices(&svc, &pods), &existing);
        assert!(
            unchanged.create.is_empty() && unchanged.update.is_empty() && unchanged.delete.is_empty(),
            "{unchanged:?}"
        );

        // b turns ready: the one slice is updated in place, keeping its resourceVersion as a precondition.
        let pods = vec![pods[0].clone(), pod("b", "10.42.0.2", true, http_port())];
        let changed = plan(desired_slices(&svc, &pods), &existing);
        assert!(changed.create.is_empty() && changed.delete.is_empty());
        assert_eq!(changed.update.len(), 1);
        assert_eq!(changed.update[0].metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(conditions(&changed.update)[1], ("b".into(), true, true, false));

        // Every pod gone: the placeholder replaces the slice.
        let emptied = plan(desired_slices(&svc, &[]), &existing);
        assert_eq!((emptied.create.len(), emptied.update.len()), (1, 0));
        assert_eq!(emptied.delete, [existing[0].name_any()]);

        let endpoints = desired_endpoints(&svc, &pods);
        let mut round_trip: Endpoints = serde_json::from_value(serde_json::to_value(&endpoints).unwrap()).unwrap();
        round_trip.metadata.resource_version = Some("9".into());
        assert!(same_endpoints(&round_trip, &endpoints));
        assert!(!same_endpoints(&round_trip, &desired_endpoints(&svc, &pods[..1])));
    }
}
