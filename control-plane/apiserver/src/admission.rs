//! Admission that needs the store or the requester, in kube-apiserver's order: NodeRestriction (a node
//! writes only its own Node, Lease and pods' status; `skiff_api::node_authorizer::admit`), LimitRanger
//! (a new pod gets its namespace's default resources and must stay in its bounds;
//! `skiff_api::limit_ranger`), RBAC's escalation prevention (no one grants what they do not hold;
//! `skiff_api::rbac::covers`), and Pod Security, as the PodSecurity plugin. What a namespace's level
//! allows is decided in `skiff_api::pod_security`; this module reads what the decisions need (the
//! namespace, its LimitRanges, and its pods when a label tightens its enforce level) and turns refusals
//! into Statuses.
//!
//! Writes reach it from `objects`. Pod Security looks at creates and updates of the main resource only
//! (status, binding, scale: none can change a pod's spec or a workload's template), as PSA ignores them;
//! LimitRanger only at pod creates, as a pod's resources change afterwards only through a resize;
//! NodeRestriction looks at every write, deletes included.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;
use skiff_api::authz::{Attributes, Decision, UserInfo};
use skiff_api::node_authorizer::{self, AdmissionRequest, Operation};
use skiff_api::resources::{self, ResourceDef};
use skiff_api::{limit_ranger, pod_security, rbac, validation};

use crate::error::ApiError;
use crate::objects::{ListOptions, Objects, name_of};

/// How long tightening a namespace's enforce level may spend reading its pods before it answers without
/// checking them (PSA's `defaultNamespacePodCheckTimeout`): the label change itself never waits for more.
const POD_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Pod Security for a create (`old` None) or update of `object` in namespace `ns`: the warnings to answer
/// with, a 403 for a pod its namespace's enforce level refuses, a 422 for invalid namespace labels.
async fn pod_security(
    objects: &Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    object: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let policy = objects.pod_security();
    match (def.group, def.plural, ns) {
        ("", "namespaces", _) => namespace(objects, def, object, old).await,
        ("", "pods", Some(ns)) => {
            let unchanged = old.is_some_and(|old| !pod_security::significant_pod_update(object, old));
            if policy.exempt(ns) || unchanged {
                return Ok(Vec::new());
            }
            let namespace = read_namespace(objects, ns).await?;
            policy.admit_pod(&namespace, object).map_err(|reason| ApiError::forbidden(def, name_of(object), &reason))
        }
        (group, plural, Some(ns)) if pod_security::pod_template(group, plural, object).is_some() => {
            if policy.exempt(ns) {
                return Ok(Vec::new());
            }
            // Workloads are only warned about, so, as PSA, one whose namespace cannot be read passes.
            match read_namespace(objects, ns).await {
                Ok(namespace) => Ok(policy.warn_pod_controller(&namespace, group, plural, object)),
                Err(error) => {
                    tracing::debug!(%error, namespace = ns, "pod security: namespace unreadable, not checked");
                    Ok(Vec::new())
                }
            }
        }
        _ => Ok(Vec::new()),
    }
}

/// The admission chain for a create (`old` None) or update of `object`'s `subresource` ("" for the main
/// resource) by `user`: the warnings to answer with, or the refusal. A pod being created is first given
/// its namespace's default resources (LimitRanger) and its ServiceAccount and API credentials (the
/// ServiceAccount plugin), both of which mutate, so the checks after see the pod as it will be stored.
pub(crate) async fn admit(
    objects: &Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    subresource: &str,
    object: &mut Value,
    old: Option<&Value>,
    user: Option<&UserInfo>,
) -> Result<Vec<String>, ApiError> {
    let operation = if old.is_some() { Operation::Update } else { Operation::Create };
    node_restriction(def, operation, subresource, ns, name_of(object), old, Some(object), user)?;
    if def.group == CERTIFICATES && def.plural == "certificatesigningrequests" {
        certificate_request(objects, def, subresource, object, old, user).await?;
    }
    if !subresource.is_empty() {
        return Ok(Vec::new());
    }
    if let (("", "pods"), Some(ns), None) = ((def.group, def.plural), ns, old) {
        limit_ranger(objects, def, ns, object).await?;
        crate::serviceaccounts::admit_pod(objects, ns, object).await?;
    }
    if let (("networking.k8s.io", "ingresses"), None) = ((def.group, def.plural), old) {
        default_ingress_class(objects, object).await?;
    }
    let object = &*object;
    rbac_escalation(objects, def, ns, object, user).await?;
    pod_security(objects, def, ns, object, old).await
}

