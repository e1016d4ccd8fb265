//! Compiled code on disk: Cranelift runs once per module and engine, later starts load the machine code.
//!
//! Loading a `.cwasm` file makes the agent run its bytes as native code, so two guards stand before
//! wasmtime sees them. The first and real one: only the agent can write the directory. It is made 0700 and
//! must be the agent's user's; one left writable by others is emptied, since anything in it may be theirs.
//! A digest kept anywhere an attacker can write (in the file's name, inside it, next to it) proves nothing
//! against that attacker, who can write a matching one; the directory's mode is what keeps them out.
//! The second: each file's bytes are read once, their sha256 checked, and those same bytes deserialized, so
//! a file torn by a crash, corrupted on disk or replaced after it was written is compiled again, never run.
//! The digest of a file this cache wrote is kept in memory, which nothing outside the process can change;
//! a file from an earlier run is checked against `<file>.sha256` (`sha256sum`'s format), written after it
//! with the same temp-file-and-rename, so a crash between the two leaves a file with no digest, which is
//! discarded like a wrong one.

use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use skiff_shim::ShimError;
use wasmtime::Engine;
use wasmtime::Module;
use wasmtime::component::Component;

use crate::WasmError;

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

/// A sha256, raw.
type Sha256Digest = [u8; 32];

/// Compiles guests, or loads what an earlier compile left in the cache directory.
pub(crate) struct DiskCache {
    engine: Engine,
    dir: PathBuf,
    /// sha256 of the engine's precompile compatibility hash: code compiled by another wasmtime version or
    /// with other settings gets another file name instead of failing to load.
    engine_key: String,
    /// The sha256 of each file as this cache wrote it or first found it sound. It decides over the file's
    /// `.sha256`, which sits on disk with the file and could be replaced with it.
    digests: Mutex<HashMap<PathBuf, Sha256Digest>>,
    compilations: AtomicU64,
    temp_counter: AtomicU64,
}

impl DiskCache {
    /// A cache in `dir`, which is made private to the agent first (see the module's docs).
    pub(crate) fn new(engine: Engine, dir: PathBuf) -> Result<Self, WasmError> {
        make_private(&dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(hasher.0.finalize());
        Ok(DiskCache {
            engine,
            dir,
            engine_key,
            digests: Mutex::default(),
            compilations: AtomicU64::new(0),
            temp_counter: AtomicU64::new(0),
        })
    }

    /// Refuses a writable mount that would hand a guest the cache: its directory, one inside it, or one that
    /// holds it (a hostPath of `/`, allowed in a privileged namespace). Read-only mounts may show it: every
    /// file's digest is checked before its code is loaded.
    pub(crate) fn refuse_writable(&self, mounts: &[skiff_shim::Mount]) -> Result<(), ShimError> {
        let cache = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        for mount in mounts.iter().filter(|mount| !mount.read_only) {
            // A path that does not resolve holds nothing yet; the mount itself then fails.
            let Ok(host) = mount.host_path.canonicalize() else { continue };
            if host.starts_with(&cache) || cache.starts_with(&host) {
                return Err(ShimError::Config(format!(
                    "{} mounted at {} holds the agent's compiled-code cache, which no wasm guest may write: mount \
                     it readOnly",
                    mount.host_path.display(),
                    mount.container_path
                )));
            }
        }
        Ok(())
    }

    /// How many times Cranelift compiled a guest (cache misses) since this cache was made.
    pub(crate) fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Compiles or loads `bytes`. Blocking (file IO, Cranelift): call it from `spawn_blocking`.
    pub(crate) fn load(&self, bytes: &[u8], what: &str) -> Result<Compiled, ShimError> {
        let component = is_component(bytes, what)?;
        let path = self.path(bytes);
        match self.read_verified(&path).and_then(|code| code.map(|code| self.deserialize(&code, component)).transpose())
        {
            Ok(Some(compiled)) => return Ok(compiled),
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "discarding compiled wasm, compiling again");
                self.discard(&path);
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
        match serialized.map_err(|e| io::Error::other(format!("{e:#}"))).and_then(|s| self.store(&path, &s)) {
            Ok(()) => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot cache compiled wasm"),
        }
        Ok(compiled)
    }

    /// Where the code compiled from `wasm` by this engine is kept.
    fn path(&self, wasm: &[u8]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", hex::encode(Sha256::digest(wasm)), &self.engine_key[..32]))
    }

    /// The bytes of `path`, read once, when their sha256 is the one recorded for them; `None` when there is
    /// no such file.
    fn read_verified(&self, path: &Path) -> Result<Option<Vec<u8>>, Unusable> {
        let code = match std::fs::read(path) {
            Ok(code) => code,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Unusable::Read { path: path.to_path_buf(), error }),
        };
        let remembered = self.digests().get(path).copied();
        let expected = match remembered {
            Some(digest) => digest,
            None => recorded_digest(path)?,
        };
        // One pass of sha256 over the code: ~5 ms for 8 MB in an optimised build (SHA-NI, ~1.7 GB/s), where
        // compiling it again takes seconds.
        let actual: Sha256Digest = Sha256::digest(&code).into();
        if actual != expected {
            return Err(Unusable::Mismatch { expected: hex::encode(expected), actual: hex::encode(actual) });
        }
        // From now on the file is held to this digest, whatever becomes of its `.sha256`.
        self.digests().insert(path.to_path_buf(), expected);
        Ok(Some(code))
    }

