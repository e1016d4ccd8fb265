//! The container's identity and confinement: the user (the image's `User` resolved in its own
//! `/etc/passwd` and `/etc/group`, overridden by runAsUser/runAsGroup), capabilities (containerd's default
//! set with the pod's add and drop), no_new_privs, a read-only root, masked and read-only `/proc` and `/sys`
//! paths as containerd sets them, the seccomp profile (containerd's default, none, or a file: `seccomp`),
//! and the device rules (`devices`). A privileged container gets every capability and device and none of
//! the masks or the filter.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, Spec, UserBuilder};
use skiff_shim::{ContainerSpec, SeccompProfile, Security, ShimError};

use crate::{devices, seccomp};

/// containerd's default capabilities (those of the Docker engine).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux has (6.x), in the kernel's order (index = number), for `ALL` and privileged
/// containers.
const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// containerd's masked paths: hidden behind an empty file or tmpfs.
const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
    "/proc/interrupts",
];

/// containerd's read-only paths.
const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn config_error(message: String) -> ShimError {
    ShimError::Setup { message, source: None }
}

/// Sets the process user, capabilities, no_new_privs, root read-only flag, masks, seccomp filter and device
/// rules of `oci` for `spec`, whose root filesystem (for user lookups) is `rootfs`; `Localhost` seccomp
/// profiles are read from `seccomp_dir`.
pub(crate) fn apply(oci: &mut Spec, spec: &ContainerSpec, rootfs: &Path, seccomp_dir: &Path) -> Result<(), ShimError> {
    let security = &spec.security;
    let (uid, gid, groups) = user(spec.image.user.as_deref(), security, rootfs)?;
    if security.run_as_non_root && uid == 0 {
        return Err(ShimError::Config("container has runAsNonRoot and image will run as root".into()));
    }
    if let Some(userns) = &spec.userns {
        // An id the pod's namespace does not map fails only in the container's init (EINVAL from setuid),
        // as a runtime error; it is the pod's configuration that is wrong. Privileged containers are
        // allowed, as in Kubernetes: their capabilities hold in the pod's namespaces only.
        check_mapped(uid, gid, &groups, userns.size)?;
    }
    let capabilities = capabilities(security)?;
    if let Some(root) = oci.root_mut() {
        root.set_readonly(Some(security.read_only_root_filesystem));
    }
    if let Some(process) = oci.process_mut() {
        let user = UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .additional_gids(groups)
            .build()
            .map_err(|e| config_error(format!("cannot build the process user: {e}")))?;
        process.set_user(user);
        let set: HashSet<Capability> = capabilities.iter().copied().collect();
        let caps = LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set)
            .inheritable(HashSet::new())
            .ambient(HashSet::new())
            .build()
            .map_err(|e| config_error(format!("cannot build the capabilities: {e}")))?;
        process.set_capabilities(Some(caps));
        // None rather than Some(false): libcontainer loads the seccomp filter after dropping capabilities
        // (which then fails without no_new_privs) whenever the field is set at all.
        process.set_no_new_privileges(security.no_new_privileges.then_some(true));
    }
    if security.privileged {
        // /sys writable, as Docker and containerd give privileged containers.
        if let Some(mounts) = oci.mounts_mut() {
            for mount in mounts.iter_mut().filter(|m| m.destination() == Path::new("/sys")) {
                let options = mount.options().clone().unwrap_or_default();
                mount.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }
    if let Some(linux) = oci.linux_mut() {
        let (masked, readonly): (Vec<String>, Vec<String>) = if security.privileged {
            (vec![], vec![])
        } else {
            (MASKED_PATHS.map(String::from).to_vec(), READONLY_PATHS.map(String::from).to_vec())
        };
        linux.set_masked_paths(Some(masked));
        linux.set_readonly_paths(Some(readonly));
        // The filter's capability-dependent rules follow the bounding set, as containerd's do.
        let seccomp = match &security.seccomp {
            _ if security.privileged => None,
            SeccompProfile::Unconfined => None,
            SeccompProfile::RuntimeDefault => Some(seccomp::runtime_default(&capabilities)?),
            SeccompProfile::Localhost(relative) => {
                Some(seccomp::localhost(&localhost_path(seccomp_dir, relative)?, &capabilities)?)
            }
        };
        linux.set_seccomp(seccomp);
    }
    devices::apply(oci, security.privileged);
    Ok(())
}

/// Refuses a user, group or supplementary group the pod's user namespace, ids `0..size`, does not have.
fn check_mapped(uid: u32, gid: u32, groups: &[u32], size: u32) -> Result<(), ShimError> {
    let outside = |what: String| {
        Err(ShimError::Config(format!(
            "{what} is outside the pod's user namespace (hostUsers: false), which has ids 0 to {}",
            size.saturating_sub(1)
        )))
    };
    if uid >= size {
        return outside(format!("the container's user {uid}"));
    }
    if gid >= size {
        return outside(format!("the container's group {gid}"));
    }
    match groups.iter().find(|g| **g >= size) {
        Some(group) => outside(format!("the container's supplementary group {group}")),
        None => Ok(()),
    }
}

/// `relative` under the node's profile directory, never outside it.
fn localhost_path(seccomp_dir: &Path, relative: &Path) -> Result<std::path::PathBuf, ShimError> {
    let descends = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if relative.as_os_str().is_empty() || !descends {
        return Err(ShimError::Config(format!(
            "seccomp profile {} is not a relative path inside the profile directory",
            relative.display()
        )));
    }
    Ok(seccomp_dir.join(relative))
}

/// The seccomp filter a container gets by default (containerd's RuntimeDefault for the default
/// capabilities), as the OCI runtime spec's `linux.seccomp`: for running other runtimes with the same
/// defaults side by side.
pub fn default_seccomp() -> Result<serde_json::Value, ShimError> {
    let profile = seccomp::runtime_default(&capabilities(&Security::default())?)?;
    serde_json::to_value(profile).map_err(|e| config_error(format!("cannot write the seccomp profile: {e}")))
}

pub(crate) fn parse_capability(name: &str) -> Result<Capability, ShimError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| config_error(format!("unknown capability {name:?}")))
}

