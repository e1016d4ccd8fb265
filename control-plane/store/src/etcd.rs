//! The etcd backend: the trait maps one to one onto etcd v3 transactions and watches, so revisions are
//! etcd's own and `resourceVersion`s mean what they mean on a kube-apiserver.
//!
//! etcd keeps every revision until compacted, so a background task compacts the way kube-apiserver does:
//! every [`EtcdConfig::compaction_interval`], to the revision it saw one interval earlier. A watcher that
//! was away longer than that gets [`Error::Compacted`] and relists.
//!
//! With [`EtcdTls`] the connection is TLS (`https://` endpoints): etcd's certificate is checked against the
//! given CA only, never the system's roots, and a client certificate is presented when etcd runs with
//! `--client-cert-auth`, as kube-apiserver's `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile` do.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchResponse,
};

use crate::{Error, Event, EventKind, KeyValue, ListPage, Revision, Store, WatchStream};

/// kube-apiserver's default `--etcd-compaction-interval`.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How long `watch` waits for etcd to report the compaction revision once it knows the start is compacted.
const COMPACTED_REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request rides out an etcd leader election (a member lost, a leader moved) before failing.
const ELECTION_PATIENCE: Duration = Duration::from_secs(8);

/// How to connect an [`EtcdStore`].
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs such as `http://127.0.0.1:2379`, or `https://` ones with [`EtcdConfig::tls`].
    pub endpoints: Vec<String>,
    /// How often to compact, to the revision seen one interval before; `None` leaves compaction to others
    /// (another API server, or etcd's own `--auto-compaction-*`).
    pub compaction_interval: Option<Duration>,
    /// TLS to every endpoint; `None` speaks plain gRPC.
    pub tls: Option<EtcdTls>,
}

impl EtcdConfig {
    pub fn new(endpoints: &[String]) -> Self {
        Self { endpoints: endpoints.to_vec(), compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL), tls: None }
    }

    pub fn with_compaction_interval(mut self, interval: Option<Duration>) -> Self {
        self.compaction_interval = interval;
        self
    }

    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The files for TLS to etcd, in PEM, read when connecting.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed etcd's serving certificates; the only one trusted.
    pub ca_file: PathBuf,
    /// The certificate to present, for an etcd with `--client-cert-auth`.
    pub client: Option<ClientCertificate>,
}

/// A client certificate and its private key.
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl EtcdTls {
    /// The TLS settings for etcd-client. Each file is checked here so that a wrong one is named; left to
    /// the TLS stack, it would surface as an anonymous transport error at the first request.
    async fn options(&self) -> Result<TlsOptions, Error> {
        let ca = read_pem(&self.ca_file, Pem::Certificate).await?;
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(client) = &self.client {
            let cert = read_pem(&client.cert_file, Pem::Certificate).await?;
            let key = read_pem(&client.key_file, Pem::PrivateKey).await?;
            options = options.identity(Identity::from_pem(cert, key));
        }
        Ok(options)
    }
}

/// What a TLS file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

async fn read_pem(path: &Path, kind: Pem) -> Result<Vec<u8>, Error> {
    let pem = tokio::fs::read(path).await.map_err(|source| Error::TlsFile { path: path.to_owned(), source })?;
    let (found, expected) = match kind {
        Pem::Certificate => (rustls_pemfile::certs(&mut pem.as_slice()).any(|cert| cert.is_ok()), "certificate"),
        Pem::PrivateKey => (matches!(rustls_pemfile::private_key(&mut pem.as_slice()), Ok(Some(_))), "private key"),
    };
    if !found {
        return Err(Error::TlsPem { path: path.to_owned(), expected });
    }
    Ok(pem)
}

/// The etcd-backed [`Store`]. Dropping it stops the compaction task.
pub struct EtcdStore {
    client: Client,
    compactor: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(compactor) = &self.compactor {
            compactor.abort();
        }
    }
}

/// Whether etcd was without a leader or a member unreachable for a moment. Reads may always be retried;
/// writes only when they surely never reached etcd (a member refused the connection: the client balances
/// over every endpoint, a dead one included) or etcd refused them before proposing (no leader), since a
/// timed-out write may still be applied.
fn transient(error: &etcd_client::Error, write: bool) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            !write || status.message().contains("no leader") || status.message().contains("connect error")
        }
        etcd_client::Error::TransportError(_) => !write,
        _ => false,
    }
}

