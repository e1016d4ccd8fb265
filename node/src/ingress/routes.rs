//! Where a request goes, computed purely: the route table of every Ingress the node serves ([`RouteTable`],
//! matched by host then path as the Ingress API defines it), and a backend's ready endpoints from the
//! service proxy's caches of Services and EndpointSlices ([`endpoints`]).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use crate::nft::Protocol;
use crate::proxy::{Caches, ServiceKey};

/// A Service port requests are sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: ServiceKey,
    pub port: BackendPort,
}

/// `backend.service.port`: the Service's port by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendPort {
    Number(u16),
    Name(String),
}

/// How a rule's path matches, ordered so that an Exact path beats a Prefix of the same length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    /// `Prefix`, and `ImplementationSpecific`, which Skiff treats as Prefix.
    Prefix,
    Exact,
}

#[derive(Debug)]
struct PathRule {
    kind: Match,
    /// For Exact, the path; for Prefix, the path without trailing slashes (`""` for `/`).
    path: String,
    backend: Arc<Backend>,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            Match::Exact => self.path == path,
            // Element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.
            Match::Prefix => path.strip_prefix(&self.path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }

    /// The longest matching path wins; at equal length Exact beats Prefix.
    fn rank(&self) -> (usize, Match) {
        (self.path.len(), self.kind)
    }
}

/// Every Ingress the node serves, merged: rules of one host from several Ingresses share that host.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Rules by exact host.
    hosts: HashMap<String, Vec<PathRule>>,
    /// Rules of `*.example.com` hosts, by what follows the `*.`.
    wildcards: HashMap<String, Vec<PathRule>>,
    /// Rules without a host: any host.
    any_host: Vec<PathRule>,
    /// For requests no rule takes: the oldest Ingress's `defaultBackend`.
    default_backend: Option<Arc<Backend>>,
}

impl RouteTable {
    /// The table of `ingresses`, which are the node's (of its classes) and oldest first: where two name
    /// the same host and path, the older one's backend is kept, as ingress-nginx does.
    pub fn build<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> Self {
        let mut table = RouteTable::default();
        for ingress in ingresses {
            let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = ingress.spec.as_ref() else { continue };
            if table.default_backend.is_none() {
                table.default_backend = spec.default_backend.as_ref().and_then(|b| backend(namespace, b)).map(Arc::new);
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.as_deref().unwrap_or_default().to_ascii_lowercase();
                let rules = if host.is_empty() {
                    &mut table.any_host
                } else if let Some(domain) = host.strip_prefix("*.") {
                    table.wildcards.entry(domain.to_string()).or_default()
                } else {
                    table.hosts.entry(host).or_default()
                };
                for path in rule.http.iter().flat_map(|http| &http.paths) {
                    let Some(backend) = backend(namespace, &path.backend) else { continue };
                    let raw = path.path.as_deref().unwrap_or_default();
                    let (kind, path) = match path.path_type.as_str() {
                        "Exact" => (Match::Exact, raw.to_string()),
                        _ => (Match::Prefix, raw.trim_end_matches('/').to_string()),
                    };
                    if !rules.iter().any(|have| have.kind == kind && have.path == path) {
                        rules.push(PathRule { kind, path, backend: Arc::new(backend) });
                    }
                }
            }
        }
        table
    }

    /// The backend of a request for `host` (a Host header or URI authority: any port is ignored) and
    /// `path`: the rules of the exact host, else of a wildcard host matching one label, else of rules
    /// without a host; then the longest matching path; else the default backend. None: 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = strip_port(host).to_ascii_lowercase();
        let wildcard = || {
            let (label, domain) = host.split_once('.')?;
            (!label.is_empty()).then(|| self.wildcards.get(domain)).flatten()
        };
        let rules = self.hosts.get(&host).or_else(wildcard).unwrap_or(&self.any_host);
        let mut best: Option<&PathRule> = None;
        for rule in rules.iter().filter(|rule| rule.matches(path)) {
            if best.is_none_or(|best| rule.rank() > best.rank()) {
                best = Some(rule);
            }
        }
        best.map(|rule| rule.backend.as_ref()).or(self.default_backend.as_deref())
    }
}

