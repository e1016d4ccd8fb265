//! PATCH bodies (JSON patch, JSON merge patch, strategic merge patch) and server-side apply with field
//! ownership in `metadata.managedFields`.
//!
//! Kubernetes reads merge keys and list strategies from struct tags of its Go types. k8s-openapi does not
//! carry those tags, so [`list_kind`] is a small hand-written table keyed by the kind and the path of field
//! names from the root (list items are transparent: `spec.containers.ports`). A list not in the table is
//! atomic: a patch or an applied configuration replaces it whole.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::limits::{MAX_JSON_PATCH_COPY_BYTES, MAX_JSON_PATCH_OPERATIONS};
use crate::resources::ResourceDef;

/// The four PATCH content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902, `application/json-patch+json`.
    Json,
    /// RFC 7386, `application/merge-patch+json`.
    Merge,
    /// Kubernetes' strategic merge patch, `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// Server-side apply, `application/apply-patch+yaml`; handled by [`server_side_apply`].
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header; parameters after `;` are ignored.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Why a patch could not be applied. Kubernetes answers 422 for [`PatchError::TestFailed`],
/// [`PatchError::PathMissing`], [`PatchError::OperationFailed`], [`PatchError::CopyTooLarge`] and
/// [`PatchError::RetainKeysMismatch`], 413 for [`PatchError::TooManyOperations`], and 400 for the others
/// (the body itself is malformed).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body of a JSON patch is not a list of RFC 6902 operations.
    #[error("invalid json patch: {0}")]
    InvalidJsonPatch(#[source] serde_json::Error),
    /// A JSON patch has more than [`MAX_JSON_PATCH_OPERATIONS`] operations (kube-apiserver's wording).
    #[error("The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}")]
    TooManyOperations { count: usize },
    /// The `copy` operations of a JSON patch would add more than [`MAX_JSON_PATCH_COPY_BYTES`]
    /// (evanphx/json-patch's wording, which kube-apiserver applies patches with).
    #[error(
        "Unable to complete the copy, the accumulated size increase of copy is {accumulated}, exceeding the limit {limit}"
    )]
    CopyTooLarge { accumulated: usize, limit: usize },
    /// A JSON patch `test` operation found another value.
    #[error("json patch test operation failed at '{path}': value did not match")]
    TestFailed { path: String },
    /// A JSON patch operation names a path (or `from`) that does not exist.
    #[error("json patch operation {operation} failed: path '{path}' does not exist")]
    PathMissing { operation: usize, path: String },
    /// Any other JSON patch failure, such as moving a value inside itself.
    #[error("json patch operation failed")]
    OperationFailed(#[source] json_patch::PatchError),
    /// Merge and strategic merge patches must be JSON objects.
    #[error("patch document must be a json object")]
    NotAnObject,
    /// The patched document is no longer an object (a JSON patch replaced the root).
    #[error("the patched document is not a json object")]
    ResultNotAnObject,
    /// [`patch`] was called with [`PatchType::Apply`], which needs a field manager.
    #[error("apply patches must go through server-side apply")]
    ApplyNotSupported,
    /// A `$patch` directive other than `replace`, `delete` or `merge`.
    #[error("unknown patch directive {value} at {path}")]
    UnknownDirective { path: String, value: String },
    /// A directive whose value has the wrong shape (`$retainKeys` must be a list of strings...).
    #[error("invalid {directive} at {path}: {reason}")]
    InvalidDirective { path: String, directive: String, reason: &'static str },
    /// The patch sets a field that its `$retainKeys` list would remove.
    #[error("field {key} at {path} is not listed in $retainKeys")]
    RetainKeysMismatch { path: String, key: String },
    /// The patch list has items missing from its `$setElementOrder` list, or in another order.
    #[error("the order of the patch list at {path} does not match its $setElementOrder list")]
    SetElementOrderMismatch { path: String },
    /// An item of a list merged by key lacks the key.
    #[error("list item at {path} does not contain its merge key {key}")]
    MissingMergeKey { path: String, key: &'static str },
}

/// How a list merges, from Kubernetes' `patchStrategy`/`patchMergeKey` (and `listType` for apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// Replaced whole.
    Atomic,
    /// A set of scalars, merged by union.
    Set,
    /// A list of objects merged by the value of one field.
    Keyed(&'static str),
}

/// Kinds whose `spec.template` is a pod template (metadata plus a pod spec).
fn has_pod_template(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "StatefulSet" | "ReplicationController")
}

/// The hand-written merge-key table (see the module docs). `names` are field names from the root.
pub(crate) fn list_kind(kind: &str, names: &[String]) -> ListKind {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (in_pod, path) = match names.as_slice() {
        ["spec", "template", rest @ ..] if has_pod_template(kind) => (true, rest),
        rest => (kind == "Pod", rest),
    };
    match path {
        ["metadata", "finalizers"] => return ListKind::Set,
        ["metadata", "ownerReferences"] => return ListKind::Keyed("uid"),
        ["status", "conditions"] => return ListKind::Keyed("type"),
        _ => {}
    }
    if in_pod {
        let containers = ["containers", "initContainers", "ephemeralContainers"];
        return match path {
            ["spec", list] if containers.contains(list) => ListKind::Keyed("name"),
            ["spec", c, "env"] if containers.contains(c) => ListKind::Keyed("name"),
            ["spec", c, "ports"] if containers.contains(c) => ListKind::Keyed("containerPort"),
            ["spec", c, "volumeMounts"] if containers.contains(c) => ListKind::Keyed("mountPath"),
            ["spec", c, "volumeDevices"] if containers.contains(c) => ListKind::Keyed("devicePath"),
            ["spec", "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims"] => ListKind::Keyed("name"),
            ["spec", "hostAliases"] => ListKind::Keyed("ip"),
            ["spec", "topologySpreadConstraints"] => ListKind::Keyed("topologyKey"),
            ["status", "podIPs" | "hostIPs"] => ListKind::Keyed("ip"),
            _ => ListKind::Atomic,
        };
    }
    match (kind, path) {
        ("Service", ["spec", "ports"]) => ListKind::Keyed("port"),
        ("Node", ["status", "addresses"]) => ListKind::Keyed("type"),
        ("Node", ["spec", "podCIDRs"]) => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

/// `.spec.containers`, the form Kubernetes uses for field paths in messages.
fn dotted(names: &[String]) -> String {
    names.iter().map(|n| format!(".{n}")).collect()
}

/// JSON patch (RFC 6902), merge patch (RFC 7386) or strategic merge patch of `current`.
pub fn patch(def: &ResourceDef, patch_type: PatchType, current: &Value, patch: &Value) -> Result<Value, PatchError> {
    let patched = match patch_type {
        PatchType::Json => {
            let operations: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(PatchError::InvalidJsonPatch)?;
            let mut document = current.clone();
            // Working on a copy, so a failure halfway leaves nothing to undo.
            apply_json_patch(&mut document, &operations)?;
            document
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::NotAnObject);
            }
            let mut document = current.clone();
            json_patch::merge(&mut document, patch);
            document
        }
        PatchType::StrategicMerge => {
            let Value::Object(patch) = patch else {
                return Err(PatchError::NotAnObject);
            };
            let original = current.as_object().cloned().unwrap_or_default();
            let merger = Strategic { kind: def.kind };
            Value::Object(merger.merge_map(&mut Vec::new(), original, patch)?.unwrap_or_default())
        }
        PatchType::Apply => return Err(PatchError::ApplyNotSupported),
    };
    if !patched.is_object() {
        return Err(PatchError::ResultNotAnObject);
    }
    Ok(patched)
}

/// Applies RFC 6902 operations one at a time, as evanphx/json-patch does under kube-apiserver: at most
/// [`MAX_JSON_PATCH_OPERATIONS`] of them, and each `copy` charged the JSON length of what it copies before
/// it runs, so the copies together add at most [`MAX_JSON_PATCH_COPY_BYTES`]. The other operations cannot
/// grow the document by more than the values they carry, which the request body bounds.
fn apply_json_patch(document: &mut Value, operations: &[json_patch::PatchOperation]) -> Result<(), PatchError> {
    if operations.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations { count: operations.len() });
    }
    let mut copied = 0usize;
    for (index, operation) in operations.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = operation
            && let Some(source) = document.pointer(copy.from.as_str())
        {
            copied = copied.saturating_add(json_len(source));
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(PatchError::CopyTooLarge { accumulated: copied, limit: MAX_JSON_PATCH_COPY_BYTES });
            }
        }
        json_patch::patch_unsafe(document, std::slice::from_ref(operation)).map_err(|mut error| {
            error.operation = index;
            json_patch_error(error)
        })?;
    }
    Ok(())
}

