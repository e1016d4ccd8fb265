#![doc = include_str!("../README.md")]

mod cache;
mod engine;
mod http;
mod netns;
mod outbound;
mod run;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use skiff_shim::{Container, ContainerSpec, Image, Layer, ShimError};
use tokio::sync::OnceCell;
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use engine::Allocator;
pub use run::{STOPPED_EXIT_CODE, TRAP_EXIT_CODE, WasmContainer};

use cache::{Compiled, DiskCache};
use state::{P1State, P2State};

/// Media types of image configs that mark a wasm artifact.
const WASM_CONFIG_MEDIA_TYPES: [&str; 2] = [
    // CNCF TAG Runtime "Wasm OCI Artifact layout" (wkg, cargo-component, wasmCloud, containerd).
    "application/vnd.wasm.config.v0+json",
    // wasm-to-oci.
    "application/vnd.wasm.config.v1+json",
];

/// Media types of layers that hold a module or component.
const WASM_LAYER_MEDIA_TYPES: [&str; 3] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// How many guests may be live at once when the pooling allocator is used: one per running container,
/// plus one per in-flight request of a wasi:http container.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// The memory a wasm container without `limits.memory` may use (`--wasm-default-memory-limit`).
pub const DEFAULT_MEMORY_LIMIT: u64 = 128 << 20;

/// Settings of the wasm shim.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Where compiled machine code is kept between starts (and agent restarts). Only the agent may write it:
    /// its files are loaded as trusted native code, so the shim makes it 0700 and refuses one of another user.
    pub cache_dir: PathBuf,
    /// The pooling allocator's capacity in live instances (see [`DEFAULT_MAX_INSTANCES`]).
    pub max_instances: u32,
    /// The memory limit of guests whose container sets none (see [`DEFAULT_MEMORY_LIMIT`]).
    pub default_memory_limit: u64,
}

impl WasmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        WasmConfig {
            cache_dir: cache_dir.into(),
            max_instances: DEFAULT_MAX_INSTANCES,
            default_memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// Why the shim could not be created.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// wasmtime rejected the engine configuration.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// The compiled-code cache directory cannot be created, emptied or made private to the agent.
    #[error("cannot set up the wasm cache directory {path}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The compiled-code cache directory belongs to another user, who could plant native code in it for the
    /// agent to run.
    #[error("the wasm cache directory {path} belongs to uid {owner}, not to the agent's uid {agent}")]
    CacheDirOwner { path: PathBuf, owner: u32, agent: u32 },
    /// The thread that advances the epoch could not be spawned.
    #[error("cannot start the wasm epoch thread")]
    Ticker(#[source] std::io::Error),
    /// The WASI host functions could not be linked.
    #[error("cannot set up the wasi linker: {0}")]
    Linker(String),
}

/// Runs wasm images inside the agent process: WASI preview1 modules (`_start`), WASI 0.2 command components
/// (`wasi:cli/run`) and wasi:http proxy components (one fresh instance per request). One wasmtime engine per
/// node; guests are tokio tasks on the caller's runtime.
pub struct WasmShim {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    allocator: Allocator,
    disk: DiskCache,
    p1_linker: wasmtime::Linker<P1State>,
    p2_linker: wasmtime::component::Linker<P2State>,
    /// Linked guests by layer digest, so a repeated start skips reading, hashing and loading.
    loaded: Mutex<HashMap<String, Arc<OnceCell<Arc<Guest>>>>>,
    default_memory_limit: u64,
    /// The pool's capacity in live instances, which no one container's requests may take all of.
    max_instances: u32,
    /// Held by every running guest too (through `Inner`): the epoch keeps ticking while any guest runs.
    _ticker: engine::Ticker,
}

/// A guest linked against the host and ready to instantiate.
pub(crate) enum Guest {
    Module(InstancePre<P1State>),
    Command(CommandPre<P2State>),
    Http(ProxyPre<P2State>),
}

impl WasmShim {
    pub fn new(config: WasmConfig) -> Result<Self, WasmError> {
        let (engine, allocator) = engine::build(config.max_instances)?;
        let disk = DiskCache::new(engine.clone(), config.cache_dir.clone())?;
        let linker_err = |e: wasmtime::Error| WasmError::Linker(format!("{e:#}"));
        let mut p1_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi).map_err(linker_err)?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker).map_err(linker_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2_linker).map_err(linker_err)?;
        let ticker = engine::Ticker::start(engine.clone())?;
        Ok(WasmShim {
            inner: Arc::new(Inner {
                engine,
                allocator,
                disk,
                p1_linker,
                p2_linker,
                loaded: Mutex::new(HashMap::new()),
                default_memory_limit: config.default_memory_limit,
                max_instances: config.max_instances,
                _ticker: ticker,
            }),
        })
    }

    /// The instance allocator the engine got (pooling unless the host refused the reservation).
    pub fn allocator(&self) -> Allocator {
        self.inner.allocator
    }

    /// How many times a guest was compiled by Cranelift (not found in the cache directory) by this shim.
    pub fn compilations(&self) -> u64 {
        self.inner.disk.compilations()
    }

    /// Compiles (or loads) and links the image's guest, or returns the one linked before.
    async fn guest(&self, image: &Image) -> Result<Arc<Guest>, ShimError> {
        let layer = wasm_layer(image)?.clone();
        if layer.digest.is_empty() {
            // Without a content digest the memory cache cannot know the file is unchanged.
            return self.link(layer).await;
        }
        let cell = {
            let mut loaded = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner());
            loaded.entry(layer.digest.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.link(layer)).await.cloned()
    }

    async fn link(&self, layer: Layer) -> Result<Arc<Guest>, ShimError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.link_blocking(&layer))
            .await
            .map_err(|e| ShimError::Setup { message: format!("wasm compilation task failed: {e}"), source: None })?
    }
}

