//! Kubernetes' validation rules for the resources Skiff serves, with Kubernetes' own field paths, reasons
//! and messages, so `kubectl` prints what a real cluster would print.
//!
//! Objects arrive already normalized (round-tripped through their k8s-openapi type), so shapes are right
//! and only values are checked here. [`unknown_fields`] is the separate check behind `fieldValidation`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use base64::Engine;
use serde_json::{Map, Value};

use crate::resources::ResourceDef;

mod ingress;

/// One invalid field, as a Kubernetes `StatusCause`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ... (Kubernetes' `CauseType` strings).
    pub reason: &'static str,
    /// The message without the field, e.g. `Required value`.
    pub message: String,
    /// Dotted path with indexes and keys: `spec.template.spec.containers[0].image`, `data[a b]`.
    pub field: String,
}

/// Validates `object` (already normalized, with metadata.name set) of resource `def`; with `old`, also the
/// update rules (immutable fields).
pub fn validate(def: &ResourceDef, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    if !def.is_storage() {
        // Kubernetes validates its internal version, whatever version a client wrote; the storage version
        // stands in for it. An object that does not convert is refused on its way to the store, with the
        // conversion's error.
        let stored = def.to_storage(object.clone());
        let stored_old = old.map(|o| def.to_storage(o.clone())).transpose();
        return match (stored, stored_old) {
            (Ok(stored), Ok(stored_old)) => validate(def.storage(), &stored, stored_old.as_ref()),
            _ => Vec::new(),
        };
    }
    let mut e = Errors::default();
    validate_metadata(&mut e, def, object);
    match def.kind {
        "Pod" => {
            if let Some(spec) = get(object, "spec") {
                validate_pod_spec(&mut e, spec, "spec", &["Always", "OnFailure", "Never"]);
            } else {
                e.required("spec.containers", "");
            }
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" => validate_workload(&mut e, def.kind, object),
        "Job" => validate_job(&mut e, object),
        "Service" => validate_service(&mut e, object),
        "ConfigMap" => validate_config_map(&mut e, object),
        "LimitRange" => validate_limit_range(&mut e, object),
        "Secret" => validate_secret(&mut e, object),
        "Endpoints" => validate_endpoints(&mut e, object),
        "EndpointSlice" => validate_endpoint_slice(&mut e, object),
        "NetworkPolicy" => validate_network_policy(&mut e, object),
        "Ingress" => ingress::validate_ingress(&mut e, object, old),
        "IngressClass" => ingress::validate_ingress_class(&mut e, object, old),
        "RuntimeClass" => validate_runtime_class(&mut e, object),
        "Lease" => validate_lease(&mut e, object),
        "Event" => validate_event(&mut e, object),
        "HorizontalPodAutoscaler" => e.0.extend(crate::autoscaling::validate(object)),
        // Namespace, Node, ServiceAccount: Kubernetes checks only their metadata.
        _ => {}
    }
    if let Some(old) = old {
        validate_metadata_update(&mut e, object, old);
        match def.kind {
            "Pod" => validate_pod_update(&mut e, object, old),
            "Deployment" | "ReplicaSet" | "DaemonSet" => immutable(&mut e, object, old, &["spec", "selector"]),
            "Job" => {
                immutable(&mut e, object, old, &["spec", "selector"]);
                immutable(&mut e, object, old, &["spec", "template"]);
            }
            "Service" => validate_service_update(&mut e, object, old),
            "ConfigMap" => validate_immutable_data(&mut e, object, old, &["data", "binaryData"]),
            "Secret" => {
                validate_immutable_data(&mut e, object, old, &["data", "stringData"]);
                let secret_type = |o: &Value| Value::from(get_str(o, "type").unwrap_or("Opaque"));
                if secret_type(object) != secret_type(old) {
                    e.invalid("type", secret_type(object), IMMUTABLE);
                }
            }
            "RuntimeClass" => immutable(&mut e, object, old, &["handler"]),
            "EndpointSlice" => immutable(&mut e, object, old, &["addressType"]),
            _ => {}
        }
    }
    e.0
}

/// Fields of `object` that the kind's schema does not know, as dotted paths like "spec.replicaz" or
/// "spec.template.spec.containers[0].imagez" (what Kubernetes prints as `unknown field "spec.replicaz"`),
/// for fieldValidation=Strict|Warn. `normalized` is `object` after [`ResourceDef::normalize`], whose typed
/// round-trip drops exactly the unknown fields; the caller has it already, so it is not computed twice.
pub fn unknown_fields(object: &Value, normalized: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    collect_unknown(object, normalized, "", &mut unknown);
    unknown
}

/// Keys whose values are free-form maps (any key is valid) or opaque JSON: never descended into.
const FREE_FORM: &[&str] =
    &["labels", "annotations", "data", "stringData", "binaryData", "nodeSelector", "matchLabels", "managedFields"];

fn collect_unknown(input: &Value, normalized: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, normalized) {
        (Value::Object(input), Value::Object(normalized)) => {
            for (key, value) in input {
                // The typed round-trip drops nulls, so a null says nothing about whether the key is known.
                if value.is_null() {
                    continue;
                }
                let child = child(path, key);
                match normalized.get(key) {
                    None => unknown.push(child),
                    Some(_) if FREE_FORM.contains(&key.as_str()) => {}
                    Some(known) => collect_unknown(value, known, &child, unknown),
                }
            }
        }
        (Value::Array(input), Value::Array(normalized)) => {
            for (i, (value, known)) in input.iter().zip(normalized).enumerate() {
                collect_unknown(value, known, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const QUANTITY_FMT: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";
const IMMUTABLE: &str = "field is immutable";
/// Kubernetes caps all annotations of one object together at 256 KiB, to keep objects storable in etcd.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;
/// ConfigMaps and Secrets are capped at 1 MiB of data: they are mounted into every pod that uses them.
const DATA_MAX_BYTES: usize = 1024 * 1024;
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn is_label_chars(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && !first.is_ascii_uppercase()
                && last.is_ascii_alphanumeric()
                && !last.is_ascii_uppercase()
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= DNS1123_LABEL_MAX && is_label_chars(s)
}

/// A lowercase RFC 1123 subdomain: dot-separated labels, at most 253 characters in all.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_label_chars)
}

/// The DNS-1035 label pattern `[a-z]([-a-z0-9]*[a-z0-9])?`, length aside.
fn is_dns1035_chars(s: &str) -> bool {
    is_label_chars(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// Kubernetes' `RegexError`: the description, examples and the regex, in its exact wording.
fn regex_error(message: &str, fmt: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!("{message} (e.g. {}regex used for validation is '{fmt}')", examples.join(" or "))
}

fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errors.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_label_chars(s) {
        errors.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errors
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !s.split('.').all(is_label_chars) {
        errors.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errors
}

/// Kubernetes' `IsValidPathSegmentName`: any name that can be one segment of a URL path.
pub fn path_segment_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s == "." || s == ".." {
        errors.push(format!("may not be '{s}'"));
    }
    for forbidden in ["/", "%"] {
        if s.contains(forbidden) {
            errors.push(format!("may not contain '{forbidden}'"));
        }
    }
    errors
}

fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errors.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_dns1035_chars(s) {
        errors.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errors
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, also the shape of a non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Kubernetes' `IsQualifiedName`: label keys, annotation keys, `[prefix/]name`.
fn qualified_name_errors(s: &str) -> Vec<String> {
    let name_regex = || regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"]);
    let mut errors = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else {
                errors.extend(dns1123_subdomain_errors(prefix).into_iter().map(|m| format!("prefix part {m}")));
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                name_regex()
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else if name.len() > DNS1123_LABEL_MAX {
        errors.push(format!("name part {}", max_len_error(DNS1123_LABEL_MAX)));
    }
    if !is_qualified_name_part(name) {
        errors.push(format!("name part {}", name_regex()));
    }
    errors
}

fn label_value_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errors.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !(s.is_empty() || is_qualified_name_part(s)) {
        errors.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

/// Kubernetes' `IsConfigMapKey`, for ConfigMap and Secret data keys.
fn config_key_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        errors.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    // Keys become file names in volumes, so they must not climb out of the mount directory.
    if s == "." {
        errors.push("must not be '.'".to_string());
    } else if s == ".." {
        errors.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        errors.push("must not start with '..'".to_string());
    }
    errors
}

/// Kubernetes' `IsValidPortName` (IANA service names), for named container ports and targetPorts.
fn port_name_errors(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > 15 {
        errors.push("must be no more than 15 characters".to_string());
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        errors.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string());
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".to_string());
    }
    if s.contains("--") {
        errors.push("must not contain consecutive hyphens".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errors.push("must not begin or end with a hyphen".to_string());
    }
    errors
}

fn valid_port(n: i64) -> bool {
    (1..=65535).contains(&n)
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `2e3`) into a number: exact enough for comparisons and
/// for limits (an f64 holds byte counts up to 8 PiB exactly).
pub fn parse_quantity(s: &str) -> Option<f64> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    let mantissa: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse().ok()?)
        }
    };
    let value = mantissa * scale;
    Some(if negative { -value } else { value })
}

/// Collects causes with Kubernetes' wording per reason.
#[derive(Default)]
struct Errors(Vec<Cause>);

impl Errors {
    fn push(&mut self, reason: &'static str, field: impl Into<String>, message: String) {
        self.0.push(Cause { reason, message, field: field.into() });
    }

    fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message =
            if detail.is_empty() { "Required value".to_string() } else { format!("Required value: {detail}") };
        self.push("FieldValueRequired", field, message);
    }

    fn invalid(&mut self, field: impl Into<String>, value: impl Into<Value>, detail: &str) {
        self.push("FieldValueInvalid", field, format!("Invalid value: {}: {detail}", value.into()));
    }

    fn invalid_each(&mut self, field: &str, value: &str, details: Vec<String>) {
        for detail in details {
            self.invalid(field, value, &detail);
        }
    }

    fn not_supported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| Value::from(*s).to_string()).collect();
        let message = format!("Unsupported value: {}: supported values: {}", Value::from(value), supported.join(", "));
        self.push("FieldValueNotSupported", field, message);
    }

    fn duplicate(&mut self, field: impl Into<String>, value: &str) {
        self.push("FieldValueDuplicate", field, format!("Duplicate value: {}", Value::from(value)));
    }

    fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {detail}"));
    }

    fn too_many(&mut self, field: impl Into<String>, count: usize, max: usize) {
        self.push("FieldValueTooMany", field, format!("Too many: {count}: must have at most {max} items"));
    }

    fn too_long(&mut self, field: impl Into<String>, max: usize) {
        self.push("FieldValueTooLong", field, format!("Too long: may not be more than {max} bytes"));
    }

    fn non_negative(&mut self, object: &Value, key: &str, path: &str) {
        if let Some(n) = get_i64(object, key)
            && n < 0
        {
            self.invalid(child(path, key), n, "must be greater than or equal to 0");
        }
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn get<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn get_str<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn get_i64(object: &Value, key: &str) -> Option<i64> {
    object.get(key).and_then(Value::as_i64)
}

fn get_map<'a>(object: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    object.get(key).and_then(Value::as_object)
}

fn get_array<'a>(object: &'a Value, key: &str) -> &'a [Value] {
    object.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(object, |value, key| get(value, key))
}

/// Kubernetes compares with `Semantic.DeepEqual`, which holds a missing, null, empty list and empty map
/// equal; the typed round-trip keeps `[]` and `{}` that a client sent, so plain `==` would differ.
fn semantic_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    match (a, b) {
        _ if empty(a) && empty(b) => true,
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            a.keys().chain(b.keys()).all(|k| semantic_eq(a.get(k), b.get(k)))
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| semantic_eq(Some(x), Some(y)))
        }
        _ => a == b,
    }
}

