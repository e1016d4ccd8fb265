use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        attach(pid, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}

/// Skiff's patch: moves `pid` into the v1 cgroup at `cgroup_path`. A single-threaded process moving itself
/// writes "0" to `tasks`, for which the kernel skips the global threadgroup lock (kernel/cgroup/cgroup.c,
/// `cgroup_procs_write_start`): the first writer to `cgroup.procs` after a quiet spell waits for an RCU
/// grace period, 10-16 ms on the 2-core hosts Skiff targets, and that was most of a container's start.
pub(super) fn attach(pid: Pid, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    if pid == nix::unistd::getpid() && single_threaded() {
        return common::write_cgroup_file(cgroup_path.join(CGROUP_TASKS), 0);
    }
    common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)
}

const CGROUP_TASKS: &str = "tasks";

/// procfs gives /proc/self/task two links plus one per thread: one statx, where reading
/// /proc/self/status (its Threads: line) made the kernel format the whole file once per controller.
fn single_threaded() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/task").is_ok_and(|task| task.nlink() == 3)
}
