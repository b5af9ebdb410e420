//! Figure `lost-events`: events lost at about 400 000 events/s of real
//! traffic through the real agent. A lab (weir-integration) runs `weir agent
//! --aggregation none --flow-log off` in a node namespace with two pods wired
//! by weir-cni; a UDP flood from pod a to pod b, paced to 200 000 packets/s,
//! is seen at two interfaces (a's FROM_ENDPOINT, b's TO_ENDPOINT), so each
//! packet is two events. The numbers come from the agent's /metrics before and
//! after the flood. Owns only this measurement; the lab removes what it made.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use weir_integration::{FlowLog, Lab, LabOptions, NamespaceSpec, PodSpec};

use crate::prom::Page;
use crate::report::{Machine, Op, Quantity, Report, Subject, Target};
use crate::traffic::{Flood, FloodConfig, per_second};
use crate::{Binaries, proc};

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Events per second to aim for (two per packet).
    pub events_per_s: u64,
    /// How long each flood runs.
    pub window: Duration,
    /// Floods, each measured on its own (quiet before, drain after).
    pub reps: usize,
    /// UDP payload bytes.
    pub payload: usize,
    /// Sender threads, sharing the rate (each its own flow).
    pub senders: usize,
    /// Whether the receiver in pod b reads the datagrams (see
    /// `FloodConfig::read`).
    pub read: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            events_per_s: 400_000,
            window: Duration::from_secs(10),
            reps: 3,
            payload: 18,
            senders: 2,
            read: false,
        }
    }
}

/// The counters this figure reads, from one /metrics page.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    packets: f64,
    emitted: f64,
    lost_kernel: f64,
    lost_agent_queue: f64,
    lost_flow_ring: f64,
    flows: f64,
}

impl Counts {
    fn read(page: &Page) -> Result<Counts> {
        for name in [
            "weir_datapath_packets_total",
            "weir_datapath_events_emitted_total",
            "weir_flows_processed_total",
        ] {
            if !page.has(name) {
                bail!("the agent's /metrics has no {name}");
            }
        }
        let lost = |source| page.sum("weir_lost_events_total", &[("source", source)]);
        Ok(Counts {
            packets: page.sum("weir_datapath_packets_total", &[]),
            emitted: page.sum("weir_datapath_events_emitted_total", &[]),
            lost_kernel: lost("kernel_ring_buffer"),
            lost_agent_queue: lost("agent_queue"),
            lost_flow_ring: lost("flow_ring"),
            flows: page.sum("weir_flows_processed_total", &[]),
        })
    }

    fn plus(&self, o: &Counts) -> Counts {
        Counts {
            packets: self.packets + o.packets,
            emitted: self.emitted + o.emitted,
            lost_kernel: self.lost_kernel + o.lost_kernel,
            lost_agent_queue: self.lost_agent_queue + o.lost_agent_queue,
            lost_flow_ring: self.lost_flow_ring + o.lost_flow_ring,
            flows: self.flows + o.flows,
        }
    }

    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            packets: self.packets - o.packets,
            emitted: self.emitted - o.emitted,
            lost_kernel: self.lost_kernel - o.lost_kernel,
            lost_agent_queue: self.lost_agent_queue - o.lost_agent_queue,
            lost_flow_ring: self.lost_flow_ring - o.lost_flow_ring,
            flows: self.flows - o.flows,
        }
    }
}

async fn counts(lab: &Lab) -> Result<Counts> {
    let text = lab.metrics_text().await.context("reading /metrics")?;
    Counts::read(&Page::parse(&text))
}

/// One flood window's numbers.
#[derive(Clone, Copy, Debug)]
struct Window {
    counts: Counts,
    flood_time: Duration,
    sent_pps: f64,
    received_pps: f64,
    send_errors: u64,
    /// Largest `weir_ring_buffer_pending_bytes` seen on /metrics (sampled
    /// once a second, as the agent updates it).
    ring_pending_max: f64,
    /// Agent CPU seconds per second over the flood and the drain after it.
    agent_cpu: f64,
}

impl Window {
    fn lost(&self) -> f64 {
        self.counts.lost_kernel + self.counts.lost_agent_queue
    }

