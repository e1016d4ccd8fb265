//! Encryption at rest (`--encryption-provider-config`): what the store holds, a key rotation done the
//! Kubernetes way (from aesgcm to secretbox), and identity first for going back to plaintext.

use std::path::Path;

use crate::harness::{Backend, Cluster};

/// 32 random bytes each, base64, as `head -c 32 /dev/urandom | base64` makes them: KEY1 for aesgcm, KEY2
/// for secretbox (which takes only 32-byte keys).
const KEY1: &str = "3pQ7Vd0cXk2bWm9yH1sJ4tLr8aFe6gNu5oCiZqYvBxw=";
const KEY2: &str = "d8Fq2LxN5vRm0bKc7TgZ4hWs1yPe9uJa3oQi6nXt2Ck=";
/// For every other resource but ConfigMaps, in every configuration: pods, RBAC objects, namespaces, leases
/// are all read straight from the store by parts of the server (the authorizer's mirror, watches, the
/// controllers' leader election), which must keep working.
const KEY3: &str = "HQ0bp4wO9q2kTz5v7xRj1mYc8sLa3eGn6uWdFiK0tBo=";

/// The Secret's value, and the base64 the Secret's `data` holds it as: what must not be in the store.
const PASSWORD: &str = "correct horse battery staple";
const PASSWORD_BASE64: &str = "Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ==";

/// Secrets by `providers`, ConfigMaps as plaintext (to show a search of the store finds what is there),
/// everything else with KEY3.
fn config(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n{providers}\
         - resources: [configmaps]\n  providers:\n{IDENTITY}\
         - resources: ['*.*']\n  providers:\n{}",
        aesgcm("other", KEY3)
    )
}

