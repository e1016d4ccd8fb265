//! A stub resolver for guests' outgoing requests: the pod's nameservers, search list and `ndots`, asked
//! from where the pod's own queries would come from, so the cluster DNS answers the guest as it answers the
//! pod's containers. No cache: the cluster DNS is on the node and answers from memory.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use skiff_shim::Resolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime_wasi_http::Error;

use super::Origin;

/// How long one nameserver gets to answer one query (glibc waits 5 s; the cluster DNS is on the node).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The UDP payload offered with EDNS, the DNS flag day's safe size.
const UDP_PAYLOAD: u16 = 1232;

/// What one name and type got.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Addresses(Vec<IpAddr>),
    /// The name exists but has no address of that type.
    NoData,
    NxDomain,
    Failed(ResponseCode),
    TimedOut,
}

/// The addresses of `name` as the guest wrote it, the search list applied, and the name that had them;
/// the error the guest sees (`DNS-error` with the response code, `DNS-timeout`) when there are none.
pub(super) async fn resolve(resolver: &Resolver, origin: &Origin, name: &str) -> Result<(String, Vec<IpAddr>), Error> {
    // A loopback nameserver outside the pod's namespace would be the node's own resolver.
    let servers: Vec<SocketAddr> = resolver
        .nameservers
        .iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| !ip.is_loopback() || origin.netns.is_some())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        return Err(dns_error("no nameserver configured"));
    }
    // As glibc's res_search: a name that exists without addresses, then a failure, says more than
    // NXDOMAIN from some other candidate.
    let (mut no_data, mut failure) = (false, None);
    for candidate in resolver.candidates(name) {
        let Ok(fqdn) = Name::from_ascii(format!("{candidate}.")) else {
            return Err(dns_error("invalid name"));
        };
        for record_type in [RecordType::A, RecordType::AAAA] {
            match ask(&servers, origin, &fqdn, record_type).await {
                Answer::Addresses(addresses) => return Ok((candidate, addresses)),
                Answer::NoData => no_data = true,
                Answer::NxDomain => break,
                failed => failure = Some(failed),
            }
        }
    }
    Err(match (no_data, failure) {
        (true, _) => dns_error("NOERROR"),
        (false, Some(Answer::TimedOut)) => Error::DnsTimeout,
        (false, Some(Answer::Failed(code))) => dns_error(&format!("{code:?}").to_uppercase()),
        _ => dns_error("NXDOMAIN"),
    })
}

fn dns_error(rcode: &str) -> Error {
    Error::DnsError { rcode: Some(rcode.to_string()), info_code: None }
}

/// Asks each nameserver in turn until one answers; over TCP when the UDP answer was truncated.
async fn ask(servers: &[SocketAddr], origin: &Origin, name: &Name, record_type: RecordType) -> Answer {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.clone(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    query.set_edns(edns);
    let Ok(bytes) = query.to_vec() else { return Answer::Failed(ResponseCode::FormErr) };
    let mut last = Answer::TimedOut;
    let id = query.metadata.id;
    for &server in servers {
        let exchange = async {
            let mut answer = over_udp(origin, server, &bytes, id).await?;
            if answer.metadata.truncation {
                answer = over_tcp(origin, server, &bytes, id).await?;
            }
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(QUERY_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => match read(&answer) {
                Answer::Failed(code) => last = Answer::Failed(code),
                settled => return settled,
            },
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "nameserver failed"),
            Err(_) => tracing::debug!(%server, "nameserver did not answer in time"),
        }
    }
    last
}

fn read(answer: &Message) -> Answer {
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Answer::NxDomain,
        other => return Answer::Failed(other),
    }
    // A CNAME chain comes with the addresses of its end: every address record answers the question.
    let addresses: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    if addresses.is_empty() { Answer::NoData } else { Answer::Addresses(addresses) }
}

async fn over_udp(origin: &Origin, server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let socket = origin.udp_socket(server).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; usize::from(UDP_PAYLOAD)];
    loop {
        let length = socket.recv(&mut buffer).await?;
        // A stray datagram (a late answer to another query) is skipped; the timeout bounds the wait.
        if let Some(answer) = Message::from_vec(&buffer[..length]).ok().filter(|answer| answers(answer, id)) {
            return Ok(answer);
        }
    }
}

/// Whether `message` is the answer to query `id`.
fn answers(message: &Message, id: u16) -> bool {
    message.metadata.id == id && message.metadata.message_type == MessageType::Response
}

async fn over_tcp(origin: &Origin, server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let mut stream = origin.connect(server).await?;
    let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    stream.write_u16(length).await?;
    stream.write_all(query).await?;
    let length = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut answer).await?;
    let answer = Message::from_vec(&answer).map_err(std::io::Error::other)?;
    if !answers(&answer, id) {
        return Err(std::io::Error::other("the answer over TCP is not to the query"));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME};

    use super::*;

    #[test]
    fn answers_give_every_address_of_a_cname_chain() {
        let name = Name::from_ascii("www.example.").unwrap();
        let target = Name::from_ascii("web.example.").unwrap();
        let mut answer = Message::response(1, hickory_proto::op::OpCode::Query);
        answer.add_answer(Record::from_rdata(name, 30, RData::CNAME(CNAME(target.clone()))));
        answer.add_answer(Record::from_rdata(target.clone(), 30, RData::A(A::new(10, 42, 0, 5))));
        answer.add_answer(Record::from_rdata(target, 30, RData::A(A::new(10, 42, 1, 6))));
        assert_eq!(read(&answer), Answer::Addresses(vec!["10.42.0.5".parse().unwrap(), "10.42.1.6".parse().unwrap()]));
        answer.answers.clear();
        assert_eq!(read(&answer), Answer::NoData);
        answer.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(read(&answer), Answer::NxDomain);
        answer.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(read(&answer), Answer::Failed(ResponseCode::ServFail));
    }
}
