//! `weir-lab`: run a scenario in a lab (`run`), remove what dead runs left
//! (`cleanup`), and the pods' servers and hostNetwork pods' probes (`serve`,
//! `probe`, hidden, run by the lab).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_integration::probe::{self, OutcomeLine};
use weir_integration::record::{self, Sweep};
use weir_integration::runner::{self, RunOptions};
use weir_integration::{LabOptions, PortSpec, Protocol, Scenario, serve};

#[derive(Parser)]
#[command(
    name = "weir-lab",
    version,
    about = "Weir's lab: a cluster of network namespaces on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab a scenario describes, run its steps, print the results as JSON.
    Run {
        /// The scenario file (YAML).
        scenario: PathBuf,
        /// The weir binary (default: next to weir-lab).
        #[arg(long)]
        weir: Option<PathBuf>,
        /// The weir-cni binary (default: next to weir-lab).
        #[arg(long)]
        cni: Option<PathBuf>,
        /// Leave the lab running; where things are is printed to stderr and under "kept".
        #[arg(long)]
        keep: bool,
        /// Include the flow log in the output under "flows".
        #[arg(long)]
        flows: bool,
        /// Default probe timeout in ms (overrides the scenario's timeout_ms).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Time in ms the agent gets to pick up changed manifests (overrides settle_ms).
        #[arg(long)]
        settle_ms: Option<u64>,
        /// The agent's --aggregation (full or none); default: the agent's.
        #[arg(long)]
        aggregation: Option<String>,
        /// Node name given to the agent.
        #[arg(long, default_value = "weir-lab")]
        node_name: String,
        /// Pretty-print the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Remove what dead lab runs left behind (kept runs included).
    Cleanup,
    /// Serve a pod's ports (run by the lab inside a pod's namespace).
    #[command(hide = true)]
    Serve {
        /// The pod's name: every answer.
        #[arg(long)]
        name: String,
        /// A TCP port (repeatable).
        #[arg(long)]
        tcp: Vec<u16>,
        /// A UDP port (repeatable).
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// Run one probe here and print its outcome as a JSON line (run by the
    /// lab inside a hostNetwork pod's cgroup).
    #[command(hide = true)]
    Probe {
        /// Destination address.
        #[arg(long)]
        dst: std::net::IpAddr,
        /// Destination port (ignored for ICMP).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// TCP, UDP or ICMP.
        #[arg(long, value_parser = parse_protocol)]
        protocol: Protocol,
        /// Timeout of the whole probe.
        #[arg(long)]
        timeout_ms: u64,
    },
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "ICMP" => Ok(Protocol::Icmp),
        _ => Err(format!("{s:?} is not TCP, UDP or ICMP")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            scenario,
            weir,
            cni,
            keep,
            flows,
            timeout_ms,
            settle_ms,
            aggregation,
            node_name,
            pretty,
        } => {
            let mut scenario = match Scenario::from_file(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("weir-lab: {}: {e}", scenario.display());
                    return ExitCode::from(2);
                }
            };
            if timeout_ms.is_some() {
                scenario.timeout_ms = timeout_ms;
            }
            if settle_ms.is_some() {
                scenario.settle_ms = settle_ms;
            }
            let mut options = LabOptions::default();
            if let Some(w) = weir {
                options.weir_bin = w;
            }
            if let Some(c) = cni {
                options.cni_bin = c;
            }
            options.aggregation = aggregation;
            options.node_name = node_name;
            let run_opts = RunOptions { keep, flows };
            match run(&scenario, options, &run_opts, pretty) {
                Ok(code) => ExitCode::from(code),
                Err((code, e)) => {
                    eprintln!("weir-lab: {e:#}");
                    ExitCode::from(code)
                }
            }
        }
        Cmd::Cleanup => {
            let report = record::sweep(Sweep::AllDead);
            let mut err = std::io::stderr();
            let _ = writeln!(
                err,
                "weir-lab cleanup: {} run(s), {} netns, {} process(es), {} path(s) removed",
                report.runs.len(),
                report.netns.len(),
                report.processes.len(),
                report.paths.len()
            );
            for e in &report.errors {
                let _ = writeln!(err, "  not removed: {e}");
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Serve { name, tcp, udp } => {
            let ports: Vec<PortSpec> = tcp
                .iter()
                .map(|&port| PortSpec {
                    name: None,
                    port,
                    protocol: Protocol::Tcp,
                })
                .chain(udp.iter().map(|&port| PortSpec {
                    name: None,
                    port,
                    protocol: Protocol::Udp,
                }))
                .collect();
            match serve::run_process(&name, &ports, std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weir-lab serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Probe {
            dst,
            port,
            protocol,
            timeout_ms,
        } => {
            let outcome = probe::run(dst, port, protocol, Duration::from_millis(timeout_ms));
            let line = serde_json::to_string(&OutcomeLine::from(outcome))
                .expect("an outcome always serializes");
            match writeln!(std::io::stdout().lock(), "{line}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weir-lab probe: cannot write stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs the scenario and prints its output; the exit code is 0, or 3 when
/// the run completed but a probe missed its expectation.
fn run(
    scenario: &Scenario,
    options: LabOptions,
    run_opts: &RunOptions,
    pretty: bool,
) -> Result<u8, (u8, anyhow::Error)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the runtime")
        .map_err(|e| (1, e))?;
    let output = rt
        .block_on(async {
            tokio::select! {
                r = runner::run(scenario, options, run_opts) => Some(r),
                // Ctrl-C: dropping the run future drops the lab, which removes itself.
                _ = tokio::signal::ctrl_c() => None,
            }
        })
        .ok_or_else(|| (130, anyhow::anyhow!("interrupted")))?
        .map_err(|e| (e.exit_code() as u8, anyhow::Error::new(e)))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Some(k) = &output.kept {
        eprintln!(
            "weir-lab: lab kept (run {}): dir {}, node netns {}, socket {}, metrics {}, agent pid {}; \
             pods: {}; remove with `weir-lab cleanup`",
            k.run_id,
            k.dir.display(),
            k.node_netns,
            k.socket.display(),
            k.metrics_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            k.agent_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            k.pod_netns
                .iter()
                .map(|(p, n)| format!("{p}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let json = if pretty {
        serde_json::to_string_pretty(&output)
    } else {
        serde_json::to_string(&output)
    }
    .context("cannot print the output")
    .map_err(|e| (1, e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")
        .context("cannot write stdout")
        .map_err(|e| (1, e))?;
    if output.expectations_failed() {
        eprint!("{}", runner::failure_report(&output));
        return Ok(3);
    }
    Ok(0)
}
