//! The Observer service: Hubble's `observer.Observer` over Weir's flow ring.
//!
//! `GetFlows` answers from the in-memory ring (last or first N, a time
//! window) and, when following, from a subscription to the ring taken
//! *before* the ring is read, so nothing pushed in between is missed (the
//! few flows that land in both are recognised by identity and sent once).
//! Every stream has its own bounded queue: the ring's fan-out never waits
//! for a client, a slow client loses flows, and the loss reaches it in
//! place as a `LostEvent` (source `HUBBLE_RING_BUFFER`) and is counted in
//! `weir_queue_dropped_total{queue="flows_flow_api"}`. Events lost before
//! they became flows (kernel ring buffer, agent queue) reach every follower
//! as `LostEvent`s with their own source.
//!
//! Filters are evaluated on Weir's own flow type before conversion, so a
//! selective query over a full ring converts only what it sends.

use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use weir_flows::flow::{Flow, LostEventSource, Timestamp};
use weir_flows::metrics::Metrics;
use weir_flows::store::{FlowStore, Item};

use crate::convert;
use crate::fieldmask::FlowMask;
use crate::filter::FlowFilters;
use crate::proto::observer::{self as po, observer_server::Observer};

/// Name of the flow ring subscriptions of API streams (their queue metrics
/// are reported together under `flows_flow_api`).
pub const SUBSCRIBER_NAME: &str = "flow_api";
/// Responses buffered between a stream's producer and gRPC's writer. Small
/// on purpose: the bounded queue that absorbs a slow client is the
/// subscription's, where drops are counted.
const SEND_BUFFER: usize = 64;
/// Cluster name reported for this node's namespaces (Hubble's default).
pub const CLUSTER_NAME: &str = "default";

/// What the Observer and Peer services say about this node.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The node's name, as in flows.
    pub name: String,
    /// Weir's version.
    pub version: String,
    /// `HOST:PORT` where Hubble Relay can reach this node's flow API
    /// (empty when it has no reachable TCP listener).
    pub address: String,
    /// Whether that listener uses TLS.
    pub tls: bool,
    /// The TLS server name its certificate carries.
    pub tls_server_name: String,
}

/// Source of the namespaces this node knows besides those in flows.
pub type NamespaceSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The Observer service. Cheap to clone.
#[derive(Clone)]
pub struct ObserverService {
    inner: Arc<Inner>,
}

struct Inner {
    store: FlowStore,
    node: NodeInfo,
    started: Instant,
    stream_queue: usize,
    metrics: Arc<Metrics>,
    namespaces: NamespaceSource,
    stop: watch::Receiver<bool>,
}

impl ObserverService {
    /// A service over `store`. Each `GetFlows` stream gets a queue of
    /// `stream_queue` flows. Open streams end when `stop` turns true.
    pub fn new(
        store: FlowStore,
        node: NodeInfo,
        stream_queue: usize,
        metrics: Arc<Metrics>,
        namespaces: NamespaceSource,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                node,
                started: Instant::now(),
                stream_queue: stream_queue.max(1),
                metrics,
                namespaces,
                stop,
            }),
        }
    }

    fn uptime_ns(&self) -> u64 {
        self.inner.started.elapsed().as_nanos() as u64
    }
}

/// A `GetFlows` request checked and compiled.
struct Query {
    filters: FlowFilters,
    mask: Option<FlowMask>,
    number: usize,
    first: bool,
    follow: bool,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    /// Send `extensions` (see [`Query::compile`]).
    extensions: bool,
}

