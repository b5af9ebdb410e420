//! The network configuration weir-cni reads on stdin, and the CNI versions it speaks.
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "weir", "type": "weir-cni",
//!   "agentSocket": "/var/run/weir/weir.sock",
//!   "mtu": 1500,
//!   "ipam": { "mode": "overlay",
//!             "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
//!             "dataDir": "/var/lib/weir/ipam" } }
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `cniVersion` | yes | one of [`SUPPORTED_VERSIONS`]; the result is shaped for it |
//! | `name` | yes | network name: letters, digits, `_`, `.`, `-`; IPAM state is kept per name |
//! | `type` | no | the runtime's business (it picks the binary); not checked |
//! | `agentSocket` | no | the agent's local API socket, default [`weir_localapi::DEFAULT_SOCKET`] |
//! | `mtu` | no | MTU of both veth ends, 68..=65535 (>= 1280 with IPv6); default: the kernel's (1500) |
//! | `ipam.mode` | no | `"overlay"` (the default and, for now, the only mode) |
//! | `ipam.podCIDRs` | yes | this node's pod ranges: at most one IPv4 and one IPv6 (both = dual-stack); each must be a network address, IPv4 at most /30, IPv6 at most /126 |
//! | `ipam.dataDir` | no | absolute directory for allocations, default [`DEFAULT_IPAM_DATA_DIR`] |
//!
//! Unknown fields are ignored, as CNI conventions ask. `prevResult` is kept for CHECK.
//! This module only parses and validates; a bad value is a [`ConfigError`]
//! naming the field (CNI code 7), an unsupported `cniVersion` is code 1.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::Value;

/// Where overlay IPAM keeps its allocations unless `ipam.dataDir` says otherwise.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/weir/ipam";

/// The CNI versions this plugin accepts and can shape results for.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A problem with the network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// stdin is not JSON at all (CNI code 6).
    #[error("network configuration is not valid JSON: {source}")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    /// `cniVersion` is one this plugin does not speak (CNI code 1).
    #[error("cniVersion {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    IncompatibleVersion(String),
    /// A field is missing, of the wrong type, or has a bad value (CNI code 7).
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field, e.g. `ipam.podCIDRs[1]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A CNI specification version this plugin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds `interfaces[].mtu`, GC and STATUS.
    V1_1_0,
}

impl CniVersion {
    /// The newest version, used when the caller did not say.
    pub const LATEST: Self = Self::V1_1_0;

    /// Parses a version string; `None` if unsupported.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "0.3.0" => Some(Self::V0_3_0),
            "0.3.1" => Some(Self::V0_3_1),
            "0.4.0" => Some(Self::V0_4_0),
            "1.0.0" => Some(Self::V1_0_0),
            "1.1.0" => Some(Self::V1_1_0),
            _ => None,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name`: the network name.
    pub name: String,
    /// `type` as given (empty when absent).
    pub plugin_type: String,
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `mtu`; `None` keeps the kernel default.
    pub mtu: Option<u32>,
    /// `ipam`.
    pub ipam: IpamConfig,
    /// `prevResult`, given by the runtime on CHECK (and DEL) of a chain.
    pub prev_result: Option<Value>,
}

/// How the plugin obtains pod addresses. A later mode will be added as another variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamConfig {
    /// Addresses from this node's pod CIDRs, allocated in files under `dataDir`.
    Overlay(OverlayIpamConfig),
}

/// `ipam` with `"mode": "overlay"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayIpamConfig {
    /// `podCIDRs`: at most one per address family.
    pub pod_cidrs: Vec<IpNetwork>,
    /// `dataDir`.
    pub data_dir: PathBuf,
}

impl NetConf {
    /// Parses and validates the bytes a runtime wrote to stdin.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|source| ConfigError::Decode { source })?;
        let obj = root
            .as_object()
            .ok_or_else(|| ConfigError::invalid("(root)", "must be a JSON object"))?;

        let version = req_str(obj, "cniVersion", "cniVersion")?;
        let cni_version = CniVersion::parse(version)
            .ok_or_else(|| ConfigError::IncompatibleVersion(version.to_string()))?;

