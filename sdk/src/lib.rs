//! Write Skiff workloads in Rust: a `wasi:http` handler in a few lines, and helpers that read the
//! configuration and secrets Kubernetes hands a pod.
//!
//! ```ignore
//! skiff_sdk::http_handler!(handle);
//!
//! fn handle(req: skiff_sdk::Request) -> skiff_sdk::Response {
//!     let greeting = skiff_sdk::config::get("GREETING").unwrap_or("skiff");
//!     skiff_sdk::Response::text(200, format!("hello from {greeting}, you asked for {}\n", req.path()))
//! }
//! ```
//!
//! Build the crate that uses it with `cargo build --target wasm32-wasip2 --release`; the result is a component
//! exporting `wasi:http/incoming-handler`. Skiff creates one instance per request, so a handler keeps no state
//! between requests.
//!
//! # Why `wasip2` (the `wasi` crate) and not `wstd`
//!
//! The handler model here is synchronous: the SDK reads the whole request, calls a plain function, writes the
//! whole response. The Bytecode Alliance's `wasip2` bindings (what the `wasi` crate 0.14.7 became: that
//! release is only `pub use wasip2::*`) give exactly that with blocking stream calls, no async runtime, one
//! dependency (`wit-bindgen`), rust-version 1.87, and the `wasi:http/proxy` export macro. `wstd` is the right
//! tool for async guests (concurrent outgoing requests, streaming bodies), at the cost of an executor and more
//! dependencies in every module. The bindings are used only on `wasm32-wasip2`; on any other target the crate
//! builds without them, so handlers and helpers are unit-tested on the host with plain `cargo test`.
//!
//! # What the host must provide
//!
//! Besides the `wasi:http/proxy` world, a component built with Rust's std imports `wasi:cli/environment`
//! (used by [`config::get`]) and `wasi:filesystem` (used by [`config::file`] and [`secrets::get`]), and the
//! files are visible only in directories the host preopens (the pod's volume mounts).

#![forbid(unsafe_code)]

pub mod config;
mod http;
pub mod outgoing;
pub mod secrets;
#[cfg(all(target_os = "wasi", target_env = "p2"))]
mod wasi_http;

pub use http::{Request, Response};

/// Exports `handler`, a `fn(Request) -> Response`, as the component's `wasi:http/incoming-handler`.
///
/// Use it once, at the top level of a `cdylib` crate built for `wasm32-wasip2`. The SDK reads the request
/// (method, path, headers and a body of at most [`MAX_REQUEST_BODY`] bytes), calls the handler and writes the
/// response with a `content-length` it computes itself. A request it cannot read gets a 400 or 413 without
/// reaching the handler; a response the host refuses (an invalid status or header) is replaced by a 500 that
/// says why. A panic in the handler traps the instance before any response is set: the host sees the trap
/// and decides what the client gets (a 500 is the usual answer).
///
/// On other targets the macro only checks the handler's type, so the crate still builds and its tests run on
/// the host.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __SkiffHttpHandler;

        impl $crate::__private::Guest for __SkiffHttpHandler {
            fn handle(request: $crate::__private::IncomingRequest, out: $crate::__private::ResponseOutparam) {
                $crate::__private::serve(request, out, $handler)
            }
        }

        $crate::__private::export!(__SkiffHttpHandler with_types_in $crate::__private::wasip2);
    };
}

/// Exports `handler`, a `fn(Request) -> Response`, as the component's `wasi:http/incoming-handler`.
///
/// This is the host build of the macro: it only checks the handler's type, so a handler crate builds and its
/// unit tests run on the host. See the `wasm32-wasip2` documentation for what it does in a component.
#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        const _: fn($crate::Request) -> $crate::Response = $handler;
    };
}

pub use http::MAX_REQUEST_BODY;

/// What [`http_handler!`] expands to; not part of the API.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[doc(hidden)]
pub mod __private {
    pub use crate::wasi_http::serve;
    pub use wasip2;
    pub use wasip2::exports::http::incoming_handler::Guest;
    pub use wasip2::http::proxy::export;
    pub use wasip2::http::types::{IncomingRequest, ResponseOutparam};
}
