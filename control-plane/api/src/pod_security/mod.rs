//! Pod Security admission, as Kubernetes' PodSecurity plugin (`k8s.io/pod-security-admission`) decides it:
//! the levels and versions of the Pod Security Standards, a namespace's policy from its
//! `pod-security.kubernetes.io/{enforce,audit,warn}[-version]` labels, every check of the baseline and
//! restricted levels with PSA's wording, and the decisions for pods, workloads with pod templates and
//! namespaces. The API server reads the namespace and its pods and calls in here; nothing here does IO.
//!
//! Sources, read for their behaviour: `api/helpers.go` (labels, levels, versions), `policy/check_*.go` (one
//! function here per check and version), `policy/registry.go` (which checks a level and version run, in what
//! order) and `admission/admission.go` (the decisions and their messages).
//!
//! Skiff's one departure: a cluster-wide default enforce level (`skiff server --pod-security-default`,
//! baseline unless told otherwise) that acts as if every namespace without an enforce label carried one with
//! that level, so, as PSA does for such a label, warn follows it unless the namespace sets warn itself.
//! `kube-system` is exempt, as PSA's configuration exempts namespaces. The audit mode is parsed and
//! validated but not recorded: Skiff has no audit log to annotate.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::validation::Cause;

mod checks;

pub use checks::{Verdict, Violation, evaluate};

pub const ENFORCE_LEVEL_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
pub const AUDIT_LEVEL_LABEL: &str = "pod-security.kubernetes.io/audit";
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
pub const WARN_LEVEL_LABEL: &str = "pod-security.kubernetes.io/warn";
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// The newest policy version the checks implement: the Kubernetes minor Skiff's API follows. `latest` and
/// any newer `v1.N` evaluate as this one, as PSA's check registry clamps a version to its newest.
pub const NEWEST_MINOR: u32 = 33;

/// How many existing pods labelling a namespace checks at most (PSA's `defaultNamespaceMaxPodsToCheck`).
pub const MAX_PODS_TO_CHECK: usize = 3000;

/// Namespaces whose pods are never checked, as a PSA configuration's `exemptions.namespaces`: the system's
/// own, whose workloads may need the host.
pub const EXEMPT_NAMESPACES: &[&str] = &["kube-system"];

/// A Pod Security Standards level, ordered from the most to the least permissive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

/// A level or version label's value that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("must be one of privileged, baseline, restricted")]
    Level,
    #[error("must be \"latest\" or \"v1.x\"")]
    Version,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl FromStr for Level {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(ParseError::Level),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy version: `latest` or `v1.N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Latest,
    Minor(u32),
}

impl Version {
    /// The version whose checks run: `latest` and versions newer than [`NEWEST_MINOR`] run the newest.
    pub fn minor(self) -> u32 {
        match self {
            Version::Latest => NEWEST_MINOR,
            Version::Minor(minor) => minor.min(NEWEST_MINOR),
        }
    }
}

impl FromStr for Version {
    type Err = ParseError;

    /// `latest`, or `v1.` and a minor without leading zeros (PSA's `^v1\.([0-9]|[1-9][0-9]*)$`).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let minor = s.strip_prefix("v1.").ok_or(ParseError::Version)?;
        let canonical = !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor.len() == 1 || !minor.starts_with('0'));
        match minor.parse() {
            Ok(minor) if canonical => Ok(Version::Minor(minor)),
            _ => Err(ParseError::Version),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(minor) => write!(f, "v1.{minor}"),
        }
    }
}

/// A level at a version, shown as `baseline:latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const PRIVILEGED: LevelVersion = LevelVersion { level: Level::Privileged, version: Version::Latest };

    /// Equal, or both privileged (where the version means nothing).
    fn equivalent(&self, other: &LevelVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged) || self == other
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// A namespace's policy: what is refused (enforce), recorded (audit) and warned about (warn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Policy {
    pub const PRIVILEGED: Policy =
        Policy { enforce: LevelVersion::PRIVILEGED, audit: LevelVersion::PRIVILEGED, warn: LevelVersion::PRIVILEGED };

    fn fully_privileged(&self) -> bool {
        [self.enforce, self.audit, self.warn].iter().all(|lv| lv.level == Level::Privileged)
    }

    fn equivalent(&self, other: &Policy) -> bool {
        self.enforce.equivalent(&other.enforce)
            && self.audit.equivalent(&other.audit)
            && self.warn.equivalent(&other.warn)
    }
}

