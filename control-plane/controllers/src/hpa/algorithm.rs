//! The HorizontalPodAutoscaler's arithmetic on plain data, as Kubernetes' `pkg/controller/podautoscaler`
//! computes it: replica proposals from pod metrics (`replica_calculator.go`: the tolerance, the ready-pod
//! rule, missing metrics assumed at 0% on the way up and 100% on the way down), the combination of
//! several metrics (the largest proposal), and the normalization of a proposal (`horizontal.go`:
//! stabilization windows over the recommendation history, scale-up/down policies over the scale events of
//! their periods, min/max clamps) with the conditions each step reports. Time comes in as an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

/// The controller's tunables, Kubernetes' kube-controller-manager flags with their defaults.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// `--horizontal-pod-autoscaler-tolerance`: a usage ratio this close to 1 changes nothing.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`: after a pod starts, its CPU samples count
    /// only once it is ready and a whole metric window has passed since.
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`: a pod not ready this soon after its start
    /// is taken for one that has never been ready.
    pub initial_readiness_delay: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the scale-down window when a behavior does
    /// not set one.
    pub downscale_stabilization: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// What the calculator needs of one pod the target's selector matches.
#[derive(Clone, Debug)]
pub struct PodSample {
    pub name: String,
    pub phase: Phase,
    pub deleting: bool,
    pub start_time: Option<Timestamp>,
    /// The Ready condition: whether it is True, and when it last changed.
    pub ready: Option<(bool, Timestamp)>,
    /// Each container's requests in milli-units (cpu in millicores, memory in millibytes as Kubernetes'
    /// `MilliValue`), regular containers and restartable (sidecar) init containers.
    pub containers: Vec<ContainerRequests>,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerRequests {
    pub name: String,
    pub requests: BTreeMap<String, i64>,
}

/// One pod's value of a metric, in milli-units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodMetric {
    pub timestamp: Timestamp,
    pub window: Duration,
    pub value: i64,
}

/// Metrics by pod name.
pub type PodMetrics = BTreeMap<String, PodMetric>;

/// What one sync saw: the pods the target's selector matches and their metrics, at `now`.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub pods: &'a [PodSample],
    pub metrics: PodMetrics,
    pub now: Timestamp,
}

/// Why no replica count could be computed from a metric; the messages are Kubernetes'.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalcError {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoReadyMetrics,
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest { resource: String, container: String, pod: String },
    #[error("no metrics returned matched known pods")]
    NoMatchingMetrics,
}

/// A utilization proposal: the replica count, and the status to report (percent and raw average).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtilizationProposal {
    pub replicas: i32,
    pub utilization: i32,
    pub raw_average: i64,
}

/// The pods in Kubernetes' four groups (`groupPods`).
#[derive(Debug, Default, PartialEq)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

/// Sorts pods: deleted and failed ones are ignored, pending ones unready, ones without a metric missing;
/// for cpu, a pod is unready when its sample may still include its start-up (within the initialization
/// period: not ready, or no whole window since it became ready) or when it has never been ready.
fn group_pods(
    pods: &[PodSample],
    metrics: &PodMetrics,
    resource: Option<&str>,
    tuning: &Tuning,
    now: Timestamp,
) -> Groups {
    let mut groups = Groups::default();
    for pod in pods {
        if pod.deleting || pod.phase == Phase::Failed {
            groups.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == Phase::Pending {
            groups.unready.insert(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            groups.missing.insert(pod.name.clone());
            continue;
        };
        if resource == Some("cpu") {
            let unready = match (pod.ready, pod.start_time) {
                (Some((ready, transition)), Some(start)) => {
                    if start + tuning.cpu_initialization_period > now {
                        !ready || metric.timestamp < transition + metric.window
                    } else {
                        !ready && start + tuning.initial_readiness_delay > transition
                    }
                }
                _ => true,
            };
            if unready {
                groups.unready.insert(pod.name.clone());
                continue;
            }
        }
        groups.ready += 1;
    }
    groups
}

/// Each pod's total request of `resource` (over `container` only when given), or Kubernetes' error for a
/// container without one.
fn pod_requests(
    pods: &[PodSample],
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, i64>, CalcError> {
    let mut requests = BTreeMap::new();
    for pod in pods {
        let mut sum = 0;
        for c in pod.containers.iter().filter(|c| container.is_none_or(|name| name == c.name)) {
            match c.requests.get(resource) {
                Some(request) => sum += request,
                None => {
                    return Err(CalcError::MissingRequest {
                        resource: resource.into(),
                        container: c.name.clone(),
                        pod: pod.name.clone(),
                    });
                }
            }
        }
        requests.insert(pod.name.clone(), sum);
    }
    Ok(requests)
}

/// `GetResourceUtilizationRatio`: usage over requests of the pods with both, as the ratio to the target,
/// the utilization in whole percent and the average raw usage.
fn utilization_ratio(
    metrics: &PodMetrics,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut used, mut requested, mut entries) = (0i64, 0i64, 0i64);
    for (pod, metric) in metrics {
        // A metric of a pod with no known request is extraneous.
        let Some(request) = requests.get(pod) else { continue };
        used += metric.value;
        requested += request;
        entries += 1;
    }
    if requested == 0 {
        return Err(CalcError::NoMatchingMetrics);
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((f64::from(utilization) / f64::from(target), utilization, used / entries))
}

fn within_tolerance(ratio: f64, tuning: &Tuning) -> bool {
    (1.0 - ratio).abs() <= tuning.tolerance
}

/// `GetResourceReplicas`: the replicas a resource utilization target asks for.
pub fn resource_utilization_replicas(
    current: i32,
    target: i32,
    resource: &str,
    container: Option<&str>,
    observed: Observation<'_>,
    tuning: &Tuning,
) -> Result<UtilizationProposal, CalcError> {
    let Observation { pods, mut metrics, now } = observed;
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let groups = group_pods(pods, &metrics, Some(resource), tuning, now);
    metrics.retain(|pod, _| !groups.ignored.contains(pod) && !groups.unready.contains(pod));
    if metrics.is_empty() {
        return Err(CalcError::NoReadyMetrics);
    }
    let requests = pod_requests(pods, resource, container)?;
    let (ratio, utilization, raw_average) = utilization_ratio(&metrics, &requests, target)?;
    let keep = UtilizationProposal { replicas: current, utilization, raw_average };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if within_tolerance(ratio, tuning) {
            return Ok(keep);
        }
        return Ok(UtilizationProposal { replicas: (ratio * groups.ready as f64).ceil() as i32, ..keep });
    }
    if !groups.missing.is_empty() {
        // Down: a pod without a metric is taken to use all its request (or the target above 100%); up:
        // nothing. Either way the guess dampens the move.
        let fallback = i64::from(target.max(100));
        for pod in &groups.missing {
            let value = if ratio < 1.0 {
                requests.get(pod).copied().unwrap_or(0) * fallback / 100
            } else if ratio > 1.0 {
                0
            } else {
                continue;
            };
            metrics.insert(pod.clone(), PodMetric { timestamp: now, window: Duration::ZERO, value });
        }
    }
    if scale_up_with_unready {
        for pod in &groups.unready {
            metrics.insert(pod.clone(), PodMetric { timestamp: now, window: Duration::ZERO, value: 0 });
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    decide_with_assumptions(current, ratio, new_ratio, metrics.len(), tuning)
        .map_or(Ok(keep), |replicas| Ok(UtilizationProposal { replicas, ..keep }))
}

/// After the assumptions for missing and unready pods: the new count, or None to keep the current one
/// when the change is within tolerance, the direction flipped, or the pod count flips it.
fn decide_with_assumptions(current: i32, ratio: f64, new_ratio: f64, counted: usize, tuning: &Tuning) -> Option<i32> {
    if within_tolerance(new_ratio, tuning) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return None;
    }
    let replicas = (new_ratio * counted as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return None;
    }
    Some(replicas)
}

/// `calcPlainMetricReplicas`: the replicas an average value target asks for (a resource's AverageValue,
/// with `resource` set so cpu readiness rules apply, or a Pods metric). Returns the count and the average.
pub fn average_value_replicas(
    current: i32,
    target: i64,
    resource: Option<&str>,
    observed: Observation<'_>,
    tuning: &Tuning,
) -> Result<(i32, i64), CalcError> {
    let Observation { pods, mut metrics, now } = observed;
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let groups = group_pods(pods, &metrics, resource, tuning, now);
    metrics.retain(|pod, _| !groups.ignored.contains(pod) && !groups.unready.contains(pod));
    if metrics.is_empty() {
        return Err(CalcError::NoReadyMetrics);
    }
    let usage_ratio = |metrics: &PodMetrics| {
        let average = metrics.values().map(|m| m.value).sum::<i64>() / metrics.len() as i64;
        (average as f64 / target as f64, average)
    };
    let (ratio, usage) = usage_ratio(&metrics);
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if within_tolerance(ratio, tuning) {
            return Ok((current, usage));
        }
        return Ok(((ratio * groups.ready as f64).ceil() as i32, usage));
    }
    for pod in &groups.missing {
        let value = if ratio < 1.0 { target } else { 0 };
        metrics.insert(pod.clone(), PodMetric { timestamp: now, window: Duration::ZERO, value });
    }
    if scale_up_with_unready {
        for pod in &groups.unready {
            metrics.insert(pod.clone(), PodMetric { timestamp: now, window: Duration::ZERO, value: 0 });
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics);
    Ok((decide_with_assumptions(current, ratio, new_ratio, metrics.len(), tuning).unwrap_or(current), usage))
}

// ---------------------------------------------------------------------------------------------------
// Conditions.

/// One of the three conditions the controller reports, before its transition time is merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub fn new(kind: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { kind, status, reason, message: message.into() }
    }
}

pub const ABLE_TO_SCALE: &str = "AbleToScale";
pub const SCALING_ACTIVE: &str = "ScalingActive";
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// A failed metric: the reason its ScalingActive condition and event carry, and the error.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFailure {
    pub reason: &'static str,
    pub error: String,
}

impl MetricFailure {
    /// The ScalingActive=False condition Kubernetes sets for it.
    pub fn condition(&self) -> Condition {
        Condition::new(
            SCALING_ACTIVE,
            false,
            self.reason,
            format!("the HPA was unable to compute the replica count: {}", self.error),
        )
    }
}

/// A metric's proposal: a replica count and what to call the metric in events.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    pub metric: String,
}

/// The outcome of all metrics (`computeReplicasForMetrics`).
#[derive(Clone, Debug, PartialEq)]
pub enum Combined {
    /// Scale on `replicas` because of `metric`; `invalid` is the error about the failed ones, if any.
    Scale { replicas: i32, metric: String, active: Condition, invalid: Option<String> },
    /// No decision: every metric failed, or some did and the rest would scale down.
    Failed { condition: Condition, error: String },
}

/// The largest proposal wins. A failed metric blocks a scale down (it might have asked for more), and the
/// first failure names the condition.
pub fn combine(results: Vec<Result<Proposal, MetricFailure>>, spec_replicas: i32) -> Combined {
    let total = results.len();
    let mut best: Option<Proposal> = None;
    let mut failures: Vec<MetricFailure> = Vec::new();
    for result in results {
        match result {
            Err(failure) => failures.push(failure),
            Ok(proposal) => {
                if best.as_ref().is_none_or(|b| b.replicas == 0 || proposal.replicas > b.replicas) {
                    best = Some(proposal);
                }
            }
        }
    }
    let invalid = failures.first().map(|first| {
        format!("invalid metrics ({} invalid out of {total}), first error is: {}", failures.len(), first.error)
    });
    let replicas = best.as_ref().map_or(0, |b| b.replicas);
    if let Some(first) = failures.first()
        && (failures.len() >= total || replicas < spec_replicas)
    {
        return Combined::Failed { condition: first.condition(), error: invalid.unwrap_or_default() };
    }
    let metric = best.map(|b| b.metric).unwrap_or_default();
    let active = Condition::new(
        SCALING_ACTIVE,
        true,
        "ValidMetricFound",
        format!("the HPA was able to successfully calculate a replica count from {metric}"),
    );
    Combined::Scale { replicas, metric, active, invalid }
}

// ---------------------------------------------------------------------------------------------------
// Normalization.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period_seconds: i32,
}

/// One direction's rules of a behavior, after the API's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// None for scale-down means the controller's `downscale_stabilization`.
    pub stabilization_window_seconds: Option<i32>,
    pub select: Select,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
}

/// A past scale of the target, kept for the policies' periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: Timestamp,
    outdated: bool,
}

/// What the controller remembers of one HPA between syncs (Kubernetes keeps the same, in memory).
#[derive(Clone, Debug, Default)]
pub struct History {
    recommendations: Vec<(i32, Timestamp)>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

impl History {
    /// `recordInitialRecommendation`: the first sync remembers the current size as a recommendation, so a
    /// restart does not scale down at once.
    pub fn record_initial(&mut self, current: i32, now: Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push((current, now));
        }
    }

    /// `storeScaleEvent`: remembers a rescale for the policies (only behaviors use them), reusing the slot
    /// of an event older than the longest policy period.
    pub fn record_scale(&mut self, behavior: Option<&Behavior>, previous: i32, new: i32, now: Timestamp) {
        let Some(behavior) = behavior else { return };
        let (events, rules, change) = if new > previous {
            (&mut self.scale_up_events, &behavior.scale_up, new - previous)
        } else {
            (&mut self.scale_down_events, &behavior.scale_down, previous - new)
        };
        let longest = rules.policies.iter().map(|p| p.period_seconds).max().unwrap_or(0);
        let cutoff = now - Duration::from_secs(longest.max(0) as u64);
        let mut reuse = None;
        for (i, event) in events.iter_mut().enumerate() {
            if event.at < cutoff {
                event.outdated = true;
            }
            if event.outdated {
                reuse = Some(i);
            }
        }
        let event = ScaleEvent { change, at: now, outdated: false };
        match reuse {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

/// The sizes one normalization works with (Kubernetes' `NormalizationArg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub current: i32,
    /// What the metrics proposed.
    pub desired: i32,
    pub min: i32,
    pub max: i32,
}

