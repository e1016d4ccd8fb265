//! One wasi:http pod under 1,000 slow clients (issue 16): half of them never finish a request's head, half
//! announce a body and stop sending it. Pod B on the same agent answers at once meanwhile, a new wasm pod
//! starts, A answers what it cannot take with 503 after a short queue instead of keeping clients waiting,
//! and the agent stays small; then the header and body timeouts let the slow clients go and A answers again.
//! Last, clients that never read a large response: the write timeout closes their connections, and the
//! guests streaming to them get a failed write and give their turns back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Agent, Backend, Cluster, Registry, eventually, free_port, process_status_kib};

/// Connections that send part of a request's head, then nothing.
const SLOW_HEADS: usize = 500;
/// Connections that send a whole head announcing a body, a little of it, then nothing.
const SLOW_BODIES: usize = 500;
/// The body the slow bodies announce, and what they send of it.
const ANNOUNCED: usize = 1024;
const SENT: &[u8] = b"the first bytes of the body";

/// Requests a wasi:http container handles at once without `skiff.dev/max-concurrent-requests` (the shim's
/// `DEFAULT_CONCURRENT_REQUESTS`): as many slow bodies get a turn, and hold it while their guest waits.
const TURNS: usize = 100;
/// How long a request beyond the turns waits for one before its 503 (the shim's `QUEUE_WAIT`).
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// The shim's header read timeout, and its body read timeout for a guest waiting on a silent client.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack for a timeout's effect to be seen: the agent accepts and polls under load, the test polls too.
const SLACK: Duration = Duration::from_secs(5);

/// The shim's write timeout: how long a write of a response may wait for its client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The response a non-reading client asks for: far more than the sockets between them and the guest buffer,
/// so the guest's writes stall.
const LARGE_RESPONSE_KIB: usize = 32 * 1024;

/// What a request to another pod may take while A is under attack.
const AT_ONCE: Duration = Duration::from_secs(1);
/// Requests sent to B during the attack.
const B_REQUESTS: usize = 50;
/// How soon a wasm pod created during the attack must be Ready.
const NEW_POD_READY: Duration = Duration::from_secs(10);

/// The agent's resident memory at the attack's height, and what the attack may add to it. Measured (a debug
/// build): 101 MiB before, 124-126 MiB at the height, for 100 waiting guests (about 40 KiB resident each:
/// with 250 turns the height was 133 MiB) and 1,000 connections' tasks and buffers. The growth allowed is
/// four times that: an agent that kept 100 KiB per slow connection, or buffered the bodies, would exceed it.
/// The absolute bound leaves the debug build's idle figure room.
const MAX_AGENT_RSS_KIB: u64 = 300 * 1024;
const MAX_ATTACK_GROWTH_KIB: u64 = 100 * 1024;

/// One slow client's connection: what the agent answered on it, and when.
struct Slow {
    stream: TcpStream,
    opened: Instant,
    answer: Vec<u8>,
    /// When the first bytes of an answer came, or the agent closed the connection.
    let_go: Option<Instant>,
}

impl Slow {
    fn open(address: SocketAddr, sends: &[u8]) -> Self {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("a slow connection");
        stream.write_all(sends).expect("the slow client's bytes");
        stream.set_nonblocking(true).unwrap();
        Slow { stream, opened: Instant::now(), answer: Vec::new(), let_go: None }
    }

    /// Reads what has come without waiting.
    fn poll(&mut self) {
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => break self.let_go(),
                Ok(n) => {
                    self.answer.extend_from_slice(&buffer[..n]);
                    self.let_go();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break self.let_go(),
                Err(e) => panic!("reading a slow connection: {e}"),
            }
        }
    }

    fn let_go(&mut self) {
        self.let_go.get_or_insert_with(Instant::now);
    }

    fn held(&self) -> bool {
        self.let_go.is_none()
    }

    /// Held still, or let go no sooner than the timeout that may have let it go (opening the attack takes
    /// seconds on a busy machine).
    fn not_let_go_early(&self) -> bool {
        self.held() || self.held_for() >= READ_TIMEOUT
    }

    fn held_for(&self) -> Duration {
        self.let_go.unwrap_or_else(Instant::now) - self.opened
    }

    fn status(&self) -> u16 {
        status(&String::from_utf8_lossy(&self.answer))
    }
}