    fn deserialize(&self, code: &[u8], component: bool) -> Result<Compiled, Unusable> {
        // SAFETY: deserializing trusts `code` to be wasmtime's own output for this engine. It is: it was read
        // from a directory only the agent can write (`make_private`), where nothing but `store` writes, and
        // its sha256 is the one `store` recorded when it wrote it (this process, in memory, or an earlier
        // one, in the `.sha256` file); the file is named after the source's sha256 and the engine's
        // compatibility hash. wasmtime copies these very bytes, which were hashed, so nothing can change them
        // between the check and the load.
        let compiled = unsafe {
            if component {
                Component::deserialize(&self.engine, code).map(Compiled::Component)
            } else {
                Module::deserialize(&self.engine, code).map(Compiled::Module)
            }
        };
        compiled.map_err(Unusable::Deserialize)
    }

    /// Writes `code` at `path` and its digest next to it (in that order: a crash between leaves a file
    /// without a digest, which is discarded), and remembers the digest.
    fn store(&self, path: &Path, code: &[u8]) -> io::Result<()> {
        let digest: Sha256Digest = Sha256::digest(code).into();
        self.write_atomically(path, code)?;
        self.digests().insert(path.to_path_buf(), digest);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        self.write_atomically(&digest_path(path), format!("{}  {name}\n", hex::encode(digest)).as_bytes())
    }

    /// Forgets `path` and deletes it and its digest. Best effort: what is left is checked again next time.
    fn discard(&self, path: &Path) {
        self.digests().remove(path);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(digest_path(path));
    }

    fn digests(&self) -> MutexGuard<'_, HashMap<PathBuf, Sha256Digest>> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            // Never an existing file or a link someone left at that name.
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
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

/// Why a file of the cache is deleted and its guest compiled again rather than loaded.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// The file or its `.sha256` cannot be read.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    /// Its `.sha256` is missing or holds no sha256: written by an older agent, or a crash came between the
    /// two writes.
    #[error("no sha256 is recorded for it")]
    NoDigest,
    /// Its bytes are not the ones written: torn, corrupted or replaced.
    #[error("its sha256 is {actual}, not the recorded {expected}")]
    Mismatch { expected: String, actual: String },
    /// wasmtime refuses it although its digest matched.
    #[error("wasmtime cannot load it: {0:#}")]
    Deserialize(wasmtime::Error),
}

/// `<path>.sha256`, where the digest of the file at `path` is kept for later runs.
fn digest_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The digest `<path>.sha256` records: the first word, as `sha256sum` writes it (so `sha256sum -c` checks
/// the directory by hand).
fn recorded_digest(path: &Path) -> Result<Sha256Digest, Unusable> {
    let file = digest_path(path);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unusable::NoDigest),
        Err(error) => return Err(Unusable::Read { path: file, error }),
    };
    let mut digest = Sha256Digest::default();
    hex::decode_to_slice(text.split_whitespace().next().unwrap_or_default(), &mut digest)
        .map_err(|_| Unusable::NoDigest)?;
    Ok(digest)
}

