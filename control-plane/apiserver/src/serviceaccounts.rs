//! ServiceAccounts' credentials, as kube-apiserver and kube-controller-manager make and check them:
//!
//! - TokenRequest (`POST .../serviceaccounts/NAME/token`, `kubectl create token`): a JWT signed ES256 with
//!   the cluster's service account key (`pki`'s `sa.key`, shared by every server), for some audiences and a
//!   lifetime, optionally bound to a pod it dies with.
//! - Authentication of those tokens (for `authn` and TokenReview): the signature, the times with a minute
//!   of leeway, the audience, then the ServiceAccount, and the bound pod, must still exist with the uids the
//!   token names. Legacy tokens (issuer `kubernetes/serviceaccount`) are taken while their Secret holds them.
//! - The token controller's part that still exists: a `kubernetes.io/service-account-token` Secret gets its
//!   token, `ca.crt` and `namespace` filled in ([`run`]).
//! - The ServiceAccount admission plugin on pod create (`admit_pod`): the `default` account, and the
//!   projected `kube-api-access-*` volume mounted in every container.
//!
//! `claims` holds what a token says and the checks needing no lookup, `jwt` the signing.

mod claims;
mod jwt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::authz::{AUTHENTICATED, UserInfo};
use skiff_api::validation::Cause;
use skiff_store::EventKind;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use claims::{BoundClaims, ClaimsError, LEEWAY_SECONDS, LegacyClaims, ObjectRef};
pub use claims::{ISSUER, LEGACY_ISSUER};
pub use jwt::KeyError;
use jwt::{JwtError, SigningKey};

use crate::error::ApiError;
use crate::lifecycle::def;
use crate::objects::{self, DeleteOptions, Objects, Part, WriteOptions};

/// The group every service account is in; `system:serviceaccounts:NAMESPACE` holds those of a namespace.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// The Secret type whose data the token controller fills in.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming a token Secret's ServiceAccount, and the one recording its uid.
const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The ConfigMap in every namespace holding the cluster CA (kube-controller-manager's
/// root-ca-cert-publisher; `lifecycle` keeps it).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Where the ServiceAccount admission mounts the projected token, CA and namespace in every container, and
/// where clients (client-go's in-cluster config, kube-rs) look for them.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime of a TokenRequest that asks for none (Kubernetes' default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// TokenRequest validation's bounds on a lifetime.
const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
/// How often every token Secret is looked at without an event: a Secret whose ServiceAccount went away,
/// or whose update lost a race, heals then.
const RESYNC: Duration = Duration::from_secs(30);
const MANAGER: &str = "skiff-apiserver";

/// The audiences the API server takes tokens for (kube-apiserver's `--api-audiences`, which defaults to the
/// issuer).
pub fn api_audiences() -> Vec<String> {
    vec![ISSUER.to_string()]
}

/// Why a token that this server's service account authenticator recognises (its issuer is ours) is
/// refused. The messages are Kubernetes', for TokenReview's `status.error`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not signed by the cluster's key, or not a well-formed JWT.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The payload is not a token's claims.
    #[error("service account token claims could not be validated due to unexpected validation error")]
    Malformed,
    /// Expired, not valid yet, for other audiences, or a legacy token missing a claim.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// The ServiceAccount could not be read: deleted (a NotFound) or the store failed.
    #[error(transparent)]
    ServiceAccount(ApiError),
    /// The ServiceAccount was deleted and made again since the token was issued.
    #[error("service account UID ({current}) does not match claim ({claimed})")]
    ServiceAccountUid { current: String, claimed: String },
    /// The ServiceAccount is being deleted.
    #[error("service account {namespace}/{name} has been deleted")]
    ServiceAccountDeleted { namespace: String, name: String },
    /// The pod the token is bound to is gone or going.
    #[error("service account token has been invalidated")]
    PodGone,
    /// The pod the token is bound to was deleted and made again.
    #[error("pod UID ({current}) does not match service account pod ref claim ({claimed})")]
    PodUid { current: String, claimed: String },
    /// A legacy token whose Secret is gone or going.
    #[error("Token has been invalidated")]
    SecretGone,
    /// A legacy token its Secret no longer holds.
    #[error("Token does not match server's copy")]
    SecretMismatch,
    /// A legacy token's ServiceAccount is being deleted.
    #[error("ServiceAccount {namespace}/{name} has been deleted")]
    LegacyServiceAccountDeleted { namespace: String, name: String },
    /// A legacy token's ServiceAccount was deleted and made again.
    #[error("ServiceAccount UID ({current}) does not match claim ({claimed})")]
    LegacyServiceAccountUid { current: String, claimed: String },
}

/// Who a token speaks for, and which of the audiences asked for it is meant for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUser {
    pub user: UserInfo,
    pub audiences: Vec<String>,
}

/// Issues and checks service account tokens with the cluster's key.
pub struct ServiceAccountTokens {
    key: SigningKey,
    objects: Objects,
    /// The cluster CA (PEM), for token Secrets' `ca.crt`.
    ca_cert_pem: String,
}

impl ServiceAccountTokens {
    /// Tokens signed with `key_pem` (PKCS#8 ECDSA P-256), checked against the objects in `objects`.
    pub fn new(key_pem: &str, objects: Objects, ca_cert_pem: String) -> Result<Self, KeyError> {
        Ok(Self { key: SigningKey::from_pem(key_pem)?, objects, ca_cert_pem })
    }

