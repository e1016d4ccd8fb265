//! The agent's HTTPS endpoint (the kubelet port), which the API server proxies to:
//! `GET /containerLogs/{ns}/{pod}/{container}` with the kubelet's query parameters;
//! `GET /exec/{ns}/{pod}/{uid}/{container}?command=..`, a WebSocket upgrade, and `/portForward/{ns}/{pod}/{uid}`,
//! an upgrade to SPDY (in WebSocket or not), both passed through by the API server from the client.
//! It serves the node's certificate from the cluster CA (asked for through
//! a `kubernetes.io/kubelet-serving` CertificateSigningRequest naming the node's name and address, and
//! renewed while the agent runs: [`ServingCertificate`]), which the API server checks as the node's.
//!
//! Every request is authenticated and authorized as by a kubelet in its webhook modes with anonymous access
//! off ([`auth`]): a client certificate signed by the cluster CA or a bearer token the API server reviews,
//! then a SubjectAccessReview on this Node's `proxy` (or `stats`, `metrics`, `log`, `spec`) subresource for
//! anyone but `system:masters`, whose API server client certificate is what the API server presents. No
//! identity is answered 401 Unauthorized, a denied one 403 Forbidden, both in the kubelet's words. The
//! handshake accepts clients without a certificate so that they get that answer (or present a token)
//! rather than a TLS alert.
//!
//! Anyone RBAC lets proxy to this node can call the port directly, not only the API server, which checked the
//! names it sends: so a path's segments must be names an object could have (never empty, `.`, `..`, or with
//! `/` or `%`; else 400) before any becomes part of a file path or a URL, and the pod they name must be
//! bound to this node, with the uid named and the container named among its own (else the kubelet's 404),
//! by the API server's copy of it.
//!
//! Anyone who reaches the port can open connections, so what one may hold is bounded as on the API server
//! (`skiff_apiserver::connections`, whose numbers this follows; the agent depends on nothing of the control
//! plane): at most [`MAX_CONNECTIONS`] at once, further ones waiting in the listen backlog; a TLS handshake
//! within [`TLS_HANDSHAKE_TIMEOUT`]; request headers within [`HEADER_READ_TIMEOUT`]; accept errors backing
//! off as Go's do. A streamed log, an exec or a port-forward is never cut.

mod auth;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use skiff_api::authz::UserInfo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AgentError;
use crate::exec::{self, ExecOptions, Protocol};
use crate::logs::{self, LogQuery};
use crate::metrics::{self, AgentMetrics, NodeUsage};
use crate::portforward::{self, PodTarget, Transport};
use crate::running::Running;
use auth::{ApiReviewer, Auth};

/// Connections the endpoint holds at once. Its clients are mostly API servers, with one connection per log,
/// exec or port-forward session; the rest of the limit is room for connections that never become requests
/// until the timeouts close them, while leaving the agent file descriptors for its pods' logs.
pub const MAX_CONNECTIONS: usize = 4_096;

/// How long a TLS handshake may take: Go's and client-go's client-side 10 s, as on the API server.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the API server may take to send a request's headers, which it sends as soon as it has connected.
/// The endpoint speaks HTTP/1.1 only, where this clock also runs while a connection waits for its next
/// request: the API server dials once per request, so an idle connection is nobody's and closes after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KubeletServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    serving: Arc<ServingCertificate>,
}

