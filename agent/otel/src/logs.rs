//! Flows as OTLP log records: one `LogRecord` per [`Flow`], the node's
//! `Resource`, and the `ExportLogsServiceRequest` around a batch. Pure
//! conversion; no I/O.
//!
//! Attribute names (see the crate docs for the reasoning):
//!
//! | attribute | value |
//! |---|---|
//! | `source.address`, `destination.address` | IP address text (semconv) |
//! | `source.port`, `destination.port` | int, when the protocol has ports (semconv) |
//! | `network.transport` | `tcp`, `udp`, `sctp`, `icmp` (both ICMP versions) (semconv) |
//! | `network.type` | `ipv4`, `ipv6` (semconv) |
//! | `network.interface.name` | the pod's host-side interface (semconv) |
//! | `k8s.pod.name`, `k8s.namespace.name` | the *observed* endpoint: the local pod on whose interface the flow was seen (source at FROM_ENDPOINT, destination at TO_ENDPOINT) (semconv) |
//! | `weir.source.k8s.pod.name`, `weir.source.k8s.namespace.name`, `weir.source.labels` (string array), `weir.source.identity` (int), `weir.source.workload.name` / `.kind` | the source endpoint; the same under `weir.destination.` |
//! | `weir.flow.verdict` | `FORWARDED`, `DROPPED`, ... (Hubble's enum names) |
//! | `weir.flow.drop_reason` | `POLICY_DENIED`, ... only when dropped |
//! | `weir.flow.traffic_direction` | `INGRESS`, `EGRESS` |
//! | `weir.flow.observation_point` | `TO_ENDPOINT`, `FROM_ENDPOINT`, ... |
//! | `weir.flow.tcp.flags` | string array, e.g. `["SYN","ACK"]` |
//! | `weir.flow.icmp.type`, `weir.flow.icmp.code` | int |
//! | `weir.flow.is_reply` | bool, when known |
//! | `log.record.uid` | the flow's UUID (semconv's unique log record id) |
//!
//! The record's `time_unix_nano` is the flow's time, `event_name` is
//! `weir.flow`, severity is INFO (WARN for DROPPED and ERROR verdicts), and
//! the body is a one-line summary string.

use std::fmt::Write as _;
use std::net::IpAddr;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use weir_flows::Flow;
use weir_flows::flow::{Endpoint, IpVersion, Layer4, TcpFlags, TraceObservationPoint, Verdict};

/// `event_name` of every flow record.
pub const EVENT_NAME: &str = "weir.flow";
/// Instrumentation scope name of flow records and agent metrics.
pub const SCOPE_NAME: &str = "weir";

pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

