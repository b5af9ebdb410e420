//! Figures `flow-api-query` and `flow-api-follow`: the Hubble-compatible flow
//! API served in this process by the real `weir_api::observer::ObserverService`
//! over a real unix socket (`weir_api_net::serve`, on its own two-worker tokio
//! runtime, as the agent runs it) and queried by a real tonic client
//! (`weir_api_net::connect`) on the bench's runtime.
//!
//! - `flow-api-query`: a selective `GetFlows` (one source pod and one
//!   destination port: a handful of matches) over a full 65 535-flow ring of
//!   decoded and enriched flows; latency percentiles of the whole call
//!   (request to end of stream). Baseline in the same run: the same query
//!   against a ring holding one (matching) flow, which is the cost of the RPC
//!   itself.
//! - `flow-api-follow`: one `follow` client while a producer task on the
//!   server's runtime decodes and pushes flows (as the agent's event reader
//!   does) at a paced 100 000 flows/s, then as fast as it can. Baseline: the
//!   producer's rate with no client attached.
//!
//! Owns only these measurements; what they make (socket files in a
//! temporary directory, the server runtime) is removed by guards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::watch;
use weir_api::observer::{NamespaceSource, NodeInfo, ObserverService, SUBSCRIBER_NAME};
use weir_api::proto::flow::{FlowFilter, LostEventSource};
use weir_api::proto::observer::get_flows_response::ResponseTypes;
use weir_api::proto::observer::observer_client::ObserverClient;
use weir_api::proto::observer::observer_server::ObserverServer;
use weir_api::proto::observer::{GetFlowsRequest, GetFlowsResponse};
use weir_api_net::{
    AuthChannel, ClientTarget, ClientTls, Hooks, RunningServer, ServeSpec, UnixSpec,
};
use weir_common::FlowEvent;
use weir_flows::Decoder;
use weir_flows::flow::Flow;
use weir_flows::metrics::Metrics;
use weir_flows::store::{DEFAULT_CAPACITY, FlowStore, MAX_CAPACITY};
use weir_state::EndpointIndex;

use crate::decode;
use crate::report::{Machine, Op, Quantity, Report, Subject, Target, median};
use crate::traffic::per_second;

/// Node name in the flows (as the decode figure uses).
const NODE: &str = "wbench-node";
/// Pods in the cluster the flows are decoded against.
const ENDPOINTS: u32 = 1_000;
/// The agent's default `flowApi.streamQueue` (flows queued per stream).
pub const STREAM_QUEUE: usize = 4096;
/// Worker threads of the server runtime: the agent runs two.
const SERVER_WORKERS: usize = 2;
/// Flows decoded and pushed between two yields when producing flat out (the
/// agent's reader hands the runtime back once per ring-buffer batch).
const PRODUCE_BATCH: u64 = 256;

// ---------------------------------------------------------------------------
// The server, its runtime, the client

/// The server runtime, shut down in the background when dropped (a runtime
/// may not be dropped, i.e. waited for, inside the bench's async context).
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_WORKERS)
            .enable_all()
            .thread_name("wbench-api")
            .build()
            .context("building the server runtime")?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .expect("the runtime lives until drop")
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Observer services on unix sockets in a temporary directory, served on
/// their own runtime. Fields drop in order: servers (socket files removed),
/// directory, runtime.
struct ApiServers {
    servers: Vec<RunningServer>,
    stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
    rt: ServerRuntime,
}

