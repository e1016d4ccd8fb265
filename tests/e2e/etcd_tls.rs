//! `skiff server` on an etcd that speaks only TLS and admits only clients with a certificate from its CA
//! (`--client-cert-auth`), as k3s and kube-apiserver run it: the TLS files given as `--store` parameters
//! or as kube-apiserver's `--etcd-*` flags, and clear refusals when they are wrong.

use std::process::Command;

use crate::harness::{Cluster, Etcd, free_port};

/// Runs `skiff server` with `args` after `--store`, expecting it to give up; returns what it said.
fn server_refuses(store: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port()), "--store", store, "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("skiff runs");
    assert!(!output.status.success(), "skiff server started with --store {store} {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn etcd_tls_servers_use_client_certificates() {
    let etcd = Etcd::start_with_client_certificates().unwrap();
    let [ca, cert, key] = ["ca.crt", "client.crt", "client.key"].map(|f| etcd.file(f).display().to_string());

    // The files as parameters of the store URL, and as flags: two servers sharing the etcd.
    let in_url = Cluster::start_on(format!("etcd://{}?cacert={ca}&cert={cert}&key={key}", etcd.endpoint)).unwrap();
    in_url.ok(&["create", "namespace", "over-tls"]);
    let flags = ["--etcd-cafile", &ca, "--etcd-certfile", &cert, "--etcd-keyfile", &key];
    let by_flags = Cluster::start_on_with(format!("etcd://{}", etcd.endpoint), &flags).unwrap();
    assert_eq!(by_flags.ok(&["get", "namespace", "over-tls", "-o", "name"]).trim(), "namespace/over-tls");

    // Without a client certificate etcd refuses the handshake; the server says which etcd it could not reach.
    let store = format!("etcd://{}", etcd.endpoint);
    let said = server_refuses(&store, &["--etcd-cafile", &ca]);
    assert!(said.contains(&format!("cannot connect to etcd at https://{}", etcd.endpoint)), "{said}");

    // A missing file is named; an unknown parameter, half a client identity or a file given twice is refused
    // before connecting.
    let said = server_refuses(&format!("{store}?cacert=/nonexistent/ca.crt"), &[]);
    assert!(said.contains("cannot read etcd tls file /nonexistent/ca.crt"), "{said}");
    let said = server_refuses(&format!("{store}?cacert={ca}&insecure=true"), &[]);
    assert!(said.contains("unknown parameter \"insecure\""), "{said}");
    let said = server_refuses(&store, &["--etcd-cafile", &ca, "--etcd-certfile", &cert]);
    assert!(said.contains("client certificate and key go together"), "{said}");
    let said = server_refuses(&format!("{store}?cacert={ca}"), &["--etcd-cafile", &ca]);
    assert!(said.contains("cacert is given twice"), "{said}");
}
