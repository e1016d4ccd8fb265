//! Events about the objects controllers act on, as core/v1 Events (what `kubectl describe` lists), written
//! in the background so that recording never delays a reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// Records events as one component (`deployment-controller`, `default-scheduler`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Self {
        Self { client, component }
    }

    /// Records `reason` and `message` about `object`; failures are logged, never returned.
    pub fn record<K>(&self, object: &K, kind: Kind, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let involved = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(object.name_any()),
            namespace: object.namespace(),
            uid: object.uid(),
            resource_version: object.resource_version(),
            ..ObjectReference::default()
        };
        let now = Time(jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", object.name_any())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(format!("{kind:?}")),
            source: Some(EventSource { component: Some(self.component.into()), host: None }),
            reporting_component: Some(self.component.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        tokio::spawn(async move {
            if let Err(error) = events.create(&PostParams::default(), &event).await {
                tracing::debug!(%error, "cannot record an event");
            }
        });
    }
}
