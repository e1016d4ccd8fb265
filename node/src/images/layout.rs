//! The OCI documents the store reads and writes: manifests, indexes, image configs and the CNCF wasm
//! artifact layout. Pure data, no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What we send as `Accept` when pulling a manifest: both single-image formats and both list formats.
pub(crate) const ACCEPTED_MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// The CNCF TAG Runtime wasm artifact config and layer media types.
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";

/// A content descriptor (`mediaType`, `digest`, `size`), plus the platform when it sits in an index.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An OCI image manifest or a docker v2 manifest (the same shape).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI image index or a docker manifest list.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// What a manifest response turned out to be.
pub(crate) enum ManifestKind {
    Image(Manifest),
    Index(Index),
}

/// Parses a manifest body, telling an image manifest from an index by its `mediaType` (or, when a
/// registry serves one without it, by which list it carries).
pub(crate) fn parse_manifest(body: &[u8]) -> Result<ManifestKind, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| format!("invalid manifest: {e}"))?;
    if probe.schema_version != Some(2) {
        return Err(format!("unsupported manifest schema version {:?}", probe.schema_version));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("unsupported manifest media type {other}")),
        None => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(body).map(ManifestKind::Index).map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_slice(body).map(ManifestKind::Image).map_err(|e| format!("invalid image manifest: {e}"))
    }
}

/// Picks the entry of an index this node runs: a wasm platform first (Skiff is wasm first, and a wasm
/// build runs anywhere), else linux on the host's architecture.
pub(crate) fn select_platform(index: &Index) -> Option<&Descriptor> {
    let is_wasm = |p: &Platform| p.architecture == "wasm" && matches!(p.os.as_str(), "wasip1" | "wasip2" | "wasi");
    let host_arch = oci_arch(std::env::consts::ARCH);
    let is_host = |p: &Platform| p.os == "linux" && p.architecture == host_arch;
    let entries = || index.manifests.iter().filter(|d| is_image_manifest(&d.media_type));
    entries()
        .find(|d| d.platform.as_ref().is_some_and(is_wasm))
        .or_else(|| entries().find(|d| d.platform.as_ref().is_some_and(is_host)))
}

fn is_image_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Go's GOARCH names, which OCI platforms use, for Rust's target architecture names.
fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The fields of an image config the shims use. Every field is optional: wasm configs have no
/// `config` section, and some artifact configs are `{}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigFields {
    pub architecture: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Reads the config fields leniently: a config that is not JSON, or has fields of unexpected types,
