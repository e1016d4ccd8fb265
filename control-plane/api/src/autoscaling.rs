//! HorizontalPodAutoscaler machinery: the conversion between autoscaling/v2 (the storage version) and
//! autoscaling/v1, Kubernetes' defaults and validation for the v2 object.
//!
//! autoscaling/v1 knows one metric, `targetCPUUtilizationPercentage`. Everything else a v2 object holds
//! (other metrics, current metrics, conditions, behavior) rides in `autoscaling.alpha.kubernetes.io/*`
//! annotations on the v1 view and is lifted back out when a v1 object is written, as Kubernetes'
//! `pkg/apis/autoscaling/v1/conversion.go` does: a read-modify-write through v1 (`kubectl edit` with an old
//! client) then loses nothing. The annotations hold what Go's encoding/json writes: v1's metric types in
//! their fields' order, and the behavior in the internal type's Go field names (`ScaleUp`), which is
//! Kubernetes' own wart kept for compatibility.

use serde_json::{Map, Value, json};

use crate::resources::ConversionError;
use crate::validation::{Cause, parse_quantity};

/// `autoscaling.MetricSpecsAnnotation`: v2 metrics v1 cannot express, as v1 MetricSpecs.
pub const METRIC_SPECS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// `autoscaling.MetricStatusesAnnotation`: every current metric, as v1 MetricStatuses.
pub const METRIC_STATUSES_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// `autoscaling.HorizontalPodAutoscalerConditionsAnnotation`: the status conditions.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// `autoscaling.BehaviorSpecsAnnotation`: `spec.behavior`.
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
/// What the controller aims at when an HPA names no metric (`autoscaling.DefaultCPUUtilization`).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

const ROUND_TRIP_ANNOTATIONS: [&str; 4] =
    [METRIC_SPECS_ANNOTATION, METRIC_STATUSES_ANNOTATION, CONDITIONS_ANNOTATION, BEHAVIOR_ANNOTATION];
/// Kubernetes' bounds on behavior (`MaxPeriodSeconds`, `MaxStabilizationWindowSeconds`).
const MAX_PERIOD_SECONDS: i64 = 1800;
const MAX_STABILIZATION_WINDOW_SECONDS: i64 = 3600;

// ---------------------------------------------------------------------------------------------------
// Conversion.

/// An autoscaling/v1 HorizontalPodAutoscaler as the autoscaling/v2 object it stands for.
pub fn v1_to_v2(mut v1: Value) -> Result<Value, ConversionError> {
    let annotations = take_round_trip_annotations(&mut v1);
    let mut v2 = v1;
    v2["apiVersion"] = json!("autoscaling/v2");
    let mut metrics = Vec::new();
    if let Some(spec) = v2.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(target) = spec.remove("targetCPUUtilizationPercentage").filter(|t| !t.is_null())
    {
        metrics.push(cpu_utilization_metric(target));
    }
    if let Some(encoded) = annotations.get(METRIC_SPECS_ANNOTATION) {
        let others: Vec<Value> = parse_annotation(METRIC_SPECS_ANNOTATION, encoded)?;
        // Kubernetes puts the annotation's metrics first, then the one from targetCPUUtilizationPercentage.
        let mut converted: Vec<Value> = others.iter().map(metric_spec_from_v1).collect();
        converted.append(&mut metrics);
        metrics = converted;
    }
    if metrics.is_empty() {
        // autoscaling/v1 once had this default in the controller; v2 states it.
        metrics.push(cpu_utilization_metric(json!(DEFAULT_CPU_UTILIZATION)));
    }
    v2["spec"]["metrics"] = Value::Array(metrics);

    let mut current_metrics = Vec::new();
    if let Some(status) = v2.get_mut("status").and_then(Value::as_object_mut)
        && let Some(current) = status.remove("currentCPUUtilizationPercentage").filter(|c| !c.is_null())
    {
        current_metrics
            .push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}));
    }
    if let Some(encoded) = annotations.get(METRIC_STATUSES_ANNOTATION) {
        // The annotation has more than the one field of v1's status: it wins.
        let statuses: Vec<Value> = parse_annotation(METRIC_STATUSES_ANNOTATION, encoded)?;
        current_metrics = statuses.iter().map(metric_status_from_v1).collect();
    }
    if !current_metrics.is_empty() {
        v2["status"]["currentMetrics"] = Value::Array(current_metrics);
    }
    if let Some(encoded) = annotations.get(CONDITIONS_ANNOTATION) {
        let conditions: Vec<Value> = parse_annotation(CONDITIONS_ANNOTATION, encoded)?;
        v2["status"]["conditions"] = Value::Array(conditions.iter().map(condition_from_go).collect());
    }
    if let Some(encoded) = annotations.get(BEHAVIOR_ANNOTATION) {
        let behavior: Value = parse_annotation(BEHAVIOR_ANNOTATION, encoded)?;
        v2["spec"]["behavior"] = behavior_from_internal(&behavior);
    }
    Ok(v2)
}

