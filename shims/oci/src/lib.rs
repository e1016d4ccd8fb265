#![doc = include_str!("../README.md")]

mod adopt;
mod bundle;
mod cgroups;
mod container;
mod devices;
mod exec;
mod executor;
mod idmap;
mod mounts;
mod overlay;
mod rootfs;
mod seccomp;
mod security;
mod spec;
mod usage;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use skiff_shim::{Container, ContainerSpec, Image, OutputSink, ShimError};

pub use container::OciContainer;
pub use security::default_seccomp;

/// Layer media types the shim unpacks: OCI tar and tar+gzip, and Docker's gzipped rootfs diff.
const LAYER_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// Held while libcontainer creates and starts a container: it briefly changes the process's working
/// directory to reach its notify socket by a short relative path, so two starts at once connect to each
/// other's sockets (or none). Taken through [`lock_start`].
static START_LOCK: Mutex<()> = Mutex::new(());

/// [`START_LOCK`], and the working directory to return to. On some errors (a refused notify socket)
/// libcontainer returns without changing the directory back; once that container's bundle is removed, every
/// later start would fail to read its working directory.
pub(crate) struct StartGuard {
    cwd: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

pub(crate) fn lock_start() -> StartGuard {
    let lock = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    StartGuard { cwd, _lock: lock }
}

impl Drop for StartGuard {
    // Runs before the lock is released: the fields drop after this.
    fn drop(&mut self) {
        if std::env::current_dir().ok().as_ref() != Some(&self.cwd)
            && let Err(e) = std::env::set_current_dir(&self.cwd)
        {
            tracing::warn!(cwd = %self.cwd.display(), error = %e, "cannot restore the working directory");
        }
    }
}

/// Settings of the OCI shim.
#[derive(Clone, Debug)]
pub struct OciConfig {
    /// Where the layer cache and the containers' files live (`layers`, `upper`, `work`, and `run` for the
    /// runtime files, on a tmpfs the shim mounts there); a container's are removed when it ends.
    pub state_dir: PathBuf,
}

impl OciConfig {
    /// Where `Localhost` seccomp profiles are read from: `seccomp` beside the state directory, so
    /// `<agent data dir>/seccomp` as the kubelet's is `<root dir>/seccomp`.
    pub fn seccomp_dir(&self) -> PathBuf {
        self.state_dir.parent().unwrap_or(&self.state_dir).join("seccomp")
    }
}

/// Why the shim could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The state directory cannot be created.
    #[error("cannot create the oci state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs Linux containers from OCI images with youki's libcontainer, forked from the agent (no daemon, no
/// systemd). Each container gets its own pid, mount, ipc and uts namespaces, joins its pod's network
/// namespace (or shares the host network when it has none), and lives in the cgroup `/skiff/<id>` with the spec's memory and CPU limits.
pub struct OciShim {
    /// Shared with starts and sweeps under way, which may outlive the shim: the last holder unmounts.
    dirs: Arc<bundle::Dirs>,
    layers: Arc<overlay::LayerCache>,
    hierarchy: cgroups::Hierarchy,
    /// [`OciConfig::seccomp_dir`].
    seccomp_dir: Arc<PathBuf>,
}

/// The pids limit of every container (the kubelet leaves it to a flag; unlimited forks are a node-wide
/// denial of service).
const PIDS_LIMIT: i64 = 4096;

impl OciShim {
    pub fn new(config: OciConfig) -> Result<Self, OciError> {
        let dirs = bundle::Dirs::create(&config.state_dir)
            .map_err(|source| OciError::StateDir { path: config.state_dir.clone(), source })?;
        let layers_dir = dirs.layers();
        let layers = overlay::LayerCache::new(layers_dir.clone())
            .map_err(|source| OciError::StateDir { path: layers_dir, source })?;
        // Without a usable hierarchy the node does not offer this shim (`available`); v1 is assumed then.
        let hierarchy = cgroups::Hierarchy::detect().unwrap_or(cgroups::Hierarchy::V1);
        hierarchy.remember_mounts();
        tracing::info!(?hierarchy, "oci shim ready");
        let seccomp_dir = Arc::new(config.seccomp_dir());
        Ok(OciShim { dirs: Arc::new(dirs), layers: Arc::new(layers), hierarchy, seccomp_dir })
    }

