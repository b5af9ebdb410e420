//! One parsed document (a generic YAML/JSON tree) -> typed, validated objects.
//!
//! Walks the tree by hand rather than deriving `Deserialize`, so that each
//! problem names the exact field (`spec.containers[0].ports[1].protocol`) and
//! unknown fields, which real manifests are full of, are simply ignored.
//!
//! Adding a kind: a `parse_*` function returning the object, and its
//! `(apiVersion, kind)` arm in [`parse_document`]. NetworkPolicy is parsed
//! and validated by weir-policy; its errors keep this module's shape.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use weir_policy::fields::{
    FieldError, describe, err, field, join, map, opt_bool, opt_list, opt_map, opt_str, req_str,
};

use super::validate;
use super::{ManifestError, Position};
use crate::model::{
    ContainerPort, DEFAULT_NAMESPACE, Kind, Labels, NAMESPACE_NAME_LABEL, Namespace, Object,
    ObjectKey, OwnerReference, Pod, Protocol,
};

/// What one document yielded.
#[derive(Debug, Default)]
pub(super) struct DocOutput {
    pub objects: Vec<(Position, Object)>,
    /// Objects that were identified but are invalid: their last good version stays.
    pub rejected: Vec<ObjectKey>,
    pub errors: Vec<ManifestError>,
    /// `apiVersion kind` of objects skipped because the kind is not handled.
    pub skipped: Vec<String>,
}

/// `metadata.labels` / `metadata.annotations`: string -> string, keys are
/// qualified names; label values are checked too (annotation values are free).
fn string_map(
    obj: &Map<String, Value>,
    key: &str,
    base: &str,
    check_values: bool,
) -> Result<Labels, FieldError> {
    let path = join(base, key);
    let mut out = Labels::new();
    let Some(m) = opt_map(obj, key, base)? else {
        return Ok(out);
    };
    for (k, v) in m {
        validate::qualified_name(k).map_err(|p| err(&path, p))?;
        let entry = format!("{path}[{k}]");
        let Value::String(s) = v else {
            return Err(err(
                entry,
                format!("expected a string, found {}", describe(v)),
            ));
        };
        if check_values {
            validate::label_value(s).map_err(|p| err(&entry, p))?;
        }
        out.insert(k.clone(), s.clone());
    }
    Ok(out)
}

/// Parses one document; a `List` yields its items (position `item` set).
pub(super) fn parse_document(file: &Path, document: usize, value: &Value, out: &mut DocOutput) {
    let position = Position {
        document,
        item: None,
    };
    parse_any(file, position, value, true, out);
}