impl Inner {
    fn link_blocking(&self, layer: &Layer) -> Result<Arc<Guest>, ShimError> {
        let what = format!(
            "layer {}",
            if layer.digest.is_empty() { layer.path.display().to_string() } else { layer.digest.clone() }
        );
        let bytes = std::fs::read(&layer.path).map_err(|e| ShimError::Setup {
            message: format!("cannot read {what} from {}: {e}", layer.path.display()),
            source: Some(Box::new(e)),
        })?;
        let guest = match self.disk.load(&bytes, &what)? {
            Compiled::Module(module) => self.link_module(&module)?,
            Compiled::Component(component) => self.link_component(&component)?,
        };
        Ok(Arc::new(guest))
    }

    fn link_module(&self, module: &Module) -> Result<Guest, ShimError> {
        if !matches!(module.get_export("_start"), Some(wasmtime::ExternType::Func(_))) {
            return Err(ShimError::InvalidImage(
                "the WebAssembly module exports no _start function (a WASI command is expected)".into(),
            ));
        }
        let pre = self
            .p1_linker
            .instantiate_pre(module)
            .map_err(|e| ShimError::InvalidImage(format!("cannot link the WebAssembly module: {e:#}")))?;
        Ok(Guest::Module(pre))
    }

    fn link_component(&self, component: &Component) -> Result<Guest, ShimError> {
        let pre = self
            .p2_linker
            .instantiate_pre(component)
            .map_err(|e| ShimError::InvalidImage(format!("cannot link the WebAssembly component: {e:#}")))?;
        if let Ok(proxy) = ProxyPre::new(pre.clone()) {
            return Ok(Guest::Http(proxy));
        }
        CommandPre::new(pre).map(Guest::Command).map_err(|_| {
            ShimError::InvalidImage(
                "the WebAssembly component exports neither wasi:cli/run nor wasi:http/incoming-handler".into(),
            )
        })
    }
}

/// The layer holding the guest: the first with a wasm media type, else layer 0 (the CNCF layout's rule).
fn wasm_layer(image: &Image) -> Result<&Layer, ShimError> {
    image
        .layers
        .iter()
        .find(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
        .or_else(|| image.layers.first())
        .ok_or_else(|| ShimError::InvalidImage(format!("image {} has no layers", image.reference)))
}

#[async_trait::async_trait]
impl skiff_shim::Shim for WasmShim {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn can_handle(&self, image: &Image) -> bool {
        WASM_CONFIG_MEDIA_TYPES.contains(&image.config_media_type.as_str())
            || image.architecture == "wasm"
            || image.layers.iter().any(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
    }

    /// A guest's memory is the agent's, up to its limit or the node's default.
    fn memory_held(&self, limits: &skiff_shim::Limits) -> Option<u64> {
        Some(limits.memory_bytes.unwrap_or(self.inner.default_memory_limit))
    }

    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, ShimError> {
        let guest = self.guest(&spec.image).await?;
        let container = run::start(self.inner.clone(), &guest, spec).await?;
        Ok(Box::new(container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_shim::Shim;

    fn image(config: &str, arch: &str, layers: &[&str]) -> Image {
        Image {
            config_media_type: config.into(),
            architecture: arch.into(),
            layers: layers
                .iter()
                .map(|m| Layer { media_type: (*m).into(), digest: String::new(), path: PathBuf::new() })
                .collect(),
            ..Image::default()
        }
    }

    #[tokio::test]
    async fn recognises_wasm_artifacts_only() {
        let dir = tempfile::tempdir().unwrap();
        let shim = WasmShim::new(WasmConfig { max_instances: 10, ..WasmConfig::new(dir.path()) }).unwrap();
        assert_eq!(shim.name(), "wasm");
        let oci_config = "application/vnd.oci.image.config.v1+json";
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(shim.can_handle(&image("application/vnd.wasm.config.v0+json", "", &[])));
        assert!(shim.can_handle(&image("application/vnd.wasm.config.v1+json", "", &[])));
        assert!(shim.can_handle(&image(oci_config, "wasm", &[tar])));
        for layer in WASM_LAYER_MEDIA_TYPES {
            assert!(shim.can_handle(&image(oci_config, "amd64", &[tar, layer])), "{layer}");
        }
        assert!(!shim.can_handle(&image(oci_config, "amd64", &[tar])));
        assert!(!shim.can_handle(&Image::default()));
    }

    #[tokio::test]
    async fn falls_back_to_on_demand_allocation_when_the_pool_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let small = WasmShim::new(WasmConfig { max_instances: 4, ..WasmConfig::new(dir.path()) }).unwrap();
        assert_eq!(small.allocator(), Allocator::Pooling);
        // 2 × 10^8 memory slots of 4 GiB each cannot be reserved in a 128 TiB address space.
        let huge = WasmShim::new(WasmConfig { max_instances: 100_000_000, ..WasmConfig::new(dir.path()) }).unwrap();
        assert_eq!(huge.allocator(), Allocator::OnDemand);
    }

    #[test]
    fn picks_the_first_wasm_layer_else_layer_zero() {
        let img = image("", "", &["application/vnd.wasm.content.layer.v1+data", "application/wasm"]);
        assert_eq!(wasm_layer(&img).unwrap().media_type, "application/wasm");
        let img = image("", "wasm", &["application/octet-stream", "x"]);
        assert_eq!(wasm_layer(&img).unwrap().media_type, "application/octet-stream");
        assert!(matches!(wasm_layer(&image("", "wasm", &[])), Err(ShimError::InvalidImage(_))));
    }
}
