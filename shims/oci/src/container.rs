//! A running Linux container: its init process, its supervision (output, exit status, clean-up).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use skiff_shim::{Exit, ExitReason, OutputSink, Stream};
use tokio::sync::watch;

use crate::bundle::Bundle;
use crate::exec::OciExec;
use crate::usage::CgroupMeter;

/// How long the output of an ended container may keep flowing before its exit is reported anyway (a pipe
/// can only stay open that long if something outside the container holds it).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// A container started by the OCI shim. Dropping it kills the container.
pub struct OciContainer {
    exit: watch::Receiver<Option<Exit>>,
    init: Arc<Child>,
    exec: Arc<OciExec>,
    meter: Arc<CgroupMeter>,
}

/// A process the shim forked (a container's init, an exec'd process). Signals go to its pid only while it
/// is not yet reaped: until then the zombie holds the pid, so a signal can never hit a process that reused it.
pub(crate) struct Child {
    pid: Pid,
    /// Set for the init of a container adopted from an earlier run of the agent: not our child, so it is
    /// waited on and signalled through this pidfd, and its exit status is unknown.
    pidfd: Option<OwnedFd>,
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

impl Child {
    pub(crate) fn new(pid: Pid) -> Self {
        Child { pid, pidfd: None, ended: Mutex::new(false), ended_cv: Condvar::new() }
    }

    pub(crate) fn adopted(pid: Pid, pidfd: OwnedFd) -> Self {
        Child { pidfd: Some(pidfd), ..Child::new(pid) }
    }

    fn is_ended(&self) -> bool {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if *ended {
            return;
        }
        let sent = match &self.pidfd {
            Some(pidfd) => crate::adopt::pidfd_signal(pidfd, signal),
            None => kill(self.pid, signal),
        };
        if let Err(e) = sent {
            tracing::warn!(pid = self.pid.as_raw(), ?signal, error = %e, "cannot signal the process");
        }
    }

