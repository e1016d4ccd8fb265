//! Who a request comes from, as kube-apiserver's union of authenticators: an x509 client certificate
//! signed by the cluster CA (user = CN, groups = O) unless it names a node revoked since it was issued
//! (see [`crate::revocation`]), else a bearer token the server knows. The admin token
//! is `system:admin` in `system:masters`; the join token's shared secret is a bootstrap identity in
//! `system:bootstrappers`, which RBAC lets ask for a node certificate and nothing else, and so is a
//! Kubernetes bootstrap token `<id>.<secret>` while its Secret in `kube-system` holds it (see
//! [`crate::bootstrap_tokens`]: one token per node, revoked by deleting its Secret); a service account
//! token (a JWT the cluster's key signed, see [`crate::serviceaccounts`]) is its ServiceAccount while that,
//! and the pod it may be bound to, still exist. Like k3s (which runs kube-apiserver with
//! `--anonymous-auth=false`), a request with no credentials is not authenticated at all; the few public
//! paths are answered before authorization.

use std::sync::Arc;

use http::{HeaderMap, header};
use jiff::Timestamp;
use skiff_api::authz::{AUTHENTICATED, BOOTSTRAPPERS, CERTIFICATE_BACKDATE, MASTERS, UserInfo};
use subtle::ConstantTimeEq;

use crate::bootstrap_tokens::BootstrapTokens;
use crate::revocation::RevokedNodes;
use crate::serviceaccounts::{self, ServiceAccountTokens, TokenError};

/// The user name the shared join token's holder gets (`system:bootstrap:<token id>` as for a bootstrap
/// token; the shared token has one fixed id, shorter than any bootstrap token's).
pub const BOOTSTRAP_USER: &str = "system:bootstrap:skiff";
/// The admin kubeconfig's user.
pub const ADMIN_USER: &str = "system:admin";

/// The bearer tokens the server issued.
pub struct Authenticator {
    admin_token: String,
    join_secret: String,
    service_accounts: Option<Arc<ServiceAccountTokens>>,
    revoked_nodes: Arc<RevokedNodes>,
    bootstrap_tokens: Arc<BootstrapTokens>,
}

/// The identity a verified client certificate speaks for, and when the certificate was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateUser {
    pub user: UserInfo,
    /// `notBefore` plus the signer's backdating ([`CERTIFICATE_BACKDATE`]): the issue time, to the second
    /// below.
    pub issued: Timestamp,
}

/// What authentication found.
#[derive(Debug, PartialEq, Eq)]
pub enum Authenticated {
    User(UserInfo),
    /// No credentials at all.
    Anonymous,
    /// Credentials that are wrong: 401 whatever the path.
    Invalid,
}

/// What a bearer token proves (TokenReview's answer; a request's identity).
#[derive(Debug)]
pub enum TokenOutcome {
    /// The token's user, and which of the audiences asked about it is meant for.
    Authenticated { user: UserInfo, audiences: Vec<String> },
    /// No authenticator knows the token.
    Unknown,
    /// A service account token of this cluster's that no longer holds, and why.
    Refused(TokenError),
}

impl Authenticator {
    pub fn new(admin_token: String, join_secret: String) -> Self {
        Self {
            admin_token,
            join_secret,
            service_accounts: None,
            revoked_nodes: Arc::default(),
            bootstrap_tokens: Arc::default(),
        }
    }

    /// The same, also taking the service account tokens `tokens` signs.
    pub fn with_service_accounts(self, tokens: Arc<ServiceAccountTokens>) -> Self {
        Self { service_accounts: Some(tokens), ..self }
    }

    /// The same, refusing client certificates of the nodes `revoked` names that were issued before their
    /// revocation.
    pub fn with_revoked_nodes(self, revoked: Arc<RevokedNodes>) -> Self {
        Self { revoked_nodes: revoked, ..self }
    }

    /// The same, also taking the bootstrap tokens of the Secrets `tokens` mirrors.
    pub fn with_bootstrap_tokens(self, tokens: Arc<BootstrapTokens>) -> Self {
        Self { bootstrap_tokens: tokens, ..self }
    }

