//! Every failure the API answers, and its one mapping to a Kubernetes `Status`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use skiff_api::limits::MAX_OBJECT_BYTES;
use skiff_api::patch::PatchError;
use skiff_api::resources::ResourceDef;
use skiff_api::validation::Cause;

/// etcd's answer to a write larger than its request limit, which kube-apiserver passes on as the message.
const ETCD_TOO_LARGE: &str = "etcdserver: request is too large";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, group: &'static str, name: String },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, group: &'static str, name: String },
    /// Optimistic concurrency: the resourceVersion given is not the current one.
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, group: &'static str, name: String },
    /// Server-side apply found fields owned by other managers.
    #[error("Apply failed with {} conflict{}: {}", causes.len(), if causes.len() == 1 { "" } else { "s" },
        causes.iter().map(|c| c.message.clone()).collect::<Vec<_>>().join("\n"))]
    ApplyConflict { resource: String, group: &'static str, name: String, causes: Vec<Cause> },
    #[error("{kind} \"{name}\" is invalid: {}", summary(causes))]
    Invalid { kind: String, group: &'static str, name: String, causes: Vec<Cause> },
    #[error("{0}")]
    BadRequest(String),
    /// The request was understood but cannot be carried out, such as a JSON patch whose operations fail
    /// (kube-apiserver's generic 422, reason Invalid, with no field causes).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf{0}"
    )]
    UnsupportedMediaType(String),
    /// A body, a patch or an object beyond the limits of `skiff_api::limits` (kube-apiserver's
    /// `NewRequestEntityTooLargeError`).
    #[error("Request entity too large: {0}")]
    TooLarge(String),
    /// A watch or list asked for a resourceVersion older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: i64, oldest: i64 },
    /// More requests in flight than the server takes (kube-apiserver's max-in-flight filter, see
    /// `inflight`): the client may try again after `retry_after_seconds`, which clients read from the
    /// `Retry-After` header and the Status's details.
    #[error("Too many requests, please try again later.")]
    TooManyRequests { retry_after_seconds: u32 },
    #[error("{0}")]
    Internal(String),
}

fn summary(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) }
}

impl ApiError {
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        ApiError::NotFound { resource: def.plural.to_string(), group: def.group, name: name.to_string() }
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        ApiError::AlreadyExists { resource: def.qualified_name(), group: def.group, name: name.to_string() }
    }

    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        ApiError::Conflict { resource: def.qualified_name(), group: def.group, name: name.to_string() }
    }

    /// An admission refusal (kube-apiserver's `NewForbidden`): `pods "x" is forbidden: <reason>`.
    pub fn forbidden(def: &ResourceDef, name: &str, reason: &str) -> Self {
        ApiError::Forbidden(format!("{} \"{name}\" is forbidden: {reason}", def.qualified_name()))
    }

    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let kind = if def.group.is_empty() { def.kind.to_string() } else { format!("{}.{}", def.kind, def.group) };
        ApiError::Invalid { kind, group: def.group, name: name.to_string(), causes }
    }

    /// An object whose encoding (`size` bytes, when known) the store refuses. kube-apiserver answers
    /// etcd's refusal with a 500 that carries etcd's message (kubernetes/kubernetes#112152); Skiff keeps
    /// the message and answers 413, since sending the same object again cannot succeed.
    pub fn object_too_large(size: Option<usize>) -> Self {
        ApiError::TooLarge(match size {
            Some(size) => format!("{ETCD_TOO_LARGE} (the object is {size} bytes, limit is {MAX_OBJECT_BYTES})"),
            None => ETCD_TOO_LARGE.to_string(),
        })
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::Expired { .. } => "Expired",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `meta/v1` Status object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { resource, group, name }
            | ApiError::AlreadyExists { resource, group, name }
            | ApiError::Conflict { resource, group, name } => {
                let kind = resource.split('.').next().unwrap_or(resource);
                Some(json!({"name": name, "group": group, "kind": kind}))
            }
            ApiError::Invalid { kind, group, name, causes } => {
                let kind = kind.split('.').next().unwrap_or(kind);
                Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
            }
            ApiError::ApplyConflict { resource, group, name, causes } => {
                let kind = resource.split('.').next().unwrap_or(resource);
                Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
            }
            ApiError::TooManyRequests { retry_after_seconds } => {
                Some(json!({"retryAfterSeconds": retry_after_seconds}))
            }
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (self.code(), axum::Json(self.status())).into_response();
        // kube-apiserver's response writer turns a Status's retryAfterSeconds into the header clients wait by.
        if let ApiError::TooManyRequests { retry_after_seconds } = self {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_seconds));
        }
        response
    }
}

