//! Weir's kernel programs: tc classifiers on an endpoint's host-side veth,
//! and `cgroup_skb` programs on hostNetwork pods' cgroups.
//!
//! This crate owns the packet path only: parsing, connection tracking,
//! policy enforcement, in-kernel aggregation and the ring-buffer record. The
//! record layout, map keys and constants live in `weir-common`; loading,
//! attaching and reading belong to `weir-datapath`; what the policy maps
//! hold is computed by weir-policy. Only policy drops packets: a packet that
//! cannot be parsed always passes.
//!
//! # Hooks
//!
//! ## `weir_from_endpoint` (tc ingress of the host-side veth)
//!
//! Sees every packet the pod sends, before the host routes it. Observation
//! point `obs::FROM_ENDPOINT`. Attached with tcx on kernels >= 6.6, else as a
//! direct-action cls_bpf filter under the clsact qdisc.
//!
//! ## `weir_to_endpoint` (tc egress of the host-side veth)
//!
//! Sees every packet about to be delivered into the pod. Observation point
//! `obs::TO_ENDPOINT`. Same attach modes.
//!
//! ## `weir_cgroup_egress` / `weir_cgroup_ingress` (`cgroup_skb` hooks)
//!
//! A hostNetwork pod shares the node's namespace and addresses, so only the
//! cgroup of its sockets tells its traffic apart. Attached to each such
//! pod's cgroup v2 directory, they run for the packets its sockets send
//! (`cgroup_skb/egress`, reported as `obs::FROM_ENDPOINT`) and receive
//! (`cgroup_skb/ingress`, `obs::TO_ENDPOINT`), on every interface including
//! loopback. Per pod rather than once on a common parent: a parent's
//! programs would also run for every regular pod's sockets (cgroups do not
//! follow network namespaces), for nothing. [`observe_cgroup`] finds the
//! endpoint of the socket's cgroup in `CGROUP_EP` (or through its nearest
//! registered ancestor, see [`cgroup_endpoint`]; none: the packet passes,
//! counted as `CGROUP_UNKNOWN`), parses from the network header (there is
//! no link-layer header; `skb->protocol` gives the family) with
//! `bpf_skb_load_bytes`, as `bpf_skb_pull_data` is not available there,
//! then runs the same tracking, policy and events as the tc hooks with the
//! endpoint's synthetic id in place of the ifindex. A drop returns 0: a
//! datagram's `sendto()` then fails with `EPERM`, while TCP's `connect()`
//! ignores the failed SYN and retransmits it (dropped each time) until it
//! times out. On loopback the peer is the socket at the other end (a
//! socket lookup): the pod itself (its own traffic, never policed, tracked
//! or reported, as a pod's loopback traffic never reaches its veth),
//! another hostNetwork pod, or HOST.
//!
//! The tc hooks learn about hostNetwork pods too: a packet the node sends
//! into a pod still carries its socket at tc egress of the veth, and when
//! that socket's cgroup is a hostNetwork pod's, the pod's ingress policy
//! sees that pod's identity instead of HOST (see [`TcHook`]). At tc ingress
//! (the pod sending to the node's address) no local socket is known yet:
//! the node's addresses stay HOST there.
//!
//! All hooks run one body ([`observe`], [`observe_cgroup`]) parameterised by
//! the observation point:
//!
//! 1. Count the packet (`STATS[PACKETS]`, `STATS[BYTES]`).
//! 2. Parse Ethernet, IPv4 (options via IHL, fragments) or IPv6 (a bounded
//!    walk over at most [`MAX_IPV6_EXT`] extension headers), then TCP, UDP,
//!    ICMPv4 or ICMPv6. Headers are read by direct packet access (a load per
//!    field instead of a `bpf_skb_load_bytes` call per header); a header
//!    beyond the skb's linear data is first pulled in with
//!    `bpf_skb_pull_data` (see [`header`]). A header that cannot be read is
//!    a parse error: counted in `PARSE_ERRORS` and the packet passes
//!    untouched. Non-IP frames are counted as `NON_IP`.
//! 3. One conntrack lookup in the LRU map `CONNTRACK` (key normalised so
//!    both directions share the entry, scoped to the endpoint: the skb's
//!    ifindex, or a cgroup endpoint's synthetic id). A miss creates the
//!    entry and decides the initiator; so does a bare SYN on an entry that
//!    already saw FIN or RST (the ports were reused).
//!    Policy (see [`decide`]) is looked up for the forward direction of a
//!    new connection (egress of the endpoint at `FROM_ENDPOINT`, ingress at
//!    `TO_ENDPOINT`), and again for an established one when the agent has
//!    bumped the policy generation since it was decided. A denied packet is
//!    counted, reported as a DROPPED event (reason POLICY_DENIED, with the
//!    isolating policies' attribution) and dropped, and leaves no conntrack
//!    entry; in audit mode it passes and its connection reports AUDIT.
//!    Replies of a tracked connection are never policed.
//! 4. Decide whether to emit a `FlowEvent` into the ring buffer `EVENTS`:
//!    NEW, TCP_FLAG (first SYN/FIN/RST per direction), REPORT (at most once per
//!    report interval) or, with `aggregation_none`, PACKET for every packet.
//!    A failed ring reservation is counted in `STATS[EVENTS_LOST]`.
//! 5. Return [`TC_PASS`] (or [`TC_DROP`] for a policy drop); the cgroup
//!    hooks [`CGROUP_PASS`] / [`CGROUP_DROP`].
//!
//! # Concurrency
//!
//! Both directions of a connection may run on different CPUs at once.
//! Per-direction packet and byte counters use atomic adds (`lock xadd`, the
//! result is never used so it is valid on every BPF CPU version). The TCP
//! flag union and the report timestamp are plain stores: a race can at worst
//! emit one duplicate TCP_FLAG or REPORT event, which the agent tolerates, and
//! is cheaper than a compare-and-swap on every packet.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's AtomicU64 offers no
// fetch_add; the intrinsic lowers to BPF's atomic add, which the target has.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_CURRENT_NETNS, BPF_NOEXIST, TC_ACT_OK, bpf_sock, bpf_sock_tuple},
    helpers::generated::{
        bpf_ktime_get_boot_ns, bpf_sk_ancestor_cgroup_id, bpf_sk_cgroup_id, bpf_sk_lookup_tcp,
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, classifier, map},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SkBuffContext, TcContext},
};
use weir_common::{
    CgroupEndpoint, CtKey, CtValue, DatapathConfig, EndpointPolicy, FlowEvent, IpKey, PolicyKey,
    PolicyValue, ct_policy, defaults, direction, drop_reason, emit, ep_flag, family, flag,
    identity, obs, parse_error, policy_prefix, stat, tcp, verdict,
};

