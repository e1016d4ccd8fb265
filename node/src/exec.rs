//! `kubectl exec` on the node: the session that carries one exec over the Kubernetes WebSocket
//! channel protocol (`v5.channel.k8s.io`, or v4): each binary message starts with a channel byte, 0 stdin,
//! 1 stdout, 2 stderr, 3 the final Status, 4 terminal resizes, and in v5 255 to close a stream (`[255, 0]`:
//! the client's stdin ended).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use skiff_shim::{Exec, ExecProcess, ExecRequest, Stream, TerminalSize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// How long output may keep flowing after the process ended (a background child can hold it open); then the
/// session ends with the exit code, as the kubelet's does.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// How long the session waits for the client to answer its close.
const CLOSE_REPLY: Duration = Duration::from_secs(2);

/// The channel protocols spoken, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V4,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V5 => "v5.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
        }
    }

    /// The best protocol among those a client offers (`Sec-WebSocket-Protocol`, comma-separated, possibly over
    /// several headers).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
        let offered: Vec<&str> = offered.into_iter().flat_map(|h| h.split(',')).map(str::trim).collect();
        [Protocol::V5, Protocol::V4].into_iter().find(|p| offered.contains(&p.name()))
    }
}

/// What the client asked for in the exec's query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// From `command=..&command=..&stdin=true&...`; the command is required.
    pub fn parse(query: &str) -> Result<Self, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| format!("malformed query string: {e}"))?;
        let flag = |key: &str| pairs.iter().any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1"));
        let command: Vec<String> = pairs.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
        if command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        let tty = flag("tty");
        // A terminal has one output stream, as in the kubelet: stderr is never separate.
        Ok(ExecOptions { command, stdin: flag("stdin"), stdout: flag("stdout"), stderr: flag("stderr") && !tty, tty })
    }

    fn request(&self) -> ExecRequest {
        ExecRequest { argv: self.command.clone(), stdin: self.stdin, tty: self.tty }
    }
}

/// A message from the client, by its channel.
#[derive(Debug, PartialEq, Eq)]
enum Incoming<'a> {
    Stdin(&'a [u8]),
    CloseStdin,
    Resize(TerminalSize),
    /// Empty messages, closes of streams that are not ours, and unknown channels.
    Ignored,
}

fn parse_incoming(protocol: Protocol, message: &[u8]) -> Result<Incoming<'_>, String> {
    let Some((&channel, data)) = message.split_first() else { return Ok(Incoming::Ignored) };
    match channel {
        STDIN => Ok(Incoming::Stdin(data)),
        RESIZE => {
            let size: Value = serde_json::from_slice(data).map_err(|e| format!("invalid terminal size: {e}"))?;
            let dimension = |key: &str| size[key].as_u64().and_then(|n| u16::try_from(n).ok());
            match (dimension("Width"), dimension("Height")) {
                (Some(width), Some(height)) => Ok(Incoming::Resize(TerminalSize { width, height })),
                _ => Err(format!("invalid terminal size: {size}")),
            }
        }
        CLOSE if protocol == Protocol::V5 => match data {
            [STDIN] => Ok(Incoming::CloseStdin),
            [_] => Ok(Incoming::Ignored),
            _ => Err(format!("a close message names one channel, got {} bytes", data.len())),
        },
        _ => Ok(Incoming::Ignored),
    }
}

