//! Where a shim's own connections for a container may go: a wasm guest's outgoing HTTP leaves from the
//! agent, so the agent must apply what the pod's network would (its resolver, the cluster's addresses) and
//! what the pod allows beyond the cluster.

use std::net::IpAddr;
use std::sync::Arc;

/// What the node tells a shim about a container's outgoing connections.
#[derive(Clone)]
pub struct Egress {
    /// The pod's resolver, as its resolv.conf says.
    pub resolver: Resolver,
    /// Hosts outside the cluster the pod may reach (`skiff.dev/allowed-outbound-hosts`); none by default.
    pub allowed_hosts: Vec<AllowedHost>,
    /// Which addresses are the cluster's (pods', Services', nodes'): reachable without being allowed.
    pub cluster: Arc<dyn ClusterAddresses>,
}

impl Default for Egress {
    /// No resolver, no cluster, nothing allowed: every outgoing connection is refused.
    fn default() -> Self {
        Egress { resolver: Resolver::default(), allowed_hosts: Vec::new(), cluster: Arc::new(|_: IpAddr| false) }
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("resolver", &self.resolver).field("allowed_hosts", &self.allowed_hosts).finish()
    }
}

/// The node's live view of the cluster's addresses (it changes as nodes and Services come and go).
pub trait ClusterAddresses: Send + Sync {
    fn contains(&self, ip: IpAddr) -> bool;
}

impl<F: Fn(IpAddr) -> bool + Send + Sync> ClusterAddresses for F {
    fn contains(&self, ip: IpAddr) -> bool {
        self(ip)
    }
}

/// A stub resolver's configuration: resolv.conf's `nameserver`, `search` and `options ndots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Names with fewer dots than this are tried with the search domains before they are tried as they are.
    pub ndots: usize,
}

impl Default for Resolver {
    /// glibc's defaults: no nameserver, no search list, `ndots:1`.
    fn default() -> Self {
        Resolver { nameservers: Vec::new(), search: Vec::new(), ndots: 1 }
    }
}

impl Resolver {
    /// Reads a resolv.conf as glibc does: lines starting with `#` or `;` are comments, the last `search`
    /// line wins, `ndots` is capped at 15, what is not understood is skipped.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut resolver = Resolver::default();
        for line in text.lines().filter(|line| !line.starts_with(['#', ';'])) {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    resolver.nameservers.extend(words.next().and_then(|ip| ip.parse::<IpAddr>().ok()))
                }
                Some("search") => resolver.search = words.map(str::to_string).collect(),
                Some("options") => {
                    for option in words {
                        if let Some(ndots) = option.strip_prefix("ndots:").and_then(|n| n.parse::<usize>().ok()) {
                            resolver.ndots = ndots.min(15);
                        }
                    }
                }
                _ => {}
            }
        }
        resolver
    }

    /// The names to ask for, in order, for `name` as a guest wrote it (glibc's `res_search`): a name ending
    /// in a dot only as it is; one with at least `ndots` dots as it is first, then with each search domain;
    /// others with the search domains first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|domain| format!("{name}.{}", domain.trim_end_matches('.')));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// One allowed outbound host, in Spin's `allowed_outbound_hosts` form: `SCHEME://HOST[:PORT]`, where the
