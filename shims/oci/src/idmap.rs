//! Id-mapped mounts for containers in their pod's user namespace (`hostUsers: false`). Files keep their
//! ids on disk; an id-mapped mount shows host id `k` as `host_id + k` to the kernel, so the pod's root (host
//! `host_id`) owns the image's root-owned files, and what it writes in a volume lands on disk as container
//! ids, as on a node without user namespaces (what it writes in its root goes to the overlay's upper
//! directory as host ids: overlayfs itself cannot be id-mapped). Only the host's root may id-map a mount (CAP_SYS_ADMIN in the filesystem's
//! user namespace), and only a detached one: libcontainer's init, already inside the pod's namespace,
//! cannot, so the shim attaches id-mapped copies under the bundle before libcontainer runs and the init
//! mounts them as ordinary sources.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use skiff_shim::{ShimError, UserNamespace};

/// Why an id-mapped mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdmapError {
    /// The pod's namespace file cannot be opened.
    #[error("cannot open the pod's user namespace {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is some other namespace, or none.
    #[error("{} is not a user namespace", .path.display())]
    NotUserNamespace { path: PathBuf },
    /// The staging directory or a mount point in it cannot be made.
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot clone the mount of {}", .path.display())]
    Clone {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// The kernel refuses to id-map this filesystem (NFS, procfs, tmpfs before Linux 6.3, ...).
    #[error("the filesystem of {} does not support id-mapped mounts", .path.display())]
    Unsupported {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot id-map the mount of {}", .path.display())]
    Idmap {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot attach the id-mapped mount at {}", .path.display())]
    Attach {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// libcontainer's init resolves the container's root and its volumes as the pod's root: every
    /// directory on the way must let others search it.
    #[error(
        "the pod's root (host uid {uid}) cannot reach {}: {} (mode {mode:o}) is not searchable by others",
        .path.display(),
        .dir.display()
    )]
    Unreachable { path: PathBuf, dir: PathBuf, mode: u32, uid: u32 },
}

impl From<IdmapError> for ShimError {
    fn from(e: IdmapError) -> Self {
        let message = match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        ShimError::Setup { message, source: Some(Box::new(e)) }
    }
}

/// The xattr of a POSIX access ACL, which may grant a search the mode bits do not.
const ACCESS_ACL: &str = "system.posix_acl_access";

/// A pod's user namespace, open.
#[derive(Debug)]
pub(crate) struct PodUsers {
    namespace: OwnedFd,
    host_id: u32,
    size: u32,
}

impl PodUsers {
    pub(crate) fn open(userns: &UserNamespace) -> Result<Self, IdmapError> {
        let open_error = |source| IdmapError::Open { path: userns.path.clone(), source };
        let file = File::open(&userns.path).map_err(open_error)?;
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace type of an nsfs descriptor.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWUSER {
            return Err(IdmapError::NotUserNamespace { path: userns.path.clone() });
        }
        Ok(PodUsers { namespace: file.into(), host_id: userns.host_id, size: userns.size })
    }

    /// The host id of the pod's id 0: its root's uid and gid.
    pub(crate) fn host_id(&self) -> u32 {
        self.host_id
    }

    /// How many ids the pod has, from 0.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// Lets the pod's root, and no one else but the agent, search `dir` (the bundle): an access ACL
    /// `user::rwx user:<host_id>:--x group::--- mask::--x other::---`. The directories above it that other
    /// pods share are searchable by all (0711), so a bundle alone keeps other host users out of the
    /// container's root. Where the filesystem has no ACLs, the bundle is made searchable by all (0711).
    pub(crate) fn grant_search(&self, dir: &Path) -> std::io::Result<()> {
        match xattr::set(dir, ACCESS_ACL, &search_acl(self.host_id)) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(dir = %dir.display(), "no ACLs here: the bundle is searchable by all");
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            }
            set => set,
        }
    }

    /// Fails unless the pod's root can search every directory above `path` (others' `x` bit, or an ACL,
    /// which the kernel alone can evaluate): libcontainer's own error for it names no directory.
    pub(crate) fn check_reachable(&self, path: &Path) -> Result<(), IdmapError> {
        for dir in path.ancestors().skip(1) {
            let Ok(meta) = dir.metadata() else { continue };
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 && !matches!(xattr::get(dir, ACCESS_ACL), Ok(Some(_))) {
                return Err(IdmapError::Unreachable {
                    path: path.to_path_buf(),
                    dir: dir.to_path_buf(),
                    mode: mode & 0o7777,
                    uid: self.host_id,
                });
            }
        }
        Ok(())
    }

    /// Attaches an id-mapped copy of the mount tree at `source` (a directory or a file, followed through
    /// symlinks) at `target`, which is made to match: with its submounts when `recursive`.
    fn attach_copy(&self, source: &Path, target: &Path, recursive: bool) -> Result<(), IdmapError> {
        let create = |source| IdmapError::Create { path: target.to_path_buf(), source };
        // The mount point only has to exist: what the container sees is the mounted copy's root.
        if source.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(target).map_err(create)?;
        } else {
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(target).map_err(create)?;
        }
        let tree = clone_tree(source, recursive)?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: self.namespace.as_raw_fd() as u64,
        };
        let at_recursive = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_setattr reads a mount_attr of the size given; the path is an empty C string, which
        // AT_EMPTY_PATH makes name the descriptor itself.
        let set = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | at_recursive,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if set < 0 {
            let path = source.to_path_buf();
            return Err(match Errno::last() {
                source @ (Errno::EINVAL | Errno::EOPNOTSUPP) => IdmapError::Unsupported { path, source },
                source => IdmapError::Idmap { path, source },
            });
        }
        let to = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| IdmapError::Attach { path: target.to_path_buf(), source: Errno::EINVAL })?;
        // SAFETY: move_mount with a descriptor, an empty C string (MOVE_MOUNT_F_EMPTY_PATH: the descriptor
        // itself) and a C string naming the target.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved < 0 {
            return Err(IdmapError::Attach { path: target.to_path_buf(), source: Errno::last() });
        }
        Ok(())
    }
}

