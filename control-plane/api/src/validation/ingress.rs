//! Kubernetes' validation of Ingresses and IngressClasses (`pkg/apis/networking/validation/validation.go`:
//! `ValidateIngressCreate`, `ValidateIngressUpdate`, `ValidateIngressClass`), in its field paths and words.

use serde_json::Value;

use super::{
    DNS1123_SUBDOMAIN_MAX, Errors, PORT_RANGE, child, dns1035_label_errors, dns1123_label_errors,
    dns1123_subdomain_errors, get, get_array, get_i64, get_str, immutable, is_label_chars, max_len_error,
    path_segment_errors, port_name_errors, regex_error, valid_port,
};
use crate::ingress::CLASS_ANNOTATION;

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
const INVALID_PATH_SEQUENCES: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const INVALID_PATH_SUFFIXES: &[&str] = &["/..", "/."];
const PARAMETER_SCOPES: &[&str] = &["Cluster", "Namespace"];
/// `maxLenIngressClassController`.
const CONTROLLER_MAX: usize = 250;
const WILDCARD_FMT: &str = r"\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
/// `httpPathFmt`, the path part of a domain-prefixed path.
const HTTP_PATH_FMT: &str = r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+";

/// An Ingress on create (`old` None) or update. An update keeps accepting what an older server stored:
/// TLS Secret names and wildcard rules that are invalid today pass when the stored object had them.
pub(super) fn validate_ingress(e: &mut Errors, object: &Value, old: Option<&Value>) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    let old_spec = old.and_then(|old| get(old, "spec"));
    let options = Options {
        allow_invalid_secret_name: old_spec.is_some_and(|spec| {
            let names = get_array(spec, "tls").iter().filter_map(|tls| get_str(tls, "secretName"));
            names.into_iter().any(|name| !name.is_empty() && !dns1123_subdomain_errors(name).is_empty())
        }),
        allow_invalid_wildcard_rule: old_spec.is_some_and(|spec| {
            get_array(spec, "rules").iter().any(|rule| {
                let mut errors = Errors::default();
                get_str(rule, "host").is_some_and(|host| host.contains('*')) && {
                    validate_rule_value(&mut errors, rule, "");
                    !errors.0.is_empty()
                }
            })
        }),
    };
    validate_spec(e, spec, &options);
    if old.is_none() {
        let annotation = object.pointer("/metadata/annotations").and_then(|a| get_str(a, CLASS_ANNOTATION));
        if let (Some(annotation), Some(class)) = (annotation, get_str(spec, "ingressClassName"))
            && annotation != class
        {
            let field = format!("annotations.{CLASS_ANNOTATION}");
            e.invalid(field, annotation, "must match `ingressClassName` when both are specified");
        }
    }
}

struct Options {
    allow_invalid_secret_name: bool,
    allow_invalid_wildcard_rule: bool,
}

/// `ValidateIngressSpec`.
fn validate_spec(e: &mut Errors, spec: &Value, options: &Options) {
    let rules = get_array(spec, "rules");
    let default_backend = get(spec, "defaultBackend");
    if rules.is_empty() && default_backend.is_none() {
        // Go prints the rules as `%#v` of its internal type.
        let value =
            if spec.get("rules").is_some() { "[]networking.IngressRule{}" } else { "[]networking.IngressRule(nil)" };
        let message = format!("Invalid value: {value}: either `defaultBackend` or `rules` must be specified");
        e.push("FieldValueInvalid", "spec", message);
    }
    if let Some(backend) = default_backend {
        validate_backend(e, backend, "spec.defaultBackend");
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let mut wildcard = false;
        if let Some(host) = get_str(rule, "host").filter(|h| !h.is_empty()) {
            let field = child(&path, "host");
            if host.parse::<std::net::IpAddr>().is_ok() {
                e.invalid(&*field, host, "must be a DNS name, not an IP address");
            }
            if host.contains('*') {
                e.invalid_each(&field, host, wildcard_errors(host));
                wildcard = true;
            } else {
                e.invalid_each(&field, host, dns1123_subdomain_errors(host));
            }
        }
        if !wildcard || !options.allow_invalid_wildcard_rule {
            validate_rule_value(e, rule, &path);
        }
    }
    for (i, tls) in get_array(spec, "tls").iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        for (j, host) in get_array(tls, "hosts").iter().enumerate() {
            let host = host.as_str().unwrap_or_default();
            let field = format!("{path}.hosts[{j}]");
            let errors = if host.contains('*') { wildcard_errors(host) } else { dns1123_subdomain_errors(host) };
            e.invalid_each(&field, host, errors);
        }
        if !options.allow_invalid_secret_name
            && let Some(name) = get_str(tls, "secretName").filter(|n| !n.is_empty())
        {
            e.invalid_each(&child(&path, "secretName"), name, dns1123_subdomain_errors(name));
        }
    }
    if let Some(class) = get_str(spec, "ingressClassName") {
        e.invalid_each("spec.ingressClassName", class, dns1123_subdomain_errors(class));
    }
}

