//! One running exporter: drains its own store subscription, filters, masks
//! and encodes each flow as Hubble's exporter does, and appends the lines to
//! its [`RotatingFile`] on a blocking thread.
//!
//! A line is the protobuf JSON of an `observer.ExportEvent` (same shape as
//! `GetFlowsResponse`): `{"flow":{...},"node_name":"<node>","time":"..."}`,
//! where the envelope's `node_name` is the agent's node and `time` the flow's
//! time. Queue overflow in the store is written as a `lost_events` line
//! (`HUBBLE_RING_BUFFER`, as Hubble reports it), and losses upstream of the
//! store under their own source; filters apply to flows only, as in Hubble.
//!
//! Flows are encoded through `weir_flows`' serde form plus the two deprecated
//! fields Hubble still fills (`drop_reason`, `reply`), which gives the same
//! JSON as converting to protobuf and printing with `weir_api::json` (checked
//! by tests, masked and unmasked) at a fraction of the cost; a field mask is
//! applied to the JSON object by proto field name ([`JsonMask`]), after
//! `weir_api::fieldmask` validated the paths.
//!
//! Owns the task and its counters; starting, stopping and replacing
//! exporters is `crate::set`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_flows::flow::{Flow, LostEvent, LostEventSource, Timestamp};
use weir_flows::store::{Item, Subscription, TryRecvError};

use crate::config::CompiledExporter;
use crate::rotate::RotatingFile;

/// Most items encoded into one write.
const MAX_BATCH: usize = 1024;
/// A batch is written at the latest this long after its first item.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);
/// How long a stopping exporter waits for flows pushed before its stop
/// that are still being offered to its queue by a concurrent push.
const STOP_GRACE: Duration = Duration::from_millis(50);

/// Counters of one exporter name (kept across restarts of that name, so
/// they only go up).
#[derive(Debug, Default)]
pub struct ExporterStats {
    lines: AtomicU64,
    write_errors: AtomicU64,
    lines_lost: AtomicU64,
    rotations: AtomicU64,
    filtered_out: AtomicU64,
    lost_reported: AtomicU64,
}

impl ExporterStats {
    /// Lines in the file (flows and lost-event lines).
    pub fn lines_written(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }
    /// Failed opens, writes, renames and encodings.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
    /// Lines that an error kept out of the file.
    pub fn lines_lost(&self) -> u64 {
        self.lines_lost.load(Ordering::Relaxed)
    }
    /// Rotations done.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }
    /// Flows the include/exclude filters kept out.
    pub fn filtered_out(&self) -> u64 {
        self.filtered_out.load(Ordering::Relaxed)
    }
    /// Events reported lost in `lost_events` lines (this exporter's queue
    /// overflow and upstream losses).
    pub fn lost_reported(&self) -> u64 {
        self.lost_reported.load(Ordering::Relaxed)
    }
}

/// Where an exporter is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExporterState {
    /// Writing flows.
    Running,
    /// Its `end` time passed.
    Ended,
    /// It could not open its file; the message says why.
    Failed(String),
    /// Stopped by a reload or shutdown (no longer listed after a reload).
    Stopped,
}

/// A running exporter's handle, held by the set.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) compiled: CompiledExporter,
    pub(crate) stats: Arc<ExporterStats>,
    pub(crate) state: Arc<Mutex<ExporterState>>,
    stop: watch::Sender<Option<u64>>,
    pub(crate) task: Option<JoinHandle<()>>,
    /// `FlowStore::seen()` just before this exporter subscribed.
    start_seen: u64,
}

impl Running {
    /// Tells the task to end once it has handled the flows pushed before
    /// the store had seen `seen_now` flows (read just before a successor
    /// subscribes), so a successor and its predecessor split the stream
    /// instead of both writing what is pushed after a reload.
    pub(crate) fn stop(&mut self, seen_now: u64) -> Option<JoinHandle<()>> {
        let _ = self
            .stop
            .send(Some(seen_now.saturating_sub(self.start_seen)));
        self.task.take()
    }
}

/// Starts the task of `compiled`, reading `sub`. If `after` is given the
/// task waits for it (the exporter it replaces) before opening the file, so
/// two writers never share a file.
pub(crate) fn spawn(
    rt: &tokio::runtime::Handle,
    compiled: CompiledExporter,
    sub: Subscription,
    start_seen: u64,
    node_name: Arc<str>,
    stats: Arc<ExporterStats>,
    after: Option<JoinHandle<()>>,
) -> Running {
    let (stop_tx, stop_rx) = watch::channel(None);
    let state = Arc::new(Mutex::new(ExporterState::Running));
    let worker = Worker {
        compiled: compiled.clone(),
        node_name,
        stats: Arc::clone(&stats),
        state: Arc::clone(&state),
    };
    let task = rt.spawn(worker.run(sub, stop_rx, after));
    Running {
        compiled,
        stats,
        state,
        stop: stop_tx,
        task: Some(task),
        start_seen,
    }
}

