//! The one ABI between Weir's eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding and a compile-time
//! size check, because the same bytes are written by the kernel programs
//! (target `bpfel-unknown-none`) and read by the agent. This crate must stay
//! `no_std` and free of logic beyond constants and plain records: parsing,
//! policy and enrichment live elsewhere.
#![no_std]

/// Why an event was emitted by the in-kernel aggregation.
pub mod emit {
    /// First packet of a connection seen at this observation point.
    pub const NEW: u8 = 1;
    /// A TCP flag (SYN, SYN-ACK, FIN, RST) appeared for the first time in this direction.
    pub const TCP_FLAG: u8 = 2;
    /// Periodic report of a long-lived connection (at most once per report interval).
    pub const REPORT: u8 = 3;
    /// `aggregation: none`: one event per packet.
    pub const PACKET: u8 = 4;
}

/// Where on the endpoint's host-side veth the packet was seen.
///
/// A cgroup endpoint (a hostNetwork pod, see [`CgroupEndpoint`]) has no
/// veth: its cgroup's `cgroup_skb/egress` hook reports `FROM_ENDPOINT` and
/// its `cgroup_skb/ingress` hook `TO_ENDPOINT`.
pub mod obs {
    /// tc ingress of the host-side veth: the packet leaves the pod (Hubble FROM_ENDPOINT).
    pub const FROM_ENDPOINT: u8 = 1;
    /// tc egress of the host-side veth: the packet is delivered to the pod (Hubble TO_ENDPOINT).
    pub const TO_ENDPOINT: u8 = 2;
}

/// Verdicts, numbered as Hubble's `flow.Verdict`.
pub mod verdict {
    pub const FORWARDED: u8 = 1;
    pub const DROPPED: u8 = 2;
    pub const AUDIT: u8 = 4;
}

/// Drop reasons, numbered as Hubble's `flow.DropReason`.
pub mod drop_reason {
    /// No NetworkPolicy rule allows the packet (Hubble `POLICY_DENIED`).
    pub const POLICY_DENIED: u8 = 133;
}

/// Security identities as the datapath sees them (the numbering of
/// `weir_state::identity`: 1..=255 reserved, pods 256..=65535).
pub mod identity {
    /// In a [`super::PolicyKey`]: any peer (a rule without peers). Never an
    /// address's identity.
    pub const ANY: u32 = 0;
    /// The local node (and host-network pods without their own identity).
    pub const HOST: u32 = 1;
    /// An address that is neither a known pod nor a node.
    pub const WORLD: u32 = 2;
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: u32 = 6;
    /// First identity of a CIDR cell (`CIDR_CELLS` values): an `ipBlock`
    /// address range, numbered from here up.
    pub const CIDR_BASE: u32 = 1 << 24;
}

/// Policy directions in a [`PolicyKey`], as seen by the endpoint.
pub mod direction {
    /// Traffic into the endpoint (checked at `obs::TO_ENDPOINT`).
    pub const INGRESS: u8 = 1;
    /// Traffic out of the endpoint (checked at `obs::FROM_ENDPOINT`).
    pub const EGRESS: u8 = 2;
}

/// Bits of [`EndpointPolicy::flags`].
pub mod ep_flag {
    /// A policy with type Ingress selects the endpoint: ingress not allowed by
    /// a rule is denied.
    pub const INGRESS_ENFORCED: u8 = 0x01;
    /// Likewise for egress.
    pub const EGRESS_ENFORCED: u8 = 0x02;
    /// Audit mode: a would-be drop passes with verdict AUDIT.
    pub const AUDIT: u8 = 0x04;
}

/// Bits of [`CtValue::policy_state`].
pub mod ct_policy {
    /// The connection was denied by policy and passes only because of audit
    /// mode: its events carry verdict AUDIT.
    pub const AUDITED: u8 = 0x01;
}

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Bits of [`FlowEvent::flags`].
pub mod flag {
    /// The packet travels from the responder to the initiator of the connection.
    pub const REPLY: u8 = 0x01;
    /// The packet is an IP fragment; L4 fields are only present in the first one.
    pub const FRAGMENT: u8 = 0x02;
    /// The L4 header was absent or unparsed (e.g. a non-first fragment, an unknown protocol).
    pub const NO_L4: u8 = 0x04;
}

