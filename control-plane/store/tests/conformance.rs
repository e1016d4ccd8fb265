//! One suite every backend passes, plus the embedded backend's own guarantees (compaction, bounded file,
//! durability across kill -9, clean shutdown). The etcd half runs against a real etcd on loopback.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::embedded::{EmbeddedConfig, EmbeddedStore};
use skiff_store::etcd::{ClientCertificate, EtcdConfig, EtcdStore, EtcdTls};
use skiff_store::{Error, Event, EventKind, Revision, Store, WatchStream};

const WAIT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn no_event(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

/// The suite. Each part uses its own key prefix, so parts do not see each other's keys.
async fn conformance(store: Arc<dyn Store>) {
    crud(&*store).await;
    list_paging(&*store).await;
    prefix_isolation(&*store).await;
    watch_replay_then_live(&*store).await;
    watch_prefix_filter(&*store).await;
    delete_event_carries_prev(&*store).await;
    concurrent_creates(Arc::clone(&store)).await;
}

async fn crud(store: &dyn Store) {
    let start = store.revision().await.unwrap();
    assert!(start >= 1);
    assert_eq!(store.get("/crud/a").await.unwrap(), None);

    let created = store.create("/crud/a", b("v1")).await.unwrap();
    assert_eq!(created.key, "/crud/a");
    assert_eq!(created.value, b("v1"));
    assert_eq!(created.create_revision, created.mod_revision);
    assert!(created.mod_revision > start);
    assert_eq!(store.revision().await.unwrap(), created.mod_revision);
    assert_eq!(store.get("/crud/a").await.unwrap(), Some(created.clone()));

    assert!(matches!(store.create("/crud/a", b("again")).await, Err(Error::AlreadyExists(k)) if k == "/crud/a"));

    let updated = store.update("/crud/a", b("v2"), Some(created.mod_revision)).await.unwrap();
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.mod_revision, created.mod_revision + 1, "one revision per write");
    assert_eq!(updated.value, b("v2"));

    match store.update("/crud/a", b("stale"), Some(created.mod_revision)).await {
        Err(Error::Conflict { key, expected, actual }) => {
            assert_eq!(key, "/crud/a");
            assert_eq!(expected, created.mod_revision);
            assert_eq!(actual, updated.mod_revision);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get("/crud/a").await.unwrap().unwrap().value, b("v2"), "a failed CAS changes nothing");

    let unconditional = store.update("/crud/a", b("v3"), None).await.unwrap();
    assert_eq!(unconditional.mod_revision, updated.mod_revision + 1);

    assert!(matches!(store.update("/crud/missing", b("x"), None).await, Err(Error::NotFound(_))));
    assert!(matches!(store.update("/crud/missing", b("x"), Some(0)).await, Err(Error::NotFound(_))));
    assert!(matches!(store.update("/crud/missing", b("x"), Some(5)).await, Err(Error::NotFound(_))));
    assert!(matches!(store.delete("/crud/missing", None).await, Err(Error::NotFound(_))));
    assert_eq!(store.get("/crud/missing").await.unwrap(), None, "a failed update creates nothing");

    assert!(matches!(
        store.delete("/crud/a", Some(created.mod_revision)).await,
        Err(Error::Conflict { actual, .. }) if actual == unconditional.mod_revision
    ));
    let deleted = store.delete("/crud/a", Some(unconditional.mod_revision)).await.unwrap();
    assert_eq!(deleted.value, b("v3"));
    assert_eq!(deleted.create_revision, created.create_revision);
    assert_eq!(deleted.mod_revision, unconditional.mod_revision + 1);
    assert_eq!(store.get("/crud/a").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), deleted.mod_revision);

    // Failed writes do not consume revisions.
    let before = store.revision().await.unwrap();
    let _ = store.delete("/crud/a", None).await;
    assert_eq!(store.revision().await.unwrap(), before);

    // A deleted key can be created again, with a new create revision.
    let again = store.create("/crud/a", b("v4")).await.unwrap();
    assert_eq!(again.create_revision, before + 1);
}

