//! The `Flow` type: Hubble's `flow.Flow` (api/v1/flow/flow.proto) for the
//! fields Weir fills, plus Weir's own connection counters as a clearly marked
//! `extensions` value.
//!
//! Names follow the proto (and prost's naming for Rust identifiers), enum
//! numbers are the proto's, and serde produces exactly what Hubble prints with
//! `hubble observe -o json` and its flow exporter (protojson with the proto
//! field names): enums by name, `Timestamp` as RFC 3339, zero and empty values
//! omitted, `is_reply` as a bare bool whenever it is known, 64-bit integers as
//! strings. Reading accepts the same (and numbers for enums and 64-bit values),
//! ignoring fields Weir does not model, so Hubble's own flow logs load too.
//!
//! Departures from the proto's Go types, each cheaper on the per-event path and
//! converted trivially when encoding protobuf: IP addresses are `IpAddr` (the
//! proto's strings), `uuid` is a `Uuid`, endpoints and the node name are shared
//! through `Arc`, the summary is a `Cow<'static, str>`, and `Layer4`'s oneof is
//! a Rust enum. This module owns data shapes only: no decoding, no I/O.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::pbjson::{self, is_false, is_zero, proto_enum};

/// The `event_type.type` of trace events (Cilium's `MessageTypeTrace`).
pub const EVENT_TYPE_TRACE: i32 = 4;
/// The `event_type.type` of drop events (Cilium's `MessageTypeDrop`).
pub const EVENT_TYPE_DROP: i32 = 1;
/// The `event_type.type` of policy-verdict events (Cilium's
/// `MessageTypePolicyVerdict`): one per policy decision on a new connection.
pub const EVENT_TYPE_POLICY_VERDICT: i32 = 5;
/// `event_type.sub_type` of a trace seen at TO_ENDPOINT (Cilium's `TraceToLxc`).
pub const TRACE_SUB_TYPE_TO_ENDPOINT: i32 = 0;
/// `event_type.sub_type` of a trace seen at FROM_ENDPOINT (Cilium's `TraceFromLxc`).
pub const TRACE_SUB_TYPE_FROM_ENDPOINT: i32 = 5;

/// Security identity of addresses outside the cluster (Cilium's reserved `world`).
pub const IDENTITY_WORLD: u32 = 2;
/// The label Hubble puts on the world identity.
pub const LABEL_WORLD: &str = "reserved:world";

/// `@type` of [`FlowExtensions`] when serialized as the proto's `google.protobuf.Any`.
pub const EXTENSIONS_TYPE_URL: &str = "type.googleapis.com/weir.flow.v1.FlowExtensions";

/// A flow: one observed packet (or aggregated connection report) with both
/// sides enriched. Field order is the proto's declaration order, which is the
/// order protojson prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Unique per flow; the proto's string, printed as a hyphenated UUID.
    #[serde(default, skip_serializing_if = "Uuid::is_nil")]
    pub uuid: Uuid,
    #[serde(default, skip_serializing_if = "Verdict::is_default")]
    pub verdict: Verdict,
    #[serde(default, rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<Endpoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Arc<Endpoint>>,
    #[serde(default, rename = "Type", skip_serializing_if = "FlowType::is_default")]
    pub r#type: FlowType,
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub node_name: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<CiliumEventType>,
    #[serde(default, skip_serializing_if = "TrafficDirection::is_default")]
    pub traffic_direction: TrafficDirection,
    #[serde(default, skip_serializing_if = "TraceObservationPoint::is_default")]
    pub trace_observation_point: TraceObservationPoint,
    /// Only meaningful when `verdict` is DROPPED.
    #[serde(default, skip_serializing_if = "DropReason::is_default")]
    pub drop_reason_desc: DropReason,
    /// `google.protobuf.BoolValue`: `None` means unknown; `Some(false)` is printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<NetworkInterface>,
    /// Hubble's (deprecated but still printed) one-line summary.
    #[serde(default, rename = "Summary", skip_serializing_if = "str_is_empty")]
    pub summary: Cow<'static, str>,
    /// Weir's own data, outside Hubble's schema: the proto's
    /// `google.protobuf.Any extensions` holding a `weir.flow.v1.FlowExtensions`.
    /// Reading a flow whose `extensions` has another `@type` yields `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_extensions"
    )]
    pub extensions: Option<FlowExtensions>,
    /// The policies whose egress rules allowed this flow (Hubble `egress_allowed_by`).
    #[serde(default, skip_serializing_if = "policies_empty")]
    pub egress_allowed_by: Policies,
    /// The policies whose ingress rules allowed it.
    #[serde(default, skip_serializing_if = "policies_empty")]
    pub ingress_allowed_by: Policies,
    /// For a drop (or an audit), the policies that isolate the source for
    /// egress and allow none of it (Hubble `egress_denied_by`).
    #[serde(default, skip_serializing_if = "policies_empty")]
    pub egress_denied_by: Policies,
    /// Likewise for ingress at the destination.
    #[serde(default, skip_serializing_if = "policies_empty")]
    pub ingress_denied_by: Policies,
}

