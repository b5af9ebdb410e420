//! Figure `flow-api-slow-clients`: does a slow flow API client slow the
//! datapath's event path? The real agent in a weir-integration lab (as
//! `lost-events` runs it: `--aggregation none --flow-log off`, pods a and b
//! made by weir-cni, a UDP flood from a to b paced to 400 000 events/s) with
//! `--flow-api --flow-api-socket <tmp>/hubble.sock`, measured twice with the
//! same flood: with no API client (baseline), then with slow clients attached
//! over the unix socket, each with `GetFlows follow=true`: some never read
//! their stream, the others read one message per second. The figure is the
//! agent's processed event rate (`weir_flows_processed_total`) with the
//! clients over without, plus the events lost in the kernel ring buffer and
//! the agent queue in both. Afterwards every client reads what is left of its
//! stream, to check that its drops reached it as `LostEvent`s and match
//! `weir_queue_dropped_total{queue="flows_flow_api"}`.
//! Owns only this measurement; the lab removes what it made.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::watch;
use tonic::Streaming;
use weir_api::proto::flow::LostEventSource;
use weir_api::proto::observer::get_flows_response::ResponseTypes;
use weir_api::proto::observer::observer_client::ObserverClient;
use weir_api::proto::observer::{GetFlowsRequest, GetFlowsResponse};
use weir_api_net::{AuthChannel, ClientTarget, ClientTls};
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
    /// Slow clients attached in the second phase.
    pub clients: usize,
    /// Of those, how many read one message per second (the others never read).
    pub readers: usize,
    /// Sender threads sharing the rate.
    pub senders: usize,
    /// UDP payload bytes.
    pub payload: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            events_per_s: 400_000,
            window: Duration::from_secs(8),
            clients: 10,
            readers: 5,
            senders: 2,
            payload: 18,
        }
    }
}

/// The counters this figure reads from one /metrics page.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    packets: f64,
    emitted: f64,
    flows: f64,
    lost_kernel: f64,
    lost_agent_queue: f64,
    lost_flow_ring: f64,
    api_dropped: f64,
    api_sent: f64,
}

impl Counts {
    fn read(page: &Page) -> Result<Counts> {
        for name in [
            "weir_datapath_packets_total",
            "weir_datapath_events_emitted_total",
            "weir_flows_processed_total",
            "weir_flow_api_flows_sent_total",
        ] {
            if !page.has(name) {
                bail!("the agent's /metrics has no {name}");
            }
        }
        let lost = |source| page.sum("weir_lost_events_total", &[("source", source)]);
        Ok(Counts {
            packets: page.sum("weir_datapath_packets_total", &[]),
            emitted: page.sum("weir_datapath_events_emitted_total", &[]),
            flows: page.sum("weir_flows_processed_total", &[]),
            lost_kernel: lost("kernel_ring_buffer"),
            lost_agent_queue: lost("agent_queue"),
            lost_flow_ring: lost("flow_ring"),
            api_dropped: page.sum("weir_queue_dropped_total", &[("queue", "flows_flow_api")]),
            api_sent: page.sum("weir_flow_api_flows_sent_total", &[]),
        })
    }

    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            packets: self.packets - o.packets,
            emitted: self.emitted - o.emitted,
            flows: self.flows - o.flows,
            lost_kernel: self.lost_kernel - o.lost_kernel,
            lost_agent_queue: self.lost_agent_queue - o.lost_agent_queue,
            lost_flow_ring: self.lost_flow_ring - o.lost_flow_ring,
            api_dropped: self.api_dropped - o.api_dropped,
            api_sent: self.api_sent - o.api_sent,
        }
    }
}

async fn page(lab: &Lab) -> Result<Page> {
    Ok(Page::parse(
        &lab.metrics_text().await.context("reading /metrics")?,
    ))
}

