//! The ReplicaSet controller, as kube-controller-manager's: keeps `spec.replicas` active pods matching the
//! selector, adopting orphans that match and releasing pods that stopped matching, and reports how many are
//! ready and available. Expectations keep a reconcile from acting twice on writes its watch has not seen yet.
//!
//! The ownership helpers here ([`claim`], [`triggers`], [`owner_reference`]) are shared with the Deployment
//! controller, which owns ReplicaSets the same way a ReplicaSet owns pods.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use skiff_api::selectors;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::{Kind, Recorder};

/// At most this many pods are created or deleted by one reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;
/// Expectations older than this are given up on: a watch event was lost, and a relist will have healed the
/// cache by then (Kubernetes waits 5 minutes; its informers resync less eagerly than kube-runtime's watcher).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(30);
/// A periodic resync, so a missed event heals without any change.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed; the reconcile is retried.
    #[error("api request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The object's selector cannot be parsed; nothing is done until it changes.
    #[error("invalid selector")]
    Selector(#[from] selectors::SelectorError),
    /// The cache's writer is gone: the controller is shutting down.
    #[error("the cache is gone")]
    CacheGone,
}

/// Runs the ReplicaSet controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (pods, mut writer) = reflector::store::<Pod>();
    let expectations = Arc::new(Expectations::default());
    let controller = Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default());
    let replicasets = controller.store();
    let (observer, cache) = (expectations.clone(), pods.clone());
    let mut relisted = Vec::new();
    // Like an informer: an event is sorted out against the cache before the cache applies it (a pod new to
    // the cache is a creation), and counted only once the cache shows it, so a reconcile whose expectations
    // are met never reads a cache without the pods it waited for. A relist shows in the cache at its end.
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| {
            let seen = Expectations::sort_out(&cache, &event);
            writer.apply_watcher_event(&event);
            match event {
                watcher::Event::InitApply(_) => relisted.extend(seen),
                watcher::Event::InitDone => relisted.drain(..).for_each(|seen| observer.record(seen)),
                _ => seen.into_iter().for_each(|seen| observer.record(seen)),
            }
            event
        })
        .touched_objects();
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client,
        pods,
        expectations,
        shutdown: shutdown.clone(),
    });
    controller
        .watches_stream(pod_events, move |pod: Pod| triggers(&pod, &replicasets, replicaset_selector))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

struct Context {
    client: kube::Client,
    recorder: Recorder,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    shutdown: CancellationToken,
}

fn replicaset_selector(rs: &ReplicaSet) -> Option<&LabelSelector> {
    rs.spec.as_ref().map(|spec| &spec.selector)
}

fn error_policy(rs: Arc<ReplicaSet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::debug!(replicaset = %rs.name_any(), %error, "replicaset reconcile failed");
    match error {
        Error::Selector(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(2)),
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, context: Arc<Context>) -> Result<Action, Error> {
    let span =
        tracing::debug_span!("reconcile", replicaset = %rs.name_any(), namespace = rs.namespace().unwrap_or_default());
    sync(&rs, &context).instrument(span).await
}

async fn sync(rs: &ReplicaSet, context: &Context) -> Result<Action, Error> {
    if !crate::caches_ready(&context.shutdown, context.pods.wait_until_ready()).await {
        return Err(Error::CacheGone);
    }
    let namespace = rs.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", rs.name_any());
    let selector = parse_selector(replicaset_selector(rs))?;
    let needs_sync = context.expectations.satisfied(&key);
    let candidates = context
        .pods
        .state()
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(&namespace) && is_active(pod))
        .collect();
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let replicasets: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    let pods_of_rs = claim(&pods, &replicasets, rs, selector.as_ref(), candidates).await?;

    let mut manage_error = None;
    if needs_sync && rs.metadata.deletion_timestamp.is_none() {
        manage_error = manage_replicas(context, rs, &key, &pods_of_rs).await.err();
    }
    let now = Timestamp::now();
    let status = status(rs, &pods_of_rs, manage_error.as_ref().map(failure_message), now);
    if !same_status(rs.status.as_ref(), &status) {
        let patch = json!({"status": {
            "replicas": status.replicas,
            "fullyLabeledReplicas": status.fully_labeled_replicas,
            "readyReplicas": status.ready_replicas,
            "availableReplicas": status.available_replicas,
            "observedGeneration": status.observed_generation,
            "conditions": status.conditions,
        }});
        replicasets.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if let Some(error) = manage_error {
        return Err(error);
    }
    let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let next = next_availability(&pods_of_rs, min_ready, now)
        .into_iter()
        .chain((!needs_sync).then_some(Duration::from_secs(1)))
        .min()
        .unwrap_or(RESYNC);
    Ok(Action::requeue(next))
}

fn failure_message(error: &Error) -> String {
    match error {
        Error::Kube(error) => api_message(error),
        other => other.to_string(),
    }
}

/// What the API server said, or the client's own error.
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// A create refused because the namespace is going away: nothing to retry.
pub(crate) fn namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403 && status.message.contains("being terminated"))
}

pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Creates or deletes pods so that `spec.replicas` are active.
async fn manage_replicas(context: &Context, rs: &ReplicaSet, key: &str, active: &[Arc<Pod>]) -> Result<(), Error> {
    let wanted = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let namespace = rs.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    if active.len() < wanted {
        let count = (wanted - active.len()).min(BURST);
        context.expectations.expect(key, count, HashSet::new());
        let pod = pod_from_template(rs);
        let params = PostParams::default();
        // Slow start (1, 2, 4, ...) as Kubernetes does: a failing create (quota, a bad template) fails once,
        // not hundreds of times.
        let (mut attempted, mut batch) = (0, 1);
        let mut failure = None;
        while attempted < count && failure.is_none() {
            let size = batch.min(count - attempted);
            attempted += size;
            let results = futures::future::join_all((0..size).map(|_| pods.create(&params, &pod))).await;
            for result in results {
                match result {
                    Ok(pod) => {
                        let message = format!("Created pod: {}", pod.name_any());
                        context.recorder.record(rs, Kind::Normal, "SuccessfulCreate", message);
                    }
                    Err(error) => {
                        context.expectations.creation_observed(key);
                        if !namespace_terminating(&error) {
                            let message = format!("Error creating: {}", api_message(&error));
                            context.recorder.record(rs, Kind::Warning, "FailedCreate", message);
                            failure = Some(error);
                        }
                    }
                }
            }
            batch *= 2;
        }
        // Pods never attempted are not expected.
        for _ in attempted..count {
            context.expectations.creation_observed(key);
        }
        return failure.map_or(Ok(()), |error| Err(error.into()));
    }
    if active.len() > wanted {
        let surplus = (active.len() - wanted).min(BURST);
        let mut ordered = active.to_vec();
        let now = Timestamp::now();
        let colocated = colocation(active);
        ordered.sort_by(|a, b| delete_first(a, b, &colocated, now));
        let victims = &ordered[..surplus];
        context.expectations.expect(key, 0, victims.iter().map(|p| p.name_any()).collect());
        let results = futures::future::join_all(victims.iter().map(|pod| {
            let name = pod.name_any();
            let pods = pods.clone();
            async move { (pods.delete(&name, &DeleteParams::default()).await, name) }
        }))
        .await;
        let mut failure = None;
        for (result, name) in results {
            match result {
                Ok(_) => context.recorder.record(rs, Kind::Normal, "SuccessfulDelete", format!("Deleted pod: {name}")),
                Err(error) => {
                    context.expectations.deletion_observed(key, &name);
                    if !is_not_found(&error) {
                        context.recorder.record(
                            rs,
                            Kind::Warning,
                            "FailedDelete",
                            format!("Error deleting: {}", api_message(&error)),
                        );
                        failure = Some(error);
                    }
                }
            }
        }
        return failure.map_or(Ok(()), |error| Err(error.into()));
    }
    Ok(())
}

