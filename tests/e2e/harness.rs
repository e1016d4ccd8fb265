//! Starts real parts for end-to-end tests: the `skiff` binary, an etcd from Debian's etcd-server, and runs
//! the real kubectl against them. Every child is killed when its guard drops, so a failing test leaves no
//! process behind.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The store backends every scenario runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Etcd,
}

/// Whether this process runs as root (containers and pod networks need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not ready after {timeout:?}")
}

/// Writes a CA (`ca.crt`), a server's certificate for 127.0.0.1 and localhost (`server.crt`, `server.key`) and
/// a client certificate (`client.crt`, `client.key`) into `dir`.
fn write_test_pki(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "etcd-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    // etcd's gRPC gateway dials etcd itself with the serving certificate, so that one is a client's too.
    let server = (vec!["127.0.0.1".to_owned(), "localhost".to_owned()], vec![ExtendedKeyUsagePurpose::ServerAuth]);
    for (name, (names, mut usages)) in [("server", server), ("client", (Vec::new(), Vec::new()))] {
        usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// A real etcd on loopback with its own ports and data directory.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> anyhow::Result<Self> {
        Self::spawn(false)
    }

    /// An etcd that speaks only TLS and admits only clients with a certificate from its CA
    /// (`--client-cert-auth`); [`Etcd::file`] names the CA (`ca.crt`) and a client's `client.crt` and
    /// `client.key`.
    pub fn start_with_client_certificates() -> anyhow::Result<Self> {
        Self::spawn(true)
    }

    /// A file in this etcd's directory, such as its TLS files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("127.0.0.1:{client}");
        let scheme = if tls { "https" } else { "http" };
        let mut command = Command::new("etcd");
        if tls {
            write_test_pki(dir.path())?;
            command.args(["--client-cert-auth", "--trusted-ca-file"]).arg(dir.path().join("ca.crt"));
            command.arg("--cert-file").arg(dir.path().join("server.crt"));
            command.arg("--key-file").arg(dir.path().join("server.key"));
        }
        let child = command
            .args(["--name", "skiff-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg(format!("--listen-client-urls={scheme}://{endpoint}"))
            .arg(format!("--advertise-client-urls={scheme}://{endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=skiff-test=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start etcd (Debian package etcd-server; scripts/setup installs it)")?;
        let etcd = Etcd { child, endpoint, dir };
        wait_until("etcd", Duration::from_secs(20), || std::net::TcpStream::connect(&etcd.endpoint).is_ok())?;
        Ok(etcd)
    }
}

/// A real etcd cluster of several members on loopback, for HA tests.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(size: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("member{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("127.0.0.1:{client}");
            let child = Command::new("etcd")
                .args(["--name", &format!("member{i}"), "--data-dir"])
                .arg(dir.path().join(format!("member{i}")))
                .arg(format!("--listen-client-urls=http://{endpoint}"))
                .arg(format!("--advertise-client-urls=http://{endpoint}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-cluster={initial}"))
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "skiff-test"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start etcd (Debian package etcd-server; scripts/setup installs it)")?;
            members.push(Some(child));
            endpoints.push(endpoint);
        }
        let cluster = EtcdCluster { members, endpoints, _dir: dir };
        wait_until("etcd cluster", Duration::from_secs(30), || {
            // etcd answers /health with true once the member sees a leader.
            cluster.endpoints.iter().all(|e| {
                reqwest::blocking::get(format!("http://{e}/health"))
                    .and_then(|r| r.text())
                    .is_ok_and(|body| body.contains(r#""health":"true""#))
            })
        })?;
        Ok(cluster)
    }

    /// The `--store` URL naming every member.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `skiff server` and the kubectl environment that talks to it.
pub struct Cluster {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: String,
    store: String,
    /// More `skiff server` flags, given at every launch.
    flags: Vec<String>,
    _etcd: Option<Etcd>,
}

impl Cluster {
    pub fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_listening(backend, std::net::Ipv4Addr::LOCALHOST)
    }

    /// A server listening on `ip` (a test network's bridge address, which agents in namespaces reach).
    pub fn start_listening(backend: Backend, ip: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_listening_with(backend, ip, &[])
    }

    /// [`Cluster::start`] with more `skiff server` flags.
    pub fn start_with(backend: Backend, flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_listening_with(backend, std::net::Ipv4Addr::LOCALHOST, flags)
    }

    fn start_listening_with(backend: Backend, ip: std::net::Ipv4Addr, flags: &[&str]) -> anyhow::Result<Self> {
        let etcd = match backend {
            Backend::Embedded => None,
            Backend::Etcd => Some(Etcd::start()?),
        };
        let store = etcd.as_ref().map(|e| format!("etcd://{}", e.endpoint)).unwrap_or_else(|| "embedded".into());
        let mut cluster = Cluster {
            child: None,
            dir: tempfile::tempdir()?,
            listen: format!("{ip}:{}", free_port()),
            store,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            _etcd: etcd,
        };
        cluster.launch()?;
        Ok(cluster)
    }

    /// A server on a store that outlives it (`etcd://...`), e.g. one of several servers sharing an etcd.
    pub fn start_on(store: String) -> anyhow::Result<Self> {
        Self::start_on_with(store, &[])
    }

    /// [`Cluster::start_on`] with more `skiff server` flags.
    pub fn start_on_with(store: String, flags: &[&str]) -> anyhow::Result<Self> {
        let listen = format!("127.0.0.1:{}", free_port());
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut cluster = Cluster { child: None, dir: tempfile::tempdir()?, listen, store, flags, _etcd: None };
        cluster.launch()?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    /// Starts the server process (again, after a crash) and waits until it answers.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--listen", &self.listen, "--store", &self.store, "--data-dir"])
            .arg(self.data_dir())
            .args(&self.flags)
            .env("RUST_LOG", "info,skiff_apiserver=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start skiff")?;
        self.child = Some(child);
        wait_until("skiff server", Duration::from_secs(30), || {
            self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        })
        .with_context(|| self.server_log())
    }

    /// Stops the server (SIGTERM) and starts it again with `flags` instead of the flags it had.
    pub fn restart_with(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        self.terminate()?;
        self.flags = flags.iter().map(|f| f.to_string()).collect();
        self.launch()
    }

    /// The etcd the server stores in, for a look at what is stored; none on the embedded store.
    pub fn etcd_endpoint(&self) -> Option<&str> {
        self._etcd.as_ref().map(|etcd| etcd.endpoint.as_str())
    }

    /// SIGKILL: no drain, no flush, what a power cut does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("server not running")?;
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        Ok(child.wait()?)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            // A private HOME keeps kubectl's discovery cache per test cluster.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        command
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("kubectl runs")
    }

    /// Runs kubectl and returns stdout, failing with stderr and the server log when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {} failed:\nstdout: {stdout}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {} should fail but printed {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `kubectl apply -f -` (or any command reading a manifest) with `manifest` on stdin.
    pub fn with_stdin(&self, args: &[&str], manifest: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write manifest");
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Creates pod `name` bound to `node`; `spec` is YAML lines under `spec:` (indented by two spaces).
    pub fn create_pod(&self, name: &str, node: &str, spec: &str) {
        let manifest =
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{spec}");
        let out = self.with_stdin(&["apply", "-f", "-"], &manifest);
        assert!(out.status.success(), "{}\n{manifest}", String::from_utf8_lossy(&out.stderr));
    }

    /// Pod `name` as JSON.
    pub fn pod(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["get", "pod", name, "-o", "json"])).expect("a pod as JSON")
    }

    /// Waits until pod `name` is in `phase`; a timeout fails with its status and the agent's log.
    pub fn wait_pod_phase(&self, name: &str, phase: &str, timeout: Duration, agent: &Agent) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let pod = self.pod(name);
            if pod["status"]["phase"] == phase {
                return pod;
            }
            assert!(
                started.elapsed() < timeout,
                "pod {name} not {phase} after {timeout:?}; status: {}\nagent log:\n{}",
                pod["status"],
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A file in the cluster's temporary directory.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// The CA, token and URL for raw HTTPS requests.
    pub fn http(&self) -> Http {
        let dir = self.data_dir();
        Http::new(&dir, &format!("https://{}", self.listen))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw HTTPS client with the admin token, for what kubectl cannot send (bad bodies, stale versions).
pub struct Http {
    pub client: reqwest::blocking::Client,
    pub base: String,
    pub token: String,
}

impl Http {
    fn new(data_dir: &Path, base: &str) -> Self {
        let ca = std::fs::read(data_dir.join("ca.crt")).expect("ca.crt");
        let token = std::fs::read_to_string(data_dir.join("admin-token")).expect("admin-token");
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
            .build()
            .expect("HTTP client");
        Http { client, base: base.to_string(), token: token.trim().to_string() }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }
}

/// Debian's docker-registry (distribution 2.8) on a loopback port of its own.
pub struct Registry {
    child: Child,
    pub address: String,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("data");
        Self::spawn(dir, &storage, "")
    }

    /// The same images served again, only over TLS and only to clients with a certificate from its CA:
    /// [`Registry::file`] names the CA (`ca.crt`) and a client's `client.crt` and `client.key`.
    pub fn with_client_certificates(&self) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        write_test_pki(dir.path())?;
        let file = |name: &str| dir.path().join(name).display().to_string();
        let tls = format!(
            ", tls: {{certificate: {}, key: {}, clientcas: [{}]}}",
            file("server.crt"),
            file("server.key"),
            file("ca.crt")
        );
        Self::spawn(dir, &self.dir.path().join("data"), &tls)
    }

    /// A file in this registry's directory, such as its TLS files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts docker-registry with its config in `dir`, its images in `storage`, and `http` added to its
    /// `http` section.
    fn spawn(dir: tempfile::TempDir, storage: &Path, http: &str) -> anyhow::Result<Self> {
        let address = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog: {{accesslog: {{disabled: true}}, level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {address}{http}}}\n",
            storage.display()
        );
        std::fs::write(dir.path().join("config.yml"), config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start docker-registry (Debian package docker-registry; scripts/setup installs it)")?;
        let registry = Registry { child, address, dir };
        wait_until("registry", Duration::from_secs(20), || std::net::TcpStream::connect(&registry.address).is_ok())?;
        Ok(registry)
    }

    /// Publishes a sample module with `skiff image push`; returns the image reference.
    pub fn push_sample(&self, sample: &str) -> String {
        let reference = format!("{}/samples/{sample}:latest", self.address);
        let file = samples_dir().join(format!("{sample}.wasm"));
        let output = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["image", "push"])
            .arg(&file)
            .arg(&reference)
            .output()
            .unwrap();
        assert!(output.status.success(), "skiff image push: {}", String::from_utf8_lossy(&output.stderr));
        reference
    }

    /// Uploads `bytes` as a CNCF wasm artifact by hand, bypassing skiff's own checks (for bad modules).
    pub fn push_raw_artifact(&self, name: &str, bytes: &[u8]) -> String {
        let config = br#"{"architecture":"wasm","os":"wasip1","layerDigests":[]}"#;
        self.push_image(name, "application/vnd.wasm.config.v0+json", config, "application/wasm", bytes)
    }

    /// Builds a busybox OCI image from Debian's busybox-static (`/bin/busybox` and sh, echo, sleep, cat,
    /// env links) and pushes it: a plain container image for the OCI shim.
    pub fn push_busybox(&self, name: &str) -> String {
        self.push_busybox_with(name, serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]}), &[])
    }

    /// A busybox image with its own image config `exec` (`Entrypoint`, `Cmd`, `User`, ...) and extra
    /// `files` (path, contents) such as `etc/passwd`.
    pub fn push_busybox_with(&self, name: &str, exec: serde_json::Value, files: &[(&str, &str)]) -> String {
        use sha2::Digest;
        let compressed = busybox_layer(files);
        let mut uncompressed = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut uncompressed).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": exec,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(sha2::Sha256::digest(&uncompressed)))]},
        });
        let config = config.to_string().into_bytes();
        self.push_image(
            name,
            "application/vnd.oci.image.config.v1+json",
            &config,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &compressed,
        )
    }

    /// Uploads a one-layer image by hand over the registry's HTTP API; returns its reference.
    fn push_image(&self, name: &str, config_type: &str, config: &[u8], layer_type: &str, layer: &[u8]) -> String {
        use sha2::Digest;
        let client = reqwest::blocking::Client::new();
        let base = format!("http://{}", self.address);
        let digest = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
        for blob in [layer, config] {
            let upload = client.post(format!("{base}/v2/{name}/blobs/uploads/")).send().unwrap();
            let location = upload.headers()["location"].to_str().unwrap().to_string();
            let location = if location.starts_with("http") { location } else { format!("{base}{location}") };
            let separator = if location.contains('?') { '&' } else { '?' };
            let put =
                client.put(format!("{location}{separator}digest={}", digest(blob))).body(blob.to_vec()).send().unwrap();
            assert!(put.status().is_success(), "blob upload: {}", put.status());
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": digest(config), "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": digest(layer), "size": layer.len()}],
        });
        let put = client
            .put(format!("{base}/v2/{name}/manifests/latest"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_string())
            .send()
            .unwrap();
        assert!(put.status().is_success(), "manifest upload: {}", put.status());
        format!("{}/{name}:latest", self.address)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample modules, built once per test run by scripts/build-samples.
pub fn samples_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let output = Command::new(root.join("scripts/build-samples"))
                .current_dir(root)
                .output()
                .expect("scripts/build-samples runs");
            assert!(
                output.status.success(),
                "scripts/build-samples failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            root.join("samples/out")
        })
        .clone()
}