/// The code of an HTTP/1.1 answer's status line (0 for none).
fn status(answer: &str) -> u16 {
    answer.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// A GET of `/` on a connection of its own: the status, the whole answer and how long it took.
fn get(address: SocketAddr) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("a connection");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    (status(&answer), answer, started.elapsed())
}

/// This process holds the slow connections: raise its soft open-files limit to the hard one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let needed = (SLOW_HEADS + SLOW_BODIES) as u64 + 256;
    assert!(limit.rlim_cur >= needed, "the open-files limit {} is below the {needed} this test needs", limit.rlim_cur);
}

/// An http-hello pod greeting with its own name on `port` of the node's address, Ready once it answers.
fn http_pod(cluster: &Cluster, agent: &Agent, name: &str, image: &str, port: u16) -> SocketAddr {
    let spec = format!(
        "  terminationGracePeriodSeconds: 5\n  containers:\n  - name: web\n    image: {image}\n    ports: [{{containerPort: {port}}}]\n    env: [{{name: GREETING, value: {name}}}]\n    readinessProbe: {{httpGet: {{path: /, port: {port}}}, periodSeconds: 1}}\n"
    );
    cluster.create_pod(name, &agent.name, &spec);
    format!("{}:{port}", agent.node_ip).parse().unwrap()
}

fn ready(cluster: &Cluster, name: &str) -> Option<()> {
    cluster.pod(name)["status"]["containerStatuses"][0]["ready"].as_bool().filter(|ready| *ready).map(drop)
}

fn answers_with_its_greeting(address: SocketAddr, name: &str) -> Duration {
    let (code, answer, took) = get(address);
    assert_eq!(code, 200, "{name} answers: {answer}");
    assert!(answer.contains(&format!("greeting: {name}\n")), "{name}'s own guest answers: {answer}");
    took
}

/// The agent's resident memory now, after setting its high-water mark to it (`clear_refs` 5), so that a
/// later `VmHWM` is the highest it reached from here on.
fn agent_rss_from_here(agent: &Agent) -> u64 {
    std::fs::write(format!("/proc/{}/clear_refs", agent.pid()), "5").expect("the agent's peak RSS reset");
    process_status_kib(agent.pid(), "VmRSS")
}