/// The length of `value` as compact JSON, counted without building the text. The document it is part of
/// is bounded (the stored object, the patch's values and the copies so far), so counting is too.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail either.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn json_patch_error(error: json_patch::PatchError) -> PatchError {
    let path = error.path.as_str().to_string();
    match error.kind {
        json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed { path },
        json_patch::PatchErrorKind::InvalidPointer | json_patch::PatchErrorKind::InvalidFromPointer => {
            PatchError::PathMissing { operation: error.operation, path }
        }
        _ => PatchError::OperationFailed(error),
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Strategic merge patch, following Kubernetes' `strategicpatch.StrategicMergeMapPatch` with parallel
/// directive lists merged and unmatched nulls ignored, as the API server applies it.
struct Strategic<'a> {
    kind: &'a str,
}

impl Strategic<'_> {
    /// Merges `patch` into `original`. `None` means `$patch: delete`: the map goes away. (Kubernetes leaves
    /// an empty map there, which round-trips through the typed object to the same thing.)
    fn merge_map(
        &self,
        names: &mut Vec<String>,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        match patch.get(DIRECTIVE) {
            None => {}
            Some(Value::String(directive)) if directive == "merge" => {}
            Some(Value::String(directive)) if directive == "delete" => return Ok(None),
            Some(Value::String(directive)) if directive == "replace" => {
                let mut replacement = patch.clone();
                replacement.remove(DIRECTIVE);
                return self.merge_map(names, Map::new(), &replacement);
            }
            Some(other) => {
                return Err(PatchError::UnknownDirective { path: dotted(names), value: other.to_string() });
            }
        }

        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let invalid = |reason| PatchError::InvalidDirective {
                path: dotted(names),
                directive: RETAIN_KEYS.to_string(),
                reason,
            };
            let keys = retain.as_array().ok_or_else(|| invalid("must be a list"))?;
            let keys: BTreeSet<&str> =
                keys.iter().map(Value::as_str).collect::<Option<_>>().ok_or_else(|| invalid("must list strings"))?;
            for (key, value) in patch {
                if !value.is_null() && !key.starts_with('$') && !keys.contains(key.as_str()) {
                    return Err(PatchError::RetainKeysMismatch { path: dotted(names), key: key.clone() });
                }
            }
            original.retain(|key, _| keys.contains(key.as_str()));
        }

        // Lists to reorder keep their pre-merge order: it decides where server-only items go.
        let mut orders = Vec::new();
        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
                names.push(field.to_string());
                let order = self.directive_list(names, key, value)?;
                self.check_set_element_order(names, patch.get(field), order)?;
                names.pop();
                let before = original.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
                orders.push((field, order, before));
            }
        }

        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
                names.push(field.to_string());
                let doomed = self.directive_list(names, key, value)?;
                names.pop();
                if let Some(Value::Array(items)) = original.get_mut(field) {
                    items.retain(|item| !doomed.contains(item));
                }
            }
        }

        for (key, value) in patch {
            if key.starts_with('$') {
                continue;
            }
            if value.is_null() {
                original.remove(key);
                continue;
            }
            names.push(key.clone());
            let merged = self.merge_value(names, original.remove(key), value)?;
            names.pop();
            if let Some(merged) = merged {
                original.insert(key.clone(), merged);
            }
        }

        for (field, order, before) in orders {
            names.push(field.to_string());
            let kind = list_kind(self.kind, names);
            names.pop();
            if let Some(Value::Array(items)) = original.get_mut(field) {
                *items = order_items(std::mem::take(items), order, &before, kind);
            }
        }
        Ok(Some(original))
    }

    fn directive_list<'p>(&self, names: &[String], key: &str, value: &'p Value) -> Result<&'p [Value], PatchError> {
        value.as_array().map(Vec::as_slice).ok_or_else(|| PatchError::InvalidDirective {
            path: dotted(names),
            directive: key.to_string(),
            reason: "must be a list",
        })
    }

    /// Every item of the patch list must appear in `$setElementOrder`, in the same order (Kubernetes'
    /// `validatePatchWithSetOrderList`); directive items are exempt.
    fn check_set_element_order(
        &self,
        names: &[String],
        patch_list: Option<&Value>,
        order: &[Value],
    ) -> Result<(), PatchError> {
        let Some(Value::Array(patch_list)) = patch_list else {
            return Ok(());
        };
        let kind = list_kind(self.kind, names);
        let mut wanted = order.iter().map(|item| identity(kind, item));
        for item in patch_list.iter().filter(|item| item.get(DIRECTIVE).is_none()) {
            let id = identity(kind, item);
            if !wanted.any(|w| w.is_some() && w == id) {
                return Err(PatchError::SetElementOrderMismatch { path: dotted(names) });
            }
        }
        Ok(())
    }

    fn merge_value(
        &self,
        names: &mut Vec<String>,
        current: Option<Value>,
        patch: &Value,
    ) -> Result<Option<Value>, PatchError> {
        Ok(match patch {
            Value::Object(patch) => {
                let base = match current {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                self.merge_map(names, base, patch)?.map(Value::Object)
            }
            Value::Array(patch) => {
                let base = match current {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                Some(Value::Array(self.merge_list(names, base, patch)?))
            }
            scalar => Some(scalar.clone()),
        })
    }

    fn merge_list(
        &self,
        names: &mut Vec<String>,
        mut original: Vec<Value>,
        patch: &[Value],
    ) -> Result<Vec<Value>, PatchError> {
        let kind = list_kind(self.kind, names);
        let mut replace = false;
        let mut items = Vec::new();
        for item in patch {
            let Some(directive) = item.get(DIRECTIVE) else {
                items.push(item);
                continue;
            };
            match (directive.as_str(), kind) {
                (Some("replace"), _) => replace = true,
                // `merge` is the default: an item carrying it is an ordinary item.
                (Some("merge"), _) => {
                    if item.as_object().is_some_and(|m| m.len() > 1) {
                        items.push(item);
                    }
                }
                (Some("delete"), ListKind::Keyed(key)) => {
                    let value =
                        item.get(key).ok_or_else(|| PatchError::MissingMergeKey { path: dotted(names), key })?;
                    original.retain(|existing| existing.get(key) != Some(value));
                }
                (Some("delete"), _) => {
                    return Err(PatchError::InvalidDirective {
                        path: dotted(names),
                        directive: DIRECTIVE.to_string(),
                        reason: "delete needs a list merged by key; use $deleteFromPrimitiveList for scalars",
                    });
                }
                _ => {
                    return Err(PatchError::UnknownDirective { path: dotted(names), value: directive.to_string() });
                }
            }
        }

        let fresh = |names: &mut Vec<String>, item: &Value| self.merge_value(names, None, item);
        if replace || kind == ListKind::Atomic {
            let mut result = Vec::new();
            for item in items {
                result.extend(fresh(names, item)?);
            }
            return Ok(result);
        }
        let mut merged = original.clone();
        match kind {
            ListKind::Keyed(key) => {
                for item in &items {
                    let value = match item.get(key) {
                        Some(value) if item.is_object() => value,
                        _ => {
                            return Err(PatchError::MissingMergeKey { path: dotted(names), key });
                        }
                    };
                    match merged.iter().position(|existing| existing.get(key) == Some(value)) {
                        Some(i) => {
                            let existing = std::mem::take(&mut merged[i]);
                            match self.merge_value(names, Some(existing), item)? {
                                Some(updated) => merged[i] = updated,
                                None => {
                                    merged.remove(i);
                                }
                            }
                        }
                        None => merged.extend(fresh(names, item)?),
                    }
                }
            }
            ListKind::Set | ListKind::Atomic => {
                for item in &items {
                    if !merged.contains(item) {
                        merged.push((*item).clone());
                    }
                }
            }
        }
        let order: Vec<Value> = items.into_iter().cloned().collect();
        Ok(order_items(merged, &order, &original, kind))
    }
}

/// What identifies an item of a list: its merge key, or itself for scalars.
fn identity(kind: ListKind, item: &Value) -> Option<Value> {
    match kind {
        ListKind::Keyed(key) => item.get(key).cloned(),
        ListKind::Set | ListKind::Atomic => Some(item.clone()),
    }
}

/// Kubernetes' `normalizeElementOrder`: items named by `order` come in that order, and the others keep
/// their places relative to `server_order` (the list before the patch), interleaved best-effort.
fn order_items(items: Vec<Value>, order: &[Value], server_order: &[Value], kind: ListKind) -> Vec<Value> {
    let index = |list: &[Value], item: &Value| {
        let id = identity(kind, item)?;
        list.iter().position(|x| identity(kind, x).as_ref() == Some(&id))
    };
    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) =
        items.into_iter().partition(|item| index(order, item).is_some());
    patched.sort_by_key(|item| index(order, item));
    server_only.sort_by_key(|item| index(server_order, item).unwrap_or(usize::MAX));

    let mut result = Vec::with_capacity(patched.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patched.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => matches!(
                (index(server_order, l), index(server_order, r)),
                (Some(li), Some(ri)) if li < ri
            ),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_left { left.next() } else { right.next() };
        result.extend(next);
    }
    result
}

