//! The OCI runtime spec (`config.json`) of a container.

use std::path::Path;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount as OciMount, MountBuilder,
    Spec,
};
use skiff_shim::{ContainerSpec, ShimError};

/// The CFS period the CPU quota is expressed in (the kernel's and the kubelet's default, 100 ms).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts (1 ms).
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// Used when neither the container nor the image sets PATH, as containerd and the Docker engine do.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The cgroup a container gets, relative to each hierarchy's root. Set explicitly: without it youki makes
/// `:youki:<id>` directories under every v1 controller of a hybrid host.
pub(crate) fn cgroups_path(id: &str) -> String {
    format!("/skiff/{id}")
}

fn invalid_spec(what: &str, e: impl std::fmt::Display) -> ShimError {
    ShimError::Setup { message: format!("cannot build the runtime spec ({what}): {e}"), source: None }
}

/// The process's argv: the spec's, else the image's entrypoint and cmd.
pub(crate) fn argv(spec: &ContainerSpec) -> Result<Vec<String>, ShimError> {
    let argv = if spec.argv.is_empty() {
        spec.image.entrypoint.iter().chain(&spec.image.cmd).cloned().collect()
    } else {
        spec.argv.clone()
    };
    if argv.is_empty() {
        return Err(ShimError::InvalidImage(format!(
            "image {} has no entrypoint or cmd and the container names no command",
            spec.image.reference
        )));
    }
    Ok(argv)
}

/// The image's environment overridden by the container's, with a default PATH.
pub(crate) fn env(spec: &ContainerSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let image = spec.image.env.iter().map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k.to_owned(), v.to_owned()),
        None => (kv.clone(), String::new()),
    });
    for (key, value) in image.chain(spec.env.iter().cloned()) {
        match env.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => env.push((key, value)),
        }
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.push(DEFAULT_PATH.to_owned());
    }
    out
}

/// Builds the runtime spec for `spec`, whose root filesystem is `rootfs` and whose bind mounts are `mounts`
/// (the spec's, or id-mapped copies of their sources where the container has its pod's user namespace).
pub(crate) fn runtime_spec(
    spec: &ContainerSpec,
    rootfs: &Path,
    mounts: &[skiff_shim::Mount],
) -> Result<Spec, ShimError> {
    let mut oci = Spec::default();
    if let Some(root) = oci.root_mut() {
        root.set_path(rootfs.to_path_buf()).set_readonly(Some(false));
    }
    // The pod's name, as the kubelet sets it.
    let hostname = spec.name.split('/').nth(1).filter(|p| !p.is_empty()).unwrap_or(&spec.id);
    oci.set_hostname(Some(hostname.to_owned()));

    let cwd = spec.working_dir.clone().or_else(|| spec.image.working_dir.clone()).filter(|d| !d.is_empty());
    let cwd = cwd.unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(ShimError::Setup {
            message: format!("the working directory {cwd:?} is not absolute"),
            source: None,
        });
    }
    if let Some(process) = oci.process_mut() {
        process.set_args(Some(argv(spec)?));
        process.set_env(Some(env(spec)));
        process.set_cwd(cwd.into());
    }

    let mut oci_mounts = oci.mounts().clone().unwrap_or_default();
    if spec.userns.is_some() && spec.netns.is_none() {
        // sysfs can only be mounted from a user namespace that owns the network namespace, and the host's
        // is not the pod's: the host's /sys is bound read-only instead, as runc and oci-spec's rootless
        // mounts do.
        for sys in oci_mounts.iter_mut().filter(|m| m.destination() == Path::new("/sys")) {
            sys.set_typ(Some("none".into())).set_source(Some("/sys".into()));
            let options = ["rbind", "nosuid", "noexec", "nodev", "ro"];
            sys.set_options(Some(options.map(String::from).to_vec()));
        }
    }
    for mount in mounts {
        oci_mounts.push(bind_mount(mount)?);
    }
    oci.set_mounts(Some(oci_mounts));

    if let Some(linux) = oci.linux_mut() {
        // The pod's network namespace is joined by path (all its containers share it); without one the
        // container shares the host network. The host's cgroup view is kept: the v1 hierarchy of a hybrid
        // host needs no namespace.
        let keep =
            [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts];
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        let mut namespaces: Vec<_> = namespaces.into_iter().filter(|ns| keep.contains(&ns.typ())).collect();
        // The pod's user namespace is joined by path with no id mappings of libcontainer's: it joins it
        // first, as the host's root, then makes or joins the others from inside it, so the pod's network
        // namespace (which the node made from inside it) is one it owns. File ownership comes from the
        // id-mapped mounts of the root and the volumes (`idmap`), not from libcontainer, which refuses them.
        if let Some(userns) = &spec.userns {
            let user = LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .path(userns.path.clone())
                .build()
                .map_err(|e| invalid_spec("user namespace", e))?;
            namespaces.push(user);
        }
        if let Some(netns) = &spec.netns {
            let network = LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns.clone())
                .build()
                .map_err(|e| invalid_spec("network namespace", e))?;
            namespaces.push(network);
        }
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(Some(cgroups_path(&spec.id).into()));
        if let Some(resources) = linux.resources_mut() {
            if let Some(bytes) = spec.limits.memory_bytes {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                // swap = memory + swap: equal to the limit means no swap, so going over is an OOM kill.
                let memory = LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .swap(bytes)
                    .build()
                    .map_err(|e| invalid_spec("memory", e))?;
                resources.set_memory(Some(memory));
            }
            if let Some(millis) = spec.limits.cpu_millis {
                let quota = i64::try_from(millis.saturating_mul(CPU_PERIOD_US) / 1000).unwrap_or(i64::MAX);
                let cpu = LinuxCpuBuilder::default()
                    .quota(quota.max(MIN_CPU_QUOTA_US))
                    .period(CPU_PERIOD_US)
                    .build()
                    .map_err(|e| invalid_spec("cpu", e))?;
                resources.set_cpu(Some(cpu));
            }
        }
    }
    Ok(oci)
}

