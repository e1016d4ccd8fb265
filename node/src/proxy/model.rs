//! What the proxy programs for one Service, computed purely from the Service and its EndpointSlices: one
//! [`ServicePort`] per port, with the endpoints traffic may go to, chosen as kube-proxy chooses them.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use crate::nft::Protocol;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// kube-proxy's default ClientIP affinity: three hours.
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the proxy and the cluster DNS keep of an EndpointSlice: its IPv4 endpoints, one per address, and its
/// ports. With 10,000 Services the caches hold as many slices, and the API's objects (target references,
/// hints, managed fields) are several times larger than what is read of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    /// The API's conditions, defaults applied: a missing `ready` means ready, `serving` defaults to
    /// `ready`, `terminating` to false.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<Box<str>>,
    pub node: Option<Arc<str>>,
}

/// Node names, shared by every endpoint on the node.
#[derive(Default)]
pub struct NodeNames(HashSet<Arc<str>>);

impl NodeNames {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return found.clone();
        }
        let name: Arc<str> = name.into();
        self.0.insert(name.clone());
        name
    }
}

impl Slice {
    /// What is kept of `slice`: nothing of one that is not IPv4.
    pub fn of(slice: &EndpointSlice, nodes: &mut NodeNames) -> Self {
        if slice.address_type != "IPv4" {
            return Slice::default();
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .map(|port| SlicePort {
                name: port.name.clone().unwrap_or_default(),
                protocol: Protocol::parse(port.protocol.as_deref()),
                port: port.port.and_then(|p| u16::try_from(p).ok()),
            })
            .collect();
        let mut endpoints = Vec::new();
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let hostname: Option<Box<str>> = endpoint.hostname.as_deref().map(Into::into);
            let node = endpoint.node_name.as_deref().map(|name| nodes.intern(name));
            for ip in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                let (hostname, node) = (hostname.clone(), node.clone());
                endpoints.push(SliceEndpoint { ip, ready, serving, terminating, hostname, node });
            }
        }
        endpoints.shrink_to_fit();
        Slice { ports, endpoints }
    }
}

/// What the proxy, the cluster DNS and pods' service variables read of a Service. With 10,000 Services the
/// caches hold as many, and the API's object (a few hundred bytes of empty fields before any string) is
/// several times larger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: Box<str>,
    /// `spec.externalName` of an ExternalName Service (which has no other address).
    pub external_name: Option<Box<str>>,
    /// `spec.clusterIPs` (else `spec.clusterIP`), the primary first; none for a headless Service.
    pub cluster_ips: Box<[IpAddr]>,
    /// `spec.externalIPs`, and a LoadBalancer's `status.loadBalancer.ingress` addresses.
    pub external_ips: Box<[Ipv4Addr]>,
    pub ports: Box<[PortInfo]>,
    /// `sessionAffinity: ClientIP`: how long a client sticks to its endpoint, in seconds.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// The Deployment a request wakes while the Service has no endpoint (`skiff.dev/scale-from-zero`).
    pub scales_from_zero: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

impl ServiceInfo {
    pub fn of(service: &Service) -> Self {
        let spec = service.spec.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        let external_name = (kind == "ExternalName").then(|| spec.external_name.as_deref().map(Into::into)).flatten();
        let listed = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.clone(),
            _ => spec.cluster_ip.iter().cloned().collect(),
        };
        let cluster_ips = if kind == "ExternalName" {
            Box::default()
        } else {
            listed.iter().filter_map(|ip| ip.parse().ok()).collect()
        };
        let mut external_ips = ipv4s(spec.external_ips.iter().flatten());
        if kind == "LoadBalancer" {
            let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref());
            external_ips.extend(ipv4s(ingress.into_iter().flatten().filter_map(|i| i.ip.as_ref())));
            external_ips.sort();
            external_ips.dedup();
        }
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let config = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
            config.and_then(|s| u32::try_from(s).ok()).filter(|s| *s > 0).unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some(PortInfo {
                    name: port.name.as_deref().unwrap_or_default().into(),
                    protocol: Protocol::parse(port.protocol.as_deref())?,
                    port: u16::try_from(port.port).ok()?,
                    node_port: port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
                })
            })
            .collect();
        ServiceInfo {
            name: service.metadata.name.as_deref().unwrap_or_default().into(),
            external_name,
            cluster_ips,
            external_ips: external_ips.into(),
            ports,
            affinity_seconds,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            scales_from_zero: service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(skiff_api::scale_to_zero::SCALES_FROM_ZERO))
                .map(|name| name.as_str().into()),
        }
    }

    /// No virtual address: the DNS answers with the endpoints, and the proxy has nothing to program.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }
}

