//! The Deployment controller's arithmetic, without IO: the pod-template hash, maxSurge/maxUnavailable, how
//! far each ReplicaSet may be scaled, revisions, and the status and conditions a deployment reports. Ported
//! from Kubernetes' `pkg/controller/deployment` and `deployment/util` so rollouts step the same way.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that keeps the pods of a deployment's ReplicaSets apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations a deployment does not hand down to its ReplicaSets (they are the controller's or kubectl's).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// The longest revision-history annotation Kubernetes keeps.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// maxSurge or maxUnavailable is a string that is not a percentage.
    #[error("invalid value for IntOrString: invalid value {0:?}: must be an integer or a percentage")]
    NotAPercentage(String),
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

fn is_rolling(d: &Deployment) -> bool {
    let kind = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref());
    kind != Some("Recreate")
}

/// An int, or a percentage of `total` rounded up or down (Kubernetes' GetScaledValueFromIntOrPercent).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, PlanError> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 =
                s.strip_suffix('%').and_then(|p| p.parse().ok()).ok_or_else(|| PlanError::NotAPercentage(s.clone()))?;
            let scaled = percent * i64::from(total);
            let value = if round_up { (scaled + 99).div_euclid(100) } else { scaled.div_euclid(100) };
            Ok(value as i32)
        }
    }
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) for the deployment's replicas; when both come
/// to zero, one pod may be unavailable so the rollout can move at all.
pub fn fenceposts(d: &Deployment) -> Result<(i32, i32), PlanError> {
    let rolling = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let percent = |v: Option<&IntOrString>| v.cloned().unwrap_or(IntOrString::String("25%".into()));
    let desired = replicas(d);
    let surge = scaled_value(&percent(rolling.and_then(|r| r.max_surge.as_ref())), desired, true)?;
    let unavailable = scaled_value(&percent(rolling.and_then(|r| r.max_unavailable.as_ref())), desired, false)?;
    Ok(if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) })
}

/// How many pods above the desired count a rollout may run (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).map(|(surge, _)| surge).unwrap_or(0)
}

/// How many of the desired pods may be unavailable during a rollout (0 for Recreate).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).map(|(_, unavailable)| unavailable.min(replicas(d))).unwrap_or(0)
}

/// The pod-template hash: FNV-1a (32 bit) of the template, with the collision count mixed in when there is
/// one, printed as Kubernetes does (decimal digits mapped onto consonants and digits, e.g. `5d8f9c7b4`).
/// Kubernetes hashes Go's printed form of the struct; this hashes its canonical JSON, which is as stable.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash = fnv1a(FNV_OFFSET, &serde_json::to_vec(template).expect("a pod template serializes"));
    if let Some(count) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv1a(hash, &bytes);
    }
    safe_encode(&hash.to_string())
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Kubernetes' rand.SafeEncodeString: no vowels, no confusable characters, so no words and no ambiguity.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

/// Whether two templates are the same but for the pod-template-hash label.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

pub fn max_revision(replicasets: &[ReplicaSet]) -> i64 {
    replicasets.iter().map(revision).max().unwrap_or(0)
}

fn annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Sets the desired/max-replicas annotations; whether they changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        if annotations.get(key).map(String::as_str) != Some(&value.to_string()) {
            annotations.insert(key.into(), value.to_string());
            changed = true;
        }
    }
    changed
}

/// Hands the deployment's annotations down and moves the ReplicaSet to `new_revision` when it is behind,
/// keeping the revisions it had in revision-history (a rollback reuses an old ReplicaSet). A ReplicaSet
/// about to be created also gets the replica annotations. Whether anything changed.
pub fn set_new_rs_annotations(d: &Deployment, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_revision: i64 = match old.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(revision)) => revision,
        Some(Err(_)) => return changed,
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = annotations.get(REVISION_HISTORY).cloned().unwrap_or_default();
            let mut revisions: Vec<&str> = history.split(',').filter(|r| !r.is_empty()).collect();
            revisions.push(&old);
            while revisions.iter().map(|r| r.len() + 1).sum::<usize>() - 1 > MAX_REVISION_HISTORY_CHARS {
                revisions.remove(0);
            }
            let joined = revisions.join(",");
            annotations.insert(REVISION_HISTORY.into(), joined);
        }
    }
    if !exists && set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)) {
        changed = true;
    }
    changed
}

