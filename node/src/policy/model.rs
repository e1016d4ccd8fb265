//! What NetworkPolicies ask of one node, computed purely from the policies, every pod of the cluster and the
//! namespaces: for each local pod a policy isolates in a direction, a chain of rules that allow traffic (the
//! rest is dropped), and the address sets those rules match, one per policy rule and kind of peer, shared by
//! every local pod the policy selects. The semantics are the API's:
//!
//! - A pod is isolated for ingress (egress) once a policy of its namespace selects it and lists `Ingress`
//!   (`Egress`) in `policyTypes`, which defaults to `Ingress`, plus `Egress` when the policy has egress rules.
//!   Then only what some rule of those policies allows passes; policies add up.
//! - A rule without peers (`from`/`to` missing or empty) matches every address; without ports, every port.
//!   A peer is a `podSelector` (pods of the policy's namespace), a `namespaceSelector` (every pod of the
//!   namespaces it selects), both (those pods of those namespaces), or an `ipBlock` less its exceptions.
//! - A named port resolves on the pod that owns it: for ingress, on the local pod itself (so the chains are
//!   per pod); for egress, on each peer pod, as address, protocol and port triples.
//! - A pod always reaches itself, and its own node always reaches it and is reached by it (the API's two
//!   exceptions); replies of allowed connections always pass (both in the nftables layer, not here).
//!
//! Pods with host networking are neither selected nor peers (their address is the node's), and pods that
//! ended have given their address back.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Map, Value};
use sha2::Digest;
use skiff_api::selectors::LabelSelector;

pub use crate::nft::Protocol;

/// The label the API server gives every namespace (its name), which policies commonly select namespaces
/// by. A namespace this node has not seen yet (its pods can come first) is matched as if it had it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The longest name nftables takes for a chain or set (256 bytes with the terminating NUL).
const NAME_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic to the pod: its peers are sources.
    Ingress,
    /// Traffic from the pod: its peers are destinations.
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The ports a rule allows: one protocol, and all its ports or a range of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub protocol: Protocol,
    /// First and last port; None for every port of the protocol.
    pub range: Option<(u16, u16)>,
}

/// What one rule of a pod's chain lets through (anything else falls through to the chain's drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The peer's address in the set named `peers` (None: any address), on `ports` (None: any port).
    Allow { peers: Option<String>, ports: Option<Ports> },
    /// The destination's address, protocol and port in the named set of [`Elements::Endpoints`]: named ports
    /// as each peer pod defines them (egress only).
    AllowEndpoints(String),
}

/// The chain judging one direction of one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub direction: Direction,
    pub pod: Ipv4Addr,
    pub rules: Vec<Rule>,
}

/// The contents of one set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elements {
    /// Pods' addresses.
    Addresses(BTreeSet<Ipv4Addr>),
    /// Address blocks less their exceptions: first and last address, sorted and disjoint.
    Ranges(Vec<(Ipv4Addr, Ipv4Addr)>),
    /// Pods' named ports: address, protocol, port.
    Endpoints(BTreeSet<(Ipv4Addr, Protocol, u16)>),
}

/// Everything the node programs, keyed by the names nftables gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// The addresses of this node's pods: the node's own traffic is told from theirs by them (wasm pods'
    /// addresses are the node's own, on its bridge).
    pub local_pods: BTreeSet<Ipv4Addr>,
    pub sets: BTreeMap<String, Elements>,
    pub chains: BTreeMap<String, Chain>,
    /// The chain of each local pod isolated for ingress, by the pod's address.
    pub ingress: BTreeMap<Ipv4Addr, String>,
    /// The same for egress.
    pub egress: BTreeMap<Ipv4Addr, String>,
}

/// What the node's caches hold.
pub struct Cluster<'a> {
    pub policies: &'a [Arc<NetworkPolicy>],
    pub pods: &'a [Arc<Pod>],
    pub namespaces: &'a [Arc<Namespace>],
}

/// A pod with an address of its own, as policies see it.
struct PodView<'a> {
    pod: &'a Pod,
    namespace: String,
    name: String,
    labels: Map<String, Value>,
    ip: Ipv4Addr,
}

