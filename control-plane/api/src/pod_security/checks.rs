//! The checks of the Pod Security Standards, one function per check and version as
//! `policy/check_*.go`, and the registry that picks which run for a level and version, in PSA's order
//! (`policy/registry.go`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Level, LevelVersion, go_quote};

/// One failed check: a short reason (`privileged`) and what exactly failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

/// The result of checking a pod against a level: its violations, in PSA's check order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict(pub Vec<Violation>);

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.0.is_empty()
    }

    /// `privileged, hostPath volumes`: the reasons alone, as labelling a namespace reports existing pods.
    pub fn forbidden_reason(&self) -> String {
        self.0.iter().map(|v| v.reason.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// `privileged (container "c" must not set securityContext.privileged=true), hostPath volumes (volume "h")`.
    pub fn forbidden_detail(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| if v.detail.is_empty() { v.reason.clone() } else { format!("{} ({})", v.reason, v.detail) })
            .collect();
        parts.join(", ")
    }
}

/// Checks a pod (its metadata and spec, or a template's) against `lv`.
pub fn evaluate(lv: LevelVersion, metadata: &Value, spec: &Value) -> Verdict {
    if lv.level == Level::Privileged {
        return Verdict::default();
    }
    let minor = lv.version.minor();
    // Each check in the form of the version, if it existed then; restricted checks only at restricted.
    let active: Vec<(&Check, &Versioned)> = CHECKS
        .iter()
        .filter(|check| check.level == Level::Baseline || lv.level == Level::Restricted)
        .filter_map(|check| check.versions.iter().rev().find(|v| v.since <= minor).map(|v| (check, v)))
        .collect();
    // A restricted check may replace a baseline one (restricted volume types replace hostPath volumes).
    let overridden: BTreeSet<&str> = active.iter().flat_map(|(_, v)| v.overrides.iter().copied()).collect();
    let pod = Pod { meta: metadata, spec };
    Verdict(
        active
            .iter()
            .filter(|(check, _)| !overridden.contains(check.id))
            .filter_map(|(_, versioned)| (versioned.check)(pod))
            .collect(),
    )
}

/// A pod (or template) as the checks see it.
#[derive(Clone, Copy)]
struct Pod<'a> {
    meta: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// Init containers, containers, then ephemeral containers (PSA's `visitContainers`).
    fn containers(self) -> impl Iterator<Item = &'a Value> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(move |key| spec[key].as_array().into_iter().flatten())
    }

    fn security_context(self) -> &'a Value {
        &self.spec["securityContext"]
    }

    fn annotation(self, key: &str) -> Option<&'a str> {
        self.meta["annotations"][key].as_str()
    }

    fn annotations(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.as_str(), value.as_str().unwrap_or_default()))
    }

    fn windows(self) -> bool {
        self.spec["os"]["name"] == "windows"
    }
}

fn item_name(item: &Value) -> &str {
    item["name"].as_str().unwrap_or_default()
}

fn security_context(container: &Value) -> &Value {
    &container["securityContext"]
}

fn is_true(value: &Value) -> bool {
    value.as_bool() == Some(true)
}

fn pluralize<'s>(singular: &'s str, plural: &'s str, count: usize) -> &'s str {
    if count == 1 { singular } else { plural }
}

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items.into_iter().map(|s| format!("\"{}\"", s.as_ref())).collect::<Vec<_>>().join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation { reason: reason.to_string(), detail })
}

type CheckFn = fn(Pod) -> Option<Violation>;

struct Versioned {
    /// The first policy version (v1.`since`) this form of the check applies to.
    since: u32,
    check: CheckFn,
    /// Baseline checks this restricted one replaces.
    overrides: &'static [&'static str],
}

struct Check {
    id: &'static str,
    level: Level,
    versions: &'static [Versioned],
}

const fn at(since: u32, check: CheckFn) -> Versioned {
    Versioned { since, check, overrides: &[] }
}

const fn replacing(since: u32, check: CheckFn, overrides: &'static [&'static str]) -> Versioned {
    Versioned { since, check, overrides }
}