/// Address families in [`FlowEvent::family`].
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Indices of the per-CPU `PARSE_ERRORS` counters: why a packet could not be
/// (fully) parsed. Such packets are always passed, never dropped.
pub mod parse_error {
    /// Shorter than an Ethernet header.
    pub const TRUNCATED_ETH: u32 = 0;
    /// Shorter than its IPv4 header / IHL smaller than 5 / total length inconsistent.
    pub const BAD_IPV4: u32 = 1;
    /// Shorter than the fixed IPv6 header or a truncated extension header.
    pub const BAD_IPV6: u32 = 2;
    /// More IPv6 extension headers than the program walks.
    pub const IPV6_EXT_LIMIT: u32 = 3;
    /// L4 header truncated (TCP data offset, UDP or ICMP header shorter than required).
    pub const TRUNCATED_L4: u32 = 4;
    /// Ethertype other than IPv4/IPv6 (ARP and friends): not an error, counted for visibility.
    pub const NON_IP: u32 = 5;
    /// Number of reasons; size of the map.
    pub const COUNT: u32 = 6;

    /// Metric label of each reason, indexed by the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "truncated_ethernet",
        "bad_ipv4",
        "bad_ipv6",
        "ipv6_extension_limit",
        "truncated_l4",
        "non_ip",
    ];
}

/// Indices of the per-CPU `STATS` counters.
pub mod stat {
    /// Packets seen by the programs (both directions).
    pub const PACKETS: u32 = 0;
    /// Bytes seen by the programs.
    pub const BYTES: u32 = 1;
    /// Events written into the ring buffer.
    pub const EVENTS_EMITTED: u32 = 2;
    /// Events the kernel could not reserve in the ring buffer (lost, reported by the agent).
    pub const EVENTS_LOST: u32 = 3;
    /// New conntrack entries created.
    pub const CT_CREATED: u32 = 4;
    /// Conntrack insertions that failed.
    pub const CT_INSERT_FAILED: u32 = 5;
    /// Packets dropped by the datapath (any reason).
    pub const DROPPED: u32 = 6;
    /// Packets dropped because no policy rule allowed them.
    pub const POLICY_DENIED: u32 = 7;
    /// Packets that policy would have dropped, passed by audit mode.
    pub const POLICY_AUDITED: u32 = 8;
    /// New connections whose policy verdict was looked up (conntrack misses
    /// and entries older than the current policy generation).
    pub const POLICY_LOOKUPS: u32 = 9;
    /// Packets at a cgroup hook whose socket's cgroup (and every ancestor
    /// of it) has no `CGROUP_EP` entry: passed unpoliced and unobserved.
    pub const CGROUP_UNKNOWN: u32 = 10;
    pub const COUNT: u32 = 11;
}

/// The runtime configuration of the programs, one entry of the `CONFIG` array map,
/// written by the agent before it attaches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Minimum nanoseconds between two REPORT events of one connection (default 5 s).
    pub report_interval_ns: u64,
    /// 0: aggregate (NEW, TCP_FLAG, REPORT); 1: emit one event per packet.
    pub aggregation_none: u8,
    pub _pad: [u8; 3],
    /// Bumped by the agent after each change of the policy maps; a conntrack
    /// entry decided under another generation has its forward direction
    /// checked again.
    pub policy_gen: u32,
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);

