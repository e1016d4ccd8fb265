//! The kubelet's atomic writer, for the volumes the agent writes (ConfigMaps, Secrets): a reader sees the
//! old files or the new ones, never a mix, and the agent never writes through a name a container chose.
//!
//! The files live in a timestamped directory (`..2026_12_07_04_40_00.123456789`); `..data` is a link to
//! the current one, and each name the pod sees is a link through it (`key -> ..data/key`). An update
//! writes a new directory, points `..data_tmp` at it and renames that over `..data` (one atomic step),
//! then fixes the visible links and removes the old directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Makes `dir` hold exactly `files` (relative paths to contents, mode `mode`); false when it did already.
pub fn write(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> io::Result<bool> {
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
    let current = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(current) = &current
        && holds(&dir.join(current), files, mode)
    {
        return Ok(false);
    }
    let stamp = jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (name, contents) in files {
        let path = fresh.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
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

/// Whether the directory `data` holds exactly `files` with `mode`.
fn holds(data: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> bool {
    let same = files.iter().all(|(name, contents)| {
        let path = data.join(name);
        std::fs::read(&path).is_ok_and(|read| read == *contents)
            && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
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

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn updates_swap_every_file_at_once_and_drop_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("cfg");
        assert!(write(&volume, &files(&[("a", "1"), ("nested/b", "2")]), 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(volume.join("nested/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(volume.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(volume.join(DATA)).unwrap();

        assert!(!write(&volume, &files(&[("a", "1"), ("nested/b", "2")]), 0o644).unwrap(), "unchanged");
        assert!(write(&volume, &files(&[("a", "3")]), 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "3");
        assert!(!volume.join("nested").exists(), "a key that went is gone");
        assert!(!volume.join(first).exists(), "the old files are removed");
        let entries: Vec<String> =
            std::fs::read_dir(&volume).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(entries.len(), 3, "a, ..data and one timestamped directory: {entries:?}");

        assert!(write(&volume, &files(&[("a", "3")]), 0o400).unwrap(), "a new mode is a change");
        let mode = std::fs::metadata(volume.join("a")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o400);
        for bad in ["../x", "/etc/x", "..data", "a//b", ""] {
            assert!(write(&volume, &files(&[(bad, "x")]), 0o644).is_err(), "{bad}");
        }
    }
}
