//! The pods waiting for a placement: an active FIFO, and the pods parked as unschedulable until the
//! cluster changes (kube-scheduler's activeQ and unschedulablePods, without priorities).

use std::collections::{HashSet, VecDeque};

#[derive(Debug, Default)]
pub struct Queue {
    active: VecDeque<String>,
    /// The pods `active` holds for real; entries not in here were removed and are skipped.
    queued: HashSet<String>,
    parked: HashSet<String>,
}

impl Queue {
    /// Queues a pod unless it is queued or parked already.
    pub fn push(&mut self, uid: &str) {
        if !self.parked.contains(uid) && self.queued.insert(uid.to_owned()) {
            self.active.push_back(uid.to_owned());
        }
    }

    pub fn pop(&mut self) -> Option<String> {
        while let Some(uid) = self.active.pop_front() {
            if self.queued.remove(&uid) {
                return Some(uid);
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sets a pod aside until [`Queue::unpark_all`].
    pub fn park(&mut self, uid: &str) {
        self.queued.remove(uid);
        self.parked.insert(uid.to_owned());
    }

    pub fn unpark_all(&mut self) {
        for uid in std::mem::take(&mut self.parked) {
            self.push(&uid);
        }
    }

    pub fn remove(&mut self, uid: &str) {
        self.queued.remove(uid);
        self.parked.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut Queue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn first_in_first_out_once_each() {
        let mut queue = Queue::default();
        for uid in ["a", "b", "a", "c"] {
            queue.push(uid);
        }
        queue.remove("b");
        assert_eq!(drain(&mut queue), ["a", "c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn parked_pods_wait_for_unpark() {
        let mut queue = Queue::default();
        queue.park("a");
        queue.push("a");
        queue.push("b");
        assert_eq!(drain(&mut queue), ["b"]);
        queue.unpark_all();
        assert_eq!(drain(&mut queue), ["a"]);
        queue.park("c");
        queue.remove("c");
        queue.unpark_all();
        assert!(queue.is_empty(), "a removed pod is not retried");
    }

    #[test]
    fn removed_then_pushed_again_comes_once() {
        let mut queue = Queue::default();
        queue.push("a");
        queue.remove("a");
        queue.push("a");
        assert_eq!(drain(&mut queue), ["a"]);
    }
}
