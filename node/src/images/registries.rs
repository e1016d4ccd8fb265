//! The node's registries file, in the format of k3s's `/etc/rancher/k3s/registries.yaml`: mirrors per
//! registry (`mirrors`), and TLS and credentials per host (`configs`).
//!
//! Semantics (containerd's, as k3s documents them): a registry's mirror endpoints are tried in order, then
//! the registry itself (the "default endpoint"), which is always the last resort. A `*` mirror applies to
//! registries with no entry of their own. `rewrite` changes the repository on mirror endpoints only, never
//! on the default endpoint. `configs` apply to the host they name, whether it is a mirror or an origin.
//! Everything, certificate files included, is read and checked at load so the agent refuses a bad file
//! at start rather than failing pulls later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::secrets::RegistryAuth as OciAuth;
use serde::Deserialize;

use super::auth::{decode_auth, normalise_registry};
use super::registry::is_loopback;

/// Where the agent looks for the file when `--registries` is not given.
pub const DEFAULT_PATH: &str = "/etc/skiff/registries.yaml";

/// The mirror key that applies to every registry without its own entry.
const ANY_REGISTRY: &str = "*";

/// Why a registries file was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("cannot read registries file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registries file {path} is not valid")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// A well-formed file with a value we cannot use (a bad URL, a missing certificate, ...).
    #[error("registries file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The parsed, checked registries file. The default (no file) sends every pull to the image's own
/// registry: over TLS, or plain HTTP where the registry is on loopback.
#[derive(Clone, Debug, Default)]
pub struct Registries {
    /// Normalised registry name (or `*`) -> its mirrors.
    mirrors: HashMap<String, Mirror>,
    /// Normalised host -> how to talk to it.
    configs: HashMap<String, HostConfig>,
}

#[derive(Clone, Debug)]
struct Mirror {
    endpoints: Vec<MirrorEndpoint>,
    /// Applied in order to the repository; the first pattern that matches rewrites it.
    rewrites: Vec<(regex::Regex, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MirrorEndpoint {
    /// `host[:port]`, as a reference names a registry.
    host: String,
    plain_http: bool,
}

#[derive(Clone, Debug, Default)]
struct HostConfig {
    auth: Option<OciAuth>,
    tls: Tls,
}

/// TLS settings for one host.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    /// Trusted in addition to the system's roots.
    pub(crate) ca_certificates: Vec<Certificate>,
    pub(crate) insecure_skip_verify: bool,
    /// `cert_file` then `key_file`, PEM: the certificate presented to a registry that asks for one.
    pub(crate) client_identity_pem: Option<Vec<u8>>,
}

/// One place to try a pull: the reference as that host names the image, and how to talk to it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The image's reference with this endpoint as its registry (and, on a mirror, the rewritten
    /// repository).
    pub(crate) reference: Reference,
    pub(crate) plain_http: bool,
    pub(crate) tls: Tls,
    /// The file's credentials for this host; a pod's pull secret for the same host wins over them.
    pub(crate) auth: Option<OciAuth>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: HashMap<String, MirrorFile>,
    #[serde(default)]
    configs: HashMap<String, ConfigFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    /// Pattern -> replacement, tried in the file's order.
    #[serde(default)]
    rewrite: serde_yaml::Mapping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    /// base64(`username:password`), as in a docker config.
    auth: Option<String>,
    /// A registry bearer token, sent as is.
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl Registries {
    /// Loads `path`, or [`DEFAULT_PATH`] when `path` is `None` and that file exists, else no configuration.
    pub fn load_or_default(path: Option<&Path>) -> Result<Registries, RegistriesError> {
        match path {
            Some(path) => Registries::load(path),
            None if Path::new(DEFAULT_PATH).exists() => Registries::load(Path::new(DEFAULT_PATH)),
            None => Ok(Registries::default()),
        }
    }

    /// Reads and checks a registries file, certificate files included.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RegistriesError::Read { path: path.to_owned(), source })?;
        Registries::parse(&text, path)
    }

