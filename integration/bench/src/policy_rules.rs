//! Figure `policy-rules`: the new-connection rate through an endpoint with
//! 10, 1 000 and 10 000 NetworkPolicy rules selecting it, against the same
//! endpoint with 10 rules (flatness), with no policy (the cost of policy),
//! with no programs at all, and against iptables enforcing the same rules
//! with the Weir programs detached, all measured alternately in one run.
//!
//! Set-up: the bench's namespace pair (`wb0` in `a`, `wb1` in `b`). The
//! server (`10.201.0.2:9000`, namespace `b`) is the endpoint; `wb0` plays
//! its host-side veth, so its SYNs leave `wb0` through `weir_to_endpoint`
//! and take the ingress policy lookup. Clients in `a` open connections as
//! fast as they go, each new (RST close, fresh source port), so each is one
//! lookup. The rules are NetworkPolicies compiled by weir-policy and written
//! through weir-datapath's `PolicyMaps` in the agent's never-denying order;
//! every rule but the last allows some other peer (half pod identities, half
//! ipBlock cells) on some port, the last allows the clients' address on the
//! server port, so the probe's lookup misses on its identity, finds its
//! cell, and hits, in maps holding every other rule. iptables gets the same
//! allow rules, in the same order, in a chain jumped to from `b`'s INPUT for
//! `wb1` after an ESTABLISHED accept, ending in DROP. Owns only this
//! measurement; everything it makes goes away with its guards.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use weir_common::{direction, stat};
use weir_datapath::{Aggregation, Datapath, DatapathOptions, PolicyMaps};
use weir_policy::{
    Compiled, Compiler, Input, Labels, Lookup, MapChanges, NamespaceInput, NetworkPolicy, PodInput,
    evaluate,
};

use crate::bpfstats;
use crate::conn::{Churn, ChurnConfig};
use crate::iptables::{self, AcceptRule, Backend};
use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median, round, spread};
use crate::ring;
use crate::topo::{self, Pair, in_netns};

/// Port the server listens on and the probe rule allows.
pub const PROBE_PORT: u16 = 9000;
/// Rules per NetworkPolicy (the rules are spread over as many as needed).
const RULES_PER_POLICY: usize = 100;
/// Namespace of the endpoint, its policies and the peer pods.
const NAMESPACE: &str = "bench";

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of one measuring window.
    pub window: Duration,
    /// Windows per mode.
    pub reps: usize,
    /// Rule counts; the smallest is the flatness baseline, the largest is compared with iptables.
    pub rules: Vec<usize>,
    /// iptables flavours to compare with (none: Weir only).
    pub iptables: Vec<Backend>,
    /// Client threads.
    pub clients: usize,
    /// Back-to-back window pairs (smallest vs largest rule count) for the
    /// flatness ratio.
    pub pairs: usize,
    /// Length of each window of a pair.
    pub pair_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(2),
            reps: 5,
            rules: vec![10, 1_000, 10_000],
            iptables: vec![Backend::Nft, Backend::Legacy],
            clients: 2,
            pairs: 20,
            pair_window: Duration::from_millis(500),
        }
    }
}

/// Who a generated rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A pod (peer pod `p<i>`, selected by label).
    Pod,
    /// An ipBlock `/32`.
    Block,
    /// The clients' address: the probe's rule.
    Probe,
}

/// One generated allow rule: TCP from `addr` to `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRule {
    pub kind: PeerKind,
    pub index: usize,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// `n` allow rules: `n - 1` that the probe does not match (even indexes a
/// peer pod, odd an ipBlock; each on port `8000 + i % 1000`), then the
/// probe's (the clients' address on [`PROBE_PORT`]).
pub fn peer_rules(n: usize) -> Vec<PeerRule> {
    let mut rules: Vec<PeerRule> = (0..n.saturating_sub(1))
        .map(|i| {
            let (kind, net) = if i % 2 == 0 {
                (PeerKind::Pod, 202)
            } else {
                (PeerKind::Block, 203)
            };
            PeerRule {
                kind,
                index: i,
                addr: Ipv4Addr::new(10, net + (i >> 16) as u8, (i >> 8) as u8, i as u8),
                port: 8000 + (i % 1000) as u16,
            }
        })
        .collect();
    if n > 0 {
        rules.push(PeerRule {
            kind: PeerKind::Probe,
            index: n - 1,
            addr: topo::ADDR_A.parse().expect("a literal address"),
            port: PROBE_PORT,
        });
    }
    rules
}

fn rule_json(r: &PeerRule) -> Value {
    let from = match r.kind {
        PeerKind::Pod => json!({"podSelector": {"matchLabels": {"peer": format!("p{}", r.index)}}}),
        PeerKind::Block | PeerKind::Probe => json!({"ipBlock": {"cidr": format!("{}/32", r.addr)}}),
    };
    json!({"from": [from], "ports": [{"protocol": "TCP", "port": r.port}]})
}

