//! Discovery documents: the legacy forms (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`) and
//! aggregated discovery (`apidiscovery.k8s.io/v2`), in the JSON shapes kube-apiserver 1.33 serves.
//!
//! kubectl asks for the aggregated form first and picks the parser from the response Content-Type; the
//! Python client reads only the legacy forms, so both are generated from the same registry.

use serde_json::{Map, Value, json};

use crate::metrics_api;
use crate::resources::{self, ResourceDef};

/// Content-Type of an aggregated discovery answer; clients recognise the aggregated form by it.
pub const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The verbs every resource's main endpoint serves.
pub const RESOURCE_VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// The verbs of `/status` and `/scale`: read and write one object, nothing else.
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// A subresource of a resource, such as `pods/status` or `deployments/scale`.
pub struct Subresource {
    /// The path segment after the object's name (`status`).
    pub name: &'static str,
    /// Group of the object the subresource answers with; empty with an empty `version` when it is the
    /// parent's group-version (kube-apiserver leaves them empty then, and clients rely on that).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

impl Subresource {
    /// The subresource's object (group, version, kind), falling back to the parent's group-version.
    pub fn group_version_kind(&self, parent: &ResourceDef) -> (&'static str, &'static str, &'static str) {
        if self.version.is_empty() {
            (parent.group, parent.version, self.kind)
        } else {
            (self.group, self.version, self.kind)
        }
    }
}

/// Whether `def` has an `approval` subresource: certificatesigningrequests, where approving or denying is a
/// right of its own, apart from updating the status.
pub fn has_approval(def: &ResourceDef) -> bool {
    def.group == "certificates.k8s.io" && def.plural == "certificatesigningrequests"
}

/// The subresources Skiff serves for `def`, sorted by name as kube-apiserver lists them.
pub fn subresources(def: &ResourceDef) -> Vec<Subresource> {
    let mut subs = Vec::new();
    if def.group.is_empty() && def.plural == "pods" {
        subs.push(Subresource { name: "binding", group: "", version: "", kind: "Binding", verbs: &["create"] });
        subs.push(Subresource { name: "log", group: "", version: "", kind: "Pod", verbs: &["get"] });
        subs.push(Subresource {
            name: "exec",
            group: "",
            version: "",
            kind: "PodExecOptions",
            verbs: &["create", "get"],
        });
        subs.push(Subresource {
            name: "portforward",
            group: "",
            version: "",
            kind: "PodPortForwardOptions",
            verbs: &["create", "get"],
        });
    }
    if has_approval(def) {
        subs.push(Subresource { name: "approval", group: "", version: "", kind: def.kind, verbs: SUBRESOURCE_VERBS });
    }
    if def.group.is_empty() && def.plural == "serviceaccounts" {
        subs.push(Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: &["create"],
        });
    }
    if def.scale_subresource {
        subs.push(Subresource {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: SUBRESOURCE_VERBS,
        });
    }
    if def.status_subresource {
        subs.push(Subresource { name: "status", group: "", version: "", kind: def.kind, verbs: SUBRESOURCE_VERBS });
    }
    subs.sort_by_key(|s| s.name);
    subs
}

/// `GET /api`: the core group's versions, and the address clients in any network should use.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The named groups (not the core group) with their versions, in registry order (sorted by name).
fn named_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (group, version) in resources::group_versions().into_iter().filter(|(g, _)| !g.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => groups.push((group, vec![version])),
        }
    }
    groups.extend(metrics_api::served().iter().map(|g| (g.group, vec![g.version])));
    groups.sort_by_key(|(group, _)| *group);
    groups
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let entries: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    // Versions come storage version first (`resources::group_versions`): the first is the preferred one.
    let preferred = entries.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": entries, "preferredVersion": preferred})
}

/// `GET /apis`: every named group.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = named_groups().iter().map(|(g, v)| group_json(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, or `None` when Skiff does not serve the group.
pub fn api_group(group: &str) -> Option<Value> {
    let groups = named_groups();
    let (name, versions) = groups.iter().find(|(g, _)| *g == group)?;
    let mut value = group_json(name, versions);
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), "APIGroup".into());
        object.insert("apiVersion".into(), "v1".into());
    }
    Some(value)
}

fn strings(values: &[&str]) -> Value {
    Value::Array(values.iter().map(|s| Value::from(*s)).collect())
}

