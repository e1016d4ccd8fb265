//! Kubernetes object semantics over a [`Store`]: metadata the server owns (uid, timestamps, resourceVersion,
//! generation), optimistic concurrency, subresources, finalizers and graceful deletion.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; the key's mod revision becomes the
//! resourceVersion on every read, so it always means the store's revision, on every backend.

use std::net::Ipv4Addr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use skiff_api::authz::UserInfo;
use skiff_api::limits::MAX_OBJECT_BYTES;
use skiff_api::node_authorizer::Operation;
use skiff_api::patch::{self, ApplyError, PatchType};
use skiff_api::pod_security::PodSecurity;
use skiff_api::resources::ResourceDef;
use skiff_api::selectors::{FieldSelector, LabelSelector};
use skiff_api::validation::{self, Cause};
use skiff_store::{KeyValue, Revision, Store};

use crate::admission;
use crate::authz::Authorizer;
use crate::cluster_ips::{self, Reservation, ReserveError};
use crate::encryption::EncryptedStore;
use crate::error::ApiError;

/// The first two octets of the service virtual IP range, 10.43.0.0/16 as in k3s.
const SERVICE_CIDR_PREFIX: &str = "10.43";
/// The same range as an address and a prefix length, for those who must keep out of it.
pub const SERVICE_CIDR: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(10, 43, 0, 0), 16);

/// Kubernetes' refusal of a cluster IP asked for.
fn refuse_cluster_ip(def: &ResourceDef, name: &str, asked: &str, problem: String) -> ApiError {
    let message = format!("Invalid value: []string{{\"{asked}\"}}: failed to allocate IP {asked}: {problem}");
    ApiError::invalid(def, name, vec![Cause { reason: "FieldValueInvalid", message, field: "spec.clusterIPs".into() }])
}

fn out_of_range(ip: Ipv4Addr) -> String {
    let (network, prefix) = SERVICE_CIDR;
    format!("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {network}/{prefix}")
}

fn in_service_range(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(SERVICE_CIDR.1));
    u32::from(ip) & mask == u32::from(SERVICE_CIDR.0)
}

/// Where Services' node ports come from: Kubernetes' default `--service-node-port-range`, kept clear of the
/// ephemeral ports Linux hands out (32768 and up) so a node port never collides with an outgoing connection.
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// The `kubernetes` Service's address: the first of the service range, which allocation never hands out.
pub fn kubernetes_service_ip() -> String {
    format!("{SERVICE_CIDR_PREFIX}.0.1")
}

/// The cluster DNS Service's address (`kube-system/kube-dns`), k3s's `--cluster-dns` default.
pub fn cluster_dns_ip() -> String {
    format!("{SERVICE_CIDR_PREFIX}.0.10")
}

/// How many times a read-modify-write retries after losing a compare-and-swap race before giving up.
const MAX_RETRIES: usize = 16;

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    Scale,
    /// pods/binding: sets spec.nodeName, which no pod update may change.
    Binding,
    /// certificatesigningrequests/approval: changes only the status's conditions (Approved, Denied).
    Approval,
}

impl Part {
    /// The subresource's name in paths, none for the main resource.
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Part::Main => None,
            Part::Status => Some("status"),
            Part::Scale => Some("scale"),
            Part::Binding => Some("binding"),
            Part::Approval => Some("approval"),
        }
    }
}

/// Options common to writes, from the query string.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: String,
    pub validation: FieldValidation,
    /// Who asks, for admission that depends on it (NodeRestriction, RBAC escalation); `None` for the
    /// server's own writes.
    pub user: Option<UserInfo>,
}

/// `fieldValidation`: what to do with fields the schema does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    /// The server default since Kubernetes 1.27: accept, answer a warning header.
    #[default]
    Warn,
    Strict,
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub limit: usize,
    pub continue_token: Option<String>,
}

impl ListOptions {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches_object(object))
            && self.fields.as_ref().is_none_or(|s| s.matches(object))
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    /// Who asks (see [`WriteOptions::user`]).
    pub user: Option<UserInfo>,
}

/// The result of a write: the object, and warnings for the `Warning` header.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// A page of a list.
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: Revision,
    pub continue_token: Option<String>,
}

#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
    namespaces: Arc<NamespaceCache>,
    pod_security: Arc<PodSecurity>,
    /// For admission that asks what the requester may do (RBAC escalation prevention).
    authorizer: Option<Arc<Authorizer>>,
    /// The store again when it encrypts at rest, to ask whether a value is stored with an old key.
    encrypted: Option<Arc<EncryptedStore>>,
}

/// Which namespaces exist and whether each is terminating, as the namespace controller last listed them.
/// It spares a store read on every namespaced create, as kube-apiserver's NamespaceLifecycle admission does
/// with its informer. A namespace it does not know is looked up in the store, so a namespace created a
/// moment ago is never refused; one deleted a moment ago may still take a create, which the controller's
/// next pass deletes with the rest of it.
#[derive(Default)]
struct NamespaceCache(std::sync::RwLock<std::collections::HashMap<String, bool>>);