/// The NetworkPolicies holding `rules` in order, [`RULES_PER_POLICY`] each,
/// all selecting the server.
pub fn policies(rules: &[PeerRule]) -> Result<Vec<Arc<NetworkPolicy>>> {
    rules
        .chunks(RULES_PER_POLICY)
        .enumerate()
        .map(|(j, chunk)| {
            let v = json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": format!("rules-{j}"), "namespace": NAMESPACE},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "server"}},
                    "policyTypes": ["Ingress"],
                    "ingress": chunk.iter().map(rule_json).collect::<Vec<_>>(),
                },
            });
            NetworkPolicy::from_value(&v)
                .map(Arc::new)
                .map_err(|e| anyhow!("generated policy rules-{j} refused: {e}"))
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Identity of the server; peer pod `i` has `SERVER_IDENTITY + 1 + i`.
const SERVER_IDENTITY: u32 = 256;

/// The compiler input: the server as the endpoint on `ifindex`, a remote
/// pod per pod rule, and the policies.
pub fn input(rules: &[PeerRule], ifindex: u32) -> Result<Input> {
    let mut pods = vec![PodInput {
        namespace: NAMESPACE.into(),
        name: "server".into(),
        labels: labels(&[("app", "server")]),
        identity: SERVER_IDENTITY,
        ips: vec![topo::ADDR_B.parse()?],
        endpoint: Some(ifindex),
        ..PodInput::default()
    }];
    for r in rules.iter().filter(|r| r.kind == PeerKind::Pod) {
        pods.push(PodInput {
            namespace: NAMESPACE.into(),
            name: format!("peer-{}", r.index),
            labels: labels(&[("peer", &format!("p{}", r.index))]),
            identity: SERVER_IDENTITY + 1 + r.index as u32,
            ips: vec![IpAddr::V4(r.addr)],
            ..PodInput::default()
        });
    }
    Ok(Input {
        policies: policies(rules)?,
        namespaces: vec![NamespaceInput {
            name: NAMESPACE.into(),
            labels: labels(&[("kubernetes.io/metadata.name", NAMESPACE)]),
            annotations: Labels::new(),
        }],
        pods,
        ..Input::default()
    })
}

/// The same rules for iptables, in the same order.
pub fn iptables_rules(rules: &[PeerRule]) -> Vec<AcceptRule> {
    rules
        .iter()
        .map(|r| AcceptRule {
            source: format!("{}/32", r.addr),
            dport: r.port,
        })
        .collect()
}

/// One rule count, compiled.
struct RuleSet {
    n: usize,
    compiled: Compiled,
    iptables: Vec<AcceptRule>,
    compile_ms: f64,
    policies: usize,
}

impl RuleSet {
    fn new(n: usize, ifindex: u32) -> Result<RuleSet> {
        let rules = peer_rules(n);
        let input = input(&rules, ifindex)?;
        let t = Instant::now();
        let compiled = Compiler::new().compile(&input);
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        check_compiled(&compiled, &rules, ifindex)?;
        Ok(RuleSet {
            n,
            compiled,
            iptables: iptables_rules(&rules),
            compile_ms,
            policies: input.policies.len(),
        })
    }
}

/// The compiled maps must allow the probe through its cell (after an
/// identity miss) and nothing else from the probe's address, and allow
/// every other rule's peer on its port only.
fn check_compiled(c: &Compiled, rules: &[PeerRule], ifindex: u32) -> Result<()> {
    let probe: IpAddr = topo::ADDR_A.parse()?;
    let v = evaluate(c, ifindex, direction::INGRESS, probe, 6, PROBE_PORT);
    ensure!(
        v.allowed && matches!(v.lookup, Lookup::Cell(_)),
        "the compiled maps do not allow the probe through its cell: {v:?}"
    );
    let v = evaluate(c, ifindex, direction::INGRESS, probe, 6, PROBE_PORT + 1);
    ensure!(
        !v.allowed,
        "the probe's address is allowed on another port: {v:?}"
    );
    // A sample of the other rules, each on its own port and one port off.
    let step = (rules.len() / 16).max(1);
    for r in rules
        .iter()
        .filter(|r| r.kind != PeerKind::Probe)
        .step_by(step)
    {
        let ok = evaluate(
            c,
            ifindex,
            direction::INGRESS,
            IpAddr::V4(r.addr),
            6,
            r.port,
        );
        let off = evaluate(
            c,
            ifindex,
            direction::INGRESS,
            IpAddr::V4(r.addr),
            6,
            PROBE_PORT,
        );
        ensure!(
            ok.allowed && !off.allowed,
            "rule {r:?}: allowed on its port {ok:?}, on the probe port {off:?}"
        );
    }
    Ok(())
}

/// What the endpoint runs during a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No programs, no iptables.
    Bare,
    /// Programs attached, the endpoint not policed.
    WeirNoPolicy,
    /// Programs attached, this many rules.
    Weir(usize),
    /// Programs detached, iptables with this many rules.
    Iptables(Backend, usize),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Bare => "bare".into(),
            Mode::WeirNoPolicy => "weir-no-policy".into(),
            Mode::Weir(n) => format!("weir-{n}"),
            Mode::Iptables(b, n) => format!("iptables-{}-{n}", b.as_str()),
        }
    }

    fn attached(self) -> bool {
        matches!(self, Mode::WeirNoPolicy | Mode::Weir(_))
    }
}