impl Query {
    fn compile(r: &po::GetFlowsRequest) -> Result<Self, Status> {
        if r.first && r.follow {
            return Err(Status::invalid_argument(
                "first and follow cannot be combined: first returns the oldest flows of the ring",
            ));
        }
        let filters = FlowFilters::compile(&r.whitelist, &r.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The stable field mask wins over the experimental one when both are set.
        let mask_src = r
            .field_mask
            .as_ref()
            .filter(|m| !m.paths.is_empty())
            .or_else(|| r.experimental.as_ref().and_then(|e| e.field_mask.as_ref()));
        // Weir's counters travel in `extensions` as an Any whose type the
        // upstream protos do not define: clients generated from them decode
        // it as opaque bytes but cannot print it as JSON (`hubble observe -o
        // json` fails). So it is sent only to a client whose field mask asks
        // for it by name.
        let extensions = mask_src.is_some_and(|m| {
            m.paths
                .iter()
                .any(|p| p == "extensions" || p.starts_with("extensions."))
        });
        let mask = match mask_src {
            Some(m) if !m.paths.is_empty() => {
                Some(FlowMask::compile(m).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
            _ => None,
        };
        let ts = |t: &Option<prost_types::Timestamp>, what: &str| -> Result<_, Status> {
            match t {
                None => Ok(None),
                Some(t) if !(0..1_000_000_000).contains(&t.nanos) => Err(Status::invalid_argument(
                    format!("{what}: nanos {} is outside 0..1e9", t.nanos),
                )),
                Some(t) => Ok(Some(Timestamp {
                    seconds: t.seconds,
                    nanos: t.nanos,
                })),
            }
        };
        let since = ts(&r.since, "since")?;
        let until = ts(&r.until, "until")?;
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Status::invalid_argument("since is after until"));
        }
        Ok(Self {
            filters,
            mask,
            number: usize::try_from(r.number).unwrap_or(usize::MAX),
            first: r.first,
            follow: r.follow,
            since,
            until,
            extensions,
        })
    }

    fn in_window(&self, f: &Flow) -> bool {
        let t = f.time.unwrap_or_default();
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    fn wants(&self, f: &Flow) -> bool {
        self.in_window(f) && self.filters.matches(f)
    }

    /// The flows of `snapshot` (oldest first) this query returns from history.
    fn select<'a>(&self, snapshot: &'a [Arc<Flow>]) -> Vec<&'a Arc<Flow>> {
        if self.follow && self.number == 0 && self.since.is_none() {
            // Following without a count or a start: new flows only, as `hubble observe -f`.
            return Vec::new();
        }
        let limit = if self.number == 0 {
            usize::MAX
        } else {
            self.number
        };
        if self.first {
            snapshot
                .iter()
                .filter(|f| self.wants(f))
                .take(limit)
                .collect()
        } else {
            let mut v: Vec<&Arc<Flow>> = snapshot
                .iter()
                .rev()
                .filter(|f| self.wants(f))
                .take(limit)
                .collect();
            v.reverse();
            v
        }
    }

