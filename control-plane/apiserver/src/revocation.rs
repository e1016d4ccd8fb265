//! Revoking a node: deleting its Node through the API locks the node's certificates out. The server records
//! the time under `/skiff/revoked-nodes/<name>` (its own bookkeeping, outside `/registry/`, shared by every
//! server on the store) before the delete answers; from then on authentication refuses, as an invalid
//! credential (401), every client certificate naming `system:node:<name>` that was issued before that time.
//! A certificate issued later (the node joined again with the join token) is the node's again.
//!
//! The records reach authentication through the authorizer's mirror of the store ([`RevokedNodes`]), so a
//! request costs a map lookup, never a store read. A record stays: it refuses only certificates older than
//! itself, and a node's certificates last a year at most.
//!
//! Revoking also settles what the node's own credentials asked for and did not get yet: its pending
//! certificate signing requests (a renewal, a serving certificate) are denied, or failed when already
//! approved, so a renewal asked for before the revocation does not bring the node back after it. And since
//! one can be created while the delete runs, or approved through a server whose mirror lags, admission
//! refuses to approve or issue any request the node made before its revocation ([`admit_request`]),
//! reading the record from the store itself. The join token is another matter: whoever holds it may ask
//! for a new certificate under any node name, which only a new join token stops.

use std::collections::BTreeMap;
use std::sync::RwLock;

use jiff::Timestamp;
use serde_json::{Value, json};
use skiff_api::authz::NODE_USER_PREFIX;
use skiff_api::resources::{self, ResourceDef};
use skiff_store::{KeyValue, Revision};
use tokio::sync::watch;
use tracing::Instrument;

use crate::authn::CertificateUser;
use crate::error::ApiError;
use crate::objects::{self, ListOptions, Objects, Part, WriteOptions};

/// Where revocations are kept: the node's name after this prefix, the time (RFC 3339) as the value.
pub const REVOKED_NODES: &str = "/skiff/revoked-nodes/";

/// How often voiding a request retries after losing a race with its approver or signer.
const VOID_RETRIES: usize = 8;

/// The revoked nodes and when each was revoked, as the authorizer's mirror of the store last saw them.
#[derive(Debug)]
pub struct RevokedNodes {
    revoked: RwLock<BTreeMap<String, Timestamp>>,
    /// Ticks on every change, for connections to learn that their certificate was revoked.
    changed: watch::Sender<()>,
}

impl Default for RevokedNodes {
    fn default() -> Self {
        Self { revoked: RwLock::default(), changed: watch::Sender::new(()) }
    }
}

impl RevokedNodes {
    /// Whether `certificate` speaks for a node revoked after the certificate was issued. The name decides,
    /// whatever the groups: RBAC grants to the user `system:node:<name>` hold for any certificate naming it.
    /// The issue time is known to the second below (X.509 times have no fractions), so a certificate issued
    /// in the very second of the revocation is refused: a revoked certificate is never taken for a new one.
    pub fn refuses(&self, certificate: &CertificateUser) -> bool {
        let Some(node) = certificate.user.name.strip_prefix(NODE_USER_PREFIX) else { return false };
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.get(node).is_some_and(|at| certificate.issued < *at)
    }

