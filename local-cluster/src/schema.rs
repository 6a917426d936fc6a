//! CustomResourceDefinition schema enforcement, as the Kubernetes API server does it for a
//! create or update: unknown fields are rejected (strict field validation) or pruned, nulls of
//! non-nullable fields are dropped, defaults are applied, then the value is checked against the
//! structural OpenAPI v3 schema and its CEL `x-kubernetes-validations` rules.
//!
//! Errors read like the API server's (`spec.replicas: Invalid value: 0: spec.replicas in body
//! should be greater than or equal to 1`) so clients and users see the same text on both.
//! This module owns validation only; it never stores objects.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

/// What happens to fields the schema does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownFields {
    /// Report each as an error (`kubectl apply --validate=strict`, the kubectl default).
    Reject,
    /// Drop them silently (`fieldValidation=Ignore`).
    Prune,
}

/// Why one field was rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum Cause {
    /// A required field is missing.
    Required,
    /// The value is of the wrong JSON type.
    TypeInvalid {
        /// The value given.
        value: Value,
        /// The type the schema asks for.
        expected: String,
    },
    /// The value is not one of the enumerated ones.
    NotSupported {
        /// The value given.
        value: Value,
        /// The accepted values.
        supported: Vec<Value>,
    },
    /// The value breaks a constraint (pattern, range, length, CEL rule, ...).
    Invalid {
        /// The value given (objects and arrays are shown by type, as the API server does).
        value: Value,
        /// What is wrong, in the API server's words or the rule's message.
        detail: String,
    },
    /// Two list items share a key that must be unique.
    Duplicate {
        /// The repeated value.
        value: Value,
    },
    /// A string longer than `maxLength`.
    TooLong {
        /// The limit.
        max: u64,
    },
    /// A list with more items than `maxItems`.
    TooMany {
        /// Items given.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A field the schema does not declare.
    Unknown,
}

/// One rejected field, with its path in dotted form (`spec.source.s3.uri`, `spec.columns[2].name`).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Path of the field from the object root.
    pub field: String,
    /// What is wrong with it.
    pub cause: Cause,
}

impl FieldError {
    /// The `reason` of the matching `StatusCause` in the API server's error responses.
    pub fn reason(&self) -> &'static str {
        match self.cause {
            Cause::Required => "FieldValueRequired",
            Cause::TypeInvalid { .. } => "FieldValueTypeInvalid",
            Cause::NotSupported { .. } => "FieldValueNotSupported",
            Cause::Invalid { .. } => "FieldValueInvalid",
            Cause::Duplicate { .. } => "FieldValueDuplicate",
            Cause::TooLong { .. } => "FieldValueTooLong",
            Cause::TooMany { .. } => "FieldValueTooMany",
            Cause::Unknown => "FieldValueInvalid",
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = &self.field;
        match &self.cause {
            Cause::Required => write!(f, "{field}: Required value"),
            Cause::TypeInvalid { value, expected } => write!(
                f,
                "{field}: Invalid value: {}: {field} in body must be of type {expected}: {}",
                shown(value),
                type_quoted(value)
            ),
            Cause::NotSupported { value, supported } => {
                let list: Vec<String> = supported.iter().map(Value::to_string).collect();
                write!(
                    f,
                    "{field}: Unsupported value: {value}: supported values: {}",
                    list.join(", ")
                )
            }
            Cause::Invalid { value, detail } => {
                write!(f, "{field}: Invalid value: {}: {detail}", shown(value))
            }
            Cause::Duplicate { value } => write!(f, "{field}: Duplicate value: {value}"),
            Cause::TooLong { max } => {
                write!(f, "{field}: Too long: may not be more than {max} bytes")
            }
            Cause::TooMany { count, max } => {
                write!(
                    f,
                    "{field}: Too many: {count}: must have at most {max} items"
                )
            }
            Cause::Unknown => write!(f, "unknown field \"{field}\""),
        }
    }
}

/// How a value appears in an error: scalars as JSON, composites by their type name.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_quoted(value: &Value) -> String {
    format!("\"{}\"", type_name(value))
}

