//! A pod's volumes as host directories under the pod's directory: emptyDir (a tmpfs with `medium: Memory`) and
//! hostPath as they are, and the volumes the agent writes (configMap, secret, downwardAPI, and projected ones
//! of ConfigMaps, Secrets, the downward API and ServiceAccount tokens) with the kubelet's atomic writer, kept
//! up to date while the pod's containers run ([`Projections::follow`]); and the pod's directory torn down,
//! mounts first, once the pod is gone ([`tear_down`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, EmptyDirVolumeSource, KeyToPath, Pod, Secret, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use skiff_shim::Mount;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PodRef;
use super::atomic::{self, File, Files, Owner};
use super::downward::{self, DownwardError};
use super::spec::ConfigError;
use super::subpath::SubPath;
use super::token::{self, TokenError, TokenSource};

/// The mode of the files of the volumes the agent writes when they name none, as in Kubernetes.
const DEFAULT_MODE: u32 = 0o644;

/// The mode of a Secret's files when the volume names none: stricter than Kubernetes' 0644, readable by the
/// file's owner alone (the pod's user when all its containers run as one) and, with an `fsGroup`, its group.
const SECRET_MODE: u32 = 0o400;

/// A token's mode when the pod's user or `fsGroup` owns it, whatever the volume says, as the kubelet makes it.
const OWNED_TOKEN_MODE: u32 = 0o600;

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
        // Files can be given away only by root; an agent run by a user writes them as its own.
        let owner = if crate::network::is_root() { owner(pod) } else { Owner::default() };
        let volumes: &[Volume] = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        for volume in volumes {
            let dir = volume_dir(pod_dir, &volume.name);
            let io = |e: std::io::Error| ConfigError(format!("volume \"{}\": {e}", volume.name));
            let path = if let Some(source) = &volume.empty_dir {
                empty_dir(&dir, source, pod).map_err(io)?;
                dir
            } else if let Some(sources) = sources(volume, owner).map_err(|e| failed(&volume.name, &e))? {
                let parts = sources.into_iter().map(|source| Part { source, files: Files::new() }).collect();
                projected.push(Projected { volume: volume.name.clone(), dir: dir.clone(), owner, parts });
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

/// Who the files of `pod`'s written volumes belong to: its user when every container runs as one (the
/// kubelet's `FsUserFrom`; the kubelet gives that user the token alone, Skiff every file, so that a
/// Secret's 0400 is readable by the pod's own user as Kubernetes' 0644 is), and its `fsGroup`.
fn owner(pod: &Pod) -> Owner {
    let Some(spec) = pod.spec.as_ref() else { return Owner::default() };
    let pod_context = spec.security_context.as_ref();
    let user =
        |context: Option<&SecurityContext>| context.and_then(|c| c.run_as_user).or_else(|| pod_context?.run_as_user);
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    let users: Vec<Option<i64>> = containers
        .map(|c| user(c.security_context.as_ref()))
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| user(c.security_context.as_ref())))
        .collect();
    let uid = match users.split_first() {
        Some((Some(first), rest)) if rest.iter().all(|user| user == &Some(*first)) => u32::try_from(*first).ok(),
        _ => None,
    };
    let gid = pod_context.and_then(|c| c.fs_group).and_then(|group| u32::try_from(group).ok());
    Owner { uid, gid }
}

/// The ServiceAccount a pod's containers run as: admission sets it, older clients set the deprecated field.
fn service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let named = spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()));
    named.filter(|name| !name.is_empty()).unwrap_or_else(|| "default".into())
}

/// Where a pod's volume lives on the host, under the pod's directory.
pub(super) fn volume_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes").join(volume)
}

/// The emptyDir medium backed by memory; the other the agent makes is the default, "" (the node's disk).
const MEMORY: &str = "Memory";

/// The mode of an emptyDir's directory, the kubelet's: containers of any user may write it.
const EMPTY_DIR_MODE: u32 = 0o777;