impl ApiServers {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wbench-api-")
            .tempdir()
            .context("creating a temporary directory for the sockets")?;
        Ok(Self {
            servers: Vec::new(),
            stop: watch::channel(false).0,
            dir,
            rt: ServerRuntime::new()?,
        })
    }

    /// Serves the Observer over `store` on `<dir>/<name>.sock`; returns the path.
    fn serve(&mut self, name: &str, store: &FlowStore, metrics: Arc<Metrics>) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.sock"));
        let namespaces: NamespaceSource = Arc::new(Vec::new);
        let node = NodeInfo {
            name: NODE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..NodeInfo::default()
        };
        let observer = ObserverService::new(
            store.clone(),
            node,
            STREAM_QUEUE,
            metrics,
            namespaces,
            self.stop.subscribe(),
        );
        let routes = tonic::service::Routes::new(ObserverServer::new(observer));
        let spec = ServeSpec {
            unix: Some(UnixSpec::new(&path)),
            ..ServeSpec::default()
        };
        // The server's accept loops and connections are spawned on the
        // runtime entered here.
        let _enter = self.rt.handle().enter();
        let server = weir_api_net::serve(routes, spec, Hooks::default())
            .with_context(|| format!("serving the flow API on {}", path.display()))?;
        self.servers.push(server);
        Ok(path)
    }

    /// Ends open streams and stops the servers (the sockets are removed).
    async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for s in self.servers.drain(..) {
            s.shutdown().await;
        }
    }
}

async fn client(socket: &Path) -> Result<ObserverClient<AuthChannel>> {
    let target = ClientTarget::parse(
        &format!("unix://{}", socket.display()),
        ClientTls::default(),
    )
    .context("the socket path as a --server")?;
    let channel = weir_api_net::connect(&target)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(ObserverClient::new(channel))
}

// ---------------------------------------------------------------------------
// Flows

/// The decode figure's cluster and a decoder that knows its interfaces.
fn cluster() -> (Arc<EndpointIndex>, Decoder, Vec<FlowEvent>) {
    let (state, index) = decode::cluster(ENDPOINTS);
    let mut decoder = Decoder::new(NODE);
    for ep in state.endpoints() {
        decoder.set_interface_name(ep.host_ifindex, &ep.host_ifname);
    }
    (Arc::new(index), decoder, decode::events(ENDPOINTS))
}

/// Event `i` of an endless sequence built from `base`: the base events cycled,
/// each cycle with other source ports and later times, so that every flow is
/// distinct.
fn event(base: &[FlowEvent], i: u64) -> FlowEvent {
    let n = base.len() as u64;
    let mut ev = base[(i % n) as usize];
    let cycle = i / n;
    ev.src_port = ev.src_port.wrapping_add((cycle as u16).wrapping_mul(7));
    ev.ts_ns += cycle * n * 1_000;
    ev
}

/// The query of `flow-api-query`: flows from one pod to one port.
fn selective_filter(flows: &[Arc<Flow>]) -> Result<(FlowFilter, String, u16, String)> {
    // The source pod and port of the newest flow that has both.
    let f = flows
        .iter()
        .rev()
        .find(|f| {
            f.destination_port() != 0 && f.source.as_ref().is_some_and(|s| !s.pod_name.is_empty())
        })
        .context("no flow has a source pod and a destination port")?;
    let src = f.source.as_ref().context("checked above")?;
    let pod = format!("{}/{}", src.namespace, src.pod_name);
    let port = f.destination_port();
    let filter = FlowFilter {
        source_pod: vec![pod.clone()],
        destination_port: vec![port.to_string()],
        ..FlowFilter::default()
    };
    Ok((filter, src.namespace.clone(), port, src.pod_name.clone()))
}

// ---------------------------------------------------------------------------
// Percentiles

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 / p99 / max of latencies in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Latency {
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(&self) -> Value {
        json!({"p50_ms": r3(self.p50), "p99_ms": r3(self.p99), "max_ms": r3(self.max)})
    }
}

fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e3).round() / 1e3)
    } else {
        json!(null)
    }
}

// ---------------------------------------------------------------------------
// flow-api-query

/// Options of `flow-api-query`.
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// Timed queries per form (all matches, last 20) and per ring.
    pub queries: usize,
    /// Flows in the full ring (at most 65 535).
    pub ring: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            queries: 300,
            ring: MAX_CAPACITY,
        }
    }
}

