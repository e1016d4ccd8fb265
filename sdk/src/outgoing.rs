//! Outgoing HTTP from a handler: `wasi:http/outgoing-handler`, one whole request out and one whole response
//! back. On Skiff a guest reaches the cluster's Services and pods by name or address, and hosts outside the
//! cluster only when its pod lists them in the `skiff.dev/allowed-outbound-hosts` annotation.
//!
//! ```ignore
//! let page = skiff_sdk::outgoing::get("http://shop.default.svc.cluster.local/")?;
//! ```

use crate::http::{Headers, Response};

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://` or `https://` followed by a host.
    #[error("invalid url {0:?}: want http://HOST[:PORT][/PATH] or https://...")]
    Url(String),
    /// The host refused or failed the request; the text is its `wasi:http` error code, e.g.
    /// `HttpRequestDenied` (not allowed for this pod) or `DnsError(... NXDOMAIN ...)`.
    #[error("{0}")]
    Http(String),
    /// The response body was larger than [`crate::MAX_REQUEST_BODY`] or broke off.
    #[error("reading response body: {0}")]
    Body(String),
    /// Outgoing HTTP exists only in a component (wasm32-wasip2).
    #[error("outgoing HTTP is only available in a wasm32-wasip2 component")]
    Unsupported,
}

/// A `GET` of `url`.
pub fn get(url: &str) -> Result<Response, FetchError> {
    send("GET", url, &[], &[])
}

/// Sends `method` to `url` with `headers` and `body`, and waits for the whole response.
pub fn send(method: &str, url: &str, headers: &[(String, Vec<u8>)], body: &[u8]) -> Result<Response, FetchError> {
    let target = Target::parse(url)?;
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    return crate::wasi_http::send_outgoing(method, &target, headers, body);
    #[cfg(not(all(target_os = "wasi", target_env = "p2")))]
    {
        let _ = (method, target, headers, body);
        Err(FetchError::Unsupported)
    }
}

/// A URL split as `wasi:http` wants it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub https: bool,
    pub authority: String,
    pub path_with_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, FetchError> {
        let invalid = || FetchError::Url(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(invalid()),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid());
        }
        let path_with_query = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(Target { https, authority: authority.to_owned(), path_with_query })
    }
}

/// What the host answered, before it becomes a [`Response`].
#[cfg_attr(not(all(target_os = "wasi", target_env = "p2")), allow(dead_code))]
pub(crate) fn response(status: u16, headers: Headers, body: Vec<u8>) -> Response {
    headers.into_iter().fold(Response::new(status), |r, (name, value)| r.with_header(name, value)).with_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let target = Target::parse("http://shop.default.svc.cluster.local:8080/cgi-bin/who?x=1").unwrap();
        assert_eq!(
            target,
            Target {
                https: false,
                authority: "shop.default.svc.cluster.local:8080".into(),
                path_with_query: "/cgi-bin/who?x=1".into()
            }
        );
        assert_eq!(Target::parse("HTTPS://example.com").unwrap().path_with_query, "/");
        assert_eq!(Target::parse("http://shop?q").unwrap().path_with_query, "/?q");
        for bad in ["shop/x", "ftp://shop/", "http:///path", "http://user@shop/"] {
            assert_eq!(Target::parse(bad), Err(FetchError::Url(bad.into())), "{bad}");
        }
    }

    #[test]
    fn off_wasm_nothing_is_sent() {
        assert_eq!(get("http://shop/"), Err(FetchError::Unsupported));
    }
}
