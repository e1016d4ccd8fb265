//! The node's image store: pulls images from OCI registries (or imports `.wasm` files) into a
//! content-addressed directory shared by all pods, and hands shims a [`skiff_shim::Image`].
//!
//! Layout under the store's directory:
//! - `blobs/sha256/<hex>`: manifests, configs and layers, each written to `tmp/` and renamed into place,
//!   so a blob path either holds verified content or does not exist.
//! - `index.json`: `{"references": {normalised reference: manifest digest}}`, rewritten atomically.
//! - `tmp/`: downloads in progress.
//!
//! Invariants: a reference is recorded only after every blob of its manifest is in place; a blob is
//! deleted only by [`ImageStore::garbage_collect`], which spares blobs an in-flight pull or import has
//! pinned. Stores opened on the same directory in one process share their locks.

mod auth;
mod layout;
mod reference;
mod registries;
mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use oci_client::Reference;
use serde::{Deserialize, Serialize};

pub use auth::RegistryAuth;
pub use layout::{WASM_CONFIG_V0, WASM_LAYER};
pub use registries::{DEFAULT_PATH as DEFAULT_REGISTRIES_PATH, Registries, RegistriesError};

/// Why an image could not be resolved. [`ImageError::waiting_reason`] maps each to the container's
/// waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse: `InvalidImageName`.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The registry said the image (or a platform we run) does not exist: `ErrImagePull`, with the
    /// registry's message.
    #[error("image {reference} not found: {message}")]
    NotFound { reference: String, message: String },
    /// Any other pull failure (network, auth, a blob not matching its digest): `ErrImagePull`.
    #[error("pulling image {reference}: {message}")]
    Pull { reference: String, message: String },
    /// Publishing an artifact failed.
    #[error("pushing image {reference}: {message}")]
    Push { reference: String, message: String },
    /// Pull policy `Never` and the image is not in the store: `ErrImageNeverPull`.
    #[error("image {0} is not present with pull policy Never")]
    NotPresent(String),
    /// The bytes given to import or push are not a WebAssembly binary.
    #[error("invalid wasm: {0}")]
    InvalidWasm(String),
    /// An imagePullSecret's `.dockerconfigjson` does not parse.
    #[error("invalid docker config: {0}")]
    DockerConfig(String),
    /// A file in the store is not what the store wrote (edited by hand, or a foreign directory).
    #[error("image store file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("image store io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The kubelet's waiting reason for a container whose image failed this way. After repeated
    /// `ErrImagePull`s the caller reports `ImagePullBackOff` while it waits to retry.
    pub fn waiting_reason(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "InvalidImageName",
            ImageError::NotPresent(_) => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}

/// Where a pull's manifest came from, and so where its blobs come from.
struct Source {
    client: oci_client::Client,
    /// The image as this endpoint names it.
    reference: Reference,
    auth: oci_client::secrets::RegistryAuth,
}

/// A failed pull: `NotFound` when the registry said the image does not exist, else `Pull`.
fn pull_failure(reference: &str, not_found: bool, message: String) -> ImageError {
    if not_found {
        ImageError::NotFound { reference: reference.to_owned(), message }
    } else {
        ImageError::Pull { reference: reference.to_owned(), message }
    }
}

