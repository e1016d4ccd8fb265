//! The `kubernetes` Service in `default`, through which pods reach the API (the first address of the service
//! range, port 443), and its Endpoints and EndpointSlice listing the API servers, which kube-apiserver writes
//! itself rather than leaving to the endpoints controllers (the Service has no selector).
//!
//! Every server renews a lease of its own in the store every [`RENEW`] and writes the addresses whose leases
//! are live, as kube-apiserver's "lease" endpoint reconciler does; its leases are plain etcd keys too, so here
//! they live outside `/registry/` where no API lists them. Servers agree on what to write, so once the
//! endpoints say it a reconcile writes nothing; a server that stops renewing drops out after [`LEASE_TTL`],
//! and one that shuts down takes itself out at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use skiff_api::resources::{self, ResourceDef};
use skiff_api::selectors::LabelSelector;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::objects::{self, DeleteOptions, ListOptions, Objects, Part, WriteOptions};

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
const PORT_NAME: &str = "https";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGER: &str = "skiff-apiserver";
/// Where each server's lease lives: `<prefix><ip:port>` holding its last renewal time.
const LEASES: &str = "/skiff/apiserver-leases/";
/// How often a server renews its lease and reconciles the endpoints (kube-apiserver: 10 s).
const RENEW: Duration = Duration::from_secs(10);
/// A lease not renewed for this long is a server gone (kube-apiserver: 15 s); three renewals, so a busy or
/// slightly skewed server is not dropped and added back.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How long a server shutting down spends taking itself out of the endpoints; its lease expires anyway.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

fn def(group: &str, plural: &str) -> Result<&'static ResourceDef, ApiError> {
    resources::all().iter().find(|r| r.group == group && r.plural == plural).ok_or(ApiError::NoRoute)
}

fn options() -> WriteOptions {
    WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() }
}

/// Where other machines reach a server listening on `listen`: that address, or when it is unspecified
/// (`0.0.0.0`, `::`) the machine's address on its default route, as kube-apiserver's `ChooseHostInterface`
/// picks, or loopback on a machine without one.
pub fn advertise_address(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    // Connecting a UDP socket sends nothing: the kernel only picks the route, and with it the source address.
    // 192.0.2.1 is a documentation address, which machines normally reach through their default route.
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|socket| {
        socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
        socket.local_addr()
    });
    match routed.map(|address| address.ip()) {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        _ => Ipv4Addr::LOCALHOST.into(),
    }
}

/// Creates the `kubernetes` Service if it is missing, its target port the port of the server creating it.
pub async fn ensure_service(objects: &Objects, port: u16) -> Result<(), ApiError> {
    let services = def("", "services")?;
    if objects.get(services, Some(NAMESPACE), NAME).await.is_ok() {
        return Ok(());
    }
    let ip = objects::kubernetes_service_ip();
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": PORT_NAME, "port": 443, "protocol": "TCP", "targetPort": port}],
        },
    });
    match objects.create(services, Some(NAMESPACE), service, &options()).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the cluster DNS Service if it is missing: `kube-system/kube-dns` at [`objects::cluster_dns_ip`],
/// port 53 over UDP and TCP, served by every node itself (each agent runs a DNS server on its own address:
/// the servicelb controller lists the nodes as its endpoints, and `internalTrafficPolicy: Local` keeps
/// every node's queries on the node).
pub async fn ensure_cluster_dns(objects: &Objects) -> Result<(), ApiError> {
    let services = def("", "services")?;
    if objects.get(services, Some("kube-system"), "kube-dns").await.is_ok() {
        return Ok(());
    }
    let ip = objects::cluster_dns_ip();
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "skiff.dev/served-by-nodes": "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "internalTrafficPolicy": "Local",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    });
    match objects.create(services, Some("kube-system"), service, &options()).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews this server's lease and keeps the Service and its endpoints in step until `shutdown`, then takes
/// this server out of the endpoints.
pub async fn run(objects: Objects, advertise: SocketAddr, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RENEW);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let span = tracing::debug_span!("reconcile", service = NAME, namespace = NAMESPACE);
        // A store that does not answer (an etcd without quorum) must not hold up the shutdown.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            result = reconcile(&objects, Some(advertise)).instrument(span) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot update the kubernetes service's endpoints");
                }
            }
        }
    }
    let leave = async {
        objects.store().delete(&lease_key(advertise), None).await?;
        reconcile(&objects, None).await
    };
    match tokio::time::timeout(LEAVE_GRACE, leave).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot take this server out of the kubernetes service's endpoints"),
        Err(_) => tracing::debug!("the store did not answer in time to take this server out of the endpoints"),
    }
}

