//! The shim interface: how the node agent runs one container, whatever the runtime.
//!
//! A shim gets a [`ContainerSpec`] (an image already in the local store, the argv, environment, mounts,
//! limits, ports and where output goes) and gives back a running [`Container`] to wait on, stop or exec into.
//! The node turns a Pod into specs; shims never see a Pod, the API or the store (the runwasi `RuntimeContext`
//! idea).
//!
//! The node picks a shim per container, never per pod: the first whose [`Shim::can_handle`] accepts the
//! image (wasm first, then OCI), unless the pod's RuntimeClass forces one.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod egress;
pub mod mount_table;

pub use egress::{AllowedHost, AllowedHostError, ClusterAddresses, Egress, Resolver};

/// An image in the node's content store, as the shims need to see it.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// The reference the pod named, for messages.
    pub reference: String,
    /// The manifest digest (`sha256:...`): the image's content address, which the node reports as imageID.
    pub digest: String,
    /// The media type of the image config (`application/vnd.wasm.config.v0+json` for a CNCF wasm artifact).
    pub config_media_type: String,
    /// `architecture` from the image config (`wasm` for wasm images in the OCI image config layout).
    pub architecture: String,
    /// The config's entrypoint and cmd, used when the container names no command.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// The config's environment (`KEY=value`), overridden by the container's.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// The config's `User` (`uid`, `uid:gid`, `name` or `name:group`), resolved by the shim in the image's
    /// own `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
    /// Layers in order, each a file in the content store.
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub path: PathBuf,
}

/// A host directory made visible to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Resource limits from the container's `resources.limits`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `limits.memory` in bytes.
    pub memory_bytes: Option<u64>,
    /// `limits.cpu` in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// `requests.cpu` in millicores: the container's share of contended CPU (cgroup shares or weight).
    pub cpu_request_millis: Option<u64>,
    /// The most requests a server guest (wasi:http) handles at once, from the pod's
    /// `skiff.dev/max-concurrent-requests`; the shim's default when None.
    pub concurrent_requests: Option<u32>,
}

/// The container's `securityContext` merged with its pod's, as far as a runtime applies it. The default is
/// the kubelet's default: the image's user, a writable root, the default capabilities and seccomp profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// `runAsUser`, overriding the image's user.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`, overriding the image's group.
    pub run_as_group: Option<u32>,
    /// `runAsNonRoot`: refuse to start when the resolved user is root.
    pub run_as_non_root: bool,
    /// The pod's `supplementalGroups` (and `fsGroup`).
    pub supplemental_groups: Vec<u32>,
    pub read_only_root_filesystem: bool,
    /// Capability names (`NET_ADMIN` or `CAP_NET_ADMIN`, `ALL`) added to and dropped from the default set.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// `allowPrivilegeEscalation: false` sets no_new_privs.
    pub no_new_privileges: bool,
    /// All capabilities, every device, no masked or read-only paths, no seccomp filter (whatever `seccomp`
    /// says).
    pub privileged: bool,
    /// `seccompProfile`, the container's over the pod's.
    pub seccomp: SeccompProfile,
}

/// Which seccomp filter confines a container (`securityContext.seccompProfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The runtime's default profile (containerd's `RuntimeDefault`). Every container gets it unless its
    /// pod or itself asks otherwise, as with the kubelet's `seccompDefault: true`.
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// `localhostProfile`: a profile file, relative to the node's seccomp profile directory; the node has
    /// checked that it is relative and never leaves that directory (no `..`).
    Localhost(PathBuf),
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a container's output goes (the node's log files). Called from the runtime's threads, so it must
/// not block for long.
pub trait OutputSink: Send + Sync {
    fn write(&self, stream: Stream, bytes: &[u8]);
}

