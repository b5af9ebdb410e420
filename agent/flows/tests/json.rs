//! JSON: exact Hubble field names and shapes, round trips, and reading
//! Hubble's own output.

mod common;

use common::*;
use weir_flows::Decoder;
use weir_flows::export::{ExportEvent, write_flow_json, write_lost_json};
use weir_flows::flow::*;

const UUID: &str = "6f1c2a4e-9b7d-4c3e-8a1f-000000000001";

fn reference_flow() -> Flow {
    let mut d = Decoder::with_fixed_clock("node-1", OFFSET_NS);
    d.set_interface_name(7, "lxc1234");
    let mut ev = tcp_v4_syn();
    // Connection first seen at ...01.123 exactly: exercises the 3-digit form.
    ev.first_seen_ns = BOOT_NS - 456_789;
    let mut f = d.decode(&ev, &index());
    f.uuid = UUID.parse().unwrap();
    f
}

/// Hand-written: what `hubble observe -o json` prints for this flow (plus
/// Weir's `extensions`), in protojson's field order.
const EXPECTED_FLOW: &str = concat!(
    r#"{"time":"2026-11-29T12:00:01.123456789Z","#,
    r#""uuid":"6f1c2a4e-9b7d-4c3e-8a1f-000000000001","#,
    r#""verdict":"FORWARDED","#,
    r#""IP":{"source":"10.0.1.5","destination":"10.0.2.7","ipVersion":"IPv4"},"#,
    r#""l4":{"TCP":{"source_port":34567,"destination_port":80,"flags":{"SYN":true}}},"#,
    r#""source":{"ID":12,"identity":256,"namespace":"x","labels":["k8s:app=a","k8s:io.kubernetes.pod.namespace=x"],"pod_name":"a","workloads":[{"name":"a"}]},"#,
    r#""destination":{"identity":257,"namespace":"x","labels":["k8s:app=b","k8s:io.kubernetes.pod.namespace=x"],"pod_name":"b","workloads":[{"name":"b"}]},"#,
    r#""Type":"L3_L4","#,
    r#""node_name":"node-1","#,
    r#""event_type":{"type":4,"sub_type":5},"#,
    r#""traffic_direction":"EGRESS","#,
    r#""trace_observation_point":"FROM_ENDPOINT","#,
    r#""is_reply":false,"#,
    r#""interface":{"index":7,"name":"lxc1234"},"#,
    r#""Summary":"TCP Flags: SYN","#,
    r#""extensions":{"@type":"type.googleapis.com/weir.flow.v1.FlowExtensions","emit_reason":"NEW","first_seen":"2026-11-29T12:00:01.123Z","packets_forward":"1","bytes_forward":"74","packet_length":74,"tcp_flags_forward":{"SYN":true}}}"#,
);

#[test]
fn flow_json_matches_hubble_field_names_exactly() {
    let json = serde_json::to_string(&reference_flow()).unwrap();
    assert_eq!(json, EXPECTED_FLOW);
}

#[test]
fn export_line_shape() {
    let mut buf = Vec::new();
    write_flow_json(&reference_flow(), &mut buf).unwrap();
    let line = String::from_utf8(buf).unwrap();
    let expected = format!(
        r#"{{"flow":{EXPECTED_FLOW},"node_name":"node-1","time":"2026-11-29T12:00:01.123456789Z"}}"#
    ) + "\n";
    assert_eq!(line, expected);
}

#[test]
fn lost_events_line_shape() {
    let mut buf = Vec::new();
    let lost = LostEvent {
        source: LostEventSource::HubbleRingBuffer,
        num_events_lost: 42,
        ..LostEvent::default()
    };
    write_lost_json(
        &lost,
        "node-1",
        Timestamp::from_unix_nanos(WALL_NS),
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        concat!(
            r#"{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"42"},"#,
            r#""node_name":"node-1","time":"2026-11-29T12:00:01.123456789Z"}"#,
            "\n"
        )
    );
    // Numbers are accepted when reading.
    let ev = ExportEvent::parse(
        r#"{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":7,"cpu":1},"node_name":"n"}"#,
    )
    .unwrap();
    let l = ev.lost_events.unwrap();
    assert_eq!(l.source, LostEventSource::PerfEventRingBuffer);
    assert_eq!((l.num_events_lost, l.cpu), (7, Some(1)));
}

#[test]
fn round_trip_flow_and_export_line() {
    let f = reference_flow();
    let back: Flow = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
    assert_eq!(back, f);

    let mut buf = Vec::new();
    write_flow_json(&f, &mut buf).unwrap();
    let ev = ExportEvent::parse(std::str::from_utf8(&buf).unwrap()).unwrap();
    assert_eq!(ev.flow.as_ref(), Some(&f));
    assert_eq!(ev.node_name, "node-1");
    assert_eq!(ev.time, f.time);

    // Every protocol shape and a dropped reply round-trip too.
    let mut d = Decoder::with_fixed_clock("node-1", OFFSET_NS);
    let idx = index();
    let mut dropped = tcp_v4_syn();
    dropped.verdict = weir_common::verdict::DROPPED;
    dropped.drop_reason = 181;
    dropped.flags = weir_common::flag::REPLY;
    for ev in [udp_v6(), icmpv4(3, 3), icmpv6(128, 0), dropped] {
        let f = d.decode(&ev, &idx);
        let s = serde_json::to_string(&f).unwrap();
        let back: Flow = serde_json::from_str(&s).unwrap();
        assert_eq!(back, f, "round trip of {s}");
    }
}

