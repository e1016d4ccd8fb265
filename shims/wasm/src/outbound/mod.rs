//! Guests' outgoing HTTP (`wasi:http/outgoing-handler`), sent by the agent as the pod would send it: names
//! resolved by the pod's resolver ([`dns`]), connections made from the pod's network namespace, or from its
//! address on the node's bridge, so the service proxy and NetworkPolicy treat them as the pod's. A guest
//! reaches the cluster's addresses (pods, Services, nodes) and, outside the cluster, only the hosts its pod
//! allows (`skiff.dev/allowed-outbound-hosts`, as Spin's `allowed_outbound_hosts`); anything else is refused
//! with `HTTP-request-denied` and a line in the pod's log saying why.

mod dns;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use skiff_shim::{Egress, OutputSink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// How long a connection may take when the guest sets no `connect-timeout` (curl's default is 300 s; a
/// guest holds a request slot while it waits).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first-byte and between-bytes timeouts when the guest sets none: wasmtime's own defaults.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a container's outgoing connections come from and what they may reach; shared by its stores.
pub(crate) struct Outbound {
    pub egress: Egress,
    pub origin: Origin,
    /// The container's log, where refusals are explained.
    pub output: Arc<dyn OutputSink>,
}

/// Where sockets are made: the pod's network namespace, or the agent's bound to the pod's address.
pub(crate) struct Origin {
    pub netns: Option<PathBuf>,
    /// The pod's address (the unspecified address inside its own namespace).
    pub source: IpAddr,
}

type BodyIo = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// The hooks of one store: every request goes through its container's [`Outbound`].
pub(crate) struct OutboundHooks(pub Arc<Outbound>);

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_io: BodyIo,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, BodyIo), Error>> + Send> {
        let outbound = self.0.clone();
        Box::new(async move { outbound.send(request, options.unwrap_or_default()).await })
    }
}

impl Outbound {
    async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<(http::Response<WasiBody>, BodyIo), Error> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let tls = match scheme.as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(Error::HttpProtocolError),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(Error::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let allowed = self.egress.allowed_hosts.iter().any(|entry| entry.allows(&scheme, host, port));
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
        let addresses = match literal {
            Ok(ip) => vec![ip],
            Err(_) => dns::resolve(&self.egress.resolver, &self.origin, host).await?,
        };
        let reachable: Vec<IpAddr> = addresses.iter().copied().filter(|ip| self.reachable(*ip, allowed)).collect();
        if reachable.is_empty() {
            let listed = addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
            let why = if addresses.iter().all(IpAddr::is_loopback) {
                "the node's loopback, not the pod's".to_string()
            } else {
                "outside the cluster and not allowed by the pod's annotation skiff.dev/allowed-outbound-hosts"
                    .to_string()
            };
            let message = format!("skiff: outgoing request to {scheme}://{host}:{port} denied: {listed} {why}\n");
            self.output.write(Stream::Stderr, message.as_bytes());
            return Err(Error::HttpRequestDenied);
        }
        let connect_timeout = options.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let stream = tokio::time::timeout(connect_timeout, self.connect_any(&reachable, port))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        let io: Box<dyn Io> = if tls { Box::new(tls_connect(host, stream).await?) } else { Box::new(stream) };
        let (mut sender, connection) =
            tokio::time::timeout(connect_timeout, hyper::client::conn::http1::handshake(TokioIo::new(io)))
                .await
                .map_err(|_| Error::ConnectionTimeout)??;
        let connection = tokio::spawn(connection);
        // The request line names only the path: the scheme and authority are for proxies.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
        let first_byte = options.first_byte_timeout.unwrap_or(READ_TIMEOUT);
        let response = tokio::time::timeout(first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        let between_bytes = options.between_bytes_timeout.unwrap_or(READ_TIMEOUT).max(Duration::from_nanos(1));
        let response = response.map(|body| TimedBody::new(body, between_bytes).boxed_unsync());
        let io = async move {
            match connection.await {
                Ok(result) => result.map_err(Error::from),
                Err(join) => Err(Error::InternalError(Some(join.to_string()))),
            }
        };
        Ok((response, Box::new(io)))
    }

    /// Whether the guest may connect to `ip`: an address of the cluster, or any that `allowed` (the host's
    /// name in the pod's list) lets through. Loopback is the pod's own only inside its namespace; outside it,
    /// it would be the node's.
    fn reachable(&self, ip: IpAddr, allowed: bool) -> bool {
        if ip.is_loopback() {
            return self.origin.netns.is_some();
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        allowed || self.egress.cluster.contains(ip)
    }

    /// A connection to the first address that takes one.
    async fn connect_any(&self, addresses: &[IpAddr], port: u16) -> Result<TcpStream, Error> {
        let mut last = None;
        for ip in addresses {
            match self.origin.connect(SocketAddr::new(*ip, port)).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
            Some(e) => Error::Connect(e),
            None => Error::DestinationNotFound,
        })
    }
}

impl Origin {
    /// Whether sockets to `to` are bound to the pod's address (in the agent's namespace, same family).
    fn bind_address(&self, to: SocketAddr) -> Option<SocketAddr> {
        let same_family = self.source.is_ipv4() == to.is_ipv4();
        (self.netns.is_none() && same_family && !self.source.is_unspecified()).then(|| SocketAddr::new(self.source, 0))
    }

    pub(crate) async fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let bind = self.bind_address(to);
        let socket = crate::netns::within(self.netns.as_deref(), move || {
            let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let Some(bind) = bind {
                socket.bind(bind)?;
            }
            Ok(socket)
        })
        .await?;
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    pub(crate) async fn udp_socket(&self, to: SocketAddr) -> std::io::Result<UdpSocket> {
        let bind = self.bind_address(to).unwrap_or_else(|| {
            let any: IpAddr = if to.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, 0)
        });
        let socket = crate::netns::within(self.netns.as_deref(), move || {
            let socket = std::net::UdpSocket::bind(bind)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .await?;
        UdpSocket::from_std(socket)
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// TLS to `host` with the node's trusted roots (what the node's containers trust in /etc/ssl), HTTP/1.1.
async fn tls_connect(host: &str, stream: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    });
    let config = config.clone().map_err(|e| Error::InternalError(Some(e)))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| Error::DnsError { rcode: Some("invalid dns name".into()), info_code: None })?;
    tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(Error::Tls)
}

/// A response body that fails when no frame comes for `timeout` (the guest's `between-bytes-timeout`).
struct TimedBody {
    body: Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        TimedBody { body, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.as_mut().reset(tokio::time::Instant::now() + this.timeout);
                Poll::Ready(frame.map(|frame| frame.map_err(Error::from)))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
