//! Hubble-compatible flow metrics: the families, label names, label values and
//! `--hubble-metrics` option grammar of Cilium's Hubble, so that Hubble
//! dashboards and alerts work on Weir unchanged.
//!
//! | entry | family | labels (before context labels) |
//! |---|---|---|
//! | `flow` | `hubble_flows_processed_total` | `protocol`, `type`, `subtype`, `verdict` |
//! | `drop` | `hubble_drop_total` | `reason`, `protocol` |
//! | `tcp` | `hubble_tcp_flags_total` | `flag`, `family` |
//! | `port-distribution` | `hubble_port_distribution_total` | `protocol`, `port` |
//! | `icmp` | `hubble_icmp_total` | `family`, `type` |
//! | `policy` | `hubble_policy_verdicts_total` | `direction`, `match`, `action` |
//! | `flows-to-world` | `hubble_flows_to_world_total` | `protocol`, `verdict` (+ `port` with the `port` option) |
//!
//! Context options (`sourceContext`, `destinationContext`, their `Egress` /
//! `Ingress` variants and `labelsContext`) add labels as Hubble does; see
//! [`spec`]. Each family holds at most `series_limit` series: an event that
//! would create one more is counted in
//! `weir_metrics_series_dropped_total{family="<family name>"}` instead, and
//! existing series keep counting.
//!
//! Owns these families and their registration in a registry it is given; it
//! reads only [`Flow`]s and never touches the rest of the agent's metrics.

mod context;
mod names;
mod series;
pub mod spec;

pub mod bench;

use std::cell::RefCell;

use prometheus::{IntCounterVec, Opts, Registry};

use crate::flow::{DropReason, EVENT_TYPE_DROP, EVENT_TYPE_TRACE, Flow, Layer4, Verdict};

pub use spec::{
    ContextId, ContextLabel, ContextOptions, MetricKind, MetricSpec, parse, parse_entry,
};

use names::{
    EVENT_TYPE_ACCESS_LOG, EVENT_TYPE_CAPTURE, EVENT_TYPE_POLICY_VERDICT, IDENTITY_HOST, PROTOCOLS,
    TRACE_POINTS, VERDICTS, VERDICTS_LOWER, verdict_index,
};
use series::Family;

/// The metrics the agent enables when none are configured: every family Weir
/// can feed, without contexts, so no pod, workload or address labels and a
/// cardinality bounded by protocols, verdicts, drop reasons, ICMP types and
/// destination ports.
pub const DEFAULT_METRICS: [&str; 7] = [
    "flow",
    "drop",
    "tcp",
    "port-distribution",
    "icmp",
    "policy",
    "flows-to-world",
];

/// Default cap on series per family.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

/// The counter of events not counted because their series would pass the cap.
pub const SERIES_DROPPED_FAMILY: &str = "weir_metrics_series_dropped_total";

/// Errors of metrics configuration and registration.
#[derive(Debug, thiserror::Error)]
pub enum HubbleMetricsError {
    /// The entry has no metric name (empty, or starting with `:`).
    #[error("metrics entry {entry:?}: no metric name")]
    EmptyName { entry: String },
    /// The metric name is not one Weir (or Hubble) knows.
    #[error(
        "metrics entry {entry:?}: unknown metric {name:?} (known: flow, drop, tcp, port-distribution, icmp, policy, flows-to-world)"
    )]
    UnknownMetric { entry: String, name: String },
    /// A Hubble L7 metric (`dns`, `http`, `httpV2`, `kafka`): Weir sees no L7 data.
    #[error("metrics entry {entry:?}: {name:?} is an L7 metric and Weir has no L7 visibility")]
    L7Metric { entry: String, name: String },
    /// The same metric appears in two entries.
    #[error("metrics entry {entry:?}: metric {name:?} is configured twice")]
    DuplicateMetric { entry: String, name: &'static str },
    /// An option this metric does not take.
    #[error("metrics entry {entry:?}: unknown option {option:?} for metric {metric:?}")]
    UnknownOption {
        entry: String,
        metric: &'static str,
        option: String,
    },
    /// The same option twice in one entry.
    #[error("metrics entry {entry:?}: option {option:?} given twice")]
    DuplicateOption { entry: String, option: String },
    /// A context option without a value (`sourceContext` or `sourceContext=`).
    #[error("metrics entry {entry:?}: option {option:?} needs a value")]
    MissingValue { entry: String, option: String },
    /// A flag option (`any-drop`, `port`, `syn-only`) given a value other than `true`.
    #[error(
        "metrics entry {entry:?}: option {option:?} is a flag and takes no value (got {value:?})"
    )]
    FlagValue {
        entry: String,
        option: String,
        value: String,
    },
    /// A context identifier that does not exist.
    #[error(
        "metrics entry {entry:?}: option {option:?}: unknown context {value:?} (known: identity, namespace, pod, pod-short, pod-name, ip, reserved-identity, workload, workload-name, app)"
    )]
    UnknownContext {
        entry: String,
        option: String,
        value: String,
    },
    /// The `dns` context: Weir has no DNS names for endpoints.
    #[error(
        "metrics entry {entry:?}: option {option:?}: context \"dns\" is not available (Weir has no DNS data)"
    )]
    DnsContext { entry: String, option: String },
    /// A `labelsContext` label that does not exist.
    #[error("metrics entry {entry:?}: option {option:?}: unknown label {label:?}")]
    UnknownLabel {
        entry: String,
        option: String,
        label: String,
    },
    /// A directional context without the plain one, which alone adds no label.
    #[error("metrics entry {entry:?}: option {option:?} needs {base:?} too (it only overrides it)")]
    DirectionalContextAlone {
        entry: String,
        option: &'static str,
        base: &'static str,
    },
    /// The series limit is zero.
    #[error("metrics series limit must be at least 1")]
    ZeroSeriesLimit,
    /// A family could not be created or registered (e.g. registered twice in one registry).
    #[error("registering metric family {family}")]
    Register {
        family: &'static str,
        #[source]
        source: prometheus::Error,
    },
}

