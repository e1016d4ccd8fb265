//! Kubernetes' LimitRanger admission plugin for pods (`plugin/pkg/admission/limitranger`), without IO: the
//! API server reads a namespace's LimitRanges and hands them here with the pod being created.
//!
//! Two halves, as in Kubernetes, with pod validation between them: [`default_resources`] fills in the
//! default limits and requests of Container items that containers lack and says so in the
//! `kubernetes.io/limit-ranger` annotation; [`check`] refuses a pod whose containers (Container items) or
//! whose total (Pod items) fall outside a LimitRange's min, max or max limit/request ratio, with
//! Kubernetes' messages. PersistentVolumeClaim items bound claims, which Skiff does not have yet; items of
//! other types are for other admission plugins, and both are left alone here.
//!
//! Kubernetes' pod defaulting sets a container's missing request to its limit before admission runs, so
//! LimitRanger never sees a limit without a request. Skiff stores the pod as written and every reader
//! (scheduler, node) takes a missing request to be the limit, so this module does the same: a container
//! with a limit but no request counts as requesting its limit, and gets no default request.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::quantity::{self, Format};
use crate::validation::parse_quantity;

/// The annotation listing what LimitRanger filled in.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The constraints of one LimitRange a pod breaks, each in Kubernetes' words. It prints as Kubernetes'
/// aggregate error: the message alone when there is one, `[first, second]` when there are more, each
/// distinct message once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", aggregate(.0))]
pub struct Violations(pub Vec<String>);

fn aggregate(messages: &[String]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for message in messages {
        if !distinct.contains(&message.as_str()) {
            distinct.push(message);
        }
    }
    match distinct.as_slice() {
        [only] => only.to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The containers of a pod, app containers first, with what Kubernetes calls each in the annotation.
const CONTAINER_LISTS: [(&str, &str); 2] = [("containers", "container"), ("initContainers", "init container")];

/// The mutating half: for each of `limit_ranges` (the namespace's, in name order, so the first one to give
/// a resource wins), sets the limits its Container item's `default` names and the requests its
/// `defaultRequest` names on every container and init container that has none for that resource, and
/// records what it set in the annotation (`LimitRanger plugin set: cpu, memory request for container app;
/// memory limit for container app`), each LimitRange that sets something replacing the annotation as in
/// Kubernetes. The quantities are written as the LimitRange has them. Returns whether the pod changed.
pub fn default_resources(limit_ranges: &[Value], pod: &mut Value) -> bool {
    let mut changed = false;
    for limit_range in limit_ranges {
        let (default_limits, default_requests) = container_defaults(limit_range);
        if default_limits.is_empty() && default_requests.is_empty() {
            continue;
        }
        let mut notes = Vec::new();
        for (list, role) in CONTAINER_LISTS {
            let containers = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut);
            for container in containers.into_iter().flatten() {
                let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                let (requests, limits) = default_container(container, &default_limits, &default_requests);
                if !requests.is_empty() {
                    notes.push(format!("{} request for {role} {name}", requests.join(", ")));
                }
                if !limits.is_empty() {
                    notes.push(format!("{} limit for {role} {name}", limits.join(", ")));
                }
            }
        }
        if !notes.is_empty() {
            annotate(pod, format!("LimitRanger plugin set: {}", notes.join("; ")));
            changed = true;
        }
    }
    changed
}

/// The validating half: the constraints of the first of `limit_ranges` (in the order given) that `pod`
/// breaks. Container items bound each container and init container: its request by `min`, its limit by
/// `max`, its limit over its request by `maxLimitRequestRatio`. Pod items bound the pod's total the same
/// way, which counts init containers as the kubelet runs them: the pod needs the larger of its app
/// containers' sum and its largest init container (plus the sidecars started before it).
pub fn check(limit_ranges: &[Value], pod: &Value) -> Result<(), Violations> {
    for limit_range in limit_ranges {
        let mut violations = Vec::new();
        for item in items(limit_range) {
            match item.get("type").and_then(Value::as_str) {
                Some(kind @ "Container") => {
                    for container in CONTAINER_LISTS.iter().flat_map(|(list, _)| containers(pod, list)) {
                        let (requests, limits) = (container_requests(container), amounts(container, "limits"));
                        violations.extend(constraints(item, kind, &requests, &limits));
                    }
                }
                Some(kind @ "Pod") => {
                    let requests = pod_total(pod, container_requests);
                    let limits = pod_total(pod, |container| amounts(container, "limits"));
                    violations.extend(constraints(item, kind, &requests, &limits));
                }
                _ => {}
            }
        }
        if !violations.is_empty() {
            return Err(Violations(violations));
        }
    }
    Ok(())
}

/// One amount of a resource: its value for comparisons, how Kubernetes would print it, and its format
/// (which a total takes from its first part, as Go's `Quantity.Add` keeps the receiver's).
#[derive(Clone, Debug, PartialEq)]
struct Amount {
    value: f64,
    format: Format,
    shown: String,
}

impl Amount {
    fn parse(text: &str) -> Option<Self> {
        Some(Self {
            value: parse_quantity(text)?,
            format: quantity::format_of(text)?,
            shown: quantity::canonical(text).unwrap_or_else(|| text.to_string()),
        })
    }

    fn plus(&self, other: &Amount) -> Amount {
        let value = self.value + other.value;
        let shown = quantity::canonical_value(value, self.format).unwrap_or_else(|| value.to_string());
        Amount { value, format: self.format, shown }
    }
}

/// Amounts by resource name.
type Amounts = BTreeMap<String, Amount>;

fn items(limit_range: &Value) -> &[Value] {
    limit_range.pointer("/spec/limits").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Quantities by resource name, as a LimitRange writes them.
type Defaults = BTreeMap<String, Value>;

/// Kubernetes' `defaultContainerResourceRequirements`: the default limits and requests of a LimitRange's
/// Container items, a later item's replacing an earlier one's.
fn container_defaults(limit_range: &Value) -> (Defaults, Defaults) {
    let (mut limits, mut requests) = (BTreeMap::new(), BTreeMap::new());
    for item in items(limit_range).iter().filter(|item| item["type"] == "Container") {
        for (field, into) in [("default", &mut limits), ("defaultRequest", &mut requests)] {
            let quantities = item.get(field).and_then(Value::as_object).into_iter().flatten();
            into.extend(quantities.map(|(resource, quantity)| (resource.clone(), quantity.clone())));
        }
    }
    (limits, requests)
}

/// Sets on `container` the default limits and requests it lacks; returns the names of the resources
/// whose request and whose limit it set, in name order.
fn default_container(
    container: &mut Value,
    default_limits: &Defaults,
    default_requests: &Defaults,
) -> (Vec<String>, Vec<String>) {
    let has = |list: &str, resource: &str| {
        container.pointer(&format!("/resources/{list}")).and_then(|l| l.get(resource)).is_some()
    };
    let owned = |(resource, quantity): (&String, &Value)| (resource.clone(), quantity.clone());
    // A limit without a request is a request for the limit (see the module docs).
    let requests: Defaults =
        default_requests.iter().filter(|(r, _)| !has("requests", r) && !has("limits", r)).map(owned).collect();
    let limits: Defaults = default_limits.iter().filter(|(r, _)| !has("limits", r)).map(owned).collect();
    for (list, set) in [("requests", &requests), ("limits", &limits)] {
        if !set.is_empty()
            && let Some(entries) = resource_list_mut(container, list)
        {
            entries.extend(set.clone());
        }
    }
    (requests.into_keys().collect(), limits.into_keys().collect())
}

/// The container's `resources.<list>` map, made when missing (None when the container is no object).
fn resource_list_mut<'a>(container: &'a mut Value, list: &str) -> Option<&'a mut Map<String, Value>> {
    let mut map = container.as_object_mut()?;
    for key in ["resources", list] {
        let entry = map.entry(key).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        map = entry.as_object_mut()?;
    }
    Some(map)
}

