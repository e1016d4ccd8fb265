//! Unpacking image layers: each layer once into the shared layer cache (whiteouts kept as overlayfs
//! whiteouts), or all layers stacked into one directory where overlayfs cannot be used.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use skiff_shim::{Layer, ShimError};

/// The prefix of an OCI whiteout file: `a/.wh.b` deletes `a/b` of the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// An opaque whiteout: `a/.wh..wh..opq` hides everything the layers below put in `a`.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The first two bytes of a gzip stream, checked so a layer compressed differently from what its media type
/// says still unpacks.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The first four bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The xattr overlayfs reads to hide a lower directory's contents.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// What a layer's whiteouts become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Whiteouts {
    /// Applied: the hidden files of the layers below (already in the directory) are deleted.
    Apply,
    /// Kept for overlayfs: a 0/0 character device for a deleted file, `trusted.overlay.opaque=y` on an
    /// opaque directory; the layer's directory stays independent of the layers below.
    Overlay,
}

/// Unpacks `layers` in order into `rootfs` (which must exist), applying each layer's whiteouts to the
/// layers below.
pub(crate) fn unpack_layers(layers: &[Layer], rootfs: &Path) -> Result<(), ShimError> {
    for layer in layers {
        unpack_layer(layer, rootfs, Whiteouts::Apply)?;
    }
    Ok(())
}

fn layer_name(layer: &Layer) -> String {
    if layer.digest.is_empty() { layer.path.display().to_string() } else { layer.digest.clone() }
}

/// Unpacks one layer into `dir` (which must exist).
pub(crate) fn unpack_layer(layer: &Layer, dir: &Path, whiteouts: Whiteouts) -> Result<(), ShimError> {
    let name = layer_name(layer);
    let file = File::open(&layer.path).map_err(|e| ShimError::Setup {
        message: format!("cannot open layer {name} at {}: {e}", layer.path.display()),
        source: Some(Box::new(e)),
    })?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(|e| ShimError::Setup {
        message: format!("cannot read layer {name}: {e}"),
        source: Some(Box::new(e)),
    })?;
    let reader: Box<dyn Read> = if head.starts_with(&GZIP_MAGIC) {
        Box::new(GzDecoder::new(reader))
    } else if head.starts_with(&ZSTD_MAGIC) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(reader)
            .map_err(|e| ShimError::InvalidImage(format!("layer {name} is not valid zstd: {e}")))?;
        Box::new(decoder)
    } else {
        Box::new(reader)
    };
    let invalid = |e: std::io::Error| ShimError::InvalidImage(format!("layer {name} is not a valid tar archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let path = entry.path().map_err(invalid)?.into_owned();
        let Some(relative) = relative_path(&path) else {
            tracing::warn!(layer = %name, path = %path.display(), "skipping a layer entry outside the root");
            continue;
        };
        let file_name = relative.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = relative.parent().unwrap_or(Path::new(""));
            let target = if file_name == OPAQUE_WHITEOUT {
                safe_join(dir, parent)
            } else {
                safe_join(dir, &parent.join(hidden))
            };
            if let Some(target) = target {
                let applied = match (whiteouts, file_name == OPAQUE_WHITEOUT) {
                    (Whiteouts::Apply, true) => clear_dir(&target),
                    (Whiteouts::Apply, false) => remove_any(&target),
                    (Whiteouts::Overlay, true) => mark_opaque(&target),
                    (Whiteouts::Overlay, false) => overlay_whiteout(&target),
                };
                applied.map_err(|e| setup(&name, &target, e))?;
            }
            continue;
        }
        // A non-directory replacing a directory of a lower layer: tar would fail to overwrite it.
        if !entry.header().entry_type().is_dir()
            && let Some(target) = safe_join(dir, &relative)
            && target.symlink_metadata().is_ok_and(|m| m.is_dir())
        {
            std::fs::remove_dir_all(&target).map_err(|e| setup(&name, &target, e))?;
        }
        // unpack_in refuses entries that would land outside `dir` (through `..` or a symlink).
        entry.unpack_in(dir).map_err(|e| ShimError::Setup {
            message: format!("cannot unpack {} of layer {name}: {e}", relative.display()),
            source: Some(Box::new(e)),
        })?;
    }
    Ok(())
}

/// Marks a directory of an overlay layer opaque, creating it when the layer has no entry of its own for it.
fn mark_opaque(dir: &Path) -> std::io::Result<()> {
    if dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    xattr::set(dir, OVERLAY_OPAQUE, b"y")
}