    /// Whether this host can run containers: the agent runs as root and a cgroup hierarchy with the memory
    /// and cpu controllers is mounted (v1, hybrid, or v2 unified).
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root() && cgroups::Hierarchy::detect().is_some()
    }
}

fn is_wasm_media_type(media_type: &str) -> bool {
    media_type.contains("wasm")
}

fn setup_error(message: String, source: impl std::error::Error + Send + Sync + 'static) -> ShimError {
    ShimError::Setup { message, source: Some(Box::new(source)) }
}

/// Container ids become directory names and cgroup names: only characters libcontainer accepts, and no
/// leading dot.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 1024
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
}

#[async_trait::async_trait]
impl skiff_shim::Shim for OciShim {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn can_handle(&self, image: &Image) -> bool {
        !is_wasm_media_type(&image.config_media_type)
            && image.architecture != "wasm"
            && !image.layers.is_empty()
            && image.layers.iter().all(|l| LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
    }

    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, ShimError> {
        if !valid_id(&spec.id) {
            return Err(ShimError::Setup { message: format!("invalid container id {:?}", spec.id), source: None });
        }
        let bundle = self.dirs.bundle(&spec.id);
        let task_bundle = bundle.clone();
        let (dirs, layers, hierarchy) = (self.dirs.clone(), self.layers.clone(), self.hierarchy);
        let seccomp_dir = self.seccomp_dir.clone();
        // Unpacking is blocking IO and libcontainer forks from the calling thread. A failed start is cleaned
        // up on that thread too: the caller may have stopped waiting (a cancelled start, a runtime shutting
        // down) and must not leave a mounted root behind.
        let mut task = tokio::task::spawn_blocking(move || {
            if task_bundle.exists() {
                return Err(ShimError::Setup {
                    message: format!("container {} already exists", spec.id),
                    source: None,
                });
            }
            let created = create(&task_bundle, &spec, &layers, hierarchy, &seccomp_dir);
            if created.is_err() {
                task_bundle.remove();
            }
            // Held until here, so the run directory's tmpfs outlives this start (see `OciShim::dirs`).
            drop(dirs);
            created
        });
        let started = match tokio::time::timeout(START_TIMEOUT, &mut task).await {
            Ok(started) => started,
            Err(_) => {
                tracing::warn!(timeout = ?START_TIMEOUT, "the container start hung: killing its unfinished processes");
                kill_unfinished_starts();
                task.await
            }
        };
        match started {
            Ok(Ok(container)) => Ok(Box::new(container)),
            Ok(Err(e)) => Err(e),
            Err(e) => {
                bundle.remove();
                Err(setup_error("the container start task failed".into(), e))
            }
        }
    }

    async fn adopt(&self, id: &str, output: Arc<dyn OutputSink>) -> Option<Box<dyn Container>> {
        if !valid_id(id) {
            return None;
        }
        let bundle = self.dirs.bundle(id);
        let id = id.to_owned();
        let adopted = tokio::task::spawn_blocking(move || adopt::adopt(bundle, &id, output)).await.ok()??;
        Some(Box::new(adopted))
    }

    async fn release_layers(&self, live: &std::collections::HashSet<String>) {
        let (layers, live) = (self.layers.clone(), live.clone());
        let _ = tokio::task::spawn_blocking(move || layers.release(&live)).await;
    }

