//! Seccomp filters: containerd's `RuntimeDefault` profile, and profiles read from the node's profile
//! directory (`Localhost`).
//!
//! The default is an allowlist: any system call not named here fails with EPERM. It is containerd's
//! `DefaultProfile` (`contrib/seccomp/seccomp_default.go`, the same list as Docker's `default.json`), kept
//! here as data in the same shape: the calls every container may make, a few allowed only with certain
//! arguments (`socket` outside AF_ALG and AF_VSOCK, the harmless `personality` values), the calls of the
//! native architecture, and more for each capability the container holds (`mount`, `unshare`, `setns`,
//! `bpf`, namespace flags of `clone` only with CAP_SYS_ADMIN, `ptrace` family with CAP_SYS_PTRACE, ...).
//! Left out altogether, as there: io_uring, the kernel keyring (`keyctl`, `add_key`, `request_key`),
//! `userfaultfd`, `kexec_*`, swap, `uselib`, and every system call newer than the list. `clone3` fails with
//! ENOSYS rather than EPERM without CAP_SYS_ADMIN (its flags are in memory a filter cannot read), so
//! glibc falls back to `clone`, whose flags the filter checks.
//!
//! Names the node's libseccomp does not know (calls newer than it) are left out of the written spec:
//! libcontainer skips them anyway, with a warning in the container's init, whose stderr is by then the
//! container's own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    LinuxSyscall,
};
use serde::Deserialize;
use skiff_shim::ShimError;

/// Allowed for every container (containerd's unconditional list, in its order).
const ALLOWED: &str = "
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat
exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue
futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid
getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr getxattrat
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents
io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules
lsm_set_self_attr lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
mknodat mlock mlock2 mlockall map_shadow_stack mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64
send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
";

/// One rule allowing `name` when argument `index` compares to `value` with `op`. Two conditions on one
/// argument in one rule would be OR-ed by libcontainer (as by runc), so each range is a rule of its own.
struct Conditional {
    name: &'static str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
}

/// `socket` for every address family but AF_ALG (the kernel's crypto API) and AF_VSOCK (the host's
/// hypervisor sockets): below AF_ALG, between the two, above AF_VSOCK. On socketcall ABIs (32-bit x86)
/// `socketcall`, allowed above, is not filtered by family, as in containerd. Then the `personality` values
/// containerd allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
const CONDITIONAL: [Conditional; 8] = [
    Conditional { name: "socket", index: 0, op: LinuxSeccompOperator::ScmpCmpLt, value: libc::AF_ALG as u64 },
    Conditional { name: "socket", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: libc::AF_ALG as u64 + 1 },
    Conditional { name: "socket", index: 0, op: LinuxSeccompOperator::ScmpCmpGt, value: libc::AF_VSOCK as u64 },
    Conditional { name: "personality", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: 0x0 },
    Conditional { name: "personality", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: 0x0008 },
    Conditional { name: "personality", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: 0x20000 },
    Conditional { name: "personality", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: 0x20008 },
    Conditional { name: "personality", index: 0, op: LinuxSeccompOperator::ScmpCmpEq, value: 0xffff_ffff },
];

/// Allowed from Linux 4.8 on, where seccomp checks a call again after a tracer changed it (before, ptrace
/// could walk around any filter).
const SINCE_LINUX_4_8: [&str; 3] = ["process_vm_readv", "process_vm_writev", "ptrace"];

/// Allowed when the container's bounding set holds the capability that gives the call its power.
const BY_CAPABILITY: [(Capability, &[&str]); 14] = [
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// What the default profile knows of the machine it runs on.
struct Platform {
    /// The ABIs the filter covers: the native one and those the same kernel runs (32-bit x86 and x32 on
    /// x86_64). Others are killed by libseccomp's bad-architecture action.
    arches: &'static [Arch],
    /// Calls only this architecture has.
    calls: &'static [&'static str],
    /// Which argument of `clone` holds its flags (the second on s390, which swaps the first two).
    clone_flags_index: usize,
    /// Go's name of the architecture, which Docker profiles use in `includes`/`excludes`.
    go_arch: &'static str,
}