/// One message on `channel`.
fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// The final Status for an exit code, as the kubelet words it; kubectl exits with the code of the ExitCode cause.
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The final Status when the command could not run; kubectl prints the message and exits with 1.
fn failure_status(message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

/// Runs one exec over an upgraded connection: the command in `target` (or the reason there is none, sent as
/// the final Status), its streams on their channels, then the Status with the exit code.
pub async fn session<S>(
    mut ws: WebSocketStream<S>,
    protocol: Protocol,
    target: Result<Arc<dyn Exec>, String>,
    options: ExecOptions,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let status = match target {
        Err(message) => failure_status(&message),
        Ok(exec) => match exec.exec(options.request()).await {
            Err(e) => failure_status(&e.to_string()),
            Ok(process) => match relay(&mut ws, protocol, process, &options).await {
                Some(code) => exit_status(&options.command, code),
                // The client left: the process was killed with the dropped handle, nobody reads a status.
                None => return,
            },
        },
    };
    tracing::debug!(%status, "exec ended");
    let status = serde_json::to_vec(&status).unwrap_or_default();
    if let Err(e) = ws.send(Message::binary(frame(ERROR, &status))).await {
        tracing::debug!(error = %e, "cannot send the exec's status");
    }
    // kubectl takes any close but a normal one (1000) as an error of the error stream.
    let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = ws.close(Some(normal)).await;
    // Until the client answers the close, reading what it sent meanwhile (input, a resize): a connection
    // dropped with unread input is reset rather than closed, and a reset makes the API server in between drop
    // what it had not yet passed on to kubectl, the status among it ("close 1006 (abnormal closure)").
    let _ = tokio::time::timeout(CLOSE_REPLY, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Carries the process's streams until it ended and its output closed (or drained for [`OUTPUT_DRAIN`]):
/// the exit code, or `None` when the client went away first.
async fn relay<S>(
    ws: &mut WebSocketStream<S>,
    protocol: Protocol,
    mut process: ExecProcess,
    options: &ExecOptions,
) -> Option<i32>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stdin = process.stdin.take();
    let mut output_open = true;
    let mut exit: Option<i32> = None;
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    loop {
        if let (Some(code), false) = (exit, output_open) {
            return Some(code);
        }
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) => match parse_incoming(protocol, &data) {
                    Ok(Incoming::Stdin(bytes)) => {
                        if let Some(tx) = &stdin && tx.send(bytes.to_vec()).await.is_err() {
                            stdin = None;
                        }
                    }
                    Ok(Incoming::CloseStdin) => stdin = None,
                    Ok(Incoming::Resize(size)) => process.control.resize(size),
                    Ok(Incoming::Ignored) => {}
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed exec message"),
                },
                Some(Ok(Message::Close(_))) | None => return None,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "exec connection failed");
                    return None;
                }
                // Pings are answered by the WebSocket layer; text belongs to the base64 protocols, not offered.
                Some(Ok(_)) => {}
            },
            chunk = process.output.recv(), if output_open => match chunk {
                Some((stream, bytes)) => {
                    let (channel, wanted) = match stream {
                        Stream::Stdout => (STDOUT, options.stdout),
                        Stream::Stderr => (STDERR, options.stderr),
                    };
                    if wanted && ws.send(Message::binary(frame(channel, &bytes))).await.is_err() {
                        return None;
                    }
                }
                None => output_open = false,
            },
            code = process.control.wait(), if exit.is_none() => {
                exit = Some(code);
                drain.as_mut().reset(tokio::time::Instant::now() + OUTPUT_DRAIN);
            }
            _ = &mut drain, if exit.is_some() => {
                tracing::debug!("the exec's output is still open after it ended");
                return exit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_parse() {
        assert_eq!(parse_incoming(Protocol::V5, &[STDIN, b'h', b'i']), Ok(Incoming::Stdin(b"hi")));
        assert_eq!(parse_incoming(Protocol::V5, &[STDIN]), Ok(Incoming::Stdin(b"")));
        assert_eq!(parse_incoming(Protocol::V5, &[]), Ok(Incoming::Ignored));
        assert_eq!(parse_incoming(Protocol::V5, &[CLOSE, STDIN]), Ok(Incoming::CloseStdin));
        assert_eq!(parse_incoming(Protocol::V5, &[CLOSE, STDOUT]), Ok(Incoming::Ignored));
        assert!(parse_incoming(Protocol::V5, &[CLOSE]).is_err());
        // v4 has no close signal: 255 is just an unknown channel there.
        assert_eq!(parse_incoming(Protocol::V4, &[CLOSE, STDIN]), Ok(Incoming::Ignored));
        let resize = frame(RESIZE, br#"{"Width":120,"Height":40}"#);
        assert_eq!(
            parse_incoming(Protocol::V4, &resize),
            Ok(Incoming::Resize(TerminalSize { width: 120, height: 40 }))
        );
        assert!(parse_incoming(Protocol::V5, &frame(RESIZE, br#"{"Width":-1,"Height":40}"#)).is_err());
        assert!(parse_incoming(Protocol::V5, &frame(RESIZE, b"not json")).is_err());
        assert_eq!(parse_incoming(Protocol::V5, &[9, 1, 2]), Ok(Incoming::Ignored));
    }

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(frame(STDOUT, b"out"), b"\x01out");
        assert_eq!(frame(STDERR, b""), [STDERR]);
        assert_eq!(frame(ERROR, b"{}"), b"\x03{}");
    }

    #[test]
    fn statuses_carry_the_exit_code_as_kubectl_reads_it() {
        let command = vec!["sh".to_string(), "-c".to_string(), "exit 7".to_string()];
        assert_eq!(exit_status(&command, 0)["status"], "Success");
        let failed = exit_status(&command, 7);
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"], json!([{"reason": "ExitCode", "message": "7"}]));
        let refused = failure_status("exec is not supported for wasm containers: x");
        assert_eq!(
            (refused["status"].as_str(), refused["message"].as_str()),
            (Some("Failure"), Some("exec is not supported for wasm containers: x"))
        );
        assert!(refused.get("details").is_none());
    }

    /// A client still sending when the session closes: the session reads on until the client's close reply,
    /// so nothing the client sent is left unread when the connection ends.
    #[tokio::test]
    async fn the_session_reads_until_the_client_answers_its_close() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (server, client) = tokio::io::duplex(1024);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let options = ExecOptions::parse("command=true&stdin=true").unwrap();
        let session = tokio::spawn(session(server, Protocol::V5, Err("not running".into()), options));
        // Input in flight as the session ends, more than the pipe holds: it goes through only if the session
        // reads on after its close.
        let sent = tokio::time::timeout(CLOSE_REPLY, client.send(Message::binary(frame(STDIN, &[b'x'; 4096]))))
            .await
            .expect("the send neither went through nor failed");
        assert!(sent.is_ok(), "the session stopped reading before the client's close reply: {sent:?}");
        let status = client.next().await.unwrap().unwrap().into_data();
        assert_eq!(status[0], ERROR);
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))), "then the session closes");
        while client.next().await.is_some_and(|m| m.is_ok()) {}
        session.await.unwrap();
    }

    #[test]
    fn the_best_offered_protocol_wins() {
        assert_eq!(Protocol::negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]), Some(Protocol::V5));
        assert_eq!(Protocol::negotiate(["channel.k8s.io", "v4.channel.k8s.io"]), Some(Protocol::V4));
        assert_eq!(Protocol::negotiate(["base64.channel.k8s.io"]), None);
        assert_eq!(Protocol::negotiate([]), None);
    }

    #[test]
    fn options_come_from_the_query() {
        let options = ExecOptions::parse("command=sh&command=-c&command=echo+%24FOO&stdout=true&stderr=true").unwrap();
        assert_eq!(options.command, ["sh", "-c", "echo $FOO"]);
        assert!(options.stdout && options.stderr && !options.stdin && !options.tty);
        let tty = ExecOptions::parse("command=sh&stdin=true&stdout=true&stderr=true&tty=true").unwrap();
        assert!(tty.tty && tty.stdin && !tty.stderr);
        assert!(ExecOptions::parse("stdout=true").unwrap_err().contains("at least one command"));
    }
}