/// A `Running` for an exporter that never started (ended before it began).
pub(crate) fn not_started(
    compiled: CompiledExporter,
    stats: Arc<ExporterStats>,
    state: ExporterState,
) -> Running {
    let (stop, _) = watch::channel(Some(0));
    Running {
        compiled,
        stats,
        state: Arc::new(Mutex::new(state)),
        stop,
        task: None,
        start_seen: 0,
    }
}

struct Worker {
    compiled: CompiledExporter,
    node_name: Arc<str>,
    stats: Arc<ExporterStats>,
    state: Arc<Mutex<ExporterState>>,
}

/// Why the receive loop ended.
enum Exit {
    Stop,
    End,
    Closed,
}

impl Worker {
    fn set_state(&self, s: ExporterState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    async fn run(
        self,
        mut sub: Subscription,
        mut stop: watch::Receiver<Option<u64>>,
        after: Option<JoinHandle<()>>,
    ) {
        let name = self.compiled.spec.name.clone();
        if let Some(prev) = after {
            let _ = prev.await;
        }
        let spec = self.compiled.spec.clone();
        let opened = tokio::task::spawn_blocking(move || {
            RotatingFile::open(
                &spec.file_path,
                spec.max_size_bytes,
                spec.max_backups,
                spec.compress,
            )
        })
        .await;
        let mut file = match opened {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(exporter = %name, error = %e, "flow log exporter cannot open its file");
                self.set_state(ExporterState::Failed(error_chain(&e)));
                return;
            }
            Err(e) => {
                self.set_state(ExporterState::Failed(e.to_string()));
                return;
            }
        };
        let end = self.compiled.spec.end.map(|end| {
            let left = end.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let ended = async move {
            match end {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        tracing::info!(exporter = %name, file = %self.compiled.spec.file_path.display(), "flow log exporter started");
        // Flows taken from the queue (a `Lost(n)` marker stands for n), to
        // stop exactly at the limit a stop request sets.
        let mut consumed: u64 = 0;
        let mut limit = u64::MAX;
        let exit = loop {
            let first = tokio::select! {
                biased;
                changed = stop.changed() => {
                    // A dropped sender (the set is gone) stops at what is queued.
                    limit = match changed {
                        Ok(()) => (*stop.borrow_and_update()).unwrap_or(u64::MAX),
                        Err(_) => consumed,
                    };
                    break Exit::Stop;
                }
                () = &mut ended => break Exit::End,
                item = sub.recv() => item,
            };
            let Some(first) = first else {
                break Exit::Closed;
            };
            let started = Instant::now();
            let mut lines = self.encode(&first, &mut buf, &mut consumed);
            let mut closed = false;
            if let Some(l) = *stop.borrow() {
                limit = l;
            }
            for _ in 1..MAX_BATCH {
                if started.elapsed() >= MAX_BATCH_DELAY || consumed >= limit {
                    break;
                }
                match sub.try_recv() {
                    Ok(item) => lines += self.encode(&item, &mut buf, &mut consumed),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        closed = true;
                        break;
                    }
                }
            }
            let Some((f, b)) = self.write(file, buf, lines).await else {
                return;
            };
            (file, buf) = (f, b);
            if closed {
                break Exit::Closed;
            }
            if consumed >= limit {
                break Exit::Stop;
            }
        };
        // What was pushed before the stop (or the end time) is still this
        // exporter's: up to `limit` after a stop, what is queued otherwise.
        if !matches!(exit, Exit::Stop) {
            limit = u64::MAX;
        }
        let mut lines = 0;
        let give_up = Instant::now() + STOP_GRACE;
        while consumed < limit {
            let item = match sub.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Closed) => break,
                Err(TryRecvError::Empty) if limit == u64::MAX => break,
                // A push counted in the limit may still be on its way in.
                Err(TryRecvError::Empty) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, sub.recv()).await {
                        Ok(Some(item)) => item,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            lines += self.encode(&item, &mut buf, &mut consumed);
            if buf.len() >= 1 << 20 {
                let Some((f, b)) = self.write(file, buf, lines).await else {
                    return;
                };
                (file, buf, lines) = (f, b, 0);
            }
        }
        drop(sub);
        let _ = self.write(file, buf, lines).await;
        match exit {
            Exit::Stop | Exit::Closed => {
                self.set_state(ExporterState::Stopped);
                tracing::info!(exporter = %name, "flow log exporter stopped");
            }
            Exit::End => {
                self.set_state(ExporterState::Ended);
                tracing::info!(exporter = %name, "flow log exporter reached its end time");
            }
        }
    }

    /// Writes `buf` on a blocking thread; returns the file and the emptied
    /// buffer, or `None` if the blocking task died.
    async fn write(
        &self,
        mut file: RotatingFile,
        mut buf: Vec<u8>,
        lines: u64,
    ) -> Option<(RotatingFile, Vec<u8>)> {
        if buf.is_empty() {
            return Some((file, buf));
        }
        let joined = tokio::task::spawn_blocking(move || {
            let o = file.write_lines(&buf);
            buf.clear();
            (file, buf, o)
        })
        .await;
        let (file, buf, o) = match joined {
            Ok(x) => x,
            Err(e) => {
                self.stats.lines_lost.fetch_add(lines, Ordering::Relaxed);
                self.set_state(ExporterState::Failed(format!("writer task failed: {e}")));
                return None;
            }
        };
        let s = &self.stats;
        s.lines.fetch_add(o.lines, Ordering::Relaxed);
        s.lines_lost.fetch_add(o.lines_lost, Ordering::Relaxed);
        s.rotations.fetch_add(o.rotations, Ordering::Relaxed);
        for e in &o.errors {
            let n = s.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
            // First error, then every 1000th, so a full disk does not flood the log.
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(exporter = %self.compiled.spec.name, error = %error_chain(e), write_errors = n, "flow log write failed");
            }
        }
        Some((file, buf))
    }

    /// Appends `item`'s line to `buf` unless filtered; returns lines added.
    fn encode(&self, item: &Item, buf: &mut Vec<u8>, consumed: &mut u64) -> u64 {
        match item {
            Item::Flow(flow) => {
                *consumed += 1;
                if !self.compiled.filters.matches(flow) {
                    self.stats.filtered_out.fetch_add(1, Ordering::Relaxed);
                    return 0;
                }
                match encode_flow(&self.compiled, flow, &self.node_name, buf) {
                    Ok(()) => 1,
                    Err(e) => {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        self.stats.lines_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(exporter = %self.compiled.spec.name, error = %e, "flow not encodable");
                        0
                    }
                }
            }
            Item::Lost(n) => {
                *consumed += n;
                self.lost(LostEventSource::HubbleRingBuffer, *n, buf)
            }
            Item::LostUpstream { source, count } => self.lost(*source, *count, buf),
        }
    }

    fn lost(&self, source: LostEventSource, n: u64, buf: &mut Vec<u8>) -> u64 {
        self.stats.lost_reported.fetch_add(n, Ordering::Relaxed);
        let lost = LostEvent {
            source,
            num_events_lost: n,
            ..LostEvent::default()
        };
        match weir_flows::export::write_lost_json(&lost, &self.node_name, Timestamp::now(), buf) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }
}

/// Appends one export line for `flow` (with `\n`) to `buf`.
pub(crate) fn encode_flow(
    c: &CompiledExporter,
    flow: &Flow,
    node_name: &str,
    buf: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(b"{\"flow\":");
    if c.json_mask.is_empty() {
        let at = buf.len();
        serde_json::to_writer(&mut *buf, flow)?;
        // The deprecated twins `weir_api::convert::flow_to_proto` fills, as
        // Hubble does: spliced in before the flow's closing brace.
        let twins = deprecated_twins(flow);
        if !twins.is_empty() {
            buf.pop();
            let empty = buf.len() == at + 1;
            for (i, (k, v)) in twins.iter().enumerate() {
                if i > 0 || !empty {
                    buf.push(b',');
                }
                buf.extend_from_slice(format!("\"{k}\":{v}").as_bytes());
            }
            buf.push(b'}');
        }
    } else {
        let mut v = serde_json::to_value(flow)?;
        if let Value::Object(m) = &mut v {
            for (k, val) in deprecated_twins(flow) {
                m.insert(k.to_owned(), val);
            }
        }
        c.json_mask.prune(&mut v);
        serde_json::to_writer(&mut *buf, &v)?;
    }
    buf.extend_from_slice(b",\"node_name\":");
    serde_json::to_writer(&mut *buf, node_name)?;
    if let Some(t) = flow.time {
        buf.extend_from_slice(b",\"time\":");
        serde_json::to_writer(&mut *buf, &t)?;
    }
    buf.extend_from_slice(b"}\n");
    Ok(())
}

/// `drop_reason` (the number of `drop_reason_desc`) and `reply` (`is_reply`
/// with unknown as false), as protojson prints them (defaults omitted).
fn deprecated_twins(flow: &Flow) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let reason = flow.drop_reason_desc as i32;
    if reason != 0 {
        out.push(("drop_reason", Value::from(reason)));
    }
    if flow.is_reply == Some(true) {
        out.push(("reply", Value::Bool(true)));
    }
    out
}

