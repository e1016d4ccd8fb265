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
use crate::testnet::{OutsideResolver, OutsideServer, TestNet, exchange_in_netns, in_netns};

const TIMEOUT: Duration = Duration::from_secs(120);
/// What the stand-in for the outside world's DNS answers for every name.
const OUTSIDE_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);
/// What the site at that address answers.
const OUTSIDE_BODY: &str = "a site outside the cluster\n";

/// A CGI program answering with the pod's name and the client's address as the pod sees it (busybox's
/// httpd listens on IPv6 too, and shows IPv4 clients as `[::ffff:a.b.c.d]`).
const WHO: &str = "#!/bin/sh\necho Content-Type: text/plain\necho\nclient=${REMOTE_ADDR#[::ffff:}\necho \"$(/bin/busybox hostname) ${client%]}\"\n";

/// Fields drop in order: agents stop before the network they live on goes.
pub(crate) struct Nodes {
    agents: Vec<Agent>,
    pub(crate) cluster: Cluster,
    pub(crate) registry: Registry,
    _outside: OutsideResolver,
    _site: OutsideServer,
    net: TestNet,
    /// Each node's namespace and address, in the agents' order.
    pub(crate) hosts: Vec<(String, Ipv4Addr)>,
    pub(crate) shop: String,
    pub(crate) busybox: String,
    /// Held until everything above is gone: the outside stand-ins' address is fixed.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// One set of [`Nodes`] at a time on the machine: each takes port 80 of the same outside address.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Nodes {
    pub(crate) fn start() -> Self {
        // A test that failed while holding its turn still gave it back.
        let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut net = TestNet::new();
        let hosts = vec![net.add_node(1), net.add_node(2)];
        let registry = Registry::start().unwrap();
        let port: u16 = registry.address.rsplit(':').next().unwrap().parse().unwrap();
        net.relay_loopback(port);
        let cluster = Cluster::start_listening(Backend::Embedded, net.gateway()).unwrap();
        // The nodes' upstream resolver: names outside the cluster go there.
        let outside = OutsideResolver::start(net.gateway(), OUTSIDE_ANSWER);
        // ... and every outside name is a site at that address.
        net.add_outside_address(OUTSIDE_ANSWER);
        let site = OutsideServer::start(OUTSIDE_ANSWER, OUTSIDE_BODY);
        let resolv_conf = cluster.write_file("node-resolv.conf", &format!("nameserver {}\n", net.gateway()));
        let resolv_conf = resolv_conf.to_str().unwrap();
        // The registry is on the host's loopback, which is not the nodes': they pull through a mirror.
        let registries =
            format!("mirrors:\n  \"127.0.0.1:{port}\":\n    endpoint: [\"http://{}:{port}\"]\n", net.gateway());
        let registries = cluster.write_file("registries.yaml", &registries);
        let registries = registries.to_str().unwrap();
        // node-a reaches node-b directly over their shared link (host-gw), node-b reaches node-a over VXLAN:
        // each direction of every exchange between them crosses one of the two.
        let nodes = [("node-a", "host-gw"), ("node-b", "vxlan")];
        let agents = nodes
            .iter()
            .zip(&hosts)
            .map(|((name, routes), (netns, ip))| {
                let flags = [
                    "--pod-network",
                    "cni",
                    "--resolv-conf",
                    resolv_conf,
                    "--pod-routes",
                    routes,
                    "--registries",
                    registries,
                    // Each node has its own network: the ingress takes the usual ports.
                    "--ingress-http-port",
                    "80",
                    "--ingress-https-port",
                    "443",
                ];
                Agent::join_in(&cluster, name, netns, *ip, &flags).unwrap()
            })
            .collect();
        let web = json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]});
        let shop = registry.push_busybox_with("shop", web, &[("www/cgi-bin/who", WHO)]);
        let busybox = registry.push_busybox("tools/busybox");
        Nodes { agents, cluster, registry, _outside: outside, _site: site, net, hosts, shop, busybox, _turn: turn }
    }

    pub(crate) fn logs(&self) -> String {
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

    /// Asks wasm pod `guest` (the http-fetch sample) to fetch `url`: over HTTP/1.0 from its node, whose bridge
    /// has the guest's address, so a 502's body (the guest's error) shows. What came within `timeout`.
    pub(crate) fn fetch_through(&self, guest: &str, url: &str, timeout: Duration) -> String {
        let pod = self.cluster.pod(guest);
        let ip: Ipv4Addr = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()).expect("the guest's address");
        let node =
            self.agents.iter().position(|a| pod["spec"]["nodeName"] == a.name.as_str()).expect("the guest's node");
        let request = format!("GET /?url={url} HTTP/1.0\r\nHost: {guest}\r\n\r\n");
        exchange_in_netns(&self.hosts[node].0, (ip, 8080).into(), &request, timeout)
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
        let script = format!(
            "for i in $(/bin/busybox seq {count}); do /bin/busybox timeout 5 /bin/busybox wget -qO- {url}; done"
        );
        let mut answers = BTreeMap::new();
        for name in self.in_client(&script).lines().filter_map(pod) {
            *answers.entry(name.to_string()).or_default() += 1;
        }
        answers
    }

    /// 1,000 requests from the client pod to `path` of Service `name` through each of its addresses: its
    /// full and short names, its cluster IP, its node port on every node's address, its load balancer
    /// addresses. Each way reaches all `replicas` pods (told by `pod` from a line of an answer), none under
    /// 10%.
    fn spread_through_every_address(&self, name: &str, path: &str, replicas: usize, pod: fn(&str) -> Option<&str>) {
        let service: Value = eventually(&format!("{name}'s load balancer addresses"), TIMEOUT, || {
            let service: Value =
                serde_json::from_str(&self.cluster.ok(&["get", "service", name, "-o", "json"])).ok()?;
            let ingress = service["status"]["loadBalancer"]["ingress"].as_array()?.len();
            (ingress == self.hosts.len()).then_some(service)
        });
        let port = &service["spec"]["ports"][0];
        let (service_port, node_port) = (port["port"].as_u64().unwrap(), port["nodePort"].as_u64().unwrap());
        let mut urls = vec![
            format!("http://{name}.default.svc.cluster.local:{service_port}{path}"),
            format!("http://{name}:{service_port}{path}"),
            format!("http://{}:{service_port}{path}", service["spec"]["clusterIP"].as_str().unwrap()),
        ];
        urls.extend(self.hosts.iter().map(|(_, ip)| format!("http://{ip}:{node_port}{path}")));
        for ingress in service["status"]["loadBalancer"]["ingress"].as_array().unwrap() {
            urls.push(format!("http://{}:{service_port}{path}", ingress["ip"].as_str().unwrap()));
        }
        for url in urls {
            let spread = eventually(&format!("every replica answering through {url}"), TIMEOUT, || {
                let spread = self.spread_by(&url, 1000, pod);
                (spread.len() == replicas).then_some(spread)
            });
            assert!(spread.values().all(|n| *n >= 100), "{url}: roughly even, no replica under 10%: {spread:?}");
        }
    }

    /// The same for the shop's CGI, whose answer starts with the pod's name.
    fn spread(&self, url: &str, count: usize) -> BTreeMap<String, usize> {
        self.spread_by(url, count, |line| line.split_whitespace().next())
    }

    pub(crate) fn nft(&self, node: usize, args: &[&str]) -> String {
        let out = in_netns(&self.hosts[node].0, "nft", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A node's routes, neighbours, overlay entries and addresses, for a failure's message.
/// A wasm guest's outgoing HTTP (the http-fetch sample, on node-b): the cluster's Services by name (the
/// pod's search list), address and headless name, a pod on the other node seeing the guest's own address,
/// NXDOMAIN for a missing name; outside the cluster only a host its pod allows, the name forwarded upstream.
fn wasm_guests_send_requests(nodes: &Nodes, cluster_ip: &str, server: Ipv4Addr) {
    let cluster = &nodes.cluster;
    let image = nodes.registry.push_sample("http-fetch");
    for (name, annotations) in
        [("fetch", "{}"), ("fetch-allowed", "{skiff.dev/allowed-outbound-hosts: 'http://*.outside.test'}")]
    {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, annotations: {annotations}}}\nspec:\n  nodeName: node-b\n  containers:\n  - name: fetch\n    image: {image}\n    ports: [{{containerPort: 8080}}]\n"
        );
        let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let guest = nodes.running_ip("fetch");
    nodes.running_ip("fetch-allowed");
    let fetch = |guest: &str, url: &str| nodes.fetch_through(guest, url, Duration::from_secs(10));
    let status = |answer: &str| answer.lines().next().unwrap_or_default().trim().to_string();
    let body = |answer: &str| answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    for url in [
        "http://shop/cgi-bin/who".to_string(),
        "http://shop.default.svc.cluster.local/cgi-bin/who".to_string(),
        format!("http://{cluster_ip}/cgi-bin/who"),
        // A headless Service's name is its pods' addresses: port 8080 is theirs, not the Service's.
        "http://shop-pods:8080/cgi-bin/who".to_string(),
    ] {
        let started = std::time::Instant::now();
        let answer = loop {
            let answer = fetch("fetch", &url);
            if status(&answer).contains(" 200 ") {
                break answer;
            }
            assert!(started.elapsed() < TIMEOUT, "the guest fetching {url}: {answer}\n{}", nodes.logs());
            std::thread::sleep(Duration::from_millis(200));
        };
        let pod = body(&answer).split_whitespace().next().unwrap_or_default().to_string();
        assert!(pod.starts_with("shop-"), "{url}: {answer}");
        // The replica sees the guest's own address, as for any pod's connection.
        assert!(body(&answer).trim().ends_with(&format!(" {guest}")), "{url}: {answer}");
    }
    let answer = fetch("fetch", &format!("http://{server}:8080/cgi-bin/who"));
    assert_eq!(body(&answer).trim(), format!("server-a {guest}"), "a pod on the other node, by address: {answer}");
    let answer = fetch("fetch", "http://missing.default.svc.cluster.local/");
    assert!(status(&answer).contains("502") && answer.contains("NXDOMAIN"), "a missing name: {answer}");
    let answer = fetch("fetch", "http://www.outside.test/");
    assert!(status(&answer).contains("502") && answer.contains("HttpRequestDenied"), "not allowed: {answer}");
    let log = cluster.ok(&["logs", "fetch"]);
    assert!(
        log.contains("outgoing request to http://www.outside.test:80 denied: 192.0.2.44 is outside the cluster"),
        "the pod's log says why: {log}"
    );
    let answer = fetch("fetch-allowed", "http://www.outside.test/");
    assert_eq!(body(&answer), OUTSIDE_BODY, "an allowed outside host, its name forwarded upstream: {answer}");
    let answer = fetch("fetch-allowed", "http://192.0.2.44/");
    assert!(answer.contains("HttpRequestDenied"), "the address is not the allowed name: {answer}");
    cluster.ok(&["delete", "pod", "fetch", "fetch-allowed", "--wait=false"]);
}

