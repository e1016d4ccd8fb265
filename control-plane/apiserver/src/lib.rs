//! Skiff's API server: the Kubernetes API over a [`skiff_store::Store`], served over HTTPS.
//!
//! Code map: [`router`] is the HTTP surface (paths, negotiation, auth); [`objects`] the object semantics
//! (metadata, concurrency, subresources, deletion), with `admission` (Pod Security) on its writes; [`watch`]
//! the watch stream; [`lifecycle`] the server's own bookkeeping (system namespaces, default ServiceAccounts,
//! namespace deletion); [`kubernetes_service`]
//! the `kubernetes` Service and the API servers as its endpoints; [`pki`] first-start credentials; [`server`]
//! the TLS listener and graceful drain, within the limits of [`connections`] (how many connections, how
//! long a handshake, headers, an idle connection may take) and [`inflight`] (how many requests at once).
//! [`authn`] says who a request comes from, refusing the certificates of nodes [`revocation`] revoked and
//! taking the [`bootstrap_tokens`] of `kube-system`'s Secrets;
//! [`serviceaccounts`] issues and checks service account tokens
//! (TokenRequest, token Secrets) and gives pods their account's credentials on admission. [`encryption`]
//! encrypts stored values at rest (`--encryption-provider-config`), as a layer over the store.
//! Pure API machinery lives in `skiff-api`.

mod admission;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod bootstrap_tokens;
pub mod cluster_ips;
pub mod connections;
pub mod encryption;
pub mod error;
mod impersonation;
pub mod inflight;
pub mod instrumentation;
pub mod kubelet;
pub mod kubernetes_service;
pub mod lifecycle;
pub mod objects;
pub mod pki;
pub mod resource_metrics;
mod reviews;
pub mod revocation;
pub mod router;
pub mod server;
pub mod serviceaccounts;
pub mod watch;

pub use server::{Server, ServerConfig, ServerError};
