//! The node agent and the wasm shim end to end: sample modules from a real registry, run by a real
//! `skiff agent`, observed with the real kubectl.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, process_status_kib};

/// The unprivileged user an agent without root runs as.
const NOBODY: u32 = 65534;

/// A cluster with one agent (`node-1`) and a registry holding the samples.
struct NodeCluster {
    cluster: Cluster,
    agent: Agent,
    registry: Registry,
}

impl NodeCluster {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(flags: &[&str]) -> Self {
        let registry = Registry::start().unwrap();
        let cluster = Cluster::start(Backend::Embedded).unwrap();
        let agent = Agent::join_with(&cluster, "node-1", flags).unwrap();
        NodeCluster { cluster, agent, registry }
    }

    /// Creates a pod bound to node-1 from a container spec in YAML (indented for `containers:`).
    fn pod(&self, name: &str, restart_policy: &str, containers: &str) {
        let spec = format!(
            "  restartPolicy: {restart_policy}\n  terminationGracePeriodSeconds: 5\n  containers:\n{containers}"
        );
        self.cluster.create_pod(name, &self.agent.name, &spec);
    }

    /// A pod running the ticker sample, ticking every 100 ms.
    fn ticker(&self, name: &str, image: &str) {
        self.pod(
            name,
            "Always",
            &format!("  - name: ticker\n    image: {image}\n    env: [{{name: INTERVAL_MS, value: \"100\"}}]\n"),
        );
    }

    fn get(&self, name: &str) -> Value {
        self.cluster.pod(name)
    }

    fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.cluster.wait_pod_phase(name, phase, Duration::from_secs(60), &self.agent)
    }
}

pub fn hello_runs_to_completion_with_logs_exit_codes_and_events() {
    let node = NodeCluster::start();
    let image = node.registry.push_sample("hello");
    node.pod(
        "hello",
        "Never",
        &format!("  - name: hello\n    image: {image}\n    args: [world]\n    env: [{{name: GREETING, value: hi}}]\n"),
    );
    let pod = node.wait_phase("hello", "Succeeded");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    let logs = node.cluster.ok(&["logs", "hello"]);
    assert!(logs.contains("arg[1]=world") && logs.contains("GREETING=hi"), "{logs}");
    let described = node.cluster.ok(&["describe", "pod", "hello"]);
    for event in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(described.contains(event), "describe shows the {event} event:\n{described}");
    }

    node.cluster.ok(&["create", "configmap", "settings", "--from-literal=COLOR=blue"]);
    node.cluster.ok(&["create", "secret", "generic", "creds", "--from-literal=TOKEN=s3cret"]);
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wired\nspec:\n  nodeName: {}\n  restartPolicy: Never\n  initContainers:\n  - name: first\n    image: {image}\n    args: [init-one]\n  - name: second\n    image: {image}\n    args: [init-two]\n  containers:\n  - name: main\n    image: {image}\n    envFrom: [{{configMapRef: {{name: settings}}}}, {{secretRef: {{name: creds}}, prefix: SECRET_}}]\n    env:\n    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}\n    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}\n",
        node.agent.name
    );
    assert!(node.cluster.with_stdin(&["apply", "-f", "-"], &manifest).status.success());
    let pod = node.wait_phase("wired", "Succeeded");
    let init: Vec<&str> = pod["status"]["initContainerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"]["terminated"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["Completed", "Completed"]);
    let first_done = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["finishedAt"].as_str().unwrap();
    let main_started = pod["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"].as_str().unwrap();
    assert!(first_done <= main_started, "init containers run first");
    assert!(node.cluster.ok(&["logs", "wired", "-c", "second"]).contains("arg[1]=init-two"));
    let logs = node.cluster.ok(&["logs", "wired", "-c", "main"]);
    let pod_ip = format!("POD_IP={}", pod["status"]["podIP"].as_str().unwrap_or_default());
    for line in ["COLOR=blue", "SECRET_TOKEN=s3cret", "POD_NAME=wired", &pod_ip] {
        assert!(logs.contains(line), "{line} in the environment: {logs}");
    }
    let image_id = pod["status"]["containerStatuses"][0]["imageID"].as_str().unwrap_or_default();
    assert!(image_id.contains("/samples/hello@sha256:"), "imageID pins the manifest digest: {image_id}");

    // An image imported into the node's store runs offline with imagePullPolicy Never.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "import"])
        .arg(crate::harness::samples_dir().join("hello.wasm"))
        .args(["edge.local/hello:v1", "--data-dir"])
        .arg(node.agent.data_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    node.pod("offline", "Never", "  - name: hello\n    image: edge.local/hello:v1\n    imagePullPolicy: Never\n");
    node.wait_phase("offline", "Succeeded");

    node.pod(
        "exit3",
        "Never",
        &format!("  - name: hello\n    image: {image}\n    env: [{{name: EXIT_CODE, value: \"3\"}}]\n"),
    );
    let pod = node.wait_phase("exit3", "Failed");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((terminated["exitCode"].as_i64(), terminated["reason"].as_str()), (Some(3), Some("Error")));
}