/// Connection-tracking key: the normalized 5-tuple at one observation interface.
///
/// Normalized means the (address, port) pair that sorts lower is `a`, so both
/// directions of a connection find the same entry. IPv4 addresses use the first
/// four bytes of the 16-byte fields and zero the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    /// Host-side interface index: each endpoint tracks its own view of a connection.
    pub ifindex: u32,
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// Connection-tracking value. Direction 0 is initiator -> responder ("forward").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// When the last event for this connection was emitted.
    pub last_report_ns: u64,
    /// Union of TCP flags seen per direction.
    pub tcp_flags: [u8; 2],
    /// 1 when the initiator is `addr_a`/`port_a` of the key, 2 when it is `b`.
    pub initiator: u8,
    /// `ct_policy::*` bits.
    pub policy_state: u8,
    /// `DatapathConfig::policy_gen` when the policy verdict was last decided.
    pub policy_gen: u32,
    /// Attribution id of that verdict (see [`FlowEvent::policy_attr`]).
    pub policy_attr: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 72);

/// The fixed-size record written into the ring buffer, one per emitted event.
///
/// Addresses are in network byte order, IPv4 in the first four bytes. Ports are
/// host byte order. Counters are the connection's totals at this observation
/// point when the event was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_boot_ns()` when the packet was seen.
    pub ts_ns: u64,
    /// When the connection was first seen (boot-time ns).
    pub first_seen_ns: u64,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Packets and bytes of the connection so far: [forward, reverse].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub ifindex: u32,
    /// Length of this packet on the wire.
    pub pkt_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// `family::IPV4` or `family::IPV6`.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, others passed through).
    pub proto: u8,
    /// TCP flags of this packet.
    pub tcp_flags: u8,
    /// ICMP type and code (when proto is ICMP/ICMPv6).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// One of `obs::*`.
    pub obs_point: u8,
    /// One of `emit::*`.
    pub emit_reason: u8,
    /// One of `verdict::*`.
    pub verdict: u8,
    /// Hubble drop reason number when `verdict` is DROPPED, else 0.
    pub drop_reason: u8,
    /// `flag::*` bits.
    pub flags: u8,
    /// Union of TCP flags seen so far: [forward, reverse].
    pub tcp_flags_seen: [u8; 2],
    /// Which policies decided the verdict: an id of the agent's attribution
    /// table (the allowing rules' policies, or for a drop or audit the
    /// policies that isolate the endpoint in that direction); 0 when no
    /// policy applies.
    pub policy_attr: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 112);

/// Per-endpoint policy state, value of `POLICY_EP` keyed by the host-side
/// interface index. An interface without an entry is not policed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// The endpoint's own security identity.
    pub identity: u32,
    /// `ep_flag::*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Attribution id reported when ingress is denied (the policies that
    /// isolate the endpoint for ingress).
    pub ingress_deny_attr: u32,
    /// Likewise for egress.
    pub egress_deny_attr: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointPolicy>() == 16);

/// Value of `CGROUP_EP`, keyed by a cgroup v2 id (the inode number of the
/// cgroup's directory, what `bpf_skb_cgroup_id` returns): the endpoint
/// whose sockets live in that cgroup. Used for hostNetwork pods, which share
/// the node's network namespace and addresses and so are told apart by the
/// cgroup of their sockets. The agent writes the pod's cgroup and each of
/// its descendants (containers); a descendant without an entry is found
/// through its nearest registered ancestor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEndpoint {
    /// Synthetic endpoint id in the key space of `POLICY_EP`, `POLICY` and
    /// [`CtKey::ifindex`], reported as [`FlowEvent::ifindex`]; ids the agent
    /// assigns have [`CGROUP_ENDPOINT_BIT`] set so they never collide with an
    /// interface index.
    pub endpoint: u32,
    /// The endpoint's security identity, which other endpoints' policies
    /// see instead of `identity::HOST` for its traffic.
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupEndpoint>() == 8);

/// Set in every synthetic endpoint id of a [`CgroupEndpoint`]: interface
/// indexes are positive `int`s and never have it.
pub const CGROUP_ENDPOINT_BIT: u32 = 0x8000_0000;

