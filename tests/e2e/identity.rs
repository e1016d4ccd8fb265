//! A node's identity end to end, as Kubernetes' kubelet TLS bootstrap: a real agent joins with the join
//! token, trades it for a client certificate through a CertificateSigningRequest that the controllers
//! approve and sign, and is `system:node:NAME` from then on; its kubelet endpoint serves the API server's
//! client certificate and refuses a node's (`tests/e2e/kubelet.rs` has users and ServiceAccounts).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, eventually};

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).expect("kubectl printed JSON")
}

/// The certificate signing requests for node client certificates.
fn node_requests(cluster: &Cluster) -> Vec<Value> {
    let list = json(cluster, &["get", "certificatesigningrequests", "-o", "json"]);
    list["items"].as_array().into_iter().flatten().filter(|csr| csr["spec"]["signerName"] == SIGNER).cloned().collect()
}

/// The subject's common name and organizations of a PEM certificate, and its issuer's common name.
fn names(pem: &[u8]) -> (String, Vec<String>, String) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let text = |attribute: &x509_parser::x509::AttributeTypeAndValue| attribute.as_str().unwrap().to_string();
    let common_name = cert.subject().iter_common_name().map(text).next().unwrap_or_default();
    let organizations = cert.subject().iter_organization().map(text).collect();
    let issuer = cert.issuer().iter_common_name().map(text).next().unwrap_or_default();
    (common_name, organizations, issuer)
}

/// The identity the API server presents to agents (`kube-apiserver-kubelet-client` in `system:masters`),
/// signed here with the cluster's CA from its data dir.
pub fn apiserver_identity(cluster: &Cluster) -> reqwest::Identity {
    let read = |name: &str| std::fs::read_to_string(cluster.data_dir().join(name)).expect("the cluster's CA");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.crt"), ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
}

pub fn an_agent_trades_the_join_token_for_a_certificate_of_its_own() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let mut agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();

    // One request, from the join token's identity, approved by the controllers and issued.
    let requests = node_requests(&cluster);
    assert_eq!(requests.len(), 1, "one node client request: {requests:#?}");
    let csr = &requests[0];
    let name = csr["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("node-csr-"), "{name}");
    assert_eq!(csr["spec"]["username"], "system:bootstrap:skiff", "{csr:#}");
    let groups = csr["spec"]["groups"].as_array().cloned().unwrap_or_default();
    assert!(groups.contains(&"system:bootstrappers".into()), "{csr:#}");
    assert_eq!(csr["spec"]["usages"], serde_json::json!(["digital signature", "client auth"]));
    let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let approved = conditions.iter().find(|c| c["type"] == "Approved").expect("an Approved condition");
    assert_eq!((&approved["status"], &approved["reason"]), (&"True".into(), &"AutoApproved".into()), "{csr:#}");
    assert_eq!(approved["message"], "Auto approving kubelet client certificate after SubjectAccessReview.");
    let table = cluster.ok(&["get", "csr"]);
    let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} listed:\n{table}"));
    for column in [SIGNER, "system:bootstrap:skiff", "Approved,Issued"] {
        assert!(row.split_whitespace().any(|c| c == column), "{column} in {row:?}\n{table}");
    }

    // The agent keeps what was issued, private, for this node, signed by the cluster CA.
    let issued = base64::engine::general_purpose::STANDARD
        .decode(csr["status"]["certificate"].as_str().expect("an issued certificate"))
        .unwrap();
    let dir = agent.data_dir().join("agent");
    assert_eq!(
        std::fs::read(dir.join("client-kubelet.crt")).unwrap(),
        issued,
        "the agent's certificate is the one issued"
    );
    for (file, mode) in [("", 0o700), ("client-kubelet.crt", 0o600), ("client-kubelet.key", 0o600)] {
        let actual = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, mode, "mode of {}", dir.join(file).display());
    }
    let (common_name, organizations, issuer) = names(&issued);
    assert_eq!(
        (common_name.as_str(), organizations, issuer.as_str()),
        ("system:node:node-1", vec!["system:nodes".to_string()], "skiff-ca")
    );

    // A restarted agent uses the certificate it has: no second request.
    agent.kill();
    agent.launch(&cluster).unwrap();
    eventually("the restarted agent registers its node", Duration::from_secs(30), || {
        (agent.log().matches("node registered").count() == 2).then_some(())
    });
    assert_eq!(node_requests(&cluster).len(), 1, "the restarted agent asked again:\n{}", agent.log());
}

