//! kube-apiserver's audit log (`--audit-policy-file`, `--audit-log-path`): every request is matched against
//! an audit.k8s.io/v1 Policy (the first matching rule decides its level and the stages left out), and gets
//! audit.k8s.io/v1 `Event` lines at RequestReceived, ResponseStarted (long-running requests only) and
//! ResponseComplete.
//!
//! The policy is evaluated with the authenticated user, before impersonation, as kube-apiserver's audit
//! filter runs before its impersonation filter; the router's authorize layer reports the impersonated user
//! and the decision through the response's extensions ([`Authorized`]).
//!
//! Events go through a bounded channel to one writer thread, so no request ever waits on the disk: when the
//! channel is full the event is dropped and counted, as kube-apiserver's buffered backend does.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiff_api::authz::{Attributes, UserInfo};
use skiff_api::limits::MAX_REQUEST_BODY_BYTES;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Events waiting for the writer; beyond this they are dropped. kube-apiserver's buffered backend holds as
/// many (`--audit-log-buffer-size`'s default).
const BUFFER: usize = 10_000;

/// The response header carrying a request's audit ID, as kube-apiserver's.
pub const AUDIT_ID_HEADER: &str = "audit-id";

/// Where and how the audit log is written (`skiff server`'s `--audit-*` flags).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub policy_file: PathBuf,
    /// The log file; `-` is standard output.
    pub log_path: PathBuf,
    /// Rotate once the file would grow beyond this many megabytes; 0 never rotates.
    pub max_size_mb: u64,
    /// How many rotated files (`FILE.1`, the newest, to `FILE.N`) are kept; 0 keeps them all, as
    /// kube-apiserver's `--audit-log-maxbackup`.
    pub max_backups: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The policy file could not be read.
    #[error("cannot read the audit policy {}", path.display())]
    ReadPolicy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The policy file is neither JSON nor YAML of an audit Policy.
    #[error("the audit policy {} is invalid", path.display())]
    ParsePolicy {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// The policy file holds another kind.
    #[error("the audit policy {} is a {kind} of {api_version}, not a Policy of audit.k8s.io/v1", path.display())]
    WrongKind { path: PathBuf, kind: String, api_version: String },
    /// The log file could not be opened for appending.
    #[error("cannot open the audit log {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How much of a request is recorded; ordered, so `level >= Level::Request` reads as Kubernetes' `Less`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

/// An audit.k8s.io/v1 Policy.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<PolicyRule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy asks of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Reads a policy file, YAML or JSON.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AuditError::ReadPolicy { path: path.into(), source })?;
        let policy: Policy =
            serde_yaml::from_str(&text).map_err(|source| AuditError::ParsePolicy { path: path.into(), source })?;
        if policy.kind != "Policy" || policy.api_version != "audit.k8s.io/v1" {
            return Err(AuditError::WrongKind {
                path: path.into(),
                kind: policy.kind,
                api_version: policy.api_version,
            });
        }
        Ok(policy)
    }

    /// The first matching rule's level with its and the policy's omitted stages; no rule matching is None.
    pub fn evaluate(&self, attributes: &Attributes) -> Decided {
        match self.rules.iter().find(|rule| rule.matches(attributes)) {
            Some(rule) => {
                let mut omit_stages = self.omit_stages.clone();
                omit_stages.extend(rule.omit_stages.iter().filter(|s| !self.omit_stages.contains(s)));
                Decided {
                    level: rule.level,
                    omit_stages,
                    omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
                }
            }
            None => Decided { level: Level::None, omit_stages: Vec::new(), omit_managed_fields: false },
        }
    }
}

impl PolicyRule {
    fn matches(&self, attributes: &Attributes) -> bool {
        let user = &attributes.user;
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attributes.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(attributes);
        }
        if !self.non_resource_urls.is_empty() {
            return !attributes.resource_request
                && self.non_resource_urls.iter().any(|s| path_matches(&attributes.path, s));
        }
        true
    }

    fn matches_resource(&self, a: &Attributes) -> bool {
        if !a.resource_request {
            return false;
        }
        // Cluster-scoped resources have the empty namespace, which a rule may name.
        if !self.namespaces.is_empty() && !self.namespaces.contains(&a.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        self.resources.iter().filter(|gr| gr.group == a.api_group).any(|gr| {
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(&a.name) {
                return false;
            }
            gr.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
                    || r.strip_suffix("/*") == Some(a.resource.as_str())
            })
        })
    }
}