pub fn slow_clients_of_one_wasi_http_pod_hurt_no_other() {
    raise_open_files_limit();
    let registry = Registry::start().unwrap();
    let cluster = Cluster::start(Backend::Embedded).unwrap();
    // Pods on the node's address: the test's traffic stays on loopback.
    let agent = Agent::join_with(&cluster, "node-1", &["--pod-network", "host"]).unwrap();
    let image = registry.push_sample("http-hello");
    let a = http_pod(&cluster, &agent, "a", &image, free_port());
    let b = http_pod(&cluster, &agent, "b", &image, free_port());
    for name in ["a", "b"] {
        eventually(&format!("pod {name} Ready"), Duration::from_secs(60), || ready(&cluster, name));
    }
    answers_with_its_greeting(a, "a");
    answers_with_its_greeting(b, "b");
    let idle_rss = agent_rss_from_here(&agent);

    let attacked = Instant::now();
    let mut heads: Vec<Slow> =
        (0..SLOW_HEADS).map(|_| Slow::open(a, b"GET / HTTP/1.1\r\nHost: pod\r\nUser-Agent: slow\r\n")).collect();
    eprintln!("{SLOW_HEADS} unfinished heads sent in {:?}", attacked.elapsed());
    let head = format!("POST / HTTP/1.1\r\nHost: pod\r\nContent-Length: {ANNOUNCED}\r\n\r\n");
    let request = [head.as_bytes(), SENT].concat();
    let mut bodies: Vec<Slow> = (0..SLOW_BODIES).map(|_| Slow::open(a, &request)).collect();
    eprintln!("{} slow connections to pod a opened in {:?}", SLOW_HEADS + SLOW_BODIES, attacked.elapsed());

    // The slow bodies beyond A's turns wait their queue's while, then are turned away; the rest are held.
    let beyond = SLOW_BODIES - TURNS;
    eventually("the slow bodies beyond pod a's turns answered", QUEUE_WAIT + SLACK, || {
        bodies.iter_mut().for_each(Slow::poll);
        (bodies.iter().filter(|slow| slow.status() == 503).count() >= beyond).then_some(())
    });
    heads.iter_mut().for_each(Slow::poll);
    let (refused, holding): (Vec<&Slow>, Vec<&Slow>) = bodies.iter().partition(|slow| slow.status() == 503);
    assert_eq!(refused.len(), beyond, "pod a holds exactly its {TURNS} turns");
    for slow in &refused {
        let answer = String::from_utf8_lossy(&slow.answer);
        assert!(answer.contains("retry-after: 1\r\n"), "beyond the turns: {answer}");
        assert!(
            slow.held_for() >= QUEUE_WAIT && slow.held_for() < QUEUE_WAIT + SLACK,
            "a request beyond the turns waits its queue's while, then is answered: {:?}",
            slow.held_for()
        );
    }
    let waits = refused.iter().map(|slow| slow.held_for());
    eprintln!("{beyond} slow bodies answered 503 after {:?} at most", waits.max().unwrap());
    assert!(holding.iter().all(|slow| slow.not_let_go_early()), "slow bodies with a turn are held");
    assert!(heads.iter().all(Slow::not_let_go_early), "unfinished heads are held until their timeout");

    // A request to A beyond its turns: queued briefly, then 503, not left hanging.
    let (code, answer, took) = get(a);
    eprintln!("pod a answered {code} in {took:?} while its turns are held");
    assert!(code == 503 && answer.contains("retry-after: 1\r\n"), "pod a beyond its turns: {answer}");
    assert!(took >= QUEUE_WAIT && took < QUEUE_WAIT + AT_ONCE, "pod a answered 503 after {took:?}");

    // Another pod on the node answers at once.
    let latencies: Vec<Duration> = (0..B_REQUESTS).map(|_| answers_with_its_greeting(b, "b")).collect();
    let worst = latencies.iter().max().unwrap();
    let mean = latencies.iter().sum::<Duration>() / B_REQUESTS as u32;
    eprintln!("pod b answered {B_REQUESTS} requests during the attack: mean {mean:?}, worst {worst:?}");
    assert!(*worst < AT_ONCE, "pod b took {worst:?} to answer during the attack");

    bodies.iter_mut().chain(&mut heads).for_each(Slow::poll);
    let early = bodies.iter().chain(&heads).filter(|slow| slow.status() != 503 && !slow.not_let_go_early()).count();
    assert_eq!(early, 0, "the attack still holds pod a");

    // A new wasm pod starts meanwhile, and answers.
    let created = Instant::now();
    eprintln!("pod c created {:?} into the attack", created - attacked);
    let c = http_pod(&cluster, &agent, "c", &image, free_port());
    eventually("pod c Ready during the attack", NEW_POD_READY, || ready(&cluster, "c"));
    eprintln!("pod c Ready in {:?}", created.elapsed());
    answers_with_its_greeting(c, "c");

    // The timeouts let the slow clients go: a head never finished is closed, a guest waiting for a body that
    // does not come fails its read (the sample answers 400) and gives its turn back.
    eventually("every slow client let go", READ_TIMEOUT + SLACK, || {
        bodies.iter_mut().chain(&mut heads).for_each(Slow::poll);
        bodies.iter().chain(&heads).all(|slow| !slow.held()).then_some(())
    });
    for slow in &heads {
        assert!(
            slow.held_for() >= READ_TIMEOUT && slow.answer.is_empty(),
            "an unfinished head is closed, unanswered, at its timeout: held {:?}, answered {:?}",
            slow.held_for(),
            String::from_utf8_lossy(&slow.answer)
        );
    }
    let timed_out: Vec<&Slow> = bodies.iter().filter(|slow| slow.status() != 503).collect();
    assert_eq!(timed_out.len(), TURNS);
    let held = timed_out.iter().map(|slow| slow.held_for());
    eprintln!(
        "the waiting guests' bodies timed out after {:?} to {:?}: {}",
        held.clone().min().unwrap(),
        held.max().unwrap(),
        String::from_utf8_lossy(&timed_out[0].answer).lines().last().unwrap_or_default()
    );
    for slow in timed_out {
        let answer = String::from_utf8_lossy(&slow.answer);
        assert!(slow.status() == 400 && answer.contains("request body"), "a body that never came: {answer}");
        assert!(slow.held_for() >= READ_TIMEOUT, "a waiting guest's body timed out after {:?}", slow.held_for());
    }
    eprintln!("every slow client let go {:?} into the attack", attacked.elapsed());
    eventually("pod a answering again", SLACK, || (get(a).0 == 200).then_some(()));
    answers_with_its_greeting(a, "a");

    let peak = process_status_kib(agent.pid(), "VmHWM");
    eprintln!("agent RSS {} MiB before the attack, {} MiB at its height", idle_rss / 1024, peak / 1024);
    assert!(peak < MAX_AGENT_RSS_KIB, "the agent's RSS reached {} MiB", peak / 1024);
    assert!(
        peak - idle_rss < MAX_ATTACK_GROWTH_KIB,
        "the attack took the agent from {} MiB to {} MiB",
        idle_rss / 1024,
        peak / 1024
    );

    clients_that_never_read_lose_their_connection(&cluster, &agent, &image);
}

