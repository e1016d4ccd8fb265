//! First-start credentials, kept in the data directory: a CA, a serving certificate signed by it, the admin
//! token, the node join token, the key that signs service account tokens (`sa.key`), and an admin
//! kubeconfig that points kubectl at the server.
//!
//! Secure by default: the server speaks only HTTPS and answers only bearer tokens it made itself. Files
//! holding secrets are written with mode 0600 and replaced atomically, so a crash never leaves half a key.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use skiff_api::join::JoinToken;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot load the TLS key pair")]
    Tls(#[from] rustls::Error),
    #[error("cannot verify client certificates with the cluster CA")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The credentials the server presents to agents and checks them with.
    #[error("the {what} is not PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot verify agents' serving certificates with the cluster CA")]
    KubeletVerifier(#[source] rustls::client::VerifierBuilderError),
}

/// Paths of the credential files inside a data directory.
pub struct Credentials {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_token: String,
    /// The secret part of the join token in `node-token`: the bearer token node agents present.
    pub node_token: String,
    /// The ECDSA P-256 key (PKCS#8 PEM) service account tokens are signed with (kube-apiserver's
    /// `--service-account-signing-key-file`).
    pub service_account_key_pem: String,
}

impl Credentials {
    /// Loads the credentials in `dir`, making any that are missing. The serving certificate names the
    /// listen address (every address of the machine when it is unspecified) and `tls_sans`, and is remade
    /// when those names change, so moving the server to another address keeps working.
    pub fn load_or_create(dir: &Path, listen: SocketAddr, tls_sans: &[String]) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })?;
        let (ca_cert_pem, ca_key_pem) = match (read(dir, "ca.crt")?, read(dir, "ca.key")?) {
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                write_secret(dir, "ca.key", &key.serialize_pem())?;
                write_secret(dir, "ca.crt", &cert.pem())?;
                // A new CA invalidates any serving certificate signed by an old one.
                let _ = fs::remove_file(dir.join("server.crt"));
                (cert.pem(), key.serialize_pem())
            }
        };
        let names = subject_names(listen, tls_sans);
        let (server_cert_pem, server_key_pem) = match (read(dir, "server.crt")?, read(dir, "server.key")?) {
            (Some(cert), Some(key)) if read(dir, "server.names")?.as_deref() == Some(&names.join(",")) => (cert, key),
            _ => {
                let ca_key = KeyPair::from_pem(&ca_key_pem)?;
                // Signing needs only the CA's name and key, both of which are fixed, so the parameters are
                // rebuilt rather than parsed back from the PEM.
                let issuer = Issuer::new(ca_params()?, ca_key);
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(names.clone())?;
                params.distinguished_name.push(DnType::CommonName, "skiff-apiserver");
                let cert = params.signed_by(&key, &issuer)?;
                write_secret(dir, "server.key", &key.serialize_pem())?;
                write_secret(dir, "server.crt", &cert.pem())?;
                write_secret(dir, "server.names", &names.join(","))?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let admin_token = read_or_create_token(dir, "admin-token")?;
        let node_token = read_or_create_join_token(dir, &ca_cert_pem)?;
        let service_account_key_pem = read_or_create_service_account_key(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            server_cert_pem,
            server_key_pem,
            admin_token,
            node_token,
            service_account_key_pem,
        })
    }

    /// The rustls server configuration for the serving certificate, offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let certs = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PkiError::Io { path: self.dir.join("server.crt"), source })?;
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .map_err(|source| PkiError::Io { path: self.dir.join("server.key"), source })?
            .ok_or_else(|| PkiError::Io {
                path: self.dir.join("server.key"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no private key"),
            })?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut self.ca_cert_pem.as_bytes()) {
            roots.add(ca.map_err(|source| PkiError::Io { path: self.dir.join("ca.crt"), source })?)?;
        }
        // A client certificate is one way to authenticate among others (tokens), so a client without one
        // still completes the handshake; one that presents a certificate must present a valid one.
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The admin kubeconfig for a server reachable at `server_url`.
    pub fn kubeconfig(&self, server_url: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_cert_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server_url}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: skiff-admin\n  user:\n    token: {token}\n\
             contexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff-admin\n    \
             namespace: default\ncurrent-context: skiff\npreferences: {{}}\n",
            token = self.admin_token
        )
    }

    /// Writes `kubeconfig` into the data directory.
    pub fn write_kubeconfig(&self, server_url: &str) -> Result<PathBuf, PkiError> {
        write_secret(&self.dir, "kubeconfig", &self.kubeconfig(server_url))?;
        Ok(self.dir.join("kubeconfig"))
    }
}