/// A nonResourceURLs entry: exact, `*`, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*" || spec == path || spec.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
}

/// What the router's authorize layer learnt, put in the response's extensions for the audit layer.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub allowed: bool,
    /// The user the request acts as, when it impersonates one.
    pub impersonated: Option<UserInfo>,
}

#[derive(Debug, Clone, Serialize)]
struct EventUser {
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for EventUser {
    fn from(user: &UserInfo) -> Self {
        EventUser {
            username: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    api_group: String,
    api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    subresource: String,
}

/// An audit.k8s.io/v1 Event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: Stage,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: EventUser,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<EventUser>,
    #[serde(rename = "sourceIPs")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// Kubernetes' `metav1.MicroTime`: RFC 3339 in UTC with microseconds.
fn micro_time(at: jiff::Timestamp) -> String {
    format!("{}.{:06}Z", at.strftime("%Y-%m-%dT%H:%M:%S"), at.subsec_microsecond())
}

/// Watches, exec, attach, port-forward, logs and proxies answer with headers first and last as long as their
/// client wants: they get a ResponseStarted event, and ResponseComplete when their body ends.
fn long_running(attributes: &Attributes) -> bool {
    matches!(attributes.verb.as_str(), "watch" | "proxy")
        || matches!(attributes.subresource.as_str(), "exec" | "attach" | "portforward" | "log" | "proxy")
}

/// Secrets' values are recorded only where the policy asks for everything (RequestResponse): below it, a
/// Secret's request object keeps its metadata and loses `data` and `stringData` (and a patch, which may carry
/// them anywhere, is left out).
fn redact(attributes: &Attributes, level: Level, object: Value) -> Option<Value> {
    let secret = attributes.api_group.is_empty() && attributes.resource == "secrets";
    if !secret || level >= Level::RequestResponse {
        return Some(object);
    }
    let Value::Object(mut fields) = object else { return None };
    fields.remove("data");
    fields.remove("stringData");
    Some(Value::Object(fields))
}

/// Removes `metadata.managedFields` from an object and from a list's items (`omitManagedFields`).
fn without_managed_fields(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(metadata) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.remove("managedFields");
            }
        }
    }
    object
}

/// `responseStatus` as kube-apiserver fills it: the code, and for an error the Status' status, reason and
/// message.
fn response_status(code: StatusCode, body: Option<&Value>) -> Value {
    let mut status = json!({"metadata": {}, "code": code.as_u16()});
    if let Some(body) = body.filter(|b| b["kind"] == "Status" && code.as_u16() >= 300) {
        for field in ["status", "reason", "message"] {
            if let Some(value) = body.get(field).filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
                status[field] = value.clone();
            }
        }
    }
    status
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
}

enum Message {
    Line(String),
    Close,
}

/// The policy and the writer's queue, shared by every connection.
pub struct Auditor {
    policy: Policy,
    queue: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

/// The writer thread; [`AuditWriter::close`] flushes what is queued and ends it.
pub struct AuditWriter {
    queue: mpsc::Sender<Message>,
    thread: tokio::task::JoinHandle<()>,
}

impl AuditWriter {
    pub async fn close(self) {
        // Waits for room: at shutdown, the queue's events are written rather than dropped.
        let _ = self.queue.send(Message::Close).await;
        if let Err(e) = self.thread.await {
            tracing::warn!(error = %e, "the audit log writer failed");
        }
    }
}

impl Auditor {
    /// Reads the policy, opens the log and starts its writer.
    pub fn start(config: &AuditConfig) -> Result<(Arc<Self>, AuditWriter), AuditError> {
        let policy = Policy::load(&config.policy_file)?;
        let sink = LogFile::open(config)?;
        let (queue, receiver) = mpsc::channel(BUFFER);
        let thread = tokio::task::spawn_blocking(move || write_events(receiver, sink));
        let auditor = Arc::new(Auditor { policy, queue: queue.clone(), dropped: AtomicU64::new(0) });
        Ok((auditor, AuditWriter { queue, thread }))
    }

