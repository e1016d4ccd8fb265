//! `kubectl exec`: more processes in a running container. libcontainer's tenant builder joins them to the
//! container's namespaces and cgroup (what `runc exec` and `youki exec` do), with the container's own process
//! settings (environment, working directory, user, capabilities) and only the argv replaced. Without a
//! terminal the process gets pipes; with one, libcontainer opens a pty inside the container (its controlling
//! terminal, so job control and ^C work) and hands the master side over a console socket.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::tenant_builder::TenantContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use skiff_shim::{ExecControl, ExecProcess, ExecRequest, OutputSink, ShimError, Stream, TerminalSize};
use tokio::sync::{mpsc, watch};

use crate::container::{Child, exit_code};
use crate::{lock_start, pipe, setup_error};

/// How many output chunks and input writes may wait between the process and the connection.
const QUEUE: usize = 64;
/// How long libcontainer may take to hand over the terminal once the process runs.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts processes in one container: its libcontainer id and bundle (`config.json`, `state/`).
pub(crate) struct OciExec {
    id: String,
    bundle: PathBuf,
    /// Names each exec's files in the bundle, so concurrent execs never share one.
    sequence: AtomicU64,
}

impl OciExec {
    pub(crate) fn new(id: String, bundle: PathBuf) -> Self {
        OciExec { id, bundle, sequence: AtomicU64::new(0) }
    }
}

#[async_trait::async_trait]
impl skiff_shim::Exec for OciExec {
    async fn exec(&self, request: ExecRequest) -> Result<ExecProcess, ShimError> {
        if request.argv.is_empty() {
            return Err(ShimError::Setup { message: "exec needs a command".into(), source: None });
        }
        let (id, bundle) = (self.id.clone(), self.bundle.clone());
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        // libcontainer forks from the calling thread and blocks until the process runs.
        tokio::task::spawn_blocking(move || start(&id, &bundle, sequence, request))
            .await
            .map_err(|e| setup_error("the exec task failed".into(), e))?
    }
}

/// The files of one exec in the bundle, removed when it has started (or failed to).
struct ExecFiles {
    process: PathBuf,
    console: PathBuf,
    pid: PathBuf,
}

