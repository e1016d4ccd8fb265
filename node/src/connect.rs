//! Joining a cluster with nothing but the server URL and the join token, as a kubelet's TLS bootstrap:
//! fetch the CA from `/cacerts` without trusting the connection and keep it only if its hash is the one in
//! the token; then talk to the server over TLS verified by that CA as `system:node:NAME`, with a client
//! certificate the cluster CA signed for this node.
//!
//! The join token's secret serves one purpose: asking for that certificate (a CertificateSigningRequest for
//! [`KUBELET_CLIENT_SIGNER`], which the controllers approve and sign) when the node has none it can use.
//! The certificate and its key are kept in `<data dir>/agent/client-kubelet.{crt,key}`, mode 0600.
//!
//! Renewal happens at start only: an agent starting with less than [`RENEW_BELOW_PERCENT`] of its
//! certificate's lifetime left asks for a new one with the certificate itself (and keeps the old one if that
//! fails while it is still valid). With the signer's one-year certificates an agent restarted within eight
//! months of its last renewal never lapses; one running longer loses the API when its certificate expires,
//! since it does not rotate while running as the kubelet does.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures::TryStreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use sha2::Digest;
use skiff_api::join::JoinToken;

use crate::AgentError;

/// The signer of node client certificates, which the controllers approve for join-token holders.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The group of every node identity.
const NODES_GROUP: &str = "system:nodes";
/// A certificate with less of its lifetime left than this is renewed at start (as the kubelet, which rotates
/// at 70–90% of the lifetime).
pub const RENEW_BELOW_PERCENT: i64 = 30;
/// How long the agent waits for its request to be approved and signed: auto-approval takes a moment, and a
/// request left to an admin gets this long.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the node has no client certificate.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the node's key or certificate request")]
    Key(#[source] rcgen::Error),
    #[error("cannot create certificate signing request {name}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot watch certificate signing request {name}")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    #[error("certificate signing request {name} was denied: {message}")]
    Denied { name: String, message: String },
    #[error("certificate signing request {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("certificate signing request {name} was deleted before it was signed")]
    Deleted { name: String },
    #[error(
        "certificate signing request {name} was not signed within {timeout:?}: are the server's controllers \
         running? (an admin may approve it with `kubectl certificate approve {name}`)"
    )]
    NotSigned { name: String, timeout: Duration },
    #[error("the certificate issued for {name} is unusable: {reason}")]
    Unusable { name: String, reason: String },
}

/// A joined node: a client authenticated as the node, and the cluster CA.
pub struct Joined {
    pub client: Client,
    /// The cluster CA's certificates, DER.
    pub ca: Vec<Vec<u8>>,
}

/// Joins as node `node`, keeping its credentials under `data_dir`.
pub async fn connect(server: &str, token: &JoinToken, node: &str, data_dir: &Path) -> Result<Joined, AgentError> {
    let url: http::Uri = server.parse().map_err(|_| AgentError::Config(format!("invalid server URL {server:?}")))?;
    let ca = fetch_ca(&url, token).await?;
    let files = Credentials::in_dir(&data_dir.join("agent"))?;
    let now = jiff::Timestamp::now().as_second();
    let current = files.read()?;
    let verdict = current.as_ref().map(|(cert, key)| assess(cert, key, &ca, node, now));
    let (cert, key) = match (current, verdict) {
        (Some(current), Some(Verdict::Fresh)) => current,
        (Some((cert, key)), Some(Verdict::Renew)) => {
            tracing::info!(node, "renewing the node's client certificate");
            let requester = client(&url, &ca, Identity::Certificate { cert: &cert, key: &key })?;
            match request_certificate(&requester, node, &ca).await {
                Ok(renewed) => files.write(renewed)?,
                Err(error) => {
                    let error = anyhow::Error::new(error);
                    tracing::warn!(
                        node,
                        error = format!("{error:#}"),
                        "renewal failed, keeping the current certificate"
                    );
                    (cert, key)
                }
            }
        }
        (_, verdict) => {
            if let Some(Verdict::Unusable(reason)) = verdict {
                tracing::info!(node, %reason, "the node's client certificate cannot be used, asking for another");
            }
            let bootstrap = client(&url, &ca, Identity::JoinToken(&token.secret))?;
            files.write(request_certificate(&bootstrap, node, &ca).await?)?
        }
    };
    Ok(Joined { client: client(&url, &ca, Identity::Certificate { cert: &cert, key: &key })?, ca })
}

