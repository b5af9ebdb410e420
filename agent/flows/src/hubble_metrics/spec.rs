//! The `--hubble-metrics` entry grammar: `name[:option[;option]...]` where an
//! option is `key=value` or a bare flag, context values are alternatives
//! separated by `|` (the first non-empty one wins) and `labelsContext` is a
//! comma-separated list. Option keys and context names are matched without
//! regard to case, as Hubble does; metric names are matched exactly.
//!
//! Pure parsing: no registry, no flows.

use std::fmt;

use super::HubbleMetricsError;

/// A Hubble metric family Weir can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// `flow`: `hubble_flows_processed_total`.
    Flow,
    /// `drop`: `hubble_drop_total`.
    Drop,
    /// `tcp`: `hubble_tcp_flags_total`.
    Tcp,
    /// `port-distribution`: `hubble_port_distribution_total`.
    PortDistribution,
    /// `icmp`: `hubble_icmp_total`.
    Icmp,
    /// `policy`: `hubble_policy_verdicts_total`.
    Policy,
    /// `flows-to-world`: `hubble_flows_to_world_total`.
    FlowsToWorld,
}

impl MetricKind {
    /// Every kind, in the order of [`super::DEFAULT_METRICS`].
    pub const ALL: [MetricKind; 7] = [
        MetricKind::Flow,
        MetricKind::Drop,
        MetricKind::Tcp,
        MetricKind::PortDistribution,
        MetricKind::Icmp,
        MetricKind::Policy,
        MetricKind::FlowsToWorld,
    ];

    /// The name used in a metrics entry (Hubble's plugin name).
    pub const fn name(self) -> &'static str {
        match self {
            MetricKind::Flow => "flow",
            MetricKind::Drop => "drop",
            MetricKind::Tcp => "tcp",
            MetricKind::PortDistribution => "port-distribution",
            MetricKind::Icmp => "icmp",
            MetricKind::Policy => "policy",
            MetricKind::FlowsToWorld => "flows-to-world",
        }
    }

    /// The Prometheus family this kind exposes.
    pub const fn family(self) -> &'static str {
        match self {
            MetricKind::Flow => "hubble_flows_processed_total",
            MetricKind::Drop => "hubble_drop_total",
            MetricKind::Tcp => "hubble_tcp_flags_total",
            MetricKind::PortDistribution => "hubble_port_distribution_total",
            MetricKind::Icmp => "hubble_icmp_total",
            MetricKind::Policy => "hubble_policy_verdicts_total",
            MetricKind::FlowsToWorld => "hubble_flows_to_world_total",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        MetricKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Hubble's L7 metrics: Weir sees no L7 data, so they are refused by name.
const L7_METRICS: [&str; 4] = ["dns", "http", "httpV2", "kafka"];

/// One way of naming an endpoint in a `source` / `destination` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextId {
    /// `identity`: every identity label, comma-separated.
    Identity,
    /// `namespace`: the Kubernetes namespace.
    Namespace,
    /// `pod`: `namespace/pod-name` (just the namespace followed by `/` when the pod name is empty, as Hubble).
    Pod,
    /// `pod-short` (deprecated in Hubble): `namespace/` + the pod name without its
    /// last one or two `-suffix` parts.
    PodShort,
    /// `pod-name`: the pod name.
    PodName,
    /// `ip`: the address of that side of the flow.
    Ip,
    /// `reserved-identity`: `reserved:kube-apiserver` if present, else the first `reserved:` label.
    ReservedIdentity,
    /// `workload`: `namespace/workload-name` (empty without a workload).
    Workload,
    /// `workload-name`: the name of the pod's first workload.
    WorkloadName,
    /// `app`: the value of the first `k8s:app.kubernetes.io/name`, `k8s:k8s-app` or `k8s:app` label.
    App,
}

impl ContextId {
    const ALL: [ContextId; 10] = [
        ContextId::Identity,
        ContextId::Namespace,
        ContextId::Pod,
        ContextId::PodShort,
        ContextId::PodName,
        ContextId::Ip,
        ContextId::ReservedIdentity,
        ContextId::Workload,
        ContextId::WorkloadName,
        ContextId::App,
    ];