/// The pods a ReplicaSet may have right now: its size, or more while the pods it shrank away from are not
/// yet reported gone.
fn pods_at_most(rs: &ReplicaSet) -> i32 {
    rs_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas))
}

/// How many replicas the new ReplicaSet should have now (Kubernetes' NewRSNewReplicas): as many as the
/// surge allows for a rolling update, all at once for Recreate. `all` includes `new`. Unlike Kubernetes,
/// which sums the sizes alone, old pods still being deleted count too, so a watch never sees more than
/// replicas + maxSurge pods that are not terminating.
pub fn new_rs_replicas(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> i32 {
    let desired = replicas(d);
    if !is_rolling(d) {
        return desired;
    }
    let current: i32 = all.iter().map(pods_at_most).sum();
    let max_total = desired + max_surge(d);
    if current >= max_total {
        return rs_replicas(new);
    }
    rs_replicas(new) + (max_total - current).min(desired - rs_replicas(new))
}

/// The new ReplicaSet's next size during a rolling update, if it should change.
pub fn reconcile_new(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> Option<i32> {
    let (desired, current) = (replicas(d), rs_replicas(new));
    match current.cmp(&desired) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(desired),
        std::cmp::Ordering::Less => Some(new_rs_replicas(d, all, new)).filter(|&n| n != current),
    }
}

/// How far old ReplicaSets may shrink during a rolling update without going below replicas −
/// maxUnavailable available pods: first their unavailable pods, then available ones, oldest first
/// (Kubernetes' reconcileOldReplicaSets). Returns the new sizes of those that change.
pub fn reconcile_old(d: &Deployment, all: &[ReplicaSet], old: &[ReplicaSet], new: &ReplicaSet) -> Vec<(String, i32)> {
    let mut old: Vec<&ReplicaSet> = old.iter().filter(|rs| rs_replicas(rs) > 0).collect();
    if old.is_empty() {
        return Vec::new();
    }
    let all_count: i32 = all.iter().map(rs_replicas).sum();
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = rs_replicas(new) - available(new);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    old.sort_by_key(|rs| created(rs));
    let mut sizes: Vec<i32> = old.iter().map(|rs| rs_replicas(rs)).collect();
    let mut cleaned = 0;
    for (size, rs) in sizes.iter_mut().zip(&old) {
        if cleaned >= max_scaled_down {
            break;
        }
        if *size <= available(rs) {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(*size - available(rs));
        *size -= down;
        cleaned += down;
    }
    let available_total: i32 = all.iter().map(available).sum();
    if available_total > min_available {
        let budget = available_total - min_available;
        let mut done = 0;
        for size in sizes.iter_mut() {
            if done >= budget {
                break;
            }
            let down = (*size).min(budget - done);
            *size -= down;
            done += down;
        }
    }
    old.iter().zip(sizes).filter(|(rs, size)| rs_replicas(rs) != *size).map(|(rs, size)| (name(rs), size)).collect()
}

fn name(rs: &ReplicaSet) -> String {
    rs.metadata.name.clone().unwrap_or_default()
}

fn created(rs: &ReplicaSet) -> (Option<Timestamp>, String) {
    (rs.metadata.creation_timestamp.as_ref().map(|t| t.0), name(rs))
}

/// The only active ReplicaSet, or the newest when none is active; None while several are active.
fn active_or_latest<'a>(new: Option<&'a ReplicaSet>, old: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let mut newest_first: Vec<&ReplicaSet> = old.iter().collect();
    newest_first.sort_by_key(|rs| Reverse(created(rs)));
    let active: Vec<&ReplicaSet> = newest_first.iter().copied().chain(new).filter(|rs| rs_replicas(rs) > 0).collect();
    match active.len() {
        0 => new.or(newest_first.first().copied()),
        1 => Some(active[0]),
        _ => None,
    }
}

/// The new ReplicaSet has all the deployment's replicas, all available.
fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let desired = replicas(d);
    annotation(rs, DESIRED_REPLICAS) == Some(desired) && available(rs) == desired && rs_replicas(rs) == desired
}

