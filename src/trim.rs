//! Hands back the pages of the binary that only start-up used.
//!
//! The single `skiff` binary maps ~45 MB of code and read-only data. A long-running agent or server runs a
//! small part of it once started, but start-up touches much more (argument parsing, TLS and client set-up,
//! registration, the first lists and watches), and the page cache holds the binary in large folios, so
//! each fault maps a whole folio around the page it needs: left alone, an idle agent keeps ~20 MB of the
//! binary resident. Once start-up is over, the binary's file-backed, read-only mappings are paged out of
//! this process (MADV_PAGEOUT: clean file pages, so nothing is written, and the page cache keeps what
//! other processes map) and marked random-access (MADV_RANDOM), so later faults map the pages the process
//! runs instead of whole folios. The resident set then follows what the process really executes. The cost:
//! a page this process needs again is faulted back in, from the page cache or, after memory pressure
//! evicted it, from disk without read-ahead.
//!
//! The kernel pages file pages out only for a process that owns the file or may write it (a non-root
//! agent running a root-owned binary keeps its pages: the advice succeeds and does nothing), and a kernel
//! older than 5.4 refuses MADV_PAGEOUT: then nothing is trimmed.

use std::time::Duration;

/// Long enough for registration, the first heartbeat and the pod lists to have run.
const START_UP: Duration = Duration::from_secs(10);

/// Trims the binary's resident pages once start-up is over. Call from within a tokio runtime.
pub fn after_start_up() {
    tokio::spawn(async {
        tokio::time::sleep(START_UP).await;
        let trimmed =
            tokio::task::spawn_blocking(page_out_binary).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match trimmed {
            Ok(bytes) => tracing::debug!(bytes, "start-up pages of the binary released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the start-up pages of the binary"),
        }
    });
}

/// Advises the kernel on every file-backed, read-only mapping of this process's executable; returns the
/// bytes covered.
fn page_out_binary() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut covered = 0;
    for (start, end) in clean_mappings(&smaps, &exe.to_string_lossy()) {
        let (address, length) = (start as *mut libc::c_void, end - start);
        // Paged out first: a kernel without MADV_PAGEOUT leaves the mapping as it was.
        for advice in [libc::MADV_PAGEOUT, libc::MADV_RANDOM] {
            // SAFETY: the range is a whole mapping of this process's executable that is neither writable
            // nor holds anonymous (relocated) pages; both advices only change how its clean file pages
            // are kept and faulted in, never their contents.
            if unsafe { libc::madvise(address, length, advice) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        covered += length;
    }
    Ok(covered)
}

/// The `(start, end)` of each mapping of `path` in a `/proc/PID/smaps` listing that is not writable and has
/// no anonymous pages: code and read-only data, not the relocated data (RELRO) the loader wrote before
/// making it read-only.
fn clean_mappings(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut clean = Vec::new();
    let mut candidate = None;
    for line in smaps.lines() {
        if let Some(mapping) = parse_mapping(line) {
            let (range, permissions, mapped) = mapping;
            candidate = (mapped == path && !permissions.contains('w')).then_some(range);
        } else if let Some(kb) = line.strip_prefix("Anonymous:")
            && let Some(range) = candidate.take()
            && kb.trim() == "0 kB"
        {
            clean.push(range);
        }
    }
    clean
}

/// A mapping's header line: `start-end perms offset dev inode` separated by single spaces, then padding and
/// the path (which may itself hold spaces, or end in ` (deleted)` as `/proc/self/exe` does then too).
fn parse_mapping(line: &str) -> Option<((usize, usize), &str, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let range = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    let permissions = fields.next()?;
    fields.nth(2)?; // offset, device, inode
    Some((range, permissions, fields.next().unwrap_or("").trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_clean_read_only_mappings_are_trimmed() {
        let smaps = "\
55b56524a000-55b565a4d000 r--p 00000000 fe:00 1234                       /usr/bin/skiff
Rss:                1512 kB
Anonymous:             0 kB
55b565a4d000-55b567e1d000 r-xp 00802000 fe:00 1234                       /usr/bin/skiff
Anonymous:             0 kB
55b567e1d000-55b567f01000 r--p 02bd1000 fe:00 1234                       /usr/bin/skiff
Anonymous:           912 kB
55b567f01000-55b567f0e000 rw-p 02cb4000 fe:00 1234                       /usr/bin/skiff
Anonymous:            52 kB
55b567f0e000-55b567f10000 r-xp 00000000 fe:00 99                         /usr/bin/skiff-old
Anonymous:             0 kB
7f00aa000000-7f00aa001000 r-xp 00000000 fe:00 5                          /opt/my tools/skiff (deleted)
Anonymous:             0 kB
7f00ab000000-7f00ab021000 rw-p 00000000 00:00 0 
Anonymous:           132 kB
";
        assert_eq!(
            clean_mappings(smaps, "/usr/bin/skiff"),
            [(0x55b56524a000, 0x55b565a4d000), (0x55b565a4d000, 0x55b567e1d000)]
        );
        assert_eq!(clean_mappings(smaps, "/opt/my tools/skiff (deleted)"), [(0x7f00aa000000, 0x7f00aa001000)]);
    }

    #[test]
    fn this_test_binary_is_paged_out_without_error() {
        assert!(page_out_binary().unwrap() > 0);
    }
}