/// Every check, baseline then restricted, each sorted by id: the order PSA's registry runs and reports them.
/// Checks newer than [`super::NEWEST_MINOR`] (probe and lifecycle hosts, v1.34; the user-namespace
/// relaxations and restricted procMount, v1.35) are not here.
static CHECKS: &[Check] = &[
    Check { id: "appArmorProfile", level: Level::Baseline, versions: &[at(0, app_armor_profile)] },
    Check { id: "capabilities_baseline", level: Level::Baseline, versions: &[at(0, capabilities_baseline)] },
    Check { id: "hostNamespaces", level: Level::Baseline, versions: &[at(0, host_namespaces)] },
    Check { id: "hostPathVolumes", level: Level::Baseline, versions: &[at(0, host_path_volumes)] },
    Check { id: "hostPorts", level: Level::Baseline, versions: &[at(0, host_ports)] },
    Check { id: "privileged", level: Level::Baseline, versions: &[at(0, privileged)] },
    Check { id: "procMount", level: Level::Baseline, versions: &[at(0, proc_mount)] },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        versions: &[
            at(0, |pod| se_linux_options(pod, &["", "container_t", "container_init_t", "container_kvm_t"])),
            at(31, |pod| {
                se_linux_options(pod, &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"])
            }),
        ],
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        versions: &[at(0, seccomp_profile_annotations), at(19, seccomp_profile_baseline)],
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        versions: &[
            at(0, |pod| sysctls(pod, &SYSCTLS_1_0[..5])),
            at(27, |pod| sysctls(pod, &SYSCTLS_1_0[..6])),
            at(29, |pod| sysctls(pod, &SYSCTLS_1_0[..10])),
            at(32, |pod| sysctls(pod, SYSCTLS_1_0)),
        ],
    },
    Check { id: "windowsHostProcess", level: Level::Baseline, versions: &[at(0, windows_host_process)] },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        versions: &[at(8, allow_privilege_escalation), at(25, |pod| unless_windows(pod, allow_privilege_escalation))],
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        versions: &[
            replacing(22, capabilities_restricted, &["capabilities_baseline"]),
            replacing(25, |pod| unless_windows(pod, capabilities_restricted), &["capabilities_baseline"]),
        ],
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        versions: &[replacing(0, restricted_volumes, &["hostPathVolumes"])],
    },
    Check { id: "runAsNonRoot", level: Level::Restricted, versions: &[at(0, run_as_non_root)] },
    Check { id: "runAsUser", level: Level::Restricted, versions: &[at(23, run_as_user)] },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        versions: &[
            replacing(19, seccomp_profile_restricted, &["seccompProfile_baseline"]),
            replacing(25, |pod| unless_windows(pod, seccomp_profile_restricted), &["seccompProfile_baseline"]),
        ],
    },
];

/// From v1.25 a pod with `spec.os.name: windows` passes the checks of Linux-only fields.
fn unless_windows(pod: Pod, check: CheckFn) -> Option<Violation> {
    if pod.windows() { None } else { check(pod) }
}

/// check_appArmorProfile.go: profile types RuntimeDefault or Localhost only; the beta annotations
/// `runtime/default`, `localhost/*` or empty only.
fn app_armor_profile(pod: Pod) -> Option<Violation> {
    let bad = |profile: &Value| {
        !profile.is_null() && !matches!(profile["type"].as_str(), Some("RuntimeDefault" | "Localhost"))
    };
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let profile = &pod.security_context()["appArmorProfile"];
    if bad(profile) {
        setters.push("pod".to_string());
        values.insert(profile["type"].as_str().unwrap_or_default().to_string());
    }
    let mut containers = Vec::new();
    for container in pod.containers() {
        let profile = &security_context(container)["appArmorProfile"];
        if bad(profile) {
            containers.push(item_name(container));
            values.insert(profile["type"].as_str().unwrap_or_default().to_string());
        }
    }
    if !containers.is_empty() {
        setters.push(containers_phrase(&containers));
    }
    let mut annotations: Vec<String> = pod
        .annotations()
        .filter(|(key, value)| {
            key.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(value.is_empty() || *value == "runtime/default" || value.starts_with("localhost/"))
        })
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect();
    let mut values: Vec<String> = values.into_iter().collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", values.len()),
        format!("{} must not set AppArmor profile type to {}", setters.join(" and "), join_quote(&values)),
    )
}

