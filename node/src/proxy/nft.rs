//! The node's nftables table. Every Service shares a few generic chains, and what is particular to a Service
//! lives only in map and set elements: an endpoint change is a handful of element updates, whose cost does
//! not grow with the number of Services (nor does the first packet's lookup: hash maps), and nft's own
//! cache (which `nft` loads whole, chains included, before any rule or element command) stays small.
//!
//! ```text
//! table ip skiff-ID (the id of the node's network, as in its bridge's name skfID)
//!   prerouting, output (nat, dstnat): jump services
//!   services:  ip daddr . l4proto . dport vmap @service-ips                       -> an entry chain
//!              fib daddr type local, l4proto . dport vmap @service-nodeports      -> an entry chain
//!   entry chains, one per kind of address and number of endpoints (cluster-entry-3, nodeport-local-1-3):
//!              mark for masquerade (from outside the pod ranges for a cluster IP, always for a node port
//!              or external address, never under externalTrafficPolicy Local), then goto a pick chain
//!   FAMILY-pick-N: numgen random mod N vmap -> FAMILY-slot-I (a client with ClientIP affinity first goes
//!              back to the slot it used, from the timeout set FAMILY-clients-I)
//!   FAMILY-slot-I: a pod reaching itself is marked for masquerade (FAMILY-hairpin-I);
//!              dnat to the packet's key looked up in the map FAMILY-backends-I: the I-th endpoint
//!   postrouting (nat, srcnat): masquerade what is marked, and pods' traffic leaving the pod ranges
//!   input, forward, output (filter): new connections to a service port without endpoints are rejected
//! ```
//!
//! A family is the key a connection is looked up by (its address, or a node port's protocol and port), the
//! endpoints list it picks from (for traffic from inside or from outside the cluster), and the ClientIP
//! affinity timeout if any. So a service port with N endpoints and a cluster IP is `service-ips[ip . tcp .
//! 80] = goto cluster-entry-N` and, for each I below N, `cluster-backends-I[ip . tcp . 80] = endpoint I`.
//!
//! Written as nft's text commands and applied by the `nft` program in one netlink batch (all or nothing),
//! as kube-proxy's knftables drives `nft -f`. nft 1.0.6's JSON input crashes on a DNAT through a map with
//! concatenated data; the text input takes it.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use super::model::{Endpoint, ServicePort};

/// The mark on packets to masquerade on their way out (kube-proxy's bit).
const MASQUERADE_MARK: u32 = 0x4000;
/// Priorities of the base chains: NAT at the standard dstnat and srcnat; the no-endpoint filter before
/// other filters, as kube-proxy's.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = -110;

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const POD_RANGES: &str = "pod-ranges";
const SERVICES_CHAIN: &str = "services";
const MARK_CHAIN: &str = "mark-for-masquerade";
const MASQUERADE_CHAIN: &str = "masquerading";
const REJECT_CHAIN: &str = "reject-no-endpoints";

/// `ip daddr . meta l4proto . th dport`, and the type of its values.
const ADDRESS_KEY: &str = "ip daddr . meta l4proto . th dport";
const ADDRESS_TYPE: &str = "ipv4_addr . inet_proto . inet_service";
/// `meta l4proto . th dport`: a node port.
const NODE_PORT_KEY: &str = "meta l4proto . th dport";
const NODE_PORT_TYPE: &str = "inet_proto . inet_service";

/// Which addresses and which endpoints a lookup is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// Cluster IPs (and external addresses that pods reach under `externalTrafficPolicy: Local`): by
    /// address, to the endpoints for traffic from inside.
    Cluster,
    /// External and load balancer addresses: by address, to the endpoints for traffic from outside.
    External,
    /// Node ports: by protocol and port, to the endpoints for traffic from outside.
    NodePort,
    /// Node ports that pods reach under `externalTrafficPolicy: Local`: to the endpoints for traffic from
    /// inside.
    NodePortFromPods,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::External => "external",
            Kind::NodePort => "nodeport",
            Kind::NodePortFromPods => "nodeport-pods",
        }
    }

    fn by_address(self) -> bool {
        matches!(self, Kind::Cluster | Kind::External)
    }

    fn key(self) -> &'static str {
        if self.by_address() { ADDRESS_KEY } else { NODE_PORT_KEY }
    }

    fn key_type(self) -> &'static str {
        if self.by_address() { ADDRESS_TYPE } else { NODE_PORT_TYPE }
    }

    /// Whether pods come this way unmarked, so that one reaching itself must be marked here (the other
    /// kinds mark all their traffic before, or serve only clients from outside).
    fn hairpin(self) -> bool {
        matches!(self, Kind::Cluster | Kind::NodePortFromPods)
    }
}

