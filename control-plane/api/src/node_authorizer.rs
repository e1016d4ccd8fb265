//! What a node agent (`system:node:NAME` in `system:nodes`) may do, as kube-apiserver's Node authorizer and
//! NodeRestriction admission plugin decide it: a node reads only the Secrets, ConfigMaps, PersistentVolumeClaims
//! and ServiceAccount tokens of pods bound to it ([`NodeGraph`], [`authorize`]), and writes only its own Node,
//! its own Lease and the status of its own pods ([`admit`]). Everything else a node may do is [`node_rules`].
//!
//! Sources, read for their behaviour: `plugin/pkg/auth/authorizer/node/node_authorizer.go` and `graph.go`,
//! `pkg/api/v1/pod/util.go` (which fields of a pod name a Secret or a ConfigMap),
//! `plugin/pkg/admission/noderestriction/admission.go`, `NodeRules()` in
//! `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`, and `k8s.io/kubelet/pkg/apis` (the labels a
//! kubelet may set on its Node). Messages are Kubernetes' own words.
//!
//! Where Skiff departs from Kubernetes 1.33, and why:
//! - A refusal of the graph or of the lease check is [`Decision::Deny`], where Kubernetes answers "no opinion"
//!   with a reason: no RBAC binding can widen what a node reads beyond its own pods' objects.
//! - A node reads every Node and every pod. The agent is also the service proxy (routes to every node's pod
//!   range) and the NetworkPolicy agent (peers are pods on any node); Kubernetes 1.33 keeps a kubelet to its
//!   own Node and to pods listed with `spec.nodeName=`, which [`Attributes`] cannot express anyway (it carries
//!   no field selectors).
//! - No PersistentVolumes, VolumeAttachments, CSINodes, ResourceClaims or ResourceSlices: Skiff serves none,
//!   and PersistentVolumes would need the claims' objects in the graph. Requests for them get no opinion here.
//! - Admission leaves Events alone (as 1.33 does), and CertificateSigningRequests to authorization: 1.33 also
//!   checks a kubelet CSR's common name (an X.509 parser this crate does not have); the CSR approver only
//!   approves a node's own name for a node. That a node's token request is bound to a pod on the node is
//!   checked by the API server's TokenRequest handler, which has the pod at hand.
//! - Skiff runs no static pods, so a node may create no pod at all, not even a mirror pod.
//! - Every node is also an ingress controller (it serves Ingresses on its HTTP and HTTPS ports), so every
//!   node reads the TLS Secrets that Ingresses name in `spec.tls[].secretName`, in the Ingress's namespace,
//!   and lists Ingresses and IngressClasses. Kubernetes gives an ingress controller a ServiceAccount with
//!   RBAC; Skiff's agent has only its node identity, and the graph keeps that to the Secrets some Ingress
//!   names, never any other Secret.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, EphemeralContainer, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Map, Value};

use crate::authz::{Attributes, Decision, NODE_USER_PREFIX, NODES, UserInfo, rule_allows};

/// The namespace of the nodes' heartbeat Leases, one per node named after it.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The annotation a kubelet puts on the mirror pod it makes for a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The labels a kubelet may set on its own Node, as `kubeletapis.IsKubeletLabel` lists them; any other label
/// under `kubernetes.io` or `k8s.io` could steer workloads that select on it to the node.
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Label prefixes (and their subdomains) a kubelet may set freely.
const KUBELET_LABEL_DOMAINS: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Labels no node may set, whatever else allows them: they exist so that administrators can mark nodes in
/// ways nodes cannot fake.
const NODE_RESTRICTION_DOMAIN: &str = "node-restriction.kubernetes.io";

/// The kinds of object a pod makes readable to the node it is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    /// Only for the `token` subresource: the pod's containers run as it.
    ServiceAccount,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Object {
    kind: Kind,
    namespace: String,
    name: String,
}

/// What one bound pod gives its node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bound {
    node: String,
    objects: BTreeSet<Object>,
}

/// Which objects each node may read: those the pods bound to it reference, kept up to date from a watch of
/// all pods. Each object counts the pods per node that reference it, so a pod going away takes back only
/// what no other pod on that node still needs.
///
/// A watch that relists should fill a new graph and swap it in once the list is complete, so that nothing a
/// running pod needs is refused meanwhile.
#[derive(Clone, Debug, Default)]
pub struct NodeGraph {
    /// Each bound pod by (namespace, name), with what it gave, so that an update or delete takes back exactly
    /// that.
    pods: HashMap<(String, String), Bound>,
    /// For each referenced object, how many pods on each node reference it (never zero).
    references: HashMap<Object, HashMap<String, usize>>,
    /// The TLS Secrets each Ingress names, by the Ingress's (namespace, name).
    ingresses: HashMap<(String, String), BTreeSet<Object>>,
    /// For each TLS Secret, how many Ingresses name it (never zero): every node may read it.
    ingress_secrets: HashMap<Object, usize>,
}

impl NodeGraph {
    /// Records `pod` as it is now, replacing what it referenced before. A pod not yet bound to a node
    /// (no `spec.nodeName`) relates to nothing.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let bound = bound(pod, &namespace, &name);
        let key = (namespace, name);
        // Most pod updates are status updates, which change nothing here.
        if self.pods.get(&key) == bound.as_ref() {
            return;
        }
        self.forget(&key);
        if let Some(bound) = bound {
            for object in &bound.objects {
                *self.references.entry(object.clone()).or_default().entry(bound.node.clone()).or_default() += 1;
            }
            self.pods.insert(key, bound);
        }
    }

    /// Forgets the pod `namespace/name`: its node keeps only what its other pods reference.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.forget(&(namespace.to_owned(), name.to_owned()));
    }

    /// Whether some pod bound to `node` references the object, or (a Secret) some Ingress serves with it.
    pub fn relates(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        let object = Object { kind, namespace: namespace.to_owned(), name: name.to_owned() };
        self.references.get(&object).is_some_and(|nodes| nodes.contains_key(node))
            || self.ingress_secrets.contains_key(&object)
    }

    /// Records the TLS Secrets `ingress` names now, replacing what it named before. Every node serves
    /// every Ingress, so these relate to all nodes.
    pub fn upsert_ingress(&mut self, ingress: &Ingress) {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let tls = ingress.spec.as_ref().and_then(|spec| spec.tls.as_ref()).into_iter().flatten();
        let secrets: BTreeSet<Object> = tls
            .filter_map(|tls| tls.secret_name.clone().filter(|name| !name.is_empty()))
            .map(|name| Object { kind: Kind::Secret, namespace: namespace.clone(), name })
            .collect();
        let key = (namespace, ingress.metadata.name.clone().unwrap_or_default());
        self.remove_ingress(&key.0, &key.1);
        for secret in &secrets {
            *self.ingress_secrets.entry(secret.clone()).or_default() += 1;
        }
        self.ingresses.insert(key, secrets);
    }

    /// Forgets the Ingress `namespace/name`: its Secrets stay readable only while another Ingress names them.
    pub fn remove_ingress(&mut self, namespace: &str, name: &str) {
        let Some(secrets) = self.ingresses.remove(&(namespace.to_owned(), name.to_owned())) else { return };
        for secret in secrets {
            if let Some(count) = self.ingress_secrets.get_mut(&secret) {
                *count -= 1;
                if *count == 0 {
                    self.ingress_secrets.remove(&secret);
                }
            }
        }
    }

    fn forget(&mut self, key: &(String, String)) {
        let Some(bound) = self.pods.remove(key) else { return };
        for object in bound.objects {
            let Some(nodes) = self.references.get_mut(&object) else { continue };
            if let Some(count) = nodes.get_mut(&bound.node) {
                *count -= 1;
                if *count == 0 {
                    nodes.remove(&bound.node);
                }
            }
            if nodes.is_empty() {
                self.references.remove(&object);
            }
        }
    }
}

