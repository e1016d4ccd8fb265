//! DNS messages (RFC 1035) as far as dig needs them: one question out, the answer section back.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Srv,
}

impl RecordType {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "A" => Some(RecordType::A),
            "AAAA" => Some(RecordType::Aaaa),
            "CNAME" => Some(RecordType::Cname),
            "SRV" => Some(RecordType::Srv),
            _ => None,
        }
    }

    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Cname => 5,
            RecordType::Aaaa => 28,
            RecordType::Srv => 33,
        }
    }
}

/// A query for `name` (a trailing dot or not) of `kind`, recursion desired.
pub fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Vec::with_capacity(32 + name.len());
    message.extend_from_slice(&id.to_be_bytes());
    // Flags: RD; one question, no other records.
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        message.push(label.len().min(63) as u8);
        message.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    message.push(0);
    message.extend_from_slice(&kind.code().to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes()); // class IN
    message
}

/// What came back: the response code's name and the answer section.
pub struct Response {
    pub status: &'static str,
    pub answers: Vec<Record>,
}

pub struct Record {
    name: String,
    ttl: u32,
    data: Data,
}

enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Srv { priority: u16, weight: u16, port: u16, target: String },
    Other(u16),
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, ttl) = (&self.name, self.ttl);
        match &self.data {
            Data::A(ip) => write!(f, "{name} {ttl} A {ip}"),
            Data::Aaaa(ip) => write!(f, "{name} {ttl} AAAA {ip}"),
            Data::Cname(target) => write!(f, "{name} {ttl} CNAME {target}"),
            Data::Srv { priority, weight, port, target } => {
                write!(f, "{name} {ttl} SRV {priority} {weight} {port} {target}")
            }
            Data::Other(code) => write!(f, "{name} {ttl} TYPE{code}"),
        }
    }
}

pub fn parse(message: &[u8]) -> Result<Response, String> {
    let mut reader = Reader { message, at: 12 };
    let header = message.get(..12).ok_or("shorter than a header")?;
    if header[2] & 0x80 == 0 {
        return Err("not a response".into());
    }
    let status = match header[3] & 0x0f {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    };
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    for _ in 0..count(4) {
        reader.name()?;
        reader.take(4)?;
    }
    let mut answers = Vec::new();
    for _ in 0..count(6) {
        let name = reader.name()?;
        let fixed = reader.take(10)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let length = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let start = reader.at;
        let data = match kind {
            1 => Data::A(<[u8; 4]>::try_from(reader.take(length)?).map_err(|_| "bad A record")?.into()),
            28 => Data::Aaaa(<[u8; 16]>::try_from(reader.take(length)?).map_err(|_| "bad AAAA record")?.into()),
            5 => Data::Cname(reader.name()?),
            33 => {
                let fields = reader.take(6)?;
                let field = |i: usize| u16::from_be_bytes([fields[i], fields[i + 1]]);
                let (priority, weight, port) = (field(0), field(2), field(4));
                Data::Srv { priority, weight, port, target: reader.name()? }
            }
            other => {
                reader.take(length)?;
                Data::Other(other)
            }
        };
        // Whatever a record's data held, the next record starts after its stated length.
        reader.at = start + length;
        answers.push(Record { name, ttl, data });
    }
    Ok(Response { status, answers })
}

struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = self.message.get(self.at..self.at + n).ok_or("truncated message")?;
        self.at += n;
        Ok(bytes)
    }

    /// A name at the reader, following compression pointers (each must point backwards, so none loops).
    fn name(&mut self) -> Result<String, String> {
        let mut labels = Vec::new();
        let mut at = self.at;
        let mut resume = None;
        loop {
            let length = *self.message.get(at).ok_or("truncated name")?;
            match length {
                0 => {
                    at += 1;
                    break;
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.message.get(at + 1).ok_or("truncated pointer")?;
                    let target = usize::from(u16::from_be_bytes([l & 0x3f, low]));
                    if target >= at {
                        return Err("a name pointer that does not point back".into());
                    }
                    resume.get_or_insert(at + 2);
                    at = target;
                }
                l => {
                    let label = self.message.get(at + 1..at + 1 + usize::from(l)).ok_or("truncated label")?;
                    labels.push(String::from_utf8_lossy(label).into_owned());
                    at += 1 + usize::from(l);
                }
            }
        }
        self.at = resume.unwrap_or(at);
        Ok(format!("{}.", labels.join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_one_question() {
        let q = query(0x1234, "shop.default.", RecordType::Srv);
        assert_eq!(&q[..12], &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..], b"\x04shop\x07default\x00\x00\x21\x00\x01");
    }

    #[test]
    fn answers_are_read_with_compressed_names() {
        let mut answer = query(7, "_http._tcp.shop", RecordType::Srv);
        answer[2] |= 0x80; // a response
        answer[7] = 2; // two answers
        // SRV 0 100 8080 a.shop (the target's "shop" points back into the question), then an A record.
        answer.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30, 0, 10]);
        answer.extend_from_slice(&[0, 0, 0, 100, 0x1f, 0x90, 1, b'a', 0xc0, 23]);
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 42, 0, 7]);
        let response = parse(&answer).unwrap();
        assert_eq!(response.status, "NOERROR");
        let lines: Vec<String> = response.answers.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["_http._tcp.shop. 30 SRV 0 100 8080 a.shop.", "_http._tcp.shop. 5 A 10.42.0.7"]);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert!(parse(&[0; 5]).is_err());
        let mut looping = query(1, "x", RecordType::A);
        looping[2] |= 0x80;
        looping[7] = 1;
        looping.extend_from_slice(&[0xc0, 40]); // points forward
        assert!(parse(&looping).is_err());
        let mut nx = query(1, "missing", RecordType::A);
        nx[2] |= 0x80;
        nx[3] = 3;
        assert_eq!(parse(&nx).unwrap().status, "NXDOMAIN");
    }
}
