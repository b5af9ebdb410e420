//! Figure `decode`: flow events decoded and enriched per second on one core,
//! by `weir_flows::decode::Decoder::decode` against the endpoint index of
//! 1 000 pods built the way the agent builds it (through
//! `weir_state::ClusterState` from Namespace and Pod objects plus CNI
//! endpoint registrations). Baseline, in the same run and thread: the same
//! loop doing only what enrichment cannot avoid, a copy of the event and the
//! two index lookups, so the ratio shows what decoding costs on top.
//! Owns only this measurement; it needs no privileges.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use weir_common::{FlowEvent, emit, family, flag, obs, tcp, verdict};
use weir_flows::Decoder;
use weir_localapi::EndpointRegistration;
use weir_state::{ClusterState, EndpointIndex, Namespace, Object, OwnerReference, Pod};

use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median, round, spread};

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Endpoints (pods) in the index.
    pub endpoints: u32,
    /// Events per timed run.
    pub events: u64,
    /// Timed runs per loop (decode / baseline), alternating.
    pub reps: usize,
    /// Upper bound of one timed run, whatever `events` says.
    pub max_run: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: 1_000,
            events: 3_000_000,
            reps: 3,
            max_run: Duration::from_secs(10),
        }
    }
}

const NODE: &str = "wbench-node";
const NAMESPACES: u32 = 20;
const APPS: u32 = 50;
/// Distinct events cycled through (a power of two).
const EVENTS: usize = 8192;

fn pod_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2)
}

fn pod_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, (i >> 16) as u16, i as u16 + 2)
}

fn host_ifindex(i: u32) -> u32 {
    100 + i
}

/// The cluster of `n` pods in 20 namespaces, 50 Deployments, dual-stack, each
/// pod also a local endpoint registered by the CNI; returns the state and
/// the index the agent would publish.
pub fn cluster(n: u32) -> (ClusterState, EndpointIndex) {
    let mut objects = Vec::new();
    for ns in 0..NAMESPACES {
        let name = format!("ns-{ns}");
        let labels = BTreeMap::from([
            ("kubernetes.io/metadata.name".to_string(), name.clone()),
            ("team".to_string(), format!("team-{}", ns % 7)),
        ]);
        objects.push(Object::Namespace(Namespace {
            name,
            labels,
            annotations: BTreeMap::new(),
        }));
    }
    for i in 0..n {
        let app = format!("app-{}", i % APPS);
        let hash = format!("{:08x}", (i % APPS).wrapping_mul(0x9E37_79B9));
        objects.push(Object::Pod(Pod {
            namespace: format!("ns-{}", i % NAMESPACES),
            name: format!("{app}-{hash}-{i:05}"),
            uid: format!("00000000-0000-4000-8000-{i:012}"),
            labels: BTreeMap::from([
                ("app".to_string(), app.clone()),
                ("tier".to_string(), "backend".to_string()),
                ("pod-template-hash".to_string(), hash.clone()),
            ]),
            annotations: BTreeMap::new(),
            owner: Some(OwnerReference {
                kind: "ReplicaSet".to_string(),
                name: format!("{app}-{hash}"),
            }),
            node_name: NODE.to_string(),
            service_account: "default".to_string(),
            host_network: false,
            pod_ips: vec![IpAddr::V4(pod_v4(i)), IpAddr::V6(pod_v6(i))],
            ports: Vec::new(),
        }));
    }
    let pods: Vec<(String, String, Vec<IpAddr>)> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some((p.namespace.clone(), p.name.clone(), p.pod_ips.clone())),
            _ => None,
        })
        .collect();
    let mut state = ClusterState::new();
    state.set_manifests(objects);
    for (i, (namespace, pod, ips)) in pods.into_iter().enumerate() {
        let i = i as u32;
        state.upsert_endpoint(&EndpointRegistration {
            container_id: format!("wbench{i:06}"),
            ifname: "eth0".to_string(),
            netns: format!("/run/netns/wbench-{i}"),
            namespace,
            pod,
            host_ifname: format!("weir{i:07x}"),
            host_ifindex: host_ifindex(i),
            ips,
            mac: "02:00:00:00:00:01".to_string(),
        });
    }
    let index = state.endpoint_index(NODE);
    (state, index)
}