/// The value both hooks return to drop a packet (`TC_ACT_SHOT` and
/// `TCX_DROP` are both 2).
const TC_DROP: i32 = 2;

/// The value both hooks return: let the packet continue.
///
/// `TC_ACT_OK` (cls_bpf direct-action) and `TCX_PASS` (tcx) are both 0, so one
/// constant is right under either attach mode. It ends the classification on
/// this hook; returning `TC_ACT_UNSPEC`/`TCX_NEXT` (-1) would instead let
/// programs attached after ours run, which matters once other tc programs
/// share the veth, but then the final verdict would not be ours.
const TC_PASS: i32 = TC_ACT_OK;

/// What a `cgroup_skb` program returns to let a packet through. Egress
/// drops (0) surface as `EPERM` to the sending socket.
const CGROUP_PASS: i32 = 1;
/// What a `cgroup_skb` program returns to drop a packet.
const CGROUP_DROP: i32 = 0;

/// Every network namespace's loopback device has this index; a packet on it
/// at a cgroup hook never left the node.
const LOOPBACK_IFINDEX: u32 = 1;

/// How many cgroup levels below the root [`cgroup_endpoint`] looks for a
/// registered ancestor (kubelet's pod cgroups sit at level 3 to 5).
const MAX_CGROUP_DEPTH: i32 = 12;

/// How many IPv6 extension headers the parser walks before giving up
/// (`parse_error::IPV6_EXT_LIMIT`). Real traffic carries one or two.
const MAX_IPV6_EXT: usize = 6;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_DSTOPTS: u8 = 60;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// TCP flags that produce a TCP_FLAG event the first time they appear in a
/// direction. SYN in the reply direction is the SYN-ACK.
const TCP_EVENT_FLAGS: u8 = tcp::SYN | tcp::FIN | tcp::RST;

/// Flow events; sized by the agent at load time (`EbpfLoader::set_max_entries`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(defaults::EVENTS_RING_BYTES, 0);

/// Connection tracking; sized by the agent at load time. LRU so a full table
/// evicts idle connections instead of failing inserts.
#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(defaults::CONNTRACK_ENTRIES, 0);

/// Per-CPU counters indexed by `weir_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-CPU counters indexed by `weir_common::parse_error`.
#[map]
static PARSE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(parse_error::COUNT, 0);

/// Runtime configuration, entry 0, written by the agent before attaching.
#[map]
static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Policed endpoints by host-side ifindex; sized by the agent.
#[map]
static POLICY_EP: HashMap<u32, EndpointPolicy> =
    HashMap::with_max_entries(defaults::POLICY_ENDPOINTS, 0);

/// What each endpoint allows (see `weir_common::PolicyKey`); sized by the agent.
#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(defaults::POLICY_ENTRIES, 0);

/// Identity of each pod and node address; sized by the agent.
#[map]
static IPCACHE: HashMap<IpKey, u32> = HashMap::with_max_entries(defaults::IPCACHE_ENTRIES, 0);

/// `ipBlock` cells: the longest `cidr`/`except` boundary containing an
/// address, as a cell identity; sized by the agent.
#[map]
static CIDR_CELLS: LpmTrie<IpKey, u32> = LpmTrie::with_max_entries(defaults::CIDR_CELL_ENTRIES, 0);

/// The endpoint of each hostNetwork pod's cgroup (and of its descendants);
/// sized by the agent.
#[map]
static CGROUP_EP: HashMap<u64, CgroupEndpoint> =
    HashMap::with_max_entries(defaults::CGROUP_ENDPOINT_ENTRIES, 0);

#[classifier]
pub fn weir_from_endpoint(ctx: TcContext) -> i32 {
    observe(&ctx, obs::FROM_ENDPOINT)
}

#[classifier]
pub fn weir_to_endpoint(ctx: TcContext) -> i32 {
    observe(&ctx, obs::TO_ENDPOINT)
}

#[cgroup_skb(egress)]
pub fn weir_cgroup_egress(ctx: SkBuffContext) -> i32 {
    observe_cgroup(&ctx, obs::FROM_ENDPOINT)
}

#[cgroup_skb(ingress)]
pub fn weir_cgroup_ingress(ctx: SkBuffContext) -> i32 {
    observe_cgroup(&ctx, obs::TO_ENDPOINT)
}

/// What the parser extracted from one packet. Addresses in network byte
/// order (IPv4 in the first word, the rest zero) held as words, so copying
/// them into the key and the event is four word moves instead of a byte-wise
/// `memcpy` subprogram; ports in host byte order.
struct Packet {
    src: [u32; 4],
    dst: [u32; 4],
    /// Ports as tracked: for ICMP echo both are the echo identifier so the
    /// request and its reply share one conntrack entry; 0 for other ICMP.
    ct_sport: u16,
    ct_dport: u16,
    family: u8,
    proto: u8,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    /// `flag::FRAGMENT` / `flag::NO_L4`.
    flags: u8,
}

impl Packet {
    /// Ports reported in the event: ICMP has none (the echo id is a tracking
    /// detail, not a port).
    #[inline(always)]
    fn event_ports(&self) -> (u16, u16) {
        if self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6 {
            (0, 0)
        } else {
            (self.ct_sport, self.ct_dport)
        }
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, obs_point: u8) -> i32 {
    let pkt_len = ctx.len();
    bump(&STATS, stat::PACKETS, 1);
    bump(&STATS, stat::BYTES, u64::from(pkt_len));

    match parse(&Direct(ctx), pkt_len) {
        Ok(pkt) => {
            // SAFETY: the context pointer is the kernel's __sk_buff for this run.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            if track(&TcHook(ctx), &pkt, pkt_len, ifindex, obs_point) {
                TC_PASS
            } else {
                TC_DROP
            }
        }
        Err(reason) => {
            bump(&PARSE_ERRORS, reason, 1);
            TC_PASS
        }
    }
}

/// The body of both cgroup hooks: find the endpoint of the socket's cgroup,
/// then parse from the network header and track and police exactly as the
/// tc hooks do, with the synthetic endpoint id in place of an ifindex.
#[inline(always)]
fn observe_cgroup(ctx: &SkBuffContext, obs_point: u8) -> i32 {
    let skb = ctx.skb.skb;
    let pkt_len = ctx.len();
    bump(&STATS, stat::PACKETS, 1);
    bump(&STATS, stat::BYTES, u64::from(pkt_len));

    // The program runs for the sockets of the cgroup it is attached to and
    // of every cgroup below it; the skb's socket says which one.
    // SAFETY: helpers on this run's context, no other precondition.
    let leaf = unsafe { bpf_skb_cgroup_id(skb) };
    let Some(ep) = cgroup_endpoint(leaf, |level| unsafe {
        // SAFETY: as above.
        bpf_skb_ancestor_cgroup_id(skb, level)
    }) else {
        bump(&STATS, stat::CGROUP_UNKNOWN, 1);
        return CGROUP_PASS;
    };

    // No link-layer header here: the kernel points the skb at the network
    // header, and `skb->protocol` says which one it is.
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ethertype = u16::from_be(unsafe { (*skb).protocol } as u16);
    match parse_l3(&Copied(ctx), ethertype, 0, pkt_len) {
        Ok(pkt) => {
            let hook = CgroupHook {
                ctx,
                endpoint: ep.endpoint,
            };
            if track(&hook, &pkt, pkt_len, ep.endpoint, obs_point) {
                CGROUP_PASS
            } else {
                CGROUP_DROP
            }
        }
        Err(reason) => {
            bump(&PARSE_ERRORS, reason, 1);
            CGROUP_PASS
        }
    }
}

