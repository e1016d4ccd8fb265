//! The token a node agent joins a cluster with, in k3s's formats: `K10<sha256 of the CA certificate,
//! hex>::node:<secret>` with the cluster's shared secret, or `K10<ca sha256>::<id>.<secret>` with a
//! Kubernetes bootstrap token of its own. The CA hash lets an agent that has only the token fetch the CA from
//! the server's `/cacerts` and check it before trusting the server; the secret is the bearer token the agent
//! then presents.
//!
//! Bootstrap tokens are Kubernetes' (`k8s.io/cluster-bootstrap`): a Secret `bootstrap-token-<id>` in
//! `kube-system` of type `bootstrap.kubernetes.io/token` makes the bearer token `<id>.<secret>` the user
//! `system:bootstrap:<id>` in `system:bootstrappers` while it exists and has not expired, so each node may
//! join with a token of its own that deleting the Secret revokes. Here are their format, the Secret's layout
//! and the rules on its fields that need no secret comparison.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::authz::BOOTSTRAPPERS;

const PREFIX: &str = "K10";
const SEPARATOR: &str = "::";
/// What follows the separator in a token carrying the cluster's shared node secret.
const SHARED: &str = "node:";

/// The namespace bootstrap-token Secrets are read from.
pub const BOOTSTRAP_TOKEN_NAMESPACE: &str = "kube-system";
/// A bootstrap-token Secret's name is this and the token id.
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// The only Secret type taken for a bootstrap token.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// A bootstrap token's user is this and the token id.
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
/// The Secret's data keys.
pub const TOKEN_ID_KEY: &str = "token-id";
pub const TOKEN_SECRET_KEY: &str = "token-secret";
/// When the token stops authenticating (RFC 3339); a value that is no time has expired.
pub const EXPIRATION_KEY: &str = "expiration";
pub const DESCRIPTION_KEY: &str = "description";
/// Comma-separated groups beyond `system:bootstrappers`, each `system:bootstrappers:...`.
pub const EXTRA_GROUPS_KEY: &str = "auth-extra-groups";
/// `"true"` lets the token authenticate; any other value, or none, does not.
pub const USAGE_AUTHENTICATION_KEY: &str = "usage-bootstrap-authentication";

/// The lengths of a token id and secret, each of `[a-z0-9]`.
pub const TOKEN_ID_LENGTH: usize = 6;
pub const TOKEN_SECRET_LENGTH: usize = 16;
/// The longest a group's part after `system:bootstrappers:` may be (Kubernetes' `BootstrapGroupPattern`).
const GROUP_SUFFIX_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate PEM as the server serves it at `/cacerts`.
    pub ca_hash: String,
    /// The bearer token: the shared node secret, or a bootstrap token's `<id>.<secret>`.
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
#[error("not a skiff join token: expected K10<ca sha256>::node:<secret> or K10<ca sha256>::<token id>.<token secret>")]
pub struct InvalidJoinToken;

impl JoinToken {
    pub fn parse(text: &str) -> Result<Self, InvalidJoinToken> {
        let (hash, rest) =
            text.trim().strip_prefix(PREFIX).and_then(|rest| rest.split_once(SEPARATOR)).ok_or(InvalidJoinToken)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let secret = match rest.strip_prefix(SHARED) {
            Some(secret) => secret,
            None if BootstrapToken::parse(rest).is_some() => rest,
            None => return Err(InvalidJoinToken),
        };
        if !hex || secret.is_empty() {
            return Err(InvalidJoinToken);
        }
        Ok(JoinToken { ca_hash: hash.to_ascii_lowercase(), secret: secret.to_string() })
    }
}

/// A bootstrap token's secret is written in its short form, as k3s and kubeadm print it; any other in the
/// shared secret's. Either parses back to the same bearer token.
impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if BootstrapToken::parse(&self.secret).is_some() { "" } else { SHARED };
        write!(f, "{PREFIX}{}{SEPARATOR}{kind}{}", self.ca_hash, self.secret)
    }
}

