//! The resources Skiff serves, one [`ResourceDef`] per served version, built from the k8s-openapi type so
//! that group, version, kind and plural come from the same source as the JSON shapes.
//!
//! A resource served in several versions (autoscaling/v2 and v1 HorizontalPodAutoscalers) has one
//! storage version, whose defs carry no [`Conversion`], and other versions that are views of the same
//! stored objects: each carries the pair of functions that turn its objects into the storage version and
//! back. The API server converts at the store's edge only, so everything between (defaults, patches,
//! validation, admission, tables) sees the version the client asked for, as kube-apiserver's codecs do.

use std::sync::LazyLock;

use k8s_openapi::api::{apps, autoscaling, batch, certificates, coordination, core, discovery, networking, node, rbac};
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
    /// How objects of this version are stored, when this is not the storage version.
    pub conversion: Option<Conversion>,
    normalize: fn(Value) -> Result<Value, serde_json::Error>,
    schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// A served version that is not stored: the storage version it is a view of, and the conversions both
/// ways. Conversions work on whole objects, so a version may keep what it cannot represent in annotations,
/// as Kubernetes' autoscaling/v1 does.
pub struct Conversion {
    pub storage_version: &'static str,
    pub to_storage: fn(Value) -> Result<Value, ConversionError>,
    pub from_storage: fn(Value) -> Result<Value, ConversionError>,
}

/// An object that cannot be converted between two versions of its resource.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    /// A round-trip annotation holds something that is not the JSON its version writes there.
    #[error("annotation {annotation} is not valid: {source}")]
    Annotation {
        annotation: &'static str,
        #[source]
        source: serde_json::Error,
    },
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

    /// Whether objects are stored in this version (every resource with a single version is).
    pub fn is_storage(&self) -> bool {
        self.conversion.is_none()
    }

    /// `object` of this version in the storage version; itself for the storage version.
    pub fn to_storage(&self, object: Value) -> Result<Value, ConversionError> {
        match &self.conversion {
            Some(conversion) => (conversion.to_storage)(object),
            None => Ok(object),
        }
    }

    /// A stored object in this version; itself for the storage version.
    pub fn from_storage(&self, object: Value) -> Result<Value, ConversionError> {
        match &self.conversion {
            Some(conversion) => (conversion.from_storage)(object),
            None => Ok(object),
        }
    }

    /// The def of the version this resource's objects are stored in.
    pub fn storage(&self) -> &'static ResourceDef {
        let version = self.conversion.as_ref().map_or(self.version, |c| c.storage_version);
        find(self.group, version, self.plural).unwrap_or_else(|| unreachable!("storage versions are registered"))
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
        conversion: None,
        normalize: |object| serde_json::from_value::<K>(object).and_then(|typed| serde_json::to_value(typed)),
        schema: |generator| generator.subschema_for::<K>(),
    }
}

/// A def of a version served as a view of `storage_version`'s objects.
fn converted<K>(namespaced: bool, traits: Traits, conversion: Conversion) -> ResourceDef
where
    K: Resource + ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema,
{
    ResourceDef { conversion: Some(conversion), ..def::<K>(namespaced, traits) }
}

const ALL: &[&str] = &["all"];
/// kube-apiserver's HorizontalPodAutoscaler traits, the same in both its versions.
const HPA: Traits = Traits { short_names: &["hpa"], categories: ALL, status: true, scale: false, generation: false };

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
        def::<autoscaling::v2::HorizontalPodAutoscaler>(true, HPA),
        converted::<autoscaling::v1::HorizontalPodAutoscaler>(
            true,
            HPA,
            Conversion {
                storage_version: "v2",
                to_storage: crate::autoscaling::v1_to_v2,
                from_storage: crate::autoscaling::v2_to_v1,
            },
        ),
        def::<coordination::v1::Lease>(true, PLAIN),
        def::<discovery::v1::EndpointSlice>(true, PLAIN),
        def::<networking::v1::NetworkPolicy>(true, Traits { short_names: &["netpol"], generation: true, ..PLAIN }),
        def::<networking::v1::Ingress>(true, Traits { short_names: &["ing"], status: true, generation: true, ..PLAIN }),
        def::<networking::v1::IngressClass>(false, Traits { generation: true, ..PLAIN }),
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

/// Group versions in the order discovery lists them: core first, then groups by name; within a group the
/// storage version first, which discovery calls the preferred one (autoscaling/v2 before v1).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let stores =
        |group: &str, version: &str| all().iter().any(|r| r.group == group && r.version == version && r.is_storage());
    let mut versions: Vec<(&str, &str)> = all().iter().map(|r| (r.group, r.version)).collect();
    versions.sort_by_key(|&(group, version)| (group, !stores(group, version), version));
    versions.dedup();
    versions
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
    fn ingresses_and_their_classes_are_served_in_networking_k8s_io() {
        let ingresses = find("networking.k8s.io", "v1", "ingresses").expect("ingresses registered");
        assert_eq!((ingresses.kind, ingresses.short_names), ("Ingress", &["ing"][..]));
        assert!(ingresses.namespaced && ingresses.status_subresource && ingresses.tracks_generation);
        let classes = find("networking.k8s.io", "v1", "ingressclasses").expect("ingressclasses registered");
        assert_eq!((classes.kind, classes.singular.as_str()), ("IngressClass", "ingressclass"));
        assert!(!classes.namespaced && !classes.status_subresource);
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
    fn hpas_are_served_in_two_versions_over_one_storage_version() {
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").expect("v2 registered");
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").expect("v1 registered");
        assert!(v2.is_storage() && !v1.is_storage());
        assert!(std::ptr::eq(v1.storage(), v2) && std::ptr::eq(v2.storage(), v2));
        assert_eq!((v1.short_names, v1.categories, v1.status_subresource), (&["hpa"][..], ALL, true));
        assert_eq!(v1.qualified_name(), v2.qualified_name());
        // The storage version is listed first: discovery prefers it.
        let autoscaling: Vec<&str> =
            group_versions().into_iter().filter(|(g, _)| *g == "autoscaling").map(|(_, v)| v).collect();
        assert_eq!(autoscaling, ["v2", "v1"]);
        let object = serde_json::json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        let stored = v1.to_storage(object.clone()).unwrap();
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(v2.to_storage(stored.clone()).unwrap(), stored);
        assert_eq!(v1.from_storage(stored).unwrap(), object);
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
