//! Compiled code on disk: Cranelift runs once per module and engine, later starts load the machine code.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use skiff_shim::ShimError;
use wasmtime::Engine;
use wasmtime::Module;
use wasmtime::component::Component;

/// The first four bytes of every WebAssembly binary (`\0asm`).
const WASM_MAGIC: [u8; 4] = *b"\0asm";
/// The version field of a core module (1, little endian). Components use a different one (`0d 00 01 00`:
/// version 13 of the pre-standard encoding, layer 1), so this field alone tells the two apart.
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// A compiled guest, ready to be linked.
pub(crate) enum Compiled {
    Module(Module),
    Component(Component),
}

/// Whether `bytes` hold a core module (`false`) or a component (`true`); not wasm at all is an error.
pub(crate) fn is_component(bytes: &[u8], what: &str) -> Result<bool, ShimError> {
    if bytes.len() < 8 || bytes[..4] != WASM_MAGIC {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(ShimError::InvalidImage(format!(
            "image layer is not a WebAssembly module: {what} starts with [{}], not \\0asm",
            head.join(" ")
        )));
    }
    Ok(bytes[4..8] != CORE_MODULE_VERSION)
}

/// Compiles guests, or loads what an earlier compile left in the cache directory.
pub(crate) struct DiskCache {
    engine: Engine,
    dir: PathBuf,
    /// sha256 of the engine's precompile compatibility hash: code compiled by another wasmtime version or
    /// with other settings gets another file name instead of failing to load.
    engine_key: String,
    compilations: AtomicU64,
    temp_counter: AtomicU64,
}

impl DiskCache {
    pub(crate) fn new(engine: Engine, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(hasher.0.finalize());
        Ok(DiskCache { engine, dir, engine_key, compilations: AtomicU64::new(0), temp_counter: AtomicU64::new(0) })
    }

    /// How many times Cranelift compiled a guest (cache misses) since this cache was made.
    pub(crate) fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Compiles or loads `bytes`. Blocking (file IO, Cranelift): call it from `spawn_blocking`.
    pub(crate) fn load(&self, bytes: &[u8], what: &str) -> Result<Compiled, ShimError> {
        let component = is_component(bytes, what)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let path = self.dir.join(format!("{digest}-{}.cwasm", &self.engine_key[..32]));
        if path.is_file() {
            match self.deserialize(&path, component) {
                Ok(compiled) => return Ok(compiled),
                // A torn or foreign file: compile again and replace it.
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "discarding unusable compiled wasm")
                }
            }
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let invalid = |e: wasmtime::Error| ShimError::InvalidImage(format!("invalid WebAssembly in {what}: {e:#}"));
        let (compiled, serialized) = if component {
            let c = Component::new(&self.engine, bytes).map_err(invalid)?;
            let s = c.serialize();
            (Compiled::Component(c), s)
        } else {
            let m = Module::new(&self.engine, bytes).map_err(invalid)?;
            let s = m.serialize();
            (Compiled::Module(m), s)
        };
        // The cache only saves time: failing to write it must not fail the start.
        match serialized
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|s| self.write_atomically(&path, &s))
        {
            Ok(()) => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot cache compiled wasm"),
        }
        Ok(compiled)
    }

    fn deserialize(&self, path: &Path, component: bool) -> wasmtime::Result<Compiled> {
        // SAFETY: deserializing trusts the file to be wasmtime's own output for this engine. It is: the file
        // is named after the sha256 of the source bytes and the engine's compatibility hash, was written only
        // by `load` above (via a temporary file renamed into place, so never partially), and lives in the
        // agent's cache directory, which nothing but the agent writes.
        unsafe {
            Ok(if component {
                Compiled::Component(Component::deserialize_file(&self.engine, path)?)
            } else {
                Compiled::Module(Module::deserialize_file(&self.engine, path)?)
            })
        }
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        })();
        if result.is_err() {
            // Best effort: a leftover temp file is harmless apart from its size.
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

/// Feeds `Hash` output into sha256, so the engine's compatibility hash becomes a stable file-name part
/// (std's `DefaultHasher` may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_core_modules_and_components() {
        assert!(!is_component(b"\0asm\x01\0\0\0", "m").unwrap());
        assert!(is_component(b"\0asm\x0d\0\x01\0", "c").unwrap());
    }

    #[test]
    fn rejects_what_is_not_wasm() {
        for bytes in [&b"\x7fELF\x02\x01\x01\0"[..], b"#!/bin/sh\n", b"\0as", b""] {
            let err = is_component(bytes, "layer 0").unwrap_err();
            assert!(
                matches!(&err, ShimError::InvalidImage(m) if m.starts_with("image layer is not a WebAssembly module")),
                "{err}"
            );
        }
    }

    #[test]
    fn compiles_once_then_loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let cache = DiskCache::new(engine.clone(), dir.path().to_path_buf()).unwrap();
        assert!(matches!(cache.load(&wasm, "m").unwrap(), Compiled::Module(_)));
        assert!(matches!(cache.load(&wasm, "m").unwrap(), Compiled::Module(_)));
        assert_eq!(cache.compilations(), 1);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "no temp file left: {files:?}");

        let again = DiskCache::new(engine, dir.path().to_path_buf()).unwrap();
        again.load(&wasm, "m").unwrap();
        assert_eq!(again.compilations(), 0);
    }

    #[test]
    fn a_corrupt_cache_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = wat::parse_str("(module)").unwrap();
        let cache = DiskCache::new(Engine::default(), dir.path().to_path_buf()).unwrap();
        cache.load(&wasm, "m").unwrap();
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        std::fs::write(&file, b"garbage").unwrap();
        cache.load(&wasm, "m").unwrap();
        assert_eq!(cache.compilations(), 2);
        assert!(std::fs::read(&file).unwrap().len() > 7);
    }

    #[test]
    fn malformed_wasm_reports_wasmtimes_message() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(Engine::default(), dir.path().to_path_buf()).unwrap();
        let err = cache.load(b"\0asm\x01\0\0\0\x01\x05garbage", "layer 0").err().unwrap();
        assert!(
            matches!(&err, ShimError::InvalidImage(m) if m.starts_with("invalid WebAssembly in layer 0: ")),
            "{err}"
        );
    }
}