/// The sizes for a deployment whose replicas changed (Kubernetes' `scale`): the one active ReplicaSet
/// takes it all; mid-rollout the change is spread in proportion to each ReplicaSet's size (by its
/// max-replicas annotation), leftovers going to the largest.
pub fn scale_plan(d: &Deployment, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Vec<(String, i32)> {
    let desired = replicas(d);
    if let Some(rs) = active_or_latest(new, old) {
        return if rs_replicas(rs) == desired { Vec::new() } else { vec![(name(rs), desired)] };
    }
    if let Some(new) = new
        && is_saturated(d, new)
    {
        return old.iter().filter(|rs| rs_replicas(rs) > 0).map(|rs| (name(rs), 0)).collect();
    }
    if !is_rolling(d) {
        return Vec::new();
    }
    let mut active: Vec<&ReplicaSet> = old.iter().chain(new).filter(|rs| rs_replicas(rs) > 0).collect();
    let current: i32 = active.iter().map(|rs| rs_replicas(rs)).sum();
    let allowed = if desired > 0 { desired + max_surge(d) } else { 0 };
    let to_add = allowed - current;
    if to_add > 0 {
        active.sort_by_key(|rs| (Reverse(rs_replicas(rs)), Reverse(created(rs))));
    } else if to_add < 0 {
        active.sort_by_key(|rs| (Reverse(rs_replicas(rs)), created(rs)));
    }
    let mut added = 0;
    let mut sizes: Vec<i32> = active
        .iter()
        .map(|rs| {
            let share = proportion(d, rs, to_add, added);
            added += share;
            rs_replicas(rs) + share
        })
        .collect();
    if let Some(largest) = sizes.first_mut() {
        *largest = (*largest + to_add - added).max(0);
    }
    active.iter().zip(sizes).map(|(rs, size)| (name(rs), size)).collect()
}

fn proportion(d: &Deployment, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas(d) == 0 {
        -rs_replicas(rs)
    } else {
        let total = replicas(d) + max_surge(d);
        let annotated = annotation(rs, MAX_REPLICAS)
            .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0))
            .max(1);
        (f64::from(rs_replicas(rs) * total) / f64::from(annotated)).round() as i32 - rs_replicas(rs)
    };
    let allowed = to_add - added;
    if to_add > 0 { fraction.min(allowed) } else { fraction.max(allowed) }
}

pub fn condition<'a>(status: &'a DeploymentStatus, kind: &str) -> Option<&'a DeploymentCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == kind)
}

pub fn new_condition(kind: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition unless one with the same status and reason is there; a condition whose status does
/// not change keeps its lastTransitionTime.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = self::condition(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_);
    status.conditions.get_or_insert_with(Vec::new).push(condition);
}

fn remove_condition(status: &mut DeploymentStatus, kind: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != kind);
    }
}

/// A progress deadline is set (Kubernetes treats MaxInt32 as none).
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_some_and(|s| s != i32::MAX)
}

/// Counters from the ReplicaSets, the deployment's conditions kept, Available recomputed.
pub fn status(d: &Deployment, all: &[ReplicaSet], new: Option<&ReplicaSet>, now: Timestamp) -> DeploymentStatus {
    let sum = |field: fn(&ReplicaSet) -> Option<i32>, of: &mut dyn Iterator<Item = &ReplicaSet>| -> i32 {
        of.filter_map(field).sum()
    };
    let actual = |rs: &ReplicaSet| rs.status.as_ref().map(|s| s.replicas);
    let available_total = sum(|rs| rs.status.as_ref()?.available_replicas, &mut all.iter());
    let spec_total: i32 = all.iter().map(rs_replicas).sum();
    let current = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(actual, &mut all.iter())),
        updated_replicas: Some(sum(actual, &mut new.into_iter())),
        ready_replicas: Some(sum(|rs| rs.status.as_ref()?.ready_replicas, &mut all.iter())),
        available_replicas: Some(available_total),
        unavailable_replicas: Some((spec_total - available_total).max(0)),
        collision_count: current.collision_count,
        conditions: current.conditions,
        ..DeploymentStatus::default()
    };
    let condition = if available_total >= replicas(d) - max_unavailable(d) {
        new_condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        new_condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set_condition(&mut status, condition);
    status
}

/// Every replica updated, present and available, for the current generation.
pub fn complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = Some(replicas(d));
    status.updated_replicas == desired
        && status.replicas == desired
        && status.available_replicas == desired
        && status.observed_generation >= d.metadata.generation
}

