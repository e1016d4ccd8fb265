//! A pod's volumes as host directories under the pod's directory: emptyDir and hostPath as they are, and the
//! volumes the agent writes (configMap, secret, downwardAPI, and projected ones of ConfigMaps, Secrets, the
//! downward API and ServiceAccount tokens) with the kubelet's atomic writer, kept up to date while the pod's
//! containers run ([`Projections::follow`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use skiff_shim::Mount;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PodRef;
use super::atomic::{self, File, Files};
use super::downward::{self, DownwardError};
use super::spec::ConfigError;
use super::subpath::SubPath;
use super::token::{self, TokenError, TokenSource};

/// The mode of the files of the volumes the agent writes when they name none, as in Kubernetes.
const DEFAULT_MODE: u32 = 0o644;

/// Volumes of a pod, prepared as host directories under the pod's directory.
pub struct Volumes {
    paths: BTreeMap<String, PathBuf>,
    /// The volumes the agent writes: mounted read-only whatever the mount says, as the kubelet mounts them,
    /// so a container can neither change them nor plant links the agent would follow.
    written: BTreeSet<String>,
    /// Where subPaths are bind-mounted for the runtime, where the agent can mount (see [`SubPath`]).
    subpaths_dir: Option<PathBuf>,
}

impl Volumes {
    /// Prepares every volume of `pod` under `pod_dir/volumes`, writing the files of those the agent writes;
    /// with them, what keeps those up to date. A ConfigMap, Secret or token that cannot be had fails it all:
    /// the containers cannot start without their files.
    pub async fn prepare(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> Result<(Self, Projections), ConfigError> {
        let mut paths = BTreeMap::new();
        let mut projected = Vec::new();
        let volumes: &[Volume] = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        for volume in volumes {
            let dir = pod_dir.join("volumes").join(&volume.name);
            let io = |e: std::io::Error| ConfigError(format!("volume \"{}\": {e}", volume.name));
            let path = if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(io)?;
                dir
            } else if let Some(sources) = sources(volume).map_err(|e| failed(&volume.name, &e))? {
                let parts = sources.into_iter().map(|source| Part { source, files: Files::new() }).collect();
                projected.push(Projected { volume: volume.name.clone(), dir: dir.clone(), parts });
                dir
            } else if let Some(source) = &volume.host_path {
                let path = PathBuf::from(&source.path);
                if matches!(source.type_.as_deref(), Some("DirectoryOrCreate")) {
                    std::fs::create_dir_all(&path).map_err(io)?;
                }
                path
            } else {
                return Err(ConfigError(format!(
                    "volume \"{}\": only emptyDir, configMap, secret, downwardAPI, projected and hostPath volumes \
                     are supported",
                    volume.name
                )));
            };
            paths.insert(volume.name.clone(), path);
        }
        let written = projected.iter().map(|p| p.volume.clone()).collect();
        let mut projections =
            Projections { who: PodRef::of(pod), service_account: service_account(pod), volumes: projected };
        projections.fill(client, pod).await?;
        let subpaths_dir = crate::network::is_root().then(|| pod_dir.join(super::subpath::SUBPATHS_DIR));
        Ok((Self { paths, written, subpaths_dir }, projections))
    }

    /// The mounts of `container` (started as `id`), and the handles of their subPaths, which must stay open
    /// while it runs.
    pub(super) fn mounts(&self, container: &Container, id: &str) -> Result<(Vec<Mount>, Vec<SubPath>), ConfigError> {
        let mut mounts = Vec::new();
        let mut subpaths = Vec::new();
        for (index, mount) in container.volume_mounts.as_deref().unwrap_or_default().iter().enumerate() {
            let base = self
                .paths
                .get(&mount.name)
                .ok_or_else(|| ConfigError(format!("volume mount \"{}\" names no volume of the pod", mount.name)))?;
            let host_path = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => {
                    let opened = SubPath::open(base, sub).and_then(|subpath| match &self.subpaths_dir {
                        Some(dir) => subpath.bind_at(&dir.join(id).join(index.to_string())),
                        None => Ok(subpath),
                    });
                    let subpath = opened.map_err(|e| {
                        ConfigError(format!(
                            "failed to prepare subPath for volumeMount \"{}\" of container \"{}\": {e}",
                            mount.name, container.name
                        ))
                    })?;
                    let path = subpath.path();
                    subpaths.push(subpath);
                    path
                }
                None => base.clone(),
            };
            mounts.push(Mount {
                host_path,
                container_path: mount.mount_path.clone(),
                read_only: mount.read_only.unwrap_or(false) || self.written.contains(&mount.name),
            });
        }
        Ok((mounts, subpaths))
    }
}

