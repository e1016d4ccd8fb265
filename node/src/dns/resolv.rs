//! A pod's `/etc/resolv.conf`, as the kubelet writes it for each `dnsPolicy`.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::DnsConfig;

/// The kubelet's limit: resolvers look at three nameservers at most.
const MAX_NAMESERVERS: usize = 3;

/// The nameservers a resolv.conf names.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    skiff_shim::Resolver::from_resolv_conf(text).nameservers
}

/// The values of every `keyword` line (`search a b` gives a and b).
fn directive<'a>(text: &'a str, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .map(|line| line.split(['#', ';']).next().unwrap_or_default())
        .filter_map(move |line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(keyword)).then_some(words)
        })
        .flatten()
}

/// The resolv.conf of `pod`: the cluster DNS with the namespace's search list and `ndots:5` for
/// `ClusterFirst` (the default, except for host-network pods) and `ClusterFirstWithHostNet`; the node's own
/// (`node_resolv_conf`) for `Default`, or when the node has no cluster DNS; only the pod's `dnsConfig` for
/// `None`. A `dnsConfig` adds its nameservers, searches and options to the first two.
pub fn pod_resolv_conf(pod: &Pod, cluster: Option<&DnsConfig>, node_resolv_conf: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut servers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    match (policy, cluster_first.then_some(cluster).flatten()) {
        ("None", _) => {}
        (_, Some(cluster)) => {
            let domain = cluster.domain.trim_end_matches('.');
            servers.push(cluster.cluster_dns.to_string());
            searches.extend([format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()]);
            searches.extend(directive(node_resolv_conf, "search").map(str::to_string));
            options.push("ndots:5".into());
        }
        _ => {
            servers.extend(nameservers(node_resolv_conf).iter().map(IpAddr::to_string));
            searches.extend(directive(node_resolv_conf, "search").map(str::to_string));
            options.extend(directive(node_resolv_conf, "options").map(str::to_string));
        }
    }
    if let Some(config) = spec.dns_config {
        servers.extend(config.nameservers.into_iter().flatten());
        searches.extend(config.searches.into_iter().flatten());
        for option in config.options.into_iter().flatten() {
            let Some(name) = option.name else { continue };
            // A pod's option replaces one of the same name.
            options.retain(|o| o.split(':').next() != Some(name.as_str()));
            options.push(match option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    servers.truncate(MAX_NAMESERVERS);
    let mut text = String::new();
    for server in &servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NODE: &str =
        "# made by hand\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\nsearch corp.example\noptions edns0\n";

    fn cluster() -> DnsConfig {
        DnsConfig {
            cluster_dns: "10.43.0.10".parse().unwrap(),
            domain: "cluster.local".into(),
            resolv_conf: "/x".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec})).unwrap()
    }

    #[test]
    fn cluster_first_names_the_cluster_dns_and_the_namespace() {
        let text = pod_resolv_conf(&pod(json!({"containers": []})), Some(&cluster()), NODE);
        assert_eq!(
            text,
            "nameserver 10.43.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_and_host_network_pods_get_the_nodes_resolvers() {
        let node = "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0\n";
        assert_eq!(pod_resolv_conf(&pod(json!({"dnsPolicy": "Default"})), Some(&cluster()), NODE), node);
        assert_eq!(pod_resolv_conf(&pod(json!({"hostNetwork": true})), Some(&cluster()), NODE), node);
        assert_eq!(pod_resolv_conf(&pod(json!({})), None, NODE), node, "no cluster DNS on the node");
        let with_host_net = pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert!(pod_resolv_conf(&with_host_net, Some(&cluster()), NODE).starts_with("nameserver 10.43.0.10\n"));
    }

    #[test]
    fn dns_config_is_added_and_none_takes_only_it() {
        let config = json!({"nameservers": ["192.0.2.1"], "searches": ["extra.example"],
                            "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]});
        let text = pod_resolv_conf(&pod(json!({"dnsConfig": config})), Some(&cluster()), NODE);
        assert!(text.starts_with("nameserver 10.43.0.10\nnameserver 192.0.2.1\n"), "{text}");
        assert!(text.contains(" corp.example extra.example\n") && text.ends_with("options ndots:2 rotate\n"), "{text}");
        let only = pod_resolv_conf(&pod(json!({"dnsPolicy": "None", "dnsConfig": config})), Some(&cluster()), NODE);
        assert_eq!(only, "nameserver 192.0.2.1\nsearch extra.example\noptions ndots:2 rotate\n");
    }

    #[test]
    fn nameservers_are_read_past_comments() {
        assert_eq!(nameservers(NODE), ["192.0.2.53".parse::<IpAddr>().unwrap(), "192.0.2.54".parse().unwrap()]);
    }
}
