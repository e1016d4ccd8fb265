//! The Skiff node agent (our kubelet): joins a cluster with a join token, registers its Node and renews its
//! Lease, runs the pods bound to it through the shims (wasm first), reports their status and events, keeps
//! their logs, and serves those logs to the API server.
//!
//! Code map: [`connect`] (join: CA check, the node's client and serving certificates through CSRs),
//! [`rotation`] (renewing them while running, back to the join token when refused), [`registration`] (Node, Lease),
//! [`pods`] (the watch, one worker per pod, specs, status, probes, events), [`images`] (the content store and
//! registry pulls), [`network`] (each pod's address: a network namespace through CNI, or for wasm-only pods
//! an address on the node's bridge), [`logs`] (CRI-format log files), [`server`] (the HTTPS endpoint for
//! logs and exec, authorizing callers through the API server as the kubelet's webhook modes), [`exec`] (running containers, the exec
//! channel protocol).
//!
//! Architecture invariant: the shims get a `skiff_shim::ContainerSpec` and know nothing of Pods; this crate
//! knows nothing of the API server's internals, only the Kubernetes API.

mod balancer;
mod connect;
pub mod dns;
mod exec;
pub mod images;
pub mod ingress;
mod logs;
pub mod metrics;
pub mod network;
mod nft;
pub mod pods;
mod policy;
mod portforward;
pub mod proxy;
mod registration;
mod rotation;
mod running;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use skiff_api::join::{InvalidJoinToken, JoinToken};
use skiff_shim::Shim;
use tokio_util::sync::CancellationToken;

pub use connect::BootstrapError;
pub use pods::BackoffConfig;
pub use server::MAX_CONNECTIONS as MAX_KUBELET_CONNECTIONS;

