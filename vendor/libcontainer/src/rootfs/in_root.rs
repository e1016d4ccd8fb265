//! Skiff patch (see PATCHED.md): lookups and directory creation inside the container's root filesystem
//! with openat2(2)'s `RESOLVE_IN_ROOT`, as pathrs's openat2 resolver does, without pathrs's checks of
//! its procfs handle and re-opens through /proc before and after each step (~60 syscalls per mount,
//! ~1,100 per container start). The kernel keeps every lookup inside the root, symlinks and ".."
//! included; missing directories are created one component at a time under the parent's fd and
//! re-opened with `O_NOFOLLOW`, so a symlink swapped in for a directory this makes fails the mount
//! instead of redirecting it (existing components are followed, inside the root). Where openat2 is
//! unavailable or refused (ENOSYS, or EPERM from a seccomp filter), [`InRoot::open`] gives `None` and
//! the caller uses pathrs, which emulates it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// openat2 gives EAGAIN when a rename or mount anywhere on the host might have let a ".." (of a symlink
/// such as `var/run -> ../run`) escape; pathrs retries as often.
const EAGAIN_RETRIES: usize = 128;

pub(super) struct InRoot {
    root: OwnedFd,
}

impl InRoot {
    /// The root at `rootfs`, or `None` where openat2 cannot be used (probed once per process).
    pub fn open(rootfs: &Path) -> io::Result<Option<Self>> {
        static USABLE: OnceLock<bool> = OnceLock::new();
        let root = openat(libc::AT_FDCWD, rootfs.as_os_str(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
        // As pathrs decides: any failure of a trivial openat2 means it is missing or filtered.
        let usable =
            *USABLE.get_or_init(|| openat2_in_root(&root, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY).is_ok());
        Ok(usable.then_some(Self { root }))
    }

    /// An `O_PATH` handle on `path`, a trailing symlink followed, all within the root.
    pub fn resolve(&self, path: &Path) -> io::Result<OwnedFd> {
        openat2_in_root(&self.root, relative(path)?.as_os_str(), libc::O_PATH)
    }

    /// The directory at `path`, with every missing directory on the way created with `mode`.
    pub fn mkdir_all(&self, path: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let path = relative(path)?;
        let parts: Vec<&OsStr> = path.iter().collect();
        let mut existing = parts.len();
        let mut dir = loop {
            let prefix: PathBuf = parts[..existing].iter().collect();
            match openat2_in_root(&self.root, prefix.as_os_str(), libc::O_PATH | libc::O_DIRECTORY) {
                Ok(dir) => break dir,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && existing > 0 => existing -= 1,
                Err(e) => return Err(e),
            }
        };
        for part in &parts[existing..] {
            let name = c_string(part)?;
            // SAFETY: a valid directory fd and a NUL-terminated name that outlives the call.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            dir = openat(
                dir.as_raw_fd(),
                part,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )?;
        }
        Ok(dir)
    }

    /// Creates the empty file `path` (its parent directories too) unless something is there already.
    pub fn create_file(&self, path: &Path, dir_mode: libc::mode_t, mode: libc::mode_t) -> io::Result<()> {
        let path = relative(path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let parent = self.mkdir_all(parent, dir_mode)?;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY;
        match openat(parent.as_raw_fd(), name, flags, mode) {
            Ok(_) => Ok(()),
            Err(create) => self.resolve(&path).map(drop).map_err(|_| create),
        }
    }
}

/// The path relative to the root; ".." is refused (the caller sends such paths to pathrs).
fn relative(path: &Path) -> io::Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    Ok(relative)
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(dir: libc::c_int, path: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let path = c_string(path)?;
    // SAFETY: a NUL-terminated path that outlives the call; the returned fd is new and ours.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat2_in_root(root: &impl AsFd, path: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = c_string(if path.is_empty() { OsStr::new(".") } else { path })?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    for _ in 0..EAGAIN_RETRIES {
        // SAFETY: a valid fd, a NUL-terminated path and an open_how of the size passed, all outliving
        // the call; the returned fd is new and ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_fd().as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just opened and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn fd_path(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn creates_missing_directories_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let root = InRoot::open(dir.path()).unwrap().expect("openat2");
        let made = root.mkdir_all(Path::new("/a/b/c"), 0o755).unwrap();
        assert_eq!(fd_path(&made), dir.path().join("a/b/c").canonicalize().unwrap());
        let again = root.mkdir_all(Path::new("a/b/c"), 0o755).unwrap();
        assert_eq!(fd_path(&again), fd_path(&made));
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::fs::create_dir(dir.path().join("var")).unwrap();
        symlink("../run", dir.path().join("var/run")).unwrap();
        symlink("/run", dir.path().join("absolute")).unwrap();
        symlink(outside.path(), dir.path().join("escape")).unwrap();
        let root = InRoot::open(dir.path()).unwrap().expect("openat2");

        let lock = root.mkdir_all(Path::new("/var/run/lock"), 0o755).unwrap();
        assert_eq!(fd_path(&lock), dir.path().join("run/lock").canonicalize().unwrap());
        // An absolute symlink is taken relative to the root, never the host.
        let user = root.mkdir_all(Path::new("/absolute/user"), 0o755).unwrap();
        assert_eq!(fd_path(&user), dir.path().join("run/user").canonicalize().unwrap());
        // One that dangles inside the root is refused, as pathrs refuses it, and nothing is made outside.
        assert!(root.mkdir_all(Path::new("/escape/x"), 0o755).is_err());
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn creates_a_file_once_and_refuses_parent_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = InRoot::open(dir.path()).unwrap().expect("openat2");
        root.create_file(Path::new("/etc/hosts"), 0o755, 0o644).unwrap();
        assert!(dir.path().join("etc/hosts").is_file());
        root.create_file(Path::new("/etc/hosts"), 0o755, 0o644).unwrap();
        assert!(root.resolve(Path::new("/etc/hosts")).is_ok());
        assert_eq!(root.mkdir_all(Path::new("/a/../b"), 0o755).unwrap_err().raw_os_error(), Some(libc::EXDEV));
    }
}
