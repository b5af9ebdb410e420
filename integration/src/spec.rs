//! What a lab is made of, as plain data: namespaces, pods and their ports,
//! protocols, IP families. Shared by the lab API and the scenario format, so
//! both spell things the same way.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A Kubernetes namespace of the lab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    /// The lab adds `kubernetes.io/metadata.name` itself.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. `policy.weir.dev/audit: "true"`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceSpec {
    /// A namespace without labels.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }
}

/// Transport protocol of a probe or a server port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
    /// ICMP / ICMPv6 echo; probes only (servers do not need it: the kernel answers).
    #[serde(rename = "ICMP", alias = "icmp")]
    Icmp,
}

impl Protocol {
    /// TCP or UDP from its name in any case; None for anything else.
    pub fn parse_transport(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("tcp") {
            Some(Protocol::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Some(Protocol::Udp)
        } else {
            None
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Icmp => "ICMP",
        })
    }
}

/// IP family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    /// Whether `ip` is of this family.
    pub fn matches(self, ip: &std::net::IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, std::net::IpAddr::V4(_)) | (Family::V6, std::net::IpAddr::V6(_))
        )
    }
}

impl TryFrom<u8> for Family {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            4 => Ok(Family::V4),
            6 => Ok(Family::V6),
            other => Err(format!("family must be 4 or 6, not {other}")),
        }
    }
}

impl From<Family> for u8 {
    fn from(f: Family) -> u8 {
        match f {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// One server port of a pod (a container port in its manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port name, usable as a named port in policies (at most 15 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortSpec {
    /// A TCP port named `serve-<port>-tcp`.
    pub fn tcp(port: u16) -> Self {
        Self {
            name: Some(format!("serve-{port}-tcp")),
            port,
            protocol: Protocol::Tcp,
        }
    }

    /// A UDP port named `serve-<port>-udp`.
    pub fn udp(port: u16) -> Self {
        Self {
            name: Some(format!("serve-{port}-udp")),
            port,
            protocol: Protocol::Udp,
        }
    }
}

/// A pod of the lab: a network namespace with one server per port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// `hostNetwork: true`: no network namespace of its own and no CNI ADD;
    /// its servers run in the node's namespace, in a cgroup of their own,
    /// and its addresses are the node's.
    #[serde(
        default,
        rename = "hostNetwork",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_network: bool,
}

impl PodSpec {
    /// A pod without labels or ports.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a port.
    pub fn port(mut self, port: PortSpec) -> Self {
        self.ports.push(port);
        self
    }

    /// Makes it a `hostNetwork` pod (see the field of the same name).
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// `namespace/name`, the key pods go by everywhere in the lab.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Whether `s` is a valid DNS-1123 label (namespace and pod names in the lab).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Splits `ns/name` into its parts.
pub fn split_pod_key(key: &str) -> Option<(&str, &str)> {
    let (ns, name) = key.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// What a probe is expected to find: an answer (`connected`) or none
/// (`blocked`: dropped, refused, unreachable, or no reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expectation {
    Connected,
    Blocked,
}

impl Expectation {
    /// Whether a probe that did (`connected`) or did not get through meets
    /// this expectation.
    pub fn holds(self, connected: bool) -> bool {
        (self == Expectation::Connected) == connected
    }

    /// The expectation a probe's outcome would have met.
    pub fn of(connected: bool) -> Self {
        if connected {
            Expectation::Connected
        } else {
            Expectation::Blocked
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expectation::Connected => "connected",
            Expectation::Blocked => "blocked",
        })
    }
}

/// A port and its transport protocol, written `80/TCP` (protocol in any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortProto {
    /// Parses `PORT/PROTO`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (port, proto) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not PORT/PROTO (e.g. 80/TCP)"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port {port:?} is not 1-65535"))?;
        let protocol = Protocol::parse_transport(proto)
            .ok_or_else(|| format!("{s:?}: protocol {proto:?} is not TCP or UDP"))?;
        Ok(Self { port, protocol })
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}