fn parse_any(
    file: &Path,
    position: Position,
    value: &Value,
    allow_list: bool,
    out: &mut DocOutput,
) {
    let Value::Object(obj) = value else {
        out.errors.push(ManifestError::NotAnObject {
            file: file.to_path_buf(),
            position,
            found: describe(value),
        });
        return;
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let invalid = |object: String, e: FieldError| ManifestError::Invalid {
        file: file.to_path_buf(),
        position,
        object,
        field: e.field,
        problem: e.problem,
    };
    for (key, got) in [("apiVersion", api_version), ("kind", kind)] {
        if got.is_empty() {
            let found = match obj.get(key) {
                None | Some(Value::Null) => "required value".to_owned(),
                Some(v) => format!("expected a non-empty string, found {}", describe(v)),
            };
            out.errors
                .push(invalid(object_name(obj, kind), err(key, found)));
            return;
        }
    }
    match (api_version, kind) {
        ("v1", "List" | "PodList" | "NamespaceList")
        | (weir_policy::spec::API_VERSION, "NetworkPolicyList")
            if allow_list =>
        {
            parse_list(file, position, obj, kind, out, &invalid);
        }
        ("v1", "List" | "PodList" | "NamespaceList")
        | (weir_policy::spec::API_VERSION, "NetworkPolicyList") => {
            out.errors.push(invalid(
                kind.to_owned(),
                err("kind", "a List item cannot itself be a List"),
            ));
        }
        ("v1", "Namespace") => finish(
            out,
            position,
            Kind::Namespace,
            obj,
            parse_namespace(obj),
            &invalid,
        ),
        ("v1", "Pod") => finish(out, position, Kind::Pod, obj, parse_pod(obj), &invalid),
        (weir_policy::spec::API_VERSION, "NetworkPolicy") => finish(
            out,
            position,
            Kind::NetworkPolicy,
            obj,
            parse_network_policy(value),
            &invalid,
        ),
        _ => out.skipped.push(format!("{api_version} {kind}")),
    }
}

/// The items of a `List` (each parsed as a document of its own, not a list).
fn parse_list(
    file: &Path,
    position: Position,
    obj: &Map<String, Value>,
    kind: &str,
    out: &mut DocOutput,
    invalid: &dyn Fn(String, FieldError) -> ManifestError,
) {
    let items = match opt_list(obj, "items", "") {
        Ok(items) => items,
        Err(e) => {
            out.errors.push(invalid(kind.to_owned(), e));
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let position = Position {
            document: position.document,
            item: Some(i + 1),
        };
        parse_any(file, position, item, false, out);
    }
}

/// A NetworkPolicy, parsed and validated by weir-policy (the compiler's own
/// rules, so that what the source accepts the compiler can compile).
fn parse_network_policy(value: &Value) -> Result<Object, FieldError> {
    weir_policy::NetworkPolicy::from_value(value)
        .map(|p| Object::NetworkPolicy(Arc::new(p)))
        .map_err(|e| err(e.field(), e.problem()))
}

fn finish(
    out: &mut DocOutput,
    position: Position,
    kind: Kind,
    obj: &Map<String, Value>,
    result: Result<Object, FieldError>,
    invalid: &dyn Fn(String, FieldError) -> ManifestError,
) {
    match result {
        Ok(object) => out.objects.push((position, object)),
        Err(e) => {
            if let Some(key) = raw_key(kind, obj) {
                out.rejected.push(key);
            }
            out.errors.push(invalid(object_name(obj, kind.as_str()), e));
        }
    }
}

fn metadata_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

fn namespace_of(obj: &Map<String, Value>) -> &str {
    match metadata_str(obj, "namespace") {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

/// The key as written, even if invalid: what the last good version is found by.
fn raw_key(kind: Kind, obj: &Map<String, Value>) -> Option<ObjectKey> {
    let name = metadata_str(obj, "name").filter(|n| !n.is_empty())?;
    Some(ObjectKey {
        kind,
        namespace: if kind.is_namespaced() {
            namespace_of(obj).to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    })
}

/// How an error names the object: `Pod ns/name`, `Namespace name`, with
/// `<unnamed>` when the name is missing.
fn object_name(obj: &Map<String, Value>, kind: &str) -> String {
    let kind = if kind.is_empty() { "object" } else { kind };
    let name = metadata_str(obj, "name")
        .filter(|n| !n.is_empty())
        .unwrap_or("<unnamed>");
    match kind {
        "Namespace" => format!("{kind} {name}"),
        "Pod" | "NetworkPolicy" => format!("{kind} {}/{name}", namespace_of(obj)),
        _ => format!("{kind} {name}"),
    }
}

fn metadata(obj: &Map<String, Value>) -> Result<&Map<String, Value>, FieldError> {
    match field(obj, "metadata") {
        None => Err(err("metadata.name", "required value")),
        Some(v) => map(v, "metadata"),
    }
}

fn parse_namespace(obj: &Map<String, Value>) -> Result<Object, FieldError> {
    let meta = metadata(obj)?;
    let name = req_str(meta, "name", "metadata")?;
    validate::dns1123_label(name).map_err(|p| err("metadata.name", p))?;
    let mut labels = string_map(meta, "labels", "metadata", true)?;
    // The API server always sets this label to the name, overriding any value given.
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    let annotations = string_map(meta, "annotations", "metadata", false)?;
    Ok(Object::Namespace(Namespace {
        name: name.to_owned(),
        labels,
        annotations,
    }))
}

fn parse_pod(obj: &Map<String, Value>) -> Result<Object, FieldError> {
    let meta = metadata(obj)?;
    let name = req_str(meta, "name", "metadata")?;
    validate::dns1123_subdomain(name).map_err(|p| err("metadata.name", p))?;
    let namespace = match opt_str(meta, "namespace", "metadata")? {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    };
    validate::dns1123_label(namespace).map_err(|p| err("metadata.namespace", p))?;
    let uid = opt_str(meta, "uid", "metadata")?.unwrap_or("").to_owned();
    let labels = string_map(meta, "labels", "metadata", true)?;
    let annotations = string_map(meta, "annotations", "metadata", false)?;
    let owner = parse_owner(meta)?;

    let empty = Map::new();
    let spec = opt_map(obj, "spec", "")?.unwrap_or(&empty);
    let node_name = opt_str(spec, "nodeName", "spec")?.unwrap_or("").to_owned();
    if !node_name.is_empty() {
        validate::dns1123_subdomain(&node_name).map_err(|p| err("spec.nodeName", p))?;
    }
    let service_account = opt_str(spec, "serviceAccountName", "spec")?
        .unwrap_or("")
        .to_owned();
    let host_network = opt_bool(spec, "hostNetwork", "spec")?.unwrap_or(false);
    let mut ports = Vec::new();
    for (c, container) in opt_list(spec, "containers", "spec")?.iter().enumerate() {
        let base = format!("spec.containers[{c}]");
        let container = map(container, &base)?;
        if let Some(cname) = opt_str(container, "name", &base)? {
            validate::dns1123_label(cname).map_err(|p| err(join(&base, "name"), p))?;
        }
        for (p, port) in opt_list(container, "ports", &base)?.iter().enumerate() {
            let base = format!("{base}.ports[{p}]");
            ports.push(parse_port(map(port, &base)?, &base)?);
        }
    }

    let status = opt_map(obj, "status", "")?.unwrap_or(&empty);
    let pod_ips = parse_pod_ips(status)?;

    Ok(Object::Pod(Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid,
        labels,
        annotations,
        owner,
        node_name,
        service_account,
        host_network,
        pod_ips,
        ports,
    }))
}

fn parse_owner(meta: &Map<String, Value>) -> Result<Option<OwnerReference>, FieldError> {
    let mut first = None;
    for (i, owner) in opt_list(meta, "ownerReferences", "metadata")?
        .iter()
        .enumerate()
    {
        let base = format!("metadata.ownerReferences[{i}]");
        let owner = map(owner, &base)?;
        let parsed = OwnerReference {
            kind: req_str(owner, "kind", &base)?.to_owned(),
            name: req_str(owner, "name", &base)?.to_owned(),
        };
        if opt_bool(owner, "controller", &base)?.unwrap_or(false) {
            return Ok(Some(parsed));
        }
        first.get_or_insert(parsed);
    }
    Ok(first)
}

fn parse_port(port: &Map<String, Value>, base: &str) -> Result<ContainerPort, FieldError> {
    let path = join(base, "containerPort");
    let number = match field(port, "containerPort") {
        None => return Err(err(path, "required value")),
        Some(v @ Value::Number(n)) => match n.as_i64() {
            Some(n) if (1..=65535).contains(&n) => n as u16,
            Some(n) => {
                return Err(err(
                    path,
                    format!("{n}: must be between 1 and 65535, inclusive"),
                ));
            }
            None => {
                return Err(err(
                    path,
                    format!("expected an integer, found {}", describe(v)),
                ));
            }
        },
        Some(v) => {
            return Err(err(
                path,
                format!("expected an integer, found {}", describe(v)),
            ));
        }
    };
    let protocol = match opt_str(port, "protocol", base)? {
        None | Some("") => Protocol::default(),
        Some(p) => Protocol::parse(p).ok_or_else(|| {
            err(
                join(base, "protocol"),
                format!("unknown protocol {p:?} (expected TCP, UDP or SCTP)"),
            )
        })?,
    };
    let name = match opt_str(port, "name", base)? {
        None | Some("") => None,
        Some(n) => {
            validate::iana_svc_name(n).map_err(|p| err(join(base, "name"), p))?;
            Some(n.to_owned())
        }
    };
    Ok(ContainerPort {
        name,
        port: number,
        protocol,
    })
}

fn parse_ip(s: &str, path: &str) -> Result<IpAddr, FieldError> {
    s.parse()
        .map_err(|_| err(path, format!("{s:?}: must be a valid IP address")))
}

fn parse_pod_ips(status: &Map<String, Value>) -> Result<Vec<IpAddr>, FieldError> {
    let mut ips = Vec::new();
    let primary = opt_str(status, "podIP", "status")?
        .filter(|s| !s.is_empty())
        .map(|s| parse_ip(s, "status.podIP"))
        .transpose()?;
    for (i, entry) in opt_list(status, "podIPs", "status")?.iter().enumerate() {
        let base = format!("status.podIPs[{i}]");
        let ip = parse_ip(
            req_str(map(entry, &base)?, "ip", &base)?,
            &join(&base, "ip"),
        )?;
        if i == 0
            && let Some(p) = primary
            && p != ip
        {
            return Err(err(
                join(&base, "ip"),
                format!("{ip} must be the same as status.podIP ({p})"),
            ));
        }
        if ips.contains(&ip) {
            return Err(err(join(&base, "ip"), format!("{ip}: duplicate address")));
        }
        ips.push(ip);
    }
    if let Some(p) = primary
        && ips.is_empty()
    {
        ips.push(p);
    }
    Ok(ips)
}
