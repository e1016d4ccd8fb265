//! The `skiff` binary: command-line parsing, wiring, signals and the start-up trim of its own pages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use skiff_apiserver::{Server, ServerConfig};
use skiff_store::Store;
use tokio_util::sync::CancellationToken;

mod trim;

#[derive(Parser)]
#[command(name = "skiff", version, about = "A Kubernetes-style orchestrator, WebAssembly first")]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server and its store.
    Server(ServerArgs),
    /// Run a single-node cluster: the control plane on the embedded store and a node agent in one process.
    Up(UpArgs),
    /// Run a node agent that joins a cluster and runs the pods bound to it.
    Agent(AgentArgs),
    /// Work with images: publish a .wasm to a registry, or load one into a node's store for offline use.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print the admin kubeconfig of a data directory, or with --user a new user's: a client certificate
    /// signed by the cluster CA, whose common name is the user and organization the group, for RBAC to bind.
    Kubeconfig {
        #[arg(long, env = "SKIFF_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Mint a kubeconfig for this user instead of printing the admin's.
        #[arg(long)]
        user: Option<String>,
        /// The user's group (one: a certificate carries one organization here).
        #[arg(long, requires = "user")]
        group: Option<String>,
        /// How long the user's certificate is valid, in days.
        #[arg(long, default_value_t = 365, requires = "user")]
        days: i64,
    },
    /// Manage bootstrap tokens, as k3s's `token` command: a join token of a node's own, which deleting it
    /// revokes (Secrets `bootstrap-token-<id>` in kube-system, made with the admin kubeconfig).
    Token {
        /// The server's data directory, whose admin kubeconfig is used.
        #[arg(long, env = "SKIFF_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the version of skiff and of the Kubernetes API it serves.
    Version,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token and print the join token carrying it: `K10<ca sha256>::<id>.<secret>`, for
    /// `skiff agent --token-file`.
    Create {
        /// How long the token authenticates (`24h`, `10m`, `90s`); 0 for ever.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// What the token is for, as `skiff token list` shows it.
        #[arg(long)]
        description: Option<String>,
        /// Groups the token's user is in besides system:bootstrappers, each `system:bootstrappers:...`.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Delete bootstrap tokens by id (or whole token, `<id>.<secret>`): they stop authenticating at once.
    /// A node that joined with one keeps its certificate until its Node is deleted too.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List the bootstrap tokens: id, expiration, description.
    List,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where credentials, the kubeconfig and the embedded store live [default: ~/.skiff, or /var/lib/skiff as root]
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for the HTTPS API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Storage: `embedded` (in the data directory) or `etcd://HOST:PORT[,HOST:PORT...]`, TLS files optionally
    /// as `?cacert=FILE&cert=FILE&key=FILE` (the same as --etcd-cafile, --etcd-certfile, --etcd-keyfile).
    #[arg(long, default_value = "embedded")]
    store: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    controllers: ControllerArgs,
    #[command(flatten)]
    admission: AdmissionArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The metrics APIs (metrics.k8s.io, custom.metrics.k8s.io), metrics-server's flag.
#[derive(clap::Args)]
struct MetricsArgs {
    /// How often every node's figures are read.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    metric_resolution: std::time::Duration,
}

/// The audit log, kube-apiserver's flags.
#[derive(clap::Args)]
struct AuditArgs {
    /// An audit.k8s.io/v1 Policy (YAML or JSON): its first rule matching a request sets what is recorded
    /// (None, Metadata, Request, RequestResponse).
    #[arg(long, value_name = "FILE", requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events are appended as JSON lines; `-` is standard output.
    #[arg(long, value_name = "FILE", requires = "audit_policy_file")]
    audit_log_path: Option<PathBuf>,
    /// Rotate the audit log once it would pass this many megabytes (0: never).
    #[arg(long, value_name = "MB", default_value_t = 100)]
    audit_log_maxsize: u64,
    /// How many rotated audit logs (FILE.1, the newest, FILE.2, ...) are kept (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    audit_log_maxbackup: usize,
}

impl AuditArgs {
    fn config(self) -> Option<skiff_apiserver::audit::AuditConfig> {
        Some(skiff_apiserver::audit::AuditConfig {
            policy_file: self.audit_policy_file?,
            log_path: self.audit_log_path?,
            max_size_mb: self.audit_log_maxsize,
            max_backups: self.audit_log_maxbackup,
        })
    }
}

/// Encryption at rest, kube-apiserver's flag.
#[derive(clap::Args)]
struct EncryptionArgs {
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) naming the resources to encrypt in the store
    /// and the providers (aesgcm, secretbox, identity) to encrypt and decrypt them with; the first provider writes.
    #[arg(long, value_name = "FILE")]
    encryption_provider_config: Option<PathBuf>,
}

/// TLS to etcd, kube-apiserver's flags; each may instead be a parameter of the `--store` URL.
#[derive(clap::Args, Default)]
struct EtcdTlsArgs {
    /// CA that signed etcd's certificate (the only one trusted); with it, etcd is spoken to over TLS.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate to present to etcd, for an etcd with `--client-cert-auth`.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// Private key of --etcd-certfile.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
}

/// What the API server admits.
#[derive(clap::Args)]
struct AdmissionArgs {
    /// The Pod Security level (privileged, baseline, restricted) enforced, and warned about, in namespaces
    /// without a `pod-security.kubernetes.io/enforce` label; kube-system is exempt. Baseline refuses
    /// privileged containers, host namespaces, hostPath volumes, host ports and capabilities beyond the
    /// default set.
    #[arg(long, default_value = "baseline", value_name = "LEVEL")]
    pod_security_default: skiff_api::pod_security::Level,
}

/// The serving certificate's names.
#[derive(clap::Args)]
struct TlsArgs {
    /// A further host name or IP address for the serving certificate (repeatable, as k3s's flag); listening
    /// on an unspecified address, the certificate already names every address of the machine.
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    sans: Vec<String>,
}

/// Tunables of the controllers.
#[derive(clap::Args)]
struct ControllerArgs {
    /// How long a node's Lease may go unrenewed before the node is Unknown and tainted unreachable.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    node_grace_period: std::time::Duration,
    /// How long pods stay on an unreachable or not-ready node before eviction, unless they tolerate it otherwise.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pod_eviction_timeout: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is synced (kube-controller-manager's
    /// --horizontal-pod-autoscaler-sync-period).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    controllers: ControllerArgs,
    #[command(flatten)]
    admission: AdmissionArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The API server's URL, or several separated by commas (the agent fails over between them).
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
    /// The server's `node-token` file (its data directory has it).
    #[arg(long)]
    token_file: PathBuf,
    /// Where the agent keeps images, compiled modules and pod logs [default: as for `server`]
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// What a node agent is told about itself.
#[derive(clap::Args)]
struct NodeArgs {
    /// The Node's name [default: the host name]
    #[arg(long)]
    name: Option<String>,
    /// The address the node reports and serves on (and its pods' address with `--pod-network host`).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: std::net::IpAddr,
    /// Port of the agent's HTTPS endpoint for logs (0 picks a free port).
    #[arg(long, default_value_t = skiff_node::DEFAULT_KUBELET_PORT)]
    kubelet_port: u16,
    /// First crash-loop back-off; doubles up to --backoff-max (the kubelet's 10 s and 5 min).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff_initial: std::time::Duration,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    backoff_max: std::time::Duration,
    /// Pods this node takes (its `capacity.pods`); each reserves a wasm instance slot.
    #[arg(long, default_value_t = skiff_node::DEFAULT_MAX_PODS)]
    max_pods: u32,
    /// auto: each pod gets its own address from the node's pod range where that works (as root, with the
    /// CNI plugins in /usr/lib/cni): wasm-only pods an address on the node's bridge, other pods a network
    /// namespace through CNI; else pods share the node's network. cni: the same, or refuse to start.
    /// host: pods share the node's network.
    #[arg(long, default_value = "auto")]
    pod_network: skiff_node::network::Mode,
    /// The node's pod range, unless its Node names one [default: a free range of 10.42.0.0/16 holding
    /// --max-pods pods: a /22 for 1,000]
    #[arg(long)]
    pod_cidr: Option<skiff_node::network::Ipv4Cidr>,
    /// How this node reaches other nodes' pods: host-gw (directly via their nodes' addresses where they
    /// share a link, over VXLAN where they do not) or vxlan (over VXLAN always).
    #[arg(long, default_value = "host-gw")]
    pod_routes: skiff_node::proxy::RouteMode,
    /// The memory limit of wasm containers that set no limits.memory: their memory is the agent's, so it is
    /// never unbounded.
    #[arg(long, default_value = "128Mi", value_parser = parse_memory)]
    wasm_default_memory_limit: u64,
    /// Run wasm only, even where the host could run containers (an edge node with no container runtime).
    #[arg(long)]
    no_oci: bool,
    /// The port this node serves Ingresses on over HTTP, on every address of the node (0: none).
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The port this node serves Ingresses on over HTTPS, with the certificates of their TLS Secrets (0: none).
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// The cluster DNS Service's address, pods' nameserver (the kubelet's flag; k3s's default).
    #[arg(long, default_value = "10.43.0.10")]
    cluster_dns: std::net::IpAddr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The node's resolver configuration: the upstream of the cluster DNS, and what `dnsPolicy: Default`
    /// pods get.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Mirrors, TLS and credentials for image pulls, in k3s's registries.yaml format
    /// [default: /etc/skiff/registries.yaml if it exists]
    #[arg(long)]
    registries: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Publish a .wasm file to a registry as a CNCF wasm artifact.
    Push {
        file: PathBuf,
        /// e.g. 127.0.0.1:5000/samples/hello:latest (loopback registries are spoken to over plain HTTP).
        reference: String,
    },
    /// Load a .wasm file into a node's image store, for nodes without a registry
    /// (use imagePullPolicy IfNotPresent or Never).
    Import {
        file: PathBuf,
        reference: String,
        /// The node's data directory (as given to `skiff agent` or `skiff up`).
        #[arg(long, env = "SKIFF_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// `10s`, `500ms`, `5m`, `24h`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(value)),
        "s" | "" => Ok(std::time::Duration::from_secs(value)),
        "m" => Ok(std::time::Duration::from_secs(value * 60)),
        "h" => Ok(std::time::Duration::from_secs(value * 3600)),
        _ => Err(format!("invalid duration {text:?}: use ms, s, m or h")),
    }
}

/// A memory quantity as Kubernetes writes one (`128Mi`, `1G`), in bytes.
fn parse_memory(text: &str) -> Result<u64, String> {
    skiff_api::validation::parse_quantity(text)
        .filter(|bytes| *bytes >= 1.0)
        .map(|bytes| bytes as u64)
        .ok_or_else(|| format!("invalid memory quantity {text:?} (e.g. 128Mi)"))
}

impl NodeArgs {
    /// The registries file, read and checked now so a bad one stops the command before anything starts.
    fn registries(&self) -> anyhow::Result<skiff_node::images::Registries> {
        Ok(skiff_node::images::Registries::load_or_default(self.registries.as_deref())?)
    }

    fn config(
        &self,
        server: String,
        join_token: String,
        data_dir: PathBuf,
        registries: skiff_node::images::Registries,
    ) -> skiff_node::AgentConfig {
        skiff_node::AgentConfig {
            registries,
            server,
            join_token,
            name: self.name.clone().unwrap_or_else(hostname),
            data_dir,
            node_ip: self.node_ip,
            kubelet_port: self.kubelet_port,
            max_pods: self.max_pods,
            wasm_default_memory_limit: self.wasm_default_memory_limit,
            pod_network: self.pod_network,
            pod_cidr: self.pod_cidr,
            pod_routes: self.pod_routes,
            oci: !self.no_oci,
            ingress: skiff_node::ingress::IngressConfig {
                http_port: self.ingress_http_port,
                https_port: self.ingress_https_port,
            },
            dns: skiff_node::dns::DnsConfig {
                cluster_dns: self.cluster_dns,
                domain: self.cluster_domain.clone(),
                resolv_conf: self.resolv_conf.clone(),
            },
            backoff: skiff_node::BackoffConfig {
                initial: self.backoff_initial,
                max: self.backoff_max,
                ..skiff_node::BackoffConfig::default()
            },
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff-node".into())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Server(args) => serve(args, None),
        Command::Up(args) => {
            let server = ServerArgs {
                data_dir: args.data_dir,
                listen: args.listen,
                store: "embedded".into(),
                etcd_tls: EtcdTlsArgs::default(),
                tls: args.tls,
                controllers: args.controllers,
                admission: args.admission,
                encryption: args.encryption,
                audit: args.audit,
                metrics: args.metrics,
            };
            serve(server, Some(args.node))
        }
        Command::Agent(args) => agent(args),
        Command::Image(command) => image(command),
        Command::Kubeconfig { data_dir, user, group, days } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let path = dir.join("kubeconfig");
            let kubeconfig = std::fs::read_to_string(&path).with_context(|| {
                format!("no kubeconfig at {}: has `skiff server` run with this data dir?", path.display())
            })?;
            match user {
                None => print!("{kubeconfig}"),
                Some(user) => {
                    // The new user reaches the server where the admin does.
                    let server = kubeconfig
                        .lines()
                        .find_map(|line| line.trim().strip_prefix("server: "))
                        .context("the admin kubeconfig names no server")?;
                    let minted = skiff_apiserver::pki::user_kubeconfig(&dir, server, &user, group.as_deref(), days)?;
                    print!("{minted}");
                }
            }
            Ok(())
        }
        Command::Token { data_dir, command } => token(&data_dir.unwrap_or_else(default_data_dir), command),
        Command::Version => {
            println!(
                "skiff {} (Kubernetes API v1.{})",
                env!("CARGO_PKG_VERSION"),
                skiff_apiserver::router::KUBERNETES_MINOR
            );
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(UnlockedStderr::new());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Log output to stderr without std's stderr lock. libcontainer forks the agent to start a container, and
/// the child logs before it execs: had another thread held the lock at the fork, the child would wait for it
/// forever (and with it the container, and any file lock it inherited). Each event is one `write` of a
/// duplicate of fd 2, which no lock guards.
#[derive(Clone)]
struct UnlockedStderr(Option<Arc<std::fs::File>>);

impl UnlockedStderr {
    fn new() -> Self {
        use std::os::fd::AsFd;
        Self(std::io::stderr().as_fd().try_clone_to_owned().ok().map(|fd| Arc::new(std::fs::File::from(fd))))
    }
}

impl std::io::Write for UnlockedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(file) => (&**file).write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for UnlockedStderr {
    type Writer = UnlockedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `$HOME/.skiff` for a user, `/var/lib/skiff` for root, like k3s's split between rootless and system.
fn default_data_dir() -> PathBuf {
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false) || std::env::var_os("HOME").is_none();
    match std::env::var_os("HOME") {
        Some(home) if !root => Path::new(&home).join(".skiff"),
        _ => PathBuf::from("/var/lib/skiff"),
    }
}

/// Runs the control plane and, for `skiff up`, a node agent in the same process sharing its data directory.
#[tokio::main]
async fn serve(args: ServerArgs, node: Option<NodeArgs>) -> anyhow::Result<()> {
    let agent_files = node.as_ref().map_or(0, |node| agent_open_files(node.max_pods));
    raise_open_files_limit(skiff_apiserver::connections::MAX_CONNECTIONS as u64 + RESERVED_FILES + agent_files);
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Keys, tokens and the store: the data directory is its owner's alone, as kube-bench expects.
    std::fs::set_permissions(&data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", data_dir.display()))?;
    let registries = node.as_ref().map(NodeArgs::registries).transpose()?;
    let store = open_store(&args.store, &args.etcd_tls, &data_dir).await?;
    let shutdown = cancel_on_signal();
    // What no node's serving certificate may name: the names the server's own certificate carries, but the
    // name of `skiff up`'s node, which is this host's.
    let mut apiserver_names = skiff_apiserver::pki::subject_names(args.listen, &args.tls.sans);
    if let Some(own_node) = node.as_ref().map(|node| node.name.clone().unwrap_or_else(hostname)) {
        apiserver_names.retain(|name| !name.eq_ignore_ascii_case(&own_node));
    }
    // One registry for the process: the API server serves it, the control loops count into it.
    let mut registry = prometheus_client::registry::Registry::default();
    let api_metrics = skiff_apiserver::instrumentation::ApiMetrics::register(&mut registry);
    let controller_metrics = skiff_controllers::Metrics::register(&mut registry);
    let config = ServerConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        tls_sans: args.tls.sans,
        pod_security_default: args.admission.pod_security_default,
        encryption_provider_config: args.encryption.encryption_provider_config,
        audit: args.audit.config(),
        metric_resolution: args.metrics.metric_resolution,
        instruments: skiff_apiserver::instrumentation::Instruments { registry: Arc::new(registry), api: api_metrics },
    };
    let server = Server::bind(config, store, shutdown.clone()).await?;
    trim::after_start_up();
    tracing::info!(
        kubeconfig = %data_dir.join("kubeconfig").display(),
        url = server.url(),
        "ready: export KUBECONFIG={}",
        data_dir.join("kubeconfig").display()
    );
    // The server made (or installed) the CA before it bound: the CSR signer signs with it.
    let read = |name: &str| {
        let path = data_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tunables = skiff_controllers::Config {
        node_grace: args.controllers.node_grace_period,
        eviction_toleration: args.controllers.pod_eviction_timeout,
        hpa_sync_period: args.controllers.horizontal_pod_autoscaler_sync_period,
        metrics: controller_metrics,
        signing_ca: Some(skiff_controllers::SigningCa { cert_pem: read("ca.crt")?, key_pem: read("ca.key")? }),
        apiserver_names: skiff_controllers::ApiServerNames {
            names: apiserver_names,
            service_cidr: Some((
                skiff_apiserver::objects::SERVICE_CIDR.0.into(),
                skiff_apiserver::objects::SERVICE_CIDR.1,
            )),
        },
    };
    let controllers =
        tokio::spawn(controller_manager(data_dir.clone(), server.url().to_string(), tunables, shutdown.clone()));
    let agent = match node.zip(registries) {
        Some((node, registries)) => {
            let token =
                std::fs::read_to_string(data_dir.join("node-token")).context("the server wrote no node-token")?;
            let config = node.config(server.url().to_string(), token, data_dir.clone(), registries);
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = skiff_node::run(config, shutdown.clone()).await {
                    tracing::error!(error = format!("{:#}", anyhow::Error::new(e)), "the node agent failed");
                    shutdown.cancel();
                }
            }))
        }
        None => None,
    };
    server.run().await;
    let _ = controllers.await;
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    Ok(())
}

/// Runs the scheduler and controllers whenever this server holds the leader Lease, as API clients of the
/// server itself: the controllers as `system:kube-controller-manager`, the scheduler as
/// `system:kube-scheduler`, each held to its bootstrap RBAC role.
async fn controller_manager(
    data_dir: PathBuf,
    url: String,
    config: skiff_controllers::Config,
    shutdown: CancellationToken,
) {
    let clients = loopback_client(&data_dir, &url, "system:kube-controller-manager").and_then(|controllers| {
        Ok(skiff_controllers::Clients {
            controllers,
            scheduler: loopback_client(&data_dir, &url, "system:kube-scheduler")?,
        })
    });
    let clients = match clients {
        Ok(clients) => clients,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot start the controllers");
            return shutdown.cancel();
        }
    };
    let election = skiff_controllers::leader::Election {
        leases: kube::Api::namespaced(clients.controllers.clone(), "kube-system"),
        name: "skiff-controller-manager".into(),
        identity: format!("{}_{}", hostname(), std::process::id()),
    };
    election.run(shutdown, |term| skiff_controllers::run(clients.clone(), config.clone(), term)).await;
}

/// A client of the server at `url` as `user`, with a client certificate the cluster CA signs for it now,
/// so each component acts under its own name and RBAC role, never the admin's.
fn loopback_client(data_dir: &Path, url: &str, user: &str) -> anyhow::Result<kube::Client> {
    use base64::Engine;
    let ca = std::fs::read(data_dir.join("ca.crt")).context("no ca.crt in the data dir")?;
    let (cert, key) = skiff_apiserver::pki::client_certificate(data_dir, user, None, 365)?;
    let mut config = kube::Config::new(url.parse().context("the server's URL")?);
    let roots = rustls_pemfile::certs(&mut ca.as_slice()).map(|c| c.map(|c| c.to_vec())).collect::<Result<_, _>>()?;
    config.root_cert = Some(roots);
    let encode = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
    config.auth_info.client_certificate_data = Some(encode(cert));
    config.auth_info.client_key_data = Some(encode(key).into());
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    raise_open_files_limit(agent_open_files(args.node.max_pods));
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the join token {}", args.token_file.display()))?;
    let registries = args.node.registries()?;
    let config = args.node.config(args.server, token, data_dir, registries);
    trim::after_start_up();
    skiff_node::run(config, cancel_on_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn token(data_dir: &Path, command: TokenCommand) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use skiff_api::join::{self, BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_TYPE, BootstrapToken, JoinToken};
    let (client, ca_hash) = admin_client(data_dir).await?;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, BOOTSTRAP_TOKEN_NAMESPACE);
    match command {
        TokenCommand::Create { ttl, description, groups } => {
            let ttl = (!ttl.is_zero()).then_some(ttl);
            let (token, secret) = skiff_apiserver::bootstrap_tokens::new_token(ttl, description.as_deref(), &groups)?;
            secrets.create(&Default::default(), &secret).await.context("cannot create the token's Secret")?;
            println!("{}", JoinToken { ca_hash, secret: token.to_string() });
        }
        TokenCommand::Delete { ids } => {
            for given in ids {
                let id = BootstrapToken::parse(&given).map(|token| token.id).unwrap_or(given);
                if !BootstrapToken::is_id(&id) {
                    bail!("{id:?} is no bootstrap token id ([a-z0-9]{{6}}) or token (<id>.<secret>)");
                }
                let name = format!("{}{id}", join::BOOTSTRAP_TOKEN_SECRET_PREFIX);
                secrets
                    .delete(&name, &Default::default())
                    .await
                    .with_context(|| format!("cannot delete token {id}"))?;
                println!("bootstrap token {id:?} deleted");
            }
        }
        TokenCommand::List => {
            let list = secrets.list(&Default::default()).await.context("cannot list the Secrets of kube-system")?;
            println!("{:<8}{:<24}DESCRIPTION", "TOKEN", "EXPIRES");
            for secret in list.items.iter().filter(|s| s.type_.as_deref() == Some(BOOTSTRAP_TOKEN_TYPE)) {
                let Some(id) = secret.metadata.name.as_deref().and_then(join::token_id_of_secret) else { continue };
                let values = join::secret_values(secret);
                let expires = values.get(join::EXPIRATION_KEY).map_or("<forever>", String::as_str);
                let description = values.get(join::DESCRIPTION_KEY).map_or("<none>", String::as_str);
                println!("{id:<8}{expires:<24}{description}");
            }
        }
    }
    Ok(())
}

/// A client of the server as the admin, from the admin kubeconfig in `data_dir`, and the hash of the CA the
/// kubeconfig trusts, for join tokens.
async fn admin_client(data_dir: &Path) -> anyhow::Result<(kube::Client, String)> {
    use base64::Engine;
    let path = data_dir.join("kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("no kubeconfig at {}: has `skiff server` run with this data dir?", path.display()))?;
    let ca = kubeconfig
        .clusters
        .iter()
        .find_map(|named| named.cluster.as_ref()?.certificate_authority_data.clone())
        .context("the admin kubeconfig holds no certificate-authority-data")?;
    let ca_pem = base64::engine::general_purpose::STANDARD.decode(ca).context("the admin kubeconfig's CA")?;
    let ca_hash = skiff_apiserver::pki::ca_hash(&String::from_utf8_lossy(&ca_pem));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok((kube::Client::try_from(config)?, ca_hash))
}

#[tokio::main]
async fn image(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Push { file, reference } => {
            let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let digest =
                skiff_node::images::push_wasm(&wasm, &reference, &skiff_node::images::RegistryAuth::anonymous())
                    .await?;
            println!("{reference}@{digest}");
        }
        ImageCommand::Import { file, reference, data_dir } => {
            let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let store = skiff_node::images::ImageStore::open(data_dir.unwrap_or_else(default_data_dir).join("images"))?;
            store.import_wasm(&wasm, &reference)?;
            println!("{reference}");
        }
    }
    Ok(())
}

/// Files a process keeps open besides its connections and containers' logs: the store, etcd and API
/// connections, certificates, the wasm cache, and the rest.
const RESERVED_FILES: u64 = 256;

/// The files a node agent may hold open: a log file per container, its endpoint's connections, the rest.
fn agent_open_files(max_pods: u32) -> u64 {
    u64::from(max_pods) + skiff_node::MAX_KUBELET_CONNECTIONS as u64 + RESERVED_FILES
}

/// Raises the soft open-files limit to the hard limit, as Go does for every program and Rust's std does not:
/// the server's and the agent's connections, and the agent's containers' log files, each take one. Warns
/// when that is still below `needed`: beyond the limit, connections are refused and files fail to open.
fn raise_open_files_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit struct passed by pointer.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !raised || limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            needed,
            "the open-files limit is below what the connection limits and --max-pods need"
        );
    }
}