    /// The request's identity: its client certificate's (`peer`, verified during the TLS handshake) or its
    /// bearer token's, for the API server's audiences. The certificate is judged on every request, not once
    /// per connection, so a node revoked while connected is refused from its next request on.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: Option<&CertificateUser>) -> Authenticated {
        if let Some(certificate) = peer {
            if self.revoked_nodes.refuses(certificate) {
                tracing::debug!(user = certificate.user.name, "client certificate of a revoked node refused");
                return Authenticated::Invalid;
            }
            return Authenticated::User(certificate.user.clone());
        }
        let Some(token) = bearer(headers) else { return Authenticated::Anonymous };
        match self.authenticate_token(token, &[]).await {
            TokenOutcome::Authenticated { user, .. } => Authenticated::User(user),
            TokenOutcome::Unknown => Authenticated::Invalid,
            TokenOutcome::Refused(error) => {
                tracing::debug!(%error, "service account token refused");
                Authenticated::Invalid
            }
        }
    }

    /// Completes once `certificate`, accepted so far, is refused as a revoked node's; never without a
    /// certificate, with one naming no node (so an admin's or a user's connection does not wake on every
    /// revocation), or with one refused already (its connection answers each request 401). A connection
    /// ends then, with the watches it carries, which would otherwise outlive the revocation.
    pub async fn revoked(&self, certificate: Option<&CertificateUser>) {
        match certificate {
            Some(certificate)
                if certificate.user.name.starts_with(skiff_api::authz::NODE_USER_PREFIX)
                    && !self.revoked_nodes.refuses(certificate) =>
            {
                self.revoked_nodes.refused(certificate).await
            }
            _ => std::future::pending().await,
        }
    }

    /// What `token` proves for `audiences` (the API server's when empty), as kube-apiserver's token
    /// authenticators answer a TokenReview. The admin, join and bootstrap tokens know no audiences: like
    /// Kubernetes' audience-agnostic authenticators, they are taken only where the API server's audiences are
    /// asked for.
    pub async fn authenticate_token(&self, token: &str, audiences: &[String]) -> TokenOutcome {
        let api = serviceaccounts::api_audiences();
        let audiences = if audiences.is_empty() { api.as_slice() } else { audiences };
        let agnostic = if same_token(&self.admin_token, token) {
            Some(user(ADMIN_USER, &[MASTERS]))
        } else if same_token(&self.join_secret, token) {
            Some(user(BOOTSTRAP_USER, &[BOOTSTRAPPERS]))
        } else {
            self.bootstrap_tokens.authenticate(token, Timestamp::now())
        };
        if let Some(user) = agnostic {
            let shared: Vec<String> = audiences.iter().filter(|a| api.contains(a)).cloned().collect();
            return match shared.is_empty() {
                true => TokenOutcome::Unknown,
                false => TokenOutcome::Authenticated { user, audiences: shared },
            };
        }
        let Some(tokens) = &self.service_accounts else { return TokenOutcome::Unknown };
        match tokens.authenticate(token, audiences).await {
            Some(Ok(found)) => TokenOutcome::Authenticated { user: found.user, audiences: found.audiences },
            Some(Err(error)) => TokenOutcome::Refused(error),
            None => TokenOutcome::Unknown,
        }
    }
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    groups.push(AUTHENTICATED.to_string());
    UserInfo { name: name.to_string(), groups, ..UserInfo::default() }
}

/// The identity in a client certificate the TLS layer already verified against the cluster CA: the
/// subject's common name is the user, its organizations the groups (kube-apiserver's
/// `CommonNameUserConversion`). A certificate without a common name identifies no one.
pub fn certificate_user(der: &[u8]) -> Option<CertificateUser> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok()).map(str::to_string).collect();
    groups.push(AUTHENTICATED.to_string());
    let not_before = Timestamp::from_second(certificate.validity().not_before.timestamp()).ok()?;
    let issued = not_before.checked_add(CERTIFICATE_BACKDATE).ok()?;
    Some(CertificateUser { user: UserInfo { name, groups, ..UserInfo::default() }, issued })
}

