//! What a root container may not do (issue 16): busybox containers through a real agent try what a
//! container breakout starts with (a user namespace, the host's disk, kernel files), under the default
//! confinement (containerd's seccomp profile, the device cgroup, masked paths), with
//! `seccompProfile: Unconfined`, privileged, and with profiles from the node's seccomp directory. Every
//! refusal has a positive control that the same command works where Kubernetes allows it. Needs root, as
//! the OCI shim does: they fail without it.

use std::time::Duration;

use serde_json::Value;

use crate::containers::Node;
use crate::harness::eventually;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A node whose default namespace admits privileged and unconfined pods, which the baseline Pod Security
/// level refuses.
fn start() -> Node {
    let node = Node::start();
    node.cluster.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged", "--overwrite"]);
    node
}

/// The container's `key=value` report lines.
fn report(node: &Node, pod: &str, container: &str) -> Vec<(String, String)> {
    let log = node.logs(pod, container);
    log.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn waiting(node: &Node, pod: &str, container: &str) -> Value {
    eventually("the container refused", TIMEOUT, || {
        let status = node.status(pod, container);
        (status["state"]["waiting"]["reason"] == "CreateContainerConfigError")
            .then(|| status["state"]["waiting"].clone())
    })
}

/// A block device of the host as `major minor`, one the host itself can open (a disk where it may, else
/// a loop device: the machines here refuse even root their root disk), from /sys/block.
fn host_disk() -> String {
    let mut devices: Vec<(String, String)> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dev = std::fs::read_to_string(entry.path().join("dev")).ok()?;
            Some((name, dev.trim().replace(':', " ")))
        })
        .collect();
    // Disks first, then loop devices, each by name.
    devices.sort_by_key(|(name, _)| (name.starts_with("loop"), name.clone()));
    let openable = devices.into_iter().find(|(name, _)| std::fs::File::open(format!("/dev/{name}")).is_ok());
    openable.expect("the host can open one of its block devices").1
}

/// Tries each attack and prints `what=result`: the filter mode, a user namespace (`unshare -Urn`, the
/// first step of most container escapes), a node for the host's disk made and then read, kernel memory
/// (`/proc/kcore`) and a masked kernel file, and a harmless mkdir.
fn attacks(disk: &str) -> String {
    [
        "echo Seccomp=$(busybox grep Seccomp: /proc/self/status | busybox tr -dc 0-9)",
        "if busybox unshare -Urn true; then echo unshare=allowed; else echo unshare=refused; fi",
        &format!("if busybox mknod /tmp/disk b {disk}; then echo mknod=allowed; else echo mknod=refused; fi"),
        "if busybox dd if=/tmp/disk of=/dev/null bs=512 count=1; then echo disk=read; else echo disk=refused; fi",
        "echo kcore=$(busybox head -c 16 /proc/kcore | busybox wc -c)",
        "echo interrupts=$(busybox head -c 16 /proc/interrupts | busybox wc -c)",
        "if busybox mkdir /tmp/made; then echo mkdir=allowed; else echo mkdir=refused; fi",
    ]
    .join("; ")
}

fn value<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    report.iter().find(|(k, _)| k == key).map_or("(missing)", |(_, v)| v)
}

