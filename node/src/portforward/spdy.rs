//! The server's side of SPDY/3.1 as `kubectl port-forward` speaks it (through moby/spdystream, the library
//! of client-go and of the kubelet): the client opens streams (SYN_STREAM, with a header block compressed by
//! one zlib stream per direction primed with the protocol's dictionary), each is accepted at once
//! (SYN_REPLY), data flows both ways in DATA frames until each side's FIN or a RST_STREAM, pings are echoed,
//! and a GOAWAY or the end of the connection ends every stream.
//!
//! No crate serves SPDY (the one multiplexer, spdy-mux, is a GPL client), so this is the subset needed.
//! Flow control is left out as spdystream leaves it out: it never sends WINDOW_UPDATE nor waits for one, so
//! a stream's window would run dry after 64 KiB if this side waited for them. A stream whose reader is slow
//! holds up the connection's reading instead, as spdystream's does.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 1;
/// RST_STREAM's status for a stream that breaks the protocol.
const PROTOCOL_ERROR: u32 = 1;

/// The largest header block taken, decompressed: port-forward's are three short headers, and the limit
/// keeps a small compressed block from inflating without bound.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Frames queued for the connection: enough for the streams' data to flow while one write is under way.
const QUEUED_FRAMES: usize = 64;
/// A stream's chunks queued for its reader before the connection's reading waits for it.
const QUEUED_CHUNKS: usize = 16;
/// Bytes gathered into one write (one WebSocket message, one TLS record run) from frames queued together.
const WRITE_BATCH: usize = 64 * 1024;

/// The header block dictionary of SPDY/3 (draft 3, section 2.6.10.1): these names and values, each after
/// its length as a 32-bit big-endian number, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let mut dictionary = Vec::new();
        for word in DICTIONARY_WORDS {
            dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dictionary.extend_from_slice(word.as_bytes());
        }
        dictionary.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        dictionary
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// Reading or writing the connection failed.
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} is not spoken here, only 3")]
    Version(u16),
    /// A frame too short for its type, or a header block that does not parse.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A header block that does not decompress.
    #[error("cannot decompress a header block")]
    Inflate(#[from] flate2::DecompressError),
    /// The header compressor refused (it does not, short of a bug).
    #[error("cannot compress a header block")]
    Deflate(#[from] flate2::CompressError),
}

/// A stream's headers: lowercase names, values as sent (several are joined by NUL bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The (first) value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let (_, value) = self.0.iter().find(|(n, _)| n == name)?;
        value.split('\0').next()
    }

    /// Parses a decompressed header block: a count, then each name and value after its length.
    fn parse(mut block: &[u8]) -> Result<Self, SpdyError> {
        let count = length(&mut block)?;
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = String::from_utf8_lossy(take(&mut block)?).to_ascii_lowercase();
            let value = String::from_utf8_lossy(take(&mut block)?).into_owned();
            headers.push((name, value));
        }
        Ok(Headers(headers))
    }
}

/// Takes a 32-bit big-endian length off the front of `block`.
fn length(block: &mut &[u8]) -> Result<usize, SpdyError> {
    let (number, rest) = block.split_first_chunk::<4>().ok_or(SpdyError::Malformed("header block"))?;
    *block = rest;
    Ok(u32::from_be_bytes(*number) as usize)
}

/// Takes a string after its length off the front of `block`.
fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
    let length = length(block)?;
    let (text, rest) = block.split_at_checked(length).ok_or(SpdyError::Malformed("header block"))?;
    *block = rest;
    Ok(text)
}

/// A frame from the client, as far as a server acts on it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        stream: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, and what a client has no reason to send: nothing to do.
    Ignored,
}

/// A frame to the client.
#[derive(Debug, PartialEq, Eq)]
enum Outgoing {
    Reply { stream: u32 },
    Data { stream: u32, fin: bool, data: Bytes },
    Reset { stream: u32, status: u32 },
    Ping { id: u32 },
}

/// Reads frames, keeping the connection's header decompressor.
struct FrameReader<R> {
    reader: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(reader: R) -> Self {
        FrameReader { reader, inflate: Decompress::new(true) }
    }