/// A set of policies, shared by every flow that names it (the agent's
/// attribution table hands out one `Arc` per set).
pub type Policies = Arc<[Policy]>;

fn policies_empty(p: &Policies) -> bool {
    p.is_empty()
}

/// A policy named in a flow (Hubble's `flow.Policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    pub revision: u64,
    /// `NetworkPolicy` for Kubernetes policies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

impl Flow {
    /// The L4 source port, 0 when there is none.
    pub fn source_port(&self) -> u16 {
        self.l4.as_ref().map_or(0, |l4| l4.ports().0)
    }

    /// The L4 destination port, 0 when there is none.
    pub fn destination_port(&self) -> u16 {
        self.l4.as_ref().map_or(0, |l4| l4.ports().1)
    }
}

fn str_is_empty<S: AsRef<str> + ?Sized>(s: &S) -> bool {
    s.as_ref().is_empty()
}

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the Unix epoch, UTC.
///
/// Serialized as protojson does: RFC 3339 in UTC with a `Z`, and 0, 3, 6 or 9
/// fractional digits (the fewest that are exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    /// Always in `0..1_000_000_000`.
    pub nanos: i32,
}

impl Timestamp {
    /// From nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(ns: i64) -> Self {
        Self {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }

    /// Nanoseconds since the Unix epoch (saturating).
    pub const fn unix_nanos(&self) -> i64 {
        self.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(self.nanos as i64)
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }

    /// The same instant as a `time::OffsetDateTime` in UTC, if representable.
    pub fn to_datetime(&self) -> Option<time::OffsetDateTime> {
        let t = time::OffsetDateTime::from_unix_timestamp(self.seconds).ok()?;
        t.replace_nanosecond(u32::try_from(self.nanos).ok()?).ok()
    }

    /// Parses RFC 3339 (any offset; converted to UTC).
    pub fn parse_rfc3339(s: &str) -> Result<Self, time::error::Parse> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?;
        Ok(Self {
            seconds: t.unix_timestamp(),
            nanos: t.nanosecond() as i32,
        })
    }
}

