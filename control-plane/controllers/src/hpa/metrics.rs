//! The metrics an HPA reads, in the standard shapes: PodMetrics from the resource metrics API
//! (`metrics.k8s.io/v1beta1`, as metrics-server serves them) and MetricValueLists from the custom metrics
//! API (`custom.metrics.k8s.io/v1beta2`), and one metric spec turned into a proposal and its status with
//! Kubernetes' error wording. An API that is not served (404, 503) is a failed metric like any other.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::MetricSpec;
use serde_json::{Value, json};

use super::algorithm::{self, MetricFailure, Observation, PodMetric, PodMetrics, PodSample, Proposal, Tuning};

/// metrics-server's default window, which the custom metrics client assumes when a value has none.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Reads metrics of one namespace's pods matching one selector, each API at most once per sync.
pub(super) struct Fetcher<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    selector: &'a str,
    resource: Option<Result<Vec<Value>, String>>,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(client: &'a kube::Client, namespace: &'a str, selector: &'a str) -> Self {
        Self { client, namespace, selector, resource: None }
    }

    async fn get(&self, path: String, query: &[(&str, &str)], asked: &str) -> Result<Value, String> {
        let query = serde_urlencoded::to_string(query).map_err(|e| e.to_string())?;
        let uri = if query.is_empty() { path } else { format!("{path}?{query}") };
        let request = http::Request::get(uri).body(Vec::new()).map_err(|e| e.to_string())?;
        self.client.request::<Value>(request).await.map_err(|e| super::kube_message(&e, asked))
    }

    /// The PodMetrics of the selected pods (`resourceMetricsClient.GetResourceMetric`'s request).
    async fn pod_metrics(&mut self) -> Result<Vec<Value>, String> {
        if self.resource.is_none() {
            let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods", self.namespace);
            let answer = self.get(path, &[("labelSelector", self.selector)], "get pods.metrics.k8s.io").await;
            let items = answer
                .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))
                .map(|list| list["items"].as_array().cloned().unwrap_or_default())
                .and_then(|items| {
                    if items.is_empty() {
                        Err("no metrics returned from resource metrics API".to_string())
                    } else {
                        Ok(items)
                    }
                });
            self.resource = Some(items);
        }
        self.resource.clone().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// The values of a Pods metric (`customMetricsClient.GetRawMetric`).
    async fn custom_metric(&self, metric: &str, metric_selector: &str) -> Result<PodMetrics, String> {
        let path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/*/{metric}", self.namespace);
        let mut query = vec![("labelSelector", self.selector)];
        if !metric_selector.is_empty() {
            query.push(("metricLabelSelector", metric_selector));
        }
        let list = self
            .get(path, &query, "get pods.custom.metrics.k8s.io")
            .await
            .map_err(|e| format!("unable to fetch metrics from custom metrics API: {e}"))?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return Err("no metrics returned from custom metrics API".into());
        }
        Ok(items
            .iter()
            .map(|item| {
                let window = item["windowSeconds"].as_u64().map(Duration::from_secs).unwrap_or(DEFAULT_WINDOW);
                let metric = PodMetric {
                    timestamp: timestamp_of(&item["timestamp"]),
                    window,
                    value: milli_value(item["value"].as_str().unwrap_or("0")),
                };
                (item.pointer("/describedObject/name").and_then(Value::as_str).unwrap_or_default().to_string(), metric)
            })
            .collect())
    }
}

fn timestamp_of(value: &Value) -> Timestamp {
    value.as_str().and_then(|t| t.parse().ok()).unwrap_or_default()
}

/// Kubernetes' `Quantity.MilliValue()`: the value in thousandths, rounded up.
pub(crate) fn milli_value(quantity: &str) -> i64 {
    skiff_api::validation::parse_quantity(quantity).map(|v| (v * 1000.0).ceil() as i64).unwrap_or(0)
}

/// `getPodMetrics` / `getContainerMetrics`: each pod's usage of `resource` (one container's, or the sum
/// over its containers), skipping pods where a container lacks it.
fn resource_values(items: &[Value], resource: &str, container: Option<&str>) -> Result<PodMetrics, String> {
    let mut values = PodMetrics::new();
    for item in items {
        let containers = item["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut sum = 0;
        let mut missing = containers.is_empty();
        let mut found_container = false;
        for c in containers {
            if container.is_some_and(|name| c["name"] != name) {
                continue;
            }
            found_container = true;
            match c.pointer(&format!("/usage/{resource}")).and_then(Value::as_str) {
                Some(usage) => sum += milli_value(usage),
                None => {
                    missing = true;
                    break;
                }
            }
        }
        let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        if let Some(container) = container
            && !found_container
        {
            return Err(format!(
                "failed to get container metrics: container {container} not present in metrics for pod {}/{name}",
                item.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
            ));
        }
        if !missing {
            let window = item["window"].as_str().and_then(skiff_api::parse_go_duration).unwrap_or(DEFAULT_WINDOW);
            values.insert(
                name.to_string(),
                PodMetric { timestamp: timestamp_of(&item["timestamp"]), window, value: sum },
            );
        }
    }
    Ok(values)
}

/// `Quantity` text of a milli value as Kubernetes' `NewMilliQuantity(v, DecimalSI)` prints it.
fn milli_quantity(milli: i64) -> String {
    if milli % 1000 == 0 { (milli / 1000).to_string() } else { format!("{milli}m") }
}

/// One metric spec's proposal (or failure) and its MetricStatus (`computeReplicasForMetric`).
pub(super) async fn compute(
    fetcher: &mut Fetcher<'_>,
    spec: &MetricSpec,
    current: i32,
    pods: &[PodSample],
    tuning: &Tuning,
    now: Timestamp,
) -> (Result<Proposal, MetricFailure>, Option<Value>) {
    match spec.type_.as_str() {
        "Resource" | "ContainerResource" => {
            let (name, container, target, reason) = match (&spec.resource, &spec.container_resource) {
                (Some(r), _) if spec.type_ == "Resource" => {
                    (r.name.clone(), None, r.target.clone(), "FailedGetResourceMetric")
                }
                (_, Some(c)) if spec.type_ == "ContainerResource" => {
                    (c.name.clone(), Some(c.container.clone()), c.target.clone(), "FailedGetContainerResourceMetric")
                }
                _ => {
                    let failure = MetricFailure {
                        reason: "InvalidMetricSourceType",
                        error: format!("invalid metric source type {:?}", spec.type_),
                    };
                    return (Err(failure), None);
                }
            };
            let fail = |error: String| (Err(MetricFailure { reason, error }), None);
            // Kubernetes words a failure by the target: a raw value's usage, or a utilization.
            let what = if target.average_value.is_some() { "usage" } else { "utilization" };
            let values =
                fetcher.pod_metrics().await.and_then(|items| resource_values(&items, &name, container.as_deref()));
            let values = match values {
                Ok(values) => values,
                Err(e) => {
                    return fail(format!(
                        "failed to get {name} {what}: unable to get metrics for resource {name}: {e}"
                    ));
                }
            };
            let key = if container.is_some() { "containerResource" } else { "resource" };
            let mut identity = json!({"name": name});
            if let Some(container) = &container {
                identity["container"] = json!(container);
            }
            if let Some(average) = &target.average_value {
                let resource = Some(name.as_str());
                let observed = Observation { pods, metrics: values, now };
                return match algorithm::average_value_replicas(
                    current,
                    milli_value(&average.0),
                    resource,
                    observed,
                    tuning,
                ) {
                    Err(e) => fail(format!("failed to get {name} usage: {e}")),
                    Ok((replicas, usage)) => {
                        identity["current"] = json!({"averageValue": milli_quantity(usage)});
                        let status = json!({"type": spec.type_, key: identity});
                        (Ok(Proposal { replicas, metric: format!("{name} resource") }), Some(status))
                    }
                };
            }
            let Some(utilization) = target.average_utilization else {
                return fail("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into());
            };
            let observed = Observation { pods, metrics: values, now };
            match algorithm::resource_utilization_replicas(
                current,
                utilization,
                &name,
                container.as_deref(),
                observed,
                tuning,
            ) {
                Err(e) => fail(format!("failed to get {name} utilization: {}", e)),
                Ok(proposal) => {
                    identity["current"] = json!({
                        "averageUtilization": proposal.utilization,
                        "averageValue": milli_quantity(proposal.raw_average),
                    });
                    let status = json!({"type": spec.type_, key: identity});
                    let metric = match &container {
                        Some(container) => {
                            format!("{name} container resource utilization (percentage of request) of {container}")
                        }
                        None => format!("{name} resource utilization (percentage of request)"),
                    };
                    (Ok(Proposal { replicas: proposal.replicas, metric }), Some(status))
                }
            }
        }
        "Pods" => {
            let Some(source) = &spec.pods else {
                let failure = MetricFailure {
                    reason: "InvalidMetricSourceType",
                    error: "invalid metric source type \"Pods\"".into(),
                };
                return (Err(failure), None);
            };
            let name = source.metric.name.clone();
            let fail = |error: String| (Err(MetricFailure { reason: "FailedGetPodsMetric", error }), None);
            let metric_selector = source
                .metric
                .selector
                .as_ref()
                .and_then(|s| skiff_api::selectors::LabelSelector::from_k8s(s).ok())
                .map(|s| s.to_string())
                .unwrap_or_default();
            let values = match fetcher.custom_metric(&name, &metric_selector).await {
                Ok(values) => values,
                Err(e) => return fail(format!("unable to get metric {name}: {e}")),
            };
            let target = source.target.average_value.as_ref().map(|q| milli_value(&q.0)).unwrap_or(0);
            let observed = Observation { pods, metrics: values, now };
            match algorithm::average_value_replicas(current, target, None, observed, tuning) {
                Err(e) => fail(format!("unable to get metric {name}: {}", e)),
                Ok((replicas, usage)) => {
                    let mut metric = json!({"name": name});
                    if let Some(selector) = &source.metric.selector {
                        metric["selector"] = serde_json::to_value(selector).unwrap_or(Value::Null);
                    }
                    let status = json!({"type": "Pods", "pods": {"metric": metric, "current": {"averageValue": milli_quantity(usage)}}});
                    (Ok(Proposal { replicas, metric: format!("pods metric {name}") }), Some(status))
                }
            }
        }
        // Skiff serves neither an external metrics API nor metrics about other objects yet: Kubernetes
        // without an adapter reports these the same way.
        "Object" => {
            let name = spec.object.as_ref().map(|o| o.metric.name.clone()).unwrap_or_default();
            let error = format!("unable to get metric {name}: the object metrics API is not served");
            (Err(MetricFailure { reason: "FailedGetObjectMetric", error }), None)
        }
        "External" => {
            let name = spec.external.as_ref().map(|e| e.metric.name.clone()).unwrap_or_default();
            let error = format!("unable to get external metric {name}: the external metrics API is not served");
            (Err(MetricFailure { reason: "FailedGetExternalMetric", error }), None)
        }
        other => {
            let failure = MetricFailure {
                reason: "InvalidMetricSourceType",
                error: format!("unknown metric source type {other:?}"),
            };
            (Err(failure), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metrics_sum_containers_and_skip_pods_missing_one() {
        let items = vec![
            json!({"metadata": {"name": "a", "namespace": "d"}, "timestamp": "2026-12-07T00:00:00Z", "window": "30s",
                "containers": [{"name": "app", "usage": {"cpu": "250m", "memory": "64Mi"}}, {"name": "side", "usage": {"cpu": "1"}}]}),
            json!({"metadata": {"name": "b"}, "containers": [{"name": "app", "usage": {"memory": "1Mi"}}]}),
            json!({"metadata": {"name": "c"}, "containers": []}),
        ];
        let cpu = resource_values(&items, "cpu", None).unwrap();
        assert_eq!(cpu.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!((cpu["a"].value, cpu["a"].window), (1250, Duration::from_secs(30)));
        assert_eq!(resource_values(&items[..1], "cpu", Some("app")).unwrap()["a"].value, 250);
        assert!(resource_values(&items[..1], "memory", None).unwrap().is_empty());
    }

    #[test]
    fn quantities_in_milli_units() {
        assert_eq!(milli_value("250m"), 250);
        assert_eq!(milli_value("1"), 1000);
        assert_eq!(milli_value("1Ki"), 1_024_000);
        assert_eq!(milli_quantity(1500), "1500m");
        assert_eq!(milli_quantity(2000), "2");
    }
}