        let name = req_str(obj, "name", "name")?.to_string();
        if !is_safe_name(&name) {
            return Err(ConfigError::invalid(
                "name",
                format!(
                    "{name:?} must start with a letter or digit and contain only letters, digits, '_', '.', '-'"
                ),
            ));
        }
        let plugin_type = opt_str(obj, "type", "type")?.unwrap_or("").to_string();
        let agent_socket = PathBuf::from(
            opt_str(obj, "agentSocket", "agentSocket")?.unwrap_or(weir_localapi::DEFAULT_SOCKET),
        );

        let ipam_value = obj
            .get("ipam")
            .ok_or_else(|| ConfigError::invalid("ipam", "missing"))?;
        let ipam = parse_ipam(ipam_value)?;

        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let mtu = v
                    .as_u64()
                    .ok_or_else(|| ConfigError::invalid("mtu", "must be a positive integer"))?;
                let has_v6 = match &ipam {
                    IpamConfig::Overlay(o) => o.pod_cidrs.iter().any(IpNetwork::is_ipv6),
                };
                let min = if has_v6 { 1280 } else { 68 };
                if !(min..=65535).contains(&mtu) {
                    return Err(ConfigError::invalid(
                        "mtu",
                        format!("{mtu} is outside {min}..=65535"),
                    ));
                }
                Some(mtu as u32)
            }
        };

        Ok(Self {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            mtu,
            ipam,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
        })
    }
}

/// Reads only `cniVersion` from whatever is on stdin, so that an error answer can
/// carry the caller's version even when the rest of the configuration is bad.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

