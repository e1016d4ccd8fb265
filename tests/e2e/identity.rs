//! A node's identity end to end, as Kubernetes' kubelet TLS bootstrap: a real agent joins with the join
//! token, trades it for a client certificate through a CertificateSigningRequest that the controllers
//! approve and sign, and is `system:node:NAME` from then on; its kubelet endpoint serves the API server's
//! client certificate and no one else.

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
    // The agent's serving certificate is self-signed and pinned by the API server; accepted here as `curl -k`.
    let ask = |identity: Option<reqwest::Identity>| {
        let mut client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true);
        if let Some(identity) = identity {
            client = client.identity(identity);
        }
        let response = client.build().unwrap().get(&url).send().expect("the agent answers");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };

    assert_eq!(ask(None), (401, "Unauthorized".to_string()), "no client certificate");
    // The join token is no credential here either.
    let token = std::fs::read_to_string(cluster.data_dir().join("node-token")).unwrap();
    let secret = token.trim().split_once("::node:").expect("a join token").1.to_string();
    let client = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let with_token = client.get(&url).bearer_auth(secret).send().expect("the agent answers");
    assert_eq!(with_token.status().as_u16(), 401, "the join token as bearer");

    // A node's own certificate, signed by the cluster CA, names someone else than the API server.
    let dir = agent.data_dir().join("agent");
    let node_pem = [
        std::fs::read(dir.join("client-kubelet.crt")).unwrap(),
        std::fs::read(dir.join("client-kubelet.key")).unwrap(),
    ]
    .concat();
    assert_eq!(
        ask(Some(reqwest::Identity::from_pem(&node_pem).unwrap())),
        (403, "Forbidden (user=system:node:node-1, verb=get, resource=nodes, subresource=proxy)".to_string())
    );

    // The API server's identity is served: the agent looked the pod up.
    assert_eq!(ask(Some(apiserver_identity(&cluster))), (404, "pod \"absent\" not found".to_string()));

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

pub fn a_node_acts_only_on_what_is_its_own() {
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let as_node = node_kubeconfig(&cluster, &agent);
    let node = |args: &[&str]| {
        let mut command = cluster.kubectl_command(args);
        command.env("KUBECONFIG", &as_node);
        let output = command.output().expect("kubectl runs");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
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
    let dir = agent.data_dir().join("agent");
    let pem = [
        std::fs::read(dir.join("client-kubelet.crt")).unwrap(),
        std::fs::read(dir.join("client-kubelet.key")).unwrap(),
    ]
    .concat();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cluster.data_dir().join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
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
