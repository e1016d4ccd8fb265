//! Pod networking end to end: a `skiff agent` giving each pod a network namespace and an address through
//! the real CNI plugins (Debian's containernetworking-plugins in /usr/lib/cni), observed with kubectl and
//! from the host. Needs root and the plugins, as the agent's `--pod-network cni` does.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

const TIMEOUT: Duration = Duration::from_secs(90);

struct NetCluster {
    cluster: Cluster,
    agent: Agent,
    registry: Registry,
}

impl NetCluster {
    fn start(node: &str, flags: &[&str]) -> Self {
        let registry = Registry::start().unwrap();
        let cluster = Cluster::start(Backend::Embedded).unwrap();
        let mut all = vec!["--pod-network", "cni"];
        all.extend_from_slice(flags);
        let agent = Agent::join_with(&cluster, node, &all).unwrap();
        NetCluster { cluster, agent, registry }
    }

    /// Creates a pod bound to the agent's node; `body` is YAML indented under `spec:`.
    fn pod(&self, name: &str, body: &str) {
        self.cluster.create_pod(name, &self.agent.name, &format!("  terminationGracePeriodSeconds: 2\n{body}"));
    }

    fn get(&self, name: &str) -> Value {
        self.cluster.pod(name)
    }

    fn running_ip(&self, name: &str) -> Ipv4Addr {
        eventually(&format!("pod {name} Running with an IP"), TIMEOUT, || {
            let status = self.get(name)["status"].clone();
            let running = status["phase"] == "Running";
            running.then(|| status["podIP"].as_str()?.parse().ok()).flatten()
        })
    }

    fn logs(&self, args: &[&str]) -> String {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let out = self.cluster.kubectl(&all);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pod_cidr(&self) -> (Ipv4Addr, u32) {
        let cidr = self.cluster.ok(&["get", "node", &self.agent.name, "-o", "jsonpath={.spec.podCIDR}"]);
        let (network, prefix) =
            cidr.split_once('/').unwrap_or_else(|| panic!("the Node reports spec.podCIDR: {cidr:?}"));
        (network.parse().unwrap(), prefix.parse().unwrap())
    }

    fn network_dir(&self) -> PathBuf {
        self.agent.data_dir().join("network")
    }

    /// Addresses host-local holds leases for.
    fn leases(&self) -> BTreeSet<Ipv4Addr> {
        let dir = self.network_dir().join("ipam/skiff");
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
    }

    /// The namespace files of the pods attached now, from the agent's cached ADD results.
    fn namespaces(&self) -> Vec<PathBuf> {
        let entries = std::fs::read_dir(self.network_dir().join("pods")).into_iter().flatten().flatten();
        entries
            .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
            .filter_map(|cached| Some(PathBuf::from(cached["netns"].as_str()?)))
            .collect()
    }
}

fn in_range(ip: Ipv4Addr, (network, prefix): (Ipv4Addr, u32)) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(network) & mask
}

fn http_get(url: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().ok()?;
    client.get(url).send().ok()?.text().ok()
}

/// A busybox httpd serving `text` on port 8080.
fn web_server(text: &str) -> String {
    format!("[sh, -c, 'mkdir -p /www && echo {text} > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www']")
}