impl<'a> PodView<'a> {
    fn of(pod: &'a Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        let ended = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if spec.host_network == Some(true) || ended {
            return None;
        }
        let ip = status.pod_ip.as_deref()?.parse().ok()?;
        Some(PodView {
            pod,
            namespace: pod.namespace().unwrap_or_else(|| "default".into()),
            name: pod.name_any(),
            labels: pod.labels().iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect(),
            ip,
        })
    }

    fn node(&self) -> Option<&str> {
        self.pod.spec.as_ref()?.node_name.as_deref()
    }

    /// The number of the pod's port `name` of `protocol`, among its containers' and sidecars' ports (as
    /// Kubernetes resolves a Service's named target port).
    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        let spec = self.pod.spec.as_ref()?;
        let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
        spec.containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name) && Protocol::parse(p.protocol.as_deref()) == Some(protocol))
            .and_then(|p| u16::try_from(p.container_port).ok())
    }
}

/// Who a peer is.
enum Peer {
    /// Pods selected by their namespace's labels (None: the policy's namespace) and their own (None: all).
    Pods { namespaces: Option<LabelSelector>, pods: Option<LabelSelector> },
    /// Addresses, as sorted disjoint ranges.
    Block(Vec<(u32, u32)>),
}

/// One rule of a policy, its selectors parsed.
struct PolicyRule<'a> {
    /// None: every address.
    peers: Option<Vec<Peer>>,
    ports: &'a [NetworkPolicyPort],
}

/// A policy, its selectors parsed; a direction it does not isolate has no rules (None).
struct Policy<'a> {
    /// `namespace/name`.
    key: String,
    namespace: String,
    selector: LabelSelector,
    ingress: Option<Vec<PolicyRule<'a>>>,
    egress: Option<Vec<PolicyRule<'a>>>,
}

impl<'a> Policy<'a> {
    /// None for a policy whose pod selector cannot be parsed: the API refuses those, so only a policy
    /// stored before its validation existed can have one, and nobody can tell which pods it means.
    fn parse(policy: &'a NetworkPolicy) -> Option<Self> {
        let namespace = policy.namespace().unwrap_or_else(|| "default".into());
        let key = format!("{namespace}/{}", policy.name_any());
        let spec = policy.spec.as_ref();
        let selector = match pod_selector(spec.and_then(|s| s.pod_selector.as_ref())) {
            Ok(selector) => selector,
            Err(e) => {
                tracing::warn!(policy = %key, error = %e, "network policy ignored: its pod selector is invalid");
                return None;
            }
        };
        let ingress_rules = spec.and_then(|s| s.ingress.as_deref()).unwrap_or_default();
        let egress_rules = spec.and_then(|s| s.egress.as_deref()).unwrap_or_default();
        // The API server's defaulting, again, for policies written before it existed.
        let types = spec.and_then(|s| s.policy_types.clone()).filter(|types| !types.is_empty()).unwrap_or_else(|| {
            let mut types = vec!["Ingress".to_string()];
            if !egress_rules.is_empty() {
                types.push("Egress".into());
            }
            types
        });
        let has = |kind: &str| types.iter().any(|t| t == kind);
        let ingress = has("Ingress").then(|| {
            let rules = ingress_rules.iter();
            rules.map(|r| PolicyRule::parse(&key, r.from.as_deref(), r.ports.as_deref())).collect()
        });
        let egress = has("Egress").then(|| {
            let rules = egress_rules.iter();
            rules.map(|r| PolicyRule::parse(&key, r.to.as_deref(), r.ports.as_deref())).collect()
        });
        Some(Policy { key, namespace, selector, ingress, egress })
    }

    fn rules(&self, direction: Direction) -> Option<&[PolicyRule<'a>]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

impl<'a> PolicyRule<'a> {
    fn parse(policy: &str, peers: Option<&[NetworkPolicyPeer]>, ports: Option<&'a [NetworkPolicyPort]>) -> Self {
        let parse = |peer| match Peer::parse(peer) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(policy, error = %e, "a network policy peer matches nothing: its selector is invalid");
                None
            }
        };
        let peers = peers.filter(|peers| !peers.is_empty()).map(|peers| peers.iter().filter_map(parse).collect());
        PolicyRule { peers, ports: ports.unwrap_or_default() }
    }
}