/// The modes of a run, in their first order.
fn modes(opts: &Options) -> Vec<Mode> {
    let mut m = vec![Mode::Bare, Mode::WeirNoPolicy];
    m.extend(opts.rules.iter().map(|&n| Mode::Weir(n)));
    for &b in &opts.iptables {
        m.extend(opts.rules.iter().map(|&n| Mode::Iptables(b, n)));
    }
    m
}

/// The order of repetition `rep`: the first order rotated by `rep` steps
/// and reversed on odd repetitions, so that no mode always follows the
/// same one or sits at the same place while the machine drifts.
fn order(modes: &[Mode], rep: usize) -> Vec<Mode> {
    let mut m = modes.to_vec();
    if !m.is_empty() {
        let k = rep % m.len();
        m.rotate_left(k);
    }
    if rep % 2 == 1 {
        m.reverse();
    }
    m
}

/// One window's numbers.
#[derive(Clone, Debug)]
struct Window {
    rep: usize,
    mode: Mode,
    rate: f64,
    connected: u64,
    failed: u64,
    program_packets: u64,
    lookups: u64,
    denied: u64,
    /// iptables: packets of the probe's rule and of the DROP.
    chain_probe: Option<u64>,
    chain_dropped: Option<u64>,
}

/// What is installed now, and moving between modes.
struct Endpoint<'a> {
    dp: Datapath,
    pair: &'a Pair,
    /// What the policy maps hold.
    written: Compiled,
    chain: Option<(Backend, usize, iptables::Chain)>,
    /// Time each transition spent writing the maps, per rule count (ms).
    write_ms: BTreeMap<usize, Vec<f64>>,
    install_ms: BTreeMap<String, Vec<f64>>,
}

impl Endpoint<'_> {
    fn set(&mut self, mode: Mode, sets: &[RuleSet]) -> Result<()> {
        // iptables first out, so Weir windows never run beside a chain.
        let keep_chain = matches!((mode, &self.chain), (Mode::Iptables(b, n), Some((cb, cn, _))) if b == *cb && n == *cn);
        if !keep_chain {
            self.chain = None;
        }
        set_attached(&mut self.dp, self.pair, mode.attached())?;
        match mode {
            Mode::Bare => {}
            Mode::WeirNoPolicy => self.write(&Compiled::default(), 0)?,
            Mode::Weir(n) => {
                let set = sets
                    .iter()
                    .find(|s| s.n == n)
                    .context("a rule count without a compiled set")?;
                self.write(&set.compiled, n)?;
            }
            Mode::Iptables(b, n) => {
                if !keep_chain {
                    let set = sets
                        .iter()
                        .find(|s| s.n == n)
                        .context("a rule count without a rule set")?;
                    let t = Instant::now();
                    let chain = iptables::Chain::install(
                        &netns_name(&self.pair.b)?,
                        b,
                        topo::IF_B,
                        &set.iptables,
                    )?;
                    self.install_ms
                        .entry(mode.label())
                        .or_default()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    self.chain = Some((b, n, chain));
                }
            }
        }
        Ok(())
    }

    /// Writes what turns the maps' content into `next`, in the agent's
    /// order, then bumps the generation.
    fn write(&mut self, next: &Compiled, n: usize) -> Result<()> {
        let changes = next.diff(&self.written);
        if changes.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        apply(self.dp.policy_maps(), &changes)?;
        self.write_ms
            .entry(n)
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
        self.written = next.clone();
        Ok(())
    }
}

/// Writes `changes` as the agent's policy controller does: new allows,
/// cells and addresses; then isolation switches; then what nothing refers
/// to any more; then a new generation.
pub fn apply(maps: &mut PolicyMaps, changes: &MapChanges) -> Result<()> {
    for ((prefix, key), value) in &changes.policy.upserts {
        maps.set_rule(*prefix, *key, *value)?;
    }
    for ((prefix, key), cell) in &changes.cidr_cells.upserts {
        maps.set_cidr(*prefix, *key, *cell)?;
    }
    for (key, id) in &changes.ipcache.upserts {
        maps.set_ip(*key, *id)?;
    }
    for (ifindex, ep) in &changes.policy_ep.upserts {
        maps.set_endpoint(*ifindex, *ep)?;
    }
    for ifindex in &changes.policy_ep.deletes {
        maps.remove_endpoint(*ifindex)?;
    }
    for (prefix, key) in &changes.policy.deletes {
        maps.remove_rule(*prefix, *key)?;
    }
    for (prefix, key) in &changes.cidr_cells.deletes {
        maps.remove_cidr(*prefix, *key)?;
    }
    for key in &changes.ipcache.deletes {
        maps.remove_ip(*key)?;
    }
    maps.bump_generation()?;
    Ok(())
}

fn netns_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no namespace name", path.display()))
}

