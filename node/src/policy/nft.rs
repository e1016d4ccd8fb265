//! The node's NetworkPolicy table, laid out as a verdict map lookup per packet and a chain per isolated
//! local pod and direction, with the policies' peers in named sets that pod churn updates element by
//! element (the chains change only when a policy, or a selected pod's named ports, do):
//!
//! ```text
//! table ip skiff-policy-NODE
//!   input, forward, output (filter, priority 0: after the service proxy's DNAT, so traffic to a Service
//!   is judged by the pod it goes to):
//!       ct state established,related accept        replies of allowed connections
//!       ip saddr vmap @egress                       a local pod sends: jump egress-NS/POD
//!       ip daddr vmap @ingress                      a local pod receives: jump ingress-NS/POD
//!   ingress-NS/POD:  ip saddr POD return                                   a pod reaches itself
//!                    ip saddr != @local-pods fib saddr type local return   its node reaches it
//!                    [ip saddr @PEERS] [meta l4proto P [th dport N[-M]]] return   one per rule, peers, port
//!                    drop
//!   egress-NS/POD:   the same towards daddr, and for named ports
//!                    ip daddr . meta l4proto . th dport @NS/POLICY/egress-I/named-ports return
//!   sets: local-pods; NS/POLICY/DIRECTION-I/{pods, blocks (intervals), named-ports} per policy rule
//! ```
//!
//! Pods with a network namespace are seen by `forward` (bridged traffic on the node passes it with
//! br_netfilter, routed traffic from other nodes too); wasm-only pods' addresses are the node's own, on its
//! bridge, so traffic to them passes `input` and traffic from them (the agent's sockets) `output`. One
//! layout covers both: every hook asks both maps.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, FibFlag, MetaKey, NamedExpression, Range, Verdict};
use nftables::schema::{FlushObject, NfListObject, Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{JumpTarget, Operator, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};

use super::model::{self, Direction, Elements, Ports, Rules};
use crate::nft::{Document, field, is_local, matches, meta, s, set_ref};

/// The filter hooks' standard priority: after DNAT (-100) and the service proxy's own filter (-110).
const FILTER: i32 = 0;
const INGRESS_MAP: &str = "ingress";
const EGRESS_MAP: &str = "egress";
const LOCAL_PODS: &str = "local-pods";

/// One transaction on the table: commands gathered, then applied at once (`nft -j -f -` applies a
/// document as one netlink batch: all or nothing).
pub struct Transaction<'t> {
    doc: Document<'t>,
}

/// The peer's address: the source of traffic to a pod, the destination of traffic from it.
fn peer_address(direction: Direction) -> Expression<'static> {
    match direction {
        Direction::Ingress => field("ip", "saddr"),
        Direction::Egress => field("ip", "daddr"),
    }
}

/// Whether the peer's address is one of the node's own (`fib saddr type local` or `fib daddr ...`).
fn peer_is_local(direction: Direction) -> Statement<'static> {
    is_local(match direction {
        Direction::Ingress => FibFlag::Saddr,
        Direction::Egress => FibFlag::Daddr,
    })
}

fn port_number(port: u16) -> Expression<'static> {
    Expression::Number(u32::from(port))
}

fn range(first: Expression<'static>, last: Expression<'static>) -> Expression<'static> {
    Expression::Range(Box::new(Range { range: [first, last] }))
}

fn set_type(elements: &Elements) -> (SetTypeValue<'static>, &'static [SetFlag]) {
    match elements {
        Elements::Addresses(_) => (SetTypeValue::Single(SetType::Ipv4Addr), &[]),
        Elements::Ranges(_) => (SetTypeValue::Single(SetType::Ipv4Addr), &[SetFlag::Interval]),
        Elements::Endpoints(_) => (
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ipv4Addr, SetType::InetProto, SetType::InetService])),
            &[],
        ),
    }
}

fn address(ip: &Ipv4Addr) -> Expression<'static> {
    s(&ip.to_string())
}

