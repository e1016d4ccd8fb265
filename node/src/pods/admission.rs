//! The kubelet's admission of a pod by the node's memory. The scheduler counts what pods request; a wasm
//! guest lives in the agent, and may grow to its limit (or the node's default limit) whatever it requests,
//! so the node counts that instead before it runs a pod, and refuses a pod its memory cannot hold, as the
//! kubelet refuses one (`OutOfmemory`). Which containers hold more than they request is what their shim
//! says ([`skiff_shim::Shim::memory_held`]); the shim is known once the images are pulled, so that is when
//! a pod is admitted.

use std::collections::HashMap;
use std::sync::Mutex;

/// The node's memory as its pods hold it.
pub struct MemoryLedger {
    /// The node's allocatable memory.
    capacity: u64,
    /// What each admitted pod holds, by uid.
    held: Mutex<HashMap<String, u64>>,
}

/// A pod the node's memory cannot hold, in the kubelet's words.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Pod was rejected: Node didn't have enough resource: memory, requested: {requested}, used: {used}, capacity: {capacity}"
)]
pub struct OutOfMemory {
    requested: u64,
    used: u64,
    capacity: u64,
}

/// The kubelet's reason for a pod [`OutOfMemory`] refused.
pub const OUT_OF_MEMORY: &str = "OutOfmemory";

impl MemoryLedger {
    pub fn new(capacity: u64) -> Self {
        MemoryLedger { capacity, held: Mutex::default() }
    }

    /// Admits pod `uid`, which holds `bytes`, if they fit beside what the other pods hold. A pod whose
    /// containers started before (an agent restart) is never refused: it is counted, whatever it holds.
    pub fn admit(&self, uid: &str, bytes: u64, started: bool) -> Result<(), OutOfMemory> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let used: u64 = held.iter().filter(|(other, _)| *other != uid).map(|(_, bytes)| bytes).sum();
        if !started && used.saturating_add(bytes) > self.capacity {
            return Err(OutOfMemory { requested: bytes, used, capacity: self.capacity });
        }
        held.insert(uid.to_owned(), bytes);
        Ok(())
    }

    /// Pod `uid` holds nothing any more: its containers have ended for good.
    pub fn release(&self, uid: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

/// What a pod holds of the node's memory, from what each of its containers holds: its app containers
/// together, or its largest init container if that is more (init containers run before them, one at a
/// time), as the kubelet counts a pod's requests.
pub fn pod_memory(app: impl IntoIterator<Item = u64>, init: impl IntoIterator<Item = u64>) -> u64 {
    let app = app.into_iter().fold(0u64, u64::saturating_add);
    init.into_iter().fold(app, u64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_admitted_while_their_memory_fits() {
        let ledger = MemoryLedger::new(1000);
        assert_eq!(ledger.admit("a", 600, false), Ok(()));
        let refused = ledger.admit("b", 500, false).unwrap_err();
        assert_eq!(refused, OutOfMemory { requested: 500, used: 600, capacity: 1000 });
        assert_eq!(
            refused.to_string(),
            "Pod was rejected: Node didn't have enough resource: memory, requested: 500, used: 600, capacity: 1000"
        );
        assert_eq!(ledger.admit("a", 700, false), Ok(()), "a pod admitted again replaces its own holding");
        assert_eq!(ledger.admit("running", 500, true), Ok(()), "a running pod is counted, never refused");
        assert!(ledger.admit("c", 1, false).is_err(), "1,200 of 1,000 held");
        ledger.release("running");
        ledger.release("a");
        assert_eq!(ledger.admit("b", 1000, false), Ok(()));
    }

    #[test]
    fn a_pod_holds_its_app_containers_or_its_largest_init_container() {
        assert_eq!(pod_memory([100, 200], [250, 50]), 300);
        assert_eq!(pod_memory([100, 200], [400]), 400);
        assert_eq!(pod_memory([], []), 0);
        assert_eq!(pod_memory([u64::MAX, 1], []), u64::MAX, "saturates");
    }
}
