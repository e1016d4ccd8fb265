//! host-local's address store, in process: the agent allocates the addresses of pods that need no namespace
//! from the same files the host-local plugin keeps for the pods that get one, so the two never hand out one
//! address twice, and a lease looks the same whoever took it.
//!
//! The format (containernetworking/plugins, `plugins/ipam/host-local/backend/disk`): under
//! `<dataDir>/<network name>/`, one file per leased address named by the address, holding
//! `<container id>\r\n<ifname>`; `last_reserved_ip.<range index>` holding the address leased last, where the
//! next search starts (round robin, so a freed address is not reused at once); and the file `lock`, which
//! every change holds with an exclusive `flock`. Addresses run from the subnet's first to the one before
//! its broadcast address, the gateway (the first) skipped.
//!
//! Running the plugin instead (IPAM only, no namespace needed) costs a process per lease and release, ~9 ms
//! each measured here under load, and the plugin reads every lease file on each ADD to refuse a duplicate
//! and on each DEL to find the container's: quadratic in the pods of a node. Here a lease is a few file
//! operations (~tens of µs) and a release reads one file, because the caller knows the address.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Ipv4Cidr;

/// host-local's separator between container id and interface name.
const LINE_BREAK: &str = "\r\n";
/// The only range Skiff configures is range 0.
const LAST_RESERVED: &str = "last_reserved_ip.0";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// host-local's words for it.
    #[error("no IP addresses available in range set: {first}-{last}")]
    Exhausted { first: Ipv4Addr, last: Ipv4Addr },
    #[error("address store {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A lease as host-local records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub id: String,
    pub ifname: String,
}

/// The addresses of one network in one range, in host-local's files.
pub struct Store {
    dir: PathBuf,
    /// Held open for the agent's life; `flock` on it is what host-local takes.
    lock: File,
    subnet: Ipv4Cidr,
}

/// The exclusive lock on the store, released on drop.
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor this struct borrows; unlocking cannot fail in a way to act on.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    /// The store of network `network` under host-local's `data_dir`, made if missing.
    pub fn open(data_dir: &Path, network: &str, subnet: Ipv4Cidr) -> Result<Self, IpamError> {
        let dir = data_dir.join(network);
        let io = |source| IpamError::Io { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock =
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(dir.join("lock"));
        Ok(Store { lock: lock.map_err(io)?, dir, subnet })
    }

    fn io(&self) -> impl Fn(io::Error) -> IpamError + '_ {
        |source| IpamError::Io { dir: self.dir.clone(), source }
    }

    fn locked(&self) -> Result<Locked<'_>, IpamError> {
        loop {
            // SAFETY: flock on a descriptor owned by self, which outlives the guard.
            if unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Locked(&self.lock));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(self.io()(error));
            }
        }
    }

    /// The first and last addresses leased (host-local's defaults: `.1` to the one before broadcast, the
    /// gateway `.1` skipped).
    fn bounds(&self) -> (u32, u32) {
        let network = u32::from(self.subnet.network);
        let broadcast = network | !Ipv4Cidr::mask(self.subnet.prefix);
        (network + 1, broadcast - 1)
    }

    /// The subnet's gateway, which is never leased: the bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.bounds().0)
    }

    /// Leases a free address to `id` on `ifname`, searching on from the last address leased.
    pub fn allocate(&self, id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        let _locked = self.locked()?;
        let (first, last) = self.bounds();
        let gateway = first;
        let last_reserved = std::fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|text| text.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip));
        let start = match last_reserved {
            Some(ip) if ip < last => ip + 1,
            _ => first,
        };
        let size = last - first + 1;
        let candidates = (0..size).map(|offset| first + (start - first + offset) % size);
        for candidate in candidates.filter(|ip| *ip != gateway) {
            let ip = Ipv4Addr::from(candidate);
            let path = self.dir.join(ip.to_string());
            let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path);
            let mut file = match created {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io()(e)),
            };
            if let Err(e) = file.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes()) {
                let _ = std::fs::remove_file(&path);
                return Err(self.io()(e));
            }
            overwrite(&self.dir.join(LAST_RESERVED), ip.to_string().as_bytes()).map_err(self.io())?;
            return Ok(ip);
        }
        Err(IpamError::Exhausted { first: Ipv4Addr::from(first), last: Ipv4Addr::from(last) })
    }

    /// Releases `ip` if `id` on `ifname` holds it; false when it does not (already released, or someone
    /// else's).
    pub fn release(&self, ip: Ipv4Addr, id: &str, ifname: &str) -> Result<bool, IpamError> {
        let _locked = self.locked()?;
        let path = self.dir.join(ip.to_string());
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim() == format!("{}{LINE_BREAK}{ifname}", id.trim()) => {
                std::fs::remove_file(&path).map_err(self.io())?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io()(e)),
        }
    }

    /// Every lease of the store, whoever took it. Files that are not leases (the lock, the last reserved
    /// address) are skipped.
    pub fn leases(&self) -> Result<Vec<Lease>, IpamError> {
        let _locked = self.locked()?;
        let mut leases = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(self.io())?.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(|name| name.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            // Leases of plugins older than 0.7 hold the container id alone.
            let (id, ifname) = text.trim().split_once(LINE_BREAK).unwrap_or((text.trim(), ""));
            leases.push(Lease { ip, id: id.to_string(), ifname: ifname.to_string() });
        }
        leases.sort_by_key(|lease| lease.ip);
        Ok(leases)
    }
}