async fn list_paging(store: &dyn Store) {
    for i in 0..7 {
        store.create(&format!("/page/k{i}"), b(&i.to_string())).await.unwrap();
    }
    let all = store.list("/page/", None, 0).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/page/k0", "/page/k1", "/page/k2", "/page/k3", "/page/k4", "/page/k5", "/page/k6"]);
    assert!(!all.more);
    assert_eq!(all.revision, store.revision().await.unwrap());

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("/page/", after.as_deref(), 3).await.unwrap();
        assert!(page.kvs.len() <= 3);
        after = page.kvs.last().map(|kv| kv.key.clone());
        pages.push(page.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>());
        if !page.more {
            break;
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), keys);

    let exact = store.list("/page/", Some("/page/k3"), 4).await.unwrap();
    assert_eq!(exact.kvs.len(), 3);
    assert!(!exact.more, "no keys remain after the last one");
    let past_end = store.list("/page/", Some("/page/k9"), 0).await.unwrap();
    assert!(past_end.kvs.is_empty() && !past_end.more);
    // A start_after before the prefix starts at the prefix.
    assert_eq!(store.list("/page/", Some("/a"), 0).await.unwrap().kvs.len(), 7);
}

async fn prefix_isolation(store: &dyn Store) {
    store.create("/iso/a/1", b("x")).await.unwrap();
    store.create("/iso/a/2", b("x")).await.unwrap();
    store.create("/iso/ab/1", b("x")).await.unwrap();
    store.create("/iso/a", b("x")).await.unwrap();
    let a: Vec<_> = store.list("/iso/a/", None, 0).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(a, ["/iso/a/1", "/iso/a/2"]);
    let ab: Vec<_> = store.list("/iso/ab/", None, 0).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(ab, ["/iso/ab/1"]);
    assert_eq!(store.list("/iso/", None, 0).await.unwrap().kvs.len(), 4);
    assert!(store.list("/iso/none/", None, 0).await.unwrap().kvs.is_empty());
}

async fn watch_replay_then_live(store: &dyn Store) {
    let start = store.revision().await.unwrap();
    let one = store.create("/w/1", b("a")).await.unwrap();
    let two = store.update("/w/1", b("b"), None).await.unwrap();

    let mut stream = store.watch("/w/", start).await.unwrap();
    let first = next_event(&mut stream).await;
    assert_eq!((first.kind, &first.kv, &first.prev), (EventKind::Put, &one, &None));
    let second = next_event(&mut stream).await;
    assert_eq!((second.kind, &second.kv, second.prev.as_ref()), (EventKind::Put, &two, Some(&one)));

    let three = store.create("/w/2", b("c")).await.unwrap();
    let live = next_event(&mut stream).await;
    assert_eq!(live.kv, three);

    // Starting at the newest revision replays nothing and then follows.
    let mut from_now = store.watch("/w/", three.mod_revision).await.unwrap();
    no_event(&mut from_now).await;
    let four = store.update("/w/2", b("d"), Some(three.mod_revision)).await.unwrap();
    assert_eq!(next_event(&mut from_now).await.kv, four);
    assert_eq!(next_event(&mut stream).await.kv, four);

    // Revisions arrive in order, each once.
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(store.create(&format!("/w/many/{i}"), b("x")).await.unwrap().mod_revision);
    }
    for expected in revisions {
        assert_eq!(next_event(&mut stream).await.kv.mod_revision, expected);
    }
}

async fn watch_prefix_filter(store: &dyn Store) {
    let start = store.revision().await.unwrap();
    store.create("/wf/a/1", b("in")).await.unwrap();
    store.create("/wf/ab/1", b("out")).await.unwrap();
    let mut stream = store.watch("/wf/a/", start).await.unwrap();
    assert_eq!(next_event(&mut stream).await.kv.key, "/wf/a/1");
    store.create("/wf/ab/2", b("out")).await.unwrap();
    store.create("/wf/b", b("out")).await.unwrap();
    store.create("/wf/a/2", b("in")).await.unwrap();
    assert_eq!(next_event(&mut stream).await.kv.key, "/wf/a/2");
    no_event(&mut stream).await;
}

async fn delete_event_carries_prev(store: &dyn Store) {
    let created = store.create("/del/x", b("last")).await.unwrap();
    let mut live = store.watch("/del/", created.mod_revision).await.unwrap();
    let deleted = store.delete("/del/x", None).await.unwrap();
    for stream in [&mut live, &mut store.watch("/del/", created.mod_revision).await.unwrap()] {
        let event = next_event(stream).await;
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv, deleted);
        assert_eq!(event.kv.value, b("last"));
        assert_eq!(event.kv.mod_revision, deleted.mod_revision);
        assert_eq!(event.prev.as_ref(), Some(&created));
    }
}

async fn concurrent_creates(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 25;
    let start = store.revision().await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..PER_TASK {
                    revisions.push(store.create(&format!("/conc/{t}/{i}"), b("x")).await.unwrap().mod_revision);
                }
                revisions
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(task.await.unwrap());
    }
    revisions.sort_unstable();
    let expected: Vec<Revision> = (start + 1..=start + (TASKS * PER_TASK) as Revision).collect();
    assert_eq!(revisions, expected, "every create acknowledged with its own revision, no gaps");
    assert_eq!(store.list("/conc/", None, 0).await.unwrap().kvs.len(), TASKS * PER_TASK);
}