/// The specs of [`DEFAULT_METRICS`].
pub fn default_specs() -> Vec<MetricSpec> {
    MetricKind::ALL.into_iter().map(MetricSpec::new).collect()
}

/// Hubble's families for the configured specs, registered in one registry.
pub struct HubbleMetrics {
    handlers: Vec<Handler>,
}

impl std::fmt::Debug for HubbleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubbleMetrics")
            .field(
                "specs",
                &self
                    .handlers
                    .iter()
                    .map(|h| h.spec.to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Handler {
    spec: MetricSpec,
    family: Family,
}

thread_local! {
    /// Scratch space for the encoded context values of the flow being counted.
    static CTX: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

impl HubbleMetrics {
    /// Creates the families of `specs` (and `weir_metrics_series_dropped_total`,
    /// with a zero series per family) and registers them in `registry`.
    pub fn new(
        registry: &Registry,
        specs: &[MetricSpec],
        series_limit: usize,
    ) -> Result<Self, HubbleMetricsError> {
        Self::new_split(registry, registry, specs, series_limit)
    }

    /// As [`HubbleMetrics::new`], but the families themselves go into
    /// `series_registry` and only `weir_metrics_series_dropped_total` into
    /// `registry`: the agent serves the families on /metrics with
    /// [`HubbleMetrics::render_text`] (a scrape of 10 000 series through a
    /// registry's gather costs tens of milliseconds) and gives
    /// `series_registry` to consumers that want them as metric families
    /// (OTLP).
    pub fn new_split(
        registry: &Registry,
        series_registry: &Registry,
        specs: &[MetricSpec],
        series_limit: usize,
    ) -> Result<Self, HubbleMetricsError> {
        if series_limit == 0 {
            return Err(HubbleMetricsError::ZeroSeriesLimit);
        }
        let dropped = IntCounterVec::new(
            Opts::new(
                SERIES_DROPPED_FAMILY,
                "Flow metric updates not counted because they would have created a series beyond the per-family limit, by family.",
            ),
            &["family"],
        )
        .map_err(|source| HubbleMetricsError::Register {
            family: SERIES_DROPPED_FAMILY,
            source,
        })?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(|source| HubbleMetricsError::Register {
                family: SERIES_DROPPED_FAMILY,
                source,
            })?;
        let mut handlers = Vec::with_capacity(specs.len());
        for spec in specs {
            let kind = spec.kind;
            let name = kind.family();
            let (help, fixed, dense_len): (&str, &[&str], u64) = match kind {
                MetricKind::Flow => (
                    "Flows processed, by protocol, event type, sub-type and verdict.",
                    &["protocol", "type", "subtype", "verdict"],
                    FLOW_DENSE,
                ),
                MetricKind::Drop => (
                    "Dropped flows, by drop reason and protocol.",
                    &["reason", "protocol"],
                    DROP_DENSE,
                ),
                MetricKind::Tcp => (
                    "TCP flags (FIN, SYN, SYN-ACK, RST) seen in forwarded flows, by flag and IP family.",
                    &["flag", "family"],
                    TCP_DENSE,
                ),
                MetricKind::PortDistribution => (
                    "Forwarded non-reply flows, by protocol and destination port.",
                    &["protocol", "port"],
                    PORT_DENSE,
                ),
                MetricKind::Icmp => (
                    "ICMP messages, by IP family and ICMP type.",
                    &["family", "type"],
                    ICMP_DENSE,
                ),
                MetricKind::Policy => (
                    "Network policy verdicts, by direction, match type and action.",
                    &["direction", "match", "action"],
                    POLICY_DENSE,
                ),
                MetricKind::FlowsToWorld => (
                    "Non-reply flows to reserved:world, by protocol and verdict.",
                    if spec.port {
                        &["protocol", "verdict", "port"]
                    } else {
                        &["protocol", "verdict"]
                    },
                    WORLD_DENSE,
                ),
            };
            let mut labels: Vec<&str> = fixed.to_vec();
            labels.extend(spec.context.label_names());
            let vec = IntCounterVec::new(Opts::new(name, help), &labels).map_err(|source| {
                HubbleMetricsError::Register {
                    family: name,
                    source,
                }
            })?;
            series_registry
                .register(Box::new(vec.clone()))
                .map_err(|source| HubbleMetricsError::Register {
                    family: name,
                    source,
                })?;
            let family = Family::new(
                name,
                help,
                labels.clone(),
                vec,
                dense_len,
                series_limit,
                dropped.with_label_values(&[name]),
            );
            handlers.push(Handler {
                spec: spec.clone(),
                family,
            });
        }
        tracing::debug!(
            metrics = ?specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            series_limit,
            "hubble metrics registered"
        );
        Ok(Self { handlers })
    }

    /// [`DEFAULT_METRICS`] with [`DEFAULT_SERIES_LIMIT`].
    pub fn with_defaults(registry: &Registry) -> Result<Self, HubbleMetricsError> {
        Self::new(registry, &default_specs(), DEFAULT_SERIES_LIMIT)
    }

    /// Appends every family in the Prometheus text exposition format: the
    /// same series and values as the registry's encoder gives, written from
    /// series lines rendered once at creation.
    pub fn render_text(&self, out: &mut String) {
        for h in &self.handlers {
            h.family.render(out);
        }
    }

    /// The configured specs, in order.
    pub fn specs(&self) -> impl Iterator<Item = &MetricSpec> {
        self.handlers.iter().map(|h| &h.spec)
    }

    /// Series created so far in the family of `kind` (`None` if not configured).
    pub fn series(&self, kind: MetricKind) -> Option<usize> {
        self.handlers
            .iter()
            .find(|h| h.spec.kind == kind)
            .map(|h| h.family.series())
    }

    /// Counts one flow in every configured family it belongs to. Per event,
    /// without contexts: no lock and no allocation once its series exist.
    #[inline]
    pub fn observe(&self, flow: &Flow) {
        for h in &self.handlers {
            if h.spec.context.is_empty() {
                h.observe(flow, &[]);
            } else {
                CTX.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.clear();
                    context::encode(&h.spec.context, flow, &mut buf);
                    h.observe(flow, &buf);
                });
            }
        }
    }
}

// Dense key spaces (series keys below these skip the hash map when the family
// has no contexts). Layouts are documented at each `observe_*`.
const FLOW_DENSE: u64 = 6 * 256 * VERDICTS as u64 * PROTOCOLS.len() as u64;
const DROP_DENSE: u64 = 256 * PROTOCOLS.len() as u64;
const TCP_DENSE: u64 = 4 * 3;
const PORT_DENSE: u64 = 5 * 65_536;
const ICMP_DENSE: u64 = 2 * 65_536;
const POLICY_DENSE: u64 = 3 * 2 * VERDICTS as u64;
const WORLD_DENSE: u64 = PROTOCOLS.len() as u64 * VERDICTS as u64;

const FLOW_TYPES: [&str; 6] = ["Trace", "Drop", "Capture", "PolicyVerdict", "L7", "Unknown"];
const TCP_FLAGS: [&str; 4] = ["FIN", "SYN", "SYN-ACK", "RST"];
const PORT_PROTOCOLS: [&str; 5] = ["TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"];
const DIRECTIONS_LOWER: [&str; 3] = ["traffic_direction_unknown", "ingress", "egress"];
/// The labels Hubble treats as "the world" for `flows-to-world`.
const WORLD_LABEL: &str = "reserved:world";

impl Handler {
    #[inline]
    fn observe(&self, flow: &Flow, ctx: &[u8]) {
        match self.spec.kind {
            MetricKind::Flow => self.observe_flow(flow, ctx),
            MetricKind::Drop => self.observe_drop(flow, ctx),
            MetricKind::Tcp => self.observe_tcp(flow, ctx),
            MetricKind::PortDistribution => self.observe_port(flow, ctx),
            MetricKind::Icmp => self.observe_icmp(flow, ctx),
            MetricKind::Policy => self.observe_policy(flow, ctx),
            MetricKind::FlowsToWorld => self.observe_world(flow, ctx),
        }
    }

    /// Every flow. Key: ((type * 256 + subtype) * VERDICTS + verdict) *
    /// PROTOCOLS + protocol; subtype is the trace point number for Trace and
    /// the event type number for Unknown (numbers past 255 go past the dense
    /// range).
    fn observe_flow(&self, flow: &Flow, ctx: &[u8]) {
        let ev = flow.event_type.unwrap_or_default();
        let (t, sub): (u64, u64) = match ev.r#type {
            EVENT_TYPE_TRACE => (0, u64::from(ev.sub_type as u8)),
            EVENT_TYPE_DROP => (1, 0),
            EVENT_TYPE_CAPTURE => (2, 0),
            EVENT_TYPE_POLICY_VERDICT => (3, 0),
            EVENT_TYPE_ACCESS_LOG => (4, 0),
            other => (5, u64::from(other as u32)),
        };
        let v = verdict_index(flow.verdict);
        let p = names::protocol(flow);
        let per_sub = (VERDICTS * PROTOCOLS.len()) as u64;
        let key = if sub < 256 {
            (t * 256 + sub) * per_sub + (v * PROTOCOLS.len() + p) as u64
        } else {
            FLOW_DENSE + sub * per_sub + (v * PROTOCOLS.len() + p) as u64
        };
        self.family.inc(key, ctx, |l| {
            l.push(PROTOCOLS[p].to_owned());
            l.push(FLOW_TYPES[t as usize].to_owned());
            l.push(match t {
                // Hubble prints "" for trace points it does not know.
                0 => TRACE_POINTS
                    .get(sub as usize)
                    .copied()
                    .unwrap_or("")
                    .to_owned(),
                5 => ev.r#type.to_string(),
                _ => String::new(),
            });
            l.push(flow.verdict.as_str_name().to_owned());
        });
    }

    /// DROPPED flows. Key: reason number * PROTOCOLS + protocol.
    fn observe_drop(&self, flow: &Flow, ctx: &[u8]) {
        if flow.verdict != Verdict::Dropped {
            return;
        }
        let reason = flow.drop_reason_desc;
        let p = names::protocol(flow);
        let key = (reason as i32).clamp(0, 255) as u64 * PROTOCOLS.len() as u64 + p as u64;
        self.family.inc(key, ctx, |l| {
            l.push(reason.as_str_name().to_owned());
            l.push(PROTOCOLS[p].to_owned());
        });
    }

    /// FORWARDED / REDIRECTED TCP flows with flags, replies included: one
    /// count per FIN, SYN (SYN-ACK when ACK is set too) and RST. Key: flag * 3 + IP version.
    fn observe_tcp(&self, flow: &Flow, ctx: &[u8]) {
        if !matches!(flow.verdict, Verdict::Forwarded | Verdict::Redirected) {
            return;
        }
        let (Some(ip), Some(Layer4::Tcp(tcp))) = (flow.ip.as_ref(), flow.l4.as_ref()) else {
            return;
        };
        let Some(flags) = tcp.flags else { return };
        let fam = (ip.ip_version as i32).clamp(0, 2) as u64;
        let count = |flag: u64| {
            self.family.inc(flag * 3 + fam, ctx, |l| {
                l.push(TCP_FLAGS[flag as usize].to_owned());
                l.push(ip.ip_version.as_str_name().to_owned());
            });
        };
        if flags.fin {
            count(0);
        }
        if flags.syn {
            count(if flags.ack { 2 } else { 1 });
        }
        if flags.rst {
            count(3);
        }
    }

    /// FORWARDED / REDIRECTED flows known not to be replies (unknown counts as
    /// a possible reply, as Hubble): TCP / UDP / SCTP by destination port,
    /// ICMP as port "0". Key: protocol * 65536 + port.
    fn observe_port(&self, flow: &Flow, ctx: &[u8]) {
        if !matches!(flow.verdict, Verdict::Forwarded | Verdict::Redirected)
            || flow.is_reply != Some(false)
        {
            return;
        }
        let (p, port) = match flow.l4 {
            Some(Layer4::Tcp(t)) => (0, t.destination_port),
            Some(Layer4::Udp(u)) => (1, u.destination_port),
            Some(Layer4::Sctp(s)) => (2, s.destination_port),
            Some(Layer4::Icmpv4(_)) => (3, 0),
            Some(Layer4::Icmpv6(_)) => (4, 0),
            _ => return,
        };
        let port = u64::from(port.min(65_535));
        self.family.inc(p * 65_536 + port, ctx, |l| {
            l.push(PORT_PROTOCOLS[p as usize].to_owned());
            l.push(port.to_string());
        });
    }

    /// Every ICMP flow, any verdict. Key: family * 65536 + type * 256 + code.
    fn observe_icmp(&self, flow: &Flow, ctx: &[u8]) {
        let (fam, icmp) = match flow.l4 {
            Some(Layer4::Icmpv4(i)) => (0u64, i),
            Some(Layer4::Icmpv6(i)) => (1u64, i),
            _ => return,
        };
        let (t, c) = (icmp.r#type as u8, icmp.code as u8);
        let key = fam * 65_536 + u64::from(t) * 256 + u64::from(c);
        self.family.inc(key, ctx, |l| {
            if fam == 0 {
                l.push("IPv4".to_owned());
                l.push(names::icmpv4_type(t, c).into_owned());
            } else {
                l.push("IPv6".to_owned());
                l.push(names::icmpv6_type(t, c).into_owned());
            }
        });
    }

    /// Policy-verdict events (not from the host identity) and access-log
    /// events. Weir's flows carry no policy match type, so `match` is Cilium's
    /// zero value "none" (and "l7/" for access-log events, which carry no L7
    /// record). Key: (direction * 2 + is_l7) * VERDICTS + verdict.
    fn observe_policy(&self, flow: &Flow, ctx: &[u8]) {
        let l7 = match flow.event_type.map(|e| e.r#type) {
            Some(EVENT_TYPE_POLICY_VERDICT) => {
                if flow
                    .source
                    .as_ref()
                    .is_some_and(|s| s.identity == IDENTITY_HOST)
                {
                    return;
                }
                0
            }
            Some(EVENT_TYPE_ACCESS_LOG) => 1,
            _ => return,
        };
        let d = (flow.traffic_direction as i32).clamp(0, 2) as usize;
        let v = verdict_index(flow.verdict);
        let key = ((d * 2 + l7) * VERDICTS + v) as u64;
        self.family.inc(key, ctx, |l| {
            l.push(DIRECTIONS_LOWER[d].to_owned());
            l.push(if l7 == 1 { "l7/" } else { "none" }.to_owned());
            l.push(VERDICTS_LOWER[v].to_owned());
        });
    }

    /// Flows whose destination carries `reserved:world`, with an event type and
    /// L4: replies are skipped unless dropped; drops count only when
    /// POLICY_DENIED unless `any-drop`; `syn-only` keeps only non-reply TCP
    /// SYNs. Key: (port + 1 or 0) * WORLD_DENSE + protocol * VERDICTS + verdict.
    fn observe_world(&self, flow: &Flow, ctx: &[u8]) {
        let Some(dst) = flow.destination.as_deref() else {
            return;
        };
        let (Some(_), Some(l4)) = (flow.event_type, flow.l4.as_ref()) else {
            return;
        };
        if !dst.labels.iter().any(|l| l == WORLD_LABEL) {
            return;
        }
        let dropped = flow.verdict == Verdict::Dropped;
        if dropped && !self.spec.any_drop && flow.drop_reason_desc != DropReason::PolicyDenied {
            return;
        }
        let is_reply = flow.is_reply == Some(true);
        if !dropped && is_reply {
            return;
        }
        if self.spec.syn_only {
            let syn = matches!(l4, Layer4::Tcp(t) if t.flags.is_some_and(|f| f.syn));
            if !syn || is_reply {
                return;
            }
        }
        let p = names::protocol(flow);
        let v = verdict_index(flow.verdict);
        let port = match l4 {
            Layer4::Tcp(t) => Some(t.destination_port),
            Layer4::Udp(u) | Layer4::Sctp(u) => Some(u.destination_port),
            _ => None,
        };
        let base = (p * VERDICTS + v) as u64;
        let key = match (self.spec.port, port) {
            (true, Some(port)) => (u64::from(port) + 1) * WORLD_DENSE + base,
            _ => base,
        };
        let with_port = self.spec.port;
        self.family.inc(key, ctx, |l| {
            l.push(PROTOCOLS[p].to_owned());
            l.push(flow.verdict.as_str_name().to_owned());
            if with_port {
                l.push(port.map(|p| p.to_string()).unwrap_or_default());
            }
        });
    }
}