fn immutable(e: &mut Errors, object: &Value, old: &Value, path: &[&str]) {
    let new_value = at(object, path);
    if !semantic_eq(new_value, at(old, path)) {
        e.invalid(path.join("."), new_value.cloned().unwrap_or(Value::Null), IMMUTABLE);
    }
}

fn validate_metadata(e: &mut Errors, def: &ResourceDef, object: &Value) {
    let empty = Value::Null;
    let metadata = get(object, "metadata").unwrap_or(&empty);
    match get_str(metadata, "name").filter(|n| !n.is_empty()) {
        None => e.required("metadata.name", "name or generateName is required"),
        Some(name) => {
            let errors = match def.kind {
                "Namespace" => dns1123_label_errors(name),
                "Service" => dns1035_label_errors(name),
                // RBAC names are path segments, so `system:node` and the like are valid.
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => path_segment_errors(name),
                _ => dns1123_subdomain_errors(name),
            };
            e.invalid_each("metadata.name", name, errors);
        }
    }
    // Cluster-scoped objects lose their namespace before storage, as in Kubernetes' BeforeCreate.
    if def.namespaced
        && let Some(namespace) = get_str(metadata, "namespace").filter(|n| !n.is_empty())
    {
        e.invalid_each("metadata.namespace", namespace, dns1123_label_errors(namespace));
    }
    validate_labels(e, get_map(metadata, "labels"), "metadata.labels");
    validate_annotations(e, get_map(metadata, "annotations"), "metadata.annotations");
}

fn validate_labels(e: &mut Errors, labels: Option<&Map<String, Value>>, path: &str) {
    for (key, value) in labels.into_iter().flatten() {
        e.invalid_each(path, key, qualified_name_errors(key));
        if let Some(value) = value.as_str() {
            e.invalid_each(path, value, label_value_errors(value));
        }
    }
}

fn validate_annotations(e: &mut Errors, annotations: Option<&Map<String, Value>>, path: &str) {
    let mut total = 0;
    for (key, value) in annotations.into_iter().flatten() {
        e.invalid_each(path, key, qualified_name_errors(&key.to_ascii_lowercase()));
        total += key.len() + value.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        e.too_long(path, ANNOTATIONS_MAX_BYTES);
    }
}

fn validate_metadata_update(e: &mut Errors, object: &Value, old: &Value) {
    for key in ["name", "namespace", "uid", "creationTimestamp"] {
        // An absent value is one the server carries over from the stored object, not a change.
        let Some(new_value) = at(object, &["metadata", key]).filter(|v| v.as_str() != Some("")) else {
            continue;
        };
        if at(old, &["metadata", key]) != Some(new_value) {
            e.invalid(format!("metadata.{key}"), new_value.clone(), IMMUTABLE);
        }
    }
}

/// Validates a PodSpec at `path`; `restart_policies` are the values its owner allows (a missing policy
/// defaults to `Always`, as Kubernetes' defaulting does before validation).
fn validate_pod_spec(e: &mut Errors, spec: &Value, path: &str, restart_policies: &[&str]) {
    let mut volumes = HashSet::new();
    for (i, volume) in get_array(spec, "volumes").iter().enumerate() {
        let name_path = format!("{path}.volumes[{i}].name");
        match get_str(volume, "name").filter(|n| !n.is_empty()) {
            None => e.required(name_path, ""),
            Some(name) if !is_dns1123_label(name) => e.invalid_each(&name_path, name, dns1123_label_errors(name)),
            Some(name) if !volumes.insert(name) => e.duplicate(name_path, name),
            Some(_) => {}
        }
    }

    let containers = get_array(spec, "containers");
    if containers.is_empty() {
        e.required(child(path, "containers"), "");
    }
    let mut names = HashSet::new();
    for (list, items) in [("initContainers", get_array(spec, "initContainers")), ("containers", containers)] {
        for (i, container) in items.iter().enumerate() {
            validate_container(e, container, &format!("{path}.{list}[{i}]"), &mut names);
        }
    }

    let policy = get_str(spec, "restartPolicy").filter(|p| !p.is_empty()).unwrap_or("Always");
    if !restart_policies.contains(&policy) {
        e.not_supported(child(path, "restartPolicy"), policy, restart_policies);
    }
    if let Some(policy) = get_str(spec, "dnsPolicy").filter(|p| !p.is_empty()) {
        let supported = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !supported.contains(&policy) {
            e.not_supported(child(path, "dnsPolicy"), policy, &supported);
        }
    }
    validate_labels(e, get_map(spec, "nodeSelector"), &child(path, "nodeSelector"));
    if let Some(seconds) = get_i64(spec, "activeDeadlineSeconds")
        && seconds < 1
    {
        e.invalid(child(path, "activeDeadlineSeconds"), seconds, "must be between 1 and 2147483647, inclusive");
    }
    // A pod in a user namespace of its own shares none of the host's namespaces (Kubernetes'
    // `validateHostUsers`, field names as it writes them).
    if spec.get("hostUsers").and_then(Value::as_bool) == Some(false) {
        for (field, name) in [("hostNetwork", "hostNetwork"), ("hostPID", "HostPID"), ("hostIPC", "HostIPC")] {
            if spec.get(field).and_then(Value::as_bool) == Some(true) {
                e.forbidden(child(path, name), "when `pod.Spec.HostUsers` is false");
            }
        }
    }
}

/// `names` is shared by init and regular containers: Kubernetes wants them unique across both.
fn validate_container<'a>(e: &mut Errors, container: &'a Value, path: &str, names: &mut HashSet<&'a str>) {
    let name_path = child(path, "name");
    match get_str(container, "name").filter(|n| !n.is_empty()) {
        None => e.required(name_path, ""),
        Some(name) if !is_dns1123_label(name) => e.invalid_each(&name_path, name, dns1123_label_errors(name)),
        Some(name) if !names.insert(name) => e.duplicate(name_path, name),
        Some(_) => {}
    }
    match get_str(container, "image").filter(|i| !i.is_empty()) {
        None => e.required(child(path, "image"), ""),
        Some(image) if image.trim() != image => {
            e.invalid(child(path, "image"), image, "must not have leading or trailing whitespace");
        }
        Some(_) => {}
    }

    let mut port_names = HashSet::new();
    for (i, port) in get_array(container, "ports").iter().enumerate() {
        let port_path = format!("{path}.ports[{i}]");
        if let Some(name) = get_str(port, "name").filter(|n| !n.is_empty()) {
            let errors = port_name_errors(name);
            if !errors.is_empty() {
                e.invalid_each(&child(&port_path, "name"), name, errors);
            } else if !port_names.insert(name) {
                e.duplicate(child(&port_path, "name"), name);
            }
        }
        match get_i64(port, "containerPort").unwrap_or(0) {
            0 => e.required(child(&port_path, "containerPort"), ""),
            n if !valid_port(n) => e.invalid(child(&port_path, "containerPort"), n, PORT_RANGE),
            _ => {}
        }
        if let Some(n) = get_i64(port, "hostPort")
            && n != 0
            && !valid_port(n)
        {
            e.invalid(child(&port_path, "hostPort"), n, PORT_RANGE);
        }
        validate_protocol(e, port, &port_path);
    }

    for (i, mount) in get_array(container, "volumeMounts").iter().enumerate() {
        let mount_path = format!("{path}.volumeMounts[{i}]");
        if get_str(mount, "name").is_none_or(str::is_empty) {
            e.required(child(&mount_path, "name"), "");
        }
        if get_str(mount, "mountPath").is_none_or(str::is_empty) {
            e.required(child(&mount_path, "mountPath"), "");
        }
    }

    if let Some(resources) = get(container, "resources") {
        validate_resources(e, resources, &child(path, "resources"));
    }
}

fn validate_protocol(e: &mut Errors, port: &Value, path: &str) {
    // A missing protocol is defaulted to TCP; only a value someone wrote can be wrong.
    if let Some(protocol) = get_str(port, "protocol")
        && !PROTOCOLS.contains(&protocol)
    {
        e.not_supported(child(path, "protocol"), protocol, PROTOCOLS);
    }
}

fn quantity_text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn validate_resources(e: &mut Errors, resources: &Value, path: &str) {
    let parsed = |e: &mut Errors, list: &str| -> Vec<(String, String, Option<f64>)> {
        let mut out = Vec::new();
        for (name, value) in get_map(resources, list).into_iter().flatten() {
            let field = format!("{path}.{list}[{name}]");
            let is_standard = matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("hugepages-")
                || name.contains('/');
            if !is_standard {
                e.invalid(&*field, name.as_str(), "must be a standard resource for containers");
            } else if name.contains('/') {
                e.invalid_each(&field, name, qualified_name_errors(name));
            }
            let text = quantity_text(value);
            let quantity = parse_quantity(&text);
            match quantity {
                None => e.invalid(
                    &*field,
                    text.as_str(),
                    &format!("quantities must match the regular expression '{QUANTITY_FMT}'"),
                ),
                Some(q) if q < 0.0 => e.invalid(&*field, text.as_str(), "must be greater than or equal to 0"),
                Some(_) => {}
            }
            out.push((name.clone(), text, quantity));
        }
        out
    };
    let limits = parsed(e, "limits");
    let requests = parsed(e, "requests");
    for (name, text, request) in &requests {
        let limit = limits.iter().find(|(limit_name, _, _)| limit_name == name);
        if let (Some(request), Some((_, limit_text, Some(limit)))) = (request, limit)
            && request > limit
        {
            let detail = format!("must be less than or equal to {name} limit of {limit_text}");
            e.invalid(format!("{path}.requests[{name}]"), text.as_str(), &detail);
        }
    }
}