impl Timestamp {
    /// RFC 3339 the way protojson prints it, into a stack buffer (the flow
    /// log writes three per line: digits by hand are ~10x cheaper than `write!`).
    fn rfc3339(&self) -> Option<([u8; 32], usize)> {
        let t = self.to_datetime()?;
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let mut b = [0u8; 32];
        let put = |b: &mut [u8; 32], at: usize, v: u32, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                b[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(&mut b, 0, year, 4);
        b[4] = b'-';
        put(&mut b, 5, u32::from(t.month() as u8), 2);
        b[7] = b'-';
        put(&mut b, 8, u32::from(t.day()), 2);
        b[10] = b'T';
        put(&mut b, 11, u32::from(t.hour()), 2);
        b[13] = b':';
        put(&mut b, 14, u32::from(t.minute()), 2);
        b[16] = b':';
        put(&mut b, 17, u32::from(t.second()), 2);
        let mut len = 19;
        let n = self.nanos as u32;
        let (digits, v) = if n == 0 {
            (0, 0)
        } else if n.is_multiple_of(1_000_000) {
            (3, n / 1_000_000)
        } else if n.is_multiple_of(1_000) {
            (6, n / 1_000)
        } else {
            (9, n)
        };
        if digits > 0 {
            b[len] = b'.';
            put(&mut b, len + 1, v, digits);
            len += 1 + digits;
        }
        b[len] = b'Z';
        Some((b, len + 1))
    }
}

/// RFC 3339 the way protojson prints a Timestamp: UTC, `Z`, and 0, 3, 6 or 9
/// fractional digits.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, len) = self.rfc3339().ok_or(fmt::Error)?;
        f.write_str(std::str::from_utf8(&b[..len]).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (b, len) = self
            .rfc3339()
            .ok_or_else(|| serde::ser::Error::custom("timestamp out of RFC 3339 range"))?;
        s.serialize_str(std::str::from_utf8(&b[..len]).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

proto_enum! {
    /// `flow.FlowType`.
    pub enum FlowType {
        UnknownType = 0 => "UNKNOWN_TYPE",
        L3L4 = 1 => "L3_L4",
        L7 = 2 => "L7",
        Sock = 3 => "SOCK",
    }
}

proto_enum! {
    /// `flow.Verdict`.
    pub enum Verdict {
        Unknown = 0 => "VERDICT_UNKNOWN",
        Forwarded = 1 => "FORWARDED",
        Dropped = 2 => "DROPPED",
        Error = 3 => "ERROR",
        Audit = 4 => "AUDIT",
        Redirected = 5 => "REDIRECTED",
        Traced = 6 => "TRACED",
        Translated = 7 => "TRANSLATED",
    }
}

proto_enum! {
    /// `flow.IPVersion`.
    pub enum IpVersion {
        IpNotUsed = 0 => "IP_NOT_USED",
        Ipv4 = 1 => "IPv4",
        Ipv6 = 2 => "IPv6",
    }
}

proto_enum! {
    /// `flow.TrafficDirection`: the direction of the *connection* relative to
    /// the endpoint where the packet was observed (see
    /// [`TrafficDirection::from_observation`]).
    pub enum TrafficDirection {
        Unknown = 0 => "TRAFFIC_DIRECTION_UNKNOWN",
        Ingress = 1 => "INGRESS",
        Egress = 2 => "EGRESS",
    }
}

impl TrafficDirection {
    /// Hubble's rule for trace events.
    ///
    /// The direction belongs to the connection, not the packet: a connection
    /// the endpoint opened is EGRESS, one opened towards it is INGRESS. So a
    /// packet leaving the pod (FROM_ENDPOINT) is EGRESS unless it is a reply,
    /// in which case it answers an INGRESS connection; a packet delivered to
    /// the pod (TO_ENDPOINT) is INGRESS unless it is a reply to the pod's own
    /// EGRESS connection:
    ///
    /// | observation point | is_reply | traffic_direction |
    /// |---|---|---|
    /// | FROM_ENDPOINT | false | EGRESS |
    /// | FROM_ENDPOINT | true  | INGRESS |
    /// | TO_ENDPOINT   | false | INGRESS |
    /// | TO_ENDPOINT   | true  | EGRESS |
    /// | other         | any   | TRAFFIC_DIRECTION_UNKNOWN |
    pub fn from_observation(point: TraceObservationPoint, is_reply: bool) -> Self {
        let endpoint_is_source = match point {
            TraceObservationPoint::FromEndpoint => true,
            TraceObservationPoint::ToEndpoint => false,
            _ => return TrafficDirection::Unknown,
        };
        if endpoint_is_source != is_reply {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        }
    }
}

proto_enum! {
    /// `flow.TraceObservationPoint`. Weir observes at the two points of a
    /// pod's host-side veth: FROM_ENDPOINT (leaving the pod) and TO_ENDPOINT
    /// (delivered to the pod).
    pub enum TraceObservationPoint {
        UnknownPoint = 0 => "UNKNOWN_POINT",
        ToProxy = 1 => "TO_PROXY",
        ToHost = 2 => "TO_HOST",
        ToStack = 3 => "TO_STACK",
        ToOverlay = 4 => "TO_OVERLAY",
        ToEndpoint = 101 => "TO_ENDPOINT",
        FromEndpoint = 5 => "FROM_ENDPOINT",
        FromProxy = 6 => "FROM_PROXY",
        FromHost = 7 => "FROM_HOST",
        FromStack = 8 => "FROM_STACK",
        FromOverlay = 9 => "FROM_OVERLAY",
        FromNetwork = 10 => "FROM_NETWORK",
        ToNetwork = 11 => "TO_NETWORK",
        FromCrypto = 12 => "FROM_CRYPTO",
        ToCrypto = 13 => "TO_CRYPTO",
    }
}

impl TraceObservationPoint {
    /// How `hubble observe` prints the point (`to-endpoint`, `from-endpoint`, ...).
    pub const fn hubble_short_name(self) -> &'static str {
        match self {
            TraceObservationPoint::UnknownPoint => "unknown",
            TraceObservationPoint::ToProxy => "to-proxy",
            TraceObservationPoint::ToHost => "to-host",
            TraceObservationPoint::ToStack => "to-stack",
            TraceObservationPoint::ToOverlay => "to-overlay",
            TraceObservationPoint::ToEndpoint => "to-endpoint",
            TraceObservationPoint::FromEndpoint => "from-endpoint",
            TraceObservationPoint::FromProxy => "from-proxy",
            TraceObservationPoint::FromHost => "from-host",
            TraceObservationPoint::FromStack => "from-stack",
            TraceObservationPoint::FromOverlay => "from-overlay",
            TraceObservationPoint::FromNetwork => "from-network",
            TraceObservationPoint::ToNetwork => "to-network",
            TraceObservationPoint::FromCrypto => "from-crypto",
            TraceObservationPoint::ToCrypto => "to-crypto",
        }
    }
}

proto_enum! {
    /// `flow.DropReason` (all of the proto's values, deprecated ones included).
    pub enum DropReason {
        Unknown = 0 => "DROP_REASON_UNKNOWN",
        InvalidSourceMac = 130 => "INVALID_SOURCE_MAC",
        InvalidDestinationMac = 131 => "INVALID_DESTINATION_MAC",
        InvalidSourceIp = 132 => "INVALID_SOURCE_IP",
        PolicyDenied = 133 => "POLICY_DENIED",
        InvalidPacketDropped = 134 => "INVALID_PACKET_DROPPED",
        CtTruncatedOrInvalidHeader = 135 => "CT_TRUNCATED_OR_INVALID_HEADER",
        CtMissingTcpAckFlag = 136 => "CT_MISSING_TCP_ACK_FLAG",
        CtUnknownL4Protocol = 137 => "CT_UNKNOWN_L4_PROTOCOL",
        CtCannotCreateEntryFromPacket = 138 => "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
        UnsupportedL3Protocol = 139 => "UNSUPPORTED_L3_PROTOCOL",
        MissedTailCall = 140 => "MISSED_TAIL_CALL",
        ErrorWritingToPacket = 141 => "ERROR_WRITING_TO_PACKET",
        UnknownL4Protocol = 142 => "UNKNOWN_L4_PROTOCOL",
        UnknownIcmpv4Code = 143 => "UNKNOWN_ICMPV4_CODE",
        UnknownIcmpv4Type = 144 => "UNKNOWN_ICMPV4_TYPE",
        UnknownIcmpv6Code = 145 => "UNKNOWN_ICMPV6_CODE",
        UnknownIcmpv6Type = 146 => "UNKNOWN_ICMPV6_TYPE",
        ErrorRetrievingTunnelKey = 147 => "ERROR_RETRIEVING_TUNNEL_KEY",
        ErrorRetrievingTunnelOptions = 148 => "ERROR_RETRIEVING_TUNNEL_OPTIONS",
        InvalidGeneveOption = 149 => "INVALID_GENEVE_OPTION",
        UnknownL3TargetAddress = 150 => "UNKNOWN_L3_TARGET_ADDRESS",
        StaleOrUnroutableIp = 151 => "STALE_OR_UNROUTABLE_IP",
        NoMatchingLocalContainerFound = 152 => "NO_MATCHING_LOCAL_CONTAINER_FOUND",
        ErrorWhileCorrectingL3Checksum = 153 => "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
        ErrorWhileCorrectingL4Checksum = 154 => "ERROR_WHILE_CORRECTING_L4_CHECKSUM",
        CtMapInsertionFailed = 155 => "CT_MAP_INSERTION_FAILED",
        InvalidIpv6ExtensionHeader = 156 => "INVALID_IPV6_EXTENSION_HEADER",
        IpFragmentationNotSupported = 157 => "IP_FRAGMENTATION_NOT_SUPPORTED",
        ServiceBackendNotFound = 158 => "SERVICE_BACKEND_NOT_FOUND",
        NoTunnelOrEncapsulationEndpoint = 160 => "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
        FailedToInsertIntoProxymap = 161 => "FAILED_TO_INSERT_INTO_PROXYMAP",
        ReachedEdtRateLimitingDropHorizon = 162 => "REACHED_EDT_RATE_LIMITING_DROP_HORIZON",
        UnknownConnectionTrackingState = 163 => "UNKNOWN_CONNECTION_TRACKING_STATE",
        LocalHostIsUnreachable = 164 => "LOCAL_HOST_IS_UNREACHABLE",
        NoConfigurationAvailableToPerformPolicyDecision = 165 => "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
        UnsupportedL2Protocol = 166 => "UNSUPPORTED_L2_PROTOCOL",
        NoMappingForNatMasquerade = 167 => "NO_MAPPING_FOR_NAT_MASQUERADE",
        UnsupportedProtocolForNatMasquerade = 168 => "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
        FibLookupFailed = 169 => "FIB_LOOKUP_FAILED",
        EncapsulationTrafficIsProhibited = 170 => "ENCAPSULATION_TRAFFIC_IS_PROHIBITED",
        InvalidIdentity = 171 => "INVALID_IDENTITY",
        UnknownSender = 172 => "UNKNOWN_SENDER",
        NatNotNeeded = 173 => "NAT_NOT_NEEDED",
        IsAClusterip = 174 => "IS_A_CLUSTERIP",
        FirstLogicalDatagramFragmentNotFound = 175 => "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
        ForbiddenIcmpv6Message = 176 => "FORBIDDEN_ICMPV6_MESSAGE",
        DeniedByLbSrcRangeCheck = 177 => "DENIED_BY_LB_SRC_RANGE_CHECK",
        SocketLookupFailed = 178 => "SOCKET_LOOKUP_FAILED",
        SocketAssignFailed = 179 => "SOCKET_ASSIGN_FAILED",
        ProxyRedirectionNotSupportedForProtocol = 180 => "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
        PolicyDeny = 181 => "POLICY_DENY",
        VlanFiltered = 182 => "VLAN_FILTERED",
        InvalidVni = 183 => "INVALID_VNI",
        InvalidTcBuffer = 184 => "INVALID_TC_BUFFER",
        NoSid = 185 => "NO_SID",
        MissingSrv6State = 186 => "MISSING_SRV6_STATE",
        Nat46 = 187 => "NAT46",
        Nat64 = 188 => "NAT64",
        AuthRequired = 189 => "AUTH_REQUIRED",
        CtNoMapFound = 190 => "CT_NO_MAP_FOUND",
        SnatNoMapFound = 191 => "SNAT_NO_MAP_FOUND",
        InvalidClusterId = 192 => "INVALID_CLUSTER_ID",
        UnsupportedProtocolForDsrEncap = 193 => "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP",
        NoEgressGateway = 194 => "NO_EGRESS_GATEWAY",
        UnencryptedTraffic = 195 => "UNENCRYPTED_TRAFFIC",
        TtlExceeded = 196 => "TTL_EXCEEDED",
        NoNodeId = 197 => "NO_NODE_ID",
        DropRateLimited = 198 => "DROP_RATE_LIMITED",
        IgmpHandled = 199 => "IGMP_HANDLED",
        IgmpSubscribed = 200 => "IGMP_SUBSCRIBED",
        MulticastHandled = 201 => "MULTICAST_HANDLED",
        DropHostNotReady = 202 => "DROP_HOST_NOT_READY",
        DropEpNotReady = 203 => "DROP_EP_NOT_READY",
        DropNoEgressIp = 204 => "DROP_NO_EGRESS_IP",
        DropPuntProxy = 205 => "DROP_PUNT_PROXY",
    }
}

impl DropReason {
    /// A short human text for the compact printer (Hubble prints Cilium's
    /// drop reason texts there); falls back to the proto name.
    pub fn description(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "Policy denied",
            DropReason::PolicyDeny => "Policy denied by denylist",
            DropReason::InvalidPacketDropped => "Invalid packet",
            DropReason::CtTruncatedOrInvalidHeader => "CT: Truncated or invalid header",
            DropReason::CtMapInsertionFailed => "CT: Map insertion failed",
            DropReason::UnknownL4Protocol => "Unknown L4 protocol",
            DropReason::UnsupportedL3Protocol => "Unsupported L3 protocol",
            DropReason::ServiceBackendNotFound => "Service backend not found",
            DropReason::FibLookupFailed => "FIB lookup failed",
            DropReason::TtlExceeded => "TTL exceeded",
            other => other.as_str_name(),
        }
    }
}

proto_enum! {
    /// `flow.LostEventSource`: where events were lost. Weir maps its kernel
    /// ring buffer to PERF_EVENT_RING_BUFFER, the agent's event queue to
    /// OBSERVER_EVENTS_QUEUE and a slow flow consumer to HUBBLE_RING_BUFFER.
    pub enum LostEventSource {
        UnknownLostEventSource = 0 => "UNKNOWN_LOST_EVENT_SOURCE",
        PerfEventRingBuffer = 1 => "PERF_EVENT_RING_BUFFER",
        ObserverEventsQueue = 2 => "OBSERVER_EVENTS_QUEUE",
        HubbleRingBuffer = 3 => "HUBBLE_RING_BUFFER",
    }
}

proto_enum! {
    /// Why the datapath emitted the event (Weir extension; numbers are
    /// `weir_common::emit::*`).
    pub enum EmitReason {
        Unknown = 0 => "EMIT_REASON_UNKNOWN",
        New = 1 => "NEW",
        TcpFlag = 2 => "TCP_FLAG",
        Report = 3 => "REPORT",
        Packet = 4 => "PACKET",
    }
}

/// `flow.IP`. The proto's address strings are `IpAddr` here; `None` is the
/// empty string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_ip")]
    pub source: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_ip")]
    pub destination: Option<IpAddr>,
    #[serde(
        default,
        rename = "ipVersion",
        skip_serializing_if = "IpVersion::is_default"
    )]
    pub ip_version: IpVersion,
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
}

