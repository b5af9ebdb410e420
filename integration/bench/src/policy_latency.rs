//! Figures `policy-latency` and `policy-pod-start`, both on a real agent in
//! a weir-integration lab.
//!
//! `policy-latency`: the time from writing (or removing) one NetworkPolicy
//! file in the agent's manifests directory to the first new connection that
//! gets the new verdict, with 1 000 policies in force, against the same with
//! 2 policies (the baseline, same run). A probe thread inside the client pod
//! opens new connections back to back (each a fresh policy lookup) from
//! before the write until the verdict flips; the flip is the first probe of
//! the new verdict (an allow is one completed connect; a deny, three
//! connects in a row that time out). For each flip the agent's own
//! `weir_policy_sync_duration_seconds` (compile + map writes) is read from
//! /metrics, and the wall-clock time the agent logged `policy maps updated`
//! for the new generation splits the end-to-end time into "file written ->
//! maps written" (watcher debounce, directory scan, parse of what changed, model, compile,
//! writes) and "maps written -> probe saw it" (the probe's resolution).
//!
//! `policy-pod-start`: new pods in a namespace with a default-deny policy
//! (Ingress and Egress) made by the real weir-cni; the moment CNI ADD
//! returns, one connection leaves the pod and one arrives at it, from
//! threads already waiting inside the namespaces. Each must be dropped (a
//! window is one that passes), and the flow log must show each drop. The
//! baseline: the same for pods in a namespace without policy, whose
//! connections must pass (proving the probes would see a window). Half the
//! pods have their Pod manifest written just before ADD (the agent may or
//! may not have read it), half none at all (the agent knows only the
//! namespace from the CNI call).
//!
//! Owns only this measurement; the lab removes what it made, and the
//! bench's own pod namespaces (`wbench-<pid>-n*`) are released (CNI DEL)
//! and deleted by a guard.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weir_integration::cni::{Call, Plugin};
use weir_integration::{Lab, LabOptions, NamespaceSpec, PodSpec, PortSpec, manifests, netns};

use crate::Binaries;
use crate::conn::connect_once;
use crate::prom::Page;
use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median, round, round2};
use crate::topo::Namespaces;

/// Options of the figures.
#[derive(Clone, Debug)]
pub struct Options {
    /// Policies in force for the measured flips (the baseline has 2).
    pub policies: usize,
    /// Flips per direction (allow, deny) per phase.
    pub flips: usize,
    /// New pods in the default-deny namespace.
    pub pods: usize,
    /// New pods in the namespace without policy (the baseline).
    pub control_pods: usize,
    /// Timeout of a probe that is expected to be dropped.
    pub probe_timeout: Duration,
    /// Target for the measured end-to-end time.
    pub target_ms: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policies: 1_000,
            flips: 10,
            pods: 40,
            control_pods: 10,
            probe_timeout: Duration::from_millis(5),
            target_ms: 50.0,
        }
    }
}

/// The file one flip writes or removes.
const FLIP_FILE: &str = "wbench-flip.yaml";
/// Remote (manifest-only) pods the filler policies' peers select.
const PEER_PODS: usize = 200;
/// Consecutive timed-out probes that make a deny.
const DENY_CONFIRM: usize = 3;
/// Pause between two probes.
const PROBE_GAP: Duration = Duration::from_millis(1);
/// How long a flip may take before the figure gives up.
const FLIP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of the probes around new pods (one SYN: retransmission is at 1 s).
const NEW_POD_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// lat/server is isolated for ingress (its other policies allow only peers
/// the probe is not).
fn isolate_server() -> Value {
    policy(
        "lat",
        "isolate-server",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}),
    )
}

/// Default deny, both directions, for every pod of `deny`.
fn default_deny() -> Value {
    policy(
        "deny",
        "default-deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )
}

/// The policy the flips write and remove: lat/client may reach lat/server:80.
pub fn flip_policy() -> Value {
    policy(
        "lat",
        "wbench-flip",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": 80}]}]
        }),
    )
}

/// Filler policy `k`: ingress only, selecting the server, the client or
/// nobody in turn, from a remote peer app (every tenth from that app in any
/// namespace) on one port; none allows the probe.
pub fn filler_policy(k: usize) -> Value {
    let selects = match k % 3 {
        0 => "server".to_string(),
        1 => "client".to_string(),
        _ => format!("absent-{}", k % 50),
    };
    let peer = json!({"matchLabels": {"app": format!("peer-{}", k % PEER_PODS)}});
    let from = if k % 10 == 9 {
        json!({"namespaceSelector": {}, "podSelector": peer})
    } else {
        json!({"podSelector": peer})
    };
    policy(
        "lat",
        &format!("filler-{k}"),
        json!({
            "podSelector": {"matchLabels": {"app": selects}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [from], "ports": [{"protocol": "TCP", "port": 8000 + (k % 1000) as u16}]}]
        }),
    )
}

