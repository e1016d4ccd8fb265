//! The resources Skiff serves, one [`ResourceDef`] each, built from the k8s-openapi type so that group,
//! version, kind and plural come from the same source as the JSON shapes.

use std::sync::LazyLock;

use k8s_openapi::api::{apps, batch, certificates, coordination, core, discovery, networking, node, rbac};
use k8s_openapi::{ListableResource, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What the API knows of one resource type.
pub struct ResourceDef {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// Plural lowercase name used in URLs (`pods`).
    pub plural: &'static str,
    /// Singular lowercase name (`pod`).
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// `all` puts the resource in `kubectl get all`.
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main endpoint ignores status changes and `/status` changes only status.
    pub status_subresource: bool,
    /// Has a `/scale` subresource (autoscaling/v1 Scale over `spec.replicas`).
    pub scale_subresource: bool,
    /// metadata.generation counts changes to everything but metadata and status.
    pub tracks_generation: bool,
    normalize: fn(Value) -> Result<Value, serde_json::Error>,
    schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `pods` or `deployments.apps`, the form Kubernetes uses in error messages.
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Round-trips an object through its k8s-openapi type: the result has the canonical JSON shape, and
    /// a failure means the object does not have this kind's shape (a wrong type for a known field).
    pub fn normalize(&self, object: Value) -> Result<Value, serde_json::Error> {
        (self.normalize)(object)
    }

    /// The JSON schema of the k8s-openapi type, for /openapi/v3.
    pub fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        (self.schema)(generator)
    }
}

struct Traits {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    scale: bool,
    generation: bool,
}

const PLAIN: Traits = Traits { short_names: &[], categories: &[], status: false, scale: false, generation: false };

fn def<K>(namespaced: bool, traits: Traits) -> ResourceDef
where
    K: Resource + ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema,
{
    ResourceDef {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_ascii_lowercase(),
        namespaced,
        short_names: traits.short_names,
        categories: traits.categories,
        status_subresource: traits.status,
        scale_subresource: traits.scale,
        tracks_generation: traits.generation,
        normalize: |object| serde_json::from_value::<K>(object).and_then(|typed| serde_json::to_value(typed)),
        schema: |generator| generator.subschema_for::<K>(),
    }
}

const ALL: &[&str] = &["all"];

static RESOURCES: LazyLock<Vec<ResourceDef>> = LazyLock::new(|| {
    vec![
        def::<core::v1::Namespace>(false, Traits { short_names: &["ns"], status: true, ..PLAIN }),
        def::<core::v1::Node>(false, Traits { short_names: &["no"], status: true, ..PLAIN }),
        def::<core::v1::Pod>(true, Traits { short_names: &["po"], categories: ALL, status: true, ..PLAIN }),
        def::<core::v1::Service>(true, Traits { short_names: &["svc"], categories: ALL, status: true, ..PLAIN }),
        def::<core::v1::Endpoints>(true, Traits { short_names: &["ep"], ..PLAIN }),
        def::<core::v1::ConfigMap>(true, Traits { short_names: &["cm"], ..PLAIN }),
        def::<core::v1::LimitRange>(true, Traits { short_names: &["limits"], ..PLAIN }),
        def::<core::v1::Secret>(true, PLAIN),
        def::<core::v1::ServiceAccount>(true, Traits { short_names: &["sa"], ..PLAIN }),
        def::<core::v1::Event>(true, Traits { short_names: &["ev"], ..PLAIN }),
        def::<apps::v1::Deployment>(
            true,
            Traits { short_names: &["deploy"], categories: ALL, status: true, scale: true, generation: true },
        ),
        def::<apps::v1::ReplicaSet>(
            true,
            Traits { short_names: &["rs"], categories: ALL, status: true, scale: true, generation: true },
        ),
        def::<apps::v1::DaemonSet>(
            true,
            Traits { short_names: &["ds"], categories: ALL, status: true, generation: true, ..PLAIN },
        ),
        def::<batch::v1::Job>(true, Traits { categories: ALL, status: true, generation: true, ..PLAIN }),
        def::<coordination::v1::Lease>(true, PLAIN),
        def::<discovery::v1::EndpointSlice>(true, PLAIN),
        def::<networking::v1::NetworkPolicy>(true, Traits { short_names: &["netpol"], generation: true, ..PLAIN }),
        def::<node::v1::RuntimeClass>(false, PLAIN),
        def::<rbac::v1::Role>(true, PLAIN),
        def::<rbac::v1::ClusterRole>(false, PLAIN),
        def::<rbac::v1::RoleBinding>(true, PLAIN),
        def::<rbac::v1::ClusterRoleBinding>(false, PLAIN),
        def::<certificates::v1::CertificateSigningRequest>(
            false,
            Traits { short_names: &["csr"], status: true, ..PLAIN },
        ),
    ]
});

