//! `weir agent`: the node agent's runtime.
//!
//! Wires the parts together and owns their lifetimes: the datapath (load,
//! attach per endpoint, ring buffer reader), the cluster state fed by the
//! manifests source, the flow ring and its consumers, the metrics listener and
//! the local API. It holds no packet or policy logic of its own.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use weir_datapath::{Datapath, DatapathOptions};
use weir_flows::metrics::Metrics;
use weir_flows::store::FlowStore;
use weir_localapi::{Endpoint, EndpointRegistration, Status};
use weir_state::{ClusterState, EndpointIndex};

use crate::config::{Aggregation, FlowLogFormat, FlowLogOutput, Validated};

/// Events handed to the decoder per ring buffer wake-up, so one busy ring
/// cannot starve the other tasks of the runtime.
const READ_BATCH: usize = 1024;

/// State shared by the agent's tasks and the local API.
pub struct Shared {
    pub node_name: String,
    started: Instant,
    datapath: Mutex<Datapath>,
    state: Mutex<ClusterState>,
    /// Held across each endpoint change (register, unregister, garbage
    /// collection) from the state update to the attach/detach, so the two
    /// never disagree. These calls are rare; the flow path never takes it.
    lifecycle: Mutex<()>,
    index: RwLock<Arc<EndpointIndex>>,
    pub store: FlowStore,
    pub metrics: Arc<Metrics>,
    /// Hubble-compatible flow metric families (option metrics.flows).
    hubble_metrics: Arc<weir_flows::hubble_metrics::HubbleMetrics>,
    /// The registry of the Hubble families (for OTLP).
    hubble_registry: prometheus::Registry,
    ready: AtomicBool,
    kernel_lost: AtomicU64,
    metrics_addr: String,
    attach_mode: &'static str,
    /// The Hubble-compatible flow API (off unless configured or enabled).
    pub flow_api: crate::flowapi::FlowApi,
    /// NetworkPolicy compiler state; taken after `state`, before `datapath`.
    policy: Mutex<crate::policy::PolicyController>,
    /// Attribution ids -> policies, for the decoder.
    attribution: Arc<weir_flows::Attribution>,
    /// Every registered endpoint, for the next start (see `crate::restore`).
    endpoints_file: crate::restore::EndpointsFile,
}