/// The capabilities a baseline container may add: the container runtimes' default set without NET_RAW.
const CAPABILITIES_BASELINE: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// check_capabilities_baseline.go: only capabilities of the default set may be added.
fn capabilities_baseline(pod: Pod) -> Option<Violation> {
    let mut containers = Vec::new();
    let mut added = BTreeSet::new();
    for container in pod.containers() {
        let mut valid = true;
        for capability in security_context(container)["capabilities"]["add"].as_array().into_iter().flatten() {
            let capability = capability.as_str().unwrap_or_default();
            if !CAPABILITIES_BASELINE.contains(&capability) {
                valid = false;
                added.insert(capability);
            }
        }
        if !valid {
            containers.push(item_name(container));
        }
    }
    if containers.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&containers),
            join_quote(&added)
        ),
    )
}

/// check_hostNamespaces.go: no host network, PID or IPC namespace.
fn host_namespaces(pod: Pod) -> Option<Violation> {
    let shared: Vec<&str> =
        [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
            .into_iter()
            .filter(|(field, _)| is_true(&pod.spec[field]))
            .map(|(_, shown)| shown)
            .collect();
    if shared.is_empty() {
        return None;
    }
    violation("host namespaces", shared.join(", "))
}

fn volumes<'a>(pod: Pod<'a>) -> impl Iterator<Item = &'a Value> {
    pod.spec["volumes"].as_array().into_iter().flatten()
}

/// check_hostPathVolumes.go: no hostPath volume.
fn host_path_volumes(pod: Pod) -> Option<Violation> {
    let names: Vec<&str> = volumes(pod).filter(|v| !v["hostPath"].is_null()).map(item_name).collect();
    if names.is_empty() {
        return None;
    }
    violation("hostPath volumes", format!("{} {}", pluralize("volume", "volumes", names.len()), join_quote(&names)))
}

/// check_hostPorts.go: no host port.
fn host_ports(pod: Pod) -> Option<Violation> {
    let mut containers = Vec::new();
    let mut ports = BTreeSet::new();
    for container in pod.containers() {
        let mut valid = true;
        for port in container["ports"].as_array().into_iter().flatten() {
            let host_port = port["hostPort"].as_i64().unwrap_or(0);
            if host_port != 0 {
                valid = false;
                ports.insert(host_port.to_string());
            }
        }
        if !valid {
            containers.push(item_name(container));
        }
    }
    if containers.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&containers),
            pluralize("uses", "use", containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// check_privileged.go: no privileged container.
fn privileged(pod: Pod) -> Option<Violation> {
    let containers: Vec<&str> =
        pod.containers().filter(|c| is_true(&security_context(c)["privileged"])).map(item_name).collect();
    if containers.is_empty() {
        return None;
    }
    violation("privileged", format!("{} must not set securityContext.privileged=true", containers_phrase(&containers)))
}

/// check_procMount.go (v1.33): the default /proc masks only.
fn proc_mount(pod: Pod) -> Option<Violation> {
    let mut containers = Vec::new();
    let mut types = BTreeSet::new();
    for container in pod.containers() {
        if let Some(kind) = security_context(container)["procMount"].as_str()
            && kind != "Default"
        {
            containers.push(item_name(container));
            types.insert(kind);
        }
    }
    if containers.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!("{} must not set securityContext.procMount to {}", containers_phrase(&containers), join_quote(&types)),
    )
}