/// Inserts `key` only for a non-empty list, as Go's `omitempty` does.
fn insert_list(object: &mut Map<String, Value>, key: &str, values: &[&str]) {
    if !values.is_empty() {
        object.insert(key.into(), strings(values));
    }
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: the resources and their subresources (`pods/status`).
/// `group` is empty for the core group. `None` when Skiff does not serve the group-version.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if let Some(served) = metrics_api::served().iter().find(|g| g.group == group && g.version == version) {
        let entries: Vec<Value> = served
            .resources
            .iter()
            .map(|r| {
                json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                       "verbs": strings(r.verbs)})
            })
            .collect();
        let group_version = format!("{group}/{version}");
        return Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}),
        );
    }
    let defs: Vec<&ResourceDef> =
        resources::all().iter().filter(|r| r.group == group && r.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for def in defs {
        let mut entry = Map::new();
        entry.insert("name".into(), def.plural.into());
        entry.insert("singularName".into(), def.singular.as_str().into());
        entry.insert("namespaced".into(), def.namespaced.into());
        entry.insert("kind".into(), def.kind.into());
        entry.insert("verbs".into(), strings(RESOURCE_VERBS));
        insert_list(&mut entry, "shortNames", def.short_names);
        insert_list(&mut entry, "categories", def.categories);
        entries.push(Value::Object(entry));
        for sub in subresources(def) {
            let mut entry = Map::new();
            entry.insert("name".into(), format!("{}/{}", def.plural, sub.name).into());
            entry.insert("singularName".into(), "".into());
            entry.insert("namespaced".into(), def.namespaced.into());
            if !sub.version.is_empty() {
                entry.insert("group".into(), sub.group.into());
                entry.insert("version".into(), sub.version.into());
            }
            entry.insert("kind".into(), sub.kind.into());
            entry.insert("verbs".into(), strings(sub.verbs));
            entries.push(Value::Object(entry));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}))
}

