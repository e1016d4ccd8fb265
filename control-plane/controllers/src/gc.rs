//! Garbage collection by ownerReferences, as Kubernetes' garbage collector does it: a graph of every object's
//! owners, fed by metadata watches on every served kind, and workers that look at the objects a change
//! concerns.
//!
//! - An object whose owners are all gone is deleted (in the background; its own dependents follow the same
//!   way). Gone owners beside a live one are only dropped from its ownerReferences.
//! - An owner being deleted with the `foregroundDeletion` finalizer (propagationPolicy=Foreground) has its
//!   dependents deleted first, and loses the finalizer once no dependent with blockOwnerDeletion is left.
//! - An owner being deleted with the `orphan` finalizer (propagationPolicy=Orphan) is removed from its
//!   dependents' ownerReferences, then loses the finalizer.
//!
//! An owner missing from the graph is looked up live before anything is deleted, as the graph may lag.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_api::resources::{self, ResourceDef};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
/// Kinds left out of the graph, as Kubernetes leaves out events: they churn, and nothing owns or is owned
/// by them here (node Leases carry no ownerReferences).
const IGNORED: [&str; 2] = ["events", "leases"];
const WORKERS: usize = 8;
const RETRY: Duration = Duration::from_secs(2);

/// What the graph keeps of one object.
#[derive(Clone)]
struct Item {
    kind: &'static ResourceDef,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Item {
    fn waits_for(&self, finalizer: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == finalizer)
    }

    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        api(client, self.kind, self.namespace.as_deref())
    }
}

fn api_resource(def: &ResourceDef) -> ApiResource {
    ApiResource {
        group: def.group.into(),
        version: def.version.into(),
        api_version: def.api_version(),
        kind: def.kind.into(),
        plural: def.plural.into(),
    }
}

fn api(client: &kube::Client, def: &ResourceDef, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace.filter(|_| def.namespaced) {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &api_resource(def)),
        None => Api::all_with(client.clone(), &api_resource(def)),
    }
}

/// What to do about one object, given the graph.
#[derive(Debug, PartialEq)]
enum Decision {
    Nothing,
    /// These owners are not in the graph: look them up before deciding.
    Verify(Vec<OwnerReference>),
    /// Every owner is gone (or waiting for its dependents): delete the object.
    Delete(PropagationPolicy),
    /// Some owners are gone but not all: drop the gone ones (by uid).
    DropOwners(Vec<String>),
    /// A foreground deletion: delete these dependents (by uid), then wait for them.
    DeleteDependents(Vec<String>),
    /// Detach these dependents (by uid), then remove the `orphan` finalizer.
    Orphan(Vec<String>),
    RemoveFinalizer(&'static str),
}

#[derive(Default)]
struct Graph {
    items: HashMap<String, Item>,
    /// Owner uid → uids of the objects naming it, whether or not the owner is in the graph.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records an object; returns the uids to look at because of the change.
    fn upsert(&mut self, uid: &str, item: Item) -> Vec<String> {
        let old = self.items.insert(uid.to_string(), item.clone());
        let mut work = Vec::new();
        let old_owners: HashSet<&str> = old.iter().flat_map(|o| o.owners.iter().map(|r| r.uid.as_str())).collect();
        let new_owners: HashSet<&str> = item.owners.iter().map(|r| r.uid.as_str()).collect();
        for gone in old_owners.difference(&new_owners) {
            self.unlink(gone, uid);
            // A foreground deletion may have been waiting for this dependent only.
            work.push(gone.to_string());
        }
        for added in new_owners.difference(&old_owners) {
            self.dependents.entry(added.to_string()).or_default().insert(uid.to_string());
        }
        let owners_changed = old.as_ref().is_none_or(|o| o.owners != item.owners);
        if owners_changed && !item.owners.is_empty() {
            work.push(uid.to_string());
        }
        let pending = |i: &Item| i.waits_for(FOREGROUND) || i.waits_for(ORPHAN);
        if pending(&item) && old.as_ref().is_none_or(|o| !pending(o) || o.finalizers != item.finalizers) {
            work.push(uid.to_string());
            if item.waits_for(FOREGROUND) {
                work.extend(self.dependents.get(uid).into_iter().flatten().cloned());
            }
        }
        work
    }

