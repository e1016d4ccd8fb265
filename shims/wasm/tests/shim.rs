//! The wasm shim against real guests: WASIp1 modules and components written as WAT text.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use skiff_shim::{
    Container, ContainerSpec, Exit, ExitReason, Image, Layer, Limits, Mount, OutputSink, Shim, ShimError, Stream,
};
use skiff_wasm::{WasmConfig, WasmShim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WASI: &str = "wasi_snapshot_preview1";

/// Prints its argv and environment (NUL-separated, as WASI hands them over), "err" on stderr, exits 3.
fn hello() -> String {
    format!(
        r#"(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (import "{WASI}" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "{WASI}" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "{WASI}" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "{WASI}" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "err\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 32) (i32.const 36)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (call $write (i32.const 1) (i32.const 2048) (i32.load (i32.const 36)))
    (drop (call $environ_sizes_get (i32.const 40) (i32.const 44)))
    (drop (call $environ_get (i32.const 4096) (i32.const 8192)))
    (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 44)))
    (call $write (i32.const 2) (i32.const 16) (i32.const 4))
    (call $proc_exit (i32.const 3))))"#
    )
}

/// Reads `in.txt` from the first preopen (fd 3), following links as wasi-libc's `open` does, and prints
/// it, then tries to create `out.txt` there and exits with the errno of that attempt (0: created). A failed
/// read exits 100 + errno.
fn files() -> String {
    format!(
        r#"(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 300) "in.txt")
  (data (i32.const 310) "out.txt")
  (func (export "_start") (local $errno i32)
    ;; lookup flags SYMLINK_FOLLOW = 1, rights FD_READ = 2
    (local.set $errno (call $path_open (i32.const 3) (i32.const 1) (i32.const 300) (i32.const 6)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 400)))
    (if (local.get $errno) (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno)))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 100))
    (drop (call $fd_read (i32.load (i32.const 400)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; oflags CREAT = 1, rights FD_WRITE = 64
    (call $proc_exit (call $path_open (i32.const 3) (i32.const 0) (i32.const 310) (i32.const 7)
      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 404)))))"#
    )
}

/// Sleeps 10 ms (poll_oneoff on the monotonic clock) and prints "t", forever.
fn ticker() -> String {
    format!(
        r#"(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "t")
  (func (export "_start")
    ;; one subscription at 104: tag 0 (clock) at +8, clock id 1 (monotonic) at +16, timeout at +24
    (i32.store8 (i32.const 112) (i32.const 0))
    (i32.store (i32.const 120) (i32.const 1))
    (i64.store (i32.const 128) (i64.const 10000000))
    (i64.store (i32.const 136) (i64.const 0))
    (i32.store16 (i32.const 144) (i32.const 0))
    (loop
      (drop (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 240)))
      (i32.store (i32.const 0) (i32.const 16))
      (i32.store (i32.const 4) (i32.const 1))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br 0))))"#
    )
}

const RETURNS: &str = r#"(module (func (export "_start")))"#;
const TRAPS: &str = r#"(module (func (export "_start") unreachable))"#;
const SPINS: &str = r#"(module (func (export "_start") (loop (br 0))))"#;
/// Grows its memory a page at a time until growing fails.
const GROWS: &str = r#"(module (memory 1)
  (func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))))"#;
/// Asks for 2 MiB of memory up front.
const BIG: &str = r#"(module (memory 32) (func (export "_start")))"#;

/// A command component (wasi:cli/run) whose `run` returns `result` (0 = ok, 1 = err), or traps.
fn run_component(body: &str) -> String {
    format!(
        r#"(component
  (core module $m (func (export "run") (result i32) {body}))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run)))"#
    )
}

/// A wasi:http proxy component whose handler returns without setting a response.
const HTTP_COMPONENT: &str = r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))
  (core module $m (func (export "handle") (param i32 i32)))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out)) (canon lift (core func $i "handle")))
  (instance $h (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $h)))"#;