/// The ServiceAccount a pod's containers run as: admission sets it, older clients set the deprecated field.
fn service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let named = spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()));
    named.filter(|name| !name.is_empty()).unwrap_or_else(|| "default".into())
}

/// Why the files of a volume the agent writes cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A ConfigMap or Secret the volume needs does not exist, and is not optional.
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: ObjectKind, name: String },
    /// An item names a key the ConfigMap or Secret does not have, and the source is not optional.
    #[error("{kind} \"{name}\" has no key \"{key}\"")]
    NoKey { kind: ObjectKind, name: String, key: String },
    /// The API server refused to give the object (the node may read only what its pods use), or could not
    /// be reached.
    #[error("cannot get {kind} \"{name}\": {}", api_message(source))]
    Get {
        kind: ObjectKind,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Downward(#[from] DownwardError),
    /// A projection the agent does not make.
    #[error("{0} projections are not supported")]
    Unsupported(&'static str),
    /// The files could not be written under the pod's directory.
    #[error("cannot write the files: {0}")]
    Write(#[source] std::io::Error),
}

/// A volume's failure as the pod's status and events show it, in the kubelet's FailedMount words.
fn failed(volume: &str, error: &VolumeError) -> ConfigError {
    ConfigError(format!("MountVolume.SetUp failed for volume \"{volume}\" : {error}"))
}

/// What a failed API call says, for a pod's status: the Status message the server answered with, else the
/// error and its causes ("error trying to connect" alone does not say "connection refused").
pub(super) fn api_message(error: &kube::Error) -> String {
    if let kube::Error::Api(status) = error {
        return if status.message.is_empty() {
            format!("{} {}", status.code, status.reason)
        } else {
            status.message.clone()
        };
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        })
    }
}

/// The volumes of a pod the agent writes, and what each of their sources last gave: what keeps them up to
/// date, owned by the one task that does.
pub struct Projections {
    who: PodRef,
    service_account: String,
    volumes: Vec<Projected>,
}

/// A volume the agent writes: its directory holds the files of all its sources.
struct Projected {
    volume: String,
    dir: PathBuf,
    parts: Vec<Part>,
}

/// One source of a volume, and the files it last gave.
struct Part {
    source: Source,
    files: Files,
}

/// Where a volume's files come from. Each carries the volume's `defaultMode` for the files it makes.
enum Source {
    /// A ConfigMap's or a Secret's keys.
    Object(ObjectSource),
    /// Fields of the pod.
    Downward { items: Vec<DownwardAPIVolumeFile>, mode: u32 },
    /// A token of the pod's ServiceAccount, and when to replace it.
    Token { source: TokenSource, mode: u32, renew: Instant },
}

/// A ConfigMap's or a Secret's keys and their values.
type Keys = BTreeMap<String, Vec<u8>>;

struct ObjectSource {
    kind: ObjectKind,
    name: String,
    /// Which keys go to which paths; None for every key at its own name.
    items: Option<Vec<KeyToPath>>,
    optional: bool,
    mode: u32,
}

/// The sources of a volume the agent writes; None for other volumes.
fn sources(volume: &Volume) -> Result<Option<Vec<Source>>, VolumeError> {
    let mode = |default_mode: Option<i32>| atomic::mode(default_mode, DEFAULT_MODE);
    let object = |kind, name: &str, items: &Option<Vec<KeyToPath>>, optional: Option<bool>, mode| {
        let (name, items, optional) = (name.to_owned(), items.clone(), optional.unwrap_or(false));
        Source::Object(ObjectSource { kind, name, items, optional, mode })
    };
    let sources = if let Some(source) = &volume.config_map {
        vec![object(ObjectKind::ConfigMap, &source.name, &source.items, source.optional, mode(source.default_mode))]
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.as_deref().unwrap_or_default();
        vec![object(ObjectKind::Secret, name, &source.items, source.optional, mode(source.default_mode))]
    } else if let Some(source) = &volume.downward_api {
        vec![Source::Downward { items: source.items.clone().unwrap_or_default(), mode: mode(source.default_mode) }]
    } else if let Some(projected) = &volume.projected {
        let mode = mode(projected.default_mode);
        let mut sources = Vec::new();
        for projection in projected.sources.iter().flatten() {
            if let Some(source) = &projection.config_map {
                sources.push(object(ObjectKind::ConfigMap, &source.name, &source.items, source.optional, mode));
            } else if let Some(source) = &projection.secret {
                sources.push(object(ObjectKind::Secret, &source.name, &source.items, source.optional, mode));
            } else if let Some(source) = &projection.downward_api {
                sources.push(Source::Downward { items: source.items.clone().unwrap_or_default(), mode });
            } else if let Some(source) = &projection.service_account_token {
                // Due at once: the first token is asked for when the volume is first written.
                sources.push(Source::Token { source: TokenSource::of(source), mode, renew: Instant::now() });
            } else if projection.cluster_trust_bundle.is_some() {
                return Err(VolumeError::Unsupported("clusterTrustBundle"));
            }
        }
        sources
    } else {
        return Ok(None);
    };
    Ok(Some(sources))
}

impl ObjectSource {
    async fn fetch(&self, client: &kube::Client, namespace: &str) -> Result<Files, VolumeError> {
        let found = match self.kind {
            ObjectKind::ConfigMap => {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                maps.get_opt(&self.name).await.map(|map| map.map(config_map_files))
            }
            ObjectKind::Secret => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
                secrets.get_opt(&self.name).await.map(|secret| secret.map(secret_files))
            }
        };
        let found = found.map_err(|source| VolumeError::Get { kind: self.kind, name: self.name.clone(), source })?;
        self.files(found)
    }

    /// The files of the object's `keys` (None: it does not exist), as `items` select them.
    fn files(&self, keys: Option<Keys>) -> Result<Files, VolumeError> {
        let Some(keys) = keys else {
            if self.optional {
                return Ok(Files::new());
            }
            return Err(VolumeError::NotFound { kind: self.kind, name: self.name.clone() });
        };
        let Some(items) = &self.items else {
            return Ok(keys.into_iter().map(|(key, data)| (key, File { data, mode: self.mode })).collect());
        };
        let mut files = Files::new();
        for item in items {
            match keys.get(&item.key) {
                Some(data) => {
                    files.insert(item.path.clone(), File::with_mode(data.clone(), item.mode, self.mode));
                }
                None if self.optional => {}
                None => {
                    let (kind, name, key) = (self.kind, self.name.clone(), item.key.clone());
                    return Err(VolumeError::NoKey { kind, name, key });
                }
            }
        }
        Ok(files)
    }
}

