//! Waking a Deployment scaled to zero (see `skiff_api::scale_to_zero`) when a request comes for a Service
//! marked `skiff.dev/scale-from-zero` that has no ready endpoint: the request is held, not refused, while
//! the node scales the Deployment from zero to one replica through `deployments/scale` (the one write
//! NodeRestriction lets a node make on Deployments) and the service proxy's caches show an endpoint.
//! Requests arriving meanwhile queue behind it, at most [`MAX_HELD`] per Service; beyond that, or after
//! [`HOLD_TIMEOUT`], they get 503 with `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;

use crate::metrics::AgentMetrics;
use crate::proxy::{ServiceKey, SharedCaches};

/// Requests held per Service while its Deployment wakes.
pub const MAX_HELD: usize = 1_000;
/// How long a request is held: long enough for a container image to be pulled on first use.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a held request is answered 503.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// [`MAX_HELD`] requests already wait for this Service.
    Full,
    /// No endpoint became ready within [`HOLD_TIMEOUT`].
    TimedOut,
}

pub struct Activator {
    client: kube::Client,
    node: String,
    metrics: Arc<AgentMetrics>,
    /// Requests held, by Service.
    held: Mutex<HashMap<ServiceKey, usize>>,
    /// Deployments (namespace, name) a wake-up is under way for: one API request each, not one per request.
    waking: Arc<Mutex<HashSet<(String, String)>>>,
}

/// A held request's place, given back when it is answered.
struct Place<'a> {
    activator: &'a Activator,
    service: ServiceKey,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut held = self.activator.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.service) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.service);
            }
        }
    }
}

impl Activator {
    pub fn new(client: kube::Client, node: String, metrics: Arc<AgentMetrics>) -> Self {
        Activator { client, node, metrics, held: Mutex::default(), waking: Arc::default() }
    }

    /// Holds a request for `service` until `ready` (its endpoints, read from `caches`) has some, waking
    /// `deployment` meanwhile; `what` names the request in the event.
    pub async fn hold(
        &self,
        caches: &SharedCaches,
        service: &ServiceKey,
        deployment: &str,
        what: &str,
        ready: impl Fn() -> Vec<SocketAddrV4>,
    ) -> Result<Vec<SocketAddrV4>, Unavailable> {
        let _place = self.take_place(service)?;
        let held = std::time::Instant::now();
        // Subscribed before waking: the change that brings the endpoint cannot be missed.
        let mut changes = caches.read().unwrap_or_else(PoisonError::into_inner).subscribe();
        self.wake(&service.namespace, deployment, what);
        let wait = async {
            loop {
                let endpoints = ready();
                if !endpoints.is_empty() {
                    return Ok(endpoints);
                }
                if changes.changed().await.is_err() {
                    // The proxy stopped: the agent is shutting down.
                    return Err(Unavailable::TimedOut);
                }
            }
        };
        let served = tokio::time::timeout(HOLD_TIMEOUT, wait).await.unwrap_or(Err(Unavailable::TimedOut));
        if served.is_ok() {
            self.metrics.cold_start_wait.observe(held.elapsed().as_secs_f64());
        }
        served
    }

    fn take_place(&self, service: &ServiceKey) -> Result<Place<'_>, Unavailable> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(service.clone()).or_default();
        if *count >= MAX_HELD {
            return Err(Unavailable::Full);
        }
        *count += 1;
        Ok(Place { activator: self, service: service.clone() })
    }

    /// Scales `deployment` from zero to one replica in the background, unless a wake-up of it is under way.
    fn wake(&self, namespace: &str, deployment: &str, what: &str) {
        let key = (namespace.to_string(), deployment.to_string());
        if !self.waking.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone()) {
            return;
        }
        let (client, node, waking, what) =
            (self.client.clone(), self.node.clone(), self.waking.clone(), what.to_string());
        let metrics = self.metrics.clone();
        let span = tracing::info_span!("wake", deployment = %format!("{namespace}/{deployment}"));
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match scale_from_zero(&client, &key.0, &key.1).await {
                    Ok(true) => {
                        tracing::info!("scaled from zero for a held request");
                        let labels = [("namespace", key.0.clone()), ("deployment", key.1.clone())];
                        metrics.cold_starts.get_or_create(&labels).inc();
                        record(&client, &node, &key.0, &key.1, &what).await;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot scale from zero"),
                }
                waking.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            },
            span,
        ));
    }
}

/// Sets one replica on a Deployment that has none; false when it already has some (another node woke it).
async fn scale_from_zero(client: &kube::Client, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut scale = deployments.get_scale(name).await?;
    if scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) != 0 {
        return Ok(false);
    }
    scale.spec.get_or_insert_with(Default::default).replicas = Some(1);
    // Replaced with the resourceVersion read: if another node woke it meanwhile, this one gets a conflict.
    match deployments.replace_scale(name, &PostParams::default(), &scale).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A Normal `ScaledFromZero` event on the Deployment, as the node's.
async fn record(client: &kube::Client, node: &str, namespace: &str, name: &str, what: &str) {
    let now = Time(jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectReference::default()
        },
        reason: Some("ScaledFromZero".into()),
        message: Some(format!("Scaled up from 0 to 1 replica: {what} was held on node {node}")),
        type_: Some("Normal".into()),
        source: Some(EventSource { component: Some("skiff-ingress".into()), host: Some(node.to_string()) }),
        reporting_component: Some("skiff-ingress".into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::debug!(error = %e, "cannot record the wake-up");
    }
}
