//! Deployments that opted in with `skiff.dev/scale-to-zero-after` are scaled to zero once their pods have
//! served no request for that long, by the pods' `http_requests_per_second` in the custom metrics API (the
//! requests a wasi:http guest's runtime counts, and those the nodes' ingresses forward to any pod). Pods
//! whose requests nobody counts are never taken for idle. Each Service that selects the Deployment's pods is
//! then marked with `skiff.dev/scale-from-zero`, so the node that gets the next request for it knows what
//! to wake (see `skiff_api::scale_to_zero`).
//!
//! When a Deployment was last active is kept in memory: a new leader starts each Deployment's idle period
//! afresh, which can only delay a scale-down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_api::metrics_api::{CUSTOM_GROUP, CUSTOM_VERSION, HTTP_REQUESTS_PER_SECOND};
use skiff_api::scale_to_zero::{SCALES_FROM_ZERO, idle_after};
use skiff_api::selectors;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::events::{Kind, Recorder};

/// How often a Deployment at zero is looked at again, for Services made since it was scaled down.
const AT_ZERO_CHECK: Duration = Duration::from_secs(30);
/// The longest wait between two looks at a running Deployment's requests: the metrics API's resolution.
const MAX_CHECK: Duration = Duration::from_secs(15);

struct Context {
    client: kube::Client,
    recorder: Recorder,
    /// When each Deployment (by uid) last served a request, or was first seen.
    active: Mutex<HashMap<String, Instant>>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "scale-to-zero-controller"),
        client: client.clone(),
        active: Mutex::new(HashMap::new()),
    });
    Controller::new(Api::<Deployment>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

fn error_policy(deployment: Arc<Deployment>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = %deployment.name_any(), error = ?error, "scale-to-zero reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(deployment: Arc<Deployment>, context: Arc<Context>) -> Result<Action, Error> {
    let span =
        tracing::debug_span!("reconcile", deployment = %deployment.name_any(), namespace = ?deployment.namespace());
    sync(&deployment, &context).instrument(span).await
}

/// What the pods' request rates say.
#[derive(Debug, PartialEq)]
enum Requests {
    /// Some pod served requests in the last window.
    Active,
    /// Every pod that counts requests served none.
    Idle,
    /// No pod's requests are counted (no reading yet, or no runtime or ingress that counts them).
    Unknown,
}

fn requests_of(list: &Value) -> Requests {
    let values: Vec<f64> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| skiff_api::validation::parse_quantity(item["value"].as_str()?))
        .collect();
    match values {
        values if values.is_empty() => Requests::Unknown,
        values if values.iter().any(|v| *v > 0.0) => Requests::Active,
        _ => Requests::Idle,
    }
}

async fn sync(deployment: &Deployment, context: &Context) -> Result<Action, Error> {
    let uid = deployment.uid().unwrap_or_default();
    let value = serde_json::to_value(deployment).unwrap_or_default();
    let Some(idle_period) = idle_after(&value) else {
        context.lock().remove(&uid);
        return Ok(Action::await_change());
    };
    let namespace = deployment.namespace().unwrap_or_else(|| "default".into());
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if replicas == 0 {
        // Woken again, the Deployment gets a whole idle period before it can be scaled down.
        context.lock().remove(&uid);
        mark_services(context, deployment, &namespace).await?;
        return Ok(Action::requeue(AT_ZERO_CHECK));
    }
    let now = Instant::now();
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| selectors::LabelSelector::from_k8s(&s.selector).ok())
        .filter(|s| !s.is_empty());
    let Some(selector) = selector else { return Ok(Action::await_change()) };
    let requests = match request_rates(&context.client, &namespace, &selector.to_string()).await {
        Ok(list) => requests_of(&list),
        Err(e) => {
            tracing::debug!(error = %e, "no request rates");
            Requests::Unknown
        }
    };
    let last_active = {
        let mut active = context.lock();
        let last = active.entry(uid).or_insert(now);
        if requests != Requests::Idle {
            *last = now;
        }
        *last
    };
    let idle_for = now.saturating_duration_since(last_active);
    if idle_for < idle_period {
        return Ok(Action::requeue((idle_period - idle_for).min(MAX_CHECK)));
    }
    let name = deployment.name_any();
    let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
    deployments.patch_scale(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
    tracing::info!(?idle_period, "scaled to zero");
    context.recorder.record(
        deployment,
        Kind::Normal,
        "ScaledToZero",
        format!("Scaled down from {replicas} to 0 replicas: no requests for {}", format_duration(idle_period)),
    );
    mark_services(context, deployment, &namespace).await?;
    Ok(Action::requeue(AT_ZERO_CHECK))
}

impl Context {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Deployment's pods' `http_requests_per_second`, as the custom metrics API lists them.
async fn request_rates(client: &kube::Client, namespace: &str, selector: &str) -> Result<Value, kube::Error> {
    let query = serde_urlencoded::to_string([("labelSelector", selector)]).unwrap_or_default();
    let path = format!(
        "/apis/{CUSTOM_GROUP}/{CUSTOM_VERSION}/namespaces/{namespace}/pods/*/{HTTP_REQUESTS_PER_SECOND}?{query}"
    );
    let request = http::Request::get(path).body(Vec::new()).map_err(kube::Error::HttpError)?;
    client.request::<Value>(request).await
}

/// Marks every Service in `namespace` that selects the Deployment's pods with the Deployment's name.
async fn mark_services(context: &Context, deployment: &Deployment, namespace: &str) -> Result<(), Error> {
    let name = deployment.name_any();
    let labels = deployment.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone());
    let services: Api<Service> = Api::namespaced(context.client.clone(), namespace);
    for service in services.list(&ListParams::default()).await? {
        let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).filter(|s| !s.is_empty());
        let Some(selector) = selector else { continue };
        let selects = selector.iter().all(|(k, v)| labels.as_ref().and_then(|l| l.get(k)) == Some(v));
        if !selects || service.annotations().get(SCALES_FROM_ZERO) == Some(&name) {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {SCALES_FROM_ZERO: name}}});
        services.patch(&service.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// A duration as Kubernetes prints one in messages (`30s`, `5m0s`).
fn format_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counted_requests_make_a_deployment_idle() {
        let list = |values: &[&str]| json!({"items": values.iter().map(|v| json!({"value": v})).collect::<Vec<_>>()});
        assert_eq!(requests_of(&list(&[])), Requests::Unknown);
        assert_eq!(requests_of(&list(&["0", "0"])), Requests::Idle);
        assert_eq!(requests_of(&list(&["0", "250m"])), Requests::Active);
        assert_eq!(requests_of(&json!({})), Requests::Unknown);
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(3661)), "1h1m1s");
    }
}