fn aesgcm(name: &str, secret: &str) -> String {
    format!("  - aesgcm:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

fn secretbox(name: &str, secret: &str) -> String {
    format!("  - secretbox:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

const IDENTITY: &str = "  - identity: {}\n";

/// The stored bytes under `key`: from etcd itself, or, on the embedded store, every file of the store's
/// directory (the current value and the history, which keeps old values too).
fn stored(cluster: &Cluster, key: &str) -> Vec<u8> {
    match cluster.etcd_endpoint() {
        Some(endpoint) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut client = etcd_client::Client::connect([endpoint], None).await.unwrap();
                let response = client.get(key, None).await.unwrap();
                response.kvs().first().map(|kv| kv.value().to_vec()).unwrap_or_default()
            })
        }
        None => {
            let mut bytes = Vec::new();
            read_all(&cluster.data_dir().join("store"), &mut bytes);
            bytes
        }
    }
}

fn read_all(dir: &Path, bytes: &mut Vec<u8>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_all(&path, bytes);
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

fn password(cluster: &Cluster, name: &str) -> String {
    cluster.ok(&["get", "secret", name, "-o", "jsonpath={.data.password}"])
}

pub fn encryption_at_rest_hides_secrets_and_rotates_keys(backend: Backend) {
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, providers: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, config(providers)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let first = write("first.yaml", &aesgcm("key1", KEY1));
    let rotating = write("rotating.yaml", &format!("{}{}", secretbox("key2", KEY2), aesgcm("key1", KEY1)));
    let rotated = write("rotated.yaml", &secretbox("key2", KEY2));
    let back_to_plain = write("plain.yaml", &format!("{IDENTITY}{}", secretbox("key2", KEY2)));
    let flag = "--encryption-provider-config";

    let mut cluster = Cluster::start_with(backend, &[flag, &first]).unwrap();
    cluster.ok(&["create", "secret", "generic", "creds", &format!("--from-literal=password={PASSWORD}")]);
    cluster.ok(&["create", "configmap", "plain", "--from-literal=marker=visible-in-the-store"]);
    let secret_key = "/registry/core/secrets/default/creds";
    let raw = stored(&cluster, secret_key);
    assert!(!contains(&raw, PASSWORD_BASE64) && !contains(&raw, PASSWORD), "the Secret's value is not stored");
    assert!(contains(&raw, "k8s:enc:aesgcm:v1:key1:"), "the Secret is stored in Kubernetes' format");
    let configmap = stored(&cluster, "/registry/core/configmaps/default/plain");
    assert!(contains(&configmap, "visible-in-the-store"), "a resource not listed is stored as it is");
    let shared = stored(&cluster, "/skiff/cluster-secrets");
    assert!(contains(&shared, "k8s:enc:aesgcm:v1:key1:"), "the cluster's CA key is encrypted like a Secret");
    assert!(!contains(&shared, "PRIVATE KEY"), "no private key is stored in the clear");
    assert_eq!(password(&cluster, "creds"), PASSWORD_BASE64);
    let namespace = stored(&cluster, "/registry/core/namespaces/default");
    assert!(contains(&namespace, "k8s:enc:aesgcm:v1:other:"), "'*.*' covers the rest");
    // The authorizer decides from RBAC objects it reads from the store.
    cluster.ok(&["create", "role", "reader", "--verb=get", "--resource=secrets"]);
    cluster.ok(&["create", "rolebinding", "reader", "--role=reader", "--user=alice"]);
    assert_eq!(
        cluster.ok(&["get", "secret", "creds", "--as=alice", "-o", "jsonpath={.data.password}"]),
        PASSWORD_BASE64
    );
    assert!(cluster.fails(&["get", "configmaps", "--as=alice"]).contains("forbidden"));

    // Rotation: the new key (another provider, secretbox) first, restart, rewrite every Secret, drop the old
    // key, restart.
    cluster.restart_with(&[flag, &rotating]).unwrap();
    assert_eq!(password(&cluster, "creds"), PASSWORD_BASE64, "the old key still reads");
    let all = cluster.ok(&["get", "secrets", "-A", "-o", "json"]);
    // As Kubernetes' documentation says it, validation on: kubectl reads /openapi/v2 to validate a List.
    let replaced = cluster.with_stdin(&["replace", "-f", "-"], &all);
    assert!(replaced.status.success(), "replace: {}", String::from_utf8_lossy(&replaced.stderr));
    if cluster.etcd_endpoint().is_some() {
        let raw = stored(&cluster, secret_key);
        assert!(raw.starts_with(b"k8s:enc:secretbox:v1:key2:"), "an unchanged Secret was rewritten with the new key");
        assert!(!contains(&raw, PASSWORD_BASE64) && !contains(&raw, PASSWORD), "secretbox hides the value");
    } else {
        assert!(contains(&stored(&cluster, secret_key), "k8s:enc:secretbox:v1:key2:"));
    }
    cluster.restart_with(&[flag, &rotated]).unwrap();
    assert_eq!(password(&cluster, "creds"), PASSWORD_BASE64, "readable with the new key alone");
    cluster.ok(&["get", "secrets", "-A", "-o", "json"]);

    // Identity first: new Secrets are plaintext again, the encrypted ones stay readable.
    cluster.restart_with(&[flag, &back_to_plain]).unwrap();
    assert_eq!(password(&cluster, "creds"), PASSWORD_BASE64);
    cluster.ok(&["create", "secret", "generic", "later", "--from-literal=password=in-the-clear"]);
    assert!(contains(&stored(&cluster, "/registry/core/secrets/default/later"), "aW4tdGhlLWNsZWFy"));
    assert_eq!(password(&cluster, "later"), "aW4tdGhlLWNsZWFy");
}

/// A mistake in the file stops the server before it serves, naming the file and the field.
pub fn a_bad_encryption_config_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encryption.yaml");
    std::fs::write(&path, config(&aesgcm("key1", "c2hvcnQ="))).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--encryption-provider-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the server refused to start: {stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap())
            && stderr.contains(
                "resources[0].providers[0].aesgcm.keys[0].secret: secret is not of the expected length, got 5"
            ),
        "{stderr}"
    );
}
