//! Who calls the kubelet endpoint and whether they may, as the kubelet's webhook modes
//! (`authentication.webhook`, `authorization.mode: Webhook`, anonymous access off):
//!
//! - Authentication: a client certificate signed by the cluster CA (rustls checked it during the handshake)
//!   is its subject's common name, in its organizations; else `Authorization: Bearer <token>` is whoever the
//!   API server's TokenReview says; else no one, `401 Unauthorized`. Everyone authenticated is also in
//!   `system:authenticated`.
//! - Authorization: `system:masters` (the API server's own client certificate, and the admin's) is allowed
//!   here, as the API server's authorizer allows it, so its logs, exec and port-forward cost no round trip;
//!   anyone else is put to the API server as a SubjectAccessReview on this Node's subresource the path maps
//!   to ([`attributes`]), and refused with the kubelet's `403 Forbidden (user=.., verb=.., ..)`.
//!
//! Two rules are stricter than the kubelet's:
//!
//! - An exec, an attach, a port-forward or a run (`/exec`, `/attach`, `/portForward`, `/run`) is `create`
//!   whatever its method, where the kubelet takes the verb from the method alone: a WebSocket upgrade is a
//!   GET, so `get nodes/proxy`, which reads logs, would run commands in every container of the node.
//! - A client certificate naming a node (`system:node:*`) identifies no one here (401): the API server
//!   refuses the certificates of a deleted Node by its own record of revoked nodes, which this port cannot
//!   read, so a revoked node's certificate would still be taken here; and no node needs another node's
//!   kubelet API.
//!
//! Reviews are cached for the kubelet's default TTLs (a token that authenticated 2 min, one that did not
//! 30 s; an allowed access 5 min, a denied one 30 s): a revoked grant or a deleted ServiceAccount still
//! works here that long, as on a kubelet. Anyone who reaches the port can make the node ask, so at most
//! [`MAX_REVIEWS`] reviews are under way at once; a request that finds none free within [`REVIEW_WAIT`] is
//! answered as if the API server could not be asked (401 for a token, 500 `Authorization error` for an
//! access), and nothing is cached for it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::CertificateDer;
use sha2::Digest;
use skiff_api::authz::{AUTHENTICATED, MASTERS, NODE_USER_PREFIX, UserInfo};
use tokio::sync::Semaphore;

/// How long a token the API server authenticated is taken without asking again (the kubelet's
/// `authentication.webhook.cacheTTL` default).
pub const AUTHENTICATED_TTL: Duration = Duration::from_secs(120);
/// How long a token the API server did not authenticate is refused without asking again (the token
/// webhook's failure TTL).
pub const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(30);
/// How long an allowed access stays allowed (`authorization.webhook.cacheAuthorizedTTL`).
pub const AUTHORIZED_TTL: Duration = Duration::from_secs(300);
/// How long a denied access stays denied (`authorization.webhook.cacheUnauthorizedTTL`).
pub const UNAUTHORIZED_TTL: Duration = Duration::from_secs(30);
/// Answers each cache holds at most: anyone who reaches the port can present new tokens, and each refused
/// one is remembered for [`UNAUTHENTICATED_TTL`]. Kubernetes' webhook authorizer keeps 8,192 decisions too.
const CACHE_ENTRIES: usize = 8_192;
/// Reviews under way at once. The API server's own client certificate needs none, so these are other
/// callers' first requests (later ones are answered from the caches): a few dozen at once is a busy node,
/// more is someone making the node send the API server requests it would not otherwise send.
pub const MAX_REVIEWS: usize = 32;
/// How long a request waits for a review to end when [`MAX_REVIEWS`] are under way: a few reviews' time, so
/// that a burst of new callers is served and a flood is refused without holding its connections.
pub const REVIEW_WAIT: Duration = Duration::from_millis(200);