#[derive(Default)]
struct Capture {
    out: Mutex<Vec<u8>>,
    err: Mutex<Vec<u8>>,
}

impl OutputSink for Capture {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let buf = match stream {
            Stream::Stdout => &self.out,
            Stream::Stderr => &self.err,
        };
        buf.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Capture {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).replace('\0', " ")
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    shim: WasmShim,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shim = new_shim(&dir.path().join("cache"));
        Fixture { dir, shim }
    }

    /// An image whose one layer holds `bytes`, written to the fixture's directory.
    fn image(&self, bytes: &[u8]) -> Image {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.dir.path().join(&digest[7..]);
        std::fs::write(&path, bytes).unwrap();
        Image {
            reference: "example.com/guest:1".into(),
            config_media_type: "application/vnd.wasm.config.v0+json".into(),
            architecture: "wasm".into(),
            layers: vec![Layer { media_type: "application/wasm".into(), digest, path }],
            ..Image::default()
        }
    }

    fn wat(&self, wat: &str) -> Image {
        self.image(&wat::parse_str(wat).unwrap())
    }
}

fn new_shim(cache: &Path) -> WasmShim {
    // A small pool: tests run in parallel, each with its own engine and address-space reservation.
    WasmShim::new(WasmConfig { max_instances: 16, ..WasmConfig::new(cache) }).unwrap()
}

fn spec(image: Image, output: Arc<Capture>) -> ContainerSpec {
    ContainerSpec {
        id: "c1".into(),
        name: "default/pod/main".into(),
        image,
        argv: vec![],
        env: vec![],
        working_dir: None,
        mounts: vec![],
        limits: Limits::default(),
        ports: vec![],
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        netns: None,
        userns: None,
        egress: Default::default(),
        security: Default::default(),
        output,
    }
}

async fn wait(container: &mut Box<dyn Container>) -> Exit {
    tokio::time::timeout(Duration::from_secs(20), container.wait()).await.expect("the guest did not end")
}

async fn run(shim: &WasmShim, spec: ContainerSpec) -> Exit {
    let mut container = shim.start(spec).await.unwrap();
    wait(&mut container).await
}

#[tokio::test]
async fn hello_sees_its_argv_and_env_and_exits_with_its_code() {
    let f = Fixture::new();
    let out = Arc::new(Capture::default());
    let mut s = spec(f.wat(&hello()), out.clone());
    s.argv = vec!["hello.wasm".into(), "a b".into()];
    s.env = vec![("FOO".into(), "bar".into())];
    let exit = run(&f.shim, s).await;
    assert_eq!(exit, Exit { code: 3, reason: ExitReason::Error, message: None });
    assert_eq!(out.stdout(), "hello.wasm a b FOO=bar ");
    assert_eq!(out.stderr(), "err\n");
}

#[tokio::test]
async fn without_argv_the_program_name_is_the_image_reference() {
    let f = Fixture::new();
    let out = Arc::new(Capture::default());
    run(&f.shim, spec(f.wat(&hello()), out.clone())).await;
    assert_eq!(out.stdout(), "example.com/guest:1 ");
}

#[tokio::test]
async fn returning_from_start_completes() {
    let f = Fixture::new();
    let exit = run(&f.shim, spec(f.wat(RETURNS), Arc::default())).await;
    assert_eq!(exit, Exit { code: 0, reason: ExitReason::Completed, message: None });
}

#[tokio::test]
async fn a_trap_is_an_error_with_the_trap_message() {
    let f = Fixture::new();
    let exit = run(&f.shim, spec(f.wat(TRAPS), Arc::default())).await;
    assert_eq!(exit.code, skiff_wasm::TRAP_EXIT_CODE);
    assert_eq!(exit.reason, ExitReason::Error);
    assert_eq!(exit.message.as_deref(), Some("wasm trap: wasm `unreachable` instruction executed"));
}