/// DefaultIngressClass: an Ingress created naming no class (neither `spec.ingressClassName` nor the legacy
/// annotation) gets the default IngressClass's name.
async fn default_ingress_class(objects: &Objects, ingress: &mut Value) -> Result<(), ApiError> {
    let typed: k8s_openapi::api::networking::v1::Ingress =
        serde_json::from_value(ingress.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
    if skiff_api::ingress::class_of(&typed).is_some() {
        return Ok(());
    }
    let def = resources::find("networking.k8s.io", "v1", "ingressclasses").ok_or(ApiError::NoRoute)?;
    let listed = objects.list(def, None, &ListOptions::default()).await?.items;
    let classes: Vec<k8s_openapi::api::networking::v1::IngressClass> =
        listed.into_iter().filter_map(|class| serde_json::from_value(class).ok()).collect();
    if let Some(name) = skiff_api::ingress::default_class(&classes).and_then(|class| class.metadata.name.clone()) {
        tracing::debug!(ingress = name_of(ingress), class = %name, "ingress given the default class");
        ingress["spec"]["ingressClassName"] = Value::from(name);
    }
    Ok(())
}

/// LimitRanger for a pod being created in `ns`: the namespace's LimitRanges, in name order, fill in the
/// resources its containers lack; a pod so changed is validated again, since Kubernetes validates after
/// mutating admission (a default limit below a request a container set makes the pod invalid, 422); then a
/// pod outside a LimitRange's bounds is refused with 403.
async fn limit_ranger(objects: &Objects, def: &ResourceDef, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let limit_ranges = resources::find("", "v1", "limitranges").ok_or(ApiError::NoRoute)?;
    let limit_ranges = objects.list(limit_ranges, Some(ns), &ListOptions::default()).await?.items;
    if limit_ranges.is_empty() {
        return Ok(());
    }
    if limit_ranger::default_resources(&limit_ranges, pod) {
        let causes = validation::validate(def, pod, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(def, name_of(pod), causes));
        }
    }
    limit_ranger::check(&limit_ranges, pod)
        .map_err(|violations| ApiError::forbidden(def, name_of(pod), &violations.to_string()))
}

const CERTIFICATES: &str = "certificates.k8s.io";

/// CertificateSigningRequests, as kube-apiserver's CSR strategy and its CertificateApproval and
/// CertificateSigning plugins: who asked is who the server saw (stamped on create, whatever the client
/// wrote, since approvers decide by it), the request never changes once made, and approving one or issuing
/// its certificate is a right on its signer (`approve` or `sign` on `signers`, by the signer's name or
/// `<domain>/*`). Neither is allowed for a request a node made before it was revoked (see
/// [`crate::revocation`]).
async fn certificate_request(
    objects: &Objects,
    def: &ResourceDef,
    subresource: &str,
    object: &mut Value,
    old: Option<&Value>,
    user: Option<&UserInfo>,
) -> Result<(), ApiError> {
    match (subresource, old, user) {
        ("", None, Some(user)) => requested_by(object, user),
        ("", Some(old), _) => object["spec"] = old["spec"].clone(),
        _ => {}
    }
    let Some(old) = old else { return Ok(()) };
    let verb = match subresource {
        "approval" => "approve",
        // Only issuing the certificate is signing; a signer's other status updates (Failed) are not.
        "status" if object.pointer("/status/certificate") != old.pointer("/status/certificate") => "sign",
        _ => return Ok(()),
    };
    // Denying a revoked node's request stays open to all who may approve: only a certificate is refused.
    let approves = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Approved" && c["status"] == "True");
    if verb == "sign" || approves {
        crate::revocation::admit_request(objects, def, old, verb).await?;
    }
    let (Some(user), Some(authorizer)) = (user, objects.authorizer()) else { return Ok(()) };
    let signer = old.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
    let domain_wide = format!("{}/*", signer.split('/').next().unwrap_or_default());
    let store = objects.store().clone();
    for name in [signer, domain_wide.as_str()] {
        let asking = Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: CERTIFICATES.into(),
            resource: "signers".into(),
            name: name.into(),
            ..Attributes::default()
        };
        if authorizer.authorize(&asking, store.as_ref()).await == Decision::Allow {
            return Ok(());
        }
    }
    let reason = format!("user not permitted to {verb} requests with signerName {signer:?}");
    Err(ApiError::forbidden(def, name_of(object), &reason))
}