/// Check a whole custom resource (`apiVersion`, `kind`, `metadata`, `spec`, `status`) against
/// the CRD version's `openAPIV3Schema` and return it pruned and defaulted, or every error found.
pub fn admit_custom_resource(
    schema: &Value,
    rules: &CelRules,
    object: &Value,
    unknown: UnknownFields,
) -> Result<Value, Vec<FieldError>> {
    let mut object = object.clone();
    let mut errors = Vec::new();
    normalize(schema, &mut object, "", unknown, true, &mut errors);
    let object = kube_cel::apply_defaults(schema, &object);
    check(schema, &object, "", true, &mut errors);
    if errors.is_empty() {
        rules.check(&object, &mut errors);
    }
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Fields every object has that a CRD schema does not describe.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// Drop nulls of non-nullable fields and handle undeclared fields, recursively.
fn normalize(
    schema: &Value,
    value: &mut Value,
    path: &str,
    unknown: UnknownFields,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut drop = Vec::new();
            for (key, child) in map.iter_mut() {
                if root && ROOT_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let child_schema = properties.and_then(|p| p.get(key)).or(additional);
                match child_schema {
                    Some(child_schema) => {
                        if child.is_null()
                            && child_schema.get("nullable") != Some(&Value::Bool(true))
                        {
                            drop.push(key.clone());
                        } else {
                            normalize(
                                child_schema,
                                child,
                                &join(path, key),
                                unknown,
                                false,
                                errors,
                            );
                        }
                    }
                    None if preserves_unknown(schema) => {}
                    None => match unknown {
                        UnknownFields::Reject => errors.push(FieldError {
                            field: join(path, key),
                            cause: Cause::Unknown,
                        }),
                        UnknownFields::Prune => drop.push(key.clone()),
                    },
                }
            }
            for key in drop {
                map.remove(&key);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    normalize(
                        item_schema,
                        item,
                        &format!("{path}[{i}]"),
                        unknown,
                        false,
                        errors,
                    );
                }
            }
        }
        _ => {}
    }
}

/// Structural checks: types, enums, formats, ranges, lengths, required fields, list keys and
/// the value-validation junctors (`oneOf`, `anyOf`, `allOf`, `not`).
fn check(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let invalid = |detail: String| FieldError {
        field: path.to_owned(),
        cause: Cause::Invalid {
            value: value.clone(),
            detail,
        },
    };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            errors.push(FieldError {
                field: path.to_owned(),
                cause: Cause::TypeInvalid {
                    value: Value::Null,
                    expected: expected_type(schema),
                },
            });
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(invalid(format!(
                "{path} in body must be of type integer or string: {}",
                type_quoted(value)
            )));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !has_type(value, expected)
    {
        errors.push(FieldError {
            field: path.to_owned(),
            cause: Cause::TypeInvalid {
                value: value.clone(),
                expected: expected.to_owned(),
            },
        });
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(FieldError {
            field: path.to_owned(),
            cause: Cause::NotSupported {
                value: value.clone(),
                supported: allowed.clone(),
            },
        });
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errors, &invalid),
        Value::Number(n) => check_number(
            schema,
            n.as_f64().unwrap_or(f64::NAN),
            path,
            errors,
            &invalid,
        ),
        Value::Array(items) => check_array(schema, items, path, errors, &invalid),
        Value::Object(map) => check_object(schema, map, path, root, errors, &invalid),
        _ => {}
    }
    check_junctors(schema, value, path, errors);
}

fn expected_type(schema: &Value) -> String {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_owned()
}

fn has_type(value: &Value, expected: &str) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn check_string(
    schema: &Value,
    s: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
    invalid: &dyn Fn(String) -> FieldError,
) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        errors.push(FieldError {
            field: path.to_owned(),
            cause: Cause::TooLong { max },
        });
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        errors.push(invalid(format!(
            "{path} in body should be at least {min} chars long"
        )));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match compiled(pattern) {
            Some(re) if !re.is_match(s) => {
                errors.push(invalid(format!("{path} in body should match '{pattern}'")));
            }
            Some(_) => {}
            None => errors.push(invalid(format!(
                "schema pattern '{pattern}' does not compile"
            ))),
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_rfc3339(s) {
        errors.push(invalid(format!(
            "{path} in body must be of type date-time: \"{s}\""
        )));
    }
}