/// A stored autoscaling/v2 HorizontalPodAutoscaler as autoscaling/v1 shows it.
pub fn v2_to_v1(mut v2: Value) -> Result<Value, ConversionError> {
    // Only annotations this conversion writes may be there, never stale ones a client left.
    take_round_trip_annotations(&mut v2);
    let mut v1 = v2.clone();
    v1["apiVersion"] = json!("autoscaling/v1");
    let metrics = items(&v2, "/spec/metrics");
    if let Some(spec) = v1.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("metrics");
        spec.remove("behavior");
        // The first cpu Resource metric is v1's; only a utilization target has a v1 form.
        if let Some(utilization) = metrics
            .iter()
            .find(|m| m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu")))
            .and_then(|m| m.pointer("/resource/target/averageUtilization"))
            .filter(|u| !u.is_null())
        {
            spec.insert("targetCPUUtilizationPercentage".into(), utilization.clone());
        }
    }
    let current_metrics = items(&v2, "/status/currentMetrics");
    let conditions = items(&v2, "/status/conditions");
    if let Some(status) = v1.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("currentMetrics");
        status.remove("conditions");
        // Kubernetes' loop does not stop at the first: the last cpu utilization is shown.
        if let Some(current) = current_metrics
            .iter()
            .filter(|m| m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu")))
            .filter_map(|m| m.pointer("/resource/current/averageUtilization").filter(|u| !u.is_null()))
            .next_back()
        {
            status.insert("currentCPUUtilizationPercentage".into(), current.clone());
        }
    }
    let others: Vec<String> = metrics
        .iter()
        .filter(|m| {
            !(m["type"] == "Resource"
                && m.pointer("/resource/name") == Some(&json!("cpu"))
                && m.pointer("/resource/target/averageUtilization").is_some_and(|u| !u.is_null()))
        })
        .map(metric_spec_to_v1)
        .collect();
    let mut annotations = Vec::new();
    if !others.is_empty() {
        annotations.push((METRIC_SPECS_ANNOTATION, go_array(others)));
    }
    if !current_metrics.is_empty() {
        annotations.push((METRIC_STATUSES_ANNOTATION, go_array(current_metrics.iter().map(metric_status_to_v1))));
    }
    if !conditions.is_empty() {
        annotations.push((CONDITIONS_ANNOTATION, go_array(conditions.iter().map(condition_to_go))));
    }
    if let Some(behavior) = v2.pointer("/spec/behavior").filter(|b| !b.is_null()) {
        annotations.push((BEHAVIOR_ANNOTATION, behavior_to_internal(behavior)));
    }
    if !annotations.is_empty() {
        let meta = &mut v1["metadata"];
        if !meta["annotations"].is_object() {
            meta["annotations"] = json!({});
        }
        for (key, value) in annotations {
            meta["annotations"][key] = json!(value);
        }
    }
    Ok(v1)
}

/// Removes the round-trip annotations from `object`, returning them.
fn take_round_trip_annotations(object: &mut Value) -> Map<String, Value> {
    let mut taken = Map::new();
    if let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        for key in ROUND_TRIP_ANNOTATIONS {
            if let Some(value) = annotations.remove(key) {
                taken.insert(key.to_string(), value);
            }
        }
        if annotations.is_empty()
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("annotations");
        }
    }
    taken
}

fn parse_annotation<T: serde::de::DeserializeOwned>(
    annotation: &'static str,
    encoded: &Value,
) -> Result<T, ConversionError> {
    serde_json::from_str(encoded.as_str().unwrap_or_default())
        .map_err(|source| ConversionError::Annotation { annotation, source })
}

fn items(object: &Value, pointer: &str) -> Vec<Value> {
    object.pointer(pointer).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn cpu_utilization_metric(target: Value) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}})
}

/// A field of a JSON object Go decoded: keys match case-insensitively, as encoding/json's do.
fn go_field<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(key)
        .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

/// Inserts `value` under `key` when there is one.
fn put(object: &mut Value, key: &str, value: Option<&Value>) {
    if let Some(value) = value.filter(|v| !v.is_null()) {
        object[key] = value.clone();
    }
}

/// v1's `metricName` and `selector` as v2's MetricIdentifier.
fn identifier(source: &Value, name_key: &str, selector_key: &str) -> Value {
    let mut metric = json!({"name": go_field(source, name_key).cloned().unwrap_or(json!(""))});
    put(&mut metric, "selector", go_field(source, selector_key));
    metric
}

fn metric_spec_from_v1(spec: &Value) -> Value {
    let kind = go_field(spec, "type").and_then(Value::as_str).unwrap_or_default();
    let mut out = json!({"type": kind});
    let empty = json!({});
    let source = |key| go_field(spec, key).unwrap_or(&empty);
    match kind {
        "Object" => {
            let s = source("object");
            let (value, average) =
                (go_field(s, "targetValue").cloned().unwrap_or(json!("0")), go_field(s, "averageValue"));
            let mut target = json!({"type": if average.is_some() { "AverageValue" } else { "Value" }, "value": value});
            put(&mut target, "averageValue", average);
            out["object"] = json!({
                "describedObject": go_field(s, "target").cloned().unwrap_or(json!({})),
                "metric": identifier(s, "metricName", "selector"),
                "target": target,
            });
        }
        "Pods" => {
            let s = source("pods");
            let average = go_field(s, "targetAverageValue").cloned().unwrap_or(json!("0"));
            out["pods"] = json!({
                "metric": identifier(s, "metricName", "selector"),
                "target": {"type": "AverageValue", "averageValue": average},
            });
        }
        "Resource" | "ContainerResource" => {
            let key = if kind == "Resource" { "resource" } else { "containerResource" };
            let s = source(key);
            let utilization = go_field(s, "targetAverageUtilization");
            let mut target = json!({"type": if utilization.is_some() { "Utilization" } else { "AverageValue" }});
            put(&mut target, "averageUtilization", utilization);
            put(&mut target, "averageValue", go_field(s, "targetAverageValue"));
            let mut converted = json!({"name": go_field(s, "name").cloned().unwrap_or(json!("")), "target": target});
            if kind == "ContainerResource" {
                converted["container"] = go_field(s, "container").cloned().unwrap_or(json!(""));
            }
            out[key] = converted;
        }
        "External" => {
            let s = source("external");
            let value = go_field(s, "targetValue");
            let mut target = json!({"type": if value.is_some() { "Value" } else { "AverageValue" }});
            put(&mut target, "value", value);
            put(&mut target, "averageValue", go_field(s, "targetAverageValue"));
            out["external"] = json!({"metric": identifier(s, "metricName", "metricSelector"), "target": target});
        }
        _ => {}
    }
    out
}