impl Peer {
    /// None for a peer naming nothing (the API refuses those).
    fn parse(peer: &NetworkPolicyPeer) -> Result<Option<Self>, skiff_api::selectors::SelectorError> {
        if let Some(block) = &peer.ip_block {
            return Ok(Some(Peer::Block(block_ranges(block))));
        }
        let namespaces = peer.namespace_selector.as_ref().map(LabelSelector::from_k8s).transpose()?;
        let pods = peer.pod_selector.as_ref().map(LabelSelector::from_k8s).transpose()?;
        Ok((namespaces.is_some() || pods.is_some()).then_some(Peer::Pods { namespaces, pods }))
    }

    fn is_pods(&self) -> bool {
        matches!(self, Peer::Pods { .. })
    }

    /// The block's addresses (none for pods: theirs are looked up).
    fn ranges(&self) -> &[(u32, u32)] {
        match self {
            Peer::Block(ranges) => ranges,
            Peer::Pods { .. } => &[],
        }
    }

    /// Whether `pod` is this peer of a policy in `namespace`.
    fn matches(&self, pod: &PodView<'_>, namespace: &str, namespaces: &NamespaceLabels) -> bool {
        match self {
            Peer::Pods { namespaces: None, pods } => {
                pod.namespace == namespace && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            Peer::Pods { namespaces: Some(selector), pods } => {
                selector.matches(&namespaces.of(&pod.namespace)) && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            Peer::Block(ranges) => contains(ranges, pod.ip),
        }
    }
}

/// A policy's pod selector: every pod of its namespace when it has none.
fn pod_selector(selector: Option<&meta::LabelSelector>) -> Result<LabelSelector, skiff_api::selectors::SelectorError> {
    selector.map_or_else(|| Ok(LabelSelector::default()), LabelSelector::from_k8s)
}

/// Namespaces' labels, with the name label kube-apiserver adds.
struct NamespaceLabels(HashMap<String, Map<String, Value>>);

impl NamespaceLabels {
    fn new(namespaces: &[Arc<Namespace>]) -> Self {
        let labels = namespaces.iter().map(|namespace| {
            let name = namespace.name_any();
            let labels = namespace.labels().iter().map(|(k, v)| (k.clone(), Value::String(v.clone())));
            (name.clone(), labels.chain([(NAMESPACE_NAME_LABEL.to_string(), Value::String(name))]).collect())
        });
        NamespaceLabels(labels.collect())
    }

    /// A namespace not seen yet (its pods can arrive first) has only its name.
    fn of(&self, namespace: &str) -> Cow<'_, Map<String, Value>> {
        match self.0.get(namespace) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(Map::from_iter([(NAMESPACE_NAME_LABEL.to_string(), Value::String(namespace.into()))])),
        }
    }
}

/// What NetworkPolicies ask of node `node`.
pub fn rules(cluster: &Cluster<'_>, node: &str) -> Rules {
    let namespaces = NamespaceLabels::new(cluster.namespaces);
    let pods: Vec<PodView<'_>> = cluster.pods.iter().filter_map(|pod| PodView::of(pod)).collect();
    let policies: Vec<Policy<'_>> = cluster.policies.iter().filter_map(|policy| Policy::parse(policy)).collect();
    let mut rules = Rules::default();
    for pod in pods.iter().filter(|pod| pod.node() == Some(node)) {
        rules.local_pods.insert(pod.ip);
        for direction in [Direction::Ingress, Direction::Egress] {
            let mut isolated = false;
            let mut chain_rules = Vec::new();
            for policy in &policies {
                let Some(policy_rules) = policy.rules(direction) else { continue };
                if policy.namespace != pod.namespace || !policy.selector.matches(&pod.labels) {
                    continue;
                }
                isolated = true;
                for (index, rule) in policy_rules.iter().enumerate() {
                    let build = Build { policy, direction, index, rule, pods: &pods, namespaces: &namespaces };
                    chain_rules.extend(build.chain_rules(pod, &mut rules.sets));
                }
            }
            if !isolated {
                continue;
            }
            let name = fit(format!("{}-{}/{}", direction.name(), pod.namespace, pod.name));
            let by_address = match direction {
                Direction::Ingress => &mut rules.ingress,
                Direction::Egress => &mut rules.egress,
            };
            by_address.insert(pod.ip, name.clone());
            rules.chains.insert(name, Chain { direction, pod: pod.ip, rules: chain_rules });
        }
    }
    rules
}

