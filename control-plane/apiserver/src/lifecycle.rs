//! The API server's own bookkeeping, as kube-apiserver and kube-controller-manager do it: the namespaces
//! that exist from the start, a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every
//! namespace, and emptying a namespace that is being deleted before removing it. Level-triggered: every
//! namespace event and a periodic resync reconcile all namespaces, so a missed event heals at the next pass.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::resources::{self, ResourceDef};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::objects::{self, DeleteOptions, ListOptions, Objects, Part, WriteOptions};

/// Namespaces every cluster has, as in Kubernetes.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// How often namespaces are reconciled without an event: a terminating namespace waits on its contents'
/// finalizers, which are not namespace events.
const RESYNC: Duration = Duration::from_secs(2);

const MANAGER: &str = "skiff-apiserver";

/// The annotation kube-controller-manager's root-ca-cert-publisher puts on `kube-root-ca.crt`, and its text.
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub(crate) fn def(plural: &str) -> &'static ResourceDef {
    // The registry always has core namespaces and serviceaccounts; resources.rs registers both.
    resources::find("", "v1", plural).unwrap_or_else(|| unreachable!("core/v1 {plural} is registered"))
}

/// RuntimeClasses every cluster has: a pod names one to force the shim its containers run on (the handler is
/// the shim's name); without one, the node picks per container from the image.
pub const RUNTIME_CLASSES: [&str; 2] = ["wasm", "oci"];

/// Creates the system namespaces, runtime classes and the `skiff` IngressClass where they are missing.
pub async fn bootstrap(objects: &Objects) -> Result<(), ApiError> {
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    let namespaces = SYSTEM_NAMESPACES
        .map(|name| (def("namespaces"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})));
    let classes = resources::find("node.k8s.io", "v1", "runtimeclasses").ok_or(ApiError::NoRoute)?;
    let runtime_classes = RUNTIME_CLASSES.map(|name| {
        let class = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": name});
        (classes, class)
    });
    // The nodes' ingress proxy's class, the default for Ingresses that name none, as k3s ships Traefik's.
    let ingress_classes = resources::find("networking.k8s.io", "v1", "ingressclasses").ok_or(ApiError::NoRoute)?;
    let ingress_class = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": skiff_api::ingress::SKIFF_CLASS,
            "annotations": {skiff_api::ingress::DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "spec": {"controller": skiff_api::ingress::SKIFF_CONTROLLER},
    });
    let system_objects = runtime_classes.into_iter().chain([(ingress_classes, ingress_class)]);
    for (def, object) in namespaces.into_iter().chain(system_objects) {
        match objects.create(def, None, object, &options).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates Kubernetes' bootstrap RBAC policy (`skiff_api::rbac::bootstrap`) where it is missing, and on
/// an upgrade adds what a newer policy grants to the existing objects, as kube-apiserver's
/// `rbac/bootstrap-roles` post-start hook: what an operator added stays, and an object annotated
/// `rbac.authorization.kubernetes.io/autoupdate: "false"` is left alone.
pub async fn bootstrap_policy(objects: &Objects) -> Result<(), ApiError> {
    use skiff_api::rbac::bootstrap;
    ensure_policy(objects, "clusterroles", bootstrap::cluster_roles(), bootstrap::reconcile).await?;
    ensure_policy(objects, "clusterrolebindings", bootstrap::cluster_role_bindings(), bootstrap::reconcile_binding)
        .await
}

async fn ensure_policy<T: serde::Serialize + serde::de::DeserializeOwned>(
    objects: &Objects,
    plural: &str,
    wanted: Vec<T>,
    reconcile: fn(&T, &T) -> Option<T>,
) -> Result<(), ApiError> {
    let def = resources::find("rbac.authorization.k8s.io", "v1", plural)
        .unwrap_or_else(|| unreachable!("{plural} is registered"));
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    let encode = |object: &T| serde_json::to_value(object).map_err(|e| ApiError::Internal(format!("{plural}: {e}")));
    for wanted in wanted {
        let object = encode(&wanted)?;
        let name = objects::name_of(&object).to_string();
        match objects.get(def, None, &name).await {
            // Another server starting at the same time may create it first.
            Err(ApiError::NotFound { .. }) => match objects.create(def, None, object, &options).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
            Ok(current) => {
                let current: T = serde_json::from_value(current)
                    .map_err(|e| ApiError::Internal(format!("stored {plural} {name}: {e}")))?;
                if let Some(updated) = reconcile(&current, &wanted) {
                    tracing::info!(kind = plural, name, "updating bootstrap policy");
                    objects.replace(def, None, &name, Part::Main, encode(&updated)?, &options).await?;
                }
            }
        }
    }
    Ok(())
}

/// Runs the namespace controller until `shutdown`; `root_ca` is the cluster CA (PEM) every namespace's
/// `kube-root-ca.crt` holds.
pub async fn run(objects: Objects, root_ca: String, shutdown: CancellationToken) {
    let namespaces = def("namespaces");
    loop {
        let after = match objects.store().revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "namespace controller cannot read the store revision");
                0
            }
        };
        reconcile_all(&objects, &root_ca).await;
        let mut events = match objects.store().watch(&objects::prefix(namespaces, None), after).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "namespace controller cannot watch; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RESYNC) => continue,
                }
            }
        };
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = resync.tick() => reconcile_all(&objects, &root_ca).await,
                event = events.next() => match event {
                    Some(Ok(_)) => reconcile_all(&objects, &root_ca).await,
                    // A broken watch restarts from a fresh list: level-triggered, nothing is lost.
                    Some(Err(_)) | None => break,
                },
            }
        }
    }
}

