//! The embedded backend: one redb file in a local directory.
//!
//! Writes go through a channel to a single writer thread that applies everything queued (up to
//! [`EmbeddedConfig::max_batch`] operations) in one durable write transaction and then answers each caller
//! with its own result: one fsync pays for many writes (group commit). Each successful write still gets its
//! own revision, and a write sees the earlier writes of its batch.
//!
//! Tables: `kv` (key -> create revision, mod revision, value), `log` (revision -> the event, for watch
//! replay) and `meta` (current and compacted revision). The writer trims the log to the newest
//! [`EmbeddedConfig::retained_revisions`] revisions a little per batch, so the file stays bounded and
//! compaction never stalls writes; redb reuses the freed pages.
//!
//! Watchers subscribe to a broadcast of committed events first, then replay the log from their start
//! revision, then follow the broadcast, skipping what the replay already delivered. A watcher that falls
//! behind the broadcast re-reads the log, or ends with [`Error::Compacted`] if the log moved past it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Error, Event, EventKind, KeyValue, ListPage, Revision, Store, WatchStream};

/// Key -> `create_revision (i64 LE) | mod_revision (i64 LE) | value`.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Revision -> one encoded event (see [`encode_event`]).
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
/// [`META_REVISION`] and [`META_COMPACTED`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
/// The newest revision removed from the log: watches must start after it.
const META_COMPACTED: &str = "compacted";

const FILE_NAME: &str = "skiff.redb";

/// Like etcd, an empty store is at revision 1 and the first write gets revision 2.
const INITIAL_REVISION: Revision = 1;

/// Default history kept for watch replay. A watcher (an informer, the API server's watch cache) that drops
/// its connection resumes from its last revision, so the log must cover the writes made while it was away.
/// kube-apiserver compacts etcd every 5 minutes; 10,000 revisions cover several minutes of a busy small
/// cluster (tens of writes per second) while bounding the log to 10,000 events (about 100 MB with 5 KB
/// objects, since an event keeps the previous value too). Older resumes get `Compacted` and relist.
pub const DEFAULT_RETAINED_REVISIONS: Revision = 10_000;

/// Default cap on operations per write transaction. Large enough that 16+ concurrent writers share one
/// fsync, small enough that one transaction stays short and a caller never waits behind a huge batch.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// At most this many log entries are removed per write transaction: more than a full batch adds, so the
/// trimming keeps up, yet little enough that it never makes a commit noticeably slower.
const COMPACT_CHUNK: Revision = 1024;

/// Log entries read per step of a watch replay, so a long replay neither holds one read transaction nor
/// buffers the whole history.
const REPLAY_CHUNK: usize = 256;

/// Events buffered per watcher before it lags and falls back to reading the log.
const BROADCAST_CAPACITY: usize = 4096;

/// Requests waiting for the writer before callers are slowed down.
const QUEUE_CAPACITY: usize = 4096;

/// How to open an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Directory holding the database file; created if missing.
    pub dir: PathBuf,
    /// Newest revisions kept in the log for watch replay (at least 1).
    pub retained_revisions: Revision,
    /// Most operations applied in one write transaction (at least 1).
    pub max_batch: usize,
}

impl EmbeddedConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), retained_revisions: DEFAULT_RETAINED_REVISIONS, max_batch: DEFAULT_MAX_BATCH }
    }

    pub fn with_retained_revisions(mut self, revisions: Revision) -> Self {
        self.retained_revisions = revisions;
        self
    }

    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }
}

