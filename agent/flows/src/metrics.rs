//! Every Prometheus metric of Weir, in one place: names, help, labels.
//!
//! The agent feeds it: flows through [`Metrics::observe_flow`] (per event, no
//! allocation or formatting after a series' first use), the datapath's
//! cumulative kernel counters through the `set_*_total` methods (which apply
//! the delta, so polling every second is fine and a datapath reload that
//! resets the kernel counters does not make a counter go backwards), gauges
//! through setters, and the flow store through [`Metrics::observe_store`].
//! Owns the registry and the text encoding; reads nothing by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use weir_common::parse_error;

use crate::flow::{EVENT_TYPE_DROP, EVENT_TYPE_TRACE, Flow, FlowType, Layer4, Verdict};
use crate::store::{FlowStore, QueueStats};

/// Errors building the metrics registry.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be created or registered (a duplicate or invalid name).
    #[error("registering metric {name}")]
    Register {
        /// The metric family.
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
}

/// Where events were lost: the `source` label of `weir_lost_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostSource {
    /// The kernel could not reserve space in the BPF ring buffer.
    KernelRingBuffer,
    /// The agent's queue between the ring buffer reader and the decoder was full.
    AgentQueue,
    /// A flow consumer's queue was full (its flows were dropped for it).
    FlowRing,
}

impl LostSource {
    /// Every source.
    pub const ALL: [LostSource; 3] = [
        LostSource::KernelRingBuffer,
        LostSource::AgentQueue,
        LostSource::FlowRing,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LostSource::KernelRingBuffer => "kernel_ring_buffer",
            LostSource::AgentQueue => "agent_queue",
            LostSource::FlowRing => "flow_ring",
        }
    }
}

/// A Prometheus counter fed with a cumulative total from elsewhere (a kernel
/// counter): each update adds the difference to the last total seen. A total
/// smaller than the previous one means the source restarted from zero, and
/// the whole new total is added.
#[derive(Debug)]
pub struct CumulativeCounter {
    counter: IntCounter,
    last: AtomicU64,
}

impl CumulativeCounter {
    fn new(counter: IntCounter) -> Self {
        Self {
            counter,
            last: AtomicU64::new(0),
        }
    }

    /// Records the source's current total.
    pub fn set_total(&self, total: u64) {
        let prev = self.last.swap(total, Ordering::Relaxed);
        let delta = if total >= prev { total - prev } else { total };
        if delta > 0 {
            self.counter.inc_by(delta);
        }
    }

    /// The counter.
    pub fn counter(&self) -> &IntCounter {
        &self.counter
    }
}

/// Sets `counter` to `total` by adding the difference (no-op when `total` is
/// not larger). For sources that never reset; otherwise use
/// [`CumulativeCounter`].
pub fn set_counter_total(counter: &IntCounter, total: u64) {
    let cur = counter.get();
    if total > cur {
        counter.inc_by(total - cur);
    }
}

/// Label values of `weir_flows_processed_total{type}`: Hubble's event type names.
const FLOW_TYPES: [&str; 6] = ["Trace", "Drop", "PolicyVerdict", "L7", "Sock", "Unknown"];
/// Label values of `{protocol}`; index 0 is a flow without L4.
const PROTOCOLS: [&str; 8] = [
    "Unknown", "TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP",
];
const VERDICTS: usize = 8;