/// A lookup key, an endpoints list and an affinity: what a set of generic chains and maps is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Family {
    kind: Kind,
    /// ClientIP affinity's timeout in seconds.
    affinity: Option<u32>,
}

impl Family {
    fn name(self) -> String {
        match self.affinity {
            Some(seconds) => format!("{}-affinity{seconds}", self.kind.name()),
            None => self.kind.name().to_string(),
        }
    }

    fn backends(self, slot: usize) -> String {
        format!("{}-backends-{slot}", self.name())
    }

    fn hairpin(self, slot: usize) -> String {
        format!("{}-hairpin-{slot}", self.name())
    }

    fn clients(self, slot: usize) -> String {
        format!("{}-clients-{slot}", self.name())
    }

    fn slot(self, slot: usize) -> String {
        format!("{}-slot-{slot}", self.name())
    }

    fn pick(self, endpoints: usize) -> String {
        format!("{}-pick-{endpoints}", self.name())
    }
}

/// The chain a service port's address leads to: shared by every port with the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Entry {
    /// A cluster IP: connections from outside the pod ranges (the node itself, another node) are marked,
    /// as they must come back through this node to be un-DNATed.
    ClusterIp { family: Family, endpoints: usize },
    /// A node port or an external address under `externalTrafficPolicy: Cluster`: every connection is
    /// masqueraded.
    Outside { family: Family, endpoints: usize },
    /// The same under `Local`: the client's address is kept and only this node's endpoints serve it
    /// (none: dropped); pods are inside the cluster, and any endpoint serves them.
    Local { family: Family, endpoints: usize, pods: Family, pod_endpoints: usize },
}

impl Entry {
    fn name(self) -> String {
        match self {
            Entry::ClusterIp { family, endpoints } | Entry::Outside { family, endpoints } => {
                format!("{}-entry-{endpoints}", family.name())
            }
            Entry::Local { family, endpoints, pod_endpoints, .. } => {
                format!("{}-local-{endpoints}-{pod_endpoints}", family.name())
            }
        }
    }
}

/// The generic chains already in the table, so that a sync makes only the missing ones. A fresh table has
/// none.
#[derive(Default)]
pub struct Shapes {
    chains: HashSet<String>,
}

/// One element of a set or map, in nft's text: `key` or `key : value`.
type ElementId = (String, String);

/// What one service port puts into the table: map and set elements, and the entry chains they lead to.
#[derive(Default)]
struct Lookups {
    elements: BTreeMap<ElementId, Option<String>>,
    entries: Vec<Entry>,
}

impl Lookups {
    fn insert(&mut self, set: &str, key: String, value: Option<String>) {
        self.elements.insert((set.to_string(), key), value);
    }

    /// The address (or node port) `key` leads to `entry`, or is rejected when no endpoint serves it.
    fn lead(&mut self, map: &str, no_endpoints: &str, key: &str, entry: Option<Entry>) {
        match entry {
            Some(entry) => {
                self.insert(map, key.to_string(), Some(format!("goto {}", entry.name())));
                self.entries.push(entry);
            }
            None => self.insert(no_endpoints, key.to_string(), None),
        }
    }

    /// The endpoints behind `key` in `family`, slot by slot.
    fn endpoints(&mut self, family: Family, key: &str, endpoints: &[&Endpoint]) {
        for (slot, endpoint) in endpoints.iter().enumerate() {
            self.insert(&family.backends(slot), key.to_string(), Some(format!("{} . {}", endpoint.ip, endpoint.port)));
            if family.kind.hairpin() {
                self.insert(&family.hairpin(slot), format!("{} . {key}", endpoint.ip), None);
            }
        }
    }