/// The redb-backed [`Store`]. Dropping it stops the writer once queued writes are done; call
/// [`EmbeddedStore::close`] to wait for that (needed before reopening the same directory in-process).
pub struct EmbeddedStore {
    db: Arc<Database>,
    requests: mpsc::Sender<Message>,
    /// Weak so that the channel closes, ending every watch, when the writer thread exits.
    events: broadcast::WeakSender<Event>,
    revision: Arc<AtomicI64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("revision", &self.revision.load(Ordering::Acquire)).finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default settings.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(EmbeddedConfig::new(dir.as_ref()))
    }

    pub fn open_with(config: EmbeddedConfig) -> Result<Self, Error> {
        // Every object, Secrets among them, is in the file: its owner's alone, as kube-bench wants etcd's data
        // directory (0700), whatever the directory around it allows.
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&config.dir).map_err(embedded)?;
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700)).map_err(embedded)?;
        let path = config.dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(embedded)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(embedded)?;
        let (revision, compacted) = init_tables(&db).map_err(embedded)?;
        let db = Arc::new(db);
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let weak_events = events.downgrade();
        let revision_shared = Arc::new(AtomicI64::new(revision));
        let writer = Writer {
            db: Arc::clone(&db),
            queue,
            events,
            revision: Arc::clone(&revision_shared),
            compacted,
            retained: config.retained_revisions.max(1),
            max_batch: config.max_batch.max(1),
        };
        let handle = std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(move || writer.run())
            .map_err(embedded)?;
        Ok(Self { db, requests, events: weak_events, revision: revision_shared, writer: Mutex::new(Some(handle)) })
    }

    /// Stops the writer after the writes queued before this call, and waits for it. Later writes and
    /// writes still queued fail with [`Error::Closed`]; watches end with [`Error::Closed`].
    pub async fn close(&self) {
        // The writer may already be gone (closed before); then there is nothing to stop.
        let _ = self.requests.send(Message::Shutdown).await;
        let handle = self.writer.lock().map(|mut h| h.take()).unwrap_or_else(|poisoned| poisoned.into_inner().take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    async fn write(&self, op: Write) -> Result<KeyValue, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Message::Write(op, reply)).await.map_err(|_| Error::Closed)?;
        // A dropped reply means the writer stopped before answering.
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(embedded)?
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        // A point read is one B-tree lookup in pages redb almost always has cached: microseconds, less than
        // the two thread hand-offs of spawn_blocking, and every update starts with one. Lists, which can be
        // long, still run on the blocking pool.
        let txn = self.db.begin_read().map_err(embedded)?;
        let kv = txn.open_table(KV).map_err(embedded)?;
        let found = kv.get(key).map_err(embedded)?;
        found.map(|v| decode_kv(key, v.value())).transpose()
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, Error> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.read(move |db| list_in(db, &prefix, start_after.as_deref(), limit)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, Error> {
        self.write(Write::Create { key: key.to_owned(), value }).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Revision>) -> Result<KeyValue, Error> {
        self.write(Write::Update { key: key.to_owned(), value, expected }).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, Error> {
        self.write(Write::Delete { key: key.to_owned(), expected }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, Error> {
        // Subscribe before reading the log: every event is then either in the replay or in the channel.
        let events = self.events.upgrade().ok_or(Error::Closed)?.subscribe();
        let mut watch = Watch {
            db: Arc::downgrade(&self.db),
            events,
            prefix: prefix.to_owned(),
            next: after.max(0).saturating_add(1),
            replaying: true,
            buffer: VecDeque::new(),
            done: false,
        };
        // The first replay step runs now so that a compacted start fails the call itself.
        watch.replay_step().await?;
        Ok(Box::pin(futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next_event().await?;
            Some((item, watch))
        })))
    }

    async fn revision(&self) -> Result<Revision, Error> {
        Ok(self.revision.load(Ordering::Acquire))
    }
}

fn embedded<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::Embedded(Box::new(e))
}

/// Creates the tables if missing and returns the current and compacted revision.
fn init_tables(db: &Database) -> Result<(Revision, Revision), redb::Error> {
    let txn = db.begin_write()?;
    let (revision, compacted) = {
        let _ = txn.open_table(KV)?;
        let _ = txn.open_table(LOG)?;
        let meta = txn.open_table(META)?;
        let revision = meta.get(META_REVISION)?.map_or(INITIAL_REVISION, |v| v.value());
        let compacted = meta.get(META_COMPACTED)?.map_or(0, |v| v.value());
        (revision, compacted)
    };
    txn.commit()?;
    Ok((revision, compacted))
}

fn list_in(db: &Database, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, Error> {
    use std::ops::Bound;
    let txn = db.begin_read().map_err(embedded)?;
    let meta = txn.open_table(META).map_err(embedded)?;
    let revision = meta.get(META_REVISION).map_err(embedded)?.map_or(INITIAL_REVISION, |v| v.value());
    let kv = txn.open_table(KV).map_err(embedded)?;
    let lower = match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut kvs = Vec::new();
    let mut more = false;
    for entry in kv.range::<&str>((lower, Bound::Unbounded)).map_err(embedded)? {
        let (key, value) = entry.map_err(embedded)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        if limit > 0 && kvs.len() == limit {
            more = true;
            break;
        }
        kvs.push(decode_kv(key, value.value())?);
    }
    Ok(ListPage { kvs, revision, more })
}

enum Write {
    Create { key: String, value: Bytes },
    Update { key: String, value: Bytes, expected: Option<Revision> },
    Delete { key: String, expected: Option<Revision> },
}

enum Message {
    Write(Write, oneshot::Sender<Result<KeyValue, Error>>),
    Shutdown,
}

struct Writer {
    db: Arc<Database>,
    queue: mpsc::Receiver<Message>,
    events: broadcast::Sender<Event>,
    revision: Arc<AtomicI64>,
    compacted: Revision,
    retained: Revision,
    max_batch: usize,
}

impl Writer {
    fn run(mut self) {
        let mut ops = Vec::with_capacity(self.max_batch);
        let mut replies = Vec::with_capacity(self.max_batch);
        loop {
            // None: every store handle is gone and the queue is drained.
            let Some(first) = self.queue.blocking_recv() else {
                return;
            };
            let mut shutdown = false;
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Write(op, reply) => {
                        ops.push(op);
                        replies.push(reply);
                    }
                    Message::Shutdown => {
                        shutdown = true;
                        break;
                    }
                }
                next = if ops.len() < self.max_batch { self.queue.try_recv().ok() } else { None };
            }
            if !ops.is_empty() {
                self.commit_batch(&ops, &mut replies);
                ops.clear();
            }
            if shutdown {
                // Dropping the queue drops the replies of requests behind the shutdown: they get Closed.
                return;
            }
        }
    }

    fn commit_batch(&mut self, ops: &[Write], replies: &mut Vec<oneshot::Sender<Result<KeyValue, Error>>>) {
        match self.apply_batch(ops) {
            Ok(Committed { results, events, revision, compacted }) => {
                self.revision.store(revision, Ordering::Release);
                self.compacted = compacted;
                for event in events {
                    // No receivers is fine: nobody watches.
                    let _ = self.events.send(event);
                }
                for (reply, result) in replies.drain(..).zip(results) {
                    // The caller may have given up waiting; the write stands anyway.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = ops.len(), "embedded store write transaction failed");
                let message = e.to_string();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(Error::Embedded(message.clone().into())));
                }
            }
        }
    }

    /// Applies `ops` in one durable transaction. Nothing is committed if this fails.
    fn apply_batch(&self, ops: &[Write]) -> Result<Committed, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::with_capacity(ops.len());
        let mut revision = self.revision.load(Ordering::Acquire);
        let mut compacted = self.compacted;
        {
            let mut kv = txn.open_table(KV)?;
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            for op in ops {
                match apply(&mut kv, op, revision + 1)? {
                    Ok(event) => {
                        revision += 1;
                        log.insert(revision, encode_event(&event).as_slice())?;
                        results.push(Ok(event.kv.clone()));
                        events.push(event);
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            meta.insert(META_REVISION, revision)?;
            let target = revision - self.retained;
            if target > compacted {
                let upto = target.min(compacted + COMPACT_CHUNK);
                log.retain_in(compacted + 1..=upto, |_, _| false)?;
                compacted = upto;
                meta.insert(META_COMPACTED, compacted)?;
            }
        }
        txn.commit()?;
        Ok(Committed { results, events, revision, compacted })
    }
}

/// What one write transaction did.
struct Committed {
    /// One per op, in order.
    results: Vec<Result<KeyValue, Error>>,
    /// One per successful op, in revision order.
    events: Vec<Event>,
    revision: Revision,
    compacted: Revision,
}

/// Applies one write at `revision` inside the batch transaction. The outer error aborts the batch; the
/// inner one is this op's own failure (not found, conflict, ...).
fn apply(
    kv: &mut redb::Table<&str, &[u8]>,
    op: &Write,
    revision: Revision,
) -> Result<Result<Event, Error>, redb::StorageError> {
    let (key, expected) = match op {
        Write::Create { key, .. } => (key, None),
        Write::Update { key, expected, .. } | Write::Delete { key, expected } => (key, *expected),
    };
    let current = match kv.get(key.as_str())? {
        Some(v) => match decode_kv(key, v.value()) {
            Ok(current) => Some(current),
            Err(e) => return Ok(Err(e)),
        },
        None => None,
    };
    if let (Some(current), Some(expected)) = (&current, expected)
        && expected != current.mod_revision
    {
        return Ok(Err(Error::Conflict { key: key.clone(), expected, actual: current.mod_revision }));
    }
    let event = match (op, current) {
        (Write::Create { key, value }, None) => Event {
            kind: EventKind::Put,
            kv: KeyValue { key: key.clone(), value: value.clone(), create_revision: revision, mod_revision: revision },
            prev: None,
        },
        (Write::Create { key, .. }, Some(_)) => return Ok(Err(Error::AlreadyExists(key.clone()))),
        (Write::Update { .. } | Write::Delete { .. }, None) => {
            return Ok(Err(Error::NotFound(key.clone())));
        }
        (Write::Update { key, value, .. }, Some(current)) => Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: current.create_revision,
                mod_revision: revision,
            },
            prev: Some(current),
        },
        (Write::Delete { .. }, Some(current)) => Event {
            kind: EventKind::Delete,
            kv: KeyValue { mod_revision: revision, ..current.clone() },
            prev: Some(current),
        },
    };
    match event.kind {
        EventKind::Put => {
            let encoded = encode_kv(&event.kv);
            kv.insert(key.as_str(), encoded.as_slice())?;
        }
        EventKind::Delete => {
            kv.remove(key.as_str())?;
        }
    }
    Ok(Ok(event))
}