#[test]
fn zero_values_omitted_and_is_reply_kept() {
    let f = Flow {
        is_reply: Some(false),
        ..Flow::default()
    };
    assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"is_reply":false}"#);
    assert_eq!(serde_json::to_string(&Flow::default()).unwrap(), "{}");
    let f = Flow {
        is_reply: Some(true),
        ..Flow::default()
    };
    assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"is_reply":true}"#);
}

#[test]
fn timestamp_forms_follow_protojson() {
    let t = |ns| serde_json::to_string(&Timestamp::from_unix_nanos(ns)).unwrap();
    assert_eq!(t(1_795_953_601_000_000_000), r#""2026-11-29T12:00:01Z""#);
    assert_eq!(
        t(1_795_953_601_120_000_000),
        r#""2026-11-29T12:00:01.120Z""#
    );
    assert_eq!(
        t(1_795_953_601_123_456_000),
        r#""2026-11-29T12:00:01.123456Z""#
    );
    assert_eq!(
        t(1_795_953_601_000_000_001),
        r#""2026-11-29T12:00:01.000000001Z""#
    );
    assert_eq!(t(0), r#""1970-01-01T00:00:00Z""#);
    // Offsets are converted to UTC when reading.
    let ts: Timestamp = serde_json::from_str(r#""2026-11-29T13:00:01.5+01:00""#).unwrap();
    assert_eq!(ts, Timestamp::from_unix_nanos(1_795_953_601_500_000_000));
    assert!(serde_json::from_str::<Timestamp>(r#""yesterday""#).is_err());
}

#[test]
fn enum_numbers_equal_hubbles() {
    assert_eq!(Verdict::Forwarded as i32, 1);
    assert_eq!(Verdict::Dropped as i32, 2);
    assert_eq!(Verdict::Audit as i32, 4);
    assert_eq!(TraceObservationPoint::ToEndpoint as i32, 101);
    assert_eq!(TraceObservationPoint::FromEndpoint as i32, 5);
    assert_eq!(TrafficDirection::Egress as i32, 2);
    assert_eq!(FlowType::L3L4 as i32, 1);
    assert_eq!(IpVersion::Ipv6 as i32, 2);
    assert_eq!(DropReason::PolicyDenied as i32, 133);
    assert_eq!(DropReason::DropPuntProxy as i32, 205);
    assert_eq!(LostEventSource::HubbleRingBuffer as i32, 3);
    for v in DropReason::ALL {
        assert_eq!(DropReason::from_i32(*v as i32), Some(*v));
        assert_eq!(DropReason::from_str_name(v.as_str_name()), Some(*v));
    }
    // Numbers and unknown names read leniently.
    let v: Verdict = serde_json::from_str("2").unwrap();
    assert_eq!(v, Verdict::Dropped);
    let v: Verdict = serde_json::from_str(r#""SOMETHING_NEW""#).unwrap();
    assert_eq!(v, Verdict::Unknown);
}

/// A flow as Hubble itself exports it, with fields Weir does not model.
const HUBBLE_LINE: &str = r#"{"flow":{"time":"2024-05-01T10:20:30.405060708Z","uuid":"0b6f0c2e-1c1b-4b8e-9d55-6f0f2c3e9a01","verdict":"DROPPED","drop_reason":133,"ethernet":{"source":"aa:bb:cc:dd:ee:ff","destination":"11:22:33:44:55:66"},"IP":{"source":"10.244.1.12","destination":"10.244.2.8","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":51514,"destination_port":8080,"flags":{"SYN":true}}},"source":{"ID":1234,"identity":5678,"cluster_name":"default","namespace":"shop","labels":["k8s:app=web"],"pod_name":"web-0","workloads":[{"name":"web","kind":"StatefulSet"}]},"destination":{"identity":9012,"namespace":"shop","labels":["k8s:app=db"],"pod_name":"db-0"},"Type":"L3_L4","node_name":"kind-worker","node_labels":["kubernetes.io/hostname=kind-worker"],"event_type":{"type":1,"sub_type":133},"traffic_direction":"EGRESS","drop_reason_desc":"POLICY_DENIED","Summary":"TCP Flags: SYN","egress_denied_by":[{"name":"deny-db","namespace":"shop"}]},"node_name":"kind-worker","time":"2024-05-01T10:20:30.405060708Z"}"#;

#[test]
fn reads_hubble_export_lines() {
    let ev = ExportEvent::parse(HUBBLE_LINE).unwrap();
    assert_eq!(ev.node_name, "kind-worker");
    let f = ev.flow.unwrap();
    assert_eq!(f.verdict, Verdict::Dropped);
    assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied);
    assert_eq!(f.source_port(), 51514);
    assert_eq!(f.destination_port(), 8080);
    let src = f.source.unwrap();
    assert_eq!(src.cluster_name, "default");
    assert_eq!(src.workloads[0].kind, "StatefulSet");
    assert_eq!(f.is_reply, None);
    assert_eq!(f.extensions, None);
    assert_eq!(f.time.unwrap().nanos, 405_060_708);

    // A foreign `extensions` Any is dropped, not misread.
    let foreign =
        r#"{"extensions":{"@type":"type.googleapis.com/other.Thing","packets_forward":"5"}}"#;
    let f: Flow = serde_json::from_str(foreign).unwrap();
    assert_eq!(f.extensions, None);

    // Other response types parse as empty events.
    let ev =
        ExportEvent::parse(r#"{"node_status":{"state_change":"NODE_CONNECTED"},"node_name":"x"}"#)
            .unwrap();
    assert!(ev.flow.is_none() && ev.lost_events.is_none());
    assert!(ExportEvent::parse("not json").is_err());
}
