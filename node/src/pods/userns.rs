//! The ids of pods with `hostUsers: false`, as the kubelet's user namespace manager gives them: each pod
//! 65,536 ids of its own, starting at a multiple of 65,536 above the host's first 65,536 (where the host's
//! users are), the same range for users and groups. A pod's range is kept in its directory in the
//! kubelet's format (`userns`), so it survives agent restarts and is free again once the pod's directory
//! is gone: the directory is the record, and nothing else needs releasing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::network::IdRange;

/// The ids each pod gets, the kubelet's `idsPerPod`.
pub const IDS_PER_POD: u32 = 65_536;

/// The file in a pod's directory that holds its range.
const FILE: &str = "userns";

/// Ranges of the pods under `pods_dir`, handed out one at a time.
pub struct UserNamespaces {
    pods_dir: PathBuf,
    /// Held while a range is chosen and written, so two pods never take the same.
    choosing: Mutex<()>,
}

/// The kubelet's record of a pod's mappings (`<pod dir>/userns`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    uid_mappings: Vec<Mapping>,
    gid_mappings: Vec<Mapping>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    host_id: u32,
    container_id: u32,
    length: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("no user namespace range is free (every one of the {0} ranges is taken)")]
    Exhausted(u32),
    #[error("{path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a single range of 65536 ids from container id 0, the same for users and groups")]
    Unexpected(PathBuf),
}

impl UserNamespaces {
    pub fn new(pods_dir: PathBuf) -> Self {
        UserNamespaces { pods_dir, choosing: Mutex::new(()) }
    }

    /// The range of pod `uid`: the one its directory records, else the lowest free one, recorded now.
    pub fn range_of(&self, uid: &str) -> Result<IdRange, UsernsError> {
        let _choosing = self.choosing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.pods_dir.join(uid).join(FILE);
        if let Some(range) = read(&path)? {
            return Ok(range);
        }
        // A record that cannot be read might name any range: none is given until it can be.
        let mut taken = Vec::new();
        for pod in std::fs::read_dir(&self.pods_dir).into_iter().flatten().flatten() {
            if let Some(range) = read(&pod.path().join(FILE))? {
                taken.push(range.host_id);
            }
        }
        // Slot 0 is the host's own ids; the last slot ends at 2^32.
        let slots = u32::MAX / IDS_PER_POD;
        let host_id = (1..slots)
            .map(|slot| slot * IDS_PER_POD)
            .find(|host_id| !taken.contains(host_id))
            .ok_or(UsernsError::Exhausted(slots - 1))?;
        let range = IdRange { host_id, size: IDS_PER_POD };
        write(&path, range).map_err(|source| UsernsError::Record { path, source })?;
        Ok(range)
    }
}

/// The range recorded at `path`, None when there is no record.
fn read(path: &Path) -> Result<Option<IdRange>, UsernsError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(UsernsError::Record { path: path.to_owned(), source }),
    };
    let unexpected = || UsernsError::Unexpected(path.to_owned());
    let record: Record = serde_json::from_slice(&bytes).map_err(|_| unexpected())?;
    match (record.uid_mappings.as_slice(), record.gid_mappings.as_slice()) {
        ([uids], [gids])
            if uids == gids
                && uids.container_id == 0
                && uids.length == IDS_PER_POD
                && uids.host_id.is_multiple_of(IDS_PER_POD)
                && uids.host_id >= IDS_PER_POD =>
        {
            Ok(Some(IdRange { host_id: uids.host_id, size: uids.length }))
        }
        _ => Err(unexpected()),
    }
}

/// Records `range` at `path` so that a crash leaves the old record or the new one, never half of one.
fn write(path: &Path, range: IdRange) -> io::Result<()> {
    let mapping = Mapping { host_id: range.host_id, container_id: 0, length: range.size };
    let record = Record { uid_mappings: vec![mapping], gid_mappings: vec![mapping] };
    let dir = path.parent().ok_or_else(|| io::Error::other("a record needs a pod directory"))?;
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let file = std::fs::File::create(&temporary)?;
    serde_json::to_writer(&file, &record).map_err(io::Error::other)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pod_keeps_its_own_range_until_its_directory_goes() {
        let pods = tempfile::tempdir().unwrap();
        let ranges = UserNamespaces::new(pods.path().to_path_buf());
        let a = ranges.range_of("a").unwrap();
        assert_eq!(a, IdRange { host_id: 65_536, size: 65_536 });
        let b = ranges.range_of("b").unwrap();
        assert_eq!(b.host_id, 131_072);
        assert_eq!(ranges.range_of("a").unwrap(), a, "a pod's range is kept");
        let record = std::fs::read_to_string(pods.path().join("a/userns")).unwrap();
        assert_eq!(
            record,
            r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":65536}],"gidMappings":[{"hostId":65536,"containerId":0,"length":65536}]}"#,
            "the kubelet's format"
        );
        std::fs::remove_dir_all(pods.path().join("a")).unwrap();
        assert_eq!(ranges.range_of("c").unwrap(), a, "a removed pod's range is free again");
        let again = UserNamespaces::new(pods.path().to_path_buf());
        assert_eq!(again.range_of("b").unwrap(), b, "the records outlive the agent");
    }

    #[test]
    fn a_record_other_than_the_kubelets_is_refused() {
        let pods = tempfile::tempdir().unwrap();
        std::fs::create_dir(pods.path().join("odd")).unwrap();
        let odd = r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":65536}],"gidMappings":[{"hostId":131072,"containerId":0,"length":65536}]}"#;
        std::fs::write(pods.path().join("odd/userns"), odd).unwrap();
        let error = UserNamespaces::new(pods.path().to_path_buf()).range_of("odd").unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("not a single range of 65536 ids from container id 0, the same for users and groups")
        );
    }
}