fn annotate(pod: &mut Value, note: String) {
    if !pod.get("metadata").is_some_and(Value::is_object) {
        pod["metadata"] = json!({});
    }
    let metadata = &mut pod["metadata"];
    if !metadata.get("annotations").is_some_and(Value::is_object) {
        metadata["annotations"] = json!({});
    }
    metadata["annotations"][ANNOTATION] = json!(note);
}

/// The quantities of an object's map `field` that parse (validation refused the others), by resource.
fn quantities(object: &Value, field: &str) -> Amounts {
    let entries = object.get(field).and_then(Value::as_object).into_iter().flatten();
    entries.filter_map(|(resource, text)| Some((resource.clone(), Amount::parse(text.as_str()?)?))).collect()
}

fn amounts(container: &Value, list: &str) -> Amounts {
    container.get("resources").map(|resources| quantities(resources, list)).unwrap_or_default()
}

/// A container's requests, a limit standing in for a missing request (see the module docs).
fn container_requests(container: &Value) -> Amounts {
    let mut requests = amounts(container, "requests");
    for (resource, limit) in amounts(container, "limits") {
        requests.entry(resource).or_insert(limit);
    }
    requests
}

fn add_into(total: &mut Amounts, amounts: &Amounts) {
    for (resource, amount) in amounts {
        let sum = match total.get(resource) {
            Some(sum) => sum.plus(amount),
            None => amount.clone(),
        };
        total.insert(resource.clone(), sum);
    }
}

fn max_into(peak: &mut Amounts, amounts: &Amounts) {
    for (resource, amount) in amounts {
        if peak.get(resource).is_none_or(|held| amount.value > held.value) {
            peak.insert(resource.clone(), amount.clone());
        }
    }
}

