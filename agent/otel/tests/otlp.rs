//! weir-otel against a real OTLP receiver (tests/receiver/receiver.py, from
//! the official protos on PyPI), over gRPC and HTTP/protobuf.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Receiver;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Value, json};
use weir_flows::flow::{
    DropReason, Endpoint, Icmp, Ip, IpVersion, Layer4, Tcp, TcpFlags, Timestamp,
    TraceObservationPoint, TrafficDirection, Udp, Verdict,
};
use weir_flows::{Flow, FlowStore};
use weir_otel::{OtelConfig, Protocol, bench};

const BOTH: [Protocol; 2] = [Protocol::Grpc, Protocol::HttpProtobuf];

fn cfg(endpoint: String, protocol: Protocol) -> OtelConfig {
    OtelConfig {
        endpoint,
        protocol,
        flows: true,
        metrics: false,
        batch_size: 100,
        batch_delay: Duration::from_millis(50),
        queue: 1000,
        timeout: Duration::from_secs(5),
        max_retry_elapsed: Duration::from_secs(20),
        ..OtelConfig::default()
    }
}

fn endpoint(pod: &str, ns: &str, identity: u32, labels: &[&str]) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        identity,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: labels.iter().map(|s| (*s).to_owned()).collect(),
        ..Endpoint::default()
    })
}

fn tcp_flow() -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        }),
        uuid: uuid::Uuid::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap(),
        verdict: Verdict::Forwarded,
        ip: Some(Ip {
            source: Some("10.0.1.5".parse().unwrap()),
            destination: Some("10.0.2.7".parse().unwrap()),
            ip_version: IpVersion::Ipv4,
            encrypted: false,
        }),
        l4: Some(Layer4::Tcp(Tcp {
            source_port: 40_000,
            destination_port: 8080,
            flags: Some(TcpFlags {
                syn: true,
                ack: true,
                ..TcpFlags::default()
            }),
        })),
        source: Some(endpoint("client-1", "shop", 1001, &["k8s:app=client"])),
        destination: Some(endpoint("server-1", "backend", 1002, &["k8s:app=server"])),
        traffic_direction: TrafficDirection::Egress,
        trace_observation_point: TraceObservationPoint::FromEndpoint,
        is_reply: Some(false),
        summary: "TCP Flags: SYN, ACK".into(),
        ..Flow::default()
    }
}

fn udp6_flow() -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_001,
            nanos: 0,
        }),
        uuid: uuid::Uuid::new_v4(),
        verdict: Verdict::Forwarded,
        ip: Some(Ip {
            source: Some("fd00::5".parse().unwrap()),
            destination: Some("fd00::7".parse().unwrap()),
            ip_version: IpVersion::Ipv6,
            encrypted: false,
        }),
        l4: Some(Layer4::Udp(Udp {
            source_port: 5353,
            destination_port: 53,
        })),
        source: Some(endpoint("client-1", "shop", 1001, &[])),
        destination: Some(endpoint("dns-0", "kube-system", 1003, &[])),
        traffic_direction: TrafficDirection::Ingress,
        trace_observation_point: TraceObservationPoint::ToEndpoint,
        is_reply: Some(true),
        ..Flow::default()
    }
}

