//! How many requests the server works on at once: kube-apiserver's max-in-flight filter
//! (`staging/src/k8s.io/apiserver/pkg/server/filters/maxinflight.go`). Requests that read and requests that
//! write each have a pool; a request beyond its pool is answered 429 `TooManyRequests` with `Retry-After: 1`
//! straight away, never queued, so a burst costs the server nothing but the refusals, and clients (client-go,
//! kube-rs) wait and retry. Long-running requests (watches, exec, attach, port-forward, logs, proxy) are not
//! counted: they last as long as their user wants, and would otherwise fill the pools for good.
//!
//! As in kube-apiserver the filter comes after authentication: a request without credentials is not counted
//! (it is answered 401, which costs nothing), and `system:masters` is always answered, even beyond the
//! pools: "a system:master is so powerful that they should always get an answer".

use std::sync::Arc;

use http::{Method, Uri};
use skiff_api::authz::{MASTERS, UserInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// kube-apiserver's `--max-requests-inflight` default: reads (get, list) at once.
pub const MAX_READ_ONLY: usize = 400;
/// kube-apiserver's `--max-mutating-requests-inflight` default: writes (create, update, patch, delete) at once.
pub const MAX_MUTATING: usize = 200;
/// What kube-apiserver's refusal tells clients to wait (`retryAfter = "1"`), in seconds.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// What a request is to the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A watch, exec, attach, port-forward, log or proxy request: never counted.
    LongRunning,
    /// `/healthz`, `/livez`, `/readyz`: never counted, as API Priority and Fairness exempts probes (its
    /// `probes` FlowSchema), so a busy server is not restarted by its own liveness probe.
    Probe,
    ReadOnly,
    Mutating,
}

/// kube-apiserver's long-running subresources (`BasicLongRunningRequestCheck`'s set).
const LONG_RUNNING_SUBRESOURCES: [&str; 5] = ["attach", "exec", "log", "portforward", "proxy"];

/// Namespace subresources, which kube-apiserver's request-info parser keeps on the namespace itself.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Classifies a request as kube-apiserver's `RequestInfoFactory` and long-running check do, with the watch
/// flag read as this server's router reads it (the last `watch` value, `true` or `1`, on a collection).
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Kind {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let read = matches!(*method, Method::GET | Method::HEAD);
    let simple = if read { Kind::ReadOnly } else { Kind::Mutating };
    let rest = match segments.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Kind::Probe,
        ["api", _version, rest @ ..] | ["apis", _, _version, rest @ ..] => rest,
        _ => return simple,
    };
    let rest = match rest {
        // kube-apiserver's special verbs, as a path's first segment.
        ["watch" | "proxy", ..] => return Kind::LongRunning,
        ["namespaces", _namespace, rest @ ..] if rest.first().is_some_and(|s| !NAMESPACE_SUBRESOURCES.contains(s)) => {
            rest
        }
        rest => rest,
    };
    match rest {
        [_resource, _name, subresource, ..] if LONG_RUNNING_SUBRESOURCES.contains(subresource) => Kind::LongRunning,
        [_resource] if read && watch_flag(query) => Kind::LongRunning,
        _ => simple,
    }
}

/// Whether the query asks for a watch, as the router reads it: the last non-empty `watch`, `true` or `1`.
fn watch_flag(query: Option<&str>) -> bool {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let watch = pairs.iter().rev().find(|(key, value)| key == "watch" && !value.is_empty());
    watch.is_some_and(|(_, value)| value == "true" || value == "1")
}

/// The two pools and who may pass them.
pub struct InFlight {
    read_only: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
}

/// A counted request's place in its pool, given back when its response has been sent (or dropped).
pub type Slot = OwnedSemaphorePermit;

impl InFlight {
    pub fn new(max_read_only: usize, max_mutating: usize) -> Self {
        InFlight {
            read_only: Arc::new(Semaphore::new(max_read_only)),
            mutating: Arc::new(Semaphore::new(max_mutating)),
        }
    }

