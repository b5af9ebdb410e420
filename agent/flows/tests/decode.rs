//! Decoder: field-by-field for each protocol shape, enrichment, direction
//! table, time conversion and uuids.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use weir_common::{emit, family, flag, obs, tcp, verdict};
use weir_flows::Decoder;
use weir_flows::flow::*;

fn decoder() -> Decoder {
    let mut d = Decoder::with_fixed_clock("node-1", OFFSET_NS);
    d.set_interface_name(7, "lxc1234");
    d.set_interface_name(9, "lxc5678");
    d
}

#[test]
fn tcp_v4_field_by_field() {
    let f = decoder().decode(&tcp_v4_syn(), &index());
    assert_eq!(f.time, Some(Timestamp::from_unix_nanos(WALL_NS)));
    assert_eq!(f.time.unwrap().seconds, 1_795_953_601);
    assert_eq!(f.time.unwrap().nanos, 123_456_789);
    assert_eq!(f.uuid.get_version_num(), 4);
    assert_eq!(f.verdict, Verdict::Forwarded);
    assert_eq!(f.drop_reason_desc, DropReason::Unknown);
    let ip = f.ip.expect("IP set");
    assert_eq!(ip.source, Some(IpAddr::V4(POD_A_V4)));
    assert_eq!(ip.destination, Some(IpAddr::V4(POD_B_V4)));
    assert_eq!(ip.ip_version, IpVersion::Ipv4);
    assert!(!ip.encrypted);
    assert_eq!(
        f.l4,
        Some(Layer4::Tcp(Tcp {
            source_port: 34567,
            destination_port: 80,
            flags: Some(TcpFlags {
                syn: true,
                ..TcpFlags::default()
            }),
        }))
    );
    assert_eq!(f.r#type, FlowType::L3L4);
    assert_eq!(&*f.node_name, "node-1");
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 4,
            sub_type: 5
        })
    );
    assert_eq!(
        f.trace_observation_point,
        TraceObservationPoint::FromEndpoint
    );
    assert_eq!(f.traffic_direction, TrafficDirection::Egress);
    assert_eq!(f.is_reply, Some(false));
    assert_eq!(
        f.interface,
        Some(NetworkInterface {
            index: 7,
            name: Arc::from("lxc1234")
        })
    );
    assert_eq!(f.summary, "TCP Flags: SYN");
    let ext = f.extensions.expect("extensions");
    assert_eq!(ext.emit_reason, EmitReason::New);
    assert_eq!(ext.first_seen, Some(Timestamp::from_unix_nanos(WALL_NS)));
    assert_eq!((ext.packets_forward, ext.packets_reverse), (1, 0));
    assert_eq!((ext.bytes_forward, ext.bytes_reverse), (74, 0));
    assert_eq!(ext.packet_length, 74);
    assert_eq!(
        ext.tcp_flags_forward,
        Some(TcpFlags {
            syn: true,
            ..TcpFlags::default()
        })
    );
    assert_eq!(ext.tcp_flags_reverse, None);
}

#[test]
fn tcp_flags_all_and_summary_order() {
    let mut ev = tcp_v4_syn();
    ev.tcp_flags = 0xff;
    let f = decoder().decode(&ev, &index());
    let Some(Layer4::Tcp(t)) = f.l4 else {
        panic!("not TCP: {:?}", f.l4)
    };
    let fl = t.flags.unwrap();
    assert!(fl.fin && fl.syn && fl.rst && fl.psh && fl.ack && fl.urg && fl.ece && fl.cwr);
    assert!(!fl.ns, "NS is not in the flags byte");
    assert_eq!(
        f.summary,
        "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR"
    );

    ev.tcp_flags = tcp::SYN | tcp::ACK;
    assert_eq!(
        decoder().decode(&ev, &index()).summary,
        "TCP Flags: SYN, ACK"
    );
    ev.tcp_flags = tcp::FIN | tcp::ACK;
    assert_eq!(
        decoder().decode(&ev, &index()).summary,
        "TCP Flags: ACK, FIN"
    );
    ev.tcp_flags = 0;
    let f = decoder().decode(&ev, &index());
    assert_eq!(f.summary, "TCP Flags: ");
    let Some(Layer4::Tcp(t)) = f.l4 else { panic!() };
    assert_eq!(t.flags, Some(TcpFlags::default()));
}

