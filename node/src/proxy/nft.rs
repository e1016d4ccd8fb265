//! The node's nftables table, as kube-proxy's nftables mode lays it out: verdict maps from a Service's
//! address, protocol and port to a chain per service port, which picks an endpoint with `numgen random`
//! and jumps to a chain per endpoint that DNATs to it. A change to one Service touches only its chains and
//! map elements, in one transaction (`nft -j -f -` applies a document as one netlink batch: all or
//! nothing), so the cost of an update does not grow with the number of Services, and neither does the
//! first packet's lookup (a hash map).
//!
//! ```text
//! table ip skiff-ID (the id of the node's network, as in its bridge's name skfID)
//!   prerouting, output (nat, dstnat): jump services
//!   services:  ip daddr . l4proto . dport vmap @service-ips           -> svc-* (cluster IPs), ext-* (others)
//!              fib daddr type local, l4proto . dport vmap @service-nodeports   -> ext-*
//!   svc-PORT:  from outside the pod ranges: mark for masquerade; numgen random mod N vmap -> ep-*
//!   ext-PORT:  mark for masquerade (unless externalTrafficPolicy Local), then likewise over its endpoints
//!   ep-PORT__IP/PORT: a pod reaching itself: mark for masquerade; dnat to IP:PORT
//!   postrouting (nat, srcnat): masquerade what is marked, and pods' traffic leaving the pod ranges
//!   input, forward, output (filter): new connections to a service port without endpoints are rejected
//! ```
//!
//! Built with the `nftables` crate (see [`crate::nft`]): typed documents of nft's JSON API, applied by the
//! `nft` program, as kube-proxy's knftables drives `nft -f`. The alternatives speak netlink directly
//! (rustables) but do not cover verdict maps with concatenated keys, which the O(1) lookup depends on.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, FibFlag, MetaKey, NamedExpression, NgMode, Numgen, SetItem};
use nftables::schema::{FlushObject, NfListObject, Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Mangle, NAT, NATFlag, Operator, Reject, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};

use super::model::{Endpoint, ServicePort};
use crate::nft::{Document, concat, field, goto, goto_verdict, is_local, jump, matches, meta, prefix, s, set_ref};

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

/// One transaction on the table: commands gathered, then applied at once.
pub struct Transaction<'t> {
    doc: Document<'t>,
}

/// `ip daddr . meta l4proto . th dport`: a service's address, protocol and port.
fn address_key() -> Expression<'static> {
    concat(vec![field("ip", "daddr"), meta(MetaKey::L4proto), field("th", "dport")])
}

/// `meta l4proto . th dport`: a node port.
fn node_port_key() -> Expression<'static> {
    concat(vec![meta(MetaKey::L4proto), field("th", "dport")])
}

fn address_element(ip: Ipv4Addr, port: &ServicePort, number: u16) -> Expression<'static> {
    concat(vec![s(&ip.to_string()), s(port.protocol.nft()), Expression::Number(u32::from(number))])
}

fn node_port_element(port: &ServicePort, number: u16) -> Expression<'static> {
    concat(vec![s(port.protocol.nft()), Expression::Number(u32::from(number))])
}

/// The names of one service port's chains: readable (`ns/name/protocol/port`) as kube-proxy's.
struct Names {
    id: String,
}

impl Names {
    fn of(port: &ServicePort) -> Self {
        let name = if port.name.is_empty() { port.port.to_string() } else { port.name.clone() };
        Names { id: format!("{}/{}/{}", port.service, port.protocol.nft(), name) }
    }

    fn service(&self) -> String {
        format!("svc-{}", self.id)
    }

    fn external(&self) -> String {
        format!("ext-{}", self.id)
    }

    fn endpoint(&self, endpoint: &Endpoint) -> String {
        format!("ep-{}__{}/{}", self.id, endpoint.ip, endpoint.port)
    }

    /// The clients that last went to `endpoint`, for ClientIP affinity of `seconds` (part of the name,
    /// so that a new timeout is a new set rather than the old one deleted and made again).
    fn affinity(&self, endpoint: &Endpoint, seconds: u32) -> String {
        format!("aff{seconds}-{}__{}/{}", self.id, endpoint.ip, endpoint.port)
    }
}

