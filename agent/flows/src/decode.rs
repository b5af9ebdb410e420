//! Decoding: one kernel `FlowEvent` plus the endpoint index in, one enriched
//! [`Flow`] out.
//!
//! This is the per-event hot path. It does not allocate in the steady state:
//! endpoints are converted from the index's `EndpointMeta` once and then
//! shared through `Arc`, the node and interface names are `Arc<str>`, the
//! summary is a static string, the uuid is a counter. It owns the boot-time to
//! wall-clock conversion and the uuid generator; it does not touch the flow
//! ring, sockets or metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use uuid::Uuid;
use weir_common::{FlowEvent, emit, family, flag, obs, verdict};
use weir_state::{EndpointIndex, EndpointMeta};

use crate::attribution::Attribution;
use crate::flow::{
    CiliumEventType, DropReason, EVENT_TYPE_DROP, EVENT_TYPE_POLICY_VERDICT, EVENT_TYPE_TRACE,
    EmitReason, Endpoint, Flow, FlowExtensions, FlowType, Icmp, Ip, IpVersion, Layer4,
    NetworkInterface, Policies, TRACE_SUB_TYPE_FROM_ENDPOINT, TRACE_SUB_TYPE_TO_ENDPOINT, Tcp,
    TcpFlags, Timestamp, TraceObservationPoint, TrafficDirection, Udp, Verdict, Workload,
    icmpv4_summary, icmpv6_summary,
};

/// How often (in event time) the wall-clock offset is re-read, so NTP
/// adjustments and suspend/resume show up within a second.
const CLOCK_REFRESH_NS: u64 = 1_000_000_000;

/// Decodes and enriches kernel events. One per decoding thread (`&mut self`).
#[derive(Debug)]
pub struct Decoder {
    node_name: Arc<str>,
    clock: BootClock,
    uuids: UuidGen,
    /// `EndpointMeta` (by address; the `Arc` is kept so the address is never
    /// reused while cached) -> the flow-shaped endpoint built from it once.
    endpoints: HashMap<usize, (Arc<EndpointMeta>, Arc<Endpoint>), PtrHash>,
    world: Arc<Endpoint>,
    /// ifindex -> name (empty: not found in this network namespace).
    interfaces: HashMap<u32, Arc<str>, PtrHash>,
    /// The shared empty name, so unresolvable interfaces do not allocate per event.
    no_name: Arc<str>,
    /// Names the policies of an event's attribution id.
    attribution: Option<Arc<Attribution>>,
    /// Ids already looked up in `attribution` (an id never changes its
    /// set), so an event does not take the table's lock; cleared when full.
    attribution_seen: HashMap<u32, Policies>,
}

/// Bound of [`Decoder::attribution_seen`].
const ATTRIBUTION_SEEN_MAX: usize = 4096;

impl Decoder {
    /// A decoder for flows observed on `node_name`, converting event times
    /// with the live clocks.
    pub fn new(node_name: &str) -> Self {
        Self::with_clock(node_name, BootClock::live())
    }

    /// A decoder with a fixed `realtime - boottime` offset in nanoseconds
    /// (never refreshed): for tests and for replaying recorded events.
    pub fn with_fixed_clock(node_name: &str, realtime_minus_boottime_ns: i64) -> Self {
        Self::with_clock(node_name, BootClock::fixed(realtime_minus_boottime_ns))
    }

    fn with_clock(node_name: &str, clock: BootClock) -> Self {
        Self {
            node_name: Arc::from(node_name),
            clock,
            uuids: UuidGen::new(),
            endpoints: HashMap::default(),
            world: Arc::new(Endpoint::world()),
            interfaces: HashMap::default(),
            no_name: Arc::from(""),
            attribution: None,
            attribution_seen: HashMap::new(),
        }
    }

    /// Names the policies of events' attribution ids from `table` (without
    /// it, flows carry no `*_allowed_by` / `*_denied_by`).
    pub fn set_attribution(&mut self, table: Arc<Attribution>) {
        self.attribution = Some(table);
        self.attribution_seen.clear();
    }