#[tokio::test]
async fn growing_past_the_memory_limit_is_oom_killed() {
    let f = Fixture::new();
    let mut s = spec(f.wat(GROWS), Arc::default());
    s.limits.memory_bytes = Some(1 << 20);
    let exit = run(&f.shim, s).await;
    assert_eq!(
        exit,
        Exit {
            code: 137,
            reason: ExitReason::OomKilled,
            message: Some("memory limit of 1048576 bytes exceeded".into())
        }
    );
}

#[tokio::test]
async fn initial_memory_over_the_limit_is_oom_killed() {
    let f = Fixture::new();
    let mut s = spec(f.wat(BIG), Arc::default());
    s.limits.memory_bytes = Some(1 << 20);
    assert_eq!(run(&f.shim, s).await.reason, ExitReason::OomKilled);
    let mut s = spec(f.wat(BIG), Arc::default());
    s.limits.memory_bytes = Some(2 << 20);
    assert_eq!(run(&f.shim, s).await.reason, ExitReason::Completed);
}

#[tokio::test]
async fn read_only_mounts_are_readable_but_not_writable() {
    let f = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "from the host\n").unwrap();
    let mount = |read_only| Mount { host_path: data.path().to_path_buf(), container_path: "/data".into(), read_only };

    let out = Arc::new(Capture::default());
    let mut s = spec(f.wat(&files()), out.clone());
    s.mounts = vec![mount(true)];
    let exit = run(&f.shim, s).await;
    assert_eq!(out.stdout(), "from the host\n");
    assert!(exit.code != 0 && exit.code < 100, "creating a file must fail with an errno: {exit:?}");
    assert!(!data.path().join("out.txt").exists());

    let mut s = spec(f.wat(&files()), Arc::default());
    s.mounts = vec![mount(false)];
    assert_eq!(run(&f.shim, s).await.code, 0);
    assert!(data.path().join("out.txt").exists());
}

/// A volume the node agent writes (a ConfigMap's, a ServiceAccount token's) is links through `..data` to a
/// timestamped directory, so that an update swaps every file at once: a guest reads through them, as a
/// container does, and no further than the mount.
#[tokio::test]
async fn links_inside_a_mount_are_followed_and_links_out_of_it_are_not() {
    use std::os::unix::fs::symlink;
    let f = Fixture::new();
    let volume = tempfile::tempdir().unwrap();
    let stamp = volume.path().join("..2026_01_02_03_04_05.000000001");
    std::fs::create_dir(&stamp).unwrap();
    std::fs::write(stamp.join("in.txt"), "eyJ.token\n").unwrap();
    symlink("..2026_01_02_03_04_05.000000001", volume.path().join("..data")).unwrap();
    symlink("..data/in.txt", volume.path().join("in.txt")).unwrap();
    let mount = Mount {
        host_path: volume.path().to_path_buf(),
        container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        read_only: true,
    };
    let out = Arc::new(Capture::default());
    let mut s = spec(f.wat(&files()), out.clone());
    s.mounts = vec![mount.clone()];
    let exit = run(&f.shim, s).await;
    assert_eq!(out.stdout(), "eyJ.token\n");
    assert!(exit.code != 0 && exit.code < 100, "the volume is read-only: {exit:?}");

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("in.txt"), "host\n").unwrap();
    std::fs::remove_file(volume.path().join("in.txt")).unwrap();
    symlink(outside.path().join("in.txt"), volume.path().join("in.txt")).unwrap();
    let out = Arc::new(Capture::default());
    let mut s = spec(f.wat(&files()), out.clone());
    s.mounts = vec![mount];
    let exit = run(&f.shim, s).await;
    assert!(exit.code > 100, "a link out of the mount is refused: {exit:?}");
    assert_eq!(out.stdout(), "");
}

#[tokio::test]
async fn nothing_of_the_host_is_visible_without_mounts() {
    let f = Fixture::new();
    let exit = run(&f.shim, spec(f.wat(&files()), Arc::default())).await;
    // path_open on fd 3 fails with EBADF (8): there is no preopened directory.
    assert_eq!(exit.code, 108);
}

