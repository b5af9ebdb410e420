//! Figure `policy-compile`: weir-policy's compile time and memory at 10 000
//! NetworkPolicies over 10 000 pods: a full compile (the baseline) against a
//! recompile after one policy changed (what every later policy edit costs
//! the agent), with 100 of the pods local (one node of a 100-node cluster)
//! and with every pod local (the worst case a single node can be asked for).
//!
//! Each case runs in a child process (`weir-bench __policy-compile-worker`,
//! this binary) so that its resident memory is the compiler's alone: the
//! worker builds the input, reads its VmRSS, compiles and reads it again,
//! and prints one JSON line. Owns only this measurement; pure, unprivileged.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_common::defaults;
use weir_policy::{
    Compiler, Input, Labels, NamespaceInput, NetworkPolicy, PodInput, PodPort, Protocol,
};

use crate::proc;
use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median, round2};

/// The hidden subcommand that runs one case.
pub const WORKER_COMMAND: &str = "__policy-compile-worker";

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub policies_per_namespace: usize,
    /// Local endpoints of the first case (the second has every pod local).
    pub local: usize,
    /// Compiles timed per kind (full, one policy changed, one pod changed).
    pub reps: usize,
    /// Budget of one incremental recompile (the policy-latency target).
    pub budget_ms: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespaces: 100,
            pods_per_namespace: 100,
            policies_per_namespace: 100,
            local: 100,
            reps: 5,
            budget_ms: 50.0,
        }
    }
}

/// The scale of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub policies_per_namespace: usize,
    pub local: usize,
    pub reps: usize,
}

impl Scale {
    pub fn pods(&self) -> usize {
        self.namespaces * self.pods_per_namespace
    }

    pub fn policies(&self) -> usize {
        self.namespaces * self.policies_per_namespace
    }
}

/// Apps per namespace (pods are spread over them).
const APPS: usize = 50;

/// Pod `p` of namespace `ns` is local when its global index is `ns` modulo
/// `pods / local`: one in every `pods / local`, spread over every namespace
/// and, by the shift per namespace, over the apps.
fn is_local(scale: &Scale, ns: usize, p: usize) -> bool {
    let every = (scale.pods() / scale.local.max(1)).max(1);
    scale.local > 0 && (ns * scale.pods_per_namespace + p) % every == ns % every
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        100 + (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ))
}

/// Policy `k` of namespace `ns`, version `v` (a changed policy has v = 1).
/// Five shapes, in turn: a pod peer on one port; a namespace+pod peer on
/// a port range; egress to an ipBlock with an except plus DNS to anyone; a
/// named port open to the whole namespace; one port open to an app in every
/// namespace (the broad peers that make entries grow with local pods).
pub fn policy_json(ns: usize, k: usize, v: usize) -> Value {
    let app = format!("app{}", k % APPS);
    let peer = format!("app{}", (k * 7 + 3 + v) % APPS);
    let port = 8000 + (k as u16 % 1000) + v as u16;
    let spec = match k % 5 {
        0 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                         "ports": [{"port": port}]}]
        }),
        1 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (ns + v) % 10)}},
                                   "podSelector": {"matchLabels": {"app": peer}}}],
                         "ports": [{"protocol": "TCP", "port": 9000, "endPort": 9100 + v}]}]
        }),
        2 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": format!("172.{}.{}.0/24", ns % 256, (k + v) % 256),
                                     "except": [format!("172.{}.{}.128/25", ns % 256, (k + v) % 256)]}}]},
                {"ports": [{"protocol": "UDP", "port": 53}]}
            ]
        }),
        3 => json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app, peer]}]},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": if v == 0 { "http" } else { "metrics" }}]}]
        }),
        _ => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": peer}}}],
                         "ports": [{"port": 443 + v as u16}]}]
        }),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("p{k}"), "namespace": format!("ns{ns}")},
        "spec": spec,
    })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_policy(v: &Value) -> Result<Arc<NetworkPolicy>> {
    NetworkPolicy::from_value(v)
        .map(Arc::new)
        .map_err(|e| anyhow!("generated policy refused: {e}"))
}

