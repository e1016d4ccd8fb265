//! Reaching a node's agent for `pods/{name}/log`, `pods/{name}/exec` and `pods/{name}/portforward`: the
//! agent's address and port come from its Node, its self-signed certificate is pinned by the SHA-256 the Node
//! publishes, and the server authenticates with its own client certificate from the cluster CA
//! ([`KubeletClientIdentity`], `kube-apiserver-kubelet-client` in `system:masters`, as kubeadm's
//! `apiserver-kubelet-client.crt`), the one identity an agent serves. An exec or a port-forward is an
//! upgrade passed through to the agent, as kube-apiserver does with the kubelet: the agent speaks the protocol
//! (WebSocket channels for exec; SPDY, in WebSocket or not, for port-forward), this server splices bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::Digest;
use skiff_api::resources;
use tracing::Instrument;

use crate::error::ApiError;
use crate::objects::Objects;
use crate::router::AppState;

/// The user the server is to kubelet ports (kube-apiserver's `--kubelet-client-certificate` subject).
pub const API_SERVER_USER: &str = "kube-apiserver-kubelet-client";

/// The Node annotation holding the agent certificate's SHA-256 (set by the node agent).
pub const CERT_ANNOTATION: &str = "skiff.dev/kubelet-cert-sha256";

/// Where a SPDY client names the stream protocols it speaks (`portforward.k8s.io`), and the agent the one
/// it chose.
const STREAM_PROTOCOL: HeaderName = HeaderName::from_static("x-stream-protocol-version");

/// The client certificate (signed by the cluster CA) and key, PEM, the API server presents to agents.
#[derive(Clone)]
pub struct KubeletClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The key stays out of logs.
impl std::fmt::Debug for KubeletClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClientIdentity").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl KubeletClientIdentity {
    /// The certificate chain and key as rustls takes them.
    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let certs = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the kubelet client certificate is not PEM: {e}"))?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| format!("the kubelet client key is not PEM: {e}"))?
            .ok_or("the kubelet client key holds no private key")?;
        Ok((certs, key))
    }
}