/// `nslookup` from a wasm guest: the dig sample (wasi:sockets) asking the cluster DNS for a Service, a headless
/// Service's pods, their SRV records, a missing name and an outside one; any other server is out of reach.
fn wasm_guests_ask_the_cluster_dns(nodes: &Nodes, cluster_ip: &str, shop_ips: &[String]) {
    let cluster = &nodes.cluster;
    let image = nodes.registry.push_sample("dig");
    let outside_resolver = nodes.net.gateway().to_string();
    let questions = [
        ("dig-service", "@10.43.0.10 shop.default.svc.cluster.local"),
        ("dig-headless", "@10.43.0.10 shop-pods.default.svc.cluster.local"),
        ("dig-srv", "@10.43.0.10 _http._tcp.shop-pods.default.svc.cluster.local SRV"),
        ("dig-missing", "@10.43.0.10 missing.default.svc.cluster.local"),
        ("dig-outside", "@10.43.0.10 www.outside.test"),
        ("dig-elsewhere", &format!("@{outside_resolver} www.outside.test")),
    ];
    for (name, args) in questions {
        let args: Vec<String> = args.split_whitespace().map(|a| format!("'{a}'")).collect();
        cluster.create_pod(
            name,
            "node-b",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: dig\n    image: {image}\n    args: [{}]\n",
                args.join(", ")
            ),
        );
    }
    let answer = |name: &str| {
        eventually(&format!("{name} done"), TIMEOUT, || {
            let phase = cluster.pod(name)["status"]["phase"].as_str().unwrap_or_default().to_string();
            (phase == "Succeeded" || phase == "Failed").then_some(())
        });
        cluster.ok(&["logs", name])
    };
    let service = answer("dig-service");
    assert!(service.contains("status: NOERROR") && service.contains(&format!(" A {cluster_ip}")), "{service}");
    let headless = answer("dig-headless");
    assert!(shop_ips.iter().all(|ip| headless.contains(&format!(" A {ip}\n"))), "every pod's address: {headless}");
    let srv = answer("dig-srv");
    assert_eq!(srv.matches(" SRV 0 ").count(), shop_ips.len(), "an SRV record per pod: {srv}");
    assert!(srv.lines().filter(|l| l.contains(" SRV ")).all(|l| l.contains(" 8080 ")), "{srv}");
    assert!(answer("dig-missing").contains("status: NXDOMAIN"));
    let outside = answer("dig-outside");
    assert!(outside.contains(&format!(" A {OUTSIDE_ANSWER}")), "forwarded upstream: {outside}");
    let elsewhere = answer("dig-elsewhere");
    assert!(
        elsewhere.contains("access-denied") && cluster.pod("dig-elsewhere")["status"]["phase"] == "Failed",
        "{elsewhere}"
    );
    let names: Vec<&str> = questions.iter().map(|(name, _)| *name).collect();
    cluster.ok(&[&["delete", "pod", "--wait=false"][..], &names].concat());
}