/// A host without its port: `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    }
}

/// A Service backend (resource backends name objects Skiff cannot send requests to).
fn backend(namespace: &str, backend: &IngressBackend) -> Option<Backend> {
    let service = backend.service.as_ref()?;
    let port = service.port.as_ref()?;
    let port = match (port.number.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0), port.name.as_deref()) {
        (Some(number), _) => BackendPort::Number(number),
        (None, Some(name)) if !name.is_empty() => BackendPort::Name(name.to_string()),
        _ => return None,
    };
    Some(Backend { service: ServiceKey { namespace: namespace.to_string(), name: service.name.clone() }, port })
}

/// Where `backend`'s requests may go: the ready endpoints of the Service port it names, on the target port
/// the EndpointSlices give for that port's name, as kube-proxy resolves it; if none is ready, the endpoints
/// still serving while they terminate (kube-proxy's fallback). Empty: 503.
pub fn endpoints(caches: &Caches, backend: &Backend) -> Vec<SocketAddrV4> {
    let Some(service) = caches.service(&backend.service) else { return Vec::new() };
    let port = service.ports.iter().filter(|port| port.protocol == Protocol::Tcp).find(|port| match &backend.port {
        BackendPort::Number(number) => port.port == *number,
        BackendPort::Name(name) => &*port.name == name.as_str(),
    });
    let Some(port) = port else { return Vec::new() };
    let (mut ready, mut terminating) = (Vec::new(), Vec::new());
    for slice in caches.slices(&backend.service) {
        let target = slice.ports.iter().find(|p| *p.name == *port.name && p.protocol == Some(Protocol::Tcp));
        let Some(target) = target.and_then(|p| p.port) else { continue };
        for endpoint in &slice.endpoints {
            let address = SocketAddrV4::new(endpoint.ip, target);
            if endpoint.ready && !endpoint.terminating {
                ready.push(address);
            } else if endpoint.serving && endpoint.terminating {
                terminating.push(address);
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::{Value, json};

    use super::*;

    fn ingress(name: &str, spec: Value) -> Ingress {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"}, "spec": spec})).unwrap()
    }

    fn path(path: &str, kind: &str, service: &str) -> Value {
        json!({"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    fn rule(host: &str, paths: Vec<Value>) -> Value {
        json!({"host": host, "http": {"paths": paths}})
    }

    fn routed(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        table.route(host, path).map(|backend| backend.service.name.clone())
    }

    #[test]
    fn prefixes_match_element_wise_and_the_longest_wins_with_exact_before_prefix() {
        let table = RouteTable::build(&[ingress(
            "shop",
            json!({"rules": [rule("shop.example.com", vec![
                path("/", "Prefix", "root"),
                path("/foo/", "Prefix", "foo"),
                path("/foo", "Exact", "foo-exact"),
                path("/foo/bar", "ImplementationSpecific", "bar"),
            ])]}),
        )]);
        let shop = |path: &str| routed(&table, "shop.example.com", path);
        assert_eq!(shop("/foo").as_deref(), Some("foo-exact"));
        assert_eq!(shop("/foo/").as_deref(), Some("foo"));
        assert_eq!(shop("/foo/baz").as_deref(), Some("foo"));
        assert_eq!(shop("/foobar").as_deref(), Some("root"), "not an element-wise prefix");
        assert_eq!(shop("/foo/bar/baz").as_deref(), Some("bar"));
        assert_eq!(shop("/").as_deref(), Some("root"));
    }

    #[test]
    fn hosts_match_exactly_then_by_one_wildcard_label_then_rules_without_a_host() {
        let table = RouteTable::build(&[
            ingress(
                "a",
                json!({"rules": [
                    rule("shop.example.com", vec![path("/", "Prefix", "shop")]),
                    rule("*.example.com", vec![path("/", "Prefix", "wild")]),
                ]}),
            ),
            ingress("b", json!({"rules": [rule("", vec![path("/status", "Exact", "any")])]})),
        ]);
        assert_eq!(routed(&table, "SHOP.example.com:8443", "/x").as_deref(), Some("shop"));
        assert_eq!(routed(&table, "blog.example.com", "/x").as_deref(), Some("wild"));
        assert_eq!(routed(&table, "a.blog.example.com", "/status").as_deref(), Some("any"), "one label only");
        assert_eq!(routed(&table, "example.com", "/status").as_deref(), Some("any"));
        assert_eq!(routed(&table, "unknown.test", "/x"), None);
        assert_eq!(routed(&table, "blog.example.com", "/status").as_deref(), Some("wild"));
    }

    #[test]
    fn the_older_ingress_keeps_a_contested_path_and_the_default_backend_takes_the_rest() {
        let table = RouteTable::build(&[
            ingress(
                "old",
                json!({"rules": [rule("shop.example.com", vec![path("/api", "Prefix", "old")])],
                       "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}}}),
            ),
            ingress(
                "new",
                json!({"rules": [rule("shop.example.com", vec![path("/api/", "Prefix", "new"), path("/web", "Prefix", "web")])],
                       "defaultBackend": {"service": {"name": "later", "port": {"number": 80}}}}),
            ),
        ]);
        assert_eq!(routed(&table, "shop.example.com", "/api/v1").as_deref(), Some("old"));
        assert_eq!(routed(&table, "shop.example.com", "/web").as_deref(), Some("web"), "rules of a host merge");
        let fallback = table.route("nowhere.test", "/").unwrap();
        assert_eq!(
            fallback,
            &Backend {
                service: ServiceKey { namespace: "shop".into(), name: "fallback".into() },
                port: BackendPort::Name("http".into())
            }
        );
        assert_eq!(routed(&table, "shop.example.com", "/other").as_deref(), Some("fallback"));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
    }

    fn caches() -> Caches {
        let mut caches = Caches::default();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "admin", "port": 9000},
            ]},
        }))
        .unwrap();
        caches.insert_service(service);
        let slice = |name: &str, endpoints: Value| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))
            .unwrap()
        };
        caches.insert_slice(slice(
            "web-a",
            json!([
                {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        ));
        caches.insert_slice(slice("web-b", json!([{"addresses": ["10.42.1.3"], "conditions": {"ready": true}}])));
        caches
    }

    fn backend(name: &str, port: BackendPort) -> Backend {
        Backend { service: ServiceKey { namespace: "shop".into(), name: name.into() }, port }
    }

    #[test]
    fn a_backend_resolves_to_ready_endpoints_on_the_target_port_of_its_service_port() {
        let caches = caches();
        let addresses = |port| endpoints(&caches, &backend("web", port));
        let http = ["10.42.0.7:8080".parse().unwrap(), "10.42.1.3:8080".parse().unwrap()];
        assert_eq!(addresses(BackendPort::Number(80)), http);
        assert_eq!(addresses(BackendPort::Name("http".into())), http);
        let admin: Vec<SocketAddrV4> = vec!["10.42.0.7:9090".parse().unwrap(), "10.42.1.3:9090".parse().unwrap()];
        assert_eq!(addresses(BackendPort::Number(9000)), admin);
        assert!(addresses(BackendPort::Number(8080)).is_empty(), "a target port is no Service port");
        assert!(endpoints(&caches, &backend("missing", BackendPort::Number(80))).is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mut caches = caches();
        let slice = |name: &str, endpoint: Value| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [endpoint],
            }))
            .unwrap()
        };
        let web = |caches: &Caches| endpoints(caches, &backend("web", BackendPort::Number(80)));
        caches.insert_slice(slice("web-b", json!({"addresses": ["10.42.1.3"], "conditions": {"ready": false}})));
        caches.insert_slice(slice(
            "web-a",
            json!({"addresses": ["10.42.0.8"], "conditions": {"ready": false, "serving": true, "terminating": true}}),
        ));
        assert_eq!(web(&caches), ["10.42.0.8:8080".parse::<SocketAddrV4>().unwrap()]);
        caches.insert_slice(slice("web-a", json!({"addresses": ["10.42.0.8"], "conditions": {"ready": false}})));
        assert!(web(&caches).is_empty(), "no endpoint to send to: 503");
    }
}