fn counters(dp: &Datapath) -> Result<[u64; 3]> {
    let c = dp.counters().context("reading counters")?;
    Ok([
        c.stats[stat::PACKETS as usize],
        c.stats[stat::POLICY_LOOKUPS as usize],
        c.stats[stat::POLICY_DENIED as usize],
    ])
}

pub async fn run(opts: &Options) -> Result<Vec<Report>> {
    let machine = Machine::current();
    let started = Instant::now();
    let mut counts = opts.rules.clone();
    counts.sort_unstable();
    counts.dedup();
    if opts.reps == 0 || opts.window.is_zero() || counts.is_empty() || counts[0] == 0 {
        bail!("policy-rules: --reps, --window and every rule count must be positive");
    }
    let opts = Options {
        rules: counts.clone(),
        ..opts.clone()
    };

    // Drop order (reverse of declaration): churn, endpoint (chain, programs), reader, namespaces.
    let pair = tokio::task::spawn_blocking(Pair::create)
        .await
        .context("creating the namespaces")??;
    let mut dp = Datapath::load(&DatapathOptions {
        aggregation: Aggregation::Full,
        ..DatapathOptions::default()
    })
    .context("loading the datapath")?;
    let events_read = Arc::new(AtomicU64::new(0));
    let _reader = ring::drain(&mut dp, events_read.clone())?;
    let ifindex = in_netns(&pair.a, || dp.attach(topo::IF_A))?
        .with_context(|| format!("attaching to {}", topo::IF_A))?;
    let sets = counts
        .iter()
        .map(|&n| RuleSet::new(n, ifindex))
        .collect::<Result<Vec<_>>>()?;
    for s in &sets {
        tracing::info!(
            rules = s.n,
            entries = s.compiled.policy_len(),
            cells = s.compiled.cidr_cells().len(),
            compile_ms = s.compile_ms,
            "rule set compiled"
        );
    }
    let mut ep = Endpoint {
        dp,
        pair: &pair,
        written: Compiled::default(),
        chain: None,
        write_ms: BTreeMap::new(),
        install_ms: BTreeMap::new(),
    };

    let all = modes(&opts);
    let per_window = opts.window + Duration::from_secs(5);
    let churn = Churn::start(&ChurnConfig {
        client_netns: pair.a.clone(),
        server_netns: pair.b.clone(),
        dst: format!("{}:{PROBE_PORT}", topo::ADDR_B).parse()?,
        clients: opts.clients.max(1),
        // A connect that loses its SYN (rare: see conn.rs) waits for the
        // 1 s retransmission; giving up sooner bounds what one costs a window.
        connect_timeout: Duration::from_millis(200),
        max_duration: per_window * (all.len() * opts.reps) as u32 + Duration::from_secs(60),
    })?;

    let mut windows = Vec::with_capacity(all.len() * opts.reps);
    for rep in 0..opts.reps {
        for mode in order(&all, rep) {
            ep.set(mode, &sets)
                .with_context(|| format!("switching to {}", mode.label()))?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !churn.running() {
                bail!("the connection churn stopped early");
            }
            let chain_before = chain_counts(&ep)?;
            let c0 = counters(&ep.dp)?;
            let s0 = churn.sample();
            tokio::time::sleep(opts.window).await;
            let s1 = churn.sample();
            let c1 = counters(&ep.dp)?;
            let chain_after = chain_counts(&ep)?;
            let w = Window {
                rep,
                mode,
                rate: s1.rate_since(&s0),
                connected: s1.connected - s0.connected,
                failed: s1.failed - s0.failed,
                program_packets: c1[0] - c0[0],
                lookups: c1[1] - c0[1],
                denied: c1[2] - c0[2],
                chain_probe: chain_before.zip(chain_after).map(|(a, b)| b.0 - a.0),
                chain_dropped: chain_before.zip(chain_after).map(|(a, b)| b.1 - a.1),
            };
            tracing::info!(mode = %mode.label(), rate = w.rate.round(), failed = w.failed, lookups = w.lookups, "window");
            check_window(&w)?;
            windows.push(w);
        }
    }
    // Flatness from back-to-back pairs: the machine drifts less within one
    // pair (about 1.5 s) than across a repetition of every mode.
    let pairs = flatness_pairs(
        &mut ep,
        &sets,
        (counts[0], counts[counts.len() - 1]),
        &opts,
        &churn,
    )
    .await?;
    // The programs' own run time per mode, in windows of their own: while
    // the kernel times BPF runs every run costs two more clock reads, which
    // must not weigh on the Weir side of the rate windows.
    let prog_ns = program_run_times(&mut ep, &sets, &counts, &churn).await?;
    let last = churn.stop();
    ep.chain = None;
    set_attached(&mut ep.dp, &pair, false)?;
    let dp_counters = ep.dp.counters().context("reading counters")?;
    let (write_ms, install_ms) = (ep.write_ms.clone(), ep.install_ms.clone());
    drop(ep);
    drop(pair);

    let med = |m: Mode| median(&rates(&windows, m));
    let (lo, hi) = (counts[0], counts[counts.len() - 1]);
    let weir_lo = med(Mode::Weir(lo));
    let weir_hi = med(Mode::Weir(hi));
    let per_rep = paired(&windows, Mode::Weir(hi), Mode::Weir(lo));
    let pair_lo: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let pair_hi: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let pair_ratios: Vec<f64> = pairs
        .iter()
        .filter(|p| p.0 > 0.0)
        .map(|p| p.1 / p.0)
        .collect();

    let mut modes_json = serde_json::Map::new();
    for m in &all {
        let r = rates(&windows, *m);
        modes_json.insert(
            m.label(),
            json!({
                "median_conn_per_s": median(&r).round(),
                "spread": round(spread(&r), 4),
                "windows": r.iter().map(|x| x.round()).collect::<Vec<_>>(),
            }),
        );
    }
    let sets_json: Vec<Value> = sets
        .iter()
        .map(|s| {
            json!({
                "rules": s.n,
                "policies": s.policies,
                "policy_entries": s.compiled.policy_len(),
                "cidr_cells": s.compiled.cidr_cells().len(),
                "ipcache_entries": s.compiled.ipcache().len(),
                "compile_ms": round(s.compile_ms, 2),
                "map_write_ms": write_ms.get(&s.n).map(|v| round(median(v), 2)),
            })
        })
        .collect();
    let lookups_per_conn: f64 = {
        let (l, c) = windows
            .iter()
            .filter(|w| matches!(w.mode, Mode::Weir(_)))
            .fold((0u64, 0u64), |(l, c), w| (l + w.lookups, c + w.connected));
        if c > 0 { l as f64 / c as f64 } else { f64::NAN }
    };
    let failed_total: u64 = windows.iter().map(|w| w.failed).sum();

    let mut flat = Report::new(
        "policy-rules",
        Quantity::new(
            format!(
                "new TCP connections/s through the endpoint, {lo} rules select it (median of the pair windows)"
            ),
            median(&pair_lo).round(),
            "conn/s",
        ),
        Quantity::new(
            format!(
                "new TCP connections/s through the endpoint, {hi} rules select it (median of the pair windows)"
            ),
            median(&pair_hi).round(),
            "conn/s",
        ),
        Target::new(Subject::Ratio, Op::AtLeast, 0.9, ""),
        started.elapsed(),
        machine.clone(),
    );
    flat.set_ratio(
        median(&pair_ratios),
        "median over back-to-back window pairs of (rate with the most rules / rate with the fewest)",
    );
    flat.detail(
        "pair_ratios",
        json!(pair_ratios.iter().map(|r| round(*r, 4)).collect::<Vec<_>>()),
    )
    .detail("pairs", pairs.len() as u64)
    .detail("pair_window_s", opts.pair_window.as_secs_f64())
    .detail("ratio_of_mode_medians", round(weir_hi / weir_lo, 4))
    .detail(format!("conn_per_s_{lo}_rules_mode_median").as_str(), weir_lo.round())
    .detail(format!("conn_per_s_{hi}_rules_mode_median").as_str(), weir_hi.round())
    .detail("ratio_per_rep", json!(per_rep.iter().map(|r| round(*r, 4)).collect::<Vec<_>>()))
        .detail("ratio_per_rep_median", round(median(&per_rep), 4))
        .detail("conn_per_s_no_policy", med(Mode::WeirNoPolicy).round())
        .detail("conn_per_s_no_programs", med(Mode::Bare).round())
        .detail(
            "policy_cost_ratio",
            round(weir_lo / med(Mode::WeirNoPolicy), 4),
        )
        .detail(
            "programs_cost_ratio",
            round(med(Mode::WeirNoPolicy) / med(Mode::Bare), 4),
        )
        .detail("policy_lookups_per_connection", round(lookups_per_conn, 3))
        .detail("modes", Value::Object(modes_json))
        .detail("program_ns_per_run", json!(prog_ns))
        .detail(
            "to_endpoint_ns_per_run_added_by_rules",
            round(
                to_endpoint_ns(&prog_ns, Mode::Weir(hi)) - to_endpoint_ns(&prog_ns, Mode::Weir(lo)),
                1,
            ),
        )
        .detail(
            "to_endpoint_ns_per_run_added_by_policy",
            round(
                to_endpoint_ns(&prog_ns, Mode::Weir(lo)) - to_endpoint_ns(&prog_ns, Mode::WeirNoPolicy),
                1,
            ),
        )
        .detail("rule_sets", json!(sets_json))
        .detail("window_s", opts.window.as_secs_f64())
        .detail("reps", opts.reps as u64)
        .detail("clients", opts.clients as u64)
        .detail("failed_connects", failed_total)
        .detail("connections_total", last.connected)
        .detail("connections_accepted_by_server", last.accepted)
        .detail("events_read", events_read.load(Ordering::Relaxed))
        .detail("events_lost", dp_counters.stats[stat::EVENTS_LOST as usize])
        .note("the headline ratio comes from back-to-back pairs of short windows (fewest rules, most rules; the order alternating per pair, maps rewritten in between); `modes` has every mode's windows from the repetitions, which drift more on a shared machine")
        .note("conn/s counts connects completed by the clients (SYN, SYN-ACK, ACK, then an RST close); each is a new conntrack entry and one ingress policy lookup at the endpoint (checked per window: lookups >= 0.9 x connects, none denied)")
        .note("the rules: all but the last allow another peer (alternately a pod identity and an ipBlock /32) on one of 1 000 ports; the last allows the clients' address on the server port, so the probe misses on its identity, then hits through its CIDR cell")
        .note("clients, server, the programs (softirq) and the event reader share the 2 vCPUs with everything else on the machine; the ratios, not the absolute rates, are the figure")
        .note("program_ns_per_run: the kernel's BPF run-time statistics (BPF_ENABLE_STATS, run_time_ns / run_cnt of this process's programs) in separate 1 s windows per mode, the churn running; weir_to_endpoint takes the ingress policy lookup, and runs on every packet towards the server (SYN, ACK, RST), so its per-run average dilutes the per-SYN lookup by about 3")
        .note("policy_cost_ratio: conn/s with the smallest rule count / with the endpoint not policed (programs attached); programs_cost_ratio: not policed / no programs at all");
    if spread(&rates(&windows, Mode::Weir(hi))) > 0.1
        || spread(&rates(&windows, Mode::Weir(lo))) > 0.1
    {
        flat.note("window-to-window spread above 10 %: the machine was busy; re-run when quieter");
    }
    if failed_total > 0 {
        flat.note(format!(
            "{failed_total} connects failed (200 ms timeout) over the run"
        ));
    }
    let mut reports = vec![flat];

    for &b in &opts.iptables {
        let ipt_hi = med(Mode::Iptables(b, hi));
        let mut r = Report::new(
            &format!("policy-rules-iptables-{}", b.as_str()),
            Quantity::new(
                format!(
                    "new TCP connections/s, iptables ({}) with {hi} rules, Weir detached (median)",
                    b.as_str()
                ),
                ipt_hi.round(),
                "conn/s",
            ),
            Quantity::new(
                format!("new TCP connections/s, Weir with {hi} rules (median)"),
                weir_hi.round(),
                "conn/s",
            ),
            Target::new(Subject::Ratio, Op::AtLeast, 5.0, ""),
            started.elapsed(),
            machine.clone(),
        );
        let per_rep = paired(&windows, Mode::Weir(hi), Mode::Iptables(b, hi));
        let mut by_count = serde_json::Map::new();
        for &n in &counts {
            by_count.insert(
                n.to_string(),
                json!({
                    "iptables_conn_per_s": med(Mode::Iptables(b, n)).round(),
                    "weir_conn_per_s": med(Mode::Weir(n)).round(),
                    "weir_over_iptables": round(med(Mode::Weir(n)) / med(Mode::Iptables(b, n)), 3),
                    "iptables_install_ms": install_ms.get(&Mode::Iptables(b, n).label()).map(|v| round(median(v), 1)),
                }),
            );
        }
        r.detail("ratio_per_rep", json!(per_rep.iter().map(|x| round(*x, 3)).collect::<Vec<_>>()))
            .detail("by_rule_count", Value::Object(by_count))
            .detail("conn_per_s_no_programs_no_iptables", med(Mode::Bare).round())
            .detail("iptables", b.as_str())
            .detail("window_s", opts.window.as_secs_f64())
            .detail("reps", opts.reps as u64)
            .note("iptables: a chain WBENCH-<pid> in the server namespace's filter table, jumped to from INPUT for wb1 after `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`, holding the same allow rules in the same order (`-s ADDR/32 -p tcp --dport PORT -j ACCEPT`), then DROP; checked per window: the probe's rule counts >= 0.9 x connects, the DROP none")
            .note("the Weir side runs with its event reader and conntrack; iptables with the kernel's conntrack in the server namespace");
        reports.push(r);
    }
    Ok(reports)
}