/// The node `pod` is bound to and the objects it references; None for a pod not bound yet.
fn bound(pod: &Pod, namespace: &str, name: &str) -> Option<Bound> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let mut objects = BTreeSet::new();
    // A mirror pod is made by its node (from a static pod): were its references honoured, a node could grant
    // itself any Secret by making one that names it. Admission refuses such pods; this is defence in depth.
    let mirror = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION));
    if !mirror {
        let mut add = |kind: Kind, object: &str| {
            // An empty name refers to nothing (kube's visitors skip them too).
            if !object.is_empty() {
                objects.insert(Object { kind, namespace: namespace.to_owned(), name: object.to_owned() });
            }
        };
        add(Kind::ServiceAccount, spec.service_account_name.as_deref().unwrap_or_default());
        for reference in spec.image_pull_secrets.iter().flatten() {
            add(Kind::Secret, &reference.name);
        }
        let containers = spec.init_containers.iter().flatten().chain(&spec.containers).map(environment);
        let ephemeral = spec.ephemeral_containers.iter().flatten().map(ephemeral_environment);
        for (env, env_from) in containers.chain(ephemeral) {
            for source in env_from {
                if let Some(map) = &source.config_map_ref {
                    add(Kind::ConfigMap, &map.name);
                }
                if let Some(secret) = &source.secret_ref {
                    add(Kind::Secret, &secret.name);
                }
            }
            for var in env.iter().filter_map(|var| var.value_from.as_ref()) {
                if let Some(key) = &var.config_map_key_ref {
                    add(Kind::ConfigMap, &key.name);
                }
                if let Some(key) = &var.secret_key_ref {
                    add(Kind::Secret, &key.name);
                }
            }
        }
        for volume in spec.volumes.iter().flatten() {
            if let Some(source) = &volume.secret {
                add(Kind::Secret, source.secret_name.as_deref().unwrap_or_default());
            }
            if let Some(source) = &volume.config_map {
                add(Kind::ConfigMap, &source.name);
            }
            for projection in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(secret) = &projection.secret {
                    add(Kind::Secret, &secret.name);
                }
                if let Some(map) = &projection.config_map {
                    add(Kind::ConfigMap, &map.name);
                }
            }
            // The volume plugins that log in with a Secret the kubelet reads for them.
            let secret_refs = [
                volume.cephfs.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.cinder.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.flex_volume.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.rbd.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.scale_io.as_ref().map(|v| &v.secret_ref),
                volume.iscsi.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.storageos.as_ref().and_then(|v| v.secret_ref.as_ref()),
                volume.csi.as_ref().and_then(|v| v.node_publish_secret_ref.as_ref()),
            ];
            for reference in secret_refs.into_iter().flatten() {
                add(Kind::Secret, &reference.name);
            }
            if let Some(azure) = &volume.azure_file {
                add(Kind::Secret, &azure.secret_name);
            }
            if let Some(claim) = &volume.persistent_volume_claim {
                add(Kind::PersistentVolumeClaim, &claim.claim_name);
            }
            // The claim the ephemeral volume controller makes for the pod, named `<pod>-<volume>`.
            if volume.ephemeral.is_some() {
                add(Kind::PersistentVolumeClaim, &format!("{name}-{}", volume.name));
            }
        }
    }
    Some(Bound { node, objects })
}

/// A container's variables and the sources it takes all variables from.
type Environment<'a> = (&'a [EnvVar], &'a [EnvFromSource]);

fn environment(container: &Container) -> Environment<'_> {
    (container.env.as_deref().unwrap_or_default(), container.env_from.as_deref().unwrap_or_default())
}

fn ephemeral_environment(container: &EphemeralContainer) -> Environment<'_> {
    (container.env.as_deref().unwrap_or_default(), container.env_from.as_deref().unwrap_or_default())
}

/// The Node authorizer: no opinion on anyone but a node. For a node, requests for Secrets, ConfigMaps,
/// PersistentVolumeClaims, ServiceAccounts and Leases are first narrowed to the objects `graph` relates to
/// the node (and the node's own Lease), and denied with Kubernetes' reason if they fall outside; then
/// whatever [`node_rules`] allows is allowed, and the rest left to the next authorizer.
pub fn authorize(attributes: &Attributes, graph: &NodeGraph) -> Decision {
    let Some(node) = attributes.user.node_name() else {
        return Decision::NoOpinion;
    };
    if let Err(reason) = narrow(node, attributes, graph) {
        return Decision::Deny(reason);
    }
    if NODE_RULES.iter().any(|rule| rule_allows(rule, attributes)) { Decision::Allow } else { Decision::NoOpinion }
}

/// The node authorizer's own checks for the resources it subdivides; Ok for the others.
fn narrow(node: &str, attributes: &Attributes, graph: &NodeGraph) -> Result<(), String> {
    if !attributes.resource_request {
        return Ok(());
    }
    match (attributes.api_group.as_str(), attributes.resource.as_str()) {
        ("", "secrets") => read_related(node, Kind::Secret, attributes, graph),
        ("", "configmaps") => read_related(node, Kind::ConfigMap, attributes, graph),
        ("", "persistentvolumeclaims") => {
            if attributes.verb != "get" {
                return Err("can only get individual resources of this type".into());
            }
            if !attributes.subresource.is_empty() {
                return Err("cannot get subresource".into());
            }
            related(node, Kind::PersistentVolumeClaim, attributes, graph)
        }
        ("", "serviceaccounts") => {
            if attributes.verb != "create" || attributes.name.is_empty() {
                return Err("can only create tokens for individual service accounts".into());
            }
            if attributes.subresource != "token" {
                return Err("can only create token subresource of serviceaccount".into());
            }
            related(node, Kind::ServiceAccount, attributes, graph)
        }
        ("coordination.k8s.io", "leases") => own_lease(node, attributes),
        _ => Ok(()),
    }
}

/// Secrets and ConfigMaps: read one object by name (`get`, or `list`/`watch` with a `metadata.name` field
/// selector, how the agent follows a volume's object).
fn read_related(node: &str, kind: Kind, attributes: &Attributes, graph: &NodeGraph) -> Result<(), String> {
    if !matches!(attributes.verb.as_str(), "get" | "list" | "watch") {
        return Err("can only read resources of this type".into());
    }
    if !attributes.subresource.is_empty() {
        return Err("cannot read subresource".into());
    }
    if attributes.namespace.is_empty() {
        return Err("can only read namespaced object of this type".into());
    }
    related(node, kind, attributes, graph)
}

