//! The API server under abuse (issue 16): requests built to make it hold far more than they are, sent by an
//! authenticated client over raw HTTPS, are refused with kube-apiserver's Statuses within seconds, write
//! nothing, and leave the server answering with little memory.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Backend, Cluster, Http};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// What one abusive request may take before its answer.
const PROMPTLY: Duration = Duration::from_secs(5);

/// The server's resident memory may stay under this through every attack (it idles well below it; an
/// attack that got through needs gigabytes).
const MAX_RSS_BYTES: u64 = 300 * 1024 * 1024;

fn rss_bytes(cluster: &Cluster) -> u64 {
    crate::harness::process_status_kib(cluster.pid().expect("the server runs"), "VmRSS") * 1024
}

/// Sends `body` with `content_type`; returns the code, the decoded Status (or object) and the time taken.
fn send(http: &Http, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response =
        http.request(method, path).header("content-type", content_type).body(body).send().expect("an answer");
    let code = response.status().as_u16();
    let value = response.json().unwrap_or(Value::Null);
    (code, value, started.elapsed())
}

fn assert_status(answer: &(u16, Value, Duration), code: u16, reason: &str, message: &str) {
    let (got, status, took) = answer;
    assert_eq!(
        (*got, status["kind"].as_str(), status["reason"].as_str()),
        (code, Some("Status"), Some(reason)),
        "{status}"
    );
    assert_eq!(status["code"], code);
    let text = status["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "message {text:?} should contain {message:?}");
    assert!(*took < PROMPTLY, "answered in {took:?}");
}

fn configmap(http: &Http, name: &str) -> (u16, Value) {
    let response = http.request(Method::GET, &format!("{CONFIGMAPS}/{name}")).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn still_serving(cluster: &Cluster, after: &str) {
    cluster.ok(&["get", "ns"]);
    let rss = rss_bytes(cluster);
    eprintln!("server RSS after {after}: {} MiB", rss / (1024 * 1024));
    assert!(rss < MAX_RSS_BYTES, "the server holds {} MiB after {after}", rss / (1024 * 1024));
}

pub fn abuse_is_refused_and_the_server_stays_small(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let http = cluster.http();
    let created = http
        .request(Method::POST, CONFIGMAPS)
        .json(&json!({"metadata": {"name": "target"}, "data": {"k": "x".repeat(1024)}}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let (_, before) = configmap(&http, "target");
    let target = format!("{CONFIGMAPS}/target");

    // Forty copies of the whole object into itself: each doubles it, a terabyte by the end. kube-apiserver
    // stops the copies at 3 MiB (JSONPatchMaxCopyBytes) with a 422, while applying.
    let doubling: Vec<Value> =
        (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/data/copy{i}")})).collect();
    let bomb =
        send(&http, Method::PATCH, &target, "application/json-patch+json", serde_json::to_vec(&doubling).unwrap());
    assert_status(&bomb, 422, "Invalid", "Unable to complete the copy, the accumulated size increase of copy is");
    assert_status(&bomb, 422, "Invalid", "exceeding the limit 3145728");
    eprintln!("the copy bomb was refused in {:?}", bomb.2);
    assert_eq!(configmap(&http, "target").1, before, "a refused patch writes nothing");
    still_serving(&cluster, "the copy bomb");

    // More than 10,000 operations: 413, in kube-apiserver's words.
    let test = json!({"op": "test", "path": "/metadata/name", "value": "target"});
    let many = serde_json::to_vec(&vec![test; 10_001]).unwrap();
    assert!(many.len() < 3 * 1024 * 1024, "the body itself is within the limit");
    let too_many = send(&http, Method::PATCH, &target, "application/json-patch+json", many);
    assert_status(
        &too_many,
        413,
        "RequestEntityTooLarge",
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001",
    );

    // Copies within the limit, among ordinary operations, still apply.
    let fine = json!([
        {"op": "copy", "from": "/data/k", "path": "/data/k2"},
        {"op": "add", "path": "/metadata/labels", "value": {"app": "web"}},
        {"op": "test", "path": "/data/k2", "value": "x".repeat(1024)},
        {"op": "remove", "path": "/data/k2"},
    ]);
    let (code, patched, _) =
        send(&http, Method::PATCH, &target, "application/json-patch+json", serde_json::to_vec(&fine).unwrap());
    assert_eq!((code, &patched["metadata"]["labels"]["app"]), (200, &json!("web")), "{patched}");

    // A 4 MiB body: 413 before it is read (kube-apiserver's MaxRequestBodyBytes, 3 MiB).
    let huge = format!(r#"{{"data":{{"big":"{}"}}}}"#, "a".repeat(4 * 1024 * 1024));
    let body = send(&http, Method::PATCH, &target, "application/merge-patch+json", huge.into_bytes());
    assert_status(&body, 413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728");

    // An object over etcd's 1.5 MiB from a body under 3 MiB: refused on every backend, nothing written,
    // whether it is created that way or grows so. (A Lease: ConfigMaps and Secrets stop at 1 MiB of data
    // by validation, as in Kubernetes.)
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let lease = |name: &str, holder: usize| {
        serde_json::to_vec(&json!({"metadata": {"name": name}, "spec": {"holderIdentity": "h".repeat(holder)}}))
            .unwrap()
    };
    let create = send(&http, Method::POST, leases, "application/json", lease("large", 2 * 1024 * 1024));
    assert_status(&create, 413, "RequestEntityTooLarge", "etcdserver: request is too large");
    assert_eq!(http.request(Method::GET, &format!("{leases}/large")).send().unwrap().status().as_u16(), 404);
    let first = send(&http, Method::POST, leases, "application/json", lease("growing", 1024 * 1024));
    assert_eq!(first.0, 201, "{}", first.1);
    let grow = serde_json::to_vec(&json!({"spec": {"holderIdentity": "g".repeat(2 * 1024 * 1024)}})).unwrap();
    let grown = send(&http, Method::PATCH, &format!("{leases}/growing"), "application/merge-patch+json", grow);
    assert_status(&grown, 413, "RequestEntityTooLarge", "etcdserver: request is too large");
    let stored: Value = http.request(Method::GET, &format!("{leases}/growing")).send().unwrap().json().unwrap();
    assert_eq!(stored["metadata"]["resourceVersion"], first.1["metadata"]["resourceVersion"], "nothing written");

    // A YAML alias bomb: 64 KiB named once and repeated 100,000 times, 6.4 GB from a 400 KB body.
    let mut yaml =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: yaml}}\nx: &x \"{}\"\ny: [", "y".repeat(65536));
    yaml.push_str(&"*x,".repeat(100_000));
    yaml.push_str("]\n");
    let aliases = send(&http, Method::POST, CONFIGMAPS, "application/yaml", yaml.clone().into_bytes());
    assert_status(&aliases, 400, "BadRequest", "document contains excessive aliasing");
    let applied = send(
        &http,
        Method::PATCH,
        &format!("{CONFIGMAPS}/yaml?fieldManager=abuse"),
        "application/apply-patch+yaml",
        yaml.into_bytes(),
    );
    assert_status(&applied, 400, "BadRequest", "document contains excessive aliasing");
    assert_eq!(configmap(&http, "yaml").0, 404);

    still_serving(&cluster, "every attack");
}