// ---------------------------------------------------------------- embedded

#[tokio::test]
async fn embedded_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    conformance(store).await;
}

#[tokio::test]
async fn embedded_reopen_keeps_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.revision().await.unwrap(), 1, "an empty store is at revision 1, like etcd");
    let kv = store.create("/r/a", b("x")).await.unwrap();
    assert_eq!(kv.mod_revision, 2);
    store.close().await;
    drop(store);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.revision().await.unwrap(), 2);
    assert_eq!(store.get("/r/a").await.unwrap(), Some(kv.clone()));
    let mut stream = store.watch("/r/", 1).await.unwrap();
    assert_eq!(next_event(&mut stream).await.kv, kv, "the log survives a reopen");
    assert_eq!(store.create("/r/b", b("y")).await.unwrap().mod_revision, 3);
}

#[tokio::test]
async fn embedded_watch_of_compacted_revision_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(EmbeddedConfig::new(dir.path()).with_retained_revisions(10)).unwrap();
    let mut stream = store.watch("/c/", 1).await.unwrap();
    for i in 0..50 {
        store.create(&format!("/c/{i}"), b("x")).await.unwrap();
    }
    let now = store.revision().await.unwrap();
    match store.watch("/c/", 1).await {
        Err(Error::Compacted { requested, compacted }) => {
            assert_eq!(requested, 2);
            assert_eq!(compacted, now - 10 + 1, "the newest 10 revisions are kept");
        }
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
    // The retained window replays.
    let mut recent = store.watch("/c/", now - 10).await.unwrap();
    for revision in now - 9..=now {
        assert_eq!(next_event(&mut recent).await.kv.mod_revision, revision);
    }
    // A watcher that started before compaction and kept up is unaffected.
    for revision in 2..=now {
        assert_eq!(next_event(&mut stream).await.kv.mod_revision, revision);
    }
}

