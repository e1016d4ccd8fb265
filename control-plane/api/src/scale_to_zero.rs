//! Scaling an HTTP workload to zero while it is idle, and back when a request comes (Skiff's own; Kubernetes
//! reserves HPA `minReplicas: 0` for it and leaves it to Knative or KEDA):
//!
//! - A Deployment opts in with [`IDLE_AFTER`] (a Go duration: `30s`, `5m`). The control plane scales it to
//!   zero once its pods have served no request for that long, and marks each Service that selects its
//!   pods with [`SCALES_FROM_ZERO`], naming the Deployment.
//! - A node's ingress that gets a request for such a Service while it has no ready endpoint holds the
//!   request and scales the Deployment back to one replica through `deployments/scale`. Nodes may do that
//!   much and no more: [`admit_activation`] is NodeRestriction's rule for it.

use std::time::Duration;

use serde_json::Value;

/// On a Deployment: how long its pods may go without a request before it is scaled to zero.
pub const IDLE_AFTER: &str = "skiff.dev/scale-to-zero-after";
/// On a Service: the Deployment (in the Service's namespace) a request scales up from zero.
pub const SCALES_FROM_ZERO: &str = "skiff.dev/scale-from-zero";

/// The idle period a Deployment (as JSON) asks for, if it opted in with a valid one.
pub fn idle_after(deployment: &Value) -> Option<Duration> {
    let text = deployment.pointer("/metadata/annotations")?.get(IDLE_AFTER)?.as_str()?;
    crate::parse_go_duration(text).filter(|d| !d.is_zero())
}

/// NodeRestriction for a node's write of a Deployment's scale (`old` and `new` are the Deployment before and
/// after): only from zero to one replica, and only of a Deployment that opted in. A node that could set any
/// size could take the cluster's capacity; this one can only wake what its owner let sleep.
pub fn admit_activation(old: Option<&Value>, new: Option<&Value>) -> Result<(), String> {
    let (Some(old), Some(new)) = (old, new) else {
        return Err("a node may only update a Deployment's scale".into());
    };
    if idle_after(old).is_none() {
        return Err(format!("a node may only scale a Deployment annotated {IDLE_AFTER}"));
    }
    let replicas = |deployment: &Value| deployment.pointer("/spec/replicas").and_then(Value::as_i64);
    match (replicas(old), replicas(new)) {
        (Some(0), Some(1)) => Ok(()),
        _ => Err("a node may only scale a Deployment from 0 to 1 replicas".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(annotation: Option<&str>, replicas: i64) -> Value {
        let annotations = annotation.map(|a| json!({IDLE_AFTER: a})).unwrap_or(json!({}));
        json!({"metadata": {"name": "web", "annotations": annotations}, "spec": {"replicas": replicas}})
    }

    #[test]
    fn durations_parse_as_go_parses_them() {
        assert_eq!(crate::parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(crate::parse_go_duration("1m0.5s"), Some(Duration::from_millis(60_500)));
        assert_eq!(crate::parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(crate::parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "5", "5 m", "m", "-1s", "1d"] {
            assert_eq!(crate::parse_go_duration(bad), None, "{bad}");
        }
        assert_eq!(idle_after(&deployment(Some("5m"), 1)), Some(Duration::from_secs(300)));
        assert_eq!(idle_after(&deployment(Some("0s"), 1)), None);
        assert_eq!(idle_after(&deployment(None, 1)), None);
    }

    #[test]
    fn a_node_may_only_wake_an_opted_in_deployment() {
        let asleep = deployment(Some("30s"), 0);
        assert_eq!(admit_activation(Some(&asleep), Some(&deployment(Some("30s"), 1))), Ok(()));
        let refused = |old: &Value, new: &Value| admit_activation(Some(old), Some(new)).unwrap_err();
        assert!(refused(&asleep, &deployment(Some("30s"), 5)).contains("from 0 to 1"));
        assert!(refused(&deployment(Some("30s"), 1), &deployment(Some("30s"), 0)).contains("from 0 to 1"));
        assert!(refused(&deployment(None, 0), &deployment(None, 1)).contains(IDLE_AFTER));
        assert!(admit_activation(None, Some(&asleep)).is_err());
    }
}
