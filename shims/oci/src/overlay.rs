//! Copy-on-write root filesystems: every layer is unpacked once, by digest, into the shim's layer cache and
//! shared by all containers of all images that have it; each container gets an overlayfs mount of its
//! image's layers with an upper and a work directory of its own on disk. Where overlayfs cannot be
//! mounted (no overlay module, an upper directory on a filesystem overlayfs refuses, too many layers for
//! one mount's options), the container gets a full copy of its layers instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::mount::MsFlags;
use skiff_shim::{Layer, ShimError};

use crate::bundle::Bundle;
use crate::idmap::{PodUsers, Staging};
use crate::rootfs::{self, Whiteouts};

/// The mount options overlayfs accepts fit in one page.
const MAX_MOUNT_OPTIONS: usize = 4000;
const VOLATILE: &str = ",volatile";
/// Set once a mount without `volatile` worked where one with it was refused.
static VOLATILE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Names the temporary directory each unpack writes to before it is renamed into place.
static NEXT_UNPACK: AtomicU64 = AtomicU64::new(0);

/// Unpacked layers, one directory per layer digest.
pub(crate) struct LayerCache {
    dir: PathBuf,
}

/// How a container's root filesystem was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rootfs {
    Overlay,
    Copy,
}

impl LayerCache {
    pub(crate) fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // The agent's alone: overlayfs reaches its layers with its mounter's credentials, and containers in
        // a user namespace of their pod see them through id-mapped copies under their bundles.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // A crash during an unpack leaves its temporary directory behind; nothing else writes here yet.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".unpack-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(LayerCache { dir })
    }

    /// The unpacked directory of `layer`, unpacking it on first use. Two containers starting at once may
    /// both unpack it; the first rename wins and the other copy is dropped.
    fn layer_dir(&self, layer: &Layer) -> Result<PathBuf, ShimError> {
        let name = cache_name(&layer.digest).ok_or_else(|| ShimError::Setup {
            message: format!("layer digest {:?} cannot name a cache directory", layer.digest),
            source: None,
        })?;
        let dir = self.dir.join(name);
        if dir.is_dir() {
            return Ok(dir);
        }
        let n = NEXT_UNPACK.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".unpack-{}-{n}", std::process::id()));
        let io = |what: &str, path: &Path, e: std::io::Error| ShimError::Setup {
            message: format!("cannot {what} {}: {e}", path.display()),
            source: Some(Box::new(e)),
        };
        std::fs::create_dir(&tmp).map_err(|e| io("create", &tmp, e))?;
        let unpacked = rootfs::unpack_layer(layer, &tmp, Whiteouts::Overlay).and_then(|()| {
            std::fs::rename(&tmp, &dir).or_else(|e| if dir.is_dir() { Ok(()) } else { Err(io("rename into", &dir, e)) })
        });
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        unpacked.map(|()| dir)
    }

    /// Removes the unpacked layers whose digests are not in `live`. The images of running containers are
    /// live, so no mounted overlay loses a lower layer.
    pub(crate) fn release(&self, live: &std::collections::HashSet<String>) {
        let keep: std::collections::HashSet<String> = live.iter().filter_map(|d| cache_name(d)).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&name) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(layer = %name, "removed an unpacked layer no image needs"),
                Err(e) => tracing::warn!(layer = %name, error = %e, "cannot remove an unpacked layer"),
            }
        }
    }

    /// Makes the container's root at [`Bundle::mount_point`] (which must exist): an overlay of the cached
    /// layers, else a copy of them bound there. With the pod's user namespace, the layers are seen through
    /// id-mapped mounts and the copy is shifted into the pod's ids.
    pub(crate) fn prepare(
        &self,
        layers: &[Layer],
        bundle: &Bundle,
        users: Option<&PodUsers>,
    ) -> Result<Rootfs, ShimError> {
        match self.mount_overlay(layers, bundle, users) {
            Ok(()) => Ok(Rootfs::Overlay),
            Err(e) => {
                tracing::debug!(error = %e, "overlayfs is not usable here: unpacking a full copy of the image");
                for dir in [bundle.upper(), bundle.work()] {
                    let _ = std::fs::remove_dir_all(dir);
                }
                let copy = bundle.upper();
                std::fs::create_dir_all(copy).map_err(|e| create_error(copy, e))?;
                rootfs::unpack_layers(layers, copy)?;
                if let Some(users) = users {
                    shift_ids(copy, users.host_id(), users.size())?;
                }
                // Bound at the mount point, which the pod's root can reach: the writable layers' directory
                // stays private.
                let root = bundle.mount_point();
                nix::mount::mount(Some(copy), &root, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
                    ShimError::Setup {
                        message: format!("cannot bind {} at {}: {e}", copy.display(), root.display()),
                        source: Some(Box::new(e)),
                    }
                })?;
                Ok(Rootfs::Copy)
            }
        }
    }

    fn mount_overlay(&self, layers: &[Layer], bundle: &Bundle, users: Option<&PodUsers>) -> Result<(), ShimError> {
        let mut lower = Vec::with_capacity(layers.len());
        // overlayfs lists the top layer first.
        for layer in layers.iter().rev() {
            lower.push(self.layer_dir(layer)?);
        }
        let (upper, work) = (bundle.upper(), bundle.work());
        for dir in [upper, work] {
            std::fs::create_dir(dir).map_err(|e| create_error(dir, e))?;
        }
        // The layers stay owned by the host's ids, shared by every container: each gets id-mapped copies of
        // them, attached only until the overlay is mounted (it keeps its own references). The upper
        // directory is its root directory and must be the pod root's before the mount: the overlay's root
        // inode keeps the owner it had then.
        let _staging = match users {
            Some(users) => {
                let staging = Staging::create(bundle.lower_staging(), 0o700)?;
                for (index, layer) in lower.iter_mut().enumerate() {
                    *layer = staging.attach(users, index, layer, false)?;
                }
                let owner = Some(users.host_id());
                std::os::unix::fs::chown(upper, owner, owner).map_err(|e| ShimError::Setup {
                    message: format!("cannot give {} to the pod's root: {e}", upper.display()),
                    source: Some(Box::new(e)),
                })?;
                Some(staging)
            }
            None => None,
        };
        let options = overlay_options(&lower, upper, work).ok_or_else(|| ShimError::Setup {
            message: "the layer paths do not fit overlayfs mount options".into(),
            source: None,
        })?;
        // The upper directory dies with the container, so nothing of it needs to reach the disk: `volatile`
        // (Linux 5.10) drops overlayfs's syncs of it, which made every unmount wait for the upper filesystem.
        // Older kernels refuse the option (EINVAL): the first mount that then works without it settles that
        // for the process. A work directory once mounted volatile cannot be mounted again, and is not: every
        // container's is new.
        let rootfs = bundle.mount_point();
        let mount = |options: &str| {
            nix::mount::mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(options))
        };
        let setup_error = |e: nix::errno::Errno| ShimError::Setup {
            message: format!("cannot mount overlayfs: {e}"),
            source: Some(Box::new(e)),
        };
        if !VOLATILE_REFUSED.load(Ordering::Relaxed) {
            match mount(&format!("{options}{VOLATILE}")) {
                Err(nix::errno::Errno::EINVAL) => {}
                mounted => return mounted.map_err(setup_error),
            }
        }
        mount(&options).map_err(setup_error)?;
        VOLATILE_REFUSED.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Gives the pod's ids to a copied image: host id `k` becomes `host_id + k`, which the pod sees as `k`, as