impl Shared {
    /// Snapshot for `GET /v1/status`.
    pub fn status(&self) -> Status {
        let endpoints = self.state.lock().expect("state lock").endpoints().len() as u64;
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_name: self.node_name.clone(),
            ready: self.ready.load(Ordering::Acquire),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            endpoints,
            flows_seen: self.store.seen(),
            flows_in_ring: self.store.len() as u64,
            ring_capacity: self.store.capacity() as u64,
            events_lost: self.kernel_lost.load(Ordering::Relaxed),
            attach_mode: self.attach_mode.to_string(),
            metrics_addr: self.metrics_addr.clone(),
            flow_api: self.flow_api.state(),
        }
    }

    /// Namespaces known from manifests and endpoints (for GetNamespaces).
    pub fn namespace_names(&self) -> Vec<String> {
        let state = self.state.lock().expect("state lock");
        let mut v: Vec<String> = state.namespaces().map(|n| n.name.clone()).collect();
        v.extend(
            state
                .endpoints()
                .map(|e| e.namespace.clone())
                .filter(|n| !n.is_empty()),
        );
        v.sort();
        v.dedup();
        v
    }

    /// Every registered endpoint.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let state = self.state.lock().expect("state lock");
        state.endpoints().map(to_api).collect()
    }

    /// The policy compiler's input from the live model, as the policy
    /// controller builds it (for `weir policy explain` and `what-if`).
    pub fn policy_input(&self) -> weir_policy::Input {
        let index = self.current_index();
        let ctl = self.policy.lock().expect("policy lock");
        let state = self.state.lock().expect("state lock");
        compiler_input(&ctl, &state, &index, crate::policy::local_addresses())
    }

    /// Records the endpoint, publishes it for enrichment, then attaches the
    /// programs; on attach failure the endpoint is forgotten again.
    pub fn register_endpoint(&self, mut reg: EndpointRegistration) -> Result<Endpoint, String> {
        let _lifecycle = self.lifecycle.lock().expect("lifecycle lock");
        // The interface index is ours to find, not the caller's to claim:
        // garbage collection later judges the endpoint by it.
        reg.host_ifindex = crate::netns::ifindex_of(&reg.host_ifname).ok_or_else(|| {
            format!(
                "no interface {:?} in the agent's network namespace",
                reg.host_ifname
            )
        })?;
        let host_ifname = reg.host_ifname.clone();
        let (container_id, ifname) = (reg.container_id.clone(), reg.ifname.clone());
        let (ep, recreated) = {
            let mut state = self.state.lock().expect("state lock");
            // A repeated CNI ADD recreates the veth under the same name: the
            // old attachment died with the old interface index.
            let recreated = state
                .endpoint(&container_id, &ifname)
                .is_some_and(|old| old.host_ifindex != reg.host_ifindex);
            let ep = state.upsert_endpoint(&reg);
            (to_api(&ep), recreated)
        };
        self.rebuild_index();
        let attach = {
            let mut dp = self.datapath.lock().expect("datapath lock");
            if recreated && let Err(e) = dp.detach(&host_ifname) {
                debug!(ifname = %host_ifname, error = %e, "detaching the stale attachment");
            }
            dp.attach(&host_ifname)
        };
        match attach {
            Ok(_) => {
                info!(endpoint = ep.id, pod = %format!("{}/{}", ep.registration.namespace, ep.registration.pod), ifname = %host_ifname, "endpoint attached");
                self.update_endpoint_gauge();
                self.persist_endpoints();
                Ok(Endpoint {
                    attached: true,
                    ..ep
                })
            }
            Err(e) => {
                warn!(ifname = %host_ifname, error = %e, "attach failed, endpoint not registered");
                self.state
                    .lock()
                    .expect("state lock")
                    .remove_endpoint(&container_id, &ifname);
                self.rebuild_index();
                Err(format!("attaching to {host_ifname}: {e}"))
            }
        }
    }

    /// Detaches and forgets an endpoint; `false` if it was not known.
    pub fn unregister_endpoint(&self, container_id: &str, ifname: &str) -> bool {
        let _lifecycle = self.lifecycle.lock().expect("lifecycle lock");
        self.unregister_locked(container_id, ifname, None)
    }

    /// Removes the endpoint; with `only_ifindex`, only if it still has that
    /// host interface (a repeated ADD may have replaced it meanwhile).
    fn unregister_locked(
        &self,
        container_id: &str,
        ifname: &str,
        only_ifindex: Option<u32>,
    ) -> bool {
        if let Some(want) = only_ifindex {
            let current = self
                .state
                .lock()
                .expect("state lock")
                .endpoint(container_id, ifname)
                .map(|e| e.host_ifindex);
            if current != Some(want) {
                return false;
            }
        }
        let removed = self
            .state
            .lock()
            .expect("state lock")
            .remove_endpoint(container_id, ifname);
        let Some(ep) = removed else {
            return false;
        };
        if let Err(e) = self
            .datapath
            .lock()
            .expect("datapath lock")
            .detach(&ep.host_ifname)
        {
            warn!(ifname = %ep.host_ifname, error = %e, "detach failed");
        }
        self.rebuild_index();
        self.update_endpoint_gauge();
        self.persist_endpoints();
        info!(endpoint = ep.id, container_id, ifname, "endpoint removed");
        true
    }

    /// Rewrites the endpoints file from the model. Called with the
    /// lifecycle lock held, so writes follow the changes in order.
    fn persist_endpoints(&self) {
        let regs: Vec<EndpointRegistration> = self
            .state
            .lock()
            .expect("state lock")
            .endpoints()
            .map(|ep| ep.registration())
            .collect();
        if let Err(e) = self.endpoints_file.save(&regs) {
            self.metrics.endpoints_file_errors.inc();
            warn!(error = %e, "endpoints not saved: an agent restart will not re-attach the pods changed since");
        }
    }

    /// Re-registers (and re-attaches) the endpoints the previous agent
    /// saved whose host interface still exists; forgets the others (their
    /// pod went while no agent ran). Before the local API serves, so a CNI
    /// call never races it.
    fn restore_endpoints(&self) {
        let saved = match self.endpoints_file.load() {
            Ok(saved) => saved,
            Err(e) => {
                self.metrics.endpoints_file_errors.inc();
                warn!(error = %e, "endpoints not restored: pods networked before this start stay unattached until their next CNI ADD");
                return;
            }
        };
        if saved.is_empty() {
            return;
        }
        let (mut restored, mut gone) = (0u64, 0u64);
        for reg in saved {
            let pod = format!("{}/{}", reg.namespace, reg.pod);
            let ifname = reg.host_ifname.clone();
            match self.register_endpoint(reg) {
                Ok(_) => restored += 1,
                Err(e) => {
                    gone += 1;
                    info!(%pod, %ifname, error = %e, "saved endpoint not restored");
                }
            }
        }
        self.metrics.endpoints_restored.inc_by(restored);
        let _lifecycle = self.lifecycle.lock().expect("lifecycle lock");
        self.persist_endpoints();
        info!(restored, gone, file = %self.endpoints_file.path().display(), "endpoints restored");
    }

    /// Publishes a new enrichment index and brings the policy maps in step
    /// with the model: called after every change of the model, and before
    /// a new endpoint's programs are attached.
    fn rebuild_index(&self) {
        let local = crate::policy::local_addresses();
        self.publish_index(&local);
        if self.sync_policy(local.clone()) {
            // A hostNetwork pod was found or lost: its flows' local side
            // comes from the index by its endpoint id.
            self.publish_index(&local);
        }
    }

    /// Builds the enrichment index from the model, plus this node's own
    /// addresses (`reserved:host`) and its policed hostNetwork pods (by
    /// their endpoint ids), and publishes it.
    fn publish_index(&self, local: &[IpAddr]) {
        // Lock order: policy before state (as in sync_policy).
        let host_pods: Vec<crate::policy::HostPod> = self
            .policy
            .lock()
            .expect("policy lock")
            .host
            .pods()
            .cloned()
            .collect();
        let mut index = {
            let state = self.state.lock().expect("state lock");
            let mut index = state.endpoint_index(&self.node_name);
            for hp in &host_pods {
                if let Some(meta) = state.pod_meta(&hp.namespace, &hp.name) {
                    let mut meta = weir_state::EndpointMeta::clone(meta);
                    meta.endpoint_id = u64::from(hp.endpoint);
                    meta.node_name = self.node_name.clone();
                    index.insert_endpoint(hp.endpoint, Arc::new(meta));
                }
            }
            index
        };
        let host = Arc::new(weir_state::EndpointMeta {
            identity: weir_state::identity::IDENTITY_HOST,
            labels: vec!["reserved:host".to_owned()],
            node_name: self.node_name.clone(),
            ..weir_state::EndpointMeta::default()
        });
        for &ip in local {
            if !ip.is_loopback() {
                index.insert_if_absent(ip, Arc::clone(&host));
            }
        }
        *self.index.write().expect("index lock") = Arc::new(index);
    }

    /// Compiles the model's policies and writes what changed; true when the
    /// set of policed hostNetwork pods changed.
    fn sync_policy(&self, local: Vec<IpAddr>) -> bool {
        let index = self.current_index();
        let mut ctl = self.policy.lock().expect("policy lock");
        let (input, gone, host_changed) = {
            let state = self.state.lock().expect("state lock");
            let before = ctl.host.pods().count();
            let gone = ctl.host.refresh(&state, &self.node_name);
            let changed = !gone.is_empty() || ctl.host.pods().count() != before;
            (compiler_input(&ctl, &state, &index, local), gone, changed)
        };
        let report = {
            let mut dp = self.datapath.lock().expect("datapath lock");
            let mut report = ctl.sync(&input, dp.policy_maps());
            // The endpoints' entries exist now: map the cgroups, then attach.
            report.failed_writes += ctl.host.apply(&gone, &mut dp);
            report
        };
        let m = &self.metrics;
        m.policy_rules.set(report.rules as i64);
        m.policy_endpoints.set(report.endpoints as i64);
        m.policy_policies.set(report.policies as i64);
        m.policy_generation.set(i64::from(report.generation));
        if report.changes > 0 {
            m.policy_syncs.inc();
            m.policy_sync_duration.set(report.elapsed.as_secs_f64());
        }
        m.policy_map_write_errors
            .inc_by(report.failed_writes as u64);
        host_changed
    }

    /// Retries a policy sync whose map writes failed or whose hostNetwork
    /// pods' cgroups were not all found.
    fn retry_policy_sync(&self) {
        let pending = self.policy.lock().expect("policy lock").needs_retry();
        if pending {
            let local = crate::policy::local_addresses();
            if self.sync_policy(local.clone()) {
                self.publish_index(&local);
            }
        }
    }

    fn current_index(&self) -> Arc<EndpointIndex> {
        self.index.read().expect("index lock").clone()
    }

    fn update_endpoint_gauge(&self) {
        let n = self.state.lock().expect("state lock").endpoints().count();
        self.metrics.endpoints.set(n as i64);
    }

    /// Endpoints whose host interface disappeared without a CNI DEL reaching
    /// us (agent down during DEL, node reboot): forget them.
    fn collect_garbage(&self) {
        let _lifecycle = self.lifecycle.lock().expect("lifecycle lock");
        let gone: Vec<(String, String, u32)> = {
            let state = self.state.lock().expect("state lock");
            state
                .endpoints()
                .filter(|ep| !crate::netns::ifindex_exists(ep.host_ifindex))
                .map(|ep| (ep.container_id.clone(), ep.ifname.clone(), ep.host_ifindex))
                .collect()
        };
        for (cid, ifname, ifindex) in gone {
            info!(container_id = %cid, ifname = %ifname, "host interface gone, removing endpoint");
            self.unregister_locked(&cid, &ifname, Some(ifindex));
        }
    }
}

