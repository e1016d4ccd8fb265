//! Pod networking: each pod gets an address of its own from the node's pod range. Pods on a node reach each
//! other and the node reaches them over the node's bridge, by their own addresses, no NAT.
//!
//! - A pod with a container that is a process of its own (OCI) gets a network namespace, made by the real
//!   CNI plugins (loopback; bridge with host-local addresses; portmap for hostPorts). All containers of the
//!   pod share it, wasm ones included (the wasm shim listens inside it).
//! - A pod whose containers all run inside the agent (wasm) needs no namespace: its address is leased from
//!   host-local's own files ([`ipam`], so the two never hand out one address twice) and added as a /32 to
//!   the node's bridge, and the wasm shim listens on it. No veth, no plugin process: a Linux bridge takes
//!   at most 1,024 ports and the plugins cost ~40 ms a pod, while a node runs thousands of wasm pods. The
//!   bridge routes the range, so pods in namespaces reach these addresses like any other on the node. A
//!   pod with hostPorts gets a namespace whatever it runs (portmap needs one).
//!
//! Where that cannot work (not root, no plugins), or with `--pod-network host`, pods share the node's
//! network and address, as before.
//!
//! State: namespace files under `/run/skiff/<node>-<id>/netns/<pod uid>` (gone at reboot, as the namespaces
//! are); each namespace's ADD result cached under `<data dir>/network/pods/<uid>.json`, for DEL and for
//! adopting the namespace again after an agent restart; host-local's leases under `<data dir>/network/ipam`,
//! those of pods without a namespace held by the pod's uid on the bridge's name (how the agent finds them
//! again after a restart).
//!
//! The pod range: the Node's `spec.podCIDR` if something set it, else `--pod-cidr`, else the range this
//! agent picked before (remembered in its data dir), else a free range of 10.42.0.0/16 that holds
//! `--max-pods` pods (a /22 for the default 1,000; a /24 at least), starting at one derived from the node's
//! name and data dir, skipping ranges the host routes and ranges other agents on this machine claimed
//! (claims in `/run/skiff/pod-cidrs`, taken over once the claimant's data dir is gone).

mod cni;
mod ipam;
mod sys;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

pub use cni::PortMapping;

/// Where namespace files and range claims live.
const RUN_DIR: &str = "/run/skiff";
/// The pool derived pod ranges come from (k3s's default cluster CIDR).
const POOL: Ipv4Cidr = Ipv4Cidr { network: Ipv4Addr::new(10, 42, 0, 0), prefix: 16 };
/// The interface a pod's network is attached to.
const POD_IFNAME: &str = "eth0";

/// `--pod-network`: whether pods get their own network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Pods' own addresses where that works (as root, with the CNI plugins installed), else host.
    #[default]
    Auto,
    /// Pods' own addresses, or the agent refuses to start.
    Cni,
    /// Pods share the node's network and address.
    Host,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid pod network mode {0:?}: expected auto, cni or host")]
pub struct InvalidMode(String);

impl FromStr for Mode {
    type Err = InvalidMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Mode::Auto),
            "cni" => Ok(Mode::Cni),
            "host" => Ok(Mode::Host),
            _ => Err(InvalidMode(text.to_string())),
        }
    }
}

/// An IPv4 network in CIDR notation (`10.42.7.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid pod CIDR {text:?}: {reason}")]
pub struct InvalidCidr {
    text: String,
    reason: String,
}