/// The capabilities the agent holds (its effective set, from `/proc/self/status`), read once: a process can
/// give no more. Hosts whose bounding set lacks some (the machines here lack SYS_RESOURCE) would otherwise
/// fail every privileged start at capset. All when the set cannot be read.
fn held_capabilities() -> u64 {
    static HELD: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HELD.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:"));
        effective.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).unwrap_or(u64::MAX)
    })
}

/// The default set, less `drop`, plus `add` (`ALL` in either means every capability); privileged: all. "All"
/// is every capability the agent holds, as containerd's `WithAllCurrentCapabilities`.
fn capabilities(security: &Security) -> Result<Vec<Capability>, ShimError> {
    // ALL_CAPABILITIES is in the kernel's order: a name's index is its capability number.
    let all = || {
        let held = held_capabilities();
        let names = ALL_CAPABILITIES.iter().enumerate().filter(|(bit, _)| held & (1 << bit) != 0);
        names.filter_map(|(_, name)| parse_capability(name).ok()).collect::<Vec<_>>()
    };
    if security.privileged {
        return Ok(all());
    }
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    let mut set: Vec<Capability> = if security.capabilities_drop.iter().any(is_all) {
        Vec::new()
    } else {
        let dropped =
            security.capabilities_drop.iter().map(|name| parse_capability(name)).collect::<Result<Vec<_>, _>>()?;
        let defaults = DEFAULT_CAPABILITIES.iter().map(|name| parse_capability(name)).collect::<Result<Vec<_>, _>>()?;
        defaults.into_iter().filter(|c| !dropped.contains(c)).collect()
    };
    let added = if security.capabilities_add.iter().any(is_all) {
        all()
    } else {
        security.capabilities_add.iter().map(|name| parse_capability(name)).collect::<Result<Vec<_>, _>>()?
    };
    for capability in added {
        if !set.contains(&capability) {
            set.push(capability);
        }
    }
    Ok(set)
}

/// The uid, gid and supplementary groups the process runs with.
fn user(image_user: Option<&str>, security: &Security, rootfs: &Path) -> Result<(u32, u32, Vec<u32>), ShimError> {
    let (image_user, image_group) = match image_user.filter(|u| !u.is_empty()) {
        Some(spec) => match spec.split_once(':') {
            Some((user, group)) => (Some(user), Some(group)),
            None => (Some(spec), None),
        },
        None => (None, None),
    };
    let passwd = read_database(rootfs, "passwd");
    let entries = || passwd.lines().filter_map(PasswdEntry::parse);
    let (uid, entry) = match (security.run_as_user, image_user) {
        (Some(uid), _) => (uid, entries().find(|e| e.uid == uid)),
        (None, Some(user)) => match user.parse::<u32>() {
            Ok(uid) => (uid, entries().find(|e| e.uid == uid)),
            Err(_) => {
                let entry = entries().find(|e| e.name == user).ok_or_else(|| {
                    config_error(format!("unable to find user {user}: no matching entries in passwd file"))
                })?;
                (entry.uid, Some(entry))
            }
        },
        (None, None) => (0, entries().find(|e| e.uid == 0)),
    };
    let group_db = read_database(rootfs, "group");
    let groups = || group_db.lines().filter_map(GroupEntry::parse);
    let gid = match (security.run_as_group, image_group.filter(|_| security.run_as_user.is_none())) {
        (Some(gid), _) => gid,
        (None, Some(group)) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups().find(|g| g.name == group).map(|g| g.gid).ok_or_else(|| {
                config_error(format!("unable to find group {group}: no matching entries in group file"))
            })?,
        },
        (None, None) => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut additional: Vec<u32> = Vec::new();
    if let Some(entry) = &entry {
        additional.extend(groups().filter(|g| g.members.contains(&entry.name)).map(|g| g.gid));
    }
    additional.extend(&security.supplemental_groups);
    let mut seen = HashSet::new();
    additional.retain(|g| *g != gid && seen.insert(*g));
    Ok((uid, gid, additional))
}

