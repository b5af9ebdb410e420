//! Throughput measurement of the flow exporter, for weir-bench: N flows are
//! pushed into a real [`FlowStore`] at an offered rate, the exporter sends
//! them over real OTLP (gRPC or HTTP/protobuf, loopback) to an in-process
//! sink that decodes every request with the official OTLP messages and counts
//! the records, and the report says how many arrived, how many were dropped
//! (and where) and how fast. The sink runs on the same cores as the exporter,
//! so the figure is a lower bound for a remote collector.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use weir_flows::flow::{
    Endpoint, Ip, IpVersion, Layer4, NetworkInterface, Tcp, TcpFlags, Timestamp,
    TraceObservationPoint, TrafficDirection, Verdict, Workload,
};
use weir_flows::{Flow, FlowStore};

use crate::config::{OtelConfig, Protocol};
use crate::exporter::{OtelError, start};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The sink could not listen on loopback.
    #[error("cannot bind the benchmark's OTLP sink")]
    Bind(#[source] std::io::Error),
    /// The exporter refused to start.
    #[error("cannot start the exporter")]
    Start(#[source] OtelError),
    /// The flow producer thread panicked.
    #[error("the flow producer failed")]
    Producer(#[source] tokio::task::JoinError),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Transport.
    pub protocol: Protocol,
    /// Flows to push.
    pub flows: u64,
    /// Offered flows per second; 0 pushes as fast as the producer can.
    pub rate: u64,
    /// Exporter batch size.
    pub batch_size: usize,
    /// Exporter queue bound.
    pub queue: usize,
    /// Bound of the store subscription the exporter reads.
    pub subscription_queue: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Grpc,
            flows: 200_000,
            rate: 100_000,
            batch_size: 512,
            queue: 8192,
            subscription_queue: 8192,
        }
    }
}

/// The outcome.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Transport measured.
    pub protocol: Protocol,
    /// Flows pushed into the store.
    pub offered: u64,
    /// The rate they were pushed at (flows/s, measured).
    pub offered_per_sec: f64,
    /// Records the exporter counted as exported.
    pub exported: u64,
    /// Records the sink decoded (must equal `exported`).
    pub received: u64,
    /// Flows the store's subscription queue dropped.
    pub dropped_subscription: u64,
    /// Records the exporter dropped (every reason).
    pub dropped_exporter: u64,
    /// Export requests sent.
    pub requests: u64,
    /// From the first push until every flow was exported or counted as dropped.
    pub elapsed: Duration,
    /// `exported / elapsed`.
    pub exported_per_sec: f64,
}

impl BenchReport {
    /// Whether every offered flow is accounted for: exported or counted as dropped.
    pub fn accounted(&self) -> bool {
        self.exported + self.dropped_subscription + self.dropped_exporter == self.offered
    }
}

/// A flow shaped like the agent's: TCP between two pods, both sides enriched.
pub fn sample_flow(i: u64, src: &Arc<Endpoint>, dst: &Arc<Endpoint>, node: &Arc<str>) -> Flow {
    Flow {
        time: Some(Timestamp::now()),
        uuid: uuid::Uuid::new_v4(),
        verdict: Verdict::Forwarded,
        ip: Some(Ip {
            source: Some([10, 0, 1, (i % 200) as u8 + 1].into()),
            destination: Some([10, 0, 2, 7].into()),
            ip_version: IpVersion::Ipv4,
            encrypted: false,
        }),
        l4: Some(Layer4::Tcp(Tcp {
            source_port: 30_000 + (i % 30_000) as u32,
            destination_port: 8080,
            flags: Some(TcpFlags {
                syn: true,
                ..TcpFlags::default()
            }),
        })),
        source: Some(Arc::clone(src)),
        destination: Some(Arc::clone(dst)),
        node_name: Arc::clone(node),
        traffic_direction: TrafficDirection::Egress,
        trace_observation_point: TraceObservationPoint::FromEndpoint,
        is_reply: Some(false),
        interface: Some(NetworkInterface {
            index: 7,
            name: "weir0a1b2c".into(),
        }),
        summary: "TCP Flags: SYN".into(),
        ..Flow::default()
    }
}

/// A sample endpoint (`pod` in `ns`, labelled `app=<pod>`).
pub fn sample_endpoint(pod: &str, ns: &str, identity: u32) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        id: identity,
        identity,
        namespace: ns.to_owned(),
        labels: vec![
            format!("k8s:app={pod}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
        ],
        pod_name: pod.to_owned(),
        workloads: vec![Workload {
            name: pod.to_owned(),
            kind: "Deployment".to_owned(),
        }],
        ..Endpoint::default()
    })
}