/// A realistic mix: pod to pod and pod to world, IPv4 and IPv6, TCP / UDP /
/// ICMP, both observation points, the emit reasons of full aggregation and a
/// few drops.
pub fn events(n_endpoints: u32) -> Vec<FlowEvent> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..EVENTS)
        .map(|n| {
            let r = rnd();
            let a = (r % u64::from(n_endpoints)) as u32;
            let b = ((r >> 24) % u64::from(n_endpoints)) as u32;
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
                    Ipv4Addr::new(93, 184, (b >> 8) as u8, b as u8)
                } else {
                    pod_v4(b)
                };
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s[..4].copy_from_slice(&pod_v4(a).octets());
                d[..4].copy_from_slice(&dst.octets());
                (s, d, family::IPV4)
            };
            let (proto, tcp_flags) = match n % 10 {
                0 => (if v6 { 58 } else { 1 }, 0),
                1..=3 => (17, 0),
                4 => (6, tcp::SYN),
                5 => (6, tcp::SYN | tcp::ACK),
                6 => (6, tcp::FIN | tcp::ACK),
                _ => (6, tcp::ACK | tcp::PSH),
            };
            let from = n % 2 == 0;
            let dropped = n % 50 == 0;
            FlowEvent {
                ts_ns: 1_000_000_000 + n as u64 * 1_000,
                first_seen_ns: 999_000_000,
                src_addr: src,
                dst_addr: dst,
                packets: [n as u64 % 100 + 1, n as u64 % 50],
                bytes: [n as u64 * 100, n as u64 * 60],
                ifindex: host_ifindex(if from || world { a } else { b }),
                pkt_len: 64 + (r % 1400) as u32,
                src_port: 30_000 + (r % 30_000) as u16,
                dst_port: [80, 443, 53, 8080][n % 4],
                family: fam,
                proto,
                tcp_flags,
                icmp_type: 8,
                icmp_code: 0,
                obs_point: if from {
                    obs::FROM_ENDPOINT
                } else {
                    obs::TO_ENDPOINT
                },
                emit_reason: [emit::NEW, emit::TCP_FLAG, emit::REPORT, emit::NEW][n % 4],
                verdict: if dropped {
                    verdict::DROPPED
                } else {
                    verdict::FORWARDED
                },
                drop_reason: if dropped { 133 } else { 0 },
                flags: if n % 5 == 0 { flag::REPLY } else { 0 },
                tcp_flags_seen: [tcp::SYN | tcp::ACK, tcp::SYN | tcp::ACK],
                policy_attr: 0,
                _pad: [0; 4],
            }
        })
        .collect()
}

/// The event's two addresses, as enrichment must look them up.
#[inline]
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

/// Runs `f` over the events `n` times (or until `max` elapses, checked every
/// batch); returns events per second.
fn rate(evs: &[FlowEvent], n: u64, max: Duration, mut f: impl FnMut(&FlowEvent)) -> (f64, u64) {
    let t = Instant::now();
    let mut done = 0u64;
    'outer: while done < n {
        for ev in evs {
            f(ev);
        }
        done += evs.len() as u64;
        if t.elapsed() >= max {
            break 'outer;
        }
    }
    (done as f64 / t.elapsed().as_secs_f64(), done)
}

