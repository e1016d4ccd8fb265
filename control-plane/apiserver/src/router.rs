//! The HTTP surface: `fn router(state) -> Router`, so tests can drive it without a socket. Paths follow
//! kube-apiserver's: `/api/v1/...`, `/apis/{group}/{version}/...`, `[namespaces/{ns}/]{plural}[/{name}[/{sub}]]`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use skiff_api::authz::UserInfo;
use skiff_api::limits::{self, MAX_REQUEST_BODY_BYTES};
use skiff_api::patch::PatchType;
use skiff_api::resources::{self, ResourceDef};
use skiff_api::selectors::{FieldSelector, LabelSelector};
use skiff_api::{discovery, openapi, table};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::authz::{self, Authorizer};
use crate::error::ApiError;
use crate::objects::{DeleteOptions, FieldValidation, ListOptions, Objects, Part, WriteOptions};
use crate::watch::{self, WatchRequest};
use crate::{audit, impersonation, instrumentation, resource_metrics, reviews};

/// The Kubernetes version whose API Skiff follows; kubectl dispatchers pick their build from `minor`.
pub const KUBERNETES_MINOR: &str = "33";

pub struct AppState {
    pub objects: Objects,
    pub authorizer: Arc<Authorizer>,
    /// Cancelled when the server shuts down, which ends every watch.
    pub shutdown: CancellationToken,
    /// The address clients reach the server at, for the legacy discovery document.
    pub server_address: String,
    /// Served at `/cacerts` so a joining agent can check it against the hash in its join token.
    pub ca_cert_pem: String,
    /// The client certificate the server presents to node agents' kubelet ports (logs, exec, port-forward).
    pub kubelet_client: crate::kubelet::KubeletClientIdentity,
    /// What bearer tokens prove, for TokenReview.
    pub authenticator: Arc<crate::authn::Authenticator>,
    /// Issues service account tokens (TokenRequest).
    pub service_accounts: Arc<crate::serviceaccounts::ServiceAccountTokens>,
    /// The nodes' latest figures, which the metrics APIs answer from.
    pub metric_readings: Arc<crate::resource_metrics::Readings>,
    /// The process's Prometheus registry, and the request instruments in it.
    pub instruments: crate::instrumentation::Instruments,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthy))
        .route("/livez", get(healthy))
        .route("/readyz", get(healthy))
        .route("/metrics", get(instrumentation::serve))
        .route("/cacerts", get(|State(state): State<Arc<AppState>>| async move { state.ca_cert_pem.clone() }))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .route("/api", get(core_discovery))
        .route("/apis", get(groups_discovery))
        .route("/api/{*rest}", any(resource))
        .route("/apis/{*rest}", any(resource))
        .fallback(|| async { ApiError::NoRoute })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), instrumentation::instrument))
        .with_state(state)
}

/// Authorization, after the connection authenticated the request (and put its `UserInfo` in the request's
/// extensions). Like kube-apiserver's public-info-viewer role, health and version are open to anyone, and
/// so is `/cacerts`: the CA certificate is no secret, and joining agents verify it by hash. Everything else
/// needs an identity allowed to do what the request asks, after impersonation.
async fn authorize(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/version" | "/healthz" | "/livez" | "/readyz" | "/cacerts") {
        return next.run(request).await;
    }
    let Some(user) = request.extensions().get::<UserInfo>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    let store = state.objects.store();
    let impersonating = request.headers().contains_key("impersonate-user");
    let user = match impersonation::impersonate(&state.authorizer, store.as_ref(), user, request.headers()).await {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let attributes = authz::request_attributes(user, request.method(), request.uri().path(), request.uri().query());
    // The audit log records the decision and whom the request acts as.
    let impersonated = impersonating.then(|| attributes.user.clone());
    if let Err(denied) = state.authorizer.check(&attributes, store.as_ref()).await {
        tracing::debug!(user = attributes.user.name, verb = attributes.verb, path = attributes.path, "forbidden");
        let mut response = denied.into_response();
        response.extensions_mut().insert(audit::Authorized { allowed: false, impersonated });
        return response;
    }
    request.extensions_mut().insert(attributes.user);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(audit::Authorized { allowed: true, impersonated });
    response
}

