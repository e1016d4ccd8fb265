//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`: an `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`) names, per resource, a list of providers. The first provider writes;
//! every provider listed reads the values that carry its prefix, so a key rotation is "list the new key
//! first, restart, rewrite everything, drop the old key".
//!
//! The transformation sits where Kubernetes puts it, between the server and its store:
//! [`EncryptedStore`] wraps the [`Store`], so every reader and writer of stored values (objects, watches,
//! the authorizer's mirror, the service account controller, the cluster's shared secrets) goes through it
//! and none can see or write a plaintext value by going round it.
//!
//! Stored formats, Kubernetes' own so a store can move between the two. `aesgcm`:
//! `k8s:enc:aesgcm:v1:<key name>:`, the 12-byte random nonce, then the AES-GCM ciphertext and tag, sealed
//! with the storage key as additional authenticated data, so a value copied under another key does not
//! decrypt. `secretbox`: `k8s:enc:secretbox:v1:<key name>:`, the 24-byte random nonce, then NaCl's
//! secretbox (XSalsa20-Poly1305) in NaCl's order, the 16-byte tag before the ciphertext; like Kubernetes'
//! it authenticates no additional data, so the storage key is not bound to the value. A value without the
//! `k8s:enc:` prefix is plaintext, readable only where `identity` is listed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use crypto_secretbox::{AeadInPlace, KeyInit, XSalsa20Poly1305};
use futures::StreamExt;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use skiff_store::{Error, Event, KeyValue, ListPage, Revision, Store, WatchStream};

/// Every encrypted value starts with this; a value without it is plaintext.
const ENCRYPTED: &[u8] = b"k8s:enc:";

/// The length of both ciphers' authentication tags (AES-GCM's and Poly1305's).
const TAG_LEN: usize = 16;

/// The only version of the configuration Kubernetes serves.
const API_VERSION: &str = "apiserver.config.k8s.io/v1";

/// The key the servers of a cluster share their CA and tokens under (see `server.rs`). It holds keys as
/// sensitive as any Secret's, so it is encrypted as the `secrets` resource is.
pub const CLUSTER_SECRETS_KEY: &str = "/skiff/cluster-secrets";

/// A configuration that cannot be used; the server refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read encryption provider config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML or JSON of the expected shape (the source names the line and field).
    #[error("encryption provider config {} is not an EncryptionConfiguration", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// A field has a value Kubernetes (or Skiff) does not accept.
    #[error("encryption provider config {}: {field}: {problem}", path.display())]
    Invalid { path: PathBuf, field: String, problem: Problem },
}

/// What is wrong with a field of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("apiVersion must be apiserver.config.k8s.io/v1, not {0:?}")]
    ApiVersion(String),
    #[error("kind must be EncryptionConfiguration, not {0:?}")]
    Kind(String),
    #[error("must not be empty")]
    Empty,
    #[error("must name exactly one provider type (aesgcm, aescbc, secretbox, kms, identity)")]
    ProviderType,
    #[error("resource {0:?} is listed more than once")]
    DuplicateResource(String),
    #[error("key name {0:?} is used more than once")]
    DuplicateKeyName(String),
    #[error("key name must be non-empty and contain no ':'")]
    KeyName,
    #[error("secret is not base64")]
    NotBase64,
    /// Kubernetes' wording; `expected` lists the lengths as Go prints a slice.
    #[error("secret is not of the expected length, got {found}, expected one of {expected}")]
    KeyLength { found: usize, expected: &'static str },
    /// ring implements AES-GCM with 128- and 256-bit keys only.
    #[error("24-byte (AES-192) keys are not supported; use 16 or 32 bytes")]
    Aes192,
    /// AES-CBC has no authentication; Kubernetes itself advises against it.
    #[error("the aescbc provider is not supported; use aesgcm")]
    Aescbc,
    #[error("the kms provider is not supported; use aesgcm")]
    Kms,
}

/// Why a value could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The value is encrypted, but with no provider or key the configuration lists.
    #[error("no provider of the configuration matches the stored value's prefix")]
    NoMatchingPrefix,
    /// The value is plaintext and `identity` is not listed for it.
    #[error("the stored value is not encrypted and identity is not listed for it")]
    Unencrypted,
    /// Wrong key, tampering, or (aesgcm) a value moved to another storage key.
    #[error("the stored value does not decrypt with key {0:?}")]
    Decrypt(String),
    /// The cipher refused the value (ring's AES-GCM: one larger than it can seal).
    #[error("the value cannot be encrypted with key {0:?}")]
    Encrypt(String),
    #[error("the system's random number generator failed")]
    Random,
}