impl Ipv4Cidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
    }

    fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let mask = Self::mask(self.prefix.min(other.prefix));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The `index`-th network of length `prefix` in this one (`index` below 2^(prefix - self.prefix)).
    fn subnet(&self, prefix: u8, index: u32) -> Ipv4Cidr {
        let network = u32::from(self.network) | (index << (32 - u32::from(prefix)));
        Ipv4Cidr { network: Ipv4Addr::from(network), prefix }
    }

    /// How many pods the range holds: all but the network, gateway and broadcast addresses.
    fn pods(&self) -> u64 {
        (1u64 << (32 - u32::from(self.prefix))) - 3
    }

    /// The longest prefix, /24 at most, of a range holding `pods` pods: how large a derived range is.
    fn prefix_for(pods: u32) -> u8 {
        let fits = |prefix: &u8| Ipv4Cidr { network: Ipv4Addr::UNSPECIFIED, prefix: *prefix }.pods() >= u64::from(pods);
        (POOL.prefix..=24).rev().find(fits).unwrap_or(POOL.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| InvalidCidr { text: text.to_string(), reason: reason.to_string() };
        let (address, prefix) = text.split_once('/').ok_or_else(|| invalid("expected ADDRESS/PREFIX"))?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid("the prefix length is not a number"))?;
        if !(8..=30).contains(&prefix) {
            return Err(invalid("the prefix length must be between 8 and 30"));
        }
        let network = Ipv4Addr::from(u32::from(address) & Self::mask(prefix));
        if network != address {
            return Err(invalid(&format!("host bits are set (the network is {network}/{prefix})")));
        }
        Ok(Ipv4Cidr { network, prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Cidr(#[from] InvalidCidr),
    #[error("no free range for --max-pods pods left in {POOL}: set --pod-cidr")]
    NoRange,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A plugin failed, in containerd's words (`plugin type="bridge" failed (add): ...`).
    #[error("plugin type=\"{plugin}\" failed ({command}): {message}")]
    Plugin { plugin: String, command: &'static str, message: String },
    #[error("the network plugins returned no address for the pod: {0}")]
    NoAddress(String),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { what, path, source }
}

/// What a pod needs of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Every container runs inside the agent (wasm): an address of its own is enough.
    Address,
    /// Some container is a process of its own: a network namespace.
    Namespace,
}

/// Where a pod's containers are on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    /// `status.podIP`: where the containers listen.
    pub ip: IpAddr,
    /// The pod's network namespace file; None when it has none (it shares the node's network, or has an
    /// address of its own on the node's bridge).
    pub netns: Option<PathBuf>,
    /// The user namespace owning `netns`, for a pod with `hostUsers: false`.
    pub userns: Option<skiff_shim::UserNamespace>,
}

/// The ids a pod's user namespace maps: 0..`size` in the pod are `host_id`.. on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

/// What the agent was told about pod networking.
pub struct NetworkConfig<'a> {
    pub mode: Mode,
    /// `--pod-cidr`.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The Node's `spec.podCIDR`, if something set it.
    pub node_pod_cidr: Option<&'a str>,
    pub node_name: &'a str,
    pub node_ip: IpAddr,
    pub data_dir: &'a Path,
    /// `--max-pods`: a range the agent picks holds that many.
    pub max_pods: u32,
}

/// The node's pod network.
pub struct Network {
    node_ip: IpAddr,
    cni: Option<Cni>,
}

struct Cni {
    cidr: Ipv4Cidr,
    bridge: String,
    /// Skiff's conflist for this node.
    list: Value,
    /// Namespace files, one per pod uid.
    netns_dir: PathBuf,
    /// The user namespaces owning the network namespaces of pods with `hostUsers: false`, by pod uid.
    userns_dir: PathBuf,
    /// Cached ADD results, one per pod uid.
    cache_dir: PathBuf,
    /// host-local's leases, which the plugin shares: where pods without a namespace get their addresses.
    store: ipam::Store,
    /// One operation at a time: the bridge is removed when the last pod leaves, which must not race with
    /// the next pod's ADD creating it. Guards the addresses of pods without a namespace.
    lock: tokio::sync::Mutex<Addresses>,
}

/// The addresses on the bridge of pods without a namespace, by pod uid: each also a lease of the pod's uid
/// on the bridge's name in host-local's files, which is how they are found again after an agent restart.
type Addresses = HashMap<String, Ipv4Addr>;

/// A pod's attachment as cached for DEL: what ADD ran with and what it returned.
#[derive(Serialize, Deserialize)]
struct Attachment {
    netns: PathBuf,
    list: Value,
    port_mappings: Vec<PortMapping>,
    result: Value,
}

impl Network {
    /// Pods share the node's network.
    fn host(node_ip: IpAddr) -> Self {
        Network { node_ip, cni: None }
    }

    pub fn new(config: NetworkConfig<'_>) -> Result<Self, NetworkError> {
        let usable = is_root() && cni::available();
        match config.mode {
            Mode::Host => return Ok(Self::host(config.node_ip)),
            Mode::Auto if !usable => {
                tracing::info!("pods share the node's network (pod networking needs root and the CNI plugins)");
                return Ok(Self::host(config.node_ip));
            }
            Mode::Cni if !usable => {
                return Err(NetworkError::Unavailable(
                    "--pod-network cni needs root and the CNI plugins loopback, bridge, host-local and portmap in \
                     /usr/lib/cni or /opt/cni/bin"
                        .into(),
                ));
            }
            Mode::Auto | Mode::Cni => {}
        }
        let data_dir = config.data_dir.canonicalize().map_err(io_error("cannot resolve", config.data_dir))?;
        let id = network_id(config.node_name, &data_dir);
        let bridge = format!("skf{id}");
        let run_dir = Path::new(RUN_DIR).join(format!("{}-{id}", config.node_name));
        let network_dir = data_dir.join("network");
        let remembered = network_dir.join("pod-cidr");
        let claims = Path::new(RUN_DIR).join("pod-cidrs");
        std::fs::create_dir_all(&claims).map_err(io_error("cannot create", &claims))?;
        // What agents since removed from this machine left behind (tests' agents, killed with their pods).
        Claim::reap_stale(&claims);
        let claim = Claim {
            data_dir: data_dir.clone(),
            bridge: bridge.clone(),
            run_dir: run_dir.clone(),
            network_id: Some(id.clone()),
            netns: sys::current_netns(),
        };
        let chosen = match (config.node_pod_cidr, config.pod_cidr) {
            (Some(text), flag) => {
                let cidr: Ipv4Cidr = text.parse()?;
                if flag.is_some_and(|flag| flag != cidr) {
                    tracing::warn!(node = %cidr, "the Node's spec.podCIDR wins over --pod-cidr");
                }
                Some(cidr)
            }
            (None, Some(flag)) => Some(flag),
            // Ours from before.
            (None, None) => std::fs::read_to_string(&remembered).ok().and_then(|text| text.trim().parse().ok()),
        };
        let cidr = match chosen {
            // Claimed whoever held it, so that what this agent leaves can be reclaimed too.
            Some(cidr) => {
                claim.take(&claims, cidr, true).map_err(io_error("cannot claim a pod range in", &claims))?;
                cidr
            }
            None => derive_cidr(&id, Ipv4Cidr::prefix_for(config.max_pods), &claim, &claims)?,
        };
        if cidr.pods() < u64::from(config.max_pods) {
            tracing::warn!(
                %cidr,
                max_pods = config.max_pods,
                "the pod range holds fewer pods than --max-pods: pods beyond it wait for an address"
            );
        }
        std::fs::create_dir_all(&network_dir).map_err(io_error("cannot create", &network_dir))?;
        std::fs::write(&remembered, cidr.to_string()).map_err(io_error("cannot write", &remembered))?;
        let list = cni::conflist(&bridge, cidr, &network_dir.join("ipam"));
        let conflist = network_dir.join("skiff.conflist");
        let pretty = serde_json::to_string_pretty(&list).unwrap_or_default();
        std::fs::write(&conflist, pretty).map_err(io_error("cannot write", &conflist))?;
        let cache_dir = network_dir.join("pods");
        std::fs::create_dir_all(&cache_dir).map_err(io_error("cannot create", &cache_dir))?;
        let store = ipam::Store::open(&network_dir.join("ipam"), cni::NETWORK, cidr)?;
        let addresses: Addresses = store
            .leases()?
            .into_iter()
            .filter(|lease| lease.ifname == bridge)
            .map(|lease| (lease.id, lease.ip))
            .collect();
        tracing::info!(%cidr, %bridge, without_namespace = addresses.len(), "pods get their own network");
        Ok(Network {
            node_ip: config.node_ip,
            cni: Some(Cni {
                cidr,
                bridge,
                list,
                netns_dir: run_dir.join("netns"),
                userns_dir: run_dir.join("userns"),
                cache_dir,
                store,
                lock: tokio::sync::Mutex::new(addresses),
            }),
        })
    }

    /// Eight hex digits naming this agent's network on the machine (its bridge is `skf<id>`): what names
    /// its other kernel objects too, unique even among agents sharing one machine's network.
    pub fn id(&self) -> Option<&str> {
        self.cni.as_ref().map(|cni| cni.bridge.trim_start_matches("skf"))
    }

    /// The node's pod range, when pods have their own network.
    pub fn pod_cidr(&self) -> Option<Ipv4Cidr> {
        self.cni.as_ref().map(|cni| cni.cidr)
    }

    /// Gives `pod` the network it needs: the address or namespace it already has (after an agent restart),
    /// else a new one. With host networking, the node's address. A namespace is owned by a user namespace
    /// of its own mapping `ids`, when given (`hostUsers: false`).
    pub async fn attach(&self, pod: &Pod, need: Need, ids: Option<IdRange>) -> Result<PodAddress, NetworkError> {
        let host = PodAddress { ip: self.node_ip, netns: None, userns: None };
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Ok(host);
        }
        let Some(cni) = &self.cni else {
            // Wasm guests on a node without pod networking (an agent that is not root) serve on the node's
            // address; a container would silently share the node's network, which its pod did not ask for.
            return match need {
                Need::Address => Ok(host),
                Need::Namespace => Err(NetworkError::Unavailable(
                    "this node has no pod network (--pod-network host, or an agent without root or the CNI \
                     plugins), so it cannot give the pod's containers a network of their own: set \
                     hostNetwork: true to share the node's"
                        .into(),
                )),
            };
        };
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
            return Err(NetworkError::Unavailable(format!("invalid pod uid {uid:?}")));
        }
        let need = if port_mappings(pod).is_empty() { need } else { Need::Namespace };
        let mut addresses = cni.lock.lock().await;
        // What the pod had before an agent restart is kept if it is still what it needs (its images can
        // change in between), else released.
        if need == Need::Address {
            if let Some(attachment) = cni.cached(uid) {
                cni.detach(uid, attachment).await;
            }
            return cni.attach_address(&mut addresses, uid);
        }
        cni.release_address(&mut addresses, uid);
        if let Some(attachment) = cni.cached(uid) {
            let userns = cni.userns_dir.join(uid);
            if sys::is_netns(&attachment.netns) && sys::is_netns(&userns) == ids.is_some() {
                let ip = cni::pod_ip(&attachment.result)?;
                tracing::debug!(%ip, "the pod's network namespace is still there: adopted");
                let userns =
                    ids.map(|ids| skiff_shim::UserNamespace { path: userns, host_id: ids.host_id, size: ids.size });
                return Ok(PodAddress { ip, netns: Some(attachment.netns), userns });
            }
            // The namespace is gone (a reboot), or not the one the pod needs: release what ADD allocated, then
            // start over.
            cni.detach(uid, attachment).await;
        }
        cni.add(pod, uid, &addresses, ids).await
    }

    /// Releases the pod's network (its address, or CNI DEL and the namespace removed); nothing to do if it
    /// has none.
    pub async fn release(&self, uid: &str) {
        let Some(cni) = &self.cni else { return };
        let mut addresses = cni.lock.lock().await;
        if addresses.contains_key(uid) {
            cni.release_address(&mut addresses, uid);
        } else {
            if let Some(attachment) = cni.cached(uid) {
                cni.detach(uid, attachment).await;
            }
            for namespace in [cni.netns_dir.join(uid), cni.userns_dir.join(uid)] {
                if let Err(e) = sys::remove_netns(&namespace) {
                    tracing::warn!(namespace = %namespace.display(), error = %e, "cannot remove the pod's namespace");
                }
            }
        }
        cni.remove_idle_bridge(&addresses);
    }

    /// Releases the networks of pods no longer here (deleted while the agent was down, or ended): run at
    /// start, before any pod worker, with the uids of this node's pods still running.
    pub async fn collect(&self, live: &HashSet<String>) {
        let Some(cni) = &self.cni else { return };
        let mut uids: HashSet<String> = cni.lock.lock().await.keys().cloned().collect();
        for dir in [&cni.cache_dir, &cni.netns_dir, &cni.userns_dir] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                uids.insert(name.strip_suffix(".json").unwrap_or(&name).to_string());
            }
        }
        for uid in uids.difference(live) {
            tracing::info!(pod_uid = %uid, "releasing the network of a pod no longer on this node");
            self.release(uid).await;
        }
    }
}

