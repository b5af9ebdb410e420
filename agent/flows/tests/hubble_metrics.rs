//! Hubble-compatible metrics: every family counted from constructed flows and
//! checked by exact value in the text exposition; the option grammar and its
//! errors; contexts; the series cap.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use prometheus::{Registry, TextEncoder};
use weir_flows::flow::{
    CiliumEventType, DropReason, EVENT_TYPE_DROP, EVENT_TYPE_TRACE, Endpoint, Flow, FlowType, Icmp,
    Ip, IpVersion, Layer4, TRACE_SUB_TYPE_FROM_ENDPOINT, TRACE_SUB_TYPE_TO_ENDPOINT, Tcp, TcpFlags,
    TraceObservationPoint, TrafficDirection, Udp, Verdict, Workload,
};
use weir_flows::hubble_metrics::{
    ContextId, ContextLabel, DEFAULT_METRICS, DEFAULT_SERIES_LIMIT, HubbleMetrics,
    HubbleMetricsError, MetricKind, MetricSpec, bench, default_specs, parse, parse_entry,
};

// ---------------------------------------------------------------- helpers

fn text(registry: &Registry) -> String {
    let mut out = String::new();
    TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .expect("encode");
    out
}

/// `series -> value` of every sample line.
fn samples(registry: &Registry) -> HashMap<String, f64> {
    text(registry)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (s, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                s.to_owned(),
                v.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

/// The value of one series; panics listing the family's series if absent.
#[track_caller]
fn value(s: &HashMap<String, f64>, series: &str) -> f64 {
    match s.get(series) {
        Some(v) => *v,
        None => {
            let family = series.split('{').next().unwrap_or(series);
            let mut have: Vec<&String> = s.keys().filter(|k| k.starts_with(family)).collect();
            have.sort();
            panic!("no series {series}; {family} has {have:#?}")
        }
    }
}

/// Number of series of a family.
fn count(s: &HashMap<String, f64>, family: &str) -> usize {
    s.keys()
        .filter(|k| k.split('{').next() == Some(family))
        .count()
}

fn metrics(entries: &[&str], limit: usize) -> (Registry, HubbleMetrics) {
    let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    let specs = parse(&entries).expect("valid entries");
    let registry = Registry::new();
    let m = HubbleMetrics::new(&registry, &specs, limit).expect("register");
    (registry, m)
}

fn pod(ns: &str, name: &str, app: &str, identity: u32) -> Arc<Endpoint> {
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
}

fn client() -> Arc<Endpoint> {
    pod("shop", "client-7d9f8b6c5-x2x4z", "client", 1001)
}

fn server() -> Arc<Endpoint> {
    pod("shop", "server-5c6d7e8f9-abcde", "server", 1002)
}

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 7);

/// A forwarded trace flow client -> server seen leaving the client, not a reply.
fn flow(l4: Layer4) -> Flow {
    Flow {
        verdict: Verdict::Forwarded,
        ip: Some(Ip {
            source: Some(IpAddr::V4(A)),
            destination: Some(IpAddr::V4(B)),
            ip_version: IpVersion::Ipv4,
            encrypted: false,
        }),
        l4: Some(l4),
        source: Some(client()),
        destination: Some(server()),
        r#type: FlowType::L3L4,
        event_type: Some(CiliumEventType {
            r#type: EVENT_TYPE_TRACE,
            sub_type: TRACE_SUB_TYPE_FROM_ENDPOINT,
        }),
        trace_observation_point: TraceObservationPoint::FromEndpoint,
        traffic_direction: TrafficDirection::Egress,
        is_reply: Some(false),
        ..Flow::default()
    }
}

fn tcp(dport: u32, flags: TcpFlags) -> Layer4 {
    Layer4::Tcp(Tcp {
        source_port: 40000,
        destination_port: dport,
        flags: Some(flags),
    })
}

fn udp(dport: u32) -> Layer4 {
    Layer4::Udp(Udp {
        source_port: 40000,
        destination_port: dport,
    })
}

const SYN: TcpFlags = TcpFlags {
    fin: false,
    syn: true,
    rst: false,
    psh: false,
    ack: false,
    urg: false,
    ece: false,
    cwr: false,
    ns: false,
};

fn flags(f: impl FnOnce(&mut TcpFlags)) -> TcpFlags {
    let mut t = TcpFlags::default();
    f(&mut t);
    t
}

fn reply(mut f: Flow) -> Flow {
    f.is_reply = Some(true);
    std::mem::swap(&mut f.source, &mut f.destination);
    f.traffic_direction = TrafficDirection::Ingress;
    f
}

fn dropped(mut f: Flow, reason: DropReason) -> Flow {
    f.verdict = Verdict::Dropped;
    f.drop_reason_desc = reason;
    f.event_type = Some(CiliumEventType {
        r#type: EVENT_TYPE_DROP,
        sub_type: reason as i32,
    });
    f
}

fn to_world(mut f: Flow) -> Flow {
    f.destination = Some(Arc::new(Endpoint::world()));
    f.ip.as_mut().unwrap().destination = Some(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)));
    f
}