/// Writes `contents` over the file at `path`, made if missing. Not truncated to empty first, as
/// `std::fs::write` does: on ext4 a file truncated to empty and written again is flushed to disk on close
/// (`auto_da_alloc`), which costs more than the rest of a lease.
fn overwrite(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(path)?;
    file.write_all_at(contents, 0)?;
    file.set_len(contents.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::process::Stdio;
    use std::sync::Arc;

    use super::*;

    fn store(dir: &Path, subnet: &str) -> Store {
        Store::open(dir, "skiff", subnet.parse().unwrap()).unwrap()
    }

    #[test]
    fn leases_round_robin_skip_the_gateway_and_use_host_locals_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), "10.42.7.0/24");
        assert_eq!(store.gateway(), Ipv4Addr::new(10, 42, 7, 1));
        let a = store.allocate("pod-a", "skf0").unwrap();
        let b = store.allocate("pod-b", "skf0").unwrap();
        assert_eq!((a, b), (Ipv4Addr::new(10, 42, 7, 2), Ipv4Addr::new(10, 42, 7, 3)));
        let files = dir.path().join("skiff");
        assert_eq!(std::fs::read_to_string(files.join("10.42.7.2")).unwrap(), "pod-a\r\nskf0");
        assert_eq!(std::fs::read_to_string(files.join(LAST_RESERVED)).unwrap(), "10.42.7.3");
        assert!(files.join("lock").exists());
        // A freed address is not the next one handed out: the search goes on from the last lease.
        assert!(store.release(a, "pod-a", "skf0").unwrap());
        assert_eq!(store.allocate("pod-c", "skf0").unwrap(), Ipv4Addr::new(10, 42, 7, 4));
        let leases = store.leases().unwrap();
        let held: Vec<(Ipv4Addr, &str)> = leases.iter().map(|l| (l.ip, l.id.as_str())).collect();
        assert_eq!(held, [(b, "pod-b"), (Ipv4Addr::new(10, 42, 7, 4), "pod-c")]);
    }

    #[test]
    fn only_the_holder_releases_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), "10.42.7.0/24");
        let ip = store.allocate("pod-a", "skf0").unwrap();
        assert!(!store.release(ip, "pod-b", "skf0").unwrap(), "another pod's lease stays");
        assert!(!store.release(ip, "pod-a", "eth0").unwrap(), "another interface's lease stays");
        assert!(store.release(ip, "pod-a", "skf0").unwrap());
        assert!(!store.release(ip, "pod-a", "skf0").unwrap(), "released twice is a no-op");
        assert!(store.leases().unwrap().is_empty());
    }

    #[test]
    fn a_full_range_says_so_and_wraps_around_once_freed() {
        let dir = tempfile::tempdir().unwrap();
        // A /29: .1 is the gateway, .7 broadcast: .2 to .6 are leased.
        let store = store(dir.path(), "10.42.7.0/29");
        let all: Vec<Ipv4Addr> = (0..5).map(|i| store.allocate(&format!("pod-{i}"), "skf0").unwrap()).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 42, 7, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 42, 7, 6)));
        let error = store.allocate("pod-5", "skf0").unwrap_err();
        assert_eq!(error.to_string(), "no IP addresses available in range set: 10.42.7.1-10.42.7.6");
        assert!(store.release(Ipv4Addr::new(10, 42, 7, 3), "pod-1", "skf0").unwrap());
        assert_eq!(store.allocate("pod-5", "skf0").unwrap(), Ipv4Addr::new(10, 42, 7, 3));
    }

    #[test]
    fn a_restarted_agent_sees_its_leases_and_carries_on_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let ip = store(dir.path(), "10.42.7.0/24").allocate("pod-a", "skf0").unwrap();
        let again = store(dir.path(), "10.42.7.0/24");
        assert_eq!(again.leases().unwrap(), [Lease { ip, id: "pod-a".into(), ifname: "skf0".into() }]);
        assert_eq!(again.allocate("pod-b", "skf0").unwrap(), Ipv4Addr::new(10, 42, 7, 3));
        // A last address outside the range (the range changed) starts the search from the beginning.
        std::fs::write(dir.path().join("skiff").join(LAST_RESERVED), "192.168.0.9").unwrap();
        assert_eq!(again.allocate("pod-c", "skf0").unwrap(), Ipv4Addr::new(10, 42, 7, 4));
        // Garbage in the directory is no lease.
        std::fs::write(dir.path().join("skiff").join("notes"), "x").unwrap();
        assert_eq!(again.leases().unwrap().len(), 3);
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        // Two stores on one directory, as two processes would be: only the file lock orders them.
        let stores = [Arc::new(store(dir.path(), "10.42.0.0/22")), Arc::new(store(dir.path(), "10.42.0.0/22"))];
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = stores[t % 2].clone();
                std::thread::spawn(move || {
                    (0..60).map(|i| store.allocate(&format!("pod-{t}-{i}"), "skf0").unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let distinct: HashSet<Ipv4Addr> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "no address leased twice");
        assert_eq!(stores[0].leases().unwrap().len(), 480);
    }

    /// The real plugin and this store on one directory: neither takes an address the other holds, and the
    /// plugin's leases read back as leases.
    #[test]
    fn interleaves_with_the_real_host_local_plugin() {
        let Some(plugin) = ["/usr/lib/cni/host-local", "/opt/cni/bin/host-local"]
            .into_iter()
            .map(Path::new)
            .find(|path| path.is_file())
        else {
            panic!("host-local is not installed: scripts/setup installs the CNI plugins");
        };
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.9.0/24"}]], "dataDir": dir.path()},
        });
        let run = |command: &str, id: &str| {
            let mut child = std::process::Command::new(plugin)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", "/nonexistent")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", plugin.parent().unwrap())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
            serde_json::from_slice::<serde_json::Value>(&output.stdout).ok()
        };
        let plugin_ip = |result: Option<serde_json::Value>| -> Ipv4Addr {
            let address = result.unwrap()["ips"][0]["address"].as_str().unwrap().to_string();
            address.split('/').next().unwrap().parse().unwrap()
        };
        let store = store(dir.path(), "10.42.9.0/24");
        let first = plugin_ip(run("ADD", "netns-pod-1"));
        let ours = store.allocate("light-pod", "skf0").unwrap();
        let second = plugin_ip(run("ADD", "netns-pod-2"));
        assert_eq!(
            [first, ours, second],
            [Ipv4Addr::new(10, 42, 9, 2), Ipv4Addr::new(10, 42, 9, 3), Ipv4Addr::new(10, 42, 9, 4)],
            "one round robin shared by both"
        );
        let leases = store.leases().unwrap();
        assert!(leases.contains(&Lease { ip: first, id: "netns-pod-1".into(), ifname: "eth0".into() }));
        run("DEL", "netns-pod-1");
        run("DEL", "netns-pod-2");
        let left: Vec<Ipv4Addr> = store.leases().unwrap().iter().map(|l| l.ip).collect();
        assert_eq!(left, [ours], "the plugin's release leaves our lease alone");
    }
}