/// check_seLinuxOptions.go: an allowed type, and no user or role.
fn se_linux_options(pod: Pod, allowed_types: &[&str]) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut valid = |options: &Value| {
        if options.is_null() {
            return true;
        }
        let mut valid = true;
        let kind = options["type"].as_str().unwrap_or_default();
        if !allowed_types.contains(&kind) {
            valid = false;
            types.insert(kind.to_string());
        }
        if !options["user"].as_str().unwrap_or_default().is_empty() {
            valid = false;
            user = true;
        }
        if !options["role"].as_str().unwrap_or_default().is_empty() {
            valid = false;
            role = true;
        }
        valid
    };
    let mut setters = Vec::new();
    if !valid(&pod.security_context()["seLinuxOptions"]) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> =
        pod.containers().filter(|c| !valid(&security_context(c)["seLinuxOptions"])).map(item_name).collect();
    if !containers.is_empty() {
        setters.push(containers_phrase(&containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    if !types.is_empty() {
        problems.push(format!("{} {}", pluralize("type", "types", types.len()), join_quote(&types)));
    }
    if user {
        problems.push("user may not be set".to_string());
    }
    if role {
        problems.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!("{} set forbidden securityContext.seLinuxOptions: {}", setters.join(" and "), problems.join("; ")),
    )
}

fn valid_seccomp_type(profile: &Value) -> bool {
    matches!(profile["type"].as_str(), Some("RuntimeDefault" | "Localhost"))
}

/// check_seccompProfile_baseline.go before v1.19: the alpha annotations name a default or local profile.
fn seccomp_profile_annotations(pod: Pod) -> Option<Violation> {
    let valid =
        |value: &str| value == "runtime/default" || value == "docker/default" || value.starts_with("localhost/");
    let mut forbidden = BTreeSet::new();
    let pod_key = "seccomp.security.alpha.kubernetes.io/pod".to_string();
    let keys = std::iter::once(pod_key)
        .chain(pod.containers().map(|c| format!("container.seccomp.security.alpha.kubernetes.io/{}", item_name(c))));
    for key in keys {
        if let Some(value) = pod.annotation(&key)
            && !valid(value)
        {
            forbidden.insert(format!("{key}={}", go_quote(value)));
        }
    }
    if forbidden.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            pluralize("annotation", "annotations", forbidden.len()),
            forbidden.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// The pod and the containers that set a seccomp profile other than RuntimeDefault or Localhost, the types
/// they set, and the containers that set none.
fn seccomp_setters<'a>(pod: Pod<'a>) -> (Vec<String>, BTreeSet<String>, bool, Vec<&'a str>) {
    let mut setters = Vec::new();
    let mut types = BTreeSet::new();
    let profile = &pod.security_context()["seccompProfile"];
    let pod_set = !profile.is_null() && valid_seccomp_type(profile);
    if !profile.is_null() && !pod_set {
        setters.push("pod".to_string());
        types.insert(profile["type"].as_str().unwrap_or_default().to_string());
    }
    let mut explicit = Vec::new();
    let mut unset = Vec::new();
    for container in pod.containers() {
        let profile = &security_context(container)["seccompProfile"];
        if profile.is_null() {
            unset.push(item_name(container));
        } else if !valid_seccomp_type(profile) {
            explicit.push(item_name(container));
            types.insert(profile["type"].as_str().unwrap_or_default().to_string());
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    (setters, types, pod_set, unset)
}

/// check_seccompProfile_baseline.go from v1.19: a seccomp profile, where set, is RuntimeDefault or Localhost.
fn seccomp_profile_baseline(pod: Pod) -> Option<Violation> {
    let (setters, types, _, _) = seccomp_setters(pod);
    if setters.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!("{} must not set securityContext.seccompProfile.type to {}", setters.join(" and "), join_quote(&types)),
    )
}

/// check_seccompProfile_restricted.go: RuntimeDefault or Localhost, set on the pod or on every container.
fn seccomp_profile_restricted(pod: Pod) -> Option<Violation> {
    let (setters, types, pod_set, unset) = seccomp_setters(pod);
    if !setters.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&types)
            ),
        );
    }
    if pod_set || unset.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ),
    )
}