/// Why a review could not be had from the API server.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server was not reached, or refused the review itself (the node may not create it).
    #[error("cannot create a {kind}")]
    Api {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The API server answered without a status.
    #[error("the {0} came back without a status")]
    NoStatus(&'static str),
    /// [`MAX_REVIEWS`] were under way for all of [`REVIEW_WAIT`].
    #[error("too many reviews under way")]
    Saturated,
}

/// The API server's side of the webhook modes; tests put a fake in its place.
#[async_trait::async_trait]
pub trait Reviewer: Send + Sync {
    /// The user `token` authenticates for the API server's audiences, or None.
    async fn token(&self, token: &str) -> Result<Option<UserInfo>, ReviewError>;
    /// Whether the access `spec` describes is allowed.
    async fn access(&self, spec: &SubjectAccessReviewSpec) -> Result<bool, ReviewError>;
}

/// Reviews through the Kubernetes API, as the node's identity.
pub struct ApiReviewer(pub kube::Client);

#[async_trait::async_trait]
impl Reviewer for ApiReviewer {
    async fn token(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
        const KIND: &str = "TokenReview";
        // No audiences: the API server's own, as the kubelet asks.
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.0.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError::Api { kind: KIND, source })?;
        let status = answer.status.ok_or(ReviewError::NoStatus(KIND))?;
        if status.authenticated != Some(true) {
            tracing::debug!(error = status.error.unwrap_or_default(), "bearer token not authenticated");
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    async fn access(&self, spec: &SubjectAccessReviewSpec) -> Result<bool, ReviewError> {
        const KIND: &str = "SubjectAccessReview";
        let review = SubjectAccessReview { spec: spec.clone(), ..SubjectAccessReview::default() };
        let answer = Api::<SubjectAccessReview>::all(self.0.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError::Api { kind: KIND, source })?;
        Ok(answer.status.ok_or(ReviewError::NoStatus(KIND))?.allowed)
    }
}

/// A request refused, with the kubelet's status and body.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No identity, or a bearer token the API server did not take.
    Unauthorized,
    /// The API server denied the access.
    Forbidden { user: String, verb: &'static str, subresource: &'static str },
    /// The API server could not be asked.
    AuthorizationError { user: String, verb: &'static str, subresource: &'static str },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::AuthorizationError { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body, in the kubelet's words (its `InstallAuthFilter`), trailing newline included.
    pub fn body(&self) -> String {
        match self {
            Refusal::Unauthorized => "Unauthorized".to_string(),
            Refusal::Forbidden { user, verb, subresource } => {
                format!("Forbidden (user={user}, verb={verb}, resource=nodes, subresource(s)=[{subresource}])\n")
            }
            Refusal::AuthorizationError { user, verb, subresource } => {
                format!("Authorization error (user={user}, verb={verb}, resource=nodes, subresource={subresource})")
            }
        }
    }
}

/// The user a connection's client certificate names (the leaf; rustls has checked it was signed by the
/// cluster CA), as kube-apiserver's `CommonNameUserConversion`: a certificate without a common name
/// identifies no one.
pub fn certificate_user(certificates: Option<&[CertificateDer<'_>]>) -> Option<UserInfo> {
    let leaf = certificates?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(UserInfo { name, groups, ..UserInfo::default() })
}

/// The verb and the Node subresource a request to `path` with `method` asks for, as the kubelet's
/// `GetRequestAttributes` (the verb by method; a method without a verb is the empty verb, which no rule
/// allows), except that what runs something in a container ([`STREAMING`]) is `create` whatever its method:
/// its WebSocket upgrade is a GET, which the kubelet judges as `get`.
pub fn attributes(method: &Method, path: &str) -> (&'static str, &'static str) {
    // The kubelet's `isSubpath`: the path itself, or below it.
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    let verb = match *method {
        _ if STREAMING.into_iter().any(under) => "create",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let subresource = [("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"), ("/spec", "spec")]
        .into_iter()
        .find_map(|(prefix, subresource)| under(prefix).then_some(subresource))
        .unwrap_or("proxy");
    (verb, subresource)
}

/// The kubelet's paths that run something in a container or reach into its pod: `create` on `nodes/proxy`
/// whatever the method.
const STREAMING: [&str; 4] = ["/exec", "/attach", "/portForward", "/run"];

/// Authentication and authorization of the requests to one node's endpoint, with the caches of reviews.
pub struct Auth {
    node: String,
    reviewer: Arc<dyn Reviewer>,
    /// By the SHA-256 of the token, so that no token stays in memory: the user, or None for a token refused.
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    /// By the review's spec in JSON, as Kubernetes' webhook authorizer keys its cache.
    decisions: TtlCache<String, bool>,
    /// A permit per review under way, [`MAX_REVIEWS`] in all.
    reviews: Semaphore,
}

impl Auth {
    pub fn new(node: String, reviewer: Arc<dyn Reviewer>) -> Self {
        let (tokens, decisions, reviews) = (TtlCache::default(), TtlCache::default(), Semaphore::new(MAX_REVIEWS));
        Self { node, reviewer, tokens, decisions, reviews }
    }

    /// Whether the caller of a request with `headers`, `method` and `path`, on a connection whose client
    /// certificate named `certified`, may make it.
    pub async fn check(
        &self,
        certified: Option<&UserInfo>,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        let user = self.authenticate(certified, headers, now).await?;
        self.authorize(&user, method, path, now).await
    }

    /// The union of the x509 and the token authenticators, the certificate first.
    async fn authenticate(
        &self,
        certified: Option<&UserInfo>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<UserInfo, Refusal> {
        // A node's certificate is no one (see the module's documentation): a token may still speak.
        let certified = certified.filter(|user| !user.name.starts_with(NODE_USER_PREFIX));
        let mut user = match (certified, bearer(headers)) {
            (Some(user), _) => user.clone(),
            (None, Some(token)) => self.token_user(token, now).await.ok_or(Refusal::Unauthorized)?,
            (None, None) => return Err(Refusal::Unauthorized),
        };
        if !user.in_group(AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
        Ok(user)
    }

    async fn token_user(&self, token: &str, now: Instant) -> Option<UserInfo> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.tokens.get(&key, now) {
            return known;
        }
        match self.review(self.reviewer.token(token)).await {
            Ok(user) => {
                let ttl = if user.is_some() { AUTHENTICATED_TTL } else { UNAUTHENTICATED_TTL };
                self.tokens.insert(key, user.clone(), ttl, now);
                user
            }
            // Not cached: the next request asks again.
            Err(error) => {
                log_review_error(&error, "cannot authenticate a bearer token");
                None
            }
        }
    }

    async fn authorize(&self, user: &UserInfo, method: &Method, path: &str, now: Instant) -> Result<(), Refusal> {
        if user.in_group(MASTERS) {
            return Ok(());
        }
        let (verb, subresource) = attributes(method, path);
        let spec = SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: Some(user.uid.clone()).filter(|uid| !uid.is_empty()),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone()).filter(|extra| !extra.is_empty()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                group: Some(String::new()),
                version: Some("v1".to_string()),
                resource: Some("nodes".to_string()),
                subresource: Some(subresource.to_string()),
                name: Some(self.node.clone()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        };
        // A spec that cannot be written as a key is asked about every time: no key may stand for two.
        let key = serde_json::to_string(&spec).ok();
        let allowed = match key.as_ref().and_then(|key| self.decisions.get(key, now)) {
            Some(allowed) => allowed,
            None => match self.review(self.reviewer.access(&spec)).await {
                Ok(allowed) => {
                    let ttl = if allowed { AUTHORIZED_TTL } else { UNAUTHORIZED_TTL };
                    if let Some(key) = key {
                        self.decisions.insert(key, allowed, ttl, now);
                    }
                    allowed
                }
                Err(error) => {
                    let _span = tracing::info_span!("access", user = %user.name, verb, subresource).entered();
                    log_review_error(&error, "authorization error");
                    return Err(Refusal::AuthorizationError { user: user.name.clone(), verb, subresource });
                }
            },
        };
        match allowed {
            true => Ok(()),
            false => Err(Refusal::Forbidden { user: user.name.clone(), verb, subresource }),
        }
    }
}

impl Auth {
    /// Runs `review` once one of the [`MAX_REVIEWS`] permits is free, waiting [`REVIEW_WAIT`] at most.
    async fn review<T>(&self, review: impl Future<Output = Result<T, ReviewError>>) -> Result<T, ReviewError> {
        let permit = tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire()).await;
        // The semaphore is never closed: an error is a wait that ran out.
        let Ok(Ok(_permit)) = permit else { return Err(ReviewError::Saturated) };
        review.await
    }
}

/// Logs a review that could not be had: at debug when the reviews were saturated, which a flood of
/// requests would otherwise turn into a flood of lines.
fn log_review_error(error: &ReviewError, message: &str) {
    match error {
        ReviewError::Saturated => tracing::debug!(error = %error, "{message}"),
        _ => tracing::warn!(error = %error_chain(error), "{message}"),
    }
}

/// The request's bearer token: the scheme case-insensitive, as kube-apiserver and the kubelet read it.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `error` and its sources, for one log field.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Answers that hold until their own expiry, at most [`CACHE_ENTRIES`] of them.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.lock().get(key).filter(|(_, expires)| now < *expires).map(|(value, _)| value.clone())
    }

    fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= CACHE_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| now < *expires);
            // Still full of live answers: the one due to expire first makes room.
            if entries.len() >= CACHE_ENTRIES {
                let soonest = entries.iter().min_by_key(|(_, (_, expires))| *expires).map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn requests_map_to_the_kubelet_s_verbs_and_node_subresources() {
        let cases = [
            (Method::GET, "/containerLogs/default/web/main", ("get", "proxy")),
            (Method::HEAD, "/containerLogs/default/web/main", ("get", "proxy")),
            // What runs in a container is `create` whatever the method: a WebSocket upgrade is a GET.
            (Method::GET, "/exec/default/web/uid/main", ("create", "proxy")),
            (Method::POST, "/exec/default/web/uid/main", ("create", "proxy")),
            (Method::GET, "/portForward/default/web/uid", ("create", "proxy")),
            (Method::POST, "/portForward/default/web/uid", ("create", "proxy")),
            (Method::GET, "/attach/default/web/main", ("create", "proxy")),
            (Method::HEAD, "/run/default/web/main", ("create", "proxy")),
            (Method::DELETE, "/exec", ("create", "proxy")),
            (Method::GET, "/execute/default/web", ("get", "proxy")),
            (Method::PUT, "/stats/summary", ("update", "stats")),
            (Method::GET, "/stats", ("get", "stats")),
            (Method::GET, "/metrics", ("get", "metrics")),
            (Method::GET, "/metrics/cadvisor", ("get", "metrics")),
            (Method::PATCH, "/logs/syslog", ("patch", "log")),
            (Method::DELETE, "/spec/", ("delete", "spec")),
            // Only the path itself or below it: a longer name is another path.
            (Method::GET, "/statsfoo", ("get", "proxy")),
            (Method::GET, "/logsx/a", ("get", "proxy")),
            (Method::GET, "/", ("get", "proxy")),
            (Method::OPTIONS, "/metrics", ("", "metrics")),
        ];
        for (method, path, expected) in cases {
            assert_eq!(attributes(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn refusals_are_worded_as_the_kubelet_s() {
        let forbidden = Refusal::Forbidden { user: "alice".into(), verb: "get", subresource: "proxy" };
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(forbidden.body(), "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[proxy])\n");
        let error = Refusal::AuthorizationError { user: "bob".into(), verb: "create", subresource: "stats" };
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.body(), "Authorization error (user=bob, verb=create, resource=nodes, subresource=stats)");
        assert_eq!(
            (Refusal::Unauthorized.status(), Refusal::Unauthorized.body().as_str()),
            (StatusCode::UNAUTHORIZED, "Unauthorized")
        );
    }

    /// The API server's answers: `good` is alice's token, everything `allowed` names is allowed; each call
    /// counted; `down` fails every review.
    #[derive(Default)]
    struct FakeApi {
        allowed: Mutex<Vec<(String, String, String)>>,
        down: std::sync::atomic::AtomicBool,
        tokens: AtomicUsize,
        accesses: AtomicUsize,
        asked: Mutex<Vec<SubjectAccessReviewSpec>>,
    }

    impl FakeApi {
        fn allow(&self, user: &str, verb: &str, subresource: &str) {
            self.allowed.lock().unwrap().push((user.into(), verb.into(), subresource.into()));
        }

        fn unavailable() -> ReviewError {
            ReviewError::NoStatus("review")
        }
    }

    #[async_trait::async_trait]
    impl Reviewer for FakeApi {
        async fn token(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
            self.tokens.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::unavailable());
            }
            let alice = UserInfo {
                name: "alice".into(),
                uid: "u-1".into(),
                groups: vec!["developers".into(), AUTHENTICATED.into()],
                extra: [("scopes".to_string(), vec!["logs".to_string()])].into(),
            };
            Ok((token == "good").then_some(alice))
        }

        async fn access(&self, spec: &SubjectAccessReviewSpec) -> Result<bool, ReviewError> {
            self.accesses.fetch_add(1, Ordering::SeqCst);
            self.asked.lock().unwrap().push(spec.clone());
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::unavailable());
            }
            let attributes = spec.resource_attributes.clone().unwrap_or_default();
            let asked = (
                spec.user.clone().unwrap_or_default(),
                attributes.verb.unwrap_or_default(),
                attributes.subresource.unwrap_or_default(),
            );
            Ok(self.allowed.lock().unwrap().contains(&asked))
        }
    }

    fn auth() -> (Arc<FakeApi>, Auth) {
        let api = Arc::new(FakeApi::default());
        (api.clone(), Auth::new("node-a".into(), api))
    }

    fn bearer_headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("bearer {token}").parse().unwrap());
        headers
    }

    fn user(name: &str, group: &str) -> UserInfo {
        UserInfo { name: name.into(), groups: vec![group.into()], ..UserInfo::default() }
    }

    const LOGS: &str = "/containerLogs/default/web/main";

    #[tokio::test]
    async fn certificates_are_taken_and_tokens_reviewed_and_cached() {
        let (api, auth) = auth();
        let t0 = Instant::now();
        let none = HeaderMap::new();
        assert_eq!(auth.authenticate(None, &none, t0).await, Err(Refusal::Unauthorized));
        assert_eq!(auth.authenticate(None, &bearer_headers(""), t0).await, Err(Refusal::Unauthorized));
        assert_eq!(api.tokens.load(Ordering::SeqCst), 0, "no token, no review");

        // A certificate speaks for itself, even beside a token, and joins system:authenticated.
        let bob = user("bob", "ops");
        let certified = auth.authenticate(Some(&bob), &bearer_headers("good"), t0).await.unwrap();
        assert_eq!(certified.groups, ["ops", AUTHENTICATED]);
        assert_eq!(api.tokens.load(Ordering::SeqCst), 0);

        // A good token is alice for 2 minutes.
        let alice = auth.authenticate(None, &bearer_headers("good"), t0).await.unwrap();
        assert_eq!((alice.name.as_str(), alice.uid.as_str()), ("alice", "u-1"));
        assert_eq!(alice.groups, ["developers", AUTHENTICATED]);
        let later = t0 + AUTHENTICATED_TTL - Duration::from_secs(1);
        assert_eq!(auth.authenticate(None, &bearer_headers("good"), later).await, Ok(alice.clone()));
        assert_eq!(api.tokens.load(Ordering::SeqCst), 1, "answered from the cache");
        assert_eq!(auth.authenticate(None, &bearer_headers("good"), t0 + AUTHENTICATED_TTL).await, Ok(alice));
        assert_eq!(api.tokens.load(Ordering::SeqCst), 2, "asked again once expired");

        // A bad token is refused for 30 seconds.
        assert_eq!(auth.authenticate(None, &bearer_headers("bad"), t0).await, Err(Refusal::Unauthorized));
        let later = t0 + UNAUTHENTICATED_TTL - Duration::from_secs(1);
        assert_eq!(auth.authenticate(None, &bearer_headers("bad"), later).await, Err(Refusal::Unauthorized));
        assert_eq!(api.tokens.load(Ordering::SeqCst), 3);
        assert_eq!(
            auth.authenticate(None, &bearer_headers("bad"), t0 + UNAUTHENTICATED_TTL).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(api.tokens.load(Ordering::SeqCst), 4);

        // With the API server away a token is refused and nothing is remembered.
        api.down.store(true, Ordering::SeqCst);
        assert_eq!(auth.authenticate(None, &bearer_headers("other"), t0).await, Err(Refusal::Unauthorized));
        api.down.store(false, Ordering::SeqCst);
        assert_eq!(auth.authenticate(None, &bearer_headers("other"), t0).await, Err(Refusal::Unauthorized));
        assert_eq!(api.tokens.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn accesses_are_reviewed_as_the_kubelet_asks_and_cached() {
        let (api, auth) = auth();
        let t0 = Instant::now();
        let forbidden =
            |user: &str, verb, subresource| Err(Refusal::Forbidden { user: user.to_string(), verb, subresource });

        // system:masters is never asked about.
        let apiserver = user("kube-apiserver-kubelet-client", MASTERS);
        for method in [Method::GET, Method::POST, Method::DELETE] {
            assert_eq!(auth.authorize(&apiserver, &method, "/exec/a/b/c/d", t0).await, Ok(()));
        }
        assert_eq!(api.accesses.load(Ordering::SeqCst), 0);

        // Anyone else is asked about, with the whole identity, this node and the subresource.
        let alice = UserInfo {
            name: "alice".into(),
            uid: "u-1".into(),
            groups: vec!["developers".into(), AUTHENTICATED.into()],
            extra: [("scopes".to_string(), vec!["logs".to_string()])].into(),
        };
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, t0).await, forbidden("alice", "get", "proxy"));
        let asked = api.asked.lock().unwrap()[0].clone();
        assert_eq!(asked.user.as_deref(), Some("alice"));
        assert_eq!(asked.uid.as_deref(), Some("u-1"));
        assert_eq!(asked.groups, Some(alice.groups.clone()));
        assert_eq!(asked.extra, Some(alice.extra.clone()));
        let attributes = asked.resource_attributes.unwrap();
        assert_eq!(
            attributes,
            ResourceAttributes {
                verb: Some("get".into()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some("nodes".into()),
                subresource: Some("proxy".into()),
                name: Some("node-a".into()),
                ..ResourceAttributes::default()
            }
        );

        // A denial holds 30 seconds, even once granted.
        api.allow("alice", "get", "proxy");
        let later = t0 + UNAUTHORIZED_TTL - Duration::from_secs(1);
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, later).await, forbidden("alice", "get", "proxy"));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 1);
        let t1 = t0 + UNAUTHORIZED_TTL;
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, t1).await, Ok(()));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 2);

        // An allowed access holds 5 minutes, even once revoked; another verb is another question.
        api.allowed.lock().unwrap().clear();
        let later = t1 + AUTHORIZED_TTL - Duration::from_secs(1);
        assert_eq!(auth.authorize(&alice, &Method::GET, "/containerLogs/default/db/main", later).await, Ok(()));
        assert_eq!(auth.authorize(&alice, &Method::POST, LOGS, later).await, forbidden("alice", "create", "proxy"));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 3);
        // An exec's upgrade by GET is that same `create`, answered from the cache.
        let exec = "/exec/default/web/uid/main";
        assert_eq!(auth.authorize(&alice, &Method::GET, exec, later).await, forbidden("alice", "create", "proxy"));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 3);
        let t2 = t1 + AUTHORIZED_TTL;
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, t2).await, forbidden("alice", "get", "proxy"));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 4);

        // Another identity with alice's name is another question too.
        let impostor = user("alice", "developers");
        api.allow("alice", "get", "stats");
        assert_eq!(auth.authorize(&alice, &Method::GET, "/stats/summary", t2).await, Ok(()));
        assert_eq!(auth.authorize(&impostor, &Method::GET, "/stats/summary", t2).await, Ok(()));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 6);

        // With the API server away: an authorization error, not remembered.
        api.down.store(true, Ordering::SeqCst);
        let error = Err(Refusal::AuthorizationError { user: "alice".into(), verb: "get", subresource: "metrics" });
        assert_eq!(auth.authorize(&alice, &Method::GET, "/metrics", t2).await, error);
        api.down.store(false, Ordering::SeqCst);
        assert_eq!(auth.authorize(&alice, &Method::GET, "/metrics", t2).await, forbidden("alice", "get", "metrics"));
        assert_eq!(api.accesses.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn a_node_s_certificate_is_no_one() {
        let (api, auth) = auth();
        let t0 = Instant::now();
        let none = HeaderMap::new();
        // Another node's, and this node's own: the port cannot know whether the node was revoked.
        for name in ["system:node:b", "system:node:node-a"] {
            let node = user(name, "system:nodes");
            assert_eq!(auth.authenticate(Some(&node), &none, t0).await, Err(Refusal::Unauthorized), "{name}");
            assert_eq!(auth.check(Some(&node), &none, &Method::GET, LOGS).await, Err(Refusal::Unauthorized));
        }
        assert_eq!(api.accesses.load(Ordering::SeqCst), 0, "no one is not asked about");
        // A bearer token beside it speaks for the caller.
        let node = user("system:node:b", "system:nodes");
        let alice = auth.authenticate(Some(&node), &bearer_headers("good"), t0).await.unwrap();
        assert_eq!(alice.name, "alice");
        // Only the prefix with its colon is a node's.
        let reader = user("system:nodes-reader", "ops");
        assert_eq!(auth.authenticate(Some(&reader), &none, t0).await.unwrap().name, "system:nodes-reader");
    }

    #[tokio::test]
    async fn reviews_under_way_are_bounded() {
        let (api, auth) = auth();
        let t0 = Instant::now();
        let alice = user("alice", "developers");
        let held = auth.reviews.try_acquire_many(MAX_REVIEWS as u32).unwrap();
        // With every permit taken: refused as when the API server cannot be asked, without asking it.
        let started = std::time::Instant::now();
        assert_eq!(auth.authenticate(None, &bearer_headers("good"), t0).await, Err(Refusal::Unauthorized));
        let error = Err(Refusal::AuthorizationError { user: "alice".into(), verb: "get", subresource: "proxy" });
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, t0).await, error);
        assert!(started.elapsed() < 2 * REVIEW_WAIT + Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!((api.tokens.load(Ordering::SeqCst), api.accesses.load(Ordering::SeqCst)), (0, 0));

        // A permit freed while a request waits is its, and the answer is cached as any.
        let good = bearer_headers("good");
        let (authenticated, ()) = tokio::join!(auth.authenticate(None, &good, t0), async { drop(held) });
        assert_eq!(authenticated.unwrap().name, "alice");
        let forbidden = Err(Refusal::Forbidden { user: "alice".into(), verb: "get", subresource: "proxy" });
        assert_eq!(auth.authorize(&alice, &Method::GET, LOGS, t0).await, forbidden);
        assert_eq!((api.tokens.load(Ordering::SeqCst), api.accesses.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(auth.reviews.available_permits(), MAX_REVIEWS, "each review gave its permit back");
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_the_soonest_to_expire() {
        let cache = TtlCache::default();
        let t0 = Instant::now();
        cache.insert(0, "short", Duration::from_secs(1), t0);
        cache.insert(1, "first", Duration::from_secs(100), t0);
        for key in 2..CACHE_ENTRIES {
            cache.insert(key, "long", Duration::from_secs(200), t0);
        }
        // Full: the expired answer makes room.
        let t1 = t0 + Duration::from_secs(2);
        cache.insert(CACHE_ENTRIES, "new", Duration::from_secs(200), t1);
        assert_eq!(cache.lock().len(), CACHE_ENTRIES);
        assert_eq!((cache.get(&0, t1), cache.get(&1, t1)), (None, Some("first")));
        // Full of live answers: the one due first goes.
        cache.insert(CACHE_ENTRIES + 1, "newer", Duration::from_secs(200), t1);
        assert_eq!(cache.lock().len(), CACHE_ENTRIES);
        assert_eq!((cache.get(&1, t1), cache.get(&(CACHE_ENTRIES + 1), t1)), (None, Some("newer")));
        assert_eq!(cache.get(&2, t1), Some("long"));
    }

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let crate::connect::tests::Ca { issuer, .. } = crate::connect::tests::ca();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:b");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        let der = CertificateDer::from(params.signed_by(&key, &issuer).unwrap().der().to_vec());
        assert_eq!(certificate_user(Some(&[der])), Some(user("system:node:b", "system:nodes")));
        assert_eq!(certificate_user(None), None);
        assert_eq!(certificate_user(Some(&[])), None);

        let mut nameless = rcgen::CertificateParams::default();
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        nameless.distinguished_name.push(rcgen::DnType::OrganizationName, MASTERS);
        let der = CertificateDer::from(nameless.signed_by(&key, &issuer).unwrap().der().to_vec());
        assert_eq!(certificate_user(Some(&[der])), None, "no common name, no one");
    }
}
