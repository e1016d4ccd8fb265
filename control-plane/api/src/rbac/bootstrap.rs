//! Kubernetes' default RBAC policy as data (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`), the part of
//! it Skiff's components and clients need, and its reconciliation when a new version starts on an old store.
//!
//! The roles and bindings are Kubernetes' own, rule for rule (lists sorted as its rule builder sorts them),
//! except `system:kube-controller-manager`: Skiff runs its controllers and scheduler under that one identity,
//! so the role holds the union of the rules of Kubernetes' roles for those controllers. Two bindings are
//! Skiff's: join-token holders (`system:bootstrappers`) may ask for node client certificates, and nodes
//! (`system:nodes`) may renew theirs, which Kubernetes leaves to the installer (kubeadm binds the same roles).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{aggregate, covers, same_rule};
use crate::authz::{AUTHENTICATED, BOOTSTRAPPERS, MASTERS, NODES};

/// The label on every bootstrap object, so `kubectl get clusterroles -l kubernetes.io/bootstrapping` lists them.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// An object whose annotation says `"false"` is the operator's: reconciliation leaves it alone.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// A ClusterRole carrying one of these labels (`"true"`) adds its rules to `admin`, `edit` or `view`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group Kubernetes lets read `/metrics` and the health checks' details.
const MONITORING: &str = "system:monitoring";
const SCHEDULER_USER: &str = "system:kube-scheduler";
const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The Lease in kube-system that Skiff's controller manager leads by (`skiff server`'s leader election).
const CONTROLLER_MANAGER_LEASE: &str = "skiff-controller-manager";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// The bootstrap ClusterRoles. The aggregated ones (`admin`, `edit`, `view`) come with their rules already
/// aggregated, so they grant what they should before the aggregation controller first runs.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![
        role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        // For components that take bearer tokens or answer for others, as a kubelet's port or an extension
        // API server does; Kubernetes binds it to no one.
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        aggregated("admin", AGGREGATE_TO_ADMIN, &[]),
        aggregated("edit", AGGREGATE_TO_EDIT, &[(AGGREGATE_TO_ADMIN, "true")]),
        aggregated("view", AGGREGATE_TO_VIEW, &[(AGGREGATE_TO_EDIT, "true")]),
        role("system:aggregate-to-admin", &[(AGGREGATE_TO_ADMIN, "true")], aggregate_to_admin()),
        role("system:aggregate-to-edit", &[(AGGREGATE_TO_EDIT, "true")], aggregate_to_edit()),
        role("system:aggregate-to-view", &[(AGGREGATE_TO_VIEW, "true")], aggregate_to_view()),
        role(
            "system:node-bootstrapper",
            &[],
            vec![rule(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"])],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"])],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"])],
        ),
        role("system:kube-scheduler", &[], kube_scheduler()),
        role("system:kube-controller-manager", &[], kube_controller_manager()),
    ];
    // The aggregated roles select one another in a chain (admin ← edit ← view), so this ends after as many
    // rounds as the chain is long.
    loop {
        let changes = aggregate(&roles);
        if changes.is_empty() {
            return roles;
        }
        for (name, rules) in changes {
            if let Some(role) = roles.iter_mut().find(|r| r.metadata.name.as_deref() == Some(name.as_str())) {
                role.rules = Some(rules);
            }
        }
    }
}

/// The bootstrap ClusterRoleBindings, each named after its role.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", vec![group(MASTERS)]),
        binding("system:discovery", vec![group(AUTHENTICATED)]),
        binding("system:monitoring", vec![group(MONITORING)]),
        binding("system:basic-user", vec![group(AUTHENTICATED)]),
        binding("system:public-info-viewer", vec![group(AUTHENTICATED), group(UNAUTHENTICATED)]),
        binding("system:node-bootstrapper", vec![group(BOOTSTRAPPERS)]),
        binding("system:certificates.k8s.io:certificatesigningrequests:nodeclient", vec![group(BOOTSTRAPPERS)]),
        binding("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", vec![group(NODES)]),
        binding("system:kube-scheduler", vec![user(SCHEDULER_USER)]),
        binding("system:kube-controller-manager", vec![user(CONTROLLER_MANAGER_USER)]),
    ]
}

