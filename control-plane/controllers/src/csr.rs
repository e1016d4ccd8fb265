//! Certificate signing requests (certificates.k8s.io/v1), as kube-controller-manager's csrapproving and
//! csrsigning controllers handle them; with them a node agent trades the join token for a certificate of
//! its own (kubelet TLS bootstrapping), renews it, and gets its kubelet port's serving certificate.
//!
//! - Approver: a request for a node client certificate (signer [`KUBELET_CLIENT_SIGNER`], subject
//!   `system:node:NAME` in exactly `system:nodes`, client usages, no subject alternative names) is approved
//!   when a SubjectAccessReview says its requester may ask for one: `create` on
//!   `certificatesigningrequests/selfnodeclient` when a node renews its own certificate (the requester is
//!   the subject), else on `certificatesigningrequests/nodeclient` (a join-token holder).
//!   A request for a kubelet serving certificate ([`KUBELET_SERVING_SIGNER`], Kubernetes'
//!   `IsKubeletServingCSR` shape) is approved when its requester is the node it names (`system:node:NAME`
//!   in `system:nodes`, as the server stamped it) and its Node, registered, names every subject alternative
//!   name (its name, its Hostname and DNS addresses, its IP addresses). Kubernetes leaves these to an admin
//!   or an external approver; Skiff approves them because both the name and the addresses are the node's
//!   own word already (NodeRestriction lets a node write only its own Node), so the certificate adds no
//!   claim the node could not make. But the node's word is no proof: a node (or a join-token holder,
//!   joining under a name of its choice) could claim a name its certificate would then impersonate to
//!   every client trusting the cluster CA. So a serving request naming what clients take for the API server
//!   ([`ApiServerNames`], the `kubernetes` Service's endpoints, the service range, an unspecified address)
//!   or for another node (its name, an address it reports) is Denied, saying which name is reserved.
//!   Nothing else is approved here: an admin approves with `kubectl certificate approve`.
//! - Signer: approved requests for [`KUBELET_CLIENT_SIGNER`], [`KUBELET_SERVING_SIGNER`] and
//!   [`APISERVER_CLIENT_SIGNER`] are signed once with the cluster CA into `status.certificate`; one that
//!   cannot be signed as asked gets a Failed condition saying why.
//!
//! Both act only on what the object shows (a certificate, Approved, Denied, Failed) and write through the
//! API with the version they read, so a repeated or missed event does no harm.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::SigningCa;

/// Node agents' client certificates: auto-approved here when the requester may ask for one.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Node agents' serving certificates for their kubelet port: auto-approved here for the node they name.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Any client of the API server: signed once an admin approved.
pub const APISERVER_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

const NODES_GROUP: &str = "system:nodes";
const NODE_USER_PREFIX: &str = "system:node:";
const MASTERS_GROUP: &str = "system:masters";

const APPROVED: &str = "Approved";
const DENIED: &str = "Denied";
const FAILED: &str = "Failed";

const DIGITAL_SIGNATURE: &str = "digital signature";
const KEY_ENCIPHERMENT: &str = "key encipherment";
const CLIENT_AUTH: &str = "client auth";
const SERVER_AUTH: &str = "server auth";

/// How long a certificate lasts unless its request asks for less (`spec.expirationSeconds`):
/// kube-controller-manager's `--cluster-signing-duration` default.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The least a request gets, whatever it asks: twice [`BACKDATE`], as Kubernetes, so a certificate is
/// always valid for a while after it is issued.
const MIN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How far `notBefore` is set back, so a client whose clock is behind the signer's can use its certificate
/// at once; the API server reads the issue time back from it to refuse certificates of revoked nodes.
const BACKDATE: Duration = skiff_api::authz::CERTIFICATE_BACKDATE;
/// Below this lifetime the backdating is not taken out of the lifetime (kube's `Short`): a 10-minute
/// certificate is usable for 10 minutes from its issue.
const SHORT_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The approval's message for a node's serving request.
const SERVING_APPROVAL: &str =
    "Auto approving kubelet serving certificate: requested by the node it names, for its addresses.";
/// The reason of a serving request's denial for a name no node may have.
const RESERVED_NAME: &str = "ReservedSubjectAltName";
/// When a node request not approved yet is looked at again: a client request's requester can be granted
/// the permission later, as Kubernetes' rate-limited retries find; a serving request's Node can be
/// registered or updated later.
const RECHECK: Duration = Duration::from_secs(30);

/// Errors of one reconcile; the request is looked at again.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// A request to the API server failed (a conflict with a newer version of the object among them).
    #[error("api request failed")]
    Kube(#[from] kube::Error),
    /// rcgen could not make the certificate.
    #[error("cannot sign the certificate")]
    Sign(#[source] rcgen::Error),
    /// The CA key, or the certificate as rcgen reads it, does not load.
    #[error("cannot load the cluster CA")]
    Ca(#[source] rcgen::Error),
    /// The CA certificate is not a PEM X.509 certificate.
    #[error("the cluster CA certificate is not a PEM certificate")]
    CaCertificate,
}

/// Why a request's PEM cannot be read or signed as written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotPem,
    #[error("malformed certificate request")]
    Malformed,
    /// An attribute named twice (two organizations, say): the certificate could not carry the subject as
    /// it was requested, and approved.
    #[error("the subject names {0} more than once")]
    Repeated(String),
    /// rcgen refused it: a bad signature, an extension it does not know, a multi-valued name.
    #[error("unsupported certificate request")]
    Unsupported(#[source] rcgen::Error),
}

/// A PKCS #10 request as the checks and the signer need it.
pub(crate) struct ParsedRequest {
    /// The subject's common name, if it has one.
    common_name: Option<String>,
    /// The subject's organizations, in order.
    organizations: Vec<String>,
    /// The request as rcgen signs it: subject, subject alternative names, public key (its signature
    /// checked).
    csr: CertificateSigningRequestParams,
}

/// Reads `spec.request`: one PEM `CERTIFICATE REQUEST`, its signature checked.
pub(crate) fn parse_request(pem: &[u8]) -> Result<ParsedRequest, RequestError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| RequestError::NotPem)?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(RequestError::NotPem);
    }
    parse_request_der(&pem.contents)
}