/// A `skiff agent` process joined to a cluster, with short crash-loop back-offs for tests.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    /// Its data dir and log. Its own, not in the cluster's directory: the agent keeps a tmpfs mounted in its
    /// data dir while it runs, so a directory holding it can only be removed once the agent is gone, and a
    /// test's guards may drop in any order.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    server: String,
    token_file: PathBuf,
    log: PathBuf,
    flags: Vec<String>,
    /// The unprivileged user the agent runs as; root when `None`.
    user: Option<u32>,
    /// The address it reports and serves on.
    pub node_ip: String,
    /// The network namespace (a file under /run/netns) it runs in: a node of its own on a test network.
    netns: Option<String>,
}

impl Agent {
    /// Joins `cluster` as node `name`, with extra `skiff agent` flags.
    pub fn join_with(cluster: &Cluster, name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        Self::join_servers(cluster, &[cluster], name, flags)
    }

    /// Joins through several servers of one cluster (`--server URL,URL,...`); `cluster` is used for kubectl.
    pub fn join_servers(cluster: &Cluster, servers: &[&Cluster], name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self::unlaunched(cluster, servers, name, flags)?;
        agent.launch(cluster)?;
        Ok(agent)
    }

    /// Joins `cluster` as node `name` with `join_token` (one `skiff token create` printed) instead of the
    /// server's shared one, with extra `skiff agent` flags.
    pub fn join_with_token(cluster: &Cluster, name: &str, join_token: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self::unlaunched(cluster, &[cluster], name, flags)?;
        agent.token_file = agent.dir.path().join("join-token");
        std::fs::write(&agent.token_file, join_token)?;
        agent.launch(cluster)?;
        Ok(agent)
    }