    /// The identity `token` proves for `audiences` (the API server's, [`api_audiences`], for a request to it),
    /// or None when it is no service account token of this cluster's (another authenticator's to judge).
    pub async fn authenticate(&self, token: &str, audiences: &[String]) -> Option<Result<TokenUser, TokenError>> {
        let issuer = jwt::unverified_issuer(token)?;
        if issuer != ISSUER && issuer != LEGACY_ISSUER {
            return None;
        }
        let checked = async {
            // The issuer picked the validator before the signature was checked; the claims below are the
            // signed ones, and a signed token names the issuer it was made for.
            let claims = self.key.verify(token)?;
            if claims.get("iss").and_then(Value::as_str) == Some(LEGACY_ISSUER) {
                self.check_legacy(token, claims, audiences).await
            } else {
                self.check_bound(claims, audiences).await
            }
        };
        Some(checked.await)
    }

    /// Kubernetes' bound-token validator, reading the ServiceAccount and pod from the store rather than a
    /// cache.
    async fn check_bound(&self, claims: Value, audiences: &[String]) -> Result<TokenUser, TokenError> {
        let claims: BoundClaims = serde_json::from_value(claims).map_err(|_| TokenError::Malformed)?;
        // A token naming no audience is the API server's, as legacy tokens are.
        let token_audiences = if claims.aud.is_empty() { api_audiences() } else { claims.aud.clone() };
        let shared = claims::shared_audiences(&token_audiences, audiences)?;
        let now = jiff::Timestamp::now().as_second();
        claims.check_time(now)?;
        let private = &claims.kubernetes;
        let (namespace, account_ref) = (&private.namespace, &private.serviceaccount);
        let account = self
            .objects
            .get(def("serviceaccounts"), Some(namespace), &account_ref.name)
            .await
            .map_err(TokenError::ServiceAccount)?;
        if uid_of(&account) != account_ref.uid {
            return Err(TokenError::ServiceAccountUid {
                current: uid_of(&account).into(),
                claimed: account_ref.uid.clone(),
            });
        }
        // Something deleted less than the leeway ago is still taken, as by Kubernetes.
        let cutoff = now - LEEWAY_SECONDS;
        if deleted_before(&account, cutoff) {
            let (namespace, name) = (namespace.clone(), account_ref.name.clone());
            return Err(TokenError::ServiceAccountDeleted { namespace, name });
        }
        let mut extra = BTreeMap::new();
        if let Some(pod_ref) = &private.pod {
            let pod = self.objects.get(def("pods"), Some(namespace), &pod_ref.name).await.map_err(|e| {
                tracing::debug!(error = %e, pod = pod_ref.name, "the pod a token is bound to cannot be read");
                TokenError::PodGone
            })?;
            if uid_of(&pod) != pod_ref.uid {
                return Err(TokenError::PodUid { current: uid_of(&pod).into(), claimed: pod_ref.uid.clone() });
            }
            if deleted_before(&pod, cutoff) {
                return Err(TokenError::PodGone);
            }
            extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![pod_ref.name.clone()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![pod_ref.uid.clone()]);
            if let Some(node) = private.node.as_ref().filter(|node| !node.name.is_empty()) {
                extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![node.name.clone()]);
                if !node.uid.is_empty() {
                    extra.insert("authentication.kubernetes.io/node-uid".to_string(), vec![node.uid.clone()]);
                }
            }
        }
        if !claims.jti.is_empty() {
            // Kubernetes' credential ID, which audit logs record to tell tokens apart.
            extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={}", claims.jti)]);
        }
        let user = service_account_user(namespace, &account_ref.name, &account_ref.uid, extra);
        Ok(TokenUser { user, audiences: shared })
    }

    /// Kubernetes' legacy validator: the Secret must still hold this very token, and the ServiceAccount
    /// must be the one it was made for.
    async fn check_legacy(&self, token: &str, claims: Value, audiences: &[String]) -> Result<TokenUser, TokenError> {
        // A legacy token names no audience: it is meant for the API server alone.
        let shared = claims::shared_audiences(&api_audiences(), audiences)?;
        let claims: LegacyClaims = serde_json::from_value(claims).map_err(|_| TokenError::Malformed)?;
        claims.check()?;
        let namespace = &claims.namespace;
        let secret = self
            .objects
            .get(def("secrets"), Some(namespace), &claims.secret_name)
            .await
            .map_err(|_| TokenError::SecretGone)?;
        if secret.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(TokenError::SecretGone);
        }
        let stored = secret.pointer("/data/token").and_then(Value::as_str).and_then(|data| BASE64.decode(data).ok());
        if stored.as_deref() != Some(token.as_bytes()) {
            return Err(TokenError::SecretMismatch);
        }
        let name = &claims.service_account_name;
        let account = self
            .objects
            .get(def("serviceaccounts"), Some(namespace), name)
            .await
            .map_err(TokenError::ServiceAccount)?;
        if account.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(TokenError::LegacyServiceAccountDeleted { namespace: namespace.clone(), name: name.clone() });
        }
        if uid_of(&account) != claims.service_account_uid {
            let (current, claimed) = (uid_of(&account).to_string(), claims.service_account_uid.clone());
            return Err(TokenError::LegacyServiceAccountUid { current, claimed });
        }
        let user = service_account_user(namespace, name, &claims.service_account_uid, BTreeMap::new());
        Ok(TokenUser { user, audiences: shared })
    }

    /// TokenRequest: `request` (an authentication.k8s.io/v1 TokenRequest) for ServiceAccount `name` in
    /// `namespace` by `requester`, answered with its status holding the token, as kube-apiserver's
    /// `TokenREST` (and, for a node asking, NodeRestriction's check of it).
    pub async fn request(
        &self,
        namespace: &str,
        name: &str,
        mut request: Value,
        requester: &UserInfo,
    ) -> Result<Value, ApiError> {
        check_kind(&request)?;
        for (field, must_be) in [("name", name), ("namespace", namespace)] {
            let given = request.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).unwrap_or_default();
            if !given.is_empty() && given != must_be {
                let detail = format!("must match the service account {field} if specified");
                return Err(invalid(name, &format!("metadata.{field}"), json!(given), &detail));
            }
        }
        let account = self.objects.get(def("serviceaccounts"), Some(namespace), name).await?;
        let spec = match request.get("spec") {
            None | Some(Value::Null) => json!({}),
            Some(spec @ Value::Object(_)) => spec.clone(),
            Some(_) => return Err(ApiError::BadRequest("spec must be an object".into())),
        };
        let mut audiences: Vec<String> = match spec.get("audiences") {
            None | Some(Value::Null) => Vec::new(),
            Some(audiences) => serde_json::from_value(audiences.clone())
                .map_err(|e| ApiError::BadRequest(format!("spec.audiences: {e}")))?,
        };
        if audiences.is_empty() {
            audiences = api_audiences();
        }
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
            Some(seconds) => seconds
                .as_i64()
                .ok_or_else(|| ApiError::BadRequest(format!("spec.expirationSeconds: invalid value {seconds}")))?,
        };
        if expiration < MIN_EXPIRATION_SECONDS {
            let detail = "may not specify a duration less than 10 minutes";
            return Err(invalid("", "spec.expirationSeconds", json!(expiration), detail));
        }
        if expiration > MAX_EXPIRATION_SECONDS {
            let detail = "may not specify a duration larger than 2^32 seconds";
            return Err(invalid("", "spec.expirationSeconds", json!(expiration), detail));
        }
        let pod =
            self.bound_pod(namespace, name, spec.get("boundObjectRef").filter(|r| !r.is_null()), requester).await?;
        let now = jiff::Timestamp::now();
        let account_ref = ObjectRef { name: name.to_string(), uid: uid_of(&account).to_string() };
        let mut claims = BoundClaims::new(namespace, account_ref, audiences.clone(), now.as_second(), expiration);
        if let Some((pod, node)) = pod {
            // A projected token of the admission's lifetime for the API server lives a year but says when it
            // should have been refreshed: Kubernetes' safe transition to bound tokens.
            let for_api_server = audiences.iter().all(|audience| api_audiences().contains(audience));
            let extend = expiration == claims::WARN_ONLY_EXPIRATION_SECONDS && for_api_server;
            claims = claims.bound_to_pod(pod, node);
            if extend {
                claims = claims.extended(claims::EXTENDED_EXPIRATION_SECONDS, expiration);
            }
        }
        let encoded = serde_json::to_value(&claims).map_err(|e| ApiError::Internal(format!("token claims: {e}")))?;
        let token = self.key.sign(&encoded).map_err(|e| ApiError::Internal(e.to_string()))?;
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(expiration))
            .map_err(|e| ApiError::Internal(format!("token expiry out of range: {e}")))?;
        tracing::debug!(namespace, name, ?audiences, expiration, pod = ?claims.kubernetes.pod, "issued a token");
        request["apiVersion"] = json!(format!("{AUTHENTICATION_GROUP}/v1"));
        request["kind"] = json!("TokenRequest");
        if !request["metadata"].is_object() {
            request["metadata"] = json!({});
        }
        request["metadata"]["name"] = json!(name);
        request["metadata"]["namespace"] = json!(namespace);
        request["metadata"]["creationTimestamp"] = json!(skiff_api::format_time(now));
        request["spec"] = spec;
        request["spec"]["audiences"] = json!(audiences);
        request["spec"]["expirationSeconds"] = json!(expiration);
        request["status"] = json!({"token": token, "expirationTimestamp": skiff_api::format_time(expires)});
        Ok(request)
    }

    /// The pod `reference` binds a token of ServiceAccount `account` to, with the node it runs on, checked
    /// as TokenRequest checks it; a node may only ask for tokens bound to its own pods (NodeRestriction).
    async fn bound_pod(
        &self,
        namespace: &str,
        account: &str,
        reference: Option<&Value>,
        requester: &UserInfo,
    ) -> Result<Option<(ObjectRef, Option<ObjectRef>)>, ApiError> {
        let accounts = def("serviceaccounts");
        let field = |key: &str| reference.and_then(|r| r.get(key)).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind, name, uid) = (field("apiVersion"), field("kind"), field("name"), field("uid"));
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let node = requester.node_name();
        if node.is_some() && (reference.is_none() || api_version != "v1" || kind != "Pod" || name.is_empty()) {
            return Err(ApiError::forbidden(accounts, account, "node requested token not bound to a pod"));
        }
        if node.is_some() && uid.is_empty() {
            return Err(ApiError::forbidden(
                accounts,
                account,
                "node requested token with a pod binding without a uid",
            ));
        }
        if reference.is_none() {
            return Ok(None);
        }
        if !group.is_empty() || kind != "Pod" {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
        let pod = self.objects.get(def("pods"), Some(namespace), name).await?;
        let pod_uid = uid_of(&pod);
        let scheduled = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        if let Some(node) = node {
            if uid != pod_uid {
                let reason = format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                );
                return Err(ApiError::forbidden(accounts, account, &reason));
            }
            if scheduled != node {
                let reason = "node requested token bound to a pod scheduled on a different node";
                return Err(ApiError::forbidden(accounts, account, reason));
            }
        }
        if pod.pointer("/spec/serviceAccountName").and_then(Value::as_str) != Some(account) {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
            )));
        }
        if !uid.is_empty() && uid != pod_uid {
            // Kubernetes answers a Conflict naming the uid; Skiff's Conflict carries its standard message.
            return Err(ApiError::Conflict { resource: "Pod".into(), group: "", name: name.into() });
        }
        let node = match scheduled {
            "" => None,
            // A token still says which node its pod was on when that Node is gone (its uid is left out).
            scheduled => match self.objects.get(def("nodes"), None, scheduled).await {
                Ok(node) => Some(ObjectRef { name: scheduled.into(), uid: uid_of(&node).into() }),
                Err(ApiError::NotFound { .. }) => Some(ObjectRef { name: scheduled.into(), uid: String::new() }),
                Err(e) => return Err(e),
            },
        };
        Ok(Some((ObjectRef { name: name.into(), uid: pod_uid.into() }, node)))
    }

    /// Fills in a token Secret as kube-controller-manager's token controller does: the token (a legacy JWT
    /// naming the Secret), `ca.crt` and `namespace` where missing or stale, and the ServiceAccount's name
    /// and uid as annotations. A Secret whose ServiceAccount does not exist (or is another by uid) is
    /// deleted, as the controller deletes it: its token could never authenticate.
    async fn sync_secret(&self, secret: &Value) -> Result<(), ApiError> {
        let secrets = def("secrets");
        if secret.get("type").and_then(Value::as_str) != Some(TOKEN_SECRET_TYPE)
            || secret.pointer("/metadata/deletionTimestamp").is_some()
        {
            return Ok(());
        }
        let annotation = |key: &str| {
            let pointer = format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1"));
            secret.pointer(&pointer).and_then(Value::as_str).unwrap_or_default()
        };
        let (account_name, account_uid) = (annotation(ACCOUNT_NAME_ANNOTATION), annotation(ACCOUNT_UID_ANNOTATION));
        if account_name.is_empty() {
            return Ok(());
        }
        let namespace = secret.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        let name = objects::name_of(secret);
        let account = match self.objects.get(def("serviceaccounts"), Some(namespace), account_name).await {
            Ok(account) if account_uid.is_empty() || uid_of(&account) == account_uid => account,
            Ok(_) | Err(ApiError::NotFound { .. }) => {
                tracing::info!(
                    namespace,
                    name,
                    account = account_name,
                    "deleting a token secret of a missing service account"
                );
                let precondition_uid = Some(uid_of(secret).to_string());
                let options = DeleteOptions { precondition_uid, ..DeleteOptions::default() };
                return match self.objects.delete(secrets, Some(namespace), name, &options).await {
                    Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let data = |key: &str| {
            secret.pointer(&format!("/data/{key}")).and_then(Value::as_str).and_then(|d| BASE64.decode(d).ok())
        };
        let stale_ca = data("ca.crt").as_deref() != Some(self.ca_cert_pem.as_bytes());
        let no_namespace = data("namespace").is_none_or(|n| n.is_empty());
        let no_token = data("token").is_none_or(|t| t.is_empty());
        if !stale_ca && !no_namespace && !no_token {
            return Ok(());
        }
        let mut updated = secret.clone();
        if !updated["data"].is_object() {
            updated["data"] = json!({});
        }
        if stale_ca {
            updated["data"]["ca.crt"] = json!(BASE64.encode(&self.ca_cert_pem));
        }
        if no_namespace {
            updated["data"]["namespace"] = json!(BASE64.encode(namespace));
        }
        if no_token {
            let account_ref = ObjectRef { name: account_name.to_string(), uid: uid_of(&account).to_string() };
            let claims = serde_json::to_value(LegacyClaims::new(namespace, &account_ref, name))
                .map_err(|e| ApiError::Internal(format!("token claims: {e}")))?;
            let token = self.key.sign(&claims).map_err(|e| ApiError::Internal(e.to_string()))?;
            updated["data"]["token"] = json!(BASE64.encode(token));
        }
        if !updated["metadata"]["annotations"].is_object() {
            updated["metadata"]["annotations"] = json!({});
        }
        updated["metadata"]["annotations"][ACCOUNT_NAME_ANNOTATION] = json!(account_name);
        updated["metadata"]["annotations"][ACCOUNT_UID_ANNOTATION] = json!(uid_of(&account));
        // The resourceVersion read is a precondition: a Secret changed meanwhile is looked at again on its
        // own event.
        let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
        match self.objects.replace(secrets, Some(namespace), name, Part::Main, updated, &options).await {
            Ok(_) => {
                tracing::info!(namespace, name, account = account_name, "filled in a service account token secret");
                Ok(())
            }
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync_all_secrets(&self) {
        let secrets = match self.objects.list(def("secrets"), None, &objects::ListOptions::default()).await {
            Ok(list) => list.items,
            Err(e) => return tracing::warn!(error = %e, "token controller cannot list secrets"),
        };
        for secret in secrets.iter().filter(|s| s.get("type").and_then(Value::as_str) == Some(TOKEN_SECRET_TYPE)) {
            self.sync_one(secret).await;
        }
    }

    async fn sync_one(&self, secret: &Value) {
        let namespace = secret.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        let name = objects::name_of(secret);
        let span = tracing::debug_span!("token secret", namespace, name);
        if let Err(e) = self.sync_secret(secret).instrument(span).await {
            tracing::warn!(namespace, name, error = %e, "cannot fill in a service account token secret");
        }
    }
}

/// The token controller until `shutdown`: every token Secret at start and at each resync, and each one
/// written in between.
pub async fn run(tokens: Arc<ServiceAccountTokens>, shutdown: CancellationToken) {
    let store = tokens.objects.store().clone();
    let prefix = objects::prefix(def("secrets"), None);
    loop {
        let after = match store.revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "token controller cannot read the store revision");
                0
            }
        };
        tokens.sync_all_secrets().await;
        let mut events = match store.watch(&prefix, after).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "token controller cannot watch secrets; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RESYNC) => continue,
                }
            }
        };
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = resync.tick() => tokens.sync_all_secrets().await,
                event = events.next() => match event {
                    Some(Ok(event)) if event.kind == EventKind::Put => match objects::decode(&event.kv) {
                        Ok(secret) => tokens.sync_one(&secret).await,
                        Err(e) => tracing::warn!(error = %e, "token controller cannot read a secret"),
                    },
                    Some(Ok(_)) => {}
                    // A broken watch restarts from a fresh list: level-triggered, nothing is lost.
                    Some(Err(_)) | None => break,
                },
            }
        }
    }
}