    /// A registries file's text that must parse, for other modules' tests.
    #[cfg(test)]
    pub(crate) fn parse_for_tests(text: &str) -> Registries {
        Registries::parse(text, Path::new("registries.yaml")).expect("a valid registries file")
    }

    /// Parses a registries file's text; `path` names it in errors.
    fn parse(text: &str, path: &Path) -> Result<Registries, RegistriesError> {
        // An empty file is a valid empty configuration, as in k3s.
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| RegistriesError::Yaml { path: path.to_owned(), source })?
        };
        let invalid = |message: String| RegistriesError::Invalid { path: path.to_owned(), message };

        let mut mirrors = HashMap::new();
        for (registry, mirror) in file.mirrors {
            let endpoints = mirror
                .endpoint
                .iter()
                .map(|url| {
                    parse_endpoint(url).map_err(|why| invalid(format!("mirror {registry:?}: endpoint {url:?}: {why}")))
                })
                .collect::<Result<_, _>>()?;
            let rewrites = mirror
                .rewrite
                .iter()
                .map(|(pattern, replacement)| {
                    let (Some(pattern), Some(replacement)) = (pattern.as_str(), replacement.as_str()) else {
                        return Err(invalid(format!(
                            "mirror {registry:?}: rewrite patterns and replacements are strings"
                        )));
                    };
                    regex::Regex::new(pattern)
                        .map(|regex| (regex, replacement.to_owned()))
                        .map_err(|e| invalid(format!("mirror {registry:?}: rewrite {pattern:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            let key = if registry == ANY_REGISTRY { registry } else { normalise_registry(&registry) };
            mirrors.insert(key, Mirror { endpoints, rewrites });
        }

        let mut configs = HashMap::new();
        for (host, config) in file.configs {
            let context = |why: String| invalid(format!("config {host:?}: {why}"));
            let auth = config.auth.map(parse_auth).transpose().map_err(context)?;
            let tls = config.tls.map(load_tls).transpose().map_err(context)?.unwrap_or_default();
            configs.insert(normalise_registry(&host), HostConfig { auth, tls });
        }
        Ok(Registries { mirrors, configs })
    }

    /// Where to try pulling `reference`, in order: its registry's mirrors (or the `*` mirrors), then
    /// the registry itself.
    pub(crate) fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let registry = normalise_registry(reference.registry());
        let mirror = self.mirrors.get(&registry).or_else(|| self.mirrors.get(ANY_REGISTRY));
        let mut endpoints: Vec<Endpoint> = mirror
            .into_iter()
            .flat_map(|mirror| {
                let repository = mirror.rewrite(reference.repository());
                mirror.endpoints.iter().map(move |endpoint| {
                    self.endpoint(&with_location(reference, &endpoint.host, &repository), endpoint.plain_http)
                })
            })
            .collect();
        // The default endpoint comes last even when a mirror names the registry itself, as in containerd.
        endpoints.push(self.origin(reference));
        endpoints
    }

    /// The image's own registry: over TLS, or plain HTTP where it cannot leave the machine (test and
    /// edge-local registries). To reach another registry over plain HTTP, name it as an `http://` mirror.
    pub(crate) fn origin(&self, reference: &Reference) -> Endpoint {
        self.endpoint(reference, is_loopback(reference.registry()))
    }

    fn endpoint(&self, reference: &Reference, plain_http: bool) -> Endpoint {
        let config = self.configs.get(&normalise_registry(reference.registry())).cloned().unwrap_or_default();
        Endpoint { reference: reference.clone(), plain_http, tls: config.tls, auth: config.auth }
    }
}

impl Mirror {
    fn rewrite(&self, repository: &str) -> String {
        self.rewrites.iter().find(|(regex, _)| regex.is_match(repository)).map_or_else(
            || repository.to_owned(),
            |(regex, replacement)| regex.replace(repository, replacement.as_str()).into_owned(),
        )
    }
}

/// `reference` at another registry and repository, keeping its tag and digest.
fn with_location(reference: &Reference, registry: &str, repository: &str) -> Reference {
    let (registry, repository) = (registry.to_owned(), repository.to_owned());
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned()),
    }
}

