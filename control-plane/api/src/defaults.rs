//! The defaults Kubernetes fills in on write (its `SetDefaults_*` functions) for the fields clients and
//! printers rely on, so `kubectl get -o yaml` shows what a user of Kubernetes expects.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// Fills defaults into a normalized object of resource `def`.
pub fn apply(def: &ResourceDef, object: &mut Value) {
    match (def.group, def.plural) {
        ("", "namespaces") => {
            // kube-apiserver labels every namespace with its name (since 1.21), so NetworkPolicies and
            // other namespace selectors can pick one namespace by name.
            if let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) {
                object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        ("", "pods") => pod_spec(&mut object["spec"]),
        ("", "services") => service_spec(&mut object["spec"]),
        ("", "secrets") => set(object, "type", json!("Opaque")),
        ("", "limitranges") => limit_range_items(object),
        ("discovery.k8s.io", "endpointslices") => {
            for port in object.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                set(port, "name", json!(""));
                set(port, "protocol", json!("TCP"));
            }
        }
        ("networking.k8s.io", "networkpolicies") => network_policy_spec(object),
        // Kubernetes' `SetDefaults_IngressClass`: parameters without a scope are cluster-scoped.
        ("networking.k8s.io", "ingressclasses") => {
            if let Some(parameters) = object.pointer_mut("/spec/parameters").filter(|p| p.is_object()) {
                set(parameters, "scope", json!("Cluster"));
            }
        }
        ("apps", "deployments") => {
            let spec = &mut object["spec"];
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(spec, "strategy", json!({}));
            if spec["strategy"].get("type").is_none() {
                spec["strategy"]["type"] = json!("RollingUpdate");
            }
            if spec["strategy"]["type"] == "RollingUpdate" {
                set(&mut spec["strategy"], "rollingUpdate", json!({}));
                set(&mut spec["strategy"]["rollingUpdate"], "maxUnavailable", json!("25%"));
                set(&mut spec["strategy"]["rollingUpdate"], "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("apps", "replicasets") => {
            set(&mut object["spec"], "replicas", json!(1));
            template(&mut object["spec"]);
        }
        ("apps", "daemonsets") => {
            let spec = &mut object["spec"];
            set(spec, "revisionHistoryLimit", json!(10));
            set(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            template(spec);
        }
        ("batch", "jobs") => {
            let spec = &mut object["spec"];
            set(spec, "parallelism", json!(1));
            if spec.get("completions").is_none() && spec["parallelism"] == 1 {
                spec["completions"] = json!(1);
            }
            set(spec, "backoffLimit", json!(6));
            set(spec, "completionMode", json!("NonIndexed"));
            set(spec, "suspend", json!(false));
            template(spec);
        }
        ("autoscaling", "horizontalpodautoscalers") if def.version == "v1" => crate::autoscaling::default_v1(object),
        ("autoscaling", "horizontalpodautoscalers") => crate::autoscaling::default_v2(object),
        _ => {}
    }
}

/// What the server fills in once a new object has its uid: a Job's selector and pod labels (kube-apiserver's
/// `generateSelector`), unless the Job chose `manualSelector`.
pub fn on_create(def: &ResourceDef, object: &mut Value) {
    if (def.group, def.plural) != ("batch", "jobs") || object.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let spec = &mut object["spec"];
    if spec.get("selector").is_none_or(Value::is_null) {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
    ] {
        set(labels, key, value.clone());
    }
}

fn template(spec: &mut Value) {
    if spec.pointer("/template/spec").is_some() {
        pod_spec(&mut spec["template"]["spec"]);
    }
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(container);
        }
    }
}

fn container(container: &mut Value) {
    let image = container["image"].as_str().unwrap_or_default();
    // Kubernetes pulls `latest` (explicit or implied) every time and anything else only when missing.
    let tag = image.rsplit('/').next().unwrap_or(image);
    let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
    set(container, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
    set(container, "terminationMessagePath", json!("/dev/termination-log"));
    set(container, "terminationMessagePolicy", json!("File"));
    set(container, "resources", json!({}));
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set(port, "protocol", json!("TCP"));
        }
    }
}

fn service_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set(port, "protocol", json!("TCP"));
            // Protobuf bodies carry an unset targetPort as 0, which Kubernetes also treats as unset.
            let unset = port.get("targetPort").is_none_or(|t| t == 0);
            if unset && let Some(number) = port.get("port").cloned() {
                port["targetPort"] = number;
            }
        }
    }
}

/// Kubernetes' `SetDefaults_NetworkPolicy`: every pod of the namespace when no selector is given; policy
/// types from the rules (Ingress always, Egress when there are egress rules); TCP for ports.
fn network_policy_spec(object: &mut Value) {
    set(object, "spec", json!({}));
    let spec = &mut object["spec"];
    set(spec, "podSelector", json!({}));
    if spec.get("policyTypes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        let egress = spec.get("egress").and_then(Value::as_array).is_some_and(|rules| !rules.is_empty());
        spec["policyTypes"] = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
    }
    for direction in ["ingress", "egress"] {
        let rules = spec.get_mut(direction).and_then(Value::as_array_mut).into_iter().flatten();
        for port in rules.filter_map(|rule| rule.get_mut("ports")?.as_array_mut()).flatten() {
            set(port, "protocol", json!("TCP"));
        }
    }
}

