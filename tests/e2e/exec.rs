//! `kubectl exec` end to end: the real kubectl speaks the WebSocket channel protocol to the API server, which
//! passes the upgrade through to the agent running the pod; commands run inside its OCI containers.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually};

/// A pod with two busybox containers (env, a configMap volume) and a wasm ticker, bound to the agent's node.
fn pod_manifest(node: &str, busybox: &str, ticker: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: hello-from-config
---
apiVersion: v1
kind: Pod
metadata:
  name: box
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  volumes:
  - name: config
    configMap: {{name: settings}}
  containers:
  - name: main
    image: {busybox}
    command: [sleep, "3600"]
    env: [{{name: FOO, value: bar}}]
    volumeMounts: [{{name: config, mountPath: /etc/config}}]
  - name: side
    image: {busybox}
    command: [sleep, "3600"]
    env: [{{name: WHO, value: sidecar}}]
  - name: ticker
    image: {ticker}
    env: [{{name: INTERVAL_MS, value: "1000"}}]
"#
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn kubectl_exec_runs_commands_in_containers() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &[]).unwrap();
    let busybox = registry.push_busybox("tools/busybox");
    let ticker = registry.push_sample("ticker");
    let out = cluster.with_stdin(&["apply", "-f", "-"], &pod_manifest(&agent.name, &busybox, &ticker));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cluster.kubectl(&["wait", "--for=condition=Ready", "pod/box", "--timeout=120s"]);
    assert!(out.status.success(), "pod box ready: {}\nagent log:\n{}", text(&out.stderr), agent.log());

    // The container's environment and its configMap volume; stdout and stderr stay apart.
    let script = "echo $FOO; cat /etc/config/greeting; echo; echo to-stderr >&2";
    let out = cluster.kubectl(&["exec", "box", "-c", "main", "--", "sh", "-c", script]);
    assert!(out.status.success(), "exec: {}\nagent log:\n{}", text(&out.stderr), agent.log());
    assert_eq!(text(&out.stdout), "bar\nhello-from-config\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");

    // kubectl exits with the command's exit code, also after a quiet spell longer than its heartbeat (5 s).
    let out = cluster.kubectl(&["exec", "box", "-c", "main", "--", "sh", "-c", "sleep 11; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("command terminated with exit code 7"), "{}", text(&out.stderr));

    // -c picks the container: the sidecar has its own environment.
    let out = cluster.ok(&["exec", "box", "-c", "side", "--", "sh", "-c", "echo ${WHO}-${FOO:-unset}"]);
    assert_eq!(out, "sidecar-unset\n");

    // -i: piped input reaches the command, and its end closes the command's stdin.
    let out = cluster.with_stdin(&["exec", "-i", "box", "-c", "main", "--", "cat"], "ping\npong\n");
    assert!(out.status.success(), "exec -i: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ping\npong\n");

    // -it on a terminal (kubectl wants one for -t): the command sees a tty, input is echoed back.
    let command = "kubectl exec -it box -c main -- sh -c 'read line; test -t 0 && echo \"tty:$line\"'";
    let mut terminal = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("HOME", cluster.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs");
    // Typed at once: the terminal holds the line until the remote shell reads it. Input stays open until the
    // command ends, as a person's terminal would.
    let mut input = terminal.stdin.take().expect("stdin");
    input.write_all(b"typed\r").expect("type");
    let out = terminal.wait_with_output().expect("script finishes");
    drop(input);
    assert!(out.status.success(), "exec -it: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("tty:typed"), "{}", text(&out.stdout));

    // A wasm container has nothing to exec into: a clear refusal, exit code 1.
    let out = cluster.kubectl(&["exec", "box", "-c", "ticker", "--", "sh"]);
    assert_eq!(out.status.code(), Some(1));
    let refusal = text(&out.stderr);
    assert!(refusal.contains("exec is not supported for wasm containers"), "{refusal}");

    // A command that is not in the image fails to start, with the reason.
    let out = cluster.kubectl(&["exec", "box", "-c", "main", "--", "no-such-command"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no-such-command"), "{}", text(&out.stderr));

    // A container the pod does not have is the server's 400, as from kube-apiserver; so is a plain GET.
    let http = cluster.http();
    let exec = |query: &str| {
        let path = format!("/api/v1/namespaces/default/pods/box/exec?command=true&{query}");
        let response = http.request(reqwest::Method::GET, &path).send().unwrap();
        (response.status().as_u16(), response.json::<serde_json::Value>().unwrap()["message"].clone())
    };
    assert_eq!(exec("container=nope"), (400, "container nope is not valid for pod box".into()));
    let (code, message) = exec("container=main");
    assert_eq!(code, 400);
    assert!(message.as_str().unwrap().starts_with("Upgrade request required"), "{message}");
    let missing = cluster.fails(&["exec", "nothere", "--", "true"]);
    assert!(missing.contains("pods \"nothere\" not found"), "{missing}");

    // After the pod's deletion nothing answers for it.
    cluster.ok(&["delete", "pod", "box", "--timeout=60s"]);
    eventually("the pod is gone", Duration::from_secs(60), || {
        (!cluster.kubectl(&["get", "pod", "box"]).status.success()).then_some(())
    });
    let gone = cluster.fails(&["exec", "box", "-c", "main", "--", "true"]);
    assert!(gone.contains("not found"), "{gone}");
}
