//! An in-cluster client written as kube-rs's own examples are (`pod_api`, `pod_watcher`): run inside a pod,
//! `Client::try_default()` finds no kubeconfig and infers the in-cluster configuration (the
//! `KUBERNETES_SERVICE_HOST`/`_PORT` variables, the ServiceAccount's token, CA and namespace files), then
//! the pods of the pod's own namespace are listed by name. A failure, such as a 403 without RBAC, prints
//! the error and exits 1. The end-to-end test `incluster_workloads_use_the_in_cluster_configuration` runs it.

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, ResourceExt};

#[tokio::main]
async fn main() {
    if let Err(e) = list_pods().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn list_pods() -> Result<(), kube::Error> {
    let client = Client::try_default().await?;
    let pods: Api<Pod> = Api::default_namespaced(client);
    for pod in pods.list(&ListParams::default()).await? {
        println!("{}", pod.name_any());
    }
    Ok(())
}
