//! Who may do what: kube-apiserver's authorizer chain with `--authorization-mode=Node,RBAC`, deciding from
//! caches, never a store read per request.
//!
//! `system:masters` may do anything; then the Node authorizer (`skiff_api::node_authorizer`, a node's own
//! objects and those its pods use) and RBAC (`skiff_api::rbac`) decide. Their inputs (Roles, ClusterRoles,
//! their bindings, and which pods are bound where) are mirrored from the store by one watch of the whole
//! store, so the mirror knows which store revision it has reached. The same mirror keeps authentication's
//! list of revoked nodes ([`crate::revocation`]) and its bootstrap tokens ([`crate::bootstrap_tokens`]). A
//! request that the mirror would deny
//! waits until the mirror has caught up with the store before the answer is final: a binding or a pod
//! written a moment ago is never missed (Kubernetes' informer-fed authorizers can miss them, and clients
//! retry), and a denial costs one revision read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use skiff_api::authz::{Attributes, Decision, MASTERS, UserInfo};
use skiff_api::node_authorizer::{self, NodeGraph};
use skiff_api::rbac::Rbac;
use skiff_store::{EventKind, KeyValue, Revision, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bootstrap_tokens::{BOOTSTRAP_TOKENS, BootstrapTokens, StoredToken};
use crate::error::ApiError;
use crate::revocation::{self, REVOKED_NODES, RevokedNodes};

/// How long a request the caches would deny waits for them to reach the store's revision.
const CATCH_UP: Duration = Duration::from_secs(2);
/// How long the mirror waits before listing again after its watch failed.
const RETRY: Duration = Duration::from_secs(1);

const ROLES: &str = "/registry/rbac.authorization.k8s.io/roles/";
const CLUSTER_ROLES: &str = "/registry/rbac.authorization.k8s.io/clusterroles/";
const ROLE_BINDINGS: &str = "/registry/rbac.authorization.k8s.io/rolebindings/";
const CLUSTER_ROLE_BINDINGS: &str = "/registry/rbac.authorization.k8s.io/clusterrolebindings/";
const PODS: &str = "/registry/core/pods/";
/// Ingresses: the TLS Secrets they name are readable by every node (the nodes serve them).
const INGRESSES: &str = "/registry/networking.k8s.io/ingresses/";
/// What the mirror lists and follows.
const PREFIXES: [&str; 8] =
    [ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS, PODS, INGRESSES, REVOKED_NODES, BOOTSTRAP_TOKENS];

pub struct Authorizer {
    rbac: RwLock<Arc<Rbac>>,
    graph: RwLock<NodeGraph>,
    revoked_nodes: Arc<RevokedNodes>,
    bootstrap_tokens: Arc<BootstrapTokens>,
    /// The store revision the caches reflect.
    applied: watch::Sender<Revision>,
}

impl Authorizer {
    /// Authorizers over the store's current content, and the task keeping them current until `shutdown`.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, impl Future<Output = ()>), skiff_store::Error> {
        let mut mirror = Mirror::default();
        let revision = mirror.list(store.as_ref()).await?;
        let authorizer = Arc::new(Authorizer {
            rbac: RwLock::new(Arc::new(mirror.rbac())),
            graph: RwLock::new(mirror.graph()),
            revoked_nodes: Arc::default(),
            bootstrap_tokens: Arc::default(),
            applied: watch::Sender::new(revision),
        });
        authorizer.revoked_nodes.replace(mirror.revoked_nodes.clone());
        authorizer.bootstrap_tokens.replace(mirror.bootstrap_tokens.clone());
        let task = mirror.run(authorizer.clone(), store, revision, shutdown);
        Ok((authorizer, task))
    }

    /// The chain's decision from the caches as they are.
    pub fn decide(&self, attributes: &Attributes) -> Decision {
        if attributes.user.in_group(MASTERS) {
            return Decision::Allow;
        }
        let node = node_authorizer::authorize(attributes, &self.graph.read().unwrap_or_else(|e| e.into_inner()));
        if node != Decision::NoOpinion {
            return node;
        }
        self.rbac.read().unwrap_or_else(|e| e.into_inner()).authorize(attributes)
    }

    /// The decision, final: one that is not an allow is taken again once the caches have caught up with
    /// the store.
    pub async fn authorize(&self, attributes: &Attributes, store: &dyn Store) -> Decision {
        let decision = self.decide(attributes);
        if decision == Decision::Allow {
            return decision;
        }
        let Ok(current) = store.revision().await else { return decision };
        match self.caught_up(current).await {
            true => self.decide(attributes),
            false => decision,
        }
    }

    /// Whether the caches reach store revision `revision` within [`CATCH_UP`].
    pub async fn caught_up(&self, revision: Revision) -> bool {
        let mut applied = self.applied.subscribe();
        matches!(tokio::time::timeout(CATCH_UP, applied.wait_for(|seen| *seen >= revision)).await, Ok(Ok(_)))
    }

    /// 403 unless the chain allows `attributes`.
    pub async fn check(&self, attributes: &Attributes, store: &dyn Store) -> Result<(), ApiError> {
        match self.authorize(attributes, store).await {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(forbidden(attributes, &reason)),
            Decision::NoOpinion => Err(forbidden(attributes, "")),
        }
    }

    /// The RBAC snapshot, for reviews of what a user may do and for escalation checks.
    pub fn rbac(&self) -> Arc<Rbac> {
        self.rbac.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The revoked nodes, for authentication.
    pub fn revoked_nodes(&self) -> Arc<RevokedNodes> {
        self.revoked_nodes.clone()
    }

    /// The bootstrap tokens, for authentication.
    pub fn bootstrap_tokens(&self) -> Arc<BootstrapTokens> {
        self.bootstrap_tokens.clone()
    }
}

/// kube-apiserver's 403 for a denied request (`responsewriters.ForbiddenStatusError`).
pub fn forbidden(attributes: &Attributes, reason: &str) -> ApiError {
    let mut message = skiff_api::authz::forbidden_message(attributes);
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    if !attributes.resource_request {
        return ApiError::Forbidden(format!("forbidden: {message}"));
    }
    let mut resource = attributes.resource.clone();
    if !attributes.subresource.is_empty() {
        resource = format!("{resource}/{}", attributes.subresource);
    }
    if !attributes.api_group.is_empty() {
        resource = format!("{resource}.{}", attributes.api_group);
    }
    match attributes.name.as_str() {
        "" => ApiError::Forbidden(format!("{resource} is forbidden: {message}")),
        name => ApiError::Forbidden(format!("{resource} {name:?} is forbidden: {message}")),
    }
}

/// What a request asks, as kube-apiserver's `RequestInfoFactory` reads it: a resource request under
/// `/api/v1` or `/apis/GROUP/VERSION` with at least a resource, anything else a non-resource request for
/// its path. The verb comes from the method (`list` and `watch` for collections, `deletecollection`);
/// a namespace's own requests are in that namespace; a list or watch with a `metadata.name` field
/// selector names its object; exec, attach and port-forward need `create` whatever the method (as
/// Kubernetes 1.31's websocket check).
pub fn request_attributes(user: UserInfo, method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        // A non-resource request's verb is the method's lowercase name (`get` for HEAD).
        _ => {
            let verb = if *method == Method::HEAD { "get".into() } else { method.as_str().to_ascii_lowercase() };
            return Attributes { user, verb, path: path.to_string(), ..Attributes::default() };
        }
    };
    let method_verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let last = |key: &str| pairs.iter().rev().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str());
    let mut rest = rest;
    let mut verb = method_verb.to_string();
    if let ["watch", tail @ ..] = rest {
        verb = "watch".into();
        rest = tail;
    }
    let mut attributes = Attributes {
        user,
        resource_request: true,
        path: path.to_string(),
        api_group: group.to_string(),
        api_version: version.to_string(),
        ..Attributes::default()
    };
    if let ["namespaces", namespace, tail @ ..] = rest {
        attributes.namespace = namespace.to_string();
        // `namespaces/NAME` and its own subresources (`status`, `finalize`) are the namespace object.
        rest = match tail {
            [] | ["status" | "finalize"] => rest,
            tail => tail,
        };
    }
    match rest {
        [resource] => attributes.resource = resource.to_string(),
        [resource, name] => (attributes.resource, attributes.name) = (resource.to_string(), name.to_string()),
        [resource, name, subresource, ..] => {
            attributes.resource = resource.to_string();
            attributes.name = name.to_string();
            attributes.subresource = subresource.to_string();
        }
        [] => {}
    }
    if attributes.resource == "namespaces" && !attributes.name.is_empty() {
        attributes.namespace = attributes.name.clone();
    }
    if attributes.name.is_empty() && verb != "watch" {
        verb = match verb.as_str() {
            "get" if matches!(last("watch"), Some("true" | "1")) => "watch",
            "get" => "list",
            "delete" => "deletecollection",
            other => other,
        }
        .to_string();
    }
    if matches!(verb.as_str(), "list" | "watch")
        && let Some(selector) = last("fieldSelector")
    {
        let name = selector
            .split(',')
            .find_map(|term| term.strip_prefix("metadata.name==").or_else(|| term.strip_prefix("metadata.name=")));
        if let Some(name) = name {
            attributes.name = name.to_string();
        }
    }
    if matches!(attributes.subresource.as_str(), "exec" | "attach" | "portforward") {
        verb = "create".into();
    }
    attributes.verb = verb;
    attributes
}