/// Validates a LabelSelector's syntax; returns whether it is well formed (so matching it means something).
fn validate_selector(e: &mut Errors, selector: &Value, path: &str) -> bool {
    let before = e.0.len();
    validate_labels(e, get_map(selector, "matchLabels"), &child(path, "matchLabels"));
    for (i, requirement) in get_array(selector, "matchExpressions").iter().enumerate() {
        let requirement_path = format!("{path}.matchExpressions[{i}]");
        let has_values = !get_array(requirement, "values").is_empty();
        match get_str(requirement, "operator").unwrap_or("") {
            "In" | "NotIn" if !has_values => {
                e.required(child(&requirement_path, "values"), "must be specified when `operator` is 'In' or 'NotIn'")
            }
            "Exists" | "DoesNotExist" if has_values => e.forbidden(
                child(&requirement_path, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => e.invalid(child(&requirement_path, "operator"), other, "not a valid selector operator"),
        }
        let key = get_str(requirement, "key").unwrap_or("");
        e.invalid_each(&child(&requirement_path, "key"), key, qualified_name_errors(key));
    }
    e.0.len() == before
}

/// Whether a well-formed LabelSelector selects an object with `labels`.
fn selector_matches(selector: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let match_labels = get_map(selector, "matchLabels")
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key).is_some_and(|v| Some(v) == value.as_str()));
    match_labels
        && get_array(selector, "matchExpressions").iter().all(|requirement| {
            let value = label(get_str(requirement, "key").unwrap_or(""));
            let values = get_array(requirement, "values");
            let listed = value.is_some_and(|v| values.iter().any(|x| x.as_str() == Some(v)));
            match get_str(requirement, "operator").unwrap_or("") {
                "In" => listed,
                "NotIn" => !listed,
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

fn is_empty_selector(selector: &Value) -> bool {
    get_map(selector, "matchLabels").is_none_or(Map::is_empty) && get_array(selector, "matchExpressions").is_empty()
}

/// Validates `spec.template` of a controller: labels, annotations, and the pod spec with the owner's
/// allowed restart policies. Returns the template's labels for selector matching.
fn validate_template<'a>(e: &mut Errors, spec: &'a Value, restart_policies: &[&str]) -> Option<&'a Map<String, Value>> {
    let Some(template) = get(spec, "template").filter(|t| get(t, "spec").is_some()) else {
        e.required("spec.template", "");
        return None;
    };
    // Kubernetes reports template metadata at `spec.template.labels`, without `metadata`.
    let labels = at(template, &["metadata", "labels"]).and_then(Value::as_object);
    validate_labels(e, labels, "spec.template.labels");
    validate_annotations(
        e,
        at(template, &["metadata", "annotations"]).and_then(Value::as_object),
        "spec.template.annotations",
    );
    if let Some(pod_spec) = get(template, "spec") {
        validate_pod_spec(e, pod_spec, "spec.template.spec", restart_policies);
    }
    labels
}

fn validate_workload(e: &mut Errors, kind: &str, object: &Value) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    if kind != "DaemonSet" {
        e.non_negative(spec, "replicas", "spec");
    }
    e.non_negative(spec, "minReadySeconds", "spec");
    e.non_negative(spec, "revisionHistoryLimit", "spec");

    // The typed round-trip turns a missing selector into `{}` (the field is required in k8s-openapi), so
    // an empty selector is reported the way Kubernetes reports a missing one.
    let selector = get(spec, "selector").filter(|s| !is_empty_selector(s));
    let selector_ok = match selector {
        None => {
            e.required("spec.selector", "");
            false
        }
        Some(selector) => validate_selector(e, selector, "spec.selector"),
    };

    let labels = validate_template(e, spec, &["Always"]);
    if let (true, Some(selector)) = (selector_ok, selector)
        && at(spec, &["template", "spec"]).is_some()
        && !selector_matches(selector, labels)
    {
        let labels = labels.map_or(Value::Null, |l| Value::Object(l.clone()));
        e.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`");
    }
    if at(spec, &["template", "spec", "activeDeadlineSeconds"]).is_some() {
        let owner = if kind == "DaemonSet" { "DaemonSet" } else { "ReplicaSet" };
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            &format!("activeDeadlineSeconds in {owner} is not Supported"),
        );
    }
}

fn validate_job(e: &mut Errors, object: &Value) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    for key in ["parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished"] {
        e.non_negative(spec, key, "spec");
    }
    // The server generates the selector of a Job without manualSelector, so it may be missing here.
    let selector = get(spec, "selector");
    let selector_ok = selector.is_some_and(|s| validate_selector(e, s, "spec.selector"));
    let labels = validate_template(e, spec, &["OnFailure", "Never"]);
    if let (true, Some(selector)) = (selector_ok, selector)
        && !is_empty_selector(selector)
        && at(spec, &["template", "spec"]).is_some()
        && !selector_matches(selector, labels)
    {
        let labels = labels.map_or(Value::Null, |l| Value::Object(l.clone()));
        e.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`");
    }
}

fn validate_service(e: &mut Errors, object: &Value) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    let service_type = get_str(spec, "type").filter(|t| !t.is_empty()).unwrap_or("ClusterIP");
    let supported = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !supported.contains(&service_type) {
        e.not_supported("spec.type", service_type, &supported);
    }
    let cluster_ip = get_str(spec, "clusterIP").unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = get_array(spec, "ports");
    if ports.is_empty() && !headless && service_type != "ExternalName" {
        e.required("spec.ports", "");
    }

    if service_type == "ExternalName" {
        if !cluster_ip.is_empty() {
            e.forbidden("spec.clusterIP", "may not be set for ExternalName services");
        }
        match get_str(spec, "externalName").filter(|n| !n.is_empty()) {
            None => e.required("spec.externalName", ""),
            Some(name) => e.invalid_each("spec.externalName", name, dns1123_subdomain_errors(name)),
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<IpAddr>().is_err() {
        e.invalid("spec.clusterIP", cluster_ip, "must be empty, 'None', or a valid IP address");
    }
    // The proxy and the DNS take a Service's addresses from `clusterIPs`: it may only repeat `clusterIP`
    // (reserved for this Service) and add one of the other family, as Kubernetes' dual-stack rules say.
    let cluster_ips = get_array(spec, "clusterIPs");
    if service_type == "ExternalName" && !cluster_ips.is_empty() {
        e.forbidden("spec.clusterIPs", "may not be set for ExternalName services");
    }
    if let Some(first) = cluster_ips.first().and_then(Value::as_str)
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        e.invalid("spec.clusterIPs[0]", first, "must match `clusterIP`");
    }
    let family = |ip: &Value| ip.as_str().and_then(|ip| ip.parse::<IpAddr>().ok()).map(|ip| ip.is_ipv4());
    if cluster_ips.len() > 2 || (cluster_ips.len() == 2 && family(&cluster_ips[0]) == family(&cluster_ips[1])) {
        let second = cluster_ips.get(1).and_then(Value::as_str).unwrap_or_default();
        e.invalid("spec.clusterIPs[1]", second, "may not have more than one IP of each family");
    }

    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match get_str(port, "name").filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => e.required(child(&path, "name"), ""),
            None => {}
            Some(name) => {
                e.invalid_each(&child(&path, "name"), name, dns1123_label_errors(name));
                if !names.insert(name) {
                    e.duplicate(child(&path, "name"), name);
                }
            }
        }
        let number = get_i64(port, "port").unwrap_or(0);
        if !valid_port(number) {
            e.invalid(child(&path, "port"), number, PORT_RANGE);
        }
        validate_protocol(e, port, &path);
        // A missing or zero targetPort is defaulted to `port`.
        match port.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(-1);
                if n != 0 && !valid_port(n) {
                    e.invalid(child(&path, "targetPort"), n, PORT_RANGE);
                }
            }
            Some(Value::String(name)) => e.invalid_each(&child(&path, "targetPort"), name, port_name_errors(name)),
            _ => {}
        }
        if let Some(node_port) = get_i64(port, "nodePort").filter(|n| *n != 0) {
            if service_type == "ClusterIP" {
                e.forbidden(child(&path, "nodePort"), "may not be used when `type` is 'ClusterIP'");
            } else if !valid_port(node_port) {
                e.invalid(child(&path, "nodePort"), node_port, PORT_RANGE);
            }
        }
    }

    validate_labels(e, get_map(spec, "selector"), "spec.selector");
    if let Some(affinity) = get_str(spec, "sessionAffinity").filter(|a| !a.is_empty())
        && !["ClientIP", "None"].contains(&affinity)
    {
        e.not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]);
    }
}

fn validate_service_update(e: &mut Errors, object: &Value, old: &Value) {
    fn service_type(o: &Value) -> &str {
        at(o, &["spec", "type"]).and_then(Value::as_str).unwrap_or("ClusterIP")
    }
    let old_ip = at(old, &["spec", "clusterIP"]).and_then(Value::as_str).unwrap_or("");
    // Only a service keeping a cluster IP has to keep the one it was given; ExternalName has none.
    if service_type(old) != "ExternalName" && service_type(object) != "ExternalName" && !old_ip.is_empty() {
        let new_ip = at(object, &["spec", "clusterIP"]).and_then(Value::as_str).unwrap_or("");
        if new_ip != old_ip {
            e.invalid("spec.clusterIP", new_ip, IMMUTABLE);
        }
    }
}

fn validate_data_keys(e: &mut Errors, object: &Value, key: &str) {
    for name in get_map(object, key).into_iter().flatten().map(|(name, _)| name) {
        e.invalid_each(&format!("{key}[{name}]"), name, config_key_errors(name));
    }
}

fn validate_config_map(e: &mut Errors, object: &Value) {
    validate_data_keys(e, object, "data");
    validate_data_keys(e, object, "binaryData");
    let binary = get_map(object, "binaryData");
    let mut size = 0;
    for (name, value) in get_map(object, "data").into_iter().flatten() {
        if binary.is_some_and(|b| b.contains_key(name)) {
            e.invalid(format!("data[{name}]"), name.as_str(), "duplicate of key present in binaryData");
        }
        size += value.as_str().map_or(0, str::len);
    }
    size += binary.into_iter().flatten().map(|(_, v)| decoded_len(v)).sum::<usize>();
    if size > DATA_MAX_BYTES {
        e.too_long("", DATA_MAX_BYTES);
    }
}

fn decoded_len(value: &Value) -> usize {
    let text = value.as_str().unwrap_or("");
    base64::engine::general_purpose::STANDARD.decode(text).map_or(text.len(), |bytes| bytes.len())
}

fn validate_secret(e: &mut Errors, object: &Value) {
    validate_data_keys(e, object, "data");
    validate_data_keys(e, object, "stringData");
    let data = get_map(object, "data");
    let string_data = get_map(object, "stringData");
    let size: usize = data.into_iter().flatten().map(|(_, v)| decoded_len(v)).sum::<usize>()
        + string_data.into_iter().flatten().map(|(_, v)| v.as_str().map_or(0, str::len)).sum::<usize>();
    if size > DATA_MAX_BYTES {
        e.too_long("data", DATA_MAX_BYTES);
    }

    // stringData is write-only sugar for data, so a required key may come from either.
    let has = |key: &str| data.is_some_and(|d| d.contains_key(key)) || string_data.is_some_and(|d| d.contains_key(key));
    let require = |e: &mut Errors, keys: &[&str]| {
        for key in keys {
            if !has(key) {
                e.required(format!("data[{key}]"), "");
            }
        }
    };
    match get_str(object, "type").unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let annotation = "kubernetes.io/service-account.name";
            if at(object, &["metadata", "annotations", annotation]).and_then(Value::as_str).is_none_or(str::is_empty) {
                e.required(format!("metadata.annotations[{annotation}]"), "");
            }
        }
        "kubernetes.io/dockercfg" => require(e, &[".dockercfg"]),
        "kubernetes.io/dockerconfigjson" => require(e, &[".dockerconfigjson"]),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => require(e, &["username", "password"]),
        "kubernetes.io/ssh-auth" => require(e, &["ssh-privatekey"]),
        "kubernetes.io/tls" => require(e, &["tls.crt", "tls.key"]),
        _ => {}
    }
}