fn bind_mount(mount: &skiff_shim::Mount) -> Result<OciMount, ShimError> {
    if !mount.container_path.starts_with('/') {
        return Err(ShimError::Setup {
            message: format!("the mount path {:?} is not absolute", mount.container_path),
            source: None,
        });
    }
    let mode = if mount.read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(&mount.container_path)
        .typ("bind")
        .source(&mount.host_path)
        .options(vec!["rbind".to_owned(), mode.to_owned()])
        .build()
        .map_err(|e| invalid_spec("mount", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_shim::{Image, Limits, Mount, OutputSink, Stream};
    use std::sync::Arc;

    struct Discard;
    impl OutputSink for Discard {
        fn write(&self, _: Stream, _: &[u8]) {}
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            name: "ns/pod-a/app".into(),
            image: Image {
                entrypoint: vec!["/bin/sh".into()],
                cmd: vec!["-c".into(), "true".into()],
                env: vec!["A=image".into(), "B=image".into()],
                working_dir: Some("/srv".into()),
                ..Image::default()
            },
            argv: vec![],
            env: vec![("B".into(), "container".into())],
            working_dir: None,
            mounts: vec![Mount { host_path: "/data".into(), container_path: "/mnt".into(), read_only: true }],
            limits: Limits {
                memory_bytes: Some(32 << 20),
                cpu_millis: Some(250),
                cpu_request_millis: Some(500),
                ..Limits::default()
            },
            ports: vec![],
            host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            netns: None,
            userns: None,
            egress: Default::default(),
            security: Default::default(),
            output: Arc::new(Discard),
        }
    }

    #[test]
    fn the_spec_carries_process_mounts_and_limits() {
        let oci = runtime_spec(&spec(), Path::new("/run/c/rootfs"), &spec().mounts).unwrap();
        let process = oci.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/bin/sh", "-c", "true"]);
        let env = process.env().as_ref().unwrap();
        assert!(env.contains(&"A=image".to_owned()) && env.contains(&"B=container".to_owned()));
        assert!(!env.contains(&"B=image".to_owned()));
        assert!(env.iter().any(|kv| kv.starts_with("PATH=")));
        assert_eq!(process.cwd().to_str(), Some("/srv"));
        assert_eq!(oci.hostname().as_deref(), Some("pod-a"));
        let root = oci.root().as_ref().unwrap();
        assert_eq!((root.path().to_str(), root.readonly()), (Some("/run/c/rootfs"), Some(false)));

        let mounts = oci.mounts().as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.destination().to_str() == Some("/proc")));
        let bind = mounts.iter().find(|m| m.destination().to_str() == Some("/mnt")).unwrap();
        assert_eq!(bind.options().as_ref().unwrap(), &["rbind", "ro"]);

        let linux = oci.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_ref().unwrap().to_str(), Some("/skiff/c1"));
        let kinds: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(kinds.contains(&LinuxNamespaceType::Pid) && kinds.contains(&LinuxNamespaceType::Mount));
        assert!(!kinds.contains(&LinuxNamespaceType::Network), "no pod network: the host's");
        let resources = linux.resources().as_ref().unwrap();
        let memory = resources.memory().as_ref().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(32 << 20), Some(32 << 20)));
        let cpu = resources.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(25_000), Some(100_000)));
    }

    #[test]
    fn a_pod_network_namespace_is_joined_by_path() {
        let mut s = spec();
        s.netns = Some("/run/skiff/n/netns/uid".into());
        let oci = runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts).unwrap();
        let namespaces = oci.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let network = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::Network).unwrap();
        assert_eq!(network.path().as_deref(), Some(std::path::Path::new("/run/skiff/n/netns/uid")));
    }

    #[test]
    fn a_pod_user_namespace_is_joined_by_path_without_mappings() {
        let mut s = spec();
        s.userns = Some(skiff_shim::UserNamespace {
            path: "/run/skiff/n/userns/uid".into(),
            host_id: 6_553_600,
            size: 65_536,
        });
        s.netns = Some("/run/skiff/n/netns/uid".into());
        let oci = runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().clone().unwrap();
        let user = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::User).unwrap();
        assert_eq!(user.path().as_deref(), Some(Path::new("/run/skiff/n/userns/uid")));
        assert!(linux.uid_mappings().is_none() && linux.gid_mappings().is_none(), "libcontainer maps no ids");
        let sys = |oci: &Spec| oci.mounts().clone().unwrap().into_iter().find(|m| m.destination() == Path::new("/sys"));
        assert_eq!(sys(&oci).unwrap().typ().as_deref(), Some("sysfs"), "the pod's network namespace is its own");

        s.netns = None;
        let oci = runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts).unwrap();
        let sys = sys(&oci).unwrap();
        assert_eq!((sys.typ().as_deref(), sys.source().as_deref()), (Some("none"), Some(Path::new("/sys"))));
        assert!(sys.options().as_ref().unwrap().iter().any(|o| o == "rbind"), "the host's /sys, bound");
    }

    #[test]
    fn tiny_cpu_limits_get_the_kernel_minimum_and_argv_wins() {
        let mut s = spec();
        s.limits.cpu_millis = Some(1);
        s.argv = vec!["echo".into(), "hi".into()];
        s.working_dir = Some("/w".into());
        let oci = runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts).unwrap();
        let cpu = oci.linux().as_ref().unwrap().resources().as_ref().unwrap().cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(1_000));
        let process = oci.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["echo", "hi"]);
        assert_eq!(process.cwd().to_str(), Some("/w"));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut s = spec();
        s.image.entrypoint.clear();
        s.image.cmd.clear();
        assert!(matches!(runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts), Err(ShimError::InvalidImage(_))));
        let mut s = spec();
        s.mounts[0].container_path = "relative".into();
        assert!(matches!(runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts), Err(ShimError::Setup { .. })));
        let mut s = spec();
        s.working_dir = Some("rel".into());
        assert!(matches!(runtime_spec(&s, Path::new("/run/c/rootfs"), &s.mounts), Err(ShimError::Setup { .. })));
    }

    #[test]
    fn image_path_is_kept() {
        let mut s = spec();
        s.image.env.push("PATH=/custom".into());
        let env = env(&s);
        assert_eq!(env.iter().filter(|kv| kv.starts_with("PATH=")).collect::<Vec<_>>(), ["PATH=/custom"]);
    }
}