    /// The identifier as written in an entry.
    pub const fn name(self) -> &'static str {
        match self {
            ContextId::Identity => "identity",
            ContextId::Namespace => "namespace",
            ContextId::Pod => "pod",
            ContextId::PodShort => "pod-short",
            ContextId::PodName => "pod-name",
            ContextId::Ip => "ip",
            ContextId::ReservedIdentity => "reserved-identity",
            ContextId::Workload => "workload",
            ContextId::WorkloadName => "workload-name",
            ContextId::App => "app",
        }
    }
}

/// A label of `labelsContext`. Declaration order is the order the labels take
/// in a series (Hubble's fixed order, with `*_workload_kind` after `*_workload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContextLabel {
    SourceIp,
    SourcePod,
    SourceNamespace,
    SourceWorkload,
    SourceWorkloadKind,
    SourceApp,
    DestinationIp,
    DestinationPod,
    DestinationNamespace,
    DestinationWorkload,
    DestinationWorkloadKind,
    DestinationApp,
    TrafficDirection,
}

impl ContextLabel {
    const ALL: [ContextLabel; 13] = [
        ContextLabel::SourceIp,
        ContextLabel::SourcePod,
        ContextLabel::SourceNamespace,
        ContextLabel::SourceWorkload,
        ContextLabel::SourceWorkloadKind,
        ContextLabel::SourceApp,
        ContextLabel::DestinationIp,
        ContextLabel::DestinationPod,
        ContextLabel::DestinationNamespace,
        ContextLabel::DestinationWorkload,
        ContextLabel::DestinationWorkloadKind,
        ContextLabel::DestinationApp,
        ContextLabel::TrafficDirection,
    ];

    /// The label name (also how it is written in `labelsContext`).
    pub const fn name(self) -> &'static str {
        match self {
            ContextLabel::SourceIp => "source_ip",
            ContextLabel::SourcePod => "source_pod",
            ContextLabel::SourceNamespace => "source_namespace",
            ContextLabel::SourceWorkload => "source_workload",
            ContextLabel::SourceWorkloadKind => "source_workload_kind",
            ContextLabel::SourceApp => "source_app",
            ContextLabel::DestinationIp => "destination_ip",
            ContextLabel::DestinationPod => "destination_pod",
            ContextLabel::DestinationNamespace => "destination_namespace",
            ContextLabel::DestinationWorkload => "destination_workload",
            ContextLabel::DestinationWorkloadKind => "destination_workload_kind",
            ContextLabel::DestinationApp => "destination_app",
            ContextLabel::TrafficDirection => "traffic_direction",
        }
    }
}

/// The context options of one entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextOptions {
    /// `sourceContext`: adds the `source` label.
    pub source: Vec<ContextId>,
    /// `sourceEgressContext`: replaces `source` for EGRESS flows.
    pub source_egress: Vec<ContextId>,
    /// `sourceIngressContext`: replaces `source` for INGRESS flows.
    pub source_ingress: Vec<ContextId>,
    /// `destinationContext`: adds the `destination` label.
    pub destination: Vec<ContextId>,
    /// `destinationEgressContext`: replaces `destination` for EGRESS flows.
    pub destination_egress: Vec<ContextId>,
    /// `destinationIngressContext`: replaces `destination` for INGRESS flows.
    pub destination_ingress: Vec<ContextId>,
    /// `labelsContext`, deduplicated, in [`ContextLabel`] order.
    pub labels: Vec<ContextLabel>,
}

impl ContextOptions {
    /// Whether the entry adds no context label at all (the cheap path).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.destination.is_empty() && self.labels.is_empty()
    }

    /// The context label names, in the order their values are produced:
    /// `labelsContext` labels, then `source`, then `destination` (Hubble's order).
    pub fn label_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.labels.iter().map(|l| l.name()).collect();
        if !self.source.is_empty() {
            names.push("source");
        }
        if !self.destination.is_empty() {
            names.push("destination");
        }
        names
    }
}