/// Whether etcd refused a request for its size: over `--max-request-bytes` (`etcdserver: request is too
/// large`), or so far over that its gRPC server would not even receive it (the limit plus 512 KiB).
fn too_large(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::InvalidArgument => status.message().contains("request is too large"),
            tonic::Code::ResourceExhausted => status.message().contains("larger than max"),
            _ => false,
        },
        _ => false,
    }
}

/// Runs `request` again while it fails transiently, for up to [`ELECTION_PATIENCE`].
async fn patiently<T, F, Fut>(write: bool, mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + ELECTION_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        match request().await {
            Err(error) if transient(&error, write) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(%error, "etcd is electing a leader; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(800));
            }
            result => return result,
        }
    }
}

impl EtcdStore {
    /// Connects with default settings and checks that the cluster answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, Error> {
        Self::connect_with(EtcdConfig::new(endpoints)).await
    }

    pub async fn connect_with(config: EtcdConfig) -> Result<Self, Error> {
        let options = match &config.tls {
            Some(tls) => Some(ConnectOptions::new().with_tls(tls.options().await?)),
            None => None,
        };
        let client = Client::connect(&config.endpoints, options).await?;
        let mut store = Self { client, compactor: None };
        // Fail now, not at the first request, when etcd is unreachable.
        store.revision().await?;
        if let Some(interval) = config.compaction_interval {
            store.compactor = Some(tokio::spawn(compact_periodically(store.client.clone(), interval)));
        }
        Ok(store)
    }

    /// Runs `txn`; if its compares failed, reads the key (the `or_else` branch) to tell why.
    async fn write(&self, key: &str, expected: Option<Revision>, txn: Txn) -> Result<TxnResponse, Error> {
        let resp = patiently(true, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|error| if too_large(&error) { Error::TooLarge } else { error.into() })?;
        if resp.succeeded() {
            return Ok(resp);
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        Err(match (current, expected) {
            (None, _) => Error::NotFound(key.to_owned()),
            (Some(actual), Some(expected)) => Error::Conflict { key: key.to_owned(), expected, actual },
            // Only the presence compare can fail without an expected revision, and the key is there.
            (Some(_), None) => Error::AlreadyExists(key.to_owned()),
        })
    }

    /// Whether revision `start` is no longer in etcd's history.
    async fn is_compacted(&self, start: Revision) -> Result<bool, Error> {
        let options = GetOptions::new().with_revision(start).with_count_only();
        match self.client.kv_client().get("\0", Some(options)).await {
            Ok(_) => Ok(false),
            // etcd reports both compacted and future revisions as OUT_OF_RANGE; only the message tells.
            Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("compacted") => Ok(true),
            Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("future") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let resp = patiently(false, || {
            let mut kv = self.client.kv_client();
            async move { kv.get(key, None).await }
        })
        .await?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, Error> {
        let start = match start_after {
            Some(after) if after >= prefix => [after.as_bytes(), b"\0"].concat(),
            _ => range_start(prefix),
        };
        let mut options =
            GetOptions::new().with_range(prefix_end(prefix)).with_sort(SortTarget::Key, SortOrder::Ascend);
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let resp = patiently(false, || {
            let (mut kv, start, options) = (self.client.kv_client(), start.clone(), options.clone());
            async move { kv.get(start, Some(options)).await }
        })
        .await?;
        let kvs = resp.kvs().iter().map(convert).collect::<Result<Vec<_>, _>>()?;
        Ok(ListPage { kvs, revision: header_revision(resp.header()), more: resp.more() })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.write(key, None, txn).await?;
        let revision = header_revision(resp.header());
        Ok(KeyValue { key: key.to_owned(), value, create_revision: revision, mod_revision: revision })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Revision>) -> Result<KeyValue, Error> {
        let resp = self
            .write(
                key,
                expected,
                guarded(key, expected, TxnOp::put(key, value.to_vec(), Some(PutOptions::new().with_prev_key()))),
            )
            .await?;
        let prev = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Put(mut put) => put.take_prev_key(),
            _ => None,
        });
        let revision = header_revision(resp.header());
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.map_or(revision, |p| p.create_revision()),
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error> {
        let resp = self
            .write(
                key,
                expected,
                guarded(key, expected, TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))),
            )
            .await?;
        let revision = header_revision(resp.header());
        let prev = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(mut delete) => delete.take_prev_kvs().into_iter().next(),
            _ => None,
        });
        // The guard proved the key existed, so etcd returns its previous value.
        let prev = prev.ok_or_else(|| Error::NotFound(key.to_owned()))?;
        Ok(KeyValue { mod_revision: revision, ..convert(&prev)? })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, Error> {
        let start = after.max(0).saturating_add(1);
        let compacted = self.is_compacted(start).await?;
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let mut stream = self.client.watch_client().watch(range_start(prefix), Some(options)).await?;
        if compacted {
            // etcd tells the compaction revision only on the watch, shortly after creating it.
            let report = tokio::time::timeout(COMPACTED_REPORT_TIMEOUT, async {
                while let Some(resp) = stream.message().await? {
                    if resp.compact_revision() != 0 {
                        return Ok(resp.compact_revision());
                    }
                }
                Ok::<_, Error>(0)
            })
            .await;
            let compacted = match report {
                Ok(result) => result?,
                Err(_elapsed) => 0,
            };
            return Err(Error::Compacted { requested: start, compacted });
        }
        let state = WatchState { stream, buffer: VecDeque::new(), next: start, done: false };
        Ok(Box::pin(futures::stream::unfold(state, |mut state| async move {
            let item = state.next_event().await?;
            Some((item, state))
        })))
    }

    async fn revision(&self) -> Result<Revision, Error> {
        let resp = patiently(false, || {
            let mut kv = self.client.kv_client();
            async move { kv.get("\0", Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        Ok(header_revision(resp.header()))
    }
}

/// `op` guarded by the key's existence and, with `expected`, its mod revision; on failure the key is read.
fn guarded(key: &str, expected: Option<Revision>, op: TxnOp) -> Txn {
    // create_revision > 0 also stops `expected == 0` from matching a missing key (whose mod revision is 0).
    let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
    if let Some(expected) = expected {
        compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
    }
    Txn::new().when(compares).and_then([op]).or_else([TxnOp::get(key, None)])
}

struct WatchState {
    stream: etcd_client::WatchStream,
    buffer: VecDeque<Event>,
    /// The first revision not delivered yet, for the Compacted error.
    next: Revision,
    done: bool,
}

impl WatchState {
    async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.next = event.kv.mod_revision + 1;
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            if let Err(e) = self.absorb(&resp) {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    fn absorb(&mut self, resp: &WatchResponse) -> Result<(), Error> {
        if resp.compact_revision() != 0 {
            return Err(Error::Compacted { requested: self.next, compacted: resp.compact_revision() });
        }
        if resp.canceled() {
            return Err(etcd_client::Error::WatchError(format!("watch canceled: {}", resp.cancel_reason())).into());
        }
        for event in resp.events() {
            self.buffer.push_back(convert_event(event)?);
        }
        Ok(())
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Event, Error> {
    let kv = event.kv().ok_or_else(|| etcd_client::Error::WatchError("event without a key".into()))?;
    let prev = event.prev_kv().map(convert).transpose()?;
    match event.event_type() {
        EventType::Put => Ok(Event { kind: EventKind::Put, kv: convert(kv)?, prev }),
        EventType::Delete => {
            // etcd's delete event carries only the key and revision; the value is the previous one.
            let kv = match &prev {
                Some(prev) => KeyValue { mod_revision: kv.mod_revision(), ..prev.clone() },
                None => KeyValue { mod_revision: kv.mod_revision(), ..convert(kv)? },
            };
            Ok(Event { kind: EventKind::Delete, kv, prev })
        }
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, Error> {
    Ok(KeyValue {
        key: kv.key_str()?.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// etcd rejects an empty key; `"\0"` is the smallest key, so it starts the whole keyspace.
fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() { vec![0] } else { prefix.as_bytes().to_vec() }
}

/// The end of the range holding every key that starts with `prefix`; `"\0"` means "to the end" to etcd.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn compact_periodically(client: Client, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Revision> = None;
    loop {
        ticker.tick().await;
        if let Some(revision) = seen.filter(|r| *r > 1) {
            match client.kv_client().compact(revision, None).await {
                Ok(_) => tracing::debug!(revision, "compacted etcd"),
                // Another API server compacted first (or further): fine.
                Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("compacted") => {}
                Err(e) => tracing::warn!(error = %e, revision, "etcd compaction failed"),
            }
        }
        let resp = client.kv_client().get("\0", Some(GetOptions::new().with_count_only())).await;
        match resp {
            Ok(resp) => seen = Some(header_revision(resp.header())),
            Err(e) => tracing::warn!(error = %e, "reading etcd revision for compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("/ab"), b"/ac".to_vec());
    }

    #[test]
    fn prefix_end_of_everything_is_nul() {
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn range_start_of_empty_prefix_is_smallest_key() {
        assert_eq!(range_start(""), vec![0]);
        assert_eq!(range_start("/x"), b"/x".to_vec());
    }
}
