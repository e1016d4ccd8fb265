//! OCI containers end to end (issue 4): busybox images from a real registry run by a real `skiff agent`
//! through libcontainer, observed with kubectl and on the host (/proc, /proc/mounts, the cgroup tree, the
//! agent's data dir). Needs root, as the OCI shim does: they fail without it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, is_root};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Dropped agent first: it takes its containers (and their root mounts) along before the cluster's
/// directory, which holds the agent's data dir, is removed.
pub(crate) struct Node {
    pub agent: Agent,
    pub cluster: Cluster,
    pub registry: Registry,
}

impl Node {
    pub(crate) fn start() -> Self {
        assert!(is_root(), "the OCI container tests need root, as the OCI shim does");
        let registry = Registry::start().unwrap();
        let cluster = Cluster::start(Backend::Embedded).unwrap();
        let agent = Agent::join_with(&cluster, "node-1", &[]).unwrap();
        Node { agent, cluster, registry }
    }

    /// Creates a pod bound to the agent from YAML lines for its spec (indented by two spaces).
    pub(crate) fn pod(&self, name: &str, spec: &str) {
        self.cluster.create_pod(name, &self.agent.name, &format!("  terminationGracePeriodSeconds: 2\n{spec}"));
    }

    pub(crate) fn get(&self, name: &str) -> Value {
        self.cluster.pod(name)
    }

    pub(crate) fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.cluster.wait_pod_phase(name, phase, TIMEOUT, &self.agent)
    }

    pub(crate) fn status(&self, pod: &str, container: &str) -> Value {
        let pod = self.get(pod);
        let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
        statuses.into_iter().find(|s| s["name"] == container).unwrap_or(Value::Null)
    }

    pub(crate) fn logs(&self, pod: &str, container: &str) -> String {
        self.cluster.ok(&["logs", pod, "-c", container])
    }

    /// The OCI shim's id of a running container, from its containerID (`oci://<id>`).
    fn container_id(&self, pod: &str, container: &str) -> String {
        eventually("the container running", TIMEOUT, || {
            let status = self.status(pod, container);
            let id = status["containerID"].as_str()?.strip_prefix("oci://")?.to_owned();
            status["state"]["running"].is_object().then_some(id)
        })
    }

    /// The host pid of a container's init process, from libcontainer's state in the agent's data dir.
    fn init_pid(&self, id: &str) -> i32 {
        let state = container_files(self.agent.data_dir(), id)[0].join("state").join(id).join("state.json");
        let state: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        state["pid"].as_i64().expect("a running container has a pid") as i32
    }
}

/// What other local users can read or write under `dir`, kube-bench's way: every entry they can reach (each
/// directory above it searchable by others) whose mode lets others read or write it, with its mode.
fn exposed(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut reachable = vec![dir.to_path_buf()];
    while let Some(dir) = reachable.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else { continue };
            let mode = metadata.permissions().mode() & 0o777;
            if !metadata.file_type().is_symlink() && mode & 0o006 != 0 {
                found.push(format!("{} {mode:o}", entry.path().display()));
            }
            if metadata.is_dir() && mode & 0o001 != 0 {
                reachable.push(entry.path());
            }
        }
    }
    found
}

/// Where the OCI shim keeps a container's files: its runtime files (the OCI bundle, libcontainer's state)
/// on the shim's tmpfs, and its writable layer.
fn container_files(data_dir: &Path, id: &str) -> [PathBuf; 3] {
    ["run", "upper", "work"].map(|dir| data_dir.join("oci").join(dir).join(id))
}

/// The mount points under the OCI shim's directory but its tmpfs for runtime files, which lives as long as
/// the agent's shim does.
fn container_mounts(data_dir: &Path) -> Vec<String> {
    let oci = data_dir.join("oci");
    let run_dir = oci.join("run");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| Path::new(point).starts_with(&oci) && Path::new(point) != run_dir)
        .map(str::to_owned)
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The container's cgroup directories on this host (v1 controllers and the unified hierarchy).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("skiff").join(id), root.join("unified/skiff").join(id)];
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(entry.path().join("skiff").join(id));
    }
    dirs
}

