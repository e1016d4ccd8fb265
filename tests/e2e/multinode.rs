//! One flat network over several nodes, end to end: a `skiff server` on the host and two agents, each in a
//! network namespace of its own on a test bridge (a node as on another machine), with the real CNI plugins
//! and the real nftables. Pods reach pods on the other node by their addresses; a Service balances over
//! replicas on both nodes through its cluster IP and its node ports; what the agents programmed leaves
//! the kernel with them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};
use crate::testnet::{TestNet, in_netns};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A CGI program answering with the pod's name and the client's address as the pod sees it (busybox's
/// httpd listens on IPv6 too, and shows IPv4 clients as `[::ffff:a.b.c.d]`).
const WHO: &str = "#!/bin/sh\necho Content-Type: text/plain\necho\nclient=${REMOTE_ADDR#[::ffff:}\necho \"$(/bin/busybox hostname) ${client%]}\"\n";

/// Fields drop in order: agents stop before the network they live on goes.
struct Nodes {
    agents: Vec<Agent>,
    cluster: Cluster,
    registry: Registry,
    _net: TestNet,
    /// Each node's namespace and address, in the agents' order.
    hosts: Vec<(String, Ipv4Addr)>,
    shop: String,
    busybox: String,
}

impl Nodes {
    fn start() -> Self {
        let mut net = TestNet::new();
        let hosts = vec![net.add_node(1), net.add_node(2)];
        let registry = Registry::start().unwrap();
        let port: u16 = registry.address.rsplit(':').next().unwrap().parse().unwrap();
        net.relay_loopback(port);
        let cluster = Cluster::start_listening(Backend::Embedded, net.gateway()).unwrap();
        let agents = ["node-a", "node-b"]
            .iter()
            .zip(&hosts)
            .map(|(name, (netns, ip))| Agent::join_in(&cluster, name, netns, *ip, &["--pod-network", "cni"]).unwrap())
            .collect();
        let web = json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]});
        let shop = registry.push_busybox_with("shop", web, &[("www/cgi-bin/who", WHO)]);
        let busybox = registry.push_busybox("tools/busybox");
        Nodes { agents, cluster, registry, _net: net, hosts, shop, busybox }
    }

    fn logs(&self) -> String {
        let agents: Vec<String> = self.agents.iter().map(|a| format!("--- {}:\n{}", a.name, a.log())).collect();
        format!("{}\n--- server:\n{}", agents.join("\n"), self.cluster.server_log())
    }

    fn running_ip(&self, name: &str) -> Ipv4Addr {
        let started = std::time::Instant::now();
        loop {
            let status = self.cluster.pod(name)["status"].clone();
            if let Some(ip) = (status["phase"] == "Running").then(|| status["podIP"].as_str()?.parse().ok()).flatten() {
                return ip;
            }
            assert!(started.elapsed() < TIMEOUT, "pod {name} not Running with an IP: {status}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` in the client pod's shell; its output.
    fn in_client(&self, script: &str) -> String {
        let out = self.cluster.kubectl(&["exec", "client", "--", "sh", "-c", script]);
        assert!(out.status.success(), "exec {script}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.logs());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `count` requests from the client pod to `url`: how many each pod answered, the pod told by `pod`
    /// from a line of an answer.
    fn spread_by(&self, url: &str, count: usize, pod: fn(&str) -> Option<&str>) -> BTreeMap<String, usize> {
        let script = format!("for i in $(/bin/busybox seq {count}); do /bin/busybox wget -qO- {url}; done");
        let mut answers = BTreeMap::new();
        for name in self.in_client(&script).lines().filter_map(pod) {
            *answers.entry(name.to_string()).or_default() += 1;
        }
        answers
    }

    /// The same for the shop's CGI, whose answer starts with the pod's name.
    fn spread(&self, url: &str, count: usize) -> BTreeMap<String, usize> {
        self.spread_by(url, count, |line| line.split_whitespace().next())
    }

    fn nft(&self, node: usize, args: &[&str]) -> String {
        let out = in_netns(&self.hosts[node].0, "nft", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn ready_endpoints(cluster: &Cluster, service: &str) -> usize {
    let selector = format!("kubernetes.io/service-name={service}");
    let slices: Value =
        serde_json::from_str(&cluster.ok(&["get", "endpointslices", "-l", &selector, "-o", "json"])).unwrap();
    let endpoints =
        slices["items"].as_array().into_iter().flatten().flat_map(|s| s["endpoints"].as_array().into_iter().flatten());
    endpoints.filter(|e| e["conditions"]["ready"] == true).count()
}

pub fn pods_and_services_span_nodes() {
    let nodes = Nodes::start();
    let cluster = &nodes.cluster;
    let ranges: Vec<String> = ["node-a", "node-b"]
        .iter()
        .map(|node| cluster.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]))
        .collect();
    assert_ne!(ranges[0], ranges[1], "each node has its own pod range");

    // Pod to pod across nodes, by address, the source kept.
    let grace = "  terminationGracePeriodSeconds: 1\n";
    cluster.create_pod(
        "client",
        "node-b",
        &format!("{grace}  containers:\n  - name: sh\n    image: {}\n    command: [sleep, '3600']\n", nodes.busybox),
    );
    cluster.create_pod(
        "server-a",
        "node-a",
        &format!("{grace}  containers:\n  - name: web\n    image: {}\n", nodes.shop),
    );
    let client = nodes.running_ip("client");
    let server = nodes.running_ip("server-a");
    let answer = eventually("the client reaching the server on the other node", TIMEOUT, || {
        let script = format!("/bin/busybox wget -qO- http://{server}:8080/cgi-bin/who");
        let out = cluster.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(answer, format!("server-a {client}"), "the server sees the client's own address");

    // The shop: five replicas over both nodes behind a Service.
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: shop}}\nspec:\n  replicas: 5\n  selector: {{matchLabels: {{app: shop}}}}\n  template:\n    metadata: {{labels: {{app: shop}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: {}\n        ports: [{{name: http, containerPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: shop}}\nspec:\n  type: NodePort\n  selector: {{app: shop}}\n  ports: [{{port: 80, targetPort: http}}]\n",
        nodes.shop
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rollout = cluster.kubectl(&["rollout", "status", "deployment/shop", "--timeout=120s"]);
    assert!(rollout.status.success(), "rollout: {}\n{}", String::from_utf8_lossy(&rollout.stderr), nodes.logs());
    let hosts: Vec<String> = cluster
        .ok(&["get", "pods", "-l", "app=shop", "-o", "jsonpath={.items[*].spec.nodeName}"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(hosts.iter().any(|h| h == "node-a") && hosts.iter().any(|h| h == "node-b"), "spread: {hosts:?}");
    eventually("five ready endpoints", TIMEOUT, || (ready_endpoints(cluster, "shop") == 5).then_some(()));
    let service: Value = serde_json::from_str(&cluster.ok(&["get", "service", "shop", "-o", "json"])).unwrap();
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = service["spec"]["ports"][0]["nodePort"].as_u64().expect("a node port");

    let spread = eventually("every replica answering through the cluster IP", TIMEOUT, || {
        let spread = nodes.spread(&format!("http://{cluster_ip}/cgi-bin/who"), 1000);
        (spread.len() == 5).then_some(spread)
    });
    assert!(spread.values().all(|n| *n >= 100), "roughly even, no replica under 10%: {spread:?}");

    // Every node's address answers on the node port, from outside the cluster (the host).
    for (_, ip) in &nodes.hosts {
        let url = format!("http://{ip}:{node_port}/cgi-bin/who");
        let body = eventually(&format!("{url} answering"), TIMEOUT, || {
            let client =
                reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().ok()?;
            client.get(&url).send().ok()?.text().ok()
        });
        assert!(body.starts_with("shop-"), "{url}: {body}");
    }

    // The same with wasi:http replicas, guests inside the agents: each greets with its pod's name.
    let http = nodes.registry.push_sample("http-hello");
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: hello}}\nspec:\n  replicas: 4\n  selector: {{matchLabels: {{app: hello}}}}\n  template:\n    metadata: {{labels: {{app: hello}}}}\n    spec:\n      containers:\n      - name: hello\n        image: {http}\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: GREETING, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: hello}}\nspec:\n  selector: {{app: hello}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("four ready wasm endpoints", TIMEOUT, || (ready_endpoints(cluster, "hello") == 4).then_some(()));
    let hello_ip = cluster.ok(&["get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}"]);
    fn greeting(line: &str) -> Option<&str> {
        line.strip_prefix("greeting: ")
    }
    let spread = eventually("every wasm replica answering through the cluster IP", TIMEOUT, || {
        let spread = nodes.spread_by(&format!("http://{hello_ip}/"), 400, greeting);
        (spread.len() == 4).then_some(spread)
    });
    assert!(spread.values().all(|n| *n >= 40), "roughly even, no wasm replica under 10%: {spread:?}");

    // Scaled down, only the remaining pods answer, soon.
    cluster.ok(&["scale", "deployment/shop", "--replicas=2"]);
    let kept: Vec<String> = eventually("two shop pods left", TIMEOUT, || {
        let list: Value = serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=shop", "-o", "json"])).ok()?;
        let live: Vec<String> = list["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect();
        (live.len() == 2).then_some(live)
    });
    eventually("traffic only to the two pods kept", Duration::from_secs(30), || {
        let spread = nodes.spread(&format!("http://{cluster_ip}/cgi-bin/who"), 50);
        spread.keys().all(|pod| kept.contains(pod)).then_some(())
    });

    // A deleted Service leaves no rule on any node.
    cluster.ok(&["delete", "service", "shop"]);
    for node in 0..nodes.hosts.len() {
        eventually("the Service's rules gone", Duration::from_secs(30), || {
            let rules = nodes.nft(node, &["list", "ruleset"]);
            (!rules.contains("default/shop/") && rules.contains("skiff-node-")).then_some(())
        });
    }

    // Agents that stop take their rules and routes along.
    let Nodes { mut agents, hosts, .. } = nodes;
    for agent in &mut agents {
        agent.terminate();
    }
    for (netns, _) in &hosts {
        let tables = String::from_utf8_lossy(&in_netns(netns, "nft", &["list", "tables"]).stdout).into_owned();
        assert!(!tables.contains("skiff"), "{netns}: {tables}");
        let routes = in_netns(netns, "ip", &["route", "show", "proto", "83"]);
        assert_eq!(String::from_utf8_lossy(&routes.stdout).trim(), "", "{netns}: routes to other nodes' pods left");
    }
}
