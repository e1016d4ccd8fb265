//! The CNI protocol, runtime side (spec 1.0): the plugin binaries are run with `CNI_*` variables and their
//! configuration on stdin. A network configuration list runs its plugins in order on ADD, each given the
//! previous one's result, and in reverse order on DEL; the runtime injects `name`, `cniVersion`,
//! `prevResult` and the `runtimeConfig` of the capabilities a plugin declares (here `portMappings`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{Ipv4Cidr, NetworkError};

/// The spec version Skiff speaks (the newest the Debian plugins 1.1.1 know).
pub const VERSION: &str = "1.0.0";
/// The network's name: host-local keeps its leases under `<dataDir>/<name>`.
pub const NETWORK: &str = "skiff";
/// Where plugins are looked for: Debian's containernetworking-plugins, then the upstream default.
const PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// The plugins Skiff's network uses.
const PLUGINS: [&str; 4] = ["loopback", "bridge", "host-local", "portmap"];
/// A plugin that takes longer than this (waiting on the xtables lock forever, say) is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

fn find_plugin(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    PLUGIN_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|path| path.is_file())
}

/// Whether every plugin Skiff's network needs is installed.
pub fn available() -> bool {
    PLUGINS.iter().all(|name| find_plugin(name).is_some())
}

/// Skiff's network: a bridge per node that is the pods' gateway (no masquerade: pods are reached by their
/// own addresses), hairpin so a pod reaches itself through its hostPorts, host-local addresses from the
/// node's range, and portmap for hostPorts.
pub fn conflist(bridge: &str, subnet: Ipv4Cidr, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": VERSION,
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            // snat (portmap's default) makes hostPorts reachable from the node's own 127.0.0.1 too.
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// The loopback interface of a pod, a network of its own as containerd runs it.
pub fn loopback() -> Value {
    json!({"cniVersion": VERSION, "name": "cni-loopback", "plugins": [{"type": "loopback"}]})
}

/// A hostPort, in the `portMappings` capability's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The list a pod's attachment runs: plugins whose only job is a capability the pod does not use (portmap
/// without hostPorts) are left out, which saves a plugin run on every pod start and stop.
pub fn for_pod(list: &Value, port_mappings: &[PortMapping]) -> Value {
    let mut list = list.clone();
    if port_mappings.is_empty()
        && let Some(plugins) = list["plugins"].as_array_mut()
    {
        plugins.retain(|plugin| plugin["capabilities"]["portMappings"] != true);
    }
    list
}

/// The configuration plugin `index` of `list` is given.
pub fn plugin_config(list: &Value, index: usize, prev: Option<&Value>, port_mappings: &[PortMapping]) -> Value {
    let mut config = list["plugins"][index].clone();
    config["name"] = list["name"].clone();
    config["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    if config["capabilities"]["portMappings"] == true {
        config["runtimeConfig"] = json!({"portMappings": port_mappings});
    }
    config
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Add,
    Del,
}

impl Command {
    fn env(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
        }
    }

    /// As containerd words it in its errors.
    fn verb(self) -> &'static str {
        match self {
            Command::Add => "add",
            Command::Del => "delete",
        }
    }
}

/// Who a plugin works for: the `CNI_*` variables other than the command.
pub struct Target<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: &'a str,
}

fn plugin_count(list: &Value) -> usize {
    list["plugins"].as_array().map_or(0, Vec::len)
}

/// ADD: runs the plugins in order; returns the last one's result.
pub async fn add(list: &Value, target: &Target<'_>, port_mappings: &[PortMapping]) -> Result<Value, NetworkError> {
    let mut prev: Option<Value> = None;
    for index in 0..plugin_count(list) {
        let config = plugin_config(list, index, prev.as_ref(), port_mappings);
        prev = Some(invoke(Command::Add, &config, target).await?);
    }
    Ok(prev.unwrap_or_else(|| json!({"cniVersion": VERSION})))
}

/// DEL: runs every plugin in reverse order with the cached ADD result, even after one failed (so that the
/// address is released whatever else went wrong), and returns the first error.
pub async fn del(
    list: &Value,
    target: &Target<'_>,
    port_mappings: &[PortMapping],
    result: Option<&Value>,
) -> Result<(), NetworkError> {
    let mut outcome = Ok(());
    for index in (0..plugin_count(list)).rev() {
        let config = plugin_config(list, index, result, port_mappings);
        if let Err(e) = invoke(Command::Del, &config, target).await
            && outcome.is_ok()
        {
            outcome = Err(e);
        }
    }
    outcome
}