/// What every server of a cluster must share: the CA (certificate and key), the admin and node secrets, and
/// the service account signing key (a token one server issued must authenticate at every other).
/// Servers on one etcd exchange it through the store, as k3s keeps its bootstrap data in the datastore, so a
/// second server joins with nothing but the store's address. Like the Secrets beside it, it is stored in the
/// clear: access to the store is access to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterSecrets {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub admin_token: String,
    pub node_secret: String,
    /// Empty in what a server older than service account tokens published; a server finding it so
    /// publishes its own key (see `server::shared_credentials`).
    #[serde(default)]
    pub service_account_key_pem: String,
}

impl ClusterSecrets {
    /// The secrets in `dir` (made by [`Credentials::load_or_create`]).
    pub fn read(credentials: &Credentials) -> Result<Self, PkiError> {
        let ca_key_pem = read(&credentials.dir, "ca.key")?.ok_or_else(|| PkiError::Io {
            path: credentials.dir.join("ca.key"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Ok(Self {
            ca_cert_pem: credentials.ca_cert_pem.clone(),
            ca_key_pem,
            admin_token: credentials.admin_token.clone(),
            node_secret: credentials.node_token.clone(),
            service_account_key_pem: credentials.service_account_key_pem.clone(),
        })
    }

    /// Makes `dir` hold these secrets; the next [`Credentials::load_or_create`] then signs a serving
    /// certificate with this CA and writes the matching join token.
    pub fn install(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })?;
        if read(dir, "ca.crt")?.as_deref() != Some(self.ca_cert_pem.as_str()) {
            write_secret(dir, "ca.key", &self.ca_key_pem)?;
            write_secret(dir, "ca.crt", &self.ca_cert_pem)?;
            let _ = fs::remove_file(dir.join("server.crt"));
            let _ = fs::remove_file(dir.join("server.names"));
        }
        write_secret(dir, "admin-token", &self.admin_token)?;
        if !self.service_account_key_pem.is_empty() {
            write_secret(dir, "sa.key", &self.service_account_key_pem)?;
        }
        let token = JoinToken { ca_hash: ca_hash(&self.ca_cert_pem), secret: self.node_secret.clone() };
        write_secret(dir, "node-token", &format!("{token}\n"))
    }
}

/// A client certificate and its key (PEM) signed by the cluster CA in `dir` for `user` in `group`: the API server
/// reads the subject's common name as the user and its organization as the group. Valid for `days`,
/// from an hour ago (clocks of a cluster's machines differ a little).
pub fn client_certificate(
    dir: &Path,
    user: &str,
    group: Option<&str>,
    days: i64,
) -> Result<(String, String), PkiError> {
    let ca_key = read(dir, "ca.key")?
        .ok_or_else(|| PkiError::Io { path: dir.join("ca.key"), source: std::io::ErrorKind::NotFound.into() })?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params.distinguished_name.push(DnType::OrganizationName, group);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig for `user` (in `group`) holding a fresh client certificate, for a server at `server_url`.
pub fn user_kubeconfig(
    dir: &Path,
    server_url: &str,
    user: &str,
    group: Option<&str>,
    days: i64,
) -> Result<String, PkiError> {
    use base64::Engine;
    let encode = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let ca_cert_pem = read(dir, "ca.crt")?
        .ok_or_else(|| PkiError::Io { path: dir.join("ca.crt"), source: std::io::ErrorKind::NotFound.into() })?;
    let (cert, key) = client_certificate(dir, user, group, days)?;
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server_url}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    \
         client-key-data: {key}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: {user}\n    \
         namespace: default\ncurrent-context: skiff\npreferences: {{}}\n",
        ca = encode(&ca_cert_pem),
        cert = encode(&cert),
        key = encode(&key),
    ))
}

