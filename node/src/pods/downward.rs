//! The downward API: a pod's own fields and its containers' resources, given to its containers as
//! environment variables (`fieldRef`, `resourceFieldRef`) and as the files of downwardAPI volumes and
//! projections. Pure: everything comes from the pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, Pod, ResourceFieldSelector};

use super::atomic::{File, Files};

/// Why a downward API value cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum DownwardError {
    /// A fieldRef naming something other than the pod's metadata, all a volume may hold.
    #[error("fieldRef {0} is not supported in downwardAPI volumes")]
    Field(String),
    /// A resourceFieldRef naming a container the pod does not have.
    #[error("resourceFieldRef {resource} names no container of the pod (\"{container}\")")]
    Container { resource: String, container: String },
    /// A resource the container sets no value for, or one the agent cannot read.
    #[error("resourceFieldRef {resource} of container \"{container}\" is not supported or not set")]
    Resource { resource: String, container: String },
}

/// The value of a `fieldRef` in a container's environment; None for a field the agent cannot give.
pub fn field_value(pod: &Pod, path: &str, node_ip: IpAddr, pod_ip: IpAddr) -> Option<String> {
    if let Some(value) = metadata_value(pod, path) {
        return Some(value);
    }
    let spec = pod.spec.as_ref();
    Some(match path {
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        _ => return None,
    })
}

/// The pod's metadata a fieldRef may name, in the environment and in volumes alike (the kubelet's
/// `ExtractFieldPathAsString`). A label or annotation the pod lacks is empty, as there.
fn metadata_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| path.strip_prefix(prefix)?.strip_suffix("']");
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Some(format_map(meta.annotations.as_ref())),
        _ => {
            let (map, key) = match subscript("metadata.labels['") {
                Some(key) => (&meta.labels, key),
                None => (&meta.annotations, subscript("metadata.annotations['")?),
            };
            Some(map.as_ref().and_then(|map| map.get(key)).cloned().unwrap_or_default())
        }
    }
}

/// Labels or annotations as the kubelet writes them to a file: `key="value"` lines in key order, values
/// quoted as Go's `%q` quotes them, no newline after the last.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines: Vec<String> =
        map.into_iter().flatten().map(|(key, value)| format!("{key}={}", go_quote(value))).collect();
    lines.join("\n")
}

/// Go's `strconv.Quote` for the characters labels and annotations hold: escapes for quotes, backslashes
/// and control characters, everything else as it is.
fn go_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            '\u{7}' => quoted.push_str("\\a"),
            '\u{8}' => quoted.push_str("\\b"),
            '\u{b}' => quoted.push_str("\\v"),
            '\u{c}' => quoted.push_str("\\f"),
            c if c.is_ascii_control() => quoted.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The value of a `resourceFieldRef`: of the container it names, else of `own` (the container whose
/// environment it is; a volume has none).
pub fn resource(pod: &Pod, own: Option<&Container>, selector: &ResourceFieldSelector) -> Result<String, DownwardError> {
    let named = selector.container_name.as_deref().filter(|name| !name.is_empty());
    let container = match named {
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|spec| spec.containers.iter().chain(spec.init_containers.iter().flatten()))
            .find(|container| container.name == name),
        None => own,
    };
    let container = container.ok_or_else(|| DownwardError::Container {
        resource: selector.resource.clone(),
        container: named.unwrap_or_default().to_owned(),
    })?;
    resource_value(container, selector).ok_or_else(|| DownwardError::Resource {
        resource: selector.resource.clone(),
        container: container.name.clone(),
    })
}

/// A container's limit or request in units of the selector's divisor (1 unless given), rounded up, as the
/// kubelet gives it: cpu divided in millicores and the rest in whole units, so that 100m / 1m is 100
/// exactly. None when the container sets no such value.
fn resource_value(container: &Container, selector: &ResourceFieldSelector) -> Option<String> {
    use skiff_api::validation::parse_quantity;
    let (kind, name) = selector.resource.split_once('.')?;
    let resources = container.resources.as_ref()?;
    let map = match kind {
        "limits" => resources.limits.as_ref(),
        "requests" => resources.requests.as_ref(),
        _ => return None,
    }?;
    let value = parse_quantity(&map.get(name)?.0)?;
    let divisor = match &selector.divisor {
        Some(divisor) => parse_quantity(&divisor.0)?,
        None => 1.0,
    };
    let (value, divisor) = if name == "cpu" {
        ((value * 1000.0).round(), (divisor * 1000.0).round())
    } else {
        (value.ceil(), divisor.round())
    };
    (divisor > 0.0).then(|| ((value / divisor).ceil() as i64).to_string())
}

