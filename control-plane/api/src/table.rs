//! Server-side tables (`meta.k8s.io/v1` Table) for `kubectl get`, with the columns of kube-apiserver's
//! printers. Cells are always computed as for `-o wide`; kubectl hides columns of priority 1 unless asked.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::resources::ResourceDef;

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// What kubectl prints for an absent value.
const NONE: &str = "<none>";
const UNKNOWN: &str = "<unknown>";

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

const fn col(name: &'static str, kind: &'static str, description: &'static str) -> Column {
    Column { name, kind, format: "", description, priority: 0 }
}

const fn wide(name: &'static str, kind: &'static str, description: &'static str) -> Column {
    Column { name, kind, format: "", description, priority: 1 }
}

const NAME: Column =
    Column { name: "Name", kind: "string", format: "name", description: NAME_DESCRIPTION, priority: 0 };
const AGE: Column = col("Age", "string", AGE_DESCRIPTION);
/// kube-apiserver's default table (for kinds without a printer of their own) has the creation time, not
/// the age.
const CREATED_AT: Column = col("Created At", "date", AGE_DESCRIPTION);
const CONTAINERS: Column = wide("Containers", "string", "Names of each container in the template.");
const IMAGES: Column = wide("Images", "string", "Images referenced by each container in the template.");
const SELECTOR: Column = wide(
    "Selector",
    "string",
    "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
);

/// Computes the cells of one object's row, given the time ages are measured at.
type RowFn = fn(&Value, Timestamp) -> Vec<Value>;

/// Columns and the row printer of one resource.
struct Printer {
    columns: Vec<Column>,
    row: RowFn,
}

