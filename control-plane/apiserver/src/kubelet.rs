//! Reaching a node's agent for `pods/{name}/log`, `pods/{name}/exec` and `pods/{name}/portforward`: the
//! agent's address and port come from its Node; its serving certificate must chain to the cluster CA (the
//! agent has it signed through a `kubernetes.io/kubelet-serving` CertificateSigningRequest), name the
//! address dialled, and be the node's (`system:node:NAME` in `system:nodes`), as kube-apiserver checks a
//! kubelet with `--kubelet-certificate-authority`; and the server authenticates with its own client
//! certificate from the cluster CA ([`KubeletClientIdentity`], `kube-apiserver-kubelet-client` in
//! `system:masters`, as kubeadm's `apiserver-kubelet-client.crt`). An exec or a port-forward is an upgrade
//! passed through to the agent, as kube-apiserver does with the kubelet: the agent speaks the protocol
//! (WebSocket channels for exec; SPDY, in WebSocket or not, for port-forward), this server splices bytes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use skiff_api::authz::{NODE_USER_PREFIX, NODES};
use skiff_api::resources;
use tracing::Instrument;

use crate::error::ApiError;
use crate::objects::Objects;
use crate::pki::PkiError;
use crate::router::AppState;

/// The user the server is to kubelet ports (kube-apiserver's `--kubelet-client-certificate` subject).
pub const API_SERVER_USER: &str = "kube-apiserver-kubelet-client";

/// Where a SPDY client names the stream protocols it speaks (`portforward.k8s.io`), and the agent the one
/// it chose.
const STREAM_PROTOCOL: HeaderName = HeaderName::from_static("x-stream-protocol-version");

/// What the API server needs to reach agents, parsed once at start rather than per connection: the client
/// certificate (signed by the cluster CA) and key it presents to them, and the verifier of the cluster CA
/// their serving certificates must chain to.
#[derive(Clone)]
pub struct KubeletClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    /// Shared: a private key is not `Clone`, each connection takes a copy.
    key: Arc<PrivateKeyDer<'static>>,
    provider: Arc<CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
}

/// The key stays out of logs.
impl std::fmt::Debug for KubeletClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClientIdentity").field("chain", &self.chain).finish_non_exhaustive()
    }
}

impl KubeletClientIdentity {
    /// The identity of the client certificate `cert_pem` with its key `key_pem`, trusting agents whose
    /// serving certificates chain to `ca_pem`.
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, PkiError> {
        let pem = |what| move |source| PkiError::Pem { what, source };
        let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem("kubelet client certificate"))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).map_err(pem("kubelet client key"))?;
        let key = key.ok_or_else(|| {
            pem("kubelet client key")(std::io::Error::new(std::io::ErrorKind::InvalidData, "no private key"))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(ca.map_err(pem("cluster CA"))?)?;
        }
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(PkiError::KubeletVerifier)?;
        Ok(Self { chain, key: Arc::new(key), provider, webpki })
    }

    /// Checks an agent's serving certificate: from the cluster CA, for the address dialled, node `node`'s.
    fn verifier(&self, node: &str) -> NodeServing {
        NodeServing { webpki: self.webpki.clone(), user: format!("{NODE_USER_PREFIX}{node}") }
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
    let mut sender = target.agent.connect(identity).await?;
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", forwarded(&pairs));
    let request =
        target.agent.request(path).body(Empty::<bytes::Bytes>::new()).map_err(|e| target.agent.unreachable(e))?;
    let response = sender.send_request(request).await.map_err(|e| target.agent.unreachable(e))?;
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
/// (SPDY tunnelled in WebSocket, kubectl's first try, plain SPDY, its fallback, or WebSocket channels).
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
    // The ports of the WebSocket channel protocol come in the query.
    let query = request.uri.query().map(|query| format!("?{query}")).unwrap_or_default();
    let path = format!("/portForward/{ns}/{name}/{}{query}", target.uid());
    let span = tracing::info_span!("portforward", pod = %format!("{ns}/{name}"));
    target.splice(state, path, request, "port-forward", span).await
}

/// A pod and the agent of the node it is bound to.
struct Target {
    pod: Value,
    agent: Agent,
}

/// How to reach a node's agent.
struct Agent {
    node_name: String,
    /// The Node's InternalIP, which the agent's serving certificate must name.
    ip: IpAddr,
    /// The agent's endpoint's port.
    port: u16,
}

/// `GET path` from the agent of the Node object `node`: the body of its 200 answer.
pub async fn agent_get(identity: &KubeletClientIdentity, node: &Value, path: &str) -> Result<bytes::Bytes, ApiError> {
    let agent = Agent::of(node)?;
    let mut sender = agent.connect(identity).await?;
    let request =
        agent.request(path.to_string()).body(Empty::<bytes::Bytes>::new()).map_err(|e| agent.unreachable(e))?;
    let response = sender.send_request(request).await.map_err(|e| agent.unreachable(e))?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let body = response.into_body().collect().await.map_err(|e| agent.unreachable(e))?;
    Ok(body.to_bytes())
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
    Ok(Target { pod, agent: Agent::of(&node)? })
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
        let mut upgrade = self.agent.request(path).header(header::CONNECTION, "Upgrade");
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
        let upgrade = upgrade.body(Empty::<bytes::Bytes>::new()).map_err(|e| self.agent.unreachable(e))?;
        let mut sender = self.agent.connect(&state.kubelet_client).await?;
        let mut response = sender.send_request(upgrade).await.map_err(|e| self.agent.unreachable(e))?;
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
}

