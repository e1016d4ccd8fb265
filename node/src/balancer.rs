//! Failover between API servers, as k3s's agent does it: with several servers the agent's clients talk to a
//! TCP proxy on loopback that forwards each connection to the first server that accepts it, starting with the
//! one that last worked. TLS passes through untouched (every server's certificate is signed by the cluster
//! CA and names 127.0.0.1), and the kube-rs watchers' reconnects after a server dies land on a live one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL the agent's clients should use for `servers` (comma-separated `https://HOST:PORT` URLs): the one
/// server itself, or a loopback proxy over all of them.
pub async fn start(servers: &str, shutdown: CancellationToken) -> Result<String, AgentError> {
    let urls: Vec<&str> = servers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    match urls.as_slice() {
        [] => Err(AgentError::Config("no API server given".into())),
        [one] => Ok(one.to_string()),
        many => {
            let targets = many.iter().map(|url| authority(url)).collect::<Result<Vec<_>, _>>()?;
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| AgentError::Config(format!("cannot listen for the API server proxy: {e}")))?;
            let local = listener.local_addr().map_err(|e| AgentError::Config(e.to_string()))?;
            tracing::info!(%local, servers = ?targets, "proxying to several API servers");
            tokio::spawn(serve(listener, Arc::new(Targets { all: targets, current: AtomicUsize::new(0) }), shutdown));
            Ok(format!("https://{local}"))
        }
    }
}

fn authority(url: &str) -> Result<String, AgentError> {
    let uri: http::Uri = url.parse().map_err(|_| AgentError::Config(format!("invalid server URL {url:?}")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https"), Some(authority)) if authority.port().is_some() => Ok(authority.to_string()),
        (Some("https"), Some(authority)) => Ok(format!("{}:443", authority.host())),
        _ => Err(AgentError::Config(format!("invalid server URL {url:?}: expected https://HOST[:PORT]"))),
    }
}

struct Targets {
    all: Vec<String>,
    /// The index of the server that accepted last.
    current: AtomicUsize,
}

impl Targets {
    async fn connect(&self) -> Option<TcpStream> {
        let first = self.current.load(Ordering::Relaxed);
        for offset in 0..self.all.len() {
            let index = (first + offset) % self.all.len();
            let target = &self.all[index];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => {
                    if index != first {
                        tracing::info!(server = %target, "failed over to another API server");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Some(stream);
                }
                Ok(Err(error)) => tracing::debug!(server = %target, %error, "API server unreachable"),
                Err(_) => tracing::debug!(server = %target, "API server connect timed out"),
            }
        }
        None
    }
}

async fn serve(listener: TcpListener, targets: Arc<Targets>, shutdown: CancellationToken) {
    loop {
        let (mut client, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "API server proxy accept failed");
                    continue;
                }
            },
        };
        let targets = targets.clone();
        tokio::spawn(async move {
            let Some(mut server) = targets.connect().await else {
                tracing::warn!("no API server is reachable");
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_authorities() {
        assert_eq!(authority("https://127.0.0.1:6443").unwrap(), "127.0.0.1:6443");
        assert_eq!(authority("https://skiff").unwrap(), "skiff:443");
        assert!(authority("http://127.0.0.1:6443").is_err());
    }

    #[tokio::test]
    async fn connections_fail_over_to_a_live_server() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr: std::net::SocketAddr = dead.local_addr().unwrap();
        drop(dead);
        let targets =
            Targets { all: vec![dead_addr.to_string(), live.local_addr().unwrap().to_string()], current: 0.into() };
        assert!(targets.connect().await.is_some());
        assert_eq!(targets.current.load(Ordering::Relaxed), 1, "the live server is remembered");
    }
}