/// The compiler input of `scale`: namespaces `ns<i>` labelled `team`, pods
/// with an app label (an identity per namespace and app, as weir-state
/// assigns one per label set) and named ports, the policies.
pub fn input(scale: &Scale) -> Result<Input> {
    let mut input = Input::default();
    for ns in 0..scale.namespaces {
        let name = format!("ns{ns}");
        input.namespaces.push(NamespaceInput {
            name: name.clone(),
            labels: labels(&[
                ("team", &format!("t{}", ns % 10)),
                ("kubernetes.io/metadata.name", &name),
            ]),
            annotations: Labels::new(),
        });
        for p in 0..scale.pods_per_namespace {
            let i = ns * scale.pods_per_namespace + p;
            let app = p % APPS;
            input.pods.push(PodInput {
                namespace: name.clone(),
                name: format!("pod{p}"),
                labels: labels(&[("app", &format!("app{app}"))]),
                identity: 256 + (ns * APPS + app) as u32,
                ips: vec![pod_ip(i)],
                ports: vec![
                    PodPort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    PodPort {
                        name: Some("metrics".into()),
                        port: 9090,
                        protocol: Protocol::Tcp,
                    },
                ],
                host_network: false,
                endpoint: is_local(scale, ns, p).then_some(1000 + i as u32),
            });
        }
        for k in 0..scale.policies_per_namespace {
            input.policies.push(parse_policy(&policy_json(ns, k, 0))?);
        }
    }
    Ok(input)
}

/// What one worker measured (its JSON line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    pub scale: Scale,
    pub endpoints: usize,
    pub policy_entries: usize,
    pub cidr_cells: usize,
    pub ipcache_entries: usize,
    pub attribution_ids: usize,
    /// Building the input, policies parsed from JSON.
    pub input_ms: f64,
    /// Full compiles with a fresh compiler.
    pub full_ms: Vec<f64>,
    /// Recompile of the same input.
    pub unchanged_ms: f64,
    /// Recompile + diff after one policy changed, one per policy tried.
    pub one_policy_ms: Vec<f64>,
    /// Map writes each of those needed, and endpoints rebuilt.
    pub one_policy_changes: Vec<usize>,
    pub one_policy_rebuilt: Vec<usize>,
    /// Recompile + diff after one local pod's labels changed.
    pub one_pod_ms: Vec<f64>,
    pub one_pod_changes: Vec<usize>,
    /// VmRSS with the input built, before any compile (KiB).
    pub rss_input_kib: u64,
    /// VmRSS holding the compiler and one compilation (KiB).
    pub rss_compiled_kib: u64,
    /// VmHWM at the end (KiB).
    pub hwm_kib: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs one case in this process and returns what it measured.