fn printer(def: &ResourceDef) -> Printer {
    let (columns, row): (Vec<Column>, RowFn) = match (def.group, def.plural) {
        ("", "namespaces") => (vec![NAME, col("Status", "string", "The status of the namespace"), AGE], namespace_row),
        ("", "nodes") => (
            vec![
                NAME,
                col("Status", "string", "The status of the node"),
                col("Roles", "string", "The roles of the node"),
                AGE,
                col("Version", "string", "Kubelet Version reported by the node."),
                wide(
                    "Internal-IP",
                    "string",
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                wide(
                    "External-IP",
                    "string",
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                wide(
                    "OS-Image",
                    "string",
                    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                ),
                wide(
                    "Kernel-Version",
                    "string",
                    "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                ),
                wide(
                    "Container-Runtime",
                    "string",
                    "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                ),
            ],
            node_row,
        ),
        ("", "pods") => (
            vec![
                NAME,
                col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
                col("Status", "string", "The aggregate status of the containers in this pod."),
                col(
                    "Restarts",
                    "string",
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                ),
                AGE,
                wide(
                    "IP",
                    "string",
                    "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
                ),
                wide("Node", "string", "NodeName indicates in which node this pod is scheduled."),
                wide(
                    "Nominated Node",
                    "string",
                    "nominatedNodeName is set only when this pod preempts other pods on the node.",
                ),
                wide(
                    "Readiness Gates",
                    "string",
                    "If specified, all readiness gates will be evaluated for pod readiness.",
                ),
            ],
            pod_row,
        ),
        ("", "services") => (
            vec![
                NAME,
                col("Type", "string", "type determines how the Service is exposed."),
                col(
                    "Cluster-IP",
                    "string",
                    "clusterIP is the IP address of the service and is usually assigned randomly.",
                ),
                col(
                    "External-IP",
                    "string",
                    "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
                ),
                col("Port(s)", "string", "The list of ports that are exposed by this service."),
                AGE,
                wide(
                    "Selector",
                    "string",
                    "Route service traffic to pods with label keys and values matching this selector.",
                ),
            ],
            service_row,
        ),
        ("", "endpoints") => (vec![NAME, col("Endpoints", "string", "Endpoints of the service"), AGE], endpoints_row),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                NAME,
                col(
                    "AddressType",
                    "string",
                    "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name.",
                ),
                col(
                    "Ports",
                    "string",
                    "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. When ports is empty, it indicates that there are no defined ports. When a port is defined with a nil port value, it indicates \"all ports\". Each slice may include a maximum of 100 ports.",
                ),
                col(
                    "Endpoints",
                    "string",
                    "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.",
                ),
                AGE,
            ],
            endpointslice_row,
        ),
        ("networking.k8s.io", "networkpolicies") => (
            vec![
                NAME,
                col(
                    "Pod-Selector",
                    "string",
                    "Selects the pods to which this NetworkPolicy object applies. The array of ingress rules is applied to any pods selected by this field. Multiple network policies can select the same set of pods. In this case, the ingress rules for each are combined additively. This field is NOT optional and follows standard label selector semantics. An empty podSelector matches all pods in this namespace.",
                ),
                AGE,
            ],
            networkpolicy_row,
        ),
        ("networking.k8s.io", "ingresses") => (
            vec![
                NAME,
                col("Class", "string", "The name of the IngressClass resource that should be used by this Ingress."),
                col("Hosts", "string", "Hosts that incoming requests are matched against before the ingress rule"),
                col("Address", "string", "Address is a list containing ingress points for the load-balancer"),
                col("Ports", "string", "Ports of TLS configurations that open"),
                AGE,
            ],
            ingress_row,
        ),
        ("networking.k8s.io", "ingressclasses") => (
            vec![
                NAME,
                col("Controller", "string", "Controller that is responsible for handling this class"),
                col("Parameters", "string", "A reference to a resource with additional parameters"),
                AGE,
            ],
            ingressclass_row,
        ),
        ("", "configmaps") => {
            (vec![NAME, col("Data", "string", "Number of entries in data and binaryData"), AGE], configmap_row)
        }
        ("", "secrets") => (
            vec![
                NAME,
                col("Type", "string", "Used to facilitate programmatic handling of secret data."),
                col("Data", "string", "Number of entries in data"),
                AGE,
            ],
            secret_row,
        ),
        ("", "serviceaccounts") => (vec![NAME, col("Secrets", "string", "Number of secrets"), AGE], serviceaccount_row),
        ("", "events") => (
            vec![
                col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
                col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
                col(
                    "Reason",
                    "string",
                    "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                ),
                col("Object", "string", "The object that this event is about."),
                wide(
                    "Subobject",
                    "string",
                    "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
                ),
                wide("Source", "string", "The component reporting this event."),
                col("Message", "string", "A human-readable description of the status of this operation."),
                wide("First Seen", "string", "The time at which the event was first recorded."),
                wide("Count", "string", "The number of times this event has occurred."),
                Column { priority: 1, ..NAME },
            ],
            event_row,
        ),
        ("apps", "deployments") => (
            vec![
                NAME,
                col("Ready", "string", "Number of the pod with ready state"),
                col(
                    "Up-to-date",
                    "string",
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                ),
                col(
                    "Available",
                    "string",
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            deployment_row,
        ),
        ("apps", "replicasets") => (
            vec![
                NAME,
                col("Desired", "integer", "Replicas is the number of desired pods."),
                col("Current", "integer", "Replicas is the most recently observed number of replicas."),
                col("Ready", "integer", "The number of ready replicas for this replica set."),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            replicaset_row,
        ),
        ("apps", "daemonsets") => (
            vec![
                NAME,
                col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
                col(
                    "Current",
                    "integer",
                    "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
                ),
                col(
                    "Ready",
                    "integer",
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
                ),
                col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
                col(
                    "Available",
                    "integer",
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
                ),
                col(
                    "Node Selector",
                    "string",
                    "NodeSelector is a selector which must be true for the pod to fit on a node.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            daemonset_row,
        ),
        ("batch", "jobs") => (
            vec![
                NAME,
                col("Status", "string", "Status of the job."),
                col("Completions", "string", "The successful completions of the job, out of the desired ones."),
                col("Duration", "string", "Time required to complete the job."),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            job_row,
        ),
        ("coordination.k8s.io", "leases") => (
            vec![
                NAME,
                col("Holder", "string", "holderIdentity contains the identity of the holder of a current lease."),
                AGE,
            ],
            lease_row,
        ),
        ("node.k8s.io", "runtimeclasses") => (
            vec![
                NAME,
                col(
                    "Handler",
                    "string",
                    "Handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class.",
                ),
                AGE,
            ],
            runtimeclass_row,
        ),
        ("certificates.k8s.io", "certificatesigningrequests") => (
            vec![
                NAME,
                AGE,
                col("SignerName", "string", "Only include a default signer name"),
                col("Requestor", "string", "Request is the CSR requestor"),
                col(
                    "RequestedDuration",
                    "string",
                    "expirationSeconds is the requested duration of validity of the issued certificate.",
                ),
                col("Condition", "string", "Approval and issuance state of the request"),
            ],
            csr_row,
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![
                NAME,
                col(
                    "Role",
                    "string",
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
                ),
                AGE,
                wide("Users", "string", "Users in the binding"),
                wide("Groups", "string", "Groups in the binding"),
                wide("ServiceAccounts", "string", "ServiceAccounts in the binding"),
            ],
            binding_row,
        ),
        ("", "limitranges") => (vec![NAME, CREATED_AT], created_at_row),
        ("autoscaling", "horizontalpodautoscalers") => (
            vec![
                NAME,
                col("Reference", "string", HPA_REFERENCE_DESCRIPTION),
                col("Targets", "string", HPA_TARGETS_DESCRIPTION),
                col("MinPods", "string", HPA_MIN_DESCRIPTION),
                col("MaxPods", "integer", HPA_MAX_DESCRIPTION),
                col("Replicas", "integer", HPA_REPLICAS_DESCRIPTION),
                AGE,
            ],
            hpa_row,
        ),
        _ => (vec![NAME, AGE], default_row),
    };
    Printer { columns, row }
}

/// A Table of `objects` of resource `def`. `list_meta` is put as the Table's metadata (resourceVersion,
/// continue).
pub fn table(def: &ResourceDef, objects: &[Value], list_meta: Value, now: Timestamp) -> Value {
    // Printers know a resource's storage version; an object of another version is printed as the stored
    // object it stands for, as kube-apiserver prints its internal version.
    let printer = printer(def.storage());
    let columns: Vec<Value> = printer
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let stored = def.to_storage(object.clone()).unwrap_or_else(|_| object.clone());
            json!({
                "cells": (printer.row)(&stored, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                },
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}

/// kube's `duration.HumanDuration`: coarser as the duration grows (`5s`, `3m2s`, `15m`, `2d3h`, `3y12d`).
pub fn human_duration(duration: SignedDuration) -> String {
    let seconds = duration.as_secs();
    // Up to a second in the future counts as now: clocks of the machines involved differ a little.
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    } else if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{days}d") } else { format!("{days}d{h}h") };
    } else if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let d = days % 365;
        return if d == 0 { format!("{years}y") } else { format!("{years}y{d}d") };
    }
    format!("{years}y")
}

fn parse_time(value: Option<&Value>) -> Option<Timestamp> {
    value?.as_str()?.parse().ok()
}

/// kube's `translateTimestampSince`: the age of a timestamp, `<unknown>` when it is missing.
fn since(value: Option<&Value>, now: Timestamp) -> String {
    match parse_time(value) {
        Some(time) => human_duration(now.duration_since(time)),
        None => UNKNOWN.into(),
    }
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn items<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn len_of(object: &Value, pointer: &str) -> usize {
    match object.pointer(pointer) {
        Some(Value::Object(map)) => map.len(),
        Some(Value::Array(list)) => list.len(),
        _ => 0,
    }
}

fn or_none(value: &str) -> String {
    if value.is_empty() { NONE.into() } else { value.into() }
}

fn name(object: &Value) -> Value {
    text(object, "/metadata/name").into()
}

fn age(object: &Value, now: Timestamp) -> Value {
    since(object.pointer("/metadata/creationTimestamp"), now).into()
}

fn default_row(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), age(object, now)]
}

/// Go's zero time, which kube-apiserver's default table prints for an object without a creation time.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn created_at_row(object: &Value, _now: Timestamp) -> Vec<Value> {
    let created = parse_time(object.pointer("/metadata/creationTimestamp"));
    vec![name(object), created.map_or_else(|| GO_ZERO_TIME.to_string(), crate::format_time).into()]
}

fn namespace_row(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), text(object, "/status/phase").into(), age(object, now)]
}

/// `k=v,k2=v2` sorted by key, as `labels.FormatLabels` prints a map.
fn format_labels(object: &Value, pointer: &str) -> String {
    let labels: BTreeMap<&str, &str> = object
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    or_none(&joined.join(","))
}

/// A LabelSelector as `labels.Selector.String()` prints it: requirements sorted by key.
fn format_selector(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return String::new();
    };
    let mut requirements: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in labels {
            requirements.push((key.clone(), format!("{key}={}", value.as_str().unwrap_or(""))));
        }
    }
    for expression in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = text(expression, "/key");
        let mut values: Vec<&str> = items(expression, "/values").iter().filter_map(Value::as_str).collect();
        values.sort_unstable();
        let values = values.join(",");
        let printed = match text(expression, "/operator") {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        requirements.push((key.to_string(), printed));
    }
    requirements.sort();
    requirements.into_iter().map(|(_, printed)| printed).collect::<Vec<_>>().join(",")
}

fn node_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let mut status: Vec<&str> = Vec::new();
    if let Some(ready) = items(object, "/status/conditions").iter().find(|c| text(c, "/type") == "Ready") {
        status.push(if text(ready, "/status") == "True" { "Ready" } else { "NotReady" });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if object.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = Vec::new();
    for (key, value) in object.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role);
            }
        } else if key == "kubernetes.io/role"
            && let Some(role) = value.as_str().filter(|r| !r.is_empty())
        {
            roles.push(role);
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let address = |kind: &str| {
        let found = items(object, "/status/addresses").iter().find(|a| text(a, "/type") == kind);
        or_none(found.map(|a| text(a, "/address")).unwrap_or(""))
    };
    let info = |field: &str| {
        let value = text(object, &format!("/status/nodeInfo/{field}"));
        if value.is_empty() { UNKNOWN.to_string() } else { value.to_string() }
    };
    vec![
        name(object),
        status.join(",").into(),
        or_none(&roles.join(",")).into(),
        age(object, now),
        text(object, "/status/nodeInfo/kubeletVersion").into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

fn condition_true(object: &Value, pointer: &str, kind: &str) -> bool {
    items(object, pointer).iter().any(|c| text(c, "/type") == kind && text(c, "/status") == "True")
}

/// The latest `lastState.terminated.finishedAt` among `statuses`, for "RESTARTS 2 (5m ago)".
fn last_restart(statuses: &[Value]) -> Option<Timestamp> {
    statuses.iter().filter_map(|s| parse_time(s.pointer("/lastState/terminated/finishedAt"))).max()
}

/// kube's printPod, minus sidecar (restartable init) containers: READY, STATUS and RESTARTS.
fn pod_row(pod: &Value, now: Timestamp) -> Vec<Value> {
    let total = items(pod, "/spec/containers").len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut reason = text(pod, "/status/phase").to_string();
    if !text(pod, "/status/reason").is_empty() {
        reason = text(pod, "/status/reason").to_string();
    }
    let scheduling_gated = items(pod, "/status/conditions").iter().any(|c| {
        text(c, "/type") == "PodScheduled" && text(c, "/status") == "False" && text(c, "/reason") == "SchedulingGated"
    });
    if scheduling_gated {
        reason = "SchedulingGated".into();
    }

    let init_statuses = items(pod, "/status/initContainerStatuses");
    let init_count = items(pod, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, status) in init_statuses.iter().enumerate() {
        restarts += int(status, "/restartCount");
        let terminated = status.pointer("/state/terminated");
        let waiting_reason = text(status, "/state/waiting/reason");
        match terminated {
            Some(t) if int(t, "/exitCode") == 0 => continue,
            Some(t) => {
                let why = text(t, "/reason");
                reason = if !why.is_empty() {
                    format!("Init:{why}")
                } else if int(t, "/signal") != 0 {
                    format!("Init:Signal:{}", int(t, "/signal"))
                } else {
                    format!("Init:ExitCode:{}", int(t, "/exitCode"))
                };
            }
            None if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" => {
                reason = format!("Init:{waiting_reason}");
            }
            None => reason = format!("Init:{i}/{init_count}"),
        }
        initializing = true;
        break;
    }

    let statuses = items(pod, "/status/containerStatuses");
    let mut last_restart_at = last_restart(init_statuses);
    if !initializing || condition_true(pod, "/status/conditions", "Initialized") {
        restarts = 0;
        last_restart_at = last_restart(statuses);
        let mut has_running = false;
        for status in statuses.iter().rev() {
            restarts += int(status, "/restartCount");
            let waiting = text(status, "/state/waiting/reason");
            let terminated = status.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let why = text(t, "/reason");
                reason = if !why.is_empty() {
                    why.to_string()
                } else if int(t, "/signal") != 0 {
                    format!("Signal:{}", int(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int(t, "/exitCode"))
                };
            } else if status.get("ready").and_then(Value::as_bool).unwrap_or(false)
                && status.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(pod, "/status/conditions", "Ready") { "Running" } else { "NotReady" }.into();
        }
    }

    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        let phase = text(pod, "/status/phase");
        if text(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }

    let restarts_cell = match last_restart_at {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now.duration_since(at))),
        _ => restarts.to_string(),
    };
    let gates = items(pod, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        NONE.to_string()
    } else {
        let met = gates.iter().filter(|g| condition_true(pod, "/status/conditions", text(g, "/conditionType"))).count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(pod),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now),
        or_none(text(pod, "/status/podIP")).into(),
        or_none(text(pod, "/spec/nodeName")).into(),
        or_none(text(pod, "/status/nominatedNodeName")).into(),
        gates_cell.into(),
    ]
}