impl Objects {
    /// Objects over `store`, admitting pods by Pod Security's default (baseline where a namespace sets no
    /// level; see [`PodSecurity`]).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, namespaces: Arc::default(), pod_security: Arc::default(), authorizer: None, encrypted: None }
    }

    /// Objects over a store that encrypts at rest (`--encryption-provider-config`).
    pub fn encrypted(store: Arc<EncryptedStore>) -> Self {
        Self { encrypted: Some(store.clone()), ..Self::new(store) }
    }

    /// The same, asking `authorizer` what requesters hold when they write RBAC objects.
    pub fn with_authorizer(self, authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer: Some(authorizer), ..self }
    }

    pub fn authorizer(&self) -> Option<&Arc<Authorizer>> {
        self.authorizer.as_ref()
    }

    /// The same, admitting pods by `pod_security` (`--pod-security-default`).
    pub fn with_pod_security(self, pod_security: PodSecurity) -> Self {
        Self { pod_security: Arc::new(pod_security), ..self }
    }

    pub fn pod_security(&self) -> &PodSecurity {
        &self.pod_security
    }

    /// Replaces the namespace cache with `(name, terminating)` pairs from a full list.
    pub fn cache_namespaces(&self, namespaces: impl IntoIterator<Item = (String, bool)>) {
        let fresh = namespaces.into_iter().collect();
        *self.namespaces.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    async fn stale(&self, key: &str) -> Result<bool, ApiError> {
        match &self.encrypted {
            Some(store) => Ok(store.stale(key).await?),
            None => Ok(false),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.read(def, ns, name).await?.map(|(object, _)| object).ok_or_else(|| ApiError::not_found(def, name))
    }

    async fn read(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<(Value, Revision)>, ApiError> {
        match self.store.get(&key(def, ns, name)).await? {
            Some(kv) => Ok(Some((decode_as(def, &kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let prefix = prefix(def, ns);
        let mut start_after = match &options.continue_token {
            Some(token) => Some(decode_continue(token, &prefix)?),
            None => None,
        };
        // Pages are read in chunks and filtered here; a chunk is at least the requested limit so a selective
        // filter needs few round trips.
        let chunk = if options.limit == 0 { 0 } else { options.limit.max(100) };
        let mut items = Vec::new();
        let mut revision = 0;
        loop {
            let page = self.store.list(&prefix, start_after.as_deref(), chunk).await?;
            if revision == 0 {
                revision = page.revision;
            }
            let count = page.kvs.len();
            for (index, kv) in page.kvs.iter().enumerate() {
                start_after = Some(kv.key.clone());
                let object = decode_as(def, kv)?;
                if options.matches(&object) {
                    items.push(object);
                }
                if options.limit > 0 && items.len() == options.limit {
                    let more = page.more || index + 1 < count;
                    let token = more.then(|| encode_continue(&kv.key, revision));
                    return Ok(ListResult { items, resource_version: revision, continue_token: token });
                }
            }
            if !page.more {
                return Ok(ListResult { items, resource_version: revision, continue_token: None });
            }
        }
    }

    /// Creates an object. `object` is the decoded request body.
    pub async fn create(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        object: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let (object, warnings) = admit(def, object, options)?;
        self.create_admitted(def, ns, object, warnings, options, true).await
    }

    /// The create both paths share: the name, the cluster IP and node ports, validation, admission, then the
    /// write. `record` sets managedFields for the field manager (a server-side apply set them already).
    async fn create_admitted(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        mut object: Value,
        mut warnings: Vec<String>,
        options: &WriteOptions,
        record: bool,
    ) -> Result<Written, ApiError> {
        prepare_create(def, ns, &mut object)?;
        let reservation = self.allocate_cluster_ip(def, ns, &mut object, options.dry_run).await?;
        let created: Result<Written, ApiError> = async {
            let name = name_of(&object).to_string();
            let causes = validation::validate(def, &object, None);
            if !causes.is_empty() {
                return Err(ApiError::invalid(def, &name, causes));
            }
            self.allocate_node_ports(def, ns, &mut object, None).await?;
            if let Some(ns) = ns {
                self.check_namespace_open(ns).await?;
            }
            warnings.extend(admission::admit(self, def, ns, "", &mut object, None, options.user.as_ref()).await?);
            if record {
                patch::record_update(def, None, &mut object, &options.field_manager, None);
            }
            if options.dry_run {
                if self.store.get(&key(def, ns, &name)).await?.is_some() {
                    return Err(ApiError::already_exists(def, &name));
                }
                return Ok(Written { object, warnings, created: true });
            }
            let kv = match self.store.create(&key(def, ns, &name), encode(def, &object)?).await {
                Err(skiff_store::Error::AlreadyExists(_)) => {
                    return Err(ApiError::already_exists(def, &name));
                }
                other => other?,
            };
            set_resource_version(&mut object, kv.mod_revision);
            Ok(Written { object, warnings, created: true })
        }
        .await;
        self.release_if_failed(&created, reservation).await;
        created
    }

    /// Gives back the cluster IP a create reserved when the create failed.
    async fn release_if_failed(&self, created: &Result<Written, ApiError>, reservation: Option<Reservation>) {
        if let (Err(_), Some(reservation)) = (created, reservation) {
            cluster_ips::release(self.store.as_ref(), reservation).await;
        }
    }

    /// Gives a new Service a virtual IP from 10.43.0.0/16 unless it is headless or an ExternalName, or takes
    /// the one it asks for, through a reservation in the store ([`crate::cluster_ips`]): an address outside
    /// the range or held by another Service is refused with Kubernetes' wording. Returns the reservation this
    /// create made, to give back if the create fails; a dry run reserves nothing.
    async fn allocate_cluster_ip(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        object: &mut Value,
        dry_run: bool,
    ) -> Result<Option<Reservation>, ApiError> {
        if !is_service(def) || object["spec"]["type"] == "ExternalName" {
            return Ok(None);
        }
        let name = name_of(object).to_string();
        let holder = key(def, ns, &name);
        let store = self.store.as_ref();
        if let Some(asked) = object["spec"]["clusterIP"].as_str().filter(|ip| !ip.is_empty()).map(str::to_string) {
            object["spec"]["clusterIPs"] = json!([asked]);
            // "None" is a headless Service; a malformed address is validation's to report.
            let Ok(ip) = asked.parse::<Ipv4Addr>() else { return Ok(None) };
            let refuse = |problem: String| refuse_cluster_ip(def, &name, &asked, problem);
            if !in_service_range(ip) {
                return Err(refuse(out_of_range(ip)));
            }
            let taken = || refuse(ReserveError::Taken.to_string());
            if dry_run {
                return if cluster_ips::is_free(store, ip, &holder).await? { Ok(None) } else { Err(taken()) };
            }
            return match cluster_ips::reserve(store, ip, &holder).await {
                Ok(reservation) => Ok(reservation),
                Err(ReserveError::Taken) => Err(taken()),
                Err(ReserveError::Store(e)) => Err(e.into()),
            };
        }
        use rand::Rng;
        for _ in 0..64 {
            // The lowest 256 addresses are kept for addresses asked for by name (the `kubernetes` Service's
            // .0.1, the cluster DNS's .0.10), as Kubernetes keeps a static band; the broadcast too.
            let host: u16 = rand::rng().random_range(256..u16::MAX);
            let ip = Ipv4Addr::from(u32::from(SERVICE_CIDR.0) | u32::from(host));
            let reservation = if dry_run {
                if !cluster_ips::is_free(store, ip, &holder).await? {
                    continue;
                }
                None
            } else {
                match cluster_ips::reserve(store, ip, &holder).await {
                    Ok(reservation) => reservation,
                    Err(ReserveError::Taken) => continue,
                    Err(ReserveError::Store(e)) => return Err(e.into()),
                }
            };
            object["spec"]["clusterIP"] = json!(ip.to_string());
            object["spec"]["clusterIPs"] = json!([ip.to_string()]);
            object["spec"]["ipFamilies"] = json!(["IPv4"]);
            object["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            return Ok(reservation);
        }
        Err(ApiError::Internal("the service IP range is exhausted".into()))
    }

    /// Reserves the cluster IPs an update gives a Service that it did not hold (an ExternalName Service
    /// becoming a ClusterIP one with an address asked for: otherwise `clusterIP` is immutable and
    /// `clusterIPs` must repeat it), refusing one outside the range or another Service holds. A dry run
    /// reserves nothing.
    async fn reserve_gained_cluster_ips(
        &self,
        def: &ResourceDef,
        key: &str,
        name: &str,
        current: &Value,
        object: &Value,
        dry_run: bool,
    ) -> Result<Vec<Reservation>, ApiError> {
        if !is_service(def) {
            return Ok(Vec::new());
        }
        let held = cluster_ips::addresses(current);
        let mut reserved = Vec::new();
        for ip in cluster_ips::addresses(object).into_iter().filter(|ip| !held.contains(ip)) {
            let outcome = if !in_service_range(ip) {
                Err(out_of_range(ip))
            } else if dry_run {
                match cluster_ips::is_free(self.store.as_ref(), ip, key).await {
                    Ok(true) => Ok(None),
                    Ok(false) => Err(ReserveError::Taken.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                cluster_ips::reserve(self.store.as_ref(), ip, key).await.map_err(|e| e.to_string())
            };
            match outcome {
                Ok(reservation) => reserved.extend(reservation),
                Err(problem) => {
                    for reservation in reserved {
                        cluster_ips::release(self.store.as_ref(), reservation).await;
                    }
                    return Err(refuse_cluster_ip(def, name, &ip.to_string(), problem));
                }
            }
        }
        Ok(reserved)
    }

    /// Gives each port of a NodePort or LoadBalancer Service that has no node port one from [`NODE_PORTS`],
    /// and refuses a node port asked for that is out of the range or held by another Service, as Kubernetes'
    /// allocator does (422, with its wording). `current` is the stored Service on an update: the ports it
    /// already holds are its own. The list of Services is read only when a port needs a look; two writes
    /// racing for one port can both win (cluster IPs are reserved in the store instead, [`crate::cluster_ips`]).
    async fn allocate_node_ports(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        object: &mut Value,
        current: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !is_service(def) || !needs_node_ports(&object["spec"]) {
            return Ok(());
        }
        let held: std::collections::HashSet<i64> = current.map(node_ports).unwrap_or_default();
        let to_check =
            service_ports(object).iter().any(|p| p["nodePort"].as_i64().is_none_or(|n| n == 0 || !held.contains(&n)));
        if !to_check {
            return Ok(());
        }
        let namespace = ns.unwrap_or_default();
        let name = name_of(object).to_string();
        let others = self.list(def, None, &ListOptions::default()).await?.items;
        let used = others
            .iter()
            .filter(|s| {
                !(name_of(s) == name && s.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
            })
            .flat_map(node_ports)
            .collect();
        use rand::Rng;
        let start = rand::rng().random_range(NODE_PORTS);
        assign_node_ports(object, &used, start).map_err(|causes| match causes {
            Some(causes) => ApiError::invalid(def, &name, causes),
            None => ApiError::Internal("the node port range is exhausted".into()),
        })
    }

    async fn check_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        let cached = self.namespaces.0.read().unwrap_or_else(|p| p.into_inner()).get(ns).copied();
        let terminating = match cached {
            Some(terminating) => terminating,
            None => {
                let namespaces = skiff_api::resources::find("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
                self.get(namespaces, None, ns).await?.pointer("/metadata/deletionTimestamp").is_some()
            }
        };
        if terminating {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// PUT: replaces the object (or its status) with `object`. A resourceVersion in the body is a
    /// precondition; without one the update is unconditional.
    pub async fn replace(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        object: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let (object, warnings) = match part {
            Part::Scale => (object, Vec::new()),
            _ => admit(def, object, options)?,
        };
        check_identity(def, ns, name, &object)?;
        let precondition = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
        let mut written = self
            .read_modify_write(def, ns, name, part, options, |current, revision| {
                if let Some(expected) = &precondition
                    && expected != &revision.to_string()
                {
                    return Err(ApiError::conflict(def, name));
                }
                Ok(match part {
                    Part::Scale => with_scale(def, current, &object)?,
                    _ => object.clone(),
                })
            })
            .await?;
        written.warnings.extend(warnings);
        Ok(written)
    }

    /// PATCH of any kind; server-side apply creates the object when it is missing.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        patch_type: PatchType,
        body: Value,
        force: bool,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if patch_type == PatchType::Apply {
            return self.apply(def, ns, name, part, body, force, options).await;
        }
        self.read_modify_write(def, ns, name, part, options, |current, _| {
            let target = if part == Part::Scale { scale_of(current)? } else { current.clone() };
            let mut patched = patch::patch(def, patch_type, &target, &body)?;
            if part != Part::Scale {
                // Kubernetes decodes a patched object as it decodes a body: with the kind's defaults.
                skiff_api::defaults::apply(def, &mut patched);
            }
            // A resourceVersion in the patch is a precondition, as in Kubernetes.
            let before = target.pointer("/metadata/resourceVersion");
            if patched.pointer("/metadata/resourceVersion").is_some_and(|rv| Some(rv) != before) {
                return Err(ApiError::conflict(def, name));
            }
            match part {
                Part::Scale => with_scale(def, current, &patched),
                _ => Ok(patched),
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        body: Value,
        force: bool,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let (applied, warnings) = admit(def, body, options)?;
        check_identity(def, ns, name, &applied)?;
        let apply = |current: Option<&Value>| {
            patch::server_side_apply(def, current, &applied, &options.field_manager, force).map_err(|e| match e {
                ApplyError::Conflict(conflicts) => ApiError::ApplyConflict {
                    resource: def.qualified_name(),
                    group: def.group,
                    name: name.to_string(),
                    causes: conflicts
                        .into_iter()
                        .map(|c| Cause {
                            reason: "FieldManagerConflict",
                            message: format!("conflict with \"{}\": {}", c.manager, c.field),
                            field: c.field,
                        })
                        .collect(),
                },
                other => ApiError::BadRequest(other.to_string()),
            })
        };
        for _ in 0..MAX_RETRIES {
            if self.read(def, ns, name).await?.is_none() {
                // Only the main resource is created by an apply; a subresource of a missing object is not
                // there to patch (and holding `patch` on `X/status` is no right to create X).
                if part != Part::Main {
                    return Err(ApiError::not_found(def, name));
                }
                let mut object = apply(None)?;
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), json!(name));
                }
                let options = WriteOptions { validation: FieldValidation::Ignore, ..options.clone() };
                match self.create_applied(def, ns, object, &options).await {
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Ok(mut written) => {
                        written.warnings.extend(warnings);
                        return Ok(written);
                    }
                    Err(e) => return Err(e),
                }
            }
            let options = WriteOptions { field_manager: String::new(), ..options.clone() };
            match self.read_modify_write(def, ns, name, part, &options, |current, _| apply(Some(current))).await {
                Err(ApiError::NotFound { .. }) => continue,
                Ok(mut written) => {
                    written.warnings.extend(warnings);
                    return Ok(written);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(def, name))
    }

    /// Creates an object built by server-side apply, whose managedFields the apply already set.
    async fn create_applied(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        object: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        self.create_admitted(def, ns, object, Vec::new(), options, false).await
    }

    /// The loop every update goes through: read, let `change` compute the new object, apply the update rules
    /// of `part`, validate, write with compare-and-swap on the revision read, retry on a lost race.
    async fn read_modify_write<F>(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        options: &WriteOptions,
        change: F,
    ) -> Result<Written, ApiError>
    where
        F: Fn(&Value, Revision) -> Result<Value, ApiError>,
    {
        let key = key(def, ns, name);
        for _ in 0..MAX_RETRIES {
            let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::not_found(def, name))?;
            let current = decode_as(def, &kv)?;
            let requested = change(&current, kv.mod_revision)?;
            let mut object = merge_update(def, part, &current, requested)?;
            let causes = match part {
                // The binding's own checks (a node named, not yet bound) ran when `change` built the object.
                Part::Binding => Vec::new(),
                _ => validation::validate(def, &object, Some(&current)),
            };
            if !causes.is_empty() {
                return Err(ApiError::invalid(def, name, causes));
            }
            if part == Part::Main {
                self.allocate_node_ports(def, ns, &mut object, Some(&current)).await?;
            }
            let subresource = part.subresource().unwrap_or_default();
            let user = options.user.as_ref();
            let warnings = admission::admit(self, def, ns, subresource, &mut object, Some(&current), user).await?;
            if !options.field_manager.is_empty() {
                patch::record_update(def, Some(&current), &mut object, &options.field_manager, part.subresource());
            }
            // An ExternalName Service turned into one with a virtual address and none asked for gets one, as
            // on create.
            let allocated = if part == Part::Main && leaves_external_name(def, &current, &object) {
                self.allocate_cluster_ip(def, ns, &mut object, options.dry_run).await?
            } else {
                None
            };
            let mut gained =
                self.reserve_gained_cluster_ips(def, &key, name, &current, &object, options.dry_run).await?;
            gained.extend(allocated);
            if object == current && !self.stale(&key).await? {
                // Kubernetes skips no-op writes: the resourceVersion stays and watchers see nothing. Unless
                // the value is stored with a provider or key other than the one that writes now: rewriting it
                // is how a key rotation reaches every object (`kubectl replace`), as in Kubernetes.
                return Ok(Written { object: present(part, current)?, warnings, created: false });
            }
            if options.dry_run {
                return Ok(Written { object: present(part, object)?, warnings, created: false });
            }
            let deleting = finished_deleting(def, &object);
            let result = if deleting {
                self.store.delete(&key, Some(kv.mod_revision)).await
            } else {
                self.store.update(&key, encode(def, &object)?, Some(kv.mod_revision)).await
            };
            if result.is_err() {
                for reservation in gained {
                    cluster_ips::release(self.store.as_ref(), reservation).await;
                }
            }
            match result {
                Ok(written) => {
                    if is_service(def) {
                        let kept = if deleting { Vec::new() } else { cluster_ips::addresses(&object) };
                        let lost = cluster_ips::addresses(&current).into_iter().filter(|ip| !kept.contains(ip));
                        cluster_ips::release_addresses(self.store.as_ref(), &key, lost).await;
                    }
                    set_resource_version(&mut object, written.mod_revision);
                    return Ok(Written { object: present(part, object)?, warnings, created: false });
                }
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(skiff_store::Error::NotFound(_)) => return Err(ApiError::not_found(def, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(def, name))
    }

    /// DELETE: removes the object, or marks it for deletion when finalizers or a grace period must run first.
    /// Deleting a Node revokes the node first ([`crate::revocation`]): its certificates are refused by the
    /// time the delete answers.
    pub async fn delete(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = key(def, ns, name);
        let mut revoked = false;
        for _ in 0..MAX_RETRIES {
            let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::not_found(def, name))?;
            let current = decode_as(def, &kv)?;
            check_delete_preconditions(def, name, &current, kv.mod_revision, options)?;
            let user = options.user.as_ref();
            admission::node_restriction(def, Operation::Delete, "", ns, name, Some(&current), None, user)?;
            // Once, whether the Node goes now or waits for finalizers: the deletion is decided.
            if (def.group, def.plural) == ("", "nodes") && !options.dry_run && !revoked {
                crate::revocation::revoke_node(self, name).await?;
                revoked = true;
            }
            let Some(marked) = mark_for_deletion(def, &current, options) else {
                if options.dry_run {
                    return Ok(current);
                }
                match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        if is_service(def) {
                            cluster_ips::release_service(self.store.as_ref(), &key, &current).await;
                        }
                        return Ok(current);
                    }
                    Err(skiff_store::Error::Conflict { .. }) => continue,
                    Err(skiff_store::Error::NotFound(_)) => {
                        return Err(ApiError::not_found(def, name));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if marked == current || options.dry_run {
                return Ok(marked);
            }
            match self.store.update(&key, encode(def, &marked)?, Some(kv.mod_revision)).await {
                Ok(written) => {
                    let mut marked = marked;
                    set_resource_version(&mut marked, written.mod_revision);
                    return Ok(marked);
                }
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(skiff_store::Error::NotFound(_)) => return Err(ApiError::not_found(def, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(def, name))
    }

    /// deletecollection: deletes every object the selectors match, each by the rules of [`Objects::delete`].
    pub async fn delete_collection(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        list: &ListOptions,
        options: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let items = self.list(def, ns, &ListOptions { limit: 0, continue_token: None, ..list.clone() }).await?.items;
        let mut deleted = Vec::with_capacity(items.len());
        for item in items {
            let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
            match self.delete(def, item_ns, name_of(&item), options).await {
                Ok(object) => deleted.push(object),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// pods/binding: assigns a pod to a node, once.
    pub async fn bind(
        &self,
        pods: &'static ResourceDef,
        ns: &str,
        name: &str,
        binding: &Value,
    ) -> Result<(), ApiError> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    pods,
                    name,
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: "target.name".into(),
                    }],
                )
            })?
            .to_string();
        let options = WriteOptions { field_manager: String::new(), ..WriteOptions::default() };
        let now = now_rfc3339();
        self.read_modify_write(pods, Some(ns), name, Part::Binding, &options, |current, _| {
            match current.pointer("/spec/nodeName").and_then(Value::as_str) {
                Some(bound) if !bound.is_empty() => Err(ApiError::Conflict {
                    resource: "pods".into(),
                    group: "",
                    name: format!("{name}\" is already assigned to node \"{bound}"),
                }),
                _ => {
                    let mut pod = current.clone();
                    pod["spec"]["nodeName"] = json!(node);
                    let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let mut conditions: Vec<Value> =
                        conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
                    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
                    pod["status"]["conditions"] = Value::Array(conditions);
                    Ok(pod)
                }
            }
        })
        .await?;
        Ok(())
    }

    /// GET of the scale subresource.
    pub async fn get_scale(&self, def: &'static ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        scale_of(&self.get(def, ns, name).await?)
    }
}

/// Checks and cleans a request body: the shape of the kind, unknown fields per `fieldValidation`.
fn admit(def: &ResourceDef, object: Value, options: &WriteOptions) -> Result<(Value, Vec<String>), ApiError> {
    if !object.is_object() {
        return Err(ApiError::BadRequest("the request body must be a JSON object".into()));
    }
    check_type(def, &object)?;
    let shape_error =
        |e: serde_json::Error| ApiError::BadRequest(format!("the object is not a valid {}: {e}", def.kind));
    let (mut normalized, unknown) = match options.validation {
        FieldValidation::Ignore => (def.normalize(object).map_err(shape_error)?, Vec::new()),
        _ => {
            let normalized = def.normalize(object.clone()).map_err(shape_error)?;
            let unknown = validation::unknown_fields(&object, &normalized);
            (normalized, unknown)
        }
    };
    if options.validation == FieldValidation::Strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        return Err(ApiError::BadRequest(format!("strict decoding error: {}", fields.join(", "))));
    }
    let warnings = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    normalized["apiVersion"] = json!(def.api_version());
    normalized["kind"] = json!(def.kind);
    if !normalized.get("metadata").is_some_and(Value::is_object) {
        normalized["metadata"] = json!({});
    }
    skiff_api::defaults::apply(def, &mut normalized);
    Ok((normalized, warnings))
}

fn check_type(def: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if (!api_version.is_empty() && api_version != def.api_version()) || (!kind.is_empty() && kind != def.kind) {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) and kind ({kind}) do not match the expected {} {}",
            def.api_version(),
            def.kind
        )));
    }
    Ok(())
}

fn check_identity(def: &ResourceDef, ns: Option<&str>, name: &str, object: &Value) -> Result<(), ApiError> {
    let body_name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name);
    if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if def.namespaced
        && let (Some(ns), Some(body_ns)) = (ns, object.pointer("/metadata/namespace").and_then(Value::as_str))
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request".into(),
        ));
    }
    Ok(())
}

/// Fills the metadata the server owns on create and resets what a client may not set.
fn prepare_create(def: &ResourceDef, ns: Option<&str>, object: &mut Value) -> Result<(), ApiError> {
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
    match (def.namespaced, ns) {
        (true, Some(ns)) => {
            if meta.get("namespace").and_then(Value::as_str).is_some_and(|n| !n.is_empty() && n != ns) {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            meta.insert("namespace".into(), json!(ns));
        }
        (true, None) => {
            return Err(ApiError::BadRequest("a namespaced object needs a namespace".into()));
        }
        (false, _) => {
            meta.remove("namespace");
        }
    }
    let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
        let name = format!("{prefix}{}", random_suffix());
        meta.insert("name".into(), json!(name));
    }
    if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            def,
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for owned in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        meta.remove(owned);
    }
    if def.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    initial_status(def, object);
    skiff_api::defaults::on_create(def, object);
    Ok(())
}

/// Whether an update turns an ExternalName Service into one that needs a cluster IP, without naming one.
fn leaves_external_name(def: &ResourceDef, current: &Value, object: &Value) -> bool {
    let kind = |service: &Value| service.pointer("/spec/type").and_then(Value::as_str).map(str::to_string);
    let unnamed = object.pointer("/spec/clusterIP").is_none_or(|ip| ip.is_null() || ip == "");
    is_service(def)
        && kind(current).as_deref() == Some("ExternalName")
        && kind(object).as_deref() != Some("ExternalName")
        && unnamed
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "services"
}

/// NodePort Services, and LoadBalancer ones unless they opt out, are reached on a port of every node.
fn needs_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

fn service_ports(service: &Value) -> &[Value] {
    service.pointer("/spec/ports").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The node ports a Service holds.
fn node_ports(service: &Value) -> std::collections::HashSet<i64> {
    service_ports(service).iter().filter_map(|p| p["nodePort"].as_i64()).filter(|n| *n != 0).collect()
}

/// Whether two Service ports are the same port across an update: by name when named (a Service with several
/// ports names them all), else by number, and by protocol.
fn same_service_port(a: &Value, b: &Value) -> bool {
    let (name_a, name_b) = (a["name"].as_str().unwrap_or_default(), b["name"].as_str().unwrap_or_default());
    a["protocol"].as_str().unwrap_or("TCP") == b["protocol"].as_str().unwrap_or("TCP")
        && if name_a.is_empty() || name_b.is_empty() { a["port"] == b["port"] } else { name_a == name_b }
}

/// Like Kubernetes, an update that leaves a port's nodePort out keeps the one the same port holds, while the
/// Service still needs node ports; one that stops needing them loses those it was given (unless it asks for
/// another).
fn keep_node_ports(object: &mut Value, current: &Value) {
    let needs = needs_node_ports(&object["spec"]);
    let old_ports = service_ports(current).to_vec();
    for port in object.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
        let held = old_ports.iter().find(|old| same_service_port(old, port)).and_then(|old| old["nodePort"].as_i64());
        let Some(held) = held.filter(|n| *n != 0) else { continue };
        let asked = port["nodePort"].as_i64().unwrap_or(0);
        if needs && asked == 0 {
            port["nodePort"] = json!(held);
        } else if !needs
            && asked == held
            && let Some(port) = port.as_object_mut()
        {
            port.remove("nodePort");
        }
    }
}

/// Checks the node ports `service` asks for against those `used` by other Services (the causes of a 422 on
/// failure), then gives each port without one the first free port of [`NODE_PORTS`] from `start` on (None on
/// failure when the range is full).
fn assign_node_ports(
    service: &mut Value,
    used: &std::collections::HashSet<i64>,
    start: i64,
) -> Result<(), Option<Vec<Cause>>> {
    let mut causes = Vec::new();
    for (i, port) in service_ports(service).iter().enumerate() {
        let asked = port["nodePort"].as_i64().unwrap_or(0);
        let problem = if asked == 0 {
            continue;
        } else if !NODE_PORTS.contains(&asked) {
            format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                NODE_PORTS.start(),
                NODE_PORTS.end()
            )
        } else if used.contains(&asked) {
            "provided port is already allocated".to_string()
        } else {
            continue;
        };
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {asked}: {problem}"),
            field: format!("spec.ports[{i}].nodePort"),
        });
    }
    if !causes.is_empty() {
        return Err(Some(causes));
    }
    let mut taken = used.clone();
    taken.extend(node_ports(service));
    let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
    for port in service.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if port["nodePort"].as_i64().is_some_and(|n| n != 0) {
            continue;
        }
        let free = (0..span)
            .map(|offset| NODE_PORTS.start() + (start - NODE_PORTS.start() + offset).rem_euclid(span))
            .find(|candidate| !taken.contains(candidate))
            .ok_or(None)?;
        taken.insert(free);
        port["nodePort"] = json!(free);
    }
    Ok(())
}

/// What status a new object starts with, as the Kubernetes registry strategies set it.
fn initial_status(def: &ResourceDef, object: &mut Value) {
    match (def.group, def.plural) {
        ("", "namespaces") => {
            object["status"] = json!({"phase": "Active"});
            if object.pointer("/spec/finalizers").is_none() {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        ("", "pods") => {
            object["status"] = json!({"phase": "Pending", "qosClass": qos_class(object)});
        }
        ("", "services") => object["status"] = json!({"loadBalancer": {}}),
        ("", "nodes") => {}
        _ if def.status_subresource => object["status"] = json!({}),
        _ => {}
    }
}

/// The pod's QoS class from its containers' requests and limits (Kubernetes' rules, simplified to "every
/// container has equal cpu and memory requests and limits" for Guaranteed).
fn qos_class(pod: &Value) -> &'static str {
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let resources: Vec<&Value> = containers.iter().map(|c| &c["resources"]).collect();
    let empty = |v: &Value| v.as_object().is_none_or(Map::is_empty);
    if resources.iter().all(|r| empty(&r["requests"]) && empty(&r["limits"])) {
        return "BestEffort";
    }
    let guaranteed = resources.iter().all(|r| {
        ["cpu", "memory"].iter().all(|res| {
            let limit = &r["limits"][res];
            !limit.is_null() && (r["requests"][res].is_null() || &r["requests"][res] == limit)
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// Builds the object to store from the current one and what the client asked for, by the rules of the
/// addressed part: the main endpoint keeps status, `/status` keeps everything but status.
fn merge_update(def: &ResourceDef, part: Part, current: &Value, requested: Value) -> Result<Value, ApiError> {
    let mut object = match part {
        Part::Status => {
            let mut object = current.clone();
            object["status"] = requested.get("status").cloned().unwrap_or(json!({}));
            object
        }
        Part::Approval => {
            let mut object = current.clone();
            let mut conditions = requested.pointer("/status/conditions").cloned().unwrap_or(json!([]));
            // Clients before 1.19 sent conditions without a status, which Kubernetes defaults to True.
            for condition in conditions.as_array_mut().into_iter().flatten() {
                if condition.get("status").is_none_or(|s| s.as_str().is_none_or(str::is_empty)) {
                    condition["status"] = json!("True");
                }
            }
            object["status"]["conditions"] = conditions;
            object
        }
        // A binding is built by the server itself from the current pod: spec.nodeName and the PodScheduled
        // condition in one write.
        Part::Binding => requested,
        Part::Main | Part::Scale => {
            let mut object = requested;
            if def.status_subresource {
                match current.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            object
        }
    };
    // Like Kubernetes, an update that leaves the allocated cluster IP out keeps it, unless it makes the
    // Service an ExternalName one, which has none (the address is then released).
    if is_service(def) && object.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") {
        for field in ["clusterIP", "clusterIPs"] {
            if object.pointer(&format!("/spec/{field}")).is_none_or(|v| v == "" || v.is_null())
                && let Some(allocated) = current.pointer(&format!("/spec/{field}"))
            {
                object["spec"][field] = allocated.clone();
            }
        }
        keep_node_ports(&mut object, current);
    }
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
    for owned in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace"] {
        match current["metadata"].get(owned) {
            Some(value) => meta.insert(owned.into(), value.clone()),
            None => meta.remove(owned),
        };
    }
    meta.remove("resourceVersion");
    meta.remove("selfLink");
    // A finalizer may be removed once deletion started, never added.
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        let before = current.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(after) = meta.get("finalizers").and_then(Value::as_array)
            && after.iter().any(|f| !before.contains(f))
        {
            return Err(ApiError::Forbidden("no new finalizers can be added if the object is being deleted".into()));
        }
    }
    if def.tracks_generation {
        let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let changed = spec_of(current) != spec_of(&object);
        object["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
    }
    Ok(object)
}

/// Everything but metadata and status: what a generation counts changes of.
fn spec_of(object: &Value) -> Map<String, Value> {
    let mut map = object.as_object().cloned().unwrap_or_default();
    for field in ["metadata", "status", "apiVersion", "kind"] {
        map.remove(field);
    }
    map
}

/// An object being deleted whose last finalizer is gone (and whose grace period the node already ended).
fn finished_deleting(def: &ResourceDef, object: &Value) -> bool {
    let meta = &object["metadata"];
    meta.get("deletionTimestamp").is_some()
        && meta["finalizers"].as_array().is_none_or(Vec::is_empty)
        && object.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty)
        && (def.plural != "pods" || meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0)
}

fn check_delete_preconditions(
    def: &ResourceDef,
    name: &str,
    current: &Value,
    revision: Revision,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    if let Some(uid) = &options.precondition_uid
        && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
    {
        return Err(ApiError::conflict(def, name));
    }
    if let Some(rv) = &options.precondition_resource_version
        && rv != &revision.to_string()
    {
        return Err(ApiError::conflict(def, name));
    }
    Ok(())
}

/// The object as it must be stored when deletion cannot be immediate (finalizers, a namespace to empty, a
/// running pod's grace period), or None when the object can be removed now.
fn mark_for_deletion(def: &ResourceDef, current: &Value, options: &DeleteOptions) -> Option<Value> {
    let mut object = current.clone();
    let meta = object.get_mut("metadata")?.as_object_mut()?;
    let mut finalizers: Vec<Value> = meta.get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    // The propagation policy is recorded the way Kubernetes does it, for the garbage collector to act on.
    let policy_finalizer = match options.propagation_policy.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    if meta.get("deletionTimestamp").is_none()
        && let Some(finalizer) = policy_finalizer
        && !finalizers.contains(&json!(finalizer))
    {
        finalizers.push(json!(finalizer));
        meta.insert("finalizers".into(), Value::Array(finalizers.clone()));
    }
    let namespace_in_use = def.group.is_empty() && def.plural == "namespaces";
    let grace = match (def.plural, current.pointer("/spec/nodeName").and_then(Value::as_str)) {
        ("pods", Some(node))
            if !node.is_empty()
                && current.pointer("/status/phase").is_none_or(|p| p != "Succeeded" && p != "Failed") =>
        {
            options
                .grace_period_seconds
                .or(current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
                .unwrap_or(30)
        }
        _ => 0,
    };
    if finalizers.is_empty() && !namespace_in_use && grace == 0 {
        return None;
    }
    if meta.get("deletionTimestamp").is_none() {
        let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
        meta.insert("deletionTimestamp".into(), json!(skiff_api::format_time(when)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    } else if grace == 0 && def.plural == "pods" {
        // A second delete with a zero grace period forces the pod out, as `kubectl delete --force` expects.
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if finalizers.is_empty() {
            return None;
        }
    }
    if namespace_in_use {
        object["status"]["phase"] = json!("Terminating");
    }
    Some(object)
}

/// The object to answer with for a write to `part`.
fn present(part: Part, object: Value) -> Result<Value, ApiError> {
    match part {
        Part::Scale => scale_of(&object),
        _ => Ok(object),
    }
}

/// The autoscaling/v1 Scale view of an object with `spec.replicas`.
fn scale_of(object: &Value) -> Result<Value, ApiError> {
    let selector = match object.pointer("/spec/selector") {
        Some(selector) => {
            let typed = serde_json::from_value(selector.clone())
                .map_err(|e| ApiError::Internal(format!("stored selector is malformed: {e}")))?;
            LabelSelector::from_k8s(&typed).map(|s| s.to_string()).unwrap_or_default()
        }
        None => String::new(),
    };
    let meta = &object["metadata"];
    let mut scale_meta = Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(value) = meta.get(field) {
            scale_meta.insert(field.into(), value.clone());
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    }))
}

/// `current` with the replicas of a Scale object.
fn with_scale(def: &ResourceDef, current: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            def,
            name_of(current),
            vec![Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                field: "spec.replicas".into(),
            }],
        ));
    }
    let mut object = current.clone();
    object["spec"]["replicas"] = json!(replicas);
    Ok(object)
}

pub fn name_of(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// The store key of an object: `/registry/<group or core>/<plural>/[<namespace>/]<name>`.
pub fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> String {
    format!("{}{name}", prefix(def, ns.filter(|_| def.namespaced).or(def.namespaced.then_some(""))))
}

/// The key prefix of a collection; for a namespaced resource without a namespace, of all namespaces.
pub fn prefix(def: &ResourceDef, ns: Option<&str>) -> String {
    let group = if def.group.is_empty() { "core" } else { def.group };
    match ns.filter(|ns| def.namespaced && !ns.is_empty()) {
        Some(ns) => format!("/registry/{group}/{}/{ns}/", def.plural),
        None => format!("/registry/{group}/{}/", def.plural),
    }
}

pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

/// A stored object in the version `def` serves.
pub fn decode_as(def: &ResourceDef, kv: &KeyValue) -> Result<Value, ApiError> {
    def.from_storage(decode(kv)?).map_err(|e| ApiError::Internal(format!("stored object {}: {e}", kv.key)))
}

/// The stored form of an object: JSON in its storage version without its resourceVersion, at most
/// [`MAX_OBJECT_BYTES`] long on every backend (etcd's own limit, which the embedded store does not have),
/// checked before any write.
fn encode(def: &ResourceDef, object: &Value) -> Result<Bytes, ApiError> {
    let mut stored = def.to_storage(object.clone()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::object_too_large(Some(bytes.len())));
    }
    Ok(Bytes::from(bytes))
}

pub fn set_resource_version(object: &mut Value, revision: Revision) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

fn encode_continue(last_key: &str, revision: Revision) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": revision, "start": last_key}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::BadRequest("continue key is not valid".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let start = value.get("start").and_then(Value::as_str).ok_or_else(invalid)?;
    if !start.starts_with(prefix) {
        return Err(invalid());
    }
    Ok(start.to_string())
}

/// Kubernetes' generateName suffix: five characters from an alphabet without vowels or look-alikes.
pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

pub fn now_rfc3339() -> String {
    skiff_api::format_time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn services() -> &'static ResourceDef {
        skiff_api::resources::find("", "v1", "services").unwrap()
    }

    fn service(kind: &str, ports: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"type": kind, "clusterIP": "10.43.0.9", "ports": ports}})
    }

    #[tokio::test]
    async fn a_cluster_ip_is_one_services_until_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::new(Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap()));
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let options = WriteOptions::default();
        let asking = |name: &str, ip: &str| json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        objects.create(services(), Some("default"), asking("a", "10.43.0.9"), &options).await.unwrap();
        let refused =
            objects.create(services(), Some("default"), asking("b", "10.43.0.9"), &options).await.err().unwrap();
        assert_eq!(
            refused.to_string(),
            r#"Service "b" is invalid: spec.clusterIPs: Invalid value: []string{"10.43.0.9"}: failed to allocate IP 10.43.0.9: provided IP is already allocated"#
        );
        let outside =
            objects.create(services(), Some("default"), asking("b", "10.44.0.9"), &options).await.err().unwrap();
        assert!(outside.to_string().contains("The range of valid IPs is 10.43.0.0/16"), "{outside}");
        // A create that fails after reserving gives the address back.
        let twice = objects.create(services(), Some("default"), asking("a", "10.43.0.10"), &options).await;
        assert!(matches!(twice, Err(ApiError::AlreadyExists { .. })));
        objects.create(services(), Some("default"), asking("c", "10.43.0.10"), &options).await.unwrap();

        objects.delete(services(), Some("default"), "a", &DeleteOptions::default()).await.unwrap();
        let taken = objects.create(services(), Some("default"), asking("b", "10.43.0.9"), &options).await.unwrap();
        assert_eq!(taken.object["spec"]["clusterIPs"], json!(["10.43.0.9"]));
        // An update may not take another Service's address either: through `clusterIPs`, or by turning an
        // ExternalName Service into a ClusterIP one; and a Service that leaves its address gives it back.
        let replace = |name: &'static str, spec: Value| {
            let object = json!({"metadata": {"name": name}, "spec": spec});
            objects.replace(services(), Some("default"), name, Part::Main, object, &options)
        };
        let ports = json!([{"port": 80}]);
        let both = json!({"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10", "10.43.0.9"], "ports": ports});
        let refused = replace("c", both).await.err().unwrap();
        assert!(refused.to_string().contains("spec.clusterIPs[1]"), "{refused}");
        let external = json!({"type": "ExternalName", "externalName": "example.org"});
        let e = json!({"metadata": {"name": "e"}, "spec": external});
        objects.create(services(), Some("default"), e, &options).await.unwrap();
        let turned = json!({"type": "ClusterIP", "clusterIP": "10.43.0.9", "ports": ports});
        let refused = replace("e", turned.clone()).await.err().unwrap();
        assert!(refused.to_string().contains("provided IP is already allocated"), "{refused}");
        replace("b", external.clone()).await.unwrap();
        replace("e", turned).await.unwrap();
        // Turned into a ClusterIP Service without an address asked for, it gets one, as on create.
        let f = json!({"metadata": {"name": "f"}, "spec": external});
        objects.create(services(), Some("default"), f, &options).await.unwrap();
        let given = replace("f", json!({"type": "ClusterIP", "ports": ports})).await.unwrap();
        let ip: Ipv4Addr = given.object["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_service_range(ip), "{ip}");
        let held = cluster_ips::is_free(objects.store.as_ref(), ip, "someone else").await.unwrap();
        assert!(!held, "the address is reserved for f");

        let given = objects
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "d"}, "spec": {"ports": [{"port": 80}]}}),
                &options,
            )
            .await
            .unwrap();
        let ip: Ipv4Addr = given.object["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_service_range(ip) && ip.octets()[2] > 0, "from the dynamic band: {ip}");
    }

    #[test]
    fn node_ports_are_given_from_the_range_and_conflicts_refused() {
        let mut svc =
            service("NodePort", json!([{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30005}]));
        let used = HashSet::from([32767, 30000]);
        assign_node_ports(&mut svc, &used, 32767).unwrap();
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30001, "wraps around past the used ports and its own 30005");
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30005);

        let mut taken = service("NodePort", json!([{"port": 80, "nodePort": 30000}, {"port": 81, "nodePort": 80}]));
        let causes = assign_node_ports(&mut taken, &used, 30000).unwrap_err().unwrap();
        let messages: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            messages,
            [
                "spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated",
                "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
            ]
        );
        let error = ApiError::invalid(services(), "web", causes[..1].to_vec());
        assert_eq!(
            error.to_string(),
            "Service \"web\" is invalid: spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated"
        );

        let full: HashSet<i64> = NODE_PORTS.collect();
        let mut svc = service("NodePort", json!([{"port": 80}]));
        assert_eq!(assign_node_ports(&mut svc, &full, 30000), Err(None));
    }

    #[test]
    fn updates_keep_node_ports_like_the_cluster_ip() {
        let current = service(
            "NodePort",
            json!([{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                   {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]),
        );
        // Left out, reordered, one port renumbered: kept by name; a new port gets none here (allocation does).
        let requested = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [
            {"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "extra", "port": 90, "protocol": "TCP"}]}});
        let updated = merge_update(services(), Part::Main, &current, requested).unwrap();
        let node_ports: Vec<&Value> =
            updated["spec"]["ports"].as_array().unwrap().iter().map(|p| &p["nodePort"]).collect();
        assert_eq!(node_ports, [&json!(30053), &json!(30080), &Value::Null]);
        assert_eq!(updated["spec"]["clusterIP"], "10.43.0.9");

        // Unnamed ports match by number and protocol.
        let current = service("LoadBalancer", json!([{"port": 80, "protocol": "TCP", "nodePort": 31000}]));
        let requested = service("LoadBalancer", json!([{"port": 80, "protocol": "TCP"}]));
        let updated = merge_update(services(), Part::Main, &current, requested).unwrap();
        assert_eq!(updated["spec"]["ports"][0]["nodePort"], 31000);
        let udp = service("LoadBalancer", json!([{"port": 80, "protocol": "UDP"}]));
        assert!(
            merge_update(services(), Part::Main, &current, udp).unwrap()["spec"]["ports"][0].get("nodePort").is_none()
        );

        // Back to ClusterIP: the node port goes, as Kubernetes drops it.
        let requested = service("ClusterIP", json!([{"port": 80, "protocol": "TCP", "nodePort": 31000}]));
        let updated = merge_update(services(), Part::Main, &current, requested).unwrap();
        assert!(updated["spec"]["ports"][0].get("nodePort").is_none());
        let opted_out = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}});
        assert!(!needs_node_ports(&opted_out["spec"]));
    }
}