/// serde for an optional address as the proto's string ("" reads as `None`).
mod opt_ip {
    use std::fmt::Write as _;
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pbjson::{StackStr, format_u64};

    pub(super) fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(IpAddr::V4(v4)) => {
                // Dotted quad by hand: `Display` for addresses is slow and
                // this runs twice per flow log line.
                let mut buf = [0u8; 15];
                let mut len = 0;
                for (i, octet) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    let mut digits = [0u8; 20];
                    let d = format_u64(u64::from(*octet), &mut digits);
                    buf[len..len + d.len()].copy_from_slice(d.as_bytes());
                    len += d.len();
                }
                s.serialize_str(
                    std::str::from_utf8(&buf[..len]).map_err(serde::ser::Error::custom)?,
                )
            }
            Some(ip) => {
                // The longest IPv6 text form is 45 bytes.
                let mut buf = StackStr::<48>::new();
                let _ = write!(buf, "{ip}");
                s.serialize_str(buf.as_str())
            }
            None => s.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// `flow.Layer4`'s `protocol` oneof, serialized as protojson does:
/// `{"TCP":{...}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    #[serde(rename = "UDP")]
    Udp(Udp),
    #[serde(rename = "ICMPv4")]
    Icmpv4(Icmp),
    #[serde(rename = "ICMPv6")]
    Icmpv6(Icmp),
    #[serde(rename = "SCTP")]
    Sctp(Udp),
    #[serde(rename = "VRRP")]
    Vrrp(Vrrp),
    #[serde(rename = "IGMP")]
    Igmp(Igmp),
}