/// Data of a `POLICY` LPM-trie key (the trie's key is this prefixed by a
/// 32-bit prefix length). Matched bit by bit in memory order: endpoint and
/// identity always whole (an `identity::ANY` entry is a separate lookup),
/// then direction, then protocol (absent: any protocol), then the
/// destination port in network byte order (a prefix of it: a port range
/// decomposed into aligned blocks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Host-side interface index of the endpoint the rule belongs to.
    pub endpoint: u32,
    /// Peer identity (pod identity, reserved identity, a CIDR cell) or `identity::ANY`.
    pub identity: u32,
    /// `direction::*`.
    pub direction: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Prefix lengths of `POLICY` keys.
pub mod policy_prefix {
    /// Endpoint, identity and direction: any protocol, any port.
    pub const ANY_PROTO: u32 = 72;
    /// ... and the protocol: any port of it.
    pub const ANY_PORT: u32 = 80;
    /// ... and the whole port.
    pub const FULL: u32 = 96;
}

/// Value of a `POLICY` entry: the rule allows the traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Attribution id: the policies whose rules allow what this entry covers.
    pub attr: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// Data of an `IPCACHE` hash key and of a `CIDR_CELLS` LPM-trie key: an
/// address as 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, so an
/// IPv4 prefix of length n is the trie prefix 96 + n).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

/// Map names, shared so the agent looks up exactly what the programs define.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const STATS: &str = "STATS";
    pub const PARSE_ERRORS: &str = "PARSE_ERRORS";
    pub const CONFIG: &str = "CONFIG";
    /// Hash: host-side ifindex -> [`super::EndpointPolicy`].
    pub const POLICY_EP: &str = "POLICY_EP";
    /// LPM trie: [`super::PolicyKey`] -> [`super::PolicyValue`].
    pub const POLICY: &str = "POLICY";
    /// Hash: [`super::IpKey`] -> identity (pods and nodes).
    pub const IPCACHE: &str = "IPCACHE";
    /// LPM trie: [`super::IpKey`] -> CIDR cell identity (`ipBlock` ranges).
    pub const CIDR_CELLS: &str = "CIDR_CELLS";
    /// Hash: cgroup v2 id (u64) -> [`super::CgroupEndpoint`].
    pub const CGROUP_EP: &str = "CGROUP_EP";
}

/// Program names as they appear in the object file.
pub mod programs {
    /// Attached to tc ingress of the host-side veth (packets from the pod).
    pub const FROM_ENDPOINT: &str = "weir_from_endpoint";
    /// Attached to tc egress of the host-side veth (packets to the pod).
    pub const TO_ENDPOINT: &str = "weir_to_endpoint";
    /// `cgroup_skb/egress` of a hostNetwork pod's cgroup (packets its sockets send).
    pub const CGROUP_EGRESS: &str = "weir_cgroup_egress";
    /// `cgroup_skb/ingress` of a hostNetwork pod's cgroup (packets delivered to its sockets).
    pub const CGROUP_INGRESS: &str = "weir_cgroup_ingress";
}

/// Default sizes.
pub mod defaults {
    /// Ring buffer bytes (power of two, multiple of the page size).
    pub const EVENTS_RING_BYTES: u32 = 4 * 1024 * 1024;
    /// Conntrack LRU entries.
    pub const CONNTRACK_ENTRIES: u32 = 65_536;
    /// Default report interval for long-lived connections.
    pub const REPORT_INTERVAL_NS: u64 = 5_000_000_000;
    /// Policy LPM-trie entries (allocated on use, not preallocated).
    pub const POLICY_ENTRIES: u32 = 262_144;
    /// Policed endpoints on one node.
    pub const POLICY_ENDPOINTS: u32 = 4_096;
    /// Pod and node addresses known to the datapath.
    pub const IPCACHE_ENTRIES: u32 = 131_072;
    /// `ipBlock` cells.
    pub const CIDR_CELL_ENTRIES: u32 = 65_536;
    /// Cgroups of hostNetwork pods and their descendants.
    pub const CGROUP_ENDPOINT_ENTRIES: u32 = 16_384;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are repr(C), Copy, contain only integers and arrays of
    // integers, and have explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::EndpointPolicy {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::CgroupEndpoint {}
}
