//! `dig`: asks a DNS server one question over UDP, as `dig @SERVER NAME TYPE` does, and prints the answer.
//! A wasm32-wasip2 command using wasi:sockets; on Skiff a guest may send datagrams to its pod's nameservers
//! (the cluster DNS, 10.43.0.10 by default) and nowhere else.
//!
//! `dig @10.43.0.10 _http._tcp.shop.default.svc.cluster.local SRV` prints `status: NOERROR`, then one line
//! per answer: `NAME TTL TYPE DATA` (an address; `PRIORITY WEIGHT PORT TARGET` for SRV; the target for
//! CNAME). Exit 0 when the server answered (NXDOMAIN included), 1 when it did not, 2 for bad arguments.

mod message;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use message::RecordType;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (server, name, record_type) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("dig: {message}\nusage: dig @SERVER NAME [A|AAAA|SRV|CNAME]");
            return ExitCode::from(2);
        }
    };
    let query = message::query(rand_id(), &name, record_type);
    match exchange(server, &query) {
        Ok(answer) => match message::parse(&answer) {
            Ok(response) => {
                println!("status: {}", response.status);
                for record in response.answers {
                    println!("{record}");
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("dig: bad answer: {message}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("dig: no answer from {server}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<(SocketAddr, String, RecordType), String> {
    let [server, name, rest @ ..] = args else { return Err("a server and a name are needed".into()) };
    let server = server.strip_prefix('@').ok_or("the server comes first, as @ADDRESS")?;
    let server: IpAddr = server.parse().map_err(|_| format!("{server:?} is not an address"))?;
    let record_type = match rest {
        [] => RecordType::A,
        [kind] => RecordType::parse(kind).ok_or_else(|| format!("unknown type {kind:?}"))?,
        _ => return Err("too many arguments".into()),
    };
    Ok((SocketAddr::new(server, 53), name.clone(), record_type))
}

/// A query id from the clock: nothing here needs it unguessable, only different between runs.
fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn exchange(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    use wasip2::clocks::monotonic_clock;
    use wasip2::io::poll;
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress};
    use wasip2::sockets::udp::OutgoingDatagram;
    use wasip2::sockets::{instance_network, udp_create_socket};

    let (family, any, remote) = match server {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress { port: 53, address: (a, b, c, d) });
            (IpAddressFamily::Ipv4, IpSocketAddress::Ipv4(Ipv4SocketAddress { port: 0, address: (0, 0, 0, 0) }), remote)
        }
        SocketAddr::V6(v6) => {
            let s = v6.ip().segments();
            let address = (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
            let remote = IpSocketAddress::Ipv6(Ipv6SocketAddress { port: 53, address, flow_info: 0, scope_id: 0 });
            let any = Ipv6SocketAddress { port: 0, address: (0, 0, 0, 0, 0, 0, 0, 0), flow_info: 0, scope_id: 0 };
            (IpAddressFamily::Ipv6, IpSocketAddress::Ipv6(any), remote)
        }
    };
    fn failed(what: &'static str) -> impl Fn(wasip2::sockets::network::ErrorCode) -> String {
        move |e| format!("{what}: {e:?}")
    }
    let socket = udp_create_socket::create_udp_socket(family).map_err(failed("socket"))?;
    let network = instance_network::instance_network();
    socket.start_bind(&network, any).map_err(failed("bind"))?;
    let bound = socket.subscribe();
    loop {
        match socket.finish_bind() {
            Err(wasip2::sockets::network::ErrorCode::WouldBlock) => bound.block(),
            other => break other.map_err(failed("bind"))?,
        }
    }
    let (incoming, outgoing) = socket.stream(Some(remote)).map_err(failed("connect"))?;
    outgoing.subscribe().block();
    outgoing.check_send().map_err(failed("send"))?;
    outgoing.send(&[OutgoingDatagram { data: query.to_vec(), remote_address: None }]).map_err(failed("send"))?;
    let deadline = monotonic_clock::subscribe_duration(5_000_000_000);
    let readable = incoming.subscribe();
    loop {
        let ready = poll::poll(&[&readable, &deadline]);
        if ready.contains(&1) && !ready.contains(&0) {
            return Err("timed out after 5 s".into());
        }
        if let Some(datagram) = incoming.receive(1).map_err(failed("receive"))?.into_iter().next() {
            return Ok(datagram.data);
        }
    }
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn exchange(_: SocketAddr, _: &[u8]) -> Result<Vec<u8>, String> {
    Err("dig sends its query only as a wasm32-wasip2 component".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_dig_s() {
        let args = |list: &[&str]| parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (server, name, kind) = args(&["@10.43.0.10", "shop", "SRV"]).unwrap();
        assert_eq!((server, name.as_str(), kind), ("10.43.0.10:53".parse().unwrap(), "shop", RecordType::Srv));
        assert_eq!(args(&["@10.43.0.10", "shop"]).unwrap().2, RecordType::A);
        assert!(args(&["10.43.0.10", "shop"]).unwrap_err().contains("@ADDRESS"));
        assert!(args(&["@10.43.0.10", "shop", "MX"]).unwrap_err().contains("unknown type"));
    }
}
