//! The Deployment controller, as kube-controller-manager's: a ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), rolled out by RollingUpdate (maxSurge, maxUnavailable) or Recreate,
//! with revisions, revisionHistoryLimit, pause, proportional scaling and the Progressing/Available
//! conditions that `kubectl rollout status` reads. The arithmetic is in [`plan`].

mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_api::selectors;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::{Kind, Recorder};
use crate::replicaset::{
    api_message, claim, controller_of, namespace_terminating, owner_reference, parse_selector, triggers,
};

/// A periodic resync, so a missed event heals without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a Recreate rollout looks again while old pods are still stopping.
const RECREATE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed; the reconcile is retried.
    #[error("api request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The deployment's selector cannot be parsed; nothing is done until it changes.
    #[error("invalid selector")]
    Selector(#[from] selectors::SelectorError),
    /// maxSurge or maxUnavailable cannot be resolved.
    #[error("invalid rolling update parameters")]
    Plan(#[from] plan::PlanError),
    /// A ReplicaSet of this name exists with another template; the next try uses a new hash.
    #[error("replica set {0} exists with another pod template")]
    HashCollision(String),
    /// The cache's writer is gone: the controller is shutting down.
    #[error("the cache is gone")]
    CacheGone,
}

/// Runs the Deployment controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (replicasets, writer) = reflector::store::<ReplicaSet>();
    let controller = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default());
    let deployments = controller.store();
    let rs_events = watcher(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let context =
        Arc::new(Context { recorder: Recorder::new(client.clone(), "deployment-controller"), client, replicasets });
    controller
        .watches_stream(rs_events, move |rs: ReplicaSet| triggers(&rs, &deployments, deployment_selector))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

struct Context {
    client: kube::Client,
    recorder: Recorder,
    replicasets: Store<ReplicaSet>,
}

fn deployment_selector(d: &Deployment) -> Option<&LabelSelector> {
    d.spec.as_ref().map(|spec| &spec.selector)
}

fn error_policy(d: Arc<Deployment>, error: &Error, _: Arc<Context>) -> Action {
    match error {
        Error::Selector(_) | Error::Plan(_) => Action::await_change(),
        error => {
            tracing::debug!(deployment = %d.name_any(), %error, "retrying");
            Action::requeue(Duration::from_secs(1))
        }
    }
}

async fn reconcile(d: Arc<Deployment>, context: Arc<Context>) -> Result<Action, Error> {
    let span =
        tracing::debug_span!("reconcile", deployment = %d.name_any(), namespace = d.namespace().unwrap_or_default());
    async {
        context.replicasets.wait_until_ready().await.map_err(|_| Error::CacheGone)?;
        let namespace = d.namespace().unwrap_or_default();
        let mut rollout = Rollout {
            context: &context,
            d: (*d).clone(),
            deployments: Api::namespaced(context.client.clone(), &namespace),
            replicasets: Api::namespaced(context.client.clone(), &namespace),
            pods: Api::namespaced(context.client.clone(), &namespace),
            waiting_for_old_pods: false,
        };
        rollout.sync().await
    }
    .instrument(span)
    .await
}

/// One reconcile of one deployment; `d` is kept current with every write.
struct Rollout<'a> {
    context: &'a Context,
    d: Deployment,
    deployments: Api<Deployment>,
    replicasets: Api<ReplicaSet>,
    pods: Api<Pod>,
    waiting_for_old_pods: bool,
}