/// The endpoint of cgroup `leaf`: its own `CGROUP_EP` entry, else that of
/// its nearest registered ancestor (a container cgroup created after the
/// agent registered the pod), found by walking down from the root with
/// `ancestor(level)`. `None` for no cgroup (id 0) or none registered.
///
/// A leaf found through an ancestor is added to `CGROUP_EP` with the
/// ancestor's value, so that its next packets (and the tc hooks, which do
/// not walk) find it in one lookup. Cgroup ids are never reused, so such an
/// entry can only go stale by the agent changing the ancestor's: the agent
/// replaces or removes all entries of an endpoint together.
#[inline(always)]
fn cgroup_endpoint(leaf: u64, ancestor: impl Fn(i32) -> u64) -> Option<CgroupEndpoint> {
    if leaf == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    if let Some(ep) = unsafe { CGROUP_EP.get(&leaf) } {
        return Some(*ep);
    }
    // Top down, so the first match is the outermost registered cgroup: pod
    // cgroups never nest, so that is the pod. Level 0 is the root.
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 || id == leaf {
            return None;
        }
        // SAFETY: as above.
        if let Some(ep) = unsafe { CGROUP_EP.get(&id) } {
            let ep = *ep;
            // A full map or a racing insert only costs the next packet the walk.
            let _ = CGROUP_EP.insert(&leaf, &ep, u64::from(BPF_NOEXIST));
            return Some(ep);
        }
        level += 1;
    }
    None
}

/// Who the peer of a new connection is, when the hook knows better than
/// the address (see [`Hook::local_peer`]).
#[derive(Clone, Copy)]
enum Peer {
    /// Look the peer's address up (`IPCACHE`, `CIDR_CELLS`).
    Address,
    /// The peer is this identity.
    Identity(u32),
    /// Both ends are the endpoint itself (a hostNetwork pod talking to
    /// itself over loopback): not policed, not tracked, not reported, as a
    /// pod's loopback traffic never reaches its veth.
    OwnTraffic,
}

/// What differs between the tc hooks on a veth and the cgroup hooks of a
/// hostNetwork pod once a packet is parsed.
trait Hook {
    /// Resolves the peer before its address is looked up, on a conntrack
    /// miss and on a policy re-check.
    fn local_peer(&self, pkt: &Packet, obs_point: u8) -> Peer;
    /// The identity of a peer whose address is the node's (`identity::HOST`).
    fn host_peer(&self, obs_point: u8) -> u32;
}

/// The tc hooks of a pod's host-side veth.
struct TcHook<'a>(&'a TcContext);

impl Hook for TcHook<'_> {
    #[inline(always)]
    fn local_peer(&self, _pkt: &Packet, _obs_point: u8) -> Peer {
        Peer::Address
    }

    /// At tc egress of the host-side veth a packet the node itself sent
    /// still carries its socket: when that socket belongs to a hostNetwork
    /// pod's cgroup, the pod's policy sees that pod's identity, not the
    /// node's. Forwarded packets carry no socket (id 0). At tc ingress the
    /// packet comes from the pod and has no local socket yet: the node's
    /// address stays HOST there.
    ///
    /// One exact lookup, no ancestor walk: the packet went through the
    /// pod's cgroup egress hook just before, which registered the socket's
    /// cgroup if only an ancestor was (see [`cgroup_endpoint`]). The walk
    /// inlined here cost the program a third more verifier work.
    #[inline(always)]
    fn host_peer(&self, obs_point: u8) -> u32 {
        if obs_point != obs::TO_ENDPOINT {
            return identity::HOST;
        }
        // SAFETY: a helper on this run's context, no other precondition.
        let leaf = unsafe { bpf_skb_cgroup_id(self.0.skb.skb) };
        if leaf == 0 {
            return identity::HOST;
        }
        // SAFETY: a plain value copied out at once.
        match unsafe { CGROUP_EP.get(&leaf) } {
            Some(ep) => ep.identity,
            None => identity::HOST,
        }
    }
}

/// The cgroup hooks of a hostNetwork pod (`endpoint` is its synthetic id).
struct CgroupHook<'a> {
    ctx: &'a SkBuffContext,
    endpoint: u32,
}

impl Hook for CgroupHook<'_> {
    /// A packet on loopback goes from one socket of the node to another:
    /// its addresses say only "the node", so the peer is the socket at the
    /// other end, found with a socket lookup in the namespace of the skb's
    /// device. Its cgroup gives another hostNetwork pod's identity, this
    /// very endpoint (own traffic), or neither (HOST: a node process, or no
    /// socket such as ICMP).
    #[inline(always)]
    fn local_peer(&self, pkt: &Packet, obs_point: u8) -> Peer {
        let skb = self.ctx.skb.skb;
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        if unsafe { (*skb).ifindex } != LOOPBACK_IFINDEX {
            return Peer::Address;
        }
        match peer_socket_endpoint(self.ctx, pkt, obs_point) {
            Some(ep) if ep.endpoint == self.endpoint => Peer::OwnTraffic,
            Some(ep) => Peer::Identity(ep.identity),
            None => Peer::Identity(identity::HOST),
        }
    }

    #[inline(always)]
    fn host_peer(&self, _obs_point: u8) -> u32 {
        identity::HOST
    }
}