/// The field mask as JSON keys: protojson with proto field names uses the
/// proto names as keys (oneof members included: `l4.TCP`), so masking the
/// JSON object keeps exactly the fields `weir_api::fieldmask` would keep.
/// A path into a value that is not an object in JSON (a `Timestamp`, a
/// wrapper) keeps that value whole, as the protobuf mask does for wrappers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonMask {
    fields: BTreeMap<String, Option<JsonMask>>,
}

impl JsonMask {
    /// From paths already validated by `FlowMask::compile`.
    pub fn new(paths: &[String]) -> Self {
        let mut m = Self::default();
        for p in paths {
            let parts: Vec<&str> = p.split('.').collect();
            m.add(&parts);
        }
        m
    }

    fn add(&mut self, parts: &[&str]) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        if rest.is_empty() {
            self.fields.insert((*first).to_owned(), None);
            return;
        }
        match self.fields.entry((*first).to_owned()) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if let Some(child) = e.get_mut() {
                    child.add(rest);
                }
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut child = JsonMask::default();
                child.add(rest);
                e.insert(Some(child));
            }
        }
    }

    /// Whether every field is kept.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    fn prune(&self, v: &mut Value) {
        let Value::Object(map) = v else { return };
        // An `Any`'s type stays with whatever is kept of it.
        map.retain(|k, _| k == "@type" || self.fields.contains_key(k));
        for (k, child) in map.iter_mut() {
            if let Some(Some(sub)) = self.fields.get(k) {
                sub.prune(child);
            }
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use weir_api::proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
    use weir_flows::flow as wf;

    use super::*;

    /// The reference: protobuf conversion, `weir_api::fieldmask`, protojson.
    fn reference(c: &CompiledExporter, flow: &Flow, node: &str) -> Value {
        let mut p = weir_api::convert::flow_to_proto(flow);
        c.mask.apply(&mut p);
        weir_api::json::response_to_json(&GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(p)),
            node_name: node.to_owned(),
            time: flow.time.map(weir_api::convert::timestamp_to_proto),
        })
    }

    fn flows() -> Vec<Flow> {
        let base = crate::bench::sample_flow();
        let mut dropped = base.clone();
        dropped.verdict = wf::Verdict::Dropped;
        dropped.drop_reason_desc = wf::DropReason::PolicyDenied;
        let mut reply = base.clone();
        reply.is_reply = Some(true);
        reply.l4 = Some(wf::Layer4::Udp(wf::Udp {
            source_port: 53,
            destination_port: 40000,
        }));
        reply.extensions = Some(wf::FlowExtensions {
            packets_forward: 3,
            bytes_forward: 300,
            ..Default::default()
        });
        let bare = Flow {
            verdict: wf::Verdict::Dropped,
            drop_reason_desc: wf::DropReason::PolicyDenied,
            ..Flow::default()
        };
        vec![base, dropped, reply, bare, Flow::default()]
    }

    #[test]
    fn json_encoding_equals_protojson_with_and_without_masks() {
        let masks: &[&[&str]] = &[
            &[],
            &[
                "time",
                "source.namespace",
                "source.pod_name",
                "destination",
                "verdict",
                "drop_reason_desc",
            ],
            &["l4.TCP.destination_port", "IP.source", "l4.UDP"],
            &["drop_reason", "reply", "is_reply", "uuid"],
            &["source", "source.pod_name", "Summary", "extensions"],
            &[
                "interface.name",
                "event_type.type",
                "trace_observation_point",
                "node_name",
            ],
        ];
        for paths in masks {
            let yaml = format!(
                "flowLogs: [{{name: x, filePath: /x, fieldMask: [{}]}}]",
                paths.join(", ")
            );
            let c = crate::config::parse(&yaml)
                .unwrap()
                .entries
                .remove(0)
                .unwrap();
            for f in flows() {
                let mut buf = Vec::new();
                encode_flow(&c, &f, "node-1", &mut buf).unwrap();
                assert_eq!(buf.last(), Some(&b'\n'));
                let got: Value = serde_json::from_slice(&buf).unwrap();
                assert_eq!(
                    got,
                    reference(&c, &f, "node-1"),
                    "mask {paths:?}, flow {f:?}"
                );
            }
        }
    }
}
