//! Reaching a node's agent for `pods/{name}/log`: the agent's address and port come from its Node, its
//! self-signed certificate is pinned by the SHA-256 the Node publishes, and the server authenticates with the
//! cluster's node token.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::Digest;
use skiff_api::resources;

use crate::error::ApiError;
use crate::objects::Objects;

/// The Node annotation holding the agent certificate's SHA-256 (set by the node agent).
pub const CERT_ANNOTATION: &str = "skiff.dev/kubelet-cert-sha256";

/// Streams a container's log from the node running it. `query` is the client's query string, passed on.
pub async fn pod_logs(
    objects: &Objects,
    node_token: &str,
    ns: &str,
    name: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let nodes = resources::find("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let pod = objects.get(pods, Some(ns), name).await?;
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let container =
        match pairs.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()) {
            Some(container) if containers.contains(&container) => container.to_string(),
            Some(container) => {
                return Err(ApiError::BadRequest(format!("container {container} is not valid for pod {name}")));
            }
            None if containers.len() == 1 => containers[0].to_string(),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
        };
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let node_name =
        node_name.ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let node = objects.get(nodes, None, node_name).await?;
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no InternalIP")))?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250);
    let pin =
        node.pointer(&format!("/metadata/annotations/{}", CERT_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str);
    let pin = pin.ok_or_else(|| ApiError::BadRequest(format!("node {node_name} publishes no agent certificate")))?;
    let forwarded: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "container").collect();
    let forwarded = serde_urlencoded::to_string(&forwarded).unwrap_or_default();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{forwarded}");
    let unreachable = |e: String| ApiError::Internal(format!("cannot reach the agent on node {node_name}: {e}"));
    let host = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
    let tcp = tokio::net::TcpStream::connect(format!("{host}:{port}")).await.map_err(|e| unreachable(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        Arc::new(Pinned { sha256: pin.to_ascii_lowercase(), algorithms: provider.signature_verification_algorithms });
    let config = rustls::ClientConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let server_name = ServerName::try_from(node_name.to_string()).map_err(|e| unreachable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, node_name)
        .header(http::header::AUTHORIZATION, format!("Bearer {node_token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let message = String::from_utf8_lossy(&body).into_owned();
        // The agent's refusals (no such container, no previous instance) are the client's problem, as in Kubernetes.
        return Err(ApiError::BadRequest(message.trim().to_string()));
    }
    let mut out = Response::new(Body::new(response.into_body()));
    out.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    Ok(out)
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