    fn of(port: &ServicePort) -> Self {
        let mut found = Lookups::default();
        let family = |kind| Family { kind, affinity: port.affinity_seconds };
        let internal = port.internal_endpoints();
        let external = port.external_endpoints();
        let protocol = port.protocol.nft();
        for ip in &port.cluster_ips {
            let key = format!("{ip} . {protocol} . {}", port.port);
            let entry = Entry::ClusterIp { family: family(Kind::Cluster), endpoints: internal.len() };
            found.lead(SERVICE_IPS, NO_ENDPOINT_SERVICES, &key, (!internal.is_empty()).then_some(entry));
            found.endpoints(family(Kind::Cluster), &key, &internal);
        }
        let outside = |kind: Kind, from_pods: Kind| {
            let served = !external.is_empty() || (port.external_local && !internal.is_empty());
            let entry = if port.external_local {
                let pods = family(from_pods);
                Entry::Local { family: family(kind), endpoints: external.len(), pods, pod_endpoints: internal.len() }
            } else {
                Entry::Outside { family: family(kind), endpoints: external.len() }
            };
            served.then_some(entry)
        };
        for ip in &port.external_ips {
            let key = format!("{ip} . {protocol} . {}", port.port);
            found.lead(SERVICE_IPS, NO_ENDPOINT_SERVICES, &key, outside(Kind::External, Kind::Cluster));
            found.endpoints(family(Kind::External), &key, &external);
            if port.external_local {
                found.endpoints(family(Kind::Cluster), &key, &internal);
            }
        }
        if let Some(node_port) = port.node_port {
            let key = format!("{protocol} . {node_port}");
            found.lead(SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS, &key, outside(Kind::NodePort, Kind::NodePortFromPods));
            found.endpoints(family(Kind::NodePort), &key, &external);
            if port.external_local {
                found.endpoints(family(Kind::NodePortFromPods), &key, &internal);
            }
        }
        found
    }
}

/// One transaction on the table: nft commands gathered, then applied at once. Objects come first, then the
/// elements that go, then those that come (an element may go and come back with another value).
pub struct Transaction<'t> {
    table: &'t str,
    shapes: &'t mut Shapes,
    commands: Vec<String>,
    deleted: BTreeMap<String, Vec<String>>,
    added: BTreeMap<String, Vec<String>>,
}

