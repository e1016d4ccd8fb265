//! The review resources: create-only, never stored, answered from the authorizer. `kubectl auth can-i`
//! (SelfSubjectAccessReview, and SelfSubjectRulesReview for `--list`), `kubectl auth whoami`
//! (SelfSubjectReview), SubjectAccessReview / LocalSubjectAccessReview for components that ask on
//! someone else's behalf (a node's kubelet port, the certificate approver), and TokenReview, which answers
//! from the authenticator what a bearer token proves (for components that take service account tokens).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use skiff_api::authz::{Attributes, Decision, UserInfo};

use crate::authn::{Authenticator, TokenOutcome};
use crate::authz::Authorizer;
use crate::error::ApiError;

const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTHENTICATION: &str = "authentication.k8s.io";

/// The review a `POST` path addresses, if it addresses one.
pub fn addressed(path: &str) -> Option<(&'static str, Option<String>)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["apis", AUTHORIZATION, "v1", "selfsubjectaccessreviews"] => Some(("SelfSubjectAccessReview", None)),
        ["apis", AUTHORIZATION, "v1", "selfsubjectrulesreviews"] => Some(("SelfSubjectRulesReview", None)),
        ["apis", AUTHORIZATION, "v1", "subjectaccessreviews"] => Some(("SubjectAccessReview", None)),
        ["apis", AUTHORIZATION, "v1", "namespaces", ns, "localsubjectaccessreviews"] => {
            Some(("LocalSubjectAccessReview", Some(ns.to_string())))
        }
        ["apis", AUTHENTICATION, "v1" | "v1beta1", "selfsubjectreviews"] => Some(("SelfSubjectReview", None)),
        ["apis", AUTHENTICATION, "v1", "tokenreviews"] => Some(("TokenReview", None)),
        _ => None,
    }
}

/// Answers the review `kind` in `body` for `user` (the requester, already allowed to create it).
#[allow(clippy::too_many_arguments)]
pub async fn answer(
    authenticator: &Authenticator,
    authorizer: &Authorizer,
    store: &dyn skiff_store::Store,
    user: &UserInfo,
    kind: &str,
    namespace: Option<String>,
    path: &str,
    mut body: Value,
) -> Result<Value, ApiError> {
    let api_version = match kind {
        // kubectl 1.27 still asks v1beta1; answer in the version asked.
        "SelfSubjectReview" if path.contains("/v1beta1/") => "authentication.k8s.io/v1beta1",
        "SelfSubjectReview" | "TokenReview" => "authentication.k8s.io/v1",
        _ => "authorization.k8s.io/v1",
    };
    if !body.is_object() {
        return Err(ApiError::BadRequest(format!("the request body must be a {kind} object")));
    }
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    match kind {
        "SelfSubjectReview" => {
            body["status"] = json!({"userInfo": user_info_json(user)});
        }
        "TokenReview" => {
            body["status"] = token_review(authenticator, &spec).await?;
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or_default();
            let rules = authorizer.rbac().rules_for(user, namespace);
            let (resource, non_resource): (Vec<_>, Vec<_>) =
                rules.into_iter().partition(|rule| rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty));
            let resource_rules: Vec<Value> = resource
                .into_iter()
                .map(|r| {
                    json!({
                        "verbs": r.verbs,
                        "apiGroups": r.api_groups.unwrap_or_default(),
                        "resources": r.resources.unwrap_or_default(),
                        "resourceNames": r.resource_names.unwrap_or_default(),
                    })
                })
                .collect();
            let non_resource_rules: Vec<Value> = non_resource
                .into_iter()
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls.unwrap_or_default()}))
                .collect();
            body["status"] = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                // A node's rights come from the Node authorizer too, which lists no rules.
                "incomplete": user.node_name().is_some(),
            });
        }
        _ => {
            let subject = match kind {
                "SelfSubjectAccessReview" => user.clone(),
                _ => subject_of(&spec)?,
            };
            let mut attributes = attributes_of(subject, &spec)?;
            if let Some(namespace) = namespace {
                if attributes.namespace.is_empty() {
                    attributes.namespace = namespace.clone();
                }
                if attributes.namespace != namespace {
                    return Err(ApiError::BadRequest(format!(
                        "spec.resourceAttributes.namespace must match namespace: {namespace}"
                    )));
                }
            }
            let status = match authorizer.authorize(&attributes, store).await {
                Decision::Allow => json!({"allowed": true}),
                Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
                Decision::NoOpinion => json!({"allowed": false}),
            };
            body["status"] = status;
        }
    }
    Ok(body)
}

/// A TokenReview's status for `spec`, as kube-apiserver's TokenReview storage: the token's user and the
/// audiences it was reviewed for (the API server's unless `spec.audiences` names others), or why not.
async fn token_review(authenticator: &Authenticator, spec: &Value) -> Result<Value, ApiError> {
    let token = spec.get("token").and_then(Value::as_str).unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::BadRequest(String::from("token is required for TokenReview in authentication")));
    }
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Ok(match authenticator.authenticate_token(token, &audiences).await {
        TokenOutcome::Authenticated { user, audiences } => {
            json!({"authenticated": true, "user": user_info_json(&user), "audiences": audiences})
        }
        // A bearer token no authenticator takes gets Kubernetes' default error.
        TokenOutcome::Unknown => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        TokenOutcome::Refused(error) => json!({"authenticated": false, "user": {}, "error": error.to_string()}),
    })
}

fn user_info_json(user: &UserInfo) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}

/// The subject a SubjectAccessReview asks about.
fn subject_of(spec: &Value) -> Result<UserInfo, ApiError> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    };
    let name = spec.get("user").and_then(Value::as_str).unwrap_or_default().to_string();
    let groups = strings(spec.get("groups"));
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::BadRequest(String::from("at least one of user or group must be specified")));
    }
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|extra| extra.iter().map(|(k, v)| (k.clone(), strings(Some(v)))).collect())
        .unwrap_or_default();
    let uid = spec.get("uid").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(UserInfo { name, uid, groups, extra })
}

/// What a review's spec asks about: `resourceAttributes` or `nonResourceAttributes`, exactly one.
fn attributes_of(user: UserInfo, spec: &Value) -> Result<Attributes, ApiError> {
    let field = |object: &Value, key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(resource), None) => Ok(Attributes {
            user,
            verb: field(resource, "verb"),
            resource_request: true,
            namespace: field(resource, "namespace"),
            api_group: field(resource, "group"),
            api_version: field(resource, "version"),
            resource: field(resource, "resource"),
            subresource: field(resource, "subresource"),
            name: field(resource, "name"),
            ..Attributes::default()
        }),
        (None, Some(path)) => {
            Ok(Attributes { user, verb: field(path, "verb"), path: field(path, "path"), ..Attributes::default() })
        }
        (Some(_), Some(_)) => Err(ApiError::BadRequest(String::from(
            "cannot specify both spec.resourceAttributes and spec.nonResourceAttributes",
        ))),
        (None, None) => Err(ApiError::BadRequest(String::from(
            "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be specified",
        ))),
    }
}