/// The policy `labels` set over `defaults` (PSA's `PolicyToEvaluate`), and a cause per invalid label. An
/// invalid enforce level enforces restricted (fail closed), an invalid audit or warn level is privileged
/// (fail open), an invalid version is `latest`. Without a warn label, warn is raised to an enforce level the
/// labels set, at its version unless a warn version is set.
pub fn policy_for_labels(labels: &Map<String, Value>, defaults: Policy) -> (Policy, Vec<Cause>) {
    let mut policy = defaults;
    let mut causes = Vec::new();
    let has_enforce_level = match parse_label::<Level>(labels, ENFORCE_LEVEL_LABEL, &mut causes) {
        Some(level) => {
            policy.enforce.level = level.unwrap_or(Level::Restricted);
            level.is_ok()
        }
        None => false,
    };
    if let Some(version) = parse_label(labels, ENFORCE_VERSION_LABEL, &mut causes) {
        policy.enforce.version = version.unwrap_or(Version::Latest);
    }
    if let Some(level) = parse_label(labels, AUDIT_LEVEL_LABEL, &mut causes) {
        policy.audit.level = level.unwrap_or(Level::Privileged);
    }
    if let Some(version) = parse_label(labels, AUDIT_VERSION_LABEL, &mut causes) {
        policy.audit.version = version.unwrap_or(Version::Latest);
    }
    if let Some(level) = parse_label(labels, WARN_LEVEL_LABEL, &mut causes) {
        policy.warn.level = level.unwrap_or(Level::Privileged);
    }
    if let Some(version) = parse_label(labels, WARN_VERSION_LABEL, &mut causes) {
        policy.warn.version = version.unwrap_or(Version::Latest);
    }
    if !labels.contains_key(WARN_LEVEL_LABEL) && has_enforce_level && policy.enforce.level > policy.warn.level {
        policy.warn.level = policy.enforce.level;
        if !labels.contains_key(WARN_VERSION_LABEL) {
            policy.warn.version = policy.enforce.version;
        }
    }
    (policy, causes)
}

/// Label `key` parsed: None without the label, `Err(())` with a cause pushed when its value is invalid.
fn parse_label<T: FromStr<Err = ParseError>>(
    labels: &Map<String, Value>,
    key: &str,
    causes: &mut Vec<Cause>,
) -> Option<Result<T, ()>> {
    let value = labels.get(key)?.as_str().unwrap_or_default();
    Some(value.parse().map_err(|error| {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {error}", go_quote(value)),
            field: format!("metadata.labels[{key}]"),
        });
    }))
}

/// The pod template of a workload resource PSA checks for warn and audit (its `defaultPodSpecResources`): the
/// template's metadata and spec, or None for other resources and workloads without a template.
pub fn pod_template<'a>(group: &str, plural: &str, object: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let template = match (group, plural) {
        ("", "podtemplates") => &object["template"],
        ("", "replicationcontrollers")
        | ("apps", "replicasets" | "deployments" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => &object["spec"]["template"],
        ("batch", "cronjobs") => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    (!template.is_null()).then(|| (&template["metadata"], &template["spec"]))
}

/// Whether a pod update may change what the checks see: a container added or removed, or an image changed
/// (PSA's `isSignificantPodUpdate`; the rest of a pod's spec cannot change once it exists).
pub fn significant_pod_update(pod: &Value, old: &Value) -> bool {
    let list = |pod: &Value, key: &str| pod["spec"][key].as_array().cloned().unwrap_or_default();
    for key in ["containers", "initContainers"] {
        let (new, old) = (list(pod, key), list(old, key));
        if new.len() != old.len() || new.iter().zip(&old).any(|(a, b)| a["image"] != b["image"]) {
            return true;
        }
    }
    let old_ephemeral = list(old, "ephemeralContainers");
    list(pod, "ephemeralContainers").iter().any(|container| {
        match old_ephemeral.iter().find(|old| old["name"] == container["name"]) {
            Some(old) => old["image"] != container["image"],
            None => true,
        }
    })
}

/// What admitting a namespace write found: warnings to answer with, and the enforce level its existing pods
/// must be checked against (see [`PodSecurity::existing_pods`]) when the write tightened it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceVerdict {
    pub warnings: Vec<String>,
    pub check_pods: Option<LevelVersion>,
}

