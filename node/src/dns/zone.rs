//! The cluster's names, answered as CoreDNS's kubernetes plugin answers them, from the service proxy's
//! watch caches (never a list per query):
//!
//! - `SVC.NS.svc.DOMAIN`: A to the cluster IP; for a headless Service, A to each ready endpoint; for an
//!   ExternalName Service, a CNAME to its name.
//! - `ENDPOINT.SVC.NS.svc.DOMAIN`: a headless Service's endpoint, by its hostname or its dashed address.
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN`: SRV to the Service (or to each endpoint of a headless one), with
//!   the endpoints' A records as additional answers.
//! - `A-B-C-D.NS.pod.DOMAIN`: A to a.b.c.d (the plugin's `pods insecure` mode, Kubernetes' default).
//! - Anything else under the domain: NXDOMAIN, or no data (NOERROR, no answer) for a name that exists with
//!   another type; names outside it are the upstream resolvers'.

use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::proxy::{Caches, ServiceKey, Slice};

/// How long answers may be cached: CoreDNS's kubernetes plugin default.
pub const TTL: u32 = 5;

/// What a query gets.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The name exists; `answers` may be empty (no data of that type).
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NxDomain,
    /// Not the cluster's: ask the upstream resolvers.
    Forward,
}

fn found(answers: Vec<Record>) -> Outcome {
    Outcome::Found { answers, additionals: Vec::new() }
}

/// The zone's SOA, sent with negative answers so resolvers cache them for the TTL.
pub fn soa(domain: &Name) -> Record {
    let name = |prefix: &str| Name::from_ascii(prefix).and_then(|p| p.append_domain(domain)).unwrap_or_default();
    let soa = SOA::new(name("ns.dns"), name("hostmaster"), 1, 7200, 1800, 86400, TTL);
    Record::from_rdata(domain.clone(), TTL, RData::SOA(soa))
}

fn a(name: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))
}

/// Answers `name` (lowercase, fully qualified) of type `kind` under `domain`.
pub fn resolve(caches: &Caches, domain: &Name, name: &Name, kind: RecordType) -> Outcome {
    if !domain.zone_of(name) {
        return Outcome::Forward;
    }
    let labels: Vec<String> = name
        .iter()
        .take(name.num_labels().saturating_sub(domain.num_labels()) as usize)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    // Labels from the domain outward: `shop.default.svc` is ["svc", "default", "shop"].
    let labels: Vec<&str> = labels.iter().rev().map(String::as_str).collect();
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] => found(Vec::new()),
        ["pod", _namespace] => found(Vec::new()),
        ["pod", _namespace, dashed] => match dashed.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(ip) if kind == RecordType::A => found(vec![a(name, ip)]),
            Ok(_) => found(Vec::new()),
            Err(_) => Outcome::NxDomain,
        },
        ["svc", namespace] => {
            if caches.has_namespace(namespace) {
                found(Vec::new())
            } else {
                Outcome::NxDomain
            }
        }
        ["svc", namespace, service] => service_record(caches, name, namespace, service, kind),
        ["svc", namespace, service, endpoint] if !endpoint.starts_with('_') => {
            endpoint_record(caches, name, namespace, service, endpoint, kind)
        }
        ["svc", namespace, service, protocol, port] if port.starts_with('_') && protocol.starts_with('_') => {
            srv_records(caches, domain, name, namespace, service, &port[1..], &protocol[1..], kind)
        }
        _ => Outcome::NxDomain,
    }
}

/// The addresses of a headless Service's ready endpoints, each with its DNS name (hostname, else the
/// address dashed) and ports.
fn endpoints<'a>(caches: &'a Caches, key: &ServiceKey) -> impl Iterator<Item = (Ipv4Addr, String, &'a Slice)> {
    caches.slices(key).flat_map(|slice| {
        slice.endpoints.iter().filter(|e| e.ready).map(move |endpoint| {
            let label = match &endpoint.hostname {
                Some(hostname) => hostname.to_string(),
                None => endpoint.ip.to_string().replace('.', "-"),
            };
            (endpoint.ip, label, slice)
        })
    })
}

fn key(namespace: &str, service: &str) -> ServiceKey {
    ServiceKey { namespace: namespace.to_string(), name: service.to_string() }
}

fn service_record(caches: &Caches, name: &Name, namespace: &str, service: &str, kind: RecordType) -> Outcome {
    let key = key(namespace, service);
    let Some(found_service) = caches.service(&key) else { return Outcome::NxDomain };
    if let Some(external_name) = &found_service.external_name {
        let target = Name::from_ascii(format!("{external_name}.")).ok();
        return match target {
            Some(target) => found(vec![Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)))]),
            None => found(Vec::new()),
        };
    }
    if kind != RecordType::A {
        return found(Vec::new());
    }
    if found_service.is_headless() {
        let mut ips: Vec<Ipv4Addr> = endpoints(caches, &key).map(|(ip, _, _)| ip).collect();
        ips.sort();
        ips.dedup();
        return found(ips.into_iter().map(|ip| a(name, ip)).collect());
    }
    let ips = found_service.cluster_ips.iter().filter_map(|ip| match ip {
        std::net::IpAddr::V4(ip) => Some(*ip),
        std::net::IpAddr::V6(_) => None,
    });
    found(ips.map(|ip| a(name, ip)).collect())
}

fn endpoint_record(
    caches: &Caches,
    name: &Name,
    namespace: &str,
    service: &str,
    endpoint: &str,
    kind: RecordType,
) -> Outcome {
    let key = key(namespace, service);
    let ips: Vec<Ipv4Addr> =
        endpoints(caches, &key).filter(|(_, label, _)| label == endpoint).map(|(ip, _, _)| ip).collect();
    match (ips.is_empty(), kind) {
        (true, _) => Outcome::NxDomain,
        (false, RecordType::A) => found(ips.into_iter().map(|ip| a(name, ip)).collect()),
        (false, _) => found(Vec::new()),
    }
}

#[allow(clippy::too_many_arguments)]
fn srv_records(
    caches: &Caches,
    domain: &Name,
    name: &Name,
    namespace: &str,
    service: &str,
    port_name: &str,
    protocol: &str,
    kind: RecordType,
) -> Outcome {
    let key = key(namespace, service);
    let Some(found_service) = caches.service(&key) else { return Outcome::NxDomain };
    let protocol = protocol.to_ascii_lowercase();
    let Some(port) = found_service.ports.iter().find(|p| &*p.name == port_name && p.protocol.nft() == protocol) else {
        return Outcome::NxDomain;
    };
    if kind != RecordType::SRV {
        return found(Vec::new());
    }
    let service_name = Name::from_ascii(format!("{service}.{namespace}.svc")).and_then(|n| n.append_domain(domain));
    let Ok(service_name) = service_name else { return Outcome::NxDomain };
    if !found_service.is_headless() {
        let srv = SRV::new(0, 100, port.port, service_name);
        return found(vec![Record::from_rdata(name.clone(), TTL, RData::SRV(srv))]);
    }
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (ip, label, slice) in endpoints(caches, &key) {
        let slice_port = slice.ports.iter().find(|p| p.name == port_name);
        let Some(number) = slice_port.and_then(|p| p.port) else { continue };
        let Ok(target) = Name::from_ascii(&label).and_then(|l| l.append_domain(&service_name)) else { continue };
        answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, 100, number, target.clone()))));
        additionals.push(a(&target, ip));
    }
    Outcome::Found { answers, additionals }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn caches() -> Caches {
        let mut caches = Caches::default();
        let services = [
            json!({"metadata": {"name": "shop", "namespace": "default"},
                   "spec": {"clusterIP": "10.43.1.5", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"metadata": {"name": "db", "namespace": "default"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "out", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ];
        let slice = json!({"metadata": {"name": "db-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
            "endpoints": [{"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                          {"addresses": ["10.42.1.8"], "conditions": {"ready": true}},
                          {"addresses": ["10.42.1.9"], "conditions": {"ready": false}}]});
        for service in services {
            caches.insert_service(serde_json::from_value(service).unwrap());
        }
        caches.insert_slice(serde_json::from_value(slice).unwrap());
        caches
    }

    fn ask(name: &str, kind: RecordType) -> Outcome {
        let domain = Name::from_ascii("cluster.local.").unwrap();
        resolve(&caches(), &domain, &Name::from_ascii(name).unwrap(), kind)
    }

    fn addresses(outcome: Outcome) -> Vec<String> {
        let Outcome::Found { answers, .. } = outcome else { panic!("not found: {outcome:?}") };
        answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_or_their_ready_endpoints() {
        assert_eq!(addresses(ask("shop.default.svc.cluster.local.", RecordType::A)), ["10.43.1.5"]);
        assert_eq!(addresses(ask("db.default.svc.cluster.local.", RecordType::A)), ["10.42.0.7", "10.42.1.8"]);
        assert_eq!(addresses(ask("db-0.db.default.svc.cluster.local.", RecordType::A)), ["10.42.0.7"]);
        assert_eq!(addresses(ask("10-42-1-8.db.default.svc.cluster.local.", RecordType::A)), ["10.42.1.8"]);
        assert_eq!(addresses(ask("out.default.svc.cluster.local.", RecordType::A)), ["example.org."]);
        assert_eq!(addresses(ask("shop.default.svc.cluster.local.", RecordType::AAAA)), Vec::<String>::new());
    }

    #[test]
    fn srv_records_name_the_service_or_each_endpoint() {
        assert_eq!(
            addresses(ask("_http._tcp.shop.default.svc.cluster.local.", RecordType::SRV)),
            ["0 100 80 shop.default.svc.cluster.local."]
        );
        let Outcome::Found { answers, additionals } = ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV)
        else {
            panic!("no SRV")
        };
        assert_eq!(answers.len(), 2);
        assert_eq!(additionals.len(), 2);
        assert_eq!(ask("_nope._tcp.shop.default.svc.cluster.local.", RecordType::SRV), Outcome::NxDomain);
    }

    #[test]
    fn pods_missing_names_and_outside_names() {
        assert_eq!(addresses(ask("10-42-0-9.default.pod.cluster.local.", RecordType::A)), ["10.42.0.9"]);
        assert_eq!(ask("missing.default.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(ask("shop.default.svc.cluster.local.default.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(ask("nowhere.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(ask("example.org.", RecordType::A), Outcome::Forward);
    }
}
