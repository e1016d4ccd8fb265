//! The scheduler: places each pod that names no node (and whose schedulerName is `default-scheduler` or
//! empty) on a node, as kube-scheduler does, simplified.
//!
//! Watches on Nodes and Pods feed the [`cache`] (every node with the pods counted on it); a reflector keeps
//! the RuntimeClasses. Pending pods wait in the [`queue`]; each is placed by [`cache::Cache::place`] —
//! [`filter`] the nodes, [`score`] the feasible ones — then assumed onto the chosen node and bound through
//! `pods/binding` while the loop goes on to the next pod, up to [`MAX_IN_FLIGHT`] requests at once. A pod
//! that fits nowhere gets PodScheduled=False/Unschedulable with kube-scheduler's message and one
//! FailedScheduling event per distinct message, and is retried when nodes, RuntimeClasses or room change,
//! and every [`RETRY_PARKED`].
//!
//! Architecture invariant: everything under `filter`, `score`, `cache` and `queue` is pure; the API is
//! spoken to only here.

mod cache;
mod filter;
mod info;
mod queue;
mod score;

use std::collections::HashSet;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Metrics;
use crate::events::{Kind, Recorder};
use cache::Cache;
use info::PodInfo;
use queue::Queue;

/// The schedulerName this scheduler answers to (and the event source it records as).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings and status reports in flight at once: enough to hide a round trip per pod, few enough that
/// the API server's other clients are not crowded out.
pub const MAX_IN_FLIGHT: usize = 64;
/// How often parked (unschedulable) pods are retried when nothing they might wait for has changed
/// (kube-scheduler: 5 minutes).
pub const RETRY_PARKED: Duration = Duration::from_secs(30);
/// How often a change in the cluster releases the parked pods: a burst of changes costs one retry.
const RETRY_TICK: Duration = Duration::from_secs(1);
/// Watch events applied before placing again, so the cache is fresh but a flood cannot stall placement.
const DRAIN_LIMIT: usize = 1024;
/// Placements per turn of the loop before it looks at the watches again.
const PLACE_BUDGET: usize = 256;

/// Watch events, boxed: a Pod is two kilobytes and the streams move every event.
enum Input {
    Node(Box<Event<Node>>),
    Pod(Box<Event<Pod>>),
    /// A RuntimeClass changed; true once the first full list is in.
    Classes(bool),
}

/// What a background request reports back to the loop.
enum Done {
    Bound { uid: String, pod: PodRef, node: String, result: Result<(), kube::Error> },
    Reported { uid: String, result: Result<(), kube::Error> },
}

/// The pod a request is about: enough for its Api, its event and its span.
#[derive(Clone)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl PodRef {
    fn of(info: &PodInfo) -> Self {
        PodRef { namespace: info.namespace.clone(), name: info.name.clone(), uid: info.uid.clone() }
    }

    /// The minimal Pod the event recorder needs to name the involved object.
    fn subject(&self) -> Pod {
        let metadata = ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..ObjectMeta::default()
        };
        Pod { metadata, ..Pod::default() }
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("schedule", pod = %format_args!("{}/{}", self.namespace, self.name))
    }
}

/// Runs the scheduler until `shutdown`; bindings in flight are abandoned then (a new leader's watch sees
/// whichever landed).
pub async fn run(client: kube::Client, metrics: Metrics, shutdown: CancellationToken) {
    let (classes, writer) = reflector::store();
    let class_events = reflect(writer, watcher(Api::<RuntimeClass>::all(client.clone())))
        .map(|event| event.map(|e| Input::Classes(matches!(e, Event::InitDone))));
    let node_events = watcher(Api::<Node>::all(client.clone())).map(|e| e.map(|e| Input::Node(Box::new(e))));
    let pod_events = watcher(Api::<Pod>::all(client.clone())).map(|e| e.map(|e| Input::Pod(Box::new(e))));
    let mut inputs = futures::stream::select_all([class_events.boxed(), node_events.boxed(), pod_events.boxed()]);
    let mut scheduler = Scheduler::new(client, classes, metrics);
    let mut tick = tokio::time::interval(RETRY_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!("scheduler started");
    loop {
        let more = scheduler.can_place();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = scheduler.requests.join_next() => scheduler.finished(done),
            input = inputs.next() => match input {
                Some(input) => scheduler.apply(input),
                None => break,
            },
            _ = tick.tick() => scheduler.retry_parked(),
            _ = tokio::task::yield_now(), if more => {}
        }
        for _ in 0..DRAIN_LIMIT {
            let Some(Some(input)) = inputs.next().now_or_never() else { break };
            scheduler.apply(input);
        }
        scheduler.place_pending();
    }
    tracing::info!("scheduler stopped");
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// Relisting after a watch restart: what the new list showed, to drop what it no longer does.
#[derive(Default)]
struct Listing {
    seen: Option<HashSet<String>>,
    synced: bool,
}

impl Listing {
    fn start(&mut self) {
        self.seen = Some(HashSet::new());
    }

    fn saw(&mut self, key: &str) {
        if let Some(seen) = &mut self.seen {
            seen.insert(key.to_owned());
        }
    }

    /// The keys of `known` the list did not show.
    fn finish<'a>(&mut self, known: impl Iterator<Item = &'a str>) -> Vec<String> {
        self.synced = true;
        let Some(seen) = self.seen.take() else { return Vec::new() };
        known.filter(|k| !seen.contains(*k)).map(str::to_owned).collect()
    }
}

