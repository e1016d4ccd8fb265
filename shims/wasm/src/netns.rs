//! Listening inside a pod's network namespace, so a wasm guest shares localhost and the pod's address with
//! the pod's containers.
//!
//! A thread of a multi-threaded process can join a network namespace with `setns`, and a socket stays in the
//! namespace it was created in whichever thread later polls it. So the listener is made on a short-lived
//! thread of its own that joins the namespace, binds and ends (taking its namespace with it); tokio's threads
//! never change namespace.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Binds a TCP listener on `addr` inside the network namespace file `netns`.
pub(crate) async fn bind(netns: &Path, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let namespace = File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("skiff-netns-bind".into()).spawn(move || {
        let _ = tx.send(bind_in(&namespace, addr));
    })?;
    let listener = rx.await.map_err(|_| std::io::Error::other("the namespace thread ended without a listener"))??;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Runs on a thread that ends right after: the namespace it joined goes with it.
fn bind_in(namespace: &File, addr: SocketAddr) -> std::io::Result<TcpListener> {
    // SAFETY: setns only reads the descriptor, which `namespace` keeps open for the call.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    TcpListener::bind(addr)
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
