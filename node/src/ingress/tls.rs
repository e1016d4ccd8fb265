//! HTTPS certificates: each Ingress's `spec.tls` entries name a TLS Secret for a list of hosts, and the
//! handshake picks one by the client's server name (SNI), exact host first, then a `*.domain` entry for
//! one more label. A name no entry covers (or no SNI at all) gets an entry without hosts if an Ingress has
//! one (the API's "wildcard host of the controller"), else the node's self-signed default certificate, as
//! ingress-nginx and Traefik serve their own: the connection still comes up and routes by Host.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A Secret, by namespace and name.
pub type SecretKey = (String, String);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the secret has no {0}")]
    Missing(&'static str),
    #[error("the secret's {0} is not PEM")]
    Pem(&'static str, #[source] std::io::Error),
    #[error("the secret's key does not fit its certificate")]
    Key(#[source] rustls::Error),
    #[error("cannot make the default certificate")]
    Generate(#[source] rcgen::Error),
}

/// The certificate and key of a `kubernetes.io/tls` Secret (`tls.crt`, then any intermediates; `tls.key`).
pub fn certified_key(secret: &Secret) -> Result<CertifiedKey, TlsError> {
    let data = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| bytes.0.as_slice())
            .ok_or(TlsError::Missing(key))
    };
    let chain = rustls_pemfile::certs(&mut data("tls.crt")?).collect::<Result<Vec<_>, _>>();
    let chain = chain.map_err(|e| TlsError::Pem("tls.crt", e))?;
    if chain.is_empty() {
        return Err(TlsError::Missing("certificate in tls.crt"));
    }
    let key = rustls_pemfile::private_key(&mut data("tls.key")?).map_err(|e| TlsError::Pem("tls.key", e))?;
    let key = key.ok_or(TlsError::Missing("private key in tls.key"))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(TlsError::Key)
}

/// The certificate served when no Ingress's covers the name asked for: self-signed, made at start (as
/// ingress-nginx's "Kubernetes Ingress Controller Fake Certificate"), so clients see it is no one's.
pub fn default_certificate() -> Result<CertifiedKey, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_string()]).map_err(TlsError::Generate)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Skiff Ingress Default Certificate");
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| TlsError::Missing("key"))?;
    CertifiedKey::from_der(vec![cert.der().clone()], key, &rustls::crypto::ring::default_provider())
        .map_err(TlsError::Key)
}