/// yields empty fields rather than an error, because only the shim can tell whether it needs them.
pub(crate) fn config_fields(config: &[u8]) -> ConfigFields {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Exec {
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    #[derive(Deserialize)]
    struct ImageConfig {
        architecture: Option<String>,
        config: Option<Exec>,
    }
    let Ok(parsed) = serde_json::from_slice::<ImageConfig>(config) else {
        // A section of unexpected shape fails the typed parse; still keep the architecture.
        let architecture = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("architecture")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        return ConfigFields { architecture, ..ConfigFields::default() };
    };
    let exec = parsed.config.unwrap_or_default();
    ConfigFields {
        architecture: parsed.architecture.unwrap_or_default(),
        entrypoint: exec.entrypoint.unwrap_or_default(),
        cmd: exec.cmd.unwrap_or_default(),
        env: exec.env.unwrap_or_default(),
        working_dir: exec.working_dir.filter(|d| !d.is_empty()),
        user: exec.user.filter(|u| !u.is_empty()),
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A wasm binary packed as a CNCF wasm artifact: the three blobs, ready to store or push.
pub(crate) struct WasmArtifact {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer_digest: String,
}

/// Builds the CNCF TAG Runtime layout for `wasm`: config `application/vnd.wasm.config.v0+json`, one
/// `application/wasm` layer. `os` is `wasip2` for a component (its version field, bytes 4..8, is not
/// the core module's `1 0 0 0`), else `wasip1`.
pub(crate) fn wasm_artifact(wasm: &[u8], created: &str) -> Result<WasmArtifact, String> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header)".to_owned());
    }
    let is_component = wasm[4..8] != [1, 0, 0, 0];
    let layer_digest = sha256_digest(wasm);

    let mut config = BTreeMap::new();
    config.insert("created", serde_json::json!(created));
    config.insert("architecture", serde_json::json!("wasm"));
    config.insert("os", serde_json::json!(if is_component { "wasip2" } else { "wasip1" }));
    config.insert("layerDigests", serde_json::json!([layer_digest]));
    if is_component {
        // The layout requires the section for components; listing the real imports and exports would
        // need a component parser, and no consumer we target depends on them.
        config.insert("component", serde_json::json!({"exports": [], "imports": []}));
    }
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;

    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config: Descriptor {
            media_type: WASM_CONFIG_V0.to_owned(),
            digest: sha256_digest(&config),
            size: config.len() as u64,
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: WASM_LAYER.to_owned(),
            digest: layer_digest.clone(),
            size: wasm.len() as u64,
            platform: None,
        }],
    };
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    Ok(WasmArtifact { manifest, config, layer_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn wasm_artifact_for_a_core_module_is_wasip1_without_component_section() {
        let a = wasm_artifact(MODULE, "2024-01-01T00:00:00Z").unwrap();
        let config: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["layerDigests"][0], sha256_digest(MODULE));
        assert!(config.get("component").is_none());
        let manifest: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_V0);
        assert_eq!(manifest["config"]["digest"], sha256_digest(&a.config));
        assert_eq!(manifest["config"]["size"], a.config.len());
        assert_eq!(manifest["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(manifest["layers"][0]["size"], MODULE.len());
        assert!(manifest["layers"][0].get("platform").is_none());
    }

    #[test]
    fn wasm_artifact_for_a_component_is_wasip2_with_component_section() {
        let a = wasm_artifact(COMPONENT, "2024-01-01T00:00:00Z").unwrap();
        let config: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["component"], serde_json::json!({"exports": [], "imports": []}));
    }

    #[test]
    fn wasm_artifact_rejects_non_wasm() {
        assert!(wasm_artifact(b"\x7fELF\x02\x01\x01\0", "t").is_err());
        assert!(wasm_artifact(b"\0asm", "t").is_err());
        assert!(wasm_artifact(b"", "t").is_err());
    }

    #[test]
    fn parse_manifest_tells_images_from_indexes() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":2},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:bb","size":3}]}"#;
        let ManifestKind::Image(m) = parse_manifest(image).unwrap() else { panic!("expected an image") };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].size, 3);

        // No mediaType: decided by the `manifests` list.
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_manifest(index).unwrap(), ManifestKind::Index(_)));
        let no_type_image = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:aa","size":2}}"#;
        assert!(matches!(parse_manifest(no_type_image).unwrap(), ManifestKind::Image(_)));
    }

    #[test]
    fn parse_manifest_rejects_schema1_unknown_types_and_garbage() {
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(parse_manifest(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#).is_err());
        assert!(parse_manifest(b"not json").is_err());
        assert!(
            parse_manifest(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#).is_err()
        );
    }

    fn entry(digest: &str, os: &str, arch: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: digest.to_owned(),
            size: 1,
            platform: Some(Platform { architecture: arch.to_owned(), os: os.to_owned() }),
        }
    }

    #[test]
    fn select_platform_prefers_wasm_then_host_linux() {
        let host = oci_arch(std::env::consts::ARCH);
        let index =
            Index { manifests: vec![entry("sha256:s390", "linux", "s390x"), entry("sha256:host", "linux", host)] };
        assert_eq!(select_platform(&index).unwrap().digest, "sha256:host");
        let mut with_wasm = index.clone();
        with_wasm.manifests.push(entry("sha256:wasm", "wasip2", "wasm"));
        assert_eq!(select_platform(&with_wasm).unwrap().digest, "sha256:wasm");
        let foreign = Index { manifests: vec![entry("sha256:w", "windows", host)] };
        assert!(select_platform(&foreign).is_none());
        // An attestation or nested index entry is never chosen, whatever its platform says.
        let mut nested = entry("sha256:n", "linux", host);
        nested.media_type = OCI_INDEX.to_owned();
        assert!(select_platform(&Index { manifests: vec![nested] }).is_none());
    }

    #[test]
    fn config_fields_reads_oci_and_wasm_configs() {
        let oci = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],
            "Env":["PATH=/bin"],"WorkingDir":"/srv","User":"nobody:nogroup"}}"#;
        assert_eq!(
            config_fields(oci),
            ConfigFields {
                architecture: "amd64".to_owned(),
                entrypoint: vec!["/bin/sh".to_owned()],
                cmd: vec!["-c".to_owned(), "echo hi".to_owned()],
                env: vec!["PATH=/bin".to_owned()],
                working_dir: Some("/srv".to_owned()),
                user: Some("nobody:nogroup".to_owned()),
            }
        );
        let wasm = br#"{"architecture":"wasm","os":"wasip2","layerDigests":["sha256:aa"]}"#;
        assert_eq!(config_fields(wasm).architecture, "wasm");
        assert!(config_fields(wasm).entrypoint.is_empty());
        // Docker writes null for absent lists and an empty WorkingDir.
        let nulls = br#"{"architecture":"arm64","config":{"Entrypoint":null,"Cmd":null,"WorkingDir":""}}"#;
        assert_eq!(config_fields(nulls), ConfigFields { architecture: "arm64".to_owned(), ..Default::default() });
        let null_section = br#"{"architecture":"wasm","config":{"Env":[1,2]}}"#;
        assert_eq!(config_fields(null_section).architecture, "wasm");
        assert_eq!(config_fields(b"{}"), ConfigFields::default());
        assert_eq!(config_fields(b"\xff\x00"), ConfigFields::default());
    }
}