/// An overlayfs whiteout: a character device with device number 0/0 where the hidden file was.
fn overlay_whiteout(path: &Path) -> std::io::Result<()> {
    remove_any(path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
        .map_err(std::io::Error::from)
}

fn setup(layer: &str, path: &Path, e: std::io::Error) -> ShimError {
    ShimError::Setup {
        message: format!("cannot apply a whiteout of layer {layer} at {}: {e}", path.display()),
        source: Some(Box::new(e)),
    }
}

/// The entry's path relative to the root, or None when it climbs out with `..`.
fn relative_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `rootfs/relative`, or None when a directory on the way is a symlink: a whiteout must never follow a
/// link planted by a lower layer and delete something of the host.
fn safe_join(rootfs: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = rootfs.to_path_buf();
    let parts: Vec<_> = relative.components().collect();
    for (i, component) in parts.iter().enumerate() {
        let Component::Normal(part) = component else { return None };
        path.push(part);
        if i + 1 < parts.len() && path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            return None;
        }
    }
    Some(path)
}

/// Removes a file, link or directory tree; a missing path is fine.
fn remove_any(path: &Path) -> std::io::Result<()> {
    let result = match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Empties a directory, keeping it; a missing or non-directory path is left alone.
fn clear_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    for child in std::fs::read_dir(dir)? {
        remove_any(&child?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    enum Item<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn layer(dir: &Path, name: &str, items: &[Item], gzip: bool) -> Layer {
        let path = dir.join(name);
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match item {
                Item::File(p, content) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(content.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, p, content.as_bytes()).unwrap();
                }
                Item::Dir(p) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, p, &[][..]).unwrap();
                }
                Item::Link(p, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, p, target).unwrap();
                }
            }
        }
        let bytes = builder.into_inner().unwrap();
        let bytes = if gzip {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            std::io::Write::write_all(&mut encoder, &bytes).unwrap();
            encoder.finish().unwrap()
        } else {
            bytes
        };
        std::fs::write(&path, bytes).unwrap();
        Layer { media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(), digest: String::new(), path }
    }

    #[test]
    fn layers_stack_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let lower = layer(
            dir.path(),
            "l1",
            &[
                Item::Dir("etc"),
                Item::File("etc/a", "a"),
                Item::File("etc/b", "b"),
                Item::Dir("opt"),
                Item::File("opt/x", "x"),
                Item::Dir("var"),
                Item::File("var/old", "old"),
                Item::Link("bin", "usr/bin"),
            ],
            true,
        );
        let upper = layer(
            dir.path(),
            "l2",
            &[
                Item::File("etc/.wh.a", ""),
                Item::File("etc/b", "b2"),
                Item::File("opt", "now a file"),
                Item::File("var/.wh..wh..opq", ""),
                Item::File("var/new", "new"),
            ],
            false,
        );
        unpack_layers(&[lower, upper], &rootfs).unwrap();
        assert!(!rootfs.join("etc/a").exists());
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/b")).unwrap(), "b2");
        assert_eq!(std::fs::read_to_string(rootfs.join("opt")).unwrap(), "now a file");
        assert!(!rootfs.join("var/old").exists());
        assert_eq!(std::fs::read_to_string(rootfs.join("var/new")).unwrap(), "new");
        assert!(!rootfs.join("var/.wh..wh..opq").exists());
        assert_eq!(std::fs::read_link(rootfs.join("bin")).unwrap(), Path::new("usr/bin"));
    }

    #[test]
    fn whiteouts_never_follow_symlinks_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep").unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let lower = layer(dir.path(), "l1", &[Item::Link("escape", outside.to_str().unwrap())], true);
        let upper = layer(
            dir.path(),
            "l2",
            &[Item::File("escape/.wh.precious", ""), Item::File("escape/.wh..wh..opq", "")],
            true,
        );
        unpack_layers(&[lower, upper], &rootfs).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("precious")).unwrap(), "keep");
    }

    #[test]
    fn garbage_is_an_invalid_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        let junk =
            Layer { media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(), digest: "sha256:1".into(), path };
        let err = unpack_layers(&[junk], dir.path()).unwrap_err();
        assert!(matches!(err, ShimError::InvalidImage(ref m) if m.contains("sha256:1")), "{err}");
    }

    #[test]
    fn zstd_layers_unpack() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(5);
        builder.append_data(&mut header, "etc/zstd", &b"hello"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let compressed = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        let path = dir.path().join("layer.tar.zst");
        std::fs::write(&path, compressed).unwrap();
        let zstd =
            Layer { media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(), digest: String::new(), path };
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        unpack_layers(&[zstd], &root).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("etc/zstd")).unwrap(), "hello");
    }

    #[test]
    fn missing_layers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Layer { media_type: String::new(), digest: String::new(), path: dir.path().join("nope") };
        assert!(matches!(unpack_layers(&[missing], dir.path()), Err(ShimError::Setup { .. })));
    }

    #[test]
    fn relative_paths_refuse_parent_components() {
        assert_eq!(relative_path(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative_path(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(relative_path(Path::new("a/../../b")), None);
    }
}
