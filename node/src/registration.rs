//! The Node object: registration with capacity, addresses, node info and runtimes; the Lease renewed in
//! kube-node-lease; the Ready condition kept fresh.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::AgentError;

/// Renewal period of the node Lease: the bound ("every 10 s at most") and the kubelet's default.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration, the kubelet's default: a node whose lease is this old is presumed gone.
const LEASE_SECONDS: i32 = 40;
/// How often the Ready condition's heartbeat is refreshed without a change (the kubelet's
/// nodeStatusReportFrequency is 5 minutes; status is cheap here, so a minute keeps `kubectl get nodes` honest).
const STATUS_REFRESH: Duration = Duration::from_secs(60);

const FIELD_MANAGER: &str = "skiff-agent";

/// What the node says about itself.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: IpAddr,
    pub kubelet_port: u16,
    /// Runtime handlers: always `wasm`, plus `oci` where the host can run containers.
    pub runtimes: Vec<&'static str>,
    pub data_dir: std::path::PathBuf,
    /// `capacity.pods`: as many as the wasm runtime has instance slots for.
    pub max_pods: u32,
}

fn labels(identity: &NodeIdentity) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": identity.name,
        "kubernetes.io/os": std::env::consts::OS,
        "kubernetes.io/arch": skiff_api::go_arch(),
    });
    for runtime in &identity.runtimes {
        labels[format!("skiff.dev/runtime.{runtime}")] = json!("true");
    }
    labels
}

/// Creates the Node, or updates `existing` (the Node as read before the pod network was set up), then sets its
/// status. The pod range the agent uses goes in with that first write, so a Node is Ready only once its pods
/// can get addresses; a range the Node has already (the agent's from before, or one an administrator set) is
/// left as it is.
pub async fn register(
    nodes: &Api<Node>,
    identity: &NodeIdentity,
    mut existing: Option<Node>,
    pod_cidr: Option<&str>,
) -> Result<(), AgentError> {
    let metadata = json!({"labels": labels(identity)});
    let spec = pod_cidr.map(|cidr| json!({"podCIDR": cidr, "podCIDRs": [cidr]}));
    if existing.is_none() {
        let node = json!({"metadata": {"name": identity.name, "labels": metadata["labels"]}, "spec": spec, "status": status(identity)});
        let node: Node = serde_json::from_value(node).map_err(|e| AgentError::Config(e.to_string()))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => return update_status(nodes, identity).await,
            // Made meanwhile (by an administrator, or an agent of the same name): updated below.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                existing = nodes.get_opt(&identity.name).await.map_err(AgentError::Client)?;
            }
            Err(e) => return Err(AgentError::Client(e)),
        }
    }
    let has_range = existing.and_then(|node| node.spec?.pod_cidr).is_some();
    let mut patch = json!({"metadata": metadata});
    if let Some(spec) = spec.filter(|_| !has_range) {
        patch["spec"] = spec;
    }
    nodes
        .patch(&identity.name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(patch))
        .await
        .map_err(AgentError::Client)?;
    update_status(nodes, identity).await
}

async fn update_status(nodes: &Api<Node>, identity: &NodeIdentity) -> Result<(), AgentError> {
    let patch = Patch::Merge(json!({"status": status(identity)}));
    nodes.patch_status(&identity.name, &PatchParams::default(), &patch).await.map_err(AgentError::Client)?;
    Ok(())
}

fn status(identity: &NodeIdentity) -> Value {
    let now = crate::now();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_kib = meminfo_total_kib().unwrap_or(0);
    let storage = disk_bytes(&identity.data_dir).unwrap_or(0);
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{memory_kib}Ki"),
        "pods": identity.max_pods.to_string(),
        "ephemeral-storage": storage.to_string(),
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "skiff agent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": identity.ip.to_string()},
            {"type": "Hostname", "address": identity.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": identity.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": std::env::consts::OS,
            "architecture": skiff_api::go_arch(),
        },
        "runtimeHandlers": identity.runtimes.iter().map(|r| json!({"name": r, "features": {"recursiveReadOnlyMounts": false, "userNamespaces": false}})).collect::<Vec<_>>(),
    })
}

/// Renews the Lease every [`LEASE_RENEW`] and refreshes the status now and then, until `shutdown`.
pub async fn heartbeat(client: kube::Client, identity: NodeIdentity, shutdown: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REFRESH);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&leases, &identity.name).await {
                    tracing::warn!(error = %e, "cannot renew the node lease");
                }
            }
            _ = status_tick.tick() => {
                if let Err(e) = update_status(&nodes, &identity).await {
                    tracing::warn!(error = %e, "cannot update the node status");
                }
            }
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, name: &str) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
    });
    leases.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(lease)).await.map(|_| ())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// The node's memory, as its status reports it (capacity and allocatable): `MemTotal`.
pub(crate) fn allocatable_memory() -> u64 {
    meminfo_total_kib().unwrap_or(0) * 1024
}

fn meminfo_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Total bytes of the filesystem holding `dir`.
fn disk_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a properly sized, writable statvfs.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (result == 0).then(|| stat.f_blocks as u64 * stat.f_frsize as u64)
}
