//! The containers running on this node, kept by the pod workers: what an exec or a port-forward can reach,
//! and what the node's metrics read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use skiff_shim::{Exec, HttpService, Meter, Usage};

use crate::pods::PodRef;

/// By pod uid and container name.
#[derive(Default)]
pub struct Running {
    containers: Mutex<HashMap<(String, String), RunningContainer>>,
}

/// One start of a container, as its worker announces it.
pub struct RunningContainer {
    pub pod: PodRef,
    pub name: String,
    /// The start's id, so the end of an old start never removes its restart.
    pub id: String,
    pub runtime: &'static str,
    pub exec: Option<Arc<dyn Exec>>,
    pub meter: Option<Arc<dyn Meter>>,
    /// Its requests, handed over inside the agent, where its runtime serves its HTTP here.
    pub http: Option<Arc<dyn HttpService>>,
    /// The pod's address.
    pub address: IpAddr,
    pub started_at: SystemTime,
}

/// A running container's usage, read at `at`.
pub struct Sample {
    pub pod: PodRef,
    pub container: String,
    pub started_at: SystemTime,
    pub at: SystemTime,
    pub usage: Usage,
}

impl Running {
    pub fn started(&self, container: RunningContainer) {
        let key = (container.pod.uid.clone(), container.name.clone());
        self.lock().insert(key, container);
    }

    pub fn ended(&self, uid: &str, container: &str, id: &str) {
        let mut containers = self.lock();
        let key = (uid.to_string(), container.to_string());
        if containers.get(&key).is_some_and(|e| e.id == id) {
            containers.remove(&key);
        }
    }

    /// Where to exec in `container` of the pod with `uid`, or why not (the message the client sees).
    pub fn exec(&self, uid: &str, container: &str, pod: &str) -> Result<Arc<dyn Exec>, String> {
        let containers = self.lock();
        let entry = containers
            .get(&(uid.to_string(), container.to_string()))
            .ok_or_else(|| format!("container \"{container}\" of pod \"{pod}\" is not running"))?;
        entry.exec.clone().ok_or_else(|| {
            format!(
                "exec is not supported for {runtime} containers: container \"{container}\" of pod \"{pod}\" runs as \
                 one {runtime} instance, with no processes to start a command in",
                runtime = entry.runtime
            )
        })
    }

    /// The address of the pod with `uid` while a container of it runs here (where a port-forward connects),
    /// or why not (the message the client sees).
    pub fn address(&self, uid: &str, pod: &str) -> Result<IpAddr, String> {
        let containers = self.lock();
        let running = containers.iter().find(|((of, _), _)| of == uid);
        running.map(|(_, entry)| entry.address).ok_or_else(|| format!("pod \"{pod}\" has no running container"))
    }

    /// The usage of every running container whose runtime can tell it. The meters are read after the lock
    /// is released: a cgroup's files are read from disk, and starts and ends must not wait for a scrape.
    pub fn samples(&self) -> Vec<Sample> {
        let metered: Vec<(PodRef, String, SystemTime, Arc<dyn Meter>)> = self
            .lock()
            .values()
            .filter_map(|c| Some((c.pod.clone(), c.name.clone(), c.started_at, c.meter.clone()?)))
            .collect();
        metered
            .into_iter()
            .map(|(pod, container, started_at, meter)| {
                let usage = meter.usage();
                Sample { pod, container, started_at, at: SystemTime::now(), usage }
            })
            .collect()
    }

    /// The in-process server of the container running here that serves `port` at pod address `ip`, if its
    /// runtime declares one: the ingress hands it requests for that endpoint without a connection.
    pub fn http_at(&self, ip: IpAddr, port: u16) -> Option<Arc<dyn HttpService>> {
        let containers = self.lock();
        let mut serving = containers.values().filter(|c| c.address == ip).filter_map(|c| c.http.clone());
        serving.find(|http| http.port() == port)
    }

    /// How many containers run, and of how many pods.
    pub fn counts(&self) -> (usize, usize) {
        let containers = self.lock();
        let pods: std::collections::HashSet<&str> = containers.keys().map(|(uid, _)| uid.as_str()).collect();
        (containers.len(), pods.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), RunningContainer>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Usage);

    impl Meter for Fixed {
        fn usage(&self) -> Usage {
            self.0
        }
    }

    fn start(running: &Running, id: &str, meter: Option<Arc<dyn Meter>>) {
        running.started(RunningContainer {
            pod: PodRef { namespace: "default".into(), name: "p".into(), uid: "uid-1".into() },
            name: "app".into(),
            id: id.into(),
            runtime: "wasm",
            exec: None,
            meter,
            http: None,
            address: "10.42.0.7".parse().unwrap(),
            started_at: SystemTime::UNIX_EPOCH,
        });
    }

    #[test]
    fn the_registry_explains_what_cannot_be_reached() {
        let running = Running::default();
        let ip: IpAddr = "10.42.0.7".parse().unwrap();
        assert!(running.address("uid-1", "default/p").unwrap_err().contains("has no running container"));
        start(&running, "a-0", None);
        assert_eq!(running.address("uid-1", "default/p"), Ok(ip));
        let refused = running.exec("uid-1", "app", "default/p").err().unwrap();
        assert!(refused.starts_with("exec is not supported for wasm containers: "), "{refused}");
        assert!(running.exec("uid-1", "other", "default/p").err().unwrap().contains("is not running"));
        // The end of an earlier start leaves its restart registered.
        start(&running, "a-1", None);
        running.ended("uid-1", "app", "a-0");
        assert!(running.exec("uid-1", "app", "default/p").err().unwrap().starts_with("exec is not supported"));
        running.ended("uid-1", "app", "a-1");
        assert!(running.exec("uid-1", "app", "default/p").err().unwrap().contains("is not running"));
        assert!(running.address("uid-1", "default/p").is_err(), "no address once nothing of the pod runs");
    }

    #[test]
    fn samples_read_the_meters_of_running_containers() {
        let running = Running::default();
        start(&running, "a-0", None);
        assert!(running.samples().is_empty(), "a runtime that cannot tell is not sampled");
        let usage = Usage { cpu_nanos: 7, ..Usage::default() };
        start(&running, "a-1", Some(Arc::new(Fixed(usage))));
        let samples = running.samples();
        assert_eq!((samples.len(), samples[0].usage, samples[0].container.as_str()), (1, usage, "app"));
        assert_eq!(running.counts(), (1, 1));
    }
}
