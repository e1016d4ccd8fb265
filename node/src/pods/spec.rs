//! Turning a Pod's container into a [`ContainerSpec`]: argv, environment (env, envFrom, fieldRef), the
//! mounts of its volumes ([`Volumes`]), limits. The shims never see the Pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use skiff_shim::{AllowedHost, ClusterAddresses, ContainerSpec, Egress, Image, Limits, OutputSink, Resolver, Security};

use super::downward;
use super::subpath::SubPath;
use super::volumes::{Volumes, secret_files};
use crate::network::PodAddress;
use crate::proxy::{Caches, ServiceInfo, ServiceKey, SharedCaches};

/// A container that cannot be configured yet (a missing ConfigMap, an unsupported volume): the kubelet's
/// CreateContainerConfigError.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Builds the spec the shim runs for `container` of `pod`, with the handles its mounts name (to keep open
/// while it runs); `services` is the proxy's view, for the API server's address.
#[allow(clippy::too_many_arguments)]
pub async fn container_spec(
    client: &kube::Client,
    services: &SharedCaches,
    pod: &Pod,
    container: &Container,
    image: Image,
    volumes: &Volumes,
    id: String,
    node_ip: IpAddr,
    address: &PodAddress,
    resolver: &Resolver,
    output: Arc<dyn OutputSink>,
) -> Result<(ContainerSpec, Vec<SubPath>), ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let argv = argv(container, &image);
    let links = {
        let services = services.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let enabled = pod.spec.as_ref().and_then(|spec| spec.enable_service_links).unwrap_or(true);
        service_links(&services, &namespace, enabled)
    };
    let env = environment(client, pod, container, &image, links, node_ip, address.ip).await?;
    let (mounts, subpaths) = volumes.mounts(container, &id)?;
    let spec = ContainerSpec {
        id,
        name: format!("{namespace}/{pod_name}/{}", container.name),
        working_dir: container.working_dir.clone().or_else(|| image.working_dir.clone()),
        argv,
        env,
        mounts,
        limits: Limits { concurrent_requests: concurrent_requests(pod)?, ..limits(container) },
        ports: container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect(),
        // In its own namespace a pod listens on all its addresses, localhost included, as containers do;
        // without one, on its own address (the node's with host networking).
        host_ip: if address.netns.is_some() { Ipv4Addr::UNSPECIFIED.into() } else { address.ip },
        netns: address.netns.clone(),
        userns: address.userns.clone(),
        egress: Egress {
            resolver: resolver.clone(),
            allowed_hosts: allowed_outbound_hosts(pod)?,
            cluster: Arc::new(ClusterView(services.clone())),
        },
        security: security(pod, container)?,
        image,
        output,
    };
    Ok((spec, subpaths))
}

/// The pod annotation listing the hosts outside the cluster its wasm guests' outgoing HTTP may reach.
const ALLOWED_OUTBOUND_HOSTS: &str = "skiff.dev/allowed-outbound-hosts";

fn allowed_outbound_hosts(pod: &Pod) -> Result<Vec<AllowedHost>, ConfigError> {
    let Some(list) = pod.metadata.annotations.as_ref().and_then(|a| a.get(ALLOWED_OUTBOUND_HOSTS)) else {
        return Ok(Vec::new());
    };
    AllowedHost::parse_list(list).map_err(|e| ConfigError(format!("annotation {ALLOWED_OUTBOUND_HOSTS}: {e}")))
}

/// The cluster's addresses as the service proxy's caches know them, for the shims' outgoing connections.
struct ClusterView(SharedCaches);

impl ClusterAddresses for ClusterView {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_cluster_address(ip)
    }
}

/// The pod annotation naming how many requests its wasi:http containers handle at once.
const MAX_CONCURRENT_REQUESTS: &str = "skiff.dev/max-concurrent-requests";

