//! What the node's nftables tables share (the service proxy's and the network policies'): applying nft's
//! input through the `nft` program (`nft -f` applies a script as one netlink batch: all or nothing, as
//! kube-proxy's knftables drives it), and, for the policies' table, documents of nft's JSON commands on one
//! `ip` table built from the `nftables` crate's typed objects, with the expressions they write.
//!
//! nft 1.0.6 (Debian 12) has no `dynamic` set flag in its JSON, and the kernel refuses deleting and making
//! again an object of one name in one transaction: the tables are laid out so they need neither.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Set, SetFlag, SetTypeValue, Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

/// A layer 4 protocol of a Service's or a policy's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's name of it; TCP when it names none, as the API defaults.
    pub fn parse(text: Option<&str>) -> Option<Self> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' name of it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

pub fn s(text: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(text.to_string()))
}

/// A header field: `ip saddr`, `th dport`.
pub fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: name.into(),
    })))
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn matches(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `fib saddr type local` (or daddr): whether the address is one of the node's own.
pub fn is_local(address: FibFlag) -> Statement<'static> {
    let fib = Fib { result: FibResult::Type, flags: HashSet::from([address]) };
    matches(Expression::Named(NamedExpression::Fib(fib)), Operator::EQ, s("local"))
}

/// A reference to a named set or map, `@name`.
pub fn set_ref(name: &str) -> Expression<'static> {
    s(&format!("@{name}"))
}

/// Commands on one `ip` table, gathered to be applied at once.
pub struct Document<'t> {
    table: &'t str,
    /// nft's JSON commands, in order.
    commands: Vec<serde_json::Value>,
}

impl<'t> Document<'t> {
    pub fn new(table: &'t str) -> Self {
        Document { table, commands: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    fn push(&mut self, command: NfCmd<'static>) {
        let object = NfObject::CmdObject(command);
        self.commands.push(serde_json::to_value(object).unwrap_or_default());
    }

    pub fn add(&mut self, object: NfListObject<'static>) {
        self.push(NfCmd::Add(object));
    }

    pub fn delete(&mut self, object: NfListObject<'static>) {
        self.push(NfCmd::Delete(object));
    }

    pub fn flush(&mut self, object: FlushObject<'static>) {
        self.push(NfCmd::Flush(object));
    }

    fn table(&self) -> Table<'static> {
        Table { family: NfFamily::IP, name: Cow::Owned(self.table.to_string()), handle: None }
    }

    /// A fresh table: whatever was there before is removed in the same transaction, so traffic meets
    /// either the old rules or the new ones.
    pub fn recreate_table(&mut self) {
        self.delete_table();
        self.add(NfListObject::Table(self.table()));
    }

    /// Removes the table; made first, so that removing it succeeds whether or not it exists.
    pub fn delete_table(&mut self) {
        self.add(NfListObject::Table(self.table()));
        self.delete(NfListObject::Table(self.table()));
    }

    pub fn chain(&self, name: &str) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.to_string()),
            name: Cow::Owned(name.to_string()),
            ..Chain::default()
        }
    }

    pub fn base_chain(&self, name: &str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
        Chain { _type: Some(kind), hook: Some(hook), prio: Some(prio), ..self.chain(name) }
    }

    pub fn rule(&mut self, chain: &str, statements: Vec<Statement<'static>>) {
        self.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.to_string()),
            chain: Cow::Owned(chain.to_string()),
            expr: Cow::Owned(statements),
            handle: None,
            index: None,
            comment: None,
        }));
    }

    pub fn set(&self, name: &str, kind: SetTypeValue<'static>, flags: &[SetFlag]) -> Set<'static> {
        Set {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.to_string()),
            name: Cow::Owned(name.to_string()),
            set_type: kind,
            flags: (!flags.is_empty()).then(|| flags.iter().copied().collect()),
            ..Set::default()
        }
    }

    pub fn element(&self, set: &str, elements: Vec<Expression<'static>>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.to_string()),
            name: Cow::Owned(set.to_string()),
            elem: Cow::Owned(elements),
        })
    }

    /// Declares a verdict map keyed by `key` (nft's type names: `ipv4_addr`, or a list for a concatenation).
    /// The crate's set types lack `verdict`, the value type of a verdict map: this one object is written as
    /// nft's JSON directly.
    pub fn verdict_map(&mut self, name: &str, key: serde_json::Value) {
        self.commands.push(serde_json::json!({"add": {"map": {
            "family": "ip", "table": self.table, "name": name, "type": key, "map": "verdict",
        }}}));
    }

    /// The document as nft's JSON input (`nft -j -f -`).
    pub fn into_json(self) -> String {
        serde_json::json!({"nftables": self.commands}).to_string()
    }
}

/// The table of network `id`'s service proxy (named as the node's bridge is, `skf<id>`, so that agents
/// sharing one machine's network keep apart).
pub fn proxy_table(network_id: &str) -> String {
    format!("skiff-{network_id}")
}

/// The table of network `id`'s network policies.
pub fn policy_table(network_id: &str) -> String {
    format!("skiff-policy-{network_id}")
}

/// Removes network `id`'s tables: what an agent killed before its own shutdown could remove them left.
pub fn remove_network_tables(network_id: &str) -> Result<(), nftables::helper::NftablesError> {
    let mut commands = Vec::new();
    for table in [proxy_table(network_id), policy_table(network_id)] {
        let mut document = Document::new(&table);
        document.delete_table();
        commands.append(&mut document.commands);
    }
    let document = serde_json::json!({"nftables": commands}).to_string();
    let no_args: [&str; 0] = [];
    nftables::helper::apply_ruleset_raw(&document, None::<&str>, no_args).map(drop)
}

/// Applies a document through `nft -j -f -`: one netlink batch, applied whole or not at all.
pub async fn apply(document: &str) -> Result<(), nftables::helper::NftablesError> {
    let no_args: [&str; 0] = [];
    nftables::helper::apply_ruleset_raw_async(document, None::<&str>, no_args).await.map(drop)
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot run nft: {0}")]
    Run(#[from] std::io::Error),
    #[error("nft refused the script: {0}")]
    Refused(String),
}

/// Applies a script of nft's text commands through `nft -f -`: one netlink batch, applied whole or not at
/// all.
pub async fn apply_script(script: &str) -> Result<(), ScriptError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ScriptError::Refused(String::from_utf8_lossy(&output.stderr).trim().to_string()))
    }
}