/// The kubelet's port, which the API server reaches for logs.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Default `--max-pods`: the wasm runtime's default pool of instance slots.
pub const DEFAULT_MAX_PODS: u32 = skiff_wasm::DEFAULT_MAX_INSTANCES;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The API servers' URLs (`https://HOST:PORT`, several separated by commas for failover).
    pub server: String,
    /// The cluster's join token (`K10<ca hash>::node:<secret>`, the server's `node-token` file).
    pub join_token: String,
    /// The Node's name.
    pub name: String,
    pub data_dir: PathBuf,
    /// The address the node reports and serves on (and its pods' address with host networking).
    pub node_ip: IpAddr,
    /// Port of the agent's HTTPS endpoint (0 picks a free one).
    pub kubelet_port: u16,
    pub backoff: BackoffConfig,
    /// Pods this node takes: the wasm runtime reserves an instance slot for each (HTTP guests' per-request
    /// instances share the slots), and the Node reports it as `capacity.pods`.
    pub max_pods: u32,
    /// The memory limit of wasm containers that set none (`--wasm-default-memory-limit`).
    pub wasm_default_memory_limit: u64,
    /// Whether pods get their own address, and a network namespace unless all their containers are wasm
    /// (`--pod-network`).
    pub pod_network: network::Mode,
    /// How this node reaches other nodes' pods (`--pod-routes`).
    pub pod_routes: proxy::RouteMode,
    /// The node's pod range (`--pod-cidr`), unless the Node names one; picked by the agent if neither does.
    pub pod_cidr: Option<network::Ipv4Cidr>,
    /// Whether containers may run where the host can run them; off makes a wasm-only node (`--no-oci`).
    pub oci: bool,
    /// Cluster DNS: served by this agent, and named in pods' resolv.conf, where the node has a pod network.
    pub dns: dns::DnsConfig,
    /// The ports this node serves Ingresses on (`--ingress-http-port`, `--ingress-https-port`; 0 is off).
    pub ingress: ingress::IngressConfig,
    /// Mirrors, TLS and credentials for image pulls (`--registries`), loaded and checked before start.
    pub registries: images::Registries,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("the join token is malformed")]
    Token(#[from] InvalidJoinToken),
    #[error(
        "the server's CA (sha256 {actual}) is not the one the join token names ({expected}): wrong server or token"
    )]
    CaMismatch { expected: String, actual: String },
    #[error("cannot talk to the API server")]
    Client(#[source] kube::Error),
    #[error("cannot get the node's client certificate")]
    Bootstrap(#[from] BootstrapError),
    #[error("image store")]
    Images(#[from] images::ImageError),
    #[error("pod network: {0}")]
    Network(#[from] network::NetworkError),
    #[error("service proxy: {0}")]
    Proxy(#[from] proxy::ProxyError),
    #[error("wasm runtime")]
    Wasm(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Runs the agent until `shutdown`: registration, heartbeats, the pod workers and the log endpoint.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let token = JoinToken::parse(&config.join_token)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| AgentError::Config(format!("cannot create {}: {e}", config.data_dir.display())))?;
    // The node's key, images, containers' writable layers, volumes (Secrets among them) and logs: the agent's
    // alone, as Docker keeps /var/lib/docker. Others may only pass through (0711, as Docker's with user
    // namespaces): the root of a pod with `hostUsers: false` is an unprivileged host user, and reaches its
    // container's files from inside its user namespace; what lies below is private in turn.
    let private = |dir: &Path, mode: u32| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode)))
            .map_err(|e| AgentError::Config(format!("cannot make {} private: {e}", dir.display())))
    };
    private(&config.data_dir, 0o711)?;
    for dir in ["pods", "images", "network"] {
        private(&config.data_dir.join(dir), 0o700)?;
    }
    let server = balancer::start(&config.server, shutdown.clone()).await?;
    let joined = connect::connect(&server, &token, &config.name, &config.data_dir).await?;
    let client = joined.client.client();
    let ca = joined.bootstrap.ca.clone();
    let client_certificate = joined.issued.validity;
    let client_keeper =
        rotation::ClientKeeper { client: joined.client, certificate: joined.certificate, bootstrap: joined.bootstrap };
    let address = SocketAddr::new(config.node_ip, config.kubelet_port);
    let kubelet = server::KubeletServer::bind(address, &ca).await?;
    let wasm_config = skiff_wasm::WasmConfig {
        max_instances: config.max_pods,
        default_memory_limit: config.wasm_default_memory_limit,
        ..skiff_wasm::WasmConfig::new(config.data_dir.join("wasm-cache"))
    };
    let wasm = skiff_wasm::WasmShim::new(wasm_config).map_err(|e| AgentError::Wasm(Box::new(e)))?;
    // Wasm is asked first; containers run where the host can run them (as root, with cgroups).
    let mut shims: Vec<Arc<dyn Shim>> = vec![Arc::new(wasm)];
    if config.oci && skiff_oci::OciShim::available() {
        let oci = skiff_oci::OciShim::new(skiff_oci::OciConfig { state_dir: config.data_dir.join("oci") })
            .map_err(|e| AgentError::Config(format!("OCI runtime: {e}")))?;
        shims.push(Arc::new(oci));
    } else {
        tracing::info!("no OCI runtime on this node (--no-oci, or not root with cgroups): wasm only");
    }
    let identity = registration::NodeIdentity {
        name: config.name.clone(),
        ip: config.node_ip,
        kubelet_port: kubelet.port(),
        runtimes: shims.iter().map(|s| s.name()).collect(),
        data_dir: config.data_dir.clone(),
        max_pods: config.max_pods,
    };
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let existing = nodes.get_opt(&config.name).await.map_err(AgentError::Client)?;
    let node_cidr = existing.as_ref().and_then(|node| node.spec.as_ref()?.pod_cidr.clone());
    let network = start_network(&config, &nodes, node_cidr.as_deref()).await?;
    let own_range = network.pod_cidr();
    let network_id = network.id().unwrap_or_default().to_string();
    // Services and routes between nodes ride on the pod network: with host networking there is neither.
    if own_range.is_some() {
        proxy::check()?;
    }
    let pod_cidr = own_range.map(|cidr| cidr.to_string());
    registration::register(&nodes, &identity, existing, pod_cidr.as_deref()).await?;
    tracing::info!(node = %config.name, runtimes = ?identity.runtimes, pod_cidr, "node registered");
    // Asked for once the Node names the address it is for, which the approver checks; by the rotation task
    // when none is stored, so that the node runs its pods while the controllers (maybe not up yet) sign it.
    let serving_keeper = rotation::ServingKeeper {
        client: client.clone(),
        certificate: connect::NodeCertificate::serving(&config.name, config.node_ip, &config.data_dir)?,
        ca,
        serving: kubelet.serving(),
    };
    let serving_certificate = serving_keeper.start()?;
    let caches = proxy::SharedCaches::default();
    let running = Arc::new(running::Running::default());
    let ctx = Arc::new(pods::Context {
        client: client.clone(),
        node_name: config.name.clone(),
        node_ip: config.node_ip,
        images: images::ImageStore::open(config.data_dir.join("images"))?.with_registries(config.registries.clone()),
        shims,
        pods_dir: config.data_dir.join("pods"),
        backoff: config.backoff,
        events: pods::Recorder::new(client.clone(), config.name.clone()),
        max_pods: config.max_pods,
        network,
        // Services and their names exist only where pods have addresses of their own.
        dns: own_range.is_some().then(|| config.dns.clone()),
        services: caches.clone(),
        metrics: Arc::new(metrics::AgentMetrics::new(running.clone())),
        running,
        memory: pods::MemoryLedger::new(match registration::allocatable_memory() {
            // Not a node without memory: one whose memory could not be read, where admission cannot judge.
            0 => {
                tracing::warn!("cannot read the node's memory (/proc/meminfo): pods are admitted whatever they hold");
                u64::MAX
            }
            memory => memory,
        }),
        user_namespaces: pods::UserNamespaces::new(config.data_dir.join("pods")),
    });
    let heartbeat = registration::heartbeat(client.clone(), identity, shutdown.clone());
    let image_gc = collect_images(ctx.clone(), shutdown.clone());
    let logs = kubelet.run(
        client.clone(),
        config.name.clone(),
        ctx.pods_dir.clone(),
        ctx.running.clone(),
        ctx.metrics.clone(),
        shutdown.clone(),
    );
    let (running, agent_metrics) = (ctx.running.clone(), ctx.metrics.clone());
    let pods = pods::run(ctx, shutdown.clone());
    let proxy = async {
        if let Some(range) = own_range {
            let node = proxy::NodeNetwork {
                name: config.name.clone(),
                network_id: network_id.clone(),
                ip: match config.node_ip {
                    IpAddr::V4(ip) => ip,
                    IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
                },
                range: proxy::PodRange { network: range.network(), prefix: range.prefix() },
                routes: config.pod_routes,
            };
            proxy::run(client.clone(), node, caches.clone(), shutdown.clone()).await;
        }
    };
    // NetworkPolicies, like Services, act on pods with addresses of their own.
    let policy = async {
        if own_range.is_some() {
            policy::run(client.clone(), config.name.clone(), &network_id, shutdown.clone()).await;
        }
    };
    let dns = async {
        match own_range {
            None => {}
            // Pods reach the node's DNS through a DNAT to the node's address, which the kernel does not route
            // to loopback: a node on 127.0.0.1 serves no cluster DNS (nor node ports), as kube-proxy's nodes.
            Some(_) if config.node_ip.is_loopback() => {
                tracing::warn!(node_ip = %config.node_ip, "no cluster DNS: pods cannot reach a node on a loopback address (set --node-ip)");
            }
            Some(_) => {
                if let Err(e) = dns::serve(config.node_ip, &config.dns, caches.clone(), shutdown.clone()).await {
                    tracing::error!(error = %e, "no cluster DNS on this node");
                }
            }
        }
    };
    // The ingress resolves backends from the proxy's caches, which only a node with a pod network fills.
    let ingress = async {
        if own_range.is_some() {
            let node = ingress::Node {
                name: config.name.clone(),
                caches: caches.clone(),
                running: running.clone(),
                metrics: agent_metrics.clone(),
            };
            ingress::run(client.clone(), config.ingress, node, shutdown.clone()).await;
        }
    };
    let client_rotation = rotation::keep(client_keeper, Some(client_certificate), shutdown.clone());
    let serving_rotation = rotation::keep(serving_keeper, serving_certificate, shutdown.clone());
    tokio::join!(heartbeat, logs, pods, image_gc, proxy, policy, dns, ingress, client_rotation, serving_rotation);
    tracing::info!("agent stopped");
    Ok(())
}

