//! Which nodes a pod may be on, as Kubernetes decides it: taints against tolerations, node selector terms.
//! Pure, and shared by the scheduler, the DaemonSet controller and the node lifecycle controller so the three
//! never disagree.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, Taint, Toleration};

/// Kubernetes' `ToleratesTaint`: an empty effect matches every effect, an empty key every key (validation
/// lets only Exists have one); Exists ignores the value, Equal (the default) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    if toleration.key.as_deref().is_some_and(|k| !k.is_empty() && k != taint.key) {
        return false;
    }
    match toleration.operator.as_deref() {
        Some("Exists") => true,
        None | Some("") | Some("Equal") => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        Some(_) => false,
    }
}

/// Whether any of `selector`'s terms (each an AND of its requirements; an empty term matches nothing)
/// selects the node with `labels` and `name` (the one field `matchFields` may name).
pub fn selects(selector: &NodeSelector, labels: &BTreeMap<String, String>, name: &str) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !fields.is_empty())
            && expressions.iter().all(|r| holds(r, labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| holds(r, (r.key == "metadata.name").then_some(name)))
    })
}

/// One requirement against the value the node has for its key (None: no such label or field).
fn holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    // Gt and Lt take one integer and compare the label's integer value with it.
    let compare = |ordering: std::cmp::Ordering| match (value.and_then(|v| v.parse::<i64>().ok()), values) {
        (Some(value), [bound]) => bound.parse::<i64>().is_ok_and(|bound| value.cmp(&bound) == ordering),
        _ => false,
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSelectorTerm;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), ..Taint::default() }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some(operator.into()),
            value: Some(value.into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        }
    }

    #[test]
    fn tolerations_follow_kubernetes_rules() {
        let gpu = taint("gpu", "yes", "NoSchedule");
        assert!(tolerates(&toleration("gpu", "Equal", "yes", "NoSchedule"), &gpu));
        assert!(!tolerates(&toleration("gpu", "Equal", "no", "NoSchedule"), &gpu));
        assert!(tolerates(&toleration("gpu", "Exists", "", ""), &gpu), "empty effect: every effect");
        assert!(tolerates(&toleration("", "Exists", "", ""), &gpu), "empty key with Exists: every taint");
        assert!(!tolerates(&toleration("gpu", "Exists", "", "NoExecute"), &gpu));
        let unset = Toleration { operator: Some("Exists".into()), ..Toleration::default() };
        assert!(tolerates(&unset, &gpu), "no key and no effect with Exists: every taint");
    }

    #[test]
    fn selector_terms_are_ored_and_requirements_anded() {
        let requirement = |key: &str, operator: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let term = |expressions: Vec<NodeSelectorRequirement>, fields: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(expressions),
            match_fields: Some(fields),
        };
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string()), ("cores".to_string(), "8".to_string())]);
        let selector = |terms| NodeSelector { node_selector_terms: terms };
        let zone_a = requirement("zone", "In", &["a"]);
        assert!(selects(
            &selector(vec![term(vec![zone_a.clone(), requirement("cores", "Gt", &["4"])], vec![])]),
            &labels,
            "n1"
        ));
        assert!(!selects(
            &selector(vec![term(vec![zone_a.clone(), requirement("cores", "Lt", &["4"])], vec![])]),
            &labels,
            "n1"
        ));
        assert!(selects(
            &selector(vec![term(vec![], vec![requirement("metadata.name", "In", &["n1"])])]),
            &labels,
            "n1"
        ));
        assert!(!selects(
            &selector(vec![term(vec![], vec![requirement("metadata.name", "In", &["n2"])])]),
            &labels,
            "n1"
        ));
        assert!(selects(
            &selector(vec![term(vec![requirement("gpu", "DoesNotExist", &[])], vec![]), term(vec![], vec![])]),
            &labels,
            "n1"
        ));
        assert!(!selects(&selector(vec![term(vec![], vec![])]), &labels, "n1"), "an empty term matches nothing");
        assert!(selects(&selector(vec![term(vec![requirement("zone", "NotIn", &["b"])], vec![])]), &labels, "n1"));
    }
}