/// The compiler's input: the model, this node's addresses, and the
/// hostNetwork pods whose cgroups the controller found.
fn compiler_input(
    ctl: &crate::policy::PolicyController,
    state: &ClusterState,
    index: &EndpointIndex,
    local: Vec<IpAddr>,
) -> weir_policy::Input {
    let mut input = crate::policy::input_from_state(state, index, local, ctl.options());
    ctl.host.assign(&mut input);
    input
}

fn to_api(ep: &weir_state::Endpoint) -> Endpoint {
    Endpoint {
        id: ep.id,
        registration: ep.registration(),
        attached: true,
    }
}

/// Runs the agent until SIGTERM/SIGINT. Called on the main thread before any
/// other thread exists, so entering `--netns` moves the whole process.
pub fn run(cfg: Validated) -> anyhow::Result<()> {
    // glibc gives each thread that allocates its own arena (up to 8 per
    // core), and each keeps what it once held: with the blocking pool that
    // manifests parsing and attaching use, an idle agent held ~30 MiB of
    // freed memory (BENCHMARKS.md, agent-rss). Two arenas are plenty for an
    // agent whose hot path is one task.
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Bound here, in the machine's namespace, before we move into --netns.
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => Some(bind_metrics(addr)?),
        None => None,
    };
    // The flow API may be enabled later: keep a way back to this namespace
    // for its TCP listener.
    let home = match &cfg.config.netns {
        Some(_) => Some(
            crate::netns::HomeNetns::current()
                .context("opening the agent's own network namespace")?,
        ),
        None => None,
    };
    if let Some(ns) = &cfg.config.netns {
        crate::netns::enter(ns)?;
        info!(netns = %ns.display(), "datapath runs in network namespace");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weir-agent")
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run_async(cfg, metrics_listener, home))
}