/// Accepts RFC 3339 date-times (`2026-01-02T03:04:05Z`, fractional seconds, offsets).
fn is_rfc3339(s: &str) -> bool {
    static RFC3339: OnceLock<Regex> = OnceLock::new();
    let re = RFC3339.get_or_init(|| {
        Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
            .expect("static regex compiles")
    });
    re.is_match(s)
}

/// Patterns repeat across objects of one CRD; compile each once.
fn compiled(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, Option<Regex>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(pattern.to_owned())
        .or_insert_with(|| Regex::new(pattern).ok())
        .clone()
}

fn check_number(
    schema: &Value,
    n: f64,
    path: &str,
    errors: &mut Vec<FieldError>,
    invalid: &dyn Fn(String) -> FieldError,
) {
    let exclusive = |key| schema.get(key) == Some(&Value::Bool(true));
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if exclusive("exclusiveMinimum") && n <= min {
            errors.push(invalid(format!(
                "{path} in body should be greater than {}",
                num(min)
            )));
        } else if n < min {
            errors.push(invalid(format!(
                "{path} in body should be greater than or equal to {}",
                num(min)
            )));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if exclusive("exclusiveMaximum") && n >= max {
            errors.push(invalid(format!(
                "{path} in body should be less than {}",
                num(max)
            )));
        } else if n > max {
            errors.push(invalid(format!(
                "{path} in body should be less than or equal to {}",
                num(max)
            )));
        }
    }
    if let Some(step) = schema.get("multipleOf").and_then(Value::as_f64)
        && step > 0.0
        && (n / step).fract() != 0.0
    {
        errors.push(invalid(format!(
            "{path} in body should be a multiple of {}",
            num(step)
        )));
    }
}

/// Numbers in messages as the API server prints them: `1`, not `1.0`.
fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn check_array(
    schema: &Value,
    items: &[Value],
    path: &str,
    errors: &mut Vec<FieldError>,
    invalid: &dyn Fn(String) -> FieldError,
) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        errors.push(FieldError {
            field: path.to_owned(),
            cause: Cause::TooMany { count: len, max },
        });
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        errors.push(invalid(format!(
            "{path} in body should have at least {min} items"
        )));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), false, errors);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errors.push(FieldError {
                        field: format!("{path}[{i}]"),
                        cause: Cause::Duplicate {
                            value: item.clone(),
                        },
                    });
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|ks| ks.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<Value> = keys
                    .iter()
                    .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                    .collect();
                if !seen.insert(Value::Array(key.clone()).to_string()) {
                    let value = match key.as_slice() {
                        [one] => one.clone(),
                        _ => Value::Array(key),
                    };
                    errors.push(FieldError {
                        field: format!("{path}[{i}]"),
                        cause: Cause::Duplicate { value },
                    });
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
    invalid: &dyn Fn(String) -> FieldError,
) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                errors.push(FieldError {
                    field: join(path, key),
                    cause: Cause::Required,
                });
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if root && ROOT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if let Some(child_schema) = properties.and_then(|p| p.get(key)).or(additional) {
            check(child_schema, child, &join(path, key), false, errors);
        }
    }
    let count = map.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        errors.push(invalid(format!(
            "{path} in body should have at most {max} properties"
        )));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && count < min
    {
        errors.push(invalid(format!(
            "{path} in body should have at least {min} properties"
        )));
    }
}