/// The request's bearer token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // The scheme is case-insensitive (RFC 9110), as kube-apiserver reads it.
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares tokens in constant time (for equal lengths; a token's length is no secret).
fn same_token(known: &str, presented: &str) -> bool {
    known.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn tokens_map_to_their_identities_and_unknown_ones_are_refused() {
        let authn = Authenticator::new("admin-secret".into(), "join-secret".into());
        let Authenticated::User(admin) = authn.authenticate(&headers(Some("admin-secret")), None).await else {
            panic!()
        };
        assert_eq!(admin.name, ADMIN_USER);
        assert!(admin.in_group(MASTERS) && admin.in_group(AUTHENTICATED));
        let Authenticated::User(joiner) = authn.authenticate(&headers(Some("join-secret")), None).await else {
            panic!()
        };
        assert_eq!(joiner.name, BOOTSTRAP_USER);
        assert!(joiner.in_group(BOOTSTRAPPERS) && !joiner.in_group(MASTERS));
        assert_eq!(authn.authenticate(&headers(Some("stolen")), None).await, Authenticated::Invalid);
        assert_eq!(authn.authenticate(&headers(None), None).await, Authenticated::Anonymous);
        // Reviewed for another audience, the admin token is no one's.
        let elsewhere = authn.authenticate_token("admin-secret", &["vault".to_string()]).await;
        assert!(matches!(elsewhere, TokenOutcome::Unknown), "{elsewhere:?}");
    }

    #[tokio::test]
    async fn a_bootstrap_token_is_its_user_while_its_secret_holds_it() {
        let tokens = Arc::new(BootstrapTokens::default());
        let authn =
            Authenticator::new("admin-secret".into(), "join-secret".into()).with_bootstrap_tokens(tokens.clone());
        let bearer = "abcdef.0123456789abcdef";
        assert_eq!(authn.authenticate(&headers(Some(bearer)), None).await, Authenticated::Invalid, "no Secret yet");
        let token = skiff_api::join::BootstrapToken::parse(bearer).unwrap();
        let secret = token.to_secret(Some(Timestamp::now() + jiff::SignedDuration::from_hours(1)), None, &[]);
        let kv = skiff_store::KeyValue {
            key: format!("{}abcdef", crate::bootstrap_tokens::BOOTSTRAP_TOKENS),
            value: serde_json::to_vec(&secret).unwrap().into(),
            create_revision: 1,
            mod_revision: 1,
        };
        let (id, stored) = crate::bootstrap_tokens::StoredToken::parse(&kv).unwrap();
        tokens.replace([(id, Arc::new(stored))].into());
        let Authenticated::User(joiner) = authn.authenticate(&headers(Some(bearer)), None).await else { panic!() };
        assert_eq!(joiner.name, "system:bootstrap:abcdef");
        assert!(joiner.in_group(BOOTSTRAPPERS) && joiner.in_group(AUTHENTICATED) && !joiner.in_group(MASTERS));
        // Audience-agnostic, as the join token: no one's for another audience.
        let elsewhere = authn.authenticate_token(bearer, &["vault".to_string()]).await;
        assert!(matches!(elsewhere, TokenOutcome::Unknown), "{elsewhere:?}");
        tokens.replace(Default::default());
        assert_eq!(authn.authenticate(&headers(Some(bearer)), None).await, Authenticated::Invalid, "Secret deleted");
    }

    #[tokio::test]
    async fn a_certificate_names_its_user_and_groups() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "system:node:edge-1");
        params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let certificate = certificate_user(&der).unwrap();
        let user = certificate.user.clone();
        assert_eq!(user.name, "system:node:edge-1");
        assert_eq!(user.groups, ["system:nodes", AUTHENTICATED]);
        assert_eq!(user.node_name(), Some("edge-1"));
        // A certificate presented with a token still speaks for itself: the token is not consulted.
        let authn = Authenticator::new("admin-secret".into(), "join-secret".into());
        let presented = authn.authenticate(&headers(Some("admin-secret")), Some(&certificate)).await;
        assert_eq!(presented, Authenticated::User(user));
    }

    /// A certificate as the cluster's signer makes one, issued at `issued` (Unix seconds) for `common_name`.
    fn signed_at(common_name: &str, issued: i64) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        let backdate = time::Duration::try_from(CERTIFICATE_BACKDATE).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(issued).unwrap() - backdate;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[tokio::test]
    async fn a_revoked_nodes_older_certificates_are_refused_on_every_request() {
        let revoked = Arc::new(RevokedNodes::default());
        let authn = Authenticator::new("admin-secret".into(), "join-secret".into()).with_revoked_nodes(revoked.clone());
        let revocation = 1_780_000_000;
        let old = certificate_user(&signed_at("system:node:edge-1", revocation - 60)).unwrap();
        let new = certificate_user(&signed_at("system:node:edge-1", revocation + 60)).unwrap();
        let other = certificate_user(&signed_at("system:node:edge-2", revocation - 60)).unwrap();
        assert_eq!(old.issued, Timestamp::from_second(revocation - 60).unwrap(), "notBefore plus the backdating");
        let authenticate =
            async |certificate: &CertificateUser| authn.authenticate(&headers(None), Some(certificate)).await;
        assert_eq!(authenticate(&old).await, Authenticated::User(old.user.clone()), "before the revocation");
        // The mirror learns of the revocation: the same certificate, already verified by TLS, is refused.
        revoked.replace([("edge-1".to_string(), Timestamp::from_second(revocation).unwrap())].into());
        assert_eq!(authenticate(&old).await, Authenticated::Invalid);
        assert_eq!(authenticate(&new).await, Authenticated::User(new.user.clone()), "issued after it");
        assert_eq!(authenticate(&other).await, Authenticated::User(other.user.clone()), "another node");
    }

    /// Counts its wake-ups: whether a revocation woke a connection's wait.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn only_node_certificates_wait_on_revocations() {
        let revoked = Arc::new(RevokedNodes::default());
        let authn = Authenticator::new("admin-secret".into(), "join-secret".into()).with_revoked_nodes(revoked.clone());
        let user = certificate_user(&signed_at("jane", 1_780_000_000)).unwrap();
        let node = certificate_user(&signed_at("system:node:edge-1", 1_780_000_000)).unwrap();
        let (user_wakes, node_wakes) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
        let mut user_wait = Box::pin(authn.revoked(Some(&user)));
        let mut node_wait = Box::pin(authn.revoked(Some(&node)));
        for (wait, wakes) in [(&mut user_wait, &user_wakes), (&mut node_wait, &node_wakes)] {
            let waker = std::task::Waker::from(wakes.clone());
            assert!(wait.as_mut().poll(&mut std::task::Context::from_waker(&waker)).is_pending());
        }
        // Another node's revocation: the node's connection looks again, the user's is not even woken.
        revoked.replace([("edge-2".to_string(), Timestamp::from_second(1_790_000_000).unwrap())].into());
        assert_eq!(user_wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(node_wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
