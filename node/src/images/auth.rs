//! Registry credentials, as pods name them through `imagePullSecrets`.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use super::ImageError;

/// Basic credentials per registry host. Registries with no entry are accessed anonymously.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// Normalised registry host (see [`normalise_registry`]) -> (username, password).
    basic: HashMap<String, (String, String)>,
}

impl fmt::Debug for RegistryAuth {
    /// Lists the registries only: credentials must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut registries: Vec<&str> = self.basic.keys().map(String::as_str).collect();
        registries.sort_unstable();
        f.debug_struct("RegistryAuth").field("registries", &registries).finish()
    }
}

impl RegistryAuth {
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Credentials for one registry (`registry.example.com:5000`, `docker.io`, a `https://` URL).
    pub fn basic(registry: &str, username: impl Into<String>, password: impl Into<String>) -> Self {
        let mut auth = Self::default();
        auth.basic.insert(normalise_registry(registry), (username.into(), password.into()));
        auth
    }

    /// Parses a `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson` (`{"auths": {registry:
    /// {"auth": base64(user:pass)} | {"username", "password"}}}`), or a legacy `.dockercfg` (the same map
    /// without the `auths` wrapper). Entries with neither form (identity tokens) are skipped.
    pub fn from_docker_config_json(json: &[u8]) -> Result<Self, ImageError> {
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        #[derive(Deserialize)]
        struct Config {
            auths: HashMap<String, Entry>,
        }
        let entries = match serde_json::from_slice::<Config>(json) {
            Ok(config) => config.auths,
            Err(_) => serde_json::from_slice::<HashMap<String, Entry>>(json)
                .map_err(|e| ImageError::DockerConfig(format!("not a docker config: {e}")))?,
        };
        let mut auth = Self::default();
        for (registry, entry) in entries {
            let credentials = match (entry.auth.filter(|a| !a.is_empty()), entry.username, entry.password) {
                (Some(encoded), _, _) => decode_auth(&encoded)
                    .map_err(|why| ImageError::DockerConfig(format!("auth for {registry}: {why}")))?,
                (None, Some(user), Some(pass)) => (user, pass),
                _ => continue,
            };
            auth.basic.insert(normalise_registry(&registry), credentials);
        }
        Ok(auth)
    }

    /// Adds `other`'s registries; on a clash `other` wins (later pull secrets override earlier ones,
    /// as the kubelet does).
    pub fn merge(&mut self, other: RegistryAuth) {
        self.basic.extend(other.basic);
    }

    /// The oci-client credentials for a registry host (as `Reference::registry` spells it).
    pub(crate) fn get(&self, registry: &str) -> Option<oci_client::secrets::RegistryAuth> {
        let (user, pass) = self.basic.get(&normalise_registry(registry))?;
        Some(oci_client::secrets::RegistryAuth::Basic(user.clone(), pass.clone()))
    }
}

/// base64(`user:password`), as docker configs and registries files carry credentials.
pub(super) fn decode_auth(encoded: &str) -> Result<(String, String), &'static str> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| "not base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "not UTF-8")?;
    let (user, pass) = decoded.split_once(':').ok_or("not user:password")?;
    Ok((user.to_owned(), pass.to_owned()))
}

/// Reduces the ways docker configs name a registry (`https://index.docker.io/v1/`, `http://host:5000`,
/// `Host:5000/`) to the host as image references name it, so lookups match.
pub(super) fn normalise_registry(registry: &str) -> String {
    let without_scheme =
        registry.strip_prefix("https://").or_else(|| registry.strip_prefix("http://")).unwrap_or(registry);
    let host = without_scheme.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        // Docker Hub's historical names; references normalise to docker.io.
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::secrets::RegistryAuth as Oci;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parses_auth_and_username_password_forms() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.local:5000": {{"username": "bob", "password": "p:w"}},
                "http://127.0.0.1:5000/": {{"auth": "{}", "email": "x@y"}},
                "tokens.example": {{"identitytoken": "abc"}}
            }}}}"#,
            b64("alice:s3cret"),
            b64("carol:pass:with:colons")
        );
        let auth = RegistryAuth::from_docker_config_json(json.as_bytes()).unwrap();
        assert_eq!(auth.get("docker.io"), Some(Oci::Basic("alice".into(), "s3cret".into())));
        assert_eq!(auth.get("registry.local:5000"), Some(Oci::Basic("bob".into(), "p:w".into())));
        assert_eq!(auth.get("127.0.0.1:5000"), Some(Oci::Basic("carol".into(), "pass:with:colons".into())));
        assert_eq!(auth.get("tokens.example"), None);
        assert_eq!(auth.get("registry.local"), None, "the port is part of the host");
    }

    #[test]
    fn parses_legacy_dockercfg() {
        let json = format!(r#"{{"quay.io": {{"auth": "{}"}}}}"#, b64("u:p"));
        let auth = RegistryAuth::from_docker_config_json(json.as_bytes()).unwrap();
        assert_eq!(auth.get("quay.io"), Some(Oci::Basic("u".into(), "p".into())));
    }

    #[test]
    fn rejects_malformed_configs() {
        for bad in [
            "not json".to_owned(),
            r#"{"auths": {"r": {"auth": "%%%"}}}"#.to_owned(),
            format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("nocolon")),
            r#"{"auths": []}"#.to_owned(),
        ] {
            let err = RegistryAuth::from_docker_config_json(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ImageError::DockerConfig(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn merge_lets_the_later_secret_win_and_debug_hides_passwords() {
        let mut auth = RegistryAuth::basic("r.example", "old", "old-pass");
        auth.merge(RegistryAuth::basic("R.example", "new", "new-pass"));
        auth.merge(RegistryAuth::basic("other.example", "o", "o-pass"));
        assert_eq!(auth.get("r.example"), Some(Oci::Basic("new".into(), "new-pass".into())));
        assert_eq!(auth.get("other.example"), Some(Oci::Basic("o".into(), "o-pass".into())));
        let shown = format!("{auth:?}");
        assert!(!shown.contains("pass"), "{shown}");
        assert!(shown.contains("r.example"));
        assert_eq!(RegistryAuth::anonymous().get("r.example"), None);
    }
}
