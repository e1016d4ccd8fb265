//! `kubectl port-forward` on the node. The client's upgraded connection, passed through by the API server,
//! carries SPDY/3.1 ([`spdy`]): tunnelled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`,
//! which kubectl 1.31+ tries first), or on the connection itself (`Upgrade: SPDY/3.1`, its fallback and
//! older kubectls' only way); or WebSocket channels ([`channels`], `v4.channel.k8s.io`, the other clients'). Each connection kubectl takes locally opens two streams with one `requestid`
//! and the remote `port`: `data` carries the bytes, `error` the reason the forward failed (nothing when it
//! did not), as the kubelet's protocol has it. The agent connects to the port at the pod's address (its
//! podIP: a network namespace's, reached over the node's bridge; a wasm pod's, on the bridge; the node's
//! with host networking) and carries bytes both ways.

mod channels;
mod spdy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt, TryStreamExt};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, protocol::Role};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
use tracing::Instrument;

use spdy::{Stream, StreamSender};

/// The stream protocol, as a SPDY client names it (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in WebSocket.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The `Upgrade` of plain SPDY.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
/// Where a plain SPDY client offers [`PROTOCOL`], and the server says it took it.
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// How long a connection to the pod may take: a pod gone meanwhile leaves nothing to refuse it, and the
/// kernel's own retries would keep the client waiting for two minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most read from the pod into one DATA frame (io.Copy's buffer on the client's side).
const CHUNK: usize = 32 * 1024;

pub use channels::PROTOCOL as CHANNEL_PROTOCOL;

/// How the client carries the forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SPDY in WebSocket binary messages.
    WebSocket,
    /// SPDY on the upgraded connection itself.
    Spdy,
    /// WebSocket channels, to the ports the query names.
    Channels(Vec<u16>),
}

impl Transport {
    /// The transport an upgrade request asks for, if it offers a port-forward protocol over it; else the
    /// refusal the client sees.
    pub fn of(headers: &HeaderMap, query: Option<&str>) -> Result<Self, String> {
        let offers = |header: &str, protocol: &str| {
            let values = headers.get_all(header).iter().filter_map(|v| v.to_str().ok());
            values.flat_map(|v| v.split(',')).any(|offered| offered.trim() == protocol)
        };
        let upgrade = headers.get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let websocket =
            upgrade.eq_ignore_ascii_case("websocket") && headers.contains_key(http::header::SEC_WEBSOCKET_KEY);
        let subprotocol = http::header::SEC_WEBSOCKET_PROTOCOL.as_str();
        if websocket && offers(subprotocol, TUNNEL_PROTOCOL) {
            Ok(Transport::WebSocket)
        } else if websocket && offers(subprotocol, CHANNEL_PROTOCOL) {
            channels::ports(query).map(Transport::Channels)
        } else if upgrade.eq_ignore_ascii_case(SPDY_UPGRADE) && offers(STREAM_PROTOCOL_HEADER, PROTOCOL) {
            Ok(Transport::Spdy)
        } else {
            Err(format!(
                "port-forward speaks {TUNNEL_PROTOCOL} or {CHANNEL_PROTOCOL} over WebSocket, or {PROTOCOL} over an upgrade to {SPDY_UPGRADE}"
            ))
        }
    }
}

/// The pod whose ports are forwarded.
pub struct PodTarget {
    /// `namespace/name`.
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
}

/// Serves one port-forward connection until the client leaves; the forwards under way end with it.
pub async fn session<S>(io: S, transport: Transport, pod: PodTarget)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let pod = Arc::new(pod);
    let mut waiting: HashMap<String, Half> = HashMap::new();
    let on_stream = |stream: Stream| {
        if let Some((request, half)) = Half::of(stream)
            && let Some(pair) = pair(&mut waiting, request, half)
        {
            let span = tracing::info_span!("forward", port = pair.port);
            tokio::spawn(forward(pod.clone(), pair).instrument(span));
        }
    };
    let served = match transport {
        Transport::Channels(ports) => {
            channels::session(io, ports, pod).await;
            return;
        }
        Transport::WebSocket => {
            let (reader, writer) = websocket_halves(WebSocketStream::from_raw_socket(io, Role::Server, None).await);
            spdy::serve(reader, writer, on_stream).await
        }
        Transport::Spdy => {
            let (reader, writer) = tokio::io::split(io);
            spdy::serve(reader, writer, on_stream).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = &e as &dyn std::error::Error, "port-forward connection ended with an error");
    }
}

/// A WebSocket as a byte stream, as client-go's tunnelling connection makes one: SPDY's bytes go in binary
/// messages, split anywhere (client-go writes a frame's fields one by one).
fn websocket_halves<S>(ws: WebSocketStream<S>) -> (impl AsyncRead + Unpin, impl AsyncWrite + Unpin)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, messages) = ws.split();
    let bytes = messages
        .try_filter_map(|message| {
            futures::future::ready(Ok(match message {
                Message::Binary(data) => Some(data),
                _ => None,
            }))
        })
        .map_err(std::io::Error::other);
    let sink = sink
        .with(|data: Bytes| futures::future::ready(Ok::<_, tungstenite::Error>(Message::Binary(data))))
        .sink_map_err(std::io::Error::other);
    (StreamReader::new(bytes), SinkWriter::new(CopyToBytes::new(sink)))
}

/// Which of a pair a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Error,
}

/// One stream of a forward, waiting for the other.
struct Half {
    kind: Kind,
    port: String,
    stream: Stream,
}