#[tokio::test]
async fn a_missing_mount_directory_is_a_setup_error() {
    let f = Fixture::new();
    let mut s = spec(f.wat(&files()), Arc::default());
    s.mounts = vec![Mount { host_path: f.dir.path().join("nope"), container_path: "/data".into(), read_only: true }];
    let err = f.shim.start(s).await.err().unwrap();
    assert!(matches!(&err, ShimError::Setup { message, .. } if message.starts_with("cannot mount ")), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_wasm_is_an_invalid_image() {
    let f = Fixture::new();
    let err = f.shim.start(spec(f.image(b"\x7fELF\x02\x01\x01\0rest"), Arc::default())).await.err().unwrap();
    match err {
        ShimError::InvalidImage(m) => assert!(m.starts_with("image layer is not a WebAssembly module: "), "{m}"),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn malformed_wasm_is_an_invalid_image_with_wasmtimes_message() {
    let f = Fixture::new();
    let err = f.shim.start(spec(f.image(b"\0asm\x01\0\0\0\x01\x04\x01\x60"), Arc::default())).await.err().unwrap();
    match err {
        ShimError::InvalidImage(m) => {
            assert!(m.starts_with("invalid WebAssembly in layer sha256:"), "{m}");
            assert!(m.contains("unexpected end") || m.contains("section"), "wasmtime's reason is kept: {m}");
        }
        other => panic!("{other}"),
    }
    // Not linkable: an import WASI does not have.
    let err = f
        .shim
        .start(spec(f.wat(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#), Arc::default()))
        .await
        .err()
        .unwrap();
    assert!(matches!(&err, ShimError::InvalidImage(m) if m.contains("env::nope")), "{err}");
    let err = f.shim.start(spec(f.wat("(module)"), Arc::default())).await.err().unwrap();
    assert!(matches!(&err, ShimError::InvalidImage(m) if m.contains("_start")), "{err}");
}

#[tokio::test]
async fn a_second_start_does_not_compile_again() {
    let f = Fixture::new();
    let image = f.wat(&hello());
    run(&f.shim, spec(image.clone(), Arc::default())).await;
    run(&f.shim, spec(image.clone(), Arc::default())).await;
    assert_eq!(f.shim.compilations(), 1);

    // A new shim (an agent restart) loads the machine code from the cache directory.
    let again = new_shim(&f.dir.path().join("cache"));
    let out = Arc::new(Capture::default());
    let exit = run(&again, spec(image, out.clone())).await;
    assert_eq!((exit.code, again.compilations()), (3, 0));
    assert_eq!(out.stderr(), "err\n");
}

#[tokio::test]
async fn concurrent_starts_of_one_image_compile_once() {
    let f = Fixture::new();
    let image = f.wat(SPINS);
    let (a, b) =
        tokio::join!(f.shim.start(spec(image.clone(), Arc::default())), f.shim.start(spec(image, Arc::default())));
    assert_eq!(f.shim.compilations(), 1);
    for mut c in [a.unwrap(), b.unwrap()] {
        c.stop(Duration::ZERO);
        assert_eq!(wait(&mut c).await.code, 137);
    }
}

#[tokio::test]
async fn stop_ends_a_spinning_guest_at_once() {
    let f = Fixture::new();
    let mut c = f.shim.start(spec(f.wat(SPINS), Arc::default())).await.unwrap();
    // wait() is cancel-safe: a timed-out wait leaves the container waitable.
    assert!(tokio::time::timeout(Duration::from_millis(50), c.wait()).await.is_err());
    let asked = Instant::now();
    c.stop(Duration::from_secs(30));
    let exit = wait(&mut c).await;
    assert!(asked.elapsed() < Duration::from_secs(1), "took {:?}", asked.elapsed());
    assert_eq!(exit, Exit { code: 137, reason: ExitReason::Error, message: Some("stopped".into()) });
    // Waiting again gives the same answer.
    assert_eq!(wait(&mut c).await.code, 137);
}

#[tokio::test]
async fn stop_ends_a_guest_waiting_in_a_host_call() {
    let f = Fixture::new();
    let out = Arc::new(Capture::default());
    let mut c = f.shim.start(spec(f.wat(&ticker()), out.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.stop(Duration::from_secs(30));
    assert_eq!(wait(&mut c).await.message.as_deref(), Some("stopped"));
    assert!(out.stdout().starts_with("tt"), "{}", out.stdout());
}

#[tokio::test]
async fn an_unlimited_spinning_guest_does_not_starve_the_runtime() {
    // One runtime thread (tokio::test's default): the guest must yield for this test's own timer to fire.
    let f = Fixture::new();
    let mut c = f.shim.start(spec(f.wat(SPINS), Arc::default())).await.unwrap();
    let slept = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(slept.elapsed() < Duration::from_secs(2));
    c.stop(Duration::ZERO);
    wait(&mut c).await;
}

/// CPU time (user + system) of the calling thread, from /proc (clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12th and 13th after the command name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn a_cpu_limit_throttles_a_busy_guest_and_others_keep_running() {
    // Everything runs on this test's one runtime thread, so its CPU time is what the guests used.
    let f = Fixture::new();
    let ticks = Arc::new(Capture::default());
    let mut ticker = f.shim.start(spec(f.wat(&ticker()), ticks.clone())).await.unwrap();
    let mut s = spec(f.wat(SPINS), Arc::default());
    s.limits.cpu_millis = Some(100);
    let mut busy = f.shim.start(s).await.unwrap();

    let (cpu, wall) = (thread_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (used, elapsed) = (thread_cpu() - cpu, wall.elapsed());
    busy.stop(Duration::ZERO);
    ticker.stop(Duration::ZERO);
    assert_eq!(wait(&mut busy).await.code, 137, "the busy guest was still running");
    wait(&mut ticker).await;

    // 100m of ~1 s is ~0.1 s; the bound is generous for timer slack and the ticker's own share.
    assert!(used < Duration::from_millis(350), "a 100m guest used {used:?} of CPU in {elapsed:?}");
    let printed = ticks.stdout().len();
    assert!(printed >= 20, "the 10 ms ticker printed only {printed} times in {elapsed:?}");
}

#[tokio::test]
async fn a_command_component_runs_wasi_cli_run() {
    let f = Fixture::new();
    let ok = run(&f.shim, spec(f.wat(&run_component("(i32.const 0)")), Arc::default())).await;
    assert_eq!(ok, Exit { code: 0, reason: ExitReason::Completed, message: None });
    let err = run(&f.shim, spec(f.wat(&run_component("(i32.const 1)")), Arc::default())).await;
    assert_eq!(err, Exit { code: 1, reason: ExitReason::Error, message: None });
    let trap = run(&f.shim, spec(f.wat(&run_component("unreachable")), Arc::default())).await;
    assert_eq!((trap.code, trap.message.as_deref()), (134, Some("wasm trap: wasm `unreachable` instruction executed")));
}

#[tokio::test]
async fn a_component_without_a_known_world_is_an_invalid_image() {
    let f = Fixture::new();
    let err = f.shim.start(spec(f.wat("(component)"), Arc::default())).await.err().unwrap();
    assert!(matches!(&err, ShimError::InvalidImage(m) if m.contains("neither wasi:cli/run nor wasi:http")), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn an_http_component_serves_each_request_with_a_fresh_instance() {
    let f = Fixture::new();
    let out = Arc::new(Capture::default());
    let mut s = spec(f.wat(HTTP_COMPONENT), out.clone());
    let port = free_port();
    s.ports = vec![port];
    let mut c = f.shim.start(s).await.unwrap();
    for _ in 0..2 {
        // This handler never sets a response: the server answers 500 and logs why, and keeps serving.
        let response = tokio::time::timeout(Duration::from_secs(20), get(port)).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    }
    assert_eq!(
        out.stderr().matches("wasi:http guest returned without setting a response\n").count(),
        2,
        "{}",
        out.stderr()
    );
    c.stop(Duration::from_secs(5));
    assert_eq!(wait(&mut c).await, Exit { code: 0, reason: ExitReason::Completed, message: None });
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "still listening");
}

#[tokio::test]
async fn an_http_component_needs_a_port() {
    let f = Fixture::new();
    let err = f.shim.start(spec(f.wat(HTTP_COMPONENT), Arc::default())).await.err().unwrap();
    assert!(matches!(&err, ShimError::Setup { message, .. } if message.contains("port")), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = spec(f.wat(HTTP_COMPONENT), Arc::default());
    s.ports = vec![taken.local_addr().unwrap().port()];
    let err = f.shim.start(s).await.err().unwrap();
    assert!(
        matches!(&err, ShimError::Setup { message, .. } if message.starts_with("cannot listen on 127.0.0.1:")),
        "{err}"
    );
}

/// A sample from `samples/`, built by scripts/build-samples: http-fetch (`GET /?url=URL` answers with what
/// URL answered) or http-hello (which names the client it was told of).
fn sample(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = std::process::Command::new(root.join("scripts/build-samples")).current_dir(&root).output().unwrap();
    assert!(output.status.success(), "scripts/build-samples: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read(root.join(format!("samples/out/{name}.wasm"))).unwrap()
}

#[tokio::test]
async fn a_guest_is_told_its_clients_address_and_no_client_can_pretend_otherwise() {
    let f = Fixture::new();
    let mut s = spec(f.image(&sample("http-hello")), Arc::default());
    s.ports = vec![free_port()];
    let port = s.ports[0];
    let _c = f.shim.start(s).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let local = stream.local_addr().unwrap();
    let request = "GET / HTTP/1.1\r\nHost: guest\r\nskiff-client-addr: 203.0.113.9:1\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut response)).await.unwrap().unwrap();
    assert!(response.contains(&format!("\nclient: {local}\n")), "{response}");
    assert!(!response.contains("203.0.113.9"), "{response}");
}

/// Asks the guest listening on `port` to fetch `url`; the whole answer.
async fn fetch_through(port: u16, url: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET /?url={url} HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut response)).await.unwrap().unwrap();
    response
}

#[tokio::test]
async fn a_guests_outgoing_requests_reach_its_pods_localhost_but_never_the_nodes() {
    let f = Fixture::new();
    let image = f.image(&sample("http-fetch"));
    // A server on the loopback: inside the pod's own namespace it is the pod's, outside it the node's.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/x", target.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = target.accept().await {
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nhi\n").await;
        }
    });
    // The test's own namespace stands for the pod's (joining one needs CAP_SYS_ADMIN: the tests run as root).
    let mut s = spec(image.clone(), Arc::default());
    s.ports = vec![free_port()];
    s.netns = Some("/proc/thread-self/ns/net".into());
    s.host_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let port = s.ports[0];
    let mut c = f.shim.start(s).await.unwrap();
    let answer = fetch_through(port, &url).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nhi\n"), "{answer}");
    c.stop(Duration::ZERO);
    wait(&mut c).await;
    let out = Arc::new(Capture::default());
    let mut s = spec(image, out.clone());
    s.ports = vec![free_port()];
    // Allowing the address by name does not make the node's loopback the pod's.
    s.egress.allowed_hosts = skiff_shim::AllowedHost::parse_list("http://127.0.0.1:*").unwrap();
    let port = s.ports[0];
    let _c = f.shim.start(s).await.unwrap();
    let answer = fetch_through(port, &url).await;
    assert!(answer.starts_with("HTTP/1.1 502") && answer.contains("HttpRequestDenied"), "{answer}");
    assert!(
        out.stderr().contains(&format!(
            "skiff: outgoing request to {} denied: 127.0.0.1 is the node's loopback, not the pod's",
            url.trim_end_matches("/x")
        )),
        "{}",
        out.stderr()
    );
}