fn strings_at<'a>(object: &'a Value, pointer: &str) -> Vec<&'a str> {
    items(object, pointer).iter().filter_map(Value::as_str).collect()
}

fn service_row(service: &Value, now: Timestamp) -> Vec<Value> {
    // The API server defaults the type; an object written before defaulting is a ClusterIP service.
    let kind = match text(service, "/spec/type") {
        "" => "ClusterIP",
        other => other,
    };
    let external_ips = strings_at(service, "/spec/externalIPs");
    let external = match kind {
        "ClusterIP" | "NodePort" => or_none(&external_ips.join(",")),
        "LoadBalancer" => {
            let mut all: Vec<&str> = items(service, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| [text(i, "/ip"), text(i, "/hostname")].into_iter().find(|s| !s.is_empty()))
                .collect();
            all.extend(external_ips);
            if all.is_empty() { "<pending>".into() } else { all.join(",") }
        }
        "ExternalName" => text(service, "/spec/externalName").to_string(),
        _ => UNKNOWN.into(),
    };
    let ports: Vec<String> = items(service, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = match text(p, "/protocol") {
                "" => "TCP",
                other => other,
            };
            match int(p, "/nodePort") {
                0 => format!("{}/{protocol}", int(p, "/port")),
                node_port => format!("{}:{node_port}/{protocol}", int(p, "/port")),
            }
        })
        .collect();
    vec![
        name(service),
        kind.into(),
        or_none(text(service, "/spec/clusterIP")).into(),
        external.into(),
        or_none(&ports.join(",")).into(),
        age(service, now),
        format_labels(service, "/spec/selector").into(),
    ]
}