// ---------------------------------------------------------------------------------------------------------
// Server-side apply

/// Server-side apply refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields the configuration changes are owned by other managers (409 Conflict, one cause each).
    #[error("{}", conflict_message(.0))]
    Conflict(Vec<ApplyConflict>),
    /// The configuration cannot be applied at all (422 Invalid, or 400 for a wrong kind).
    #[error(transparent)]
    Invalid(#[from] InvalidApply),
}

/// One field the applied configuration would take from another manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    pub manager: String,
    /// As Kubernetes renders it: `.spec.replicas`, `.spec.containers[name="web"].image`.
    pub field: String,
}

fn conflict_message(conflicts: &[ApplyConflict]) -> String {
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    let details: Vec<String> =
        conflicts.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
    format!("apply failed with {} conflict{plural}: {}", conflicts.len(), details.join("; "))
}

/// What is wrong with an applied configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidApply {
    #[error("the applied configuration must be a json object")]
    NotAnObject,
    /// The configuration's `apiVersion`/`kind` are not those of the endpoint.
    #[error("the applied configuration is {found}, but this endpoint serves {expected}")]
    WrongKind { expected: String, found: String },
    /// An item of a list merged by key lacks the key.
    #[error("{field}: list item has no key field {key}")]
    MissingKey { field: String, key: &'static str },
    /// Two items of a list merged by key have the same key.
    #[error("{field}: duplicate entries for key {key}={value}")]
    DuplicateKey { field: String, key: &'static str, value: String },
}

/// A field path as in FieldsV1: `f:name`, `k:{"name":"web"}` or `v:"value"` per step.
type FieldPath = Vec<String>;
type FieldSet = BTreeSet<FieldPath>;

/// Metadata the server owns: never taken from an applied configuration, never owned by a manager.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Which fields a write may own: the main endpoint leaves status to `/status` when the resource has that
/// subresource; `/status` owns only status; other subresources (scale) own whatever they change.
#[derive(Clone, Copy)]
enum Scope {
    Main { ignore_status: bool },
    Status,
    Other,
}

impl Scope {
    fn of(def: &ResourceDef, subresource: Option<&str>) -> Scope {
        match subresource {
            None => Scope::Main { ignore_status: def.status_subresource },
            Some("status") => Scope::Status,
            Some(_) => Scope::Other,
        }
    }

    fn tracks(self, path: &FieldPath) -> bool {
        let first = path.first().map(String::as_str);
        // Identity fields are not owned by anyone, as in Kubernetes' StripMeta.
        if matches!(first, Some("f:apiVersion" | "f:kind")) {
            return false;
        }
        if first == Some("f:metadata")
            && let Some(second) = path.get(1).and_then(|p| p.strip_prefix("f:"))
            && (matches!(second, "name" | "namespace") || SERVER_METADATA.contains(&second))
        {
            return false;
        }
        match self {
            Scope::Main { ignore_status } => !(ignore_status && first == Some("f:status")),
            Scope::Status => first == Some("f:status"),
            Scope::Other => true,
        }
    }
}

/// Every owned-able path of `value` with its leaf value (`None` for list items, which are identified by
/// their key and are never "modified", only added or removed).
struct Walker<'a> {
    kind: &'a str,
    /// Fail on malformed keyed lists (applied configurations) instead of treating them as atomic (live objects).
    strict: bool,
    members: BTreeMap<FieldPath, Option<Value>>,
}

impl Walker<'_> {
    fn walk(&mut self, names: &mut Vec<String>, path: &mut FieldPath, value: &Value) -> Result<(), InvalidApply> {
        match value {
            Value::Object(map) if !map.is_empty() => self.walk_fields(names, path, map),
            Value::Array(items) if !items.is_empty() => match list_kind(self.kind, names) {
                ListKind::Keyed(key) => match keyed_items(names, items, key) {
                    Ok(keyed) => {
                        for (element, item) in keyed {
                            path.push(element);
                            self.members.insert(path.clone(), None);
                            self.walk_fields(names, path, item)?;
                            path.pop();
                        }
                        Ok(())
                    }
                    Err(error) if self.strict => Err(error),
                    Err(_) => {
                        self.members.insert(path.clone(), Some(value.clone()));
                        Ok(())
                    }
                },
                ListKind::Set if items.iter().all(|item| !item.is_object() && !item.is_array()) => {
                    for item in items {
                        path.push(format!("v:{item}"));
                        self.members.insert(path.clone(), None);
                        path.pop();
                    }
                    Ok(())
                }
                ListKind::Set | ListKind::Atomic => {
                    self.members.insert(path.clone(), Some(value.clone()));
                    Ok(())
                }
            },
            _ => {
                self.members.insert(path.clone(), Some(value.clone()));
                Ok(())
            }
        }
    }

    fn walk_fields(
        &mut self,
        names: &mut Vec<String>,
        path: &mut FieldPath,
        map: &Map<String, Value>,
    ) -> Result<(), InvalidApply> {
        for (key, child) in map {
            names.push(key.clone());
            path.push(format!("f:{key}"));
            self.walk(names, path, child)?;
            path.pop();
            names.pop();
        }
        Ok(())
    }
}

/// A list item with its FieldsV1 element, `k:{"key":value}`.
type KeyedItem<'v> = (String, &'v Map<String, Value>);

/// The element of each item, checking every item has a distinct key.
fn keyed_items<'v>(
    names: &[String],
    items: &'v [Value],
    key: &'static str,
) -> Result<Vec<KeyedItem<'v>>, InvalidApply> {
    let mut seen = BTreeSet::new();
    let mut keyed = Vec::with_capacity(items.len());
    for item in items {
        let (Some(map), Some(value)) = (item.as_object(), item.get(key)) else {
            return Err(InvalidApply::MissingKey { field: dotted(names), key });
        };
        let element = format!("k:{}", serde_json::json!({ key: value }));
        if !seen.insert(element.clone()) {
            return Err(InvalidApply::DuplicateKey { field: dotted(names), key, value: value.to_string() });
        }
        keyed.push((element, map));
    }
    Ok(keyed)
}

