//! The kubelet endpoint end to end, as a kubelet in its webhook modes: a caller is its client certificate or
//! its bearer token (a TokenReview), and anyone but the API server is authorized by a SubjectAccessReview on
//! the Node's subresource, answered with the kubelet's 401 and 403; an exec is `create` whatever its method;
//! a path reaches only this node's pods and their containers; `kubectl logs` and `exec` through the API
//! server go on working.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};
use crate::rbac::mint_user;

/// The client certificate and key of the kubeconfig at `kubeconfig`, as read by kubectl.
fn identity_of(cluster: &Cluster, kubeconfig: &std::path::Path) -> reqwest::Identity {
    let field = |name: &str| {
        let jsonpath = format!("jsonpath={{.users[0].user.{name}}}");
        let mut command = cluster.kubectl_command(&["config", "view", "--raw", "-o", &jsonpath]);
        let output = command.env("KUBECONFIG", kubeconfig).output().expect("kubectl runs");
        assert!(output.status.success(), "kubectl config view: {}", String::from_utf8_lossy(&output.stderr));
        base64::engine::general_purpose::STANDARD.decode(output.stdout.trim_ascii()).expect("base64 PEM")
    };
    let pem = [field("client-certificate-data"), field("client-key-data")].concat();
    reqwest::Identity::from_pem(&pem).expect("a certificate and its key")
}

