//! A volume mount's `subPath`, resolved inside its volume without following links out of it, as the kubelet
//! does since CVE-2017-1002101: a container that turned a path of the volume into a link to `/` (an init
//! container's `ln -s / /vol/x`) must not get the node's root mounted by the next container.
//!
//! The path is opened with openat2 and `RESOLVE_BENEATH` from the volume's directory: links that stay in
//! the volume resolve, one that leaves it fails. Missing directories are made one at a time the same way,
//! as the kubelet makes them. The runtime is then handed a path that names exactly what was checked,
//! whatever the pod's containers rename meanwhile: the handle's `/proc/<agent>/fd/<n>`, which the agent's
//! wasm guests open in the agent itself, or, where the agent can mount, a bind mount of the handle in the
//! pod's directory (`volume-subpaths/<container id>/<index>`, as the kubelet's), since a container's
//! runtime mounts from another mount namespace, where a handle of the agent's cannot be cloned. Either
//! lives while the container runs (a wasm guest opens its directories again for each instance).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An opened subPath: its handle, and the bind mount of it once made.
#[derive(Debug)]
pub struct SubPath {
    handle: OwnedFd,
    bound: Option<PathBuf>,
}

impl SubPath {
    /// Opens `sub` inside the directory `volume`, making missing directories. The error says why, in the
    /// kubelet's words where it has some.
    pub fn open(volume: &Path, sub: &str) -> Result<Self, String> {
        if sub.starts_with('/') {
            return Err(format!("subPath \"{sub}\" must be a relative path"));
        }
        let parts: Vec<&str> = sub.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
        if parts.contains(&"..") {
            return Err(format!("subPath \"{sub}\" must not contain \"..\""));
        }
        let root = open_at(None, volume.as_os_str().as_bytes(), false)
            .map_err(|e| format!("cannot open volume path {}: {e}", volume.display()))?;
        let outside = || format!("subpath \"{sub}\" not within volume path \"{}\"", volume.display());
        let fail = |e: io::Error| match e.raw_os_error() {
            Some(libc::EXDEV) => outside(),
            Some(libc::ELOOP) => format!("subPath \"{sub}\": too many levels of symbolic links"),
            _ => format!("subPath \"{sub}\": {e}"),
        };
        let whole = parts.join("/");
        let handle = match open_at(Some(&root), whole.as_bytes(), true) {
            Ok(handle) => handle,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => make_dirs(&root, &parts).map_err(fail)?,
            Err(e) => return Err(fail(e)),
        };
        Ok(SubPath { handle, bound: None })
    }

    /// Binds what was opened at `target`, made as a file or a directory as it is.
    pub fn bind_at(mut self, target: &Path) -> Result<Self, String> {
        let fail = |what: &str, e: io::Error| format!("cannot {what} {}: {e}", target.display());
        let source = self.handle_path();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("create", e))?;
        }
        // Through the handle: the directory or file it names, not whatever has its name now.
        let made = if std::fs::metadata(&source).map_err(|e| fail("inspect the source of", e))?.is_dir() {
            std::fs::create_dir(target)
        } else {
            std::fs::File::create(target).map(drop)
        };
        made.map_err(|e| fail("create", e))?;
        self.bound = Some(target.to_path_buf());
        let (source, target_c) = (c_path(&source)?, c_path(target)?);
        // SAFETY: both paths are NUL-terminated and outlive the call; a bind mount reads no data argument.
        let mounted = unsafe {
            libc::mount(source.as_ptr(), target_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
        };
        if mounted != 0 {
            return Err(fail("bind-mount the subPath at", io::Error::last_os_error()));
        }
        Ok(self)
    }

    /// The path the runtime mounts or opens.
    pub fn path(&self) -> PathBuf {
        self.bound.clone().unwrap_or_else(|| self.handle_path())
    }

    /// This process's handle, which the kernel resolves to the very file or directory that was opened.
    fn handle_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.handle.as_raw_fd()))
    }
}

impl Drop for SubPath {
    fn drop(&mut self) {
        if let Some(target) = self.bound.take() {
            unmount(&target);
        }
    }
}

/// Where a pod's subPath bind mounts live, in its directory. Those of containers adopted from an earlier run
/// of the agent, whose handles are gone, go with the pod's directory (`volumes::remove_pod_dir`).
pub const SUBPATHS_DIR: &str = "volume-subpaths";

fn unmount(target: &Path) {
    if let Ok(path) = c_path(target) {
        // SAFETY: a NUL-terminated path that outlives the call. Lazily: a container may still hold it.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    let removed = std::fs::remove_dir(target).or_else(|_| std::fs::remove_file(target));
    if let Err(e) = removed
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %target.display(), error = %e, "cannot remove a subPath mount point");
    }
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("invalid path {}", path.display()))
}