/// The first three of `values` joined with commas, then `+ N more...` for the rest, as kube's printers list
/// endpoints and ports; `empty` when there are none.
fn first_three(values: impl Iterator<Item = String>, empty: &str) -> String {
    const MAX: usize = 3;
    let mut shown = Vec::new();
    let mut count = 0;
    for value in values {
        if shown.len() < MAX {
            shown.push(value);
        }
        count += 1;
    }
    match count {
        0 => empty.to_string(),
        _ if count > MAX => format!("{} + {} more...", shown.join(","), count - MAX),
        _ => shown.join(","),
    }
}

/// `ip:port` for up to three endpoints, then `+ N more...`, as kube's formatEndpoints.
fn endpoints_row(endpoints: &Value, now: Timestamp) -> Vec<Value> {
    let cell = first_three(
        items(endpoints, "/subsets").iter().flat_map(|subset| {
            let addresses: Vec<&str> = items(subset, "/addresses").iter().map(|a| text(a, "/ip")).collect();
            let ports: Vec<Option<i64>> = match items(subset, "/ports") {
                [] => vec![None],
                ports => ports.iter().map(|p| Some(int(p, "/port"))).collect(),
            };
            ports.into_iter().flat_map(move |port| {
                addresses.clone().into_iter().map(move |ip| match port {
                    None => ip.to_string(),
                    Some(port) if ip.contains(':') => format!("[{ip}]:{port}"),
                    Some(port) => format!("{ip}:{port}"),
                })
            })
        }),
        NONE,
    );
    vec![name(endpoints), cell.into(), age(endpoints, now)]
}

/// kube's printEndpointSlice: up to three ports (a port without a number by its name, or `*`) and
/// addresses, `<unset>` for none.
fn endpointslice_row(slice: &Value, now: Timestamp) -> Vec<Value> {
    const UNSET: &str = "<unset>";
    let ports = items(slice, "/ports").iter().map(|p| match p.get("port").and_then(Value::as_i64) {
        Some(port) => port.to_string(),
        None => p.get("name").and_then(Value::as_str).unwrap_or("*").to_string(),
    });
    let addresses = items(slice, "/endpoints").iter().flat_map(|e| strings_at(e, "/addresses")).map(str::to_string);
    vec![
        name(slice),
        text(slice, "/addressType").into(),
        first_three(ports, UNSET).into(),
        first_three(addresses, UNSET).into(),
        age(slice, now),
    ]
}

/// kube's printNetworkPolicy: the pod selector as `metav1.FormatLabelSelector` prints it, `<none>` when
/// empty (every pod of the namespace).
fn networkpolicy_row(policy: &Value, now: Timestamp) -> Vec<Value> {
    let selector = format_selector(policy.pointer("/spec/podSelector"));
    vec![name(policy), or_none(&selector).into(), age(policy, now)]
}

/// kube's printIngress: the class or `<none>`, the first three rule hosts (`*` for none, and Kubernetes'
/// `+ N more...`, which counts every rule past the third, host or not), the load balancer's addresses sorted and joined (never
/// shortened: the server prints as for `-o wide`), and `80, 443` when the Ingress has TLS.
fn ingress_row(ingress: &Value, now: Timestamp) -> Vec<Value> {
    const MAX_HOSTS: usize = 3;
    let class = ingress.pointer("/spec/ingressClassName").and_then(Value::as_str).unwrap_or(NONE);
    let rules = items(ingress, "/spec/rules");
    let (mut hosts, mut more) = (Vec::new(), false);
    for rule in rules {
        more |= hosts.len() == MAX_HOSTS;
        if !more && !text(rule, "/host").is_empty() {
            hosts.push(text(rule, "/host"));
        }
    }
    let hosts = match (hosts.is_empty(), more) {
        (true, _) => "*".to_string(),
        (false, false) => hosts.join(","),
        (false, true) => format!("{} + {} more...", hosts.join(","), rules.len() - MAX_HOSTS),
    };
    let addresses: std::collections::BTreeSet<&str> = items(ingress, "/status/loadBalancer/ingress")
        .iter()
        .map(|i| if text(i, "/ip").is_empty() { text(i, "/hostname") } else { text(i, "/ip") })
        .filter(|a| !a.is_empty())
        .collect();
    let addresses: Vec<&str> = addresses.into_iter().collect();
    let ports = if items(ingress, "/spec/tls").is_empty() { "80" } else { "80, 443" };
    vec![name(ingress), class.into(), hosts.into(), addresses.join(",").into(), ports.into(), age(ingress, now)]
}