pub fn a_trapping_module_crash_loops_with_growing_back_off() {
    let node = NodeCluster::start();
    let image = node.registry.push_sample("hello");
    node.pod("trap", "Always", &format!("  - name: trap\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    env: [{{name: TRAP, value: \"1\"}}]\n"));
    let mut back_offs = Vec::new();
    let status = eventually("restartCount 3 in CrashLoopBackOff", Duration::from_secs(60), || {
        let status = node.get("trap")["status"]["containerStatuses"][0].clone();
        if let Some(message) = status["state"]["waiting"]["message"]
            .as_str()
            .filter(|_| status["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            && let Some(delay) = message.split_whitespace().nth(1)
            && back_offs.last().map(String::as_str) != Some(delay)
        {
            back_offs.push(delay.to_string());
        }
        (status["restartCount"].as_i64() >= Some(3) && status["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(status)
    });
    let last = &status["lastState"]["terminated"];
    assert!(last["message"].as_str().is_some_and(|m| m.contains("wasm trap")), "a trap has a clear message: {last}");
    assert!(
        back_offs.len() >= 2 && back_offs.windows(2).all(|w| seconds(&w[0]) < seconds(&w[1])),
        "back-off grows: {back_offs:?}"
    );
    assert!(node.cluster.ok(&["get", "pod", "trap"]).contains("CrashLoopBackOff"));
    let previous = node.cluster.ok(&["logs", "trap", "--previous"]);
    assert!(previous.contains("arg[0]=trap"), "--previous shows the last crashed run's output: {previous}");
    let recent = node.cluster.ok(&["logs", "trap", "--since=1h", "--tail=1"]);
    assert_eq!(recent.lines().count(), 1, "--since keeps recent lines and --tail the last one: {recent}");
}

fn seconds(delay: &str) -> u64 {
    delay.trim_end_matches('s').parse().unwrap_or(0)
}

pub fn memory_and_cpu_limits_hold() {
    let node = NodeCluster::start();
    let image = node.registry.push_sample("hello");
    let ticker = node.registry.push_sample("ticker");
    node.pod("oom", "Never", &format!("  - name: oom\n    image: {image}\n    env: [{{name: ALLOC_MB, value: \"100\"}}]\n    resources: {{limits: {{memory: 32Mi}}}}\n"));
    let pod = node.wait_phase("oom", "Failed");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled");

    // A guest with no limit that grows for ever: its memory is the agent's, so the node's default limit
    // (128Mi) ends it, and the agent's peak stays far below what the guest asked for.
    node.pod(
        "hog",
        "Never",
        &format!("  - name: hog\n    image: {image}\n    env: [{{name: GROW_MB, value: \"8\"}}]\n"),
    );
    let pod = node.wait_phase("hog", "Failed");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(message.contains("134217728 bytes") && message.contains("node's default"), "{message}");
    let peak = process_status_kib(node.agent.pid(), "VmHWM");
    assert!(peak < 512 * 1024, "the agent's peak RSS reached {peak} KiB");

    node.pod("busy", "Never", &format!("  - name: busy\n    image: {image}\n    env: [{{name: SPIN, value: \"1\"}}]\n    resources: {{limits: {{cpu: 100m}}}}\n"));
    node.ticker("ticker", &ticker);
    node.wait_phase("busy", "Running");
    node.wait_phase("ticker", "Running");
    let cpu_before = process_cpu_seconds(node.agent.pid());
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let used = (process_cpu_seconds(node.agent.pid()) - cpu_before) / started.elapsed().as_secs_f64();
    // The busy loop may use a tenth of a core; the agent and the ticker add a little.
    assert!(used < 0.4, "a busy loop with limits.cpu=100m keeps the agent at {used:.2} cores");
    let answered = Instant::now();
    let logs = node.cluster.ok(&["logs", "ticker", "--tail", "30", "--timestamps"]);
    assert!(answered.elapsed() < Duration::from_secs(5), "the agent answers while the busy loop runs");
    let times: Vec<jiff::Timestamp> = logs.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).collect();
    assert!(times.len() >= 20, "the ticker kept ticking: {logs}");
    let worst = times.windows(2).map(|w| (w[1] - w[0]).get_milliseconds()).max().unwrap_or(0);
    assert!(worst < 600, "the ticker keeps its 100 ms rhythm beside the busy loop (worst gap {worst} ms)");
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn http_sample_answers_and_logs_follow() {
    let node = NodeCluster::start();
    let http = node.registry.push_sample("http-hello");
    let ticker = node.registry.push_sample("ticker");
    let port = crate::harness::free_port();
    node.pod("web", "Always", &format!("  - name: web\n    image: {http}\n    ports: [{{containerPort: {port}}}]\n    env: [{{name: GREETING, value: howdy}}]\n    readinessProbe: {{httpGet: {{path: /, port: {port}}}, periodSeconds: 1}}\n"));
    node.ticker("ticker", &ticker);
    eventually("web Ready", Duration::from_secs(60), || {
        let pod = node.get("web");
        pod["status"]["containerStatuses"][0]["ready"].as_bool().filter(|r| *r)
    });
    // The pod's own address (the node's with host networking).
    let ip = node.get("web")["status"]["podIP"].as_str().unwrap().to_string();
    let body = reqwest::blocking::get(format!("http://{ip}:{port}/hi/there")).unwrap().text().unwrap();
    assert!(body.contains("hello from skiff") && body.contains("/hi/there") && body.contains("howdy"), "{body}");
    // A client that never finishes its request's head is let go (a slow-loris client holds nothing).
    let mut silent = std::net::TcpStream::connect(format!("{ip}:{port}")).unwrap();
    std::io::Write::write_all(&mut silent, b"GET / HTTP/1.1\r\n").unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let opened = Instant::now();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut silent, &mut answer);
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(20), "closed after {waited:?}");

    node.wait_phase("ticker", "Running");
    let mut follow =
        node.cluster.kubectl_command(&["logs", "-f", "ticker"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let rx = crate::harness::lines(follow.stdout.take().unwrap());
    let ticks: Vec<u64> = (0..15)
        .filter_map(|_| rx.recv_timeout(Duration::from_secs(10)).ok())
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ticks.len() >= 15 && ticks.windows(2).all(|w| w[1] == w[0] + 1), "logs -f streams the ticker: {ticks:?}");
}

pub fn bad_images_report_kubelet_reasons() {
    let node = NodeCluster::start();
    let missing = format!("{}/samples/nope:latest", node.registry.address);
    node.pod("missing", "Never", &format!("  - name: c\n    image: {missing}\n"));
    let mut reasons = Vec::new();
    eventually("ErrImagePull then ImagePullBackOff", Duration::from_secs(60), || {
        let waiting = node.get("missing")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        if let Some(reason) = waiting["reason"].as_str()
            && reasons.last().map(String::as_str) != Some(reason)
        {
            reasons.push(reason.to_string());
        }
        (reasons.contains(&"ErrImagePull".to_string()) && reasons.contains(&"ImagePullBackOff".to_string()))
            .then_some(())
    });
    let waiting = &node.get("missing")["status"]["containerStatuses"][0]["state"]["waiting"];
    assert!(
        waiting["message"].as_str().is_some_and(|m| m.contains("manifest unknown")),
        "the registry's message: {waiting}"
    );

    let not_wasm = node.registry.push_raw_artifact("samples/not-wasm", b"#!/bin/sh\necho this is not wasm\n");
    node.pod("notwasm", "Never", &format!("  - name: c\n    image: {not_wasm}\n"));
    let waiting = eventually("CreateContainerError", Duration::from_secs(60), || {
        let waiting = node.get("notwasm")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerError").then_some(waiting)
    });
    assert!(waiting["message"].as_str().is_some_and(|m| !m.is_empty()), "{waiting}");
    let malformed = node.registry.push_raw_artifact("samples/malformed", b"\0asm\x01\0\0\0\x01\xff\xff");
    node.pod("malformed", "Never", &format!("  - name: c\n    image: {malformed}\n"));
    eventually("CreateContainerError for a malformed module", Duration::from_secs(60), || {
        let waiting = node.get("malformed")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerError").then_some(())
    });
    assert!(node.cluster.ok(&["get", "--raw", "/readyz"]).contains("ok"));
}

pub fn killing_the_agent_neither_loses_nor_doubles_pods() {
    let mut node = NodeCluster::start();
    let hello = node.registry.push_sample("hello");
    let ticker = node.registry.push_sample("ticker");
    node.pod("done", "Never", &format!("  - name: hello\n    image: {hello}\n"));
    node.ticker("ticker", &ticker);
    node.wait_phase("done", "Succeeded");
    node.wait_phase("ticker", "Running");
    let uids = |node: &NodeCluster| node.cluster.ok(&["get", "pods", "-o", "jsonpath={.items[*].metadata.uid}"]);
    let before = uids(&node);
    node.agent.kill();
    node.agent.launch(&node.cluster).unwrap();
    let ticker_status = eventually("the ticker running again", Duration::from_secs(60), || {
        let status = node.get("ticker")["status"]["containerStatuses"][0].clone();
        (status["state"]["running"].is_object() && status["restartCount"].as_i64() >= Some(1)).then_some(status)
    });
    assert_eq!(ticker_status["restartCount"], 1, "restarted once, not doubled");
    assert_eq!(uids(&node), before, "the same pods, none lost or added");
    let done = node.get("done");
    assert_eq!(done["status"]["phase"], "Succeeded");
    assert_eq!(done["status"]["containerStatuses"][0]["restartCount"], 0, "a finished pod is not run again");
    let ticks = node.cluster.ok(&["logs", "ticker"]);
    assert!(ticks.lines().count() >= 2, "one ticker, logging: {ticks}");
    node.cluster.ok(&["delete", "pod", "ticker", "--timeout=30s"]);
}

/// The kubelet's admission: pods beyond `capacity.pods`, and pods whose wasm guests' memory does not fit
/// beside the others', fail instead of starting.
pub fn pods_beyond_capacity_are_refused_out_of_pods_or_memory() {
    // Each guest without a limit may take 40% of the node's memory: two fit, a third does not.
    let memory = mem_total_bytes();
    let default_limit = (memory * 2 / 5).to_string();
    let node = NodeCluster::start_with(&["--max-pods", "3", "--wasm-default-memory-limit", &default_limit]);
    let capacity = node.cluster.ok(&["get", "node", "node-1", "-o", "jsonpath={.status.capacity.pods}"]);
    assert_eq!(capacity, "3");
    let ticker = node.registry.push_sample("ticker");
    node.ticker("one", &ticker);
    node.ticker("two", &ticker);
    node.wait_phase("one", "Running");
    node.wait_phase("two", "Running");
    node.ticker("three", &ticker);
    let pod = node.wait_phase("three", "Failed");
    assert_eq!(pod["status"]["reason"], "OutOfmemory", "{pod}");
    let expected = format!(
        "Pod was rejected: Node didn't have enough resource: memory, requested: {default_limit}, used: {}, capacity: {memory}",
        2 * (memory * 2 / 5)
    );
    assert_eq!(pod["status"]["message"], expected.as_str());
    // A guest with a small limit of its own still fits; then the pods are as many as the node takes.
    node.pod(
        "four",
        "Always",
        &format!("  - name: ticker\n    image: {ticker}\n    resources: {{limits: {{memory: 16Mi}}}}\n"),
    );
    node.wait_phase("four", "Running");
    node.ticker("five", &ticker);
    let pod = node.wait_phase("five", "Failed");
    assert_eq!(pod["status"]["reason"], "OutOfpods", "{pod}");
    assert_eq!(node.get("one")["status"]["phase"], "Running", "admitted pods keep running");
}

/// The node's memory as the agent reports it: `MemTotal`.
fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap().trim().trim_end_matches("kB").trim();
    kib.parse::<u64>().unwrap() * 1024
}

pub fn wasm_and_container_side_by_side_in_one_pod() {
    let node = NodeCluster::start();
    let runtimes = node.cluster.ok(&["get", "node", "node-1", "-o", "jsonpath={.status.runtimeHandlers[*].name}"]);
    assert_eq!(runtimes, "wasm oci", "as root the node has both runtimes");
    let hello = node.registry.push_sample("hello");
    let busybox = node.registry.push_busybox("tools/busybox");
    node.pod(
        "mixed",
        "Never",
        &format!(
            "  - name: module\n    image: {hello}\n    args: [from-wasm]\n  - name: box\n    image: {busybox}\n    command: [sh, -c, 'echo from a container; exit 4']\n    resources: {{limits: {{memory: 64Mi}}}}\n"
        ),
    );
    let pod = node.wait_phase("mixed", "Failed");
    let statuses = pod["status"]["containerStatuses"].as_array().unwrap();
    let by_name = |name: &str| statuses.iter().find(|s| s["name"] == name).unwrap().clone();
    assert!(
        by_name("module")["containerID"].as_str().unwrap().starts_with("wasm://"),
        "the module ran in the wasm shim"
    );
    assert!(by_name("box")["containerID"].as_str().unwrap().starts_with("oci://"), "the container ran in the OCI shim");
    assert_eq!(by_name("module")["state"]["terminated"]["exitCode"], 0);
    assert_eq!(by_name("box")["state"]["terminated"]["exitCode"], 4);
    assert!(node.cluster.ok(&["logs", "mixed", "-c", "module"]).contains("arg[1]=from-wasm"));
    assert_eq!(node.cluster.ok(&["logs", "mixed", "-c", "box"]), "from a container\n");
}

/// Without root the agent runs wasm only: it registers without the OCI runtime and runs wasm pods.
pub fn an_agent_without_root_runs_wasm_pods() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_as_user(&cluster, "edge-1", NOBODY).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap_or_default();
    assert!(uid.split_whitespace().all(|id| id == NOBODY.to_string()), "the agent runs as {uid}");
    let labels: Value =
        serde_json::from_str(&cluster.ok(&["get", "node", "edge-1", "-o", "jsonpath={.metadata.labels}"])).unwrap();
    assert_eq!(labels["skiff.dev/runtime.wasm"], "true", "{labels}");
    assert!(labels.get("skiff.dev/runtime.oci").is_none(), "a node without root offers no OCI runtime: {labels}");

    let image = registry.push_sample("hello");
    let spec =
        format!("  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {image}\n    args: [edge]\n");
    cluster.create_pod("hello", &agent.name, &spec);
    cluster.wait_pod_phase("hello", "Succeeded", Duration::from_secs(60), &agent);
    let logs = cluster.ok(&["logs", "hello"]);
    assert!(logs.contains("arg[1]=edge"), "{logs}");
}

pub fn registries_file_sends_pulls_to_mirrors() {
    let registry = Registry::start().unwrap();
    // The same images over mutual TLS, at 127.0.0.1 (the node has its client certificate) and localhost
    // (it has not).
    let secure = registry.with_client_certificates().unwrap();
    let secure_port = secure.address.rsplit(':').next().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registries = dir.path().join("registries.yaml");
    // A made-up registry, reachable only through its mirror, over plain HTTP because the file says so;
    // two more behind the TLS registry.
    let file = |name: &str| secure.file(name).display().to_string();
    std::fs::write(
        &registries,
        format!(
            "mirrors:\n  registry.example:5000:\n    endpoint: [\"http://{}\"]\n    rewrite: {{\"^mirrored/(.*)\": \"samples/$1\"}}\n  secure.example:\n    endpoint: [\"https://{}\"]\n  anonymous.example:\n    endpoint: [\"https://localhost:{secure_port}\"]\nconfigs:\n  \"{}\":\n    tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n  \"localhost:{secure_port}\":\n    tls: {{ca_file: {}}}\n",
            registry.address,
            secure.address,
            secure.address,
            file("ca.crt"),
            file("client.crt"),
            file("client.key"),
            file("ca.crt"),
        ),
    )
    .unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &["--registries", registries.to_str().unwrap()]).unwrap();
    let node = NodeCluster { cluster, agent, registry };
    node.registry.push_sample("ticker");

    node.ticker("mirrored", "registry.example:5000/mirrored/ticker:latest");
    node.wait_phase("mirrored", "Running");
    eventually("ticks from the mirrored image", Duration::from_secs(30), || {
        (!node.cluster.ok(&["logs", "mirrored"]).is_empty()).then_some(())
    });

    // A registry that asks for a client certificate gets the node's.
    node.ticker("secure", "secure.example/samples/ticker:latest");
    node.wait_phase("secure", "Running");
    node.ticker("anonymous", "anonymous.example/samples/ticker:latest");
    let waiting = eventually("ErrImagePull without a client certificate", Duration::from_secs(90), || {
        let waiting = node.get("anonymous")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "ErrImagePull").then_some(waiting)
    });
    assert!(
        waiting["message"].as_str().is_some_and(|m| m.contains(&format!("localhost:{secure_port}"))),
        "the message names the endpoint tried: {waiting}"
    );

    node.ticker("unmirrored", "unmirrored.example:5000/samples/ticker:latest");
    let waiting = eventually("ErrImagePull without a mirror", Duration::from_secs(90), || {
        let waiting = node.get("unmirrored")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "ErrImagePull").then_some(waiting)
    });
    assert!(
        waiting["message"].as_str().is_some_and(|m| m.contains("unmirrored.example")),
        "the message names the registry tried: {waiting}"
    );
}

pub fn a_bad_registries_file_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("node-token");
    std::fs::write(&token, "K10unused::node:unused").unwrap();
    for (name, contents) in [
        ("not-yaml.yaml", "mirrors: ["),
        ("bad-url.yaml", "mirrors:\n  docker.io:\n    endpoint: [\"mirror.example:5000\"]\n"),
        ("missing-ca.yaml", "configs:\n  mirror.example:\n    tls: {ca_file: /nonexistent/ca.crt}\n"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, contents).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["agent", "--server", "https://127.0.0.1:1", "--name", "refused", "--registries"])
            .arg(&file)
            .arg("--token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the agent started with {name}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{name}: {stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{name}: the error names the file: {stderr}");
    }
}