/// an id-mapped overlay would show it. Ids the pod does not have (`size` and above) become the host's
/// overflow id, `nobody` (65534, below every pod's range), so they show as `nobody` inside, as unmapped ids
/// of an id-mapped layer do; they are not refused, since the overlay path would not refuse them either.
fn shift_ids(root: &Path, host_id: u32, size: u32) -> Result<(), ShimError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32| if id < size { host_id + id } else { OVERFLOW_ID };
    let fail = |path: &Path, e: std::io::Error| ShimError::Setup {
        message: format!("cannot give {} to the pod's ids: {e}", path.display()),
        source: Some(Box::new(e)),
    };
    // Hard links share an inode: shifted once.
    let mut shifted = std::collections::HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = path.symlink_metadata().map_err(|e| fail(&path, e))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| fail(&path, e))? {
                pending.push(entry.map_err(|e| fail(&path, e))?.path());
            }
        }
        if meta.nlink() > 1 && !meta.is_dir() && !shifted.insert((meta.dev(), meta.ino())) {
            continue;
        }
        std::os::unix::fs::lchown(&path, Some(shift(meta.uid())), Some(shift(meta.gid())))
            .map_err(|e| fail(&path, e))?;
        // chown clears the set-user-ID and set-group-ID bits, root's included.
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| fail(&path, e))?;
        }
    }
    Ok(())
}