    /// The policies of attribution id `id` (0: none).
    fn policies_of(&mut self, id: u32) -> Option<Policies> {
        if id == 0 {
            return None;
        }
        if let Some(set) = self.attribution_seen.get(&id) {
            return Some(set.clone());
        }
        let set = self.attribution.as_ref()?.get(id)?;
        if self.attribution_seen.len() >= ATTRIBUTION_SEEN_MAX {
            self.attribution_seen.clear();
        }
        self.attribution_seen.insert(id, set.clone());
        Some(set)
    }

    /// The node name put on every flow.
    pub fn node_name(&self) -> &Arc<str> {
        &self.node_name
    }

    /// Names the interface `ifindex` (overrides the kernel lookup; the agent
    /// knows the host-side veth names of its endpoints).
    pub fn set_interface_name(&mut self, ifindex: u32, name: &str) {
        self.interfaces.insert(ifindex, Arc::from(name));
    }

    /// Forgets a cached interface name (after its endpoint is deleted).
    pub fn forget_interface(&mut self, ifindex: u32) {
        self.interfaces.remove(&ifindex);
    }

    /// A fresh flow uuid (what [`Decoder::decode`] puts in `uuid`).
    #[inline]
    pub fn next_uuid(&mut self) -> Uuid {
        self.uuids.next()
    }

    /// The current `realtime - boottime` offset in nanoseconds.
    pub fn clock_offset_ns(&self) -> i64 {
        self.clock.offset_ns
    }

    /// Converts a `bpf_ktime_get_boot_ns()` value to wall-clock time.
    pub fn boot_to_wall(&mut self, boot_ns: u64) -> Timestamp {
        self.clock.refresh_if_due(boot_ns);
        self.clock.convert(boot_ns)
    }