/// One `GetFlows` call to the end of its stream: (latency, flows received).
async fn timed_query(
    client: &mut ObserverClient<AuthChannel>,
    req: &GetFlowsRequest,
) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let mut stream = client
        .get_flows(req.clone())
        .await
        .context("GetFlows")?
        .into_inner();
    let mut flows = 0;
    while let Some(r) = stream.message().await.context("reading GetFlows")? {
        if matches!(r.response_types, Some(ResponseTypes::Flow(_))) {
            flows += 1;
        }
    }
    Ok((t.elapsed(), flows))
}

pub async fn run_query(opts: &QueryOptions) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.queries == 0 || opts.ring == 0 || opts.ring > MAX_CAPACITY {
        bail!("flow-api-query: --queries must be positive and --ring 1..={MAX_CAPACITY}");
    }
    // The full ring: decoded and enriched flows, as the agent stores them.
    let (index, mut decoder, base) = cluster();
    let full = FlowStore::with_capacity(opts.ring)?;
    let fill = Instant::now();
    for i in 0..opts.ring as u64 {
        full.push(decoder.decode(&event(&base, i), &index));
    }
    let fill_ms = fill.elapsed().as_secs_f64() * 1e3;
    if full.len() != opts.ring {
        bail!(
            "the ring holds {} flows, expected {}",
            full.len(),
            opts.ring
        );
    }
    let snapshot = full.last(full.capacity());
    let (filter, namespace, port, pod_name) = selective_filter(&snapshot)?;
    // What the filter must return, counted here without the API.
    let expected: Vec<&Arc<Flow>> = snapshot
        .iter()
        .filter(|f| {
            f.destination_port() == port
                && f.source
                    .as_ref()
                    .is_some_and(|s| s.namespace == namespace && s.pod_name.starts_with(&pod_name))
        })
        .collect();
    let matches = expected.len();
    // The baseline ring: one flow, which matches.
    let single = FlowStore::with_capacity(1)?;
    single.push(Flow::clone(
        expected.last().context("the filter matches a flow")?,
    ));
    drop(expected);
    // How long a query holds the ring's lock (the agent's reader cannot push
    // meanwhile): copying the ring's handles out.
    let mut copy_ms = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let v = full.last(full.capacity());
        copy_ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(v);
    }
    drop(snapshot);

    let metrics = Arc::new(Metrics::new().context("flow metrics")?);
    let mut servers = ApiServers::new()?;
    let full_sock = servers.serve("full", &full, metrics.clone())?;
    let single_sock = servers.serve("single", &single, metrics.clone())?;
    let mut full_client = client(&full_sock).await?;
    let mut single_client = client(&single_sock).await?;

    let request = |number: u64| GetFlowsRequest {
        number,
        whitelist: vec![filter.clone()],
        ..GetFlowsRequest::default()
    };
    // number 0: every match (`weir observe --all`-like); 20: `--last 20`.
    let forms = [("all", request(0)), ("last20", request(20))];
    let want = |form: &str, ring_matches: usize| {
        if form == "last20" {
            ring_matches.min(20)
        } else {
            ring_matches
        }
    };
    // Warm-up: connections, code and allocator.
    for (form, req) in &forms {
        for _ in 0..10 {
            let (_, n) = timed_query(&mut full_client, req).await?;
            if n != want(form, matches) {
                bail!("GetFlows ({form}) returned {n} flows, the ring holds {matches} matches");
            }
            timed_query(&mut single_client, req).await?;
        }
    }
    // Timed: the two rings alternate (which goes first alternates too), so
    // that both see the same machine.
    let mut lat: [[Vec<Duration>; 2]; 2] = Default::default(); // [ring: full, single][form]
    let timed = Instant::now();
    for i in 0..opts.queries {
        for (fi, (form, req)) in forms.iter().enumerate() {
            for ring in [i % 2, 1 - i % 2] {
                let (d, n) = if ring == 0 {
                    timed_query(&mut full_client, req).await?
                } else {
                    timed_query(&mut single_client, req).await?
                };
                let expect = if ring == 0 { want(form, matches) } else { 1 };
                if n != expect {
                    bail!("GetFlows ({form}) returned {n} flows, expected {expect}");
                }
                lat[ring][fi].push(d);
            }
        }
    }
    let timed_s = timed.elapsed().as_secs_f64();
    drop((full_client, single_client));
    servers.shutdown().await;

    let full_all = Latency::of(&lat[0][0]);
    let full_last = Latency::of(&lat[0][1]);
    let single_all = Latency::of(&lat[1][0]);
    let single_last = Latency::of(&lat[1][1]);
    let target_ms = 20.0;
    let mut report = Report::new(
        "flow-api-query",
        Quantity::new(
            "p99 latency of the same GetFlows against a ring of 1 (matching) flow: the RPC itself",
            (single_all.p99 * 1e3).round() / 1e3,
            "ms",
        ),
        Quantity::new(
            format!(
                "p99 latency of GetFlows (source pod + destination port, all {matches} matches) over a full {}-flow ring, unix socket, request to end of stream",
                opts.ring
            ),
            (full_all.p99 * 1e3).round() / 1e3,
            "ms",
        ),
        Target::new(Subject::Measured, Op::AtMost, target_ms, "ms"),
        started.elapsed(),
        machine,
    );
    report
        .detail(
            "filter",
            format!("source_pod {namespace}/{pod_name}, destination_port {port}"),
        )
        .detail("matches_in_ring", matches as u64)
        .detail("ring_flows", opts.ring as u64)
        .detail("endpoints", u64::from(ENDPOINTS))
        .detail("queries_per_form_and_ring", opts.queries as u64)
        .detail("full_ring_all_matches", full_all.json())
        .detail("full_ring_last20", full_last.json())
        .detail("one_flow_ring_all_matches", single_all.json())
        .detail("one_flow_ring_last20", single_last.json())
        .detail(
            "ratio_p99_last20",
            r3(full_last.p99 / single_last.p99),
        )
        .detail("ratio_p50_all", r3(full_all.p50 / single_all.p50))
        .detail("ring_copy_ms_median", r3(median(&copy_ms)))
        .detail("ring_fill_ms", r3(fill_ms))
        .detail("timed_queries_s", r3(timed_s))
        .note("server: ObserverService + weir_api_net::serve on a 2-worker tokio runtime in this process (as the agent runs it); client: a tonic ObserverClient over the unix socket on the bench's own thread; one connection per ring, one stream per query")
        .note(if matches > 20 {
            "the last-20 form scans from the newest flow and stops at the 20th match; the all-matches form scans the whole ring"
        } else {
            "both forms scan the whole ring: with fewer matches than 20 the last-20 form finds them all too"
        })
        .note("ring_copy_ms_median: time a query holds the ring's lock to copy its 65 535 handles, during which the agent's reader cannot push");
    if full_last.p99 > target_ms {
        report.fail_because(format!(
            "the last-20 form's p99 is {:.3} ms, above the {target_ms} ms target",
            full_last.p99
        ));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// flow-api-follow

/// Options of `flow-api-follow`.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// Flows per second of the paced phases.
    pub rate: u64,
    /// Length of each paced phase.
    pub paced: Duration,
    /// Length of each flat-out phase.
    pub flat_out: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            rate: 100_000,
            paced: Duration::from_secs(5),
            flat_out: Duration::from_secs(3),
        }
    }
}

