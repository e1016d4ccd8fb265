//! The API server and the agent's endpoint under a flood of idle connections (issue 16): thousands of TCP
//! connections that never start their TLS handshake leave kubectl and the agent answering at once, and the
//! servers close them when the handshake timeout passes.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Agent, Backend, Cluster, process_status_kib};

/// Idle connections opened to each listener.
const IDLE_CONNECTIONS: usize = 2_000;

/// The servers' TLS handshake timeout (`skiff_apiserver::connections::TLS_HANDSHAKE_TIMEOUT`, the agent's
/// `TLS_HANDSHAKE_TIMEOUT`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a user may wait for an answer while the flood is on.
const AT_ONCE: Duration = Duration::from_secs(1);

/// This process holds both floods at once: raise its soft open-files limit to the hard one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let needed = 2 * IDLE_CONNECTIONS as u64 + 256;
    assert!(limit.rlim_cur >= needed, "the open-files limit {} is below the {needed} this test needs", limit.rlim_cur);
}

/// Opens the idle connections; each with when it was opened.
fn open_idle(address: SocketAddr) -> Vec<(TcpStream, Instant)> {
    (0..IDLE_CONNECTIONS)
        .map(|i| {
            let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i} to {address}: {e}"));
            (stream, Instant::now())
        })
        .collect()
}

/// Whether the server still holds `stream` open (a read would wait), unless it was opened so long ago that
/// the handshake timeout may have closed it (opening the flood takes seconds on a busy machine).
fn held_open((stream, opened): &(TcpStream, Instant)) -> bool {
    if opened.elapsed() > HANDSHAKE_TIMEOUT - Duration::from_secs(1) {
        return true;
    }
    stream.set_nonblocking(true).unwrap();
    let held = matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    held
}

/// Reads each connection until the server closes it (EOF, or a reset), which must be within the handshake
/// timeout (and some slack: on a busy machine the server may accept a connection a little after the client
/// sees it open) from its opening; returns how long the first one was held.
fn wait_closed(what: &str, streams: &[(TcpStream, Instant)]) -> Duration {
    let slack = Duration::from_secs(5);
    let mut first = None;
    for (i, (stream, opened)) in streams.iter().enumerate() {
        let left = (*opened + HANDSHAKE_TIMEOUT + slack).saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(10)))).unwrap();
        match (&*stream).read(&mut [0u8; 1]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => {
                panic!("{what} kept idle connection {i} open {:?} after it was opened: {other:?}", opened.elapsed())
            }
        }
        first.get_or_insert_with(|| opened.elapsed());
    }
    first.expect("connections to wait for")
}

pub fn idle_connections_neither_block_nor_stay() {
    raise_open_files_limit();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    let agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let port = cluster.ok(&["get", "node", "node-1", "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]);
    let kubelet: SocketAddr = format!("{}:{port}", agent.node_ip).parse().unwrap();
    let api: SocketAddr = cluster.listen.parse().unwrap();
    // The agent's endpoint, as the API server reaches it: its self-signed certificate (pinned by the API
    // server, accepted here) and the API server's client certificate.
    let agent_client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(crate::identity::apiserver_identity(&cluster))
        .build()
        .unwrap();
    let ask_agent = || {
        let url = format!("https://{kubelet}/containerLogs/default/absent/main");
        let response = agent_client.get(url).send().expect("the agent answers");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };

    let server_pid = cluster.pid().expect("the server runs");
    let idle_rss = process_status_kib(server_pid, "VmRSS");
    let opened = Instant::now();
    let (to_api, to_agent) = std::thread::scope(|s| {
        let to_api = s.spawn(|| open_idle(api));
        let to_agent = s.spawn(|| open_idle(kubelet));
        (to_api.join().unwrap(), to_agent.join().unwrap())
    });
    eprintln!("{IDLE_CONNECTIONS} idle connections to each listener opened in {:?}", opened.elapsed());

    let started = Instant::now();
    cluster.ok(&["get", "ns"]);
    let took = started.elapsed();
    eprintln!("kubectl get ns answered in {took:?} beside {IDLE_CONNECTIONS} idle connections");
    assert!(took < AT_ONCE, "kubectl get ns took {took:?} beside {IDLE_CONNECTIONS} idle connections");

    let started = Instant::now();
    let (code, body) = ask_agent();
    let took = started.elapsed();
    eprintln!("the agent answered in {took:?} beside {IDLE_CONNECTIONS} idle connections");
    assert_eq!((code, body.as_str()), (404, "pod \"absent\" does not exist"), "the agent looked the pod up");
    assert!(took < AT_ONCE, "the agent took {took:?} beside {IDLE_CONNECTIONS} idle connections");

    // The flood is held (a server that refused it would not be tested by it), until the handshake timeout.
    assert!(to_api.iter().chain(&to_agent).all(held_open), "the servers held the idle connections");
    let rss = process_status_kib(server_pid, "VmRSS");
    eprintln!(
        "server RSS {} MiB holding {IDLE_CONNECTIONS} idle connections, {} MiB before",
        rss / 1024,
        idle_rss / 1024
    );
    for (what, streams) in [("the API server", &to_api), ("the agent", &to_agent)] {
        let held = wait_closed(what, streams);
        eprintln!("{what} closed its first idle connection after {held:?}, all {IDLE_CONNECTIONS} by now");
        assert!(held >= HANDSHAKE_TIMEOUT - Duration::from_secs(1), "{what} closed it after {held:?}");
    }

    // Both still serve once the flood is gone.
    cluster.ok(&["get", "ns"]);
    assert_eq!(ask_agent().0, 404);
}