/// What a stored bootstrap ClusterRole becomes when this version wants `wanted` (Kubernetes'
/// reconciliation on start-up, as `kubectl auth reconcile` without `--remove-extra-permissions`): the
/// existing role plus the labels, annotations, rules and aggregation selectors it lacks, never losing what
/// an operator added (an existing label's value is kept). `None` when nothing changes or when the role's
/// autoupdate annotation is `"false"`.
///
/// Missing rules are added as the atomic rules [`covers`] finds missing, as Kubernetes adds them. An
/// aggregated role's rules are not compared: the aggregation controller owns them.
pub fn reconcile(existing: &ClusterRole, wanted: &ClusterRole) -> Option<ClusterRole> {
    if protected(&existing.metadata) {
        return None;
    }
    let mut role = existing.clone();
    merge_metadata(&mut role.metadata, &wanted.metadata);
    if wanted.aggregation_rule.is_none() {
        let have = existing.rules.as_deref().unwrap_or_default();
        if let Err(missing) = covers(have, wanted.rules.as_deref().unwrap_or_default()) {
            role.rules.get_or_insert_with(Vec::new).extend(missing);
        }
    }
    if let Some(wanted_rule) = &wanted.aggregation_rule {
        let selectors = role
            .aggregation_rule
            .get_or_insert_with(AggregationRule::default)
            .cluster_role_selectors
            .get_or_insert_with(Vec::new);
        for selector in wanted_rule.cluster_role_selectors.iter().flatten() {
            if !selectors.contains(selector) {
                selectors.push(selector.clone());
            }
        }
    }
    (role != *existing).then_some(role)
}

/// What a stored bootstrap ClusterRoleBinding becomes when this version wants `wanted`, as [`reconcile`]:
/// the existing binding plus the labels, annotations and subjects it lacks. When the roleRef differs the
/// answer is `wanted` itself: a roleRef cannot change, so the caller deletes the binding and creates this
/// one, as Kubernetes recreates it.
pub fn reconcile_binding(existing: &ClusterRoleBinding, wanted: &ClusterRoleBinding) -> Option<ClusterRoleBinding> {
    if protected(&existing.metadata) {
        return None;
    }
    if existing.role_ref != wanted.role_ref {
        return Some(wanted.clone());
    }
    let mut binding = existing.clone();
    merge_metadata(&mut binding.metadata, &wanted.metadata);
    let subjects = binding.subjects.get_or_insert_with(Vec::new);
    for subject in wanted.subjects.iter().flatten() {
        if !subjects.iter().any(|have| same_subject(have, subject)) {
            subjects.push(subject.clone());
        }
    }
    (binding != *existing).then_some(binding)
}

fn protected(metadata: &ObjectMeta) -> bool {
    metadata.annotations.as_ref().and_then(|a| a.get(AUTOUPDATE_ANNOTATION)).is_some_and(|v| v == "false")
}