pub fn pods_reach_each_other_and_the_node_reaches_them() {
    let net = NetCluster::start("net-pods", &[]);
    let range = net.pod_cidr();
    assert!(
        in_range(range.0, ("10.42.0.0".parse().unwrap(), 16)),
        "the agent picked a range of 10.42.0.0/16: {range:?}"
    );
    let busybox = net.registry.push_busybox("tools/busybox");
    for (name, text) in [("server-a", "hello-from-a"), ("server-b", "hello-from-b")] {
        net.pod(
            name,
            &format!("  containers:\n  - name: httpd\n    image: {busybox}\n    command: {}\n", web_server(text)),
        );
    }
    let a = net.running_ip("server-a");
    let b = net.running_ip("server-b");
    assert_ne!(a, b);
    assert!(in_range(a, range) && in_range(b, range), "pod IPs {a} and {b} come from the node's range {range:?}");
    assert!(!a.is_loopback() && !b.is_loopback());
    for (ip, text) in [(a, "hello-from-a"), (b, "hello-from-b")] {
        eventually(&format!("the node reaching {ip}:8080"), TIMEOUT, || {
            http_get(&format!("http://{ip}:8080/")).filter(|body| body.trim() == text)
        });
    }

    // Another pod reaches both by their addresses, with its own address, name and hosts file.
    let fetch = format!(
        "for ip in {a} {b}; do until /bin/busybox wget -q -O - http://$ip:8080/; do sleep 1; done; done; \
         echo ip=$POD_IP host=`/bin/busybox hostname`; cat /etc/hosts"
    );
    net.pod(
        "client",
        &format!(
            "  restartPolicy: Never\n  initContainers:\n  - name: wait-for-a\n    image: {busybox}\n    command: [sh, -c, 'until /bin/busybox wget -q -O /dev/null http://{a}:8080/; do sleep 1; done']\n  containers:\n  - name: fetch\n    image: {busybox}\n    command: [sh, -c, '{fetch}']\n    env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]\n"
        ),
    );
    let status = eventually("the client pod Succeeded", TIMEOUT, || {
        let status = net.get("client")["status"].clone();
        assert_ne!(status["phase"], "Failed", "{status}\n{}", net.logs(&["client"]));
        (status["phase"] == "Succeeded").then_some(status)
    });
    let client_ip = status["podIP"].as_str().expect("a finished pod keeps its podIP").to_string();
    let logs = net.logs(&["client", "-c", "fetch"]);
    assert!(logs.contains("hello-from-a") && logs.contains("hello-from-b"), "the client reached both pods: {logs}");
    assert!(logs.contains(&format!("ip={client_ip} host=client")), "fieldRef status.podIP and hostname: {logs}");
    assert!(logs.contains(&format!("{client_ip}\tclient")) && logs.contains("localhost"), "/etc/hosts: {logs}");
    let client_ip: Ipv4Addr = client_ip.parse().unwrap();
    eventually("a finished pod's address released", TIMEOUT, || (!net.leases().contains(&client_ip)).then_some(()));

    let leases = net.leases();
    assert!(leases.contains(&a) && leases.contains(&b), "host-local holds both addresses: {leases:?}");
    let namespaces = net.namespaces();
    assert_eq!(namespaces.len(), 2, "one namespace per running pod: {namespaces:?}");
    assert!(namespaces.iter().all(|ns| ns.exists()));

    net.cluster.ok(&["delete", "pod", "server-a", "server-b", "client", "--timeout=60s"]);
    eventually("addresses released", TIMEOUT, || net.leases().is_empty().then_some(()));
    eventually("namespaces removed", TIMEOUT, || namespaces.iter().all(|ns| !ns.exists()).then_some(()));
    assert!(net.namespaces().is_empty(), "no cached attachments left");
}

pub fn a_wasm_app_and_a_container_sidecar_share_localhost() {
    let mut net = NetCluster::start("net-mixed", &["--pod-cidr", "10.244.77.0/24"]);
    assert_eq!(net.pod_cidr(), ("10.244.77.0".parse().unwrap(), 24), "--pod-cidr is reported on the Node");
    let http = net.registry.push_sample("http-hello");
    let busybox = net.registry.push_busybox("tools/busybox");
    let sidecar = "while true; do /bin/busybox wget -q -O - http://127.0.0.1:8080/from-sidecar; sleep 1; done";
    net.pod(
        "mixed",
        &format!(
            "  containers:\n  - name: app\n    image: {http}\n    ports: [{{containerPort: 8080}}]\n    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}\n  - name: sidecar\n    image: {busybox}\n    command: [sh, -c, '{sidecar}']\n"
        ),
    );
    let ip = net.running_ip("mixed");
    assert!(in_range(ip, ("10.244.77.0".parse().unwrap(), 24)), "{ip}");
    let logs = eventually("the sidecar's answers from the wasm app", TIMEOUT, || {
        let logs = net.logs(&["mixed", "-c", "sidecar"]);
        (logs.matches("hello from skiff").count() >= 2).then_some(logs)
    });
    assert!(logs.contains("/from-sidecar"), "{logs}");
    eventually("both containers ready", TIMEOUT, || {
        let statuses = net.get("mixed")["status"]["containerStatuses"].clone();
        statuses.as_array().filter(|s| s.len() == 2 && s.iter().all(|c| c["ready"] == true)).map(|_| ())
    });
    let body =
        eventually("the node reaching the wasm app", TIMEOUT, || http_get(&format!("http://{ip}:8080/from-node")));
    assert!(body.contains("hello from skiff") && body.contains("/from-node"), "{body}");
    net.cluster.ok(&["delete", "pod", "mixed", "--timeout=60s"]);
    eventually("the mixed pod's address released", TIMEOUT, || net.leases().is_empty().then_some(()));

    // After an agent restart a pod keeps its namespace and address, and no second address is taken.
    // Its hostPort (portmap) reaches it through the node's own address too. Pod Security's baseline
    // default refuses host ports: the namespace allows them.
    net.cluster.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged"]);
    let host_port = crate::harness::free_port();
    net.pod(
        "web",
        &format!(
            "  containers:\n  - name: app\n    image: {http}\n    ports: [{{containerPort: 8080, hostPort: {host_port}}}]\n"
        ),
    );
    let ip = net.running_ip("web");
    eventually("the wasm app answering", TIMEOUT, || hello(ip));
    let body = eventually("the hostPort answering", TIMEOUT, || {
        http_get(&format!("http://127.0.0.1:{host_port}/via-host-port"))
    });
    assert!(body.contains("/via-host-port"), "{body}");
    net.agent.kill();
    net.agent.launch(&net.cluster).unwrap();
    eventually("the wasm app answering again after the restart", TIMEOUT, || {
        let status = net.get("web")["status"]["containerStatuses"][0].clone();
        let restarted = status["restartCount"].as_i64() >= Some(1) && status["state"]["running"].is_object();
        restarted.then(|| hello(ip)).flatten()
    });
    assert_eq!(net.get("web")["status"]["podIP"], ip.to_string(), "the same address after the restart");
    assert_eq!(net.leases(), BTreeSet::from([ip]), "no address leaked by the restart");
    net.cluster.ok(&["delete", "pod", "web", "--timeout=60s"]);
    eventually("the web pod's address released", TIMEOUT, || net.leases().is_empty().then_some(()));
}