impl Layer4 {
    /// (source, destination) ports; (0, 0) for port-less protocols.
    pub fn ports(&self) -> (u16, u16) {
        match self {
            Layer4::Tcp(t) => (t.source_port as u16, t.destination_port as u16),
            Layer4::Udp(u) | Layer4::Sctp(u) => (u.source_port as u16, u.destination_port as u16),
            _ => (0, 0),
        }
    }

    /// The oneof member's proto name (`TCP`, `UDP`, `ICMPv4`, ...), which is
    /// also Hubble's `protocol` metric label.
    pub const fn protocol_name(&self) -> &'static str {
        match self {
            Layer4::Tcp(_) => "TCP",
            Layer4::Udp(_) => "UDP",
            Layer4::Icmpv4(_) => "ICMPv4",
            Layer4::Icmpv6(_) => "ICMPv6",
            Layer4::Sctp(_) => "SCTP",
            Layer4::Vrrp(_) => "VRRP",
            Layer4::Igmp(_) => "IGMP",
        }
    }
}

/// `flow.TCP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source_port: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub destination_port: u32,
    /// Always set by the decoder (printed as `{}` when no flag is set, as Hubble does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

/// `flow.UDP` (also used for `flow.SCTP`, which has the same two fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Udp {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source_port: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub destination_port: u32,
}