/// Kubernetes' `podRequests`/`podLimits` over `of` each container: app containers and sidecars (init
/// containers with `restartPolicy: Always`) add up; an ordinary init container runs alone beside the
/// sidecars started before it; the pod needs the larger of the two.
fn pod_total(pod: &Value, of: impl Fn(&Value) -> Amounts) -> Amounts {
    let mut total = Amounts::new();
    for container in containers(pod, "containers") {
        add_into(&mut total, &of(container));
    }
    let (mut sidecars, mut init_peak) = (Amounts::new(), Amounts::new());
    for container in containers(pod, "initContainers") {
        let own = of(container);
        let running = if container.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut running = own;
            add_into(&mut running, &sidecars);
            running
        };
        max_into(&mut init_peak, &running);
    }
    max_into(&mut total, &init_peak);
    total
}

/// What `requests` and `limits` (of a container, or a pod's totals) break of `item`'s min, max and max
/// limit/request ratio, in resource name order within each (Go's map order is random).
fn constraints(item: &Value, kind: &str, requests: &Amounts, limits: &Amounts) -> Vec<String> {
    let mut violations = Vec::new();
    for (resource, min) in quantities(item, "min") {
        let (request, limit) = (requests.get(&resource), limits.get(&resource));
        let bound = format!("minimum {resource} usage per {kind} is {}", min.shown);
        match (request, limit) {
            (None, _) => violations.push(format!("{bound}.  No request is specified")),
            (Some(request), _) if request.value < min.value => {
                violations.push(format!("{bound}, but request is {}", request.shown))
            }
            (_, Some(limit)) if limit.value < min.value => {
                violations.push(format!("{bound}, but limit is {}", limit.shown))
            }
            _ => {}
        }
    }
    for (resource, max) in quantities(item, "max") {
        let (request, limit) = (requests.get(&resource), limits.get(&resource));
        let bound = format!("maximum {resource} usage per {kind} is {}", max.shown);
        match (request, limit) {
            (_, None) => violations.push(format!("{bound}.  No limit is specified")),
            (_, Some(limit)) if limit.value > max.value => {
                violations.push(format!("{bound}, but limit is {}", limit.shown))
            }
            (Some(request), _) if request.value > max.value => {
                violations.push(format!("{bound}, but request is {}", request.shown))
            }
            _ => {}
        }
    }
    for (resource, ratio) in quantities(item, "maxLimitRequestRatio") {
        let bound = format!("{resource} max limit to request ratio per {kind} is {}", ratio.shown);
        let nonzero = |amounts: &Amounts| amounts.get(&resource).filter(|a| a.value != 0.0).map(|a| a.value);
        match (nonzero(requests), nonzero(limits)) {
            (None, _) => violations.push(format!("{bound}, but no request is specified or request is 0")),
            (_, None) => violations.push(format!("{bound}, but no limit is specified or limit is 0")),
            (Some(request), Some(limit)) if limit / request > ratio.value => {
                violations.push(format!("{bound}, but provided ratio is {:.6}", limit / request))
            }
            _ => {}
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit_range(name: &str, limits: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": name}, "spec": {"limits": limits}})
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    fn resources(requests: Value, limits: Value) -> Value {
        json!({"requests": requests, "limits": limits})
    }

    /// The LimitRange of the README's example, as defaulting stores it.
    fn memory_range() -> Value {
        limit_range(
            "mem",
            json!([{"type": "Container", "max": {"memory": "1Gi"}, "default": {"memory": "64Mi"},
                "defaultRequest": {"memory": "64Mi"}}]),
        )
    }

    #[test]
    fn containers_without_resources_get_the_defaults_and_the_annotation() {
        let range = limit_range(
            "defaults",
            json!([{"type": "Container", "default": {"memory": "128Mi"},
                "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]),
        );
        let mut pod = pod(json!({
            "containers": [{"name": "app", "resources": {}}, {"name": "tuned", "resources": resources(json!({"cpu": "1"}), json!({"memory": "1Gi"}))}],
            "initContainers": [{"name": "setup"}],
        }));
        assert!(default_resources(&[range], &mut pod));
        let containers = &pod["spec"]["containers"];
        assert_eq!(
            containers[0]["resources"],
            resources(json!({"cpu": "100m", "memory": "64Mi"}), json!({"memory": "128Mi"}))
        );
        // What it sets stays; a memory limit without a request is the request, so none is added.
        assert_eq!(containers[1]["resources"], resources(json!({"cpu": "1"}), json!({"memory": "1Gi"})));
        assert_eq!(
            pod["spec"]["initContainers"][0]["resources"],
            resources(json!({"cpu": "100m", "memory": "64Mi"}), json!({"memory": "128Mi"}))
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; memory limit for container app; \
             cpu, memory request for init container setup; memory limit for init container setup"
        );
    }

    #[test]
    fn the_first_limit_range_to_give_a_resource_wins_and_the_last_to_give_anything_annotates() {
        let first = limit_range(
            "a",
            json!([{"type": "Container", "default": {"memory": "64Mi"}, "defaultRequest": {"memory": "32Mi"}}]),
        );
        let second = limit_range(
            "b",
            json!([{"type": "Container", "default": {"memory": "1Gi", "cpu": "1"}, "defaultRequest": {"memory": "1Gi", "cpu": "1"}}]),
        );
        let mut pod = pod(json!({"containers": [{"name": "app"}]}));
        assert!(default_resources(&[first, second], &mut pod));
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            resources(json!({"memory": "32Mi", "cpu": "1"}), json!({"memory": "64Mi", "cpu": "1"}))
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu request for container app; cpu limit for container app"
        );
        // Nothing to give: the pod is left as it is.
        let mut complete = pod.clone();
        assert!(!default_resources(&[memory_range()], &mut complete));
        assert_eq!(complete, pod);
    }

    #[test]
    fn container_bounds_refuse_with_kubernetes_messages() {
        let range = limit_range(
            "bounds",
            json!([{"type": "Container", "min": {"memory": "64Mi", "cpu": "100m"}, "max": {"memory": "1Gi"},
                "maxLimitRequestRatio": {"cpu": "2"}}]),
        );
        let pod = pod(json!({"containers": [
            {"name": "small", "resources": resources(json!({"memory": "32Mi", "cpu": "100m"}), json!({"memory": "2Gi", "cpu": "1"}))},
            {"name": "bare"},
        ]}));
        let refused = check(&[range], &pod).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "[minimum memory usage per Container is 64Mi, but request is 32Mi, \
             maximum memory usage per Container is 1Gi, but limit is 2Gi, \
             cpu max limit to request ratio per Container is 2, but provided ratio is 10.000000, \
             minimum cpu usage per Container is 100m.  No request is specified, \
             minimum memory usage per Container is 64Mi.  No request is specified, \
             maximum memory usage per Container is 1Gi.  No limit is specified, \
             cpu max limit to request ratio per Container is 2, but no request is specified or request is 0]"
        );
    }

    #[test]
    fn a_limit_stands_in_for_a_missing_request() {
        let range = limit_range("min", json!([{"type": "Container", "min": {"memory": "64Mi"}}]));
        let enough =
            pod(json!({"containers": [{"name": "a", "resources": resources(json!({}), json!({"memory": "128Mi"}))}]}));
        assert_eq!(check(std::slice::from_ref(&range), &enough), Ok(()));
        let short =
            pod(json!({"containers": [{"name": "a", "resources": resources(json!({}), json!({"memory": "32Mi"}))}]}));
        assert_eq!(
            check(&[range], &short).unwrap_err().to_string(),
            "minimum memory usage per Container is 64Mi, but request is 32Mi"
        );
    }

    #[test]
    fn pod_bounds_count_init_containers_as_the_kubelet_runs_them() {
        let range = limit_range("pod", json!([{"type": "Pod", "max": {"cpu": "2", "memory": "1Gi"}}]));
        let app = |cpu: &str, memory: &str| resources(json!({}), json!({"cpu": cpu, "memory": memory}));
        let pod = pod(json!({
            "containers": [{"name": "a", "resources": app("2", "256Mi")}, {"name": "b", "resources": app("2", "256Mi")}],
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": app("500m", "128Mi")},
                {"name": "migrate", "resources": app("1", "1.5Gi")},
            ],
        }));
        // cpu: the app containers and the sidecar, 4.5; memory: the migration beside the sidecar, 1664Mi.
        assert_eq!(
            check(&[range], &pod).unwrap_err().to_string(),
            "[maximum cpu usage per Pod is 2, but limit is 4500m, maximum memory usage per Pod is 1Gi, but limit is 1664Mi]"
        );
    }

    #[test]
    fn only_the_first_broken_limit_range_is_reported_and_other_types_are_ignored() {
        let claims = limit_range("a-claims", json!([{"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}]));
        let cpu = limit_range("b-cpu", json!([{"type": "Container", "max": {"cpu": "1"}}]));
        let pod = pod(
            json!({"containers": [{"name": "a", "resources": resources(json!({}), json!({"cpu": "2", "memory": "2Gi"}))}]}),
        );
        assert_eq!(
            check(&[claims, cpu, memory_range()], &pod),
            Err(Violations(vec!["maximum cpu usage per Container is 1, but limit is 2".into()]))
        );
    }

    #[test]
    fn repeated_messages_are_reported_once() {
        assert_eq!(aggregate(&["a".into(), "a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }
}