/// A pod with two turns streams a large response to two clients that never read: a third request is turned
/// away while the guests' writes stall, and once the write timeout closes the stalled connections the guests'
/// writes fail, they end and the pod answers again.
fn clients_that_never_read_lose_their_connection(cluster: &Cluster, agent: &Agent, image: &str) {
    let port = free_port();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: d\n  annotations: {{skiff.dev/max-concurrent-requests: \"2\"}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: web\n    image: {image}\n    ports: [{{containerPort: {port}}}]\n    env: [{{name: GREETING, value: d}}, {{name: PAD_KB, value: \"{LARGE_RESPONSE_KIB}\"}}]\n",
        agent.name
    );
    let out = cluster.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: SocketAddr = format!("{}:{port}", agent.node_ip).parse().unwrap();
    eventually("pod d Ready", Duration::from_secs(60), || ready(cluster, "d"));
    let (code, answer, _) = get(d);
    assert_eq!(code, 200, "pod d answers");
    let whole = answer.len();
    assert!(whole > LARGE_RESPONSE_KIB * 1024, "the whole response came: {whole} bytes");

    let stalled = Instant::now();
    let mut readers: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect_timeout(&d, Duration::from_secs(5)).expect("a connection");
            stream.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").unwrap();
            stream
        })
        .collect();
    eventually("pod d's turns held by the clients that do not read", QUEUE_WAIT + SLACK, || {
        (get(d).0 == 503).then_some(())
    });
    assert!(stalled.elapsed() < WRITE_TIMEOUT, "the stalled writes hold the turns until their timeout");
    eventually("pod d answering again", WRITE_TIMEOUT + SLACK, || (get(d).0 == 200).then_some(()));
    let freed = stalled.elapsed();
    eprintln!("pod d's turns came back {freed:?} after its clients stopped reading");
    assert!(freed >= WRITE_TIMEOUT, "the turns came back after {freed:?}, before the write timeout");
    for reader in &mut readers {
        reader.set_read_timeout(Some(SLACK)).unwrap();
        let mut received = Vec::new();
        // The connection was closed: what the sockets held, then the end (or a reset), never the whole.
        let _ = reader.read_to_end(&mut received);
        assert!(received.len() < LARGE_RESPONSE_KIB * 1024, "a client that did not read got {} bytes", received.len());
    }
}
