//! Secrets the way Kubernetes delivers them: a Secret volume mounted as a directory with one file per key,
//! or a single key as an environment variable (`env` with `secretKeyRef`).
//!
//! Mount the Secret at [`DEFAULT_DIR`] (or anywhere, and point [`DIR_ENV`] at it):
//!
//! ```yaml
//! volumeMounts: [{name: creds, mountPath: /var/run/secrets/skiff, readOnly: true}]
//! volumes: [{name: creds, secret: {secretName: db-creds}}]
//! ```
//!
//! and read a key with `skiff_sdk::secrets::get("password")?`. Values are returned exactly as stored: a
//! Secret made with `kubectl create secret --from-file` keeps the file's trailing newline, so trim it when
//! the value is a token.

use std::path::{Path, PathBuf};

/// Where [`get`] looks for Secret keys unless [`DIR_ENV`] says otherwise. Under `/var/run/secrets`, like
/// Kubernetes' own service-account mount, so a pod spec that mounts secrets reads as usual.
pub const DEFAULT_DIR: &str = "/var/run/secrets/skiff";

/// The environment variable that overrides [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "SKIFF_SECRETS_DIR";

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The name cannot be a Secret key (Kubernetes allows `[-._a-zA-Z0-9]+`, not `.` or `..`); refusing it
    /// also keeps a name from reaching outside the secrets directory.
    #[error("invalid secret name {name:?}")]
    InvalidName {
        /// The name asked for.
        name: String,
    },
    /// Neither a file nor an environment variable holds the secret.
    #[error("secret {name} not found (no file {path}, no environment variable {name})")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The file that was looked for.
        path: PathBuf,
    },
    /// The file exists but reading it failed.
    #[error("reading secret file {path}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The secret is not UTF-8 (read binary secrets with `std::fs::read`).
    #[error("secret {name} is not valid UTF-8")]
    NotUtf8 {
        /// The name asked for.
        name: String,
    },
}

/// The secret `name`: the file `name` in the secrets directory ([`DIR_ENV`], default [`DEFAULT_DIR`]), or
/// else the environment variable `name`. The file wins because a mounted Secret is updated in place while
/// an environment variable is fixed at start.
pub fn get(name: &str) -> Result<String, SecretError> {
    let dir = crate::config::get(DIR_ENV).unwrap_or(DEFAULT_DIR);
    lookup(Path::new(dir), name, crate::config::get)
}

/// The secret `name` from the file `name` in `dir` only (no environment fallback).
pub fn get_in(dir: impl AsRef<Path>, name: &str) -> Result<String, SecretError> {
    lookup(dir.as_ref(), name, |_| None)
}

fn lookup<'a>(dir: &Path, name: &str, env: impl Fn(&str) -> Option<&'a str>) -> Result<String, SecretError> {
    if !is_valid_key(name) {
        return Err(SecretError::InvalidName { name: name.to_owned() });
    }
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 { name: name.to_owned() }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            env(name).map(str::to_owned).ok_or_else(|| SecretError::NotFound { name: name.to_owned(), path })
        }
        Err(source) => Err(SecretError::Read { path, source }),
    }
}

/// Kubernetes' rule for Secret and ConfigMap keys (`IsConfigMapKey`), without the 253-byte limit, which
/// protects etcd, not us.
fn is_valid_key(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory removed when dropped; unique per test so tests run in parallel.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("skiff-sdk-{label}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_the_key_file_verbatim() {
        let dir = TempDir::new("secret-file");
        std::fs::write(dir.path().join("db.password"), "hunter2\n").expect("write");
        assert_eq!(get_in(dir.path(), "db.password").expect("read"), "hunter2\n");
    }

    #[test]
    fn file_wins_over_the_environment() {
        let dir = TempDir::new("secret-precedence");
        std::fs::write(dir.path().join("token"), "from-file").expect("write");
        let got = lookup(dir.path(), "token", |_| Some("from-env")).expect("read");
        assert_eq!(got, "from-file");
    }

    #[test]
    fn falls_back_to_the_environment_variable_of_the_same_name() {
        let dir = TempDir::new("secret-env");
        let got = lookup(dir.path(), "API_KEY", |var| (var == "API_KEY").then_some("from-env")).expect("read");
        assert_eq!(got, "from-env");
    }

    #[test]
    fn missing_everywhere_names_the_file_it_looked_for() {
        let dir = TempDir::new("secret-missing");
        let err = lookup(dir.path(), "nope", |_| None).expect_err("missing");
        assert!(matches!(&err, SecretError::NotFound { path, .. } if *path == dir.path().join("nope")));
        assert!(err.to_string().starts_with("secret nope not found (no file "));
    }

    #[test]
    fn names_that_are_not_keys_are_refused_before_any_lookup() {
        let dir = TempDir::new("secret-names");
        for name in ["", ".", "..", "../etc/passwd", "a/b", "/abs", "sp ace", "é"] {
            let err = lookup(dir.path(), name, |_| Some("leak")).expect_err(name);
            assert!(matches!(err, SecretError::InvalidName { .. }), "{name:?}");
        }
        for name in ["a", "A-b_c.d", "..hidden", "tls.crt"] {
            assert!(is_valid_key(name), "{name:?}");
        }
    }

    #[test]
    fn non_utf8_and_unreadable_files_are_errors() {
        let dir = TempDir::new("secret-bad");
        std::fs::write(dir.path().join("bin"), [0xff]).expect("write");
        assert!(matches!(get_in(dir.path(), "bin"), Err(SecretError::NotUtf8 { .. })));
        std::fs::create_dir(dir.path().join("adir")).expect("mkdir");
        assert!(matches!(get_in(dir.path(), "adir"), Err(SecretError::Read { .. })));
    }

    #[test]
    fn get_uses_the_default_directory() {
        // Nothing is mounted there on a build machine; the error proves which path was tried.
        match get("skiff-sdk-test-key") {
            Err(SecretError::NotFound { path, .. }) => {
                assert_eq!(path, Path::new(DEFAULT_DIR).join("skiff-sdk-test-key"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
