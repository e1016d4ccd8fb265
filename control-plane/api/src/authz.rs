//! Who is asking and for what: the user an authenticator found, a request's authorization attributes (as
//! kube-apiserver's `authorizer.Attributes`), an authorizer's decision, and how one RBAC `PolicyRule`
//! matches a request. The authorizers themselves are [`crate::rbac`] and [`crate::node_authorizer`].

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;

/// The group every authenticated identity is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group whose members may do anything, checked before any other authorizer (kube-apiserver's
/// privileged group).
pub const MASTERS: &str = "system:masters";
/// The group of node identities (`system:node:NAME`).
pub const NODES: &str = "system:nodes";
/// The prefix of a node's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group of join-token holders, who may only ask for a node certificate.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// How far the cluster's signer sets a certificate's `notBefore` back from its issue (Kubernetes' 5
/// minutes), so a client whose clock is behind can use it at once: the issue time is `notBefore` plus this,
/// which is how the API server tells a node certificate issued before the node was revoked.
pub const CERTIFICATE_BACKDATE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// An authenticated identity, as `user.Info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name of a node identity (`system:node:NAME` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.name.strip_prefix(NODE_USER_PREFIX).filter(|name| !name.is_empty() && self.in_group(NODES))
    }
}

/// What a request asks, as the authorizers see it. A resource request names group, resource, subresource,
/// namespace and name; any other request is a non-resource request for `path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or for
    /// subresources and special verbs `impersonate`, `escalate`, `bind`, `approve`, `sign`, ...
    pub verb: String,
    pub resource_request: bool,
    /// The request path (for non-resource requests).
    pub path: String,
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    /// The object's name; empty for collections (and for list and watch without a `metadata.name`
    /// field selector).
    pub name: String,
}

/// An authorizer's answer. `NoOpinion` passes the request to the next authorizer; when none allows it,
/// it is denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied with a reason the 403 message carries after the standard wording (may be empty).
    Deny(String),
    NoOpinion,
}

/// kube-apiserver's wording of a denial (`forbiddenMessage`), without the "... is forbidden: " prefix.
pub fn forbidden_message(attributes: &Attributes) -> String {
    let user = &attributes.user.name;
    let verb = &attributes.verb;
    if !attributes.resource_request {
        return format!("User {user:?} cannot {verb} path {:?}", attributes.path);
    }
    let resource = match attributes.subresource.as_str() {
        "" => attributes.resource.clone(),
        sub => format!("{}/{sub}", attributes.resource),
    };
    let group = &attributes.api_group;
    match attributes.namespace.as_str() {
        "" => format!("User {user:?} cannot {verb} resource {resource:?} in API group {group:?} at the cluster scope"),
        ns => {
            format!("User {user:?} cannot {verb} resource {resource:?} in API group {group:?} in the namespace {ns:?}")
        }
    }
}

/// Whether `rule` allows the request, as RBAC's `RuleAllows`: verbs, then for resource requests API
/// groups, resources (`resource/subresource`, `*`, `*/subresource`) and resource names, for others
/// non-resource URLs (a trailing `*` matches any suffix).
pub fn rule_allows(rule: &PolicyRule, attributes: &Attributes) -> bool {
    if !matches_any(&rule.verbs, &attributes.verb) {
        return false;
    }
    if attributes.resource_request {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        let names = rule.resource_names.as_deref().unwrap_or_default();
        matches_any(groups, &attributes.api_group)
            && resource_matches(resources, &attributes.resource, &attributes.subresource)
            && (names.is_empty() || names.iter().any(|n| n == &attributes.name))
    } else {
        // Kubernetes trims every trailing `*` (`TrimRight`), as its escalation check does.
        rule.non_resource_urls.as_deref().unwrap_or_default().iter().any(|url| {
            url == &attributes.path || (url.ends_with('*') && attributes.path.starts_with(url.trim_end_matches('*')))
        })
    }
}

fn matches_any(allowed: &[String], wanted: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == wanted)
}

fn resource_matches(allowed: &[String], resource: &str, subresource: &str) -> bool {
    allowed.iter().any(|a| {
        if subresource.is_empty() {
            a == "*" || a == resource
        } else {
            a == "*" || a.split_once('/').is_some_and(|(r, s)| (r == resource || r == "*") && s == subresource)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: strings(groups),
            resources: strings(resources),
            resource_names: if names.is_empty() { None } else { strings(names) },
            non_resource_urls: None,
        }
    }

    fn request(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "dev".into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn rules_match_as_rbac_matches_them() {
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(rule_allows(&pods, &request("get", "", "pods", "", "a")));
        assert!(!rule_allows(&pods, &request("delete", "", "pods", "", "a")));
        assert!(!rule_allows(&pods, &request("get", "apps", "pods", "", "a")));
        assert!(!rule_allows(&pods, &request("get", "", "pods", "log", "a")), "a subresource needs its own rule");
        let logs = rule(&["get"], &[""], &["*/log"], &[]);
        assert!(rule_allows(&logs, &request("get", "", "pods", "log", "a")));
        let named = rule(&["get"], &["*"], &["configmaps"], &["only"]);
        assert!(rule_allows(&named, &request("get", "", "configmaps", "", "only")));
        assert!(!rule_allows(&named, &request("get", "", "configmaps", "", "other")));
        assert!(!rule_allows(&named, &request("list", "", "configmaps", "", "")));
        let everything = rule(&["*"], &["*"], &["*"], &[]);
        assert!(rule_allows(&everything, &request("escalate", "rbac.authorization.k8s.io", "roles", "", "")));
        assert!(rule_allows(&everything, &request("update", "", "pods", "status", "a")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let rule = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/api/*".into()]),
            ..PolicyRule::default()
        };
        let path = |p: &str| Attributes { verb: "get".into(), path: p.into(), ..Attributes::default() };
        assert!(rule_allows(&rule, &path("/healthz")));
        assert!(rule_allows(&rule, &path("/api/v1")));
        let stars = PolicyRule { non_resource_urls: Some(vec!["/logs**".into()]), ..rule.clone() };
        assert!(rule_allows(&stars, &path("/logs/x")));
        assert!(!rule_allows(&rule, &path("/healthz/ping")));
        assert!(!rule_allows(&rule, &Attributes { verb: "post".into(), ..path("/healthz") }));
    }

    #[test]
    fn denials_are_worded_as_kubernetes_words_them() {
        let mut attributes = request("list", "", "secrets", "", "");
        attributes.user.name = "alice".into();
        attributes.namespace = "prod".into();
        assert_eq!(
            forbidden_message(&attributes),
            r#"User "alice" cannot list resource "secrets" in API group "" in the namespace "prod""#
        );
        attributes.namespace.clear();
        attributes.resource = "nodes".into();
        attributes.subresource = "status".into();
        assert_eq!(
            forbidden_message(&attributes),
            r#"User "alice" cannot list resource "nodes/status" in API group "" at the cluster scope"#
        );
        let path = Attributes { verb: "get".into(), resource_request: false, path: "/metrics".into(), ..attributes };
        assert_eq!(forbidden_message(&path), r#"User "alice" cannot get path "/metrics""#);
    }
}
