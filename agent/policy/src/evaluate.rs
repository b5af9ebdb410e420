//! The datapath's policy decision, step by step, on a [`Compiled`]: what
//! the eBPF programs do on a new connection, written once more in plain
//! Rust so that tests (and `weir policy explain`) can ask the compiled maps
//! the same question the kernel asks.

use std::net::IpAddr;

use serde::Serialize;
use weir_common::{PolicyKey, ep_flag, identity, policy_prefix};

use crate::cidr::ip_key;
use crate::compiled::{Compiled, EndpointEntries};
use crate::ports::{mask_bytes, mask_policy_key};

/// Which step decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "identity")]
pub enum Lookup {
    /// The interface has no `POLICY_EP` entry: not policed.
    NoEndpoint,
    /// The direction is not enforced for the endpoint.
    NotEnforced,
    /// Hit with the peer's identity (lookup 1).
    Identity(u32),
    /// Hit with the peer address's CIDR cell (lookup 2).
    Cell(u32),
    /// Hit with `identity::ANY` (lookup 3).
    Any,
    /// No entry matched.
    Denied,
}

/// The decision for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// A rule allows it (or nothing enforces policy here).
    pub allowed: bool,
    /// Denied, but passed because the endpoint is in audit mode.
    pub audit: bool,
    /// Attribution id the datapath reports (0: no policy).
    pub attr: u32,
    pub lookup: Lookup,
}

impl Verdict {
    /// Whether the packet goes through (allowed, or denied in audit mode).
    pub fn passes(&self) -> bool {
        self.allowed || self.audit
    }
}

/// The L4 port the datapath keys on: the destination port for TCP, UDP and
/// SCTP, 0 for every other protocol.
pub fn datapath_port(proto: u8, port: u16) -> u16 {
    match proto {
        6 | 17 | 132 => port,
        _ => 0,
    }
}

/// Longest-prefix match in one endpoint's `POLICY` entries. Entries always
/// fix the endpoint (prefix >= 72), so no other endpoint's entry can match.
pub(crate) fn lpm_policy(entries: &EndpointEntries, key: &PolicyKey) -> Option<u32> {
    (0..=policy_prefix::FULL).rev().find_map(|plen| {
        entries
            .get(&(plen, mask_policy_key(key, plen)))
            .map(|v| v.attr)
    })
}

/// Longest-prefix match of an address in `CIDR_CELLS`.
pub fn cell_of(compiled: &Compiled, addr: IpAddr) -> Option<u32> {
    let key = ip_key(addr);
    (0..=128u32).rev().find_map(|plen| {
        let mut masked = key;
        mask_bytes(&mut masked.addr, plen);
        compiled.cidr_cells.get(&(plen, masked)).copied()
    })
}

/// The identity the datapath gives a peer address (`IPCACHE`, else WORLD).
pub fn identity_of(compiled: &Compiled, addr: IpAddr) -> u32 {
    compiled
        .ipcache
        .get(&ip_key(addr))
        .copied()
        .unwrap_or(identity::WORLD)
}

/// The datapath's decision for a new connection at endpoint `ifindex` in
/// `direction` (`direction::INGRESS`: `peer` is the source; `EGRESS`: the
/// destination), IP protocol `proto` and destination `port`.
pub fn evaluate(
    compiled: &Compiled,
    ifindex: u32,
    direction: u8,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Verdict {
    evaluate_parts(
        compiled,
        ifindex,
        direction,
        identity_of(compiled, peer),
        cell_of(compiled, peer),
        proto,
        port,
    )
}

/// [`evaluate`] with the peer's identity and cell already known.
pub(crate) fn evaluate_parts(
    compiled: &Compiled,
    ifindex: u32,
    direction: u8,
    peer_identity: u32,
    cell: Option<u32>,
    proto: u8,
    port: u16,
) -> Verdict {
    let pass = |lookup| Verdict {
        allowed: true,
        audit: false,
        attr: 0,
        lookup,
    };
    let Some(ep) = compiled.endpoints.get(&ifindex) else {
        return pass(Lookup::NoEndpoint);
    };
    let (bit, deny_attr) = if direction == weir_common::direction::INGRESS {
        (ep_flag::INGRESS_ENFORCED, ep.ingress_deny_attr)
    } else {
        (ep_flag::EGRESS_ENFORCED, ep.egress_deny_attr)
    };
    if ep.flags & bit == 0 {
        return pass(Lookup::NotEnforced);
    }
    let empty = EndpointEntries::new();
    let entries = compiled.policy.get(&ifindex).map_or(&empty, |e| &**e);
    let mut key = PolicyKey {
        endpoint: ifindex,
        identity: peer_identity,
        direction,
        proto,
        port: datapath_port(proto, port).to_be_bytes(),
    };
    let hit = |key: &PolicyKey, lookup| {
        lpm_policy(entries, key).map(|attr| Verdict {
            allowed: true,
            audit: false,
            attr,
            lookup,
        })
    };
    if let Some(v) = hit(&key, Lookup::Identity(peer_identity)) {
        return v;
    }
    if let Some(cell) = cell {
        key.identity = cell;
        if let Some(v) = hit(&key, Lookup::Cell(cell)) {
            return v;
        }
    }
    key.identity = identity::ANY;
    if let Some(v) = hit(&key, Lookup::Any) {
        return v;
    }
    Verdict {
        allowed: false,
        audit: ep.flags & ep_flag::AUDIT != 0,
        attr: deny_attr,
        lookup: Lookup::Denied,
    }
}
