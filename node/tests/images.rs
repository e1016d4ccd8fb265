//! The image store against a real registry (Debian's `docker-registry`, distribution 2.8), and real
//! images built offline with umoci and copied with skopeo.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_node::images::{ImageError, ImageStore, PullPolicy, RegistryAuth, WASM_CONFIG_V0, WASM_LAYER, push_wasm};

/// A core module (version 1) with a distinguishing custom section, so tests get distinct images.
fn module(tag: &str) -> Vec<u8> {
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    // Custom section 0: size, name length, name, no payload.
    wasm.push(0);
    wasm.push(1 + tag.len() as u8);
    wasm.push(tag.len() as u8);
    wasm.extend_from_slice(tag.as_bytes());
    wasm
}

/// A component preamble (version 0x0d, layer 1): enough for the layout to call it wasip2.
const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

/// A registry process on a free loopback port, with its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that wants basic credentials: `htpasswd` is one `user:bcrypt-hash` line.
    fn start_with(htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match htpasswd {
            Some(line) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{line}\n")).unwrap();
                format!("auth: {{htpasswd: {{realm: skiff, path: {}}}}}\n", path.display())
            }
            None => String::new(),
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: 127.0.0.1:{port}}}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        let registry = Registry { child, host: format!("127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _)) = registry.http("GET", "/v2/", "", b"") {
                assert_eq!(status, if htpasswd.is_some() { 401 } else { 200 });
                return registry;
            }
            assert!(Instant::now() < deadline, "registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// A bare HTTP/1.0 request, for what the store does not do itself (pushing an index).
    fn http(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.host)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // distribution 2.8 hides OCI manifests from clients that do not accept them.
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\nAccept: {}\r\n",
            self.host,
            body.len(),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        );
        if !content_type.is_empty() {
            request.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes())?;
        stream.write_all(body)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
        Ok((status, response))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    (dir, store)
}

fn anonymous() -> RegistryAuth {
    RegistryAuth::anonymous()
}

fn blob_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count()
}

#[tokio::test]
async fn push_wasm_then_pull_always_round_trips_the_bytes_and_media_types() {
    let registry = Registry::start();
    let (dir, store) = store();
    let reference = registry.image("samples/hello:latest");
    let wasm = module("hello");
    let digest = push_wasm(&wasm, &reference, &anonymous()).await.unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let image = store.ensure(&reference, PullPolicy::Always, &anonymous()).await.unwrap();
    assert_eq!(image.reference, reference);
    assert_eq!(image.config_media_type, WASM_CONFIG_V0);
    assert_eq!(image.architecture, "wasm");
    assert!(image.entrypoint.is_empty() && image.cmd.is_empty() && image.env.is_empty());
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0].media_type, WASM_LAYER);
    assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), wasm);
    assert!(image.layers[0].path.starts_with(dir.path().canonicalize().unwrap().join("blobs/sha256")));

    // The store recorded the very manifest the push published.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["references"][&reference], digest);
    // Pinning by digest reaches the same manifest.
    let by_digest = format!("{}@{digest}", registry.image("samples/hello"));
    let pinned = store.ensure(&by_digest, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    assert_eq!(pinned.layers[0].digest, image.layers[0].digest);
}

#[tokio::test]
async fn a_component_is_published_as_wasip2_with_a_component_section() {
    let registry = Registry::start();
    let (dir, store) = store();
    let reference = registry.image("samples/component:1.0");
    push_wasm(COMPONENT, &reference, &anonymous()).await.unwrap();
    let image = store.ensure(&reference, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), COMPONENT);
    // Find the config blob among the three stored ones.
    let configs: Vec<serde_json::Value> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap()).ok())
        .filter(|v| v.get("layerDigests").is_some())
        .collect();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0]["os"], "wasip2");
    assert_eq!(configs[0]["architecture"], "wasm");
    assert_eq!(configs[0]["component"], serde_json::json!({"exports": [], "imports": []}));
    assert_eq!(configs[0]["layerDigests"][0], image.layers[0].digest);
}

