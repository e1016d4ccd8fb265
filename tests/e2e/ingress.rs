//! Ingress end to end: an agent serving Ingresses on ports of its own, two hosts and two paths routed to two
//! Services of the http-hello sample (told apart by their greeting), HTTPS with a certificate from a TLS
//! Secret chosen by SNI, 404 for an unknown host, 503 for a Service without ready endpoints, the default
//! class filled in on create, and the ADDRESS `kubectl get ingress` prints once the controller has set the
//! status.

use std::time::Duration;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, free_port};
use crate::multinode::Nodes;

const TIMEOUT: Duration = Duration::from_secs(120);

fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
}

/// A Deployment of http-hello greeting with `name`, and its Service `name` (port 80, named `web`).
fn app(image: &str, name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: {image}
        env: [{{name: GREETING, value: {name}}}]
        ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports: [{{name: web, port: 80, targetPort: http}}]
"#
    )
}

const INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  tls:
  - hosts: [shop.example.com]
    secretName: shop-tls
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
      - {path: /blog, pathType: Prefix, backend: {service: {name: blog, port: {name: web}}}}
  - host: blog.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: blog, port: {number: 80}}}}
  - host: down.example.com
    http:
      paths:
      - {path: /, pathType: Exact, backend: {service: {name: nobody, port: {number: 80}}}}
"#;

/// A class of another controller, and an Ingress of it.
const OTHER_CLASS: &str = r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: other
spec:
  controller: example.com/other
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: other
spec:
  ingressClassName: other
  rules:
  - host: other.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
"#;

/// A Service whose selector matches no pod: never a ready endpoint.
const NOBODY: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: nobody\nspec:\n  selector: {app: nobody}\n  ports: [{port: 80}]\n";