/// Sets up the pod network (in `node_cidr`, the range the Node names, if it names one) and releases the
/// networks of pods that went away while the agent was down (before any pod worker starts).
async fn start_network(
    config: &AgentConfig,
    nodes: &kube::Api<Node>,
    node_cidr: Option<&str>,
) -> Result<network::Network, AgentError> {
    let network = network::Network::new(network::NetworkConfig {
        mode: config.pod_network,
        pod_cidr: config.pod_cidr,
        node_pod_cidr: node_cidr,
        node_name: &config.name,
        node_ip: config.node_ip,
        data_dir: &config.data_dir,
        max_pods: config.max_pods,
    })?;
    let pods: kube::Api<Pod> = kube::Api::all(nodes.clone().into_client());
    let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={}", config.name));
    let list = pods.list(&params).await.map_err(AgentError::Client)?;
    let ended =
        |pod: &&Pod| matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let running = list.items.iter().filter(|pod| !ended(pod)).filter_map(|pod| pod.metadata.uid.clone());
    network.collect(&running.collect()).await;
    Ok(network)
}

/// How often unused images are removed from the store: the kubelet's image GC period.
const IMAGE_GC_PERIOD: std::time::Duration = std::time::Duration::from_secs(300);

/// Removes images no pod on this node names, every [`IMAGE_GC_PERIOD`].
async fn collect_images(ctx: Arc<pods::Context>, shutdown: CancellationToken) {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(ctx.client.clone());
    let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut tick = tokio::time::interval(IMAGE_GC_PERIOD);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let list = match pods.list(&params).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "image GC cannot list this node's pods");
                continue;
            }
        };
        let in_use: std::collections::HashSet<String> = list
            .items
            .iter()
            .filter_map(|pod| pod.spec.as_ref())
            .flat_map(|spec| spec.containers.iter().chain(spec.init_containers.iter().flatten()))
            .filter_map(|container| container.image.clone())
            .collect();
        match ctx.images.garbage_collect(&in_use) {
            Ok(0) => {}
            Ok(freed) => tracing::info!(freed, "removed unused images"),
            Err(e) => tracing::warn!(error = %e, "image GC failed"),
        }
        match ctx.images.blobs() {
            Ok(live) => {
                for shim in &ctx.shims {
                    shim.release_layers(&live).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the images' layers"),
        }
    }
}

pub(crate) fn now() -> String {
    skiff_api::format_time(jiff::Timestamp::now())
}