/// The `apply` documents of a phase with `policies` policies in force:
/// isolate-server and default-deny, then (for more than 2) the fillers in
/// one `NetworkPolicyList` and the peer pods in one `PodList` (the manifests
/// parser takes at most 1 024 documents per file; a List is one).
pub fn phase_docs(policies: usize) -> Vec<Value> {
    let mut docs = vec![isolate_server(), default_deny()];
    if policies > 2 {
        let fillers: Vec<Value> = (0..policies - 2).map(filler_policy).collect();
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicyList",
            "items": fillers,
        }));
        let peers: Vec<Value> = (0..PEER_PODS)
            .map(|j| {
                let spec =
                    PodSpec::new("lat", &format!("peer-{j}")).label("app", &format!("peer-{j}"));
                let ip = IpAddr::V4(Ipv4Addr::new(10, 250, (j >> 8) as u8, j as u8));
                manifests::pod(&spec, &format!("wbench-peer-{j}"), "other-node", &[ip])
            })
            .collect();
        docs.push(json!({"apiVersion": "v1", "kind": "PodList", "items": peers}));
    }
    docs
}

/// One probe of a flip: when it started and whether it connected.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub start: Instant,
    pub ok: bool,
}

/// The index of the first probe with verdict `to` that is followed by
/// `confirm - 1` more of it (a single slow connect is not a deny).
pub fn first_flip(probes: &[Probe], to: bool, confirm: usize) -> Option<usize> {
    let confirm = confirm.max(1);
    (0..probes.len())
        .find(|&i| probes.len() - i >= confirm && probes[i..i + confirm].iter().all(|p| p.ok == to))
}

/// Probes from inside `ns` until the verdict turns `to`; says on `ready`
/// once two probes showed the other verdict. Bounded by `deadline`.
fn poll_flip(
    ns: &Path,
    dst: SocketAddr,
    to: bool,
    timeout: Duration,
    deadline: Instant,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<Vec<Probe>> {
    netns::enter(ns)?;
    let confirm = if to { 1 } else { DENY_CONFIRM };
    let mut probes: Vec<Probe> = Vec::with_capacity(4096);
    let mut told = false;
    while Instant::now() < deadline {
        let start = Instant::now();
        let ok = connect_once(dst, timeout).is_ok();
        probes.push(Probe { start, ok });
        if !told {
            if probes.len() >= 2 && probes.iter().all(|p| p.ok != to) {
                told = true;
                let _ = ready.send(Ok(()));
            } else if ok == to {
                let _ = ready.send(Err(format!(
                    "the verdict was already {} before the change",
                    if to { "allow" } else { "deny" }
                )));
                bail!("the verdict was already the new one");
            }
        } else if first_flip(&probes, to, confirm).is_some() {
            return Ok(probes);
        }
        std::thread::sleep(PROBE_GAP);
    }
    if !told {
        let _ = ready.send(Err("no verdict before the deadline".into()));
    }
    bail!("the verdict did not turn within {FLIP_DEADLINE:?}")
}

/// One measured flip.
#[derive(Clone, Debug)]
struct Flip {
    phase_policies: usize,
    to_allow: bool,
    /// File written -> first probe with the new verdict.
    e2e_ms: f64,
    /// Probe resolution: the previous probe started this much earlier.
    resolution_ms: f64,
    /// weir_policy_sync_duration_seconds after the flip.
    sync_ms: Option<f64>,
    /// File written -> the agent logged the new generation's maps.
    write_to_maps_ms: Option<f64>,
    /// Generations the flip took (1 expected).
    generations: i64,
}

/// One `policy maps updated` line of the agent's log.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncLine {
    pub at: SystemTime,
    pub generation: u64,
    pub ms: Option<f64>,
}