    /// Forgets a deleted object; returns the uids to look at because of it.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(item) = self.items.remove(uid) else { return Vec::new() };
        let mut work: Vec<String> = self.dependents.get(uid).into_iter().flatten().cloned().collect();
        for owner in &item.owners {
            self.unlink(&owner.uid, uid);
            if self.items.get(&owner.uid).is_some_and(|o| o.deleting) {
                work.push(owner.uid.clone());
            }
        }
        work
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        let mut dependents: Vec<String> =
            self.dependents.get(uid).into_iter().flatten().filter(|d| self.items.contains_key(*d)).cloned().collect();
        dependents.sort();
        dependents
    }

    /// What to do about `uid`; `verified` holds live lookups of owners missing from the graph (true: exists).
    fn decide(&self, uid: &str, verified: &HashMap<String, bool>) -> Decision {
        let Some(item) = self.items.get(uid) else { return Decision::Nothing };
        if item.waits_for(ORPHAN) {
            let dependents = self.dependents_of(uid);
            return if dependents.is_empty() {
                Decision::RemoveFinalizer(ORPHAN)
            } else {
                Decision::Orphan(dependents)
            };
        }
        if item.waits_for(FOREGROUND) {
            let dependents = self.dependents_of(uid);
            let blocking = dependents
                .iter()
                .any(|d| self.items[d].owners.iter().any(|o| o.uid == uid && o.block_owner_deletion == Some(true)));
            if !blocking {
                return Decision::RemoveFinalizer(FOREGROUND);
            }
            let doomed: Vec<String> = dependents.into_iter().filter(|d| !self.items[d].deleting).collect();
            return if doomed.is_empty() { Decision::Nothing } else { Decision::DeleteDependents(doomed) };
        }
        if item.deleting || item.owners.is_empty() {
            return Decision::Nothing;
        }
        let (mut solid, mut absent, mut waiting, mut unknown) = (false, Vec::new(), false, Vec::new());
        for owner in &item.owners {
            match (self.items.get(&owner.uid), verified.get(&owner.uid)) {
                (Some(o), _) if o.waits_for(FOREGROUND) => waiting = true,
                (Some(_), _) | (None, Some(true)) => solid = true,
                (None, Some(false)) => absent.push(owner.uid.clone()),
                (None, None) => unknown.push(owner.clone()),
            }
        }
        match () {
            _ if !unknown.is_empty() => Decision::Verify(unknown),
            _ if solid && absent.is_empty() => Decision::Nothing,
            _ if solid => Decision::DropOwners(absent),
            // Owners waiting for their dependents wait for this one's dependents too.
            _ if waiting && !self.dependents_of(uid).is_empty() => Decision::Delete(PropagationPolicy::Foreground),
            _ => Decision::Delete(PropagationPolicy::Background),
        }
    }
}

/// The objects to look at, each queued at most once at a time.
#[derive(Clone)]
struct Queue {
    sender: mpsc::UnboundedSender<String>,
    queued: Arc<Mutex<HashSet<String>>>,
}

impl Queue {
    fn push(&self, uid: String) {
        if self.queued.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone()) {
            let _ = self.sender.unbounded_send(uid);
        }
    }

    fn take(&self, uid: &str) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

struct Collector {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: Queue,
}