fn members(
    kind: &str,
    value: &Value,
    scope: Scope,
    strict: bool,
) -> Result<BTreeMap<FieldPath, Option<Value>>, InvalidApply> {
    let mut walker = Walker { kind, strict, members: BTreeMap::new() };
    if let Value::Object(map) = value {
        walker.walk_fields(&mut Vec::new(), &mut Vec::new(), map)?;
    }
    walker.members.retain(|path, _| scope.tracks(path));
    Ok(walker.members)
}

/// What a write did to the tracked fields.
struct Comparison {
    /// Added or modified.
    changed: FieldSet,
    removed: FieldSet,
}

fn compare(kind: &str, old: &Value, new: &Value, scope: Scope) -> Comparison {
    // Non-strict walks cannot fail: malformed lists are treated as atomic.
    let old = members(kind, old, scope, false).unwrap_or_default();
    let new = members(kind, new, scope, false).unwrap_or_default();
    let changed =
        new.iter().filter(|(path, value)| old.get(*path) != Some(value)).map(|(path, _)| path.clone()).collect();
    let removed = old.keys().filter(|path| !new.contains_key(*path)).cloned().collect();
    Comparison { changed, removed }
}

/// One entry of `metadata.managedFields`.
struct ManagedEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<Value>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl ManagedEntry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("manager".into(), self.manager.clone().into());
        entry.insert("operation".into(), self.operation.clone().into());
        entry.insert("apiVersion".into(), self.api_version.clone().into());
        if let Some(time) = &self.time {
            entry.insert("time".into(), time.clone());
        }
        entry.insert("fieldsType".into(), "FieldsV1".into());
        entry.insert("fieldsV1".into(), fields_v1(&self.fields));
        if let Some(subresource) = &self.subresource {
            entry.insert("subresource".into(), subresource.clone().into());
        }
        Value::Object(entry)
    }
}

/// The managedFields of an object; entries that are not well-formed FieldsV1 are dropped, as Kubernetes
/// resets managedFields it cannot decode.
fn read_managed(object: &Value) -> Vec<ManagedEntry> {
    let Some(Value::Array(entries)) = object.pointer("/metadata/managedFields") else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
            let mut fields = FieldSet::new();
            if let Some(Value::Object(tree)) = entry.get("fieldsV1") {
                parse_fields_v1(tree, &mut Vec::new(), &mut fields);
            }
            Some(ManagedEntry {
                manager: text("manager")?,
                operation: text("operation")?,
                api_version: text("apiVersion").unwrap_or_default(),
                time: entry.get("time").cloned(),
                subresource: text("subresource").filter(|s| !s.is_empty()),
                fields,
            })
        })
        .collect()
}

fn parse_fields_v1(tree: &Map<String, Value>, path: &mut FieldPath, out: &mut FieldSet) {
    for (element, child) in tree {
        if element == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(element.clone());
        match child {
            Value::Object(child) if !child.is_empty() => parse_fields_v1(child, path, out),
            _ => {
                out.insert(path.clone());
            }
        }
        path.pop();
    }
}

#[derive(Default)]
struct FieldNode {
    member: bool,
    children: BTreeMap<String, FieldNode>,
}

impl FieldNode {
    fn to_json(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            map.insert(element.clone(), child.to_json());
        }
        Value::Object(map)
    }
}

fn fields_v1(fields: &FieldSet) -> Value {
    let mut root = FieldNode::default();
    for path in fields {
        let node = path.iter().fold(&mut root, |node, element| node.children.entry(element.clone()).or_default());
        node.member = true;
    }
    root.to_json()
}

fn now() -> Value {
    Value::String(crate::format_time(jiff::Timestamp::now()))
}

/// Writes the entries into the object; an object owned by nobody has no managedFields.
fn write_managed(object: &mut Value, entries: &[ManagedEntry]) {
    let Value::Object(map) = object else { return };
    if entries.is_empty() {
        if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
            metadata.remove("managedFields");
        }
        return;
    }
    let metadata = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(metadata) = metadata {
        metadata.insert("managedFields".into(), Value::Array(entries.iter().map(ManagedEntry::to_json).collect()));
    }
}

fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove("managedFields");
    }
    object
}

/// `.spec.containers[name="web"].image`, Kubernetes' rendering of a field path.
fn render_path(path: &FieldPath) -> String {
    let mut out = String::new();
    for element in path {
        match parse_element(element) {
            Some(Element::Field(name)) => {
                out.push('.');
                out.push_str(name);
            }
            Some(Element::Key(keys)) => {
                let keys: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", keys.join(",")));
            }
            Some(Element::Value(value)) => out.push_str(&format!("[={value}]")),
            None => out.push_str(element),
        }
    }
    out
}

enum Element<'a> {
    Field(&'a str),
    Key(Map<String, Value>),
    Value(Value),
}

fn parse_element(element: &str) -> Option<Element<'_>> {
    if let Some(name) = element.strip_prefix("f:") {
        Some(Element::Field(name))
    } else if let Some(keys) = element.strip_prefix("k:") {
        serde_json::from_str(keys).ok().map(Element::Key)
    } else if let Some(value) = element.strip_prefix("v:") {
        serde_json::from_str(value).ok().map(Element::Value)
    } else {
        None
    }
}

fn key_matches(item: &Value, keys: &Map<String, Value>) -> bool {
    keys.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn navigate_mut<'v>(mut value: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    for element in path {
        value = match parse_element(element)? {
            Element::Field(name) => value.get_mut(name)?,
            Element::Key(keys) => value.as_array_mut()?.iter_mut().find(|item| key_matches(item, &keys))?,
            Element::Value(wanted) => value.as_array_mut()?.iter_mut().find(|item| **item == wanted)?,
        };
    }
    Some(value)
}

/// Removes one owned field from the object. The key fields of a list item stay while the item does.
fn remove_path(object: &mut Value, path: &FieldPath) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let (Some(Element::Field(name)), Some(Element::Key(keys))) =
        (parse_element(last), parents.last().and_then(|p| parse_element(p)))
        && keys.contains_key(name)
    {
        return;
    }
    let Some(container) = navigate_mut(object, parents) else {
        return;
    };
    match parse_element(last) {
        Some(Element::Field(name)) => {
            if let Value::Object(map) = container {
                map.remove(name);
            }
        }
        Some(Element::Key(keys)) => {
            if let Value::Array(items) = container {
                items.retain(|item| !key_matches(item, &keys));
            }
        }
        Some(Element::Value(value)) => {
            if let Value::Array(items) = container {
                items.retain(|item| *item != value);
            }
        }
        None => {}
    }
}

/// Whether `set` owns `path` or anything below it.
fn owns_within(set: &FieldSet, path: &FieldPath) -> bool {
    set.range(path.clone()..).next().is_some_and(|first| first.starts_with(path))
}