    async fn remove_others(&self, keep: &std::collections::HashSet<String>) -> usize {
        let (dirs, keep) = (self.dirs.clone(), keep.clone());
        tokio::task::spawn_blocking(move || adopt::remove_others(&dirs, &keep)).await.unwrap_or(0)
    }
}

/// How long a container may take from create to started before its start is declared hung.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// libcontainer forks a container's first process from this multi-threaded process. Through a raw `clone`,
/// as published, the child could inherit a malloc lock another thread held at that moment and wait on it
/// forever (about once in 50-100 starts); the vendored libcontainer forks through glibc, which resets those
/// locks, ends its children with `_exit` rather than through std's clean-up (which took a lock of std's),
/// and the init process sets no environment through Rust's lock ([`executor`]), so this is the backstop
/// for any other lock a child might inherit (a log writer's). Such children still run this binary;
/// a started container's processes run the image's.
/// Starts hold [`START_LOCK`], so every child of ours still running this binary belongs to the hung start
/// (or, for a moment, is the node's making a pod's user namespace): killing them makes it fail, and the node
/// retries it.
fn kill_unfinished_starts() {
    let Ok(own) = std::fs::read_link("/proc/self/exe") else { return };
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten();
    let children = tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()).collect::<Vec<_>>());
    for pid in children {
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == own) {
            tracing::warn!(pid, "killing a container process that never started");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ShimError> {
    // Close-on-exec, so a container started at the same time on another thread cannot inherit our ends.
    pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_error(format!("cannot create an output pipe: {e}"), e))
}

fn create(
    bundle: &bundle::Bundle,
    spec: &ContainerSpec,
    layers: &overlay::LayerCache,
    hierarchy: cgroups::Hierarchy,
    seccomp_dir: &std::path::Path,
) -> Result<OciContainer, ShimError> {
    let _span = tracing::info_span!("oci_start", container = %spec.name, id = %spec.id).entered();
    let state = bundle.state();
    let create_error = |e| setup_error(format!("cannot create the bundle {}: {e}", bundle.dir().display()), e);
    bundle.create().map_err(create_error)?;
    let users = spec.userns.as_ref().map(idmap::PodUsers::open).transpose()?;
    let rootfs = bundle.mount_point();
    if let Some(users) = &users {
        // libcontainer's init resolves the root and the volumes' copies as the pod's root.
        users.grant_search(bundle.dir()).map_err(create_error)?;
        users.check_reachable(&rootfs)?;
    }
    let made = layers.prepare(&spec.image.layers, bundle, users.as_ref())?;
    tracing::debug!(rootfs = ?made, "root filesystem ready");
    // Dropped (its copies detached) once libcontainer's init has mounted them, or on an error before.
    let (mounts, volume_staging) = match &users {
        Some(users) => {
            let (mounts, staging) = stage_volumes(&spec.mounts, users, bundle)?;
            (mounts, Some(staging))
        }
        None => (spec.mounts.clone(), None),
    };
    let mut oci = spec::runtime_spec(spec, &rootfs, &mounts)?;
    security::apply(&mut oci, spec, &rootfs, seccomp_dir)?;
    cgroups::apply(&mut oci, &spec.limits, Some(PIDS_LIMIT), hierarchy)?;
    // The filter is compiled here once per distinct profile, not in every container's init (12-17 ms each
    // for the default profile); the init and exec's processes, forks of the agent, load the compiled
    // program (vendor/libcontainer/PATCHED.md).
    if let Some(seccomp) = oci.linux().as_ref().and_then(|linux| linux.seccomp().as_ref()) {
        libcontainer::seccomp::precompile(seccomp)
            .map_err(|e| setup_error(format!("cannot compile the seccomp filter of container {}: {e}", spec.id), e))?;
    }
    save_private(&oci, &bundle.dir().join("config.json"))?;

    let stdin = File::open("/dev/null").map_err(|e| setup_error(format!("cannot open /dev/null: {e}"), e))?;
    let ((stdout_w, stderr_w), (stdout_r, stderr_r)) = adopt::output_fifos(bundle.dir())?;
    let runtime_error = |what: &str, e: libcontainer::error::LibcontainerError| {
        setup_error(format!("cannot {what} container {}: {e}", spec.id), e)
    };
    let start_guard = lock_start();
    let mut container = ContainerBuilder::new(spec.id.clone(), SyscallType::default())
        .with_root_path(&state)
        .map_err(|e| runtime_error("prepare", e))?
        .with_stdin(stdin)
        .with_stdout(stdout_w)
        .with_stderr(stderr_w)
        .with_executor(executor::Execve::default())
        .as_init(bundle.dir())
        .with_systemd(false)
        .build()
        .map_err(|e| runtime_error("create", e))?;
    // The init has made its mounts and waits to be started: the staged copies of the volumes go.
    drop(volume_staging);
    let started = container.start().map_err(|e| runtime_error("start", e)).and_then(|()| {
        container.pid().ok_or_else(|| ShimError::Setup {
            message: format!("container {} started without a pid", spec.id),
            source: None,
        })
    });
    drop(start_guard);
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            if let Err(delete) = container.delete(true) {
                tracing::warn!(error = %delete, "cannot delete the container that failed to start");
            }
            return Err(e);
        }
    };
    tracing::debug!(pid = pid.as_raw(), "container started");
    let cleanup = container::Cleanup { bundle: bundle.clone(), cgroup: spec::cgroups_path(&spec.id) };
    let exec = exec::OciExec::new(spec.id.clone(), bundle.dir().to_path_buf());
    OciContainer::watch(container::Child::new(pid), stdout_r, stderr_r, spec.output.clone(), cleanup, exec)
        .map_err(|e| setup_error(format!("cannot start the thread watching container {}: {e}", spec.id), e))
}