    fn events_per_s(&self) -> f64 {
        per_second(self.counts.emitted.max(0.0) as u64, self.flood_time)
    }
}

pub async fn run(opts: &Options, bins: &Binaries) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.events_per_s < 2 || opts.window.is_zero() || opts.reps == 0 {
        bail!("lost-events: --events-per-s must be at least 2, --window and --reps positive");
    }
    let mut lab_opts = LabOptions::new(&bins.weir, &bins.cni);
    lab_opts.serve_bin = None;
    lab_opts.node_name = "wbench".into();
    lab_opts.flow_log = Some(FlowLog::Off);
    lab_opts.aggregation = Some("none".into());
    let mut lab = Lab::start(lab_opts).await.context("starting the lab")?;
    lab.add_namespace(NamespaceSpec::new("bench"))?;
    lab.add_pods(vec![
        PodSpec::new("bench", "a").label("app", "sender"),
        PodSpec::new("bench", "b").label("app", "receiver"),
    ])
    .await
    .context("adding the pods")?;
    let dst_ip = lab.pod_ip("bench/b").context("pod b has no address")?;
    let flood_cfg = FloodConfig {
        sender_netns: lab.pod_netns_path("bench/a").context("pod a's netns")?,
        receiver_netns: lab.pod_netns_path("bench/b").context("pod b's netns")?,
        dst: SocketAddr::new(dst_ip, 9000),
        payload: opts.payload,
        rate_pps: Some(opts.events_per_s.div_ceil(2)),
        senders: opts.senders,
        read: opts.read,
        max_duration: opts.window + Duration::from_secs(30),
    };
    let agent_pid = lab.agent_pid().context("the lab has no agent")?;
    lab.settle().await;
    let ring_bytes =
        Page::parse(&lab.metrics_text().await?).sum("weir_ring_buffer_capacity_bytes", &[]);

    let mut windows = Vec::with_capacity(opts.reps);
    for rep in 0..opts.reps {
        let w = window(&lab, &flood_cfg, opts.window, agent_pid).await?;
        tracing::info!(
            rep,
            events_per_s = w.events_per_s(),
            lost = w.lost(),
            ring_pending_max = w.ring_pending_max,
            "flood window"
        );
        windows.push(w);
    }
    let status = lab.agent_status().await.ok();
    lab.shutdown().await.context("removing the lab")?;

    let total = windows
        .iter()
        .fold(Counts::default(), |acc, w| acc.plus(&w.counts));
    let flood_time: Duration = windows.iter().map(|w| w.flood_time).sum();
    let lost = total.lost_kernel + total.lost_agent_queue;
    let events_per_s = per_second(total.emitted.max(0.0) as u64, flood_time);
    let lost_ratio = if total.emitted > 0.0 {
        lost / total.emitted
    } else {
        f64::NAN
    };
    let mut report = Report::new(
        "lost-events",
        Quantity::new(
            "packets the datapath saw during the floods (weir_datapath_packets_total delta; 2 per packet sent)",
            total.packets,
            "packets",
        ),
        Quantity::new(
            "events lost during the floods (kernel ring buffer + agent queue)",
            lost,
            "events",
        ),
        Target::new(Subject::Ratio, Op::AtMost, 0.0, ""),
        started.elapsed(),
        machine,
    );
    report.set_ratio(lost_ratio, "events lost / events emitted");
    let ring_max = windows
        .iter()
        .map(|w| w.ring_pending_max)
        .fold(0.0, f64::max);
    report
        .detail("events_per_s_achieved", events_per_s.round())
        .detail("events_per_s_target", opts.events_per_s)
        .detail("events_emitted", total.emitted)
        .detail("events_lost_kernel_ring_buffer", total.lost_kernel)
        .detail("events_lost_agent_queue", total.lost_agent_queue)
        .detail("flows_lost_flow_ring", total.lost_flow_ring)
        .detail("flows_processed", total.flows)
        .detail(
            "flows_processed_per_s",
            per_second(total.flows.max(0.0) as u64, flood_time).round(),
        )
        .detail("ring_buffer_bytes", ring_bytes)
        .detail("ring_pending_bytes_max_seen", ring_max)
        .detail(
            "ring_seconds_at_this_rate",
            if events_per_s > 0.0 {
                // Each record is a FlowEvent plus the ring's 8-byte header.
                let record = (std::mem::size_of::<weir_common::FlowEvent>() + 8) as f64;
                json!(((ring_bytes / record / events_per_s) * 1000.0).round() / 1000.0)
            } else {
                json!(null)
            },
        )
        .detail("packets_per_s_pacing", flood_cfg.rate_pps.unwrap_or(0))
        .detail("sender_threads", opts.senders as u64)
        .detail("receiver_reads", opts.read)
        .detail("reps", opts.reps as u64)
        .detail("window_s", opts.window.as_secs_f64())
        .detail(
            "windows",
            json!(
                windows
                    .iter()
                    .map(|w| json!({
                        "events_per_s": w.events_per_s().round(),
                        "events_emitted": w.counts.emitted,
                        "lost_kernel_ring_buffer": w.counts.lost_kernel,
                        "lost_agent_queue": w.counts.lost_agent_queue,
                        "flows_processed": w.counts.flows,
                        "packets_per_s_sent": w.sent_pps.round(),
                        "packets_per_s_received": w.received_pps.round(),
                        "sendmmsg_errors": w.send_errors,
                        "ring_pending_bytes_max_seen": w.ring_pending_max,
                        "agent_cpu_percent_of_one_core": (w.agent_cpu * 1000.0).round() / 10.0,
                    }))
                    .collect::<Vec<_>>()
            ),
        )
        .detail(
            "agent_status_events_lost",
            status.map_or(json!(null), |s| json!(s.events_lost)),
        )
        .note("the senders, the kernel's forwarding through the node namespace, the programs and the agent all share the same 2 vCPUs: the agent competes with the traffic for CPU, as on a busy node")
        .note("agent CPU is averaged over each flood and the 3 s of draining after it");
    if !opts.read {
        report.note("pod b keeps the port bound but does not read: datagrams past its socket buffer are dropped by pod b's kernel after the TO_ENDPOINT program saw them");
    }
    if events_per_s < 0.95 * opts.events_per_s as f64 {
        report.fail_because(format!(
            "the floods reached {events_per_s:.0} events/s, below 95 % of the {} asked for: the losses were not measured at the target rate",
            opts.events_per_s
        ));
    }
    Ok(report)
}

