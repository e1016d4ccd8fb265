//! The metrics APIs (`metrics.k8s.io/v1beta1`, `custom.metrics.k8s.io/v1beta2`), served as metrics-server
//! and a custom metrics adapter serve them, without either: every `resolution` the server reads each Ready
//! node's Summary (`/stats/summary` on its agent, with the server's kubelet client certificate) and keeps
//! the last two readings per node; a request is answered from them (see `skiff_api::metrics_api`), joined
//! with the pods or nodes it selects from the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use skiff_api::metrics_api::{
    self, CUSTOM_GROUP, CUSTOM_VERSION, HTTP_REQUESTS_PER_SECOND, METRICS_GROUP, METRICS_VERSION, NodeUsage, PodUsage,
};
use skiff_api::resources;
use skiff_api::selectors::LabelSelector;
use skiff_api::stats::Summary;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::kubelet::{KubeletClientIdentity, agent_get};
use crate::objects::{ListOptions, Objects};

/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);
/// How long one node may take to answer: a slow node must not hold the others' figures back.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last two readings of each node.
#[derive(Default)]
pub struct Readings {
    nodes: Mutex<HashMap<String, (Option<Summary>, Summary)>>,
}

impl Readings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Summary>, Summary)>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, node: &str, summary: Summary) {
        let mut nodes = self.lock();
        let previous = nodes.remove(node).map(|(_, latest)| latest);
        nodes.insert(node.to_string(), (previous, summary));
    }

    fn pods(&self) -> Vec<PodUsage> {
        self.lock().values().flat_map(|(previous, latest)| metrics_api::pod_usage(previous.as_ref(), latest)).collect()
    }

    /// Requests per second the nodes' ingresses forwarded, summed over the nodes, by endpoint address.
    fn forwarded(&self) -> HashMap<String, f64> {
        let mut rates: HashMap<String, f64> = HashMap::new();
        for (previous, latest) in self.lock().values() {
            for (address, rate) in metrics_api::forwarded_rates(previous.as_ref(), latest) {
                *rates.entry(address).or_default() += rate;
            }
        }
        rates
    }

    fn nodes(&self) -> Vec<NodeUsage> {
        self.lock()
            .values()
            .filter_map(|(previous, latest)| metrics_api::node_usage(previous.as_ref(), latest))
            .collect()
    }
}

/// Reads every Ready node every `resolution` until `shutdown`.
pub async fn run(
    objects: Objects,
    identity: KubeletClientIdentity,
    readings: Arc<Readings>,
    resolution: Duration,
    shutdown: CancellationToken,
) {
    loop {
        scrape(&objects, &identity, &readings).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(resolution) => {}
        }
    }
}

async fn scrape(objects: &Objects, identity: &KubeletClientIdentity, readings: &Readings) {
    let Some(def) = resources::find("", "v1", "nodes") else { return };
    let nodes = match objects.list(def, None, &ListOptions::default()).await {
        Ok(list) => list.items,
        Err(e) => return tracing::warn!(error = %e, "cannot list nodes for their metrics"),
    };
    let ready = |node: &&Value| {
        node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let reads = nodes.iter().filter(ready).map(|node| async move {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let read = tokio::time::timeout(SCRAPE_TIMEOUT, agent_get(identity, node, "/stats/summary")).await;
        let summary = match read {
            Ok(Ok(body)) => serde_json::from_slice::<Summary>(&body).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        (name.to_string(), summary)
    });
    let mut seen = HashSet::new();
    for (name, summary) in futures::future::join_all(reads).await {
        match summary {
            Ok(summary) => {
                readings.record(&name, summary);
                seen.insert(name);
            }
            // Its last figures stay until the next reading or the node goes, as metrics-server keeps them.
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "cannot read the node's summary");
                seen.insert(name);
            }
        }
    }
    readings.lock().retain(|name, _| seen.contains(name));
}

/// Whether `path` is under one of these groups.
pub fn addressed(path: &str) -> bool {
    [METRICS_GROUP, CUSTOM_GROUP].iter().any(|group| {
        path.strip_prefix("/apis/").and_then(|p| p.strip_prefix(group)).is_some_and(|rest| rest.starts_with("/v"))
    })
}