fn git_version() -> String {
    format!("v1.{KUBERNETES_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION"))
}

async fn version() -> axum::Json<Value> {
    axum::Json(json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": git_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, skiff_api::go_arch()),
    }))
}

async fn healthy() -> &'static str {
    "ok"
}

async fn openapi_v2() -> Response {
    // kube-openapi answers kubectl's `...spec.v2@v1.0+protobuf` with this type: client-go parses the response's
    // media type, and `@` is not allowed in one.
    let content_type = HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf");
    ([(header::CONTENT_TYPE, content_type)], openapi::v2_document_protobuf(&git_version())).into_response()
}

async fn openapi_index() -> axum::Json<Value> {
    axum::Json(openapi::v3_index())
}

async fn openapi_document(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match openapi::v3_document(&path) {
        Some(document) => axum::Json(document).into_response(),
        None => ApiError::NoRoute.into_response(),
    }
}

async fn core_discovery(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        aggregated(discovery::aggregated(true))
    } else {
        axum::Json(discovery::api_versions(&state.server_address)).into_response()
    }
}

async fn groups_discovery(headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        aggregated(discovery::aggregated(false))
    } else {
        axum::Json(discovery::api_group_list()).into_response()
    }
}

fn aggregated(document: Value) -> Response {
    let mut response = axum::Json(document).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE));
    response
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Where a request under /api or /apis points.
enum Target {
    ResourceList { group: String, version: String },
    Group(String),
    Collection { def: &'static ResourceDef, ns: Option<String> },
    Item { def: &'static ResourceDef, ns: Option<String>, name: String, sub: Option<String> },
}

fn parse_target(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => return Ok(Target::Group(group.to_string())),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let find = |plural: &str| resources::find(group, version, plural).ok_or(ApiError::NoRoute);
    let item = |def, ns: Option<&str>, name: &str, sub: Option<&&str>| Target::Item {
        def,
        ns: ns.map(str::to_string),
        name: name.to_string(),
        sub: sub.map(|s| s.to_string()),
    };
    match rest {
        [] => Ok(Target::ResourceList { group: group.to_string(), version: version.to_string() }),
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|d| d.namespaced) =>
        {
            let def = find(plural)?;
            match tail {
                [] => Ok(Target::Collection { def, ns: Some(ns.to_string()) }),
                [name] => Ok(item(def, Some(ns), name, None)),
                [name, sub] => Ok(item(def, Some(ns), name, Some(sub))),
                _ => Err(ApiError::NoRoute),
            }
        }
        [plural, tail @ ..] => {
            let def = find(plural)?;
            match tail {
                [] => Ok(Target::Collection { def, ns: None }),
                [name] if !def.namespaced => Ok(item(def, None, name, None)),
                [name, sub] if !def.namespaced => Ok(item(def, None, name, Some(sub))),
                _ => Err(ApiError::NoRoute),
            }
        }
    }
}

/// Query parameters; repeated keys keep the last value and empty ones (kube-rs sends `?&dryRun=All`) are
/// ignored.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
        // Empty values are dropped before the last one wins, as the authorizer and the in-flight limiter read
        // the query: `?fieldSelector=metadata.name%3Dx&fieldSelector=` is authorized as a read of `x` and
        // must be served as one.
        Ok(Query(pairs.into_iter().filter(|(k, v)| !k.is_empty() && !v.is_empty()).collect()))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| v.parse().map_err(|_| ApiError::BadRequest(format!("{key}: invalid value {v:?}"))))
            .transpose()
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::BadRequest(format!("dryRun: unsupported value {other:?}, only \"All\" is supported")))
            }
        }
    }

    fn list_options(&self, def: &ResourceDef) -> Result<ListOptions, ApiError> {
        let labels = self
            .get("labelSelector")
            .map(LabelSelector::parse)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("unable to parse labelSelector: {e}")))?;
        let fields = self
            .get("fieldSelector")
            .map(|s| FieldSelector::parse(s).and_then(|f| f.check_supported(def).map(|_| f)))
            .transpose()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(ListOptions {
            labels,
            fields,
            limit: self.number("limit")?.unwrap_or(0),
            continue_token: self.get("continue").map(str::to_string),
        })
    }

    fn write_options(&self, headers: &HeaderMap, user: &UserInfo) -> Result<WriteOptions, ApiError> {
        let validation = match self.get("fieldValidation") {
            None | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "fieldValidation: unsupported value {other:?}: supported values are \"Ignore\", \"Warn\", \"Strict\""
                )));
            }
        };
        // Without a fieldManager, Kubernetes names the manager after the client's user agent.
        let field_manager = match self.get("fieldManager") {
            Some(manager) => manager.to_string(),
            None => headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|m| !m.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        };
        Ok(WriteOptions { dry_run: self.dry_run()?, field_manager, validation, user: Some(user.clone()) })
    }
}

