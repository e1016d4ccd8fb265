//! Hands back the pages of the binary that only start-up used.
//!
//! The single `skiff` binary maps ~45 MB of code and read-only data. A long-running agent or server runs a
//! small part of it once started, but start-up touches much more (argument parsing, TLS and client set-up,
//! registration, the first lists and watches), and the page cache holds the binary in large folios, so
//! each fault maps a whole folio around the page it needs: left alone, an idle agent keeps ~20 MB of the
//! binary resident. Once start-up is over, the binary's read-only mappings are paged out of this process
//! (MADV_PAGEOUT; clean file pages, so nothing is written, and the page cache keeps what other processes
//! map) and marked random-access (MADV_RANDOM), so later faults map the pages the process runs instead of
//! whole folios. The resident set then follows what the process really executes. The cost: a page this
//! process needs again is faulted back in, from the page cache or, after memory pressure evicted it, from
//! disk without read-ahead.

use std::time::Duration;

/// Long enough for registration, the first heartbeat and the pod lists to have run.
const START_UP: Duration = Duration::from_secs(10);

/// Trims the binary's resident pages once start-up is over. Call from within a tokio runtime.
pub fn after_start_up() {
    tokio::spawn(async {
        tokio::time::sleep(START_UP).await;
        match tokio::task::spawn_blocking(page_out_binary).await {
            Ok(Ok(bytes)) => tracing::debug!(mapped = bytes, "start-up pages of the binary released"),
            Ok(Err(e)) => tracing::debug!(error = %e, "start-up pages of the binary kept"),
            Err(e) => tracing::debug!(error = %e, "start-up pages of the binary kept"),
        }
    });
}

/// Advises the kernel on every read-only mapping of this process's executable; returns the bytes covered.
fn page_out_binary() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut covered = 0;
    for (start, end) in read_only_mappings(&maps, &exe.to_string_lossy()) {
        let (address, length) = (start as *mut libc::c_void, end - start);
        for advice in [libc::MADV_RANDOM, libc::MADV_PAGEOUT] {
            // SAFETY: the range is a whole mapping of this process's executable that is never written
            // (no `w` permission); both advices only change how its clean file pages are cached and
            // faulted, never their contents.
            if unsafe { libc::madvise(address, length, advice) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        covered += length;
    }
    Ok(covered)
}

/// The `(start, end)` of each mapping of `path` in a `/proc/PID/maps` listing that is not writable.
fn read_only_mappings<'a>(maps: &'a str, path: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    maps.lines().filter_map(move |line| {
        let mut fields = line.split_ascii_whitespace();
        let range = fields.next()?;
        let permissions = fields.next()?;
        let mapped = fields.nth(3)?;
        if mapped != path || permissions.contains('w') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_unwritable_mappings_are_trimmed() {
        let maps = "\
55b56524a000-55b565a4d000 r--p 00000000 fe:00 1234 /usr/bin/skiff
55b565a4d000-55b567e1d000 r-xp 00802000 fe:00 1234 /usr/bin/skiff
55b567f01000-55b567f0e000 rw-p 02cb4000 fe:00 1234 /usr/bin/skiff
55b567f0e000-55b567f10000 r-xp 00000000 fe:00 99 /usr/bin/skiff-old
7f00aa000000-7f00aa001000 r-xp 00000000 fe:00 5 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00ab000000-7f00ab021000 rw-p 00000000 00:00 0 ";
        let trimmed: Vec<_> = read_only_mappings(maps, "/usr/bin/skiff").collect();
        assert_eq!(trimmed, [(0x55b56524a000, 0x55b565a4d000), (0x55b565a4d000, 0x55b567e1d000)]);
    }

    #[test]
    fn this_test_binary_is_paged_out_without_error() {
        assert!(page_out_binary().unwrap() > 0);
    }
}
