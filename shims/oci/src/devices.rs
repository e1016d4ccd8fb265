//! Which devices a container may use: the device cgroup's rules in the spec (`linux.resources.devices`) and,
//! for privileged containers, the host's device nodes (`linux.devices`).
//!
//! A container is denied every device, then allowed the standard character devices runc allows every
//! container (`AllowedDevices`, libcontainer/specconv/spec_linux.go: null, zero, full, random, urandom,
//! tty, ptmx and /dev/pts/*, /dev/net/tun, and mknod of any device) and containerd's default
//! `/dev/console` (`WithDefaultUnixDevices`, pkg/oci/spec_opts.go); containerd writes the deny first
//! (pkg/oci/spec.go) and runc appends the rest. So root in a container can make a node for the host's disk
//! (`mknod`, with CAP_MKNOD) but not open it. A privileged container gets every device and the host's
//! `/dev` nodes, as containerd gives it (`WithHostDevices`, `WithAllDevicesAllowed`).
//!
//! On cgroup v1 libcgroups writes these rules to `devices.deny`/`devices.allow` (and appends its own
//! copy of the standard ones). On v2 the kernel enforces device rules only through an eBPF program, which
//! libcgroups builds from them and attaches to the container's cgroup (its `cgroupsv2_devices` feature).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Spec};

/// Allowed to every container after the deny-all: (type, major, minor, access), `None` for any number.
const ALLOWED: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 12] = [
    // mknod of any node; opening one needs a rule below.
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),    // /dev/null
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),    // /dev/random
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),    // /dev/full
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),    // /dev/tty
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),    // /dev/zero
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),    // /dev/urandom
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"),    // /dev/console
    (LinuxDeviceType::C, Some(136), None, "rwm"),     // /dev/pts/*
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),    // /dev/ptmx
    (LinuxDeviceType::C, Some(10), Some(200), "rwm"), // /dev/net/tun (runc keeps it for compatibility)
];

/// Directories of the host's `/dev` that hold no device a container should get (runc's and containerd's
/// list: mounts the container has its own of, and container managers' private directories).
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow);
    rule.set_typ(typ);
    rule.set_major(major);
    rule.set_minor(minor);
    rule.set_access(Some(access.to_owned()));
    rule
}

/// The device cgroup rules: deny all, then the standard devices; privileged, everything.
pub(crate) fn rules(privileged: bool) -> Vec<LinuxDeviceCgroup> {
    if privileged {
        return vec![rule(true, Some(LinuxDeviceType::A), None, None, "rwm")];
    }
    let allowed = ALLOWED.iter().map(|&(typ, major, minor, access)| rule(true, Some(typ), major, minor, access));
    std::iter::once(rule(false, Some(LinuxDeviceType::A), None, None, "rwm")).chain(allowed).collect()
}

/// Sets the device rules of `oci`, and for a privileged container the host's device nodes.
pub(crate) fn apply(oci: &mut Spec, privileged: bool) {
    let Some(linux) = oci.linux_mut() else { return };
    if privileged {
        linux.set_devices(Some(host_devices(Path::new("/dev"))));
    }
    if let Some(resources) = linux.resources_mut() {
        resources.set_devices(Some(rules(privileged)));
    }
}

/// The character and block devices under `dir` (a host's `/dev`), as runc's `GetDevices` finds them:
/// no symlinks, no FIFOs, not `console` (the container's is its own) nor the skipped directories. Nor
/// `ptmx`, which runc's `createDevices` skips too: libcontainer replaces it with a link to the container's
/// own `pts/ptmx`, and in a user namespace, where the host's nodes are bind-mounted, a mounted one could
/// not be replaced (EBUSY) and the container would not start.
fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let ptmx = dir.join("ptmx");
    let mut devices = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let (path, name) = (entry.path(), entry.file_name());
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let file_type = meta.file_type();
            if file_type.is_dir() {
                if !SKIPPED_DIRS.iter().any(|skipped| name == *skipped) {
                    pending.push(path);
                }
                continue;
            }
            let typ = if file_type.is_char_device() {
                LinuxDeviceType::C
            } else if file_type.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if name == "console" || path == ptmx {
                continue;
            }
            devices.push(device(path, typ, &meta));
        }
    }
    devices.sort_by(|a, b| a.path().cmp(b.path()));
    devices
}

fn device(path: PathBuf, typ: LinuxDeviceType, meta: &std::fs::Metadata) -> LinuxDevice {
    let rdev = meta.rdev();
    let mut device = LinuxDevice::default();
    device.set_path(path);
    device.set_typ(typ);
    device.set_major(i64::from(libc::major(rdev)));
    device.set_minor(i64::from(libc::minor(rdev)));
    device.set_file_mode(Some(meta.mode() & 0o7777));
    device.set_uid(Some(meta.uid()));
    device.set_gid(Some(meta.gid()));
    device
}

#[cfg(test)]
mod tests {
    use LinuxDeviceType::{B, C};
    use libcgroups::v2::devices::emulator::Emulator;
    use libcgroups::v2::devices::program::Program;

    use super::*;

