//! Joining a cluster with nothing but the server URL and the join token, as a kubelet's TLS bootstrap:
//! fetch the CA from `/cacerts` without trusting the connection and keep it only if its hash is the one in
//! the token; then talk to the server over TLS verified by that CA as `system:node:NAME`, with a client
//! certificate the cluster CA signed for this node.
//!
//! The join token's secret serves one purpose: asking for that certificate (a CertificateSigningRequest for
//! [`KUBELET_CLIENT_SIGNER`], which the controllers approve and sign) when the node has none the server
//! takes. The node's kubelet port gets its serving certificate the same way, asked for as the node
//! ([`KUBELET_SERVING_SIGNER`], naming the node's name and address). Each certificate and its key are kept
//! in `<data dir>/agent/`, `client-kubelet.{crt,key}` and `serving-kubelet.{crt,key}`, mode 0600, and
//! renewed while the agent runs ([`crate::rotation`]).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures::TryStreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};
use sha2::Digest;
use skiff_api::join::JoinToken;
use x509_parser::extensions::GeneralName;

use crate::AgentError;
use crate::rotation::NodeClient;

/// The signer of node client certificates, which the controllers approve for join-token holders.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates, which the controllers approve for the node they name.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The group of every node identity.
const NODES_GROUP: &str = "system:nodes";
/// How long the agent waits for its request to be approved and signed: auto-approval takes a moment, and a
/// request left to an admin gets this long.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the node has no certificate.
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
    #[error("cannot ask the server who the node's certificate makes it")]
    Review(#[source] kube::Error),
}

/// A joined node: its client, the certificate that client presents, and what it takes to get another.
pub struct Joined {
    /// Every request goes through the client of the node's current certificate.
    pub client: NodeClient,
    /// The certificate `client` presents now.
    pub issued: Issued,
    /// How the node gets another certificate (see [`crate::rotation`]).
    pub bootstrap: Bootstrap,
    /// What the node's client certificate must name, and where it is kept.
    pub certificate: NodeCertificate,
}

/// What it takes to ask for a node client certificate with the join token, as at the first start.
pub struct Bootstrap {
    url: http::Uri,
    secret: String,
    /// The cluster CA's certificates, DER.
    pub ca: Vec<Vec<u8>>,
}

impl Bootstrap {
    /// A client of the server authenticated by the join token, which may only ask for a certificate.
    pub(crate) fn join_token_client(&self) -> Result<Client, AgentError> {
        client(&self.url, &self.ca, Identity::JoinToken(&self.secret))
    }

    /// A client of the server authenticated by `issued`.
    pub(crate) fn certificate_client(&self, issued: &Issued) -> Result<Client, AgentError> {
        client(&self.url, &self.ca, Identity::Certificate { cert: &issued.cert_pem, key: &issued.key_pem })
    }
}

/// Joins as node `node`, keeping its credentials under `data_dir`: a stored certificate the server still
/// takes is used, else the join token asks for another.
pub async fn connect(server: &str, token: &JoinToken, node: &str, data_dir: &Path) -> Result<Joined, AgentError> {
    let url: http::Uri = server.parse().map_err(|_| AgentError::Config(format!("invalid server URL {server:?}")))?;
    let ca = fetch_ca(&url, token).await?;
    let bootstrap = Bootstrap { url, secret: token.secret.clone(), ca };
    let certificate = NodeCertificate::client(node, data_dir)?;
    let stored = match certificate.stored(&bootstrap.ca)? {
        Some(issued) if accepted(&bootstrap.certificate_client(&issued)?, node).await? => Some(issued),
        Some(_) => {
            tracing::info!(node, "the server refuses the node's client certificate, asking for another");
            None
        }
        None => None,
    };
    let issued = match stored {
        Some(issued) => issued,
        None => certificate.request(&bootstrap.join_token_client()?, &bootstrap.ca).await?,
    };
    let client = NodeClient::new(bootstrap.certificate_client(&issued)?);
    Ok(Joined { client, issued, bootstrap, certificate })
}

/// Whether the server takes `client`'s certificate: a SelfSubjectReview (`kubectl auth whoami`) answered,
/// not refused with 401.
async fn accepted(client: &Client, node: &str) -> Result<bool, BootstrapError> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    match reviews.create(&PostParams::default(), &SelfSubjectReview::default()).await {
        Ok(review) => {
            let user = review.status.and_then(|s| s.user_info?.username);
            tracing::debug!(node, ?user, "the server takes the node's client certificate");
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 401 => Ok(false),
        Err(error) => Err(BootstrapError::Review(error)),
    }
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

/// A certificate and its key, PEM, and when it is valid.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub validity: Validity,
}

