//! Kubernetes RBAC without IO: [`Rbac`], an indexed snapshot of Roles, ClusterRoles and their bindings that
//! authorizes requests as kube-apiserver's RBAC authorizer does and lists a user's rules for
//! SelfSubjectRulesReview; [`aggregate`], what the clusterrole-aggregation controller writes into aggregated
//! ClusterRoles; [`covers`] and [`escalation_message`], the check that nobody grants through a role or a
//! binding more than they hold; and in [`bootstrap`] Kubernetes' default policy as data, with its
//! reconciliation on upgrade.
//!
//! Sources, read for their behaviour: `pkg/registry/rbac/validation/rule.go` (which bindings apply to whom,
//! how a roleRef resolves, the escalation message), `plugin/pkg/auth/authorizer/rbac/rbac.go`,
//! `component-helpers/auth/rbac/validation/policy_comparator.go` (`Covers`), `pkg/controller/
//! clusterroleaggregation`, `plugin/pkg/auth/authorizer/rbac/bootstrappolicy` and
//! `pkg/registry/rbac/reconciliation`.
//!
//! RBAC only ever allows: a request no rule allows gets no opinion, and the next authorizer (or the final
//! denial) decides.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};

use crate::authz::{Attributes, Decision, UserInfo, rule_allows};

mod aggregation;
pub mod bootstrap;
mod escalation;

pub use aggregation::aggregate;
pub use escalation::{covers, escalation_message};

/// The prefix of a ServiceAccount's user name, `system:serviceaccount:NAMESPACE:NAME`.
const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// An immutable snapshot of the cluster's RBAC objects, indexed so that a request looks up only the
/// bindings naming its user or one of its groups, in its own namespace and cluster-wide: the cost of a
/// decision does not grow with the number of bindings elsewhere. Build a new one when an object changes.
#[derive(Debug, Default)]
pub struct Rbac {
    /// Role rules by namespace, then name.
    roles: HashMap<String, HashMap<String, Vec<PolicyRule>>>,
    /// ClusterRole rules by name.
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// The ClusterRoleBindings, which apply in every namespace and to cluster-scoped requests.
    cluster: Scope,
    /// The RoleBindings by namespace, which apply only to requests in their namespace.
    namespaces: HashMap<String, Scope>,
}