/// The endpoint owning the socket at the other end of a loopback packet:
/// at egress the socket it will be delivered to, at ingress the one that
/// sent it (the receiver's view of the reverse direction). TCP and UDP only.
#[inline(always)]
fn peer_socket_endpoint(
    ctx: &SkBuffContext,
    pkt: &Packet,
    obs_point: u8,
) -> Option<CgroupEndpoint> {
    let (saddr, daddr, sport, dport) = if obs_point == obs::FROM_ENDPOINT {
        (&pkt.src, &pkt.dst, pkt.ct_sport, pkt.ct_dport)
    } else {
        (&pkt.dst, &pkt.src, pkt.ct_dport, pkt.ct_sport)
    };
    // `struct bpf_sock_tuple` as words: addresses in network order, then
    // the two big-endian ports in one word (sport first in memory, which on
    // the little-endian bpfel target is the low half). Its ipv4 member is
    // the first 12 bytes, the ipv6 member all 36.
    let ports = u32::from(sport.to_be()) | (u32::from(dport.to_be()) << 16);
    let mut key = [0u32; 9];
    let size = if pkt.family == family::IPV4 {
        key[0] = saddr[0];
        key[1] = daddr[0];
        key[2] = ports;
        12
    } else {
        key[0] = saddr[0];
        key[1] = saddr[1];
        key[2] = saddr[2];
        key[3] = saddr[3];
        key[4] = daddr[0];
        key[5] = daddr[1];
        key[6] = daddr[2];
        key[7] = daddr[3];
        key[8] = ports;
        36
    };
    let key = (&raw mut key).cast::<bpf_sock_tuple>();
    let ctx_ptr = ctx.skb.skb.cast::<c_void>();
    // The current namespace is the skb's device's: the node's.
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `key` points to `size` initialised bytes on the stack; the
    // returned reference is released below on every path.
    let sk: *mut bpf_sock = unsafe {
        match pkt.proto {
            IPPROTO_TCP => bpf_sk_lookup_tcp(ctx_ptr, key, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(ctx_ptr, key, size, netns, 0),
            _ => return None,
        }
    };
    if sk.is_null() {
        return None;
    }
    let sk_ptr = sk.cast::<c_void>();
    // SAFETY: `sk` is a referenced full socket until the release below.
    let leaf = unsafe { bpf_sk_cgroup_id(sk_ptr) };
    let ep = cgroup_endpoint(leaf, |level| unsafe {
        // SAFETY: as above.
        bpf_sk_ancestor_cgroup_id(sk_ptr, level)
    });
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk_ptr) };
    ep
}

/// Adds `n` to this CPU's slot `index` of a per-CPU counter array. No atomics:
/// the slot belongs to this CPU and tc programs do not migrate mid-run.
#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's value of a live map element.
        unsafe { *slot += n };
    }
}

/// Adds to a u64 inside a shared conntrack value from any CPU. The result is
/// deliberately unused: that compiles to the plain atomic add every BPF CPU
/// version supports.
#[inline(always)]
fn atomic_add(slot: *mut u64, n: u64) {
    // SAFETY: `slot` points into a live, 8-byte aligned map value; all
    // concurrent writers use atomic operations on it.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
}

/// Read access to a packet's headers: a header of `N` bytes at an offset
/// from the start of what the hook sees.
///
/// Two implementations, one per hook type, so that each program is
/// monomorphised with its own access method and the tc programs compile to
/// exactly what they did before the cgroup hooks existed.
trait Frame {
    type Hdr<const N: usize>: Hdr;
    /// The header at `off`, or `None` when the packet is shorter than `off + N`.
    fn header<const N: usize>(&self, off: usize) -> Option<Self::Hdr<N>>;
}

/// Fields of a header returned by [`Frame::header`]; indices are below `N`.
trait Hdr {
    fn byte(&self, i: usize) -> u8;
    /// Big-endian u16 at byte `i`.
    fn be16(&self, i: usize) -> u16;
    /// The 4 bytes at byte `i` in memory (network) order.
    fn word(&self, i: usize) -> u32;
}

/// Direct packet access for the tc hooks.
///
/// Direct packet access: tc on a veth normally finds every header in the
/// linear part, and a pointer read costs a load where `bpf_skb_load_bytes`
/// costs a helper call and a stack copy. When a header lies beyond the linear
/// part (GSO or paged frames) the skb is pulled up to its end once and the
/// check repeated; pulling fails when the packet is shorter than `off + N`,
/// which is the truncation the caller reports. The pull invalidates earlier
/// pointers, so callers read each header's fields before asking for the next.
///
/// The pointer is formed as `data + off` and then checked with `+ N`
/// against `data_end`, the shape the verifier tracks for variable offsets
/// (`off` is always bounded by the IHL, the TCP data offset or the bounded
/// extension-header walk).
struct Direct<'a>(&'a TcContext);

impl Frame for Direct<'_> {
    type Hdr<const N: usize> = PktPtr;

    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<PktPtr> {
        let ctx = self.0;
        if data(ctx) + off + N > data_end(ctx) {
            ctx.pull_data((off + N) as u32).ok()?;
        }
        // Loaded after the join of both paths: were the pre-pull pointer merged
        // with the post-pull one, LLVM would re-zero-extend the merged 32-bit
        // field with shifts, pointer arithmetic the verifier rejects.
        let p = data(ctx) + off;
        if p + N <= data_end(ctx) {
            Some(PktPtr(p as *const u8))
        } else {
            None
        }
    }
}

/// `skb->data`, read afresh at each call (volatile, so LLVM can neither reuse
/// a load from before a pull nor merge loads across paths).
#[inline(always)]
fn data(ctx: &TcContext) -> usize {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).data) as usize }
}

/// `skb->data_end`; see [`data`].
#[inline(always)]
fn data_end(ctx: &TcContext) -> usize {
    // SAFETY: as `data`.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).data_end) as usize }
}

/// A checked pointer into the skb's linear data (see [`Direct`]).
#[derive(Clone, Copy)]
struct PktPtr(*const u8);

impl Hdr for PktPtr {
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        // SAFETY: callers pass `i < N` of a pointer `header::<N>` checked.
        unsafe { self.0.add(i).read() }
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        // SAFETY: as `byte`; `i + 1 < N`. Alignment: see `word`.
        u16::from_be(unsafe { self.0.add(i).cast::<u16>().read() })
    }

    /// A plain word load, as C's `iph->saddr`: every offset passed is 2 modulo 4
    /// from the start of the frame, which the verifier's strict-alignment mode
    /// (on architectures without efficient unaligned access) treats as aligned
    /// because it assumes `NET_IP_ALIGN` = 2, and the JITs of the others load
    /// unaligned words natively. Byte loads instead would cost 4 loads and 6 ALU
    /// instructions per word.
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        // SAFETY: `i + 3 < N` of a checked header; see above for alignment.
        unsafe { self.0.add(i).cast::<u32>().read() }
    }
}

/// Header copies for the cgroup hooks, through `bpf_skb_load_bytes`.
///
/// `cgroup_skb` programs may read packet data directly but may not call
/// `bpf_skb_pull_data`, and `bpf_skb_load_bytes` reads paged data as well.
/// Always copying (rather than trying direct access first) keeps one pointer
/// type per header: a register that may point to the packet or to the
/// stack makes the verifier explore both at every later header, which
/// doubles its work per header. The headers are small and the hook only
/// runs for hostNetwork pods' sockets.
struct Copied<'a>(&'a SkBuffContext);