/// `flow.ICMPv4` and `flow.ICMPv6` (same fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: u32,
}

/// `flow.VRRP` (read from Hubble logs; Weir does not produce it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vrrp {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vrid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
}

/// `flow.IGMP` (read from Hubble logs; Weir does not produce it). The group
/// address is kept as an address rather than the proto's string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Igmp {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_ip")]
    pub group_address: Option<IpAddr>,
}

/// `flow.TCPFlags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub struct TcpFlags {
    #[serde(default, rename = "FIN", skip_serializing_if = "is_false")]
    pub fin: bool,
    #[serde(default, rename = "SYN", skip_serializing_if = "is_false")]
    pub syn: bool,
    #[serde(default, rename = "RST", skip_serializing_if = "is_false")]
    pub rst: bool,
    #[serde(default, rename = "PSH", skip_serializing_if = "is_false")]
    pub psh: bool,
    #[serde(default, rename = "ACK", skip_serializing_if = "is_false")]
    pub ack: bool,
    #[serde(default, rename = "URG", skip_serializing_if = "is_false")]
    pub urg: bool,
    #[serde(default, rename = "ECE", skip_serializing_if = "is_false")]
    pub ece: bool,
    #[serde(default, rename = "CWR", skip_serializing_if = "is_false")]
    pub cwr: bool,
    #[serde(default, rename = "NS", skip_serializing_if = "is_false")]
    pub ns: bool,
}

impl TcpFlags {
    /// From the TCP header's flags byte (`weir_common::tcp::*` bits). NS lives
    /// outside that byte and is never set here.
    pub const fn from_header_byte(b: u8) -> Self {
        use weir_common::tcp;
        Self {
            fin: b & tcp::FIN != 0,
            syn: b & tcp::SYN != 0,
            rst: b & tcp::RST != 0,
            psh: b & tcp::PSH != 0,
            ack: b & tcp::ACK != 0,
            urg: b & tcp::URG != 0,
            ece: b & tcp::ECE != 0,
            cwr: b & tcp::CWR != 0,
            ns: false,
        }
    }