fn parse_request_der(der: &[u8]) -> Result<ParsedRequest, RequestError> {
    let (_, request) = X509CertificationRequest::from_der(der).map_err(|_| RequestError::Malformed)?;
    let subject = &request.certification_request_info.subject;
    let mut seen = BTreeSet::new();
    for attribute in subject.iter_attributes() {
        if !seen.insert(attribute.attr_type().to_id_string()) {
            let registry = x509_parser::objects::oid_registry();
            let name = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                .map_or_else(|_| attribute.attr_type().to_id_string(), str::to_string);
            return Err(RequestError::Repeated(name));
        }
    }
    let text = |attribute: &x509_parser::x509::AttributeTypeAndValue| {
        attribute.as_str().map(str::to_string).map_err(|_| RequestError::Malformed)
    };
    let common_name = subject.iter_common_name().next().map(text).transpose()?;
    let organizations = subject.iter_organization().map(text).collect::<Result<Vec<_>, _>>()?;
    let csr = CertificateSigningRequestParams::from_der(&der.into()).map_err(RequestError::Unsupported)?;
    Ok(ParsedRequest { common_name, organizations, csr })
}

/// A check of a request's shape for one signer: why it is not of that shape.
type Validate = fn(&ParsedRequest, &[String]) -> Result<(), String>;

/// Whether `request` asks for a node client certificate with `usages`, as kube's `ValidateKubeletClientCSR`;
/// the error says why not, in Kubernetes' words.
pub(crate) fn validate_kubelet_client(request: &ParsedRequest, usages: &[String]) -> Result<(), String> {
    if request.organizations != [NODES_GROUP] {
        return Err("subject organization is not system:nodes".into());
    }
    let names = &request.csr.params.subject_alt_names;
    for (kind, present) in [
        ("DNS", names.iter().any(|n| matches!(n, SanType::DnsName(_)))),
        ("Email", names.iter().any(|n| matches!(n, SanType::Rfc822Name(_)))),
        ("IP", names.iter().any(|n| matches!(n, SanType::IpAddress(_)))),
        ("URI", names.iter().any(|n| matches!(n, SanType::URI(_)))),
        ("other", !names.is_empty()),
    ] {
        if present {
            return Err(format!("{kind} subjectAltNames are not allowed"));
        }
    }
    if !request.common_name.as_deref().is_some_and(|cn| cn.starts_with(NODE_USER_PREFIX)) {
        return Err("subject common name does not begin with system:node:".into());
    }
    node_usages(usages, CLIENT_AUTH)
}

/// Whether `request` asks for a kubelet serving certificate with `usages`, as kube's
/// `ValidateKubeletServingCSR`; the error says why not, in Kubernetes' words and order.
pub(crate) fn validate_kubelet_serving(request: &ParsedRequest, usages: &[String]) -> Result<(), String> {
    if request.organizations != [NODES_GROUP] {
        return Err("subject organization is not system:nodes".into());
    }
    let names = &request.csr.params.subject_alt_names;
    if !names.iter().any(|n| matches!(n, SanType::DnsName(_) | SanType::IpAddress(_))) {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if names.iter().any(|n| matches!(n, SanType::Rfc822Name(_))) {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if names.iter().any(|n| matches!(n, SanType::URI(_))) {
        return Err("URI subjectAltNames are not allowed".into());
    }
    node_usages(usages, SERVER_AUTH)?;
    if !request.common_name.as_deref().is_some_and(|cn| cn.starts_with(NODE_USER_PREFIX)) {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// Whether `usages` are a node certificate's: `purpose` (client or server auth) and digital signature, with
/// or without key encipherment, which only RSA keys use.
fn node_usages(usages: &[String], purpose: &'static str) -> Result<(), String> {
    let asked: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    let with_rsa = BTreeSet::from([purpose, DIGITAL_SIGNATURE, KEY_ENCIPHERMENT]);
    let without_rsa = BTreeSet::from([purpose, DIGITAL_SIGNATURE]);
    if asked != with_rsa && asked != without_rsa {
        return Err(format!("usages did not match [{}]", Vec::from_iter(with_rsa).join(" ")));
    }
    Ok(())
}

/// The node whose serving certificate `request` asks for, when `username` in `groups` is that node: a node
/// asks for its own serving certificate only.
pub(crate) fn serving_requester<'a>(
    username: Option<&str>,
    groups: &[String],
    request: &'a ParsedRequest,
) -> Result<&'a str, String> {
    let subject = request.common_name.as_deref().unwrap_or_default();
    if username != Some(subject) || !groups.iter().any(|g| g == NODES_GROUP) {
        return Err(format!("requested by {:?}, not by {subject} in {NODES_GROUP}", username.unwrap_or_default()));
    }
    let node = subject.strip_prefix(NODE_USER_PREFIX).filter(|node| !node.is_empty());
    node.ok_or_else(|| format!("{subject:?} names no node"))
}

/// Whether `node` names every subject alternative name of `request`: DNS names among the Node's name and
/// its Hostname, InternalDNS and ExternalDNS addresses, IP addresses among its InternalIP and ExternalIP.
pub(crate) fn names_of_node(request: &ParsedRequest, node: &Node) -> Result<(), String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let addresses = node.status.iter().flat_map(|s| s.addresses.iter().flatten());
    let of_kind = |kinds: &[&str]| -> BTreeSet<String> {
        addresses.clone().filter(|a| kinds.contains(&a.type_.as_str())).map(|a| a.address.clone()).collect()
    };
    let mut dns = of_kind(&["Hostname", "InternalDNS", "ExternalDNS"]);
    dns.insert(name.to_string());
    let ips = of_kind(&["InternalIP", "ExternalIP"]);
    for san in &request.csr.params.subject_alt_names {
        match san {
            SanType::DnsName(dns_name) if dns.contains(dns_name.as_str()) => {}
            SanType::IpAddress(ip) if ips.iter().any(|a| a.parse() == Ok(*ip)) => {}
            SanType::DnsName(other) => return Err(format!("node {name} has no name {}", other.as_str())),
            SanType::IpAddress(other) => return Err(format!("node {name} has no address {other}")),
            other => return Err(format!("node {name} has no name {other:?}")),
        }
    }
    Ok(())
}

/// What clients trusting the cluster CA take for the API server, as the server knows it: what no node's
/// serving certificate may name.
#[derive(Clone, Debug, Default)]
pub struct ApiServerNames {
    /// Every DNS name and IP address of the API server's serving certificate.
    pub names: Vec<String>,
    /// The service range (an address and a prefix length): the `kubernetes` Service's address, and every
    /// other Service's, which pods dial.
    pub service_cidr: Option<(IpAddr, u8)>,
}

/// The names a node's serving certificate may never carry, besides [`ApiServerNames`]: the addresses of
/// the `kubernetes` Service's endpoints (every live API server's, this one's included) and every name and
/// address the other Nodes report.
pub(crate) struct Reserved<'a> {
    pub(crate) apiserver: &'a ApiServerNames,
    pub(crate) endpoints: &'a [IpAddr],
    pub(crate) nodes: &'a [Node],
}