/// Everything a shim needs to start one container.
#[derive(Clone)]
pub struct ContainerSpec {
    /// Unique per container start; shims use it for runtime state (a cgroup, a bundle directory).
    pub id: String,
    /// `namespace/pod/container`, for logs and spans.
    pub name: String,
    pub image: Image,
    /// The full argv: the container's command (or the image's entrypoint) followed by its args.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    /// Declared container ports; an HTTP component serves on the first TCP one.
    pub ports: Vec<u16>,
    /// The address ports are bound on: the node's, or with pod networking the unspecified address inside
    /// the pod's network namespace.
    pub host_ip: IpAddr,
    /// The network namespace to run in (a bind-mounted namespace file), shared by all containers of a pod;
    /// None shares the node's network.
    pub netns: Option<PathBuf>,
    /// The pod's user namespace (`hostUsers: false`), shared by its containers; None runs them in the node's,
    /// as root on the host when they run as root.
    pub userns: Option<UserNamespace>,
    /// Where connections the shim makes for the container may go, and how names resolve (a wasm guest's
    /// outgoing HTTP). Containers with a network stack of their own have the kernel and resolv.conf instead.
    pub egress: Egress,
    pub security: Security,
    pub output: Arc<dyn OutputSink>,
}

/// A pod's user namespace: ids 0..`size` in the pod are `host_id`.. on the host, the same for users and
/// groups, as the kubelet maps a pod with `hostUsers: false`. The node made it and owns the pod's network
/// namespace from within it, so the pod's containers may configure their own network as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserNamespace {
    /// The namespace, kept alive as a bind-mounted nsfs file, to join.
    pub path: PathBuf,
    pub host_id: u32,
    pub size: u32,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub reason: ExitReason,
    /// A human-readable explanation (a trap message, an OOM note), shown as the terminated state's message.
    pub message: Option<String>,
}

/// The kubelet's terminated reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// A non-zero exit, a trap, or a crash.
    Error,
    /// The memory limit was exceeded.
    OomKilled,
}

