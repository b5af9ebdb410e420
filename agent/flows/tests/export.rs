//! The flow log writer, against real files.

mod common;

use std::time::Duration;

use common::*;
use weir_flows::export::{ExportError, ExportEvent, FlowLogTarget, FlowLogWriter, OutputFormat};
use weir_flows::{Decoder, FlowStore};

#[tokio::test]
async fn writes_json_lines_to_a_file_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.log");
    std::fs::write(&path, "{\"node_name\":\"earlier\"}\n").unwrap();

    let store = FlowStore::new();
    let writer = FlowLogWriter::new(
        FlowLogTarget::File(path.clone()),
        OutputFormat::Json,
        "node-1",
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run(store.subscribe("flowlog", 1024)));

    let mut d = Decoder::with_fixed_clock("node-1", OFFSET_NS);
    let idx = index();
    let flows: Vec<_> = [tcp_v4_syn(), udp_v6(), icmpv4(8, 0)]
        .iter()
        .map(|e| store.push(d.decode(e, &idx)))
        .collect();

    // Flushed promptly without closing: what `tail -f` relies on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.lines().count() == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flows not flushed: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    drop(store);
    task.await.unwrap().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(
        lines[0], "{\"node_name\":\"earlier\"}",
        "existing content kept"
    );
    for (line, want) in lines[1..].iter().zip(&flows) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["node_name"], "node-1");
        assert_eq!(v["flow"]["Type"], "L3_L4");
        let ev = ExportEvent::parse(line).unwrap();
        assert_eq!(ev.flow.as_ref(), Some(&**want));
    }
    assert_eq!(stats.lines_written(), 3);
    assert_eq!(stats.write_errors(), 0);
}

#[tokio::test]
async fn compact_format_and_lost_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("missing-dir.log");
    // A path whose directory does not exist cannot be opened.
    let w = FlowLogWriter::new(
        FlowLogTarget::File(path.clone()),
        OutputFormat::Compact,
        "n",
    );
    let store = FlowStore::new();
    match w.run(store.subscribe("x", 4)).await {
        Err(ExportError::Open { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected an open error, got {other:?}"),
    }

    let path = dir.path().join("compact.log");
    for format in [OutputFormat::Compact, OutputFormat::Json] {
        let _ = std::fs::remove_file(&path);
        let store = FlowStore::new();
        // Queue of 2 and nobody reading yet: 3 of 5 flows are lost.
        let sub = store.subscribe("flowlog", 2);
        let mut d = Decoder::with_fixed_clock("node-1", OFFSET_NS);
        for _ in 0..5 {
            store.push(d.decode(&tcp_v4_syn(), &index()));
        }
        let w = FlowLogWriter::new(FlowLogTarget::File(path.clone()), format, "node-1");
        let stats = w.stats();
        drop(store);
        w.run(sub).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(stats.lost_events_reported(), 3);
        assert_eq!(stats.lines_written(), 3);
        match format {
            OutputFormat::Compact => {
                assert!(lines[0].starts_with("Nov 29 12:00:01.123: x/a:34567 (ID:256) -> x/b:80"));
                assert_eq!(lines[2], "EVENTS LOST: HUBBLE_RING_BUFFER 3");
            }
            OutputFormat::Json => {
                let lost = ExportEvent::parse(lines[2]).unwrap();
                let l = lost.lost_events.unwrap();
                assert_eq!(l.num_events_lost, 3);
                assert_eq!(
                    l.source,
                    weir_flows::flow::LostEventSource::HubbleRingBuffer
                );
                assert_eq!(lost.node_name, "node-1");
                assert!(lost.time.is_some());
            }
        }
    }
}

#[test]
fn output_format_parses() {
    assert_eq!("json".parse::<OutputFormat>(), Ok(OutputFormat::Json));
    assert_eq!("compact".parse::<OutputFormat>(), Ok(OutputFormat::Compact));
    assert!("yaml".parse::<OutputFormat>().is_err());
}
