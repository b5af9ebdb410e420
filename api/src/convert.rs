//! Conversion between Weir's in-memory flow (`weir_flows::Flow`) and the
//! generated protobuf `flow.Flow`, plus lost events.
//!
//! [`flow_to_proto`] runs once for every flow sent to every client, so it does
//! only what protobuf needs: the strings it must own (addresses, UUID, names,
//! labels) are built once each with their final capacity, and nothing else
//! allocates. [`flow_from_proto`] is the reverse, for clients (`weir observe`)
//! that reuse `weir_flows`' printers; values that do not parse (a malformed
//! address or UUID from a foreign server) read as absent rather than failing
//! the whole flow, and fields `weir_flows::Flow` does not model are dropped.
//!
//! Owns no I/O and no policy; the shape of both types is fixed elsewhere.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message as _;
use uuid::Uuid;
use weir_flows::flow as wf;

use crate::proto::flow as pb;
use crate::proto::weir_ext;

/// `google.protobuf.Timestamp` from Weir's timestamp.
pub fn timestamp_to_proto(t: wf::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

/// Weir's timestamp from `google.protobuf.Timestamp`.
pub fn timestamp_from_proto(t: &prost_types::Timestamp) -> wf::Timestamp {
    wf::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

/// The protobuf form of `f`: every field `weir_flows::Flow` has, plus the
/// deprecated twins Hubble still fills (`drop_reason` as the number of
/// `drop_reason_desc`, `reply` as `is_reply` with unknown as false).
pub fn flow_to_proto(f: &weir_flows::Flow) -> pb::Flow {
    flow_to_proto_with(f, true)
}

/// [`flow_to_proto`], with Weir's `extensions` encoded only when
/// `extensions` is true: the API leaves them out for most clients, and
/// encoding the `Any` costs a message encode per flow.
#[allow(deprecated)] // `drop_reason` and `reply`: old clients still read them.
pub fn flow_to_proto_with(f: &weir_flows::Flow, extensions: bool) -> pb::Flow {
    pb::Flow {
        time: f.time.map(timestamp_to_proto),
        uuid: uuid_string(f.uuid),
        verdict: f.verdict as i32,
        drop_reason: f.drop_reason_desc as i32 as u32,
        ip: f.ip.as_ref().map(ip_to_proto),
        l4: f.l4.as_ref().map(l4_to_proto),
        source: f.source.as_deref().map(endpoint_to_proto),
        destination: f.destination.as_deref().map(endpoint_to_proto),
        r#type: f.r#type as i32,
        node_name: String::from(&*f.node_name),
        reply: f.is_reply.unwrap_or(false),
        event_type: f.event_type.map(|e| pb::CiliumEventType {
            r#type: e.r#type,
            sub_type: e.sub_type,
        }),
        traffic_direction: f.traffic_direction as i32,
        trace_observation_point: f.trace_observation_point as i32,
        drop_reason_desc: f.drop_reason_desc as i32,
        is_reply: f.is_reply,
        interface: f.interface.as_ref().map(|i| pb::NetworkInterface {
            index: i.index,
            name: String::from(&*i.name),
        }),
        summary: String::from(&*f.summary),
        extensions: f
            .extensions
            .as_ref()
            .filter(|_| extensions)
            .map(extensions_to_any),
        egress_allowed_by: policies_to_proto(&f.egress_allowed_by),
        ingress_allowed_by: policies_to_proto(&f.ingress_allowed_by),
        egress_denied_by: policies_to_proto(&f.egress_denied_by),
        ingress_denied_by: policies_to_proto(&f.ingress_denied_by),
        ..pb::Flow::default()
    }
}

/// A flow's policy attribution as the proto's repeated `flow.Policy`.
fn policies_to_proto(p: &[wf::Policy]) -> Vec<pb::Policy> {
    p.iter()
        .map(|p| pb::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            revision: p.revision,
            kind: p.kind.clone(),
        })
        .collect()
}

/// A `flow.LostEvent` telling a client that `count` events were lost at
/// `source`; `at` is when the loss was noticed (used as both first and last,
/// as Weir counts losses rather than timing each one).
pub fn lost_to_proto(source: wf::LostEventSource, count: u64, at: wf::Timestamp) -> pb::LostEvent {
    let at = timestamp_to_proto(at);
    pb::LostEvent {
        source: source as i32,
        num_events_lost: count,
        cpu: None,
        first: Some(at),
        last: Some(at),
    }
}

/// Weir's lost event from the protobuf form (unknown sources read as
/// `UNKNOWN_LOST_EVENT_SOURCE`).
pub fn lost_from_proto(l: &pb::LostEvent) -> wf::LostEvent {
    wf::LostEvent {
        source: wf::LostEventSource::from_i32(l.source).unwrap_or_default(),
        num_events_lost: l.num_events_lost,
        cpu: l.cpu,
        first: l.first.as_ref().map(timestamp_from_proto),
        last: l.last.as_ref().map(timestamp_from_proto),
    }
}

/// The hyphenated lower-case UUID, or "" for the nil UUID (what protobuf
/// omits), built in one allocation of the exact size.
fn uuid_string(u: Uuid) -> String {
    if u.is_nil() {
        return String::new();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    String::from(u.hyphenated().encode_lower(&mut buf) as &str)
}

fn ip_string(ip: Option<IpAddr>) -> String {
    match ip {
        None => String::new(),
        Some(ip) => {
            // 15 bytes is the longest IPv4 text, 39 the usual longest IPv6
            // (an IPv4-mapped form can be longer; String grows then).
            let mut s = String::with_capacity(if ip.is_ipv4() { 15 } else { 39 });
            let _ = write!(s, "{ip}");
            s
        }
    }
}

fn ip_to_proto(ip: &wf::Ip) -> pb::Ip {
    pb::Ip {
        source: ip_string(ip.source),
        source_xlated: String::new(),
        destination: ip_string(ip.destination),
        ip_version: ip.ip_version as i32,
        encrypted: ip.encrypted,
    }
}

fn tcp_flags_to_proto(f: wf::TcpFlags) -> pb::TcpFlags {
    pb::TcpFlags {
        fin: f.fin,
        syn: f.syn,
        rst: f.rst,
        psh: f.psh,
        ack: f.ack,
        urg: f.urg,
        ece: f.ece,
        cwr: f.cwr,
        ns: f.ns,
    }
}

fn tcp_flags_from_proto(f: &pb::TcpFlags) -> wf::TcpFlags {
    wf::TcpFlags {
        fin: f.fin,
        syn: f.syn,
        rst: f.rst,
        psh: f.psh,
        ack: f.ack,
        urg: f.urg,
        ece: f.ece,
        cwr: f.cwr,
        ns: f.ns,
    }
}

fn l4_to_proto(l4: &wf::Layer4) -> pb::Layer4 {
    use pb::layer4::Protocol as P;
    let protocol = match *l4 {
        wf::Layer4::Tcp(t) => P::Tcp(pb::Tcp {
            source_port: t.source_port,
            destination_port: t.destination_port,
            flags: t.flags.map(tcp_flags_to_proto),
        }),
        wf::Layer4::Udp(u) => P::Udp(pb::Udp {
            source_port: u.source_port,
            destination_port: u.destination_port,
        }),
        wf::Layer4::Sctp(u) => P::Sctp(pb::Sctp {
            source_port: u.source_port,
            destination_port: u.destination_port,
        }),
        wf::Layer4::Icmpv4(i) => P::IcmPv4(pb::IcmPv4 {
            r#type: i.r#type,
            code: i.code,
        }),
        wf::Layer4::Icmpv6(i) => P::IcmPv6(pb::IcmPv6 {
            r#type: i.r#type,
            code: i.code,
        }),
        wf::Layer4::Vrrp(v) => P::Vrrp(pb::Vrrp {
            r#type: v.r#type,
            vrid: v.vrid,
            priority: v.priority,
        }),
        wf::Layer4::Igmp(g) => P::Igmp(pb::Igmp {
            r#type: g.r#type,
            group_address: ip_string(g.group_address),
        }),
    };
    pb::Layer4 {
        protocol: Some(protocol),
    }
}

fn endpoint_to_proto(e: &wf::Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id,
        identity: e.identity,
        cluster_name: e.cluster_name.clone(),
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
        workloads: e
            .workloads
            .iter()
            .map(|w| pb::Workload {
                name: w.name.clone(),
                kind: w.kind.clone(),
            })
            .collect(),
    }
}

/// Weir's extensions as the `Any` that `flow.Flow.extensions` carries.
pub fn extensions_to_any(e: &wf::FlowExtensions) -> prost_types::Any {
    let msg = weir_ext::FlowExtensions {
        emit_reason: e.emit_reason as i32,
        first_seen: e.first_seen.map(timestamp_to_proto),
        packets_forward: e.packets_forward,
        packets_reverse: e.packets_reverse,
        bytes_forward: e.bytes_forward,
        bytes_reverse: e.bytes_reverse,
        packet_length: e.packet_length,
        tcp_flags_forward: e.tcp_flags_forward.map(tcp_flags_to_proto),
        tcp_flags_reverse: e.tcp_flags_reverse.map(tcp_flags_to_proto),
    };
    prost_types::Any {
        type_url: String::from(wf::EXTENSIONS_TYPE_URL),
        value: msg.encode_to_vec(),
    }
}

/// Weir's extensions from an `Any`; `None` when it holds another type or
/// does not decode.
pub fn extensions_from_any(any: &prost_types::Any) -> Option<wf::FlowExtensions> {
    if any.type_url != wf::EXTENSIONS_TYPE_URL {
        return None;
    }
    let m = weir_ext::FlowExtensions::decode(any.value.as_slice()).ok()?;
    Some(wf::FlowExtensions {
        emit_reason: wf::EmitReason::from_i32(m.emit_reason).unwrap_or_default(),
        first_seen: m.first_seen.as_ref().map(timestamp_from_proto),
        packets_forward: m.packets_forward,
        packets_reverse: m.packets_reverse,
        bytes_forward: m.bytes_forward,
        bytes_reverse: m.bytes_reverse,
        packet_length: m.packet_length,
        tcp_flags_forward: m.tcp_flags_forward.as_ref().map(tcp_flags_from_proto),
        tcp_flags_reverse: m.tcp_flags_reverse.as_ref().map(tcp_flags_from_proto),
    })
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.is_empty() { None } else { s.parse().ok() }
}

fn endpoint_from_proto(e: &pb::Endpoint) -> wf::Endpoint {
    wf::Endpoint {
        id: e.id,
        identity: e.identity,
        cluster_name: e.cluster_name.clone(),
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
        workloads: e
            .workloads
            .iter()
            .map(|w| wf::Workload {
                name: w.name.clone(),
                kind: w.kind.clone(),
            })
            .collect(),
    }
}

fn l4_from_proto(l4: &pb::Layer4) -> Option<wf::Layer4> {
    use pb::layer4::Protocol as P;
    Some(match l4.protocol.as_ref()? {
        P::Tcp(t) => wf::Layer4::Tcp(wf::Tcp {
            source_port: t.source_port,
            destination_port: t.destination_port,
            flags: t.flags.as_ref().map(tcp_flags_from_proto),
        }),
        P::Udp(u) => wf::Layer4::Udp(wf::Udp {
            source_port: u.source_port,
            destination_port: u.destination_port,
        }),
        P::Sctp(u) => wf::Layer4::Sctp(wf::Udp {
            source_port: u.source_port,
            destination_port: u.destination_port,
        }),
        P::IcmPv4(i) => wf::Layer4::Icmpv4(wf::Icmp {
            r#type: i.r#type,
            code: i.code,
        }),
        P::IcmPv6(i) => wf::Layer4::Icmpv6(wf::Icmp {
            r#type: i.r#type,
            code: i.code,
        }),
        P::Vrrp(v) => wf::Layer4::Vrrp(wf::Vrrp {
            r#type: v.r#type,
            vrid: v.vrid,
            priority: v.priority,
        }),
        P::Igmp(g) => wf::Layer4::Igmp(wf::Igmp {
            r#type: g.r#type,
            group_address: parse_ip(&g.group_address),
        }),
    })
}

/// Weir's flow from the protobuf form. Enum numbers Weir does not know read
/// as the zero value; `drop_reason_desc` falls back to the deprecated numeric
/// `drop_reason` when only that is set (older servers).
#[allow(deprecated)] // Reads `drop_reason` from old servers.
pub fn flow_from_proto(p: &pb::Flow) -> weir_flows::Flow {
    let drop_reason_desc = match wf::DropReason::from_i32(p.drop_reason_desc).unwrap_or_default() {
        wf::DropReason::Unknown => i32::try_from(p.drop_reason)
            .ok()
            .and_then(wf::DropReason::from_i32)
            .unwrap_or_default(),
        known => known,
    };
    weir_flows::Flow {
        time: p.time.as_ref().map(timestamp_from_proto),
        uuid: Uuid::try_parse(&p.uuid).unwrap_or(Uuid::nil()),
        verdict: wf::Verdict::from_i32(p.verdict).unwrap_or_default(),
        ip: p.ip.as_ref().map(|ip| wf::Ip {
            source: parse_ip(&ip.source),
            destination: parse_ip(&ip.destination),
            ip_version: wf::IpVersion::from_i32(ip.ip_version).unwrap_or_default(),
            encrypted: ip.encrypted,
        }),
        l4: p.l4.as_ref().and_then(l4_from_proto),
        source: p.source.as_ref().map(|e| Arc::new(endpoint_from_proto(e))),
        destination: p
            .destination
            .as_ref()
            .map(|e| Arc::new(endpoint_from_proto(e))),
        r#type: wf::FlowType::from_i32(p.r#type).unwrap_or_default(),
        node_name: Arc::from(p.node_name.as_str()),
        event_type: p.event_type.map(|e| wf::CiliumEventType {
            r#type: e.r#type,
            sub_type: e.sub_type,
        }),
        traffic_direction: wf::TrafficDirection::from_i32(p.traffic_direction).unwrap_or_default(),
        trace_observation_point: wf::TraceObservationPoint::from_i32(p.trace_observation_point)
            .unwrap_or_default(),
        drop_reason_desc,
        is_reply: p.is_reply,
        interface: p.interface.as_ref().map(|i| wf::NetworkInterface {
            index: i.index,
            name: Arc::from(i.name.as_str()),
        }),
        summary: Cow::Owned(p.summary.clone()),
        extensions: p.extensions.as_ref().and_then(extensions_from_any),
        egress_allowed_by: policies_from_proto(&p.egress_allowed_by),
        ingress_allowed_by: policies_from_proto(&p.ingress_allowed_by),
        egress_denied_by: policies_from_proto(&p.egress_denied_by),
        ingress_denied_by: policies_from_proto(&p.ingress_denied_by),
    }
}

fn policies_from_proto(p: &[pb::Policy]) -> wf::Policies {
    p.iter()
        .map(|p| wf::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            revision: p.revision,
            kind: p.kind.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ns: &str, pod: &str, identity: u32) -> Arc<wf::Endpoint> {
        Arc::new(wf::Endpoint {
            id: 7,
            identity,
            cluster_name: "lab".into(),
            namespace: ns.into(),
            labels: vec![
                format!("k8s:app={pod}"),
                "k8s:io.kubernetes.pod.namespace=x".into(),
            ],
            pod_name: pod.into(),
            workloads: vec![wf::Workload {
                name: pod.into(),
                kind: "Deployment".into(),
            }],
        })
    }

    /// A flow with every field `weir_flows::Flow` has set to a non-default value.
    pub(crate) fn full_flow() -> weir_flows::Flow {
        weir_flows::Flow {
            time: Some(wf::Timestamp {
                seconds: 1_764_417_601,
                nanos: 123_456_789,
            }),
            uuid: Uuid::parse_str("0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").unwrap(),
            verdict: wf::Verdict::Dropped,
            ip: Some(wf::Ip {
                source: Some("10.1.0.5".parse().unwrap()),
                destination: Some("fd00::1:2".parse().unwrap()),
                ip_version: wf::IpVersion::Ipv4,
                encrypted: true,
            }),
            l4: Some(wf::Layer4::Tcp(wf::Tcp {
                source_port: 34567,
                destination_port: 80,
                flags: Some(wf::TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                }),
            })),
            source: Some(endpoint("x", "a", 256)),
            destination: Some(endpoint("y", "b", 257)),
            r#type: wf::FlowType::L3L4,
            node_name: Arc::from("lab/node-1"),
            event_type: Some(wf::CiliumEventType {
                r#type: wf::EVENT_TYPE_DROP,
                sub_type: 133,
            }),
            traffic_direction: wf::TrafficDirection::Egress,
            trace_observation_point: wf::TraceObservationPoint::FromEndpoint,
            drop_reason_desc: wf::DropReason::PolicyDenied,
            is_reply: Some(false),
            interface: Some(wf::NetworkInterface {
                index: 42,
                name: Arc::from("weir1234"),
            }),
            summary: Cow::Borrowed("TCP Flags: SYN, ACK"),
            extensions: Some(wf::FlowExtensions {
                emit_reason: wf::EmitReason::TcpFlag,
                first_seen: Some(wf::Timestamp {
                    seconds: 1_764_417_600,
                    nanos: 5_000_000,
                }),
                packets_forward: 3,
                packets_reverse: 2,
                bytes_forward: 1 << 40,
                bytes_reverse: 99,
                packet_length: 60,
                tcp_flags_forward: Some(wf::TcpFlags {
                    syn: true,
                    ..Default::default()
                }),
                tcp_flags_reverse: Some(wf::TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                }),
            }),
            egress_allowed_by: Arc::from(vec![wf::Policy {
                name: "allow-web".into(),
                namespace: "x".into(),
                labels: vec!["k8s:io.cilium.k8s.policy.name=allow-web".into()],
                revision: 7,
                kind: "NetworkPolicy".into(),
            }]),
            ingress_allowed_by: Arc::from(vec![wf::Policy {
                name: "allow-in".into(),
                namespace: "y".into(),
                ..Default::default()
            }]),
            egress_denied_by: Arc::from(vec![wf::Policy {
                name: "deny-out".into(),
                namespace: "x".into(),
                kind: "NetworkPolicy".into(),
                ..Default::default()
            }]),
            ingress_denied_by: Arc::from(vec![
                wf::Policy {
                    name: "a".into(),
                    namespace: "y".into(),
                    ..Default::default()
                },
                wf::Policy {
                    name: "b".into(),
                    namespace: "y".into(),
                    ..Default::default()
                },
            ]),
        }
    }

    #[test]
    #[allow(deprecated)]
    fn every_field_is_converted() {
        let f = full_flow();
        let p = flow_to_proto(&f);
        assert_eq!(
            p.time,
            Some(prost_types::Timestamp {
                seconds: 1_764_417_601,
                nanos: 123_456_789
            })
        );
        assert_eq!(p.uuid, "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b");
        assert_eq!(p.verdict, pb::Verdict::Dropped as i32);
        assert_eq!(p.drop_reason, 133);
        assert_eq!(p.drop_reason_desc, pb::DropReason::PolicyDenied as i32);
        let ip = p.ip.as_ref().unwrap();
        assert_eq!(ip.source, "10.1.0.5");
        assert_eq!(ip.destination, "fd00::1:2");
        assert_eq!(ip.ip_version, pb::IpVersion::IPv4 as i32);
        assert!(ip.encrypted);
        match p.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(pb::layer4::Protocol::Tcp(t)) => {
                assert_eq!((t.source_port, t.destination_port), (34567, 80));
                let fl = t.flags.unwrap();
                assert!(fl.syn && fl.ack && !fl.fin && !fl.rst);
            }
            other => panic!("l4 is {other:?}"),
        }
        let src = p.source.as_ref().unwrap();
        assert_eq!(
            (
                src.id,
                src.identity,
                src.namespace.as_str(),
                src.pod_name.as_str()
            ),
            (7, 256, "x", "a")
        );
        assert_eq!(src.cluster_name, "lab");
        assert_eq!(
            src.labels,
            ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"]
        );
        assert_eq!(src.workloads[0].kind, "Deployment");
        assert_eq!(p.destination.as_ref().unwrap().identity, 257);
        assert_eq!(p.r#type, pb::FlowType::L3L4 as i32);
        assert_eq!(p.node_name, "lab/node-1");
        assert_eq!(
            p.event_type,
            Some(pb::CiliumEventType {
                r#type: 1,
                sub_type: 133
            })
        );
        assert_eq!(p.traffic_direction, pb::TrafficDirection::Egress as i32);
        assert_eq!(
            p.trace_observation_point,
            pb::TraceObservationPoint::FromEndpoint as i32
        );
        assert_eq!(p.is_reply, Some(false));
        assert!(!p.reply);
        assert_eq!(p.interface.as_ref().unwrap().index, 42);
        assert_eq!(p.interface.as_ref().unwrap().name, "weir1234");
        assert_eq!(p.summary, "TCP Flags: SYN, ACK");
        let any = p.extensions.as_ref().unwrap();
        assert_eq!(any.type_url, wf::EXTENSIONS_TYPE_URL);
        assert_eq!(
            any.type_url,
            <weir_ext::FlowExtensions as prost::Name>::type_url()
        );
        let ext = weir_ext::FlowExtensions::decode(any.value.as_slice()).unwrap();
        assert_eq!(ext.emit_reason, weir_ext::EmitReason::TcpFlag as i32);
        assert_eq!(ext.bytes_forward, 1 << 40);
        assert_eq!(ext.packet_length, 60);
        assert!(ext.tcp_flags_reverse.unwrap().ack);
    }

    #[test]
    fn unknown_fields_stay_default() {
        let p = flow_to_proto(&weir_flows::Flow::default());
        assert_eq!(
            p,
            pb::Flow::default(),
            "an empty flow converts to an empty message"
        );
        assert_eq!(p.encoded_len(), 0);
    }

    #[test]
    fn round_trips_through_proto_and_the_wire() {
        let base = full_flow();
        let mut variants = vec![base.clone()];
        for l4 in [
            wf::Layer4::Udp(wf::Udp {
                source_port: 53,
                destination_port: 5353,
            }),
            wf::Layer4::Sctp(wf::Udp {
                source_port: 1,
                destination_port: 2,
            }),
            wf::Layer4::Icmpv4(wf::Icmp { r#type: 8, code: 0 }),
            wf::Layer4::Icmpv6(wf::Icmp {
                r#type: 128,
                code: 0,
            }),
            wf::Layer4::Vrrp(wf::Vrrp {
                r#type: 1,
                vrid: 2,
                priority: 3,
            }),
            wf::Layer4::Igmp(wf::Igmp {
                r#type: 0x16,
                group_address: Some("239.1.2.3".parse().unwrap()),
            }),
        ] {
            variants.push(weir_flows::Flow {
                l4: Some(l4),
                is_reply: None,
                source: None,
                extensions: None,
                ..base.clone()
            });
        }
        variants.push(weir_flows::Flow {
            is_reply: Some(true),
            drop_reason_desc: wf::DropReason::Unknown,
            verdict: wf::Verdict::Forwarded,
            ..base.clone()
        });
        variants.push(weir_flows::Flow::default());
        for f in variants {
            let p = flow_to_proto(&f);
            assert_eq!(flow_from_proto(&p), f);
            let wire = pb::Flow::decode(p.encode_to_vec().as_slice()).unwrap();
            assert_eq!(wire, p);
        }
    }

    #[test]
    #[allow(deprecated)]
    fn old_numeric_drop_reason_is_read() {
        let p = pb::Flow {
            drop_reason: 181,
            ..Default::default()
        };
        assert_eq!(
            flow_from_proto(&p).drop_reason_desc,
            wf::DropReason::PolicyDeny
        );
    }

    #[test]
    fn foreign_extensions_and_bad_strings_read_as_absent() {
        let p = pb::Flow {
            uuid: "not-a-uuid".into(),
            ip: Some(pb::Ip {
                source: "nope".into(),
                ..Default::default()
            }),
            extensions: Some(prost_types::Any {
                type_url: "type.googleapis.com/other.Thing".into(),
                value: vec![1, 2, 3],
            }),
            ..Default::default()
        };
        let f = flow_from_proto(&p);
        assert!(f.uuid.is_nil());
        assert_eq!(f.ip.unwrap().source, None);
        assert_eq!(f.extensions, None);
    }

    #[test]
    fn lost_event_fields() {
        let at = wf::Timestamp {
            seconds: 10,
            nanos: 5,
        };
        let l = lost_to_proto(wf::LostEventSource::HubbleRingBuffer, 17, at);
        assert_eq!(l.source, pb::LostEventSource::HubbleRingBuffer as i32);
        assert_eq!(l.num_events_lost, 17);
        assert_eq!(l.first, Some(timestamp_to_proto(at)));
        assert_eq!(l.last, l.first);
        assert_eq!(l.cpu, None);
        let back = lost_from_proto(&l);
        assert_eq!(back.source, wf::LostEventSource::HubbleRingBuffer);
        assert_eq!(back.num_events_lost, 17);
        assert_eq!(back.first, Some(at));
    }

    /// The protobuf JSON of a converted flow is what `weir_flows` writes to
    /// the flow log, except for the two deprecated twins only protobuf has.
    #[test]
    fn protojson_matches_the_flow_log_json() {
        let mut variants = vec![full_flow()];
        variants.push(weir_flows::Flow {
            is_reply: Some(true),
            time: Some(wf::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            l4: Some(wf::Layer4::Icmpv6(wf::Icmp {
                r#type: 128,
                code: 0,
            })),
            ..full_flow()
        });
        variants.push(weir_flows::Flow {
            l4: Some(wf::Layer4::Tcp(wf::Tcp {
                source_port: 1,
                destination_port: 2,
                flags: Some(wf::TcpFlags::default()),
            })),
            time: Some(wf::Timestamp {
                seconds: 1,
                nanos: 120_000,
            }),
            ..weir_flows::Flow::default()
        });
        for f in variants {
            let mut ours = crate::json::flow_to_json(&flow_to_proto(&f));
            let obj = ours.as_object_mut().unwrap();
            obj.remove("drop_reason");
            obj.remove("reply");
            let log = serde_json::to_value(&f).unwrap();
            assert_eq!(ours, log, "protojson vs flow log JSON");
        }
    }
}