fn bind_metrics(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr} (option metrics.address)"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn run_async(
    cfg: Validated,
    metrics_listener: Option<std::net::TcpListener>,
    home: Option<crate::netns::HomeNetns>,
) -> anyhow::Result<()> {
    let otel_home = match &home {
        Some(h) => Some(
            h.try_clone()
                .context("duplicating the network namespace handle")?,
        ),
        None => None,
    };
    let c = &cfg.config;
    let opts = DatapathOptions {
        report_interval: cfg.report_interval,
        aggregation: match c.datapath.aggregation {
            Aggregation::Full => weir_datapath::Aggregation::Full,
            Aggregation::None => weir_datapath::Aggregation::None,
        },
        ring_bytes: c.datapath.ring_buffer_bytes,
        conntrack_entries: c.datapath.conntrack_entries,
        policy_entries: c.policy.map_entries,
    };
    let load_started = Instant::now();
    let mut datapath = Datapath::load(&opts).context("loading the eBPF datapath")?;
    let attach_mode = datapath.attach_mode().as_str();
    info!(
        attach_mode,
        ms = load_started.elapsed().as_millis() as u64,
        "datapath loaded"
    );
    let reader = datapath
        .take_events()
        .context("opening the event ring buffer")?;

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    metrics.set_datapath_info(attach_mode, &kernel);
    // The Hubble families live in a registry of their own and reach /metrics
    // through pre-rendered series lines (see HubbleMetrics::new_split).
    let hubble_registry = prometheus::Registry::new();
    let hubble_metrics = Arc::new(
        weir_flows::hubble_metrics::HubbleMetrics::new_split(
            metrics.registry(),
            &hubble_registry,
            &cfg.hubble_metrics,
            c.metrics.series_limit,
        )
        .context("option metrics.flows")?,
    );
    {
        let h = hubble_metrics.clone();
        metrics.set_text_source(Box::new(move |out| h.render_text(out)));
    }
    if datapath.attach_mode() == weir_datapath::AttachMode::ClsAct {
        warn!(
            kernel = %kernel,
            "no tcx on this kernel (before 6.6): attaching through clsact + cls_bpf; \
             programs attached to the same hooks by others may run before Weir's"
        );
    }
    metrics
        .ring_buffer_capacity_bytes
        .set(i64::from(c.datapath.ring_buffer_bytes));
    metrics
        .conntrack_capacity
        .set(i64::from(c.datapath.conntrack_entries));
    let attribution = weir_flows::Attribution::new();
    let store =
        FlowStore::with_capacity(c.flows.ring_capacity).context("option flows.ringCapacity")?;
    metrics.flow_ring_capacity.set(store.capacity() as i64);

    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
        let weak = weak.clone();
        let namespaces: weir_api::observer::NamespaceSource = Arc::new(move || {
            weak.upgrade()
                .map(|s| s.namespace_names())
                .unwrap_or_default()
        });
        let flow_api = crate::flowapi::FlowApi::new(
            cfg.flow_api.clone(),
            home,
            cfg.node_name.clone(),
            store.clone(),
            metrics.clone(),
            namespaces,
        );
        Shared {
            flow_api,
            node_name: cfg.node_name.clone(),
            started: Instant::now(),
            datapath: Mutex::new(datapath),
            state: Mutex::new(ClusterState::new()),
            lifecycle: Mutex::new(()),
            index: RwLock::new(Arc::new(EndpointIndex::new())),
            store,
            metrics,
            hubble_metrics,
            hubble_registry,
            ready: AtomicBool::new(false),
            kernel_lost: AtomicU64::new(0),
            metrics_addr,
            attach_mode,
            policy: Mutex::new(crate::policy::PolicyController::new(
                weir_policy::Options {
                    audit_all: c.policy.audit,
                    allow_host_ingress: c.policy.allow_host_ingress,
                },
                Arc::clone(&attribution),
                c.policy
                    .cgroup_root
                    .clone()
                    .or_else(|| weir_datapath::cgroup::cgroup2_mount().ok()),
            )),
            attribution,
            endpoints_file: crate::restore::EndpointsFile::beside(&c.socket),
        }
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(l) = metrics_listener {
        let l = tokio::net::TcpListener::from_std(l)?;
        info!(addr = %shared.metrics_addr, "serving /metrics");
        tasks.spawn(crate::metrics_http::serve(
            l,
            shared.clone(),
            shutdown_rx.clone(),
        ));
    }

    // Desired state first, so the first flows are already enriched and
    // restored endpoints are policed from their first packet.
    if let Some(dir) = c.manifests.clone() {
        let watch = weir_state::manifests::ManifestSource::watch(&dir)
            .with_context(|| format!("option manifests: watching {}", dir.display()))?;
        let first = watch.latest();
        let s = shared.clone();
        let snap = first.clone();
        tokio::task::spawn_blocking(move || apply_manifests(&s, &snap)).await?;
        tasks.spawn(follow_manifests(
            watch,
            first.generation,
            shared.clone(),
            shutdown_rx.clone(),
        ));
    }

    tasks.spawn(read_events(reader, shared.clone(), shutdown_rx.clone()));
    tasks.spawn(poll_datapath(shared.clone(), shutdown_rx.clone()));

    match &cfg.flow_log {
        FlowLogOutput::Off => {}
        out => {
            let format = match c.flow_log.format {
                FlowLogFormat::Json => weir_flows::export::OutputFormat::Json,
                FlowLogFormat::Compact => weir_flows::export::OutputFormat::Compact,
            };
            let sink = match out {
                FlowLogOutput::File(p) => weir_flows::export::FlowLogTarget::File(p.clone()),
                _ => weir_flows::export::FlowLogTarget::Stdout,
            };
            if let FlowLogOutput::File(p) = out {
                // Refuse a flow log we cannot write before reporting ready.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| {
                        format!("option flowLog.output: cannot open {}", p.display())
                    })?;
            }
            let sub = shared.store.subscribe("flow_log", c.flow_log.queue);
            let writer = weir_flows::export::FlowLogWriter::new(sink, format, &cfg.node_name);
            let writer_stats = writer.stats();
            let m = shared.metrics.clone();
            let mut stop2 = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            m.flow_log_lines.set_total(writer_stats.lines_written());
                            m.flow_log_write_errors.set_total(writer_stats.write_errors());
                        }
                        _ = stop2.changed() => return Ok(()),
                    }
                }
            });
            // No stop signal here: on shutdown the store closes its
            // subscriptions and the writer drains what is queued, then ends.
            tasks.spawn(async move { writer.run(sub).await.context("option flowLog.output") });
        }
    }

    if let Some(otel) = cfg.otel.clone() {
        let sub = otel
            .flows
            .then(|| shared.store.subscribe("otel", otel.queue));
        let registry = otel.metrics.then(|| {
            vec![
                shared.metrics.registry().clone(),
                shared.hubble_registry.clone(),
            ]
        });
        let done = spawn_otel(
            otel,
            cfg.node_name.clone(),
            sub,
            registry,
            shared.metrics.clone(),
            otel_home,
            shutdown_rx.clone(),
        )
        .await?;
        tasks.spawn(async move {
            done.await
                .map_err(|_| anyhow::anyhow!("the OTLP exporter thread ended abruptly"))?
        });
    }

    if let Some(path) = c.flow_logs_config.clone() {
        tasks.spawn(run_exporters(path, shared.clone(), shutdown_rx.clone()));
    }

    let s = shared.clone();
    tokio::task::spawn_blocking(move || s.restore_endpoints()).await?;

    let listener = crate::server::bind(&c.socket).await?;
    let app = crate::server::router(shared.clone());
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await
            .context("local API server")
    });
    if shared.flow_api.enabled_at_start() {
        shared
            .flow_api
            .enable()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    shared.ready.store(true, Ordering::Release);
    info!(socket = %c.socket.display(), node = %cfg.node_name, "agent ready");

    let result = wait_for_shutdown(&mut tasks).await;
    shared.flow_api.disable().await;
    let _ = shutdown_tx.send(true);
    // The reader stops on the signal above; then every consumer drains what
    // is queued and ends (bounded by the drain timeout below).
    shared.store.close_subscribers();
    let drain = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    });
    if drain.await.is_err() {
        warn!("tasks did not stop within 5 s, aborting them");
        tasks.abort_all();
    }
    let _ = std::fs::remove_file(&c.socket);
    // With endpoints left, the file is what the next start re-attaches;
    // without, it would only be a leftover.
    if shared
        .state
        .lock()
        .expect("state lock")
        .endpoints()
        .next()
        .is_none()
    {
        let _ = std::fs::remove_file(shared.endpoints_file.path());
    }
    // Dropping the datapath detaches every program (the links are owned here).
    info!("agent stopped");
    result
}