/// The cluster CA's certificates (DER) from `/cacerts`, once their hash is the one the token names.
async fn fetch_ca(url: &http::Uri, token: &JoinToken) -> Result<Vec<Vec<u8>>, AgentError> {
    let mut unverified = kube::Config::new(url.clone());
    // Only for fetching the CA, whose hash is checked below before anything is trusted.
    unverified.accept_invalid_certs = true;
    let probe = Client::try_from(unverified).map_err(AgentError::Client)?;
    let request = http::Request::get("/cacerts").body(Vec::new()).map_err(|e| AgentError::Config(e.to_string()))?;
    let ca_pem = probe.request_text(request).await.map_err(AgentError::Client)?;
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    if hash != token.ca_hash {
        return Err(AgentError::CaMismatch { expected: token.ca_hash.clone(), actual: hash });
    }
    rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Config(format!("the server's CA is not PEM: {e}")))
}

/// How the agent authenticates to the API server.
enum Identity<'a> {
    /// The join token's secret: only to ask for a certificate.
    JoinToken(&'a str),
    /// The node's certificate and key, PEM.
    Certificate { cert: &'a str, key: &'a str },
}

/// A client of the server at `url`, trusting `ca`, authenticated as `identity`.
fn client(url: &http::Uri, ca: &[Vec<u8>], identity: Identity) -> Result<Client, AgentError> {
    let mut config = kube::Config::new(url.clone());
    config.root_cert = Some(ca.to_vec());
    match identity {
        Identity::JoinToken(secret) => config.auth_info.token = Some(secret.to_string().into()),
        Identity::Certificate { cert, key } => {
            let base64 = base64::engine::general_purpose::STANDARD;
            config.auth_info.client_certificate_data = Some(base64.encode(cert));
            config.auth_info.client_key_data = Some(base64.encode(key).into());
        }
    }
    Client::try_from(config).map_err(AgentError::Client)
}

/// What a stored certificate is good for.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The node's, and with enough of its lifetime left.
    Fresh,
    /// The node's and valid, but due for renewal.
    Renew,
    /// Not to be used; why.
    Unusable(String),
}

/// Judges `cert_pem` (with `key_pem`) as this node's client certificate at `now` (Unix seconds): signed by
/// one of `ca`, naming `system:node:NODE` in `system:nodes`, for this key, valid, and with more than
/// [`RENEW_BELOW_PERCENT`] of its lifetime left.
fn assess(cert_pem: &str, key_pem: &str, ca: &[Vec<u8>], node: &str, now: i64) -> Verdict {
    let unusable = |reason: &str| Verdict::Unusable(reason.to_string());
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return unusable("not a PEM certificate");
    };
    let Ok(cert) = pem.parse_x509() else { return unusable("not a certificate") };
    let signed = ca.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
    });
    if !signed {
        return unusable("not signed by the cluster CA");
    }
    let subject = cert.subject();
    let common_names: Vec<&str> = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
    let organizations: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
    if common_names != [format!("system:node:{node}")] || organizations != [NODES_GROUP] {
        return unusable("not this node's certificate");
    }
    let matches_key =
        KeyPair::from_pem(key_pem).is_ok_and(|key| key.subject_public_key_info() == cert.public_key().raw);
    if !matches_key {
        return unusable("the key is not the certificate's");
    }
    let (start, end) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    if now < start || now >= end {
        return unusable("not valid now");
    }
    if (end - now) * 100 > (end - start) * RENEW_BELOW_PERCENT { Verdict::Fresh } else { Verdict::Renew }
}

/// A new key and a PEM request for a client certificate naming `system:node:NODE` in `system:nodes`.
fn node_request(node: &str) -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name.push(DnType::OrganizationName, NODES_GROUP);
    let pem = params.serialize_request(&key)?.pem()?;
    Ok((key, pem))
}

/// The request's name: from the key, so each key asks once, and a reader can tell a node's requests apart.
fn request_name(key: &KeyPair) -> String {
    let digest = hex::encode(sha2::Sha256::digest(key.subject_public_key_info()));
    format!("node-csr-{}", &digest[..32])
}

/// Asks `client`'s server for a client certificate for `node` and waits until it is signed; returns the
/// certificate and its new key, PEM.
async fn request_certificate(client: &Client, node: &str, ca: &[Vec<u8>]) -> Result<(String, String), BootstrapError> {
    let (key, request) = node_request(node).map_err(BootstrapError::Key)?;
    let name = request_name(&key);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            // An ECDSA key: no key encipherment.
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|source| BootstrapError::Create { name: name.clone(), source })?;
    tracing::info!(csr = %name, node, "asked for a node client certificate");
    let cert = tokio::time::timeout(SIGNING_TIMEOUT, settled(api, &name))
        .await
        .map_err(|_| BootstrapError::NotSigned { name: name.clone(), timeout: SIGNING_TIMEOUT })??;
    let key = key.serialize_pem();
    if let Verdict::Unusable(reason) = assess(&cert, &key, ca, node, jiff::Timestamp::now().as_second()) {
        return Err(BootstrapError::Unusable { name, reason });
    }
    tracing::info!(csr = %name, node, "node client certificate issued");
    Ok((cert, key))
}