/// The normalized count and the AbleToScale and ScalingLimited conditions that explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    pub able_to_scale: Condition,
    pub scaling_limited: Condition,
}

fn ready_for_new_scale() -> Condition {
    Condition::new(ABLE_TO_SCALE, true, "ReadyForNewScale", "recommended size matches current size")
}

/// Takes the metrics' proposal to the count to scale to: `normalizeDesiredReplicas` without a behavior,
/// `normalizeDesiredReplicasWithBehaviors` with one.
pub fn normalize(
    history: &mut History,
    behavior: Option<&Behavior>,
    sizes: Sizes,
    tuning: &Tuning,
    now: Timestamp,
) -> Normalized {
    match behavior {
        None => normalize_plain(history, sizes, tuning, now),
        Some(behavior) => normalize_with_behavior(history, behavior, sizes, tuning, now),
    }
}

fn limited(stabilized: i32, replicas: i32, reason: &'static str, message: &str) -> Condition {
    Condition::new(SCALING_LIMITED, replicas != stabilized, reason, message)
}

fn normalize_plain(history: &mut History, sizes: Sizes, tuning: &Tuning, now: Timestamp) -> Normalized {
    let Sizes { current, desired, min, max } = sizes;
    // Scale-down stabilization: the highest recommendation of the window.
    let cutoff = now - tuning.downscale_stabilization;
    let mut stabilized = desired;
    let mut old = None;
    for (i, (recommendation, at)) in history.recommendations.iter().enumerate() {
        if *at < cutoff {
            old = Some(i);
        } else if *recommendation > stabilized {
            stabilized = *recommendation;
        }
    }
    match old {
        Some(i) => history.recommendations[i] = (desired, now),
        None => history.recommendations.push((desired, now)),
    }
    let able_to_scale = if stabilized != desired {
        Condition::new(
            ABLE_TO_SCALE,
            true,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    } else {
        ready_for_new_scale()
    };
    // Without a behavior, a scale up is at most to twice the current size, or 4.
    let scale_up_limit = (2.0 * f64::from(current)).max(4.0) as i32;
    let (maximum, (reason, message)) = if max > scale_up_limit {
        (scale_up_limit, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
    } else {
        (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
    };
    let (replicas, reason, message) = if stabilized < min {
        (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
    } else if stabilized > maximum {
        (maximum, reason, message)
    } else {
        (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range")
    };
    Normalized { replicas, able_to_scale, scaling_limited: limited(stabilized, replicas, reason, message) }
}

fn normalize_with_behavior(
    history: &mut History,
    behavior: &Behavior,
    sizes: Sizes,
    tuning: &Tuning,
    now: Timestamp,
) -> Normalized {
    let Sizes { current, desired, min, max } = sizes;
    let up_window = behavior.scale_up.stabilization_window_seconds.unwrap_or(0);
    let down_window =
        behavior.scale_down.stabilization_window_seconds.unwrap_or(tuning.downscale_stabilization.as_secs() as i32);
    let up_cutoff = now - Duration::from_secs(up_window.max(0) as u64);
    let down_cutoff = now - Duration::from_secs(down_window.max(0) as u64);
    // A scale up goes only as high as every recommendation of its window agrees; a scale down only as low.
    let (mut up, mut down) = (desired, desired);
    let mut old = None;
    for (i, (recommendation, at)) in history.recommendations.iter().enumerate() {
        if *at > up_cutoff {
            up = up.min(*recommendation);
        }
        if *at > down_cutoff {
            down = down.max(*recommendation);
        }
        if *at < up_cutoff && *at < down_cutoff {
            old = Some(i);
        }
    }
    let stabilized = current.max(up).min(down);
    match old {
        Some(i) => history.recommendations[i] = (desired, now),
        None => history.recommendations.push((desired, now)),
    }
    let able_to_scale = if stabilized != desired {
        if desired >= current {
            Condition::new(
                ABLE_TO_SCALE,
                true,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            Condition::new(
                ABLE_TO_SCALE,
                true,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        }
    } else {
        ready_for_new_scale()
    };
    let within = (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range");
    let (replicas, reason, message) = if stabilized > current {
        let limit = scale_up_limit(current, history, &behavior.scale_up, now).max(current);
        let (maximum, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if stabilized > maximum { (maximum, reason, message) } else { within }
    } else if stabilized < current {
        let limit = scale_down_limit(current, history, &behavior.scale_down, now).min(current);
        let (minimum, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if stabilized < minimum { (minimum, reason, message) } else { within }
    } else {
        within
    };
    Normalized { replicas, able_to_scale, scaling_limited: limited(stabilized, replicas, reason, message) }
}

/// `getReplicasChangePerPeriod`: the replicas events of the last `period_seconds` added (or removed).
fn change_in_period(events: &[ScaleEvent], period_seconds: i32, now: Timestamp) -> i32 {
    let cutoff = now - Duration::from_secs(period_seconds.max(0) as u64);
    events.iter().filter(|e| e.at > cutoff).map(|e| e.change).sum()
}

/// The replicas at the start of a policy's period: the current ones less what the period changed.
fn period_start(current: i32, history: &History, period_seconds: i32, now: Timestamp) -> i32 {
    current - change_in_period(&history.scale_up_events, period_seconds, now)
        + change_in_period(&history.scale_down_events, period_seconds, now)
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(current: i32, history: &History, rules: &Rules, now: Timestamp) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => std::cmp::min,
        Select::Max => std::cmp::max,
    };
    let mut result = if rules.select == Select::Min { i32::MAX } else { i32::MIN };
    for policy in &rules.policies {
        let start = period_start(current, history, policy.period_seconds, now);
        let proposed = match policy.kind {
            PolicyKind::Pods => start + policy.value,
            // Rounded up, or a small target could never grow.
            PolicyKind::Percent => (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`.
fn scale_down_limit(current: i32, history: &History, rules: &Rules, now: Timestamp) -> i32 {
    // For scaling down the smallest change is the largest count.
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => std::cmp::max,
        Select::Max => std::cmp::min,
    };
    let mut result = if rules.select == Select::Min { i32::MIN } else { i32::MAX };
    for policy in &rules.policies {
        let start = period_start(current, history, policy.period_seconds, now);
        let proposed = match policy.kind {
            PolicyKind::Pods => start - policy.value,
            PolicyKind::Percent => (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    const NOW: i64 = 10_000;

    /// A running pod started long ago, ready for long, requesting `cpu` millicores.
    fn pod(name: &str, cpu: i64) -> PodSample {
        PodSample {
            name: name.into(),
            phase: Phase::Running,
            deleting: false,
            start_time: Some(at(0)),
            ready: Some((true, at(60))),
            containers: vec![ContainerRequests {
                name: "app".into(),
                requests: BTreeMap::from([("cpu".to_string(), cpu), ("memory".to_string(), 128 << 20 << 10)]),
            }],
        }
    }

    fn metrics(values: &[(&str, i64)]) -> PodMetrics {
        values
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    PodMetric { timestamp: at(NOW - 10), window: Duration::from_secs(30), value: *value },
                )
            })
            .collect()
    }

    fn cpu(
        current: i32,
        target: i32,
        pods: &[PodSample],
        values: &[(&str, i64)],
    ) -> Result<UtilizationProposal, CalcError> {
        let observed = Observation { pods, metrics: metrics(values), now: at(NOW) };
        resource_utilization_replicas(current, target, "cpu", None, observed, &Tuning::default())
    }

    #[test]
    fn utilization_scales_by_the_ratio_rounding_up() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let proposal = cpu(3, 50, &pods, &[("a", 90), ("b", 90), ("c", 90)]).unwrap();
        assert_eq!(proposal, UtilizationProposal { replicas: 6, utilization: 90, raw_average: 90 });
        // 20% of a 50% target: 3 * 0.4 = 1.2, rounded up.
        assert_eq!(cpu(3, 50, &pods, &[("a", 20), ("b", 20), ("c", 20)]).unwrap().replicas, 2);
    }

    #[test]
    fn a_ratio_within_the_tolerance_keeps_the_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 54% of 50% is a ratio of 1.08: inside 10%.
        assert_eq!(cpu(2, 50, &pods, &[("a", 54), ("b", 54)]).unwrap().replicas, 2);
        assert_eq!(cpu(2, 50, &pods, &[("a", 46), ("b", 46)]).unwrap().replicas, 2);
        // 56% is outside.
        assert_eq!(cpu(2, 50, &pods, &[("a", 56), ("b", 56)]).unwrap().replicas, 3);
    }

    #[test]
    fn missing_metrics_count_as_nothing_going_up_and_everything_going_down() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100), pod("d", 100)];
        // Up: three pods at 100% and a missing one taken at 0%: 75% over a 50% target, 4 * 1.5 = 6.
        assert_eq!(cpu(4, 50, &pods, &[("a", 100), ("b", 100), ("c", 100)]).unwrap().replicas, 6);
        // Down: three at 10% and a missing one at 100%: 32% → 4 * 0.64 = 2.56 → 3.
        assert_eq!(cpu(4, 50, &pods, &[("a", 10), ("b", 10), ("c", 10)]).unwrap().replicas, 3);
        // Down where the missing pod's 100% turns the ratio up: no change.
        assert_eq!(cpu(2, 50, &pods[..2], &[("a", 40)]).unwrap().replicas, 2);
    }

    #[test]
    fn unready_pods_count_as_nothing_on_a_scale_up_only() {
        let mut starting = pod("c", 100);
        starting.start_time = Some(at(NOW - 60));
        starting.ready = Some((false, at(NOW - 60)));
        let pods = [pod("a", 100), pod("b", 100), starting];
        // Up: the unready pod's sample is dropped and taken at 0: (100+100+0)/300 = 66% → 3 * 1.33 = 4.
        assert_eq!(cpu(3, 50, &pods, &[("a", 100), ("b", 100), ("c", 100)]).unwrap().replicas, 4);
        // Down: unready pods are left out altogether: 2 ready pods at 10% → ceil(2 * 0.2) = 1.
        assert_eq!(cpu(3, 50, &pods, &[("a", 10), ("b", 10), ("c", 100)]).unwrap().replicas, 1);
    }

    #[test]
    fn the_cpu_readiness_rules_follow_kubernetes() {
        let tuning = Tuning::default();
        let now = at(NOW);
        let sample = |pod: PodSample, metric_at: i64| {
            let metrics = PodMetrics::from([(
                pod.name.clone(),
                PodMetric { timestamp: at(metric_at), window: Duration::from_secs(30), value: 50 },
            )]);
            group_pods(&[pod], &metrics, Some("cpu"), &tuning, now).ready == 1
        };
        // Within the initialization period: ready, but the sample's window started before readiness.
        let mut young = pod("a", 100);
        young.start_time = Some(at(NOW - 100));
        young.ready = Some((true, at(NOW - 20)));
        assert!(!sample(young.clone(), NOW - 5));
        young.ready = Some((true, at(NOW - 50)));
        assert!(sample(young, NOW - 5));
        // After it: unready only when it has never been ready (its last transition within the delay).
        let mut old = pod("b", 100);
        old.ready = Some((false, at(10)));
        assert!(!sample(old.clone(), NOW - 5));
        old.ready = Some((false, at(NOW - 100)));
        assert!(sample(old, NOW - 5));
        // No Ready condition or start time: unready.
        let mut unknown = pod("c", 100);
        unknown.ready = None;
        assert!(!sample(unknown, NOW - 5));
        // Other resources do not look at readiness.
        let mut fresh = pod("d", 100);
        fresh.ready = Some((false, at(NOW)));
        let metrics = metrics(&[("d", 5)]);
        assert_eq!(group_pods(&[fresh], &metrics, Some("memory"), &tuning, now).ready, 1);
    }

    #[test]
    fn deleted_failed_and_pending_pods_do_not_count() {
        let mut deleting = pod("a", 100);
        deleting.deleting = true;
        let mut failed = pod("b", 100);
        failed.phase = Phase::Failed;
        let mut pending = pod("c", 100);
        pending.phase = Phase::Pending;
        let pods = [deleting, failed, pending, pod("d", 100)];
        let groups =
            group_pods(&pods, &metrics(&[("a", 1), ("b", 1), ("d", 1)]), Some("cpu"), &Tuning::default(), at(NOW));
        assert_eq!(groups.ignored, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(groups.unready, BTreeSet::from(["c".to_string()]));
        assert_eq!(groups.ready, 1);
    }

    #[test]
    fn errors_have_kubernetes_messages() {
        assert_eq!(
            cpu(1, 50, &[], &[]).unwrap_err().to_string(),
            "no pods returned by selector while calculating replica count"
        );
        assert_eq!(
            cpu(1, 50, &[pod("a", 100)], &[]).unwrap_err().to_string(),
            "did not receive metrics for targeted pods (pods might be unready)"
        );
        let mut no_request = pod("web-1", 100);
        no_request.containers[0].requests.clear();
        assert_eq!(
            cpu(1, 50, &[no_request], &[("web-1", 10)]).unwrap_err().to_string(),
            "missing request for cpu in container app of Pod web-1"
        );
    }

    #[test]
    fn a_container_target_counts_that_container_only() {
        let mut two = pod("a", 100);
        two.containers
            .push(ContainerRequests { name: "sidecar".into(), requests: BTreeMap::from([("cpu".to_string(), 900)]) });
        let observed = Observation { pods: &[two], metrics: metrics(&[("a", 100)]), now: at(NOW) };
        let proposal = resource_utilization_replicas(1, 50, "cpu", Some("app"), observed, &Tuning::default()).unwrap();
        assert_eq!((proposal.utilization, proposal.replicas), (100, 2));
    }

    #[test]
    fn average_values_scale_pods_metrics() {
        let pods = [pod("a", 100), pod("b", 100)];
        let tuning = Tuning::default();
        // 20 requests/s each against 10: double.
        let seen = |pods, values: &[(&str, i64)]| Observation { pods, metrics: metrics(values), now: at(NOW) };
        let (replicas, usage) =
            average_value_replicas(2, 10_000, None, seen(&pods, &[("a", 20_000), ("b", 20_000)]), &tuning).unwrap();
        assert_eq!((replicas, usage), (4, 20_000));
        // A missing pod going down counts at the target.
        let (replicas, _) = average_value_replicas(2, 10_000, None, seen(&pods, &[("a", 1_000)]), &tuning).unwrap();
        assert_eq!(replicas, 2);
        let three = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let (replicas, _) =
            average_value_replicas(3, 10_000, None, seen(&three, &[("a", 1_000), ("b", 1_000)]), &tuning).unwrap();
        // (1000 + 1000 + 10000) / 3 = 4000 → 3 * 0.4 = 1.2 → 2.
        assert_eq!(replicas, 2);
    }

    fn sizes(current: i32, desired: i32, min: i32, max: i32) -> Sizes {
        Sizes { current, desired, min, max }
    }

    fn proposal(replicas: i32, metric: &str) -> Result<Proposal, MetricFailure> {
        Ok(Proposal { replicas, metric: metric.into() })
    }

    fn failure(error: &str) -> Result<Proposal, MetricFailure> {
        Err(MetricFailure { reason: "FailedGetResourceMetric", error: error.into() })
    }

    #[test]
    fn the_largest_proposal_wins_and_failures_block_scaling_down() {
        let Combined::Scale { replicas, metric, active, invalid } =
            combine(vec![proposal(3, "cpu"), proposal(5, "pods metric rps")], 4)
        else {
            panic!("scales")
        };
        assert_eq!((replicas, metric.as_str(), invalid), (5, "pods metric rps", None));
        assert_eq!(active.message, "the HPA was able to successfully calculate a replica count from pods metric rps");
        // A failure next to a scale up still scales up, reporting the failure.
        let Combined::Scale { replicas, invalid, .. } = combine(vec![failure("boom"), proposal(6, "cpu")], 4) else {
            panic!("scales up")
        };
        assert_eq!(replicas, 6);
        assert_eq!(invalid.as_deref(), Some("invalid metrics (1 invalid out of 2), first error is: boom"));
        // Next to a scale down it stops everything.
        let Combined::Failed { condition, error } = combine(vec![failure("boom"), proposal(2, "cpu")], 4) else {
            panic!("fails")
        };
        assert_eq!(
            condition,
            Condition::new(
                SCALING_ACTIVE,
                false,
                "FailedGetResourceMetric",
                "the HPA was unable to compute the replica count: boom"
            )
        );
        assert_eq!(error, "invalid metrics (1 invalid out of 2), first error is: boom");
        assert!(matches!(combine(vec![failure("a"), failure("b")], 1), Combined::Failed { .. }));
    }

    #[test]
    fn without_behavior_scale_down_is_stabilized_for_five_minutes() {
        let tuning = Tuning::default();
        let mut history = History::default();
        history.record_initial(5, at(0));
        let n = normalize(&mut history, None, sizes(5, 2, 1, 10), &tuning, at(60));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.able_to_scale.reason, "ScaleDownStabilized");
        assert_eq!((n.scaling_limited.status, n.scaling_limited.reason), (false, "DesiredWithinRange"));
        // After the window both earlier recommendations are out of it.
        let n = normalize(&mut history, None, sizes(5, 2, 1, 10), &tuning, at(400));
        assert_eq!((n.replicas, n.able_to_scale.reason), (2, "ReadyForNewScale"));
    }

    #[test]
    fn without_behavior_scale_up_is_at_most_double_or_four() {
        let tuning = Tuning::default();
        let n = normalize(&mut History::default(), None, sizes(1, 10, 1, 20), &tuning, at(0));
        assert_eq!(n.replicas, 4);
        assert_eq!(
            n.scaling_limited,
            Condition::new(
                SCALING_LIMITED,
                true,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate"
            )
        );
        let n = normalize(&mut History::default(), None, sizes(5, 30, 1, 8), &tuning, at(0));
        assert_eq!((n.replicas, n.scaling_limited.reason, n.scaling_limited.status), (8, "TooManyReplicas", true));
        let n = normalize(&mut History::default(), None, sizes(5, 1, 3, 8), &tuning, at(0));
        assert_eq!((n.replicas, n.scaling_limited.reason), (3, "TooFewReplicas"));
    }

    fn default_behavior() -> Behavior {
        Behavior {
            scale_up: Rules {
                stabilization_window_seconds: Some(0),
                select: Select::Max,
                policies: vec![
                    Policy { kind: PolicyKind::Pods, value: 4, period_seconds: 15 },
                    Policy { kind: PolicyKind::Percent, value: 100, period_seconds: 15 },
                ],
            },
            scale_down: Rules {
                stabilization_window_seconds: None,
                select: Select::Max,
                policies: vec![Policy { kind: PolicyKind::Percent, value: 100, period_seconds: 15 }],
            },
        }
    }

    #[test]
    fn default_behavior_scales_up_by_the_larger_of_four_pods_and_double() {
        let tuning = Tuning::default();
        let behavior = default_behavior();
        let n = normalize(&mut History::default(), Some(&behavior), sizes(2, 20, 1, 50), &tuning, at(0));
        assert_eq!((n.replicas, n.scaling_limited.reason), (6, "ScaleUpLimit"));
        let n = normalize(&mut History::default(), Some(&behavior), sizes(10, 50, 1, 50), &tuning, at(0));
        assert_eq!(n.replicas, 20);
        // A scale in the same period counts: from 10 to 20 at 0 s, the period started at 10.
        let mut history = History::default();
        history.record_scale(Some(&behavior), 10, 20, at(0));
        let n = normalize(&mut history, Some(&behavior), sizes(20, 50, 1, 50), &tuning, at(5));
        assert_eq!(n.replicas, 20);
        // After the period, from 20.
        let n = normalize(&mut history, Some(&behavior), sizes(20, 50, 1, 50), &tuning, at(20));
        assert_eq!(n.replicas, 40);
    }

    #[test]
    fn select_min_and_disabled_policies() {
        let tuning = Tuning::default();
        let mut behavior = default_behavior();
        behavior.scale_up.select = Select::Min;
        let n = normalize(&mut History::default(), Some(&behavior), sizes(10, 50, 1, 50), &tuning, at(0));
        assert_eq!(n.replicas, 14);
        behavior.scale_up.select = Select::Disabled;
        let n = normalize(&mut History::default(), Some(&behavior), sizes(10, 50, 1, 50), &tuning, at(0));
        assert_eq!((n.replicas, n.scaling_limited.reason), (10, "ScaleUpLimit"));
    }

    #[test]
    fn scale_down_policies_and_windows_with_behavior() {
        let tuning = Tuning::default();
        let mut behavior = default_behavior();
        behavior.scale_down = Rules {
            stabilization_window_seconds: Some(0),
            select: Select::Max,
            policies: vec![Policy { kind: PolicyKind::Pods, value: 2, period_seconds: 60 }],
        };
        let mut history = History::default();
        let n = normalize(&mut history, Some(&behavior), sizes(10, 1, 1, 20), &tuning, at(0));
        assert_eq!(
            (n.replicas, n.scaling_limited.clone()),
            (
                8,
                Condition::new(
                    SCALING_LIMITED,
                    true,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate"
                )
            )
        );
        history.record_scale(Some(&behavior), 10, 8, at(0));
        // Within the minute the 2 pods are spent.
        assert_eq!(normalize(&mut history, Some(&behavior), sizes(8, 1, 1, 20), &tuning, at(30)).replicas, 8);
        assert_eq!(normalize(&mut history, Some(&behavior), sizes(8, 1, 1, 20), &tuning, at(61)).replicas, 6);
        // The default scale-down window (the controller's 5 minutes) keeps the highest recommendation.
        let behavior = default_behavior();
        let mut history = History::default();
        history.record_initial(10, at(0));
        let n = normalize(&mut history, Some(&behavior), sizes(10, 3, 1, 20), &tuning, at(100));
        assert_eq!((n.replicas, n.able_to_scale.reason), (10, "ScaleDownStabilized"));
        let n = normalize(&mut history, Some(&behavior), sizes(10, 3, 1, 20), &tuning, at(450));
        assert_eq!((n.replicas, n.able_to_scale.reason), (3, "ReadyForNewScale"));
    }

    #[test]
    fn scale_up_stabilization_takes_the_lowest_recent_recommendation() {
        let tuning = Tuning::default();
        let mut behavior = default_behavior();
        behavior.scale_up.stabilization_window_seconds = Some(60);
        let mut history = History::default();
        history.record_initial(2, at(0));
        let n = normalize(&mut history, Some(&behavior), sizes(2, 6, 1, 20), &tuning, at(30));
        assert_eq!((n.replicas, n.able_to_scale.reason), (2, "ScaleUpStabilized"));
        let n = normalize(&mut history, Some(&behavior), sizes(2, 6, 1, 20), &tuning, at(100));
        assert_eq!(n.replicas, 6);
    }

    #[test]
    fn scale_events_reuse_outdated_slots() {
        let behavior = default_behavior();
        let mut history = History::default();
        history.record_scale(Some(&behavior), 1, 3, at(0));
        history.record_scale(Some(&behavior), 3, 5, at(100));
        assert_eq!(history.scale_up_events.len(), 1);
        history.record_scale(None, 5, 9, at(200));
        assert_eq!(history.scale_up_events.len(), 1);
    }
}