/// The files of a downwardAPI volume or projection: each item's value, with its own mode or
/// `default_mode`. An item naming neither a field nor a resource is an empty file, as the kubelet writes it.
pub fn volume_files(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: u32) -> Result<Files, DownwardError> {
    items
        .iter()
        .map(|item| {
            let value = if let Some(field) = &item.field_ref {
                metadata_value(pod, &field.field_path).ok_or_else(|| DownwardError::Field(field.field_path.clone()))?
            } else if let Some(selector) = &item.resource_field_ref {
                resource(pod, None, selector)?
            } else {
                String::new()
            };
            Ok((item.path.clone(), File::with_mode(value.into_bytes(), item.mode, default_mode)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "0f1e",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"note": "say \"hi\"\n\tthen\\go", "bell": "\u{7}\u{1}"}},
            "spec": {"containers": [{"name": "main", "resources": {
                "limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "100m", "ephemeral-storage": "1500"}}}]}
        }))
        .unwrap()
    }

    fn volume(items: serde_json::Value) -> Result<Vec<(String, String, u32)>, String> {
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(items).unwrap();
        let files = volume_files(&pod(), &items, 0o644).map_err(|e| e.to_string())?;
        Ok(files.into_iter().map(|(path, f)| (path, String::from_utf8(f.data).unwrap(), f.mode)).collect())
    }

    fn entry(path: &str, value: &str, mode: u32) -> (String, String, u32) {
        (path.into(), value.into(), mode)
    }

    #[test]
    fn volume_files_hold_the_pods_metadata() {
        let files = volume(serde_json::json!([
            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
            {"path": "meta/uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
            {"path": "absent", "fieldRef": {"fieldPath": "metadata.annotations['absent']"}},
        ]));
        assert_eq!(
            files.unwrap(),
            [
                entry("absent", "", 0o644),
                entry("annotations", "bell=\"\\a\\x01\"\nnote=\"say \\\"hi\\\"\\n\\tthen\\\\go\"", 0o644),
                entry("labels", "app=\"web\"\ntier=\"front\"", 0o644),
                entry("meta/uid", "0f1e", 0o644),
                entry("name", "web", 0o400),
                entry("namespace", "shop", 0o644),
                entry("tier", "front", 0o644),
            ]
        );
        let error = volume(serde_json::json!([{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]));
        assert_eq!(error.unwrap_err(), "fieldRef status.podIP is not supported in downwardAPI volumes");
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        let items: Vec<DownwardAPIVolumeFile> =
            serde_json::from_value(serde_json::json!([{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]))
                .unwrap();
        assert_eq!(volume_files(&bare, &items, 0o644).unwrap()["l"].data, b"", "no labels: an empty file");
    }

    #[test]
    fn resources_are_given_in_units_of_the_divisor_rounded_up() {
        let resource = |resource: &str, divisor: Option<&str>| {
            let mut item =
                serde_json::json!({"path": "r", "resourceFieldRef": {"containerName": "main", "resource": resource}});
            if let Some(divisor) = divisor {
                item["resourceFieldRef"]["divisor"] = divisor.into();
            }
            volume(serde_json::json!([item])).map(|files| files[0].1.clone())
        };
        assert_eq!(resource("limits.cpu", None).unwrap(), "2", "1.5 cores in whole cores");
        assert_eq!(resource("limits.cpu", Some("1m")).unwrap(), "1500");
        assert_eq!(resource("requests.cpu", Some("1m")).unwrap(), "100", "no floating-point error");
        assert_eq!(resource("limits.memory", None).unwrap(), (64 << 20).to_string());
        assert_eq!(resource("limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(resource("requests.ephemeral-storage", Some("1k")).unwrap(), "2");
        let unset = resource("limits.ephemeral-storage", None).unwrap_err();
        assert_eq!(
            unset,
            "resourceFieldRef limits.ephemeral-storage of container \"main\" is not supported or not set"
        );
        let item = serde_json::json!([{"path": "r", "resourceFieldRef": {"containerName": "other", "resource": "limits.cpu"}}]);
        assert_eq!(volume(item).unwrap_err(), "resourceFieldRef limits.cpu names no container of the pod (\"other\")");
    }

    #[test]
    fn environment_fields_include_addresses_and_the_service_account() {
        let (node, pod_ip): (IpAddr, IpAddr) = ("192.0.2.2".parse().unwrap(), "10.42.7.5".parse().unwrap());
        let pod = pod();
        assert_eq!(field_value(&pod, "status.podIP", node, pod_ip).as_deref(), Some("10.42.7.5"));
        assert_eq!(field_value(&pod, "status.hostIP", node, pod_ip).as_deref(), Some("192.0.2.2"));
        assert_eq!(field_value(&pod, "metadata.labels['app']", node, pod_ip).as_deref(), Some("web"));
        assert_eq!(field_value(&pod, "spec.serviceAccountName", node, pod_ip).as_deref(), Some("default"));
        assert_eq!(field_value(&pod, "spec.nodeName", node, pod_ip), None, "not bound");
        assert_eq!(field_value(&pod, "status.phase", node, pod_ip), None);
        let own = &pod.spec.as_ref().unwrap().containers[0];
        let selector = ResourceFieldSelector { resource: "limits.memory".into(), ..Default::default() };
        assert_eq!(resource(&pod, Some(own), &selector).unwrap(), (64 << 20).to_string(), "the own container's");
    }
}
