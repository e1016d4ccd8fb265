//! HorizontalPodAutoscalers end to end with the real kubectl: `kubectl autoscale`, both API versions over
//! the same object, the server-side table, `kubectl describe`, the controller's conditions and events when
//! the target's pods have no metrics. Scaling on real metrics is `metrics.rs`'s.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Backend, Cluster, eventually};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        resources:
          requests: {cpu: 100m}
"#;

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&cluster.ok(args)).expect("kubectl printed JSON")
}

fn condition<'a>(hpa: &'a Value, kind: &str) -> Option<&'a Value> {
    hpa.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == kind)
}

pub fn hpa_autoscale_serves_both_versions_and_reports_missing_metrics(backend: Backend) {
    // A short sync period, so the controller reports within the test's patience.
    let cluster = Cluster::start_with(backend, &["--horizontal-pod-autoscaler-sync-period=2s"]).unwrap();
    let resources = cluster.ok(&["api-resources", "--api-group=autoscaling"]);
    let line = resources.lines().find(|l| l.starts_with("horizontalpodautoscalers ")).expect("hpa listed");
    assert!(
        line.split_whitespace().eq([
            "horizontalpodautoscalers",
            "hpa",
            "autoscaling/v2",
            "true",
            "HorizontalPodAutoscaler"
        ]),
        "{line}"
    );
    let versions = cluster.ok(&["api-versions"]);
    assert!(versions.contains("autoscaling/v1") && versions.contains("autoscaling/v2"), "{versions}");

    let out = cluster.with_stdin(&["apply", "-f", "-"], DEPLOYMENT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = cluster.ok(&["autoscale", "deployment", "web", "--cpu-percent=50", "--min=1", "--max=10"]);
    assert!(created.contains("horizontalpodautoscaler.autoscaling/web autoscaled"), "{created}");

    // One object, two views. kubectl 1.33 expands a short name (`hpa.v1.autoscaling`) to the preferred
    // version, as it does against kube-apiserver; the full resource name keeps the version asked for.
    let v1 = json(&cluster, &["get", "horizontalpodautoscalers.v1.autoscaling", "web", "-o", "json"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!((&v1["spec"]["minReplicas"], &v1["spec"]["maxReplicas"]), (&Value::from(1), &Value::from(10)));
    assert_eq!(v1["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let v2 = json(&cluster, &["get", "horizontalpodautoscalers.v2.autoscaling", "web", "-o", "json"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"],
        serde_json::json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    assert_eq!(v1["metadata"]["uid"], v2["metadata"]["uid"]);

    // Without metrics for the pods the controller cannot compute a count, and says why.
    let metrics_served = cluster.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).status.success();
    let hpa = eventually("the HPA reports on its metrics", Duration::from_secs(60), || {
        let hpa = json(&cluster, &["get", "hpa", "web", "-o", "json"]);
        condition(&hpa, "ScalingActive").is_some().then_some(hpa)
    });
    let active = condition(&hpa, "ScalingActive").unwrap();
    assert_eq!(
        (&active["status"], &active["reason"]),
        (&Value::from("False"), &Value::from("FailedGetResourceMetric")),
        "{hpa}"
    );
    let message = active["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the HPA was unable to compute the replica count: failed to get cpu utilization: "),
        "{message}"
    );
    if !metrics_served {
        assert!(message.ends_with("unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)"), "{message}");
    }
    let able = condition(&hpa, "AbleToScale").unwrap();
    assert_eq!((&able["status"], &able["reason"]), (&Value::from("True"), &Value::from("SucceededGetScale")), "{hpa}");
    assert_eq!(hpa["status"]["currentReplicas"], 1);

    // The table: kubectl 1.33's columns and targets.
    let table = cluster.ok(&["get", "hpa"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..6], ["web", "Deployment/web", "cpu:", "<unknown>/50%", "1", "10"], "{table}");

    // kubectl's own describer reads the v2 object and the events.
    let described = cluster.ok(&["describe", "hpa", "web"]);
    for expected in
        ["Reference:", "Deployment/web", "Min replicas:", "Max replicas:", "ScalingActive", "FailedGetResourceMetric"]
    {
        assert!(described.contains(expected), "describe shows {expected}:\n{described}");
    }

    // A v2 change v1 cannot express survives a write through v1.
    let patch = r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":60}}}}"#;
    cluster.ok(&["patch", "horizontalpodautoscalers.v2.autoscaling", "web", "--type=merge", "-p", patch]);
    let v1 = json(&cluster, &["get", "horizontalpodautoscalers.v1.autoscaling", "web", "-o", "json"]);
    let behavior =
        v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/behavior"].as_str().unwrap_or_default();
    assert!(behavior.contains(r#""StabilizationWindowSeconds":60"#), "{v1}");
    cluster.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"maxReplicas":5}}"#,
    ]);
    let v2 = json(&cluster, &["get", "horizontalpodautoscalers.v2.autoscaling", "web", "-o", "json"]);
    assert_eq!(v2["spec"]["maxReplicas"], 5);
    assert_eq!(v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 60, "{v2}");
    assert_eq!(v2["spec"]["behavior"]["scaleUp"]["policies"][0]["type"], "Pods", "defaults filled: {v2}");

    // Kubernetes' validation.
    let refused = cluster.fails(&["patch", "hpa", "web", "--type=merge", "-p", r#"{"spec":{"minReplicas":7}}"#]);
    assert!(
        refused.contains("spec.maxReplicas: Invalid value: 5: must be greater than or equal to `minReplicas`"),
        "{refused}"
    );
    // Above maxReplicas the controller scales the target down to it through /scale, metrics or not.
    cluster.ok(&["scale", "deployment", "web", "--replicas=8"]);
    eventually("the HPA brings the deployment to maxReplicas", Duration::from_secs(60), || {
        let deployment = json(&cluster, &["get", "deployment", "web", "-o", "json"]);
        (deployment["spec"]["replicas"] == 5).then_some(())
    });
    let hpa = eventually("the rescale is recorded", Duration::from_secs(30), || {
        let hpa = json(&cluster, &["get", "hpa", "web", "-o", "json"]);
        hpa.pointer("/status/lastScaleTime").is_some().then_some(hpa)
    });
    assert_eq!(hpa["status"]["desiredReplicas"], 5, "{hpa}");
    let events = json(&cluster, &["get", "events", "-o", "json"]);
    let rescaled = events["items"].as_array().unwrap().iter().any(|e| {
        e["reason"] == "SuccessfulRescale"
            && e["message"] == "New size: 5; reason: Current number of replicas above Spec.MaxReplicas"
            && e["involvedObject"]["kind"] == "HorizontalPodAutoscaler"
    });
    assert!(rescaled, "a SuccessfulRescale event: {events}");
}
