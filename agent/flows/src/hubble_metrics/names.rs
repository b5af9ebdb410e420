//! Label values exactly as Hubble prints them: the flow protocol, trace
//! observation points, lower-case verdicts and gopacket's ICMP type/code names.

use std::borrow::Cow;

use crate::flow::{EVENT_TYPE_DROP, EVENT_TYPE_TRACE, Flow, Layer4, Verdict};

/// Cilium's `MessageTypeCapture`.
pub(crate) const EVENT_TYPE_CAPTURE: i32 = 3;
/// Cilium's `MessageTypePolicyVerdict`.
pub(crate) use crate::flow::EVENT_TYPE_POLICY_VERDICT;
/// Cilium's `MessageTypeAccessLog` (L7 records).
pub(crate) const EVENT_TYPE_ACCESS_LOG: i32 = 129;
/// Cilium's reserved `host` identity (policy verdicts from it are not counted).
pub(crate) const IDENTITY_HOST: u32 = 1;

/// Values of the `protocol` label (Hubble's `FlowProtocol`), indexed by [`protocol`].
pub(crate) const PROTOCOLS: [&str; 10] = [
    "TCP",
    "UDP",
    "ICMPv4",
    "ICMPv6",
    "SCTP",
    "VRRP",
    "IGMP",
    "Unknown L4",
    "Unknown L7",
    "Unknown flow",
];

/// Index into [`PROTOCOLS`]: the L4 protocol for datapath events, "Unknown
/// L7" for access-log events (Weir's flows carry no L7 record), "Unknown
/// flow" for anything else.
pub(crate) fn protocol(flow: &Flow) -> usize {
    match flow.event_type.map_or(0, |e| e.r#type) {
        EVENT_TYPE_ACCESS_LOG => 8,
        EVENT_TYPE_DROP | EVENT_TYPE_TRACE | EVENT_TYPE_POLICY_VERDICT | EVENT_TYPE_CAPTURE => {
            match &flow.l4 {
                Some(Layer4::Tcp(_)) => 0,
                Some(Layer4::Udp(_)) => 1,
                Some(Layer4::Icmpv4(_)) => 2,
                Some(Layer4::Icmpv6(_)) => 3,
                Some(Layer4::Sctp(_)) => 4,
                Some(Layer4::Vrrp(_)) => 5,
                Some(Layer4::Igmp(_)) => 6,
                None => 7,
            }
        }
        _ => 9,
    }
}

/// Trace observation point names by Cilium trace sub-type number.
pub(crate) const TRACE_POINTS: [&str; 14] = [
    "to-endpoint",
    "to-proxy",
    "to-host",
    "to-stack",
    "to-overlay",
    "from-endpoint",
    "from-proxy",
    "from-host",
    "from-stack",
    "from-overlay",
    "from-network",
    "to-network",
    "from-crypto",
    "to-crypto",
];

/// Lower-case verdict names (the policy metric's `action`), by proto number.
pub(crate) const VERDICTS_LOWER: [&str; 8] = [
    "verdict_unknown",
    "forwarded",
    "dropped",
    "error",
    "audit",
    "redirected",
    "traced",
    "translated",
];

/// The number of verdicts (index = proto number).
pub(crate) const VERDICTS: usize = 8;

/// The verdict's proto number as an index below [`VERDICTS`].
pub(crate) fn verdict_index(v: Verdict) -> usize {
    (v as i32).clamp(0, VERDICTS as i32 - 1) as usize
}

/// gopacket's `ICMPv4TypeCode.String()`: `EchoRequest`,
/// `DestinationUnreachable(Port)`, `Type(Code: n)` for unknown codes and
/// `t(c)` for unknown types.
pub(crate) fn icmpv4_type(t: u8, c: u8) -> Cow<'static, str> {
    let (name, codes): (&str, &[&str]) = match t {
        0 => ("EchoReply", &[]),
        3 => (
            "DestinationUnreachable",
            &[
                "Net",
                "Host",
                "Protocol",
                "Port",
                "FragmentationNeeded",
                "SourceRoutingFailed",
                "NetUnknown",
                "HostUnknown",
                "SourceIsolated",
                "NetAdminProhibited",
                "HostAdminProhibited",
                "NetTOS",
                "HostTOS",
                "CommAdminProhibited",
                "HostPrecedence",
                "PrecedenceCutoff",
            ],
        ),
        4 => ("SourceQuench", &[]),
        5 => ("Redirect", &["Network", "Host", "TOS+Network", "TOS+Host"]),
        8 => ("EchoRequest", &[]),
        9 => ("RouterAdvertisement", &[]),
        10 => ("RouterSolicitation", &[]),
        11 => (
            "TimeExceeded",
            &["TTLExceeded", "FragmentReassemblyTimeExceeded"],
        ),
        12 => (
            "ParameterProblem",
            &["PointerIndicatesError", "MissingOption", "BadLength"],
        ),
        13 => ("TimestampRequest", &[]),
        14 => ("TimestampReply", &[]),
        15 => ("InfoRequest", &[]),
        16 => ("InfoReply", &[]),
        17 => ("AddressMaskRequest", &[]),
        18 => ("AddressMaskReply", &[]),
        _ => return Cow::Owned(format!("{t}({c})")),
    };
    type_code(name, codes, c)
}

/// gopacket's `ICMPv6TypeCode.String()`.
pub(crate) fn icmpv6_type(t: u8, c: u8) -> Cow<'static, str> {
    let (name, codes): (&str, &[&str]) = match t {
        1 => (
            "DestinationUnreachable",
            &[
                "NoRouteToDst",
                "AdminProhibited",
                "BeyondScopeOfSrc",
                "AddressUnreachable",
                "PortUnreachable",
                "SrcAddressFailedPolicy",
                "RejectRouteToDst",
            ],
        ),
        2 => ("PacketTooBig", &[]),
        3 => (
            "TimeExceeded",
            &["HopLimitExceeded", "FragmentReassemblyTimeExceeded"],
        ),
        4 => (
            "ParameterProblem",
            &[
                "ErroneousHeaderField",
                "UnrecognizedNextHeader",
                "UnrecognizedIPv6Option",
            ],
        ),
        128 => ("EchoRequest", &[]),
        129 => ("EchoReply", &[]),
        130 => ("MLDv1MulticastListenerQuery", &[]),
        131 => ("MLDv1MulticastListenerReport", &[]),
        132 => ("MLDv1MulticastListenerDone", &[]),
        133 => ("RouterSolicitation", &[]),
        134 => ("RouterAdvertisement", &[]),
        135 => ("NeighborSolicitation", &[]),
        136 => ("NeighborAdvertisement", &[]),
        137 => ("Redirect", &[]),
        143 => ("MLDv2MulticastListenerReport", &[]),
        _ => return Cow::Owned(format!("{t}({c})")),
    };
    type_code(name, codes, c)
}

fn type_code(name: &'static str, codes: &[&str], c: u8) -> Cow<'static, str> {
    if codes.is_empty() && c == 0 {
        return Cow::Borrowed(name);
    }
    match codes.get(usize::from(c)) {
        Some(code) => Cow::Owned(format!("{name}({code})")),
        None => Cow::Owned(format!("{name}(Code: {c})")),
    }
}