/// A container's `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time; blobs already stored are not downloaded again.
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy from the container's field, or Kubernetes' default when it is unset: `Always` for a
    /// `:latest` or untagged image (unless pinned by digest only), else `IfNotPresent`. An unknown value
    /// (which the API server rejects) also gets the default.
    pub fn from_k8s(value: Option<&str>, image: &str) -> PullPolicy {
        match value {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::default_for(image),
        }
    }

    /// Kubernetes' defaulting: `Always` when the tag is `latest`, explicit or implied (no tag and no
    /// digest), else `IfNotPresent`.
    pub fn default_for(image: &str) -> PullPolicy {
        match reference::parse(image) {
            Ok(reference) if reference.tag() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Parses a reference, applying Docker Hub's defaults (`nginx` -> `docker.io/library/nginx:latest`).
fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference::parse(reference)
        .map_err(|e| ImageError::InvalidReference { reference: reference.to_owned(), reason: e.to_string() })
}

/// Publishes a `.wasm` file as a CNCF wasm artifact (`skiff image push FILE.wasm REF`). Returns the
/// manifest digest.
pub async fn push_wasm(wasm: &[u8], reference: &str, auth: &RegistryAuth) -> Result<String, ImageError> {
    let parsed = parse_reference(reference)?;
    let artifact = layout::wasm_artifact(wasm, &now_rfc3339()).map_err(ImageError::InvalidWasm)?;
    let digest = registry::push_artifact(&parsed, auth, &artifact, wasm)
        .await
        .map_err(|e| ImageError::Push { reference: reference.to_owned(), message: registry::registry_message(&e) })?;
    tracing::info!(image = reference, %digest, "pushed wasm artifact");
    Ok(digest)
}

fn now_rfc3339() -> String {
    // Whole seconds in UTC, as other tools write `created`.
    skiff_api::format_time(jiff::Timestamp::now())
}

/// Locks shared by every [`ImageStore`] open on one directory in this process.
#[derive(Default)]
struct Shared {
    /// Serialises read-modify-write of `index.json`, and garbage collection as a whole.
    index: Mutex<()>,
    /// Digests an in-flight pull or import is writing, with a count per digest; GC spares them.
    pinned: Mutex<HashMap<String, usize>>,
    /// One async lock per reference, so concurrent pods pulling one image download it once.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data is plain counters and maps updated in single steps, valid even after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shared_for(dir: &Path) -> Arc<Shared> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    let mut all = lock(ALL.get_or_init(Mutex::default));
    all.retain(|_, shared| shared.strong_count() > 0);
    if let Some(shared) = all.get(dir).and_then(Weak::upgrade) {
        return shared;
    }
    let shared = Arc::new(Shared::default());
    all.insert(dir.to_owned(), Arc::downgrade(&shared));
    shared
}

/// Keeps digests pinned against garbage collection until dropped.
struct Pins<'a> {
    shared: &'a Shared,
    digests: Vec<String>,
}

