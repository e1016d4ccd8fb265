//! Where a container's files live. Its runtime files (`config.json`, libcontainer's state, the output FIFOs,
//! exec's files, the mount point of its root) go in the shim's run directory, a tmpfs like containerd's
//! `/run`: a start makes and a removal deletes about fifteen of them, which on a disk cost tens of
//! microseconds each, and none of them needs to outlive a reboot, which the containers do not outlive either.
//! Its writable layer (the overlay's upper and work directories, or a full copy of its image where overlayfs
//! is unusable) stays on disk beside the layer cache: what a container writes is not the node's memory.

use std::collections::BTreeSet;
use std::fs::Permissions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use nix::mount::MsFlags;
use nix::sys::statfs::{TMPFS_MAGIC, statfs};

/// The shim's directories under its state directory: `layers` (the layer cache), `upper` and `work` (the
/// containers' writable layers, one directory each per container, so a start makes two directories on
/// disk rather than three), `trash` (the writable layers of removed containers, deleted in the background)
/// and `run` (the runtime files, on tmpfs). Dropped, it unmounts the tmpfs it mounted if no container is left
/// in it; one that holds containers stays for the next agent to adopt them.
#[derive(Debug)]
pub(crate) struct Dirs {
    state: PathBuf,
    run: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    trash: Trash,
    mounted: bool,
}

impl Dirs {
    /// Makes the directories, and a tmpfs on the run directory unless it is on one already (the state
    /// directory lies in a tmpfs, or an agent restarted over the one it mounted before) or holds files
    /// already (an agent that could not mount one left containers there, which a tmpfs would hide). Where
    /// no tmpfs can be mounted the run directory stays on disk: slower, not wrong.
    ///
    /// The writable layers are the agent's alone (0700: overlayfs reaches them with the credentials of its
    /// mounter, the agent); the run directory lets others search it (0711) for the containers of pods with
    /// user namespaces, whose root is an unprivileged host uid (see [`Bundle::create`]).
    pub(crate) fn create(state_dir: &Path) -> std::io::Result<Dirs> {
        let mut dirs = Dirs {
            state: state_dir.to_path_buf(),
            run: state_dir.join("run"),
            upper: state_dir.join("upper"),
            work: state_dir.join("work"),
            trash: Trash::open(state_dir.join("trash"))?,
            mounted: false,
        };
        for dir in [&dirs.run, &dirs.upper, &dirs.work] {
            std::fs::create_dir_all(dir)?;
        }
        // On the way to the run directory: searchable, not listable.
        std::fs::set_permissions(state_dir, Permissions::from_mode(RUN_DIR_MODE))?;
        for dir in [&dirs.upper, &dirs.work] {
            std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
            spread_subdirectories(dir);
        }
        dirs.mounted = mount_run_tmpfs(&dirs.run);
        std::fs::set_permissions(&dirs.run, Permissions::from_mode(RUN_DIR_MODE))?;
        Ok(dirs)
    }

    pub(crate) fn layers(&self) -> PathBuf {
        self.state.join("layers")
    }

    pub(crate) fn bundle(&self, id: &str) -> Bundle {
        Bundle {
            run: self.run.join(id),
            upper: self.upper.join(id),
            work: self.work.join(id),
            trash: self.trash.clone(),
        }
    }

    /// The ids of the containers with files in any place.
    pub(crate) fn ids(&self) -> BTreeSet<String> {
        [&self.run, &self.upper, &self.work]
            .into_iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| crate::valid_id(name))
            .collect()
    }
}

/// The run directory: searchable by the roots of pods with user namespaces, which resolve their bundles
/// from inside them, listable by none; each bundle lets in only its own pod's root.
const RUN_DIR_MODE: u32 = 0o711;