fn parse_ipam(v: &Value) -> Result<IpamConfig, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ConfigError::invalid("ipam", "must be a JSON object"))?;
    let mode = opt_str(obj, "mode", "ipam.mode")?.unwrap_or("overlay");
    match mode {
        "overlay" => {}
        other => {
            return Err(ConfigError::invalid(
                "ipam.mode",
                format!("{other:?} is not supported (supported: \"overlay\")"),
            ));
        }
    }

    let cidrs = obj
        .get("podCIDRs")
        .ok_or_else(|| ConfigError::invalid("ipam.podCIDRs", "missing"))?
        .as_array()
        .ok_or_else(|| ConfigError::invalid("ipam.podCIDRs", "must be an array of CIDR strings"))?;
    if cidrs.is_empty() {
        return Err(ConfigError::invalid(
            "ipam.podCIDRs",
            "must hold at least one CIDR",
        ));
    }
    let mut pod_cidrs: Vec<IpNetwork> = Vec::with_capacity(cidrs.len());
    for (i, c) in cidrs.iter().enumerate() {
        let field = format!("ipam.podCIDRs[{i}]");
        let s = c
            .as_str()
            .ok_or_else(|| ConfigError::invalid(&field, "must be a string"))?;
        let net = parse_pod_cidr(s).map_err(|reason| ConfigError::invalid(&field, reason))?;
        if pod_cidrs.iter().any(|p| p.is_ipv4() == net.is_ipv4()) {
            return Err(ConfigError::invalid(
                &field,
                format!(
                    "{s}: a second {} CIDR; give at most one IPv4 and one IPv6 CIDR",
                    if net.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        pod_cidrs.push(net);
    }

    let data_dir =
        PathBuf::from(opt_str(obj, "dataDir", "ipam.dataDir")?.unwrap_or(DEFAULT_IPAM_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(ConfigError::invalid(
            "ipam.dataDir",
            format!("{} must be an absolute path", data_dir.display()),
        ));
    }
    Ok(IpamConfig::Overlay(OverlayIpamConfig {
        pod_cidrs,
        data_dir,
    }))
}

/// A pod CIDR must be written as its network address and leave at least one
/// address after the network address and the node's router address (and, for
/// IPv4, the broadcast address).
fn parse_pod_cidr(s: &str) -> Result<IpNetwork, String> {
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR (missing /prefix)"));
    }
    let net: IpNetwork = s
        .parse()
        .map_err(|e| format!("{s:?} is not a valid CIDR: {e}"))?;
    if net.ip() != net.network() {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        ));
    }
    let (max_prefix, fam) = match net.ip() {
        IpAddr::V4(_) => (30, "IPv4"),
        IpAddr::V6(_) => (126, "IPv6"),
    };
    if net.prefix() > max_prefix {
        return Err(format!(
            "{s:?} leaves no address for pods ({fam} needs a prefix of at most /{max_prefix})"
        ));
    }
    Ok(net)
}

/// Names used as directory names must not climb out of the data directory.
pub(crate) fn is_safe_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn req_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str, ConfigError> {
    match opt_str(obj, key, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(ConfigError::invalid(field, "must not be empty")),
        None => Err(ConfigError::invalid(field, "missing")),
    }
}

fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ConfigError::invalid(field, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, ConfigError> {
        NetConf::parse(s.as_bytes())
    }

    fn field_of(r: Result<NetConf, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn full_dual_stack_config() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"weir","type":"weir-cni","agentSocket":"/run/x.sock","mtu":1450,
                "ipam":{"mode":"overlay","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],"dataDir":"/tmp/ipam"},
                "somethingElse": {"ignored": true}}"#,
        )
        .expect("valid config");
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name, "weir");
        assert_eq!(c.agent_socket, PathBuf::from("/run/x.sock"));
        assert_eq!(c.mtu, Some(1450));
        let IpamConfig::Overlay(o) = &c.ipam;
        assert_eq!(o.pod_cidrs.len(), 2);
        assert_eq!(o.data_dir, PathBuf::from("/tmp/ipam"));
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"cniVersion":"0.4.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/30"]}}"#)
            .expect("minimal config");
        assert_eq!(c.agent_socket, PathBuf::from(weir_localapi::DEFAULT_SOCKET));
        assert_eq!(c.mtu, None);
        let IpamConfig::Overlay(o) = &c.ipam;
        assert_eq!(o.data_dir, PathBuf::from(DEFAULT_IPAM_DATA_DIR));
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert_eq!(
            field_of(parse(r#"{"cniVersion":"1.0.0","name":"n"}"#)),
            "ipam"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"mode":"kubernetes","podCIDRs":["10.0.0.0/24"]}}"#
            )),
            "ipam.mode"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/24","10.1.0.0/33"]}}"#
            )),
            "ipam.podCIDRs[1]"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":["10.0.0.5/24"]}}"#
            )),
            "ipam.podCIDRs[0]"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/31"]}}"#
            )),
            "ipam.podCIDRs[0]"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}}"#
            )),
            "ipam.podCIDRs[1]"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":[]}}"#
            )),
            "ipam.podCIDRs"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/24"],"dataDir":"rel"}}"#
            )),
            "ipam.dataDir"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"../x","ipam":{"podCIDRs":["10.0.0.0/24"]}}"#
            )),
            "name"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","ipam":{"podCIDRs":["10.0.0.0/24"]}}"#
            )),
            "name"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","mtu":1000,"ipam":{"podCIDRs":["fd00::/64"]}}"#
            )),
            "mtu"
        );
        assert_eq!(
            field_of(parse(
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"big","ipam":{"podCIDRs":["10.0.0.0/24"]}}"#
            )),
            "mtu"
        );
        assert_eq!(field_of(parse(r#"{"name":"n"}"#)), "cniVersion");
    }

    #[test]
    fn version_and_decode_errors() {
        assert!(matches!(
            parse(r#"{"cniVersion":"0.2.0","name":"n","ipam":{"podCIDRs":["10.0.0.0/24"]}}"#),
            Err(ConfigError::IncompatibleVersion(v)) if v == "0.2.0"
        ));
        assert!(matches!(parse("not json"), Err(ConfigError::Decode { .. })));
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(b"nope"), None);
    }

    #[test]
    fn versions_round_trip() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).map(CniVersion::as_str), Some(v));
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V0_4_0);
    }
}
