//! Builders shared by the integration tests: kernel events and an endpoint index.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use weir_common::{FlowEvent, emit, family, flag, obs, tcp, verdict};
use weir_state::{EndpointIndex, EndpointMeta};

/// Boot time of the reference events (5000 s after boot).
pub const BOOT_NS: u64 = 5_000_000_000_000;
/// 2026-11-29T12:00:01.123456789Z in Unix nanoseconds.
pub const WALL_NS: i64 = 1_795_953_601_123_456_789;
/// The fixed realtime - boottime offset that maps BOOT_NS to WALL_NS.
pub const OFFSET_NS: i64 = WALL_NS - BOOT_NS as i64;

pub const POD_A_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
pub const POD_B_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 7);
pub const WORLD_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
pub const POD_A_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 5);
pub const POD_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 7);

pub fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a.octets());
    out
}

/// A TCP SYN from pod a to pod b:80 leaving pod a.
pub fn tcp_v4_syn() -> FlowEvent {
    FlowEvent {
        ts_ns: BOOT_NS,
        first_seen_ns: BOOT_NS,
        src_addr: v4(POD_A_V4),
        dst_addr: v4(POD_B_V4),
        packets: [1, 0],
        bytes: [74, 0],
        ifindex: 7,
        pkt_len: 74,
        src_port: 34567,
        dst_port: 80,
        family: family::IPV4,
        proto: 6,
        tcp_flags: tcp::SYN,
        obs_point: obs::FROM_ENDPOINT,
        emit_reason: emit::NEW,
        verdict: verdict::FORWARDED,
        tcp_flags_seen: [tcp::SYN, 0],
        ..FlowEvent::default()
    }
}

/// A UDP datagram from pod a to pod b:53 over IPv6, delivered to pod b.
pub fn udp_v6() -> FlowEvent {
    FlowEvent {
        ts_ns: BOOT_NS,
        first_seen_ns: BOOT_NS - 1_000,
        src_addr: POD_A_V6.octets(),
        dst_addr: POD_B_V6.octets(),
        packets: [3, 2],
        bytes: [300, 200],
        ifindex: 9,
        pkt_len: 100,
        src_port: 40000,
        dst_port: 53,
        family: family::IPV6,
        proto: 17,
        obs_point: obs::TO_ENDPOINT,
        emit_reason: emit::REPORT,
        verdict: verdict::FORWARDED,
        ..FlowEvent::default()
    }
}

pub fn icmpv4(r#type: u8, code: u8) -> FlowEvent {
    FlowEvent {
        ts_ns: BOOT_NS,
        first_seen_ns: BOOT_NS,
        src_addr: v4(POD_A_V4),
        dst_addr: v4(WORLD_V4),
        packets: [1, 0],
        bytes: [84, 0],
        ifindex: 7,
        pkt_len: 84,
        family: family::IPV4,
        proto: 1,
        icmp_type: r#type,
        icmp_code: code,
        obs_point: obs::FROM_ENDPOINT,
        emit_reason: emit::NEW,
        verdict: verdict::FORWARDED,
        ..FlowEvent::default()
    }
}

pub fn icmpv6(r#type: u8, code: u8) -> FlowEvent {
    FlowEvent {
        ts_ns: BOOT_NS,
        first_seen_ns: BOOT_NS,
        src_addr: POD_B_V6.octets(),
        dst_addr: POD_A_V6.octets(),
        packets: [1, 1],
        bytes: [104, 104],
        ifindex: 7,
        pkt_len: 104,
        family: family::IPV6,
        proto: 58,
        icmp_type: r#type,
        icmp_code: code,
        obs_point: obs::TO_ENDPOINT,
        emit_reason: emit::NEW,
        verdict: verdict::FORWARDED,
        flags: flag::REPLY,
        ..FlowEvent::default()
    }
}

#[allow(
    clippy::needless_update,
    reason = "EndpointMeta belongs to weir-state and may gain fields"
)]
pub fn meta(endpoint_id: u64, identity: u32, ns: &str, pod: &str) -> Arc<EndpointMeta> {
    let mut labels = vec![
        format!("k8s:app={pod}"),
        format!("k8s:io.kubernetes.pod.namespace={ns}"),
    ];
    labels.sort();
    Arc::new(EndpointMeta {
        endpoint_id,
        identity,
        namespace: ns.to_owned(),
        pod_name: pod.to_owned(),
        labels,
        node_name: "node-1".to_owned(),
        workload: pod.to_owned(),
        ..EndpointMeta::default()
    })
}

/// Pod x/a (ID 12, identity 256) and pod x/b (remote: ID 0, identity 257),
/// each with a v4 and a v6 address.
pub fn index() -> EndpointIndex {
    let mut idx = EndpointIndex::new();
    let a = meta(12, 256, "x", "a");
    let b = meta(0, 257, "x", "b");
    idx.insert(IpAddr::V4(POD_A_V4), Arc::clone(&a));
    idx.insert(IpAddr::V6(POD_A_V6), a);
    idx.insert(IpAddr::V4(POD_B_V4), Arc::clone(&b));
    idx.insert(IpAddr::V6(POD_B_V6), b);
    idx
}