/// A DNS name as certificates are matched: case-insensitive, the root's trailing dot ignored.
fn dns_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `address` is in the range `cidr` (an address and a prefix length).
fn in_cidr(address: IpAddr, (base, prefix): (IpAddr, u8)) -> bool {
    match (address.to_canonical(), base) {
        (IpAddr::V4(address), IpAddr::V4(base)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            u32::from(address) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(address), IpAddr::V6(base)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            u128::from(address) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

impl Reserved<'_> {
    /// Why the serving certificate `request` of node `node` may never be issued: the first subject
    /// alternative name that is another's, and whose. Loopback addresses are no one's: the default node
    /// address (127.0.0.1), on which several nodes of one machine, and `skiff up`'s, serve; a certificate
    /// for one is only of use to a process on the machine of the client it would deceive.
    pub(crate) fn check(&self, request: &ParsedRequest, node: &str) -> Result<(), String> {
        let others = self.nodes.iter().filter(|other| other.metadata.name.as_deref() != Some(node));
        for san in &request.csr.params.subject_alt_names {
            let owner = match san {
                SanType::DnsName(name) => self.dns_owner(name.as_str(), others.clone()),
                SanType::IpAddress(ip) => self.ip_owner(*ip, others.clone()),
                // Refused by the serving request's shape already.
                _ => None,
            };
            if let Some(owner) = owner {
                let name = match san {
                    SanType::DnsName(name) => name.as_str().to_string(),
                    SanType::IpAddress(ip) => ip.to_string(),
                    other => format!("{other:?}"),
                };
                return Err(format!("subjectAltName {name:?} is reserved: {owner}"));
            }
        }
        Ok(())
    }

    fn dns_owner<'n>(&self, name: &str, mut others: impl Iterator<Item = &'n Node>) -> Option<String> {
        let name = dns_key(name);
        if name.contains('*') {
            // A wildcard would name the API server's names too; no Node is named by one.
            return Some("a wildcard is no node's name".into());
        }
        if self.apiserver.names.iter().any(|reserved| dns_key(reserved) == name) {
            return Some("the API server's serving certificate names it".into());
        }
        others
            .find(|other| {
                let addresses = other.status.iter().flat_map(|s| s.addresses.iter().flatten());
                other.metadata.name.as_deref().map(dns_key) == Some(name.clone())
                    || addresses.map(|a| dns_key(&a.address)).any(|address| address == name)
            })
            .map(|other| format!("node {} reports it", other.metadata.name.as_deref().unwrap_or_default()))
    }

    fn ip_owner<'n>(&self, ip: IpAddr, mut others: impl Iterator<Item = &'n Node>) -> Option<String> {
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            return Some("an unspecified address names every address".into());
        }
        if self.apiserver.service_cidr.is_some_and(|cidr| in_cidr(ip, cidr)) {
            return Some("it is in the service range".into());
        }
        if ip.is_loopback() {
            return None;
        }
        let same = |text: &str| text.parse::<IpAddr>().is_ok_and(|other| other.to_canonical() == ip);
        if self.apiserver.names.iter().any(|name| same(name)) {
            return Some("the API server's serving certificate names it".into());
        }
        if self.endpoints.iter().any(|endpoint| endpoint.to_canonical() == ip) {
            return Some("it is an address of the kubernetes Service's endpoints".into());
        }
        others
            .find(|other| other.status.iter().flat_map(|s| s.addresses.iter().flatten()).any(|a| same(&a.address)))
            .map(|other| format!("node {} reports it", other.metadata.name.as_deref().unwrap_or_default()))
    }
}

/// Whether `request` asks for an API client certificate with `usages`: client auth, and nothing but
/// digital signature and key encipherment beside it. Never in `system:masters`: Kubernetes' admission
/// (CertificateSubjectRestriction) refuses such requests, and the signer refuses them again here, since an
/// approver need not be an admin.
pub(crate) fn validate_apiserver_client(request: &ParsedRequest, usages: &[String]) -> Result<(), String> {
    for usage in usages {
        if ![DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, CLIENT_AUTH].contains(&usage.as_str()) {
            return Err(format!("invalid usage for client certificate: {usage}"));
        }
    }
    if !usages.iter().any(|u| u == CLIENT_AUTH) {
        return Err(format!("missing required usage for client certificate: {CLIENT_AUTH}"));
    }
    if request.organizations.iter().any(|o| o == MASTERS_GROUP) {
        return Err(format!("use of {APISERVER_CLIENT_SIGNER} signer with {MASTERS_GROUP} group is not allowed"));
    }
    Ok(())
}

/// The SubjectAccessReviews that may approve a node client request, in order, with the approval's message:
/// renewing one's own certificate first, as Kubernetes tries it.
pub(crate) fn approvals(username: Option<&str>, request: &ParsedRequest) -> Vec<(&'static str, &'static str)> {
    let mut approvals = Vec::new();
    if username.is_some() && username == request.common_name.as_deref() {
        approvals.push(("selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview."));
    }
    approvals.push(("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."));
    approvals
}

