//! What the proxy programs for one Service, computed purely from the Service and its EndpointSlices: one
//! [`ServicePort`] per port, with the endpoints traffic may go to, chosen as kube-proxy chooses them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

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
    pub service: ServiceKey,
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
    /// Endpoints for traffic from inside the cluster (ClusterIP), in a stable order.
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

    /// Whether the port is reachable from outside at all.
    pub fn is_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

fn ipv4s<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = texts.into_iter().filter_map(|t| t.parse().ok()).collect();
    set.into_iter().collect()
}

/// The ports the proxy programs for `service`, given its EndpointSlices; none for a headless or
/// ExternalName Service, which have no virtual address.
pub fn service_ports<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    node_name: &str,
) -> Vec<ServicePort> {
    let Some(spec) = &service.spec else { return Vec::new() };
    let key = ServiceKey {
        namespace: service.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: service.metadata.name.clone().unwrap_or_default(),
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Vec::new();
    }
    let cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ipv4s(ips),
        _ => ipv4s(spec.cluster_ip.iter()),
    };
    if cluster_ips.is_empty() {
        return Vec::new();
    }
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
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let ports = spec.ports.iter().flatten();
    ports
        .filter_map(|port| {
            let protocol = Protocol::parse(port.protocol.as_deref())?;
            let name = port.name.clone().unwrap_or_default();
            Some(ServicePort {
                service: key.clone(),
                endpoints: endpoints(slices.clone(), &name, protocol, node_name),
                name,
                protocol,
                cluster_ips: cluster_ips.clone(),
                port: u16::try_from(port.port).ok()?,
                node_port: port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
                external_ips: external_ips.clone(),
                external_local,
                internal_local,
                affinity_seconds,
            })
        })
        .collect()
}

/// The endpoints of the slices' port named `port_name`: the ready ones; if none is ready, the ones still
/// serving while they terminate (kube-proxy's fallback, so that a Service whose every pod is being
/// replaced keeps answering until the last one stops).
fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(port) = port.and_then(|p| u16::try_from(p.port?).ok()) else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // The API says a missing `ready` means ready, and `serving` defaults to `ready`.
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let local = endpoint.node_name.as_deref() == Some(node_name);
            for ip in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                let found = Endpoint { ip, port, local };
                if is_ready && !is_terminating {
                    ready.insert(found);
                } else if serving && is_terminating {
                    terminating.insert(found);
                }
            }
        }
    }
    if ready.is_empty() { terminating.into_iter().collect() } else { ready.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "shop", "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "shop-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "shop"}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
        .unwrap()
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
        assert_eq!((port.node_port, port.affinity_seconds, port.is_external()), (None, None, false));
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
        let port = &service_ports(&svc, &slices, "a")[0];
        assert_eq!(port.node_port, Some(30080));
        assert_eq!(port.external_ips, ["10.231.0.11".parse::<Ipv4Addr>().unwrap(), "192.0.2.9".parse().unwrap()]);
        assert_eq!(port.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert_eq!(port.internal_endpoints().len(), 2);
        let external: Vec<_> = port.external_endpoints().iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(external, ["10.42.0.2"]);
    }
}