impl Cni {
    fn cache_path(&self, uid: &str) -> PathBuf {
        self.cache_dir.join(format!("{uid}.json"))
    }

    fn cached(&self, uid: &str) -> Option<Attachment> {
        let text = std::fs::read(self.cache_path(uid)).ok()?;
        match serde_json::from_slice(&text) {
            Ok(attachment) => Some(attachment),
            Err(e) => {
                tracing::warn!(pod_uid = %uid, error = %e, "unreadable cached network result: ignored");
                None
            }
        }
    }

    async fn add(
        &self,
        pod: &Pod,
        uid: &str,
        addresses: &Addresses,
        ids: Option<IdRange>,
    ) -> Result<PodAddress, NetworkError> {
        let netns = self.netns_dir.join(uid);
        let userns = ids.map(|_| self.userns_dir.join(uid));
        // Files left by an ADD that never finished (the agent died in between).
        sys::remove_netns(&netns).map_err(io_error("cannot remove the stale network namespace", &netns))?;
        let stale_userns = self.userns_dir.join(uid);
        sys::remove_netns(&stale_userns).map_err(io_error("cannot remove the stale user namespace", &stale_userns))?;
        match (&userns, ids) {
            (Some(userns), Some(ids)) => sys::create_netns_in_userns(&netns, userns, ids.host_id, ids.size)
                .map_err(io_error("cannot create the user and network namespaces", &netns))?,
            _ => sys::create_netns(&netns).map_err(io_error("cannot create the network namespace", &netns))?,
        }
        let port_mappings = port_mappings(pod);
        let list = cni::for_pod(&self.list, &port_mappings);
        let args = cni_args(pod);
        let target = cni::Target { container_id: uid, netns: &netns, ifname: "lo", args: &args };
        let added = match cni::add(&cni::loopback(), &target, &[]).await {
            Ok(_) => cni::add(&list, &cni::Target { ifname: POD_IFNAME, ..target }, &port_mappings).await,
            Err(e) => Err(e),
        };
        let result = match added.and_then(|result| Ok((cni::pod_ip(&result)?, result))) {
            Ok(result) => result,
            Err(e) => {
                // Undo whatever part of ADD happened (an address allocated before a later plugin failed).
                let target = cni::Target { ifname: POD_IFNAME, ..target };
                if let Err(del) = cni::del(&list, &target, &port_mappings, None).await {
                    tracing::warn!(error = %del, "cannot undo the failed network setup");
                }
                let _ = sys::remove_netns(&netns);
                if let Some(userns) = &userns {
                    let _ = sys::remove_netns(userns);
                }
                self.remove_idle_bridge(addresses);
                return Err(e);
            }
        };
        let (ip, result) = result;
        let attachment = Attachment { netns: netns.clone(), list, port_mappings, result };
        let path = self.cache_path(uid);
        let temporary = path.with_extension("tmp");
        let bytes = serde_json::to_vec(&attachment).unwrap_or_default();
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(io_error("cannot cache the network result in", &path))?;
        tracing::info!(%ip, "pod network attached");
        let userns =
            userns.zip(ids).map(|(path, ids)| skiff_shim::UserNamespace { path, host_id: ids.host_id, size: ids.size });
        Ok(PodAddress { ip, netns: Some(netns), userns })
    }