fn validate_immutable_data(e: &mut Errors, object: &Value, old: &Value, keys: &[&str]) {
    if get(old, "immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    const DETAIL: &str = "field is immutable when `immutable` is set";
    if get(object, "immutable").and_then(Value::as_bool) != Some(true) {
        e.forbidden("immutable", DETAIL);
    }
    for key in keys {
        if !semantic_eq(get(object, key), get(old, key)) {
            e.forbidden(*key, DETAIL);
        }
    }
}

fn validate_endpoints(e: &mut Errors, object: &Value) {
    for (i, subset) in get_array(object, "subsets").iter().enumerate() {
        let path = format!("subsets[{i}]");
        let addresses = get_array(subset, "addresses");
        let not_ready = get_array(subset, "notReadyAddresses");
        if addresses.is_empty() && not_ready.is_empty() {
            e.required(&*path, "must specify `addresses` or `notReadyAddresses`");
        }
        for (list, items) in [("addresses", addresses), ("notReadyAddresses", not_ready)] {
            for (j, address) in items.iter().enumerate() {
                let ip = get_str(address, "ip").unwrap_or("");
                if ip.parse::<IpAddr>().is_err() {
                    let field = format!("{path}.{list}[{j}].ip");
                    e.invalid(field, ip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)");
                }
            }
        }
        let ports = get_array(subset, "ports");
        for (j, port) in ports.iter().enumerate() {
            let port_path = format!("{path}.ports[{j}]");
            match get_str(port, "name").filter(|n| !n.is_empty()) {
                None if ports.len() > 1 => e.required(child(&port_path, "name"), ""),
                None => {}
                Some(name) => e.invalid_each(&child(&port_path, "name"), name, dns1123_label_errors(name)),
            }
            let number = get_i64(port, "port").unwrap_or(0);
            if !valid_port(number) {
                e.invalid(child(&port_path, "port"), number, PORT_RANGE);
            }
            validate_protocol(e, port, &port_path);
        }
    }
}

/// Kubernetes' limits on one EndpointSlice.
const SLICE_MAX_ENDPOINTS: usize = 1000;
const SLICE_MAX_ADDRESSES: usize = 100;
const SLICE_MAX_PORTS: usize = 100;

fn validate_endpoint_slice(e: &mut Errors, object: &Value) {
    const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
    let address_type = get_str(object, "addressType").unwrap_or("");
    if address_type.is_empty() {
        e.required("addressType", "");
    } else if !ADDRESS_TYPES.contains(&address_type) {
        e.not_supported("addressType", address_type, ADDRESS_TYPES);
    }
    let endpoints = get_array(object, "endpoints");
    if endpoints.len() > SLICE_MAX_ENDPOINTS {
        e.too_many("endpoints", endpoints.len(), SLICE_MAX_ENDPOINTS);
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let addresses = get_array(endpoint, "addresses");
        if addresses.is_empty() {
            e.required(child(&path, "addresses"), "must contain at least 1 address");
        } else if addresses.len() > SLICE_MAX_ADDRESSES {
            e.too_many(child(&path, "addresses"), addresses.len(), SLICE_MAX_ADDRESSES);
        }
        for (j, address) in addresses.iter().enumerate() {
            let field = format!("{path}.addresses[{j}]");
            let address = address.as_str().unwrap_or("");
            match address_type {
                "IPv4" if address.parse::<std::net::Ipv4Addr>().is_err() => {
                    e.invalid(field, address, "must be a valid IPv4 address")
                }
                "IPv6" if address.parse::<std::net::Ipv6Addr>().is_err() => {
                    e.invalid(field, address, "must be a valid IPv6 address")
                }
                "FQDN" => e.invalid_each(&field, address, dns1123_subdomain_errors(address)),
                _ => {}
            }
        }
        if let Some(node) = get_str(endpoint, "nodeName") {
            e.invalid_each(&child(&path, "nodeName"), node, dns1123_subdomain_errors(node));
        }
        if let Some(hostname) = get_str(endpoint, "hostname") {
            e.invalid_each(&child(&path, "hostname"), hostname, dns1123_label_errors(hostname));
        }
    }
    let ports = get_array(object, "ports");
    if ports.len() > SLICE_MAX_PORTS {
        e.too_many("ports", ports.len(), SLICE_MAX_PORTS);
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        // The name is optional here (one unnamed port), but a name given must be a label and unique.
        let name = get_str(port, "name").unwrap_or("");
        if !name.is_empty() {
            e.invalid_each(&child(&path, "name"), name, dns1123_label_errors(name));
        }
        if !names.insert(name) {
            e.duplicate(child(&path, "name"), name);
        }
        // An absent port means "all ports".
        if let Some(number) = get_i64(port, "port")
            && !valid_port(number)
        {
            e.invalid(child(&path, "port"), number, PORT_RANGE);
        }
        validate_protocol(e, port, &path);
    }
}

const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];
const CIDR_FORMAT: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// Kubernetes' `ValidateNetworkPolicySpec`: the selectors, each rule's ports and peers, and `policyTypes`.
fn validate_network_policy(e: &mut Errors, object: &Value) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    if let Some(selector) = get(spec, "podSelector") {
        validate_selector(e, selector, "spec.podSelector");
    }
    for (i, rule) in get_array(spec, "ingress").iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        for (j, port) in get_array(rule, "ports").iter().enumerate() {
            validate_policy_port(e, port, &format!("{path}.ports[{j}]"));
        }
        for (j, peer) in get_array(rule, "from").iter().enumerate() {
            validate_policy_peer(e, peer, &format!("{path}.from[{j}]"));
        }
    }
    for (i, rule) in get_array(spec, "egress").iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        for (j, peer) in get_array(rule, "to").iter().enumerate() {
            validate_policy_peer(e, peer, &format!("{path}.to[{j}]"));
        }
        for (j, port) in get_array(rule, "ports").iter().enumerate() {
            validate_policy_port(e, port, &format!("{path}.ports[{j}]"));
        }
    }
    let types = get_array(spec, "policyTypes");
    if types.len() > POLICY_TYPES.len() {
        e.invalid("spec.policyTypes", types.to_vec(), "may not specify more than two policyTypes");
        return;
    }
    for (i, policy_type) in types.iter().enumerate() {
        let policy_type = policy_type.as_str().unwrap_or("");
        if !POLICY_TYPES.contains(&policy_type) {
            e.not_supported(format!("spec.policyTypes[{i}]"), policy_type, POLICY_TYPES);
        }
    }
}

/// A port is a number (with an optional `endPort` no lower than it) or a container port's name (without
/// one); a rule's port without either may not have an `endPort`.
fn validate_policy_port(e: &mut Errors, port: &Value, path: &str) {
    validate_protocol(e, port, path);
    let end_port = get_i64(port, "endPort");
    let end_field = child(path, "endPort");
    match port.get("port") {
        Some(Value::Number(number)) => {
            let number = number.as_i64().unwrap_or(0);
            if !valid_port(number) {
                e.invalid(child(path, "port"), number, PORT_RANGE);
            }
            if let Some(end) = end_port {
                if end < number {
                    e.invalid(&*end_field, number, "must be greater than or equal to `port`");
                }
                if !valid_port(end) {
                    e.invalid(&*end_field, end, PORT_RANGE);
                }
            }
        }
        Some(Value::String(name)) => {
            if let Some(end) = end_port {
                e.invalid(&*end_field, end, "may not be specified when `port` is non-numeric");
            }
            e.invalid_each(&child(path, "port"), name, port_name_errors(name));
        }
        _ => {
            if let Some(end) = end_port {
                e.invalid(end_field, end, "may not be specified when `port` is not specified");
            }
        }
    }
}

/// A peer names pods (by their own or their namespace's labels, or both) or an address block, never both.
fn validate_policy_peer(e: &mut Errors, peer: &Value, path: &str) {
    let mut kinds = 0;
    for key in ["podSelector", "namespaceSelector"] {
        if let Some(selector) = get(peer, key) {
            kinds += 1;
            validate_selector(e, selector, &child(path, key));
        }
    }
    let ip_block = get(peer, "ipBlock");
    if let Some(block) = ip_block {
        kinds += 1;
        validate_ip_block(e, block, &child(path, "ipBlock"));
    }
    if kinds == 0 {
        e.required(path, "must specify a peer");
    } else if kinds > 1 && ip_block.is_some() {
        e.forbidden(path, "may not specify both ipBlock and another peer");
    }
}

/// The block's CIDR, and exceptions that are strictly inside it.
fn validate_ip_block(e: &mut Errors, block: &Value, path: &str) {
    let cidr = get_str(block, "cidr").unwrap_or("");
    if cidr.is_empty() {
        e.required(child(path, "cidr"), "");
        return;
    }
    let Some(outer) = Cidr::parse(cidr) else {
        e.invalid(child(path, "cidr"), cidr, CIDR_FORMAT);
        return;
    };
    for (i, except) in get_array(block, "except").iter().enumerate() {
        let field = format!("{path}.except[{i}]");
        let text = except.as_str().unwrap_or("");
        match Cidr::parse(text) {
            None => e.invalid(field, text, CIDR_FORMAT),
            Some(inner) if !outer.strictly_contains(&inner) => {
                e.invalid(field, text, "must be a strict subset of `cidr`")
            }
            Some(_) => {}
        }
    }
}

/// An address block as Kubernetes parses one (host bits may be set: `10.0.0.1/24` is `10.0.0.0/24`).
struct Cidr {
    /// The address as a number, IPv4 in the low 32 bits.
    bits: u128,
    prefix: u32,
    width: u32,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = text.split_once('/')?;
        let prefix: u32 = prefix.parse().ok()?;
        let (bits, width) = match address.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        (prefix <= width).then_some(Cidr { bits, prefix, width })
    }

    /// The address with the bits past `prefix` cleared.
    fn network(&self, prefix: u32) -> u128 {
        let host_bits = self.width - prefix;
        if host_bits >= 128 { 0 } else { self.bits >> host_bits << host_bits }
    }

    /// Whether `inner` is a smaller block inside this one (Kubernetes: `cidr` contains the exception's
    /// address and has a shorter prefix).
    fn strictly_contains(&self, inner: &Cidr) -> bool {
        self.width == inner.width
            && self.prefix < inner.prefix
            && inner.network(self.prefix) == self.network(self.prefix)
    }
}

/// The limit types Kubernetes knows; any other must be a qualified name (`example.com/box`), which
/// LimitRanger then ignores.
const LIMIT_TYPES: &[&str] = &["Pod", "Container", "PersistentVolumeClaim"];
const NOT_IN_POD_ITEMS: &str = "may not be specified when `type` is 'Pod'";
/// Kubernetes' standard resource names (`helper.IsStandardResourceName`, hugepages aside).
const STANDARD_RESOURCES: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "storage",
    "requests.storage",
    "services.nodeports",
    "services.loadbalancers",
];

/// Kubernetes' `validateResourceName`: a qualified name, and a standard one unless it has a domain.
fn resource_name_errors(name: &str) -> Vec<String> {
    let errors = qualified_name_errors(name);
    let standard =
        STANDARD_RESOURCES.contains(&name) || name.starts_with("hugepages-") || name.starts_with("requests.hugepages-");
    if errors.is_empty() && !name.contains('/') && !standard {
        return vec!["must be a standard resource type or fully qualified".to_string()];
    }
    errors
}

/// In the `kubernetes.io` domain: unqualified names are.
fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Kubernetes' `validateLimitRangeResourceName`: what a container may ask for in Pod and Container items
/// (`validateContainerResourceName`), any resource name in the others.
fn limit_range_resource_name_errors(limit_type: &str, name: &str) -> Vec<String> {
    let mut errors = resource_name_errors(name);
    if !matches!(limit_type, "Pod" | "Container") {
        return errors;
    }
    if !name.contains('/') {
        if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
            errors.push("must be a standard resource for containers".to_string());
        }
    } else if !is_native_resource(name) {
        // An extended resource, also nameable in quotas as `requests.<name>`.
        let extended = !name.starts_with("requests.") && qualified_name_errors(&format!("requests.{name}")).is_empty();
        if !extended {
            errors.push("doesn't follow extended resource name standard".to_string());
        }
    }
    errors
}

/// One quantity of a LimitRange item: the text as written and its value, when it parses.
struct LimitQuantity<'a> {
    text: &'a str,
    value: f64,
}

impl LimitQuantity<'_> {
    /// As Kubernetes prints it in messages (`1536Mi` for `1.5Gi`).
    fn canonical(&self) -> String {
        crate::quantity::canonical(self.text).unwrap_or_else(|| self.text.to_string())
    }
}