pub fn the_kubelet_port_serves_only_the_api_server() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let port = cluster.ok(&["get", "node", "node-1", "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]);
    let url = format!("https://{}:{port}/containerLogs/default/absent/main", agent.node_ip);
    // Who presents the agent's serving certificate does not matter here (`curl -k`); the CSR test checks it.
    let ask = |identity: Option<reqwest::Identity>| {
        let mut client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true);
        if let Some(identity) = identity {
            client = client.identity(identity);
        }
        let response = client.build().unwrap().get(&url).send().expect("the agent answers");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };

    assert_eq!(ask(None), (401, "Unauthorized".to_string()), "no client certificate");
    // The join token is a bearer token the API server knows, whose bootstrap identity may do nothing here.
    let token = std::fs::read_to_string(cluster.data_dir().join("node-token")).unwrap();
    let secret = token.trim().split_once("::node:").expect("a join token").1.to_string();
    let client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let with_token = client.get(&url).bearer_auth(secret).send().expect("the agent answers");
    assert_eq!(
        (with_token.status().as_u16(), with_token.text().unwrap()),
        (403, "Forbidden (user=system:bootstrap:skiff, verb=get, resource=nodes, subresource(s)=[proxy])\n".into()),
        "the join token as bearer"
    );

    // A node's own certificate, signed by the cluster CA, is no one here: a revoked node's would be taken
    // otherwise, since the port cannot read the API server's record of revocations.
    let dir = agent.data_dir().join("agent");
    let node_pem = [
        std::fs::read(dir.join("client-kubelet.crt")).unwrap(),
        std::fs::read(dir.join("client-kubelet.key")).unwrap(),
    ]
    .concat();
    assert_eq!(ask(Some(reqwest::Identity::from_pem(&node_pem).unwrap())), (401, "Unauthorized".to_string()));

    // The API server's identity is served: the agent looked the pod up.
    assert_eq!(ask(Some(apiserver_identity(&cluster))), (404, "pod \"absent\" does not exist".to_string()));

    // And the API server presents it: a log request reaches the agent, which answers about the container.
    let pod = "  containers:\n  - name: main\n    image: registry.invalid/absent:1\n";
    cluster.create_pod("bound", "node-1", pod);
    let logs = cluster.kubectl(&["logs", "bound"]);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(
        !stderr.contains("Unauthorized") && !stderr.contains("Forbidden"),
        "the agent refused the API server: {stderr}"
    );
    assert!(logs.status.success() || stderr.contains("has no logs yet"), "{stderr}\nagent log:\n{}", agent.log());
}

/// A kubeconfig acting as the agent's node, with the certificate it was issued.
fn node_kubeconfig(cluster: &Cluster, agent: &Agent) -> std::path::PathBuf {
    let encode =
        |path: std::path::PathBuf| base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    let dir = agent.data_dir().join("agent");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\n\
         users:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: c\n  context: {{cluster: c, user: node, namespace: default}}\ncurrent-context: c\n",
        cluster.listen,
        encode(cluster.data_dir().join("ca.crt")),
        encode(dir.join("client-kubelet.crt")),
        encode(dir.join("client-kubelet.key")),
    );
    cluster.write_file("node.kubeconfig", &kubeconfig)
}