/// The providers configured, by resource.
pub struct Encryption {
    /// In the file's order: a resource's providers are those of the first rule that lists it.
    rules: Vec<Rule>,
}

struct Rule {
    resources: Vec<Resource>,
    providers: Vec<Provider>,
}

/// A resource as the configuration names it: `secrets`, `deployments.apps`, `*.apps` or `*.*`.
#[derive(Debug, PartialEq)]
enum Resource {
    One { group: String, plural: String },
    Group(String),
    All,
}

enum Provider {
    Identity,
    /// aesgcm or secretbox: the first key writes, every key reads the values that carry its prefix.
    Keys(Vec<Key>),
}

/// The provider types that hold keys.
#[derive(Clone, Copy)]
enum Algorithm {
    AesGcm,
    Secretbox,
}

struct Key {
    name: String,
    /// `k8s:enc:<provider>:v1:<name>:`, what every value this key seals starts with.
    prefix: Vec<u8>,
    cipher: Cipher,
}

enum Cipher {
    /// Boxed: ring's expanded AES key is 544 bytes, XSalsa20-Poly1305's key 32.
    AesGcm(Box<LessSafeKey>),
    Secretbox(XSalsa20Poly1305),
}

/// Where a stored value's plaintext came from.
#[derive(Debug, PartialEq)]
pub struct Opened {
    pub value: Bytes,
    /// Read by a provider or key other than the one that writes now: a rewrite would change the stored
    /// form even if the object is unchanged (Kubernetes' "stale" read).
    pub stale: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<FileProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    aesgcm: Option<FileKeys>,
    aescbc: Option<serde_yaml::Value>,
    secretbox: Option<FileKeys>,
    kms: Option<serde_yaml::Value>,
    identity: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    secret: String,
}

impl Encryption {
    /// Reads and checks the configuration in `path` completely, so a mistake stops the server at start
    /// rather than at the first write.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let encryption = Self::parse(&text, path)?;
        tracing::info!(config = %path.display(), rules = encryption.rules.len(), "encrypting at rest");
        Ok(encryption)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        let invalid = |field: String, problem| ConfigError::Invalid { path: path.into(), field, problem };
        if file.api_version != API_VERSION {
            return Err(invalid("apiVersion".into(), Problem::ApiVersion(file.api_version)));
        }
        if file.kind != "EncryptionConfiguration" {
            return Err(invalid("kind".into(), Problem::Kind(file.kind)));
        }
        let mut seen = Vec::new();
        let mut rules = Vec::new();
        for (r, rule) in file.resources.into_iter().enumerate() {
            if rule.resources.is_empty() {
                return Err(invalid(format!("resources[{r}].resources"), Problem::Empty));
            }
            if rule.providers.is_empty() {
                return Err(invalid(format!("resources[{r}].providers"), Problem::Empty));
            }
            let mut resources = Vec::new();
            for (i, name) in rule.resources.iter().enumerate() {
                if seen.contains(name) {
                    let field = format!("resources[{r}].resources[{i}]");
                    return Err(invalid(field, Problem::DuplicateResource(name.clone())));
                }
                seen.push(name.clone());
                resources.push(Resource::parse(name));
            }
            let mut providers = Vec::new();
            for (p, provider) in rule.providers.into_iter().enumerate() {
                let field = format!("resources[{r}].providers[{p}]");
                providers.push(Provider::parse(provider, &field).map_err(|(field, problem)| invalid(field, problem))?);
            }
            rules.push(Rule { resources, providers });
        }
        Ok(Self { rules })
    }

    /// The providers for the value under a storage key, none when the key's resource is not configured.
    fn providers(&self, key: &str) -> Option<&[Provider]> {
        let (group, plural) = match key {
            CLUSTER_SECRETS_KEY => ("", "secrets"),
            _ => {
                let mut parts = key.strip_prefix("/registry/")?.split('/');
                let group = parts.next()?;
                (if group == "core" { "" } else { group }, parts.next()?)
            }
        };
        let rule = self.rules.iter().find(|rule| rule.resources.iter().any(|r| r.matches(group, plural)))?;
        Some(&rule.providers)
    }

    /// The stored form of `value` under `key`: sealed by the first provider configured for it.
    pub fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, TransformError> {
        match self.providers(key).and_then(|providers| providers.first()) {
            None | Some(Provider::Identity) => Ok(value),
            // A provider has at least one key (checked at load).
            Some(Provider::Keys(keys)) => keys[0].seal(key, &value),
        }
    }

    /// The plaintext of the value stored under `key`, opened by the provider whose prefix it carries.
    pub fn open(&self, key: &str, stored: Bytes) -> Result<Opened, TransformError> {
        let Some(providers) = self.providers(key) else { return Ok(Opened { value: stored, stale: false }) };
        if !stored.starts_with(ENCRYPTED) {
            let position = providers.iter().position(|p| matches!(p, Provider::Identity));
            return match position {
                Some(position) => Ok(Opened { value: stored, stale: position != 0 }),
                None => Err(TransformError::Unencrypted),
            };
        }
        let mut first = true;
        for provider in providers {
            let Provider::Keys(keys) = provider else {
                first = false;
                continue;
            };
            for candidate in keys {
                if let Some(sealed) = stored.strip_prefix(candidate.prefix.as_slice()) {
                    let value = candidate.open(key, sealed)?;
                    return Ok(Opened { value, stale: !first });
                }
                first = false;
            }
        }
        Err(TransformError::NoMatchingPrefix)
    }
}

