//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation controller: a ClusterRole
//! with an `aggregationRule` holds the rules of every ClusterRole its selectors match, so labelling a new
//! role `rbac.authorization.k8s.io/aggregate-to-edit: "true"` extends `edit` (and through it `admin`).
//! Which rules each aggregated role should hold is `skiff_api::rbac::aggregate`, over the whole cache: any
//! ClusterRole change can change any aggregate, so every change recomputes them all.

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;

const MANAGER: &str = "clusterrole-aggregation-controller";

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let roles: Api<ClusterRole> = Api::all(client);
    let (cache, writer) = reflector::store::<ClusterRole>();
    let mut changes =
        reflector::reflector(writer, watcher(roles.clone(), watcher::Config::default())).default_backoff().boxed();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = changes.next() => match event {
                // A relist's own events come before its InitDone: aggregate once the cache is whole.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) | Some(Err(_)) => continue,
                Some(Ok(_)) => {}
                None => return,
            },
        }
        if let Err(error) = sync(&roles, &cache).await {
            tracing::warn!(error = %error, "clusterrole aggregation failed; retrying on the next change");
        }
    }
}

async fn sync(roles: &Api<ClusterRole>, cache: &Store<ClusterRole>) -> Result<(), Error> {
    let all: Vec<ClusterRole> = cache.state().iter().map(|role| (**role).clone()).collect();
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    for (name, rules) in skiff_api::rbac::aggregate(&all) {
        let patch = Patch::Merge(json!({"rules": rules}));
        let span = tracing::info_span!("aggregate", clusterrole = %name);
        tracing::info!(parent: &span, rules = rules.len(), "aggregating rules");
        roles.patch(&name, &params, &patch).instrument(span).await?;
    }
    Ok(())
}
