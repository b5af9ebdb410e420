//! The running exporter: the flow intake (subscription -> bounded queue),
//! the batching log sender, the periodic metrics sender, retry with
//! exponential backoff, the counters ([`OtelStats`]) and graceful shutdown.
//! Conversion lives in `logs` / `metrics`, the wire in `transport`.
//!
//! Nothing here ever blocks the flow producer: the store's subscription
//! queue drops (and counts) what the intake does not take, and the intake
//! drops (and counts, `queue_full`) what the sender's bounded queue cannot
//! hold while a batch is in flight or being retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use weir_flows::Flow;
use weir_flows::store::{Item, Subscription};

use crate::config::{ConfigError, OtelConfig};
use crate::logs::{flow_to_log_record, logs_request, node_resource};
use crate::metrics::{data_points, metrics_request};
use crate::transport::{Accepted, Transport, TransportError};

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`], with ±25 % jitter.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Largest delay between two attempts (unless the receiver asks for more).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// What `shutdown` waits beyond its deadline for tasks to notice before aborting them.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The configuration is invalid (the message names the option).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OTLP client could not be built.
    #[error("cannot start the OTLP exporter")]
    Transport(#[source] TransportError),
    /// `start` was called outside a tokio runtime.
    #[error("the OTLP exporter must be started inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// Reasons a record is dropped (the `reason` label of
/// `weir_otel_records_dropped_total`).
pub const DROP_REASONS: [&str; 4] = ["queue_full", "retry_exhausted", "rejected", "shutdown"];

#[derive(Debug, Default)]
struct SignalCounters {
    exported: AtomicU64,
    dropped: [AtomicU64; 4],
    requests: AtomicU64,
    failed_batches: AtomicU64,
    retries: AtomicU64,
    queued: AtomicU64,
    subscription_lost: AtomicU64,
}

#[derive(Clone, Copy)]
enum Loss {
    QueueFull = 0,
    RetryExhausted = 1,
    Rejected = 2,
    Shutdown = 3,
}

impl SignalCounters {
    fn drop(&self, why: Loss, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SignalStats {
        let d = |i: usize| self.dropped[i].load(Ordering::Relaxed);
        SignalStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: d(0),
            dropped_retry_exhausted: d(1),
            dropped_rejected: d(2),
            dropped_shutdown: d(3),
            requests: self.requests.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            subscription_lost: self.subscription_lost.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    logs: SignalCounters,
    metrics: SignalCounters,
}

/// Counters of one signal. "Records" are log records for `logs` and data
/// points for `metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Records the receiver accepted (partial-success rejections excluded).
    pub exported: u64,
    /// Records that did not fit the exporter's queue.
    pub dropped_queue_full: u64,
    /// Records whose batch was retried for `max_retry_elapsed` without success.
    pub dropped_retry_exhausted: u64,
    /// Records the receiver refused for good (non-retryable error, or
    /// rejected in a partial success).
    pub dropped_rejected: u64,
    /// Records still queued or unsent when the shutdown deadline passed.
    pub dropped_shutdown: u64,
    /// Export requests sent (retries included).
    pub requests: u64,
    /// Batches that were finally not delivered (each counted once).
    pub failed_batches: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Records waiting in the exporter's queue now (a gauge).
    pub queued: u64,
    /// Flows the store's subscription queue dropped before the exporter saw
    /// them (already counted by the store as the `otel` subscriber's drops;
    /// here for the exporter's own accounting, not in [`Self::dropped_total`]).
    pub subscription_lost: u64,
}

impl SignalStats {
    /// Records dropped by the exporter, every reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_retry_exhausted
            + self.dropped_rejected
            + self.dropped_shutdown
    }

    /// `(reason, count)` in [`DROP_REASONS`] order.
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 4] {
        [
            (DROP_REASONS[0], self.dropped_queue_full),
            (DROP_REASONS[1], self.dropped_retry_exhausted),
            (DROP_REASONS[2], self.dropped_rejected),
            (DROP_REASONS[3], self.dropped_shutdown),
        ]
    }
}

