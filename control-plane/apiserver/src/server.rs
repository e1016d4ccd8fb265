//! The TLS listener and its lifecycle: bind, serve HTTP/1.1 and HTTP/2 within the limits of
//! [`connections`](crate::connections) and [`inflight`](crate::inflight), and on shutdown stop accepting, end
//! watches and drain in-flight requests within a grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skiff_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::audit::{AuditConfig, AuditWriter, Auditor};
use crate::authn::{Authenticated, Authenticator};
use crate::authz::Authorizer;
use crate::connections::{self, AcceptBackoff, Activity, Holding};
use crate::encryption::{EncryptedStore, Encryption};
use crate::error::ApiError;
use crate::inflight::{self, InFlight};
use crate::objects::Objects;
use crate::pki::{ClusterSecrets, Credentials, PkiError};
use crate::resource_metrics;
use crate::router::{self, AppState};
use crate::serviceaccounts::{self, ServiceAccountTokens};
use crate::{cluster_ips, kubernetes_service, lifecycle, pki::server_url};

/// How long in-flight requests may run after shutdown starts before their connections are dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Further names and addresses for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// The Pod Security level enforced in namespaces without a `pod-security.kubernetes.io/enforce` label
    /// (`--pod-security-default`).
    pub pod_security_default: skiff_api::pod_security::Level,
    /// The audit policy and log (`--audit-policy-file`, `--audit-log-*`); none audits nothing.
    pub audit: Option<AuditConfig>,
    /// An `EncryptionConfiguration` saying which resources are encrypted at rest, with which keys
    /// (`--encryption-provider-config`); none stores everything as plaintext, as Kubernetes does.
    pub encryption_provider_config: Option<PathBuf>,
    /// How often the metrics APIs read every node (metrics-server's `--metric-resolution`).
    pub metric_resolution: std::time::Duration,
    /// The process's Prometheus registry, served at `/metrics`.
    pub instruments: crate::instrumentation::Instruments,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("credentials")]
    Pki(#[from] PkiError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot share the cluster's credentials through the store")]
    SharedSecrets(#[source] skiff_store::Error),
    #[error("the cluster's credentials in the store are unreadable")]
    CorruptSecrets(#[source] serde_json::Error),
    #[error("cannot read the authorization policy from the store")]
    Policy(#[source] skiff_store::Error),
    #[error("cannot create the system namespaces and services: {0}")]
    Bootstrap(#[source] ApiError),
    #[error("cannot sign service account tokens")]
    ServiceAccountKey(#[source] crate::serviceaccounts::KeyError),
    #[error("audit log")]
    Audit(#[from] crate::audit::AuditError),
    #[error("encryption at rest")]
    Encryption(#[from] crate::encryption::ConfigError),
}

/// The identity the server presents to kubelet ports: `kube-apiserver-kubelet-client` in `system:masters`,
/// as kube-apiserver's `--kubelet-client-certificate`. Minted at every start: every server of a cluster
/// signs with the one CA, which is all an agent checks.
fn kubelet_client(credentials: &Credentials) -> Result<crate::kubelet::KubeletClientIdentity, PkiError> {
    let (cert_pem, key_pem) = crate::pki::client_certificate(
        &credentials.dir,
        crate::kubelet::API_SERVER_USER,
        Some(skiff_api::authz::MASTERS),
        365,
    )?;
    crate::kubelet::KubeletClientIdentity::new(&cert_pem, &key_pem, &credentials.ca_cert_pem)
}

/// Where the servers of one cluster find its CA and tokens (outside `/registry/`, so no API lists it).
const SECRETS_KEY: &str = crate::encryption::CLUSTER_SECRETS_KEY;

/// Loads this server's credentials so that every server on the store shares one CA and one set of tokens:
/// the first server publishes its own, later ones install those into their data dir before loading.
async fn shared_credentials(
    dir: &Path,
    listen: SocketAddr,
    tls_sans: &[String],
    store: &dyn Store,
) -> Result<Credentials, ServerError> {
    let published = async || -> Result<Option<(ClusterSecrets, skiff_store::Revision)>, ServerError> {
        let Some(kv) = store.get(SECRETS_KEY).await.map_err(ServerError::SharedSecrets)? else { return Ok(None) };
        let secrets = serde_json::from_slice(&kv.value).map_err(ServerError::CorruptSecrets)?;
        Ok(Some((secrets, kv.mod_revision)))
    };
    // Another server published first: take its secrets instead of ours.
    let adopt = async || -> Result<Credentials, ServerError> {
        let (theirs, _) =
            published().await?.ok_or(ServerError::SharedSecrets(skiff_store::Error::NotFound(SECRETS_KEY.into())))?;
        theirs.install(dir)?;
        Ok(Credentials::load_or_create(dir, listen, tls_sans)?)
    };
    if let Some((secrets, revision)) = published().await? {
        secrets.install(dir)?;
        let credentials = Credentials::load_or_create(dir, listen, tls_sans)?;
        if !secrets.service_account_key_pem.is_empty() {
            return Ok(credentials);
        }
        // Published by a server older than service account tokens: publish the key this one made, unless
        // another server just did (then take theirs), so a token from any server is good at every other.
        let ours = serde_json::to_vec(&ClusterSecrets::read(&credentials)?).map_err(ServerError::CorruptSecrets)?;
        return match store.update(SECRETS_KEY, ours.into(), Some(revision)).await {
            Ok(_) => Ok(credentials),
            Err(skiff_store::Error::Conflict { .. }) => adopt().await,
            Err(e) => Err(ServerError::SharedSecrets(e)),
        };
    }
    let credentials = Credentials::load_or_create(dir, listen, tls_sans)?;
    let ours = ClusterSecrets::read(&credentials)?;
    let value = serde_json::to_vec(&ours).map_err(ServerError::CorruptSecrets)?;
    match store.create(SECRETS_KEY, value.into()).await {
        Ok(_) => Ok(credentials),
        Err(skiff_store::Error::AlreadyExists(_)) => adopt().await,
        Err(e) => Err(ServerError::SharedSecrets(e)),
    }
}

/// A bound server, ready to serve.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    authenticator: Arc<Authenticator>,
    inflight: Arc<InFlight>,
    /// Keeps the authorizers' caches current.
    authorizer_mirror: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    url: String,
    /// Where pods reach this server: listed in the `kubernetes` Service's endpoints.
    advertise: SocketAddr,
    audit: Option<(Arc<Auditor>, AuditWriter)>,
    metric_resolution: std::time::Duration,
}

impl Server {
    /// Prepares credentials and the kubeconfig, creates the system namespaces and binds the listener.
    pub async fn bind(
        config: ServerConfig,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        // Checked before anything is bound or written, so a bad file stops the server with nothing done. From
        // here on every reader and writer sees the store through the encryption layer, the shared
        // credentials below (which hold the CA's key) included.
        let encrypted = match &config.encryption_provider_config {
            Some(path) => Some(Arc::new(EncryptedStore::new(store.clone(), Encryption::load(path)?))),
            None => None,
        };
        let store: Arc<dyn Store> = match &encrypted {
            Some(encrypted) => {
                encrypted.rewrite_if_stale(SECRETS_KEY).await.map_err(ServerError::SharedSecrets)?;
                encrypted.clone()
            }
            None => store,
        };
        // A bad audit policy stops the server before it binds.
        let audit = config.audit.as_ref().map(Auditor::start).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let credentials = shared_credentials(&config.data_dir, local, &config.tls_sans, store.as_ref()).await?;
        let url = server_url(local);
        credentials.write_kubeconfig(&url)?;
        let acceptor = TlsAcceptor::from(Arc::new(credentials.server_config()?));
        let pod_security = skiff_api::pod_security::PodSecurity::new(config.pod_security_default);
        // The authorizer's mirror follows the store from here on, so it also sees the bootstrap writes below.
        let (authorizer, mirror) =
            Authorizer::start(store.clone(), shutdown.clone()).await.map_err(ServerError::Policy)?;
        let objects = match encrypted {
            Some(encrypted) => Objects::encrypted(encrypted),
            None => Objects::new(store),
        };
        let objects = objects.with_pod_security(pod_security).with_authorizer(authorizer.clone());
        lifecycle::bootstrap(&objects).await.map_err(ServerError::Bootstrap)?;
        lifecycle::bootstrap_policy(&objects).await.map_err(ServerError::Bootstrap)?;
        lifecycle::reconcile_all(&objects, &credentials.ca_cert_pem).await;
        kubernetes_service::ensure_service(&objects, local.port()).await.map_err(ServerError::Bootstrap)?;
        kubernetes_service::ensure_cluster_dns(&objects).await.map_err(ServerError::Bootstrap)?;
        let advertise = SocketAddr::new(kubernetes_service::advertise_address(local.ip()), local.port());
        let inflight = Arc::new(InFlight::new(inflight::MAX_READ_ONLY, inflight::MAX_MUTATING));
        let service_accounts = Arc::new(
            ServiceAccountTokens::new(
                &credentials.service_account_key_pem,
                objects.clone(),
                credentials.ca_cert_pem.clone(),
            )
            .map_err(ServerError::ServiceAccountKey)?,
        );
        let authenticator = Arc::new(
            Authenticator::new(credentials.admin_token.clone(), credentials.node_token.clone())
                .with_service_accounts(service_accounts.clone())
                .with_revoked_nodes(authorizer.revoked_nodes())
                .with_bootstrap_tokens(authorizer.bootstrap_tokens()),
        );
        let state = Arc::new(AppState {
            objects,
            authorizer,
            shutdown,
            server_address: url.trim_start_matches("https://").to_string(),
            ca_cert_pem: credentials.ca_cert_pem.clone(),
            kubelet_client: kubelet_client(&credentials)?,
            authenticator: authenticator.clone(),
            service_accounts,
            metric_readings: Arc::default(),
            instruments: config.instruments,
        });
        let authorizer_mirror = Box::pin(mirror);
        let metric_resolution = config.metric_resolution;
        Ok(Self {
            listener,
            acceptor,
            state,
            authenticator,
            inflight,
            authorizer_mirror,
            url,
            advertise,
            audit,
            metric_resolution,
        })
    }

    /// Advertises this server in the `kubernetes` Service's endpoints at `address` (and its listen port)
    /// instead of the address derived from the listen address (see
    /// [`kubernetes_service::advertise_address`]): for a machine whose default route is not where pods
    /// reach it.
    pub fn with_advertise_address(mut self, address: std::net::IpAddr) -> Self {
        self.advertise.set_ip(address);
        self
    }

    /// The URL clients reach this server at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) {
        let Server {
            listener,
            acceptor,
            state,
            authenticator,
            inflight,
            authorizer_mirror,
            url,
            advertise,
            audit,
            metric_resolution,
        } = self;
        let (auditor, audit_writer) = audit.unzip();
        let shutdown = state.shutdown.clone();
        let mirror = tokio::spawn(authorizer_mirror);
        let controller =
            tokio::spawn(lifecycle::run(state.objects.clone(), state.ca_cert_pem.clone(), shutdown.clone()));
        let tokens = tokio::spawn(serviceaccounts::run(state.service_accounts.clone(), shutdown.clone()));
        let endpoints = tokio::spawn(kubernetes_service::run(state.objects.clone(), advertise, shutdown.clone()));
        let cluster_ips = tokio::spawn(cluster_ips::run(state.objects.store().clone(), shutdown.clone()));
        let metrics = tokio::spawn(resource_metrics::run(
            state.objects.clone(),
            state.kubelet_client.clone(),
            state.metric_readings.clone(),
            metric_resolution,
            shutdown.clone(),
        ));
        let app = router::router(state);
        let slots = Arc::new(Semaphore::new(connections::MAX_CONNECTIONS));
        let mut backoff = AcceptBackoff::default();
        tracing::info!(%url, "serving the Kubernetes API");
        let mut saturated = false;
        loop {
            // A free slot first: at the limit, connections wait in the listen backlog (see `connections`).
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    saturated = false;
                    slot
                }
                Err(_) => {
                    // Once per episode: under a flood every freed slot would log otherwise.
                    if !std::mem::replace(&mut saturated, true) {
                        tracing::warn!(limit = connections::MAX_CONNECTIONS, "connection limit reached, not accepting");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    }
                }
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        let delay = backoff.failed();
                        tracing::warn!(error = %e, ?delay, "accept failed, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            backoff.succeeded();
            let _ = tcp.set_nodelay(true);
            let connection = Connection {
                acceptor: acceptor.clone(),
                app: app.clone(),
                authenticator: authenticator.clone(),
                inflight: inflight.clone(),
                auditor: auditor.clone(),
                shutdown: shutdown.clone(),
                _slot: slot,
            };
            tokio::spawn(connection.serve(tcp, peer));
        }
        drop(listener);
        tracing::info!("shutting down: draining in-flight requests");
        // Every connection holds a slot until it ends: all slots free means all connections closed.
        let all = u32::try_from(connections::MAX_CONNECTIONS).unwrap_or(u32::MAX);
        tokio::select! {
            _ = slots.acquire_many(all) => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(DRAIN_GRACE) => tracing::warn!("drain grace period over, dropping connections"),
        }
        let _ = tokio::join!(controller, tokens, endpoints, cluster_ips, metrics, mirror);
        // After the drain: the requests served by then are in the log.
        if let Some(writer) = audit_writer {
            writer.close().await;
        }
    }
}

/// One accepted connection, holding its slot of the listener until it ends. An upgraded connection (exec,
/// port-forward) leaves hyper, and with it the count, once upgraded: it is authenticated by then, and lasts
/// as long as its user's session.
struct Connection {
    acceptor: TlsAcceptor,
    app: axum::Router,
    authenticator: Arc<Authenticator>,
    inflight: Arc<InFlight>,
    auditor: Option<Arc<Auditor>>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let handshake = tokio::time::timeout(connections::TLS_HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            handshake = handshake => match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            },
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        // The handshake verified the certificate against the cluster CA; it speaks for every request.
        let certified = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|c| crate::authn::certificate_user(c));
        let activity = Activity::default();
        let revocable = certified.clone();
        let (app, authenticator, inflight) = (self.app.clone(), self.authenticator.clone(), self.inflight.clone());
        let auditor = self.auditor.clone();
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let active = requests.begin();
            let (app, authenticator, inflight, certified, auditor) =
                (app.clone(), authenticator.clone(), inflight.clone(), certified.clone(), auditor.clone());
            async move {
                // Authentication (a service account token is looked up in the store), then the in-flight
                // limit (which counts only authenticated requests), then the router, whose first layer
                // authorizes; the audit log sees every request, refused ones too.
                let mut authenticated = None;
                let admitted = match authenticator.authenticate(request.headers(), certified.as_ref()).await {
                    Authenticated::User(user) => {
                        let slot = inflight.admit(request.method(), request.uri(), &user);
                        authenticated = auditor.is_some().then(|| user.clone());
                        request.extensions_mut().insert(user);
                        slot
                    }
                    Authenticated::Anonymous => Ok(None),
                    Authenticated::Invalid => Err(ApiError::Unauthorized),
                };
                let mut audit = auditor.map(|auditor| auditor.begin(&request, authenticated.as_ref(), peer));
                let request = match (&admitted, audit.as_mut()) {
                    (Ok(_), Some(audit)) => audit.read_request(request).await,
                    _ => Ok(request.map(axum::body::Body::new)),
                };
                let (response, slot) = match (admitted, request) {
                    (Ok(slot), Ok(request)) => {
                        // A handler's panic ends the connection as before, recorded first as the Panic stage.
                        match std::panic::AssertUnwindSafe(app.oneshot(request)).catch_unwind().await {
                            Ok(response) => (response.unwrap_or_else(|never: Infallible| match never {}), slot),
                            Err(panic) => {
                                if let Some(audit) = audit {
                                    audit.panicked(panic.as_ref());
                                }
                                std::panic::resume_unwind(panic)
                            }
                        }
                    }
                    (Err(refused), _) | (_, Err(refused)) => (refused.into_response(), None),
                };
                let response = match audit {
                    Some(audit) => audit.respond(response).await,
                    None => response,
                };
                Ok::<_, Infallible>(response.map(|body| Holding::wrap(body, (active, slot))))
            }
        });
        let builder = connections::builder(h2);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
        tokio::pin!(connection);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = self.shutdown.cancelled() => {}
            _ = activity.idle_for(connections::IDLE_TIMEOUT) => tracing::debug!(%peer, "closing an idle connection"),
            // Dropped at once, not drained: its watches would go on serving the node.
            _ = self.authenticator.revoked(revocable.as_ref()) => {
                return tracing::info!(%peer, "closing a revoked node's connection");
            }
        }
        connection.as_mut().graceful_shutdown();
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