impl From<skiff_store::Error> for ApiError {
    fn from(error: skiff_store::Error) -> Self {
        match error {
            skiff_store::Error::Compacted { requested, compacted } => {
                ApiError::Expired { requested, oldest: compacted }
            }
            skiff_store::Error::TooLarge => ApiError::object_too_large(None),
            other => ApiError::Internal(format!("storage error: {other}")),
        }
    }
}

/// kube-apiserver's answers to a patch that cannot be applied: 413 for too many JSON patch operations, 422
/// when the operations fail (it says only "the server rejected our request due to an error in our
/// request"; Skiff keeps what went wrong), 400 when the body is malformed.
impl From<PatchError> for ApiError {
    fn from(error: PatchError) -> Self {
        let message = format!("the patch could not be applied: {error}");
        match error {
            PatchError::TooManyOperations { .. } => ApiError::TooLarge(error.to_string()),
            PatchError::TestFailed { .. }
            | PatchError::PathMissing { .. }
            | PatchError::OperationFailed(_)
            | PatchError::CopyTooLarge { .. }
            | PatchError::RetainKeysMismatch { .. } => ApiError::Unprocessable(message),
            _ => ApiError::BadRequest(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_kubernetes_reasons_and_details() {
        let deploy = skiff_api::resources::find("apps", "v1", "deployments").unwrap();
        let status = ApiError::already_exists(deploy, "web").status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "AlreadyExists");
        assert_eq!(status["message"], "deployments.apps \"web\" already exists");
        assert_eq!(status["details"], json!({"name": "web", "group": "apps", "kind": "deployments"}));

        let causes = vec![
            Cause { reason: "FieldValueRequired", message: "Required value".into(), field: "spec.selector".into() },
            Cause { reason: "FieldValueInvalid", message: "Invalid value: -1".into(), field: "spec.replicas".into() },
        ];
        let status = ApiError::invalid(deploy, "web", causes).status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["message"],
            "Deployment.apps \"web\" is invalid: [spec.selector: Required value, spec.replicas: Invalid value: -1]"
        );
        assert_eq!(status["details"]["causes"].as_array().map(Vec::len), Some(2));

        let pods = skiff_api::resources::find("", "v1", "pods").unwrap();
        let status = ApiError::forbidden(pods, "x", "violates PodSecurity \"baseline:latest\": privileged").status();
        assert_eq!((status["code"].as_u64(), status["reason"].as_str()), (Some(403), Some("Forbidden")));
        assert_eq!(status["message"], "pods \"x\" is forbidden: violates PodSecurity \"baseline:latest\": privileged");
    }

    #[test]
    fn limits_answer_as_kube_apiserver_does() {
        let body = ApiError::TooLarge(format!("limit is {}", skiff_api::limits::MAX_REQUEST_BODY_BYTES)).status();
        assert_eq!((body["code"].as_u64(), body["reason"].as_str()), (Some(413), Some("RequestEntityTooLarge")));
        assert_eq!(body["message"], "Request entity too large: limit is 3145728");

        let operations = ApiError::from(PatchError::TooManyOperations { count: 10_001 }).status();
        assert_eq!(operations["code"], 413);
        assert_eq!(
            operations["message"],
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );

        let copy = ApiError::from(PatchError::CopyTooLarge { accumulated: 4_194_304, limit: 3_145_728 }).status();
        assert_eq!((copy["code"].as_u64(), copy["reason"].as_str()), (Some(422), Some("Invalid")));
        assert_eq!(
            copy["message"],
            "the patch could not be applied: Unable to complete the copy, the accumulated size increase of copy is 4194304, exceeding the limit 3145728"
        );
        assert_eq!(ApiError::from(PatchError::NotAnObject).code(), StatusCode::BAD_REQUEST);

        let object = ApiError::object_too_large(Some(2_000_000)).status();
        assert_eq!((object["code"].as_u64(), object["reason"].as_str()), (Some(413), Some("RequestEntityTooLarge")));
        assert_eq!(
            object["message"],
            "Request entity too large: etcdserver: request is too large (the object is 2000000 bytes, limit is 1572864)"
        );
        assert_eq!(
            ApiError::from(skiff_store::Error::TooLarge).status()["message"],
            "Request entity too large: etcdserver: request is too large"
        );
    }
}