struct Watch {
    db: Weak<Database>,
    events: broadcast::Receiver<Event>,
    prefix: String,
    /// The next revision this watcher has not seen yet.
    next: Revision,
    replaying: bool,
    buffer: VecDeque<Event>,
    done: bool,
}

impl Watch {
    async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.replaying {
                if let Err(e) = self.replay_step().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.events.recv().await {
                Ok(event) => {
                    let revision = event.kv.mod_revision;
                    if revision < self.next {
                        continue;
                    }
                    if revision > self.next {
                        // A revision went missing between replay and broadcast; the log has it.
                        self.replaying = true;
                        continue;
                    }
                    self.next = revision + 1;
                    if event.kv.key.starts_with(&self.prefix) {
                        return Some(Ok(event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(Error::Closed));
                }
            }
        }
    }

    /// Reads the next chunk of the log into the buffer; leaves replay mode at the end of the log.
    async fn replay_step(&mut self) -> Result<(), Error> {
        let db = self.db.upgrade().ok_or(Error::Closed)?;
        let (from, prefix) = (self.next, self.prefix.clone());
        let (events, next, exhausted) =
            tokio::task::spawn_blocking(move || read_log(&db, from, &prefix)).await.map_err(embedded)??;
        self.buffer.extend(events);
        self.next = next;
        if exhausted {
            self.replaying = false;
        }
        Ok(())
    }
}

/// Up to [`REPLAY_CHUNK`] log entries from `from` on, filtered by `prefix`; the next revision to read; and
/// whether the end of the log was reached.
fn read_log(db: &Database, from: Revision, prefix: &str) -> Result<(Vec<Event>, Revision, bool), Error> {
    let txn = db.begin_read().map_err(embedded)?;
    let meta = txn.open_table(META).map_err(embedded)?;
    let compacted = meta.get(META_COMPACTED).map_err(embedded)?.map_or(0, |v| v.value());
    if from <= compacted {
        return Err(Error::Compacted { requested: from, compacted: compacted + 1 });
    }
    let log = txn.open_table(LOG).map_err(embedded)?;
    let mut events = Vec::new();
    let mut next = from;
    let mut read = 0;
    for entry in log.range(from..).map_err(embedded)? {
        let (revision, encoded) = entry.map_err(embedded)?;
        let revision = revision.value();
        let event = decode_event(revision, encoded.value())?;
        next = revision + 1;
        read += 1;
        if event.kv.key.starts_with(prefix) {
            events.push(event);
        }
        if read == REPLAY_CHUNK {
            return Ok((events, next, false));
        }
    }
    Ok((events, next, true))
}

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, Error> {
    let mut r = Reader(bytes);
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Ok(KeyValue { key: key.to_owned(), value: Bytes::copy_from_slice(r.0), create_revision, mod_revision })
}

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// `kind u8 | key_len u32 | key | create_revision i64 | value_len u32 | value | has_prev u8 |
/// [prev_create i64 | prev_mod i64 | prev_value]`. The revision is the log key. A delete stores no value of
/// its own: it is the previous value.
fn encode_event(event: &Event) -> Vec<u8> {
    let prev_len = event.prev.as_ref().map_or(0, |p| 16 + p.value.len());
    let mut out = Vec::with_capacity(18 + event.kv.key.len() + event.kv.value.len() + prev_len);
    let value: &[u8] = match event.kind {
        EventKind::Put => {
            out.push(KIND_PUT);
            &event.kv.value
        }
        EventKind::Delete => {
            out.push(KIND_DELETE);
            &[]
        }
    };
    put_bytes(&mut out, event.kv.key.as_bytes());
    out.extend_from_slice(&event.kv.create_revision.to_le_bytes());
    put_bytes(&mut out, value);
    match &event.prev {
        Some(prev) => {
            out.push(1);
            out.extend_from_slice(&prev.create_revision.to_le_bytes());
            out.extend_from_slice(&prev.mod_revision.to_le_bytes());
            out.extend_from_slice(&prev.value);
        }
        None => out.push(0),
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values come from the API server, far below 4 GiB (etcd's own limit is 1.5 MiB).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn decode_event(revision: Revision, bytes: &[u8]) -> Result<Event, Error> {
    let mut r = Reader(bytes);
    let kind = match r.u8()? {
        KIND_PUT => EventKind::Put,
        KIND_DELETE => EventKind::Delete,
        other => {
            return Err(corrupt(format!("unknown event kind {other} at revision {revision}")));
        }
    };
    let key = std::str::from_utf8(r.bytes()?).map_err(embedded)?.to_owned();
    let create_revision = r.i64()?;
    let value = Bytes::copy_from_slice(r.bytes()?);
    let prev = match r.u8()? {
        0 => None,
        _ => {
            let create_revision = r.i64()?;
            let mod_revision = r.i64()?;
            Some(KeyValue { key: key.clone(), value: Bytes::copy_from_slice(r.0), create_revision, mod_revision })
        }
    };
    let value = match (kind, &prev) {
        (EventKind::Delete, Some(prev)) => prev.value.clone(),
        _ => value,
    };
    Ok(Event { kind, kv: KeyValue { key, value, create_revision, mod_revision: revision }, prev })
}

fn corrupt(message: String) -> Error {
    Error::Embedded(format!("corrupt record: {message}").into())
}

/// A cursor over an encoded record that fails instead of panicking on truncated input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(corrupt(format!("needed {n} more bytes, found {}", self.0.len())));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, Error> {
        let mut buf = [0; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(buf))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let mut buf = [0; 4];
        buf.copy_from_slice(self.take(4)?);
        let len = usize::try_from(u32::from_le_bytes(buf)).map_err(embedded)?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    fn writer(dir: &Path, retained: Revision) -> Writer {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let (revision, compacted) = init_tables(&db).unwrap();
        let (_, queue) = mpsc::channel(1);
        let (events, _) = broadcast::channel(16);
        Writer {
            db: Arc::new(db),
            queue,
            events,
            revision: Arc::new(AtomicI64::new(revision)),
            compacted,
            retained,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    fn create(key: &str, value: &str) -> Write {
        Write::Create { key: key.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
    }

    fn update(key: &str, value: &str, expected: Option<Revision>) -> Write {
        Write::Update { key: key.into(), value: Bytes::copy_from_slice(value.as_bytes()), expected }
    }

    fn revisions(results: &[Result<KeyValue, Error>]) -> Vec<Option<Revision>> {
        results.iter().map(|r| r.as_ref().ok().map(|kv| kv.mod_revision)).collect()
    }

    #[test]
    fn ops_in_one_batch_see_earlier_ops_and_get_their_own_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path(), DEFAULT_RETAINED_REVISIONS);
        let ops = [
            create("/k", "a"),
            update("/k", "b", Some(2)),
            Write::Delete { key: "/k".into(), expected: Some(3) },
            create("/k", "c"),
        ];
        let Committed { results, events, revision, .. } = writer.apply_batch(&ops).unwrap();
        assert_eq!(revisions(&results), [Some(2), Some(3), Some(4), Some(5)]);
        assert_eq!(revision, 5);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Put, EventKind::Put, EventKind::Delete, EventKind::Put]);
        assert_eq!(events[3].kv.create_revision, 5, "re-created after the delete");
        assert_eq!(events[2].prev.as_ref().map(|p| p.value.clone()), Some(Bytes::from_static(b"b")));
    }

    #[test]
    fn failed_ops_in_a_batch_consume_no_revision() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path(), DEFAULT_RETAINED_REVISIONS);
        let ops = [create("/k", "a"), create("/k", "again"), update("/k", "b", Some(99)), update("/k", "c", None)];
        let Committed { results, events, revision, .. } = writer.apply_batch(&ops).unwrap();
        assert_eq!(revisions(&results), [Some(2), None, None, Some(3)]);
        assert!(matches!(results[1], Err(Error::AlreadyExists(_))));
        assert!(matches!(results[2], Err(Error::Conflict { expected: 99, actual: 2, .. })));
        assert_eq!(events.len(), 2);
        assert_eq!(revision, 3);
    }

    #[test]
    fn compaction_trims_the_log_a_chunk_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), 10);
        let ops: Vec<_> = (0..3000).map(|i| create(&format!("/k{i}"), "x")).collect();
        let Committed { revision, compacted, .. } = writer.apply_batch(&ops).unwrap();
        assert_eq!(revision, 3001);
        assert_eq!(compacted, COMPACT_CHUNK, "at most one chunk per transaction");
        writer.revision.store(revision, Ordering::Release);
        writer.compacted = compacted;
        let Committed { revision, compacted, .. } = writer.apply_batch(&[create("/one", "x")]).unwrap();
        assert_eq!(compacted, 2 * COMPACT_CHUNK);
        let txn = writer.db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        assert_eq!(log.first().unwrap().map(|(r, _)| r.value()), Some(compacted + 1));
        assert_eq!(log.len().unwrap(), u64::try_from(revision - compacted).unwrap());
    }

    #[test]
    fn events_round_trip_through_the_log_encoding() {
        let kv = |value: &'static [u8], create, modified| KeyValue {
            key: "/a/b".into(),
            value: Bytes::from_static(value),
            create_revision: create,
            mod_revision: modified,
        };
        let events = [
            Event { kind: EventKind::Put, kv: kv(b"new", 5, 5), prev: None },
            Event { kind: EventKind::Put, kv: kv(b"newer", 5, 7), prev: Some(kv(b"new", 5, 5)) },
            Event { kind: EventKind::Delete, kv: kv(b"newer", 5, 9), prev: Some(kv(b"newer", 5, 7)) },
            Event { kind: EventKind::Put, kv: kv(b"", 10, 10), prev: None },
        ];
        for event in events {
            let decoded = decode_event(event.kv.mod_revision, &encode_event(&event)).unwrap();
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let event = Event {
            kind: EventKind::Put,
            kv: KeyValue { key: "/k".into(), value: Bytes::from_static(b"v"), create_revision: 2, mod_revision: 2 },
            prev: None,
        };
        let encoded = encode_event(&event);
        for len in 0..encoded.len() {
            assert!(decode_event(2, &encoded[..len]).is_err(), "truncated to {len}");
        }
        let mut bad_kind = encoded.clone();
        bad_kind[0] = 9;
        assert!(decode_event(2, &bad_kind).is_err());
        let mut huge_len = encoded;
        huge_len[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_event(2, &huge_len).is_err());
        assert!(decode_kv("/k", &[1, 2, 3]).is_err());
    }
}