#[test]
fn a_root_container_cannot_make_namespaces_open_host_devices_or_read_kernel_files() {
    let node = start();
    let busybox = node.registry.push_busybox("tools/busybox");
    let script = attacks(&host_disk());
    let container = |name: &str, context: &str| {
        format!("  - name: {name}\n    image: {busybox}\n    command: [sh, -c, '{script} 2>/dev/null']\n{context}")
    };
    node.pod(
        "attacks",
        &format!(
            "  restartPolicy: Never\n  containers:\n{}{}{}",
            container("default", ""),
            container("unconfined", "    securityContext: {seccompProfile: {type: Unconfined}}\n"),
            container("privileged", "    securityContext: {privileged: true}\n"),
        ),
    );
    node.cluster.wait_pod_phase("attacks", "Succeeded", TIMEOUT, &node.agent);

    // Default: the filter is on, a user namespace is refused by it, the disk's node can be made (CAP_MKNOD,
    // as in Docker) but not opened (the device cgroup), kernel files are masked or absent.
    let default = report(&node, "attacks", "default");
    assert_eq!(value(&default, "Seccomp"), "2", "{default:?}");
    assert_eq!(value(&default, "unshare"), "refused", "{default:?}");
    assert_eq!(value(&default, "mknod"), "allowed", "{default:?}");
    assert_eq!(value(&default, "disk"), "refused", "{default:?}");
    assert_eq!(value(&default, "kcore"), "0", "{default:?}");
    assert_eq!(value(&default, "interrupts"), "0", "masked: {default:?}");
    assert_eq!(value(&default, "mkdir"), "allowed", "ordinary calls work: {default:?}");

    // Unconfined: no filter, so an unprivileged user namespace works as on the host; devices and masks
    // stay as they were.
    let unconfined = report(&node, "attacks", "unconfined");
    assert_eq!(value(&unconfined, "Seccomp"), "0", "{unconfined:?}");
    assert_eq!(value(&unconfined, "unshare"), "allowed", "{unconfined:?}");
    assert_eq!(value(&unconfined, "disk"), "refused", "{unconfined:?}");
    assert_eq!(value(&unconfined, "interrupts"), "0", "{unconfined:?}");

    // Privileged: everything Kubernetes gives it, the host's disk and kernel files included.
    let privileged = report(&node, "attacks", "privileged");
    assert_eq!(value(&privileged, "Seccomp"), "0", "{privileged:?}");
    assert_eq!(value(&privileged, "unshare"), "allowed", "{privileged:?}");
    assert_eq!(value(&privileged, "disk"), "read", "{privileged:?}");
    assert_eq!(value(&privileged, "interrupts"), "16", "{privileged:?}");
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(value(&privileged, "kcore"), "16", "{privileged:?}");
    }

    // `kubectl exec` starts a new process in the container: it gets the same filter.
    node.pod(
        "sleeper",
        &format!("  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '3600']\n"),
    );
    node.cluster.wait_pod_phase("sleeper", "Running", TIMEOUT, &node.agent);
    let exec = |command: &str| node.cluster.kubectl(&["exec", "sleeper", "--", "sh", "-c", command]);
    let status = eventually("an exec", TIMEOUT, || {
        let out = exec("busybox grep Seccomp: /proc/self/status");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(status.split_whitespace().collect::<Vec<_>>(), ["Seccomp:", "2"]);
    let unshare = exec("busybox unshare -Urn true");
    assert!(!unshare.status.success(), "{}", String::from_utf8_lossy(&unshare.stderr));
    assert!(String::from_utf8_lossy(&unshare.stderr).contains("Operation not permitted"), "{unshare:?}");
    node.cluster.ok(&["delete", "pod", "sleeper", "--timeout=60s"]);
}

#[test]
fn localhost_seccomp_profiles_come_from_the_nodes_profile_directory() {
    let node = start();
    let busybox = node.registry.push_busybox("tools/busybox");
    // Docker's form (`name`, `includes`), allowing everything but mkdir.
    let profiles = node.agent.data_dir().join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let profile = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"name": "chroot", "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_CHROOT"]}}]}"#;
    std::fs::write(profiles.join("no-mkdir.json"), profile).unwrap();

    let script = "if busybox mkdir /tmp/made; then echo mkdir=allowed; else echo mkdir=refused; fi; \
                  if busybox unshare -Urn true; then echo unshare=allowed; else echo unshare=refused; fi";
    node.pod(
        "local",
        &format!(
            "  restartPolicy: Never
  securityContext: {{seccompProfile: {{type: Localhost, localhostProfile: profiles/no-mkdir.json}}}}
  containers:
  - name: inherits
    image: {busybox}
    command: [sh, -c, '{script} 2>/dev/null']
  - name: overrides
    image: {busybox}
    command: [sh, -c, '{script} 2>/dev/null']
    securityContext: {{seccompProfile: {{type: RuntimeDefault}}}}
"
        ),
    );
    node.cluster.wait_pod_phase("local", "Succeeded", TIMEOUT, &node.agent);
    let inherits = report(&node, "local", "inherits");
    assert_eq!(value(&inherits, "mkdir"), "refused", "the pod's profile: {inherits:?}");
    assert_eq!(value(&inherits, "unshare"), "allowed", "and nothing else of the default: {inherits:?}");
    let overrides = report(&node, "local", "overrides");
    assert_eq!(value(&overrides, "mkdir"), "allowed", "the container's own profile wins: {overrides:?}");
    assert_eq!(value(&overrides, "unshare"), "refused", "{overrides:?}");

    // A profile the node does not have is the container's configuration error, as in the kubelet.
    node.pod(
        "missing",
        &format!(
            "  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '60']\n    securityContext: {{seccompProfile: {{type: Localhost, localhostProfile: absent.json}}}}\n"
        ),
    );
    let waiting = waiting(&node, "missing", "main");
    let message = waiting["message"].as_str().unwrap_or_default();
    let expected = node.agent.data_dir().join("seccomp/absent.json");
    assert!(
        message.starts_with("cannot load seccomp profile") && message.contains(&*expected.to_string_lossy()),
        "{waiting}"
    );
}