impl<'a> Pins<'a> {
    fn new(shared: &'a Shared, digests: Vec<String>) -> Self {
        let mut pinned = lock(&shared.pinned);
        for digest in &digests {
            *pinned.entry(digest.clone()).or_default() += 1;
        }
        Pins { shared, digests }
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut pinned = lock(&self.shared.pinned);
        for digest in &self.digests {
            if let Some(count) = pinned.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    pinned.remove(digest);
                }
            }
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct IndexFile {
    references: BTreeMap<String, String>,
}

/// Temp files older than this are leftovers of a crashed agent, removed by garbage collection.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// The content-addressed image store. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    shared: Arc<Shared>,
    /// Where pulls go: mirrors, TLS and credentials from the node's registries file.
    registries: Arc<Registries>,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.root).finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let dir = dir.into();
        for sub in ["blobs/sha256", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        let root = dir.canonicalize().map_err(io_error(&dir))?;
        let shared = shared_for(&root);
        Ok(ImageStore { root, shared, registries: Arc::default() })
    }

    /// Pulls through `registries` (the node's registries file) rather than straight from each image's
    /// registry.
    pub fn with_registries(self, registries: Registries) -> Self {
        ImageStore { registries: Arc::new(registries), ..self }
    }

    /// Resolves a pod's image under its pull policy and returns it for the shims.
    #[tracing::instrument(skip(self, auth), fields(policy = policy.as_str()))]
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
    ) -> Result<skiff_shim::Image, ImageError> {
        let parsed = parse_reference(reference)?;
        let key = parsed.whole();
        if policy != PullPolicy::Always
            && let Some(image) = self.lookup(reference, &key)?
        {
            return Ok(image);
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NotPresent(reference.to_owned()));
        }

        let pull_lock = Arc::clone(lock(&self.shared.pulls).entry(key.clone()).or_default());
        let result = async {
            let _pulling = pull_lock.lock().await;
            // Another pod may have pulled it while we waited.
            if policy == PullPolicy::IfNotPresent
                && let Some(image) = self.lookup(reference, &key)?
            {
                return Ok(image);
            }
            self.pull(reference, &parsed, &key, auth).await
        }
        .await;
        let mut pulls = lock(&self.shared.pulls);
        // Only the map and this task hold it: nobody else is waiting, so the entry can go.
        if Arc::strong_count(&pull_lock) == 2 {
            pulls.remove(&key);
        }
        result
    }

    /// Looks `reference` up in the store only.
    pub fn get(&self, reference: &str) -> Result<Option<skiff_shim::Image>, ImageError> {
        let parsed = parse_reference(reference)?;
        self.lookup(reference, &parsed.whole())
    }

    /// Stores a `.wasm` file as a CNCF wasm artifact under `reference`, with no registry involved
    /// (`skiff image import` on offline nodes). The manifest is the one [`push_wasm`] would publish.
    pub fn import_wasm(&self, wasm: &[u8], reference: &str) -> Result<skiff_shim::Image, ImageError> {
        let parsed = parse_reference(reference)?;
        let artifact = layout::wasm_artifact(wasm, &now_rfc3339()).map_err(ImageError::InvalidWasm)?;
        let manifest_digest = layout::sha256_digest(&artifact.manifest);
        if let Some(digest) = parsed.digest()
            && digest != manifest_digest
        {
            return Err(ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason: format!("the imported manifest's digest is {manifest_digest}"),
            });
        }
        let config_digest = layout::sha256_digest(&artifact.config);
        let _pins = Pins::new(
            &self.shared,
            vec![manifest_digest.clone(), config_digest.clone(), artifact.layer_digest.clone()],
        );
        self.write_blob(&artifact.layer_digest, wasm)?;
        self.write_blob(&config_digest, &artifact.config)?;
        self.write_blob(&manifest_digest, &artifact.manifest)?;
        let key = parsed.whole();
        self.record(&key, &manifest_digest)?;
        tracing::info!(image = reference, digest = %manifest_digest, "imported wasm artifact");
        self.lookup(reference, &key)?.ok_or_else(|| ImageError::Corrupt {
            path: self.index_path(),
            message: format!("{key} vanished right after import"),
        })
    }

    /// Forgets every image whose reference is not in `in_use` and deletes the blobs no remaining image
    /// needs. Returns the bytes freed. `in_use` must include images of pods still pulling or starting.
    pub fn garbage_collect(&self, in_use: &HashSet<String>) -> Result<u64, ImageError> {
        let keep: HashSet<String> = in_use.iter().filter_map(|r| reference::parse(r).ok()).map(|r| r.whole()).collect();
        let _index = lock(&self.shared.index);
        let mut index = self.read_index()?;
        let before = index.references.len();
        index.references.retain(|reference, _| keep.contains(reference));
        if index.references.len() != before {
            self.write_index(&index)?;
        }

        let reachable = self.blobs_of(&index)?;
        // Held while deleting, so a pull cannot pin a blob and find it present just before it goes.
        let pinned = lock(&self.shared.pinned);

        let mut freed = 0;
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(io_error(&blobs))? {
            let entry = entry.map_err(io_error(&blobs))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if reachable.contains(&digest) || pinned.contains_key(&digest) {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map_err(io_error(&path))?.len();
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            freed += size;
        }
        drop(pinned);

        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let entry = entry.map_err(io_error(&tmp))?;
            let path = entry.path();
            let metadata = entry.metadata().map_err(io_error(&path))?;
            let age = metadata.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_some_and(|age| age > STALE_TEMP_AGE) {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                freed += metadata.len();
            }
        }
        tracing::info!(removed = before - index.references.len(), freed, "image garbage collection");
        Ok(freed)
    }

    /// The digests of every blob (manifests, configs, layers) the images in the store need.
    pub fn blobs(&self) -> Result<HashSet<String>, ImageError> {
        let _index = lock(&self.shared.index);
        self.blobs_of(&self.read_index()?)
    }

    fn blobs_of(&self, index: &IndexFile) -> Result<HashSet<String>, ImageError> {
        let mut reachable: HashSet<String> = HashSet::new();
        for manifest_digest in index.references.values() {
            reachable.insert(manifest_digest.clone());
            let manifest = self.read_manifest(manifest_digest)?;
            reachable.insert(manifest.config.digest);
            reachable.extend(manifest.layers.into_iter().map(|l| l.digest));
        }
        Ok(reachable)
    }

    async fn pull(
        &self,
        reference: &str,
        parsed: &Reference,
        key: &str,
        auth: &RegistryAuth,
    ) -> Result<skiff_shim::Image, ImageError> {
        let pull_error = |message: String| ImageError::Pull { reference: reference.to_owned(), message };
        let registry_error = |e: oci_client::errors::OciDistributionError| {
            pull_failure(reference, registry::is_not_found(&e), registry::registry_message(&e))
        };
        let (source, mut body, mut manifest_digest) = self.first_manifest(reference, parsed, auth).await?;
        let Source { client, reference: parsed, auth } = &source;
        let manifest = match layout::parse_manifest(&body).map_err(pull_error)? {
            layout::ManifestKind::Image(manifest) => manifest,
            layout::ManifestKind::Index(index) => {
                let entry = layout::select_platform(&index).ok_or_else(|| ImageError::NotFound {
                    reference: reference.to_owned(),
                    message: format!("no manifest for wasm or linux/{} in the image index", std::env::consts::ARCH),
                })?;
                let platform_ref = parsed.clone_with_digest(entry.digest.clone());
                (body, manifest_digest) =
                    registry::fetch_manifest(client, &platform_ref, auth).await.map_err(registry_error)?;
                match layout::parse_manifest(&body).map_err(pull_error)? {
                    layout::ManifestKind::Image(manifest) => manifest,
                    layout::ManifestKind::Index(_) => {
                        return Err(pull_error(format!("index entry {} is itself an index", entry.digest)));
                    }
                }
            }
        };

        let descriptors: Vec<&layout::Descriptor> = std::iter::once(&manifest.config).chain(&manifest.layers).collect();
        for descriptor in &descriptors {
            // Reject before any path is built from a digest the registry chose.
            blob_file_name(&descriptor.digest).map_err(pull_error)?;
        }
        let mut pinned: Vec<String> = descriptors.iter().map(|d| d.digest.clone()).collect();
        pinned.push(manifest_digest.clone());
        let _pins = Pins::new(&self.shared, pinned);

        for descriptor in descriptors {
            let path = self.blob_path(&descriptor.digest).map_err(pull_error)?;
            if path.exists() {
                continue;
            }
            let tmp = self.temp_path();
            let downloaded = async {
                let mut file = tokio::fs::File::create(&tmp).await.map_err(io_error(&tmp))?;
                registry::fetch_blob(client, parsed, descriptor, &mut file).await.map_err(pull_error)?;
                file.sync_all().await.map_err(io_error(&tmp))?;
                drop(file);
                tokio::fs::rename(&tmp, &path).await.map_err(io_error(&path))
            }
            .await;
            if downloaded.is_err() {
                // Best effort: a leftover is removed by garbage collection once stale.
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            downloaded?;
        }
        self.write_blob(&manifest_digest, &body)?;
        self.record(key, &manifest_digest)?;
        tracing::info!(image = reference, digest = %manifest_digest, layers = manifest.layers.len(), "pulled image");
        self.lookup(reference, key)?.ok_or_else(|| ImageError::Corrupt {
            path: self.index_path(),
            message: format!("{key} vanished right after pull"),
        })
    }

    /// The image's manifest and its digest from the first endpoint that serves it (mirrors in order, then
    /// the image's registry), and that endpoint, so its blobs come from the same place.
    async fn first_manifest(
        &self,
        reference: &str,
        parsed: &Reference,
        secrets: &RegistryAuth,
    ) -> Result<(Source, Vec<u8>, String), ImageError> {
        let mut failures = Vec::new();
        for endpoint in self.registries.endpoints(parsed) {
            let attempt = async {
                let (client, auth) = registry::client_for(&endpoint, secrets).await?;
                let (body, digest) = registry::fetch_manifest(&client, &endpoint.reference, &auth).await?;
                Ok((client, auth, body, digest))
            };
            match attempt.await {
                Ok((client, auth, body, digest)) => {
                    return Ok((Source { client, reference: endpoint.reference, auth }, body, digest));
                }
                Err(e) => {
                    let message = registry::registry_message(&e);
                    let registry = endpoint.reference.registry();
                    tracing::warn!(image = reference, registry, error = %message, "cannot pull from this endpoint");
                    failures.push((endpoint.reference.registry().to_owned(), registry::is_not_found(&e), message));
                }
            }
        }
        // Not found only when every endpoint said so; a mirror that is down does not make an image absent.
        let not_found = failures.iter().all(|(_, not_found, _)| *not_found);
        let message = match failures.as_slice() {
            [(_, _, message)] => message.clone(),
            _ => failures
                .iter()
                .map(|(registry, _, message)| format!("{registry}: {message}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        Err(pull_failure(reference, not_found, message))
    }

    /// The stored image for a normalised reference, or `None` when it is not recorded or a blob is
    /// missing (an interrupted earlier store or a hand-deleted file: pulling again repairs it).
    fn lookup(&self, reference: &str, key: &str) -> Result<Option<skiff_shim::Image>, ImageError> {
        let Some(manifest_digest) = self.read_index()?.references.remove(key) else {
            return Ok(None);
        };
        let manifest_path = self
            .blob_path(&manifest_digest)
            .map_err(|message| ImageError::Corrupt { path: self.index_path(), message })?;
        if !manifest_path.exists() {
            return Ok(None);
        }
        let manifest = self.read_manifest(&manifest_digest)?;
        let config_path = self.stored_blob_path(&manifest_digest, &manifest.config.digest)?;
        let config = match std::fs::read(&config_path) {
            Ok(config) => config,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&config_path)(e)),
        };
        let fields = layout::config_fields(&config);
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for layer in manifest.layers {
            let path = self.stored_blob_path(&manifest_digest, &layer.digest)?;
            if !path.exists() {
                return Ok(None);
            }
            layers.push(skiff_shim::Layer { media_type: layer.media_type, digest: layer.digest, path });
        }
        Ok(Some(skiff_shim::Image {
            reference: reference.to_owned(),
            digest: manifest_digest,
            config_media_type: manifest.config.media_type,
            architecture: fields.architecture,
            entrypoint: fields.entrypoint,
            cmd: fields.cmd,
            env: fields.env,
            working_dir: fields.working_dir,
            user: fields.user,
            layers,
        }))
    }

    fn read_manifest(&self, digest: &str) -> Result<layout::Manifest, ImageError> {
        let path = self.stored_blob_path(digest, digest)?;
        let body = std::fs::read(&path).map_err(io_error(&path))?;
        match layout::parse_manifest(&body) {
            Ok(layout::ManifestKind::Image(manifest)) => Ok(manifest),
            Ok(layout::ManifestKind::Index(_)) => {
                Err(ImageError::Corrupt { path, message: "an index where an image manifest belongs".to_owned() })
            }
            Err(message) => Err(ImageError::Corrupt { path, message }),
        }
    }

    /// The path of a blob a stored manifest names; a bad digest there means the store was tampered with.
    fn stored_blob_path(&self, manifest_digest: &str, digest: &str) -> Result<PathBuf, ImageError> {
        self.blob_path(digest).map_err(|message| ImageError::Corrupt {
            path: self.root.join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:")),
            message,
        })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("blobs/sha256").join(blob_file_name(digest)?))
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!("{}-{:016x}", std::process::id(), rand::random::<u64>()))
    }

    /// Writes a blob already in memory unless present; content addressing makes rewriting pointless.
    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path =
            self.blob_path(digest).map_err(|message| ImageError::Corrupt { path: self.root.clone(), message })?;
        if path.exists() {
            return Ok(());
        }
        self.write_atomically(&path, bytes)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let tmp = self.temp_path();
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            // Best effort: a leftover is removed by garbage collection once stale.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io_error(path))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt { path, message: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let path = self.index_path();
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| ImageError::Corrupt { path: path.clone(), message: e.to_string() })?;
        self.write_atomically(&path, &bytes)
    }

    fn record(&self, key: &str, manifest_digest: &str) -> Result<(), ImageError> {
        let _index = lock(&self.shared.index);
        let mut index = self.read_index()?;
        if index.references.get(key).map(String::as_str) == Some(manifest_digest) {
            return Ok(());
        }
        index.references.insert(key.to_owned(), manifest_digest.to_owned());
        self.write_index(&index)
    }
}

