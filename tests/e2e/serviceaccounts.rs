//! ServiceAccount credentials end to end with the real kubectl: `kubectl create token` mints a token that
//! authenticates as its account, holds exactly what RBAC grants the account, is refused for another
//! audience, once expired and below Kubernetes' shortest lifetime, and TokenReview says so too; a token Secret is filled
//! in and its token works while the Secret lasts; every namespace has the cluster CA in `kube-root-ca.crt`;
//! a pod gets the projected API credentials, and one naming a missing account is refused. Only the API
//! server runs.

use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{Backend, Cluster};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `kubectl ARGS --token TOKEN`: the admin kubeconfig's server and CA, the token's identity.
fn with_token(cluster: &Cluster, token: &str, args: &[&str]) -> Output {
    cluster.kubectl(&[args, &["--token", token]].concat())
}

/// The status of a TokenReview of `token` (for `audiences`, the API server's when empty), asked by the admin.
fn review(cluster: &Cluster, token: &str, audiences: &[&str]) -> Value {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences}});
    let path = cluster.write_file("review.json", &review.to_string());
    let answer =
        cluster.ok(&["create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", path.to_str().unwrap()]);
    serde_json::from_str::<Value>(&answer).expect("a TokenReview")["status"].clone()
}

/// `token` with its claims changed by `change`, signed again with the cluster's service account key
/// (`sa.key` in the server's data dir, ES256) under the same header.
fn resigned(cluster: &Cluster, token: &str, change: impl FnOnce(&mut Value)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
    let mut parts = token.split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: Value = serde_json::from_slice(&BASE64URL.decode(claims).unwrap()).unwrap();
    change(&mut claims);
    let signed = format!("{header}.{}", BASE64URL.encode(claims.to_string()));
    let pem = std::fs::read_to_string(cluster.data_dir().join("sa.key")).unwrap();
    let pkcs8 = rcgen::KeyPair::from_pem(&pem).unwrap().serialize_der();
    let rng = ring::rand::SystemRandom::new();
    let key =
        ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .unwrap();
    let signature = key.sign(&rng, signed.as_bytes()).unwrap();
    format!("{signed}.{}", BASE64URL.encode(signature.as_ref()))
}