/// The mirror's copy of what the authorizers are built from.
#[derive(Default)]
struct Mirror {
    roles: BTreeMap<String, Role>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    role_bindings: BTreeMap<String, RoleBinding>,
    cluster_role_bindings: BTreeMap<String, ClusterRoleBinding>,
    pods: BTreeMap<String, Pod>,
    ingresses: BTreeMap<String, Ingress>,
    revoked_nodes: BTreeMap<String, jiff::Timestamp>,
    /// By token id, each decoded once when it changes.
    bootstrap_tokens: BTreeMap<String, Arc<StoredToken>>,
}

/// What a store change did to the mirror.
#[derive(PartialEq)]
enum Changed {
    Nothing,
    Rbac,
    Pod,
    Ingress,
    Revocation,
    BootstrapToken,
}

impl Mirror {
    /// Lists everything the authorizers need, at one revision.
    async fn list(&mut self, store: &dyn Store) -> Result<Revision, skiff_store::Error> {
        *self = Mirror::default();
        // The prefixes are listed one after another; the revision of the first list is the one the watch
        // resumes from, so a write between two lists is seen again and applied twice, harmlessly.
        let mut revision = None;
        for prefix in PREFIXES {
            let mut start_after: Option<String> = None;
            loop {
                let page = store.list(prefix, start_after.as_deref(), 500).await?;
                revision.get_or_insert(page.revision);
                for kv in &page.kvs {
                    self.put(kv);
                }
                start_after = page.kvs.last().map(|kv| kv.key.clone());
                if !page.more || start_after.is_none() {
                    break;
                }
            }
        }
        Ok(revision.unwrap_or_default())
    }

