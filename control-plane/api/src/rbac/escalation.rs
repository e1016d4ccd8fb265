//! Escalation prevention: a user may write a role or a binding only with rules they hold themselves
//! (Kubernetes' `validation.Covers` and `ConfirmNoEscalation`), unless they may `escalate` or `bind`, which
//! the API server checks before asking here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::list;
use crate::authz::UserInfo;

/// Whether the `owner` rules allow everything the `requested` rules do. The requested rules are broken into
/// atomic rules (one verb on one API group, resource and resource name, or one verb on one non-resource
/// URL), and each must be within a single owner rule; the error lists the atomic rules none is.
///
/// Covering is by the rules' text, as in Kubernetes: an owner's `*` covers anything, `*/scale` covers every
/// `R/scale`, `/logs/*` covers `/logs/x`, and a rule without resource names covers any name.
pub fn covers(owner: &[PolicyRule], requested: &[PolicyRule]) -> Result<(), Vec<PolicyRule>> {
    let missing: Vec<PolicyRule> = requested
        .iter()
        .flat_map(atomic_rules)
        .filter(|atom| !owner.iter().any(|rule| rule_covers(rule, atom)))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(missing) }
}

/// The message of the 403 that refuses an escalation (after "... is forbidden: "), in Kubernetes' words:
/// the user, its groups and the missing rules, rules differing only in their verbs merged, one per line in
/// sorted order.
pub fn escalation_message(user: &UserInfo, missing: &[PolicyRule]) -> String {
    let lines: BTreeSet<String> = compact(missing).iter().map(compact_string).collect();
    format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        go_quoted(&user.groups),
        lines.into_iter().collect::<Vec<_>>().join("\n")
    )
}

/// One rule per verb and API group, resource and name, then one per verb and non-resource URL (Kubernetes'
/// `BreakdownRule`). A rule's groups without resources, or resources without groups, give nothing.
fn atomic_rules(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| Some(vec![s.clone()]);
    let names = list(&rule.resource_names);
    let mut atoms = Vec::new();
    for group in list(&rule.api_groups) {
        for resource in list(&rule.resources) {
            for verb in &rule.verbs {
                let atom = |resource_names| PolicyRule {
                    api_groups: one(group),
                    resources: one(resource),
                    verbs: vec![verb.clone()],
                    resource_names,
                    non_resource_urls: None,
                };
                if names.is_empty() {
                    atoms.push(atom(None));
                } else {
                    atoms.extend(names.iter().map(|name| atom(one(name))));
                }
            }
        }
    }
    for url in list(&rule.non_resource_urls) {
        for verb in &rule.verbs {
            atoms.push(PolicyRule { verbs: vec![verb.clone()], non_resource_urls: one(url), ..PolicyRule::default() });
        }
    }
    atoms
}

/// Whether one owner rule covers an atomic rule (Kubernetes' `ruleCovers`).
fn rule_covers(owner: &PolicyRule, atom: &PolicyRule) -> bool {
    let has = |set: &[String], item: &str| set.iter().any(|s| s == item);
    let has_all = |set: &[String], items: &[String]| items.iter().all(|item| has(set, item));
    let (groups, resources, names) = (list(&owner.api_groups), list(&owner.resources), list(&owner.resource_names));
    let verbs_ok = has(&owner.verbs, "*") || has_all(&owner.verbs, &atom.verbs);
    let groups_ok = has(groups, "*") || has_all(groups, list(&atom.api_groups));
    let resources_ok = has(resources, "*")
        || list(&atom.resources).iter().all(|resource| {
            has(resources, resource)
                || resource.split_once('/').is_some_and(|(_, subresource)| has(resources, &format!("*/{subresource}")))
        });
    let urls_ok = list(&atom.non_resource_urls).iter().all(|path| {
        list(&owner.non_resource_urls)
            .iter()
            .any(|url| url == path || (url.ends_with('*') && path.starts_with(url.trim_end_matches('*'))))
    });
    // An owner limited to some names covers only those names, never "any name".
    let atom_names = list(&atom.resource_names);
    let names_ok = names.is_empty() || (!atom_names.is_empty() && has_all(names, atom_names));
    verbs_ok && groups_ok && resources_ok && names_ok && urls_ok
}