fn policy_verdict(mut f: Flow, verdict: Verdict, dir: TrafficDirection) -> Flow {
    f.verdict = verdict;
    f.traffic_direction = dir;
    f.event_type = Some(CiliumEventType {
        r#type: 5,
        sub_type: 0,
    });
    f
}

// ---------------------------------------------------------------- families

#[test]
fn flow_family_counts_type_subtype_verdict_protocol() {
    let (r, m) = metrics(&["flow"], 100);
    for _ in 0..3 {
        m.observe(&flow(tcp(80, SYN)));
    }
    let mut to_ep = flow(udp(53));
    to_ep.event_type = Some(CiliumEventType {
        r#type: EVENT_TYPE_TRACE,
        sub_type: TRACE_SUB_TYPE_TO_ENDPOINT,
    });
    m.observe(&to_ep);
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    let mut unknown = flow(tcp(80, SYN));
    unknown.event_type = Some(CiliumEventType {
        r#type: 42,
        sub_type: 0,
    });
    m.observe(&unknown);
    let mut no_event = flow(tcp(80, SYN));
    no_event.event_type = None;
    m.observe(&no_event);
    let mut no_l4 = flow(tcp(80, SYN));
    no_l4.l4 = None;
    m.observe(&no_l4);
    m.observe(&policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Forwarded,
        TrafficDirection::Egress,
    ));

    let s = samples(&r);
    let f = "hubble_flows_processed_total";
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="TCP",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}}"#
            )
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="UDP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"}}"#
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{protocol="TCP",subtype="",type="Drop",verdict="DROPPED"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="Unknown flow",subtype="42",type="Unknown",verdict="FORWARDED"}}"#
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="Unknown flow",subtype="0",type="Unknown",verdict="FORWARDED"}}"#
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="Unknown L4",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}}"#
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                r#"{f}{{protocol="TCP",subtype="",type="PolicyVerdict",verdict="FORWARDED"}}"#
            )
        ),
        1.0
    );
    assert_eq!(count(&s, f), 7);
    assert_eq!(m.series(MetricKind::Flow), Some(7));
}

#[test]
fn drop_family_counts_only_drops_by_reason_and_protocol() {
    let (r, m) = metrics(&["drop"], 100);
    m.observe(&flow(tcp(80, SYN)));
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    m.observe(&dropped(flow(udp(53)), DropReason::CtMapInsertionFailed));
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            r#"hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_drop_total{protocol="UDP",reason="CT_MAP_INSERTION_FAILED"}"#
        ),
        1.0
    );
    assert_eq!(count(&s, "hubble_drop_total"), 2);
}

#[test]
fn tcp_family_counts_fin_syn_synack_rst_including_replies() {
    let (r, m) = metrics(&["tcp"], 100);
    m.observe(&flow(tcp(80, SYN)));
    // The SYN-ACK is a reply: Hubble counts flags regardless of direction.
    m.observe(&reply(flow(tcp(
        80,
        flags(|f| {
            f.syn = true;
            f.ack = true;
        }),
    ))));
    m.observe(&flow(tcp(
        80,
        flags(|f| {
            f.fin = true;
            f.ack = true;
        }),
    )));
    m.observe(&flow(tcp(80, flags(|f| f.rst = true))));
    // Plain ACK: no counted flag.
    m.observe(&flow(tcp(80, flags(|f| f.ack = true))));
    // Dropped SYN: not counted (forwarded / redirected only).
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    // FIN+SYN+RST in one packet: three counts.
    m.observe(&flow(tcp(
        80,
        flags(|f| {
            f.fin = true;
            f.syn = true;
            f.rst = true;
        }),
    )));
    let mut v6 = flow(tcp(80, SYN));
    let ip = v6.ip.as_mut().unwrap();
    ip.source = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    ip.destination = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    ip.ip_version = IpVersion::Ipv6;
    m.observe(&v6);
    // No flags at all (None): not counted.
    m.observe(&flow(Layer4::Tcp(Tcp {
        source_port: 1,
        destination_port: 2,
        flags: None,
    })));

    let s = samples(&r);
    let f = "hubble_tcp_flags_total";
    assert_eq!(
        value(&s, &format!(r#"{f}{{family="IPv4",flag="SYN"}}"#)),
        2.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{family="IPv4",flag="SYN-ACK"}}"#)),
        1.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{family="IPv4",flag="FIN"}}"#)),
        2.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{family="IPv4",flag="RST"}}"#)),
        2.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{family="IPv6",flag="SYN"}}"#)),
        1.0
    );
    assert_eq!(count(&s, f), 5);
}