/// One parsed metrics entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    /// Which family.
    pub kind: MetricKind,
    /// Context labels.
    pub context: ContextOptions,
    /// `flows-to-world` `any-drop`: count every dropped flow, not only POLICY_DENIED ones.
    pub any_drop: bool,
    /// `flows-to-world` `port`: add the destination `port` label.
    pub port: bool,
    /// `flows-to-world` `syn-only`: count only non-reply TCP SYNs.
    pub syn_only: bool,
}

impl MetricSpec {
    /// A spec without options.
    pub fn new(kind: MetricKind) -> Self {
        Self {
            kind,
            context: ContextOptions::default(),
            any_drop: false,
            port: false,
            syn_only: false,
        }
    }
}

/// Prints the entry in canonical form; parsing it again gives the same spec.
impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut opts: Vec<String> = Vec::new();
        let join = |ids: &[ContextId]| ids.iter().map(|c| c.name()).collect::<Vec<_>>().join("|");
        let c = &self.context;
        for (key, ids) in [
            ("sourceContext", &c.source),
            ("sourceEgressContext", &c.source_egress),
            ("sourceIngressContext", &c.source_ingress),
            ("destinationContext", &c.destination),
            ("destinationEgressContext", &c.destination_egress),
            ("destinationIngressContext", &c.destination_ingress),
        ] {
            if !ids.is_empty() {
                opts.push(format!("{key}={}", join(ids)));
            }
        }
        if !c.labels.is_empty() {
            let labels: Vec<&str> = c.labels.iter().map(|l| l.name()).collect();
            opts.push(format!("labelsContext={}", labels.join(",")));
        }
        for (flag, on) in [
            ("any-drop", self.any_drop),
            ("port", self.port),
            ("syn-only", self.syn_only),
        ] {
            if on {
                opts.push(flag.to_owned());
            }
        }
        f.write_str(self.kind.name())?;
        if !opts.is_empty() {
            write!(f, ":{}", opts.join(";"))?;
        }
        Ok(())
    }
}

