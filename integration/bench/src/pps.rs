//! Figure `datapath-pps`: the per-packet cost of Weir's tc programs, as the
//! packets/s a veth pair carries with the programs attached divided by the
//! packets/s it carries without them, measured alternately in the same run.
//!
//! Set-up: two bench namespaces joined by a veth pair; weir-datapath loaded
//! with aggregation Full and attached (ingress + egress) to BOTH ends, so every
//! packet runs two programs, as a pod-to-pod packet does on a node (the
//! sender's FROM_ENDPOINT, the receiver's TO_ENDPOINT); the event ring is
//! drained by a reader task. Owns only this measurement; everything it makes
//! goes away with its guards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use weir_common::stat;
use weir_datapath::{Aggregation, Datapath, DatapathOptions};

use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median, round, spread};
use crate::ring;
use crate::topo::{self, Pair, in_netns};
use crate::traffic::{Flood, FloodConfig};

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of one measuring window.
    pub window: Duration,
    /// Windows per mode (with / without).
    pub reps: usize,
    /// UDP payload bytes.
    pub payload: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(2),
            reps: 5,
            payload: 18,
        }
    }
}

/// One window's numbers.
#[derive(Clone, Copy, Debug)]
struct Window {
    attached: bool,
    received_pps: f64,
    sent_pps: f64,
    /// Packets the programs counted during the window (0 when detached).
    program_packets: u64,
}