/// Runs the garbage collector until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    // One version of each resource: the others are views of the same objects.
    let kinds: Vec<&'static ResourceDef> =
        resources::all().iter().filter(|d| d.is_storage() && !IGNORED.contains(&d.plural)).collect();
    let (sender, receiver) = mpsc::unbounded();
    let collector = Arc::new(Collector {
        client: client.clone(),
        graph: Mutex::new(Graph::default()),
        queue: Queue { sender, queued: Arc::default() },
    });
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let watches = futures::stream::select_all(kinds.iter().map(|&def| {
        let metadata: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &api_resource(def));
        watcher(metadata, watcher::Config::default()).default_backoff().map(move |event| (def, event)).boxed()
    }));
    let ingest = {
        let collector = collector.clone();
        async move {
            let mut relisting: HashMap<&str, HashSet<String>> = HashMap::new();
            let mut synced: HashSet<&str> = HashSet::new();
            let mut watches = watches;
            while let Some((def, event)) = watches.next().await {
                let work = match event {
                    Ok(watcher::Event::Init) => {
                        relisting.insert(def.plural, HashSet::new());
                        Vec::new()
                    }
                    Ok(watcher::Event::InitApply(object)) => {
                        relisting.entry(def.plural).or_default().extend(object.uid());
                        collector.observe(def, &object)
                    }
                    Ok(watcher::Event::Apply(object)) => collector.observe(def, &object),
                    Ok(watcher::Event::Delete(object)) => {
                        object.uid().map(|uid| collector.forget(&uid)).unwrap_or_default()
                    }
                    Ok(watcher::Event::InitDone) => {
                        let listed = relisting.remove(def.plural).unwrap_or_default();
                        synced.insert(def.plural);
                        if synced.len() == kinds.len() {
                            synced_tx.send_replace(true);
                        }
                        collector.forget_unlisted(def, &listed)
                    }
                    Err(error) => {
                        tracing::debug!(kind = def.kind, %error, "garbage collector watch failed; retrying");
                        Vec::new()
                    }
                };
                work.into_iter().for_each(|uid| collector.queue.push(uid));
            }
        }
    };
    let work = {
        let collector = collector.clone();
        async move {
            // Before every kind is listed, missing owners would only be owners not seen yet.
            if synced_rx.wait_for(|synced| *synced).await.is_err() {
                return;
            }
            tracing::debug!("garbage collector graph synced");
            receiver
                .for_each_concurrent(WORKERS, |uid| {
                    let collector = collector.clone();
                    async move {
                        collector.queue.take(&uid);
                        let span = tracing::debug_span!("collect", %uid);
                        if let Err(error) = collector.process(&uid).instrument(span).await {
                            tracing::debug!(%uid, %error, "garbage collection failed; retrying");
                            let queue = collector.queue.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(RETRY).await;
                                queue.push(uid);
                            });
                        }
                    }
                })
                .await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = ingest => {}
        _ = work => {}
    }
}

fn item_of(def: &'static ResourceDef, object: &PartialObjectMeta<DynamicObject>) -> Item {
    let meta = &object.metadata;
    Item {
        kind: def,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        owners: meta.owner_references.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
    }
}

