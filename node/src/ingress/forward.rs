//! Sending a request on to a backend's endpoint over the pod network: HTTP/1.1 with keep-alive through
//! hyper-util's pooled client (one pool per endpoint, so the next request may reuse a connection), bodies
//! streamed both ways, the proxy headers added ([`prepare`]). A connection refused or timed out moves the
//! request to the next endpoint, so a pod going away fails no request; the body, not yet read when the
//! connection failed, goes with it ([`Replayable`]). A request to switch protocols (a WebSocket) that the
//! backend accepts becomes a tunnel between the two upgraded connections ([`tunnel`]).

use std::net::{IpAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long a connection to an endpoint may take before the next one is tried: endpoints are on the pod
/// network, where a live pod answers in well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle pooled connection is kept: shorter than the idle timeouts servers commonly use
/// (Go's net/http 90 s, nginx 75 s, Node.js 5 s aside), so the proxy seldom writes to a closing one.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per endpoint.
const POOL_MAX_IDLE: usize = 64;

/// Headers that describe one hop, never passed on (RFC 9110 7.6.1, and what proxies commonly drop).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub type Client = HyperClient<HttpConnector, Replayable>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no endpoint to send to")]
    NoEndpoints,
    #[error("no endpoint accepted a connection")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("the endpoint failed the request")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("invalid request target")]
    Uri(#[source] http::Error),
}

/// The names the `Connection` header lists.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let values = headers.get_all(header::CONNECTION).iter().filter_map(|value| value.to_str().ok());
    values.flat_map(|value| value.split(',')).map(str::trim)
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()).collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request or a 101 response switches to (`Upgrade`, with `Connection: upgrade`):
/// the one hop-by-hop header a proxy passes on, so that both ends agree on the switch.
pub fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    asked.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Puts back the switch [`upgrade_of`] found, after the hop-by-hop headers were stripped.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's connection to the backend's once both have switched protocols, copying both ways
/// until either closes.
pub fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => return tracing::debug!(error = %e, "protocol switch failed"),
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}

/// The request's headers as the backend gets them: hop-by-hop headers dropped; `Host` kept (from the
/// URI's authority for HTTP/2 clients, which send none); `X-Forwarded-For` with the client appended to what
/// earlier proxies wrote, `X-Forwarded-Proto` and `X-Forwarded-Host` as the client spoke.
pub fn prepare(headers: &mut HeaderMap, uri: &Uri, client: IpAddr, scheme: &'static str) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, authority);
    }
    let earlier: Vec<&str> = headers.get_all(&FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let mut chain = earlier.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&client.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(FORWARDED_FOR, value);
    }
    headers.insert(FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(FORWARDED_HOST, host);
    }
}

/// The response's headers as the client gets them: without the backend's hop-by-hop headers.
pub fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// Sends `request` (its headers already [`prepare`]d) to `endpoints`, starting at `first` and moving on
/// to the next while connections fail.
pub async fn send(
    client: &Client,
    request: Request<Incoming>,
    endpoints: &[SocketAddrV4],
    first: usize,
) -> Result<Response<Incoming>, ForwardError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let hint = body.size_hint();
    let empty = body.is_end_stream();
    let slot = Arc::new(Mutex::new(Some(body)));
    let mut failure = None;
    for i in 0..endpoints.len() {
        let endpoint = endpoints[(first + i) % endpoints.len()];
        let mut builder = Request::builder().method(parts.method.clone()).uri(format!("http://{endpoint}{path}"));
        if let Some(headers) = builder.headers_mut() {
            *headers = parts.headers.clone();
        }
        let body = Replayable { slot: slot.clone(), body: None, empty, hint };
        let outgoing = builder.version(Version::HTTP_11).body(body).map_err(ForwardError::Uri)?;
        match client.request(outgoing).await {
            Ok(response) => return Ok(response),
            // Not a byte of the body was read: the request can go elsewhere whole.
            Err(e) if e.is_connect() && (empty || slot.lock().unwrap_or_else(PoisonError::into_inner).is_some()) => {
                tracing::debug!(%endpoint, error = %e, "endpoint refused the connection, trying the next");
                failure = Some(e);
            }
            Err(e) => return Err(ForwardError::Request(e)),
        }
    }
    Err(failure.map_or(ForwardError::NoEndpoints, ForwardError::Connect))
}

/// A request body taken from a shared slot when first read, so that a request whose connection failed
/// before it was read can be sent again, body and all, to another endpoint.
pub struct Replayable {
    slot: Arc<Mutex<Option<Incoming>>>,
    body: Option<Incoming>,
    /// The client sent no body: nothing to read, whichever attempt.
    empty: bool,
    hint: SizeHint,
}

impl Body for Replayable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.body.is_none() && !this.empty {
            this.body = this.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty || self.body.as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    fn v4(address: SocketAddr) -> SocketAddrV4 {
        match address {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
        }
    }

    /// Serves HTTP/1.1 on a loopback port with `handle` for every request.
    async fn serve<F, Fut, B>(handle: F) -> SocketAddrV4
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = v4(listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handle = handle.clone();
                let service = service_fn(move |request| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(request).await) }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
            }
        });
        address
    }

    /// A pod going away refuses connections: the request goes to the next endpoint, body and all.
    #[tokio::test]
    async fn a_refused_connection_moves_the_request_and_its_body_to_the_next_endpoint() {
        let backend = serve(|request: Request<Incoming>| async move {
            let forwarded = request.headers().get("x-forwarded-for").cloned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let forwarded = forwarded.and_then(|v| v.to_str().ok().map(str::to_string)).unwrap_or_default();
            Response::new(Full::new(Bytes::from(format!("{} {forwarded}", body.len()))))
        })
        .await;
        let refused = v4(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
        let client = client();
        let front = serve(move |mut request: Request<Incoming>| {
            let client = client.clone();
            async move {
                let uri = request.uri().clone();
                prepare(request.headers_mut(), &uri, "10.0.0.7".parse().unwrap(), "http");
                let response = send(&client, request, &[refused, backend], 0).await.unwrap();
                response.map(BodyExt::boxed)
            }
        })
        .await;
        let caller: HyperClient<HttpConnector, Full<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = Request::post(format!("http://{front}/upload")).body(Full::new(Bytes::from(vec![7; 100_000])));
        let response = caller.request(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "100000 10.0.0.7");
        let all_refused = serve(move |request: Request<Incoming>| async move {
            let error = send(&super::client(), request, &[refused], 0).await.err();
            Response::new(Full::new(Bytes::from(error.map(|e| e.to_string()).unwrap_or_default())))
        })
        .await;
        let response = caller.request(Request::get(format!("http://{all_refused}/")).body(Full::default()).unwrap());
        let body = response.await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no endpoint accepted a connection");
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let uri: Uri = "https://shop.example.com:8443/cart?id=1".parse().unwrap();
        prepare(&mut headers, &uri, "10.0.0.7".parse().unwrap(), "https");
        for gone in ["connection", "x-secret-hop", "transfer-encoding", "upgrade"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
        assert_eq!(headers["host"], "shop.example.com:8443", "an HTTP/2 client's authority");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.example.com:8443");
        assert_eq!(headers["content-type"], "text/plain");

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("blog.example.com"));
        prepare(&mut plain, &"/".parse().unwrap(), "10.0.0.8".parse().unwrap(), "http");
        assert_eq!(
            (&plain["host"], &plain["x-forwarded-for"], &plain["x-forwarded-proto"]),
            (
                &HeaderValue::from_static("blog.example.com"),
                &HeaderValue::from_static("10.0.0.8"),
                &HeaderValue::from_static("http")
            )
        );
    }
}