impl<'t> Transaction<'t> {
    pub fn new(table: &'t str, shapes: &'t mut Shapes) -> Self {
        Transaction { table, shapes, commands: Vec::new(), deleted: BTreeMap::new(), added: BTreeMap::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.deleted.is_empty() && self.added.is_empty()
    }

    fn command(&mut self, verb: &str, object: &str, rest: &str) {
        self.commands.push(format!("{verb} {object} ip {} {rest}", self.table));
    }

    fn chain(&mut self, name: &str) {
        self.command("add", "chain", name);
    }

    fn rule(&mut self, chain: &str, statements: &str) {
        self.command("add", "rule", &format!("{chain} {statements}"));
    }

    /// A fresh table: whatever an earlier agent left is removed in the same transaction, so traffic meets
    /// either the old rules or the new ones.
    pub fn recreate_table(&mut self) {
        self.delete_table();
        self.command("add", "table", "");
        self.shapes.chains.clear();
        self.command("add", "map", &format!("{SERVICE_IPS} {{ type {ADDRESS_TYPE} : verdict ; }}"));
        self.command("add", "map", &format!("{SERVICE_NODEPORTS} {{ type {NODE_PORT_TYPE} : verdict ; }}"));
        self.command("add", "set", &format!("{NO_ENDPOINT_SERVICES} {{ type {ADDRESS_TYPE} ; }}"));
        self.command("add", "set", &format!("{NO_ENDPOINT_NODEPORTS} {{ type {NODE_PORT_TYPE} ; }}"));
        self.command("add", "set", &format!("{POD_RANGES} {{ type ipv4_addr ; flags interval ; }}"));
        for (name, kind, hook, priority) in [
            ("prerouting", "nat", "prerouting", DSTNAT),
            ("output", "nat", "output", DSTNAT),
            ("postrouting", "nat", "postrouting", SRCNAT),
            ("filter-input", "filter", "input", FILTER),
            ("filter-forward", "filter", "forward", FILTER),
            ("filter-output", "filter", "output", FILTER),
        ] {
            self.chain(&format!("{name} {{ type {kind} hook {hook} priority {priority} ; }}"));
        }
        for name in [SERVICES_CHAIN, MARK_CHAIN, MASQUERADE_CHAIN, REJECT_CHAIN] {
            self.chain(name);
        }
        self.rule("prerouting", &format!("jump {SERVICES_CHAIN}"));
        self.rule("output", &format!("jump {SERVICES_CHAIN}"));
        self.rule("postrouting", &format!("jump {MASQUERADE_CHAIN}"));
        self.rule(SERVICES_CHAIN, &format!("{ADDRESS_KEY} vmap @{SERVICE_IPS}"));
        // Node ports answer on the node's own addresses, not on 127.0.0.1 (as kube-proxy's nftables mode:
        // the kernel would not route the DNATed packet out of loopback).
        self.rule(
            SERVICES_CHAIN,
            &format!("fib daddr type local ip daddr != 127.0.0.0/8 {NODE_PORT_KEY} vmap @{SERVICE_NODEPORTS}"),
        );
        self.rule(MARK_CHAIN, &format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"));
        self.rule(
            MASQUERADE_CHAIN,
            &format!(
                "meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} \
                 meta mark set meta mark ^ {MASQUERADE_MARK:#x} masquerade fully-random"
            ),
        );
        // Pods reach every pod range by their own address; anything else sees the node's.
        self.rule(
            MASQUERADE_CHAIN,
            &format!("ip saddr @{POD_RANGES} ip daddr != @{POD_RANGES} masquerade fully-random"),
        );
        for chain in ["filter-input", "filter-forward", "filter-output"] {
            self.rule(chain, &format!("ct state new {ADDRESS_KEY} @{NO_ENDPOINT_SERVICES} jump {REJECT_CHAIN}"));
        }
        self.rule(
            "filter-input",
            &format!("ct state new fib daddr type local {NODE_PORT_KEY} @{NO_ENDPOINT_NODEPORTS} jump {REJECT_CHAIN}"),
        );
        self.rule(REJECT_CHAIN, "reject");
    }

    /// Removes the table; made first, so that removing it succeeds whether or not it exists.
    pub fn delete_table(&mut self) {
        self.command("add", "table", "");
        self.command("delete", "table", "");
    }

    /// The pod ranges of every node: their traffic among themselves keeps its addresses.
    pub fn set_pod_ranges(&mut self, ranges: &[(Ipv4Addr, u8)]) {
        self.command("flush", "set", POD_RANGES);
        if !ranges.is_empty() {
            let elements: Vec<String> = ranges.iter().map(|(network, len)| format!("{network}/{len}")).collect();
            self.command("add", "element", &format!("{POD_RANGES} {{ {} }}", elements.join(", ")));
        }
    }

    /// Takes one service port from what `old` programmed to `new` (either may be None: added, removed):
    /// the elements that differ, and the generic chains the new ones lead to if the table lacks them.
    pub fn update_port(&mut self, old: Option<&ServicePort>, new: Option<&ServicePort>) {
        if old == new {
            return;
        }
        let before = old.map(Lookups::of).unwrap_or_default();
        let after = new.map(Lookups::of).unwrap_or_default();
        for entry in after.entries {
            self.entry(entry);
        }
        for ((set, key), value) in &before.elements {
            if after.elements.get(&(set.clone(), key.clone())) != Some(value) {
                self.deleted.entry(set.clone()).or_default().push(key.clone());
            }
        }
        for ((set, key), value) in after.elements {
            if before.elements.get(&(set.clone(), key.clone())) != Some(&value) {
                let element = match value {
                    Some(value) => format!("{key} : {value}"),
                    None => key,
                };
                self.added.entry(set).or_default().push(element);
            }
        }
    }

    /// Makes `name` unless the table has it; true when it is to be made now (and its rules written).
    fn make(&mut self, name: String) -> bool {
        let new = self.shapes.chains.insert(name.clone());
        if new {
            self.chain(&name);
        }
        new
    }

    fn entry(&mut self, entry: Entry) {
        let name = entry.name();
        if !self.make(name.clone()) {
            return;
        }
        match entry {
            Entry::ClusterIp { family, endpoints } => {
                self.rule(&name, &format!("ip saddr != @{POD_RANGES} jump {MARK_CHAIN}"));
                let pick = self.pick(family, endpoints);
                self.rule(&name, &format!("goto {pick}"));
            }
            Entry::Outside { family, endpoints } => {
                self.rule(&name, &format!("jump {MARK_CHAIN}"));
                let pick = self.pick(family, endpoints);
                self.rule(&name, &format!("goto {pick}"));
            }
            Entry::Local { family, endpoints, pods, pod_endpoints } => {
                if pod_endpoints > 0 {
                    let pick = self.pick(pods, pod_endpoints);
                    self.rule(&name, &format!("ip saddr @{POD_RANGES} goto {pick}"));
                }
                if endpoints > 0 {
                    let pick = self.pick(family, endpoints);
                    self.rule(&name, &format!("goto {pick}"));
                } else {
                    self.rule(&name, "drop");
                }
            }
        }
    }

    /// The chain choosing one of `endpoints` slots of `family`: the one a client with affinity last used,
    /// else one at random.
    fn pick(&mut self, family: Family, endpoints: usize) -> String {
        let name = family.pick(endpoints);
        if self.make(name.clone()) {
            let slots: Vec<String> = (0..endpoints).map(|slot| self.slot(family, slot)).collect();
            if family.affinity.is_some() {
                for (slot, chain) in slots.iter().enumerate() {
                    let key = family.kind.key();
                    self.rule(&name, &format!("ip saddr . {key} @{} goto {chain}", family.clients(slot)));
                }
            }
            let choices: Vec<String> =
                slots.iter().enumerate().map(|(i, chain)| format!("{i} : goto {chain}")).collect();
            self.rule(&name, &format!("numgen random mod {endpoints} vmap {{ {} }}", choices.join(", ")));
        }
        name
    }

    /// The chain DNATing to the endpoint in `slot`, with the maps and sets it reads.
    fn slot(&mut self, family: Family, slot: usize) -> String {
        let name = family.slot(slot);
        if !self.make(name.clone()) {
            return name;
        }
        let (key, key_type) = (family.kind.key(), family.kind.key_type());
        let backends = family.backends(slot);
        self.command("add", "map", &format!("{backends} {{ type {key_type} : ipv4_addr . inet_service ; }}"));
        if family.kind.hairpin() {
            // A pod reaching itself through the Service: its reply would not pass this node's NAT otherwise.
            let hairpin = family.hairpin(slot);
            self.command("add", "set", &format!("{hairpin} {{ type ipv4_addr . {key_type} ; }}"));
            self.rule(&name, &format!("ip saddr . {key} @{hairpin} jump {MARK_CHAIN}"));
        }
        if let Some(seconds) = family.affinity {
            let clients = family.clients(slot);
            let set = format!("{clients} {{ type ipv4_addr . {key_type} ; flags timeout ; timeout {seconds}s ; }}");
            self.command("add", "set", &set);
            self.rule(&name, &format!("update @{clients} {{ ip saddr . {key} }}"));
        }
        self.rule(&name, &format!("meta l4proto {{ tcp, udp, sctp }} dnat ip to {key} map @{backends}"));
        name
    }

    /// The transaction as nft's input (`nft -f -`).
    pub fn into_script(self) -> String {
        let mut script = self.commands;
        for (verb, elements) in [("delete", self.deleted), ("add", self.added)] {
            for (set, keys) in elements {
                script.push(format!("{verb} element ip {} {set} {{ {} }}", self.table, keys.join(", ")));
            }
        }
        script.push(String::new());
        script.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn port(endpoints: &[(&str, bool)]) -> ServicePort {
        ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ips: vec!["10.43.0.5".parse().unwrap()],
            port: 80,
            node_port: None,
            external_ips: vec![],
            endpoints: endpoints
                .iter()
                .map(|(ip, local)| Endpoint { ip: ip.parse().unwrap(), port: 8080, local: *local })
                .collect(),
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
        }
    }

    fn script_lines(transaction: Transaction<'_>) -> Vec<String> {
        transaction.into_script().lines().map(str::to_string).collect()
    }

    fn count(lines: &[String], needle: &str) -> usize {
        lines.iter().filter(|c| c.contains(needle)).count()
    }

    #[test]
    fn an_unchanged_port_costs_nothing() {
        let mut shapes = Shapes::default();
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        let port = port(&[("10.42.0.2", true)]);
        transaction.update_port(Some(&port), Some(&port));
        assert!(transaction.is_empty());
    }

    #[test]
    fn a_new_port_gets_its_elements_and_the_chains_the_table_lacks() {
        let mut shapes = Shapes::default();
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        transaction.update_port(None, Some(&port(&[("10.42.0.2", true), ("10.42.1.2", false)])));
        let lines = script_lines(transaction);
        // An entry, a pick and two slots.
        assert_eq!(count(&lines, "add chain"), 4, "{lines:#?}");
        assert_eq!(count(&lines, "numgen random mod 2"), 1);
        assert!(
            lines
                .contains(&"add element ip skiff-t service-ips { 10.43.0.5 . tcp . 80 : goto cluster-entry-2 }".into())
        );
        assert!(
            lines.contains(
                &"add element ip skiff-t cluster-backends-1 { 10.43.0.5 . tcp . 80 : 10.42.1.2 . 8080 }".into()
            )
        );
        assert!(
            lines.contains(&"add element ip skiff-t cluster-hairpin-0 { 10.42.0.2 . 10.43.0.5 . tcp . 80 }".into())
        );

        // A second Service of as many endpoints needs no chain.
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        let mut other = port(&[("10.42.0.3", true), ("10.42.1.3", false)]);
        other.cluster_ips = vec!["10.43.0.6".parse().unwrap()];
        transaction.update_port(None, Some(&other));
        let lines = script_lines(transaction);
        assert_eq!(count(&lines, "add chain"), 0, "{lines:#?}");
        assert_eq!(count(&lines, "add element"), 5);
    }

    #[test]
    fn an_endpoint_change_touches_only_that_endpoints_elements() {
        let mut shapes = Shapes::default();
        let before = port(&[("10.42.0.2", true), ("10.42.1.2", false)]);
        Transaction::new("skiff-t", &mut shapes).update_port(None, Some(&before));
        let after = port(&[("10.42.0.2", true), ("10.42.1.3", false)]);
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        transaction.update_port(Some(&before), Some(&after));
        let lines = script_lines(transaction);
        assert_eq!(
            lines,
            [
                "delete element ip skiff-t cluster-backends-1 { 10.43.0.5 . tcp . 80 }",
                "delete element ip skiff-t cluster-hairpin-1 { 10.42.1.2 . 10.43.0.5 . tcp . 80 }",
                "add element ip skiff-t cluster-backends-1 { 10.43.0.5 . tcp . 80 : 10.42.1.3 . 8080 }",
                "add element ip skiff-t cluster-hairpin-1 { 10.42.1.3 . 10.43.0.5 . tcp . 80 }",
            ]
        );
    }

    #[test]
    fn a_port_without_endpoints_is_rejected_instead_of_dispatched() {
        let mut shapes = Shapes::default();
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        transaction.update_port(None, Some(&port(&[])));
        let lines = script_lines(transaction);
        assert_eq!(lines, ["add element ip skiff-t no-endpoint-services { 10.43.0.5 . tcp . 80 }"]);
    }

    #[test]
    fn a_local_node_port_without_local_endpoints_serves_only_pods() {
        let mut shapes = Shapes::default();
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        let mut local = port(&[("10.42.1.2", false)]);
        (local.node_port, local.external_local) = (Some(30080), true);
        transaction.update_port(None, Some(&local));
        let lines = script_lines(transaction);
        assert!(lines.contains(&"add rule ip skiff-t nodeport-local-0-1 drop".into()), "{lines:#?}");
        assert!(
            lines
                .contains(&"add element ip skiff-t service-nodeports { tcp . 30080 : goto nodeport-local-0-1 }".into())
        );
        assert!(
            lines
                .contains(&"add element ip skiff-t nodeport-pods-backends-0 { tcp . 30080 : 10.42.1.2 . 8080 }".into())
        );
    }

    #[test]
    fn a_removed_port_leaves_no_element() {
        let mut shapes = Shapes::default();
        let mut external = port(&[("10.42.0.2", true)]);
        external.node_port = Some(30080);
        external.external_ips = vec!["192.0.2.7".parse().unwrap()];
        external.affinity_seconds = Some(60);
        Transaction::new("skiff-t", &mut shapes).update_port(None, Some(&external));
        let mut transaction = Transaction::new("skiff-t", &mut shapes);
        transaction.update_port(Some(&external), None);
        let lines = script_lines(transaction);
        assert!(lines.iter().all(|line| line.starts_with("delete element")), "{lines:#?}");
        for needle in
            [SERVICE_IPS, SERVICE_NODEPORTS, "cluster-affinity60-backends-0", "nodeport-affinity60-backends-0"]
        {
            assert_eq!(count(&lines, &format!(" {needle} ")), 1, "{needle} in {lines:#?}");
        }
    }
}

/// The scripts against the real kernel, through the real `nft`, in a network namespace of their own.
#[cfg(test)]
mod kernel_tests {

    use super::super::model::Protocol;
    use super::*;

    fn port(endpoints: &[&str], node_port: Option<u16>, affinity_seconds: Option<u32>) -> ServicePort {
        ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ips: vec!["10.43.0.5".parse().unwrap()],
            port: 80,
            node_port,
            external_ips: vec!["192.0.2.7".parse().unwrap()],
            endpoints: endpoints
                .iter()
                .map(|ip| Endpoint { ip: ip.parse().unwrap(), port: 8080, local: ip.starts_with("10.42.0.") })
                .collect(),
            external_local: node_port.is_some(),
            internal_local: false,
            affinity_seconds,
        }
    }

    #[test]
    fn the_kernel_takes_every_kind_of_change() {
        assert!(crate::network::is_root(), "nftables tests need root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let steps = [
            (None, Some(port(&["10.42.0.2", "10.42.1.2"], None, None))),
            (Some(port(&["10.42.0.2", "10.42.1.2"], None, None)), Some(port(&["10.42.0.2", "10.42.1.3"], None, None))),
            (Some(port(&["10.42.0.2", "10.42.1.3"], None, None)), Some(port(&["10.42.0.2"], Some(30080), Some(60)))),
            (Some(port(&["10.42.0.2"], Some(30080), Some(60))), Some(port(&[], Some(30080), Some(60)))),
            (Some(port(&[], Some(30080), Some(60))), Some(port(&["10.42.1.9"], Some(30080), Some(60)))),
        ];
        let mut shapes = Shapes::default();
        let mut script = String::from("set -e\n");
        for (i, (old, new)) in steps.iter().enumerate() {
            let mut transaction = Transaction::new("skiff-test", &mut shapes);
            if i == 0 {
                transaction.recreate_table();
                transaction.set_pod_ranges(&[("10.42.0.0".parse().unwrap(), 24), ("10.42.1.0".parse().unwrap(), 24)]);
            }
            transaction.update_port(old.as_ref(), new.as_ref());
            let file = dir.path().join(format!("{i}.nft"));
            std::fs::write(&file, transaction.into_script()).unwrap();
            script.push_str(&format!("echo step {i} >&2; nft -f {}\n", file.display()));
        }
        script.push_str("nft list table ip skiff-test > ");
        script.push_str(&dir.path().join("during").display().to_string());
        let mut last = Transaction::new("skiff-test", &mut shapes);
        last.update_port(steps.last().unwrap().1.as_ref(), None);
        let file = dir.path().join("last.nft");
        std::fs::write(&file, last.into_script()).unwrap();
        script.push_str(&format!("\nnft -f {}\nnft list table ip skiff-test\n", file.display()));
        let output = std::process::Command::new("unshare").args(["--net", "sh", "-c", &script]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "nft refused a step: {stderr}\n{script}");
        let during = std::fs::read_to_string(dir.path().join("during")).unwrap();
        for expected in [
            "tcp . 30080 : goto nodeport-affinity60-local-0-1",
            "10.43.0.5 . tcp . 80 : 10.42.1.9 . 8080",
            "numgen random mod 2",
            "update @cluster-affinity60-clients-0",
        ] {
            assert!(during.contains(expected), "{expected} in:\n{during}");
        }
        assert!(!during.contains("10.42.1.3 ."), "the removed endpoint's elements are gone:\n{during}");
        for gone in ["10.43.0.5 .", "192.0.2.7 .", "tcp . 30080", "10.42.1.9 ."] {
            assert!(!stdout.contains(gone), "the removed Service left {gone}:\n{stdout}");
        }
    }
}