impl Collector {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, def: &'static ResourceDef, object: &PartialObjectMeta<DynamicObject>) -> Vec<String> {
        let Some(uid) = object.uid() else { return Vec::new() };
        self.graph().upsert(&uid, item_of(def, object))
    }

    fn forget(&self, uid: &str) -> Vec<String> {
        self.graph().remove(uid)
    }

    /// After a relist of `def`: objects of that kind that were not listed are gone.
    fn forget_unlisted(&self, def: &ResourceDef, listed: &HashSet<String>) -> Vec<String> {
        let mut graph = self.graph();
        let gone: Vec<String> = graph
            .items
            .iter()
            .filter(|(uid, item)| std::ptr::eq(item.kind, def) && !listed.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        gone.iter().flat_map(|uid| graph.remove(uid)).collect()
    }

    async fn process(&self, uid: &str) -> Result<(), Error> {
        let mut verified = HashMap::new();
        loop {
            let (decision, item) = {
                let graph = self.graph();
                (graph.decide(uid, &verified), graph.items.get(uid).cloned())
            };
            let Some(item) = item else { return Ok(()) };
            match decision {
                Decision::Nothing => return Ok(()),
                Decision::Verify(owners) => {
                    for owner in owners {
                        let exists = self.owner_exists(&owner, item.namespace.as_deref()).await?;
                        verified.insert(owner.uid, exists);
                    }
                }
                Decision::Delete(policy) => {
                    tracing::info!(kind = item.kind.kind, name = %item.name, namespace = ?item.namespace, ?policy, "deleting an object whose owners are gone");
                    let params = DeleteParams {
                        propagation_policy: Some(policy),
                        preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
                        ..DeleteParams::default()
                    };
                    return ignore_gone(item.api(&self.client).delete(&item.name, &params).await.map(|_| ()));
                }
                Decision::DropOwners(owners) => return self.drop_owners(&item, &owners).await,
                Decision::DeleteDependents(dependents) => {
                    dependents.into_iter().for_each(|d| self.queue.push(d));
                    return Ok(());
                }
                Decision::Orphan(dependents) => {
                    for dependent in dependents {
                        let Some(dependent) = self.graph().items.get(&dependent).cloned() else { continue };
                        self.drop_owners(&dependent, &[uid.to_string()]).await?;
                    }
                    return self.remove_finalizer(&item, ORPHAN).await;
                }
                Decision::RemoveFinalizer(finalizer) => return self.remove_finalizer(&item, finalizer).await,
            }
        }
    }

    /// Looks an owner up by name and checks it is the same object (a recreated one has another uid).
    async fn owner_exists(&self, owner: &OwnerReference, namespace: Option<&str>) -> Result<bool, Error> {
        let Some(def) = resources::find_kind(&owner.api_version, &owner.kind) else {
            // A kind Skiff does not serve cannot be checked; never delete on a guess.
            return Ok(true);
        };
        match api(&self.client, def, namespace).get_opt(&owner.name).await? {
            Some(found) => Ok(found.uid().as_deref() == Some(owner.uid.as_str())),
            None => Ok(false),
        }
    }

    async fn drop_owners(&self, item: &Item, owners: &[String]) -> Result<(), Error> {
        tracing::info!(kind = item.kind.kind, name = %item.name, namespace = ?item.namespace, ?owners, "removing owner references");
        let deletions: Vec<_> = owners.iter().map(|uid| json!({"$patch": "delete", "uid": uid})).collect();
        let patch = Patch::Strategic(json!({"metadata": {"ownerReferences": deletions}}));
        ignore_gone(item.api(&self.client).patch(&item.name, &PatchParams::default(), &patch).await.map(|_| ()))
    }

    async fn remove_finalizer(&self, item: &Item, finalizer: &str) -> Result<(), Error> {
        let api = item.api(&self.client);
        let Some(current) = api.get_opt(&item.name).await? else { return Ok(()) };
        let finalizers = current.finalizers();
        if !finalizers.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        tracing::info!(kind = item.kind.kind, name = %item.name, namespace = ?item.namespace, finalizer, "dependents handled, removing the finalizer");
        let remaining: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": current.resource_version()}});
        ignore_gone(api.patch(&item.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ()))
    }
}

