//! OpenAPI v3 documents, one per group-version, as kube-apiserver serves them under `/openapi/v3`.
//!
//! kubectl needs them before it applies anything: it looks for the PATCH operation of the object's
//! group-version-kind with a `fieldValidation` query parameter, and only then sends `fieldValidation=Strict`
//! (without a document it refuses to apply). `kubectl explain` finds a kind's schema by the
//! `x-kubernetes-group-version-kind` extension on `components.schemas`. The schemas come from k8s-openapi's
//! schemars impls, so their keys are kube-apiserver's (`io.k8s.api.core.v1.Pod`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::{autoscaling, core};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Patch, Status};
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::discovery::{self, Subresource};
use crate::patch::{self, ListKind};
use crate::resources::{self, ResourceDef};

/// Where schemars puts definitions with OpenAPI 3 settings; every `$ref` starts with it.
const SCHEMAS_REF: &str = "#/components/schemas/";

struct Document {
    value: Value,
    /// Changes whenever the document does, so clients caching by URL fetch the new one.
    hash: String,
}

/// Built once: the documents only depend on the compiled-in registry.
static DOCUMENTS: LazyLock<BTreeMap<String, Document>> = LazyLock::new(|| {
    resources::group_versions()
        .into_iter()
        .map(|(group, version)| {
            let value = document(group, version);
            // Serializing a Value cannot fail: its map keys are strings.
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            (api_path(group, version), Document { value, hash: fnv1a_hex(&bytes) })
        })
        .collect()
});