impl Frame for Copied<'_> {
    type Hdr<const N: usize> = Buf<N>;

    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<Buf<N>> {
        let mut buf = MaybeUninit::<Buf<N>>::uninit();
        // SAFETY: the helper writes exactly N bytes into the buffer or fails.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb.cast::<c_void>(),
                off as u32,
                buf.as_mut_ptr().cast::<c_void>(),
                N as u32,
            )
        };
        if rc == 0 {
            // SAFETY: the helper filled all N bytes.
            Some(unsafe { buf.assume_init() })
        } else {
            None
        }
    }
}

/// A header copied onto the stack. 8-byte aligned: the verifier requires
/// aligned stack accesses, and every `word` index is a multiple of 4 and
/// every `be16` index even.
#[repr(C, align(8))]
struct Buf<const N: usize>([u8; N]);

impl<const N: usize> Hdr for Buf<N> {
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        // SAFETY: callers pass `i < N`; unchecked so no panic path is emitted.
        unsafe { *self.0.get_unchecked(i) }
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        // SAFETY: `i + 1 < N` and `i` even (see the type's docs).
        u16::from_be(unsafe { self.0.as_ptr().add(i).cast::<u16>().read() })
    }

    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        // SAFETY: `i + 3 < N` and `i` a multiple of 4 (see the type's docs).
        unsafe { self.0.as_ptr().add(i).cast::<u32>().read() }
    }
}

/// Parses an Ethernet frame (the tc hooks).
#[inline(always)]
fn parse<F: Frame>(f: &F, pkt_len: u32) -> Result<Packet, u32> {
    if (pkt_len as usize) < ETH_HLEN {
        return Err(parse_error::TRUNCATED_ETH);
    }
    let eth = f.header::<ETH_HLEN>(0).ok_or(parse_error::TRUNCATED_ETH)?;
    parse_l3(f, eth.be16(12), ETH_HLEN, pkt_len)
}

/// Parses from the network header at offset `l3` (after the Ethernet
/// header on tc, 0 on the cgroup hooks) given the packet's ethertype.
/// `l3` is a constant in each program once inlined.
#[inline(always)]
fn parse_l3<F: Frame>(f: &F, ethertype: u16, l3: usize, pkt_len: u32) -> Result<Packet, u32> {
    let mut pkt = Packet {
        src: [0; 4],
        dst: [0; 4],
        ct_sport: 0,
        ct_dport: 0,
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
    };
    let l4_off = match ethertype {
        ETH_P_IP => parse_ipv4(f, l3, pkt_len, &mut pkt)?,
        ETH_P_IPV6 => parse_ipv6(f, l3, pkt_len, &mut pkt)?,
        _ => return Err(parse_error::NON_IP),
    };
    if pkt.flags & flag::NO_L4 == 0 {
        parse_l4(f, pkt_len, l4_off, &mut pkt)?;
    }
    Ok(pkt)
}

/// Parses the IPv4 header; returns the L4 offset. Sets `NO_L4` for non-first
/// fragments (their payload does not start with an L4 header).
#[inline(always)]
fn parse_ipv4<F: Frame>(f: &F, l3: usize, pkt_len: u32, pkt: &mut Packet) -> Result<usize, u32> {
    let h = f.header::<20>(l3).ok_or(parse_error::BAD_IPV4)?;
    let vihl = h.byte(0);
    let ihl = usize::from(vihl & 0x0f);
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(parse_error::BAD_IPV4);
    }
    let hdr_len = ihl * 4;
    let total_len = usize::from(h.be16(2));
    // A total length of 0 is what BIG TCP GSO packets carry; anything else
    // must cover the header and fit in the frame (trailing padding is fine).
    if total_len != 0 && (total_len < hdr_len || l3 + total_len > pkt_len as usize) {
        return Err(parse_error::BAD_IPV4);
    }
    if l3 + hdr_len > pkt_len as usize {
        return Err(parse_error::BAD_IPV4);
    }
    pkt.family = family::IPV4;
    pkt.proto = h.byte(9);
    pkt.src = [h.word(12), 0, 0, 0];
    pkt.dst = [h.word(16), 0, 0, 0];

    let frag = h.be16(6);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if frag_offset != 0 {
        pkt.flags |= flag::FRAGMENT | flag::NO_L4;
    } else if more_fragments {
        pkt.flags |= flag::FRAGMENT;
    }
    Ok(l3 + hdr_len)
}

/// Parses the IPv6 header and walks its extension headers; returns the L4
/// offset and leaves the upper-layer protocol in `pkt.proto`.
#[inline(always)]
fn parse_ipv6<F: Frame>(f: &F, l3: usize, pkt_len: u32, pkt: &mut Packet) -> Result<usize, u32> {
    let h = f.header::<40>(l3).ok_or(parse_error::BAD_IPV6)?;
    if h.byte(0) >> 4 != 6 {
        return Err(parse_error::BAD_IPV6);
    }
    let payload_len = usize::from(h.be16(4));
    // 0 is a jumbogram / BIG TCP GSO packet; the hop-by-hop header carries the length.
    if payload_len != 0 && l3 + 40 + payload_len > pkt_len as usize {
        return Err(parse_error::BAD_IPV6);
    }
    pkt.family = family::IPV6;
    pkt.src = [h.word(8), h.word(12), h.word(16), h.word(20)];
    pkt.dst = [h.word(24), h.word(28), h.word(32), h.word(36)];

    let mut next = h.byte(6);
    let mut off = l3 + 40;
    // A constant-bound loop: the verifier (and LLVM, which unrolls it) sees at
    // most MAX_IPV6_EXT iterations of straight-line code, and `off` grows by
    // at most 2 KiB per iteration, so it stays a bounded packet offset.
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = f.header::<2>(off).ok_or(parse_error::BAD_IPV6)?;
                next = e.byte(0);
                off += (usize::from(e.byte(1)) + 1) * 8;
            }
            IPPROTO_AH => {
                let e = f.header::<2>(off).ok_or(parse_error::BAD_IPV6)?;
                next = e.byte(0);
                off += (usize::from(e.byte(1)) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = f.header::<8>(off).ok_or(parse_error::BAD_IPV6)?;
                next = e.byte(0);
                let frag = e.be16(2);
                off += 8;
                pkt.flags |= flag::FRAGMENT;
                if frag >> 3 != 0 {
                    // Non-first fragment: what follows is the middle of the
                    // fragmentable part, not a header. Stop here.
                    pkt.flags |= flag::NO_L4;
                    pkt.proto = next;
                    return Ok(off);
                }
            }
            _ => {
                pkt.proto = next;
                return Ok(off);
            }
        }
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Err(parse_error::IPV6_EXT_LIMIT)
        }
        _ => {
            pkt.proto = next;
            Ok(off)
        }
    }
}