/// What a producer run did.
#[derive(Clone, Copy, Debug)]
struct Produced {
    flows: u64,
    elapsed: Duration,
}

impl Produced {
    fn rate(&self) -> f64 {
        per_second(self.flows, self.elapsed)
    }
}

/// Decodes and pushes flows into `store` for `length`, paced to `rate`
/// flows/s (None: as fast as it can, yielding every batch). Runs as a task
/// on the server's runtime, as the agent's reader does.
async fn produce(
    store: FlowStore,
    index: Arc<EndpointIndex>,
    mut decoder: Decoder,
    base: Arc<Vec<FlowEvent>>,
    first: u64,
    rate: Option<u64>,
    length: Duration,
) -> (Produced, Decoder) {
    let start = Instant::now();
    let mut i = 0u64;
    let mut push = |n: u64| {
        for _ in 0..n {
            store.push(decoder.decode(&event(&base, first + i), &index));
            i += 1;
        }
    };
    match rate {
        Some(rate) => {
            // Released in 1 ms steps: rate x elapsed, and exactly rate x
            // length in all.
            let total = (rate as f64 * length.as_secs_f64()).round() as u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut done = 0u64;
            while done < total {
                tick.tick().await;
                let due = ((rate as f64 * start.elapsed().as_secs_f64()) as u64).min(total);
                if due > done {
                    push(due - done);
                    done = due;
                }
            }
        }
        None => {
            while start.elapsed() < length {
                push(PRODUCE_BATCH);
                tokio::task::yield_now().await;
            }
        }
    }
    (
        Produced {
            flows: i,
            elapsed: start.elapsed(),
        },
        decoder,
    )
}