/// Pod Security admission for one cluster: the default enforce level and the exempt namespaces.
#[derive(Clone, Debug)]
pub struct PodSecurity {
    default_level: Level,
}

/// Baseline: the issue that brought Pod Security to Skiff asked that no pod may take the host (privileged
/// mode, host namespaces, hostPath) unless its namespace allows it. Kubernetes and k3s default to privileged.
impl Default for PodSecurity {
    fn default() -> Self {
        Self::new(Level::Baseline)
    }
}

impl PodSecurity {
    pub fn new(default_level: Level) -> Self {
        Self { default_level }
    }

    pub fn default_level(&self) -> Level {
        self.default_level
    }

    pub fn exempt(&self, namespace: &str) -> bool {
        EXEMPT_NAMESPACES.contains(&namespace)
    }

    /// A namespace's policy: its labels over the default enforce level, which applies as if the namespace
    /// carried it as a label when it has no enforce label of its own.
    pub fn policy(&self, namespace: &Value) -> (Policy, Vec<Cause>) {
        let mut labels = labels_of(namespace).clone();
        if !labels.contains_key(ENFORCE_LEVEL_LABEL) {
            labels.insert(ENFORCE_LEVEL_LABEL.into(), json!(self.default_level.as_str()));
        }
        policy_for_labels(&labels, Policy::PRIVILEGED)
    }

    /// A pod's create (or significant update) in `namespace`: the warnings to answer with, or why it is
    /// refused (`violates PodSecurity "baseline:latest": ...`, after kube-apiserver's `pods "x" is forbidden: `).
    pub fn admit_pod(&self, namespace: &Value, pod: &Value) -> Result<Vec<String>, String> {
        if self.exempt(name_of(namespace)) {
            return Ok(Vec::new());
        }
        let (policy, causes) = self.policy(namespace);
        if causes.is_empty() && policy.fully_privileged() {
            return Ok(Vec::new());
        }
        let (metadata, spec) = (&pod["metadata"], &pod["spec"]);
        let enforced = evaluate(policy.enforce, metadata, spec);
        if !enforced.allowed() {
            return Err(format!(
                "violates PodSecurity {}: {}",
                go_quote(&policy.enforce.to_string()),
                enforced.forbidden_detail()
            ));
        }
        Ok(self.warning(policy.warn, metadata, spec).into_iter().collect())
    }

    /// A workload's create or update in `namespace`: never refused, warned about when its pod template
    /// violates the namespace's warn level.
    pub fn warn_pod_controller(&self, namespace: &Value, group: &str, plural: &str, object: &Value) -> Vec<String> {
        if self.exempt(name_of(namespace)) {
            return Vec::new();
        }
        let (policy, causes) = self.policy(namespace);
        if causes.is_empty() && policy.warn.level == Level::Privileged && policy.audit.level == Level::Privileged {
            return Vec::new();
        }
        let Some((metadata, spec)) = pod_template(group, plural, object) else { return Vec::new() };
        self.warning(policy.warn, metadata, spec).into_iter().collect()
    }

    fn warning(&self, warn: LevelVersion, metadata: &Value, spec: &Value) -> Option<String> {
        let verdict = evaluate(warn, metadata, spec);
        (!verdict.allowed()).then(|| {
            format!("would violate PodSecurity {}: {}", go_quote(&warn.to_string()), verdict.forbidden_detail())
        })
    }

    /// A namespace's create or update (`old` is the stored namespace): refused with the invalid labels'
    /// causes (on an update only when they changed), else warnings and whether its pods need a check.
    pub fn admit_namespace(&self, namespace: &Value, old: Option<&Value>) -> Result<NamespaceVerdict, Vec<Cause>> {
        let (policy, causes) = self.policy(namespace);
        let exempt = self.exempt(name_of(namespace));
        let Some(old) = old else {
            if !causes.is_empty() {
                return Err(causes);
            }
            return Ok(NamespaceVerdict {
                warnings: exempt.then(|| self.exempt_warning(namespace, &policy)).flatten().into_iter().collect(),
                check_pods: None,
            });
        };
        let (old_policy, old_causes) = self.policy(old);
        if !causes.is_empty() && (old_causes.is_empty() || causes != old_causes) {
            return Err(causes);
        }
        let (new, before) = (policy.enforce, old_policy.enforce);
        let relaxed = new.version == before.version && new.level <= before.level;
        if new == before || new.level == Level::Privileged || relaxed {
            return Ok(NamespaceVerdict::default());
        }
        if exempt {
            let warnings = self.exempt_warning(namespace, &policy).into_iter().collect();
            return Ok(NamespaceVerdict { warnings, check_pods: None });
        }
        Ok(NamespaceVerdict { warnings: Vec::new(), check_pods: Some(new) })
    }

