//! The Job controller: runs a Job's pods until `completions` of them succeeded, `parallelism` at a time; fails
//! the Job after more than `backoffLimit` failures or past `activeDeadlineSeconds`; deletes it
//! `ttlSecondsAfterFinished` after it finished (its pods then go through the garbage collector).
//!
//! Counts come from the Job's pods, found by their controller-uid label, as Kubernetes counted before its
//! finalizer-based tracking: a Job's pods are removed only with the Job, or by eviction.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::events::{Kind, Recorder};
use crate::nodelifecycle::pod_ready;
use crate::replicaset::{api_message, namespace_terminating};

/// The label tying pods to their Job; the API server selects on it.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The same labels under their pre-1.27 names, which Kubernetes still sets for older clients.
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_JOB_NAME: &str = "job-name";

/// Kubernetes' pod failure back-off: 10 s doubled per failure, at most 6 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
const DEFAULT_BACKOFF_LIMIT: i32 = 6;

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the Job controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let context =
        Arc::new(Context { recorder: Recorder::new(client.clone(), "job-controller"), client: client.clone() });
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default().labels(CONTROLLER_UID))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

fn error_policy(job: Arc<Job>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), error = %error, "job reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(job: Arc<Job>, context: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::debug_span!("reconcile", job = %job.name_any(), namespace = ?job.namespace());
    sync(&job, &context).instrument(span).await
}