/// Kubernetes' `ValidateLimitRange`: known or qualified item types, each type once; resource names a
/// container may ask for (Pod and Container items) or any resource (others); no defaults in Pod items; a
/// storage bound in PersistentVolumeClaim items; and resource by resource min <= default request <=
/// default limit <= max, a max limit/request ratio of at least 1 that min and max leave room for, and a
/// default request equal to the default limit for what cannot be overcommitted (extended resources,
/// hugepages). Resources are checked in name order (Go's map order is random).
///
/// Kubernetes prints an invalid quantity's value as a Go struct dump (`resource.Quantity{i:...}`); here
/// it is the quantity as written, and the message after it is Kubernetes' own.
fn validate_limit_range(e: &mut Errors, object: &Value) {
    let items = at(object, &["spec", "limits"]).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut types = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("spec.limits[{i}]");
        let limit_type = get_str(item, "type").unwrap_or_default();
        let type_path = child(&path, "type");
        let type_errors = qualified_name_errors(limit_type);
        if !type_errors.is_empty() {
            e.invalid_each(&type_path, limit_type, type_errors);
        } else if !limit_type.contains('/') && !LIMIT_TYPES.contains(&limit_type) {
            e.invalid(&type_path, limit_type, "must be a standard limit type or fully qualified");
        }
        if !types.insert(limit_type) {
            e.duplicate(&type_path, limit_type);
        }

        // resource -> field -> quantity, for the checks across fields.
        let mut by_resource: BTreeMap<&str, BTreeMap<&str, LimitQuantity>> = BTreeMap::new();
        let mut read = |e: &mut Errors, field: &'static str| {
            let quantities = get_map(item, field).into_iter().flatten();
            for (resource, value) in quantities.filter_map(|(r, v)| Some((r, v.as_str()?))) {
                let field_path = format!("{path}.{field}[{resource}]");
                e.invalid_each(&field_path, resource, limit_range_resource_name_errors(limit_type, resource));
                match parse_quantity(value) {
                    Some(parsed) => {
                        by_resource
                            .entry(resource)
                            .or_default()
                            .insert(field, LimitQuantity { text: value, value: parsed });
                    }
                    None => e.invalid(
                        &*field_path,
                        value,
                        &format!("quantities must match the regular expression '{QUANTITY_FMT}'"),
                    ),
                }
            }
        };
        read(e, "max");
        read(e, "min");
        if limit_type == "Pod" {
            for field in ["default", "defaultRequest"] {
                if get_map(item, field).is_some_and(|m| !m.is_empty()) {
                    e.forbidden(child(&path, field), NOT_IN_POD_ITEMS);
                }
            }
        } else {
            read(e, "default");
            read(e, "defaultRequest");
        }
        if limit_type == "PersistentVolumeClaim"
            && ["min", "max"].iter().all(|field| get_map(item, field).is_none_or(|m| !m.contains_key("storage")))
        {
            // Kubernetes names the item's field `limits` here, though the item has none of that name.
            e.required(
                child(&path, "limits"),
                "either minimum or maximum storage value is required, but neither was provided",
            );
        }
        read(e, "maxLimitRequestRatio");

        for (resource, quantities) in &by_resource {
            validate_limit_bounds(e, &path, resource, quantities);
        }
    }
}

/// The checks across one resource's quantities in a LimitRange item at `path`, in Kubernetes' order.
fn validate_limit_bounds(e: &mut Errors, path: &str, resource: &str, quantities: &BTreeMap<&str, LimitQuantity>) {
    let at_field = |field: &str| format!("{path}.{field}[{resource}]");
    let (min, max) = (quantities.get("min"), quantities.get("max"));
    let (limit, request) = (quantities.get("default"), quantities.get("defaultRequest"));
    let ratio = quantities.get("maxLimitRequestRatio");
    // Each pair must be in order: (lower, its name, upper, its name, the field blamed, whose value is shown),
    // in Kubernetes' order and words; the last two name the bound as the value, as Kubernetes does.
    let ordered = [
        ("min", "min", "max", "max", "min", "min"),
        ("min", "min", "defaultRequest", "default request", "defaultRequest", "defaultRequest"),
        ("defaultRequest", "default request", "max", "max", "defaultRequest", "defaultRequest"),
        ("defaultRequest", "default request", "default", "default limit", "defaultRequest", "defaultRequest"),
        ("min", "min", "default", "default", "default", "min"),
        ("default", "default", "max", "max", "default", "max"),
    ];
    for (lower, lower_name, upper, upper_name, field, shown) in ordered {
        if let (Some(low), Some(high), Some(value)) =
            (quantities.get(lower), quantities.get(upper), quantities.get(shown))
            && low.value > high.value
        {
            let detail = format!(
                "{lower_name} value {} is greater than {upper_name} value {}",
                low.canonical(),
                high.canonical()
            );
            e.invalid(at_field(field), value.text, &detail);
        }
    }
    if let Some(ratio) = ratio {
        if ratio.value < 1.0 {
            e.invalid(
                at_field("maxLimitRequestRatio"),
                ratio.text,
                &format!("ratio {} is less than 1", ratio.canonical()),
            );
        }
        if let (Some(min), Some(max)) = (min, max) {
            // A zero min leaves room for any ratio (the quotient is infinite).
            let room = max.value / min.value;
            if ratio.value > room {
                let detail = format!("ratio {} is greater than max/min = {room:.6}", ratio.canonical());
                e.invalid(at_field("maxLimitRequestRatio"), ratio.text, &detail);
            }
        }
    }
    let overcommit_allowed = is_native_resource(resource) && !resource.starts_with("hugepages-");
    if let (false, Some(limit), Some(request)) = (overcommit_allowed, limit, request)
        && limit.value != request.value
    {
        let detail = format!(
            "default value {} must equal to defaultRequest value {} in {resource}",
            limit.canonical(),
            request.canonical()
        );
        e.invalid(at_field("defaultRequest"), request.text, &detail);
    }
}

fn validate_runtime_class(e: &mut Errors, object: &Value) {
    match get_str(object, "handler").filter(|h| !h.is_empty()) {
        None => e.required("handler", ""),
        Some(handler) => e.invalid_each("handler", handler, dns1123_label_errors(handler)),
    }
}

fn validate_lease(e: &mut Errors, object: &Value) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    if let Some(seconds) = get_i64(spec, "leaseDurationSeconds")
        && seconds <= 0
    {
        e.invalid("spec.leaseDurationSeconds", seconds, "must be greater than 0");
    }
    e.non_negative(spec, "leaseTransitions", "spec");
}

fn validate_event(e: &mut Errors, object: &Value) {
    let namespace = at(object, &["metadata", "namespace"]).and_then(Value::as_str).unwrap_or("");
    if let Some(involved) = at(object, &["involvedObject", "namespace"]).and_then(Value::as_str)
        && !involved.is_empty()
        && !namespace.is_empty()
        && involved != namespace
    {
        e.invalid("involvedObject.namespace", involved, "does not match event.namespace");
    }
}