impl Rbac {
    /// Indexes the cluster's RBAC objects, taking their rules without copying them. Bindings whose roleRef
    /// is of no kind RBAC knows, or that bind a Role cluster-wide, grant nothing.
    pub fn new(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Self {
        let mut rbac = Rbac::default();
        for role in roles {
            let namespace = role.metadata.namespace.unwrap_or_default();
            let name = role.metadata.name.unwrap_or_default();
            rbac.roles.entry(namespace).or_default().insert(name, role.rules.unwrap_or_default());
        }
        for role in cluster_roles {
            rbac.cluster_roles.insert(role.metadata.name.unwrap_or_default(), role.rules.unwrap_or_default());
        }
        for binding in cluster_role_bindings {
            // A ClusterRoleBinding can only grant a ClusterRole: a Role has no namespace to be found in.
            if binding.role_ref.kind == "ClusterRole" {
                let role = RoleRef::ClusterRole(binding.role_ref.name);
                rbac.cluster.add(role, binding.subjects.as_deref().unwrap_or_default(), "");
            }
        }
        for binding in role_bindings {
            let role = match binding.role_ref.kind.as_str() {
                "Role" => RoleRef::Role(binding.role_ref.name),
                "ClusterRole" => RoleRef::ClusterRole(binding.role_ref.name),
                _ => continue,
            };
            let namespace = binding.metadata.namespace.unwrap_or_default();
            let subjects = binding.subjects.as_deref().unwrap_or_default();
            rbac.namespaces.entry(namespace.clone()).or_default().add(role, subjects, &namespace);
        }
        rbac.cluster.finish();
        rbac.namespaces.values_mut().for_each(Scope::finish);
        rbac
    }

    /// Allows the request when a rule of a ClusterRoleBinding's role, or of the role of a RoleBinding in the
    /// request's namespace, allows it; RBAC never denies.
    pub fn authorize(&self, attributes: &Attributes) -> Decision {
        let user = &attributes.user;
        let allowed = |scope: &Scope, namespace: &str| {
            scope
                .bound_to(user)
                .any(|role| self.rules(namespace, &scope.roles[role]).iter().any(|r| rule_allows(r, attributes)))
        };
        let namespace = attributes.namespace.as_str();
        if allowed(&self.cluster, "")
            || (!namespace.is_empty() && self.namespaces.get(namespace).is_some_and(|scope| allowed(scope, namespace)))
        {
            Decision::Allow
        } else {
            Decision::NoOpinion
        }
    }

    /// Every rule that applies to `user` in `namespace`: those of the roles ClusterRoleBindings grant, then
    /// those of the roles the namespace's RoleBindings grant (none for the empty namespace), each role's once
    /// per scope, in the order bindings first name the roles. What SelfSubjectRulesReview lists and what the
    /// escalation check compares with.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        let mut collect = |scope: &Scope, namespace: &str| {
            // A role bound to both the user and one of its groups applies once.
            let mut roles: Vec<usize> = scope.bound_to(user).collect();
            roles.sort_unstable();
            roles.dedup();
            for role in roles {
                rules.extend_from_slice(self.rules(namespace, &scope.roles[role]));
            }
        };
        collect(&self.cluster, "");
        if let Some(scope) = self.namespaces.get(namespace).filter(|_| !namespace.is_empty()) {
            collect(scope, namespace);
        }
        rules
    }

    /// The rules a binding in `namespace` grants; a role that does not exist grants nothing.
    fn rules(&self, namespace: &str, role: &RoleRef) -> &[PolicyRule] {
        let rules = match role {
            RoleRef::Role(name) => self.roles.get(namespace).and_then(|roles| roles.get(name)),
            RoleRef::ClusterRole(name) => self.cluster_roles.get(name),
        };
        rules.map_or(&[], Vec::as_slice)
    }
}

/// What a binding refers to. Kept by name and resolved per request, so a role created after its binding
/// (or changed) counts as soon as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RoleRef {
    Role(String),
    ClusterRole(String),
}

/// The bindings of one scope (all ClusterRoleBindings, or one namespace's RoleBindings), indexed by who they
/// name. Many bindings usually share few roles (every team's `edit`), so the index keeps, per subject, each
/// role once, and a request evaluates each role's rules once however many bindings grant it.
#[derive(Debug, Default)]
struct Scope {
    /// The distinct roles the bindings refer to, in the order bindings first name them.
    roles: Vec<RoleRef>,
    /// Positions in `roles`, to give a role one position while indexing.
    positions: HashMap<RoleRef, usize>,
    /// The roles bound to each user name (ServiceAccounts by their user names), as positions in `roles`.
    users: HashMap<String, Vec<usize>>,
    /// The roles bound to each group, as positions in `roles`.
    groups: HashMap<String, Vec<usize>>,
}

impl Scope {
    /// Indexes one binding in `namespace` (empty for ClusterRoleBindings) by its subjects.
    fn add(&mut self, role: RoleRef, subjects: &[Subject], namespace: &str) {
        let position = *self.positions.entry(role).or_insert_with_key(|role| {
            self.roles.push(role.clone());
            self.roles.len() - 1
        });
        for subject in subjects {
            let (index, key) = match subject.kind.as_str() {
                "User" => (&mut self.users, subject.name.clone()),
                "Group" => (&mut self.groups, subject.name.clone()),
                "ServiceAccount" => {
                    // In a RoleBinding a ServiceAccount without a namespace is one of the binding's own; in a
                    // ClusterRoleBinding it names nobody.
                    let sa_namespace = subject.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(namespace);
                    if sa_namespace.is_empty() {
                        continue;
                    }
                    (&mut self.users, format!("{SERVICE_ACCOUNT_USER_PREFIX}{sa_namespace}:{}", subject.name))
                }
                _ => continue,
            };
            index.entry(key).or_default().push(position);
        }
    }

    /// Leaves each role once per subject, once every binding is indexed.
    fn finish(&mut self) {
        for roles in self.users.values_mut().chain(self.groups.values_mut()) {
            roles.sort_unstable();
            roles.dedup();
        }
    }

