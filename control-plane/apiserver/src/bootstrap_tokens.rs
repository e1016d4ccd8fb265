//! Bootstrap tokens as kube-apiserver's bootstrap token authenticator takes them
//! (`plugin/pkg/auth/authenticator/token/bootstrap`): a bearer token `<id>.<secret>` is the user
//! `system:bootstrap:<id>` in `system:bootstrappers` and the Secret's extra groups while the Secret
//! `kube-system/bootstrap-token-<id>` exists, is not being deleted, is of type
//! `bootstrap.kubernetes.io/token`, holds that id and secret, has not expired and is marked
//! `usage-bootstrap-authentication: "true"`. Deleting the Secret revokes the token from the next request on.
//!
//! The Secrets reach authentication through the authorizer's mirror of the store, decoded once per change
//! ([`StoredToken`]), so a request costs a map lookup and a constant-time comparison, never a store read.
//! The format and the rules that need no secret are `skiff_api::join`'s.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;
use skiff_api::authz::{AUTHENTICATED, UserInfo};
use skiff_api::join::{
    self, BOOTSTRAP_TOKEN_TYPE, BOOTSTRAP_USER_PREFIX, BootstrapToken, Expiration, InvalidBootstrapGroup,
    TOKEN_ID_LENGTH, TOKEN_SECRET_LENGTH,
};
use skiff_store::KeyValue;
use subtle::ConstantTimeEq;

/// Where the bootstrap-token Secrets are stored: `kube-system`'s Secrets named `bootstrap-token-...`.
pub const BOOTSTRAP_TOKENS: &str = "/registry/core/secrets/kube-system/bootstrap-token-";

/// A bootstrap-token Secret as authentication judges it. The token secret stays out of Debug.
pub struct StoredToken {
    /// `kube-system/<name>`, for logs.
    name: String,
    deleting: bool,
    /// Of type `bootstrap.kubernetes.io/token`, with data.
    typed: bool,
    token_id: String,
    token_secret: String,
    expiration: Expiration,
    usage_authentication: bool,
    groups: Result<Vec<String>, InvalidBootstrapGroup>,
}

/// Why a Secret matching a bearer token's id does not authenticate it, in Kubernetes' log wording (which
/// continues "Bootstrap secret kube-system/NAME matching bearer token ..."; the presented secret, which
/// Kubernetes prints, is left out).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("is deleted and awaiting removal")]
    Deleting,
    #[error("has invalid type, expected {BOOTSTRAP_TOKEN_TYPE}.")]
    Type,
    #[error("has invalid value for key token-secret.")]
    Secret,
    #[error("has invalid value for key token-id, expected {0}.")]
    Id(String),
    #[error("has expired at {0}")]
    Expired(String),
    #[error("has an unparseable expiration time ({0}). Treating as expired.")]
    UnparseableExpiration(String),
    #[error("not marked usage-bootstrap-authentication=true.")]
    Usage,
    #[error("has invalid value for key auth-extra-groups: {0}.")]
    Groups(InvalidBootstrapGroup),
}

impl StoredToken {
    /// The token id and decoded Secret of a stored bootstrap-token Secret; None for a name that carries no
    /// token id (no bearer token can name it) or a value that is no Secret (logged).
    pub fn parse(kv: &KeyValue) -> Option<(String, StoredToken)> {
        let name =
            kv.key.strip_prefix(BOOTSTRAP_TOKENS).map(|id| format!("{}{id}", join::BOOTSTRAP_TOKEN_SECRET_PREFIX))?;
        let id = join::token_id_of_secret(&name)?.to_string();
        let secret: Secret = match serde_json::from_slice(&kv.value) {
            Ok(secret) => secret,
            Err(error) => {
                tracing::warn!(key = kv.key, %error, "a bootstrap-token Secret that cannot be decoded is ignored");
                return None;
            }
        };
        Some((id, StoredToken::decode(&name, &secret)))
    }