struct Scheduler {
    client: kube::Client,
    cache: Cache,
    queue: Queue,
    classes: Store<RuntimeClass>,
    classes_synced: bool,
    nodes: Listing,
    pods: Listing,
    recorder: Recorder,
    requests: JoinSet<Done>,
    /// Something changed that parked pods may have waited for.
    changed: bool,
    last_retry: Instant,
    metrics: Metrics,
}

impl Scheduler {
    fn new(client: kube::Client, classes: Store<RuntimeClass>, metrics: Metrics) -> Self {
        Scheduler {
            recorder: Recorder::new(client.clone(), SCHEDULER_NAME),
            client,
            cache: Cache::default(),
            queue: Queue::default(),
            classes,
            classes_synced: false,
            nodes: Listing::default(),
            pods: Listing::default(),
            requests: JoinSet::new(),
            changed: false,
            last_retry: Instant::now(),
            metrics,
        }
    }

    /// Placing waits for the first full lists, so that no pod is judged against half a cluster.
    fn can_place(&self) -> bool {
        self.classes_synced
            && self.nodes.synced
            && self.pods.synced
            && !self.queue.is_empty()
            && self.requests.len() < MAX_IN_FLIGHT
    }

    fn apply(&mut self, input: Result<Input, watcher::Error>) {
        match input {
            Err(error) => tracing::warn!(%error, "scheduler watch failed; retrying"),
            Ok(Input::Classes(synced)) => {
                self.classes_synced |= synced;
                self.changed = true;
            }
            Ok(Input::Node(event)) => match *event {
                Event::Init => self.nodes.start(),
                Event::InitApply(node) => {
                    self.nodes.saw(&node.name_any());
                    self.node_changed(&node);
                }
                Event::Apply(node) => self.node_changed(&node),
                Event::Delete(node) => self.cache.delete_node(&node.name_any()),
                Event::InitDone => {
                    for gone in self.nodes.finish(self.cache.node_names()) {
                        self.cache.delete_node(&gone);
                    }
                }
            },
            Ok(Input::Pod(event)) => match *event {
                Event::Init => self.pods.start(),
                Event::InitApply(pod) => {
                    self.pods.saw(pod.metadata.uid.as_deref().unwrap_or_default());
                    self.pod_changed(&pod);
                }
                Event::Apply(pod) => self.pod_changed(&pod),
                Event::Delete(pod) => self.pod_deleted(pod.metadata.uid.as_deref().unwrap_or_default()),
                Event::InitDone => {
                    for gone in self.pods.finish(self.cache.pod_uids()) {
                        self.pod_deleted(&gone);
                    }
                }
            },
        }
    }

    fn node_changed(&mut self, node: &Node) {
        self.changed |= self.cache.apply_node(node);
    }

    fn pod_changed(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else { return };
        let update = self.cache.apply_pod(pod, SCHEDULER_NAME);
        if update.pending {
            self.queue.push(uid);
        } else {
            self.queue.remove(uid);
        }
        self.changed |= update.freed;
    }

    fn pod_deleted(&mut self, uid: &str) {
        self.changed |= self.cache.delete_pod(uid);
        self.queue.remove(uid);
    }

