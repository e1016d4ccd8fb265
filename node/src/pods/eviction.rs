//! The kubelet's eviction of pods whose emptyDir volumes outgrow their size. One task per node, the pods'
//! loop, measures every limited emptyDir of its running pods every [`HOUSEKEEPING_INTERVAL`], with a du-like
//! walk on a blocking thread; a pod over a limit is ended by its own worker, as the kubelet's eviction
//! manager ends it: Failed with reason Evicted, its containers killed at once. A wasm guest's preopened
//! directories are these host directories, so the same walk covers them.

use std::collections::HashSet;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::volumes::{self, SizeLimit};

/// How often the emptyDirs are measured. The kubelet's housekeeping runs every 10 s; half that stops a pod
/// that fills the node's disk sooner, and only volumes with a limit are walked.
pub(super) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// What the housekeeping asks of the pods' loop.
pub(super) enum Due {
    /// Time to measure: [`Housekeeping::measure`] wants the running pods.
    Measure,
    /// Pod `uid` outgrew a volume: its worker evicts it with `message`.
    Evict { uid: String, message: String },
}

/// The node's measuring of emptyDirs: when it is due, and the walk under way.
pub(super) struct Housekeeping {
    tick: tokio::time::Interval,
    over_tx: mpsc::UnboundedSender<(String, String)>,
    over_rx: mpsc::UnboundedReceiver<(String, String)>,
    /// One walk at a time, however long one takes.
    walking: Option<JoinHandle<()>>,
}

/// One volume to measure, and whose it is.
struct Measured {
    uid: String,
    volume: String,
    dir: PathBuf,
    limit: SizeLimit,
}

impl Housekeeping {
    pub(super) fn new() -> Self {
        let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        // A loop held up (a pod's containers stopping) measures once after, not once per missed tick.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (over_tx, over_rx) = mpsc::unbounded_channel();
        Self { tick, over_tx, over_rx, walking: None }
    }

    /// Waits for what is due next.
    pub(super) async fn next(&mut self) -> Due {
        tokio::select! {
            Some((uid, message)) = self.over_rx.recv() => Due::Evict { uid, message },
            _ = self.tick.tick() => Due::Measure,
        }
    }

    /// Measures the limited emptyDirs of `pods` (each in its directory under `pods_dir`) on a blocking
    /// thread, unless the last walk is still going. Each pod over a limit comes back from [`Self::next`]
    /// once, with the first of its volumes over, in the order the pod lists them, as the kubelet checks them.
    pub(super) fn measure(&mut self, pods: impl IntoIterator<Item = impl Deref<Target = Pod>>, pods_dir: &Path) {
        if self.walking.as_ref().is_some_and(|walking| !walking.is_finished()) {
            return;
        }
        let mut todo = Vec::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty()) else { continue };
            let pod_dir = pods_dir.join(uid);
            for (volume, limit) in volumes::measured(&pod) {
                let dir = volumes::volume_dir(&pod_dir, &volume);
                todo.push(Measured { uid: uid.to_owned(), volume, dir, limit });
            }
        }
        if todo.is_empty() {
            return;
        }
        let over = self.over_tx.clone();
        self.walking = Some(tokio::task::spawn_blocking(move || {
            let mut evicted = HashSet::new();
            for Measured { uid, volume, dir, limit } in todo {
                if evicted.contains(&uid) {
                    continue;
                }
                let used = usage(&dir, limit.bytes);
                if used > limit.bytes {
                    tracing::debug!(%uid, %volume, used, limit = limit.bytes, "an emptyDir outgrew its limit");
                    evicted.insert(uid.clone());
                    // The loop owns the receiver as long as it sends walks off.
                    let _ = over.send((uid, message(&volume, &limit.text)));
                }
            }
        }));
    }
}

/// The kubelet's eviction message for an emptyDir over its limit (`emptyDirMessageFmt`, trailing space
/// included).
fn message(volume: &str, limit: &str) -> String {
    format!("Usage of EmptyDir volume \"{volume}\" exceeds the limit \"{limit}\". ")
}

/// The bytes the files under `dir` take on disk, as du counts them: blocks allocated, each file once however
/// many links it has, links themselves not followed. The walk stops once past `cap`, so a volume of millions
/// of files costs no more than its limit says. A directory swapped for a link while the walk goes can only
/// make its pod's own count larger.
fn usage(dir: &Path, cap: u64) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let mut total = top.blocks() * 512;
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        // Gone or unreadable meanwhile: nothing more to count there.
        let Ok(entries) = std::fs::read_dir(&next) else { continue };
        for entry in entries.flatten() {
            // A directory entry's metadata is the entry's own, a link's rather than its target's.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if total > cap {
                return total;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn usage_counts_blocks_once_and_follows_no_link() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("a"), vec![1u8; 64 * KIB as usize]).unwrap();
        std::fs::write(volume.join("sub/b"), vec![1u8; 32 * KIB as usize]).unwrap();
        std::fs::hard_link(volume.join("a"), volume.join("sub/a-again")).unwrap();
        let inside = usage(&volume, u64::MAX);
        assert!((96 * KIB..160 * KIB).contains(&inside), "both files, the hard link once: {inside}");

        // A link out of the volume, to a large file and to a directory holding one, counts as a link.
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 1024 * KIB as usize]).unwrap();
        std::os::unix::fs::symlink(outside.join("big"), volume.join("to-file")).unwrap();
        std::os::unix::fs::symlink(&outside, volume.join("sub/to-dir")).unwrap();
        let linked = usage(&volume, u64::MAX);
        assert!(linked < inside + 16 * KIB, "the links' targets are not counted: {linked} against {inside}");

        assert!(usage(&volume, 16 * KIB) > 16 * KIB, "a walk past its cap says so");
        assert_eq!(usage(&tmp.path().join("missing"), u64::MAX), 0, "a volume not made yet holds nothing");
    }

    #[test]
    fn the_message_is_the_kubelets() {
        assert_eq!(message("cache", "1Mi"), "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ");
    }
}
