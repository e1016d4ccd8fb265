//! ClusterRole aggregation, as Kubernetes' clusterrole-aggregation controller computes it: an aggregated
//! role's rules are those of every other ClusterRole its `aggregationRule.clusterRoleSelectors` select.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use serde_json::{Map, Value};

use super::same_rule;
use crate::selectors::LabelSelector;

/// For each ClusterRole with an `aggregationRule` whose rules are not what it aggregates, its name and the
/// rules it should have: those of every other ClusterRole whose labels any of its selectors match, taken by
/// the source role's name, then in the source's order, each rule once. A selector `{}` matches every role,
/// as in Kubernetes.
///
/// A role with a selector Kubernetes would reject is left out (its rules stay as they are), as the
/// controller leaves it; the API server's validation keeps such selectors out in the first place.
///
/// Aggregated roles may select each other (`admin` selects `edit`, which selects `view`): one call reads
/// every role's current rules, so a controller applying the result converges in as many rounds as the
/// chain is long, as Kubernetes' does with its requeues.
pub fn aggregate(cluster_roles: &[ClusterRole]) -> Vec<(String, Vec<PolicyRule>)> {
    let labels: Vec<Map<String, Value>> = cluster_roles
        .iter()
        .map(|role| role.metadata.labels.iter().flatten().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
        .collect();
    let mut by_name: Vec<usize> = (0..cluster_roles.len()).collect();
    by_name.sort_by(|&a, &b| cluster_roles[a].metadata.name.cmp(&cluster_roles[b].metadata.name));

    let mut changes = Vec::new();
    for role in cluster_roles {
        let Some(aggregation) = &role.aggregation_rule else { continue };
        let Ok(selectors) = aggregation
            .cluster_role_selectors
            .iter()
            .flatten()
            .map(LabelSelector::from_k8s)
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let mut rules: Vec<PolicyRule> = Vec::new();
        for &source in &by_name {
            let source_role = &cluster_roles[source];
            if source_role.metadata.name == role.metadata.name
                || !selectors.iter().any(|selector| selector.matches(&labels[source]))
            {
                continue;
            }
            for rule in source_role.rules.iter().flatten() {
                if !rules.iter().any(|have| same_rule(have, rule)) {
                    rules.push(rule.clone());
                }
            }
        }
        let current = role.rules.as_deref().unwrap_or_default();
        let unchanged = rules.len() == current.len() && rules.iter().zip(current).all(|(a, b)| same_rule(a, b));
        if !unchanged {
            changes.push((role.metadata.name.clone().unwrap_or_default(), rules));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector as K8sSelector, LabelSelectorRequirement, ObjectMeta,
    };

    use super::*;
    use crate::rbac::tests::{rule, strings};

    fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ClusterRole {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..ObjectMeta::default() },
            rules: Some(rules),
            aggregation_rule: None,
        }
    }

    fn aggregated(name: &str, selectors: Vec<K8sSelector>, rules: Option<Vec<PolicyRule>>) -> ClusterRole {
        ClusterRole {
            aggregation_rule: Some(AggregationRule { cluster_role_selectors: Some(selectors) }),
            rules,
            ..role(name, &[], vec![])
        }
    }

    fn match_labels(key: &str, value: &str) -> K8sSelector {
        K8sSelector { match_labels: Some([(key.to_string(), value.to_string())].into()), match_expressions: None }
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> K8sSelector {
        let requirement = LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| strings(values)),
        };
        K8sSelector { match_labels: None, match_expressions: Some(vec![requirement]) }
    }

    #[test]
    fn aggregated_roles_take_the_selected_roles_rules_by_name_then_order_once_each() {
        let pods = rule(&["get"], &[""], &["pods"]);
        let logs = rule(&["get"], &[""], &["pods/log"]);
        let deployments = rule(&["get"], &["apps"], &["deployments"]);
        let secrets = rule(&["get"], &[""], &["secrets"]);
        let roles = vec![
            role("zeta", &[("agg", "yes")], vec![deployments.clone(), pods.clone()]),
            role("alpha", &[("agg", "yes")], vec![pods.clone(), logs.clone()]),
            role("other", &[("agg", "no")], vec![secrets.clone()]),
            role("tier-gold", &[("tier", "gold")], vec![secrets.clone()]),
            aggregated("combined", vec![match_labels("agg", "yes")], None),
            aggregated("either", vec![match_labels("agg", "yes"), expression("tier", "In", &["gold", "silver"])], None),
            aggregated("not-no", vec![expression("agg", "NotIn", &["no"])], Some(vec![])),
        ];
        let changes: BTreeMap<String, Vec<PolicyRule>> = aggregate(&roles).into_iter().collect();
        assert_eq!(changes["combined"], [pods.clone(), logs.clone(), deployments.clone()]);
        assert_eq!(changes["either"], [pods.clone(), logs.clone(), secrets.clone(), deployments.clone()]);
        // NotIn matches roles without the label too, aggregated ones included (but never the role itself).
        assert_eq!(changes["not-no"], [pods, logs, secrets, deployments]);
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn only_roles_whose_rules_change_are_returned() {
        let pods = rule(&["get"], &[""], &["pods"]);
        let mut current = pods.clone();
        // Kubernetes compares rules semantically: a missing list equals an empty one.
        current.resource_names = Some(vec![]);
        let roles = vec![
            role("source", &[("agg", "yes")], vec![pods.clone()]),
            aggregated("done", vec![match_labels("agg", "yes")], Some(vec![current])),
            aggregated("stale", vec![match_labels("agg", "yes")], Some(vec![pods.clone(), pods.clone()])),
            aggregated("empty-and-right", vec![match_labels("agg", "none")], None),
            aggregated("empty-and-wrong", vec![match_labels("agg", "none")], Some(vec![pods.clone()])),
            aggregated("bad-selector", vec![expression("agg", "Matches", &["x"])], None),
        ];
        assert_eq!(
            aggregate(&roles),
            [("stale".to_string(), vec![pods]), ("empty-and-wrong".to_string(), vec![])],
            "no entry for roles already right, nor for one whose selector is invalid"
        );
    }

    #[test]
    fn an_empty_selector_selects_every_other_role() {
        let pods = rule(&["get"], &[""], &["pods"]);
        let roles = vec![role("a", &[], vec![pods.clone()]), aggregated("all", vec![K8sSelector::default()], None)];
        assert_eq!(aggregate(&roles), [("all".to_string(), vec![pods])]);
    }
}