    /// CNI DEL with the cached result, then the namespace and the cache entry go. A failed DEL keeps the
    /// cache entry, so the next agent start tries again.
    async fn detach(&self, uid: &str, attachment: Attachment) {
        let target = cni::Target { container_id: uid, netns: &attachment.netns, ifname: POD_IFNAME, args: "" };
        let deleted = cni::del(&attachment.list, &target, &attachment.port_mappings, Some(&attachment.result)).await;
        for namespace in [attachment.netns.clone(), self.userns_dir.join(uid)] {
            if let Err(e) = sys::remove_netns(&namespace) {
                tracing::warn!(namespace = %namespace.display(), error = %e, "cannot remove the pod's namespace");
            }
        }
        match deleted {
            Ok(()) => {
                let _ = std::fs::remove_file(self.cache_path(uid));
                tracing::info!(pod_uid = %uid, "pod network released");
            }
            Err(e) => tracing::warn!(pod_uid = %uid, error = %e, "cannot release the pod's network"),
        }
    }

    /// The pod's address on the bridge: the one it holds (after an agent restart), else a new lease. The
    /// bridge is made if missing, as the bridge plugin makes it.
    fn attach_address(&self, addresses: &mut Addresses, uid: &str) -> Result<PodAddress, NetworkError> {
        let held = addresses.get(uid).copied();
        let ip = match held {
            Some(ip) => ip,
            None => self.store.allocate(uid, &self.bridge)?,
        };
        // Added again when held too: the lease outlives the bridge across a reboot.
        let added = self.add_to_bridge(ip, addresses.is_empty()).map_err(|source| NetworkError::Kernel {
            what: format!("cannot add {ip}/32 to the bridge {}", self.bridge),
            source,
        });
        if let Err(e) = added {
            if held.is_none() {
                let _ = self.store.release(ip, uid, &self.bridge);
            }
            return Err(e);
        }
        addresses.insert(uid.to_string(), ip);
        if held.is_some() {
            tracing::debug!(%ip, "the pod's address is still leased: adopted");
        } else {
            tracing::info!(%ip, "pod address attached");
        }
        Ok(PodAddress { ip: ip.into(), netns: None, userns: None })
    }