    /// Starts auditing a request: `user` is who authentication found (none for a refused or anonymous one).
    pub fn begin<B>(
        self: &Arc<Self>,
        request: &http::Request<B>,
        user: Option<&UserInfo>,
        peer: SocketAddr,
    ) -> Pending {
        let received = jiff::Timestamp::now();
        let attributes = crate::authz::request_attributes(
            user.cloned().unwrap_or_default(),
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let decided = self.policy.evaluate(&attributes);
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut source_ips: Vec<String> =
            header("x-forwarded-for").split(',').map(str::trim).filter(|ip| !ip.is_empty()).map(String::from).collect();
        source_ips.push(peer.ip().to_string());
        let object_ref = attributes.resource_request.then(|| ObjectRef {
            resource: attributes.resource.clone(),
            namespace: attributes.namespace.clone(),
            name: attributes.name.clone(),
            api_group: attributes.api_group.clone(),
            api_version: attributes.api_version.clone(),
            subresource: attributes.subresource.clone(),
        });
        let event = Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: decided.level,
            audit_id: uuid::Uuid::new_v4().to_string(),
            stage: Stage::RequestReceived,
            request_uri: request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
            verb: attributes.verb.clone(),
            user: user.map(EventUser::from).unwrap_or(EventUser {
                username: String::new(),
                uid: String::new(),
                groups: Vec::new(),
                extra: BTreeMap::new(),
            }),
            impersonated_user: None,
            source_ips,
            user_agent: header("user-agent").to_string(),
            object_ref,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: micro_time(received),
            stage_timestamp: micro_time(received),
            annotations: BTreeMap::new(),
        };
        let pending = Pending {
            auditor: self.clone(),
            long_running: long_running(&attributes),
            authenticated: user.is_some(),
            attributes,
            decided,
            event,
        };
        pending.emit(Stage::RequestReceived);
        pending
    }

