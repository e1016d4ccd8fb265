//! The API server's own bookkeeping, as kube-apiserver and kube-controller-manager do it: the namespaces
//! that exist from the start, a `default` ServiceAccount in every namespace, and emptying a namespace that
//! is being deleted before removing it. Level-triggered: every namespace event and a periodic resync
//! reconcile all namespaces, so a missed event heals at the next pass.

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

fn def(plural: &str) -> &'static ResourceDef {
    // The registry always has core namespaces and serviceaccounts; resources.rs registers both.
    resources::find("", "v1", plural).unwrap_or_else(|| unreachable!("core/v1 {plural} is registered"))
}

/// RuntimeClasses every cluster has: a pod names one to force the shim its containers run on (the handler is
/// the shim's name); without one, the node picks per container from the image.
pub const RUNTIME_CLASSES: [&str; 2] = ["wasm", "oci"];

/// Creates the system namespaces and runtime classes that are missing.
pub async fn bootstrap(objects: &Objects) -> Result<(), ApiError> {
    let options = WriteOptions { field_manager: MANAGER.into(), ..WriteOptions::default() };
    let namespaces = SYSTEM_NAMESPACES
        .map(|name| (def("namespaces"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})));
    let classes = resources::find("node.k8s.io", "v1", "runtimeclasses").ok_or(ApiError::NoRoute)?;
    let runtime_classes = RUNTIME_CLASSES.map(|name| {
        let class = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": name});
        (classes, class)
    });
    for (def, object) in namespaces.into_iter().chain(runtime_classes) {
        match objects.create(def, None, object, &options).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the namespace controller until `shutdown`.
pub async fn run(objects: Objects, shutdown: CancellationToken) {
    let namespaces = def("namespaces");
    loop {
        let after = match objects.store().revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "namespace controller cannot read the store revision");
                0
            }
        };
        reconcile_all(&objects).await;
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
                _ = resync.tick() => reconcile_all(&objects).await,
                event = events.next() => match event {
                    Some(Ok(_)) => reconcile_all(&objects).await,
                    // A broken watch restarts from a fresh list: level-triggered, nothing is lost.
                    Some(Err(_)) | None => break,
                },
            }
        }
    }
}

async fn reconcile_all(objects: &Objects) {
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
        if let Err(e) = reconcile(objects, &namespace).instrument(span).await {
            tracing::warn!(namespace = %name, error = %e, "namespace reconcile failed");
        }
    }
}

async fn reconcile(objects: &Objects, namespace: &Value) -> Result<(), ApiError> {
    let name = objects::name_of(namespace);
    if namespace.pointer("/metadata/deletionTimestamp").is_none() {
        return ensure_default_service_account(objects, name).await;
    }
    let mut remaining = 0;
    for def in resources::all().iter().filter(|d| d.namespaced) {
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

async fn ensure_default_service_account(objects: &Objects, namespace: &str) -> Result<(), ApiError> {
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