    fn response(&self, f: &Flow, node: &str) -> po::GetFlowsResponse {
        let mut pf = convert::flow_to_proto_with(f, self.extensions);
        if let Some(m) = &self.mask {
            m.apply(&mut pf);
        }
        po::GetFlowsResponse {
            response_types: Some(po::get_flows_response::ResponseTypes::Flow(pf)),
            node_name: node.to_owned(),
            time: f.time.map(|t| prost_types::Timestamp {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
        }
    }
}

fn lost_response(source: LostEventSource, count: u64, node: &str) -> po::GetFlowsResponse {
    let now = Timestamp::now();
    po::GetFlowsResponse {
        response_types: Some(po::get_flows_response::ResponseTypes::LostEvents(
            convert::lost_to_proto(source, count, now),
        )),
        node_name: node.to_owned(),
        time: Some(prost_types::Timestamp {
            seconds: now.seconds,
            nanos: now.nanos,
        }),
    }
}

/// Keeps `weir_flow_api_streams` right however a stream ends.
struct StreamGauge(Arc<Metrics>);

impl StreamGauge {
    fn new(m: Arc<Metrics>) -> Self {
        m.flow_api_streams.inc();
        Self(m)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.flow_api_streams.dec();
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<po::GetFlowsResponse, Status>> + Send>>;

async fn run_stream(
    inner: Arc<Inner>,
    q: Query,
    sub: Option<weir_flows::store::Subscription>,
    snapshot: Vec<Arc<Flow>>,
    tx: mpsc::Sender<Result<po::GetFlowsResponse, Status>>,
) {
    let _gauge = StreamGauge::new(inner.metrics.clone());
    let node = inner.node.name.as_str();
    let history = q.select(&snapshot);
    for f in history {
        if tx.send(Ok(q.response(f, node))).await.is_err() {
            return;
        }
        inner.metrics.flow_api_flows_sent.inc();
    }
    let Some(mut sub) = sub else { return };
    // Flows pushed between subscribing and reading the ring are in both; they
    // are the newest of the snapshot and the first of the subscription.
    let tail = snapshot.len().saturating_sub(4096);
    let mut dups: HashSet<usize> = snapshot[tail..]
        .iter()
        .map(|f| Arc::as_ptr(f) as usize)
        .collect();
    drop(snapshot);
    let mut stop = inner.stop.clone();
    if *stop.borrow() {
        return;
    }
    // Ends a follow with `until` once that time has passed.
    let deadline = q.until.map(|u| {
        let now = Timestamp::now().unix_nanos();
        let wait = u.unix_nanos().saturating_sub(now).max(0) as u64;
        tokio::time::Instant::now() + Duration::from_nanos(wait)
    });
    loop {
        let item = tokio::select! {
            item = sub.recv() => item,
            _ = stop.changed() => return,
            _ = tx.closed() => return,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return,
        };
        let resp = match item {
            None => return,
            Some(Item::Flow(f)) => {
                if !dups.is_empty() {
                    if dups.contains(&(Arc::as_ptr(&f) as usize)) {
                        continue;
                    }
                    dups = HashSet::new();
                }
                if q.until.is_some_and(|u| f.time.unwrap_or_default() > u) {
                    return;
                }
                if !q.wants(&f) {
                    continue;
                }
                inner.metrics.flow_api_flows_sent.inc();
                q.response(&f, node)
            }
            Some(Item::Lost(n)) => lost_response(LostEventSource::HubbleRingBuffer, n, node),
            Some(Item::LostUpstream { source, count }) => lost_response(source, count, node),
        };
        if tx.send(Ok(resp)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<po::GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let q = match Query::compile(request.get_ref()) {
            Ok(q) => q,
            Err(s) => {
                self.inner
                    .metrics
                    .flow_api_request("GetFlows", code_name(s.code()));
                return Err(s);
            }
        };
        self.inner.metrics.flow_api_request("GetFlows", "OK");
        // Subscribe before reading the ring: see the module doc.
        let sub = q.follow.then(|| {
            self.inner
                .store
                .subscribe(SUBSCRIBER_NAME, self.inner.stream_queue)
        });
        // A follow of new flows only reads no history (and needs no dedup).
        let snapshot = if q.follow && q.number == 0 && q.since.is_none() {
            Vec::new()
        } else {
            self.inner.store.last(self.inner.store.capacity())
        };
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        tokio::spawn(run_stream(self.inner.clone(), q, sub, snapshot, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type GetAgentEventsStream =
        Pin<Box<dyn Stream<Item = Result<po::GetAgentEventsResponse, Status>> + Send>>;

    async fn get_agent_events(
        &self,
        _request: Request<po::GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        self.inner
            .metrics
            .flow_api_request("GetAgentEvents", "Unimplemented");
        Err(Status::unimplemented(
            "GetAgentEvents is not implemented by Weir: it has no Cilium agent events; use GetFlows",
        ))
    }

    type GetDebugEventsStream =
        Pin<Box<dyn Stream<Item = Result<po::GetDebugEventsResponse, Status>> + Send>>;

    async fn get_debug_events(
        &self,
        _request: Request<po::GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        self.inner
            .metrics
            .flow_api_request("GetDebugEvents", "Unimplemented");
        Err(Status::unimplemented(
            "GetDebugEvents is not implemented by Weir: its datapath emits flows only; use GetFlows",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<po::GetNodesRequest>,
    ) -> Result<Response<po::GetNodesResponse>, Status> {
        self.inner.metrics.flow_api_request("GetNodes", "OK");
        let store = &self.inner.store;
        let n = &self.inner.node;
        Ok(Response::new(po::GetNodesResponse {
            nodes: vec![po::Node {
                name: n.name.clone(),
                version: n.version.clone(),
                address: n.address.clone(),
                state: crate::proto::relay::NodeState::NodeConnected as i32,
                tls: Some(po::Tls {
                    enabled: n.tls,
                    server_name: n.tls_server_name.clone(),
                }),
                uptime_ns: self.uptime_ns(),
                num_flows: store.len() as u64,
                max_flows: store.capacity() as u64,
                seen_flows: store.seen(),
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<po::GetNamespacesRequest>,
    ) -> Result<Response<po::GetNamespacesResponse>, Status> {
        self.inner.metrics.flow_api_request("GetNamespaces", "OK");
        let mut set: BTreeSet<String> = (self.inner.namespaces)().into_iter().collect();
        for f in self.inner.store.last(self.inner.store.capacity()) {
            for ep in [&f.source, &f.destination].into_iter().flatten() {
                if !ep.namespace.is_empty() && !set.contains(&ep.namespace) {
                    set.insert(ep.namespace.clone());
                }
            }
        }
        Ok(Response::new(po::GetNamespacesResponse {
            namespaces: set
                .into_iter()
                .map(|namespace| po::Namespace {
                    cluster: CLUSTER_NAME.to_string(),
                    namespace,
                })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<po::ServerStatusRequest>,
    ) -> Result<Response<po::ServerStatusResponse>, Status> {
        self.inner.metrics.flow_api_request("ServerStatus", "OK");
        let store = &self.inner.store;
        let flows = store.last(store.capacity());
        Ok(Response::new(po::ServerStatusResponse {
            num_flows: flows.len() as u64,
            max_flows: store.capacity() as u64,
            seen_flows: store.seen(),
            uptime_ns: self.uptime_ns(),
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: self.inner.node.version.clone(),
            flows_rate: flows_rate(&flows, store.capacity()),
        }))
    }
}

/// Flows per second over the last minute, as Hubble reports it: flows of the
/// ring stamped within the minute, over the minute (or over the time the ring
/// covers when it holds less than a minute because it is full).
pub fn flows_rate(flows: &[Arc<Flow>], capacity: usize) -> f64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    let minute_ago = now - 60_000_000_000;
    let recent: Vec<i64> = flows
        .iter()
        .filter_map(|f| f.time.map(|t| t.unix_nanos()))
        .filter(|t| *t >= minute_ago)
        .collect();
    if recent.is_empty() {
        return 0.0;
    }
    let mut window_ns = 60_000_000_000i64;
    if flows.len() >= capacity
        && let Some(oldest) = recent.iter().min()
    {
        window_ns = window_ns.min((now - oldest).max(1_000_000_000));
    }
    recent.len() as f64 / (window_ns as f64 / 1e9)
}

/// gRPC's name of a status code, for metric labels.
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