impl Agent {
    /// The agent of the Node object `node`: its InternalIP and its kubelet endpoint's port.
    fn of(node: &Value) -> Result<Self, ApiError> {
        let node_name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let ip = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
            .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no InternalIP")))?;
        let port =
            node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250);
        let port = u16::try_from(port)
            .map_err(|_| ApiError::BadRequest(format!("node {node_name} reports kubelet port {port}")))?;
        Ok(Agent { node_name, ip, port })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(format!("cannot reach the agent on node {}: {e}", self.node_name))
    }

    fn request(&self, path: String) -> http::request::Builder {
        http::Request::get(path).header(header::HOST, &self.node_name)
    }

    /// An HTTP/1.1 connection to the agent over TLS, its serving certificate checked (see the module's
    /// documentation), presenting `identity`, able to upgrade.
    async fn connect(&self, identity: &KubeletClientIdentity) -> Result<SendRequest<Empty<bytes::Bytes>>, ApiError> {
        let tcp = tokio::net::TcpStream::connect((self.ip, self.port)).await.map_err(|e| self.unreachable(e))?;
        let config = rustls::ClientConfig::builder_with_provider(identity.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.unreachable(e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(identity.verifier(&self.node_name)))
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| ApiError::Internal(format!("the kubelet client certificate: {e}")))?;
        // The address dialled, as kube-apiserver names a kubelet: the certificate must carry it as an IP SAN.
        let server_name = ServerName::IpAddress(self.ip.into());
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

/// Accepts an agent's serving certificate when webpki does (from the cluster CA, valid now, for server auth,
/// naming the address dialled) and its subject is the node's: another certificate from the cluster CA that
/// happens to name the address (the API server's own, on a shared host) is not the agent's.
#[derive(Debug)]
struct NodeServing {
    webpki: Arc<WebPkiServerVerifier>,
    /// `system:node:NAME`.
    user: String,
}

impl NodeServing {
    /// Whether `certificate` (DER) names this node in `system:nodes`, as a node's serving certificate does.
    fn names_the_node(&self, certificate: &CertificateDer<'_>) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(certificate) else { return false };
        let subject = cert.subject();
        let common_names: Vec<&str> = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
        let organizations: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        common_names == [self.user.as_str()] && organizations == [NODES]
    }
}

impl ServerCertVerifier for NodeServing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if self.names_the_node(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("the agent's certificate is not {}'s in {NODES}", self.user)))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    use super::*;

    /// A CA: its PEM and what signs with it.
    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "skiff-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    }

    /// A serving certificate (DER) for `subject` (common name, organization) naming `sans`, signed by `ca`.
    fn serving(ca: &Issuer<'static, KeyPair>, subject: (&str, &str), sans: &[&str]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject.0);
        params.distinguished_name.push(DnType::OrganizationName, subject.1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.signed_by(&KeyPair::generate().unwrap(), ca).unwrap().der().clone()
    }

    #[test]
    fn an_agent_is_trusted_for_a_serving_certificate_of_its_own_from_the_cluster_ca() {
        let (ca_pem, issuer) = ca();
        let client = KeyPair::generate().unwrap();
        let client_pem =
            CertificateParams::new(Vec::<String>::new()).unwrap().signed_by(&client, &issuer).unwrap().pem();
        let identity = KubeletClientIdentity::new(&client_pem, &client.serialize_pem(), &ca_pem).unwrap();
        let verifier = identity.verifier("node-a");
        let keyless = KubeletClientIdentity::new(&client_pem, "", &ca_pem);
        assert!(matches!(keyless, Err(PkiError::Pem { what: "kubelet client key", .. })), "{keyless:?}");
        let address = ServerName::IpAddress("10.0.0.1".parse::<IpAddr>().unwrap().into());
        let check = |cert: &CertificateDer<'_>| verifier.verify_server_cert(cert, &[], &address, &[], UnixTime::now());

        let own = serving(&issuer, ("system:node:node-a", NODES), &["node-a", "10.0.0.1"]);
        assert!(check(&own).is_ok());
        let refused = [
            ("another node's", serving(&issuer, ("system:node:node-b", NODES), &["10.0.0.1"])),
            ("not a node's", serving(&issuer, ("skiff-apiserver", "skiff"), &["10.0.0.1"])),
            ("for another address", serving(&issuer, ("system:node:node-a", NODES), &["10.0.0.2"])),
            ("from another CA", serving(&ca().1, ("system:node:node-a", NODES), &["10.0.0.1"])),
        ];
        for (what, cert) in refused {
            assert!(check(&cert).is_err(), "{what}");
        }
    }
}