/// Stamps a new CertificateSigningRequest with its requester.
fn requested_by(csr: &mut Value, user: &UserInfo) {
    let Some(spec) = csr.get_mut("spec").and_then(Value::as_object_mut) else { return };
    spec.insert("username".into(), user.name.clone().into());
    spec.insert("groups".into(), serde_json::json!(user.groups));
    spec.remove("uid");
    spec.remove("extra");
    if !user.uid.is_empty() {
        spec.insert("uid".into(), user.uid.clone().into());
    }
    if !user.extra.is_empty() {
        spec.insert("extra".into(), serde_json::json!(user.extra));
    }
}

/// NodeRestriction for a write by `user` (none for the server's own writes) to `name`'s `subresource`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn node_restriction(
    def: &ResourceDef,
    operation: Operation,
    subresource: &str,
    ns: Option<&str>,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    user: Option<&UserInfo>,
) -> Result<(), ApiError> {
    let Some(user) = user else { return Ok(()) };
    let request = AdmissionRequest {
        user,
        operation,
        api_group: def.group,
        resource: def.plural,
        subresource,
        namespace: ns.unwrap_or_default(),
        name,
        old,
        new,
    };
    node_authorizer::admit(&request).map_err(|reason| ApiError::forbidden(def, name, &reason))
}

/// RBAC's escalation prevention for a Role, ClusterRole or binding that `user` writes: a role only with
/// rules the user holds where the role applies, unless they may `escalate` it; a binding only to a role
/// whose rules they hold, unless they may `bind` it (kube-apiserver's `policybased` storage).
pub(crate) async fn rbac_escalation(
    objects: &Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    object: &Value,
    user: Option<&UserInfo>,
) -> Result<(), ApiError> {
    const GROUP: &str = "rbac.authorization.k8s.io";
    let Some(user) = user else { return Ok(()) };
    if def.group != GROUP {
        return Ok(());
    }
    let Some(authorizer) = objects.authorizer() else { return Ok(()) };
    let namespace = if def.namespaced { ns.unwrap_or_default() } else { "" };
    let name = name_of(object);
    let may = |verb: &str, resource: &str, name: &str| Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource_request: true,
        api_group: GROUP.into(),
        resource: resource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Attributes::default()
    };
    let store = objects.store().clone();
    let requested: Vec<PolicyRule> = match def.plural {
        "roles" | "clusterroles" => {
            if authorizer.authorize(&may("escalate", def.plural, name), store.as_ref()).await == Decision::Allow {
                return Ok(());
            }
            if def.plural == "clusterroles" && object.get("aggregationRule").is_some_and(|r| !r.is_null()) {
                return Err(ApiError::forbidden(
                    def,
                    name,
                    "must have cluster-admin privileges to use the aggregationRule",
                ));
            }
            decode_rules(object.get("rules"))?
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: RoleRef = serde_json::from_value(object.get("roleRef").cloned().unwrap_or_default())
                .map_err(|e| ApiError::BadRequest(format!("roleRef: {e}")))?;
            let resource = if role_ref.kind == "Role" { "roles" } else { "clusterroles" };
            if authorizer.authorize(&may("bind", resource, &role_ref.name), store.as_ref()).await == Decision::Allow {
                return Ok(());
            }
            let role_def = resources::find(GROUP, "v1", resource).ok_or(ApiError::NoRoute)?;
            let role_ns = (resource == "roles").then_some(namespace);
            match objects.get(role_def, role_ns, &role_ref.name).await {
                Ok(role) => decode_rules(role.get("rules"))?,
                // Binding a role that does not exist yet needs `bind`: whoever creates it later would grant its
                // rules through this binding, as Kubernetes refuses too.
                Err(ApiError::NotFound { .. }) => {
                    let reason = format!("{resource} {:?} not found", role_ref.name);
                    return Err(ApiError::forbidden(def, name, &reason));
                }
                Err(e) => return Err(e),
            }
        }
        _ => return Ok(()),
    };
    let held = authorizer.rbac().rules_for(user, namespace);
    rbac::covers(&held, &requested)
        .map_err(|missing| ApiError::forbidden(def, name, &rbac::escalation_message(user, &missing)))
}