/// containerd's `arches()` and per-architecture additions, by Rust's name of the target architecture. An
/// architecture not listed gets no `architectures` (the native one only) and no extra calls.
fn platform() -> Platform {
    let arm: &[&str] =
        &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"];
    let (arches, calls, go_arch): (&[Arch], &[&str], &str) = match std::env::consts::ARCH {
        "x86_64" => {
            (&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32], &["arch_prctl", "modify_ldt"], "amd64")
        }
        "x86" => (&[], &["modify_ldt"], "386"),
        "aarch64" => (&[Arch::ScmpArchArm, Arch::ScmpArchAarch64], arm, "arm64"),
        "arm" => (&[], arm, "arm"),
        "powerpc64" if cfg!(target_endian = "little") => (&[], &["sync_file_range2", "swapcontext"], "ppc64le"),
        "s390x" => (
            &[Arch::ScmpArchS390, Arch::ScmpArchS390x],
            &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
            "s390x",
        ),
        "riscv64" => (&[Arch::ScmpArchRiscv64], &["riscv_flush_icache", "riscv_hwprobe"], "riscv64"),
        "loongarch64" => (&[Arch::ScmpArchLoongarch64], &[], "loong64"),
        "mips64" if cfg!(target_endian = "little") => {
            (&[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64, Arch::ScmpArchMipsel64n32], &[], "mips64le")
        }
        "mips64" => (&[Arch::ScmpArchMips, Arch::ScmpArchMips64, Arch::ScmpArchMips64n32], &[], "mips64"),
        other => (&[], &[], other),
    };
    let clone_flags_index = if std::env::consts::ARCH == "s390x" { 1 } else { 0 };
    Platform { arches, calls, clone_flags_index, go_arch }
}

fn build_error(e: oci_spec::OciSpecError) -> ShimError {
    ShimError::Setup { message: format!("cannot build the seccomp filter: {e}"), source: None }
}

/// Whether the node's libseccomp knows the call on any of its architectures.
fn known(name: &str) -> bool {
    libseccomp::ScmpSyscall::from_name(name).is_ok()
}

/// The running kernel's version (major, minor), read once.
fn kernel() -> Option<(u32, u32)> {
    static KERNEL: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *KERNEL.get_or_init(|| parse_version(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?))
}

/// `6.18.44-fc` or `4.8` → (6, 18) or (4, 8).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next().and_then(|m| m.parse().ok()).unwrap_or(0)))
}

fn allow(names: Vec<String>) -> Result<LinuxSyscall, ShimError> {
    oci_spec::runtime::LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(build_error)
}