/// A certificate's `notBefore` and `notAfter`, Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// What a certificate of the node is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Authenticating to the API server.
    Client,
    /// The kubelet port, at the node's address `ip` (and its name).
    Serving { ip: IpAddr },
}

/// One of the node's certificates: what it must name, and where it is kept.
#[derive(Debug)]
pub struct NodeCertificate {
    node: String,
    purpose: Purpose,
    files: Credentials,
}

impl NodeCertificate {
    /// The node's client certificate, kept under `data_dir`.
    pub(crate) fn client(node: &str, data_dir: &Path) -> Result<Self, BootstrapError> {
        Self::new(node, Purpose::Client, data_dir)
    }

    /// The node's serving certificate for its kubelet port at `ip`, kept under `data_dir`.
    pub(crate) fn serving(node: &str, ip: IpAddr, data_dir: &Path) -> Result<Self, BootstrapError> {
        Self::new(node, Purpose::Serving { ip }, data_dir)
    }

    fn new(node: &str, purpose: Purpose, data_dir: &Path) -> Result<Self, BootstrapError> {
        let stem = match purpose {
            Purpose::Client => "client-kubelet",
            Purpose::Serving { .. } => "serving-kubelet",
        };
        Ok(Self { node: node.to_string(), purpose, files: Credentials::in_dir(&data_dir.join("agent"), stem)? })
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn signer(&self) -> &'static str {
        match self.purpose {
            Purpose::Client => KUBELET_CLIENT_SIGNER,
            Purpose::Serving { .. } => KUBELET_SERVING_SIGNER,
        }
    }

    /// The request's `spec.usages`: an ECDSA key, so no key encipherment.
    fn usages(&self) -> Vec<String> {
        let purpose = match self.purpose {
            Purpose::Client => "client auth",
            Purpose::Serving { .. } => "server auth",
        };
        vec!["digital signature".into(), purpose.into()]
    }

    /// The subject alternative names the certificate must carry: none for a client, the node's name and
    /// address for the kubelet port (the Node's Hostname and InternalIP).
    fn names(&self) -> Result<Vec<SanType>, rcgen::Error> {
        Ok(match self.purpose {
            Purpose::Client => Vec::new(),
            Purpose::Serving { ip } => vec![SanType::DnsName(self.node.clone().try_into()?), SanType::IpAddress(ip)],
        })
    }

    /// The stored certificate, if it is there and usable (else why not is logged).
    pub(crate) fn stored(&self, ca: &[Vec<u8>]) -> Result<Option<Issued>, BootstrapError> {
        let Some((cert_pem, key_pem)) = self.files.read()? else { return Ok(None) };
        match self.assess(&cert_pem, &key_pem, ca, jiff::Timestamp::now().as_second()) {
            Ok(validity) => Ok(Some(Issued { cert_pem, key_pem, validity })),
            Err(reason) => {
                let signer = self.signer();
                tracing::info!(node = %self.node, signer, %reason, "the node's stored certificate cannot be used");
                Ok(None)
            }
        }
    }

