//! Who may do what, end to end with the real kubectl: a user minted by `skiff kubeconfig --user` holds
//! exactly what RBAC grants, cannot grant more than that, `kubectl auth can-i` and `whoami` answer for
//! them, the admin may act as them; the join token alone can ask for a node certificate and nothing else.
//! Only the API server runs.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::harness::Cluster;

/// kubectl with `kubeconfig` (a user's) instead of the admin's.
fn kubectl_as(cluster: &Cluster, kubeconfig: &PathBuf, args: &[&str]) -> Output {
    let mut command = cluster.kubectl_command(args);
    command.env("KUBECONFIG", kubeconfig);
    command.output().expect("kubectl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `skiff kubeconfig --user NAME [--group G]` for the cluster's data dir, written beside it.
pub fn mint_user(cluster: &Cluster, user: &str, group: Option<&str>) -> PathBuf {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command.args(["kubeconfig", "--user", user, "--data-dir"]).arg(cluster.data_dir());
    if let Some(group) = group {
        command.args(["--group", group]);
    }
    let output = command.output().expect("skiff runs");
    assert!(output.status.success(), "skiff kubeconfig --user {user}: {}", stderr(&output));
    cluster.write_file(&format!("{user}.kubeconfig"), &stdout(&output))
}

pub fn rbac_grants_users_exactly_what_they_were_given(backend: crate::harness::Backend) {
    let cluster = Cluster::start(backend).unwrap();
    cluster.ok(&["create", "namespace", "dev"]);
    cluster.ok(&["create", "namespace", "prod"]);
    cluster.ok(&["create", "secret", "generic", "db", "-n", "prod", "--from-literal=password=hunter2"]);
    let alice = mint_user(&cluster, "alice", Some("developers"));

    // Before any binding: authenticated, allowed nothing but the basics.
    let whoami = kubectl_as(
        &cluster,
        &alice,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
    );
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    assert_eq!(stdout(&whoami), r#"alice ["developers","system:authenticated"]"#);
    let denied = kubectl_as(&cluster, &alice, &["get", "pods", "-n", "dev"]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains(
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "dev""#
        ),
        "{}",
        stderr(&denied)
    );

    // `edit` in dev: Deployments there, nothing in prod, and no way to grant herself `admin`.
    cluster.ok(&["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "dev"]);
    let created =
        kubectl_as(&cluster, &alice, &["create", "deployment", "web", "--image=registry.local/web:1", "-n", "dev"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let secrets = kubectl_as(&cluster, &alice, &["get", "secrets", "-n", "prod"]);
    assert!(
        stderr(&secrets).contains(r#"secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "prod""#),
        "{}",
        stderr(&secrets)
    );
    let write = kubectl_as(&cluster, &alice, &["create", "configmap", "sneaky", "-n", "prod", "--from-literal=a=b"]);
    assert!(!write.status.success(), "a write in prod was allowed");
    assert!(
        cluster.kubectl(&["get", "configmap", "sneaky", "-n", "prod"]).status.code() == Some(1),
        "a denied write wrote"
    );
    let grant = ["create", "rolebinding", "mine", "--clusterrole=admin", "--user=alice", "-n", "dev"];
    let plain = kubectl_as(&cluster, &alice, &grant);
    assert!(stderr(&plain).contains(r#"User "alice" cannot create resource "rolebindings""#), "{}", stderr(&plain));
    // Allowed to write bindings, she still cannot grant what she does not hold; what she holds she can.
    cluster.ok(&[
        "create",
        "role",
        "binder",
        "--verb=create",
        "--resource=rolebindings.rbac.authorization.k8s.io",
        "-n",
        "dev",
    ]);
    cluster.ok(&["create", "rolebinding", "alice-binder", "--role=binder", "--user=alice", "-n", "dev"]);
    let escalate = kubectl_as(&cluster, &alice, &grant);
    assert!(!escalate.status.success(), "alice granted herself admin");
    assert!(
        stderr(&escalate).contains(r#"user "alice" (groups=["developers" "system:authenticated"]) is attempting to grant RBAC permissions not currently held"#),
        "{}",
        stderr(&escalate)
    );
    let share = kubectl_as(
        &cluster,
        &alice,
        &["create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", "dev"],
    );
    assert!(share.status.success(), "{}", stderr(&share));

    // can-i answers from the same policy; --list shows what edit grants and nothing of admin's.
    let can = |args: &[&str]| {
        stdout(&kubectl_as(&cluster, &alice, &[&["auth", "can-i"][..], args].concat())).trim().to_string()
    };
    assert_eq!(can(&["create", "deployments", "-n", "dev"]), "yes");
    assert_eq!(can(&["get", "secrets", "-n", "prod"]), "no");
    assert_eq!(can(&["delete", "rolebindings", "-n", "dev"]), "no");
    let list = can(&["--list", "-n", "dev"]);
    assert!(list.lines().any(|l| l.starts_with("deployments.apps ")), "{list}");
    assert!(!list.lines().any(|l| l.starts_with("roles.rbac.authorization.k8s.io ")), "{list}");

    // The admin acts as alice, and as no one without being allowed to.
    let as_alice = cluster.kubectl(&["get", "secrets", "-n", "prod", "--as", "alice"]);
    assert!(stderr(&as_alice).contains(r#"User "alice" cannot list resource "secrets""#), "{}", stderr(&as_alice));
    assert!(cluster.kubectl(&["get", "deployments", "-n", "dev", "--as", "alice"]).status.success());
    let impersonate = kubectl_as(&cluster, &alice, &["get", "pods", "-n", "dev", "--as", "bob"]);
    assert!(
        stderr(&impersonate).contains(r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{}",
        stderr(&impersonate)
    );

    // exec is a right of its own: `view` reads pods but cannot exec into them, and is told before any node
    // is asked.
    cluster.ok(&["create", "rolebinding", "bob-view-dev", "--clusterrole=view", "--user=bob", "-n", "dev"]);
    cluster.ok(&["run", "shell", "--image=registry.local/shell:1", "-n", "dev"]);
    let exec = cluster.kubectl(&["exec", "-n", "dev", "shell", "--as", "bob", "--", "true"]);
    assert!(
        stderr(&exec)
            .contains(r#"User "bob" cannot create resource "pods/exec" in API group "" in the namespace "dev""#),
        "{}",
        stderr(&exec)
    );

    // The join token alone asks for node certificates and nothing else.
    let token = std::fs::read_to_string(cluster.data_dir().join("node-token")).unwrap();
    let secret = token.trim().split_once("::node:").unwrap().1.to_string();
    for args in [&["get", "secrets", "-A"][..], &["get", "nodes"], &["get", "pods", "-A"]] {
        let output = cluster.kubectl(&[args, &["--token", &secret]].concat());
        assert!(!output.status.success(), "the join token could {args:?}");
        assert!(stderr(&output).contains(r#"User "system:bootstrap:skiff" cannot"#), "{}", stderr(&output));
    }
    let csrs = cluster.kubectl(&["get", "certificatesigningrequests", "--token", &secret]);
    assert!(csrs.status.success(), "{}", stderr(&csrs));
}
