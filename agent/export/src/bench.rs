//! Throughput of one exporter, for `BENCHMARKS.md` ("keeps up with 100k
//! flows/s or drops and counts"): pushes flows into a real [`FlowStore`] from
//! a plain thread, at a fixed rate or as fast as it can, through one exporter
//! writing a real file, then stops the exporter (which writes what it had
//! queued) and counts what reached the file and what the store dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_flows::FlowStore;
use weir_flows::flow::{self as wf, Flow};

use crate::set::ExporterSet;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The exporter was refused (bad options or directory).
    #[error("bench exporter refused: {0}")]
    Refused(String),
    /// Reading the output back failed.
    #[error("reading the bench output")]
    Read(#[source] std::io::Error),
    /// The pushing thread failed.
    #[error("pushing thread failed")]
    Pusher,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Flows pushed.
    pub flows: u64,
    /// Offered rate in flows/s; `None` pushes as fast as the thread can.
    pub rate: Option<u64>,
    /// The exporter's queue bound.
    pub queue: usize,
    /// The exporter's field mask (empty: whole flows).
    pub field_mask: Vec<String>,
    /// `fileMaxSizeMb` (rotation is part of the cost).
    pub file_max_size_mb: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            flows: 200_000,
            rate: Some(100_000),
            queue: crate::set::DEFAULT_QUEUE_CAPACITY,
            field_mask: Vec::new(),
            file_max_size_mb: 10,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub pushed: u64,
    /// Flow lines found in the files afterwards.
    pub flows_written: u64,
    /// Flows the store dropped from the exporter's queue.
    pub dropped: u64,
    /// Rotations done.
    pub rotations: u64,
    /// Bytes in the files.
    pub bytes: u64,
    /// From the first push until the exporter had written everything.
    pub elapsed: Duration,
    /// Time the pushing took (the offered rate is `pushed / push_time`).
    pub push_time: Duration,
    /// `flows_written / elapsed`.
    pub lines_per_sec: f64,
}

/// Runs one benchmark writing into `dir` (which should be empty).
pub async fn run(dir: &Path, opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let store = FlowStore::new();
    let set = ExporterSet::with_queue_capacity(store.clone(), "bench-node", opts.queue);
    let path = dir.join("bench.log");
    let cfg = serde_json::json!({"flowLogs": [{
        "name": "bench",
        "filePath": path,
        "fieldMask": opts.field_mask,
        "fileMaxSizeMb": opts.file_max_size_mb,
        "fileMaxBackups": 0,
    }]});
    let report = set.apply(&cfg.to_string());
    if !report.is_ok() {
        return Err(BenchError::Refused(format!("{report:?}")));
    }
    let template = sample_flow();
    let (n, rate) = (opts.flows, opts.rate);
    let started = Instant::now();
    let pusher = {
        let store = store.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            for i in 0..n {
                let mut f = template.clone();
                f.uuid = uuid_of(i);
                store.push(f);
                // Pace in steps of 1000 flows: sleeping per flow costs more
                // than a flow at these rates.
                if let Some(r) = rate.filter(|_| i % 1000 == 999) {
                    let due = Duration::from_secs_f64((i + 1) as f64 / r as f64);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            t0.elapsed()
        })
    };
    let push_time = tokio::task::spawn_blocking(move || pusher.join())
        .await
        .map_err(|_| BenchError::Pusher)?
        .map_err(|_| BenchError::Pusher)?;
    set.stop_all().await;
    let elapsed = started.elapsed();
    let dropped = store
        .subscriber_stats()
        .iter()
        .find(|q| q.name == "export_bench")
        .map_or(0, |q| q.dropped);
    let (mut flows_written, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).map_err(BenchError::Read)? {
        let p = e.map_err(BenchError::Read)?.path();
        let text = std::fs::read_to_string(&p).map_err(BenchError::Read)?;
        bytes += text.len() as u64;
        flows_written += text.lines().filter(|l| l.starts_with("{\"flow\"")).count() as u64;
    }
    let rotations = count_backups(dir).saturating_sub(1);
    Ok(BenchReport {
        pushed: n,
        flows_written,
        dropped,
        rotations,
        bytes,
        elapsed,
        push_time,
        lines_per_sec: flows_written as f64 / elapsed.as_secs_f64(),
    })
}

fn count_backups(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| rd.count() as u64)
}

fn uuid_of(i: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 | u128::from(i))
}

/// A typical enriched TCP flow between two pods.
pub fn sample_flow() -> Flow {
    let ep = |ns: &str, pod: &str, app: &str| {
        Some(Arc::new(wf::Endpoint {
            id: 101,
            identity: 4242,
            cluster_name: "default".into(),
            namespace: ns.into(),
            labels: vec![
                format!("k8s:app={app}"),
                format!("k8s:io.kubernetes.pod.namespace={ns}"),
            ],
            pod_name: pod.into(),
            workloads: vec![wf::Workload {
                name: app.into(),
                kind: "Deployment".into(),
            }],
        }))
    };
    Flow {
        time: Some(wf::Timestamp::now()),
        verdict: wf::Verdict::Forwarded,
        ip: Some(wf::Ip {
            source: Some("10.0.0.1".parse().expect("address")),
            destination: Some("10.0.1.2".parse().expect("address")),
            ip_version: wf::IpVersion::Ipv4,
            encrypted: false,
        }),
        l4: Some(wf::Layer4::Tcp(wf::Tcp {
            source_port: 40000,
            destination_port: 8080,
            flags: Some(wf::TcpFlags {
                syn: true,
                ..wf::TcpFlags::default()
            }),
        })),
        source: ep("shop", "web-5d9c7b-x2x4q", "web"),
        destination: ep("shop", "api-7f8d9c-p9k2m", "api"),
        node_name: Arc::from("bench-node"),
        event_type: Some(wf::CiliumEventType {
            r#type: wf::EVENT_TYPE_TRACE,
            sub_type: wf::TRACE_SUB_TYPE_FROM_ENDPOINT,
        }),
        traffic_direction: wf::TrafficDirection::Egress,
        trace_observation_point: wf::TraceObservationPoint::FromEndpoint,
        is_reply: Some(false),
        interface: Some(wf::NetworkInterface {
            index: 12,
            name: Arc::from("weir1a2b3c"),
        }),
        summary: "TCP Flags: SYN".into(),
        ..Flow::default()
    }
}
