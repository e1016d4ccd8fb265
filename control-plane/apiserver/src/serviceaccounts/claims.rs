//! What a service account token says, as Kubernetes writes it (`pkg/serviceaccount/claims.go` for bound
//! tokens, `legacy.go` for the tokens of `kubernetes.io/service-account-token` Secrets), and the checks that
//! need no lookup: time, with go-jose's leeway, and audience.

use serde::{Deserialize, Deserializer, Serialize};

/// The issuer of bound tokens (kube-apiserver's `--service-account-issuer` as clusters usually set it), and
/// the API server's one audience: a token not meant for it is refused.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of the tokens kept in Secrets.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// How far the clocks of a cluster's machines may differ (go-jose's `DefaultLeeway`, which Kubernetes
/// validates with): a token is taken this long before `nbf` and after `exp`.
pub const LEEWAY_SECONDS: i64 = 60;
/// The lifetime the ServiceAccount admission asks for in the projected token: a pod-bound token of
/// exactly this lifetime is issued for a year and stamped `warnafter`, so a workload that fails to reread
/// its refreshed token keeps working (kube-apiserver's `--service-account-extend-token-expiration`).
pub const WARN_ONLY_EXPIRATION_SECONDS: i64 = 60 * 60 + 7;
/// What such a token's lifetime is extended to.
pub const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 60 * 60;

/// The user a service account authenticates as.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// An object a token names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The private claim `kubernetes.io`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubernetes {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: ObjectRef,
    /// The pod the token dies with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The node that pod runs on (its uid is empty when the Node was not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// A bound token's claims (what TokenRequest issues).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundClaims {
    pub iss: String,
    pub sub: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(rename = "kubernetes.io", default)]
    pub kubernetes: Kubernetes,
}

/// Why a token's claims refuse it; the messages are go-jose's and Kubernetes'.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotValidYet,
    #[error("service account token is issued in the future")]
    IssuedInTheFuture,
    /// No audience of the token is one the verifier serves.
    #[error("token audiences {} is invalid for the target audiences {}", go_quoted(token), go_quoted(target))]
    Audience { token: Vec<String>, target: Vec<String> },
    /// A claim Kubernetes requires is missing or empty (legacy tokens).
    #[error("{0} claim is missing")]
    Missing(&'static str),
    /// The subject names another account than the private claims (legacy tokens).
    #[error("sub claim is invalid")]
    Subject,
}

impl BoundClaims {
    /// The claims of a token for service account `account` in `namespace`, issued `now` (seconds since the
    /// epoch) for `lifetime` seconds to `audiences`.
    pub fn new(namespace: &str, account: ObjectRef, audiences: Vec<String>, now: i64, lifetime: i64) -> Self {
        BoundClaims {
            iss: ISSUER.to_string(),
            sub: username(namespace, &account.name),
            aud: audiences,
            exp: Some(now + lifetime),
            iat: Some(now),
            nbf: Some(now),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: Kubernetes {
                namespace: namespace.to_string(),
                serviceaccount: account,
                ..Kubernetes::default()
            },
        }
    }

    /// The same, dying with `pod` (which runs on `node`, when scheduled).
    pub fn bound_to_pod(mut self, pod: ObjectRef, node: Option<ObjectRef>) -> Self {
        self.kubernetes.pod = Some(pod);
        self.kubernetes.node = node;
        self
    }

    /// The same, valid for `lifetime` seconds from its issue but stamped to be refreshed after `warn_after`.
    pub fn extended(mut self, lifetime: i64, warn_after: i64) -> Self {
        let issued = self.iat.unwrap_or_default();
        self.exp = Some(issued + lifetime);
        self.kubernetes.warnafter = Some(issued + warn_after);
        self
    }

    /// go-jose's time checks at `now`, with [`LEEWAY_SECONDS`]; absent times are not checked.
    pub fn check_time(&self, now: i64) -> Result<(), ClaimsError> {
        if self.nbf.is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
            return Err(ClaimsError::NotValidYet);
        }
        if self.exp.is_some_and(|exp| now - LEEWAY_SECONDS > exp) {
            return Err(ClaimsError::Expired);
        }
        if self.iat.is_some_and(|iat| now + LEEWAY_SECONDS < iat) {
            return Err(ClaimsError::IssuedInTheFuture);
        }
        Ok(())
    }
}

/// A legacy token's claims: no expiry and no audience, valid while its Secret holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace", default)]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name", default)]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name", default)]
    pub service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid", default)]
    pub service_account_uid: String,
}

impl LegacyClaims {
    /// The claims for Secret `secret` of service account `account` in `namespace`.
    pub fn new(namespace: &str, account: &ObjectRef, secret: &str) -> Self {
        LegacyClaims {
            iss: LEGACY_ISSUER.to_string(),
            sub: username(namespace, &account.name),
            namespace: namespace.to_string(),
            secret_name: secret.to_string(),
            service_account_name: account.name.clone(),
            service_account_uid: account.uid.clone(),
        }
    }

    /// Kubernetes' legacy validator's checks of the claims themselves, in its order.
    pub fn check(&self) -> Result<(), ClaimsError> {
        let required = [
            ("sub", &self.sub),
            ("namespace", &self.namespace),
            ("secretName", &self.secret_name),
            ("serviceAccountName", &self.service_account_name),
            ("serviceAccountUID", &self.service_account_uid),
        ];
        if let Some((claim, _)) = required.iter().find(|(_, value)| value.is_empty()) {
            return Err(ClaimsError::Missing(claim));
        }
        if self.sub != username(&self.namespace, &self.service_account_name) {
            return Err(ClaimsError::Subject);
        }
        Ok(())
    }
}

