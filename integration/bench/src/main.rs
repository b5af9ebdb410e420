//! `weir-bench`: Weir's benchmark figures, one subcommand each, plus `all`.
//!
//! Every figure is a ratio against a baseline measured in the same run on
//! this machine, and prints a human table followed by one JSON line (figure,
//! baseline, measured, ratio, target, pass, duration, machine, date,
//! details, notes); the policy figures print several such reports measured
//! in one run (policy-rules against 10 rules and against iptables,
//! policy-latency and pod start, policy-compile on one node and with every
//! pod local). Exit status: 0 every target met, 2 a target missed, 1 a
//! figure could not be measured, 130 interrupted (everything made is removed
//! first). The privileged figures need root; the bench's own namespaces are
//! `wbench-<pid>-*`, the labs' `weirlab-*`; the flow API figures' sockets
//! live in temporary directories `wbench-api-*`.

mod bpfstats;
mod conn;
mod decode;
mod exporters;
mod flowapi;
mod flowapi_slow;
mod iptables;
mod lost;
mod metrics5;
mod policy_compile;
mod policy_latency;
mod policy_rules;
mod pps;
mod proc;
mod prom;
mod ready;
mod report;
mod ring;
mod rss;
mod sockopt;
#[cfg(test)]
mod test_support;
mod topo;
mod traffic;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "weir-bench",
    version,
    about = "Weir's benchmark figures, each a ratio against a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Also append each figure's JSON line to this file.
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,
    /// The `weir` binary (default: next to this executable).
    #[arg(long, global = true)]
    weir: Option<PathBuf>,
    /// The `weir-cni` binary (default: next to this executable).
    #[arg(long, global = true)]
    cni: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// veth packets/s with the tc programs attached vs without (target ratio >= 0.95).
    DatapathPps(PpsArgs),
    /// Flow events decoded and enriched per second on one core (target >= 1M/s).
    Decode(DecodeArgs),
    /// Events lost at 400k events/s through the real agent (target 0).
    LostEvents(LostArgs),
    /// Agent RSS idle with 1 000 endpoints vs 0 (target <= 50 MiB).
    AgentRss(RssArgs),
    /// GetFlows p99 with a selective filter over a full 65 535-flow ring (target <= 20 ms).
    FlowApiQuery(QueryArgs),
    /// One follow client at 100k flows/s (target: all received, none lost).
    FlowApiFollow(FollowArgs),
    /// Agent event rate with 10 slow flow API clients vs none (target ratio >= 0.95).
    FlowApiSlowClients(SlowArgs),
    /// GET /metrics time at 10 000 series vs ~100 (target p99 <= 5 ms).
    MetricsScrape(ScrapeArgs),
    /// Metric updates per flow event, weir_* + Hubble default set (target <= 100 ns).
    MetricsUpdate(UpdateArgs),
    /// Flow exporters (file, OTLP gRPC, OTLP HTTP) at 100k flows/s and flat out (target: keep up, or drop and count).
    ExportThroughput(ExportArgs),
    /// New connections/s through an endpoint with 10 / 1 000 / 10 000 policy rules, and vs iptables (targets: 10 000 within 10 % of 10; >= 5x iptables).
    PolicyRules(PolicyRulesArgs),
    /// Policy file change -> enforcement on a real agent with 1 000 policies (target <= 50 ms), and new pods' first packets (target: none passes a default deny).
    PolicyLatency(PolicyLatencyArgs),
    /// Compile time and memory at 10 000 policies over 10 000 pods (target: one policy change recompiles in <= 50 ms; the state fits the maps).
    PolicyCompile(PolicyCompileArgs),
    /// One policy-compile case in this process (used by policy-compile).
    #[command(name = "__policy-compile-worker", hide = true)]
    PolicyCompileWorker(PolicyCompileArgs),
    /// Every figure, in turn.
    All(AllArgs),
}

#[derive(Args, Debug)]
struct PpsArgs {
    /// Seconds per measuring window.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// Windows per mode (with / without programs), alternating.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 18)]
    payload: usize,
}