/// The registry and every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,

    flows_processed: IntCounterVec,
    /// Handles of `flows_processed` by [type][verdict][protocol], made on first use.
    flows_processed_cache: Box<[OnceLock<IntCounter>]>,

    lost_events: [CumulativeCounter; 3],

    /// weir_datapath_packets_total
    pub datapath_packets: CumulativeCounter,
    /// weir_datapath_bytes_total
    pub datapath_bytes: CumulativeCounter,
    /// weir_datapath_events_emitted_total
    pub datapath_events_emitted: CumulativeCounter,
    parse_errors: Vec<CumulativeCounter>,
    drops: TotalsVec,
    /// weir_conntrack_entries
    pub conntrack_entries: IntGauge,
    /// weir_conntrack_capacity
    pub conntrack_capacity: IntGauge,
    /// weir_conntrack_created_total
    pub conntrack_created: CumulativeCounter,
    /// weir_conntrack_insert_failures_total
    pub conntrack_insert_failures: CumulativeCounter,

    /// weir_ring_buffer_pending_bytes
    pub ring_buffer_pending_bytes: IntGauge,
    /// weir_ring_buffer_capacity_bytes
    pub ring_buffer_capacity_bytes: IntGauge,
    /// weir_flow_ring_flows
    pub flow_ring_flows: IntGauge,
    /// weir_flow_ring_capacity
    pub flow_ring_capacity: IntGauge,
    queue_length: IntGaugeVec,
    queue_capacity: IntGaugeVec,
    queue_dropped: TotalsVec,
    flow_ring_lost_last: Mutex<HashMap<String, u64>>,

    /// weir_flow_log_lines_total
    pub flow_log_lines: CumulativeCounter,
    /// weir_flow_log_write_errors_total
    pub flow_log_write_errors: CumulativeCounter,

    /// weir_endpoints
    pub endpoints: IntGauge,
    /// weir_endpoints_restored_total
    pub endpoints_restored: IntCounter,
    /// weir_endpoints_file_errors_total
    pub endpoints_file_errors: IntCounter,
    /// weir_policy_audited_total
    pub policy_audited: CumulativeCounter,
    /// weir_policy_lookups_total
    pub policy_lookups: CumulativeCounter,
    /// weir_policy_rules
    pub policy_rules: IntGauge,
    /// weir_policy_endpoints
    pub policy_endpoints: IntGauge,
    /// weir_policy_policies
    pub policy_policies: IntGauge,
    /// weir_policy_generation
    pub policy_generation: IntGauge,
    /// weir_policy_sync_duration_seconds (of the last sync)
    pub policy_sync_duration: Gauge,
    /// weir_policy_syncs_total
    pub policy_syncs: IntCounter,
    /// weir_policy_map_write_errors_total
    pub policy_map_write_errors: IntCounter,
    /// weir_policy_invalid
    pub policy_invalid: IntGauge,
    datapath_info: IntGaugeVec,
    state_objects: IntGaugeVec,
    /// weir_state_sync_errors_total
    pub state_sync_errors: IntCounter,
    /// weir_state_last_sync_timestamp_seconds
    pub state_last_sync_timestamp: Gauge,

    /// weir_flow_api_enabled
    pub flow_api_enabled: IntGauge,
    /// weir_flow_api_streams
    pub flow_api_streams: IntGauge,
    /// weir_flow_api_flows_sent_total
    pub flow_api_flows_sent: IntCounter,
    flow_api_requests: IntCounterVec,
    flow_api_refused: IntCounterVec,

    flow_export: [TotalsVec; 5],
    flow_export_up: IntGaugeVec,
    /// weir_flow_export_config_errors_total
    pub flow_export_config_errors: IntCounter,

    otel_exported: TotalsVec,
    otel_dropped: TotalsVec,
    text_source: OnceLock<TextSource>,
}

/// Extra text appended to the exposition (see [`Metrics::set_text_source`]).
struct TextSource(Box<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for TextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextSource")
    }
}

/// A counter vector whose series follow running totals kept elsewhere
/// (kernel maps, a queue's drop count, an exporter's stats), copied in
/// periodically: each label set gets a [`CumulativeCounter`] on first use.
#[derive(Debug)]
struct TotalsVec {
    vec: IntCounterVec,
    series: Mutex<HashMap<Vec<String>, CumulativeCounter>>,
}

