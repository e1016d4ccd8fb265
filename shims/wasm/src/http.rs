//! A wasi:http proxy component served over HTTP/1.1: one fresh instance per request, as the proxy world
//! intends (no state survives a request, a trap fails one request only).
//!
//! One container's requests share the node's pool of instances with every other guest, so each container
//! handles at most so many at once (its pod's `skiff.dev/max-concurrent-requests`, else
//! [`DEFAULT_CONCURRENT_REQUESTS`], never more than a quarter of the pool); a request beyond that waits
//! [`QUEUE_WAIT`] for a turn, then is answered 503 with `Retry-After`. A client has
//! [`HEADER_READ_TIMEOUT`] to send a request's head, and while a guest waits for the request's body, at most
//! [`BODY_READ_TIMEOUT`] to send the next piece of it, and while the response goes out, at most
//! [`WRITE_TIMEOUT`] to take the next piece of it: a client that stops sending or reading cannot hold a turn
//! (and a slot of the node's pool) for longer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use skiff_shim::{Exit, Stream};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::Inner;
use crate::run::{code_exit, stop_requested, stopped, trap_message};
use crate::state::{GuestSpec, Metered, P2State, new_store};

/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Requests one container handles at once unless its pod says otherwise.
pub const DEFAULT_CONCURRENT_REQUESTS: u32 = 100;

/// How long a request beyond the limit waits for a turn before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The request header carrying the client's address and port (`10.42.0.7:51234`) to the guest.
const CLIENT_ADDR: &str = "skiff-client-addr";

/// How long a client may take to send a request's head (the agent's own endpoint allows as much).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a guest waiting for a request's body waits for the client's next bytes before its read fails
/// (nginx's `client_body_timeout`, shorter than its 60 s: the waiting guest holds one of its container's
/// turns and an instance of the node's pool; as long as the head's timeout, which no sane client needs
/// between two pieces of a body either).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may wait for it to read (nginx's `send_timeout`, shorter than its 60 s for
/// the same reason as [`BODY_READ_TIMEOUT`]): a guest streaming its response to a client that stopped
/// reading waits on the connection, holding its turn; a write that waits this long fails the connection,
/// and with it the guest's writes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    /// The engine, and the epoch ticker kept alive while the server runs.
    inner: Arc<Inner>,
    pre: ProxyPre<P2State>,
    spec: Arc<GuestSpec>,
    /// A turn per request in progress, held until its guest is done (after the response, if it streams).
    turns: Arc<Semaphore>,
}

impl Server {
    pub(crate) fn new(
        inner: Arc<Inner>,
        pre: ProxyPre<P2State>,
        spec: Arc<GuestSpec>,
        concurrent_requests: Option<u32>,
    ) -> Arc<Self> {
        let turns = concurrent_turns(concurrent_requests, inner.max_instances);
        Arc::new(Server { inner, pre, spec, turns: Arc::new(Semaphore::new(turns)) })
    }

