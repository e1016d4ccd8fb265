//! A wasi:http proxy component served over HTTP/1.1: one fresh instance per request, as the proxy world
//! intends (no state survives a request, a trap fails one request only).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use skiff_shim::{Exit, Stream};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
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

pub(crate) struct Server {
    /// The engine, and the epoch ticker kept alive while the server runs.
    inner: Arc<Inner>,
    pre: ProxyPre<P2State>,
    spec: Arc<GuestSpec>,
}

impl Server {
    pub(crate) fn new(inner: Arc<Inner>, pre: ProxyPre<P2State>, spec: Arc<GuestSpec>) -> Arc<Self> {
        Arc::new(Server { inner, pre, spec })
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
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        let force = request_force.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, force).await) }
                    });
                    let conn = graceful.watch(http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service));
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
        match self.respond(req, force).await {
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
    ) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        let state = P2State::new(&self.spec).map_err(|e| e.to_string())?;
        let mut store = new_store(&self.inner.engine, state);
        let meter = store.data().ctl.meter.clone();
        let (tx, rx) = oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req).map_err(|e| format!("{e:#}"))?;
        let out = store.data_mut().http().new_response_outparam(tx).map_err(|e| format!("{e:#}"))?;
        let pre = self.pre.clone();
        let spec = self.spec.clone();
        // Its own task: after the response head is sent the guest may still be writing the body.
        let task = tokio::spawn(Metered::new(meter, async move {
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
}

/// Request failures go to the container's stderr: that is where `kubectl logs` users look.
fn log(spec: &GuestSpec, message: &str) {
    if !message.is_empty() {
        spec.output.write(Stream::Stderr, format!("{message}\n").as_bytes());
    }
}
