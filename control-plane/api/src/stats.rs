//! The kubelet's Summary API (`GET /stats/summary`, `stats/v1alpha1`), the part of it the metrics API is
//! made from: each node's and each pod's containers' CPU time and working set, read at a moment. Agents
//! serve it; the API server reads it from every node, as metrics-server does, and turns two readings into
//! rates.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    #[serde(default)]
    pub pods: Vec<PodStats>,
    /// Skiff's own: the requests this node's ingress forwarded, by endpoint address, so that a pod whose
    /// runtime does not count its requests (a container) has a request rate too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<ForwardedStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardedStats {
    pub time: String,
    /// Cumulative counts since the agent started, by the endpoint's address.
    pub requests: Vec<AddressCount>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AddressCount {
    pub address: String,
    pub requests: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    /// RFC 3339.
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Figures the runtime measures beyond CPU and memory: `http_requests` (cumulative) for a container whose
    /// runtime serves its HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_defined_metrics: Vec<UserDefinedMetric>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was read, RFC 3339 with nanoseconds: rates are taken between two readings.
    pub time: String,
    /// CPU time used since the start, in core-nanoseconds.
    pub usage_core_nano_seconds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    pub working_set_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserDefinedMetric {
    pub name: String,
    /// `cumulative` or `gauge`.
    #[serde(rename = "type")]
    pub kind: String,
    pub units: String,
    pub time: String,
    pub value: f64,
}

/// The cumulative count of requests a runtime served for a container.
pub const HTTP_REQUESTS: &str = "http_requests";
