//! `cargo bench --bench oci` (as root): container start on the OCI path, side by side with crun and runc on
//! the same busybox root filesystem and command, in one run on this machine.
//!
//! 1. Start: `/bin/true` from create to exit and removal, 100 times each (after 5 warm-ups), back to back
//!    and again with a pause before each start (a node starts containers now and then, not every few
//!    milliseconds; after a pause the kernel's cgroup migration lock waits for an RCU grace period): Skiff's OCI
//!    shim in this process (youki's libcontainer, no shim process; the root filesystem made from the image's
//!    layer as it is for a pod), `crun run` and `runc run` on a bundle holding the same files. crun refuses
//!    this hybrid cgroup host unless it runs in a private mount namespace with an empty file over
//!    /sys/fs/cgroup/unified/cgroup.controllers (../shared/PLATFORM.md), which each crun child gets from
//!    `pre_exec`. The peers' config is `crun spec` with the network namespace left out, as Skiff's
//!    containers join their pod's, and Skiff's default seccomp filter (containerd's RuntimeDefault), so
//!    all three apply the same defaults (`crun spec` has its deny-all device rule already). Each runtime keeps its state on a tmpfs, as on a host whose `/run` is
//!    one (this VM's is not): Skiff's shim mounts its own, the peers get `--root` on one the bench mounts.
//! 2. Memory: this process's RSS before and with 100 idle containers (`sleep`) held by the shim: what the
//!    runtime costs per container beyond the container's own processes.
//!
//! Results: README.md, Performance.

mod common;
// The end-to-end tests' busybox layer.
#[path = "../tests/e2e/busybox.rs"]
mod busybox;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use skiff_oci::{OciConfig, OciShim};
use skiff_shim::{Container, ContainerSpec, Image, Layer, Limits, OutputSink, Shim, Stream};

use common::{Latency, load, mb, ms};

const RUNS: usize = 100;
const WARMUP: usize = 5;
const IDLE_CONTAINERS: usize = 100;
/// The quiet spell before each start in the second round: longer than an RCU grace period here (10-16 ms).
const PAUSE: Duration = Duration::from_millis(50);
const CGROUP2_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

struct Discard;

impl OutputSink for Discard {
    fn write(&self, _: Stream, _: &[u8]) {}
}