    /// Completes once [`RevokedNodes::refuses`] `certificate`.
    pub async fn refused(&self, certificate: &CertificateUser) {
        // Subscribed before looking, so a change between the look and the wait is not missed.
        let mut changed = self.changed.subscribe();
        while !self.refuses(certificate) {
            // The sender lives as long as `self`, which outlives this borrow: never closed here.
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    pub(crate) fn replace(&self, revoked: BTreeMap<String, Timestamp>) {
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        self.changed.send_replace(());
    }
}

/// The node and time a stored revocation names; None for a key outside [`REVOKED_NODES`] or a value that is
/// not a time (logged).
pub(crate) fn parse(kv: &KeyValue) -> Option<(String, Timestamp)> {
    let node = kv.key.strip_prefix(REVOKED_NODES)?;
    match std::str::from_utf8(&kv.value).ok().and_then(|text| text.parse::<Timestamp>().ok()) {
        Some(at) => Some((node.to_string(), at)),
        None => {
            tracing::warn!(key = kv.key, "a node revocation that is no time is ignored");
            None
        }
    }
}

/// Revokes node `node` now, as deleting its Node does: records the time, waits until authentication knows
/// it (the authorizer's mirror has caught up), then voids the node's own pending certificate requests.
pub(crate) async fn revoke_node(objects: &Objects, node: &str) -> Result<(), ApiError> {
    async {
        let revision = record(objects, node, Timestamp::now()).await?;
        if let Some(authorizer) = objects.authorizer()
            && !authorizer.caught_up(revision).await
        {
            tracing::warn!("the revocation is not yet known to authentication");
        }
        void_requests(objects, node).await?;
        tracing::info!("node revoked: its certificates issued until now are refused");
        Ok(())
    }
    .instrument(tracing::info_span!("revoke", node))
    .await
}

/// Refuses (403) to `verb` (approve, sign) the stored request `csr` when its requester is a node revoked
/// after the request was created. The record is read from the store, not the mirror: a server whose mirror
/// lags must not issue what a revocation already voided. A request is refused in the very second of the
/// revocation too, as a certificate is (`creationTimestamp` has no fractions): the node asks again.
pub(crate) async fn admit_request(
    objects: &Objects,
    def: &ResourceDef,
    csr: &Value,
    verb: &str,
) -> Result<(), ApiError> {
    let requester = csr.pointer("/spec/username").and_then(Value::as_str).unwrap_or_default();
    let Some(node) = requester.strip_prefix(NODE_USER_PREFIX) else { return Ok(()) };
    let Some((_, revoked)) = objects.store().get(&format!("{REVOKED_NODES}{node}")).await?.as_ref().and_then(parse)
    else {
        return Ok(());
    };
    let created = csr.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(|t| t.parse().ok());
    if !revoked_since(revoked, created) {
        return Ok(());
    }
    let reason = format!(
        "node {node:?} was revoked at {revoked}, after this request was created: it may not be {}",
        match verb {
            "sign" => "signed",
            _ => "approved",
        }
    );
    Err(ApiError::forbidden(def, objects::name_of(csr), &reason))
}

/// Whether a revocation at `revoked` is newer than a request created at `created` (to the second; a
/// request of unknown age is taken for an old one).
fn revoked_since(revoked: Timestamp, created: Option<Timestamp>) -> bool {
    created.is_none_or(|created| created < revoked)
}

/// Writes the revocation of `node` at `at`, whether or not one was recorded before; the store revision of
/// the write.
async fn record(objects: &Objects, node: &str, at: Timestamp) -> Result<Revision, ApiError> {
    let store = objects.store();
    let key = format!("{REVOKED_NODES}{node}");
    let value = bytes::Bytes::from(at.to_string());
    let written = match store.update(&key, value.clone(), None).await {
        Err(skiff_store::Error::NotFound(_)) => match store.create(&key, value.clone()).await {
            // Another server revoked it at the same moment: ours is the later time either way.
            Err(skiff_store::Error::AlreadyExists(_)) => store.update(&key, value, None).await?,
            created => created?,
        },
        updated => updated?,
    };
    Ok(written.mod_revision)
}

/// Denies (or, once approved, fails) every certificate signing request `node` itself made that has no
/// certificate and no verdict yet.
async fn void_requests(objects: &Objects, node: &str) -> Result<(), ApiError> {
    let def = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").ok_or(ApiError::NoRoute)?;
    let requester = format!("{NODE_USER_PREFIX}{node}");
    let requests = objects.list(def, None, &ListOptions::default()).await?.items;
    for request in requests.iter().filter(|r| r.pointer("/spec/username").and_then(Value::as_str) == Some(&requester)) {
        void_request(objects, def, objects::name_of(request), node).await?;
    }
    Ok(())
}

async fn void_request(objects: &Objects, def: &'static ResourceDef, name: &str, node: &str) -> Result<(), ApiError> {
    for _ in 0..VOID_RETRIES {
        let request = match objects.get(def, None, name).await {
            Ok(request) => request,
            Err(ApiError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some((voided, part)) = voided(request, node) else { return Ok(()) };
        // The resourceVersion read is a precondition: an approval or a certificate written meanwhile is
        // seen on the next try.
        match objects.replace(def, None, name, part, voided, &WriteOptions::default()).await {
            Err(ApiError::Conflict { .. }) => continue,
            Err(ApiError::NotFound { .. }) => return Ok(()),
            written => {
                written?;
                tracing::info!(csr = name, "certificate signing request of the revoked node voided");
                return Ok(());
            }
        }
    }
    Err(ApiError::conflict(def, name))
}

/// `request` with the condition that voids it and the part that condition is written to: Denied on the
/// approval, or Failed on the status once it was approved (Kubernetes never has both Approved and Denied);
/// None when it needs none (issued, denied or failed already).
fn voided(mut request: Value, node: &str) -> Option<(Value, Part)> {
    let issued = request.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    let has = |request: &Value, kind: &str| {
        let conditions = request.pointer("/status/conditions").and_then(Value::as_array);
        conditions.into_iter().flatten().any(|c| c["type"] == kind && c["status"] == "True")
    };
    if issued || has(&request, "Denied") || has(&request, "Failed") {
        return None;
    }
    let (kind, part) = if has(&request, "Approved") { ("Failed", Part::Status) } else { ("Denied", Part::Approval) };
    let now = skiff_api::format_time(Timestamp::now());
    let condition = json!({
        "type": kind,
        "status": "True",
        "reason": "NodeRevoked",
        "message": format!("node {node} was deleted, revoking its credentials, before this request was signed"),
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    });
    let status = request.as_object_mut()?.entry("status").or_insert_with(|| json!({}));
    let conditions = status.as_object_mut()?.entry("conditions").or_insert_with(|| json!([]));
    conditions.as_array_mut()?.push(condition);
    Some((request, part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::authz::{AUTHENTICATED, NODES, UserInfo};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn certificate(name: &str, groups: &[&str], issued: &str) -> CertificateUser {
        let groups = groups.iter().map(|g| g.to_string()).chain([AUTHENTICATED.to_string()]).collect();
        CertificateUser { user: UserInfo { name: name.into(), groups, ..UserInfo::default() }, issued: at(issued) }
    }

    #[tokio::test]
    async fn a_revocation_refuses_the_nodes_certificates_issued_before_it() {
        let revoked = RevokedNodes::default();
        let node = |issued| certificate("system:node:edge-1", &[NODES], issued);
        assert!(!revoked.refuses(&node("2026-01-01T00:00:00Z")), "nothing revoked yet");
        revoked.replace(BTreeMap::from([("edge-1".to_string(), at("2026-06-01T12:00:00.250Z"))]));
        let cases = [
            ("2026-01-01T00:00:00Z", true),
            // Signed within the revocation's second, before or after it: refused.
            ("2026-06-01T12:00:00Z", true),
            // The next second: signed after the revocation, the node joined again.
            ("2026-06-01T12:00:01Z", false),
            ("2026-07-01T00:00:00Z", false),
        ];
        for (issued, refused) in cases {
            assert_eq!(revoked.refuses(&node(issued)), refused, "issued {issued}");
        }
        // Other nodes, and identities that are no node's, are not affected.
        assert!(!revoked.refuses(&certificate("system:node:edge-2", &[NODES], "2026-01-01T00:00:00Z")));
        assert!(!revoked.refuses(&certificate("alice", &["dev"], "2026-01-01T00:00:00Z")));
        assert!(!revoked.refuses(&certificate("edge-1", &[NODES], "2026-01-01T00:00:00Z")));
        // The name decides, not the group: RBAC grants to the user hold whatever its groups.
        assert!(revoked.refuses(&certificate("system:node:edge-1", &[], "2026-01-01T00:00:00Z")));
        // A connection waiting on a certificate learns of its revocation.
        let waiting = node("2026-06-01T13:00:00Z");
        let refused = revoked.refused(&waiting);
        tokio::pin!(refused);
        assert!(futures::poll!(refused.as_mut()).is_pending());
        revoked.replace(BTreeMap::from([("edge-1".to_string(), at("2026-06-01T14:00:00Z"))]));
        assert!(futures::poll!(refused.as_mut()).is_ready());
        // Revoked no more (the record replaced by a mirror that no longer has it).
        revoked.replace(BTreeMap::new());
        assert!(!revoked.refuses(&node("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn stored_revocations_are_read_back_and_junk_is_ignored() {
        let kv = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 1,
            mod_revision: 1,
        };
        let time = at("2026-06-01T12:00:00.25Z");
        assert_eq!(parse(&kv("/skiff/revoked-nodes/edge-1", &time.to_string())), Some(("edge-1".into(), time)));
        assert_eq!(parse(&kv("/skiff/revoked-nodes/edge-1", "yesterday")), None);
        assert_eq!(parse(&kv("/skiff/apiserver-leases/a", &time.to_string())), None);
    }

    /// `kubectl delete node`, as `Objects` does it: the revocation is recorded and known to authentication
    /// before the delete answers, the node's own pending request is denied, others' requests stay.
    #[tokio::test]
    async fn deleting_a_node_revokes_it_before_answering() {
        use crate::objects::DeleteOptions;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn skiff_store::Store> =
            Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (authorizer, mirror) = crate::authz::Authorizer::start(store.clone(), shutdown.clone()).await.unwrap();
        let mirror = tokio::spawn(mirror);
        let objects = Objects::new(store.clone()).with_authorizer(authorizer.clone());
        let nodes = resources::find("", "v1", "nodes").unwrap();
        let csrs = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").unwrap();
        let as_user = |name: &str, group: &str| WriteOptions {
            user: Some(UserInfo { name: name.into(), groups: vec![group.into()], ..UserInfo::default() }),
            ..WriteOptions::default()
        };
        let request = |name: &str| {
            json!({
                "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {"request": "cmVxdWVzdA==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                    "usages": ["digital signature", "client auth"]},
            })
        };
        for node in ["edge-1", "edge-2"] {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
            objects.create(nodes, None, node, &WriteOptions::default()).await.unwrap();
        }
        objects.create(csrs, None, request("renewal"), &as_user("system:node:edge-1", NODES)).await.unwrap();
        objects.create(csrs, None, request("other"), &as_user("system:node:edge-2", NODES)).await.unwrap();
        objects.create(csrs, None, request("join"), &as_user("system:bootstrap:skiff", "bootstrappers")).await.unwrap();
        let before = Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(1)).unwrap();
        let certificate = CertificateUser {
            user: UserInfo { name: "system:node:edge-1".into(), groups: vec![NODES.into()], ..UserInfo::default() },
            issued: before,
        };
        assert!(!authorizer.revoked_nodes().refuses(&certificate));

        objects.delete(nodes, None, "edge-1", &DeleteOptions::default()).await.unwrap();
        assert!(authorizer.revoked_nodes().refuses(&certificate), "refused once the delete answered");
        let recorded = store.get("/skiff/revoked-nodes/edge-1").await.unwrap().expect("a record");
        assert!(parse(&recorded).is_some_and(|(node, at)| node == "edge-1" && at > before));
        let condition = async |name: &str| {
            let csr = objects.get(csrs, None, name).await.unwrap();
            csr.pointer("/status/conditions/0/type").and_then(Value::as_str).map(str::to_string)
        };
        assert_eq!(condition("renewal").await.as_deref(), Some("Denied"));
        assert_eq!(condition("other").await, None, "another node's request");
        assert_eq!(condition("join").await, None, "the join token's request: a new token stops those");
        shutdown.cancel();
        mirror.await.unwrap();
    }

    /// A renewal the revocation's voiding missed (made while the delete ran, or approved through a server
    /// whose mirror lags) is never approved nor issued; it can still be denied, and others' are untouched.
    #[tokio::test]
    async fn a_request_made_before_a_revocation_is_never_approved_or_issued() {
        use skiff_api::patch::PatchType;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn skiff_store::Store> =
            Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        let csrs = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").unwrap();
        let as_user = |name: &str, group: &str| WriteOptions {
            user: Some(UserInfo { name: name.into(), groups: vec![group.into()], ..UserInfo::default() }),
            ..WriteOptions::default()
        };
        let admin = as_user("system:admin", "system:masters");
        for (name, node) in [("renewal", "edge-1"), ("approved", "edge-1"), ("other", "edge-2")] {
            let request = json!({
                "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {"request": "cmVxdWVzdA==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                    "usages": ["digital signature", "client auth"]},
            });
            objects.create(csrs, None, request, &as_user(&format!("system:node:{node}"), NODES)).await.unwrap();
        }
        let verdict = |kind: &str| json!({"status": {"conditions": [{"type": kind, "status": "True", "reason": "R"}]}});
        let decide = async |name: &str, kind: &str| {
            objects.patch(csrs, None, name, Part::Approval, PatchType::Merge, verdict(kind), false, &admin).await
        };
        decide("approved", "Approved").await.unwrap();

        // The revocation only: its voiding of the node's requests is what a race outruns.
        record(&objects, "edge-1", Timestamp::now()).await.unwrap();
        let refused = decide("renewal", "Approved").await.err().expect("refused").status();
        assert_eq!(refused["code"], 403);
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.starts_with(r#"certificatesigningrequests.certificates.k8s.io "renewal" is forbidden: node "edge-1" was revoked at "#)
                && message.ends_with(", after this request was created: it may not be approved"),
            "{message}"
        );
        let issue = json!({"status": {"certificate": "LS0tLS1CRUdJTg=="}});
        let issued = objects.patch(csrs, None, "approved", Part::Status, PatchType::Merge, issue, false, &admin).await;
        let message = issued.err().expect("refused").status()["message"].as_str().unwrap().to_string();
        assert!(message.ends_with("it may not be signed"), "{message}");
        decide("renewal", "Denied").await.expect("a denial is no certificate");
        decide("other", "Approved").await.expect("another node's request");

        assert!(revoked_since(at("2026-01-01T00:00:00Z"), Some(at("2025-12-31T23:59:59Z"))));
        assert!(!revoked_since(at("2026-01-01T00:00:00Z"), Some(at("2026-01-01T00:00:00Z"))));
        assert!(revoked_since(at("2026-01-01T00:00:00Z"), None), "a request of unknown age");
    }

    #[test]
    fn a_pending_request_is_denied_an_approved_one_failed_a_settled_one_left() {
        let request = |conditions: Value, certificate: Option<&str>| {
            let mut status = json!({"conditions": conditions});
            if let Some(certificate) = certificate {
                status["certificate"] = json!(certificate);
            }
            json!({"metadata": {"name": "node-csr-1"}, "spec": {"username": "system:node:edge-1"}, "status": status})
        };
        let types = |voided: &Value| -> Vec<String> {
            let conditions = voided["status"]["conditions"].as_array().unwrap();
            conditions.iter().map(|c| c["type"].as_str().unwrap().to_string()).collect()
        };
        let bare = json!({"metadata": {"name": "node-csr-1"}, "spec": {"username": "system:node:edge-1"}});
        let (denied, part) = voided(bare, "edge-1").unwrap();
        assert_eq!((types(&denied), part), (vec!["Denied".to_string()], Part::Approval));
        assert_eq!(denied["status"]["conditions"][0]["reason"], "NodeRevoked");
        let approved = json!([{"type": "Approved", "status": "True"}]);
        let (failed, part) = voided(request(approved.clone(), None), "edge-1").unwrap();
        assert_eq!((types(&failed), part), (vec!["Approved".to_string(), "Failed".to_string()], Part::Status));
        assert!(voided(request(approved, Some("LS0t")), "edge-1").is_none(), "issued");
        assert!(voided(request(json!([{"type": "Denied", "status": "True"}]), None), "edge-1").is_none());
        assert!(voided(request(json!([{"type": "Failed", "status": "True"}]), None), "edge-1").is_none());
    }
}
