//! Per-event cost of the flow path: decode + enrich against a realistic
//! index (1 000 endpoints, dual-stack), the flow store push, metrics and JSON
//! encoding. Reports events per second (criterion's `elem/s`) and, at the
//! end, ratios against a baseline measured in the same run: the two bare
//! index lookups every enrichment needs.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use weir_common::{FlowEvent, emit, family, obs, tcp, verdict};
use weir_flows::export::write_flow_json;
use weir_flows::{Decoder, FlowStore, Metrics};
use weir_state::{EndpointIndex, EndpointMeta};

const ENDPOINTS: u32 = 1_000;

fn pod_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn pod_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16 + 1)
}

#[allow(
    clippy::needless_update,
    reason = "EndpointMeta belongs to weir-state and may gain fields"
)]
fn index() -> EndpointIndex {
    let mut idx = EndpointIndex::new();
    for i in 0..ENDPOINTS {
        let ns = format!("ns-{}", i % 20);
        let pod = format!("app-{}-{:05}", i % 50, i);
        let mut labels = vec![
            format!("k8s:app=app-{}", i % 50),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
            format!("k8s:io.cilium.k8s.namespace.labels.team=t{}", i % 7),
            "k8s:tier=backend".to_owned(),
        ];
        labels.sort();
        let meta = Arc::new(EndpointMeta {
            endpoint_id: u64::from(i) + 1,
            identity: 256 + i % 300,
            namespace: ns,
            pod_name: pod,
            labels,
            node_name: "node-1".to_owned(),
            workload: format!("app-{}", i % 50),
            ..EndpointMeta::default()
        });
        idx.insert(IpAddr::V4(pod_v4(i)), Arc::clone(&meta));
        idx.insert(IpAddr::V6(pod_v6(i)), meta);
    }
    idx
}

/// 4 096 events: pod to pod and pod to world, v4 and v6, TCP/UDP/ICMP, both
/// observation points.
fn events() -> Vec<FlowEvent> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..4096)
        .map(|n| {
            let r = rnd();
            let a = (r % u64::from(ENDPOINTS)) as u32;
            let b = ((r >> 20) % u64::from(ENDPOINTS)) as u32;
            let world = n % 8 == 0;
            let v6 = n % 3 == 0;
            let (src, dst, fam) = if v6 {
                let dst = if world {
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, b as u16)
                } else {
                    pod_v6(b)
                };
                (pod_v6(a).octets(), dst.octets(), family::IPV6)
            } else {
                let dst = if world {
                    Ipv4Addr::new(93, 184, 0, b as u8)
                } else {
                    pod_v4(b)
                };
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s[..4].copy_from_slice(&pod_v4(a).octets());
                d[..4].copy_from_slice(&dst.octets());
                (s, d, family::IPV4)
            };
            let proto = match n % 10 {
                0 => {
                    if v6 {
                        58
                    } else {
                        1
                    }
                }
                1..=3 => 17,
                _ => 6,
            };
            FlowEvent {
                ts_ns: 1_000_000_000 + n as u64 * 1_000,
                first_seen_ns: 1_000_000_000,
                src_addr: src,
                dst_addr: dst,
                packets: [n as u64, 1],
                bytes: [n as u64 * 100, 60],
                ifindex: 1,
                pkt_len: 100,
                src_port: 30_000 + (r % 30_000) as u16,
                dst_port: 80,
                family: fam,
                proto,
                tcp_flags: tcp::SYN | if n % 2 == 0 { tcp::ACK } else { 0 },
                icmp_type: 8,
                obs_point: if n % 2 == 0 {
                    obs::FROM_ENDPOINT
                } else {
                    obs::TO_ENDPOINT
                },
                emit_reason: emit::NEW,
                verdict: verdict::FORWARDED,
                ..FlowEvent::default()
            }
        })
        .collect()
}

/// The event's two addresses (what enrichment must look up).
fn addrs(ev: &FlowEvent) -> (IpAddr, IpAddr) {
    if ev.family == family::IPV6 {
        (
            IpAddr::V6(Ipv6Addr::from(ev.src_addr)),
            IpAddr::V6(Ipv6Addr::from(ev.dst_addr)),
        )
    } else {
        let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        (v4(&ev.src_addr), v4(&ev.dst_addr))
    }
}

fn benches(c: &mut Criterion) {
    let idx = index();
    let evs = events();
    let mut g = c.benchmark_group("flow_path");
    g.throughput(Throughput::Elements(1));

    let mut i = 0usize;
    g.bench_function("baseline_two_index_lookups", |b| {
        b.iter(|| {
            let (s, d) = addrs(&evs[i & 4095]);
            i += 1;
            black_box((idx.lookup(&s).is_some(), idx.lookup(&d).is_some()))
        })
    });

    let mut dec = Decoder::new("node-1");
    g.bench_function("uuid", |b| b.iter(|| black_box(dec.next_uuid())));

    let mut i = 0usize;
    g.bench_function("decode_enrich", |b| {
        b.iter(|| {
            let f = dec.decode(&evs[i & 4095], &idx);
            i += 1;
            black_box(f)
        })
    });

    let store = FlowStore::new();
    let _sub = store.subscribe("bench", 1024);
    let mut i = 0usize;
    g.bench_function("decode_enrich_push", |b| {
        b.iter(|| {
            let f = dec.decode(&evs[i & 4095], &idx);
            i += 1;
            black_box(store.push(f))
        })
    });

    let metrics = Metrics::new().expect("metrics");
    let flows: Vec<_> = evs.iter().take(256).map(|e| dec.decode(e, &idx)).collect();
    let mut i = 0usize;
    g.bench_function("metrics_observe_flow", |b| {
        b.iter(|| {
            metrics.observe_flow(&flows[i & 255]);
            i += 1;
        })
    });

    let mut buf = Vec::with_capacity(4096);
    let mut i = 0usize;
    g.bench_function("json_export_line", |b| {
        b.iter(|| {
            buf.clear();
            write_flow_json(&flows[i & 255], &mut buf).expect("json");
            i += 1;
            black_box(buf.len())
        })
    });
    g.finish();
}

/// Events per second of `f` over `n` calls, measured directly.
fn rate(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for k in 0..n / 10 {
        f(k);
    }
    let t = Instant::now();
    for k in 0..n {
        f(k);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn summary() {
    let idx = index();
    let evs = events();
    let n = 2_000_000;
    let base = rate(n, |k| {
        let (s, d) = addrs(&evs[k & 4095]);
        black_box((idx.lookup(&s).is_some(), idx.lookup(&d).is_some()));
    });
    let mut dec = Decoder::new("node-1");
    let decode = rate(n, |k| {
        black_box(dec.decode(&evs[k & 4095], &idx));
    });
    let store = FlowStore::new();
    let _sub = store.subscribe("bench", 1024);
    let push = rate(n, |k| {
        black_box(store.push(dec.decode(&evs[k & 4095], &idx)));
    });
    eprintln!("\nsummary ({ENDPOINTS} endpoints, one core):");
    eprintln!(
        "  baseline (2 index lookups): {:>6.2} M events/s",
        base / 1e6
    );
    eprintln!(
        "  decode + enrich:            {:>6.2} M events/s  ({:.1}x baseline time)",
        decode / 1e6,
        base / decode
    );
    eprintln!(
        "  decode + enrich + push:     {:>6.2} M events/s  ({:.1}x baseline time)",
        push / 1e6,
        base / push
    );
    eprintln!(
        "  target 1 M events/s decode+enrich: {}",
        if decode >= 1e6 { "met" } else { "NOT met" }
    );
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
