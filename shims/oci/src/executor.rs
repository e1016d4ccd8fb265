//! How a container's init process becomes the container's program: `execve` with the container's
//! environment passed to it, leaving the init process's own environment alone.
//!
//! libcontainer's default executor clears and sets the init process's environment with `std::env`, which takes
//! the write side of Rust's environment lock. The init process is a copy of the agent made while the agent's
//! other threads run, and `Command::spawn` holds that lock's read side across its own fork (the agent runs
//! CNI plugins for other pods, `umount`...). A copy made in that window holds a read lock nobody will release,
//! so the init waited for ever and the start failed at its deadline. `execve` needs no lock.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError};
use oci_spec::runtime::Spec;

#[derive(Clone, Default)]
pub(crate) struct Execve {
    /// `NAME=value` entries, set once in the init process.
    env: OnceLock<Vec<CString>>,
}

impl Executor for Execve {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec.process().as_ref().and_then(|p| p.args().as_ref()).ok_or(ExecutorError::InvalidArg)?;
        let name = args.first().ok_or(ExecutorError::InvalidArg)?;
        let env = self.env.get().map(Vec::as_slice).unwrap_or_default();
        let search = env.iter().find_map(|entry| entry.to_str().ok()?.strip_prefix("PATH=")).unwrap_or_default();
        let program = program_path(name, search)
            .ok_or_else(|| ExecutorError::Execution(format!("executable {name:?} not found in $PATH").into()))?;
        let program =
            CString::new(program.into_os_string().into_encoded_bytes()).map_err(|_| ExecutorError::InvalidArg)?;
        let argv = args.iter().map(|arg| CString::new(arg.as_bytes())).collect::<Result<Vec<_>, _>>();
        let argv = argv.map_err(|_| ExecutorError::InvalidArg)?;
        let error = nix::unistd::execve(&program, &argv, env).unwrap_err();
        Err(ExecutorError::Execution(format!("cannot execute {name:?}: {error}").into()))
    }

    /// libcontainer's own checks: a PATH in the environment, the program found in it and executable.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        let entries = envs.into_iter().map(|(name, value)| CString::new(format!("{name}={value}")));
        let entries = entries
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ExecutorSetEnvsError::Other(format!("invalid environment variable: {e}")))?;
        self.env.set(entries).map_err(|_| ExecutorSetEnvsError::Other("the environment was set twice".into()))
    }
}

/// Where `name` is: itself if it has a slash, else the first entry of `search` (PATH) holding it, as
/// libcontainer's validation found it.
fn program_path(name: &str, search: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    search.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|path| path.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_libcontainer_validates_them() {
        assert_eq!(program_path("./app", "/bin"), Some(PathBuf::from("./app")));
        assert_eq!(program_path("/no/such/app", "/bin"), Some(PathBuf::from("/no/such/app")));
        assert_eq!(program_path("sh", "/no/such/dir:/bin:/usr/bin"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(program_path("no-such-program", "/bin:/usr/bin"), None);
        assert_eq!(program_path("sh", ""), None);
    }
}
