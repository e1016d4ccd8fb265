//! The cgroup side of a container beyond its limits: CPU shares from its request, a pids limit, and which
//! hierarchy the host has. libcontainer writes v1 files or their v2 equivalents (shares become
//! `cpu.weight`) depending on that.

use std::path::Path;

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
}