/// Makes `dir` a directory only the agent's user may enter or write, as the agent's data directory is made.
/// One that others could write is emptied first: whatever is in it, digests included, may be theirs.
fn make_private(dir: &Path) -> Result<(), WasmError> {
    let io = |source| WasmError::CacheDir { path: dir.to_path_buf(), source };
    let create = || DirBuilder::new().recursive(true).mode(0o700).create(dir);
    create().map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    // SAFETY: geteuid has no arguments and cannot fail.
    let agent = unsafe { libc::geteuid() };
    if meta.uid() != agent {
        // Its owner may change its mode and write in it whenever they like: nothing done here would last.
        return Err(WasmError::CacheDirOwner { path: dir.to_path_buf(), owner: meta.uid(), agent });
    }
    if meta.mode() & 0o022 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %format_args!("{:o}", meta.mode() & 0o7777),
            "the wasm cache directory was writable by other users: emptying it"
        );
        std::fs::remove_dir_all(dir).map_err(io)?;
        create().map_err(io)?;
    }
    // Exactly 0700: an older agent made it 0755, and the umask may have taken bits from the creation mode.
    std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io)
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
    fn no_guest_may_write_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = open(&tmp.path().join("agent/wasm-cache"));
        std::fs::create_dir_all(tmp.path().join("agent/wasm-cache/sub")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        let mount = |host: &str, read_only| skiff_shim::Mount {
            host_path: tmp.path().join(host),
            container_path: "/data".into(),
            read_only,
        };
        for host in ["", "agent", "agent/wasm-cache", "agent/wasm-cache/sub", "agent/../agent/wasm-cache"] {
            let err = cache.refuse_writable(&[mount("elsewhere", false), mount(host, false)]).unwrap_err();
            assert!(matches!(&err, ShimError::Config(m) if m.contains("compiled-code cache")), "{host}: {err}");
            assert!(cache.refuse_writable(&[mount(host, true)]).is_ok(), "{host} read-only");
        }
        assert!(cache.refuse_writable(&[mount("elsewhere", false), mount("missing", false)]).is_ok());
    }

    /// A core module exporting one function named `name`.
    fn module(name: &str) -> Vec<u8> {
        wat::parse_str(format!("(module (func (export \"{name}\")))")).unwrap()
    }

    fn open(dir: &Path) -> DiskCache {
        DiskCache::new(Engine::default(), dir.to_path_buf()).unwrap()
    }

    fn exports(compiled: Compiled) -> Vec<String> {
        let Compiled::Module(module) = compiled else { panic!("a component") };
        module.exports().map(|e| e.name().to_string()).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn compiles_once_then_loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = module("_start");
        let cache = open(dir.path());
        assert!(matches!(cache.load(&wasm, "m").unwrap(), Compiled::Module(_)));
        assert!(matches!(cache.load(&wasm, "m").unwrap(), Compiled::Module(_)));
        assert_eq!(cache.compilations(), 1);
        let file = cache.path(&wasm);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names(dir.path()), [name.clone(), format!("{name}.sha256")], "no temp file left");
        let code = std::fs::read(&file).unwrap();
        let recorded = std::fs::read_to_string(digest_path(&file)).unwrap();
        assert_eq!(recorded, format!("{}  {name}\n", hex::encode(Sha256::digest(code))), "sha256sum's format");

        let again = open(dir.path());
        assert_eq!(exports(again.load(&wasm, "m").unwrap()), ["_start"]);
        assert_eq!(again.compilations(), 0);
    }

    #[test]
    fn a_replaced_file_is_compiled_again_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (module("a"), module("b"));
        let cache = open(dir.path());
        cache.load(&a, "a").unwrap();
        cache.load(&b, "b").unwrap();
        let (file_a, file_b) = (cache.path(&a), cache.path(&b));
        // Sound code, but another module's: wasmtime alone would load it. The digest this cache remembers
        // decides, even over a `.sha256` replaced with the file.
        std::fs::copy(&file_b, &file_a).unwrap();
        std::fs::copy(digest_path(&file_b), digest_path(&file_a)).unwrap();
        assert_eq!(exports(cache.load(&a, "a").unwrap()), ["a"]);
        assert_eq!(cache.compilations(), 3);

        // A later agent checks against the `.sha256` the file was written with.
        let restarted = open(dir.path());
        std::fs::copy(&file_b, &file_a).unwrap();
        assert_eq!(exports(restarted.load(&a, "a").unwrap()), ["a"]);
        assert_eq!(restarted.compilations(), 1);
        assert_eq!(exports(open(dir.path()).load(&a, "a").unwrap()), ["a"], "the new file and digest are sound");
    }

    #[test]
    fn a_torn_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = module("_start");
        let cache = open(dir.path());
        cache.load(&wasm, "m").unwrap();
        let file = cache.path(&wasm);
        let code = std::fs::read(&file).unwrap();
        std::fs::write(&file, &code[..code.len() / 2]).unwrap();
        let restarted = open(dir.path());
        restarted.load(&wasm, "m").unwrap();
        assert_eq!(restarted.compilations(), 1);
        assert_eq!(std::fs::read(&file).unwrap().len(), code.len());
    }

    #[test]
    fn a_file_without_a_digest_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = module("_start");
        let file = open(dir.path()).path(&wasm);
        // What an older agent left, or a crash between the two writes.
        let engine = Engine::default();
        std::fs::write(&file, Module::new(&engine, &wasm).unwrap().serialize().unwrap()).unwrap();
        let cache = open(dir.path());
        cache.load(&wasm, "m").unwrap();
        assert_eq!(cache.compilations(), 1);
        assert!(digest_path(&file).is_file());
        std::fs::write(digest_path(&file), "not a digest\n").unwrap();
        let restarted = open(dir.path());
        restarted.load(&wasm, "m").unwrap();
        assert_eq!(restarted.compilations(), 1);
    }

    #[test]
    fn the_directory_is_made_private_and_emptied_when_others_could_write_it() {
        let parent = tempfile::tempdir().unwrap();
        for (mode, kept) in [(0o777, false), (0o1773, false), (0o755, true), (0o700, true)] {
            let dir = parent.path().join(format!("{mode:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("planted.cwasm"), b"code").unwrap();
            std::fs::set_permissions(&dir, Permissions::from_mode(mode)).unwrap();
            open(&dir);
            assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700, "{mode:o}");
            assert_eq!(dir.join("planted.cwasm").exists(), kept, "{mode:o}");
        }
        let created = parent.path().join("new/cache");
        open(&created);
        assert_eq!(std::fs::metadata(&created).unwrap().mode() & 0o7777, 0o700);
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