/// scheme is `http`, `https` or `*`; the host a name, an address, `*.DOMAIN` (the domain's subdomains) or `*`;
/// the port a number or `*`, and when left out the scheme's own (80 or 443).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<Scheme>,
    host: HostPattern,
    /// None: any port.
    port: Option<u16>,
    /// Without a port, `*://HOST` allows each scheme on its own port.
    default_ports: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.DOMAIN`: names below DOMAIN, not DOMAIN itself.
    Below(String),
    Name(String),
    Address(IpAddr),
}

/// Why an allowed-host entry cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AllowedHostError(String);

impl AllowedHost {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, AllowedHostError> {
        let invalid = |what: String| AllowedHostError(format!("{entry:?}: {what}"));
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| AllowedHostError(format!("{entry:?} has no scheme (write http://, https:// or *://)")))?;
        let scheme = match scheme {
            "*" => None,
            other => {
                Some(Scheme::parse(other).ok_or_else(|| invalid(format!("scheme {other:?} is not http or https")))?)
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(invalid("only a scheme, a host and a port are allowed, not a path".into()));
        }
        let (host, port) = split_port(authority).ok_or_else(|| invalid("invalid port".into()))?;
        let (port, default_ports) = match port {
            Some("*") => (None, false),
            Some(number) => {
                let port = number.parse::<u16>().ok().filter(|p| *p > 0);
                (Some(port.ok_or_else(|| invalid(format!("invalid port {number:?}")))?), false)
            }
            None => (scheme.map(Scheme::default_port), true),
        };
        let host = host.to_ascii_lowercase();
        let bad_host = || invalid(format!("invalid host {host:?} (a name, an address, *.DOMAIN or *)"));
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(ip) = parse_address(&host) {
            HostPattern::Address(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            let domain = domain.trim_end_matches('.');
            if domain.is_empty() || domain.contains(['*', '[', ']', ':']) {
                return Err(bad_host());
            }
            HostPattern::Below(domain.to_string())
        } else {
            let name = host.trim_end_matches('.');
            if name.is_empty() || name.contains(['*', '[', ']', ':']) {
                return Err(bad_host());
            }
            HostPattern::Name(name.to_string())
        };
        Ok(AllowedHost { scheme, host, port, default_ports })
    }

    /// Parses a list of entries separated by commas or white space, as an annotation holds them.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, AllowedHostError> {
        list.split([',', ' ', '\n', '\t']).filter(|entry| !entry.is_empty()).map(Self::parse).collect()
    }

    /// Whether a request with `scheme` (`http` or `https`) to `host` (a name or an address, IPv6 in brackets
    /// or not) on `port` is allowed by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let Some(scheme) = Scheme::parse(scheme) else { return false };
        if self.scheme.is_some_and(|allowed| allowed != scheme) {
            return false;
        }
        let port_allowed = match (self.port, self.default_ports) {
            (_, true) if self.scheme.is_none() => port == scheme.default_port(),
            (Some(allowed), _) => port == allowed,
            (None, _) => true,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_allowed = match &self.host {
            HostPattern::Any => true,
            HostPattern::Below(domain) => host.strip_suffix(domain.as_str()).is_some_and(|name| name.ends_with('.')),
            HostPattern::Name(name) => *name == host,
            HostPattern::Address(ip) => parse_address(&host) == Some(*ip),
        };
        port_allowed && host_allowed
    }
}

/// An address, IPv6 with or without brackets.
fn parse_address(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// `host` and its port, if any: `[v6]:port`, `name:port`, or a bare host (an unbracketed IPv6 address has
/// no port). None for a port that is empty.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let port = authority[end + 1..].strip_prefix(':');
        return (port != Some("")).then_some((&authority[..=end], port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (!port.is_empty()).then_some((host, Some(port))),
        _ => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_servers_search_and_ndots() {
        let text = "nameserver 10.43.0.10\nnameserver bogus\n# search x\nsearch a.svc b\noptions ndots:5 edns0\n";
        let resolver = Resolver::from_resolv_conf(text);
        assert_eq!(resolver.nameservers, ["10.43.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(resolver.search, ["a.svc", "b"]);
        assert_eq!(resolver.ndots, 5);
        assert_eq!(Resolver::from_resolv_conf("options ndots:40").ndots, 15);
    }

    #[test]
    fn names_are_searched_as_glibc_does() {
        let resolver = Resolver {
            nameservers: vec![],
            search: vec!["ns.svc.cluster.local".into(), "cluster.local.".into()],
            ndots: 2,
        };
        assert_eq!(resolver.candidates("shop"), ["shop.ns.svc.cluster.local", "shop.cluster.local", "shop"]);
        assert_eq!(
            resolver.candidates("www.example.com"),
            ["www.example.com", "www.example.com.ns.svc.cluster.local", "www.example.com.cluster.local"]
        );
        assert_eq!(resolver.candidates("shop.ns.svc.cluster.local."), ["shop.ns.svc.cluster.local"]);
    }

    #[test]
    fn allowed_hosts_follow_spins_rules() {
        let allowed =
            AllowedHost::parse_list("https://api.example.com, http://*.test:8080 *://any.org\n*://*:*").unwrap();
        let [exact, below, any_scheme, anything] = allowed.as_slice() else { panic!("{allowed:?}") };
        assert!(exact.allows("https", "API.example.com.", 443));
        assert!(!exact.allows("http", "api.example.com", 80), "the scheme must match");
        assert!(!exact.allows("https", "api.example.com", 8443), "the scheme's port only");
        assert!(below.allows("http", "www.test", 8080));
        assert!(!below.allows("http", "test", 8080), "*.DOMAIN is below the domain");
        assert!(!below.allows("http", "www.nottest", 8080));
        assert!(any_scheme.allows("http", "any.org", 80) && any_scheme.allows("https", "any.org", 443));
        assert!(!any_scheme.allows("http", "any.org", 443), "each scheme on its own port");
        assert!(anything.allows("https", "10.0.0.1", 9999));
        let v6 = AllowedHost::parse("http://[2001:db8::1]:8080").unwrap();
        assert!(v6.allows("http", "2001:db8::1", 8080) && v6.allows("http", "[2001:DB8:0::1]", 8080));
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, error) in [
            ("example.com", "has no scheme"),
            ("ftp://example.com", "scheme \"ftp\" is not http or https"),
            ("http://example.com/path", "not a path"),
            ("http://example.com:http", "invalid port \"http\""),
            ("http://example.com:", "invalid port"),
            ("http://ex*ample.com", "invalid host"),
            ("http://*.", "invalid host"),
            ("http://*.*.example.com", "invalid host"),
        ] {
            let message = AllowedHost::parse(entry).unwrap_err().to_string();
            assert!(message.contains(error), "{entry}: {message}");
        }
    }
}