/// What the follow client counted.
#[derive(Debug, Default)]
struct Received {
    flows: AtomicU64,
    /// `LostEvent`s from the flow ring (this stream's queue).
    lost_ring: AtomicU64,
    /// `LostEvent`s of other sources.
    lost_other: AtomicU64,
    /// Microseconds since the phase start of the last message.
    last_us: AtomicU64,
}

impl Received {
    fn total(&self) -> u64 {
        self.flows.load(Ordering::Relaxed) + self.lost_ring.load(Ordering::Relaxed)
    }
}

fn count(r: &GetFlowsResponse, into: &Received, since: Instant) {
    match &r.response_types {
        Some(ResponseTypes::Flow(_)) => {
            into.flows.fetch_add(1, Ordering::Relaxed);
        }
        Some(ResponseTypes::LostEvents(l)) => {
            let c = if l.source == LostEventSource::HubbleRingBuffer as i32 {
                &into.lost_ring
            } else {
                &into.lost_other
            };
            c.fetch_add(l.num_events_lost, Ordering::Relaxed);
        }
        _ => {}
    }
    into.last_us
        .store(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// One phase's numbers.
#[derive(Clone, Copy, Debug)]
struct Phase {
    produced: Produced,
    /// Flows and ring-loss markers at the client (None: no client).
    client: Option<(u64, u64, u64)>,
    /// Seconds from the producer's start to the client's last message.
    client_last_s: f64,
    /// Flows dropped for the API stream (FlowStore::subscriber_stats).
    dropped: u64,
    /// Most flows seen waiting in the stream's queue while producing.
    queue_peak: usize,
    /// CPU seconds per second while producing: (the client's thread, the
    /// server runtime's threads).
    cpu: (f64, f64),
}

impl Phase {
    /// Flows received per second, over the producer's run or until the
    /// client's last message if that came later.
    fn delivered_rate(&self) -> f64 {
        let window = if self.client_last_s.is_finite() {
            self.produced.elapsed.as_secs_f64().max(self.client_last_s)
        } else {
            self.produced.elapsed.as_secs_f64()
        };
        self.client.map_or(f64::NAN, |(flows, _, _)| {
            per_second(flows, Duration::from_secs_f64(window))
        })
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "flows_pushed": self.produced.flows,
            "push_s": r3(self.produced.elapsed.as_secs_f64()),
            "push_rate": self.produced.rate().round(),
            "subscriber_drops": self.dropped,
            "stream_queue_peak": self.queue_peak,
            "client_thread_cpu_percent": (self.cpu.0 * 1000.0).round() / 10.0,
            "server_threads_cpu_percent": (self.cpu.1 * 1000.0).round() / 10.0,
        });
        if let (Some((flows, lost_ring, lost_other)), Some(o)) = (self.client, v.as_object_mut()) {
            o.insert("client_flows".into(), json!(flows));
            o.insert("client_lost_events_flow_ring".into(), json!(lost_ring));
            o.insert("client_lost_events_other".into(), json!(lost_other));
            o.insert(
                "delivered_rate".into(),
                json!(self.delivered_rate().round()),
            );
            o.insert(
                "client_last_message_s_after_producer_start".into(),
                r3(self.client_last_s),
            );
        }
        v
    }
}