fn config_map_files(map: ConfigMap) -> Keys {
    let mut files: Keys = map.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    files.extend(map.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    files
}

pub(super) fn secret_files(secret: Secret) -> Keys {
    let mut files: Keys = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    files.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    files
}

/// A token for `source`, as the file it is written to, and when to replace it.
async fn token_files(
    client: &kube::Client,
    who: &PodRef,
    service_account: &str,
    source: &TokenSource,
    mode: u32,
) -> Result<(Files, Instant), TokenError> {
    let issued = token::request(client, who, service_account, source).await?;
    let jitter = Duration::from_secs_f64(rand::random::<f64>() * token::MAX_JITTER.as_secs_f64());
    let wait = token::renew_in(issued.expires, issued.lifetime_seconds, jiff::Timestamp::now(), jitter);
    tracing::debug!(%service_account, path = %source.path, expires = %issued.expires, renew_in = ?wait, "token issued");
    let files = Files::from([(source.path.clone(), File { data: issued.token.into_bytes(), mode })]);
    Ok((files, Instant::now() + wait))
}

impl Projected {
    /// Writes the files of all sources; of two with one path, the later source's wins, as in the kubelet.
    fn write(&self) -> Result<bool, VolumeError> {
        let files: Files = self.parts.iter().flat_map(|part| part.files.clone()).collect();
        atomic::write(&self.dir, &files).map_err(VolumeError::Write)
    }
}

impl Projections {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// Gets every source's files and writes every volume.
    async fn fill(&mut self, client: &kube::Client, pod: &Pod) -> Result<(), ConfigError> {
        let Projections { who, service_account, volumes } = self;
        for volume in volumes.iter_mut() {
            for part in &mut volume.parts {
                let files = match &mut part.source {
                    Source::Object(object) => object.fetch(client, &who.namespace).await,
                    Source::Downward { items, mode } => downward::volume_files(pod, items, *mode).map_err(Into::into),
                    Source::Token { source, mode, renew } => {
                        match token_files(client, who, service_account, source, *mode).await {
                            Ok((files, at)) => {
                                *renew = at;
                                Ok(files)
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                };
                part.files = files.map_err(|e| failed(&volume.volume, &e))?;
            }
            volume.write().map_err(|e| failed(&volume.volume, &e))?;
        }
        Ok(())
    }

    /// Keeps the volumes up to date until `stop`: ConfigMaps and Secrets through a watch each (the
    /// kubelet's Watch strategy), the downward API from `pod`'s updates, tokens replaced when due. A volume
    /// is rewritten atomically when its files change. A deleted object, or one that cannot be read, leaves
    /// the files as they were, and a token that cannot be renewed stays until a new one is had, as the
    /// kubelet leaves them.
    pub async fn follow(mut self, client: kube::Client, mut pod: watch::Receiver<Pod>, stop: CancellationToken) {
        let mut objects = futures::stream::select_all(self.watches(&client));
        let downward = self.parts().any(|part| matches!(part.source, Source::Downward { .. }));
        loop {
            let renew = self.next_renewal();
            tokio::select! {
                _ = stop.cancelled() => return,
                Some((volume, part, keys)) = objects.next() => {
                    let files = match &self.volumes[volume].parts[part].source {
                        Source::Object(object) => object.files(Some(keys)),
                        _ => continue,
                    };
                    self.update(volume, part, files);
                }
                changed = pod.changed(), if downward => {
                    if changed.is_err() {
                        // The worker is gone, and `stop` with it.
                        return;
                    }
                    let pod = pod.borrow_and_update().clone();
                    self.pod_changed(&pod);
                }
                _ = tokio::time::sleep_until(renew.unwrap_or_else(Instant::now)), if renew.is_some() => {
                    // A request to an API server that does not answer must not hold up the pod's end.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.renew_tokens(&client) => {}
                    }
                }
            }
        }
    }

    fn parts(&self) -> impl Iterator<Item = &Part> {
        self.volumes.iter().flat_map(|volume| volume.parts.iter())
    }

    /// A watch of each ConfigMap and Secret source's object, as (volume, part, the object's keys).
    fn watches(&self, client: &kube::Client) -> Vec<BoxStream<'static, (usize, usize, Keys)>> {
        let namespace = self.who.namespace.as_str();
        let mut watches = Vec::new();
        for (v, volume) in self.volumes.iter().enumerate() {
            for (p, part) in volume.parts.iter().enumerate() {
                let Source::Object(object) = &part.source else { continue };
                let config = watcher::Config::default().fields(&format!("metadata.name={}", object.name));
                // Watch errors are retried with back-off inside the stream; they change no files.
                let keys = match object.kind {
                    ObjectKind::ConfigMap => watcher(Api::<ConfigMap>::namespaced(client.clone(), namespace), config)
                        .default_backoff()
                        .applied_objects()
                        .filter_map(|map| futures::future::ready(map.ok().map(config_map_files)))
                        .boxed(),
                    ObjectKind::Secret => watcher(Api::<Secret>::namespaced(client.clone(), namespace), config)
                        .default_backoff()
                        .applied_objects()
                        .filter_map(|secret| futures::future::ready(secret.ok().map(secret_files)))
                        .boxed(),
                };
                watches.push(keys.map(move |keys| (v, p, keys)).boxed());
            }
        }
        watches
    }

    /// Recomputes the downward API sources from the pod's newest version (labels and annotations change).
    fn pod_changed(&mut self, pod: &Pod) {
        for v in 0..self.volumes.len() {
            for p in 0..self.volumes[v].parts.len() {
                if let Source::Downward { items, mode } = &self.volumes[v].parts[p].source {
                    let files = downward::volume_files(pod, items, *mode).map_err(Into::into);
                    self.update(v, p, files);
                }
            }
        }
    }

    /// When the first token is due; None without tokens.
    fn next_renewal(&self) -> Option<Instant> {
        self.parts()
            .filter_map(|part| match part.source {
                Source::Token { renew, .. } => Some(renew),
                _ => None,
            })
            .min()
    }

    /// Replaces the tokens that are due. One that cannot be had is asked for again after the kubelet's
    /// sync interval, while the old one stays in the volume.
    async fn renew_tokens(&mut self, client: &kube::Client) {
        let now = Instant::now();
        for v in 0..self.volumes.len() {
            for p in 0..self.volumes[v].parts.len() {
                let Source::Token { source, mode, renew } = &self.volumes[v].parts[p].source else { continue };
                if *renew > now {
                    continue;
                }
                let got = token_files(client, &self.who, &self.service_account, source, *mode).await;
                let next = match got {
                    Ok((files, at)) => {
                        self.update(v, p, Ok(files));
                        at
                    }
                    Err(e) => {
                        let volume = &self.volumes[v].volume;
                        tracing::warn!(%volume, error = %e, "cannot renew the token; the current one stays");
                        now + token::RENEW_INTERVAL
                    }
                };
                if let Source::Token { renew, .. } = &mut self.volumes[v].parts[p].source {
                    *renew = next;
                }
            }
        }
    }

    /// Takes a source's new files, rewriting its volume when they differ from the last.
    fn update(&mut self, v: usize, p: usize, files: Result<Files, VolumeError>) {
        let volume = &mut self.volumes[v];
        let files = match files {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(volume = %volume.volume, error = %e, "cannot update the volume");
                return;
            }
        };
        if volume.parts[p].files == files {
            return;
        }
        volume.parts[p].files = files;
        match volume.write() {
            Ok(_) => tracing::debug!(volume = %volume.volume, "volume updated"),
            Err(e) => tracing::warn!(volume = %volume.volume, error = %e, "cannot update the volume"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    /// The volume of the ServiceAccount admission, as it adds it to every pod.
    fn api_access() -> Volume {
        serde_json::from_value(serde_json::json!({"name": "kube-api-access-x7k2p", "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                "fieldPath": "metadata.namespace"}}]}}
        ]}}))
        .unwrap()
    }

    fn keys(pairs: &[(&str, &str)]) -> Keys {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    /// Fills a volume's parts as the API would answer: the object's keys, the pod's fields, a token.
    fn fill(volume: &Volume, dir: &Path, pod: &Pod, object: Option<Keys>) -> Projected {
        let sources = sources(volume).unwrap().expect("a volume the agent writes");
        let parts = sources
            .into_iter()
            .map(|source| {
                let files = match &source {
                    Source::Object(o) => o.files(object.clone()).unwrap(),
                    Source::Downward { items, mode } => downward::volume_files(pod, items, *mode).unwrap(),
                    Source::Token { source, mode, .. } => {
                        Files::from([(source.path.clone(), File { data: b"eyJ.token".to_vec(), mode: *mode })])
                    }
                };
                Part { source, files }
            })
            .collect();
        Projected { volume: volume.name.clone(), dir: dir.to_path_buf(), parts }
    }

    fn read(dir: &Path, name: &str) -> (String, u32) {
        use std::os::unix::fs::PermissionsExt;
        let contents = std::fs::read_to_string(dir.join(name)).unwrap();
        (contents, std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o7777)
    }

    #[test]
    fn the_service_account_volume_holds_token_ca_and_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kube-api-access-x7k2p");
        let pod = pod(serde_json::json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1"}}));
        let volume = fill(&api_access(), &dir, &pod, Some(keys(&[("ca.crt", "PEM"), ("other", "x")])));
        let Source::Token { source, .. } = &volume.parts[0].source else { panic!("the token comes first") };
        assert_eq!(source, &TokenSource { audience: None, expiration_seconds: 3607, path: "token".into() });
        assert!(volume.write().unwrap());
        assert_eq!(read(&dir, "token"), ("eyJ.token".into(), 0o644));
        assert_eq!(read(&dir, "ca.crt"), ("PEM".into(), 0o644));
        assert_eq!(read(&dir, "namespace"), ("shop".into(), 0o644));
        assert!(!dir.join("other").exists(), "only the items' keys");
        assert!(!volume.write().unwrap(), "nothing changed");
        assert_eq!(std::fs::read_link(dir.join("token")).unwrap(), Path::new("..data/token"));
    }

    #[test]
    fn modes_come_from_items_then_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let volume: Volume = serde_json::from_value(serde_json::json!({"name": "cfg", "configMap": {
            "name": "settings", "defaultMode": 0o440, "items": [{"key": "a", "path": "x/a", "mode": 0o400}, {"key": "b", "path": "b"}]}}))
        .unwrap();
        let written = fill(&volume, tmp.path(), &Pod::default(), Some(keys(&[("a", "1"), ("b", "2")])));
        written.write().unwrap();
        assert_eq!(read(tmp.path(), "x/a"), ("1".into(), 0o400));
        assert_eq!(read(tmp.path(), "b"), ("2".into(), 0o440));
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let source = |optional: bool, items: Option<Vec<KeyToPath>>| ObjectSource {
            kind: ObjectKind::ConfigMap,
            name: "kube-root-ca.crt".into(),
            items,
            optional,
            mode: DEFAULT_MODE,
        };
        let error = source(false, None).files(None).unwrap_err();
        let message = failed("kube-api-access-x7k2p", &error).0;
        assert_eq!(
            message,
            "MountVolume.SetUp failed for volume \"kube-api-access-x7k2p\" : configmap \"kube-root-ca.crt\" not found"
        );
        assert_eq!(source(true, None).files(None).unwrap(), Files::new());
        let items = Some(vec![KeyToPath { key: "ca.crt".into(), path: "ca.crt".into(), mode: None }]);
        let error = source(false, items.clone()).files(Some(keys(&[("other", "x")]))).unwrap_err();
        assert_eq!(error.to_string(), "configmap \"kube-root-ca.crt\" has no key \"ca.crt\"");
        assert_eq!(source(true, items).files(Some(keys(&[("other", "x")]))).unwrap(), Files::new());
    }

    #[test]
    fn token_failures_read_as_the_kubelet_reports_them() {
        let status = kube::core::Status::failure("serviceaccounts \"robot\" not found", "NotFound").with_code(404);
        let error = VolumeError::Token(TokenError::Request(kube::Error::Api(Box::new(status))));
        assert_eq!(
            failed("kube-api-access-x7k2p", &error).0,
            "MountVolume.SetUp failed for volume \"kube-api-access-x7k2p\" : failed to fetch token: serviceaccounts \
             \"robot\" not found"
        );
    }

    #[test]
    fn downward_updates_rewrite_only_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let volume: Volume = serde_json::from_value(serde_json::json!({"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}))
        .unwrap();
        let labelled = |value: &str| pod(serde_json::json!({"metadata": {"name": "p", "labels": {"app": value}}}));
        let written = fill(&volume, tmp.path(), &labelled("a"), None);
        written.write().unwrap();
        let who = PodRef { namespace: "default".into(), name: "p".into(), uid: "u".into() };
        let mut projections = Projections { who, service_account: "default".into(), volumes: vec![written] };
        let data = || std::fs::read_link(tmp.path().join("..data")).unwrap();
        let before = data();
        projections.pod_changed(&labelled("a"));
        assert_eq!(data(), before, "the same labels: no new files");
        projections.pod_changed(&labelled("b"));
        assert_eq!(std::fs::read_to_string(tmp.path().join("labels")).unwrap(), "app=\"b\"");
        assert_eq!(projections.next_renewal(), None, "no tokens, nothing to renew");
    }

    #[test]
    fn unsupported_projections_and_plain_volumes() {
        let volume = |json| serde_json::from_value::<Volume>(json).unwrap();
        let bundle = volume(serde_json::json!({"name": "b", "projected": {"sources": [
            {"clusterTrustBundle": {"path": "ca.pem", "signerName": "example.com/x"}}]}}));
        assert_eq!(sources(&bundle).err().unwrap().to_string(), "clusterTrustBundle projections are not supported");
        assert!(sources(&volume(serde_json::json!({"name": "e", "emptyDir": {}}))).unwrap().is_none());
        let account = |json| service_account(&pod(json));
        assert_eq!(account(serde_json::json!({"spec": {"containers": [], "serviceAccountName": "robot"}})), "robot");
        assert_eq!(account(serde_json::json!({"spec": {"containers": [], "serviceAccount": "old"}})), "old");
        assert_eq!(account(serde_json::json!({"spec": {"containers": []}})), "default");
    }
}