/// `rootfs/etc/<name>`, or nothing when it is missing or reached through a symlink (an image's link must
/// not make the agent read a file of the host).
fn read_database(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    let path = etc.join(name);
    let linked = |p: &Path| p.symlink_metadata().map_or(true, |m| !m.is_file() && !m.is_dir());
    if linked(&etc) || linked(&path) {
        return String::new();
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

impl<'a> PasswdEntry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    }
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

impl<'a> GroupEntry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?.parse().ok()?;
        let members = fields.next().unwrap_or_default().split(',').filter(|m| !m.is_empty()).collect();
        Some(GroupEntry { name, gid, members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container of `true` with `security`, in `userns` when given.
    fn container(security: Security, userns: Option<skiff_shim::UserNamespace>) -> ContainerSpec {
        struct Discard;
        impl skiff_shim::OutputSink for Discard {
            fn write(&self, _: skiff_shim::Stream, _: &[u8]) {}
        }
        ContainerSpec {
            id: "c".into(),
            name: "ns/pod/c".into(),
            image: skiff_shim::Image::default(),
            argv: vec!["true".into()],
            env: vec![],
            working_dir: None,
            mounts: vec![],
            limits: skiff_shim::Limits::default(),
            ports: vec![],
            host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            netns: None,
            userns,
            egress: Default::default(),
            security,
            output: std::sync::Arc::new(Discard),
        }
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1000:1000::/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,root\n")
            .unwrap();
        dir
    }

    #[test]
    fn users_resolve_from_the_image_and_the_pod() {
        let dir = rootfs();
        let root = dir.path();
        let none = Security::default();
        assert_eq!(user(None, &none, root).unwrap(), (0, 0, vec![10]));
        assert_eq!(user(Some("app"), &none, root).unwrap(), (1000, 1000, vec![10]));
        assert_eq!(user(Some("nobody:nogroup"), &none, root).unwrap(), (65534, 65534, vec![]));
        assert_eq!(user(Some("1000:10"), &none, root).unwrap(), (1000, 10, vec![]));
        assert_eq!(user(Some("4242"), &none, root).unwrap(), (4242, 0, vec![]), "unknown ids are fine");
        assert!(user(Some("ghost"), &none, root).unwrap_err().to_string().contains("unable to find user ghost"));
        assert!(user(Some("app:ghosts"), &none, root).is_err());
        let pod = Security { run_as_user: Some(1000), supplemental_groups: vec![5, 10], ..Security::default() };
        assert_eq!(user(Some("nobody:nogroup"), &pod, root).unwrap(), (1000, 1000, vec![10, 5]));
        let pod = Security { run_as_user: Some(7), run_as_group: Some(8), ..Security::default() };
        assert_eq!(user(Some("app"), &pod, root).unwrap(), (7, 8, vec![]));
    }

    #[test]
    fn a_linked_passwd_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        assert!(user(Some("root"), &Security::default(), dir.path()).is_err());
    }

    #[test]
    fn capabilities_start_from_containerds_default_set() {
        let defaults = capabilities(&Security::default()).unwrap();
        assert_eq!(defaults.len(), DEFAULT_CAPABILITIES.len());
        assert!(defaults.contains(&Capability::NetBindService) && !defaults.contains(&Capability::SysAdmin));
        let changed = Security {
            capabilities_add: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            capabilities_drop: vec!["chown".into(), "KILL".into()],
            ..Security::default()
        };
        let set = capabilities(&changed).unwrap();
        assert!(set.contains(&Capability::NetAdmin) && set.contains(&Capability::SysTime));
        assert!(!set.contains(&Capability::Chown) && !set.contains(&Capability::Kill));
        let minimal = Security {
            capabilities_drop: vec!["ALL".into()],
            capabilities_add: vec!["NET_BIND_SERVICE".into()],
            ..Security::default()
        };
        assert_eq!(capabilities(&minimal).unwrap(), vec![Capability::NetBindService]);
        let privileged = Security { privileged: true, ..Security::default() };
        let held = (0..ALL_CAPABILITIES.len()).filter(|bit| held_capabilities() & (1 << bit) != 0).count();
        assert_eq!(capabilities(&privileged).unwrap().len(), held, "every capability the agent holds");
        let bad = Security { capabilities_add: vec!["FLY".into()], ..Security::default() };
        assert!(capabilities(&bad).unwrap_err().to_string().contains("FLY"));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let dir = rootfs();
        let mut spec = container(Security { run_as_non_root: true, ..Security::default() }, None);
        let profiles = tempfile::tempdir().unwrap();
        let mut oci = Spec::default();
        let err = apply(&mut oci, &spec, dir.path(), profiles.path()).unwrap_err();
        assert!(matches!(err, ShimError::Config(ref m) if m.contains("runAsNonRoot")), "{err}");
        spec.image.user = Some("app".into());
        apply(&mut oci, &spec, dir.path(), profiles.path()).unwrap();
        let process = oci.process().as_ref().unwrap();
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
        let linux = oci.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some() && linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".into()));
        let devices = linux.resources().as_ref().unwrap().devices().clone().unwrap();
        assert!(!devices[0].allow(), "every device denied first");
    }

    #[test]
    fn a_pod_user_namespace_refuses_ids_it_does_not_map() {
        let dir = rootfs();
        let run = |security: Security| {
            let namespace = skiff_shim::UserNamespace { path: "/ns".into(), host_id: 6_553_600, size: 65_536 };
            let spec = container(security, Some(namespace));
            let profiles = tempfile::tempdir().unwrap();
            apply(&mut Spec::default(), &spec, dir.path(), profiles.path())
        };
        let refused = |security: Security, what: &str| match run(security) {
            Err(ShimError::Config(message)) => {
                assert!(message.contains(what) && message.contains("0 to 65535"), "{message}")
            }
            other => panic!("{what} was not refused: {other:?}"),
        };
        refused(Security { run_as_user: Some(65_536), ..Security::default() }, "user 65536");
        refused(Security { run_as_user: Some(1), run_as_group: Some(70_000), ..Security::default() }, "group 70000");
        refused(
            Security { supplemental_groups: vec![5, 1 << 20], ..Security::default() },
            "supplementary group 1048576",
        );
        run(Security { run_as_user: Some(65_535), run_as_group: Some(0), ..Security::default() }).unwrap();
        run(Security { privileged: true, ..Security::default() }).unwrap();
    }

    #[test]
    fn seccomp_profiles_follow_the_security_context() {
        let dir = rootfs();
        let profiles = tempfile::tempdir().unwrap();
        std::fs::create_dir(profiles.path().join("team")).unwrap();
        let audit =
            r#"{"defaultAction": "SCMP_ACT_LOG", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#;
        std::fs::write(profiles.path().join("team/audit.json"), audit).unwrap();
        let run = |security: Security| {
            let spec = container(security, None);
            let mut oci = Spec::default();
            apply(&mut oci, &spec, dir.path(), profiles.path()).map(|()| oci.linux().clone().unwrap())
        };
        let default = run(Security::default()).unwrap().seccomp().clone().unwrap();
        assert_eq!(default.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActErrno);
        let unconfined = run(Security { seccomp: SeccompProfile::Unconfined, ..Security::default() }).unwrap();
        assert!(unconfined.seccomp().is_none());
        let local = SeccompProfile::Localhost("team/audit.json".into());
        let loaded =
            run(Security { seccomp: local.clone(), ..Security::default() }).unwrap().seccomp().clone().unwrap();
        assert_eq!(loaded.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActLog);
        let privileged = run(Security { privileged: true, seccomp: local, ..Security::default() }).unwrap();
        assert!(privileged.seccomp().is_none(), "privileged containers are unconfined");
        let devices = privileged.resources().as_ref().unwrap().devices().clone().unwrap();
        assert!(devices.len() == 1 && devices[0].allow(), "and get every device: {devices:?}");
        let missing = SeccompProfile::Localhost("team/missing.json".into());
        let err = run(Security { seccomp: missing, ..Security::default() }).unwrap_err();
        assert!(
            matches!(err, ShimError::Config(ref m) if m.starts_with("cannot load seccomp profile") && m.contains("team/missing.json")),
            "a missing profile is a configuration error: {err}"
        );
        let outside = SeccompProfile::Localhost("../audit.json".into());
        assert!(matches!(run(Security { seccomp: outside, ..Security::default() }), Err(ShimError::Config(_))));
    }
}
