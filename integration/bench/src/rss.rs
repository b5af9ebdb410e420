//! Figure `agent-rss`: the agent's resident memory when idle with 1 000
//! endpoints, against the same agent idle with none (the baseline), in one
//! run. The agent runs in a lab's node namespace (weir-integration). The
//! endpoints are made either by the real weir-cni in 1 000 real pod
//! namespaces (`cni`, the default: pod manifests, CNI ADD, registration,
//! attach, exactly as in use), or as veth pairs inside the node namespace
//! registered through the local API (`veth`: quicker, no pod namespaces,
//! no Pod objects). Owns only this measurement; the lab removes what it made
//! (the veth pairs of `veth` go away with the node namespace).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use weir_integration::{FlowLog, Lab, LabOptions, NamespaceSpec, PodSpec, netns};
use weir_localapi::EndpointRegistration;

use crate::report::{Machine, Op, Quantity, Report, Subject, Target};
use crate::{Binaries, proc};

/// How the endpoints are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Real pod namespaces through weir-cni.
    Cni,
    /// veth pairs in the node namespace, registered through the local API.
    Veth,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Cni => "cni",
            Via::Veth => "veth",
        }
    }
}

/// Options of the figure.
#[derive(Clone, Debug)]
pub struct Options {
    pub endpoints: u32,
    pub via: Via,
    /// Idle time before each reading.
    pub idle: Duration,
    /// Upper bound for making all endpoints.
    pub setup_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: 1_000,
            via: Via::Cni,
            idle: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(900),
        }
    }
}

const NAMESPACES: u32 = 10;
/// Pods added per `Lab::add_pods` call (progress and an RSS sample after each).
const CHUNK: u32 = 100;
const MIB: f64 = 1024.0;

fn rss_mib(pid: u32) -> Result<f64> {
    Ok(proc::status_field(pid, "VmRSS")? as f64 / MIB)
}

pub async fn run(opts: &Options, bins: &Binaries) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.endpoints == 0 || opts.endpoints > 4000 {
        bail!("agent-rss: --endpoints must be 1..=4000 (the pod CIDR is a /20)");
    }
    let mut lab_opts = LabOptions::new(&bins.weir, &bins.cni);
    lab_opts.serve_bin = None;
    lab_opts.node_name = "wbench".into();
    lab_opts.flow_log = Some(FlowLog::Off);
    lab_opts.pod_cidrs = vec!["10.244.0.0/20".into(), "fd00:10:244::/112".into()];
    let mut lab = Lab::start(lab_opts).await.context("starting the lab")?;
    let pid = lab.agent_pid().context("the lab has no agent")?;

    tokio::time::sleep(opts.idle).await;
    let rss0 = rss_mib(pid)?;
    let hwm0 = proc::status_field(pid, "VmHWM")? as f64 / MIB;
    let anon0 = proc::status_field(pid, "RssAnon")? as f64 / MIB;

    let setup = Instant::now();
    let made = tokio::time::timeout(opts.setup_timeout, async {
        match opts.via {
            Via::Cni => make_pods(&mut lab, opts.endpoints, pid).await,
            Via::Veth => make_veths(&lab, opts.endpoints, pid).await,
        }
    })
    .await
    .with_context(|| {
        format!(
            "making {} endpoints took longer than {:?}",
            opts.endpoints, opts.setup_timeout
        )
    })??;
    let setup_s = setup.elapsed().as_secs_f64();

    let status = lab.agent_status().await.context("agent status")?;
    if status.endpoints != u64::from(opts.endpoints) {
        bail!(
            "the agent reports {} endpoints, expected {}",
            status.endpoints,
            opts.endpoints
        );
    }
    let attached = lab
        .client()
        .endpoints()
        .await
        .context("listing endpoints")?
        .iter()
        .filter(|e| e.attached)
        .count();
    tokio::time::sleep(opts.idle).await;
    let rss1 = rss_mib(pid)?;
    let hwm1 = proc::status_field(pid, "VmHWM")? as f64 / MIB;
    let anon1 = proc::status_field(pid, "RssAnon")? as f64 / MIB;
    let file1 = proc::status_field(pid, "RssFile")? as f64 / MIB;
    let threads = proc::status_field(pid, "Threads")?;
    let metrics_rss = lab.metrics_text().await.ok().map(|t| {
        crate::prom::Page::parse(&t).sum("process_resident_memory_bytes", &[]) / MIB / MIB
    });

    let teardown = Instant::now();
    lab.shutdown().await.context("removing the lab")?;
    let teardown_s = teardown.elapsed().as_secs_f64();

    let mut report = Report::new(
        "agent-rss",
        Quantity::new("agent VmRSS, idle, 0 endpoints", round1(rss0), "MiB"),
        Quantity::new(
            format!("agent VmRSS, idle, {} endpoints", opts.endpoints),
            round1(rss1),
            "MiB",
        ),
        Target::new(Subject::Measured, Op::AtMost, 50.0, "MiB"),
        started.elapsed(),
        machine,
    );
    report
        .detail("endpoints", opts.endpoints)
        .detail("endpoints_attached", attached as u64)
        .detail("endpoints_via", opts.via.as_str())
        .detail("registration_s", round1(made.registration_s))
        .detail(
            "registration_ms_per_endpoint",
            round1(made.registration_s * 1e3 / f64::from(opts.endpoints)),
        )
        .detail("setup_s", round1(setup_s))
        .detail("teardown_s", round1(teardown_s))
        .detail("rss_mib_per_1000_endpoints", round1((rss1 - rss0) * 1000.0 / f64::from(opts.endpoints)))
        .detail("rss_anon_mib_0", round1(anon0))
        .detail("rss_anon_mib_after", round1(anon1))
        .detail("rss_file_mib_after", round1(file1))
        .detail("agent_threads", threads)
        .detail(
            "malloc_arena_max",
            std::env::var("MALLOC_ARENA_MAX").map_or(json!("unset (glibc default)"), |v| json!(v)),
        )
        .detail("vm_hwm_mib_0", round1(hwm0))
        .detail("vm_hwm_mib_after", round1(hwm1))
        .detail(
            "process_resident_memory_mib_from_metrics",
            metrics_rss.map_or(json!(null), |m| json!(round1(m))),
        )
        .detail(
            "rss_mib_during_setup",
            json!(
                made.samples
                    .iter()
                    .map(|(n, m)| json!([n, round1(*m)]))
                    .collect::<Vec<_>>()
            ),
        )
        .note(match opts.via {
            Via::Cni => "endpoints made by the real weir-cni in real pod namespaces, with Pod manifests (10 namespaces); registration_s covers netns creation, manifests, CNI ADD (which registers and waits for the attach)",
            Via::Veth => "endpoints made as veth pairs inside the node namespace (ip -batch) and registered through weir_localapi::Client::register, 8 at a time; no pod namespaces, no Pod manifests; registration_s covers the register calls only",
        })
        .note("VmRSS counts the agent's own memory; BPF maps and programs are kernel memory and are not in it");
    Ok(report)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What making the endpoints measured.
