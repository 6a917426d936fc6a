//! Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send for built-in kinds (`kubectl create namespace`,
//! `create configmap`, `create secret`, `create serviceaccount`) and for `DeleteOptions`
//! (Helm's typed deletes). Decoded into the same JSON the
//! rest of the server works with; kinds outside that set get `415`. Responses are always JSON,
//! which these clients also accept.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::status::ApiError;

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// How one protobuf field maps to JSON.
#[derive(Clone, Copy)]
enum Field {
    Text(&'static str),
    Int(&'static str),
    Bool(&'static str),
    Time(&'static str),
    Texts(&'static str),
    TextMap(&'static str),
    BytesMap(&'static str),
    Message(&'static str, &'static [(u64, Field)]),
    Messages(&'static str, &'static [(u64, Field)]),
}

const OWNER_REFERENCE: &[(u64, Field)] = &[
    (1, Field::Text("kind")),
    (3, Field::Text("name")),
    (4, Field::Text("uid")),
    (5, Field::Text("apiVersion")),
    (6, Field::Bool("controller")),
    (7, Field::Bool("blockOwnerDeletion")),
];

const OBJECT_META: &[(u64, Field)] = &[
    (1, Field::Text("name")),
    (2, Field::Text("generateName")),
    (3, Field::Text("namespace")),
    (5, Field::Text("uid")),
    (6, Field::Text("resourceVersion")),
    (7, Field::Int("generation")),
    (8, Field::Time("creationTimestamp")),
    (11, Field::TextMap("labels")),
    (12, Field::TextMap("annotations")),
    (13, Field::Messages("ownerReferences", OWNER_REFERENCE)),
    (14, Field::Texts("finalizers")),
];

const NAMESPACE: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (
        2,
        Field::Message("spec", &[(1, Field::Texts("finalizers"))]),
    ),
];

const CONFIG_MAP: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::TextMap("data")),
    (3, Field::BytesMap("binaryData")),
    (4, Field::Bool("immutable")),
];

const SECRET: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (2, Field::BytesMap("data")),
    (3, Field::Text("type")),
    (4, Field::TextMap("stringData")),
    (5, Field::Bool("immutable")),
];

const SERVICE_ACCOUNT: &[(u64, Field)] = &[
    (1, Field::Message("metadata", OBJECT_META)),
    (
        3,
        Field::Messages("imagePullSecrets", &[(1, Field::Text("name"))]),
    ),
    (4, Field::Bool("automountServiceAccountToken")),
];

const DELETE_OPTIONS: &[(u64, Field)] = &[
    (1, Field::Int("gracePeriodSeconds")),
    (
        2,
        Field::Message(
            "preconditions",
            &[(1, Field::Text("uid")), (2, Field::Text("resourceVersion"))],
        ),
    ),
    (3, Field::Bool("orphanDependents")),
    (4, Field::Text("propagationPolicy")),
    (5, Field::Texts("dryRun")),
];

fn schema_of(api_version: &str, kind: &str) -> Option<&'static [(u64, Field)]> {
    match (api_version, kind) {
        (_, "DeleteOptions") => Some(DELETE_OPTIONS),
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Secret") => Some(SECRET),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        _ => None,
    }
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf body of the request is malformed")
}

/// One field of a protobuf message: number and value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or_else(malformed)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                if len > self.bytes.len() {
                    return Err(malformed());
                }
                let (data, rest) = self.bytes.split_at(len);
                self.bytes = rest;
                Wire::Bytes(data)
            }
            1 => {
                self.skip(8)?;
                Wire::Varint(0)
            }
            5 => {
                self.skip(4)?;
                Wire::Varint(0)
            }
            _ => return Err(malformed()),
        };
        Ok(Some((key >> 3, wire)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ApiError> {
        if n > self.bytes.len() {
            return Err(malformed());
        }
        self.bytes = &self.bytes[n..];
        Ok(())
    }
}

fn text(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

/// A map entry message: key = 1, value = 2.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut reader = Reader { bytes };
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    while let Some((number, wire)) = reader.next()? {
        match (number, wire) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn message(bytes: &[u8], schema: &[(u64, Field)]) -> Result<Value, ApiError> {
    let mut object = Map::new();
    let mut reader = Reader { bytes };
    while let Some((number, wire)) = reader.next()? {
        let Some((_, field)) = schema.iter().find(|(n, _)| *n == number) else {
            continue;
        };
        match (*field, wire) {
            (Field::Text(name), Wire::Bytes(b)) => {
                object.insert(name.into(), json!(text(b)?));
            }
            (Field::Int(name), Wire::Varint(v)) => {
                object.insert(name.into(), json!(v as i64));
            }
            (Field::Bool(name), Wire::Varint(v)) => {
                object.insert(name.into(), json!(v != 0));
            }
            (Field::Time(name), Wire::Bytes(b)) => {
                let mut time = Reader { bytes: b };
                let mut seconds = 0i64;
                while let Some((n, w)) = time.next()? {
                    if let (1, Wire::Varint(v)) = (n, w) {
                        seconds = v as i64;
                    }
                }
                if let Some(t) = chrono::DateTime::from_timestamp(seconds, 0) {
                    object.insert(
                        name.into(),
                        json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    );
                }
            }
            (Field::Texts(name), Wire::Bytes(b)) => {
                let list = object.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!(text(b)?));
                }
            }
            (Field::TextMap(name), Wire::Bytes(b)) => {
                let (key, value) = entry(b)?;
                object.entry(name).or_insert_with(|| json!({}))[key] = json!(text(value)?);
            }
            (Field::BytesMap(name), Wire::Bytes(b)) => {
                let (key, value) = entry(b)?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                object.entry(name).or_insert_with(|| json!({}))[key] = json!(encoded);
            }
            (Field::Message(name, inner), Wire::Bytes(b)) => {
                object.insert(name.into(), message(b, inner)?);
            }
            (Field::Messages(name, inner), Wire::Bytes(b)) => {
                let item = message(b, inner)?;
                let list = object.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(item);
                }
            }
            _ => return Err(malformed()),
        }
    }
    Ok(Value::Object(object))
}

/// Decode a protobuf request body (`k8s\0` + `runtime.Unknown`) into a JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let mut reader = Reader { bytes: envelope };
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((number, wire)) = reader.next()? {
        match (number, wire) {
            (1, Wire::Bytes(type_meta)) => {
                let mut meta = Reader { bytes: type_meta };
                while let Some((n, w)) = meta.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = schema_of(&api_version, &kind).ok_or_else(|| {
        ApiError::unsupported_media_type(
            &format!("{MEDIA_TYPE} ({api_version} {kind})"),
            &["application/json", "application/yaml"],
        )
    })?;
    let mut object = message(raw, schema)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_config_map_decodes() {
        let meta = field(1, b"settings");
        let entry = [field(1, b"mode"), field(2, b"fast")].concat();
        let raw = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let object = decode(&body).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings"}, "data": {"mode": "fast"}})
        );
    }

    #[test]
    fn truncated_and_unknown_bodies_are_errors() {
        assert_eq!(decode(b"k8s\0\x0a\x05ab").unwrap_err().code, 400);
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