    /// `namespace "kube-system" is exempt from Pod Security, and the policy (enforce=restricted:latest) will be
    /// ignored`, when an exempt namespace's labels ask for more than the default.
    fn exempt_warning(&self, namespace: &Value, policy: &Policy) -> Option<String> {
        if policy.fully_privileged() || policy.equivalent(&self.policy(&json!({})).0) {
            return None;
        }
        let labels = labels_of(namespace);
        let set = |level: &str, version: &str| labels.contains_key(level) || labels.contains_key(version);
        let modes = [
            ("enforce", policy.enforce, set(ENFORCE_LEVEL_LABEL, ENFORCE_VERSION_LABEL)),
            ("audit", policy.audit, set(AUDIT_LEVEL_LABEL, AUDIT_VERSION_LABEL)),
            ("warn", policy.warn, set(WARN_LEVEL_LABEL, WARN_VERSION_LABEL)),
        ];
        let shown: Vec<String> = modes
            .iter()
            .filter(|(_, lv, labelled)| lv.level != Level::Privileged && *labelled)
            .map(|(mode, lv, _)| format!("{mode}={lv}"))
            .collect();
        Some(format!(
            "namespace {} is exempt from Pod Security, and the policy ({}) will be ignored",
            go_quote(name_of(namespace)),
            shown.join(", ")
        ))
    }

    /// The warnings for a namespace whose enforce level tightened to `enforce`, about the `pods` in it that
    /// violate it (PSA's `EvaluatePodsInNamespace`): the first pod of each controller first, at most
    /// [`MAX_PODS_TO_CHECK`], pods with the same reasons reported together under the first name.
    pub fn existing_pods(&self, namespace: &str, enforce: LevelVersion, pods: &[Value]) -> Vec<String> {
        let mut first = Vec::new();
        let mut replicated = Vec::new();
        let mut controllers = BTreeSet::new();
        for pod in pods {
            let owners = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array);
            let controller = owners.into_iter().flatten().find(|o| o["controller"] == true).map(|o| &o["uid"]);
            match controller {
                Some(uid) if !controllers.insert(uid.to_string()) => replicated.push(pod),
                _ => first.push(pod),
            }
        }
        first.extend(replicated);
        let total = first.len();
        let checked = total.min(MAX_PODS_TO_CHECK);
        // Per distinct reasons: the lexically first pod name and how many pods share them.
        let mut seen: HashMap<String, (String, usize)> = HashMap::new();
        let mut order = Vec::new();
        for pod in &first[..checked] {
            let verdict = evaluate(enforce, &pod["metadata"], &pod["spec"]);
            if verdict.allowed() {
                continue;
            }
            let reason = verdict.forbidden_reason();
            let name = name_of(pod).to_string();
            let entry = seen.entry(reason.clone()).or_insert_with(|| {
                order.push(reason);
                (name.clone(), 0)
            });
            if name < entry.0 {
                entry.0 = name;
            }
            entry.1 += 1;
        }
        let mut warnings = Vec::new();
        if checked < total {
            warnings.push(format!(
                "new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"
            ));
        }
        if !order.is_empty() {
            warnings.push(format!(
                "existing pods in namespace {} violate the new PodSecurity enforce level {}",
                go_quote(namespace),
                go_quote(&enforce.to_string())
            ));
        }
        let mut decorated: Vec<String> = order
            .into_iter()
            .map(|reason| {
                let (name, count) = &seen[&reason];
                match count {
                    1 => format!("{name}: {reason}"),
                    2 => format!("{name} (and 1 other pod): {reason}"),
                    _ => format!("{name} (and {} other pods): {reason}", count - 1),
                }
            })
            .collect();
        decorated.sort();
        warnings.extend(decorated);
        warnings
    }
}