/// `https://host[:port]` or `http://host[:port]`, optionally ending in `/` or `/v2`.
fn parse_endpoint(url: &str) -> Result<MirrorEndpoint, String> {
    let (plain_http, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else {
        return Err("not an http:// or https:// URL".to_owned());
    };
    let rest = rest.trim_end_matches('/');
    let host = rest.strip_suffix("/v2").unwrap_or(rest);
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err("only a host and port are supported, without a path, query or user".to_owned());
    }
    Ok(MirrorEndpoint { host: host.to_ascii_lowercase(), plain_http })
}

fn parse_auth(auth: AuthFile) -> Result<OciAuth, String> {
    match auth {
        AuthFile { token: Some(token), username: None, password: None, auth: None } => Ok(OciAuth::Bearer(token)),
        AuthFile { auth: Some(encoded), username: None, password: None, token: None } => {
            let (user, pass) = decode_auth(&encoded).map_err(|why| format!("auth: {why}"))?;
            Ok(OciAuth::Basic(user, pass))
        }
        AuthFile { username: Some(user), password: Some(pass), auth: None, token: None } => {
            Ok(OciAuth::Basic(user, pass))
        }
        _ => Err("auth needs username and password, or auth, or token, and only one of them".to_owned()),
    }
}

fn load_tls(tls: TlsFile) -> Result<Tls, String> {
    let ca_certificates = match tls.ca_file {
        Some(path) => read_certificates(&path, "ca_file")?,
        None => Vec::new(),
    };
    let client_identity_pem = match (tls.cert_file, tls.key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(read_identity(&cert, &key)?),
        _ => return Err("a client certificate needs both cert_file and key_file".to_owned()),
    };
    Ok(Tls { ca_certificates, insecure_skip_verify: tls.insecure_skip_verify, client_identity_pem })
}

/// The certificate chain of `cert` and the private key of `key`, checked and joined into one PEM buffer.
fn read_identity(cert: &Path, key: &Path) -> Result<Vec<u8>, String> {
    read_certificates(cert, "cert_file")?;
    let mut identity = std::fs::read(cert).map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("key_file {}: {e}", key.display()))?;
    match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("key_file {}: no PEM private key in it", key.display())),
        Err(e) => return Err(format!("key_file {}: {e}", key.display())),
    }
    identity.push(b'\n');
    identity.extend_from_slice(&key_pem);
    Ok(identity)
}