fn lease_key(address: SocketAddr) -> String {
    format!("{LEASES}{address}")
}

/// Renews `own`'s lease (when given), then writes the Service and the endpoints of every live server.
async fn reconcile(objects: &Objects, own: Option<SocketAddr>) -> Result<(), ApiError> {
    let store = objects.store();
    let now = Timestamp::now();
    if let Some(own) = own {
        ensure_service(objects, own.port()).await?;
        let lease = bytes::Bytes::from(json!({"renewTime": skiff_api::format_time(now)}).to_string());
        let key = lease_key(own);
        match store.get(&key).await? {
            Some(kv) => store.update(&key, lease, Some(kv.mod_revision)).await?,
            None => store.create(&key, lease).await?,
        };
    }
    let mut live = BTreeSet::new();
    for kv in store.list(LEASES, None, 0).await?.kvs {
        let address = kv.key.strip_prefix(LEASES).and_then(|a| a.parse::<SocketAddr>().ok());
        let renewed = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|lease| lease["renewTime"].as_str()?.parse::<Timestamp>().ok());
        match (address, renewed) {
            (Some(address), Some(renewed)) if now.duration_since(renewed).unsigned_abs() < LEASE_TTL => {
                live.insert(address);
            }
            // Expired or unreadable: gone, unless it was renewed since it was read.
            _ => match store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) | Err(skiff_store::Error::Conflict { .. } | skiff_store::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    let (endpoints, slices) = endpoints_of(&live);
    write(objects, def("", "endpoints")?, endpoints).await?;
    let slice_def = def("discovery.k8s.io", "endpointslices")?;
    let wanted: BTreeSet<String> = slices.iter().map(|s| objects::name_of(s).to_string()).collect();
    for slice in slices {
        write(objects, slice_def, slice).await?;
    }
    // Slices for a port or family no server has any more; hand-written ones (another name) stay.
    let ours = ListOptions {
        labels: LabelSelector::parse(&format!("{SERVICE_NAME_LABEL}={NAME}")).ok(),
        ..ListOptions::default()
    };
    for stale in objects.list(slice_def, Some(NAMESPACE), &ours).await?.items {
        let name = objects::name_of(&stale);
        if !wanted.contains(name) && is_extra_slice_name(name) {
            match objects.delete(slice_def, Some(NAMESPACE), name, &DeleteOptions::default()).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// `kubernetes-<n>`: the slices beyond the first, see [`endpoints_of`].
fn is_extra_slice_name(name: &str) -> bool {
    name.strip_prefix("kubernetes-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The Endpoints and EndpointSlices listing `servers`. Servers on one port and address family share a subset
/// and a slice; one cluster normally has a single such group, whose slice is named `kubernetes` as in
/// Kubernetes, and any further group (servers on other ports, or IPv6 ones) gets `kubernetes-1`, ... With no
/// server, the Endpoints have no subsets and the slice no endpoints.
fn endpoints_of(servers: &BTreeSet<SocketAddr>) -> (Value, Vec<Value>) {
    let mut groups: BTreeMap<(bool, u16), Vec<IpAddr>> = BTreeMap::new();
    for server in servers {
        groups.entry((server.is_ipv6(), server.port())).or_default().push(server.ip());
    }
    let port = |port: u16| json!({"name": PORT_NAME, "port": port, "protocol": "TCP"});
    let subsets: Vec<Value> = groups
        .iter()
        .map(|((_, number), ips)| {
            let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            json!({"addresses": addresses, "ports": [port(*number)]})
        })
        .collect();
    let mut endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        // Kubernetes marks them so that the EndpointSlice mirroring controller leaves them to the API server.
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
    });
    if !subsets.is_empty() {
        endpoints["subsets"] = Value::Array(subsets);
    }
    let slice = |index: usize, ipv6: bool, endpoints: Vec<Value>, ports: Option<Value>| {
        let name = if index == 0 { NAME.to_string() } else { format!("{NAME}-{index}") };
        let mut slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_NAME_LABEL: NAME}},
            "addressType": if ipv6 { "IPv6" } else { "IPv4" },
            "endpoints": endpoints,
        });
        if let Some(ports) = ports {
            slice["ports"] = ports;
        }
        slice
    };
    let mut slices: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(index, ((ipv6, number), ips))| {
            let endpoints =
                ips.iter().map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})).collect();
            slice(index, *ipv6, endpoints, Some(json!([port(*number)])))
        })
        .collect();
    if slices.is_empty() {
        slices.push(slice(0, false, Vec::new(), None));
    }
    (endpoints, slices)
}

