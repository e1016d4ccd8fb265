//! The agent's HTTPS endpoint, which only the API server uses: `GET /containerLogs/{ns}/{pod}/{container}`
//! with the kubelet's query parameters; `GET /exec/{ns}/{pod}/{uid}/{container}?command=..`, a WebSocket
//! upgrade, and `/portForward/{ns}/{pod}/{uid}`, an upgrade to SPDY (in WebSocket or not), both passed through
//! by the API server from the client. The certificate is self-signed; the API server pins its SHA-256 from the
//! Node's annotation, and must present the cluster's node token (compared in constant time).
//!
//! Anyone who reaches the port can open connections, so what one may hold is bounded as on the API server
//! (`skiff_apiserver::connections`, whose numbers this follows; the agent depends on nothing of the control
//! plane): at most [`MAX_CONNECTIONS`] at once, further ones waiting in the listen backlog; a TLS handshake
//! within [`TLS_HANDSHAKE_TIMEOUT`]; request headers within [`HEADER_READ_TIMEOUT`]; accept errors backing
//! off as Go's do. A streamed log, an exec or a port-forward is never cut.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AgentError;
use crate::exec::{self, ExecOptions, Protocol, Running};
use crate::logs::{self, LogQuery};
use crate::portforward::{self, PodTarget, Transport};

/// Connections the endpoint holds at once. Its only clients are API servers, with one connection per log,
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
    /// SHA-256 of the serving certificate's DER, published on the Node for the API server to pin.
    pub cert_sha256: String,
}

struct Handler {
    client: kube::Client,
    pods_dir: PathBuf,
    token: String,
    running: Arc<Running>,
}

impl KubeletServer {
    pub async fn bind(addr: SocketAddr, name: &str) -> Result<Self, AgentError> {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| AgentError::Config(format!("cannot listen on {addr}: {e}")))?;
        let key = rcgen::KeyPair::generate().map_err(|e| AgentError::Config(e.to_string()))?;
        let names = vec![name.to_string(), addr.ip().to_string(), "localhost".to_string()];
        let params = rcgen::CertificateParams::new(names).map_err(|e| AgentError::Config(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| AgentError::Config(e.to_string()))?;
        let cert_sha256 = hex::encode(sha2::Sha256::digest(cert.der()));
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], key_der))
            .map_err(|e| AgentError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { listener, acceptor: TlsAcceptor::from(Arc::new(config)), cert_sha256 })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run(
        self,
        client: kube::Client,
        pods_dir: PathBuf,
        token: String,
        running: Arc<Running>,
        shutdown: CancellationToken,
    ) {
        let handler = Arc::new(Handler { client, pods_dir, token, running });
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
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.serve(request).await) }
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

fn text(code: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
    *response.status_mut() = code;
    response
}

impl Handler {
    async fn serve(&self, request: Request<Incoming>) -> Response<Body> {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.ct_eq(self.token.as_bytes())) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
        }
        let path: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
        if let ["exec", namespace, pod, uid, container] = path.as_slice() {
            let (pod, uid, container) = (format!("{namespace}/{pod}"), uid.to_string(), container.to_string());
            return self.exec(&pod, &uid, &container, request);
        }
        if let ["portForward", namespace, pod, uid] = path.as_slice() {
            let (pod, uid) = (format!("{namespace}/{pod}"), uid.to_string());
            return self.port_forward(pod, uid, request);
        }
        let ["containerLogs", namespace, pod, container] = path.as_slice() else {
            return text(StatusCode::NOT_FOUND, "not found".into());
        };
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let uid = match pods.get_opt(pod).await {
            Ok(Some(pod)) => pod.metadata.uid.unwrap_or_default(),
            Ok(None) => return text(StatusCode::NOT_FOUND, format!("pod \"{pod}\" not found")),
            Err(e) => return text(StatusCode::BAD_GATEWAY, e.to_string()),
        };
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
        let transport = match Transport::of(request.headers()) {
            Ok(transport) => transport,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let response = match transport {
            Transport::WebSocket => {
                let key = request.headers().get(http::header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes());
                websocket_accepted(key.unwrap_or_default(), portforward::TUNNEL_PROTOCOL)
            }
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