    /// Joins `cluster` as node `name` running as the unprivileged user `uid` and group `uid`, with a data
    /// dir and a copy of the join token of its own, as on an edge box where the agent only runs wasm.
    pub fn join_as_user(cluster: &Cluster, name: &str, uid: u32) -> anyhow::Result<Self> {
        use std::os::unix::fs::{PermissionsExt, chown};
        let mut agent = Self::unlaunched(cluster, &[cluster], name, &[])?;
        // The temporary directory is root's alone; the agent must reach its data dir inside it.
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o711))?;
        std::fs::create_dir(&agent.data_dir)?;
        let token_file = agent.data_dir.join("node-token");
        std::fs::copy(&agent.token_file, &token_file)?;
        chown(&agent.data_dir, Some(uid), Some(uid))?;
        chown(&token_file, Some(uid), Some(uid))?;
        agent.token_file = token_file;
        agent.user = Some(uid);
        agent.launch(cluster)?;
        Ok(agent)
    }

    /// Node `name` of `cluster` as root; not started yet.
    fn unlaunched(cluster: &Cluster, servers: &[&Cluster], name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Agent {
            child: None,
            name: name.to_string(),
            server: servers.iter().map(|s| format!("https://{}", s.listen)).collect::<Vec<_>>().join(","),
            token_file: cluster.data_dir().join("node-token"),
            log: dir.path().join(format!("agent-{name}.log")),
            data_dir: dir.path().join(format!("agent-{name}")),
            dir,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            user: None,
            node_ip: "127.0.0.1".into(),
            netns: None,
        })
    }

    /// Joins `cluster` as node `name` from inside the network namespace `netns`, where its address is
    /// `ip`: a node of its own, as on another machine.
    pub fn join_in(
        cluster: &Cluster,
        name: &str,
        netns: &str,
        ip: std::net::Ipv4Addr,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let mut agent = Self::unlaunched(cluster, &[cluster], name, flags)?;
        agent.node_ip = ip.to_string();
        agent.netns = Some(netns.to_string());
        agent.launch(cluster)?;
        Ok(agent)
    }

    pub fn launch(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        // `nsenter --net`, not `ip netns exec`, which remounts /sys and hides the cgroups from the agent.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{netns}")).arg(env!("CARGO_BIN_EXE_skiff"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_skiff")),
        };
        command
            .args([
                "agent",
                "--server",
                &self.server,
                "--name",
                &self.name,
                "--node-ip",
                &self.node_ip,
                "--kubelet-port",
                "0",
            ])
            .args(["--backoff-initial", "1s", "--backoff-max", "8s"])
            // Agents share the host's ports 80 and 443: only a test that asks for ingress ports gets them.
            .args(match self.flags.iter().any(|flag| flag.starts_with("--ingress-")) {
                true => &[][..],
                false => &["--ingress-http-port", "0", "--ingress-https-port", "0"][..],
            })
            .args(&self.flags)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("RUST_LOG", "info,skiff_node=debug")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(uid) = self.user {
            command.uid(uid).gid(uid);
        }
        self.child = Some(command.spawn().context("cannot start skiff agent")?);
        let name = self.name.clone();
        wait_until("node Ready", Duration::from_secs(30), || {
            let out = cluster.kubectl(&[
                "get",
                "node",
                &name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            String::from_utf8_lossy(&out.stdout) == "True"
        })
        .with_context(|| self.log())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the agent to finish its shutdown.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        stop_containers(&self.data_dir.join("oci"));
        // A data dir left behind keeps its pod range claimed on this machine for good (see the network's
        // claims), so failing to remove it fails the test, unless it is failing already.
        let removed = std::fs::remove_dir_all(self.dir.path());
        if !std::thread::panicking() {
            removed.unwrap_or_else(|e| panic!("cannot remove agent {}'s directory: {e}", self.name));
        }
    }
}