/// Makes each missing directory of `parts` under `root`, each step opened beneath `root` again, so a link
/// planted on the way is followed only within the volume.
fn make_dirs(root: &OwnedFd, parts: &[&str]) -> io::Result<OwnedFd> {
    let mut parent: Option<OwnedFd> = None;
    for (index, part) in parts.iter().enumerate() {
        let prefix = parts[..=index].join("/");
        let opened = match open_at(Some(root), prefix.as_bytes(), true) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = CString::new(*part).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let at = parent.as_ref().unwrap_or(root).as_raw_fd();
                // SAFETY: `at` is an open directory handle and `name` a NUL-terminated single component;
                // mkdirat never follows a link in its last component (an existing one gives EEXIST).
                if unsafe { libc::mkdirat(at, name.as_ptr(), 0o755) } != 0 {
                    let error = io::Error::last_os_error();
                    if error.raw_os_error() != Some(libc::EEXIST) {
                        return Err(error);
                    }
                }
                open_at(Some(root), prefix.as_bytes(), true)?
            }
            other => other?,
        };
        parent = Some(opened);
    }
    parent.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// openat2 with `O_PATH`: from `root` and beneath it when given (no magic links), else the agent's own
/// path as is.
fn open_at(root: Option<&OwnedFd>, path: &[u8], beneath: bool) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    if beneath {
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    }
    let dirfd = root.map_or(libc::AT_FDCWD, |root| root.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and `how` is an initialised open_how of the size passed; the
    // returned descriptor is owned by no one else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(sub: &SubPath) -> PathBuf {
        std::fs::read_link(sub.path()).unwrap()
    }

    #[test]
    fn subpaths_stay_inside_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("vol");
        std::fs::create_dir_all(volume.join("data/inner")).unwrap();
        std::fs::write(volume.join("data/file"), "x").unwrap();
        let volume = volume.canonicalize().unwrap();

        assert_eq!(target(&SubPath::open(&volume, "data/inner").unwrap()), volume.join("data/inner"));
        assert_eq!(target(&SubPath::open(&volume, "./data//file").unwrap()), volume.join("data/file"));
        // Missing directories are made, as the kubelet makes them.
        assert_eq!(target(&SubPath::open(&volume, "new/deeper").unwrap()), volume.join("new/deeper"));
        assert!(volume.join("new/deeper").is_dir());
        // A link that stays in the volume resolves.
        std::os::unix::fs::symlink("data/inner", volume.join("inside")).unwrap();
        assert_eq!(target(&SubPath::open(&volume, "inside").unwrap()), volume.join("data/inner"));

        // Links out of it fail, absolute or relative, at the end of the path or on the way.
        std::os::unix::fs::symlink("/", volume.join("root")).unwrap();
        std::os::unix::fs::symlink("../..", volume.join("data/up")).unwrap();
        std::os::unix::fs::symlink("/etc", volume.join("dangling-made")).unwrap();
        for sub in ["root", "root/etc", "data/up", "data/up/vol", "dangling-made/skiff-subpath-test"] {
            let error = SubPath::open(&volume, sub).unwrap_err();
            assert!(error.contains("not within volume path"), "{sub}: {error}");
        }
        assert!(!Path::new("/etc/skiff-subpath-test").exists(), "nothing is made outside");
        for (sub, expected) in [("../x", "must not contain"), ("/etc", "relative path")] {
            let error = SubPath::open(&volume, sub).unwrap_err();
            assert!(error.contains(expected), "{sub}: {error}");
        }
    }

    #[test]
    fn the_handle_names_what_was_opened_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/marker"), "here").unwrap();
        let sub = SubPath::open(dir.path(), "a").unwrap();
        // The container swaps the directory for a link out after the check: the handle still names it.
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("a")).unwrap();
        assert_eq!(std::fs::read_to_string(sub.path().join("marker")).unwrap(), "here");

        // Bound for a runtime in another mount namespace: the mount is of the handle's directory too, and
        // goes with the handle.
        assert!(crate::network::is_root(), "the subPath test bind-mounts: run it as root");
        let target = dir.path().join("pod/volume-subpaths/c-0/0");
        let bound = SubPath::open(dir.path(), "b").unwrap().bind_at(&target).unwrap();
        assert_eq!(bound.path(), target);
        std::fs::rename(dir.path().join("b"), dir.path().join("c")).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("marker")).unwrap(), "here");
        let kept =
            SubPath::open(dir.path(), "c/marker").unwrap().bind_at(&dir.path().join("pod/volume-subpaths/c-0/1"));
        let kept = kept.unwrap();
        drop(bound);
        assert!(!target.exists(), "unmounted and removed with its handle");
        std::mem::forget(kept);
        crate::pods::volumes::remove_pod_dir(&dir.path().join("pod")).unwrap();
        assert!(!dir.path().join("pod").exists(), "an adopted container's mount goes with its pod");
        assert_eq!(std::fs::read_to_string(dir.path().join("c/marker")).unwrap(), "here", "unmounted, not emptied");
    }
}