    fn send(&self, event: &Event) {
        let line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(e) => return tracing::warn!(error = %e, "cannot encode an audit event"),
        };
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(dropped, audit_id = event.audit_id, "the audit log is behind, dropping an event");
            }
            // Shut down: the writer has flushed and ended.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// One request's audit record, from its arrival to its response's end.
pub struct Pending {
    auditor: Arc<Auditor>,
    attributes: Attributes,
    decided: Decided,
    event: Event,
    long_running: bool,
    authenticated: bool,
}

impl Pending {
    /// Reads the body of a request whose level records it; other requests pass through untouched.
    pub async fn read_request<B>(&mut self, request: http::Request<B>) -> Result<http::Request<Body>, ApiError>
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let request = request.map(Body::new);
        if self.decided.level < Level::Request || self.long_running || !self.authenticated {
            return Ok(request);
        }
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await.map_err(|error| {
            if error.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::TooLarge(format!("limit is {MAX_REQUEST_BODY_BYTES}"))
            } else {
                ApiError::BadRequest("the request body could not be read".to_string())
            }
        })?;
        // Decoded as the router will (JSON, YAML or protobuf, which kubectl sends for built-in kinds); a body
        // it cannot decode is refused there, and recorded as no object here.
        if !bytes.is_empty()
            && let Ok(object) = crate::router::decode_body(&parts.headers, &bytes)
        {
            let object = if self.decided.omit_managed_fields { without_managed_fields(object) } else { object };
            self.name_created(&object);
            self.event.request_object = redact(&self.attributes, self.decided.level, object);
        }
        Ok(http::Request::from_parts(parts, Body::from(bytes)))
    }

    /// Records the response: its code, the authorization decision, its object where the level asks (only
    /// non-streaming JSON), and emits ResponseComplete, or for a long-running request ResponseStarted now
    /// and ResponseComplete when its body ends.
    pub async fn respond(mut self, response: Response) -> Response {
        let (mut parts, body) = response.into_parts();
        if let Ok(id) = HeaderValue::from_str(&self.event.audit_id) {
            parts.headers.insert(AUDIT_ID_HEADER, id);
        }
        if let Some(authorized) = parts.extensions.get::<Authorized>() {
            let decision = if authorized.allowed { "allow" } else { "forbid" };
            self.event.annotations.insert("authorization.k8s.io/decision".into(), decision.into());
            self.event.impersonated_user = authorized.impersonated.as_ref().map(EventUser::from);
        }
        let code = parts.status;
        if self.long_running {
            self.event.response_status = Some(response_status(code, None));
            self.emit(Stage::ResponseStarted);
            return Response::from_parts(parts, crate::connections::Holding::wrap(body, Completes(self)));
        }
        let wants_object = self.decided.level >= Level::RequestResponse || !code.is_success();
        if self.decided.level == Level::None || !wants_object || !is_json(&parts.headers) {
            self.event.response_status = Some(response_status(code, None));
            self.emit(Stage::ResponseComplete);
            return Response::from_parts(parts, body);
        }
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a response body for the audit log");
                self.event.response_status = Some(response_status(code, None));
                self.emit(Stage::ResponseComplete);
                return Response::from_parts(parts, Body::empty());
            }
        };
        let object = serde_json::from_slice::<Value>(&bytes).ok();
        if code.is_success()
            && let Some(object) = &object
        {
            self.name_created(object);
        }
        self.event.response_status = Some(response_status(code, object.as_ref()));
        if self.decided.level >= Level::RequestResponse {
            let object = if self.decided.omit_managed_fields { object.map(without_managed_fields) } else { object };
            self.event.response_object = object;
        }
        self.emit(Stage::ResponseComplete);
        Response::from_parts(parts, Body::from(bytes))
    }

    /// The request's handler panicked: the Panic stage, with kube-apiserver's 500 and message.
    pub fn panicked(mut self, payload: &(dyn std::any::Any + Send)) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        self.event.response_status = Some(json!({"metadata": {}, "code": 500, "status": "Failure",
            "reason": "InternalError", "message": format!("APIServer panic'd: {message}")}));
        self.emit(Stage::Panic);
    }

    /// A create's objectRef names the object made, as kube-apiserver's does (the path does not name it).
    fn name_created(&mut self, object: &Value) {
        if let Some(object_ref) =
            self.event.object_ref.as_mut().filter(|r| r.name.is_empty() && r.subresource.is_empty())
            && self.attributes.verb == "create"
            && let Some(name) = object["metadata"]["name"].as_str()
        {
            object_ref.name = name.to_string();
        }
    }

    fn emit(&self, stage: Stage) {
        if self.decided.level == Level::None || self.decided.omit_stages.contains(&stage) {
            return;
        }
        let mut event = self.event.clone();
        event.stage = stage;
        event.stage_timestamp = micro_time(jiff::Timestamp::now());
        if self.decided.level < Level::Request {
            event.request_object = None;
        }
        if self.decided.level < Level::RequestResponse {
            event.response_object = None;
        }
        self.auditor.send(&event);
    }
}

/// Emits a long-running request's ResponseComplete when its response body (a watch, a log stream, an
/// upgraded connection's empty body) is dropped.
struct Completes(Pending);

impl Drop for Completes {
    fn drop(&mut self) {
        self.0.emit(Stage::ResponseComplete);
    }
}

/// The log: a file rotated by size into `FILE.1` (newest) … `FILE.N`, or standard output.
struct LogFile {
    path: PathBuf,
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    size: u64,
    max_bytes: u64,
    max_backups: usize,
}

impl LogFile {
    fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let stdout = config.log_path == Path::new("-");
        let (out, size): (Box<dyn Write + Send>, u64) = if stdout {
            (Box::new(std::io::stdout()), 0)
        } else {
            let file = Self::append(&config.log_path)
                .map_err(|source| AuditError::Open { path: config.log_path.clone(), source })?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            (Box::new(file), size)
        };
        Ok(LogFile {
            path: config.log_path.clone(),
            out: std::io::BufWriter::new(out),
            size,
            // Standard output cannot rotate.
            max_bytes: if stdout { 0 } else { config.max_size_mb.saturating_mul(1024 * 1024) },
            max_backups: config.max_backups,
        })
    }

    fn append(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        // The log holds request objects (Secrets' at RequestResponse): its owner's alone.
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let ignore_missing = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        // Each file moves one number up; the oldest kept one is overwritten by the one before it.
        let keep = match self.max_backups {
            0 => (1..).take_while(|n| numbered(*n).exists()).count() + 1,
            n => n,
        };
        for n in (1..keep).rev() {
            ignore_missing(std::fs::rename(numbered(n), numbered(n + 1)))?;
        }
        std::fs::rename(&self.path, numbered(1))?;
        let file = Self::append(&self.path)?;
        self.out = std::io::BufWriter::new(Box::new(file));
        self.size = 0;
        Ok(())
    }
}