/// OCI containers outlive a killed agent by design (a restarted agent adopts them), so a test's agent takes
/// the containers it leaves along when it is dropped: their processes, root mounts and cgroups, and the
/// shim's tmpfs for their runtime files.
fn stop_containers(state_dir: &Path) {
    let run_dir = state_dir.join("run");
    for entry in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let in_cgroup = |pid: i64| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&format!("/skiff/{id}")))
        };
        let state = entry.path().join("state").join(&id).join("state.json");
        let pid = std::fs::read(state)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|state| state["pid"].as_i64());
        if let Some(pid) = pid.filter(|pid| in_cgroup(*pid)) {
            // The init of a pid namespace takes every process of the container with it.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            let _ = wait_until("container ended", Duration::from_secs(5), || !in_cgroup(pid));
        }
        let _ = Command::new("umount").arg("-l").arg(entry.path().join("rootfs")).stderr(Stdio::null()).status();
        for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(controller.path().join("skiff").join(&id));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup/skiff").join(&id));
    }
    let _ = Command::new("umount").arg("-l").arg(&run_dir).stderr(Stdio::null()).status();
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
pub fn process_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|line| line.strip_prefix(&format!("{field}:"))).unwrap_or_default();
    line.trim().trim_end_matches("kB").trim().parse().unwrap_or_else(|_| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `check` until it returns Some, or fails with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines a child prints, read on a thread of their own so a test can wait for them with a timeout.
pub fn lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[path = "busybox.rs"]
mod busybox;
pub use busybox::busybox_layer;
