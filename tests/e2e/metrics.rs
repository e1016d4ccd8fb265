//! Metrics end to end: `kubectl top` against pods that burn CPU or hold memory (a container and a wasm
//! guest, each beside an idle one), the custom metrics API, and the Prometheus endpoints of the server and
//! the agent scraped by a real Prometheus on loopback, which must present a client certificate.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, free_port};
use crate::rbac::mint_user;

/// `kubectl top pods` rows: name → (millicores, MiB).
fn top_pods(cluster: &Cluster) -> HashMap<String, (u64, u64)> {
    let out = cluster.kubectl(&["top", "pods", "--no-headers"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, cpu, memory] = fields.as_slice() else { return None };
            let cpu =
                cpu.strip_suffix('m').map_or_else(|| cpu.parse::<u64>().ok().map(|c| c * 1000), |m| m.parse().ok())?;
            let memory = memory.strip_suffix("Mi")?.parse().ok()?;
            Some((name.to_string(), (cpu, memory)))
        })
        .collect()
}

/// A client certificate for Prometheus as user `prometheus` in `system:monitoring` (which may read the
/// server's `/metrics`), allowed the kubelet's metrics as Prometheus' own ClusterRole allows them: PEM files
/// in `dir`.
fn prometheus_identity(cluster: &Cluster, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kubeconfig = mint_user(cluster, "prometheus", Some("system:monitoring"));
    cluster.ok(&["create", "clusterrole", "kubelet-metrics", "--verb=get", "--resource=nodes/metrics,nodes/stats"]);
    cluster.ok(&["create", "clusterrolebinding", "prometheus", "--clusterrole=kubelet-metrics", "--user=prometheus"]);
    let field = |name: &str| {
        let jsonpath = format!("jsonpath={{.users[0].user.{name}}}");
        let mut command = cluster.kubectl_command(&["config", "view", "--raw", "-o", &jsonpath]);
        let out = command.env("KUBECONFIG", &kubeconfig).output().expect("kubectl runs");
        base64::engine::general_purpose::STANDARD.decode(out.stdout.trim_ascii()).expect("base64 PEM")
    };
    let (cert, key) = (dir.join("prometheus.crt"), dir.join("prometheus.key"));
    std::fs::write(&cert, field("client-certificate-data")).unwrap();
    std::fs::write(&key, field("client-key-data")).unwrap();
    (cert, key)
}