impl Resource {
    fn parse(name: &str) -> Self {
        match name.split_once('.') {
            Some(("*", "*")) => Resource::All,
            Some(("*", group)) => Resource::Group(group.into()),
            Some((plural, group)) => Resource::One { group: group.into(), plural: plural.into() },
            None => Resource::One { group: String::new(), plural: name.into() },
        }
    }

    fn matches(&self, group: &str, plural: &str) -> bool {
        match self {
            Resource::One { group: g, plural: p } => g == group && p == plural,
            Resource::Group(g) => g == group,
            Resource::All => true,
        }
    }
}

impl Provider {
    fn parse(provider: FileProvider, field: &str) -> Result<Self, (String, Problem)> {
        let FileProvider { aesgcm, aescbc, secretbox, kms, identity } = provider;
        let named = [aesgcm.is_some(), aescbc.is_some(), secretbox.is_some(), kms.is_some(), identity.is_some()];
        if named.iter().filter(|&&n| n).count() != 1 {
            return Err((field.into(), Problem::ProviderType));
        }
        if aescbc.is_some() {
            return Err((format!("{field}.aescbc"), Problem::Aescbc));
        }
        if kms.is_some() {
            return Err((format!("{field}.kms"), Problem::Kms));
        }
        let (algorithm, file_keys) = match (aesgcm, secretbox) {
            (Some(keys), _) => (Algorithm::AesGcm, keys),
            (_, Some(keys)) => (Algorithm::Secretbox, keys),
            (None, None) => return Ok(Provider::Identity),
        };
        let field = format!("{field}.{}", algorithm.name());
        if file_keys.keys.is_empty() {
            return Err((format!("{field}.keys"), Problem::Empty));
        }
        let mut keys: Vec<Key> = Vec::new();
        for (k, file_key) in file_keys.keys.into_iter().enumerate() {
            let field = format!("{field}.keys[{k}]");
            if file_key.name.is_empty() || file_key.name.contains(':') {
                return Err((format!("{field}.name"), Problem::KeyName));
            }
            if keys.iter().any(|existing| existing.name == file_key.name) {
                return Err((format!("{field}.name"), Problem::DuplicateKeyName(file_key.name)));
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(file_key.secret.trim())
                .map_err(|_| (format!("{field}.secret"), Problem::NotBase64))?;
            let cipher = algorithm.cipher(&secret).map_err(|problem| (format!("{field}.secret"), problem))?;
            let prefix = format!("k8s:enc:{}:v1:{}:", algorithm.name(), file_key.name).into_bytes();
            keys.push(Key { name: file_key.name, prefix, cipher });
        }
        Ok(Provider::Keys(keys))
    }
}

impl Algorithm {
    /// The provider's name in the configuration and in the prefix of the values it seals.
    fn name(self) -> &'static str {
        match self {
            Algorithm::AesGcm => "aesgcm",
            Algorithm::Secretbox => "secretbox",
        }
    }

    fn cipher(self, secret: &[u8]) -> Result<Cipher, Problem> {
        let wrong_length = |expected| Problem::KeyLength { found: secret.len(), expected };
        match self {
            Algorithm::AesGcm => {
                let algorithm = match secret.len() {
                    16 => &aead::AES_128_GCM,
                    32 => &aead::AES_256_GCM,
                    24 => return Err(Problem::Aes192),
                    _ => return Err(wrong_length("[16 32]")),
                };
                let key = UnboundKey::new(algorithm, secret).map_err(|_| wrong_length("[16 32]"))?;
                Ok(Cipher::AesGcm(Box::new(LessSafeKey::new(key))))
            }
            Algorithm::Secretbox => {
                XSalsa20Poly1305::new_from_slice(secret).map(Cipher::Secretbox).map_err(|_| wrong_length("[32]"))
            }
        }
    }
}