/// A bootstrap token, `<id>.<secret>`: the id names its Secret and is no secret itself.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl BootstrapToken {
    /// The token in `text` when it is exactly `[a-z0-9]{6}.[a-z0-9]{16}`, else None: a bearer token of
    /// another shape is not a bootstrap token at all.
    pub fn parse(text: &str) -> Option<Self> {
        let (id, secret) = text.split_once('.')?;
        (is_token_part(id, TOKEN_ID_LENGTH) && is_token_part(secret, TOKEN_SECRET_LENGTH))
            .then(|| BootstrapToken { id: id.to_string(), secret: secret.to_string() })
    }

    /// Whether `id` is a token id, `[a-z0-9]{6}`.
    pub fn is_id(id: &str) -> bool {
        is_token_part(id, TOKEN_ID_LENGTH)
    }

    /// The name of the token's Secret in `kube-system`.
    pub fn secret_name(&self) -> String {
        format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{}", self.id)
    }

    /// The token's Secret, as `kubeadm token create` makes it: usable for authentication, until `expiration`
    /// if given, in `extra_groups` besides `system:bootstrappers` (each checked by [`extra_groups`]).
    pub fn to_secret(
        &self,
        expiration: Option<Timestamp>,
        description: Option<&str>,
        extra_groups: &[String],
    ) -> Secret {
        let mut data = BTreeMap::from([
            (TOKEN_ID_KEY, self.id.clone()),
            (TOKEN_SECRET_KEY, self.secret.clone()),
            (USAGE_AUTHENTICATION_KEY, "true".to_string()),
        ]);
        if let Some(expiration) = expiration {
            data.insert(EXPIRATION_KEY, crate::format_time(expiration));
        }
        if let Some(description) = description {
            data.insert(DESCRIPTION_KEY, description.to_string());
        }
        if !extra_groups.is_empty() {
            data.insert(EXTRA_GROUPS_KEY, extra_groups.join(","));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name()),
                namespace: Some(BOOTSTRAP_TOKEN_NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            type_: Some(BOOTSTRAP_TOKEN_TYPE.to_string()),
            data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()),
            ..Secret::default()
        }
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

/// The secret stays out of logs.
impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken").field("id", &self.id).finish_non_exhaustive()
    }
}

fn is_token_part(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The token id a bootstrap-token Secret's name carries (`bootstrap-token-<id>`), if it is one.
pub fn token_id_of_secret(name: &str) -> Option<&str> {
    name.strip_prefix(BOOTSTRAP_TOKEN_SECRET_PREFIX).filter(|id| BootstrapToken::is_id(id))
}

/// A Secret's values as text: `data`, then `stringData` over it (what the Secret's writer meant, as
/// Kubernetes merges the two on write).
pub fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    let data = secret.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()));
    data.chain(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone()))).collect()
}

/// When a bootstrap token expires, from its Secret's `expiration` (cluster-bootstrap's `GetExpiration`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiration {
    Never,
    At(Timestamp),
    /// A value that is no RFC 3339 time: the token counts as expired.
    Unparseable(String),
}

impl Expiration {
    pub fn parse(value: Option<&str>) -> Self {
        match value.filter(|v| !v.is_empty()) {
            None => Expiration::Never,
            Some(text) => text.parse().map_or_else(|_| Expiration::Unparseable(text.to_string()), Expiration::At),
        }
    }