fn related(node: &str, kind: Kind, attributes: &Attributes, graph: &NodeGraph) -> Result<(), String> {
    if attributes.name.is_empty() {
        return Err("No Object name found".into());
    }
    if graph.relates(node, kind, &attributes.namespace, &attributes.name) {
        Ok(())
    } else {
        Err(format!("no relationship found between node '{node}' and this object"))
    }
}

/// A node's Lease: only in [`NODE_LEASE_NAMESPACE`] and only its own, except on create, where the name is in
/// the body and [`admit`] checks it.
fn own_lease(node: &str, attributes: &Attributes) -> Result<(), String> {
    let verb = attributes.verb.as_str();
    if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
        return Err("can only get, create, update, patch, or delete a node lease".into());
    }
    if attributes.namespace != NODE_LEASE_NAMESPACE {
        return Err(format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"));
    }
    if verb != "create" && attributes.name != node {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

/// Everything a node may ever do, as Kubernetes' `NodeRules()` (the `system:node` ClusterRole) fitted to the
/// APIs Skiff serves and to what its agent calls. [`authorize`] narrows Secrets, ConfigMaps, claims,
/// ServiceAccount tokens and Leases further; NodeRestriction ([`admit`]) narrows the writes.
///
/// Left out of Kubernetes' list: `get endpoints` (for glusterfs volumes), PersistentVolumes, claims' status,
/// VolumeAttachments, CSIDrivers, CSINodes, ResourceClaims and ClusterTrustBundles.
pub fn node_rules() -> Vec<PolicyRule> {
    NODE_RULES.clone()
}

const READ: &[&str] = &["get", "list", "watch"];

static NODE_RULES: LazyLock<Vec<PolicyRule>> = LazyLock::new(|| {
    vec![
        // Pods' service environment variables and the service proxy.
        rule(READ, "", &["services"]),
        // Registration and status; admission keeps a node to its own Node. Every Node is read: the proxy
        // routes to each node's pod range.
        rule(&["create", "get", "list", "watch"], "", &["nodes"]),
        rule(&["update", "patch"], "", &["nodes/status"]),
        rule(&["update", "patch"], "", &["nodes"]),
        // Events about its pods (the agent counts repeats up by patching).
        rule(&["create", "update", "patch"], "", &["events"]),
        // Every pod is read: NetworkPolicy peers are pods on any node.
        rule(READ, "", &["pods"]),
        // Create for mirror pods (which admission refuses, Skiff having no static pods), delete for the
        // node's own pods once their containers stop.
        rule(&["create", "delete"], "", &["pods"]),
        // Admission keeps both to the node's own pods.
        rule(&["update", "patch"], "", &["pods/status"]),
        rule(&["create"], "", &["pods/eviction"]),
        // Volumes, environment and image pull credentials; the graph narrows these to the node's pods.
        rule(READ, "", &["secrets", "configmaps"]),
        rule(&["get"], "", &["persistentvolumeclaims"]),
        rule(&["create"], "", &["serviceaccounts/token"]),
        // A node renews its own client certificate.
        rule(&["create", "get", "list", "watch"], "certificates.k8s.io", &["certificatesigningrequests"]),
        rule(&["get", "create", "update", "patch", "delete"], "coordination.k8s.io", &["leases"]),
        rule(READ, "node.k8s.io", &["runtimeclasses"]),
        // Skiff's agent is also kube-proxy and a NetworkPolicy agent.
        rule(&["list", "watch"], "discovery.k8s.io", &["endpointslices"]),
        rule(&["list", "watch"], "networking.k8s.io", &["networkpolicies"]),
        // And an ingress controller; the graph narrows Secrets to those Ingresses name for TLS.
        rule(&["list", "watch"], "networking.k8s.io", &["ingresses", "ingressclasses"]),
        rule(&["list", "watch"], "", &["namespaces"]),
        // Its ingress wakes a Deployment scaled to zero; admission allows only 0 to 1 of one that opted in.
        rule(&["get", "update", "patch"], "apps", &["deployments/scale"]),
        // The kubelet endpoint authenticates bearer tokens and authorizes callers through the API server.
        rule(&["create"], "authentication.k8s.io", &["tokenreviews"]),
        rule(&["create"], "authorization.k8s.io", &["subjectaccessreviews", "localsubjectaccessreviews"]),
    ]
});

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        ..PolicyRule::default()
    }
}

/// An admission operation NodeRestriction looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    /// The operation as Kubernetes names it in messages (`admission.Operation`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// A write as NodeRestriction sees it (kube-apiserver's `admission.Attributes`).
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRequest<'a> {
    pub user: &'a UserInfo,
    pub operation: Operation,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    /// The name in the request's path; on create, the new object's name is used instead.
    pub name: &'a str,
    /// The object as stored before the request: an update's old object, the object a delete removes, and
    /// for `pods/eviction` the pod to be evicted.
    pub old: Option<&'a Value>,
    /// The object the request would store (create, update).
    pub new: Option<&'a Value>,
}

/// NodeRestriction: Ok for anyone but a node; a node may delete only its own pods, update only their status
/// (not their labels), create no pod, write only its own Node (no taints, config source or reserved labels)
/// and its own Lease. The error is Kubernetes' reason, for a 403 after `... is forbidden: `.
pub fn admit(request: &AdmissionRequest) -> Result<(), String> {
    let user = request.user;
    let Some(node) = user.node_name() else {
        // Named as a node but with no name after the prefix: kube refuses what it cannot pin to a node.
        if user.in_group(NODES) && user.name.starts_with(NODE_USER_PREFIX) {
            return Err(format!("could not determine node from user {:?}", user.name));
        }
        return Ok(());
    };
    match (request.api_group, request.resource, request.subresource) {
        ("", "pods", "") => admit_pod(node, request),
        ("", "pods", "status") => admit_pod_status(node, request),
        ("", "pods", "eviction") => admit_pod_eviction(node, request),
        ("", "pods", other) => {
            Err(format!("unexpected pod subresource {other:?}, only 'status' and 'eviction' are allowed"))
        }
        ("", "nodes", _) => admit_node(node, request),
        ("coordination.k8s.io", "leases", _) => admit_lease(node, request),
        ("apps", "deployments", "scale") => crate::scale_to_zero::admit_activation(request.old, request.new),
        _ => Ok(()),
    }
}

fn admit_pod(node: &str, request: &AdmissionRequest) -> Result<(), String> {
    match request.operation {
        Operation::Create => {
            let pod = object(request.new)?;
            if !annotations_of(pod).contains_key(MIRROR_POD_ANNOTATION) {
                return Err(format!(
                    "pod does not have {MIRROR_POD_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
                ));
            }
            Err(format!("node {node:?} cannot create mirror pods: skiff runs no static pods"))
        }
        Operation::Delete => {
            if node_name_of(object(request.old)?) != node {
                return Err(format!("node {node:?} can only delete pods with spec.nodeName set to itself"));
            }
            Ok(())
        }
        Operation::Update => Err(format!(
            "unexpected operation {:?}, node {node:?} can only create and delete mirror pods",
            request.operation.as_str()
        )),
    }
}