async fn invoke(command: Command, config: &Value, target: &Target<'_>) -> Result<Value, NetworkError> {
    let plugin = config["type"].as_str().unwrap_or_default().to_string();
    let failed = |message: String| NetworkError::Plugin { plugin: plugin.clone(), command: command.verb(), message };
    let path = find_plugin(&plugin).ok_or_else(|| failed(format!("not found in {}", PLUGIN_DIRS.join(", "))))?;
    let mut child = tokio::process::Command::new(&path)
        .env("CNI_COMMAND", command.env())
        .env("CNI_CONTAINERID", target.container_id)
        .env("CNI_NETNS", target.netns)
        .env("CNI_IFNAME", target.ifname)
        .env("CNI_ARGS", target.args)
        .env("CNI_PATH", PLUGIN_DIRS.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", path.display())))?;
    let mut stdin = child.stdin.take().ok_or_else(|| failed("no stdin".into()))?;
    stdin
        .write_all(config.to_string().as_bytes())
        .await
        .map_err(|e| failed(format!("cannot write its config: {e}")))?;
    drop(stdin);
    let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer after {PLUGIN_TIMEOUT:?}")))?
        .map_err(|e| failed(format!("cannot read its answer: {e}")))?;
    if !output.status.success() {
        return Err(failed(error_message(&output.stdout, &output.stderr, output.status)));
    }
    if command == Command::Del {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unreadable result: {e}")))
}

/// A plugin's error: `{code, msg, details}` on stdout, else whatever it printed.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(error) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = error["msg"].as_str()
    {
        return match error["details"].as_str().filter(|d| !d.is_empty()) {
            Some(details) => format!("{msg}: {details}"),
            None => msg.to_string(),
        };
    }
    let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr }).trim().to_string();
    if text.is_empty() { status.to_string() } else { text }
}

/// The pod's address in an ADD result: the first IP on an interface inside the namespace (or with no
/// interface named).
pub fn pod_ip(result: &Value) -> Result<IpAddr, NetworkError> {
    let interfaces = result["interfaces"].as_array();
    let in_sandbox = |ip: &&Value| match ip["interface"].as_u64() {
        Some(index) => interfaces
            .and_then(|all| all.get(index as usize))
            .is_some_and(|interface| interface["sandbox"].as_str().is_some_and(|s| !s.is_empty())),
        None => true,
    };
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(in_sandbox)
        .find_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .ok_or_else(|| NetworkError::NoAddress(result.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Value {
        conflist("skf0123abcd", "10.42.7.0/24".parse().unwrap(), Path::new("/data/network/ipam"))
    }

    #[test]
    fn the_conflist_is_a_bridge_with_host_local_and_portmap() {
        let list = list();
        assert_eq!((list["name"].as_str(), list["cniVersion"].as_str()), (Some("skiff"), Some("1.0.0")));
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "skf0123abcd");
        assert_eq!((bridge["isGateway"].as_bool(), bridge["ipMasq"].as_bool()), (Some(true), Some(false)));
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.7.0/24");
        assert_eq!(bridge["ipam"]["dataDir"], "/data/network/ipam");
        assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn plugins_get_name_version_prev_result_and_their_capabilities() {
        let list = list();
        let mappings =
            vec![PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() }];
        let first = plugin_config(&list, 0, None, &mappings);
        assert_eq!((first["name"].as_str(), first["cniVersion"].as_str()), (Some("skiff"), Some("1.0.0")));
        assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none());
        let prev = json!({"ips": [{"address": "10.42.7.2/24"}]});
        let second = plugin_config(&list, 1, Some(&prev), &mappings);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(plugin_count(&for_pod(&list, &mappings)), 2);
        assert_eq!(plugin_count(&for_pod(&list, &[])), 1, "no hostPorts: portmap is not run");
    }

    #[test]
    fn the_pod_ip_is_the_sandbox_interfaces_address() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "skf0123abcd", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/run/skiff/n/netns/uid"},
            ],
            "ips": [
                {"interface": 0, "address": "10.42.7.1/24"},
                {"interface": 2, "address": "10.42.7.5/24", "gateway": "10.42.7.1"},
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
        });
        assert_eq!(pod_ip(&result).unwrap(), "10.42.7.5".parse::<IpAddr>().unwrap());
        let bare = json!({"ips": [{"address": "10.42.7.9/24"}]});
        assert_eq!(pod_ip(&bare).unwrap(), "10.42.7.9".parse::<IpAddr>().unwrap());
        assert!(matches!(pod_ip(&json!({"ips": []})), Err(NetworkError::NoAddress(_))));
        assert!(matches!(pod_ip(&json!({"ips": [{"address": "nonsense"}]})), Err(NetworkError::NoAddress(_))));
    }

    #[test]
    fn plugin_errors_read_the_spec_error_else_the_output() {
        let status = std::process::ExitStatus::default();
        let error = br#"{"code":11,"msg":"failed to allocate for range 0","details":"no IP addresses available"}"#;
        assert_eq!(error_message(error, b"", status), "failed to allocate for range 0: no IP addresses available");
        assert_eq!(error_message(b"", b"boom\n", status), "boom");
    }
}