/// Every resource Skiff serves.
pub fn all() -> &'static [ResourceDef] {
    &RESOURCES
}

/// The resource served at `/api[s]/{group}/{version}/{plural}`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    all().iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    all().iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Group versions in the order discovery lists them: core first, then groups by name.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = all().iter().map(|r| (r.group, r.version)).collect();
    groups.sort();
    groups.dedup();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_uses_kubernetes_names() {
        let deploy = find("apps", "v1", "deployments").expect("deployments registered");
        assert_eq!(
            (deploy.kind, deploy.list_kind, deploy.singular.as_str()),
            ("Deployment", "DeploymentList", "deployment")
        );
        assert_eq!(deploy.qualified_name(), "deployments.apps");
        assert_eq!(find("", "v1", "pods").map(|r| r.api_version()), Some("v1".to_string()));
        assert!(find_kind("node.k8s.io/v1", "RuntimeClass").is_some_and(|r| !r.namespaced));
        assert_eq!(group_versions().first(), Some(&("", "v1")));
    }

    #[test]
    fn endpointslices_are_served_in_discovery_k8s_io() {
        let slices = find("discovery.k8s.io", "v1", "endpointslices").expect("endpointslices registered");
        assert_eq!(
            (slices.kind, slices.list_kind, slices.singular.as_str()),
            ("EndpointSlice", "EndpointSliceList", "endpointslice")
        );
        assert!(slices.namespaced && !slices.status_subresource && !slices.tracks_generation);
        assert_eq!(slices.qualified_name(), "endpointslices.discovery.k8s.io");
        assert!(find_kind("discovery.k8s.io/v1", "EndpointSlice").is_some());
        assert!(group_versions().contains(&("discovery.k8s.io", "v1")));
    }

    #[test]
    fn network_policies_are_served_in_networking_k8s_io() {
        let policies = find("networking.k8s.io", "v1", "networkpolicies").expect("networkpolicies registered");
        assert_eq!(
            (policies.kind, policies.list_kind, policies.singular.as_str(), policies.short_names),
            ("NetworkPolicy", "NetworkPolicyList", "networkpolicy", &["netpol"][..])
        );
        assert!(policies.namespaced && !policies.status_subresource && policies.tracks_generation);
        assert_eq!(policies.qualified_name(), "networkpolicies.networking.k8s.io");
        assert!(group_versions().contains(&("networking.k8s.io", "v1")));
    }

    #[test]
    fn limit_ranges_are_served_in_the_core_group() {
        let ranges = find("", "v1", "limitranges").expect("limitranges registered");
        assert_eq!(
            (ranges.kind, ranges.list_kind, ranges.singular.as_str(), ranges.short_names),
            ("LimitRange", "LimitRangeList", "limitrange", &["limits"][..])
        );
        assert!(ranges.namespaced && !ranges.status_subresource && !ranges.tracks_generation);
        assert!(find_kind("v1", "LimitRange").is_some());
    }

    #[test]
    fn normalize_rejects_wrong_shapes_and_keeps_known_fields() {
        let cm = find("", "v1", "configmaps").unwrap();
        let object =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
        assert_eq!(cm.normalize(object.clone()).unwrap(), object);
        assert!(cm.normalize(serde_json::json!({"metadata": {"name": "a"}, "data": "not a map"})).is_err());
    }
}