    /// Decodes one event and enriches both sides from `index`.
    ///
    /// Never fails: fields the event does not carry (unknown family, no L4)
    /// are left empty, as Hubble does.
    pub fn decode(&mut self, ev: &FlowEvent, index: &EndpointIndex) -> Flow {
        let time = self.boot_to_wall(ev.ts_ns);
        let first_seen = self.clock.convert(ev.first_seen_ns);

        let (src, dst, ip_version) = match ev.family {
            family::IPV4 => (
                Some(IpAddr::V4(v4(&ev.src_addr))),
                Some(IpAddr::V4(v4(&ev.dst_addr))),
                IpVersion::Ipv4,
            ),
            family::IPV6 => (
                Some(IpAddr::V6(Ipv6Addr::from(ev.src_addr))),
                Some(IpAddr::V6(Ipv6Addr::from(ev.dst_addr))),
                IpVersion::Ipv6,
            ),
            _ => (None, None, IpVersion::IpNotUsed),
        };

        let (l4, summary) = decode_l4(ev, ip_version);

        let verdict = match ev.verdict {
            verdict::FORWARDED => Verdict::Forwarded,
            verdict::DROPPED => Verdict::Dropped,
            verdict::AUDIT => Verdict::Audit,
            _ => Verdict::Unknown,
        };
        let drop_reason_desc = if verdict == Verdict::Dropped {
            DropReason::from_i32(i32::from(ev.drop_reason)).unwrap_or_default()
        } else {
            DropReason::Unknown
        };

        let point = match ev.obs_point {
            obs::FROM_ENDPOINT => TraceObservationPoint::FromEndpoint,
            obs::TO_ENDPOINT => TraceObservationPoint::ToEndpoint,
            _ => TraceObservationPoint::UnknownPoint,
        };
        let is_reply = ev.flags & flag::REPLY != 0;
        // Drops are Cilium drop events (type 1, sub_type = reason), so
        // `hubble observe --type drop` selects them; everything else is a trace
        // (type 4) whose sub_type is Cilium's observation point number.
        let event_type = if verdict == Verdict::Dropped {
            CiliumEventType {
                r#type: EVENT_TYPE_DROP,
                sub_type: i32::from(ev.drop_reason),
            }
        } else {
            CiliumEventType {
                r#type: EVENT_TYPE_TRACE,
                sub_type: match point {
                    TraceObservationPoint::FromEndpoint => TRACE_SUB_TYPE_FROM_ENDPOINT,
                    _ => TRACE_SUB_TYPE_TO_ENDPOINT,
                },
            }
        };

        let mut source = src.map(|ip| self.endpoint_for(&ip, index));
        let mut destination = dst.map(|ip| self.endpoint_for(&ip, index));
        // A hostNetwork pod's cgroup hooks report its own side by the
        // synthetic endpoint id: its address is the node's.
        if ev.ifindex & weir_common::CGROUP_ENDPOINT_BIT != 0
            && let Some(meta) = index.lookup_endpoint(ev.ifindex)
        {
            let local = Some(self.endpoint_of(meta, index));
            if ev.obs_point == obs::FROM_ENDPOINT {
                source = local;
            } else {
                destination = local;
            }
        }
        let interface = (ev.ifindex != 0).then(|| NetworkInterface {
            index: ev.ifindex,
            name: self.interface_name(ev.ifindex),
        });

        let tcp = ev.proto == libc::IPPROTO_TCP as u8 && ev.flags & flag::NO_L4 == 0;
        let extensions = FlowExtensions {
            emit_reason: match ev.emit_reason {
                emit::NEW => EmitReason::New,
                emit::TCP_FLAG => EmitReason::TcpFlag,
                emit::REPORT => EmitReason::Report,
                emit::PACKET => EmitReason::Packet,
                _ => EmitReason::Unknown,
            },
            first_seen: (ev.first_seen_ns != 0).then_some(first_seen),
            packets_forward: ev.packets[0],
            packets_reverse: ev.packets[1],
            bytes_forward: ev.bytes[0],
            bytes_reverse: ev.bytes[1],
            packet_length: ev.pkt_len,
            tcp_flags_forward: (tcp && ev.tcp_flags_seen[0] != 0)
                .then(|| TcpFlags::from_header_byte(ev.tcp_flags_seen[0])),
            tcp_flags_reverse: (tcp && ev.tcp_flags_seen[1] != 0)
                .then(|| TcpFlags::from_header_byte(ev.tcp_flags_seen[1])),
        };

        // The attribution belongs to the direction the connection was
        // decided in at this endpoint: egress for a connection the endpoint
        // opened (forward packets leave it at FROM_ENDPOINT), else ingress.
        let mut policies: [Policies; 4] = Default::default();
        if let Some(set) = self.policies_of(ev.policy_attr) {
            let egress = (ev.obs_point == obs::FROM_ENDPOINT) != is_reply;
            let denied = matches!(verdict, Verdict::Dropped | Verdict::Audit);
            policies[usize::from(egress) * 2 + usize::from(denied)] = set;
        }
        let [
            ingress_allowed_by,
            ingress_denied_by,
            egress_allowed_by,
            egress_denied_by,
        ] = policies;

        Flow {
            time: Some(time),
            uuid: self.uuids.next(),
            verdict,
            ip: (ip_version != IpVersion::IpNotUsed).then_some(Ip {
                source: src,
                destination: dst,
                ip_version,
                encrypted: false,
            }),
            l4,
            source,
            destination,
            r#type: FlowType::L3L4,
            node_name: Arc::clone(&self.node_name),
            event_type: Some(event_type),
            traffic_direction: TrafficDirection::from_observation(point, is_reply),
            trace_observation_point: point,
            drop_reason_desc,
            is_reply: Some(is_reply),
            interface,
            summary,
            extensions: Some(extensions),
            egress_allowed_by,
            ingress_allowed_by,
            egress_denied_by,
            ingress_denied_by,
        }
    }