async fn resource(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let span = tracing::debug_span!("request", method = %request.method(), path = request.uri().path());
    match serve_resource(&state, request).instrument(span).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve_resource(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let query = Query::parse(parts.uri.query())?;
    // The authorize layer put the (possibly impersonated) user there; a request reaching here has one.
    let user = parts.extensions.get::<UserInfo>().cloned().ok_or(ApiError::Unauthorized)?;
    if parts.method == Method::POST
        && let Some((kind, ns)) = reviews::addressed(parts.uri.path())
    {
        let review = decode_body(&parts.headers, &read_body(body).await?)?;
        let store = state.objects.store();
        let (authenticator, authorizer, path) = (&state.authenticator, &state.authorizer, parts.uri.path());
        let answer = reviews::answer(authenticator, authorizer, store.as_ref(), &user, kind, ns, path, review).await?;
        return Ok(respond(StatusCode::CREATED, answer, &[]));
    }
    // The metrics APIs' resources (their group and version documents are discovery's, below).
    if resource_metrics::addressed(parts.uri.path()) && parts.uri.path().trim_matches('/').split('/').count() > 3 {
        if parts.method != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        let (path, query) = (parts.uri.path(), parts.uri.query());
        let answer = resource_metrics::serve(&state.objects, &state.metric_readings, path, query).await?;
        return Ok(respond(StatusCode::OK, answer, &[]));
    }
    let target = parse_target(parts.uri.path())?;
    // An exec or a port-forward upgrades the connection: it needs the request's upgrade handle, not its
    // (empty) body.
    if let Target::Item { def, ns: Some(ns), name, sub: Some(sub) } = &target
        && def.group.is_empty()
        && def.plural == "pods"
    {
        match sub.as_str() {
            "exec" => return crate::kubelet::pod_exec(state, ns, name, &mut parts).await,
            "portforward" => return crate::kubelet::pod_port_forward(state, ns, name, &mut parts).await,
            _ => {}
        }
    }
    let headers = &parts.headers;
    let body = read_body(body).await?;
    let objects = &state.objects;
    match (target, &parts.method) {
        (Target::ResourceList { group, version }, &Method::GET) => discovery::api_resource_list(&group, &version)
            .map(|list| axum::Json(list).into_response())
            .ok_or(ApiError::NoRoute),
        (Target::Group(group), &Method::GET) => {
            discovery::api_group(&group).map(|g| axum::Json(g).into_response()).ok_or(ApiError::NoRoute)
        }
        (Target::Collection { def, ns }, &Method::GET) => {
            check_namespace(def, ns.as_deref())?;
            let list = query.list_options(def)?;
            if query.flag("watch") {
                let timeout = query.number::<u64>("timeoutSeconds")?.map(Duration::from_secs);
                let request = WatchRequest {
                    def,
                    namespace: ns,
                    list,
                    resource_version: query.get("resourceVersion").map(str::to_string),
                    timeout,
                    bookmarks: query.flag("allowWatchBookmarks"),
                    send_initial_events: query.flag("sendInitialEvents"),
                    as_table: wants_table(headers),
                };
                let lines = watch::start(objects, request, state.shutdown.clone()).await?;
                let stream = ReceiverStream::new(lines);
                let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::convert::Infallible>));
                return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
            let result = objects.list(def, ns.as_deref(), &list).await?;
            let mut meta = json!({"resourceVersion": result.resource_version.to_string()});
            if let Some(token) = result.continue_token {
                meta["continue"] = json!(token);
            }
            Ok(render_list(def, headers, result.items, meta))
        }
        (Target::Collection { def, ns }, &Method::POST) => {
            let ns = required_namespace(def, ns)?;
            let object = decode_body(headers, &body)?;
            let options = query.write_options(headers, &user)?;
            let written = objects.create(def, ns.as_deref(), object, &options).await?;
            Ok(respond(StatusCode::CREATED, written.object, &written.warnings))
        }
        (Target::Collection { def, ns }, &Method::DELETE) => {
            check_namespace(def, ns.as_deref())?;
            let list = query.list_options(def)?;
            let options = delete_options(&query, &body, &user)?;
            let deleted = objects.delete_collection(def, ns.as_deref(), &list, &options).await?;
            Ok(render_list(def, headers, deleted, json!({})))
        }
        (Target::Item { def, ns, name, sub }, method) => {
            let ns = required_namespace(def, ns)?;
            serve_item(
                state,
                def,
                ns.as_deref(),
                &name,
                sub.as_deref(),
                method,
                headers,
                &query,
                parts.uri.query(),
                &body,
                &user,
            )
            .await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_item(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    query_string: Option<&str>,
    body: &[u8],
    user: &UserInfo,
) -> Result<Response, ApiError> {
    let objects = &state.objects;
    let part = match sub {
        None => Part::Main,
        Some("status") if def.status_subresource => Part::Status,
        Some("scale") if def.scale_subresource => Part::Scale,
        Some("approval") if discovery::has_approval(def) => Part::Approval,
        Some("token") if def.group.is_empty() && def.plural == "serviceaccounts" && method == Method::POST => {
            let request = decode_body(headers, body)?;
            let answer = state.service_accounts.request(ns.unwrap_or_default(), name, request, user).await?;
            return Ok(respond(StatusCode::CREATED, answer, &[]));
        }
        Some("binding") if def.group.is_empty() && def.plural == "pods" && method == Method::POST => {
            let binding = decode_body(headers, body)?;
            objects.bind(def, ns.unwrap_or_default(), name, &binding).await?;
            return Ok(respond(
                StatusCode::CREATED,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ));
        }
        Some("log") if def.group.is_empty() && def.plural == "pods" && method == Method::GET => {
            let query = query_string.unwrap_or("");
            return crate::kubelet::pod_logs(objects, &state.kubelet_client, ns.unwrap_or_default(), name, query).await;
        }
        Some(_) => return Err(ApiError::NoRoute),
    };
    match *method {
        Method::GET => {
            let object = match part {
                Part::Scale => objects.get_scale(def, ns, name).await?,
                _ => objects.get(def, ns, name).await?,
            };
            Ok(render_one(def, headers, part, object))
        }
        Method::PUT => {
            let object = decode_body(headers, body)?;
            let written = objects.replace(def, ns, name, part, object, &query.write_options(headers, user)?).await?;
            Ok(respond(StatusCode::OK, written.object, &written.warnings))
        }
        Method::PATCH => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let patch_type = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::UnsupportedMediaType(format!("; got {content_type:?} for a patch")))?;
            let patch = match patch_type {
                PatchType::Apply => {
                    limits::from_yaml(body).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?
                }
                _ => serde_json::from_slice(body)
                    .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?,
            };
            let options = query.write_options(headers, user)?;
            let written = objects.patch(def, ns, name, part, patch_type, patch, query.flag("force"), &options).await?;
            let code = if written.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(respond(code, written.object, &written.warnings))
        }
        Method::DELETE if part == Part::Main => {
            let object = objects.delete(def, ns, name, &delete_options(query, body, user)?).await?;
            Ok(respond(StatusCode::OK, object, &[]))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn check_namespace(def: &ResourceDef, ns: Option<&str>) -> Result<(), ApiError> {
    match ns {
        Some(ns) if !def.namespaced => {
            Err(ApiError::BadRequest(format!("{} is not namespaced, got namespace {ns}", def.plural)))
        }
        _ => Ok(()),
    }
}

fn required_namespace(def: &ResourceDef, ns: Option<String>) -> Result<Option<String>, ApiError> {
    match (def.namespaced, ns) {
        (true, None) => Err(ApiError::NoRoute),
        (_, ns) => Ok(ns),
    }
}

fn delete_options(query: &Query, body: &[u8], user: &UserInfo) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed DeleteOptions: {e}")))?
    };
    let dry_run = query.dry_run()? || body["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All"));
    let orphan = query.flag("orphanDependents") || body["orphanDependents"] == true;
    let propagation_policy = body["propagationPolicy"]
        .as_str()
        .or(query.get("propagationPolicy"))
        .map(str::to_string)
        .or(orphan.then(|| "Orphan".to_string()));
    if let Some(policy) = &propagation_policy
        && !matches!(policy.as_str(), "Foreground" | "Background" | "Orphan")
    {
        return Err(ApiError::BadRequest(format!("propagationPolicy: unsupported value {policy:?}")));
    }
    Ok(DeleteOptions {
        dry_run,
        grace_period_seconds: body["gracePeriodSeconds"].as_i64().or(query.number("gracePeriodSeconds")?),
        propagation_policy,
        precondition_uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        precondition_resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        user: Some(user.clone()),
    })
}

/// The request body, refused with kube-apiserver's 413 beyond [`MAX_REQUEST_BODY_BYTES`]: at once when
/// its Content-Length says so, else as soon as that much has arrived.
async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await.map_err(|error| {
        if error.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::TooLarge(format!("limit is {MAX_REQUEST_BODY_BYTES}"))
        } else {
            ApiError::BadRequest("the request body could not be read".to_string())
        }
    })
}