/// Rates (fewest rules, most rules) of back-to-back window pairs, the
/// order alternating per pair; each window checked like the others.
async fn flatness_pairs(
    ep: &mut Endpoint<'_>,
    sets: &[RuleSet],
    (lo, hi): (usize, usize),
    opts: &Options,
    churn: &Churn,
) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::with_capacity(opts.pairs);
    for i in 0..opts.pairs {
        let order = if i % 2 == 0 { [lo, hi] } else { [hi, lo] };
        let mut rate = [0.0; 2];
        for n in order {
            let mode = Mode::Weir(n);
            ep.set(mode, sets)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !churn.running() {
                bail!("the connection churn stopped early");
            }
            let c0 = counters(&ep.dp)?;
            let s0 = churn.sample();
            tokio::time::sleep(opts.pair_window).await;
            let s1 = churn.sample();
            let c1 = counters(&ep.dp)?;
            let w = Window {
                rep: i,
                mode,
                rate: s1.rate_since(&s0),
                connected: s1.connected - s0.connected,
                failed: s1.failed - s0.failed,
                program_packets: c1[0] - c0[0],
                lookups: c1[1] - c0[1],
                denied: c1[2] - c0[2],
                chain_probe: None,
                chain_dropped: None,
            };
            check_window(&w)?;
            rate[usize::from(n == hi)] = w.rate;
        }
        out.push((rate[0], rate[1]));
    }
    Ok(out)
}