impl Rollout<'_> {
    async fn sync(&mut self) -> Result<Action, Error> {
        plan::fenceposts(&self.d)?;
        let Some(selector) = parse_selector(deployment_selector(&self.d))? else {
            let message = "This deployment is selecting all pods. A non-empty selector is required.";
            self.context.recorder.record(&self.d, Kind::Warning, "SelectingAll", message.into());
            return Ok(Action::await_change());
        };
        let namespace = self.d.namespace();
        let candidates =
            self.context.replicasets.state().into_iter().filter(|rs| rs.metadata.namespace == namespace).collect();
        let mut owned: Vec<ReplicaSet> =
            claim(&self.replicasets, &self.deployments, &self.d, Some(&selector), candidates)
                .await?
                .into_iter()
                .map(|rs| (*rs).clone())
                .collect();
        owned.sort_by_key(|rs| (rs.metadata.creation_timestamp.as_ref().map(|t| t.0), rs.name_any()));

        if self.d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.new_and_old(&mut owned, false).await?;
            self.sync_status(new, old).await?;
            return Ok(Action::await_change());
        }
        self.check_paused_conditions().await?;
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.is_scaling_event(&mut owned).await? {
            self.scale_only(&mut owned, paused).await?;
        } else if self.strategy() == Some("Recreate") {
            self.rollout_recreate(&mut owned).await?;
        } else {
            self.rollout_rolling(&mut owned).await?;
        }
        Ok(Action::requeue(if self.waiting_for_old_pods {
            RECREATE_POLL
        } else {
            plan::progress_check_after(&self.d, Timestamp::now()).unwrap_or(RESYNC)
        }))
    }

    fn strategy(&self) -> Option<&str> {
        self.d.spec.as_ref()?.strategy.as_ref()?.type_.as_deref()
    }

    fn template(&self) -> k8s_openapi::api::core::v1::PodTemplateSpec {
        self.d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default()
    }

    /// Writes the deployment's status (as an update, so a stale deployment is a conflict and retried).
    async fn save_status(&mut self) -> Result<(), Error> {
        self.d = self.deployments.replace_status(&self.d.name_any(), &PostParams::default(), &self.d).await?;
        Ok(())
    }

    /// Records the revision of the new ReplicaSet on the deployment.
    async fn set_revision(&mut self, revision: &str) -> Result<(), Error> {
        if self.d.annotations().get(plan::REVISION).map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {plan::REVISION: revision}}});
        let status = self.d.status.clone();
        self.d = self.deployments.patch(&self.d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        // Status changes made in this reconcile and not saved yet stay.
        self.d.status = status;
        Ok(())
    }

    /// Splits the owned ReplicaSets into the one matching the template and the old ones (Kubernetes'
    /// getAllReplicaSetsAndSyncRevision), creating the new one when asked. `owned` is kept current with
    /// the writes, so a later call in the same reconcile does not act on a stale copy.
    async fn new_and_old(
        &mut self,
        owned: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let template = self.template();
        let position = owned.iter().position(|rs| {
            rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| plan::same_template(t, &template))
        });
        let old: Vec<ReplicaSet> =
            owned.iter().enumerate().filter(|(i, _)| Some(*i) != position).map(|(_, rs)| rs.clone()).collect();
        let new = self.new_replicaset(position.map(|i| owned[i].clone()), &old, create).await?;
        match (position, &new) {
            (Some(i), Some(rs)) => owned[i] = rs.clone(),
            (None, Some(rs)) => owned.push(rs.clone()),
            _ => {}
        }
        Ok((new, old))
    }

    async fn new_replicaset(
        &mut self,
        existing: Option<ReplicaSet>,
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>, Error> {
        let new_revision = plan::max_revision(old) + 1;
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let now = Timestamp::now();
        if let Some(mut rs) = existing {
            let annotated = plan::set_new_rs_annotations(&self.d, &mut rs, new_revision, true);
            let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
            if annotated || spec.min_ready_seconds != min_ready {
                spec.min_ready_seconds = min_ready;
                return Ok(Some(self.replicasets.replace(&rs.name_any(), &PostParams::default(), &rs).await?));
            }
            let revision = rs.annotations().get(plan::REVISION).cloned().unwrap_or_default();
            self.set_revision(&revision).await?;
            let status = self.d.status.clone().unwrap_or_default();
            if plan::has_progress_deadline(&self.d) && plan::condition(&status, "Progressing").is_none() {
                let message = format!("Found new replica set {:?}", rs.name_any());
                let condition = plan::new_condition("Progressing", "True", "FoundNewReplicaSet", message, now);
                plan::set_condition(self.d.status.get_or_insert_default(), condition);
                self.save_status().await?;
            }
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }

        let mut template = self.template();
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = plan::template_hash(&template, collisions);
        let labels = template.metadata.get_or_insert_default().labels.get_or_insert_default();
        labels.insert(plan::HASH_LABEL.into(), hash.clone());
        let labels = labels.clone();
        let mut selector = deployment_selector(&self.d).cloned().unwrap_or_default();
        selector.match_labels.get_or_insert_default().insert(plan::HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.d.name_any());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                labels: Some(labels),
                owner_references: Some(vec![owner_reference(&self.d)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let all: Vec<ReplicaSet> = old.iter().cloned().chain([rs.clone()]).collect();
        let replicas = plan::new_rs_replicas(&self.d, &all, &rs);
        rs.spec.get_or_insert_default().replicas = Some(replicas);
        plan::set_new_rs_annotations(&self.d, &mut rs, new_revision, false);
        let (created, already_existed) = match self.replicasets.create(&PostParams::default(), &rs).await {
            Ok(created) => (created, false),
            Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                let found = self.replicasets.get(&name).await?;
                let ours = controller_of(&found.metadata).is_some_and(|o| Some(&o.uid) == self.d.metadata.uid.as_ref());
                let same = found
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| plan::same_template(t, &self.template()));
                if !(ours && same) {
                    // A hash collision with another template: the next hash mixes in a higher count.
                    let status = self.d.status.get_or_insert_default();
                    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                    self.save_status().await?;
                    return Err(Error::HashCollision(name));
                }
                (found, true)
            }
            Err(error) if namespace_terminating(&error) => return Err(error.into()),
            Err(error) => {
                let message = format!("Failed to create new replica set {name:?}: {}", api_message(&error));
                if plan::has_progress_deadline(&self.d) {
                    let condition =
                        plan::new_condition("Progressing", "False", "ReplicaSetCreateError", message.clone(), now);
                    plan::set_condition(self.d.status.get_or_insert_default(), condition);
                    self.save_status().await?;
                }
                self.context.recorder.record(&self.d, Kind::Warning, "ReplicaSetCreateError", message);
                return Err(error.into());
            }
        };
        if !already_existed && replicas > 0 {
            let message = format!("Scaled up replica set {name} from 0 to {replicas}");
            self.context.recorder.record(&self.d, Kind::Normal, "ScalingReplicaSet", message);
        }
        self.set_revision(&new_revision.to_string()).await?;
        if !already_existed && plan::has_progress_deadline(&self.d) {
            let message = format!("Created new replica set {name:?}");
            let condition = plan::new_condition("Progressing", "True", "NewReplicaSetCreated", message, now);
            plan::set_condition(self.d.status.get_or_insert_default(), condition);
            self.save_status().await?;
        }
        Ok(Some(created))
    }

    /// Sets a ReplicaSet's size and replica annotations; whether the size changed, and the stored object.
    async fn scale(&mut self, rs: &ReplicaSet, size: i32) -> Result<(bool, ReplicaSet), Error> {
        let current = plan::rs_replicas(rs);
        let desired = plan::replicas(&self.d);
        let mut updated = rs.clone();
        let annotated = plan::set_replicas_annotations(&mut updated, desired, desired + plan::max_surge(&self.d));
        if current == size && !annotated {
            return Ok((false, rs.clone()));
        }
        updated.spec.get_or_insert_default().replicas = Some(size);
        let updated = self.replicasets.replace(&rs.name_any(), &PostParams::default(), &updated).await?;
        if current != size {
            let direction = if current < size { "up" } else { "down" };
            let message = format!("Scaled {direction} replica set {} from {current} to {size}", rs.name_any());
            self.context.recorder.record(&self.d, Kind::Normal, "ScalingReplicaSet", message);
        }
        Ok((current != size, updated))
    }

    /// Scales when the size differs (Kubernetes' scaleReplicaSetAndRecordEvent).
    async fn resize(&mut self, rs: &ReplicaSet, size: i32) -> Result<(bool, ReplicaSet), Error> {
        if plan::rs_replicas(rs) == size {
            return Ok((false, rs.clone()));
        }
        self.scale(rs, size).await
    }

    /// Applies `(name, size)` targets to the matching ReplicaSets in `sets`; whether any size changed.
    async fn apply(
        &mut self,
        targets: Vec<(String, i32)>,
        sets: &mut [ReplicaSet],
        always: bool,
    ) -> Result<bool, Error> {
        let mut scaled = false;
        for (name, size) in targets {
            if let Some(rs) = sets.iter_mut().find(|rs| rs.metadata.name.as_deref() == Some(&name)) {
                let (changed, updated) =
                    if always { self.scale(rs, size).await? } else { self.resize(rs, size).await? };
                *rs = updated;
                scaled |= changed;
            }
        }
        Ok(scaled)
    }

    /// The deployment's replicas changed since its active ReplicaSets were last sized.
    async fn is_scaling_event(&mut self, owned: &mut Vec<ReplicaSet>) -> Result<bool, Error> {
        let (new, old) = self.new_and_old(owned, false).await?;
        let desired = plan::replicas(&self.d).to_string();
        Ok(old
            .iter()
            .chain(&new)
            .filter(|rs| plan::rs_replicas(rs) > 0)
            .any(|rs| rs.annotations().get(plan::DESIRED_REPLICAS).is_some_and(|d| d != &desired)))
    }

    /// Scaling without rollout progress: a scaling event, or a paused deployment.
    async fn scale_only(&mut self, owned: &mut Vec<ReplicaSet>, paused: bool) -> Result<(), Error> {
        let (new, old) = self.new_and_old(owned, false).await?;
        let targets = plan::scale_plan(&self.d, new.as_ref(), &old);
        let mut sets: Vec<ReplicaSet> = old.into_iter().chain(new.clone()).collect();
        self.apply(targets, &mut sets, true).await?;
        let new = new.is_some().then(|| sets.pop()).flatten();
        if paused {
            self.cleanup(&sets).await?;
        }
        self.sync_status(new, sets).await
    }

    async fn rollout_rolling(&mut self, owned: &mut Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, mut old) = self.new_and_old(owned, true).await?;
        let Some(mut new) = new else { return Ok(()) };
        let all: Vec<ReplicaSet> = old.iter().cloned().chain([new.clone()]).collect();
        if let Some(size) = plan::reconcile_new(&self.d, &all, &new) {
            let (scaled, updated) = self.resize(&new, size).await?;
            new = updated;
            if scaled {
                return self.sync_rollout_status(Some(new), old).await;
            }
        }
        let all: Vec<ReplicaSet> = old.iter().cloned().chain([new.clone()]).collect();
        let targets = plan::reconcile_old(&self.d, &all, &old, &new);
        if self.apply(targets, &mut old, false).await? {
            return self.sync_rollout_status(Some(new), old).await;
        }
        if plan::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(new), old).await
    }

    async fn rollout_recreate(&mut self, owned: &mut Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, mut old) = self.new_and_old(owned, false).await?;
        let targets = old.iter().filter(|rs| plan::rs_replicas(rs) > 0).map(|rs| (rs.name_any(), 0)).collect();
        if self.apply(targets, &mut old, false).await? {
            return self.sync_rollout_status(new, old).await;
        }
        if self.old_pods_running(new.as_ref(), &old).await? {
            self.waiting_for_old_pods = true;
            return self.sync_rollout_status(new, old).await;
        }
        let (new, old) = match new {
            Some(new) => (new, old),
            None => {
                let (new, old) = self.new_and_old(owned, true).await?;
                (new.expect("created when asked"), old)
            }
        };
        let (_, new) = self.resize(&new, plan::replicas(&self.d)).await?;
        if plan::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(new), old).await
    }

    /// Any pod of an old ReplicaSet that has not finished (Recreate waits for them all to stop).
    async fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Result<bool, Error> {
        if old.iter().any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0)) {
            return Ok(true);
        }
        let selector = parse_selector(deployment_selector(&self.d))?.map(|s| s.to_string()).unwrap_or_default();
        let pods = self.pods.list(&ListParams::default().labels(&selector)).await?;
        let old_uids: Vec<&String> = old.iter().filter_map(|rs| rs.metadata.uid.as_ref()).collect();
        let new_uid = new.and_then(|rs| rs.metadata.uid.as_ref());
        Ok(pods.items.iter().any(|pod| {
            let owner = controller_of(&pod.metadata).map(|o| &o.uid);
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            owner.is_some_and(|uid| old_uids.contains(&uid) && Some(uid) != new_uid)
                && !matches!(phase, Some("Succeeded" | "Failed"))
        }))
    }

    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, old: &[ReplicaSet]) -> Result<(), Error> {
        for name in plan::history_to_delete(&self.d, old) {
            match self.replicasets.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(replicaset = %name, "deleted an old revision"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Progressing turns Unknown with DeploymentPaused / DeploymentResumed when pausing or resuming, unless
    /// the rollout already timed out.
    async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if !plan::has_progress_deadline(&self.d) {
            return Ok(());
        }
        let status = self.d.status.clone().unwrap_or_default();
        let reason = plan::condition(&status, "Progressing").and_then(|c| c.reason.clone());
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let paused_condition = reason.as_deref() == Some("DeploymentPaused");
        let condition = match (paused, paused_condition) {
            (true, false) => ("DeploymentPaused", "Deployment is paused"),
            (false, true) => ("DeploymentResumed", "Deployment is resumed"),
            _ => return Ok(()),
        };
        let condition =
            plan::new_condition("Progressing", "Unknown", condition.0, condition.1.into(), Timestamp::now());
        plan::set_condition(self.d.status.get_or_insert_default(), condition);
        self.save_status().await
    }

    async fn sync_status(&mut self, new: Option<ReplicaSet>, old: Vec<ReplicaSet>) -> Result<(), Error> {
        let all: Vec<ReplicaSet> = old.into_iter().chain(new.clone()).collect();
        let status = plan::status(&self.d, &all, new.as_ref(), Timestamp::now());
        self.save_if_changed(status).await
    }

    async fn sync_rollout_status(&mut self, new: Option<ReplicaSet>, old: Vec<ReplicaSet>) -> Result<(), Error> {
        let all: Vec<ReplicaSet> = old.into_iter().chain(new.clone()).collect();
        let status = plan::rollout_status(&self.d, &all, new.as_ref(), Timestamp::now());
        self.save_if_changed(status).await
    }

    async fn save_if_changed(&mut self, status: k8s_openapi::api::apps::v1::DeploymentStatus) -> Result<(), Error> {
        if self.d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        self.d.status = Some(status);
        self.save_status().await
    }
}
