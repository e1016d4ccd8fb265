//! A test network of nodes on one machine: a bridge on the host (`10.231.S.1/24`) and one network namespace
//! per node, joined to it by a veth pair (`10.231.S.N`), so routes between nodes are real routes. Nodes get
//! no default route, only one for the Service range: what they do not route themselves (a pod range before
//! its route is made, anything outside) fails at once instead of leaving through the host. The host relays the loopback registry onto
//! the test network, where agents reach it through a registries file mirroring `127.0.0.1:PORT` there.
//! Everything made is removed when the guard drops.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

/// The third octet of the next test network; tests in one run share the machine.
static NEXT_SUBNET: AtomicU8 = AtomicU8::new(0);

pub struct TestNet {
    /// The third octet: the network is 10.231.S.0/24.
    subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
    relays: Vec<Child>,
}

/// Runs `ip ARGS` (or another program), failing the test with its error output.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// Runs a program inside the namespace `netns`; returns its standard output.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {netns}: {e}"))
}

/// Sends `request` over TCP to `to` from node namespace `netns` and reads the answer until the server closes
/// (an HTTP/1.0 exchange); what came before an error or the timeout.
pub fn exchange_in_netns(netns: &str, to: std::net::SocketAddr, request: &str, timeout: std::time::Duration) -> String {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let namespace = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    let request = request.to_string();
    // A thread of its own joins the namespace, and ends with it.
    std::thread::spawn(move || {
        // SAFETY: setns only reads the descriptor, which `namespace` keeps open for the call.
        assert_eq!(unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let mut answer = Vec::new();
        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&to, timeout) {
            stream.set_read_timeout(Some(timeout)).unwrap();
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut answer);
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .join()
    .unwrap()
}

impl TestNet {
    pub fn new() -> Self {
        let routes = String::from_utf8(Command::new("ip").args(["-4", "route"]).output().unwrap().stdout).unwrap();
        let start = (std::process::id() % 200) as u8;
        let subnet = (0..200)
            .map(|_| start.wrapping_add(NEXT_SUBNET.fetch_add(1, Ordering::Relaxed)) % 200 + 20)
            .find(|s| !routes.contains(&format!("10.231.{s}.")))
            .expect("a free test network in 10.231.0.0/16");
        let bridge = format!("sktest{subnet}");
        let net = TestNet { subnet, bridge, namespaces: Vec::new(), relays: Vec::new() };
        run("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        run("ip", &["address", "add", &format!("{}/24", net.gateway()), "dev", &net.bridge]);
        run("ip", &["link", "set", &net.bridge, "up"]);
        net
    }

    /// The host's address on the test network (the nodes' default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// Makes node `index`'s namespace (`sktest<S>-<index>`) and returns its name and address.
    pub fn add_node(&mut self, index: u8) -> (String, Ipv4Addr) {
        let netns = format!("sktest{}-{index}", self.subnet);
        let ip = Ipv4Addr::new(10, 231, self.subnet, 10 + index);
        let (host_end, node_end) = (format!("skh{}-{index}", self.subnet), format!("skn{}-{index}", self.subnet));
        run("ip", &["netns", "add", &netns]);
        self.namespaces.push(netns.clone());
        run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &node_end]);
        run("ip", &["link", "set", &host_end, "master", &self.bridge, "up"]);
        run("ip", &["link", "set", &node_end, "netns", &netns]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["link", "set", &node_end, "name", "eth0"]);
        inside(&["address", "add", &format!("{ip}/24"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        // What a machine's default route gives: a route for the Service range. A socket of the node's own
        // (a wasm guest's, a host-network pod's) needs one to connect to a cluster IP at all, before the
        // service proxy's DNAT redirects it, as with kube-proxy.
        inside(&["route", "add", "10.43.0.0/16", "via", &self.gateway().to_string()]);
        (netns, ip)
    }

    /// Puts `ip` on the host, standing for a machine outside the cluster, and routes the nodes to it through
    /// the host (made after the nodes).
    pub fn add_outside_address(&mut self, ip: Ipv4Addr) {
        run("ip", &["address", "add", &format!("{ip}/32"), "dev", &self.bridge]);
        for netns in &self.namespaces {
            let out = in_netns(netns, "ip", &["route", "add", &format!("{ip}/32"), "via", &self.gateway().to_string()]);
            assert!(out.status.success(), "route to {ip} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Makes the host's `127.0.0.1:port` (a registry) reachable on the test network, at the bridge address
    /// and the same port, through a relay.
    pub fn relay_loopback(&mut self, port: u16) {
        let relay = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind={},fork,reuseaddr", self.gateway()))
            .arg(format!("TCP:127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (Debian package socat; scripts/setup installs it)");
        self.relays.push(relay);
        let address = std::net::SocketAddr::from((self.gateway(), port));
        crate::harness::eventually("the registry relay", std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(address).ok().map(|_| ())
        });
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        // A namespace takes its veth end with it, and the peer on the host goes too.
        for netns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", netns]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).status();
    }
}

/// An HTTP server standing for a site outside the cluster: every request on port 80 of `ip` gets 200 and
/// `body`, and the connection is closed.
pub struct OutsideServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    address: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutsideServer {
    pub fn start(ip: Ipv4Addr, body: &'static str) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((ip, 80)).expect("port 80 on the outside address");
        let address = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    // The request's head, up to its blank line; nothing is sent with a body here.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                        head.push(byte[0]);
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                }
            })
        };
        OutsideServer { stop, address, thread: Some(thread) }
    }
}

impl Drop for OutsideServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A DNS server standing for the world outside the cluster, on the test network: it answers every A query
/// with one address, so a test can tell a forwarded name from a cluster one.
pub struct OutsideResolver {
    socket: std::sync::Arc<std::net::UdpSocket>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub address: std::net::SocketAddr,
}

impl OutsideResolver {
    pub fn start(ip: Ipv4Addr, answer: Ipv4Addr) -> Self {
        use hickory_proto::op::{Message, MessageType};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record, RecordType};
        let socket = std::sync::Arc::new(std::net::UdpSocket::bind((ip, 53)).expect("port 53 on the test network"));
        socket.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let address = socket.local_addr().unwrap();
        let thread = {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((length, peer)) = socket.recv_from(&mut buffer) else { continue };
                    let Ok(query) = Message::from_vec(&buffer[..length]) else { continue };
                    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                    reply.metadata.message_type = MessageType::Response;
                    reply.metadata.recursion_available = true;
                    reply.queries = query.queries.clone();
                    for question in &query.queries {
                        if question.query_type == RecordType::A {
                            reply.answers.push(Record::from_rdata(question.name.clone(), 60, RData::A(A(answer))));
                        }
                    }
                    let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
                }
            })
        };
        OutsideResolver { socket, stop, thread: Some(thread), address }
    }
}

impl Drop for OutsideResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.socket.send_to(&[], self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
