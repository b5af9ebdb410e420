//! Command-line surface of `weir`: subcommands, flags, exit codes.
//!
//! Flags override the config file. A bad option exits with 64 (EX_USAGE)
//! and a message naming it; a runtime failure exits with 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Aggregation, Config, ConfigError, FlowLogFormat};

/// Exit status for a bad option or config (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Weir: eBPF pod networking and flow visibility for Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: load the datapath, serve metrics and the local API.
    Agent(Box<AgentArgs>),
    /// Show the agent's status (over its local API socket).
    Status(SocketArgs),
    /// List the endpoints the agent knows.
    Endpoints(SocketArgs),
    /// Run a live demo: a lab of pods in network namespaces with traffic between them.
    Demo(DemoArgs),
    /// Turn the Hubble-compatible flow API on or off at runtime, or show its state.
    Flows(FlowsArgs),
    /// Observe flows through the flow API, as `hubble observe` does.
    Observe(Box<crate::observe::ObserveArgs>),
    /// Ask the NetworkPolicy compiler: why a connection is allowed or denied
    /// (explain), which recorded flows a change would turn around (what-if).
    Policy(Box<crate::policy_cli::PolicyArgs>),
}

#[derive(Args, Debug)]
struct FlowsArgs {
    #[command(subcommand)]
    action: FlowsAction,
    /// Local API socket of the agent.
    #[arg(long, env = "WEIR_SOCKET", default_value = weir_localapi::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text", global = true)]
    output: String,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum FlowsAction {
    /// Start serving the flow API (no restart; the flow ring is kept).
    Enable,
    /// Stop serving the flow API: listeners close, open streams end.
    Disable,
    /// Show whether the flow API is on and where it listens.
    Status,
}

#[derive(Args, Debug, Default)]
struct AgentArgs {
    /// YAML config file; flags override it.
    #[arg(long, short = 'c', env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of Kubernetes manifests to read and watch (config: manifests).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Node name (config: nodeName; default: hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Local API socket (config: socket).
    #[arg(long, env = "WEIR_SOCKET")]
    socket: Option<PathBuf>,
    /// Metrics listen address, or "off" (config: metrics.address / metrics.enabled).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Flow log: off, stdout or a file path (config: flowLog.output).
    #[arg(long)]
    flow_log: Option<String>,
    /// Hubble-style flow-log exporters file, watched (config: flowLogsConfig).
    #[arg(long)]
    flow_logs_config: Option<PathBuf>,
    /// Flow log format: json or compact (config: flowLog.format).
    #[arg(long, value_parser = ["json", "compact"])]
    flow_log_format: Option<String>,
    /// In-kernel aggregation: full or none (config: datapath.aggregation).
    #[arg(long, value_parser = ["full", "none"])]
    aggregation: Option<String>,
    /// Report interval of long-lived connections, e.g. 5s (config: datapath.reportInterval).
    #[arg(long)]
    report_interval: Option<String>,
    /// Flows kept in memory (config: flows.ringCapacity).
    #[arg(long)]
    flow_ring_capacity: Option<usize>,
    /// Run the datapath in this network namespace (config: netns).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Serve the flow API from the start (config: flowApi.enabled; default off).
    #[arg(long)]
    flow_api: bool,
    /// Unix socket of the flow API, or "off" (config: flowApi.socket).
    #[arg(long)]
    flow_api_socket: Option<String>,
    /// TCP address of the flow API (config: flowApi.address).
    #[arg(long)]
    flow_api_address: Option<String>,
}

#[derive(Args, Debug)]
struct SocketArgs {
    /// Local API socket of the agent.
    #[arg(long, env = "WEIR_SOCKET", default_value = weir_localapi::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Where the demo's agent serves /metrics.
    #[arg(long, default_value = "127.0.0.1:9965")]
    metrics_addr: String,
    /// The demo agent's local API socket.
    #[arg(long, default_value = weir_localapi::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Stop by itself after this long (e.g. 30s); default: run until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Path of weir-cni (default: next to this binary).
    #[arg(long)]
    cni: Option<PathBuf>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match cli.command {
        Command::Agent(args) => agent(*args),
        Command::Status(args) => local_call(args, true),
        Command::Endpoints(args) => local_call(args, false),
        Command::Demo(args) => demo(args),
        Command::Flows(args) => flows(args),
        Command::Observe(args) => crate::observe::run(*args),
        Command::Policy(args) => crate::policy_cli::run(*args),
    }
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("weir: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn agent(args: AgentArgs) -> ExitCode {
    let cfg = match build_config(args) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let validated = match cfg.validate() {
        Ok(v) => v,
        Err(e) => return usage_error(e),
    };
    init_tracing(&validated.config);
    match crate::daemon::run(validated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weir agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_config(a: AgentArgs) -> Result<Config, ConfigError> {
    let mut c = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.manifests {
        c.manifests = Some(v);
    }
    if let Some(v) = a.node_name {
        c.node_name = v;
    }
    if let Some(v) = a.socket {
        c.socket = v;
    }
    if let Some(v) = a.metrics_addr {
        if v == "off" {
            c.metrics.enabled = false;
        } else {
            c.metrics.enabled = true;
            c.metrics.address = v;
        }
    }
    if let Some(v) = a.flow_log {
        c.flow_log.output = v;
    }
    if let Some(v) = a.flow_logs_config {
        c.flow_logs_config = Some(v);
    }
    if let Some(v) = a.flow_log_format {
        c.flow_log.format = if v == "compact" {
            FlowLogFormat::Compact
        } else {
            FlowLogFormat::Json
        };
    }
    if let Some(v) = a.aggregation {
        c.datapath.aggregation = if v == "none" {
            Aggregation::None
        } else {
            Aggregation::Full
        };
    }
    if let Some(v) = a.report_interval {
        c.datapath.report_interval = v;
    }
    if let Some(v) = a.flow_ring_capacity {
        c.flows.ring_capacity = v;
    }
    if let Some(v) = a.netns {
        c.netns = Some(v);
    }
    if a.flow_api {
        c.flow_api.enabled = true;
    }
    if let Some(v) = a.flow_api_socket {
        c.flow_api.socket = if v == "off" {
            PathBuf::new()
        } else {
            PathBuf::from(v)
        };
    }
    if let Some(v) = a.flow_api_address {
        c.flow_api.address = v;
    }
    Ok(c)
}

fn init_tracing(c: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&c.log.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match c.log.format {
        crate::config::LogFormat::Json => b.json().try_init(),
        crate::config::LogFormat::Text => b.try_init(),
    };
}

fn local_call(args: SocketArgs, status: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let client = weir_localapi::Client::new(&args.socket).with_timeout(Duration::from_secs(10));
    let json = args.output == "json";
    let result: Result<String, weir_localapi::ClientError> = rt.block_on(async {
        if status {
            let s = client.status().await?;
            Ok(if json {
                serde_json::to_string_pretty(&s).unwrap_or_default()
            } else {
                format!(
                    "Node:         {}\nReady:        {}\nVersion:      {}\nUptime:       {:.0}s\nEndpoints:    {}\nFlows:        {}/{} ({} seen)\nLost events:  {}\nAttach mode:  {}\nMetrics:      {}",
                    s.node_name,
                    s.ready,
                    s.version,
                    s.uptime_seconds,
                    s.endpoints,
                    s.flows_in_ring,
                    s.ring_capacity,
                    s.flows_seen,
                    s.events_lost,
                    s.attach_mode,
                    if s.metrics_addr.is_empty() { "off".to_string() } else { format!("http://{}/metrics", s.metrics_addr) },
                ) + "\n" + &flow_api_text(&s.flow_api)
                    + &hubble_status(&s.flow_api).await
            })
        } else {
            let eps = client.endpoints().await?;
            Ok(if json {
                serde_json::to_string_pretty(&eps).unwrap_or_default()
            } else {
                let mut out = format!("{:<6} {:<40} {:<16} {}\n", "ID", "POD", "INTERFACE", "IPS");
                for e in eps {
                    let r = &e.registration;
                    let ips: Vec<String> = r.ips.iter().map(|i| i.to_string()).collect();
                    out.push_str(&format!(
                        "{:<6} {:<40} {:<16} {}\n",
                        e.id,
                        format!("{}/{}", r.namespace, r.pod),
                        r.host_ifname,
                        ips.join(",")
                    ));
                }
                out.trim_end().to_string()
            })
        }
    });
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("weir: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn flows(args: FlowsArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let client = weir_localapi::Client::new(&args.socket).with_timeout(Duration::from_secs(15));
    let result = rt.block_on(async {
        match args.action {
            FlowsAction::Enable => client.set_flow_api(true).await,
            FlowsAction::Disable => client.set_flow_api(false).await,
            FlowsAction::Status => client.flow_api().await,
        }
    });
    match result {
        Ok(state) => {
            if args.output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&state).unwrap_or_default()
                );
            } else {
                println!("{}", flow_api_text(&state));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hubble status`'s lines, from the flow API's ServerStatus over its unix
/// socket, when it is on; otherwise nothing.
async fn hubble_status(s: &weir_localapi::FlowApiState) -> String {
    if !s.enabled || s.socket.is_empty() {
        return String::new();
    }
    let server = format!("unix://{}", s.socket);
    match crate::observe::flow_api_status_text(&server).await {
        Ok(text) => format!("\n{text}"),
        Err(e) => format!("\nHealthcheck (via {server}): {e}"),
    }
}

/// The flow API's state in a few lines, for `weir flows` and `weir status`.
pub fn flow_api_text(s: &weir_localapi::FlowApiState) -> String {
    if !s.enabled {
        return "Flow API:     disabled (enable it with `weir flows enable`)".to_string();
    }
    let mut out = String::from("Flow API:     enabled");
    if !s.socket.is_empty() {
        out.push_str(&format!("\n  unix:       {}", s.socket));
    }
    if !s.address.is_empty() {
        out.push_str(&format!(
            "\n  tcp:        {} ({})",
            s.address, s.tcp_security
        ));
    }
    out.push_str(&format!("\n  streams:    {}", s.streams));
    out
}

fn demo(args: DemoArgs) -> ExitCode {
    let duration = match args.duration.as_deref().map(crate::config::parse_duration) {
        Some(Err(m)) => return usage_error(format!("invalid option --duration: {m}")),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let metrics_addr = match args.metrics_addr.parse() {
        Ok(a) => a,
        Err(e) => return usage_error(format!("invalid option --metrics-addr: {e}")),
    };
    let weir_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weir: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cni_bin = args
        .cni
        .unwrap_or_else(|| weir_bin.with_file_name("weir-cni"));
    let opts = weir_integration::demo::DemoOptions {
        weir_bin,
        cni_bin,
        metrics_addr,
        socket: args.socket,
        duration,
    };
    match weir_integration::demo::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
