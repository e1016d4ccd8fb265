//! The agent's HTTPS endpoint, which only the API server uses: `GET /containerLogs/{ns}/{pod}/{container}`
//! with the kubelet's query parameters; `GET /exec/{ns}/{pod}/{uid}/{container}?command=..`, a WebSocket
//! upgrade, and `/portForward/{ns}/{pod}/{uid}`, an upgrade to SPDY (in WebSocket or not), both passed through
//! by the API server from the client. The certificate is self-signed; the API server pins its SHA-256 from the
//! Node's annotation.
//!
//! Only the API server is served, as the kubelet with anonymous access off and the API server's client
//! certificate authorized: a client must present a certificate signed by the cluster CA naming
//! [`APISERVER_CLIENT`] in `system:masters`. A connection without one is answered 401 Unauthorized, another
//! identity (a node's, a user's) 403 Forbidden, both in the kubelet's words. The handshake accepts clients
//! without a certificate so that they get that answer rather than a TLS alert.
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
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use sha2::Digest;
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

/// The common name of the API server's client certificate, the one identity served (kubeadm's name for it).
pub const APISERVER_CLIENT: &str = "kube-apiserver-kubelet-client";
/// The group [`APISERVER_CLIENT`] must be in.
const MASTERS_GROUP: &str = "system:masters";

pub struct KubeletServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    /// SHA-256 of the serving certificate's DER, published on the Node for the API server to pin.
    pub cert_sha256: String,
}

struct Handler {
    client: kube::Client,
    pods_dir: PathBuf,
    running: Arc<Running>,
}

impl KubeletServer {
    /// Listens on `addr` with a new self-signed certificate for `name`, accepting client certificates signed
    /// by `ca` (DER).
    pub async fn bind(addr: SocketAddr, name: &str, ca: &[Vec<u8>]) -> Result<Self, AgentError> {
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
            .and_then(|b| b.with_client_cert_verifier(clients).with_single_cert(vec![cert.der().clone()], key_der))
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
        running: Arc<Running>,
        shutdown: CancellationToken,
    ) {
        let handler = Arc::new(Handler { client, pods_dir, running });
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
                // rustls checked the certificate against the cluster CA; who it names is decided per request.
                let peer = Arc::new(Peer::of(tls.get_ref().1.peer_certificates()));
                let service = hyper::service::service_fn(move |request| {
                    let (handler, peer) = (handler.clone(), peer.clone());
                    async move { Ok::<_, Infallible>(handler.serve(&peer, request).await) }
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

/// Who a connection's client certificate names (rustls has checked it was signed by the cluster CA).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    Anonymous,
    /// The subject's common name and organizations.
    User {
        name: String,
        groups: Vec<String>,
    },
}

impl Peer {
    fn of(certificates: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(leaf) = certificates.and_then(|chain| chain.first()) else { return Peer::Anonymous };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else { return Peer::Anonymous };
        let subject = cert.subject();
        let name = subject.iter_common_name().find_map(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
        let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
        Peer::User { name, groups }
    }
}

/// The refusal of a request with `method` from `peer`, unless it is the API server's. Worded as the
/// kubelet's: `Unauthorized` without an identity; with another, `Forbidden` naming what it asked, which the
/// kubelet maps to `nodes/proxy` for every path served here.
fn refusal(peer: &Peer, method: &http::Method) -> Option<Response<Body>> {
    match peer {
        Peer::Anonymous => Some(text(StatusCode::UNAUTHORIZED, "Unauthorized".into())),
        Peer::User { name, groups } if name == APISERVER_CLIENT && groups.iter().any(|g| g == MASTERS_GROUP) => None,
        Peer::User { name, .. } => {
            let verb = match *method {
                http::Method::POST => "create".to_string(),
                http::Method::PUT => "update".to_string(),
                ref other => other.as_str().to_ascii_lowercase(),
            };
            let message = format!("Forbidden (user={name}, verb={verb}, resource=nodes, subresource=proxy)");
            Some(text(StatusCode::FORBIDDEN, message))
        }
    }
}

impl Handler {
    async fn serve(&self, peer: &Peer, request: Request<Incoming>) -> Response<Body> {
        if let Some(refusal) = refusal(peer, request.method()) {
            tracing::debug!(?peer, path = %request.uri().path(), "refused a client other than the API server");
            return refusal;
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

    #[test]
    fn only_the_api_server_is_served() {
        let user = |name: &str, group: &str| Peer::User { name: name.into(), groups: vec![group.into()] };
        let status = |peer: &Peer, method: http::Method| refusal(peer, &method).map(|r| r.status());
        assert_eq!(status(&user(APISERVER_CLIENT, MASTERS_GROUP), http::Method::GET), None);
        assert_eq!(status(&Peer::Anonymous, http::Method::GET), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(&user(APISERVER_CLIENT, "system:nodes"), http::Method::GET), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&user("system:node:b", "system:nodes"), http::Method::POST), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&user("admin", MASTERS_GROUP), http::Method::GET), Some(StatusCode::FORBIDDEN));

        let (_, issuer) = ca();
        let (der, _) = client_cert(&issuer, "system:node:b", "system:nodes");
        assert_eq!(Peer::of(Some(&[CertificateDer::from(der)])), user("system:node:b", "system:nodes"));
        assert_eq!(Peer::of(None), Peer::Anonymous);
    }

    /// Accepts the agent's self-signed certificate, as the API server does by its pin.
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

    #[tokio::test]
    async fn clients_are_known_by_certificates_from_the_cluster_ca() {
        let (ca_der, issuer) = ca();
        let server = KubeletServer::bind("127.0.0.1:0".parse().unwrap(), "node-a", &[ca_der]).await.unwrap();
        let port = server.port();
        // A client of no server: a request that passes authentication fails looking its pod up.
        let nowhere = kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let pods = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let running = Arc::new(Running::default());
        tokio::spawn(server.run(nowhere, pods.path().to_path_buf(), running, shutdown.clone()));

        let anonymous = ask(port, None).await.unwrap();
        assert_eq!(anonymous, "HTTP/1.1 401 Unauthorized Unauthorized");
        let node = ask(port, Some(client_cert(&issuer, "system:node:b", "system:nodes"))).await.unwrap();
        assert_eq!(
            node,
            "HTTP/1.1 403 Forbidden Forbidden (user=system:node:b, verb=get, resource=nodes, subresource=proxy)"
        );
        let apiserver = ask(port, Some(client_cert(&issuer, APISERVER_CLIENT, MASTERS_GROUP))).await.unwrap();
        assert!(apiserver.starts_with("HTTP/1.1 502"), "past authentication, the pod lookup fails: {apiserver}");
        let (_, stranger) = ca();
        let forged = ask(port, Some(client_cert(&stranger, APISERVER_CLIENT, MASTERS_GROUP))).await;
        assert!(forged.is_err(), "a certificate from another CA fails the handshake: {forged:?}");
        shutdown.cancel();
    }
}