/// The certificate's key usages and extended key usages from the request's `spec.usages`.
pub(crate) fn key_usages(usages: &[String]) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), String> {
    let (mut key, mut extended) = (Vec::new(), Vec::new());
    let mut unrecognized = Vec::new();
    for usage in usages {
        match usage.as_str() {
            DIGITAL_SIGNATURE => key.push(KeyUsagePurpose::DigitalSignature),
            KEY_ENCIPHERMENT => key.push(KeyUsagePurpose::KeyEncipherment),
            CLIENT_AUTH => extended.push(ExtendedKeyUsagePurpose::ClientAuth),
            SERVER_AUTH => extended.push(ExtendedKeyUsagePurpose::ServerAuth),
            other => unrecognized.push(other),
        }
    }
    if !unrecognized.is_empty() {
        return Err(format!("unrecognized usage values: {unrecognized:?}"));
    }
    key.dedup();
    extended.dedup();
    Ok((key, extended))
}

/// How long the certificate lasts: what the request asks, between [`MIN_LIFETIME`] and
/// [`DEFAULT_LIFETIME`].
pub(crate) fn lifetime(expiration_seconds: Option<i32>) -> Duration {
    match expiration_seconds {
        None => DEFAULT_LIFETIME,
        Some(seconds) => Duration::from_secs(u64::try_from(seconds).unwrap_or(0)).clamp(MIN_LIFETIME, DEFAULT_LIFETIME),
    }
}

/// `notBefore` and `notAfter` of a certificate issued at `now` for `lifetime`, never past the CA's own end.
pub(crate) fn validity(
    now: OffsetDateTime,
    lifetime: Duration,
    ca_not_after: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let not_before = now - BACKDATE;
    let not_after = if lifetime < SHORT_LIFETIME { now + lifetime } else { not_before + lifetime };
    (not_before, not_after.min(ca_not_after))
}

/// The cluster CA as the signer uses it.
pub(crate) struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// No certificate outlives the CA that signed it.
    not_after: OffsetDateTime,
}

impl Authority {
    pub(crate) fn load(ca: &SigningCa) -> Result<Self, CsrError> {
        let key = KeyPair::from_pem(&ca.key_pem).map_err(CsrError::Ca)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(CsrError::Ca)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).map_err(|_| CsrError::CaCertificate)?;
        let cert = pem.parse_x509().map_err(|_| CsrError::CaCertificate)?;
        Ok(Self { issuer, not_after: cert.validity().not_after.to_datetime() })
    }

    /// The PEM certificate for `request`, as Kubernetes' signing policy makes it: the subject and subject
    /// alternative names as requested; the usages the object names (not the request's extensions); never a
    /// CA; a random serial; valid from a little before `now` for `lifetime`.
    pub(crate) fn sign(
        &self,
        request: &ParsedRequest,
        usages: (Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>),
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<String, CsrError> {
        let mut csr = request.csr.clone();
        let params = &mut csr.params;
        (params.key_usages, params.extended_key_usages) = usages;
        params.is_ca = IsCa::ExplicitNoCa;
        params.name_constraints = None;
        params.crl_distribution_points.clear();
        params.custom_extensions.clear();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        (params.not_before, params.not_after) = validity(now, lifetime, self.not_after);
        Ok(csr.signed_by(&self.issuer).map_err(CsrError::Sign)?.pem())
    }
}

/// A random 128-bit serial, positive and of full length (RFC 5280: positive, at most 20 octets), unique per
/// certificate even when two requests share a key.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

struct Context {
    client: kube::Client,
    /// None without a CA (or one that did not load): requests are approved, not signed.
    authority: Option<Authority>,
    /// What no node's serving certificate may name.
    apiserver_names: ApiServerNames,
}

/// Runs the approver and, given the CA, the signer until `shutdown`.
pub async fn run(
    client: kube::Client,
    ca: Option<SigningCa>,
    apiserver_names: ApiServerNames,
    shutdown: CancellationToken,
) {
    let authority = match ca.as_ref().map(Authority::load).transpose() {
        Ok(authority) => authority,
        Err(error) => {
            tracing::error!(error = ?error, "certificate signing requests will not be signed");
            None
        }
    };
    let context = Arc::new(Context { client: client.clone(), authority, apiserver_names });
    Controller::new(Api::<CertificateSigningRequest>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

fn error_policy(csr: Arc<CertificateSigningRequest>, error: &CsrError, _: Arc<Context>) -> Action {
    tracing::warn!(csr = %csr.name_any(), error = ?error, "certificate signing request reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, context: Arc<Context>) -> Result<Action, CsrError> {
    let span = tracing::debug_span!("reconcile", csr = %csr.name_any(), signer = %csr.spec.signer_name);
    sync(&csr, &context).instrument(span).await
}

async fn sync(csr: &CertificateSigningRequest, context: &Context) -> Result<Action, CsrError> {
    let issued = csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty());
    if issued || has_condition(csr, DENIED) || has_condition(csr, FAILED) {
        return Ok(Action::await_change());
    }
    if has_condition(csr, APPROVED) { sign(csr, context).await } else { approve(csr, context).await }
}

/// Whether the request has a condition of `kind` with status True.
fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == kind && c.status == "True")
}