#[tokio::test]
async fn if_not_present_uses_the_local_copy_when_the_registry_is_gone() {
    let registry = Registry::start();
    let (_dir, store) = store();
    let reference = registry.image("samples/offline:1.0");
    let wasm = module("offline");
    push_wasm(&wasm, &reference, &anonymous()).await.unwrap();
    store.ensure(&reference, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    drop(registry);

    let image = store.ensure(&reference, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), wasm);
    let image = store.ensure(&reference, PullPolicy::Never, &anonymous()).await.unwrap();
    assert_eq!(image.layers[0].media_type, WASM_LAYER);
    // Always must ask the registry, which is gone.
    let err = store.ensure(&reference, PullPolicy::Always, &anonymous()).await.unwrap_err();
    let ImageError::Pull { message, .. } = &err else { panic!("expected Pull, got {err:?}") };
    assert!(message.to_lowercase().contains("connect"), "the cause is named: {message}");
    assert_eq!(err.waiting_reason(), "ErrImagePull");
}

#[tokio::test]
async fn never_with_an_absent_image_is_not_present() {
    let (_dir, store) = store();
    let err = store.ensure("127.0.0.1:1/absent:1.0", PullPolicy::Never, &anonymous()).await.unwrap_err();
    assert!(matches!(&err, ImageError::NotPresent(r) if r == "127.0.0.1:1/absent:1.0"), "{err:?}");
    assert_eq!(err.waiting_reason(), "ErrImageNeverPull");
}

#[tokio::test]
async fn a_missing_image_is_not_found_with_the_registry_message() {
    let registry = Registry::start();
    let (_dir, store) = store();
    push_wasm(&module("exists"), &registry.image("samples/exists:1.0"), &anonymous()).await.unwrap();

    // A known repository, an unknown tag.
    let err =
        store.ensure(&registry.image("samples/exists:nope"), PullPolicy::IfNotPresent, &anonymous()).await.unwrap_err();
    let ImageError::NotFound { message, .. } = &err else { panic!("expected NotFound, got {err:?}") };
    assert!(message.contains("MANIFEST_UNKNOWN") && message.contains("manifest unknown"), "{message}");
    assert_eq!(err.waiting_reason(), "ErrImagePull");

    // An unknown repository.
    let err = store.ensure(&registry.image("samples/nothing:1.0"), PullPolicy::Always, &anonymous()).await.unwrap_err();
    let ImageError::NotFound { message, .. } = &err else { panic!("expected NotFound, got {err:?}") };
    assert!(message.contains("NAME_UNKNOWN") || message.contains("MANIFEST_UNKNOWN"), "{message}");
}

#[tokio::test]
async fn an_invalid_reference_is_rejected_before_any_network() {
    let (_dir, store) = store();
    for bad in ["", "Upper:1", "UPPER/case:1/x", "a b", "registry.local/app@sha256:short", "app:bad tag"] {
        let err = store.ensure(bad, PullPolicy::Always, &anonymous()).await.unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference { .. }), "{bad:?}: {err:?}");
        assert_eq!(err.waiting_reason(), "InvalidImageName");
    }
    let err = push_wasm(&module("x"), "Bad/Ref", &anonymous()).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err:?}");
}

#[tokio::test]
async fn import_wasm_then_never_works_offline_and_matches_a_push() {
    let (_dir, store) = store();
    let wasm = module("edge");
    let imported = store.import_wasm(&wasm, "registry.local/edge/app:1.0").unwrap();
    assert_eq!(imported.config_media_type, WASM_CONFIG_V0);
    assert_eq!(imported.architecture, "wasm");
    let image = store.ensure("registry.local/edge/app:1.0", PullPolicy::Never, &anonymous()).await.unwrap();
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0].media_type, WASM_LAYER);
    assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), wasm);
    // IfNotPresent finds it too: registry.local does not exist, so a pull would fail.
    store.ensure("registry.local/edge/app:1.0", PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
}

