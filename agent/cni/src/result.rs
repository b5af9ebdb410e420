//! What the plugin writes on stdout: the ADD result, the VERSION answer, and the
//! spec's error object.
//!
//! The result is built once in the CNI 1.x shape and then adjusted for the
//! version the runtime asked for: 0.3.x/0.4.0 add `ips[].version`, and only
//! 1.1.0 carries `interfaces[].mtu`. This module does no I/O.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{CniVersion, SUPPORTED_VERSIONS};

/// One interface the plugin created or touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (only emitted for 1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Path of the network namespace the interface lives in; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address given to the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the prefix length it has on the interface (/32, /128).
    pub address: IpNetwork,
    /// The default gateway for this address family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route inside the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop; absent for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The ADD result (CNI 1.x "Success" object without `cniVersion`, which
/// [`CniResult::to_json`] adds).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Host veth first, then the pod interface.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The container's addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl CniResult {
    /// The result as JSON for `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut v = serde_json::to_value(self).expect("result types always serialize");
        let obj = v.as_object_mut().expect("a struct serializes to an object");
        if version < CniVersion::V1_1_0
            && let Some(Value::Array(ifaces)) = obj.get_mut("interfaces")
        {
            for i in ifaces.iter_mut().filter_map(Value::as_object_mut) {
                i.remove("mtu");
            }
        }
        if version < CniVersion::V1_0_0
            && let Some(Value::Array(ips)) = obj.get_mut("ips")
        {
            for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                let fam = match ip.get("address").and_then(Value::as_str) {
                    Some(a) if a.contains(':') => "6",
                    _ => "4",
                };
                ip.insert("version".to_string(), json!(fam));
            }
        }
        obj.insert("cniVersion".to_string(), json!(version.as_str()));
        obj.insert("dns".to_string(), json!({}));
        v
    }

    /// Reads the parts of a `prevResult` that CHECK compares (any supported
    /// version's shape; unknown fields are ignored).
    pub fn from_json(v: &Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v.clone())
    }
}

/// The answer to VERSION.
pub fn version_json(requested: &str) -> Value {
    json!({
        "cniVersion": requested,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The spec's error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// Version of the caller, or the latest one when the caller's is unknown.
    pub cni_version: String,
    /// Spec code (1-11) or plugin code (>= 100).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation (the full error chain).
    pub details: String,
}

/// CNI error codes. 1-11 are the spec's; 100 and up are weir-cni's own.
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (no cleanup needed).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (files, netlink, sysctl).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETCONF: u32 = 7;
    /// Try again later: a transient condition (the agent is not reachable).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// weir-cni: a pod CIDR has no free address.
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// weir-cni: the agent answered but refused or garbled the request.
    pub const AGENT_REFUSED: u32 = 101;
    /// weir-cni: CHECK found something ADD made missing or different.
    pub const CHECK_FAILED: u32 = 102;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weir0123456789a".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "11:22:33:44:55:66".into(),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.2/32".parse().expect("cidr"),
                    gateway: Some("169.254.1.1".parse().expect("ip")),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::2/128".parse().expect("cidr"),
                    gateway: Some("fe80::1".parse().expect("ip")),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some("169.254.1.1".parse().expect("ip")),
            }],
        }
    }

    #[test]
    fn shape_1_0_0() {
        let v = sample().to_json(CniVersion::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["interfaces"][0]["name"], "weir0123456789a");
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none(), "mtu is 1.1 only");
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(v["ips"][0]["address"], "10.244.1.2/32");
        assert_eq!(v["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn shape_old_and_new() {
        let v = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        let back = CniResult::from_json(&v).expect("round trip");
        assert_eq!(back, sample());
    }

    #[test]
    fn version_answer() {
        let v = version_json("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(5));
    }
}