pub fn work(scale: &Scale) -> Result<WorkerResult> {
    let me = std::process::id();
    let t = Instant::now();
    let mut input = input(scale)?;
    let input_ms = ms(t.elapsed());
    let rss_input_kib = proc::status_field(me, "VmRSS")?;

    // The compilation kept (as the agent keeps its last), then fresh ones
    // timed while it is held.
    let mut compiler = Compiler::new();
    let t = Instant::now();
    let mut current = compiler.compile(&input);
    let mut full_ms = vec![ms(t.elapsed())];
    let stats = compiler.stats();
    let rss_compiled_kib = proc::status_field(me, "VmRSS")?;
    for _ in 1..scale.reps.max(1) {
        let mut fresh = Compiler::new();
        let t = Instant::now();
        let c = fresh.compile(&input);
        full_ms.push(ms(t.elapsed()));
        drop(c);
    }

    let t = Instant::now();
    let same = compiler.compile(&input);
    let changes = same.diff(&current);
    let unchanged_ms = ms(t.elapsed());
    if !changes.is_empty() {
        bail!(
            "recompiling the same input changed {} entries",
            changes.len()
        );
    }
    current = same;

    let (mut one_policy_ms, mut one_policy_changes, mut one_policy_rebuilt) =
        (Vec::new(), Vec::new(), Vec::new());
    for r in 0..scale.reps.max(1) {
        // A different policy each time, cycling through the five shapes.
        let (ns, k) = (
            (r * 37) % scale.namespaces,
            r % scale.policies_per_namespace,
        );
        let at = ns * scale.policies_per_namespace + k;
        input.policies[at] = parse_policy(&policy_json(ns, k, 1))?;
        let t = Instant::now();
        let next = compiler.compile(&input);
        let changes = next.diff(&current);
        one_policy_ms.push(ms(t.elapsed()));
        one_policy_changes.push(changes.len());
        one_policy_rebuilt.push(compiler.stats().endpoints_rebuilt);
        current = next;
    }

    let (mut one_pod_ms, mut one_pod_changes) = (Vec::new(), Vec::new());
    let locals: Vec<usize> = input
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.endpoint.is_some())
        .map(|(i, _)| i)
        .collect();
    for r in 0..scale.reps.max(1) {
        let Some(&i) = locals.get((r * 13) % locals.len().max(1)) else {
            break;
        };
        // Moves the pod to another app: that app's label set and identity.
        let ns = i / scale.pods_per_namespace;
        let app = (i % scale.pods_per_namespace % APPS + 1 + r) % APPS;
        let pod = &mut input.pods[i];
        pod.labels.insert("app".into(), format!("app{app}"));
        pod.identity = 256 + (ns * APPS + app) as u32;
        let t = Instant::now();
        let next = compiler.compile(&input);
        let changes = next.diff(&current);
        one_pod_ms.push(ms(t.elapsed()));
        one_pod_changes.push(changes.len());
        current = next;
    }
    let hwm_kib = proc::status_field(me, "VmHWM")?;
    Ok(WorkerResult {
        scale: *scale,
        endpoints: stats.endpoints,
        policy_entries: stats.policy_entries,
        cidr_cells: stats.cells,
        ipcache_entries: current.ipcache().len(),
        attribution_ids: compiler.stats().attribution_ids,
        input_ms,
        full_ms,
        unchanged_ms,
        one_policy_ms,
        one_policy_changes,
        one_policy_rebuilt,
        one_pod_ms,
        one_pod_changes,
        rss_input_kib,
        rss_compiled_kib,
        hwm_kib,
    })
}

/// The worker's command line for `scale`.
pub fn worker_args(scale: &Scale) -> Vec<String> {
    vec![
        WORKER_COMMAND.to_string(),
        "--namespaces".into(),
        scale.namespaces.to_string(),
        "--pods-per-namespace".into(),
        scale.pods_per_namespace.to_string(),
        "--policies-per-namespace".into(),
        scale.policies_per_namespace.to_string(),
        "--local".into(),
        scale.local.to_string(),
        "--reps".into(),
        scale.reps.to_string(),
    ]
}

/// Finds the worker's JSON line in its output (the last line that parses).
pub fn parse_worker_output(stdout: &str) -> Result<WorkerResult> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<WorkerResult>(l.trim()).ok())
        .context("the worker printed no result line")
}