/// Attaches an id-mapped copy of each mount's source (with its submounts) under the bundle, and returns the
/// mounts with those copies as their sources.
fn stage_volumes(
    mounts: &[skiff_shim::Mount],
    users: &idmap::PodUsers,
    bundle: &bundle::Bundle,
) -> Result<(Vec<skiff_shim::Mount>, idmap::Staging), ShimError> {
    // The pod's root resolves the copies' paths from inside its namespace: searchable by others.
    let staging = idmap::Staging::create(bundle.volume_staging(), 0o711)?;
    let mut staged = Vec::with_capacity(mounts.len());
    for (index, mount) in mounts.iter().enumerate() {
        let source = staging.attach(users, index, &mount.host_path, true)?;
        users.check_reachable(&source)?;
        staged.push(skiff_shim::Mount { host_path: source, ..mount.clone() });
    }
    Ok((staged, staging))
}

/// Writes the runtime spec readable by the agent alone: the environment in it may hold Secrets' values.
fn save_private(oci: &oci_spec::runtime::Spec, path: &std::path::Path) -> Result<(), ShimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write_error = |e: std::io::Error| setup_error(format!("cannot write {}: {e}", path.display()), e);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_error)?;
    let mut writer = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut writer, oci).map_err(|e| write_error(e.into()))?;
    writer.flush().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_shim::{Layer, Shim};

    fn image(config: &str, arch: &str, layer_types: &[&str]) -> Image {
        Image {
            config_media_type: config.into(),
            architecture: arch.into(),
            layers: layer_types
                .iter()
                .map(|t| Layer { media_type: (*t).into(), digest: String::new(), path: PathBuf::new() })
                .collect(),
            ..Image::default()
        }
    }

    #[test]
    fn handles_linux_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let shim = OciShim::new(OciConfig { state_dir: dir.path().join("s") }).unwrap();
        assert_eq!(shim.name(), "oci");
        let oci_config = "application/vnd.oci.image.config.v1+json";
        assert!(shim.can_handle(&image(oci_config, "amd64", &[LAYER_MEDIA_TYPES[1], LAYER_MEDIA_TYPES[0]])));
        assert!(shim.can_handle(&image(
            "application/vnd.docker.container.image.v1+json",
            "amd64",
            &["application/vnd.docker.image.rootfs.diff.tar.gzip"]
        )));
        assert!(!shim.can_handle(&image("application/vnd.wasm.config.v0+json", "wasm", &["application/wasm"])));
        assert!(!shim.can_handle(&image(oci_config, "wasm", &[LAYER_MEDIA_TYPES[1]])));
        assert!(!shim.can_handle(&image(
            oci_config,
            "amd64",
            &["application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"]
        )));
        assert!(!shim.can_handle(&image(oci_config, "amd64", &[])));
        assert!(shim.can_handle(&image(oci_config, "amd64", &["application/vnd.oci.image.layer.v1.tar+zstd"])));
    }

    #[test]
    fn the_working_directory_is_restored_after_a_start() {
        let before = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let _guard = lock_start();
            std::env::set_current_dir(dir.path()).unwrap();
        }
        assert_eq!(std::env::current_dir().unwrap(), before);
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("abc-123_x.y"));
        for bad in ["", ".hidden", "a/b", "..", "a b"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
