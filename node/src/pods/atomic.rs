//! The kubelet's atomic writer, for the volumes the agent writes (ConfigMaps, Secrets, the downward API,
//! ServiceAccount tokens): a reader sees the old files or the new ones, never a mix, and the agent never
//! writes through a name a container chose.
//!
//! The files live in a timestamped directory (`..2026_12_07_04_40_00.123456789`); `..data` is a link to
//! the current one, and each name the pod sees is a link through it (`key -> ..data/key`). An update
//! writes a new directory, points `..data_tmp` at it and renames that over `..data` (one atomic step),
//! then fixes the visible links and removes the old directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::Path;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume: its contents and permission bits (each item of a volume may have its own mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    pub mode: u32,
}

impl File {
    /// A file with an item's own `mode`, else the volume's `default_mode`.
    pub fn with_mode(data: Vec<u8>, mode: Option<i32>, default_mode: u32) -> Self {
        File { data, mode: self::mode(mode, default_mode) }
    }
}

/// A mode of the API (`defaultMode`, an item's `mode`), else `default`; permission bits only, as the API
/// server allows nothing else.
pub fn mode(mode: Option<i32>, default: u32) -> u32 {
    mode.map_or(default, |mode| mode as u32 & 0o777)
}

/// A volume's files by their paths relative to the volume.
pub type Files = BTreeMap<String, File>;

/// Who a volume's files belong to (root when None), as the kubelet sets it: the pod's user when all its
/// containers run as one, and its `fsGroup`, which also makes every file readable by the group (the
/// kubelet's `SetVolumeOwnership` for read-only volumes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Owner {
    /// The mode a file of `mode` gets: readable by the group when it is the pod's `fsGroup`.
    fn mode(&self, mode: u32) -> u32 {
        if self.gid.is_some() { mode | 0o440 } else { mode }
    }

    /// Gives `path` to the owner (a directory also gets the group's setgid bit and access); nothing when
    /// the owner is root.
    fn apply(&self, path: &Path) -> io::Result<()> {
        if *self == Owner::default() {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, self.uid, self.gid)?;
        let metadata = std::fs::symlink_metadata(path)?;
        if metadata.is_dir() && self.gid.is_some() {
            let mode = metadata.permissions().mode() | 0o2550;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Whether `metadata` shows this owner; files left to whoever writes them always do.
    fn owns(&self, metadata: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        *self == Owner::default()
            || (metadata.uid() == self.uid.unwrap_or(0) && metadata.gid() == self.gid.unwrap_or(0))
    }
}

/// Makes `dir` hold exactly `files`, belonging to `owner`; false when it did already.
pub fn write(dir: &Path, files: &Files, owner: Owner) -> io::Result<bool> {
    for name in files.keys() {
        let bad = name.is_empty()
            || name.starts_with('/')
            || name.starts_with("..")
            || name.split('/').any(|part| part.is_empty() || part == "..");
        if bad {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid file name \"{name}\"")));
        }
    }
    std::fs::create_dir_all(dir)?;
    owner.apply(dir)?;
    let current = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(current) = &current
        && holds(&dir.join(current), files, owner)
    {
        return Ok(false);
    }
    let stamp = jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    owner.apply(&fresh)?;
    for (name, file) in files {
        let path = fresh.join(name);
        // The directories between, each given to the owner as it is made.
        let mut parent = fresh.clone();
        for part in Path::new(name).parent().into_iter().flat_map(Path::components) {
            parent.push(part);
            if !parent.is_dir() {
                std::fs::create_dir(&parent)?;
                owner.apply(&parent)?;
            }
        }
        // Made the agent's alone, and only then given away: the volume is mounted in running containers,
        // whose other users must never catch a Secret's new value in a file still open to them.
        let mut written = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        std::io::Write::write_all(&mut written, &file.data)?;
        owner.apply(&path)?;
        written.set_permissions(std::fs::Permissions::from_mode(owner.mode(file.mode)))?;
    }
    let _ = std::fs::remove_file(dir.join(DATA_TMP));
    symlink(&stamp, dir.join(DATA_TMP))?;
    std::fs::rename(dir.join(DATA_TMP), dir.join(DATA))?;
    // The names the pod sees: one link per top-level entry, through `..data`.
    let visible: BTreeSet<&str> = files.keys().filter_map(|name| name.split('/').next()).collect();
    for name in &visible {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !visible.contains(name.as_str()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = current {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

/// Whether the directory `data` holds exactly `files`, belonging to `owner`.
fn holds(data: &Path, files: &Files, owner: Owner) -> bool {
    let same = files.iter().all(|(name, file)| {
        let path = data.join(name);
        std::fs::read(&path).is_ok_and(|read| read == file.data)
            && std::fs::metadata(&path)
                .is_ok_and(|m| m.permissions().mode() & 0o7777 == owner.mode(file.mode) && owner.owns(&m))
    });
    same && count_files(data) == files.len()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        moded(pairs, 0o644)
    }

    fn moded(pairs: &[(&str, &str)], mode: u32) -> Files {
        pairs.iter().map(|(k, v)| (k.to_string(), File { data: v.as_bytes().to_vec(), mode })).collect()
    }

    #[test]
    fn updates_swap_every_file_at_once_and_drop_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("cfg");
        assert!(write(&volume, &files(&[("a", "1"), ("nested/b", "2")]), Owner::default()).unwrap());
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(volume.join("nested/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(volume.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(volume.join(DATA)).unwrap();

        assert!(!write(&volume, &files(&[("a", "1"), ("nested/b", "2")]), Owner::default()).unwrap(), "unchanged");
        assert!(write(&volume, &files(&[("a", "3")]), Owner::default()).unwrap());
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "3");
        assert!(!volume.join("nested").exists(), "a key that went is gone");
        assert!(!volume.join(first).exists(), "the old files are removed");
        let entries: Vec<String> =
            std::fs::read_dir(&volume).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(entries.len(), 3, "a, ..data and one timestamped directory: {entries:?}");

        assert!(write(&volume, &moded(&[("a", "3")], 0o400), Owner::default()).unwrap(), "a new mode is a change");
        let mode = std::fs::metadata(volume.join("a")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o400);
        for bad in ["../x", "/etc/x", "..data", "a//b", ""] {
            assert!(write(&volume, &files(&[(bad, "x")]), Owner::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_belong_to_the_pods_user_and_are_readable_by_its_fs_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("secret");
        let owner = Owner { uid: Some(1000), gid: Some(2000) };
        assert!(write(&volume, &moded(&[("nested/key", "s")], 0o400), owner).unwrap());
        let file = std::fs::metadata(volume.join("nested/key")).unwrap();
        assert_eq!((file.uid(), file.gid(), file.mode() & 0o7777), (1000, 2000, 0o440));
        let nested = std::fs::metadata(volume.join(DATA).join("nested")).unwrap();
        assert_eq!((nested.uid(), nested.gid(), nested.mode() & 0o2000), (1000, 2000, 0o2000), "setgid");
        assert!(!write(&volume, &moded(&[("nested/key", "s")], 0o400), owner).unwrap(), "unchanged");
        let root = Owner { uid: None, gid: Some(0) };
        assert!(write(&volume, &moded(&[("nested/key", "s")], 0o400), root).unwrap(), "a new owner is a change");
        let file = std::fs::metadata(volume.join("nested/key")).unwrap();
        assert_eq!((file.uid(), file.gid()), (0, 0));
    }
}