#[inline(always)]
fn parse_l4<F: Frame>(f: &F, pkt_len: u32, off: usize, pkt: &mut Packet) -> Result<(), u32> {
    match pkt.proto {
        IPPROTO_TCP => {
            let h = f.header::<20>(off).ok_or(parse_error::TRUNCATED_L4)?;
            let data_off = usize::from(h.byte(12) >> 4) * 4;
            if data_off < 20 || off + data_off > pkt_len as usize {
                return Err(parse_error::TRUNCATED_L4);
            }
            pkt.ct_sport = h.be16(0);
            pkt.ct_dport = h.be16(2);
            pkt.tcp_flags = h.byte(13);
        }
        // SCTP's common header starts with the two ports, as UDP's does
        // (its 12 bytes are checked whole), so NetworkPolicy's SCTP ports
        // match on kernels that carry SCTP.
        IPPROTO_UDP => {
            let h = f.header::<8>(off).ok_or(parse_error::TRUNCATED_L4)?;
            pkt.ct_sport = h.be16(0);
            pkt.ct_dport = h.be16(2);
        }
        IPPROTO_SCTP => {
            let h = f.header::<12>(off).ok_or(parse_error::TRUNCATED_L4)?;
            pkt.ct_sport = h.be16(0);
            pkt.ct_dport = h.be16(2);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Every ICMP message has at least 8 bytes: type, code, checksum
            // and 4 bytes of type-specific data (the echo id and sequence).
            let h = f.header::<8>(off).ok_or(parse_error::TRUNCATED_L4)?;
            let ty = h.byte(0);
            pkt.icmp_type = ty;
            pkt.icmp_code = h.byte(1);
            let echo = if pkt.proto == IPPROTO_ICMP {
                ty == ICMP_ECHO_REQUEST || ty == ICMP_ECHO_REPLY
            } else {
                ty == ICMPV6_ECHO_REQUEST || ty == ICMPV6_ECHO_REPLY
            };
            if echo {
                let id = h.be16(4);
                pkt.ct_sport = id;
                pkt.ct_dport = id;
            }
        }
        _ => pkt.flags |= flag::NO_L4,
    }
    Ok(())
}

/// An address held as words (see [`Packet`]) as the byte array of the ABI.
#[inline(always)]
fn addr_bytes(a: &[u32; 4]) -> [u8; 16] {
    // SAFETY: same size, every bit pattern is valid for both types; the words
    // already hold the bytes in memory (network) order.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(*a) }
}

/// Orders two addresses as big-endian numbers (same as memcmp of the bytes).
#[inline(always)]
fn addr_lt(a: &[u32; 4], b: &[u32; 4]) -> Option<bool> {
    let hi = |x: &[u32; 4]| (u64::from(u32::from_be(x[0])) << 32) | u64::from(u32::from_be(x[1]));
    let lo = |x: &[u32; 4]| (u64::from(u32::from_be(x[2])) << 32) | u64::from(u32::from_be(x[3]));
    let (a_hi, b_hi) = (hi(a), hi(b));
    if a_hi != b_hi {
        return Some(a_hi < b_hi);
    }
    let (a_lo, b_lo) = (lo(a), lo(b));
    if a_lo != b_lo {
        return Some(a_lo < b_lo);
    }
    None
}

/// Conntrack update, policy and event decision for one parsed packet at
/// endpoint `ifindex` (a host-side ifindex, or a cgroup endpoint's
/// synthetic id). Returns whether the packet passes.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "passing the key and value by value costs 48 more bytes of the 512-byte BPF stack"
)]
fn track<H: Hook>(hook: &H, pkt: &Packet, pkt_len: u32, ifindex: u32, obs_point: u8) -> bool {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    // The sender is `a` when its (address, port) sorts first.
    let sender_is_a = match addr_lt(&pkt.src, &pkt.dst) {
        Some(lt) => lt,
        None => pkt.ct_sport <= pkt.ct_dport,
    };
    // One key, filled field by field: two whole-struct branches would cost
    // two stack copies of it.
    let (addr_a, addr_b, port_a, port_b) = if sender_is_a {
        (&pkt.src, &pkt.dst, pkt.ct_sport, pkt.ct_dport)
    } else {
        (&pkt.dst, &pkt.src, pkt.ct_dport, pkt.ct_sport)
    };
    let key = CtKey {
        addr_a: addr_bytes(addr_a),
        addr_b: addr_bytes(addr_b),
        ifindex,
        port_a,
        port_b,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };

    let (report_interval_ns, aggregation_none, policy_gen) = match CONFIG.get(0) {
        Some(cfg) => (
            cfg.report_interval_ns,
            cfg.aggregation_none != 0,
            cfg.policy_gen,
        ),
        None => (defaults::REPORT_INTERVAL_NS, false, 0),
    };

    // A bare SYN on a tuple whose connection already closed (FIN or RST
    // seen) is a new connection reusing the ports: start the entry over.
    let syn_only = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
    let mut insert_flags = BPF_NOEXIST;
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a live conntrack value (see `update_existing`).
        let seen = unsafe { (*ct).tcp_flags[0] | (*ct).tcp_flags[1] };
        if !(syn_only && seen & (tcp::FIN | tcp::RST) != 0) {
            // SAFETY: a live conntrack value (see `update_existing`).
            let (initiator, gen_seen) = unsafe { ((*ct).initiator, (*ct).policy_gen) };
            let reply = sender_is_a != (initiator == 1);
            if !reply && gen_seen != policy_gen {
                // The policy changed since this connection was decided:
                // check its forward direction again.
                let peer = hook.local_peer(pkt, obs_point);
                let (decision, attr) = decide(hook, ifindex, pkt, obs_point, peer);
                if decision == DENY {
                    // SAFETY: as above.
                    let ct_ref = unsafe { &*ct };
                    return drop_packet(pkt, ct_ref, attr, ifindex, pkt_len, now, obs_point);
                }
                // SAFETY: as above; a racing writer stores the same values.
                unsafe {
                    (*ct).policy_gen = policy_gen;
                    (*ct).policy_attr = attr;
                    (*ct).policy_state = if decision == AUDIT {
                        ct_policy::AUDITED
                    } else {
                        0
                    };
                }
            }
            update_existing(
                ct,
                pkt,
                pkt_len,
                obs_point,
                ifindex,
                now,
                sender_is_a,
                report_interval_ns,
                aggregation_none,
            );
            return true;
        }
        insert_flags = BPF_ANY;
    }

    // An endpoint's traffic with itself is none of the datapath's business
    // (see `Peer::OwnTraffic`); only a cgroup hook on loopback can see it.
    // Checked on every untracked packet, replies included, so it never
    // leaves a conntrack entry.
    let peer = hook.local_peer(pkt, obs_point);
    if let Peer::OwnTraffic = peer {
        return true;
    }

    // First packet: the sender initiates, unless it answers with a SYN-ACK
    // (we missed the SYN), which makes it the responder.
    let syn_ack =
        pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == (tcp::SYN | tcp::ACK);
    let sender_initiates = !syn_ack;
    let initiator_is_a = sender_is_a == sender_initiates;
    // Constant indices only: the verifier rejects the pointer arithmetic
    // LLVM emits for a variable index into a stack array.
    let len = u64::from(pkt_len);
    let (packets, bytes, tcp_flags) = if sender_initiates {
        ([1, 0], [len, 0], [pkt.tcp_flags, 0])
    } else {
        ([0, 1], [0, len], [0, pkt.tcp_flags])
    };
    // Zeroed whole, then filled: the 8-byte aligned zeroing is eight word
    // stores (most of them dead and removed), where a literal's 5-byte
    // `_pad` at an odd offset compiles to a byte-wise `memset` subprogram.
    // SAFETY: CtValue holds only integers; all-zero is a valid value.
    let mut value: CtValue = unsafe { core::mem::zeroed() };
    value.packets = packets;
    value.bytes = bytes;
    value.first_seen_ns = now;
    value.last_seen_ns = now;
    value.last_report_ns = now;
    value.tcp_flags = tcp_flags;
    value.initiator = if initiator_is_a { 1 } else { 2 };
    value.policy_gen = policy_gen;

    // A new connection is checked in its forward direction; a first packet
    // that is itself a reply (a SYN-ACK whose SYN we missed) belongs to a
    // connection decided before.
    if sender_initiates {
        let (decision, attr) = decide(hook, ifindex, pkt, obs_point, peer);
        value.policy_attr = attr;
        if decision == DENY {
            return drop_packet(pkt, &value, attr, ifindex, pkt_len, now, obs_point);
        }
        if decision == AUDIT {
            value.policy_state = ct_policy::AUDITED;
        }
    }

    let reason = if aggregation_none {
        emit::PACKET
    } else {
        emit::NEW
    };
    match CONNTRACK.insert(&key, &value, u64::from(insert_flags)) {
        Ok(()) => bump(&STATS, stat::CT_CREATED, 1),
        Err(_) => {
            // Another CPU created the entry between our lookup and insert:
            // account to it as an ordinary packet of that connection.
            if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
                update_existing(
                    ct,
                    pkt,
                    pkt_len,
                    obs_point,
                    ifindex,
                    now,
                    sender_is_a,
                    report_interval_ns,
                    aggregation_none,
                );
                return true;
            }
            // Really failed (no memory): still report the packet, untracked.
            bump(&STATS, stat::CT_INSERT_FAILED, 1);
        }
    }
    emit_event(
        pkt,
        &value,
        ifindex,
        pkt_len,
        now,
        obs_point,
        reason,
        !sender_initiates,
        ct_verdict(&value),
        0,
        value.policy_attr,
    );
    true
}