    /// Blocks until the process ends, then reaps it.
    /// An adopted process is only waited for (its parent reaps it): ECHILD.
    pub(crate) fn reap(&self) -> nix::Result<WaitStatus> {
        if let Some(pidfd) = &self.pidfd {
            crate::adopt::wait_pidfd(pidfd);
            *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.ended_cv.notify_all();
            return Err(Errno::ECHILD);
        }
        // Wait without reaping first, so `signal` stays safe until the ended flag is set.
        while let Err(Errno::EINTR) = waitid(Id::Pid(self.pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.ended_cv.notify_all();
        loop {
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                other => return other,
            }
        }
    }
}

/// What the container's thread cleans up once the init process has ended.
pub(crate) struct Cleanup {
    pub bundle: Bundle,
    pub cgroup: String,
}

impl Cleanup {
    /// Removes the container's cgroup (killing anything left in it), then unmounts and removes its files,
    /// libcontainer's state among them.
    pub(crate) fn remove(self) {
        crate::cgroups::remove(&self.cgroup);
        self.bundle.remove();
    }
}

impl OciContainer {
    /// Watches a started container on one thread of its own: pumps `stdout`/`stderr` into `output`, reaps
    /// `init` when it ends, then removes the container's cgroup and files. Where that thread cannot be had,
    /// the container is stopped and removed rather than left running unseen.
    pub(crate) fn watch(
        init: Child,
        stdout: OwnedFd,
        stderr: OwnedFd,
        output: Arc<dyn OutputSink>,
        cleanup: Cleanup,
        exec: OciExec,
    ) -> Result<Self, std::io::Error> {
        let init = Arc::new(init);
        let meter = Arc::new(CgroupMeter::new(Path::new("/sys/fs/cgroup"), &cleanup.cgroup));
        let (tx, rx) = watch::channel(None);
        // What the thread needs beyond the init goes over once it runs, so that a failed spawn leaves it here.
        let (handoff, handed) = std::sync::mpsc::sync_channel::<(OwnedFd, OwnedFd, Cleanup)>(1);
        let supervised = init.clone();
        let spawned = own_pidfd(&init).and_then(|pidfd| {
            std::thread::Builder::new().name("oci-container".into()).spawn(move || {
                let Ok((stdout, stderr, cleanup)) = handed.recv() else { return };
                let streams = [(File::from(stdout), Stream::Stdout), (File::from(stderr), Stream::Stderr)];
                let exit = supervise(&supervised, &pidfd, streams, &*output, cleanup);
                let _ = tx.send(Some(exit));
            })
        });
        if let Err(e) = spawned {
            init.signal(Signal::SIGKILL);
            let _ = init.reap();
            cleanup.remove();
            return Err(e);
        }
        let _ = handoff.send((stdout, stderr, cleanup));
        Ok(OciContainer { exit: rx, init, exec: Arc::new(exec), meter })
    }
}

/// A pidfd of `init` for its supervising thread: a copy of an adopted init's, or a new one for our own
/// child, opened while it is unreaped (so its pid cannot have been reused).
fn own_pidfd(init: &Child) -> std::io::Result<OwnedFd> {
    match &init.pidfd {
        Some(pidfd) => pidfd.try_clone(),
        None => crate::adopt::pidfd_open(init.pid),
    }
}

/// The container's life after its start: its output pumped until `init` (`pidfd`) ended and both streams
/// reached their end, or [`OUTPUT_DRAIN`] after the end (what is written later is dropped); then its exit,
/// and its clean-up. One thread and one poll per container, not a thread per stream and one to wait.
fn supervise(
    init: &Child,
    pidfd: &OwnedFd,
    streams: [(File, Stream); 2],
    output: &dyn OutputSink,
    cleanup: Cleanup,
) -> Exit {
    let mut open = Vec::from(streams);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended: Option<(nix::Result<WaitStatus>, u64, Instant)> = None;
    loop {
        let timeout = match &ended {
            None => PollTimeout::NONE,
            Some(_) if open.is_empty() => break,
            Some((_, _, drained_by)) => {
                let left = drained_by.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!("the container's output is still open after it ended");
                    break;
                }
                // Rounded up: poll counts whole milliseconds, and a zero would spin.
                PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds: Vec<PollFd> = open.iter().map(|(file, _)| PollFd::new(file.as_fd(), PollFlags::POLLIN)).collect();
        if ended.is_none() {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                // Unread, its output would fill the pipes and block it for good.
                tracing::warn!(error = %e, "cannot poll the container's output: stopping it");
                init.signal(Signal::SIGKILL);
                break;
            }
        }
        // Events nix cannot name count as ready: the read tells.
        let ready: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(true)).collect();
        drop(fds);
        if ended.is_none() && ready[open.len()] {
            let status = init.reap();
            // Read before the clean-up removes the cgroup.
            ended = Some((status, oom_kills(&cleanup.cgroup), Instant::now() + OUTPUT_DRAIN));
        }
        let mut closed = Vec::new();
        for (i, (file, stream)) in open.iter_mut().enumerate().filter(|(i, _)| ready[*i]) {
            match file.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => output.write(*stream, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the container's output");
                    closed.push(i);
                }
            }
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
    let (status, oom_kills, _) = ended.unwrap_or_else(|| (init.reap(), oom_kills(&cleanup.cgroup), Instant::now()));
    cleanup.remove();
    match status {
        Ok(status) => exit_from(status, oom_kills),
        Err(Errno::ECHILD) if init.pidfd.is_some() => adopted_exit(oom_kills),
        Err(e) => Exit {
            code: 255,
            reason: ExitReason::Error,
            message: Some(format!("lost the container's exit status: {e}")),
        },
    }
}

/// The exit code a shell would report: the code, or 128 + the signal's number.
pub(crate) fn exit_code(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// How many processes of the cgroup the kernel's OOM killer killed (v1 `memory.oom_control`, v2
/// `memory.events`); 0 when unknown.
fn oom_kills(cgroup: &str) -> u64 {
    let relative = cgroup.trim_start_matches('/');
    let candidates = [
        Path::new("/sys/fs/cgroup/memory").join(relative).join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(relative).join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| parse_oom_kills(&text))
        .unwrap_or(0)
}

/// The `oom_kill N` line of a memory.oom_control or memory.events file.
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// The kubelet's view of how the init process ended. Any failure of a container whose cgroup saw an OOM
/// kill is an OOM kill (containerd's rule too): the killed process may be a child of init.
fn exit_from(status: WaitStatus, oom_kills: u64) -> Exit {
    let (code, message) = match (exit_code(&status), status) {
        (Some(code), WaitStatus::Signaled(_, signal, _)) => (code, Some(format!("killed by {signal}"))),
        (Some(code), _) => (code, None),
        (None, other) => (255, Some(format!("unexpected wait status {other:?}"))),
    };
    if code == 0 {
        return Exit { code, reason: ExitReason::Completed, message: None };
    }
    if oom_kills > 0 {
        return Exit {
            code,
            reason: ExitReason::OomKilled,
            message: Some(format!("the memory limit was exceeded ({oom_kills} OOM kills)")),
        };
    }
    Exit { code, reason: ExitReason::Error, message }
}

#[async_trait::async_trait]
impl skiff_shim::Container for OciContainer {
    async fn wait(&mut self) -> Exit {
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or_else(lost),
            Err(_) => lost(),
        }
    }

    fn stop(&self, grace: Duration) {
        self.init.signal(Signal::SIGTERM);
        if self.init.is_ended() {
            return;
        }
        let init = self.init.clone();
        let spawned = std::thread::Builder::new().name("oci-stop".into()).spawn(move || {
            let ended = init.ended.lock().unwrap_or_else(|p| p.into_inner());
            let (ended, _) =
                init.ended_cv.wait_timeout_while(ended, grace, |ended| !*ended).unwrap_or_else(|p| p.into_inner());
            drop(ended);
            init.signal(Signal::SIGKILL);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the stop timer; killing the container now");
            self.init.signal(Signal::SIGKILL);
        }
    }

    fn exec(&self) -> Option<Arc<dyn skiff_shim::Exec>> {
        Some(self.exec.clone())
    }

    fn meter(&self) -> Option<Arc<dyn skiff_shim::Meter>> {
        Some(self.meter.clone())
    }
}

/// How an adopted container ended, as far as its cgroup tells: only its parent learned the exit status.
fn adopted_exit(oom_kills: u64) -> Exit {
    if oom_kills > 0 {
        return exit_from(WaitStatus::Signaled(Pid::from_raw(0), Signal::SIGKILL, false), oom_kills);
    }
    Exit {
        code: 255,
        reason: ExitReason::Error,
        message: Some("the container was adopted after an agent restart: its exit status is unknown".into()),
    }
}

fn lost() -> Exit {
    Exit {
        code: 255,
        reason: ExitReason::Error,
        message: Some("the thread supervising the container ended without a status".into()),
    }
}

impl Drop for OciContainer {
    fn drop(&mut self) {
        self.init.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid() -> Pid {
        Pid::from_raw(1)
    }

    #[test]
    fn exits_map_to_kubelet_reasons() {
        assert_eq!(exit_from(WaitStatus::Exited(pid(), 0), 0).reason, ExitReason::Completed);
        // A clean exit stays Completed even if a child was OOM-killed on the way.
        assert_eq!(exit_from(WaitStatus::Exited(pid(), 0), 2).reason, ExitReason::Completed);
        let e = exit_from(WaitStatus::Exited(pid(), 3), 0);
        assert_eq!((e.code, e.reason, e.message), (3, ExitReason::Error, None));
        let e = exit_from(WaitStatus::Signaled(pid(), Signal::SIGTERM, false), 0);
        assert_eq!((e.code, e.reason), (143, ExitReason::Error));
        assert_eq!(e.message.as_deref(), Some("killed by SIGTERM"));
        let e = exit_from(WaitStatus::Signaled(pid(), Signal::SIGKILL, false), 1);
        assert_eq!((e.code, e.reason), (137, ExitReason::OomKilled));
        let e = exit_from(WaitStatus::Exited(pid(), 137), 1);
        assert_eq!((e.code, e.reason), (137, ExitReason::OomKilled));
        let e = exit_from(WaitStatus::Signaled(pid(), Signal::SIGKILL, false), 0);
        assert_eq!((e.code, e.reason), (137, ExitReason::Error));
    }

    #[test]
    fn oom_counters_parse_from_v1_and_v2_files() {
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), Some(2));
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n"), Some(1));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(oom_kills("/skiff/no-such-container-here"), 0);
    }
}
