use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::OnceLock;

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use procfs::ProcError;
use procfs::process::MountInfo;

use super::ControllerType;
use super::controller_type::CONTROLLERS;

#[derive(thiserror::Error, Debug)]
pub enum V1MountPointError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to get mountinfo: {0}")]
    MountInfo(ProcError),
    #[error("could not find mountpoint for {subsystem}")]
    NotFound { subsystem: ControllerType },
    #[error(transparent)]
    Pathrs(#[from] pathrs::error::Error),
}

/// List all cgroup v1 subsystem mount points on the system. This can include unsupported
/// subsystems, comounted controllers and named hierarchies.
pub fn list_subsystem_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    // Skiff: from the mounts kept by `cgroup_mounts`, not from another read of mountinfo.
    Ok(cgroup_mounts()?.iter().map(|m| m.mount_point.clone()).collect())
}

/// List the mount points of all currently supported cgroup subsystems.
pub fn list_supported_mount_points() -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError>
{
    // Skiff: mountinfo is read once, not once per controller; unreadable, no controller is supported, as
    // before.
    let Ok(mounts) = cgroup_mounts() else {
        return Ok(HashMap::new());
    };
    Ok(CONTROLLERS
        .iter()
        .filter_map(|controller| {
            find_subsystem_mount_point(mounts, controller)
                .ok()
                .map(|mount_point| (*controller, mount_point))
        })
        .collect())
}

pub fn get_subsystem_mount_point(subsystem: &ControllerType) -> Result<PathBuf, V1MountPointError> {
    find_subsystem_mount_point(cgroup_mounts()?, subsystem)
}

/// Skiff: the cgroup v1 mounts, read from mountinfo once per process and kept.
static CGROUP_MOUNTS: OnceLock<Vec<MountInfo>> = OnceLock::new();

/// Skiff: the cgroup v1 mounts of this process, read from mountinfo on the first call and kept for the
/// process's life, and for its forks': a runtime's intermediate processes look their controllers up in the
/// copy they inherited instead of having the kernel format every mount of the host again (the more
/// containers run, the more mounts; ~0.25 ms of every start with a few). Hosts mount their v1 hierarchies
/// at boot and do not move them. A failed read is not kept.
pub fn cgroup_mounts() -> Result<&'static [MountInfo], V1MountPointError> {
    if let Some(mounts) = CGROUP_MOUNTS.get() {
        return Ok(mounts);
    }
    let mounts = read_cgroup_mounts()?;
    Ok(CGROUP_MOUNTS.get_or_init(|| mounts))
}

fn read_cgroup_mounts() -> Result<Vec<MountInfo>, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);

    let mut mounts = Vec::new();
    for line in reader.lines() {
        let mount = MountInfo::from_line(&line?).map_err(V1MountPointError::MountInfo)?;
        if mount.fs_type == "cgroup" {
            mounts.push(mount);
        }
    }
    Ok(mounts)
}

pub(crate) fn find_subsystem_mount_point(
    mounts: &[MountInfo],
    subsystem: &ControllerType,
) -> Result<PathBuf, V1MountPointError> {
    let subsystem_name = subsystem.to_string();
    mounts
        .iter()
        .find(|m| {
            // Some systems mount net_prio and net_cls in the same directory
            // other systems mount them in their own directories. This
            // should handle both cases.
            match subsystem_name.as_str() {
                "net_cls" => ["net_cls,net_prio", "net_prio,net_cls", "net_cls"]
                    .iter()
                    .any(|s| m.mount_point.ends_with(s)),
                "net_prio" => ["net_cls,net_prio", "net_prio,net_cls", "net_prio"]
                    .iter()
                    .any(|s| m.mount_point.ends_with(s)),
                "cpu" => ["cpu,cpuacct", "cpu"]
                    .iter()
                    .any(|s| m.mount_point.ends_with(s)),
                "cpuacct" => ["cpu,cpuacct", "cpuacct"]
                    .iter()
                    .any(|s| m.mount_point.ends_with(s)),
                _ => m.mount_point.ends_with(&subsystem_name),
            }
        })
        .map(|m| m.mount_point.clone())
        .ok_or(V1MountPointError::NotFound {
            subsystem: *subsystem,
        })
}