/// Follows request `name` until it is settled; its certificate once issued.
async fn settled(api: Api<CertificateSigningRequest>, name: &str) -> Result<String, BootstrapError> {
    let watch_error = |source| BootstrapError::Watch { name: name.to_string(), source };
    let mut versions = std::pin::pin!(kube::runtime::watcher::watch_object(api, name));
    while let Some(csr) = versions.try_next().await.map_err(watch_error)? {
        let Some(csr) = csr else { break };
        match outcome(&csr) {
            None => {}
            Some(Outcome::Issued(cert)) => return Ok(cert),
            Some(Outcome::Denied(message)) => return Err(BootstrapError::Denied { name: name.to_string(), message }),
            Some(Outcome::Failed(message)) => return Err(BootstrapError::Failed { name: name.to_string(), message }),
        }
    }
    Err(BootstrapError::Deleted { name: name.to_string() })
}

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The certificate, PEM.
    Issued(String),
    /// The condition's message.
    Denied(String),
    Failed(String),
}

/// How `csr` ended, or None while it waits for approval or signing.
fn outcome(csr: &CertificateSigningRequest) -> Option<Outcome> {
    let status = csr.status.as_ref()?;
    let condition = |kind: &str| {
        let conditions = status.conditions.iter().flatten();
        conditions
            .filter(|c| c.type_ == kind && c.status == "True")
            .map(|c| c.message.clone().unwrap_or_default())
            .next()
    };
    if let Some(message) = condition("Denied") {
        return Some(Outcome::Denied(message));
    }
    if let Some(message) = condition("Failed") {
        return Some(Outcome::Failed(message));
    }
    let cert = status.certificate.as_ref().filter(|c| !c.0.is_empty())?;
    Some(Outcome::Issued(String::from_utf8_lossy(&cert.0).into_owned()))
}

/// Where the node's certificate and key are kept.
struct Credentials {
    cert: PathBuf,
    key: PathBuf,
}

impl Credentials {
    /// The files in `dir`, which is made, private to the agent's user.
    fn in_dir(dir: &Path) -> Result<Self, BootstrapError> {
        let io = |source| BootstrapError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { cert: dir.join("client-kubelet.crt"), key: dir.join("client-kubelet.key") })
    }

    /// The certificate and key, PEM, when both are there.
    fn read(&self) -> Result<Option<(String, String)>, BootstrapError> {
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BootstrapError::Io { path: path.to_path_buf(), source }),
        };
        Ok(read(&self.cert)?.zip(read(&self.key)?))
    }

    /// Replaces both files, each atomically, the key first: after a crash between the two the certificate
    /// does not match the key, and the next start asks for a new one.
    fn write(&self, (cert, key): (String, String)) -> Result<(String, String), BootstrapError> {
        write_private(&self.key, &key)?;
        write_private(&self.cert, &cert)?;
        Ok((cert, key))
    }
}