/// CPU seconds used so far by this process's threads: (the main thread,
/// where the bench's client runs; the server runtime's threads, where the
/// producer and the server's streams run).
fn threads_cpu() -> (f64, f64) {
    let me = std::process::id();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after ")".
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        let secs = ticks as f64 / hz;
        if t.file_name().to_str() == Some(me.to_string().as_str()) {
            out.0 += secs;
        } else if comm.starts_with("wbench-api") {
            out.1 += secs;
        }
    }
    out
}

/// The largest length of the API streams' queues seen every 5 ms until
/// `sampling` turns false.
async fn queue_peak(store: FlowStore, mut sampling: watch::Receiver<bool>) -> usize {
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while *sampling.borrow() {
        peak = store
            .subscriber_stats()
            .iter()
            .filter(|s| s.name == SUBSCRIBER_NAME)
            .map(|s| s.len)
            .fold(peak, usize::max);
        tokio::select! {
            _ = tick.tick() => {}
            _ = sampling.changed() => {}
        }
    }
    peak
}

fn api_drops(store: &FlowStore) -> u64 {
    store
        .subscriber_stats()
        .iter()
        .filter(|s| s.name == SUBSCRIBER_NAME)
        .map(|s| s.dropped)
        .sum()
}

struct FollowRig {
    store: FlowStore,
    index: Arc<EndpointIndex>,
    decoder: Decoder,
    base: Arc<Vec<FlowEvent>>,
    socket: PathBuf,
    next: u64,
}