/// Kubernetes' `SetDefaults_LimitRangeItem`, for Container items only: a resource with a `max` and no
/// `default` gets the max as its default limit; one with a default limit and no `defaultRequest` gets the
/// default limit as its default request; one with a `min` and still no default request gets the min. So a
/// LimitRange that only bounds a resource still gives containers that ask for nothing a value inside the
/// bounds.
fn limit_range_items(object: &mut Value) {
    let items = object.pointer_mut("/spec/limits").and_then(Value::as_array_mut).into_iter().flatten();
    for item in items.filter(|item| item["type"] == "Container") {
        fill_missing(item, "max", "default");
        fill_missing(item, "default", "defaultRequest");
        fill_missing(item, "min", "defaultRequest");
    }
}

/// Copies each quantity of `item[from]` into `item[to]` for the resources `item[to]` lacks.
fn fill_missing(item: &mut Value, from: &str, to: &str) {
    let Some(source) = item.get(from).and_then(Value::as_object).filter(|s| !s.is_empty()).cloned() else {
        return;
    };
    let Some(item) = item.as_object_mut() else { return };
    let target = item.entry(to).or_insert_with(|| json!({}));
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(target) = target.as_object_mut() {
        for (resource, quantity) in source {
            target.entry(resource).or_insert(quantity);
        }
    }
}

fn set(object: &mut Value, field: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.entry(field).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn deployment_gets_kubernetes_defaults() {
        let mut deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "registry:5000/app:1.2"},
        ]}}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut deploy);
        assert_eq!(deploy["spec"]["replicas"], 1);
        assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let containers = &deploy["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "Always");
        assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(containers[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(deploy["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn a_new_job_gets_its_selector_and_pod_labels() {
        let def = crate::resources::find("batch", "v1", "jobs").unwrap();
        let mut job = json!({"metadata": {"name": "j", "uid": "u-1"}, "spec": {"template": {"spec": {}}}});
        on_create(def, &mut job);
        assert_eq!(job["spec"]["selector"], json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}));
        assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "j");
        let mut manual = json!({"metadata": {"uid": "u-2"}, "spec": {"manualSelector": true, "template": {}}});
        on_create(def, &mut manual);
        assert!(manual["spec"].get("selector").is_none());
    }

    #[test]
    fn endpoint_slice_ports_get_a_name_and_a_protocol() {
        let mut slice =
            json!({"addressType": "IPv4", "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]});
        apply(find("discovery.k8s.io", "v1", "endpointslices").unwrap(), &mut slice);
        assert_eq!(
            slice["ports"],
            json!([{"name": "", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}])
        );
    }

    #[test]
    fn network_policies_get_their_policy_types_and_port_protocols() {
        let def = find("networking.k8s.io", "v1", "networkpolicies").unwrap();
        let mut deny = json!({"metadata": {"name": "deny"}});
        apply(def, &mut deny);
        assert_eq!(deny["spec"], json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        let mut egress = json!({"spec": {"egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}]}]}});
        apply(def, &mut egress);
        assert_eq!(egress["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            egress["spec"]["egress"][0]["ports"],
            json!([{"port": 53, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}])
        );
        let mut chosen = json!({"spec": {"policyTypes": ["Egress"], "ingress": [{}]}});
        apply(def, &mut chosen);
        assert_eq!(chosen["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn namespaces_are_labelled_with_their_name() {
        let def = crate::resources::find("", "v1", "namespaces").unwrap();
        let mut namespace = json!({"metadata": {"name": "shop"}});
        apply(def, &mut namespace);
        assert_eq!(namespace["metadata"]["labels"], json!({"kubernetes.io/metadata.name": "shop"}));
        let mut labelled =
            json!({"metadata": {"name": "shop", "labels": {"team": "a", "kubernetes.io/metadata.name": "x"}}});
        apply(def, &mut labelled);
        assert_eq!(labelled["metadata"]["labels"], json!({"team": "a", "kubernetes.io/metadata.name": "shop"}));
    }

    #[test]
    fn container_limit_range_items_get_default_limits_and_requests_from_their_bounds() {
        let def = find("", "v1", "limitranges").unwrap();
        let mut range = json!({"spec": {"limits": [
            {"type": "Container", "max": {"memory": "1Gi", "cpu": "2"}, "min": {"memory": "16Mi", "cpu": "100m"},
                "default": {"memory": "64Mi"}, "defaultRequest": {"memory": "32Mi"}},
            {"type": "Container", "min": {"cpu": "250m"}},
            {"type": "Pod", "max": {"memory": "2Gi"}},
        ]}});
        apply(def, &mut range);
        assert_eq!(
            range["spec"]["limits"],
            json!([
                // memory keeps what was given; cpu's default limit is the max, its default request the
                // default limit (the min comes last and finds it set).
                {"type": "Container", "max": {"memory": "1Gi", "cpu": "2"}, "min": {"memory": "16Mi", "cpu": "100m"},
                    "default": {"memory": "64Mi", "cpu": "2"}, "defaultRequest": {"memory": "32Mi", "cpu": "2"}},
                // Only a min: the default request is the min, and there is no default limit.
                {"type": "Container", "min": {"cpu": "250m"}, "defaultRequest": {"cpu": "250m"}},
                // Pod items never get defaults (validation forbids them there).
                {"type": "Pod", "max": {"memory": "2Gi"}},
            ])
        );
    }

    #[test]
    fn defaults_never_override_what_the_client_set() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}});
        apply(find("", "v1", "services").unwrap(), &mut svc);
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
    }
}