/// Windows in which the kernel's BPF statistics are on, per mode.
const STATS_REPS: usize = 3;
const STATS_WINDOW: Duration = Duration::from_secs(1);

/// Nanoseconds per run of each of the programs (by name), per Weir mode
/// (by label), medians over [`STATS_REPS`] windows alternating the modes.
/// Empty when the kernel refuses `BPF_ENABLE_STATS`.
async fn program_run_times(
    ep: &mut Endpoint<'_>,
    sets: &[RuleSet],
    counts: &[usize],
    churn: &Churn,
) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut modes = vec![Mode::WeirNoPolicy];
    modes.extend(counts.iter().map(|&n| Mode::Weir(n)));
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut samples: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for rep in 0..STATS_REPS {
        for mode in order(&modes, rep) {
            ep.set(mode, sets)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !churn.running() {
                bail!("the connection churn stopped early");
            }
            let stats = match bpfstats::StatsEnabled::enable() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "BPF run-time statistics unavailable");
                    return Ok(BTreeMap::new());
                }
            };
            let s0 = bpfstats::own_programs()?;
            tokio::time::sleep(STATS_WINDOW).await;
            let s1 = bpfstats::own_programs()?;
            drop(stats);
            for (id, after) in &s1 {
                let Some(ns) = s0.get(id).and_then(|before| after.ns_per_run_since(before)) else {
                    continue;
                };
                if !names.contains_key(id) {
                    names.insert(*id, bpfstats::program_name(*id)?);
                }
                samples
                    .entry(mode.label())
                    .or_default()
                    .entry(names[id].clone())
                    .or_default()
                    .push(ns);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|(mode, progs)| {
            let medians = progs
                .into_iter()
                .map(|(name, v)| (name, (median(&v) * 10.0).round() / 10.0))
                .collect();
            (mode, medians)
        })
        .collect())
}