/// One pass over every namespace: what an active one holds from the start (the `default` ServiceAccount,
/// `kube-root-ca.crt` with `root_ca`), and emptying the terminating ones. The server runs one before it
/// serves, so the system namespaces are complete when the first client arrives.
pub async fn reconcile_all(objects: &Objects, root_ca: &str) {
    let list = match objects.list(def("namespaces"), None, &ListOptions::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, "namespace controller cannot list namespaces");
            return;
        }
    };
    objects.cache_namespaces(
        list.iter().map(|ns| (objects::name_of(ns).to_string(), ns.pointer("/metadata/deletionTimestamp").is_some())),
    );
    for namespace in list {
        let name = objects::name_of(&namespace).to_string();
        let span = tracing::debug_span!("reconcile", namespace = %name);
        if let Err(e) = reconcile(objects, &namespace, root_ca).instrument(span).await {
            tracing::warn!(namespace = %name, error = %e, "namespace reconcile failed");
        }
    }
}

async fn reconcile(objects: &Objects, namespace: &Value, root_ca: &str) -> Result<(), ApiError> {
    let name = objects::name_of(namespace);
    if namespace.pointer("/metadata/deletionTimestamp").is_none() {
        ensure_default_service_account(objects, name).await?;
        return ensure_root_ca(objects, name, root_ca).await;
    }
    let mut remaining = 0;
    // One version of each resource: the others are views of the same stored objects.
    for def in resources::all().iter().filter(|d| d.namespaced && d.is_storage()) {
        for item in objects.list(def, Some(name), &ListOptions::default()).await?.items {
            remaining += 1;
            if item.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            match objects.delete(def, Some(name), objects::name_of(&item), &DeleteOptions::default()).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Deleted objects that had finalizers or grace periods are still there; the next pass checks again.
        return Ok(());
    }
    tracing::info!(namespace = name, "namespace is empty, removing it");
    let finalized = {
        let mut namespace = namespace.clone();
        namespace["spec"]["finalizers"] = json!([]);
        namespace
    };
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    match objects.replace(def("namespaces"), None, name, Part::Main, finalized, &options).await {
        Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the `default` ServiceAccount of `namespace` if it is missing (also on demand, by the
/// ServiceAccount admission of a pod created before this controller's pass).
pub(crate) async fn ensure_default_service_account(objects: &Objects, namespace: &str) -> Result<(), ApiError> {
    let accounts = def("serviceaccounts");
    if objects.get(accounts, Some(namespace), "default").await.is_ok() {
        return Ok(());
    }
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    match objects.create(accounts, Some(namespace), account, &options).await {
        // The namespace may have started terminating since it was listed.
        Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keeps `namespace`'s `kube-root-ca.crt` as kube-controller-manager's root-ca-cert-publisher does: made
/// when missing, its data and description put back when they differ. Pods read the CA from it through
/// their projected `kube-api-access-*` volume.
async fn ensure_root_ca(objects: &Objects, namespace: &str, root_ca: &str) -> Result<(), ApiError> {
    use crate::serviceaccounts::ROOT_CA_CONFIG_MAP;
    let config_maps = def("configmaps");
    let data = json!({"ca.crt": root_ca});
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    let current = match objects.get(config_maps, Some(namespace), ROOT_CA_CONFIG_MAP).await {
        Ok(current) => current,
        Err(ApiError::NotFound { .. }) => {
            let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIG_MAP, "annotations": {DESCRIPTION_ANNOTATION: ROOT_CA_DESCRIPTION}},
                "data": data});
            return match objects.create(config_maps, Some(namespace), config_map, &options).await {
                // The namespace may have started terminating since it was listed.
                Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => Ok(()),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let described = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|d| !d.is_empty());
    if current.get("data") == Some(&data) && described {
        return Ok(());
    }
    let mut updated = current;
    updated["data"] = data;
    updated.as_object_mut().map(|c| c.remove("binaryData"));
    if !updated["metadata"]["annotations"].is_object() {
        updated["metadata"]["annotations"] = json!({});
    }
    updated["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(ROOT_CA_DESCRIPTION);
    tracing::info!(namespace, "putting back the cluster CA in kube-root-ca.crt");
    // The resourceVersion read is a precondition; a change meanwhile is looked at again next pass.
    match objects.replace(config_maps, Some(namespace), ROOT_CA_CONFIG_MAP, Part::Main, updated, &options).await {
        Ok(_) | Err(ApiError::Conflict { .. }) | Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn every_namespace_gets_its_default_account_and_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let objects = Objects::new(store);
        bootstrap(&objects).await.unwrap();
        reconcile_all(&objects, "CA 1").await;
        let config_maps = def("configmaps");
        for namespace in SYSTEM_NAMESPACES {
            let ca = objects.get(config_maps, Some(namespace), "kube-root-ca.crt").await.unwrap();
            assert_eq!(ca["data"], json!({"ca.crt": "CA 1"}), "{namespace}");
            assert_eq!(ca["metadata"]["annotations"][DESCRIPTION_ANNOTATION], ROOT_CA_DESCRIPTION);
            assert!(objects.get(def("serviceaccounts"), Some(namespace), "default").await.is_ok());
        }

        // Edited, or the CA changed: put back; otherwise left alone.
        let options = WriteOptions::default();
        let edit = json!({"data": {"ca.crt": "mine", "extra": "x"}});
        let patch = skiff_api::patch::PatchType::Merge;
        objects
            .patch(config_maps, Some("default"), "kube-root-ca.crt", Part::Main, patch, edit, false, &options)
            .await
            .unwrap();
        reconcile_all(&objects, "CA 2").await;
        let ca = objects.get(config_maps, Some("default"), "kube-root-ca.crt").await.unwrap();
        assert_eq!(ca["data"], json!({"ca.crt": "CA 2"}));
        let version = ca["metadata"]["resourceVersion"].clone();
        reconcile_all(&objects, "CA 2").await;
        let again = objects.get(config_maps, Some("default"), "kube-root-ca.crt").await.unwrap();
        assert_eq!(again["metadata"]["resourceVersion"], version, "nothing to write");
    }
}
