//! emptyDir volumes' `sizeLimit` and `medium: Memory` end to end (issue 16), with busybox containers run by
//! a real agent: a pod that writes past its volume's limit is evicted in the kubelet's words, and a
//! memory-backed volume is a tmpfs that goes with its pod. Needs root, as the OCI shim does.

use std::path::Path;
use std::time::Duration;

use crate::containers::Node;
use crate::harness::eventually;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The agent measures every 5 s; a pod over its limit fails well within this of its container's start.
const EVICTION: Duration = Duration::from_secs(20);

/// The mount points of the agent's (the host's) mount namespace at or under `dir`, with their types.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4).is_some_and(|point| Path::new(point).starts_with(dir)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_empty_dir_past_its_size_limit_is_evicted_and_a_memory_one_is_a_tmpfs_that_goes_with_its_pod() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    let pod = |name: &str, volume: &str, command: &str| {
        node.pod(
            name,
            &format!(
                "  volumes: [{{name: cache, emptyDir: {volume}}}]\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, '{command}; sleep 3600']\n    volumeMounts: [{{name: cache, mountPath: /cache}}]\n"
            ),
        )
    };
    pod("filler", "{sizeLimit: 1Mi}", "busybox dd if=/dev/zero of=/cache/f bs=1M count=4");
    pod("memory", "{medium: Memory, sizeLimit: 8Mi}", "busybox grep \" /cache \" /proc/mounts");

    // Over its limit: Failed, Evicted, the kubelet's message, the container killed.
    let running = |name: &str| node.status(name, "main")["state"]["running"].is_object().then_some(());
    eventually("the filler running", TIMEOUT, || running("filler"));
    let evicted = eventually("the filler evicted", EVICTION, || {
        let pod = node.get("filler");
        (pod["status"]["phase"] == "Failed").then_some(pod)
    });
    let message = "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ";
    assert_eq!(
        (evicted["status"]["reason"].as_str(), evicted["status"]["message"].as_str()),
        (Some("Evicted"), Some(message)),
        "{}",
        evicted["status"]
    );
    eventually("the filler's container killed", TIMEOUT, || {
        node.status("filler", "main")["state"]["terminated"].is_object().then_some(())
    });
    let events = node.cluster.ok(&["get", "events", "--field-selector", "involvedObject.name=filler,reason=Evicted"]);
    assert!(events.contains("exceeds the limit"), "a Warning event says why: {events}");

    // Memory-backed: a tmpfs of the sizeLimit, in the container and on the host, never evicted.
    eventually("the memory pod running", TIMEOUT, || running("memory"));
    let logs = eventually("the container's view of /cache", TIMEOUT, || {
        let logs = node.logs("memory", "main");
        (!logs.is_empty()).then_some(logs)
    });
    assert!(logs.starts_with("tmpfs /cache tmpfs ") && logs.contains("size=8192k"), "{logs}");
    let memory = node.get("memory");
    let uid = memory["metadata"]["uid"].as_str().unwrap();
    let pod_dir = node.agent.data_dir().join("pods").join(uid);
    let host = mounts_under(&pod_dir);
    assert!(
        host.len() == 1 && host[0].contains(" - tmpfs ") && host[0].contains("nosuid,nodev"),
        "one tmpfs on the host: {host:?}"
    );
    assert_eq!(node.get("memory")["status"]["phase"], "Running", "a tmpfs is held to its size by the kernel");

    node.cluster.ok(&["delete", "pod", "memory", "--timeout=60s"]);
    let left = mounts_under(&pod_dir);
    assert!(left.is_empty(), "the tmpfs goes before the pod does: {left:?}");
    assert!(!pod_dir.exists(), "and the pod's directory with it");
    assert_eq!(node.get("filler")["status"]["phase"], "Failed", "an evicted pod stays, as the kubelet leaves it");
}
