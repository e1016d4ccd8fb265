//! The HorizontalPodAutoscaler controller, as kube-controller-manager's: every sync period each HPA reads
//! its target through the `/scale` subresource, the pods of the Scale's selector and their metrics
//! (`metrics.k8s.io` for resources, `custom.metrics.k8s.io` for Pods metrics), lets [`algorithm`] compute the
//! replica count, writes it through `/scale`, and reports status, conditions and events with Kubernetes'
//! wording. The arithmetic is in [`algorithm`]; this module does the IO ([`metrics`] the metrics APIs).

pub mod algorithm;
mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_api::selectors::LabelSelector;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::algorithm::{
    ABLE_TO_SCALE, Behavior, Combined, Condition, History, Phase, PodSample, SCALING_ACTIVE, Tuning,
};
use crate::events::{Kind, Recorder};

/// Kubernetes' `--horizontal-pod-autoscaler-sync-period` default.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
/// A warning repeated within this long is not recorded again. client-go's event correlator folds such
/// repeats into one Event's count over the same 10 minutes; the recorder here only creates Events, so
/// without this every failing HPA would add two Events per sync period.
const EVENT_REPEAT_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed; the HPA is synced again at the next period.
    #[error("api request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The sync ran and reported why it could not scale in the HPA's status and events.
    #[error("{0}")]
    Reported(String),
}

/// Runs the HPA controller until `shutdown`, syncing each HPA every `sync_period`.
pub async fn run(client: kube::Client, sync_period: Duration, shutdown: CancellationToken) {
    let controller = Controller::new(Api::<HorizontalPodAutoscaler>::all(client.clone()), watcher::Config::default());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        client,
        hpas: controller.store(),
        tuning: Tuning::default(),
        sync_period,
        state: Mutex::new(HashMap::new()),
    });
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

struct Context {
    client: kube::Client,
    recorder: Recorder,
    /// The controller's cache of HPAs, to forget the state of deleted ones.
    hpas: Store<HorizontalPodAutoscaler>,
    tuning: Tuning,
    sync_period: Duration,
    /// Per HPA (`namespace/name`): its recommendation and scale history, and when its spec was last synced.
    state: Mutex<HashMap<String, State>>,
}

#[derive(Default)]
struct State {
    history: History,
    last_sync: Option<(Instant, Value)>,
    /// When each warning (reason, message) was last recorded.
    warned: HashMap<(&'static str, String), Instant>,
}

impl Context {
    fn with_history<T>(&self, key: &str, f: impl FnOnce(&mut History) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state.entry(key.to_string()).or_default().history)
    }

    /// Records a warning about `hpa`, unless the same one was recorded within [`EVENT_REPEAT_WINDOW`].
    fn warn(&self, hpa: &HorizontalPodAutoscaler, key: &str, reason: &'static str, message: String) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let warned = &mut state.entry(key.to_string()).or_default().warned;
            if !first_in_window(warned, reason, &message, Instant::now()) {
                return;
            }
        }
        self.recorder.record(hpa, Kind::Warning, reason, message);
    }
}

fn error_policy(hpa: Arc<HorizontalPodAutoscaler>, error: &Error, context: Arc<Context>) -> Action {
    tracing::debug!(hpa = %hpa.name_any(), %error, "hpa sync failed");
    Action::requeue(context.sync_period)
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, context: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
    // Like Kubernetes' per-item rate limiter: an HPA is synced once per period, not again on the status
    // write of its own sync; a change of its spec syncs it at once.
    let spec = serde_json::to_value(&hpa.spec).unwrap_or_default();
    {
        let mut state = context.state.lock().unwrap_or_else(|e| e.into_inner());
        // Kubernetes forgets a deleted HPA's history; so does this, at the next sync of any HPA.
        state.retain(|k, _| {
            let (namespace, name) = k.split_once('/').unwrap_or_default();
            *k == key || context.hpas.get(&ObjectRef::new(name).within(namespace)).is_some()
        });
        let entry = state.entry(key.clone()).or_default();
        if let Some((at, synced_spec)) = &entry.last_sync
            && *synced_spec == spec
            && at.elapsed() < context.sync_period
        {
            return Ok(Action::requeue(context.sync_period - at.elapsed()));
        }
        entry.last_sync = Some((Instant::now(), spec));
    }
    let span =
        tracing::debug_span!("reconcile", hpa = %hpa.name_any(), namespace = hpa.namespace().unwrap_or_default());
    sync(&hpa, &key, &context).instrument(span).await?;
    Ok(Action::requeue(context.sync_period))
}