/// Removes ANSI escape sequences (the agent's log may be coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses the agent's `policy maps updated` log lines (text format:
/// RFC 3339 time first, then `key=value` fields).
pub fn sync_lines(log: &str) -> Vec<SyncLine> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("policy maps updated"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ts = words.next()?;
            let at =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let field = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_string)
            };
            Some(SyncLine {
                at: at.into(),
                generation: field("generation")?.parse().ok()?,
                ms: field("ms").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

fn metric(page: &Page, name: &str) -> Option<f64> {
    page.has(name).then(|| page.sum(name, &[]))
}

async fn page(lab: &Lab) -> Result<Page> {
    Ok(Page::parse(
        &lab.metrics_text().await.context("reading /metrics")?,
    ))
}

/// Waits until the agent compiles `n` policies.
async fn wait_policies(lab: &Lab, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = page(lab).await?;
        if metric(&p, "weir_policy_policies") == Some(n as f64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the agent compiles {:?} policies, expected {n}, after 60 s",
                metric(&p, "weir_policy_policies")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes (`to_allow`) or removes the flip file and measures until the
/// probe sees the new verdict.
async fn flip(lab: &Lab, phase_policies: usize, to_allow: bool, timeout: Duration) -> Result<Flip> {
    let ns = lab
        .pod_netns_path("lat/client")
        .context("no lat/client pod")?;
    let dst = SocketAddr::new(
        lab.pod_ip("lat/server").context("no lat/server address")?,
        80,
    );
    let gen0 = metric(&page(lab).await?, "weir_policy_generation").unwrap_or(0.0) as i64;
    let (ready_tx, ready_rx) = mpsc::channel();
    let deadline = Instant::now() + FLIP_DEADLINE;
    let poller = std::thread::Builder::new()
        .name("wbench-flip".into())
        .spawn(move || poll_flip(&ns, dst, to_allow, timeout, deadline, ready_tx))
        .context("spawning the probe thread")?;
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv_timeout(FLIP_DEADLINE))
        .await
        .context("waiting for the probe")?;
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("before the change: {e}"),
        Err(_) => bail!("the probe never reported the verdict before the change"),
    }
    let dir = lab.manifests_dir().to_path_buf();
    let (t_write, sys_write) = (Instant::now(), SystemTime::now());
    if to_allow {
        manifests::write(&dir, FLIP_FILE, &[flip_policy()])?;
    } else {
        manifests::remove(&dir, FLIP_FILE)?;
    }
    let probes = tokio::task::spawn_blocking(move || poller.join())
        .await
        .context("waiting for the probe thread")?
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
    let confirm = if to_allow { 1 } else { DENY_CONFIRM };
    let i = first_flip(&probes, to_allow, confirm).context("no flip in the probes")?;
    ensure!(
        probes[i].start >= t_write,
        "the verdict turned before the file was written"
    );
    let e2e_ms = (probes[i].start - t_write).as_secs_f64() * 1e3;
    let resolution_ms = if i > 0 {
        (probes[i].start - probes[i - 1].start).as_secs_f64() * 1e3
    } else {
        0.0
    };
    // The gauges are set in the sync itself; the log line is written then too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = page(lab).await?;
    let gen1 = metric(&p, "weir_policy_generation").unwrap_or(0.0) as i64;
    let sync_ms = metric(&p, "weir_policy_sync_duration_seconds").map(|s| s * 1e3);
    let log = std::fs::read_to_string(lab.agent_log_path()).unwrap_or_default();
    let write_to_maps_ms = sync_lines(&log)
        .iter()
        .rev()
        .find(|l| l.generation == gen1 as u64)
        .and_then(|l| l.at.duration_since(sys_write).ok())
        .map(|d| d.as_secs_f64() * 1e3);
    let f = Flip {
        phase_policies,
        to_allow,
        e2e_ms,
        resolution_ms,
        sync_ms,
        write_to_maps_ms,
        generations: gen1 - gen0,
    };
    tracing::info!(?f, "flip");
    Ok(f)
}

/// Both directions, `n` times each, with `policies` in force.
async fn phase(lab: &mut Lab, opts: &Options, policies: usize) -> Result<Vec<Flip>> {
    manifests::remove(lab.manifests_dir(), FLIP_FILE)?;
    lab.apply(&phase_docs(policies))
        .await
        .with_context(|| format!("applying {policies} policies"))?;
    wait_policies(lab, policies).await?;
    let mut flips = Vec::with_capacity(2 * opts.flips);
    for i in 0..opts.flips {
        flips.push(flip(lab, policies, true, opts.probe_timeout).await?);
        // Varies where the change falls in the watcher's periodic rescan.
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 37) % 200)).await;
        flips.push(flip(lab, policies, false, opts.probe_timeout).await?);
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 53) % 200)).await;
    }
    Ok(flips)
}

/// Pods this figure made through weir-cni; dropping releases them (CNI
/// DEL, while the agent still runs) and deletes their namespaces.
struct NewPods {
    plugin: Plugin,
    added: Vec<(String, PathBuf, String, String)>,
    namespaces: Namespaces,
}