fn network_state(netns: &str) -> String {
    let commands: [&[&str]; 5] = [
        &["ip", "route"],
        &["ip", "neigh"],
        &["bridge", "fdb", "show", "dev", "skiff.vxlan"],
        &["ip", "-d", "link", "show", "skiff.vxlan"],
        &["ip", "address"],
    ];
    let mut state = format!("--- {netns}\n");
    for command in commands {
        let out = in_netns(netns, command[0], &command[1..]);
        state.push_str(&format!(
            "$ {}\n{}{}",
            command.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    state
}

/// Asks `server`'s DNS for `name` from the host, outside the cluster; the answer's code.
fn query_from_host(server: Ipv4Addr, name: &str) -> hickory_proto::op::ResponseCode {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut query = Message::query();
    query.queries.push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(&query.to_vec().unwrap(), (server, 53)).unwrap();
    let mut buffer = [0u8; 1500];
    let length = socket.recv(&mut buffer).expect("an answer");
    Message::from_vec(&buffer[..length]).unwrap().metadata.response_code
}

pub(crate) fn ready_endpoints(cluster: &Cluster, service: &str) -> usize {
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

    // Routes between the nodes: node-a's direct, node-b's over the overlay.
    let routes = |node: usize| {
        let out = in_netns(&nodes.hosts[node].0, "ip", &["route", "show", "proto", "83"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let direct = eventually("node-a's route to node-b's pods", TIMEOUT, || Some(routes(0)).filter(|r| !r.is_empty()));
    assert!(direct.starts_with(&format!("{} via {} dev eth0", ranges[1], nodes.hosts[1].1)), "{direct}");
    let overlay = eventually("node-b's route to node-a's pods", TIMEOUT, || Some(routes(1)).filter(|r| !r.is_empty()));
    assert!(
        overlay.starts_with(&format!("{} via {} dev skiff.vxlan", ranges[0], ranges[0].split('/').next().unwrap())),
        "{overlay}"
    );

    // Pod to pod across nodes, by address, the source kept.
    let grace = "  terminationGracePeriodSeconds: 1\n";
    // The client's first process reaps what it inherits: each busybox `timeout` leaves an orphan behind, and
    // thousands of zombies would reach the pids limit.
    cluster.create_pod(
        "client",
        "node-b",
        &format!(
            "{grace}  containers:\n  - name: sh\n    image: {}\n    command: [sh, -c, 'trap \"exit 0\" TERM; while :; do sleep 1 & wait; done']\n",
            nodes.busybox
        ),
    );
    cluster.create_pod(
        "server-a",
        "node-a",
        &format!("{grace}  containers:\n  - name: web\n    image: {}\n", nodes.shop),
    );
    let client = nodes.running_ip("client");
    let server = nodes.running_ip("server-a");
    let started = std::time::Instant::now();
    let answer = loop {
        let script = format!("/bin/busybox timeout 5 /bin/busybox wget -qO- http://{server}:8080/cgi-bin/who");
        let out = cluster.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let state = || nodes.hosts.iter().map(|(netns, _)| network_state(netns)).collect::<Vec<_>>().join("\n");
        assert!(
            started.elapsed() < TIMEOUT,
            "the client cannot reach the server on the other node: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            state()
        );
    };
    assert_eq!(answer, format!("server-a {client}"), "the server sees the client's own address");

    // The shop: five replicas over both nodes behind a Service.
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: shop}}\nspec:\n  replicas: 5\n  selector: {{matchLabels: {{app: shop}}}}\n  template:\n    metadata: {{labels: {{app: shop}}}}\n    spec:\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: web\n        image: {}\n        ports: [{{name: http, containerPort: 8080}}]\n        readinessProbe: {{httpGet: {{path: /cgi-bin/who, port: http}}, periodSeconds: 1}}\n        command: [sh, -c, 'trap \"exit 0\" TERM; /bin/busybox httpd -f -p 8080 -h /www & wait']\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: shop}}\nspec:\n  type: LoadBalancer\n  selector: {{app: shop}}\n  ports: [{{port: 80, targetPort: http}}]\n",
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

    nodes.spread_through_every_address("shop", "/cgi-bin/who", 5, |line| line.split_whitespace().next());

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

    let lookup = |args: &str| {
        let out = cluster.kubectl(&["exec", "client", "--", "sh", "-c", &format!("/bin/busybox nslookup {args}")]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (found, text) = lookup("shop.default.svc.cluster.local");
    assert!(found && text.contains(&cluster_ip), "nslookup of the Service: {text}");
    let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: shop-pods}\nspec:\n  clusterIP: None\n  selector: {app: shop}\n  ports: [{name: http, port: 80, targetPort: http}]\n";
    let out = cluster.with_stdin(&["apply", "-f", "-"], headless);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod_ips: Vec<String> = cluster
        .ok(&["get", "pods", "-l", "app=shop", "-o", "jsonpath={.items[*].status.podIP}"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    eventually("the headless Service's name giving every pod's address", TIMEOUT, || {
        let (found, text) = lookup("shop-pods.default.svc.cluster.local");
        (found && pod_ips.iter().all(|ip| text.contains(ip.as_str()))).then_some(())
    });
    let (found, text) = lookup("-type=SRV _http._tcp.shop-pods.default.svc.cluster.local");
    assert!(found && text.matches("8080").count() >= 5, "SRV records of each endpoint's port: {text}");
    let (found, text) = lookup("missing.default.svc.cluster.local");
    assert!(!found || text.contains("NXDOMAIN"), "a missing name: {text}");
    let (found, text) = lookup("www.outside.test");
    assert!(found && text.contains(&OUTSIDE_ANSWER.to_string()), "an outside name, forwarded upstream: {text}");
    assert_eq!(
        query_from_host(nodes.hosts[0].1, "www.outside.test."),
        hickory_proto::op::ResponseCode::Refused,
        "the node's DNS is no open resolver for clients outside the cluster"
    );

    // The same with wasi:http replicas, guests inside the agents: each greets with its pod's name.
    let http = nodes.registry.push_sample("http-hello");
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: hello}}\nspec:\n  replicas: 5\n  selector: {{matchLabels: {{app: hello}}}}\n  template:\n    metadata: {{labels: {{app: hello}}}}\n    spec:\n      containers:\n      - name: hello\n        image: {http}\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: GREETING, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: hello}}\nspec:\n  type: LoadBalancer\n  selector: {{app: hello}}\n  ports: [{{port: 8088, targetPort: 8080}}]\n"
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("five ready wasm endpoints", TIMEOUT, || (ready_endpoints(cluster, "hello") == 5).then_some(()));
    nodes.spread_through_every_address("hello", "/", 5, |line| line.strip_prefix("greeting: "));
    // A wasm server on the other node sees the container client's own address.
    let list: Value = serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "app=hello", "-o", "json"])).unwrap();
    let on_node_a = list["items"].as_array().unwrap().iter().find(|p| p["spec"]["nodeName"] == "node-a");
    let wasm_server = on_node_a.expect("a wasm replica on node-a")["status"]["podIP"].as_str().unwrap().to_string();
    let answer = nodes.in_client(&format!("/bin/busybox timeout 5 /bin/busybox wget -qO- http://{wasm_server}:8080/"));
    assert!(answer.contains(&format!("client: {client}:")), "the guest sees the client's address: {answer}");
    wasm_guests_send_requests(&nodes, &cluster_ip, server);
    wasm_guests_ask_the_cluster_dns(&nodes, &cluster_ip, &pod_ips);

    // Session affinity: a client keeps reaching one pod.
    let sticky = "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: shop}\n  sessionAffinity: ClientIP\n  ports: [{port: 80, targetPort: http}]\n";
    let out = cluster.with_stdin(&["apply", "-f", "-"], sticky);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("five ready endpoints of the sticky Service", TIMEOUT, || {
        (ready_endpoints(cluster, "sticky") == 5).then_some(())
    });
    let sticky_ip = cluster.ok(&["get", "service", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    let spread = nodes.spread(&format!("http://{sticky_ip}/cgi-bin/who"), 50);
    assert_eq!(spread.len(), 1, "one client, one pod: {spread:?}");

    // A LoadBalancer with externalTrafficPolicy Local in front of the one pod on node-a: reached from
    // outside the cluster (the host) at node-a's address with the client's own address kept, and not at
    // node-b's, which has no endpoint of it.
    cluster.ok(&["label", "pod", "server-a", "app=solo"]);
    let solo = "apiVersion: v1\nkind: Service\nmetadata: {name: solo}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: solo}\n  ports: [{port: 8081, targetPort: 8080}]\n";
    let out = cluster.with_stdin(&["apply", "-f", "-"], solo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the solo Service's endpoint", TIMEOUT, || (ready_endpoints(cluster, "solo") == 1).then_some(()));
    let ingress: Vec<String> = eventually("load balancer addresses", TIMEOUT, || {
        let ips = cluster.ok(&["get", "service", "solo", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"]);
        let ips: Vec<String> = ips.split_whitespace().map(str::to_string).collect();
        (ips.len() == 2).then_some(ips)
    });
    let (node_a, node_b) = (nodes.hosts[0].1.to_string(), nodes.hosts[1].1.to_string());
    assert_eq!(ingress, [node_a.clone(), node_b.clone()], "every Ready node's address");
    let node_port = cluster.ok(&["get", "service", "solo", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let host = nodes.net.gateway().to_string();
    let get = |url: &str| -> Option<String> {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(3)).no_proxy().build().ok()?;
        client.get(url).send().ok()?.text().ok()
    };
    for url in [format!("http://{node_a}:{node_port}/cgi-bin/who"), format!("http://{node_a}:8081/cgi-bin/who")] {
        let body = eventually(&format!("{url} answering"), TIMEOUT, || get(&url));
        assert_eq!(body.trim(), format!("server-a {host}"), "{url}: the client's address is kept");
    }
    for url in [format!("http://{node_b}:{node_port}/cgi-bin/who"), format!("http://{node_b}:8081/cgi-bin/who")] {
        assert_eq!(get(&url), None, "{url}: no local endpoint, no answer");
    }

    // A rolling restart under steady load fails no request: old pods leave the endpoints before they stop
    // (the shop's server exits at once on SIGTERM, as most do), new ones join once their readiness probe
    // passes.
    let load = {
        let mut command = cluster.kubectl_command(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("n=0; f=0; while [ ! -e /tmp/stop ]; do /bin/busybox timeout 5 /bin/busybox wget -qO /dev/null http://{cluster_ip}/cgi-bin/who || f=$((f+1)); n=$((n+1)); done; echo $n $f"),
        ]);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    cluster.ok(&["rollout", "restart", "deployment/shop"]);
    let rollout = cluster.kubectl(&["rollout", "status", "deployment/shop", "--timeout=120s"]);
    assert!(rollout.status.success(), "rollout: {}\n{}", String::from_utf8_lossy(&rollout.stderr), nodes.logs());
    eventually("the old pods gone", TIMEOUT, || {
        let pods = cluster.ok(&["get", "pods", "-l", "app=shop", "-o", "name"]);
        (pods.lines().count() == 5).then_some(())
    });
    nodes.in_client("/bin/busybox touch /tmp/stop");
    let output = load.wait_with_output().unwrap();
    let counts = String::from_utf8_lossy(&output.stdout).into_owned();
    let (sent, failed) = counts.trim().split_once(' ').unwrap_or_else(|| panic!("load counts: {counts:?} {output:?}"));
    assert_eq!(failed, "0", "no request failed during the rollout ({sent} sent)");
    assert!(sent.parse::<u32>().unwrap() > 100, "the load ran all along: {sent} requests");

    // Scaled down, only the remaining pods answer, soon (how soon is the proxy-scale benchmark's figure: an
    // endpoint change reaches the kernel in 30 ms at p99).
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
    let who = format!("http://{cluster_ip}/cgi-bin/who");
    eventually("traffic only to the two pods kept", Duration::from_secs(30), || {
        let spread = nodes.spread(&who, 50);
        spread.keys().all(|pod| kept.contains(pod)).then_some(())
    });

    // Back to five: every replica answers again.
    cluster.ok(&["scale", "deployment/shop", "--replicas=5"]);
    eventually("five ready endpoints again", TIMEOUT, || (ready_endpoints(cluster, "shop") == 5).then_some(()));
    eventually("every replica answering again", TIMEOUT, || (nodes.spread(&who, 100).len() == 5).then_some(()));

    // A pod whose readiness probe fails leaves the endpoints and gets no more traffic, until it passes again.
    let failing = &kept[0];
    let probed = |from: &str, to: &str| {
        cluster.ok(&["exec", failing, "--", "/bin/busybox", "mv", from, to]);
    };
    probed("/www/cgi-bin/who", "/www/who.off");
    eventually("the failing pod out of the endpoints", TIMEOUT, || {
        (ready_endpoints(cluster, "shop") == 4).then_some(())
    });
    eventually("traffic only to the four ready pods", Duration::from_secs(30), || {
        let spread = nodes.spread(&who, 100);
        (spread.len() == 4 && !spread.contains_key(failing)).then_some(())
    });
    probed("/www/who.off", "/www/cgi-bin/who");
    eventually("five ready endpoints again", TIMEOUT, || (ready_endpoints(cluster, "shop") == 5).then_some(()));

    // A deleted Service leaves no rule on any node.
    cluster.ok(&["delete", "service", "shop"]);
    for node in 0..nodes.hosts.len() {
        eventually("the Service's rules gone", Duration::from_secs(30), || {
            let rules = nodes.nft(node, &["list", "ruleset"]);
            (!rules.contains(&format!("{cluster_ip} . tcp")) && rules.contains("table ip skiff-")).then_some(())
        });
    }

    crate::networkpolicy::network_policies(&nodes);

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
        let overlay = in_netns(netns, "ip", &["link", "show", "skiff.vxlan"]);
        assert!(!overlay.status.success(), "{netns}: the overlay device left");
    }
}
