//! Walking a generic JSON tree (a manifest) with field paths, so that every
//! problem names the exact field (`spec.ingress[0].from[1].ipBlock.cidr`).
//!
//! Unknown fields are never looked at, which is how they end up ignored
//! (see [`crate::spec`] for why that is the chosen behaviour). Public for
//! weir-state's manifests parser, which walks the other kinds the same way.

use serde_json::{Map, Value};

/// A problem at one field, before the object it belongs to is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.ingress[0].ports[1].port`.
    pub field: String,
    pub problem: String,
}

pub fn err(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// How a value shows up in "expected X, found Y".
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

pub fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// A field that may be absent; explicit `null` counts as absent, as in Kubernetes.
pub fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub fn map<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object()
        .ok_or_else(|| err(path, format!("expected a mapping, found {}", describe(v))))
}

pub fn opt_map<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<Option<&'a Map<String, Value>>, FieldError> {
    field(obj, key)
        .map(|v| map(v, &join(base, key)))
        .transpose()
}

pub fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<Option<&'a str>, FieldError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(err(
            join(base, key),
            format!("expected a string, found {}", describe(v)),
        )),
    }
}

pub fn req_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<&'a str, FieldError> {
    match opt_str(obj, key, base)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(err(join(base, key), "required value")),
    }
}

pub fn opt_bool(
    obj: &Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<Option<bool>, FieldError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(err(
            join(base, key),
            format!("expected a boolean, found {}", describe(v)),
        )),
    }
}

pub fn opt_list<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<&'a [Value], FieldError> {
    match field(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(err(
            join(base, key),
            format!("expected a list, found {}", describe(v)),
        )),
    }
}

/// An integer field (no fraction, no string form).
pub fn opt_int(obj: &Map<String, Value>, key: &str, base: &str) -> Result<Option<i64>, FieldError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v @ Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
            err(
                join(base, key),
                format!("expected an integer, found {}", describe(v)),
            )
        }),
        Some(v) => Err(err(
            join(base, key),
            format!("expected an integer, found {}", describe(v)),
        )),
    }
}
