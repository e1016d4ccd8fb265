//! The shim interface: how the node agent runs one container, whatever the runtime.
//!
//! A shim gets a [`ContainerSpec`] (an image already in the local store, the argv, environment, mounts,
//! limits, ports and where output goes) and gives back a running [`Container`] to wait on or stop. The node
//! turns a Pod into specs; shims never see a Pod, the API or the store (the runwasi `RuntimeContext` idea).
//!
//! The node picks a shim per container, never per pod: the first whose [`Shim::can_handle`] accepts the
//! image (wasm first, then OCI), unless the pod's RuntimeClass forces one.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// The address ports are bound on (the node's or, with pod networking, the pod's).
    pub host_ip: std::net::IpAddr,
    pub output: Arc<dyn OutputSink>,
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

    /// Starts a container. Returns when it runs (or failed to start), not when it ends.
    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, ShimError>;
}

/// A started container.
#[async_trait::async_trait]
pub trait Container: Send + Sync {
    /// Waits for the container to end. Cancel-safe: it can be called again after a cancelled call.
    async fn wait(&mut self) -> Exit;

    /// Asks the container to stop and forces it after `grace` (SIGTERM then SIGKILL; a wasm guest, which has
    /// no signals, is interrupted at once).
    fn stop(&self, grace: Duration);
}
