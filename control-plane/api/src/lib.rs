//! Kubernetes API machinery with no IO: which resources Skiff serves ([`resources`]), how objects are
//! patched, selected, validated and shown (tables, discovery documents, OpenAPI).
//!
//! Architecture invariant: nothing here touches a socket, a file or the store; the API server crate does
//! the IO and calls into this one. Objects cross as `serde_json::Value`, checked against k8s-openapi types.
#![forbid(unsafe_code)]

pub mod defaults;
pub mod discovery;
pub mod join;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod table;
pub mod validation;