/// Merges an applied configuration into the live object: maps recursively, lists with merge keys by key
/// (live order, new items appended), sets by union, everything else replaced.
fn merge_applied(kind: &str, names: &mut Vec<String>, live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => {
            for (key, value) in config {
                names.push(key.clone());
                match live.get_mut(key) {
                    Some(existing) => merge_applied(kind, names, existing, value),
                    None => {
                        live.insert(key.clone(), value.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(live), Value::Array(config)) => match list_kind(kind, names) {
            ListKind::Keyed(key) if live.iter().all(|item| item.get(key).is_some()) => {
                for item in config {
                    match live.iter_mut().find(|existing| existing.get(key) == item.get(key)) {
                        Some(existing) => merge_applied(kind, names, existing, item),
                        None => live.push(item.clone()),
                    }
                }
            }
            ListKind::Set => {
                for item in config {
                    if !live.contains(item) {
                        live.push(item.clone());
                    }
                }
            }
            _ => *live = config.clone(),
        },
        (live, config) => *live = config.clone(),
    }
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Server-side apply of `applied` (already parsed from YAML/JSON) by field manager `manager`.
///
/// Creates the object when `current` is `None`. The result carries the updated `metadata.managedFields`
/// (do not call [`record_update`] for it); server-owned metadata is left as in `current`, and `status`
/// is ignored for resources with a status subresource. Nulls in the configuration mean "not set".
pub fn server_side_apply(
    def: &ResourceDef,
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(InvalidApply::NotAnObject.into());
    }
    let mut config = applied.clone();
    strip_nulls(&mut config);
    let expected = format!("{}, Kind={}", def.api_version(), def.kind);
    let found = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_string);
    let (api_version, kind) = (found("apiVersion"), found("kind"));
    if api_version.as_ref().is_some_and(|v| *v != def.api_version()) || kind.as_ref().is_some_and(|k| k != def.kind) {
        let found = format!("{}, Kind={}", api_version.unwrap_or_default(), kind.unwrap_or_default());
        return Err(InvalidApply::WrongKind { expected, found }.into());
    }
    if let Value::Object(map) = &mut config {
        map.insert("apiVersion".into(), def.api_version().into());
        map.insert("kind".into(), def.kind.into());
        if def.status_subresource {
            map.remove("status");
        }
        if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
            metadata.retain(|key, _| !SERVER_METADATA.contains(&key.as_str()));
        }
    }

    let scope = Scope::of(def, None);
    let applied_set: FieldSet = members(def.kind, &config, scope, true)?.into_keys().collect();
    let live = current.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let mut entries = current.map(read_managed).unwrap_or_default();
    let mine = entries.iter().position(|e| e.is(manager, "Apply", None));
    let previous = mine.map(|i| std::mem::take(&mut entries[i].fields)).unwrap_or_default();

    let mut merged = live.clone();
    merge_applied(def.kind, &mut Vec::new(), &mut merged, &config);

    // Fields this manager stopped applying go, unless someone (including its new configuration) owns
    // them or something below them.
    let mut kept = applied_set.clone();
    for entry in &entries {
        kept.extend(entry.fields.iter().cloned());
    }
    for path in previous.difference(&applied_set) {
        if !owns_within(&kept, path) {
            remove_path(&mut merged, path);
        }
    }

    let comparison = compare(def.kind, &live, &merged, scope);
    let mut conflicts = Vec::new();
    for entry in &entries {
        // A manager's own Update entry gives way silently: those were its own earlier writes.
        if entry.manager == manager {
            continue;
        }
        for path in entry.fields.intersection(&comparison.changed) {
            conflicts.push(ApplyConflict { manager: entry.manager.clone(), field: render_path(path) });
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(ApplyError::Conflict(conflicts));
    }

    let object_changed = live != merged;
    for entry in &mut entries {
        entry.fields.retain(|path| !comparison.changed.contains(path) && !comparison.removed.contains(path));
    }
    match mine {
        Some(i) => {
            let entry = &mut entries[i];
            if object_changed || previous != applied_set || entry.api_version != def.api_version() {
                entry.time = Some(now());
            }
            entry.api_version = def.api_version();
            entry.fields = applied_set;
        }
        None => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version: def.api_version(),
            time: Some(now()),
            subresource: None,
            fields: applied_set,
        }),
    }
    entries.retain(|entry| !entry.fields.is_empty());
    write_managed(&mut merged, &entries);
    Ok(merged)
}