/// One flood: quiet, counters, flood for `length` (sampling the ring fill),
/// drain, counters.
async fn window(lab: &Lab, cfg: &FloodConfig, length: Duration, agent_pid: u32) -> Result<Window> {
    // The agent copies kernel counters into /metrics once a second: after
    // 2.5 s of quiet the page holds everything that happened before.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = counts(lab).await?;
    let cpu_before = (proc::cpu_seconds(agent_pid)?, Instant::now());
    let flood = Flood::start(cfg)?;
    let s0 = flood.sample();
    let end = tokio::time::Instant::now() + length;
    let mut ring_pending_max: f64 = 0.0;
    while tokio::time::Instant::now() < end {
        let step = (end - tokio::time::Instant::now()).min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        if let Ok(text) = lab.metrics_text().await {
            ring_pending_max =
                ring_pending_max.max(Page::parse(&text).sum("weir_ring_buffer_pending_bytes", &[]));
        }
    }
    let running = flood.running();
    let s1 = flood.stop();
    if !running {
        bail!("the flood stopped before the window ended");
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after = counts(lab).await?;
    let cpu_after = (proc::cpu_seconds(agent_pid)?, Instant::now());
    if !lab.agent_running() {
        bail!("the agent died during the flood");
    }
    Ok(Window {
        counts: after.minus(&before),
        flood_time: s1.at - s0.at,
        sent_pps: s1.sent_pps_since(&s0),
        received_pps: s1.received_pps_since(&s0),
        send_errors: s1.send_errors - s0.send_errors,
        ring_pending_max,
        agent_cpu: (cpu_after.0 - cpu_before.0) / (cpu_after.1 - cpu_before.1).as_secs_f64(),
    })
}