async fn create_many(store: &Arc<EmbeddedStore>, prefix: &str, count: usize) {
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (store, prefix) = (Arc::clone(store), prefix.to_owned());
            tokio::spawn(async move {
                for i in (t..count).step_by(16) {
                    store.create(&format!("{prefix}{i}"), b("x")).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn embedded_lagging_watcher_recovers_from_the_log_or_ends_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open_with(EmbeddedConfig::new(dir.path()).with_retained_revisions(4150)).unwrap());
    let mut too_slow = store.watch("/lag/", 1).await.unwrap();
    create_many(&store, "/lag/a", 100).await;
    let resumed_at = store.revision().await.unwrap();
    let mut lagging = store.watch("/lag/", resumed_at).await.unwrap();
    // More events than the broadcast holds, none consumed: both watchers lag.
    create_many(&store, "/lag/b", 4100).await;
    let now = store.revision().await.unwrap();
    assert_eq!(now, 4201);

    for revision in resumed_at + 1..=now {
        assert_eq!(next_event(&mut lagging).await.kv.mod_revision, revision);
    }
    no_event(&mut lagging).await;
    let live = store.create("/lag/live", b("x")).await.unwrap();
    assert_eq!(next_event(&mut lagging).await.kv, live);

    match tokio::time::timeout(WAIT, too_slow.next()).await {
        Ok(Some(Err(Error::Compacted { requested, compacted }))) => {
            assert_eq!(requested, 2);
            assert_eq!(compacted, live.mod_revision - 4150 + 1);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(too_slow.next().await.is_none(), "the stream ends after Compacted");
}

#[tokio::test]
async fn embedded_file_stays_bounded_under_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open_with(EmbeddedConfig::new(dir.path()).with_retained_revisions(500)).unwrap());
    store.create("/big/k", Bytes::from(vec![7u8; 1024])).await.unwrap();
    let file = dir.path().join("skiff.redb");
    let update = |per_task: usize| {
        let store = Arc::clone(&store);
        async move {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            store.update("/big/k", Bytes::from(vec![7u8; 1024]), None).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    update(5_000 / 16).await;
    let after_5k = std::fs::metadata(&file).unwrap().len();
    update(15_000 / 16).await;
    let after_20k = std::fs::metadata(&file).unwrap().len();
    // Without compaction 20k events of 2 KB would be over 40 MB.
    assert!(after_20k <= after_5k + after_5k / 2, "file grew from {after_5k} to {after_20k} bytes despite compaction");
    eprintln!("file size after 5k updates: {after_5k}, after 20k: {after_20k}");
    assert_eq!(store.revision().await.unwrap(), 2 + 16 * (5_000 / 16 + 15_000 / 16) as Revision);
}

#[tokio::test]
async fn embedded_close_fails_callers_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut stream = store.watch("/", 1).await.unwrap();
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..200 {
                    outcomes.push(store.create(&format!("/close/{t}/{i}"), b("x")).await);
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::time::timeout(WAIT, store.close()).await.expect("close finishes");
    let mut closed = 0;
    for writer in writers {
        for outcome in tokio::time::timeout(WAIT, writer).await.expect("no writer hangs").unwrap() {
            match outcome {
                Ok(_) => {}
                Err(Error::Closed) => closed += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
    assert!(closed > 0, "writes after close fail");
    assert!(matches!(store.create("/after", b("x")).await, Err(Error::Closed)));
    assert!(matches!(store.watch("/", 1).await, Err(Error::Closed)));
    // The watch ends: it drains what was committed, then reports Closed.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(Error::Closed)) => return true,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the watch ends");
    assert!(ended);
}

const CRASH_CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD_DIR";

/// The child half of the crash test: writes until killed, printing each acknowledged key.
async fn write_until_killed(dir: &str) {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{t}/{i}");
                    store.create(&key, b("x")).await.unwrap();
                    println!("ACK {key}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Re-runs this test binary as a child that writes (see `write_until_killed`), SIGKILLs it, and checks
/// every key the child saw acknowledged.
#[tokio::test]
async fn embedded_acknowledged_writes_survive_kill_9() {
    use tokio::io::AsyncBufReadExt;
    if let Ok(dir) = std::env::var(CRASH_CHILD_ENV) {
        return write_until_killed(&dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "embedded_acknowledged_writes_survive_kill_9", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the child writes")
            .unwrap()
            .expect("the child is still running");
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.push(key.to_owned());
        }
    }
    child.kill().await.unwrap();
    // Lines already in the pipe were acknowledged too.
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.push(key.to_owned());
        }
    }

    let store = EmbeddedStore::open(dir.path()).unwrap();
    for key in &acked {
        assert!(store.get(key).await.unwrap().is_some(), "acknowledged {key} lost after kill -9");
    }
    let all = store.list("/crash/", None, 0).await.unwrap();
    assert!(all.kvs.len() >= acked.len());
    assert_eq!(store.revision().await.unwrap(), 1 + all.kvs.len() as Revision);
}

// ---------------------------------------------------------------- etcd

/// A real etcd on loopback, killed when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    /// With `--client-cert-auth`: the CA and a client certificate that etcd accepts.
    tls: Option<EtcdTls>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// How a client that etcd accepts connects, compaction left off.
    fn config(&self) -> EtcdConfig {
        let config = EtcdConfig::new(std::slice::from_ref(&self.endpoint)).with_compaction_interval(None);
        match &self.tls {
            Some(tls) => config.with_tls(tls.clone()),
            None => config,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes a CA (`ca.crt`), etcd's certificate for 127.0.0.1 and localhost (`server.crt`, `server.key`) and a
/// client certificate (`client.crt`, `client.key`) into `dir`.
fn write_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "etcd-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    // etcd's gRPC gateway dials etcd itself with the serving certificate, so that one is a client's too.
    let server = (vec!["127.0.0.1".to_owned(), "localhost".to_owned()], vec![ExtendedKeyUsagePurpose::ServerAuth]);
    for (name, (names, mut usages)) in [("server", server), ("client", (Vec::new(), Vec::new()))] {
        usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// Starts etcd on `client` and `peer`; with `tls`, clients must speak TLS and present a certificate
/// signed by the CA in `dir` (see [`write_pki`]).
fn spawn_etcd(dir: &Path, client: u16, peer: u16, tls: bool) -> Child {
    let client_url = format!("{}://127.0.0.1:{client}", if tls { "https" } else { "http" });
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let mut etcd = Command::new("/usr/bin/etcd");
    if tls {
        etcd.args(["--client-cert-auth", "--trusted-ca-file"]).arg(dir.join("ca.crt"));
        etcd.arg("--cert-file").arg(dir.join("server.crt")).arg("--key-file").arg(dir.join("server.key"));
    }
    etcd.args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Starts etcd and waits until it answers; with `tls`, over TLS with client certificates.
async fn start_etcd(tls: bool) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let scheme = if tls { "https" } else { "http" };
    let tls = tls.then(|| {
        write_pki(dir.path());
        let client =
            ClientCertificate { cert_file: dir.path().join("client.crt"), key_file: dir.path().join("client.key") };
        EtcdTls { ca_file: dir.path().join("ca.crt"), client: Some(client) }
    });
    let etcd = Etcd {
        child: spawn_etcd(dir.path(), client, peer, tls.is_some()),
        endpoint: format!("{scheme}://127.0.0.1:{client}"),
        tls,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), EtcdStore::connect_with(etcd.config())).await {
            Ok(Ok(_)) => return etcd,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("etcd did not become healthy: {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
}

#[tokio::test]
async fn etcd_conformance() {
    let etcd = start_etcd(false).await;
    let endpoints = [etcd.endpoint.clone()];
    let store =
        Arc::new(EtcdStore::connect_with(EtcdConfig::new(&endpoints).with_compaction_interval(None)).await.unwrap());
    conformance(store.clone()).await;

    // A write beyond etcd's request limit (1.5 MiB by default), or beyond what its gRPC server receives
    // (2 MiB), is refused as such, and writes nothing.
    for size in [1600 * 1024, 3 * 1024 * 1024] {
        let big = Bytes::from(vec![b'x'; size]);
        assert!(matches!(store.create("/big", big.clone()).await, Err(Error::TooLarge)), "{size} bytes");
        store.create("/big", b("small")).await.unwrap();
        assert!(matches!(store.update("/big", big, None).await, Err(Error::TooLarge)), "{size} bytes");
        assert_eq!(store.get("/big").await.unwrap().unwrap().value, b("small"));
        store.delete("/big", None).await.unwrap();
    }

    // The background compactor, with a short interval, compacts to the revision seen one interval before.
    let before = store.revision().await.unwrap();
    let compacting =
        EtcdStore::connect_with(EtcdConfig::new(&endpoints).with_compaction_interval(Some(Duration::from_millis(200))))
            .await
            .unwrap();
    store.create("/compact/a", b("x")).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let compacted = loop {
        store.update("/compact/a", b("y"), None).await.unwrap();
        match compacting.watch("/", 1).await {
            Err(Error::Compacted { requested, compacted }) => {
                assert_eq!(requested, 2);
                break compacted;
            }
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
        }
    };
    assert!(compacted >= before, "compacted to {compacted}, below the revision {before} seen at start");
    assert!(compacted < store.revision().await.unwrap(), "the newest interval is kept");
    drop(etcd);
}

#[tokio::test]
async fn etcd_connect_to_nothing_fails() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let result = tokio::time::timeout(WAIT, EtcdStore::connect(&[endpoint])).await;
    assert!(matches!(result, Ok(Err(Error::Etcd(_)))), "got {:?}", result.map(|r| r.map(|_| ())));
}

#[tokio::test]
async fn etcd_conformance_over_tls_with_client_certificates() {
    let etcd = start_etcd(true).await;
    conformance(Arc::new(EtcdStore::connect_with(etcd.config()).await.unwrap())).await;

    // etcd refuses a client without a certificate, and one that does not speak TLS.
    let ca_file = etcd.dir.path().join("ca.crt");
    let anonymous = etcd.config().with_tls(EtcdTls { ca_file: ca_file.clone(), client: None });
    let plain = EtcdConfig::new(&[etcd.endpoint.replace("https://", "http://")]).with_compaction_interval(None);
    for config in [anonymous, plain] {
        // A refused connection is retried as an unreachable member is, for up to eight seconds.
        let result = tokio::time::timeout(WAIT * 2, EtcdStore::connect_with(config)).await;
        assert!(matches!(result, Ok(Err(Error::Etcd(_)))), "got {:?}", result.map(|r| r.map(|_| ())));
    }

    // A missing file, or one without what it should hold, is named.
    let missing = etcd.dir.path().join("missing.crt");
    match EtcdStore::connect_with(etcd.config().with_tls(EtcdTls { ca_file: missing.clone(), client: None })).await {
        Err(Error::TlsFile { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected TlsFile, got {:?}", other.map(|_| ())),
    }
    let key_as_cert = ClientCertificate {
        cert_file: etcd.dir.path().join("client.key"),
        key_file: etcd.dir.path().join("client.key"),
    };
    let swapped = EtcdTls { ca_file, client: Some(key_as_cert) };
    match EtcdStore::connect_with(etcd.config().with_tls(swapped)).await {
        Err(Error::TlsPem { path, expected }) => {
            assert_eq!((path, expected), (etcd.dir.path().join("client.key"), "certificate"));
        }
        other => panic!("expected TlsPem, got {:?}", other.map(|_| ())),
    }
}
