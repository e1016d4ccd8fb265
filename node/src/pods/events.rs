//! Events about pods, as the kubelet records them (source `kubelet`, the node as host), aggregated: a repeat
//! of the same reason and message for the same object bumps `count` and `lastTimestamp` instead of adding a
//! new Event, so a crash-looping pod does not flood the store.
//!
//! Recording never waits for the API: events go through a queue to one writer task, which keeps them in
//! order and keeps API round trips off a pod's start path.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

use super::PodRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// What makes two events the same: pod uid, field path, reason, message.
type EventKey = (String, String, String, String);

/// The queue side: cheap to call from any task.
pub struct Recorder {
    queue: mpsc::UnboundedSender<Message>,
}

enum Message {
    Record(Box<Request>),
    /// A pod is gone: drop its aggregation state.
    Forget(String),
}

struct Request {
    pod: PodRef,
    container: Option<String>,
    kind: Kind,
    reason: String,
    message: String,
    /// When it happened, not when the writer got to it.
    time: String,
}

struct Writer {
    client: kube::Client,
    node: String,
    /// Each event recorded so far -> (its Event's name, count).
    seen: HashMap<EventKey, (String, i32)>,
}

impl Recorder {
    /// Starts the writer task; it ends when the last Recorder handle is dropped.
    pub fn new(client: kube::Client, node: String) -> Self {
        let (queue, mut messages) = mpsc::unbounded_channel();
        let mut writer = Writer { client, node, seen: HashMap::new() };
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                match message {
                    Message::Record(request) => writer.record(*request).await,
                    Message::Forget(uid) => writer.seen.retain(|(pod, ..), _| pod != &uid),
                }
            }
        });
        Self { queue }
    }

    /// Queues an event about `pod` (and its `container`, if given). Never fails: an event that cannot be
    /// written must not stop a pod.
    pub fn record(&self, pod: &PodRef, container: Option<&str>, kind: Kind, reason: &str, message: &str) {
        let request = Request {
            pod: pod.clone(),
            container: container.map(str::to_string),
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
            time: crate::now(),
        };
        let _ = self.queue.send(Message::Record(Box::new(request)));
    }

    /// Forgets the aggregation state of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        let _ = self.queue.send(Message::Forget(uid.to_string()));
    }
}

impl Writer {
    async fn record(&mut self, request: Request) {
        let Request { pod, container, kind, reason, message, time: now } = request;
        let (container, reason, message) = (container.as_deref(), reason.as_str(), message.as_str());
        let PodRef { namespace, name: pod_name, uid } = pod;
        let field_path = container.map(|c| format!("spec.containers{{{c}}}")).unwrap_or_default();
        let key = (uid.clone(), field_path.clone(), reason.to_string(), message.to_string());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let existing = self.seen.get(&key).cloned();
        let result = match existing {
            Some((name, count)) => {
                let patch = json!({"count": count + 1, "lastTimestamp": now});
                let result = events.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ());
                if result.is_ok() {
                    self.seen.insert(key, (name, count + 1));
                }
                result
            }
            None => {
                let name = format!("{pod_name}.{:016x}", rand::random::<u64>());
                let mut involved =
                    json!({"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": pod_name, "uid": uid});
                if !field_path.is_empty() {
                    involved["fieldPath"] = json!(field_path);
                }
                let event = json!({
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": involved,
                    "reason": reason,
                    "message": message,
                    "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
                    "source": {"component": "kubelet", "host": self.node},
                    "reportingComponent": "kubelet",
                    "reportingInstance": self.node,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                });
                match serde_json::from_value::<Event>(event) {
                    Ok(event) => {
                        let result = events.create(&PostParams::default(), &event).await.map(|_| ());
                        if result.is_ok() {
                            self.seen.insert(key, (name, 1));
                        }
                        result
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build an event");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(reason, error = %e, "cannot record an event");
        }
    }
}