/// Makes the emptyDir at `dir`: a directory as the kubelet makes it, with `medium: Memory` a tmpfs mounted on
/// it where the agent can mount. Made again for a retried or restarted worker, a tmpfs mounted before is kept
/// with what the pod's containers wrote in it.
fn empty_dir(dir: &Path, source: &EmptyDirVolumeSource, pod: &Pod) -> io::Result<()> {
    let medium = source.medium.as_deref().unwrap_or_default();
    if !medium.is_empty() && medium != MEMORY {
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("unknown storage medium \"{medium}\"")));
    }
    let tmpfs = medium == MEMORY && can_mount();
    std::fs::create_dir_all(dir)?;
    if tmpfs && mount_points(dir)?.iter().any(|point| point == dir) {
        return Ok(());
    }
    // Set, not asked of create_dir_all: the agent's umask would take write access from other users.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(EMPTY_DIR_MODE))?;
    if tmpfs {
        return mount_tmpfs(
            dir,
            memory_size(pod, source.size_limit.as_ref(), crate::registration::allocatable_memory()).bytes,
        );
    }
    if medium == MEMORY {
        static ON_DISK: std::sync::Once = std::sync::Once::new();
        ON_DISK.call_once(|| {
            tracing::warn!(
                "the agent does not run as root and cannot mount a tmpfs: emptyDir volumes with medium Memory are \
                 directories on disk, and their pods are evicted when one outgrows its size"
            )
        });
    }
    Ok(())
}

/// Whether the agent can mount: a memory-backed emptyDir is a tmpfs only then.
fn can_mount() -> bool {
    crate::network::is_root()
}

/// Mounts a tmpfs of `bytes` at `dir`. Pages written to a tmpfs are charged to the memory cgroup of the
/// process that writes them, so a container's writes count against its own memory limit with no more ado;
/// the size bounds what the pod's wasm guests, which write from the agent, can hold there.
fn mount_tmpfs(dir: &Path, bytes: u64) -> io::Result<()> {
    let target = c_path(dir)?;
    // The kubelet's only option is the size; the root directory keeps tmpfs' default mode, 1777, as on a
    // kubelet's node. No devices and no set-user-ID programs: nothing a pod writes there needs them.
    let options = CString::new(format!("size={bytes}")).map_err(io::Error::other)?;
    // SAFETY: every string is NUL-terminated and outlives the call; tmpfs reads `options` as its option string.
    let mounted = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID,
            options.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A size an emptyDir is held to, with the text the eviction message quotes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SizeLimit {
    pub bytes: u64,
    pub text: String,
}

impl SizeLimit {
    /// A volume's `sizeLimit`; None unless positive, as the kubelet ignores others. A fraction of a byte
    /// rounds up, as a Quantity's value does.
    fn of(quantity: &Quantity) -> Option<Self> {
        let bytes = skiff_api::validation::parse_quantity(&quantity.0).filter(|bytes| *bytes > 0.0)?;
        Some(SizeLimit { bytes: bytes.ceil() as u64, text: quantity.0.clone() })
    }

    /// A size the agent chose, written as Kubernetes writes a byte count: with the largest binary suffix that
    /// divides it (`96Mi`), else as a plain number.
    fn bytes(bytes: u64) -> Self {
        let mut text = bytes.to_string();
        for (shift, suffix) in [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
            if bytes != 0 && bytes.trailing_zeros() >= shift {
                text = format!("{}{suffix}", bytes >> shift);
                break;
            }
        }
        SizeLimit { bytes, text }
    }
}

/// The size of a memory-backed emptyDir, as the kubelet's `calculateEmptyDirMemorySize`: the node's
/// allocatable memory, or the pod's memory limit where it sets one no larger, or the volume's `sizeLimit`
/// where that is no larger still. A pod cannot hold more in memory than that anyway.
pub(super) fn memory_size(pod: &Pod, size_limit: Option<&Quantity>, node_memory: u64) -> SizeLimit {
    let mut size = SizeLimit::bytes(node_memory);
    if let Some(limit) = pod_memory_limit(pod).filter(|limit| (1..=size.bytes).contains(limit)) {
        size = SizeLimit::bytes(limit);
    }
    if let Some(limit) = size_limit.and_then(SizeLimit::of).filter(|limit| limit.bytes <= size.bytes) {
        size = limit;
    }
    size
}

/// The pod's memory limit as the kubelet sets it on the pod's cgroup: only when every container declares
/// one, the larger of the app containers' sum and the largest init container's (those run one at a time,
/// before the others).
fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |container: &Container| super::spec::limits(container).memory_bytes;
    let containers: u64 = spec.containers.iter().map(limit).sum::<Option<u64>>()?;
    let init: Vec<u64> = spec.init_containers.iter().flatten().map(limit).collect::<Option<_>>()?;
    Some(init.into_iter().fold(containers, u64::max))
}

