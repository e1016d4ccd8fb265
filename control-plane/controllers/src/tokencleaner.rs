//! Deleting expired bootstrap tokens, as kube-controller-manager's tokencleaner: a Secret of type
//! `bootstrap.kubernetes.io/token` in kube-system is deleted once its `expiration` has passed, or at once
//! when that is no time. Authentication refuses an expired token whether or not its Secret is gone yet; this
//! keeps the Secrets (and `skiff token list`) to the tokens that still hold.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use skiff_api::join::{self, BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_TYPE, Expiration};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let secrets: Api<Secret> = Api::namespaced(client, BOOTSTRAP_TOKEN_NAMESPACE);
    let tokens = watcher::Config::default().fields(&format!("type={BOOTSTRAP_TOKEN_TYPE}"));
    Controller::new(secrets.clone(), tokens)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(secrets))
        .for_each(|_| async {})
        .await;
}

fn error_policy(secret: Arc<Secret>, error: &Error, _: Arc<Api<Secret>>) -> Action {
    tracing::warn!(secret = %secret.name_any(), %error, "token cleaner reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(secret: Arc<Secret>, secrets: Arc<Api<Secret>>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", secret = %secret.name_any(), namespace = BOOTSTRAP_TOKEN_NAMESPACE);
    async {
        let Some(remaining) = remaining(&secret, Timestamp::now()) else { return Ok(Action::await_change()) };
        if !remaining.is_zero() {
            return Ok(Action::requeue(remaining));
        }
        tracing::info!("deleting expired bootstrap token secret");
        // The uid as a precondition, as Kubernetes' cleaner: a Secret made again under the name is not this one.
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: secret.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        match secrets.delete(&secret.name_any(), &params).await {
            // Gone already, or replaced by another Secret of that name: nothing left to do for this one.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Action::await_change()),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(Action::await_change()),
        }
    }
    .instrument(span)
    .await
}

/// How long `secret`, a bootstrap token's, has left at `now` (zero once expired); None for a Secret that
/// is no bootstrap token's or one without expiration.
fn remaining(secret: &Secret, now: Timestamp) -> Option<Duration> {
    if secret.type_.as_deref() != Some(BOOTSTRAP_TOKEN_TYPE) {
        return None;
    }
    let values = join::secret_values(secret);
    match Expiration::parse(values.get(join::EXPIRATION_KEY).map(String::as_str)) {
        Expiration::Never => None,
        Expiration::Unparseable(_) => Some(Duration::ZERO),
        Expiration::At(at) => Some(Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(type_: &str, expiration: Option<&str>) -> Secret {
        let token = join::BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let mut secret = token.to_secret(None, None, &[]);
        secret.type_ = Some(type_.into());
        if let Some(expiration) = expiration {
            secret.string_data = Some([(join::EXPIRATION_KEY.to_string(), expiration.to_string())].into());
        }
        secret
    }

    #[test]
    fn expired_tokens_go_and_others_wait_for_their_time() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let cases = [
            (BOOTSTRAP_TOKEN_TYPE, Some("2030-01-01T00:10:00Z"), Some(Duration::from_secs(600))),
            (BOOTSTRAP_TOKEN_TYPE, Some("2030-01-01T00:00:00Z"), Some(Duration::ZERO)),
            (BOOTSTRAP_TOKEN_TYPE, Some("2029-12-31T00:00:00Z"), Some(Duration::ZERO)),
            (BOOTSTRAP_TOKEN_TYPE, Some("next week"), Some(Duration::ZERO)),
            (BOOTSTRAP_TOKEN_TYPE, None, None),
            ("Opaque", Some("2029-12-31T00:00:00Z"), None),
        ];
        for (type_, expiration, wanted) in cases {
            assert_eq!(remaining(&secret(type_, expiration), now), wanted, "{type_} {expiration:?}");
        }
    }
}
