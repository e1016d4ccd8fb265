//! Containers that outlive the agent. A container's stdout and stderr are named FIFOs in its bundle,
//! opened read-write for the container: the container itself always holds a reader, so when the agent dies
//! its writes never fail with EPIPE (they block once the 1 MiB pipe buffer is full), and a restarted agent
//! opens the FIFOs again and keeps pumping what was buffered meanwhile. No process per container is needed
//! for that (containerd keeps a shim process per container instead).
//!
//! The init process of an adopted container is no longer the agent's child: it is watched and signalled
//! through a pidfd, and its exit status is lost to whoever reaps it (the kernel only tells the parent).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use libcontainer::container::{Container, ContainerStatus};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use skiff_shim::{OutputSink, ShimError};

use crate::bundle::{Bundle, Dirs};
use crate::container::{Child, Cleanup, OciContainer};
use crate::{exec, setup_error, spec};

/// The pipe buffer asked for each output FIFO: what a container can write while no agent reads.
const PIPE_BUFFER: i32 = 1 << 20;

/// Stdout and stderr.
type Streams = (OwnedFd, OwnedFd);

/// The output FIFOs of a bundle.
fn fifo_paths(bundle: &Path) -> [std::path::PathBuf; 2] {
    [bundle.join("stdout"), bundle.join("stderr")]
}

/// Reading ends of the output FIFOs (stdout, stderr). They block on read and see end of file once no
/// process holds a writing end any more.
fn open_readers(bundle: &Path) -> std::io::Result<Streams> {
    let open = |path: &Path| -> std::io::Result<OwnedFd> {
        // Non-blocking, or the open would wait for a writer; reads block again afterwards.
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
        let fd = OwnedFd::from(file);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))?;
        Ok(fd)
    };
    let [stdout, stderr] = fifo_paths(bundle);
    Ok((open(&stdout)?, open(&stderr)?))
}

/// Creates the output FIFOs of a new container: (stdout, stderr) for the container, (stdout, stderr) for
/// the agent to read.
pub(crate) fn output_fifos(bundle: &Path) -> Result<(Streams, Streams), ShimError> {
    let mut writers = Vec::with_capacity(2);
    for path in fifo_paths(bundle) {
        let fail = |e: std::io::Error| setup_error(format!("cannot create the output fifo {}: {e}", path.display()), e);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
            .map_err(|e| fail(e.into()))?;
        // Read-write: the container holds a reader of its own output (see the module's comment).
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path).map_err(fail)?;
        let fd = OwnedFd::from(file);
        if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_BUFFER)) {
            tracing::debug!(error = %e, "cannot grow the output fifo's buffer");
        }
        writers.push(fd);
    }
    let readers = open_readers(bundle)
        .map_err(|e| setup_error(format!("cannot open the output fifos in {}: {e}", bundle.display()), e))?;
    let stderr = writers.pop().expect("two writers");
    let stdout = writers.pop().expect("two writers");
    Ok(((stdout, stderr), readers))
}

/// A pidfd for `pid`: a handle that keeps naming that process even after its pid is reused.
pub(crate) fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: Signal) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with a valid descriptor, a signal number, no siginfo and no flags.
    let result = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as i32, std::ptr::null::<u8>(), 0)
    };
    if result < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Blocks until the process behind `pidfd` has ended (a pidfd polls readable then).
pub(crate) fn wait_pidfd(pidfd: &OwnedFd) {
    use std::os::fd::AsFd;
    loop {
        let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for the adopted container");
                return;
            }
        }
    }
}

/// Whether `pid` lives in the cgroup of container `id` (not a process that reused a dead container's pid).
fn in_container_cgroup(pid: Pid, id: &str) -> bool {
    let cgroup = spec::cgroups_path(id);
    std::fs::read_to_string(format!("/proc/{}/cgroup", pid.as_raw()))
        .is_ok_and(|text| text.lines().any(|line| line.rsplit(':').next() == Some(cgroup.as_str())))
}

