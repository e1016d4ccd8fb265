//! Watch: a chunked stream of `{"type": ..., "object": ...}` lines, replayed from a resourceVersion through
//! the store's own watch, filtered by selectors, ended by timeoutSeconds or server shutdown.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::resources::ResourceDef;
use skiff_store::{Event, EventKind, Revision};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::objects::{self, ListOptions, Objects};

/// How often a watch that asked for bookmarks gets one: client-go only needs them now and then to resume
/// without a relist, and kube-apiserver sends them about once a minute.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// A watch that asked for no timeout ends after this long, like kube-apiserver's (which picks 30–60 min);
/// clients re-establish it from the last resourceVersion.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct WatchRequest {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub list: ListOptions,
    pub resource_version: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub as_table: bool,
}

/// Starts a watch; the returned channel yields the encoded lines until the watch ends.
pub async fn start(
    objects: &Objects,
    request: WatchRequest,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let def = request.def;
    let ns = request.namespace.as_deref();
    let replay_from = match request.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse::<Revision>().map_err(|_| {
            ApiError::BadRequest(format!("resourceVersion: Invalid value: \"{rv}\": must be a number"))
        })?),
    };
    let (initial, after) = match replay_from {
        Some(rv) if !request.send_initial_events => (Vec::new(), rv),
        _ => {
            let list =
                objects.list(def, ns, &ListOptions { limit: 0, continue_token: None, ..request.list.clone() }).await?;
            (list.items, list.resource_version)
        }
    };
    let store_watch = objects.store().watch(&objects::prefix(def, ns), after).await;
    let (tx, rx) = mpsc::channel(256);
    let span = tracing::debug_span!("watch", resource = def.plural, namespace = ns.unwrap_or(""));
    tokio::spawn(
        async move {
            let mut encoder = Encoder { def, as_table: request.as_table, columns_sent: false };
            for object in initial {
                if tx.send(encoder.line("ADDED", object)).await.is_err() {
                    return;
                }
            }
            if request.send_initial_events && request.bookmarks {
                let bookmark = bookmark(def, after, true);
                if tx.send(encoder.raw("BOOKMARK", bookmark)).await.is_err() {
                    return;
                }
            }
            let mut events = match store_watch {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(encoder.raw("ERROR", ApiError::from(e).status())).await;
                    return;
                }
            };
            let deadline = tokio::time::sleep(request.timeout.unwrap_or(DEFAULT_TIMEOUT));
            tokio::pin!(deadline);
            let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
            ticker.tick().await;
            let mut last = after;
            loop {
                let line = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = ticker.tick(), if request.bookmarks => encoder.raw("BOOKMARK", bookmark(def, last, false)),
                    event = events.next() => match event {
                        None => return,
                        Some(Err(e)) => {
                            let _ = tx.send(encoder.raw("ERROR", ApiError::from(e).status())).await;
                            return;
                        }
                        Some(Ok(event)) => {
                            last = event.kv.mod_revision;
                            match translate(def, &request.list, &event) {
                                Ok(Some((kind, object))) => encoder.line(kind, object),
                                Ok(None) => continue,
                                Err(e) => {
                                    let _ = tx.send(encoder.raw("ERROR", e.status())).await;
                                    return;
                                }
                            }
                        }
                    },
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        .instrument(span),
    );
    Ok(rx)
}

/// What a store event means to a watcher with these selectors: objects entering the selection are ADDED,
/// leaving it DELETED, as kube-apiserver's watch cache reports them.
fn translate(def: &ResourceDef, list: &ListOptions, event: &Event) -> Result<Option<(&'static str, Value)>, ApiError> {
    // Only a selective watch needs the previous state (to see objects enter or leave the selection);
    // decoding it for every event of every plain watch would be wasted work.
    let was_selected = match &event.prev {
        None => false,
        Some(_) if list.labels.is_none() && list.fields.is_none() => true,
        Some(prev) => list.matches(&objects::decode_as(def, prev)?),
    };
    let object = objects::decode_as(def, &event.kv)?;
    let selected = list.matches(&object);
    Ok(match (event.kind, was_selected, selected) {
        (EventKind::Delete, was, now) => (was || now).then_some(("DELETED", object)),
        (EventKind::Put, true, true) => Some(("MODIFIED", object)),
        (EventKind::Put, false, true) => Some(("ADDED", object)),
        (EventKind::Put, true, false) => Some(("DELETED", object)),
        (EventKind::Put, false, false) => None,
    })
}

fn bookmark(def: &ResourceDef, revision: Revision, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": metadata})
}

struct Encoder {
    def: &'static ResourceDef,
    as_table: bool,
    columns_sent: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, object: Value) -> Bytes {
        if !self.as_table {
            return self.raw(kind, object);
        }
        let mut table = skiff_api::table::table(self.def, &[object], json!({}), jiff::Timestamp::now());
        // Like kube-apiserver, only the first event of a stream carries the column definitions.
        if self.columns_sent {
            table["columnDefinitions"] = Value::Null;
        }
        self.columns_sent = true;
        self.raw(kind, table)
    }

    fn raw(&self, kind: &str, object: Value) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::selectors::LabelSelector;
    use skiff_store::KeyValue;

    fn kv(revision: i64, labels: Value) -> KeyValue {
        let object = json!({"metadata": {"name": "a", "labels": labels}});
        KeyValue { key: "/k".into(), value: object.to_string().into(), create_revision: 1, mod_revision: revision }
    }

    fn put(prev: Option<Value>, now: Value) -> Event {
        Event { kind: EventKind::Put, kv: kv(3, now), prev: prev.map(|p| kv(2, p)) }
    }

    fn kind(list: &ListOptions, event: &Event) -> Option<&'static str> {
        let pods = skiff_api::resources::find("", "v1", "pods").unwrap();
        translate(pods, list, event).unwrap().map(|(kind, _)| kind)
    }

    #[test]
    fn objects_entering_and_leaving_a_selection_are_added_and_deleted() {
        let list = ListOptions { labels: Some(LabelSelector::parse("app=web").unwrap()), ..ListOptions::default() };
        let web = json!({"app": "web"});
        let other = json!({"app": "db"});
        assert_eq!(kind(&list, &put(None, web.clone())), Some("ADDED"));
        assert_eq!(kind(&list, &put(Some(web.clone()), web.clone())), Some("MODIFIED"));
        assert_eq!(kind(&list, &put(Some(other.clone()), web.clone())), Some("ADDED"), "entering the selection");
        assert_eq!(kind(&list, &put(Some(web.clone()), other.clone())), Some("DELETED"), "leaving the selection");
        assert_eq!(kind(&list, &put(Some(other.clone()), other.clone())), None);
        let deleted = Event { kind: EventKind::Delete, kv: kv(4, web.clone()), prev: Some(kv(3, web)) };
        assert_eq!(kind(&list, &deleted), Some("DELETED"));

        let everything = ListOptions::default();
        assert_eq!(kind(&everything, &put(Some(other.clone()), other)), Some("MODIFIED"));
    }
}