/// One policy rule, turned into the rules of a local pod's chain.
struct Build<'p, 'a> {
    policy: &'p Policy<'a>,
    direction: Direction,
    index: usize,
    rule: &'p PolicyRule<'a>,
    pods: &'p [PodView<'a>],
    namespaces: &'p NamespaceLabels,
}

impl Build<'_, '_> {
    /// The chain rules for local pod `pod`; the sets they use are added to `sets` (once per policy rule:
    /// they do not depend on the local pod).
    fn chain_rules(&self, pod: &PodView<'_>, sets: &mut BTreeMap<String, Elements>) -> Vec<Rule> {
        let (numbered, named) = self.ports(pod);
        let mut chain_rules = Vec::new();
        if !numbered.is_empty() {
            for peers in self.peer_sets(sets) {
                chain_rules
                    .extend(numbered.iter().map(|ports| Rule::Allow { peers: peers.clone(), ports: ports.clone() }));
            }
        }
        if !named.is_empty() {
            let name = self.set_name("named-ports");
            sets.entry(name.clone()).or_insert_with(|| {
                let peers = self.pods.iter().filter(|peer| self.is_peer(peer, |_| true));
                let endpoints = peers.flat_map(|peer| {
                    let resolved = named.iter().map(|(port, protocol)| (peer.named_port(port, *protocol), *protocol));
                    resolved.filter_map(|(number, protocol)| Some((peer.ip, protocol, number?)))
                });
                Elements::Endpoints(endpoints.collect())
            });
            chain_rules.push(Rule::AllowEndpoints(name));
        }
        chain_rules
    }

    /// The rule's ports with numbers (None: all ports, when it lists none), and its named ports that
    /// resolve on each destination (egress). For ingress a name resolves on the local pod `pod`; a port it
    /// does not have allows nothing.
    fn ports(&self, pod: &PodView<'_>) -> (Vec<Option<Ports>>, Vec<(&str, Protocol)>) {
        if self.rule.ports.is_empty() {
            return (vec![None], Vec::new());
        }
        let mut numbered = Vec::new();
        let mut named = Vec::new();
        for port in self.rule.ports {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            match &port.port {
                None => numbered.push(Some(Ports { protocol, range: None })),
                Some(IntOrString::Int(first)) => {
                    let last = port.end_port.unwrap_or(*first);
                    if let (Ok(first @ 1..), Ok(last)) = (u16::try_from(*first), u16::try_from(last))
                        && first <= last
                    {
                        numbered.push(Some(Ports { protocol, range: Some((first, last)) }));
                    }
                }
                Some(IntOrString::String(name)) => match self.direction {
                    Direction::Ingress => {
                        if let Some(number) = pod.named_port(name, protocol) {
                            numbered.push(Some(Ports { protocol, range: Some((number, number)) }));
                        }
                    }
                    Direction::Egress => named.push((name.as_str(), protocol)),
                },
            }
        }
        (numbered, named)
    }

    /// The sets of the rule's peers: one of pods' addresses, one of address blocks (None: any address).
    fn peer_sets(&self, sets: &mut BTreeMap<String, Elements>) -> Vec<Option<String>> {
        let Some(peers) = &self.rule.peers else { return vec![None] };
        let mut names = Vec::new();
        if peers.iter().any(Peer::is_pods) {
            let name = self.set_name("pods");
            sets.entry(name.clone()).or_insert_with(|| {
                let pods = self.pods.iter().filter(|pod| self.is_peer(pod, Peer::is_pods));
                Elements::Addresses(pods.map(|pod| pod.ip).collect())
            });
            names.push(Some(name));
        }
        if !peers.iter().all(Peer::is_pods) {
            let name = self.set_name("blocks");
            sets.entry(name.clone()).or_insert_with(|| {
                let ranges = merge(peers.iter().flat_map(Peer::ranges).copied().collect());
                Elements::Ranges(ranges.into_iter().map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b))).collect())
            });
            names.push(Some(name));
        }
        names
    }

    /// Whether `pod` is one of the rule's peers that `kind` keeps (every pod when the rule has no peers).
    fn is_peer(&self, pod: &PodView<'_>, kind: impl Fn(&Peer) -> bool) -> bool {
        let namespace = self.policy.namespace.as_str();
        let mut peers = self.rule.peers.iter().flatten().filter(|peer| kind(peer));
        self.rule.peers.is_none() || peers.any(|peer| peer.matches(pod, namespace, self.namespaces))
    }

    /// The name of the set of this policy rule's peers of one kind (`pods`, `blocks`, `named-ports`).
    fn set_name(&self, kind: &str) -> String {
        fit(format!("{}/{}-{}/{kind}", self.policy.key, self.direction.name(), self.index))
    }
}