#[test]
fn udp_v6_field_by_field() {
    let f = decoder().decode(&udp_v6(), &index());
    let ip = f.ip.unwrap();
    assert_eq!(ip.source, Some(IpAddr::V6(POD_A_V6)));
    assert_eq!(ip.destination, Some(IpAddr::V6(POD_B_V6)));
    assert_eq!(ip.ip_version, IpVersion::Ipv6);
    assert_eq!(
        f.l4,
        Some(Layer4::Udp(Udp {
            source_port: 40000,
            destination_port: 53
        }))
    );
    assert_eq!(f.summary, "UDP");
    assert_eq!(f.trace_observation_point, TraceObservationPoint::ToEndpoint);
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 4,
            sub_type: 0
        })
    );
    assert_eq!(f.traffic_direction, TrafficDirection::Ingress);
    assert_eq!(f.interface.unwrap().name.as_ref(), "lxc5678");
    let ext = f.extensions.unwrap();
    assert_eq!(ext.emit_reason, EmitReason::Report);
    assert_eq!((ext.packets_forward, ext.packets_reverse), (3, 2));
    assert_eq!((ext.bytes_forward, ext.bytes_reverse), (300, 200));
    assert_eq!(
        ext.first_seen,
        Some(Timestamp::from_unix_nanos(WALL_NS - 1_000))
    );
    assert_eq!(ext.tcp_flags_forward, None);
    // Both sides are pods (v6 addresses of the same endpoints).
    assert_eq!(f.source.unwrap().pod_name, "a");
    assert_eq!(f.destination.unwrap().pod_name, "b");
}