/// A pod from the ReplicaSet's template, named `<rs>-<5 random chars>` by the API server.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_reference(rs)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Running or about to: not finished and not being deleted.
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod's Ready condition turned True, if it is True.
pub(crate) fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready_seconds`.
fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => {
            since.is_some_and(|since| since + jiff::SignedDuration::from_secs(min_ready_seconds.into()) <= now)
        }
    }
}

/// How long until the next ready pod becomes available, if one is waiting out minReadySeconds.
fn next_availability(pods: &[Arc<Pod>], min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    pods.iter()
        .filter_map(|pod| ready_since(pod).flatten())
        .map(|since| since + jiff::SignedDuration::from_secs(min_ready_seconds.into()))
        .filter(|at| *at > now)
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_millis(100))
        .min()
}

/// The status a ReplicaSet with these active pods reports; `failure` is why pods could not be created or
/// deleted this time.
fn status(rs: &ReplicaSet, pods: &[Arc<Pod>], failure: Option<String>, now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let template_labels =
        spec.and_then(|s| s.template.as_ref()).and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let count = |keep: &dyn Fn(&Pod) -> bool| pods.iter().filter(|p| keep(p)).count() as i32;
    let fully_labeled = count(&|pod| {
        let labels = pod.metadata.labels.as_ref();
        template_labels.into_iter().flatten().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    });
    let mut conditions: Vec<ReplicaSetCondition> =
        rs.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let has_failure = conditions.iter().any(|c| c.type_ == "ReplicaFailure");
    match failure {
        Some(message) if !has_failure => {
            let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
            let reason = if (pods.len() as i32) < wanted { "FailedCreate" } else { "FailedDelete" };
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    ReplicaSetStatus {
        replicas: pods.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&|pod| ready_since(pod).is_some())),
        available_replicas: Some(count(&|pod| is_available(pod, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        ..ReplicaSetStatus::default()
    }
}

/// Whether the stored status already says this (absent counters are zero).
fn same_status(current: Option<&ReplicaSetStatus>, wanted: &ReplicaSetStatus) -> bool {
    let Some(current) = current else { return false };
    let n = |v: Option<i32>| v.unwrap_or(0);
    current.replicas == wanted.replicas
        && n(current.fully_labeled_replicas) == n(wanted.fully_labeled_replicas)
        && n(current.ready_replicas) == n(wanted.ready_replicas)
        && n(current.available_replicas) == n(wanted.available_replicas)
        && current.observed_generation == wanted.observed_generation
        && current.conditions.as_ref().is_none_or(Vec::is_empty) == wanted.conditions.is_none()
        && (wanted.conditions.is_none() || current.conditions == wanted.conditions)
}

/// How many of these pods share each node.
fn colocation(pods: &[Arc<Pod>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for node in pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()) {
        *counts.entry(node).or_insert(0) += 1;
    }
    counts
}

/// Orders pods with the one to delete first first, as Kubernetes' ActivePodsWithRanks: unscheduled before
/// scheduled, pending before unknown before running, not ready before ready, pods on crowded nodes first,
/// ready for less time first, more restarts first, newer first.
fn delete_first(a: &Pod, b: &Pod, colocated: &HashMap<String, usize>, now: Timestamp) -> Ordering {
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    let crowd = |p: &Pod| node(p).and_then(|n| colocated.get(&n).copied()).unwrap_or(0);
    let ready_for =
        |p: &Pod| ready_since(p).map(|since| since.map_or(jiff::SignedDuration::ZERO, |s| now.duration_since(s)));
    let restarts = |p: &Pod| {
        let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        statuses.into_iter().flatten().map(|c| c.restart_count).max().unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    node(a)
        .is_some()
        .cmp(&node(b).is_some())
        .then(phase(a).cmp(&phase(b)))
        .then(ready_for(a).is_some().cmp(&ready_for(b).is_some()))
        .then(crowd(b).cmp(&crowd(a)))
        .then(ready_for(a).cmp(&ready_for(b)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// What a ReplicaSet waits to see in its pod cache before acting again: a number of creations and the names
/// of pods it deleted (Kubernetes' ControllerExpectations).
#[derive(Default)]
struct Expectations(Mutex<HashMap<String, Pending>>);

struct Pending {
    creations: usize,
    deletions: HashSet<String>,
    since: Instant,
}

impl Expectations {
    fn expect(&self, key: &str, creations: usize, deletions: HashSet<String>) {
        let pending = Pending { creations, deletions, since: Instant::now() };
        self.0.lock().expect("expectations lock").insert(key.to_string(), pending);
    }

    fn satisfied(&self, key: &str) -> bool {
        let mut map = self.0.lock().expect("expectations lock");
        let done = map
            .get(key)
            .is_none_or(|p| (p.creations == 0 && p.deletions.is_empty()) || p.since.elapsed() > EXPECTATIONS_TTL);
        if done {
            map.remove(key);
        }
        done
    }

    fn creation_observed(&self, key: &str) {
        if let Some(pending) = self.0.lock().expect("expectations lock").get_mut(key) {
            pending.creations = pending.creations.saturating_sub(1);
        }
    }

    fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(pending) = self.0.lock().expect("expectations lock").get_mut(key) {
            pending.deletions.remove(pod);
        }
    }

    /// What a watch event shows of its owner's expectations, judged before `cache` applies it.
    fn sort_out(cache: &Store<Pod>, event: &watcher::Event<Pod>) -> Vec<Seen> {
        let (pod, deleted) = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => (pod, false),
            watcher::Event::Delete(pod) => (pod, true),
            watcher::Event::Init | watcher::Event::InitDone => return Vec::new(),
        };
        let Some(owner) = controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet") else { return Vec::new() };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name);
        let mut seen = Vec::new();
        if !deleted && cache.get(&ObjectRef::from(pod)).is_none() {
            seen.push(Seen::Created(key.clone()));
        }
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            seen.push(Seen::Deleted(key, pod.name_any()));
        }
        seen
    }

    fn record(&self, seen: Seen) {
        match seen {
            Seen::Created(key) => self.creation_observed(&key),
            Seen::Deleted(key, pod) => self.deletion_observed(&key, &pod),
        }
    }
}

/// A write of a ReplicaSet (`namespace/name`) that its pod cache now shows.
enum Seen {
    Created(String),
    Deleted(String, String),
}

/// Parses an owner's selector; `None` for an empty one, which workload controllers let match nothing.
pub(crate) fn parse_selector(
    selector: Option<&LabelSelector>,
) -> Result<Option<selectors::LabelSelector>, selectors::SelectorError> {
    let Some(selector) = selector else { return Ok(None) };
    let parsed = selectors::LabelSelector::from_k8s(selector)?;
    Ok((!parsed.is_empty()).then_some(parsed))
}

pub(crate) fn selects(selector: &selectors::LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let labels = labels.into_iter().flatten().map(|(k, v)| (k.clone(), json!(v))).collect();
    selector.matches(&labels)
}

/// The owner reference with `controller: true`, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))
}

/// A controller reference to `owner` that also blocks its foreground deletion until the child is gone.
pub(crate) fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owners to reconcile when `child` changes: its controller, or, for an orphan, every owner in its
/// namespace whose selector matches it (which may adopt it).
pub(crate) fn triggers<Owner, Child>(
    child: &Child,
    owners: &Store<Owner>,
    selector_of: fn(&Owner) -> Option<&LabelSelector>,
) -> Vec<ObjectRef<Owner>>
where
    Owner: Resource<DynamicType = ()> + Clone,
    Child: Resource,
{
    let namespace = child.meta().namespace.clone();
    if let Some(owner) = controller_of(child.meta()) {
        if owner.kind == Owner::kind(&()) {
            let reference = ObjectRef::new(&owner.name);
            return vec![match &namespace {
                Some(ns) => reference.within(ns),
                None => reference,
            }];
        }
        return Vec::new();
    }
    owners
        .state()
        .iter()
        .filter(|owner| owner.meta().namespace == namespace)
        .filter(|owner| {
            parse_selector(selector_of(owner)).ok().flatten().is_some_and(|s| selects(&s, child.meta().labels.as_ref()))
        })
        .map(|owner| ObjectRef::from(owner.as_ref()))
        .collect()
}

/// Kubernetes' ControllerRefManager: of `candidates` (objects in the owner's namespace), returns those the
/// owner controls after adopting orphans its selector matches and releasing its own that no longer match.
/// A `None` selector matches nothing.
pub(crate) async fn claim<Owner, Child>(
    children: &Api<Child>,
    owners: &Api<Owner>,
    owner: &Owner,
    selector: Option<&selectors::LabelSelector>,
    candidates: Vec<Arc<Child>>,
) -> Result<Vec<Arc<Child>>, kube::Error>
where
    Owner: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    Child: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let uid = owner.uid().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let matches = |child: &Child| selector.is_some_and(|s| selects(s, child.meta().labels.as_ref()));
    let mut fresh_owner_checked = false;
    let mut claimed = Vec::new();
    for child in candidates {
        match controller_of(child.meta()) {
            Some(reference) if reference.uid != uid => {}
            Some(_) if matches(&child) => claimed.push(child),
            Some(_) => {
                if owner_deleting {
                    continue;
                }
                let references: Vec<&OwnerReference> =
                    child.meta().owner_references.iter().flatten().filter(|o| o.uid != uid).collect();
                let patch = json!({"metadata": {
                    "ownerReferences": references,
                    "resourceVersion": child.resource_version(),
                }});
                match children.patch(&child.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => tracing::info!(object = %child.name_any(), "released"),
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => return Err(error),
                }
            }
            None => {
                if owner_deleting || child.meta().deletion_timestamp.is_some() || !matches(&child) {
                    continue;
                }
                // Adopt only for an owner that still exists as this very object, as Kubernetes rechecks.
                if !fresh_owner_checked {
                    let fresh = owners.get(&owner.name_any()).await?;
                    if fresh.uid() != owner.uid() || fresh.meta().deletion_timestamp.is_some() {
                        return Ok(claimed);
                    }
                    fresh_owner_checked = true;
                }
                let mut references = child.meta().owner_references.clone().unwrap_or_default();
                references.push(owner_reference(owner));
                let patch = json!({"metadata": {
                    "ownerReferences": references,
                    "resourceVersion": child.resource_version(),
                }});
                match children.patch(&child.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(adopted) => {
                        tracing::info!(object = %child.name_any(), "adopted");
                        claimed.push(Arc::new(adopted));
                    }
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => return Err(error),
                }
            }
        }
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, created: &str, node: Option<&str>, phase: &str, ready_since: Option<&str>) -> Arc<Pod> {
        let conditions = ready_since
            .map(|at| json!([{"type": "Ready", "status": "True", "lastTransitionTime": at}]))
            .unwrap_or(json!([{"type": "Ready", "status": "False"}]));
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created, "labels": {"app": "web", "tier": "x"}},
                "spec": {"containers": [], "nodeName": node},
                "status": {"phase": phase, "conditions": conditions},
            }))
            .unwrap(),
        )
    }

    fn names(mut pods: Vec<Arc<Pod>>, now: Timestamp) -> Vec<String> {
        let colocated = colocation(&pods);
        pods.sort_by(|a, b| delete_first(a, b, &colocated, now));
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn surplus_pods_go_unscheduled_pending_unready_newest_first() {
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let pods = vec![
            pod("running-old", "2026-01-01T00:00:00Z", Some("n1"), "Running", Some("2026-01-01T00:00:10Z")),
            pod("running-new", "2026-01-01T00:30:00Z", Some("n2"), "Running", Some("2026-01-01T00:30:10Z")),
            pod("unready", "2026-01-01T00:00:00Z", Some("n3"), "Running", None),
            pod("pending", "2026-01-01T00:00:00Z", Some("n4"), "Pending", None),
            pod("unscheduled", "2026-01-01T00:00:00Z", None, "Pending", None),
        ];
        assert_eq!(names(pods, now), ["unscheduled", "pending", "unready", "running-new", "running-old"]);
        let crowded = vec![
            pod("alone", "2026-01-01T00:00:00Z", Some("n1"), "Running", Some("2026-01-01T00:00:10Z")),
            pod("shared-a", "2026-01-01T00:00:00Z", Some("n2"), "Running", Some("2026-01-01T00:00:10Z")),
            pod("shared-b", "2026-01-01T00:00:00Z", Some("n2"), "Running", Some("2026-01-01T00:00:10Z")),
        ];
        assert_eq!(names(crowded, now)[2], "alone", "pods on crowded nodes go first");
    }

    #[test]
    fn status_counts_labelled_ready_and_available_pods() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 4},
            "spec": {"replicas": 3, "minReadySeconds": 60, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "x"}}}},
        }))
        .unwrap();
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let pods = vec![
            pod("a", "2026-01-01T00:00:00Z", Some("n1"), "Running", Some("2026-01-01T00:00:10Z")),
            pod("b", "2026-01-01T00:00:00Z", Some("n1"), "Running", Some("2026-01-01T00:59:30Z")),
            pod("c", "2026-01-01T00:00:00Z", Some("n1"), "Pending", None),
        ];
        let status = status(&rs, &pods, None, now);
        assert_eq!(
            (status.replicas, status.fully_labeled_replicas, status.ready_replicas, status.available_replicas),
            (3, Some(3), Some(2), Some(1)),
            "b is ready but not for minReadySeconds yet"
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(next_availability(&pods, 60, now), Some(Duration::from_secs(30) + Duration::from_millis(100)));
        let failed = super::status(&rs, &pods[..1], Some("quota".into()), now);
        let condition = &failed.conditions.unwrap()[0];
        assert_eq!((condition.type_.as_str(), condition.reason.as_deref()), ("ReplicaFailure", Some("FailedCreate")));
    }

    #[test]
    fn expectations_wait_for_the_watch_to_see_each_write() {
        let expectations = Expectations::default();
        let (cache, _writer) = reflector::store::<Pod>();
        expectations.expect("ns/web", 2, HashSet::from(["old".to_string()]));
        assert!(!expectations.satisfied("ns/web"));
        let created: Pod = serde_json::from_value(json!({"metadata": {"name": "web-abcde", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]}}))
        .unwrap();
        let observe = |event: watcher::Event<Pod>| {
            Expectations::sort_out(&cache, &event).into_iter().for_each(|seen| expectations.record(seen))
        };
        observe(watcher::Event::Apply(created.clone()));
        observe(watcher::Event::Apply(created.clone()));
        assert!(!expectations.satisfied("ns/web"), "the old pod's deletion is not seen yet");
        let mut old = created;
        old.metadata.name = Some("old".into());
        observe(watcher::Event::Delete(old));
        assert!(expectations.satisfied("ns/web"));
    }

    #[test]
    fn orphans_trigger_the_owners_whose_selector_matches() {
        let (owners, mut writer) = reflector::store::<ReplicaSet>();
        for (name, app) in [("web", "web"), ("api", "api")] {
            let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": app}}}}))
            .unwrap();
            writer.apply_watcher_event(&watcher::Event::Apply(rs));
        }
        let orphan: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}}}))
                .unwrap();
        assert_eq!(triggers(&orphan, &owners, replicaset_selector), vec![ObjectRef::new("web").within("ns")]);
        let mut owned = orphan.clone();
        owned.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: "api".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert_eq!(triggers(&owned, &owners, replicaset_selector), vec![ObjectRef::new("api").within("ns")]);
    }
}