/// The safe sysctls, in the order versions added them: v1.0 the first five, v1.27 the sixth, v1.29 four more,
/// v1.32 the last two.
const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// check_sysctls.go: only the safe sysctls of the version.
fn sysctls(pod: Pod, allowed: &[&str]) -> Option<Violation> {
    let forbidden: Vec<&str> = pod.security_context()["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .filter(|name| !allowed.contains(name))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    violation("forbidden sysctls", forbidden.join(", "))
}

/// check_windowsHostProcess.go: no Windows host process.
fn windows_host_process(pod: Pod) -> Option<Violation> {
    let host_process = |context: &Value| is_true(&context["windowsOptions"]["hostProcess"]);
    let mut setters = Vec::new();
    if host_process(pod.security_context()) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> = pod.containers().filter(|c| host_process(security_context(c))).map(item_name).collect();
    if !containers.is_empty() {
        setters.push(containers_phrase(&containers));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!("{} must not set securityContext.windowsOptions.hostProcess=true", setters.join(" and ")),
    )
}

/// check_allowPrivilegeEscalation.go: every container sets allowPrivilegeEscalation=false.
fn allow_privilege_escalation(pod: Pod) -> Option<Violation> {
    let containers: Vec<&str> = pod
        .containers()
        .filter(|c| security_context(c)["allowPrivilegeEscalation"].as_bool() != Some(false))
        .map(item_name)
        .collect();
    if containers.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&containers)),
    )
}

/// check_capabilities_restricted.go: every container drops ALL and adds at most NET_BIND_SERVICE.
fn capabilities_restricted(pod: Pod) -> Option<Violation> {
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut added = BTreeSet::new();
    for container in pod.containers() {
        let capabilities = &security_context(container)["capabilities"];
        if capabilities.is_null() {
            missing_drop.push(item_name(container));
            continue;
        }
        if !capabilities["drop"].as_array().into_iter().flatten().any(|c| c == "ALL") {
            missing_drop.push(item_name(container));
        }
        let mut forbidden = false;
        for capability in capabilities["add"].as_array().into_iter().flatten() {
            let capability = capability.as_str().unwrap_or_default();
            if capability != "NET_BIND_SERVICE" {
                forbidden = true;
                added.insert(capability);
            }
        }
        if forbidden {
            adding.push(item_name(container));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details
            .push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&missing_drop)));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&added)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

/// The inline volume sources restricted pods may use.
const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The sources they may not, in the order PSA names the first a volume has.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

/// check_restrictedVolumes.go: only the allowed volume sources.
fn restricted_volumes(pod: Pod) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types = BTreeSet::new();
    for volume in volumes(pod) {
        if ALLOWED_VOLUME_SOURCES.iter().any(|source| !volume[source].is_null()) {
            continue;
        }
        names.push(item_name(volume));
        types.insert(RESTRICTED_VOLUME_SOURCES.iter().find(|s| !volume[**s].is_null()).copied().unwrap_or("unknown"));
    }
    if names.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names),
            pluralize("uses", "use", names.len()),
            pluralize("restricted volume type", "restricted volume types", types.len()),
            join_quote(&types)
        ),
    )
}