/// Where a connection to a service port may be sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node: the only endpoints a `Local` traffic policy uses.
    pub local: bool,
}

/// One port of a Service, as the data path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (empty for a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    /// The virtual addresses in the cluster (`spec.clusterIPs`).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub port: u16,
    /// `spec.ports[].nodePort` of NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// Addresses outside the cluster's virtual range the port answers on as well: `spec.externalIPs` and
    /// the load balancer's `status.loadBalancer.ingress`.
    pub external_ips: Vec<Ipv4Addr>,
    /// Endpoints for traffic from inside the cluster (ClusterIP), in the order of their slots
    /// ([`keep_slots`]).
    pub endpoints: Vec<Endpoint>,
    /// Traffic from outside (node ports, external and load balancer addresses) only to this node's
    /// endpoints, keeping the client's address (`externalTrafficPolicy: Local`).
    pub external_local: bool,
    /// Traffic to the cluster IP only to this node's endpoints (`internalTrafficPolicy: Local`).
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`: how long a client sticks to its endpoint, in seconds.
    pub affinity_seconds: Option<u32>,
}

impl ServicePort {
    /// The endpoints for traffic from inside the cluster.
    pub fn internal_endpoints(&self) -> Vec<&Endpoint> {
        self.endpoints.iter().filter(|e| !self.internal_local || e.local).collect()
    }

    /// The endpoints for traffic from outside.
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        self.endpoints.iter().filter(|e| !self.external_local || e.local).collect()
    }
}

fn ipv4s<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = texts.into_iter().filter_map(|t| t.parse().ok()).collect();
    set.into_iter().collect()
}

/// The ports the proxy programs for `service`, given its EndpointSlices; none for a headless or
/// ExternalName Service, which have no virtual address.
pub fn service_ports<'a>(
    service: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a Slice> + Clone,
    node_name: &str,
) -> Vec<ServicePort> {
    let cluster_ips: BTreeSet<Ipv4Addr> = service
        .cluster_ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let cluster_ips: Vec<Ipv4Addr> = cluster_ips.into_iter().collect();
    service
        .ports
        .iter()
        .map(|port| ServicePort {
            endpoints: endpoints(slices.clone(), &port.name, port.protocol, node_name),
            name: port.name.to_string(),
            protocol: port.protocol,
            cluster_ips: cluster_ips.clone(),
            port: port.port,
            node_port: port.node_port,
            external_ips: service.external_ips.to_vec(),
            external_local: service.external_local,
            internal_local: service.internal_local,
            affinity_seconds: service.affinity_seconds,
        })
        .collect()
}

/// `endpoints` in the order of the slots they take (the proxy DNATs the I-th connection choice to the I-th
/// endpoint): those already in `before` keep their slots, new ones fill the freed slots first, and when
/// fewer remain, the last ones move into the holes. So a replaced pod's slot goes to its successor and no
/// other endpoint moves: fewer map elements change, and ClientIP affinity (kept by slot) holds for every
/// client whose endpoint stays in place.
pub fn keep_slots(before: &[Endpoint], endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    let mut slots: Vec<Option<Endpoint>> = before.iter().map(|e| endpoints.contains(e).then(|| e.clone())).collect();
    let mut fresh = endpoints.into_iter().filter(|e| !before.contains(e));
    for slot in slots.iter_mut().filter(|slot| slot.is_none()) {
        *slot = fresh.next();
    }
    slots.extend(fresh.map(Some));
    loop {
        while slots.last().is_some_and(Option::is_none) {
            slots.pop();
        }
        let Some(hole) = slots.iter().position(Option::is_none) else { break };
        slots[hole] = slots.pop().flatten();
    }
    slots.into_iter().flatten().collect()
}

/// The endpoints of the slices' port named `port_name`: the ready ones; if none is ready, the ones still
/// serving while they terminate (kube-proxy's fallback, so that a Service whose every pod is being
/// replaced keeps answering until the last one stops).
fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a Slice>,
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let port = slice.ports.iter().find(|p| p.name == port_name && p.protocol == Some(protocol));
        let Some(port) = port.and_then(|p| p.port) else { continue };
        for endpoint in &slice.endpoints {
            let local = endpoint.node.as_deref() == Some(node_name);
            let found = Endpoint { ip: endpoint.ip, port, local };
            if endpoint.ready && !endpoint.terminating {
                ready.insert(found);
            } else if endpoint.serving && endpoint.terminating {
                terminating.insert(found);
            }
        }
    }
    if ready.is_empty() { terminating.into_iter().collect() } else { ready.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> ServiceInfo {
        let service: Service =
            serde_json::from_value(json!({"metadata": {"name": "shop", "namespace": "default"}, "spec": spec}))
                .unwrap();
        ServiceInfo::of(&service)
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> Slice {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "shop-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "shop"}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
        .unwrap();
        Slice::of(&slice, &mut NodeNames::default())
    }

    fn ep(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    #[test]
    fn a_cluster_ip_port_goes_to_the_ready_endpoints_only() {
        let svc = service(json!({"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"],
                                 "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}));
        let slices = [slice(
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([
                ep("10.42.0.2", "a", true, true, false),
                ep("10.42.1.2", "b", false, false, false),
                ep("10.42.1.3", "b", false, true, true)
            ]),
        )];
        let ports = service_ports(&svc, &slices, "a");
        assert_eq!(ports.len(), 1);
        let port = &ports[0];
        assert_eq!(
            (port.cluster_ips.as_slice(), port.port, port.protocol),
            (&["10.43.0.5".parse().unwrap()][..], 80, Protocol::Tcp)
        );
        assert_eq!(port.endpoints, [Endpoint { ip: "10.42.0.2".parse().unwrap(), port: 8080, local: true }]);
        assert_eq!((port.node_port, port.affinity_seconds, port.external_ips.is_empty()), (None, None, true));
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let svc = service(json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}));
        let slices = [slice(
            json!([{"port": 80}]),
            json!([ep("10.42.0.2", "a", false, true, true), ep("10.42.0.3", "a", false, false, true)]),
        )];
        let ports = service_ports(&svc, &slices, "a");
        assert_eq!(ports[0].endpoints, [Endpoint { ip: "10.42.0.2".parse().unwrap(), port: 80, local: true }]);
    }

    #[test]
    fn headless_and_external_name_services_have_no_ports() {
        assert!(service_ports(&service(json!({"clusterIP": "None", "ports": [{"port": 80}]})), &[], "a").is_empty());
        let external = service(json!({"type": "ExternalName", "externalName": "example.org"}));
        assert!(service_ports(&external, &[], "a").is_empty());
    }

    #[test]
    fn ports_match_slices_by_name_and_protocol() {
        let svc = service(json!({"clusterIP": "10.43.0.9", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}));
        let slices = [slice(
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}]),
            json!([ep("10.42.0.2", "a", true, true, false)]),
        )];
        let ports = service_ports(&svc, &slices, "a");
        let found: Vec<_> = ports.iter().map(|p| (p.protocol, p.endpoints[0].port)).collect();
        assert_eq!(found, [(Protocol::Udp, 5353), (Protocol::Tcp, 5354)]);
    }

    #[test]
    fn endpoints_keep_their_slots() {
        let ep = |last: u8| Endpoint { ip: Ipv4Addr::new(10, 42, 0, last), port: 80, local: false };
        let before = [ep(1), ep(2), ep(3), ep(4)];
        // One replaced: its successor takes its slot.
        assert_eq!(keep_slots(&before, vec![ep(1), ep(3), ep(4), ep(9)]), [ep(1), ep(9), ep(3), ep(4)]);
        // Two gone: the last moves into the hole.
        assert_eq!(keep_slots(&before, vec![ep(1), ep(3)]), [ep(1), ep(3)]);
        assert_eq!(keep_slots(&before, vec![ep(2), ep(3), ep(4)]), [ep(4), ep(2), ep(3)]);
        // More: appended.
        assert_eq!(keep_slots(&before, vec![ep(0), ep(1), ep(2), ep(3), ep(4)]), [ep(1), ep(2), ep(3), ep(4), ep(0)]);
        assert_eq!(keep_slots(&[], vec![ep(2), ep(1)]), [ep(2), ep(1)]);
    }

    #[test]
    fn node_ports_load_balancers_affinity_and_traffic_policies() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.7", "externalIPs": ["192.0.2.9"],
                     "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                     "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.231.0.11"}, {"ip": "192.0.2.9"}]}},
        }))
        .unwrap();
        let slices = [slice(
            json!([{"port": 8080}]),
            json!([ep("10.42.0.2", "a", true, true, false), ep("10.42.1.2", "b", true, true, false)]),
        )];
        let port = &service_ports(&ServiceInfo::of(&svc), &slices, "a")[0];
        assert_eq!(port.node_port, Some(30080));
        assert_eq!(port.external_ips, ["10.231.0.11".parse::<Ipv4Addr>().unwrap(), "192.0.2.9".parse().unwrap()]);
        assert_eq!(port.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert_eq!(port.internal_endpoints().len(), 2);
        let external: Vec<_> = port.external_endpoints().iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(external, ["10.42.0.2"]);
    }
}