impl Drop for NewPods {
    fn drop(&mut self) {
        for (id, path, ns, name) in self.added.drain(..) {
            let call = Call {
                container_id: &id,
                netns: &path,
                ifname: "eth0",
                pod_namespace: &ns,
                pod_name: &name,
            };
            if let Err(e) = self.plugin.del(&call) {
                tracing::warn!(pod = %name, error = %e, "CNI DEL of a bench pod");
            }
        }
        // `namespaces` deletes the pod namespaces after this.
    }
}

/// What one new pod's first connections did.
#[derive(Clone, Debug)]
struct NewPod {
    namespace: &'static str,
    ip: IpAddr,
    manifest_first: bool,
    egress_passed: bool,
    ingress_passed: bool,
    add_ms: f64,
}

/// Makes pod `i` in `namespace` and fires its first connections the moment
/// CNI ADD returns. Blocking.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one pod's set-up, all from the caller's lab"
)]
fn new_pod(
    pods: &mut NewPods,
    i: usize,
    namespace: &'static str,
    manifests_dir: &Path,
    egress_dst: SocketAddr,
    ingress_from: &Path,
) -> Result<NewPod> {
    let role = format!("n{i}");
    let path = pods.namespaces.create(&role)?;
    let id = pods.namespaces.name(&role);
    let name = format!("new-{i}");
    // Listening before ADD, so the arriving connection finds a server.
    let listener = netns::run_in(&path, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80)))?
        .context("listening in the new pod")?;
    let (egress_go, egress_rx) = mpsc::channel::<()>();
    let (ingress_go, ingress_rx) = mpsc::channel::<IpAddr>();
    let egress = {
        let path = path.clone();
        std::thread::spawn(move || -> Result<bool> {
            netns::enter(&path)?;
            if egress_rx.recv_timeout(Duration::from_secs(120)).is_err() {
                return Ok(false);
            }
            Ok(connect_once(egress_dst, NEW_POD_PROBE_TIMEOUT).is_ok())
        })
    };
    let ingress = {
        let from = ingress_from.to_path_buf();
        std::thread::spawn(move || -> Result<bool> {
            netns::enter(&from)?;
            let Ok(ip) = ingress_rx.recv_timeout(Duration::from_secs(120)) else {
                return Ok(false);
            };
            Ok(connect_once(SocketAddr::new(ip, 80), NEW_POD_PROBE_TIMEOUT).is_ok())
        })
    };
    let manifest_first = i.is_multiple_of(2);
    if manifest_first {
        let spec = PodSpec::new(namespace, &name).port(PortSpec::tcp(80));
        manifests::write(
            manifests_dir,
            &manifests::pod_file(namespace, &name),
            &[manifests::pod(
                &spec,
                &format!("wbench-{id}"),
                "wbench",
                &[],
            )],
        )?;
    }
    pods.added.push((
        id.clone(),
        path.clone(),
        namespace.to_string(),
        name.clone(),
    ));
    let t = Instant::now();
    let ips = pods.plugin.add(&Call {
        container_id: &id,
        netns: &path,
        ifname: "eth0",
        pod_namespace: namespace,
        pod_name: &name,
    });
    let add_ms = t.elapsed().as_secs_f64() * 1e3;
    // Fire first, check after: nothing may sit between ADD and the packets.
    let ip = ips
        .as_ref()
        .ok()
        .and_then(|ips| ips.iter().find(|ip| ip.is_ipv4()).copied());
    let _ = egress_go.send(());
    if let Some(ip) = ip {
        let _ = ingress_go.send(ip);
    }
    drop(ingress_go);
    let ips = ips.with_context(|| format!("CNI ADD of {namespace}/{name}"))?;
    let ip = ip.with_context(|| format!("CNI ADD gave {namespace}/{name} no IPv4: {ips:?}"))?;
    let egress_passed = egress
        .join()
        .map_err(|_| anyhow::anyhow!("the egress probe panicked"))??;
    let ingress_passed = ingress
        .join()
        .map_err(|_| anyhow::anyhow!("the ingress probe panicked"))??;
    drop(listener);
    Ok(NewPod {
        namespace,
        ip,
        manifest_first,
        egress_passed,
        ingress_passed,
        add_ms,
    })
}

/// The namespaces of the new pods in the order they are made: `control`
/// pods of `open` spread evenly among `deny` pods of `deny`, so both kinds
/// see the same agent and machine.
pub fn interleave(deny: usize, control: usize) -> Vec<&'static str> {
    let total = deny + control;
    // Pod i is a control pod when it crosses the next multiple of total / control.
    (0..total)
        .map(|i| {
            let before = (i * control) / total.max(1);
            let after = ((i + 1) * control) / total.max(1);
            if after > before { "open" } else { "deny" }
        })
        .collect()
}

