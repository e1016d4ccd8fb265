//! The bridge between `wasi:http/incoming-handler` and a `fn(Request) -> Response`: read everything, call
//! the handler, write everything. Only built for wasm32-wasip2; the logic worth testing (what goes on the
//! wire) lives in `http.rs` and is tested on the host.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use crate::http::{MAX_REQUEST_BODY, Request, Response};
use crate::outgoing::{FetchError, Target};

/// Bytes asked for per read; the host may return fewer.
const READ_CHUNK: u64 = 64 * 1024;

/// The most `blocking-write-and-flush` accepts in one call (its documented contract).
const WRITE_CHUNK: usize = 4096;

/// Why the request could not be handed to the handler.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("request body larger than {MAX_REQUEST_BODY} bytes")]
    TooLarge,
    #[error("reading request body: {0}")]
    Body(String),
}

/// Handles one request: called by the code [`crate::http_handler!`] generates.
pub fn serve(request: IncomingRequest, out: ResponseOutparam, handler: fn(Request) -> Response) {
    let head = matches!(request.method(), Method::Head);
    let response = match read_request(request) {
        Ok(request) => handler(request),
        Err(err @ ReadError::TooLarge) => Response::text(413, format!("{err}\n")),
        Err(err @ ReadError::Body(_)) => Response::text(400, format!("{err}\n")),
    };
    send(out, response, head);
}

fn read_request(request: IncomingRequest) -> Result<Request, ReadError> {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(other) => other,
    };
    let mut req = Request::new(method, request.path_with_query().unwrap_or_default());
    if let Some(authority) = request.authority() {
        req = req.with_authority(authority);
    }
    // `headers` is a child resource of the request: it goes out of scope before the request is consumed.
    for (name, value) in request.headers().entries() {
        req = req.with_header(name, value);
    }
    let body = match request.consume() {
        Ok(body) => read_body(body)?,
        // Consumed already is impossible here (nothing else touched the request); treat it as empty.
        Err(()) => Vec::new(),
    };
    Ok(req.with_body(body))
}

fn read_body(body: IncomingBody) -> Result<Vec<u8>, ReadError> {
    let stream = body.stream().map_err(|()| ReadError::Body("body stream already taken".to_owned()))?;
    let bytes = read_all(&stream)?;
    // The stream is a child of the body and must be gone before the body is finished.
    drop(stream);
    // Trailers are not passed to handlers; finishing only releases the body.
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn read_all(stream: &InputStream) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > MAX_REQUEST_BODY {
                    return Err(ReadError::TooLarge);
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(err)) => return Err(ReadError::Body(err.to_debug_string())),
        }
    }
}

fn send(out: ResponseOutparam, response: Response, head: bool) {
    let (status, headers, body) = response.into_wire(head);
    match build(status, &headers) {
        Ok(outgoing) => write(out, outgoing, &body),
        Err(reason) => {
            let fallback = Response::text(500, format!("invalid response from handler: {reason}\n"));
            let (status, headers, body) = fallback.into_wire(head);
            // The fallback's status and headers are fixed and valid; if the host still refuses them there is
            // nothing better to send, and the host answers for the missing response.
            if let Ok(outgoing) = build(status, &headers) {
                write(out, outgoing, &body);
            }
        }
    }
}

/// An outgoing response with the status and headers, or why the host refused them.
fn build(status: u16, headers: &[(String, Vec<u8>)]) -> Result<OutgoingResponse, String> {
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, value).map_err(|err| format!("header {name:?}: {err:?}"))?;
    }
    let outgoing = OutgoingResponse::new(fields);
    outgoing.set_status_code(status).map_err(|()| format!("status {status}"))?;
    Ok(outgoing)
}

fn write(out: ResponseOutparam, outgoing: OutgoingResponse, body: &[u8]) {
    let Ok(outgoing_body) = outgoing.body() else {
        // The body of a fresh response is always available; without it there is nothing to send.
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    let Ok(stream) = outgoing_body.write() else {
        return;
    };
    let written = write_all(&stream, body);
    drop(stream);
    if written.is_ok() {
        // Dropping an unfinished body tells the host the response broke off, which is what a failed write
        // should look like to the client.
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}

fn write_all(stream: &OutputStream, body: &[u8]) -> Result<(), StreamError> {
    for chunk in body.chunks(WRITE_CHUNK) {
        stream.blocking_write_and_flush(chunk)?;
    }
    Ok(())
}

/// Sends one request through `wasi:http/outgoing-handler` and reads the whole response.
pub(crate) fn send_outgoing(
    method: &str,
    target: &Target,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<Response, FetchError> {
    let http_error = |code: ErrorCode| FetchError::Http(format!("{code:?}"));
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, value).map_err(|err| FetchError::Http(format!("header {name:?}: {err:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    let scheme = if target.https { Scheme::Https } else { Scheme::Http };
    let refused = |what: &str| FetchError::Http(format!("the host refused the {what}"));
    request.set_method(&method).map_err(|()| refused("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| refused("scheme"))?;
    request.set_authority(Some(&target.authority)).map_err(|()| refused("authority"))?;
    request.set_path_with_query(Some(&target.path_with_query)).map_err(|()| refused("path"))?;
    let outgoing_body = request.body().map_err(|()| refused("body"))?;
    let pending = outgoing_handler::handle(request, None).map_err(http_error)?;
    {
        let stream = outgoing_body.write().map_err(|()| refused("body"))?;
        write_all(&stream, body).map_err(|err| FetchError::Http(format!("sending body: {err:?}")))?;
    }
    OutgoingBody::finish(outgoing_body, None).map_err(http_error)?;
    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response = response.map_err(|()| FetchError::Http("response taken twice".to_owned()))?.map_err(http_error)?;
    let status = response.status();
    let headers = response.headers().entries().into_iter().collect();
    let body = response.consume().map_err(|()| FetchError::Body("body taken twice".to_owned()))?;
    let bytes = read_body(body).map_err(|err| FetchError::Body(err.to_string()))?;
    Ok(crate::outgoing::response(status, headers, bytes))
}