impl Cipher {
    fn nonce_len(&self) -> usize {
        match self {
            Cipher::AesGcm(_) => aead::NONCE_LEN,
            Cipher::Secretbox(_) => XSalsa20Poly1305::NONCE_SIZE,
        }
    }
}

impl Key {
    /// Random nonces, as Kubernetes' providers: for aesgcm safe for about 2^32 writes per key, which is why
    /// Kubernetes advises rotating it long before (every 200,000 writes); secretbox's 24-byte nonces do not
    /// repeat in any number of writes a key will see.
    fn seal(&self, storage_key: &str, value: &[u8]) -> Result<Bytes, TransformError> {
        // Room for the longer of the two nonces.
        let mut nonce = [0u8; XSalsa20Poly1305::NONCE_SIZE];
        let nonce = &mut nonce[..self.cipher.nonce_len()];
        SystemRandom::new().fill(nonce).map_err(|_| TransformError::Random)?;
        self.seal_with(nonce, storage_key, value)
    }

    /// `value` sealed with `nonce`, of the cipher's nonce length and never used before with this key.
    fn seal_with(&self, nonce: &[u8], storage_key: &str, value: &[u8]) -> Result<Bytes, TransformError> {
        let failed = || TransformError::Encrypt(self.name.clone());
        let mut sealed = Vec::with_capacity(self.prefix.len() + nonce.len() + TAG_LEN + value.len());
        sealed.extend_from_slice(&self.prefix);
        sealed.extend_from_slice(nonce);
        let start = sealed.len();
        match &self.cipher {
            Cipher::AesGcm(key) => {
                sealed.extend_from_slice(value);
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
                let aad = Aad::from(storage_key.as_bytes());
                let tag = key.seal_in_place_separate_tag(nonce, aad, &mut sealed[start..]).map_err(|_| failed())?;
                sealed.extend_from_slice(tag.as_ref());
            }
            Cipher::Secretbox(key) => {
                // Go's secretbox.Seal writes the tag first (NaCl's order); RustCrypto's tag is detached.
                sealed.resize(start + TAG_LEN, 0);
                sealed.extend_from_slice(value);
                let (tag, body) = sealed[start..].split_at_mut(TAG_LEN);
                let computed = key.encrypt_in_place_detached(nonce.into(), &[], body).map_err(|_| failed())?;
                tag.copy_from_slice(&computed);
            }
        }
        Ok(sealed.into())
    }

    fn open(&self, storage_key: &str, sealed: &[u8]) -> Result<Bytes, TransformError> {
        let failed = || TransformError::Decrypt(self.name.clone());
        let (nonce, body) = sealed.split_at_checked(self.cipher.nonce_len()).ok_or_else(failed)?;
        match &self.cipher {
            Cipher::AesGcm(key) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
                let mut body = body.to_vec();
                let aad = Aad::from(storage_key.as_bytes());
                let plain_len = key.open_in_place(nonce, aad, &mut body).map_err(|_| failed())?.len();
                body.truncate(plain_len);
                Ok(body.into())
            }
            Cipher::Secretbox(key) => {
                let (tag, ciphertext) = body.split_at_checked(TAG_LEN).ok_or_else(failed)?;
                let mut plain = ciphertext.to_vec();
                key.decrypt_in_place_detached(nonce.into(), &[], &mut plain, tag.into()).map_err(|_| failed())?;
                Ok(plain.into())
            }
        }
    }
}