fn run_worker(scale: &Scale) -> Result<WorkerResult> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let out = Command::new(&exe)
        .args(worker_args(scale))
        .env("WEIR_BENCH_LOG", "warn")
        .output()
        .with_context(|| format!("running {} {WORKER_COMMAND}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "the compile worker failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_worker_output(&String::from_utf8_lossy(&out.stdout))
}

/// Map capacities the entries must fit (the datapath's defaults).
fn capacities(r: &WorkerResult) -> Vec<(&'static str, usize, u32)> {
    vec![
        ("POLICY", r.policy_entries, defaults::POLICY_ENTRIES),
        ("POLICY_EP", r.endpoints, defaults::POLICY_ENDPOINTS),
        ("IPCACHE", r.ipcache_entries, defaults::IPCACHE_ENTRIES),
        ("CIDR_CELLS", r.cidr_cells, defaults::CIDR_CELL_ENTRIES),
    ]
}

/// The maps whose default capacity the compiled state exceeds.
pub fn overflows(r: &WorkerResult) -> Vec<String> {
    capacities(r)
        .into_iter()
        .filter(|(_, n, cap)| *n > *cap as usize)
        .map(|(map, n, cap)| format!("{map}: {n} entries > {cap}"))
        .collect()
}

fn report(
    figure: &str,
    r: &WorkerResult,
    opts: &Options,
    started: Instant,
    machine: Machine,
) -> Report {
    let full = median(&r.full_ms);
    let one = median(&r.one_policy_ms);
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    let mut rep = Report::new(
        figure,
        Quantity::new(
            format!(
                "full compile, {} policies over {} pods, {} local endpoints (median)",
                r.scale.policies(),
                r.scale.pods(),
                r.endpoints
            ),
            round2(full),
            "ms",
        ),
        Quantity::new(
            "recompile + diff after one policy changed (median)",
            round2(one),
            "ms",
        ),
        Target::new(Subject::Measured, Op::AtMost, opts.budget_ms, "ms"),
        started.elapsed(),
        machine,
    );
    let fits: serde_json::Map<String, Value> = capacities(r)
        .into_iter()
        .map(|(map, n, cap)| {
            (
                map.to_string(),
                json!({"entries": n, "capacity": cap, "fits": n <= cap as usize}),
            )
        })
        .collect();
    rep.detail("policies", r.scale.policies() as u64)
        .detail("pods", r.scale.pods() as u64)
        .detail("local_endpoints", r.endpoints as u64)
        .detail("policy_entries", r.policy_entries as u64)
        .detail("cidr_cells", r.cidr_cells as u64)
        .detail("ipcache_entries", r.ipcache_entries as u64)
        .detail("attribution_ids", r.attribution_ids as u64)
        .detail("maps", Value::Object(fits))
        .detail("full_compile_ms", json!(r.full_ms))
        .detail("unchanged_recompile_ms", r.unchanged_ms)
        .detail("one_policy_recompile_ms", json!(r.one_policy_ms))
        .detail("one_policy_map_writes", json!(r.one_policy_changes))
        .detail("one_policy_endpoints_rebuilt", json!(r.one_policy_rebuilt))
        .detail("one_pod_recompile_ms", json!(r.one_pod_ms))
        .detail("one_pod_recompile_ms_median", round2(median(&r.one_pod_ms)))
        .detail("one_pod_map_writes", json!(r.one_pod_changes))
        .detail("input_build_ms", r.input_ms)
        .detail("rss_mib_input_only", mib(r.rss_input_kib))
        .detail("rss_mib_with_compiled_state", mib(r.rss_compiled_kib))
        .detail(
            "rss_mib_compiled_state",
            mib(r.rss_compiled_kib.saturating_sub(r.rss_input_kib)),
        )
        .detail("peak_rss_mib", mib(r.hwm_kib))
        .note("one process per case (this binary's hidden worker): rss_mib_compiled_state is its VmRSS holding the compiler and one compilation minus its VmRSS with only the input built; peak_rss_mib is its VmHWM after every compile")
        .note(format!("target: one policy change recompiles (compile + diff, what the agent does before writing the maps) within the {} ms policy-latency budget", opts.budget_ms))
        .note("policies: five shapes in turn (pod peer + port; namespace+pod peer + port range; egress ipBlock with except + DNS; named port open to the namespace; one port open to an app in every namespace)");
    let over = overflows(r);
    if !over.is_empty() {
        rep.fail_because(format!(
            "the compiled state does not fit the datapath's default map sizes: {}",
            over.join("; ")
        ));
    }
    rep
}

pub fn run(opts: &Options) -> Result<Vec<Report>> {
    let machine = Machine::current();
    let started = Instant::now();
    let scale = Scale {
        namespaces: opts.namespaces,
        pods_per_namespace: opts.pods_per_namespace,
        policies_per_namespace: opts.policies_per_namespace,
        local: opts.local,
        reps: opts.reps,
    };
    if scale.pods() == 0 || scale.policies() == 0 || scale.local == 0 {
        bail!("policy-compile: namespaces, pods, policies and local endpoints must be positive");
    }
    let some = run_worker(&scale)?;
    let all = run_worker(&Scale {
        local: scale.pods(),
        ..scale
    })?;
    Ok(vec![
        report("policy-compile", &some, opts, started, machine.clone()),
        report("policy-compile-all-local", &all, opts, started, machine),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scale {
        Scale {
            namespaces: 4,
            pods_per_namespace: 10,
            policies_per_namespace: 10,
            local: 8,
            reps: 2,
        }
    }

    #[test]
    fn every_generated_policy_is_valid_in_both_versions() {
        for k in 0..10 {
            for v in 0..2 {
                parse_policy(&policy_json(3, k, v))
                    .unwrap_or_else(|e| panic!("policy {k} v{v}: {e:#}"));
            }
        }
        assert_ne!(policy_json(0, 0, 0), policy_json(0, 0, 1));
    }

    #[test]
    fn local_endpoints_are_spread_and_counted() {
        let s = small();
        let input = input(&s).expect("input");
        assert_eq!(input.pods.len(), 40);
        assert_eq!(input.policies.len(), 40);
        let local: Vec<&PodInput> = input.pods.iter().filter(|p| p.endpoint.is_some()).collect();
        assert_eq!(local.len(), 8);
        let namespaces: std::collections::BTreeSet<&str> =
            local.iter().map(|p| p.namespace.as_str()).collect();
        assert_eq!(namespaces.len(), 4, "local pods in every namespace");
        let apps: std::collections::BTreeSet<&String> =
            local.iter().filter_map(|p| p.labels.get("app")).collect();
        assert!(apps.len() >= 4, "local pods of several apps: {apps:?}");
    }

    #[test]
    fn the_worker_measures_and_its_line_round_trips() {
        let r = work(&small()).expect("worker");
        assert_eq!(r.endpoints, 8);
        assert!(r.policy_entries > 0);
        assert_eq!(r.full_ms.len(), 2);
        assert_eq!(r.one_policy_ms.len(), 2);
        assert!(
            r.one_policy_changes.iter().any(|&c| c > 0),
            "changing a policy changes some entries: {:?}",
            r.one_policy_changes
        );
        assert!(r.rss_compiled_kib > 0 && r.hwm_kib >= r.rss_compiled_kib);
        let line = serde_json::to_string(&r).expect("JSON");
        let out = format!("some log line\n{line}\n");
        assert_eq!(parse_worker_output(&out).expect("parsed"), r);
        assert!(parse_worker_output("nothing here\n").is_err());
        let args = worker_args(&r.scale);
        assert_eq!(args[0], WORKER_COMMAND);
        assert!(args.windows(2).any(|w| w == ["--local", "8"]));
    }

    #[test]
    fn overflowing_maps_are_named() {
        let mut r = work(&small()).expect("worker");
        assert!(overflows(&r).is_empty());
        r.policy_entries = 830_000;
        r.endpoints = 10_000;
        let over = overflows(&r);
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(over[0].starts_with("POLICY: 830000 entries > 262144"));
        assert!(over[1].starts_with("POLICY_EP: 10000"));
    }
}