    /// 9-bit index used by the summary table: bit i is the i-th flag in
    /// Hubble's print order (SYN, ACK, RST, FIN, PSH, URG, ECE, CWR, NS).
    const fn summary_index(&self) -> usize {
        (self.syn as usize)
            | (self.ack as usize) << 1
            | (self.rst as usize) << 2
            | (self.fin as usize) << 3
            | (self.psh as usize) << 4
            | (self.urg as usize) << 5
            | (self.ece as usize) << 6
            | (self.cwr as usize) << 7
            | (self.ns as usize) << 8
    }

    /// Hubble's summary text, e.g. `TCP Flags: SYN, ACK`, from a table built
    /// once (512 combinations), so the per-event path does not allocate.
    pub fn summary(&self) -> &'static str {
        static TABLE: LazyLock<Vec<String>> = LazyLock::new(|| {
            const NAMES: [&str; 9] = ["SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS"];
            (0..512usize)
                .map(|bits| {
                    let set: Vec<&str> = NAMES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, n)| *n)
                        .collect();
                    format!("TCP Flags: {}", set.join(", "))
                })
                .collect()
        });
        TABLE[self.summary_index()].as_str()
    }
}

/// `flow.Endpoint`: one side of the flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Agent-local endpoint id; 0 (omitted) for non-local or unknown addresses.
    #[serde(default, rename = "ID", skip_serializing_if = "is_zero")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Hubble-form labels (`k8s:app=x`, `reserved:world`, ...), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
}

impl Endpoint {
    /// The endpoint Hubble reports for addresses outside the cluster.
    pub fn world() -> Self {
        Self {
            identity: IDENTITY_WORLD,
            labels: vec![LABEL_WORLD.to_owned()],
            ..Self::default()
        }
    }
}

/// `flow.Workload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// `flow.CiliumEventType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiliumEventType {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r#type: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sub_type: i32,
}

/// `flow.NetworkInterface`: the host-side interface of the endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub name: Arc<str>,
}

/// `flow.LostEvent`: events lost before they reached a consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvent {
    #[serde(default, skip_serializing_if = "LostEventSource::is_default")]
    pub source: LostEventSource,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    pub num_events_lost: u64,
    /// `google.protobuf.Int32Value`: the CPU for per-CPU sources, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Timestamp>,
}

/// Weir's own per-connection counters carried with each flow (not part of
/// Hubble's schema). "Forward" is initiator -> responder, "reverse" the other
/// way, as seen at this flow's observation point.
///
/// JSON: a protojson `Any`: `{"@type":"type.googleapis.com/weir.flow.v1.FlowExtensions", ...}`
/// with 64-bit counters as strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ExtensionsJson", from = "ExtensionsJson")]
pub struct FlowExtensions {
    pub emit_reason: EmitReason,
    /// When the connection was first seen.
    pub first_seen: Option<Timestamp>,
    pub packets_forward: u64,
    pub packets_reverse: u64,
    pub bytes_forward: u64,
    pub bytes_reverse: u64,
    /// Length of the packet that triggered the event.
    pub packet_length: u32,
    /// Union of TCP flags seen so far, initiator -> responder.
    pub tcp_flags_forward: Option<TcpFlags>,
    /// Union of TCP flags seen so far, responder -> initiator.
    pub tcp_flags_reverse: Option<TcpFlags>,
}

#[derive(Serialize, Deserialize)]
struct ExtensionsJson {
    #[serde(rename = "@type", default)]
    type_url: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "EmitReason::is_default")]
    emit_reason: EmitReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seen: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    packets_forward: u64,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    packets_reverse: u64,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    bytes_forward: u64,
    #[serde(default, skip_serializing_if = "is_zero", with = "pbjson::u64_string")]
    bytes_reverse: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    packet_length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_flags_forward: Option<TcpFlags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_flags_reverse: Option<TcpFlags>,
}

impl From<FlowExtensions> for ExtensionsJson {
    fn from(e: FlowExtensions) -> Self {
        Self {
            type_url: Cow::Borrowed(EXTENSIONS_TYPE_URL),
            emit_reason: e.emit_reason,
            first_seen: e.first_seen,
            packets_forward: e.packets_forward,
            packets_reverse: e.packets_reverse,
            bytes_forward: e.bytes_forward,
            bytes_reverse: e.bytes_reverse,
            packet_length: e.packet_length,
            tcp_flags_forward: e.tcp_flags_forward,
            tcp_flags_reverse: e.tcp_flags_reverse,
        }
    }
}