pub fn run(opts: &Options) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.endpoints == 0 || opts.endpoints > 60_000 || opts.reps == 0 {
        bail!("decode: --endpoints must be 1..=60000 and --reps positive");
    }
    let build = Instant::now();
    let (state, index) = cluster(opts.endpoints);
    let build_ms = build.elapsed().as_secs_f64() * 1e3;
    if index.len() != 2 * opts.endpoints as usize {
        bail!(
            "the index has {} addresses, expected {}",
            index.len(),
            2 * opts.endpoints
        );
    }
    let evs = events(opts.endpoints);
    let mut decoder = Decoder::new(NODE);
    for ep in state.endpoints() {
        decoder.set_interface_name(ep.host_ifindex, &ep.host_ifname);
    }
    // Warm-up: the decoder's endpoint cache fills, the code and data get hot.
    let mut enriched = 0u64;
    for ev in &evs {
        let f = decoder.decode(ev, &index);
        enriched += u64::from(f.source.as_ref().is_some_and(|e| !e.pod_name.is_empty()));
    }
    if enriched == 0 {
        bail!("no decoded flow carried a pod name: enrichment is not happening");
    }

    let mut decode_rates = Vec::new();
    let mut base_rates = Vec::new();
    let mut events_total = 0u64;
    for rep in 0..opts.reps {
        for decode_first in [rep % 2 == 0, rep % 2 != 0] {
            if decode_first {
                let (r, n) = rate(&evs, opts.events, opts.max_run, |ev| {
                    black_box(decoder.decode(black_box(ev), &index));
                });
                decode_rates.push(r);
                events_total += n;
            } else {
                let (r, n) = rate(&evs, opts.events, opts.max_run, |ev| {
                    let copy = *black_box(ev);
                    let (s, d) = addrs(&copy);
                    black_box((index.lookup(&s), index.lookup(&d), copy));
                });
                base_rates.push(r);
                events_total += n;
            }
        }
    }
    let (decode, base) = (median(&decode_rates), median(&base_rates));
    let mut report = Report::new(
        "decode",
        Quantity::new(
            "events/s: copy the event + the two endpoint-index lookups (median)",
            base.round(),
            "events/s",
        ),
        Quantity::new(
            "events/s: Decoder::decode (decode + enrich into a Flow, dropped after) (median)",
            decode.round(),
            "events/s",
        ),
        Target::new(Subject::Measured, Op::AtLeast, 1e6, "events/s"),
        started.elapsed(),
        machine,
    );
    report
        .detail("decode_ns_per_event", round(1e9 / decode, 2))
        .detail("baseline_ns_per_event", round(1e9 / base, 2))
        .detail("endpoints", opts.endpoints)
        .detail("index_addresses", index.len() as u64)
        .detail("index_build_ms", round(build_ms, 2))
        .detail("spread_decode", round(spread(&decode_rates), 2))
        .detail("spread_baseline", round(spread(&base_rates), 2))
        .detail(
            "decode_runs",
            json!(decode_rates.iter().map(|r| r.round()).collect::<Vec<_>>()),
        )
        .detail(
            "baseline_runs",
            json!(base_rates.iter().map(|r| r.round()).collect::<Vec<_>>()),
        )
        .detail("events_processed", events_total)
        .note("single thread; the ratio is decode rate / baseline rate, so it is below 1 and says how many times more a decoded event costs than the bare lookups")
        .note("the target (1M events/s) is on the absolute decode rate");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_indexes_every_pod_as_a_local_endpoint() {
        let (state, index) = cluster(100);
        assert_eq!(state.endpoints().len(), 100);
        assert_eq!(index.len(), 200);
        let meta = index
            .lookup(&IpAddr::V4(pod_v4(7)))
            .expect("pod 7 is indexed");
        assert_ne!(meta.endpoint_id, 0, "a local endpoint carries its id");
        assert_eq!(meta.namespace, "ns-7");
        assert!(meta.labels.iter().any(|l| l == "k8s:app=app-7"));
        assert_eq!(meta.workload, "app-7");
        assert_eq!(meta.node_name, NODE);
    }

    #[test]
    fn decoded_events_are_enriched_from_the_index() {
        let (_, index) = cluster(100);
        let evs = events(100);
        let mut dec = Decoder::new(NODE);
        let world = evs.iter().filter(|e| {
            let (_, d) = addrs(e);
            index.lookup(&d).is_none()
        });
        assert!(world.count() > 0, "the mix has world destinations");
        for ev in evs.iter().take(64) {
            let f = dec.decode(ev, &index);
            let src = f.source.expect("every event has a source");
            assert!(!src.pod_name.is_empty(), "sources are pods");
        }
    }
}
