//! The cluster DNS: a server inside every agent, on the node's own address, port 53 (UDP and TCP). The
//! `kube-system/kube-dns` Service (10.43.0.10) lists every node as an endpoint and keeps each node's
//! queries on the node (`internalTrafficPolicy: Local`), as NodeLocal DNSCache does, so a lookup never
//! crosses the network. Cluster names are answered from the service proxy's watch caches ([`zone`]);
//! other names are relayed to the node's upstream resolvers unchanged.
//!
//! Only the cluster asks: queries from outside the pod ranges and this node are refused, so the node's
//! address is no open resolver for the world.
//!
//! Messages are read and written with hickory-proto. Its server crate's authorities serve zones of stored
//! records; here every answer is computed from live caches, and upstream answers pass through byte for
//! byte, so a small loop over the protocol types fits better.

mod resolv;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use resolv::pod_resolv_conf;

use crate::proxy::SharedCaches;

/// How long an upstream resolver gets to answer a relayed query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer sent without EDNS (RFC 1035); larger ones are truncated, and the client asks
/// again over TCP.
const PLAIN_UDP_SIZE: usize = 512;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the agent was told about cluster DNS.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster DNS Service's address, pods' nameserver (`--cluster-dns`).
    pub cluster_dns: IpAddr,
    /// The cluster's domain (`--cluster-domain`).
    pub domain: String,
    /// The node's resolver configuration: where other names go, and what `dnsPolicy: Default` pods get
    /// (`--resolv-conf`).
    pub resolv_conf: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid cluster domain {0:?}")]
    Domain(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Server {
    domain: Name,
    caches: SharedCaches,
    upstreams: Vec<SocketAddr>,
    node_ip: IpAddr,
}

/// Serves on `ip`:53 until `shutdown`.
pub async fn serve(
    ip: IpAddr,
    config: &DnsConfig,
    caches: SharedCaches,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let domain = Name::from_ascii(format!("{}.", config.domain.trim_end_matches('.')))
        .map(|name| name.to_lowercase())
        .map_err(|_| DnsError::Domain(config.domain.clone()))?;
    let text = std::fs::read_to_string(&config.resolv_conf).unwrap_or_default();
    let upstreams: Vec<SocketAddr> = resolv::nameservers(&text).into_iter().map(|ip| SocketAddr::new(ip, 53)).collect();
    if upstreams.is_empty() {
        tracing::warn!(resolv_conf = %config.resolv_conf.display(), "no upstream resolvers: names outside the cluster will not resolve");
    }
    let address = SocketAddr::new(ip, 53);
    let bind = |source| DnsError::Bind { address, source };
    let udp = UdpSocket::bind(address).await.map_err(bind)?;
    let tcp = TcpListener::bind(address).await.map_err(bind)?;
    tracing::info!(%address, domain = %domain, ?upstreams, "cluster DNS listening");
    let server = Arc::new(Server { domain, caches, upstreams, node_ip: ip });
    let udp = Arc::new(udp);
    let udp_loop = {
        let server = server.clone();
        async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let (length, peer) = match udp.recv_from(&mut buffer).await {
                    Ok(received) => received,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns receive failed");
                        continue;
                    }
                };
                let query = buffer[..length].to_vec();
                let (server, udp) = (server.clone(), udp.clone());
                tokio::spawn(async move {
                    if let Some(answer) = server.answer(&query, peer.ip(), true).await {
                        let _ = udp.send_to(&answer, peer).await;
                    }
                });
            }
        }
    };
    let tcp_loop = async move {
        loop {
            let Ok((stream, peer)) = tcp.accept().await else { continue };
            let server = server.clone();
            tokio::spawn(async move { server.serve_tcp(stream, peer.ip()).await });
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = udp_loop => {}
        _ = tcp_loop => {}
    }
    Ok(())
}

impl Server {
    /// Whether `client` is the cluster's: this node itself, or a pod (DNAT keeps a pod's own address).
    fn serves(&self, client: IpAddr) -> bool {
        match client {
            IpAddr::V4(ip) => {
                client == self.node_ip
                    || ip.is_loopback()
                    || self.caches.read().unwrap_or_else(|poisoned| poisoned.into_inner()).in_pod_ranges(ip)
            }
            IpAddr::V6(ip) => ip.is_loopback(),
        }
    }

    /// The answer to one query message from `client`; None for what deserves no answer (not a query).
    async fn answer(&self, bytes: &[u8], client: IpAddr, udp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(bytes).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = request.queries.clone();
        if !self.serves(client) {
            response.metadata.response_code = ResponseCode::Refused;
            return response.to_vec().ok();
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response.to_vec().ok();
        }
        let name = query.name.to_lowercase();
        let outcome = {
            let caches = self.caches.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            zone::resolve(&caches, &self.domain, &name, query.query_type)
        };
        match outcome {
            zone::Outcome::Forward => return self.forward(bytes, udp).await,
            zone::Outcome::NxDomain => {
                response.metadata.authoritative = true;
                response.metadata.response_code = ResponseCode::NXDomain;
                response.authorities.push(zone::soa(&self.domain));
            }
            zone::Outcome::Found { answers, additionals } => {
                response.metadata.authoritative = true;
                if answers.is_empty() && query.query_type != RecordType::ANY {
                    response.authorities.push(zone::soa(&self.domain));
                }
                response.answers = answers;
                response.additionals = additionals;
            }
        }
        let encoded = response.to_vec().ok()?;
        if udp && encoded.len() > PLAIN_UDP_SIZE && request.edns.is_none() {
            return response.truncate().to_vec().ok();
        }
        Some(encoded)
    }

    /// Relays the query to the upstream resolvers in turn; the first answer goes back unchanged.
    async fn forward(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let attempt = async {
                if udp {
                    let bind: SocketAddr =
                        if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                    let socket = UdpSocket::bind(bind).await?;
                    socket.connect(upstream).await?;
                    socket.send(query).await?;
                    let mut buffer = vec![0u8; 65535];
                    let length = socket.recv(&mut buffer).await?;
                    buffer.truncate(length);
                    Ok::<_, std::io::Error>(buffer)
                } else {
                    let mut stream = TcpStream::connect(upstream).await?;
                    write_framed(&mut stream, query).await?;
                    read_framed(&mut stream).await
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
                Err(_) => tracing::debug!(%upstream, "upstream resolver did not answer in time"),
            }
        }
        let request = Message::from_vec(query).ok()?;
        let mut failure = Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::ServFail);
        failure.queries = request.queries;
        failure.to_vec().ok()
    }

    /// DNS over TCP: two-byte length-prefixed messages, several per connection.
    async fn serve_tcp(&self, mut stream: TcpStream, client: IpAddr) {
        loop {
            let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
                Ok(Ok(query)) => query,
                _ => return,
            };
            let Some(answer) = self.answer(&query, client, false).await else { return };
            if write_framed(&mut stream, &answer).await.is_err() {
                return;
            }
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(length)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(message.len()).map_err(|_| std::io::Error::other("dns message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}