async fn sync(job: &Job, context: &Context) -> Result<Action, Error> {
    let (Some(namespace), Some(uid), Some(spec)) = (job.namespace(), job.uid(), job.spec.as_ref()) else {
        return Ok(Action::await_change());
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let status = job.status.clone().unwrap_or_default();
    if let Some(finished) = finished_at(&status) {
        return expire(job, spec, finished, now, context).await;
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let owned: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID}={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|pod| pod.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid))
        .collect();
    let tally = Tally::of(&owned);
    let start = status.start_time.as_ref().map_or(now, |t| t.0);
    let plan = plan(spec, &tally, start, now);

    let doomed = match plan.finish {
        Some(_) => tally.active.len(),
        None => plan.delete,
    };
    for name in tally.active.iter().take(doomed) {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => context.recorder.record(job, Kind::Normal, "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut created = 0;
    let mut failure = None;
    for _ in 0..plan.create {
        match pods.create(&PostParams::default(), &new_pod(job, spec, &uid)).await {
            Ok(pod) => {
                created += 1;
                context.recorder.record(
                    job,
                    Kind::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {}", pod.name_any()),
                );
            }
            // The namespace is being deleted: nothing may be created in it any more.
            Err(error) if namespace_terminating(&error) => {
                tracing::debug!(%error, "cannot create pods");
                break;
            }
            // Refused (Pod Security, an invalid template): said on the Job, as Kubernetes does, and
            // retried once its status is written.
            Err(error) => {
                context.recorder.record(
                    job,
                    Kind::Warning,
                    "FailedCreate",
                    format!("Error creating: {}", api_message(&error)),
                );
                failure = Some(error);
                break;
            }
        }
    }
    let active = tally.active.len() as i32 - doomed as i32 + created;
    let next = next_status(&status, &tally, active, plan.finish.as_ref(), spec.suspend == Some(true), now);
    if next != status {
        let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
        jobs.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": next}))).await?;
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    match &plan.finish {
        Some(Finish::Complete) => context.recorder.record(job, Kind::Normal, "Completed", "Job completed".into()),
        Some(Finish::Failed { reason, message }) => {
            context.recorder.record(job, Kind::Warning, reason, message.to_string())
        }
        None => {}
    }
    if plan.finish.is_some() {
        return Ok(match spec.ttl_seconds_after_finished {
            Some(ttl) => Action::requeue(Duration::from_secs(ttl.max(0) as u64)),
            None => Action::await_change(),
        });
    }
    Ok(plan.retry_after.map_or_else(Action::await_change, Action::requeue))
}

/// Deletes a finished Job once its time-to-live is over; its pods follow through the garbage collector.
async fn expire(
    job: &Job,
    spec: &JobSpec,
    finished: Timestamp,
    now: Timestamp,
    context: &Context,
) -> Result<Action, Error> {
    let Some(ttl) = spec.ttl_seconds_after_finished else { return Ok(Action::await_change()) };
    match ttl_left(finished, ttl, now) {
        Some(left) => Ok(Action::requeue(left)),
        None => {
            tracing::info!("job finished more than ttlSecondsAfterFinished ago, deleting it");
            let jobs: Api<Job> = Api::namespaced(context.client.clone(), &job.namespace().unwrap_or_default());
            let params = DeleteParams { preconditions: job.uid().map(uid_precondition), ..DeleteParams::background() };
            match jobs.delete(&job.name_any(), &params).await {
                Ok(_) => Ok(Action::await_change()),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Action::await_change()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn uid_precondition(uid: String) -> kube::api::Preconditions {
    kube::api::Preconditions { uid: Some(uid), resource_version: None }
}

/// How long a Job finished at `finished` has left to live, or None when it is due for deletion.
fn ttl_left(finished: Timestamp, ttl_seconds: i32, now: Timestamp) -> Option<Duration> {
    let expires = finished + jiff::SignedDuration::from_secs(ttl_seconds.max(0).into());
    let left = expires.duration_since(now);
    (left.is_positive()).then(|| left.unsigned_abs())
}

/// When the Job reached Complete or Failed, if it did.
fn finished_at(status: &JobStatus) -> Option<Timestamp> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().or(status.completion_time.as_ref()).map_or(Timestamp::now(), |t| t.0))
}

fn new_pod(job: &Job, spec: &JobSpec, uid: &str) -> Pod {
    let template = spec.template.clone();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    let name = job.name_any();
    for (key, value) in
        [(CONTROLLER_UID, uid), (LEGACY_CONTROLLER_UID, uid), (JOB_NAME, &name), (LEGACY_JOB_NAME, &name)]
    {
        labels.insert(key.into(), value.into());
    }
    let owner = job.controller_owner_ref(&()).map(|mut owner| {
        owner.block_owner_deletion = Some(true);
        owner
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// What a Job's pods add up to.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    /// Running or pending pods not being deleted, in the order to delete them: unready first, then newest.
    active: Vec<String>,
    ready: i32,
    succeeded: i32,
    failed: i32,
    /// Container restarts of active pods: what `backoffLimit` counts under restartPolicy OnFailure.
    restarts: i32,
    last_failure: Option<Timestamp>,
}

impl Tally {
    fn of(pods: &[Pod]) -> Self {
        let mut tally = Tally::default();
        let mut active = Vec::new();
        for pod in pods {
            let status = pod.status.clone().unwrap_or_default();
            match status.phase.as_deref() {
                Some("Succeeded") => tally.succeeded += 1,
                Some("Failed") => {
                    tally.failed += 1;
                    let finished = status
                        .container_statuses
                        .iter()
                        .flatten()
                        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                        .map(|t| t.0)
                        .max();
                    tally.last_failure = tally.last_failure.max(finished);
                }
                // A pod being deleted no longer counts as active; its replacement may start.
                _ if pod.metadata.deletion_timestamp.is_some() => {}
                _ => {
                    let ready = pod_ready(pod);
                    tally.ready += i32::from(ready);
                    tally.restarts += status.container_statuses.iter().flatten().map(|c| c.restart_count).sum::<i32>();
                    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    active.push((ready, std::cmp::Reverse(created), pod.name_any()));
                }
            }
        }
        active.sort();
        tally.active = active.into_iter().map(|(_, _, name)| name).collect();
        tally
    }
}

#[derive(Debug, PartialEq)]
enum Finish {
    Complete,
    Failed { reason: &'static str, message: &'static str },
}

#[derive(Debug, Default, PartialEq)]
struct Plan {
    create: i32,
    /// How many active pods to delete (from the front of [`Tally::active`]).
    delete: usize,
    finish: Option<Finish>,
    /// When to look again if pods are held back by the failure back-off.
    retry_after: Option<Duration>,
}

/// What to do about a Job started at `start` whose pods add up to `tally`.
fn plan(spec: &JobSpec, tally: &Tally, start: Timestamp, now: Timestamp) -> Plan {
    let active = tally.active.len() as i32;
    let on_failure = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
    let failures = tally.failed + if on_failure { tally.restarts } else { 0 };
    if failures > spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT) {
        let finish =
            Finish::Failed { reason: "BackoffLimitExceeded", message: "Job has reached the specified backoff limit" };
        return Plan { finish: Some(finish), ..Plan::default() };
    }
    let mut retry_after = None;
    if let Some(deadline) = spec.active_deadline_seconds {
        let left = (start + jiff::SignedDuration::from_secs(deadline)).duration_since(now);
        if !left.is_positive() {
            let finish =
                Finish::Failed { reason: "DeadlineExceeded", message: "Job was active longer than specified deadline" };
            return Plan { finish: Some(finish), ..Plan::default() };
        }
        retry_after = Some(left.unsigned_abs());
    }
    let complete = match spec.completions {
        Some(completions) => tally.succeeded >= completions,
        // Without completions (a work queue) the first success completes the Job once the others stopped.
        None => tally.succeeded > 0 && active == 0,
    };
    if complete {
        return Plan { finish: Some(Finish::Complete), ..Plan::default() };
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let wanted = match (spec.suspend, spec.completions) {
        (Some(true), _) => 0,
        (_, Some(completions)) => parallelism.min(completions - tally.succeeded),
        (_, None) if tally.succeeded > 0 => active.min(parallelism),
        (_, None) => parallelism,
    };
    if active > wanted {
        return Plan { delete: (active - wanted) as usize, retry_after, ..Plan::default() };
    }
    if let Some(last) = tally.last_failure.filter(|_| active < wanted) {
        let left = (last + backoff(tally.failed)).duration_since(now);
        if left.is_positive() {
            let left = left.unsigned_abs();
            return Plan { retry_after: Some(retry_after.map_or(left, |r| r.min(left))), ..Plan::default() };
        }
    }
    Plan { create: wanted - active, retry_after, ..Plan::default() }
}

/// The delay before replacing a pod after `failures` failures.
fn backoff(failures: i32) -> jiff::SignedDuration {
    let doublings = failures.saturating_sub(1).clamp(0, 16) as u32;
    let delay = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX)
}

/// The Job's status after this pass: counts, start and completion times, and the finishing conditions.
fn next_status(
    current: &JobStatus,
    tally: &Tally,
    active: i32,
    finish: Option<&Finish>,
    suspended: bool,
    now: Timestamp,
) -> JobStatus {
    let mut next = JobStatus {
        active: (active > 0).then_some(active),
        ready: Some(tally.ready),
        succeeded: (tally.succeeded > 0).then_some(tally.succeeded),
        failed: (tally.failed > 0).then_some(tally.failed),
        start_time: current.start_time.clone().or_else(|| (!suspended).then_some(Time(now))),
        ..current.clone()
    };
    let conditions: &[(&str, &str, &str)] = match finish {
        Some(Finish::Complete) => {
            next.completion_time = Some(Time(now));
            next.ready = Some(0);
            let message = "Reached expected number of succeeded pods";
            &[("SuccessCriteriaMet", "CompletionsReached", message), ("Complete", "CompletionsReached", message)]
        }
        Some(Finish::Failed { reason, message }) => {
            next.ready = Some(0);
            &[("FailureTarget", reason, message), ("Failed", reason, message)]
        }
        None => &[],
    };
    if !conditions.is_empty() {
        next.active = None;
        let list = next.conditions.get_or_insert_with(Vec::new);
        for (kind, reason, message) in conditions {
            list.retain(|c| c.type_ != *kind);
            list.push(JobCondition {
                type_: kind.to_string(),
                status: "True".into(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                last_probe_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            });
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn pod(name: &str, phase: &str, created: i64, ready: bool, restarts: i32, finished: Option<i64>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": skiff_api::format_time(at(created))},
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{
                    "name": "c", "image": "i", "imageID": "", "ready": ready, "restartCount": restarts,
                    "state": match finished {
                        Some(t) => json!({"terminated": {"exitCode": 1, "finishedAt": skiff_api::format_time(at(t))}}),
                        None => json!({"running": {}}),
                    },
                }],
            },
        }))
        .unwrap()
    }

    fn spec(completions: Option<i32>, parallelism: i32, backoff_limit: i32, restart_policy: &str) -> JobSpec {
        JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(backoff_limit),
            template: PodTemplateSpec {
                spec: Some(PodSpec { restart_policy: Some(restart_policy.into()), ..PodSpec::default() }),
                ..PodTemplateSpec::default()
            },
            ..JobSpec::default()
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn tally_counts_phases_and_orders_active_pods_for_deletion() {
        let mut deleting = pod("leaving", "Running", 0, true, 0, None);
        deleting.metadata.deletion_timestamp = Some(Time(at(5)));
        let pods = [
            pod("old-ready", "Running", 1, true, 2, None),
            pod("new-ready", "Running", 3, true, 0, None),
            pod("unready", "Pending", 2, false, 0, None),
            pod("done", "Succeeded", 0, false, 0, None),
            pod("broke", "Failed", 0, false, 0, Some(40)),
            pod("broke-earlier", "Failed", 0, false, 0, Some(20)),
            deleting,
        ];
        let tally = Tally::of(&pods);
        assert_eq!(tally.active, ["unready", "new-ready", "old-ready"], "unready first, then newest");
        assert_eq!((tally.ready, tally.succeeded, tally.failed, tally.restarts), (2, 1, 2, 2));
        assert_eq!(tally.last_failure, Some(at(40)));
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let spec = spec(Some(3), 2, 6, "Never");
        let fresh = plan(&spec, &Tally::default(), at(0), at(0));
        assert_eq!(fresh, Plan { create: 2, ..Plan::default() });
        let one_done = Tally { active: names(1), succeeded: 1, ..Tally::default() };
        assert_eq!(plan(&spec, &one_done, at(0), at(1)).create, 1, "two still to go, one running");
        let two_done = Tally { active: names(1), succeeded: 2, ..Tally::default() };
        assert_eq!(plan(&spec, &two_done, at(0), at(1)), Plan::default(), "the last one is running");
        let too_many = Tally { active: names(2), succeeded: 2, ..Tally::default() };
        assert_eq!(plan(&spec, &too_many, at(0), at(1)).delete, 1, "only one more completion is needed");
        let done = Tally { succeeded: 3, ..Tally::default() };
        assert_eq!(plan(&spec, &done, at(0), at(1)).finish, Some(Finish::Complete));
    }

    #[test]
    fn a_work_queue_completes_on_the_first_success_once_the_rest_stopped() {
        let spec = spec(None, 3, 6, "Never");
        assert_eq!(plan(&spec, &Tally::default(), at(0), at(0)).create, 3);
        let draining = Tally { active: names(2), succeeded: 1, ..Tally::default() };
        assert_eq!(plan(&spec, &draining, at(0), at(1)), Plan::default(), "no new pods after a success");
        let drained = Tally { succeeded: 1, ..Tally::default() };
        assert_eq!(plan(&spec, &drained, at(0), at(1)).finish, Some(Finish::Complete));
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job() {
        let never = spec(Some(1), 1, 2, "Never");
        let two_failed = Tally { failed: 2, ..Tally::default() };
        assert_eq!(plan(&never, &two_failed, at(0), at(100)).create, 1, "two failures are within a limit of 2");
        let three_failed = Tally { failed: 3, ..Tally::default() };
        assert!(matches!(
            plan(&never, &three_failed, at(0), at(100)).finish,
            Some(Finish::Failed { reason: "BackoffLimitExceeded", .. })
        ));
        let on_failure = spec(Some(1), 1, 2, "OnFailure");
        let restarting = Tally { active: names(1), restarts: 3, ..Tally::default() };
        assert!(plan(&on_failure, &restarting, at(0), at(1)).finish.is_some(), "OnFailure counts restarts");
        assert!(plan(&never, &restarting, at(0), at(1)).finish.is_none(), "Never counts failed pods only");
    }

    #[test]
    fn replacements_wait_for_the_failure_back_off() {
        let spec = spec(Some(1), 1, 6, "Never");
        let failed_twice = Tally { failed: 2, last_failure: Some(at(100)), ..Tally::default() };
        let waiting = plan(&spec, &failed_twice, at(0), at(105));
        assert_eq!((waiting.create, waiting.retry_after), (0, Some(Duration::from_secs(15))), "20 s after 2 failures");
        assert_eq!(plan(&spec, &failed_twice, at(0), at(120)).create, 1);
        assert_eq!(backoff(1), jiff::SignedDuration::from_secs(10));
        assert_eq!(backoff(30), jiff::SignedDuration::from_secs(360));
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_is_waited_for() {
        let spec = JobSpec { active_deadline_seconds: Some(30), ..spec(Some(1), 1, 6, "Never") };
        let running = Tally { active: names(1), ..Tally::default() };
        assert_eq!(plan(&spec, &running, at(0), at(10)).retry_after, Some(Duration::from_secs(20)));
        assert!(matches!(
            plan(&spec, &running, at(0), at(30)).finish,
            Some(Finish::Failed { reason: "DeadlineExceeded", .. })
        ));
    }

    #[test]
    fn a_suspended_job_runs_nothing() {
        let spec = JobSpec { suspend: Some(true), ..spec(Some(3), 2, 6, "Never") };
        let running = Tally { active: names(2), ..Tally::default() };
        assert_eq!(plan(&spec, &running, at(0), at(1)).delete, 2);
        assert_eq!(next_status(&JobStatus::default(), &Tally::default(), 0, None, true, at(1)).start_time, None);
    }

    #[test]
    fn status_carries_counts_times_and_finishing_conditions() {
        let tally = Tally { active: names(1), ready: 1, succeeded: 2, ..Tally::default() };
        let running = next_status(&JobStatus::default(), &tally, 1, None, false, at(5));
        assert_eq!(
            (running.active, running.ready, running.succeeded, running.failed),
            (Some(1), Some(1), Some(2), None)
        );
        assert_eq!(running.start_time, Some(Time(at(5))));
        let again = next_status(&running, &tally, 1, None, false, at(9));
        assert_eq!(again, running, "an unchanged Job gets the same status, so nothing is written");

        let done = Tally { succeeded: 3, ..Tally::default() };
        let complete = next_status(&running, &done, 0, Some(&Finish::Complete), false, at(20));
        let kinds: Vec<&str> = complete.conditions.iter().flatten().map(|c| c.type_.as_str()).collect();
        assert_eq!(kinds, ["SuccessCriteriaMet", "Complete"]);
        assert_eq!(
            (complete.completion_time, complete.start_time, complete.active),
            (Some(Time(at(20))), Some(Time(at(5))), None)
        );
        assert_eq!(finished_at(&complete_status(at(20))), Some(at(20)));
        assert_eq!(finished_at(&running), None);

        let failed = next_status(
            &running,
            &Tally { failed: 7, ..Tally::default() },
            0,
            Some(&Finish::Failed { reason: "BackoffLimitExceeded", message: "m" }),
            false,
            at(20),
        );
        let kinds: Vec<&str> = failed.conditions.iter().flatten().map(|c| c.type_.as_str()).collect();
        assert_eq!((kinds, failed.completion_time), (vec!["FailureTarget", "Failed"], None));
    }

    fn complete_status(when: Timestamp) -> JobStatus {
        next_status(&JobStatus::default(), &Tally::default(), 0, Some(&Finish::Complete), false, when)
    }

    #[test]
    fn ttl_counts_from_the_finish() {
        assert_eq!(ttl_left(at(0), 30, at(10)), Some(Duration::from_secs(20)));
        assert_eq!(ttl_left(at(0), 30, at(30)), None);
        assert_eq!(ttl_left(at(0), 0, at(0)), None, "a zero TTL deletes at once");
    }
}
