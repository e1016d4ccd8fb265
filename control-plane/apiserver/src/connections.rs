//! What one client can hold of the listener, and for how long. Numbers are kube-apiserver's where it has one
//! (`staging/src/k8s.io/apiserver/pkg/server/secure_serving.go`) and Go's net/http's where it relies on Go.
//!
//! - At most [`MAX_CONNECTIONS`] connections at once. Beyond that the server stops accepting: new
//!   connections wait in the kernel's listen backlog (and, beyond the backlog, in the clients' SYN retries)
//!   until a connection ends, rather than being accepted and closed. A waiting client is served late; a
//!   closed one fails (kubectl does not retry a reset connection). The limit exists to keep file descriptors
//!   for the store and everything else the process opens, and lies well above what a cluster needs, so an
//!   attacker must hold thousands of connections to reach it, and the timeouts below free them.
//! - A TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`], request headers within [`HEADER_READ_TIMEOUT`],
//!   and a connection with no request in flight for [`IDLE_TIMEOUT`] is closed. Requests in flight are never
//!   cut: a watch, a streamed log or an upgraded exec lasts as long as its client wants.
//! - Accept errors (EMFILE when the process is out of file descriptors) back off as Go's `http.Server` does,
//!   instead of spinning on a listener that stays readable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

/// Connections the API server holds at once: a cluster of a few hundred nodes holds a few thousand (kube-rs
/// speaks HTTP/1.1, one connection per watch, and an agent keeps about ten watches). Each idle connection
/// costs a file descriptor and tens of KiB; `skiff server` raises its open-files limit above this.
pub const MAX_CONNECTIONS: usize = 8_192;

/// How long a TLS handshake may take: the 10 s after which Go's `http.DefaultTransport` and client-go give
/// up on their side, so no real client is still waiting past it. (kube-apiserver's own deadline is Go's
/// minimum of its read timeouts, the 32 s below.)
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers: kube-apiserver's `ReadHeaderTimeout` ("just shy
/// of requestTimeoutUpperBound"). In HTTP/1.1 the clock also runs while the connection waits for its next
/// request, so an idle HTTP/1.1 connection closes after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);

/// How long a connection may stay open with no request in flight: kube-apiserver's `IdleTimeout`, which
/// "matches http.DefaultTransport keep-alive timeout". It is what closes an idle HTTP/2 connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// HTTP/2 streams one connection may have open: kube-apiserver's default, "so that a malicious client can
/// only open 400 streams before we forcibly close the connection" (hyper's default is 200).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The HTTP/1.1 or HTTP/2 server for one connection, as its TLS handshake chose (ALPN `h2`, else
/// HTTP/1.1: like Go, no HTTP/2 without ALPN over TLS, so the header timeout runs from the first byte).
pub fn builder(h2: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    if h2 { builder.http2_only() } else { builder.http1_only() }
}

/// Go's back-off on accept errors (`net/http.Server.Serve`): 5 ms, doubling up to 1 s, reset by a
/// successful accept.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The pause after one more failed accept.
    pub fn failed(&mut self) -> Duration {
        let delay = self.delay.map_or(Self::FIRST, |delay| (delay * 2).min(Self::MAX));
        self.delay = Some(delay);
        delay
    }

    pub fn succeeded(&mut self) {
        self.delay = None;
    }
}

/// The requests in flight on one connection, for its idle timeout.
#[derive(Clone)]
pub struct Activity(Arc<watch::Sender<usize>>);

/// One request in flight, until dropped with its response body.
pub struct Active(Arc<watch::Sender<usize>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(watch::Sender::new(0)))
    }
}

impl Activity {
    pub fn begin(&self) -> Active {
        self.0.send_modify(|n| *n += 1);
        Active(self.0.clone())
    }

    /// Completes once no request has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            let idle = *changes.borrow_and_update() == 0;
            if idle {
                if tokio::time::timeout(timeout, changes.changed()).await.is_err() {
                    return;
                }
            } else {
                // The sender lives in `self`: `changed` cannot fail here.
                let _ = changes.changed().await;
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that holds `held` (its request's place in flight) until the body is sent or dropped.
pub struct Holding<H> {
    body: axum::body::Body,
    _held: H,
}

impl<H: Send + Unpin + 'static> Holding<H> {
    pub fn wrap(body: axum::body::Body, held: H) -> axum::body::Body {
        axum::body::Body::new(Holding { body, _held: held })
    }
}

impl<H: Unpin> Body for Holding<H> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn accept_errors_back_off_as_go_does() {
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<u64> = (0..10).map(|_| backoff.failed().as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_no_request_in_flight() {
        let timeout = Duration::from_millis(200);
        let activity = Activity::default();
        let idle = |activity: &Activity| {
            let activity = activity.clone();
            tokio::spawn(async move { activity.idle_for(timeout).await })
        };
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert!(started.elapsed() >= timeout, "idle from the start");

        // A long request (a watch) keeps it open however long it lasts; the clock starts when it ends.
        let watch = activity.begin();
        let waiting = idle(&activity);
        tokio::time::sleep(timeout * 3).await;
        assert!(!waiting.is_finished(), "a request in flight is not idleness");
        let ended = Instant::now();
        drop(watch);
        waiting.await.unwrap();
        assert!(ended.elapsed() >= timeout);

        // A request in the middle of the idle period starts it again.
        let started = Instant::now();
        let waiting = idle(&activity);
        tokio::time::sleep(timeout / 2).await;
        drop(activity.begin());
        waiting.await.unwrap();
        assert!(started.elapsed() >= timeout / 2 + timeout);
    }
}