/// The PEM certificates in `path` (the file's `field` in the registries file), one [`Certificate`] each,
/// refusing a file with none.
fn read_certificates(path: &Path, field: &str) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{field} {}: {e}", path.display()))?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|der| der.map(|der| Certificate { encoding: CertificateEncoding::Der, data: der.to_vec() }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{field} {}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registries, RegistriesError> {
        Registries::parse(text, Path::new("/etc/skiff/registries.yaml"))
    }

    fn reference(image: &str) -> Reference {
        super::super::reference::parse(image).unwrap()
    }

    /// (whole reference, plain HTTP, auth) per endpoint, in order.
    fn plan(registries: &Registries, image: &str) -> Vec<(String, bool, Option<OciAuth>)> {
        registries
            .endpoints(&reference(image))
            .into_iter()
            .map(|e| (e.reference.whole(), e.plain_http, e.auth))
            .collect()
    }

    #[test]
    fn without_a_file_only_the_registry_itself_is_tried() {
        let none = Registries::default();
        assert_eq!(plan(&none, "r.example/a:1"), [("r.example/a:1".to_owned(), false, None)]);
        assert_eq!(plan(&none, "127.0.0.1:5000/a:1"), [("127.0.0.1:5000/a:1".to_owned(), true, None)]);
        assert!(parse("").unwrap().mirrors.is_empty());
    }

    #[test]
    fn mirrors_in_order_then_the_registry_with_rewrites_on_mirrors_only() {
        let registries = parse(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.example:5000", "http://10.0.0.1:5000/v2/"]
    rewrite: {"^library/(.*)": "mirrored/$1"}
  "*":
    endpoint: ["http://any.example"]
configs:
  "mirror.example:5000":
    auth: {username: u, password: p}
  docker.io:
    auth: {token: t}
"#,
        )
        .unwrap();
        // Pinned by digest, so the digest (not a tag) must carry over to every endpoint.
        let digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            plan(&registries, &format!("nginx@{digest}")),
            [
                (
                    format!("mirror.example:5000/mirrored/nginx@{digest}"),
                    false,
                    Some(OciAuth::Basic("u".into(), "p".into()))
                ),
                (format!("10.0.0.1:5000/mirrored/nginx@{digest}"), true, None),
                (format!("docker.io/library/nginx@{digest}"), false, Some(OciAuth::Bearer("t".into()))),
            ]
        );
        // A registry with no entry of its own gets the `*` mirrors; rewrites belong to their registry.
        assert_eq!(
            plan(&registries, "quay.io/library/x:2"),
            [("any.example/library/x:2".to_owned(), true, None), ("quay.io/library/x:2".to_owned(), false, None)]
        );
    }

    #[test]
    fn ca_files_and_client_certificates_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let key = dir.path().join("client.key");
        let certificate = rcgen::generate_simple_self_signed(vec!["mirror.example".to_owned()]).unwrap();
        std::fs::write(&ca, certificate.cert.pem()).unwrap();
        std::fs::write(&key, certificate.signing_key.serialize_pem()).unwrap();
        let registries = parse(&format!(
            "configs:\n  mirror.example:\n    tls: {{ca_file: {}, cert_file: {}, key_file: {}, insecure_skip_verify: true}}\n",
            ca.display(),
            ca.display(),
            key.display()
        ))
        .unwrap();
        let endpoint = &registries.endpoints(&reference("mirror.example/a:1"))[0];
        assert_eq!(endpoint.tls.ca_certificates.len(), 1);
        assert!(endpoint.tls.insecure_skip_verify);
        let identity = String::from_utf8(endpoint.tls.client_identity_pem.clone().unwrap()).unwrap();
        assert!(identity.contains("BEGIN CERTIFICATE") && identity.contains("PRIVATE KEY"), "{identity}");

        for (tls, expected) in [
            (format!("{{cert_file: {}}}", ca.display()), "needs both cert_file and key_file"),
            (format!("{{cert_file: {}, key_file: {}}}", ca.display(), ca.display()), "no PEM private key"),
            (format!("{{cert_file: {}, key_file: {}}}", key.display(), key.display()), "cert_file"),
        ] {
            let error = parse(&format!("configs:\n  m.example:\n    tls: {tls}\n")).unwrap_err().to_string();
            assert!(error.contains(expected), "{tls}: {error}");
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_the_problem() {
        for (text, expected) in [
            ("mirrors: [", "is not valid"),
            ("mirrors:\n  docker.io:\n    endpoint: [\"mirror.example\"]\n", "not an http:// or https:// URL"),
            ("mirrors:\n  docker.io:\n    endpoint: [\"https://m.example/prefix\"]\n", "without a path"),
            ("mirrors:\n  docker.io:\n    rewrite: {\"(\": x}\n", "rewrite \"(\""),
            ("configs:\n  m.example:\n    tls: {ca_file: /nonexistent/ca.crt}\n", "/nonexistent/ca.crt"),
            ("configs:\n  m.example:\n    auth: {username: u}\n", "username and password"),
            ("configs:\n  m.example:\n    auth: {identity_token: t}\n", "unknown field"),
        ] {
            let error = parse(text).unwrap_err();
            let message =
                format!("{error}: {}", std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default());
            assert!(message.contains("/etc/skiff/registries.yaml"), "{message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