fn metric_status_from_v1(status: &Value) -> Value {
    let kind = go_field(status, "type").and_then(Value::as_str).unwrap_or_default();
    let mut out = json!({"type": kind});
    let empty = json!({});
    let source = |key| go_field(status, key).unwrap_or(&empty);
    match kind {
        "Object" => {
            let s = source("object");
            let mut current = json!({"value": go_field(s, "currentValue").cloned().unwrap_or(json!("0"))});
            put(&mut current, "averageValue", go_field(s, "averageValue"));
            out["object"] = json!({
                "describedObject": go_field(s, "target").cloned().unwrap_or(json!({})),
                "metric": identifier(s, "metricName", "selector"),
                "current": current,
            });
        }
        "Pods" => {
            let s = source("pods");
            let average = go_field(s, "currentAverageValue").cloned().unwrap_or(json!("0"));
            out["pods"] =
                json!({"metric": identifier(s, "metricName", "selector"), "current": {"averageValue": average}});
        }
        "Resource" | "ContainerResource" => {
            let key = if kind == "Resource" { "resource" } else { "containerResource" };
            let s = source(key);
            let mut current =
                json!({"averageValue": go_field(s, "currentAverageValue").cloned().unwrap_or(json!("0"))});
            put(&mut current, "averageUtilization", go_field(s, "currentAverageUtilization"));
            let mut converted = json!({"name": go_field(s, "name").cloned().unwrap_or(json!("")), "current": current});
            if kind == "ContainerResource" {
                converted["container"] = go_field(s, "container").cloned().unwrap_or(json!(""));
            }
            out[key] = converted;
        }
        "External" => {
            let s = source("external");
            let mut current = json!({"value": go_field(s, "currentValue").cloned().unwrap_or(json!("0"))});
            put(&mut current, "averageValue", go_field(s, "currentAverageValue"));
            out["external"] = json!({"metric": identifier(s, "metricName", "metricSelector"), "current": current});
        }
        _ => {}
    }
    out
}

fn condition_from_go(condition: &Value) -> Value {
    let mut out = json!({});
    for key in ["type", "status", "lastTransitionTime", "reason", "message"] {
        put(&mut out, key, go_field(condition, key));
    }
    out
}

fn behavior_from_internal(behavior: &Value) -> Value {
    let rules = |key| {
        go_field(behavior, key).map(|r| {
            let mut out = json!({});
            put(&mut out, "stabilizationWindowSeconds", go_field(r, "StabilizationWindowSeconds"));
            put(&mut out, "selectPolicy", go_field(r, "SelectPolicy"));
            put(&mut out, "tolerance", go_field(r, "Tolerance"));
            if let Some(policies) = go_field(r, "Policies").and_then(Value::as_array) {
                out["policies"] = policies
                    .iter()
                    .map(|p| {
                        let mut policy = json!({});
                        for (from, to) in [("Type", "type"), ("Value", "value"), ("PeriodSeconds", "periodSeconds")] {
                            put(&mut policy, to, go_field(p, from));
                        }
                        policy
                    })
                    .collect();
            }
            out
        })
    };
    let mut out = json!({});
    put(&mut out, "scaleUp", rules("ScaleUp").as_ref());
    put(&mut out, "scaleDown", rules("ScaleDown").as_ref());
    out
}

/// Go's encoding/json text of a struct: `fields` in order, `None`s left out (omitempty).
fn go_struct<'a>(fields: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let body: Vec<String> =
        fields.into_iter().filter_map(|(key, value)| value.map(|v| format!("{}:{v}", Value::from(key)))).collect();
    format!("{{{}}}", body.join(","))
}

fn go_array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

/// A JSON value as Go writes it; `None` for what omitempty drops (absent, null).
fn go_value(value: Option<&Value>) -> Option<String> {
    value.filter(|v| !v.is_null()).map(|v| match v.as_object() {
        // A label selector, the only object copied whole: Go writes its fields in declaration order.
        Some(map) if map.contains_key("matchLabels") || map.contains_key("matchExpressions") => go_struct([
            ("matchLabels", go_value(map.get("matchLabels"))),
            ("matchExpressions", go_value(map.get("matchExpressions"))),
        ]),
        _ => v.to_string(),
    })
}

/// A quantity as Go writes it: in canonical form, `"0"` when absent and the field is no pointer.
fn go_quantity(value: Option<&Value>) -> Option<String> {
    value.filter(|v| !v.is_null()).map(|v| {
        let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        Value::from(crate::quantity::canonical(&text).unwrap_or(text)).to_string()
    })
}

fn required_quantity(value: Option<&Value>) -> Option<String> {
    go_quantity(value).or_else(|| Some("\"0\"".into()))
}

fn cross_version_reference(reference: Option<&Value>) -> Option<String> {
    let reference = reference.cloned().unwrap_or(json!({}));
    Some(go_struct([
        ("kind", Some(Value::from(reference["kind"].as_str().unwrap_or_default()).to_string())),
        ("name", Some(Value::from(reference["name"].as_str().unwrap_or_default()).to_string())),
        ("apiVersion", go_value(reference.get("apiVersion")).filter(|v| v != "\"\"")),
    ]))
}

fn string_field(value: Option<&Value>) -> Option<String> {
    Some(Value::from(value.and_then(Value::as_str).unwrap_or_default()).to_string())
}

