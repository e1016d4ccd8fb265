//! The cgroup side of a container beyond its limits: CPU shares from its request, a pids limit, and which
//! hierarchy the host has. libcontainer writes v1 files or their v2 equivalents (shares become
//! `cpu.weight`) depending on that.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxCpuBuilder, LinuxPidsBuilder, Spec};
use skiff_shim::{Limits, ShimError};

/// The kubelet's bounds for cpu shares (a request of 0 or none gets the minimum).
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: u64 = 1024;

/// The cgroup layout of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// Only cgroup v1 controllers.
    V1,
    /// v1 controllers with a cgroup2 mount beside them (systemd's hybrid layout): containers use v1.
    Hybrid,
    /// The unified hierarchy only.
    V2,
}

impl Hierarchy {
    /// Detects the layout under `/sys/fs/cgroup`, or None when no usable hierarchy (with the memory and
    /// cpu controllers the shim relies on) is mounted.
    pub(crate) fn detect() -> Option<Self> {
        Self::detect_in(Path::new("/sys/fs/cgroup"))
    }

    fn detect_in(root: &Path) -> Option<Self> {
        if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
            return (has("memory") && has("cpu")).then_some(Hierarchy::V2);
        }
        let v1 = root.join("memory/memory.limit_in_bytes").exists()
            && (root.join("cpu/cpu.cfs_quota_us").exists() || root.join("cpu,cpuacct/cpu.cfs_quota_us").exists());
        if !v1 {
            return None;
        }
        Some(if root.join("unified/cgroup.controllers").exists() { Hierarchy::Hybrid } else { Hierarchy::V1 })
    }

    /// Has the patched libcgroups read this host's v1 mounts now, in the agent, and keep them: every
    /// container's intermediate process, a fork of the agent, then finds them in its copy instead of
    /// reading mountinfo again.
    pub(crate) fn remember_mounts(self) {
        if self != Hierarchy::V2
            && let Err(e) = libcgroups::v1::util::cgroup_mounts()
        {
            tracing::debug!(error = %e, "cannot read the cgroup v1 mounts: each start reads them");
        }
    }

    fn has_pids_controller(self) -> bool {
        match self {
            Hierarchy::V2 => std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids")),
            Hierarchy::V1 | Hierarchy::Hybrid => {
                Path::new("/sys/fs/cgroup/pids/pids.max").exists() || Path::new("/sys/fs/cgroup/pids/tasks").exists()
            }
        }
    }
}

/// The kubelet's conversion of a CPU request to shares.
pub(crate) fn shares(request_millis: Option<u64>) -> u64 {
    let millis = request_millis.unwrap_or(0);
    (millis.saturating_mul(SHARES_PER_CPU) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Adds cpu shares and the pids limit to the spec's resources.
pub(crate) fn apply(
    oci: &mut Spec,
    limits: &Limits,
    pids_limit: Option<i64>,
    hierarchy: Hierarchy,
) -> Result<(), ShimError> {
    let error = |e: oci_spec::OciSpecError| ShimError::Setup {
        message: format!("cannot build the runtime spec (cgroup resources): {e}"),
        source: None,
    };
    let Some(resources) = oci.linux_mut().as_mut().and_then(|l| l.resources_mut().as_mut()) else {
        return Ok(());
    };
    let mut cpu = match resources.cpu().clone() {
        Some(cpu) => cpu,
        None => LinuxCpuBuilder::default().build().map_err(error)?,
    };
    cpu.set_shares(Some(shares(limits.cpu_request_millis)));
    resources.set_cpu(Some(cpu));
    if let Some(limit) = pids_limit
        && hierarchy.has_pids_controller()
    {
        resources.set_pids(Some(LinuxPidsBuilder::default().limit(limit).build().map_err(error)?));
    }
    Ok(())
}

/// Where the host mounts its cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long the processes left in a removed container's cgroup get to die (a pid namespace's processes
/// die with its init, but not at once) before the cgroup is left behind with a warning.
const REMOVE_PATIENCE: Duration = Duration::from_secs(1);
const REMOVE_RETRY: Duration = Duration::from_millis(10);

/// Removes the cgroup `path` (such as `/skiff/<id>`) from every hierarchy it is in, killing whatever still
/// runs in it. libcontainer's delete does the same but finds the controllers anew each time (a mountinfo
/// parse and a private procfs per controller: ~3 ms a container here, in the path of every restart).
pub(crate) fn remove(path: &str) {
    remove_in(Path::new(CGROUP_ROOT), path);
}

fn remove_in(root: &Path, path: &str) {
    let relative = path.trim_start_matches('/');
    let deadline = Instant::now() + REMOVE_PATIENCE;
    // v2 has the cgroup under the root; v1 under each controller's mount (`cpu` and `cpuacct` may be links
    // to one mount: the second finds it gone).
    let controllers = std::fs::read_dir(root).into_iter().flatten().flatten().map(|entry| entry.path());
    for dir in std::iter::once(root.to_path_buf()).chain(controllers).map(|base| base.join(relative)) {
        remove_dir(&dir, deadline);
    }
}

fn remove_dir(dir: &Path, deadline: Instant) {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(dir);
                std::thread::sleep(REMOVE_RETRY);
            }
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove the container's cgroup");
                return;
            }
        }
    }
}

/// v2's `cgroup.kill` takes the whole subtree at once, forks in flight included; v1 has only the list.
fn kill_members(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else { return };
    for pid in procs.lines().filter_map(|line| line.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_kubelet() {
        assert_eq!(shares(None), 2);
        assert_eq!(shares(Some(1)), 2);
        assert_eq!(shares(Some(250)), 256);
        assert_eq!(shares(Some(1000)), 1024);
        assert_eq!(shares(Some(1_000_000)), 262_144);
    }

    #[test]
    fn hierarchies_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(Hierarchy::detect_in(root), None);
        for file in ["memory/memory.limit_in_bytes", "cpu/cpu.cfs_quota_us"] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), "").unwrap();
        }
        assert_eq!(Hierarchy::detect_in(root), Some(Hierarchy::V1));
        std::fs::create_dir(root.join("unified")).unwrap();
        std::fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(Hierarchy::detect_in(root), Some(Hierarchy::Hybrid));
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        assert_eq!(Hierarchy::detect_in(v2.path()), Some(Hierarchy::V2));
        std::fs::write(v2.path().join("cgroup.controllers"), "cpuset io").unwrap();
        assert_eq!(Hierarchy::detect_in(v2.path()), None, "no memory controller delegated");
    }

    #[test]
    fn removal_takes_the_cgroup_from_every_hierarchy_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for cgroup in ["memory/skiff/a", "cpu,cpuacct/skiff/a", "skiff/a", "memory/skiff/b"] {
            std::fs::create_dir_all(root.join(cgroup)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "").unwrap();
        remove_in(root, "/skiff/a");
        for gone in ["memory/skiff/a", "cpu,cpuacct/skiff/a", "skiff/a"] {
            assert!(!root.join(gone).exists(), "{gone}");
        }
        assert!(root.join("memory/skiff/b").is_dir() && root.join("memory/skiff").is_dir());
    }
}