fn aggregated_resource(def: &ResourceDef) -> Value {
    let mut entry = Map::new();
    entry.insert("resource".into(), def.plural.into());
    // Same group-version as the parent: kube-apiserver leaves group and version empty.
    entry.insert("responseKind".into(), json!({"group": "", "version": "", "kind": def.kind}));
    entry.insert("scope".into(), if def.namespaced { "Namespaced" } else { "Cluster" }.into());
    entry.insert("singularResource".into(), def.singular.as_str().into());
    entry.insert("verbs".into(), strings(RESOURCE_VERBS));
    insert_list(&mut entry, "shortNames", def.short_names);
    insert_list(&mut entry, "categories", def.categories);
    let subs: Vec<Value> = subresources(def)
        .iter()
        .map(|sub| {
            json!({
                "subresource": sub.name,
                "responseKind": {"group": sub.group, "version": sub.version, "kind": sub.kind},
                "verbs": strings(sub.verbs),
            })
        })
        .collect();
    if !subs.is_empty() {
        entry.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(entry)
}

/// Aggregated discovery (`APIGroupDiscoveryList`, apidiscovery.k8s.io/v2): for `GET /api` when `core` (one
/// group with an empty name), else for `GET /apis` (every named group).
pub fn aggregated(core: bool) -> Value {
    let mut items: Vec<Value> = Vec::new();
    let mut current: Option<(&str, Vec<Value>)> = None;
    for (group, version) in resources::group_versions().into_iter().filter(|(g, _)| g.is_empty() == core) {
        let resources: Vec<Value> = resources::all()
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .map(aggregated_resource)
            .collect();
        let version_entry = json!({"version": version, "resources": resources, "freshness": "Current"});
        match &mut current {
            Some((name, versions)) if *name == group => versions.push(version_entry),
            _ => {
                if let Some((name, versions)) = current.take() {
                    items.push(aggregated_group(name, versions));
                }
                current = Some((group, vec![version_entry]));
            }
        }
    }
    if let Some((name, versions)) = current {
        items.push(aggregated_group(name, versions));
    }
    if !core {
        items.extend(metrics_api::served().iter().map(aggregated_served));
        items.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// A group served from readings, as kube-apiserver lists an aggregated APIService's group.
fn aggregated_served(served: &metrics_api::ServedGroup) -> Value {
    let resources: Vec<Value> = served
        .resources
        .iter()
        .map(|r| {
            json!({
                "resource": r.plural,
                "responseKind": {"group": "", "version": "", "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": strings(r.verbs),
            })
        })
        .collect();
    aggregated_group(
        served.group,
        vec![json!({"version": served.version, "resources": resources, "freshness": "Current"})],
    )
}

fn aggregated_group(name: &str, versions: Vec<Value>) -> Value {
    // Go omits the empty name of the core group.
    let metadata = if name.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": name, "creationTimestamp": null})
    };
    json!({"metadata": metadata, "versions": versions})
}

/// Whether an Accept header asks for aggregated discovery v2 (any of its media ranges).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !media.eq_ignore_ascii_case("application/json") {
            return false;
        }
        let (mut g, mut v, mut r#as) = (false, false, false);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "g" => g = value == "apidiscovery.k8s.io",
                "v" => v = value == "v2",
                "as" => r#as = value == "APIGroupDiscoveryList",
                _ => {}
            }
        }
        g && v && r#as
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource<'a>(list: &'a Value, name: &str) -> &'a Value {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn legacy_lists_every_resource_with_subresources() {
        for def in resources::all() {
            let list = api_resource_list(def.group, def.version).unwrap();
            assert_eq!(list["groupVersion"], def.api_version());
            let entry = resource(&list, def.plural);
            assert_eq!(entry["kind"], def.kind);
            assert_eq!(entry["namespaced"], def.namespaced);
            assert_eq!(entry["verbs"], strings(RESOURCE_VERBS));
            assert_eq!(entry.get("shortNames").cloned().unwrap_or(json!([])), strings(def.short_names));
            assert_eq!(entry.get("categories").cloned().unwrap_or(json!([])), strings(def.categories));
            if def.status_subresource {
                let status = resource(&list, &format!("{}/status", def.plural));
                assert_eq!(status["kind"], def.kind);
                assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
            }
        }
        let apps = api_resource_list("apps", "v1").unwrap();
        let scale = resource(&apps, "deployments/scale");
        assert_eq!(
            (&scale["group"], &scale["version"], &scale["kind"]),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        let core = api_resource_list("", "v1").unwrap();
        assert_eq!(resource(&core, "pods")["shortNames"], json!(["po"]));
        assert_eq!(resource(&core, "pods/binding")["verbs"], json!(["create"]));
        assert_eq!(resource(&core, "pods/binding")["kind"], "Binding");
        let token = resource(&core, "serviceaccounts/token");
        assert_eq!(
            (&token["group"], &token["version"], &token["kind"], &token["verbs"]),
            (&json!("authentication.k8s.io"), &json!("v1"), &json!("TokenRequest"), &json!(["create"]))
        );
        assert!(api_resource_list("apps", "v2").is_none());
        assert!(api_resource_list("nope", "v1").is_none());
    }

    #[test]
    fn legacy_groups() {
        assert_eq!(api_versions("10.0.0.1:6443")["serverAddressByClientCIDRs"][0]["serverAddress"], "10.0.0.1:6443");
        let list = api_group_list();
        let names: Vec<&str> = list["groups"].as_array().unwrap().iter().filter_map(|g| g["name"].as_str()).collect();
        assert!(names.contains(&"apps") && names.contains(&"batch") && !names.contains(&""));
        let apps = api_group("apps").unwrap();
        assert_eq!(apps["kind"], "APIGroup");
        assert_eq!(apps["preferredVersion"], json!({"groupVersion": "apps/v1", "version": "v1"}));
        assert!(api_group("").is_none());
        assert!(api_group("example.com").is_none());
    }

    #[test]
    fn aggregated_drops_nothing() {
        let core = aggregated(true);
        let apis = aggregated(false);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert!(core["items"][0]["metadata"].get("name").is_none());
        let mut seen = 0;
        for (document, is_core) in [(&core, true), (&apis, false)] {
            for item in document["items"].as_array().unwrap() {
                let group = item["metadata"]["name"].as_str().unwrap_or("");
                assert_eq!(group.is_empty(), is_core);
                if metrics_api::served().iter().any(|served| served.group == group) {
                    continue;
                }
                for version in item["versions"].as_array().unwrap() {
                    for entry in version["resources"].as_array().unwrap() {
                        let def = resources::find(
                            group,
                            version["version"].as_str().unwrap(),
                            entry["resource"].as_str().unwrap(),
                        )
                        .unwrap();
                        assert_eq!(entry["responseKind"]["kind"], def.kind);
                        assert_eq!(entry["scope"], if def.namespaced { "Namespaced" } else { "Cluster" });
                        assert_eq!(entry["singularResource"], def.singular);
                        for sub in entry["subresources"].as_array().into_iter().flatten() {
                            assert!(sub["responseKind"]["kind"].is_string());
                        }
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, resources::all().len());
        let metrics = apis["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "metrics.k8s.io");
        let pods = &metrics.unwrap()["versions"][0]["resources"][1];
        assert_eq!((&pods["resource"], &pods["responseKind"]["kind"]), (&json!("pods"), &json!("PodMetrics")));
        let legacy = api_resource_list("custom.metrics.k8s.io", "v1beta2").unwrap();
        assert_eq!(legacy["resources"][0]["name"], "pods/http_requests_per_second");
        let apps = apis["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "apps").unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
        let scale = deploy["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"], json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
    }

    #[test]
    fn accept_negotiation() {
        // What kubectl 1.32 sends.
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(wants_aggregated("application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList"));
        assert!(!wants_aggregated("application/json"));
        assert!(!wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"));
        assert!(!wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2"));
        assert!(!wants_aggregated("application/yaml;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"));
        assert!(!wants_aggregated(""));
    }
}