    /// The policy-verdict flow that goes with `flow` (decoded from `ev`),
    /// as Cilium emits one beside the trace or drop event of a packet whose
    /// connection policy just decided: the first packet of a new connection
    /// (or any dropped or audited packet) at an endpoint isolated in that
    /// direction. Same flow, `event_type` PolicyVerdict; `None` otherwise.
    pub fn policy_verdict(&mut self, ev: &FlowEvent, flow: &Flow) -> Option<Flow> {
        let decided = ev.policy_attr != 0
            && ev.flags & flag::REPLY == 0
            && (ev.emit_reason == emit::NEW
                || ev.emit_reason == emit::PACKET && ev.verdict != verdict::FORWARDED);
        if !decided {
            return None;
        }
        let mut v = flow.clone();
        v.uuid = self.uuids.next();
        v.event_type = Some(CiliumEventType {
            r#type: EVENT_TYPE_POLICY_VERDICT,
            sub_type: 0,
        });
        Some(v)
    }

    /// The flow endpoint for `ip`: the cached conversion of its index entry,
    /// or the shared world endpoint.
    #[inline]
    fn endpoint_for(&mut self, ip: &IpAddr, index: &EndpointIndex) -> Arc<Endpoint> {
        let Some(meta) = index.lookup(ip) else {
            return Arc::clone(&self.world);
        };
        self.endpoint_of(meta, index)
    }

    /// The flow endpoint of an index entry, converted once and cached.
    #[inline]
    fn endpoint_of(&mut self, meta: &Arc<EndpointMeta>, index: &EndpointIndex) -> Arc<Endpoint> {
        let key = Arc::as_ptr(meta) as usize;
        if let Some((_, ep)) = self.endpoints.get(&key) {
            return Arc::clone(ep);
        }
        // Entries of replaced index snapshots are never hit again; dropping the
        // whole cache when it outgrows the index bounds that garbage cheaply.
        if self.endpoints.len() >= 2 * index.len() + 1024 {
            self.endpoints.clear();
        }
        let ep = Arc::new(endpoint_from_meta(meta));
        self.endpoints
            .insert(key, (Arc::clone(meta), Arc::clone(&ep)));
        ep
    }

    fn interface_name(&mut self, ifindex: u32) -> Arc<str> {
        if let Some(name) = self.interfaces.get(&ifindex) {
            return Arc::clone(name);
        }
        if self.interfaces.len() >= 65_536 {
            self.interfaces.clear();
        }
        let name = match if_name(ifindex) {
            Some(n) => Arc::from(n),
            None => {
                tracing::debug!(
                    ifindex,
                    "interface name not found in this network namespace"
                );
                Arc::clone(&self.no_name)
            }
        };
        self.interfaces.insert(ifindex, Arc::clone(&name));
        name
    }
}