pub fn a_pod_without_an_address_waits_and_gets_one_once_freed() {
    // A /30 holds a single pod address (besides the network, the gateway and broadcast).
    let net = NetCluster::start("net-full", &["--pod-cidr", "10.244.78.0/30"]);
    let busybox = net.registry.push_busybox("tools/busybox");
    let sleeper = format!("  containers:\n  - name: main\n    image: {busybox}\n    command: [sleep, '3600']\n");
    net.pod("first", &sleeper);
    assert_eq!(net.running_ip("first"), Ipv4Addr::new(10, 244, 78, 2));
    net.pod("second", &sleeper);
    let waiting = eventually("the second pod waiting for an address", TIMEOUT, || {
        let waiting = net.get("second")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        waiting["message"].as_str().is_some_and(|m| m.contains("Failed to create pod sandbox")).then_some(waiting)
    });
    assert_eq!(waiting["reason"], "ContainerCreating");
    assert!(waiting["message"].as_str().unwrap().contains("plugin type=\"bridge\" failed (add)"), "{waiting}");
    assert_eq!(net.get("second")["status"]["phase"], "Pending");
    let events = net.cluster.ok(&["get", "events", "--field-selector", "involvedObject.name=second"]);
    assert!(events.contains("FailedCreatePodSandBox"), "{events}");

    net.cluster.ok(&["delete", "pod", "first", "--timeout=60s"]);
    assert_eq!(net.running_ip("second"), Ipv4Addr::new(10, 244, 78, 2), "the released address is used again");
    net.cluster.ok(&["delete", "pod", "second", "--timeout=60s"]);
    eventually("the address released", TIMEOUT, || net.leases().is_empty().then_some(()));
}

/// The http-hello sample's answer at `ip`:8080. Only its own words count: the machine's network may
/// answer connections to addresses nothing on it holds.
fn hello(ip: Ipv4Addr) -> Option<String> {
    http_get(&format!("http://{ip}:8080/")).filter(|body| body.contains("hello from skiff"))
}