/// One flood's numbers.
#[derive(Clone, Debug)]
struct Window {
    counts: Counts,
    flood_time: Duration,
    sent_pps: f64,
    agent_cpu: f64,
    streams: f64,
    /// CPU seconds per second used by every other process on the machine
    /// (neither the agent nor this bench) during the flood.
    others_cpu: f64,
    /// The same for kernel threads (ksoftirqd, kworkers).
    kernel_threads_cpu: f64,
    /// Once a second during the flood.
    timeline: Vec<Value>,
}

impl Window {
    fn processed_per_s(&self) -> f64 {
        per_second(self.counts.flows.max(0.0) as u64, self.flood_time)
    }

    fn emitted_per_s(&self) -> f64 {
        per_second(self.counts.emitted.max(0.0) as u64, self.flood_time)
    }

    fn lost(&self) -> f64 {
        self.counts.lost_kernel + self.counts.lost_agent_queue
    }

    fn json(&self) -> Value {
        json!({
            "events_per_s_emitted": self.emitted_per_s().round(),
            "events_per_s_processed": self.processed_per_s().round(),
            "packets_seen": self.counts.packets,
            "events_emitted": self.counts.emitted,
            "flows_processed": self.counts.flows,
            "lost_kernel_ring_buffer": self.counts.lost_kernel,
            "lost_agent_queue": self.counts.lost_agent_queue,
            "lost_flow_ring": self.counts.lost_flow_ring,
            "flow_api_queue_dropped": self.counts.api_dropped,
            "flow_api_flows_sent": self.counts.api_sent,
            "flow_api_streams": self.streams,
            "packets_per_s_sent": self.sent_pps.round(),
            "agent_cpu_percent_of_one_core": (self.agent_cpu * 1000.0).round() / 10.0,
            "other_processes_cpu_percent_of_one_core": (self.others_cpu * 1000.0).round() / 10.0,
            "kernel_threads_cpu_percent_of_one_core": (self.kernel_threads_cpu * 1000.0).round() / 10.0,
            "per_second": self.timeline,
        })
    }
}

/// CPU seconds used so far by every process on the machine but `skip`
/// (all threads of each), by pid, and whether it is a kernel thread (no
/// command line: ksoftirqd, kworkers).
fn others_cpu(skip: &[u32]) -> HashMap<u32, (f64, bool)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !skip.contains(pid))
        .filter_map(|pid| {
            let kernel = std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .is_empty();
            Some((pid, (proc::cpu_seconds(pid).ok()?, kernel)))
        })
        .collect()
}

/// CPU seconds other processes used between two [`others_cpu`] readings (a
/// process that appeared in between counts whole; one that ended is
/// missed): (user-space processes, kernel threads).
fn others_cpu_between(
    before: &HashMap<u32, (f64, bool)>,
    after: &HashMap<u32, (f64, bool)>,
) -> (f64, f64) {
    let mut out = (0.0, 0.0);
    for (pid, (t, kernel)) in after {
        let d = t - before.get(pid).map_or(0.0, |b| b.0);
        if d > 0.0 {
            if *kernel {
                out.1 += d;
            } else {
                out.0 += d;
            }
        }
    }
    out
}