/// check_runAsNonRoot.go (v1.33): runAsNonRoot=true on the pod, or on every container, and false nowhere.
fn run_as_non_root(pod: Pod) -> Option<Violation> {
    let mut setters = Vec::new();
    let pod_value = pod.security_context()["runAsNonRoot"].as_bool();
    if pod_value == Some(false) {
        setters.push("pod".to_string());
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for container in pod.containers() {
        match security_context(container)["runAsNonRoot"].as_bool() {
            Some(false) => explicit.push(item_name(container)),
            Some(true) => {}
            None if pod_value != Some(true) => implicit.push(item_name(container)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!("{} must not set securityContext.runAsNonRoot=false", setters.join(" and ")),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&implicit)),
    )
}

/// check_runAsUser.go (v1.33): runAsUser=0 nowhere.
fn run_as_user(pod: Pod) -> Option<Violation> {
    let root = |context: &Value| context["runAsUser"].as_i64() == Some(0);
    let mut setters = Vec::new();
    if root(pod.security_context()) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> = pod.containers().filter(|c| root(security_context(c))).map(item_name).collect();
    if !containers.is_empty() {
        setters.push(containers_phrase(&containers));
    }
    if setters.is_empty() {
        return None;
    }
    violation("runAsUser=0", format!("{} must not set runAsUser=0", setters.join(" and ")))
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn lv(text: &str) -> LevelVersion {
        let (level, version) = text.split_once(':').unwrap();
        LevelVersion { level: level.parse().unwrap(), version: version.parse().unwrap() }
    }

    /// A pod with one container "c" and `spec` merged over it (`containers` replaces the container).
    pub(crate) fn spec(extra: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1"}]});
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        spec
    }

    /// A pod that passes restricted, with `extra` merged over its spec.
    fn restricted_spec(extra: Value) -> Value {
        let mut base = spec(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "registry.local/app:1", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }));
        for (key, value) in extra.as_object().unwrap() {
            base[key] = value.clone();
        }
        base
    }

    pub(crate) fn container(name: &str, security_context: Value) -> Value {
        json!({"name": name, "image": "registry.local/app:1", "securityContext": security_context})
    }

    /// Each case: a level and version, the pod's metadata and spec, and PSA's forbidden detail ("" = allowed).
    #[test]
    fn every_check_refuses_with_psa_wording() {
        let cases: Vec<(&str, Value, Value, &str)> = vec![
            ("baseline:latest", json!({}), spec(json!({})), ""),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"containers": [container("c", json!({"privileged": true}))]})),
                r#"privileged (container "c" must not set securityContext.privileged=true)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({
                    "initContainers": [container("i", json!({"privileged": true}))],
                    "containers": [container("a", json!({"privileged": true})), container("b", json!({"privileged": false}))],
                    "ephemeralContainers": [container("e", json!({"privileged": true}))],
                })),
                r#"privileged (containers "i", "a", "e" must not set securityContext.privileged=true)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"hostNetwork": true, "hostPID": true, "hostIPC": false})),
                "host namespaces (hostNetwork=true, hostPID=true)",
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]})),
                r#"hostPath volumes (volume "h")"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({
                    "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                    "containers": [container("c", json!({"privileged": true}))],
                })),
                r#"hostPath volumes (volume "h"), privileged (container "c" must not set securityContext.privileged=true)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"containers": [{"name": "c", "image": "i", "ports": [
                    {"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 10000}, {"containerPort": 82}]}]})),
                r#"hostPort (container "c" uses hostPorts 10000, 8080)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"containers": [
                    {"name": "a", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]},
                    {"name": "b", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]}]})),
                r#"hostPort (containers "a", "b" use hostPort 80)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(
                    json!({"containers": [container("c", json!({"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_ADMIN"]}}))]}),
                ),
                r#"non-default capabilities (container "c" must not include "NET_ADMIN", "SYS_ADMIN" in securityContext.capabilities.add)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(
                    json!({"containers": [container("c", json!({"capabilities": {"add": ["NET_BIND_SERVICE", "KILL"], "drop": ["NET_RAW"]}}))]}),
                ),
                "",
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}})),
                r#"forbidden AppArmor profile (pod must not set AppArmor profile type to "Unconfined")"#,
            ),
            (
                "baseline:latest",
                json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined",
                    "container.apparmor.security.beta.kubernetes.io/d": "localhost/mine"}}),
                spec(json!({"containers": [container("c", json!({"appArmorProfile": {"type": "Unconfined"}}))]})),
                r#"forbidden AppArmor profiles (container "c" and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/c="unconfined"")"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(
                    json!({"containers": [container("c", json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}))]}),
                ),
                "",
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"seLinuxOptions": {"role": "r"}},
                    "containers": [container("c", json!({"seLinuxOptions": {"type": "spc_t", "user": "u"}}))]})),
                r#"seLinuxOptions (pod and container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set; role may not be set)"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"seLinuxOptions": {"type": "container_engine_t", "level": "s0:c1"}}})),
                "",
            ),
            (
                "baseline:v1.30",
                json!({}),
                spec(json!({"securityContext": {"seLinuxOptions": {"type": "container_engine_t"}}})),
                r#"seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "container_engine_t")"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(
                    json!({"containers": [container("c", json!({"procMount": "Unmasked"})), container("d", json!({"procMount": "Default"}))]}),
                ),
                r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}},
                    "containers": [container("c", json!({"seccompProfile": {"type": "Unconfined"}})), container("d", json!({}))]})),
                r#"seccompProfile (pod and container "c" must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
            (
                "baseline:v1.18",
                json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                    "container.seccomp.security.alpha.kubernetes.io/c": "docker/default"}}),
                spec(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
                r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#,
            ),
            (
                "baseline:latest",
                json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}),
                spec(json!({})),
                "",
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"sysctls": [
                    {"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_rmem", "value": "1 2 3"},
                    {"name": "kernel.shm_rmid_forced", "value": "0"}]}})),
                "forbidden sysctls (kernel.msgmax)",
            ),
            (
                "baseline:v1.31",
                json!({}),
                spec(json!({"securityContext": {"sysctls": [
                    {"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_rmem", "value": "1 2 3"}]}})),
                "forbidden sysctls (kernel.msgmax, net.ipv4.tcp_rmem)",
            ),
            (
                "baseline:latest",
                json!({}),
                spec(json!({"securityContext": {"windowsOptions": {"hostProcess": true}},
                    "containers": [container("a", json!({"windowsOptions": {"hostProcess": true}})), container("b", json!({"windowsOptions": {"hostProcess": true}}))]})),
                r#"hostProcess (pod and containers "a", "b" must not set securityContext.windowsOptions.hostProcess=true)"#,
            ),
            // Restricted: the baseline checks and its own.
            (
                "restricted:latest",
                json!({}),
                spec(json!({})),
                concat!(
                    r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), "#,
                    r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), "#,
                    r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), "#,
                    r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
                ),
            ),
            ("restricted:latest", json!({}), restricted_spec(json!({})), ""),
            (
                "restricted:latest",
                json!({}),
                restricted_spec(
                    json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "cm", "configMap": {"name": "x"}}]}),
                ),
                r#"restricted volume types (volume "h" uses restricted volume type "hostPath")"#,
            ),
            (
                "restricted:latest",
                json!({}),
                restricted_spec(json!({"volumes": [{"name": "a", "nfs": {"server": "s", "path": "/"}},
                    {"name": "b", "gitRepo": {"repository": "r"}}, {"name": "c", "emptyDir": {}}, {"name": "d", "nfs": {"server": "s", "path": "/"}}]})),
                r#"restricted volume types (volumes "a", "b", "d" use restricted volume types "gitRepo", "nfs")"#,
            ),
            (
                "restricted:latest",
                json!({}),
                restricted_spec(
                    json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}}),
                ),
                "runAsUser=0 (pod must not set runAsUser=0)",
            ),
            (
                "restricted:latest",
                json!({}),
                restricted_spec(json!({"containers": [container("c", json!({"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}, "runAsNonRoot": false}))]})),
                concat!(
                    r#"unrestricted capabilities (container "c" must not include "SYS_ADMIN" in securityContext.capabilities.add), "#,
                    r#"runAsNonRoot != true (container "c" must not set securityContext.runAsNonRoot=false)"#
                ),
            ),
            (
                "restricted:latest",
                json!({}),
                restricted_spec(
                    json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}, "runAsNonRoot": true},
                    "containers": [container("c", json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}}))]}),
                ),
                r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
            // Versions: runAsUser from v1.23, restricted capabilities from v1.22, no Windows exemption before v1.25.
            (
                "restricted:v1.21",
                json!({}),
                spec(json!({"securityContext": {"runAsUser": 0}})),
                concat!(
                    r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), "#,
                    r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), "#,
                    r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
                ),
            ),
            (
                "restricted:latest",
                json!({}),
                spec(json!({"os": {"name": "windows"}})),
                r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)"#,
            ),
            ("restricted:v1.99", json!({}), restricted_spec(json!({})), ""),
            (
                "privileged:latest",
                json!({}),
                spec(json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]})),
                "",
            ),
        ];
        for (level, metadata, spec, expected) in cases {
            let verdict = evaluate(lv(level), &metadata, &spec);
            assert_eq!(verdict.forbidden_detail(), expected, "{level} {spec}");
            assert_eq!(verdict.allowed(), expected.is_empty());
        }
    }

    #[test]
    fn checks_run_in_psa_order() {
        let ids: Vec<(Level, &str)> = CHECKS.iter().map(|c| (c.level, c.id)).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|(level, id)| (*level == Level::Restricted, *id));
        assert_eq!(ids, sorted, "baseline checks then restricted ones, each by id as Go sorts them");
        for check in CHECKS {
            assert!(check.versions.windows(2).all(|w| w[0].since < w[1].since), "{}", check.id);
        }
    }
}