/// kube's printIngressClass: the parameters as `Kind[.apiGroup]/name`.
fn ingressclass_row(class: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = class.pointer("/spec/parameters").filter(|p| p.is_object()).map(|p| {
        let group = p.get("apiGroup").and_then(Value::as_str).map(|g| format!(".{g}")).unwrap_or_default();
        format!("{}{group}/{}", text(p, "/kind"), text(p, "/name"))
    });
    let parameters = parameters.unwrap_or_else(|| NONE.to_string());
    vec![name(class), text(class, "/spec/controller").into(), parameters.into(), age(class, now)]
}

fn configmap_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let count = len_of(object, "/data") + len_of(object, "/binaryData");
    vec![name(object), count.into(), age(object, now)]
}

fn secret_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let count = len_of(object, "/data");
    vec![name(object), text(object, "/type").into(), count.into(), age(object, now)]
}

fn serviceaccount_row(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), len_of(object, "/secrets").into(), age(object, now)]
}

fn event_row(event: &Value, now: Timestamp) -> Vec<Value> {
    let first_seen = match parse_time(event.pointer("/firstTimestamp")) {
        Some(_) => since(event.pointer("/firstTimestamp"), now),
        None => since(event.pointer("/eventTime"), now),
    };
    let mut last_seen = match parse_time(event.pointer("/lastTimestamp")) {
        Some(_) => since(event.pointer("/lastTimestamp"), now),
        None => first_seen.clone(),
    };
    let mut count = int(event, "/count");
    if let Some(series) = event.get("series").filter(|s| s.is_object()) {
        last_seen = since(series.get("lastObservedTime"), now);
        count = int(series, "/count");
    } else if count == 0 {
        // Events of the events.k8s.io API leave the count of a single occurrence unset.
        count = 1;
    }
    let kind = text(event, "/involvedObject/kind").to_lowercase();
    let involved = text(event, "/involvedObject/name");
    let target = if involved.is_empty() { kind } else { format!("{kind}/{involved}") };
    let component = [text(event, "/source/component"), text(event, "/reportingComponent")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let instance = [text(event, "/source/host"), text(event, "/reportingInstance")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let source = match (component.is_empty(), instance.is_empty()) {
        (true, _) => String::new(),
        (false, true) => component.to_string(),
        (false, false) => format!("{component}, {instance}"),
    };
    vec![
        last_seen.into(),
        text(event, "/type").into(),
        text(event, "/reason").into(),
        target.into(),
        text(event, "/involvedObject/fieldPath").into(),
        source.into(),
        text(event, "/message").trim().into(),
        first_seen.into(),
        count.into(),
        name(event),
    ]
}

/// CONTAINERS, IMAGES and SELECTOR of a workload with a pod template.
fn template_cells(object: &Value) -> [Value; 3] {
    let containers = items(object, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    [names.join(",").into(), images.join(",").into(), format_selector(object.pointer("/spec/selector")).into()]
}

/// `spec.replicas`, which the API server defaults to 1.
fn desired_replicas(object: &Value) -> i64 {
    object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

fn deployment_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let ready = format!("{}/{}", int(object, "/status/readyReplicas"), desired_replicas(object));
    let mut row = vec![
        name(object),
        ready.into(),
        int(object, "/status/updatedReplicas").into(),
        int(object, "/status/availableReplicas").into(),
        age(object, now),
    ];
    row.extend(template_cells(object));
    row
}

fn replicaset_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let mut row = vec![
        name(object),
        desired_replicas(object).into(),
        int(object, "/status/replicas").into(),
        int(object, "/status/readyReplicas").into(),
        age(object, now),
    ];
    row.extend(template_cells(object));
    row
}

fn daemonset_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let mut row = vec![
        name(object),
        int(object, "/status/desiredNumberScheduled").into(),
        int(object, "/status/currentNumberScheduled").into(),
        int(object, "/status/numberReady").into(),
        int(object, "/status/updatedNumberScheduled").into(),
        int(object, "/status/numberAvailable").into(),
        format_labels(object, "/spec/template/spec/nodeSelector").into(),
        age(object, now),
    ];
    row.extend(template_cells(object));
    row
}

fn job_row(job: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int(job, "/status/succeeded");
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match int(job, "/spec/parallelism") {
            parallelism if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration =
        match (parse_time(job.pointer("/status/startTime")), parse_time(job.pointer("/status/completionTime"))) {
            (None, _) => String::new(),
            (Some(start), None) => human_duration(now.duration_since(start)),
            (Some(start), Some(end)) => human_duration(end.duration_since(start)),
        };
    let has = |kind| condition_true(job, "/status/conditions", kind);
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let mut row = vec![name(job), status.into(), completions.into(), duration.into(), age(job, now)];
    row.extend(template_cells(job));
    row
}

fn lease_row(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), text(object, "/spec/holderIdentity").into(), age(object, now)]
}

/// kubectl's CSR row: who asked, for how long, and `Approved,Issued`-style state (`Pending` before anyone
/// decided).
fn csr_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let requested = object
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map_or_else(|| "<none>".to_string(), |seconds| human_duration(jiff::SignedDuration::from_secs(seconds)));
    let conditions = object.pointer("/status/conditions").and_then(Value::as_array);
    let mut state: Vec<&str> =
        conditions.into_iter().flatten().filter_map(|c| c.get("type").and_then(Value::as_str)).collect();
    if state.is_empty() {
        state.push("Pending");
    }
    if object.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
        state.push("Issued");
    }
    vec![
        name(object),
        age(object, now),
        text(object, "/spec/signerName").into(),
        text(object, "/spec/username").into(),
        requested.into(),
        state.join(",").into(),
    ]
}