/// Quiet, counters, flood for `length` (sampling once a second), drain,
/// counters (as `lost-events`).
async fn window(lab: &Lab, cfg: &FloodConfig, length: Duration, agent_pid: u32) -> Result<Window> {
    let skip = [agent_pid, std::process::id()];
    // The agent copies kernel counters into /metrics once a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = Counts::read(&page(lab).await?)?;
    let cpu_before = (proc::cpu_seconds(agent_pid)?, Instant::now());
    let others_before = others_cpu(&skip);
    let flood = Flood::start(cfg)?;
    let s0 = flood.sample();
    let end = tokio::time::Instant::now() + length;
    let mut timeline = Vec::new();
    let mut prev = (before, cpu_before.0, s0);
    while tokio::time::Instant::now() < end {
        let step = (end - tokio::time::Instant::now()).min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        let (Ok(p), Ok(cpu)) = (page(lab).await, proc::cpu_seconds(agent_pid)) else {
            continue;
        };
        let Ok(c) = Counts::read(&p) else { continue };
        let s = flood.sample();
        let secs = (s.at - prev.2.at).as_secs_f64().max(1e-3);
        timeline.push(json!({
            "t_s": ((s.at - s0.at).as_secs_f64() * 10.0).round() / 10.0,
            "processed_per_s": ((c.flows - prev.0.flows) / secs).round(),
            "packets_per_s_sent": s.sent_pps_since(&prev.2).round(),
            "agent_cpu_percent": ((cpu - prev.1) / secs * 1000.0).round() / 10.0,
            "ring_pending_bytes": p.sum("weir_ring_buffer_pending_bytes", &[]),
            "lost_kernel_ring_buffer_so_far": c.lost_kernel - before.lost_kernel,
        }));
        prev = (c, cpu, s);
    }
    let running = flood.running();
    let s1 = flood.stop();
    let others = others_cpu_between(&others_before, &others_cpu(&skip));
    let others_over = s1.at - s0.at;
    if !running {
        bail!("the flood stopped before the window ended");
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after_page = page(lab).await?;
    let after = Counts::read(&after_page)?;
    let cpu_after = (proc::cpu_seconds(agent_pid)?, Instant::now());
    if !lab.agent_running() {
        bail!("the agent died during the flood");
    }
    Ok(Window {
        counts: after.minus(&before),
        flood_time: s1.at - s0.at,
        sent_pps: s1.sent_pps_since(&s0),
        agent_cpu: (cpu_after.0 - cpu_before.0) / (cpu_after.1 - cpu_before.1).as_secs_f64(),
        streams: after_page.sum("weir_flow_api_streams", &[]),
        others_cpu: others.0 / others_over.as_secs_f64().max(1e-3),
        kernel_threads_cpu: others.1 / others_over.as_secs_f64().max(1e-3),
        timeline,
    })
}

/// What one client saw on its stream.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    flows: u64,
    lost_ring: u64,
    lost_ring_markers: u64,
    lost_other: u64,
}

impl Seen {
    fn count(&mut self, r: &GetFlowsResponse) {
        match &r.response_types {
            Some(ResponseTypes::Flow(_)) => self.flows += 1,
            Some(ResponseTypes::LostEvents(l))
                if l.source == LostEventSource::HubbleRingBuffer as i32 =>
            {
                self.lost_ring += l.num_events_lost;
                self.lost_ring_markers += 1;
            }
            Some(ResponseTypes::LostEvents(l)) => self.lost_other += l.num_events_lost,
            _ => {}
        }
    }
}

/// A slow client: its own connection and one follow stream.
struct Slow {
    reads: bool,
    _client: ObserverClient<AuthChannel>,
    stream: Streaming<GetFlowsResponse>,
    /// Read while slow (one a second).
    slow: Seen,
    /// Read when draining at the end.
    drained: Seen,
}

async fn attach(socket: &Path, reads: bool) -> Result<Slow> {
    let target = ClientTarget::parse(
        &format!("unix://{}", socket.display()),
        ClientTls::default(),
    )
    .context("the socket path as a --server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let channel = loop {
        match weir_api_net::connect(&target).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("no flow API on the agent's socket after 10 s");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut client = ObserverClient::new(channel);
    let stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await
        .context("GetFlows follow")?
        .into_inner();
    Ok(Slow {
        reads,
        _client: client,
        stream,
        slow: Seen::default(),
        drained: Seen::default(),
    })
}

/// Reads one message a second until `stop`.
async fn read_slowly(mut c: Slow, mut stop: watch::Receiver<bool>) -> Slow {
    loop {
        tokio::select! {
            _ = stop.changed() => return c,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match c.stream.message().await {
            Ok(Some(m)) => c.slow.count(&m),
            _ => return c,
        }
    }
}

/// Reads everything queued, until 1 s passes without a message (or 20 s).
async fn drain(mut c: Slow) -> Slow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), c.stream.message()).await {
            Ok(Ok(Some(m))) => c.drained.count(&m),
            _ => break,
        }
    }
    c
}

