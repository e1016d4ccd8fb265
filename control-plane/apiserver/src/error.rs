//! Every failure the API answers, and its one mapping to a Kubernetes `Status`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use skiff_api::resources::ResourceDef;
use skiff_api::validation::Cause;

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
    #[error("the request is too large: limit is 3145728 bytes")]
    TooLarge,
    /// A watch or list asked for a resourceVersion older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: i64, oldest: i64 },
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

    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let kind = if def.group.is_empty() { def.kind.to_string() } else { format!("{}.{}", def.kind, def.group) };
        ApiError::Invalid { kind, group: def.group, name: name.to_string(), causes }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::Expired { .. } => "Expired",
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
        (self.code(), axum::Json(self.status())).into_response()
    }
}

impl From<skiff_store::Error> for ApiError {
    fn from(error: skiff_store::Error) -> Self {
        match error {
            skiff_store::Error::Compacted { requested, compacted } => {
                ApiError::Expired { requested, oldest: compacted }
            }
            other => ApiError::Internal(format!("storage error: {other}")),
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
    }
}