/// The emptyDirs of `pod` whose use the agent measures, each with the size it may reach: a disk-backed one
/// with a `sizeLimit`, as the kubelet's eviction manager measures them, and a memory-backed one on disk
/// because the agent cannot mount, held to the size its tmpfs would have had. A tmpfs is not measured: the
/// kernel refuses writes past its size, which is never above the volume's `sizeLimit`.
pub(super) fn measured(pod: &Pod) -> Vec<(String, SizeLimit)> {
    limits(pod, crate::registration::allocatable_memory(), can_mount())
}

/// [`measured`] on a node of `node_memory` where the agent can mount or not.
fn limits(pod: &Pod, node_memory: u64, can_mount: bool) -> Vec<(String, SizeLimit)> {
    let volumes = pod.spec.as_ref().and_then(|spec| spec.volumes.as_deref()).unwrap_or_default();
    let limited = volumes.iter().filter_map(|volume| {
        let source = volume.empty_dir.as_ref()?;
        let limit = match source.medium.as_deref() {
            Some(MEMORY) if can_mount => None,
            Some(MEMORY) => Some(memory_size(pod, source.size_limit.as_ref(), node_memory)),
            _ => source.size_limit.as_ref().and_then(SizeLimit::of),
        };
        Some((volume.name.clone(), limit?))
    });
    limited.collect()
}

/// How often a pod's directory that could not be torn down is tried again.
const TEAR_DOWN_RETRY: Duration = Duration::from_secs(5);

/// Removes a pod's directory (its volumes, subPath mounts and logs) once its containers are gone: every mount
/// under it first, then the files. A mount that cannot be undone is logged and tried again until it is, or
/// until `cancel` (the agent stops; its next run, seeing the pod again, does it): left behind it would hold
/// the memory or the disk of a pod that is gone, and removing the files beneath it could reach through a
/// subPath's bind mount to a hostPath's.
pub(super) async fn tear_down(pod_dir: &Path, cancel: &CancellationToken) {
    loop {
        let dir = pod_dir.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || remove_pod_dir(&dir)).await.map_err(io::Error::other);
        let Err(error) = removed.and_then(|removed| removed) else { return };
        tracing::warn!(dir = %pod_dir.display(), %error, "cannot tear down the pod's directory; trying again");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TEAR_DOWN_RETRY) => {}
        }
    }
}

