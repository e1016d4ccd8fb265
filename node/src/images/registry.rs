//! Talking to registries through oci-client: one client per endpoint and operation.

use std::net::IpAddr;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use oci_client::secrets::RegistryAuth as OciAuth;

use super::RegistryAuth;
use super::layout::{self, ACCEPTED_MANIFESTS, OCI_MANIFEST};
use super::registries::{Endpoint, Registries};

/// A client for one endpoint, and the [`credentials`] it uses there, registered with it.
pub(crate) async fn client_for(
    endpoint: &Endpoint,
    secrets: &RegistryAuth,
) -> Result<(Client, OciAuth), OciDistributionError> {
    // oci-client is built without a bundled rustls provider so the whole binary shares ring. Installing
    // fails only when a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if endpoint.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        extra_root_certificates: endpoint.tls.ca_certificates.clone(),
        accept_invalid_certificates: endpoint.tls.insecure_skip_verify,
        client_identity_pem: endpoint.tls.client_identity_pem.clone(),
        // We choose among index entries ourselves (wasm platforms first), so oci-client never does.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(300)),
        ..ClientConfig::default()
    };
    let client = Client::try_from(config)?;
    let auth = credentials(endpoint, secrets);
    client.store_auth_if_needed(endpoint.reference.resolve_registry(), &auth).await;
    Ok((client, auth))
}

/// A pod's pull secret for the endpoint's host, else the registries file's credentials for it, else none.
fn credentials(endpoint: &Endpoint, secrets: &RegistryAuth) -> OciAuth {
    secrets.get(endpoint.reference.registry()).or_else(|| endpoint.auth.clone()).unwrap_or(OciAuth::Anonymous)
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _port)| host)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Fetches a manifest's raw bytes, checking them against the reference's digest when it names one.
/// Returns the bytes and their sha256 digest.
pub(crate) async fn fetch_manifest(
    client: &Client,
    reference: &Reference,
    auth: &OciAuth,
) -> Result<(Vec<u8>, String), OciDistributionError> {
    let (body, _) = client.pull_manifest_raw(reference, auth, &ACCEPTED_MANIFESTS).await?;
    let digest = layout::sha256_digest(&body);
    if let Some(expected) = reference.digest()
        && expected != digest
    {
        return Err(OciDistributionError::GenericError(Some(format!(
            "manifest digest {digest} does not match {expected}"
        ))));
    }
    Ok((body.to_vec(), digest))
}

/// Streams one blob into `file`, hashing and counting as it goes. Fails (leaving the file for the caller
/// to discard) when the bytes do not match the descriptor's digest or size.
pub(crate) async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    descriptor: &layout::Descriptor,
    file: &mut tokio::fs::File,
) -> Result<(), String> {
    let mut stream =
        client.pull_blob_stream(reference, descriptor.digest.as_str()).await.map_err(|e| registry_message(&e))?;
    let mut hasher = sha2::Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading blob {}: {e}", descriptor.digest))?;
        written += chunk.len() as u64;
        // Stop early rather than fill the disk when a registry sends more than it promised.
        if written > descriptor.size {
            return Err(format!("blob {} is larger than its declared {} bytes", descriptor.digest, descriptor.size));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| format!("writing blob {}: {e}", descriptor.digest))?;
    }
    if written != descriptor.size {
        return Err(format!("blob {} has {written} bytes, not the declared {}", descriptor.digest, descriptor.size));
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != descriptor.digest {
        return Err(format!("blob {} has digest {actual}", descriptor.digest));
    }
    file.flush().await.map_err(|e| format!("writing blob {}: {e}", descriptor.digest))
}

/// Pushes the three blobs of a wasm artifact and returns the manifest digest.
pub(crate) async fn push_artifact(
    reference: &Reference,
    secrets: &RegistryAuth,
    artifact: &layout::WasmArtifact,
    wasm: &[u8],
) -> Result<String, OciDistributionError> {
    let (client, auth) = client_for(&Registries::default().origin(reference), secrets).await?;
    // Authenticate for push up front: a bearer-token registry hands out a pull-only token otherwise.
    client.auth(reference, &auth, oci_client::RegistryOperation::Push).await?;
    let config_digest = layout::sha256_digest(&artifact.config);
    client.push_blob(reference, artifact.config.clone(), &config_digest).await?;
    client.push_blob(reference, wasm.to_vec(), &artifact.layer_digest).await?;
    let content_type = http::HeaderValue::from_static(OCI_MANIFEST);
    client.push_manifest_raw(reference, artifact.manifest.clone(), content_type).await?;
    Ok(layout::sha256_digest(&artifact.manifest))
}

/// Whether the registry said the image does not exist (as opposed to refusing or failing).
pub(crate) fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
        }
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// The registry's own words for a failure (`MANIFEST_UNKNOWN: manifest unknown`), which is what users
/// search for, rather than oci-client's wrapping with the request URL.
pub(crate) fn registry_message(error: &OciDistributionError) -> String {
    match error {
        OciDistributionError::RegistryError { envelope, .. } if !envelope.errors.is_empty() => envelope
            .errors
            .iter()
            .map(|e| {
                let code = serde_json::to_value(&e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{:?}", e.code));
                if e.message.is_empty() { code } else { format!("{code}: {}", e.message) }
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim();
            if message.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {message}") }
        }
        OciDistributionError::UnauthorizedError { .. } => "unauthorized: authentication required".to_owned(),
        other => error_chain(other),
    }
}

/// An error with its sources, so "error sending request" also says "connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry.local:5000", "10.0.0.1:5000", "index.docker.io", "localhost.example.com", "[::2]:1"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn pull_secrets_win_over_the_registries_file_for_the_same_host() {
        let file = Registries::parse_for_tests("configs:\n  m.example:\n    auth: {username: file, password: f}\n");
        let endpoint = |image: &str| file.endpoints(&super::super::reference::parse(image).unwrap()).remove(0);
        let secrets = RegistryAuth::basic("m.example", "pod", "p");
        let basic = |user: &str, pass: &str| OciAuth::Basic(user.into(), pass.into());
        assert_eq!(credentials(&endpoint("m.example/a:1"), &secrets), basic("pod", "p"));
        assert_eq!(credentials(&endpoint("m.example/a:1"), &RegistryAuth::anonymous()), basic("file", "f"));
        assert_eq!(credentials(&endpoint("other.example/a:1"), &secrets), OciAuth::Anonymous);
    }

    fn envelope(code: OciErrorCode, message: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError { code, message: message.to_owned(), detail: serde_json::Value::Null }],
            },
            url: "http://r/v2/x/manifests/y".to_owned(),
        }
    }

    #[test]
    fn not_found_and_messages_come_from_the_registry_envelope() {
        let unknown = envelope(OciErrorCode::ManifestUnknown, "manifest unknown");
        assert!(is_not_found(&unknown));
        assert_eq!(registry_message(&unknown), "MANIFEST_UNKNOWN: manifest unknown");
        assert!(is_not_found(&envelope(OciErrorCode::NameUnknown, "repository name not known to registry")));

        let denied = envelope(OciErrorCode::Denied, "requested access to the resource is denied");
        assert!(!is_not_found(&denied));
        assert_eq!(registry_message(&denied), "DENIED: requested access to the resource is denied");

        let plain_404 =
            OciDistributionError::ServerError { code: 404, url: "u".into(), message: "404 page not found\n".into() };
        assert!(is_not_found(&plain_404));
        assert_eq!(registry_message(&plain_404), "HTTP 404: 404 page not found");
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert!(!is_not_found(&unauthorized));
        assert!(registry_message(&unauthorized).contains("unauthorized"));
    }
}
