//! `weir demo`: a small lab (a shop and its database) with steady traffic
//! between the pods, the agent printing flows live the way `hubble observe`
//! does, metrics and the local API at their usual places, and everything
//! removed on Ctrl-C, SIGTERM or after a set duration.
//!
//! Owns the demo's cast of pods and its traffic pattern. It writes a banner to
//! stdout on purpose: the demo is a terminal program, not a library log.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::agent::{AgentStdout, FlowLog};
use crate::lab::{Lab, LabOptions, sibling_binary};
use crate::probe::ProbeSpec;
use crate::spec::{NamespaceSpec, PodSpec, PortSpec};

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `weir` binary (default: `weir` next to the current executable).
    pub weir_bin: PathBuf,
    /// The `weir-cni` binary (default: next to the current executable).
    pub cni_bin: PathBuf,
    /// Metrics address in the machine's namespace.
    pub metrics_addr: SocketAddr,
    /// The agent's local API socket (so `weir` subcommands reach it).
    pub socket: PathBuf,
    /// Stop after this long (tests, CI); None: until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            weir_bin: sibling_binary("weir"),
            cni_bin: sibling_binary("weir-cni"),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9965)),
            socket: PathBuf::from(weir_localapi::DEFAULT_SOCKET),
            duration: None,
        }
    }
}

/// The demo's pods.
pub fn pods() -> Vec<PodSpec> {
    vec![
        PodSpec::new("shop", "frontend")
            .label("app", "frontend")
            .label("tier", "web")
            .port(PortSpec::tcp(80)),
        PodSpec::new("shop", "cart")
            .label("app", "cart")
            .label("tier", "api")
            .port(PortSpec::tcp(8080)),
        PodSpec::new("db", "postgres")
            .label("app", "postgres")
            .port(PortSpec::tcp(5432)),
        PodSpec::new("db", "dns")
            .label("app", "dns")
            .port(PortSpec::udp(53)),
    ]
}

/// The demo's NetworkPolicies: the database namespace admits only what the
/// shop needs (postgres from the cart, DNS from anywhere), so the
/// frontend's ping and its port-6379 attempt on postgres are DROPPED with
/// reason POLICY_DENIED; the shop namespace isolates its pods for ingress
/// too but runs in audit mode (namespace annotation), so the cart's calls
/// to the frontend pass with verdict AUDIT. Every flow names the policies
/// that allowed, denied or audited it.
pub fn policies() -> Vec<serde_json::Value> {
    use serde_json::json;
    let policy = |ns: &str, name: &str, spec: serde_json::Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        })
    };
    vec![
        policy(
            "db",
            "postgres-from-cart",
            json!({
                "podSelector": {"matchLabels": {"app": "postgres"}},
                "ingress": [{
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"team": "shop"}},
                        "podSelector": {"matchLabels": {"app": "cart"}},
                    }],
                    "ports": [{"port": 5432, "protocol": "TCP"}],
                }],
            }),
        ),
        policy(
            "db",
            "dns-from-anywhere",
            json!({
                "podSelector": {"matchLabels": {"app": "dns"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {}}],
                    "ports": [{"port": 53, "protocol": "UDP"}],
                }],
            }),
        ),
        policy(
            "shop",
            "default-deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "shop",
            "cart-from-frontend",
            json!({
                "podSelector": {"matchLabels": {"app": "cart"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                    "ports": [{"port": 8080}],
                }],
            }),
        ),
    ]
}

/// The traffic the demo repeats: one probe per tick, IPv4 and IPv6 alike.
/// Under [`policies`]: frontend -> postgres (ping, port 6379) is dropped,
/// cart -> frontend is audited, the rest is allowed.
pub fn traffic() -> Vec<ProbeSpec> {
    let base = [
        ProbeSpec::tcp("shop/frontend", "shop/cart", 8080),
        ProbeSpec::udp("shop/frontend", "db/dns", 53),
        ProbeSpec::tcp("shop/cart", "db/postgres", 5432),
        ProbeSpec::udp("shop/cart", "db/dns", 53),
        ProbeSpec::icmp("shop/frontend", "db/postgres"),
        ProbeSpec::tcp("shop/cart", "shop/frontend", 80),
        ProbeSpec::tcp("shop/frontend", "db/postgres", 6379),
        ProbeSpec::icmp("shop/cart", "shop/frontend"),
    ];
    base.iter()
        .cloned()
        .chain(base.iter().cloned().map(ProbeSpec::ipv6))
        .collect()
}

/// Time between two probes (about four flows a second, each with its reply).
const TICK: Duration = Duration::from_millis(250);

/// Runs the demo until Ctrl-C, SIGTERM, SIGHUP or `opts.duration`.
/// Runs on its own thread and runtime, so it may be called from inside
/// another tokio runtime.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("weir-demo".into())
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot build the demo's runtime")?
                .block_on(run_async(opts))
        })
        .context("cannot start the demo thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the demo thread panicked"))?
}

