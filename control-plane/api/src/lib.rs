//! Kubernetes API machinery with no IO: which resources Skiff serves ([`resources`]), how objects are
//! patched, selected, validated and shown (tables, discovery documents, OpenAPI), and which pods a
//! namespace admits: by its Pod Security level ([`pod_security`]) and by its LimitRanges, which also fill
//! in pods' resources ([`limit_ranger`]).
//!
//! Architecture invariant: nothing here touches a socket, a file or the store; the API server crate does
//! the IO and calls into this one. Objects cross as `serde_json::Value`, checked against k8s-openapi types.
#![forbid(unsafe_code)]

pub mod authz;
pub mod autoscaling;
pub mod defaults;
pub mod discovery;
pub mod ingress;
pub mod join;
pub mod limit_ranger;
pub mod limits;
pub mod metrics_api;
pub mod node_authorizer;
pub mod openapi;
pub mod patch;
pub mod pod_security;
pub mod protobuf;
pub mod quantity;
pub mod rbac;
pub mod resources;
pub mod scale_to_zero;
pub mod selectors;
pub mod stats;
pub mod table;
pub mod validation;

/// Kubernetes' `Time` format: RFC 3339 in UTC, whole seconds (`2026-11-27T03:00:00Z`).
pub fn format_time(when: jiff::Timestamp) -> String {
    when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Go's `time.ParseDuration`, the form Kubernetes writes durations in (`30s`, `1m0s`, `1.5h`, `500ms`).
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0.0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * scale;
        rest = tail;
    }
    total.is_finite().then(|| std::time::Duration::from_secs_f64(total))
}

/// This machine's architecture in Go's (and so Kubernetes') naming: `amd64`, `arm64`, ... Clients compare
/// it with their own in `/version`, and nodes label themselves with it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
