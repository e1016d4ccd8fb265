//! `http-fetch`: a wasi:http component that makes outgoing requests, to try what a guest may reach.
//!
//! `GET /?url=URL` fetches URL and answers with its status and body; a request that gets no response is
//! answered with 502 and why (`HttpRequestDenied` for a host the pod does not allow,
//! `DnsError(... NXDOMAIN ...)` for a name that does not exist). Any other request gets 400.

use skiff_sdk::{Request, Response, outgoing};

skiff_sdk::http_handler!(handle);

fn handle(req: Request) -> Response {
    let Some(url) = req.query().and_then(|query| query.strip_prefix("url=")) else {
        return Response::text(400, "ask for /?url=http://HOST/PATH\n");
    };
    match outgoing::get(url) {
        Ok(answer) => Response::new(answer.status()).with_body(answer.body().to_vec()),
        Err(err) => Response::text(502, format!("fetch {url}: {err}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_a_url() {
        assert_eq!(handle(Request::new("GET", "/")).status(), 400);
    }

    #[test]
    fn failures_say_why() {
        // Off wasm nothing is sent: the error is passed on as it would be from the host.
        let resp = handle(Request::new("GET", "/?url=http://shop/x?y=1"));
        assert_eq!(resp.status(), 502);
        assert_eq!(
            resp.body_text(),
            Some("fetch http://shop/x?y=1: outgoing HTTP is only available in a wasm32-wasip2 component\n")
        );
    }
}
