//! The OCI shim against real containers: a busybox image built in the test (no registry), run as root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../../tests/e2e/busybox.rs"]
mod busybox;

use skiff_oci::{OciConfig, OciShim};
use skiff_shim::{ContainerSpec, Exit, ExitReason, Image, Layer, Limits, Mount, OutputSink, Shim, Stream};

/// Collects everything a container writes.
#[derive(Default)]
struct Capture(Mutex<Vec<(Stream, Vec<u8>)>>);

impl OutputSink for Capture {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        self.0.lock().unwrap().push((stream, bytes.to_vec()));
    }
}

impl Capture {
    fn text(&self, which: Stream) -> String {
        let chunks = self.0.lock().unwrap();
        let bytes: Vec<u8> = chunks.iter().filter(|(s, _)| *s == which).flat_map(|(_, b)| b.clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The end-to-end tests' busybox layer, as a file the shim reads.
fn busybox_layer(dir: &Path) -> Layer {
    let path = dir.join("busybox.tar.gz");
    std::fs::write(&path, busybox::busybox_layer(&[])).unwrap();
    Layer { media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(), digest: "sha256:busybox".into(), path }
}

// The shim drops before the directory: it unmounts its run directory's tmpfs.
struct Fixture {
    shim: OciShim,
    image: Image,
    dir: tempfile::TempDir,
}

/// None (with the reason printed) where containers cannot run.
fn fixture() -> Option<Fixture> {
    if !OciShim::available() {
        eprintln!("skipping: not root or no cgroups, the OCI shim is unavailable here");
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping: /bin/busybox (Debian busybox-static) is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = OciShim::new(OciConfig { state_dir: dir.path().join("state") }).unwrap();
    let image = Image {
        reference: "local/busybox:test".into(),
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        architecture: "amd64".into(),
        layers: vec![busybox_layer(dir.path())],
        ..Image::default()
    };
    Some(Fixture { dir, shim, image })
}

impl Drop for Fixture {
    /// A dropped container is removed by its own thread, and its writable layer by the shim's trash thread;
    /// the shim unmounts its tmpfs only once no container has files in it.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in ["state/run", "state/trash"].map(|dir| self.dir.path().join(dir)) {
            while std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Fixture {
    fn spec(&self, argv: &[&str]) -> (ContainerSpec, Arc<Capture>) {
        let capture = Arc::new(Capture::default());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spec = ContainerSpec {
            id: format!("skiff-oci-test-{}-{n}", std::process::id()),
            name: "default/busybox/main".into(),
            image: self.image.clone(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hello".into())],
            working_dir: None,
            mounts: vec![],
            limits: Limits::default(),
            ports: vec![],
            host_ip: Ipv4Addr::LOCALHOST.into(),
            netns: None,
            userns: None,
            egress: Default::default(),
            security: Default::default(),
            output: capture.clone(),
        };
        (spec, capture)
    }

    /// The container's files: its runtime files on the shim's tmpfs, its writable layer on disk.
    fn files(&self, spec: &ContainerSpec) -> [PathBuf; 3] {
        let state = self.dir.path().join("state");
        ["run", "upper", "work"].map(|dir| state.join(dir).join(&spec.id))
    }
}

async fn run(fx: &Fixture, spec: ContainerSpec) -> Exit {
    let (files, id) = (fx.files(&spec), spec.id.clone());
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    let exit = tokio::time::timeout(Duration::from_secs(30), container.wait()).await.expect("container ended");
    assert!(!files.iter().any(|f| f.exists()), "the files are removed once the container ended: {files:?}");
    assert_eq!(cgroups_left(&id), Vec::<PathBuf>::new(), "the cgroups are removed once the container ended");
    exit
}

/// The container's cgroup directories still present, in every hierarchy (each v1 controller, cgroup2).
fn cgroups_left(id: &str) -> Vec<PathBuf> {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path());
    hierarchies
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .map(|h| h.join("skiff").join(id))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_prints_and_completes() {
    let Some(fx) = fixture() else { return };
    let (spec, out) = fx.spec(&["sh", "-c", "echo $GREETING; echo oops >&2"]);
    let exit = run(&fx, spec).await;
    assert_eq!(exit, Exit { code: 0, reason: ExitReason::Completed, message: None }, "{}", out.text(Stream::Stderr));
    assert_eq!(out.text(Stream::Stdout), "hello\n");
    assert_eq!(out.text(Stream::Stderr), "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_reports_its_code() {
    let Some(fx) = fixture() else { return };
    let (spec, out) = fx.spec(&["sh", "-c", "exit 3"]);
    let exit = run(&fx, spec).await;
    assert_eq!((exit.code, exit.reason), (3, ExitReason::Error), "{}", out.text(Stream::Stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_entrypoint_is_used_without_argv() {
    let Some(mut fx) = fixture() else { return };
    fx.image.entrypoint = vec!["echo".into()];
    fx.image.cmd = vec!["from".into(), "image".into()];
    let (spec, out) = fx.spec(&[]);
    assert_eq!(run(&fx, spec).await.code, 0);
    assert_eq!(out.text(Stream::Stdout), "from image\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_sleeper_within_the_grace_period() {
    let Some(fx) = fixture() else { return };
    // `sleep` as pid 1 ignores SIGTERM (no handler, and init is immune to default actions): SIGKILL ends it.
    let (spec, _) = fx.spec(&["sleep", "100"]);
    let id = spec.id.clone();
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    let stopped = Instant::now();
    container.stop(Duration::from_millis(500));
    let exit = tokio::time::timeout(Duration::from_secs(10), container.wait()).await.expect("stopped in time");
    assert!(stopped.elapsed() < Duration::from_secs(3), "took {:?}", stopped.elapsed());
    assert_eq!((exit.code, exit.reason), (137, ExitReason::Error));
    assert_eq!(cgroups_left(&id), Vec::<PathBuf>::new(), "a stopped container's cgroups are removed");
    // wait() can be asked again.
    assert_eq!(container.wait().await.code, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_traps_sigterm_exits_at_once() {
    let Some(fx) = fixture() else { return };
    let (spec, out) =
        fx.spec(&["sh", "-c", "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"]);
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.text(Stream::Stdout).contains("ready") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = Instant::now();
    container.stop(Duration::from_secs(20));
    let exit = tokio::time::timeout(Duration::from_secs(10), container.wait()).await.expect("stopped in time");
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert_eq!((exit.code, exit.reason), (0, ExitReason::Completed));
    assert!(out.text(Stream::Stdout).contains("bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_bind_mounts_are_visible_but_not_writable() {
    let Some(fx) = fixture() else { return };
    let host = fx.dir.path().join("data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from the host").unwrap();
    let rw = fx.dir.path().join("rw");
    std::fs::create_dir(&rw).unwrap();
    let (mut spec, out) =
        fx.spec(&["sh", "-c", "cat /data/in.txt; echo; touch /data/x && echo wrote-ro; touch /rw/y && echo wrote-rw"]);
    spec.mounts = vec![
        Mount { host_path: host.clone(), container_path: "/data".into(), read_only: true },
        Mount { host_path: rw.clone(), container_path: "/rw".into(), read_only: false },
    ];
    let exit = run(&fx, spec).await;
    let stdout = out.text(Stream::Stdout);
    assert_eq!(exit.code, 0, "{stdout} {}", out.text(Stream::Stderr));
    assert!(stdout.starts_with("from the host\n"), "{stdout}");
    assert!(!stdout.contains("wrote-ro"), "{stdout}");
    assert!(stdout.contains("wrote-rw"), "{stdout}");
    assert!(!host.join("x").exists());
    assert!(rw.join("y").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_destinations_are_created_inside_the_root_through_its_symlinks() {
    let Some(fx) = fixture() else { return };
    let secrets = fx.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("token"), "t0ken").unwrap();
    let settings = fx.dir.path().join("settings.conf");
    std::fs::write(&settings, "level=3").unwrap();
    let (mut spec, out) = fx.spec(&[
        "sh",
        "-c",
        "cat /run/skiff-test-secrets/token; echo; cat /etc/app/settings.conf; echo; cat /srv/copy/token",
    ]);
    spec.mounts = vec![
        Mount { host_path: secrets.clone(), container_path: "/var/run/skiff-test-secrets".into(), read_only: true },
        Mount { host_path: settings, container_path: "/etc/app/settings.conf".into(), read_only: true },
        // With "..": libcontainer's published (pathrs) path.
        Mount { host_path: secrets, container_path: "/etc/../srv/copy".into(), read_only: true },
    ];
    let exit = run(&fx, spec).await;
    let stdout = out.text(Stream::Stdout);
    assert_eq!(exit.code, 0, "{stdout} {}", out.text(Stream::Stderr));
    assert_eq!(stdout, "t0ken\nlevel=3\nt0ken");
    assert!(!Path::new("/run/skiff-test-secrets").exists(), "the absolute symlink was followed on the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_memory_limit_is_an_oom_kill() {
    let Some(fx) = fixture() else { return };
    // tail keeps its whole input when it has no newline: 200 MiB against a 32 MiB limit.
    let (mut spec, out) = fx.spec(&["sh", "-c", "head -c 200m /dev/zero | tail"]);
    spec.limits = Limits { memory_bytes: Some(32 << 20), cpu_millis: Some(500), ..Limits::default() };
    let exit = run(&fx, spec).await;
    assert_eq!((exit.code, exit.reason), (137, ExitReason::OomKilled), "{exit:?} {}", out.text(Stream::Stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_fails_to_start_and_cleans_up() {
    let Some(fx) = fixture() else { return };
    let (spec, _) = fx.spec(&["/no/such/binary"]);
    let (files, id) = (fx.files(&spec), spec.id.clone());
    let err = fx.shim.start(spec).await.err().expect("a missing binary fails the start");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    assert!(!files.iter().any(|f| f.exists()), "{files:?}");
    assert_eq!(cgroups_left(&id), Vec::<PathBuf>::new());
}

#[test]
fn can_handle_oci_layers_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let shim = OciShim::new(OciConfig { state_dir: dir.path().join("state") }).unwrap();
    let layer = |media_type: &str| Layer { media_type: media_type.into(), digest: String::new(), path: PathBuf::new() };
    let oci = Image {
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        architecture: "amd64".into(),
        layers: vec![layer("application/vnd.oci.image.layer.v1.tar+gzip")],
        ..Image::default()
    };
    assert!(shim.can_handle(&oci));
    let wasm = Image {
        config_media_type: "application/vnd.wasm.config.v0+json".into(),
        architecture: "wasm".into(),
        layers: vec![layer("application/wasm")],
        ..Image::default()
    };
    assert!(!shim.can_handle(&wasm));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_do_not_interfere() {
    let Some(fx) = fixture() else { return };
    let fx = Arc::new(fx);
    let runs = (0..8).map(|i| {
        let fx = fx.clone();
        tokio::spawn(async move {
            let (spec, out) = fx.spec(&["sh", "-c", &format!("echo {i}")]);
            let exit = run(&fx, spec).await;
            (exit, out.text(Stream::Stdout), out.text(Stream::Stderr), i)
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let (exit, stdout, stderr, i) = run.await.unwrap();
        assert_eq!(exit.code, 0, "{stderr}");
        assert_eq!(stdout, format!("{i}\n"));
    }
}

/// The agent runs processes of its own (CNI plugins, `umount`) while containers start, and `Command::spawn`
/// holds Rust's environment lock across its fork: a container's init, a copy of this process that may be made
/// in that window, must not wait for that lock (libcontainer's default executor sets the environment through
/// it, and such starts hung until their deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_start_while_other_threads_spawn_processes() {
    let Some(fx) = fixture() else { return };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("/bin/true").status();
            }
        })
    };
    for _ in 0..20 {
        let (spec, out) = fx.spec(&["sh", "-c", "echo $GREETING"]);
        let exit = run(&fx, spec).await;
        assert_eq!((exit.code, out.text(Stream::Stdout)), (0, "hello\n".to_string()), "{}", out.text(Stream::Stderr));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.join().unwrap();
}

/// A container's intermediate process is a copy of this process made on the starting thread, and must end
/// without running exit-time code (std's clean-up, the thread's thread-local destructors): such code takes
/// locks another thread may have held at the fork, which stay locked in the copy (std's stack-overflow
/// handler lock, taken at every thread start and end, hung about one start in a few hundred). Here a
/// thread-local destructor of the one thread that runs starts waits for a lock this thread holds.
#[test]
fn the_intermediate_process_ends_without_running_exit_time_code() {
    static HELD: Mutex<()> = Mutex::new(());
    struct WaitsForHeld;
    impl Drop for WaitsForHeld {
        fn drop(&mut self) {
            drop(HELD.lock());
        }
    }
    thread_local! { static ON_EXIT: WaitsForHeld = const { WaitsForHeld }; }

    let Some(fx) = fixture() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().max_blocking_threads(1).enable_all().build().unwrap();
    let held = HELD.lock().unwrap();
    runtime.block_on(async { tokio::task::spawn_blocking(|| ON_EXIT.with(|_| ())).await }).unwrap();
    let (spec, out) = fx.spec(&["sh", "-c", "echo $GREETING"]);
    let exit = runtime.block_on(run(&fx, spec));
    assert_eq!((exit.code, out.text(Stream::Stdout)), (0, "hello\n".to_string()), "{}", out.text(Stream::Stderr));
    drop(held);
}

/// Everything an exec'd process writes until its output closes, stdout and stderr apart.
async fn exec_output(process: &mut skiff_shim::ExecProcess) -> (String, String) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let read = async {
        while let Some((stream, bytes)) = process.output.recv().await {
            if stream == Stream::Stdout { stdout.extend(bytes) } else { stderr.extend(bytes) }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the exec's output ended");
    (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

fn exec_request(argv: &[&str], stdin: bool, tty: bool) -> skiff_shim::ExecRequest {
    skiff_shim::ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), stdin, tty }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_files_live_on_tmpfs_and_the_container_writes_to_disk() {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    let Some(fx) = fixture() else { return };
    if statfs(fx.dir.path()).unwrap().filesystem_type() == TMPFS_MAGIC {
        eprintln!("skipping: the temporary directory is a tmpfs already");
        return;
    }
    let (spec, _) = fx.spec(&["sh", "-c", "echo kept > /written; sleep 100"]);
    let [run, upper, work] = fx.files(&spec);
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(statfs(&run.join("config.json")).unwrap().filesystem_type(), TMPFS_MAGIC);
    let written = upper.join("written");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !written.exists() {
        assert!(Instant::now() < deadline, "the container's write never reached {}", written.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(statfs(&written).unwrap().filesystem_type(), TMPFS_MAGIC);
    container.stop(Duration::ZERO);
    container.wait().await;
    assert!(![run, upper, work].iter().any(|dir| dir.exists()));
    let dir = fx.dir.path().to_str().unwrap().to_owned();
    drop(fx);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&dir), "the shim's tmpfs is gone with it: {mounts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_inside_the_running_container() {
    let Some(fx) = fixture() else { return };
    let (spec, _) = fx.spec(&["sleep", "100"]);
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    let exec = container.exec().expect("OCI containers take exec");
    // The start returns once the init process was told to exec, as runc's does; it may not have yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let request = exec_request(&["cat", "/proc/1/cmdline"], false, false);
        let mut process = exec.exec(request).await.unwrap_or_else(|e| panic!("{e:?}"));
        let (cmdline, _) = exec_output(&mut process).await;
        process.control.wait().await;
        if cmdline.starts_with("sleep") {
            break;
        }
        assert!(Instant::now() < deadline, "the init never exec'd its command: {cmdline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The container's environment and pid namespace (pid 1 is its sleep), output apart, the exit code.
    let argv = ["sh", "-c", "echo $GREETING; cat /proc/1/cmdline; echo oops >&2; exit 7"];
    let mut process = exec.exec(exec_request(&argv, false, false)).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(process.stdin.is_none());
    let (stdout, stderr) = exec_output(&mut process).await;
    assert_eq!((stdout.as_str(), stderr.as_str()), ("hello\nsleep\x00100\x00", "oops\n"));
    assert_eq!(process.control.wait().await, 7);

    // Input, closed by dropping the sender.
    let mut process = exec.exec(exec_request(&["cat"], true, false)).await.unwrap_or_else(|e| panic!("{e:?}"));
    let stdin = process.stdin.take().expect("stdin was asked for");
    stdin.send(b"ping\n".to_vec()).await.unwrap();
    drop(stdin);
    assert_eq!(exec_output(&mut process).await, ("ping\n".to_string(), String::new()));
    assert_eq!(process.control.wait().await, 0);

    // A terminal: the process sees one, of the size given, and its output comes as one stream.
    let argv = ["sh", "-c", "read line; test -t 0 && echo \"tty $line\""];
    let mut process = exec.exec(exec_request(&argv, true, true)).await.unwrap_or_else(|e| panic!("{e:?}"));
    process.control.resize(skiff_shim::TerminalSize { width: 100, height: 40 });
    process.stdin.take().expect("stdin was asked for").send(b"typed\n".to_vec()).await.unwrap();
    let (stdout, stderr) = exec_output(&mut process).await;
    // The terminal echoes the input and turns newlines into CR LF.
    assert_eq!((stdout.as_str(), stderr.as_str()), ("typed\r\ntty typed\r\n", ""));
    assert_eq!(process.control.wait().await, 0);

    // A command that does not exist is an error, not a process.
    match exec.exec(exec_request(&["no-such-command"], false, false)).await {
        Err(e) => assert!(e.to_string().contains("no-such-command"), "{e}"),
        Ok(_) => panic!("a missing command started"),
    }

    // Dropping a running exec kills it; the container goes on.
    let process = exec.exec(exec_request(&["sleep", "100"], false, false)).await.unwrap_or_else(|e| panic!("{e:?}"));
    drop(process);
    container.stop(Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(10), container.wait()).await.expect("stopped in time");
    let ended = exec.exec(exec_request(&["true"], false, false)).await;
    assert!(ended.is_err(), "exec into an ended container");
}

/// A pod's user and network namespaces as the node makes them: the user namespace maps the pod's ids 0..65536
/// to `host_id`.., the network namespace is made from inside it (so it owns it), and both are kept as
/// bind-mounted namespace files. The holder process is gone once they are made.
struct PodNamespaces {
    userns: PathBuf,
    netns: PathBuf,
}

impl PodNamespaces {
    fn new(dir: &Path, host_id: u32) -> Self {
        // util-linux 2.38's `unshare --map-users` needs shadow's newuidmap, which this host lacks: the maps are
        // written here, as the node writes them.
        let mut holder =
            std::process::Command::new("unshare").args(["--user", "--net", "sleep", "1000"]).spawn().unwrap();
        let proc = PathBuf::from(format!("/proc/{}", holder.id()));
        let own = std::fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(proc.join("ns/user")).map_or(true, |ns| ns == own) {
            assert!(Instant::now() < deadline, "unshare never made its user namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        for map in ["uid_map", "gid_map"] {
            std::fs::write(proc.join(map), format!("0 {host_id} 65536\n")).unwrap();
        }
        let namespaces = PodNamespaces { userns: dir.join("userns"), netns: dir.join("netns") };
        for (file, ns) in [(&namespaces.userns, "ns/user"), (&namespaces.netns, "ns/net")] {
            std::fs::write(file, "").unwrap();
            nix::mount::mount(Some(&proc.join(ns)), file, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
                .unwrap();
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        namespaces
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for file in [&self.userns, &self.netns] {
            let _ = nix::mount::umount2(file, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `hostUsers: false`: the container runs as root of its pod's user namespace, an unprivileged host uid, and
/// sees its image and its volumes owned as on a node without user namespaces, through id-mapped mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_user_namespace_maps_the_root_and_the_volumes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut fx = fixture().expect("containers need root, cgroups and /bin/busybox: run the tests as root");
    // No real user has these ids: the 100th slot of the kubelet's 65536 ids per pod.
    let host_id = 65536 * 100;
    // The pod's root reaches its root filesystem and volumes from inside its namespace; the node makes the
    // directories above the shim's (its data directory) searchable by others, the test's temporary one here.
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let layer = fx.dir.path().join("busybox-passwd.tar.gz");
    std::fs::write(&layer, busybox::busybox_layer(&[("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")])).unwrap();
    fx.image.layers = vec![Layer {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: "sha256:busyboxpasswd".into(),
        path: layer,
    }];
    let namespaces = PodNamespaces::new(fx.dir.path(), host_id);
    let volume = fx.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("from-host"), "kept").unwrap();
    let hosts = fx.dir.path().join("hosts");
    std::fs::write(&hosts, "10.1.2.3 pod\n").unwrap();

    let script = "cat /proc/self/uid_map; busybox id -u; busybox stat -c %u /etc/passwd; echo x > /written; \
                  busybox stat -c %u:%g /vol/from-host; echo made > /vol/made-inside; busybox stat -c %u /etc/hosts; \
                  cat /etc/hosts; ls /sys/class/net; echo done; sleep 100";
    let (mut spec, out) = fx.spec(&["sh", "-c", script]);
    spec.userns = Some(skiff_shim::UserNamespace { path: namespaces.userns.clone(), host_id, size: 65536 });
    spec.netns = Some(namespaces.netns.clone());
    spec.mounts = vec![
        Mount { host_path: volume.clone(), container_path: "/vol".into(), read_only: false },
        Mount { host_path: hosts.clone(), container_path: "/etc/hosts".into(), read_only: true },
    ];
    let [run, upper, work] = fx.files(&spec);
    let mut container = fx.shim.start(spec).await.unwrap_or_else(|e| panic!("{e:?}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.text(Stream::Stdout).contains("done") {
        assert!(Instant::now() < deadline, "{} {}", out.text(Stream::Stdout), out.text(Stream::Stderr));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stdout = out.text(Stream::Stdout);
    let lines: Vec<String> = stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let expected = [&format!("0 {host_id} 65536"), "0", "0", "0:0", "0", "10.1.2.3 pod", "lo", "done"];
    assert_eq!(lines, expected, "stderr: {}", out.text(Stream::Stderr));
    assert_eq!(upper.join("written").metadata().unwrap().uid(), host_id, "the pod's root writes as its host uid");
    assert_eq!(volume.join("made-inside").metadata().unwrap().uid(), 0, "and as root in an id-mapped volume");
    assert!(!run.join("vol").exists(), "the staged volumes are gone once the container's init has mounted them");
    assert!(std::fs::metadata(run.join("config.json")).unwrap().mode() & 0o077 == 0, "the spec is private");
    assert_eq!(run.metadata().unwrap().mode() & 0o007, 0, "other host users cannot enter the bundle");
    assert!(xattr::get(&run, "system.posix_acl_access").unwrap().is_some(), "the pod's root alone may, by an ACL");

    let exec = container.exec().expect("OCI containers take exec");
    let mut process = exec.exec(exec_request(&["busybox", "id", "-u"], false, false)).await.unwrap();
    assert_eq!(
        exec_output(&mut process).await,
        ("0\n".to_string(), String::new()),
        "exec joins the pod's user namespace"
    );
    assert_eq!(process.control.wait().await, 0);

    container.stop(Duration::ZERO);
    container.wait().await;
    assert!(![&run, &upper, &work].iter().any(|dir| dir.exists()));
    let state = fx.dir.path().join("state").canonicalize().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let below_bundle: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4).is_some_and(|p| Path::new(p).starts_with(&run)))
        .collect();
    assert_eq!(below_bundle, Vec::<&str>::new(), "nothing of the bundle stays mounted");
    assert!(mountinfo.contains(state.join("run").to_str().unwrap()), "the shim's tmpfs stays while it lives");
    assert_eq!(std::fs::read_to_string(volume.join("from-host")).unwrap(), "kept", "the volume keeps its files");
    assert!(volume.join("made-inside").exists());
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "10.1.2.3 pod\n");
}

/// Without a network namespace of its pod (the host's, which the pod's user namespace does not own) sysfs
/// cannot be mounted: the host's /sys is bound read-only instead. Privileged containers run there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_user_namespace_without_a_pod_network_binds_the_hosts_sys() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture().expect("containers need root, cgroups and /bin/busybox: run the tests as root");
    let host_id = 65536 * 101;
    let namespaces = PodNamespaces::new(fx.dir.path(), host_id);
    // A data directory private to the agent: the pod's root could not reach its root filesystem.
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (mut spec, _) = fx.spec(&["true"]);
    spec.userns = Some(skiff_shim::UserNamespace { path: namespaces.userns.clone(), host_id, size: 65536 });
    let err = fx.shim.start(spec).await.err().expect("an unreachable bundle fails the start");
    let dir = fx.dir.path().display();
    assert!(err.to_string().contains(&format!("{dir} (mode 700) is not searchable by others")), "{err}");
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    for privileged in [false, true] {
        let script = "cat /proc/self/uid_map; busybox id -u; ls /sys/class/net | busybox wc -l; \
                      busybox awk '$5 == \"/sys\" { split($6, o, \",\"); print o[1] }' /proc/self/mountinfo";
        let (mut spec, out) = fx.spec(&["sh", "-c", script]);
        spec.userns = Some(skiff_shim::UserNamespace { path: namespaces.userns.clone(), host_id, size: 65536 });
        spec.security.privileged = privileged;
        let exit = run(&fx, spec).await;
        let stdout = out.text(Stream::Stdout);
        assert_eq!(exit.code, 0, "{stdout} {}", out.text(Stream::Stderr));
        let lines: Vec<String> = stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        let host_links = std::fs::read_dir("/sys/class/net").unwrap().count().to_string();
        // Writable for a privileged container, as Docker and containerd make it; sysfs still checks the
        // host's capabilities, which the pod's root lacks.
        let access = if privileged { "rw" } else { "ro" };
        assert_eq!(lines, [&format!("0 {host_id} 65536"), "0", &host_links, access], "privileged: {privileged}");
    }
}