fn admit_pod_status(node: &str, request: &AdmissionRequest) -> Result<(), String> {
    if request.operation != Operation::Update {
        return Err(format!("unexpected operation {:?}", request.operation.as_str()));
    }
    let old = object(request.old)?;
    if node_name_of(old) != node {
        return Err(format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"));
    }
    let new = object(request.new)?;
    // Labels choose which Services and controllers a pod belongs to; a node must not re-home pods.
    if labels_of(old) != labels_of(new) {
        return Err(format!("node {node:?} cannot update labels through pod status"));
    }
    if claim_statuses(old) != claim_statuses(new) {
        // Kubernetes' spelling.
        return Err(format!("node {node:?} cannot update resource claim statues"));
    }
    Ok(())
}

fn admit_pod_eviction(node: &str, request: &AdmissionRequest) -> Result<(), String> {
    if request.operation != Operation::Create {
        return Err(format!("unexpected operation {}", request.operation.as_str()));
    }
    if node_name_of(object(request.old)?) != node {
        return Err(format!("node {node} can only evict pods with spec.nodeName set to itself"));
    }
    Ok(())
}

fn admit_node(node: &str, request: &AdmissionRequest) -> Result<(), String> {
    let requested = match request.operation {
        Operation::Create => name_of(object(request.new)?),
        _ => request.name,
    };
    if requested != node {
        return Err(format!("node {node:?} is not allowed to modify node {requested:?}"));
    }
    match request.operation {
        Operation::Create => {
            let new = object(request.new)?;
            // A node's config source names a ConfigMap it could then read: a way around the graph.
            if present(new.pointer("/spec/configSource")).is_some() {
                // Kubernetes' wording, "pods" and all.
                return Err(format!("node {node:?} is not allowed to create pods with a non-nil configSource"));
            }
            let forbidden = forbidden_labels(labels_of(new), &Map::new());
            if !forbidden.is_empty() {
                return Err(format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    forbidden.join(", ")
                ));
            }
            Ok(())
        }
        Operation::Update => {
            let (new, old) = (object(request.new)?, object(request.old)?);
            // Only a new non-nil source is refused: older kubelets drop the field on status updates.
            let source = present(new.pointer("/spec/configSource"));
            if source.is_some() && source != present(old.pointer("/spec/configSource")) {
                return Err(format!(
                    "node {node:?} is not allowed to update configSource to a new non-nil configSource"
                ));
            }
            // Taints keep workloads away; a node lifting its own would draw them in.
            if taints_of(new) != taints_of(old) {
                return Err(format!("node {node:?} is not allowed to modify taints"));
            }
            let forbidden = forbidden_labels(labels_of(new), labels_of(old));
            if !forbidden.is_empty() {
                // Kubernetes' wording, without the node.
                return Err(format!("is not allowed to modify labels: {}", forbidden.join(", ")));
            }
            Ok(())
        }
        Operation::Delete => Ok(()),
    }
}