/// The ServiceAccount admission plugin on the create of `pod` in `namespace`: the account defaults to
/// `default` (which is made on the spot if the namespace's has not been yet, where Kubernetes retries for a
/// second), must exist, lends the pod its image pull secrets when it has none, and unless the pod or the
/// account turns `automountServiceAccountToken` off, every container and init container gets the projected
/// token, CA and namespace at [`TOKEN_MOUNT_PATH`].
pub(crate) async fn admit_pod(objects: &Objects, namespace: &str, pod: &mut Value) -> Result<(), ApiError> {
    let pods = def("pods");
    let pod_name = objects::name_of(pod).to_string();
    if !pod["spec"].is_object() {
        return Ok(());
    }
    let spec = &mut pod["spec"];
    let named = |key: &str| spec.get(key).and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);
    let account_name = named("serviceAccountName").or_else(|| named("serviceAccount")).unwrap_or("default".into());
    spec["serviceAccountName"] = json!(account_name);
    spec["serviceAccount"] = json!(account_name);
    let accounts = def("serviceaccounts");
    let mut account = objects.get(accounts, Some(namespace), &account_name).await;
    if account_name == "default" && matches!(account, Err(ApiError::NotFound { .. })) {
        // Boxed: creating the account is a write, which is admitted, which is this function.
        Box::pin(crate::lifecycle::ensure_default_service_account(objects, namespace)).await?;
        account = objects.get(accounts, Some(namespace), &account_name).await;
    }
    let account = account.map_err(|e| {
        let cause = match e {
            ApiError::NotFound { .. } => format!("serviceaccount {account_name:?} not found"),
            other => other.to_string(),
        };
        ApiError::forbidden(
            pods,
            &pod_name,
            &format!("error looking up service account {namespace}/{account_name}: {cause}"),
        )
    })?;
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| account.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true);
    if automount {
        mount_api_access(spec, &objects::random_suffix());
    }
    let has_pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    if let Some(secrets) = account.get("imagePullSecrets").and_then(Value::as_array).filter(|s| !s.is_empty())
        && !has_pull_secrets
    {
        let references: Vec<Value> =
            secrets.iter().map(|s| json!({"name": s.get("name").cloned().unwrap_or_default()})).collect();
        spec["imagePullSecrets"] = json!(references);
    }
    Ok(())
}