    fn put(&mut self, kv: &KeyValue) -> Changed {
        fn insert<T: serde::de::DeserializeOwned>(map: &mut BTreeMap<String, T>, kv: &KeyValue) {
            match serde_json::from_slice(&kv.value) {
                Ok(object) => {
                    map.insert(kv.key.clone(), object);
                }
                Err(e) => tracing::warn!(key = kv.key, error = %e, "authorizer cannot decode a stored object"),
            }
        }
        match prefix_of(&kv.key) {
            Some(ROLES) => insert(&mut self.roles, kv),
            Some(CLUSTER_ROLES) => insert(&mut self.cluster_roles, kv),
            Some(ROLE_BINDINGS) => insert(&mut self.role_bindings, kv),
            Some(CLUSTER_ROLE_BINDINGS) => insert(&mut self.cluster_role_bindings, kv),
            Some(PODS) => {
                insert(&mut self.pods, kv);
                return Changed::Pod;
            }
            Some(INGRESSES) => {
                insert(&mut self.ingresses, kv);
                return Changed::Ingress;
            }
            Some(REVOKED_NODES) => {
                let Some((node, at)) = revocation::parse(kv) else { return Changed::Nothing };
                self.revoked_nodes.insert(node, at);
                return Changed::Revocation;
            }
            Some(BOOTSTRAP_TOKENS) => {
                // A Secret that no longer decodes is forgotten rather than kept as it was.
                match StoredToken::parse(kv) {
                    Some((id, token)) => self.bootstrap_tokens.insert(id, Arc::new(token)),
                    None => self.bootstrap_tokens.remove(kv.key.trim_start_matches(BOOTSTRAP_TOKENS)),
                };
                return Changed::BootstrapToken;
            }
            _ => return Changed::Nothing,
        }
        Changed::Rbac
    }