/// Record a non-apply write (create/update/patch) by `manager` in metadata.managedFields (operation Update),
/// so later applies see who owns what.
///
/// The manager takes the fields the write added or changed (from everyone else) and loses the fields it
/// removed; ownership comes from `old`'s managedFields, whatever `new` carries. A write that changes no
/// tracked field leaves the entries (and their times) as they were.
pub fn record_update(
    def: &ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    if !new.is_object() {
        return;
    }
    let scope = Scope::of(def, subresource);
    let old_object = old.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let comparison = compare(def.kind, &old_object, &without_managed_fields(new), scope);
    let mut entries = old.map(read_managed).unwrap_or_default();
    if !comparison.changed.is_empty() || !comparison.removed.is_empty() {
        for entry in &mut entries {
            entry.fields.retain(|path| !comparison.changed.contains(path) && !comparison.removed.contains(path));
        }
        let mine = match entries.iter().position(|e| e.is(manager, "Update", subresource)) {
            Some(i) => i,
            None => {
                entries.push(ManagedEntry {
                    manager: manager.to_string(),
                    operation: "Update".into(),
                    api_version: def.api_version(),
                    time: None,
                    subresource: subresource.map(str::to_string),
                    fields: FieldSet::new(),
                });
                entries.len() - 1
            }
        };
        let entry = &mut entries[mine];
        entry.fields.extend(comparison.changed);
        entry.api_version = def.api_version();
        entry.time = Some(now());
        entries.retain(|entry| !entry.fields.is_empty());
    }
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    fn deployments() -> &'static ResourceDef {
        resources::find("apps", "v1", "deployments").unwrap()
    }

    fn services() -> &'static ResourceDef {
        resources::find("", "v1", "services").unwrap()
    }

    fn configmaps() -> &'static ResourceDef {
        resources::find("", "v1", "configmaps").unwrap()
    }

    fn strategic(def: &ResourceDef, current: Value, body: Value) -> Result<Value, PatchError> {
        patch(def, PatchType::StrategicMerge, &current, &body)
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"}, "finalizers": ["a", "b"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1", "args": ["-a", "-b"],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}],
                 "volumeMounts": [{"mountPath": "/data", "name": "data"}]},
                {"name": "sidecar", "image": "envoy:1"}
            ]}}}
        })
    }

    fn containers(object: &Value) -> &Value {
        &object["spec"]["template"]["spec"]["containers"]
    }

    #[test]
    fn content_types() {
        assert_eq!(PatchType::from_content_type("application/json-patch+json"), Some(PatchType::Json));
        assert_eq!(PatchType::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchType::Merge));
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(PatchType::from_content_type("application/apply-patch+yaml;x=y"), Some(PatchType::Apply));
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn json_patch_operations() {
        let current = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let body = json!([
            {"op": "add", "path": "/metadata/labels/y", "value": "2"},
            {"op": "replace", "path": "/data/k", "value": "w"},
            {"op": "remove", "path": "/metadata/labels/x"},
            {"op": "test", "path": "/data/k", "value": "w"}
        ]);
        let patched = patch(configmaps(), PatchType::Json, &current, &body).unwrap();
        assert_eq!(patched, json!({"metadata": {"name": "a", "labels": {"y": "2"}}, "data": {"k": "w"}}));
    }

    #[test]
    fn json_patch_failures() {
        let current = json!({"data": {"k": "v"}});
        let run = |body: Value| patch(configmaps(), PatchType::Json, &current, &body).unwrap_err();
        assert!(
            matches!(run(json!([{"op": "test", "path": "/data/k", "value": "x"}])), PatchError::TestFailed { path } if path == "/data/k")
        );
        assert!(matches!(run(json!([{"op": "remove", "path": "/data/missing"}])), PatchError::PathMissing { .. }));
        assert!(matches!(
            run(json!([{"op": "replace", "path": "/nope/k", "value": 1}])),
            PatchError::PathMissing { .. }
        ));
        assert!(matches!(run(json!({"op": "add"})), PatchError::InvalidJsonPatch(_)));
        assert!(matches!(run(json!([{"op": "frobnicate", "path": "/a"}])), PatchError::InvalidJsonPatch(_)));
        assert!(matches!(run(json!([{"op": "replace", "path": "", "value": 3}])), PatchError::ResultNotAnObject));
    }

    #[test]
    fn json_patch_copies_are_bounded_while_they_apply() {
        let current = json!({"metadata": {"name": "bomb"}, "data": {"k": "x".repeat(1024)}});
        // Each copy of `data` into itself doubles it: 40 of them would ask for a terabyte.
        let doubling: Vec<Value> =
            (0..40).map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/d{i}")})).collect();
        let started = std::time::Instant::now();
        let error = patch(configmaps(), PatchType::Json, &current, &Value::Array(doubling)).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused in {:?}", started.elapsed());
        let PatchError::CopyTooLarge { accumulated, limit } = error else { panic!("{error:?}") };
        assert_eq!(limit, MAX_JSON_PATCH_COPY_BYTES);
        // Refused at the first copy past the limit: the document never grew beyond twice the limit.
        assert!(accumulated > limit && accumulated <= 2 * limit + 2048, "{accumulated}");
        assert!(error.to_string().starts_with("Unable to complete the copy, the accumulated size increase of copy is"));

        // Copies that stay within the limit, and ten ordinary operations, apply.
        let ops = json!([
            {"op": "copy", "from": "/data/k", "path": "/data/k2"},
            {"op": "copy", "from": "/data", "path": "/metadata/annotations"},
            {"op": "add", "path": "/metadata/labels", "value": {"app": "web"}},
            {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
            {"op": "replace", "path": "/data/k", "value": "v"},
            {"op": "test", "path": "/data/k", "value": "v"},
            {"op": "move", "from": "/data/k2", "path": "/data/k3"},
            {"op": "remove", "path": "/metadata/annotations"},
            {"op": "add", "path": "/data/k4", "value": "w"},
            {"op": "remove", "path": "/data/k4"}
        ]);
        let patched = patch(configmaps(), PatchType::Json, &current, &ops).unwrap();
        assert_eq!(
            patched,
            json!({"metadata": {"name": "bomb", "labels": {"app": "web", "tier": "fe"}},
                   "data": {"k": "v", "k3": "x".repeat(1024)}})
        );
    }

    #[test]
    fn json_patches_have_at_most_10000_operations() {
        let current = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        let test = json!({"op": "test", "path": "/data/k", "value": "v"});
        let at_limit = Value::Array(vec![test.clone(); MAX_JSON_PATCH_OPERATIONS]);
        assert_eq!(patch(configmaps(), PatchType::Json, &current, &at_limit).unwrap(), current);
        let over = Value::Array(vec![test; MAX_JSON_PATCH_OPERATIONS + 1]);
        let error = patch(configmaps(), PatchType::Json, &current, &over).unwrap_err();
        assert!(matches!(error, PatchError::TooManyOperations { count: 10_001 }), "{error:?}");
        assert_eq!(error.to_string(), "The allowed maximum operations in a JSON patch is 10000, got 10001");
    }

    #[test]
    fn merge_patch_null_removes() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let body = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": null});
        let patched = patch(configmaps(), PatchType::Merge, &current, &body).unwrap();
        assert_eq!(patched, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
        assert!(matches!(patch(configmaps(), PatchType::Merge, &current, &json!([1])), Err(PatchError::NotAnObject)));
        assert!(matches!(
            patch(configmaps(), PatchType::Apply, &current, &json!({})),
            Err(PatchError::ApplyNotSupported)
        ));
    }

    #[test]
    fn strategic_merges_containers_env_and_ports_by_key() {
        let body = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web", "image": "nginx:2",
            "env": [{"name": "B", "value": "20"}],
            "ports": [{"containerPort": 443, "name": "tls"}],
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}]
        }]}}}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        let web = &containers(&patched)[0];
        assert_eq!(web["image"], "nginx:2");
        assert_eq!(web["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}]));
        assert_eq!(web["ports"], json!([{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "tls"}]));
        assert_eq!(web["volumeMounts"], json!([{"mountPath": "/data", "name": "data", "readOnly": true}]));
        assert_eq!(web["args"], json!(["-a", "-b"]));
        assert_eq!(containers(&patched)[1], json!({"name": "sidecar", "image": "envoy:1"}));
    }

    #[test]
    fn strategic_replaces_atomic_lists_and_sets_scalars() {
        let body =
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "args": ["-c"]}]}}}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        assert_eq!(containers(&patched)[0]["args"], json!(["-c"]));
        assert_eq!(patched["spec"]["replicas"], 3);
    }

    #[test]
    fn strategic_new_items_without_order_come_first_as_in_kubernetes() {
        let body = json!({"spec": {"template": {"spec": {"containers": [{"name": "log", "image": "fluent"}]}}}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        let names: Vec<&Value> = containers(&patched).as_array().unwrap().iter().map(|c| &c["name"]).collect();
        assert_eq!(names, [&json!("log"), &json!("web"), &json!("sidecar")]);
    }

    #[test]
    fn strategic_service_ports_merge_by_port() {
        let service = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080, "name": "http"}, {"port": 443, "name": "https"}]}});
        let body = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        let patched = strategic(services(), service, body).unwrap();
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090, "name": "http"}, {"port": 443, "name": "https"}])
        );
        // The same list shape is atomic elsewhere: a Deployment's spec.ports is not a known list.
        let other = strategic(
            deployments(),
            json!({"spec": {"ports": [{"port": 1}, {"port": 2}]}}),
            json!({"spec": {"ports": [{"port": 3}]}}),
        )
        .unwrap();
        assert_eq!(other["spec"]["ports"], json!([{"port": 3}]));
    }

    #[test]
    fn strategic_other_merge_keys() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"ownerReferences": [{"uid": "u1", "name": "rs1"}]},
            "spec": {
                "volumes": [{"name": "a", "emptyDir": {}}],
                "imagePullSecrets": [{"name": "s1"}],
                "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}],
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "c", "volumeDevices": [{"devicePath": "/dev/x", "name": "x"}]}],
                "tolerations": [{"key": "a"}]
            },
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}
        });
        let body = json!({
            "metadata": {"ownerReferences": [{"uid": "u2", "name": "rs2"}]},
            "spec": {
                "volumes": [{"name": "b", "emptyDir": {}}],
                "imagePullSecrets": [{"name": "s2"}],
                "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["b"]}],
                "initContainers": [{"name": "init", "image": "alpine"}],
                "containers": [{"name": "c", "volumeDevices": [{"devicePath": "/dev/y", "name": "y"}]}],
                "tolerations": [{"key": "b"}]
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let patched = strategic(pods, pod, body).unwrap();
        assert_eq!(patched["metadata"]["ownerReferences"].as_array().unwrap().len(), 2);
        assert_eq!(patched["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(patched["spec"]["imagePullSecrets"].as_array().unwrap().len(), 2);
        assert_eq!(patched["spec"]["hostAliases"], json!([{"ip": "10.0.0.1", "hostnames": ["b"]}]));
        assert_eq!(patched["spec"]["initContainers"], json!([{"name": "init", "image": "alpine"}]));
        assert_eq!(patched["spec"]["containers"][0]["volumeDevices"].as_array().unwrap().len(), 2);
        assert_eq!(patched["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}])
        );
    }

    #[test]
    fn strategic_null_deletes_and_finalizers_merge_as_a_set() {
        let body = json!({"metadata": {"labels": {"tier": null, "new": "x"}, "finalizers": ["b", "c"]}, "spec": {"replicas": null}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        assert_eq!(patched["metadata"]["labels"], json!({"app": "web", "new": "x"}));
        assert_eq!(patched["metadata"]["finalizers"], json!(["a", "b", "c"]));
        assert!(patched["spec"].get("replicas").is_none());
        // A null for a missing key is ignored, not stored.
        let patched =
            strategic(configmaps(), json!({"data": {}}), json!({"data": {"gone": null}, "binaryData": {"x": null}}))
                .unwrap();
        assert_eq!(patched, json!({"data": {}, "binaryData": {}}));
    }

    #[test]
    fn strategic_patch_directive_in_maps() {
        let deleted =
            strategic(deployments(), deployment(), json!({"metadata": {"labels": {"$patch": "delete"}}})).unwrap();
        assert!(deleted["metadata"].get("labels").is_none());
        let replaced = strategic(
            deployments(),
            deployment(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "me"}}}),
        )
        .unwrap();
        assert_eq!(replaced["metadata"]["labels"], json!({"only": "me"}));
        let merged =
            strategic(deployments(), deployment(), json!({"metadata": {"labels": {"$patch": "merge", "x": "y"}}}))
                .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"app": "web", "tier": "fe", "x": "y"}));
        let err = strategic(deployments(), deployment(), json!({"metadata": {"$patch": "explode"}})).unwrap_err();
        assert!(matches!(err, PatchError::UnknownDirective { path, .. } if path == ".metadata"));
    }

    #[test]
    fn strategic_patch_directive_in_list_items() {
        let delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}});
        let patched = strategic(deployments(), deployment(), delete).unwrap();
        assert_eq!(containers(&patched).as_array().unwrap().len(), 1);
        assert_eq!(containers(&patched)[0]["name"], "web");

        let replace = json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}}});
        let patched = strategic(deployments(), deployment(), replace).unwrap();
        assert_eq!(containers(&patched), &json!([{"name": "only", "image": "x"}]));

        let merge = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:2", "$patch": "merge"}]}}}});
        let patched = strategic(deployments(), deployment(), merge).unwrap();
        assert_eq!(containers(&patched)[1], json!({"name": "sidecar", "image": "envoy:2"}));

        let env_delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "$patch": "delete"}]}]}}}});
        let patched = strategic(deployments(), deployment(), env_delete).unwrap();
        assert_eq!(containers(&patched)[0]["env"], json!([{"name": "B", "value": "2"}]));

        let keyless = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}});
        assert!(matches!(
            strategic(deployments(), deployment(), keyless).unwrap_err(),
            PatchError::MissingMergeKey { key: "name", .. }
        ));
    }

    #[test]
    fn strategic_set_element_order() {
        // What kubectl apply sends when the configuration reorders containers and changes one.
        let body = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"name": "web", "image": "nginx:3"}]
        }}}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        assert_eq!(containers(&patched)[0]["name"], "sidecar");
        assert_eq!(containers(&patched)[1]["image"], "nginx:3");

        let finalizers = json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"]}});
        let patched = strategic(deployments(), deployment(), finalizers).unwrap();
        assert_eq!(patched["metadata"]["finalizers"], json!(["b", "a"]));

        let mismatch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"name": "other", "image": "x"}]
        }}}});
        assert!(matches!(
            strategic(deployments(), deployment(), mismatch).unwrap_err(),
            PatchError::SetElementOrderMismatch { .. }
        ));
        let not_a_list = json!({"metadata": {"$setElementOrder/finalizers": "a"}});
        assert!(matches!(
            strategic(deployments(), deployment(), not_a_list).unwrap_err(),
            PatchError::InvalidDirective { .. }
        ));
    }

    #[test]
    fn strategic_retain_keys() {
        let current = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let body = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let patched = strategic(deployments(), current.clone(), body).unwrap();
        assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));

        let body = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}});
        let err = strategic(deployments(), current.clone(), body).unwrap_err();
        assert!(matches!(err, PatchError::RetainKeysMismatch { key, .. } if key == "rollingUpdate"));
        let body = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert!(matches!(strategic(deployments(), current, body).unwrap_err(), PatchError::InvalidDirective { .. }));
    }

    #[test]
    fn strategic_delete_from_primitive_list() {
        let body = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["z"]}});
        let patched = strategic(deployments(), deployment(), body).unwrap();
        assert_eq!(patched["metadata"]["finalizers"], json!(["z", "b"]));
        assert!(matches!(strategic(configmaps(), json!({}), json!([])).unwrap_err(), PatchError::NotAnObject));
    }

    #[test]
    fn strategic_new_fields_lose_their_directives() {
        let body = json!({"metadata": {"annotations": {"$patch": "replace", "a": "1", "b": null}}});
        let patched = strategic(configmaps(), json!({"metadata": {"name": "x"}}), body).unwrap();
        assert_eq!(patched, json!({"metadata": {"name": "x", "annotations": {"a": "1"}}}));
    }

    // Server-side apply

    fn apply_config(replicas: Value, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}
        })
    }

    fn entry<'v>(object: &'v Value, manager: &str) -> Option<&'v Value> {
        object["metadata"]["managedFields"].as_array()?.iter().find(|e| e["manager"] == manager)
    }

    /// What the API server would store: server metadata added after the apply.
    fn stored(mut object: Value) -> Value {
        object["metadata"]["uid"] = json!("uid-1");
        object["metadata"]["resourceVersion"] = json!("7");
        object
    }

    #[test]
    fn apply_creates_with_managed_fields() {
        let created =
            server_side_apply(deployments(), None, &apply_config(json!(2), "nginx:1"), "kubectl", false).unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        let entry = entry(&created, "kubectl").unwrap();
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(entry["apiVersion"], "apps/v1");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert!(entry["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            entry["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}}
            })
        );
    }

    #[test]
    fn reapplying_unchanged_is_a_no_op() {
        let config = apply_config(json!(2), "nginx:1");
        let live = stored(server_side_apply(deployments(), None, &config, "kubectl", false).unwrap());
        let again = server_side_apply(deployments(), Some(&live), &config, "kubectl", false).unwrap();
        assert_eq!(again, live, "same object, same managedFields and times");
    }

    #[test]
    fn apply_removes_fields_dropped_from_the_configuration() {
        let mut config = apply_config(json!(2), "nginx:1");
        config["metadata"]["labels"]["tier"] = json!("fe");
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "envoy"}));
        let live = stored(server_side_apply(deployments(), None, &config, "kubectl", false).unwrap());

        let applied =
            server_side_apply(deployments(), Some(&live), &apply_config(json!(2), "nginx:1"), "kubectl", false)
                .unwrap();
        assert_eq!(applied["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(containers(&applied), &json!([{"name": "web", "image": "nginx:1"}]));
        assert_eq!(applied["metadata"]["uid"], "uid-1", "server metadata untouched");
        assert_eq!(applied["metadata"]["resourceVersion"], "7");
        let fields = &entry(&applied, "kubectl").unwrap()["fieldsV1"];
        assert!(fields["f:metadata"]["f:labels"].get("f:tier").is_none());
    }

    #[test]
    fn apply_keeps_dropped_fields_another_manager_owns() {
        let mut config = apply_config(json!(2), "nginx:1");
        config["metadata"]["labels"]["tier"] = json!("fe");
        let live = stored(server_side_apply(deployments(), None, &config, "kubectl", false).unwrap());
        // Another applier sets the same label to the same value: shared ownership, no conflict.
        let shared = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"tier": "fe"}}});
        let live = server_side_apply(deployments(), Some(&live), &shared, "other", false).unwrap();
        assert_eq!(live["metadata"]["labels"]["tier"], "fe");

        let applied =
            server_side_apply(deployments(), Some(&live), &apply_config(json!(2), "nginx:1"), "kubectl", false)
                .unwrap();
        assert_eq!(applied["metadata"]["labels"], json!({"app": "web", "tier": "fe"}));
    }

    #[test]
    fn apply_conflicts_with_an_updater_unless_forced() {
        let config = apply_config(json!(2), "nginx:1");
        let live = stored(server_side_apply(deployments(), None, &config, "kubectl", false).unwrap());
        // `kubectl scale` writes spec.replicas through an update.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(deployments(), Some(&live), &mut scaled, "kubectl-scale", Some("scale"));
        let scale_entry = entry(&scaled, "kubectl-scale").unwrap();
        assert_eq!(scale_entry["operation"], "Update");
        assert_eq!(scale_entry["subresource"], "scale");
        assert_eq!(scale_entry["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        // The applier lost the field to the updater.
        assert!(entry(&scaled, "kubectl").unwrap()["fieldsV1"]["f:spec"].get("f:replicas").is_none());

        let err = server_side_apply(deployments(), Some(&scaled), &apply_config(json!(3), "nginx:1"), "kubectl", false)
            .unwrap_err();
        let ApplyError::Conflict(conflicts) = &err else { panic!("expected a conflict, got {err}") };
        assert_eq!(conflicts, &[ApplyConflict { manager: "kubectl-scale".into(), field: ".spec.replicas".into() }]);
        assert_eq!(err.to_string(), "apply failed with 1 conflict: conflict with \"kubectl-scale\": .spec.replicas");

        // Applying the value the updater set is no conflict.
        assert!(
            server_side_apply(deployments(), Some(&scaled), &apply_config(json!(5), "nginx:1"), "kubectl", false)
                .is_ok()
        );

        let forced =
            server_side_apply(deployments(), Some(&scaled), &apply_config(json!(3), "nginx:1"), "kubectl", true)
                .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert!(entry(&forced, "kubectl-scale").is_none(), "an entry owning nothing goes away");
        assert!(entry(&forced, "kubectl").unwrap()["fieldsV1"]["f:spec"].get("f:replicas").is_some());
    }

    #[test]
    fn apply_conflicts_between_appliers_render_keyed_paths() {
        let live =
            stored(server_side_apply(deployments(), None, &apply_config(json!(2), "nginx:1"), "a", false).unwrap());
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let Err(ApplyError::Conflict(conflicts)) = server_side_apply(deployments(), Some(&live), &other, "b", false)
        else {
            panic!("expected a conflict")
        };
        assert_eq!(
            conflicts,
            [ApplyConflict { manager: "a".into(), field: ".spec.template.spec.containers[name=\"web\"].image".into() }]
        );
    }

    #[test]
    fn apply_merges_keyed_lists_and_ignores_status_and_server_metadata() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "generation": 4},
            "spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1", "imagePullPolicy": "Always"}, {"name": "side", "image": "s"}
            ]}}},
            "status": {"replicas": 1}
        });
        let config = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "evil", "generation": 99, "resourceVersion": "1"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}},
            "status": {"replicas": 9}
        });
        let applied = server_side_apply(deployments(), Some(&live), &config, "m", false).unwrap();
        assert_eq!(
            containers(&applied),
            &json!([{"name": "web", "image": "nginx:2", "imagePullPolicy": "Always"}, {"name": "side", "image": "s"}])
        );
        assert_eq!(applied["metadata"]["uid"], "u");
        assert_eq!(applied["metadata"]["generation"], 4);
        assert!(applied["metadata"].get("resourceVersion").is_none());
        assert_eq!(applied["status"], json!({"replicas": 1}));
    }

    #[test]
    fn apply_rejects_invalid_configurations() {
        let invalid = |config: Value| match server_side_apply(deployments(), None, &config, "m", false) {
            Err(ApplyError::Invalid(invalid)) => invalid,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(invalid(json!([])), InvalidApply::NotAnObject);
        assert!(matches!(invalid(json!({"apiVersion": "v1", "kind": "Pod"})), InvalidApply::WrongKind { .. }));
        assert_eq!(
            invalid(json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})),
            InvalidApply::MissingKey { field: ".spec.template.spec.containers".into(), key: "name" }
        );
        assert!(matches!(
            invalid(json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}})),
            InvalidApply::DuplicateKey { key: "name", .. }
        ));
    }

    #[test]
    fn record_update_tracks_changes_by_scope() {
        let mut created =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}, "data": {"a": "1"}});
        record_update(configmaps(), None, &mut created, "kubectl-create", None);
        let create_entry = entry(&created, "kubectl-create").unwrap();
        assert_eq!(create_entry["operation"], "Update");
        assert!(create_entry.get("subresource").is_none());
        assert_eq!(create_entry["fieldsV1"], json!({"f:data": {"f:a": {}}}));

        // A write that changes nothing leaves managedFields alone.
        let mut same = created.clone();
        record_update(configmaps(), Some(&created), &mut same, "other", None);
        assert_eq!(same, created);

        // Another manager takes a.
        let mut edited = created.clone();
        edited["data"]["a"] = json!("2");
        edited["data"]["b"] = json!("3");
        record_update(configmaps(), Some(&created), &mut edited, "kubectl-edit", None);
        assert!(entry(&edited, "kubectl-create").is_none());
        assert_eq!(entry(&edited, "kubectl-edit").unwrap()["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));

        // Status writes on the main endpoint of a resource with /status are not tracked; on /status they are.
        let live = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"replicas": 2}});
        record_update(deployments(), Some(&live), &mut new, "ctl", None);
        assert_eq!(entry(&new, "ctl").unwrap()["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        let mut status = new.clone();
        status["status"]["replicas"] = json!(3);
        record_update(deployments(), Some(&new), &mut status, "controller", Some("status"));
        let status_entry = entry(&status, "controller").unwrap();
        assert_eq!(status_entry["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
        assert_eq!(status_entry["subresource"], "status");
    }

    #[test]
    fn record_update_then_apply_sees_set_members() {
        let mut created = json!({"metadata": {"name": "c", "finalizers": ["x"]}, "data": {}});
        record_update(configmaps(), None, &mut created, "ctl", None);
        assert_eq!(
            entry(&created, "ctl").unwrap()["fieldsV1"],
            json!({"f:data": {}, "f:metadata": {"f:finalizers": {"v:\"x\"": {}}}})
        );
        // Adding another finalizer by apply is no conflict: set members are owned one by one.
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["y"]}});
        let applied = server_side_apply(configmaps(), Some(&created), &config, "m", false).unwrap();
        assert_eq!(applied["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn apply_keeps_a_dropped_item_while_another_manager_owns_part_of_it() {
        let mut config = apply_config(json!(1), "nginx:1");
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "envoy:1"}));
        let live = stored(server_side_apply(deployments(), None, &config, "kubectl", false).unwrap());
        // `kubectl set image` changes the sidecar's image through an update.
        let mut updated = live.clone();
        updated["spec"]["template"]["spec"]["containers"][1]["image"] = json!("envoy:2");
        record_update(deployments(), Some(&live), &mut updated, "kubectl-set", None);

        let applied =
            server_side_apply(deployments(), Some(&updated), &apply_config(json!(1), "nginx:1"), "kubectl", false)
                .unwrap();
        assert_eq!(containers(&applied)[1], json!({"name": "side", "image": "envoy:2"}));
    }

    #[test]
    fn malformed_inputs_do_not_panic() {
        let weird = [
            json!(null),
            json!("x"),
            json!([1, 2]),
            json!({"metadata": {"managedFields": "nope"}}),
            json!({"metadata": {"managedFields": [1, {"manager": "m"}, {"manager": "m", "operation": "Apply", "fieldsV1": "x"}]}}),
            json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Apply", "fieldsV1": {"k:oops": {}, "x": 1}}]}}),
            json!({"spec": {"template": {"spec": {"containers": [1, "a", {"image": "x"}, {"name": "a"}, {"name": "a"}]}}}}),
        ];
        for current in &weird {
            for body in &weird {
                let _ = patch(deployments(), PatchType::StrategicMerge, current, body);
                let _ = patch(deployments(), PatchType::Merge, current, body);
                let _ = patch(deployments(), PatchType::Json, current, body);
                let _ = server_side_apply(deployments(), Some(current), body, "m", false);
                let _ = server_side_apply(deployments(), Some(current), body, "m", true);
                let mut new = body.clone();
                record_update(deployments(), Some(current), &mut new, "m", None);
            }
        }
        let odd_directives = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [1, {"x": 1}],
            "$deleteFromPrimitiveList/containers": [{"name": "a"}],
            "containers": [{"name": "web", "$patch": 5}]
        }}}});
        assert!(patch(deployments(), PatchType::StrategicMerge, &deployment(), &odd_directives).is_err());
        let scalar_items = json!({"spec": {"template": {"spec": {"containers": ["web"]}}}});
        assert!(matches!(
            patch(deployments(), PatchType::StrategicMerge, &deployment(), &scalar_items),
            Err(PatchError::MissingMergeKey { .. })
        ));
    }

    #[test]
    fn field_paths_round_trip_through_fields_v1() {
        let set: FieldSet = [
            vec!["f:spec".to_string(), "f:containers".into(), "k:{\"name\":\"a\"}".into()],
            vec!["f:spec".to_string(), "f:containers".into(), "k:{\"name\":\"a\"}".into(), "f:image".into()],
            vec!["f:metadata".to_string(), "f:labels".into(), "f:x".into()],
        ]
        .into_iter()
        .collect();
        let json = fields_v1(&set);
        let mut parsed = FieldSet::new();
        parse_fields_v1(json.as_object().unwrap(), &mut Vec::new(), &mut parsed);
        assert_eq!(parsed, set);
        assert_eq!(render_path(&set.iter().next_back().unwrap().clone()), ".spec.containers[name=\"a\"].image");
    }
}
