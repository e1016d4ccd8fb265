//! The node's part of the cluster network, as kube-proxy and a host-gw network plugin do it: routes to the
//! other nodes' pod ranges ([`routes`]), masquerade for pods' traffic leaving the pod ranges, and the
//! service proxy: every Service's virtual addresses and node ports load-balanced to its endpoints in the
//! kernel ([`nft`]), never through a process.
//!
//! One loop watches Services, EndpointSlices and Nodes (kube-runtime watchers), notes which Services an
//! event touches, and after each burst of events programs only those ([`model`] computes what one Service
//! needs; [`nft::Transaction`] turns the difference into one nftables transaction of map and set elements,
//! plus the generic chains the table lacks). A relist (watch
//! restart) marks everything to be compared again, so the loop is level-triggered: a missed event heals.
//! A transaction the kernel refuses rebuilds the table from the caches. On shutdown the table and the
//! routes are removed.

mod model;
mod nft;
mod routes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

pub use model::ServiceKey;
use model::{NodeNames, SERVICE_NAME_LABEL, ServicePort};
pub use model::{ServiceInfo, Slice};
use routes::Routes;
pub use routes::{InvalidRouteMode, PodRange, RouteMode};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the service proxy needs the nft program (Debian package nftables)")]
    NoNft,
}

/// How long to wait before rebuilding after the kernel refused a transaction.
const RETRY: Duration = Duration::from_secs(1);

/// Checks that the proxy can run here: root (checked by the caller, with the pod network) and `nft`.
pub fn check() -> Result<(), ProxyError> {
    let found = std::process::Command::new("nft")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found { Ok(()) } else { Err(ProxyError::NoNft) }
}

/// What the watches have shown: shared with the cluster DNS, which answers from it.
#[derive(Default)]
pub struct Caches {
    services: HashMap<ServiceKey, ServiceInfo>,
    /// By Service, then by slice name.
    slices: HashMap<ServiceKey, HashMap<String, Slice>>,
    node_names: NodeNames,
    /// The Service of each slice, by the slice's namespace and name: a slice whose label changes leaves
    /// its old Service.
    slice_services: HashMap<(String, String), ServiceKey>,
    /// Nodes' pod ranges and addresses, by node name.
    nodes: HashMap<String, (PodRange, Ipv4Addr)>,
    /// Whether the Services have been listed once: until then a missing Service may just be unread.
    services_listed: bool,
    /// Counts the batches of changes applied, for whoever waits for a change (the ingress holding a request
    /// until a Service woken from zero has an endpoint).
    changed: tokio::sync::watch::Sender<u64>,
}

/// What the next sync must look at.
#[derive(Default)]
struct Dirty {
    services: HashSet<ServiceKey>,
    nodes: bool,
    /// Every Service (after a relist).
    all: bool,
}

enum Change {
    /// Boxed: Services and slices are large beside what is kept of a Node.
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Node(watcher::Event<NodeRoute>),
}

/// What the loop keeps of a Node: its pod range and address, once it has both.
struct NodeRoute {
    name: String,
    route: Option<(PodRange, Ipv4Addr)>,
}

impl NodeRoute {
    fn of(node: Node) -> Self {
        NodeRoute { route: node_range(&node), name: node.name_any() }
    }
}