/// Creates `desired`, or updates the stored object to say what it says (its labels added to the stored
/// ones); an update that changes nothing writes nothing. A slice of another address type is made anew, as
/// `addressType` cannot change.
async fn write(objects: &Objects, def: &'static ResourceDef, desired: Value) -> Result<(), ApiError> {
    let name = objects::name_of(&desired).to_string();
    let create = async |desired| match objects.create(def, Some(NAMESPACE), desired, &options()).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    };
    let current = match objects.get(def, Some(NAMESPACE), &name).await {
        Ok(current) => current,
        Err(ApiError::NotFound { .. }) => return create(desired).await,
        Err(e) => return Err(e),
    };
    if current.get("addressType").is_some() && current["addressType"] != desired["addressType"] {
        objects.delete(def, Some(NAMESPACE), &name, &DeleteOptions::default()).await?;
        return create(desired).await;
    }
    let mut updated = current.clone();
    for (key, value) in desired["metadata"]["labels"].as_object().into_iter().flatten() {
        updated["metadata"]["labels"][key] = value.clone();
    }
    for field in ["subsets", "endpoints", "ports"] {
        match desired.get(field) {
            Some(value) => updated[field] = value.clone(),
            None => {
                if let Some(map) = updated.as_object_mut() {
                    map.remove(field);
                }
            }
        }
    }
    if updated != current {
        objects.replace(def, Some(NAMESPACE), &name, Part::Main, updated, &options()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_gives_one_subset_and_the_kubernetes_slice() {
        let (endpoints, slices) = endpoints_of(&BTreeSet::from(["10.0.0.5:6443".parse().unwrap()]));
        assert_eq!(
            endpoints["subsets"],
            json!([{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}])
        );
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(slice["metadata"]["name"], "kubernetes");
        assert_eq!(slice["metadata"]["labels"], json!({"kubernetes.io/service-name": "kubernetes"}));
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["endpoints"], json!([{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}]));
        assert_eq!(slice["ports"], json!([{"name": "https", "port": 6443, "protocol": "TCP"}]));
    }

    #[test]
    fn servers_on_other_ports_get_subsets_and_slices_of_their_own() {
        let servers: BTreeSet<SocketAddr> = ["10.0.0.6:6443", "10.0.0.5:6443", "127.0.0.1:7000", "[fd00::1]:6443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let (endpoints, slices) = endpoints_of(&servers);
        let subsets = endpoints["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 3);
        assert_eq!(subsets[0]["addresses"], json!([{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}]));
        let names: Vec<&str> = slices.iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["kubernetes", "kubernetes-1", "kubernetes-2"]);
        assert_eq!(slices[2]["addressType"], "IPv6");
        assert!(names[1..].iter().all(|n| is_extra_slice_name(n)) && !is_extra_slice_name("kubernetes-x"));

        let (endpoints, slices) = endpoints_of(&BTreeSet::new());
        assert!(endpoints.get("subsets").is_none());
        assert_eq!((slices.len(), &slices[0]["endpoints"]), (1, &json!([])));
        assert!(slices[0].get("ports").is_none());
    }

    #[test]
    fn a_specific_listen_address_is_advertised_as_it_is() {
        let ip: IpAddr = "192.168.7.2".parse().unwrap();
        assert_eq!(advertise_address(ip), ip);
        let chosen = advertise_address(Ipv4Addr::UNSPECIFIED.into());
        assert!(!chosen.is_unspecified(), "{chosen}");
        assert_eq!(objects::kubernetes_service_ip(), "10.43.0.1");
    }
}