    /// Adds `ip` to the bridge, made first (with its gateway) by the first pod without a namespace, or when
    /// it is missing; the pods after that save the check.
    fn add_to_bridge(&self, ip: Ipv4Addr, first: bool) -> std::io::Result<()> {
        if !first {
            match sys::add_address(&self.bridge, ip, 32) {
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                added => return added,
            }
        }
        sys::ensure_bridge(&self.bridge, self.store.gateway(), self.cidr.prefix)?;
        sys::add_address(&self.bridge, ip, 32)
    }

    /// Takes the pod's address off the bridge, then ends its lease. Either failing keeps the address in
    /// `addresses`, so a later release (at the latest the next agent start) tries again.
    fn release_address(&self, addresses: &mut Addresses, uid: &str) {
        let Some(ip) = addresses.get(uid).copied() else { return };
        if let Err(e) = sys::remove_address(&self.bridge, ip, 32) {
            tracing::warn!(pod_uid = %uid, %ip, error = %e, "cannot remove the pod's address from the bridge");
            return;
        }
        match self.store.release(ip, uid, &self.bridge) {
            Ok(_) => {
                addresses.remove(uid);
                tracing::info!(pod_uid = %uid, %ip, "pod address released");
            }
            Err(e) => tracing::warn!(pod_uid = %uid, %ip, error = %e, "cannot release the pod's address"),
        }
    }