fn condition(kind: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    let now = Time(jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The request with `condition` added.
fn with_condition(
    csr: &CertificateSigningRequest,
    condition: CertificateSigningRequestCondition,
) -> CertificateSigningRequest {
    let mut updated = csr.clone();
    updated.status.get_or_insert_default().conditions.get_or_insert_default().push(condition);
    updated
}

async fn approve(csr: &CertificateSigningRequest, context: &Context) -> Result<Action, CsrError> {
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => approve_node_client(csr, context).await,
        KUBELET_SERVING_SIGNER => approve_node_serving(csr, context).await,
        _ => Ok(Action::await_change()),
    }
}

/// The request of `csr` when it has the shape `validate` checks, else None (logged): the request never
/// changes, so neither does the verdict on its shape, and it is left to an admin without a retry.
fn shaped(csr: &CertificateSigningRequest, validate: Validate) -> Option<ParsedRequest> {
    let spec = &csr.spec;
    let request = match parse_request(&spec.request.0) {
        Ok(request) => request,
        Err(error) => {
            tracing::info!(error = %error, "not approving an unreadable node request");
            return None;
        }
    };
    if let Err(reason) = validate(&request, spec.usages.as_deref().unwrap_or_default()) {
        tracing::debug!(%reason, "not a node request of its signer's shape, left to an admin");
        return None;
    }
    Some(request)
}

/// Adds the Approved condition with `message`.
async fn approved(csr: &CertificateSigningRequest, message: &str, context: &Context) -> Result<Action, CsrError> {
    decided(csr, condition(APPROVED, "AutoApproved", message.into()), context).await
}

/// Writes the verdict `condition` (Approved or Denied) through the approval subresource.
async fn decided(
    csr: &CertificateSigningRequest,
    condition: CertificateSigningRequestCondition,
    context: &Context,
) -> Result<Action, CsrError> {
    let api: Api<CertificateSigningRequest> = Api::all(context.client.clone());
    api.replace_subresource("approval", &csr.name_any(), &PostParams::default(), &with_condition(csr, condition))
        .await?;
    Ok(Action::await_change())
}

async fn approve_node_client(csr: &CertificateSigningRequest, context: &Context) -> Result<Action, CsrError> {
    let spec = &csr.spec;
    let Some(request) = shaped(csr, validate_kubelet_client) else { return Ok(Action::await_change()) };
    let mut tried = Vec::new();
    for (subresource, message) in approvals(spec.username.as_deref(), &request) {
        tried.push(subresource);
        if !may_create(context, csr, subresource).await? {
            continue;
        }
        let action = approved(csr, message, context).await?;
        tracing::info!(requester = ?spec.username, subresource, "node client certificate request approved");
        return Ok(action);
    }
    tracing::info!(requester = ?spec.username, ?tried, "node client request not approved: access review denied");
    Ok(Action::requeue(RECHECK))
}

async fn approve_node_serving(csr: &CertificateSigningRequest, context: &Context) -> Result<Action, CsrError> {
    let spec = &csr.spec;
    let Some(request) = shaped(csr, validate_kubelet_serving) else { return Ok(Action::await_change()) };
    let node = match serving_requester(spec.username.as_deref(), spec.groups.as_deref().unwrap_or_default(), &request) {
        Ok(node) => node,
        Err(reason) => {
            tracing::info!(%reason, "kubelet serving request not approved, left to an admin");
            return Ok(Action::await_change());
        }
    };
    // A name that is another's never becomes the node's: denied for good, whatever its Node says.
    let nodes = Api::<Node>::all(context.client.clone()).list(&ListParams::default()).await?.items;
    let kubernetes = Api::<Endpoints>::namespaced(context.client.clone(), "default").get_opt("kubernetes").await?;
    let endpoints: Vec<IpAddr> = kubernetes
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .flat_map(|subset| subset.addresses.iter().flatten())
        .filter_map(|address| address.ip.parse().ok())
        .collect();
    let reserved = Reserved { apiserver: &context.apiserver_names, endpoints: &endpoints, nodes: &nodes };
    if let Err(reason) = reserved.check(&request, node) {
        tracing::warn!(requester = ?spec.username, %reason, "kubelet serving certificate request denied");
        let message = format!("Denying kubelet serving certificate: {reason}.");
        return decided(csr, condition(DENIED, RESERVED_NAME, message), context).await;
    }
    // The Node's addresses can come later (a node registering) or change (a node restarted on a new
    // address, which updates its Node before it asks): looked at again.
    let verdict = match nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node)) {
        Some(registered) => names_of_node(&request, registered),
        None => Err(format!("node {node} is not registered")),
    };
    if let Err(reason) = verdict {
        tracing::info!(%reason, "kubelet serving request not approved yet");
        return Ok(Action::requeue(RECHECK));
    }
    let action = approved(csr, SERVING_APPROVAL, context).await?;
    tracing::info!(requester = ?spec.username, "kubelet serving certificate request approved");
    Ok(action)
}

/// Whether the request's requester may create `certificatesigningrequests/{subresource}`, by a
/// SubjectAccessReview with the requester's user, uid, groups and extra as the request records them.
async fn may_create(context: &Context, csr: &CertificateSigningRequest, subresource: &str) -> Result<bool, CsrError> {
    let spec = &csr.spec;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(context.client.clone());
    let review = api.create(&PostParams::default(), &review).await?;
    Ok(review.status.is_some_and(|status| status.allowed))
}

async fn sign(csr: &CertificateSigningRequest, context: &Context) -> Result<Action, CsrError> {
    let spec = &csr.spec;
    let validate: Validate = match spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => validate_kubelet_client,
        KUBELET_SERVING_SIGNER => validate_kubelet_serving,
        APISERVER_CLIENT_SIGNER => validate_apiserver_client,
        // Another signer's.
        _ => return Ok(Action::await_change()),
    };
    let Some(authority) = &context.authority else { return Ok(Action::await_change()) };
    let usages = spec.usages.as_deref().unwrap_or_default();
    let checked = parse_request(&spec.request.0)
        .map_err(|error| format!("unable to parse csr: {}", chain(&error)))
        .and_then(|request| validate(&request, usages).map(|()| request))
        .and_then(|request| key_usages(usages).map(|usages| (request, usages)));
    let api: Api<CertificateSigningRequest> = Api::all(context.client.clone());
    let (request, key_usages) = match checked {
        Ok(checked) => checked,
        Err(message) => {
            tracing::warn!(%message, "certificate signing request failed");
            let failed = with_condition(csr, condition(FAILED, "SignerValidationFailure", message));
            api.replace_status(&csr.name_any(), &PostParams::default(), &failed).await?;
            return Ok(Action::await_change());
        }
    };
    let pem = authority.sign(&request, key_usages, lifetime(spec.expiration_seconds), OffsetDateTime::now_utc())?;
    let mut issued = csr.clone();
    issued.status.get_or_insert_default().certificate = Some(ByteString(pem.into_bytes()));
    api.replace_status(&csr.name_any(), &PostParams::default(), &issued).await?;
    tracing::info!(subject = ?request.common_name, requester = ?spec.username, "certificate issued");
    Ok(Action::await_change())
}