/// `oneOf`, `anyOf`, `allOf` and `not`, whose branches in a structural schema only add
/// value validations (typically `required`) to the node they sit on.
fn check_junctors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let passes = |branch: &Value| {
        let mut branch_errors = Vec::new();
        check(branch, value, path, false, &mut branch_errors);
        check_junctors(branch, value, path, &mut branch_errors);
        branch_errors.is_empty()
    };
    let invalid = |detail: String| FieldError {
        field: path.to_owned(),
        cause: Cause::Invalid {
            value: value.clone(),
            detail,
        },
    };
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = branches.iter().filter(|b| passes(b)).count();
        if matching != 1 {
            let detail = match one_of_fields(branches) {
                Some(fields) if matching == 0 => {
                    format!("must set exactly one of {}; none is set", fields.join(", "))
                }
                Some(fields) => format!(
                    "must set exactly one of {}; {matching} are set",
                    fields.join(", ")
                ),
                None => format!("{path} in body must validate one and only one schema (oneOf)"),
            };
            errors.push(invalid(detail));
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(&passes)
    {
        errors.push(invalid(format!(
            "{path} in body must validate at least one schema (anyOf)"
        )));
    }
    if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
        for branch in branches {
            check(branch, value, path, false, errors);
        }
    }
    if let Some(branch) = schema.get("not")
        && passes(branch)
    {
        errors.push(invalid(format!(
            "{path} in body must not validate the schema (not)"
        )));
    }
}

/// For the common `oneOf: [{required: [a]}, {required: [b]}]` shape, the field names, so the
/// message can say which fields are meant.
fn one_of_fields(branches: &[Value]) -> Option<Vec<String>> {
    branches
        .iter()
        .map(|b| {
            match b
                .get("required")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                Some([Value::String(name)]) if b.as_object().is_some_and(|o| o.len() == 1) => {
                    Some(name.clone())
                }
                _ => None,
            }
        })
        .collect()
}

/// A schema's CEL `x-kubernetes-validations` rules, compiled once when the CRD is registered
/// rather than on every write (parsing CEL dominates the cost of admitting an object).
#[derive(Clone, Default)]
pub struct CelRules(Option<Arc<kube_cel::CompiledSchema>>);

impl CelRules {
    /// Compile the rules of `schema` (none for built-in kinds).
    pub fn compile(schema: Option<&Value>) -> Self {
        Self(schema.map(|schema| Arc::new(kube_cel::compile_schema(schema))))
    }

    /// Run the rules, once the structure is known to be sound.
    fn check(&self, object: &Value, errors: &mut Vec<FieldError>) {
        thread_local! {
            // Registering the Kubernetes CEL functions is itself costly; a validator holds no
            // per-object state, so each thread keeps one.
            static VALIDATOR: kube_cel::Validator = kube_cel::Validator::new();
        }
        let Some(compiled) = &self.0 else {
            return;
        };
        let Err(failures) =
            VALIDATOR.with(|validator| validator.validate_compiled(compiled, object, None))
        else {
            return;
        };
        for failure in failures.iter() {
            let value = lookup(object, &failure.field_path)
                .cloned()
                .unwrap_or(Value::Null);
            errors.push(FieldError {
                field: failure.field_path.clone(),
                cause: Cause::Invalid {
                    value,
                    detail: failure.message.clone(),
                },
            });
        }
    }
}

/// Rules are compiled from the schema they sit next to, so comparing schemas compares them.
impl PartialEq for CelRules {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for CelRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "CelRules(compiled)"
        } else {
            "CelRules(none)"
        })
    }
}