/// Each window must show its mode really ran.
fn check_window(w: &Window) -> Result<()> {
    let label = w.mode.label();
    match w.mode {
        Mode::Weir(_) => {
            ensure!(
                w.lookups as f64 >= 0.9 * w.connected as f64,
                "{label}: {} policy lookups for {} connections: the rules are not on the path",
                w.lookups,
                w.connected
            );
            ensure!(w.denied == 0, "{label}: {} packets denied", w.denied);
        }
        Mode::WeirNoPolicy => {
            ensure!(w.program_packets > 0, "{label}: the programs saw no packet");
            ensure!(
                w.lookups == 0,
                "{label}: {} policy lookups with no policy",
                w.lookups
            );
        }
        Mode::Bare | Mode::Iptables(..) => {
            ensure!(
                w.program_packets == 0,
                "{label}: programs detached but counted {} packets",
                w.program_packets
            );
        }
    }
    if let Mode::Iptables(..) = w.mode {
        let probe = w.chain_probe.unwrap_or(0);
        ensure!(
            probe as f64 >= 0.9 * w.connected as f64,
            "{label}: the probe's iptables rule matched {probe} packets for {} connections",
            w.connected
        );
        ensure!(
            w.chain_dropped == Some(0),
            "{label}: the chain's DROP took {:?} packets",
            w.chain_dropped
        );
    }
    Ok(())
}

/// weir_to_endpoint's average run time in `mode` (NaN when not measured).
fn to_endpoint_ns(prog_ns: &BTreeMap<String, BTreeMap<String, f64>>, mode: Mode) -> f64 {
    prog_ns
        .get(&mode.label())
        .and_then(|p| p.get(weir_common::programs::TO_ENDPOINT))
        .copied()
        .unwrap_or(f64::NAN)
}

fn chain_counts(ep: &Endpoint<'_>) -> Result<Option<(u64, u64)>> {
    match &ep.chain {
        Some((_, _, chain)) => Ok(Some((chain.probe_packets()?, chain.dropped()?))),
        None => Ok(None),
    }
}

fn rates(windows: &[Window], mode: Mode) -> Vec<f64> {
    windows
        .iter()
        .filter(|w| w.mode == mode)
        .map(|w| w.rate)
        .collect()
}

/// Per repetition, rate of `num` / rate of `den`.
fn paired(windows: &[Window], num: Mode, den: Mode) -> Vec<f64> {
    let reps = windows.iter().map(|w| w.rep).max().map_or(0, |r| r + 1);
    (0..reps)
        .filter_map(|rep| {
            let find = |m: Mode| windows.iter().find(|w| w.rep == rep && w.mode == m);
            let (a, b) = (find(num)?, find(den)?);
            (b.rate > 0.0).then(|| a.rate / b.rate)
        })
        .collect()
}