/// Mounts the `kube-api-access-<suffix>` projected volume (or the one already in `spec`) read-only at
/// [`TOKEN_MOUNT_PATH`] in every container and init container that mounts nothing there, adding the volume
/// when one of them needs it (the plugin's `mountServiceAccountToken`).
fn mount_api_access(spec: &mut Value, suffix: &str) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|volume| volume.get("name").and_then(Value::as_str))
        .find(|name| name.starts_with(VOLUME_PREFIX))
        .map(str::to_string);
    let volume_name = existing.clone().unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten();
        for container in containers.filter(|container| container.is_object()) {
            let mounts_path = container
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|mount| mount.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH));
            if mounts_path {
                continue;
            }
            let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
            match container.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = json!([mount]),
            }
            needed = true;
        }
    }
    if existing.is_some() || !needed {
        return;
    }
    let volume = json!({
        "name": volume_name,
        "projected": {
            // Kubernetes writes the default mode out (0644) since #104464, so the object says what the
            // files get.
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": claims::WARN_ONLY_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
                ]}},
            ],
        },
    });
    match spec.get_mut("volumes").and_then(Value::as_array_mut) {
        Some(volumes) => volumes.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
}

/// A service account's user, as Kubernetes' `ServiceAccountInfo.UserInfo` with the authenticated group.
fn service_account_user(namespace: &str, name: &str, uid: &str, extra: BTreeMap<String, Vec<String>>) -> UserInfo {
    UserInfo {
        name: claims::username(namespace, name),
        uid: uid.to_string(),
        groups: vec![
            SERVICE_ACCOUNTS_GROUP.to_string(),
            format!("{SERVICE_ACCOUNTS_GROUP}:{namespace}"),
            AUTHENTICATED.to_string(),
        ],
        extra,
    }
}