    /// Admits an authenticated `user`'s request: `Ok(Some(slot))` to hold until its response is sent,
    /// `Ok(None)` for one not counted, or the 429 to answer.
    pub fn admit(&self, method: &Method, uri: &Uri, user: &UserInfo) -> Result<Option<Slot>, ApiError> {
        let pool = match classify(method, uri.path(), uri.query()) {
            Kind::LongRunning | Kind::Probe => return Ok(None),
            Kind::ReadOnly => &self.read_only,
            Kind::Mutating => &self.mutating,
        };
        match pool.clone().try_acquire_owned() {
            Ok(slot) => Ok(Some(slot)),
            Err(_) if user.in_group(MASTERS) => Ok(None),
            Err(_) => {
                tracing::debug!(%method, path = uri.path(), "too many requests in flight");
                Err(ApiError::TooManyRequests { retry_after_seconds: RETRY_AFTER_SECONDS })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use http::header;

    #[test]
    fn long_running_requests_are_recognised_as_kube_apiserver_does() {
        let cases = [
            // Watches: the flag on a collection (last value wins, as the router reads it), or the path verb.
            (Method::GET, "/api/v1/namespaces/default/pods", Some("watch=true"), Kind::LongRunning),
            (Method::GET, "/api/v1/pods", Some("watch=1&resourceVersion=5"), Kind::LongRunning),
            (Method::GET, "/apis/apps/v1/deployments", Some("watch=false&watch=true"), Kind::LongRunning),
            (Method::GET, "/api/v1/namespaces/default/pods", Some("watch=true&watch=false"), Kind::ReadOnly),
            (Method::GET, "/api/v1/namespaces/default/pods", Some("watch=yes"), Kind::ReadOnly),
            (Method::GET, "/api/v1/watch/namespaces/default/pods", None, Kind::LongRunning),
            // The watch flag on a named object is no watch (the router serves a get).
            (Method::GET, "/api/v1/namespaces/default/pods/web", Some("watch=true"), Kind::ReadOnly),
            // A namespace is a collection item of its own: watching namespaces is a watch.
            (Method::GET, "/api/v1/namespaces", Some("watch=true"), Kind::LongRunning),
            // Long-running subresources, whatever the method (exec and port-forward upgrade a GET or POST).
            (Method::POST, "/api/v1/namespaces/default/pods/web/exec", Some("command=sh"), Kind::LongRunning),
            (Method::GET, "/api/v1/namespaces/default/pods/web/attach", None, Kind::LongRunning),
            (Method::POST, "/api/v1/namespaces/default/pods/web/portforward", None, Kind::LongRunning),
            (Method::GET, "/api/v1/namespaces/default/pods/web/log", Some("follow=true"), Kind::LongRunning),
            (Method::GET, "/api/v1/namespaces/default/pods/web/log", None, Kind::LongRunning),
            (Method::GET, "/api/v1/nodes/node-1/proxy/metrics", None, Kind::LongRunning),
            // Probes are exempt; everything else counts, reads apart from writes.
            (Method::GET, "/readyz", None, Kind::Probe),
            (Method::GET, "/livez/ping", None, Kind::Probe),
            (Method::GET, "/version", None, Kind::ReadOnly),
            (Method::GET, "/api/v1/namespaces/default/pods/web/status", None, Kind::ReadOnly),
            (Method::PUT, "/api/v1/namespaces/default/pods/web/status", None, Kind::Mutating),
            (Method::PUT, "/api/v1/namespaces/default/finalize", None, Kind::Mutating),
            (Method::GET, "/api/v1/namespaces/log", None, Kind::ReadOnly),
            (Method::POST, "/apis/apps/v1/namespaces/default/deployments", None, Kind::Mutating),
            (Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/web", None, Kind::Mutating),
            (Method::DELETE, "/api/v1/namespaces/default/configmaps", Some("watch=true"), Kind::Mutating),
        ];
        for (method, path, query, kind) in cases {
            assert_eq!(classify(&method, path, query), kind, "{method} {path}?{}", query.unwrap_or(""));
        }
    }

    fn request(method: Method, uri: &str, group: &str) -> (Method, Uri, UserInfo) {
        let user = UserInfo { name: "someone".into(), groups: vec![group.into()], ..UserInfo::default() };
        (method, uri.parse().unwrap(), user)
    }

    #[test]
    fn beyond_its_pool_a_request_is_told_to_retry_and_the_admin_is_always_answered() {
        let limiter = InFlight::new(2, 1);
        let admit = |(method, uri, user): (Method, Uri, UserInfo)| limiter.admit(&method, &uri, &user);
        let get = |group| request(Method::GET, "/api/v1/namespaces", group);
        let first = admit(get("node")).unwrap();
        let second = admit(get("node")).unwrap();
        assert!(first.is_some() && second.is_some(), "counted");
        let refused = admit(get("node")).unwrap_err();
        let response = refused.into_response();
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let status = ApiError::TooManyRequests { retry_after_seconds: RETRY_AFTER_SECONDS }.status();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str(), status["code"].as_u64()),
            (Some("Status"), Some("TooManyRequests"), Some(429))
        );
        assert_eq!(status["message"], "Too many requests, please try again later.");
        assert_eq!(status["details"]["retryAfterSeconds"], 1);

        // Writes have their own pool; long-running requests and probes take none.
        let write = admit(request(Method::POST, "/api/v1/namespaces/default/configmaps", "node")).unwrap();
        assert!(write.is_some());
        assert!(admit(request(Method::DELETE, "/api/v1/namespaces/default/configmaps/x", "node")).is_err());
        let watch = admit(request(Method::GET, "/api/v1/pods?watch=true", "node"));
        assert!(matches!(watch, Ok(None)));
        assert!(matches!(admit(request(Method::GET, "/readyz", "node")), Ok(None)));

        // system:masters gets an answer beyond the pool; a slot given back serves the next request.
        assert!(matches!(admit(get(MASTERS)), Ok(None)));
        drop(first);
        assert!(admit(get("node")).unwrap().is_some());
    }
}