    /// Accepts connections until stopped (or the container is dropped), then lets in-flight requests finish
    /// within the grace period: all done is a clean exit 0, anything cut off makes it 137 "stopped".
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<Option<Duration>>,
    ) -> Exit {
        let graceful = GracefulShutdown::new();
        // Cancelled when the grace period is over: ends connections and the requests' guests.
        let force = CancellationToken::new();
        loop {
            tokio::select! {
                biased;
                () = stop_requested(&mut stop) => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            tracing::warn!(error = %err, "wasi:http accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    // Responses leave as a head and a body write; without NODELAY the second waits for the
                    // client's delayed ACK (~40 ms), which was the whole p99.
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    let request_force = force.clone();
                    let client = http::HeaderValue::from_str(&peer.to_string()).ok();
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        // wasi:http has no peer address: the guest reads its client's from a header, as
                        // Spin's `spin-client-addr`, never one the client wrote itself.
                        match &client {
                            Some(address) => req.headers_mut().insert(CLIENT_ADDR, address.clone()),
                            None => req.headers_mut().remove(CLIENT_ADDR),
                        };
                        let server = server.clone();
                        let force = request_force.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, force).await) }
                    });
                    let conn = graceful.watch(
                        http1::Builder::new()
                            .keep_alive(true)
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(write_deadline(stream, WRITE_TIMEOUT)), service),
                    );
                    let force = force.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = force.cancelled() => {}
                            result = conn => if let Err(err) = result {
                                tracing::debug!(%peer, error = %err, "wasi:http connection failed");
                            }
                        }
                    });
                }
            }
        }
        drop(listener);
        let grace = stop.borrow().unwrap_or(Duration::ZERO);
        let exit = match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => code_exit(0),
            Err(_) => stopped(),
        };
        force.cancel();
        exit
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        force: CancellationToken,
    ) -> hyper::Response<HyperOutgoingBody> {
        let Some(turn) = take_turn(&self.turns, QUEUE_WAIT).await else {
            let mut response = hyper::Response::new(
                Full::new(Bytes::from_static(b"too many concurrent requests\n")).map_err(Into::into).boxed_unsync(),
            );
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return response;
        };
        match self.respond(req, force, turn).await {
            Ok(response) => response,
            Err(message) => {
                self.log(&message);
                let mut response = hyper::Response::new(
                    Full::new(Bytes::from_static(b"internal server error\n")).map_err(Into::into).boxed_unsync(),
                );
                *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }

    async fn respond(
        &self,
        req: hyper::Request<Incoming>,
        force: CancellationToken,
        turn: OwnedSemaphorePermit,
    ) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        self.spec.usage.count_request();
        let state = P2State::new(&self.spec).map_err(|e| e.to_string())?;
        let mut store = new_store(&self.inner.engine, state);
        let meter = store.data().ctl.meter.clone();
        let (tx, rx) = oneshot::channel();
        let req = req.map(|body| TimedBody::new(body, BODY_READ_TIMEOUT));
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req).map_err(|e| format!("{e:#}"))?;
        let out = store.data_mut().http().new_response_outparam(tx).map_err(|e| format!("{e:#}"))?;
        let pre = self.pre.clone();
        let spec = self.spec.clone();
        // Its own task: after the response head is sent the guest may still be writing the body.
        let task = tokio::spawn(Metered::new(meter, async move {
            let _turn = turn;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            };
            let result = tokio::select! {
                biased;
                _ = force.cancelled() => return Err(()),
                result = run => result,
            };
            result.map_err(|err| {
                let ctl = &store.data().ctl;
                let message = if ctl.memory.exceeded { ctl.memory.message() } else { trap_message(&err) };
                log(&spec, &format!("wasi:http request failed: {message}"));
            })
        }));
        match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(format!("wasi:http guest answered with error {code:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => Err("wasi:http guest returned without setting a response".into()),
                // Already logged by the task.
                Ok(Err(())) => Err(String::new()),
                Err(join) => Err(format!("wasi:http request task failed: {join}")),
            },
        }
    }

    fn log(&self, message: &str) {
        log(&self.spec, message);
    }

    /// Serves one request handed over inside the agent, from `client`, as one that came to the container's
    /// port: the same turns, limits and client header. The server's drain on stop counts connections, so
    /// such a request is not cut by it; the node stops handing requests over once the container stops.
    async fn serve_one(
        self: Arc<Self>,
        mut req: hyper::Request<Incoming>,
        client: std::net::SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let _ = match http::HeaderValue::from_str(&client.to_string()) {
            Ok(address) => req.headers_mut().insert(CLIENT_ADDR, address),
            Err(_) => req.headers_mut().remove(CLIENT_ADDR),
        };
        self.handle(req, CancellationToken::new()).await
    }
}

/// What a wasi:http container declares it can do ([`skiff_shim::Container::http`]): take its requests
/// inside the agent, without a connection to its port.
pub(crate) struct InProcess {
    pub(crate) server: Arc<Server>,
    pub(crate) port: u16,
}

#[async_trait::async_trait]
impl skiff_shim::HttpService for InProcess {
    fn port(&self) -> u16 {
        self.port
    }

    async fn serve(
        &self,
        request: hyper::Request<Incoming>,
        client: std::net::SocketAddr,
    ) -> hyper::Response<skiff_shim::HttpBody> {
        let response = self.server.clone().serve_one(request, client).await;
        response.map(|body| body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed_unsync())
    }
}

/// `stream` whose writes fail with `TimedOut` when they make no progress for `timeout`.
fn write_deadline<S>(stream: S, timeout: Duration) -> Pin<Box<tokio_io_timeout::TimeoutStream<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(timeout));
    Box::pin(stream)
}

/// The turns of one container: what its pod asks for, else the default, and at most a quarter of the
/// node's pool of instances (at least one).
fn concurrent_turns(asked: Option<u32>, max_instances: u32) -> usize {
    let share = (max_instances / 4).max(1);
    asked.unwrap_or(DEFAULT_CONCURRENT_REQUESTS).clamp(1, share) as usize
}

