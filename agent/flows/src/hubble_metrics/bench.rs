//! A small benchmark of [`HubbleMetrics::observe`] for weir-bench and tests:
//! a realistic mix of flows counted in a private registry.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;

use crate::flow::{
    CiliumEventType, DropReason, EVENT_TYPE_DROP, EVENT_TYPE_TRACE, Endpoint, Flow, FlowType, Icmp,
    Ip, IpVersion, Layer4, TRACE_SUB_TYPE_FROM_ENDPOINT, TRACE_SUB_TYPE_TO_ENDPOINT, Tcp, TcpFlags,
    TraceObservationPoint, TrafficDirection, Udp, Verdict, Workload,
};

use super::{DEFAULT_SERIES_LIMIT, HubbleMetrics, HubbleMetricsError, MetricSpec, default_specs};

/// The flows the benchmark cycles through: TCP SYN / ACK / reply SYN-ACK,
/// UDP request and reply, ICMP echo, a policy drop and a flow to the world.
pub fn sample_flows() -> Vec<Flow> {
    let pod = |ns: &str, name: &str, app: &str, identity: u32| {
        Arc::new(Endpoint {
            id: identity,
            identity,
            namespace: ns.to_owned(),
            labels: vec![
                format!("k8s:app={app}"),
                format!("k8s:io.kubernetes.pod.namespace={ns}"),
            ],
            pod_name: name.to_owned(),
            workloads: vec![Workload {
                name: app.to_owned(),
                kind: "Deployment".to_owned(),
            }],
            ..Endpoint::default()
        })
    };
    let a = pod("default", "client-7d9f8b-abcde", "client", 1001);
    let b = pod("default", "server-5c6d7e-fghij", "server", 1002);
    let world = Arc::new(Endpoint::world());
    let ip = |s: [u8; 4], d: [u8; 4]| Ip {
        source: Some(IpAddr::V4(Ipv4Addr::from(s))),
        destination: Some(IpAddr::V4(Ipv4Addr::from(d))),
        ip_version: IpVersion::Ipv4,
        encrypted: false,
    };
    let base = |src: &Arc<Endpoint>, dst: &Arc<Endpoint>, l4: Layer4, reply: bool| Flow {
        verdict: Verdict::Forwarded,
        ip: Some(ip([10, 0, 1, 5], [10, 0, 2, 7])),
        l4: Some(l4),
        source: Some(src.clone()),
        destination: Some(dst.clone()),
        r#type: FlowType::L3L4,
        event_type: Some(CiliumEventType {
            r#type: EVENT_TYPE_TRACE,
            sub_type: TRACE_SUB_TYPE_FROM_ENDPOINT,
        }),
        trace_observation_point: TraceObservationPoint::FromEndpoint,
        traffic_direction: TrafficDirection::from_observation(
            TraceObservationPoint::FromEndpoint,
            reply,
        ),
        is_reply: Some(reply),
        ..Flow::default()
    };
    let tcp = |sport, dport, flags: TcpFlags| {
        Layer4::Tcp(Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(flags),
        })
    };
    let syn = TcpFlags {
        syn: true,
        ..TcpFlags::default()
    };
    let ack = TcpFlags {
        ack: true,
        psh: true,
        ..TcpFlags::default()
    };
    let syn_ack = TcpFlags {
        syn: true,
        ack: true,
        ..TcpFlags::default()
    };
    let mut drop = base(&a, &b, tcp(40000, 8080, syn), false);
    drop.verdict = Verdict::Dropped;
    drop.drop_reason_desc = DropReason::PolicyDenied;
    drop.event_type = Some(CiliumEventType {
        r#type: EVENT_TYPE_DROP,
        sub_type: DropReason::PolicyDenied as i32,
    });
    let mut to_b = base(&a, &b, tcp(40000, 80, ack), false);
    to_b.event_type = Some(CiliumEventType {
        r#type: EVENT_TYPE_TRACE,
        sub_type: TRACE_SUB_TYPE_TO_ENDPOINT,
    });
    vec![
        base(&a, &b, tcp(40000, 80, syn), false),
        base(&b, &a, tcp(80, 40000, syn_ack), true),
        to_b,
        base(&a, &b, tcp(40000, 80, ack), false),
        base(
            &a,
            &b,
            Layer4::Udp(Udp {
                source_port: 5353,
                destination_port: 53,
            }),
            false,
        ),
        base(
            &b,
            &a,
            Layer4::Udp(Udp {
                source_port: 53,
                destination_port: 5353,
            }),
            true,
        ),
        base(&a, &b, Layer4::Icmpv4(Icmp { r#type: 8, code: 0 }), false),
        drop,
        base(&a, &world, tcp(40001, 443, syn), false),
    ]
}

/// Counts `iters` flows from [`sample_flows`] (cycling) with `specs` in a
/// fresh registry, after one warm-up pass that creates the series; returns
/// the time of the measured loop (divide by `iters` for the cost per event).
pub fn bench_observe_with(
    specs: &[MetricSpec],
    iters: u64,
) -> Result<Duration, HubbleMetricsError> {
    let registry = Registry::new();
    let metrics = HubbleMetrics::new(&registry, specs, DEFAULT_SERIES_LIMIT)?;
    let flows = sample_flows();
    for f in &flows {
        metrics.observe(f);
    }
    let start = Instant::now();
    let mut i = 0usize;
    for _ in 0..iters {
        metrics.observe(black_box(&flows[i]));
        i += 1;
        if i == flows.len() {
            i = 0;
        }
    }
    Ok(start.elapsed())
}

/// [`bench_observe_with`] for the default metric set.
pub fn bench_observe(iters: u64) -> Duration {
    // The default specs always register in a fresh registry.
    bench_observe_with(&default_specs(), iters).unwrap_or_default()
}