impl Half {
    /// The stream's part in a forward, and the request it belongs to; None for a stream that has none,
    /// which is refused.
    fn of(stream: Stream) -> Option<(String, Half)> {
        let kind = match stream.headers.get("streamtype") {
            Some("data") => Some(Kind::Data),
            Some("error") => Some(Kind::Error),
            _ => None,
        };
        let request = stream.headers.get("requestid").map(str::to_string);
        let (Some(kind), Some(request)) = (kind, request) else {
            tracing::debug!(headers = ?stream.headers, "refusing a stream that is no port-forward's");
            tokio::spawn(async move { stream.out.refuse().await });
            return None;
        };
        let port = stream.headers.get("port").unwrap_or_default().to_string();
        Some((request, Half { kind, port, stream }))
    }
}

/// A forward's two streams.
struct Pair {
    port: String,
    data: Stream,
    error: Stream,
}

/// Keeps `half` until the other half of its request comes, then gives both.
fn pair(waiting: &mut HashMap<String, Half>, request: String, half: Half) -> Option<Pair> {
    match waiting.remove(&request) {
        Some(other) if other.kind != half.kind => {
            let (data, error) = if half.kind == Kind::Data { (half, other) } else { (other, half) };
            Some(Pair { port: data.port, data: data.stream, error: error.stream })
        }
        // A second stream of the same kind replaces the first, which is dropped (its client sees no data).
        _ => {
            waiting.insert(request, half);
            None
        }
    }
}

/// Forwards one connection: connects to the port at the pod's address and carries bytes both ways until
/// both sides are done, the client resets the data stream, or the connection goes. Only a failure to
/// connect is the client's error to read, as from containerd: a connection that ends badly once made is its
/// two ends' business.
async fn forward(pod: Arc<PodTarget>, pair: Pair) {
    let Pair { port, data, error } = pair;
    let Stream { incoming, out, reset, .. } = data;
    let forwarded = async {
        let number: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port {port:?}"))?;
        let address = SocketAddr::new(pod.ip, number);
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
            Err(_) => return Err(format!("cannot connect to {address}: timed out")),
        };
        if let Err(e) = pump(tcp, incoming, &out).await {
            tracing::debug!(error = %e, "the forwarded connection ended with an error");
        }
        Ok(())
    };
    let failed = tokio::select! {
        forwarded = forwarded => forwarded.err(),
        _ = reset.cancelled() => None,
    };
    if let Some(failure) = failed {
        tracing::debug!(%failure, "cannot forward");
        let message = format!("error forwarding port {port} to pod {}, uid {}: {failure}", pod.name, pod.uid);
        // kubectl reads the error stream once the data stream has ended.
        let _ = error.out.send(Bytes::from(message)).await;
        out.close().await;
    }
    error.out.close().await;
}

/// Carries bytes until both sides are done: the pod's (then the stream's FIN, at once: the client may wait
/// for it before it ends its own side) and the client's (then the connection's write side is shut, as the
/// client's FIN says). The first error, if any.
async fn pump(tcp: TcpStream, mut incoming: mpsc::Receiver<Bytes>, out: &StreamSender) -> std::io::Result<()> {
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let upstream = async move {
        while let Some(chunk) = incoming.recv().await {
            to_pod.write_all(&chunk).await?;
        }
        to_pod.shutdown().await
    };
    let downstream = async {
        let mut buffer = BytesMut::new();
        let read = loop {
            buffer.reserve(CHUNK);
            match from_pod.read_buf(&mut buffer).await {
                Ok(0) => break Ok(()),
                Ok(_) => {
                    if let Err(e) = out.send(buffer.split().freeze()).await {
                        break Err(std::io::Error::other(e));
                    }
                }
                Err(e) => break Err(e),
            }
        };
        out.close().await;
        read
    };
    let (up, down) = tokio::join!(upstream, downstream);
    down.and(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    #[test]
    fn the_transport_is_the_one_the_client_upgrades_to() {
        let tunnel =
            [("upgrade", "websocket"), ("sec-websocket-key", "a2V5"), ("sec-websocket-protocol", TUNNEL_PROTOCOL)];
        assert_eq!(Transport::of(&headers(&tunnel), None), Ok(Transport::WebSocket));
        let several = [
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "a2V5"),
            ("sec-websocket-protocol", "x, SPDY/3.1+portforward.k8s.io"),
        ];
        assert_eq!(Transport::of(&headers(&several), None), Ok(Transport::WebSocket));
        let spdy = [("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", PROTOCOL)];
        assert_eq!(Transport::of(&headers(&spdy), None), Ok(Transport::Spdy));
        let channels =
            [("upgrade", "websocket"), ("sec-websocket-key", "a2V5"), ("sec-websocket-protocol", CHANNEL_PROTOCOL)];
        assert_eq!(Transport::of(&headers(&channels), Some("ports=8080")), Ok(Transport::Channels(vec![8080])));
        assert!(Transport::of(&headers(&channels), None).unwrap_err().contains("\"ports\" is required"));
        // exec's channel protocol, a WebSocket without its key, SPDY without the port-forward protocol.
        let exec =
            [("upgrade", "websocket"), ("sec-websocket-key", "a2V5"), ("sec-websocket-protocol", "v5.channel.k8s.io")];
        let keyless = [("upgrade", "websocket"), ("sec-websocket-protocol", TUNNEL_PROTOCOL)];
        let other = [("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v4.channel.k8s.io")];
        for refused in [&exec[..], &keyless, &other, &[]] {
            let refusal = Transport::of(&headers(refused), Some("ports=80")).unwrap_err();
            assert!(refusal.starts_with("port-forward speaks"), "{refused:?}");
        }
    }
}