/// Counters of both signals (the `signal` label: `logs`, `metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtelStats {
    /// Flows as log records.
    pub logs: SignalStats,
    /// Agent metrics as data points.
    pub metrics: SignalStats,
}

/// A running exporter. Dropping it without [`OtelHandle::shutdown`] aborts
/// the tasks without flushing.
#[derive(Debug)]
pub struct OtelHandle {
    counters: Arc<Counters>,
    shutdown: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl OtelHandle {
    /// The counters now.
    pub fn stats(&self) -> OtelStats {
        OtelStats {
            logs: self.counters.logs.snapshot(),
            metrics: self.counters.metrics.snapshot(),
        }
    }

    /// Stops taking flows, sends what is queued (and one last metrics
    /// snapshot) and returns the final counters. Whatever is not delivered
    /// within `deadline` is dropped and counted (`shutdown`).
    pub async fn shutdown(mut self, deadline: Duration) -> OtelStats {
        let until = Instant::now() + deadline;
        self.shutdown.send_replace(Some(until));
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_join(tasks);
        if tokio::time::timeout(deadline + ABORT_GRACE, all)
            .await
            .is_err()
        {
            tracing::warn!(?deadline, "OTLP exporter did not stop in time; aborting");
            for a in aborts {
                a.abort();
            }
            // What the aborted tasks held is lost; report it as shutdown drops.
            let queued = self.counters.logs.queued.swap(0, Ordering::Relaxed);
            self.counters.logs.drop(Loss::Shutdown, queued);
        }
        self.stats()
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Drop for OtelHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Starts exporting: flows from `flows` (when `cfg.flows`) as log records and
/// `registry` (when `cfg.metrics`) every `cfg.metrics_interval`. Must be
/// called inside a tokio runtime. A signal that is enabled but has no source
/// is skipped with a warning.
pub fn start(
    cfg: &OtelConfig,
    node_name: &str,
    flows: Option<Subscription>,
    registry: Option<prometheus::Registry>,
) -> Result<OtelHandle, OtelError> {
    start_with_registries(cfg, node_name, flows, registry.into_iter().collect())
}

/// As [`start`], with the metrics of several registries sent together (the
/// agent keeps the Hubble families in a registry of their own).
pub fn start_with_registries(
    cfg: &OtelConfig,
    node_name: &str,
    flows: Option<Subscription>,
    registries: Vec<prometheus::Registry>,
) -> Result<OtelHandle, OtelError> {
    let registry = (!registries.is_empty()).then_some(registries);
    let endpoint = cfg.validate()?;
    tokio::runtime::Handle::try_current().map_err(OtelError::NoRuntime)?;
    let transport = Transport::new(cfg, &endpoint).map_err(OtelError::Transport)?;
    let resource = Arc::new(node_resource(node_name));
    let counters = Arc::new(Counters::default());
    let (shutdown, shutdown_rx) = watch::channel(None);
    let mut tasks = Vec::new();

    match (cfg.flows, flows) {
        (true, Some(sub)) => {
            let (tx, rx) = mpsc::channel(cfg.queue);
            tasks.push(tokio::spawn(intake(
                sub,
                tx,
                Arc::clone(&counters),
                shutdown_rx.clone(),
            )));
            tasks.push(tokio::spawn(
                LogSender {
                    cfg: cfg.clone(),
                    transport: transport.clone(),
                    resource: Arc::clone(&resource),
                    counters: Arc::clone(&counters),
                    shutdown: shutdown_rx.clone(),
                }
                .run(rx),
            ));
        }
        (true, None) => tracing::warn!("otel.flows is on but no flow subscription was given"),
        _ => {}
    }
    match (cfg.metrics, registry) {
        (true, Some(registry)) => tasks.push(tokio::spawn(metrics_loop(
            cfg.clone(),
            transport,
            registry,
            resource,
            Arc::clone(&counters),
            shutdown_rx,
        ))),
        (true, None) => tracing::warn!("otel.metrics is on but no registry was given"),
        _ => {}
    }
    tracing::info!(
        endpoint = %cfg.endpoint,
        protocol = cfg.protocol.as_str(),
        "OTLP exporter started"
    );
    Ok(OtelHandle {
        counters,
        shutdown,
        tasks,
    })
}

fn take_item(item: Item, tx: &mpsc::Sender<Arc<Flow>>, counters: &Counters) {
    match item {
        Item::Flow(f) => match tx.try_send(f) {
            Ok(()) => {
                counters.logs.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => counters.logs.drop(Loss::QueueFull, 1),
        },
        Item::Lost(n) => {
            counters
                .logs
                .subscription_lost
                .fetch_add(n, Ordering::Relaxed);
        }
        // Lost before becoming flows: the agent's metrics count those.
        Item::LostUpstream { .. } => {}
    }
}

/// Moves flows from the store's subscription into the bounded queue, never
/// waiting for the sender.
async fn intake(
    mut sub: Subscription,
    tx: mpsc::Sender<Arc<Flow>>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(Option::is_some) => break,
            item = sub.recv() => match item {
                Some(item) => take_item(item, &tx, &counters),
                None => break,
            },
        }
    }
    // Whatever the store had already queued for us is part of the flush.
    while let Ok(item) = sub.try_recv() {
        take_item(item, &tx, &counters);
    }
}

struct LogSender {
    cfg: OtelConfig,
    transport: Transport,
    resource: Arc<Resource>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<Option<Instant>>,
}

/// Batches converted and sent at once: the next batch is encoded while
/// earlier ones are on the wire (or waiting to retry); with all of them
/// busy the sender stops taking from the queue, which then fills and drops.
const MAX_IN_FLIGHT: usize = 4;

impl LogSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Flow>>) {
        let batch_size = self.cfg.batch_size;
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut sends = JoinSet::new();
        let mut closed = false;
        let this = Arc::new(SendCtx {
            cfg: self.cfg.clone(),
            transport: self.transport.clone(),
            resource: Arc::clone(&self.resource),
            counters: Arc::clone(&self.counters),
            shutdown: self.shutdown.clone(),
        });
        while !closed {
            let mut batch: Vec<Arc<Flow>> = Vec::with_capacity(batch_size);
            if rx.recv_many(&mut batch, batch_size).await == 0 {
                break;
            }
            let fill_until = tokio::time::Instant::now() + self.cfg.batch_delay;
            while batch.len() < batch_size {
                let stopping = self.shutdown.borrow().is_some();
                let want = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, want) => if n == 0 { closed = true; break },
                    _ = tokio::time::sleep_until(fill_until), if !stopping => break,
                    _ = self.shutdown.wait_for(Option::is_some), if !stopping => {}
                    // Stopping: take only what is already queued, never wait.
                    _ = std::future::ready(()), if stopping => break,
                }
            }
            while sends.try_join_next().is_some() {}
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                break;
            };
            let n = batch.len() as u64;
            self.counters.logs.queued.fetch_sub(n, Ordering::Relaxed);
            if self.past_deadline() {
                self.counters.logs.drop(Loss::Shutdown, n);
                self.counters
                    .logs
                    .failed_batches
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ctx = Arc::clone(&this);
            sends.spawn(async move {
                ctx.send(batch).await;
                drop(permit);
            });
        }
        while sends.join_next().await.is_some() {}
    }

    fn past_deadline(&self) -> bool {
        self.shutdown.borrow().is_some_and(|d| Instant::now() >= d)
    }
}

