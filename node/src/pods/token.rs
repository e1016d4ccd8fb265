//! ServiceAccount tokens for projected volumes, as the kubelet's token manager gets them: a TokenRequest
//! for the pod's ServiceAccount, bound to the pod (so the token dies with it), and a new one once 80% of
//! the token's life has passed or 24 h after it was issued, whichever comes first.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ServiceAccount, ServiceAccountTokenProjection};
use kube::Api;
use kube::api::PostParams;

use super::PodRef;

/// A token's life when the projection names none: the API's default for `expirationSeconds`.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest life the API server grants (TokenRequest validation refuses less).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest a token is kept, however long it lives: the kubelet's `maxTTL`, so that a token issued
/// for a year is still replaced daily.
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// The most a renewal is brought forward at random: the kubelet's `maxJitter`, so that the pods of a
/// node started together do not all ask at the same second.
pub const MAX_JITTER: Duration = Duration::from_secs(10);
/// The kubelet looks at a pod's tokens when it syncs the pod, about once a minute: the agent waits at
/// least as long between requests for one token, so a failed request is retried that often and a clock
/// far from the server's cannot make it ask in a loop.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// Why no token was had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The API server refused the TokenRequest (no such ServiceAccount, not the node's to ask for, ...),
    /// or could not be reached.
    #[error("failed to fetch token: {}", super::volumes::api_message(.0))]
    Request(#[source] kube::Error),
    /// The API server's answer carries no token.
    #[error("failed to fetch token: the answer holds no token")]
    Empty,
}

/// What a projection asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSource {
    /// The token's audience; None for the API server's own.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    /// The file the token is written to, in the volume.
    pub path: String,
}

impl TokenSource {
    pub fn of(projection: &ServiceAccountTokenProjection) -> Self {
        TokenSource {
            audience: projection.audience.clone().filter(|audience| !audience.is_empty()),
            // The API server refuses shorter lives; a pod that got past validation with one still runs.
            expiration_seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_EXPIRATION_SECONDS)
                .max(MIN_EXPIRATION_SECONDS),
            path: projection.path.clone(),
        }
    }
}

/// A token the API server issued.
pub struct Issued {
    pub token: String,
    /// When it stops being valid.
    pub expires: jiff::Timestamp,
    /// How long it is valid in all, as issued (the server may grant another life than asked for).
    pub lifetime_seconds: i64,
}

/// Asks the API server for a token of `service_account`, bound to the pod `who`.
pub async fn request(
    client: &kube::Client,
    who: &PodRef,
    service_account: &str,
    source: &TokenSource,
) -> Result<Issued, TokenError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &who.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: source.audience.iter().cloned().collect(),
            expiration_seconds: Some(source.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(who.name.clone()),
                uid: Some(who.uid.clone()),
            }),
        },
        ..TokenRequest::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .map_err(TokenError::Request)?;
    let status = issued.status.filter(|status| !status.token.is_empty()).ok_or(TokenError::Empty)?;
    Ok(Issued {
        token: status.token,
        expires: status.expiration_timestamp.0,
        lifetime_seconds: issued.spec.expiration_seconds.unwrap_or(source.expiration_seconds),
    })
}

/// How long after `now` a token that `expires` after `lifetime_seconds` in all is to be replaced: when
/// 80% of its life has passed or [`MAX_AGE`] after it was issued, whichever comes first, `jitter` earlier
/// (the kubelet's `requiresRefresh`, in whole seconds as there); never sooner than [`RENEW_INTERVAL`].
pub fn renew_in(expires: jiff::Timestamp, lifetime_seconds: i64, now: jiff::Timestamp, jitter: Duration) -> Duration {
    let expires = expires.as_second();
    let lifetime = lifetime_seconds.max(0);
    let aged = expires.saturating_sub(lifetime).saturating_add(MAX_AGE.as_secs() as i64);
    let worn = expires.saturating_sub(lifetime / 5);
    let renew = aged.min(worn).saturating_sub(jitter.as_secs() as i64);
    Duration::from_secs(renew.saturating_sub(now.as_second()).max(0) as u64).max(RENEW_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn tokens_are_renewed_at_80_percent_of_their_life_or_after_a_day() {
        let hour = 3600;
        // An hour's token issued now: after 48 minutes.
        assert_eq!(renew_in(at(hour), hour, at(0), Duration::ZERO), Duration::from_secs(48 * 60));
        // The admission's 3607 s: 20% is 721 s (whole seconds) before it expires.
        assert_eq!(renew_in(at(3607), 3607, at(0), Duration::ZERO), Duration::from_secs(2886));
        // Jitter brings it forward.
        assert_eq!(renew_in(at(hour), hour, at(0), Duration::from_secs(7)), Duration::from_secs(48 * 60 - 7));
        // Half its life gone already (an agent restart adopting it, say): the rest to 80%.
        assert_eq!(renew_in(at(hour / 2), hour, at(0), Duration::ZERO), Duration::from_secs(18 * 60));
        // A year's token: after a day.
        let year = 365 * 24 * hour;
        assert_eq!(renew_in(at(year), year, at(0), Duration::ZERO), MAX_AGE);
        // Already due, or with the server's clock far ahead or behind: not before the sync interval.
        assert_eq!(renew_in(at(60), hour, at(0), Duration::ZERO), RENEW_INTERVAL);
        assert_eq!(renew_in(at(-hour), hour, at(0), Duration::ZERO), RENEW_INTERVAL);
        assert_eq!(renew_in(at(600), 600, at(0), Duration::from_secs(10)), Duration::from_secs(470));
    }

    #[test]
    fn sources_default_and_bound_their_life() {
        let source = |json: serde_json::Value| TokenSource::of(&serde_json::from_value(json).unwrap());
        let plain = source(serde_json::json!({"path": "token"}));
        assert_eq!(plain, TokenSource { audience: None, expiration_seconds: 3600, path: "token".into() });
        let vault = source(serde_json::json!({"path": "vault", "audience": "vault", "expirationSeconds": 60}));
        assert_eq!(
            vault,
            TokenSource { audience: Some("vault".into()), expiration_seconds: 600, path: "vault".into() }
        );
        assert_eq!(source(serde_json::json!({"path": "t", "audience": ""})).audience, None, "empty: the server's");
    }
}