#[test]
fn icmpv4_field_by_field() {
    let f = decoder().decode(&icmpv4(8, 0), &index());
    assert_eq!(f.l4, Some(Layer4::Icmpv4(Icmp { r#type: 8, code: 0 })));
    assert_eq!(f.summary, "ICMPv4 EchoRequest");
    assert_eq!(f.source_port(), 0);
    assert_eq!(f.destination_port(), 0);
    assert_eq!(
        decoder().decode(&icmpv4(0, 0), &index()).summary,
        "ICMPv4 EchoReply"
    );
    assert_eq!(
        decoder().decode(&icmpv4(3, 3), &index()).summary,
        "ICMPv4 DestinationUnreachable(Port)"
    );
    assert_eq!(
        decoder().decode(&icmpv4(200, 7), &index()).summary,
        "ICMPv4 200(7)"
    );
}

#[test]
fn icmpv6_field_by_field() {
    let f = decoder().decode(&icmpv6(129, 0), &index());
    assert_eq!(
        f.l4,
        Some(Layer4::Icmpv6(Icmp {
            r#type: 129,
            code: 0
        }))
    );
    assert_eq!(f.summary, "ICMPv6 EchoReply");
    assert_eq!(f.ip.unwrap().ip_version, IpVersion::Ipv6);
    // A reply delivered to pod a answers pod a's own (egress) connection.
    assert_eq!(f.is_reply, Some(true));
    assert_eq!(f.traffic_direction, TrafficDirection::Egress);
    assert_eq!(
        decoder().decode(&icmpv6(135, 0), &index()).summary,
        "ICMPv6 NeighborSolicitation"
    );
}

#[test]
fn no_l4_event() {
    let mut ev = tcp_v4_syn();
    ev.flags = flag::NO_L4;
    ev.src_port = 0;
    ev.dst_port = 0;
    let f = decoder().decode(&ev, &index());
    assert_eq!(f.l4, None);
    assert_eq!(f.summary, "IPv4");
    assert_eq!(f.ip.unwrap().source, Some(IpAddr::V4(POD_A_V4)));
    // Enrichment still happens without L4.
    assert_eq!(f.source.unwrap().identity, 256);
    assert_eq!(f.extensions.unwrap().tcp_flags_forward, None);

    // An unknown protocol is shown like Hubble shows it: L3 only.
    let mut ev = udp_v6();
    ev.proto = 47; // GRE
    let f = decoder().decode(&ev, &index());
    assert_eq!(f.l4, None);
    assert_eq!(f.summary, "IPv6");
}

#[test]
fn fragment_events() {
    // First fragment: L4 present, decoded normally.
    let mut first = udp_v6();
    first.flags = flag::FRAGMENT;
    let f = decoder().decode(&first, &index());
    assert_eq!(
        f.l4,
        Some(Layer4::Udp(Udp {
            source_port: 40000,
            destination_port: 53
        }))
    );
    // Later fragments: no L4 header.
    let mut later = first;
    later.flags = flag::FRAGMENT | flag::NO_L4;
    later.src_port = 0;
    later.dst_port = 0;
    let f = decoder().decode(&later, &index());
    assert_eq!(f.l4, None);
    assert_eq!(f.summary, "IPv6");
    assert_eq!(f.ip.unwrap().destination, Some(IpAddr::V6(POD_B_V6)));
}

#[test]
fn unknown_family_leaves_ip_empty() {
    let mut ev = tcp_v4_syn();
    ev.family = 0;
    ev.flags = flag::NO_L4;
    let f = decoder().decode(&ev, &index());
    assert_eq!(f.ip, None);
    assert_eq!(f.source, None);
    assert_eq!(f.destination, None);
    assert_eq!(f.summary, "");
}

#[test]
fn dropped_event() {
    let mut ev = tcp_v4_syn();
    ev.verdict = verdict::DROPPED;
    ev.drop_reason = 133;
    let f = decoder().decode(&ev, &index());
    assert_eq!(f.verdict, Verdict::Dropped);
    assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied);
    assert_eq!(
        f.event_type,
        Some(CiliumEventType {
            r#type: 1,
            sub_type: 133
        })
    );
    // A reason number outside Hubble's list reads as unknown, not garbage.
    ev.drop_reason = 7;
    assert_eq!(
        decoder().decode(&ev, &index()).drop_reason_desc,
        DropReason::Unknown
    );

    let mut audit = tcp_v4_syn();
    audit.verdict = verdict::AUDIT;
    assert_eq!(decoder().decode(&audit, &index()).verdict, Verdict::Audit);
    audit.verdict = 99;
    assert_eq!(decoder().decode(&audit, &index()).verdict, Verdict::Unknown);
}

#[test]
fn enrichment_known_and_unknown() {
    let f = decoder().decode(&tcp_v4_syn(), &index());
    let src = f.source.unwrap();
    assert_eq!(src.id, 12);
    assert_eq!(src.identity, 256);
    assert_eq!(src.namespace, "x");
    assert_eq!(src.pod_name, "a");
    assert_eq!(
        src.labels,
        vec!["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"]
    );
    assert_eq!(
        src.workloads,
        vec![Workload {
            name: "a".into(),
            kind: String::new()
        }]
    );
    let dst = f.destination.unwrap();
    assert_eq!((dst.id, dst.identity, dst.pod_name.as_str()), (0, 257, "b"));

    // Unknown IP: world.
    let f = decoder().decode(&icmpv4(8, 0), &index());
    let w = f.destination.unwrap();
    assert_eq!(w.identity, 2);
    assert_eq!(w.labels, vec!["reserved:world"]);
    assert!(w.pod_name.is_empty() && w.namespace.is_empty() && w.id == 0);

    // Empty index: both sides world.
    let f = decoder().decode(&tcp_v4_syn(), &weir_state::EndpointIndex::new());
    assert_eq!(f.source.unwrap().identity, 2);
    assert_eq!(f.destination.unwrap().identity, 2);
}

#[test]
fn enrichment_follows_index_updates_and_shares_endpoints() {
    let mut d = decoder();
    let idx = index();
    let a = d.decode(&tcp_v4_syn(), &idx);
    let b = d.decode(&tcp_v4_syn(), &idx);
    // The converted endpoint is shared, not rebuilt per event.
    assert!(Arc::ptr_eq(
        a.source.as_ref().unwrap(),
        b.source.as_ref().unwrap()
    ));

    // A new snapshot with a relabelled pod a is picked up at once.
    let mut idx2 = weir_state::EndpointIndex::new();
    idx2.insert(IpAddr::V4(POD_A_V4), meta(12, 300, "x", "a2"));
    let c = d.decode(&tcp_v4_syn(), &idx2);
    let src = c.source.unwrap();
    assert_eq!((src.identity, src.pod_name.as_str()), (300, "a2"));
    assert_eq!(c.destination.unwrap().identity, 2);
}

#[test]
fn direction_and_observation_point_table() {
    let cases = [
        (
            obs::FROM_ENDPOINT,
            false,
            TraceObservationPoint::FromEndpoint,
            TrafficDirection::Egress,
            5,
        ),
        (
            obs::FROM_ENDPOINT,
            true,
            TraceObservationPoint::FromEndpoint,
            TrafficDirection::Ingress,
            5,
        ),
        (
            obs::TO_ENDPOINT,
            false,
            TraceObservationPoint::ToEndpoint,
            TrafficDirection::Ingress,
            0,
        ),
        (
            obs::TO_ENDPOINT,
            true,
            TraceObservationPoint::ToEndpoint,
            TrafficDirection::Egress,
            0,
        ),
        (
            0,
            false,
            TraceObservationPoint::UnknownPoint,
            TrafficDirection::Unknown,
            0,
        ),
        (
            9,
            true,
            TraceObservationPoint::UnknownPoint,
            TrafficDirection::Unknown,
            0,
        ),
    ];
    for (point, reply, want_point, want_dir, sub_type) in cases {
        let mut ev = tcp_v4_syn();
        ev.obs_point = point;
        ev.flags = if reply { flag::REPLY } else { 0 };
        let f = decoder().decode(&ev, &index());
        assert_eq!(
            f.trace_observation_point, want_point,
            "obs {point} reply {reply}"
        );
        assert_eq!(f.traffic_direction, want_dir, "obs {point} reply {reply}");
        assert_eq!(f.is_reply, Some(reply));
        assert_eq!(f.event_type.unwrap().sub_type, sub_type);
    }
}

#[test]
fn reply_semantics_of_one_connection() {
    // Pod a (client) -> pod b:80 (server), seen at both veths.
    let mut d = decoder();
    let idx = index();
    let mut syn_leaving_a = tcp_v4_syn();
    syn_leaving_a.obs_point = obs::FROM_ENDPOINT;
    let mut syn_reaching_b = syn_leaving_a;
    syn_reaching_b.obs_point = obs::TO_ENDPOINT;
    let mut synack_leaving_b = syn_leaving_a;
    synack_leaving_b.src_addr = syn_leaving_a.dst_addr;
    synack_leaving_b.dst_addr = syn_leaving_a.src_addr;
    synack_leaving_b.src_port = 80;
    synack_leaving_b.dst_port = 34567;
    synack_leaving_b.tcp_flags = tcp::SYN | tcp::ACK;
    synack_leaving_b.flags = flag::REPLY;
    let mut synack_reaching_a = synack_leaving_b;
    synack_reaching_a.obs_point = obs::TO_ENDPOINT;

    let dirs: Vec<_> = [
        syn_leaving_a,
        syn_reaching_b,
        synack_leaving_b,
        synack_reaching_a,
    ]
    .iter()
    .map(|e| d.decode(e, &idx).traffic_direction)
    .collect();
    // a's view is egress both ways; b's view is ingress both ways.
    assert_eq!(
        dirs,
        vec![
            TrafficDirection::Egress,
            TrafficDirection::Ingress,
            TrafficDirection::Ingress,
            TrafficDirection::Egress
        ]
    );
    let f = d.decode(&synack_leaving_b, &idx);
    assert_eq!(f.is_reply, Some(true));
    assert_eq!(f.source.unwrap().pod_name, "b");
    assert_eq!(f.summary, "TCP Flags: SYN, ACK");
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer, CLOCK_BOOTTIME exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn live_time_conversion_is_close_to_now_and_monotonic() {
    let mut d = Decoder::new("node-1");
    let idx = index();
    let now = Timestamp::now().unix_nanos();
    let mut ev = tcp_v4_syn();
    ev.ts_ns = boottime_ns();
    let t = d.decode(&ev, &idx).time.unwrap().unix_nanos();
    assert!(
        (t - now).abs() < 50_000_000,
        "converted time {t} is more than 50 ms from now {now}"
    );

    // Increasing event times across several clock refreshes (every 1 s of
    // event time) never go backwards.
    let start = boottime_ns();
    let mut last = i64::MIN;
    for i in 0..5_000u64 {
        ev.ts_ns = start + i * 1_000_000; // 1 ms steps: 5 s, 5 refreshes
        let t = d.decode(&ev, &idx).time.unwrap().unix_nanos();
        assert!(t >= last, "time went backwards at step {i}: {t} < {last}");
        last = t;
    }
    // The offset matches the clocks.
    let offset = d.clock_offset_ns();
    let expected = Timestamp::now().unix_nanos() - boottime_ns() as i64;
    assert!((offset - expected).abs() < 50_000_000);
}

#[test]
fn uuids_unique_over_a_million_and_v4_shaped() {
    let mut d = decoder();
    let idx = index();
    let ev = tcp_v4_syn();
    let mut seen = HashSet::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let u = d.decode(&ev, &idx).uuid;
        assert!(seen.insert(u), "duplicate uuid {u}");
    }
    let u = d.decode(&ev, &idx).uuid;
    assert_eq!(u.get_version_num(), 4);
    assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
    let s = u.to_string();
    assert_eq!(s.len(), 36);
    assert_eq!(&s[14..15], "4");
    // A second decoder uses another prefix.
    let other = decoder().decode(&ev, &idx).uuid;
    assert!(!seen.contains(&other) && other != u);
}

#[test]
fn real_interface_name_resolved() {
    // ifindex 1 is the loopback device in every network namespace.
    let mut ev = tcp_v4_syn();
    ev.ifindex = 1;
    let f = Decoder::with_fixed_clock("n", 0).decode(&ev, &index());
    assert_eq!(f.interface.unwrap().name.as_ref(), "lo");
    // A missing interface keeps the index, with an empty name.
    ev.ifindex = 999_999;
    let f = Decoder::with_fixed_clock("n", 0).decode(&ev, &index());
    let i = f.interface.unwrap();
    assert_eq!((i.index, i.name.as_ref()), (999_999, ""));
    let _ = (family::IPV4, emit::NEW);
}

#[test]
fn policy_attribution_goes_to_the_deciding_direction() {
    let table = weir_flows::Attribution::new();
    let allow: Policies = Arc::from(vec![Policy {
        name: "allow-web".into(),
        namespace: "x".into(),
        kind: "NetworkPolicy".into(),
        ..Policy::default()
    }]);
    let deny: Policies = Arc::from(vec![
        Policy {
            name: "default-deny".into(),
            namespace: "x".into(),
            ..Policy::default()
        },
        Policy {
            name: "egress-only".into(),
            namespace: "x".into(),
            ..Policy::default()
        },
    ]);
    table.insert(5, allow.clone());
    table.insert(6, deny.clone());
    let mut d = decoder();
    d.set_attribution(table.clone());
    let empty = |p: &Policies| p.is_empty();

    // Allowed egress at the source's FROM_ENDPOINT.
    let mut ev = tcp_v4_syn();
    ev.policy_attr = 5;
    let f = d.decode(&ev, &index());
    assert_eq!(f.egress_allowed_by, allow);
    assert!(
        empty(&f.ingress_allowed_by) && empty(&f.egress_denied_by) && empty(&f.ingress_denied_by)
    );

    // Its reply arriving at TO_ENDPOINT still names the egress decision.
    ev.obs_point = obs::TO_ENDPOINT;
    ev.flags = flag::REPLY;
    let f = d.decode(&ev, &index());
    assert_eq!(f.egress_allowed_by, allow);

    // New ingress at TO_ENDPOINT, dropped: the isolating policies deny it.
    ev.flags = 0;
    ev.verdict = verdict::DROPPED;
    ev.drop_reason = 133;
    ev.policy_attr = 6;
    let f = d.decode(&ev, &index());
    assert_eq!(f.ingress_denied_by, deny);
    assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied);
    assert!(
        empty(&f.egress_allowed_by) && empty(&f.ingress_allowed_by) && empty(&f.egress_denied_by)
    );

    // Audit counts as denied; an unknown id or 0 names nothing.
    ev.verdict = verdict::AUDIT;
    ev.obs_point = obs::FROM_ENDPOINT;
    let f = d.decode(&ev, &index());
    assert_eq!(f.verdict, Verdict::Audit);
    assert_eq!(f.egress_denied_by, deny);
    ev.policy_attr = 99;
    assert!(empty(&d.decode(&ev, &index()).egress_denied_by));
    ev.policy_attr = 0;
    assert!(empty(&d.decode(&ev, &index()).egress_denied_by));
    // An id unknown at first (its set published after the event was
    // written) is named once the table has it: misses are not remembered.
    ev.policy_attr = 99;
    table.insert(99, allow.clone());
    assert_eq!(d.decode(&ev, &index()).egress_denied_by, allow);
    // Ids the decoder has seen keep naming their sets, many of them.
    for id in 1000..6000u32 {
        table.insert(
            id,
            if id % 2 == 0 {
                allow.clone()
            } else {
                deny.clone()
            },
        );
    }
    for round in 0..2 {
        for id in 1000..6000u32 {
            ev.policy_attr = id;
            let want = if id % 2 == 0 { &allow } else { &deny };
            assert_eq!(
                &d.decode(&ev, &index()).egress_denied_by,
                want,
                "id {id} round {round}"
            );
        }
    }

    // The flow log prints them in Hubble's shape.
    ev.policy_attr = 6;
    ev.verdict = verdict::DROPPED;
    let json = serde_json::to_value(d.decode(&ev, &index())).unwrap();
    assert_eq!(
        json["egress_denied_by"],
        serde_json::json!([{"name":"default-deny","namespace":"x"},{"name":"egress-only","namespace":"x"}])
    );
    assert_eq!(table.len(), 5003);
}

#[test]
fn policy_verdict_flows_accompany_decisions_only() {
    let mut d = decoder();
    let mut ev = tcp_v4_syn();
    // No policy applied (attr 0): no verdict event.
    let f = d.decode(&ev, &index());
    assert!(d.policy_verdict(&ev, &f).is_none());
    // A new connection decided at an isolated endpoint.
    ev.policy_attr = 9;
    ev.emit_reason = emit::NEW;
    let f = d.decode(&ev, &index());
    let v = d.policy_verdict(&ev, &f).expect("a verdict event");
    assert_eq!(
        v.event_type,
        Some(CiliumEventType {
            r#type: 5,
            sub_type: 0
        })
    );
    assert_ne!(v.uuid, f.uuid);
    assert_eq!(
        (v.verdict, v.traffic_direction),
        (f.verdict, f.traffic_direction)
    );
    // Later events of the connection, and replies, are not decisions.
    ev.emit_reason = emit::TCP_FLAG;
    let f = d.decode(&ev, &index());
    assert!(d.policy_verdict(&ev, &f).is_none());
    ev.emit_reason = emit::NEW;
    ev.flags = flag::REPLY;
    let f = d.decode(&ev, &index());
    assert!(d.policy_verdict(&ev, &f).is_none());
    // Every dropped packet is one.
    ev.flags = 0;
    ev.emit_reason = emit::PACKET;
    ev.verdict = verdict::DROPPED;
    ev.drop_reason = 133;
    let f = d.decode(&ev, &index());
    let v = d.policy_verdict(&ev, &f).expect("a drop's verdict");
    assert_eq!(v.verdict, Verdict::Dropped);
    assert_eq!(
        f.event_type.unwrap().r#type,
        1,
        "the drop itself stays a drop event"
    );
}

#[test]
fn a_host_network_pods_side_comes_from_its_endpoint_id() {
    let mut idx = index();
    let agent = meta(0x8000_0001, 300, "kube-system", "node-agent");
    idx.insert_endpoint(0x8000_0001, Arc::clone(&agent));
    let mut d = decoder();
    // Egress from the hostNetwork pod (its cgroup hook, FROM_ENDPOINT): the
    // source address is the node's, the source endpoint is the pod.
    let mut ev = tcp_v4_syn();
    ev.ifindex = 0x8000_0001;
    let f = d.decode(&ev, &idx);
    let src = f.source.as_deref().unwrap();
    assert_eq!((src.pod_name.as_str(), src.identity), ("node-agent", 300));
    assert_eq!(f.destination.as_deref().unwrap().pod_name, "b");
    // Ingress into it (TO_ENDPOINT): the destination is the pod.
    ev.obs_point = obs::TO_ENDPOINT;
    let f = d.decode(&ev, &idx);
    assert_eq!(f.destination.as_deref().unwrap().pod_name, "node-agent");
    assert_eq!(f.source.as_deref().unwrap().pod_name, "a");
    // An id the index does not know leaves the address-based sides.
    ev.ifindex = 0x8000_0002;
    let f = d.decode(&ev, &idx);
    assert_eq!(f.destination.as_deref().unwrap().pod_name, "b");
}