/// Converts the index's view of an endpoint into the flow's.
pub fn endpoint_from_meta(meta: &EndpointMeta) -> Endpoint {
    Endpoint {
        // Endpoint ids are small agent-local numbers; saturate rather than wrap.
        id: u32::try_from(meta.endpoint_id).unwrap_or(u32::MAX),
        identity: meta.identity,
        cluster_name: String::new(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
        pod_name: meta.pod_name.clone(),
        workloads: if meta.workload.is_empty() {
            Vec::new()
        } else {
            vec![Workload {
                name: meta.workload.clone(),
                kind: String::new(),
            }]
        },
    }
}

fn v4(addr: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
}

fn decode_l4(ev: &FlowEvent, ip_version: IpVersion) -> (Option<Layer4>, Cow<'static, str>) {
    let l3_summary = match ip_version {
        IpVersion::Ipv4 => "IPv4",
        IpVersion::Ipv6 => "IPv6",
        IpVersion::IpNotUsed => "",
    };
    if ev.flags & flag::NO_L4 != 0 {
        return (None, Cow::Borrowed(l3_summary));
    }
    let sport = u32::from(ev.src_port);
    let dport = u32::from(ev.dst_port);
    match i32::from(ev.proto) {
        libc::IPPROTO_TCP => {
            let flags = TcpFlags::from_header_byte(ev.tcp_flags);
            (
                Some(Layer4::Tcp(Tcp {
                    source_port: sport,
                    destination_port: dport,
                    flags: Some(flags),
                })),
                Cow::Borrowed(flags.summary()),
            )
        }
        libc::IPPROTO_UDP => (
            Some(Layer4::Udp(Udp {
                source_port: sport,
                destination_port: dport,
            })),
            Cow::Borrowed("UDP"),
        ),
        libc::IPPROTO_SCTP => (
            Some(Layer4::Sctp(Udp {
                source_port: sport,
                destination_port: dport,
            })),
            Cow::Borrowed("SCTP"),
        ),
        libc::IPPROTO_ICMP => (
            Some(Layer4::Icmpv4(Icmp {
                r#type: u32::from(ev.icmp_type),
                code: u32::from(ev.icmp_code),
            })),
            icmpv4_summary(ev.icmp_type, ev.icmp_code),
        ),
        libc::IPPROTO_ICMPV6 => (
            Some(Layer4::Icmpv6(Icmp {
                r#type: u32::from(ev.icmp_type),
                code: u32::from(ev.icmp_code),
            })),
            icmpv6_summary(ev.icmp_type, ev.icmp_code),
        ),
        _ => (None, Cow::Borrowed(l3_summary)),
    }
}

/// The interface's name in the caller's network namespace.
fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, the size if_indextoname requires;
    // on success it holds a NUL-terminated name.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname succeeded, so `buf` is NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Boot-time (`CLOCK_BOOTTIME`, what `bpf_ktime_get_boot_ns` reads) to wall
/// clock conversion by a cached offset.
#[derive(Debug, Clone)]
struct BootClock {
    offset_ns: i64,
    next_refresh_boot_ns: u64,
    live: bool,
}

impl BootClock {
    fn live() -> Self {
        let offset_ns = measure_offset();
        Self {
            offset_ns,
            next_refresh_boot_ns: now_ns(libc::CLOCK_BOOTTIME).saturating_add(CLOCK_REFRESH_NS),
            live: true,
        }
    }

    fn fixed(offset_ns: i64) -> Self {
        Self {
            offset_ns,
            next_refresh_boot_ns: u64::MAX,
            live: false,
        }
    }

    #[inline]
    fn refresh_if_due(&mut self, boot_ns: u64) {
        if self.live && boot_ns >= self.next_refresh_boot_ns {
            self.offset_ns = measure_offset();
            self.next_refresh_boot_ns = boot_ns.saturating_add(CLOCK_REFRESH_NS);
        }
    }

    #[inline]
    fn convert(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_unix_nanos((boot_ns as i64).saturating_add(self.offset_ns))
    }
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are
    // CLOCK_REALTIME and CLOCK_BOOTTIME, which Linux always provides.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `realtime - boottime`, read between two boot-time reads; the tightest of a
/// few tries wins, so a preemption between the reads does not skew it.
fn measure_offset() -> i64 {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..3 {
        let b1 = now_ns(libc::CLOCK_BOOTTIME);
        let r = now_ns(libc::CLOCK_REALTIME);
        let b2 = now_ns(libc::CLOCK_BOOTTIME);
        let width = b2.saturating_sub(b1);
        let offset = r as i64 - (b1 + width / 2) as i64;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    best.map_or(0, |(_, o)| o)
}

/// Flow uuids: a random 60-bit prefix per decoder plus a 62-bit counter, laid
/// out as a version-4 UUID (version nibble 4, RFC 4122 variant). Unique within
/// a decoder by construction and across decoders and restarts by the random
/// prefix; costs an increment, not a random draw.
#[derive(Debug, Clone)]
struct UuidGen {
    prefix: u64,
    counter: u64,
}

impl UuidGen {
    fn new() -> Self {
        // The one random draw per decoder.
        let (hi, _) = Uuid::new_v4().as_u64_pair();
        Self {
            prefix: (hi & !0xF000) | 0x4000,
            counter: 0,
        }
    }

    #[inline]
    fn next(&mut self) -> Uuid {
        self.counter = self.counter.wrapping_add(1);
        let lo = (self.counter & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        Uuid::from_u64_pair(self.prefix, lo)
    }
}

/// Hasher for keys that are already well spread or are pointers: one
/// multiply, folded so the low bits (the bucket index) depend on every input
/// bit. SipHash would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy, Debug)]
struct PtrHasher(u64);

type PtrHash = BuildHasherDefault<PtrHasher>;

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}