/// The writer: appends each event, flushes whenever the queue is empty, and on Close writes what is left.
fn write_events(mut queue: mpsc::Receiver<Message>, mut log: LogFile) {
    let _span = tracing::info_span!("audit_log", path = %log.path.display()).entered();
    let write = |log: &mut LogFile, line: &str| {
        if let Err(e) = log.write_line(line) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    };
    while let Some(message) = queue.blocking_recv() {
        match message {
            Message::Line(line) => write(&mut log, &line),
            Message::Close => {
                queue.close();
                while let Ok(message) = queue.try_recv() {
                    if let Message::Line(line) = message {
                        write(&mut log, &line);
                    }
                }
                break;
            }
        }
        if queue.is_empty()
            && let Err(e) = log.out.flush()
        {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
    if let Err(e) = log.out.flush() {
        tracing::warn!(error = %e, "cannot write the audit log");
    }
    tracing::debug!("audit log closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let policy: Policy = serde_yaml::from_str(yaml).unwrap();
        policy
    }

    fn attributes(user: &str, groups: &[&str], method: http::Method, path: &str) -> Attributes {
        let user = UserInfo {
            name: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        };
        crate::authz::request_attributes(user, &method, path, None)
    }

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps/status"]
  - level: RequestResponse
    omitStages: [ResponseStarted]
    resources:
      - group: ""
        resources: ["configmaps"]
        resourceNames: ["special"]
  - level: Request
    userGroups: ["devs"]
    verbs: ["create", "update"]
    namespaces: ["dev"]
  - level: Metadata
    resources:
      - group: "apps"
        resources: ["*/scale"]
      - group: "batch"
        resources: ["jobs/*"]
  - level: Metadata
    omitManagedFields: true
"#;

    #[test]
    fn the_first_matching_rule_decides() {
        let p = policy(POLICY);
        let get = http::Method::GET;
        let level = |a: &Attributes| p.evaluate(a).level;
        assert_eq!(level(&attributes("system:kube-proxy", &[], get.clone(), "/api/v1/secrets")), Level::None);
        assert_eq!(level(&attributes("bob", &[], get.clone(), "/healthz/ready")), Level::None);
        assert_eq!(level(&attributes("bob", &[], get.clone(), "/version")), Level::None);
        assert_eq!(level(&attributes("bob", &[], get.clone(), "/versions")), Level::Metadata);
        assert_eq!(level(&attributes("bob", &[], get.clone(), "/api/v1/namespaces/a/secrets/s")), Level::Metadata);
        let special = "/api/v1/namespaces/a/configmaps/special";
        assert_eq!(level(&attributes("bob", &[], get.clone(), special)), Level::RequestResponse);
        // resourceNames: another configmap falls through to the last rule.
        let other = attributes("bob", &[], get.clone(), "/api/v1/namespaces/a/configmaps/other");
        assert_eq!(
            p.evaluate(&other),
            Decided { level: Level::Metadata, omit_stages: vec![Stage::RequestReceived], omit_managed_fields: true }
        );
        let status = "/api/v1/namespaces/a/configmaps/other/status";
        assert!(!p.evaluate(&attributes("bob", &[], http::Method::PUT, status)).omit_managed_fields);
        let decided = p.evaluate(&attributes("bob", &[], get.clone(), special));
        assert_eq!(decided.omit_stages, vec![Stage::RequestReceived, Stage::ResponseStarted]);
        let create =
            |user, groups: &[&str], path| p.evaluate(&attributes(user, groups, http::Method::POST, path)).level;
        assert_eq!(create("dee", &["devs"], "/apis/apps/v1/namespaces/dev/deployments"), Level::Request);
        assert_eq!(create("dee", &["ops"], "/apis/apps/v1/namespaces/dev/deployments"), Level::Metadata);
        assert_eq!(create("dee", &["devs"], "/apis/apps/v1/namespaces/prod/deployments"), Level::Metadata);
    }

    #[test]
    fn resource_wildcards_match_as_kubernetes() {
        let p = policy(
            r#"{"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [
                {"level": "Request", "resources": [{"group": "apps", "resources": ["*/scale"]}]},
                {"level": "RequestResponse", "resources": [{"group": "batch", "resources": ["jobs/*"]}]},
                {"level": "Metadata", "resources": [{"group": "", "resources": ["pods/log"]}]}
            ]}"#,
        );
        let level = |path| p.evaluate(&attributes("u", &[], http::Method::GET, path)).level;
        assert_eq!(level("/apis/apps/v1/namespaces/a/deployments/d/scale"), Level::Request);
        assert_eq!(level("/apis/apps/v1/namespaces/a/deployments/d"), Level::None);
        assert_eq!(level("/apis/batch/v1/namespaces/a/jobs/j/status"), Level::RequestResponse);
        // As in Kubernetes' checker, `jobs/*` matches the resource itself too.
        assert_eq!(level("/apis/batch/v1/namespaces/a/jobs/j"), Level::RequestResponse);
        assert_eq!(level("/apis/batch/v1/namespaces/a/cronjobs/j"), Level::None);
        assert_eq!(level("/api/v1/namespaces/a/pods/p/log"), Level::Metadata);
        assert_eq!(level("/api/v1/namespaces/a/pods/p"), Level::None);
        // A resource rule never matches a non-resource request.
        assert_eq!(level("/apis/batch"), Level::None);
    }

    #[test]
    fn a_policy_of_another_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "apiVersion: v1\nkind: ConfigMap\n").unwrap();
        assert!(matches!(Policy::load(&path), Err(AuditError::WrongKind { .. })));
        std::fs::write(&path, "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]\n").unwrap();
        assert!(matches!(Policy::load(&path), Err(AuditError::ParsePolicy { .. })));
    }

    #[test]
    fn secrets_lose_their_values_below_request_response() {
        let secret = attributes("u", &[], http::Method::POST, "/api/v1/namespaces/a/secrets");
        let object = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"p": "aHVudGVyMg=="},
            "stringData": {"q": "hunter2"}});
        assert_eq!(
            redact(&secret, Level::Request, object.clone()),
            Some(json!({"kind": "Secret", "metadata": {"name": "s"}}))
        );
        assert_eq!(redact(&secret, Level::RequestResponse, object.clone()), Some(object.clone()));
        assert_eq!(redact(&secret, Level::Request, json!([{"op": "add"}])), None);
        let configmap = attributes("u", &[], http::Method::POST, "/api/v1/namespaces/a/configmaps");
        assert_eq!(redact(&configmap, Level::Request, object.clone()), Some(object));
    }

    #[test]
    fn events_have_kubernetes_shape() {
        let at = jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        assert_eq!(micro_time(at), "2023-11-14T22:13:20.123456Z");
        let forbidden =
            json!({"kind": "Status", "status": "Failure", "reason": "Forbidden", "message": "no", "code": 403});
        assert_eq!(
            response_status(StatusCode::FORBIDDEN, Some(&forbidden)),
            json!({"metadata": {}, "code": 403, "status": "Failure", "reason": "Forbidden", "message": "no"})
        );
        assert_eq!(
            response_status(StatusCode::OK, Some(&json!({"kind": "Pod"}))),
            json!({"metadata": {}, "code": 200})
        );
        let list =
            json!({"items": [{"metadata": {"name": "a", "managedFields": []}}], "metadata": {"managedFields": 1}});
        assert_eq!(without_managed_fields(list), json!({"items": [{"metadata": {"name": "a"}}], "metadata": {}}));
    }

    #[tokio::test]
    async fn a_request_gets_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(
            &policy_file,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  resources: [{group: '', resources: [secrets]}]\n- level: RequestResponse\n",
        )
        .unwrap();
        let log_path = dir.path().join("audit.log");
        let config = AuditConfig { policy_file, log_path: log_path.clone(), max_size_mb: 0, max_backups: 0 };
        let (auditor, writer) = Auditor::start(&config).unwrap();
        let alice =
            UserInfo { name: "alice".into(), groups: vec!["system:authenticated".into()], ..UserInfo::default() };
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();

        let body = r#"{"kind":"Secret","metadata":{"name":"s"},"data":{"password":"aHVudGVyMg=="}}"#;
        let request = http::Request::post("/api/v1/namespaces/default/secrets")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let mut pending = auditor.begin(&request, Some(&alice), peer);
        let request = pending.read_request(request).await.unwrap();
        assert_eq!(axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap(), body.as_bytes());
        let mut response = http::Response::builder()
            .status(StatusCode::CREATED)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        response.extensions_mut().insert(Authorized { allowed: true, impersonated: None });
        let response = pending.respond(response).await;
        assert!(response.headers().contains_key(AUDIT_ID_HEADER));

        let request = http::Request::get("/api/v1/namespaces/default/configmaps").body(Body::empty()).unwrap();
        let mut pending = auditor.begin(&request, None, peer);
        pending.read_request(request).await.unwrap();
        let refused = axum::response::IntoResponse::into_response(ApiError::Unauthorized);
        pending.respond(refused).await;
        let request = http::Request::get("/api/v1/nodes").body(Body::empty()).unwrap();
        auditor.begin(&request, Some(&alice), peer).panicked(&"index out of bounds");
        writer.close().await;

        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(!text.contains("aHVudGVyMg"), "{text}");
        let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let stages: Vec<&str> = events.iter().map(|e| e["stage"].as_str().unwrap()).collect();
        assert_eq!(
            stages,
            ["RequestReceived", "ResponseComplete", "RequestReceived", "ResponseComplete", "RequestReceived", "Panic"]
        );
        let created = &events[1];
        assert_eq!(created["kind"], "Event");
        assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(created["level"], "Metadata");
        assert_eq!(created["verb"], "create");
        assert_eq!(created["user"]["username"], "alice");
        assert_eq!(created["sourceIPs"], json!(["10.0.0.9"]));
        assert_eq!(created["objectRef"], json!({"resource": "secrets", "namespace": "default", "apiVersion": "v1"}));
        assert_eq!(created["responseStatus"], json!({"metadata": {}, "code": 201}));
        assert_eq!(created["annotations"]["authorization.k8s.io/decision"], "allow");
        assert_eq!(created["auditID"], events[0]["auditID"]);
        assert_eq!(response.headers()[AUDIT_ID_HEADER], created["auditID"].as_str().unwrap());
        let unauthorized = &events[3];
        assert_eq!(unauthorized["user"], json!({"username": ""}));
        assert_eq!(unauthorized["level"], "RequestResponse");
        assert_eq!(unauthorized["responseStatus"]["code"], 401);
        assert_eq!(unauthorized["responseStatus"]["reason"], "Unauthorized");
        assert_eq!(events[5]["responseStatus"]["code"], 500);
        assert_eq!(events[5]["responseStatus"]["message"], "APIServer panic'd: index out of bounds");
    }

    #[test]
    fn the_log_rotates_into_numbered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let config =
            AuditConfig { policy_file: PathBuf::new(), log_path: path.clone(), max_size_mb: 1, max_backups: 2 };
        let mut log = LogFile::open(&config).unwrap();
        let line = "x".repeat(400 * 1024);
        for _ in 0..7 {
            log.write_line(&line).unwrap();
        }
        log.out.flush().unwrap();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        let numbered = |n| dir.path().join(format!("audit.log.{n}"));
        // Two lines a file (a third would pass 1 MiB): 7 lines are 3 full files and one more line.
        assert_eq!(size(&path), Some(400 * 1024 + 1));
        assert_eq!(size(&numbered(1)), Some(2 * (400 * 1024 + 1)));
        assert_eq!(size(&numbered(2)), Some(2 * (400 * 1024 + 1)));
        assert_eq!(size(&numbered(3)), None);

        // 0 keeps every rotated file.
        let config = AuditConfig { max_backups: 0, ..config };
        let mut log = LogFile::open(&config).unwrap();
        for _ in 0..4 {
            log.write_line(&line).unwrap();
        }
        log.out.flush().unwrap();
        assert_eq!(size(&numbered(3)), Some(2 * (400 * 1024 + 1)));
        assert_eq!(size(&numbered(4)), Some(2 * (400 * 1024 + 1)));
        assert_eq!(size(&numbered(5)), None);
    }
}