#[derive(Clone)]
struct CountingSink(Arc<AtomicU64>);

fn count_records(req: &ExportLogsServiceRequest) -> u64 {
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

#[tonic::async_trait]
impl LogsService for CountingSink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0
            .fetch_add(count_records(request.get_ref()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

async fn serve_http(listener: TcpListener, sink: CountingSink) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sink = sink.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sink = sink.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = match ExportLogsServiceRequest::decode(body) {
                        Ok(r) => {
                            sink.0.fetch_add(count_records(&r), Ordering::Relaxed);
                            200
                        }
                        Err(_) => 400,
                    };
                    let resp = ExportLogsServiceResponse::default().encode_to_vec();
                    let mut r = Response::new(Full::new(Bytes::from(resp)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status)
                        .unwrap_or(hyper::StatusCode::BAD_REQUEST);
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn start_sink(protocol: Protocol, sink: CountingSink) -> Result<SocketAddr, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::Bind)?;
    let addr = listener.local_addr().map_err(BenchError::Bind)?;
    match protocol {
        Protocol::Grpc => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(LogsServiceServer::new(sink))
                    .serve_with_incoming(incoming),
            );
        }
        Protocol::HttpProtobuf => {
            tokio::spawn(serve_http(listener, sink));
        }
    }
    Ok(addr)
}

/// Runs one measurement (inside a multi-threaded tokio runtime).
pub async fn run(cfg: BenchConfig) -> Result<BenchReport, BenchError> {
    let received = Arc::new(AtomicU64::new(0));
    let addr = start_sink(cfg.protocol, CountingSink(Arc::clone(&received))).await?;
    let store = FlowStore::new();
    let sub = store.subscribe("otel", cfg.subscription_queue);
    let otel = OtelConfig {
        endpoint: format!("http://{addr}"),
        protocol: cfg.protocol,
        flows: true,
        metrics: false,
        batch_size: cfg.batch_size,
        batch_delay: Duration::from_millis(200),
        queue: cfg.queue,
        timeout: Duration::from_secs(5),
        max_retry_elapsed: Duration::from_secs(5),
        ..OtelConfig::default()
    };
    let handle = start(&otel, "bench-node", Some(sub), None).map_err(BenchError::Start)?;

    let started = Instant::now();
    let producer_store = store.clone();
    let (flows, rate) = (cfg.flows, cfg.rate);
    let pushed_in = tokio::task::spawn_blocking(move || {
        let src = sample_endpoint("client", "default", 1001);
        let dst = sample_endpoint("server", "default", 1002);
        let node: Arc<str> = "bench-node".into();
        let t0 = Instant::now();
        // Paced in 1 ms slices so the offered rate is smooth, not bursty.
        let per_slice = if rate == 0 {
            flows
        } else {
            (rate / 1000).max(1)
        };
        let mut i = 0;
        let mut slice = 0u32;
        while i < flows {
            let end = (i + per_slice).min(flows);
            while i < end {
                producer_store.push(sample_flow(i, &src, &dst, &node));
                i += 1;
            }
            slice += 1;
            if rate > 0 {
                let due = t0 + Duration::from_millis(u64::from(slice));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        t0.elapsed()
    })
    .await
    .map_err(BenchError::Producer)?;

    // Wait until every flow is exported or counted as dropped (bounded).
    let give_up = Instant::now() + Duration::from_secs(30);
    let elapsed = loop {
        let s = handle.stats().logs;
        let lost = sub_dropped(&store);
        if s.exported + s.dropped_total() + lost >= cfg.flows || Instant::now() > give_up {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let dropped_subscription = sub_dropped(&store);
    let stats = handle.shutdown(Duration::from_secs(5)).await.logs;
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(BenchReport {
        protocol: cfg.protocol,
        offered: cfg.flows,
        offered_per_sec: cfg.flows as f64 / pushed_in.as_secs_f64().max(1e-9),
        exported: stats.exported,
        received: received.load(Ordering::Relaxed),
        dropped_subscription,
        dropped_exporter: stats.dropped_total(),
        requests: stats.requests,
        elapsed,
        exported_per_sec: stats.exported as f64 / secs,
    })
}

fn sub_dropped(store: &FlowStore) -> u64 {
    store
        .subscriber_stats()
        .iter()
        .filter(|s| s.name == "otel")
        .map(|s| s.dropped)
        .sum()
}