fn decode_rules(rules: Option<&Value>) -> Result<Vec<PolicyRule>, ApiError> {
    match rules {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(rules) => serde_json::from_value(rules.clone()).map_err(|e| ApiError::BadRequest(format!("rules: {e}"))),
    }
}

async fn read_namespace(objects: &Objects, ns: &str) -> Result<Value, ApiError> {
    let namespaces = resources::find("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
    objects.get(namespaces, None, ns).await
}

/// A namespace's labels are checked as PSA's namespace validation does; tightening its enforce level warns
/// about the pods already in it that the new level would refuse.
async fn namespace(
    objects: &Objects,
    def: &ResourceDef,
    object: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let policy = objects.pod_security();
    let name = name_of(object);
    let verdict = policy.admit_namespace(object, old).map_err(|causes| ApiError::invalid(def, name, causes))?;
    let mut warnings = verdict.warnings;
    if let Some(enforce) = verdict.check_pods {
        let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
        match tokio::time::timeout(POD_CHECK_TIMEOUT, objects.list(pods, Some(name), &ListOptions::default())).await {
            Ok(Ok(list)) => warnings.extend(policy.existing_pods(name, enforce, &list.items)),
            _ => warnings.push("failed to list pods while checking new PodSecurity enforce level".to_string()),
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use skiff_api::patch::PatchType;

    use super::*;
    use crate::objects::{Part, WriteOptions};

    fn def(group: &str, plural: &str) -> &'static ResourceDef {
        resources::find(group, "v1", plural).unwrap()
    }

    fn pod(name: &str, spec: Value) -> Value {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "registry.local/app:1"}]);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    }

    /// The writes of `objects` admit pods and workloads by their namespace's Pod Security level.
    #[tokio::test]
    async fn writes_are_admitted_by_the_namespace_level() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let options = WriteOptions::default();
        let (pods, namespaces) = (def("", "pods"), def("", "namespaces"));
        let host_path = json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]});

        // The default, baseline: refused with kube-apiserver's Status; kube-system is exempt.
        let refused = objects.create(pods, Some("default"), pod("x", host_path.clone()), &options).await.err().unwrap();
        assert_eq!(
            refused.status()["message"],
            r#"pods "x" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "h")"#
        );
        assert_eq!(refused.code(), http::StatusCode::FORBIDDEN);
        let dry_run = WriteOptions { dry_run: true, ..WriteOptions::default() };
        assert!(objects.create(pods, Some("default"), pod("x", host_path.clone()), &dry_run).await.is_err());
        assert!(objects.create(pods, Some("kube-system"), pod("x", host_path.clone()), &options).await.is_ok());

        // A namespace labelled privileged takes it; tightening the label warns about it.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "tools", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}});
        assert!(objects.create(namespaces, None, ns, &options).await.is_ok());
        let written = objects.create(pods, Some("tools"), pod("x", host_path.clone()), &options).await;
        assert!(written.is_ok_and(|w| w.warnings.is_empty()));
        let label = |level: &str| json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}});
        let relabelled =
            objects.patch(namespaces, None, "tools", Part::Main, PatchType::Merge, label("baseline"), false, &options);
        assert_eq!(
            relabelled.await.map(|w| w.warnings).unwrap_or_default(),
            [
                r#"existing pods in namespace "tools" violate the new PodSecurity enforce level "baseline:latest""#,
                "x: hostPath volumes",
            ]
        );
        let invalid =
            objects.patch(namespaces, None, "tools", Part::Main, PatchType::Merge, label("bogus"), false, &options);
        assert_eq!(
            invalid.await.err().map(|e| e.to_string()).unwrap_or_default(),
            r#"Namespace "tools" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "bogus": must be one of privileged, baseline, restricted"#
        );

        // An update that changes an image is checked again; one that changes a label is not.
        let relabel = json!({"metadata": {"labels": {"a": "b"}}});
        let relabelled =
            objects.patch(pods, Some("tools"), "x", Part::Main, PatchType::Merge, relabel, false, &options);
        assert!(relabelled.await.is_ok());
        let image = json!({"spec": {"containers": [{"name": "c", "image": "registry.local/app:2"}]}});
        let updated =
            objects.patch(pods, Some("tools"), "x", Part::Main, PatchType::StrategicMerge, image, false, &options);
        assert!(matches!(updated.await, Err(ApiError::Forbidden(m)) if m.starts_with(r#"pods "x" is forbidden"#)));

        // Workloads are warned about, not refused.
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod("", host_path)["spec"]}}});
        let written = objects.create(def("apps", "deployments"), Some("default"), deployment, &options).await;
        assert_eq!(
            written.map(|w| w.warnings).unwrap_or_default(),
            [r#"would violate PodSecurity "baseline:latest": hostPath volumes (volume "h")"#]
        );
    }

    /// An Ingress created without a class gets the default one, `skiff` from the bootstrap, unless it names
    /// one (in its spec or the legacy annotation); an update leaves the class as it is.
    #[tokio::test]
    async fn ingresses_without_a_class_get_the_default_class() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let options = WriteOptions::default();
        let ingresses = def("networking.k8s.io", "ingresses");
        let ingress = |name: &str, spec: Value, annotations: Value| {
            let mut spec = spec;
            spec["defaultBackend"] = json!({"service": {"name": "web", "port": {"number": 80}}});
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "annotations": annotations}, "spec": spec})
        };
        let class_of = |object: &Value| object["spec"]["ingressClassName"].clone();
        let created = objects.create(ingresses, Some("default"), ingress("plain", json!({}), json!({})), &options);
        assert_eq!(class_of(&created.await.unwrap().object), "skiff");
        let named = ingress("named", json!({"ingressClassName": "nginx"}), json!({}));
        assert_eq!(
            class_of(&objects.create(ingresses, Some("default"), named, &options).await.unwrap().object),
            "nginx"
        );
        let legacy = ingress("legacy", json!({}), json!({"kubernetes.io/ingress.class": "nginx"}));
        assert_eq!(
            class_of(&objects.create(ingresses, Some("default"), legacy, &options).await.unwrap().object),
            Value::Null
        );
        let cleared = json!({"spec": {"ingressClassName": null}});
        let updated =
            objects.patch(ingresses, Some("default"), "plain", Part::Main, PatchType::Merge, cleared, false, &options);
        assert_eq!(class_of(&updated.await.unwrap().object), Value::Null);
    }

    /// A namespace's LimitRanges give its new pods their default resources and refuse pods outside their
    /// bounds, with kube-apiserver's Statuses; other namespaces are untouched.
    #[tokio::test]
    async fn pods_get_their_namespace_limit_range_defaults_and_stay_in_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let options = WriteOptions::default();
        let (pods, limit_ranges) = (def("", "pods"), def("", "limitranges"));
        let limit_range = |name: &str, item: Value| json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": name}, "spec": {"limits": [item]}});
        let with_resources = |name: &str, resources: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1", "resources": resources}]}})
        };

        // Stored with Kubernetes' defaults: the max is the default limit, the default limit the request.
        let memory = limit_range("memory", json!({"type": "Container", "max": {"memory": "1Gi"}}));
        let stored = objects.create(limit_ranges, Some("default"), memory, &options).await.unwrap().object;
        assert_eq!(
            (&stored["spec"]["limits"][0]["default"], &stored["spec"]["limits"][0]["defaultRequest"]),
            (&json!({"memory": "1Gi"}), &json!({"memory": "1Gi"}))
        );
        let defaults = limit_range("defaults", json!({"type": "Container", "default": {"memory": "64Mi"}}));
        objects.create(limit_ranges, Some("default"), defaults, &options).await.unwrap();

        // "defaults" comes before "memory": its 64Mi is what the pod gets.
        let created = objects.create(pods, Some("default"), pod("plain", json!({})), &options).await.unwrap().object;
        assert_eq!(
            created["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}})
        );
        assert_eq!(
            created["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: memory request for container c; memory limit for container c"
        );

        let big = with_resources("big", json!({"limits": {"memory": "2Gi"}}));
        let refused = objects.create(pods, Some("default"), big, &options).await.err().unwrap();
        assert_eq!(refused.code(), http::StatusCode::FORBIDDEN);
        assert_eq!(
            refused.status()["message"],
            r#"pods "big" is forbidden: maximum memory usage per Container is 1Gi, but limit is 2Gi"#
        );

        // A request above the default limit makes the pod invalid once the limit is filled in.
        let greedy = with_resources("greedy", json!({"requests": {"memory": "128Mi"}}));
        let invalid = objects.create(pods, Some("default"), greedy, &options).await.err().unwrap();
        assert_eq!(invalid.code(), http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(invalid.to_string().contains("must be less than or equal to memory limit of 64Mi"), "{invalid}");

        let elsewhere = objects.create(pods, Some("kube-system"), pod("plain", json!({})), &options).await.unwrap();
        assert_eq!(elsewhere.object["spec"]["containers"][0]["resources"], json!({}));

        let backwards = limit_range(
            "backwards",
            json!({"type": "Container", "default": {"memory": "64Mi"}, "defaultRequest": {"memory": "128Mi"}}),
        );
        let invalid = objects.create(limit_ranges, Some("default"), backwards, &options).await.err().unwrap();
        assert_eq!(
            invalid.to_string(),
            r#"LimitRange "backwards" is invalid: spec.limits[0].defaultRequest[memory]: Invalid value: "128Mi": default request value 128Mi is greater than default limit value 64Mi"#
        );
    }

    /// A CSR names the requester the server saw, keeps its request once made, and is approved or issued
    /// only by those allowed to on its signer; an apply through a subresource creates nothing.
    #[tokio::test]
    async fn certificate_requests_are_stamped_frozen_and_guarded_by_their_signer() {
        use skiff_api::authz::{AUTHENTICATED, BOOTSTRAPPERS, MASTERS};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn skiff_store::Store> =
            Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (authorizer, mirror) = crate::authz::Authorizer::start(store.clone(), shutdown.clone()).await.unwrap();
        let mirror = tokio::spawn(mirror);
        let objects = Objects::new(store).with_authorizer(authorizer);
        crate::lifecycle::bootstrap_policy(&objects).await.unwrap();
        let user = |name: &str, group: &str| UserInfo {
            name: name.into(),
            groups: vec![group.into(), AUTHENTICATED.into()],
            ..UserInfo::default()
        };
        let as_user = |user: UserInfo| WriteOptions { user: Some(user), ..WriteOptions::default() };
        let joiner = as_user(user("system:bootstrap:skiff", BOOTSTRAPPERS));
        let csrs = def("certificates.k8s.io", "certificatesigningrequests");
        let csr = json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": "forged"},
            "spec": {"request": "cmVxdWVzdA==", "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": ["client auth"], "username": "system:node:other", "groups": ["system:nodes"]},
        });

        // Applied through /status while missing: 404, nothing created.
        let applied =
            objects.patch(csrs, None, "forged", Part::Status, PatchType::Apply, csr.clone(), true, &joiner).await;
        assert!(matches!(applied, Err(ApiError::NotFound { .. })), "{:?}", applied.err());
        // Created: the requester is who asked, not who the body claims.
        let created = objects.create(csrs, None, csr, &joiner).await.unwrap().object;
        assert_eq!(created["spec"]["username"], "system:bootstrap:skiff");
        assert_eq!(created["spec"]["groups"], json!([BOOTSTRAPPERS, AUTHENTICATED]));
        // The request cannot be swapped afterwards.
        let admin = as_user(user("system:admin", MASTERS));
        let swap = json!({"spec": {"request": "b3RoZXI=", "username": "system:admin"}});
        let kept =
            objects.patch(csrs, None, "forged", Part::Main, PatchType::Merge, swap, false, &admin).await.unwrap();
        assert_eq!(
            (&kept.object["spec"]["request"], &kept.object["spec"]["username"]),
            (&json!("cmVxdWVzdA=="), &json!("system:bootstrap:skiff"))
        );
        // Approving needs `approve` on the signer: the join token's holder may not, the admin may.
        let approve = json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "R"}]}});
        let refused = objects
            .patch(csrs, None, "forged", Part::Approval, PatchType::Merge, approve.clone(), false, &joiner)
            .await;
        assert_eq!(
            refused.err().unwrap().status()["message"],
            r#"certificatesigningrequests.certificates.k8s.io "forged" is forbidden: user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#
        );
        assert!(
            objects.patch(csrs, None, "forged", Part::Approval, PatchType::Merge, approve, false, &admin).await.is_ok()
        );
        shutdown.cancel();
        mirror.await.unwrap();
    }
}