/// The node's resource: `service.name=weir`, `service.version`,
/// `k8s.node.name`, `host.name` (the kernel's hostname, else the node name).
pub fn node_resource(node_name: &str) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| node_name.to_owned());
    Resource {
        attributes: vec![
            kv_str("service.name", "weir"),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
            kv_str("k8s.node.name", node_name),
            kv_str("host.name", host),
        ],
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// One request carrying `records` under `resource`.
pub fn logs_request(resource: &Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn transport_name(l4: &Layer4) -> &'static str {
    match l4 {
        Layer4::Tcp(_) => "tcp",
        Layer4::Udp(_) => "udp",
        Layer4::Sctp(_) => "sctp",
        Layer4::Icmpv4(_) | Layer4::Icmpv6(_) => "icmp",
        Layer4::Vrrp(_) => "vrrp",
        Layer4::Igmp(_) => "igmp",
    }
}

fn tcp_flag_names(f: &TcpFlags) -> Vec<AnyValue> {
    [
        (f.syn, "SYN"),
        (f.ack, "ACK"),
        (f.rst, "RST"),
        (f.fin, "FIN"),
        (f.psh, "PSH"),
        (f.urg, "URG"),
        (f.ece, "ECE"),
        (f.cwr, "CWR"),
        (f.ns, "NS"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| AnyValue {
        value: Some(Value::StringValue(n.to_owned())),
    })
    .collect()
}

fn endpoint_attributes(prefix: &str, ep: &Endpoint, out: &mut Vec<KeyValue>) {
    let key = |suffix: &str| {
        let mut k = String::with_capacity(prefix.len() + suffix.len());
        k.push_str(prefix);
        k.push_str(suffix);
        k
    };
    if !ep.pod_name.is_empty() {
        out.push(kv_str(&key("k8s.pod.name"), ep.pod_name.as_str()));
    }
    if !ep.namespace.is_empty() {
        out.push(kv_str(&key("k8s.namespace.name"), ep.namespace.as_str()));
    }
    if ep.identity != 0 {
        out.push(kv_int(&key("identity"), i64::from(ep.identity)));
    }
    if !ep.labels.is_empty() {
        let values = ep
            .labels
            .iter()
            .map(|l| AnyValue {
                value: Some(Value::StringValue(l.clone())),
            })
            .collect();
        out.push(kv(&key("labels"), Value::ArrayValue(ArrayValue { values })));
    }
    if let Some(w) = ep.workloads.first() {
        if !w.name.is_empty() {
            out.push(kv_str(&key("workload.name"), w.name.as_str()));
        }
        if !w.kind.is_empty() {
            out.push(kv_str(&key("workload.kind"), w.kind.as_str()));
        }
    }
}

fn fmt_addr(out: &mut String, ip: Option<IpAddr>, port: u16) {
    match ip {
        Some(IpAddr::V6(v6)) if port != 0 => {
            let _ = write!(out, "[{v6}]:{port}");
        }
        Some(ip) if port != 0 => {
            let _ = write!(out, "{ip}:{port}");
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push('?'),
    }
}

/// The body: `FORWARDED 10.0.0.1:40000 -> 10.0.0.2:80 TCP Flags: SYN`.
pub fn summary(flow: &Flow) -> String {
    let mut s = String::with_capacity(96);
    s.push_str(flow.verdict.as_str_name());
    s.push(' ');
    let ip = flow.ip.unwrap_or_default();
    fmt_addr(&mut s, ip.source, flow.source_port());
    s.push_str(" -> ");
    fmt_addr(&mut s, ip.destination, flow.destination_port());
    if !flow.summary.is_empty() {
        s.push(' ');
        s.push_str(&flow.summary);
    } else if let Some(l4) = &flow.l4 {
        s.push(' ');
        s.push_str(l4.protocol_name());
    }
    s
}

/// One flow as a log record (`observed_unix_nanos`: when the exporter took it).
pub fn flow_to_log_record(flow: &Flow, observed_unix_nanos: u64) -> LogRecord {
    let mut a: Vec<KeyValue> = Vec::with_capacity(24);
    let ip = flow.ip.unwrap_or_default();
    let (sport, dport) = flow.l4.as_ref().map_or((0, 0), Layer4::ports);
    let has_ports = matches!(
        flow.l4,
        Some(Layer4::Tcp(_) | Layer4::Udp(_) | Layer4::Sctp(_))
    );
    if let Some(src) = ip.source {
        a.push(kv_str("source.address", src.to_string()));
    }
    if has_ports {
        a.push(kv_int("source.port", i64::from(sport)));
    }
    if let Some(dst) = ip.destination {
        a.push(kv_str("destination.address", dst.to_string()));
    }
    if has_ports {
        a.push(kv_int("destination.port", i64::from(dport)));
    }
    if let Some(l4) = &flow.l4 {
        a.push(kv_str("network.transport", transport_name(l4)));
    }
    match ip.ip_version {
        IpVersion::Ipv4 => a.push(kv_str("network.type", "ipv4")),
        IpVersion::Ipv6 => a.push(kv_str("network.type", "ipv6")),
        IpVersion::IpNotUsed => {}
    }
    if let Some(iface) = &flow.interface
        && !iface.name.is_empty()
    {
        a.push(kv_str("network.interface.name", &*iface.name));
    }
    // The observed endpoint gets the plain semconv k8s names.
    let observed = match flow.trace_observation_point {
        TraceObservationPoint::FromEndpoint => flow.source.as_deref(),
        TraceObservationPoint::ToEndpoint => flow.destination.as_deref(),
        _ => None,
    };
    if let Some(ep) = observed {
        if !ep.pod_name.is_empty() {
            a.push(kv_str("k8s.pod.name", ep.pod_name.as_str()));
        }
        if !ep.namespace.is_empty() {
            a.push(kv_str("k8s.namespace.name", ep.namespace.as_str()));
        }
    }
    if let Some(ep) = &flow.source {
        endpoint_attributes("weir.source.", ep, &mut a);
    }
    if let Some(ep) = &flow.destination {
        endpoint_attributes("weir.destination.", ep, &mut a);
    }
    a.push(kv_str("weir.flow.verdict", flow.verdict.as_str_name()));
    if flow.verdict == Verdict::Dropped {
        a.push(kv_str(
            "weir.flow.drop_reason",
            flow.drop_reason_desc.as_str_name(),
        ));
    }
    a.push(kv_str(
        "weir.flow.traffic_direction",
        flow.traffic_direction.as_str_name(),
    ));
    a.push(kv_str(
        "weir.flow.observation_point",
        flow.trace_observation_point.as_str_name(),
    ));
    match &flow.l4 {
        Some(Layer4::Tcp(t)) => {
            let values = t.flags.as_ref().map(tcp_flag_names).unwrap_or_default();
            a.push(kv(
                "weir.flow.tcp.flags",
                Value::ArrayValue(ArrayValue { values }),
            ));
        }
        Some(Layer4::Icmpv4(i) | Layer4::Icmpv6(i)) => {
            a.push(kv_int("weir.flow.icmp.type", i64::from(i.r#type)));
            a.push(kv_int("weir.flow.icmp.code", i64::from(i.code)));
        }
        _ => {}
    }
    if let Some(r) = flow.is_reply {
        a.push(kv("weir.flow.is_reply", Value::BoolValue(r)));
    }
    if !flow.uuid.is_nil() {
        a.push(kv_str("log.record.uid", flow.uuid.hyphenated().to_string()));
    }

    let (severity, text) = match flow.verdict {
        Verdict::Dropped | Verdict::Error => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let time = flow
        .time
        .map_or(0, |t| u64::try_from(t.unix_nanos()).unwrap_or(0));
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed_unix_nanos,
        severity_number: severity as i32,
        severity_text: text.to_owned(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(summary(flow))),
        }),
        attributes: a,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        event_name: EVENT_NAME.to_owned(),
    }
}
