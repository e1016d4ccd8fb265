//! The API server's Prometheus instruments, under kube-apiserver's names, and `/metrics`, which serves the
//! whole process's registry (the control plane's loops register theirs in it too).
//!
//! Labels come from the request's path as the authorizer reads it, but only for what Skiff serves: a path
//! naming no known resource or subresource is counted with empty labels, so that nobody can grow the
//! registry without bound by asking for made-up names.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use skiff_api::authz::{Attributes, UserInfo};
use skiff_api::{discovery, metrics_api, resources};

use crate::router::AppState;

/// kube-apiserver's buckets for `apiserver_request_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
    component: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
    component: &'static str,
}

/// The request instruments.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
}

impl ApiMetrics {
    /// The instruments, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ApiMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS.iter().copied())),
        };
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, \
             component, and HTTP response code.",
            metrics.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, \
             subresource, scope and component.",
            metrics.durations.clone(),
        );
        metrics
    }
}

/// The registry `/metrics` serves, and the API server's own instruments in it.
#[derive(Clone, Debug)]
pub struct Instruments {
    pub registry: Arc<Registry>,
    pub api: ApiMetrics,
}

impl Default for Instruments {
    fn default() -> Self {
        let mut registry = Registry::default();
        let api = ApiMetrics::register(&mut registry);
        Instruments { registry: Arc::new(registry), api }
    }
}

/// What a request is counted as.
struct Described {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
}

impl Described {
    fn of(method: &Method, path: &str, query: Option<&str>, headers: &http::HeaderMap) -> Self {
        let attributes = crate::authz::request_attributes(UserInfo::default(), method, path, query);
        if !attributes.resource_request {
            return Described {
                verb: method_verb(method),
                group: String::new(),
                version: String::new(),
                resource: String::new(),
                subresource: String::new(),
                scope: "",
            };
        }
        let Attributes { api_group, api_version, resource, subresource, namespace, name, verb, .. } = attributes;
        let def = resources::find(&api_group, &api_version, &resource);
        let served_elsewhere = metrics_api::served().iter().any(|g| g.group == api_group && g.version == api_version);
        let known = def.is_some() || served_elsewhere;
        let subresource_known = subresource.is_empty()
            || served_elsewhere
            || def.is_some_and(|def| discovery::subresources(def).iter().any(|s| s.name == subresource));
        let apply = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/apply-patch"));
        let verb = match verb.as_str() {
            "list" => "LIST",
            "watch" => "WATCH",
            "get" if matches!(subresource.as_str(), "exec" | "attach" | "portforward" | "proxy") => "CONNECT",
            "create" if matches!(subresource.as_str(), "exec" | "attach" | "portforward" | "proxy") => "CONNECT",
            "get" => "GET",
            "create" => "POST",
            "update" => "PUT",
            "patch" if apply => "APPLY",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            _ => method_verb(method),
        };
        let scope = if !name.is_empty() {
            "resource"
        } else if !namespace.is_empty() {
            "namespace"
        } else {
            "cluster"
        };
        let keep = |value: String, ok: bool| if ok { value } else { String::new() };
        Described {
            verb,
            group: keep(api_group, known),
            version: keep(api_version, known),
            resource: keep(resource, known),
            subresource: keep(subresource, known && subresource_known),
            scope,
        }
    }
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Counts every request and times those that end (a watch or a connection upgrade lasts as long as the
/// client wants: kube-apiserver leaves long-running requests out of the latency histogram too).
pub async fn instrument(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let described = Described::of(request.method(), request.uri().path(), request.uri().query(), request.headers());
    let response = next.run(request).await;
    let Described { verb, group, version, resource, subresource, scope } = described;
    let metrics = &state.instruments.api;
    if !matches!(verb, "WATCH" | "CONNECT") {
        let labels = DurationLabels {
            verb,
            group: group.clone(),
            version: version.clone(),
            resource: resource.clone(),
            subresource: subresource.clone(),
            scope,
            component: "apiserver",
        };
        metrics.durations.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
    let code = response.status().as_u16().to_string();
    let labels = RequestLabels { verb, group, version, resource, subresource, scope, component: "apiserver", code };
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// `GET /metrics`: the process's registry in the OpenMetrics text format Prometheus scrapes.
pub async fn serve(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut body, &state.instruments.registry);
    let content_type = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(method: Method, path: &str) -> (&'static str, String, String, String, &'static str) {
        let d = Described::of(&method, path, None, &http::HeaderMap::new());
        (d.verb, d.group, d.resource, d.subresource, d.scope)
    }

    #[test]
    fn requests_are_labelled_as_kube_apiserver_labels_them() {
        let s = |v: &str| v.to_string();
        assert_eq!(described(Method::GET, "/api/v1/namespaces/a/pods"), ("LIST", s(""), s("pods"), s(""), "namespace"));
        assert_eq!(
            described(Method::GET, "/apis/apps/v1/namespaces/a/deployments/web"),
            ("GET", s("apps"), s("deployments"), s(""), "resource")
        );
        assert_eq!(described(Method::POST, "/api/v1/nodes"), ("POST", s(""), s("nodes"), s(""), "cluster"));
        assert_eq!(
            described(Method::PUT, "/api/v1/namespaces/a/pods/p/status"),
            ("PUT", s(""), s("pods"), s("status"), "resource")
        );
        assert_eq!(described(Method::GET, "/healthz"), ("GET", s(""), s(""), s(""), ""));
        assert_eq!(
            described(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes"),
            ("LIST", s("metrics.k8s.io"), s("nodes"), s(""), "cluster")
        );
    }

    #[test]
    fn made_up_names_are_not_labels() {
        let s = |v: &str| v.to_string();
        assert_eq!(described(Method::GET, "/apis/x.example/v1/anything"), ("LIST", s(""), s(""), s(""), "cluster"));
        assert_eq!(
            described(Method::GET, "/api/v1/namespaces/a/pods/p/whatever"),
            ("GET", s(""), s("pods"), s(""), "resource")
        );
    }

    #[test]
    fn the_registry_encodes_counts() {
        let instruments = Instruments::default();
        let labels = RequestLabels {
            verb: "GET",
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: String::new(),
            scope: "resource",
            component: "apiserver",
            code: "200".into(),
        };
        instruments.api.requests.get_or_create(&labels).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &instruments.registry).unwrap();
        assert!(text.contains("# TYPE apiserver_request counter"), "{text}");
        assert!(text.contains(r#"apiserver_request_total{verb="GET",group="",version="v1",resource="pods",subresource="",scope="resource",component="apiserver",code="200"} 1"#), "{text}");
    }
}