/// Whether a warning is new: not recorded within [`EVENT_REPEAT_WINDOW`] before `now`. Remembers it.
fn first_in_window(
    warned: &mut HashMap<(&'static str, String), Instant>,
    reason: &'static str,
    message: &str,
    now: Instant,
) -> bool {
    warned.retain(|_, at| now.duration_since(*at) < EVENT_REPEAT_WINDOW);
    let key = (reason, message.to_string());
    if warned.contains_key(&key) {
        return false;
    }
    warned.insert(key, now);
    true
}

/// The status being built by one sync, starting from the HPA's own.
struct Report {
    conditions: Vec<HorizontalPodAutoscalerCondition>,
    now: Timestamp,
}

impl Report {
    /// `setCondition`: a condition keeps its transition time while its status stays.
    fn set(&mut self, condition: &Condition) {
        let status = if condition.status { "True" } else { "False" }.to_string();
        let transition = Some(Time(self.now));
        match self.conditions.iter_mut().find(|c| c.type_ == condition.kind) {
            Some(existing) => {
                if existing.status != status {
                    existing.last_transition_time = transition;
                }
                existing.status = status;
                existing.reason = Some(condition.reason.into());
                existing.message = Some(condition.message.clone());
            }
            None => self.conditions.push(HorizontalPodAutoscalerCondition {
                type_: condition.kind.into(),
                status,
                reason: Some(condition.reason.into()),
                message: Some(condition.message.clone()),
                last_transition_time: transition,
            }),
        }
    }
}

/// `reconcileAutoscaler`.
async fn sync(hpa: &HorizontalPodAutoscaler, key: &str, context: &Context) -> Result<(), Error> {
    let namespace = hpa.namespace().unwrap_or_default();
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = hpa.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut report = Report { conditions: status.conditions.clone().unwrap_or_default(), now };
    let target = &spec.scale_target_ref;
    let reference = format!("{}/{namespace}/{}", target.kind, target.name);

    let (scale_api, scale) = match get_scale(&context.client, &namespace, target).await {
        Ok(found) => found,
        Err(error) => {
            context.warn(hpa, key, "FailedGetScale", error.clone());
            report.set(&Condition::new(
                ABLE_TO_SCALE,
                false,
                "FailedGetScale",
                format!("the HPA controller was unable to get the target's current scale: {error}"),
            ));
            let current = status.current_replicas.unwrap_or(0);
            write_status(context, hpa, &report, current, status.desired_replicas, None, false).await?;
            return Err(Error::Reported(format!("failed to query scale subresource for {reference}: {error}")));
        }
    };
    report.set(&Condition::new(
        ABLE_TO_SCALE,
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    ));
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    context.with_history(key, |history| history.record_initial(current, now));
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let behavior = spec.behavior.as_ref().map(behavior_of);
    let mut statuses = None;
    let (desired, reason, rescale) = if current == 0 && min != 0 {
        report.set(&Condition::new(
            SCALING_ACTIVE,
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ));
        (0, String::new(), false)
    } else if current > max {
        (max, "Current number of replicas above Spec.MaxReplicas".to_string(), true)
    } else if current < min {
        (min, "Current number of replicas below Spec.MinReplicas".to_string(), true)
    } else {
        let metrics = spec.metrics.clone().unwrap_or_default();
        let computed = compute_replicas(context, hpa, key, &namespace, &scale, &metrics, now).await?;
        statuses = Some(computed.statuses);
        match computed.outcome {
            Combined::Failed { condition, error } => {
                report.set(&condition);
                write_status(context, hpa, &report, current, status.desired_replicas, statuses, false).await?;
                context.warn(hpa, key, "FailedComputeMetricsReplicas", error.clone());
                return Err(Error::Reported(format!(
                    "failed to compute desired number of replicas based on listed metrics for {reference}: {error}"
                )));
            }
            Combined::Scale { replicas, metric, active, invalid } => {
                if let Some(invalid) = invalid {
                    // Some metrics failed, the others still ask for more: Kubernetes scales and logs it.
                    tracing::debug!(hpa = %hpa.name_any(), error = invalid, "scaling on the metrics that worked");
                }
                report.set(&active);
                let proposed = replicas.max(0);
                let reason = if proposed > current {
                    format!("{metric} above target")
                } else if proposed < current {
                    "All metrics below target".to_string()
                } else {
                    String::new()
                };
                let sizes = algorithm::Sizes { current, desired: proposed, min, max };
                let normalized = context.with_history(key, |history| {
                    algorithm::normalize(history, behavior.as_ref(), sizes, &context.tuning, now)
                });
                report.set(&normalized.able_to_scale);
                report.set(&normalized.scaling_limited);
                (normalized.replicas, reason, normalized.replicas != current)
            }
        }
    };
    let statuses = statuses.unwrap_or_default();
    if !rescale {
        return write_status(context, hpa, &report, current, current, Some(statuses), false).await;
    }
    match update_scale(&scale_api, &target.name, scale, desired).await {
        Err(error) => {
            context.warn(hpa, key, "FailedRescale", format!("New size: {desired}; reason: {reason}; error: {error}"));
            report.set(&Condition::new(
                ABLE_TO_SCALE,
                false,
                "FailedUpdateScale",
                format!("the HPA controller was unable to update the target scale: {error}"),
            ));
            write_status(context, hpa, &report, current, status.desired_replicas, Some(statuses), false).await?;
            Err(Error::Reported(format!("failed to rescale {reference}: {error}")))
        }
        Ok(()) => {
            report.set(&Condition::new(
                ABLE_TO_SCALE,
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            ));
            context.recorder.record(
                hpa,
                Kind::Normal,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {reason}"),
            );
            context.with_history(key, |history| history.record_scale(behavior.as_ref(), current, desired, now));
            tracing::info!(hpa = %hpa.name_any(), current, desired, reason, "rescaled");
            write_status(context, hpa, &report, current, desired, Some(statuses), true).await
        }
    }
}

/// The target's Scale, found by its group-version and kind through discovery (Kubernetes' RESTMapper), and
/// the API to write it back through.
async fn get_scale(
    client: &kube::Client,
    namespace: &str,
    target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
) -> Result<(Api<DynamicObject>, Scale), String> {
    let api = scale_api(client, namespace, target).await?;
    let scale = api.get_scale(&target.name).await.map_err(|e| kube_message(&e, ""))?;
    Ok((api, scale))
}

async fn scale_api(
    client: &kube::Client,
    namespace: &str,
    target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
) -> Result<Api<DynamicObject>, String> {
    let api_version = target.api_version.clone().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|_| format!("no matches for kind \"{}\" in group \"{group}\"", target.kind))?;
    Ok(Api::namespaced_with(client.clone(), namespace, &resource))
}

