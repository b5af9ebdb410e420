//! weir-cni: Weir's CNI plugin, as a library (the `weir-cni` binary is a thin
//! wrapper around [`plugin::run`]).
//!
//! A container runtime runs the binary with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH` in the environment and
//! the network configuration on stdin (CNI spec 0.3.0 - 1.1.0). ADD gives the pod
//! a veth pair routed through the node (no bridge), addresses from this node's
//! pod CIDRs, and registers the endpoint with the agent so that its eBPF
//! programs are attached before the pod sends its first packet.
//!
//! # Network configuration
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
//! Field by field, with defaults and limits: see [`config`]. A bad field is CNI
//! error 7 with the field's JSON path in the message.
//!
//! # Modules
//!
//! - [`env`](mod@env): the invocation's environment variables and `CNI_ARGS`;
//! - [`config`]: the network configuration;
//! - [`ipam`]: address management behind the [`ipam::Ipam`] trait (overlay mode);
//! - [`netns`]: running netlink work inside a pod's namespace;
//! - [`netlink`]: the few rtnetlink operations used;
//! - [`setup`]: veth, addresses, routes, neighbours and sysctls of an attachment;
//! - [`result`]: result, VERSION answer and error objects, and the error codes;
//! - [`plugin`]: the commands and the mapping of failures to codes.

use std::net::{Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};

pub mod config;
pub mod env;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod setup;

pub use config::{CniVersion, NetConf, SUPPORTED_VERSIONS};
pub use env::{CniArgs, CniEnv, Command};
pub use plugin::PluginError;
pub use result::{CniError, CniResult};

/// The pods' IPv4 gateway: a link-local address nobody owns, answered by proxy
/// ARP on the host veth (and pinned by a permanent neighbour entry in the pod).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pods' IPv6 gateway, configured on every host veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Prefix of every host-side veth weir-cni creates.
pub const HOST_VETH_PREFIX: &str = "weir";

/// Name of the host-side veth for `container_id` / `ifname`: `weir` followed by
/// the first 11 hex digits of SHA-256(`container_id` NUL `ifname`), 15 bytes in
/// all (the kernel's limit). Deterministic, so DEL finds it without state and
/// the agent can recompute it.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_VETH_PREFIX}{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_short_stable_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weir"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(host_veth_name("ab", "ceth0"), a);
        // Pinned value: the agent and lab may recompute names, so the scheme must not drift.
        assert_eq!(host_veth_name("c1", "eth0"), expected_c1_eth0());
    }

    fn expected_c1_eth0() -> String {
        let mut h = Sha256::new();
        h.update(b"c1\0eth0");
        let d = h.finalize();
        format!(
            "weir{:02x}{:02x}{:02x}{:02x}{:02x}{:x}",
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5] >> 4
        )
    }
}