impl TotalsVec {
    fn new(vec: IntCounterVec) -> Self {
        Self {
            vec,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Moves the series of `labels` up to `total` (never down).
    fn set_total(&self, labels: &[&str], total: u64) {
        let key: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| CumulativeCounter::new(self.vec.with_label_values(labels)))
            .set_total(total);
    }
}

/// Counters of one flow-log exporter, as `set_exporter` takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExporterCounters {
    pub lines_written: u64,
    pub write_errors: u64,
    pub rotations: u64,
    pub filtered_out: u64,
    pub queue_dropped: u64,
}

impl Metrics {
    /// Creates and registers every metric, `weir_build_info{version}` with
    /// this crate's version, and (on Linux) the `process_*` collector.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let r = &registry;

        let flows_processed = counter_vec(
            r,
            "weir_flows_processed_total",
            "Flows decoded and enriched, by event type, verdict and L4 protocol.",
            &["type", "verdict", "protocol"],
        )?;
        let lost = counter_vec(
            r,
            "weir_lost_events_total",
            "Events lost before reaching a consumer, by where they were lost.",
            &["source"],
        )?;
        let lost_events =
            LostSource::ALL.map(|s| CumulativeCounter::new(lost.with_label_values(&[s.as_str()])));

        let parse = counter_vec(
            r,
            "weir_datapath_parse_errors_total",
            "Packets the datapath could not fully parse (always passed), by reason.",
            &["reason"],
        )?;
        let parse_errors = parse_error::NAMES
            .iter()
            .map(|n| CumulativeCounter::new(parse.with_label_values(&[*n])))
            .collect();

        let build_info = gauge_vec(
            r,
            "weir_build_info",
            "Weir build information; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let datapath_info = gauge_vec(
            r,
            "weir_datapath_info",
            "How the datapath runs on this kernel (attach mode, kernel release); always 1.",
            &["attach_mode", "kernel"],
        )?;

        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(|source| MetricsError::Register {
            name: "process_*",
            source,
        })?;

        let flows_processed_cache = (0..FLOW_TYPES.len() * VERDICTS * PROTOCOLS.len())
            .map(|_| OnceLock::new())
            .collect();