/// An IPv4 block less its exceptions, as sorted disjoint ranges. IPv6 blocks hold no address of this IPv4
/// cluster; an unparsable block (refused by the API) holds none either.
fn block_ranges(block: &IPBlock) -> Vec<(u32, u32)> {
    let Some(whole) = cidr_range(&block.cidr) else { return Vec::new() };
    let mut ranges = vec![whole];
    for (first, last) in block.except.iter().flatten().filter_map(|except| cidr_range(except)) {
        ranges = ranges
            .into_iter()
            .flat_map(|(a, b)| {
                let below = (a < first).then(|| (a, (first - 1).min(b)));
                let above = (b > last).then(|| ((last + 1).max(a), b));
                if last < a || first > b { vec![(a, b)] } else { below.into_iter().chain(above).collect() }
            })
            .collect();
    }
    ranges
}

/// The first and last address of an IPv4 CIDR.
fn cidr_range(cidr: &str) -> Option<(u32, u32)> {
    let (address, prefix) = cidr.split_once('/')?;
    let address = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let host_mask = u32::MAX.checked_shr(prefix).unwrap_or(0);
    Some((address & !host_mask, address | host_mask))
}

/// Sorted, disjoint ranges covering `ranges` (overlapping and adjacent ones joined).
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

fn contains(ranges: &[(u32, u32)], ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    ranges.iter().any(|(first, last)| (*first..=*last).contains(&ip))
}