/// A v2 MetricSpec as v1's (v2beta1's) MetricSpec, in Go's field order.
fn metric_spec_to_v1(spec: &Value) -> String {
    let kind = spec["type"].as_str().unwrap_or_default();
    let source = match kind {
        "Object" => {
            let s = &spec["object"];
            Some(go_struct([
                ("target", cross_version_reference(s.get("describedObject"))),
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("targetValue", required_quantity(s.pointer("/target/value"))),
                ("selector", go_value(s.pointer("/metric/selector"))),
                ("averageValue", go_quantity(s.pointer("/target/averageValue"))),
            ]))
        }
        "Pods" => {
            let s = &spec["pods"];
            Some(go_struct([
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("targetAverageValue", required_quantity(s.pointer("/target/averageValue"))),
                ("selector", go_value(s.pointer("/metric/selector"))),
            ]))
        }
        "Resource" => {
            let s = &spec["resource"];
            Some(go_struct([
                ("name", string_field(s.get("name"))),
                ("targetAverageUtilization", go_value(s.pointer("/target/averageUtilization"))),
                ("targetAverageValue", go_quantity(s.pointer("/target/averageValue"))),
            ]))
        }
        "ContainerResource" => {
            let s = &spec["containerResource"];
            Some(go_struct([
                ("name", string_field(s.get("name"))),
                ("targetAverageUtilization", go_value(s.pointer("/target/averageUtilization"))),
                ("targetAverageValue", go_quantity(s.pointer("/target/averageValue"))),
                ("container", string_field(s.get("container"))),
            ]))
        }
        "External" => {
            let s = &spec["external"];
            Some(go_struct([
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("metricSelector", go_value(s.pointer("/metric/selector"))),
                ("targetValue", go_quantity(s.pointer("/target/value"))),
                ("targetAverageValue", go_quantity(s.pointer("/target/averageValue"))),
            ]))
        }
        _ => None,
    };
    typed_source(kind, source)
}

/// A v1 metric spec or status of `kind`, its `source` under the kind's own key, in Go's field order.
fn typed_source(kind: &str, source: Option<String>) -> String {
    let field = |name: &str| if source.is_some() && source_key(kind) == name { source.clone() } else { None };
    go_struct([
        ("type", Some(Value::from(kind).to_string())),
        ("object", field("object")),
        ("pods", field("pods")),
        ("resource", field("resource")),
        ("containerResource", field("containerResource")),
        ("external", field("external")),
    ])
}

fn source_key(kind: &str) -> &'static str {
    match kind {
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "External" => "external",
        _ => "",
    }
}

/// A v2 MetricStatus as v1's MetricStatus, in Go's field order.
fn metric_status_to_v1(status: &Value) -> String {
    let kind = status["type"].as_str().unwrap_or_default();
    let source = match kind {
        "Object" => {
            let s = &status["object"];
            Some(go_struct([
                ("target", cross_version_reference(s.get("describedObject"))),
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("currentValue", required_quantity(s.pointer("/current/value"))),
                ("selector", go_value(s.pointer("/metric/selector"))),
                ("averageValue", go_quantity(s.pointer("/current/averageValue"))),
            ]))
        }
        "Pods" => {
            let s = &status["pods"];
            Some(go_struct([
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("currentAverageValue", required_quantity(s.pointer("/current/averageValue"))),
                ("selector", go_value(s.pointer("/metric/selector"))),
            ]))
        }
        "Resource" => {
            let s = &status["resource"];
            Some(go_struct([
                ("name", string_field(s.get("name"))),
                ("currentAverageUtilization", go_value(s.pointer("/current/averageUtilization"))),
                ("currentAverageValue", required_quantity(s.pointer("/current/averageValue"))),
            ]))
        }
        "ContainerResource" => {
            let s = &status["containerResource"];
            Some(go_struct([
                ("name", string_field(s.get("name"))),
                ("currentAverageUtilization", go_value(s.pointer("/current/averageUtilization"))),
                ("currentAverageValue", required_quantity(s.pointer("/current/averageValue"))),
                ("container", string_field(s.get("container"))),
            ]))
        }
        "External" => {
            let s = &status["external"];
            Some(go_struct([
                ("metricName", string_field(s.pointer("/metric/name"))),
                ("metricSelector", go_value(s.pointer("/metric/selector"))),
                ("currentValue", required_quantity(s.pointer("/current/value"))),
                ("currentAverageValue", go_quantity(s.pointer("/current/averageValue"))),
            ]))
        }
        _ => None,
    };
    typed_source(kind, source)
}

fn condition_to_go(condition: &Value) -> String {
    let non_empty = |key: &str| go_value(condition.get(key)).filter(|v| v != "\"\"");
    go_struct([
        ("type", string_field(condition.get("type"))),
        ("status", string_field(condition.get("status"))),
        // metav1.Time is a struct: omitempty never drops it, a zero time is null.
        ("lastTransitionTime", Some(go_value(condition.get("lastTransitionTime")).unwrap_or_else(|| "null".into()))),
        ("reason", non_empty("reason")),
        ("message", non_empty("message")),
    ])
}

/// The behavior as Go writes Kubernetes' internal type, which has no JSON tags: Go field names, and nil
/// pointers as null.
fn behavior_to_internal(behavior: &Value) -> String {
    let null = || Some("null".to_string());
    let rules = |key: &str| match behavior.get(key).filter(|r| !r.is_null()) {
        None => null(),
        Some(r) => {
            let policies = r.get("policies").and_then(Value::as_array).map(|ps| {
                go_array(ps.iter().map(|p| {
                    go_struct([
                        ("Type", string_field(p.get("type"))),
                        ("Value", Some(p["value"].as_i64().unwrap_or(0).to_string())),
                        ("PeriodSeconds", Some(p["periodSeconds"].as_i64().unwrap_or(0).to_string())),
                    ])
                }))
            });
            Some(go_struct([
                ("StabilizationWindowSeconds", go_value(r.get("stabilizationWindowSeconds")).or_else(null)),
                ("SelectPolicy", go_value(r.get("selectPolicy")).or_else(null)),
                ("Policies", policies.or_else(null)),
                ("Tolerance", go_quantity(r.get("tolerance")).or_else(null)),
            ]))
        }
    };
    go_struct([("ScaleUp", rules("scaleUp")), ("ScaleDown", rules("scaleDown"))])
}

// ---------------------------------------------------------------------------------------------------
// Defaults.