fn endpoint((ip, protocol, port): &(Ipv4Addr, model::Protocol, u16)) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![address(ip), s(protocol.nft()), port_number(*port)]))
}

fn address_range((first, last): &(Ipv4Addr, Ipv4Addr)) -> Expression<'static> {
    if first == last { address(first) } else { range(address(first), address(last)) }
}

impl<'t> Transaction<'t> {
    pub fn new(table: &'t str) -> Self {
        Transaction { doc: Document::new(table) }
    }

    pub fn is_empty(&self) -> bool {
        self.doc.is_empty()
    }

    fn set(&self, name: &str, (kind, flags): (SetTypeValue<'static>, &[SetFlag])) -> Box<Set<'static>> {
        Box::new(self.doc.set(name, kind, flags))
    }

    fn elements(&mut self, add: bool, set: &str, elements: Vec<Expression<'static>>) {
        if elements.is_empty() {
            return;
        }
        let element = self.doc.element(set, elements);
        if add { self.doc.add(element) } else { self.doc.delete(element) }
    }

    /// A fresh table: whatever an earlier agent left is removed in the same transaction, so traffic meets
    /// either the old rules or the new ones. Its pods' chains and sets come from [`Self::update`] from
    /// nothing.
    pub fn recreate_table(&mut self) {
        self.doc.recreate_table();
        for map in [INGRESS_MAP, EGRESS_MAP] {
            self.doc.verdict_map(map, serde_json::json!("ipv4_addr"));
        }
        let local_pods = self.set(LOCAL_PODS, set_type(&Elements::Addresses(BTreeSet::new())));
        self.doc.add(NfListObject::Set(local_pods));
        for (name, hook) in [("input", NfHook::Input), ("forward", NfHook::Forward), ("output", NfHook::Output)] {
            let chain = self.doc.base_chain(name, NfChainType::Filter, hook, FILTER);
            self.doc.add(NfListObject::Chain(chain));
            let state = Expression::Named(NamedExpression::CT(nftables::expr::CT {
                key: "state".into(),
                family: None,
                dir: None,
            }));
            self.doc.rule(
                name,
                vec![
                    matches(state, Operator::IN, Expression::List(vec![s("established"), s("related")])),
                    Statement::Accept(None),
                ],
            );
            // Egress first: a verdict of the sender's chain that lets the packet go returns here, to the
            // receiver's.
            for (address, map) in [(field("ip", "saddr"), EGRESS_MAP), (field("ip", "daddr"), INGRESS_MAP)] {
                self.doc.rule(name, vec![Statement::VerdictMap(VerdictMap { key: address, data: set_ref(map) })]);
            }
        }
    }

    /// Takes the table from what `old` programmed to `new`. Objects are made before what refers to them
    /// and deleted after it; an object is never deleted and made again under its name in one transaction
    /// (the kernel refuses that): chains that stay are emptied and rewritten, sets that stay change element
    /// by element.
    pub fn update(&mut self, old: &Rules, new: &Rules) {
        self.update_elements(LOCAL_PODS, &old.local_pods, &new.local_pods, address);
        for (name, elements) in &new.sets {
            match old.sets.get(name) {
                None => {
                    self.doc.add(NfListObject::Set(self.set(name, set_type(elements))));
                    self.fill(name, elements);
                }
                Some(before) if before != elements => self.update_set(name, before, elements),
                Some(_) => {}
            }
        }
        let maps = [(INGRESS_MAP, &old.ingress, &new.ingress), (EGRESS_MAP, &old.egress, &new.egress)];
        for (map, before, after) in maps {
            let gone = before.iter().filter(|(ip, chain)| after.get(ip) != Some(chain)).map(|(ip, _)| address(ip));
            let gone = gone.collect();
            self.elements(false, map, gone);
        }
        for (name, chain) in &new.chains {
            if old.chains.get(name) != Some(chain) {
                self.write_chain(name, chain);
            }
        }
        let removed: Vec<&String> = old.chains.keys().filter(|name| !new.chains.contains_key(*name)).collect();
        for name in &removed {
            self.doc.flush(FlushObject::Chain(self.doc.chain(name)));
        }
        for name in &removed {
            self.doc.delete(NfListObject::Chain(self.doc.chain(name)));
        }
        for (name, elements) in old.sets.iter().filter(|(name, _)| !new.sets.contains_key(*name)) {
            self.doc.delete(NfListObject::Set(self.set(name, set_type(elements))));
        }
        for (map, before, after) in maps {
            let come = after.iter().filter(|(ip, chain)| before.get(ip) != Some(chain));
            let come = come.map(|(ip, chain)| {
                let jump = Expression::Verdict(Verdict::Jump(JumpTarget { target: Cow::Owned(chain.clone()) }));
                Expression::List(vec![address(ip), jump])
            });
            self.elements(true, map, come.collect());
        }
    }

    fn fill(&mut self, name: &str, elements: &Elements) {
        let expressions = match elements {
            Elements::Addresses(ips) => ips.iter().map(address).collect(),
            Elements::Ranges(ranges) => ranges.iter().map(address_range).collect(),
            Elements::Endpoints(endpoints) => endpoints.iter().map(endpoint).collect(),
        };
        self.elements(true, name, expressions);
    }

    fn update_set(&mut self, name: &str, old: &Elements, new: &Elements) {
        match (old, new) {
            (Elements::Addresses(old), Elements::Addresses(new)) => self.update_elements(name, old, new, address),
            (Elements::Endpoints(old), Elements::Endpoints(new)) => self.update_elements(name, old, new, endpoint),
            // Intervals are rewritten whole: they change only with their policy, and removing one range of
            // an interval set that the kernel merged with a neighbour would fail.
            _ => {
                self.doc.flush(FlushObject::Set(self.set(name, set_type(new))));
                self.fill(name, new);
            }
        }
    }

    fn update_elements<T: Ord>(
        &mut self,
        set: &str,
        old: &BTreeSet<T>,
        new: &BTreeSet<T>,
        expression: impl Fn(&T) -> Expression<'static>,
    ) {
        self.elements(false, set, old.difference(new).map(&expression).collect());
        self.elements(true, set, new.difference(old).map(&expression).collect());
    }

    /// Makes chain `name` (or empties it) and writes its rules.
    fn write_chain(&mut self, name: &str, chain: &model::Chain) {
        self.doc.add(NfListObject::Chain(self.doc.chain(name)));
        self.doc.flush(FlushObject::Chain(self.doc.chain(name)));
        let direction = chain.direction;
        // The API's exceptions: a pod always reaches itself, and its node reaches it and is reached by it.
        // The node's addresses are the local ones that are no local pod's (wasm-only pods' are local too).
        self.doc.rule(
            name,
            vec![matches(peer_address(direction), Operator::EQ, address(&chain.pod)), Statement::Return(None)],
        );
        self.doc.rule(
            name,
            vec![
                matches(peer_address(direction), Operator::NEQ, set_ref(LOCAL_PODS)),
                peer_is_local(direction),
                Statement::Return(None),
            ],
        );
        for rule in &chain.rules {
            let mut statements = Vec::new();
            match rule {
                model::Rule::Allow { peers, ports } => {
                    if let Some(set) = peers {
                        statements.push(matches(peer_address(direction), Operator::EQ, set_ref(set)));
                    }
                    if let Some(Ports { protocol, range: ports }) = ports {
                        statements.push(matches(meta(MetaKey::L4proto), Operator::EQ, s(protocol.nft())));
                        match ports {
                            Some((first, last)) if first == last => {
                                statements.push(matches(field("th", "dport"), Operator::EQ, port_number(*first)));
                            }
                            Some((first, last)) => {
                                let ports = range(port_number(*first), port_number(*last));
                                statements.push(matches(field("th", "dport"), Operator::EQ, ports));
                            }
                            None => {}
                        }
                    }
                }
                model::Rule::AllowEndpoints(set) => {
                    let key = Expression::Named(NamedExpression::Concat(vec![
                        peer_address(direction),
                        meta(MetaKey::L4proto),
                        field("th", "dport"),
                    ]));
                    statements.push(matches(key, Operator::EQ, set_ref(set)));
                }
            }
            statements.push(Statement::Return(None));
            self.doc.rule(name, statements);
        }
        self.doc.rule(name, vec![Statement::Drop(None)]);
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

/// What a sync plans: from what the table has (None: nothing known, make it afresh) to `new`.
pub fn plan(table: &str, applied: Option<&Rules>, new: &Rules) -> Option<String> {
    let mut transaction = Transaction::new(table);
    let empty = Rules::default();
    let old = match applied {
        Some(old) => old,
        None => {
            transaction.recreate_table();
            &empty
        }
    };
    transaction.update(old, new);
    (!transaction.is_empty()).then(|| transaction.into_document())
}

#[cfg(test)]
mod tests {
    use super::model::{Chain, Protocol, Rule};
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    /// Web (10.42.0.2) takes clients (a set) and address blocks on 8080 and everyone on a range of UDP
    /// ports; its egress goes to named ports.
    fn rules(clients: &[&str]) -> Rules {
        let tcp_8080 = Some(Ports { protocol: Protocol::Tcp, range: Some((8080, 8080)) });
        let ingress = vec![
            Rule::Allow { peers: Some("shop/web/ingress-0/pods".into()), ports: tcp_8080.clone() },
            Rule::Allow { peers: Some("shop/web/ingress-0/blocks".into()), ports: tcp_8080 },
            Rule::Allow { peers: None, ports: Some(Ports { protocol: Protocol::Udp, range: Some((5000, 5100)) }) },
        ];
        let egress = vec![Rule::AllowEndpoints("shop/web/egress-0/named-ports".into())];
        let web = ip("10.42.0.2");
        Rules {
            local_pods: BTreeSet::from([web, ip("10.42.0.3")]),
            sets: [
                ("shop/web/ingress-0/pods", Elements::Addresses(clients.iter().map(|c| ip(c)).collect())),
                (
                    "shop/web/ingress-0/blocks",
                    Elements::Ranges(vec![
                        (ip("192.0.2.0"), ip("192.0.2.127")),
                        (ip("198.51.100.7"), ip("198.51.100.7")),
                    ]),
                ),
                (
                    "shop/web/egress-0/named-ports",
                    Elements::Endpoints(BTreeSet::from([(ip("10.42.1.2"), Protocol::Tcp, 8080)])),
                ),
            ]
            .into_iter()
            .map(|(name, elements)| (name.to_string(), elements))
            .collect(),
            chains: [
                ("ingress-shop/web".to_string(), Chain { direction: Direction::Ingress, pod: web, rules: ingress }),
                ("egress-shop/web".to_string(), Chain { direction: Direction::Egress, pod: web, rules: egress }),
            ]
            .into(),
            ingress: [(web, "ingress-shop/web".to_string())].into(),
            egress: [(web, "egress-shop/web".to_string())].into(),
        }
    }

    fn commands(document: Option<String>) -> Vec<String> {
        let Some(document) = document else { return Vec::new() };
        let document: serde_json::Value = serde_json::from_str(&document).unwrap();
        document["nftables"].as_array().unwrap().iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn nothing_changed_costs_nothing() {
        assert!(plan("skiff-policy-t", Some(&rules(&["10.42.1.4"])), &rules(&["10.42.1.4"])).is_none());
    }

    #[test]
    fn a_new_peer_pod_is_one_element_and_no_rule() {
        let commands =
            commands(plan("skiff-policy-t", Some(&rules(&["10.42.1.4"])), &rules(&["10.42.1.4", "10.42.1.5"])));
        assert_eq!(commands.len(), 1, "{commands:#?}");
        assert!(commands[0].starts_with(r#"{"add":{"element""#) && commands[0].contains("10.42.1.5"), "{commands:#?}");
    }

    #[test]
    fn a_pod_no_longer_isolated_leaves_nothing_behind() {
        let old = rules(&["10.42.1.4"]);
        let mut new = Rules { local_pods: old.local_pods.clone(), ..Rules::default() };
        new.local_pods.remove(&ip("10.42.0.3"));
        let commands = commands(plan("skiff-policy-t", Some(&old), &new));
        let position = |start: &str, needle: &str| {
            let found = commands.iter().position(|c| c.starts_with(start) && c.contains(needle));
            found.unwrap_or_else(|| panic!("{start} {needle}: {commands:#?}"))
        };
        let chain_deleted = position(r#"{"delete":{"chain""#, "ingress-shop/web");
        assert!(
            position(r#"{"delete":{"element""#, r#""name":"ingress""#) < chain_deleted,
            "no map element jumps to it"
        );
        assert!(chain_deleted < position(r#"{"delete":{"set""#, "pods"), "sets outlive the rules that use them");
        assert_eq!(commands.iter().filter(|c| c.starts_with(r#"{"delete":{"set""#)).count(), 3);
        assert!(commands.iter().all(|c| !c.starts_with(r#"{"add""#)), "{commands:#?}");
    }

    /// The documents against the real kernel, through the real `nft`, in a network namespace of their own.
    #[test]
    fn the_kernel_takes_every_kind_of_change() {
        assert!(crate::network::is_root(), "nftables tests need root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let first = rules(&["10.42.1.4"]);
        let mut second = rules(&["10.42.1.5", "10.42.1.6"]);
        second
            .sets
            .insert("shop/web/ingress-0/blocks".into(), Elements::Ranges(vec![(ip("0.0.0.0"), ip("255.255.255.255"))]));
        second.chains.get_mut("ingress-shop/web").unwrap().rules.push(Rule::Allow { peers: None, ports: None });
        let mut third = second.clone();
        third.chains.remove("egress-shop/web");
        third.egress.clear();
        third.sets.remove("shop/web/egress-0/named-ports");
        third.ingress.insert(ip("10.42.0.3"), "ingress-shop/web".into());
        let steps =
            [(None, &first), (Some(&first), &second), (Some(&second), &third), (Some(&third), &Rules::default())];
        let mut script = String::from("set -e\n");
        for (i, (old, new)) in steps.iter().enumerate() {
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, plan("skiff-policy-test", *old, new).unwrap()).unwrap();
            script.push_str(&format!("echo step {i} >&2; nft -j -f {}\n", file.display()));
            if i == 2 {
                script.push_str(&format!(
                    "nft list table ip skiff-policy-test > {}\n",
                    dir.path().join("during").display()
                ));
            }
        }
        let mut last = Transaction::new("skiff-policy-test");
        last.delete_table();
        let file = dir.path().join("last.json");
        std::fs::write(&file, last.into_document()).unwrap();
        script.push_str(&format!("nft -j -f {}\nnft list tables\n", file.display()));
        let output = std::process::Command::new("unshare").args(["--net", "sh", "-c", &script]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "nft refused a step: {stderr}\n{script}");
        let during = std::fs::read_to_string(dir.path().join("during")).unwrap();
        for expected in [
            "ct state established,related accept",
            "ip saddr vmap @egress",
            "10.42.0.3 : jump ingress-shop/web",
            "ip saddr != @local-pods fib saddr type local return",
            "ip saddr @shop/web/ingress-0/pods tcp dport 8080 return",
            "udp dport 5000-5100 return",
            "elements = { 0.0.0.0/0 }",
            "10.42.1.6",
            "drop",
        ] {
            assert!(during.contains(expected), "{expected} in:\n{during}");
        }
        assert!(!during.contains("egress-shop/web") && !during.contains("named-ports"), "removed:\n{during}");
        assert!(!stdout.contains("skiff-policy-test"), "the table is gone:\n{stdout}");
    }
}