/// What one batch's send task needs.
struct SendCtx {
    cfg: OtelConfig,
    transport: Transport,
    resource: Arc<Resource>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<Option<Instant>>,
}

impl SendCtx {
    async fn send(&self, batch: Vec<Arc<Flow>>) {
        let n = batch.len() as u64;
        let now = unix_nanos_now();
        let records = batch.iter().map(|f| flow_to_log_record(f, now)).collect();
        // The flows are released before the wait on the network.
        drop(batch);
        // Encoded once: retries resend the same bytes.
        let body = Bytes::from(logs_request(&self.resource, records).encode_to_vec());
        let transport = &self.transport;
        let outcome = send_with_retry(
            &self.cfg,
            &self.counters.logs,
            &self.shutdown,
            self.cfg.max_retry_elapsed,
            |timeout| transport.export_logs(body.clone(), timeout),
        )
        .await;
        account(&self.counters.logs, outcome, n, "logs");
    }
}

/// The end of one batch's delivery.
enum Outcome {
    Sent(Accepted),
    GaveUp(Loss, String),
}

fn account(c: &SignalCounters, outcome: Outcome, n: u64, signal: &'static str) {
    match outcome {
        Outcome::Sent(a) => {
            let rejected = a.rejected.min(n);
            c.exported.fetch_add(n - rejected, Ordering::Relaxed);
            if rejected > 0 {
                tracing::warn!(signal, rejected, "OTLP receiver rejected part of a batch");
                c.drop(Loss::Rejected, rejected);
            }
        }
        Outcome::GaveUp(why, reason) => {
            tracing::warn!(signal, records = n, %reason, "OTLP batch dropped");
            c.drop(why, n);
            c.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Cheap jitter without a random number crate: the low bits of the clock.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    // 0.75 ..= 1.25
    let factor = 0.75 + f64::from(nanos % 1001) / 2000.0;
    d.mul_f64(factor)
}

/// Sends with `attempt` until accepted, refused for good, `max_elapsed`
/// passes, or the shutdown deadline passes.
async fn send_with_retry<F, Fut>(
    cfg: &OtelConfig,
    c: &SignalCounters,
    shutdown: &watch::Receiver<Option<Instant>>,
    max_elapsed: Duration,
    mut attempt: F,
) -> Outcome
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Accepted, TransportError>>,
{
    let start = Instant::now();
    let give_up = start + max_elapsed;
    let mut backoff = INITIAL_BACKOFF;
    let mut first = true;
    loop {
        let stop_at = *shutdown.borrow();
        let mut timeout = cfg.timeout;
        if let Some(d) = stop_at {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::GaveUp(Loss::Shutdown, "shutdown deadline passed".into());
            }
            timeout = timeout.min(left);
        }
        if !first {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let err = match attempt(timeout).await {
            Ok(a) => return Outcome::Sent(a),
            Err(e @ TransportError::Rejected { .. }) => {
                return Outcome::GaveUp(Loss::Rejected, e.to_string());
            }
            Err(e) => e,
        };
        let wait = match &err {
            TransportError::Retryable {
                retry_after: Some(d),
                ..
            } => *d,
            _ => jitter(backoff),
        };
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let next = Instant::now() + wait;
        if next > give_up {
            return Outcome::GaveUp(
                Loss::RetryExhausted,
                format!("{err}; gave up after {:?}", start.elapsed()),
            );
        }
        if let Some(d) = *shutdown.borrow()
            && next > d
        {
            return Outcome::GaveUp(Loss::Shutdown, format!("{err}; shutting down"));
        }
        tracing::debug!(%err, ?wait, "OTLP export failed; retrying");
        let mut sd = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A shutdown that starts during the wait re-checks its deadline.
            _ = sd.wait_for(Option::is_some), if stop_at.is_none() => {}
        }
    }
}

async fn metrics_loop(
    cfg: OtelConfig,
    transport: Transport,
    registry: Vec<prometheus::Registry>,
    resource: Arc<Resource>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    let start = unix_nanos_now();
    let mut ticker = tokio::time::interval(cfg.metrics_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the immediate first tick: nothing to report yet
    // A snapshot older than one interval is superseded by the next one,
    // which carries the same cumulative values and more.
    let max_elapsed = cfg.max_retry_elapsed.min(cfg.metrics_interval);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.wait_for(Option::is_some) => true,
        };
        let families: Vec<_> = registry.iter().flat_map(|r| r.gather()).collect();
        let req = metrics_request(&resource, &families, start, unix_nanos_now());
        let n: u64 = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| data_points(m) as u64)
            .sum();
        let body = Bytes::from(req.encode_to_vec());
        let outcome = send_with_retry(&cfg, &counters.metrics, &shutdown, max_elapsed, |t| {
            transport.export_metrics(body.clone(), t)
        })
        .await;
        account(&counters.metrics, outcome, n, "metrics");
        if last {
            break;
        }
    }
}