pub fn service_accounts_get_tokens_and_pods_get_credentials(backend: Backend) {
    let cluster = Cluster::start(backend).unwrap();
    let token = cluster.ok(&["create", "token", "default"]).trim().to_string();

    // The token is the account, in its groups.
    let whoami = with_token(
        &cluster,
        &token,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
    );
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        r#"system:serviceaccount:default:default ["system:serviceaccounts","system:serviceaccounts:default","system:authenticated"]"#
    );

    // It holds what RBAC grants the account: nothing, then `view` in its namespace.
    let denied = with_token(&cluster, &token, &["get", "pods"]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains(r#"pods is forbidden: User "system:serviceaccount:default:default" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{}",
        stderr(&denied)
    );
    cluster.ok(&["create", "rolebinding", "default-view", "--clusterrole=view", "--serviceaccount=default:default"]);
    let allowed = with_token(&cluster, &token, &["get", "pods"]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(!with_token(&cluster, &token, &["get", "pods", "-n", "kube-system"]).status.success());

    // A token for another audience is not the API server's: 401, and TokenReview says why.
    let other = cluster.ok(&["create", "token", "default", "--audience", "other"]).trim().to_string();
    let refused = with_token(&cluster, &other, &["get", "pods"]);
    assert!(stderr(&refused).contains("Unauthorized"), "{}", stderr(&refused));
    assert_eq!(
        review(&cluster, &other, &[]),
        json!({"authenticated": false, "user": {},
            "error": r#"token audiences ["other"] is invalid for the target audiences ["https://kubernetes.default.svc.cluster.local"]"#})
    );
    let reviewed = review(&cluster, &other, &["other"]);
    assert_eq!(reviewed["authenticated"], true, "{reviewed}");
    assert_eq!(reviewed["audiences"], json!(["other"]));
    assert_eq!(reviewed["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(review(&cluster, &token, &[])["authenticated"], true);
    assert_eq!(review(&cluster, "not-a-token", &[])["error"], "invalid bearer token");

    // Kubernetes' shortest lifetime is ten minutes.
    let short = cluster.fails(&["create", "token", "default", "--duration", "1s"]);
    assert!(
        short.contains(r#"TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 1: may not specify a duration less than 10 minutes"#),
        "{short}"
    );
    let ten_minutes = cluster.ok(&["create", "token", "default", "--duration", "10m"]).trim().to_string();
    assert!(with_token(&cluster, &ten_minutes, &["get", "pods"]).status.success());
    // The same token once expired (its times moved two minutes past the minute of leeway, signed again with
    // the cluster's key, as it will be in ten minutes): 401, and TokenReview says why.
    let expired = resigned(&cluster, &ten_minutes, |claims| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        claims["iat"] = json!(now - 900);
        claims["nbf"] = json!(now - 900);
        claims["exp"] = json!(now - 180);
    });
    let refused = with_token(&cluster, &expired, &["get", "pods"]);
    assert!(stderr(&refused).contains("Unauthorized"), "{}", stderr(&refused));
    assert_eq!(review(&cluster, &expired, &[])["error"], "service account token has expired");
    // The re-signing itself is sound: the same token with its claims unchanged is still taken.
    assert!(with_token(&cluster, &resigned(&cluster, &ten_minutes, |_| {}), &["get", "pods"]).status.success());
    let missing = cluster.fails(&["create", "token", "nobody"]);
    assert!(missing.contains(r#"serviceaccounts "nobody" not found"#), "{missing}");

    // A token Secret is filled in by the server; its token lasts as long as the Secret.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: default-token\n  annotations:\n    \
                  kubernetes.io/service-account.name: default\ntype: kubernetes.io/service-account-token\n";
    let created = cluster.with_stdin(&["apply", "-f", "-"], secret);
    assert!(created.status.success(), "{}", stderr(&created));
    let deadline = Instant::now() + Duration::from_secs(10);
    let legacy = loop {
        let data = cluster.ok(&["get", "secret", "default-token", "-o", "jsonpath={.data.token}"]);
        if !data.is_empty() {
            break String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.trim()).unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "the token secret was not filled in:\n{}", cluster.server_log());
    };
    let ca = std::fs::read_to_string(cluster.data_dir().join("ca.crt")).unwrap();
    let secret_ca = cluster.ok(&["get", "secret", "default-token", "-o", r"jsonpath={.data.ca\.crt}"]);
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(secret_ca.trim()).unwrap(), ca.as_bytes());
    assert!(with_token(&cluster, &legacy, &["get", "pods"]).status.success());
    cluster.ok(&["delete", "secret", "default-token"]);
    let revoked = with_token(&cluster, &legacy, &["get", "pods"]);
    assert!(stderr(&revoked).contains("Unauthorized"), "{}", stderr(&revoked));

    // Every namespace holds the cluster CA for its pods.
    cluster.ok(&["create", "namespace", "team"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "team"]).status.success() {
        assert!(Instant::now() < deadline, "no kube-root-ca.crt in a new namespace");
    }
    assert_eq!(
        cluster.ok(&["get", "configmap", "kube-root-ca.crt", "-n", "team", "-o", r"jsonpath={.data.ca\.crt}"]),
        ca
    );

    // A pod gets its account and the projected credentials in every container.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  initContainers:\n  - name: setup\n    \
               image: registry.local/setup:1\n  containers:\n  - name: app\n    image: registry.local/web:1\n";
    let created = cluster.with_stdin(&["apply", "-f", "-"], pod);
    assert!(created.status.success(), "{}", stderr(&created));
    let web = cluster.pod("web");
    assert_eq!(web["spec"]["serviceAccountName"], "default");
    let volume = &web["spec"]["volumes"][0];
    let name = volume["name"].as_str().unwrap();
    assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
    assert_eq!(
        volume["projected"],
        json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]})
    );
    let mount = json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    assert_eq!(web["spec"]["containers"][0]["volumeMounts"], mount);
    assert_eq!(web["spec"]["initContainers"][0]["volumeMounts"], mount);

    // A pod naming an account that does not exist is refused.
    let lost = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lost\nspec:\n  serviceAccountName: ghost\n  containers:\n  \
                - name: app\n    image: registry.local/web:1\n";
    let refused = cluster.with_stdin(&["apply", "-f", "-"], lost);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(r#"pods "lost" is forbidden: error looking up service account default/ghost: serviceaccount "ghost" not found"#),
        "{}",
        stderr(&refused)
    );
}