impl FollowRig {
    async fn phase(
        &mut self,
        servers: &ApiServers,
        rate: Option<u64>,
        length: Duration,
        with_client: bool,
    ) -> Result<Phase> {
        let received = Arc::new(Received::default());
        let since = Instant::now();
        let reader = if with_client {
            let mut c = client(&self.socket).await?;
            let mut stream = c
                .get_flows(GetFlowsRequest {
                    follow: true,
                    ..GetFlowsRequest::default()
                })
                .await
                .context("GetFlows follow")?
                .into_inner();
            // The service subscribes before answering; make sure of it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self
                .store
                .subscriber_stats()
                .iter()
                .any(|s| s.name == SUBSCRIBER_NAME && s.subscribers == 1)
            {
                if Instant::now() > deadline {
                    bail!("the follow stream did not subscribe to the ring within 5 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let r = received.clone();
            Some(tokio::spawn(async move {
                let _client = c;
                while let Ok(Some(m)) = stream.message().await {
                    count(&m, &r, since);
                }
            }))
        } else {
            None
        };
        let dropped_before = api_drops(&self.store);
        // The stream's queue depth, sampled every 5 ms: the headroom left.
        let (sampling_tx, sampling_rx) = watch::channel(true);
        let sampler = tokio::spawn(queue_peak(self.store.clone(), sampling_rx));
        let producer_start_s = since.elapsed().as_secs_f64();
        let cpu_before = threads_cpu();
        let (produced, decoder) = servers
            .rt
            .handle()
            .spawn(produce(
                self.store.clone(),
                self.index.clone(),
                // Handed back at the end: the next phase decodes with the
                // same warm decoder.
                std::mem::replace(&mut self.decoder, Decoder::new(NODE)),
                self.base.clone(),
                self.next,
                rate,
                length,
            ))
            .await
            .context("the producer task panicked")?;
        let cpu_after = threads_cpu();
        let busy = |a: f64, b: f64| (b - a) / produced.elapsed.as_secs_f64().max(1e-3);
        let cpu = (
            busy(cpu_before.0, cpu_after.0),
            busy(cpu_before.1, cpu_after.1),
        );
        self.decoder = decoder;
        self.next += produced.flows;
        let _ = sampling_tx.send(false);
        let queue_peak = sampler.await.unwrap_or(0);
        let dropped = api_drops(&self.store) - dropped_before;
        let mut client_counts = None;
        let mut client_last_s = f64::NAN;
        if let Some(reader) = reader {
            // Wait for the client to have seen every flow or its loss marker
            // (bounded: 10 s, or 2 s without progress).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last = (received.total(), Instant::now());
            while received.total() < produced.flows && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = received.total();
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            reader.abort();
            let _ = reader.await;
            client_counts = Some((
                received.flows.load(Ordering::Relaxed),
                received.lost_ring.load(Ordering::Relaxed),
                received.lost_other.load(Ordering::Relaxed),
            ));
            client_last_s =
                received.last_us.load(Ordering::Relaxed) as f64 / 1e6 - producer_start_s;
            // The server's stream ends (and unsubscribes) once it sees the
            // client go; the next phase must start without it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while self
                .store
                .subscriber_stats()
                .iter()
                .any(|s| s.name == SUBSCRIBER_NAME && s.subscribers > 0)
            {
                if Instant::now() > deadline {
                    bail!("the follow stream was still subscribed 5 s after its client left");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Phase {
            produced,
            client: client_counts,
            client_last_s,
            dropped,
            queue_peak,
            cpu,
        })
    }
}

pub async fn run_follow(opts: &FollowOptions) -> Result<Report> {
    let machine = Machine::current();
    let started = Instant::now();
    if opts.rate == 0 || opts.paced.is_zero() || opts.flat_out.is_zero() {
        bail!("flow-api-follow: --rate, --paced and --flat-out must be positive");
    }
    let (index, mut decoder, base) = cluster();
    // The agent's defaults: a 4 095-flow ring, 4 096 flows queued per stream.
    let store = FlowStore::with_capacity(DEFAULT_CAPACITY)?;
    // Warm the decoder's endpoint cache and fill the ring, as a running agent's are.
    for i in 0..base.len() as u64 {
        store.push(decoder.decode(&event(&base, i), &index));
    }
    let metrics = Arc::new(Metrics::new().context("flow metrics")?);
    let mut servers = ApiServers::new()?;
    let socket = servers.serve("follow", &store, metrics.clone())?;
    let mut rig = FollowRig {
        store: store.clone(),
        index,
        decoder,
        base: Arc::new(base),
        socket,
        next: 8192,
    };
    let rate = Some(opts.rate);
    let paced_alone = rig.phase(&servers, rate, opts.paced, false).await?;
    let paced = rig.phase(&servers, rate, opts.paced, true).await?;
    let flat_alone = rig.phase(&servers, None, opts.flat_out, false).await?;
    let flat = rig.phase(&servers, None, opts.flat_out, true).await?;
    let sent = metrics.flow_api_flows_sent.get();
    servers.shutdown().await;

    let (paced_flows, paced_lost_ring, paced_lost_other) = paced.client.unwrap_or_default();
    let target = opts.rate as f64 * 0.99;
    let mut report = Report::new(
        "flow-api-follow",
        Quantity::new(
            format!(
                "flows/s pushed into the ring with no client attached, paced to {}/s (decode + push, as the agent's reader)",
                opts.rate
            ),
            paced_alone.produced.rate().round(),
            "flows/s",
        ),
        Quantity::new(
            "flows/s received by one follow client over the unix socket, same pacing",
            paced.delivered_rate().round(),
            "flows/s",
        ),
        Target::new(Subject::Measured, Op::AtLeast, target, "flows/s"),
        started.elapsed(),
        machine,
    );
    report
        .detail("paced_rate_asked", opts.rate)
        .detail("paced_flows_pushed", paced.produced.flows)
        .detail("paced_flows_received", paced_flows)
        .detail("paced_subscriber_drops", paced.dropped)
        .detail(
            "paced_stream_queue_peak",
            format!("{} of {STREAM_QUEUE}", paced.queue_peak),
        )
        .detail("paced_client_lost_events_flow_ring", paced_lost_ring)
        .detail("paced_client_lost_events_other", paced_lost_other)
        .detail("flat_out_push_rate_no_client", flat_alone.produced.rate().round())
        .detail("flat_out_push_rate_with_client", flat.produced.rate().round())
        .detail("flat_out_delivered_rate", flat.delivered_rate().round())
        .detail("flat_out_subscriber_drops", flat.dropped)
        .detail(
            "flat_out_ratio_push_with_vs_without_client",
            r3(flat.produced.rate() / flat_alone.produced.rate()),
        )
        .detail(
            "paced_cpu_percent_client_thread",
            (paced.cpu.0 * 1000.0).round() / 10.0,
        )
        .detail(
            "paced_cpu_percent_server_threads",
            (paced.cpu.1 * 1000.0).round() / 10.0,
        )
        .detail(
            "flat_out_cpu_percent_client_thread",
            (flat.cpu.0 * 1000.0).round() / 10.0,
        )
        .detail(
            "flat_out_cpu_percent_server_threads",
            (flat.cpu.1 * 1000.0).round() / 10.0,
        )
        .detail("flow_api_flows_sent_total", sent)
        .detail(
            "phases",
            json!({
                "paced_no_client": paced_alone.json(),
                "paced_one_client": paced.json(),
                "flat_out_no_client": flat_alone.json(),
                "flat_out_one_client": flat.json(),
            }),
        )
        .note(format!(
            "target: the {} flows/s offered are received (>= 99 %: the pacing releases flows in 1 ms steps and the window ends at the last push), with 0 flows lost; ring {DEFAULT_CAPACITY}, stream queue {STREAM_QUEUE} (the agent's defaults)",
            opts.rate
        ))
        .note("the producer decodes synthetic events of 1 000 pods and pushes them on the server's 2-worker runtime, as the agent's reader task does; the client reads on the bench's own thread: 3 busy threads on 2 vCPUs")
        .note("flat-out phases are informative: with a client the producer shares the CPUs with the stream, and what the client cannot take is dropped at its queue and announced as LostEvents");
    if paced.dropped > 0 || paced_lost_ring > 0 || paced_lost_other > 0 {
        report.fail_because(format!(
            "at the paced rate {} flows were dropped for the client ({} announced to it as LostEvents)",
            paced.dropped,
            paced_lost_ring + paced_lost_other
        ));
    }
    if paced_flows + paced_lost_ring < paced.produced.flows {
        report.fail_because(format!(
            "the client saw {} of {} flows (flows + LostEvent counts) within the wait",
            paced_flows + paced_lost_ring,
            paced.produced.flows
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn cycled_events_are_distinct() {
        let base = decode::events(10);
        let a = event(&base, 0);
        let b = event(&base, base.len() as u64);
        assert_eq!(a.src_addr, b.src_addr);
        assert_ne!((a.src_port, a.ts_ns), (b.src_port, b.ts_ns));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_selective_query_over_the_socket_returns_exactly_the_matches() {
        let (index, mut decoder, base) = cluster();
        let store = FlowStore::with_capacity(20_000).expect("store");
        for i in 0..20_000 {
            store.push(decoder.decode(&event(&base, i), &index));
        }
        let flows = store.last(store.capacity());
        let (filter, ns, port, pod) = selective_filter(&flows).expect("a filter");
        let expected = flows
            .iter()
            .filter(|f| {
                f.destination_port() == port
                    && f.source
                        .as_ref()
                        .is_some_and(|s| s.namespace == ns && s.pod_name.starts_with(&pod))
            })
            .count();
        assert!(
            (1..200).contains(&expected),
            "a handful of matches: {expected}"
        );
        let mut servers = ApiServers::new().expect("servers");
        let sock = servers
            .serve("t", &store, Arc::new(Metrics::new().expect("metrics")))
            .expect("serve");
        let mut c = client(&sock).await.expect("client");
        let req = GetFlowsRequest {
            whitelist: vec![filter],
            ..GetFlowsRequest::default()
        };
        let (_, n) = timed_query(&mut c, &req).await.expect("query");
        assert_eq!(n, expected, "the API returns exactly the matches");
        drop(c);
        servers.shutdown().await;
    }
}