/// Decodes a request body by its Content-Type: JSON, YAML or Kubernetes protobuf.
pub(crate) fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "" | "application/json" => {
            serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("error decoding JSON body: {e}")))
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            limits::from_yaml(body).map_err(|e| ApiError::BadRequest(format!("error decoding YAML body: {e}")))
        }
        skiff_api::protobuf::CONTENT_TYPE => skiff_api::protobuf::decode(body).map_err(|e| match e {
            unsupported @ skiff_api::protobuf::ProtobufError::UnsupportedKind { .. } => {
                ApiError::UnsupportedMediaType(format!("; {unsupported}, send it as JSON"))
            }
            other => ApiError::BadRequest(format!("error decoding protobuf body: {other}")),
        }),
        _ => Err(ApiError::UnsupportedMediaType(format!("; got {mime:?}"))),
    }
}

/// What representation the client asked for in Accept (`as=Table`, `as=PartialObjectMetadata[List]`).
#[derive(PartialEq)]
enum As {
    Object,
    Table,
    Metadata,
}

fn wanted(headers: &HeaderMap) -> As {
    // Clients list their preferences in order; the first one Skiff can serve wins.
    for choice in accept(headers).split(',') {
        let params: Vec<&str> = choice.split(';').map(str::trim).collect();
        let mime = params.first().copied().unwrap_or("");
        if !matches!(mime, "application/json" | "*/*" | "application/*") {
            continue;
        }
        match params.iter().find_map(|p| p.strip_prefix("as=")) {
            Some("Table") => return As::Table,
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => return As::Metadata,
            Some(_) => continue,
            None => return As::Object,
        }
    }
    As::Object
}