/// Kubernetes' `SetDefaults_HorizontalPodAutoscaler` for autoscaling/v2: one replica at least, cpu at 80%
/// when no metric is named, and a behavior's missing rules and fields from the defaults. A scale-down
/// stabilization window stays unset: the controller's flag (5 minutes) decides it.
pub fn default_v2(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if spec.get("minReplicas").is_none_or(Value::is_null) {
        spec.insert("minReplicas".into(), json!(1));
    }
    if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        spec.insert("metrics".into(), json!([cpu_utilization_metric(json!(DEFAULT_CPU_UTILIZATION))]));
    }
    if let Some(behavior) = spec.get_mut("behavior").filter(|b| b.is_object()) {
        let up = json!({
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        });
        let down = json!({"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]});
        for (key, defaults) in [("scaleUp", up), ("scaleDown", down)] {
            let mut rules = defaults;
            if let Some(given) = behavior.get(key).and_then(Value::as_object) {
                for (field, value) in given.iter().filter(|(_, v)| !v.is_null()) {
                    rules[field] = value.clone();
                }
            }
            behavior[key] = rules;
        }
    }
}

/// autoscaling/v1's `SetDefaults_HorizontalPodAutoscaler`: one replica at least.
pub fn default_v1(object: &mut Value) {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("minReplicas").is_none_or(Value::is_null)
    {
        spec.insert("minReplicas".into(), json!(1));
    }
}

// ---------------------------------------------------------------------------------------------------
// Validation.

#[derive(Default)]
struct Causes(Vec<Cause>);

impl Causes {
    fn push(&mut self, reason: &'static str, field: String, message: String) {
        self.0.push(Cause { reason, message, field });
    }
    fn required(&mut self, field: String, detail: &str) {
        let message = if detail.is_empty() { "Required value".into() } else { format!("Required value: {detail}") };
        self.push("FieldValueRequired", field, message);
    }
    fn invalid(&mut self, field: String, value: impl Into<Value>, detail: &str) {
        self.push("FieldValueInvalid", field, format!("Invalid value: {}: {detail}", value.into()));
    }
    fn forbidden(&mut self, field: String, detail: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {detail}"));
    }
    fn not_supported(&mut self, field: String, value: &Value, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| Value::from(*s).to_string()).collect();
        self.push(
            "FieldValueNotSupported",
            field,
            format!("Unsupported value: {value}: supported values: {}", supported.join(", ")),
        );
    }
}

const METRIC_SOURCE_TYPES: &[&str] = &["ContainerResource", "External", "Object", "Pods", "Resource"];

/// Kubernetes' `ValidateHorizontalPodAutoscaler` on an autoscaling/v2 object (metadata aside), with its
/// paths and messages. minReplicas 0 is allowed as under Kubernetes' HPAScaleToZero gate: only with an
/// Object or External metric, the only ones that can measure a workload with no pods.
pub fn validate(object: &Value) -> Vec<Cause> {
    let mut e = Causes::default();
    let spec = &object["spec"];
    let min = spec.get("minReplicas").and_then(Value::as_i64);
    if let Some(min) = min
        && min < 0
    {
        e.invalid("spec.minReplicas".into(), min, "must be greater than or equal to 0");
    }
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if max < 1 {
        e.invalid("spec.maxReplicas".into(), max, "must be greater than 0");
    }
    if let Some(min) = min
        && max < min
    {
        e.invalid("spec.maxReplicas".into(), max, "must be greater than or equal to `minReplicas`");
    }
    cross_version_reference_errors(&mut e, &spec["scaleTargetRef"], "spec.scaleTargetRef");
    let metrics = spec["metrics"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (i, metric) in metrics.iter().enumerate() {
        metric_spec_errors(&mut e, metric, &format!("spec.metrics[{i}]"));
    }
    if min == Some(0) && !metrics.iter().any(|m| m["type"] == "Object" || m["type"] == "External") {
        e.forbidden(
            "spec.metrics".into(),
            "must specify at least one Object or External metric to support scaling to zero replicas",
        );
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| b.is_object()) {
        for key in ["scaleUp", "scaleDown"] {
            if let Some(rules) = behavior.get(key).filter(|r| r.is_object()) {
                scaling_rules_errors(&mut e, rules, &format!("spec.behavior.{key}"));
            }
        }
    }
    let status = &object["status"];
    for key in ["currentReplicas", "desiredReplicas"] {
        if let Some(n) = status.get(key).and_then(Value::as_i64)
            && n < 0
        {
            e.invalid(format!("status.{key}"), n, "must be greater than or equal to 0");
        }
    }
    e.0
}

/// apimachinery's `IsValidPathSegmentName`.
fn path_segment_errors(name: &str) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if name == "." || name == ".." {
        errors.push(if name == "." { "may not be '.'" } else { "may not be '..'" });
        return errors;
    }
    if name.contains('/') {
        errors.push("may not contain '/'");
    }
    if name.contains('%') {
        errors.push("may not contain '%'");
    }
    errors
}

fn cross_version_reference_errors(e: &mut Causes, reference: &Value, path: &str) {
    for key in ["kind", "name"] {
        match reference.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            None => e.required(format!("{path}.{key}"), ""),
            Some(value) => {
                for message in path_segment_errors(value) {
                    e.invalid(format!("{path}.{key}"), value, message);
                }
            }
        }
    }
}