/// kubectl `args` with `kubeconfig`: whether it succeeded, and its stderr.
fn kubectl_as(cluster: &Cluster, kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut command = cluster.kubectl_command(args);
    command.env("KUBECONFIG", kubeconfig);
    let output = command.output().expect("kubectl runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// An HTTP client with the certificate the agent was issued, trusting the cluster CA.
fn node_client(cluster: &Cluster, agent: &Agent) -> reqwest::blocking::Client {
    let dir = agent.data_dir().join("agent");
    let pem = [
        std::fs::read(dir.join("client-kubelet.crt")).unwrap(),
        std::fs::read(dir.join("client-kubelet.key")).unwrap(),
    ]
    .concat();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cluster.data_dir().join("ca.crt")).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

pub fn a_node_acts_only_on_what_is_its_own() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let as_node = node_kubeconfig(&cluster, &agent);
    let node = |args: &[&str]| kubectl_as(&cluster, &as_node, args);
    cluster.ok(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
    cluster.ok(&["create", "secret", "generic", "unused", "--from-literal=k=v"]);
    let other = "apiVersion: v1\nkind: Node\nmetadata:\n  name: other\n";
    assert!(cluster.with_stdin(&["create", "-f", "-"], other).status.success());
    let env = "    env:\n    - name: K\n      valueFrom: {secretKeyRef: {name: used, key: k}}\n";
    cluster.create_pod(
        "mine",
        "node-1",
        &format!("  containers:\n  - name: main\n    image: registry.invalid/a:1\n{env}"),
    );
    cluster.create_pod("theirs", "other", "  containers:\n  - name: main\n    image: registry.invalid/a:1\n");

    // Its own: the Secret its pod uses, its Node, its pods' status.
    let (ok, stderr) = node(&["get", "secret", "used"]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = node(&["label", "node", "node-1", "team=edge"]);
    assert!(ok, "{stderr}");
    // Status patches as the agent sends them (kubectl's --subresource=status reads pods/status first,
    // which Kubernetes' node rules do not allow either).
    let client = node_client(&cluster, &agent);
    let patch_status = |pod: &str| {
        let url = format!("https://{}/api/v1/namespaces/default/pods/{pod}/status", cluster.listen);
        let condition = r#"{"status":{"conditions":[{"type":"Checked","status":"True"}]}}"#;
        let response = client
            .patch(url)
            .header("Content-Type", "application/merge-patch+json")
            .body(condition)
            .send()
            .expect("the server answers");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };
    let (code, body) = patch_status("mine");
    assert_eq!(code, 200, "{body}");

    // Not its own: 403, worded as Kubernetes words it, and nothing written.
    let (ok, stderr) = node(&["get", "secret", "unused"]);
    assert!(!ok && stderr.contains("no relationship found between node 'node-1' and this object"), "{stderr}");
    let (ok, stderr) = node(&["get", "secrets"]);
    assert!(!ok && stderr.contains("Forbidden"), "{stderr}");
    let (ok, stderr) = node(&["label", "node", "other", "team=edge"]);
    assert!(!ok && stderr.contains(r#"node "node-1" is not allowed to modify node "other""#), "{stderr}");
    let (ok, stderr) = node(&["label", "node", "node-1", "node-restriction.kubernetes.io/trusted=yes"]);
    assert!(!ok && stderr.contains("is not allowed to modify labels"), "{stderr}");
    let (code, body) = patch_status("theirs");
    assert!(
        code == 403 && body.contains("can only update pod status for pods with spec.nodeName set to itself"),
        "{body}"
    );
    assert!(!cluster.ok(&["get", "pod", "theirs", "-o", "json"]).contains("Checked"), "a refused status patch wrote");
    assert!(!cluster.ok(&["get", "node", "other", "-o", "json"]).contains("team"), "a refused label wrote");
}

/// The CPU time (user and system, in clock ticks) process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: utime and stime are
    // the 14th and 15th of the line.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum()
}

pub fn deleting_a_node_locks_its_certificate_out() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let mut agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let as_node = node_kubeconfig(&cluster, &agent);
    let node = |args: &[&str]| kubectl_as(&cluster, &as_node, args);
    let client = node_client(&cluster, &agent);
    let get = |path: &str| {
        let response = client.get(format!("https://{}{path}", cluster.listen)).send().expect("the server answers");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };
    let (ok, stderr) = node(&["get", "--raw", "/api"]);
    assert!(ok, "the node's certificate works: {stderr}");
    assert_eq!(get("/api/v1/nodes/node-1").0, 200);
    // A watch the node holds open: it must not outlive the revocation.
    let watch = client
        .get(format!("https://{}/api/v1/nodes?watch=1&fieldSelector=metadata.name%3Dnode-1", cluster.listen))
        .send()
        .expect("the server answers");
    assert_eq!(watch.status().as_u16(), 200);
    let (watch_ended, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut watch = watch;
        let _ = std::io::copy(&mut watch, &mut std::io::sink());
        let _ = watch_ended.send(());
    });

    cluster.ok(&["delete", "node", "node-1"]);
    // Refused from the moment the delete answered, as an invalid credential; the connections it had open
    // are closed, their watches with them.
    ended.recv_timeout(Duration::from_secs(10)).expect("the node's watch ended with the revocation");
    let (ok, stderr) = node(&["get", "--raw", "/api"]);
    assert!(!ok && stderr.contains("Unauthorized"), "{stderr}");
    let (code, body) = get("/api/v1/nodes/node-1");
    let status: Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!((code, &status["reason"]), (401, &"Unauthorized".into()), "{body}");
    assert!(cluster.ok(&["get", "--raw", "/api"]).contains("APIVersions"), "the admin is not affected");

    // The agent finds itself refused and neither panics nor spins: a few log lines and little CPU after
    // (it may ask for a new certificate with the join token meanwhile: revoking a node does not revoke the
    // join token).
    eventually("the agent is refused", Duration::from_secs(30), || agent.log().contains("Unauthorized").then_some(()));
    let (lines, ticks) = (agent.log().lines().count(), cpu_ticks(agent.pid()));
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    let added = log.lines().count() - lines;
    assert!(added < 50, "{added} log lines in {window:?} after the lockout:\n{log}");
    let used = cpu_ticks(agent.pid()) - ticks;
    assert!(used < 100, "{used} ticks of CPU in {window:?} after the lockout:\n{log}");

    // Joined again with the join token, the node's new certificate, issued after the revocation, works.
    agent.kill();
    for file in ["client-kubelet.crt", "client-kubelet.key"] {
        std::fs::remove_file(agent.data_dir().join("agent").join(file)).unwrap();
    }
    agent.launch(&cluster).unwrap();
    let (ok, stderr) = kubectl_as(&cluster, &node_kubeconfig(&cluster, &agent), &["get", "--raw", "/api"]);
    assert!(ok, "the new certificate works: {stderr}");
}

pub fn the_kubelet_port_serves_a_certificate_issued_through_a_csr() {
    const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
    let registry = crate::harness::Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &[]).unwrap();

    // One request, by the node itself, for its name and address: approved by the controllers and issued.
    let list = json(&cluster, &["get", "certificatesigningrequests", "-o", "json"]);
    let requests: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|csr| csr["spec"]["signerName"] == SERVING_SIGNER)
        .collect();
    assert_eq!(requests.len(), 1, "one kubelet serving request: {requests:#?}");
    let csr = requests[0];
    assert_eq!(csr["spec"]["username"], "system:node:node-1", "{csr:#}");
    let groups = csr["spec"]["groups"].as_array().cloned().unwrap_or_default();
    assert!(groups.contains(&"system:nodes".into()), "{csr:#}");
    assert_eq!(csr["spec"]["usages"], serde_json::json!(["digital signature", "server auth"]));
    let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let approved = conditions.iter().find(|c| c["type"] == "Approved").expect("an Approved condition");
    assert_eq!((&approved["status"], &approved["reason"]), (&"True".into(), &"AutoApproved".into()), "{csr:#}");
    let name = csr["metadata"]["name"].as_str().unwrap();
    let table = cluster.ok(&["get", "csr"]);
    let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} listed:\n{table}"));
    for column in [SERVING_SIGNER, "system:node:node-1", "Approved,Issued"] {
        assert!(row.split_whitespace().any(|c| c == column), "{column} in {row:?}\n{table}");
    }

    // The agent keeps it, for this node, signed by the cluster CA, naming the node's name and address.
    let issued = base64::engine::general_purpose::STANDARD
        .decode(csr["status"]["certificate"].as_str().expect("an issued certificate"))
        .unwrap();
    let dir = agent.data_dir().join("agent");
    assert_eq!(std::fs::read(dir.join("serving-kubelet.crt")).unwrap(), issued, "the agent serves what was issued");
    let mode = std::fs::metadata(dir.join("serving-kubelet.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (common_name, organizations, issuer) = names(&issued);
    assert_eq!(
        (common_name.as_str(), organizations, issuer.as_str()),
        ("system:node:node-1", vec!["system:nodes".to_string()], "skiff-ca")
    );

    // It is what the port presents: a client trusting the cluster CA alone reaches it at the node's address
    // (and is refused for want of a client certificate), where one trusting nothing fails the handshake.
    let port = cluster.ok(&["get", "node", "node-1", "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]);
    let url = format!("https://{}:{port}/containerLogs/default/absent/main", agent.node_ip);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cluster.data_dir().join("ca.crt")).unwrap()).unwrap();
    let trusting = reqwest::blocking::Client::builder().add_root_certificate(ca).build().unwrap();
    let response = trusting.get(&url).send().expect("the certificate is the cluster CA's, for the node's address");
    assert_eq!(response.status().as_u16(), 401);
    let untrusting = reqwest::blocking::Client::builder().build().unwrap();
    assert!(untrusting.get(&url).send().is_err(), "no trust without the cluster CA");

    // And the API server, which checks it as node-1's from the cluster CA, reaches the agent through it.
    let busybox = registry.push_busybox("tools/busybox");
    let pod = format!(
        "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {busybox}\n    \
         command: [sh, -c, \"echo hello-from-node-1; sleep 3600\"]\n"
    );
    cluster.create_pod("talker", "node-1", &pod);
    let ready = cluster.kubectl(&["wait", "--for=condition=Ready", "pod/talker", "--timeout=120s"]);
    assert!(ready.status.success(), "{}\nagent log:\n{}", String::from_utf8_lossy(&ready.stderr), agent.log());
    eventually("the pod's log through the agent", Duration::from_secs(30), || {
        let logs = cluster.kubectl(&["logs", "talker"]);
        (logs.status.success() && String::from_utf8_lossy(&logs.stdout) == "hello-from-node-1\n").then_some(())
    });
    assert_eq!(cluster.ok(&["exec", "talker", "--", "echo", "exec-through-the-agent"]), "exec-through-the-agent\n");
}

/// `skiff` with `args` and the cluster's data dir; its stdout, failing with its stderr when it fails.
fn skiff(cluster: &Cluster, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .arg("--data-dir")
        .arg(cluster.data_dir())
        .output()
        .expect("skiff runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "skiff {} failed: {stderr}", args.join(" "));
    String::from_utf8(output.stdout).expect("skiff prints text")
}

/// `kubectl auth whoami` with bearer token `token`: the user name, or kubectl's complaint.
fn whoami(cluster: &Cluster, token: &str) -> Result<String, String> {
    let output = cluster.kubectl(&["--token", token, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

pub fn a_node_joins_with_a_bootstrap_token_of_its_own_that_deleting_revokes() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let join_token = skiff(&cluster, &["token", "create", "--ttl", "10m", "--description", "for node-1"]);
    let join_token = join_token.trim();
    // K10<the CA's hash>::<id>.<secret>, the CA being the one the shared join token names.
    let shared = std::fs::read_to_string(cluster.data_dir().join("node-token")).unwrap();
    let (ca, bearer) = join_token.split_once("::").expect("a join token");
    assert!(shared.starts_with(&format!("{ca}::node:")), "{join_token} and {shared}");
    let (id, secret) = bearer.split_once('.').expect("<id>.<secret>");
    let lowercase = |text: &str| text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    assert!(id.len() == 6 && secret.len() == 16 && lowercase(id) && lowercase(secret), "{join_token}");
    let listed = skiff(&cluster, &["token", "list"]);
    let row = listed.lines().find(|line| line.starts_with(id)).unwrap_or_else(|| panic!("{id} in\n{listed}"));
    assert!(row.ends_with("for node-1"), "{row}");

    // The agent joins with it: its certificate request is the token's user's, and its Node becomes Ready.
    let _agent = Agent::join_with_token(&cluster, "node-1", join_token, &["--pod-network", "host"]).unwrap();
    let requests = node_requests(&cluster);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0]["spec"]["username"], format!("system:bootstrap:{id}"), "{:#}", requests[0]);
    assert_eq!(whoami(&cluster, bearer), Ok(format!("system:bootstrap:{id}")));

    // Deleting the token's Secret revokes it: the next requests are 401.
    cluster.ok(&["-n", "kube-system", "delete", "secret", &format!("bootstrap-token-{id}")]);
    let refused = eventually("the deleted token is refused", Duration::from_secs(5), || whoami(&cluster, bearer).err());
    assert!(refused.contains("Unauthorized"), "{refused}");
    assert!(!skiff(&cluster, &["token", "list"]).contains(id), "gone from the list");

    // A token whose Secret (made with kubectl, as kubeadm documents) has expired is refused; one that has
    // not is taken, and the expired one's Secret is deleted by the token cleaner.
    let token_secret = |id: &str, expiration: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": id, "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true", "expiration": expiration,
            },
        })
        .to_string()
    };
    for (id, expiration) in [("old000", "2020-01-01T00:00:00Z"), ("new000", "2099-01-01T00:00:00Z")] {
        let created = cluster.with_stdin(&["create", "-f", "-"], &token_secret(id, expiration));
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    }
    let current = "new000.0123456789abcdef";
    eventually("the new token is taken", Duration::from_secs(5), || whoami(&cluster, current).ok());
    let refused = whoami(&cluster, "old000.0123456789abcdef").expect_err("the expired token is refused");
    assert!(refused.contains("Unauthorized"), "{refused}");
    eventually("the token cleaner deletes the expired token", Duration::from_secs(30), || {
        let out = cluster.kubectl(&["-n", "kube-system", "get", "secret", "bootstrap-token-old000"]);
        String::from_utf8_lossy(&out.stderr).contains("NotFound").then_some(())
    });
    assert_eq!(whoami(&cluster, current), Ok("system:bootstrap:new000".to_string()), "the cleaner kept it");
}