fn concurrent_requests(pod: &Pod) -> Result<Option<u32>, ConfigError> {
    let Some(value) = pod.metadata.annotations.as_ref().and_then(|a| a.get(MAX_CONCURRENT_REQUESTS)) else {
        return Ok(None);
    };
    let count = value.trim().parse::<u32>().ok().filter(|count| *count > 0);
    count.map(Some).ok_or_else(|| {
        ConfigError(format!("annotation {MAX_CONCURRENT_REQUESTS}: \"{value}\" is not a positive integer"))
    })
}

/// Kubernetes' rules: `command` replaces the image's entrypoint, `args` its cmd, and an image without an
/// entrypoint runs its cmd (or the args) as the command, as Docker does. A wasm artifact usually has
/// neither entrypoint nor cmd, so argv[0] is the container's name, as runwasi does.
fn argv(container: &Container, image: &Image) -> Vec<String> {
    let command = container.command.clone().filter(|c| !c.is_empty());
    let args = container.args.clone();
    let (entry, rest) = match (command, args) {
        (Some(command), args) => (command, args.unwrap_or_default()),
        (None, Some(args)) => (image.entrypoint.clone(), args),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let unnamed = entry.is_empty() && image.entrypoint.is_empty() && image.cmd.is_empty();
    let mut argv = if unnamed { vec![container.name.clone()] } else { entry };
    argv.extend(rest);
    argv
}

/// The image's variables, then `service_env` (the kubelet's for Services), then envFrom's, then env's, each
/// replacing a variable of the same name before it, and env's values able to refer to all before them.
async fn environment(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    image: &Image,
    service_env: Vec<(String, String)>,
    node_ip: IpAddr,
    pod_ip: IpAddr,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut env: Vec<(String, String)> =
        image.env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        env.retain(|(k, _)| k != &key);
        env.push((key, value));
    };
    for (key, value) in service_env {
        set(&mut env, key, value);
    }
    for source in container.env_from.as_deref().unwrap_or_default() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let entries: BTreeMap<String, String> = if let Some(reference) = &source.config_map_ref {
            match maps.get_opt(&reference.name).await.map_err(|e| ConfigError(e.to_string()))? {
                Some(map) => map.data.unwrap_or_default(),
                None if reference.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError(format!("configmap \"{}\" not found", reference.name))),
            }
        } else if let Some(reference) = &source.secret_ref {
            match secrets.get_opt(&reference.name).await.map_err(|e| ConfigError(e.to_string()))? {
                Some(secret) => secret_files(secret)
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                None if reference.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError(format!("secret \"{}\" not found", reference.name))),
            }
        } else {
            BTreeMap::new()
        };
        for (key, value) in entries {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or(""), &env),
            Some(source) => {
                if let Some(key) = &source.config_map_key_ref {
                    let map = maps.get_opt(&key.name).await.map_err(|e| ConfigError(e.to_string()))?;
                    match map.and_then(|m| m.data.and_then(|d| d.get(&key.key).cloned())) {
                        Some(value) => value,
                        None if key.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                key.key, key.name
                            )));
                        }
                    }
                } else if let Some(key) = &source.secret_key_ref {
                    let secret = secrets.get_opt(&key.name).await.map_err(|e| ConfigError(e.to_string()))?;
                    match secret.map(secret_files).and_then(|files| files.get(&key.key).cloned()) {
                        Some(value) => String::from_utf8_lossy(&value).into_owned(),
                        None if key.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                key.key, key.name
                            )));
                        }
                    }
                } else if let Some(field) = &source.field_ref {
                    downward::field_value(pod, &field.field_path, node_ip, pod_ip)
                        .ok_or_else(|| ConfigError(format!("unsupported fieldRef {}", field.field_path)))?
                } else if let Some(resource) = &source.resource_field_ref {
                    downward::resource(pod, Some(container), resource).map_err(|e| ConfigError(e.to_string()))?
                } else {
                    continue;
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The Services whose variables a pod in `namespace` gets, as the kubelet chooses them: the API server's
/// `default/kubernetes` always (in-cluster clients such as client-go, kube-rs and the Python client find the
/// API by `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`), and with `enableServiceLinks` every
/// Service of the pod's namespace, one of the same name replacing the API server's.
fn service_links(caches: &Caches, namespace: &str, enabled: bool) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<&str, &ServiceInfo> = BTreeMap::new();
    if let Some(api) = caches.service(&ServiceKey { namespace: "default".into(), name: "kubernetes".into() }) {
        chosen.insert("kubernetes", api);
    }
    if enabled {
        for service in caches.services_in(namespace) {
            chosen.insert(&service.name, service);
        }
    }
    chosen.into_values().flat_map(service_env).collect()
}