/// The host's overflow id (`/proc/sys/kernel/overflowuid`'s default): what unmapped ids look like.
const OVERFLOW_ID: u32 = 65534;

fn create_error(dir: &Path, e: std::io::Error) -> ShimError {
    ShimError::Setup { message: format!("cannot create {}: {e}", dir.display()), source: Some(Box::new(e)) }
}

/// `sha256:<hex>` → `sha256-<hex>`: only characters that are safe both as a file name and in overlayfs
/// options (which split on `,` and `:`).
fn cache_name(digest: &str) -> Option<String> {
    let (algorithm, hex) = digest.split_once(':')?;
    let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (safe(algorithm) && safe(hex)).then(|| format!("{algorithm}-{hex}"))
}

fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> Option<String> {
    let paths: Vec<&str> =
        lower.iter().map(|p| p.to_str()).chain([upper.to_str(), work.to_str()]).collect::<Option<_>>()?;
    if paths.iter().any(|p| p.contains([',', ':', '\\'])) {
        return None;
    }
    let (lower, rest) = paths.split_at(paths.len() - 2);
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), rest[0], rest[1]);
    (options.len() + VOLATILE.len() <= MAX_MOUNT_OPTIONS).then_some(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Dirs;

    fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> Layer {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_size(content.len() as u64);
            builder.append_data(&mut header, path, content.as_bytes()).unwrap();
        }
        let path = dir.join(name);
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        Layer { media_type: "application/vnd.oci.image.layer.v1.tar".into(), digest: format!("sha256:{name}"), path }
    }

    #[test]
    fn an_overlay_of_cached_layers_applies_whiteouts_and_keeps_layers_shared() {
        assert!(nix::unistd::geteuid().is_root(), "mounting overlayfs needs root: run the tests as root");
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().join("layers")).unwrap();
        let lower = layer(dir.path(), "aa", &[("etc/a", "a"), ("etc/b", "b"), ("var/old", "old")]);
        let upper = layer(dir.path(), "bb", &[("etc/.wh.a", ""), ("var/.wh..wh..opq", ""), ("var/new", "new")]);
        let layers = [lower, upper];
        let dirs = Dirs::create(&dir.path().join("oci")).unwrap();
        let bundles = ["one", "two"].map(|id| dirs.bundle(id));
        for bundle in &bundles {
            bundle.create().unwrap();
            assert_eq!(cache.prepare(&layers, bundle, None).unwrap(), Rootfs::Overlay);
        }
        let root = bundles[0].mount_point();
        assert!(!root.join("etc/a").exists(), "a whiteout hides the lower file");
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        assert!(!root.join("var/old").exists(), "an opaque directory hides the lower contents");
        assert_eq!(std::fs::read_to_string(root.join("var/new")).unwrap(), "new");
        std::fs::write(root.join("etc/b"), "changed").unwrap();
        assert_eq!(std::fs::read_to_string(bundles[1].mount_point().join("etc/b")).unwrap(), "b", "copy-on-write");
        assert_eq!(std::fs::read_to_string(dir.path().join("layers/sha256-aa/etc/b")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(bundles[0].upper().join("etc/b")).unwrap(), "changed", "written to disk");
        for bundle in &bundles {
            bundle.remove();
        }
        drop(dirs);
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "unmounted");
    }

    /// The root of a one-layer image prepared in `oci_dir` for a pod whose ids start at `host_id`: it is
    /// `expected` (an overlay, or a copy where overlayfs cannot be used), the pod's root owns the image's
    /// files, the layer cache stays the host's, and nothing stays mounted once the bundle is removed.
    fn prepare_for_a_pod(host_id: u32, oci_dir: &str, expected: Rootfs) {
        use std::os::unix::fs::MetadataExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "mounts, id-mapped mounts and chown need root: run the tests as root"
        );
        let namespace = crate::idmap::TestNamespace::new(host_id);
        let users = PodUsers::open(&namespace.spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().join("layers")).unwrap();
        let layers = [layer(dir.path(), "aa", &[("etc/passwd", "root:x:0:0::/:/bin/sh\n")])];
        let dirs = Dirs::create(&dir.path().join(oci_dir)).unwrap();
        let bundle = dirs.bundle("one");
        bundle.create().unwrap();
        assert_eq!(cache.prepare(&layers, &bundle, Some(&users)).unwrap(), expected);
        let root = bundle.mount_point();
        assert_eq!(std::fs::read_to_string(root.join("etc/passwd")).unwrap(), "root:x:0:0::/:/bin/sh\n");
        assert_eq!(root.join("etc/passwd").metadata().unwrap().uid(), host_id, "the pod's root owns the image's files");
        assert_eq!(root.metadata().unwrap().uid(), host_id, "and the root directory");
        let cached = dir.path().join("layers/sha256-aa/etc/passwd");
        assert_eq!(cached.metadata().unwrap().uid(), 0, "the cache is the host's");
        assert!(!bundle.lower_staging().exists(), "no staged layer is left once the root is ready");
        bundle.remove();
        assert!(!bundle.exists());
        drop(dirs);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "unmounted");
    }

    #[test]
    fn in_a_pod_user_namespace_the_layers_are_id_mapped_and_stay_the_hosts() {
        prepare_for_a_pod(65536 * 102, "oci", Rootfs::Overlay);
    }

    #[test]
    fn where_overlayfs_is_unusable_a_copy_with_the_pods_ids_is_bound_at_the_mount_point() {
        // overlayfs options cannot name a directory with a comma in it.
        prepare_for_a_pod(65536 * 103, "oci,copy", Rootfs::Copy);
    }

    #[test]
    fn a_copied_image_gets_the_pods_ids() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert!(nix::unistd::geteuid().is_root(), "chown needs root: run the tests as root");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/su"), "").unwrap();
        std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(root.join("bin/su"), root.join("bin/su2")).unwrap();
        std::fs::write(root.join("app"), "").unwrap();
        std::os::unix::fs::chown(root.join("app"), Some(1000), Some(70_000)).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("link")).unwrap();
        let host_id = 65536 * 3;
        shift_ids(root, host_id, 65536).unwrap();
        let ids = |path: &str| {
            let meta = root.join(path).symlink_metadata().unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(ids(""), (host_id, host_id));
        assert_eq!(ids("bin/su"), (host_id, host_id), "hard links are shifted once");
        assert_eq!(root.join("bin/su").metadata().unwrap().mode() & 0o7777, 0o4755, "set-user-ID kept");
        assert_eq!(ids("app"), (host_id + 1000, OVERFLOW_ID), "ids the pod does not have become nobody");
        assert_eq!(ids("link"), (host_id, host_id), "links themselves, not what they name");
    }

    #[test]
    fn layers_no_image_needs_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().join("layers")).unwrap();
        let (kept, dropped) = (layer(dir.path(), "aa", &[("a", "a")]), layer(dir.path(), "bb", &[("b", "b")]));
        let (kept_dir, dropped_dir) = (cache.layer_dir(&kept).unwrap(), cache.layer_dir(&dropped).unwrap());
        cache.release(&["sha256:aa".to_string()].into());
        assert!(kept_dir.join("a").exists());
        assert!(!dropped_dir.exists());
    }

    #[test]
    fn cache_names_are_safe() {
        assert_eq!(cache_name("sha256:abc123").as_deref(), Some("sha256-abc123"));
        for bad in ["", "sha256:", "abc", "sha256:../x", "sha256:a,b", "sha256:a:b", "sha 256:a"] {
            assert_eq!(cache_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn overlay_options_list_the_top_layer_first_and_refuse_bad_paths() {
        let lower = [PathBuf::from("/c/top"), PathBuf::from("/c/base")];
        assert_eq!(
            overlay_options(&lower, Path::new("/b/upper"), Path::new("/b/work")).as_deref(),
            Some("lowerdir=/c/top:/c/base,upperdir=/b/upper,workdir=/b/work")
        );
        assert_eq!(overlay_options(&lower, Path::new("/b,x/upper"), Path::new("/b/work")), None);
        let many: Vec<PathBuf> = (0..100).map(|i| PathBuf::from(format!("/a/long/cache/dir/sha256-{i:064}"))).collect();
        assert_eq!(overlay_options(&many, Path::new("/u"), Path::new("/w")), None);
    }
}