/// Writes `path` with mode 0600 through a temporary file renamed over it, so a crash never leaves half a key.
fn write_private(path: &Path, contents: &str) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};
    use rcgen::{BasicConstraints, IsCa, Issuer, KeyUsagePurpose};
    use x509_parser::prelude::FromDer;

    use super::*;

    const HOUR: i64 = 3600;

    /// A throwaway cluster CA for tests: its certificate (DER) and what signs with it.
    pub(crate) struct Ca {
        pub(crate) der: Vec<u8>,
        pub(crate) issuer: Issuer<'static, KeyPair>,
    }

    pub(crate) fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "skiff-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
    }

    /// A certificate for `subject` (common name, organization) signed by `ca`, valid from `start` to `end`
    /// (Unix seconds), and its key.
    fn issue(ca: &Ca, subject: (&str, &str), start: i64, end: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject.0);
        params.distinguished_name.push(DnType::OrganizationName, subject.1);
        params.not_before = time::OffsetDateTime::from_unix_timestamp(start).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(end).unwrap();
        (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_stored_certificate_is_used_renewed_or_replaced() {
        let ca = ca();
        let roots = [ca.der.clone()];
        let now = 1_750_000_000;
        let node = ("system:node:a", NODES_GROUP);
        let (cert, key) = issue(&ca, node, now - HOUR, now + 99 * HOUR);
        assert_eq!(assess(&cert, &key, &roots, "a", now), Verdict::Fresh);
        // 31% of the lifetime left, then 29%.
        assert_eq!(assess(&cert, &key, &roots, "a", now + 68 * HOUR), Verdict::Fresh);
        assert_eq!(assess(&cert, &key, &roots, "a", now + 70 * HOUR), Verdict::Renew);

        let unusable = |reason: &str| Verdict::Unusable(reason.to_string());
        assert_eq!(assess(&cert, &key, &roots, "a", now + 99 * HOUR), unusable("not valid now"));
        assert_eq!(assess(&cert, &key, &roots, "a", now - 2 * HOUR), unusable("not valid now"));
        assert_eq!(assess(&cert, &key, &roots, "b", now), unusable("not this node's certificate"));
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(assess(&cert, &other_key, &roots, "a", now), unusable("the key is not the certificate's"));
        assert_eq!(assess(&cert, &key, &[ca_other()], "a", now), unusable("not signed by the cluster CA"));
        assert_eq!(assess("garbage", &key, &roots, "a", now), unusable("not a PEM certificate"));
        for subject in [("system:node:a", "system:masters"), ("a", NODES_GROUP)] {
            let (cert, key) = issue(&ca, subject, now - HOUR, now + HOUR);
            assert_eq!(assess(&cert, &key, &roots, "a", now), unusable("not this node's certificate"), "{subject:?}");
        }
    }

    fn ca_other() -> Vec<u8> {
        ca().der
    }

    #[test]
    fn the_request_names_the_node_and_nothing_else() {
        let (key, pem) = node_request("edge-1").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents).unwrap();
        request.verify_signature().unwrap();
        let info = &request.certification_request_info;
        let names: Vec<(String, &str)> =
            info.subject.iter_attributes().map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap())).collect();
        assert_eq!(names, [("2.5.4.3".to_string(), "system:node:edge-1"), ("2.5.4.10".to_string(), NODES_GROUP)]);
        assert!(request.requested_extensions().is_none_or(|mut e| e.next().is_none()), "no extensions, no SANs");
        assert_eq!(info.subject_pki.raw, key.subject_public_key_info());
        let name = request_name(&key);
        assert!(name.starts_with("node-csr-") && name.len() == "node-csr-".len() + 32, "{name}");
        assert_ne!(name, request_name(&KeyPair::generate().unwrap()));
    }

    #[test]
    fn a_request_ends_issued_denied_or_failed() {
        let csr = |certificate: Option<&str>, condition: Option<(&str, &str)>| CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: certificate.map(|c| ByteString(c.as_bytes().to_vec())),
                conditions: condition.map(|(kind, status)| {
                    vec![CertificateSigningRequestCondition {
                        type_: kind.into(),
                        status: status.into(),
                        message: Some("no".into()),
                        ..CertificateSigningRequestCondition::default()
                    }]
                }),
            }),
            ..CertificateSigningRequest::default()
        };
        assert_eq!(outcome(&CertificateSigningRequest::default()), None);
        assert_eq!(outcome(&csr(None, Some(("Approved", "True")))), None);
        assert_eq!(outcome(&csr(Some(""), Some(("Approved", "True")))), None);
        assert_eq!(outcome(&csr(Some("PEM"), Some(("Approved", "True")))), Some(Outcome::Issued("PEM".into())));
        assert_eq!(outcome(&csr(None, Some(("Denied", "True")))), Some(Outcome::Denied("no".into())));
        assert_eq!(outcome(&csr(None, Some(("Failed", "True")))), Some(Outcome::Failed("no".into())));
        assert_eq!(outcome(&csr(None, Some(("Failed", "False")))), None);
    }

    #[test]
    fn credentials_are_written_private_and_read_back_together() {
        let dir = tempfile::tempdir().unwrap();
        let files = Credentials::in_dir(&dir.path().join("agent")).unwrap();
        assert!(files.read().unwrap().is_none());
        files.write(("CERT".into(), "KEY".into())).unwrap();
        assert_eq!(files.read().unwrap(), Some(("CERT".into(), "KEY".into())));
        for path in [&files.cert, &files.key] {
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        let dir_mode = std::fs::metadata(dir.path().join("agent")).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        std::fs::remove_file(&files.cert).unwrap();
        assert!(files.read().unwrap().is_none(), "a key without its certificate is no credential");
    }
}