impl ExitReason {
    /// The reason string Kubernetes shows (`Completed`, `Error`, `OOMKilled`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The image cannot run on this shim (not a valid module, unsupported layout): CreateContainerError.
    #[error("{0}")]
    InvalidImage(String),
    /// The container's configuration contradicts its image (runAsNonRoot with a root user):
    /// CreateContainerConfigError.
    #[error("{0}")]
    Config(String),
    /// The container could not be set up (a mount, a port, the runtime): CreateContainerError.
    #[error("{message}")]
    Setup {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// A runtime that runs containers: the wasm shim, the OCI shim.
#[async_trait::async_trait]
pub trait Shim: Send + Sync {
    /// `wasm` or `oci`, as RuntimeClass handlers name them.
    fn name(&self) -> &'static str;

    /// Whether this shim runs `image`. The node asks the shims in order and takes the first that accepts.
    fn can_handle(&self, image: &Image) -> bool;

    /// The node's memory a container with `limits` may take outside any cgroup of its own (a wasm guest
    /// lives in the agent, and may grow to its limit or the shim's default), which the node counts against
    /// its allocatable memory before it admits the pod. None where a container's memory is its own cgroup's,
    /// counted by its requests as the scheduler counts it.
    fn memory_held(&self, limits: &Limits) -> Option<u64> {
        let _ = limits;
        None
    }

    /// Starts a container. Returns when it runs (or failed to start), not when it ends.
    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, ShimError>;

    /// Takes over container `id`, started by an earlier run of the agent, if it still runs: its output
    /// flows to `output` from now on. None when there is no such container (an ended one is cleaned up) or
    /// the runtime's containers do not outlive the agent.
    async fn adopt(&self, id: &str, output: Arc<dyn OutputSink>) -> Option<Box<dyn Container>> {
        let _ = (id, output);
        None
    }

    /// Stops and removes every container an earlier run of the agent left that is not in `keep` (those of
    /// pods deleted while the agent was away). Returns how many were removed.
    async fn remove_others(&self, keep: &std::collections::HashSet<String>) -> usize {
        let _ = keep;
        0
    }

    /// Drops what the shim made from image layers (unpacked copies) for layers whose digests are not in
    /// `live`; the node calls it after its image garbage collection.
    async fn release_layers(&self, live: &std::collections::HashSet<String>) {
        let _ = live;
    }
}

/// A started container.
#[async_trait::async_trait]
pub trait Container: Send + Sync {
    /// Waits for the container to end. Cancel-safe: it can be called again after a cancelled call.
    async fn wait(&mut self) -> Exit;

    /// Asks the container to stop and forces it after `grace` (SIGTERM then SIGKILL; a wasm guest, which has
    /// no signals, is interrupted at once).
    fn stop(&self, grace: Duration);

    /// Runs further processes in this container while it runs (`kubectl exec`). `None` where the runtime
    /// has nothing to start a second process in (a wasm guest is one instance).
    fn exec(&self) -> Option<Arc<dyn Exec>> {
        None
    }

    /// What the container uses of the node, readable while it runs (the node's metrics). `None` where the
    /// runtime cannot tell.
    fn meter(&self) -> Option<Arc<dyn Meter>> {
        None
    }

    /// Requests handed to the container inside the agent, for a runtime that serves its guest's HTTP there
    /// (a wasi:http component): the node's ingress then skips the socket to the container's port. `None`
    /// for a container that serves its own sockets.
    fn http(&self) -> Option<Arc<dyn HttpService>> {
        None
    }
}

/// The body of a response an in-process [`HttpService`] gives.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A container's HTTP server, reached in the agent's own process: the same requests its port takes,
/// answered the same way, without a connection.
#[async_trait::async_trait]
pub trait HttpService: Send + Sync {
    /// The container port whose requests this serves.
    fn port(&self) -> u16;

    /// Serves one request from `client` (the address the guest is told its client has).
    async fn serve(
        &self,
        request: http::Request<hyper::body::Incoming>,
        client: std::net::SocketAddr,
    ) -> http::Response<HttpBody>;
}

/// Reads a running container's use of the node, as the kubelet reads a container's cgroup.
pub trait Meter: Send + Sync {
    fn usage(&self) -> Usage;
}

/// A container's use of the node at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the container started, in nanoseconds (a counter).
    pub cpu_nanos: u64,
    /// Memory the container holds that the node cannot take back without it (the kubelet's working set:
    /// a cgroup's usage less its inactive file cache; a wasm guest's memories and tables).
    pub memory_working_set_bytes: u64,
    /// Requests answered since the container started, for a container whose runtime serves HTTP for it (a
    /// wasi:http guest); None where the runtime does not see its requests.
    pub http_requests: Option<u64>,
    /// Instances of the guest alive now, for a runtime that makes one per request (wasm).
    pub instances: Option<u64>,
}

/// A command to run inside a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Whether the caller sends input; without it the process reads from an empty stdin.
    pub stdin: bool,
    /// Run on a terminal: stdout and stderr become one stream, and the size can change.
    pub tty: bool,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// A process started by [`Exec::exec`]. Dropping it before the process ended kills the process.
pub struct ExecProcess {
    /// The process's input, when asked for; dropping the sender closes it (end of file).
    pub stdin: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Output as it comes (all of it on [`Stream::Stdout`] with a tty); ends when the process and everything
    /// it started closed their output.
    pub output: tokio::sync::mpsc::Receiver<(Stream, Vec<u8>)>,
    pub control: Box<dyn ExecControl>,
}

#[async_trait::async_trait]
pub trait ExecControl: Send + Sync {
    /// Sets the terminal's size; nothing without a tty.
    fn resize(&self, size: TerminalSize);

    /// Waits for the process to end: its exit code, 128 + the signal's number if a signal ended it.
    /// Cancel-safe: it can be called again after a cancelled call.
    async fn wait(&mut self) -> i32;
}

/// Starts processes in one running container.
#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// Starts `request.argv` in the container's namespaces and cgroup, with the environment, working
    /// directory and user of its main process. Fails when the container no longer runs or the command cannot
    /// be started.
    async fn exec(&self, request: ExecRequest) -> Result<ExecProcess, ShimError>;
}