fn wants_table(headers: &HeaderMap) -> bool {
    wanted(headers) == As::Table
}

fn render_one(def: &ResourceDef, headers: &HeaderMap, part: Part, object: Value) -> Response {
    if part != Part::Main {
        return respond(StatusCode::OK, object, &[]);
    }
    match wanted(headers) {
        As::Table => respond(StatusCode::OK, table::table(def, &[object], json!({}), jiff::Timestamp::now()), &[]),
        As::Metadata => respond(StatusCode::OK, partial_metadata(object), &[]),
        As::Object => respond(StatusCode::OK, object, &[]),
    }
}

fn render_list(def: &ResourceDef, headers: &HeaderMap, items: Vec<Value>, meta: Value) -> Response {
    let body = match wanted(headers) {
        As::Table => table::table(def, &items, meta, jiff::Timestamp::now()),
        As::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "items": items.into_iter().map(partial_metadata).collect::<Vec<_>>(),
        }),
        As::Object => {
            json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": meta, "items": items})
        }
    };
    respond(StatusCode::OK, body, &[])
}

fn partial_metadata(object: Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

fn respond(code: StatusCode, body: Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(body)).into_response();
    for warning in warnings {
        let text = format!("299 - {}", serde_json::to_string(warning).unwrap_or_default());
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router reads a query as the authorizer does: an empty repeat does not undo a field selector the
    /// request was authorized by.
    #[test]
    fn the_last_non_empty_value_wins() {
        let query = Query::parse(Some("fieldSelector=metadata.name%3Dpull&fieldSelector=&watch=1&watch=")).unwrap();
        assert_eq!((query.get("fieldSelector"), query.flag("watch")), (Some("metadata.name=pull"), true));
    }

    #[test]
    fn paths_resolve_like_kube_apiserver() {
        let Ok(Target::Item { def, ns, name, sub }) = parse_target("/api/v1/namespaces/default/pods/web/status") else {
            panic!("namespaced subresource");
        };
        assert_eq!(
            (def.plural, ns.as_deref(), name.as_str(), sub.as_deref()),
            ("pods", Some("default"), "web", Some("status"))
        );
        let Ok(Target::Item { def, ns, name, sub }) = parse_target("/api/v1/namespaces/kube-system") else {
            panic!("a namespace object");
        };
        assert_eq!((def.plural, ns, name.as_str(), sub), ("namespaces", None, "kube-system", None));
        assert!(matches!(parse_target("/apis/apps/v1/deployments"), Ok(Target::Collection { ns: None, .. })));
        assert!(matches!(parse_target("/apis/apps"), Ok(Target::Group(g)) if g == "apps"));
        assert!(matches!(parse_target("/apis/apps/v1"), Ok(Target::ResourceList { .. })));
        assert!(matches!(parse_target("/api/v1/widgets"), Err(ApiError::NoRoute)));
    }

    #[test]
    fn accept_header_picks_the_first_servable_form() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
        );
        assert!(wanted(&headers) == As::Table);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.kubernetes.protobuf, */*"));
        assert!(wanted(&headers) == As::Object);
    }

    #[test]
    fn empty_query_parameters_are_ignored() {
        let query = Query::parse(Some("&dryRun=All&&limit=")).unwrap();
        assert!(query.dry_run().unwrap());
        assert_eq!(query.number::<usize>("limit").unwrap(), None);
    }
}
