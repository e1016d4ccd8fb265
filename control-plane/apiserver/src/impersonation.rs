//! `kubectl --as NAME --as-group G`: a request may act as another user when its own identity may
//! `impersonate` that user, each of those groups, the UID and each extra value, as kube-apiserver's
//! impersonation filter decides.

use http::HeaderMap;
use skiff_api::authz::{AUTHENTICATED, Attributes, UserInfo};
use skiff_store::Store;

use crate::authz::Authorizer;
use crate::error::ApiError;

const USER: &str = "impersonate-user";
const UID: &str = "impersonate-uid";
const GROUP: &str = "impersonate-group";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The identity the request acts as: `user` itself without impersonation headers, else the impersonated
/// one once every part of it is allowed.
pub async fn impersonate(
    authorizer: &Authorizer,
    store: &dyn Store,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    };
    let groups = values(GROUP);
    let uid = values(UID).into_iter().next();
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA_PREFIX)
            && let Ok(value) = value.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(value.to_string());
        }
    }
    let Some(name) = values(USER).into_iter().next() else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::BadRequest(
            "requested impersonation of groups, uid or extra without impersonating a user".into(),
        ));
    };
    let check = |verb_target: Attributes| async move { authorizer.check(&verb_target, store).await };
    let asking = |api_group: &str, resource: &str, subresource: &str, namespace: &str, name: &str| Attributes {
        user: user.clone(),
        verb: "impersonate".into(),
        resource_request: true,
        api_group: api_group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Attributes::default()
    };
    match name.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|rest| rest.split_once(':')) {
        Some((namespace, account)) => check(asking("", "serviceaccounts", "", namespace, account)).await?,
        None => check(asking("", "users", "", "", &name)).await?,
    }
    for group in &groups {
        check(asking("", "groups", "", "", group)).await?;
    }
    if let Some(uid) = &uid {
        check(asking("authentication.k8s.io", "uids", "", "", uid)).await?;
    }
    for (key, values) in &extra {
        for value in values {
            check(asking("authentication.k8s.io", "userextras", key, "", value)).await?;
        }
    }
    let mut impersonated = UserInfo { name, uid: uid.unwrap_or_default(), groups, extra };
    if let Some(namespace) = impersonated.name.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|r| r.split_once(':'))
        && impersonated.groups.is_empty()
    {
        impersonated.groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{}", namespace.0)];
    }
    if impersonated.name != "system:anonymous" && !impersonated.in_group(AUTHENTICATED) {
        impersonated.groups.push(AUTHENTICATED.into());
    }
    Ok(impersonated)
}

/// Extra keys travel percent-encoded in header names (`Impersonate-Extra-acme.com%2Fproject`).
fn percent_decode(key: &str) -> String {
    percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn extra_keys_are_percent_decoded() {
        assert_eq!(super::percent_decode("acme.com%2fproject"), "acme.com/project");
        assert_eq!(super::percent_decode("scopes"), "scopes");
        assert_eq!(super::percent_decode("bad%zz"), "bad%zz");
    }
}