/// A 422 about a TokenRequest (`TokenRequest.authentication.k8s.io "NAME" is invalid: ...`).
fn invalid(name: &str, field: &str, value: Value, detail: &str) -> ApiError {
    ApiError::Invalid {
        kind: format!("TokenRequest.{AUTHENTICATION_GROUP}"),
        group: AUTHENTICATION_GROUP,
        name: name.to_string(),
        causes: vec![Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
            field: field.to_string(),
        }],
    }
}

/// A body naming another type than TokenRequest is refused as any write of the wrong kind is.
fn check_kind(request: &Value) -> Result<(), ApiError> {
    if !request.is_object() {
        return Err(ApiError::BadRequest("the request body must be a JSON object".into()));
    }
    let field = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let expected = format!("{AUTHENTICATION_GROUP}/v1");
    if (!api_version.is_empty() && api_version != expected) || (!kind.is_empty() && kind != "TokenRequest") {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) and kind ({kind}) do not match the expected {expected} TokenRequest"
        )));
    }
    Ok(())
}

fn uid_of(object: &Value) -> &str {
    object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

/// Whether `object` is being deleted since before `cutoff` (seconds since the epoch).
fn deleted_before(object: &Value, cutoff: i64) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|at| at.parse::<jiff::Timestamp>().ok())
        .is_some_and(|at| at.as_second() < cutoff)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::objects::ListOptions;

    async fn setup() -> (tempfile::TempDir, Objects, ServiceAccountTokens) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let tokens = ServiceAccountTokens::new(&key, objects.clone(), "-----BEGIN CERTIFICATE-----\n".into()).unwrap();
        (dir, objects, tokens)
    }

    async fn create(objects: &Objects, plural: &str, ns: &str, object: Value) -> Value {
        objects.create(def(plural), Some(ns), object, &WriteOptions::default()).await.unwrap().object
    }

    fn account(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    }

    fn admin() -> UserInfo {
        UserInfo { name: "system:admin".into(), groups: vec!["system:masters".into()], ..UserInfo::default() }
    }

    fn token_request(spec: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    }

    fn audiences(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn requested_tokens_authenticate_their_account_for_their_audiences() {
        let (_dir, objects, tokens) = setup().await;
        let builder = create(&objects, "serviceaccounts", "default", account("builder")).await;
        let answer = tokens.request("default", "builder", token_request(json!({})), &admin()).await.unwrap();
        assert_eq!(answer["spec"]["expirationSeconds"], 3600);
        assert_eq!(answer["spec"]["audiences"], json!([ISSUER]));
        assert_eq!(answer["metadata"]["name"], "builder");
        let token = answer["status"]["token"].as_str().unwrap();
        let expires: jiff::Timestamp = answer["status"]["expirationTimestamp"].as_str().unwrap().parse().unwrap();
        assert!((expires.as_second() - jiff::Timestamp::now().as_second() - 3600).abs() <= 2);

        let found = tokens.authenticate(token, &api_audiences()).await.unwrap().unwrap();
        assert_eq!(found.user.name, "system:serviceaccount:default:builder");
        assert_eq!(found.user.uid, uid_of(&builder));
        assert_eq!(found.user.groups, ["system:serviceaccounts", "system:serviceaccounts:default", AUTHENTICATED]);
        assert!(found.user.extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));
        assert_eq!(found.audiences, api_audiences());

        let elsewhere = tokens.authenticate(token, &audiences(&["vault"])).await.unwrap();
        assert!(matches!(elsewhere, Err(TokenError::Claims(ClaimsError::Audience { .. }))));
        let vault = token_request(json!({"audiences": ["vault"]}));
        let vault = tokens.request("default", "builder", vault, &admin()).await.unwrap();
        let vault = vault["status"]["token"].as_str().unwrap();
        assert!(tokens.authenticate(vault, &audiences(&["vault"])).await.unwrap().is_ok());
        assert!(tokens.authenticate(vault, &api_audiences()).await.unwrap().is_err(), "not for the API server");

        // Another cluster's key, and what is no JWT of ours, are not this authenticator's to accept.
        let (_other_dir, _, other) = setup().await;
        assert!(matches!(other.authenticate(token, &api_audiences()).await, Some(Err(TokenError::Jwt(_)))));
        assert!(tokens.authenticate("0123456789abcdef", &api_audiences()).await.is_none());

        // The account deleted and made again: the old token is dead.
        let accounts = def("serviceaccounts");
        objects.delete(accounts, Some("default"), "builder", &DeleteOptions::default()).await.unwrap();
        assert!(matches!(tokens.authenticate(token, &api_audiences()).await, Some(Err(TokenError::ServiceAccount(_)))));
        create(&objects, "serviceaccounts", "default", account("builder")).await;
        let refused = tokens.authenticate(token, &api_audiences()).await.unwrap().unwrap_err();
        assert!(refused.to_string().starts_with("service account UID ("), "{refused}");
    }

    #[tokio::test]
    async fn token_requests_are_validated_as_kubernetes_validates_them() {
        let (_dir, objects, tokens) = setup().await;
        create(&objects, "serviceaccounts", "default", account("builder")).await;
        let short =
            tokens.request("default", "builder", token_request(json!({"expirationSeconds": 1})), &admin()).await;
        let short = short.unwrap_err();
        assert_eq!(
            short.to_string(),
            r#"TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 1: may not specify a duration less than 10 minutes"#
        );
        assert_eq!(short.code(), http::StatusCode::UNPROCESSABLE_ENTITY);
        let missing = tokens.request("default", "nobody", token_request(json!({})), &admin()).await.unwrap_err();
        assert_eq!(missing.to_string(), r#"serviceaccounts "nobody" not found"#);
        let renamed = json!({"kind": "TokenRequest", "metadata": {"name": "other"}, "spec": {}});
        let renamed = tokens.request("default", "builder", renamed, &admin()).await.unwrap_err();
        assert!(renamed.to_string().ends_with("must match the service account name if specified"), "{renamed}");
        let secret = token_request(json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": "s"}}));
        let secret = tokens.request("default", "builder", secret, &admin()).await.unwrap_err();
        assert_eq!(secret.to_string(), "cannot bind token to object of type /v1, Kind=Secret");
    }

    fn pod(name: &str, account: &str, node: Option<&str>) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
            "serviceAccountName": account, "containers": [{"name": "c", "image": "registry.local/app:1"}]}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        pod
    }

    #[tokio::test]
    async fn a_pod_bound_token_dies_with_its_pod_and_nodes_get_only_those_of_their_pods() {
        let (_dir, objects, tokens) = setup().await;
        create(&objects, "serviceaccounts", "default", account("runner")).await;
        let web = create(&objects, "pods", "default", pod("web", "runner", Some("edge"))).await;
        let bind = |uid: &str| {
            token_request(
                json!({"expirationSeconds": 3607, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": uid}}),
            )
        };
        let edge = UserInfo {
            name: "system:node:edge".into(),
            groups: vec!["system:nodes".into(), AUTHENTICATED.into()],
            ..UserInfo::default()
        };
        let answer = tokens.request("default", "runner", bind(uid_of(&web)), &edge).await.unwrap();
        let token = answer["status"]["token"].as_str().unwrap();
        let found = tokens.authenticate(token, &api_audiences()).await.unwrap().unwrap();
        assert_eq!(found.user.extra["authentication.kubernetes.io/pod-name"], ["web"]);
        assert_eq!(found.user.extra["authentication.kubernetes.io/pod-uid"], [uid_of(&web)]);
        assert_eq!(found.user.extra["authentication.kubernetes.io/node-name"], ["edge"]);
        // Asked for the admission's lifetime: valid a year, to be refreshed after the hour.
        let claims: BoundClaims = serde_json::from_value(tokens.key.verify(token).unwrap()).unwrap();
        let issued = claims.iat.unwrap();
        assert_eq!((claims.exp, claims.kubernetes.warnafter), (Some(issued + 31_536_000), Some(issued + 3607)));
        let expires: jiff::Timestamp = answer["status"]["expirationTimestamp"].as_str().unwrap().parse().unwrap();
        assert_eq!(expires.as_second(), issued + 3607, "the status says when to refresh");

        // Nodes: only bound, with the pod's uid, to their own pods.
        let other = UserInfo { name: "system:node:other".into(), ..edge.clone() };
        let refused = tokens.request("default", "runner", bind(uid_of(&web)), &other).await.unwrap_err();
        assert!(refused.to_string().ends_with("node requested token bound to a pod scheduled on a different node"));
        let unbound = tokens.request("default", "runner", token_request(json!({})), &edge).await.unwrap_err();
        assert_eq!(
            unbound.to_string(),
            r#"serviceaccounts "runner" is forbidden: node requested token not bound to a pod"#
        );
        let no_uid = tokens.request("default", "runner", bind(""), &edge).await.unwrap_err();
        assert!(no_uid.to_string().ends_with("node requested token with a pod binding without a uid"));
        let stale = tokens.request("default", "runner", bind("old-uid"), &admin()).await.unwrap_err();
        assert_eq!(stale.code(), http::StatusCode::CONFLICT);
        create(&objects, "serviceaccounts", "default", account("other")).await;
        let foreign = tokens.request("default", "other", bind(uid_of(&web)), &admin()).await.unwrap_err();
        assert!(foreign.to_string().starts_with(r#"cannot bind token for serviceaccount "other""#), "{foreign}");

        let pods = def("pods");
        objects
            .delete(
                pods,
                Some("default"),
                "web",
                &DeleteOptions { grace_period_seconds: Some(0), ..DeleteOptions::default() },
            )
            .await
            .unwrap();
        let gone = tokens.authenticate(token, &api_audiences()).await.unwrap().unwrap_err();
        assert_eq!(gone.to_string(), "service account token has been invalidated");
    }

    #[tokio::test]
    async fn token_secrets_are_filled_in_and_their_tokens_last_as_long_as_the_secret() {
        let (_dir, objects, tokens) = setup().await;
        let builder = create(&objects, "serviceaccounts", "default", account("builder")).await;
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": TOKEN_SECRET_TYPE,
            "metadata": {"name": "builder-token", "annotations": {ACCOUNT_NAME_ANNOTATION: "builder"}}});
        let secret = create(&objects, "secrets", "default", secret).await;
        tokens.sync_secret(&secret).await.unwrap();
        let filled = objects.get(def("secrets"), Some("default"), "builder-token").await.unwrap();
        let decoded =
            |key: &str| String::from_utf8(BASE64.decode(filled["data"][key].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(decoded("namespace"), "default");
        assert_eq!(decoded("ca.crt"), "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(filled["metadata"]["annotations"][ACCOUNT_UID_ANNOTATION], uid_of(&builder));
        let token = decoded("token");
        let claims = tokens.key.verify(&token).unwrap();
        assert_eq!(claims["iss"], LEGACY_ISSUER);
        assert!(claims.get("exp").is_none(), "legacy tokens do not expire");
        let found = tokens.authenticate(&token, &api_audiences()).await.unwrap().unwrap();
        assert_eq!(found.user.name, "system:serviceaccount:default:builder");
        assert!(found.user.extra.is_empty());
        assert!(tokens.authenticate(&token, &audiences(&["vault"])).await.unwrap().is_err());

        // Nothing left to fill in: no write.
        let before = filled["metadata"]["resourceVersion"].clone();
        tokens.sync_secret(&filled).await.unwrap();
        let again = objects.get(def("secrets"), Some("default"), "builder-token").await.unwrap();
        assert_eq!(again["metadata"]["resourceVersion"], before);

        objects.delete(def("secrets"), Some("default"), "builder-token", &DeleteOptions::default()).await.unwrap();
        let gone = tokens.authenticate(&token, &api_audiences()).await.unwrap().unwrap_err();
        assert_eq!(gone.to_string(), "Token has been invalidated");

        // A token secret of an account that does not exist is deleted.
        let orphan = json!({"apiVersion": "v1", "kind": "Secret", "type": TOKEN_SECRET_TYPE,
            "metadata": {"name": "orphan", "annotations": {ACCOUNT_NAME_ANNOTATION: "nobody"}}});
        let orphan = create(&objects, "secrets", "default", orphan).await;
        tokens.sync_secret(&orphan).await.unwrap();
        let left = objects.list(def("secrets"), Some("default"), &ListOptions::default()).await.unwrap().items;
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn the_api_access_volume_is_mounted_where_nothing_else_is() {
        let mut spec = json!({
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [
                {"name": "app", "image": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "own", "image": "o", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        });
        mount_api_access(&mut spec, "x7k2p");
        let mount = json!({"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(spec["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1, "its own mount stays");
        assert_eq!(
            spec["volumes"][1],
            json!({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}})
        );
        // Admitted again (a pod copied from another): the volume already there is reused.
        let before = spec.clone();
        mount_api_access(&mut spec, "other");
        assert_eq!(spec, before);
    }

    #[tokio::test]
    async fn pods_get_their_account_and_its_token_unless_they_opt_out() {
        let (_dir, objects, _tokens) = setup().await;
        let mut plain = json!({"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        admit_pod(&objects, "default", &mut plain).await.unwrap();
        assert_eq!(
            (&plain["spec"]["serviceAccountName"], &plain["spec"]["serviceAccount"]),
            (&json!("default"), &json!("default"))
        );
        let volume = plain["spec"]["volumes"][0]["name"].as_str().unwrap();
        assert!(volume.starts_with("kube-api-access-") && volume.len() == "kube-api-access-".len() + 5, "{volume}");
        assert!(objects.get(def("serviceaccounts"), Some("default"), "default").await.is_ok(), "made on the spot");

        let quiet = json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false,
            "imagePullSecrets": [{"name": "regcred"}]});
        create(&objects, "serviceaccounts", "default", quiet).await;
        let mut opted_out = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "quiet", "containers": [{"name": "c", "image": "i"}]}});
        admit_pod(&objects, "default", &mut opted_out).await.unwrap();
        assert!(opted_out["spec"].get("volumes").is_none());
        assert_eq!(opted_out["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let mut opted_in = opted_out.clone();
        opted_in["spec"]["automountServiceAccountToken"] = json!(true);
        admit_pod(&objects, "default", &mut opted_in).await.unwrap();
        assert!(opted_in["spec"]["volumes"].is_array(), "the pod's choice wins");

        let mut missing =
            json!({"metadata": {"name": "lost"}, "spec": {"serviceAccountName": "ghost", "containers": []}});
        let refused = admit_pod(&objects, "default", &mut missing).await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            r#"pods "lost" is forbidden: error looking up service account default/ghost: serviceaccount "ghost" not found"#
        );
    }
}