fn admit_lease(node: &str, request: &AdmissionRequest) -> Result<(), String> {
    if request.namespace != NODE_LEASE_NAMESPACE {
        return Err(format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"));
    }
    let name = match request.operation {
        Operation::Create => name_of(object(request.new)?),
        _ => request.name,
    };
    if name != node {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

/// The object a check needs; kube's words for a request without it (`unexpected type %T` of nil).
fn object(object: Option<&Value>) -> Result<&Value, String> {
    object.ok_or_else(|| "unexpected type <nil>".to_string())
}

/// A field that is set: absent and null are the same to Go's nil.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn name_of(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn node_name_of(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
}

static EMPTY_MAP: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

fn labels_of(object: &Value) -> &Map<String, Value> {
    object.pointer("/metadata/labels").and_then(Value::as_object).unwrap_or(&EMPTY_MAP)
}

fn annotations_of(object: &Value) -> &Map<String, Value> {
    object.pointer("/metadata/annotations").and_then(Value::as_object).unwrap_or(&EMPTY_MAP)
}

/// A node's taints, where none, null and an empty list are equal (Go's semantic equality).
fn taints_of(node: &Value) -> &[Value] {
    node.pointer("/spec/taints").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The pod's resource claim statuses as NodeRestriction compares them: name and claim name, in order.
fn claim_statuses(pod: &Value) -> Vec<(Option<&str>, Option<&str>)> {
    let statuses = pod.pointer("/status/resourceClaimStatuses").and_then(Value::as_array);
    let statuses = statuses.into_iter().flatten();
    statuses
        .map(|s| (s.get("name").and_then(Value::as_str), s.get("resourceClaimName").and_then(Value::as_str)))
        .collect()
}

/// The labels that differ between `new` and `old` (added, removed or changed) and that a node may not set,
/// sorted.
fn forbidden_labels(new: &Map<String, Value>, old: &Map<String, Value>) -> Vec<String> {
    let changed =
        new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).chain(old.iter().filter(|(k, _)| !new.contains_key(*k)));
    let forbidden: BTreeSet<&String> = changed.map(|(k, _)| k).filter(|key| !node_may_set(key)).collect();
    forbidden.into_iter().cloned().collect()
}

fn node_may_set(key: &str) -> bool {
    let domain = key.split_once('/').map(|(prefix, _)| prefix).unwrap_or_default();
    if in_domain(domain, NODE_RESTRICTION_DOMAIN) {
        return false;
    }
    let kubernetes = in_domain(domain, "kubernetes.io") || in_domain(domain, "k8s.io");
    !kubernetes || KUBELET_LABELS.contains(&key) || KUBELET_LABEL_DOMAINS.iter().any(|d| in_domain(domain, d))
}

/// `domain` is `parent` or one of its subdomains.
fn in_domain(domain: &str, parent: &str) -> bool {
    domain.strip_suffix(parent).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::authz::AUTHENTICATED;

    fn node_user(name: &str) -> UserInfo {
        UserInfo {
            name: format!("{NODE_USER_PREFIX}{name}"),
            groups: vec![NODES.into(), AUTHENTICATED.into()],
            ..UserInfo::default()
        }
    }

    /// `resource` as kubectl spells it: `pods/status`, `leases.coordination.k8s.io`.
    fn split(resource: &str) -> (&str, &str, &str) {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        (group, resource, subresource)
    }

    fn ask(user: &UserInfo, verb: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
        let (group, resource, subresource) = split(resource);
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    /// Pod `namespace/name` with `spec`, bound to `node` unless it is empty.
    fn pod(node: &str, namespace: &str, name: &str, mut spec: Value) -> Pod {
        if !node.is_empty() {
            spec["nodeName"] = json!(node);
        }
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec}))
            .expect("a valid pod")
    }

    /// Every field through which a pod names a Secret, a ConfigMap, a claim or its ServiceAccount.
    fn referencing_everything() -> Value {
        json!({
            "serviceAccountName": "runner",
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"name": "i", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "init-env", "key": "k"}}}]}],
            "containers": [{
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "cm-from"}}, {"secretRef": {"name": "secret-from"}}],
                "env": [
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm-key", "key": "k"}}},
                    {"name": "C", "value": "plain"},
                ],
            }],
            "ephemeralContainers": [{"name": "debug", "envFrom": [{"secretRef": {"name": "debug-env"}}]}],
            "volumes": [
                {"name": "s", "secret": {"secretName": "vol-secret"}},
                {"name": "m", "configMap": {"name": "vol-cm"}},
                {"name": "p", "projected": {"sources": [
                    {"secret": {"name": "proj-secret"}},
                    {"configMap": {"name": "proj-cm"}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}},
                {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-secret"}}},
                {"name": "rbd", "rbd": {"monitors": ["m"], "image": "i", "secretRef": {"name": "rbd-secret"}}},
                {"name": "az", "azureFile": {"secretName": "azure-secret", "shareName": "share"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "scratch", "ephemeral": {}},
                {"name": "unnamed", "secret": {}},
            ],
        })
    }

    #[test]
    fn a_bound_pod_relates_its_node_to_everything_it_references() {
        let mut graph = NodeGraph::default();
        graph.upsert_pod(&pod("a", "dev", "web", referencing_everything()));
        let related = [
            (Kind::ServiceAccount, "runner"),
            (Kind::Secret, "pull"),
            (Kind::Secret, "init-env"),
            (Kind::ConfigMap, "cm-from"),
            (Kind::Secret, "secret-from"),
            (Kind::ConfigMap, "cm-key"),
            (Kind::Secret, "debug-env"),
            (Kind::Secret, "vol-secret"),
            (Kind::ConfigMap, "vol-cm"),
            (Kind::Secret, "proj-secret"),
            (Kind::ConfigMap, "proj-cm"),
            (Kind::Secret, "csi-secret"),
            (Kind::Secret, "rbd-secret"),
            (Kind::Secret, "azure-secret"),
            (Kind::PersistentVolumeClaim, "claim"),
            (Kind::PersistentVolumeClaim, "web-scratch"),
        ];
        for (kind, name) in related {
            assert!(graph.relates("a", kind, "dev", name), "{kind:?} {name} is related");
            assert!(!graph.relates("b", kind, "dev", name), "{kind:?} {name} is not another node's");
            assert!(!graph.relates("a", kind, "prod", name), "{kind:?} {name} in another namespace is not");
        }
        assert!(!graph.relates("a", Kind::ConfigMap, "dev", "vol-secret"), "the kind counts");
        assert!(!graph.relates("a", Kind::Secret, "dev", ""), "an empty name refers to nothing");
        assert!(!graph.relates("a", Kind::Secret, "dev", "plain"));
    }

    #[test]
    fn only_bound_pods_that_are_not_mirror_pods_relate() {
        let mut graph = NodeGraph::default();
        let volume = json!({"volumes": [{"name": "s", "secret": {"secretName": "s"}}]});
        graph.upsert_pod(&pod("", "dev", "pending", volume.clone()));
        assert!(!graph.relates("a", Kind::Secret, "dev", "s"), "a pod not yet scheduled relates to nothing");
        graph.upsert_pod(&pod("a", "dev", "pending", volume.clone()));
        assert!(graph.relates("a", Kind::Secret, "dev", "s"), "binding relates it");

        let mut mirror = pod("a", "dev", "static", json!({"volumes": [{"name": "s", "secret": {"secretName": "m"}}]}));
        mirror.metadata.annotations = Some([(MIRROR_POD_ANNOTATION.to_string(), "x".to_string())].into());
        graph.upsert_pod(&mirror);
        assert!(!graph.relates("a", Kind::Secret, "dev", "m"), "a mirror pod grants its node nothing");
    }

    #[test]
    fn relations_are_counted_per_pod_and_replaced_on_update() {
        let mut graph = NodeGraph::default();
        let shared = json!({"volumes": [{"name": "s", "secret": {"secretName": "shared"}}]});
        // The same Secret twice in one pod counts once for it.
        let twice = json!({"imagePullSecrets": [{"name": "shared"}], "volumes": [{"name": "s", "secret": {"secretName": "shared"}}]});
        graph.upsert_pod(&pod("a", "dev", "one", twice));
        graph.upsert_pod(&pod("a", "dev", "two", shared.clone()));
        graph.upsert_pod(&pod("b", "dev", "three", shared.clone()));
        graph.remove_pod("dev", "one");
        assert!(graph.relates("a", Kind::Secret, "dev", "shared"), "pod two still needs it");
        graph.remove_pod("dev", "two");
        assert!(!graph.relates("a", Kind::Secret, "dev", "shared"), "no pod on a needs it");
        assert!(graph.relates("b", Kind::Secret, "dev", "shared"), "node b's pod still does");
        graph.remove_pod("dev", "two");
        graph.remove_pod("dev", "never-seen");

        // An update replaces what the pod referenced: an ephemeral container's Secret added, the volume's kept.
        graph.upsert_pod(&pod("b", "dev", "three", shared.clone()));
        let mut debugged = shared;
        debugged["ephemeralContainers"] = json!([{"name": "d", "envFrom": [{"secretRef": {"name": "debug"}}]}]);
        graph.upsert_pod(&pod("b", "dev", "three", debugged));
        assert!(graph.relates("b", Kind::Secret, "dev", "debug"));
        assert!(graph.relates("b", Kind::Secret, "dev", "shared"), "an unchanged upsert counts once");
        // The same name made again for another pod, on another node.
        graph.upsert_pod(&pod("c", "dev", "three", json!({})));
        assert!(!graph.relates("b", Kind::Secret, "dev", "shared"));
        assert!(!graph.relates("c", Kind::Secret, "dev", "shared"));
        graph.remove_pod("dev", "three");
        assert!(graph.pods.is_empty() && graph.references.is_empty(), "nothing is left behind");
    }

    /// A graph where node a runs `dev/web` and node b runs `dev/other`.
    fn two_nodes() -> NodeGraph {
        let mut graph = NodeGraph::default();
        graph.upsert_pod(&pod(
            "a",
            "dev",
            "web",
            json!({
                "serviceAccountName": "runner",
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "env"}}]}],
                "volumes": [
                    {"name": "conf", "configMap": {"name": "conf"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                ],
            }),
        ));
        graph.upsert_pod(&pod(
            "b",
            "dev",
            "other",
            json!({"volumes": [{"name": "s", "secret": {"secretName": "b-only"}}]}),
        ));
        graph
    }

    #[test]
    fn every_call_the_agent_makes_is_allowed() {
        let graph = two_nodes();
        let a = node_user("a");
        // (verb, resource, namespace, name), from node/src: registration, heartbeat, pod watch and workers,
        // volumes, environment, image pulls, events, runtime classes, the proxy and NetworkPolicy.
        let calls = [
            ("get", "nodes", "", "a"),
            ("create", "nodes", "", "a"),
            ("patch", "nodes", "", "a"),
            ("patch", "nodes/status", "", "a"),
            ("list", "nodes", "", ""),
            ("watch", "nodes", "", ""),
            ("patch", "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "a"),
            ("create", "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "a"),
            ("list", "pods", "", ""),
            ("watch", "pods", "", ""),
            ("get", "pods", "dev", "web"),
            ("patch", "pods/status", "dev", "web"),
            ("delete", "pods", "dev", "web"),
            ("create", "events", "dev", ""),
            ("patch", "events", "dev", "web.1"),
            ("get", "configmaps", "dev", "conf"),
            ("list", "configmaps", "dev", "conf"),
            ("watch", "configmaps", "dev", "conf"),
            ("get", "secrets", "dev", "pull"),
            ("get", "secrets", "dev", "env"),
            ("get", "runtimeclasses.node.k8s.io", "", "wasm"),
            ("list", "services", "", ""),
            ("watch", "services", "", ""),
            ("list", "endpointslices.discovery.k8s.io", "", ""),
            ("watch", "endpointslices.discovery.k8s.io", "", ""),
            ("list", "networkpolicies.networking.k8s.io", "", ""),
            ("watch", "networkpolicies.networking.k8s.io", "", ""),
            ("list", "ingresses.networking.k8s.io", "", ""),
            ("watch", "ingressclasses.networking.k8s.io", "", ""),
            ("list", "namespaces", "", ""),
            ("watch", "namespaces", "", ""),
            ("create", "certificatesigningrequests.certificates.k8s.io", "", ""),
            ("watch", "certificatesigningrequests.certificates.k8s.io", "", "node-csr-a"),
            ("get", "persistentvolumeclaims", "dev", "claim"),
            ("create", "serviceaccounts/token", "dev", "runner"),
        ];
        for (verb, resource, namespace, name) in calls {
            let decision = authorize(&ask(&a, verb, resource, namespace, name), &graph);
            assert_eq!(decision, Decision::Allow, "{verb} {resource} {namespace}/{name}");
        }
    }

    #[test]
    fn a_node_is_denied_what_its_pods_do_not_reference_in_kubernetes_words() {
        let graph = two_nodes();
        let a = node_user("a");
        let unrelated = Decision::Deny("no relationship found between node 'a' and this object".into());
        let deny = |reason: &str| Decision::Deny(reason.into());
        let cases = [
            ("get", "secrets", "dev", "b-only", unrelated.clone()),
            ("get", "secrets", "prod", "pull", unrelated.clone()),
            ("watch", "configmaps", "dev", "other", unrelated.clone()),
            ("list", "secrets", "dev", "", deny("No Object name found")),
            ("watch", "configmaps", "dev", "", deny("No Object name found")),
            ("create", "secrets", "dev", "", deny("can only read resources of this type")),
            ("update", "configmaps", "dev", "conf", deny("can only read resources of this type")),
            ("delete", "secrets", "dev", "pull", deny("can only read resources of this type")),
            ("get", "secrets/status", "dev", "pull", deny("cannot read subresource")),
            ("list", "secrets", "", "pull", deny("can only read namespaced object of this type")),
            ("list", "persistentvolumeclaims", "dev", "claim", deny("can only get individual resources of this type")),
            ("get", "persistentvolumeclaims/status", "dev", "claim", deny("cannot get subresource")),
            ("get", "persistentvolumeclaims", "dev", "theirs", unrelated.clone()),
            ("get", "serviceaccounts", "dev", "runner", deny("can only create tokens for individual service accounts")),
            (
                "create",
                "serviceaccounts/token",
                "dev",
                "",
                deny("can only create tokens for individual service accounts"),
            ),
            ("create", "serviceaccounts", "dev", "runner", deny("can only create token subresource of serviceaccount")),
            ("create", "serviceaccounts/token", "dev", "default", unrelated),
            (
                "patch",
                "leases.coordination.k8s.io",
                NODE_LEASE_NAMESPACE,
                "b",
                deny("can only access node lease with the same name as the requesting node"),
            ),
            (
                "get",
                "leases.coordination.k8s.io",
                "kube-system",
                "a",
                deny(r#"can only access leases in the "kube-node-lease" system namespace"#),
            ),
            (
                "list",
                "leases.coordination.k8s.io",
                NODE_LEASE_NAMESPACE,
                "",
                deny("can only get, create, update, patch, or delete a node lease"),
            ),
            // Beyond the node rules: no opinion, for RBAC to decide.
            ("delete", "nodes", "", "b", Decision::NoOpinion),
            ("update", "pods", "dev", "web", Decision::NoOpinion),
            ("deletecollection", "pods", "dev", "", Decision::NoOpinion),
            ("create", "pods/exec", "dev", "web", Decision::NoOpinion),
            ("get", "persistentvolumes", "", "pv", Decision::NoOpinion),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", "", Decision::NoOpinion),
            ("create", "events.events.k8s.io", "dev", "", Decision::NoOpinion),
        ];
        for (verb, resource, namespace, name, expected) in cases {
            let decision = authorize(&ask(&a, verb, resource, namespace, name), &graph);
            assert_eq!(decision, expected, "{verb} {resource} {namespace}/{name}");
        }
    }

    #[test]
    fn every_node_reads_the_tls_secrets_ingresses_name_while_they_name_them() {
        let mut graph = two_nodes();
        let ingress = |name: &str, secrets: &[&str]| -> Ingress {
            let tls: Vec<Value> = secrets.iter().map(|s| json!({"secretName": s})).collect();
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "web"}, "spec": {"tls": tls}}))
                .unwrap()
        };
        let reads = |graph: &NodeGraph, node: &str, namespace: &str, name: &str| {
            authorize(&ask(&node_user(node), "watch", "secrets", namespace, name), graph) == Decision::Allow
        };
        graph.upsert_ingress(&ingress("shop", &["shop-tls", "shared-tls"]));
        graph.upsert_ingress(&ingress("blog", &["shared-tls"]));
        assert!(reads(&graph, "a", "web", "shop-tls") && reads(&graph, "b", "web", "shop-tls"));
        assert!(!reads(&graph, "a", "dev", "shop-tls"), "only in the Ingress's namespace");
        assert!(!reads(&graph, "a", "web", "other"));
        let writes = authorize(&ask(&node_user("a"), "update", "secrets", "web", "shop-tls"), &graph);
        assert_eq!(writes, Decision::Deny("can only read resources of this type".into()));
        graph.upsert_ingress(&ingress("shop", &[]));
        assert!(!reads(&graph, "a", "web", "shop-tls") && reads(&graph, "a", "web", "shared-tls"));
        graph.remove_ingress("web", "blog");
        assert!(!reads(&graph, "b", "web", "shared-tls"));
    }

    #[test]
    fn only_node_identities_are_judged() {
        let graph = two_nodes();
        let alice = UserInfo { name: "alice".into(), groups: vec![AUTHENTICATED.into()], ..UserInfo::default() };
        let posing =
            UserInfo { name: "system:node:a".into(), groups: vec![AUTHENTICATED.into()], ..UserInfo::default() };
        let nameless = node_user("");
        for user in [&alice, &posing, &nameless] {
            for (verb, resource, name) in [("get", "secrets", "b-only"), ("get", "nodes", "a")] {
                let decision = authorize(&ask(user, verb, resource, "dev", name), &graph);
                assert_eq!(decision, Decision::NoOpinion, "{} {verb} {resource}", user.name);
            }
        }
        let path =
            Attributes { user: node_user("a"), verb: "get".into(), path: "/metrics".into(), ..Attributes::default() };
        assert_eq!(authorize(&path, &graph), Decision::NoOpinion);
    }

    #[test]
    fn node_rules_are_kubernetes_rules_for_what_skiff_serves() {
        let rules = node_rules();
        let a = node_user("a");
        let allows =
            |verb: &str, resource: &str| rules.iter().any(|r| rule_allows(r, &ask(&a, verb, resource, "", "")));
        assert!(allows("update", "nodes/status") && allows("create", "pods/eviction"));
        // The kubelet endpoint's webhook modes.
        assert!(allows("create", "tokenreviews.authentication.k8s.io"));
        assert!(allows("create", "subjectaccessreviews.authorization.k8s.io"));
        assert!(!allows("get", "tokenreviews.authentication.k8s.io"));
        assert!(!allows("get", "persistentvolumes"), "the graph knows no volumes");
        assert!(!allows("get", "endpoints"), "no glusterfs");
        assert!(rules.iter().all(|r| r.non_resource_urls.is_none() && r.resource_names.is_none()));
    }

    fn write<'a>(
        user: &'a UserInfo,
        operation: Operation,
        resource: &'a str,
        namespace: &'a str,
        name: &'a str,
        old: Option<&'a Value>,
        new: Option<&'a Value>,
    ) -> AdmissionRequest<'a> {
        let (api_group, resource, subresource) = split(resource);
        AdmissionRequest { user, operation, api_group, resource, subresource, namespace, name, old, new }
    }

    fn check(cases: &[(&str, AdmissionRequest, Result<(), &str>)]) {
        for (what, request, expected) in cases {
            assert_eq!(admit(request), expected.map_err(str::to_string), "{what}");
        }
    }

    #[test]
    fn nodes_only_wake_deployments_that_opted_in() {
        use Operation::*;
        let a = node_user("a");
        let annotations = json!({crate::scale_to_zero::IDLE_AFTER: "30s"});
        let asleep = json!({"metadata": {"name": "web", "annotations": annotations}, "spec": {"replicas": 0}});
        let awake = json!({"metadata": {"name": "web", "annotations": annotations}, "spec": {"replicas": 1}});
        let many = json!({"metadata": {"name": "web", "annotations": annotations}, "spec": {"replicas": 9}});
        check(&[
            ("0 to 1", write(&a, Update, "deployments.apps/scale", "shop", "web", Some(&asleep), Some(&awake)), Ok(())),
            (
                "0 to 9",
                write(&a, Update, "deployments.apps/scale", "shop", "web", Some(&asleep), Some(&many)),
                Err("a node may only scale a Deployment from 0 to 1 replicas"),
            ),
        ]);
        let graph = NodeGraph::default();
        let get_scale = ask(&a, "get", "deployments.apps/scale", "shop", "web");
        assert_eq!(authorize(&get_scale, &graph), Decision::Allow);
        let get_deployment = ask(&a, "get", "deployments.apps", "shop", "web");
        assert_eq!(authorize(&get_deployment, &graph), Decision::NoOpinion, "nothing else of Deployments");
    }

    #[test]
    fn nodes_write_only_their_own_pods_status_and_delete_only_their_own_pods() {
        use Operation::*;
        let a = node_user("a");
        let mine = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"nodeName": "a"}});
        let running = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"nodeName": "a"}, "status": {"phase": "Running"}});
        let relabelled = json!({"metadata": {"name": "web", "labels": {"app": "db"}}, "spec": {"nodeName": "a"}});
        let claimed = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"nodeName": "a"},
                             "status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "web-gpu"}]}});
        let theirs = json!({"metadata": {"name": "db"}, "spec": {"nodeName": "b"}});
        let pending = json!({"metadata": {"name": "new"}, "spec": {}});
        let mirror =
            json!({"metadata": {"name": "m", "annotations": {MIRROR_POD_ANNOTATION: "x"}}, "spec": {"nodeName": "a"}});
        let unlabelled = json!({"metadata": {"name": "u"}, "spec": {"nodeName": "a"}});
        let empty_labels = json!({"metadata": {"name": "u", "labels": {}}, "spec": {"nodeName": "a"}});
        check(&[
            (
                "status of its own pod",
                write(&a, Update, "pods/status", "dev", "web", Some(&mine), Some(&running)),
                Ok(()),
            ),
            (
                "no labels and empty labels",
                write(&a, Update, "pods/status", "dev", "u", Some(&unlabelled), Some(&empty_labels)),
                Ok(()),
            ),
            (
                "status of another node's pod",
                write(&a, Update, "pods/status", "dev", "db", Some(&theirs), Some(&theirs)),
                Err(r#"node "a" can only update pod status for pods with spec.nodeName set to itself"#),
            ),
            (
                "labels through status",
                write(&a, Update, "pods/status", "dev", "web", Some(&mine), Some(&relabelled)),
                Err(r#"node "a" cannot update labels through pod status"#),
            ),
            (
                "resource claim statuses",
                write(&a, Update, "pods/status", "dev", "web", Some(&mine), Some(&claimed)),
                Err(r#"node "a" cannot update resource claim statues"#),
            ),
            (
                "status create",
                write(&a, Create, "pods/status", "dev", "web", None, Some(&mine)),
                Err(r#"unexpected operation "CREATE""#),
            ),
            ("delete its own pod", write(&a, Delete, "pods", "dev", "web", Some(&mine), None), Ok(())),
            (
                "delete another node's pod",
                write(&a, Delete, "pods", "dev", "db", Some(&theirs), None),
                Err(r#"node "a" can only delete pods with spec.nodeName set to itself"#),
            ),
            (
                "delete a pending pod",
                write(&a, Delete, "pods", "dev", "new", Some(&pending), None),
                Err(r#"node "a" can only delete pods with spec.nodeName set to itself"#),
            ),
            (
                "delete without the stored pod",
                write(&a, Delete, "pods", "dev", "web", None, None),
                Err("unexpected type <nil>"),
            ),
            (
                "create a pod",
                write(&a, Create, "pods", "dev", "", None, Some(&mine)),
                Err(
                    r#"pod does not have "kubernetes.io/config.mirror" annotation, node "a" can only create mirror pods"#,
                ),
            ),
            (
                "create a mirror pod",
                write(&a, Create, "pods", "dev", "", None, Some(&mirror)),
                Err(r#"node "a" cannot create mirror pods: skiff runs no static pods"#),
            ),
            (
                "update a pod",
                write(&a, Update, "pods", "dev", "web", Some(&mine), Some(&relabelled)),
                Err(r#"unexpected operation "UPDATE", node "a" can only create and delete mirror pods"#),
            ),
            ("evict its own pod", write(&a, Create, "pods/eviction", "dev", "web", Some(&mine), None), Ok(())),
            (
                "evict another node's pod",
                write(&a, Create, "pods/eviction", "dev", "db", Some(&theirs), None),
                Err("node a can only evict pods with spec.nodeName set to itself"),
            ),
            (
                "another pod subresource",
                write(&a, Create, "pods/exec", "dev", "web", Some(&mine), None),
                Err(r#"unexpected pod subresource "exec", only 'status' and 'eviction' are allowed"#),
            ),
        ]);
    }

    #[test]
    fn nodes_write_only_their_own_node_without_taints_config_source_or_reserved_labels() {
        use Operation::*;
        let a = node_user("a");
        // What Skiff's agent registers with.
        let registered = json!({"metadata": {"name": "a", "labels": {
            "kubernetes.io/hostname": "a", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "skiff.dev/runtime.wasm": "true",
        }}, "spec": {"podCIDR": "10.42.1.0/24"}});
        let allowed_labels = json!({"metadata": {"name": "a", "labels": {
            "node.kubernetes.io/instance-type": "small", "kubelet.kubernetes.io/x": "1", "x.kubelet.kubernetes.io/y": "1",
            "topology.kubernetes.io/zone": "z", "beta.kubernetes.io/arch": "amd64", "example.com/any": "1",
        }}});
        let reserved_labels = json!({"metadata": {"name": "a", "labels": {
            "node-restriction.kubernetes.io/pool": "gold", "x.node-restriction.kubernetes.io/y": "1",
            "node-role.kubernetes.io/control-plane": "", "k8s.io/z": "1", "evilnode.kubernetes.io/x": "1",
            "kubernetes.io/hostname": "a",
        }}});
        let with_source = json!({"metadata": {"name": "a"}, "spec": {"configSource": {"configMap": {"name": "c"}}}});
        let other = json!({"metadata": {"name": "b"}});
        let mut heartbeat = registered.clone();
        heartbeat["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        heartbeat["metadata"]["labels"]["kubernetes.io/hostname"] = json!("a.example");
        heartbeat["metadata"]["labels"]["team"] = json!("blue");
        let mut no_taints = registered.clone();
        no_taints["spec"]["taints"] = json!([]);
        let mut tainted = registered.clone();
        tainted["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
        let mut role = registered.clone();
        role["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        let mut source_dropped = with_source.clone();
        source_dropped["spec"] = json!({});
        let mut new_source = with_source.clone();
        new_source["spec"]["configSource"]["configMap"]["name"] = json!("d");
        check(&[
            ("register", write(&a, Create, "nodes", "", "", None, Some(&registered)), Ok(())),
            ("register with kubelet labels", write(&a, Create, "nodes", "", "", None, Some(&allowed_labels)), Ok(())),
            (
                "register another node",
                write(&a, Create, "nodes", "", "", None, Some(&other)),
                Err(r#"node "a" is not allowed to modify node "b""#),
            ),
            (
                "register with a config source",
                write(&a, Create, "nodes", "", "", None, Some(&with_source)),
                Err(r#"node "a" is not allowed to create pods with a non-nil configSource"#),
            ),
            (
                "register with reserved labels",
                write(&a, Create, "nodes", "", "", None, Some(&reserved_labels)),
                Err(concat!(
                    r#"node "a" is not allowed to set the following labels: evilnode.kubernetes.io/x, k8s.io/z, "#,
                    "node-restriction.kubernetes.io/pool, node-role.kubernetes.io/control-plane, ",
                    "x.node-restriction.kubernetes.io/y"
                )),
            ),
            (
                "status and own labels",
                write(&a, Update, "nodes/status", "", "a", Some(&registered), Some(&heartbeat)),
                Ok(()),
            ),
            (
                "null taints and no taints",
                write(&a, Update, "nodes", "", "a", Some(&registered), Some(&no_taints)),
                Ok(()),
            ),
            (
                "status of another node",
                write(&a, Update, "nodes/status", "", "b", Some(&other), Some(&other)),
                Err(r#"node "a" is not allowed to modify node "b""#),
            ),
            (
                "add a taint",
                write(&a, Update, "nodes", "", "a", Some(&registered), Some(&tainted)),
                Err(r#"node "a" is not allowed to modify taints"#),
            ),
            (
                "lift a taint",
                write(&a, Update, "nodes", "", "a", Some(&tainted), Some(&registered)),
                Err(r#"node "a" is not allowed to modify taints"#),
            ),
            (
                "give itself a role",
                write(&a, Update, "nodes", "", "a", Some(&registered), Some(&role)),
                Err("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
            ),
            (
                "drop its role",
                write(&a, Update, "nodes", "", "a", Some(&role), Some(&registered)),
                Err("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
            ),
            (
                "set a config source",
                write(&a, Update, "nodes", "", "a", Some(&registered), Some(&with_source)),
                Err(r#"node "a" is not allowed to update configSource to a new non-nil configSource"#),
            ),
            (
                "change the config source",
                write(&a, Update, "nodes", "", "a", Some(&with_source), Some(&new_source)),
                Err(r#"node "a" is not allowed to update configSource to a new non-nil configSource"#),
            ),
            (
                "keep or drop the config source",
                write(&a, Update, "nodes", "", "a", Some(&with_source), Some(&source_dropped)),
                Ok(()),
            ),
            ("delete itself", write(&a, Delete, "nodes", "", "a", Some(&registered), None), Ok(())),
            (
                "delete another node",
                write(&a, Delete, "nodes", "", "b", Some(&other), None),
                Err(r#"node "a" is not allowed to modify node "b""#),
            ),
        ]);
    }

    #[test]
    fn nodes_write_only_their_own_lease_and_nothing_else_is_admission_s_business() {
        use Operation::*;
        let a = node_user("a");
        let own = json!({"metadata": {"name": "a", "namespace": NODE_LEASE_NAMESPACE}});
        let other = json!({"metadata": {"name": "b", "namespace": NODE_LEASE_NAMESPACE}});
        let event = json!({"metadata": {"name": "web.1"}, "involvedObject": {"kind": "Pod", "name": "elsewhere"}});
        let pod = json!({"metadata": {"name": "db"}, "spec": {"nodeName": "b"}});
        let same_name = "same name as the requesting node";
        let wrong_name = format!("can only access node lease with the {same_name}");
        let alice = UserInfo { name: "alice".into(), ..UserInfo::default() };
        let nameless = node_user("");
        check(&[
            (
                "create its lease",
                write(&a, Create, "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "", None, Some(&own)),
                Ok(()),
            ),
            (
                "renew its lease",
                write(&a, Update, "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "a", Some(&own), Some(&own)),
                Ok(()),
            ),
            (
                "create another's lease",
                write(&a, Create, "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "", None, Some(&other)),
                Err(&wrong_name),
            ),
            (
                "renew another's lease",
                write(&a, Update, "leases.coordination.k8s.io", NODE_LEASE_NAMESPACE, "b", Some(&other), Some(&other)),
                Err(&wrong_name),
            ),
            (
                "a lease elsewhere",
                write(&a, Create, "leases.coordination.k8s.io", "kube-system", "", None, Some(&own)),
                Err(r#"can only access leases in the "kube-node-lease" system namespace"#),
            ),
            ("events pass", write(&a, Create, "events", "dev", "", None, Some(&event)), Ok(())),
            (
                "certificate requests pass",
                write(&a, Create, "certificatesigningrequests.certificates.k8s.io", "", "", None, Some(&event)),
                Ok(()),
            ),
            (
                "a lease of another group",
                write(&a, Create, "leases.example.com", "dev", "", None, Some(&other)),
                Ok(()),
            ),
            ("not a node", write(&alice, Delete, "pods", "dev", "db", Some(&pod), None), Ok(())),
            (
                "a node without a name",
                write(&nameless, Delete, "pods", "dev", "db", Some(&pod), None),
                Err(r#"could not determine node from user "system:node:""#),
            ),
        ]);
    }
}