/// A Prometheus on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes the server's `/metrics` and the agent's `/metrics` and `/metrics/resource` every second.
    fn start(cluster: &Cluster, server: &str, agent: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = prometheus_identity(cluster, dir.path());
        let ca = cluster.data_dir().join("ca.crt");
        let job = |name: &str, target: &str, path: &str| {
            format!(
                "- job_name: {name}\n  scheme: https\n  metrics_path: {path}\n  tls_config: {{ca_file: {}, cert_file: {}, key_file: {}}}\n  static_configs: [{{targets: ['{target}']}}]\n",
                ca.display(),
                cert.display(),
                key.display()
            )
        };
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n{}{}{}",
            job("apiserver", server, "/metrics"),
            job("agent", agent, "/metrics"),
            job("resource", agent, "/metrics/resource")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs (scripts/setup installs Debian's prometheus)");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<Value> {
        let response = reqwest::blocking::get(format!("{}{path}", self.url)).ok()?;
        response.json().ok()
    }

    /// The value of a PromQL query with one result.
    fn value(&self, query: &str) -> Option<f64> {
        let answer = self.get(&format!("/api/v1/query?query={}", urlencode(query)))?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn top_shows_what_pods_use_and_prometheus_scrapes_every_endpoint() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start_with(Backend::Embedded, &["--metric-resolution", "2s"]).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &[]).unwrap();
    let hello = registry.push_sample("hello");
    let http = registry.push_sample("http-hello");
    let busybox = registry.push_busybox("tools/busybox");
    let pod = |name: &str, container: &str| {
        let spec = format!("  terminationGracePeriodSeconds: 1\n  containers:\n{container}");
        cluster.create_pod(name, &agent.name, &spec);
    };
    pod(
        "wasm-busy",
        &format!(
            "  - name: spin\n    image: {hello}\n    env: [{{name: ALLOC_MB, value: \"64\"}}, {{name: SPIN, value: \"1\"}}]\n    resources: {{limits: {{cpu: 300m, memory: 128Mi}}}}\n"
        ),
    );
    let web_port = free_port();
    pod("wasm-idle", &format!("  - name: web\n    image: {http}\n    ports: [{{containerPort: {web_port}}}]\n"));
    pod(
        "box-busy",
        &format!(
            "  - name: spin\n    image: {busybox}\n    command: [sh, -c, 'while :; do :; done']\n    resources: {{limits: {{cpu: 500m}}}}\n"
        ),
    );
    // Placed by the scheduler, which counts its attempt.
    let idle = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box-idle\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: idle\n    image: {busybox}\n    command: [sleep, '3600']\n"
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &idle);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["wasm-busy", "wasm-idle", "box-busy", "box-idle"] {
        cluster.wait_pod_phase(name, "Running", Duration::from_secs(60), &agent);
    }

    // The metrics API shows each pod near what it was allowed to burn, the idle ones near nothing, and the
    // guest's 64 MiB. A few resolutions in, the windows no longer include start-up.
    let top = eventually("kubectl top pods to show steady figures", Duration::from_secs(90), || {
        let top = top_pods(&cluster);
        let cpu = |name: &str| top.get(name).map(|(cpu, _)| *cpu);
        let steady = cpu("box-busy").is_some_and(|c| (350..=650).contains(&c))
            && cpu("wasm-busy").is_some_and(|c| (200..=450).contains(&c))
            && cpu("box-idle").is_some_and(|c| c < 50)
            && cpu("wasm-idle").is_some_and(|c| c < 50);
        steady.then_some(top)
    });
    assert!(top["wasm-busy"].1 >= 64, "the guest allocated 64 MiB: {top:?}");
    let containers = cluster.ok(&["top", "pods", "box-busy", "--containers", "--no-headers"]);
    assert!(containers.starts_with("box-busy ") && containers.contains(" spin "), "{containers}");
    let all = cluster.ok(&["top", "pods", "-A"]);
    assert!(all.lines().next().is_some_and(|h| h.starts_with("NAMESPACE")), "{all}");
    let nodes = cluster.ok(&["top", "nodes", "--no-headers"]);
    let row: Vec<&str> = nodes.lines().next().unwrap_or_default().split_whitespace().collect();
    assert!(row.len() == 5 && row[0] == "node-1" && row[2].ends_with('%') && row[3].ends_with("Mi"), "{nodes}");
    let raw: Value = serde_json::from_str(&cluster.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/box-busy",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "PodMetrics");
    assert!(raw["window"].as_str().is_some_and(|w| w.ends_with('s')), "{raw}");
    let missing = cluster.fails(&["top", "pod", "nothing"]);
    assert!(missing.contains(r#"podmetrics.metrics.k8s.io "default/nothing" not found"#), "{missing}");
    // The wasi:http guest's request rate, as the custom metrics API serves it to an HPA; other pods have
    // none.
    let ip = cluster.pod("wasm-idle")["status"]["podIP"].as_str().unwrap().to_string();
    let client = reqwest::blocking::Client::new();
    let rate_path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_per_second";
    let rates = eventually("a request rate for the wasi:http pod", Duration::from_secs(30), || {
        for _ in 0..20 {
            client.get(format!("http://{ip}:{web_port}/")).send().ok()?;
        }
        let rates: Value = serde_json::from_str(&cluster.ok(&["get", "--raw", rate_path])).ok()?;
        let positive = rates["items"][0]["value"].as_str().is_some_and(|v| v != "0");
        positive.then_some(rates)
    });
    assert_eq!(rates["kind"], "MetricValueList");
    let items = rates["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the wasi:http pod counts requests: {rates}");
    assert_eq!(items[0]["describedObject"]["name"], "wasm-idle");
    assert_eq!(items[0]["metric"]["name"], "http_requests_per_second");

    // The Prometheus endpoints need a caller the server knows.
    let node: Value = serde_json::from_str(&cluster.ok(&["get", "node", "node-1", "-o", "json"])).unwrap();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap();
    let agent_address = format!("{}:{port}", agent.node_ip);
    let server_address = cluster.listen.clone();
    let anonymous = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    for url in [format!("https://{server_address}/metrics"), format!("https://{agent_address}/metrics/resource")] {
        let status = anonymous.get(&url).send().unwrap().status();
        assert_eq!(status.as_u16(), 401, "{url} answered an anonymous caller");
    }

    // A real Prometheus scrapes all three and finds the names operators chart.
    let prometheus = Prometheus::start(&cluster, &server_address, &agent_address);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let targets = loop {
        let targets = prometheus.get("/api/v1/targets").unwrap_or_default();
        let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        if active.len() == 3 && active.iter().all(|t| t["health"] == "up") {
            break active;
        }
        assert!(std::time::Instant::now() < deadline, "targets not all up: {targets}\n{}", prometheus.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(targets.iter().all(|t| t["lastError"] == ""), "{targets:?}");
    // Each query until its value is as expected (a rate needs a few scrapes); the last value seen otherwise.
    let expect = |query: &str, ok: &dyn Fn(f64) -> bool| {
        let last = std::cell::Cell::new(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            last.set(prometheus.value(query));
            if last.get().is_some_and(ok) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{query} is {:?} in Prometheus", last.get());
    };
    expect("kubelet_running_pods", &|v| v >= 4.0);
    expect(r#"skiff_wasm_instances{pod="wasm-busy"}"#, &|v| v == 1.0);
    expect(r#"container_memory_working_set_bytes{pod="wasm-busy"}"#, &|v| v >= (64 << 20) as f64);
    expect(r#"rate(container_cpu_usage_seconds_total{pod="box-busy"}[5s])"#, &|v| v > 0.3);
    expect(r#"sum(scheduler_schedule_attempts_total{result="scheduled"})"#, &|v| v >= 1.0);
    expect(r#"skiff_wasm_http_requests_total{pod="wasm-idle"}"#, &|v| v >= 20.0);
    expect("kubelet_pod_start_duration_seconds_count", &|v| v >= 4.0);
    // Requests are counted as they happen.
    let query = r#"sum(apiserver_request_total{resource="configmaps",verb="POST"})"#;
    let before = prometheus.value(query).unwrap_or(0.0);
    for i in 0..5 {
        cluster.ok(&["create", "configmap", &format!("counted-{i}")]);
    }
    eventually("the five creates to be counted", Duration::from_secs(30), || {
        (prometheus.value(query)? >= before + 5.0).then_some(())
    });
}

/// A Deployment of the http-hello sample (`env` as YAML flow pairs) with a Service and an Ingress for
/// `host`. No readiness probe: a wasi:http guest listens once it runs, and a probe's requests would burn
/// CPU too.
fn served(name: &str, host: &str, image: &str, env: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
        env: [{env}]
        resources: {{requests: {{cpu: 20m}}, limits: {{cpu: 500m}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  rules:
  - host: {host}
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}]
"#
    )
}

/// Clients sending requests for `host` to the ingress on `port` until stopped: (answered, failed).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, u64)>>,
}

impl Load {
    /// `clients` closed-loop clients, each pausing `pause` between requests.
    fn start(port: u16, host: &str, clients: usize, pause: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, host) = (stop.clone(), host.to_string());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
                    let (mut answered, mut failed) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sent = client.get(format!("http://127.0.0.1:{port}/")).header("host", &host).send();
                        match sent {
                            Ok(response) if response.status().is_success() => answered += 1,
                            _ => failed += 1,
                        }
                        std::thread::sleep(pause);
                    }
                    (answered, failed)
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |(a, f), (x, y)| (a + x, f + y))
    }
}

fn replicas(cluster: &Cluster, name: &str) -> i64 {
    cluster.ok(&["get", "deployment", name, "-o", "jsonpath={.spec.replicas}"]).parse().unwrap_or(0)
}

/// `kubectl autoscale` on CPU with the CPU-burning sample, and an autoscaling/v2 HPA on the pods'
/// `http_requests_per_second`, both behind an Ingress host, under load and after it: out within the sync
/// period and start-up, back to one after the (shortened) stabilization window, no request failing.
pub fn hpas_follow_cpu_and_request_rate_under_load() {
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start_with(Backend::Embedded, &["--metric-resolution", "2s"]).unwrap();
    let port = free_port();
    let flags = ["--ingress-http-port", &port.to_string(), "--ingress-https-port", "0"];
    let _agent = Agent::join_with(&cluster, "node-1", &flags).unwrap();
    let http = registry.push_sample("http-hello");
    for (name, env) in [("burn", "{name: BURN_MS, value: \"20\"}"), ("web", "{name: GREETING, value: hi}")] {
        let out = cluster.with_stdin(&["apply", "-f", "-"], &served(name, &format!("{name}.test"), &http, env));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for name in ["burn", "web"] {
        cluster.ok(&["rollout", "status", &format!("deployment/{name}"), "--timeout=60s"]);
    }

    // CPU: every request burns 20 ms against a request of 20m.
    cluster.ok(&["autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=10"]);
    let patch = r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":10}}}}"#;
    cluster.ok(&["patch", "hpa.v2.autoscaling", "burn", "--type=merge", "-p", patch]);
    let load = Load::start(port, "burn.test", 4, Duration::ZERO);
    eventually("burn to scale out on CPU", Duration::from_secs(60), || (replicas(&cluster, "burn") > 1).then_some(()));
    let targets = cluster.ok(&["get", "hpa", "burn", "--no-headers"]);
    assert!(targets.contains("cpu: ") && targets.contains("%/50%"), "{targets}");
    let hpa: Value = serde_json::from_str(&cluster.ok(&["get", "hpa", "burn", "-o", "json"])).unwrap();
    let active = hpa["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ScalingActive").unwrap();
    assert_eq!(
        (&active["reason"], &active["message"]),
        (
            &Value::from("ValidMetricFound"),
            &Value::from(
                "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
            )
        ),
        "{hpa}"
    );
    let rescaled = |message: &dyn Fn(&str) -> bool| {
        let events: Value = serde_json::from_str(&cluster.ok(&["get", "events", "-o", "json"])).unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "SuccessfulRescale" && e["message"].as_str().is_some_and(message))
    };
    assert!(rescaled(&|m| m.starts_with("New size: ")
        && m.ends_with("; reason: cpu resource utilization (percentage of request) above target")));
    let (answered, failed) = load.finish();
    assert!(answered > 0 && failed == 0, "{failed} of {} requests failed while scaling out", answered + failed);
    // Every request burns CPU: with the load stopped, nothing is used.
    eventually("burn back to one replica", Duration::from_secs(120), || {
        (replicas(&cluster, "burn") == 1).then_some(())
    });
    assert!(rescaled(&|m| m == "New size: 1; reason: All metrics below target"));
    let described = cluster.ok(&["describe", "hpa", "burn"]);
    assert!(described.contains("SuccessfulRescale"), "{described}");

    // Requests per second, from the runtime's count of the guest's requests.
    let hpa = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Pods
    pods:
      metric: {name: http_requests_per_second}
      target: {type: AverageValue, averageValue: "100"}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 10}
"#;
    let out = cluster.with_stdin(&["apply", "-f", "-"], hpa);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // About 50 requests/s, within one replica's target: the HPA sees the rate and wants one replica.
    let light = Load::start(port, "web.test", 1, Duration::from_millis(20));
    let (current, desired) = eventually("the HPA to read a request rate", Duration::from_secs(60), || {
        let path = "jsonpath={.status.currentMetrics[0].pods.current.averageValue} {.status.desiredReplicas}";
        let read = cluster.ok(&["get", "hpa", "web", "-o", path]);
        let (current, desired) = read.split_once(' ')?;
        (!current.is_empty() && current != "0").then(|| (current.to_string(), desired.to_string()))
    });
    assert_eq!(desired, "1", "{current} requests/s fit one replica");
    assert_eq!(replicas(&cluster, "web"), 1);
    let (answered, failed) = light.finish();
    assert!(answered > 0 && failed == 0, "{failed} of {} requests failed at 50/s", answered + failed);
    // Then as fast as eight clients go (thousands of requests/s): out.
    let load = Load::start(port, "web.test", 8, Duration::ZERO);
    eventually("web to scale out on its request rate", Duration::from_secs(60), || {
        (replicas(&cluster, "web") > 1).then_some(())
    });
    let (answered, failed) = load.finish();
    assert!(answered > 0 && failed == 0, "{failed} of {} requests failed while scaling out", answered + failed);
    let light = Load::start(port, "web.test", 1, Duration::from_millis(200));
    eventually("web back to one replica", Duration::from_secs(120), || (replicas(&cluster, "web") == 1).then_some(()));
    let (answered, failed) = light.finish();
    assert!(answered > 0 && failed == 0, "{failed} of {} requests failed while scaling in", answered + failed);
}
