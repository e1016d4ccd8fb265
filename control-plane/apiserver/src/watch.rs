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
                            match translate(&request.list, &event) {
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
fn translate(list: &ListOptions, event: &Event) -> Result<Option<(&'static str, Value)>, ApiError> {
    let previous = match &event.prev {
        Some(prev) => Some(objects::decode(prev)?),
        None => None,
    };
    let was_selected = previous.as_ref().is_some_and(|p| list.matches(p));
    match event.kind {
        EventKind::Put => {
            let object = objects::decode(&event.kv)?;
            let selected = list.matches(&object);
            Ok(match (was_selected, selected) {
                (_, true) if previous.is_none() => Some(("ADDED", object)),
                (true, true) => Some(("MODIFIED", object)),
                (false, true) => Some(("ADDED", object)),
                (true, false) => Some(("DELETED", object)),
                (false, false) => None,
            })
        }
        EventKind::Delete => {
            let object = objects::decode(&event.kv)?;
            Ok((was_selected || list.matches(&object)).then_some(("DELETED", object)))
        }
    }
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