/// A turn, waiting at most `wait` for one; None when the container stays busy that long.
async fn take_turn(turns: &Arc<Semaphore>, wait: Duration) -> Option<OwnedSemaphorePermit> {
    // Most requests find a free turn: no timer for them.
    if let Ok(turn) = turns.clone().try_acquire_owned() {
        return Some(turn);
    }
    tokio::time::timeout(wait, turns.clone().acquire_owned()).await.ok()?.ok()
}

/// A body whose read fails with wasi:http's `connection-read-timeout` once its reader has waited `idle` for
/// the peer's next bytes: a client's request to a guest, and the response to a guest's outgoing request (its
/// between-bytes timeout). Only waiting counts: a guest busy elsewhere before its next read is
/// not the client's delay, and bytes that arrived meanwhile are read at once.
pub(crate) struct TimedBody<B> {
    body: B,
    idle: Duration,
    /// Runs from the first read that found nothing since the last frame; made by the first such read.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last read found nothing, so the timer is running.
    waiting: bool,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(body: B, idle: Duration) -> Self {
        TimedBody { body, idle, timer: None, waiting: false }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + this.idle;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !std::mem::replace(&mut this.waiting, true) {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Request failures go to the container's stderr: that is where `kubectl logs` users look.
fn log(spec: &GuestSpec, message: &str) {
    if !message.is_empty() {
        spec.output.write(Stream::Stderr, format!("{message}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_takes_at_most_a_quarter_of_the_pool() {
        assert_eq!(concurrent_turns(None, 1000), 100);
        assert_eq!(concurrent_turns(Some(500), 1000), 250);
        assert_eq!(concurrent_turns(Some(10), 1000), 10);
        assert_eq!(concurrent_turns(None, 16), 4);
        assert_eq!(concurrent_turns(Some(0), 2), 1, "never none");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_loses_its_connection() {
        use tokio::io::AsyncWriteExt;
        // Far more than the pipe and hyper's buffers hold.
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(vec![b'x'; 4 << 20]))))
        });
        let (client, server) = tokio::io::duplex(4096);
        let timeout = Duration::from_millis(200);
        let conn = http1::Builder::new().serve_connection(TokioIo::new(write_deadline(server, timeout)), service);
        let (_unread, mut requests) = tokio::io::split(client);
        requests.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await.expect("the connection is given up");
        assert!(ended.is_err(), "it fails rather than finishing");
        assert!(started.elapsed() >= timeout);
    }

    #[tokio::test]
    async fn beyond_its_turns_a_request_waits_briefly_then_is_turned_away() {
        let wait = Duration::from_millis(300);
        let turns = Arc::new(Semaphore::new(1));
        let first = take_turn(&turns, wait).await.expect("a free turn");
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { take_turn(&turns, wait).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiting.await.unwrap(), "a turn freed within the wait is taken");
        let _held = take_turn(&turns, wait).await.expect("the freed turn");
        let started = std::time::Instant::now();
        assert!(take_turn(&turns, wait).await.is_none(), "busy for the whole wait");
        assert!(started.elapsed() >= wait);
    }

    type Piece = Result<Frame<Bytes>, Infallible>;

    /// A body fed through a channel, as a client sends one; the sender's drop ends it.
    fn channel_body() -> (
        futures::channel::mpsc::UnboundedSender<Piece>,
        TimedBody<http_body_util::StreamBody<futures::channel::mpsc::UnboundedReceiver<Piece>>>,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, TimedBody::new(http_body_util::StreamBody::new(rx), Duration::from_millis(200)))
    }

    fn piece() -> Piece {
        Ok(Frame::data(Bytes::from_static(b"piece")))
    }

    #[tokio::test]
    async fn a_body_whose_client_stops_sending_fails_after_the_idle_time() {
        let (tx, mut body) = channel_body();
        tx.unbounded_send(piece()).unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "piece");
        let started = std::time::Instant::now();
        let err = body.frame().await.expect("an error, not the end").unwrap_err();
        assert!(matches!(err, wasmtime_wasi_http::Error::ConnectionReadTimeout), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200), "failed after {:?}", started.elapsed());
        drop(tx);
    }

    #[tokio::test]
    async fn only_waiting_for_the_client_counts_against_a_body() {
        let (tx, mut body) = channel_body();
        tx.unbounded_send(piece()).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The guest is busy elsewhere past the idle time, the client sending nothing: no one waited.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Then pieces closer together than the idle time, over more than it in all.
        let sender = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.unbounded_send(piece()).unwrap();
            }
        });
        for _ in 0..4 {
            assert!(body.frame().await.unwrap().is_ok(), "each piece within the idle time is read");
        }
        sender.await.unwrap();
        assert!(body.frame().await.is_none(), "then the body ends");
    }
}