        let flow_api_sent = IntCounter::new(
            "weir_flow_api_flows_sent_total",
            "Flows sent to flow API clients.",
        )
        .map_err(|source| MetricsError::Register {
            name: "weir_flow_api_flows_sent_total",
            source,
        })?;
        let export_vec = |name: &'static str, help: &str| {
            counter_vec(r, name, help, &["exporter"]).map(TotalsVec::new)
        };
        let flow_export = [
            export_vec(
                "weir_flow_export_lines_total",
                "Lines written by a flow-log exporter.",
            )?,
            export_vec(
                "weir_flow_export_write_errors_total",
                "Failed opens, writes or renames of a flow-log exporter.",
            )?,
            export_vec(
                "weir_flow_export_rotations_total",
                "File rotations of a flow-log exporter.",
            )?,
            export_vec(
                "weir_flow_export_filtered_total",
                "Flows a flow-log exporter's include/exclude filters kept out.",
            )?,
            export_vec(
                "weir_flow_export_dropped_total",
                "Flows dropped because a flow-log exporter's queue was full.",
            )?,
        ];
        Ok(Self {
            otel_exported: counter_vec(
                r,
                "weir_otel_records_exported_total",
                "Records (flow log records, metric data points) accepted by the OTLP receiver.",
                &["signal"],
            )
            .map(TotalsVec::new)?,
            otel_dropped: counter_vec(
                r,
                "weir_otel_records_dropped_total",
                "Records the OTLP exporter dropped, by reason (queue_full, retry_exhausted, rejected, shutdown).",
                &["signal", "reason"],
            )
            .map(TotalsVec::new)?,
            text_source: OnceLock::new(),
            flow_export,
            flow_export_up: gauge_vec(
                r,
                "weir_flow_export_up",
                "1 while a flow-log exporter runs, 0 when it ended or failed.",
                &["exporter"],
            )?,
            flow_export_config_errors: register(
                r,
                "weir_flow_export_config_errors_total",
                IntCounter::new(
                    "weir_flow_export_config_errors_total",
                    "Flow-log exporter entries (or whole files) refused on (re)load.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_flow_export_config_errors_total",
                    source,
                })?,
            )?,
            flow_api_enabled: gauge(
                r,
                "weir_flow_api_enabled",
                "1 while the Hubble-compatible flow API is serving, else 0.",
            )?,
            flow_api_streams: gauge(
                r,
                "weir_flow_api_streams",
                "GetFlows streams open right now.",
            )?,
            flow_api_flows_sent: register(r, "weir_flow_api_flows_sent_total", flow_api_sent)?,
            flow_api_requests: counter_vec(
                r,
                "weir_flow_api_requests_total",
                "Flow API calls, by method and gRPC status code.",
                &["method", "code"],
            )?,
            flow_api_refused: counter_vec(
                r,
                "weir_flow_api_refused_total",
                "Flow API connections or calls refused by TLS or token checks, by reason.",
                &["reason"],
            )?,
            datapath_info,
            flows_processed,
            flows_processed_cache,
            lost_events,
            datapath_packets: cumulative(
                r,
                "weir_datapath_packets_total",
                "Packets seen by the datapath programs.",
            )?,
            datapath_bytes: cumulative(
                r,
                "weir_datapath_bytes_total",
                "Bytes seen by the datapath programs.",
            )?,
            datapath_events_emitted: cumulative(
                r,
                "weir_datapath_events_emitted_total",
                "Flow events written into the kernel ring buffer.",
            )?,
            parse_errors,
            drops: counter_vec(
                r,
                "weir_datapath_drops_total",
                "Packets dropped by the datapath, by drop reason.",
                &["reason"],
            )
            .map(TotalsVec::new)?,
            conntrack_entries: gauge(r, "weir_conntrack_entries", "Entries in the conntrack map.")?,
            conntrack_capacity: gauge(
                r,
                "weir_conntrack_capacity",
                "Capacity of the conntrack map.",
            )?,
            conntrack_created: cumulative(
                r,
                "weir_conntrack_created_total",
                "Conntrack entries created.",
            )?,
            conntrack_insert_failures: cumulative(
                r,
                "weir_conntrack_insert_failures_total",
                "Conntrack entries the kernel could not insert (the connection is not tracked).",
            )?,
            ring_buffer_pending_bytes: gauge(
                r,
                "weir_ring_buffer_pending_bytes",
                "Bytes written by the kernel and not yet consumed from the ring buffer.",
            )?,
            ring_buffer_capacity_bytes: gauge(
                r,
                "weir_ring_buffer_capacity_bytes",
                "Size of the kernel ring buffer.",
            )?,
            flow_ring_flows: gauge(
                r,
                "weir_flow_ring_flows",
                "Flows held in the in-memory flow ring.",
            )?,
            flow_ring_capacity: gauge(
                r,
                "weir_flow_ring_capacity",
                "Capacity of the in-memory flow ring.",
            )?,
            queue_length: gauge_vec(
                r,
                "weir_queue_length",
                "Items waiting in a bounded queue.",
                &["queue"],
            )?,
            queue_capacity: gauge_vec(r, "weir_queue_capacity", "Bound of a queue.", &["queue"])?,
            queue_dropped: counter_vec(
                r,
                "weir_queue_dropped_total",
                "Items dropped because a queue was full.",
                &["queue"],
            )
            .map(TotalsVec::new)?,
            flow_ring_lost_last: Mutex::new(HashMap::new()),
            flow_log_lines: cumulative(
                r,
                "weir_flow_log_lines_total",
                "Lines written to the flow log.",
            )?,
            flow_log_write_errors: cumulative(
                r,
                "weir_flow_log_write_errors_total",
                "Failed writes to the flow log (each loses its lines).",
            )?,
            policy_audited: cumulative(
                r,
                "weir_policy_audited_total",
                "Packets policy would have dropped, passed because their endpoint is in audit mode.",
            )?,
            policy_lookups: cumulative(
                r,
                "weir_policy_lookups_total",
                "Policy verdicts looked up in the datapath (new connections and re-checks after a policy change).",
            )?,
            policy_rules: gauge(r, "weir_policy_rules", "Entries in the policy rule map.")?,
            policy_endpoints: gauge(
                r,
                "weir_policy_endpoints",
                "Endpoints with policy state in the datapath.",
            )?,
            policy_policies: gauge(
                r,
                "weir_policy_policies",
                "NetworkPolicies compiled into the datapath.",
            )?,
            policy_invalid: gauge(
                r,
                "weir_policy_invalid",
                "NetworkPolicies refused as invalid right now (each keeps its last good version, if any; the others stay enforced).",
            )?,
            policy_generation: gauge(
                r,
                "weir_policy_generation",
                "Policy generation the datapath runs (bumped on every change of the policy maps).",
            )?,
            policy_sync_duration: {
                let g = Gauge::new(
                    "weir_policy_sync_duration_seconds",
                    "Time the last policy sync took to compile and write the maps.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_policy_sync_duration_seconds",
                    source,
                })?;
                r.register(Box::new(g.clone()))
                    .map_err(|source| MetricsError::Register {
                        name: "weir_policy_sync_duration_seconds",
                        source,
                    })?;
                g
            },
            policy_syncs: {
                let c = IntCounter::new(
                    "weir_policy_syncs_total",
                    "Policy syncs that changed the datapath's maps.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_policy_syncs_total",
                    source,
                })?;
                r.register(Box::new(c.clone()))
                    .map_err(|source| MetricsError::Register {
                        name: "weir_policy_syncs_total",
                        source,
                    })?;
                c
            },
            policy_map_write_errors: {
                let c = IntCounter::new(
                    "weir_policy_map_write_errors_total",
                    "Policy map writes the kernel refused (the next sync writes every entry again).",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_policy_map_write_errors_total",
                    source,
                })?;
                r.register(Box::new(c.clone()))
                    .map_err(|source| MetricsError::Register {
                        name: "weir_policy_map_write_errors_total",
                        source,
                    })?;
                c
            },
            endpoints: gauge(
                r,
                "weir_endpoints",
                "Local endpoints (pods) managed by this agent.",
            )?,
            endpoints_restored: {
                let name = "weir_endpoints_restored_total";
                let c = IntCounter::new(
                    name,
                    "Endpoints re-attached at start from the endpoints file (pods networked before an agent restart).",
                )
                .map_err(|source| MetricsError::Register { name, source })?;
                register(r, name, c)?
            },
            endpoints_file_errors: {
                let name = "weir_endpoints_file_errors_total";
                let c = IntCounter::new(
                    name,
                    "Failed reads or writes of the endpoints file (an agent restart may then not re-attach every pod).",
                )
                .map_err(|source| MetricsError::Register { name, source })?;
                register(r, name, c)?
            },
            state_objects: gauge_vec(
                r,
                "weir_state_objects",
                "Objects in the cluster model, by kind.",
                &["kind"],
            )?,
            state_sync_errors: {
                let c = IntCounter::new(
                    "weir_state_sync_errors_total",
                    "Failed state synchronisations.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_state_sync_errors_total",
                    source,
                })?;
                register(r, "weir_state_sync_errors_total", c)?
            },
            state_last_sync_timestamp: {
                let g = Gauge::new(
                    "weir_state_last_sync_timestamp_seconds",
                    "Unix time of the last successful state synchronisation.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "weir_state_last_sync_timestamp_seconds",
                    source,
                })?;
                register(r, "weir_state_last_sync_timestamp_seconds", g)?
            },
            registry,
        })
    }

    /// The registry (for serving or for tests); add no metric elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one flow in `weir_flows_processed_total`.
    #[inline]
    pub fn observe_flow(&self, flow: &Flow) {
        let t = match flow.event_type.map(|e| e.r#type) {
            Some(EVENT_TYPE_TRACE) => 0,
            Some(EVENT_TYPE_DROP) => 1,
            // Cilium's MessageTypePolicyVerdict and MessageTypeAccessLog (L7).
            Some(5) => 2,
            Some(129) => 3,
            _ => match flow.r#type {
                FlowType::L7 => 3,
                FlowType::Sock => 4,
                _ => 5,
            },
        };
        let v = (flow.verdict as usize).min(VERDICTS - 1);
        let p = match &flow.l4 {
            None => 0,
            Some(Layer4::Tcp(_)) => 1,
            Some(Layer4::Udp(_)) => 2,
            Some(Layer4::Icmpv4(_)) => 3,
            Some(Layer4::Icmpv6(_)) => 4,
            Some(Layer4::Sctp(_)) => 5,
            Some(Layer4::Vrrp(_)) => 6,
            Some(Layer4::Igmp(_)) => 7,
        };
        let slot = &self.flows_processed_cache[(t * VERDICTS + v) * PROTOCOLS.len() + p];
        slot.get_or_init(|| {
            let verdict = Verdict::from_i32(v as i32).unwrap_or_default();
            self.flows_processed.with_label_values(&[
                FLOW_TYPES[t],
                verdict.as_str_name(),
                PROTOCOLS[p],
            ])
        })
        .inc();
    }

    /// Adds `n` lost events at `source`.
    pub fn add_lost_events(&self, source: LostSource, n: u64) {
        self.lost(source).counter.inc_by(n);
    }

    /// Records the current cumulative total of events lost at `source` (the
    /// kernel's `EVENTS_LOST` counter); the difference is added.
    pub fn set_lost_events_total(&self, source: LostSource, total: u64) {
        self.lost(source).set_total(total);
    }

    fn lost(&self, source: LostSource) -> &CumulativeCounter {
        &self.lost_events[source as usize]
    }

    /// Records the cumulative parse-error total for reason index `reason`
    /// (`weir_common::parse_error::*`); unknown indices are ignored.
    pub fn set_parse_errors_total(&self, reason: u32, total: u64) {
        if let Some(c) = self.parse_errors.get(reason as usize) {
            c.set_total(total);
        }
    }

    /// Records the cumulative drop total for `reason` (a label value such as a
    /// `DropReason` proto name, or "all" when the datapath does not break
    /// drops down).
    pub fn set_drops_total(&self, reason: &str, total: u64) {
        self.drops.set_total(&[reason], total);
    }

    /// Sets `weir_datapath_info{attach_mode, kernel}` (one series).
    pub fn set_datapath_info(&self, attach_mode: &str, kernel: &str) {
        self.datapath_info.reset();
        self.datapath_info
            .with_label_values(&[attach_mode, kernel])
            .set(1);
    }

    /// Counts one finished flow API call (`code` as gRPC names it, e.g. `OK`).
    pub fn flow_api_request(&self, method: &str, code: &str) {
        self.flow_api_requests
            .with_label_values(&[method, code])
            .inc();
    }

    /// Counts one refused flow API connection or call.
    pub fn flow_api_refused(&self, reason: &str) {
        self.flow_api_refused.with_label_values(&[reason]).inc();
    }

    /// Creates `weir_flow_api_refused_total{reason}` at 0 for each reason, so
    /// alerts and dashboards see the series before the first refusal.
    pub fn flow_api_refused_reasons(&self, reasons: &[&str]) {
        for r in reasons {
            let _ = self.flow_api_refused.with_label_values(&[*r]);
        }
    }

    /// Copies the OTLP exporter's cumulative counters of one signal.
    pub fn set_otel(&self, signal: &str, exported: u64, dropped: &[(&str, u64)]) {
        self.otel_exported.set_total(&[signal], exported);
        for (reason, n) in dropped {
            self.otel_dropped.set_total(&[signal, reason], *n);
        }
    }

    /// Copies one flow-log exporter's cumulative counters and state.
    pub fn set_exporter(&self, name: &str, c: ExporterCounters, up: bool) {
        let totals = [
            c.lines_written,
            c.write_errors,
            c.rotations,
            c.filtered_out,
            c.queue_dropped,
        ];
        for (vec, total) in self.flow_export.iter().zip(totals) {
            vec.set_total(&[name], total);
        }
        self.flow_export_up
            .with_label_values(&[name])
            .set(i64::from(up));
    }

    /// Sets `weir_state_objects{kind}`.
    pub fn set_state_objects(&self, kind: &str, n: i64) {
        self.state_objects.with_label_values(&[kind]).set(n);
    }

    /// Sets the gauges and drop counter of one bounded queue.
    pub fn set_queue(&self, queue: &str, len: usize, capacity: usize, dropped_total: u64) {
        self.queue_length
            .with_label_values(&[queue])
            .set(len as i64);
        self.queue_capacity
            .with_label_values(&[queue])
            .set(capacity as i64);
        self.queue_dropped.set_total(&[queue], dropped_total);
    }

    /// Updates the flow ring gauges and every subscriber queue (as
    /// `queue="flows_<name>"`); flows dropped for subscribers also count as
    /// `weir_lost_events_total{source="flow_ring"}`.
    pub fn observe_store(&self, store: &FlowStore) {
        self.flow_ring_flows.set(store.len() as i64);
        self.flow_ring_capacity.set(store.capacity() as i64);
        for QueueStats {
            name,
            len,
            capacity,
            dropped,
            ..
        } in store.subscriber_stats()
        {
            let queue = format!("flows_{name}");
            self.set_queue(&queue, len, capacity, dropped);
            let mut last = self
                .flow_ring_lost_last
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let prev = last.insert(queue, dropped).unwrap_or(0);
            let delta = if dropped >= prev {
                dropped - prev
            } else {
                dropped
            };
            if delta > 0 {
                self.add_lost_events(LostSource::FlowRing, delta);
            }
        }
    }

    /// Everything in the Prometheus text exposition format: the registry,
    /// then what [`Metrics::set_text_source`] adds.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        if let Some(extra) = self.text_source.get() {
            (extra.0)(&mut out);
        }
        out
    }

    /// Families written straight into [`Metrics::encode`]'s output, outside
    /// the registry (the Hubble families, see
    /// `HubbleMetrics::new_split`). Set once; later calls are ignored.
    pub fn set_text_source(&self, source: Box<dyn Fn(&mut String) + Send + Sync>) {
        let _ = self.text_source.set(TextSource(source));
    }

    /// The content type of [`Metrics::encode`]'s output.
    pub fn content_type(&self) -> String {
        TextEncoder::new().format_type().to_owned()
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &'static str,
    m: M,
) -> Result<M, MetricsError> {
    r.register(Box::new(m.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(m)
}

fn counter_vec(
    r: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    register(r, name, v)
}

fn gauge_vec(
    r: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    register(r, name, v)
}

fn gauge(r: &Registry, name: &'static str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help).map_err(|source| MetricsError::Register { name, source })?;
    register(r, name, g)
}

fn cumulative(
    r: &Registry,
    name: &'static str,
    help: &str,
) -> Result<CumulativeCounter, MetricsError> {
    let c =
        IntCounter::new(name, help).map_err(|source| MetricsError::Register { name, source })?;
    Ok(CumulativeCounter::new(register(r, name, c)?))
}