async fn wait_for_shutdown(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => { info!("SIGTERM: shutting down"); Ok(()) }
        _ = int.recv() => { info!("SIGINT: shutting down"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a task of the agent ended unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a task of the agent panicked: {e}")),
        },
    }
}

/// Starts the OTLP exporter on a thread of its own with its own runtime, in
/// the agent's home network namespace when the datapath runs in another
/// (`--netns`): the exporter's outbound connections must leave from where
/// the collector is reachable, as the metrics listener is bound there.
/// Returns once the exporter started (or failed to: a config error stops
/// the agent); the receiver ends with the exporter, after its final flush.
async fn spawn_otel(
    otel: weir_otel::OtelConfig,
    node_name: String,
    sub: Option<weir_flows::store::Subscription>,
    registry: Option<Vec<prometheus::Registry>>,
    metrics: Arc<Metrics>,
    home: Option<crate::netns::HomeNetns>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weir-otel".into())
        .spawn(move || {
            let run = || -> anyhow::Result<tokio::runtime::Runtime> {
                if let Some(h) = &home {
                    h.enter().context("entering the agent's own network namespace")?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("weir-otel")
                    .build()
                    .context("building the OTLP exporter's runtime")
            };
            let rt = match run() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let result = rt.block_on(async move {
                let handle = match weir_otel::start_with_registries(
                    &otel,
                    &node_name,
                    sub,
                    registry.unwrap_or_default(),
                ) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow::Error::new(e).context("option otel")));
                        return Ok(());
                    }
                };
                info!(endpoint = %otel.endpoint, protocol = otel.protocol.as_str(), "exporting over OTLP");
                let _ = started_tx.send(Ok(()));
                let copy = |st: &weir_otel::OtelStats| {
                    for (signal, s) in [("logs", &st.logs), ("metrics", &st.metrics)] {
                        metrics.set_otel(signal, s.exported, &s.dropped_by_reason());
                    }
                };
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => copy(&handle.stats()),
                        _ = stop.changed() => {
                            let last = handle.shutdown(Duration::from_secs(5)).await;
                            copy(&last);
                            return Ok(());
                        }
                    }
                }
            });
            let _ = done_tx.send(result);
        })
        .context("starting the OTLP exporter thread")?;
    started_rx
        .await
        .map_err(|_| anyhow::anyhow!("the OTLP exporter thread ended before starting"))??;
    Ok(done_rx)
}

