//! The `networking.k8s.io/v1 NetworkPolicy` object, parsed from a generic
//! JSON tree and validated as the API server validates it.
//!
//! Choices where Kubernetes leaves room:
//! - Unknown fields are ignored, as the API server does for requests without
//!   strict field validation and as the rest of Weir's manifests source does:
//!   real manifests carry fields of newer versions and tool annotations.
//! - An `ipBlock.cidr` (or `except`) with host bits set is accepted and its
//!   host bits are cleared, like the API server's (non-strict) CIDR parser.
//! - An IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) is the IPv4 block it
//!   denotes: the datapath keys IPv4 addresses in that form.
//! - `spec.podSelector` absent means `{}` (every pod of the namespace), which
//!   is what the API server stores for an omitted (non-pointer) selector.
//!
//! The first problem found is reported, with the field path.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cidr::Cidr;
use crate::fields::{
    FieldError, describe, err, field, join, map, opt_int, opt_list, opt_map, opt_str, req_str,
};
use crate::names;
use crate::selector::{LabelSelector, opt_selector};

/// The API group/version NetworkPolicy is served under.
pub const API_VERSION: &str = "networking.k8s.io/v1";
/// The object kind.
pub const KIND: &str = "NetworkPolicy";
/// Namespace used when a policy does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A NetworkPolicy the API server would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// One field breaks a rule. `object` is `ns/name` (`<unnamed>` when the
    /// name is missing), `field` the dotted path of the field.
    #[error("NetworkPolicy {object}: {field}: {problem}")]
    Invalid {
        object: String,
        field: String,
        problem: String,
    },
}

impl PolicyError {
    /// The dotted path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            PolicyError::Invalid { field, .. } => field,
        }
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        match self {
            PolicyError::Invalid { problem, .. } => problem,
        }
    }
}

/// An L4 protocol a NetworkPolicy port can name.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    /// The default when `protocol` is omitted.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling; case-sensitive, as the API server.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number, as in IP headers and the datapath's keys.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol of an IANA number, if it is one a policy can name.
    pub fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `port` of a NetworkPolicyPort: a number or a container port name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    /// TCP when omitted.
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    /// Last port of a range starting at the numeric `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// `ipBlock`: a CIDR minus exceptions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

impl IpBlock {
    /// Whether the address is in the block (inside `cidr`, in no `except`).
    pub fn contains_addr(&self, ip: std::net::IpAddr) -> bool {
        self.cidr.contains_addr(ip) && !self.except.iter().any(|e| e.contains_addr(ip))
    }
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set):
    /// pods alone select in the policy's namespace, namespaces alone select
    /// every pod of the matching namespaces, both select matching pods in
    /// matching namespaces.
    #[serde(rename_all = "camelCase")]
    Pods {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_selector: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

/// One ingress or egress rule. Empty `peers`: any peer; empty `ports`: any
/// port of any protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A policy direction, as `policyTypes` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// The datapath's `direction::*` number.
    pub fn datapath(self) -> u8 {
        match self {
            Direction::Ingress => weir_common::direction::INGRESS,
            Direction::Egress => weir_common::direction::EGRESS,
        }
    }

    /// From the datapath's `direction::*` number.
    pub fn from_datapath(d: u8) -> Option<Self> {
        match d {
            weir_common::direction::INGRESS => Some(Direction::Ingress),
            weir_common::direction::EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }

    /// `spec.ingress` / `spec.egress`.
    pub fn spec_field(self) -> &'static str {
        match self {
            Direction::Ingress => "spec.ingress",
            Direction::Egress => "spec.egress",
        }
    }

    /// `from` / `to`.
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated NetworkPolicy with `policyTypes` defaulted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// Effective `policyTypes`: as written, or when absent/empty, Ingress
    /// plus Egress iff `spec.egress` has rules (the API server's default).
    pub ingress_type: bool,
    pub egress_type: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// Parses and validates a NetworkPolicy manifest. `apiVersion` and `kind`
    /// are checked when present (a source that already dispatched on them
    /// may pass the object as it is).
    pub fn from_value(value: &Value) -> Result<Self, PolicyError> {
        let Value::Object(obj) = value else {
            return Err(PolicyError::Invalid {
                object: "<unnamed>".into(),
                field: String::new(),
                problem: format!("expected a mapping, found {}", describe(value)),
            });
        };
        parse(obj).map_err(|e| PolicyError::Invalid {
            object: object_name(obj),
            field: e.field,
            problem: e.problem,
        })
    }

    /// Whether the policy has this type (after defaulting).
    pub fn has_type(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress_type,
            Direction::Egress => self.egress_type,
        }
    }

    /// The rules of a direction.
    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn metadata_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

