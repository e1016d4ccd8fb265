//! Configuration the way Kubernetes delivers it: ConfigMap values as environment variables (`env` with
//! `configMapKeyRef`, or `envFrom`) or as files in a mounted ConfigMap volume (one file per key).
//!
//! ```ignore
//! let greeting = skiff_sdk::config::get("GREETING").unwrap_or("hello");
//! let settings = skiff_sdk::config::file("/etc/app/settings.toml")?;
//! ```

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist: the key is not in the ConfigMap, or the volume is not mounted (or not
    /// visible to the guest: the host only shows the pod's volume mounts).
    #[error("config file {path} not found")]
    NotFound {
        /// The path that was read.
        path: PathBuf,
    },
    /// The file exists but reading it failed.
    #[error("reading config file {path}")]
    Read {
        /// The path that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not UTF-8 (binary ConfigMap data belongs in `binaryData`; read it with `std::fs::read`).
    #[error("config file {path} is not valid UTF-8")]
    NotUtf8 {
        /// The path that was read.
        path: PathBuf,
    },
}

/// The environment variable `name`, or `None` when it is unset or not valid UTF-8.
///
/// The environment is read once per instance and kept: a guest's environment is fixed when the pod starts,
/// and a `&'static str` lets callers write `get("X").unwrap_or("default")` without allocating.
pub fn get(name: &str) -> Option<&'static str> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| snapshot(std::env::vars_os())).get(name).map(String::as_str)
}

/// The contents of the file at `path`, e.g. one key of a ConfigMap mounted with `volumeMounts`, returned
/// exactly as stored (no trailing newline is removed).
pub fn file(path: impl AsRef<Path>) -> Result<String, ConfigError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound { path: path.to_owned() },
        _ => ConfigError::Read { path: path.to_owned(), source },
    })?;
    String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 { path: path.to_owned() })
}

/// Keeps the variables whose name and value are UTF-8; Kubernetes only produces those, so anything else came
/// from elsewhere and is better invisible than mangled.
fn snapshot(vars: impl Iterator<Item = (OsString, OsString)>) -> HashMap<String, String> {
    vars.filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_the_process_environment() {
        // cargo sets this for every test process it runs.
        assert_eq!(get("CARGO_PKG_NAME"), Some("skiff-sdk"));
        assert_eq!(get("SKIFF_SDK_SURELY_UNSET_VARIABLE"), None);
    }

    #[cfg(unix)]
    #[test]
    fn snapshot_drops_non_utf8_names_and_values() {
        use std::os::unix::ffi::OsStringExt;
        let vars = vec![
            (OsString::from("GOOD"), OsString::from("yes")),
            (OsString::from("BAD_VALUE"), OsString::from_vec(vec![0xff])),
            (OsString::from_vec(vec![0xfe]), OsString::from("x")),
            (OsString::from("EMPTY"), OsString::new()),
        ];
        let env = snapshot(vars.into_iter());
        assert_eq!(env.len(), 2);
        assert_eq!(env.get("GOOD").map(String::as_str), Some("yes"));
        assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
    }

    #[test]
    fn file_returns_contents_verbatim() {
        let dir = crate::secrets::tests::TempDir::new("config-file");
        let path = dir.path().join("settings");
        std::fs::write(&path, "a = 1\nb = 2\n").expect("write");
        assert_eq!(file(&path).expect("read"), "a = 1\nb = 2\n");
    }

    #[test]
    fn file_errors_say_which_path() {
        let dir = crate::secrets::tests::TempDir::new("config-errors");
        let missing = dir.path().join("missing");
        let err = file(&missing).expect_err("missing file");
        assert!(matches!(err, ConfigError::NotFound { .. }));
        assert_eq!(err.to_string(), format!("config file {} not found", missing.display()));

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0x00]).expect("write");
        assert!(matches!(file(&binary), Err(ConfigError::NotUtf8 { .. })));

        // A directory exists but cannot be read as a file.
        assert!(matches!(file(dir.path()), Err(ConfigError::Read { .. })));
    }
}
