//! Weir's kernel programs: tc classifiers on an endpoint's host-side veth.
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
//! Both hooks run one body, [`observe`], parameterised by the observation point:
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
//!    both directions share the entry, scoped to the skb's ifindex). A miss
//!    creates the entry and decides the initiator; so does a bare SYN on an
//!    entry that already saw FIN or RST (the ports were reused).
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
//! 5. Return [`TC_PASS`] (or [`TC_DROP`] for a policy drop).
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

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK},
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::{classifier, map},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::TcContext,
};
use weir_common::{
    CtKey, CtValue, DatapathConfig, EndpointPolicy, FlowEvent, IpKey, PolicyKey, PolicyValue,
    ct_policy, defaults, direction, drop_reason, emit, ep_flag, family, flag, identity, obs,
    parse_error, policy_prefix, stat, tcp, verdict,
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

#[classifier]
pub fn weir_from_endpoint(ctx: TcContext) -> i32 {
    observe(&ctx, obs::FROM_ENDPOINT)
}

#[classifier]
pub fn weir_to_endpoint(ctx: TcContext) -> i32 {
    observe(&ctx, obs::TO_ENDPOINT)
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

    match parse(ctx, pkt_len) {
        Ok(pkt) => track(ctx, &pkt, pkt_len, obs_point),
        Err(reason) => {
            bump(&PARSE_ERRORS, reason, 1);
            TC_PASS
        }
    }
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

/// A header of `N` bytes at offset `off`, as a pointer into the skb's linear
/// data, or `None` when the packet is shorter than that.
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
#[inline(always)]
fn header<const N: usize>(ctx: &TcContext, off: usize) -> Option<*const u8> {
    if data(ctx) + off + N > data_end(ctx) {
        ctx.pull_data((off + N) as u32).ok()?;
    }
    // Loaded after the join of both paths: were the pre-pull pointer merged
    // with the post-pull one, LLVM would re-zero-extend the merged 32-bit
    // field with shifts, pointer arithmetic the verifier rejects.
    let p = data(ctx) + off;
    if p + N <= data_end(ctx) {
        Some(p as *const u8)
    } else {
        None
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

/// Byte `i` of a header returned by [`header`].
#[inline(always)]
fn byte(h: *const u8, i: usize) -> u8 {
    // SAFETY: callers pass `i < N` of a pointer `header::<N>` checked.
    unsafe { h.add(i).read() }
}

/// Big-endian u16 at byte `i` of a header returned by [`header`].
#[inline(always)]
fn be16_at(h: *const u8, i: usize) -> u16 {
    // SAFETY: as `byte`; `i + 1 < N`. Alignment: see `word`.
    u16::from_be(unsafe { h.add(i).cast::<u16>().read() })
}

/// The 4 bytes at byte `i` of a header returned by [`header`], in memory
/// order (network byte order kept).
///
/// A plain word load, as C's `iph->saddr`: every offset passed is 2 modulo 4
/// from the start of the frame, which the verifier's strict-alignment mode
/// (on architectures without efficient unaligned access) treats as aligned
/// because it assumes `NET_IP_ALIGN` = 2, and the JITs of the others load
/// unaligned words natively. Byte loads instead would cost 4 loads and 6 ALU
/// instructions per word.
#[inline(always)]
fn word(h: *const u8, i: usize) -> u32 {
    // SAFETY: `i + 3 < N` of a checked header; see above for alignment.
    unsafe { h.add(i).cast::<u32>().read() }
}

#[inline(always)]
fn parse(ctx: &TcContext, pkt_len: u32) -> Result<Packet, u32> {
    if (pkt_len as usize) < ETH_HLEN {
        return Err(parse_error::TRUNCATED_ETH);
    }
    let eth = header::<ETH_HLEN>(ctx, 0).ok_or(parse_error::TRUNCATED_ETH)?;
    let ethertype = be16_at(eth, 12);
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
        ETH_P_IP => parse_ipv4(ctx, pkt_len, &mut pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, pkt_len, &mut pkt)?,
        _ => return Err(parse_error::NON_IP),
    };
    if pkt.flags & flag::NO_L4 == 0 {
        parse_l4(ctx, pkt_len, l4_off, &mut pkt)?;
    }
    Ok(pkt)
}

/// Parses the IPv4 header; returns the L4 offset. Sets `NO_L4` for non-first
/// fragments (their payload does not start with an L4 header).
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt_len: u32, pkt: &mut Packet) -> Result<usize, u32> {
    let h = header::<20>(ctx, ETH_HLEN).ok_or(parse_error::BAD_IPV4)?;
    let vihl = byte(h, 0);
    let ihl = usize::from(vihl & 0x0f);
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(parse_error::BAD_IPV4);
    }
    let hdr_len = ihl * 4;
    let total_len = usize::from(be16_at(h, 2));
    // A total length of 0 is what BIG TCP GSO packets carry; anything else
    // must cover the header and fit in the frame (trailing padding is fine).
    if total_len != 0 && (total_len < hdr_len || ETH_HLEN + total_len > pkt_len as usize) {
        return Err(parse_error::BAD_IPV4);
    }
    if ETH_HLEN + hdr_len > pkt_len as usize {
        return Err(parse_error::BAD_IPV4);
    }
    pkt.family = family::IPV4;
    pkt.proto = byte(h, 9);
    pkt.src = [word(h, 12), 0, 0, 0];
    pkt.dst = [word(h, 16), 0, 0, 0];

    let frag = be16_at(h, 6);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if frag_offset != 0 {
        pkt.flags |= flag::FRAGMENT | flag::NO_L4;
    } else if more_fragments {
        pkt.flags |= flag::FRAGMENT;
    }
    Ok(ETH_HLEN + hdr_len)
}

/// Parses the IPv6 header and walks its extension headers; returns the L4
/// offset and leaves the upper-layer protocol in `pkt.proto`.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt_len: u32, pkt: &mut Packet) -> Result<usize, u32> {
    let h = header::<40>(ctx, ETH_HLEN).ok_or(parse_error::BAD_IPV6)?;
    if byte(h, 0) >> 4 != 6 {
        return Err(parse_error::BAD_IPV6);
    }
    let payload_len = usize::from(be16_at(h, 4));
    // 0 is a jumbogram / BIG TCP GSO packet; the hop-by-hop header carries the length.
    if payload_len != 0 && ETH_HLEN + 40 + payload_len > pkt_len as usize {
        return Err(parse_error::BAD_IPV6);
    }
    pkt.family = family::IPV6;
    pkt.src = [word(h, 8), word(h, 12), word(h, 16), word(h, 20)];
    pkt.dst = [word(h, 24), word(h, 28), word(h, 32), word(h, 36)];

    let mut next = byte(h, 6);
    let mut off = ETH_HLEN + 40;
    // A constant-bound loop: the verifier (and LLVM, which unrolls it) sees at
    // most MAX_IPV6_EXT iterations of straight-line code, and `off` grows by
    // at most 2 KiB per iteration, so it stays a bounded packet offset.
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = header::<2>(ctx, off).ok_or(parse_error::BAD_IPV6)?;
                next = byte(e, 0);
                off += (usize::from(byte(e, 1)) + 1) * 8;
            }
            IPPROTO_AH => {
                let e = header::<2>(ctx, off).ok_or(parse_error::BAD_IPV6)?;
                next = byte(e, 0);
                off += (usize::from(byte(e, 1)) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = header::<8>(ctx, off).ok_or(parse_error::BAD_IPV6)?;
                next = byte(e, 0);
                let frag = be16_at(e, 2);
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
fn parse_l4(ctx: &TcContext, pkt_len: u32, off: usize, pkt: &mut Packet) -> Result<(), u32> {
    match pkt.proto {
        IPPROTO_TCP => {
            let h = header::<20>(ctx, off).ok_or(parse_error::TRUNCATED_L4)?;
            let data_off = usize::from(byte(h, 12) >> 4) * 4;
            if data_off < 20 || off + data_off > pkt_len as usize {
                return Err(parse_error::TRUNCATED_L4);
            }
            pkt.ct_sport = be16_at(h, 0);
            pkt.ct_dport = be16_at(h, 2);
            pkt.tcp_flags = byte(h, 13);
        }
        IPPROTO_UDP => {
            let h = header::<8>(ctx, off).ok_or(parse_error::TRUNCATED_L4)?;
            pkt.ct_sport = be16_at(h, 0);
            pkt.ct_dport = be16_at(h, 2);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Every ICMP message has at least 8 bytes: type, code, checksum
            // and 4 bytes of type-specific data (the echo id and sequence).
            let h = header::<8>(ctx, off).ok_or(parse_error::TRUNCATED_L4)?;
            let ty = byte(h, 0);
            pkt.icmp_type = ty;
            pkt.icmp_code = byte(h, 1);
            let echo = if pkt.proto == IPPROTO_ICMP {
                ty == ICMP_ECHO_REQUEST || ty == ICMP_ECHO_REPLY
            } else {
                ty == ICMPV6_ECHO_REQUEST || ty == ICMPV6_ECHO_REPLY
            };
            if echo {
                let id = be16_at(h, 4);
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

/// Conntrack update and event decision for one parsed packet.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "passing the key and value by value costs 48 more bytes of the 512-byte BPF stack"
)]
fn track(ctx: &TcContext, pkt: &Packet, pkt_len: u32, obs_point: u8) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
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
                let (decision, attr) = decide(ifindex, pkt, obs_point);
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
            return TC_PASS;
        }
        insert_flags = BPF_ANY;
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
        let (decision, attr) = decide(ifindex, pkt, obs_point);
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
                return TC_PASS;
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
    TC_PASS
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

/// Counts, reports and drops a packet that policy denies.
#[inline(always)]
fn drop_packet(
    pkt: &Packet,
    ct: &CtValue,
    attr: u32,
    ifindex: u32,
    pkt_len: u32,
    now: u64,
    obs_point: u8,
) -> i32 {
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
    TC_DROP
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
/// the peer's identity, the peer's CIDR cell, any peer. Non-first fragments
/// carry no ports and pass: their connection was decided on the first one.
#[inline(always)]
fn decide(ifindex: u32, pkt: &Packet, obs_point: u8) -> (u8, u32) {
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
    // SAFETY: a plain u32 copied out at once.
    let peer_id = unsafe { IPCACHE.get(&addr) }
        .copied()
        .unwrap_or(identity::WORLD);
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