/// The file name for a sha256 digest; anything else (another algorithm, a path) is refused.
fn blob_file_name(digest: &str) -> Result<&str, String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(hex),
        _ => Err(format!("unsupported digest {digest:?} (only sha256 is stored)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        assert_eq!(PullPolicy::default_for("nginx"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("nginx:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("127.0.0.1:5000/a/b"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("127.0.0.1:5000/a/b:1.0"), PullPolicy::IfNotPresent);
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::default_for(&format!("app@{digest}")), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::default_for(&format!("app:latest@{digest}")), PullPolicy::Always);
        assert_eq!(PullPolicy::from_k8s(Some("Never"), "nginx"), PullPolicy::Never);
        assert_eq!(PullPolicy::from_k8s(Some("IfNotPresent"), "nginx"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::from_k8s(Some("Always"), "x:1"), PullPolicy::Always);
        assert_eq!(PullPolicy::from_k8s(None, "x:1"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::from_k8s(Some("sometimes"), "x"), PullPolicy::Always);
        assert_eq!(PullPolicy::Never.as_str(), "Never");
    }

    #[test]
    fn waiting_reasons_match_the_kubelet() {
        let r = || "x".to_owned();
        assert_eq!(ImageError::InvalidReference { reference: r(), reason: r() }.waiting_reason(), "InvalidImageName");
        assert_eq!(ImageError::NotPresent(r()).waiting_reason(), "ErrImageNeverPull");
        assert_eq!(ImageError::NotFound { reference: r(), message: r() }.waiting_reason(), "ErrImagePull");
        assert_eq!(ImageError::Pull { reference: r(), message: r() }.waiting_reason(), "ErrImagePull");
    }

    #[test]
    fn blob_file_names_only_accept_sha256_hex() {
        let hex = "0".repeat(64);
        assert_eq!(blob_file_name(&format!("sha256:{hex}")).unwrap(), hex);
        for bad in [
            format!("sha512:{hex}"),
            "sha256:../../etc/passwd".to_owned(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}/", "0".repeat(63)),
            hex.clone(),
        ] {
            assert!(blob_file_name(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_hub_short_names_resolve_to_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store.import_wasm(MODULE, "hello").unwrap();
        let image = store.get("docker.io/library/hello:latest").unwrap().unwrap();
        assert_eq!(image.reference, "docker.io/library/hello:latest", "the reference as asked");
        assert!(store.get("index.docker.io/library/hello").unwrap().is_some());
        assert!(store.get("hello:v2").unwrap().is_none());
    }

    #[test]
    fn a_missing_blob_makes_the_image_absent_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let image = store.import_wasm(MODULE, "r.local/a:1").unwrap();
        std::fs::remove_file(&image.layers[0].path).unwrap();
        assert!(store.get("r.local/a:1").unwrap().is_none());
        // Importing again repairs it.
        store.import_wasm(MODULE, "r.local/a:1").unwrap();
        assert_eq!(std::fs::read(&store.get("r.local/a:1").unwrap().unwrap().layers[0].path).unwrap(), MODULE);
    }

    #[test]
    fn import_rejects_non_wasm_and_a_mismatched_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(matches!(store.import_wasm(b"#!/bin/sh\n", "r.local/a:1"), Err(ImageError::InvalidWasm(_))));
        let pinned = format!("r.local/a@sha256:{}", "0".repeat(64));
        assert!(matches!(store.import_wasm(MODULE, &pinned), Err(ImageError::InvalidReference { .. })));
        assert!(matches!(store.get("Upper:1"), Err(ImageError::InvalidReference { .. })));
    }

    #[test]
    fn a_corrupt_index_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("index.json"), b"{not json").unwrap();
        assert!(matches!(store.get("r.local/a:1"), Err(ImageError::Corrupt { .. })));
    }

    #[test]
    fn gc_spares_pinned_blobs_and_removes_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let image = store.import_wasm(MODULE, "r.local/a:1").unwrap();
        let layer = image.layers[0].digest.clone();
        {
            let _pins = Pins::new(&store.shared, vec![layer.clone()]);
            let freed = store.garbage_collect(&HashSet::new()).unwrap();
            assert!(freed > 0, "manifest and config go");
            assert!(image.layers[0].path.exists(), "the pinned layer stays");
        }
        assert_eq!(store.garbage_collect(&HashSet::new()).unwrap(), MODULE.len() as u64);
        assert!(!image.layers[0].path.exists());

        let fresh = dir.path().join("tmp/fresh");
        std::fs::write(&fresh, b"in progress").unwrap();
        let stale = dir.path().join("tmp/stale");
        std::fs::write(&stale, b"crashed").unwrap();
        let old = SystemTime::now() - 2 * STALE_TEMP_AGE;
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
        assert_eq!(store.garbage_collect(&HashSet::new()).unwrap(), 7);
        assert!(fresh.exists());
        assert!(!stale.exists());
    }

    #[test]
    fn stores_on_one_directory_share_locks() {
        let dir = tempfile::tempdir().unwrap();
        let a = ImageStore::open(dir.path()).unwrap();
        let b = ImageStore::open(dir.path().join(".")).unwrap();
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        let other = tempfile::tempdir().unwrap();
        assert!(!Arc::ptr_eq(&a.shared, &ImageStore::open(other.path()).unwrap().shared));
    }
}