/// Answers a GET under these groups' versions (the group and version documents are discovery's).
pub async fn serve(objects: &Objects, readings: &Readings, path: &str, query: Option<&str>) -> Result<Value, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let selector = pairs
        .iter()
        .find(|(k, v)| k == "labelSelector" && !v.is_empty())
        .map(|(_, v)| LabelSelector::parse(v))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("unable to parse labelSelector: {e}")))?;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["apis", METRICS_GROUP, METRICS_VERSION, "nodes"] => node_list(objects, readings, selector, None).await,
        ["apis", METRICS_GROUP, METRICS_VERSION, "nodes", name] => node_list(objects, readings, None, Some(name)).await,
        ["apis", METRICS_GROUP, METRICS_VERSION, "pods"] => pod_list(objects, readings, None, selector, None).await,
        ["apis", METRICS_GROUP, METRICS_VERSION, "namespaces", ns, "pods"] => {
            pod_list(objects, readings, Some(ns), selector, None).await
        }
        ["apis", METRICS_GROUP, METRICS_VERSION, "namespaces", ns, "pods", name] => {
            pod_list(objects, readings, Some(ns), None, Some(name)).await
        }
        ["apis", CUSTOM_GROUP, CUSTOM_VERSION, "namespaces", ns, "pods", name, HTTP_REQUESTS_PER_SECOND] => {
            // Every pod the selector selects is `*`, which clients send escaped.
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            let name = (name != "*").then_some(name.as_ref());
            http_rates(objects, readings, ns, selector, name).await
        }
        ["apis", CUSTOM_GROUP, CUSTOM_VERSION, "namespaces", _, "pods", _, metric] => Err(ApiError::NotFound {
            resource: format!("pods/{metric}"),
            group: CUSTOM_GROUP,
            name: (*metric).to_string(),
        }),
        _ => Err(ApiError::NoRoute),
    }
}