    /// The cgroup v2 verdict on an access ("r", "w", "m" or a mix) to a device for a container: the eBPF
    /// program libcgroups builds from the device rules `apply` writes in its spec and attaches
    /// (`Devices::apply_devices`: deny by default, the rules through its emulator, `Program::from_rules`), run
    /// in rbpf's interpreter, as this host's cgroups are v1. libcgroups appends its own copy of the standard
    /// devices there, all of them in `ALLOWED`.
    fn v2_filter(privileged: bool) -> impl Fn(LinuxDeviceType, u32, u32, &str) -> bool {
        let mut spec = Spec::default();
        apply(&mut spec, privileged);
        let rules = spec.linux().as_ref().unwrap().resources().as_ref().unwrap().devices().clone().unwrap();
        let mut emulator = Emulator::with_default_allow(false);
        emulator.add_rules(&rules);
        let program = Program::from_rules(&emulator.rules, emulator.default_allow).expect("the filter builds");
        move |typ, major, minor, access| {
            program.execute(typ, major, minor, access.to_owned()).expect("the filter runs") == 1
        }
    }

    /// Devices with the accesses a container is allowed and denied on them.
    const VERDICTS: [(LinuxDeviceType, u32, u32, &str, &str); 17] = [
        (B, 8, 0, "m", "rw"),    // the host's disk, /dev/sda: a node can be made (`b *:* m`), not opened
        (B, 8, 1, "m", "rw"),    // and its first partition
        (B, 259, 0, "m", "rw"),  // /dev/nvme0n1
        (C, 1, 3, "rwm", ""),    // /dev/null
        (C, 1, 5, "rwm", ""),    // /dev/zero
        (C, 1, 7, "rwm", ""),    // /dev/full
        (C, 1, 8, "rwm", ""),    // /dev/random
        (C, 1, 9, "rwm", ""),    // /dev/urandom
        (C, 5, 0, "rwm", ""),    // /dev/tty
        (C, 5, 1, "rwm", ""),    // /dev/console
        (C, 5, 2, "rwm", ""),    // /dev/ptmx
        (C, 136, 0, "rwm", ""),  // /dev/pts/0
        (C, 136, 42, "rwm", ""), // and any other
        (C, 10, 200, "rwm", ""), // /dev/net/tun
        (C, 1, 1, "m", "rw"),    // /dev/mem
        (C, 10, 232, "m", "rw"), // /dev/kvm
        (C, 4, 1, "m", "rw"),    // /dev/tty1, a host console
    ];

    #[test]
    fn the_v2_device_filter_opens_only_the_standard_devices() {
        let allows = v2_filter(false);
        for (typ, major, minor, allowed, denied) in VERDICTS {
            for access in allowed.chars().map(String::from) {
                assert!(allows(typ, major, minor, &access), "{typ:?} {major}:{minor} {access} is allowed");
            }
            for access in denied.chars().map(String::from) {
                assert!(!allows(typ, major, minor, &access), "{typ:?} {major}:{minor} {access} is denied");
            }
        }
        // An open for reading and writing asks for both at once.
        assert!(allows(C, 1, 3, "rw") && !allows(B, 8, 0, "rw") && !allows(B, 8, 0, "rwm"));

        let privileged = v2_filter(true);
        for (typ, major, minor, ..) in VERDICTS {
            assert!(privileged(typ, major, minor, "rwm"), "{typ:?} {major}:{minor} is a privileged container's");
        }
    }

    #[test]
    fn containers_are_denied_every_device_but_the_standard_ones() {
        let rules: Vec<String> = rules(false).iter().map(|r| format!("{} {r}", r.allow())).collect();
        assert_eq!(rules[0], "false a *:* rwm", "deny all first");
        for allowed in ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm"] {
            assert!(rules.contains(&format!("true {allowed}")), "{allowed}: {rules:?}");
        }
        assert!(rules.contains(&"true c 136:* rwm".to_owned()) && rules.contains(&"true b *:* m".to_owned()));
        let block_read = |r: &&String| r.starts_with("true b") && r.rsplit(' ').next().is_some_and(|a| a.contains('r'));
        assert!(!rules.iter().any(|r| block_read(&r)), "no block device opened: {rules:?}");
        assert_eq!(
            super::rules(true).iter().map(|r| format!("{} {r}", r.allow())).collect::<Vec<_>>(),
            ["true a *:* rwm"]
        );
    }

    #[test]
    fn privileged_containers_get_the_hosts_device_nodes() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices.iter().find(|d| d.path() == Path::new("/dev/null")).expect("/dev/null is a device");
        assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
        let own = |path: &Path| {
            path.starts_with("/dev/pts") || path == Path::new("/dev/console") || path == Path::new("/dev/ptmx")
        };
        assert!(!devices.iter().any(|d| own(d.path())), "the container's own nodes are not the host's");
        let mut spec = Spec::default();
        apply(&mut spec, false);
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.devices().is_none(), "only the runtime's own nodes");
        assert_eq!(linux.resources().as_ref().unwrap().devices().as_ref().unwrap().len(), ALLOWED.len() + 1);
    }
}