/// `validateIngressRuleValue`: a rule's HTTP paths, each with a type, a path of that type and a backend.
fn validate_rule_value(e: &mut Errors, rule: &Value, path: &str) {
    let Some(http) = get(rule, "http") else { return };
    let http_path = child(path, "http");
    let paths = get_array(http, "paths");
    if paths.is_empty() {
        e.required(child(&http_path, "paths"), "");
    }
    for (i, entry) in paths.iter().enumerate() {
        let entry_path = format!("{http_path}.paths[{i}]");
        // k8s-openapi's type makes the field a string, so a missing one arrives empty.
        let Some(path_type) = get_str(entry, "pathType").filter(|t| !t.is_empty()) else {
            e.required(child(&entry_path, "pathType"), "pathType must be specified");
            continue;
        };
        let value = get_str(entry, "path").unwrap_or_default();
        let field = child(&entry_path, "path");
        match path_type {
            "Exact" | "Prefix" => {
                if !value.starts_with('/') {
                    e.invalid(&*field, value, "must be an absolute path");
                }
                for sequence in INVALID_PATH_SEQUENCES.iter().filter(|s| value.contains(**s)) {
                    e.invalid(&*field, value, &format!("must not contain '{sequence}'"));
                }
                for suffix in INVALID_PATH_SUFFIXES.iter().filter(|s| value.ends_with(**s)) {
                    e.invalid(&*field, value, &format!("cannot end with '{suffix}'"));
                }
            }
            "ImplementationSpecific" => {
                if !value.is_empty() && !value.starts_with('/') {
                    e.invalid(&*field, value, "must be an absolute path");
                }
            }
            other => e.not_supported(child(&entry_path, "pathType"), other, PATH_TYPES),
        }
        if let Some(backend) = get(entry, "backend") {
            validate_backend(e, backend, &child(&entry_path, "backend"));
        } else {
            e.invalid(child(&entry_path, "backend"), "", "resource or service backend is required");
        }
    }
}

/// `validateIngressBackend`: a Service (a DNS-1035 name and a port name or number) or a resource.
fn validate_backend(e: &mut Errors, backend: &Value, path: &str) {
    match (get(backend, "resource"), get(backend, "service")) {
        (Some(_), Some(_)) => e.invalid(path, "", "cannot set both resource and service backends"),
        (Some(resource), None) => validate_local_reference(e, resource, &child(path, "resource")),
        (None, Some(service)) => {
            let service_path = child(path, "service");
            match get_str(service, "name").filter(|n| !n.is_empty()) {
                None => e.required(child(&service_path, "name"), ""),
                Some(name) => e.invalid_each(&child(&service_path, "name"), name, dns1035_label_errors(name)),
            }
            let empty = Value::Null;
            let port = get(service, "port").unwrap_or(&empty);
            let name = get_str(port, "name").filter(|n| !n.is_empty());
            let number = get_i64(port, "number").filter(|n| *n != 0);
            match (name, number) {
                (Some(_), Some(_)) => e.invalid(path, "", "cannot set both port name & port number"),
                (Some(name), None) => {
                    e.invalid_each(&format!("{service_path}.port.name"), name, port_name_errors(name))
                }
                (None, Some(number)) => {
                    if !valid_port(number) {
                        e.invalid(format!("{service_path}.port.number"), number, PORT_RANGE);
                    }
                }
                (None, None) => e.required(path, "port name or number is required"),
            }
        }
        (None, None) => e.invalid(path, "", "resource or service backend is required"),
    }
}

/// `validateIngressTypedLocalObjectReference`.
fn validate_local_reference(e: &mut Errors, reference: &Value, path: &str) {
    if let Some(group) = get_str(reference, "apiGroup") {
        e.invalid_each(&child(path, "apiGroup"), group, dns1123_subdomain_errors(group));
    }
    for key in ["kind", "name"] {
        match get_str(reference, key).filter(|v| !v.is_empty()) {
            None => e.required(child(path, key), ""),
            Some(value) => e.invalid_each(&child(path, key), value, path_segment_errors(value)),
        }
    }
}

