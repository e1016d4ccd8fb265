//! Who a request comes from, as kube-apiserver's union of authenticators: an x509 client certificate
//! signed by the cluster CA (user = CN, groups = O), else a bearer token the server knows. The admin token
//! is `system:admin` in `system:masters`; the join token's secret is a bootstrap identity in
//! `system:bootstrappers`, which RBAC lets ask for a node certificate and nothing else; a service account
//! token (a JWT the cluster's key signed, see [`crate::serviceaccounts`]) is its ServiceAccount while that,
//! and the pod it may be bound to, still exist. Like k3s (which runs kube-apiserver with
//! `--anonymous-auth=false`), a request with no credentials is not authenticated at all; the few public
//! paths are answered before authorization.

use std::sync::Arc;

use http::{HeaderMap, header};
use skiff_api::authz::{AUTHENTICATED, BOOTSTRAPPERS, MASTERS, UserInfo};
use subtle::ConstantTimeEq;

use crate::serviceaccounts::{self, ServiceAccountTokens, TokenError};

/// The user name a join-token holder gets (`system:bootstrap:<token id>` in Kubernetes; Skiff's join
/// token has one fixed id).
pub const BOOTSTRAP_USER: &str = "system:bootstrap:skiff";
/// The admin kubeconfig's user.
pub const ADMIN_USER: &str = "system:admin";

/// The bearer tokens the server issued.
pub struct Authenticator {
    admin_token: String,
    join_secret: String,
    service_accounts: Option<Arc<ServiceAccountTokens>>,
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
        Self { admin_token, join_secret, service_accounts: None }
    }

    /// The same, also taking the service account tokens `tokens` signs.
    pub fn with_service_accounts(self, tokens: Arc<ServiceAccountTokens>) -> Self {
        Self { service_accounts: Some(tokens), ..self }
    }

    /// The request's identity: its client certificate's (`peer`, verified during the TLS handshake) or its
    /// bearer token's, for the API server's audiences.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: Option<&UserInfo>) -> Authenticated {
        if let Some(user) = peer {
            return Authenticated::User(user.clone());
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

    /// What `token` proves for `audiences` (the API server's when empty), as kube-apiserver's token
    /// authenticators answer a TokenReview. The admin and join tokens know no audiences: like Kubernetes'
    /// audience-agnostic authenticators, they are taken only where the API server's audiences are asked for.
    pub async fn authenticate_token(&self, token: &str, audiences: &[String]) -> TokenOutcome {
        let api = serviceaccounts::api_audiences();
        let audiences = if audiences.is_empty() { api.as_slice() } else { audiences };
        let static_user = if same_token(&self.admin_token, token) {
            Some(user(ADMIN_USER, &[MASTERS]))
        } else if same_token(&self.join_secret, token) {
            Some(user(BOOTSTRAP_USER, &[BOOTSTRAPPERS]))
        } else {
            None
        };
        if let Some(user) = static_user {
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
pub fn certificate_user(der: &[u8]) -> Option<UserInfo> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok()).map(str::to_string).collect();
    groups.push(AUTHENTICATED.to_string());
    Some(UserInfo { name, groups, ..UserInfo::default() })
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
    async fn a_certificate_names_its_user_and_groups() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "system:node:edge-1");
        params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let user = certificate_user(&der).unwrap();
        assert_eq!(user.name, "system:node:edge-1");
        assert_eq!(user.groups, ["system:nodes", AUTHENTICATED]);
        assert_eq!(user.node_name(), Some("edge-1"));
        // A certificate presented with a token still speaks for itself: the token is not consulted.
        let authn = Authenticator::new("admin-secret".into(), "join-secret".into());
        assert_eq!(authn.authenticate(&headers(Some("admin-secret")), Some(&user)).await, Authenticated::User(user));
    }
}