impl<'t> Transaction<'t> {
    pub fn new(table: &'t str) -> Self {
        Transaction { doc: Document::new(table) }
    }

    pub fn is_empty(&self) -> bool {
        self.doc.is_empty()
    }

    /// A fresh table: whatever an earlier agent left is removed in the same transaction, so traffic meets
    /// either the old rules or the new ones.
    pub fn recreate_table(&mut self) {
        self.doc.recreate_table();
        let address =
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ipv4Addr, SetType::InetProto, SetType::InetService]));
        let node_port = SetTypeValue::Concatenated(Cow::Owned(vec![SetType::InetProto, SetType::InetService]));
        self.doc.verdict_map(SERVICE_IPS, serde_json::json!(["ipv4_addr", "inet_proto", "inet_service"]));
        self.doc.verdict_map(SERVICE_NODEPORTS, serde_json::json!(["inet_proto", "inet_service"]));
        let sets = [
            self.doc.set(NO_ENDPOINT_SERVICES, address, &[]),
            self.doc.set(NO_ENDPOINT_NODEPORTS, node_port, &[]),
            self.doc.set(POD_RANGES, SetTypeValue::Single(SetType::Ipv4Addr), &[SetFlag::Interval]),
        ];
        for set in sets {
            self.doc.add(NfListObject::Set(Box::new(set)));
        }
        for (name, kind, hook, prio) in [
            ("prerouting", NfChainType::NAT, NfHook::Prerouting, DSTNAT),
            ("output", NfChainType::NAT, NfHook::Output, DSTNAT),
            ("postrouting", NfChainType::NAT, NfHook::Postrouting, SRCNAT),
            ("filter-input", NfChainType::Filter, NfHook::Input, FILTER),
            ("filter-forward", NfChainType::Filter, NfHook::Forward, FILTER),
            ("filter-output", NfChainType::Filter, NfHook::Output, FILTER),
        ] {
            let chain = self.doc.base_chain(name, kind, hook, prio);
            self.doc.add(NfListObject::Chain(chain));
        }
        for name in [SERVICES_CHAIN, MARK_CHAIN, MASQUERADE_CHAIN, REJECT_CHAIN] {
            let chain = self.doc.chain(name);
            self.doc.add(NfListObject::Chain(chain));
        }
        self.doc.rule("prerouting", vec![jump(SERVICES_CHAIN)]);
        self.doc.rule("output", vec![jump(SERVICES_CHAIN)]);
        self.doc.rule("postrouting", vec![jump(MASQUERADE_CHAIN)]);
        self.doc.rule(
            SERVICES_CHAIN,
            vec![Statement::VerdictMap(VerdictMap { key: address_key(), data: set_ref(SERVICE_IPS) })],
        );
        // Node ports answer on the node's own addresses, not on 127.0.0.1 (as kube-proxy's nftables mode:
        // the kernel would not route the DNATed packet out of loopback).
        self.doc.rule(
            SERVICES_CHAIN,
            vec![
                is_local(FibFlag::Daddr),
                matches(field("ip", "daddr"), Operator::NEQ, prefix(Ipv4Addr::LOCALHOST, 8)),
                Statement::VerdictMap(VerdictMap { key: node_port_key(), data: set_ref(SERVICE_NODEPORTS) }),
            ],
        );
        let mark = meta(MetaKey::Mark);
        let or_mark = Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            Expression::Number(MASQUERADE_MARK),
        ])));
        self.doc.rule(MARK_CHAIN, vec![Statement::Mangle(Mangle { key: mark.clone(), value: or_mark })]);
        let marked = Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(MASQUERADE_MARK),
        )));
        let xor_mark = Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::XOR(
            meta(MetaKey::Mark),
            Expression::Number(MASQUERADE_MARK),
        )));
        let fully_random =
            Some(NAT { addr: None, family: None, port: None, flags: Some(HashSet::from([NATFlag::FullyRandom])) });
        self.doc.rule(
            MASQUERADE_CHAIN,
            vec![
                matches(marked, Operator::EQ, Expression::Number(MASQUERADE_MARK)),
                Statement::Mangle(Mangle { key: mark, value: xor_mark }),
                Statement::Masquerade(fully_random.clone()),
            ],
        );
        // Pods reach every pod range by their own address; anything else sees the node's.
        self.doc.rule(
            MASQUERADE_CHAIN,
            vec![
                matches(field("ip", "saddr"), Operator::EQ, set_ref(POD_RANGES)),
                matches(field("ip", "daddr"), Operator::NEQ, set_ref(POD_RANGES)),
                Statement::Masquerade(fully_random),
            ],
        );
        let new = matches(
            Expression::Named(NamedExpression::CT(nftables::expr::CT { key: "state".into(), family: None, dir: None })),
            Operator::IN,
            s("new"),
        );
        for chain in ["filter-input", "filter-forward", "filter-output"] {
            self.doc.rule(
                chain,
                vec![
                    new.clone(),
                    matches(address_key(), Operator::EQ, set_ref(NO_ENDPOINT_SERVICES)),
                    jump(REJECT_CHAIN),
                ],
            );
        }
        self.doc.rule(
            "filter-input",
            vec![
                new,
                is_local(FibFlag::Daddr),
                matches(node_port_key(), Operator::EQ, set_ref(NO_ENDPOINT_NODEPORTS)),
                jump(REJECT_CHAIN),
            ],
        );
        self.doc.rule(REJECT_CHAIN, vec![Statement::Reject(Some(Reject::new(None, None)))]);
    }

    /// The pod ranges of every node: their traffic among themselves keeps its addresses.
    pub fn set_pod_ranges(&mut self, ranges: &[(Ipv4Addr, u8)]) {
        let set = self.doc.set(POD_RANGES, SetTypeValue::Single(SetType::Ipv4Addr), &[SetFlag::Interval]);
        self.doc.flush(FlushObject::Set(Box::new(set)));
        if !ranges.is_empty() {
            let elements = ranges.iter().map(|(network, len)| prefix(*network, *len)).collect();
            let element = self.doc.element(POD_RANGES, elements);
            self.doc.add(element);
        }
    }

    /// Takes one service port from what `old` programmed to `new` (either may be None: added, removed).
    /// Objects are made before what refers to them and deleted after it; an object is never deleted and
    /// made again under its name in one transaction (the kernel refuses that), so chains that stay are
    /// emptied and rewritten instead.
    pub fn update_port(&mut self, old: Option<&ServicePort>, new: Option<&ServicePort>) {
        if old == new {
            return;
        }
        let old_lookups = old.map(|port| self.lookups(port)).unwrap_or_default();
        let new_lookups = new.map(|port| self.lookups(port)).unwrap_or_default();
        for gone in old_lookups.iter().filter(|l| !new_lookups.contains(l)) {
            self.doc.delete(gone.clone());
        }
        if let Some(new) = new {
            let names = Names::of(new);
            let same_shape = old.is_some_and(|old| old.affinity_seconds == new.affinity_seconds);
            for endpoint in &new.endpoints {
                if !(same_shape && old.is_some_and(|old| old.endpoints.contains(endpoint))) {
                    self.endpoint_chain(&names, new, endpoint);
                }
            }
            self.service_chains(&names, new);
        }
        if let Some(old) = old {
            self.remove_chains(old, new);
        }
        for added in new_lookups.iter().filter(|l| !old_lookups.contains(l)) {
            self.doc.add(added.clone());
        }
    }

    /// The chains a connection to the port goes through before its endpoint's: `svc-*` for the cluster
    /// IPs, `ext-*` for node ports and external addresses.
    fn service_chains(&mut self, names: &Names, port: &ServicePort) {
        let service_chain = names.service();
        self.reset_chain(&service_chain);
        // Connections from outside the pod ranges (the node itself, another node) must come back through
        // this node to be un-DNATed.
        self.doc.rule(
            &service_chain,
            vec![matches(field("ip", "saddr"), Operator::NEQ, set_ref(POD_RANGES)), jump(MARK_CHAIN)],
        );
        self.dispatch(&service_chain, port, &port.internal_endpoints());
        if !port.is_external() {
            return;
        }
        let external_chain = names.external();
        self.reset_chain(&external_chain);
        if port.external_local {
            // Pods using a node port or an external address are inside the cluster: any endpoint does.
            self.doc.rule(
                &external_chain,
                vec![matches(field("ip", "saddr"), Operator::EQ, set_ref(POD_RANGES)), goto(&service_chain)],
            );
        } else {
            self.doc.rule(&external_chain, vec![jump(MARK_CHAIN)]);
        }
        self.dispatch(&external_chain, port, &port.external_endpoints());
    }

    /// Empties `chain`, making it if missing.
    fn reset_chain(&mut self, name: &str) {
        let chain = self.doc.chain(name);
        self.doc.add(NfListObject::Chain(chain.clone()));
        self.doc.flush(FlushObject::Chain(chain));
    }

    /// Sends what reaches `chain` to one of `endpoints`: the one a client with affinity last used, else
    /// one at random.
    fn dispatch(&mut self, chain: &str, port: &ServicePort, endpoints: &[&Endpoint]) {
        if endpoints.is_empty() {
            return;
        }
        let names = Names::of(port);
        if let Some(seconds) = port.affinity_seconds {
            for endpoint in endpoints {
                self.doc.rule(
                    chain,
                    vec![
                        matches(field("ip", "saddr"), Operator::EQ, set_ref(&names.affinity(endpoint, seconds))),
                        goto(&names.endpoint(endpoint)),
                    ],
                );
            }
        }
        let random = Expression::Named(NamedExpression::Numgen(Numgen {
            mode: NgMode::Random,
            ng_mod: endpoints.len() as u32,
            offset: None,
        }));
        let choices = endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                SetItem::Mapping(Expression::Number(i as u32), goto_verdict(&names.endpoint(endpoint)))
            })
            .collect();
        let data = Expression::Named(NamedExpression::Set(choices));
        self.doc.rule(chain, vec![Statement::VerdictMap(VerdictMap { key: random, data })]);
    }

    fn endpoint_chain(&mut self, names: &Names, port: &ServicePort, endpoint: &Endpoint) {
        let chain = names.endpoint(endpoint);
        self.reset_chain(&chain);
        // A pod reaching itself through the Service: its reply would not pass this node's NAT otherwise.
        self.doc.rule(
            &chain,
            vec![matches(field("ip", "saddr"), Operator::EQ, s(&endpoint.ip.to_string())), jump(MARK_CHAIN)],
        );
        if let Some(seconds) = port.affinity_seconds {
            let affinity = names.affinity(endpoint, seconds);
            let set = Set {
                timeout: Some(seconds),
                ..self.doc.set(&affinity, SetTypeValue::Single(SetType::Ipv4Addr), &[SetFlag::Timeout])
            };
            self.doc.add(NfListObject::Set(Box::new(set)));
            self.doc.rule(
                &chain,
                vec![Statement::Set(nftables::stmt::Set {
                    op: nftables::stmt::SetOp::Update,
                    elem: field("ip", "saddr"),
                    set: Cow::Owned(format!("@{affinity}")),
                })],
            );
        }
        let target = NAT {
            addr: Some(s(&endpoint.ip.to_string())),
            family: None,
            port: Some(Expression::Number(u32::from(endpoint.port))),
            flags: None,
        };
        self.doc.rule(
            &chain,
            vec![matches(meta(MetaKey::L4proto), Operator::EQ, s(port.protocol.nft())), Statement::DNAT(Some(target))],
        );
    }

    /// Deletes the chains and affinity sets of `old` that `new` no longer has. What refers to them was
    /// emptied or deleted earlier in the transaction.
    fn remove_chains(&mut self, old: &ServicePort, new: Option<&ServicePort>) {
        let names = Names::of(old);
        let mut chains = Vec::new();
        if new.is_none() {
            chains.push(names.service());
        }
        if old.is_external() && !new.is_some_and(ServicePort::is_external) {
            chains.push(names.external());
        }
        let kept = |endpoint: &Endpoint| new.is_some_and(|new| new.endpoints.contains(endpoint));
        chains.extend(old.endpoints.iter().filter(|e| !kept(e)).map(|e| names.endpoint(e)));
        // All emptied before any goes: the external chain jumps to the service chain.
        for name in &chains {
            let chain = self.doc.chain(name);
            self.doc.flush(FlushObject::Chain(chain));
        }
        for name in &chains {
            let chain = self.doc.chain(name);
            self.doc.delete(NfListObject::Chain(chain));
        }
        if let Some(seconds) = old.affinity_seconds {
            let same_sets = new.is_some_and(|new| new.affinity_seconds == Some(seconds));
            for endpoint in old.endpoints.iter().filter(|e| !(same_sets && kept(e))) {
                let set =
                    self.doc.set(&names.affinity(endpoint, seconds), SetTypeValue::Single(SetType::Ipv4Addr), &[]);
                self.doc.delete(NfListObject::Set(Box::new(set)));
            }
        }
    }

    /// The map and set elements that lead to the port's chains, or that reject it without endpoints.
    fn lookups(&self, port: &ServicePort) -> Vec<NfListObject<'static>> {
        let names = Names::of(port);
        let mut found = Vec::new();
        let internal = !port.internal_endpoints().is_empty();
        let external = !port.external_endpoints().is_empty();
        for ip in &port.cluster_ips {
            let key = address_element(*ip, port, port.port);
            found.push(if internal {
                self.doc.element(SERVICE_IPS, vec![Expression::List(vec![key, goto_verdict(&names.service())])])
            } else {
                self.doc.element(NO_ENDPOINT_SERVICES, vec![key])
            });
        }
        for ip in &port.external_ips {
            let key = address_element(*ip, port, port.port);
            found.push(if external {
                self.doc.element(SERVICE_IPS, vec![Expression::List(vec![key, goto_verdict(&names.external())])])
            } else {
                self.doc.element(NO_ENDPOINT_SERVICES, vec![key])
            });
        }
        if let Some(node_port) = port.node_port {
            let key = node_port_element(port, node_port);
            found.push(if external {
                self.doc.element(SERVICE_NODEPORTS, vec![Expression::List(vec![key, goto_verdict(&names.external())])])
            } else {
                self.doc.element(NO_ENDPOINT_NODEPORTS, vec![key])
            });
        }
        found
    }

    /// Removes the whole table (the agent stops: nothing of it stays in the kernel).
    pub fn delete_table(&mut self) {
        self.doc.delete_table();
    }

    /// The transaction as nft's JSON input (`nft -j -f -`).
    pub fn into_document(self) -> String {
        self.doc.into_json()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Protocol, ServiceKey};
    use super::*;

    fn port(endpoints: &[(&str, bool)]) -> ServicePort {
        ServicePort {
            service: ServiceKey { namespace: "default".into(), name: "shop".into() },
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

    fn commands(transaction: Transaction<'_>) -> Vec<String> {
        let document: serde_json::Value = serde_json::from_str(&transaction.into_document()).unwrap();
        document["nftables"].as_array().unwrap().iter().map(|c| c.to_string()).collect()
    }

    fn count(commands: &[String], needle: &str) -> usize {
        commands.iter().filter(|c| c.contains(needle)).count()
    }

    #[test]
    fn an_unchanged_port_costs_nothing() {
        let mut transaction = Transaction::new("skiff-t");
        let port = port(&[("10.42.0.2", true)]);
        transaction.update_port(Some(&port), Some(&port));
        assert!(transaction.is_empty());
    }

    #[test]
    fn a_new_port_gets_its_chains_and_its_map_element() {
        let mut transaction = Transaction::new("skiff-t");
        transaction.update_port(None, Some(&port(&[("10.42.0.2", true), ("10.42.1.2", false)])));
        let commands = commands(transaction);
        assert_eq!(count(&commands, r#""add":{"chain""#), 3, "{commands:#?}");
        assert_eq!(count(&commands, r#""dnat""#), 2);
        assert_eq!(count(&commands, r#""numgen""#), 1);
        let element = commands.iter().find(|c| c.contains(r#""element""#)).unwrap();
        assert!(element.contains("10.43.0.5") && element.contains("svc-default/shop/tcp/http"), "{element}");
    }

    #[test]
    fn an_endpoint_change_touches_only_that_endpoint_and_the_service_chain() {
        let before = port(&[("10.42.0.2", true), ("10.42.1.2", false)]);
        let after = port(&[("10.42.0.2", true), ("10.42.1.3", false)]);
        let mut transaction = Transaction::new("skiff-t");
        transaction.update_port(Some(&before), Some(&after));
        let commands = commands(transaction);
        assert_eq!(count(&commands, r#""dnat""#), 1, "only the new endpoint's chain is written: {commands:#?}");
        assert_eq!(count(&commands, r#""delete":{"chain""#), 1);
        assert!(commands.iter().any(|c| c.contains("delete") && c.contains("10.42.1.2/8080")));
    }

    #[test]
    fn a_port_without_endpoints_is_rejected_instead_of_dispatched() {
        let mut transaction = Transaction::new("skiff-t");
        transaction.update_port(None, Some(&port(&[])));
        let commands = commands(transaction);
        assert_eq!(count(&commands, NO_ENDPOINT_SERVICES), 1, "{commands:#?}");
        assert_eq!(count(&commands, r#""numgen""#), 0);
    }

    #[test]
    fn a_removed_port_leaves_nothing() {
        let mut transaction = Transaction::new("skiff-t");
        let mut external = port(&[("10.42.0.2", true)]);
        external.node_port = Some(30080);
        external.affinity_seconds = Some(60);
        transaction.update_port(Some(&external), None);
        let commands = commands(transaction);
        for needle in ["svc-default", "ext-default", "ep-default", "aff60-default", SERVICE_IPS, SERVICE_NODEPORTS] {
            assert!(
                commands.iter().any(|c| c.starts_with(r#"{"delete""#) && c.contains(needle)),
                "{needle} deleted: {commands:#?}"
            );
        }
        assert_eq!(count(&commands, r#"{"add""#), 0);
    }
}

/// The documents against the real kernel, through the real `nft`, in a network namespace of their own.
#[cfg(test)]
mod kernel_tests {

    use super::super::model::{Protocol, ServiceKey};
    use super::*;

    fn port(endpoints: &[&str], node_port: Option<u16>, affinity_seconds: Option<u32>) -> ServicePort {
        ServicePort {
            service: ServiceKey { namespace: "default".into(), name: "shop".into() },
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
        let mut script = String::from("set -e\n");
        for (i, (old, new)) in steps.iter().enumerate() {
            let mut transaction = Transaction::new("skiff-test");
            if i == 0 {
                transaction.recreate_table();
                transaction.set_pod_ranges(&[("10.42.0.0".parse().unwrap(), 24), ("10.42.1.0".parse().unwrap(), 24)]);
            }
            transaction.update_port(old.as_ref(), new.as_ref());
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, transaction.into_document()).unwrap();
            script.push_str(&format!("echo step {i} >&2; nft -j -f {}\n", file.display()));
        }
        script.push_str("nft list table ip skiff-test > ");
        script.push_str(&dir.path().join("during").display().to_string());
        let mut last = Transaction::new("skiff-test");
        last.update_port(steps.last().unwrap().1.as_ref(), None);
        let file = dir.path().join("last.json");
        std::fs::write(&file, last.into_document()).unwrap();
        script.push_str(&format!("\nnft -j -f {}\nnft list table ip skiff-test\n", file.display()));
        let output = std::process::Command::new("unshare").args(["--net", "sh", "-c", &script]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "nft refused a step: {stderr}\n{script}");
        let during = std::fs::read_to_string(dir.path().join("during")).unwrap();
        for expected in
            ["dnat to 10.42.1.9:8080", "30080", "numgen random mod 1", "aff60-default/shop/tcp/80__10.42.1.9/8080"]
        {
            assert!(during.contains(expected), "{expected} in:\n{during}");
        }
        assert!(!during.contains("10.42.1.3"), "the removed endpoint's chain is gone:\n{during}");
        assert!(!stdout.contains("default/shop"), "the removed Service left rules:\n{stdout}");
    }
}