#[derive(Args, Debug)]
struct DecodeArgs {
    /// Endpoints (pods) in the index.
    #[arg(long, default_value_t = 1000)]
    endpoints: u32,
    /// Events per timed run.
    #[arg(long, default_value_t = 3_000_000)]
    events: u64,
    /// Timed runs per loop, alternating decode / baseline.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Args, Debug)]
struct LostArgs {
    /// Events per second to aim for (two per packet).
    #[arg(long, default_value_t = 400_000)]
    events_per_s: u64,
    /// Seconds each flood runs.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Floods, each measured on its own.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sender threads sharing the rate (each its own flow).
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Let pod b read the datagrams (by default it keeps the port bound but
    /// does not read, which spares the CPU the copies to user space).
    #[arg(long)]
    read: bool,
}

#[derive(Args, Debug)]
struct RssArgs {
    /// Endpoints to create.
    #[arg(long, default_value_t = 1000)]
    endpoints: u32,
    /// How to create them: real pods through weir-cni, or veth pairs registered through the local API.
    #[arg(long, value_enum, default_value_t = rss::Via::Cni)]
    via: rss::Via,
    /// Seconds of idle before each reading.
    #[arg(long, default_value_t = 5.0)]
    idle: f64,
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// Timed queries per form (all matches, last 20) and per ring.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Flows in the full ring.
    #[arg(long, default_value_t = 65_535)]
    ring: usize,
}

#[derive(Args, Debug)]
struct FollowArgs {
    /// Flows per second of the paced phases.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Seconds of each paced phase.
    #[arg(long, default_value_t = 5.0)]
    paced: f64,
    /// Seconds of each flat-out phase.
    #[arg(long, default_value_t = 3.0)]
    flat_out: f64,
}

#[derive(Args, Debug)]
struct SlowArgs {
    /// Events per second to aim for (two per packet).
    #[arg(long, default_value_t = 400_000)]
    events_per_s: u64,
    /// Seconds each flood runs.
    #[arg(long, default_value_t = 8.0)]
    window: f64,
    /// Slow clients attached in the second flood.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Of those, how many read one message per second (the others never read).
    #[arg(long, default_value_t = 5)]
    readers: usize,
    /// Sender threads sharing the rate.
    #[arg(long, default_value_t = 2)]
    senders: usize,
}

#[derive(Args, Debug)]
struct ScrapeArgs {
    /// Series to grow the large registry to.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Timed scrapes per registry size.
    #[arg(long, default_value_t = 300)]
    scrapes: usize,
}

#[derive(Args, Debug)]
struct UpdateArgs {
    /// Flow events per timed run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Timed runs per loop.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Offered flows/s of the paced runs.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Flows per paced run.
    #[arg(long, default_value_t = 300_000)]
    flows: u64,
    /// Flows per flat-out run.
    #[arg(long, default_value_t = 2_000_000)]
    flat_out_flows: u64,
}

#[derive(Args, Debug)]
struct PolicyRulesArgs {
    /// Seconds per measuring window.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// Windows per mode.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Rule counts (comma-separated; the smallest is the flatness baseline).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1_000, 10_000])]
    rules: Vec<usize>,
    /// iptables flavours to compare with (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [iptables::Backend::Nft, iptables::Backend::Legacy])]
    iptables: Vec<iptables::Backend>,
    /// Measure Weir only (no iptables windows).
    #[arg(long)]
    no_iptables: bool,
    /// Client threads opening connections.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Back-to-back window pairs (fewest vs most rules) for the flatness ratio.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Seconds per window of a pair.
    #[arg(long, default_value_t = 0.5)]
    pair_window: f64,
}

#[derive(Args, Debug)]
struct PolicyLatencyArgs {
    /// Policies in force for the measured flips.
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    /// Flips per direction and phase.
    #[arg(long, default_value_t = 10)]
    flips: usize,
    /// New pods in the default-deny namespace.
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// New pods in a namespace without policy (the baseline).
    #[arg(long, default_value_t = 10)]
    control_pods: usize,
    /// Timeout (ms) of a probe expected to be dropped.
    #[arg(long, default_value_t = 5)]
    probe_timeout_ms: u64,
}

#[derive(Args, Debug)]
struct PolicyCompileArgs {
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    #[arg(long, default_value_t = 100)]
    pods_per_namespace: usize,
    #[arg(long, default_value_t = 100)]
    policies_per_namespace: usize,
    /// Local endpoints in the first case (the second has every pod local).
    #[arg(long, default_value_t = 100)]
    local: usize,
    /// Compiles timed per kind.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

impl PolicyCompileArgs {
    fn options(&self) -> policy_compile::Options {
        policy_compile::Options {
            namespaces: self.namespaces,
            pods_per_namespace: self.pods_per_namespace,
            policies_per_namespace: self.policies_per_namespace,
            local: self.local,
            reps: self.reps.clamp(1, 50),
            ..policy_compile::Options::default()
        }
    }
}

#[derive(Args, Debug)]
struct AllArgs {
    /// How agent-rss creates its endpoints.
    #[arg(long, value_enum, default_value_t = rss::Via::Cni)]
    rss_via: rss::Via,
}

/// The binaries the agent figures run.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub weir: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    fn check(&self) -> Result<()> {
        for b in [&self.weir, &self.cni] {
            if !b.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release --workspace --bins` (or pass --weir / --cni)",
                    b.display()
                );
            }
        }
        Ok(())
    }
}

/// One figure to run.
#[derive(Debug)]
enum Figure {
    Pps(pps::Options),
    Decode(decode::Options),
    Lost(lost::Options),
    Rss(rss::Options),
    ApiQuery(flowapi::QueryOptions),
    ApiFollow(flowapi::FollowOptions),
    ApiSlow(flowapi_slow::Options),
    MetricsScrape(metrics5::ScrapeOptions),
    MetricsUpdate(metrics5::UpdateOptions),
    Export(exporters::Options),
    PolicyRules(policy_rules::Options),
    PolicyLatency(policy_latency::Options),
    PolicyCompile(policy_compile::Options),
}

impl Figure {
    fn name(&self) -> &'static str {
        match self {
            Figure::Pps(_) => "datapath-pps",
            Figure::Decode(_) => "decode",
            Figure::Lost(_) => "lost-events",
            Figure::Rss(_) => "agent-rss",
            Figure::ApiQuery(_) => "flow-api-query",
            Figure::ApiFollow(_) => "flow-api-follow",
            Figure::ApiSlow(_) => "flow-api-slow-clients",
            Figure::MetricsScrape(_) => "metrics-scrape",
            Figure::MetricsUpdate(_) => "metrics-update",
            Figure::Export(_) => "export-throughput",
            Figure::PolicyRules(_) => "policy-rules",
            Figure::PolicyLatency(_) => "policy-latency",
            Figure::PolicyCompile(_) => "policy-compile",
        }
    }

    /// Runs the figure; most give one report, the policy figures several
    /// measured in the same run.
    async fn run(&self, bins: &Binaries) -> Result<Vec<Report>> {
        match self {
            Figure::PolicyRules(o) => {
                self.need_root()?;
                policy_rules::run(o).await
            }
            Figure::PolicyLatency(o) => {
                self.need_root()?;
                bins.check()?;
                policy_latency::run(o, bins).await
            }
            Figure::PolicyCompile(o) => {
                let o = o.clone();
                tokio::task::spawn_blocking(move || policy_compile::run(&o))
                    .await
                    .context("the policy-compile thread panicked")?
            }
            _ => Ok(vec![self.run_one(bins).await?]),
        }
    }

    fn need_root(&self) -> Result<()> {
        if !weir_integration::is_root() {
            bail!(
                "{} needs root (network namespaces, BPF); run it as root",
                self.name()
            );
        }
        Ok(())
    }

    async fn run_one(&self, bins: &Binaries) -> Result<Report> {
        let unprivileged = matches!(
            self,
            Figure::Decode(_)
                | Figure::ApiQuery(_)
                | Figure::ApiFollow(_)
                | Figure::MetricsScrape(_)
                | Figure::MetricsUpdate(_)
                | Figure::Export(_)
        );
        if !unprivileged {
            self.need_root()?;
        }
        match self {
            Figure::Pps(o) => pps::run(o).await,
            Figure::Decode(o) => {
                let o = o.clone();
                tokio::task::spawn_blocking(move || decode::run(&o))
                    .await
                    .context("the decode thread panicked")?
            }
            Figure::Lost(o) => {
                bins.check()?;
                lost::run(o, bins).await
            }
            Figure::Rss(o) => {
                bins.check()?;
                rss::run(o, bins).await
            }
            Figure::ApiQuery(o) => flowapi::run_query(o).await,
            Figure::ApiFollow(o) => flowapi::run_follow(o).await,
            Figure::ApiSlow(o) => {
                bins.check()?;
                flowapi_slow::run(o, bins).await
            }
            // Each runs its own thread (and, where needed, its own runtime).
            Figure::MetricsScrape(o) => blocking(o.clone(), metrics5::run_scrape).await,
            Figure::MetricsUpdate(o) => blocking(o.clone(), metrics5::run_update).await,
            Figure::Export(o) => blocking(o.clone(), exporters::run).await,
            Figure::PolicyRules(_) | Figure::PolicyLatency(_) | Figure::PolicyCompile(_) => {
                unreachable!("run() handles the policy figures")
            }
        }
    }
}

/// Runs a synchronous figure off the async runtime.
async fn blocking<O: Send + 'static>(o: O, f: fn(&O) -> Result<Report>) -> Result<Report> {
    tokio::task::spawn_blocking(move || f(&o))
        .await
        .context("the figure's thread panicked")?
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        bail!("{what} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn figures(cmd: &Command) -> Result<Vec<Figure>> {
    Ok(match cmd {
        Command::DatapathPps(a) => vec![Figure::Pps(pps::Options {
            window: secs(a.window, "--window")?,
            reps: a.reps.clamp(1, 20),
            payload: a.payload.clamp(1, 1400),
        })],
        Command::Decode(a) => vec![Figure::Decode(decode::Options {
            endpoints: a.endpoints,
            events: a.events.clamp(10_000, 100_000_000),
            reps: a.reps.clamp(1, 20),
            ..decode::Options::default()
        })],
        Command::LostEvents(a) => vec![Figure::Lost(lost::Options {
            events_per_s: a.events_per_s,
            window: secs(a.window, "--window")?,
            reps: a.reps.clamp(1, 20),
            senders: a.senders.clamp(1, 8),
            read: a.read,
            ..lost::Options::default()
        })],
        Command::AgentRss(a) => vec![Figure::Rss(rss::Options {
            endpoints: a.endpoints,
            via: a.via,
            idle: secs(a.idle, "--idle")?,
            ..rss::Options::default()
        })],
        Command::FlowApiQuery(a) => vec![Figure::ApiQuery(flowapi::QueryOptions {
            queries: a.queries.clamp(1, 100_000),
            ring: a.ring,
        })],
        Command::FlowApiFollow(a) => vec![Figure::ApiFollow(flowapi::FollowOptions {
            rate: a.rate,
            paced: secs(a.paced, "--paced")?,
            flat_out: secs(a.flat_out, "--flat-out")?,
        })],
        Command::FlowApiSlowClients(a) => vec![Figure::ApiSlow(flowapi_slow::Options {
            events_per_s: a.events_per_s,
            window: secs(a.window, "--window")?,
            clients: a.clients.clamp(1, 100),
            readers: a.readers,
            senders: a.senders.clamp(1, 8),
            ..flowapi_slow::Options::default()
        })],
        Command::MetricsScrape(a) => vec![Figure::MetricsScrape(metrics5::ScrapeOptions {
            series: a.series,
            scrapes: a.scrapes.clamp(1, 10_000),
        })],
        Command::MetricsUpdate(a) => vec![Figure::MetricsUpdate(metrics5::UpdateOptions {
            events: a.events.clamp(10_000, 100_000_000),
            reps: a.reps.clamp(1, 20),
        })],
        Command::ExportThroughput(a) => vec![Figure::Export(exporters::Options {
            rate: a.rate,
            flows: a.flows,
            flat_out_flows: a.flat_out_flows,
            ..exporters::Options::default()
        })],
        Command::PolicyRules(a) => vec![Figure::PolicyRules(policy_rules::Options {
            window: secs(a.window, "--window")?,
            reps: a.reps.clamp(1, 20),
            rules: {
                if a.rules.iter().any(|&n| n == 0 || n > 100_000) {
                    bail!("--rules: each count must be 1..=100000");
                }
                a.rules.clone()
            },
            iptables: if a.no_iptables {
                Vec::new()
            } else {
                a.iptables.clone()
            },
            clients: a.clients.clamp(1, 16),
            pairs: a.pairs.clamp(1, 500),
            pair_window: secs(a.pair_window, "--pair-window")?,
        })],
        Command::PolicyLatency(a) => vec![Figure::PolicyLatency(policy_latency::Options {
            policies: a.policies,
            flips: a.flips.clamp(1, 100),
            pods: a.pods.min(500),
            control_pods: a.control_pods.min(100),
            probe_timeout: Duration::from_millis(a.probe_timeout_ms.clamp(1, 1000)),
            ..policy_latency::Options::default()
        })],
        Command::PolicyCompile(a) => vec![Figure::PolicyCompile(a.options())],
        Command::PolicyCompileWorker(_) => Vec::new(),
        Command::All(a) => vec![
            Figure::Decode(decode::Options::default()),
            Figure::Pps(pps::Options::default()),
            Figure::Lost(lost::Options::default()),
            Figure::Rss(rss::Options {
                via: a.rss_via,
                ..rss::Options::default()
            }),
            Figure::ApiQuery(flowapi::QueryOptions::default()),
            Figure::ApiFollow(flowapi::FollowOptions::default()),
            Figure::ApiSlow(flowapi_slow::Options::default()),
            Figure::MetricsScrape(metrics5::ScrapeOptions::default()),
            Figure::MetricsUpdate(metrics5::UpdateOptions::default()),
            Figure::Export(exporters::Options::default()),
            Figure::PolicyCompile(policy_compile::Options::default()),
            Figure::PolicyRules(policy_rules::Options::default()),
            Figure::PolicyLatency(policy_latency::Options::default()),
        ],
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::PolicyCompileWorker(a) = &cli.command {
        return compile_worker(a);
    }
    let figures = match figures(&cli.command) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            return ExitCode::from(64);
        }
    };
    let bins = Binaries {
        weir: cli
            .weir
            .clone()
            .unwrap_or_else(|| weir_integration::sibling_binary("weir")),
        cni: cli
            .cni
            .clone()
            .unwrap_or_else(|| weir_integration::sibling_binary("weir-cni")),
    };
    if weir_integration::is_root() {
        let stale = topo::sweep_stale();
        if !stale.is_empty() {
            tracing::info!(?stale, "removed namespaces of dead bench runs");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run_all(figures, bins, cli.json_out))
}

/// The hidden worker of policy-compile: one case, one JSON line.
fn compile_worker(a: &PolicyCompileArgs) -> ExitCode {
    let o = a.options();
    let scale = policy_compile::Scale {
        namespaces: o.namespaces,
        pods_per_namespace: o.pods_per_namespace,
        policies_per_namespace: o.policies_per_namespace,
        local: o.local,
        reps: o.reps,
    };
    match policy_compile::work(&scale) {
        Ok(r) => match serde_json::to_string(&r) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weir-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A figure's outcome for the summary: (pass, ratio) or the error.
type Outcome = Result<(bool, f64), String>;

async fn run_all(figures: Vec<Figure>, bins: Binaries, json_out: Option<PathBuf>) -> ExitCode {
    let mut summary: Vec<(String, Outcome)> = Vec::new();
    let many = figures.len() > 1
        || figures.iter().any(|f| {
            matches!(
                f,
                Figure::PolicyRules(_) | Figure::PolicyLatency(_) | Figure::PolicyCompile(_)
            )
        });
    for figure in &figures {
        tracing::info!(figure = figure.name(), "running");
        // Dropping the figure's future on Ctrl-C runs its guards, which
        // remove what it made.
        let result = tokio::select! {
            r = figure.run(&bins) => r,
            signal = interrupted() => {
                eprintln!("weir-bench: {signal}; what the figure made was removed");
                return ExitCode::from(130);
            }
        };
        match result {
            Ok(reports) => {
                for report in reports {
                    print!("{}", report.table());
                    println!("{}", report.json_line());
                    let _ = std::io::stdout().flush();
                    if let Some(path) = &json_out
                        && let Err(e) = append_line(path, &report.json_line())
                    {
                        eprintln!("weir-bench: writing {}: {e:#}", path.display());
                    }
                    summary.push((report.figure.clone(), Ok((report.pass, report.ratio))));
                }
            }
            Err(e) => {
                eprintln!("weir-bench: {}: {e:#}", figure.name());
                let line = serde_json::json!({"figure": figure.name(), "error": format!("{e:#}")});
                println!("{line}");
                if let Some(path) = &json_out {
                    let _ = append_line(path, &line.to_string());
                }
                summary.push((figure.name().into(), Err(format!("{e:#}"))));
            }
        }
    }
    if many {
        println!("== summary ==");
        for (name, r) in &summary {
            match r {
                Ok((pass, ratio)) => println!(
                    "  {name:<30} {}  ratio {ratio:.4}",
                    if *pass { "PASS" } else { "MISS" }
                ),
                Err(e) => println!("  {name:<30} ERROR {e}"),
            }
        }
    }
    if summary.iter().any(|(_, r)| r.is_err()) {
        ExitCode::FAILURE
    } else if summary.iter().any(|(_, r)| matches!(r, Ok((false, _)))) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}

fn append_line(path: &std::path::Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEIR_BENCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,weir_bench=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