    fn decode(name: &str, secret: &Secret) -> StoredToken {
        let values = join::secret_values(secret);
        let value = |key: &str| values.get(key).map(String::as_str);
        StoredToken {
            name: format!("{}/{name}", join::BOOTSTRAP_TOKEN_NAMESPACE),
            deleting: secret.metadata.deletion_timestamp.is_some(),
            typed: secret.type_.as_deref() == Some(BOOTSTRAP_TOKEN_TYPE)
                && (secret.data.is_some() || secret.string_data.is_some()),
            token_id: value(join::TOKEN_ID_KEY).unwrap_or_default().to_string(),
            token_secret: value(join::TOKEN_SECRET_KEY).unwrap_or_default().to_string(),
            expiration: Expiration::parse(value(join::EXPIRATION_KEY)),
            usage_authentication: value(join::USAGE_AUTHENTICATION_KEY) == Some("true"),
            groups: join::bootstrap_groups(value(join::EXTRA_GROUPS_KEY)),
        }
    }

    /// The user `presented` (whose id named this Secret) is at `now`, by Kubernetes' rules in its order.
    fn authenticate(&self, presented: &BootstrapToken, now: Timestamp) -> Result<UserInfo, Refused> {
        if self.deleting {
            return Err(Refused::Deleting);
        }
        if !self.typed {
            return Err(Refused::Type);
        }
        if !bool::from(self.token_secret.as_bytes().ct_eq(presented.secret.as_bytes())) {
            return Err(Refused::Secret);
        }
        if self.token_id != presented.id {
            return Err(Refused::Id(presented.id.clone()));
        }
        if self.expiration.expired(now) {
            return Err(match &self.expiration {
                Expiration::Unparseable(text) => Refused::UnparseableExpiration(text.clone()),
                Expiration::At(at) => Refused::Expired(skiff_api::format_time(*at)),
                Expiration::Never => unreachable!("a token that never expires has not expired"),
            });
        }
        if !self.usage_authentication {
            return Err(Refused::Usage);
        }
        let mut groups = self.groups.clone().map_err(Refused::Groups)?;
        groups.push(AUTHENTICATED.to_string());
        Ok(UserInfo { name: format!("{BOOTSTRAP_USER_PREFIX}{}", self.token_id), groups, ..UserInfo::default() })
    }
}

/// The bootstrap-token Secrets by token id, as the authorizer's mirror of the store last saw them.
#[derive(Default)]
pub struct BootstrapTokens {
    tokens: RwLock<BTreeMap<String, Arc<StoredToken>>>,
}

impl BootstrapTokens {
    /// The user bearer token `token` is at `now`; None when it is no bootstrap token or one that does not
    /// hold (logged at debug, as Kubernetes logs at its verbosity 3).
    pub fn authenticate(&self, token: &str, now: Timestamp) -> Option<UserInfo> {
        let presented = BootstrapToken::parse(token)?;
        let stored = self.tokens.read().unwrap_or_else(|e| e.into_inner()).get(&presented.id).cloned();
        let Some(stored) = stored else {
            tracing::debug!("No secret of name {} to match bootstrap bearer token", presented.secret_name());
            return None;
        };
        match stored.authenticate(&presented, now) {
            Ok(user) => Some(user),
            Err(refused) => {
                tracing::debug!("Bootstrap secret {} matching bearer token {refused}", stored.name);
                None
            }
        }
    }

    pub(crate) fn replace(&self, tokens: BTreeMap<String, Arc<StoredToken>>) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }
}

/// Why a new token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum NewTokenError {
    #[error(transparent)]
    Group(#[from] InvalidBootstrapGroup),
    /// The expiration would be past the last time there is.
    #[error("the token's time to live {0:?} is too long")]
    Ttl(std::time::Duration),
}