/// The same event with the object turned into what the loop keeps of it.
fn map_event<K, T>(event: watcher::Event<K>, f: impl Fn(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(f(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(f(object)),
        watcher::Event::InitApply(object) => watcher::Event::InitApply(f(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn key_of<K: ResourceExt>(object: &K) -> ServiceKey {
    ServiceKey { namespace: object.namespace().unwrap_or_else(|| "default".into()), name: object.name_any() }
}

/// The Service a slice belongs to, by its label; slices without one are no Service's.
fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey { namespace: slice.namespace().unwrap_or_else(|| "default".into()), name: name.clone() })
}

fn node_range(node: &Node) -> Option<(PodRange, Ipv4Addr)> {
    let cidr = node.spec.as_ref()?.pod_cidr.as_deref()?;
    let (network, prefix) = cidr.split_once('/')?;
    let range = PodRange { network: network.parse().ok()?, prefix: prefix.parse().ok()? };
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let ip = addresses.iter().find(|a| a.type_ == "InternalIP")?.address.parse().ok()?;
    Some((range, ip))
}

/// The caches, as the proxy loop writes them and the DNS server reads them.
pub type SharedCaches = std::sync::Arc<std::sync::RwLock<Caches>>;

impl Caches {
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceInfo> {
        self.services.get(key)
    }

    /// Whether the Services have been listed at least once.
    pub fn services_listed(&self) -> bool {
        self.services_listed
    }

    /// Sees every batch of changes applied from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tells subscribers a batch of changes was applied.
    pub(crate) fn applied(&self) {
        self.changed.send_modify(|batches| *batches += 1);
    }

    /// The Services of `namespace`.
    pub fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a ServiceInfo> {
        self.services.iter().filter(move |(key, _)| key.namespace == namespace).map(|(_, service)| service)
    }

    /// The Service's EndpointSlices.
    pub fn slices(&self, key: &ServiceKey) -> impl Iterator<Item = &Slice> + Clone {
        self.slices.get(key).into_iter().flat_map(|slices| slices.values())
    }

    /// Whether some Service sends new connections to `ip`: a ready endpoint of one of its slices.
    pub fn is_ready_endpoint(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else { return false };
        self.slices
            .values()
            .flat_map(HashMap::values)
            .flat_map(|slice| &slice.endpoints)
            .any(|endpoint| endpoint.ready && !endpoint.terminating && endpoint.ip == ip)
    }

    /// Whether `ip` is in some node's pod range.
    pub fn in_pod_ranges(&self, ip: Ipv4Addr) -> bool {
        self.nodes.values().any(|(range, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(range.prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(range.network) & mask
        })
    }

    /// Whether `ip` is the cluster's: in a node's pod range, a node's address, or a Service's cluster IP.
    /// Not its external IPs: whoever writes a Service chooses those, whatever they are (CVE-2020-8554).
    pub fn is_cluster_address(&self, ip: IpAddr) -> bool {
        if let IpAddr::V4(v4) = ip
            && (self.in_pod_ranges(v4) || self.nodes.values().any(|(_, node)| *node == v4))
        {
            return true;
        }
        self.services.values().any(|service| service.cluster_ips.contains(&ip))
    }

    /// Whether any Service lives in `namespace`.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.services.keys().any(|key| key.namespace == namespace)
    }

    /// Keeps what is read of `service`; returns its key.
    pub(crate) fn insert_service(&mut self, service: Service) -> ServiceKey {
        let key = key_of(&service);
        self.services.insert(key.clone(), ServiceInfo::of(&service));
        key
    }

    /// Keeps `slice` under its Service; returns that Service's key (None for a slice of no Service).
    pub(crate) fn insert_slice(&mut self, slice: EndpointSlice) -> Option<ServiceKey> {
        let key = slice_service(&slice)?;
        let id = (key.namespace.clone(), slice.name_any());
        self.slice_services.insert(id.clone(), key.clone());
        let kept = Slice::of(&slice, &mut self.node_names);
        self.slices.entry(key.clone()).or_default().insert(id.1, kept);
        Some(key)
    }

    fn remove_slice(&mut self, slice: &EndpointSlice, dirty: &mut Dirty) {
        let id = (slice.namespace().unwrap_or_else(|| "default".into()), slice.name_any());
        if let Some(key) = self.slice_services.remove(&id) {
            if let Some(slices) = self.slices.get_mut(&key) {
                slices.remove(&id.1);
                if slices.is_empty() {
                    self.slices.remove(&key);
                }
            }
            dirty.services.insert(key);
        }
    }

    fn apply(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Service(event) => match *event {
                watcher::Event::Apply(service) | watcher::Event::InitApply(service) => {
                    dirty.services.insert(self.insert_service(service));
                }
                watcher::Event::Delete(service) => {
                    let key = key_of(&service);
                    self.services.remove(&key);
                    dirty.services.insert(key);
                }
                watcher::Event::Init => {}
                // A relist: what it did not list is gone.
                watcher::Event::InitDone => {
                    self.services_listed = true;
                    dirty.all = true;
                }
            },
            Change::Slice(event) => match *event {
                watcher::Event::Apply(slice) | watcher::Event::InitApply(slice) => {
                    self.remove_slice(&slice, dirty);
                    dirty.services.extend(self.insert_slice(slice));
                }
                watcher::Event::Delete(slice) => self.remove_slice(&slice, dirty),
                watcher::Event::Init => {}
                watcher::Event::InitDone => dirty.all = true,
            },
            Change::Node(event) => {
                // Heartbeats change Nodes every few seconds; routes and ranges only when these change.
                let changed = match event {
                    watcher::Event::Apply(node) | watcher::Event::InitApply(node) => match node.route {
                        Some(route) => self.nodes.insert(node.name, route) != Some(route),
                        None => self.nodes.remove(&node.name).is_some(),
                    },
                    watcher::Event::Delete(node) => self.nodes.remove(&node.name).is_some(),
                    watcher::Event::Init => false,
                    watcher::Event::InitDone => true,
                };
                dirty.nodes |= changed;
            }
        }
    }
}

/// The keys one relist (a watch restart: Init, InitApply..., InitDone) listed, so that what it did not
/// list (deleted while the watch was down) leaves the caches.
struct Relist<T> {
    listed: Option<HashSet<T>>,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Relist { listed: None }
    }
}

impl<T: std::hash::Hash + Eq> Relist<T> {
    /// Follows the relist; at its end returns what it listed.
    fn observe<K>(&mut self, event: &watcher::Event<K>, key: impl Fn(&K) -> Option<T>) -> Option<HashSet<T>> {
        match event {
            watcher::Event::Init => self.listed = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(listed), Some(key)) = (self.listed.as_mut(), key(object)) {
                    listed.insert(key);
                }
            }
            watcher::Event::InitDone => return self.listed.take(),
            _ => {}
        }
        None
    }
}

