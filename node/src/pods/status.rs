//! A pod's observed state and the PodStatus the kubelet would report for it: phase, conditions and
//! container statuses. Pure: the worker owns the state, this module only computes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub container_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Ended and will not be restarted under the pod's restart policy.
    pub done: bool,
}

impl ContainerState {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: None,
            state: State::Waiting { reason: "ContainerCreating".into(), message: None },
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
            done: false,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    fn to_json(&self) -> Value {
        let terminated = |t: &Terminated| {
            let mut value = json!({"exitCode": t.exit_code, "reason": t.reason, "finishedAt": t.finished_at});
            if let Some(message) = &t.message {
                value["message"] = json!(message);
            }
            if let Some(started) = &t.started_at {
                value["startedAt"] = json!(started);
            }
            if let Some(id) = &t.container_id {
                value["containerID"] = json!(id);
            }
            json!({"terminated": value})
        };
        let state = match &self.state {
            State::Waiting { reason, message } => {
                let mut waiting = json!({"reason": reason});
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({"waiting": waiting})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated(t) => terminated(t),
        };
        let mut value = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last.as_ref().map(terminated).unwrap_or(json!({})),
        });
        if let Some(id) = &self.container_id {
            value["containerID"] = json!(id);
        }
        value
    }
}

/// Why the node ended a pod: a pod status's `reason` (Evicted, OutOfmemory) and `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub reason: &'static str,
    pub message: String,
}

/// What the worker knows of its pod.
#[derive(Clone, Debug, Default)]
pub struct PodState {
    pub init: Vec<ContainerState>,
    pub main: Vec<ContainerState>,
    pub initialized: bool,
    /// An init container failed under restartPolicy Never: the pod failed.
    pub init_failed: bool,
    /// Why the node ended the pod, when it did (evicted it, or refused it at admission): it failed, with
    /// that reason and message.
    pub ended: Option<Ending>,
    pub start_time: String,
    pub host_ip: String,
    /// The pod's address once its network is set up (the node's with host networking).
    pub pod_ip: Option<String>,
    /// Conditions' last transition times, kept so they only move when a condition changes.
    transitions: BTreeMap<&'static str, (bool, String)>,
}

impl PodState {
    pub fn new(init: Vec<ContainerState>, main: Vec<ContainerState>, host_ip: String) -> Self {
        let initialized = init.is_empty();
        Self { init, main, initialized, start_time: crate::now(), host_ip, ..Self::default() }
    }

    pub fn phase(&self) -> &'static str {
        if self.init_failed || self.ended.is_some() {
            return "Failed";
        }
        if !self.initialized {
            return "Pending";
        }
        if !self.main.is_empty() && self.main.iter().all(|c| c.done) {
            return if self.main.iter().all(ContainerState::succeeded) { "Succeeded" } else { "Failed" };
        }
        let ever_ran = |c: &ContainerState| {
            matches!(c.state, State::Running { .. } | State::Terminated(_)) || c.last.is_some() || c.restart_count > 0
        };
        if self.main.iter().any(ever_ran) { "Running" } else { "Pending" }
    }

    /// The full PodStatus, for a merge patch of `status`.
    pub fn status(&mut self) -> Value {
        let phase = self.phase();
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let containers_ready = !terminal && !self.main.is_empty() && self.main.iter().all(|c| c.ready);
        let conditions = [
            ("PodScheduled", true, None),
            ("Initialized", self.initialized, (!self.initialized).then_some("ContainersNotInitialized")),
            ("ContainersReady", containers_ready, reason_not_ready(terminal, containers_ready)),
            ("Ready", containers_ready, reason_not_ready(terminal, containers_ready)),
        ];
        let now = crate::now();
        let conditions: Vec<Value> = conditions
            .into_iter()
            .map(|(kind, status, reason)| {
                let entry = self.transitions.entry(kind).or_insert_with(|| (status, now.clone()));
                if entry.0 != status {
                    *entry = (status, now.clone());
                }
                let mut condition = json!({
                    "type": kind,
                    "status": if status { "True" } else { "False" },
                    "lastProbeTime": null,
                    "lastTransitionTime": entry.1,
                });
                if let Some(reason) = reason {
                    condition["reason"] = json!(reason);
                }
                condition
            })
            .collect();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": self.start_time,
            "containerStatuses": self.main.iter().map(ContainerState::to_json).collect::<Vec<_>>(),
        });
        if let Some(ip) = &self.pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(self.init.iter().map(ContainerState::to_json).collect::<Vec<_>>());
        }
        if let Some(ending) = &self.ended {
            status["reason"] = json!(ending.reason);
            status["message"] = json!(ending.message);
        }
        status
    }
}

fn reason_not_ready(terminal: bool, ready: bool) -> Option<&'static str> {
    match (terminal, ready) {
        (_, true) => None,
        (true, false) => Some("PodCompleted"),
        (false, false) => Some("ContainersNotReady"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed".into() } else { "Error".into() },
            message: None,
            started_at: None,
            finished_at: crate::now(),
            container_id: None,
        })
    }

    fn pod(states: Vec<(State, bool)>) -> PodState {
        let main = states
            .into_iter()
            .enumerate()
            .map(|(i, (state, done))| ContainerState { state, done, ..ContainerState::new(&format!("c{i}"), "img") })
            .collect();
        PodState::new(Vec::new(), main, "127.0.0.1".into())
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            pod(vec![(State::Waiting { reason: "ContainerCreating".into(), message: None }, false)]).phase(),
            "Pending"
        );
        assert_eq!(pod(vec![(State::Running { started_at: crate::now() }, false)]).phase(), "Running");
        assert_eq!(pod(vec![(terminated(0), true), (terminated(0), true)]).phase(), "Succeeded");
        assert_eq!(pod(vec![(terminated(0), true), (terminated(3), true)]).phase(), "Failed");
        assert_eq!(
            pod(vec![(terminated(1), false)]).phase(),
            "Running",
            "a container that will restart keeps the pod running"
        );
        let mut init =
            PodState::new(vec![ContainerState::new("init", "img")], vec![ContainerState::new("c", "img")], "h".into());
        assert_eq!(init.phase(), "Pending");
        init.init_failed = true;
        assert_eq!(init.phase(), "Failed");
    }

    #[test]
    fn an_evicted_pod_failed_and_says_why() {
        let mut state = pod(vec![(State::Running { started_at: crate::now() }, false)]);
        assert!(state.status().get("reason").is_none());
        let message = "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ";
        state.ended = Some(Ending { reason: "Evicted", message: message.into() });
        let status = state.status();
        assert_eq!(
            (status["phase"].as_str(), status["reason"].as_str(), status["message"].as_str()),
            (Some("Failed"), Some("Evicted"), Some(message))
        );
    }

    #[test]
    fn status_reports_conditions_and_container_states() {
        let mut state = pod(vec![(terminated(3), true)]);
        let status = state.status();
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3);
        assert!(status.get("podIP").is_none(), "no address before the pod's network is set up");
        state.pod_ip = Some("10.42.7.5".into());
        let status = state.status();
        assert_eq!(
            (status["podIP"].as_str(), status["podIPs"][0]["ip"].as_str()),
            (Some("10.42.7.5"), Some("10.42.7.5"))
        );
        let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("PodCompleted")));
        let first = ready["lastTransitionTime"].clone();
        assert_eq!(
            state.status()["conditions"][3]["lastTransitionTime"],
            first,
            "unchanged conditions keep their time"
        );
    }
}
