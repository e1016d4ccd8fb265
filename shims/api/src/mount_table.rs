//! The calling process's mount table (`/proc/self/mountinfo`), which the node and the shims read before
//! they remove a directory that may still hold mounts: removing through a mount would delete what it shows.

use std::io;
use std::path::{Path, PathBuf};

/// The mount points at or below any of `dirs` (resolved paths, as the table names them), in the table's
/// order: a mount stacked on another appears once for each.
pub fn mount_points_below(dirs: &[&Path]) -> io::Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    // The fifth field is the mount point.
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|point| dirs.iter().any(|dir| point.starts_with(dir)))
        .collect())
}

/// A mountinfo path: the kernel writes space, tab, newline and backslash as three octal digits after a
/// backslash.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/var/lib/a\040b\011c\134d"), Path::new("/var/lib/a b\tc\\d"));
        assert_eq!(unescape(r"/plain\x"), Path::new(r"/plain\x"));
        assert_eq!(unescape(r"/plain\0"), Path::new(r"/plain\0"));
    }

    #[test]
    fn the_root_is_below_itself() {
        let points = mount_points_below(&[Path::new("/")]).unwrap();
        assert!(points.contains(&PathBuf::from("/")), "{points:?}");
        assert!(mount_points_below(&[Path::new("/no/such/dir")]).unwrap().is_empty());
    }
}