/// Parses metrics entries (one metric per entry, as Hubble's
/// `--hubble-metrics` list). Fails on the first bad entry with an error that
/// names the entry and, where relevant, the option and value. A metric named
/// twice is refused (Hubble would fail registering it twice).
pub fn parse(entries: &[String]) -> Result<Vec<MetricSpec>, HubbleMetricsError> {
    let mut specs: Vec<MetricSpec> = Vec::with_capacity(entries.len());
    for entry in entries {
        let spec = parse_entry(entry)?;
        if specs.iter().any(|s| s.kind == spec.kind) {
            return Err(HubbleMetricsError::DuplicateMetric {
                entry: entry.clone(),
                name: spec.kind.name(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Parses one entry.
pub fn parse_entry(entry: &str) -> Result<MetricSpec, HubbleMetricsError> {
    let trimmed = entry.trim();
    let (name, options) = match trimmed.split_once(':') {
        Some((n, o)) => (n, o),
        None => (trimmed, ""),
    };
    let e = || entry.to_owned();
    if name.is_empty() {
        return Err(HubbleMetricsError::EmptyName { entry: e() });
    }
    let Some(kind) = MetricKind::from_name(name) else {
        if L7_METRICS.contains(&name) {
            return Err(HubbleMetricsError::L7Metric {
                entry: e(),
                name: name.to_owned(),
            });
        }
        return Err(HubbleMetricsError::UnknownMetric {
            entry: e(),
            name: name.to_owned(),
        });
    };
    let mut spec = MetricSpec::new(kind);
    let mut seen: Vec<String> = Vec::new();
    // Empty segments (`a;;b`, a trailing `;`) are skipped, as Hubble does.
    for option in options.split(';').filter(|o| !o.is_empty()) {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        let lower = key.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(HubbleMetricsError::DuplicateOption {
                entry: e(),
                option: key.to_owned(),
            });
        }
        seen.push(lower.clone());
        let c = &mut spec.context;
        let target = match lower.as_str() {
            "sourcecontext" => Some(&mut c.source),
            "sourceegresscontext" => Some(&mut c.source_egress),
            "sourceingresscontext" => Some(&mut c.source_ingress),
            "destinationcontext" => Some(&mut c.destination),
            "destinationegresscontext" => Some(&mut c.destination_egress),
            "destinationingresscontext" => Some(&mut c.destination_ingress),
            _ => None,
        };
        if let Some(target) = target {
            *target = parse_context(entry, key, need_value(entry, key, value)?)?;
            continue;
        }
        match lower.as_str() {
            "labelscontext" => {
                spec.context.labels = parse_labels(entry, key, need_value(entry, key, value)?)?;
            }
            "any-drop" | "port" | "syn-only" if kind == MetricKind::FlowsToWorld => {
                if let Some(v) = value
                    && !v.eq_ignore_ascii_case("true")
                {
                    return Err(HubbleMetricsError::FlagValue {
                        entry: e(),
                        option: key.to_owned(),
                        value: v.to_owned(),
                    });
                }
                match lower.as_str() {
                    "any-drop" => spec.any_drop = true,
                    "port" => spec.port = true,
                    _ => spec.syn_only = true,
                }
            }
            _ => {
                return Err(HubbleMetricsError::UnknownOption {
                    entry: e(),
                    metric: kind.name(),
                    option: key.to_owned(),
                });
            }
        }
    }
    // Hubble only adds the `source` / `destination` label for the plain
    // option, so a directional one alone would silently do nothing: refuse it.
    let c = &spec.context;
    for (set, base, option) in [
        (
            !c.source_egress.is_empty(),
            &c.source,
            "sourceEgressContext",
        ),
        (
            !c.source_ingress.is_empty(),
            &c.source,
            "sourceIngressContext",
        ),
        (
            !c.destination_egress.is_empty(),
            &c.destination,
            "destinationEgressContext",
        ),
        (
            !c.destination_ingress.is_empty(),
            &c.destination,
            "destinationIngressContext",
        ),
    ] {
        if set && base.is_empty() {
            let base = if option.starts_with("source") {
                "sourceContext"
            } else {
                "destinationContext"
            };
            return Err(HubbleMetricsError::DirectionalContextAlone {
                entry: e(),
                option,
                base,
            });
        }
    }
    Ok(spec)
}

fn need_value<'a>(
    entry: &str,
    key: &str,
    value: Option<&'a str>,
) -> Result<&'a str, HubbleMetricsError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(HubbleMetricsError::MissingValue {
            entry: entry.to_owned(),
            option: key.to_owned(),
        }),
    }
}

fn parse_context(
    entry: &str,
    key: &str,
    value: &str,
) -> Result<Vec<ContextId>, HubbleMetricsError> {
    value
        .split('|')
        .map(|v| {
            let lower = v.to_ascii_lowercase();
            if lower == "dns" {
                return Err(HubbleMetricsError::DnsContext {
                    entry: entry.to_owned(),
                    option: key.to_owned(),
                });
            }
            ContextId::ALL
                .into_iter()
                .find(|c| c.name() == lower)
                .ok_or_else(|| HubbleMetricsError::UnknownContext {
                    entry: entry.to_owned(),
                    option: key.to_owned(),
                    value: v.to_owned(),
                })
        })
        .collect()
}

fn parse_labels(
    entry: &str,
    key: &str,
    value: &str,
) -> Result<Vec<ContextLabel>, HubbleMetricsError> {
    let mut labels = Vec::new();
    for v in value.split(',') {
        let label = ContextLabel::ALL
            .into_iter()
            .find(|l| l.name() == v)
            .ok_or_else(|| HubbleMetricsError::UnknownLabel {
                entry: entry.to_owned(),
                option: key.to_owned(),
                label: v.to_owned(),
            })?;
        labels.push(label);
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}
