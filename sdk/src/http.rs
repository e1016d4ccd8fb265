//! The request and response a handler sees: plain data, independent of wasi, so handlers are tested on the
//! host by building a [`Request`] and looking at the [`Response`].

/// The largest request body the SDK reads into memory (16 MiB); a larger one is answered with 413 before the
/// handler runs. Handlers get the body as one slice, and an instance's memory is limited by the pod, so an
/// unbounded body would only move the failure into an out-of-memory trap.
pub const MAX_REQUEST_BODY: usize = 16 << 20;

/// Header names and raw values, in order, repeats allowed (as on the wire).
pub(crate) type Headers = Vec<(String, Vec<u8>)>;

/// An HTTP request, fully read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    path_with_query: String,
    authority: Option<String>,
    headers: Headers,
    body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body, e.g. `Request::new("GET", "/hello?name=x")` in a test.
    /// The method is kept as given (HTTP methods are case-sensitive); an empty path means `/`.
    pub fn new(method: impl Into<String>, path_with_query: impl Into<String>) -> Self {
        let mut path_with_query = path_with_query.into();
        if path_with_query.is_empty() {
            path_with_query.push('/');
        }
        Self { method: method.into(), path_with_query, authority: None, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header; repeated names keep every value, in order.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the authority (`host[:port]`) the request was sent to.
    #[must_use]
    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query as sent, e.g. `/a/b?c=d`; always starts with `/` for origin-form requests.
    pub fn path_with_query(&self) -> &str {
        &self.path_with_query
    }

    /// The path without the query, e.g. `/a/b`.
    pub fn path(&self) -> &str {
        self.path_with_query.split_once('?').map_or(&self.path_with_query, |(path, _)| path)
    }

    /// The raw query after `?`, without decoding; `None` when the URL has no `?`.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query.split_once('?').map(|(_, query)| query)
    }

    /// The authority (`host[:port]`) the request was sent to, when the client said.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The first value of header `name` (case-insensitive), if it is present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every header as sent: names as the host gives them (lowercase for HTTP/2 and hyper), raw values.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body bytes (empty when there was none).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, if it is valid UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// An HTTP response. `content-length` is computed when it is sent, so handlers never set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status).with_header("content-type", "text/plain; charset=utf-8").with_body(body.into())
    }

    /// Adds a header; repeated names send every value, in order. A `content-length` given here is ignored
    /// (the SDK sends the real one); hop-by-hop headers such as `connection` are refused by the host and
    /// turn the response into a 500 that names the header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive), if it is present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every header the handler set, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, if it is valid UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// Splits the response into what goes on the wire: the headers without any `content-length` the handler
    /// set, with the real one added, and the body. A response to `HEAD`, and a 1xx, 204 or 304 response, has
    /// neither body nor length (RFC 9110 §8.6, §15.3.5), which the host would otherwise refuse or mangle.
    #[cfg_attr(not(all(target_os = "wasi", target_env = "p2")), allow(dead_code))]
    pub(crate) fn into_wire(self, head: bool) -> (u16, Headers, Vec<u8>) {
        let Self { status, mut headers, mut body } = self;
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
        let bodiless = head || status < 200 || status == 204 || status == 304;
        if bodiless {
            body.clear();
        } else {
            headers.push(("content-length".to_owned(), body.len().to_string().into_bytes()));
        }
        (status, headers, body)
    }
}

/// The first value of header `name` (case-insensitive) in `headers`, if it is valid UTF-8.
fn find_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, value)| std::str::from_utf8(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_split_on_the_first_question_mark() {
        let req = Request::new("GET", "/a/b?x=1&y=?2");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query(), Some("x=1&y=?2"));
        assert_eq!(req.path_with_query(), "/a/b?x=1&y=?2");
    }

    #[test]
    fn empty_path_is_root_and_has_no_query() {
        let req = Request::new("GET", "");
        assert_eq!(req.path(), "/");
        assert_eq!(req.query(), None);
        assert_eq!(Request::new("GET", "/?").query(), Some(""));
    }

    #[test]
    fn headers_match_case_insensitively_and_keep_the_first_value() {
        let req = Request::new("POST", "/")
            .with_header("X-Token", "one")
            .with_header("x-token", "two")
            .with_header("bin", vec![0xff, 0xfe]);
        assert_eq!(req.header("x-TOKEN"), Some("one"));
        assert_eq!(req.headers().len(), 3);
        assert_eq!(req.header("bin"), None, "non-UTF-8 values are not returned as text");
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn body_text_is_none_for_invalid_utf8() {
        assert_eq!(Request::new("POST", "/").with_body("hi").body_text(), Some("hi"));
        assert_eq!(Request::new("POST", "/").with_body(vec![0xc3]).body_text(), None);
        assert_eq!(Request::new("POST", "/").with_authority("a:80").authority(), Some("a:80"));
    }

    #[test]
    fn text_response_sets_content_type() {
        let resp = Response::text(201, "made");
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(resp.body_text(), Some("made"));
    }

    #[test]
    fn wire_form_replaces_content_length_with_the_real_one() {
        let resp = Response::new(200).with_header("Content-Length", "999").with_header("x", "y").with_body("abc");
        let (status, headers, body) = resp.into_wire(false);
        assert_eq!(status, 200);
        assert_eq!(headers, vec![("x".to_owned(), b"y".to_vec()), ("content-length".to_owned(), b"3".to_vec())]);
        assert_eq!(body, b"abc");
    }

    #[test]
    fn wire_form_of_a_head_response_has_no_body_and_no_length() {
        let (_, headers, body) = Response::text(200, "abc").into_wire(true);
        assert!(body.is_empty());
        assert!(headers.iter().all(|(name, _)| name != "content-length"));
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn empty_body_still_sends_a_zero_length() {
        let (_, headers, _) = Response::new(200).into_wire(false);
        assert_eq!(headers, vec![("content-length".to_owned(), b"0".to_vec())]);
    }

    #[test]
    fn no_content_and_not_modified_have_no_body_and_no_length() {
        for status in [101, 204, 304] {
            let (_, headers, body) = Response::text(status, "ignored").into_wire(false);
            assert!(body.is_empty(), "{status}");
            assert!(headers.iter().all(|(name, _)| name != "content-length"), "{status}");
        }
    }
}