/// `ns/name` as written, for error messages even when invalid.
fn object_name(obj: &Map<String, Value>) -> String {
    let ns = metadata_str(obj, "namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    let name = metadata_str(obj, "name")
        .filter(|n| !n.is_empty())
        .unwrap_or("<unnamed>");
    format!("{ns}/{name}")
}

fn parse(obj: &Map<String, Value>) -> Result<NetworkPolicy, FieldError> {
    if let Some(v) = opt_str(obj, "apiVersion", "")?
        && v != API_VERSION
    {
        return Err(err(
            "apiVersion",
            format!("{v:?}: expected {API_VERSION:?}"),
        ));
    }
    if let Some(k) = opt_str(obj, "kind", "")?
        && k != KIND
    {
        return Err(err("kind", format!("{k:?}: expected {KIND:?}")));
    }
    let meta = match field(obj, "metadata") {
        None => return Err(err("metadata.name", "required value")),
        Some(v) => map(v, "metadata")?,
    };
    let name = req_str(meta, "name", "metadata")?;
    names::dns1123_subdomain(name).map_err(|p| err("metadata.name", p))?;
    let namespace = match opt_str(meta, "namespace", "metadata")? {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    };
    names::dns1123_label(namespace).map_err(|p| err("metadata.namespace", p))?;

    let empty = Map::new();
    let spec = opt_map(obj, "spec", "")?.unwrap_or(&empty);
    let pod_selector = opt_selector(spec, "podSelector", "spec")?.unwrap_or_default();
    let ingress = parse_rules(spec, Direction::Ingress)?;
    let egress = parse_rules(spec, Direction::Egress)?;

    let types = opt_list(spec, "policyTypes", "spec")?;
    let (ingress_type, egress_type) = if types.is_empty() {
        (true, !egress.is_empty())
    } else {
        if types.len() > 2 {
            return Err(err(
                "spec.policyTypes",
                "may not specify more than two policyTypes",
            ));
        }
        let (mut i, mut e) = (false, false);
        for (n, t) in types.iter().enumerate() {
            let path = format!("spec.policyTypes[{n}]");
            match t {
                Value::String(s) if s == "Ingress" => i = true,
                Value::String(s) if s == "Egress" => e = true,
                Value::String(s) => {
                    return Err(err(
                        path,
                        format!("{s:?}: supported values: \"Ingress\", \"Egress\""),
                    ));
                }
                v => {
                    return Err(err(
                        path,
                        format!("expected a string, found {}", describe(v)),
                    ));
                }
            }
        }
        (i, e)
    };

    Ok(NetworkPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector,
        ingress_type,
        egress_type,
        ingress,
        egress,
    })
}

fn parse_rules(spec: &Map<String, Value>, d: Direction) -> Result<Vec<Rule>, FieldError> {
    let key = match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    let mut rules = Vec::new();
    for (i, rule) in opt_list(spec, key, "spec")?.iter().enumerate() {
        let base = format!("spec.{key}[{i}]");
        let rule = map(rule, &base)?;
        let mut peers = Vec::new();
        for (j, peer) in opt_list(rule, d.peers_field(), &base)?.iter().enumerate() {
            let path = format!("{base}.{}[{j}]", d.peers_field());
            peers.push(parse_peer(map(peer, &path)?, &path)?);
        }
        let mut ports = Vec::new();
        for (j, port) in opt_list(rule, "ports", &base)?.iter().enumerate() {
            let path = format!("{base}.ports[{j}]");
            ports.push(parse_port(map(port, &path)?, &path)?);
        }
        rules.push(Rule { peers, ports });
    }
    Ok(rules)
}