#[test]
fn port_distribution_counts_destination_ports_of_known_non_replies() {
    let (r, m) = metrics(&["port-distribution"], 100);
    m.observe(&flow(tcp(80, SYN)));
    m.observe(&flow(tcp(80, flags(|f| f.ack = true))));
    m.observe(&flow(udp(53)));
    // A reply's destination port is the client's ephemeral port: not counted.
    m.observe(&reply(flow(tcp(40000, SYN))));
    // Unknown reply state: not counted either.
    let mut unknown = flow(tcp(8080, SYN));
    unknown.is_reply = None;
    m.observe(&unknown);
    // Drops are not counted.
    m.observe(&dropped(flow(tcp(9090, SYN)), DropReason::PolicyDenied));
    // ICMP counts as port 0.
    m.observe(&flow(Layer4::Icmpv4(Icmp { r#type: 8, code: 0 })));
    m.observe(&flow(Layer4::Sctp(Udp {
        source_port: 1,
        destination_port: 3868,
    })));
    let mut redirected = flow(tcp(443, SYN));
    redirected.verdict = Verdict::Redirected;
    m.observe(&redirected);

    let s = samples(&r);
    let f = "hubble_port_distribution_total";
    assert_eq!(
        value(&s, &format!(r#"{f}{{port="80",protocol="TCP"}}"#)),
        2.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{port="53",protocol="UDP"}}"#)),
        1.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{port="0",protocol="ICMPv4"}}"#)),
        1.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{port="3868",protocol="SCTP"}}"#)),
        1.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{port="443",protocol="TCP"}}"#)),
        1.0
    );
    assert_eq!(count(&s, f), 5);
}

#[test]
fn icmp_family_uses_gopacket_type_names() {
    let (r, m) = metrics(&["icmp"], 100);
    let v4 = |t, c| flow(Layer4::Icmpv4(Icmp { r#type: t, code: c }));
    let v6 = |t, c| flow(Layer4::Icmpv6(Icmp { r#type: t, code: c }));
    m.observe(&v4(8, 0));
    m.observe(&v4(8, 0));
    m.observe(&v4(0, 0));
    m.observe(&v4(3, 3));
    m.observe(&v4(3, 99));
    m.observe(&v4(11, 0));
    m.observe(&v4(8, 1));
    m.observe(&v4(200, 1));
    m.observe(&v6(128, 0));
    m.observe(&v6(1, 4));
    m.observe(&v6(135, 0));
    // Dropped ICMP is counted too (Hubble has no verdict filter here).
    m.observe(&dropped(v4(8, 0), DropReason::PolicyDenied));
    m.observe(&flow(tcp(80, SYN)));

    let s = samples(&r);
    let f = "hubble_icmp_total";
    for (series, want) in [
        (r#"{family="IPv4",type="EchoRequest"}"#, 3.0),
        (r#"{family="IPv4",type="EchoReply"}"#, 1.0),
        (
            r#"{family="IPv4",type="DestinationUnreachable(Port)"}"#,
            1.0,
        ),
        (
            r#"{family="IPv4",type="DestinationUnreachable(Code: 99)"}"#,
            1.0,
        ),
        (r#"{family="IPv4",type="TimeExceeded(TTLExceeded)"}"#, 1.0),
        (r#"{family="IPv4",type="EchoRequest(Code: 1)"}"#, 1.0),
        (r#"{family="IPv4",type="200(1)"}"#, 1.0),
        (r#"{family="IPv6",type="EchoRequest"}"#, 1.0),
        (
            r#"{family="IPv6",type="DestinationUnreachable(PortUnreachable)"}"#,
            1.0,
        ),
        (r#"{family="IPv6",type="NeighborSolicitation"}"#, 1.0),
    ] {
        assert_eq!(value(&s, &format!("{f}{series}")), want, "{series}");
    }
    assert_eq!(count(&s, f), 10);
}

#[test]
fn policy_family_counts_policy_verdict_events_only() {
    let (r, m) = metrics(&["policy"], 100);
    // Trace and drop flows count nothing: only the policy-verdict events the
    // decoder adds beside a decision (Decoder::policy_verdict) do.
    m.observe(&flow(tcp(80, SYN)));
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    assert_eq!(count(&samples(&r), "hubble_policy_verdicts_total"), 0);
    assert!(
        text(&r).contains(
            "weir_metrics_series_dropped_total{family=\"hubble_policy_verdicts_total\"} 0"
        )
    );

    m.observe(&policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Dropped,
        TrafficDirection::Ingress,
    ));
    m.observe(&policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Dropped,
        TrafficDirection::Ingress,
    ));
    m.observe(&policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Forwarded,
        TrafficDirection::Egress,
    ));
    // From the host identity: ignored, as Hubble.
    let mut host = policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Forwarded,
        TrafficDirection::Ingress,
    );
    host.source = Some(Arc::new(Endpoint {
        identity: 1,
        labels: vec!["reserved:host".into()],
        ..Endpoint::default()
    }));
    m.observe(&host);

    let s = samples(&r);
    let f = "hubble_policy_verdicts_total";
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{action="dropped",direction="ingress",match="none"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{action="forwarded",direction="egress",match="none"}}"#)
        ),
        1.0
    );
    assert_eq!(count(&s, f), 2);
}

#[test]
fn flows_to_world_default_options() {
    let (r, m) = metrics(&["flows-to-world"], 100);
    m.observe(&to_world(flow(tcp(443, SYN))));
    m.observe(&to_world(flow(tcp(443, flags(|f| f.ack = true)))));
    m.observe(&to_world(flow(udp(53))));
    // Not to the world.
    m.observe(&flow(tcp(443, SYN)));
    // A forwarded reply towards the world: skipped.
    let mut rep = to_world(flow(tcp(40000, SYN)));
    rep.is_reply = Some(true);
    m.observe(&rep);
    // Policy drops count, other drops do not (without any-drop).
    m.observe(&to_world(dropped(
        flow(tcp(443, SYN)),
        DropReason::PolicyDenied,
    )));
    m.observe(&to_world(dropped(
        flow(tcp(443, SYN)),
        DropReason::CtMapInsertionFailed,
    )));
    // No L4: skipped.
    let mut no_l4 = to_world(flow(tcp(443, SYN)));
    no_l4.l4 = None;
    m.observe(&no_l4);

    let s = samples(&r);
    let f = "hubble_flows_to_world_total";
    assert_eq!(
        value(&s, &format!(r#"{f}{{protocol="TCP",verdict="FORWARDED"}}"#)),
        2.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{protocol="UDP",verdict="FORWARDED"}}"#)),
        1.0
    );
    assert_eq!(
        value(&s, &format!(r#"{f}{{protocol="TCP",verdict="DROPPED"}}"#)),
        1.0
    );
    assert_eq!(count(&s, f), 3);
}

#[test]
fn flows_to_world_any_drop_port_syn_only() {
    let (r, m) = metrics(&["flows-to-world:any-drop;port;syn-only"], 100);
    m.observe(&to_world(flow(tcp(443, SYN))));
    m.observe(&to_world(flow(tcp(443, SYN))));
    // syn-only: an ACK and a UDP flow are not counted.
    m.observe(&to_world(flow(tcp(443, flags(|f| f.ack = true)))));
    m.observe(&to_world(flow(udp(53))));
    // any-drop: a non-policy drop of a SYN counts.
    m.observe(&to_world(dropped(
        flow(tcp(80, SYN)),
        DropReason::CtMapInsertionFailed,
    )));

    let s = samples(&r);
    let f = "hubble_flows_to_world_total";
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{port="443",protocol="TCP",verdict="FORWARDED"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{port="80",protocol="TCP",verdict="DROPPED"}}"#)
        ),
        1.0
    );
    assert_eq!(count(&s, f), 2);

    // port without syn-only: port-less protocols get an empty port.
    let (r, m) = metrics(&["flows-to-world:port"], 100);
    m.observe(&to_world(flow(Layer4::Icmpv4(Icmp { r#type: 8, code: 0 }))));
    m.observe(&to_world(flow(udp(53))));
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{port="",protocol="ICMPv4",verdict="FORWARDED"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"{f}{{port="53",protocol="UDP",verdict="FORWARDED"}}"#)
        ),
        1.0
    );
}

#[test]
fn default_set_feeds_every_family_without_context_labels() {
    let r = Registry::new();
    let m = HubbleMetrics::with_defaults(&r).unwrap();
    for f in bench::sample_flows() {
        m.observe(&f);
    }
    m.observe(&policy_verdict(
        flow(tcp(80, SYN)),
        Verdict::Forwarded,
        TrafficDirection::Egress,
    ));
    let t = text(&r);
    for kind in MetricKind::ALL {
        assert!(
            t.contains(&format!("\n{}{{", kind.family())),
            "{} has no series:\n{t}",
            kind.family()
        );
    }
    for label in ["source", "destination", "pod", "namespace", "workload"] {
        assert!(
            !t.contains(&format!("{label}=")),
            "default set has a {label} label:\n{t}"
        );
    }
    // Every family has its series_dropped counter at 0.
    for kind in MetricKind::ALL {
        assert!(t.contains(&format!(
            "weir_metrics_series_dropped_total{{family=\"{}\"}} 0",
            kind.family()
        )));
    }
}

// ---------------------------------------------------------------- contexts

#[test]
fn source_and_destination_contexts() {
    let (r, m) = metrics(
        &[
            "flow:sourceContext=namespace;destinationContext=pod",
            "drop:sourceContext=workload;destinationContext=identity",
            "tcp:sourceContext=workload-name;destinationContext=pod-name",
            "icmp:sourceContext=app;destinationContext=ip",
            "port-distribution:sourceContext=pod-short;destinationContext=reserved-identity|ip",
        ],
        100,
    );
    m.observe(&flow(tcp(80, SYN)));
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    m.observe(&flow(Layer4::Icmpv4(Icmp { r#type: 8, code: 0 })));
    m.observe(&to_world(flow(udp(53))));
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            r#"hubble_flows_processed_total{destination="shop/server-5c6d7e8f9-abcde",protocol="TCP",source="shop",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_drop_total{destination="k8s:app=server,k8s:io.kubernetes.pod.namespace=shop",protocol="TCP",reason="POLICY_DENIED",source="shop/client"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_tcp_flags_total{destination="server-5c6d7e8f9-abcde",family="IPv4",flag="SYN",source="client"}"#
        ),
        // The dropped SYN is not counted by tcp.
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_icmp_total{destination="10.0.2.7",family="IPv4",source="client",type="EchoRequest"}"#
        ),
        1.0
    );
    // reserved-identity first: the pod has none, so the address is used; the
    // world has reserved:world.
    assert_eq!(
        value(
            &s,
            r#"hubble_port_distribution_total{destination="10.0.2.7",port="80",protocol="TCP",source="shop/client"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_port_distribution_total{destination="reserved:world",port="53",protocol="UDP",source="shop/client"}"#
        ),
        1.0
    );
}

#[test]
fn first_non_empty_context_and_missing_endpoints() {
    let (r, m) = metrics(
        &["flow:sourceContext=pod|ip;destinationContext=namespace"],
        100,
    );
    let mut f = to_world(flow(tcp(443, SYN)));
    f.source = None;
    m.observe(&f);
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            r#"hubble_flows_processed_total{destination="",protocol="TCP",source="10.0.1.5",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}"#
        ),
        1.0
    );
}

#[test]
fn labels_context_in_hubble_order() {
    let (r, m) = metrics(
        &[
            "drop:labelsContext=traffic_direction,destination_workload_kind,source_app,destination_workload,source_namespace,source_pod,source_ip,destination_ip,destination_namespace,destination_pod,source_workload,source_workload_kind,destination_app",
        ],
        100,
    );
    m.observe(&dropped(flow(tcp(80, SYN)), DropReason::PolicyDenied));
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            r#"hubble_drop_total{destination_app="server",destination_ip="10.0.2.7",destination_namespace="shop",destination_pod="server-5c6d7e8f9-abcde",destination_workload="server",destination_workload_kind="Deployment",protocol="TCP",reason="POLICY_DENIED",source_app="client",source_ip="10.0.1.5",source_namespace="shop",source_pod="client-7d9f8b6c5-x2x4z",source_workload="client",source_workload_kind="Deployment",traffic_direction="egress"}"#
        ),
        1.0
    );
    // The spec keeps Hubble's label order whatever the order written.
    let spec = parse_entry("drop:labelsContext=traffic_direction,source_ip,source_ip").unwrap();
    assert_eq!(
        spec.context.labels,
        vec![ContextLabel::SourceIp, ContextLabel::TrafficDirection]
    );
}

#[test]
fn directional_contexts_override_for_their_direction() {
    let (r, m) = metrics(
        &[
            "flow:sourceContext=namespace;sourceEgressContext=pod;destinationContext=namespace;destinationIngressContext=pod-name",
        ],
        100,
    );
    // Egress: the source uses `pod`, the destination the plain `namespace`.
    m.observe(&flow(tcp(80, SYN)));
    // Ingress (the reply): source plain, destination `pod-name`.
    m.observe(&reply(flow(tcp(80, SYN))));
    let s = samples(&r);
    assert_eq!(
        value(
            &s,
            r#"hubble_flows_processed_total{destination="shop",protocol="TCP",source="shop/client-7d9f8b6c5-x2x4z",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"hubble_flows_processed_total{destination="client-7d9f8b6c5-x2x4z",protocol="TCP",source="shop",subtype="from-endpoint",type="Trace",verdict="FORWARDED"}"#
        ),
        1.0
    );
}

// ---------------------------------------------------------------- cap

#[test]
fn series_cap_counts_overflow_and_keeps_existing_series() {
    let (r, m) = metrics(&["port-distribution", "flow:sourceContext=pod"], 3);
    for _round in 0..2 {
        for port in 1..=5 {
            m.observe(&flow(tcp(port, SYN)));
        }
    }
    // Five more flows from different pods: contexts hit the cap as well.
    for i in 0..5 {
        let mut f = flow(tcp(1, SYN));
        f.source = Some(pod("shop", &format!("p{i}"), "x", 2000 + i));
        m.observe(&f);
    }
    let s = samples(&r);
    let pd = "hubble_port_distribution_total";
    assert_eq!(count(&s, pd), 3);
    for port in 1..=3 {
        let want = if port == 1 { 7.0 } else { 2.0 };
        assert_eq!(
            value(&s, &format!(r#"{pd}{{port="{port}",protocol="TCP"}}"#)),
            want
        );
    }
    // Ports 4 and 5, twice each.
    assert_eq!(
        value(
            &s,
            &format!(r#"weir_metrics_series_dropped_total{{family="{pd}"}}"#)
        ),
        4.0
    );
    let fl = "hubble_flows_processed_total";
    assert_eq!(count(&s, fl), 3);
    // 10 flows from the client (one series) + 2 of the 5 new pods fit; 3 do not.
    assert_eq!(
        value(
            &s,
            &format!(r#"weir_metrics_series_dropped_total{{family="{fl}"}}"#)
        ),
        3.0
    );
    assert_eq!(m.series(MetricKind::PortDistribution), Some(3));
    assert_eq!(m.series(MetricKind::Icmp), None);
}

#[test]
fn zero_limit_and_double_registration_are_refused() {
    let r = Registry::new();
    assert!(matches!(
        HubbleMetrics::new(&r, &default_specs(), 0),
        Err(HubbleMetricsError::ZeroSeriesLimit)
    ));
    HubbleMetrics::with_defaults(&r).unwrap();
    let err = HubbleMetrics::with_defaults(&r).unwrap_err();
    assert!(
        matches!(err, HubbleMetricsError::Register { .. }),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

// ---------------------------------------------------------------- grammar

#[test]
fn default_metrics_parse_to_default_specs() {
    let entries: Vec<String> = DEFAULT_METRICS.iter().map(|s| s.to_string()).collect();
    assert_eq!(parse(&entries).unwrap(), default_specs());
    assert_eq!(DEFAULT_SERIES_LIMIT, 10_000);
    for s in default_specs() {
        assert!(s.context.is_empty());
    }
}

#[test]
fn grammar_accepts_hubble_forms() {
    let spec = parse_entry(
        "drop:sourceContext=namespace;destinationContext=pod|workload|identity|ip;labelsContext=source_namespace,destination_namespace",
    )
    .unwrap();
    assert_eq!(spec.kind, MetricKind::Drop);
    assert_eq!(spec.context.source, vec![ContextId::Namespace]);
    assert_eq!(
        spec.context.destination,
        vec![
            ContextId::Pod,
            ContextId::Workload,
            ContextId::Identity,
            ContextId::Ip
        ]
    );
    assert_eq!(
        spec.context.labels,
        vec![
            ContextLabel::SourceNamespace,
            ContextLabel::DestinationNamespace
        ]
    );
    // Keys and context names ignore case; empty segments are skipped.
    let spec = parse_entry("flow:SOURCECONTEXT=Namespace;;").unwrap();
    assert_eq!(spec.context.source, vec![ContextId::Namespace]);
    // Flags, bare or =true.
    let spec = parse_entry("flows-to-world:any-drop;port=true;syn-only").unwrap();
    assert!(spec.any_drop && spec.port && spec.syn_only);
    // Display is canonical and parses back to the same spec.
    for e in [
        "flow",
        "tcp:sourceContext=pod|ip;sourceEgressContext=workload-name;destinationContext=app;labelsContext=source_ip,traffic_direction",
        "flows-to-world:destinationIngressContext=pod;destinationContext=namespace;port",
        "icmp:sourceIngressContext=pod-short;sourceContext=reserved-identity;destinationEgressContext=ip;destinationContext=pod-name",
    ] {
        let spec = parse_entry(e).unwrap();
        let again = parse_entry(&spec.to_string()).unwrap();
        assert_eq!(spec, again, "{e} -> {spec}");
    }
    assert_eq!(
        parse_entry("drop:destinationContext=pod|ip;sourceContext=namespace")
            .unwrap()
            .to_string(),
        "drop:sourceContext=namespace;destinationContext=pod|ip"
    );
    let spec = MetricSpec::new(MetricKind::PortDistribution);
    assert_eq!(spec.to_string(), "port-distribution");
}

#[test]
fn grammar_errors_name_entry_and_option() {
    let err = |e: &str| parse_entry(e).unwrap_err();
    let msg = |e: &str| err(e).to_string();

    assert!(matches!(err(""), HubbleMetricsError::EmptyName { .. }));
    assert!(matches!(
        err(":sourceContext=pod"),
        HubbleMetricsError::EmptyName { .. }
    ));

    let e = err("flows");
    assert!(matches!(&e, HubbleMetricsError::UnknownMetric { name, .. } if name == "flows"));
    assert!(e.to_string().contains("\"flows\""));
    // Names are exact (Hubble's registry is case-sensitive).
    assert!(matches!(
        err("Flow"),
        HubbleMetricsError::UnknownMetric { .. }
    ));

    for l7 in ["dns", "http", "httpV2", "kafka", "dns:query;ignoreAAAA"] {
        assert!(
            matches!(err(l7), HubbleMetricsError::L7Metric { .. }),
            "{l7}"
        );
    }
    assert!(msg("httpV2:exemplars=true").contains("L7"));

    let e = err("drop:sourceContext=namespace;foo=bar");
    assert!(
        matches!(&e, HubbleMetricsError::UnknownOption { option, metric: "drop", .. } if option == "foo")
    );
    assert!(
        e.to_string()
            .contains("drop:sourceContext=namespace;foo=bar")
    );
    assert!(e.to_string().contains("\"foo\""));
    // flows-to-world flags belong to flows-to-world only.
    assert!(matches!(
        err("flow:any-drop"),
        HubbleMetricsError::UnknownOption { .. }
    ));
    assert!(matches!(
        err("drop:port"),
        HubbleMetricsError::UnknownOption { .. }
    ));

    assert!(matches!(
        err("drop:sourceContext=pod;sourcecontext=ip"),
        HubbleMetricsError::DuplicateOption { .. }
    ));
    assert!(matches!(
        err("drop:sourceContext"),
        HubbleMetricsError::MissingValue { .. }
    ));
    assert!(matches!(
        err("drop:destinationContext="),
        HubbleMetricsError::MissingValue { .. }
    ));
    assert!(matches!(
        err("drop:labelsContext="),
        HubbleMetricsError::MissingValue { .. }
    ));
    assert!(matches!(
        err("flows-to-world:port=yes"),
        HubbleMetricsError::FlagValue { .. }
    ));

    let e = err("drop:destinationContext=pod|podname");
    assert!(
        matches!(&e, HubbleMetricsError::UnknownContext { option, value, .. } if option == "destinationContext" && value == "podname")
    );
    assert!(e.to_string().contains("destinationContext"));
    assert!(matches!(
        err("drop:sourceContext=pod||ip"),
        HubbleMetricsError::UnknownContext { .. }
    ));
    let e = err("flow:sourceContext=dns|ip");
    assert!(matches!(e, HubbleMetricsError::DnsContext { .. }));
    assert!(e.to_string().contains("DNS"));
    assert!(matches!(
        err("flow:destinationIngressContext=DNS;destinationContext=ip"),
        HubbleMetricsError::DnsContext { .. }
    ));

    let e = err("tcp:labelsContext=source_namespace,source_node");
    assert!(matches!(&e, HubbleMetricsError::UnknownLabel { label, .. } if label == "source_node"));
    assert!(e.to_string().contains("labelsContext"));
    // Label names are exact.
    assert!(matches!(
        err("tcp:labelsContext=Source_IP"),
        HubbleMetricsError::UnknownLabel { .. }
    ));

    for (entry, option) in [
        ("flow:sourceEgressContext=pod", "sourceEgressContext"),
        ("flow:sourceIngressContext=pod", "sourceIngressContext"),
        (
            "flow:destinationEgressContext=pod",
            "destinationEgressContext",
        ),
        (
            "flow:destinationIngressContext=pod;sourceContext=pod",
            "destinationIngressContext",
        ),
    ] {
        let e = err(entry);
        assert!(
            matches!(&e, HubbleMetricsError::DirectionalContextAlone { option: o, .. } if *o == option),
            "{entry}: {e:?}"
        );
    }

    let entries = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches!(
        parse(&entries(&["flow", "drop", "flow:sourceContext=pod"])),
        Err(HubbleMetricsError::DuplicateMetric { name: "flow", .. })
    ));
    // The first bad entry is reported.
    let e = parse(&entries(&["flow", "tcp:bad", "nope"])).unwrap_err();
    assert!(e.to_string().contains("tcp:bad"), "{e}");
}

// ---------------------------------------------------------------- cost

/// Cost per event with the default set. Run in release for a meaningful
/// figure: `cargo test --release -p weir-flows --test hubble_metrics -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release"]
fn observe_cost_per_event() {
    let iters = 5_000_000;
    let best = (0..5).map(|_| bench::bench_observe(iters)).min().unwrap();
    let ns = best.as_nanos() as f64 / iters as f64;
    eprintln!("hubble metrics, default set: {ns:.1} ns/event");
    let ctx: Vec<MetricSpec> = [
        "flow:sourceContext=namespace;destinationContext=namespace",
        "drop:sourceContext=pod;destinationContext=pod",
        "tcp",
        "port-distribution",
    ]
    .iter()
    .map(|e| parse_entry(e).unwrap())
    .collect();
    let with_ctx = bench::bench_observe_with(&ctx, iters).unwrap();
    eprintln!(
        "hubble metrics, namespace/pod contexts: {:.1} ns/event",
        with_ctx.as_nanos() as f64 / iters as f64
    );
    // Baseline in the same run: the agent's own single-family flow counter.
    let base = weir_flows::Metrics::new().unwrap();
    let flows = bench::sample_flows();
    let start = std::time::Instant::now();
    for i in 0..iters as usize {
        base.observe_flow(std::hint::black_box(&flows[i % flows.len()]));
    }
    let base_ns = start.elapsed().as_nanos() as f64 / iters as f64;
    eprintln!(
        "baseline Metrics::observe_flow: {base_ns:.1} ns/event (ratio {:.1}x)",
        ns / base_ns
    );
    if !cfg!(debug_assertions) {
        assert!(ns <= 100.0, "{ns} ns/event");
    }
}

#[test]
fn bench_helper_runs() {
    assert!(bench::bench_observe(1000) > std::time::Duration::ZERO);
}

#[test]
fn concurrent_observers_never_pass_the_cap() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HubbleMetrics>();
    let (r, m) = metrics(&["port-distribution", "flow:destinationContext=ip"], 50);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let m = &m;
            s.spawn(move || {
                for port in 0..200u32 {
                    let mut f = flow(tcp(port, SYN));
                    f.ip.as_mut().unwrap().destination =
                        Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + port)));
                    m.observe(&f);
                    let _ = t;
                }
            });
        }
    });
    let s = samples(&r);
    for family in [
        "hubble_port_distribution_total",
        "hubble_flows_processed_total",
    ] {
        assert_eq!(count(&s, family), 50, "{family}");
        let counted: f64 = s
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(family))
            .map(|(_, v)| v)
            .sum();
        let dropped = value(
            &s,
            &format!(r#"weir_metrics_series_dropped_total{{family="{family}"}}"#),
        );
        // Every one of the 800 events is either counted or dropped.
        assert_eq!(counted + dropped, 800.0, "{family}");
    }
}

/// The /metrics fast path (series lines rendered once) writes exactly what
/// the registry's encoder writes for the same families: same HELP, TYPE,
/// series and values (series order aside).
#[test]
fn rendered_text_equals_the_registry_encoding() {
    let main = Registry::new();
    let series = Registry::new();
    let specs = weir_flows::hubble_metrics::parse(&[
        "flow".to_string(),
        "drop:labelsContext=source_namespace,source_pod;destinationContext=pod".to_string(),
        "tcp".to_string(),
        "port-distribution:sourceContext=namespace".to_string(),
        "icmp".to_string(),
        "policy".to_string(),
        "flows-to-world:port".to_string(),
    ])
    .unwrap();
    let m = HubbleMetrics::new_split(&main, &series, &specs, 10_000).unwrap();
    for _ in 0..3 {
        for f in weir_flows::hubble_metrics::bench::sample_flows() {
            m.observe(&f);
        }
    }
    let mut rendered = String::new();
    m.render_text(&mut rendered);
    let sorted = |t: &str| {
        let mut v: Vec<String> = t.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    let expected = text(&series);
    assert!(expected.lines().count() > 20, "{expected}");
    assert_eq!(sorted(&rendered), sorted(&expected));
    // The families are not in the main registry; the dropped counter is.
    let main_text = text(&main);
    assert!(!main_text.contains("# TYPE hubble_"), "{main_text}");
    assert!(main_text.contains("weir_metrics_series_dropped_total"));
}