    /// Judges `cert_pem` (with `key_pem`) as this certificate at `now` (Unix seconds): signed by one of `ca`,
    /// naming `system:node:NODE` in `system:nodes` (and, to serve, exactly the node's name and address), for
    /// this key, and valid. Its validity, or why it is unusable.
    fn assess(&self, cert_pem: &str, key_pem: &str, ca: &[Vec<u8>], now: i64) -> Result<Validity, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| "not a PEM certificate")?;
        let cert = pem.parse_x509().map_err(|_| "not a certificate")?;
        let signed = ca.iter().any(|ca| {
            x509_parser::parse_x509_certificate(ca)
                .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
        });
        if !signed {
            return Err("not signed by the cluster CA".into());
        }
        let subject = cert.subject();
        let common_names: Vec<&str> = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
        let organizations: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        if common_names != [format!("system:node:{}", self.node)] || organizations != [NODES_GROUP] {
            return Err("not this node's certificate".into());
        }
        let names = cert.subject_alternative_name().ok().flatten();
        let names: Vec<&GeneralName> = names.iter().flat_map(|n| n.value.general_names.iter()).collect();
        let named = match self.purpose {
            Purpose::Client => names.is_empty(),
            Purpose::Serving { ip } => {
                let octets = match ip {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                };
                let dns = names.iter().any(|name| matches!(name, GeneralName::DNSName(dns) if *dns == self.node));
                let address = names.iter().any(|name| matches!(name, GeneralName::IPAddress(a) if *a == octets));
                names.len() == 2 && dns && address
            }
        };
        if !named {
            return Err("not for the node's name and address".into());
        }
        let matches_key =
            KeyPair::from_pem(key_pem).is_ok_and(|key| key.subject_public_key_info() == cert.public_key().raw);
        if !matches_key {
            return Err("the key is not the certificate's".into());
        }
        let validity = Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        };
        if now < validity.not_before || now >= validity.not_after {
            return Err("not valid now".into());
        }
        Ok(validity)
    }

    /// A new key and a PEM request for this certificate.
    fn certificate_request(&self) -> Result<(KeyPair, String), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("system:node:{}", self.node));
        params.distinguished_name.push(DnType::OrganizationName, NODES_GROUP);
        params.subject_alt_names = self.names()?;
        let pem = params.serialize_request(&key)?.pem()?;
        Ok((key, pem))
    }

    /// Asks `client`'s server for this certificate, waits until it is signed and keeps it.
    pub(crate) async fn request(&self, client: &Client, ca: &[Vec<u8>]) -> Result<Issued, BootstrapError> {
        let (key, request) = self.certificate_request().map_err(BootstrapError::Key)?;
        let name = request_name(&key);
        let (node, signer) = (self.node.as_str(), self.signer());
        let csr = CertificateSigningRequest {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            spec: CertificateSigningRequestSpec {
                request: ByteString(request.into_bytes()),
                signer_name: signer.into(),
                usages: Some(self.usages()),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        };
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        api.create(&PostParams::default(), &csr)
            .await
            .map_err(|source| BootstrapError::Create { name: name.clone(), source })?;
        tracing::info!(csr = %name, node, signer, "asked for a node certificate");
        let cert_pem = tokio::time::timeout(SIGNING_TIMEOUT, settled(api, &name))
            .await
            .map_err(|_| BootstrapError::NotSigned { name: name.clone(), timeout: SIGNING_TIMEOUT })??;
        let key_pem = key.serialize_pem();
        let validity = self
            .assess(&cert_pem, &key_pem, ca, jiff::Timestamp::now().as_second())
            .map_err(|reason| BootstrapError::Unusable { name: name.clone(), reason })?;
        self.files.write(&cert_pem, &key_pem)?;
        tracing::info!(csr = %name, node, signer, "node certificate issued");
        Ok(Issued { cert_pem, key_pem, validity })
    }
}