    /// The bridge plugin never removes its bridge: the agent does, once no pod is attached (no namespace,
    /// no address on it), with the (empty) namespace directory.
    fn remove_idle_bridge(&self, addresses: &Addresses) {
        if !addresses.is_empty() || std::fs::read_dir(&self.cache_dir).into_iter().flatten().flatten().next().is_some()
        {
            return;
        }
        if let Err(e) = sys::delete_bridge(&self.bridge) {
            tracing::warn!(bridge = %self.bridge, error = %e, "cannot remove the idle pod bridge");
        }
        let _ = std::fs::remove_dir(&self.userns_dir);
        if std::fs::remove_dir(&self.netns_dir).is_ok()
            && let Some(run_dir) = self.netns_dir.parent()
        {
            let _ = std::fs::remove_dir(run_dir);
        }
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Eight hex digits naming this agent's network on the machine (several agents may share one, in tests).
fn network_id(node_name: &str, data_dir: &Path) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(node_name.as_bytes());
    hash.update([0]);
    hash.update(data_dir.as_os_str().as_encoded_bytes());
    hex::encode(&hash.finalize()[..4])
}

/// `CNI_ARGS` as the kubelet's runtimes pass them.
fn cni_args(pod: &Pod) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The pod's hostPorts.
fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    containers
        .into_iter()
        .flatten()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            Some(PortMapping {
                host_port: u16::try_from(port.host_port?).ok().filter(|p| *p > 0)?,
                container_port: u16::try_from(port.container_port).ok()?,
                protocol: port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                host_ip: port.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// A pod's `/etc/hosts`, as the kubelet writes it.
pub fn hosts_file(hostname: &str, ip: IpAddr) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    )
}

/// Writes the pod's `/etc/hosts` and `/etc/resolv.conf` (`resolv_conf`) into its directory; returns them as
/// the mounts containers get.
pub fn write_pod_files(
    pod_dir: &Path,
    hostname: &str,
    ip: IpAddr,
    resolv_conf: &str,
) -> std::io::Result<Vec<skiff_shim::Mount>> {
    std::fs::create_dir_all(pod_dir)?;
    let hosts = pod_dir.join("etc-hosts");
    std::fs::write(&hosts, hosts_file(hostname, ip))?;
    let resolv = pod_dir.join("resolv.conf");
    std::fs::write(&resolv, resolv_conf)?;
    let mount = |host_path: PathBuf, path: &str| skiff_shim::Mount {
        host_path,
        container_path: path.to_string(),
        read_only: false,
    };
    Ok(vec![mount(hosts, "/etc/hosts"), mount(resolv, "/etc/resolv.conf")])
}

/// Picks a free range of [`POOL`] of length `prefix` for this agent (see the module's documentation) and
/// claims it.
fn derive_cidr(id: &str, prefix: u8, claim: &Claim, claims: &Path) -> Result<Ipv4Cidr, NetworkError> {
    let routes = host_routes();
    let count = 1u32 << (prefix - POOL.prefix);
    let start = u32::from_str_radix(&id[..2], 16).unwrap_or(0) % count;
    for step in 0..count {
        let cidr = POOL.subnet(prefix, (start + step) % count);
        if routes.iter().any(|route| route.overlaps(&cidr)) {
            continue;
        }
        if claim.take(claims, cidr, false).map_err(io_error("cannot claim a pod range in", claims))? {
            return Ok(cidr);
        }
    }
    Err(NetworkError::NoRange)
}

/// The networks the host routes to (not the default route), from /proc/net/route.
fn host_routes() -> Vec<Ipv4Cidr> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines().skip(1).filter_map(parse_route).filter(|route| route.prefix > 0).collect()
}

/// One line of /proc/net/route: destination and mask in hex, in the kernel's (little-endian) byte order.
fn parse_route(line: &str) -> Option<Ipv4Cidr> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
    let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
    // The kernel prints the big-endian address as a native integer: its native bytes are the address's.
    let network = Ipv4Addr::from(destination.to_ne_bytes());
    let prefix = mask.count_ones() as u8;
    Some(Ipv4Cidr { network, prefix })
}

/// A claim on a pod range by one agent on this machine: a file naming its data dir, bridge, namespace
/// directory, network id and network namespace, so that once the data dir is gone (a test's agent) the
/// range and what the agent left in its network namespace can be reclaimed.
struct Claim {
    data_dir: PathBuf,
    bridge: String,
    run_dir: PathBuf,
    /// Names its nftables tables; claims written before it was recorded have none.
    network_id: Option<String>,
    /// Where its bridge and tables are (agents in network namespaces of their own share the claims).
    netns: Option<String>,
}