/// The value at a dotted path with `[i]` indexes.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = root;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            node = node.get(name)?;
        }
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            node = node.get(index.parse::<usize>().ok()?)?;
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["replicas"],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "nullable": true},
                        "source": {
                            "type": "object",
                            "oneOf": [{"required": ["s3"]}, {"required": ["http"]}],
                            "properties": {
                                "s3": {"type": "object", "properties": {"uri": {"type": "string"}}},
                                "http": {"type": "object", "properties": {"url": {"type": "string"}}}
                            }
                        },
                        "items": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
                        },
                        "min": {"type": "integer"},
                        "max": {"type": "integer"}
                    },
                    "x-kubernetes-validations": [{"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max"}]
                }
            }
        })
    }

    fn admit(spec: Value) -> Result<Value, Vec<String>> {
        let object =
            json!({"apiVersion": "x.dev/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec});
        admit_custom_resource(
            &schema(),
            &CelRules::compile(Some(&schema())),
            &object,
            UnknownFields::Reject,
        )
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_valid_object_is_defaulted() {
        let admitted = admit(json!({"replicas": 2, "source": {"s3": {"uri": "s3://b"}}})).unwrap();
        assert_eq!(admitted["spec"]["mode"], "safe");
        assert_eq!(admitted["metadata"]["name"], "a");
    }

    #[test]
    fn errors_name_the_field_and_the_accepted_values() {
        let errors = admit(json!({"replicas": 0, "mode": "slow", "name": "A1"})).unwrap_err();
        assert!(errors.contains(&"spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1".to_owned()), "{errors:?}");
        assert!(
            errors.contains(
                &r#"spec.mode: Unsupported value: "slow": supported values: "fast", "safe""#
                    .to_owned()
            ),
            "{errors:?}"
        );
        assert!(
            errors.contains(
                &r#"spec.name: Invalid value: "A1": spec.name in body should match '^[a-z]+$'"#
                    .to_owned()
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_and_mistyped_fields_are_reported() {
        let errors = admit(json!({"replicas": "two"})).unwrap_err();
        assert_eq!(
            errors,
            vec![
                r#"spec.replicas: Invalid value: "two": spec.replicas in body must be of type integer: "string""#
            ]
        );
        let errors = admit(json!({})).unwrap_err();
        assert_eq!(errors, vec!["spec.replicas: Required value"]);
    }

    #[test]
    fn unknown_fields_are_rejected_or_pruned() {
        let errors = admit(json!({"replicas": 1, "replicaz": 3})).unwrap_err();
        assert_eq!(errors, vec![r#"unknown field "spec.replicaz""#]);
        let object = json!({"spec": {"replicas": 1, "replicaz": 3}});
        let pruned = admit_custom_resource(
            &schema(),
            &CelRules::compile(Some(&schema())),
            &object,
            UnknownFields::Prune,
        )
        .unwrap();
        assert_eq!(pruned["spec"].get("replicaz"), None);
    }

    #[test]
    fn one_of_names_the_alternatives() {
        let errors = admit(json!({"replicas": 1, "source": {}})).unwrap_err();
        assert_eq!(
            errors,
            vec![
                r#"spec.source: Invalid value: "object": must set exactly one of s3, http; none is set"#
            ]
        );
        let errors = admit(json!({"replicas": 1, "source": {"s3": {}, "http": {}}})).unwrap_err();
        assert_eq!(
            errors,
            vec![
                r#"spec.source: Invalid value: "object": must set exactly one of s3, http; 2 are set"#
            ]
        );
    }

    #[test]
    fn list_map_keys_must_be_unique() {
        let errors =
            admit(json!({"replicas": 1, "items": [{"name": "a"}, {"name": "a"}]})).unwrap_err();
        assert_eq!(errors, vec![r#"spec.items[1]: Duplicate value: "a""#]);
    }

    #[test]
    fn cel_rules_run_with_their_messages() {
        let errors = admit(json!({"replicas": 1, "min": 5, "max": 2})).unwrap_err();
        assert_eq!(
            errors,
            vec![r#"spec: Invalid value: "object": min must not exceed max"#]
        );
        assert!(admit(json!({"replicas": 1, "min": 1, "max": 2})).is_ok());
    }

    #[test]
    fn nulls_of_non_nullable_fields_are_dropped() {
        let admitted = admit(json!({"replicas": 1, "mode": null, "name": null})).unwrap();
        assert_eq!(admitted["spec"]["mode"], "safe");
        assert_eq!(admitted["spec"]["name"], Value::Null);
    }

    #[test]
    fn lookup_follows_dots_and_indexes() {
        let v = json!({"spec": {"columns": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(lookup(&v, "spec.columns[1].name"), Some(&json!("b")));
        assert_eq!(lookup(&v, "spec.columns[5]"), None);
    }
}
