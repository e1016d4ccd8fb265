//! `http-hello`: the HTTP workload to start from. A wasi:http component (wasm32-wasip2) built on skiff-sdk;
//! Skiff runs one instance per request.
//!
//! Every request gets 200 with `hello from skiff`, the path it asked for, the `GREETING` config value
//! (an environment variable, e.g. from a ConfigMap through `envFrom`) and, on Skiff, the client's address
//! (the `skiff-client-addr` header). `PAD_KB=N`, a test knob as the `hello` sample's, pads every body with
//! N KiB, for tests of large responses. `BURN_MS=N` spends N milliseconds of CPU on every request before
//! answering, as Kubernetes' `hpa-example` does: the load an autoscaler on CPU is shown with.

use std::time::{Duration, Instant};

use skiff_sdk::{Request, Response, config};

skiff_sdk::http_handler!(handle);

fn handle(req: Request) -> Response {
    if let Some(ms) = config::get("BURN_MS").and_then(|ms| ms.trim().parse::<u64>().ok()) {
        burn(Duration::from_millis(ms));
    }
    let greeting = config::get("GREETING").unwrap_or("(not set)");
    let mut body = format!("hello from skiff\npath: {}\ngreeting: {greeting}\n", req.path());
    if let Some(client) = req.header("skiff-client-addr") {
        body.push_str(&format!("client: {client}\n"));
    }
    if let Some(kib) = config::get("PAD_KB").and_then(|kib| kib.trim().parse::<usize>().ok()) {
        body.extend(std::iter::repeat_n('.', kib.saturating_mul(1024)));
    }
    Response::text(200, body)
}

/// Busy for `time` by the wall clock: a guest's CPU time is the time it runs, and a busy loop never waits.
fn burn(time: Duration) {
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < time {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
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
    fn the_client_is_named_when_the_host_says_who_it_is() {
        let resp = handle(Request::new("GET", "/").with_header("skiff-client-addr", "10.42.0.7:51234"));
        assert!(resp.body_text().is_some_and(|body| body.ends_with("\nclient: 10.42.0.7:51234\n")));
    }

    #[test]
    fn burning_takes_the_time_asked_for() {
        let started = Instant::now();
        burn(Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn every_method_gets_the_same_answer() {
        let resp = handle(Request::new("POST", "/").with_body("ignored"));
        assert_eq!(resp.status(), 200);
        assert!(resp.body_text().is_some_and(|body| body.starts_with("hello from skiff\npath: /\n")));
    }
}