/// An error and its sources, for a message written to the object.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, PublicKeyData};
    use x509_parser::extensions::ParsedExtension;

    use super::*;

    fn usages(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| u.to_string()).collect()
    }

    /// A PEM request from rcgen with `subject` (type, value) attributes and `sans`.
    fn request_pem(subject: &[(DnType, &str)], sans: &[&str]) -> String {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn node_request(name: &str) -> ParsedRequest {
        let pem = request_pem(&[(DnType::CommonName, name), (DnType::OrganizationName, NODES_GROUP)], &[]);
        parse_request(pem.as_bytes()).unwrap()
    }

    fn ca(not_after: Option<OffsetDateTime>) -> (Authority, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "skiff-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        if let Some(not_after) = not_after {
            params.not_after = not_after;
        }
        let cert = params.self_signed(&key).unwrap();
        let ca = SigningCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        (Authority::load(&ca).unwrap(), key)
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn node_client_requests_are_recognized_as_kubernetes_does() {
        let node = node_request("system:node:a");
        assert_eq!(node.common_name.as_deref(), Some("system:node:a"));
        assert_eq!(validate_kubelet_client(&node, &usages(&[DIGITAL_SIGNATURE, CLIENT_AUTH])), Ok(()));
        let rsa = usages(&[KEY_ENCIPHERMENT, CLIENT_AUTH, DIGITAL_SIGNATURE]);
        assert_eq!(validate_kubelet_client(&node, &rsa), Ok(()));
        for wrong in [&[CLIENT_AUTH][..], &[DIGITAL_SIGNATURE, CLIENT_AUTH, "server auth"], &[]] {
            let error = validate_kubelet_client(&node, &usages(wrong)).unwrap_err();
            assert!(error.starts_with("usages did not match"), "{wrong:?}: {error}");
        }

        // Subject, subject alternative names, and why it is no node client request.
        type Case<'a> = (&'a [(DnType, &'a str)], &'a [&'a str], &'a str);
        let cases: [Case; 5] = [
            (&[(DnType::CommonName, "system:node:a")], &[], "subject organization is not system:nodes"),
            (
                &[(DnType::CommonName, "system:node:a"), (DnType::OrganizationName, MASTERS_GROUP)],
                &[],
                "subject organization is not system:nodes",
            ),
            (
                &[(DnType::CommonName, "admin"), (DnType::OrganizationName, NODES_GROUP)],
                &[],
                "subject common name does not begin with system:node:",
            ),
            (
                &[(DnType::CommonName, "system:node:a"), (DnType::OrganizationName, NODES_GROUP)],
                &["a.example"],
                "DNS subjectAltNames are not allowed",
            ),
            (
                &[(DnType::CommonName, "system:node:a"), (DnType::OrganizationName, NODES_GROUP)],
                &["10.0.0.1"],
                "IP subjectAltNames are not allowed",
            ),
        ];
        for (subject, sans, expected) in cases {
            let request = parse_request(request_pem(subject, sans).as_bytes()).unwrap();
            let verdict = validate_kubelet_client(&request, &usages(&[DIGITAL_SIGNATURE, CLIENT_AUTH]));
            assert_eq!(verdict, Err(expected.to_string()), "{subject:?} {sans:?}");
        }
    }

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let length = contents.len().to_be_bytes();
        match contents.len() {
            short @ 0..0x80 => out.push(short as u8),
            _ => {
                let significant = &length[length.iter().position(|b| *b != 0).unwrap()..];
                out.push(0x80 | significant.len() as u8);
                out.extend_from_slice(significant);
            }
        }
        out.extend_from_slice(contents);
        out
    }

    #[test]
    fn a_subject_naming_an_attribute_twice_is_refused() {
        // rcgen keeps one value per attribute type, so this request is written by hand, and signed: CN, O, O.
        use rcgen::SigningKey;
        let key = KeyPair::generate().unwrap();
        let rdn = |oid: u8, value: &str| {
            der(0x31, &der(0x30, &[der(0x06, &[0x55, 0x04, oid]), der(0x0c, value.as_bytes())].concat()))
        };
        let subject = der(0x30, &[rdn(3, "system:node:a"), rdn(10, MASTERS_GROUP), rdn(10, NODES_GROUP)].concat());
        let info =
            der(0x30, &[&[0x02, 0x01, 0x00][..], &subject, &key.subject_public_key_info(), &[0xa0, 0x00]].concat());
        let ecdsa_with_sha256 = der(0x30, &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]));
        let signature = der(0x03, &[&[0x00][..], &key.sign(&info).unwrap()].concat());
        let request = der(0x30, &[info, ecdsa_with_sha256, signature].concat());
        assert!(matches!(parse_request_der(&request), Err(RequestError::Repeated(name)) if name == "O"));
    }

    #[test]
    fn unreadable_and_forged_requests_are_refused() {
        assert!(matches!(parse_request(b"not pem"), Err(RequestError::NotPem)));
        let certificate = KeyPair::generate().and_then(|key| CertificateParams::default().self_signed(&key)).unwrap();
        assert!(matches!(parse_request(certificate.pem().as_bytes()), Err(RequestError::NotPem)));
        assert!(matches!(parse_request_der(&[0x30, 0x00]), Err(RequestError::Malformed)));

        let pem = request_pem(&[(DnType::CommonName, "system:node:a"), (DnType::OrganizationName, NODES_GROUP)], &[]);
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut forged = parsed.contents.clone();
        // The last byte of the subject's organization: the signature no longer matches.
        let at = forged.windows(NODES_GROUP.len()).position(|w| w == NODES_GROUP.as_bytes()).unwrap();
        forged[at + NODES_GROUP.len() - 1] = b'z';
        assert!(matches!(parse_request_der(&forged), Err(RequestError::Unsupported(_))));
    }

    #[test]
    fn renewing_ones_own_certificate_is_asked_first() {
        let request = node_request("system:node:a");
        let subresources = |user| approvals(user, &request).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(subresources(Some("system:node:a")), ["selfnodeclient", "nodeclient"]);
        assert_eq!(subresources(Some("system:bootstrap:skiff")), ["nodeclient"]);
        assert_eq!(subresources(None), ["nodeclient"]);
        assert_eq!(
            approvals(None, &request)[0].1,
            "Auto approving kubelet client certificate after SubjectAccessReview."
        );
    }

    #[test]
    fn api_client_requests_need_client_auth_and_never_get_masters() {
        let user = parse_request(
            request_pem(&[(DnType::CommonName, "jane"), (DnType::OrganizationName, "dev")], &[]).as_bytes(),
        )
        .unwrap();
        assert_eq!(validate_apiserver_client(&user, &usages(&[CLIENT_AUTH])), Ok(()));
        assert_eq!(
            validate_apiserver_client(&user, &usages(&[DIGITAL_SIGNATURE])),
            Err("missing required usage for client certificate: client auth".into())
        );
        assert_eq!(
            validate_apiserver_client(&user, &usages(&[CLIENT_AUTH, "server auth"])),
            Err("invalid usage for client certificate: server auth".into())
        );
        let admin = parse_request(
            request_pem(&[(DnType::CommonName, "jane"), (DnType::OrganizationName, MASTERS_GROUP)], &[]).as_bytes(),
        )
        .unwrap();
        let refused = validate_apiserver_client(&admin, &usages(&[CLIENT_AUTH])).unwrap_err();
        assert!(refused.contains("system:masters"), "{refused}");
    }

    #[test]
    fn lifetimes_are_what_is_asked_within_bounds() {
        assert_eq!(lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(3600)), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(60)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(-5)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(i32::MAX)), DEFAULT_LIFETIME);

        let now = at(1_750_000_000);
        let far = at(4_000_000_000);
        let (before, after) = validity(now, DEFAULT_LIFETIME, far);
        assert_eq!((before, after), (now - BACKDATE, now - BACKDATE + DEFAULT_LIFETIME));
        // A short certificate is not shortened by the backdating.
        assert_eq!(validity(now, MIN_LIFETIME, far), (now - BACKDATE, now + MIN_LIFETIME));
        // Nor does one outlive its CA.
        assert_eq!(validity(now, DEFAULT_LIFETIME, now + Duration::from_secs(60)).1, now + Duration::from_secs(60));
    }

    #[test]
    fn usages_map_to_key_usages_and_unknown_ones_are_refused() {
        let (key, extended) = key_usages(&usages(&[DIGITAL_SIGNATURE, CLIENT_AUTH, CLIENT_AUTH])).unwrap();
        assert_eq!(key, [KeyUsagePurpose::DigitalSignature]);
        assert_eq!(extended, [ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(key_usages(&usages(&["cert sign"])).unwrap_err(), r#"unrecognized usage values: ["cert sign"]"#);
    }

    #[test]
    fn a_node_request_is_signed_by_the_ca_as_asked() {
        let (authority, ca_key) = ca(None);
        let request = node_request("system:node:a");
        let now = OffsetDateTime::now_utc();
        let usages = key_usages(&usages(&[DIGITAL_SIGNATURE, CLIENT_AUTH])).unwrap();
        let pem = authority.sign(&request, usages, lifetime(Some(3600)), now).unwrap();

        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let ca_spki = ca_key.subject_public_key_info();
        let ca_spki = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca_spki).unwrap().1;
        cert.verify_signature(Some(&ca_spki)).expect("signed by the CA");
        assert_eq!(cert.issuer().iter_common_name().next().unwrap().as_str().unwrap(), "skiff-ca");
        let subject = cert.subject();
        assert_eq!(subject.iter_common_name().next().unwrap().as_str().unwrap(), "system:node:a");
        let organizations: Vec<&str> = subject.iter_organization().map(|o| o.as_str().unwrap()).collect();
        assert_eq!(organizations, [NODES_GROUP]);
        assert_eq!(cert.public_key().raw, request.csr.public_key.subject_public_key_info());
        let validity = cert.validity();
        assert_eq!(validity.not_before.timestamp(), (now - BACKDATE).unix_timestamp());
        assert_eq!(validity.not_after.timestamp(), (now + Duration::from_secs(3600)).unix_timestamp());
        let mut seen = Vec::new();
        for extension in cert.extensions() {
            match extension.parsed_extension() {
                ParsedExtension::KeyUsage(usage) => {
                    assert!(usage.digital_signature() && !usage.key_encipherment() && !usage.key_cert_sign());
                    seen.push("key usage");
                }
                ParsedExtension::ExtendedKeyUsage(usage) => {
                    assert!(usage.client_auth && !usage.server_auth && !usage.any);
                    seen.push("extended key usage");
                }
                ParsedExtension::BasicConstraints(constraints) => {
                    assert!(!constraints.ca);
                    seen.push("basic constraints");
                }
                ParsedExtension::SubjectAlternativeName(_) => panic!("no subject alternative names were asked for"),
                _ => {}
            }
        }
        seen.sort();
        assert_eq!(seen, ["basic constraints", "extended key usage", "key usage"]);

        // Every certificate gets a serial of its own, even for the same key.
        let again = authority.sign(&request, (vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]), MIN_LIFETIME, now);
        let (_, again) = x509_parser::pem::parse_x509_pem(again.unwrap().as_bytes()).unwrap();
        assert_ne!(again.parse_x509().unwrap().raw_serial(), cert.raw_serial());
    }

    fn serving_request(name: &str, sans: &[&str]) -> ParsedRequest {
        let pem = request_pem(&[(DnType::CommonName, name), (DnType::OrganizationName, NODES_GROUP)], sans);
        parse_request(pem.as_bytes()).unwrap()
    }

    #[test]
    fn kubelet_serving_requests_are_recognized_as_kubernetes_does() {
        let serving = usages(&[DIGITAL_SIGNATURE, SERVER_AUTH]);
        let request = serving_request("system:node:a", &["a", "10.0.0.1"]);
        assert_eq!(validate_kubelet_serving(&request, &serving), Ok(()));
        let rsa = usages(&[KEY_ENCIPHERMENT, SERVER_AUTH, DIGITAL_SIGNATURE]);
        assert_eq!(validate_kubelet_serving(&request, &rsa), Ok(()));
        for wrong in
            [&[DIGITAL_SIGNATURE, CLIENT_AUTH][..], &[SERVER_AUTH], &[DIGITAL_SIGNATURE, SERVER_AUTH, CLIENT_AUTH]]
        {
            let error = validate_kubelet_serving(&request, &usages(wrong)).unwrap_err();
            assert_eq!(error, "usages did not match [digital signature key encipherment server auth]", "{wrong:?}");
        }
        let cases = [
            (serving_request("system:node:a", &[]), "DNS or IP subjectAltName is required"),
            (serving_request("a", &["a"]), "subject common name does not begin with system:node:"),
            (
                parse_request(request_pem(&[(DnType::CommonName, "system:node:a")], &["a"]).as_bytes()).unwrap(),
                "subject organization is not system:nodes",
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(validate_kubelet_serving(&request, &serving), Err(expected.to_string()));
        }
        // And a serving request is no client request, nor the reverse.
        assert!(validate_kubelet_client(&request, &serving).is_err());
        assert!(validate_kubelet_serving(&node_request("system:node:a"), &serving).is_err());
    }

    #[test]
    fn a_serving_request_is_approved_for_its_own_node_and_addresses() {
        let request = serving_request("system:node:a", &["a", "10.0.0.1"]);
        let nodes = vec![NODES_GROUP.to_string()];
        assert_eq!(serving_requester(Some("system:node:a"), &nodes, &request), Ok("a"));
        for (user, groups) in [
            (Some("system:node:b"), nodes.clone()),
            (Some("system:node:a"), vec!["system:authenticated".to_string()]),
            (Some("system:bootstrap:skiff"), vec!["system:bootstrappers".to_string()]),
            (None, nodes.clone()),
        ] {
            assert!(serving_requester(user, &groups, &request).is_err(), "{user:?} in {groups:?}");
        }
        let nameless = serving_request("system:node:", &["a"]);
        let refused = serving_requester(Some("system:node:"), &nodes, &nameless);
        assert_eq!(refused, Err(r#""system:node:" names no node"#.to_string()));

        let node = |addresses: &[(&str, &str)]| node_with("a", addresses);
        let registered = node(&[("InternalIP", "10.0.0.1"), ("Hostname", "a-host")]);
        assert_eq!(names_of_node(&request, &registered), Ok(()));
        assert_eq!(names_of_node(&serving_request("system:node:a", &["a-host"]), &registered), Ok(()));
        assert_eq!(
            names_of_node(&serving_request("system:node:a", &["a", "10.0.0.2"]), &registered),
            Err("node a has no address 10.0.0.2".into())
        );
        assert_eq!(
            names_of_node(&serving_request("system:node:a", &["kubernetes.default"]), &registered),
            Err("node a has no name kubernetes.default".into())
        );
        // An address the Node does not report (yet) is not taken on the request's word.
        assert!(names_of_node(&request, &node(&[])).is_err());
    }

    fn node_with(name: &str, addresses: &[(&str, &str)]) -> Node {
        let addresses: Vec<serde_json::Value> =
            addresses.iter().map(|(kind, address)| serde_json::json!({"type": kind, "address": address})).collect();
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "status": {"addresses": addresses}}))
            .unwrap()
    }

    #[test]
    fn a_serving_request_naming_the_api_server_or_another_node_is_reserved() {
        let apiserver = ApiServerNames {
            names: ["localhost", "127.0.0.1", "10.43.0.1", "kubernetes.default.svc", "192.168.1.10", "API.example"]
                .map(String::from)
                .to_vec(),
            service_cidr: Some(("10.43.0.0".parse().unwrap(), 16)),
        };
        let endpoints = ["192.168.1.11".parse().unwrap()];
        let nodes = [
            node_with("a", &[("InternalIP", "10.0.0.1"), ("Hostname", "a")]),
            node_with("b", &[("InternalIP", "10.0.0.2"), ("Hostname", "b-host"), ("InternalIP", "127.0.0.1")]),
        ];
        let reserved = Reserved { apiserver: &apiserver, endpoints: &endpoints, nodes: &nodes };
        let check = |sans: &[&str]| reserved.check(&serving_request("system:node:a", sans), "a");

        // Its own name and address, and a loopback address, which every node of a machine shares.
        assert_eq!(check(&["a", "10.0.0.1", "127.0.0.1", "::1"]), Ok(()));
        let cases = [
            ("kubernetes.default.svc", "the API server's serving certificate names it"),
            ("Kubernetes.Default.Svc.", "the API server's serving certificate names it"),
            ("api.example", "the API server's serving certificate names it"),
            ("localhost", "the API server's serving certificate names it"),
            ("192.168.1.10", "the API server's serving certificate names it"),
            ("::ffff:192.168.1.10", "the API server's serving certificate names it"),
            ("10.43.0.1", "it is in the service range"),
            ("10.43.200.7", "it is in the service range"),
            ("192.168.1.11", "it is an address of the kubernetes Service's endpoints"),
            ("0.0.0.0", "an unspecified address names every address"),
            ("*.default.svc", "a wildcard is no node's name"),
            ("b", "node b reports it"),
            ("b-host", "node b reports it"),
            ("10.0.0.2", "node b reports it"),
        ];
        for (san, owner) in cases {
            let refused = check(&["a", san]).unwrap_err();
            assert!(
                refused.starts_with("subjectAltName ") && refused.ends_with(&format!(" is reserved: {owner}")),
                "{san}: {refused}"
            );
        }
        assert_eq!(
            check(&["a", "kubernetes.default.svc"]),
            Err(
                r#"subjectAltName "kubernetes.default.svc" is reserved: the API server's serving certificate names it"#
                    .into()
            )
        );
        // A node joined under a name the API server has is refused its very name.
        let impostor = serving_request("system:node:kubernetes.default.svc", &["kubernetes.default.svc"]);
        assert!(reserved.check(&impostor, "kubernetes.default.svc").is_err());
        // Just outside the service range.
        assert_eq!(check(&["10.44.0.1"]), Ok(()));
    }

    #[test]
    fn a_serving_request_is_signed_for_server_auth_with_its_names() {
        let (authority, _) = ca(None);
        let request = serving_request("system:node:a", &["a", "10.0.0.1"]);
        let usages = key_usages(&usages(&[DIGITAL_SIGNATURE, SERVER_AUTH])).unwrap();
        let pem = authority.sign(&request, usages, DEFAULT_LIFETIME, OffsetDateTime::now_utc()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let extended = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(extended.server_auth && !extended.client_auth);
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(a)", "IPAddress(0a:00:00:01)"]);
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca_end = OffsetDateTime::now_utc() + Duration::from_secs(24 * 3600);
        let (authority, _) = ca(Some(ca_end));
        let usages = key_usages(&usages(&[CLIENT_AUTH])).unwrap();
        let pem = authority.sign(&node_request("system:node:a"), usages, DEFAULT_LIFETIME, OffsetDateTime::now_utc());
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.unwrap().as_bytes()).unwrap();
        assert_eq!(pem.parse_x509().unwrap().validity().not_after.timestamp(), ca_end.unix_timestamp());
    }
}