/// A new token and its Secret for `skiff token create`: authenticating for `ttl` from now (for ever
/// without), in `extra_groups` besides `system:bootstrappers`.
pub fn new_token(
    ttl: Option<std::time::Duration>,
    description: Option<&str>,
    extra_groups: &[String],
) -> Result<(BootstrapToken, Secret), NewTokenError> {
    if !extra_groups.is_empty() {
        join::extra_groups(&extra_groups.join(","))?;
    }
    let expiration =
        ttl.map(|ttl| Timestamp::now().checked_add(ttl).map_err(|_| NewTokenError::Ttl(ttl))).transpose()?;
    let token = generate();
    let secret = token.to_secret(expiration, description, extra_groups);
    Ok((token, secret))
}

/// A new random bootstrap token, as kubeadm makes one: its id and secret drawn from `[a-z0-9]` by a
/// cryptographically secure generator.
fn generate() -> BootstrapToken {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut part = |length: usize| -> String {
        (0..length).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
    };
    let id = part(TOKEN_ID_LENGTH);
    BootstrapToken { id, secret: part(TOKEN_SECRET_LENGTH) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NOW: &str = "2030-01-01T00:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    /// A valid token's Secret for `abcdef.0123456789abcdef`, with `change` applied to its JSON.
    fn stored(change: impl FnOnce(&mut Value)) -> (String, StoredToken) {
        let mut secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": "abcdef", "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true", "expiration": "2030-01-01T00:00:01Z",
            },
        });
        change(&mut secret);
        let kv = key_value("bootstrap-token-abcdef", &serde_json::to_vec(&secret).unwrap());
        StoredToken::parse(&kv).expect("a bootstrap-token Secret")
    }

    fn key_value(name: &str, value: &[u8]) -> KeyValue {
        let key = format!("/registry/core/secrets/kube-system/{name}");
        KeyValue { key, value: bytes::Bytes::copy_from_slice(value), create_revision: 1, mod_revision: 1 }
    }

    /// Removes `field` from the Secret's `stringData`.
    fn unset(secret: &mut Value, field: &str) {
        secret["stringData"].as_object_mut().unwrap().remove(field);
    }

    fn presented(token: &str) -> BootstrapToken {
        BootstrapToken::parse(token).unwrap()
    }

    const TOKEN: &str = "abcdef.0123456789abcdef";

    /// A change to a token's Secret, as JSON.
    type Change = fn(&mut Value);

    #[test]
    fn a_valid_token_is_its_bootstrap_user() {
        let (id, token) = stored(|_| {});
        assert_eq!(id, "abcdef");
        let user = token.authenticate(&presented(TOKEN), now()).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(user.groups, ["system:bootstrappers", AUTHENTICATED]);
        let (_, grouped) = stored(|s| {
            s["stringData"]["auth-extra-groups"] = json!("system:bootstrappers:edge,system:bootstrappers:a");
        });
        let user = grouped.authenticate(&presented(TOKEN), now()).unwrap();
        assert_eq!(
            user.groups,
            ["system:bootstrappers", "system:bootstrappers:a", "system:bootstrappers:edge", AUTHENTICATED]
        );
        let (_, forever) = stored(|s| unset(s, "expiration"));
        assert!(forever.authenticate(&presented(TOKEN), now() + jiff::SignedDuration::from_hours(1_000_000)).is_ok());
        // Kubernetes' own Secrets carry base64 `data`.
        let (_, from_data) = stored(|s| {
            let data: serde_json::Map<String, Value> = s["stringData"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    use base64::Engine;
                    (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap())))
                })
                .collect();
            s["data"] = Value::Object(data);
            s.as_object_mut().unwrap().remove("stringData");
        });
        assert!(from_data.authenticate(&presented(TOKEN), now()).is_ok());
    }

    #[test]
    fn every_rule_refuses_in_kubernetes_order() {
        let cases: Vec<(&str, Change, Refused)> = vec![
            (
                "being deleted",
                |s| s["metadata"]["deletionTimestamp"] = json!("2029-12-31T00:00:00Z"),
                Refused::Deleting,
            ),
            ("another type", |s| s["type"] = json!("Opaque"), Refused::Type),
            (
                "no type",
                |s| {
                    s.as_object_mut().unwrap().remove("type");
                },
                Refused::Type,
            ),
            (
                "no data",
                |s| {
                    s.as_object_mut().unwrap().remove("stringData");
                },
                Refused::Type,
            ),
            ("another secret", |s| s["stringData"]["token-secret"] = json!("0123456789abcdeg"), Refused::Secret),
            ("no secret", |s| unset(s, "token-secret"), Refused::Secret),
            ("another id", |s| s["stringData"]["token-id"] = json!("zzzzzz"), Refused::Id("abcdef".into())),
            (
                "expired",
                |s| s["stringData"]["expiration"] = json!(NOW),
                Refused::Expired("2030-01-01T00:00:00Z".into()),
            ),
            (
                "unparseable expiration",
                |s| s["stringData"]["expiration"] = json!("soon"),
                Refused::UnparseableExpiration("soon".into()),
            ),
            (
                "not for authentication",
                |s| s["stringData"]["usage-bootstrap-authentication"] = json!("yes"),
                Refused::Usage,
            ),
            ("no usage", |s| unset(s, "usage-bootstrap-authentication"), Refused::Usage),
            (
                "a group beyond the bootstrappers",
                |s| s["stringData"]["auth-extra-groups"] = json!("system:masters"),
                Refused::Groups(InvalidBootstrapGroup("system:masters".into())),
            ),
            // The first rule broken decides: a wrong secret is not told an expired token from a valid one.
            (
                "wrong secret and expired",
                |s| {
                    s["stringData"]["token-secret"] = json!("ffffffffffffffff");
                    s["stringData"]["expiration"] = json!("2000-01-01T00:00:00Z");
                },
                Refused::Secret,
            ),
        ];
        for (case, change, refused) in cases {
            let (_, token) = stored(change);
            assert_eq!(token.authenticate(&presented(TOKEN), now()).unwrap_err(), refused, "{case}");
        }
    }

    #[test]
    fn the_cache_answers_by_id_and_forgets_what_is_replaced() {
        let tokens = BootstrapTokens::default();
        assert!(tokens.authenticate(TOKEN, now()).is_none(), "no Secret");
        let (id, token) = stored(|_| {});
        tokens.replace([(id, Arc::new(token))].into());
        assert_eq!(tokens.authenticate(TOKEN, now()).unwrap().name, "system:bootstrap:abcdef");
        assert!(tokens.authenticate("abcdef.0123456789abcdee", now()).is_none(), "a wrong secret");
        assert!(tokens.authenticate("abcdeg.0123456789abcdef", now()).is_none(), "another id");
        assert!(tokens.authenticate("abcdef:0123456789abcdef", now()).is_none(), "not a bootstrap token");
        assert!(tokens.authenticate(TOKEN, "2030-01-01T00:00:01Z".parse().unwrap()).is_none(), "expired");
        tokens.replace(BTreeMap::new());
        assert!(tokens.authenticate(TOKEN, now()).is_none(), "the Secret deleted");
    }

    #[test]
    fn secrets_without_a_token_id_in_their_name_are_not_kept() {
        let kv = key_value;
        assert!(StoredToken::parse(&kv("bootstrap-token-abc", b"{}")).is_none());
        assert!(StoredToken::parse(&kv("bootstrap-token-ABCDEF", b"{}")).is_none());
        assert!(StoredToken::parse(&kv("bootstrap-token-abcdef", b"not json")).is_none());
        assert!(StoredToken::parse(&kv("bootstrap-token-abcdef", b"{}")).is_some());
    }

    #[test]
    fn generated_tokens_are_bootstrap_tokens_and_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(BootstrapToken::parse(&a.to_string()), Some(a.clone()));
        assert_ne!(a, b);
    }
}