/// What the proxy is told about its node.
pub struct NodeNetwork {
    pub name: String,
    /// Names the node's nftables table (`skiff-<id>`), as it names the node's bridge.
    pub network_id: String,
    /// The node's address: where node ports answer, and what the overlay encapsulates from.
    pub ip: Ipv4Addr,
    pub range: PodRange,
    /// `--pod-routes`.
    pub routes: RouteMode,
}

/// The proxy of a node: runs until `shutdown`, then removes what it programmed.
pub async fn run(client: Client, node: NodeNetwork, caches: SharedCaches, shutdown: CancellationToken) {
    let NodeNetwork { name: node_name, network_id, ip: node_ip, range: own_range, routes: route_mode } = node;
    let table = crate::nft::proxy_table(&network_id);
    let mut routes = match Routes::open(route_mode, own_range, node_ip).await {
        Ok(routes) => Some(routes),
        Err(e) => {
            tracing::error!(error = %e, "pod routes between nodes are off");
            None
        }
    };
    enable_forwarding();
    // Failed watches are retried with back-off: an agent whose credentials are refused must not spin.
    let services = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|event| Change::Service(Box::new(event))));
    let slices = watcher(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|event| Change::Slice(Box::new(event))));
    let nodes = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|event| Change::Node(map_event(event, NodeRoute::of))));
    let mut changes = futures::stream::select_all([services.boxed(), slices.boxed(), nodes.boxed()]);
    let mut relists = Relists::default();
    let mut applied: HashMap<ServiceKey, Vec<ServicePort>> = HashMap::new();
    let mut shapes = nft::Shapes::default();
    let mut dirty = Dirty::default();
    let mut fresh_table = true;
    let mut retry = false;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            change = changes.next() => change,
            // A refused transaction is tried again, from scratch.
            _ = tokio::time::sleep(RETRY), if retry => None,
        };
        // Everything already waiting joins this sync: under a burst of events, fewer, larger transactions.
        let mut batch: Vec<Result<Change, watcher::Error>> = first.into_iter().collect();
        while let Some(Some(change)) = changes.next().now_or_never() {
            batch.push(change);
        }
        let (plan, routes_wanted) = {
            let mut caches = caches.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for change in batch {
                match change {
                    Ok(change) => {
                        prune_relisted(&change, &mut relists, &mut caches);
                        caches.apply(change, &mut dirty);
                    }
                    Err(e) => tracing::warn!(error = %e, "service proxy watch failed; retrying"),
                }
            }
            caches.applied();
            let routes_wanted: Option<BTreeMap<PodRange, Ipv4Addr>> = dirty
                .nodes
                .then(|| caches.nodes.iter().filter(|(name, _)| **name != node_name).map(|(_, r)| *r).collect());
            let state = Applied { ports: &applied, shapes: &mut shapes, fresh_table };
            (plan(&table, &caches, &node_name, own_range, state, &mut dirty), routes_wanted)
        };
        if let (Some(routes), Some(wanted)) = (routes.as_mut(), routes_wanted)
            && let Err(e) = routes.reconcile(&wanted).await
        {
            tracing::warn!(error = %e, "cannot program the routes to other nodes' pods");
        }
        let started = std::time::Instant::now();
        let applying = match &plan.script {
            Some(script) => crate::nft::apply_script(script).await,
            None => Ok(()),
        };
        match applying {
            Ok(()) => {
                if plan.script.is_some() {
                    tracing::debug!(services = plan.next.len(), elapsed = ?started.elapsed(), "service rules applied");
                }
                if fresh_table {
                    applied.clear();
                }
                for (key, ports) in plan.next {
                    if ports.is_empty() {
                        applied.remove(&key);
                    } else {
                        applied.insert(key, ports);
                    }
                }
                dirty = Dirty::default();
                (fresh_table, retry) = (false, false);
            }
            Err(e) => {
                tracing::error!(error = %e, "service rules not applied: rebuilding the table");
                (fresh_table, retry) = (true, true);
            }
        }
    }
    let mut transaction = nft::Transaction::new(&table, &mut shapes);
    transaction.delete_table();
    if let Err(e) = crate::nft::apply_script(&transaction.into_script()).await {
        tracing::warn!(error = %e, "cannot remove the service proxy's table");
    }
    if let Some(routes) = routes.as_mut()
        && let Err(e) = routes.remove_all().await
    {
        tracing::warn!(error = %e, "cannot remove the routes to other nodes' pods");
    }
    tracing::info!("service proxy stopped");
}