/// Policy decisions of [`decide`].
const ALLOW: u8 = 0;
const DENY: u8 = 1;
/// Denied, but the endpoint is in audit mode: passes, reported as AUDIT.
const AUDIT: u8 = 2;

/// The verdict a tracked connection's events carry.
#[inline(always)]
fn ct_verdict(ct: &CtValue) -> u8 {
    if ct.policy_state & ct_policy::AUDITED != 0 {
        verdict::AUDIT
    } else {
        verdict::FORWARDED
    }
}

/// Counts and reports a packet that policy denies; returns `false` (drop).
#[inline(always)]
fn drop_packet(
    pkt: &Packet,
    ct: &CtValue,
    attr: u32,
    ifindex: u32,
    pkt_len: u32,
    now: u64,
    obs_point: u8,
) -> bool {
    bump(&STATS, stat::DROPPED, 1);
    bump(&STATS, stat::POLICY_DENIED, 1);
    emit_event(
        pkt,
        ct,
        ifindex,
        pkt_len,
        now,
        obs_point,
        emit::PACKET,
        false,
        verdict::DROPPED,
        drop_reason::POLICY_DENIED,
        attr,
    );
    false
}

/// An address held as words in the 16-byte form of the policy maps: IPv6
/// as is, IPv4 as IPv4-mapped IPv6.
#[inline(always)]
fn ip_key(addr: &[u32; 4], fam: u8) -> IpKey {
    let words = if fam == family::IPV4 {
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr[0]]
    } else {
        *addr
    };
    IpKey {
        addr: addr_bytes(&words),
    }
}

/// ICMP that the network itself needs and that opens no connection: IPv6
/// neighbour discovery and multicast listener messages (without them an
/// isolated IPv6 pod cannot even answer), and errors about a connection
/// (unreachable, too big, time exceeded, parameter problem), which the
/// kernel delivers only to the socket they concern. Never policed, as
/// NetworkPolicy (L3/L4 allow rules) does not mean to filter them.
#[inline(always)]
fn icmp_infrastructure(pkt: &Packet) -> bool {
    match pkt.proto {
        IPPROTO_ICMPV6 => matches!(pkt.icmp_type, 1..=4 | 130..=137 | 143),
        IPPROTO_ICMP => matches!(pkt.icmp_type, 3 | 11 | 12),
        _ => false,
    }
}