/// `name`, or when nftables would refuse it as too long, its start and a hash of the whole.
fn fit(name: String) -> String {
    if name.len() <= NAME_MAX {
        return name;
    }
    let hash = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    let mut cut = NAME_MAX - hash.len() - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash}", &name[..cut])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(namespace: &str, name: &str, node: &str, ip: &str, labels: Value) -> Arc<Pod> {
        pod_with(namespace, name, node, ip, labels, json!([]))
    }

    fn pod_with(namespace: &str, name: &str, node: &str, ip: &str, labels: Value, ports: Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .unwrap(),
        )
    }

    fn namespace(name: &str, labels: Value) -> Arc<Namespace> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    fn policy(namespace: &str, name: &str, spec: Value) -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec})).unwrap(),
        )
    }

    /// The shop: two web pods on this node (n1) and one on n2, in namespace `shop`; clients in `front`.
    fn pods() -> Vec<Arc<Pod>> {
        let http = json!([{"name": "http", "containerPort": 8080}]);
        vec![
            pod_with("shop", "web-1", "n1", "10.42.0.2", json!({"app": "web"}), http.clone()),
            pod_with(
                "shop",
                "web-2",
                "n1",
                "10.42.0.3",
                json!({"app": "web"}),
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod_with("shop", "web-3", "n2", "10.42.1.2", json!({"app": "web"}), http),
            pod("shop", "db", "n2", "10.42.1.3", json!({"app": "db"})),
            pod("front", "client", "n2", "10.42.1.4", json!({"role": "client"})),
            pod("front", "other", "n1", "10.42.0.4", json!({})),
            pod("back", "client", "n1", "10.42.0.5", json!({"role": "client"})),
        ]
    }

    fn namespaces() -> Vec<Arc<Namespace>> {
        vec![namespace("shop", json!({})), namespace("front", json!({"team": "front"})), namespace("back", json!({}))]
    }

    fn rules_of(policies: Vec<Arc<NetworkPolicy>>) -> Rules {
        let (pods, namespaces) = (pods(), namespaces());
        rules(&Cluster { policies: &policies, pods: &pods, namespaces: &namespaces }, "n1")
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn addresses(rules: &Rules, set: &str) -> Vec<String> {
        match &rules.sets[set] {
            Elements::Addresses(ips) => ips.iter().map(Ipv4Addr::to_string).collect(),
            other => panic!("{set}: {other:?}"),
        }
    }

    fn allow(peers: Option<&str>, ports: Option<(Protocol, Option<(u16, u16)>)>) -> Rule {
        Rule::Allow {
            peers: peers.map(str::to_string),
            ports: ports.map(|(protocol, range)| Ports { protocol, range }),
        }
    }

    #[test]
    fn without_policies_nothing_is_isolated() {
        let rules = rules_of(vec![]);
        assert!(
            rules.chains.is_empty() && rules.sets.is_empty() && rules.ingress.is_empty() && rules.egress.is_empty()
        );
        let local: Vec<Ipv4Addr> = rules.local_pods.into_iter().collect();
        assert_eq!(
            local,
            [ip("10.42.0.2"), ip("10.42.0.3"), ip("10.42.0.4"), ip("10.42.0.5")],
            "this node's pods only"
        );
    }

    #[test]
    fn a_policy_without_rules_isolates_its_local_pods_for_ingress_only() {
        let rules = rules_of(vec![policy("shop", "deny", json!({"podSelector": {}}))]);
        assert_eq!(rules.ingress.keys().copied().collect::<Vec<_>>(), [ip("10.42.0.2"), ip("10.42.0.3")]);
        assert_eq!(rules.ingress[&ip("10.42.0.2")], "ingress-shop/web-1");
        let chain = &rules.chains["ingress-shop/web-1"];
        assert_eq!((chain.direction, chain.pod, chain.rules.len()), (Direction::Ingress, ip("10.42.0.2"), 0));
        assert!(rules.egress.is_empty(), "policyTypes defaults to Ingress alone");
        assert!(rules.sets.is_empty());
    }

    #[test]
    fn peers_by_pod_namespace_and_both_name_pods_on_every_node() {
        let spec = json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "back"}}}]},
            ],
        });
        let rules = rules_of(vec![policy("shop", "web", spec)]);
        assert_eq!(addresses(&rules, "shop/web/ingress-0/pods"), ["10.42.1.3"], "the policy's namespace only");
        assert_eq!(addresses(&rules, "shop/web/ingress-1/pods"), ["10.42.0.4", "10.42.1.4"]);
        assert_eq!(addresses(&rules, "shop/web/ingress-2/pods"), ["10.42.0.5", "10.42.1.4"], "clients anywhere");
        assert_eq!(addresses(&rules, "shop/web/ingress-3/pods"), ["10.42.0.5"], "by the namespace's name");
        let chain = &rules.chains["ingress-shop/web-2"];
        let expected: Vec<Rule> = (0..4).map(|i| allow(Some(&format!("shop/web/ingress-{i}/pods")), None)).collect();
        assert_eq!(chain.rules, expected);
        assert!(!rules.chains.contains_key("ingress-shop/db"), "not selected, and not on this node anyway");
    }

    #[test]
    fn ip_blocks_lose_their_exceptions_and_join() {
        let spec = json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.0/16", "10.0.0.0/24"]}},
            {"ipBlock": {"cidr": "10.42.0.0/24", "except": ["10.42.0.4/32"]}},
            {"ipBlock": {"cidr": "fd00::/8"}},
            {"podSelector": {"matchLabels": {"app": "db"}}},
        ]}]});
        let rules = rules_of(vec![policy("shop", "blocks", spec)]);
        // 10.42.0.0-10.42.0.3 joins the range before it.
        let expected = [("10.0.1.0", "10.42.0.3"), ("10.42.0.5", "10.42.0.255"), ("10.43.0.0", "10.255.255.255")];
        assert_eq!(
            rules.sets["shop/blocks/ingress-0/blocks"],
            Elements::Ranges(expected.iter().map(|(a, b)| (ip(a), ip(b))).collect())
        );
        assert_eq!(
            rules.chains["ingress-shop/web-1"].rules,
            [allow(Some("shop/blocks/ingress-0/pods"), None), allow(Some("shop/blocks/ingress-0/blocks"), None)]
        );
    }

    #[test]
    fn ports_numbers_ranges_protocols_and_names_resolved_on_each_local_pod() {
        let spec = json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
            {"ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}, {"port": 8000, "endPort": 8100}, {"protocol": "SCTP"}]},
            {"from": [], "ports": [{"port": "metrics"}]},
        ]});
        let rules = rules_of(vec![policy("shop", "ports", spec)]);
        let web = |http: u16| {
            vec![
                allow(None, Some((Protocol::Tcp, Some((http, http))))),
                allow(None, Some((Protocol::Udp, Some((53, 53))))),
                allow(None, Some((Protocol::Tcp, Some((8000, 8100))))),
                allow(None, Some((Protocol::Sctp, None))),
            ]
        };
        assert_eq!(rules.chains["ingress-shop/web-1"].rules, web(8080));
        // Its own number for `http`; the second rule's only port is one no pod has: it adds nothing.
        assert_eq!(rules.chains["ingress-shop/web-2"].rules, web(9090));
    }

    #[test]
    fn egress_named_ports_resolve_on_each_destination() {
        let spec = json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}], "ports": [{"port": "http"}, {"port": 443}]},
            {"ports": [{"port": "http"}]},
            {"to": [{"ipBlock": {"cidr": "10.42.1.0/24"}}], "ports": [{"port": "http"}]},
        ]});
        let rules = rules_of(vec![policy("back", "out", spec)]);
        assert!(rules.ingress.is_empty(), "policyTypes Egress alone");
        assert_eq!(rules.egress[&ip("10.42.0.5")], "egress-back/client");
        let all_web = [("10.42.0.2", 8080), ("10.42.0.3", 9090), ("10.42.1.2", 8080)];
        let endpoints =
            |list: &[(&str, u16)]| Elements::Endpoints(list.iter().map(|(a, p)| (ip(a), Protocol::Tcp, *p)).collect());
        assert_eq!(rules.sets["back/out/egress-0/named-ports"], endpoints(&all_web));
        assert_eq!(rules.sets["back/out/egress-1/named-ports"], endpoints(&all_web), "no peers: every pod");
        assert_eq!(rules.sets["back/out/egress-2/named-ports"], endpoints(&[("10.42.1.2", 8080)]));
        assert!(!rules.sets.contains_key("back/out/egress-2/blocks"), "no rule uses it");
        assert_eq!(
            rules.chains["egress-back/client"].rules,
            [
                allow(Some("back/out/egress-0/pods"), Some((Protocol::Tcp, Some((443, 443))))),
                Rule::AllowEndpoints("back/out/egress-0/named-ports".into()),
                Rule::AllowEndpoints("back/out/egress-1/named-ports".into()),
                Rule::AllowEndpoints("back/out/egress-2/named-ports".into()),
            ]
        );
    }

    #[test]
    fn policies_add_up_and_egress_rules_imply_egress() {
        let rules = rules_of(vec![
            policy("shop", "a", json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]})),
            policy("shop", "b", json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]})),
        ]);
        assert_eq!(rules.chains["ingress-shop/web-1"].rules, [allow(None, None)], "b allows all, a none");
        assert_eq!(rules.chains["egress-shop/web-1"].rules, [allow(Some("shop/a/egress-0/pods"), None)]);
        assert_eq!(addresses(&rules, "shop/a/egress-0/pods"), ["10.42.0.2", "10.42.0.3", "10.42.1.2", "10.42.1.3"]);
    }

    #[test]
    fn host_network_and_ended_pods_take_no_part() {
        let mut pods = pods();
        let mut host = (*pods[0]).clone();
        host.metadata.name = Some("host".into());
        host.spec.as_mut().unwrap().host_network = Some(true);
        let mut ended = (*pods[1]).clone();
        ended.metadata.name = Some("ended".into());
        ended.status.as_mut().unwrap().phase = Some("Succeeded".into());
        pods = vec![Arc::new(host), Arc::new(ended)];
        let policies =
            vec![policy("shop", "deny", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))];
        let rules = rules(&Cluster { policies: &policies, pods: &pods, namespaces: &namespaces() }, "n1");
        assert_eq!(rules, Rules::default());
    }

    #[test]
    fn names_nftables_would_refuse_are_shortened_uniquely() {
        let long = |c: &str| format!("ingress-ns/{}", c.repeat(300));
        let (a, b) = (fit(long("a")), fit(long("b")));
        assert_eq!((a.len(), b.len()), (NAME_MAX, NAME_MAX));
        assert_ne!(a, b);
        assert_eq!(fit("ingress-ns/web".into()), "ingress-ns/web");
    }
}