/// Takes over container `id`, whose files are `bundle`, if it still runs; cleans up what is left of it
/// otherwise.
pub(crate) fn adopt(bundle: Bundle, id: &str, output: Arc<dyn OutputSink>) -> Option<OciContainer> {
    let _span = tracing::info_span!("oci_adopt", id).entered();
    if !bundle.exists() {
        return None;
    }
    let container = match Container::load(bundle.state().join(id)) {
        Ok(container) => container,
        Err(e) => {
            tracing::info!(error = %e, "no runtime state for the container: removing its files");
            bundle.remove();
            return None;
        }
    };
    let alive = match (container.status(), container.pid()) {
        (ContainerStatus::Running, Some(pid)) if in_container_cgroup(pid, id) => {
            pidfd_open(pid).ok().map(|fd| (pid, fd))
        }
        _ => None,
    };
    let cleanup = Cleanup { bundle, cgroup: spec::cgroups_path(id) };
    let Some((pid, pidfd)) = alive else {
        tracing::info!("the container ended while the agent was away: removing it");
        cleanup.remove();
        return None;
    };
    let (stdout, stderr) = match open_readers(cleanup.bundle.dir()) {
        Ok(readers) => readers,
        Err(e) => {
            // Without its output the container cannot be supervised as before: stop it rather than lose it.
            tracing::warn!(error = %e, "cannot reopen the container's output: stopping it");
            let _ = pidfd_signal(&pidfd, Signal::SIGKILL);
            wait_pidfd(&pidfd);
            cleanup.remove();
            return None;
        }
    };
    let exec = exec::OciExec::new(id.to_owned(), cleanup.bundle.dir().to_path_buf());
    match OciContainer::watch(Child::adopted(pid, pidfd), stdout, stderr, output, cleanup, exec) {
        Ok(adopted) => {
            tracing::info!(pid = pid.as_raw(), "adopted a running container");
            Some(adopted)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the adopted container");
            None
        }
    }
}

/// Stops and removes the containers of `dirs` whose ids are not in `keep`.
pub(crate) fn remove_others(dirs: &Dirs, keep: &HashSet<String>) -> usize {
    let mut removed = 0;
    for id in dirs.ids().into_iter().filter(|id| !keep.contains(id)) {
        let _span = tracing::info_span!("oci_remove_orphan", id).entered();
        let bundle = dirs.bundle(&id);
        match Container::load(bundle.state().join(&id)) {
            Ok(container) => {
                if let (ContainerStatus::Running, Some(pid)) = (container.status(), container.pid())
                    && in_container_cgroup(pid, &id)
                    && let Ok(pidfd) = pidfd_open(pid)
                {
                    let _ = pidfd_signal(&pidfd, Signal::SIGKILL);
                    wait_pidfd(&pidfd);
                }
                Cleanup { bundle, cgroup: spec::cgroups_path(&id) }.remove();
            }
            Err(_) => bundle.remove(),
        }
        tracing::info!("removed a container no pod on this node owns");
        removed += 1;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn output_survives_its_reader_and_reaches_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let ((stdout, stderr), (reader, _stderr_reader)) = output_fifos(dir.path()).unwrap();
        let mut writer = std::fs::File::from(stdout);
        writer.write_all(b"one\n").unwrap();
        let mut first = std::fs::File::from(reader);
        let mut buf = [0u8; 4];
        first.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"one\n");
        // The agent dies: its reader closes. The container's writes still succeed.
        drop(first);
        writer.write_all(b"two\n").unwrap();
        let (reader, _) = open_readers(dir.path()).unwrap();
        let mut second = std::fs::File::from(reader);
        second.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"two\n");
        // The container ends: end of file.
        drop((writer, stderr));
        assert_eq!(second.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn pidfds_follow_a_child_to_its_end() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = pidfd_open(Pid::from_raw(child.id() as i32)).unwrap();
        pidfd_signal(&pidfd, Signal::SIGKILL).unwrap();
        wait_pidfd(&pidfd);
        assert!(!child.wait().unwrap().success());
    }
}