/// A token cancelled on SIGTERM or SIGINT.
fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        token.cancel();
    });
    shutdown
}

async fn open_store(url: &str, tls: &EtcdTlsArgs, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if url == "embedded" {
        if tls.etcd_cafile.is_some() || tls.etcd_certfile.is_some() || tls.etcd_keyfile.is_some() {
            bail!("--etcd-cafile, --etcd-certfile and --etcd-keyfile need an etcd:// --store");
        }
        let dir = data_dir.join("store");
        let store = skiff_store::embedded::EmbeddedStore::open(&dir)
            .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
        return Ok(Arc::new(store));
    }
    let config = etcd_config(url, tls)?;
    let endpoints = config.endpoints.join(",");
    // etcd refusing a client certificate only closes the connection after the handshake, which reaches us
    // as "operation was canceled": say what to check.
    let hint = if config.tls.is_some() {
        " (is etcd's certificate from the CA given, and the client's one etcd trusts?)"
    } else {
        ""
    };
    let store = skiff_store::etcd::EtcdStore::connect_with(config)
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoints}{hint}"))?;
    Ok(Arc::new(store))
}

/// Reads `etcd://HOST:PORT[,HOST:PORT...][?cacert=FILE&cert=FILE&key=FILE]` and the TLS flags. Parameter
/// values are taken literally (no percent-decoding), since they are file paths.
fn etcd_config(url: &str, flags: &EtcdTlsArgs) -> anyhow::Result<skiff_store::etcd::EtcdConfig> {
    use skiff_store::etcd::{ClientCertificate, EtcdConfig, EtcdTls};
    let Some(rest) = url.strip_prefix("etcd://") else {
        bail!(
            "unsupported --store {url:?}: use `embedded` or `etcd://HOST:PORT[,HOST:PORT...][?cacert=FILE&cert=FILE&key=FILE]`"
        );
    };
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mut ca, mut cert, mut key) =
        (flags.etcd_cafile.clone(), flags.etcd_certfile.clone(), flags.etcd_keyfile.clone());
    for parameter in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let (slot, flag) = match name {
            "cacert" => (&mut ca, "--etcd-cafile"),
            "cert" => (&mut cert, "--etcd-certfile"),
            "key" => (&mut key, "--etcd-keyfile"),
            _ => bail!("unknown parameter {name:?} in --store: the etcd:// URL takes only cacert, cert and key"),
        };
        if value.is_empty() {
            bail!("parameter {name} in --store needs a file, as {name}=FILE");
        }
        if slot.is_some() {
            bail!("{name} is given twice: once in --store and once more there or as {flag}");
        }
        *slot = Some(PathBuf::from(value));
    }
    let tls = match (ca, cert, key) {
        (None, None, None) => None,
        (Some(ca_file), None, None) => Some(EtcdTls { ca_file, client: None }),
        (Some(ca_file), Some(cert_file), Some(key_file)) => {
            Some(EtcdTls { ca_file, client: Some(ClientCertificate { cert_file, key_file }) })
        }
        // No system roots are trusted for etcd: a cluster's etcd has its own CA, as in k3s and kubeadm.
        (None, ..) => bail!("a client certificate for etcd needs the CA that signed etcd's: --etcd-cafile (cacert=)"),
        _ => bail!("etcd's client certificate and key go together: --etcd-certfile (cert=) and --etcd-keyfile (key=)"),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> =
        hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
    if endpoints.is_empty() {
        bail!("--store etcd:// needs at least one HOST:PORT");
    }
    let config = EtcdConfig::new(&endpoints);
    Ok(match tls {
        Some(tls) => config.with_tls(tls),
        None => config,
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still dies on the default action; nothing to drain then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