/// Runs the flow-log exporters of `path` (option flowLogsConfig): applies the
/// file now and on every change, logs what each apply refused, copies the
/// exporters' counters into metrics every second, stops them on shutdown.
async fn run_exporters(
    path: std::path::PathBuf,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let set = weir_export::ExporterSet::new(shared.store.clone(), &shared.node_name);
    let mut watcher = set
        .watch(&path)
        .with_context(|| format!("option flowLogsConfig: watching {}", path.display()))?;
    let report = |r: &weir_export::ApplyReport| {
        if let Some(e) = &r.file_error {
            shared.metrics.flow_export_config_errors.inc();
            warn!(file = %path.display(), error = %e, "flow-log exporters file refused; previous exporters keep running");
        }
        for refused in &r.refused {
            shared.metrics.flow_export_config_errors.inc();
            warn!(
                file = %path.display(),
                error = %refused.error,
                kept_previous = refused.kept_previous,
                "flow-log exporter refused; the others keep running"
            );
        }
        if !r.started.is_empty() || !r.restarted.is_empty() || !r.stopped.is_empty() {
            info!(
                started = ?r.started,
                restarted = ?r.restarted,
                stopped = ?r.stopped,
                "flow-log exporters applied"
            );
        }
    };
    if let Some(r) = watcher.last_report() {
        report(&r);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = watcher.next_report() => match r {
                Some(r) => report(&r),
                None => return Ok(()),
            },
            _ = tick.tick() => {
                for st in set.status() {
                    shared.metrics.set_exporter(
                        &st.name,
                        weir_flows::metrics::ExporterCounters {
                            lines_written: st.lines_written,
                            write_errors: st.write_errors,
                            rotations: st.rotations,
                            filtered_out: st.filtered_out,
                            queue_dropped: st.queue_dropped,
                        },
                        matches!(st.state, weir_export::ExporterState::Running),
                    );
                }
            }
            _ = stop.changed() => {
                drop(watcher);
                set.stop_all().await;
                return Ok(());
            }
        }
    }
}