/// Streams a container's log from the node running it. `query` is the client's query string, passed on.
pub async fn pod_logs(
    objects: &Objects,
    identity: &KubeletClientIdentity,
    ns: &str,
    name: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let target = locate(objects, ns, name).await?;
    let container = container(&target.pod, name, &pairs)?;
    let mut sender = target.connect(identity).await?;
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", forwarded(&pairs));
    let request = target.request(path).body(Empty::<bytes::Bytes>::new()).map_err(|e| target.unreachable(e))?;
    let response = sender.send_request(request).await.map_err(|e| target.unreachable(e))?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let mut out = Response::new(Body::new(response.into_body()));
    out.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// Runs a command in a container (`kubectl exec`): checks the request, then passes its WebSocket upgrade
/// through to the agent on the pod's node.
pub async fn pod_exec(
    state: &AppState,
    ns: &str,
    name: &str,
    request: &mut http::request::Parts,
) -> Result<Response, ApiError> {
    let query = request.uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    if !pairs.iter().any(|(k, v)| k == "command" && !v.is_empty()) {
        return Err(ApiError::BadRequest("you must specify at least one command for the container".into()));
    }
    let target = locate(&state.objects, ns, name).await?;
    let container = container(&target.pod, name, &pairs)?;
    if let Some(phase @ ("Succeeded" | "Failed")) = target.pod.pointer("/status/phase").and_then(Value::as_str) {
        return Err(ApiError::BadRequest(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let websocket = request
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket || !request.headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(ApiError::BadRequest("Upgrade request required: exec is served over WebSocket".into()));
    }
    let path = format!("/exec/{ns}/{name}/{}/{container}?{}", target.uid(), forwarded(&pairs));
    let span = tracing::info_span!("exec", pod = %format!("{ns}/{name}"), %container);
    target.splice(state, path, request, "exec", span).await
}

/// Forwards connections to a pod's ports (`kubectl port-forward`): passes the upgrade through to the agent
/// on the pod's node, which speaks the port-forward protocol over whichever transport the client asked for
/// (SPDY tunnelled in WebSocket, kubectl's first try, or plain SPDY, its fallback).
pub async fn pod_port_forward(
    state: &AppState,
    ns: &str,
    name: &str,
    request: &mut http::request::Parts,
) -> Result<Response, ApiError> {
    let target = locate(&state.objects, ns, name).await?;
    if !request.headers.contains_key(header::UPGRADE) {
        return Err(ApiError::BadRequest("Upgrade request required: port-forward is served over SPDY".into()));
    }
    let path = format!("/portForward/{ns}/{name}/{}", target.uid());
    let span = tracing::info_span!("portforward", pod = %format!("{ns}/{name}"));
    target.splice(state, path, request, "port-forward", span).await
}

/// A pod and how to reach the agent of the node it is bound to.
struct Target {
    pod: Value,
    node_name: String,
    /// `host:port` of the agent's endpoint.
    address: String,
    /// The agent certificate's SHA-256, lowercase hex.
    pin: String,
}

/// Finds the pod and its node's agent: the checks the kube-apiserver makes before it reaches a kubelet.
async fn locate(objects: &Objects, ns: &str, name: &str) -> Result<Target, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let nodes = resources::find("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let pod = objects.get(pods, Some(ns), name).await?;
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let node_name =
        node_name.ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?.to_string();
    let node = objects.get(nodes, None, &node_name).await?;
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no InternalIP")))?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250);
    let host = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
    let pin =
        node.pointer(&format!("/metadata/annotations/{}", CERT_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str);
    let pin = pin.ok_or_else(|| ApiError::BadRequest(format!("node {node_name} publishes no agent certificate")))?;
    Ok(Target { address: format!("{host}:{port}"), pin: pin.to_ascii_lowercase(), node_name, pod })
}

/// The container of `pod` the client named, or its only one.
fn container(pod: &Value, name: &str, pairs: &[(String, String)]) -> Result<String, ApiError> {
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match pairs.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()) {
        Some(container) if containers.contains(&container) => Ok(container.to_string()),
        Some(container) => Err(ApiError::BadRequest(format!("container {container} is not valid for pod {name}"))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// The client's query without `container`, which the agent's path carries.
fn forwarded(pairs: &[(String, String)]) -> String {
    let forwarded: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "container").collect();
    serde_urlencoded::to_string(forwarded).unwrap_or_default()
}

impl Target {
    fn unreachable(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(format!("cannot reach the agent on node {}: {e}", self.node_name))
    }

    fn uid(&self) -> &str {
        self.pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
    }

    /// Asks the agent at `path` to upgrade as the client asked for `what` (exec, port-forward), answers the
    /// client with the agent's 101, and splices the two upgraded connections (in `span`) until either side
    /// closes or the server shuts down.
    async fn splice(
        &self,
        state: &AppState,
        path: String,
        request: &mut http::request::Parts,
        what: &str,
        span: tracing::Span,
    ) -> Result<Response, ApiError> {
        // HTTP/2 requests carry no upgrade.
        let client = request
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| ApiError::BadRequest(format!("{what} needs an HTTP/1.1 connection to upgrade")))?;
        let mut upgrade = self.request(path).header(header::CONNECTION, "Upgrade");
        for key in [
            header::UPGRADE,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
            STREAM_PROTOCOL,
        ] {
            for value in request.headers.get_all(&key) {
                upgrade = upgrade.header(&key, value);
            }
        }
        let upgrade = upgrade.body(Empty::<bytes::Bytes>::new()).map_err(|e| self.unreachable(e))?;
        let mut sender = self.connect(&state.kubelet_client).await?;
        let mut response = sender.send_request(upgrade).await.map_err(|e| self.unreachable(e))?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(response).await);
        }
        let agent = hyper::upgrade::on(&mut response);
        let shutdown = state.shutdown.clone();
        tokio::spawn(
            async move {
                let (client, agent) = match tokio::try_join!(client, agent) {
                    Ok(upgraded) => upgraded,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        return;
                    }
                };
                let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut agent) => {
                        if let Err(e) = copied {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(span),
        );
        let mut out = Response::new(Body::empty());
        *out.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        for key in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_PROTOCOL,
            STREAM_PROTOCOL,
        ] {
            if let Some(value) = response.headers().get(&key) {
                out.headers_mut().insert(key, value.clone());
            }
        }
        Ok(out)
    }

    fn request(&self, path: String) -> http::request::Builder {
        http::Request::get(path).header(header::HOST, &self.node_name)
    }

    /// An HTTP/1.1 connection to the agent over TLS with its pinned certificate, presenting `identity`, able
    /// to upgrade.
    async fn connect(&self, identity: &KubeletClientIdentity) -> Result<SendRequest<Empty<bytes::Bytes>>, ApiError> {
        let (chain, key) = identity.chain().map_err(ApiError::Internal)?;
        let tcp = tokio::net::TcpStream::connect(&self.address).await.map_err(|e| self.unreachable(e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            Arc::new(Pinned { sha256: self.pin.clone(), algorithms: provider.signature_verification_algorithms });
        let config = rustls::ClientConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.unreachable(e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| ApiError::Internal(format!("the kubelet client certificate: {e}")))?;
        let server_name = ServerName::try_from(self.node_name.clone()).map_err(|e| self.unreachable(e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| self.unreachable(e))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| self.unreachable(e))?;
        tokio::spawn(connection.with_upgrades());
        Ok(sender)
    }
}

/// The agent's refusals (no such container, no previous instance) are the client's problem, as in Kubernetes.
async fn refusal(response: http::Response<hyper::body::Incoming>) -> ApiError {
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    ApiError::BadRequest(String::from_utf8_lossy(&body).trim().to_string())
}

/// Accepts exactly the certificate whose SHA-256 the Node published, with signatures checked as usual.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if hex::encode(sha2::Sha256::digest(end_entity.as_ref())) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the agent's certificate is not the one its Node published".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
