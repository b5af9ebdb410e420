//! The flow log: one JSON object per line in Hubble's export shape
//! (`observer.ExportEvent` / `GetFlowsResponse` in protojson):
//!
//! ```text
//! {"flow":{...},"node_name":"node-1","time":"2026-11-29T12:00:01.123456789Z"}
//! {"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"3"},"node_name":"node-1","time":"..."}
//! ```
//!
//! (`num_events_lost` is a uint64, which protojson writes as a string; a
//! number is accepted when reading.) Or the compact `hubble observe` line.
//! [`FlowLogWriter`] drains a store [`Subscription`] into stdout or a file.
//! Owns the output side only; the lines are produced from [`crate::flow`] types.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::compact;
use crate::flow::{Flow, LostEvent, LostEventSource, Timestamp};
use crate::store::{Item, Subscription, TryRecvError};

/// Most items written per batch before the batch is flushed, so a busy
/// stream still reaches the file every few milliseconds.
const MAX_BATCH: usize = 1024;
/// Flush at least this often even if the queue never runs empty.
const MAX_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Errors of the flow log.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The flow log file could not be opened (or created) for appending.
    #[error("opening flow log {path}")]
    Open {
        /// The file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line could not be serialized (only for values out of JSON's range,
    /// e.g. a timestamp beyond year 9999).
    #[error("serializing a flow log line")]
    Serialize(#[source] serde_json::Error),
    /// A line is not a valid export event.
    #[error("parsing a flow log line")]
    Parse(#[source] serde_json::Error),
}

/// How the writer prints flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Hubble's export JSON, one object per line.
    #[default]
    Json,
    /// `hubble observe`'s compact one-line text.
    Compact,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(OutputFormat::Json),
            "compact" => Ok(OutputFormat::Compact),
            other => Err(format!("unknown output format {other:?} (json, compact)")),
        }
    }
}

/// Where the writer writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogTarget {
    /// The process's standard output.
    Stdout,
    /// A file, appended to and created if missing.
    File(PathBuf),
}

/// One line of a flow log, for reading logs back (Hubble's or Weir's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<LostEvent>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

impl ExportEvent {
    /// Parses one JSON line. Other response types (`node_status`,
    /// `agent_event`, ...) parse as an event with neither `flow` nor
    /// `lost_events`.
    pub fn parse(line: &str) -> Result<Self, ExportError> {
        serde_json::from_str(line).map_err(ExportError::Parse)
    }
}

/// The borrowed twin of [`ExportEvent`], so writing does not clone flows.
#[derive(Serialize)]
struct ExportRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<&'a Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_events: Option<&'a LostEvent>,
    #[serde(skip_serializing_if = "str::is_empty")]
    node_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<Timestamp>,
}

/// Appends `flow`'s export line (with `\n`) to `out`. The event's node name
/// and time are the flow's, as Hubble fills them.
pub fn write_flow_json(flow: &Flow, out: &mut Vec<u8>) -> Result<(), ExportError> {
    let r = ExportRef {
        flow: Some(flow),
        lost_events: None,
        node_name: &flow.node_name,
        time: flow.time,
    };
    serde_json::to_writer(&mut *out, &r).map_err(ExportError::Serialize)?;
    out.push(b'\n');
    Ok(())
}

/// Appends a lost-events line (with `\n`) to `out`.
pub fn write_lost_json(
    lost: &LostEvent,
    node_name: &str,
    time: Timestamp,
    out: &mut Vec<u8>,
) -> Result<(), ExportError> {
    let r = ExportRef {
        flow: None,
        lost_events: Some(lost),
        node_name,
        time: Some(time),
    };
    serde_json::to_writer(&mut *out, &r).map_err(ExportError::Serialize)?;
    out.push(b'\n');
    Ok(())
}

/// Counters of a running [`FlowLogWriter`].
#[derive(Debug, Default)]
pub struct WriterStats {
    lines: AtomicU64,
    write_errors: AtomicU64,
    lost_reported: AtomicU64,
}

