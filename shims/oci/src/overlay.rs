//! Copy-on-write root filesystems: every layer is unpacked once, by digest, into the shim's layer cache and
//! shared by all containers of all images that have it; each container gets an overlayfs mount of its
//! image's layers with an upper and a work directory of its own on disk. Where overlayfs cannot be
//! mounted (no overlay module, an upper directory on a filesystem overlayfs refuses, too many layers for
//! one mount's options), the container gets a full copy of its layers instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags};
use skiff_shim::{Layer, ShimError};

use crate::bundle::Bundle;
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

    /// Makes the container's root (see [`Bundle::root`]; the mount point must exist): an overlay of the
    /// cached layers, else a copy of them.
    pub(crate) fn prepare(&self, layers: &[Layer], bundle: &Bundle) -> Result<Rootfs, ShimError> {
        match self.mount_overlay(layers, bundle) {
            Ok(()) => Ok(Rootfs::Overlay),
            Err(e) => {
                tracing::debug!(error = %e, "overlayfs is not usable here: unpacking a full copy of the image");
                for dir in [bundle.upper(), bundle.work()] {
                    let _ = std::fs::remove_dir_all(dir);
                }
                let rootfs = bundle.root(Rootfs::Copy);
                std::fs::create_dir_all(&rootfs).map_err(|e| create_error(&rootfs, e))?;
                rootfs::unpack_layers(layers, &rootfs)?;
                Ok(Rootfs::Copy)
            }
        }
    }

    fn mount_overlay(&self, layers: &[Layer], bundle: &Bundle) -> Result<(), ShimError> {
        let mut lower = Vec::with_capacity(layers.len());
        // overlayfs lists the top layer first.
        for layer in layers.iter().rev() {
            lower.push(self.layer_dir(layer)?);
        }
        let (upper, work) = (bundle.upper(), bundle.work());
        for dir in [upper, work] {
            std::fs::create_dir(dir).map_err(|e| create_error(dir, e))?;
        }
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

fn create_error(dir: &Path, e: std::io::Error) -> ShimError {
    ShimError::Setup { message: format!("cannot create {}: {e}", dir.display()), source: Some(Box::new(e)) }
}

/// Unmounts a container's overlay root, if it has one (a copied root is no mount: EINVAL).
pub(crate) fn unmount(rootfs: &Path) {
    match nix::mount::umount2(rootfs, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot unmount the container's root"),
    }
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
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mounting overlayfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().join("layers")).unwrap();
        let lower = layer(dir.path(), "aa", &[("etc/a", "a"), ("etc/b", "b"), ("var/old", "old")]);
        let upper = layer(dir.path(), "bb", &[("etc/.wh.a", ""), ("var/.wh..wh..opq", ""), ("var/new", "new")]);
        let layers = [lower, upper];
        let dirs = Dirs::create(&dir.path().join("oci")).unwrap();
        let bundles = ["one", "two"].map(|id| dirs.bundle(id));
        for bundle in &bundles {
            std::fs::create_dir_all(bundle.mount_point()).unwrap();
            assert_eq!(cache.prepare(&layers, bundle).unwrap(), Rootfs::Overlay);
        }
        let root = bundles[0].root(Rootfs::Overlay);
        assert!(!root.join("etc/a").exists(), "a whiteout hides the lower file");
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        assert!(!root.join("var/old").exists(), "an opaque directory hides the lower contents");
        assert_eq!(std::fs::read_to_string(root.join("var/new")).unwrap(), "new");
        std::fs::write(root.join("etc/b"), "changed").unwrap();
        assert_eq!(
            std::fs::read_to_string(bundles[1].root(Rootfs::Overlay).join("etc/b")).unwrap(),
            "b",
            "copy-on-write"
        );
        assert_eq!(std::fs::read_to_string(dir.path().join("layers/sha256-aa/etc/b")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(bundles[0].upper().join("etc/b")).unwrap(), "changed", "written to disk");
        for bundle in &bundles {
            bundle.remove();
        }
        drop(dirs);
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "unmounted");
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
