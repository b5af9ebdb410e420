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
}

impl NamespaceSpec {
    /// A namespace without labels.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
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