async fn run_async(opts: DemoOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a Ctrl-C during set-up must still lead to clean-up.
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;

    let mut options = LabOptions::new(&opts.weir_bin, &opts.cni_bin);
    options.node_name = "weir-demo".into();
    options.metrics_addr = opts.metrics_addr.to_string();
    options.socket = Some(opts.socket.clone());
    options.flow_log = Some(FlowLog::Stdout);
    options.flow_log_format = "compact".into();
    // Piped: flows seen while the pods come up wait until the banner is out.
    options.agent_stdout = AgentStdout::Piped;
    // Servers live in this process: `weir demo` needs only weir and weir-cni.
    options.serve_bin = None;

    let setup = async {
        let mut lab = Lab::start(options).await.context("starting the lab")?;
        lab.add_namespace(
            NamespaceSpec::new("shop")
                .label("team", "shop")
                .annotation("policy.weir.dev/audit", "true"),
        )?;
        lab.add_namespace(NamespaceSpec::new("db").label("team", "data"))?;
        // A failed pod still belongs to `lab`, so clean-up covers it.
        if let Err(e) = lab.add_pods(pods()).await {
            let _ = lab.shutdown().await;
            return Err(anyhow::Error::new(e).context("setting up the demo pods"));
        }
        if let Err(e) = lab.apply(&policies()).await {
            let _ = lab.shutdown().await;
            return Err(anyhow::Error::new(e).context("applying the demo policies"));
        }
        anyhow::Ok(lab)
    };
    let mut lab = tokio::select! {
        lab = setup => lab?,
        // Dropping the set-up future drops the half-built lab: its Drop removes it.
        _ = int.recv() => return Ok(()),
        _ = term.recv() => return Ok(()),
        _ = hup.recv() => return Ok(()),
    };

    print_banner(&lab);
    if let Some(flows) = lab.take_agent_stdout() {
        forward_to_stdout(flows);
    }
    let stop = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let agent_died = async {
        while lab.agent_running() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let mut err = std::io::stderr();
    let mut failure = None;
    tokio::select! {
        r = drive_traffic(&lab) => r?,
        () = stop => {}
        () = agent_died => {
            // The log goes with the lab directory: show it before clean-up.
            let _ = writeln!(err, "weir demo: the agent exited; its last log lines:\n{}",
                crate::agent::log_tail(&lab.agent_log_path(), 30));
            failure = Some(anyhow::anyhow!("the weir agent exited during the demo"));
        }
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    let _ = writeln!(
        err,
        "\nweir demo: stopping, removing pods and namespaces ..."
    );
    lab.shutdown().await.context("removing the demo lab")?;
    let _ = writeln!(err, "weir demo: done, nothing left behind.");
    failure.map_or(Ok(()), Err)
}

async fn drive_traffic(lab: &Lab) -> anyhow::Result<()> {
    let traffic = traffic();
    let mut tick = tokio::time::interval(TICK);
    for spec in traffic.iter().cycle() {
        tick.tick().await;
        let result = lab
            .probe(&spec.clone().timeout(Duration::from_millis(500)))
            .await?;
        tracing::debug!(?result, "demo probe");
    }
    Ok(())
}

/// What runs where, for the person at the terminal.
pub fn banner(lab: &Lab) -> String {
    let mut s = String::new();
    s.push_str("weir demo: a node with 4 pods in 2 namespaces, traffic every 250 ms\n");
    s.push_str(
        "  policies       db admits postgres from the cart and DNS from anywhere (the rest is\n                 DROPPED); shop denies other ingress in audit mode (AUDIT verdicts)\n",
    );
    for (key, ips) in lab.pod_ips() {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        s.push_str(&format!("  pod {key:<14} {}\n", ips.join("  ")));
    }
    let metrics = lab
        .metrics_addr()
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_else(|| "off".into());
    s.push_str(&format!("  metrics        {metrics}\n"));
    s.push_str(&format!(
        "  local API      {} (for weir subcommands)\n",
        lab.socket().display()
    ));
    s.push_str(&format!(
        "  node netns     {} (ip netns exec {} ip addr)\n",
        lab.node_netns(),
        lab.node_netns()
    ));
    s.push_str(&format!(
        "  agent log      {}\n",
        lab.agent_log_path().display()
    ));
    s.push_str(
        "  flow API       off, as by default: `weir flows enable`, then `weir observe -f`\n",
    );
    s.push_str("Flows follow. Ctrl-C stops the demo and removes everything.\n");
    s
}

/// Copies the agent's flow lines to our stdout until the agent closes its
/// end (it exits). A thread: the pipe is a blocking file.
fn forward_to_stdout(mut flows: std::process::ChildStdout) {
    let spawned = std::thread::Builder::new()
        .name("weir-demo-flows".into())
        .spawn(move || {
            let _ = std::io::copy(&mut flows, &mut std::io::stdout());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot forward the agent's flows");
    }
}

fn print_banner(lab: &Lab) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner(lab).as_bytes());
    let _ = out.flush();
}