/// A (Cluster)RoleBinding's row: its role as `Kind/name`, and its subjects by kind.
fn binding_row(object: &Value, now: Timestamp) -> Vec<Value> {
    let subjects = object.get("subjects").and_then(Value::as_array);
    let of_kind = |kind: &str| {
        let names: Vec<String> = subjects
            .into_iter()
            .flatten()
            .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
            .map(|s| match (kind, s.get("namespace").and_then(Value::as_str)) {
                ("ServiceAccount", Some(ns)) => format!("{ns}/{}", text(s, "/name")),
                _ => text(s, "/name").to_string(),
            })
            .collect();
        Value::from(names.join(", "))
    };
    let role = format!("{}/{}", text(object, "/roleRef/kind"), text(object, "/roleRef/name"));
    vec![name(object), role.into(), age(object, now), of_kind("User"), of_kind("Group"), of_kind("ServiceAccount")]
}

fn runtimeclass_row(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), text(object, "/handler").into(), age(object, now)]
}

const HPA_REFERENCE_DESCRIPTION: &str = "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count.";
const HPA_TARGETS_DESCRIPTION: &str = "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).  The desired replica count is calculated multiplying the ratio between the target value and the current value by the current number of pods.  Ergo, metrics used must decrease as the pod count is increased, and vice-versa.  See the individual metric source types for more information about how each type of metric must respond. If not set, the default metric will be set to 80% average CPU utilization.";
const HPA_MIN_DESCRIPTION: &str = "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  Scaling is active as long as at least one metric value is available.";
const HPA_MAX_DESCRIPTION: &str = "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up. It cannot be less that minReplicas.";
const HPA_REPLICAS_DESCRIPTION: &str =
    "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.";

fn hpa_row(hpa: &Value, now: Timestamp) -> Vec<Value> {
    let reference = format!("{}/{}", text(hpa, "/spec/scaleTargetRef/kind"), text(hpa, "/spec/scaleTargetRef/name"));
    let min_pods = match hpa.pointer("/spec/minReplicas").and_then(Value::as_i64) {
        Some(min) => min.to_string(),
        None => "<unset>".to_string(),
    };
    vec![
        name(hpa),
        reference.into(),
        hpa_metrics(items(hpa, "/spec/metrics"), items(hpa, "/status/currentMetrics")).into(),
        min_pods.into(),
        int(hpa, "/spec/maxReplicas").into(),
        int(hpa, "/status/currentReplicas").into(),
        since(hpa.pointer("/metadata/creationTimestamp"), now).into(),
    ]
}