#[tokio::test]
async fn garbage_collection_removes_unused_images_and_keeps_used_ones() {
    let registry = Registry::start();
    let (dir, store) = store();
    let used = registry.image("gc/used:1");
    let unused = registry.image("gc/unused:1");
    let (used_wasm, unused_wasm) = (module("used"), module("unused-and-longer"));
    push_wasm(&used_wasm, &used, &anonymous()).await.unwrap();
    push_wasm(&unused_wasm, &unused, &anonymous()).await.unwrap();
    let used_image = store.ensure(&used, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    let unused_image = store.ensure(&unused, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    // An imported image shares nothing with these, and is in use under another spelling.
    store.import_wasm(&module("imported"), "docker.io/library/imported:latest").unwrap();
    assert_eq!(blob_count(dir.path()), 9);

    let in_use: HashSet<String> = [used.clone(), "imported".to_owned(), "Not A Reference".to_owned()].into();
    let freed = store.garbage_collect(&in_use).unwrap();
    assert!(freed >= unused_wasm.len() as u64, "freed {freed}");
    assert_eq!(blob_count(dir.path()), 6);
    assert!(!unused_image.layers[0].path.exists());
    assert!(store.get(&unused).unwrap().is_none());
    assert_eq!(std::fs::read(&used_image.layers[0].path).unwrap(), used_wasm);
    assert!(store.get(&used).unwrap().is_some());
    assert!(store.get("imported").unwrap().is_some());

    // Nothing left to free; then everything goes.
    assert_eq!(store.garbage_collect(&in_use).unwrap(), 0);
    assert!(store.garbage_collect(&HashSet::new()).unwrap() > 0);
    assert_eq!(blob_count(dir.path()), 0);
    // A collected image comes back with a pull.
    store.ensure(&unused, PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_sees_the_images() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = registry.image("persist/app:2");
    push_wasm(&module("persist"), &reference, &anonymous()).await.unwrap();
    {
        let first = ImageStore::open(dir.path()).unwrap();
        first.ensure(&reference, PullPolicy::Always, &anonymous()).await.unwrap();
        first.import_wasm(&module("imported"), "edge/imported:1").unwrap();
    }
    drop(registry);
    let second = ImageStore::open(dir.path()).unwrap();
    assert!(second.get(&reference).unwrap().is_some());
    second.ensure(&reference, PullPolicy::Never, &anonymous()).await.unwrap();
    second.ensure("edge/imported:1", PullPolicy::Never, &anonymous()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_one_image_agree() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let reference = registry.image("race/app:1");
    let wasm = module("race");
    push_wasm(&wasm, &reference, &anonymous()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        // Half the pods go through a second store instance on the same directory.
        let store = ImageStore::open(dir.path()).unwrap();
        let reference = reference.clone();
        let policy = if i % 2 == 0 { PullPolicy::Always } else { PullPolicy::IfNotPresent };
        tasks.push(tokio::spawn(async move { store.ensure(&reference, policy, &RegistryAuth::anonymous()).await }));
    }
    for task in tasks {
        let image = task.await.unwrap().unwrap();
        assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), wasm);
    }
    assert_eq!(blob_count(dir.path()), 3);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp files left");
}

/// Builds a one-layer OCI image with umoci (entrypoint, cmd, env, workdir set) and copies it to the
/// registry with skopeo, in OCI or docker v2 format.
fn push_plain_image(registry: &Registry, name: &str, docker_format: bool) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let image = format!("{}:latest", layout.display());
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["umoci", "init", "--layout", layout.to_str().unwrap()]);
    run(&["umoci", "new", "--image", &image]);
    run(&["umoci", "unpack", "--rootless", "--image", &image, bundle.to_str().unwrap()]);
    std::fs::write(bundle.join("rootfs/hello"), b"hi\n").unwrap();
    run(&["umoci", "repack", "--image", &image, bundle.to_str().unwrap()]);
    run(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
        "--config.env",
        "GREETING=hello",
        "--config.workingdir",
        "/srv",
    ]);
    let mut copy = vec!["skopeo", "copy", "--dest-tls-verify=false"];
    if docker_format {
        copy.extend(["--format", "v2s2"]);
    }
    let source = format!("oci:{image}");
    let dest = format!("docker://{}", registry.image(name));
    copy.extend([source.as_str(), dest.as_str()]);
    run(&copy);
}

fn assert_plain_image(image: &skiff_shim::Image) {
    assert_eq!(image.architecture, "amd64");
    assert_eq!(image.entrypoint, ["/bin/sh"]);
    assert_eq!(image.cmd, ["-c", "echo hi"]);
    assert!(image.env.contains(&"GREETING=hello".to_owned()), "{:?}", image.env);
    assert_eq!(image.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.layers.len(), 1);
    assert!(image.layers[0].media_type.contains("tar"), "{}", image.layers[0].media_type);
    assert!(image.layers[0].path.exists());
}