fn labels_of(object: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    object.pointer("/metadata/labels").and_then(Value::as_object).unwrap_or(&EMPTY)
}

fn name_of(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// Go's `%q` for the strings these messages quote (names, label values, levels).
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::checks::tests::{container, lv, spec};
    use super::*;

    #[test]
    fn labels_make_the_policy() {
        let labels = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
        };
        let ps = PodSecurity::default();
        let ns = |pairs: &[(&str, &str)]| json!({"metadata": {"name": "ns", "labels": labels(pairs)}});
        // The default acts as an enforce label: warn follows it.
        let (policy, causes) = ps.policy(&ns(&[]));
        assert!(causes.is_empty());
        assert_eq!(
            (policy.enforce, policy.audit, policy.warn),
            (lv("baseline:latest"), lv("privileged:latest"), lv("baseline:latest"))
        );
        let (policy, _) = ps.policy(&ns(&[(ENFORCE_LEVEL_LABEL, "privileged")]));
        assert!(policy.fully_privileged());
        let (policy, _) = ps.policy(&ns(&[(WARN_LEVEL_LABEL, "restricted")]));
        assert_eq!((policy.enforce, policy.warn), (lv("baseline:latest"), lv("restricted:latest")));
        let (policy, _) = ps.policy(&ns(&[
            (ENFORCE_LEVEL_LABEL, "restricted"),
            (ENFORCE_VERSION_LABEL, "v1.30"),
            (AUDIT_LEVEL_LABEL, "baseline"),
        ]));
        assert_eq!(
            (policy.enforce, policy.audit, policy.warn),
            (lv("restricted:v1.30"), lv("baseline:latest"), lv("restricted:v1.30"))
        );
        let (policy, _) = PodSecurity::new(Level::Privileged).policy(&ns(&[]));
        assert!(policy.fully_privileged());

        // Invalid values: enforce fails closed, warn and audit open, versions to latest; one cause each.
        let (policy, causes) = ps.policy(&ns(&[
            (ENFORCE_LEVEL_LABEL, "bogus"),
            (ENFORCE_VERSION_LABEL, "v1.05"),
            (WARN_LEVEL_LABEL, "strict"),
            (AUDIT_VERSION_LABEL, "v2.0"),
        ]));
        assert_eq!((policy.enforce, policy.warn), (lv("restricted:latest"), lv("privileged:latest")));
        let shown: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            shown,
            [
                r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "bogus": must be one of privileged, baseline, restricted"#,
                r#"metadata.labels[pod-security.kubernetes.io/enforce-version]: Invalid value: "v1.05": must be "latest" or "v1.x""#,
                r#"metadata.labels[pod-security.kubernetes.io/audit-version]: Invalid value: "v2.0": must be "latest" or "v1.x""#,
                r#"metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: "strict": must be one of privileged, baseline, restricted"#,
            ]
        );
        for (text, version) in
            [("latest", Ok(Version::Latest)), ("v1.0", Ok(Version::Minor(0))), ("v1.33", Ok(Version::Minor(33)))]
        {
            assert_eq!(text.parse::<Version>(), version);
        }
        for bad in ["v1.", "v1.01", "1.30", "v1.3a", "Latest", ""] {
            assert_eq!(bad.parse::<Version>(), Err(ParseError::Version), "{bad}");
        }
    }

    #[test]
    fn pods_are_refused_or_warned_about() {
        let ps = PodSecurity::default();
        let ns = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        let host = json!({"metadata": {"name": "x"}, "spec": spec(json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}))});
        assert_eq!(
            ps.admit_pod(&ns("default", json!({})), &host),
            Err(r#"violates PodSecurity "baseline:latest": hostPath volumes (volume "h")"#.to_string())
        );
        assert_eq!(ps.admit_pod(&ns("kube-system", json!({})), &host), Ok(vec![]), "exempt");
        let privileged = json!({ENFORCE_LEVEL_LABEL: "privileged"});
        assert_eq!(ps.admit_pod(&ns("tools", privileged), &host), Ok(vec![]));
        let plain = json!({"metadata": {"name": "x"}, "spec": spec(json!({}))});
        let warned = json!({WARN_LEVEL_LABEL: "restricted", WARN_VERSION_LABEL: "v1.33"});
        let warnings = ps.admit_pod(&ns("apps", warned.clone()), &plain).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .starts_with(r#"would violate PodSecurity "restricted:v1.33": allowPrivilegeEscalation != false"#)
        );

        // Workloads: the template, warned about and never refused.
        let deployment = json!({"spec": {"template": {"metadata": {}, "spec": host["spec"]}}});
        assert_eq!(
            ps.warn_pod_controller(&ns("default", json!({})), "apps", "deployments", &deployment),
            [r#"would violate PodSecurity "baseline:latest": hostPath volumes (volume "h")"#]
        );
        assert!(ps.warn_pod_controller(&ns("apps", warned), "", "configmaps", &deployment).is_empty());
        let cronjob = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        assert!(pod_template("batch", "cronjobs", &cronjob).is_some());
        assert!(pod_template("apps", "deployments", &json!({"spec": {}})).is_none());

        // Updates: only containers and images matter.
        let mut relabelled = host.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        relabelled["spec"]["activeDeadlineSeconds"] = json!(5);
        assert!(!significant_pod_update(&relabelled, &host));
        let mut new_image = host.clone();
        new_image["spec"]["containers"][0]["image"] = json!("registry.local/app:2");
        assert!(significant_pod_update(&new_image, &host));
        let mut debugged = host.clone();
        debugged["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
        assert!(significant_pod_update(&debugged, &host));
    }

    #[test]
    fn namespaces_are_validated_and_tightening_checks_their_pods() {
        let ps = PodSecurity::default();
        let ns = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        let bogus = ns("a", json!({ENFORCE_LEVEL_LABEL: "bogus"}));
        assert_eq!(ps.admit_namespace(&bogus, None).unwrap_err().len(), 1);
        assert!(ps.admit_namespace(&bogus, Some(&bogus)).is_ok(), "unchanged invalid labels stay allowed");
        assert!(ps.admit_namespace(&ns("a", json!({WARN_LEVEL_LABEL: "x"})), Some(&bogus)).is_err());

        let plain = ns("a", json!({}));
        let restricted = ns("a", json!({ENFORCE_LEVEL_LABEL: "restricted"}));
        assert_eq!(
            ps.admit_namespace(&restricted, Some(&plain)),
            Ok(NamespaceVerdict { warnings: vec![], check_pods: Some(lv("restricted:latest")) })
        );
        assert_eq!(ps.admit_namespace(&plain, Some(&restricted)), Ok(NamespaceVerdict::default()), "relaxed");
        let baseline = ns("a", json!({ENFORCE_LEVEL_LABEL: "baseline"}));
        assert_eq!(ps.admit_namespace(&baseline, Some(&plain)), Ok(NamespaceVerdict::default()), "the default already");

        let system = ns("kube-system", json!({ENFORCE_LEVEL_LABEL: "restricted"}));
        let warning = r#"namespace "kube-system" is exempt from Pod Security, and the policy (enforce=restricted:latest) will be ignored"#;
        assert_eq!(ps.admit_namespace(&system, None).unwrap().warnings, [warning]);
        assert_eq!(ps.admit_namespace(&system, Some(&ns("kube-system", json!({})))).unwrap().warnings, [warning]);
        assert!(ps.admit_namespace(&ns("kube-system", json!({})), None).unwrap().warnings.is_empty());

        let pod = |name: &str, owner: Option<&str>, extra: Value| {
            let owners: Vec<Value> = owner.map(|uid| json!({"uid": uid, "controller": true})).into_iter().collect();
            json!({"metadata": {"name": name, "ownerReferences": owners}, "spec": spec(extra)})
        };
        let host_path = json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        let pods = [
            pod("web-2", Some("rs"), host_path.clone()),
            pod("web-1", Some("rs"), host_path.clone()),
            pod(
                "tools",
                None,
                json!({"hostNetwork": true, "containers": [container("c", json!({"privileged": true}))]}),
            ),
            pod("fine", None, json!({})),
        ];
        assert_eq!(
            ps.existing_pods("a", lv("baseline:latest"), &pods),
            [
                r#"existing pods in namespace "a" violate the new PodSecurity enforce level "baseline:latest""#,
                "tools: host namespaces, privileged",
                "web-1 (and 1 other pod): hostPath volumes",
            ]
        );
        assert!(ps.existing_pods("a", lv("baseline:latest"), &pods[3..]).is_empty());
    }
}