/// The `system.posix_acl_access` value (`posix_acl_xattr_header` and entries, little-endian, sorted by tag)
/// granting the owner everything and `uid` search alone.
fn search_acl(uid: u32) -> Vec<u8> {
    const VERSION: u32 = 2;
    const UNDEFINED_ID: u32 = u32::MAX;
    // (tag, permissions, id): ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER.
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 0o7, UNDEFINED_ID),
        (0x02, 0o1, uid),
        (0x04, 0, UNDEFINED_ID),
        (0x10, 0o1, UNDEFINED_ID),
        (0x20, 0, UNDEFINED_ID),
    ];
    let mut acl = VERSION.to_le_bytes().to_vec();
    for (tag, permissions, id) in entries {
        acl.extend(tag.to_le_bytes());
        acl.extend(permissions.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    acl
}

/// A detached copy of the mount tree at `path` (a bind mount not yet attached anywhere).
fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, IdmapError> {
    let clone_error = |source| IdmapError::Clone { path: path.to_path_buf(), source };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| clone_error(Errno::EINVAL))?;
    let at_recursive = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: open_tree takes a directory descriptor, a C string and flags, and returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | at_recursive,
        )
    };
    if fd < 0 {
        return Err(clone_error(Errno::last()));
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A directory under the bundle holding id-mapped copies for one start (`lower` for the overlay's layers,
/// `vol` for the volumes), needed only until the mounts made from them exist: the overlay keeps its layers,
/// and the container's mount namespace its own copies of the volumes. Dropped, it detaches its mounts and
/// removes its entries, never through a mount; what cannot be unmounted stays for [`Bundle::remove`].
///
/// [`Bundle::remove`]: crate::bundle::Bundle::remove
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Makes `dir` with `mode`: 0711 where the pod's root must reach the copies (volumes), else 0700.
    pub(crate) fn create(dir: PathBuf, mode: u32) -> Result<Self, IdmapError> {
        let create = |source| IdmapError::Create { path: dir.clone(), source };
        std::fs::create_dir(&dir).map_err(create)?;
        // Explicitly: the process's umask may have taken bits off the mode given at creation.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(create)?;
        Ok(Staging { dir })
    }

    /// Attaches an id-mapped copy of `source` as entry `index`, and returns its path.
    pub(crate) fn attach(
        &self,
        users: &PodUsers,
        index: usize,
        source: &Path,
        recursive: bool,
    ) -> Result<PathBuf, IdmapError> {
        let target = self.dir.join(index.to_string());
        users.attach_copy(source, &target, recursive)?;
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = crate::mounts::unmount_below(&[&self.dir]) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "staged id-mapped mounts stay until the container is removed");
            return;
        }
        // Each entry alone, never recursively: a mount made meanwhile must fail the removal, not be emptied.
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        for entry in entries {
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(kind) if kind.is_dir() => std::fs::remove_dir(&path),
                _ => std::fs::remove_file(&path),
            };
            if let Err(e) = removed {
                tracing::debug!(path = %path.display(), error = %e, "a staging mount point stays until the container is removed");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A user namespace like a pod's, for tests: made by `unshare` (as root), its maps written as the node
/// writes them, kept while the value lives through its holder process.
#[cfg(test)]
pub(crate) struct TestNamespace {
    holder: std::process::Child,
    pub(crate) spec: UserNamespace,
}

#[cfg(test)]
impl TestNamespace {
    pub(crate) fn new(host_id: u32) -> Self {
        let holder = std::process::Command::new("unshare").args(["--user", "sleep", "1000"]).spawn().unwrap();
        let path = PathBuf::from(format!("/proc/{}/ns/user", holder.id()));
        let own = std::fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(&path).map_or(true, |ns| ns == own) {
            assert!(std::time::Instant::now() < deadline, "unshare never made its user namespace");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{}/{map}", holder.id()), format!("0 {host_id} 65536\n")).unwrap();
        }
        TestNamespace { holder, spec: UserNamespace { path, host_id, size: 65536 } }
    }
}

#[cfg(test)]
impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_id_mapped_and_staging_never_deletes_through_them() {
        assert!(nix::unistd::geteuid().is_root(), "id-mapped mounts need root: run the tests as root");
        let namespace = TestNamespace::new(65536 * 101);
        let users = PodUsers::open(&namespace.spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("file"), "x").unwrap();
        std::os::unix::fs::chown(volume.join("file"), Some(1000), Some(1000)).unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();

        let staging = Staging::create(dir.path().join("vol"), 0o711).unwrap();
        let (copy, hosts_copy) =
            (staging.attach(&users, 0, &volume, true).unwrap(), staging.attach(&users, 1, &hosts, true).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(copy.join("file").metadata().unwrap().uid(), 65536 * 101 + 1000, "shifted into the pod's ids");
        assert_eq!(hosts_copy.metadata().unwrap().uid(), 65536 * 101, "a file, id-mapped too");
        assert_eq!(std::fs::read_to_string(&hosts_copy).unwrap(), "127.0.0.1 localhost\n");
        assert_eq!(volume.join("file").metadata().unwrap().uid(), 1000, "the source is unchanged");
        drop(staging);
        assert!(!dir.path().join("vol").exists(), "unmounted and removed");
        assert!(volume.join("file").exists() && hosts.exists(), "never through the mounts");

        let not_users = UserNamespace { path: "/proc/self/ns/net".into(), ..namespace.spec.clone() };
        assert!(matches!(PodUsers::open(&not_users), Err(IdmapError::NotUserNamespace { .. })));
        let staging = Staging::create(dir.path().join("vol"), 0o711).unwrap();
        let err = staging.attach(&users, 0, Path::new("/proc/self"), true).unwrap_err();
        assert!(matches!(err, IdmapError::Unsupported { .. }), "{err}");
        assert_eq!(err.to_string(), "the filesystem of /proc/self does not support id-mapped mounts");
    }

    #[test]
    fn only_the_pod_root_may_search_its_bundle() {
        use std::os::unix::process::CommandExt;
        assert!(nix::unistd::geteuid().is_root(), "changing users needs root: run the tests as root");
        let host_id = 65536 * 104;
        let users = PodUsers::open(&UserNamespace { path: "/proc/self/ns/user".into(), host_id, size: 65536 }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::DirBuilder::new().mode(0o700).create(&bundle).unwrap();
        std::fs::write(bundle.join("inside"), "").unwrap();
        users.grant_search(&bundle).unwrap();
        let reaches = |uid: u32| {
            let test =
                std::process::Command::new("test").arg("-e").arg(bundle.join("inside")).uid(uid).gid(uid).status();
            test.unwrap().success()
        };
        assert!(reaches(host_id), "the pod's root searches its bundle");
        assert!(!reaches(host_id + 1) && !reaches(65534), "no one else does");
        assert!(std::fs::read_dir(&bundle).is_ok(), "the agent still lists it");
        users.check_reachable(&bundle.join("inside")).unwrap();
    }

    #[test]
    fn directories_the_pod_root_cannot_search_are_named() {
        let namespace = UserNamespace { path: "/proc/self/ns/user".into(), host_id: 65536 * 101, size: 65536 };
        let users = PodUsers::open(&namespace).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir_all(private.join("run/id")).unwrap();
        for (path, mode) in [(dir.path(), 0o755), (private.as_path(), 0o700), (&private.join("run"), 0o711)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let err = users.check_reachable(&private.join("run/id/rootfs")).unwrap_err();
        assert!(matches!(err, IdmapError::Unreachable { ref dir, mode: 0o700, .. } if *dir == private), "{err}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        users.check_reachable(&private.join("run/id/rootfs")).unwrap();
    }
}