    /// The positions in `roles` of the roles bound to the user or one of its groups; a role bound to both
    /// comes more than once.
    fn bound_to<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = usize> + 'a {
        let by_name = self.users.get(&user.name).into_iter().flatten();
        let by_group = user.groups.iter().filter_map(|group| self.groups.get(group)).flatten();
        by_name.chain(by_group).copied()
    }
}

/// Whether two rules are the same, a missing list being the same as an empty one (Kubernetes compares rules
/// with `equality.Semantic`, to which nil and empty slices are equal).
fn same_rule(a: &PolicyRule, b: &PolicyRule) -> bool {
    a.verbs == b.verbs
        && list(&a.api_groups) == list(&b.api_groups)
        && list(&a.resources) == list(&b.resources)
        && list(&a.resource_names) == list(&b.resource_names)
        && list(&a.non_resource_urls) == list(&b.non_resource_urls)
}

/// A rule's optional list, missing being empty.
fn list(items: &Option<Vec<String>>) -> &[String] {
    items.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::RoleRef as K8sRoleRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    pub(super) fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    pub(super) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            ..PolicyRule::default()
        }
    }

    fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: namespace.map(str::to_string), name: Some(name.into()), ..ObjectMeta::default() }
    }

    fn role(namespace: &str, name: &str, rules: Vec<PolicyRule>) -> Role {
        Role { metadata: meta(Some(namespace), name), rules: Some(rules) }
    }

    fn cluster_role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
        ClusterRole { metadata: meta(None, name), rules: Some(rules), ..ClusterRole::default() }
    }

    fn role_ref(kind: &str, name: &str) -> K8sRoleRef {
        K8sRoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: name.into() }
    }

    fn role_binding(namespace: &str, name: &str, role: (&str, &str), subjects: Vec<Subject>) -> RoleBinding {
        RoleBinding {
            metadata: meta(Some(namespace), name),
            role_ref: role_ref(role.0, role.1),
            subjects: Some(subjects),
        }
    }

    fn cluster_binding(name: &str, role: (&str, &str), subjects: Vec<Subject>) -> ClusterRoleBinding {
        ClusterRoleBinding { metadata: meta(None, name), role_ref: role_ref(role.0, role.1), subjects: Some(subjects) }
    }

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject { kind: kind.into(), name: name.into(), namespace: namespace.map(str::to_string), api_group: None }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { name: name.into(), groups: strings(groups), ..UserInfo::default() }
    }

    fn request(user: &UserInfo, verb: &str, resource: &str, namespace: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            ..Attributes::default()
        }
    }

    fn fixture() -> Rbac {
        let read_pods = rule(&["get", "list"], &[""], &["pods"]);
        let roles = vec![
            role("dev", "pod-reader", vec![read_pods.clone()]),
            role("prod", "pod-reader", vec![rule(&["get"], &[""], &["pods"])]),
        ];
        let cluster_roles = vec![
            cluster_role("secret-reader", vec![rule(&["get"], &[""], &["secrets"])]),
            cluster_role("node-reader", vec![rule(&["get"], &[""], &["nodes"])]),
            cluster_role("deployer", vec![rule(&["create"], &["apps"], &["deployments"])]),
        ];
        let role_bindings = vec![
            role_binding("dev", "alice-pods", ("Role", "pod-reader"), vec![subject("User", "alice", None)]),
            // A RoleBinding of a ClusterRole grants it in the binding's namespace only.
            role_binding("dev", "ops-secrets", ("ClusterRole", "secret-reader"), vec![subject("Group", "ops", None)]),
            // A ServiceAccount without a namespace is the binding's namespace's.
            role_binding("dev", "ci", ("ClusterRole", "deployer"), vec![subject("ServiceAccount", "ci", None)]),
            role_binding(
                "dev",
                "robot",
                ("Role", "pod-reader"),
                vec![subject("ServiceAccount", "robot", Some("tools")), subject("Kind", "alice", None)],
            ),
            role_binding("dev", "missing", ("Role", "no-such-role"), vec![subject("User", "bob", None)]),
            role_binding(
                "prod",
                "both",
                ("Role", "pod-reader"),
                vec![subject("User", "carol", None), subject("Group", "ops", None)],
            ),
        ];
        let cluster_role_bindings = vec![
            cluster_binding("nodes", ("ClusterRole", "node-reader"), vec![subject("Group", "ops", None)]),
            // Names nobody: a ServiceAccount needs a namespace here, and a Role cannot be bound cluster-wide.
            cluster_binding("nobody", ("ClusterRole", "deployer"), vec![subject("ServiceAccount", "ci", None)]),
            cluster_binding("role", ("Role", "pod-reader"), vec![subject("User", "dave", None)]),
        ];
        Rbac::new(roles, cluster_roles, role_bindings, cluster_role_bindings)
    }

    #[test]
    fn bindings_apply_to_their_subjects_in_their_scope() {
        let rbac = fixture();
        let alice = user("alice", &["system:authenticated"]);
        let ops = user("olga", &["ops"]);
        let ci = user("system:serviceaccount:dev:ci", &["system:serviceaccounts", "system:serviceaccounts:dev"]);
        let robot = user("system:serviceaccount:tools:robot", &[]);
        let cases = [
            (&alice, "get", "pods", "dev", true),
            (&alice, "list", "pods", "dev", true),
            (&alice, "delete", "pods", "dev", false),
            (&alice, "get", "pods", "prod", false),
            (&alice, "get", "pods", "", false),
            (&alice, "get", "pods/log", "dev", false),
            (&ops, "get", "secrets", "dev", true),
            (&ops, "get", "secrets", "prod", false),
            (&ops, "get", "nodes", "", true),
            (&ops, "get", "nodes", "prod", true),
            (&ops, "get", "pods", "prod", true),
            (&ci, "create", "deployments", "dev", true),
            (&ci, "create", "deployments", "prod", false),
            (&robot, "get", "pods", "dev", true),
            (&user("system:serviceaccount:dev:robot", &[]), "get", "pods", "dev", false),
            (&user("bob", &[]), "get", "pods", "dev", false),
            (&user("dave", &[]), "get", "pods", "dev", false),
            (&user("ci", &[]), "create", "deployments", "dev", false),
        ];
        for (who, verb, resource, namespace, allowed) in cases {
            let mut attributes = request(who, verb, resource, namespace);
            if resource == "deployments" {
                attributes.api_group = "apps".into();
            }
            let want = if allowed { Decision::Allow } else { Decision::NoOpinion };
            assert_eq!(rbac.authorize(&attributes), want, "{} {verb} {resource} in {namespace:?}", who.name);
        }
    }

    #[test]
    fn rules_for_lists_cluster_then_namespace_rules_once_per_binding() {
        let rbac = fixture();
        let carol_in_ops = user("carol", &["ops"]);
        assert_eq!(
            rbac.rules_for(&carol_in_ops, "prod"),
            [rule(&["get"], &[""], &["nodes"]), rule(&["get"], &[""], &["pods"])],
            "the role bound to carol and to ops counts once"
        );
        assert_eq!(rbac.rules_for(&carol_in_ops, ""), [rule(&["get"], &[""], &["nodes"])]);
        assert_eq!(rbac.rules_for(&user("alice", &[]), "dev"), [rule(&["get", "list"], &[""], &["pods"])]);
        assert!(rbac.rules_for(&user("bob", &[]), "dev").is_empty(), "a missing role grants nothing");
        assert!(rbac.rules_for(&user("alice", &[]), "elsewhere").is_empty());
    }

    #[test]
    fn non_resource_rules_come_from_cluster_role_bindings() {
        let healthz = PolicyRule {
            verbs: strings(&["get"]),
            non_resource_urls: Some(strings(&["/healthz"])),
            ..PolicyRule::default()
        };
        let rbac = Rbac::new(
            vec![],
            vec![cluster_role("health", vec![healthz])],
            vec![],
            vec![cluster_binding(
                "health",
                ("ClusterRole", "health"),
                vec![subject("Group", "system:authenticated", None)],
            )],
        );
        let path = |who: &UserInfo, path: &str| Attributes {
            user: who.clone(),
            verb: "get".into(),
            path: path.into(),
            ..Attributes::default()
        };
        assert_eq!(rbac.authorize(&path(&user("a", &["system:authenticated"]), "/healthz")), Decision::Allow);
        assert_eq!(rbac.authorize(&path(&user("a", &["system:authenticated"]), "/metrics")), Decision::NoOpinion);
        assert_eq!(rbac.authorize(&path(&user("a", &[]), "/healthz")), Decision::NoOpinion);
    }

    /// Kubernetes' own way, every binding visited per request (`VisitRulesFor`), to check the index against.
    fn scan(roles: &[Role], bindings: &[RoleBinding], attributes: &Attributes) -> bool {
        let user = &attributes.user;
        bindings.iter().filter(|b| b.metadata.namespace.as_deref() == Some(attributes.namespace.as_str())).any(|b| {
            let namespace = attributes.namespace.as_str();
            let applies = b.subjects.iter().flatten().any(|s| match s.kind.as_str() {
                "User" => s.name == user.name,
                "Group" => user.in_group(&s.name),
                "ServiceAccount" => {
                    let ns = s.namespace.as_deref().unwrap_or(namespace);
                    user.name == format!("system:serviceaccount:{ns}:{}", s.name)
                }
                _ => false,
            });
            let role = roles.iter().find(|r| {
                r.metadata.namespace.as_deref() == Some(namespace) && r.metadata.name.as_ref() == Some(&b.role_ref.name)
            });
            applies && role.is_some_and(|r| r.rules.iter().flatten().any(|rule| rule_allows(rule, attributes)))
        })
    }

    #[test]
    fn a_hundred_roles_and_a_thousand_bindings_decide_as_a_full_scan_does() {
        // Ten namespaces of ten roles each; role m of namespace n reads `things-m` and writes `things-(m+1)`.
        let roles: Vec<Role> = (0..100)
            .map(|r| {
                let (n, m) = (r % 10, r / 10);
                let rules = vec![
                    rule(&["get", "list"], &["example.com"], &[&format!("things-{m}")]),
                    rule(&["update"], &["example.com"], &[&format!("things-{}", m + 1)]),
                ];
                role(&format!("ns-{n}"), &format!("role-{m}"), rules)
            })
            .collect();
        // Binding b, in namespace b % 10, binds user-b, group team-(b % 7) and ServiceAccount sa-(b % 13) to a
        // role of its namespace; one in eleven names a role that does not exist.
        let bindings: Vec<RoleBinding> = (0..1000)
            .map(|b| {
                let role_name = if b % 11 == 0 { "gone".to_string() } else { format!("role-{}", (b / 10) % 10) };
                let subjects = vec![
                    subject("User", &format!("user-{b}"), None),
                    subject("Group", &format!("team-{}", b % 7), None),
                    subject("ServiceAccount", &format!("sa-{}", b % 13), None),
                ];
                role_binding(&format!("ns-{}", b % 10), &format!("binding-{b}"), ("Role", role_name.as_str()), subjects)
            })
            .collect();
        let rbac = Rbac::new(roles.clone(), vec![], bindings.clone(), vec![]);
        let users: Vec<UserInfo> = (0..1000)
            .step_by(97)
            .map(|b| user(&format!("user-{b}"), &[]))
            .chain((0..7).map(|t| user("someone", &[&format!("team-{t}")])))
            .chain((0..13).map(|s| user(&format!("system:serviceaccount:ns-{}:sa-{s}", s % 10), &[])))
            .collect();
        let (mut allowed, mut checked) = (0, 0);
        for who in &users {
            for n in 0..10 {
                for m in 0..11 {
                    for verb in ["get", "update"] {
                        let mut attributes = request(who, verb, &format!("things-{m}"), &format!("ns-{n}"));
                        attributes.api_group = "example.com".into();
                        let want = scan(&roles, &bindings, &attributes);
                        let got = rbac.authorize(&attributes) == Decision::Allow;
                        assert_eq!(got, want, "{} {verb} things-{m} in ns-{n}", who.name);
                        allowed += usize::from(got);
                        checked += 1;
                    }
                }
            }
        }
        assert!(allowed > 100 && allowed < checked / 2, "the cases mix allowed and not: {allowed} of {checked}");
    }
}