fn parse_peer(obj: &Map<String, Value>, base: &str) -> Result<Peer, FieldError> {
    let pod_selector = opt_selector(obj, "podSelector", base)?;
    let namespace_selector = opt_selector(obj, "namespaceSelector", base)?;
    let ip_block = opt_map(obj, "ipBlock", base)?
        .map(|b| parse_ip_block(b, &join(base, "ipBlock")))
        .transpose()?;
    match (
        ip_block,
        pod_selector.is_some() || namespace_selector.is_some(),
    ) {
        (None, false) => Err(err(base, "must specify a peer")),
        (Some(_), true) => Err(err(base, "may not specify both ipBlock and another peer")),
        (Some(block), false) => Ok(Peer::IpBlock(block)),
        (None, true) => Ok(Peer::Pods {
            pod_selector,
            namespace_selector,
        }),
    }
}

fn parse_ip_block(obj: &Map<String, Value>, base: &str) -> Result<IpBlock, FieldError> {
    let cidr_path = join(base, "cidr");
    let cidr_text = req_str(obj, "cidr", base)?;
    let cidr = Cidr::parse(cidr_text).map_err(|p| err(&cidr_path, p))?;
    let mut except = Vec::new();
    for (i, e) in opt_list(obj, "except", base)?.iter().enumerate() {
        let path = format!("{}[{i}]", join(base, "except"));
        let Value::String(text) = e else {
            return Err(err(
                path,
                format!("expected a string, found {}", describe(e)),
            ));
        };
        let e = Cidr::parse(text).map_err(|p| err(&path, p))?;
        if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
            return Err(err(
                path,
                format!(
                    "{text} is not inside cidr {cidr_text} (must be a strict subset of `cidr`)"
                ),
            ));
        }
        except.push(e);
    }
    Ok(IpBlock { cidr, except })
}

fn port_number(n: i64, path: &str) -> Result<u16, FieldError> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(err(
            path,
            format!("{n}: must be between 1 and 65535, inclusive"),
        ))
    }
}

fn parse_port(obj: &Map<String, Value>, base: &str) -> Result<PolicyPort, FieldError> {
    let protocol = match opt_str(obj, "protocol", base)? {
        None => Protocol::Tcp,
        Some(p) => Protocol::parse(p).ok_or_else(|| {
            err(
                join(base, "protocol"),
                format!("{p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            )
        })?,
    };
    let port_path = join(base, "port");
    let port = match field(obj, "port") {
        None => None,
        Some(v @ Value::Number(n)) => match n.as_i64() {
            Some(n) => Some(PortValue::Number(port_number(n, &port_path)?)),
            None => {
                return Err(err(
                    port_path,
                    format!("expected an integer or a port name, found {}", describe(v)),
                ));
            }
        },
        Some(Value::String(s)) => {
            names::iana_svc_name(s).map_err(|p| err(&port_path, p))?;
            Some(PortValue::Name(s.clone()))
        }
        Some(v) => {
            return Err(err(
                port_path,
                format!("expected an integer or a port name, found {}", describe(v)),
            ));
        }
    };
    let end_path = join(base, "endPort");
    let end_port = match opt_int(obj, "endPort", base)? {
        None => None,
        Some(end) => {
            let end = port_number(end, &end_path)?;
            match &port {
                None => {
                    return Err(err(
                        port_path,
                        "must be specified when `endPort` is specified",
                    ));
                }
                Some(PortValue::Name(_)) => {
                    return Err(err(
                        end_path,
                        "may not be specified when `port` is non-numeric",
                    ));
                }
                Some(PortValue::Number(p)) if end < *p => {
                    return Err(err(
                        end_path,
                        format!("{end}: must be greater than or equal to `port` ({p})"),
                    ));
                }
                Some(PortValue::Number(_)) => Some(end),
            }
        }
    };
    Ok(PolicyPort {
        protocol,
        port,
        end_port,
    })
}