fn metric_spec_errors(e: &mut Causes, spec: &Value, path: &str) {
    let kind = spec["type"].as_str().unwrap_or_default();
    if kind.is_empty() {
        e.required(format!("{path}.type"), "must specify a metric source type");
    }
    if !METRIC_SOURCE_TYPES.contains(&kind) {
        e.not_supported(format!("{path}.type"), &json!(kind), METRIC_SOURCE_TYPES);
    }
    let present: Vec<&str> = ["object", "pods", "resource", "containerResource", "external"]
        .into_iter()
        .filter(|k| spec.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    // Kubernetes validates only the first source present; more are refused below.
    if let Some(first) = present.first() {
        let source = &spec[*first];
        let source_path = format!("{path}.{first}");
        match *first {
            "object" => object_source_errors(e, source, &source_path),
            "pods" => pods_source_errors(e, source, &source_path),
            "resource" => resource_source_errors(e, source, &source_path, false),
            "containerResource" => resource_source_errors(e, source, &source_path, true),
            _ => external_source_errors(e, source, &source_path),
        }
    }
    let expected = source_key(kind);
    if METRIC_SOURCE_TYPES.contains(&kind) && !present.contains(&expected) {
        e.required(format!("{path}.{expected}"), "must populate information for the given metric source");
    }
    if present.len() != 1 {
        for other in present.iter().filter(|k| **k != expected) {
            e.forbidden(format!("{path}.{other}"), "must populate the given metric source only");
        }
    }
}

fn metric_identifier_errors(e: &mut Causes, metric: &Value, path: &str) {
    match metric["name"].as_str().filter(|n| !n.is_empty()) {
        None => e.required(format!("{path}.name"), "must specify a metric name"),
        Some(name) => {
            for message in path_segment_errors(name) {
                e.invalid(format!("{path}.name"), name, message);
            }
        }
    }
}

fn positive_quantity(value: &Value) -> bool {
    value.as_str().and_then(parse_quantity).or_else(|| value.as_f64()).is_some_and(|q| q > 0.0)
}

fn metric_target_errors(e: &mut Causes, target: &Value, path: &str) {
    let kind = target["type"].as_str().unwrap_or_default();
    if kind.is_empty() {
        e.required(format!("{path}.type"), "must specify a metric target type");
    }
    if !matches!(kind, "Utilization" | "Value" | "AverageValue") {
        e.invalid(format!("{path}.type"), kind, "must be either Utilization, Value, or AverageValue");
    }
    for key in ["value", "averageValue"] {
        if let Some(value) = target.get(key).filter(|v| !v.is_null())
            && !positive_quantity(value)
        {
            e.invalid(format!("{path}.{key}"), value.clone(), "must be positive");
        }
    }
    if let Some(utilization) = target.get("averageUtilization").and_then(Value::as_i64)
        && utilization < 1
    {
        e.invalid(format!("{path}.averageUtilization"), utilization, "must be greater than 0");
    }
}

fn has(value: &Value, key: &str) -> bool {
    value.get(key).is_some_and(|v| !v.is_null())
}

fn object_source_errors(e: &mut Causes, source: &Value, path: &str) {
    cross_version_reference_errors(e, &source["describedObject"], &format!("{path}.describedObject"));
    metric_identifier_errors(e, &source["metric"], &format!("{path}.metric"));
    let target = &source["target"];
    metric_target_errors(e, target, &format!("{path}.target"));
    if !has(target, "value") && !has(target, "averageValue") {
        e.required(format!("{path}.target.averageValue"), "must set either a target value or averageValue");
    }
}

fn pods_source_errors(e: &mut Causes, source: &Value, path: &str) {
    metric_identifier_errors(e, &source["metric"], &format!("{path}.metric"));
    let target = &source["target"];
    metric_target_errors(e, target, &format!("{path}.target"));
    if !has(target, "averageValue") {
        e.required(format!("{path}.target.averageValue"), "must specify a positive target averageValue");
    }
}

fn resource_source_errors(e: &mut Causes, source: &Value, path: &str, container: bool) {
    match source["name"].as_str().filter(|n| !n.is_empty()) {
        None => e.required(format!("{path}.name"), "must specify a resource name"),
        Some(name) if !is_container_resource_name(name) => {
            e.invalid(format!("{path}.name"), name, "must be a standard resource for containers")
        }
        Some(_) => {}
    }
    if container && source["container"].as_str().is_none_or(str::is_empty) {
        e.required(format!("{path}.container"), "must specify a container");
    }
    let target = &source["target"];
    metric_target_errors(e, target, &format!("{path}.target"));
    if !has(target, "averageUtilization") && !has(target, "averageValue") {
        e.required(
            format!("{path}.target.averageUtilization"),
            "must set either a target raw value or a target utilization",
        );
    }
    if has(target, "averageUtilization") && has(target, "averageValue") {
        e.forbidden(
            format!("{path}.target.averageValue"),
            "may not set both a target raw value and a target utilization",
        );
    }
}

/// core validation's `ValidateContainerResourceName`: the standard container resources, or an extended
/// (domain-qualified, outside kubernetes.io) one.
fn is_container_resource_name(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage")
        || name.starts_with("hugepages-")
        || (name.contains('/') && !name.contains("kubernetes.io/"))
}

fn external_source_errors(e: &mut Causes, source: &Value, path: &str) {
    metric_identifier_errors(e, &source["metric"], &format!("{path}.metric"));
    let target = &source["target"];
    metric_target_errors(e, target, &format!("{path}.target"));
    if !has(target, "value") && !has(target, "averageValue") {
        e.required(
            format!("{path}.target.averageValue"),
            "must set either a target value for metric or a per-pod target",
        );
    }
    if has(target, "value") && has(target, "averageValue") {
        e.forbidden(format!("{path}.target.value"), "may not set both a target value for metric and a per-pod target");
    }
}

fn scaling_rules_errors(e: &mut Causes, rules: &Value, path: &str) {
    if let Some(window) = rules.get("stabilizationWindowSeconds").and_then(Value::as_i64) {
        if window < 0 {
            e.invalid(format!("{path}.stabilizationWindowSeconds"), window, "must be greater than or equal to zero");
        }
        if window > MAX_STABILIZATION_WINDOW_SECONDS {
            e.invalid(
                format!("{path}.stabilizationWindowSeconds"),
                window,
                &format!("must be less than or equal to {MAX_STABILIZATION_WINDOW_SECONDS}"),
            );
        }
    }
    if let Some(policy) = rules.get("selectPolicy").filter(|p| !p.is_null())
        && !matches!(policy.as_str(), Some("Disabled" | "Max" | "Min"))
    {
        e.not_supported(format!("{path}.selectPolicy"), policy, &["Disabled", "Max", "Min"]);
    }
    let policies = rules["policies"].as_array().map(Vec::as_slice).unwrap_or_default();
    if policies.is_empty() {
        e.required(format!("{path}.policies"), "must specify at least one Policy");
    }
    for (i, policy) in policies.iter().enumerate() {
        let at = format!("{path}.policies[{i}]");
        if !matches!(policy["type"].as_str(), Some("Pods" | "Percent")) {
            e.not_supported(format!("{at}.type"), &policy["type"], &["Percent", "Pods"]);
        }
        let value = policy["value"].as_i64().unwrap_or(0);
        if value <= 0 {
            e.invalid(format!("{at}.value"), value, "must be greater than zero");
        }
        let period = policy["periodSeconds"].as_i64().unwrap_or(0);
        if period <= 0 {
            e.invalid(format!("{at}.periodSeconds"), period, "must be greater than zero");
        }
        if period > MAX_PERIOD_SECONDS {
            e.invalid(
                format!("{at}.periodSeconds"),
                period,
                &format!("must be less than or equal to {MAX_PERIOD_SECONDS}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(spec: Value) -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn fields(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect()
    }

    #[test]
    fn v1_cpu_target_is_a_v2_utilization_metric_and_back() {
        let object = v1(json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
            "minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50,
        }));
        let v2 = v1_to_v2(object.clone()).unwrap();
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"], json!([cpu_utilization_metric(json!(50))]));
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(v2_to_v1(v2).unwrap(), object);
    }

    #[test]
    fn v1_without_a_target_means_80_percent() {
        let v2 =
            v1_to_v2(v1(json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3}))).unwrap();
        assert_eq!(v2["spec"]["metrics"], json!([cpu_utilization_metric(json!(80))]));
    }

    #[test]
    fn v2_only_parts_ride_in_annotations_and_come_back() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 2, "maxReplicas": 10,
                "metrics": [
                    {"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    cpu_utilization_metric(json!(60)),
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}},
                ],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
                    "scaleDown": {"selectPolicy": "Min", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]},
                },
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "350m"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "lastTransitionTime": "2026-12-07T00:00:00Z", "reason": "SucceededRescale", "message": "ok"}],
            },
        });
        let v1 = v2_to_v1(v2.clone()).unwrap();
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        let annotations = &v1["metadata"]["annotations"];
        assert_eq!(annotations["team"], "a");
        assert_eq!(
            annotations[METRIC_SPECS_ANNOTATION],
            r#"[{"type":"Pods","pods":{"metricName":"http_requests_per_second","targetAverageValue":"10"}},{"type":"Resource","resource":{"name":"memory","targetAverageValue":"1Gi"}}]"#
        );
        assert_eq!(
            annotations[METRIC_STATUSES_ANNOTATION],
            r#"[{"type":"Resource","resource":{"name":"cpu","currentAverageUtilization":70,"currentAverageValue":"350m"}}]"#
        );
        assert_eq!(
            annotations[CONDITIONS_ANNOTATION],
            r#"[{"type":"AbleToScale","status":"True","lastTransitionTime":"2026-12-07T00:00:00Z","reason":"SucceededRescale","message":"ok"}]"#
        );
        assert_eq!(
            annotations[BEHAVIOR_ANNOTATION],
            r#"{"ScaleUp":{"StabilizationWindowSeconds":0,"SelectPolicy":"Max","Policies":[{"Type":"Pods","Value":4,"PeriodSeconds":15}],"Tolerance":null},"ScaleDown":{"StabilizationWindowSeconds":null,"SelectPolicy":"Min","Policies":[{"Type":"Percent","Value":10,"PeriodSeconds":60}],"Tolerance":null}}"#
        );
        // Back to v2: the annotation's metrics first, then the cpu one, as Kubernetes orders them.
        let back = v1_to_v2(v1).unwrap();
        let metrics = back["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 3);
        assert_eq!(metrics[0], v2["spec"]["metrics"][0]);
        assert_eq!(metrics[1], v2["spec"]["metrics"][2]);
        assert_eq!(metrics[2], v2["spec"]["metrics"][1]);
        assert_eq!(back["spec"]["behavior"], v2["spec"]["behavior"]);
        assert_eq!(back["status"], v2["status"]);
        assert_eq!(back["metadata"]["annotations"], json!({"team": "a"}));
    }

    #[test]
    fn stale_round_trip_annotations_are_dropped() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {METRIC_SPECS_ANNOTATION: "garbage"}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 2, "metrics": [cpu_utilization_metric(json!(50))]},
        });
        let v1 = v2_to_v1(v2).unwrap();
        assert!(v1["metadata"].get("annotations").is_none());
        let broken = v1_to_v2(json!({"metadata": {"annotations": {BEHAVIOR_ANNOTATION: "{"}}, "spec": {}}));
        assert!(matches!(broken, Err(ConversionError::Annotation { annotation: BEHAVIOR_ANNOTATION, .. })));
    }

    #[test]
    fn object_and_external_metrics_convert_like_kubernetes() {
        let spec = json!([
            {"type": "Object", "object": {"describedObject": {"kind": "Service", "name": "front", "apiVersion": "v1"}, "metric": {"name": "hits"}, "target": {"type": "Value", "value": "100"}}},
            {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "a"}}}, "target": {"type": "AverageValue", "averageValue": "30"}}},
        ]);
        let v2 = json!({"metadata": {"name": "x"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2, "metrics": spec}});
        let v1 = v2_to_v1(v2).unwrap();
        assert_eq!(
            v1["metadata"]["annotations"][METRIC_SPECS_ANNOTATION],
            r#"[{"type":"Object","object":{"target":{"kind":"Service","name":"front","apiVersion":"v1"},"metricName":"hits","targetValue":"100"}},{"type":"External","external":{"metricName":"queue","metricSelector":{"matchLabels":{"q":"a"}},"targetAverageValue":"30"}}]"#
        );
        let back = v1_to_v2(v1).unwrap();
        assert_eq!(back["spec"]["metrics"], spec);
    }

    #[test]
    fn defaults_fill_kubernetes_behavior_rules() {
        let mut object =
            json!({"spec": {"maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}});
        default_v2(&mut object);
        assert_eq!(object["spec"]["minReplicas"], 1);
        assert_eq!(object["spec"]["metrics"], json!([cpu_utilization_metric(json!(80))]));
        assert_eq!(
            object["spec"]["behavior"],
            json!({
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max", "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15}]},
            })
        );
        let mut plain = json!({"spec": {"maxReplicas": 3}});
        default_v2(&mut plain);
        assert!(plain["spec"].get("behavior").is_none());
    }

    fn hpa(spec: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn validation_speaks_kubernetes() {
        let reference = json!({"kind": "Deployment", "name": "web"});
        assert!(validate(&hpa(json!({"scaleTargetRef": reference, "minReplicas": 1, "maxReplicas": 3, "metrics": [cpu_utilization_metric(json!(50))]}))).is_empty());
        let causes = validate(&hpa(json!({"scaleTargetRef": {}, "minReplicas": 5, "maxReplicas": 0})));
        assert_eq!(
            fields(&causes),
            vec![
                ("spec.maxReplicas", "Invalid value: 0: must be greater than 0"),
                ("spec.maxReplicas", "Invalid value: 0: must be greater than or equal to `minReplicas`"),
                ("spec.scaleTargetRef.kind", "Required value"),
                ("spec.scaleTargetRef.name", "Required value"),
            ]
        );
        let causes = validate(&hpa(
            json!({"scaleTargetRef": reference, "minReplicas": 0, "maxReplicas": 3, "metrics": [cpu_utilization_metric(json!(50))]}),
        ));
        assert_eq!(
            fields(&causes),
            vec![(
                "spec.metrics",
                "Forbidden: must specify at least one Object or External metric to support scaling to zero replicas"
            )]
        );
        let external = json!({"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "5"}}});
        assert!(
            validate(&hpa(
                json!({"scaleTargetRef": reference, "minReplicas": 0, "maxReplicas": 3, "metrics": [external]})
            ))
            .is_empty()
        );
    }

    #[test]
    fn a_v1_object_is_validated_as_the_v2_object_it_stands_for() {
        let v1_def = crate::resources::find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let object =
            v1(json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 4, "maxReplicas": 2,
            "targetCPUUtilizationPercentage": 0}));
        let causes = crate::validation::validate(v1_def, &object, None);
        assert_eq!(
            fields(&causes),
            vec![
                ("spec.maxReplicas", "Invalid value: 2: must be greater than or equal to `minReplicas`"),
                ("spec.metrics[0].resource.target.averageUtilization", "Invalid value: 0: must be greater than 0"),
            ]
        );
    }

    #[test]
    fn metric_sources_must_be_well_formed() {
        let reference = json!({"kind": "Deployment", "name": "web"});
        let metrics = json!([
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}},
            {"type": "Pods", "pods": {"metric": {"name": ""}, "target": {"type": "AverageValue"}}},
            {"type": "Resource"},
            {"type": "Bogus"},
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "-1", "averageUtilization": 5}}},
        ]);
        let causes = validate(&hpa(json!({"scaleTargetRef": reference, "maxReplicas": 3, "metrics": metrics})));
        assert_eq!(
            fields(&causes),
            vec![
                ("spec.metrics[0].resource.target.averageUtilization", "Invalid value: 0: must be greater than 0"),
                ("spec.metrics[1].pods.metric.name", "Required value: must specify a metric name"),
                (
                    "spec.metrics[1].pods.target.averageValue",
                    "Required value: must specify a positive target averageValue"
                ),
                ("spec.metrics[2].resource", "Required value: must populate information for the given metric source"),
                (
                    "spec.metrics[3].type",
                    "Unsupported value: \"Bogus\": supported values: \"ContainerResource\", \"External\", \"Object\", \"Pods\", \"Resource\""
                ),
                ("spec.metrics[4].resource.target.averageValue", "Invalid value: \"-1\": must be positive"),
                (
                    "spec.metrics[4].resource.target.averageValue",
                    "Forbidden: may not set both a target raw value and a target utilization"
                ),
            ]
        );
    }

    #[test]
    fn behavior_rules_are_bounded() {
        let reference = json!({"kind": "Deployment", "name": "web"});
        let behavior = json!({"scaleUp": {"stabilizationWindowSeconds": 4000, "selectPolicy": "Most", "policies": []},
            "scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 2000}]}});
        let causes = validate(&hpa(json!({"scaleTargetRef": reference, "maxReplicas": 3, "behavior": behavior})));
        assert_eq!(
            fields(&causes),
            vec![
                (
                    "spec.behavior.scaleUp.stabilizationWindowSeconds",
                    "Invalid value: 4000: must be less than or equal to 3600"
                ),
                (
                    "spec.behavior.scaleUp.selectPolicy",
                    "Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\""
                ),
                ("spec.behavior.scaleUp.policies", "Required value: must specify at least one Policy"),
                ("spec.behavior.scaleDown.policies[0].value", "Invalid value: 0: must be greater than zero"),
                (
                    "spec.behavior.scaleDown.policies[0].periodSeconds",
                    "Invalid value: 2000: must be less than or equal to 1800"
                ),
            ]
        );
    }
}