    fn place_pending(&mut self) {
        for _ in 0..PLACE_BUDGET {
            if !self.can_place() {
                return;
            }
            if let Some(uid) = self.queue.pop() {
                self.place(&uid);
            }
        }
    }

    fn place(&mut self, uid: &str) {
        let Some(entry) = self.cache.pod(uid).filter(|e| e.pending) else { return };
        let info = entry.info.clone();
        let pod = PodRef::of(&info);
        let span = pod.span();
        let _entered = span.enter();
        let handler = self.runtime_handler(&info);
        match self.cache.place(&info, handler.as_ref().map(Option::as_deref).map_err(String::clone)) {
            Ok(node) => {
                self.cache.assume(uid, &node);
                tracing::debug!(%node, "assumed");
                let pods = Api::namespaced(self.client.clone(), &pod.namespace);
                let uid = uid.to_owned();
                let request = async move {
                    let result = bind(&pods, &pod.name, &node).await;
                    Done::Bound { uid, pod, node, result }
                };
                self.requests.spawn(request.instrument(span.clone()));
            }
            Err(diagnosis) => {
                self.metrics.attempted("unschedulable");
                self.queue.park(uid);
                let message = diagnosis.message();
                if !self.cache.note_reported(uid, &message) {
                    tracing::debug!(%message, "still unschedulable");
                    return;
                }
                tracing::info!(%message, "unschedulable");
                self.recorder.record(&pod.subject(), Kind::Warning, "FailedScheduling", message.clone());
                let pods = Api::namespaced(self.client.clone(), &pod.namespace);
                let uid = uid.to_owned();
                let request = async move {
                    let result = report_unschedulable(&pods, &pod.name, &message).await;
                    Done::Reported { uid, result }
                };
                self.requests.spawn(request.instrument(span.clone()));
            }
        }
    }

    /// The handler the pod's RuntimeClass names (none without a class), or why there is none.
    fn runtime_handler(&self, pod: &PodInfo) -> Result<Option<String>, String> {
        let Some(class) = &pod.runtime_class else { return Ok(None) };
        match self.classes.get(&ObjectRef::new(class)) {
            Some(class) => Ok(Some(class.handler.clone())),
            None => Err(format!("RuntimeClass \"{class}\" not found")),
        }
    }

    fn finished(&mut self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok(Done::Bound { pod, node, result: Ok(()), .. }) => {
                let _entered = pod.span().entered();
                tracing::debug!(%node, "bound");
                self.metrics.attempted("scheduled");
                let message = format!("Successfully assigned {}/{} to {node}", pod.namespace, pod.name);
                self.recorder.record(&pod.subject(), Kind::Normal, "Scheduled", message);
            }
            Ok(Done::Bound { uid, pod, node, result: Err(error) }) => {
                let _entered = pod.span().entered();
                tracing::warn!(%node, %error, "binding failed; retrying");
                self.metrics.attempted("error");
                if self.cache.forget(&uid) {
                    self.queue.park(&uid);
                    self.changed = true;
                }
            }
            Ok(Done::Reported { result: Ok(()), .. }) => {}
            Ok(Done::Reported { uid, result: Err(error) }) => {
                tracing::warn!(%error, "cannot set PodScheduled=False; reporting again at the next attempt");
                self.cache.clear_reported(&uid);
            }
            Err(error) => tracing::error!(%error, "a scheduler request panicked"),
        }
    }

    fn retry_parked(&mut self) {
        if self.changed || self.last_retry.elapsed() >= RETRY_PARKED {
            self.queue.unpark_all();
            self.changed = false;
            self.last_retry = Instant::now();
        }
    }
}

async fn bind(pods: &Api<Pod>, name: &str, node: &str) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    };
    pods.create_subresource::<_, serde::de::IgnoredAny>("binding", name, &PostParams::default(), &binding).await?;
    Ok(())
}

/// Sets PodScheduled=False/Unschedulable, merged by condition type into the pod's other conditions.
async fn report_unschedulable(pods: &Api<Pod>, name: &str, message: &str) -> Result<(), kube::Error> {
    let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": Time(jiff::Timestamp::now())});
    let patch = Patch::Strategic(json!({"status": {"conditions": [condition]}}));
    pods.patch_status(name, &PatchParams::default(), &patch).await?;
    Ok(())
}