struct Made {
    registration_s: f64,
    /// (endpoints so far, VmRSS MiB) after each chunk.
    samples: Vec<(u32, f64)>,
}

async fn make_pods(lab: &mut Lab, n: u32, pid: u32) -> Result<Made> {
    for ns in 0..NAMESPACES {
        lab.add_namespace(
            NamespaceSpec::new(&format!("bench-{ns}")).label("team", &format!("t{}", ns % 3)),
        )?;
    }
    let t = Instant::now();
    let mut samples = Vec::new();
    let mut made = 0;
    while made < n {
        let end = (made + CHUNK).min(n);
        let pods = (made..end)
            .map(|i| {
                PodSpec::new(&format!("bench-{}", i % NAMESPACES), &format!("pod-{i:04}"))
                    .label("app", &format!("app-{}", i % 50))
                    .label("tier", "backend")
            })
            .collect();
        lab.add_pods(pods)
            .await
            .with_context(|| format!("adding pods {made}..{end}"))?;
        made = end;
        let rss = rss_mib(pid)?;
        tracing::info!(
            endpoints = made,
            rss_mib = rss,
            elapsed_s = t.elapsed().as_secs_f64(),
            "pods added"
        );
        samples.push((made, rss));
    }
    Ok(Made {
        registration_s: t.elapsed().as_secs_f64(),
        samples,
    })
}

fn host_name(i: u32) -> String {
    format!("wbh{i:04}")
}

async fn make_veths(lab: &Lab, n: u32, pid: u32) -> Result<Made> {
    let node = lab.node_netns().to_string();
    let batch: String = (0..n)
        .map(|i| {
            let (h, p) = (host_name(i), format!("wbp{i:04}"));
            format!("link add {h} type veth peer name {p}\nlink set {h} up\nlink set {p} up\n")
        })
        .collect();
    let batch_file = lab.dir().join("wbench-veths.batch");
    std::fs::write(&batch_file, batch).context("writing the ip batch file")?;
    let file = batch_file.display().to_string();
    tokio::task::spawn_blocking(move || crate::topo::ip(&["-n", &node, "-batch", &file]))
        .await
        .context("ip -batch")??;
    let node_path = netns::path(lab.node_netns());
    let names: Vec<String> = (0..n).map(host_name).collect();
    let indexes = tokio::task::spawn_blocking(move || ifindexes(&node_path, &names))
        .await
        .context("reading ifindexes")??;

    let client = lab.client().clone();
    let t = Instant::now();
    let regs: Vec<EndpointRegistration> = (0..n)
        .zip(indexes)
        .map(|(i, idx)| EndpointRegistration {
            container_id: format!("wbench{i:06}"),
            ifname: "eth0".into(),
            netns: String::new(),
            namespace: format!("bench-{}", i % NAMESPACES),
            pod: format!("pod-{i:04}"),
            host_ifname: host_name(i),
            host_ifindex: idx,
            ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, i as u16 + 2)),
            ],
            mac: String::new(),
        })
        .collect();
    // Eight in flight, as the lab sets pods up.
    let results: Vec<_> = futures::stream::iter(regs.iter().map(|r| client.register(r)))
        .buffer_unordered(8)
        .collect()
        .await;
    let registration_s = t.elapsed().as_secs_f64();
    for r in results {
        let ep = r.context("registering an endpoint")?;
        if !ep.attached {
            bail!(
                "endpoint {} registered but not attached",
                ep.registration.host_ifname
            );
        }
    }
    Ok(Made {
        registration_s,
        samples: vec![(n, rss_mib(pid)?)],
    })
}

fn ifindexes(node: &Path, names: &[String]) -> Result<Vec<u32>> {
    netns::run_in(node, || {
        names
            .iter()
            .map(|n| {
                let c = std::ffi::CString::new(n.as_str()).context("interface name")?;
                // SAFETY: a valid NUL-terminated name.
                let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if idx == 0 {
                    bail!("no interface {n} in the node namespace");
                }
                Ok(idx)
            })
            .collect::<Result<Vec<u32>>>()
    })?
}
