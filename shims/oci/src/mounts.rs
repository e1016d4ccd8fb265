//! What the agent has mounted under a container's directories, read from `/proc/self/mountinfo`, so that
//! those mounts come down before the directories are deleted: deleting through a mount deletes the mounted
//! files, and what is mounted there may be a pod's volume (staged under the bundle while its container
//! starts) or a shared layer of the cache.

use std::cmp::Reverse;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MntFlags;

/// How many times the mount table is read again while mounts stay below a directory: one round takes down
/// the top mount of every stack, and mounts stacked on one point are rare (a crash between two starts).
const UNMOUNT_ROUNDS: usize = 4;

/// Why something stays mounted below a directory, which must then not be deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnmountError {
    /// The mount table cannot be read, so what is mounted there is unknown.
    #[error("cannot read the mount table")]
    MountTable(#[source] std::io::Error),
    /// The directory cannot be resolved to the path the mount table names it by.
    #[error("cannot resolve {}", .path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A mount point that every attempt left mounted.
    #[error("{} stays mounted", .path.display())]
    StillMounted {
        path: PathBuf,
        /// The last refusal of the unmount, if any was refused.
        #[source]
        source: Option<Errno>,
    },
}

/// Detaches everything mounted at or below each of `dirs`, deepest first; a missing directory has nothing
/// mounted below it. Ok once the mount table shows nothing there any more.
pub(crate) fn unmount_below(dirs: &[&Path]) -> Result<(), UnmountError> {
    let mut resolved = Vec::with_capacity(dirs.len());
    for dir in dirs {
        // The mount table names mount points by their resolved paths.
        match dir.canonicalize() {
            Ok(path) => resolved.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(UnmountError::Resolve { path: dir.to_path_buf(), source }),
        }
    }
    if resolved.is_empty() {
        return Ok(());
    }
    let mut refused = None;
    for _ in 0..UNMOUNT_ROUNDS {
        let mut mounted = mounts_below(&resolved)?;
        if mounted.is_empty() {
            return Ok(());
        }
        mounted.sort_by_key(|point| Reverse(point.components().count()));
        for point in &mounted {
            // Detached: a container starting elsewhere at that moment holds copies of the agent's mounts until
            // it pivots into its root, and a busy mount must still leave this directory.
            match nix::mount::umount2(point, MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(e) => refused = Some(e),
            }
        }
    }
    match mounts_below(&resolved)?.into_iter().next() {
        None => Ok(()),
        Some(path) => Err(UnmountError::StillMounted { path, source: refused }),
    }
}

/// The mount points at or below any of `dirs` (resolved paths), stacked ones once per mount.
fn mounts_below(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, UnmountError> {
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    skiff_shim::mount_table::mount_points_below(&dirs).map_err(UnmountError::MountTable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_and_nested_mounts_come_down_and_their_sources_stay() {
        assert!(nix::unistd::geteuid().is_root(), "bind mounts need root: run the tests as root");
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("kept"), "x").unwrap();
        let below = dir.path().join("bundle dir");
        let (outer, inner) = (below.join("vol/0"), below.join("vol/0/sub"));
        std::fs::create_dir_all(&outer).unwrap();
        std::fs::create_dir(source.join("sub")).unwrap();
        let bind = |from: &Path, to: &Path| {
            nix::mount::mount(Some(from), to, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap()
        };
        bind(&source, &outer);
        bind(&source, &outer);
        bind(&source, &inner);
        assert_eq!(mounts_below(&[below.canonicalize().unwrap()]).unwrap().len(), 3);
        unmount_below(&[&below, &dir.path().join("never-made")]).unwrap();
        assert_eq!(mounts_below(&[below.canonicalize().unwrap()]).unwrap(), Vec::<PathBuf>::new());
        std::fs::remove_dir_all(&below).unwrap();
        assert!(source.join("kept").exists());
    }
}