impl Drop for ExecFiles {
    fn drop(&mut self) {
        for path in [&self.process, &self.console, &self.pid] {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn start(id: &str, bundle: &Path, sequence: u64, request: ExecRequest) -> Result<ExecProcess, ShimError> {
    let _span = tracing::info_span!("oci_exec", id, argv = ?request.argv, tty = request.tty).entered();
    let files = ExecFiles {
        process: bundle.join(format!("exec-{sequence}.json")),
        console: bundle.join(format!("exec-{sequence}.sock")),
        pid: bundle.join(format!("exec-{sequence}.pid")),
    };
    write_process(bundle, &files.process, &request)?;
    let not_running = |e: LibcontainerError| setup_error(format!("cannot exec in container {id}: {e}"), e);
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(bundle.join("state"))
        .and_then(|b| b.with_pid_file(Some(&files.pid)))
        .map_err(not_running)?
        .with_executor(crate::executor::Execve::default());
    let (process, stdio) = if request.tty {
        let listener = UnixListener::bind(&files.console)
            .map_err(|e| setup_error(format!("cannot listen on {}: {e}", files.console.display()), e))?;
        let tenant = builder.with_console_socket(Some(&files.console)).as_tenant().with_detach(true);
        let child = Arc::new(Child::new(build(tenant, &files).map_err(not_running)?));
        match receive_terminal(&listener) {
            Ok(master) => (child, Stdio::Terminal(master)),
            Err(e) => {
                child.signal(Signal::SIGKILL);
                let _ = child.reap();
                return Err(e);
            }
        }
    } else {
        let (stdin_r, stdin_w) = if request.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(|e| setup_error(format!("cannot open /dev/null: {e}"), e))?;
            (OwnedFd::from(null), None)
        };
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let tenant = builder.with_stdin(stdin_r).with_stdout(stdout_w).with_stderr(stderr_w).as_tenant();
        (
            Arc::new(Child::new(build(tenant, &files).map_err(not_running)?)),
            Stdio::Pipes { stdin: stdin_w, stdout: stdout_r, stderr: stderr_r },
        )
    };
    tracing::debug!("exec started");
    wire(process.clone(), stdio, request.stdin).map_err(|e| {
        process.signal(Signal::SIGKILL);
        setup_error(format!("cannot start the threads of an exec in {id}: {e}"), e)
    })
}

/// Starts the process. A process that failed after it was forked (its command not found, say) is our child
/// still: libcontainer only reports the error, so it is reaped here by the pid libcontainer wrote.
fn build(tenant: TenantContainerBuilder, files: &ExecFiles) -> Result<Pid, LibcontainerError> {
    let built = {
        // libcontainer changes the process's working directory to reach its sockets by short names.
        let _guard = lock_start();
        tenant.with_process(Some(&files.process)).build()
    };
    if built.is_err()
        && let Some(pid) = std::fs::read_to_string(&files.pid).ok().and_then(|p| p.trim().parse().ok())
    {
        let failed = Child::new(Pid::from_raw(pid));
        failed.signal(Signal::SIGKILL);
        let _ = failed.reap();
    }
    built
}

/// The container's process settings with the exec's argv and terminal, as libcontainer's `process.json`.
fn write_process(bundle: &Path, path: &Path, request: &ExecRequest) -> Result<(), ShimError> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|e| setup_error(format!("cannot read the container's spec {}: {e}", config.display()), e))?;
    let mut process = spec.process().clone().ok_or_else(|| ShimError::Setup {
        message: format!("the container's spec {} has no process", config.display()),
        source: None,
    })?;
    // The exec's process gets the container's seccomp filter: compiled here, once (after an agent restart,
    // the cache is empty), not in the forked process.
    if let Some(seccomp) = spec.linux().as_ref().and_then(|linux| linux.seccomp().as_ref()) {
        libcontainer::seccomp::precompile(seccomp)
            .map_err(|e| setup_error(format!("cannot compile the container's seccomp filter: {e}"), e))?;
    }
    process.set_args(Some(request.argv.clone()));
    process.set_terminal(Some(request.tty));
    process.set_console_size(None);
    let json =
        serde_json::to_vec(&process).map_err(|e| setup_error(format!("cannot encode the exec process: {e}"), e))?;
    // Readable by the agent alone: the environment in it may hold Secrets' values.
    let write_error = |e: std::io::Error| setup_error(format!("cannot write {}: {e}", path.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(&json).map_err(write_error)
}

/// Takes the terminal's master side that the process sent over the console socket.
fn receive_terminal(listener: &UnixListener) -> Result<OwnedFd, ShimError> {
    let failed =
        |what: &str, e: std::io::Error| setup_error(format!("cannot receive the exec's terminal: {what}: {e}"), e);
    // The process connected before it was started and sent the master before it ran the command, so both
    // are waiting; the timeouts only guard against a process that died on the way.
    listener.set_nonblocking(true).map_err(|e| failed("socket", e))?;
    let (stream, _) = listener.accept().map_err(|e| failed("no connection", e))?;
    stream.set_nonblocking(false).map_err(|e| failed("socket", e))?;
    stream.set_read_timeout(Some(CONSOLE_TIMEOUT)).map_err(|e| failed("socket", e))?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| failed("receive", e.into()))?;
    let mut received: Vec<RawFd> = Vec::new();
    for cmsg in message.cmsgs().map_err(|e| failed("receive", e.into()))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received.extend(fds);
        }
    }
    // SAFETY: the kernel installed these descriptors in this process for this message; nothing else owns them.
    let mut owned: Vec<OwnedFd> = received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    match owned.len() {
        1 => Ok(owned.remove(0)),
        n => Err(ShimError::Setup {
            message: format!("the exec's console socket carried {n} descriptors, not 1"),
            source: None,
        }),
    }
}