/// Puts a manifests snapshot in force: the model, the index, the policy maps.
fn apply_manifests(shared: &Shared, snap: &weir_state::manifests::Snapshot) {
    let mut invalid_policies = 0;
    for e in &snap.errors {
        warn!(error = %e, "manifest refused; other objects stay in force");
        if let weir_state::manifests::ManifestError::Invalid { object, .. } = e
            && object.starts_with("NetworkPolicy ")
        {
            invalid_policies += 1;
        }
    }
    shared.metrics.policy_invalid.set(invalid_policies);
    shared
        .state
        .lock()
        .expect("state lock")
        .set_manifests(snap.objects.iter().cloned());
    shared.rebuild_index();
    debug!(
        objects = snap.objects.len(),
        errors = snap.errors.len(),
        "manifests applied"
    );
}

/// Applies each new manifests snapshot after the first (`applied`).
async fn follow_manifests(
    watch: weir_state::manifests::ManifestWatch,
    applied: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut rx = watch.subscribe();
    // Sync health (last scan time) changes on every rescan, not only when the
    // objects do, so it is copied on a timer as well.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_generation = applied;
    loop {
        let snap = rx.borrow_and_update().clone();
        if seen_generation != snap.generation {
            seen_generation = snap.generation;
            apply_manifests(&shared, &snap);
        }
        observe_sync(&shared.metrics, &watch.status());
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(()) },
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn read_events(
    mut reader: weir_datapath::EventReader,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut decoder = weir_flows::decode::Decoder::new(&shared.node_name);
    decoder.set_attribution(Arc::clone(&shared.attribution));
    loop {
        let index = shared.current_index();
        let store = &shared.store;
        let metrics = &shared.metrics;
        let hubble = &shared.hubble_metrics;
        tokio::select! {
            r = reader.next_batch(READ_BATCH, |ev| {
                let flow = decoder.decode(ev, &index);
                let verdict = decoder.policy_verdict(ev, &flow);
                metrics.observe_flow(&flow);
                hubble.observe(&flow);
                store.push(flow);
                if let Some(v) = verdict {
                    metrics.observe_flow(&v);
                    hubble.observe(&v);
                    store.push(v);
                }
            }) => { r.context("reading the event ring buffer")?; }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Copies kernel counters into metrics once a second; reports lost events.
async fn poll_datapath(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        n += 1;
        let s = shared.clone();
        let every5 = n.is_multiple_of(5);
        let polled = tokio::task::spawn_blocking(move || {
            let dp = s.datapath.lock().expect("datapath lock");
            let counters = dp.counters();
            let ct = if every5 {
                Some(dp.conntrack_entries())
            } else {
                None
            };
            drop(dp);
            if every5 {
                s.collect_garbage();
                s.retry_policy_sync();
            }
            (counters, ct)
        })
        .await?;
        match polled.0 {
            Ok(c) => {
                let lost = c.stats[weir_common::stat::EVENTS_LOST as usize];
                let before = shared.kernel_lost.swap(lost, Ordering::Relaxed);
                if lost > before {
                    warn!(
                        lost = lost - before,
                        total = lost,
                        "kernel ring buffer full: events lost"
                    );
                    shared.store.report_lost(
                        weir_flows::flow::LostEventSource::PerfEventRingBuffer,
                        lost - before,
                    );
                }
                observe_datapath(&shared.metrics, &c);
            }
            Err(e) => warn!(error = %e, "reading datapath counters"),
        }
        if let Some(ct) = polled.1 {
            match ct {
                Ok(n) => shared.metrics.conntrack_entries.set(n as i64),
                Err(e) => warn!(error = %e, "counting conntrack entries"),
            }
        }
        shared.metrics.observe_store(&shared.store);
    }
}

fn observe_datapath(m: &Metrics, c: &weir_datapath::Counters) {
    use weir_common::stat;
    m.datapath_packets
        .set_total(c.stats[stat::PACKETS as usize]);
    m.datapath_bytes.set_total(c.stats[stat::BYTES as usize]);
    m.datapath_events_emitted
        .set_total(c.stats[stat::EVENTS_EMITTED as usize]);
    m.conntrack_created
        .set_total(c.stats[stat::CT_CREATED as usize]);
    m.conntrack_insert_failures
        .set_total(c.stats[stat::CT_INSERT_FAILED as usize]);
    // Policy is the only reason the programs drop for.
    m.set_drops_total("POLICY_DENIED", c.stats[stat::POLICY_DENIED as usize]);
    m.policy_audited
        .set_total(c.stats[stat::POLICY_AUDITED as usize]);
    m.policy_lookups
        .set_total(c.stats[stat::POLICY_LOOKUPS as usize]);
    m.set_lost_events_total(
        weir_flows::metrics::LostSource::KernelRingBuffer,
        c.stats[stat::EVENTS_LOST as usize],
    );
    for (i, total) in c.parse_errors.iter().enumerate() {
        m.set_parse_errors_total(i as u32, *total);
    }
    m.ring_buffer_pending_bytes
        .set(i64::try_from(c.ring_pending_bytes).unwrap_or(i64::MAX));
}

fn observe_sync(m: &Metrics, s: &weir_state::manifests::SyncStatus) {
    for (kind, n) in &s.objects {
        m.set_state_objects(kind.as_str(), *n as i64);
    }
    weir_flows::metrics::set_counter_total(&m.state_sync_errors, s.errors_total);
    if let Some(t) = s.last_success
        && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
    {
        m.state_last_sync_timestamp.set(d.as_secs_f64());
    }
}