/// More pods updated, fewer old ones, or more ready or available than the last status said.
fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    n(new.updated_replicas) > n(old.updated_replicas)
        || n(new.replicas) - n(new.updated_replicas) < n(old.replicas) - n(old.updated_replicas)
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn timed_out(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(condition) = condition(status, "Progressing") else { return false };
    match condition.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => match (&condition.last_update_time, deadline(d)) {
            (Some(from), Some(deadline)) => from.0 + deadline < now,
            _ => false,
        },
    }
}

fn deadline(d: &Deployment) -> Option<jiff::SignedDuration> {
    let seconds = d.spec.as_ref()?.progress_deadline_seconds?;
    Some(jiff::SignedDuration::from_secs(seconds.into()))
}

/// The status during a rollout (Kubernetes' syncRolloutStatus): the counters, then Progressing moved to
/// NewReplicaSetAvailable, ReplicaSetUpdated or ProgressDeadlineExceeded, and the ReplicaSets' failures.
pub fn rollout_status(
    d: &Deployment,
    all: &[ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let mut status = status(d, all, new, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, "Progressing");
    }
    let current = d.status.as_ref().and_then(|s| condition(s, "Progressing"));
    let finished = status.replicas == status.updated_replicas
        && current.is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    if has_progress_deadline(d) && !finished {
        let subject = match new {
            Some(rs) => format!("ReplicaSet {:?}", name(rs)),
            None => format!("Deployment {:?}", d.metadata.name.clone().unwrap_or_default()),
        };
        if complete(d, &status) {
            let message = format!("{subject} has successfully progressed.");
            set_condition(&mut status, new_condition("Progressing", "True", "NewReplicaSetAvailable", message, now));
        } else if progressing(d, &status) {
            let message = format!("{subject} is progressing.");
            let mut condition = new_condition("Progressing", "True", "ReplicaSetUpdated", message, now);
            // Progress refreshes lastUpdateTime even with the same reason, which is what the deadline counts
            // from.
            if let Some(current) = current.filter(|c| c.status == "True") {
                condition.last_transition_time = current.last_transition_time.clone();
            }
            remove_condition(&mut status, "Progressing");
            set_condition(&mut status, condition);
        } else if timed_out(d, &status, now) {
            let message = format!("{subject} has timed out progressing.");
            set_condition(&mut status, new_condition("Progressing", "False", "ProgressDeadlineExceeded", message, now));
        }
    }
    let failures = |rs: &ReplicaSet| {
        rs.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure")
            .cloned()
    };
    match new.and_then(failures).or_else(|| all.iter().find_map(failures)) {
        Some(failure) => set_condition(
            &mut status,
            DeploymentCondition {
                type_: failure.type_,
                status: failure.status,
                reason: failure.reason,
                message: failure.message,
                last_update_time: failure.last_transition_time.clone(),
                last_transition_time: failure.last_transition_time,
            },
        ),
        None => remove_condition(&mut status, "ReplicaFailure"),
    }
    status
}

/// When to look again at a rollout that has not finished nor timed out: when its deadline passes.
pub fn progress_check_after(d: &Deployment, now: Timestamp) -> Option<Duration> {
    let status = d.status.as_ref()?;
    let current = condition(status, "Progressing")?;
    if !has_progress_deadline(d) || complete(d, status) || current.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return None;
    }
    let at = current.last_update_time.as_ref()?.0 + deadline(d)?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or_default().max(Duration::from_secs(1)))
}