/// The addresses on `bridge`, from iproute2.
fn bridge_addresses(bridge: &str) -> String {
    let out = std::process::Command::new("ip").args(["-4", "-o", "address", "show", "dev", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wasm_pods_get_addresses_of_their_own_without_namespaces() {
    let mut net = NetCluster::start("net-light", &[]);
    let range = net.pod_cidr();
    let http = net.registry.push_sample("http-hello");
    let busybox = net.registry.push_busybox("tools/busybox");
    for name in ["wasm-a", "wasm-b"] {
        net.pod(
            name,
            &format!(
                "  containers:\n  - name: app\n    image: {http}\n    ports: [{{containerPort: 8080}}]\n    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}\n"
            ),
        );
    }
    let a = net.running_ip("wasm-a");
    let b = net.running_ip("wasm-b");
    assert_ne!(a, b, "each pod its own address, both on port 8080");
    assert!(in_range(a, range) && in_range(b, range), "pod IPs {a} and {b} come from the node's range {range:?}");
    for (ip, name) in [(a, "wasm-a"), (b, "wasm-b")] {
        let body = eventually(&format!("the node reaching {name} at {ip}:8080"), TIMEOUT, || {
            http_get(&format!("http://{ip}:8080/from-node/{name}")).filter(|body| body.contains("hello from skiff"))
        });
        assert!(body.contains(&format!("/from-node/{name}")), "{body}");
    }
    eventually("both ready, probed at their addresses", TIMEOUT, || {
        ["wasm-a", "wasm-b"]
            .iter()
            .all(|name| net.get(name)["status"]["containerStatuses"][0]["ready"] == true)
            .then_some(())
    });

    // No namespace, no veth: a lease in host-local's files, held by the pod on the bridge, and a /32 there.
    assert!(net.namespaces().is_empty(), "no namespace for wasm pods: {:?}", net.namespaces());
    let lease = std::fs::read_to_string(net.network_dir().join(format!("ipam/skiff/{a}"))).unwrap();
    let uid = net.get("wasm-a")["metadata"]["uid"].as_str().unwrap().to_string();
    let (holder, bridge) = lease.split_once("\r\n").unwrap_or_else(|| panic!("host-local's lease format: {lease:?}"));
    assert_eq!(holder, uid);
    assert!(bridge.starts_with("skf"), "{lease:?}");
    let on_bridge = bridge_addresses(bridge);
    assert!(on_bridge.contains(&format!("{a}/32")) && on_bridge.contains(&format!("{b}/32")), "{on_bridge}");

    // A pod in a namespace of its own (busybox) reaches both by their addresses.
    let fetch = format!(
        "for ip in {a} {b}; do until /bin/busybox wget -q -O - http://$ip:8080/from-client; do sleep 1; done; echo; done"
    );
    net.pod(
        "client",
        &format!("  restartPolicy: Never\n  containers:\n  - name: fetch\n    image: {busybox}\n    command: [sh, -c, '{fetch}']\n"),
    );
    let status = eventually("the client pod Succeeded", TIMEOUT, || {
        let status = net.get("client")["status"].clone();
        assert_ne!(status["phase"], "Failed", "{status}\n{}", net.logs(&["client"]));
        (status["phase"] == "Succeeded").then_some(status)
    });
    let client_ip: Ipv4Addr = status["podIP"].as_str().unwrap().parse().unwrap();
    assert!(
        in_range(client_ip, range) && client_ip != a && client_ip != b,
        "one allocator for both kinds: {client_ip}"
    );
    let logs = net.logs(&["client"]);
    assert_eq!(logs.matches("/from-client").count(), 2, "the client reached both wasm pods: {logs}");
    eventually("the client's address released", TIMEOUT, || (net.leases() == BTreeSet::from([a, b])).then_some(()));

    // After an agent restart a wasm pod keeps its address; one deleted meanwhile has its address released.
    net.agent.kill();
    net.cluster.ok(&["delete", "pod", "wasm-b", "--grace-period=0", "--force"]);
    net.agent.launch(&net.cluster).unwrap();
    eventually("wasm-a answering again after the restart", TIMEOUT, || {
        let status = net.get("wasm-a")["status"]["containerStatuses"][0].clone();
        let restarted = status["restartCount"].as_i64() >= Some(1) && status["state"]["running"].is_object();
        restarted.then(|| hello(a)).flatten()
    });
    assert_eq!(net.get("wasm-a")["status"]["podIP"], a.to_string(), "the same address after the restart");
    assert_eq!(net.leases(), BTreeSet::from([a]), "no address leaked by the restart or the deletion");
    assert!(!bridge_addresses(bridge).contains(&format!("{b}/32")), "wasm-b's address is off the bridge");

    // A lease outlives the bridge (a reboot): the bridge is made again, with the pod's address on it.
    net.agent.kill();
    let deleted = std::process::Command::new("ip").args(["link", "delete", bridge]).status().unwrap();
    assert!(deleted.success());
    net.agent.launch(&net.cluster).unwrap();
    eventually("wasm-a answering at its address on a new bridge", TIMEOUT, || hello(a));
    assert_eq!(net.get("wasm-a")["status"]["podIP"], a.to_string());
    let on_bridge = bridge_addresses(bridge);
    assert!(on_bridge.contains(&format!("{a}/32")), "{on_bridge}");
    // The bridge plugin refuses a bridge whose first address is not its gateway.
    let gateway = format!("{}/{}", Ipv4Addr::from(u32::from(range.0) + 1), range.1);
    assert!(on_bridge.lines().next().is_some_and(|first| first.contains(&gateway)), "{on_bridge}");

    net.cluster.ok(&["delete", "pod", "wasm-a", "--timeout=60s"]);
    eventually("the addresses released", TIMEOUT, || net.leases().is_empty().then_some(()));
    assert!(!bridge_addresses(bridge).contains(&format!("{a}/32")), "wasm-a's address is off the bridge");
}
