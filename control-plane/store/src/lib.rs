//! A revisioned key-value store: the etcd model (one global revision bumped by every write, compare-and-swap
//! on a key's mod revision, watch from a past revision) behind one trait, so a Kubernetes `resourceVersion`
//! means the same on every backend.
//!
//! Backends: [`embedded::EmbeddedStore`] (redb in a local directory, the default) and [`etcd::EtcdStore`].
//! Both pass the conformance suite in `tests/conformance.rs`.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub mod embedded;
pub mod etcd;

/// A store revision. Starts at 1 for an empty store; every successful write increments it by one.
pub type Revision = i64;

/// One key with its value and the revisions that created and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change seen by a watch. For a put, `kv` is the new state and `prev` the state before, if any. For a
/// delete, `kv` holds the deleted value with `mod_revision` set to the revision of the delete, and `prev`
/// is the same value at its last revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

/// One page of a list, read at `revision`. `more` says whether keys after the last one returned remain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
    pub more: bool,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist (update or delete of a missing key).
    #[error("key {0} not found")]
    NotFound(String),
    /// A create found the key already present.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key's mod revision is not the one the caller expected.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict { key: String, expected: Revision, actual: Revision },
    /// A watch asked for revisions that compaction already removed.
    #[error("revision {requested} is compacted (oldest available {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// The backend refused a write as too large: etcd's `--max-request-bytes` (1.5 MiB by default) covers
    /// the key, the value and the transaction around them. Sending it again cannot succeed.
    #[error("request is too large")]
    TooLarge,
    /// The embedded database failed.
    #[error("embedded store: {0}")]
    Embedded(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The etcd cluster failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A file for TLS to etcd (CA, client certificate or key) could not be read.
    #[error("cannot read etcd tls file {}", path.display())]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file for TLS to etcd holds no PEM block of the kind it is given as.
    #[error("etcd tls file {} holds no pem {expected}", path.display())]
    TlsPem { path: std::path::PathBuf, expected: &'static str },
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// A layer over a backend could not turn a value to or from its stored form (for the API server,
    /// encryption at rest): the value under `key` is unreadable, or cannot be written, as configured.
    #[error("value of {key} cannot be transformed")]
    Transform {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The plug point for storage. Keys are UTF-8 paths such as `/registry/pods/default/web-0`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current state of `key`, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error>;

    /// Keys under `prefix` in key order, starting strictly after `start_after` when given, at most `limit`
    /// of them (0 = no limit).
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, Error>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] if present.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, Error>;

    /// Replaces an existing `key`. With `expected`, only if its mod revision equals it ([`Error::Conflict`]).
    async fn update(&self, key: &str, value: Bytes, expected: Option<Revision>) -> Result<KeyValue, Error>;

    /// Deletes an existing `key`, with the same precondition as `update`. Returns the deleted value with
    /// `mod_revision` set to the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error>;

    /// Every change under `prefix` with a revision greater than `after`, replayed from history first, then
    /// live, in revision order. [`Error::Compacted`] when `after` is older than the retained history: from
    /// this call, or as the stream's last item if compaction overtakes a slow watcher. A stream whose store
    /// shuts down ends with [`Error::Closed`]; any other ending means "watch again from the last revision".
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, Error>;

    /// The newest revision.
    async fn revision(&self) -> Result<Revision, Error>;
}