/// A caller's credential.
enum Credential<'a> {
    None,
    Certificate(&'a reqwest::Identity),
    Token(&'a str),
}

/// `method` `url` with `credential`, checking the agent's serving certificate (issued through a CSR) against
/// the cluster CA `ca` as any client of the port can: the status and the body.
fn call(ca: &reqwest::Certificate, method: reqwest::Method, url: &str, credential: Credential) -> (u16, String) {
    let mut client =
        reqwest::blocking::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca.clone());
    if let Credential::Certificate(identity) = credential {
        client = client.identity(identity.clone());
    }
    let mut request = client.build().unwrap().request(method, url);
    if let Credential::Token(token) = credential {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("the agent answers");
    (response.status().as_u16(), response.text().unwrap_or_default())
}

/// GETs `path` from the agent at `ip`:`port` as written, with `token`: clients (reqwest's URL among them)
/// resolve `..` segments before sending, an attacker does not. The status and the body.
fn get_verbatim(cluster: &Cluster, ip: &str, port: &str, path: &str, token: &str) -> (u16, String) {
    let ca = std::fs::read(cluster.data_dir().join("ca.crt")).expect("ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(certificate.expect("a PEM certificate")).expect("the cluster CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(ip.to_string()).expect("an address");
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(format!("{ip}:{port}")).expect("the agent accepts");
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("the request is sent");
    let mut response = String::new();
    // The body has a Content-Length: what came before a close without TLS's close_notify is the response.
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

pub fn the_kubelet_port_authorizes_callers_through_the_api_server() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &[]).unwrap();
    let busybox = registry.push_busybox("tools/busybox");
    let pod = format!(
        "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {busybox}\n    \
         command: [sh, -c, 'echo hello-from-box; sleep 3600']\n"
    );
    cluster.create_pod("box", &agent.name, &pod);
    let out = cluster.kubectl(&["wait", "--for=condition=Ready", "pod/box", "--timeout=120s"]);
    assert!(
        out.status.success(),
        "pod box ready: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let jsonpath = "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}";
    let port = cluster.ok(&["get", "node", &agent.name, "-o", jsonpath]);
    let base = format!("https://{}:{port}", agent.node_ip);
    let logs = format!("{base}/containerLogs/default/box/main");
    let ca = std::fs::read(cluster.data_dir().join("ca.crt")).expect("ca.crt");
    let ca = reqwest::Certificate::from_pem(&ca).expect("the cluster CA");
    let get = |credential| call(&ca, reqwest::Method::GET, &logs, credential);
    let hello = (200, "hello-from-box\n".to_string());
    // The log line is written once the container runs: through the API server, as the admin.
    eventually("the container's log line", Duration::from_secs(30), || {
        (cluster.kubectl(&["logs", "box"]).stdout == b"hello-from-box\n").then_some(())
    });

    // No credentials, or a token the API server does not know: no one.
    assert_eq!(get(Credential::None), (401, "Unauthorized".to_string()));
    assert_eq!(get(Credential::Token("made-up")), (401, "Unauthorized".to_string()));
    // Nor may anyone exec or port-forward: authentication comes before whatever the path names.
    let uid = cluster.ok(&["get", "pod", "box", "-o", "jsonpath={.metadata.uid}"]);
    let exec = format!("{base}/exec/default/box/{uid}/main?command=true&output=1");
    for url in [&exec, &format!("{base}/portForward/default/box/{uid}")] {
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            assert_eq!(call(&ca, method, url, Credential::None), (401, "Unauthorized".to_string()), "{url}");
        }
    }

    // A user's certificate from the cluster CA is alice, whom RBAC allows nothing on the node yet.
    let alice = identity_of(&cluster, &mint_user(&cluster, "alice", None));
    let forbidden =
        |verb: &str| (403, format!("Forbidden (user=alice, verb={verb}, resource=nodes, subresource(s)=[proxy])\n"));
    assert_eq!(get(Credential::Certificate(&alice)), forbidden("get"));

    // `get` on nodes/proxy, granted to alice and to a ServiceAccount.
    cluster.ok(&["create", "clusterrole", "node-proxy-reader", "--verb=get", "--resource=nodes/proxy"]);
    cluster.ok(&["create", "clusterrolebinding", "alice-proxy", "--clusterrole=node-proxy-reader", "--user=alice"]);
    cluster.ok(&["create", "serviceaccount", "viewer"]);
    cluster.ok(&[
        "create",
        "clusterrolebinding",
        "viewer-proxy",
        "--clusterrole=node-proxy-reader",
        "--serviceaccount=default:viewer",
    ]);
    let token = cluster.ok(&["create", "token", "viewer"]).trim().to_string();
    assert_eq!(get(Credential::Token(&token)), hello, "the ServiceAccount's token");
    // Alice's denial is cached for 30 s, as the kubelet caches it; then the grant holds.
    eventually("alice reads the log", Duration::from_secs(60), || {
        (get(Credential::Certificate(&alice)) == hello).then_some(())
    });
    // An exec is `create`, which she was not given, whether its upgrade is a POST or a GET (WebSocket).
    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        assert_eq!(call(&ca, method, &exec, Credential::Certificate(&alice)), forbidden("create"));
    }

    // A path names only this node's pods and their containers: no segment walks the agent's files.
    let nope = format!("{base}/containerLogs/default/box/nope");
    let not_in_pod = (404, "container \"nope\" not found in pod \"box\"".to_string());
    assert_eq!(call(&ca, reqwest::Method::GET, &nope, Credential::Token(&token)), not_in_pod);
    let absent = format!("{base}/containerLogs/default/absent/main");
    let no_pod = (404, "pod \"absent\" does not exist".to_string());
    assert_eq!(call(&ca, reqwest::Method::GET, &absent, Credential::Token(&token)), no_pod);
    for path in ["/containerLogs/default/box/..", "/containerLogs/default/box/..%2F..%2F..%2Fetc"] {
        let (code, body) = get_verbatim(&cluster, &agent.node_ip, &port, path, &token);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.starts_with("invalid path segment"), "{path}: {body}");
    }

    // The API server's own certificate needs no review: logs and exec through it work as before.
    assert_eq!(cluster.ok(&["logs", "box"]), "hello-from-box\n");
    assert_eq!(cluster.ok(&["exec", "box", "--", "echo", "through-the-api-server"]), "through-the-api-server\n");
}
