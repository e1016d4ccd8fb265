//! Sockets inside a pod's network namespace, so a wasm guest shares localhost and the pod's address with
//! the pod's containers, and its outgoing connections leave from the pod.
//!
//! A thread of a multi-threaded process can join a network namespace with `setns`, and a socket stays in the
//! namespace it was created in whichever thread later polls it. So sockets are made on a short-lived thread
//! of their own that joins the namespace, makes the socket and ends (taking its namespace with it); tokio's
//! threads never change namespace.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Binds a TCP listener on `addr` inside the network namespace file `netns`.
pub(crate) async fn bind(netns: &Path, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = within(Some(netns), move || TcpListener::bind(addr)).await?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Runs `make` (which makes a socket) inside the network namespace file `netns`; in the agent's own
/// namespace when None.
pub(crate) async fn within<T: Send + 'static>(
    netns: Option<&Path>,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let Some(netns) = netns else { return make() };
    let namespace = File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("skiff-netns".into()).spawn(move || {
        let _ = tx.send(join(&namespace).and_then(|()| make()));
    })?;
    rx.await.map_err(|_| std::io::Error::other("the namespace thread ended without a socket"))?
}

/// Joins the namespace for the rest of the calling thread, which must end right after its work.
fn join(namespace: &File) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `namespace` keeps open for the call.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_inside_the_named_namespace() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // joining a namespace needs CAP_SYS_ADMIN
        }
        // The caller's own namespace: the listener must work as one bound directly would.
        let netns = Path::new("/proc/thread-self/ns/net");
        let listener = bind(netns, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        assert!(accepted.is_ok() && connected.is_ok());
        let missing = bind(Path::new("/nonexistent/netns"), addr).await.unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