/// The URL clients should use for a server listening on `listen`: an unspecified address becomes loopback.
pub fn server_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "skiff-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The serving certificate's names: loopback, the `kubernetes` Service's, the address the server listens
/// on (or, listening on every address, each of the machine's, so agents can dial any of them), the host
/// name, and the operator's `--tls-san`s. Public, as what no node's serving certificate may name: clients
/// trusting the cluster CA take a certificate naming any of them for the API server.
pub fn subject_names(listen: SocketAddr, tls_sans: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string(), "skiff".to_string()];
    // Pods reach the API through the `kubernetes` Service, by its address or its DNS names.
    names.push(crate::objects::kubernetes_service_ip());
    let service_names =
        ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"];
    names.extend(service_names.map(String::from));
    if listen.ip().is_unspecified() {
        names.extend(dialable(&interface_addresses()).iter().map(IpAddr::to_string));
    } else if !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = fs::read_to_string("/etc/hostname") {
        names.push(host.trim().to_string());
    }
    names.extend(tls_sans.iter().map(|san| san.trim().to_string()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| !name.is_empty() && seen.insert(name.clone()));
    names
}

/// One address of a network interface: its name, the address and its prefix length.
type InterfaceAddress = (String, IpAddr, u8);

/// The addresses of the machine's interfaces (none if they cannot be listed: the certificate then names
/// what it would for a loopback listener, and `--tls-san` adds the rest).
fn interface_addresses() -> Vec<InterfaceAddress> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    interfaces
        .filter_map(|interface| {
            let (address, netmask) = (interface.address?, interface.netmask?);
            let (ip, prefix) = match (address.as_sockaddr_in(), netmask.as_sockaddr_in()) {
                (Some(ip), Some(mask)) => (IpAddr::V4(ip.ip()), u32::from(mask.ip()).leading_ones()),
                _ => {
                    let (ip, mask) = (address.as_sockaddr_in6()?, netmask.as_sockaddr_in6()?);
                    (IpAddr::V6(ip.ip()), u128::from(mask.ip()).leading_ones())
                }
            };
            Some((interface.interface_name, ip, prefix as u8))
        })
        .collect()
}

/// Of the machine's addresses, those an agent may dial: not loopback, not IPv6 link-local (unusable without
/// naming the interface, and one on every pod's veth), and not a single address inside a wider subnet its
/// interface already has: that is how the node's bridge holds its wasm pods' addresses, which would grow
/// the certificate with the pods. Sorted, so the names stay the same from one start to the next.
fn dialable(addresses: &[InterfaceAddress]) -> Vec<IpAddr> {
    let host_prefix = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
    let within = |ip: IpAddr, network: IpAddr, prefix: u8| match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    };
    let mut dialable: Vec<IpAddr> = addresses
        .iter()
        .filter(|(_, ip, _)| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .filter(|(interface, ip, prefix)| {
            *prefix != host_prefix(ip)
                || !addresses.iter().any(|(other, network, wider)| {
                    other == interface && *wider < *prefix && within(*ip, *network, *wider)
                })
        })
        .map(|(_, ip, _)| *ip)
        .collect();
    dialable.sort();
    dialable.dedup();
    dialable
}

fn read(dir: &Path, name: &str) -> Result<Option<String>, PkiError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io { path, source }),
    }
}

fn read_or_create_token(dir: &Path, name: &str) -> Result<String, PkiError> {
    if let Some(token) = read(dir, name)? {
        let token = token.trim();
        if !token.is_empty() {
            return Ok(token.to_string());
        }
    }
    let token = random_token();
    write_secret(dir, name, &token)?;
    Ok(token)
}

