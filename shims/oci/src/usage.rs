//! A container's use of the node, read from its cgroup as cAdvisor reads it for the kubelet: CPU time from
//! `cpuacct.usage` (v1) or `cpu.stat`'s `usage_usec` (v2); the working set is the memory usage less the
//! inactive file cache, which the kernel can reclaim without the container noticing.

use std::path::{Path, PathBuf};

use skiff_shim::{Meter, Usage};

/// The files of one container's cgroup that tell its usage, whichever hierarchy the host has.
pub(crate) struct CgroupMeter {
    cpu: CpuFile,
    memory_usage: PathBuf,
    memory_stat: PathBuf,
    /// The memory.stat key of the inactive file cache: `total_inactive_file` counts the cgroup's
    /// descendants too in v1, where `inactive_file` alone would not.
    inactive_key: &'static str,
}

enum CpuFile {
    /// Nanoseconds, the whole file.
    V1(PathBuf),
    /// A `usage_usec` line, in microseconds.
    V2(PathBuf),
}

impl CgroupMeter {
    /// The meter of the cgroup at `cgroup` (relative to each hierarchy's root) under `root`
    /// (`/sys/fs/cgroup`). The unified hierarchy is taken when it holds the memory controller.
    pub(crate) fn new(root: &Path, cgroup: &str) -> Self {
        let relative = cgroup.trim_start_matches('/');
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(relative);
            return CgroupMeter {
                cpu: CpuFile::V2(dir.join("cpu.stat")),
                memory_usage: dir.join("memory.current"),
                memory_stat: dir.join("memory.stat"),
                inactive_key: "inactive_file",
            };
        }
        // The accounting controller is mounted alone or together with cpu, depending on the distribution.
        let cpuacct = ["cpuacct", "cpu,cpuacct"].iter().map(|m| root.join(m)).find(|m| m.exists());
        let cpuacct = cpuacct.unwrap_or_else(|| root.join("cpuacct"));
        let memory = root.join("memory").join(relative);
        CgroupMeter {
            cpu: CpuFile::V1(cpuacct.join(relative).join("cpuacct.usage")),
            memory_usage: memory.join("memory.usage_in_bytes"),
            memory_stat: memory.join("memory.stat"),
            inactive_key: "total_inactive_file",
        }
    }

    fn cpu_nanos(&self) -> u64 {
        match &self.cpu {
            CpuFile::V1(path) => read(path).and_then(|text| text.trim().parse().ok()).unwrap_or(0),
            CpuFile::V2(path) => read(path)
                .and_then(|text| stat_value(&text, "usage_usec"))
                .map(|micros| micros.saturating_mul(1000))
                .unwrap_or(0),
        }
    }

    fn working_set(&self) -> u64 {
        let usage = read(&self.memory_usage).and_then(|text| text.trim().parse::<u64>().ok()).unwrap_or(0);
        let inactive = read(&self.memory_stat).and_then(|text| stat_value(&text, self.inactive_key)).unwrap_or(0);
        usage.saturating_sub(inactive)
    }
}

impl Meter for CgroupMeter {
    fn usage(&self) -> Usage {
        Usage {
            cpu_nanos: self.cpu_nanos(),
            memory_working_set_bytes: self.working_set(),
            http_requests: None,
            instances: None,
        }
    }
}

/// A cgroup that is gone (the container ended between listing and reading) reads as zero.
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat keyed file (`key value` lines: memory.stat, cpu.stat).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_reads_cpuacct_and_the_working_set() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("cpuacct")).unwrap();
        write(&r.join("cpuacct/skiff/c1/cpuacct.usage"), "1500000000\n");
        write(&r.join("memory/skiff/c1/memory.usage_in_bytes"), "10485760\n");
        write(&r.join("memory/skiff/c1/memory.stat"), "cache 4096\ninactive_file 1\ntotal_inactive_file 2097152\n");
        let usage = CgroupMeter::new(r, "/skiff/c1").usage();
        assert_eq!(usage.cpu_nanos, 1_500_000_000);
        assert_eq!(usage.memory_working_set_bytes, 10_485_760 - 2_097_152);
    }

    #[test]
    fn v2_reads_cpu_stat_in_microseconds() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cgroup.controllers"), "cpu memory pids\n");
        write(&r.join("skiff/c1/cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        write(&r.join("skiff/c1/memory.current"), "8192\n");
        write(&r.join("skiff/c1/memory.stat"), "anon 4096\ninactive_file 16384\n");
        let usage = CgroupMeter::new(r, "/skiff/c1").usage();
        assert_eq!(usage.cpu_nanos, 2_500_000);
        // More cache than usage (read at different moments) floors at zero.
        assert_eq!(usage.memory_working_set_bytes, 0);
    }

    #[test]
    fn a_removed_cgroup_reads_as_zero() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(CgroupMeter::new(root.path(), "/skiff/gone").usage(), Usage::default());
    }
}