/// `IsWildcardDNS1123Subdomain`: `*.` and a DNS subdomain, so the wildcard is only ever the first label.
fn wildcard_errors(host: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if host.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    let valid = host.strip_prefix("*.").is_some_and(|rest| rest.split('.').all(is_label_chars));
    if !valid {
        errors.push(regex_error(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character",
            WILDCARD_FMT,
            &["*.example.com"],
        ));
    }
    errors
}

/// An IngressClass on create or update (whose controller is immutable).
pub(super) fn validate_ingress_class(e: &mut Errors, object: &Value, old: Option<&Value>) {
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    if let Some(old) = old {
        immutable(e, object, old, &["spec", "controller"]);
    }
    match get_str(spec, "controller").filter(|c| !c.is_empty()) {
        None => e.required("spec.controller", ""),
        Some(controller) => {
            if controller.len() > CONTROLLER_MAX {
                e.too_long("spec.controller", CONTROLLER_MAX);
            }
            validate_domain_prefixed_path(e, "spec.controller", controller);
        }
    }
    if let Some(parameters) = get(spec, "parameters") {
        validate_parameters(e, parameters, "spec.parameters");
    }
}

/// `IsDomainPrefixedPath`: `example.com/path`.
fn validate_domain_prefixed_path(e: &mut Errors, field: &str, value: &str) {
    let Some((host, path)) = value.split_once('/').filter(|(host, path)| !host.is_empty() && !path.is_empty()) else {
        e.invalid(field, value, "must be a domain-prefixed path (such as \"acme.io/foo\")");
        return;
    };
    e.invalid_each(field, host, dns1123_subdomain_errors(host));
    let path_chars = |c: char| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c);
    if !path.chars().all(path_chars) {
        e.invalid(field, path, &format!("Invalid path (regex used for validation is '{HTTP_PATH_FMT}')"));
    }
}