/// An object that vanished meanwhile needs nothing more; a conflict is retried by the caller.
fn ignore_gone(result: Result<(), kube::Error>) -> Result<(), Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(plural: &str) -> &'static ResourceDef {
        resources::all().iter().find(|d| d.plural == plural).unwrap()
    }

    fn owner(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("owner-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn item(plural: &str, owners: Vec<OwnerReference>) -> Item {
        Item {
            kind: def(plural),
            namespace: Some("default".into()),
            name: "x".into(),
            owners,
            deleting: false,
            finalizers: vec![],
        }
    }

    fn deleting(mut item: Item, finalizer: &str) -> Item {
        item.deleting = true;
        item.finalizers = vec![finalizer.into()];
        item
    }

    /// deploy → rs → pod-a, pod-b
    fn chain() -> Graph {
        let mut graph = Graph::default();
        graph.upsert("deploy", item("deployments", vec![]));
        graph.upsert("rs", item("replicasets", vec![owner("deploy", true)]));
        graph.upsert("pod-a", item("pods", vec![owner("rs", true)]));
        graph.upsert("pod-b", item("pods", vec![owner("rs", true)]));
        graph
    }

    #[test]
    fn dependents_of_a_live_owner_stay() {
        let graph = chain();
        assert_eq!(graph.decide("rs", &HashMap::new()), Decision::Nothing);
        assert_eq!(graph.decide("pod-a", &HashMap::new()), Decision::Nothing);
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::Nothing);
    }

    #[test]
    fn background_deletion_cascades_once_owners_are_confirmed_gone() {
        let mut graph = chain();
        let work = graph.remove("deploy");
        assert_eq!(work, ["rs"], "the dependent is looked at");
        let decision = graph.decide("rs", &HashMap::new());
        assert!(
            matches!(&decision, Decision::Verify(o) if o[0].uid == "deploy"),
            "a missing owner is looked up: {decision:?}"
        );
        let gone = HashMap::from([("deploy".to_string(), false)]);
        assert_eq!(graph.decide("rs", &gone), Decision::Delete(PropagationPolicy::Background));
        let still_there = HashMap::from([("deploy".to_string(), true)]);
        assert_eq!(graph.decide("rs", &still_there), Decision::Nothing, "the graph only lagged");
        let mut work = graph.remove("rs");
        work.sort();
        assert_eq!(work, ["pod-a", "pod-b"]);
    }

    #[test]
    fn a_gone_owner_beside_a_live_one_is_only_dropped() {
        let mut graph = chain();
        graph.upsert("cm", item("configmaps", vec![owner("rs", false), owner("old", false)]));
        let gone = HashMap::from([("old".to_string(), false)]);
        assert_eq!(graph.decide("cm", &gone), Decision::DropOwners(vec!["old".into()]));
    }

    #[test]
    fn foreground_deletion_waits_for_blocking_dependents() {
        let mut graph = chain();
        let work = graph.upsert("deploy", deleting(item("deployments", vec![]), FOREGROUND));
        assert_eq!(work, ["deploy", "rs"], "the owner and its dependents are looked at");
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::DeleteDependents(vec!["rs".into()]));
        assert_eq!(
            graph.decide("rs", &HashMap::new()),
            Decision::Delete(PropagationPolicy::Foreground),
            "a dependent with dependents of its own is deleted in the foreground too"
        );
        graph.upsert("rs", deleting(item("replicasets", vec![owner("deploy", true)]), FOREGROUND));
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::Nothing, "waits while the rs is deleted");
        assert_eq!(
            graph.decide("rs", &HashMap::new()),
            Decision::DeleteDependents(vec!["pod-a".into(), "pod-b".into()])
        );
        assert_eq!(graph.decide("pod-a", &HashMap::new()), Decision::Delete(PropagationPolicy::Background));
        graph.remove("pod-a");
        assert_eq!(graph.remove("pod-b"), ["rs"], "the waiting owner is looked at again");
        assert_eq!(graph.decide("rs", &HashMap::new()), Decision::RemoveFinalizer(FOREGROUND));
        assert_eq!(graph.remove("rs"), ["deploy"]);
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::RemoveFinalizer(FOREGROUND));
    }

    #[test]
    fn non_blocking_dependents_do_not_hold_a_foreground_deletion() {
        let mut graph = Graph::default();
        graph.upsert("owner", deleting(item("deployments", vec![]), FOREGROUND));
        graph.upsert("loose", item("configmaps", vec![owner("owner", false)]));
        assert_eq!(graph.decide("owner", &HashMap::new()), Decision::RemoveFinalizer(FOREGROUND));
    }

    #[test]
    fn orphaning_detaches_dependents_then_releases_the_owner() {
        let mut graph = chain();
        graph.upsert("deploy", deleting(item("deployments", vec![]), ORPHAN));
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::Orphan(vec!["rs".into()]));
        assert_eq!(graph.decide("rs", &HashMap::new()), Decision::Nothing, "an orphaning owner is not gone");
        let work = graph.upsert("rs", item("replicasets", vec![]));
        assert_eq!(work, ["deploy"], "losing a dependent brings the owner back");
        assert_eq!(graph.decide("deploy", &HashMap::new()), Decision::RemoveFinalizer(ORPHAN));
    }

    #[test]
    fn only_changes_that_matter_queue_work() {
        let mut graph = chain();
        assert!(
            graph.upsert("pod-a", item("pods", vec![owner("rs", true)])).is_empty(),
            "a status update queues nothing"
        );
        assert_eq!(
            graph.upsert("pod-c", item("pods", vec![owner("rs", true)])),
            ["pod-c"],
            "a new dependent is checked"
        );
        assert!(graph.remove("nope").is_empty());
    }
}