/// Writes the new replica count through `/scale`, as Kubernetes does with an update of the Scale it read.
async fn update_scale(api: &Api<DynamicObject>, name: &str, mut scale: Scale, replicas: i32) -> Result<(), String> {
    scale.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    api.replace_scale(name, &PostParams::default(), &scale).await.map(|_| ()).map_err(|e| kube_message(&e, ""))
}

/// An API error as client-go words it: the Status message, or for an answer without one the generic text
/// of its code and what was asked (`(get pods.metrics.k8s.io)`).
pub(crate) fn kube_message(error: &kube::Error, asked: &str) -> String {
    let generic = |code: u16| match code {
        404 => Some("the server could not find the requested resource"),
        503 => Some("the server is currently unable to handle the request"),
        403 => Some("forbidden"),
        _ => None,
    };
    match error {
        kube::Error::Api(status) if !asked.is_empty() && generic(status.code).is_some() => {
            format!("{} ({asked})", generic(status.code).unwrap_or_default())
        }
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

struct Computed {
    outcome: Combined,
    statuses: Vec<Value>,
}

/// `computeReplicasForMetrics`: a proposal per metric, combined.
async fn compute_replicas(
    context: &Context,
    hpa: &HorizontalPodAutoscaler,
    key: &str,
    namespace: &str,
    scale: &Scale,
    metrics: &[MetricSpec],
    now: Timestamp,
) -> Result<Computed, Error> {
    let selector_text = scale.status.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    // `validateAndParseSelector`: an event, and ScalingActive=False with reason InvalidSelector.
    let invalid_selector = |event_reason: &'static str, error: String, message: String| {
        context.warn(hpa, key, event_reason, error.clone());
        let condition = Condition::new(SCALING_ACTIVE, false, "InvalidSelector", message);
        Computed { outcome: Combined::Failed { condition, error }, statuses: Vec::new() }
    };
    if selector_text.is_empty() {
        let message = "the HPA target's scale is missing a selector".to_string();
        return Ok(invalid_selector("SelectorRequired", "selector is required".into(), message));
    }
    if let Err(e) = LabelSelector::parse(&selector_text) {
        let message = format!("couldn't convert selector into a corresponding internal selector object: {e}");
        return Ok(invalid_selector("InvalidSelector", message.clone(), message));
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let pod_list = pods.list(&ListParams::default().labels(&selector_text)).await?;
    let samples: Vec<PodSample> = pod_list.items.iter().map(sample_of).collect();
    let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut fetcher = metrics::Fetcher::new(&context.client, namespace, &selector_text);
    let mut results = Vec::new();
    let mut statuses = Vec::new();
    for spec in metrics {
        let (result, status) =
            metrics::compute(&mut fetcher, spec, spec_replicas, &samples, &context.tuning, now).await;
        if let Err(failure) = &result {
            context.warn(hpa, key, failure.reason, failure.error.clone());
        }
        results.push(result);
        statuses.push(status);
    }
    let outcome = algorithm::combine(results, spec_replicas);
    Ok(Computed { outcome, statuses: statuses.into_iter().map(|s| s.unwrap_or(Value::Null)).collect() })
}

/// What the calculator needs of a pod.
fn sample_of(pod: &Pod) -> PodSample {
    let status = pod.status.clone().unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Pending") => Phase::Pending,
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Unknown,
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status == "True", c.last_transition_time.as_ref().map(|t| t.0).unwrap_or_default()));
    let spec = pod.spec.clone().unwrap_or_default();
    // Restartable init containers (sidecars) run beside the others and count as they do.
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers = spec
        .containers
        .iter()
        .chain(sidecars)
        .map(|c| algorithm::ContainerRequests {
            name: c.name.clone(),
            requests: c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .map(|requests| requests.iter().map(|(name, q)| (name.clone(), metrics::milli_value(&q.0))).collect())
                .unwrap_or_default(),
        })
        .collect();
    PodSample {
        name: pod.name_any(),
        phase,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        start_time: status.start_time.map(|t| t.0),
        ready,
        containers,
    }
}