/// The variables the kubelet gives a container for `service` (none for a headless one): `<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT` (the first port) and `<NAME>_SERVICE_PORT_<PORT NAME>`, then Docker links' `<NAME>_PORT`
/// and `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`.
fn service_env(service: &ServiceInfo) -> Vec<(String, String)> {
    let Some(ip) = service.cluster_ips.first() else { return Vec::new() };
    let ports = &service.ports;
    let Some(first) = ports.first() else { return Vec::new() };
    let variable = |name: &str| name.replace('-', "_").to_uppercase();
    let prefix = variable(&service.name);
    // Go's net.JoinHostPort: IPv6 addresses in brackets.
    let host_port = |port: u16| if ip.is_ipv6() { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
    let mut env = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in ports.iter().filter(|port| !port.name.is_empty()) {
        env.push((format!("{prefix}_SERVICE_PORT_{}", variable(&port.name)), port.port.to_string()));
    }
    for (index, port) in ports.iter().enumerate() {
        let lower = port.protocol.nft();
        let url = format!("{lower}://{}", host_port(port.port));
        if index == 0 {
            env.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, lower.to_uppercase());
        env.push((port_prefix.clone(), url));
        env.push((format!("{port_prefix}_PROTO"), lower.to_string()));
        env.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        env.push((format!("{port_prefix}_ADDR"), ip.to_string()));
    }
    env
}

/// `$(VAR)` references to earlier variables, as Kubernetes expands them; `$$` escapes.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(close) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + close];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[..close + 3]),
            }
            rest = &rest[close + 3..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

pub fn limits(container: &Container) -> Limits {
    let resources = container.resources.as_ref();
    let quantity = |map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
                    name: &str| {
        skiff_api::validation::parse_quantity(&map?.get(name)?.0).filter(|v| *v > 0.0)
    };
    let millis = |cores: f64| (cores * 1000.0).round().max(1.0) as u64;
    let limit = |name: &str| quantity(resources.and_then(|r| r.limits.as_ref()), name);
    // Kubernetes defaults a missing request to the limit.
    let cpu_request = quantity(resources.and_then(|r| r.requests.as_ref()), "cpu").or_else(|| limit("cpu"));
    Limits {
        memory_bytes: limit("memory").map(|bytes| bytes as u64),
        cpu_millis: limit("cpu").map(millis),
        cpu_request_millis: cpu_request.map(millis),
        concurrent_requests: None,
    }
}

/// The container's securityContext over its pod's (user, group, non-root and seccomp are inherited; the
/// rest is per container).
pub fn security(pod: &Pod, container: &Container) -> Result<Security, ConfigError> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let context = container.security_context.clone().unwrap_or_default();
    let id = |field: &str, value: Option<i64>| {
        value
            .map(|v| {
                u32::try_from(v).map_err(|_| ConfigError(format!("securityContext.{field} {v} is not a valid id")))
            })
            .transpose()
    };
    let privileged = context.privileged.unwrap_or(false);
    // The container's profile wins over the pod's; none at all is RuntimeDefault (the kubelet's
    // `seccompDefault: true`). Privileged containers run unconfined whatever they ask, as containerd runs them.
    let seccomp = match context.seccomp_profile.or(pod_context.seccomp_profile) {
        _ if privileged => skiff_shim::SeccompProfile::Unconfined,
        None => skiff_shim::SeccompProfile::RuntimeDefault,
        Some(profile) => match (profile.type_.as_str(), profile.localhost_profile) {
            ("RuntimeDefault", None) => skiff_shim::SeccompProfile::RuntimeDefault,
            ("Unconfined", None) => skiff_shim::SeccompProfile::Unconfined,
            ("Localhost", Some(path)) => {
                // The API server's rule (a local descending path): the kubelet joins it to its profile root.
                let relative = PathBuf::from(&path);
                let descends = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if path.is_empty() || !descends {
                    return Err(ConfigError(format!(
                        "seccompProfile.localhostProfile \"{path}\" must be a relative path without \"..\""
                    )));
                }
                skiff_shim::SeccompProfile::Localhost(relative)
            }
            ("Localhost", None) => {
                return Err(ConfigError("seccompProfile.localhostProfile must be set for type Localhost".into()));
            }
            (other @ ("RuntimeDefault" | "Unconfined"), Some(_)) => {
                return Err(ConfigError(format!(
                    "seccompProfile.localhostProfile can only be set for type Localhost, not {other}"
                )));
            }
            (other, _) => return Err(ConfigError(format!("seccompProfile type \"{other}\" is not supported"))),
        },
    };
    let capabilities = context.capabilities.unwrap_or_default();
    let mut supplemental_groups = Vec::new();
    for group in pod_context.supplemental_groups.iter().flatten().copied().chain(pod_context.fs_group) {
        supplemental_groups.extend(id("supplementalGroups", Some(group))?);
    }
    Ok(Security {
        run_as_user: id("runAsUser", context.run_as_user.or(pod_context.run_as_user))?,
        run_as_group: id("runAsGroup", context.run_as_group.or(pod_context.run_as_group))?,
        run_as_non_root: context.run_as_non_root.or(pod_context.run_as_non_root).unwrap_or(false),
        supplemental_groups,
        read_only_root_filesystem: context.read_only_root_filesystem.unwrap_or(false),
        capabilities_add: capabilities.add.unwrap_or_default(),
        capabilities_drop: capabilities.drop.unwrap_or_default(),
        no_new_privileges: !privileged && context.allow_privilege_escalation == Some(false),
        privileged,
        seccomp,
    })
}