    /// Whether the token has expired at `now`: from its expiration time on, as Kubernetes decides.
    pub fn expired(&self, now: Timestamp) -> bool {
        match self {
            Expiration::Never => false,
            Expiration::At(at) => *at <= now,
            Expiration::Unparseable(_) => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap group {0:?} is invalid (must match \\Asystem:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9]\\z)")]
pub struct InvalidBootstrapGroup(pub String);

/// A token's groups from its Secret's `auth-extra-groups` (cluster-bootstrap's `GetGroups`):
/// `system:bootstrappers` and each extra group, sorted and without duplicates. Every extra group must be
/// `system:bootstrappers:` followed by `[a-z0-9:-]`, ending in `[a-z0-9]`, so a token can never claim a
/// group that RBAC grants more to (`system:masters`, `system:nodes`).
pub fn bootstrap_groups(extra: Option<&str>) -> Result<Vec<String>, InvalidBootstrapGroup> {
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    if let Some(extra) = extra.filter(|e| !e.is_empty()) {
        groups.extend(extra_groups(extra)?);
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// The groups of a comma-separated list, each checked as a bootstrap group.
pub fn extra_groups(list: &str) -> Result<Vec<String>, InvalidBootstrapGroup> {
    list.split(',')
        .map(|group| {
            valid_group(group).then(|| group.to_string()).ok_or_else(|| InvalidBootstrapGroup(group.to_string()))
        })
        .collect()
}

fn valid_group(group: &str) -> bool {
    let Some(suffix) = group.strip_prefix(BOOTSTRAPPERS).and_then(|rest| rest.strip_prefix(':')) else { return false };
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=GROUP_SUFFIX_MAX).contains(&suffix.len())
        && suffix.bytes().all(|b| allowed(b) || b == b':' || b == b'-')
        && suffix.bytes().last().is_some_and(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let token = JoinToken { ca_hash: "ab".repeat(32), secret: "s3cret".into() };
        assert_eq!(JoinToken::parse(&format!("{token}\n")).unwrap(), token);
        let hash = "ab".repeat(32);
        for bad in [
            "".to_string(),
            "s3cret".into(),
            "K10abc::node:x".into(),
            format!("K10{hash}::node:"),
            format!("K10{hash}::"),
            format!("K10{hash}::abcdef"),
            // A bootstrap token's parts are lowercase letters and digits of exact lengths.
            format!("K10{hash}::ABCDEF.0123456789abcdef"),
            format!("K10{hash}::abcde.0123456789abcdef"),
            format!("K10{hash}::abcdef.0123456789abcde"),
            format!("K10{hash}::abcdef.0123456789abcdef0"),
        ] {
            assert!(JoinToken::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_join_token_may_carry_a_bootstrap_token() {
        let hash = "AB".repeat(32);
        let parsed = JoinToken::parse(&format!("K10{hash}::abcdef.0123456789abcdef\n")).unwrap();
        assert_eq!(parsed, JoinToken { ca_hash: "ab".repeat(32), secret: "abcdef.0123456789abcdef".into() });
        assert_eq!(parsed.to_string(), format!("K10{}::abcdef.0123456789abcdef", "ab".repeat(32)), "k3s's short form");
        // The long form with a bootstrap token is read too, as the same bearer token.
        let long = JoinToken::parse(&format!("K10{hash}::node:abcdef.0123456789abcdef")).unwrap();
        assert_eq!(long, parsed);
    }

    #[test]
    fn bootstrap_tokens_are_exactly_id_dot_secret() {
        let token = BootstrapToken::parse("abc123.0123456789abcdef").unwrap();
        assert_eq!((token.id.as_str(), token.secret.as_str()), ("abc123", "0123456789abcdef"));
        assert_eq!(token.to_string(), "abc123.0123456789abcdef");
        assert_eq!(token.secret_name(), "bootstrap-token-abc123");
        assert!(!format!("{token:?}").contains("0123456789abcdef"), "the secret stays out of Debug");
        for bad in [
            "",
            "abc123",
            "abc123.",
            ".0123456789abcdef",
            "abc12.0123456789abcdef",
            "abc123:0123456789abcdef",
            "abc123.0123456789abcdeF",
            "abc123.0123456789abcde!",
            " abc123.0123456789abcdef",
            "abc123.0123456789abcdef.x",
        ] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(token_id_of_secret("bootstrap-token-abc123"), Some("abc123"));
        assert_eq!(token_id_of_secret("bootstrap-token-abc12"), None);
        assert_eq!(token_id_of_secret("default-token-abc123"), None);
    }

    #[test]
    fn a_tokens_secret_has_kubeadms_layout() {
        let token = BootstrapToken::parse("abc123.0123456789abcdef").unwrap();
        let expiration: Timestamp = "2030-01-02T03:04:05Z".parse().unwrap();
        let groups = vec!["system:bootstrappers:edge".to_string(), "system:bootstrappers:lab".to_string()];
        let secret = token.to_secret(Some(expiration), Some("edge box 7"), &groups);
        assert_eq!(secret.metadata.name.as_deref(), Some("bootstrap-token-abc123"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(secret.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        let values = secret_values(&secret);
        let expected = [
            ("auth-extra-groups", "system:bootstrappers:edge,system:bootstrappers:lab"),
            ("description", "edge box 7"),
            ("expiration", "2030-01-02T03:04:05Z"),
            ("token-id", "abc123"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
        ];
        assert_eq!(values, expected.map(|(k, v)| (k.to_string(), v.to_string())).into());
        let bare = secret_values(&token.to_secret(None, None, &[]));
        assert_eq!(bare.keys().collect::<Vec<_>>(), ["token-id", "token-secret", "usage-bootstrap-authentication"]);
    }

    #[test]
    fn string_data_is_read_over_data() {
        let secret = Secret {
            data: Some([("token-id".to_string(), ByteString(b"old123".to_vec()))].into()),
            string_data: Some([("token-id".to_string(), "new123".to_string())].into()),
            ..Secret::default()
        };
        assert_eq!(secret_values(&secret)["token-id"], "new123");
    }

    #[test]
    fn expirations_are_rfc3339_and_garbage_has_expired() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(!Expiration::parse(None).expired(now));
        assert!(!Expiration::parse(Some("")).expired(now), "an empty value is none");
        assert!(!Expiration::parse(Some("2030-01-01T00:00:01Z")).expired(now));
        assert!(Expiration::parse(Some("2030-01-01T00:00:00Z")).expired(now), "expired at the very time");
        assert!(Expiration::parse(Some("2029-12-31T23:59:59Z")).expired(now));
        assert!(
            !Expiration::parse(Some("2030-01-01T02:00:00+02:00")).expired(now + jiff::SignedDuration::from_secs(-1))
        );
        assert!(Expiration::parse(Some("2030-01-01T02:00:00+02:00")).expired(now), "an offset counts");
        assert_eq!(Expiration::parse(Some("tomorrow")), Expiration::Unparseable("tomorrow".into()));
        assert!(Expiration::parse(Some("tomorrow")).expired(now));
    }

    #[test]
    fn extra_groups_must_be_bootstrap_groups() {
        assert_eq!(bootstrap_groups(None).unwrap(), [BOOTSTRAPPERS]);
        assert_eq!(bootstrap_groups(Some("")).unwrap(), [BOOTSTRAPPERS]);
        assert_eq!(
            bootstrap_groups(Some("system:bootstrappers:b,system:bootstrappers:a:x-1,system:bootstrappers:b")).unwrap(),
            [BOOTSTRAPPERS, "system:bootstrappers:a:x-1", "system:bootstrappers:b"],
            "sorted, without duplicates"
        );
        let longest = format!("system:bootstrappers:{}", "a".repeat(GROUP_SUFFIX_MAX));
        assert!(bootstrap_groups(Some(&longest)).is_ok());
        for bad in [
            "system:masters",
            "system:nodes",
            "system:bootstrappers",
            "system:bootstrappers:",
            "system:bootstrappers:a,,system:bootstrappers:b",
            "system:bootstrappers:edge-",
            "system:bootstrappers:Edge",
            "system:bootstrappers:a b",
            "system:bootstrappers:ok,",
            "system:bootstrappersx",
            &format!("{longest}a"),
        ] {
            let error = bootstrap_groups(Some(bad)).unwrap_err();
            assert!(error.to_string().starts_with("bootstrap group \""), "{error}");
        }
    }
}