fn main() -> anyhow::Result<()> {
    ensure!(OciShim::available(), "run as root on a host with cgroups: the OCI shim is unavailable here");
    ensure!(Path::new("/bin/busybox").exists(), "needs /bin/busybox (Debian busybox-static)");
    let dir = tempfile::tempdir()?;
    let layer = busybox_layer(dir.path())?;
    let bundle = peer_bundle(dir.path(), &layer)?;
    let peer_state = PeerState::mount(&dir.path().join("peer-state"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shim = OciShim::new(OciConfig { state_dir: dir.path().join("skiff") })?;
    let image = Image {
        reference: "local/busybox:bench".into(),
        digest: "sha256:bench".into(),
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        architecture: "amd64".into(),
        layers: vec![layer],
        ..Image::default()
    };

    for pause in [Duration::ZERO, PAUSE] {
        println!(
            "OCI container start, /bin/true from create to exit and removal, {RUNS} runs each, {} (load {})",
            if pause.is_zero() { "back to back".to_owned() } else { format!("{} ms apart", pause.as_millis()) },
            load()
        );
        let skiff = runtime.block_on(time_skiff(&shim, &image, pause))?;
        report("skiff (libcontainer in-process)", &skiff);
        for (name, runtime) in [("crun run", "crun"), ("runc run", "runc")] {
            match time_peer(runtime, &bundle, &peer_state.0, pause) {
                Ok(latency) => report(name, &latency),
                Err(e) => println!("  {name:<32} unavailable: {e:#}"),
            }
        }
    }

    let before = rss()?;
    let held = runtime.block_on(async {
        let mut held = Vec::new();
        for n in 0..IDLE_CONTAINERS {
            match shim.start(spec(&image, &format!("idle-{n}"), &["sleep", "3600"])).await {
                Ok(container) => held.push(container),
                Err(e) => {
                    // Removed before the error ends the process, which would cut their removal short.
                    stop_all(held).await;
                    return Err(e.into());
                }
            }
        }
        anyhow::Ok(held)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let after = rss()?;
    println!(
        "memory: RSS {:.1} MB -> {:.1} MB with {IDLE_CONTAINERS} idle containers: {:.0} KiB per container",
        mb(before),
        mb(after),
        (after.saturating_sub(before)) as f64 / 1024.0 / IDLE_CONTAINERS as f64
    );
    runtime.block_on(stop_all(held));
    Ok(())
}

async fn stop_all(containers: Vec<Box<dyn Container>>) {
    for mut container in containers {
        container.stop(Duration::ZERO);
        container.wait().await;
    }
}

fn report(name: &str, latency: &Latency) {
    println!(
        "  {name:<32} p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max)
    );
}

fn spec(image: &Image, id: &str, argv: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: format!("skiff-bench-{}-{id}", std::process::id()),
        name: format!("bench/{id}/main"),
        image: image.clone(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        working_dir: None,
        mounts: vec![],
        limits: Limits::default(),
        ports: vec![],
        host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        netns: None,
        userns: None,
        egress: Default::default(),
        security: Default::default(),
        output: Arc::new(Discard),
    }
}

async fn time_skiff(shim: &OciShim, image: &Image, pause: Duration) -> anyhow::Result<Latency> {
    let mut samples = Vec::new();
    for n in 0..WARMUP + RUNS {
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        let mut container = shim.start(spec(image, &format!("true-{}-{n}", pause.as_millis()), &["true"])).await?;
        let exit = container.wait().await;
        ensure!(exit.code == 0, "skiff: /bin/true exited {exit:?}");
        if n >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    Ok(Latency::of(samples))
}

/// A tmpfs for the peers' `--root`, unmounted when dropped.
struct PeerState(PathBuf);

impl PeerState {
    fn mount(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir(dir)?;
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0700", "tmpfs"]).arg(dir).status()?;
        ensure!(status.success(), "cannot mount a tmpfs on {}", dir.display());
        Ok(PeerState(dir.to_path_buf()))
    }
}

impl Drop for PeerState {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn time_peer(runtime: &str, bundle: &Path, state: &Path, pause: Duration) -> anyhow::Result<Latency> {
    let private_cgroup_view = runtime == "crun";
    let empty = bundle.join("empty");
    std::fs::write(&empty, "")?;
    let (empty, controllers) = (c_path(&empty)?, CString::new(CGROUP2_CONTROLLERS)?);
    let mut samples = Vec::new();
    for n in 0..WARMUP + RUNS {
        let mut command = Command::new(runtime);
        command
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("bench-{runtime}-{}-{}-{n}", std::process::id(), pause.as_millis()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if private_cgroup_view && Path::new(CGROUP2_CONTROLLERS).exists() {
            let (empty, controllers) = (empty.clone(), controllers.clone());
            // SAFETY: between fork and exec only async-signal-safe calls (unshare, mount) on memory prepared
            // before the fork.
            unsafe {
                command.pre_exec(move || {
                    let none = std::ptr::null();
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                            != 0
                        || libc::mount(empty.as_ptr(), controllers.as_ptr(), none, libc::MS_BIND, std::ptr::null()) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        std::thread::sleep(pause);
        let started = Instant::now();
        let output = command.output().with_context(|| format!("cannot run {runtime}"))?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!("{runtime} run failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        if n >= WARMUP {
            samples.push(elapsed);
        }
    }
    Ok(Latency::of(samples))
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(path.as_os_str().as_encoded_bytes())?)
}

/// The image's only layer, the end-to-end tests' busybox image layer, gzipped as registries serve it.
fn busybox_layer(dir: &Path) -> anyhow::Result<Layer> {
    let path = dir.join("busybox.tar.gz");
    std::fs::write(&path, busybox::busybox_layer(&[]))?;
    Ok(Layer { media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(), digest: "sha256:bench".into(), path })
}

/// A bundle for crun and runc with the same files: the layer unpacked, and `crun spec` running
/// `/bin/true` without a terminal or a network namespace of its own.
fn peer_bundle(dir: &Path, layer: &Layer) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&layer.path)?);
    tar::Archive::new(gz).unpack(&rootfs)?;
    let status = Command::new("crun").args(["spec", "--bundle"]).arg(&bundle).status();
    let mut config: Value = match status {
        Ok(status) if status.success() => serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?,
        _ => bail!("`crun spec` failed: install Debian's crun and runc for the side-by-side figures"),
    };
    config["process"]["terminal"] = Value::Bool(false);
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
    config["linux"]["seccomp"] = skiff_oci::default_seccomp()?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}

fn rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}
