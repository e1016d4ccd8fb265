//! Kubernetes API machinery with no IO: which resources Skiff serves ([`resources`]), how objects are
//! patched, selected, validated and shown (tables, discovery documents, OpenAPI), and which pods a
//! namespace admits: by its Pod Security level ([`pod_security`]) and by its LimitRanges, which also fill
//! in pods' resources ([`limit_ranger`]).
//!
//! Architecture invariant: nothing here touches a socket, a file or the store; the API server crate does
//! the IO and calls into this one. Objects cross as `serde_json::Value`, checked against k8s-openapi types.
#![forbid(unsafe_code)]

pub mod authz;
pub mod defaults;
pub mod discovery;
pub mod join;
pub mod limit_ranger;
pub mod limits;
pub mod node_authorizer;
pub mod openapi;
pub mod patch;
pub mod pod_security;
pub mod protobuf;
pub mod quantity;
pub mod rbac;
pub mod resources;
pub mod selectors;
pub mod table;
pub mod validation;

/// Kubernetes' `Time` format: RFC 3339 in UTC, whole seconds (`2026-11-27T03:00:00Z`).
pub fn format_time(when: jiff::Timestamp) -> String {
    when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
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
