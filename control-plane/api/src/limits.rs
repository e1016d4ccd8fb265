//! The most the API takes from one client request, with kube-apiserver's numbers, so that no request can
//! make the server hold much more than the request itself.
//!
//! Every bound here is a secure default enforced where the input is read: the body before it is parsed
//! ([`MAX_REQUEST_BODY_BYTES`]), a JSON patch while it is applied (`patch`: [`MAX_JSON_PATCH_OPERATIONS`],
//! [`MAX_JSON_PATCH_COPY_BYTES`]), a YAML document while it is decoded ([`from_yaml`]), and an object before
//! it is written ([`MAX_OBJECT_BYTES`]). JSON needs no bound of its own: without aliases it cannot decode to
//! more than it says, and serde_json refuses nesting deeper than 128.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The largest request body the server reads: kube-apiserver's `MaxRequestBodyBytes`, 3 MiB
/// (`staging/src/k8s.io/apiserver/pkg/server/config.go`, `NewConfig`). Twice etcd's request limit, since a
/// JSON body shrinks when Kubernetes stores it as protobuf. A larger body is refused with 413 before it is
/// read.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The most operations one JSON patch may have: kube-apiserver's `maxJSONPatchOperations`
/// (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The most the `copy` operations of one JSON patch may add together, counted as the JSON length of each
/// copied value: kube-apiserver's `JSONPatchMaxCopyBytes`, 3 MiB (`config.go`, `NewConfig`), which it
/// gives evanphx/json-patch as `AccumulatedCopySizeLimit`. Without it, each copy of an object into itself
/// doubles it: thirty copies of a small ConfigMap ask for gigabytes.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The largest object the server stores, as encoded in the store: etcd's default `--max-request-bytes`,
/// 1.5 MiB (etcd `server/embed/config.go`, `DefaultMaxRequestBytes`), which is what bounds an object in
/// Kubernetes. Checked on every backend so both refuse the same objects.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;

/// What a YAML document may decode to beyond twice its own length (see [`from_yaml`]), so that a small
/// document with a few aliases still decodes.
const YAML_SLACK: usize = 64 * 1024;

/// go-yaml's error for an alias bomb, which Kubernetes' YAML decoding reports.
const EXCESSIVE_ALIASING: &str = "document contains excessive aliasing";

/// Decodes YAML (or JSON, a subset of it) into a JSON value, refusing a document whose aliases make it
/// decode to much more than it is.
///
/// Every alias is expanded into a copy of what it names, so a one-megabyte scalar named by a thousand
/// aliases decodes to a gigabyte. Without aliases, a document decodes to at most one node per byte and to
/// no more scalar bytes than it holds, so each node costs one plus its scalar's length here and the
/// document may spend twice its length, and [`YAML_SLACK`] more. go-yaml (under Kubernetes' YAML decoding)
/// bounds the ratio of alias-made nodes instead, which is enough in Go, where copies of a string share it.
pub fn from_yaml(bytes: &[u8]) -> Result<Value, serde_yaml::Error> {
    let budget = Cell::new(bytes.len().saturating_mul(2).saturating_add(YAML_SLACK));
    Budgeted(&budget).deserialize(serde_yaml::Deserializer::from_slice(bytes))
}

/// Builds a `Value` as serde_json's own visitor does, charging each node to a shared budget before it is
/// allocated.
#[derive(Clone, Copy)]
struct Budgeted<'b>(&'b Cell<usize>);

impl Budgeted<'_> {
    fn charge<E: de::Error>(self, cost: usize) -> Result<(), E> {
        let left = self.0.get().checked_sub(cost).ok_or_else(|| E::custom(EXCESSIVE_ALIASING))?;
        self.0.set(left);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Number(value.into()))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Value, E> {
        self.charge(1)?;
        Number::from_i128(value).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Value, E> {
        self.charge(1)?;
        Number::from_u128(value).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.charge(1 + value.len())?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.charge(1 + value.len())?;
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(1)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(1)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(1 + key.len())?;
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn yaml_decodes_as_serde_yaml_does() {
        let manifest = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data:
  color: blue
  count: "3"
list: [1, -2, 3.5, true, null, ~, "x"]
big: 18446744073709551615
empty:
"#;
        let expected: Value = serde_yaml::from_slice(manifest.as_bytes()).unwrap();
        assert_eq!(from_yaml(manifest.as_bytes()).unwrap(), expected);
        assert_eq!(from_yaml(b"").unwrap(), Value::Null);
        assert_eq!(from_yaml(br#"{"a": [1, {"b": "c"}]}"#).unwrap(), serde_json::json!({"a": [1, {"b": "c"}]}));
    }

    #[test]
    fn a_few_aliases_still_decode() {
        let yaml = b"base: &env [{name: A, value: '1'}, {name: B, value: '2'}]\none: *env\ntwo: *env\n";
        let decoded = from_yaml(yaml).unwrap();
        assert_eq!(decoded["one"], decoded["base"]);
        assert_eq!(decoded["two"][1]["value"], "2");
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        // 64 KiB named once and repeated 100,000 times: 6.4 GB decoded from a 400 KB document.
        let mut yaml = format!("big: &big \"{}\"\nmany: [", "x".repeat(64 * 1024));
        yaml.push_str(&"*big,".repeat(100_000));
        yaml.push_str("]\n");
        let started = Instant::now();
        let error = from_yaml(yaml.as_bytes()).unwrap_err();
        assert!(error.to_string().contains(EXCESSIVE_ALIASING), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused in {:?}", started.elapsed());

        // The exponential kind (billion laughs), which serde_yaml's own repetition limit also stops.
        let mut laughs =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (name, previous) in
            ["b", "c", "d", "e", "f", "g", "h", "i"].iter().zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            laughs.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{previous}"); 9].join(",")));
        }
        assert!(from_yaml(laughs.as_bytes()).is_err());
    }
}