/// Adds the labels and annotations `wanted` has and `metadata` lacks; values already there win.
fn merge_metadata(metadata: &mut ObjectMeta, wanted: &ObjectMeta) {
    for (mine, theirs) in [(&mut metadata.labels, &wanted.labels), (&mut metadata.annotations, &wanted.annotations)] {
        for (key, value) in theirs.iter().flatten() {
            mine.get_or_insert_with(BTreeMap::new).entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

/// Subjects compare as Kubernetes compares them once defaulted: a User or Group without an API group is in
/// RBAC's, and a missing namespace is the empty one.
fn same_subject(a: &Subject, b: &Subject) -> bool {
    let api_group = |s: &Subject| match s.api_group.as_deref().unwrap_or_default() {
        "" if s.kind == "User" || s.kind == "Group" => RBAC_GROUP.to_owned(),
        group => group.to_owned(),
    };
    let namespace = |s: &Subject| s.namespace.clone().unwrap_or_default();
    a.kind == b.kind && a.name == b.name && api_group(a) == api_group(b) && namespace(a) == namespace(b)
}

/// What `admin` adds to `edit`: managing who may do what in the namespace.
fn aggregate_to_admin() -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

/// What `edit` adds to `view`: writing the namespace's workloads and configuration, reading secrets, and
/// running commands in pods. Not roles, bindings, quotas or status.
fn aggregate_to_edit() -> Vec<PolicyRule> {
    vec![
        rule(READ, &[""], &["pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"]),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(WRITE, &[""], &["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(WRITE, &["networking.k8s.io"], &["networkpolicies", "ingresses"]),
        rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

/// `view`: reading the namespace's objects, except secrets (whose tokens would let a viewer act as others)
/// and roles and bindings.
fn aggregate_to_view() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Reading namespaces at the namespace scope reads that namespace only: how a user tells where they
        // have access.
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(READ, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        rule(READ, &["batch"], &["jobs", "cronjobs", "cronjobs/status", "jobs/status"]),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        rule(READ, &["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"]),
    ]
}

/// Creating, updating and patching events, in both event API groups: every controller records events.
fn events() -> PolicyRule {
    rule(&["create", "update", "patch"], &["", "events.k8s.io"], &["events"])
}

/// Leading by a Lease: creating one (creates cannot be limited by name), then reading and renewing only
/// the one named.
fn leader_lease(name: &str) -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]), &[name]),
    ]
}

/// Kubernetes' `system:kube-scheduler`.
fn kube_scheduler() -> Vec<PolicyRule> {
    let mut rules = vec![events()];
    rules.extend(leader_lease("kube-scheduler"));
    rules.extend(scheduling());
    rules
}

/// What the scheduler does besides leading: watching what placement depends on, binding pods to nodes,
/// setting their conditions, and preempting (deleting) pods.
fn scheduling() -> Vec<PolicyRule> {
    vec![
        rule(READ, &[""], &["nodes"]),
        rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
        rule(&["create"], &[""], &["pods/binding", "bindings"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(READ, &[""], &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
        rule(READ, &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
        // Skiff's placement matches a pod's RuntimeClass against the shims each node offers.
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

/// Kubernetes' `system:kube-controller-manager` (leading by Skiff's Lease), the scheduler's rules, and the
/// rules of Kubernetes' `system:controller:*` roles for the controllers Skiff runs, each rule once.
fn kube_controller_manager() -> Vec<PolicyRule> {
    let sections = [
        // system:kube-controller-manager: shared informers over everything, service account tokens.
        vec![events()],
        leader_lease(CONTROLLER_MANAGER_LEASE),
        vec![
            rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
            rule(&["delete"], &[""], &["secrets"]),
            rule(&["get"], &[""], &["namespaces", "secrets", "serviceaccounts", "configmaps"]),
            rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
            rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
            rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            rule(&["list", "watch"], &["*"], &["*"]),
            rule(&["create"], &[""], &["serviceaccounts/token"]),
        ],
        scheduling(),
        // replicaset-controller
        vec![
            rule(&["get", "list", "watch", "update"], &["apps", "extensions"], &["replicasets"]),
            rule(&["update"], &["apps", "extensions"], &["replicasets/status"]),
            rule(&["update"], &["apps", "extensions"], &["replicasets/finalizers"]),
            rule(&["list", "watch", "patch", "create", "delete"], &[""], &["pods"]),
        ],
        // deployment-controller
        vec![
            rule(&["get", "list", "watch", "update"], &["extensions", "apps"], &["deployments"]),
            rule(&["update"], &["extensions", "apps"], &["deployments/status"]),
            rule(&["update"], &["extensions", "apps"], &["deployments/finalizers"]),
            rule(
                &["get", "list", "watch", "create", "update", "patch", "delete"],
                &["apps", "extensions"],
                &["replicasets"],
            ),
            rule(&["get", "list", "watch", "update"], &[""], &["pods"]),
        ],
        // daemon-set-controller
        vec![
            rule(READ, &["extensions", "apps"], &["daemonsets"]),
            rule(&["update"], &["extensions", "apps"], &["daemonsets/status"]),
            rule(&["update"], &["extensions", "apps"], &["daemonsets/finalizers"]),
            rule(&["list", "watch"], &[""], &["nodes"]),
            rule(&["list", "watch", "create", "delete", "patch"], &[""], &["pods"]),
            rule(&["create"], &[""], &["pods/binding"]),
            rule(&["get", "list", "watch", "create", "delete", "update", "patch"], &["apps"], &["controllerrevisions"]),
        ],
        // job-controller
        vec![
            rule(&["get", "list", "watch", "update", "patch"], &["batch"], &["jobs"]),
            rule(&["update"], &["batch"], &["jobs/status"]),
            rule(&["update"], &["batch"], &["jobs/finalizers"]),
            rule(&["list", "watch", "create", "delete", "patch"], &[""], &["pods"]),
        ],
        // node-controller (node lifecycle: conditions, taints, evicting pods by deleting them)
        vec![
            rule(&["get", "list", "watch", "update", "delete", "patch"], &[""], &["nodes"]),
            rule(&["patch", "update"], &[""], &["nodes/status"]),
            rule(&["patch", "update"], &[""], &["pods/status"]),
            rule(&["list", "watch", "get", "delete"], &[""], &["pods"]),
        ],
        // generic-garbage-collector: owners and dependents may be of any type
        vec![rule(&["get", "list", "watch", "patch", "update", "delete"], &["*"], &["*"])],
        // endpointslice-controller
        vec![
            rule(READ, &[""], &["services", "pods", "nodes"]),
            rule(&["update"], &[""], &["services/finalizers"]),
            rule(&["get", "list", "watch", "create", "update", "delete"], &["discovery.k8s.io"], &["endpointslices"]),
        ],
        // endpoint-controller
        vec![
            rule(READ, &[""], &["services", "pods"]),
            rule(&["get", "list", "watch", "create", "update", "delete"], &[""], &["endpoints"]),
            rule(&["create"], &[""], &["endpoints/restricted"]),
        ],
        // service-controller (Skiff's servicelb)
        vec![
            rule(READ, &[""], &["services"]),
            rule(&["patch", "update"], &[""], &["services/status"]),
            rule(&["list", "watch"], &[""], &["nodes"]),
        ],
        // Skiff's ingress status controller: the Ready nodes' addresses on the Ingresses its nodes serve
        vec![
            rule(READ, &["networking.k8s.io"], &["ingresses", "ingressclasses"]),
            rule(&["patch", "update"], &["networking.k8s.io"], &["ingresses/status"]),
        ],
        // horizontal-pod-autoscaler: targets through their scale subresource, pods' metrics from the
        // resource, custom and external metrics APIs
        vec![
            rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
            rule(&["update"], &["autoscaling"], &["horizontalpodautoscalers/status"]),
            rule(&["get", "update"], &["*"], &["*/scale"]),
            rule(&["list"], &[""], &["pods"]),
            rule(&["list"], &["metrics.k8s.io"], &["pods"]),
            rule(&["get", "list"], &["custom.metrics.k8s.io"], &["*"]),
            rule(&["get", "list"], &["external.metrics.k8s.io"], &["*"]),
        ],
        // Skiff's scale-to-zero controller: idle Deployments to zero, and the Services that wake them marked
        vec![
            rule(&["patch"], &["apps"], &["deployments/scale"]),
            rule(&["get"], &["custom.metrics.k8s.io"], &["pods/http_requests_per_second"]),
            rule(&["list", "patch"], &[""], &["services"]),
        ],
        // clusterrole-aggregation-controller: it writes rules it may not hold, hence escalate
        vec![rule(&["escalate", "get", "list", "watch", "update", "patch"], &[RBAC_GROUP], &["clusterroles"])],
        // certificate-controller (approving node client requests, signing, cleaning up)
        vec![
            rule(&["get", "list", "watch", "delete"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
            rule(
                &["update"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/status", "certificatesigningrequests/approval"],
            ),
            // Kubernetes' role names the client signer only; Skiff's approver also takes nodes' serving requests.
            named(
                rule(&["approve"], &["certificates.k8s.io"], &["signers"]),
                &["kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"],
            ),
            named(
                rule(&["sign"], &["certificates.k8s.io"], &["signers"]),
                &[
                    "kubernetes.io/legacy-unknown",
                    "kubernetes.io/kube-apiserver-client",
                    "kubernetes.io/kube-apiserver-client-kubelet",
                    "kubernetes.io/kubelet-serving",
                ],
            ),
            rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
        ],
        // token-cleaner (Kubernetes' Role `system:controller:token-cleaner` in kube-system; cluster-wide here,
        // within what the controller manager's own rules above already grant on Secrets)
        vec![rule(&["delete", "get", "list", "watch"], &[""], &["secrets"])],
    ];
    let mut rules: Vec<PolicyRule> = Vec::new();
    for rule in sections.into_iter().flatten() {
        if !rules.iter().any(|have| same_rule(have, &rule)) {
            rules.push(rule);
        }
    }
    rules
}

/// A resource rule with its lists sorted and deduplicated, as Kubernetes' rule builder makes them, so these
/// rules equal Kubernetes' own.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: sorted(verbs),
        api_groups: Some(sorted(groups)),
        resources: Some(sorted(resources)),
        ..PolicyRule::default()
    }
}

fn named(mut rule: PolicyRule, names: &[&str]) -> PolicyRule {
    rule.resource_names = Some(sorted(names));
    rule
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule { verbs: sorted(verbs), non_resource_urls: Some(sorted(urls)), ..PolicyRule::default() }
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    items.sort();
    items.dedup();
    items
}

fn metadata(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut all = BTreeMap::from([(BOOTSTRAPPING_LABEL.to_string(), BOOTSTRAPPING_VALUE.to_string())]);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(all),
        annotations: Some(BTreeMap::from([(AUTOUPDATE_ANNOTATION.to_string(), "true".to_string())])),
        ..ObjectMeta::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole { metadata: metadata(name, labels), rules: Some(rules), aggregation_rule: None }
}

/// A role whose rules are those of the ClusterRoles labelled `selector_label: "true"`.
fn aggregated(name: &str, selector_label: &str, labels: &[(&str, &str)]) -> ClusterRole {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(selector_label.to_string(), "true".to_string())])),
        match_expressions: None,
    };
    ClusterRole {
        metadata: metadata(name, labels),
        rules: None,
        aggregation_rule: Some(AggregationRule { cluster_role_selectors: Some(vec![selector]) }),
    }
}

fn binding(role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: metadata(role, &[]),
        role_ref: RoleRef { api_group: RBAC_GROUP.into(), kind: "ClusterRole".into(), name: role.into() },
        subjects: Some(subjects),
    }
}

fn group(name: &str) -> Subject {
    Subject { api_group: Some(RBAC_GROUP.into()), kind: "Group".into(), name: name.into(), namespace: None }
}

fn user(name: &str) -> Subject {
    Subject { api_group: Some(RBAC_GROUP.into()), kind: "User".into(), name: name.into(), namespace: None }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::rbac::v1::RoleBinding;

    use super::*;
    use crate::authz::{Attributes, Decision, UserInfo};
    use crate::rbac::Rbac;

    /// A user in `groups`, and in system:authenticated unless in system:unauthenticated.
    fn who(name: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == UNAUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name: name.into(), groups, ..UserInfo::default() }
    }

    /// A request for `verb` on `group/resource[/subresource]` (`pods/exec`, `apps/deployments`,
    /// `rbac.authorization.k8s.io/roles`), or on a path when it starts with `/`.
    fn request(user: &UserInfo, verb: &str, what: &str, namespace: &str, name: &str) -> Attributes {
        if what.starts_with('/') {
            return Attributes { user: user.clone(), verb: verb.into(), path: what.into(), ..Attributes::default() };
        }
        let (group, rest) = match what.split_once('/') {
            Some((group, rest)) if group.contains('.') || ["apps", "batch"].contains(&group) => (group, rest),
            _ => ("", what),
        };
        let (resource, subresource) = rest.split_once('/').unwrap_or((rest, ""));
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn every_object_is_labelled_annotated_and_bound_to_a_role_that_exists() {
        let roles = cluster_roles();
        let bindings = cluster_role_bindings();
        let names: BTreeSet<&str> = roles.iter().filter_map(|r| r.metadata.name.as_deref()).collect();
        assert_eq!(names.len(), roles.len(), "role names are unique");
        let metadata = roles.iter().map(|r| &r.metadata).chain(bindings.iter().map(|b| &b.metadata));
        for meta in metadata {
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(labels[BOOTSTRAPPING_LABEL], BOOTSTRAPPING_VALUE, "{:?}", meta.name);
            assert_eq!(meta.annotations.as_ref().expect("annotations")[AUTOUPDATE_ANNOTATION], "true");
        }
        for binding in &bindings {
            assert!(names.contains(binding.role_ref.name.as_str()), "{} binds a missing role", binding.role_ref.name);
            assert_eq!(binding.metadata.name.as_ref(), Some(&binding.role_ref.name));
        }
        for role in &roles {
            for rule in role.rules.iter().flatten() {
                let mut sorted_verbs = rule.verbs.clone();
                sorted_verbs.sort();
                assert_eq!(
                    rule.verbs, sorted_verbs,
                    "{:?}: lists are sorted as Kubernetes sorts them",
                    role.metadata.name
                );
            }
        }
    }

    #[test]
    fn aggregated_roles_come_aggregated() {
        let roles = cluster_roles();
        assert!(aggregate(&roles).is_empty(), "nothing left for the aggregation controller to do");
        let rules = |name: &str| {
            roles.iter().find(|r| r.metadata.name.as_deref() == Some(name)).and_then(|r| r.rules.clone()).unwrap()
        };
        assert_eq!(rules("view"), aggregate_to_view());
        let edit: Vec<PolicyRule> = aggregate_to_edit().into_iter().chain(aggregate_to_view()).collect();
        assert_eq!(rules("edit"), edit, "system:aggregate-to-edit sorts before view");
        let admin: Vec<PolicyRule> = edit.into_iter().chain(aggregate_to_admin()).collect();
        assert_eq!(rules("admin"), admin, "edit sorts before system:aggregate-to-admin");
        let cluster_admin = roles.iter().find(|r| r.metadata.name.as_deref() == Some("cluster-admin")).unwrap();
        assert!(cluster_admin.aggregation_rule.is_none());
    }

    #[test]
    fn the_default_policy_grants_what_kubernetes_grants() {
        let namespaced = ["admin", "edit", "view"].map(|role| RoleBinding {
            metadata: ObjectMeta { namespace: Some("dev".into()), name: Some(role.into()), ..ObjectMeta::default() },
            role_ref: RoleRef { api_group: RBAC_GROUP.into(), kind: "ClusterRole".into(), name: role.into() },
            subjects: Some(vec![user(&format!("{role}-user"))]),
        });
        let mut cluster_bindings = cluster_role_bindings();
        cluster_bindings.push(ClusterRoleBinding {
            metadata: ObjectMeta { name: Some("metrics-server:auth-delegator".into()), ..ObjectMeta::default() },
            ..binding("system:auth-delegator", vec![user("metrics-server")])
        });
        let rbac = Rbac::new(vec![], cluster_roles(), namespaced.to_vec(), cluster_bindings);
        let root = who("root", &[MASTERS]);
        let alice = who("alice", &[]);
        let anonymous = who("system:anonymous", &[UNAUTHENTICATED]);
        let admin = who("admin-user", &[]);
        let editor = who("edit-user", &[]);
        let viewer = who("view-user", &[]);
        let joiner = who("system:bootstrap:abcdef", &[BOOTSTRAPPERS]);
        let node = who("system:node:n1", &[NODES]);
        let scheduler = who(SCHEDULER_USER, &[]);
        let kcm = who(CONTROLLER_MANAGER_USER, &[]);
        let monitor = who("prometheus", &[MONITORING]);
        let delegator = who("metrics-server", &[]);
        #[rustfmt::skip]
        let cases: &[(&UserInfo, &str, &str, &str, &str, bool)] = &[
            (&root, "delete", "nodes", "", "n1", true),
            (&root, "escalate", "rbac.authorization.k8s.io/clusterroles", "", "", true),
            (&root, "post", "/anything", "", "", true),
            (&alice, "create", "authorization.k8s.io/selfsubjectaccessreviews", "", "", true),
            (&alice, "create", "authorization.k8s.io/selfsubjectrulesreviews", "", "", true),
            (&alice, "create", "authentication.k8s.io/selfsubjectreviews", "", "", true),
            (&alice, "get", "/apis/apps/v1", "", "", true),
            (&alice, "get", "/openapi/v3", "", "", true),
            (&alice, "get", "/version", "", "", true),
            (&alice, "get", "/metrics", "", "", false),
            (&alice, "get", "/healthz/etcd", "", "", false),
            (&alice, "list", "pods", "dev", "", false),
            (&alice, "list", "namespaces", "", "", false),
            (&anonymous, "get", "/healthz", "", "", true),
            (&anonymous, "get", "/version", "", "", true),
            (&anonymous, "get", "/api", "", "", false),
            (&anonymous, "create", "authorization.k8s.io/selfsubjectaccessreviews", "", "", false),
            (&monitor, "get", "/metrics", "", "", true),
            (&delegator, "create", "authentication.k8s.io/tokenreviews", "", "", true),
            (&delegator, "create", "authorization.k8s.io/subjectaccessreviews", "", "", true),
            (&delegator, "create", "serviceaccounts/token", "dev", "default", false),
            (&alice, "create", "authentication.k8s.io/tokenreviews", "", "", false),
            (&monitor, "get", "/readyz/etcd", "", "", true),
            (&viewer, "get", "pods", "dev", "p", true),
            (&viewer, "get", "pods/log", "dev", "p", true),
            (&viewer, "list", "apps/deployments", "dev", "", true),
            (&viewer, "get", "namespaces", "dev", "dev", true),
            (&viewer, "get", "secrets", "dev", "s", false),
            (&viewer, "create", "pods/exec", "dev", "p", false),
            (&viewer, "update", "pods", "dev", "p", false),
            (&viewer, "get", "pods", "prod", "p", false),
            (&viewer, "get", "rbac.authorization.k8s.io/roles", "dev", "", false),
            (&editor, "get", "secrets", "dev", "s", true),
            (&editor, "create", "pods/exec", "dev", "p", true),
            (&editor, "create", "pods/portforward", "dev", "p", true),
            (&editor, "patch", "apps/deployments", "dev", "d", true),
            (&editor, "create", "serviceaccounts/token", "dev", "default", true),
            (&editor, "list", "apps/deployments", "dev", "", true),
            (&editor, "create", "rbac.authorization.k8s.io/roles", "dev", "", false),
            (&editor, "update", "resourcequotas", "dev", "q", false),
            (&editor, "update", "pods/status", "dev", "p", false),
            (&admin, "create", "rbac.authorization.k8s.io/rolebindings", "dev", "", true),
            (&admin, "create", "authorization.k8s.io/localsubjectaccessreviews", "dev", "", true),
            (&admin, "get", "secrets", "dev", "s", true),
            (&admin, "update", "resourcequotas", "dev", "q", false),
            (&admin, "create", "rbac.authorization.k8s.io/rolebindings", "prod", "", false),
            (&joiner, "create", "certificates.k8s.io/certificatesigningrequests", "", "", true),
            (&joiner, "watch", "certificates.k8s.io/certificatesigningrequests", "", "", true),
            (&joiner, "create", "certificates.k8s.io/certificatesigningrequests/nodeclient", "", "", true),
            (&joiner, "create", "certificates.k8s.io/certificatesigningrequests/selfnodeclient", "", "", false),
            (&joiner, "list", "nodes", "", "", false),
            (&node, "create", "certificates.k8s.io/certificatesigningrequests/selfnodeclient", "", "", true),
            (&node, "create", "certificates.k8s.io/certificatesigningrequests/nodeclient", "", "", false),
            (&scheduler, "create", "pods/binding", "dev", "p", true),
            (&scheduler, "update", "coordination.k8s.io/leases", "kube-system", "kube-scheduler", true),
            (&scheduler, "update", "coordination.k8s.io/leases", "kube-system", "other", false),
            (&scheduler, "create", "pods", "dev", "", false),
            (&kcm, "create", "pods/binding", "dev", "p", true),
            (&kcm, "create", "pods", "dev", "", true),
            (&kcm, "create", "apps/replicasets", "dev", "", true),
            (&kcm, "patch", "apps/deployments", "dev", "d", true),
            (&kcm, "update", "apps/deployments/status", "dev", "d", true),
            (&kcm, "patch", "apps/daemonsets/status", "dev", "d", true),
            (&kcm, "create", "apps/controllerrevisions", "dev", "", true),
            (&kcm, "patch", "batch/jobs/status", "dev", "j", true),
            (&kcm, "patch", "nodes", "", "n1", true),
            (&kcm, "patch", "nodes/status", "", "n1", true),
            (&kcm, "delete", "pods", "dev", "p", true),
            (&kcm, "list", "coordination.k8s.io/leases", "kube-node-lease", "", true),
            (&kcm, "create", "discovery.k8s.io/endpointslices", "dev", "", true),
            (&kcm, "patch", "discovery.k8s.io/endpointslices", "dev", "s", true),
            (&kcm, "create", "endpoints", "dev", "", true),
            (&kcm, "patch", "services/status", "dev", "lb", true),
            (&kcm, "create", "events", "dev", "", true),
            (&kcm, "create", "events.k8s.io/events", "dev", "", true),
            (&kcm, "create", "coordination.k8s.io/leases", "kube-system", "", true),
            (&kcm, "update", "coordination.k8s.io/leases", "kube-system", CONTROLLER_MANAGER_LEASE, true),
            (&kcm, "get", "coordination.k8s.io/leases", "kube-system", CONTROLLER_MANAGER_LEASE, true),
            (&kcm, "escalate", "rbac.authorization.k8s.io/clusterroles", "", "admin", true),
            (&kcm, "update", "rbac.authorization.k8s.io/clusterroles", "", "admin", true),
            (&kcm, "approve", "certificates.k8s.io/signers", "", "kubernetes.io/kube-apiserver-client-kubelet", true),
            (&kcm, "approve", "certificates.k8s.io/signers", "", "kubernetes.io/kubelet-serving", true),
            (&kcm, "approve", "certificates.k8s.io/signers", "", "kubernetes.io/kube-apiserver-client", false),
            (&kcm, "sign", "certificates.k8s.io/signers", "", "kubernetes.io/kube-apiserver-client-kubelet", true),
            (&kcm, "update", "certificates.k8s.io/certificatesigningrequests/approval", "", "csr", true),
            (&kcm, "update", "certificates.k8s.io/certificatesigningrequests/status", "", "csr", true),
            (&kcm, "create", "serviceaccounts/token", "dev", "default", true),
            (&kcm, "create", "rbac.authorization.k8s.io/clusterrolebindings", "", "", false),
            (&kcm, "bind", "rbac.authorization.k8s.io/clusterroles", "", "cluster-admin", false),
            (&kcm, "impersonate", "users", "", "root", false),
            (&kcm, "create", "pods/exec", "dev", "p", false),
            (&kcm, "get", "/metrics", "", "", false),
            (&kcm, "watch", "secrets", "kube-system", "", true),
            (&kcm, "delete", "secrets", "kube-system", "bootstrap-token-abcdef", true),
        ];
        for &(user, verb, what, namespace, name, allowed) in cases {
            let want = if allowed { Decision::Allow } else { Decision::NoOpinion };
            let attributes = request(user, verb, what, namespace, name);
            assert_eq!(rbac.authorize(&attributes), want, "{} {verb} {what} {namespace}/{name}", user.name);
        }
    }

    #[test]
    fn the_controller_manager_role_holds_its_controllers_rules_once_each() {
        let rules = kube_controller_manager();
        for (i, rule) in rules.iter().enumerate() {
            assert!(!rules[..i].iter().any(|r| same_rule(r, rule)), "{rule:?} twice");
        }
        let gc = rule(&["get", "list", "watch", "patch", "update", "delete"], &["*"], &["*"]);
        assert!(rules.contains(&gc), "the garbage collector may touch anything");
        assert!(covers(&rules, &scheduling()).is_ok());
    }

    fn stored(role: &ClusterRole) -> ClusterRole {
        let mut role = role.clone();
        role.metadata.resource_version = Some("7".into());
        role
    }

    #[test]
    fn reconciling_roles_adds_what_is_missing_and_keeps_what_operators_added() {
        let roles = cluster_roles();
        let wanted = roles.iter().find(|r| r.metadata.name.as_deref() == Some("system:basic-user")).unwrap();
        assert_eq!(reconcile(&stored(wanted), wanted), None, "an up-to-date role stays");

        let mut old = stored(wanted);
        let extra = rule(&["get"], &[""], &["configmaps"]);
        old.rules =
            Some(vec![rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews"]), extra.clone()]);
        old.metadata.labels = Some(BTreeMap::from([
            (BOOTSTRAPPING_LABEL.to_string(), "operator".to_string()),
            ("team".to_string(), "infra".to_string()),
        ]));
        old.metadata.annotations = None;
        let new = reconcile(&old, wanted).expect("an old role is updated");
        assert_eq!(new.metadata.resource_version.as_deref(), Some("7"), "an update of the stored object");
        assert_eq!(
            new.rules.unwrap(),
            [
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews"]),
                extra,
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
            "the missing atomic rules are appended"
        );
        let labels = new.metadata.labels.unwrap();
        assert_eq!((labels[BOOTSTRAPPING_LABEL].as_str(), labels["team"].as_str()), ("operator", "infra"));
        assert_eq!(new.metadata.annotations.unwrap()[AUTOUPDATE_ANNOTATION], "true");

        let mut protected = old.clone();
        protected.metadata.annotations =
            Some(BTreeMap::from([(AUTOUPDATE_ANNOTATION.to_string(), "false".to_string())]));
        assert_eq!(reconcile(&protected, wanted), None, "autoupdate=false is the operator's");
    }

    #[test]
    fn reconciling_aggregated_roles_adds_selectors_and_leaves_rules_to_the_controller() {
        let roles = cluster_roles();
        let wanted = roles.iter().find(|r| r.metadata.name.as_deref() == Some("edit")).unwrap();
        let mut old = stored(wanted);
        old.rules = Some(vec![rule(&["get"], &[""], &["pods"])]);
        assert_eq!(reconcile(&old, wanted), None, "rules of an aggregated role are the aggregation controller's");

        let operators = LabelSelector {
            match_labels: Some(BTreeMap::from([("example.com/aggregate-to-edit".to_string(), "true".to_string())])),
            match_expressions: None,
        };
        old.aggregation_rule = Some(AggregationRule { cluster_role_selectors: Some(vec![operators.clone()]) });
        let new = reconcile(&old, wanted).expect("the missing selector is added");
        let selectors = new.aggregation_rule.unwrap().cluster_role_selectors.unwrap();
        assert_eq!(selectors[0], operators);
        assert_eq!(selectors[1].match_labels.as_ref().unwrap()[AGGREGATE_TO_EDIT], "true");
        assert_eq!(new.rules, old.rules);
    }

    #[test]
    fn reconciling_bindings_adds_subjects_and_recreates_on_a_new_role() {
        let bindings = cluster_role_bindings();
        let wanted = bindings.iter().find(|b| b.role_ref.name == "system:public-info-viewer").unwrap();
        let mut old = wanted.clone();
        old.metadata.resource_version = Some("3".into());
        assert_eq!(reconcile_binding(&old, wanted), None);

        // A Group without its API group is defaulted into RBAC's: the same subject.
        let mut authenticated = group(AUTHENTICATED);
        authenticated.api_group = None;
        let operators = user("ops");
        old.subjects = Some(vec![authenticated.clone(), operators.clone()]);
        let new = reconcile_binding(&old, wanted).expect("the missing subject is added");
        assert_eq!(new.subjects.unwrap(), [authenticated, operators, group(UNAUTHENTICATED)]);
        assert_eq!(new.metadata.resource_version.as_deref(), Some("3"));

        old.role_ref.name = "system:discovery".into();
        assert_eq!(reconcile_binding(&old, wanted).as_ref(), Some(wanted), "a roleRef cannot change in place");

        old.metadata.annotations = Some(BTreeMap::from([(AUTOUPDATE_ANNOTATION.to_string(), "false".to_string())]));
        assert_eq!(reconcile_binding(&old, wanted), None);
    }
}