/// kubectl 1.33's `formatHPAMetrics`: `current/target` per metric (`cpu: 12%/50%`), the current value
/// of the status at the same index, at most two then `+ N more...`.
fn hpa_metrics(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return NONE.into();
    }
    // Go's `Quantity.String()`: the canonical form.
    let quantity = |value: Option<&Value>| {
        let text = value.and_then(Value::as_str).unwrap_or("0");
        crate::quantity::canonical(text).unwrap_or_else(|| text.to_string())
    };
    let has = |value: &Value, pointer: &str| value.pointer(pointer).is_some_and(|v| !v.is_null());
    let mut list = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        let current = |key: &str, pointer: &str| {
            status.filter(|s| has(s, &format!("/{key}"))).and_then(|s| s.pointer(&format!("/{key}{pointer}")))
        };
        let unknown = || UNKNOWN.to_string();
        let entry = match spec["type"].as_str().unwrap_or_default() {
            kind @ ("External" | "Object") => {
                let key = if kind == "External" { "external" } else { "object" };
                if has(spec, &format!("/{key}/target/averageValue")) {
                    let now = current(key, "/current/averageValue").map(|v| quantity(Some(v))).unwrap_or_else(unknown);
                    format!("{now}/{} (avg)", quantity(spec.pointer(&format!("/{key}/target/averageValue"))))
                } else {
                    let now = status
                        .filter(|s| has(s, &format!("/{key}")))
                        .map(|s| quantity(s.pointer(&format!("/{key}/current/value"))));
                    format!(
                        "{}/{}",
                        now.unwrap_or_else(unknown),
                        quantity(spec.pointer(&format!("/{key}/target/value")))
                    )
                }
            }
            "Pods" => {
                let now = status.filter(|s| has(s, "/pods")).map(|s| quantity(s.pointer("/pods/current/averageValue")));
                format!("{}/{}", now.unwrap_or_else(unknown), quantity(spec.pointer("/pods/target/averageValue")))
            }
            kind @ ("Resource" | "ContainerResource") => {
                let key = if kind == "Resource" { "resource" } else { "containerResource" };
                let resource = text(spec, &format!("/{key}/name"));
                if has(spec, &format!("/{key}/target/averageValue")) {
                    let now = status
                        .filter(|s| has(s, &format!("/{key}")))
                        .map(|s| quantity(s.pointer(&format!("/{key}/current/averageValue"))));
                    format!(
                        "{resource}: {}/{}",
                        now.unwrap_or_else(unknown),
                        quantity(spec.pointer(&format!("/{key}/target/averageValue")))
                    )
                } else {
                    let now = current(key, "/current/averageUtilization")
                        .and_then(Value::as_i64)
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(unknown);
                    let target = spec
                        .pointer(&format!("/{key}/target/averageUtilization"))
                        .and_then(Value::as_i64)
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(|| "<auto>".into());
                    format!("{resource}: {now}/{target}")
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    const SHOWN: usize = 2;
    if list.len() > SHOWN {
        let more = list.len() - SHOWN;
        return format!("{} + {more} more...", list[..SHOWN].join(", "));
    }
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    const NOW: &str = "2025-01-02T03:04:05Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn def(group: &str, plural: &str) -> &'static ResourceDef {
        resources::all().iter().find(|r| r.group == group && r.plural == plural).unwrap()
    }

    /// The table's single row as (column name, cell) pairs, after checking one cell per column.
    fn row(group: &str, plural: &str, object: Value) -> Vec<(String, Value)> {
        let table = table(def(group, plural), std::slice::from_ref(&object), json!({"resourceVersion": "7"}), now());
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
        let columns = table["columnDefinitions"].as_array().unwrap();
        let cells = table["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(columns.len(), cells.len(), "{plural}");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table["rows"][0]["object"]["metadata"], object["metadata"]);
        columns.iter().map(|c| c["name"].as_str().unwrap().to_string()).zip(cells.iter().cloned()).collect()
    }

    fn cell(row: &[(String, Value)], column: &str) -> Value {
        row.iter().find(|(name, _)| name == column).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{column}"))
    }

    #[test]
    fn hpas_print_targets_as_kubectl_1_33_does() {
        let hpa = json!({"metadata": {"name": "web", "creationTimestamp": "2025-01-02T03:03:05Z"}, "spec": {
        "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 10,
        "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1.5Gi"}}},
            {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
        ]},
        "status": {"currentReplicas": 3, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "60m"}}},
        ]}});
        let printed = row("autoscaling", "horizontalpodautoscalers", hpa);
        let names: Vec<&str> = printed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "Reference", "Targets", "MinPods", "MaxPods", "Replicas", "Age"]);
        assert_eq!(cell(&printed, "Reference"), "Deployment/web");
        assert_eq!(cell(&printed, "Targets"), "cpu: 12%/50%, memory: <unknown>/1536Mi + 1 more...");
        assert_eq!(
            (cell(&printed, "MinPods"), cell(&printed, "MaxPods"), cell(&printed, "Replicas")),
            (json!("1"), json!(10), json!(3))
        );
        assert_eq!(cell(&printed, "Age"), "60s");
        // A v1 object prints as the v2 object it stands for.
        let v1 = json!({"apiVersion": "autoscaling/v1", "metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        let v1_def = resources::find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let table = table(v1_def, &[v1], json!({}), now());
        assert_eq!(table["rows"][0]["cells"][2], "cpu: <unknown>/50%");
        assert_eq!(table["rows"][0]["cells"][3], "<unset>");
    }

    #[test]
    fn ingresses_print_class_hosts_address_and_ports_as_kubectl_does() {
        let ingress = json!({"metadata": {"name": "shop"}, "spec": {
            "ingressClassName": "skiff",
            "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}, {}, {"host": "d.example.com"}, {"host": "e.example.com"}],
            "tls": [{"secretName": "t"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.10"}, {"hostname": "lb.example.com"}]}}});
        let printed = row("networking.k8s.io", "ingresses", ingress);
        assert_eq!(cell(&printed, "Class"), "skiff");
        assert_eq!(cell(&printed, "Hosts"), "a.example.com,b.example.com,d.example.com + 2 more...");
        assert_eq!(cell(&printed, "Address"), "10.0.0.10,10.0.0.2,lb.example.com");
        assert_eq!(cell(&printed, "Ports"), "80, 443");
        let bare = row("networking.k8s.io", "ingresses", json!({"metadata": {"name": "d"}, "spec": {}}));
        assert_eq!(
            (cell(&bare, "Class"), cell(&bare, "Hosts"), cell(&bare, "Address")),
            (json!("<none>"), json!("*"), json!(""))
        );
        assert_eq!(cell(&bare, "Ports"), "80");
        let class = json!({"metadata": {"name": "skiff"}, "spec": {"controller": "skiff.dev/ingress",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
        let printed = row("networking.k8s.io", "ingressclasses", class);
        assert_eq!(cell(&printed, "Controller"), "skiff.dev/ingress");
        assert_eq!(cell(&printed, "Parameters"), "IngressParameters.k8s.example.com/external-lb");
    }

    #[test]
    fn every_resource_has_name_first_and_a_cell_per_column() {
        for def in resources::all() {
            let table = table(def, &[json!({"metadata": {"name": "x"}})], json!({}), now());
            let columns = table["columnDefinitions"].as_array().unwrap();
            assert_eq!(columns.len(), table["rows"][0]["cells"].as_array().unwrap().len(), "{}", def.plural);
            if def.plural != "events" {
                assert_eq!((&columns[0]["name"], &columns[0]["format"]), (&json!("Name"), &json!("name")));
            }
            assert!(columns.iter().any(|c| c["format"] == "name"));
        }
    }

    #[test]
    fn pod_columns() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": "2025-01-02T03:00:00Z", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-02T03:03:00Z"}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        let row = row("", "pods", pod.clone());
        let names: Vec<&str> = row.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(cell(&row, "Ready"), "1/2");
        assert_eq!(cell(&row, "Status"), "CrashLoopBackOff");
        assert_eq!(cell(&row, "Restarts"), "2 (65s ago)");
        assert_eq!(cell(&row, "Age"), "4m5s");
        assert_eq!(cell(&row, "IP"), "10.0.0.5");
        assert_eq!(cell(&row, "Nominated Node"), "<none>");

        let mut deleting = pod.clone();
        deleting["metadata"]["deletionTimestamp"] = json!(NOW);
        assert_eq!(cell(&self::row("", "pods", deleting), "Status"), "Terminating");

        let pending =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        let row = self::row("", "pods", pending);
        assert_eq!(
            (cell(&row, "Ready"), cell(&row, "Status"), cell(&row, "Restarts")),
            (json!("0/1"), json!("Pending"), json!("0"))
        );
        assert_eq!(cell(&row, "Age"), "<unknown>");

        let init = json!({"metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}});
        assert_eq!(cell(&self::row("", "pods", init), "Status"), "Init:0/1");

        let failed = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 3}}}]}});
        assert_eq!(cell(&self::row("", "pods", failed), "Status"), "ExitCode:3");
    }

    #[test]
    fn deployment_columns() {
        let deploy = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-12-31T03:04:05Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}, {"name": "d", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        let row = row("apps", "deployments", deploy);
        assert_eq!(cell(&row, "Ready"), "2/3");
        assert_eq!(cell(&row, "Up-to-date"), 3);
        assert_eq!(cell(&row, "Available"), 2);
        assert_eq!(cell(&row, "Age"), "2d");
        assert_eq!(cell(&row, "Containers"), "c,d");
        assert_eq!(cell(&row, "Images"), "nginx,busybox");
        assert_eq!(cell(&row, "Selector"), "app=web,tier in (a,b)");
    }

    #[test]
    fn small_resources() {
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cell(&row("", "configmaps", cm), "Data"), 3);
        let secret = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "AA=="}});
        let row_s = row("", "secrets", secret);
        assert_eq!((cell(&row_s, "Type"), cell(&row_s, "Data")), (json!("Opaque"), json!(1)));
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"b": "2", "a": "1"}}});
        let row_svc = row("", "services", svc);
        assert_eq!(cell(&row_svc, "Port(s)"), "80:30080/TCP,53/UDP");
        assert_eq!(cell(&row_svc, "External-IP"), "<none>");
        assert_eq!(cell(&row_svc, "Selector"), "a=1,b=2");
        let lb = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"}});
        assert_eq!(cell(&row("", "services", lb), "External-IP"), "<pending>");
        let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}, {"ip": "fd00::1"}, {"ip": "4.4.4.4"}], "ports": [{"port": 80}]}]});
        assert_eq!(cell(&row("", "endpoints", ep), "Endpoints"), "1.1.1.1:80,2.2.2.2:80,[fd00::1]:80 + 1 more...");
        assert_eq!(cell(&row("", "endpoints", json!({"metadata": {"name": "e"}})), "Endpoints"), "<none>");
        let headless = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "1.1.1.1"}]}]});
        assert_eq!(cell(&row("", "endpoints", headless), "Endpoints"), "1.1.1.1");
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "all"}, {"port": 53}, {"port": 54}],
            "endpoints": [{"addresses": ["10.42.0.1"]}, {"addresses": ["10.42.0.2"]}]});
        let row_slice = row("discovery.k8s.io", "endpointslices", slice);
        let names: Vec<&str> = row_slice.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "AddressType", "Ports", "Endpoints", "Age"]);
        assert_eq!(cell(&row_slice, "AddressType"), "IPv4");
        assert_eq!(cell(&row_slice, "Ports"), "8080,all,53 + 1 more...");
        assert_eq!(cell(&row_slice, "Endpoints"), "10.42.0.1,10.42.0.2");
        let empty = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": []});
        let row_empty = row("discovery.k8s.io", "endpointslices", empty);
        assert_eq!((cell(&row_empty, "Ports"), cell(&row_empty, "Endpoints")), (json!("<unset>"), json!("<unset>")));
        let node = json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"},
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}]}});
        let row_node = row("", "nodes", node);
        assert_eq!(cell(&row_node, "Status"), "Ready,SchedulingDisabled");
        assert_eq!(cell(&row_node, "Roles"), "control-plane");
        assert_eq!(cell(&row_node, "Internal-IP"), "192.168.1.2");
        assert_eq!(cell(&row_node, "External-IP"), "<none>");
        assert_eq!(cell(&row_node, "OS-Image"), "<unknown>");
        let job = json!({"metadata": {"name": "j"}, "spec": {"completions": 2},
            "status": {"succeeded": 2, "startTime": "2025-01-02T03:00:00Z", "completionTime": "2025-01-02T03:00:30Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        let row_job = row("batch", "jobs", job);
        assert_eq!(
            (cell(&row_job, "Status"), cell(&row_job, "Completions"), cell(&row_job, "Duration")),
            (json!("Complete"), json!("2/2"), json!("30s"))
        );
        let event = json!({"metadata": {"name": "ev1"}, "type": "Normal", "reason": "Scheduled", "message": " assigned \n",
            "involvedObject": {"kind": "Pod", "name": "web-1"}, "source": {"component": "scheduler"},
            "firstTimestamp": "2025-01-02T03:04:00Z"});
        let row_ev = row("", "events", event);
        assert_eq!(cell(&row_ev, "Last Seen"), "5s");
        assert_eq!(cell(&row_ev, "Object"), "pod/web-1");
        assert_eq!(cell(&row_ev, "Message"), "assigned");
        assert_eq!(cell(&row_ev, "Count"), 1);
        assert_eq!(cell(&row_ev, "Source"), "scheduler");
        let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}});
        assert_eq!(cell(&row("coordination.k8s.io", "leases", lease), "Holder"), "me");
    }

    #[test]
    fn network_policy_columns() {
        let policy = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {"matchLabels": {"role": "db"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}}});
        let row_policy = row("networking.k8s.io", "networkpolicies", policy);
        let names: Vec<&str> = row_policy.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "Pod-Selector", "Age"]);
        assert_eq!(cell(&row_policy, "Pod-Selector"), "role=db,tier notin (web)");
        let every_pod = json!({"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}}});
        assert_eq!(cell(&row("networking.k8s.io", "networkpolicies", every_pod), "Pod-Selector"), "<none>");
    }

    #[test]
    fn limit_ranges_show_their_creation_time_as_kube_apiserver_s_default_table() {
        let range =
            json!({"metadata": {"name": "mem", "namespace": "default", "creationTimestamp": "2025-01-02T03:00:00Z"}});
        let row = row("", "limitranges", range);
        assert_eq!(row, [("Name".into(), json!("mem")), ("Created At".into(), json!("2025-01-02T03:00:00Z"))]);
        let table = table(def("", "limitranges"), &[json!({"metadata": {"name": "new"}})], json!({}), now());
        assert_eq!(table["columnDefinitions"][1]["type"], "date");
        assert_eq!(table["rows"][0]["cells"][1], "0001-01-01T00:00:00Z");
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600 + 59, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (8 * 86400, "8d"),
            (2 * 365 * 86400, "2y"),
            (3 * 365 * 86400 + 12 * 86400, "3y12d"),
            (9 * 365 * 86400 + 12 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(SignedDuration::from_secs(seconds)), expected, "{seconds}s");
        }
        assert_eq!(human_duration(SignedDuration::from_millis(-1500)), "0s");
    }
}