/// CPU time the container's cgroup used, in nanoseconds (v1 cpuacct, or v2 cpu.stat).
fn cpu_usage_ns(id: &str) -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(text) = std::fs::read_to_string(root.join("cpuacct/skiff").join(id).join("cpuacct.usage"))
        .or_else(|_| std::fs::read_to_string(root.join("cpu,cpuacct/skiff").join(id).join("cpuacct.usage")))
    {
        return text.trim().parse().ok();
    }
    let stat = std::fs::read_to_string(root.join("skiff").join(id).join("cpu.stat")).ok()?;
    let usec: u64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
    Some(usec * 1000)
}

#[test]
fn commands_exit_codes_and_the_images_own_entrypoint_and_user() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    let exec = json!({
        "Env": ["PATH=/bin"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo from the image as $(busybox id -u):$(busybox id -g) in $(busybox pwd)"],
        "User": "app",
        "WorkingDir": "/tmp",
    });
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/tmp:/bin/sh\n"),
        ("etc/group", "root:x:0:\napp:x:1001:\n"),
    ];
    let own = node.registry.push_busybox_with("tools/own", exec, &files);
    node.pod(
        "hello",
        &format!("  restartPolicy: Never\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, 'echo hello; exit 0']\n"),
    );
    node.pod(
        "three",
        &format!("  restartPolicy: Never\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, 'exit 3']\n"),
    );
    node.pod("own", &format!("  restartPolicy: Never\n  containers:\n  - name: main\n    image: {own}\n"));

    let hello = node.wait_phase("hello", "Succeeded");
    assert_eq!(hello["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    assert_eq!(node.logs("hello", "main"), "hello\n");

    let three = node.wait_phase("three", "Failed");
    let terminated = &three["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((terminated["exitCode"].as_i64(), terminated["reason"].as_str()), (Some(3), Some("Error")));

    node.wait_phase("own", "Succeeded");
    assert_eq!(node.logs("own", "main"), "from the image as 1000:1001 in /tmp\n", "Entrypoint, Cmd, User, WorkingDir");
}

#[test]
fn security_context_user_read_only_root_capabilities_and_seccomp() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    let status = "busybox grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status";
    node.pod(
        "secure",
        &format!(
            "  restartPolicy: Never
  containers:
  - name: ids
    image: {busybox}
    command: [sh, -c, 'busybox id -u; busybox id -g']
    securityContext: {{runAsUser: 1234, runAsGroup: 5678}}
  - name: readonly
    image: {busybox}
    command: [sh, -c, 'if echo x 2>/dev/null > /probe; then echo writable; else echo read-only; fi']
    securityContext: {{readOnlyRootFilesystem: true}}
  - name: default
    image: {busybox}
    command: [sh, -c, \"{status}; echo x > /probe && echo writable\"]
  - name: narrow
    image: {busybox}
    command: [sh, -c, \"{status}\"]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL], add: [NET_BIND_SERVICE]}}
"
        ),
    );
    node.wait_phase("secure", "Succeeded");
    assert_eq!(node.logs("secure", "ids"), "1234\n5678\n");
    let readonly = node.logs("secure", "readonly");
    assert_eq!(readonly, "read-only\n", "a write to a read-only root fails");
    // containerd's default set: CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP
    // NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE; the default seccomp filter (mode 2).
    let default = node.logs("secure", "default");
    assert!(default.contains("CapEff:\t00000000a80425fb"), "{default}");
    assert!(default.contains("NoNewPrivs:\t0") && default.contains("Seccomp:\t2"), "{default}");
    assert!(default.ends_with("writable\n"), "{default}");
    let narrow = node.logs("secure", "narrow");
    assert!(narrow.contains("CapEff:\t0000000000000400") && narrow.contains("NoNewPrivs:\t1"), "{narrow}");

    // runAsNonRoot with an image that runs as root is refused, as the kubelet does.
    node.pod(
        "nonroot",
        &format!(
            "  securityContext: {{runAsNonRoot: true}}\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '60']\n"
        ),
    );
    let waiting = eventually("the runAsNonRoot refusal", TIMEOUT, || {
        let waiting = node.status("nonroot", "main")["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    assert_eq!(waiting["message"], "container has runAsNonRoot and image will run as root", "{waiting}");
}

#[test]
fn memory_limit_oom_kills_and_cpu_limit_throttles() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    node.pod(
        "hog",
        &format!(
            "  restartPolicy: Never\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, 'busybox head -c 200m /dev/zero | busybox tail']\n    resources: {{limits: {{memory: 32Mi}}}}\n"
        ),
    );
    node.pod(
        "spin",
        &format!(
            "  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, 'while :; do :; done']\n    resources: {{limits: {{cpu: 200m}}}}\n"
        ),
    );
    let hog = node.wait_phase("hog", "Failed");
    let terminated = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");

    let id = node.container_id("spin", "main");
    let first = eventually("cpu usage of the busy loop", TIMEOUT, || cpu_usage_ns(&id).map(|ns| (ns, Instant::now())));
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_usage_ns(&id).unwrap() - first.0;
    let share = used as f64 / first.1.elapsed().as_nanos() as f64;
    assert!((0.12..=0.30).contains(&share), "a 200m limit holds a busy loop near 20% of a core: {:.1}%", share * 100.0);
    node.cluster.ok(&["delete", "pod", "spin", "--timeout=60s"]);
}

#[test]
fn a_killed_agent_adopts_its_running_container_and_deleting_the_pod_leaves_nothing() {
    let mut node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    node.pod(
        "ticker",
        &format!(
            "  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, 'i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done']\n"
        ),
    );
    let id = node.container_id("ticker", "main");
    let pid = node.init_pid(&id);
    let uid = node.get("ticker")["metadata"]["uid"].as_str().unwrap().to_owned();
    eventually("ticks in the log", TIMEOUT, || (node.logs("ticker", "main").lines().count() >= 3).then_some(()));

    node.agent.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the container outlives the agent");
    node.agent.launch(&node.cluster).unwrap();

    let ticks_before = node.logs("ticker", "main").lines().count();
    eventually("the log flowing again", TIMEOUT, || {
        (node.logs("ticker", "main").lines().count() > ticks_before + 5).then_some(())
    });
    let status = node.status("ticker", "main");
    assert_eq!(status["containerID"], format!("oci://{id}"), "the same container: {status}");
    assert_eq!(status["restartCount"], 0, "adopted, not restarted: {status}");
    assert!(status["state"]["running"].is_object(), "{status}");
    assert!(alive(pid), "the same process");
    assert_eq!(node.init_pid(&id), pid);
    let log = node.logs("ticker", "main");
    let numbers: Vec<u64> = log.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "one ticker, no gap and no restart: {log}");
    assert!(node.agent.log().contains("adopted"), "{}", node.agent.log());

    node.cluster.ok(&["delete", "pod", "ticker", "--timeout=60s"]);
    eventually("the container's process gone", TIMEOUT, || (!alive(pid)).then_some(()));
    let data_dir = node.agent.data_dir().to_path_buf();
    let ours = container_mounts(&data_dir);
    assert!(ours.is_empty(), "no mounts left: {ours:?}");
    let left: Vec<PathBuf> = cgroup_dirs(&id).into_iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "no cgroups left: {left:?}");
    let files = container_files(&data_dir, &id);
    assert!(!files.iter().any(|f| f.exists()), "the container's files are gone: {files:?}");
    let trash = data_dir.join("oci/trash");
    eventually("its writable layer deleted", TIMEOUT, || {
        let mut left = std::fs::read_dir(&trash).unwrap().flatten();
        (!left.any(|entry| entry.file_name().to_string_lossy().starts_with(&id))).then_some(())
    });
    assert!(!data_dir.join("pods").join(&uid).exists(), "the pod's directory is gone");
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cgroup")).ok())
        .filter(|cgroup| cgroup.contains(&format!("/skiff/{id}")))
        .collect();
    assert!(processes.is_empty(), "no process left in the container's cgroup: {processes:?}");
}

#[test]
fn a_pod_deleted_while_the_agent_was_down_leaves_nothing_after_it_returns() {
    let mut node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    node.pod("orphan", &format!("  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '3600']\n"));
    let id = node.container_id("orphan", "main");
    let pid = node.init_pid(&id);

    node.agent.kill();
    // What `kubectl delete --force` does to a pod whose node is gone: the object goes at once.
    node.cluster.ok(&["delete", "pod", "orphan", "--force", "--grace-period=0"]);
    assert!(alive(pid), "the container outlives the agent");
    node.agent.launch(&node.cluster).unwrap();

    eventually("the orphaned container stopped", TIMEOUT, || (!alive(pid)).then_some(()));
    let data_dir = node.agent.data_dir().to_path_buf();
    eventually("its bundle and cgroups removed", TIMEOUT, || {
        let left = cgroup_dirs(&id).into_iter().any(|d| d.exists())
            || container_files(&data_dir, &id).iter().any(|f| f.exists());
        (!left).then_some(())
    });
    let ours = container_mounts(&data_dir);
    assert!(ours.is_empty(), "no mount left: {ours:?}");
}

/// Links a container plants in its volumes take it nowhere: a subPath is resolved inside its volume (the
/// kubelet's CVE-2017-1002101 fix), and the volumes the agent writes are read-only to containers.
#[test]
fn volumes_resist_a_container_that_plants_links() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    // An init container plants links in the volume: one to the host's root, one that stays inside.
    let volume = |app: &str, sub: &str| {
        format!(
            "  restartPolicy: Never\n  volumes: [{{name: vol, emptyDir: {{}}}}]\n  initContainers:\n  - name: plant\n    image: {busybox}\n    command: [sh, -c, 'ln -s / /vol/x && mkdir /vol/ok && echo inside > /vol/ok/file && ln -s ok /vol/alias']\n    volumeMounts: [{{name: vol, mountPath: /vol}}]\n  containers:\n  - name: app\n    image: {busybox}\n    command: [sh, -c, '{app}']\n    volumeMounts: [{{name: vol, mountPath: /mnt, subPath: {sub}}}]\n"
        )
    };
    node.pod("escape", &volume("cat /mnt/etc/hostname; ls /mnt/proc/1", "x"));
    node.pod("inside", &volume("cat /mnt/file", "alias"));

    let waiting = eventually("the escape refused", TIMEOUT, || {
        let waiting = node.status("escape", "app")["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("failed to prepare subPath for volumeMount \"vol\" of container \"app\"")
            && message.contains("not within volume path"),
        "{message}"
    );
    assert_eq!(node.get("escape")["status"]["phase"], "Pending", "the app never ran");

    // A link that stays in the volume is followed, as the kubelet follows it.
    node.wait_phase("inside", "Succeeded");
    assert_eq!(node.logs("inside", "app").trim(), "inside");

    // A ConfigMap volume mounted without readOnly is read-only all the same, and follows the ConfigMap.
    node.cluster.ok(&["create", "configmap", "settings", "--from-literal=greeting=hello"]);
    let tamper = "if echo changed > /cfg/greeting || ln -s / /cfg/root; then echo writable; else echo read-only; fi 2>/dev/null; while true; do cat /cfg/greeting; echo; sleep 0.2; done";
    node.pod(
        "tamper",
        &format!("  volumes: [{{name: cfg, configMap: {{name: settings}}}}]\n  containers:\n  - name: app\n    image: {busybox}\n    command: [sh, -c, '{tamper}']\n    volumeMounts: [{{name: cfg, mountPath: /cfg}}]\n"),
    );
    let last_line = || {
        let logs = node.cluster.kubectl(&["logs", "tamper", "-c", "app"]).stdout;
        String::from_utf8_lossy(&logs).lines().rfind(|l| !l.is_empty()).unwrap_or_default().to_string()
    };
    eventually("the container reading its ConfigMap", TIMEOUT, || (last_line() == "hello").then_some(()));
    assert!(node.logs("tamper", "app").starts_with("read-only\n"), "{}", node.logs("tamper", "app"));
    node.cluster.ok(&["patch", "configmap", "settings", "-p", r#"{"data":{"greeting":"updated"}}"#]);
    eventually("the volume following the ConfigMap", TIMEOUT, || (last_line() == "updated").then_some(()));

    // A Secret's files are for the pod's user and its fsGroup alone: 0400 by default, 0440 with the group.
    // A root container, with no user of its own, reads its root-owned files.
    node.cluster.ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    let secret = |context: &str| {
        format!(
            "  restartPolicy: Never\n{context}  volumes: [{{name: creds, secret: {{secretName: creds}}}}]\n  containers:\n  - name: app\n    image: {busybox}\n    command: [sh, -c, \"stat -L -c '%a %u %g' /creds/password; cat /creds/password\"]\n    volumeMounts: [{{name: creds, mountPath: /creds}}]\n"
        )
    };
    node.pod("owned", &secret("  securityContext: {runAsUser: 1000, fsGroup: 2000}\n"));
    node.pod("rooted", &secret(""));
    node.wait_phase("owned", "Succeeded");
    node.wait_phase("rooted", "Succeeded");
    assert_eq!(node.logs("owned", "app"), "440 1000 2000\ns3cret\n");
    assert_eq!(node.logs("rooted", "app"), "400 0 0\ns3cret\n");

    // What holds the volumes (and the server's keys and store) is no other local user's to read: the
    // server's data dir is its own; the agent's lets others only pass through (the roots of pods with user
    // namespaces), and nothing they can reach through it is readable or writable by them.
    assert_eq!(exposed(&node.cluster.data_dir()), Vec::<String>::new());
    assert_eq!(exposed(node.agent.data_dir()), Vec::<String>::new());
}

/// A pod with `hostUsers: false` runs in a user namespace of its own (the kubelet's 65,536 ids): root
/// inside, an unprivileged user on the host, with its image's files and its volumes owned as they are
/// (id-mapped mounts).
#[test]
fn a_pod_without_host_users_is_root_only_in_its_own_user_namespace() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    node.cluster.ok(&["create", "configmap", "settings", "--from-literal=greeting=hello"]);
    node.cluster.ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    let script = "cat /proc/self/uid_map; id -u; stat -c %u /bin; cat /cfg/greeting; echo; cat /creds/password; \
                  echo; echo x > /scratch/by-root && echo x > /written && echo written; \
                  sleep 3600";
    node.pod(
        "mapped",
        &format!(
            "  hostUsers: false\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n  - {{name: cfg, configMap: {{name: settings}}}}\n  - {{name: creds, secret: {{secretName: creds}}}}\n  containers:\n  - name: app\n    image: {busybox}\n    command: [sh, -c, '{script}']\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: cfg, mountPath: /cfg}}, {{name: creds, mountPath: /creds}}]\n"
        ),
    );
    let id = node.container_id("mapped", "app");
    let logs = eventually("the pod's checks", TIMEOUT, || {
        let logs = node.logs("mapped", "app");
        logs.contains("written").then_some(logs)
    });
    let lines: Vec<&str> = logs.lines().collect();
    let map: Vec<u64> = lines[0].split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let host_id = map[1];
    assert!(map[0] == 0 && map[2] == 65_536 && host_id >= 65_536 && host_id.is_multiple_of(65_536), "{logs}");
    assert_eq!(lines[1..6], ["0", "0", "hello", "s3cret", "written"], "root over its image's files and volumes");

    // On the host, its root is the pod's first id; what it wrote in its volume is root's, as it saw it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.init_pid(&id))).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    assert_eq!(uid, host_id.to_string(), "{status}");
    let pod_uid = node.get("mapped")["metadata"]["uid"].as_str().unwrap().to_owned();
    let written = node.agent.data_dir().join("pods").join(&pod_uid).join("volumes/scratch/by-root");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), 0, "through the id-mapped mount");
    let upper = container_files(node.agent.data_dir(), &id)[1].join("written");
    assert_eq!(std::fs::metadata(&upper).unwrap().uid(), host_id as u32, "its own files are the pod's id");

    // No host namespace goes with a user namespace of the pod's own.
    let refused = node.cluster.kubectl(&[
        "run",
        "shared",
        "--image",
        &busybox,
        "--overrides",
        r#"{"spec": {"hostUsers": false, "hostNetwork": true}}"#,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false"), "{stderr}");
}

/// hostNetwork shares the node's network; a container whose pod did not ask for that is refused on a node
/// without pod networking, rather than silently given the node's.
#[test]
fn host_network_is_asked_for_never_given_silently() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    // Host namespaces are for namespaces the Pod Security Standards call privileged.
    node.cluster.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged"]);
    node.pod("shared", &format!("  hostNetwork: true\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {busybox}\n    command: [cat, /proc/net/dev]\n"));
    let pod = node.wait_phase("shared", "Succeeded");
    assert_eq!(pod["status"]["podIP"], node.agent.node_ip.as_str());
    let host_devices = std::fs::read_to_string("/proc/net/dev").unwrap();
    let first_host_device = host_devices.lines().nth(2).unwrap().split(':').next().unwrap().trim().to_string();
    assert!(
        node.logs("shared", "main").contains(&first_host_device),
        "the node's devices: {}",
        node.logs("shared", "main")
    );

    let bare = Agent::join_with(&node.cluster, "bare", &["--pod-network", "host"]).unwrap();
    node.cluster.create_pod(
        "own",
        &bare.name,
        &format!("  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '3600']\n"),
    );
    let waiting = eventually("the pod refused its sandbox", TIMEOUT, || {
        let pod = node.get("own");
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        waiting["message"].as_str().is_some_and(|m| m.contains("no pod network")).then_some(waiting)
    });
    assert!(waiting["message"].as_str().unwrap().contains("hostNetwork: true"), "{waiting}");
}

/// The ServiceAccount admission's volume reaches a container: its namespace, a token and the cluster CA;
/// a pod that opts out gets no token at all.
#[test]
fn service_account_files_are_mounted() {
    let node = Node::start();
    let busybox = node.registry.push_busybox("tools/busybox");
    let script = r#"d=/var/run/secrets/kubernetes.io/serviceaccount; cat $d/namespace 2>/dev/null; echo; test -s $d/token && echo token; grep -qs "BEGIN CERTIFICATE" $d/ca.crt && echo ca; true"#;
    node.pod("sa", &format!("  restartPolicy: Never\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, '{script}']\n"));
    node.wait_phase("sa", "Succeeded");
    assert_eq!(node.logs("sa", "main"), "default\ntoken\nca\n");
    node.pod(
        "no-sa",
        &format!("  restartPolicy: Never\n  automountServiceAccountToken: false\n  containers:\n  - name: main\n    image: {busybox}\n    command: [sh, -c, '{script}']\n"),
    );
    node.wait_phase("no-sa", "Succeeded");
    assert_eq!(node.logs("no-sa", "main"), "\n", "a pod that opted out has no token");
}