/// Attaches to (or detaches from) `wb0`, from a thread inside `a`.
fn set_attached(dp: &mut Datapath, pair: &Pair, attached: bool) -> Result<()> {
    in_netns(&pair.a, || {
        if attached {
            dp.attach(topo::IF_A).map(|_| ())
        } else {
            dp.detach(topo::IF_A)
        }
    })?
    .with_context(|| {
        format!(
            "{} {}",
            if attached {
                "attaching to"
            } else {
                "detaching from"
            },
            topo::IF_A
        )
    })?;
    let expected = usize::from(attached);
    if dp.attached().len() != expected {
        bail!(
            "expected the programs on {expected} interfaces, found {:?}",
            dp.attached()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_alternate_pods_and_blocks_and_end_with_the_probe() {
        let rules = peer_rules(10_000);
        assert_eq!(rules.len(), 10_000);
        let probe = rules.last().expect("rules");
        assert_eq!(probe.kind, PeerKind::Probe);
        assert_eq!(probe.addr.to_string(), topo::ADDR_A);
        assert_eq!(probe.port, PROBE_PORT);
        assert_eq!(
            rules.iter().filter(|r| r.kind == PeerKind::Pod).count(),
            5_000
        );
        let mut addrs: Vec<Ipv4Addr> = rules.iter().map(|r| r.addr).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 10_000, "every rule has its own peer address");
        assert!(
            rules[..9_999].iter().all(|r| r.port != PROBE_PORT),
            "only the probe's rule uses the probe port"
        );
        assert_eq!(peer_rules(1).len(), 1);
        assert!(peer_rules(0).is_empty());
    }

    #[test]
    fn compiled_rules_allow_the_probe_only_through_its_cell_and_iptables_matches() {
        for n in [10, 1_000] {
            let rules = peer_rules(n);
            let input = input(&rules, 7).expect("input");
            assert_eq!(input.policies.len(), n.div_ceil(RULES_PER_POLICY));
            let c = Compiler::new().compile(&input);
            check_compiled(&c, &rules, 7).expect("compiled maps as designed");
            // One entry per rule, plus the node's ingress rule.
            assert_eq!(c.policy_len(), n + 1, "{n} rules");
            assert_eq!(c.cidr_cells().len(), n / 2, "a cell per ipBlock rule");
            let ipt = iptables_rules(&rules);
            assert_eq!(ipt.len(), n);
            assert_eq!(
                ipt.last(),
                Some(&AcceptRule {
                    source: format!("{}/32", topo::ADDR_A),
                    dport: PROBE_PORT
                })
            );
        }
    }

    #[test]
    fn check_compiled_catches_a_probe_that_is_not_allowed() {
        let rules = peer_rules(10);
        // Every rule but the probe's, checked against the full list.
        let c = Compiler::new().compile(&input(&rules[..9], 7).expect("input"));
        assert!(check_compiled(&c, &rules, 7).is_err());
    }

    #[test]
    fn every_mode_is_in_every_repetition_and_orders_vary() {
        let opts = Options::default();
        let all = modes(&opts);
        assert_eq!(all.len(), 2 + 3 + 2 * 3);
        let mut firsts = Vec::new();
        for rep in 0..opts.reps {
            let o = order(&all, rep);
            let mut sorted = o.iter().map(|m| m.label()).collect::<Vec<_>>();
            sorted.sort();
            let mut expect = all.iter().map(|m| m.label()).collect::<Vec<_>>();
            expect.sort();
            assert_eq!(sorted, expect, "repetition {rep} runs every mode once");
            firsts.push(o[0]);
        }
        firsts.dedup();
        assert!(
            firsts.len() > 1,
            "the first mode changes between repetitions"
        );
    }

    #[test]
    fn paired_ratios_use_windows_of_the_same_repetition() {
        let w = |rep, mode, rate| Window {
            rep,
            mode,
            rate,
            connected: 0,
            failed: 0,
            program_packets: 0,
            lookups: 0,
            denied: 0,
            chain_probe: None,
            chain_dropped: None,
        };
        let windows = vec![
            w(0, Mode::Weir(10), 100.0),
            w(0, Mode::Weir(10_000), 90.0),
            w(1, Mode::Weir(10_000), 50.0),
            w(1, Mode::Weir(10), 100.0),
        ];
        assert_eq!(
            paired(&windows, Mode::Weir(10_000), Mode::Weir(10)),
            vec![0.9, 0.5]
        );
    }

    #[test]
    fn a_window_without_lookups_or_with_iptables_drops_is_refused() {
        let mut w = Window {
            rep: 0,
            mode: Mode::Weir(10),
            rate: 1000.0,
            connected: 1000,
            failed: 0,
            program_packets: 4000,
            lookups: 1000,
            denied: 0,
            chain_probe: None,
            chain_dropped: None,
        };
        assert!(check_window(&w).is_ok());
        w.lookups = 10;
        assert!(check_window(&w).is_err(), "rules not on the path");
        w.mode = Mode::Iptables(Backend::Nft, 10);
        w.program_packets = 0;
        w.chain_probe = Some(1000);
        w.chain_dropped = Some(0);
        assert!(check_window(&w).is_ok());
        w.chain_dropped = Some(3);
        assert!(check_window(&w).is_err(), "the probe must never be dropped");
        w.chain_dropped = Some(0);
        w.program_packets = 5;
        assert!(check_window(&w).is_err(), "programs must be detached");
    }
}