enum Stdio {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Terminal(OwnedFd),
}

/// Output chunks into the exec's channel; the pump thread blocks while the connection is behind.
struct ChannelSink(mpsc::Sender<(Stream, Vec<u8>)>);

impl OutputSink for ChannelSink {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        // A closed channel means the caller went away: the pump keeps draining until the process ends.
        let _ = self.0.blocking_send((stream, bytes.to_vec()));
    }
}

/// Carries one stream of the process into `output` until its end.
fn pump(mut pipe: File, stream: Stream, output: &dyn OutputSink) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => output.write(stream, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A terminal's master side reads EIO once the last process holding the terminal closed it.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the exec'd process's output");
                return;
            }
        }
    }
}

/// Connects the process's stdio to channels and starts its reaper: a thread per stream and one to wait.
fn wire(process: Arc<Child>, stdio: Stdio, stdin_wanted: bool) -> Result<ExecProcess, std::io::Error> {
    let (output_tx, output) = mpsc::channel(QUEUE);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (input, outputs, terminal) = match stdio {
        Stdio::Pipes { stdin, stdout, stderr } => {
            (stdin.map(File::from), vec![(stdout, Stream::Stdout), (stderr, Stream::Stderr)], None)
        }
        Stdio::Terminal(master) => {
            let reader = master.try_clone()?;
            let writer = stdin_wanted.then(|| master.try_clone()).transpose()?;
            (writer.map(File::from), vec![(reader, Stream::Stdout)], Some(master))
        }
    };
    let stdin = match input {
        Some(file) => {
            std::thread::Builder::new().name("oci-exec-stdin".into()).spawn(move || feed(file, stdin_rx))?;
            Some(stdin_tx)
        }
        None => None,
    };
    for (fd, stream) in outputs {
        let sink = ChannelSink(output_tx.clone());
        std::thread::Builder::new()
            .name("oci-exec-output".into())
            .spawn(move || pump(File::from(fd), stream, &sink))?;
    }
    let (exit_tx, exit) = watch::channel(None);
    let reaped = process.clone();
    std::thread::Builder::new().name("oci-exec-reaper".into()).spawn(move || {
        let code = match reaped.reap() {
            Ok(status) => exit_code(&status).unwrap_or(255),
            Err(e) => {
                tracing::warn!(error = %e, "lost the exec's exit status");
                255
            }
        };
        let _ = exit_tx.send(Some(code));
    })?;
    Ok(ExecProcess { stdin, output, control: Box::new(OciExecControl { process, exit, terminal }) })
}

/// Writes what arrives to the process's stdin; the end of the channel closes it.
fn feed(mut input: File, mut chunks: mpsc::Receiver<Vec<u8>>) {
    while let Some(chunk) = chunks.blocking_recv() {
        if let Err(e) = input.write_all(&chunk) {
            // The process closed its input or ended: what is left has no reader.
            tracing::debug!(error = %e, "exec stdin closed");
            return;
        }
    }
}

struct OciExecControl {
    process: Arc<Child>,
    exit: watch::Receiver<Option<i32>>,
    terminal: Option<OwnedFd>,
}

#[async_trait::async_trait]
impl ExecControl for OciExecControl {
    fn resize(&self, size: TerminalSize) {
        if let Some(master) = &self.terminal {
            let winsize = libc::winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
            // SAFETY: TIOCSWINSZ only reads the winsize passed by pointer; the descriptor is ours and open.
            if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "cannot resize the exec's terminal");
            }
        }
    }

    async fn wait(&mut self) -> i32 {
        match self.exit.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(255),
            Err(_) => 255,
        }
    }
}

impl Drop for OciExecControl {
    fn drop(&mut self) {
        // The caller left before the process ended: nobody reads its output any more.
        self.process.signal(Signal::SIGKILL);
    }
}