/// The store's objects of `plural` in `ns` that `selector` selects (or the one named `name`), by name.
async fn selected(
    objects: &Objects,
    plural: &str,
    ns: Option<&str>,
    selector: Option<LabelSelector>,
    name: Option<&str>,
) -> Result<HashMap<(String, String), Value>, ApiError> {
    let def = resources::find("", "v1", plural).ok_or(ApiError::NoRoute)?;
    let items = match name {
        Some(name) => match objects.get(def, ns, name).await {
            Ok(object) => vec![object],
            Err(ApiError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        },
        None => objects.list(def, ns, &ListOptions { labels: selector, ..ListOptions::default() }).await?.items,
    };
    Ok(items
        .into_iter()
        .map(|o| {
            let key = |field: &str| o["metadata"][field].as_str().unwrap_or_default().to_string();
            ((key("namespace"), key("name")), o)
        })
        .collect())
}

fn list(kind: &str, group_version: &str, mut items: Vec<Value>) -> Value {
    items.sort_by(|a, b| {
        let key = |o: &Value| {
            (o["metadata"]["namespace"].as_str().map(str::to_owned), o["metadata"]["name"].as_str().map(str::to_owned))
        };
        key(a).cmp(&key(b))
    });
    json!({"kind": kind, "apiVersion": group_version, "metadata": {}, "items": items})
}

async fn node_list(
    objects: &Objects,
    readings: &Readings,
    selector: Option<LabelSelector>,
    name: Option<&str>,
) -> Result<Value, ApiError> {
    let nodes = selected(objects, "nodes", None, selector, name).await?;
    let items: Vec<Value> = readings
        .nodes()
        .iter()
        .filter_map(|usage| {
            let node = nodes.get(&(String::new(), usage.name.clone()))?;
            Some(metrics_api::node_metrics(usage, &node["metadata"]["labels"]))
        })
        .collect();
    one_or_list(items, name.map(str::to_string), "nodemetrics", "NodeMetricsList")
}

async fn pod_list(
    objects: &Objects,
    readings: &Readings,
    ns: Option<&str>,
    selector: Option<LabelSelector>,
    name: Option<&str>,
) -> Result<Value, ApiError> {
    let pods = selected(objects, "pods", ns, selector, name).await?;
    let items: Vec<Value> = readings
        .pods()
        .iter()
        .filter_map(|usage| {
            let pod = pods.get(&(usage.pod.namespace.clone(), usage.pod.name.clone()))?;
            (pod["metadata"]["uid"] == usage.pod.uid.as_str())
                .then(|| metrics_api::pod_metrics(usage, &pod["metadata"]["labels"]))
        })
        .collect();
    // metrics-server names a missing pod by namespace and name.
    let name = name.map(|name| format!("{}/{name}", ns.unwrap_or_default()));
    one_or_list(items, name, "podmetrics", "PodMetricsList")
}

/// The single object asked for by name (404 as metrics-server words it: `podmetrics.metrics.k8s.io
/// "default/web" not found`), or the list.
fn one_or_list(mut items: Vec<Value>, name: Option<String>, kind: &str, list_kind: &str) -> Result<Value, ApiError> {
    match name {
        Some(name) => items.pop().ok_or_else(|| ApiError::NotFound {
            resource: format!("{kind}.{METRICS_GROUP}"),
            group: METRICS_GROUP,
            name,
        }),
        None => Ok(list(list_kind, &format!("{METRICS_GROUP}/{METRICS_VERSION}"), items)),
    }
}

async fn http_rates(
    objects: &Objects,
    readings: &Readings,
    ns: &str,
    selector: Option<LabelSelector>,
    name: Option<&str>,
) -> Result<Value, ApiError> {
    let pods = selected(objects, "pods", Some(ns), selector, name).await?;
    let forwarded = readings.forwarded();
    let items: Vec<Value> = readings
        .pods()
        .iter()
        .filter_map(|usage| {
            let pod = pods.get(&(usage.pod.namespace.clone(), usage.pod.name.clone()))?;
            if pod["metadata"]["uid"] != usage.pod.uid.as_str() {
                return None;
            }
            let address = pod["status"]["podIP"].as_str().unwrap_or_default();
            metrics_api::http_rate_value(usage, forwarded.get(address).copied())
        })
        .collect();
    if let Some(name) = name
        && items.is_empty()
    {
        return Err(ApiError::NotFound {
            resource: format!("pods/{HTTP_REQUESTS_PER_SECOND}"),
            group: CUSTOM_GROUP,
            name: name.to_string(),
        });
    }
    Ok(list("MetricValueList", &format!("{CUSTOM_GROUP}/{CUSTOM_VERSION}"), items))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use skiff_api::stats::{
        ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, UserDefinedMetric,
    };

    use super::*;
    use crate::objects::WriteOptions;

    fn summary(time: &str, pods: &[(&str, &str, u64, Option<f64>)]) -> Summary {
        let container = |cpu: u64, requests: Option<f64>| ContainerStats {
            name: "app".into(),
            start_time: "2026-12-07T10:00:00Z".into(),
            cpu: Some(CpuStats { time: time.into(), usage_core_nano_seconds: cpu }),
            memory: Some(MemoryStats { time: time.into(), working_set_bytes: 1 << 20 }),
            user_defined_metrics: requests
                .map(|value| UserDefinedMetric {
                    name: skiff_api::stats::HTTP_REQUESTS.into(),
                    kind: "cumulative".into(),
                    units: "requests".into(),
                    time: time.into(),
                    value,
                })
                .into_iter()
                .collect(),
        };
        Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats { time: time.into(), usage_core_nano_seconds: 0 }),
                memory: Some(MemoryStats { time: time.into(), working_set_bytes: 1 << 30 }),
            },
            pods: pods
                .iter()
                .map(|(name, uid, cpu, requests)| PodStats {
                    pod_ref: PodReference { name: (*name).into(), namespace: "default".into(), uid: (*uid).into() },
                    containers: vec![container(*cpu, *requests)],
                })
                .collect(),
            forwarded: None,
        }
    }

    /// Answers come from the readings, for the pods the store has (by uid) and the selector selects.
    #[tokio::test]
    async fn answers_join_readings_with_the_selected_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        crate::lifecycle::bootstrap(&objects).await.unwrap();
        let pods = resources::find("", "v1", "pods").unwrap();
        let mut uids = HashMap::new();
        for (name, app) in [("web", "shop"), ("db", "store")] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
                             "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}});
            let written = objects.create(pods, Some("default"), pod, &WriteOptions::default()).await.unwrap();
            uids.insert(name, written.object["metadata"]["uid"].as_str().unwrap().to_string());
        }
        let readings = Readings::default();
        readings.record("n1", summary("2026-12-07T10:00:10Z", &[("web", &uids["web"], 0, Some(0.0))]));
        readings.record(
            "n1",
            summary(
                "2026-12-07T10:00:20Z",
                &[
                    ("web", &uids["web"], 2_000_000_000, Some(150.0)),
                    ("db", &uids["db"], 0, None),
                    ("gone", "old", 0, None),
                ],
            ),
        );
        let get = |path: &'static str, query: Option<&'static str>| serve(&objects, &readings, path, query);

        let list = get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods", None).await.unwrap();
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["db", "web"], "a pod the store no longer has is not shown");
        let web = get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web", None).await.unwrap();
        assert_eq!(web["containers"][0]["usage"]["cpu"], "200m");
        assert_eq!(web["metadata"]["labels"], json!({"app": "shop"}));
        let selected = get("/apis/metrics.k8s.io/v1beta1/pods", Some("labelSelector=app%3Dstore")).await.unwrap();
        assert_eq!(selected["items"].as_array().unwrap().len(), 1);
        let missing = get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nothing", None).await.unwrap_err();
        assert_eq!(missing.to_string(), "podmetrics.metrics.k8s.io \"default/nothing\" not found");

        let rates =
            get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/http_requests_per_second", None)
                .await
                .unwrap();
        assert_eq!(rates["items"].as_array().unwrap().len(), 1, "only the pod that counts requests: {rates}");
        assert_eq!(rates["items"][0]["value"], "15");
        let other = get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/queue_length", None).await;
        assert!(matches!(other, Err(ApiError::NotFound { .. })));
        assert!(addressed("/apis/metrics.k8s.io/v1beta1/nodes") && !addressed("/apis/metrics.k8s.io.evil/v1/x"));
    }
}
