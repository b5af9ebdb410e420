//! OTLP export through the real agent: flows of real lab traffic arrive at a
//! receiver built from the official OTLP protos (Python's
//! opentelemetry-proto with grpcio, agent/otel/tests/receiver) as log records
//! with semantic-convention attributes, and the agent's metrics arrive as OTLP
//! metrics; the agent counts what it exported.
//!
//! Needs root, the `weir` / `weir-cni` binaries and target/pyenv (made by
//! `cargo xtask setup`): skips locally without them, fails under CI=true.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

use common::in_ci;

/// The receiver process; killed (stdin closed) on drop.
struct Receiver {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("pyenv/bin/python")
}

fn start_receiver(out: &Path) -> Option<Receiver> {
    let py = python();
    if !py.is_file() {
        let msg = format!("{} is missing: run cargo xtask setup", py.display());
        if in_ci() {
            panic!("{msg}; CI=true forbids skipping");
        }
        eprintln!("skipping otel test: {msg}");
        return None;
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/otel/tests/receiver/receiver.py");
    let mut child = Command::new(py)
        .arg(script)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = |key: &str| -> u16 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?}"))
    };
    Some(Receiver {
        grpc: port("grpc="),
        http: port("http="),
        child,
    })
}

fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

use common::metric;

async fn run(protocol: &str) {
    let test = format!("otel::{protocol}");
    let Some(mut options) = common::agent_lab_options(&test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("received.jsonl");
    let Some(rx) = start_receiver(&out) else {
        return;
    };
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", rx.grpc),
        _ => format!("http://127.0.0.1:{}", rx.http),
    };
    let cfg = tmp.path().join("weir.yaml");
    std::fs::write(
        &cfg,
        format!(
            "otel:\n  endpoint: \"{endpoint}\"\n  protocol: {protocol}\n  metricsInterval: 1s\n  batchDelay: 200ms\n  headers: {{x-api-key: k1}}\n"
        ),
    )
    .unwrap();
    options.agent_args = vec!["--config".into(), cfg.display().to_string()];
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a"),
        PodSpec::new("y", "b").port(PortSpec::tcp(80)),
    ])
    .await
    .expect("pods come up");
    let r = lab.probe(&ProbeSpec::tcp("x/a", "y/b", 80)).await.unwrap();
    assert!(r.connected, "{r:?}");
    let a_ip = lab.pod_ip("x/a").unwrap().to_string();
    let b_ip = lab.pod_ip("y/b").unwrap().to_string();

    // The connection's flows arrive as log records with semconv attributes.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (record, resource, headers) = loop {
        let got = received(&out);
        let found = got
            .iter()
            .filter(|req| req["signal"] == "logs" && req["outcome"] == "ok")
            .find_map(|req| {
                req["records"]
                    .as_array()?
                    .iter()
                    .find(|r| {
                        r["attributes"]["destination.port"] == 80
                            && r["attributes"]["weir.flow.observation_point"] == "TO_ENDPOINT"
                    })
                    .map(|r| (r.clone(), req["resource"].clone(), req["headers"].clone()))
            });
        if let Some(f) = found {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no flow to port 80 reached the receiver: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at = &record["attributes"];
    assert_eq!(at["source.address"], a_ip.as_str());
    assert_eq!(at["destination.address"], b_ip.as_str());
    assert_eq!(at["network.transport"], "tcp");
    assert_eq!(at["network.type"], "ipv4");
    // At TO_ENDPOINT the observed endpoint is the destination pod.
    assert_eq!(at["k8s.pod.name"], "b");
    assert_eq!(at["k8s.namespace.name"], "y");
    assert_eq!(at["weir.source.k8s.pod.name"], "a");
    assert_eq!(at["weir.source.k8s.namespace.name"], "x");
    assert_eq!(at["weir.flow.verdict"], "FORWARDED");
    assert_eq!(resource["service.name"], "weir");
    assert_eq!(resource["k8s.node.name"], "weir-lab");
    if protocol == "http/protobuf" {
        assert_eq!(headers["x-api-key"], "k1", "configured headers are sent");
    }

    // The agent's metrics arrive as OTLP metrics.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = received(&out);
        // Weir's own families and the Hubble families (kept in a registry of
        // their own) arrive together.
        let has = got.iter().filter(|r| r["signal"] == "metrics").any(|req| {
            req["metrics"].as_array().is_some_and(|ms| {
                ["weir_flows_processed_total", "hubble_flows_processed_total"]
                    .iter()
                    .all(|name| {
                        ms.iter().any(|m| {
                            m["name"] == *name && m["type"] == "sum" && m["is_monotonic"] == true
                        })
                    })
            })
        });
        if has {
            break;
        }
        assert!(Instant::now() < deadline, "no metrics reached the receiver");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&lab, "weir_otel_records_exported_total{signal=\"logs\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "exported records are counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(
            &lab,
            "weir_otel_records_dropped_total{reason=\"queue_full\",signal=\"logs\"}"
        ),
        Some(0.0)
    );
    lab.shutdown().await.expect("lab stops");
    drop(rx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_metrics_reach_an_otlp_grpc_receiver() {
    run("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_metrics_reach_an_otlp_http_receiver() {
    run("http/protobuf").await;
}