/// The endpoint's serving certificate, replaced while it serves: each TLS handshake takes the one installed
/// last. Until the first is installed handshakes fail (the API server reports the node unreachable), which
/// lets the agent serve from its start while the certificate is asked for.
#[derive(Debug, Default)]
pub(crate) struct ServingCertificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ServingCertificate {
    /// Serves `cert_pem` (the certificate, then any intermediates) with `key_pem` from the next handshake on.
    pub(crate) fn install(&self, cert_pem: &str, key_pem: &str) -> Result<(), AgentError> {
        let invalid = |e: &dyn std::fmt::Display| AgentError::Config(format!("the serving certificate: {e}"));
        let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>();
        let chain = chain.map_err(|e| invalid(&e))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).map_err(|e| invalid(&e))?;
        let key = key.ok_or_else(|| invalid(&"no private key"))?;
        let certified =
            CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(|e| invalid(&e))?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

struct Handler {
    auth: Auth,
    /// This node's name: the endpoint answers for the pods bound to it only.
    node: String,
    client: kube::Client,
    pods_dir: PathBuf,
    running: Arc<Running>,
    metrics: Arc<AgentMetrics>,
}

impl KubeletServer {
    /// Listens on `addr`, accepting client certificates signed by `ca` (DER), serving the certificate
    /// installed in [`KubeletServer::serving`].
    pub async fn bind(addr: SocketAddr, ca: &[Vec<u8>]) -> Result<Self, AgentError> {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| AgentError::Config(format!("cannot listen on {addr}: {e}")))?;
        let serving = Arc::new(ServingCertificate::default());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in ca {
            roots.add(CertificateDer::from(ca.clone())).map_err(|e| AgentError::Config(format!("cluster CA: {e}")))?;
        }
        let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| AgentError::Config(format!("client certificate verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AgentError::Config(e.to_string()))?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(serving.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { listener, acceptor: TlsAcceptor::from(Arc::new(config)), serving })
    }

    /// Where the serving certificate is installed.
    pub(crate) fn serving(&self) -> Arc<ServingCertificate> {
        self.serving.clone()
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` as node `node`, asking the API server through `client` about callers other
    /// than `system:masters`.
    pub async fn run(
        self,
        client: kube::Client,
        node: String,
        pods_dir: PathBuf,
        running: Arc<Running>,
        metrics: Arc<AgentMetrics>,
        shutdown: CancellationToken,
    ) {
        let auth = Auth::new(node.clone(), Arc::new(ApiReviewer(client.clone())));
        let handler = Arc::new(Handler { auth, node, client, pods_dir, running, metrics });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut backoff: Option<Duration> = None;
        let mut saturated = false;
        loop {
            // A free slot first: at the limit, connections wait in the listen backlog.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    saturated = false;
                    slot
                }
                Err(_) => {
                    // Once per episode: under a flood every freed slot would log otherwise.
                    if !std::mem::replace(&mut saturated, true) {
                        tracing::warn!(
                            limit = MAX_CONNECTIONS,
                            "kubelet endpoint connection limit reached, not accepting"
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    }
                }
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Go's net/http back-off (5 ms doubling to 1 s) instead of spinning on a listener that
                        // stays readable while the process is out of file descriptors.
                        let pause = backoff.map_or(Duration::from_millis(5), |d| (d * 2).min(Duration::from_secs(1)));
                        backoff = Some(pause);
                        tracing::warn!(error = %e, ?pause, "kubelet endpoint accept failed, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(pause) => continue,
                        }
                    }
                },
            };
            backoff = None;
            let (acceptor, handler, shutdown) = (self.acceptor.clone(), handler.clone(), shutdown.clone());
            tokio::spawn(async move {
                // The slot is the connection's until it ends; an upgraded exec or port-forward leaves the count
                // once upgraded (it is authenticated by then).
                let _slot = slot;
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let tls = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    handshake = handshake => match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                };
                // rustls checked the certificate against the cluster CA; what it may do is decided per request.
                let peer = Arc::new(auth::certificate_user(tls.get_ref().1.peer_certificates()));
                let service = hyper::service::service_fn(move |request| {
                    let (handler, peer) = (handler.clone(), peer.clone());
                    async move { Ok::<_, Infallible>(handler.serve(peer.as_ref().as_ref(), request).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                let connection = builder.serve_connection(TokioIo::new(tls), service).with_upgrades();
                tokio::select! {
                    _ = connection => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The content types of Prometheus' text format and of OpenMetrics (prometheus-client's encoding).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(code: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
    *response.status_mut() = code;
    response
}

/// What a request asks for, by its path: the segments are the API server's names, which `parse` checked.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `/containerLogs/{namespace}/{pod}/{container}`
    Logs { namespace: String, pod: String, container: String },
    /// `/exec/{namespace}/{pod}/{uid}/{container}`
    Exec { namespace: String, pod: String, uid: String, container: String },
    /// `/portForward/{namespace}/{pod}/{uid}`
    PortForward { namespace: String, pod: String, uid: String },
}

impl Route {
    /// The route `path` (as sent, not percent-decoded) names, or None. Anyone the API server lets proxy to
    /// nodes can call this port, so a segment that is not a name an object could have (empty, `.`, `..`, or
    /// with `/` or `%`, by Kubernetes' path segment rule) is an error before it reaches a file path or the
    /// API server's URL.
    fn parse(path: &str) -> Result<Option<Self>, String> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let route = match segments.as_slice() {
            ["containerLogs", namespace, pod, container] => {
                Route::Logs { namespace: namespace.to_string(), pod: pod.to_string(), container: container.to_string() }
            }
            ["exec", namespace, pod, uid, container] => Route::Exec {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                uid: uid.to_string(),
                container: container.to_string(),
            },
            ["portForward", namespace, pod, uid] => {
                Route::PortForward { namespace: namespace.to_string(), pod: pod.to_string(), uid: uid.to_string() }
            }
            _ => return Ok(None),
        };
        for segment in &segments[1..] {
            let errors = skiff_api::validation::path_segment_errors(segment);
            let error = if segment.is_empty() { Some("may not be empty") } else { errors.first().map(String::as_str) };
            if let Some(error) = error {
                return Err(format!("invalid path segment \"{segment}\": {error}"));
            }
        }
        Ok(Some(route))
    }

    fn namespace(&self) -> &str {
        match self {
            Route::Logs { namespace, .. } | Route::Exec { namespace, .. } | Route::PortForward { namespace, .. } => {
                namespace
            }
        }
    }

    fn pod(&self) -> &str {
        match self {
            Route::Logs { pod, .. } | Route::Exec { pod, .. } | Route::PortForward { pod, .. } => pod,
        }
    }

    /// The uid of `pod` (the route's pod, None when the API server has none) if this route may reach it on
    /// `node`: it is bound to `node`, the route's uid is its uid and its container one of its containers
    /// (init, regular or ephemeral, as the kubelet's `GetContainerSpec`); else the kubelet's 404 message. A pod
    /// of another node is one this node does not know.
    fn target<'p>(&self, pod: Option<&'p Pod>, node: &str) -> Result<&'p str, String> {
        let spec = pod.and_then(|pod| pod.spec.as_ref()).filter(|spec| spec.node_name.as_deref() == Some(node));
        let (Some(pod), Some(spec)) = (pod, spec) else {
            return Err(match self {
                Route::Logs { pod, .. } => format!("pod \"{pod}\" does not exist"),
                Route::Exec { .. } | Route::PortForward { .. } => "pod does not exist".to_string(),
            });
        };
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let has = |name: &str| {
            let init = spec.init_containers.iter().flatten().map(|c| &c.name);
            let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| &c.name);
            spec.containers.iter().map(|c| &c.name).chain(init).chain(ephemeral).any(|c| c == name)
        };
        match self {
            Route::Logs { pod, container, .. } if !has(container) => {
                Err(format!("container \"{container}\" not found in pod \"{pod}\""))
            }
            // The kubelet finds an exec's container by the pod's uid and the container's name.
            Route::Exec { uid: asked, container, .. } if asked != uid || !has(container) => {
                Err(format!("container not found (\"{container}\")"))
            }
            Route::PortForward { uid: asked, .. } if asked != uid => Err("pod not found".to_string()),
            _ => Ok(uid),
        }
    }
}

impl Handler {
    /// Answers `request` from the client `certified` by its connection's certificate, if any.
    async fn serve(&self, certified: Option<&UserInfo>, request: Request<Incoming>) -> Response<Body> {
        let (method, path) = (request.method(), request.uri().path());
        if let Err(refusal) = self.auth.check(certified, request.headers(), method, path).await {
            tracing::debug!(user = ?certified.map(|u| &u.name), %method, path, ?refusal, "request refused");
            return text(refusal.status(), refusal.body());
        }
        if let Some(figures) = self.figures(method, path) {
            return figures;
        }
        let route = match Route::parse(request.uri().path()) {
            Ok(Some(route)) => route,
            Ok(None) => return text(StatusCode::NOT_FOUND, "not found".into()),
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), route.namespace());
        let pod = match pods.get_opt(route.pod()).await {
            Ok(pod) => pod,
            Err(e) => return text(StatusCode::BAD_GATEWAY, e.to_string()),
        };
        let uid = match route.target(pod.as_ref(), &self.node) {
            Ok(uid) => uid.to_string(),
            Err(message) => return text(StatusCode::NOT_FOUND, message),
        };
        match route {
            Route::Logs { container, .. } => self.logs(&uid, &container, &request),
            Route::Exec { namespace, pod, container, .. } => {
                self.exec(&format!("{namespace}/{pod}"), &uid, &container, request)
            }
            Route::PortForward { namespace, pod, .. } => self.port_forward(format!("{namespace}/{pod}"), uid, request),
        }
    }

    /// The node's figures (see [`crate::metrics`]) when `path` names them.
    fn figures(&self, method: &http::Method, path: &str) -> Option<Response<Body>> {
        let (body, content_type) = match path {
            "/stats/summary" => {
                let forwarded = self.metrics.forwarded.stats();
                let summary = metrics::summary(&self.node, NodeUsage::read(), &self.running.samples(), forwarded);
                (serde_json::to_string(&summary).unwrap_or_default(), "application/json")
            }
            "/metrics/resource" => {
                (metrics::resource_metrics(NodeUsage::read(), &self.running.samples()), PROMETHEUS_TEXT)
            }
            "/metrics" => (self.metrics.encode(), OPENMETRICS_TEXT),
            _ => return None,
        };
        if method != http::Method::GET {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into()));
        }
        let mut response = text(StatusCode::OK, body);
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        Some(response)
    }

    /// Streams the log of `container` of the pod with `uid`, by the request's query.
    fn logs(&self, uid: &str, container: &str, request: &Request<Incoming>) -> Response<Body> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let flag = |key: &str| matches!(get(key), Some("true" | "1"));
        let since = match (get("sinceTime"), get("sinceSeconds").and_then(|s| s.parse::<i64>().ok())) {
            (Some(time), _) => time.parse::<jiff::Timestamp>().ok(),
            (None, Some(seconds)) => jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(seconds)).ok(),
            _ => None,
        };
        let query = LogQuery {
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            tail_lines: get("tailLines").and_then(|n| n.parse().ok()),
            since,
            limit_bytes: get("limitBytes").and_then(|n| n.parse().ok()),
        };
        // Every part checked by `Route`: the uid is the API server's and the container one of the pod's.
        let dir = self.pods_dir.join(uid).join("logs").join(container);
        match logs::read(&dir, container, query) {
            Ok(lines) => {
                let body =
                    StreamBody::new(ReceiverStream::new(lines).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
                let mut response = Response::new(BodyExt::boxed(body));
                response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                response
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

impl Handler {
    /// Accepts the WebSocket upgrade and runs the exec on the upgraded connection. What goes wrong with the
    /// container itself (not running, a runtime without exec) is told on the error channel, as the kubelet does.
    fn exec(&self, pod: &str, uid: &str, container: &str, mut request: Request<Incoming>) -> Response<Body> {
        let options = match ExecOptions::parse(request.uri().query().unwrap_or("")) {
            Ok(options) => options,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let headers = request.headers();
        let upgrade = headers.get(http::header::UPGRADE).and_then(|v| v.to_str().ok());
        let key = headers.get(http::header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes());
        let (Some(true), Some(key)) = (upgrade.map(|u| u.eq_ignore_ascii_case("websocket")), key) else {
            return text(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade request".into());
        };
        let offered = headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
        let Some(protocol) = Protocol::negotiate(offered) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("exec speaks {} or {}", Protocol::V5.name(), Protocol::V4.name()),
            );
        };
        let response = websocket_accepted(key, protocol.name());
        let target = self.running.exec(uid, container, pod);
        // A command line can carry secrets: it is no part of the span, and logged at debug only.
        let span = tracing::info_span!("exec", %pod, %container);
        span.in_scope(|| tracing::debug!(command = ?options.command, "exec"));
        on_upgrade(&mut request, span, move |upgraded| async move {
            let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
            exec::session(ws, protocol, target, options).await;
        });
        response
    }

    /// Accepts the upgrade to SPDY (tunnelled in WebSocket, or not) and serves the port-forward on the
    /// upgraded connection, to the pod's address on this node.
    fn port_forward(&self, pod: String, uid: String, mut request: Request<Incoming>) -> Response<Body> {
        let ip = match self.running.address(&uid, &pod) {
            Ok(ip) => ip,
            Err(message) => return text(StatusCode::NOT_FOUND, message),
        };
        let transport = match Transport::of(request.headers(), request.uri().query()) {
            Ok(transport) => transport,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let key = request.headers().get(http::header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes()).unwrap_or_default();
        let response = match &transport {
            Transport::WebSocket => websocket_accepted(key, portforward::TUNNEL_PROTOCOL),
            Transport::Channels(_) => websocket_accepted(key, portforward::CHANNEL_PROTOCOL),
            Transport::Spdy => switching_protocols([
                (http::header::UPGRADE, HeaderValue::from_static(portforward::SPDY_UPGRADE)),
                (
                    HeaderName::from_static(portforward::STREAM_PROTOCOL_HEADER),
                    HeaderValue::from_static(portforward::PROTOCOL),
                ),
            ]),
        };
        let span = tracing::info_span!("portforward", %pod);
        let target = PodTarget { name: pod, uid, ip };
        on_upgrade(&mut request, span, move |upgraded| portforward::session(upgraded, transport, target));
        response
    }
}

/// Runs `serve` on the connection once the upgrade the response agrees to has gone through.
fn on_upgrade<F, Fut>(request: &mut Request<Incoming>, span: tracing::Span, serve: F)
where
    F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(
        async move {
            match upgraded.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        }
        .instrument(span),
    );
}

/// `101 Switching Protocols` with `headers` and `Connection: Upgrade`.
fn switching_protocols<const N: usize>(headers: [(HeaderName, HeaderValue); N]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response.headers_mut().extend(headers.map(|(name, value)| (Some(name), value)));
    response
}

/// Accepts a WebSocket upgrade whose `Sec-WebSocket-Key` is `key`, speaking `protocol`.
fn websocket_accepted(key: &[u8], protocol: &'static str) -> Response<Body> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    match HeaderValue::from_str(&accept) {
        Ok(accept) => switching_protocols([
            (http::header::UPGRADE, HeaderValue::from_static("websocket")),
            (http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol)),
            (http::header::SEC_WEBSOCKET_ACCEPT, accept),
        ]),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn ca() -> (Vec<u8>, Issuer<'static, KeyPair>) {
        let crate::connect::tests::Ca { der, issuer } = crate::connect::tests::ca();
        (der, issuer)
    }

    /// A client certificate (DER) for `name` in `group`, signed by `ca`, and its key.
    fn client_cert(ca: &Issuer<'static, KeyPair>, name: &str, group: &str) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, group);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        (params.signed_by(&key, ca).unwrap().der().to_vec(), key)
    }

    /// Accepts any serving certificate: what the API server checks of the agent's is tested there.
    #[derive(Debug)]
    struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    /// GETs a log from the endpoint at `port` presenting `identity`; the response's status line and body, or
    /// the TLS error.
    async fn ask(port: u16, identity: Option<(Vec<u8>, KeyPair)>) -> Result<String, std::io::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider.signature_verification_algorithms)));
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                builder.with_client_auth_cert(vec![CertificateDer::from(cert)], key).unwrap()
            }
        };
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        tls.write_all(b"GET /containerLogs/default/web/main HTTP/1.1\r\nHost: node-a\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        tls.read_to_string(&mut response).await?;
        let status = response.lines().next().unwrap_or_default().to_string();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        Ok(format!("{status} {body}"))
    }

    /// A serving certificate (PEM) for node-a at 127.0.0.1 signed by `ca`, and its key.
    fn serving_cert(ca: &Issuer<'static, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["node-a".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "system:node:node-a");
        params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        (params.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
    }

    /// The certificate `server` presents to one handshake, verified against `ca` for 127.0.0.1.
    async fn presented(server: &KubeletServer, ca: &[u8]) -> Result<Vec<u8>, std::io::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port())).await?;
            let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            Ok(chain.first().map(|c| c.to_vec()).unwrap_or_default())
        };
        let accept = async {
            let (tcp, _) = server.listener.accept().await.unwrap();
            // Kept until the client has read the certificate.
            server.acceptor.accept(tcp).await
        };
        tokio::join!(connect, accept).0
    }

    #[test]
    fn paths_name_routes_of_names_only() {
        let logs = |container: &str| Route::Logs {
            namespace: "default".into(),
            pod: "web".into(),
            container: container.into(),
        };
        assert_eq!(Route::parse("/containerLogs/default/web/main"), Ok(Some(logs("main"))));
        assert_eq!(Route::parse("/containerLogs/default/web/main/"), Ok(Some(logs("main"))));
        let exec = Route::Exec { namespace: "ns".into(), pod: "p".into(), uid: "u".into(), container: "c".into() };
        assert_eq!(Route::parse("/exec/ns/p/u/c"), Ok(Some(exec)));
        let forward = Route::PortForward { namespace: "ns".into(), pod: "p".into(), uid: "u".into() };
        assert_eq!(Route::parse("/portForward/ns/p/u"), Ok(Some(forward)));
        for other in ["/", "/containerLogs/default/web", "/containerLogs/default/web/main/x", "/stats/summary"] {
            assert_eq!(Route::parse(other), Ok(None), "{other}");
        }
        // Nothing that could walk a file path or another URL gets through: the path is not percent-decoded, so
        // `%` is refused too.
        let cases = [
            ("/containerLogs/default/web/..", r#"invalid path segment "..": may not be '..'"#),
            ("/containerLogs/default/web/.", r#"invalid path segment ".": may not be '.'"#),
            ("/containerLogs/default/../main", r#"invalid path segment "..": may not be '..'"#),
            ("/containerLogs/../web/main", r#"invalid path segment "..": may not be '..'"#),
            ("/containerLogs/default/web/%2e%2e", r#"invalid path segment "%2e%2e": may not contain '%'"#),
            ("/containerLogs/default/web/..%2Fetc", r#"invalid path segment "..%2Fetc": may not contain '%'"#),
            ("/containerLogs/default//main", r#"invalid path segment "": may not be empty"#),
            ("/exec/default/web/../main", r#"invalid path segment "..": may not be '..'"#),
            ("/portForward/default/web/..", r#"invalid path segment "..": may not be '..'"#),
        ];
        for (path, error) in cases {
            assert_eq!(Route::parse(path), Err(error.to_string()), "{path}");
        }
    }

    #[test]
    fn a_route_reaches_only_this_node_s_pods_and_their_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {
                "nodeName": "node-a",
                "initContainers": [{"name": "setup"}],
                "containers": [{"name": "main"}],
                "ephemeralContainers": [{"name": "debug"}],
            },
        }))
        .unwrap();
        let route = |path: &str| Route::parse(path).unwrap().unwrap();
        for container in ["main", "setup", "debug"] {
            let logs = route(&format!("/containerLogs/default/web/{container}"));
            assert_eq!(logs.target(Some(&pod), "node-a"), Ok("u-1"), "{container}");
            let exec = route(&format!("/exec/default/web/u-1/{container}"));
            assert_eq!(exec.target(Some(&pod), "node-a"), Ok("u-1"), "{container}");
        }
        assert_eq!(route("/portForward/default/web/u-1").target(Some(&pod), "node-a"), Ok("u-1"));

        // A pod the API server does not have, or another node's, is one this node does not know.
        let logs = route("/containerLogs/default/web/main");
        let missing = Err(r#"pod "web" does not exist"#.to_string());
        assert_eq!((logs.target(None, "node-a"), logs.target(Some(&pod), "node-b")), (missing.clone(), missing));
        let exec = route("/exec/default/web/u-1/main");
        assert_eq!(exec.target(Some(&pod), "node-b"), Err("pod does not exist".to_string()));
        let forward = route("/portForward/default/web/u-1");
        assert_eq!(forward.target(None, "node-a"), Err("pod does not exist".to_string()));
        let mut unbound = pod.clone();
        unbound.spec.as_mut().unwrap().node_name = None;
        assert_eq!(forward.target(Some(&unbound), "node-a"), Err("pod does not exist".to_string()));

        // A container it does not have, or another pod's uid.
        let other = route("/containerLogs/default/web/sidecar");
        assert_eq!(other.target(Some(&pod), "node-a"), Err(r#"container "sidecar" not found in pod "web""#.into()));
        let other = route("/exec/default/web/u-1/sidecar");
        assert_eq!(other.target(Some(&pod), "node-a"), Err(r#"container not found ("sidecar")"#.into()));
        let stale = route("/exec/default/web/u-0/main");
        assert_eq!(stale.target(Some(&pod), "node-a"), Err(r#"container not found ("main")"#.into()));
        let stale = route("/portForward/default/web/u-0");
        assert_eq!(stale.target(Some(&pod), "node-a"), Err("pod not found".into()));
    }

    #[tokio::test]
    async fn each_handshake_serves_the_certificate_installed_last() {
        let (ca_der, issuer) = ca();
        let server = KubeletServer::bind("127.0.0.1:0".parse().unwrap(), std::slice::from_ref(&ca_der)).await.unwrap();
        assert!(presented(&server, &ca_der).await.is_err(), "nothing to serve before a certificate is installed");
        let der = |pem: &str| x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        let (first, key) = serving_cert(&issuer);
        server.serving().install(&first, &key).unwrap();
        assert_eq!(presented(&server, &ca_der).await.unwrap(), der(&first));
        let (second, key) = serving_cert(&issuer);
        server.serving().install(&second, &key).unwrap();
        assert_eq!(presented(&server, &ca_der).await.unwrap(), der(&second), "renewed without a restart");
        assert!(server.serving().install(&second, "no key").is_err());
        let (_, other_key) = serving_cert(&issuer);
        assert!(server.serving().install(&second, &other_key).is_err(), "a key that is not the certificate's");
    }

    #[tokio::test]
    async fn clients_are_known_by_certificates_from_the_cluster_ca() {
        let (ca_der, issuer) = ca();
        let server = KubeletServer::bind("127.0.0.1:0".parse().unwrap(), &[ca_der]).await.unwrap();
        let (cert, key) = serving_cert(&issuer);
        server.serving().install(&cert, &key).unwrap();
        let port = server.port();
        // A client of no server: whoever the API server must judge meets an authorization error, and a request
        // that passes fails looking its pod up.
        let nowhere = kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let pods = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let running = Arc::new(Running::default());
        let metrics = Arc::new(AgentMetrics::new(running.clone()));
        let dir = pods.path().to_path_buf();
        tokio::spawn(server.run(nowhere, "node-a".into(), dir, running, metrics, shutdown.clone()));

        let anonymous = ask(port, None).await.unwrap();
        assert_eq!(anonymous, "HTTP/1.1 401 Unauthorized Unauthorized");
        let alice = ask(port, Some(client_cert(&issuer, "alice", "developers"))).await.unwrap();
        assert_eq!(
            alice,
            "HTTP/1.1 500 Internal Server Error \
             Authorization error (user=alice, verb=get, resource=nodes, subresource=proxy)"
        );
        let node = ask(port, Some(client_cert(&issuer, "system:node:b", "system:nodes"))).await.unwrap();
        assert_eq!(node, "HTTP/1.1 401 Unauthorized Unauthorized", "a node's certificate is no one here");
        let masters = skiff_api::authz::MASTERS;
        let apiserver = ask(port, Some(client_cert(&issuer, "kube-apiserver-kubelet-client", masters))).await.unwrap();
        assert!(apiserver.starts_with("HTTP/1.1 502"), "past authentication, the pod lookup fails: {apiserver}");
        let (_, stranger) = ca();
        let forged = ask(port, Some(client_cert(&stranger, "kube-apiserver-kubelet-client", masters))).await;
        assert!(forged.is_err(), "a certificate from another CA fails the handshake: {forged:?}");
        shutdown.cancel();
    }
}