/// Merges rules on one API group and one resource, and nothing else, into one rule with all their verbs
/// (Kubernetes' `CompactRules`), so a missing `get`, `list` and `watch` on pods reads as one line.
fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut compacted = Vec::new();
    let mut simple: BTreeMap<(&str, &str), PolicyRule> = BTreeMap::new();
    for rule in rules {
        let (groups, resources) = (list(&rule.api_groups), list(&rule.resources));
        let plain = list(&rule.resource_names).is_empty() && list(&rule.non_resource_urls).is_empty();
        match (groups, resources) {
            ([group], [resource]) if plain => {
                let merged =
                    simple.entry((group, resource)).or_insert_with(|| PolicyRule { verbs: vec![], ..rule.clone() });
                for verb in &rule.verbs {
                    if !merged.verbs.contains(verb) {
                        merged.verbs.push(verb.clone());
                    }
                }
            }
            _ => compacted.push(rule.clone()),
        }
    }
    compacted.extend(simple.into_values());
    compacted
}

/// A rule as the escalation message shows it (Kubernetes' `CompactString`): only the lists it has.
fn compact_string(rule: &PolicyRule) -> String {
    let fields = [
        ("APIGroups", list(&rule.api_groups)),
        ("Resources", list(&rule.resources)),
        ("NonResourceURLs", list(&rule.non_resource_urls)),
        ("ResourceNames", list(&rule.resource_names)),
        ("Verbs", rule.verbs.as_slice()),
    ];
    let parts: Vec<String> = fields
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(field, values)| format!("{field}:{}", go_quoted(values)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// A list of strings as Go's `%q` prints a `[]string`: `["a" "b"]`. Rust's quoting equals Go's for every
/// printable name; the two differ only in how they escape control characters.
fn go_quoted(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::tests::{rule, strings};

    fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule { verbs: strings(verbs), non_resource_urls: Some(strings(urls)), ..PolicyRule::default() }
    }

    fn named(mut rule: PolicyRule, names: &[&str]) -> PolicyRule {
        rule.resource_names = Some(strings(names));
        rule
    }

    #[test]
    fn owners_cover_what_they_hold() {
        let everything = vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])];
        let cases: Vec<(&str, Vec<PolicyRule>, Vec<PolicyRule>, bool)> = vec![
            (
                "cluster-admin covers anything",
                everything.clone(),
                vec![rule(&["escalate"], &["rbac.authorization.k8s.io"], &["roles"]), urls(&["get"], &["/metrics"])],
                true,
            ),
            (
                "same rule",
                vec![rule(&["get", "list"], &[""], &["pods"])],
                vec![rule(&["list", "get"], &[""], &["pods"])],
                true,
            ),
            (
                "split across owner rules",
                vec![rule(&["get"], &[""], &["pods"]), rule(&["list"], &[""], &["pods"])],
                vec![rule(&["get", "list"], &[""], &["pods"])],
                true,
            ),
            (
                "another verb",
                vec![rule(&["get"], &[""], &["pods"])],
                vec![rule(&["get", "delete"], &[""], &["pods"])],
                false,
            ),
            (
                "another group",
                vec![rule(&["get"], &[""], &["deployments"])],
                vec![rule(&["get"], &["apps"], &["deployments"])],
                false,
            ),
            (
                "a subresource needs its own rule",
                vec![rule(&["get"], &[""], &["pods"])],
                vec![rule(&["get"], &[""], &["pods/log"])],
                false,
            ),
            (
                "*/subresource",
                vec![rule(&["get"], &[""], &["*/scale"])],
                vec![rule(&["get"], &[""], &["deployments/scale", "replicasets/scale"])],
                true,
            ),
            (
                "any name covers a name",
                vec![rule(&["get"], &[""], &["secrets"])],
                vec![named(rule(&["get"], &[""], &["secrets"]), &["a"])],
                true,
            ),
            (
                "a name does not cover any name",
                vec![named(rule(&["get"], &[""], &["secrets"]), &["a"])],
                vec![rule(&["get"], &[""], &["secrets"])],
                false,
            ),
            (
                "names within names",
                vec![named(rule(&["get"], &[""], &["secrets"]), &["a", "b"])],
                vec![named(rule(&["get"], &[""], &["secrets"]), &["b"])],
                true,
            ),
            (
                "a resource rule does not cover a path",
                vec![rule(&["*"], &["*"], &["*"])],
                vec![urls(&["get"], &["/healthz"])],
                false,
            ),
            (
                "a path rule does not cover a resource",
                vec![urls(&["*"], &["*"])],
                vec![rule(&["get"], &[""], &["pods"])],
                false,
            ),
            ("path prefixes", vec![urls(&["get"], &["/apis/*"])], vec![urls(&["get"], &["/apis/apps/v1"])], true),
            ("an exact path", vec![urls(&["get"], &["/healthz"])], vec![urls(&["get"], &["/healthz/ping"])], false),
            ("nothing requested", vec![], vec![], true),
            (
                "groups without resources ask nothing",
                vec![],
                vec![PolicyRule {
                    verbs: strings(&["get"]),
                    api_groups: Some(strings(&[""])),
                    ..PolicyRule::default()
                }],
                true,
            ),
        ];
        for (case, owner, requested, want) in cases {
            assert_eq!(covers(&owner, &requested).is_ok(), want, "{case}");
        }
    }

    #[test]
    fn the_uncovered_rules_are_atomic() {
        let owner = [rule(&["get"], &[""], &["pods"])];
        let requested = [
            rule(&["get", "create"], &["", "apps"], &["pods"]),
            named(rule(&["get"], &[""], &["secrets"]), &["a", "b"]),
        ];
        assert_eq!(
            covers(&owner, &requested),
            Err(vec![
                rule(&["create"], &[""], &["pods"]),
                rule(&["get"], &["apps"], &["pods"]),
                rule(&["create"], &["apps"], &["pods"]),
                named(rule(&["get"], &[""], &["secrets"]), &["a"]),
                named(rule(&["get"], &[""], &["secrets"]), &["b"]),
            ])
        );
    }

    #[test]
    fn escalations_are_refused_in_kubernetes_words() {
        let alice =
            UserInfo { name: "alice".into(), groups: strings(&["system:authenticated"]), ..UserInfo::default() };
        let missing = covers(&[], &[rule(&["create"], &[""], &["pods"])]).unwrap_err();
        assert_eq!(
            escalation_message(&alice, &missing),
            "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not \
             currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"create\"]}"
        );

        let sa = UserInfo {
            name: "system:serviceaccount:rbac:privesc".into(),
            groups: strings(&["system:serviceaccounts", "system:serviceaccounts:rbac", "system:authenticated"]),
            ..UserInfo::default()
        };
        let requested = [
            rule(&["get", "list", "watch"], &[""], &["pods", "secrets"]),
            named(rule(&["get"], &[""], &["configmaps"]), &["settings"]),
            urls(&["get"], &["/metrics"]),
        ];
        let missing = covers(&[rule(&["get"], &[""], &["pods"])], &requested).unwrap_err();
        assert_eq!(
            escalation_message(&sa, &missing),
            "user \"system:serviceaccount:rbac:privesc\" (groups=[\"system:serviceaccounts\" \
             \"system:serviceaccounts:rbac\" \"system:authenticated\"]) is attempting to grant RBAC permissions not \
             currently held:\n\
             {APIGroups:[\"\"], Resources:[\"configmaps\"], ResourceNames:[\"settings\"], Verbs:[\"get\"]}\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"list\" \"watch\"]}\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\" \"watch\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
        );
        let nobody = UserInfo { name: "bob".into(), ..UserInfo::default() };
        assert!(escalation_message(&nobody, &missing).starts_with("user \"bob\" (groups=[]) is attempting"));
    }
}