/// The pod spec fields an update may change, in Kubernetes' wording.
const POD_UPDATABLE: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_update(e: &mut Errors, object: &Value, old: &Value) {
    let empty = Value::Object(Map::new());
    let new_spec = get(object, "spec").unwrap_or(&empty);
    let old_spec = get(old, "spec").unwrap_or(&empty);

    if let Some(new_deadline) = get_i64(new_spec, "activeDeadlineSeconds") {
        if let Some(old_deadline) = get_i64(old_spec, "activeDeadlineSeconds")
            && new_deadline > old_deadline
        {
            e.invalid("spec.activeDeadlineSeconds", new_deadline, "must be less than or equal to previous value");
            return;
        }
    } else if get_i64(old_spec, "activeDeadlineSeconds").is_some() {
        e.invalid("spec.activeDeadlineSeconds", Value::Null, "must not update from a positive integer to nil value");
        return;
    }

    // Copy every allowed change back from the old spec; whatever still differs was not allowed.
    let mut munged = new_spec.clone();
    for list in ["containers", "initContainers"] {
        let old_list = get_array(old_spec, list);
        if let Some(items) = munged.get_mut(list).and_then(Value::as_array_mut) {
            for (item, old_item) in items.iter_mut().zip(old_list) {
                if let (Some(item), Some(image)) = (item.as_object_mut(), old_item.get("image")) {
                    item.insert("image".to_string(), image.clone());
                }
            }
        }
    }
    let new_tolerations = get_array(new_spec, "tolerations");
    let only_added = get_array(old_spec, "tolerations").iter().all(|t| new_tolerations.contains(t));
    let grace = |spec: &Value| get_i64(spec, "terminationGracePeriodSeconds");
    let grace_allowed = grace(old_spec).is_some_and(|s| s < 0) && grace(new_spec) == Some(1);
    if let Some(munged) = munged.as_object_mut() {
        for key in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"] {
            let allowed = match key {
                "tolerations" => only_added,
                "terminationGracePeriodSeconds" => grace_allowed,
                _ => true,
            };
            if allowed {
                match old_spec.get(key) {
                    Some(value) => munged.insert(key.to_string(), value.clone()),
                    None => munged.remove(key),
                };
            }
        }
    }
    if !semantic_eq(Some(&munged), Some(old_spec)) {
        let changed: BTreeSet<&str> = munged
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .chain(old_spec.as_object().into_iter().flatten().map(|(k, _)| k.as_str()))
            .filter(|k| !semantic_eq(munged.get(*k), old_spec.get(*k)))
            .collect();
        let changed: Vec<String> = changed.iter().map(|k| format!("spec.{k}")).collect();
        let detail =
            format!("pod updates may not change fields other than {POD_UPDATABLE}\n  changed: {}", changed.join(", "));
        e.forbidden("spec", &detail);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources;

    fn def(kind: &str) -> &'static ResourceDef {
        resources::all().iter().find(|r| r.kind == kind).expect("kind registered")
    }

    fn check(kind: &str, object: Value) -> Vec<Cause> {
        validate(def(kind), &def(kind).normalize(object).expect("valid shape"), None)
    }

    fn check_update(kind: &str, old: Value, object: Value) -> Vec<Cause> {
        let normalize = |o| def(kind).normalize(o).expect("valid shape");
        validate(def(kind), &normalize(object), Some(&normalize(old)))
    }

    fn fields(causes: &[Cause]) -> Vec<(&'static str, &str)> {
        causes.iter().map(|c| (c.reason, c.field.as_str())).collect()
    }

    fn pod(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec})
    }

    fn good_deployment_spec() -> Value {
        json!({
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
        })
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("example.com"));
        assert!(!is_dns1123_subdomain("example..com"));
        assert!(!is_dns1123_subdomain("Bad_Name"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1035_chars("abc-1"));
        assert!(!is_dns1035_chars("1abc"));
    }

    #[test]
    fn valid_objects_have_no_causes() {
        let spec = json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}}}]});
        assert_eq!(check("Pod", pod("p", spec)), vec![]);
        assert_eq!(check("Deployment", deployment(good_deployment_spec())), vec![]);
        let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}});
        assert_eq!(check("Service", svc), vec![]);
        let ns = json!({"metadata": {"name": "team-a", "labels": {"example.com/tier": "gold"}}});
        assert_eq!(check("Namespace", ns), vec![]);
    }

    #[test]
    fn a_pod_in_its_own_user_namespace_shares_no_host_namespace() {
        let container = json!([{"name": "app", "image": "nginx"}]);
        let own = json!({"hostUsers": false, "containers": container});
        assert_eq!(check("Pod", pod("p", own)), vec![]);
        let shared =
            json!({"hostUsers": false, "hostNetwork": true, "hostPID": true, "hostIPC": true, "containers": container});
        let causes = check("Pod", pod("p", shared));
        let forbidden = [("FieldValueForbidden", "spec.hostNetwork"), ("FieldValueForbidden", "spec.HostPID")];
        assert_eq!(fields(&causes), [&forbidden[..], &[("FieldValueForbidden", "spec.HostIPC")]].concat());
        assert_eq!(causes[0].message, "Forbidden: when `pod.Spec.HostUsers` is false");
        let host = json!({"hostUsers": true, "hostNetwork": true, "containers": container});
        assert_eq!(check("Pod", pod("p", host)), vec![]);
    }

    #[test]
    fn name_is_required_and_must_be_a_subdomain() {
        let causes = check("ConfigMap", json!({"metadata": {}}));
        assert_eq!(fields(&causes), vec![("FieldValueRequired", "metadata.name")]);
        let causes = check("ConfigMap", json!({"metadata": {"name": "Bad_Name"}}));
        assert_eq!(fields(&causes), vec![("FieldValueInvalid", "metadata.name")]);
        assert_eq!(
            causes[0].message,
            r#"Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
        );
        assert_eq!(check("ConfigMap", json!({"metadata": {"name": "a.b"}})), vec![]);
        for kind in ["Node", "ServiceAccount", "Lease", "Endpoints", "Secret", "Event"] {
            let causes = check(kind, json!({"metadata": {"name": "Bad"}}));
            assert_eq!(fields(&causes), vec![("FieldValueInvalid", "metadata.name")], "{kind}");
        }
    }

    #[test]
    fn namespaces_and_services_need_labels() {
        assert_eq!(
            fields(&check("Namespace", json!({"metadata": {"name": "a.b"}}))),
            vec![("FieldValueInvalid", "metadata.name")]
        );
        let svc = |name: &str| json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
        let causes = check("Service", svc("1web"));
        assert_eq!(fields(&causes), vec![("FieldValueInvalid", "metadata.name")]);
        assert!(causes[0].message.contains("a DNS-1035 label"), "{}", causes[0].message);
        let long = "a".repeat(64);
        let causes = check("Service", svc(&long));
        assert_eq!(causes[0].message, format!("Invalid value: \"{long}\": must be no more than 63 characters"));
        let causes = check(
            "Pod",
            json!({"metadata": {"name": "p", "namespace": "Bad"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}),
        );
        assert_eq!(fields(&causes), vec![("FieldValueInvalid", "metadata.namespace")]);
    }

    #[test]
    fn label_and_annotation_syntax() {
        let long = "v".repeat(64);
        let object = json!({"metadata": {"name": "a",
            "labels": {"ok": "", "a/b/c": "x", "example.com/": "x", "good": long, "bad": "-x"},
            "annotations": {"Example.com/Ok": "any value at all ~!", "_bad": "x"}}});
        let causes = check("ConfigMap", object);
        let messages: Vec<&str> = causes.iter().map(|c| c.message.as_str()).collect();
        assert!(causes.iter().all(|c| c.reason == "FieldValueInvalid"));
        assert_eq!(causes.iter().filter(|c| c.field == "metadata.labels").count(), 5, "{messages:#?}");
        assert_eq!(causes.iter().filter(|c| c.field == "metadata.annotations").count(), 1, "{messages:#?}");
        assert!(messages.iter().any(|m| m.starts_with(r#"Invalid value: "a/b/c": a qualified name must consist"#)));
        assert!(messages.contains(&r#"Invalid value: "example.com/": name part must be non-empty"#));
        assert!(messages.contains(&format!(r#"Invalid value: "{long}": must be no more than 63 characters"#).as_str()));
        assert!(
            messages.iter().any(|m| { m.starts_with(r#"Invalid value: "-x": a valid label must be an empty string"#) })
        );

        let big = json!({"metadata": {"name": "a", "annotations": {"k": "x".repeat(ANNOTATIONS_MAX_BYTES)}}});
        let causes = check("ConfigMap", big);
        assert_eq!(causes[0].reason, "FieldValueTooLong");
        assert_eq!(causes[0].message, "Too long: may not be more than 262144 bytes");
    }

    #[test]
    fn pod_containers() {
        assert_eq!(
            fields(&check("Pod", pod("p", json!({"containers": []})))),
            vec![("FieldValueRequired", "spec.containers")]
        );
        let spec = json!({
            "initContainers": [{"name": "app", "image": "busybox"}],
            "containers": [
                {"name": "app", "image": "nginx"},
                {"name": "", "image": ""},
                {"name": "Bad", "image": "x", "ports": [{"containerPort": 0}, {"containerPort": 70000, "hostPort": -1, "protocol": "ICMP"}]}
            ],
            "restartPolicy": "Sometimes"
        });
        let causes = check("Pod", pod("p", spec));
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueDuplicate", "spec.containers[0].name"),
                ("FieldValueRequired", "spec.containers[1].name"),
                ("FieldValueRequired", "spec.containers[1].image"),
                ("FieldValueInvalid", "spec.containers[2].name"),
                ("FieldValueRequired", "spec.containers[2].ports[0].containerPort"),
                ("FieldValueInvalid", "spec.containers[2].ports[1].containerPort"),
                ("FieldValueInvalid", "spec.containers[2].ports[1].hostPort"),
                ("FieldValueNotSupported", "spec.containers[2].ports[1].protocol"),
                ("FieldValueNotSupported", "spec.restartPolicy"),
            ]
        );
        assert_eq!(causes[0].message, r#"Duplicate value: "app""#);
        assert_eq!(causes[1].message, "Required value");
        assert_eq!(causes[5].message, "Invalid value: 70000: must be between 1 and 65535, inclusive");
        assert_eq!(
            causes[8].message,
            r#"Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#
        );
    }

    #[test]
    fn pod_resources_and_volumes() {
        let spec = json!({
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
            "containers": [{"name": "a", "image": "b", "resources": {
                "requests": {"cpu": "2", "memory": "lots", "gpu": "1"},
                "limits": {"cpu": "1500m", "memory": "-1Gi"}
            }}]
        });
        let causes = check("Pod", pod("p", spec));
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueDuplicate", "spec.volumes[1].name"),
                ("FieldValueInvalid", "spec.containers[0].resources.limits[memory]"),
                ("FieldValueInvalid", "spec.containers[0].resources.requests[gpu]"),
                ("FieldValueInvalid", "spec.containers[0].resources.requests[memory]"),
                ("FieldValueInvalid", "spec.containers[0].resources.requests[cpu]"),
            ]
        );
        assert_eq!(causes[4].message, r#"Invalid value: "2": must be less than or equal to cpu limit of 1500m"#);
        assert!(causes[3].message.contains("quantities must match the regular expression"));
    }

    fn limit_range(limits: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "r", "namespace": "default"},
            "spec": {"limits": limits}})
    }

    fn messages(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect()
    }

    #[test]
    fn limit_ranges_in_bounds_are_valid() {
        let valid = limit_range(json!([
            {"type": "Container", "max": {"memory": "1Gi", "cpu": "2"}, "min": {"memory": "16Mi"},
                "default": {"memory": "64Mi", "nvidia.com/gpu": "1"}, "defaultRequest": {"memory": "32Mi", "nvidia.com/gpu": "1"},
                "maxLimitRequestRatio": {"memory": "4"}},
            {"type": "Pod", "max": {"cpu": "4"}, "min": {"cpu": "0"}, "maxLimitRequestRatio": {"cpu": "10"}},
            {"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}},
            {"type": "example.com/box", "max": {"example.com/widgets": "3"}},
        ]));
        assert_eq!(messages(&check("LimitRange", valid)), Vec::<(&str, &str)>::new());
    }

    #[test]
    fn limit_range_items_with_kubernetes_messages() {
        let causes = check(
            "LimitRange",
            limit_range(json!([
                {"type": "Sometimes"},
                {"type": "Pod", "default": {"cpu": "1"}, "defaultRequest": {"cpu": "1"}, "max": {"gpu": "1"}},
                {"type": "Pod"},
                {"type": "PersistentVolumeClaim", "max": {"memory": "1Gi"}},
            ])),
        );
        assert_eq!(
            messages(&causes),
            [
                (
                    "spec.limits[0].type",
                    r#"Invalid value: "Sometimes": must be a standard limit type or fully qualified"#
                ),
                (
                    "spec.limits[1].max[gpu]",
                    r#"Invalid value: "gpu": must be a standard resource type or fully qualified"#
                ),
                ("spec.limits[1].max[gpu]", r#"Invalid value: "gpu": must be a standard resource for containers"#),
                ("spec.limits[1].default", "Forbidden: may not be specified when `type` is 'Pod'"),
                ("spec.limits[1].defaultRequest", "Forbidden: may not be specified when `type` is 'Pod'"),
                ("spec.limits[2].type", r#"Duplicate value: "Pod""#),
                (
                    "spec.limits[3].limits",
                    "Required value: either minimum or maximum storage value is required, but neither was provided"
                ),
            ]
        );
    }

    #[test]
    fn limit_range_bounds_must_be_ordered() {
        let causes = check(
            "LimitRange",
            limit_range(json!([{"type": "Container",
                "min": {"memory": "1Gi", "cpu": "500m"}, "max": {"memory": "512Mi", "cpu": "2"},
                "default": {"cpu": "0.25"}, "defaultRequest": {"memory": "2Gi", "cpu": "1"},
                "maxLimitRequestRatio": {"cpu": "10", "memory": "0.5"}}])),
        );
        assert_eq!(
            messages(&causes),
            [
                (
                    "spec.limits[0].defaultRequest[cpu]",
                    r#"Invalid value: "1": default request value 1 is greater than default limit value 250m"#
                ),
                (
                    "spec.limits[0].default[cpu]",
                    r#"Invalid value: "500m": min value 500m is greater than default value 250m"#
                ),
                (
                    "spec.limits[0].maxLimitRequestRatio[cpu]",
                    r#"Invalid value: "10": ratio 10 is greater than max/min = 4.000000"#
                ),
                (
                    "spec.limits[0].min[memory]",
                    r#"Invalid value: "1Gi": min value 1Gi is greater than max value 512Mi"#
                ),
                (
                    "spec.limits[0].defaultRequest[memory]",
                    r#"Invalid value: "2Gi": default request value 2Gi is greater than max value 512Mi"#
                ),
                ("spec.limits[0].maxLimitRequestRatio[memory]", r#"Invalid value: "0.5": ratio 500m is less than 1"#),
            ]
        );
        let causes = check(
            "LimitRange",
            limit_range(
                json!([{"type": "Container", "min": {"memory": "64Mi"}, "defaultRequest": {"memory": "32Mi", "cpu": "lots"},
                "default": {"example.com/gpu": "2"}, "maxLimitRequestRatio": {"example.com/gpu": "1"}}]),
            ),
        );
        assert_eq!(
            messages(&causes),
            [
                (
                    "spec.limits[0].defaultRequest[cpu]",
                    r#"Invalid value: "lots": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#
                ),
                (
                    "spec.limits[0].defaultRequest[memory]",
                    r#"Invalid value: "32Mi": min value 64Mi is greater than default request value 32Mi"#
                ),
            ]
        );
        let causes = check(
            "LimitRange",
            limit_range(json!([{"type": "Container", "default": {"example.com/gpu": "2", "hugepages-2Mi": "4Mi"},
                "defaultRequest": {"example.com/gpu": "1", "hugepages-2Mi": "2Mi"}}])),
        );
        assert_eq!(
            messages(&causes),
            [
                (
                    "spec.limits[0].defaultRequest[example.com/gpu]",
                    r#"Invalid value: "1": default value 2 must equal to defaultRequest value 1 in example.com/gpu"#
                ),
                (
                    "spec.limits[0].defaultRequest[hugepages-2Mi]",
                    r#"Invalid value: "2Mi": default value 4Mi must equal to defaultRequest value 2Mi in hugepages-2Mi"#
                ),
            ]
        );
    }

    #[test]
    fn quantities() {
        for (text, value) in [
            ("100m", 0.1),
            ("1.5Gi", 1.5 * 1024f64.powi(3)),
            ("2e3", 2000.0),
            ("1E", 1e18),
            (".5", 0.5),
            ("+3k", 3000.0),
            ("5.", 5.0),
        ] {
            assert_eq!(parse_quantity(text), Some(value), "{text}");
        }
        assert_eq!(parse_quantity("-1"), Some(-1.0));
        for text in ["", "lots", "1.2.3", "1Kb", "e3", "1e", "1e+", "."] {
            assert_eq!(parse_quantity(text), None, "{text}");
        }
    }

    #[test]
    fn deployment_with_three_errors_gives_three_causes() {
        let spec = json!({
            "replicas": -1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "web"}]}}
        });
        let causes = check("Deployment", deployment(spec));
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "spec.replicas"),
                ("FieldValueRequired", "spec.template.spec.containers[0].image"),
                ("FieldValueInvalid", "spec.template.metadata.labels"),
            ]
        );
        assert_eq!(causes[0].message, "Invalid value: -1: must be greater than or equal to 0");
        assert_eq!(causes[2].message, r#"Invalid value: {"app":"other"}: `selector` does not match template `labels`"#);
    }

    #[test]
    fn workload_selectors_and_restart_policy() {
        let mut spec = good_deployment_spec();
        spec.as_object_mut().unwrap().remove("selector");
        assert_eq!(fields(&check("Deployment", deployment(spec))), vec![("FieldValueRequired", "spec.selector")]);

        let mut spec = good_deployment_spec();
        spec["selector"] = json!({});
        let causes = check("ReplicaSet", json!({"metadata": {"name": "rs"}, "spec": spec}));
        assert_eq!(fields(&causes), vec![("FieldValueRequired", "spec.selector")]);

        let mut spec = good_deployment_spec();
        spec["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web", "api"]},
            {"key": "tier", "operator": "DoesNotExist"}
        ]});
        spec["template"]["spec"]["restartPolicy"] = json!("Never");
        let causes = check("DaemonSet", json!({"metadata": {"name": "ds"}, "spec": spec}));
        assert_eq!(fields(&causes), vec![("FieldValueNotSupported", "spec.template.spec.restartPolicy")]);
        assert_eq!(causes[0].message, r#"Unsupported value: "Never": supported values: "Always""#);

        let mut spec = good_deployment_spec();
        spec["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "Near"}, {"key": "x", "operator": "Exists", "values": ["a"]}]});
        let causes = check("Deployment", deployment(spec));
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "spec.selector.matchExpressions[0].operator"),
                ("FieldValueForbidden", "spec.selector.matchExpressions[1].values"),
            ]
        );

        let mut spec = good_deployment_spec();
        spec.as_object_mut().unwrap().remove("template");
        assert_eq!(fields(&check("Deployment", deployment(spec))), vec![("FieldValueRequired", "spec.template")]);
    }

    #[test]
    fn job_rules() {
        let job = |spec: Value| json!({"metadata": {"name": "j"}, "spec": spec});
        let template = json!({"spec": {"containers": [{"name": "a", "image": "b"}]}});
        let causes = check("Job", job(json!({"parallelism": -1, "completions": -2, "template": template})));
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "spec.parallelism"),
                ("FieldValueInvalid", "spec.completions"),
                ("FieldValueNotSupported", "spec.template.spec.restartPolicy"),
            ]
        );
        assert_eq!(causes[2].message, r#"Unsupported value: "Always": supported values: "OnFailure", "Never""#);
        let ok = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "b"}]}});
        assert_eq!(check("Job", job(json!({"template": ok}))), vec![]);
        assert_eq!(fields(&check("Job", job(json!({})))), vec![("FieldValueRequired", "spec.template")]);
    }

    #[test]
    fn service_rules() {
        let svc = |spec: Value| json!({"metadata": {"name": "s"}, "spec": spec});
        let causes = check(
            "Service",
            svc(json!({"type": "Magic", "clusterIP": "nope", "ports": [
                {"name": "http", "port": 0}, {"name": "http", "port": 80, "targetPort": 70000}, {"port": 81, "nodePort": 30000}
            ]})),
        );
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueNotSupported", "spec.type"),
                ("FieldValueInvalid", "spec.clusterIP"),
                ("FieldValueInvalid", "spec.ports[0].port"),
                ("FieldValueDuplicate", "spec.ports[1].name"),
                ("FieldValueInvalid", "spec.ports[1].targetPort"),
                ("FieldValueRequired", "spec.ports[2].name"),
            ]
        );
        assert_eq!(
            causes[0].message,
            r#"Unsupported value: "Magic": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort""#
        );
        assert_eq!(fields(&check("Service", svc(json!({})))), vec![("FieldValueRequired", "spec.ports")]);
        assert_eq!(check("Service", svc(json!({"clusterIP": "None"}))), vec![]);
        // `clusterIPs` repeats `clusterIP`, and adds at most the other family: no second address to take.
        let ports = json!([{"port": 80}]);
        let ips = |ips: Value| svc(json!({"clusterIP": "10.43.0.5", "clusterIPs": ips, "ports": ports}));
        assert_eq!(check("Service", ips(json!(["10.43.0.5"]))), vec![]);
        assert_eq!(check("Service", ips(json!(["10.43.0.5", "fd00::5"]))), vec![]);
        assert_eq!(
            fields(&check("Service", ips(json!(["10.43.0.1"])))),
            vec![("FieldValueInvalid", "spec.clusterIPs[0]")]
        );
        assert_eq!(
            fields(&check("Service", ips(json!(["10.43.0.5", "10.43.0.1"])))),
            vec![("FieldValueInvalid", "spec.clusterIPs[1]")]
        );
        assert_eq!(
            fields(&check("Service", svc(json!({"type": "ExternalName"})))),
            vec![("FieldValueRequired", "spec.externalName")]
        );
        let causes = check("Service", svc(json!({"ports": [{"port": 80, "nodePort": 30080}]})));
        assert_eq!(fields(&causes), vec![("FieldValueForbidden", "spec.ports[0].nodePort")]);
        assert_eq!(
            check("Service", svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}))),
            vec![]
        );
    }

    #[test]
    fn config_map_and_secret_keys() {
        let causes = check(
            "ConfigMap",
            json!({"metadata": {"name": "c"}, "data": {"ok.key_-1": "", "a b": "", "..x": ""}, "binaryData": {"ok.key_-1": "AA=="}}),
        );
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "data[..x]"),
                ("FieldValueInvalid", "data[a b]"),
                ("FieldValueInvalid", "data[ok.key_-1]"),
            ]
        );
        assert_eq!(causes[0].message, r#"Invalid value: "..x": must not start with '..'"#);
        assert!(causes[1].message.contains("a valid config key must consist of alphanumeric characters"));
        assert!(causes[2].message.ends_with("duplicate of key present in binaryData"));

        let secret = |kind: &str, data: Value| json!({"metadata": {"name": "s"}, "type": kind, "data": data});
        assert_eq!(
            fields(&check("Secret", secret("Opaque", json!({"bad key": "YQ=="})))),
            vec![("FieldValueInvalid", "data[bad key]")]
        );
        assert_eq!(
            fields(&check("Secret", secret("kubernetes.io/tls", json!({"tls.crt": "YQ=="})))),
            vec![("FieldValueRequired", "data[tls.key]")]
        );
        assert_eq!(check("Secret", secret("kubernetes.io/basic-auth", json!({"password": "YQ=="}))), vec![]);
        let with_string_data =
            json!({"metadata": {"name": "s"}, "type": "kubernetes.io/ssh-auth", "stringData": {"ssh-privatekey": "k"}});
        assert_eq!(check("Secret", with_string_data), vec![]);
    }

    #[test]
    fn other_kinds() {
        let rc = |handler: &str| json!({"metadata": {"name": "wasm"}, "handler": handler});
        assert_eq!(fields(&check("RuntimeClass", rc(""))), vec![("FieldValueRequired", "handler")]);
        assert_eq!(fields(&check("RuntimeClass", rc("Bad.Handler"))), vec![("FieldValueInvalid", "handler")]);
        assert_eq!(check("RuntimeClass", rc("wasmtime")), vec![]);

        let lease = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}});
        assert_eq!(
            fields(&check("Lease", lease)),
            vec![("FieldValueInvalid", "spec.leaseDurationSeconds"), ("FieldValueInvalid", "spec.leaseTransitions")]
        );

        let endpoints = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "x"}], "ports": [{"port": 0}]}, {}]});
        assert_eq!(
            fields(&check("Endpoints", endpoints)),
            vec![
                ("FieldValueInvalid", "subsets[0].addresses[1].ip"),
                ("FieldValueInvalid", "subsets[0].ports[0].port"),
                ("FieldValueRequired", "subsets[1]"),
            ]
        );

        let event =
            json!({"metadata": {"name": "e.1", "namespace": "a"}, "involvedObject": {"kind": "Pod", "namespace": "b"}});
        assert_eq!(fields(&check("Event", event)), vec![("FieldValueInvalid", "involvedObject.namespace")]);
    }

    #[test]
    fn metadata_is_immutable_on_update() {
        let old = json!({"metadata": {"name": "c", "namespace": "a", "uid": "1", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        let same = json!({"metadata": {"name": "c", "namespace": "a"}});
        assert_eq!(check_update("ConfigMap", old.clone(), same), vec![]);
        let changed = json!({"metadata": {"name": "d", "namespace": "b", "uid": "2", "creationTimestamp": "2025-01-01T00:00:00Z"}});
        let causes = check_update("ConfigMap", old, changed);
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "metadata.name"),
                ("FieldValueInvalid", "metadata.namespace"),
                ("FieldValueInvalid", "metadata.uid"),
                ("FieldValueInvalid", "metadata.creationTimestamp"),
            ]
        );
        assert_eq!(causes[0].message, r#"Invalid value: "d": field is immutable"#);
    }

    #[test]
    fn workload_selectors_and_job_templates_are_immutable() {
        let old = deployment(good_deployment_spec());
        let mut spec = good_deployment_spec();
        spec["replicas"] = json!(5);
        spec["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_eq!(check_update("Deployment", old.clone(), deployment(spec)), vec![]);
        let mut spec = good_deployment_spec();
        spec["selector"]["matchLabels"]["tier"] = json!("x");
        spec["template"]["metadata"]["labels"]["tier"] = json!("x");
        let causes = check_update("Deployment", old, deployment(spec));
        assert_eq!(fields(&causes), vec![("FieldValueInvalid", "spec.selector")]);
        assert!(causes[0].message.ends_with(": field is immutable"));

        let job = |image: &str, parallelism: i64| json!({"metadata": {"name": "j"}, "spec": {"parallelism": parallelism, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": image}]}}}});
        assert_eq!(check_update("Job", job("a", 1), job("a", 3)), vec![]);
        assert_eq!(
            fields(&check_update("Job", job("a", 1), job("b", 1))),
            vec![("FieldValueInvalid", "spec.template")]
        );
    }

    #[test]
    fn immutable_config_maps_and_secrets() {
        let cm = |immutable: Option<bool>, value: &str| json!({"metadata": {"name": "c"}, "immutable": immutable, "data": {"k": value}});
        assert_eq!(check_update("ConfigMap", cm(None, "a"), cm(None, "b")), vec![]);
        assert_eq!(check_update("ConfigMap", cm(Some(true), "a"), cm(Some(true), "a")), vec![]);
        let causes = check_update("ConfigMap", cm(Some(true), "a"), cm(None, "b"));
        assert_eq!(fields(&causes), vec![("FieldValueForbidden", "immutable"), ("FieldValueForbidden", "data")]);
        assert_eq!(causes[1].message, "Forbidden: field is immutable when `immutable` is set");

        let secret = |kind: &str, immutable: bool| json!({"metadata": {"name": "s"}, "type": kind, "immutable": immutable, "data": {"k": "YQ=="}});
        assert_eq!(
            fields(&check_update("Secret", secret("Opaque", false), secret("x/y", false))),
            vec![("FieldValueInvalid", "type")]
        );
        let mut changed = secret("Opaque", true);
        changed["data"]["k"] = json!("Yg==");
        assert_eq!(
            fields(&check_update("Secret", secret("Opaque", true), changed)),
            vec![("FieldValueForbidden", "data")]
        );
    }

    #[test]
    fn pod_updates_allow_only_images_deadlines_and_new_tolerations() {
        let spec = |image: &str, extra: Value| {
            let mut spec = json!({"containers": [{"name": "a", "image": image}], "tolerations": [{"key": "k", "operator": "Exists"}]});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            spec
        };
        let old = pod("p", spec("nginx:1", json!({"activeDeadlineSeconds": 100})));
        let allowed = pod(
            "p",
            spec(
                "nginx:2",
                json!({"activeDeadlineSeconds": 50, "tolerations": [{"key": "k", "operator": "Exists"}, {"key": "n", "operator": "Exists"}]}),
            ),
        );
        assert_eq!(check_update("Pod", old.clone(), allowed), vec![]);

        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(check_update("Pod", old.clone(), relabelled), vec![]);

        let causes = check_update(
            "Pod",
            old.clone(),
            pod("p", spec("nginx:1", json!({"activeDeadlineSeconds": 100, "restartPolicy": "Never"}))),
        );
        assert_eq!(fields(&causes), vec![("FieldValueForbidden", "spec")]);
        assert!(
            causes[0]
                .message
                .starts_with("Forbidden: pod updates may not change fields other than `spec.containers[*].image`")
        );
        assert!(causes[0].message.contains("spec.restartPolicy"));

        let removed = pod("p", spec("nginx:1", json!({"activeDeadlineSeconds": 100, "tolerations": []})));
        assert_eq!(fields(&check_update("Pod", old.clone(), removed)), vec![("FieldValueForbidden", "spec")]);

        let raised = pod("p", spec("nginx:1", json!({"activeDeadlineSeconds": 200})));
        assert_eq!(
            fields(&check_update("Pod", old, raised)),
            vec![("FieldValueInvalid", "spec.activeDeadlineSeconds")]
        );
    }

    #[test]
    fn service_cluster_ip_is_immutable_once_set() {
        let svc =
            |ip: Option<&str>| json!({"metadata": {"name": "s"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        assert_eq!(check_update("Service", svc(None), svc(Some("10.0.0.5"))), vec![]);
        assert_eq!(check_update("Service", svc(Some("10.0.0.5")), svc(Some("10.0.0.5"))), vec![]);
        let causes = check_update("Service", svc(Some("10.0.0.5")), svc(Some("10.0.0.6")));
        assert_eq!(fields(&causes), vec![("FieldValueInvalid", "spec.clusterIP")]);
        assert_eq!(causes[0].message, r#"Invalid value: "10.0.0.6": field is immutable"#);
    }

    #[test]
    fn endpoint_slice_rules() {
        let slice = |address_type: &str, endpoints: Value, ports: Value| json!({"metadata": {"name": "web-abc"}, "addressType": address_type, "endpoints": endpoints, "ports": ports});
        let good = slice(
            "IPv4",
            json!([{"addresses": ["10.42.0.5"], "nodeName": "node-a", "conditions": {"ready": true}}]),
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "protocol": "UDP"}]),
        );
        assert_eq!(check("EndpointSlice", good.clone()), vec![]);
        assert_eq!(
            check("EndpointSlice", slice("FQDN", json!([{"addresses": ["db.example.com"]}]), json!([]))),
            vec![]
        );

        let causes = check(
            "EndpointSlice",
            slice(
                "IPv4",
                json!([{"addresses": ["fd00::1"]}, {"addresses": [], "nodeName": "Bad_Node"}]),
                json!([{"port": 0}, {"name": "", "protocol": "HTTP"}, {"name": "Web"}]),
            ),
        );
        assert_eq!(
            fields(&causes),
            vec![
                ("FieldValueInvalid", "endpoints[0].addresses[0]"),
                ("FieldValueRequired", "endpoints[1].addresses"),
                ("FieldValueInvalid", "endpoints[1].nodeName"),
                ("FieldValueInvalid", "ports[0].port"),
                ("FieldValueDuplicate", "ports[1].name"),
                ("FieldValueNotSupported", "ports[1].protocol"),
                ("FieldValueInvalid", "ports[2].name"),
            ]
        );
        assert_eq!(causes[0].message, r#"Invalid value: "fd00::1": must be a valid IPv4 address"#);
        let causes = check("EndpointSlice", slice("", json!([]), json!([])));
        assert_eq!(fields(&causes), vec![("FieldValueRequired", "addressType")]);
        let causes = check("EndpointSlice", slice("IP", json!([]), json!([])));
        assert_eq!(fields(&causes), vec![("FieldValueNotSupported", "addressType")]);
        let many: Vec<Value> =
            (0..1001).map(|i| json!({"addresses": [format!("10.0.{}.{}", i / 250, i % 250)]})).collect();
        let causes = check("EndpointSlice", slice("IPv4", Value::Array(many), json!([])));
        assert_eq!(causes[0].message, "Too many: 1001: must have at most 1000 items");

        let ipv6 = slice("IPv6", json!([]), json!([]));
        assert_eq!(fields(&check_update("EndpointSlice", good, ipv6)), vec![("FieldValueInvalid", "addressType")]);
    }

    #[test]
    fn network_policy_rules() {
        let policy = |spec: Value| json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec});
        let good = policy(json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                         "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}, {"port": 8000, "endPort": 8100}, {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}},
                               {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}}]}],
        }));
        assert_eq!(check("NetworkPolicy", good), vec![]);
        let bad = policy(json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}],
                         "ports": [{"port": 0}, {"port": "Not_A_Name", "endPort": 90}, {"port": 90, "endPort": 80},
                                   {"endPort": 80}, {"protocol": "ICMP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {"ipBlock": {"cidr": ""}},
                               {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16", "10.1.0.0/24", "x"]}}]}],
        }));
        assert_eq!(
            fields(&check("NetworkPolicy", bad)),
            vec![
                ("FieldValueRequired", "spec.podSelector.matchExpressions[0].values"),
                ("FieldValueInvalid", "spec.ingress[0].ports[0].port"),
                ("FieldValueInvalid", "spec.ingress[0].ports[1].endPort"),
                ("FieldValueInvalid", "spec.ingress[0].ports[1].port"),
                ("FieldValueInvalid", "spec.ingress[0].ports[2].endPort"),
                ("FieldValueInvalid", "spec.ingress[0].ports[3].endPort"),
                ("FieldValueNotSupported", "spec.ingress[0].ports[4].protocol"),
                ("FieldValueRequired", "spec.ingress[0].from[0]"),
                ("FieldValueForbidden", "spec.ingress[0].from[1]"),
                ("FieldValueInvalid", "spec.egress[0].to[0].ipBlock.cidr"),
                ("FieldValueRequired", "spec.egress[0].to[1].ipBlock.cidr"),
                ("FieldValueInvalid", "spec.egress[0].to[2].ipBlock.except[0]"),
                ("FieldValueInvalid", "spec.egress[0].to[2].ipBlock.except[1]"),
                ("FieldValueInvalid", "spec.egress[0].to[2].ipBlock.except[2]"),
                ("FieldValueNotSupported", "spec.policyTypes[1]"),
            ]
        );
        let three = policy(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}));
        assert_eq!(fields(&check("NetworkPolicy", three)), vec![("FieldValueInvalid", "spec.policyTypes")]);
    }

    #[test]
    fn runtime_class_handler_is_immutable() {
        let rc = |handler: &str| json!({"metadata": {"name": "wasm"}, "handler": handler});
        assert_eq!(fields(&check_update("RuntimeClass", rc("a"), rc("b"))), vec![("FieldValueInvalid", "handler")]);
    }

    /// The unknown fields of `object`, or none when it does not have the kind's shape at all.
    fn unknown_in(def: &ResourceDef, object: &Value) -> Vec<String> {
        def.normalize(object.clone()).map(|normalized| unknown_fields(object, &normalized)).unwrap_or_default()
    }

    #[test]
    fn unknown_fields_keeps_quiet_on_rich_known_objects() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": null, "generation": 1, "uid": "u",
                "resourceVersion": "5", "finalizers": [], "ownerReferences": [],
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"replicas": 0, "paused": false, "strategy": {}, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": []},
                "template": {"metadata": {"labels": {"app": "web"}, "creationTimestamp": null}, "spec": {
                    "hostname": "", "volumes": [{"name": "v", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cm", "items": []}}],
                    "securityContext": {}, "tolerations": [{"operator": "Exists", "tolerationSeconds": 5}],
                    "containers": [{"name": "a", "image": "b", "args": [], "env": [{"name": "X", "value": ""}],
                        "resources": {}, "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 3}}]}}},
            "status": {"replicas": 0, "conditions": []}
        });
        assert_eq!(unknown_in(def("Deployment"), &object), Vec::<String>::new());
        let service = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": 8080, "nodePort": 0}],
            "clusterIP": "", "clusterIPs": [], "ipFamilies": ["IPv4"], "selector": {}}, "status": {"loadBalancer": {}}});
        assert_eq!(unknown_in(def("Service"), &service), Vec::<String>::new());
    }

    #[test]
    fn unknown_fields_finds_nested_typos_but_not_map_keys() {
        let mut object = deployment(good_deployment_spec());
        object["spec"]["replicaz"] = json!(3);
        object["spec"]["template"]["spec"]["containers"][0]["imagez"] = json!("x");
        object["spec"]["selector"]["matchLabel"] = json!({"a": "b"});
        object["metadata"]["labels"] = json!({"anything.example.com/goes": "v"});
        object["metadata"]["annotations"] = json!({"whatever": "v"});
        object["spec"]["paused"] = Value::Null;
        object["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        let mut unknown = unknown_in(def("Deployment"), &object);
        unknown.sort();
        assert_eq!(
            unknown,
            vec!["spec.replicaz", "spec.selector.matchLabel", "spec.template.spec.containers[0].imagez"]
        );

        let cm = json!({"metadata": {"name": "c"}, "data": {"x": "y"}, "extra": {"a": 1}, "binaryData": {}, "immutable": false});
        assert_eq!(unknown_in(def("ConfigMap"), &cm), vec!["extra"]);
        assert_eq!(
            unknown_in(def("ConfigMap"), &json!({"metadata": {"name": "c"}, "data": "not a map", "extra": 1})),
            Vec::<String>::new()
        );
        let pod_object = pod(
            "p",
            json!({"containers": [{"name": "a", "image": "b", "resources": {"limits": {"cpu": 1}}, "ports": [{"containerPort": 80, "porotocol": "TCP"}]}]}),
        );
        assert_eq!(unknown_in(def("Pod"), &pod_object), vec!["spec.containers[0].ports[0].porotocol"]);
    }
}
