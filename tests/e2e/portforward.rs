//! `kubectl port-forward` end to end: the real kubectl speaks SPDY (tunnelled in WebSocket, its first try;
//! plain SPDY with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), and the Python client WebSocket channels
//! (`v4.channel.k8s.io`), to the API server, which passes the upgrade through to the agent; the agent connects to the pod's address: a busybox httpd in a network namespace of
//! its own, a wasm http-hello on the node's bridge. Needs root and the CNI plugins, as `--pod-network cni`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Agent, Backend, Cluster, Registry, lines};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The Python client's `portforward` (kubernetes.stream): one GET to a pod's port, then what the port's
/// error channel said.
const PYTHON_PORT_FORWARD: &str = r#"import sys
from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(config_file=sys.argv[1])
name, port = sys.argv[2], int(sys.argv[3])
forward = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward, name, "default", ports=str(port))
sock = forward.socket(port)
sock.settimeout(30)
sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
answer = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.decode(errors="replace"))
print("error:", forward.error(port))
"#;

fn manifest(node: &str, busybox: &str, hello: &str) -> String {
    let serve =
        "mkdir -p /www && echo hello-from-httpd > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www";
    let ready = "readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}";
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: httpd, labels: {{app: httpd}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {busybox}
    command: [sh, -c, '{serve}']
    ports: [{{containerPort: 8080}}]
    {ready}
---
apiVersion: v1
kind: Pod
metadata: {{name: hello, labels: {{app: hello}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {hello}
    ports: [{{containerPort: 8080}}]
    {ready}
---
apiVersion: v1
kind: Service
metadata: {{name: httpd}}
spec:
  selector: {{app: httpd}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hello}}
spec:
  selector: {{app: hello}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

/// A `kubectl port-forward` running in the background, and the local port it took.
struct PortForward {
    child: Child,
    port: u16,
    /// Its output, read on: kubectl dies of SIGPIPE when it says "Handling connection" to a closed pipe.
    _stdout: std::sync::mpsc::Receiver<String>,
}

impl PortForward {
    /// Starts `kubectl port-forward TARGET 0:REMOTE` and waits for its "Forwarding from 127.0.0.1:PORT".
    fn start(cluster: &Cluster, target: &str, remote: u16, env: &[(&str, &str)]) -> Self {
        let ports = format!("0:{remote}");
        let mut command = cluster.kubectl_command(&["port-forward", target, &ports]);
        command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("kubectl runs");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let port = loop {
            let Ok(line) = stdout.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                let out = child.wait_with_output().expect("kubectl ends");
                panic!("kubectl port-forward {target} printed no address: {}", String::from_utf8_lossy(&out.stderr));
            };
            if let Some(address) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break address.split_whitespace().next().and_then(|p| p.parse().ok()).expect("a local port");
            }
        };
        PortForward { child, port, _stdout: stdout }
    }

    /// Waits for kubectl to exit by itself; its exit success and what it printed on stderr.
    fn exit(mut self) -> (bool, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("kubectl's status") {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "kubectl port-forward did not exit");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        self.child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("kubectl's stderr");
        (status.success(), stderr)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to the forwarded port.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("kubectl accepts");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

/// Sends a GET on `stream` and reads the answer until the server closes: status line to body.
fn get(mut stream: TcpStream) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer, then the end of the connection");
    answer
}

fn assert_answered(answer: &str, body: &str) {
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains(body), "{answer:?}");
}

pub fn kubectl_port_forward_reaches_pods_and_services() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "forwarder", &["--pod-network", "cni"]).unwrap();
    let busybox = registry.push_busybox("tools/busybox");
    let hello = registry.push_sample("http-hello");
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest(&agent.name, &busybox, &hello));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let timeout = format!("--timeout={}s", TIMEOUT.as_secs());
    let out = cluster.kubectl(&["wait", "--for=condition=Ready", "pod/httpd", "pod/hello", &timeout]);
    assert!(out.status.success(), "pods ready: {}\nagent log:\n{}", String::from_utf8_lossy(&out.stderr), agent.log());

    // A container pod: requests one after the other, each a connection of its own over one forward.
    let forward = PortForward::start(&cluster, "pod/httpd", 8080, &[]);
    for _ in 0..5 {
        assert_answered(&get(connect(forward.port)), "hello-from-httpd");
    }
    // Two connections open at once: the second is answered while the first waits, then the first.
    let (first, second) = (connect(forward.port), connect(forward.port));
    assert_answered(&get(second), "hello-from-httpd");
    assert_answered(&get(first), "hello-from-httpd");
    drop(forward);

    // The wasm pod through its Service: kubectl picks the pod by the selector and the service port's target.
    let forward = PortForward::start(&cluster, "svc/hello", 80, &[]);
    for _ in 0..3 {
        assert_answered(&get(connect(forward.port)), "hello from skiff");
    }
    drop(forward);

    // Plain SPDY, kubectl's fallback (and older kubectls' only way), through the httpd's Service.
    let forward = PortForward::start(&cluster, "svc/httpd", 80, &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]);
    let (first, second) = (connect(forward.port), connect(forward.port));
    assert_answered(&get(second), "hello-from-httpd");
    assert_answered(&get(first), "hello-from-httpd");
    drop(forward);

    // WebSocket channels, as the Python client (and kube-rs) speak port-forward.
    let script = cluster.write_file("portforward.py", PYTHON_PORT_FORWARD);
    let python = |pod: &str, port: &str| {
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(cluster.kubeconfig())
            .args([pod, port])
            .output()
            .expect("Debian's python3 runs (scripts/setup installs python3-kubernetes for it)");
        assert!(out.status.success(), "python portforward to {pod}:{port}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answer = python("httpd", "8080");
    assert_answered(&answer, "hello-from-httpd");
    assert!(answer.trim_end().ends_with("error: None"), "{answer}");
    assert_answered(&python("hello", "8080"), "hello from skiff");
    let refused = python("httpd", "9999");
    assert!(refused.contains("error forwarding port 9999 to pod default/httpd"), "{refused}");

    // A port nothing listens on: the connection ends with nothing, and kubectl reports the agent's error
    // and gives up, as with a kubelet.
    let forward = PortForward::start(&cluster, "pod/httpd", 9999, &[]);
    let mut stream = connect(forward.port);
    // kubectl may close the connection before the request is sent, or unread.
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.is_empty(), "nothing answers on port 9999: {:?}", String::from_utf8_lossy(&answer));
    let (success, stderr) = forward.exit();
    assert!(!success, "kubectl fails: {stderr}");
    assert!(
        stderr.contains("error forwarding port 9999 to pod default/httpd") && stderr.contains("onnection refused"),
        "kubectl reports why: {stderr}"
    );

    // The agent goes on forwarding.
    let forward = PortForward::start(&cluster, "pod/hello", 8080, &[]);
    assert_answered(&get(connect(forward.port)), "hello from skiff");
}
