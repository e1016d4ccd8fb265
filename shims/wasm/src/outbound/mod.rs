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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use skiff_shim::{Egress, OutputSink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::http::TimedBody;

/// How long a connection may take when the guest sets no `connect-timeout` (curl's default is 300 s; a
/// guest holds a request slot while it waits).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first-byte and between-bytes timeouts when the guest sets none: wasmtime's own defaults.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// How many outgoing connections one container may hold at once: each is a socket (and, in a pod's
/// namespace, a thread while it is made) of the agent's.
const MAX_OUTGOING: usize = 100;

/// Where a container's outgoing connections come from and what they may reach; shared by its stores.
pub(crate) struct Outbound {
    egress: Egress,
    origin: Origin,
    /// The container's log, where refusals are explained.
    output: Arc<dyn OutputSink>,
    slots: Arc<Semaphore>,
    /// Made once: every request's store gets them.
    guest_nameservers: Arc<[SocketAddr]>,
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
    pub(crate) fn new(egress: Egress, origin: Origin, output: Arc<dyn OutputSink>) -> Self {
        // A guest's sockets are the agent's, so a loopback nameserver, the node's own, is none of them.
        let servers = egress.resolver.nameservers.iter().map(IpAddr::to_canonical);
        let guest_nameservers = servers.filter(|ip| !ip.is_loopback()).map(|ip| SocketAddr::new(ip, 53)).collect();
        Outbound { egress, origin, output, slots: Arc::new(Semaphore::new(MAX_OUTGOING)), guest_nameservers }
    }

    /// The pod's nameservers a guest may send DNS queries to itself (wasi:sockets).
    pub(crate) fn guest_nameservers(&self) -> &Arc<[SocketAddr]> {
        &self.guest_nameservers
    }

    async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<(http::Response<WasiBody>, BodyIo), Error> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Error::ConnectionLimitReached)?;
        let uri = request.uri().clone();
        // wasmtime gives every request a scheme (https when the guest sets none).
        let scheme = uri.scheme_str().ok_or(Error::HttpProtocolError)?.to_ascii_lowercase();
        let tls = match scheme.as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(Error::HttpProtocolError),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(Error::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let connect_timeout = options.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let destinations = tokio::time::timeout(connect_timeout, self.destinations(&scheme, host, port))
            .await
            .map_err(|_| Error::DnsTimeout)??;
        let connect = async {
            let stream = self.connect_any(&destinations, port).await?;
            let io: Box<dyn Io> = if tls { Box::new(tls_connect(host, stream).await?) } else { Box::new(stream) };
            Ok::<_, Error>(hyper::client::conn::http1::handshake(TokioIo::new(io)).await?)
        };
        let (mut sender, connection) =
            tokio::time::timeout(connect_timeout, connect).await.map_err(|_| Error::ConnectionTimeout)??;
        // The slot is the connection's for as long as it lives.
        let connection = tokio::spawn(async move {
            let _slot = slot;
            connection.await
        });
        // The request line names only the path: the scheme and authority are for proxies.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
        let first_byte = options.first_byte_timeout.unwrap_or(READ_TIMEOUT);
        let response = tokio::time::timeout(first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        let between_bytes = options.between_bytes_timeout.unwrap_or(READ_TIMEOUT);
        let response = response.map(|body| TimedBody::new(body, between_bytes).boxed_unsync());
        let io = async move {
            match connection.await {
                Ok(result) => result.map_err(Error::from),
                Err(join) => Err(Error::InternalError(Some(join.to_string()))),
            }
        };
        Ok((response, Box::new(io)))
    }

    /// The addresses the guest may connect to for `host`; `HTTP-request-denied` (and a line in the pod's
    /// log) when it may connect to none of them.
    async fn destinations(&self, scheme: &str, host: &str, port: u16) -> Result<Vec<IpAddr>, Error> {
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        let listed = self.egress.allowed_hosts.iter().any(|entry| entry.allows(scheme, host, port));
        let (addresses, allowed) = match literal {
            Some(ip) => (vec![ip], listed),
            None => {
                let (name, addresses) = dns::resolve(&self.egress.resolver, &self.origin, host).await?;
                // An allowed name lets through what it is, never what a search domain made of it.
                (addresses, listed && name.eq_ignore_ascii_case(host.trim_end_matches('.')))
            }
        };
        let verdicts: Vec<(IpAddr, Result<(), &str>)> = addresses
            .iter()
            .map(IpAddr::to_canonical)
            .map(|ip| (ip, self.verdict(ip, allowed, literal.is_some())))
            .collect();
        let reachable: Vec<IpAddr> = verdicts.iter().filter(|(_, v)| v.is_ok()).map(|(ip, _)| *ip).collect();
        if reachable.is_empty() {
            let why: Vec<String> =
                verdicts.iter().filter_map(|(ip, v)| v.err().map(|reason| format!("{ip} {reason}"))).collect();
            let message = format!("skiff: outgoing request to {scheme}://{host}:{port} denied: {}\n", why.join("; "));
            self.output.write(Stream::Stderr, message.as_bytes());
            return Err(Error::HttpRequestDenied);
        }
        Ok(reachable)
    }

    /// Whether the guest may connect to `ip` (canonical: no IPv4-mapped IPv6), and if not, why. The
    /// cluster's addresses are open, others only where `allowed` (the pod lists the host); link-local ones
    /// (a cloud's metadata service) only when listed by address (`literal`). Loopback is the pod's own only
    /// inside its namespace: outside it, it would be the node's.
    fn verdict(&self, ip: IpAddr, allowed: bool, literal: bool) -> Result<(), &'static str> {
        if ip.is_loopback() {
            return if self.origin.netns.is_some() { Ok(()) } else { Err("is the node's loopback, not the pod's") };
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err("is no host");
        }
        if !self.origin.can_reach(ip) {
            return Err("is not of the pod's address family");
        }
        if self.egress.cluster.contains(ip) {
            return Ok(());
        }
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        match (allowed, link_local) {
            (true, false) => Ok(()),
            (true, true) if literal => Ok(()),
            (true, true) => Err("is link-local, allowed only by address"),
            (false, _) => {
                Err("is outside the cluster and not allowed by the pod's annotation skiff.dev/allowed-outbound-hosts")
            }
        }
    }

    /// A connection to the first of `addresses` (never empty) that takes one.
    async fn connect_any(&self, addresses: &[IpAddr], port: u16) -> Result<TcpStream, Error> {
        let mut last = Error::DestinationNotFound;
        for ip in addresses {
            match self.origin.connect(SocketAddr::new(*ip, port)).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => last = Error::ConnectionRefused,
                Err(e) => last = Error::Connect(e),
            }
        }
        Err(last)
    }
}