/// Old ReplicaSets beyond revisionHistoryLimit that are empty and settled, oldest revision first.
pub fn history_to_delete(d: &Deployment, old: &[ReplicaSet]) -> Vec<String> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else { return Vec::new() };
    let mut alive: Vec<&ReplicaSet> = old.iter().filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
    let excess = alive.len().saturating_sub(limit.max(0) as usize);
    alive.sort_by_key(|rs| (revision(rs), created(rs)));
    alive
        .into_iter()
        .take(excess)
        .filter(|rs| {
            let status = rs.status.as_ref();
            status.map_or(0, |s| s.replicas) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation <= status.and_then(|s| s.observed_generation)
        })
        .map(name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, surge: serde_json::Value, unavailable: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "progressDeadlineSeconds": 10,
                "revisionHistoryLimit": 1,
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "a:1"}]}},
            },
        }))
        .unwrap()
    }

    fn rs(name: &str, created: &str, replicas: i32, available: i32, annotations: serde_json::Value) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations, "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": replicas, "availableReplicas": available, "readyReplicas": available, "observedGeneration": 1},
        }))
        .unwrap()
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let percent = IntOrString::String("25%".into());
        assert_eq!(scaled_value(&percent, 10, true), Ok(3));
        assert_eq!(scaled_value(&percent, 10, false), Ok(2));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, false), Ok(4));
        assert_eq!(
            scaled_value(&IntOrString::String("x".into()), 10, false),
            Err(PlanError::NotAPercentage("x".into()))
        );
        assert_eq!(fenceposts(&deployment(5, json!("25%"), json!("25%"))), Ok((2, 1)));
        // Both rounding to zero would stall the rollout: one pod may be unavailable instead.
        assert_eq!(fenceposts(&deployment(3, json!(0), json!("10%"))), Ok((0, 1)));
        let d = deployment(2, json!(1), json!(5));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 2), "maxUnavailable is capped at replicas");
        let mut recreate = deployment(5, json!(1), json!(1));
        recreate.spec.as_mut().unwrap().strategy = serde_json::from_value(json!({"type": "Recreate"})).unwrap();
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let d = deployment(1, json!(1), json!(1));
        let template = d.spec.unwrap().template;
        let hash = template_hash(&template, None);
        assert_eq!(hash, template_hash(&template.clone(), None), "deterministic");
        assert!(hash.chars().all(|c| "456789bcdf".contains(c)), "{hash}");
        assert_ne!(hash, template_hash(&template, Some(1)), "a collision count gives another hash");
        let mut changed = template.clone();
        changed.spec.as_mut().unwrap().containers[0].image = Some("a:2".into());
        assert_ne!(hash, template_hash(&changed, None));
        let mut labelled = template.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), hash);
        assert!(same_template(&labelled, &template));
        assert!(!same_template(&changed, &template));
    }

    #[test]
    fn fnv_and_encoding_match_kubernetes() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 2_166_136_261);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xe40c_292c);
        // Decimal digits land on "456789bcdf", as in Kubernetes' familiar hashes (e.g. 5d8f9c7b4).
        assert_eq!(safe_encode("2166136261"), "65bb57b6b5");
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn a_rolling_update_surges_then_scales_old_down_within_bounds() {
        let d = deployment(10, json!("25%"), json!("25%"));
        let old = rs("web-old", "2026-01-01T00:00:00Z", 10, 10, json!({}));
        let new = rs("web-new", "2026-01-02T00:00:00Z", 0, 0, json!({}));
        let all = vec![old.clone(), new.clone()];
        assert_eq!(reconcile_new(&d, &all, &new), Some(3), "10 + 3 surge");
        let new = rs("web-new", "2026-01-02T00:00:00Z", 3, 0, json!({}));
        let all = vec![old.clone(), new.clone()];
        assert_eq!(reconcile_new(&d, &all, &new), None, "no room above replicas + maxSurge");
        // Shrunk to 8 but still reporting 10 pods: the new set waits for them to go.
        let mut shrinking = old.clone();
        shrinking.spec.as_mut().unwrap().replicas = Some(8);
        assert_eq!(reconcile_new(&d, &[shrinking.clone(), new.clone()], &new), None);
        shrinking.status.as_mut().unwrap().replicas = 8;
        assert_eq!(reconcile_new(&d, &[shrinking, new.clone()], &new), Some(5));
        // 13 pods, 8 must stay available, the 3 new ones are not yet: 2 old ones may go.
        assert_eq!(reconcile_old(&d, &all, std::slice::from_ref(&old), &new), vec![("web-old".to_string(), 8)]);
        // Unavailable old pods go first and do not count against availability.
        let sick = rs("web-old", "2026-01-01T00:00:00Z", 10, 6, json!({}));
        let all = vec![sick.clone(), new.clone()];
        assert_eq!(reconcile_old(&d, &all, std::slice::from_ref(&sick), &new), vec![("web-old".to_string(), 8)]);
        let none_available = rs("web-old", "2026-01-01T00:00:00Z", 10, 0, json!({}));
        let all = vec![none_available.clone(), new.clone()];
        // With nothing available, only what exceeds replicas − maxUnavailable and the new set's unready
        // pods may go.
        assert_eq!(
            reconcile_old(&d, &all, std::slice::from_ref(&none_available), &new),
            vec![("web-old".to_string(), 8)]
        );
    }

    #[test]
    fn scaling_goes_to_the_active_set_or_in_proportion_mid_rollout() {
        let d = deployment(8, json!("25%"), json!("25%"));
        let only = rs("web-a", "2026-01-01T00:00:00Z", 5, 5, json!({}));
        assert_eq!(scale_plan(&d, Some(&only), &[]), vec![("web-a".to_string(), 8)]);
        let d = deployment(15, json!("25%"), json!("25%"));
        let old = rs("web-old", "2026-01-01T00:00:00Z", 8, 8, json!({MAX_REPLICAS: "13"}));
        let new = rs("web-new", "2026-01-02T00:00:00Z", 5, 0, json!({MAX_REPLICAS: "13"}));
        let plan = scale_plan(&d, Some(&new), std::slice::from_ref(&old));
        assert_eq!(plan, vec![("web-old".to_string(), 12), ("web-new".to_string(), 7)], "15 + 4 surge = 19 in total");
        let d = deployment(5, json!("25%"), json!("25%"));
        let plan = scale_plan(&d, Some(&new), std::slice::from_ref(&old));
        assert_eq!(plan.iter().map(|(_, n)| n).sum::<i32>(), 7, "5 + 2 surge: {plan:?}");
    }

    #[test]
    fn history_keeps_the_newest_revisions_and_nonempty_sets() {
        let d = deployment(1, json!(1), json!(1));
        let old = [
            rs("r1", "2026-01-01T00:00:00Z", 0, 0, json!({REVISION: "1"})),
            rs("r3", "2026-01-03T00:00:00Z", 0, 0, json!({REVISION: "3"})),
            rs("r2", "2026-01-02T00:00:00Z", 1, 1, json!({REVISION: "2"})),
        ];
        assert_eq!(history_to_delete(&d, &old), vec!["r1".to_string()], "r2 still has a pod");
        assert_eq!(max_revision(&old), 3);
    }

    #[test]
    fn reusing_an_old_replicaset_moves_its_revision_and_keeps_history() {
        let mut d = deployment(3, json!(1), json!(1));
        d.metadata.annotations = Some([("kubernetes.io/change-cause".to_string(), "v1".to_string())].into());
        let mut old = rs("r1", "2026-01-01T00:00:00Z", 0, 0, json!({REVISION: "1"}));
        assert!(set_new_rs_annotations(&d, &mut old, 3, true));
        let annotations = old.metadata.annotations.unwrap();
        assert_eq!(annotations[REVISION], "3");
        assert_eq!(annotations[REVISION_HISTORY], "1");
        assert_eq!(annotations["kubernetes.io/change-cause"], "v1");
        assert!(!annotations.contains_key(DESIRED_REPLICAS), "only a new set gets replica annotations");
    }

    #[test]
    fn conditions_follow_the_rollout() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let d = deployment(2, json!(1), json!(0));
        let new = rs("web-new", "2026-01-01T00:00:00Z", 2, 2, json!({}));
        let status = rollout_status(&d, std::slice::from_ref(&new), Some(&new), now);
        assert_eq!(condition(&status, "Available").unwrap().reason.as_deref(), Some("MinimumReplicasAvailable"));
        assert_eq!(condition(&status, "Progressing").unwrap().reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert!(complete(&d, &status));

        // A rollout whose last progress is older than the deadline has timed out.
        let mut stuck = d.clone();
        let started: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        stuck.status = Some(DeploymentStatus {
            replicas: Some(3),
            updated_replicas: Some(1),
            available_replicas: Some(2),
            ready_replicas: Some(2),
            conditions: Some(vec![new_condition("Progressing", "True", "ReplicaSetUpdated", "x".into(), started)]),
            ..DeploymentStatus::default()
        });
        let old = rs("web-old", "2025-01-01T00:00:00Z", 2, 2, json!({}));
        let bad = rs("web-bad", "2026-01-01T00:00:00Z", 1, 0, json!({}));
        let status = rollout_status(&stuck, &[old.clone(), bad.clone()], Some(&bad), now);
        let progressing = condition(&status, "Progressing").unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
        assert_eq!(condition(&status, "Available").unwrap().status, "True", "the old pods keep it available");
        stuck.status = Some(status);
        assert_eq!(progress_check_after(&stuck, now), None, "a timed out rollout is not checked again");
    }
}