/// The audiences of `token` that `target` also names, in the token's order (Kubernetes'
/// `Audiences.Intersect`); an error when there are none.
pub fn shared_audiences(token: &[String], target: &[String]) -> Result<Vec<String>, ClaimsError> {
    let shared: Vec<String> = token.iter().filter(|audience| target.contains(audience)).cloned().collect();
    if shared.is_empty() {
        return Err(ClaimsError::Audience { token: token.to_vec(), target: target.to_vec() });
    }
    Ok(shared)
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Audience>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Audience::One(one)) => vec![one],
        Some(Audience::Many(many)) => many,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn account() -> ObjectRef {
        ObjectRef { name: "builder".into(), uid: "sa-uid".into() }
    }

    #[test]
    fn bound_claims_are_kubernetes_claims() {
        let pod = ObjectRef { name: "web-1".into(), uid: "pod-uid".into() };
        let node = ObjectRef { name: "edge".into(), uid: String::new() };
        let claims = BoundClaims::new("ci", account(), vec![ISSUER.into()], 1_000, 3_600).bound_to_pod(pod, Some(node));
        let mut value = serde_json::to_value(&claims).unwrap();
        assert_eq!(uuid::Uuid::parse_str(value["jti"].as_str().unwrap()).map(|u| u.get_version_num()), Ok(4));
        value.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            value,
            json!({
                "iss": ISSUER, "sub": "system:serviceaccount:ci:builder", "aud": [ISSUER],
                "exp": 4_600, "iat": 1_000, "nbf": 1_000,
                "kubernetes.io": {
                    "namespace": "ci",
                    "serviceaccount": {"name": "builder", "uid": "sa-uid"},
                    "pod": {"name": "web-1", "uid": "pod-uid"},
                    "node": {"name": "edge"},
                },
            })
        );
        let extended = claims.extended(EXTENDED_EXPIRATION_SECONDS, WARN_ONLY_EXPIRATION_SECONDS);
        assert_eq!((extended.exp, extended.kubernetes.warnafter), (Some(1_000 + 31_536_000), Some(1_000 + 3_607)));
        let parsed: BoundClaims = serde_json::from_value(serde_json::to_value(&extended).unwrap()).unwrap();
        assert_eq!(parsed, extended);
    }

    #[test]
    fn time_is_checked_with_a_minute_of_leeway() {
        let claims = BoundClaims::new("ci", account(), vec![ISSUER.into()], 1_000, 600);
        assert_eq!(claims.check_time(1_000), Ok(()));
        assert_eq!(claims.check_time(1_600 + 60), Ok(()), "a minute after expiry is still taken");
        assert_eq!(claims.check_time(1_600 + 61), Err(ClaimsError::Expired));
        assert_eq!(claims.check_time(1_000 - 60), Ok(()), "a clock a minute behind");
        assert_eq!(claims.check_time(1_000 - 61), Err(ClaimsError::NotValidYet));
        let issued_later = BoundClaims { nbf: None, ..claims.clone() };
        assert_eq!(issued_later.check_time(1_000 - 61), Err(ClaimsError::IssuedInTheFuture));
        let timeless = BoundClaims { exp: None, iat: None, nbf: None, ..claims };
        assert_eq!(timeless.check_time(i64::MAX / 2), Ok(()));
    }

    #[test]
    fn audiences_must_meet() {
        let target = vec![ISSUER.to_string()];
        let token = vec!["vault".to_string(), ISSUER.to_string()];
        assert_eq!(shared_audiences(&token, &target), Ok(target.clone()));
        let refused = shared_audiences(&["other".to_string()], &target).unwrap_err();
        assert_eq!(
            refused.to_string(),
            r#"token audiences ["other"] is invalid for the target audiences ["https://kubernetes.default.svc.cluster.local"]"#
        );
        let one: BoundClaims = serde_json::from_value(json!({"iss": ISSUER, "sub": "s", "aud": "vault"})).unwrap();
        assert_eq!(one.aud, ["vault"], "a single audience may be a string");
    }

    #[test]
    fn legacy_claims_name_their_secret_and_are_checked_as_kubernetes_does() {
        let claims = LegacyClaims::new("ci", &account(), "builder-token");
        assert_eq!(
            serde_json::to_value(&claims).unwrap(),
            json!({
                "iss": "kubernetes/serviceaccount",
                "sub": "system:serviceaccount:ci:builder",
                "kubernetes.io/serviceaccount/namespace": "ci",
                "kubernetes.io/serviceaccount/secret.name": "builder-token",
                "kubernetes.io/serviceaccount/service-account.name": "builder",
                "kubernetes.io/serviceaccount/service-account.uid": "sa-uid",
            })
        );
        assert_eq!(claims.check(), Ok(()));
        let unnamed = LegacyClaims { secret_name: String::new(), ..claims.clone() };
        assert_eq!(unnamed.check().unwrap_err().to_string(), "secretName claim is missing");
        let other = LegacyClaims { sub: username("kube-system", "builder"), ..claims };
        assert_eq!(other.check(), Err(ClaimsError::Subject));
    }
}
