//! Port-forward over WebSocket channels (`v4.channel.k8s.io`), as the kubelet serves it to clients that speak
//! no SPDY: the Python client's `portforward`, kube-rs's `Api::portforward`. The ports come in the request's
//! query; port I has channel 2I for its bytes and 2I+1 for its errors, each opening with the port number (two
//! bytes, little-endian), and every message carries its channel in its first byte. There is one connection
//! to each port for the whole session, which ends when every forward has ended or the client leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol::Role};

use super::{CHUNK, CONNECT_TIMEOUT, PodTarget};

/// How long a session whose forward failed waits for the client to read the error and close.
const ERROR_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The WebSocket subprotocol.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// The ports a request's query names (`ports=8080&ports=9090`, or `ports=8080,9090`; the kubelet's own
/// parameter is `port`): at least one and at most [`MAX_PORTS`], each in 1–65535.
pub fn ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|e| format!("invalid query: {e}"))?;
    let mut ports = Vec::new();
    for (key, value) in pairs {
        if key != "ports" && key != "port" {
            continue;
        }
        for text in value.split(',') {
            let port = text.trim().parse::<u16>().ok().filter(|p| *p > 0);
            ports.push(port.ok_or_else(|| format!("invalid port {text:?}"))?);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"ports\" is required".into());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} ports per connection, not {}", ports.len()));
    }
    Ok(ports)
}

/// Each port takes two channels (data, error), numbered in one byte.
const MAX_PORTS: usize = 128;

/// `data` on `channel`.
fn frame(channel: usize, data: &[u8]) -> Message {
    let mut message = BytesMut::with_capacity(1 + data.len());
    message.put_u8(channel as u8);
    message.put_slice(data);
    Message::Binary(message.freeze())
}

/// Serves one session on the upgraded connection `io`.
pub async fn session<S>(io: S, ports: Vec<u16>, pod: Arc<PodTarget>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut incoming) = ws.split();
    let (out, mut outgoing) = mpsc::channel::<Message>(64);
    let mut openings = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        openings.push(frame(2 * index, &port.to_le_bytes()));
        openings.push(frame(2 * index + 1, &port.to_le_bytes()));
    }
    let mut failed = false;
    let mut to_pods: Vec<Option<OwnedWriteHalf>> = Vec::new();
    let forwards = FuturesUnordered::new();
    for (index, port) in ports.iter().enumerate() {
        let address = SocketAddr::new(pod.ip, *port);
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
            Err(_) => Err(format!("cannot connect to {address}: timed out")),
        };
        match connected {
            Ok(tcp) => {
                let (from_pod, to_pod) = tcp.into_split();
                to_pods.push(Some(to_pod));
                forwards.push(from_pod_to_client(2 * index, from_pod, out.clone()));
            }
            Err(failure) => {
                tracing::debug!(%failure, port, "cannot forward");
                let message = format!("error forwarding port {port} to pod {}, uid {}: {failure}", pod.name, pod.uid);
                openings.push(frame(2 * index + 1, message.as_bytes()));
                to_pods.push(None);
                failed = true;
            }
        }
    }
    for opening in openings {
        let _ = out.send(opening).await;
    }
    drop(out);
    let client_to_pods = async {
        while let Some(Ok(message)) = incoming.next().await {
            let Message::Binary(data) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let Some((&channel, bytes)) = data.split_first() else { continue };
            // Only data channels carry the client's bytes; a write that fails ends that forward's way in.
            let to_pod = (channel % 2 == 0).then(|| to_pods.get_mut(usize::from(channel / 2))).flatten();
            if let Some(slot) = to_pod
                && let Some(writer) = slot.as_mut()
                && writer.write_all(bytes).await.is_err()
            {
                *slot = None;
            }
        }
    };
    let session = async move {
        let mut forwards = forwards;
        let mut client_to_pods = std::pin::pin!(client_to_pods);
        tokio::select! {
            _ = &mut client_to_pods => return,
            _ = async { while forwards.next().await.is_some() {} } => {}
        }
        // After a failed forward the client may still be sending what it meant for the port: closing now
        // could break its write before it has read the error. It closes once it has read it.
        if failed {
            let _ = tokio::time::timeout(ERROR_GRACE, client_to_pods).await;
        }
    };
    // The writer ends once every sender is gone: the forwards' go with the session.
    let writer = async {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(session, writer);
}

/// Carries the pod's bytes to the client on `channel` until the pod is done.
async fn from_pod_to_client(channel: usize, mut from_pod: OwnedReadHalf, out: mpsc::Sender<Message>) {
    let mut buffer = BytesMut::new();
    loop {
        buffer.reserve(CHUNK);
        match from_pod.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let chunk: Bytes = buffer.split().freeze();
                if out.send(frame(channel, &chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports(Some("ports=8080")), Ok(vec![8080]));
        assert_eq!(ports(Some("ports=8080,9090&ports=53")), Ok(vec![8080, 9090, 53]));
        assert_eq!(ports(Some("port=80")), Ok(vec![80]));
        // kube-rs's form.
        assert_eq!(ports(Some("&ports=80%2C1234")), Ok(vec![80, 1234]));
        assert_eq!(ports(None), Err("query parameter \"ports\" is required".into()));
        assert_eq!(ports(Some("ports=0")), Err("invalid port \"0\"".into()));
        assert_eq!(ports(Some("ports=http")), Err("invalid port \"http\"".into()));
        let many = vec!["1"; 129].join(",");
        assert_eq!(ports(Some(&format!("ports={many}"))), Err("at most 128 ports per connection, not 129".into()));
    }
}