pub async fn run(opts: &Options, bins: &Binaries) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.events_per_s < 2 || opts.window.is_zero() || opts.clients == 0 {
        bail!(
            "flow-api-slow-clients: --events-per-s must be at least 2, --window and --clients positive"
        );
    }
    let readers = opts.readers.min(opts.clients);
    let dir = tempfile::Builder::new()
        .prefix("wbench-api-")
        .tempdir()
        .context("creating a temporary directory for the flow API socket")?;
    let socket = dir.path().join("hubble.sock");
    let mut lab_opts = LabOptions::new(&bins.weir, &bins.cni);
    lab_opts.serve_bin = None;
    lab_opts.node_name = "wbench".into();
    lab_opts.flow_log = Some(FlowLog::Off);
    lab_opts.aggregation = Some("none".into());
    lab_opts.agent_args = vec![
        "--flow-api".into(),
        "--flow-api-socket".into(),
        socket.display().to_string(),
    ];
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
        read: false,
        max_duration: opts.window + Duration::from_secs(30),
    };
    let agent_pid = lab.agent_pid().context("the lab has no agent")?;
    lab.settle().await;
    let first = page(&lab).await?;
    if !first.has("weir_flow_api_enabled") || first.sum("weir_flow_api_enabled", &[]) != 1.0 {
        bail!("the agent's flow API is not enabled (weir_flow_api_enabled != 1)");
    }

    // Phase 1: no client.
    let alone = window(&lab, &flood_cfg, opts.window, agent_pid).await?;
    tracing::info!(
        processed_per_s = alone.processed_per_s(),
        lost = alone.lost(),
        "flood without API clients"
    );

    // Phase 2: the slow clients.
    let mut stalled = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut reading = Vec::new();
    for i in 0..opts.clients {
        let reads = i < readers;
        let c = attach(&socket, reads).await?;
        if reads {
            reading.push(tokio::spawn(read_slowly(c, stop_rx.clone())));
        } else {
            stalled.push(c);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let streams = page(&lab).await?.sum("weir_flow_api_streams", &[]);
        if streams >= opts.clients as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent reports {streams} flow API streams, {} clients attached",
                opts.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let with = window(&lab, &flood_cfg, opts.window, agent_pid).await?;
    tracing::info!(
        processed_per_s = with.processed_per_s(),
        lost = with.lost(),
        dropped = with.counts.api_dropped,
        "flood with slow API clients"
    );

    // Every client now reads what is left of its stream.
    let _ = stop_tx.send(true);
    let mut clients = stalled;
    for r in reading {
        clients.push(r.await.context("a slow reader panicked")?);
    }
    let clients = futures::future::join_all(clients.into_iter().map(drain)).await;
    // Let the once-a-second queue metrics catch up with the drains.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let end = Counts::read(&page(&lab).await?)?;
    let streams_end = page(&lab).await?.sum("weir_flow_api_streams", &[]);
    let status = lab.agent_status().await.ok();
    let per_client: Vec<Value> = clients
        .iter()
        .map(|c| {
            json!({
                "reads_one_per_second": c.reads,
                "slow_flows": c.slow.flows,
                "slow_lost_events_flow_ring": c.slow.lost_ring,
                "drained_flows": c.drained.flows,
                "lost_events_flow_ring": c.slow.lost_ring + c.drained.lost_ring,
                "lost_event_markers_flow_ring": c.slow.lost_ring_markers + c.drained.lost_ring_markers,
                "lost_events_other_sources": c.slow.lost_other + c.drained.lost_other,
            })
        })
        .collect();
    let markers_total: u64 = clients
        .iter()
        .map(|c| c.slow.lost_ring + c.drained.lost_ring)
        .sum();
    let clients_with_markers = clients
        .iter()
        .filter(|c| c.slow.lost_ring_markers + c.drained.lost_ring_markers > 0)
        .count();
    drop(clients);
    lab.shutdown().await.context("removing the lab")?;
    drop(dir);

    let api_dropped_total = end.api_dropped;
    let ratio = with.processed_per_s() / alone.processed_per_s();
    let mut report = Report::new(
        "flow-api-slow-clients",
        Quantity::new(
            "events/s the agent processed (weir_flows_processed_total) during the flood, flow API on, no client",
            alone.processed_per_s().round(),
            "events/s",
        ),
        Quantity::new(
            format!(
                "events/s the agent processed during the same flood with {} slow follow clients ({} never read, {readers} read one message/s)",
                opts.clients,
                opts.clients - readers
            ),
            with.processed_per_s().round(),
            "events/s",
        ),
        Target::new(Subject::Ratio, Op::AtLeast, 0.95, ""),
        started.elapsed(),
        machine,
    );
    report.set_ratio(ratio, "processed events/s with the slow clients / without");
    report
        .detail("events_per_s_target", opts.events_per_s)
        .detail("lost_kernel_ring_buffer_no_client", alone.counts.lost_kernel)
        .detail("lost_kernel_ring_buffer_slow_clients", with.counts.lost_kernel)
        .detail(
            "other_processes_cpu_percent_no_client",
            (alone.others_cpu * 1000.0).round() / 10.0,
        )
        .detail(
            "other_processes_cpu_percent_slow_clients",
            (with.others_cpu * 1000.0).round() / 10.0,
        )
        .detail("lost_agent_queue_no_client", alone.counts.lost_agent_queue)
        .detail("lost_agent_queue_slow_clients", with.counts.lost_agent_queue)
        .detail("flow_api_streams_during_flood", with.streams)
        .detail(
            "flow_api_queue_dropped_during_flood",
            with.counts.api_dropped,
        )
        .detail("flow_api_queue_dropped_total_at_end", api_dropped_total)
        .detail("lost_events_flow_ring_announced_to_clients", markers_total)
        .detail(
            "clients_that_got_lost_event_markers",
            format!("{clients_with_markers} of {}", opts.clients),
        )
        .detail("flow_api_streams_after_drain", streams_end)
        .detail(
            "windows",
            json!({"no_client": alone.json(), "slow_clients": with.json()}),
        )
        .detail("clients", json!(per_client))
        .detail(
            "agent_status_events_lost",
            status.map_or(json!(null), |s| json!(s.events_lost)),
        )
        .detail("window_s", opts.window.as_secs_f64())
        .note("agent defaults for the API: ring 4 095 flows, 4 096 flows queued per stream; each client has its own connection over the unix socket")
        .note("the never-reading clients hold their streams open without polling: HTTP/2 flow control fills, the server's stream task blocks, the stream's ring queue fills and the rest is dropped for that client only")
        .note("after the second flood every client reads its stream out; the LostEvent counts it gets (source HUBBLE_RING_BUFFER) are compared with weir_queue_dropped_total{queue=\"flows_flow_api\"}")
        .note("weir_lost_events_total{source=\"flow_ring\"} includes the slow clients' drops; kernel ring buffer and agent queue losses are the datapath's");
    if alone.emitted_per_s() < 0.95 * opts.events_per_s as f64 {
        report.fail_because(format!(
            "the flood without clients reached {:.0} events/s, below 95 % of the {} asked for",
            alone.emitted_per_s(),
            opts.events_per_s
        ));
    }
    if with.lost() > alone.lost() {
        report.fail_because(format!(
            "with the slow clients {} events were lost in the kernel ring buffer or agent queue, {} without",
            with.lost(),
            alone.lost()
        ));
    }
    if with.counts.api_dropped <= 0.0 {
        report.fail_because(
            "the slow clients' queues dropped nothing: they were not slow enough to measure",
        );
    }
    if markers_total as f64 != api_dropped_total {
        report.fail_because(format!(
            "the clients were told of {markers_total} lost flows, the agent counted {api_dropped_total} dropped for them"
        ));
    }
    Ok(report)
}