/// The API's behavior (defaults filled in by the server) as the algorithm's.
fn behavior_of(behavior: &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior) -> Behavior {
    let rules = |rules: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>, up: bool| {
        let rules = rules.cloned().unwrap_or_default();
        algorithm::Rules {
            stabilization_window_seconds: rules.stabilization_window_seconds.or(up.then_some(0)),
            select: match rules.select_policy.as_deref() {
                Some("Min") => algorithm::Select::Min,
                Some("Disabled") => algorithm::Select::Disabled,
                _ => algorithm::Select::Max,
            },
            policies: rules
                .policies
                .unwrap_or_default()
                .iter()
                .map(|p| algorithm::Policy {
                    kind: if p.type_ == "Pods" { algorithm::PolicyKind::Pods } else { algorithm::PolicyKind::Percent },
                    value: p.value,
                    period_seconds: p.period_seconds,
                })
                .collect(),
        }
    };
    Behavior {
        scale_up: rules(behavior.scale_up.as_ref(), true),
        scale_down: rules(behavior.scale_down.as_ref(), false),
    }
}

/// `setStatus` and `updateStatusIfNeeded`: writes the status when it changed, through `/status`.
async fn write_status(
    context: &Context,
    hpa: &HorizontalPodAutoscaler,
    report: &Report,
    current: i32,
    desired: i32,
    statuses: Option<Vec<Value>>,
    rescaled: bool,
) -> Result<(), Error> {
    let old = hpa.status.clone().unwrap_or_default();
    let mut status = serde_json::to_value(&old).unwrap_or_else(|_| json!({}));
    status["currentReplicas"] = json!(current);
    status["desiredReplicas"] = json!(desired);
    status["conditions"] = serde_json::to_value(&report.conditions).unwrap_or(Value::Null);
    if let Some(statuses) = statuses {
        let kept: Vec<Value> = statuses.into_iter().filter(|s| !s.is_null()).collect();
        status["currentMetrics"] = if kept.is_empty() { Value::Null } else { Value::Array(kept) };
    }
    if rescaled {
        status["lastScaleTime"] = json!(skiff_api::format_time(report.now));
    }
    if let Some(map) = status.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    if status == serde_json::to_value(&old).unwrap_or_default() {
        return Ok(());
    }
    let mut updated = hpa.clone();
    updated.status = serde_json::from_value(status).ok();
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(context.client.clone(), &hpa.namespace().unwrap_or_default());
    api.replace_status(&hpa.name_any(), &PostParams::default(), &updated).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_stays() {
        let first: Timestamp = "2026-12-07T00:00:00Z".parse().unwrap();
        let mut report = Report { conditions: Vec::new(), now: first };
        report.set(&Condition::new(ABLE_TO_SCALE, true, "SucceededGetScale", "a"));
        report.set(&Condition::new(SCALING_ACTIVE, false, "FailedGetResourceMetric", "b"));
        report.now = "2026-12-07T00:01:00Z".parse().unwrap();
        report.set(&Condition::new(ABLE_TO_SCALE, true, "ReadyForNewScale", "c"));
        report.set(&Condition::new(SCALING_ACTIVE, true, "ValidMetricFound", "d"));
        let types: Vec<&str> = report.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["AbleToScale", "ScalingActive"]);
        assert_eq!(report.conditions[0].last_transition_time, Some(Time(first)));
        assert_eq!(report.conditions[0].reason.as_deref(), Some("ReadyForNewScale"));
        assert_eq!(report.conditions[1].last_transition_time, Some(Time(report.now)));
        assert_eq!(report.conditions[1].status, "True");
    }

    #[test]
    fn a_repeated_warning_is_recorded_once_per_window() {
        let mut warned = HashMap::new();
        let start = Instant::now();
        assert!(first_in_window(&mut warned, "FailedGetResourceMetric", "no metrics", start));
        assert!(!first_in_window(
            &mut warned,
            "FailedGetResourceMetric",
            "no metrics",
            start + Duration::from_secs(15)
        ));
        assert!(first_in_window(&mut warned, "FailedGetResourceMetric", "other", start + Duration::from_secs(15)));
        assert!(first_in_window(&mut warned, "FailedGetResourceMetric", "no metrics", start + EVENT_REPEAT_WINDOW));
    }

    #[test]
    fn missing_apis_are_worded_as_client_go_words_them() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "404 page not found".into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            kube_message(&status(404), "get pods.metrics.k8s.io"),
            "the server could not find the requested resource (get pods.metrics.k8s.io)"
        );
        assert_eq!(
            kube_message(&status(503), "get pods.metrics.k8s.io"),
            "the server is currently unable to handle the request (get pods.metrics.k8s.io)"
        );
        assert_eq!(kube_message(&status(409), ""), "404 page not found");
    }

    #[test]
    fn behaviors_map_to_the_algorithm() {
        let behavior: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior = serde_json::from_value(json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
            "scaleDown": {"selectPolicy": "Min", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]},
        }))
        .unwrap();
        let mapped = behavior_of(&behavior);
        assert_eq!(mapped.scale_up.policies[0].kind, algorithm::PolicyKind::Pods);
        assert_eq!(mapped.scale_down.stabilization_window_seconds, None);
        assert_eq!(mapped.scale_down.select, algorithm::Select::Min);
    }
}