/// The service account signing key in `sa.key`, made on first start: ECDSA P-256 (tokens are signed ES256),
/// in PKCS#8 PEM.
fn read_or_create_service_account_key(dir: &Path) -> Result<String, PkiError> {
    if let Some(pem) = read(dir, "sa.key")?
        && !pem.trim().is_empty()
    {
        return Ok(pem);
    }
    let pem = KeyPair::generate()?.serialize_pem();
    write_secret(dir, "sa.key", &pem)?;
    Ok(pem)
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The node join token (`K10<ca hash>::node:<secret>`): keeps its secret across restarts and follows the CA
/// if the CA was remade. Returns the secret.
fn read_or_create_join_token(dir: &Path, ca_cert_pem: &str) -> Result<String, PkiError> {
    let ca_hash = ca_hash(ca_cert_pem);
    let existing = read(dir, "node-token")?.and_then(|text| JoinToken::parse(&text).ok());
    if let Some(token) = &existing
        && token.ca_hash == ca_hash
    {
        return Ok(token.secret.clone());
    }
    let secret = existing.map(|t| t.secret).unwrap_or_else(random_token);
    write_secret(dir, "node-token", &format!("{}\n", JoinToken { ca_hash, secret: secret.clone() }))?;
    Ok(secret)
}

/// SHA-256 of the CA certificate PEM, as served at `/cacerts`.
pub fn ca_hash(ca_cert_pem: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(ca_cert_pem.as_bytes()))
}