/// `/openapi/v3`: where each group-version's document is, with a hash of its content in the URL.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(path, doc)| {
            (path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/{path}` for `path` `api/v1` or `apis/{group}/{version}`; `None` for a group-version Skiff
/// does not serve.
pub fn v3_document(path: &str) -> Option<&'static Value> {
    DOCUMENTS.get(path.trim_matches('/')).map(|doc| &doc.value)
}

/// `/openapi/v2` as kubectl reads it, protobuf (gnostic's `openapi_v2.Document`): a document that defines
/// no kinds, since Skiff publishes its schemas in v3 only. kubectl still fetches it to validate a `List`
/// (`kubectl get secrets -A -o json | kubectl replace -f -`, the rewrite after an encryption key rotation)
/// item by item, and lets through the kinds a document does not define; the server then checks each item
/// strictly, as the v3 documents tell kubectl to ask it. `version` is the server's `gitVersion`.
pub fn v2_document_protobuf(version: &str) -> Vec<u8> {
    // Protobuf's length-delimited field: the key (number, wire type 2), the length, the bytes.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let length = u8::try_from(bytes.len()).expect("short fields only");
        [&[number << 3 | 2, length][..], bytes].concat()
    }
    // Info: title = 1, version = 2. Document: swagger = 1, info = 2.
    let info = [field(1, b"Kubernetes"), field(2, version.as_bytes())].concat();
    [field(1, b"2.0"), field(2, &info)].concat()
}

fn api_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// FNV-1a, 64 bits, as hex: a content fingerprint for cache busting, not a security boundary.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let hash = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016X}")
}

/// The definition name a `$ref` schema points at.
fn ref_name(schema: &Value) -> Option<String> {
    schema.get("$ref")?.as_str()?.strip_prefix(SCHEMAS_REF).map(str::to_string)
}

/// The definition a property refers to, directly or through the `allOf: [{$ref}]` wrapper schemars uses
/// to attach a description to a reference.
fn property_ref(property: &Value) -> Option<String> {
    ref_name(property).or_else(|| property.get("allOf")?.as_array()?.iter().find_map(ref_name))
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
        ),
        query(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    vec![
        query("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        query("continue", "string", "The continue option should be set when retrieving more results from the server."),
        query(
            "fieldSelector",
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        query(
            "labelSelector",
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        query("limit", "integer", "limit is a maximum number of responses to return for a list call."),
        query(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
        query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        query(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        query("dryRun", "string", "When present, indicates that modifications should not be persisted."),
        query("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
        query("orphanDependents", "boolean", "Deprecated: please use the PropagationPolicy."),
        query(
            "propagationPolicy",
            "string",
            "Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'.",
        ),
    ]
}

fn content(schema: &Value, media_types: &[&str]) -> Value {
    let content: Map<String, Value> = media_types.iter().map(|m| (m.to_string(), json!({"schema": schema}))).collect();
    Value::Object(content)
}

const RESPONSE_TYPES: &[&str] = &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"];
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn responses(codes: &[(&str, &str)], schema: &Value) -> Value {
    let mut responses: Map<String, Value> = codes
        .iter()
        .map(|(code, text)| {
            (code.to_string(), json!({"description": text, "content": content(schema, RESPONSE_TYPES)}))
        })
        .collect();
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(responses)
}

/// Everything an operation needs besides its place in the document.
struct Operation<'a> {
    id: String,
    action: &'a str,
    gvk: &'a Value,
    tag: &'a str,
    description: String,
    parameters: Vec<Value>,
    body: Option<Value>,
    responses: Value,
}

impl Operation<'_> {
    fn into_value(self) -> Value {
        let mut op = Map::new();
        op.insert("tags".into(), json!([self.tag]));
        op.insert("description".into(), self.description.into());
        op.insert("operationId".into(), self.id.into());
        if !self.parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(self.parameters));
        }
        if let Some(body) = self.body {
            op.insert("requestBody".into(), body);
        }
        op.insert("responses".into(), self.responses);
        op.insert("x-kubernetes-action".into(), self.action.into());
        op.insert("x-kubernetes-group-version-kind".into(), self.gvk.clone());
        Value::Object(op)
    }
}

fn body(schema: &Value, media_types: &[&str]) -> Value {
    json!({"content": content(schema, media_types), "required": true})
}

/// `apps` → `Apps`, `coordination.k8s.io` → `Coordination`, core → `Core`, as in kube's operation ids.
fn pascal(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// The schemas one group-version's paths reference, shared by its resources.
struct Shared {
    status: Value,
    delete_options: Value,
    patch: Value,
}

/// Builds the paths of one resource into `paths`; records kinds whose schemas need a GVK extension.
struct Builder<'a> {
    generator: &'a mut SchemaGenerator,
    shared: &'a Shared,
    paths: Map<String, Value>,
    /// (schema name, group, version, kind)
    kinds: Vec<(String, String, String, String)>,
    /// List schemas built by hand: k8s-openapi's list type is generic and has no JsonSchema impl.
    lists: Map<String, Value>,
}

impl Builder<'_> {
    fn resource(&mut self, def: &ResourceDef) {
        let kind_ref = def.schema(self.generator).to_value();
        let Some(kind_name) = ref_name(&kind_ref) else {
            return;
        };
        let list_name = match kind_name.strip_suffix(def.kind) {
            Some(prefix) => format!("{prefix}{}", def.list_kind),
            None => format!("{kind_name}List"),
        };
        let list_meta = self.generator.subschema_for::<ListMeta>().to_value();
        self.lists.insert(
            list_name.clone(),
            json!({
                "description": format!("{} is a list of {}.", def.list_kind, def.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                    "items": {"type": "array", "items": kind_ref.clone()},
                    "metadata": {"allOf": [list_meta], "description": "Standard list metadata.", "default": {}},
                },
            }),
        );
        self.kinds.push((kind_name.clone(), def.group.into(), def.version.into(), def.kind.into()));
        self.kinds.push((list_name.clone(), def.group.into(), def.version.into(), def.list_kind.into()));
        let list_ref = json!({"$ref": format!("{SCHEMAS_REF}{list_name}")});

        let prefix = format!("/{}", api_path(def.group, def.version));
        let tag = format!(
            "{}_{}",
            if def.group.is_empty() { "core" } else { def.group.split('.').next().unwrap_or(def.group) },
            def.version
        );
        let id_group =
            pascal(if def.group.is_empty() { "core" } else { def.group.split('.').next().unwrap_or(def.group) });
        let id_base =
            format!("{id_group}{}{}{}", pascal(def.version), if def.namespaced { "Namespaced" } else { "" }, def.kind);
        let gvk = gvk(def.group, def.version, def.kind);
        let ns = path_param("namespace", "object name and auth scope, such as for teams and projects");
        let pretty = query("pretty", "string", "If 'true', then the output is pretty printed.");
        let name = path_param("name", &format!("name of the {}", def.kind));
        let (collection, item) = if def.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", def.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", def.plural),
            )
        } else {
            (format!("{prefix}/{}", def.plural), format!("{prefix}/{}/{{name}}", def.plural))
        };
        let scope_params = |with_name: bool| {
            let mut params = Vec::new();
            if with_name {
                params.push(name.clone());
            }
            if def.namespaced {
                params.push(ns.clone());
            }
            params.push(pretty.clone());
            Value::Array(params)
        };
        let shared = self.shared;
        let op = |id: String, action, description: String, parameters, body, responses| {
            Operation { id, action, gvk: &gvk, tag: &tag, description, parameters, body, responses }.into_value()
        };

        let mut collection_ops = Map::new();
        collection_ops.insert(
            "get".into(),
            op(
                format!("list{id_base}"),
                "list",
                format!("list or watch objects of kind {}", def.kind),
                list_params(),
                None,
                responses(&[("200", "OK")], &list_ref),
            ),
        );
        collection_ops.insert(
            "post".into(),
            op(
                format!("create{id_base}"),
                "post",
                format!("create a {}", def.kind),
                write_params(),
                Some(body(&kind_ref, &["*/*"])),
                responses(&[("200", "OK"), ("201", "Created"), ("202", "Accepted")], &kind_ref),
            ),
        );
        let mut deletecollection_params = delete_params();
        deletecollection_params.extend(list_params());
        collection_ops.insert(
            "delete".into(),
            op(
                format!("deletecollection{id_base}"),
                "deletecollection",
                format!("delete collection of {}", def.kind),
                deletecollection_params,
                Some(body(&shared.delete_options, &["*/*"])),
                responses(&[("200", "OK")], &shared.status),
            ),
        );
        collection_ops.insert("parameters".into(), scope_params(false));
        self.paths.insert(collection, Value::Object(collection_ops));

        let mut patch_params = write_params();
        patch_params.push(query("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests."));
        let mut item_ops = Map::new();
        item_ops.insert(
            "get".into(),
            op(
                format!("read{id_base}"),
                "get",
                format!("read the specified {}", def.kind),
                Vec::new(),
                None,
                responses(&[("200", "OK")], &kind_ref),
            ),
        );
        item_ops.insert(
            "put".into(),
            op(
                format!("replace{id_base}"),
                "put",
                format!("replace the specified {}", def.kind),
                write_params(),
                Some(body(&kind_ref, &["*/*"])),
                responses(&[("200", "OK"), ("201", "Created")], &kind_ref),
            ),
        );
        item_ops.insert(
            "patch".into(),
            op(
                format!("patch{id_base}"),
                "patch",
                format!("partially update the specified {}", def.kind),
                patch_params.clone(),
                Some(body(&shared.patch, PATCH_TYPES)),
                responses(&[("200", "OK"), ("201", "Created")], &kind_ref),
            ),
        );
        item_ops.insert(
            "delete".into(),
            op(
                format!("delete{id_base}"),
                "delete",
                format!("delete a {}", def.kind),
                delete_params(),
                Some(body(&shared.delete_options, &["*/*"])),
                responses(&[("200", "OK"), ("202", "Accepted")], &kind_ref),
            ),
        );
        item_ops.insert("parameters".into(), scope_params(true));
        self.paths.insert(item.clone(), Value::Object(item_ops));

        if def.namespaced {
            let all_namespaces = format!("{prefix}/{}", def.plural);
            let list = op(
                format!("list{}{}{}ForAllNamespaces", id_group, pascal(def.version), def.kind),
                "list",
                format!("list or watch objects of kind {}", def.kind),
                list_params(),
                None,
                responses(&[("200", "OK")], &list_ref),
            );
            self.paths.insert(all_namespaces, json!({"get": list, "parameters": [pretty.clone()]}));
        }

        for sub in discovery::subresources(def) {
            let Some(sub_ref) = self.subresource_schema(def, &sub, &kind_ref) else {
                continue;
            };
            let (group, version, kind) = sub.group_version_kind(def);
            if kind != def.kind
                && let Some(name) = ref_name(&sub_ref)
            {
                self.kinds.push((name, group.into(), version.into(), kind.into()));
            }
            let sub_gvk = self::gvk(group, version, kind);
            let sub_id = format!("{id_base}{}", pascal(sub.name));
            let sub_op = |id: String, action, description: String, parameters, body, responses| {
                Operation { id, action, gvk: &sub_gvk, tag: &tag, description, parameters, body, responses }
                    .into_value()
            };
            let mut ops = Map::new();
            for verb in sub.verbs {
                let (method, value) = match *verb {
                    "get" => (
                        "get",
                        sub_op(
                            format!("read{sub_id}"),
                            "get",
                            format!("read {} of the specified {}", sub.name, def.kind),
                            Vec::new(),
                            None,
                            responses(&[("200", "OK")], &sub_ref),
                        ),
                    ),
                    "update" => (
                        "put",
                        sub_op(
                            format!("replace{sub_id}"),
                            "put",
                            format!("replace {} of the specified {}", sub.name, def.kind),
                            write_params(),
                            Some(body(&sub_ref, &["*/*"])),
                            responses(&[("200", "OK"), ("201", "Created")], &sub_ref),
                        ),
                    ),
                    "patch" => (
                        "patch",
                        sub_op(
                            format!("patch{sub_id}"),
                            "patch",
                            format!("partially update {} of the specified {}", sub.name, def.kind),
                            patch_params.clone(),
                            Some(body(&shared.patch, PATCH_TYPES)),
                            responses(&[("200", "OK"), ("201", "Created")], &sub_ref),
                        ),
                    ),
                    "create" => (
                        "post",
                        sub_op(
                            format!("create{sub_id}"),
                            "post",
                            format!("create {} of a {}", sub.name, def.kind),
                            write_params(),
                            Some(body(&sub_ref, &["*/*"])),
                            responses(&[("200", "OK"), ("201", "Created"), ("202", "Accepted")], &sub_ref),
                        ),
                    ),
                    _ => continue,
                };
                ops.insert(method.into(), value);
            }
            ops.insert("parameters".into(), scope_params(true));
            self.paths.insert(format!("{item}/{}", sub.name), Value::Object(ops));
        }
    }

    /// The schema a subresource reads and writes; `None` for one without a known type (left undocumented).
    fn subresource_schema(&mut self, def: &ResourceDef, sub: &Subresource, kind_ref: &Value) -> Option<Value> {
        match sub.group_version_kind(def) {
            ("autoscaling", "v1", "Scale") => Some(self.generator.subschema_for::<autoscaling::v1::Scale>().to_value()),
            ("", "v1", "Binding") => Some(self.generator.subschema_for::<core::v1::Binding>().to_value()),
            (group, version, kind) if (group, version, kind) == (def.group, def.version, def.kind) => {
                Some(kind_ref.clone())
            }
            _ => None,
        }
    }
}

/// The OpenAPI 3.0 document of one group-version.
/// Deepest schema nesting followed when annotating lists; Kubernetes kinds nest about ten levels, and the
/// bound keeps a recursive schema from looping.
const MAX_DEPTH: usize = 16;

/// Marks the list properties reachable from kind `kind`'s schema with the patch strategy the strategic merge
/// patch uses for them (`x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`, list type and map
/// keys). kubectl's client-side apply reads these to diff lists item by item; without them it replaces
/// whole lists and reports every re-apply as "configured". The decisions come from [`patch::list_kind`], so
/// the document and the server's own patching cannot disagree.
fn annotate_list_strategies(schemas: &mut Map<String, Value>, root: &str, kind: &str) {
    let mut marks = Vec::new();
    collect_list_marks(schemas, root, kind, &mut Vec::new(), &mut marks);
    for (schema, property, list) in marks {
        let Some(Value::Object(property)) =
            schemas.get_mut(&schema).and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
        else {
            continue;
        };
        let extensions = match list {
            ListKind::Keyed(key) => json!({
                "x-kubernetes-patch-strategy": "merge",
                "x-kubernetes-patch-merge-key": key,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": [key],
            }),
            ListKind::Set => json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"}),
            // Replacing the whole list is what clients do without an annotation.
            ListKind::Atomic => continue,
        };
        if let Value::Object(extensions) = extensions {
            for (name, value) in extensions {
                property.entry(name).or_insert(value);
            }
        }
    }
}

fn collect_list_marks(
    schemas: &Map<String, Value>,
    schema: &str,
    kind: &str,
    path: &mut Vec<String>,
    marks: &mut Vec<(String, String, ListKind)>,
) {
    if path.len() > MAX_DEPTH {
        return;
    }
    let Some(properties) = schemas.get(schema).and_then(|s| s.get("properties")).and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        path.push(name.clone());
        let target = if property.get("type").and_then(Value::as_str) == Some("array") {
            marks.push((schema.to_string(), name.clone(), patch::list_kind(kind, path)));
            property.get("items").and_then(property_ref)
        } else {
            property_ref(property)
        };
        if let Some(target) = target {
            collect_list_marks(schemas, &target, kind, path, marks);
        }
        path.pop();
    }
}

fn document(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let shared = Shared {
        status: generator.subschema_for::<Status>().to_value(),
        delete_options: generator.subschema_for::<DeleteOptions>().to_value(),
        patch: generator.subschema_for::<Patch>().to_value(),
    };
    let mut builder =
        Builder { generator: &mut generator, shared: &shared, paths: Map::new(), kinds: Vec::new(), lists: Map::new() };
    for def in resources::all().iter().filter(|r| r.group == group && r.version == version) {
        builder.resource(def);
    }
    let Builder { paths, mut kinds, lists, .. } = builder;
    if let Some(status) = ref_name(&shared.status) {
        kinds.push((status, String::new(), "v1".into(), "Status".into()));
    }

    let mut schemas = generator.take_definitions(true);
    schemas.extend(lists);
    for (name, _, _, kind) in kinds.iter().filter(|(_, _, _, kind)| resources::all().iter().any(|r| r.kind == kind)) {
        annotate_list_strategies(&mut schemas, name, kind);
    }
    for (name, group, version, kind) in kinds {
        let Some(Value::Object(schema)) = schemas.get_mut(&name) else {
            continue;
        };
        let entry = json!({"group": group, "kind": kind, "version": version});
        match schema.get_mut("x-kubernetes-group-version-kind") {
            Some(Value::Array(list)) if !list.contains(&entry) => list.push(entry),
            Some(_) => {}
            None => {
                schema.insert("x-kubernetes-group-version-kind".into(), json!([entry]));
            }
        }
    }
    let schemas: BTreeMap<String, Value> = schemas.into_iter().collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target);
                }
                map.values().for_each(|v| walk_refs(v, out));
            }
            Value::Array(list) => list.iter().for_each(|v| walk_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves() {
        for (group, version) in resources::group_versions() {
            let doc = v3_document(&api_path(group, version)).unwrap();
            let mut refs = Vec::new();
            walk_refs(doc, &mut refs);
            assert!(!refs.is_empty());
            for target in refs {
                let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("external ref {target}"));
                assert!(doc.pointer(pointer).is_some(), "{target} does not resolve in {group}/{version}");
            }
        }
    }

    /// What kubectl's QueryParamVerifierV3 checks before sending fieldValidation=Strict.
    fn supports_field_validation(doc: &Value, group: &str, version: &str, kind: &str) -> bool {
        doc["paths"].as_object().unwrap().values().filter_map(|p| p.get("patch")).any(|op| {
            op["x-kubernetes-group-version-kind"] == gvk(group, version, kind)
                && op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        })
    }

    #[test]
    fn every_kind_can_be_patched_with_field_validation_and_explained() {
        for def in resources::all() {
            let doc = v3_document(&api_path(def.group, def.version)).unwrap();
            assert!(supports_field_validation(doc, def.group, def.version, def.kind), "{}", def.kind);
            let entry = json!({"group": def.group, "kind": def.kind, "version": def.version});
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let with_gvk: Vec<&String> = schemas
                .iter()
                .filter(|(_, s)| s["x-kubernetes-group-version-kind"].as_array().is_some_and(|l| l.contains(&entry)))
                .map(|(name, _)| name)
                .collect();
            assert_eq!(with_gvk.len(), 1, "{}", def.kind);
        }
        let core = v3_document("api/v1").unwrap();
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"].is_object());
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.PodList"]["properties"]["items"].is_object());
        assert!(core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"].is_object());
        assert!(core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"].is_object());
        assert!(core["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        assert!(core["paths"]["/api/v1/pods"]["get"].is_object());
        let apps = v3_document("/apis/apps/v1").unwrap();
        assert!(supports_field_validation(apps, "autoscaling", "v1", "Scale"));
        assert_eq!(
            apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"],
            json!([{"group": "autoscaling", "kind": "Scale", "version": "v1"}])
        );
        assert!(v3_document("apis/apps/v2").is_none());
    }

    #[test]
    fn lists_carry_the_merge_keys_strategic_merge_uses() {
        let core = v3_document("api/v1").unwrap();
        let schemas = &core["components"]["schemas"];
        let ports = &schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port", "{ports}");
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let container_ports = &schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(container_ports["x-kubernetes-patch-merge-key"], "containerPort");
        let finalizers = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"];
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        let apps = v3_document("apis/apps/v1").unwrap();
        let env = &apps["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["env"];
        assert_eq!(env["x-kubernetes-patch-merge-key"], "name");
    }

    #[test]
    fn operation_ids_are_unique() {
        for (group, version) in resources::group_versions() {
            let doc = v3_document(&api_path(group, version)).unwrap();
            let mut ids: Vec<&str> = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|p| p.as_object().unwrap().values())
                .filter_map(|op| op.get("operationId").and_then(Value::as_str))
                .collect();
            let count = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), count, "{group}/{version}");
        }
    }

    #[test]
    fn index_points_at_every_document_with_its_hash() {
        let index = v3_index();
        let paths = index["paths"].as_object().unwrap();
        assert_eq!(paths.len(), resources::group_versions().len());
        let url = paths["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        let bytes = serde_json::to_vec(v3_document("apis/apps/v1").unwrap()).unwrap();
        assert_eq!(url, format!("/openapi/v3/apis/apps/v1?hash={}", fnv1a_hex(&bytes)));
        assert!(paths.contains_key("api/v1"));
        assert_ne!(fnv1a_hex(b"a"), fnv1a_hex(b"b"));
        assert_eq!(fnv1a_hex(b""), "CBF29CE484222325");
    }

    #[test]
    fn the_v2_document_is_protobuf_defining_nothing() {
        let expected: &[u8] = b"\x0a\x032.0\x12\x15\x0a\x0aKubernetes\x12\x07v1.33.0";
        assert_eq!(v2_document_protobuf("v1.33.0"), expected);
    }
}
