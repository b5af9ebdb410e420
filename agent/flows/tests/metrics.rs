//! Metrics: flow counting, delta setters, text output.

mod common;

use std::collections::HashMap;

use common::*;
use weir_common::{parse_error, verdict};
use weir_flows::metrics::{LostSource, set_counter_total};
use weir_flows::{Decoder, FlowStore, Metrics};

/// Parses the text format into `series -> value`, failing on malformed lines.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
            for pair in series[name_end + 1..series.len() - 1]
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(
                    !k.is_empty() && !v.contains('"') || v.ends_with('"'),
                    "bad label {pair:?}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_owned(), v);
    }
    out
}

#[test]
fn observe_flow_increments_the_right_series() {
    let m = Metrics::new().unwrap();
    let mut d = Decoder::with_fixed_clock("n", OFFSET_NS);
    let idx = index();
    for _ in 0..3 {
        m.observe_flow(&d.decode(&tcp_v4_syn(), &idx));
    }
    m.observe_flow(&d.decode(&udp_v6(), &idx));
    let mut dropped = tcp_v4_syn();
    dropped.verdict = verdict::DROPPED;
    dropped.drop_reason = 133;
    m.observe_flow(&d.decode(&dropped, &idx));
    m.observe_flow(&d.decode(&icmpv6(128, 0), &idx));

    let s = parse(&m.encode());
    assert_eq!(
        s[r#"weir_flows_processed_total{protocol="TCP",type="Trace",verdict="FORWARDED"}"#],
        3.0
    );
    assert_eq!(
        s[r#"weir_flows_processed_total{protocol="UDP",type="Trace",verdict="FORWARDED"}"#],
        1.0
    );
    assert_eq!(
        s[r#"weir_flows_processed_total{protocol="TCP",type="Drop",verdict="DROPPED"}"#],
        1.0
    );
    assert_eq!(
        s[r#"weir_flows_processed_total{protocol="ICMPv6",type="Trace",verdict="FORWARDED"}"#],
        1.0
    );
    let total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("weir_flows_processed_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 6.0, "no other series was touched");
}

#[test]
fn delta_setters_apply_differences_and_survive_resets() {
    let m = Metrics::new().unwrap();
    m.datapath_packets.set_total(100);
    m.datapath_packets.set_total(150);
    assert_eq!(m.datapath_packets.counter().get(), 150);
    // Same total again: no change.
    m.datapath_packets.set_total(150);
    assert_eq!(m.datapath_packets.counter().get(), 150);
    // The datapath was reloaded and its counter restarted at 0, now 20.
    m.datapath_packets.set_total(20);
    assert_eq!(m.datapath_packets.counter().get(), 170);
    m.datapath_packets.set_total(25);
    assert_eq!(m.datapath_packets.counter().get(), 175);

    m.set_lost_events_total(LostSource::KernelRingBuffer, 7);
    m.set_lost_events_total(LostSource::KernelRingBuffer, 9);
    m.add_lost_events(LostSource::AgentQueue, 4);
    m.set_parse_errors_total(parse_error::BAD_IPV4, 5);
    m.set_parse_errors_total(parse_error::BAD_IPV4, 8);
    m.set_parse_errors_total(99, 1); // unknown index: ignored
    m.set_drops_total("POLICY_DENIED", 3);
    m.set_drops_total("POLICY_DENIED", 10);
    m.conntrack_created.set_total(12);
    m.set_queue("events", 5, 1024, 2);
    m.set_queue("events", 6, 1024, 7);

    let plain = prometheus::IntCounter::new("x", "x").unwrap();
    set_counter_total(&plain, 10);
    set_counter_total(&plain, 4);
    assert_eq!(plain.get(), 10);

    let s = parse(&m.encode());
    assert_eq!(
        s[r#"weir_lost_events_total{source="kernel_ring_buffer"}"#],
        9.0
    );
    assert_eq!(s[r#"weir_lost_events_total{source="agent_queue"}"#], 4.0);
    assert_eq!(
        s[r#"weir_datapath_parse_errors_total{reason="bad_ipv4"}"#],
        8.0
    );
    assert_eq!(
        s[r#"weir_datapath_parse_errors_total{reason="non_ip"}"#],
        0.0
    );
    assert_eq!(
        s[r#"weir_datapath_drops_total{reason="POLICY_DENIED"}"#],
        10.0
    );
    assert_eq!(s["weir_conntrack_created_total"], 12.0);
    assert_eq!(s["weir_datapath_packets_total"], 175.0);
    assert_eq!(s[r#"weir_queue_length{queue="events"}"#], 6.0);
    assert_eq!(s[r#"weir_queue_capacity{queue="events"}"#], 1024.0);
    assert_eq!(s[r#"weir_queue_dropped_total{queue="events"}"#], 7.0);
}

#[test]
fn encode_has_every_family_with_labels() {
    let m = Metrics::new().unwrap();
    m.conntrack_entries.set(42);
    m.conntrack_capacity.set(65_536);
    m.ring_buffer_pending_bytes.set(128);
    m.ring_buffer_capacity_bytes.set(4 << 20);
    m.endpoints.set(3);
    m.set_state_objects("pod", 3);
    m.state_sync_errors.inc();
    m.state_last_sync_timestamp.set(1_795_953_601.0);
    m.flow_log_lines.set_total(10);

    let store = FlowStore::with_capacity(15).unwrap();
    let _sub = store.subscribe("flowlog", 1);
    store.push(weir_flows::Flow::default());
    store.push(weir_flows::Flow::default()); // dropped for the subscriber
    m.observe_store(&store);
    m.observe_store(&store); // idempotent

    let text = m.encode();
    let s = parse(&text);
    assert_eq!(
        s[&format!(
            "weir_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
    assert_eq!(s["weir_conntrack_entries"], 42.0);
    assert_eq!(s["weir_conntrack_capacity"], 65_536.0);
    assert_eq!(s["weir_ring_buffer_pending_bytes"], 128.0);
    assert_eq!(s["weir_ring_buffer_capacity_bytes"], 4_194_304.0);
    assert_eq!(s["weir_flow_ring_flows"], 2.0);
    assert_eq!(s["weir_flow_ring_capacity"], 15.0);
    assert_eq!(s[r#"weir_queue_length{queue="flows_flowlog"}"#], 1.0);
    assert_eq!(s[r#"weir_queue_dropped_total{queue="flows_flowlog"}"#], 1.0);
    assert_eq!(s[r#"weir_lost_events_total{source="flow_ring"}"#], 1.0);
    assert_eq!(s["weir_endpoints"], 3.0);
    assert_eq!(s[r#"weir_state_objects{kind="pod"}"#], 3.0);
    assert_eq!(s["weir_state_sync_errors_total"], 1.0);
    assert_eq!(s["weir_state_last_sync_timestamp_seconds"], 1_795_953_601.0);
    assert_eq!(s["weir_flow_log_lines_total"], 10.0);
    for name in [
        "weir_datapath_packets_total",
        "weir_datapath_bytes_total",
        "weir_datapath_events_emitted_total",
        "weir_conntrack_created_total",
        "weir_flow_log_write_errors_total",
    ] {
        assert_eq!(s[name], 0.0, "{name}");
    }
    for reason in parse_error::NAMES {
        assert!(s.contains_key(&format!(
            "weir_datapath_parse_errors_total{{reason=\"{reason}\"}}"
        )));
    }
    #[cfg(target_os = "linux")]
    assert!(
        s.contains_key("process_resident_memory_bytes"),
        "process collector registered"
    );
    assert!(text.contains("# TYPE weir_lost_events_total counter"));
    assert!(text.contains("# HELP weir_conntrack_entries "));
    assert!(m.content_type().starts_with("text/plain"));
}
