//! Leader election on a coordination.k8s.io Lease, as kube-controller-manager does it: the holder renews the
//! Lease every [`RENEW_EVERY`]; a candidate takes it over once it has seen the same record, unrenewed, for
//! the lease's duration. Time is measured on the candidate's own clock from when it observed the record, so
//! servers with skewed clocks still agree.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a holder's lease lasts without renewal; a new leader takes over within this plus one retry.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_secs(2);

pub struct Election {
    pub leases: Api<Lease>,
    pub name: String,
    pub identity: String,
}

impl Election {
    /// Campaigns until `shutdown`; each time this process becomes leader it runs `lead` with a token that is
    /// cancelled when leadership is lost (the lease could not be renewed within its duration) or on shutdown.
    /// On shutdown a held lease is released so another server takes over at once.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut lead: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut observed: Option<(Option<String>, Instant)> = None;
        loop {
            let acquired = tokio::select! {
                _ = shutdown.cancelled() => return,
                acquired = self.try_acquire(&mut observed) => acquired,
            };
            if !acquired {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RENEW_EVERY) => continue,
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let term = shutdown.child_token();
            let work = tokio::spawn(lead(term.clone()));
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                }
                match self.renew().await {
                    Ok(true) => last_renewal = Instant::now(),
                    Ok(false) => break,
                    Err(error) if last_renewal.elapsed() < LEASE_DURATION => {
                        tracing::warn!(%error, "cannot renew the leader lease; retrying");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "leader lease expired unrenewed");
                        break;
                    }
                }
            }
            term.cancel();
            let _ = work.await;
            tracing::info!(lease = %self.name, "stopped leading");
            if shutdown.is_cancelled() {
                self.release().await;
                return;
            }
            observed = None;
        }
    }

    /// Takes the lease when it is free, ours, or expired by our own observation.
    async fn try_acquire(&self, observed: &mut Option<(Option<String>, Instant)>) -> bool {
        let now = MicroTime(jiff::Timestamp::now());
        let current = match self.leases.get_opt(&self.name).await {
            Ok(current) => current,
            Err(error) => {
                tracing::debug!(%error, "cannot read the leader lease");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, 0)),
            };
            return self.leases.create(&PostParams::default(), &lease).await.is_ok();
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let free = holder.is_none() || holder.as_deref() == Some(self.identity.as_str());
        if !free {
            // The record (holder and renew time) must stay unchanged for a whole lease duration.
            let record = Some(format!("{holder:?}{:?}", spec.renew_time));
            match observed {
                Some((seen, since)) if *seen == record => {
                    let duration =
                        spec.lease_duration_seconds.map_or(LEASE_DURATION, |s| Duration::from_secs(s as u64));
                    if since.elapsed() < duration {
                        return false;
                    }
                }
                _ => {
                    *observed = Some((record, Instant::now()));
                    return false;
                }
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!free || holder.is_none());
        lease.spec = Some(self.spec(now, transitions));
        self.leases.replace(&self.name, &PostParams::default(), &lease).await.is_ok()
    }

    /// Renews a lease we hold; `Ok(false)` when someone else holds it now.
    async fn renew(&self) -> Result<bool, kube::Error> {
        let mut lease = self.leases.get(&self.name).await?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.leases.replace(&self.name, &PostParams::default(), &lease).await?;
        Ok(true)
    }

    async fn release(&self) {
        let Ok(mut lease) = self.leases.get(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self.leases.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }

    fn spec(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}