#[tokio::test]
async fn plain_oci_and_docker_images_map_their_config() {
    let registry = Registry::start();
    let (_dir, store) = store();
    push_plain_image(&registry, "plain/oci:1", false);
    push_plain_image(&registry, "plain/docker:1", true);

    let oci = store.ensure(&registry.image("plain/oci:1"), PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    assert_eq!(oci.config_media_type, "application/vnd.oci.image.config.v1+json");
    assert_plain_image(&oci);
    let docker = store.ensure(&registry.image("plain/docker:1"), PullPolicy::IfNotPresent, &anonymous()).await.unwrap();
    assert_eq!(docker.config_media_type, "application/vnd.docker.container.image.v1+json");
    assert_eq!(docker.layers[0].media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_plain_image(&docker);
}

/// Puts an OCI index under `tag` in `repo`, listing existing manifests with the given platforms.
fn put_index(registry: &Registry, repo: &str, tag: &str, entries: &[(&str, &str, &str)]) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(source_tag, os, arch)| {
            let (status, response) =
                registry.http("HEAD", &format!("/v2/{repo}/manifests/{source_tag}"), "", b"").unwrap();
            assert_eq!(status, 200, "{response}");
            let header = |name: &str| {
                response
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap()
            };
            serde_json::json!({
                "mediaType": header("Content-Type"),
                "digest": header("Docker-Content-Digest"),
                "size": header("Content-Length").parse::<u64>().unwrap(),
                "platform": {"os": os, "architecture": arch},
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let (status, response) = registry
        .http(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    assert_eq!(status, 201, "{response}");
}

#[tokio::test]
async fn an_index_resolves_to_the_wasm_platform_else_the_host_linux_one() {
    let registry = Registry::start();
    let (_dir, store) = store();
    let wasm = module("multi");
    push_wasm(&wasm, &registry.image("multi/app:wasm"), &anonymous()).await.unwrap();
    push_plain_image(&registry, "multi/app:linux", false);
    put_index(&registry, "multi/app", "both", &[("linux", "linux", "amd64"), ("wasm", "wasip1", "wasm")]);
    put_index(&registry, "multi/app", "linux-only", &[("linux", "linux", "amd64")]);
    put_index(&registry, "multi/app", "foreign", &[("linux", "linux", "s390x")]);

    let both = store.ensure(&registry.image("multi/app:both"), PullPolicy::Always, &anonymous()).await.unwrap();
    assert_eq!(both.layers[0].media_type, WASM_LAYER);
    assert_eq!(std::fs::read(&both.layers[0].path).unwrap(), wasm);
    if std::env::consts::ARCH == "x86_64" {
        let linux =
            store.ensure(&registry.image("multi/app:linux-only"), PullPolicy::Always, &anonymous()).await.unwrap();
        assert_plain_image(&linux);
    }
    let err = store.ensure(&registry.image("multi/app:foreign"), PullPolicy::Always, &anonymous()).await.unwrap_err();
    let ImageError::NotFound { message, .. } = &err else { panic!("expected NotFound, got {err:?}") };
    assert!(message.contains("no manifest for wasm"), "{message}");
}

#[tokio::test]
async fn pull_secrets_authenticate_against_an_htpasswd_registry() {
    // bcrypt (cost 4) of "s3cret", so the test needs no htpasswd tool.
    let registry = Registry::start_with(Some("skiff:$2b$04$R/YqYq0JOyxduM3kUxir7.yXJP9Suc11n4F2X2A1.3w/ltaAesF2G"));
    let (_dir, store) = store();
    let reference = registry.image("private/app:1");
    let wasm = module("private");

    let err = push_wasm(&wasm, &reference, &anonymous()).await.unwrap_err();
    assert!(matches!(err, ImageError::Push { .. }), "{err:?}");
    let wrong = RegistryAuth::basic(&registry.host, "skiff", "wrong");
    assert!(push_wasm(&wasm, &reference, &wrong).await.is_err());

    let secret =
        format!(r#"{{"auths": {{"http://{}": {{"username": "skiff", "password": "s3cret"}}}}}}"#, registry.host);
    let mut auth = RegistryAuth::basic("other.example", "x", "y");
    auth.merge(RegistryAuth::from_docker_config_json(secret.as_bytes()).unwrap());
    push_wasm(&wasm, &reference, &auth).await.unwrap();

    let err = store.ensure(&reference, PullPolicy::Always, &anonymous()).await.unwrap_err();
    let ImageError::Pull { message, .. } = &err else { panic!("expected Pull, got {err:?}") };
    assert!(message.to_lowercase().contains("unauthorized"), "{message}");
    let image = store.ensure(&reference, PullPolicy::Always, &auth).await.unwrap();
    assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), wasm);
}