impl WriterStats {
    /// Lines handed to the output successfully (flows and lost-event lines).
    pub fn lines_written(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Failed writes, flushes, opens or serializations (each loses its batch
    /// or line).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Flows this writer lost because its queue was full (written as
    /// lost-event lines).
    pub fn lost_events_reported(&self) -> u64 {
        self.lost_reported.load(Ordering::Relaxed)
    }
}

/// Drains a [`Subscription`] into the flow log.
///
/// Flushing: items are written in batches of what is already queued (at most
/// 1024); each batch is flushed as soon as the queue runs dry, and in
/// any case within 100 ms, so `tail -f` sees flows promptly while
/// a busy stream costs one write per batch. A failed write is counted, logged
/// and its batch dropped; a file is reopened for the next batch.
#[derive(Debug)]
pub struct FlowLogWriter {
    target: FlowLogTarget,
    format: OutputFormat,
    node_name: Arc<str>,
    stats: Arc<WriterStats>,
}

type Output = Box<dyn AsyncWrite + Unpin + Send>;

impl FlowLogWriter {
    /// A writer to `target` in `format`; `node_name` goes on lost-event lines.
    pub fn new(target: FlowLogTarget, format: OutputFormat, node_name: &str) -> Self {
        Self {
            target,
            format,
            node_name: Arc::from(node_name),
            stats: Arc::new(WriterStats::default()),
        }
    }

    /// The writer's counters (shared; readable while it runs).
    pub fn stats(&self) -> Arc<WriterStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until the subscription ends (the store is dropped or closes its
    /// subscribers), then flushes. Fails only if the output cannot be opened
    /// at start.
    pub async fn run(self, mut sub: Subscription) -> Result<(), ExportError> {
        let mut out = Some(self.open().await?);
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        let mut text = String::new();
        loop {
            let Some(first) = sub.recv().await else {
                break;
            };
            let started = Instant::now();
            let mut lines = self.encode(&first, &mut buf, &mut text);
            let mut ended = false;
            let mut n = 1;
            while n < MAX_BATCH && started.elapsed() < MAX_FLUSH_DELAY {
                match sub.try_recv() {
                    Ok(item) => lines += self.encode(&item, &mut buf, &mut text),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        ended = true;
                        break;
                    }
                }
                n += 1;
            }
            self.write_batch(&mut out, &buf, lines).await;
            buf.clear();
            if ended {
                break;
            }
        }
        Ok(())
    }

    async fn open(&self) -> Result<Output, ExportError> {
        match &self.target {
            FlowLogTarget::Stdout => Ok(Box::new(tokio::io::stdout())),
            FlowLogTarget::File(path) => {
                let f = tokio::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .await
                    .map_err(|source| ExportError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Box::new(f))
            }
        }
    }

    /// Appends `item`'s line to `buf`; returns the number of lines added.
    fn encode(&self, item: &Item, buf: &mut Vec<u8>, text: &mut String) -> u64 {
        let res = match (item, self.format) {
            (Item::Flow(flow), OutputFormat::Json) => write_flow_json(flow, buf),
            (Item::Flow(flow), OutputFormat::Compact) => {
                text.clear();
                compact::write_line(flow, text);
                buf.extend_from_slice(text.as_bytes());
                buf.push(b'\n');
                Ok(())
            }
            (Item::Lost(_) | Item::LostUpstream { .. }, format) => {
                let (source, n) = match item {
                    Item::LostUpstream { source, count } => (*source, *count),
                    Item::Lost(n) => (LostEventSource::HubbleRingBuffer, *n),
                    Item::Flow(_) => unreachable!("matched above"),
                };
                self.stats.lost_reported.fetch_add(n, Ordering::Relaxed);
                let lost = LostEvent {
                    source,
                    num_events_lost: n,
                    ..LostEvent::default()
                };
                match format {
                    OutputFormat::Json => {
                        write_lost_json(&lost, &self.node_name, Timestamp::now(), buf)
                    }
                    OutputFormat::Compact => {
                        buf.extend_from_slice(
                            format!("EVENTS LOST: {} {n}\n", lost.source.as_str_name()).as_bytes(),
                        );
                        Ok(())
                    }
                }
            }
        };
        match res {
            Ok(()) => 1,
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "flow log line dropped");
                0
            }
        }
    }

    async fn write_batch(&self, out: &mut Option<Output>, buf: &[u8], lines: u64) {
        if buf.is_empty() {
            return;
        }
        if out.is_none() {
            match self.open().await {
                Ok(o) => *out = Some(o),
                Err(e) => {
                    self.count_error(&e, lines);
                    return;
                }
            }
        }
        let Some(o) = out.as_mut() else { return };
        let res = match o.write_all(buf).await {
            Ok(()) => o.flush().await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                self.stats.lines.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                self.count_error(&e, lines);
                // A file may have been removed or its disk remounted: reopen.
                if matches!(self.target, FlowLogTarget::File(_)) {
                    *out = None;
                }
            }
        }
    }

    fn count_error(&self, e: &dyn std::error::Error, lines: u64) {
        let n = self.stats.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
        // First error, then every 1000th, so a full disk does not flood the log.
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(error = %e, lines_dropped = lines, write_errors = n, "flow log write failed");
        }
    }
}