/// Writes `contents` to `dir/name` with mode 0600 through a temporary file and a rename, so readers see the
/// old file or the new one, never a torn one.
fn write_secret(dir: &Path, name: &str, contents: &str) -> Result<(), PkiError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| PkiError::Io { path: path.clone(), source };
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:6443".parse().unwrap();
        let first = Credentials::load_or_create(dir.path(), listen, &[]).unwrap();
        let again = Credentials::load_or_create(dir.path(), listen, &[]).unwrap();
        assert_eq!(first.admin_token, again.admin_token);
        assert_eq!(first.server_cert_pem, again.server_cert_pem);
        assert_ne!(first.admin_token, first.node_token);
        let join = JoinToken::parse(&fs::read_to_string(dir.path().join("node-token")).unwrap()).unwrap();
        assert_eq!((join.secret.as_str(), join.ca_hash), (first.node_token.as_str(), ca_hash(&first.ca_cert_pem)));
        assert!(first.server_config().is_ok());
        for secret in ["ca.key", "sa.key"] {
            let mode = fs::metadata(dir.path().join(secret)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        assert_eq!(first.service_account_key_pem, again.service_account_key_pem);
        assert!(first.service_account_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(first.kubeconfig("https://127.0.0.1:6443").contains(&first.admin_token));
    }

    #[test]
    fn a_second_server_adopts_the_cluster_secrets() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Credentials::load_or_create(one.path(), "127.0.0.1:6443".parse().unwrap(), &[]).unwrap();
        let own = Credentials::load_or_create(two.path(), "127.0.0.1:6444".parse().unwrap(), &[]).unwrap();
        assert_ne!(own.ca_cert_pem, first.ca_cert_pem);
        ClusterSecrets::read(&first).unwrap().install(two.path()).unwrap();
        let second = Credentials::load_or_create(two.path(), "127.0.0.1:6444".parse().unwrap(), &[]).unwrap();
        assert_eq!(
            (&second.ca_cert_pem, &second.admin_token, &second.node_token, &second.service_account_key_pem),
            (&first.ca_cert_pem, &first.admin_token, &first.node_token, &first.service_account_key_pem)
        );
        assert_ne!(second.server_cert_pem, own.server_cert_pem, "the serving certificate is signed by the new CA");
        assert_eq!(fs::read(one.path().join("node-token")).unwrap(), fs::read(two.path().join("node-token")).unwrap());
    }

    #[test]
    fn secrets_published_before_service_account_keys_still_load() {
        let one = tempfile::tempdir().unwrap();
        let first = Credentials::load_or_create(one.path(), "127.0.0.1:6443".parse().unwrap(), &[]).unwrap();
        let mut published = serde_json::to_value(ClusterSecrets::read(&first).unwrap()).unwrap();
        published.as_object_mut().unwrap().remove("service_account_key_pem");
        let old: ClusterSecrets = serde_json::from_value(published).unwrap();
        assert!(old.service_account_key_pem.is_empty());
        let two = tempfile::tempdir().unwrap();
        old.install(two.path()).unwrap();
        let second = Credentials::load_or_create(two.path(), "127.0.0.1:6444".parse().unwrap(), &[]).unwrap();
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
        assert!(!second.service_account_key_pem.is_empty(), "a key is made where the store had none");
    }

    /// Whether a client trusting the cluster's CA accepts the serving certificate for `name`.
    fn valid_for(credentials: &Credentials, name: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let pem = |text: &str| rustls_pemfile::certs(&mut text.as_bytes()).next().unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem(&credentials.ca_cert_pem)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_server_cert(&pem(&credentials.server_cert_pem), &[], &name, &[], now).is_ok()
    }

    #[test]
    fn the_certificate_names_the_tls_sans_and_the_machine_s_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let sans = ["skiff.example.com".to_string(), "203.0.113.7".to_string()];
        let any = Credentials::load_or_create(dir.path(), "0.0.0.0:6443".parse().unwrap(), &sans).unwrap();
        let machine: Vec<String> = dialable(&interface_addresses()).iter().map(IpAddr::to_string).collect();
        let names = ["localhost", "127.0.0.1", "skiff.example.com", "203.0.113.7", "kubernetes.default.svc"];
        for name in names.iter().copied().chain(machine.iter().map(String::as_str)) {
            assert!(valid_for(&any, name), "the certificate names {name}");
        }
        assert!(!valid_for(&any, "198.51.100.1") && !valid_for(&any, "other.example.com"));
        // Listening on loopback without --tls-san: the certificate is remade without them.
        let loopback = Credentials::load_or_create(dir.path(), "127.0.0.1:6443".parse().unwrap(), &[]).unwrap();
        assert_ne!(loopback.server_cert_pem, any.server_cert_pem);
        assert!(valid_for(&loopback, "127.0.0.1") && !valid_for(&loopback, "skiff.example.com"));
        assert!(machine.iter().all(|ip| !valid_for(&loopback, ip)), "{machine:?}");
    }

    #[test]
    fn agents_dial_the_machine_by_its_own_addresses_not_its_pods() {
        let address = |interface: &str, ip: &str, prefix| (interface.to_string(), ip.parse().unwrap(), prefix);
        let addresses = [
            address("lo", "127.0.0.1", 8),
            address("lo", "::1", 128),
            address("eth0", "192.0.2.10", 24),
            address("eth0", "2001:db8::10", 64),
            address("eth0", "fe80::1", 64),
            // The node's bridge: its gateway, and a wasm pod's address inside its range.
            address("skf0", "10.42.0.1", 24),
            address("skf0", "10.42.0.7", 32),
            // A pod's veth: a link-local address only.
            address("veth1", "fe80::2", 64),
            // A cloud VM's address, a /32 of its own.
            address("ens4", "198.51.100.4", 32),
        ];
        let expected =
            ["10.42.0.1", "192.0.2.10", "198.51.100.4", "2001:db8::10"].map(|ip| ip.parse::<IpAddr>().unwrap());
        assert_eq!(dialable(&addresses), expected);
    }

    #[test]
    fn unspecified_listen_address_gives_a_loopback_url() {
        assert_eq!(server_url("0.0.0.0:6443".parse().unwrap()), "https://127.0.0.1:6443");
        assert_eq!(server_url("127.0.0.2:7000".parse().unwrap()), "https://127.0.0.2:7000");
    }
}