pub fn ingress_routes_hosts_and_paths_over_http_and_https() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let ports = [http_port.to_string(), https_port.to_string()];
    let flags = ["--ingress-http-port", &ports[0], "--ingress-https-port", &ports[1]];
    let agent = Agent::join_with(&cluster, "node-a", &flags).unwrap();
    let image = registry.push_sample("http-hello");

    // The class every cluster has, the default.
    let classes = cluster.ok(&["get", "ingressclass"]);
    assert!(classes.contains("CONTROLLER") && classes.contains("skiff.dev/ingress"), "{classes}");

    // The TLS Secret, from a certificate made here for the one HTTPS host.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()]).unwrap().self_signed(&key).unwrap();
    let cert_file = cluster.write_file("shop.crt", &cert.pem());
    let key_file = cluster.write_file("shop.key", &key.serialize_pem());
    let (cert_arg, key_arg) = (format!("--cert={}", cert_file.display()), format!("--key={}", key_file.display()));
    cluster.ok(&["create", "secret", "tls", "shop-tls", &cert_arg, &key_arg]);

    apply(&cluster, &app(&image, "shop"));
    apply(&cluster, &app(&image, "blog"));
    apply(&cluster, NOBODY);
    apply(&cluster, INGRESS);
    let class = cluster.ok(&["get", "ingress", "web", "-o", "jsonpath={.spec.ingressClassName}"]);
    assert_eq!(class, "skiff", "the DefaultIngressClass admission names the default class");

    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // Sent to the node's address whatever the host: the Host header names it.
    let get = |host: &str, path: &str| {
        let url = format!("http://{}:{http_port}{path}", agent.node_ip);
        match http.get(url).header("host", host).send() {
            Ok(response) => (response.status().as_u16(), response.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    eventually("both apps answering through the ingress", TIMEOUT, || {
        let (shop, blog) = (get("shop.example.com", "/"), get("blog.example.com", "/"));
        (shop.0 == 200 && blog.0 == 200).then_some(())
    });

    // Two hosts and two paths to two Services.
    let (status, body) = get("shop.example.com", "/cart?id=1");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("greeting: shop") && body.contains("path: /cart"), "{body}");
    // The wasm guests on this node take their requests inside the agent: the guest is told the ingress's
    // own client (this test, on loopback), where a connection to its port would have come from the node.
    assert!(body.contains("client: 127.0.0.1:"), "handed over in-process: {body}");
    let (status, body) = get("shop.example.com", "/blog/post");
    assert!(status == 200 && body.contains("greeting: blog") && body.contains("path: /blog/post"), "{body}");
    let (status, body) = get("shop.example.com", "/blogger");
    assert!(status == 200 && body.contains("greeting: shop"), "/blogger is no element of /blog: {body}");
    let (status, body) = get("blog.example.com:8080", "/");
    assert!(status == 200 && body.contains("greeting: blog"), "{body}");
    // A body streams through to the backend (http-hello answers any method alike).
    let url = format!("http://{}:{http_port}/upload", agent.node_ip);
    let posted = http.post(url).header("host", "shop.example.com").body(vec![b'x'; 256 * 1024]).send().unwrap();
    assert_eq!(posted.status(), 200);

    // An unknown host: 404. A Service without ready endpoints: 503.
    assert_eq!(get("unknown.example.com", "/").0, 404);
    assert_eq!(get("down.example.com", "/").0, 503);
    assert_eq!(get("down.example.com", "/other").0, 404, "an Exact path takes nothing else");

    // HTTPS: the Secret's certificate for its host by SNI, verified against that certificate alone.
    let root = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let https = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("shop.example.com", format!("{}:{https_port}", agent.node_ip).parse().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let body = eventually("HTTPS with the Secret's certificate", TIMEOUT, || {
        let response = https.get(format!("https://shop.example.com:{https_port}/secure")).send().ok()?;
        (response.status() == 200).then(|| response.text().unwrap_or_default())
    });
    assert!(body.contains("greeting: shop") && body.contains("path: /secure"), "{body}");
    // A name no Secret covers gets the node's own self-signed certificate, which that client refuses.
    let other = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .resolve("blog.example.com", format!("{}:{https_port}", agent.node_ip).parse().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(other.get(format!("https://blog.example.com:{https_port}/")).send().is_err());

    // The status the controller fills: the Ready node's InternalIP, printed as kubectl 1.33 prints it.
    let table = eventually("the ingress's address", TIMEOUT, || {
        let table = cluster.ok(&["get", "ingress", "web"]);
        table.contains(&agent.node_ip).then_some(table)
    });
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"], "{table}");
    assert!(
        table.contains("shop.example.com,blog.example.com,down.example.com") && table.contains("80, 443"),
        "{table}"
    );
    let short = cluster.ok(&["get", "ing", "web", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"]);
    assert_eq!(short, agent.node_ip);

    // `kubectl describe` finds the backends' endpoints.
    let described = cluster.ok(&["describe", "ingress", "web"]);
    assert!(described.contains("shop.example.com") && described.contains("shop:80 ("), "{described}");

    // An Ingress of another controller's class is neither served nor given an address.
    apply(&cluster, OTHER_CLASS);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get("other.example.com", "/").0, 404);
    let address = cluster.ok(&["get", "ingress", "other", "-o", "jsonpath={.status.loadBalancer.ingress}"]);
    assert_eq!(address, "", "another controller's Ingress");

    // Kubernetes' validation: a path type is required.
    let invalid = INGRESS.replace("name: web\n", "name: bad\n").replace("pathType: Exact, ", "");
    let out = cluster.with_stdin(&["apply", "-f", "-"], &invalid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("pathType must be specified"), "{stderr}");
}

/// Two nodes, each in a network of its own: both serve an Ingress whose one pod runs on the second, and
/// the Ingress's status lists both nodes' addresses.
pub fn ingress_on_every_node_reaches_pods_on_any_node() {
    let nodes = Nodes::start();
    let cluster = &nodes.cluster;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: who
  labels: {{app: who}}
spec:
  nodeName: node-b
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: {}
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: who
spec:
  selector: {{app: who}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: who
spec:
  rules:
  - host: who.example.com
    http:
      paths:
      - {{path: /cgi-bin, pathType: Prefix, backend: {{service: {{name: who, port: {{number: 80}}}}}}}}
"#,
        nodes.shop
    );
    apply(cluster, &manifest);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for (_, ip) in &nodes.hosts {
        let answer = eventually(&format!("the pod answering through {ip}'s ingress"), TIMEOUT, || {
            let response =
                http.get(format!("http://{ip}/cgi-bin/who")).header("host", "who.example.com").send().ok()?;
            (response.status() == 200).then(|| response.text().unwrap_or_default())
        });
        assert!(answer.starts_with("who "), "{ip}: {answer}\n{}", nodes.logs());
    }
    let addresses: Vec<String> = nodes.hosts.iter().map(|(_, ip)| ip.to_string()).collect();
    eventually("both nodes' addresses in the ingress's status", TIMEOUT, || {
        let status = cluster.ok(&["get", "ingress", "who", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"]);
        (status.split_whitespace().collect::<Vec<_>>() == addresses).then_some(())
    });
}