impl Origin {
    /// Whether a connection to `ip` leaves as the pod: always inside its namespace; from the agent's only
    /// for the family of the pod's address, which the socket is bound to.
    fn can_reach(&self, ip: IpAddr) -> bool {
        self.netns.is_some() || self.source.is_unspecified() || self.source.is_ipv4() == ip.is_ipv4()
    }

    /// The pod's address, which sockets to `to` are bound to in the agent's namespace.
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
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| Error::HttpRequestUriInvalid)?;
    tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(Error::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;

    impl OutputSink for Discard {
        fn write(&self, _: Stream, _: &[u8]) {}
    }

    /// A wasm-only pod at 10.42.0.5 (no namespace) in a cluster of 10.42.0.0/16 and 10.43.0.0/16.
    fn outbound(netns: Option<&str>) -> Outbound {
        let cluster =
            |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 42] || v4.octets()[..2] == [10, 43]);
        let egress = Egress { cluster: Arc::new(cluster), ..Egress::default() };
        let origin = Origin { netns: netns.map(PathBuf::from), source: "10.42.0.5".parse().unwrap() };
        Outbound::new(egress, origin, Arc::new(Discard))
    }

    #[test]
    fn the_cluster_is_open_and_the_rest_needs_the_pods_leave() {
        let pod = outbound(None);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap().to_canonical();
        assert_eq!(pod.verdict(ip("10.43.0.10"), false, false), Ok(()));
        assert_eq!(pod.verdict(ip("10.42.7.1"), false, true), Ok(()));
        assert!(
            pod.verdict(ip("192.0.2.1"), false, false).unwrap_err().contains("not allowed by the pod's annotation")
        );
        assert_eq!(pod.verdict(ip("192.0.2.1"), true, false), Ok(()));
        // Loopback, also mapped into IPv6, is the node's without a namespace of the pod's own.
        for loopback in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                pod.verdict(ip(loopback), true, true),
                Err("is the node's loopback, not the pod's"),
                "{loopback}"
            );
            assert_eq!(outbound(Some("/run/netns/pod")).verdict(ip(loopback), false, false), Ok(()), "{loopback}");
        }
        // A cloud's metadata service only when the pod lists the address itself.
        assert_eq!(pod.verdict(ip("169.254.169.254"), true, false), Err("is link-local, allowed only by address"));
        assert_eq!(pod.verdict(ip("169.254.169.254"), true, true), Ok(()));
        // Bound to its IPv4 address, a wasm-only pod cannot leave as itself over IPv6.
        assert_eq!(pod.verdict(ip("2001:db8::1"), true, true), Err("is not of the pod's address family"));
        assert_eq!(pod.verdict(ip("0.0.0.0"), true, true), Err("is no host"));
    }
}