/// Decodes a `.dockerconfigjson` secret value for image pulls.
pub fn docker_config(secret: &Secret) -> Option<Vec<u8>> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson").map(|b| b.0.clone());
    data.or_else(|| {
        let text = secret.string_data.as_ref()?.get(".dockerconfigjson")?;
        Some(text.clone().into_bytes())
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn argv_follows_kubernetes_command_and_args_rules() {
        let image = Image { entrypoint: vec!["/bin/app".into()], cmd: vec!["--default".into()], ..Image::default() };
        let c = container(serde_json::json!({"name": "c"}));
        assert_eq!(argv(&c, &image), ["/bin/app", "--default"]);
        let c = container(serde_json::json!({"name": "c", "args": ["x"]}));
        assert_eq!(argv(&c, &image), ["/bin/app", "x"]);
        let c = container(serde_json::json!({"name": "c", "command": ["run"], "args": ["y"]}));
        assert_eq!(argv(&c, &image), ["run", "y"]);
        let c = container(serde_json::json!({"name": "hello", "args": ["a", "b"]}));
        assert_eq!(argv(&c, &Image::default()), ["hello", "a", "b"], "wasm artifacts have no entrypoint");
        let cmd_only = Image { cmd: vec!["httpd".into(), "-f".into()], ..Image::default() };
        let c = container(serde_json::json!({"name": "web"}));
        assert_eq!(argv(&c, &cmd_only), ["httpd", "-f"], "an image's cmd without an entrypoint is the command");
        let c = container(serde_json::json!({"name": "web", "args": ["sh"]}));
        assert_eq!(argv(&c, &cmd_only), ["sh"]);
    }

    #[test]
    fn limits_parse_quantities() {
        let c = container(serde_json::json!({"name": "c", "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}));
        assert_eq!(
            limits(&c),
            Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(100),
                cpu_request_millis: Some(100),
                ..Limits::default()
            }
        );
        let c = container(serde_json::json!({"name": "c", "resources": {"requests": {"cpu": "1.5"}}}));
        assert_eq!(limits(&c), Limits { cpu_request_millis: Some(1500), ..Limits::default() });
        assert_eq!(limits(&container(serde_json::json!({"name": "c"}))), Limits::default());
    }

    #[test]
    fn concurrent_requests_come_from_the_pods_annotation() {
        let pod = |value: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"annotations": {MAX_CONCURRENT_REQUESTS: value}}}))
                .unwrap()
        };
        assert_eq!(concurrent_requests(&Pod::default()).unwrap(), None);
        assert_eq!(concurrent_requests(&pod(" 8 ")).unwrap(), Some(8));
        for bad in ["0", "-1", "many"] {
            let error = concurrent_requests(&pod(bad)).unwrap_err().0;
            assert!(error.contains("is not a positive integer"), "{error}");
        }
    }

    #[test]
    fn allowed_outbound_hosts_come_from_the_pods_annotation() {
        let pod = |value: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"annotations": {ALLOWED_OUTBOUND_HOSTS: value}}}))
                .unwrap()
        };
        assert!(allowed_outbound_hosts(&Pod::default()).unwrap().is_empty(), "nothing outside by default");
        let allowed = allowed_outbound_hosts(&pod("https://api.example.com, http://*.test:8080")).unwrap();
        assert_eq!(allowed.len(), 2);
        assert!(allowed[1].allows("http", "www.test", 8080));
        let error = allowed_outbound_hosts(&pod("api.example.com")).unwrap_err().0;
        assert_eq!(
            error,
            "annotation skiff.dev/allowed-outbound-hosts: \"api.example.com\" has no scheme (write http://, https:// or *://)"
        );
    }

    #[test]
    fn security_contexts_merge_container_over_pod() {
        use skiff_shim::SeccompProfile;
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [], "securityContext": {
            "runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true, "supplementalGroups": [4000], "fsGroup": 2000,
            "seccompProfile": {"type": "Unconfined"}}}}))
        .unwrap();
        let c = container(serde_json::json!({"name": "c", "securityContext": {"runAsUser": 1001,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}));
        let merged = security(&pod, &c).unwrap();
        assert_eq!(
            merged,
            Security {
                run_as_user: Some(1001),
                run_as_group: Some(3000),
                run_as_non_root: true,
                supplemental_groups: vec![4000, 2000],
                read_only_root_filesystem: true,
                capabilities_add: vec!["NET_ADMIN".into()],
                capabilities_drop: vec!["ALL".into()],
                no_new_privileges: true,
                privileged: false,
                seccomp: SeccompProfile::RuntimeDefault,
            }
        );
        let plain = container(serde_json::json!({"name": "c"}));
        assert_eq!(security(&pod, &plain).unwrap().seccomp, SeccompProfile::Unconfined, "the pod's is inherited");
        assert_eq!(security(&Pod::default(), &plain).unwrap().seccomp, SeccompProfile::RuntimeDefault, "the default");
        let privileged = container(serde_json::json!({"name": "c", "securityContext": {"privileged": true,
            "seccompProfile": {"type": "RuntimeDefault"}}}));
        let merged = security(&Pod::default(), &privileged).unwrap();
        assert!(merged.privileged && !merged.no_new_privileges);
        assert_eq!(merged.seccomp, SeccompProfile::Unconfined, "privileged containers are unconfined");
        let negative = container(serde_json::json!({"name": "c", "securityContext": {"runAsUser": -1}}));
        assert!(security(&Pod::default(), &negative).is_err());
        let localhost = |profile: serde_json::Value| {
            let c = container(serde_json::json!({"name": "c", "securityContext": {"seccompProfile": profile}}));
            security(&pod, &c).map(|s| s.seccomp).map_err(|e| e.0)
        };
        let local = localhost(serde_json::json!({"type": "Localhost", "localhostProfile": "profiles/audit.json"}));
        assert_eq!(local.unwrap(), SeccompProfile::Localhost("profiles/audit.json".into()));
        for bad in ["../escape.json", "/etc/profile.json", "a/../../b.json", ""] {
            let err = localhost(serde_json::json!({"type": "Localhost", "localhostProfile": bad})).unwrap_err();
            assert!(err.contains("must be a relative path"), "{bad}: {err}");
        }
        assert!(localhost(serde_json::json!({"type": "Localhost"})).unwrap_err().contains("must be set"));
        let stray = serde_json::json!({"type": "RuntimeDefault", "localhostProfile": "x.json"});
        assert!(localhost(stray).unwrap_err().contains("only be set for type Localhost"));
        assert!(localhost(serde_json::json!({"type": "Custom"})).unwrap_err().contains("not supported"));
    }

    #[test]
    fn services_give_the_kubelets_variables() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
        }))
        .unwrap();
        let env: BTreeMap<String, String> = service_env(&ServiceInfo::of(&service)).into_iter().collect();
        let expected: BTreeMap<String, String> = [
            ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        let dns: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-dns"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
        }))
        .unwrap();
        let env: BTreeMap<String, String> = service_env(&ServiceInfo::of(&dns)).into_iter().collect();
        assert_eq!(env["KUBE_DNS_SERVICE_PORT_DNS_TCP"], "53");
        assert_eq!(env["KUBE_DNS_PORT"], "udp://10.43.0.10:53", "the first port");
        assert_eq!(env["KUBE_DNS_PORT_53_TCP_ADDR"], "10.43.0.10");
        let headless: Service =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}))
                .unwrap();
        assert!(service_env(&ServiceInfo::of(&headless)).is_empty(), "no variables for a headless Service");
    }

    #[test]
    fn pods_get_the_api_servers_variables_and_with_service_links_their_namespaces() {
        let service = |namespace: &str, name: &str, ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterIP": ip, "ports": [{"port": 443}]},
            }))
            .unwrap()
        };
        let mut caches = Caches::default();
        caches.insert_service(service("default", "kubernetes", "10.43.0.1"));
        caches.insert_service(service("shop", "web", "10.43.0.7"));
        caches.insert_service(service("other", "db", "10.43.0.8"));
        let hosts = |caches: &Caches, namespace, links| -> BTreeMap<String, String> {
            service_links(caches, namespace, links).into_iter().filter(|(k, _)| k.ends_with("_SERVICE_HOST")).collect()
        };
        let both = BTreeMap::from([
            ("KUBERNETES_SERVICE_HOST".to_string(), "10.43.0.1".to_string()),
            ("WEB_SERVICE_HOST".to_string(), "10.43.0.7".to_string()),
        ]);
        assert_eq!(
            hosts(&caches, "shop", true),
            both,
            "the namespace's Services and the API server's, no other namespace's"
        );
        assert_eq!(hosts(&caches, "shop", false).keys().collect::<Vec<_>>(), ["KUBERNETES_SERVICE_HOST"]);
        caches.insert_service(service("shop", "kubernetes", "10.43.0.9"));
        assert_eq!(
            hosts(&caches, "shop", true)["KUBERNETES_SERVICE_HOST"],
            "10.43.0.9",
            "the namespace's own name wins"
        );
        assert_eq!(hosts(&caches, "shop", false)["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
    }

    #[test]
    fn variable_references_expand() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x-$(A)-$(B)-$$(A)", &env), "x-1-$(B)-$(A)");
    }
}