impl From<ExtensionsJson> for FlowExtensions {
    fn from(j: ExtensionsJson) -> Self {
        Self {
            emit_reason: j.emit_reason,
            first_seen: j.first_seen,
            packets_forward: j.packets_forward,
            packets_reverse: j.packets_reverse,
            bytes_forward: j.bytes_forward,
            bytes_reverse: j.bytes_reverse,
            packet_length: j.packet_length,
            tcp_flags_forward: j.tcp_flags_forward,
            tcp_flags_reverse: j.tcp_flags_reverse,
        }
    }
}

/// Reads `extensions`, keeping it only when its `@type` is Weir's.
fn deserialize_extensions<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<FlowExtensions>, D::Error> {
    let json = Option::<ExtensionsJson>::deserialize(d)?;
    Ok(json
        .filter(|j| j.type_url == EXTENSIONS_TYPE_URL)
        .map(FlowExtensions::from))
}

/// Hubble's summary for ICMPv4 (gopacket's type names, with the code's name
/// in parentheses where it has one), e.g. `ICMPv4 EchoRequest`,
/// `ICMPv4 DestinationUnreachable(Port)`.
pub fn icmpv4_summary(r#type: u8, code: u8) -> Cow<'static, str> {
    let s = match (r#type, code) {
        (0, _) => "ICMPv4 EchoReply",
        (3, 0) => "ICMPv4 DestinationUnreachable(Net)",
        (3, 1) => "ICMPv4 DestinationUnreachable(Host)",
        (3, 2) => "ICMPv4 DestinationUnreachable(Protocol)",
        (3, 3) => "ICMPv4 DestinationUnreachable(Port)",
        (3, 4) => "ICMPv4 DestinationUnreachable(FragmentationNeeded)",
        (3, 13) => "ICMPv4 DestinationUnreachable(CommAdminProhibited)",
        (3, _) => "ICMPv4 DestinationUnreachable",
        (4, _) => "ICMPv4 SourceQuench",
        (5, _) => "ICMPv4 Redirect",
        (8, _) => "ICMPv4 EchoRequest",
        (9, _) => "ICMPv4 RouterAdvertisement",
        (10, _) => "ICMPv4 RouterSolicitation",
        (11, 0) => "ICMPv4 TimeExceeded(TTLExceeded)",
        (11, 1) => "ICMPv4 TimeExceeded(FragmentReassemblyTimeExceeded)",
        (11, _) => "ICMPv4 TimeExceeded",
        (12, _) => "ICMPv4 ParameterProblem",
        (13, _) => "ICMPv4 TimestampRequest",
        (14, _) => "ICMPv4 TimestampReply",
        (17, _) => "ICMPv4 AddressMaskRequest",
        (18, _) => "ICMPv4 AddressMaskReply",
        (t, c) => return Cow::Owned(format!("ICMPv4 {t}({c})")),
    };
    Cow::Borrowed(s)
}

/// Hubble's summary for ICMPv6, e.g. `ICMPv6 EchoRequest`,
/// `ICMPv6 NeighborSolicitation`.
pub fn icmpv6_summary(r#type: u8, code: u8) -> Cow<'static, str> {
    let s = match (r#type, code) {
        (1, 0) => "ICMPv6 DestinationUnreachable(NoRouteToDst)",
        (1, 1) => "ICMPv6 DestinationUnreachable(AdminProhibited)",
        (1, 3) => "ICMPv6 DestinationUnreachable(AddressUnreachable)",
        (1, 4) => "ICMPv6 DestinationUnreachable(PortUnreachable)",
        (1, _) => "ICMPv6 DestinationUnreachable",
        (2, _) => "ICMPv6 PacketTooBig",
        (3, 0) => "ICMPv6 TimeExceeded(HopLimitExceeded)",
        (3, _) => "ICMPv6 TimeExceeded",
        (4, _) => "ICMPv6 ParameterProblem",
        (128, _) => "ICMPv6 EchoRequest",
        (129, _) => "ICMPv6 EchoReply",
        (130, _) => "ICMPv6 MLDv1MulticastListenerQuery",
        (131, _) => "ICMPv6 MLDv1MulticastListenerReport",
        (133, _) => "ICMPv6 RouterSolicitation",
        (134, _) => "ICMPv6 RouterAdvertisement",
        (135, _) => "ICMPv6 NeighborSolicitation",
        (136, _) => "ICMPv6 NeighborAdvertisement",
        (137, _) => "ICMPv6 Redirect",
        (143, _) => "ICMPv6 MLDv2MulticastListenerReport",
        (t, c) => return Cow::Owned(format!("ICMPv6 {t}({c})")),
    };
    Cow::Borrowed(s)
}
