//! `http-hello`: the HTTP workload to start from. A wasi:http component (wasm32-wasip2) built on skiff-sdk;
//! Skiff runs one instance per request.
//!
//! Every request gets 200 with `hello from skiff`, the path it asked for and the `GREETING` config value
//! (an environment variable, e.g. from a ConfigMap through `envFrom`).

use skiff_sdk::{Request, Response, config};

skiff_sdk::http_handler!(handle);

fn handle(req: Request) -> Response {
    let greeting = config::get("GREETING").unwrap_or("(not set)");
    Response::text(200, format!("hello from skiff\npath: {}\ngreeting: {greeting}\n", req.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_the_path_and_greeting() {
        let resp = handle(Request::new("GET", "/some/where?x=1"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"));
        // The test process has no GREETING; the placeholder shows the variable was looked for.
        assert_eq!(resp.body_text(), Some("hello from skiff\npath: /some/where\ngreeting: (not set)\n"));
    }

    #[test]
    fn every_method_gets_the_same_answer() {
        let resp = handle(Request::new("POST", "/").with_body("ignored"));
        assert_eq!(resp.status(), 200);
        assert!(resp.body_text().is_some_and(|body| body.starts_with("hello from skiff\npath: /\n")));
    }
}