/// `validateIngressClassParametersReference`: a kind and name, and a scope that says whether a namespace
/// belongs with them.
fn validate_parameters(e: &mut Errors, parameters: &Value, path: &str) {
    validate_local_reference(e, parameters, path);
    let Some(scope) = get_str(parameters, "scope") else {
        e.required(child(path, "scope"), "");
        return;
    };
    let namespace = get_str(parameters, "namespace");
    match scope {
        "Namespace" => match namespace {
            None => e.required(child(path, "namespace"), "`parameters.scope` is set to 'Namespace'"),
            Some(namespace) => e.invalid_each(&child(path, "namespace"), namespace, dns1123_label_errors(namespace)),
        },
        "Cluster" if namespace.is_some() => {
            e.forbidden(child(path, "namespace"), "`parameters.scope` is set to 'Cluster'")
        }
        "Cluster" => {}
        other => e.not_supported(child(path, "scope"), other, PARAMETER_SCOPES),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ingress(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec})
    }

    fn causes(object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
        let mut e = Errors::default();
        validate_ingress(&mut e, object, old);
        e.0.into_iter().map(|c| (c.field, c.message)).collect()
    }

    fn backend(name: &str, port: Value) -> Value {
        json!({"service": {"name": name, "port": port}})
    }

    #[test]
    fn a_valid_ingress_passes() {
        let spec = json!({
            "ingressClassName": "skiff",
            "rules": [
                {"host": "shop.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 80}))},
                    {"path": "/api", "pathType": "Exact", "backend": backend("api", json!({"name": "http"}))},
                    {"pathType": "ImplementationSpecific", "backend": backend("web", json!({"number": 80}))},
                ]}},
                {"host": "*.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 80}))}]}},
            ],
            "tls": [{"hosts": ["shop.example.com", "*.example.com"], "secretName": "shop-tls"}],
        });
        assert_eq!(causes(&ingress(spec), None), vec![]);
    }

    #[test]
    fn paths_hosts_and_backends_are_checked_in_kubernetes_words() {
        let spec = json!({
            "rules": [
                {"host": "10.0.0.1", "http": {"paths": [
                    {"path": "/a", "pathType": "", "backend": backend("web", json!({"number": 80}))},
                    {"path": "relative", "pathType": "Prefix", "backend": backend("Web", json!({}))},
                    {"path": "/a//b/..", "pathType": "Exact", "backend": backend("web", json!({"name": "http", "number": 80}))},
                    {"path": "/", "pathType": "Regex", "backend": backend("web", json!({"number": 70000}))},
                ]}},
                {"host": "foo.*.example.com"},
                {"host": "shop.example.com", "http": {"paths": []}},
            ],
            "tls": [{"hosts": ["*"], "secretName": "Bad_Name"}],
        });
        let found = causes(&ingress(spec), None);
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].host",
                "spec.rules[0].http.paths[0].pathType",
                "spec.rules[0].http.paths[1].path",
                "spec.rules[0].http.paths[1].backend.service.name",
                "spec.rules[0].http.paths[1].backend",
                "spec.rules[0].http.paths[2].path",
                "spec.rules[0].http.paths[2].path",
                "spec.rules[0].http.paths[2].backend",
                "spec.rules[0].http.paths[3].pathType",
                "spec.rules[0].http.paths[3].backend.service.port.number",
                "spec.rules[1].host",
                "spec.rules[2].http.paths",
                "spec.tls[0].hosts[0]",
                "spec.tls[0].secretName",
            ]
        );
        let messages: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(messages[0], "Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address");
        assert_eq!(messages[1], "Required value: pathType must be specified");
        assert_eq!(messages[2], "Invalid value: \"relative\": must be an absolute path");
        assert_eq!(messages[4], "Required value: port name or number is required");
        assert_eq!(messages[5], "Invalid value: \"/a//b/..\": must not contain '//'");
        assert_eq!(messages[6], "Invalid value: \"/a//b/..\": cannot end with '/..'");
        assert_eq!(messages[7], "Invalid value: \"\": cannot set both port name & port number");
        assert_eq!(
            messages[8],
            "Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""
        );
        assert_eq!(messages[9], "Invalid value: 70000: must be between 1 and 65535, inclusive");
        assert!(
            messages[10].starts_with(
                "Invalid value: \"foo.*.example.com\": a wildcard DNS-1123 subdomain must start with '*.'"
            )
        );
        assert_eq!(messages[11], "Required value");
    }

    #[test]
    fn an_ingress_needs_rules_or_a_default_backend() {
        assert_eq!(
            causes(&ingress(json!({})), None),
            [(
                "spec".to_string(),
                "Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified"
                    .to_string()
            )]
        );
        let no_backend = json!({"defaultBackend": {}});
        assert_eq!(
            causes(&ingress(no_backend), None)[0].1,
            "Invalid value: \"\": resource or service backend is required"
        );
        let resource = json!({"defaultBackend": {"resource": {"kind": "Bucket", "name": "static"}}});
        assert_eq!(causes(&ingress(resource), None), vec![]);
    }

    #[test]
    fn the_class_annotation_must_agree_on_create_and_old_invalid_names_pass_on_update() {
        let mut object =
            ingress(json!({"ingressClassName": "skiff", "defaultBackend": backend("web", json!({"number": 80}))}));
        object["metadata"]["annotations"] = json!({CLASS_ANNOTATION: "nginx"});
        assert_eq!(
            causes(&object, None),
            [(
                "annotations.kubernetes.io/ingress.class".to_string(),
                "Invalid value: \"nginx\": must match `ingressClassName` when both are specified".to_string()
            )]
        );
        assert_eq!(causes(&object, Some(&object)), vec![]);
        let bad_secret =
            ingress(json!({"defaultBackend": backend("web", json!({"number": 80})), "tls": [{"secretName": "Bad"}]}));
        assert_eq!(causes(&bad_secret, None).len(), 1);
        assert_eq!(causes(&bad_secret, Some(&bad_secret)), vec![]);
    }

    #[test]
    fn ingress_classes_need_a_domain_prefixed_controller_that_never_changes() {
        let check = |object: &Value, old: Option<&Value>| {
            let mut e = Errors::default();
            validate_ingress_class(&mut e, object, old);
            e.0.into_iter().map(|c| (c.field, c.message)).collect::<Vec<_>>()
        };
        let class = json!({"metadata": {"name": "skiff"}, "spec": {"controller": "skiff.dev/ingress"}});
        assert_eq!(check(&class, None), vec![]);
        let bad = json!({"metadata": {"name": "x"}, "spec": {"controller": "ingress"}});
        assert_eq!(
            check(&bad, None),
            [(
                "spec.controller".to_string(),
                "Invalid value: \"ingress\": must be a domain-prefixed path (such as \"acme.io/foo\")".to_string()
            )]
        );
        let moved = json!({"metadata": {"name": "skiff"}, "spec": {"controller": "other.dev/ingress"}});
        assert_eq!(check(&moved, Some(&class))[0].0, "spec.controller");
        let params = json!({"metadata": {"name": "x"}, "spec": {"controller": "a.io/b", "parameters": {"kind": "K", "name": "n", "scope": "Cluster", "namespace": "ns"}}});
        assert_eq!(
            check(&params, None),
            [(
                "spec.parameters.namespace".to_string(),
                "Forbidden: `parameters.scope` is set to 'Cluster'".to_string()
            )]
        );
    }
}