impl Claim {
    fn path(claims: &Path, cidr: Ipv4Cidr) -> PathBuf {
        claims.join(cidr.to_string().replace('/', "-"))
    }

    fn encode(&self) -> String {
        let optional = |value: &Option<String>| value.clone().unwrap_or_default();
        format!(
            "{}\n{}\n{}\n{}\n{}\n",
            self.data_dir.display(),
            self.bridge,
            self.run_dir.display(),
            optional(&self.network_id),
            optional(&self.netns)
        )
    }

    fn decode(text: &str) -> Option<Claim> {
        let mut lines = text.lines();
        let (data_dir, bridge, run_dir) = (lines.next()?.into(), lines.next()?.into(), lines.next()?.into());
        let mut optional = || lines.next().filter(|line| !line.is_empty()).map(str::to_string);
        Some(Claim { data_dir, bridge, run_dir, network_id: optional(), netns: optional() })
    }

    /// Claims `cidr`; true when it is ours (now or already): no other agent's claim overlaps it. `force`
    /// takes it whoever held it.
    fn take(&self, claims: &Path, cidr: Ipv4Cidr, force: bool) -> std::io::Result<bool> {
        // Ranges of different lengths overlap without sharing a file: one agent at a time looks and claims.
        let lock = std::fs::File::create(claims.join(".lock"))?;
        // SAFETY: flock on a descriptor owned here; closing it releases the lock.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !force {
            for entry in std::fs::read_dir(claims)?.flatten() {
                let name = entry.file_name().to_string_lossy().replace('-', "/");
                let Ok(claimed) = name.parse::<Ipv4Cidr>() else { continue };
                let holder = std::fs::read_to_string(entry.path()).ok().and_then(|text| Self::decode(&text));
                if claimed.overlaps(&cidr) && holder.is_some_and(|holder| holder.data_dir != self.data_dir) {
                    return Ok(false);
                }
            }
        }
        std::fs::write(Self::path(claims, cidr), self.encode())?;
        Ok(true)
    }

    /// Removes the claims whose agent's data dir is gone, with what those agents left. What an agent left in
    /// another network namespace is only reachable from there: its claim waits (keeping its range from
    /// agents whose traffic that namespace's leftovers would catch) for an agent in that namespace, or for
    /// the namespace to end, which takes the leftovers with it.
    fn reap_stale(claims: &Path) {
        let here = sys::current_netns();
        for entry in std::fs::read_dir(claims).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(holder) = std::fs::read_to_string(&path).ok().and_then(|text| Self::decode(&text)) else {
                continue;
            };
            if holder.data_dir.exists() {
                continue;
            }
            match &holder.netns {
                Some(netns) if here.as_ref() != Some(netns) => {
                    if !sys::netns_exists(netns) {
                        holder.release(&path);
                    }
                }
                _ => holder.reap(&path),
            }
        }
    }

    /// Its bridge and nftables tables (in this namespace), then the rest of its claim.
    fn reap(&self, path: &Path) {
        tracing::info!(data_dir = %self.data_dir.display(), "reclaiming the pod range of a removed agent");
        if let Err(e) = sys::delete_bridge(&self.bridge) {
            tracing::warn!(bridge = %self.bridge, error = %e, "cannot remove a removed agent's bridge");
        }
        if let Some(id) = &self.network_id
            && let Err(e) = crate::nft::remove_network_tables(id)
        {
            tracing::warn!(network = %id, error = %e, "cannot remove a removed agent's nftables tables");
        }
        self.release(path);
    }

    /// Its pods' namespaces (their veths go with them), its namespace directory, its claim file at `path`.
    fn release(&self, path: &Path) {
        for dir in ["netns", "userns"] {
            for entry in std::fs::read_dir(self.run_dir.join(dir)).into_iter().flatten().flatten() {
                let _ = sys::remove_netns(&entry.path());
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_overlap() {
        let cidr: Ipv4Cidr = "10.42.7.0/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.42.7.0/24");
        assert!(cidr.overlaps(&POOL) && POOL.overlaps(&cidr));
        assert!(!cidr.overlaps(&"10.42.8.0/24".parse().unwrap()));
        assert_eq!(POOL.subnet(24, 200).to_string(), "10.42.200.0/24");
        assert_eq!(POOL.subnet(22, 3).to_string(), "10.42.12.0/22");
        for bad in ["10.42.7.1/24", "10.42.7.0", "10.42.7.0/33", "10.42.7.0/31", "::1/64", "x/24", "10.0.0.0/4"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let error = "10.42.7.1/24".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(error.contains("10.42.7.0/24"), "{error}");
    }

    #[test]
    fn a_derived_range_holds_max_pods() {
        let prefixes: Vec<u8> = [110, 253, 254, 1000, 10_000, 70_000].map(Ipv4Cidr::prefix_for).into();
        assert_eq!(prefixes, [24, 24, 23, 22, 18, 16]);
        assert_eq!(POOL.subnet(22, 0).pods(), 1021);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<Mode>().unwrap(), Mode::Auto);
        assert_eq!("cni".parse::<Mode>().unwrap(), Mode::Cni);
        assert_eq!("host".parse::<Mode>().unwrap(), Mode::Host);
        assert!("bridge".parse::<Mode>().is_err());
    }

    #[test]
    fn kernel_routes_parse() {
        let line = "eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0";
        assert_eq!(parse_route(line).unwrap().to_string(), "10.0.2.0/24");
        let default = "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0";
        assert_eq!(parse_route(default).unwrap().prefix, 0);
        assert!(parse_route("garbage").is_none());
    }

    #[test]
    fn host_ports_become_port_mappings() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
                {"name": "b", "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"}]},
            ]},
        }))
        .unwrap();
        assert_eq!(
            port_mappings(&pod),
            [
                PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into()
                },
            ]
        );
        assert_eq!(
            cni_args(&pod),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=u"
        );
    }

    #[test]
    fn names_are_short_and_per_agent() {
        let a = network_id("node-1", Path::new("/tmp/a"));
        let b = network_id("node-1", Path::new("/tmp/b"));
        assert_eq!(a.len(), 8);
        assert_ne!(a, b, "two agents named alike on one machine get different bridges");
        assert!(format!("skf{a}").len() < libc::IFNAMSIZ);
    }

    #[test]
    fn hosts_name_the_pod() {
        let hosts = hosts_file("web", "10.42.7.5".parse().unwrap());
        assert!(hosts.contains("127.0.0.1\tlocalhost\n") && hosts.ends_with("10.42.7.5\tweb\n"), "{hosts}");
    }

    #[test]
    fn claims_are_exclusive_and_reaped_with_their_agent() {
        let dir = tempfile::tempdir().unwrap();
        let claims = dir.path().join("claims");
        std::fs::create_dir_all(&claims).unwrap();
        let cidr = POOL.subnet(24, 9);
        let data = dir.path().join("agent-a");
        std::fs::create_dir_all(&data).unwrap();
        let here = sys::current_netns();
        assert!(here.is_some(), "this process's network namespace");
        let claim = |name: &str, bridge: &str| Claim {
            data_dir: dir.path().join(format!("agent-{name}")),
            bridge: bridge.into(),
            run_dir: dir.path().join(format!("run-{name}")),
            network_id: None,
            netns: here.clone(),
        };
        let a = claim("a", "skfnone0000");
        let b = claim("b", "skfnone0001");
        assert_eq!(data, a.data_dir);
        assert!(a.take(&claims, cidr, false).unwrap());
        assert!(a.take(&claims, cidr, false).unwrap(), "a claim is its holder's again");
        assert!(!b.take(&claims, cidr, false).unwrap(), "and nobody else's");
        assert!(!b.take(&claims, POOL.subnet(22, 2), false).unwrap(), "nor a larger range around it");
        assert!(b.take(&claims, POOL.subnet(22, 3), false).unwrap(), "a range beside it is free");
        Claim::reap_stale(&claims);
        assert!(!b.take(&claims, cidr, false).unwrap(), "a live agent's claim stays");
        std::fs::remove_dir_all(&data).unwrap();
        Claim::reap_stale(&claims);
        assert!(b.take(&claims, cidr, false).unwrap(), "a removed agent's claim is reclaimed");

        // An agent that ran in another network namespace: its claim waits for that namespace to end.
        assert!(is_root(), "the claims test makes a network namespace: run it as root");
        let mut holder = std::process::Command::new("unshare").args(["--net", "sleep", "60"]).spawn().unwrap();
        let namespace = format!("/proc/{}/ns/net", holder.id());
        // unshare is in this namespace until it has made its own.
        let elsewhere = (0..500)
            .find_map(|_| {
                let netns = sys::netns_of(Path::new(&namespace)).filter(|ns| Some(ns) != here.as_ref());
                if netns.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                netns
            })
            .expect("unshare makes a network namespace");
        let away = Claim { netns: Some(elsewhere), ..claim("away", "skfnone0002") };
        let range = POOL.subnet(24, 40);
        assert!(away.take(&claims, range, false).unwrap());
        Claim::reap_stale(&claims);
        assert!(!b.take(&claims, range, false).unwrap(), "a claim from a namespace that still exists stays");
        holder.kill().unwrap();
        holder.wait().unwrap();
        Claim::reap_stale(&claims);
        assert!(b.take(&claims, range, false).unwrap(), "and goes with its namespace");
    }
}