fn condition(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSeccompArg, ShimError> {
    let arg = oci_spec::runtime::LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    match value_two {
        Some(two) => arg.value_two(two),
        None => arg,
    }
    .build()
    .map_err(build_error)
}

/// containerd's default profile for a container whose bounding set is `capabilities`.
pub(crate) fn runtime_default(capabilities: &[Capability]) -> Result<LinuxSeccomp, ShimError> {
    let platform = platform();
    let held = |capability: &Capability| capabilities.contains(capability);
    let mut names: Vec<&str> = ALLOWED.split_whitespace().collect();
    if kernel().is_none_or(|version| version >= (4, 8)) {
        names.extend(SINCE_LINUX_4_8);
    }
    names.extend(platform.calls);
    for (capability, calls) in &BY_CAPABILITY {
        if held(capability) {
            names.extend(calls.iter());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(*name) && known(name));
    let mut syscalls = vec![allow(names.into_iter().map(str::to_owned).collect())?];
    for rule in &CONDITIONAL {
        let mut syscall = allow(vec![rule.name.to_owned()])?;
        syscall.set_args(Some(vec![condition(rule.index, rule.op, rule.value, None)?]));
        syscalls.push(syscall);
    }
    if !held(&Capability::SysAdmin) {
        // (flags & namespace flags) == 0: a plain fork or thread, never a new namespace.
        let mut clone = allow(vec!["clone".to_owned()])?;
        let flags = condition(
            platform.clone_flags_index,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        )?;
        clone.set_args(Some(vec![flags]));
        syscalls.push(clone);
        let clone3 = oci_spec::runtime::LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .map_err(build_error)?;
        syscalls.push(clone3);
    }
    let mut profile = oci_spec::runtime::LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .map_err(build_error)?;
    if !platform.arches.is_empty() {
        profile.set_architectures(Some(platform.arches.to_vec()));
    }
    Ok(profile)
}

/// A profile file, in the OCI runtime spec's form (`linux.seccomp`, what containerd reads) or Docker's
/// (which adds `archMap`, `name`, and `includes`/`excludes` by capability, architecture and kernel).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    listener_path: Option<PathBuf>,
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Vec<ProfileSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileSyscall {
    #[serde(default)]
    names: Vec<String>,
    name: Option<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// Docker's conditions on a rule: all of `includes` must hold, none of `excludes`.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// Reads the `Localhost` profile `path` for a container whose bounding set is `capabilities`. A missing or
/// unreadable file is the container's configuration error (CreateContainerConfigError), as is one that is
/// not a profile.
pub(crate) fn localhost(path: &Path, capabilities: &[Capability]) -> Result<LinuxSeccomp, ShimError> {
    let text = std::fs::read(path)
        .map_err(|e| ShimError::Config(format!("cannot load seccomp profile {}: {e}", path.display())))?;
    let file: ProfileFile = serde_json::from_slice(&text)
        .map_err(|e| ShimError::Config(format!("seccomp profile {} is not valid: {e}", path.display())))?;
    let invalid =
        |message: &str| ShimError::Config(format!("seccomp profile {} is not valid: {message}", path.display()));
    if !file.architectures.is_empty() && !file.arch_map.is_empty() {
        return Err(invalid("it names both architectures and archMap"));
    }
    let platform = platform();
    let native = platform.arches.first().copied();
    let mut arches = file.architectures;
    for map in file.arch_map.into_iter().filter(|m| Some(m.architecture) == native) {
        arches.push(map.architecture);
        arches.extend(map.sub_architectures);
    }
    let holds = |name: &String| {
        crate::security::parse_capability(name).is_ok_and(|capability| capabilities.contains(&capability))
    };
    let at_least = |version: &Option<String>| {
        version.as_deref().and_then(parse_version).is_some_and(|min| kernel().is_some_and(|k| k >= min))
    };
    let mut syscalls = Vec::new();
    for rule in file.syscalls {
        let excluded = rule.excludes.caps.iter().any(holds)
            || rule.excludes.arches.iter().any(|a| a == platform.go_arch)
            || at_least(&rule.excludes.min_kernel);
        let included = rule.includes.caps.iter().all(holds)
            && (rule.includes.arches.is_empty() || rule.includes.arches.iter().any(|a| a == platform.go_arch))
            && (rule.includes.min_kernel.is_none() || at_least(&rule.includes.min_kernel));
        if excluded || !included {
            continue;
        }
        let mut names = rule.names;
        match rule.name {
            Some(_) if !names.is_empty() => return Err(invalid("a rule names both name and names")),
            Some(name) => names.push(name),
            None => {}
        }
        names.retain(|name| known(name));
        if names.is_empty() {
            continue;
        }
        let mut syscall = oci_spec::runtime::LinuxSyscallBuilder::default()
            .names(names)
            .action(rule.action)
            .build()
            .map_err(build_error)?;
        syscall.set_errno_ret(rule.errno_ret);
        syscall.set_args((!rule.args.is_empty()).then_some(rule.args));
        syscalls.push(syscall);
    }
    let mut profile = oci_spec::runtime::LinuxSeccompBuilder::default()
        .default_action(file.default_action)
        .build()
        .map_err(build_error)?;
    profile.set_default_errno_ret(file.default_errno_ret);
    profile.set_architectures((!arches.is_empty()).then_some(arches));
    profile.set_flags((!file.flags.is_empty()).then_some(file.flags));
    profile.set_listener_path(file.listener_path);
    profile.set_listener_metadata(file.listener_metadata);
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_unconditionally(profile: &LinuxSeccomp) -> Vec<String> {
        let syscalls = profile.syscalls().clone().unwrap_or_default();
        let allow = syscalls.iter().filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none());
        allow.flat_map(|s| s.names().clone()).collect()
    }

    fn rules_for<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        profile.syscalls().as_ref().unwrap().iter().filter(|s| s.names().iter().any(|n| n == name)).collect()
    }

    #[test]
    fn the_default_profile_is_containerds_allowlist() {
        let profile = runtime_default(&[Capability::Chown, Capability::SysChroot]).unwrap();
        assert_eq!(
            (profile.default_action(), profile.default_errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(1))
        );
        let allowed = allowed_unconditionally(&profile);
        for call in ["read", "write", "openat", "execve", "fork", "futex", "mmap", "wait4", "chroot", "ptrace"] {
            assert!(allowed.iter().any(|n| n == call), "{call} is allowed");
        }
        let refused = [
            "io_uring_setup",
            "io_uring_enter",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "open_by_handle_at",
            "kexec_load",
            "reboot",
            "init_module",
            "userfaultfd",
            "swapon",
            "clone",
            "clone3",
            "personality",
            "socket",
            "acct",
        ];
        for call in refused {
            assert!(!allowed.iter().any(|n| n == call), "{call} is not allowed unconditionally");
        }
        if std::env::consts::ARCH == "x86_64" {
            assert!(allowed.iter().any(|n| n == "arch_prctl"));
            let arches = profile.architectures().clone().unwrap();
            assert_eq!(arches, [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]);
        }
        assert!(allowed.iter().all(|name| known(name)), "only names libseccomp knows are written");

        // clone only without namespace flags: (flags & CLONE_NEW*) == 0; clone3 says ENOSYS.
        let clone = rules_for(&profile, "clone");
        let [rule] = clone.as_slice() else { panic!("one clone rule: {clone:?}") };
        let args = rule.args().clone().unwrap();
        assert_eq!(args.len(), 1);
        assert_eq!((args[0].index(), args[0].op()), (0, LinuxSeccompOperator::ScmpCmpMaskedEq));
        assert_eq!((args[0].value(), args[0].value_two()), (CLONE_NAMESPACE_FLAGS, Some(0)));
        assert!(CLONE_NAMESPACE_FLAGS & libc::CLONE_NEWUSER as u64 != 0);
        let clone3 = rules_for(&profile, "clone3");
        assert_eq!((clone3[0].action(), clone3[0].errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));

        let socket = rules_for(&profile, "socket");
        assert_eq!(socket.len(), 3, "three ranges around AF_ALG and AF_VSOCK");
        let personality: Vec<u64> =
            rules_for(&profile, "personality").iter().map(|r| r.args().clone().unwrap()[0].value()).collect();
        assert_eq!(personality, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn capabilities_bring_their_calls() {
        let admin = runtime_default(&[Capability::SysAdmin]).unwrap();
        let allowed = allowed_unconditionally(&admin);
        for call in ["mount", "unshare", "setns", "clone", "bpf", "sethostname"] {
            assert!(allowed.iter().any(|n| n == call), "{call} with SYS_ADMIN");
        }
        assert_eq!(rules_for(&admin, "clone").len(), 1, "no condition on clone with SYS_ADMIN");
        assert!(rules_for(&admin, "clone3").iter().all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        let ptrace = allowed_unconditionally(&runtime_default(&[Capability::SysPtrace]).unwrap());
        assert!(ptrace.iter().any(|n| n == "kcmp") && ptrace.iter().any(|n| n == "pidfd_getfd"));
        let time = allowed_unconditionally(&runtime_default(&[Capability::SysTime]).unwrap());
        assert!(time.iter().any(|n| n == "settimeofday") && !time.iter().any(|n| n == "mount"));
        let names = allowed_unconditionally(&runtime_default(&[Capability::SysAdmin, Capability::Syslog]).unwrap());
        assert_eq!(names.iter().filter(|n| *n == "syslog").count(), 1, "each name once");
    }

    #[test]
    fn localhost_profiles_load_in_oci_and_docker_form() {
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci.json");
        std::fs::write(
            &oci,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                             {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let profile = localhost(&oci, &[]).unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let syscalls = profile.syscalls().clone().unwrap();
        assert_eq!(syscalls[0].names(), &["mkdir", "mkdirat"], "unknown names are left out");
        assert_eq!(syscalls[0].errno_ret(), Some(13));
        assert_eq!(syscalls[1].args().as_ref().unwrap()[0].value(), 8);

        // Docker's form: archMap, `name`, includes and excludes by capability, architecture and kernel.
        let docker = dir.path().join("docker.json");
        let native = serde_json::to_value(platform().arches.first().copied().unwrap_or(Arch::ScmpArchX86_64)).unwrap();
        let go_arch = platform().go_arch;
        std::fs::write(
            &docker,
            serde_json::json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "archMap": [{"architecture": native, "subArchitectures": ["SCMP_ARCH_X86"]},
                            {"architecture": "SCMP_ARCH_PPC64LE", "subArchitectures": []}],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                    {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
                    {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": [go_arch]}},
                    {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["sparc"]}},
                    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                    {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
                    {"names": ["sync"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "999.0"}},
                ],
            })
            .to_string(),
        )
        .unwrap();
        let profile = localhost(&docker, &[Capability::SysChroot]).unwrap();
        let mut allowed = allowed_unconditionally(&profile);
        allowed.sort();
        assert_eq!(allowed, ["chroot", "getpid", "ptrace", "read", "sync", "write"]);
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(profile.architectures().clone().unwrap(), [Arch::ScmpArchX86_64, Arch::ScmpArchX86]);
        }

        let missing = localhost(&dir.path().join("missing.json"), &[]).unwrap_err();
        assert!(matches!(missing, ShimError::Config(ref m) if m.contains("cannot load seccomp profile")), "{missing}");
        std::fs::write(dir.path().join("bad.json"), "{\"syscalls\": []}").unwrap();
        let bad = localhost(&dir.path().join("bad.json"), &[]).unwrap_err();
        assert!(matches!(bad, ShimError::Config(ref m) if m.contains("not valid")), "{bad}");
    }

    /// Runs `check` in a forked child under `profile` (with no_new_privs, so no privilege is needed) and
    /// returns its exit code.
    fn run_confined(profile: &LinuxSeccomp, check: fn() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and allocates (glibc's fork resets malloc's locks),
        // takes no lock of Rust's and ends with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain system calls on no memory of ours.
                let code = unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        libc::_exit(100);
                    }
                    if libcontainer::seccomp::initialize_seccomp(profile).is_err() {
                        libc::_exit(101);
                    }
                    check()
                };
                // SAFETY: ends the child without running the parent's exit-time code.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("the confined child ended with {other:?}"),
            },
        }
    }

    /// The error a raw system call ended with, or 0.
    fn errno(result: libc::c_long) -> i32 {
        if result < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 }
    }

    /// `clone(flags | SIGCHLD)` without a new stack: like fork, the new child returns 0 and leaves at once.
    fn clone(flags: libc::c_int) -> i32 {
        // SAFETY: a fork-like clone; the child only calls _exit.
        let result = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_long, 0, 0, 0, 0) };
        if result == 0 {
            // SAFETY: ends the new child.
            unsafe { libc::_exit(0) }
        }
        errno(result)
    }

    /// The checks, each an (expected errno, result) pair; the child exits with the number of the first that
    /// fails (from 1), or 0.
    fn kernel_checks() -> i32 {
        // SAFETY: system calls with null pointers or sizes, which the filter refuses before the kernel reads
        // anything, or which fail harmlessly; sockets and personalities are left to the child's exit.
        let results = unsafe {
            [
                (0, errno(libc::syscall(libc::SYS_getpid))),
                (0, clone(0)),
                (libc::EPERM, clone(libc::CLONE_NEWUSER)),
                (libc::EPERM, clone(libc::CLONE_NEWNET)),
                (libc::ENOSYS, errno(libc::syscall(libc::SYS_clone3, 0, 0))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_io_uring_setup, 1, 0))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_bpf, 0, 0, 0))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_socket, libc::AF_ALG, libc::SOCK_SEQPACKET, 0))),
                (0, errno(libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0))),
                (0, errno(libc::syscall(libc::SYS_personality, 0xffff_ffff_u64))),
                (libc::EPERM, errno(libc::syscall(libc::SYS_personality, libc::ADDR_NO_RANDOMIZE))),
            ]
        };
        results.iter().position(|(want, got)| want != got).map_or(0, |i| i as i32 + 1)
    }

    #[test]
    fn the_default_profile_holds_in_a_process() {
        let profile = runtime_default(&[Capability::Chown, Capability::Kill]).unwrap();
        // Built by libseccomp in the child, then as the program the parent compiled ahead.
        assert_eq!(run_confined(&profile, kernel_checks), 0, "the number of the failed check in kernel_checks");
        libcontainer::seccomp::precompile(&profile).unwrap();
        assert_eq!(run_confined(&profile, kernel_checks), 0, "precompiled: the number of the failed check");
        // Positive control: the same checks fail unconfined (namespaces and io_uring work, or fail otherwise).
        let open = oci_spec::runtime::LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![])
            .build()
            .unwrap();
        assert_ne!(run_confined(&open, kernel_checks), 0);
    }
}