/// Unmounts everything under `pod_dir`, deepest first, lazily (a process still holding a mount keeps only its
/// own view of it), then removes the directory, but only once no mount is left beneath it.
pub(super) fn remove_pod_dir(pod_dir: &Path) -> io::Result<()> {
    for point in mount_points(pod_dir)?.iter().rev() {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c_path(point)?.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = io::Error::last_os_error();
            // EINVAL: not a mount point (any more).
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::new(error.kind(), format!("cannot unmount {}: {error}", point.display())));
            }
        }
    }
    if let Some(point) = mount_points(pod_dir)?.first() {
        return Err(io::Error::other(format!("{} is still mounted", point.display())));
    }
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// The mount points at or under `dir` in the agent's mount namespace, sorted (a parent before what is
/// mounted beneath it).
fn mount_points(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut points = skiff_shim::mount_table::mount_points_below(&[dir])?;
    points.sort();
    points.dedup();
    Ok(points)
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
    owner: Owner,
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

/// The sources of a volume the agent writes, whose files go to `owner`; None for other volumes.
fn sources(volume: &Volume, owner: Owner) -> Result<Option<Vec<Source>>, VolumeError> {
    let mode = |default_mode: Option<i32>| atomic::mode(default_mode, DEFAULT_MODE);
    let secret_mode = |default_mode: Option<i32>| atomic::mode(default_mode, SECRET_MODE);
    let token_mode = |mode: u32| if owner == Owner::default() { mode } else { OWNED_TOKEN_MODE };
    let object = |kind, name: &str, items: &Option<Vec<KeyToPath>>, optional: Option<bool>, mode| {
        let (name, items, optional) = (name.to_owned(), items.clone(), optional.unwrap_or(false));
        Source::Object(ObjectSource { kind, name, items, optional, mode })
    };
    let sources = if let Some(source) = &volume.config_map {
        vec![object(ObjectKind::ConfigMap, &source.name, &source.items, source.optional, mode(source.default_mode))]
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.as_deref().unwrap_or_default();
        vec![object(ObjectKind::Secret, name, &source.items, source.optional, secret_mode(source.default_mode))]
    } else if let Some(source) = &volume.downward_api {
        vec![Source::Downward { items: source.items.clone().unwrap_or_default(), mode: mode(source.default_mode) }]
    } else if let Some(projected) = &volume.projected {
        let (mode, secret_mode) = (mode(projected.default_mode), secret_mode(projected.default_mode));
        let mut sources = Vec::new();
        for projection in projected.sources.iter().flatten() {
            if let Some(source) = &projection.config_map {
                sources.push(object(ObjectKind::ConfigMap, &source.name, &source.items, source.optional, mode));
            } else if let Some(source) = &projection.secret {
                sources.push(object(ObjectKind::Secret, &source.name, &source.items, source.optional, secret_mode));
            } else if let Some(source) = &projection.downward_api {
                sources.push(Source::Downward { items: source.items.clone().unwrap_or_default(), mode });
            } else if let Some(source) = &projection.service_account_token {
                // Due at once: the first token is asked for when the volume is first written.
                let (source, mode) = (TokenSource::of(source), token_mode(mode));
                sources.push(Source::Token { source, mode, renew: Instant::now() });
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
        atomic::write(&self.dir, &files, self.owner).map_err(VolumeError::Write)
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
        let owner = owner(pod);
        let sources = sources(volume, owner).unwrap().expect("a volume the agent writes");
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
        Projected { volume: volume.name.clone(), dir: dir.to_path_buf(), owner, parts }
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
    fn secrets_are_for_the_pods_user_and_fs_group_alone() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let secret: Volume =
            serde_json::from_value(serde_json::json!({"name": "creds", "secret": {"secretName": "creds"}})).unwrap();
        let root = fill(&secret, &tmp.path().join("root"), &Pod::default(), Some(keys(&[("password", "p")])));
        root.write().unwrap();
        assert_eq!(read(&tmp.path().join("root"), "password"), ("p".into(), 0o400), "Skiff's default, not 0644");

        let user_and_group = pod(serde_json::json!({"metadata": {"namespace": "shop"}, "spec": {
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "initContainers": [{"name": "init", "securityContext": {"runAsUser": 1000}}],
            "containers": [{"name": "app"}]}}));
        let dir = tmp.path().join("owned");
        fill(&secret, &dir, &user_and_group, Some(keys(&[("password", "p")]))).write().unwrap();
        let file = std::fs::metadata(dir.join("password")).unwrap();
        assert_eq!((file.uid(), file.gid(), file.mode() & 0o7777), (1000, 2000, 0o440));
        let dir = tmp.path().join("api");
        fill(&api_access(), &dir, &user_and_group, Some(keys(&[("ca.crt", "PEM")]))).write().unwrap();
        assert_eq!(read(&dir, "token").1, 0o640, "the kubelet's 0600 for an owned token, and the group's read");
        assert_eq!(read(&dir, "ca.crt").1, 0o644, "the volume's mode where it names one");
    }

    #[test]
    fn the_pods_user_is_the_one_all_its_containers_run_as() {
        let owner = |json| owner(&pod(json));
        let spec = |pod_user: serde_json::Value, app_user: serde_json::Value| {
            serde_json::json!({"spec": {"securityContext": {"runAsUser": pod_user},
                "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": app_user}}]}})
        };
        assert_eq!(owner(spec(1000.into(), 1000.into())), Owner { uid: Some(1000), gid: None });
        assert_eq!(owner(spec(1000.into(), 1001.into())), Owner::default(), "two users");
        assert_eq!(owner(spec(serde_json::Value::Null, 1000.into())), Owner::default(), "one from its image");
        let group = serde_json::json!({"spec": {"securityContext": {"fsGroup": 3}, "containers": [{"name": "a"}]}});
        assert_eq!(owner(group), Owner { uid: None, gid: Some(3) });
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

    const MIB: u64 = 1 << 20;

    /// A pod of `containers` (name, memory limit), `init` likewise, and a memory-backed emptyDir `cache`
    /// with `size_limit`.
    fn memory_pod(containers: &[Option<&str>], init: &[Option<&str>], size_limit: Option<&str>) -> Pod {
        let container = |(i, limit): (usize, &Option<&str>)| match limit {
            Some(limit) => serde_json::json!({"name": format!("c{i}"), "resources": {"limits": {"memory": limit}}}),
            None => serde_json::json!({"name": format!("c{i}")}),
        };
        let mut empty_dir = serde_json::json!({"medium": "Memory"});
        if let Some(size_limit) = size_limit {
            empty_dir["sizeLimit"] = serde_json::json!(size_limit);
        }
        pod(serde_json::json!({"metadata": {"name": "p", "uid": "u"}, "spec": {
            "containers": containers.iter().enumerate().map(container).collect::<Vec<_>>(),
            "initContainers": init.iter().enumerate().map(container).collect::<Vec<_>>(),
            "volumes": [{"name": "cache", "emptyDir": empty_dir}]}}))
    }

    fn size(pod: &Pod, node_memory: u64) -> SizeLimit {
        let source = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].empty_dir.clone().unwrap();
        memory_size(pod, source.size_limit.as_ref(), node_memory)
    }

    #[test]
    fn a_memory_volume_is_as_large_as_the_pod_may_hold() {
        let node = 4096 * MIB;
        let sized = |bytes: u64, text: &str| SizeLimit { bytes, text: text.into() };
        assert_eq!(size(&memory_pod(&[None], &[], None), node), sized(node, "4Gi"), "no limits: the node's memory");
        let limited = memory_pod(&[Some("64Mi"), Some("32Mi")], &[], None);
        assert_eq!(size(&limited, node), sized(96 * MIB, "96Mi"), "the containers' limits added up");
        let one_unlimited = memory_pod(&[Some("64Mi"), None], &[], None);
        assert_eq!(size(&one_unlimited, node), sized(node, "4Gi"), "a container without a limit: no pod limit");
        let init_unlimited = memory_pod(&[Some("64Mi")], &[None], None);
        assert_eq!(size(&init_unlimited, node), sized(node, "4Gi"), "init containers count too");
        let big_init = memory_pod(&[Some("64Mi")], &[Some("128Mi")], None);
        assert_eq!(size(&big_init, node), sized(128 * MIB, "128Mi"), "an init container runs alone");
        let small = memory_pod(&[Some("64Mi")], &[], Some("16Mi"));
        assert_eq!(size(&small, node), sized(16 * MIB, "16Mi"), "a smaller sizeLimit wins");
        let large = memory_pod(&[Some("64Mi")], &[], Some("1Gi"));
        assert_eq!(size(&large, node), sized(64 * MIB, "64Mi"), "no more than the pod may hold");
        let huge = memory_pod(&[Some("8Gi")], &[], Some("6Gi"));
        assert_eq!(size(&huge, node), sized(node, "4Gi"), "no more than the node has");
        let odd = memory_pod(&[None], &[], Some("1.5M"));
        assert_eq!(size(&odd, node), sized(1_500_000, "1.5M"), "the sizeLimit as written");
        assert_eq!(SizeLimit::bytes(1_500_001).text, "1500001");
        assert_eq!(size(&memory_pod(&[None], &[], Some("0")), node).bytes, node, "a zero sizeLimit is no limit");
    }

    #[test]
    fn measured_volumes_are_those_no_tmpfs_holds() {
        let node = 4096 * MIB;
        let pod = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}],
            "volumes": [
                {"name": "free", "emptyDir": {}},
                {"name": "disk", "emptyDir": {"sizeLimit": "1Mi"}},
                {"name": "memory", "emptyDir": {"medium": "Memory"}},
                {"name": "config", "configMap": {"name": "settings"}}]}}));
        let named = |can_mount| -> Vec<(String, u64)> {
            limits(&pod, node, can_mount).into_iter().map(|(name, size)| (name, size.bytes)).collect()
        };
        assert_eq!(named(true), [("disk".to_string(), MIB)], "a tmpfs is held to its size by the kernel");
        assert_eq!(
            named(false),
            [("disk".to_string(), MIB), ("memory".to_string(), 64 * MIB)],
            "on disk, a memory volume is held to the pod's memory"
        );
    }

    #[test]
    fn a_memory_volume_is_a_tmpfs_mounted_once_and_torn_down() {
        assert!(can_mount(), "the tmpfs test mounts: run it as root");
        let tmp = tempfile::tempdir().unwrap();
        let pod_dir = tmp.path().join("pod");
        let dir = volume_dir(&pod_dir, "cache");
        let pod = memory_pod(&[Some("64Mi")], &[], Some("8Mi"));
        let source = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].empty_dir.clone().unwrap();
        empty_dir(&dir, &source, &pod).unwrap();
        std::fs::write(dir.join("kept"), "x").unwrap();
        empty_dir(&dir, &source, &pod).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("kept")).unwrap(), "x", "made again, the same tmpfs");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours: Vec<&str> = mountinfo.lines().filter(|line| line.contains(dir.to_str().unwrap())).collect();
        assert_eq!(ours.len(), 1, "mounted once: {ours:?}");
        assert!(ours[0].contains(" - tmpfs ") && ours[0].contains("size=8192k"), "{}", ours[0]);
        assert!(ours[0].contains("nosuid") && ours[0].contains("nodev"), "{}", ours[0]);

        remove_pod_dir(&pod_dir).unwrap();
        assert!(!pod_dir.exists());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(pod_dir.to_str().unwrap()), "no mount left under the pod's directory");
        remove_pod_dir(&pod_dir).unwrap();
    }

    #[test]
    fn a_disk_volume_is_a_directory_any_user_may_write() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = volume_dir(tmp.path(), "scratch");
        let pod = Pod::default();
        empty_dir(&dir, &EmptyDirVolumeSource::default(), &pod).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, EMPTY_DIR_MODE);
        let huge = EmptyDirVolumeSource { medium: Some("HugePages".into()), ..Default::default() };
        let error = empty_dir(&volume_dir(tmp.path(), "pages"), &huge, &pod).unwrap_err();
        assert_eq!(error.to_string(), "unknown storage medium \"HugePages\"");
    }

    #[test]
    fn unsupported_projections_and_plain_volumes() {
        let volume = |json| serde_json::from_value::<Volume>(json).unwrap();
        let bundle = volume(serde_json::json!({"name": "b", "projected": {"sources": [
            {"clusterTrustBundle": {"path": "ca.pem", "signerName": "example.com/x"}}]}}));
        assert_eq!(
            sources(&bundle, Owner::default()).err().unwrap().to_string(),
            "clusterTrustBundle projections are not supported"
        );
        assert!(
            sources(&volume(serde_json::json!({"name": "e", "emptyDir": {}})), Owner::default()).unwrap().is_none()
        );
        let account = |json| service_account(&pod(json));
        assert_eq!(account(serde_json::json!({"spec": {"containers": [], "serviceAccountName": "robot"}})), "robot");
        assert_eq!(account(serde_json::json!({"spec": {"containers": [], "serviceAccount": "old"}})), "old");
        assert_eq!(account(serde_json::json!({"spec": {"containers": []}})), "default");
    }
}