/// A [`Store`] whose values are sealed on the way in and opened on the way out, by an [`Encryption`].
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    /// Shared with the watch streams this store hands out.
    encryption: Arc<Encryption>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, encryption: Encryption) -> Self {
        Self { inner, encryption: Arc::new(encryption) }
    }

    /// Whether the value under `key` is stored other than the configuration now writes it, so an update
    /// must write it even when the object is unchanged: how `kubectl replace` of every Secret moves them
    /// to a new key. False for a missing key or an unconfigured resource (without reading the store).
    pub async fn stale(&self, key: &str) -> Result<bool, Error> {
        if self.encryption.providers(key).is_none() {
            return Ok(false);
        }
        match self.inner.get(key).await? {
            Some(kv) => Ok(self.encryption.open(key, kv.value).map_err(|e| transform(key, e))?.stale),
            None => Ok(false),
        }
    }

    /// Writes the value under `key` again if it is [stale](Self::stale), for a value no API request
    /// rewrites (the cluster's shared secrets), so that dropping an old key after a rotation cannot lock
    /// the servers out of it. A server that rewrote it first wins; nothing is lost either way.
    pub async fn rewrite_if_stale(&self, key: &str) -> Result<(), Error> {
        let Some(kv) = self.inner.get(key).await? else { return Ok(()) };
        let opened = self.encryption.open(key, kv.value).map_err(|e| transform(key, e))?;
        if !opened.stale {
            return Ok(());
        }
        tracing::info!(key, "rewriting a value stored with an old encryption provider or key");
        match self.inner.update(key, self.seal(key, &opened.value)?, Some(kv.mod_revision)).await {
            Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn seal(&self, key: &str, value: &Bytes) -> Result<Bytes, Error> {
        self.encryption.seal(key, value.clone()).map_err(|e| transform(key, e))
    }
}

fn open(encryption: &Encryption, mut kv: KeyValue) -> Result<KeyValue, Error> {
    // A delete event of some backends carries no value.
    if !kv.value.is_empty() {
        kv.value = encryption.open(&kv.key, kv.value).map_err(|e| transform(&kv.key, e))?.value;
    }
    Ok(kv)
}

fn transform(key: &str, error: TransformError) -> Error {
    tracing::warn!(key, %error, "stored value cannot be transformed");
    Error::Transform { key: key.into(), source: Box::new(error) }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.inner.get(key).await?.map(|kv| open(&self.encryption, kv)).transpose()
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, Error> {
        let page = self.inner.list(prefix, start_after, limit).await?;
        let kvs = page.kvs.into_iter().map(|kv| open(&self.encryption, kv)).collect::<Result<_, _>>()?;
        Ok(ListPage { kvs, ..page })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, Error> {
        let written = self.inner.create(key, self.seal(key, &value)?).await?;
        Ok(KeyValue { value, ..written })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Revision>) -> Result<KeyValue, Error> {
        let written = self.inner.update(key, self.seal(key, &value)?, expected).await?;
        Ok(KeyValue { value, ..written })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error> {
        open(&self.encryption, self.inner.delete(key, expected).await?)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, Error> {
        let events = self.inner.watch(prefix, after).await?;
        let encryption = self.encryption.clone();
        Ok(Box::pin(events.map(move |event| {
            let event = event?;
            let prev = event.prev.map(|prev| open(&encryption, prev)).transpose()?;
            Ok(Event { kind: event.kind, kv: open(&encryption, event.kv)?, prev })
        })))
    }

    async fn revision(&self) -> Result<Revision, Error> {
        self.inner.revision().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "/registry/core/secrets/default/db";
    /// 32, 16 and 32 bytes, base64.
    const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMA==";
    const KEY3: &str = "YoyGtTDdko6e5InfCqjwX9CpzwHbzT0c2+apxwQLH3Q=";

    fn config(providers: &str) -> Encryption {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets, deployments.apps, '*.batch']\n  providers:\n{providers}"
        );
        Encryption::parse(&text, Path::new("enc.yaml")).unwrap()
    }

    fn aesgcm(name: &str, secret: &str) -> String {
        format!("  - aesgcm:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
    }

    fn secretbox(name: &str, secret: &str) -> String {
        format!("  - secretbox:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
    }

    const IDENTITY: &str = "  - identity: {}\n";

    fn error(text: &str) -> String {
        let text = format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n{text}");
        Encryption::parse(&text, Path::new("enc.yaml")).err().unwrap().to_string()
    }

    #[test]
    fn round_trip_with_kubernetes_format() {
        let encryption = config(&aesgcm("k1", KEY1));
        let sealed = encryption.seal(SECRET, Bytes::from_static(b"{\"data\":1}")).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert_eq!(sealed.len(), "k8s:enc:aesgcm:v1:k1:".len() + 12 + 10 + 16, "prefix, nonce, ciphertext, tag");
        assert!(!sealed.windows(8).any(|w| w == b"\"data\":1"), "no plaintext in the stored form");
        let opened = encryption.open(SECRET, sealed.clone()).unwrap();
        assert_eq!(opened, Opened { value: Bytes::from_static(b"{\"data\":1}"), stale: false });
        assert_ne!(encryption.seal(SECRET, Bytes::from_static(b"{\"data\":1}")).unwrap(), sealed, "fresh nonce");
    }

    #[test]
    fn only_listed_resources_are_encrypted() {
        let encryption = config(&aesgcm("k1", KEY1));
        for key in ["/registry/apps/deployments/default/web", "/registry/batch/jobs/default/j", CLUSTER_SECRETS_KEY] {
            assert!(encryption.seal(key, Bytes::from_static(b"x")).unwrap().starts_with(ENCRYPTED), "{key}");
        }
        for key in ["/registry/core/configmaps/default/c", "/registry/apps/replicasets/default/r", "/skiff/other"] {
            assert_eq!(encryption.seal(key, Bytes::from_static(b"x")).unwrap(), Bytes::from_static(b"x"), "{key}");
        }
        let all = Encryption::parse(
            &format!(
                "apiVersion: {API_VERSION}\nkind: EncryptionConfiguration\nresources:\n\
                      - resources: ['*.*']\n  providers:\n{}",
                aesgcm("k1", KEY1)
            ),
            Path::new("enc.yaml"),
        )
        .unwrap();
        assert!(all.seal("/registry/core/pods/default/p", Bytes::from_static(b"x")).unwrap().starts_with(ENCRYPTED));
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let sealed = config(&aesgcm("k1", KEY1)).seal(SECRET, Bytes::from_static(b"secret")).unwrap();
        let other = config(&aesgcm("k1", KEY2));
        assert!(matches!(other.open(SECRET, sealed.clone()), Err(TransformError::Decrypt(name)) if name == "k1"));
        let encryption = config(&aesgcm("k1", KEY1));
        let mut tampered = sealed.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(encryption.open(SECRET, tampered.into()), Err(TransformError::Decrypt(_))));
        let moved = encryption.open("/registry/core/secrets/default/other", sealed.clone());
        assert!(matches!(moved, Err(TransformError::Decrypt(_))), "the storage key is authenticated");
        let truncated = sealed.slice(..sealed.len() - 30);
        assert!(matches!(encryption.open(SECRET, truncated), Err(TransformError::Decrypt(_))));
    }

    #[test]
    fn the_prefix_chooses_the_provider() {
        let plain = Bytes::from_static(b"{}");
        let aes_only = config(&aesgcm("k1", KEY1));
        assert!(matches!(aes_only.open(SECRET, plain.clone()), Err(TransformError::Unencrypted)));
        let unknown = Bytes::from_static(b"k8s:enc:aesgcm:v1:k9:0123456789abcdefghijklmnopqrstuvwxyz");
        assert!(matches!(aes_only.open(SECRET, unknown), Err(TransformError::NoMatchingPrefix)));
        let identity_first = config(&format!("{IDENTITY}{}", aesgcm("k1", KEY1)));
        assert_eq!(identity_first.seal(SECRET, plain.clone()).unwrap(), plain, "identity first writes plaintext");
        assert_eq!(identity_first.open(SECRET, plain.clone()).unwrap(), Opened { value: plain.clone(), stale: false });
        let sealed = aes_only.seal(SECRET, plain.clone()).unwrap();
        assert_eq!(identity_first.open(SECRET, sealed).unwrap(), Opened { value: plain.clone(), stale: true });
        let identity_second = config(&format!("{}{IDENTITY}", aesgcm("k1", KEY1)));
        assert_eq!(identity_second.open(SECRET, plain.clone()).unwrap(), Opened { value: plain, stale: true });
    }

    #[test]
    fn rotation_reads_old_writes_new() {
        let old = config(&aesgcm("old", KEY1));
        let sealed_old = old.seal(SECRET, Bytes::from_static(b"v")).unwrap();
        let both = config(&format!("{}{}", aesgcm("new", KEY2), aesgcm("old", KEY1)));
        assert_eq!(
            both.open(SECRET, sealed_old.clone()).unwrap(),
            Opened { value: Bytes::from_static(b"v"), stale: true }
        );
        let rewritten = both.seal(SECRET, Bytes::from_static(b"v")).unwrap();
        assert!(rewritten.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        assert!(!both.open(SECRET, rewritten.clone()).unwrap().stale);
        let new_only = config(&aesgcm("new", KEY2));
        assert_eq!(new_only.open(SECRET, rewritten).unwrap().value, Bytes::from_static(b"v"));
        assert!(matches!(new_only.open(SECRET, sealed_old), Err(TransformError::NoMatchingPrefix)));
        // Two keys in one provider: the first writes, the second only reads.
        let keys = format!(
            "  - aesgcm:\n      keys:\n      - name: new\n        secret: {KEY2}\n      - name: old\n        secret: {KEY1}\n"
        );
        let one_provider = config(&keys);
        let sealed = old.seal(SECRET, Bytes::from_static(b"v")).unwrap();
        assert!(one_provider.open(SECRET, sealed).unwrap().stale);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let resources = "resources:\n- resources: [secrets]\n  providers:\n";
        assert_eq!(
            error(&format!("{resources}  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n")),
            "encryption provider config enc.yaml: resources[0].providers[0].aesgcm.keys[0].secret: \
             secret is not of the expected length, got 5, expected one of [16 32]"
        );
        assert!(error(&format!("{resources}{}", secretbox("k", KEY2))).ends_with(
            "resources[0].providers[0].secretbox.keys[0].secret: \
                 secret is not of the expected length, got 16, expected one of [32]"
        ));
        assert!(
            error(&format!("{resources}  - secretbox:\n      keys: []\n"))
                .ends_with("resources[0].providers[0].secretbox.keys: must not be empty")
        );
        assert!(
            error(&format!("{resources}{}", secretbox("a:b", KEY1)))
                .ends_with("providers[0].secretbox.keys[0].name: key name must be non-empty and contain no ':'")
        );
        assert!(
            error(&format!("{resources}  - aesgcm:\n      keys: []\n"))
                .contains("providers[0].aesgcm.keys: must not be empty")
        );
        assert!(
            error(&format!("{resources}  - aesgcm:\n      keys:\n      - name: k\n        secret: '!!'\n"))
                .contains("keys[0].secret: secret is not base64")
        );
        assert!(error(&format!("{resources}  - {{}}\n")).contains("providers[0]: must name exactly one provider type"));
        assert!(
            error("resources:\n- resources: [secrets]\n  providers: []\n")
                .contains("resources[0].providers: must not be empty")
        );
        let twice = format!("{resources}{IDENTITY}- resources: [configmaps, secrets]\n  providers:\n{IDENTITY}");
        assert!(error(&twice).contains("resources[1].resources[1]: resource \"secrets\" is listed more than once"));
        let aes192 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";
        assert!(error(&format!("{resources}{}", aesgcm("k", aes192))).contains("AES-192"));
        assert!(
            error("unknown: 1\n").starts_with("encryption provider config enc.yaml is not an EncryptionConfiguration")
        );
        let wrong_version = "apiVersion: v1\nkind: EncryptionConfiguration\n";
        let parsed = Encryption::parse(wrong_version, Path::new("enc.yaml")).err().unwrap().to_string();
        assert!(parsed.contains("apiVersion: apiVersion must be"), "{parsed}");
    }

    /// The only key of the first provider for secrets.
    fn first_key(encryption: &Encryption) -> &Key {
        match encryption.providers(SECRET).and_then(|providers| providers.first()) {
            Some(Provider::Keys(keys)) => &keys[0],
            _ => panic!("no keyed provider first"),
        }
    }

    #[test]
    fn secretbox_round_trip_with_kubernetes_format() {
        let encryption = config(&secretbox("s1", KEY1));
        let sealed = encryption.seal(SECRET, Bytes::from_static(b"{\"data\":1}")).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:secretbox:v1:s1:"));
        assert_eq!(sealed.len(), "k8s:enc:secretbox:v1:s1:".len() + 24 + 16 + 10, "prefix, nonce, tag, ciphertext");
        assert!(!sealed.windows(8).any(|w| w == b"\"data\":1"), "no plaintext in the stored form");
        let opened = encryption.open(SECRET, sealed.clone()).unwrap();
        assert_eq!(opened, Opened { value: Bytes::from_static(b"{\"data\":1}"), stale: false });
        assert_ne!(encryption.seal(SECRET, Bytes::from_static(b"{\"data\":1}")).unwrap(), sealed, "fresh nonce");
        // Kubernetes' secretbox authenticates no additional data: unlike aesgcm, a value copied under
        // another storage key still opens, as it does in kube-apiserver.
        let moved = encryption.open("/registry/core/secrets/default/other", sealed).unwrap();
        assert_eq!(moved.value, Bytes::from_static(b"{\"data\":1}"));
        let empty = encryption.seal(SECRET, Bytes::new()).unwrap();
        assert_eq!(encryption.open(SECRET, empty).unwrap().value, Bytes::new());
    }

    /// NaCl's own secretbox test (tests/secretbox.c and secretbox.out): the stored value after the prefix
    /// is the nonce, then exactly NaCl's output, the tag before the ciphertext.
    #[test]
    fn secretbox_matches_nacl_known_answer() {
        let key = "GydVZHPphdRizVEZeppGx2AJVJ6sZHTyBsTuCET2g4k="; // 1b275564...44f68389
        let nonce = hex::decode("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37").unwrap();
        let message = hex::decode(concat!(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffce5ecbaaf33bd751a",
            "1ac728d45e6c61296cdc3c01233561f41db66cce314adb310e3be8250c46f06dceea3a7fa1348057",
            "e2f6556ad6b1318a024a838f21af1fde048977eb48f59ffd4924ca1c60902e52f0a089bc76897040",
            "e082f937763848645e0705"
        ))
        .unwrap();
        let boxed = hex::decode(concat!(
            "f3ffc7703f9400e52a7dfb4b3d3305d9", // the Poly1305 tag
            "8e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b",
            "4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae",
            "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6",
            "599b1f654cb45a74e355a5"
        ))
        .unwrap();
        let stored = [b"k8s:enc:secretbox:v1:nacl:".as_slice(), &nonce, &boxed].concat();
        let encryption = config(&secretbox("nacl", key));
        assert_eq!(first_key(&encryption).seal_with(&nonce, SECRET, &message).unwrap(), stored);
        assert_eq!(encryption.open(SECRET, stored.into()).unwrap().value, message);
    }

    #[test]
    fn secretbox_refuses_tampering_and_wrong_keys() {
        let encryption = config(&secretbox("s1", KEY1));
        let sealed = encryption.seal(SECRET, Bytes::from_static(b"secret value")).unwrap();
        let prefix = "k8s:enc:secretbox:v1:s1:".len();
        // A bit flipped in the nonce, the tag and the ciphertext.
        for at in [prefix, prefix + 24, sealed.len() - 1] {
            let mut tampered = sealed.to_vec();
            tampered[at] ^= 1;
            let opened = encryption.open(SECRET, tampered.into());
            assert!(matches!(opened, Err(TransformError::Decrypt(ref name)) if name == "s1"), "byte {at}");
        }
        for len in [prefix + 10, prefix + 24 + 15] {
            assert!(matches!(encryption.open(SECRET, sealed.slice(..len)), Err(TransformError::Decrypt(_))), "{len}");
        }
        let other = config(&secretbox("s1", KEY3));
        assert!(matches!(other.open(SECRET, sealed), Err(TransformError::Decrypt(_))));
    }

    #[test]
    fn rotation_from_aesgcm_to_secretbox() {
        let old = config(&aesgcm("old", KEY2));
        let sealed_old = old.seal(SECRET, Bytes::from_static(b"v")).unwrap();
        let both = config(&format!("{}{}", secretbox("new", KEY1), aesgcm("old", KEY2)));
        let opened = both.open(SECRET, sealed_old.clone()).unwrap();
        assert_eq!(opened, Opened { value: Bytes::from_static(b"v"), stale: true }, "the old provider reads");
        let rewritten = both.seal(SECRET, Bytes::from_static(b"v")).unwrap();
        assert!(rewritten.starts_with(b"k8s:enc:secretbox:v1:new:"), "the first provider writes");
        assert!(!both.open(SECRET, rewritten.clone()).unwrap().stale);
        let new_only = config(&secretbox("new", KEY1));
        assert_eq!(new_only.open(SECRET, rewritten).unwrap().value, Bytes::from_static(b"v"));
        assert!(matches!(new_only.open(SECRET, sealed_old), Err(TransformError::NoMatchingPrefix)));
    }

    #[tokio::test]
    async fn the_store_layer_seals_what_it_writes_and_opens_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let store = EncryptedStore::new(raw.clone(), config(&aesgcm("k1", KEY1)));
        let mut watch = store.watch("/registry/", 0).await.unwrap();
        let written = store.create(SECRET, Bytes::from_static(b"hunter2")).await.unwrap();
        assert_eq!(written.value, Bytes::from_static(b"hunter2"));
        assert!(raw.get(SECRET).await.unwrap().unwrap().value.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert_eq!(store.get(SECRET).await.unwrap().unwrap().value, Bytes::from_static(b"hunter2"));
        assert_eq!(store.list("/registry/", None, 0).await.unwrap().kvs[0].value, Bytes::from_static(b"hunter2"));
        assert_eq!(watch.next().await.unwrap().unwrap().kv.value, Bytes::from_static(b"hunter2"));
        assert!(!store.stale(SECRET).await.unwrap());
        let rotated =
            EncryptedStore::new(raw.clone(), config(&format!("{}{}", aesgcm("k2", KEY2), aesgcm("k1", KEY1))));
        assert!(rotated.stale(SECRET).await.unwrap());
        let deleted = rotated.delete(SECRET, None).await.unwrap();
        assert_eq!(deleted.value, Bytes::from_static(b"hunter2"));
    }
}