/// Whether the flow log (its lines: Hubble's export shape, the flow under
/// `flow`) shows a policy drop of a connection from (`egress`) or to `ip`
/// on port 80.
pub fn has_drop(lines: &[Value], ip: IpAddr, egress: bool) -> bool {
    let ip = ip.to_string();
    lines.iter().filter_map(|l| l.get("flow")).any(|f| {
        let (side, port) = if egress {
            ("source", 80)
        } else {
            ("destination", 80)
        };
        f["verdict"] == "DROPPED"
            && f["drop_reason_desc"] == "POLICY_DENIED"
            && f["IP"][side] == ip.as_str()
            && f["l4"]["TCP"]["destination_port"] == port
    })
}

fn medians(flips: &[Flip], policies: usize, f: impl Fn(&Flip) -> Option<f64>) -> f64 {
    let v: Vec<f64> = flips
        .iter()
        .filter(|x| x.phase_policies == policies)
        .filter_map(f)
        .collect();
    median(&v)
}

pub async fn run(opts: &Options, bins: &Binaries) -> Result<Vec<Report>> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.policies < 3 || opts.flips == 0 {
        bail!("policy-latency: --policies must be at least 3 and --flips positive");
    }
    let mut lab_opts = LabOptions::new(&bins.weir, &bins.cni);
    lab_opts.serve_bin = None;
    lab_opts.node_name = "wbench".into();
    lab_opts.flow_log = None;
    lab_opts.pod_cidrs = vec!["10.244.0.0/22".into(), "fd00:10:244::/112".into()];
    let mut lab = Lab::start(lab_opts).await.context("starting the lab")?;
    let result = measure(&mut lab, opts, bins, machine, started).await;
    let shutdown = lab.shutdown().await.context("removing the lab");
    let reports = result?;
    shutdown?;
    Ok(reports)
}

async fn measure(
    lab: &mut Lab,
    opts: &Options,
    bins: &Binaries,
    machine: Machine,
    started: Instant,
) -> Result<Vec<Report>> {
    for ns in ["lat", "open", "deny"] {
        lab.add_namespace(NamespaceSpec::new(ns))?;
    }
    lab.add_pods(vec![
        PodSpec::new("lat", "server")
            .label("app", "server")
            .port(PortSpec::tcp(80)),
        PodSpec::new("lat", "client").label("app", "client"),
        PodSpec::new("open", "server")
            .label("app", "server")
            .port(PortSpec::tcp(80)),
        PodSpec::new("open", "client").label("app", "client"),
    ])
    .await
    .context("adding the pods")?;

    let base = phase(lab, opts, 2).await.context("flips with 2 policies")?;
    let measured = phase(lab, opts, opts.policies)
        .await
        .with_context(|| format!("flips with {} policies", opts.policies))?;
    let flips: Vec<Flip> = base.into_iter().chain(measured).collect();
    let offline = tokio::task::spawn_blocking({
        let dir = lab.manifests_dir().to_path_buf();
        move || offline_scan(&dir)
    })
    .await
    .context("the scan thread panicked")?;

    // Pod start, with the 1 000 policies still in force.
    let plugin = Plugin::new(
        &bins.cni,
        lab.socket(),
        &lab.options().pod_cidrs,
        &lab.dir().join("ipam"),
        &netns::path(lab.node_netns()),
    );
    let egress_dst = SocketAddr::new(lab.pod_ip("open/server").context("open/server")?, 80);
    let ingress_from = lab.pod_netns_path("open/client").context("open/client")?;
    let manifests_dir = lab.manifests_dir().to_path_buf();
    let m0 = page(lab).await?;
    let (pods_opts, control) = (opts.pods, opts.control_pods);
    let new_pods = tokio::task::spawn_blocking(move || -> Result<(NewPods, Vec<NewPod>)> {
        let mut made = NewPods {
            plugin,
            added: Vec::new(),
            namespaces: Namespaces::default(),
        };
        let mut out = Vec::new();
        for (i, ns) in interleave(pods_opts, control).into_iter().enumerate() {
            match new_pod(&mut made, i, ns, &manifests_dir, egress_dst, &ingress_from) {
                Ok(p) => out.push(p),
                Err(e) => return Err(e.context(format!("new pod {i}"))),
            }
        }
        Ok((made, out))
    })
    .await
    .context("the new-pod thread panicked")?;
    let (made, new) = new_pods?;
    // The flow log is written a little after the packets; the counters too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flows = lab.flows().context("reading the flow log")?;
    let m1 = page(lab).await?;
    drop(made);

    let mut latency = latency_report(
        &flows_summary(&flips),
        opts,
        &flips,
        started,
        machine.clone(),
    );
    latency
        .detail("scan_parse_ms_offline", round(offline.scan_ms, 2))
        .detail("scan_incremental_ms_offline", round(offline.incremental_ms, 2))
        .detail("model_update_ms_offline", round(offline.model_ms, 2))
        .detail("manifest_objects", offline.objects as u64)
        .note("scan_parse_ms_offline / scan_incremental_ms_offline / model_update_ms_offline: this process timing, on the same manifests directory after the flips (median of 5): weir-state's load_dir (read and parse every file: the watcher's first scan), a ManifestSource rescan with its file cache warm (what each change and the 2 s rescan cost: list, stat, read only what changed), and ClusterState::set_manifests on a fresh model");
    let mut reports = vec![latency];
    reports.push(pod_start_report(&new, &flows, &m0, &m1, started, machine));
    Ok(reports)
}

