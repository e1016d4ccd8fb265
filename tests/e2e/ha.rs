//! The HA control plane: three `skiff server`s on a three-member etcd cluster (Debian etcd-server on loopback
//! ports) serve one API; the scheduler and controllers run in the one holding the leader Lease, another takes
//! over when it dies, and the agent fails over between servers.

use std::time::{Duration, Instant};

use crate::harness::{Agent, Cluster, EtcdCluster, Registry, eventually};

fn leader_pid(cluster: &Cluster) -> Option<u32> {
    let out = cluster.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "skiff-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let holder = String::from_utf8_lossy(&out.stdout).to_string();
    holder.rsplit('_').next()?.parse().ok()
}

fn node_of(cluster: &Cluster, pod: &str) -> Option<String> {
    let out = cluster.kubectl(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    let node = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success() && !node.is_empty()).then_some(node)
}

fn pod_manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: ticker\n    image: {image}\n"
    )
}

#[test]
fn ha_servers_share_one_cluster_and_a_new_leader_takes_over() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let registry = Registry::start().unwrap();
    let image = registry.push_sample("ticker");
    let mut servers: Vec<Cluster> = (0..3).map(|_| Cluster::start_on(etcd.store_url()).unwrap()).collect();
    let first = &servers[0];

    // Every server serves the same objects with the same credentials: the first server's kubeconfig and join
    // token work against the others.
    first.ok(&["create", "configmap", "shared", "--from-literal=a=b"]);
    for server in &servers {
        let token = std::fs::read_to_string(server.data_dir().join("node-token")).unwrap();
        assert_eq!(token, std::fs::read_to_string(first.data_dir().join("node-token")).unwrap());
        assert_eq!(server.ok(&["get", "configmap", "shared", "-o", "jsonpath={.data.a}"]), "b");
    }

    let all: Vec<&Cluster> = servers.iter().collect();
    let agent = Agent::join_servers(first, &all, "ha-node", &[]).unwrap();
    first.with_stdin(&["apply", "-f", "-"], &pod_manifest("before", &image));
    eventually("the first pod scheduled", Duration::from_secs(30), || node_of(first, "before"));

    // Kill -9 the server that leads; one of the others must schedule within 15 s.
    let leader = eventually("a leader", Duration::from_secs(30), || leader_pid(first));
    let index = servers.iter().position(|s| s.pid() == Some(leader)).expect("the leader is one of the servers");
    // Killed but kept: its temporary directory holds the agent's data dir when it is the first server.
    servers[index].kill();
    let killed_at = Instant::now();
    let live: Vec<&Cluster> = servers.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, s)| s).collect();
    let survivor = live[0];
    survivor.with_stdin(&["apply", "-f", "-"], &pod_manifest("after", &image));
    eventually("the pod scheduled by a new leader", Duration::from_secs(15), || node_of(survivor, "after"));
    let took = killed_at.elapsed();
    assert_ne!(leader_pid(survivor), Some(leader));
    // The agent reaches a live server: the new pod runs.
    eventually("the pod running after failover", Duration::from_secs(30), || {
        let phase = survivor.ok(&["get", "pod", "after", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
    eprintln!("a new leader scheduled {:?} after the old one was killed", took);

    // One etcd member down: the API keeps serving reads and writes.
    etcd.kill(2);
    // If the member was etcd's leader, writes wait out the election (a second or two), as with Kubernetes;
    // after that every request succeeds.
    eventually("a write after losing an etcd member", Duration::from_secs(15), || {
        let out = survivor.kubectl(&["create", "configmap", "after-etcd-loss", "--from-literal=a=b"]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success() || stderr.contains("already exists")).then_some(())
    });
    for n in 0..5 {
        survivor.ok(&["create", "configmap", &format!("steady-{n}"), "--from-literal=a=b"]);
    }
    for server in &live {
        eventually("reads after losing an etcd member", Duration::from_secs(15), || {
            let out = server.kubectl(&["get", "configmap", "after-etcd-loss", "-o", "name"]);
            out.status.success().then_some(())
        });
    }
    drop(agent);
}