pub async fn run(opts: &Options) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.reps == 0 || opts.window.is_zero() {
        bail!("datapath-pps: --reps and --window must be positive");
    }

    // Drop order (reverse of declaration): flood, reader, datapath, namespaces.
    let pair = tokio::task::spawn_blocking(Pair::create)
        .await
        .context("creating the namespaces")??;
    let mut dp = Datapath::load(&DatapathOptions {
        aggregation: Aggregation::Full,
        ..DatapathOptions::default()
    })
    .context("loading the datapath")?;
    let events_read = Arc::new(AtomicU64::new(0));
    let reader = ring::drain(&mut dp, events_read.clone())?;

    let max_duration = opts.window * (2 * opts.reps as u32 + 2) + Duration::from_secs(30);
    let flood = Flood::start(&FloodConfig {
        sender_netns: pair.a.clone(),
        receiver_netns: pair.b.clone(),
        dst: format!("{}:9000", topo::ADDR_B).parse()?,
        payload: opts.payload,
        rate_pps: None,
        senders: 1,
        read: true,
        max_duration,
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut windows = Vec::with_capacity(2 * opts.reps);
    for rep in 0..opts.reps {
        // ABAB... would favour whichever mode runs second each time if the
        // machine drifts; alternate the order per repetition instead.
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            set_attached(&mut dp, &pair, attached)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !flood.running() {
                bail!("the flood stopped early");
            }
            let c0 = program_packets(&dp)?;
            let s0 = flood.sample();
            tokio::time::sleep(opts.window).await;
            let s1 = flood.sample();
            let c1 = program_packets(&dp)?;
            let w = Window {
                attached,
                received_pps: s1.received_pps_since(&s0),
                sent_pps: s1.sent_pps_since(&s0),
                program_packets: c1.saturating_sub(c0),
            };
            tracing::info!(?w, "window");
            windows.push(w);
        }
    }
    let last = flood.stop();
    set_attached(&mut dp, &pair, false)?;
    let counters = dp.counters().context("reading counters")?;
    drop(reader);
    drop(dp);
    drop(pair);

    let with: Vec<f64> = pick(&windows, true, |w| w.received_pps);
    let without: Vec<f64> = pick(&windows, false, |w| w.received_pps);
    // The programs must have seen the traffic when attached (twice per packet:
    // egress of wb0, ingress of wb1), and nothing when detached.
    for w in &windows {
        let received = w.received_pps * opts.window.as_secs_f64();
        if w.attached && (w.program_packets as f64) < 1.5 * received {
            bail!(
                "programs attached but counted only {} packets for {:.0} received: not on the path",
                w.program_packets,
                received
            );
        }
        if !w.attached && w.program_packets > 0 {
            bail!(
                "programs detached but counted {} packets",
                w.program_packets
            );
        }
    }

    let (med_with, med_without) = (median(&with), median(&without));
    // Each repetition's own with/without ratio: robust to the machine
    // getting faster or slower over the run.
    let paired: Vec<f64> = windows
        .chunks(2)
        .filter_map(|p| match p {
            [x, y] => {
                let (w, wo) = if x.attached { (x, y) } else { (y, x) };
                (wo.received_pps > 0.0).then(|| w.received_pps / wo.received_pps)
            }
            _ => None,
        })
        .collect();
    let mut report = Report::new(
        "datapath-pps",
        Quantity::new(
            "veth packets/s received, programs not attached (median)",
            med_without.round(),
            "pps",
        ),
        Quantity::new(
            "veth packets/s received, programs attached to both veth ends (median)",
            med_with.round(),
            "pps",
        ),
        Target::new(Subject::Ratio, Op::AtLeast, 0.95, ""),
        started.elapsed(),
        machine,
    );
    let cost_ns = if med_with > 0.0 && med_without > 0.0 {
        (1e9 / med_with - 1e9 / med_without) / 2.0
    } else {
        f64::NAN
    };
    report
        .detail("pps_with_programs", med_with.round())
        .detail("pps_without_programs", med_without.round())
        .detail("program_cost_ns_per_run", round(cost_ns, 1))
        .detail("ratio_per_rep", json!(paired.iter().map(|r| (r * 1e4).round() / 1e4).collect::<Vec<_>>()))
        .detail("ratio_per_rep_median", round(median(&paired), 4))
        .detail("spread_with", round(spread(&with), 4))
        .detail("spread_without", round(spread(&without), 4))
        .detail("window_s", opts.window.as_secs_f64())
        .detail("reps", opts.reps as u64)
        .detail("payload_bytes", opts.payload as u64)
        .detail(
            "windows",
            json!(
                windows
                    .iter()
                    .map(|w| json!({
                        "attached": w.attached,
                        "received_pps": w.received_pps.round(),
                        "sent_pps": w.sent_pps.round(),
                        "program_packets": w.program_packets,
                    }))
                    .collect::<Vec<_>>()
            ),
        )
        .detail("events_read", events_read.load(Ordering::Relaxed))
        .detail("events_lost", counters.stats[stat::EVENTS_LOST as usize])
        .detail("packets_sent_total", last.sent)
        .detail("packets_received_total", last.received)
        .detail("sendmmsg_errors", last.send_errors)
        .note("sender, receiver and the programs (softirq) share the same 2 vCPUs with everything else on the machine; the ratio, not the absolute pps, is the figure")
        .note("each packet runs two programs (egress of one veth end, ingress of the other), like a pod-to-pod packet on a node; program_cost_ns_per_run is the added time per packet halved");
    if spread(&with) > 0.1 || spread(&without) > 0.1 {
        report
            .note("window-to-window spread above 10 %: the machine was busy; re-run when quieter");
    }
    Ok(report)
}

fn pick(windows: &[Window], attached: bool, f: impl Fn(&Window) -> f64) -> Vec<f64> {
    windows
        .iter()
        .filter(|w| w.attached == attached)
        .map(f)
        .collect()
}

fn program_packets(dp: &Datapath) -> Result<u64> {
    Ok(dp.counters().context("reading counters")?.stats[stat::PACKETS as usize])
}

/// Attaches to (or detaches from) both veth ends, each from a thread inside
/// its namespace: aya resolves names and creates links in the calling
/// thread's namespace.
fn set_attached(dp: &mut Datapath, pair: &Pair, attached: bool) -> Result<()> {
    for (ns, ifname) in [(&pair.a, topo::IF_A), (&pair.b, topo::IF_B)] {
        in_netns(ns, || {
            if attached {
                dp.attach(ifname).map(|_| ())
            } else {
                dp.detach(ifname)
            }
        })?
        .with_context(|| {
            format!(
                "{} {ifname}",
                if attached {
                    "attaching to"
                } else {
                    "detaching from"
                }
            )
        })?;
    }
    if dp.attached().len() != if attached { 2 } else { 0 } {
        return Err(anyhow!(
            "expected the programs on {} interfaces, found {:?}",
            if attached { 2 } else { 0 },
            dp.attached()
        ));
    }
    Ok(())
}