/// The request's name: from the key, so each key asks once, and a reader can tell a node's requests apart.
fn request_name(key: &KeyPair) -> String {
    let digest = hex::encode(sha2::Sha256::digest(key.subject_public_key_info()));
    format!("node-csr-{}", &digest[..32])
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

/// Where one of the node's certificates and its key are kept.
#[derive(Debug)]
struct Credentials {
    cert: PathBuf,
    key: PathBuf,
}

impl Credentials {
    /// `STEM.crt` and `STEM.key` in `dir`, which is made, private to the agent's user.
    fn in_dir(dir: &Path, stem: &str) -> Result<Self, BootstrapError> {
        let io = |source| BootstrapError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) })
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
    fn write(&self, cert: &str, key: &str) -> Result<(), BootstrapError> {
        write_private(&self.key, key)?;
        write_private(&self.cert, cert)
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

    /// A certificate for `subject` (common name, organization) naming `sans`, signed by `ca`, valid from
    /// `start` to `end` (Unix seconds), and its key.
    fn issue(ca: &Ca, subject: (&str, &str), sans: &[&str], start: i64, end: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject.0);
        params.distinguished_name.push(DnType::OrganizationName, subject.1);
        params.not_before = time::OffsetDateTime::from_unix_timestamp(start).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(end).unwrap();
        (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_stored_client_certificate_is_used_while_valid_and_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let client = NodeCertificate::client("a", dir.path()).unwrap();
        let ca = ca();
        let roots = [ca.der.clone()];
        let now = 1_750_000_000;
        let node = ("system:node:a", NODES_GROUP);
        let (cert, key) = issue(&ca, node, &[], now - HOUR, now + 99 * HOUR);
        let validity = Validity { not_before: now - HOUR, not_after: now + 99 * HOUR };
        assert_eq!(client.assess(&cert, &key, &roots, now), Ok(validity));
        assert_eq!(client.assess(&cert, &key, &roots, now + 98 * HOUR), Ok(validity));

        let unusable = |reason: &str| Err(reason.to_string());
        assert_eq!(client.assess(&cert, &key, &roots, now + 99 * HOUR), unusable("not valid now"));
        assert_eq!(client.assess(&cert, &key, &roots, now - 2 * HOUR), unusable("not valid now"));
        let b = NodeCertificate::client("b", dir.path()).unwrap();
        assert_eq!(b.assess(&cert, &key, &roots, now), unusable("not this node's certificate"));
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(client.assess(&cert, &other_key, &roots, now), unusable("the key is not the certificate's"));
        assert_eq!(client.assess(&cert, &key, &[ca_other()], now), unusable("not signed by the cluster CA"));
        assert_eq!(client.assess("garbage", &key, &roots, now), unusable("not a PEM certificate"));
        for subject in [("system:node:a", "system:masters"), ("a", NODES_GROUP)] {
            let (cert, key) = issue(&ca, subject, &[], now - HOUR, now + HOUR);
            let verdict = client.assess(&cert, &key, &roots, now);
            assert_eq!(verdict, unusable("not this node's certificate"), "{subject:?}");
        }
        // A serving certificate is no client certificate.
        let (serving, key) = issue(&ca, node, &["a", "10.0.0.1"], now - HOUR, now + HOUR);
        assert_eq!(client.assess(&serving, &key, &roots, now), unusable("not for the node's name and address"));
    }

    #[test]
    fn a_stored_serving_certificate_is_used_while_it_names_the_nodes_address() {
        let dir = tempfile::tempdir().unwrap();
        let serving = NodeCertificate::serving("a", "10.0.0.1".parse().unwrap(), dir.path()).unwrap();
        let ca = ca();
        let roots = [ca.der.clone()];
        let now = 1_750_000_000;
        let node = ("system:node:a", NODES_GROUP);
        let (start, end) = (now - HOUR, now + HOUR);
        for sans in [&["a", "10.0.0.1"][..], &["10.0.0.1", "a"]] {
            let (cert, key) = issue(&ca, node, sans, start, end);
            assert_eq!(serving.assess(&cert, &key, &roots, now), Ok(Validity { not_before: start, not_after: end }));
        }
        // The node moved, or the certificate names more or less than the node.
        for sans in [&["a", "10.0.0.2"][..], &["a"], &["a", "10.0.0.1", "b"], &[]] {
            let (cert, key) = issue(&ca, node, sans, start, end);
            let verdict = serving.assess(&cert, &key, &roots, now);
            assert_eq!(verdict, Err("not for the node's name and address".into()), "{sans:?}");
        }
    }

    fn ca_other() -> Vec<u8> {
        ca().der
    }

    /// The subject attributes (type, value) of a PEM request, once its signature is checked, and its
    /// subject alternative names.
    fn read_request(pem: &str) -> (Vec<(String, String)>, Vec<String>, Vec<u8>) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents).unwrap();
        request.verify_signature().unwrap();
        let info = &request.certification_request_info;
        let subject = info
            .subject
            .iter_attributes()
            .map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_string()))
            .collect();
        let mut names = Vec::new();
        for extension in request.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(sans) = extension {
                names.extend(sans.general_names.iter().map(|n| n.to_string()));
            }
        }
        (subject, names, info.subject_pki.raw.to_vec())
    }

    #[test]
    fn requests_name_the_node_and_to_serve_its_name_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let subject = vec![
            ("2.5.4.3".to_string(), "system:node:edge-1".to_string()),
            ("2.5.4.10".to_string(), NODES_GROUP.to_string()),
        ];
        let client = NodeCertificate::client("edge-1", dir.path()).unwrap();
        let (key, pem) = client.certificate_request().unwrap();
        let (names, sans, public_key) = read_request(&pem);
        assert_eq!((names, sans), (subject.clone(), vec![]), "no subject alternative names");
        assert_eq!(public_key, key.subject_public_key_info());
        assert_eq!(
            (client.signer(), client.usages()),
            (KUBELET_CLIENT_SIGNER, vec!["digital signature".to_string(), "client auth".to_string()])
        );

        let serving = NodeCertificate::serving("edge-1", "10.0.0.7".parse().unwrap(), dir.path()).unwrap();
        let (_, pem) = serving.certificate_request().unwrap();
        let (names, sans, _) = read_request(&pem);
        assert_eq!((names, sans), (subject, vec!["DNSName(edge-1)".to_string(), "IPAddress(0a:00:00:07)".to_string()]));
        assert_eq!(
            (serving.signer(), serving.usages()),
            (KUBELET_SERVING_SIGNER, vec!["digital signature".to_string(), "server auth".to_string()])
        );

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
        let files = Credentials::in_dir(&dir.path().join("agent"), "client-kubelet").unwrap();
        assert!(files.read().unwrap().is_none());
        files.write("CERT", "KEY").unwrap();
        assert_eq!(files.read().unwrap(), Some(("CERT".into(), "KEY".into())));
        for path in [&files.cert, &files.key] {
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        assert_eq!(files.cert, dir.path().join("agent/client-kubelet.crt"));
        let dir_mode = std::fs::metadata(dir.path().join("agent")).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        std::fs::remove_file(&files.cert).unwrap();
        assert!(files.read().unwrap().is_none(), "a key without its certificate is no credential");
    }
}