    fn delete(&mut self, key: &str) -> Changed {
        match prefix_of(key) {
            Some(ROLES) => self.roles.remove(key).map(|_| Changed::Rbac),
            Some(CLUSTER_ROLES) => self.cluster_roles.remove(key).map(|_| Changed::Rbac),
            Some(ROLE_BINDINGS) => self.role_bindings.remove(key).map(|_| Changed::Rbac),
            Some(CLUSTER_ROLE_BINDINGS) => self.cluster_role_bindings.remove(key).map(|_| Changed::Rbac),
            Some(PODS) => self.pods.remove(key).map(|_| Changed::Pod),
            Some(INGRESSES) => self.ingresses.remove(key).map(|_| Changed::Ingress),
            Some(REVOKED_NODES) => {
                self.revoked_nodes.remove(key.trim_start_matches(REVOKED_NODES)).map(|_| Changed::Revocation)
            }
            Some(BOOTSTRAP_TOKENS) => {
                self.bootstrap_tokens.remove(key.trim_start_matches(BOOTSTRAP_TOKENS)).map(|_| Changed::BootstrapToken)
            }
            _ => None,
        }
        .unwrap_or(Changed::Nothing)
    }

    fn rbac(&self) -> Rbac {
        Rbac::new(
            self.roles.values().cloned().collect(),
            self.cluster_roles.values().cloned().collect(),
            self.role_bindings.values().cloned().collect(),
            self.cluster_role_bindings.values().cloned().collect(),
        )
    }

    fn graph(&self) -> NodeGraph {
        let mut graph = NodeGraph::default();
        for pod in self.pods.values() {
            graph.upsert_pod(pod);
        }
        for ingress in self.ingresses.values() {
            graph.upsert_ingress(ingress);
        }
        graph
    }

    /// Follows the store from `revision` until `shutdown`, relisting whenever the watch breaks.
    async fn run(
        mut self,
        authorizer: Arc<Authorizer>,
        store: Arc<dyn Store>,
        revision: Revision,
        shutdown: CancellationToken,
    ) {
        let mut revision = revision;
        loop {
            // The whole key space, not only `/registry/`: every write then moves `applied` on, so a
            // denial's wait for the store's revision ends at once even when the last write was, say, an
            // API server's lease outside the registry.
            let watched = store.watch("/", revision).await;
            if let Ok(mut events) = watched {
                loop {
                    let first = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        event = events.next() => event,
                    };
                    let Some(Ok(first)) = first else { break };
                    // Everything already waiting is applied before the snapshot is rebuilt, so a burst of
                    // bindings costs one rebuild.
                    let mut batch = vec![first];
                    while let Some(Some(Ok(event))) = events.next().now_or_never() {
                        batch.push(event);
                    }
                    let (mut rebuild, mut revocations, mut tokens) = (false, false, false);
                    for event in &batch {
                        let changed = match event.kind {
                            EventKind::Put => self.put(&event.kv),
                            EventKind::Delete => self.delete(&event.kv.key),
                        };
                        match changed {
                            Changed::Rbac => rebuild = true,
                            Changed::Pod => self.apply_pod(&authorizer, &event.kv.key),
                            Changed::Ingress => self.apply_ingress(&authorizer, &event.kv.key),
                            Changed::Revocation => revocations = true,
                            Changed::BootstrapToken => tokens = true,
                            Changed::Nothing => {}
                        }
                        revision = revision.max(event.kv.mod_revision);
                    }
                    if rebuild {
                        *authorizer.rbac.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self.rbac());
                    }
                    if revocations {
                        authorizer.revoked_nodes.replace(self.revoked_nodes.clone());
                    }
                    if tokens {
                        authorizer.bootstrap_tokens.replace(self.bootstrap_tokens.clone());
                    }
                    authorizer.applied.send_replace(revision);
                }
            }
            tracing::debug!("authorizer watch ended; listing again");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
            match self.list(store.as_ref()).await {
                Ok(listed) => {
                    revision = listed;
                    *authorizer.rbac.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self.rbac());
                    *authorizer.graph.write().unwrap_or_else(|e| e.into_inner()) = self.graph();
                    authorizer.revoked_nodes.replace(self.revoked_nodes.clone());
                    authorizer.bootstrap_tokens.replace(self.bootstrap_tokens.clone());
                    authorizer.applied.send_replace(revision);
                }
                Err(e) => tracing::warn!(error = %e, "authorizer cannot list the store"),
            }
        }
    }

    fn apply_pod(&self, authorizer: &Authorizer, key: &str) {
        let mut graph = authorizer.graph.write().unwrap_or_else(|e| e.into_inner());
        match self.pods.get(key) {
            Some(pod) => graph.upsert_pod(pod),
            None => {
                let (namespace, name) = key.trim_start_matches(PODS).split_once('/').unwrap_or_default();
                graph.remove_pod(namespace, name);
            }
        }
    }

    fn apply_ingress(&self, authorizer: &Authorizer, key: &str) {
        let mut graph = authorizer.graph.write().unwrap_or_else(|e| e.into_inner());
        match self.ingresses.get(key) {
            Some(ingress) => graph.upsert_ingress(ingress),
            None => {
                let (namespace, name) = key.trim_start_matches(INGRESSES).split_once('/').unwrap_or_default();
                graph.remove_ingress(namespace, name);
            }
        }
    }
}