#[derive(Default)]
struct Relists {
    services: Relist<ServiceKey>,
    /// Slices by namespace and name.
    slices: Relist<(String, String)>,
    nodes: Relist<String>,
}

/// At the end of a relist, drops from the caches what the relist no longer has.
fn prune_relisted(change: &Change, relists: &mut Relists, caches: &mut Caches) {
    match change {
        Change::Service(event) => {
            if let Some(listed) = relists.services.observe(event.as_ref(), |service| Some(key_of(service))) {
                caches.services.retain(|key, _| listed.contains(key));
            }
        }
        Change::Slice(event) => {
            let key = |slice: &EndpointSlice| Some((slice.namespace()?, slice.name_any()));
            if let Some(listed) = relists.slices.observe(event.as_ref(), key) {
                caches.slice_services.retain(|id, _| listed.contains(id));
                for (service, slices) in &mut caches.slices {
                    slices.retain(|name, _| listed.contains(&(service.namespace.clone(), name.clone())));
                }
            }
        }
        Change::Node(event) => {
            if let Some(listed) = relists.nodes.observe(event, |node| Some(node.name.clone())) {
                caches.nodes.retain(|name, _| listed.contains(name));
            }
        }
    }
}

/// What one sync will program: the transaction (None when nothing changed) and what each Service it looked
/// at has once it is applied.
struct Plan {
    script: Option<String>,
    next: Vec<(ServiceKey, Vec<ServicePort>)>,
}

/// What the table holds after the last transaction that applied.
struct Applied<'a> {
    ports: &'a HashMap<ServiceKey, Vec<ServicePort>>,
    shapes: &'a mut nft::Shapes,
    /// The table is to be made again: what `ports` and `shapes` say is gone with the old one.
    fresh_table: bool,
}

/// Plans what `dirty` names: one transaction, all or nothing. A fresh table starts from nothing.
fn plan(
    table: &str,
    caches: &Caches,
    node_name: &str,
    own_range: PodRange,
    applied: Applied<'_>,
    dirty: &mut Dirty,
) -> Plan {
    let Applied { ports: applied, shapes, fresh_table } = applied;
    let mut transaction = nft::Transaction::new(table, shapes);
    let no_ports = HashMap::new();
    let applied = if fresh_table {
        transaction.recreate_table();
        dirty.nodes = true;
        dirty.all = true;
        &no_ports
    } else {
        applied
    };
    if dirty.nodes {
        let mut ranges: Vec<(Ipv4Addr, u8)> = caches.nodes.values().map(|(r, _)| (r.network, r.prefix)).collect();
        ranges.push((own_range.network, own_range.prefix));
        ranges.sort();
        ranges.dedup();
        transaction.set_pod_ranges(&ranges);
    }
    let keys: Vec<ServiceKey> = if dirty.all {
        caches.services.keys().chain(applied.keys()).cloned().collect::<HashSet<_>>().into_iter().collect()
    } else {
        dirty.services.iter().cloned().collect()
    };
    let mut next: Vec<(ServiceKey, Vec<ServicePort>)> = Vec::with_capacity(keys.len());
    for key in keys {
        let mut desired = caches
            .service(&key)
            .map(|service| model::service_ports(service, caches.slices(&key), node_name))
            .unwrap_or_default();
        let old = applied.get(&key).map(Vec::as_slice).unwrap_or_default();
        let same = |a: &ServicePort, b: &ServicePort| a.name == b.name && a.protocol == b.protocol;
        for port in &mut desired {
            if let Some(before) = old.iter().find(|o| same(o, port)) {
                port.endpoints = model::keep_slots(&before.endpoints, std::mem::take(&mut port.endpoints));
            }
        }
        for port in old {
            transaction.update_port(Some(port), desired.iter().find(|d| same(d, port)));
        }
        for port in desired.iter().filter(|d| !old.iter().any(|o| same(o, d))) {
            transaction.update_port(None, Some(port));
        }
        next.push((key, desired));
    }
    let script = (!transaction.is_empty()).then(|| transaction.into_script());
    Plan { script, next }
}

/// Pods on other nodes and service endpoints are reached through this node: it forwards, and bridged
/// traffic between its own pods passes the NAT rules too (kube-proxy needs the same two settings).
fn enable_forwarding() {
    for (path, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "IP forwarding"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "netfilter on bridged traffic (br_netfilter)"),
    ] {
        if let Err(e) = std::fs::write(path, "1") {
            tracing::warn!(path, error = %e, "cannot turn on {what}: Services may not answer");
        }
    }
}