fn icmp_drop_flow() -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_002,
            nanos: 5,
        }),
        uuid: uuid::Uuid::new_v4(),
        verdict: Verdict::Dropped,
        drop_reason_desc: DropReason::PolicyDenied,
        ip: Some(Ip {
            source: Some("192.0.2.1".parse().unwrap()),
            destination: Some("10.0.2.7".parse().unwrap()),
            ip_version: IpVersion::Ipv4,
            encrypted: false,
        }),
        l4: Some(Layer4::Icmpv4(Icmp { r#type: 8, code: 0 })),
        source: Some(Arc::new(Endpoint::world())),
        destination: Some(endpoint("server-1", "backend", 1002, &[])),
        traffic_direction: TrafficDirection::Ingress,
        trace_observation_point: TraceObservationPoint::ToEndpoint,
        ..Flow::default()
    }
}

fn numbered_flow(i: u64) -> Flow {
    let mut f = tcp_flow();
    f.uuid = uuid::Uuid::new_v4();
    f.l4 = Some(Layer4::Tcp(Tcp {
        source_port: 10_000 + i as u32,
        destination_port: 80,
        flags: Some(TcpFlags::default()),
    }));
    f
}

fn by_uid<'a>(records: &'a [Value], uid: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["attributes"]["log.record.uid"] == uid)
        .unwrap_or_else(|| panic!("no record {uid} in {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_arrive_with_semconv_attributes() {
    let Some(rx) = Receiver::start(&[]) else {
        return;
    };
    for protocol in BOTH {
        let store = FlowStore::new();
        let mut c = cfg(rx.endpoint(protocol), protocol);
        c.headers = vec![("x-weir-test".into(), "yes".into())];
        let h = weir_otel::start(&c, "node-a", Some(store.subscribe("otel", 100)), None)
            .expect("start");
        let (t, u, i) = (tcp_flow(), udp6_flow(), icmp_drop_flow());
        store.push(t.clone());
        store.push(u.clone());
        store.push(i.clone());
        let transport = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        };
        rx.wait_until(Duration::from_secs(10), "3 records", |r| {
            r.ok("logs")
                .iter()
                .filter(|l| l["transport"] == transport)
                .flat_map(|l| l["records"].as_array().cloned().unwrap_or_default())
                .count()
                == 3
        })
        .await;
        let stats = h.shutdown(Duration::from_secs(2)).await;
        assert_eq!(stats.logs.exported, 3);
        assert_eq!(stats.logs.dropped_total(), 0);

        let reqs: Vec<Value> = rx
            .ok("logs")
            .into_iter()
            .filter(|l| l["transport"] == transport)
            .collect();
        let res = &reqs[0]["resource"];
        assert_eq!(res["service.name"], "weir");
        assert_eq!(res["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(res["k8s.node.name"], "node-a");
        assert!(res["host.name"].as_str().is_some_and(|h| !h.is_empty()));
        assert_eq!(reqs[0]["scope"], "weir");
        if protocol == Protocol::HttpProtobuf {
            assert_eq!(reqs[0]["headers"]["x-weir-test"], "yes");
            assert_eq!(reqs[0]["headers"]["content-type"], "application/x-protobuf");
        }
        let records: Vec<Value> = reqs
            .iter()
            .flat_map(|l| l["records"].as_array().cloned().unwrap_or_default())
            .collect();

        let r = by_uid(&records, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(r["time_unix_nano"], 1_700_000_000_123_456_789u64);
        assert!(r["observed_time_unix_nano"].as_u64().unwrap() > 1_700_000_000_000_000_000);
        assert_eq!(r["event_name"], "weir.flow");
        assert_eq!(r["severity_number"], 9);
        assert_eq!(r["severity_text"], "INFO");
        assert_eq!(
            r["body"],
            "FORWARDED 10.0.1.5:40000 -> 10.0.2.7:8080 TCP Flags: SYN, ACK"
        );
        let want = json!({
            "source.address": "10.0.1.5",
            "source.port": 40000,
            "destination.address": "10.0.2.7",
            "destination.port": 8080,
            "network.transport": "tcp",
            "network.type": "ipv4",
            "k8s.pod.name": "client-1",
            "k8s.namespace.name": "shop",
            "weir.source.k8s.pod.name": "client-1",
            "weir.source.k8s.namespace.name": "shop",
            "weir.source.identity": 1001,
            "weir.source.labels": ["k8s:app=client"],
            "weir.destination.k8s.pod.name": "server-1",
            "weir.destination.k8s.namespace.name": "backend",
            "weir.destination.identity": 1002,
            "weir.destination.labels": ["k8s:app=server"],
            "weir.flow.verdict": "FORWARDED",
            "weir.flow.traffic_direction": "EGRESS",
            "weir.flow.observation_point": "FROM_ENDPOINT",
            "weir.flow.tcp.flags": ["SYN", "ACK"],
            "weir.flow.is_reply": false,
            "log.record.uid": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        });
        assert_eq!(
            r["attributes"], want,
            "tcp flow attributes over {transport}"
        );

        let r = by_uid(&records, &u.uuid.to_string());
        let a = &r["attributes"];
        assert_eq!(a["source.address"], "fd00::5");
        assert_eq!(a["source.port"], 5353);
        assert_eq!(a["destination.port"], 53);
        assert_eq!(a["network.transport"], "udp");
        assert_eq!(a["network.type"], "ipv6");
        // Observed at TO_ENDPOINT: the destination is the local pod.
        assert_eq!(a["k8s.pod.name"], "dns-0");
        assert_eq!(a["k8s.namespace.name"], "kube-system");
        assert_eq!(a["weir.flow.is_reply"], true);
        assert_eq!(a["weir.flow.traffic_direction"], "INGRESS");
        assert!(a.get("weir.flow.tcp.flags").is_none());
        assert_eq!(r["body"], "FORWARDED [fd00::5]:5353 -> [fd00::7]:53 UDP");
        assert_eq!(r["time_unix_nano"], 1_700_000_001_000_000_000u64);

        let r = by_uid(&records, &i.uuid.to_string());
        let a = &r["attributes"];
        assert_eq!(a["network.transport"], "icmp");
        assert!(a.get("source.port").is_none(), "icmp has no ports: {a}");
        assert_eq!(a["weir.flow.verdict"], "DROPPED");
        assert_eq!(a["weir.flow.drop_reason"], "POLICY_DENIED");
        assert_eq!(a["weir.flow.icmp.type"], 8);
        assert_eq!(a["weir.flow.icmp.code"], 0);
        assert_eq!(a["weir.source.labels"], json!(["reserved:world"]));
        assert_eq!(a["weir.source.identity"], 2);
        assert!(a.get("weir.source.k8s.pod.name").is_none());
        assert!(
            a.get("weir.flow.is_reply").is_none(),
            "unknown is_reply is omitted"
        );
        assert_eq!(r["severity_text"], "WARN");
        assert_eq!(r["severity_number"], 13);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_with_registry_values() {
    let Some(rx) = Receiver::start(&[]) else {
        return;
    };
    let registry = Registry::new();
    let c = IntCounterVec::new(Opts::new("weir_test_events_total", "events"), &["source"]).unwrap();
    let g = IntGauge::new("weir_test_queue_fill", "fill").unwrap();
    let hist = Histogram::with_opts(
        HistogramOpts::new("weir_test_latency_seconds", "lat").buckets(vec![0.01, 0.1]),
    )
    .unwrap();
    registry.register(Box::new(c.clone())).unwrap();
    registry.register(Box::new(g.clone())).unwrap();
    registry.register(Box::new(hist.clone())).unwrap();
    c.with_label_values(&["ring"]).inc_by(41);
    c.with_label_values(&["queue"]).inc_by(7);
    g.set(12);
    hist.observe(0.005);
    hist.observe(0.05);
    hist.observe(5.0);
    for protocol in BOTH {
        let transport = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        };
        let mut cf = cfg(rx.endpoint(protocol), protocol);
        cf.flows = false;
        cf.metrics = true;
        cf.metrics_interval = Duration::from_millis(100);
        let h = weir_otel::start(&cf, "node-m", None, Some(registry.clone())).expect("start");
        rx.wait_until(Duration::from_secs(10), "a metrics export", |r| {
            r.ok("metrics").iter().any(|l| l["transport"] == transport)
        })
        .await;
        let stats = h.shutdown(Duration::from_secs(2)).await;
        assert!(stats.metrics.exported >= 5, "{stats:?}");
        assert_eq!(stats.metrics.dropped_total(), 0);
        let line = rx
            .ok("metrics")
            .into_iter()
            .find(|l| l["transport"] == transport)
            .unwrap();
        assert_eq!(line["resource"]["k8s.node.name"], "node-m");
        let metrics = line["metrics"].as_array().unwrap();
        let m = |name: &str| {
            metrics
                .iter()
                .find(|m| m["name"] == name)
                .unwrap_or_else(|| panic!("{name} missing: {metrics:#?}"))
        };
        let counter = m("weir_test_events_total");
        assert_eq!(counter["type"], "sum");
        assert_eq!(counter["is_monotonic"], true);
        assert_eq!(counter["temporality"], 2, "cumulative");
        assert_eq!(counter["description"], "events");
        // Equal to what the registry reports, label by label.
        for mf in registry.gather() {
            if mf.name() != "weir_test_events_total" {
                continue;
            }
            for pm in mf.get_metric() {
                let label = pm.get_label()[0].value();
                let p = counter["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["attributes"]["source"] == label)
                    .unwrap_or_else(|| panic!("no point for source={label}"));
                assert_eq!(p["value"].as_f64(), Some(pm.get_counter().get_value()));
            }
        }
        let gauge = m("weir_test_queue_fill");
        assert_eq!(gauge["type"], "gauge");
        assert_eq!(gauge["points"][0]["value"], 12.0);
        let hm = m("weir_test_latency_seconds");
        assert_eq!(hm["type"], "histogram");
        assert_eq!(hm["points"][0]["count"], 3);
        assert_eq!(hm["points"][0]["bucket_counts"], json!([1, 1, 1]));
        assert_eq!(hm["points"][0]["explicit_bounds"], json!([0.01, 0.1]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_sends_n_records_in_at_most_ceil_n_over_batch_requests() {
    let Some(rx) = Receiver::start(&[]) else {
        return;
    };
    for protocol in BOTH {
        let transport = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        };
        let store = FlowStore::new();
        let mut c = cfg(rx.endpoint(protocol), protocol);
        c.batch_size = 10;
        c.batch_delay = Duration::from_millis(300);
        let h = weir_otel::start(&c, "n", Some(store.subscribe("otel", 1000)), None).unwrap();
        for i in 0..25 {
            store.push(numbered_flow(i));
        }
        rx.wait_until(Duration::from_secs(10), "25 records", |r| {
            r.ok("logs")
                .iter()
                .filter(|l| l["transport"] == transport)
                .map(|l| l["records"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                == 25
        })
        .await;
        let stats = h.shutdown(Duration::from_secs(2)).await;
        let reqs: Vec<usize> = rx
            .ok("logs")
            .iter()
            .filter(|l| l["transport"] == transport)
            .map(|l| l["records"].as_array().map_or(0, Vec::len))
            .collect();
        assert!(reqs.len() <= 3, "25 records in {reqs:?} requests");
        assert!(reqs.iter().all(|n| *n <= 10), "{reqs:?}");
        assert_eq!(stats.logs.exported, 25);
        assert_eq!(stats.logs.requests, reqs.len() as u64);
    }
}

async fn retry_case(protocol: Protocol, args: &[&str], min_elapsed: Duration) {
    let Some(rx) = Receiver::start(args) else {
        return;
    };
    let store = FlowStore::new();
    let mut c = cfg(rx.endpoint(protocol), protocol);
    c.batch_size = 5;
    let h = weir_otel::start(&c, "n", Some(store.subscribe("otel", 100)), None).unwrap();
    let t0 = Instant::now();
    let flows: Vec<Flow> = (0..5).map(numbered_flow).collect();
    for f in &flows {
        store.push(f.clone());
    }
    rx.wait_until(Duration::from_secs(20), "5 records after retries", |r| {
        r.records().len() >= 5
    })
    .await;
    let elapsed = t0.elapsed();
    let stats = h.shutdown(Duration::from_secs(2)).await;
    let records = rx.records();
    assert_eq!(records.len(), 5, "delivered exactly once");
    for f in &flows {
        by_uid(&records, &f.uuid.to_string());
    }
    let failed = rx
        .lines()
        .iter()
        .filter(|l| l["outcome"] == "failed")
        .count();
    assert_eq!(failed, 3, "{args:?}");
    assert_eq!(stats.logs.retries, 3, "{stats:?}");
    assert_eq!(stats.logs.requests, 4);
    assert_eq!(stats.logs.exported, 5);
    assert_eq!(stats.logs.failed_batches, 0);
    assert!(
        elapsed >= min_elapsed,
        "waited {elapsed:?}, expected >= {min_elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_with_backoff() {
    // 100 + 200 + 400 ms nominal, -25 % jitter.
    retry_case(
        Protocol::Grpc,
        &["--fail-first", "3"],
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried_honouring_retry_after() {
    retry_case(
        Protocol::HttpProtobuf,
        &[
            "--fail-first",
            "3",
            "--http-status",
            "503",
            "--retry-after",
            "1",
        ],
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_honours_retry_info() {
    retry_case(
        Protocol::Grpc,
        &[
            "--fail-first",
            "3",
            "--grpc-code",
            "RESOURCE_EXHAUSTED",
            "--retry-after",
            "1",
        ],
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_is_retried() {
    retry_case(
        Protocol::HttpProtobuf,
        &["--fail-first", "3", "--http-status", "429"],
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_and_partial_success_are_counted_as_rejected() {
    let Some(rx) = Receiver::start(&["--fail-first", "1", "--http-status", "400", "--reject", "2"])
    else {
        return;
    };
    let store = FlowStore::new();
    let mut c = cfg(rx.endpoint(Protocol::HttpProtobuf), Protocol::HttpProtobuf);
    c.batch_size = 4;
    c.batch_delay = Duration::from_secs(5);
    let h = weir_otel::start(&c, "n", Some(store.subscribe("otel", 100)), None).unwrap();
    // First batch: HTTP 400, dropped without retry. Second: accepted, 2 of 4 rejected.
    for i in 0..8 {
        store.push(numbered_flow(i));
    }
    rx.wait_until(Duration::from_secs(10), "the second batch", |r| {
        r.records().len() == 4
    })
    .await;
    let s = h.shutdown(Duration::from_secs(2)).await.logs;
    assert_eq!(s.retries, 0, "400 is not retried: {s:?}");
    assert_eq!(s.failed_batches, 1);
    assert_eq!(s.dropped_rejected, 4 + 2);
    assert_eq!(s.exported, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_without_waiting_for_the_batch_delay() {
    let Some(rx) = Receiver::start(&[]) else {
        return;
    };
    for protocol in BOTH {
        let transport = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        };
        let store = FlowStore::new();
        let mut c = cfg(rx.endpoint(protocol), protocol);
        c.batch_delay = Duration::from_secs(30);
        let h = weir_otel::start(&c, "n", Some(store.subscribe("otel", 100)), None).unwrap();
        for i in 0..7 {
            store.push(numbered_flow(i));
        }
        let t0 = Instant::now();
        let stats = h.shutdown(Duration::from_secs(5)).await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(stats.logs.exported, 7, "{stats:?}");
        let got: usize = rx
            .ok("logs")
            .iter()
            .filter(|l| l["transport"] == transport)
            .map(|l| l["records"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(got, 7);
    }
}

fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn store_drops(store: &FlowStore) -> u64 {
    store
        .subscriber_stats()
        .iter()
        .filter(|s| s.name == "otel")
        .map(|s| s.dropped)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_receiver_bounded_queue_drops_are_counted_and_producer_never_blocks() {
    for protocol in BOTH {
        let store = FlowStore::new();
        let mut c = cfg(dead_endpoint(), protocol);
        c.batch_size = 10;
        c.queue = 100;
        c.max_retry_elapsed = Duration::from_millis(400);
        let h = weir_otel::start(&c, "n", Some(store.subscribe("otel", 50)), None).unwrap();
        const N: u64 = 20_000;
        let mut slowest = Duration::ZERO;
        let mut max_queued = 0;
        let t0 = Instant::now();
        for i in 0..N {
            let p0 = Instant::now();
            store.push(numbered_flow(i));
            slowest = slowest.max(p0.elapsed());
            if i % 100 == 0 {
                max_queued = max_queued.max(h.stats().logs.queued);
                tokio::task::yield_now().await;
            }
        }
        let push_time = t0.elapsed();
        // Let a few batches fail their retries.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        max_queued = max_queued.max(h.stats().logs.queued);
        let s = h.shutdown(Duration::from_millis(300)).await.logs;
        let sub = store_drops(&store);
        // The queue (100) plus the one batch (10) waiting for a send slot.
        assert!(max_queued <= 110, "queue bound exceeded: {max_queued}");
        assert!(
            slowest < Duration::from_millis(50),
            "a push waited {slowest:?} (total {push_time:?})"
        );
        assert_eq!(s.exported, 0);
        assert!(s.dropped_retry_exhausted >= 10, "{s:?}");
        assert!(s.dropped_queue_full > 0 || sub > 0, "{s:?} sub={sub}");
        assert_eq!(
            s.dropped_total() + sub,
            N,
            "every flow accounted for: {s:?}, subscription dropped {sub}"
        );
        assert_eq!(s.subscription_lost, sub);
        assert_eq!(s.queued, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_accounts_for_every_flow() {
    for protocol in BOTH {
        let r = bench::run(bench::BenchConfig {
            protocol,
            flows: 20_000,
            rate: 0,
            ..bench::BenchConfig::default()
        })
        .await
        .expect("bench");
        assert!(r.accounted(), "{r:?}");
        assert_eq!(r.received, r.exported, "{r:?}");
        assert!(r.exported > 0, "{r:?}");
    }
}
