//! NetworkPolicy end to end, on the multi-node cluster of `multinode.rs` (two agents, each in a network
//! namespace of its own): the shop's container replicas and the wasi:http `hello` replicas (guests inside
//! the agents, their addresses on the nodes' bridges) behind policies of the `default` namespace, a client
//! pod on node-b, a stranger pod on node-a, a wasm guest on node-a sending requests (the http-fetch
//! sample), and a server in another namespace.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use crate::harness::eventually;
use crate::multinode::{Nodes, ready_endpoints};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the checks send requests: a name for messages and a URL.
struct Target {
    name: String,
    url: String,
}

/// Running pods (not being deleted) matching `selector` in the default namespace, as targets on `port`
/// and `path`.
fn targets(nodes: &Nodes, selector: &str, port: u16, path: &str) -> Vec<Target> {
    let list: Value = serde_json::from_str(&nodes.cluster.ok(&["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    let pods = list["items"].as_array().unwrap().iter();
    let live = pods.filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running");
    let targets: Vec<Target> = live
        .map(|pod| Target {
            name: format!(
                "{} on {}",
                pod["metadata"]["name"].as_str().unwrap(),
                pod["spec"]["nodeName"].as_str().unwrap()
            ),
            url: format!("http://{}:{port}{path}", pod["status"]["podIP"].as_str().unwrap()),
        })
        .collect();
    assert!(!targets.is_empty(), "pods {selector}");
    targets
}

/// Who sends the requests: a container pod (busybox's wget), or a wasm pod whose guest fetches for us.
#[derive(Clone, Copy)]
enum Client<'a> {
    Pod(&'a str),
    Guest(&'a str),
}

impl Client<'_> {
    fn name(&self) -> &str {
        match self {
            Client::Pod(name) | Client::Guest(name) => name,
        }
    }
}

/// Which of `targets` the client reaches over HTTP (each within 2 s, all at once).
fn reaches(nodes: &Nodes, from: Client, targets: &[&Target]) -> Vec<bool> {
    let from = match from {
        Client::Pod(pod) => pod,
        Client::Guest(guest) => {
            return std::thread::scope(|scope| {
                let tries: Vec<_> = targets
                    .iter()
                    .map(|t| scope.spawn(|| nodes.fetch_through(guest, &t.url, Duration::from_secs(2))))
                    .collect();
                tries
                    .into_iter()
                    .map(|t| t.join().unwrap().lines().next().is_some_and(|l| l.contains(" 200 ")))
                    .collect()
            });
        }
    };
    let tries: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "(/bin/busybox timeout 2 /bin/busybox wget -qO /dev/null {} && echo {i} yes || echo {i} no) &",
                t.url
            )
        })
        .collect();
    let script = format!("{} wait", tries.join(" "));
    let out = nodes.cluster.kubectl(&["exec", from, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "exec in {from}: {}", String::from_utf8_lossy(&out.stderr));
    let mut reached = vec![false; targets.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((i, "yes")) = line.split_once(' ') {
            reached[i.parse::<usize>().unwrap()] = true;
        }
    }
    reached
}

/// Waits until pod `from` reaches exactly the groups of targets marked true (policies take effect on each
/// node once its agent has programmed them).
fn expect(nodes: &Nodes, what: &str, from: Client, targets: &[(&[Target], bool)]) {
    let all: Vec<&Target> = targets.iter().flat_map(|(group, _)| group.iter()).collect();
    let expected: Vec<bool> = targets.iter().flat_map(|(group, reach)| group.iter().map(|_| *reach)).collect();
    let described: Vec<String> = all
        .iter()
        .zip(&expected)
        .map(|(t, reach)| format!("{}: {}", t.name, if *reach { "yes" } else { "no" }))
        .collect();
    eventually(&format!("{what}: {} reaching {}", from.name(), described.join(", ")), TIMEOUT, || {
        (reaches(nodes, from, &all) == expected).then_some(())
    });
}

fn apply(nodes: &Nodes, manifest: &str) {
    let out = nodes.cluster.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
}

pub fn network_policies(nodes: &Nodes) {
    let cluster = &nodes.cluster;
    // The clients: `client` on node-b exists; a stranger on node-a, and a server in another namespace.
    let grace = "  terminationGracePeriodSeconds: 1\n";
    cluster.create_pod(
        "stranger",
        "node-a",
        &format!("{grace}  containers:\n  - name: sh\n    image: {}\n    command: [sleep, '3600']\n", nodes.busybox),
    );
    cluster.ok(&["create", "namespace", "other"]);
    apply(
        nodes,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: outside, namespace: other}}\nspec:\n  nodeName: node-a\n{grace}  containers:\n  - name: web\n    image: {}\n",
            nodes.shop
        ),
    );
    let outside: Ipv4Addr = eventually("the other namespace's server running", TIMEOUT, || {
        let status =
            cluster.ok(&["get", "pod", "-n", "other", "outside", "-o", "jsonpath={.status.phase} {.status.podIP}"]);
        match status.split_once(' ') {
            Some(("Running", ip)) => ip.parse().ok(),
            _ => None,
        }
    });
    let fetch = nodes.registry.push_sample("http-fetch");
    cluster.create_pod(
        "guest",
        "node-a",
        &format!("  containers:\n  - name: fetch\n    image: {fetch}\n    ports: [{{containerPort: 8080}}]\n"),
    );
    eventually("the guest running", TIMEOUT, || (cluster.pod("guest")["status"]["phase"] == "Running").then_some(()));
    eventually("the stranger running", TIMEOUT, || {
        (cluster.pod("stranger")["status"]["phase"] == "Running").then_some(())
    });
    let shop = targets(nodes, "app=shop", 8080, "/cgi-bin/who");
    let hello = targets(nodes, "app=hello", 8080, "/");
    let sticky_ip = cluster.ok(&["get", "service", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    // Through a Service, traffic is judged by the pod it is sent to.
    let sticky = [Target { name: "the sticky Service".into(), url: format!("http://{sticky_ip}/cgi-bin/who") }];
    let other = [Target { name: "other/outside".into(), url: format!("http://{outside}:8080/cgi-bin/who") }];
    let clients = [Client::Pod("client"), Client::Pod("stranger"), Client::Guest("guest")];
    for from in clients {
        expect(nodes, "no policy", from, &[(&shop, true), (&hello, true), (&sticky, true), (&other, true)]);
    }

    // Default deny for ingress in `default`: nobody reaches its pods, containers and wasm alike; the other
    // namespace is untouched, and the nodes' own probes still pass (the shop stays ready).
    apply(
        nodes,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec:\n  podSelector: {}\n",
    );
    for from in clients {
        expect(nodes, "deny-all", from, &[(&shop, false), (&hello, false), (&sticky, false), (&other, true)]);
    }
    let policies = cluster.ok(&["get", "netpol"]);
    assert!(policies.contains("POD-SELECTOR") && policies.contains("<none>"), "{policies}");
    let defaulted = cluster.ok(&["get", "netpol", "deny-all", "-o", "jsonpath={.spec.policyTypes}"]);
    assert_eq!(defaulted, r#"["Ingress"]"#);
    assert_eq!(ready_endpoints(cluster, "sticky"), shop.len(), "probes from the shop's own nodes pass");
    for node in 0..2 {
        let tables = nodes.nft(node, &["list", "tables"]);
        let mut names = tables.lines().filter_map(|line| line.strip_prefix("table ip "));
        let table = names.find(|name| name.starts_with("skiff-policy-"));
        let table = table.unwrap_or_else(|| panic!("node {node}'s policy table: {tables}"));
        let rules = nodes.nft(node, &["list", "table", "ip", table]);
        assert!(rules.contains("jump ingress-default/"), "node {node}:\n{rules}");
    }

    // Pods labelled role=client are let in: to the shop on its named port `http`, to the wasm replicas on
    // a port range and only from namespaces labelled team=front (both selectors in one peer). The
    // stranger is no client.
    cluster.ok(&["label", "pod", "client", "role=client"]);
    cluster.ok(&["label", "namespace", "default", "team=front"]);
    apply(
        nodes,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-shop}\nspec:\n  podSelector: {matchLabels: {app: shop}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: http}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-hello}\nspec:\n  podSelector: {matchLabels: {app: hello}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: front}}, podSelector: {matchLabels: {role: client}}}]\n    ports: [{protocol: TCP, port: 8000, endPort: 8090}]\n",
    );
    let (client, stranger, guest) = (clients[0], clients[1], clients[2]);
    expect(nodes, "clients allowed", client, &[(&shop, true), (&hello, true), (&sticky, true), (&other, true)]);
    for from in [stranger, guest] {
        expect(nodes, "clients allowed", from, &[(&shop, false), (&hello, false), (&sticky, false), (&other, true)]);
    }
    // A wasm pod labelled a client is one.
    cluster.ok(&["label", "pod", "guest", "role=client"]);
    expect(nodes, "clients allowed", guest, &[(&shop, true), (&hello, true), (&sticky, true), (&other, true)]);

    // An address block lets the stranger in, until its address is an exception.
    let block = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-block}\nspec:\n  podSelector: {matchLabels: {app: shop}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8";
    apply(nodes, &format!("{block}}}}}]\n"));
    expect(nodes, "an address block", stranger, &[(&shop, true), (&hello, false), (&sticky, true)]);
    let stranger_ip = cluster.pod("stranger")["status"]["podIP"].as_str().unwrap().to_string();
    apply(nodes, &format!("{block}, except: [{stranger_ip}/32]}}}}]\n"));
    expect(nodes, "an exception in the block", stranger, &[(&shop, false), (&hello, false), (&sticky, false)]);

    // Egress: the client may only reach named ports `http` of pods in its own namespace (the namespace
    // selected by the name label every namespace has): the shop, but not the wasm replicas (no such port)
    // and not the other namespace.
    apply(
        nodes,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-egress}\nspec:\n  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]\n    ports: [{port: http}]\n",
    );
    for from in [client, guest] {
        expect(nodes, "client egress", from, &[(&shop, true), (&sticky, true), (&hello, false), (&other, false)]);
    }

    // Without policies, everything is open again.
    cluster.ok(&["delete", "networkpolicy", "--all"]);
    for from in clients {
        expect(nodes, "policies deleted", from, &[(&shop, true), (&hello, true), (&sticky, true), (&other, true)]);
    }
    cluster.ok(&["delete", "namespace", "other", "--wait=false"]);
    cluster.ok(&["delete", "pod", "stranger", "guest", "--wait=false"]);
}
