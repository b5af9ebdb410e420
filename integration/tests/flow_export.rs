//! Hubble-style flow-log exporters through the real agent: a `flowLogs:`
//! file with named exporters, filters and a field mask, applied at start and
//! re-applied on change without restart; a bad entry is refused by name while
//! the others keep writing; counters reach /metrics.
//!
//! Needs root and the `weir` / `weir-cni` binaries (see tests/common).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn flows(path: &Path) -> Vec<Value> {
    lines(path)
        .into_iter()
        .filter_map(|l| l.get("flow").cloned())
        .collect()
}

fn dport(f: &Value) -> Option<u64> {
    f["l4"]["TCP"]["destination_port"]
        .as_u64()
        .or_else(|| f["l4"]["UDP"]["destination_port"].as_u64())
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

use common::metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_filter_mask_and_reload_without_restart() {
    let Some(mut options) = common::agent_lab_options("flow_export") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let web = d.join("web.log");
    let all = d.join("all.log");
    let bad = d.join("bad.log");
    let cfg = d.join("flowlogs.yaml");
    std::fs::write(
        &cfg,
        format!(
            "flowLogs:\n  - name: web\n    filePath: {}\n    includeFilters: [{{destination_port: [\"80\"]}}]\n    fieldMask: [time, source.pod_name, destination.pod_name, l4]\n  - name: all\n    filePath: {}\n",
            web.display(),
            all.display()
        ),
    )
    .unwrap();
    options.agent_args = vec!["--flow-logs-config".into(), cfg.display().to_string()];
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a"),
        PodSpec::new("x", "b")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53)),
    ])
    .await
    .expect("pods come up");
    for p in [
        ProbeSpec::tcp("x/a", "x/b", 80),
        ProbeSpec::udp("x/a", "x/b", 53),
    ] {
        assert!(lab.probe(&p).await.unwrap().connected, "{p:?}");
    }
    wait_for("the exporters' flows", || {
        !flows(&web).is_empty() && flows(&all).iter().any(|f| dport(f) == Some(53))
    })
    .await;

    // web: only flows to port 80, only the masked fields.
    for f in flows(&web) {
        assert_eq!(dport(&f), Some(80), "include filter: {f}");
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["time", "source", "destination", "l4"].contains(&k.as_str())),
            "field mask: {f}"
        );
        assert_eq!(f["source"].as_object().unwrap().len(), 1, "{f}");
        assert_eq!(f["source"]["pod_name"], "a");
    }
    // all: every kind, with the full envelope.
    let all_lines = lines(&all);
    assert!(all_lines.iter().any(|l| l["node_name"] == "weir-lab"));
    assert!(flows(&all).iter().any(|f| dport(f) == Some(80)));
    let all_before = all_lines.len();
    wait_for("exporter metrics", || {
        metric(&lab, "weir_flow_export_lines_total{exporter=\"all\"}").is_some_and(|v| v > 0.0)
    })
    .await;
    assert_eq!(
        metric(&lab, "weir_flow_export_up{exporter=\"web\"}"),
        Some(1.0)
    );
    assert!(
        metric(&lab, "weir_flow_export_filtered_total{exporter=\"web\"}").unwrap() > 0.0,
        "web filtered out the UDP flows"
    );

    // Reload: web now takes port 53; a bad entry is refused by name; all
    // keeps running untouched.
    let errors_before = metric(&lab, "weir_flow_export_config_errors_total").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "flowLogs:\n  - name: web\n    filePath: {}\n    includeFilters: [{{destination_port: [\"53\"]}}]\n  - name: all\n    filePath: {}\n  - name: bad\n    filePath: {}\n    includeFilters: [{{source_ip: [\"not-an-ip\"]}}]\n",
            web.display(),
            all.display(),
            bad.display()
        ),
    )
    .unwrap();
    wait_for("the refusal to be counted", || {
        metric(&lab, "weir_flow_export_config_errors_total").unwrap_or(0.0) > errors_before
    })
    .await;
    let log = std::fs::read_to_string(lab.agent_log_path()).unwrap();
    assert!(
        log.contains("bad") && log.contains("source_ip"),
        "the refusal names the exporter and the field:\n{log}"
    );
    assert!(!bad.exists(), "the refused exporter writes nothing");
    assert!(
        lab.probe(&ProbeSpec::udp("x/a", "x/b", 53))
            .await
            .unwrap()
            .connected
    );
    wait_for("web to follow its new filter", || {
        flows(&web).iter().any(|f| dport(f) == Some(53))
    })
    .await;
    wait_for("all to keep appending", || lines(&all).len() > all_before).await;
    let all_after = lines(&all);
    assert_eq!(
        &all_after[..all_before],
        &all_lines[..],
        "the unchanged exporter kept its file and appended"
    );
    lab.shutdown().await.expect("lab stops");
}