/// Mounts a tmpfs on `run` where [`Dirs::create`] says it should; whether it did.
fn mount_run_tmpfs(run: &Path) -> bool {
    if statfs(run).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC) {
        return false;
    }
    if !is_empty(run) {
        tracing::warn!(run_dir = %run.display(), "containers' runtime files are on disk: no tmpfs over them");
        return false;
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match nix::mount::mount(Some("tmpfs"), run, Some("tmpfs"), flags, Some("mode=0711")) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(run_dir = %run.display(), error = %e, "cannot mount a tmpfs: runtime files stay on disk");
            false
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        if !self.mounted || !is_empty(&self.run) {
            return;
        }
        // Detached: a container starting elsewhere in this process at that moment holds a copy of every mount
        // until it pivots into its root (EBUSY), and nothing can be using an empty run directory.
        if let Err(e) = nix::mount::umount2(&self.run, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(run_dir = %self.run.display(), error = %e, "cannot unmount the run directory");
        }
    }
}

/// ext4's `FS_TOPDIR_FL` (`chattr +T`): the subdirectories of a directory so marked are placed as top-level
/// ones are, each in a block group of its own choosing (the Orlov allocator), rather than beside their parent.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks `dir` so that each container's writable layer lands in a block group of its own. A start and a
/// removal make and delete about nine inodes there (its directories, and the ones overlayfs makes and deletes
/// in the work directory at every mount), and a journal-less ext4 skips every inode deleted in the last
/// minute when it looks for a free one (`recently_deleted` in fs/ext4/ialloc.c): all in the parent's group,
/// each start scanned past the last minute's deletions of every container, up to 4.5 ms a start when
/// containers start back to back. Where the file system has no such flag, nothing changes.
fn spread_subdirectories(dir: &Path) {
    let marked = std::fs::File::open(dir).and_then(|dir| {
        let flags = inode_flags(&dir)?;
        if flags & FS_TOPDIR_FL != 0 {
            return Ok(());
        }
        let flags = flags | FS_TOPDIR_FL;
        // SAFETY: the ioctl reads one int at a pointer valid for the call.
        match unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    if let Err(e) = marked {
        tracing::debug!(dir = %dir.display(), error = %e, "containers' writable layers are not spread over the disk");
    }
}

/// The inode flags `lsattr` shows, where the file system has them.
fn inode_flags(file: &std::fs::File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: the ioctl writes one int at a pointer valid for the call.
    match unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } {
        0 => Ok(flags),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Where removed containers' writable layers go to be deleted by a thread of their own. Deleting a
/// directory frees its block, and on a file system mounted with `discard` and no journal (this VM's root)
/// each free waits for the disk to discard it: five directories per container, 1-3 ms of the removal that a
/// container's exit waits for. containerd likewise removes snapshots in the background, after the container.
/// The thread ends once the last `Trash` is dropped; what a stopped agent left there is deleted at the
/// next start.
#[derive(Clone, Debug)]
struct Trash {
    dir: PathBuf,
    sweeper: mpsc::Sender<PathBuf>,
}

/// Numbers the directories moved to the trash: a container's upper and work directories share its id, and
/// an id may come back before its last layer is gone.
static TRASHED: AtomicU64 = AtomicU64::new(0);

impl Trash {
    fn open(dir: PathBuf) -> std::io::Result<Trash> {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700))?;
        let (sweeper, queue) = mpsc::channel::<PathBuf>();
        std::thread::Builder::new().name("oci-trash".into()).spawn(move || {
            for dir in queue {
                remove_now(&dir);
            }
        })?;
        let trash = Trash { dir, sweeper };
        for left in std::fs::read_dir(&trash.dir)?.flatten() {
            trash.sweep(left.path());
        }
        Ok(trash)
    }

    /// Moves `dir` out of the way at once and deletes it in the background; deletes it here where it
    /// cannot be moved (another file system).
    fn discard(&self, dir: &Path) {
        let Some(name) = dir.file_name().and_then(|name| name.to_str()) else { return remove_now(dir) };
        let trashed = self.dir.join(format!("{name}.{}", TRASHED.fetch_add(1, Ordering::Relaxed)));
        match std::fs::rename(dir, &trashed) {
            Ok(()) => self.sweep(trashed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => remove_now(dir),
        }
    }

    fn sweep(&self, dir: PathBuf) {
        if let Err(mpsc::SendError(dir)) = self.sweeper.send(dir) {
            remove_now(&dir);
        }
    }
}

fn remove_now(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the container's files");
    }
}

/// One container's directories; `run` is its OCI bundle.
#[derive(Clone, Debug)]
pub(crate) struct Bundle {
    run: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    trash: Trash,
}

impl Bundle {
    /// The OCI bundle: `config.json`, the output FIFOs, exec's files.
    pub(crate) fn dir(&self) -> &Path {
        &self.run
    }

    /// libcontainer's state directory.
    pub(crate) fn state(&self) -> PathBuf {
        self.run.join("state")
    }

    /// Where the container's root is mounted (an overlay, or a copy of the image bound there).
    pub(crate) fn mount_point(&self) -> PathBuf {
        self.run.join("rootfs")
    }

    /// The overlay's upper directory, or the copy of the image where there is no overlay.
    pub(crate) fn upper(&self) -> &Path {
        &self.upper
    }

    /// The overlay's work directory.
    pub(crate) fn work(&self) -> &Path {
        &self.work
    }

    /// Where id-mapped copies of the image's layers are attached while the overlay is mounted
    /// ([`crate::idmap::Staging`]).
    pub(crate) fn lower_staging(&self) -> PathBuf {
        self.run.join("lower")
    }

    /// Where id-mapped copies of the volumes are attached until the container's init has mounted them.
    pub(crate) fn volume_staging(&self) -> PathBuf {
        self.run.join("vol")
    }

    /// Makes the runtime directories of a new container, the agent's alone (the root of a pod with a user
    /// namespace is let in by [`crate::idmap::PodUsers::grant_search`]).
    pub(crate) fn create(&self) -> std::io::Result<()> {
        let private = |dir: &Path| std::fs::DirBuilder::new().mode(0o700).create(dir);
        private(&self.run)?;
        std::fs::create_dir(self.mount_point())?;
        private(&self.state())
    }

    pub(crate) fn exists(&self) -> bool {
        [&self.run, &self.upper, &self.work].iter().any(|dir| dir.exists())
    }

    /// Unmounts what is mounted under the container's directories (its root; id-mapped copies a crash left
    /// staged) and removes them: the runtime files at once, the writable layer through the trash. While
    /// anything stays mounted there nothing is removed, since deleting through a mount deletes the mounted
    /// files (a volume's); the next removal of the container (an agent restart's sweep) tries again.
    pub(crate) fn remove(&self) {
        if let Err(e) = crate::mounts::unmount_below(&[&self.run, &self.upper, &self.work]) {
            let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
            tracing::warn!(run_dir = %self.run.display(), error = %e, %cause, "the container's files stay: something is still mounted among them");
            return;
        }
        remove_now(&self.run);
        for dir in [&self.upper, &self.work] {
            self.trash.discard(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_is_a_tmpfs_released_once_empty() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        if statfs(dir.path()).unwrap().filesystem_type() == TMPFS_MAGIC {
            eprintln!("skipping: the temporary directory is a tmpfs already");
            return;
        }
        let state = dir.path().join("oci");
        let run = state.join("run");
        let mounts = || std::fs::read_to_string("/proc/mounts").unwrap().matches(run.to_str().unwrap()).count();
        let dirs = Dirs::create(&state).unwrap();
        assert_eq!(statfs(&run).unwrap().filesystem_type(), TMPFS_MAGIC);
        let bundle = dirs.bundle("one");
        std::fs::create_dir_all(bundle.state()).unwrap();
        std::fs::create_dir_all(bundle.upper().join("etc")).unwrap();
        let two = dirs.bundle("two");
        std::fs::create_dir_all(two.work()).unwrap();
        assert_eq!(dirs.ids(), ["one", "two"].map(String::from).into(), "ids from every place, once each");

        drop(dirs);
        assert_eq!(mounts(), 1, "kept while a container has files in it");
        let again = Dirs::create(&state).unwrap();
        assert_eq!(mounts(), 1, "a restarted shim finds its tmpfs and its containers");
        assert!(bundle.state().exists());
        for bundle in [bundle, two] {
            bundle.remove();
            assert!(!bundle.exists());
        }
        drop(again);
        assert_eq!(mounts(), 1, "left to the shim that mounted it");
        let _ = nix::mount::umount2(&run, nix::mount::MntFlags::MNT_DETACH);

        std::fs::create_dir(run.join("on-disk")).unwrap();
        let on_disk = Dirs::create(&state).unwrap();
        assert_eq!(mounts(), 0, "no tmpfs hides the files of containers on disk");
        std::fs::remove_dir(run.join("on-disk")).unwrap();
        drop(on_disk);

        let fresh = Dirs::create(&state).unwrap();
        assert_eq!(mounts(), 1);
        drop(fresh);
        assert_eq!(mounts(), 0, "unmounted by the shim that mounted it, once empty");
    }

    #[test]
    fn a_removal_never_deletes_through_what_is_mounted_in_the_bundle() {
        use std::os::unix::fs::MetadataExt;
        assert!(nix::unistd::geteuid().is_root(), "bind mounts need root: run the tests as root");
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::create(&dir.path().join("oci")).unwrap();
        let bundle = dirs.bundle("one");
        bundle.create().unwrap();
        let mode = |path: &Path| path.metadata().unwrap().mode() & 0o7777;
        assert_eq!(mode(&dirs.run), 0o711, "searchable, not listable");
        let private = [&dirs.upper, &dirs.work, &bundle.dir().to_path_buf(), &bundle.state()].map(|dir| mode(dir));
        assert_eq!(private, [0o700; 4]);
        // What a crash between staging a volume and the container's start leaves.
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("data"), "kept").unwrap();
        let staged = bundle.volume_staging().join("0");
        std::fs::create_dir_all(&staged).unwrap();
        nix::mount::mount(Some(&volume), &staged, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        bundle.remove();
        assert!(!bundle.exists());
        assert_eq!(std::fs::read_to_string(volume.join("data")).unwrap(), "kept", "the volume keeps its files");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(bundle.dir().to_str().unwrap()), "nothing of the bundle stays mounted");
    }

    #[test]
    fn removed_writable_layers_leave_at_once_and_are_deleted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let trash_dir = dir.path().join("trash");
        std::fs::create_dir_all(trash_dir.join("left.0/etc")).unwrap();
        let trash = Trash::open(trash_dir.clone()).unwrap();
        let upper = dir.path().join("upper/one");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/written"), "x").unwrap();
        trash.discard(&upper);
        assert!(!upper.exists(), "moved out of the container's place at once");
        std::fs::create_dir_all(&upper).unwrap();
        trash.discard(&upper);
        trash.discard(&dir.path().join("upper/never-made"));
        drop(trash);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(&trash_dir).unwrap().next().is_some() {
            assert!(std::time::Instant::now() < deadline, "the trash is emptied, a stopped agent's leftovers too");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!upper.exists());
    }

    #[test]
    fn writable_layers_are_spread_over_an_ext4_disk() {
        let dir = tempfile::tempdir().unwrap();
        if statfs(dir.path()).unwrap().filesystem_type() != nix::sys::statfs::EXT4_SUPER_MAGIC {
            eprintln!("skipping: the temporary directory is not on ext4");
            return;
        }
        let dirs = Dirs::create(&dir.path().join("oci")).unwrap();
        for parent in [&dirs.upper, &dirs.work] {
            let flags = inode_flags(&std::fs::File::open(parent).unwrap()).unwrap();
            assert_ne!(flags & FS_TOPDIR_FL, 0, "{} is marked as a top directory", parent.display());
        }
    }
}