fn prefix_of(key: &str) -> Option<&'static str> {
    PREFIXES.into_iter().find(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write anywhere in the store moves the mirror on, so a denial never waits out its catch-up for a
    /// write the mirror has no interest in (an API server's lease outside the registry).
    #[tokio::test]
    async fn the_mirror_follows_every_revision_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let shutdown = CancellationToken::new();
        let (authorizer, mirror) = Authorizer::start(store.clone(), shutdown.clone()).await.unwrap();
        let mirror = tokio::spawn(mirror);
        store.create("/skiff/apiserver-leases/a", bytes::Bytes::from_static(b"{}")).await.unwrap();
        let written = store.revision().await.unwrap();
        let mut applied = authorizer.applied.subscribe();
        let caught_up = tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|seen| *seen >= written));
        assert!(caught_up.await.is_ok(), "the mirror never reached revision {written}");
        shutdown.cancel();
        mirror.await.unwrap();
    }

    /// Revocations written to the store, before the mirror starts or after, reach authentication, and one
    /// removed from the store is forgotten.
    #[tokio::test]
    async fn the_mirror_keeps_the_revoked_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let at = |second: i64| jiff::Timestamp::from_second(second).unwrap();
        let revoke = async |node: &str, second: i64| {
            let key = format!("{REVOKED_NODES}{node}");
            store.create(&key, bytes::Bytes::from(at(second).to_string())).await.unwrap();
        };
        revoke("listed", 2000).await;
        let shutdown = CancellationToken::new();
        let (authorizer, mirror) = Authorizer::start(store.clone(), shutdown.clone()).await.unwrap();
        let mirror = tokio::spawn(mirror);
        revoke("watched", 2000).await;
        let node_certificate = |node: &str| crate::authn::CertificateUser {
            user: UserInfo { name: format!("system:node:{node}"), ..UserInfo::default() },
            issued: at(1000),
        };
        assert!(authorizer.caught_up(store.revision().await.unwrap()).await);
        let revoked = authorizer.revoked_nodes();
        assert!(revoked.refuses(&node_certificate("listed")) && revoked.refuses(&node_certificate("watched")));
        assert!(!revoked.refuses(&node_certificate("other")));
        store.delete(&format!("{REVOKED_NODES}watched"), None).await.unwrap();
        assert!(authorizer.caught_up(store.revision().await.unwrap()).await);
        assert!(!revoked.refuses(&node_certificate("watched")), "forgotten with its record");
        shutdown.cancel();
        mirror.await.unwrap();
    }

    /// Bootstrap-token Secrets in the store, before the mirror starts or after, authenticate their tokens,
    /// and one deleted from the store no longer does; other Secrets are not kept.
    #[tokio::test]
    async fn the_mirror_keeps_the_bootstrap_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let write = async |id: &str| {
            let secret = skiff_api::join::BootstrapToken { id: id.into(), secret: "0123456789abcdef".into() }
                .to_secret(None, None, &[]);
            let key = format!("{BOOTSTRAP_TOKENS}{id}");
            store.create(&key, serde_json::to_vec(&secret).unwrap().into()).await.unwrap();
        };
        write("listed").await;
        let shutdown = CancellationToken::new();
        let (authorizer, mirror) = Authorizer::start(store.clone(), shutdown.clone()).await.unwrap();
        let mirror = tokio::spawn(mirror);
        write("watch1").await;
        store.create("/registry/core/secrets/kube-system/other", bytes::Bytes::from_static(b"{}")).await.unwrap();
        assert!(authorizer.caught_up(store.revision().await.unwrap()).await);
        let tokens = authorizer.bootstrap_tokens();
        let user = |id: &str| tokens.authenticate(&format!("{id}.0123456789abcdef"), jiff::Timestamp::now());
        assert_eq!(user("listed").map(|u| u.name).as_deref(), Some("system:bootstrap:listed"));
        assert_eq!(user("watch1").map(|u| u.name).as_deref(), Some("system:bootstrap:watch1"));
        store.delete(&format!("{BOOTSTRAP_TOKENS}watch1"), None).await.unwrap();
        assert!(authorizer.caught_up(store.revision().await.unwrap()).await);
        assert!(user("watch1").is_none(), "revoked with its Secret");
        assert!(user("listed").is_some());
        shutdown.cancel();
        mirror.await.unwrap();
    }

    fn attributes(method: Method, path: &str, query: Option<&str>) -> Attributes {
        request_attributes(UserInfo::default(), &method, path, query)
    }

    #[test]
    fn requests_are_read_as_kube_apiserver_reads_them() {
        let cases = [
            (Method::GET, "/api/v1/namespaces/dev/pods", None, ("list", "", "pods", "", "dev", "")),
            (Method::GET, "/api/v1/namespaces/dev/pods", Some("watch=true"), ("watch", "", "pods", "", "dev", "")),
            (Method::GET, "/api/v1/watch/namespaces/dev/pods", None, ("watch", "", "pods", "", "dev", "")),
            (Method::GET, "/api/v1/namespaces/dev/pods/web", None, ("get", "", "pods", "", "dev", "web")),
            (
                Method::PUT,
                "/api/v1/namespaces/dev/pods/web/status",
                None,
                ("update", "", "pods", "status", "dev", "web"),
            ),
            (Method::GET, "/api/v1/namespaces/dev/pods/web/exec", None, ("create", "", "pods", "exec", "dev", "web")),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/dev/deployments",
                None,
                ("deletecollection", "apps", "deployments", "", "dev", ""),
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/dev/deployments",
                None,
                ("create", "apps", "deployments", "", "dev", ""),
            ),
            (Method::GET, "/api/v1/namespaces/dev", None, ("get", "", "namespaces", "", "dev", "dev")),
            (
                Method::PUT,
                "/api/v1/namespaces/dev/finalize",
                None,
                ("update", "", "namespaces", "finalize", "dev", "dev"),
            ),
            (Method::GET, "/api/v1/namespaces", None, ("list", "", "namespaces", "", "", "")),
            (Method::PATCH, "/api/v1/nodes/n1/status", None, ("patch", "", "nodes", "status", "", "n1")),
            (
                Method::GET,
                "/api/v1/namespaces/dev/secrets",
                Some("fieldSelector=metadata.name%3Dtls&watch=1"),
                ("watch", "", "secrets", "", "dev", "tls"),
            ),
        ];
        for (method, path, query, (verb, group, resource, sub, ns, name)) in cases {
            let a = attributes(method, path, query);
            assert!(a.resource_request, "{path}");
            assert_eq!(
                (
                    a.verb.as_str(),
                    a.api_group.as_str(),
                    a.resource.as_str(),
                    a.subresource.as_str(),
                    a.namespace.as_str(),
                    a.name.as_str()
                ),
                (verb, group, resource, sub, ns, name),
                "{path}"
            );
        }
        for path in ["/api", "/apis", "/api/v1", "/apis/apps/v1", "/openapi/v3", "/version"] {
            let a = attributes(Method::GET, path, None);
            assert!(!a.resource_request, "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", path));
        }
    }

    #[test]
    fn a_denial_is_worded_and_shaped_as_kubernetes_does() {
        let mut a = attributes(Method::GET, "/api/v1/namespaces/prod/secrets", None);
        a.user.name = "alice".into();
        let ApiError::Forbidden(message) = forbidden(&a, "") else { panic!() };
        assert_eq!(
            message,
            r#"secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "prod""#
        );
        let mut b = attributes(Method::PUT, "/apis/apps/v1/namespaces/prod/deployments/web/scale", None);
        b.user.name = "alice".into();
        let ApiError::Forbidden(message) = forbidden(&b, "") else { panic!() };
        assert_eq!(
            message,
            r#"deployments/scale.apps "web" is forbidden: User "alice" cannot update resource "deployments/scale" in API group "apps" in the namespace "prod""#
        );
    }
}