    /// The next frame, or None when the connection ended.
    async fn next(&mut self) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0u8; 8];
        match self.reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let fin = head[4] & FLAG_FIN != 0;
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = BytesMut::zeroed(length);
        self.reader.read_exact(&mut payload).await?;
        let payload = payload.freeze();
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream: word, fin, data: payload }));
        }
        let version = (word >> 16) as u16 & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = word as u16;
        let number = |at: usize, what| {
            let bytes = payload.get(at..at + 4).ok_or(SpdyError::Malformed(what))?;
            Ok::<_, SpdyError>(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff)
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let stream = number(0, "SYN_STREAM")?;
                let block = payload.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                Frame::SynStream { stream, fin, headers: Headers::parse(&self.inflate(block)?)? }
            }
            RST_STREAM => Frame::RstStream { stream: number(0, "RST_STREAM")? },
            PING => Frame::Ping { id: number(0, "PING")? },
            GOAWAY => Frame::GoAway,
            // Its header block moves the connection's decompressor on, whether or not this side uses it.
            HEADERS => {
                self.inflate(payload.get(4..).ok_or(SpdyError::Malformed("HEADERS"))?)?;
                Frame::Ignored
            }
            _ => Frame::Ignored,
        }))
    }

    /// Decompresses one header block, which ends with a sync flush.
    fn inflate(&mut self, mut block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4);
        loop {
            let (read, written) = (self.inflate.total_in(), self.inflate.total_out());
            match self.inflate.decompress_vec(block, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(dictionary())?;
                }
                Err(e) => return Err(e.into()),
            }
            let consumed = (self.inflate.total_in() - read) as usize;
            block = &block[consumed..];
            if block.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::Malformed("header block: too large"));
            }
            if consumed == 0 && self.inflate.total_out() == written && out.len() < out.capacity() {
                return Err(SpdyError::Malformed("header block: trailing bytes"));
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

/// Encodes frames, keeping the connection's header compressor.
struct Encoder {
    deflate: Compress,
}

impl Encoder {
    fn new() -> Result<Self, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(dictionary())?;
        Ok(Encoder { deflate })
    }

    fn encode(&mut self, frame: Outgoing, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        match frame {
            Outgoing::Reply { stream } => {
                // The headers of a reply: none (port-forward's client reads none).
                let block = self.deflate(&0u32.to_be_bytes())?;
                control(out, SYN_REPLY, 0, &[&stream.to_be_bytes(), &block]);
            }
            Outgoing::Data { stream, fin, data } => {
                out.extend_from_slice(&stream.to_be_bytes());
                out.push(if fin { FLAG_FIN } else { 0 });
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(&data);
            }
            Outgoing::Reset { stream, status } => {
                control(out, RST_STREAM, 0, &[&stream.to_be_bytes(), &status.to_be_bytes()]);
            }
            Outgoing::Ping { id } => control(out, PING, 0, &[&id.to_be_bytes()]),
        }
        Ok(())
    }

    /// Compresses one header block, ending it with a sync flush so the client can decompress it alone.
    fn deflate(&mut self, mut block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() + 64);
        loop {
            let read = self.deflate.total_in();
            self.deflate.compress_vec(block, &mut out, FlushCompress::Sync)?;
            block = &block[(self.deflate.total_in() - read) as usize..];
            if block.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// Appends a control frame of `kind` whose payload is `parts`.
fn control(out: &mut Vec<u8>, kind: u16, flags: u8, parts: &[&[u8]]) {
    let length = parts.iter().map(|p| p.len()).sum::<usize>() as u32;
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// A stream the client opened.
pub struct Stream {
    pub headers: Headers,
    /// What the client sends on the stream, until its FIN (then None).
    pub incoming: mpsc::Receiver<Bytes>,
    pub out: StreamSender,
    /// Cancelled when the client resets the stream or the connection ends.
    pub reset: Arc<CancellationToken>,
}

/// Sends on one stream.
pub struct StreamSender {
    stream: u32,
    frames: mpsc::Sender<Outgoing>,
}

/// The connection is gone: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the connection is closed")]
pub struct Closed;

impl StreamSender {
    pub async fn send(&self, data: Bytes) -> Result<(), Closed> {
        self.frames.send(Outgoing::Data { stream: self.stream, fin: false, data }).await.map_err(|_| Closed)
    }

    /// Ends this side of the stream (FIN); a connection already gone needs no FIN.
    pub async fn close(&self) {
        let _ = self.frames.send(Outgoing::Data { stream: self.stream, fin: true, data: Bytes::new() }).await;
    }

    /// Refuses the stream (RST_STREAM), when it cannot be served.
    pub async fn refuse(&self) {
        let _ = self.frames.send(Outgoing::Reset { stream: self.stream, status: PROTOCOL_ERROR }).await;
    }
}

/// What the connection keeps of a stream to route the client's frames to it.
struct Entry {
    /// None once the client sent its FIN or the stream's reader went away.
    incoming: Option<mpsc::Sender<Bytes>>,
    /// Gone once the stream's handle is dropped: then the entry goes too.
    reset: Weak<CancellationToken>,
}

/// Serves one SPDY connection from `reader` and `writer` until the client goes away (EOF or GOAWAY): each
/// stream it opens is accepted and handed to `on_stream`. Returns once every stream's handle is dropped
/// (they are all reset when the client goes) and what they sent is written.
pub async fn serve<R, W>(reader: R, writer: W, on_stream: impl FnMut(Stream)) -> Result<(), SpdyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (frames, queued) = mpsc::channel(QUEUED_FRAMES);
    let reading = async move {
        let closing = CancellationToken::new();
        let read = read_frames(reader, &frames, &closing, on_stream).await;
        closing.cancel();
        read
    };
    let (read, written) = tokio::join!(reading, write_frames(writer, queued));
    read.and(written)
}

async fn read_frames<R: AsyncRead + Unpin>(
    reader: R,
    frames: &mpsc::Sender<Outgoing>,
    closing: &CancellationToken,
    mut on_stream: impl FnMut(Stream),
) -> Result<(), SpdyError> {
    let mut reader = FrameReader::new(reader);
    let mut streams: HashMap<u32, Entry> = HashMap::new();
    while let Some(frame) = reader.next().await? {
        let answer = match frame {
            Frame::SynStream { stream, fin, headers } => {
                streams.retain(|_, entry| entry.reset.strong_count() > 0);
                // The client's streams have odd ids, each new.
                if stream % 2 == 0 || streams.contains_key(&stream) {
                    Some(Outgoing::Reset { stream, status: PROTOCOL_ERROR })
                } else {
                    if frames.send(Outgoing::Reply { stream }).await.is_err() {
                        break;
                    }
                    let (tx, incoming) = mpsc::channel(QUEUED_CHUNKS);
                    let reset = Arc::new(closing.child_token());
                    streams.insert(stream, Entry { incoming: (!fin).then_some(tx), reset: Arc::downgrade(&reset) });
                    let out = StreamSender { stream, frames: frames.clone() };
                    on_stream(Stream { headers, incoming, out, reset });
                    None
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(entry) = streams.get_mut(&stream) {
                    // Waits while the stream's reader is behind: the client's flow stops here (see above).
                    if let Some(tx) = &entry.incoming
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        entry.incoming = None;
                    }
                    if fin {
                        entry.incoming = None;
                    }
                }
                None
            }
            Frame::RstStream { stream } => {
                if let Some(reset) = streams.remove(&stream).and_then(|entry| entry.reset.upgrade()) {
                    reset.cancel();
                }
                None
            }
            Frame::Ping { id } => Some(Outgoing::Ping { id }),
            Frame::GoAway => break,
            Frame::Ignored => None,
        };
        if let Some(answer) = answer
            && frames.send(answer).await.is_err()
        {
            break;
        }
    }
    Ok(())
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queued: mpsc::Receiver<Outgoing>,
) -> Result<(), SpdyError> {
    let mut encoder = Encoder::new()?;
    let mut buffer = Vec::new();
    while let Some(frame) = queued.recv().await {
        buffer.clear();
        encoder.encode(frame, &mut buffer)?;
        while buffer.len() < WRITE_BATCH
            && let Ok(frame) = queued.try_recv()
        {
            encoder.encode(frame, &mut buffer)?;
        }
        writer.write_all(&buffer).await?;
        writer.flush().await?;
    }
    writer.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's header block, compressed as spdystream does (its own zlib stream, primed with the
    /// dictionary): what the server's decompressor must take.
    struct ClientHeaders(Compress);

    impl ClientHeaders {
        fn new() -> Self {
            let mut deflate = Compress::new(Compression::best(), true);
            deflate.set_dictionary(dictionary()).unwrap();
            ClientHeaders(deflate)
        }

        fn syn_stream(&mut self, stream: u32, fin: bool, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut block = (headers.len() as u32).to_be_bytes().to_vec();
            for (name, value) in headers {
                for text in [name, value] {
                    block.extend_from_slice(&(text.len() as u32).to_be_bytes());
                    block.extend_from_slice(text.as_bytes());
                }
            }
            let mut compressed = Vec::with_capacity(block.len() + 64);
            self.0.compress_vec(&block, &mut compressed, FlushCompress::Sync).unwrap();
            let mut frame = Vec::new();
            let prefix = [stream.to_be_bytes(), 0u32.to_be_bytes()].concat();
            control(&mut frame, SYN_STREAM, u8::from(fin), &[&prefix, &[0, 0], &compressed]);
            frame
        }
    }

    fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        Encoder::new()
            .unwrap()
            .encode(Outgoing::Data { stream, fin, data: Bytes::copy_from_slice(data) }, &mut frame)
            .unwrap();
        frame
    }

    async fn frames(bytes: Vec<u8>) -> Vec<Frame> {
        let mut reader = FrameReader::new(bytes.as_slice());
        let mut frames = Vec::new();
        while let Some(frame) = reader.next().await.unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_dictionary_is_the_one_spdy_3_names() {
        // Its length in the draft, and the Adler-32 that zlib streams primed with it carry as its id.
        assert_eq!(dictionary().len(), 1423);
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(deflate.set_dictionary(dictionary()).unwrap(), 0xe3c6a7c2);
    }

    #[tokio::test]
    async fn client_frames_parse_with_one_decompressor_for_the_connection() {
        let mut client = ClientHeaders::new();
        let error = [("streamtype", "error"), ("port", "8080"), ("requestid", "0")];
        let mut bytes = client.syn_stream(1, false, &error);
        bytes.extend(client.syn_stream(3, false, &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]));
        bytes.extend(data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        bytes.extend(data(1, true, b""));
        let mut ping = Vec::new();
        control(&mut ping, PING, 0, &[&7u32.to_be_bytes()]);
        bytes.extend(ping);
        let mut reset = Vec::new();
        control(&mut reset, RST_STREAM, 0, &[&3u32.to_be_bytes(), &5u32.to_be_bytes()]);
        bytes.extend(reset);
        assert_eq!(
            frames(bytes).await,
            [
                Frame::SynStream { stream: 1, fin: false, headers: headers(&error) },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
                },
                Frame::Data { stream: 3, fin: false, data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n") },
                Frame::Data { stream: 1, fin: true, data: Bytes::new() },
                Frame::Ping { id: 7 },
                Frame::RstStream { stream: 3 },
            ]
        );
    }

    #[tokio::test]
    async fn replies_decompress_as_a_client_reads_them() {
        let mut encoder = Encoder::new().unwrap();
        let mut bytes = Vec::new();
        for stream in [1, 3] {
            encoder.encode(Outgoing::Reply { stream }, &mut bytes).unwrap();
        }
        // Read back as the client does, with one decompressor for the connection: each reply's header block
        // decompresses alone, to an empty one.
        let mut client = FrameReader::new(tokio::io::empty());
        let mut rest = bytes.as_slice();
        for stream in [1u32, 3] {
            let length = u32::from_be_bytes([0, rest[5], rest[6], rest[7]]) as usize;
            assert_eq!(rest[..4], [0x80, 3, 0, SYN_REPLY as u8]);
            assert_eq!(rest[8..12], stream.to_be_bytes());
            assert_eq!(client.inflate(&rest[12..8 + length]).unwrap(), 0u32.to_be_bytes(), "no headers");
            rest = &rest[8 + length..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn header_values_and_bad_blocks() {
        let parsed = Headers::parse(&[0, 0, 0, 1, 0, 0, 0, 4, b'P', b'o', b'r', b't', 0, 0, 0, 3, b'8', 0, b'9']);
        assert_eq!(parsed.unwrap().get("port"), Some("8"), "names lowercase, the first of several values");
        assert!(Headers::parse(&[0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0]).is_err(), "a header missing");
        assert!(Headers::parse(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err(), "a name longer than the block");
    }

    #[tokio::test]
    async fn other_versions_and_truncated_frames_are_refused() {
        let mut spdy2 = Vec::new();
        control(&mut spdy2, PING, 0, &[&1u32.to_be_bytes()]);
        spdy2[1] = 2;
        assert!(matches!(FrameReader::new(spdy2.as_slice()).next().await, Err(SpdyError::Version(2))));
        let mut short = Vec::new();
        control(&mut short, PING, 0, &[&[0, 1]]);
        assert!(matches!(FrameReader::new(short.as_slice()).next().await, Err(SpdyError::Malformed("PING"))));
        let cut = &data(1, false, b"hello")[..10];
        assert!(matches!(FrameReader::new(cut).next().await, Err(SpdyError::Io(_))));
    }

    /// A whole connection: streams accepted and handed over, data both ways, pings echoed, a reset stream's
    /// handle told, and every stream reset when the client goes.
    #[tokio::test]
    async fn a_session_serves_the_client_s_streams() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(server);
        let (streams_tx, mut streams) = mpsc::unbounded_channel();
        let session = tokio::spawn(serve(read, write, move |stream| streams_tx.send(stream).unwrap()));
        let mut headers = ClientHeaders::new();
        let mut sent = headers.syn_stream(1, false, &[("streamtype", "data")]);
        sent.extend(headers.syn_stream(3, true, &[("streamtype", "error")]));
        sent.extend(data(1, false, b"ping?"));
        let mut ping = Vec::new();
        control(&mut ping, PING, 0, &[&9u32.to_be_bytes()]);
        sent.extend(ping);
        client.write_all(&sent).await.unwrap();

        let mut first = streams.recv().await.unwrap();
        assert_eq!(first.headers.get("streamtype"), Some("data"));
        assert_eq!(first.incoming.recv().await.unwrap(), "ping?");
        let mut second = streams.recv().await.unwrap();
        assert_eq!(second.incoming.recv().await, None, "opened with FIN: nothing to read");
        first.out.send(Bytes::from_static(b"pong!")).await.unwrap();
        first.out.close().await;

        // What the client reads: two replies, the ping's echo, then the data and its FIN.
        let mut received = vec![0u8; 4096];
        let mut got = Vec::new();
        let expected = data(1, false, b"pong!").len() + data(1, true, b"").len() + 12;
        while !got.ends_with(&data(1, true, b"")) {
            let n = client.read(&mut received).await.unwrap();
            got.extend_from_slice(&received[..n]);
        }
        let replies_end = got.len() - expected;
        assert_eq!(
            &got[replies_end..replies_end + 12],
            [&[0x80, 3, 0, PING as u8, 0, 0, 0, 4][..], &9u32.to_be_bytes()].concat()
        );
        assert!(got[..replies_end].starts_with(&[0x80, 3, 0, SYN_REPLY as u8]));

        let mut reset = Vec::new();
        control(&mut reset, RST_STREAM, 0, &[&1u32.to_be_bytes(), &5u32.to_be_bytes()]);
        client.write_all(&reset).await.unwrap();
        first.reset.cancelled().await;
        assert!(!second.reset.is_cancelled());
        drop(client);
        second.reset.cancelled().await;
        drop((first, second));
        session.await.unwrap().unwrap();
    }
}