/// What reading the manifests directory costs, timed in this process.
struct Offline {
    scan_ms: f64,
    incremental_ms: f64,
    model_ms: f64,
    objects: usize,
}

/// Times weir-state's directory scan and model update on `dir`, 5 times.
fn offline_scan(dir: &Path) -> Offline {
    let (mut scan, mut model, mut incremental) = (Vec::new(), Vec::new(), Vec::new());
    let mut objects = 0;
    let mut source = weir_state::manifests::ManifestSource::new(dir);
    source.reload();
    for _ in 0..5 {
        let t = Instant::now();
        source.reload();
        incremental.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let loaded = weir_state::manifests::load_dir(dir);
        scan.push(t.elapsed().as_secs_f64() * 1e3);
        objects = loaded.objects.len();
        let mut state = weir_state::ClusterState::default();
        let t = Instant::now();
        state.set_manifests(loaded.objects.into_iter().map(|o| o.object));
        model.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Offline {
        scan_ms: median(&scan),
        incremental_ms: median(&incremental),
        model_ms: median(&model),
        objects,
    }
}

/// Per-flip rows for the JSON line.
fn flows_summary(flips: &[Flip]) -> Vec<Value> {
    flips
        .iter()
        .map(|f| {
            json!({
                "policies": f.phase_policies,
                "to": if f.to_allow { "allow" } else { "deny" },
                "e2e_ms": round(f.e2e_ms, 2),
                "resolution_ms": round(f.resolution_ms, 2),
                "sync_ms": f.sync_ms.map(|s| round(s, 3)),
                "write_to_maps_ms": f.write_to_maps_ms.map(|s| round(s, 2)),
                "generations": f.generations,
            })
        })
        .collect()
}

fn latency_report(
    rows: &[Value],
    opts: &Options,
    flips: &[Flip],
    started: Instant,
    machine: Machine,
) -> Report {
    let n = opts.policies;
    let e2e = |p| medians(flips, p, |f| Some(f.e2e_ms));
    let mut r = Report::new(
        "policy-latency",
        Quantity::new(
            "policy file written -> first new connection with the new verdict, 2 policies (median)",
            round2(e2e(2)),
            "ms",
        ),
        Quantity::new(
            format!(
                "policy file written -> first new connection with the new verdict, {n} policies (median)"
            ),
            round2(e2e(n)),
            "ms",
        ),
        Target::new(Subject::Measured, Op::AtMost, opts.target_ms, "ms"),
        started.elapsed(),
        machine,
    );
    let by = |p: usize, allow: bool| {
        let v: Vec<f64> = flips
            .iter()
            .filter(|f| f.phase_policies == p && f.to_allow == allow)
            .map(|f| f.e2e_ms)
            .collect();
        json!({
            "median_ms": round(median(&v), 2),
            "max_ms": round(v.iter().copied().fold(f64::NAN, f64::max), 2),
        })
    };
    let max_e2e = flips
        .iter()
        .filter(|f| f.phase_policies == n)
        .map(|f| f.e2e_ms)
        .fold(f64::NAN, f64::max);
    let extra_generations = flips.iter().filter(|f| f.generations != 1).count();
    r.detail("policies", n as u64)
        .detail("e2e_ms_max", round(max_e2e, 2))
        .detail("e2e_to_allow", by(n, true))
        .detail("e2e_to_deny", by(n, false))
        .detail("e2e_to_allow_2_policies", by(2, true))
        .detail("e2e_to_deny_2_policies", by(2, false))
        .detail("agent_sync_ms_median", round(medians(flips, n, |f| f.sync_ms), 3))
        .detail("agent_sync_ms_median_2_policies", round(medians(flips, 2, |f| f.sync_ms), 3))
        .detail("write_to_maps_ms_median", round(medians(flips, n, |f| f.write_to_maps_ms), 2))
        .detail(
            "write_to_maps_ms_median_2_policies",
            round(medians(flips, 2, |f| f.write_to_maps_ms), 2),
        )
        .detail("probe_resolution_ms_median", round(medians(flips, n, |f| Some(f.resolution_ms)), 2))
        .detail("flips_per_direction", opts.flips as u64)
        .detail("flips_with_other_than_one_generation", extra_generations as u64)
        .detail("flips", json!(rows))
        .note("e2e: the flip file written (tmp + rename in the manifests dir) or removed -> the start of the first probe with the new verdict (allow: a completed connect; deny: 3 connects in a row timing out at the probe timeout); the previous probe started resolution_ms earlier, so the true moment lies in that interval")
        .note("which part is what: write_to_maps_ms is file written -> the agent's `policy maps updated` log line for the new generation (wall clock, same machine): the manifests watcher's 10 ms debounce after the first inotify event, the directory scan (reading and parsing only the changed file), the model update, then agent_sync_ms (weir_policy_sync_duration_seconds: compile + map writes); e2e - write_to_maps_ms is the probe's share")
        .note("the 1 000 policies: isolate-server, default-deny (namespace deny), and fillers selecting the server, the client or nobody, each allowing one of 200 remote peer pods on one port; the flip policy is one more file");
    if extra_generations > 0 {
        r.note(format!(
            "{extra_generations} flips spanned other than one policy generation (another sync ran in between)"
        ));
    }
    r
}

fn pod_start_report(
    new: &[NewPod],
    flows: &[Value],
    m0: &Page,
    m1: &Page,
    started: Instant,
    machine: Machine,
) -> Report {
    let deny: Vec<&NewPod> = new.iter().filter(|p| p.namespace == "deny").collect();
    let control: Vec<&NewPod> = new.iter().filter(|p| p.namespace == "open").collect();
    let windows = deny
        .iter()
        .filter(|p| p.egress_passed || p.ingress_passed)
        .count();
    let control_passed: usize = control
        .iter()
        .map(|p| usize::from(p.egress_passed) + usize::from(p.ingress_passed))
        .sum();
    let drops_seen: usize = deny
        .iter()
        .map(|p| {
            usize::from(has_drop(flows, p.ip, true)) + usize::from(has_drop(flows, p.ip, false))
        })
        .sum();
    let dropped_packets = m1.sum("weir_datapath_drops_total", &[("reason", "POLICY_DENIED")])
        - m0.sum("weir_datapath_drops_total", &[("reason", "POLICY_DENIED")]);
    let mut r = Report::new(
        "policy-pod-start",
        Quantity::new(
            "first connections of new pods without policy that passed (baseline: they must)",
            control_passed as f64,
            "connections",
        ),
        Quantity::new(
            "new default-deny pods whose first connection (out or in, right after CNI ADD) passed",
            windows as f64,
            "pods",
        ),
        Target::new(Subject::Measured, Op::AtMost, 0.0, "pods"),
        started.elapsed(),
        machine,
    );
    let add: Vec<f64> = new.iter().map(|p| p.add_ms).collect();
    r.detail("deny_pods", deny.len() as u64)
        .detail("deny_pods_manifest_before_add", deny.iter().filter(|p| p.manifest_first).count() as u64)
        .detail("deny_egress_passed", deny.iter().filter(|p| p.egress_passed).count() as u64)
        .detail("deny_ingress_passed", deny.iter().filter(|p| p.ingress_passed).count() as u64)
        .detail("drop_flows_seen", drops_seen as u64)
        .detail("drop_flows_expected", 2 * deny.len() as u64)
        .detail("policy_dropped_packets", dropped_packets)
        .detail("control_pods", control.len() as u64)
        .detail("control_connections_expected", 2 * control.len() as u64)
        .detail("cni_add_ms_median", round(median(&add), 1))
        .note("each new pod: its namespace made, a listener on :80, a thread waiting inside it and one inside open/client; CNI ADD (the real weir-cni, which returns after the agent attached); then at once one connect out to open/server:80 and one in from open/client, 500 ms timeout (a single SYN each)")
        .note("even pods had their Pod manifest written just before ADD, odd ones none: the agent then knows only the namespace from the CNI call, which is enough for a namespace-wide default deny");
    if control_passed < 2 * control.len() {
        r.fail_because(format!(
            "only {control_passed} of {} first connections of pods without policy passed: the probes could miss a window",
            2 * control.len()
        ));
    }
    if drops_seen < 2 * deny.len() {
        r.fail_because(format!(
            "the flow log shows {drops_seen} of {} expected policy drops",
            2 * deny.len()
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(oks: &[bool]) -> Vec<Probe> {
        let t0 = Instant::now();
        oks.iter()
            .enumerate()
            .map(|(i, &ok)| Probe {
                start: t0 + Duration::from_millis(i as u64),
                ok,
            })
            .collect()
    }

    #[test]
    fn a_deny_needs_three_timeouts_in_a_row_an_allow_one_connect() {
        let p = probes(&[true, true, false, true, false, false, false, true]);
        assert_eq!(
            first_flip(&p, false, 3),
            Some(4),
            "a lone timeout is not a deny"
        );
        assert_eq!(first_flip(&p, false, 4), None);
        let p = probes(&[false, false, false, true]);
        assert_eq!(first_flip(&p, true, 1), Some(3));
        assert_eq!(first_flip(&probes(&[false, false]), true, 1), None);
    }

    #[test]
    fn sync_lines_are_read_from_coloured_and_plain_logs() {
        let log = "\
2026-11-29T18:40:01.123456Z  INFO weir_agent::policy: policy maps updated changes=3 rules=1200 endpoints=4 policies=1000 generation=7 failed=0 ms=1.25\n\
\u{1b}[2m2026-11-29T18:40:02.5Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mweir_agent::policy\u{1b}[0m\u{1b}[2m:\u{1b}[0m policy maps updated \u{1b}[3mchanges\u{1b}[0m\u{1b}[2m=\u{1b}[0m2 \u{1b}[3mgeneration\u{1b}[0m\u{1b}[2m=\u{1b}[0m8 \u{1b}[3mms\u{1b}[0m\u{1b}[2m=\u{1b}[0m0.5\n\
2026-11-29T18:40:03Z  INFO weir_agent::daemon: endpoint added\n";
        let lines = sync_lines(log);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].generation, 7);
        assert_eq!(lines[0].ms, Some(1.25));
        assert_eq!(lines[1].generation, 8);
        assert_eq!(lines[1].ms, Some(0.5));
        let d = lines[1].at.duration_since(lines[0].at).expect("ordered");
        assert_eq!(d, Duration::from_micros(1_376_544));
    }

    #[test]
    fn phase_documents_hold_the_policies_and_the_agent_reads_them_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        manifests::write(dir.path(), manifests::APPLY_FILE, &phase_docs(1_000)).expect("write");
        let loaded = weir_state::manifests::load_dir(dir.path());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut state = weir_state::ClusterState::default();
        state.set_manifests(loaded.objects.iter().map(|o| o.object.clone()));
        assert_eq!(state.policies().count(), 1_000);
        assert_eq!(state.pods().len(), PEER_PODS);
        let mut names: Vec<String> = state.policies().map(|p| p.key()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 1_000, "names are unique");
        weir_policy::NetworkPolicy::from_value(&flip_policy()).expect("the flip policy");
        assert_eq!(phase_docs(2).len(), 2);
    }

    #[test]
    fn control_pods_are_spread_among_the_deny_pods() {
        let order = interleave(40, 10);
        assert_eq!(order.len(), 50);
        assert_eq!(order.iter().filter(|n| **n == "open").count(), 10);
        assert_eq!(&order[..5], ["deny", "deny", "deny", "deny", "open"]);
        assert!(interleave(3, 0).iter().all(|n| *n == "deny"));
        assert!(interleave(0, 2).iter().all(|n| *n == "open"));
    }

    #[test]
    fn drops_are_matched_by_side_verdict_and_port() {
        let ip: IpAddr = "10.244.0.9".parse().expect("ip");
        let flow = |src: &str, dst: &str, verdict: &str| {
            json!({"flow": {"verdict": verdict, "drop_reason_desc": "POLICY_DENIED",
                   "IP": {"source": src, "destination": dst},
                   "l4": {"TCP": {"destination_port": 80}}},
                   "node_name": "wbench", "time": "2026-11-29T18:52:10Z"})
        };
        let flows = vec![
            flow("10.244.0.9", "10.244.0.2", "DROPPED"),
            flow("10.244.0.3", "10.244.0.9", "FORWARDED"),
        ];
        assert!(has_drop(&flows, ip, true));
        assert!(!has_drop(&flows, ip, false), "a forwarded flow is no drop");
        assert!(!has_drop(&flows, "10.244.0.2".parse().expect("ip"), true));
        let bare = vec![flows[0]["flow"].clone()];
        assert!(
            !has_drop(&bare, ip, true),
            "a line without `flow` is not a flow"
        );
    }
}