/// The policy verdict for the forward direction of a new connection at
/// this endpoint, and its attribution id.
///
/// Egress of the endpoint at `FROM_ENDPOINT` (the peer is the destination),
/// ingress at `TO_ENDPOINT` (the peer is the source). Lookups, in order:
/// the peer's identity, the peer's CIDR cell, any peer. The peer's identity
/// is what the hook resolved (`peer`), else its address's in `IPCACHE`
/// (unknown: WORLD), where the node's addresses (HOST) are refined by
/// [`Hook::host_peer`]. Non-first fragments carry no ports and pass: their
/// connection was decided on the first one.
#[inline(always)]
fn decide<H: Hook>(
    hook: &H,
    ifindex: u32,
    pkt: &Packet,
    obs_point: u8,
    peer_hint: Peer,
) -> (u8, u32) {
    if let Peer::OwnTraffic = peer_hint {
        return (ALLOW, 0);
    }
    // SAFETY: the value is read before the program ends; the agent replaces
    // entries whole.
    let Some(ep) = (unsafe { POLICY_EP.get(&ifindex) }) else {
        return (ALLOW, 0);
    };
    let (dir, enforced, peer) = if obs_point == obs::FROM_ENDPOINT {
        (
            direction::EGRESS,
            ep.flags & ep_flag::EGRESS_ENFORCED,
            &pkt.dst,
        )
    } else {
        (
            direction::INGRESS,
            ep.flags & ep_flag::INGRESS_ENFORCED,
            &pkt.src,
        )
    };
    if enforced == 0
        || pkt.flags & (flag::FRAGMENT | flag::NO_L4) == flag::FRAGMENT | flag::NO_L4
        || icmp_infrastructure(pkt)
    {
        return (ALLOW, 0);
    }
    bump(&STATS, stat::POLICY_LOOKUPS, 1);
    let addr = ip_key(peer, pkt.family);
    let peer_id = match peer_hint {
        Peer::Identity(id) => id,
        _ => {
            // SAFETY: a plain u32 copied out at once.
            let id = unsafe { IPCACHE.get(&addr) }
                .copied()
                .unwrap_or(identity::WORLD);
            if id == identity::HOST {
                hook.host_peer(obs_point)
            } else {
                id
            }
        }
    };
    let port = match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => pkt.ct_dport,
        _ => 0,
    };
    let mut key = Key::new(
        policy_prefix::FULL,
        PolicyKey {
            endpoint: ifindex,
            identity: peer_id,
            direction: dir,
            proto: pkt.proto,
            port: port.to_be_bytes(),
        },
    );
    if let Some(v) = POLICY.get(&key) {
        return (ALLOW, v.attr);
    }
    if let Some(cell) = CIDR_CELLS.get(Key::new(128, addr)) {
        key.data.identity = *cell;
        if let Some(v) = POLICY.get(&key) {
            return (ALLOW, v.attr);
        }
    }
    key.data.identity = identity::ANY;
    if let Some(v) = POLICY.get(&key) {
        return (ALLOW, v.attr);
    }
    let attr = if dir == direction::EGRESS {
        ep.egress_deny_attr
    } else {
        ep.ingress_deny_attr
    };
    if ep.flags & ep_flag::AUDIT != 0 {
        bump(&STATS, stat::POLICY_AUDITED, 1);
        return (AUDIT, attr);
    }
    (DENY, attr)
}

#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add a stack copy"
)]
fn update_existing(
    ct: *mut CtValue,
    pkt: &Packet,
    pkt_len: u32,
    obs_point: u8,
    ifindex: u32,
    now: u64,
    sender_is_a: bool,
    report_interval_ns: u64,
    aggregation_none: bool,
) {
    // SAFETY: `ct` is a live conntrack value returned by the map lookup; LRU
    // values stay valid for the duration of the program run (RCU).
    let ct_ref = unsafe { &mut *ct };
    let initiator_is_a = ct_ref.initiator == 1;
    let reply = sender_is_a != initiator_is_a;

    // Constant indices per branch keep the verifier's pointer tracking simple.
    let (packets, bytes, flags) = if reply {
        (
            &raw mut ct_ref.packets[1],
            &raw mut ct_ref.bytes[1],
            &raw mut ct_ref.tcp_flags[1],
        )
    } else {
        (
            &raw mut ct_ref.packets[0],
            &raw mut ct_ref.bytes[0],
            &raw mut ct_ref.tcp_flags[0],
        )
    };
    atomic_add(packets, 1);
    atomic_add(bytes, u64::from(pkt_len));
    ct_ref.last_seen_ns = now;

    // SAFETY: `flags` points into the live conntrack value.
    let seen = unsafe { *flags };
    let new_flags = pkt.tcp_flags & !seen;
    if new_flags != 0 {
        // SAFETY: as above; a racing writer can only lose a bit that its own
        // packet re-adds (benign, see the module docs).
        unsafe { *flags = seen | pkt.tcp_flags };
    }

    let reason = if aggregation_none {
        emit::PACKET
    } else if new_flags & TCP_EVENT_FLAGS != 0 {
        emit::TCP_FLAG
    } else if now.wrapping_sub(ct_ref.last_report_ns) >= report_interval_ns {
        emit::REPORT
    } else {
        return;
    };
    ct_ref.last_report_ns = now;
    emit_event(
        pkt,
        ct_ref,
        ifindex,
        pkt_len,
        now,
        obs_point,
        reason,
        reply,
        ct_verdict(ct_ref),
        0,
        ct_ref.policy_attr,
    );
}

#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add a stack copy"
)]
fn emit_event(
    pkt: &Packet,
    ct: &CtValue,
    ifindex: u32,
    pkt_len: u32,
    now: u64,
    obs_point: u8,
    reason: u8,
    reply: bool,
    verdict: u8,
    drop_reason: u8,
    policy_attr: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        bump(&STATS, stat::EVENTS_LOST, 1);
        return;
    };
    let (src_port, dst_port) = pkt.event_ports();
    // Field by field straight into the ring: building the 112-byte record
    // on the stack first would cost stack the verifier caps at 512 bytes.
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, exclusively owned FlowEvent-sized
    // and 8-byte aligned slot; every field is written before submit.
    unsafe {
        (&raw mut (*e).ts_ns).write(now);
        (&raw mut (*e).first_seen_ns).write(ct.first_seen_ns);
        // Word stores: the fields sit at 8-byte aligned offsets of the record.
        (&raw mut (*e).src_addr).cast::<[u32; 4]>().write(pkt.src);
        (&raw mut (*e).dst_addr).cast::<[u32; 4]>().write(pkt.dst);
        // Element by element: a whole-array write becomes a `memcpy` call.
        (&raw mut (*e).packets[0]).write(ct.packets[0]);
        (&raw mut (*e).packets[1]).write(ct.packets[1]);
        (&raw mut (*e).bytes[0]).write(ct.bytes[0]);
        (&raw mut (*e).bytes[1]).write(ct.bytes[1]);
        (&raw mut (*e).ifindex).write(ifindex);
        (&raw mut (*e).pkt_len).write(pkt_len);
        (&raw mut (*e).src_port).write(src_port);
        (&raw mut (*e).dst_port).write(dst_port);
        (&raw mut (*e).family).write(pkt.family);
        (&raw mut (*e).proto).write(pkt.proto);
        (&raw mut (*e).tcp_flags).write(pkt.tcp_flags);
        (&raw mut (*e).icmp_type).write(pkt.icmp_type);
        (&raw mut (*e).icmp_code).write(pkt.icmp_code);
        (&raw mut (*e).obs_point).write(obs_point);
        (&raw mut (*e).emit_reason).write(reason);
        (&raw mut (*e).verdict).write(verdict);
        (&raw mut (*e).drop_reason).write(drop_reason);
        (&raw mut (*e).flags).write(pkt.flags | if reply { flag::REPLY } else { 0 });
        (&raw mut (*e).tcp_flags_seen).write(ct.tcp_flags);
        (&raw mut (*e).policy_attr).write(policy_attr);
        (&raw mut (*e)._pad).write([0; 4]);
    }
    entry.submit(0);
    bump(&STATS, stat::EVENTS_EMITTED, 1);
}

/// The kernel only checks this string for GPL-only helpers; none are used
/// (skb_pull_data, ktime_get_boot_ns, map and ring-buffer helpers are all
/// available to any license), so it states the project's own license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here, so an infinite loop is never executed.
    loop {}
}