/// Which certificate each server name gets.
#[derive(Debug, Default)]
pub struct Certificates {
    hosts: HashMap<String, Arc<CertifiedKey>>,
    /// `*.domain` entries, by `domain`.
    wildcards: HashMap<String, Arc<CertifiedKey>>,
    /// The oldest entry without hosts.
    any: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// The certificates of `ingresses` (oldest first: an older Ingress keeps a host two name) from the
    /// Secrets read so far; an entry whose Secret is not (yet) read or not valid is skipped.
    pub fn build<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        secrets: &HashMap<SecretKey, Arc<CertifiedKey>>,
    ) -> Self {
        let mut certificates = Certificates::default();
        for ingress in ingresses {
            let namespace = ingress.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            for tls in ingress.spec.iter().flat_map(|spec| spec.tls.iter().flatten()) {
                let Some(name) = tls.secret_name.clone() else { continue };
                let Some(certified) = secrets.get(&(namespace.clone(), name)) else { continue };
                let hosts = tls.hosts.as_deref().unwrap_or_default();
                if hosts.is_empty() {
                    certificates.any.get_or_insert_with(|| certified.clone());
                }
                for host in hosts.iter().map(|h| h.to_ascii_lowercase()) {
                    let map = match host.strip_prefix("*.") {
                        Some(domain) => certificates.wildcards.entry(domain.to_string()),
                        None => certificates.hosts.entry(host),
                    };
                    map.or_insert_with(|| certified.clone());
                }
            }
        }
        certificates
    }

    /// The certificate for server name `name` (the SNI), if an Ingress has one.
    pub fn select(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let named = name.map(str::to_ascii_lowercase).and_then(|name| {
            let wildcard = || self.wildcards.get(name.split_once('.')?.1);
            self.hosts.get(&name).or_else(wildcard).cloned()
        });
        named.or_else(|| self.any.clone())
    }

    /// The Secrets `ingresses` name for TLS, which the node must read.
    pub fn wanted<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> Vec<SecretKey> {
        let mut wanted: Vec<SecretKey> = ingresses
            .into_iter()
            .flat_map(|ingress| {
                let namespace = ingress.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let tls = ingress.spec.iter().flat_map(|spec| spec.tls.iter().flatten());
                tls.filter_map(|tls| tls.secret_name.clone().filter(|n| !n.is_empty()))
                    .map(move |name| (namespace.clone(), name))
                    .collect::<Vec<_>>()
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }
}

/// rustls' view: the current [`Certificates`], replaced as Ingresses and Secrets change, and the default.
#[derive(Debug)]
pub struct Resolver {
    pub current: RwLock<Arc<Certificates>>,
    pub fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner).clone();
        Some(current.select(hello.server_name()).unwrap_or_else(|| self.fallback.clone()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ingress(name: &str, tls: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"}, "spec": {"tls": tls}})).unwrap()
    }

    /// A certificate whose common name tells it apart.
    fn certified(name: &str) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64_of(cert.pem().as_bytes()),
                "tls.key": base64_of(key.serialize_pem().as_bytes()),
            },
        }))
        .unwrap();
        Arc::new(certified_key(&secret).unwrap())
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn names_pick_exact_hosts_then_one_label_wildcards_then_an_entry_without_hosts() {
        let (shop, wild, any, later) = (certified("shop"), certified("wild"), certified("any"), certified("later"));
        let secrets: HashMap<SecretKey, Arc<CertifiedKey>> = [
            (("shop".to_string(), "shop-tls".to_string()), shop.clone()),
            (("shop".to_string(), "wild-tls".to_string()), wild.clone()),
            (("shop".to_string(), "any-tls".to_string()), any.clone()),
            (("shop".to_string(), "later-tls".to_string()), later.clone()),
        ]
        .into();
        let ingresses = [
            ingress(
                "a",
                json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"},
                       {"hosts": ["*.example.com"], "secretName": "wild-tls"},
                       {"secretName": "any-tls"},
                       {"hosts": ["unread.example.com"], "secretName": "not-read-yet"}]),
            ),
            ingress("b", json!([{"hosts": ["shop.example.com"], "secretName": "later-tls"}])),
        ];
        let certificates = Certificates::build(&ingresses, &secrets);
        let picked = |name: Option<&str>| certificates.select(name).unwrap();
        assert!(Arc::ptr_eq(&picked(Some("SHOP.example.com")), &shop), "the older Ingress keeps its host");
        assert!(Arc::ptr_eq(&picked(Some("blog.example.com")), &wild));
        assert!(Arc::ptr_eq(&picked(Some("unread.example.com")), &wild), "its Secret is not read yet");
        assert!(Arc::ptr_eq(&picked(Some("a.blog.example.com")), &any), "a wildcard covers one label only");
        assert!(Arc::ptr_eq(&picked(None), &any));
        assert!(Certificates::build(&ingresses[1..], &HashMap::new()).select(Some("shop.example.com")).is_none());
        assert_eq!(
            Certificates::wanted(&ingresses),
            [
                ("shop", "any-tls"),
                ("shop", "later-tls"),
                ("shop", "not-read-yet"),
                ("shop", "shop-tls"),
                ("shop", "wild-tls")
            ]
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
        );
    }

    #[test]
    fn a_secret_without_a_matching_key_or_pem_is_refused() {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"tls.crt": base64_of(b"junk")}}))
                .unwrap();
        assert!(matches!(certified_key(&secret), Err(TlsError::Missing(_))));
        assert!(default_certificate().is_ok());
    }
}
