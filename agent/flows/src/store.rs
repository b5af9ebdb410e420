//! The flow store: the last N flows in memory (Hubble's ring) and the fan-out
//! of every new flow to named consumers (flow log, API streams, ...).
//!
//! Each consumer has its own bounded queue. `push` never waits for a
//! consumer: a flow that does not fit a consumer's queue is dropped for that
//! consumer only, counted, and announced to it as an [`Item::Lost`] in the
//! place where the gap is. Owns no I/O and no decoding.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ringbuf::HeapRb;
use ringbuf::traits::{Observer, RingBuffer};
use tokio::sync::Notify;

use crate::flow::{Flow, LostEventSource};

/// Ring capacity when none is configured (Hubble's default).
pub const DEFAULT_CAPACITY: usize = 4095;
/// Largest ring capacity accepted (Hubble's limit).
pub const MAX_CAPACITY: usize = 65_535;

/// Errors of the flow store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The ring capacity is 0 or larger than [`MAX_CAPACITY`].
    #[error("flow ring capacity {requested} is out of range (1..={MAX_CAPACITY})")]
    InvalidCapacity {
        /// The capacity asked for.
        requested: usize,
    },
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// The next flow.
    Flow(Arc<Flow>),
    /// This many flows were dropped here because the subscriber's queue was
    /// full (Hubble reports this as a `HUBBLE_RING_BUFFER` lost event).
    Lost(u64),
    /// Events lost before they became flows (kernel ring buffer, agent
    /// queue), announced to every subscriber so no consumer misses a gap.
    LostUpstream {
        /// Where they were lost.
        source: LostEventSource,
        /// How many.
        count: u64,
    },
}

/// A snapshot of one subscriber queue, or of every live queue sharing a
/// name (see [`FlowStore::subscriber_stats`]), for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// The name given to [`FlowStore::subscribe`].
    pub name: String,
    /// Flows waiting in the queue(s).
    pub len: usize,
    /// The queue's bound (summed over the live queues of the name).
    pub capacity: usize,
    /// Flows dropped: for one subscription, since it subscribed; for a name,
    /// since the store was created, over every subscription ever made under
    /// that name (so it never goes down when a subscriber leaves).
    pub dropped: u64,
    /// Live subscriptions (1 for one subscription's own stats).
    pub subscribers: usize,
}

/// The flow ring plus subscribers. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct FlowStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    ring: Mutex<HeapRb<Arc<Flow>>>,
    capacity: usize,
    seen: AtomicU64,
    subscribers: RwLock<Vec<Arc<SubQueue>>>,
    /// Drops per subscriber name, cumulative across subscriptions.
    dropped_by_name: Mutex<std::collections::HashMap<String, Arc<AtomicU64>>>,
}

impl std::fmt::Debug for StoreInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreInner")
            .field("capacity", &self.capacity)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // The last handle is gone: wake every subscriber so it drains and ends.
        for q in self
            .subscribers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            q.close();
        }
    }
}

impl Default for FlowStore {
    fn default() -> Self {
        Self::build(DEFAULT_CAPACITY)
    }
}

impl FlowStore {
    /// A store keeping the last [`DEFAULT_CAPACITY`] flows.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store keeping the last `capacity` flows (1..=65 535).
    pub fn with_capacity(capacity: usize) -> Result<Self, StoreError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(StoreError::InvalidCapacity {
                requested: capacity,
            });
        }
        Ok(Self::build(capacity))
    }

    fn build(capacity: usize) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                ring: Mutex::new(HeapRb::new(capacity)),
                capacity,
                seen: AtomicU64::new(0),
                subscribers: RwLock::new(Vec::new()),
                dropped_by_name: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// Stores `flow`, overwriting the oldest when full, and offers it to every
    /// subscriber without waiting.
    pub fn push(&self, flow: Flow) -> Arc<Flow> {
        let flow = Arc::new(flow);
        let evicted = RingBuffer::push_overwrite(&mut *lock(&self.inner.ring), Arc::clone(&flow));
        // Freed outside the lock: the last reference may free endpoints too.
        drop(evicted);
        self.inner.seen.fetch_add(1, Ordering::Relaxed);

        let mut gone = false;
        {
            let subs = self
                .inner
                .subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for q in subs.iter() {
                gone |= !q.offer(&flow);
            }
        }
        if gone {
            self.inner
                .subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|q| !q.receiver_gone.load(Ordering::Relaxed));
        }
        flow
    }

    /// Tells every subscriber that `count` events were lost at `source`
    /// before they became flows. Markers do not count against a queue's
    /// bound; a marker directly behind another of the same source is merged
    /// into it, so a stalled subscriber holds one marker per source.
    pub fn report_lost(&self, source: LostEventSource, count: u64) {
        if count == 0 {
            return;
        }
        let subs = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for q in subs.iter() {
            q.mark_lost(source, count);
        }
    }

    /// The last `n` flows (fewer if fewer are stored), oldest first.
    pub fn last(&self, n: usize) -> Vec<Arc<Flow>> {
        let mut ring = lock(&self.inner.ring);
        let len = ring.occupied_len();
        RingBuffer::iter(&mut *ring)
            .skip(len.saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Flows pushed since the store was created.
    pub fn seen(&self) -> u64 {
        self.inner.seen.load(Ordering::Relaxed)
    }

    /// Flows currently stored.
    pub fn len(&self) -> usize {
        lock(&self.inner.ring).occupied_len()
    }

    /// Whether no flow is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// A new consumer receiving every flow pushed from now on, through a
    /// queue of at most `capacity` flows (at least 1).
    /// Several subscriptions may share a name (e.g. every flow API stream);
    /// their statistics are reported together.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscription {
        let name_dropped = Arc::clone(
            lock(&self.inner.dropped_by_name)
                .entry(name.to_owned())
                .or_default(),
        );
        let queue = Arc::new(SubQueue {
            name: name.to_owned(),
            capacity: capacity.max(1),
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            name_dropped,
            receiver_gone: AtomicBool::new(false),
        });
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&queue));
        Subscription { queue }
    }

    /// Queue statistics per subscriber name: every name ever subscribed,
    /// with the live queues of that name summed (0 of them when all left).
    pub fn subscriber_stats(&self) -> Vec<QueueStats> {
        let mut out: Vec<QueueStats> = lock(&self.inner.dropped_by_name)
            .iter()
            .map(|(name, dropped)| QueueStats {
                name: name.clone(),
                len: 0,
                capacity: 0,
                dropped: dropped.load(Ordering::Relaxed),
                subscribers: 0,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let subs = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for q in subs
            .iter()
            .filter(|q| !q.receiver_gone.load(Ordering::Relaxed))
        {
            if let Ok(i) = out.binary_search_by(|s| s.name.as_str().cmp(&q.name)) {
                let s = &mut out[i];
                s.len += lock(&q.state).flows;
                s.capacity += q.capacity;
                s.subscribers += 1;
            }
        }
        out
    }

    /// Ends every subscription: each receives what is queued, then `None`.
    /// Later subscriptions work normally.
    pub fn close_subscribers(&self) {
        let subs = std::mem::take(
            &mut *self
                .inner
                .subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for q in subs {
            q.close();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data inconsistent
    // (single push/pop operations), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct SubQueue {
    name: String,
    capacity: usize,
    state: Mutex<QueueState>,
    notify: Notify,
    dropped: AtomicU64,
    /// The per-name total in the store this queue also counts into.
    name_dropped: Arc<AtomicU64>,
    receiver_gone: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// Flows in `items` (`Lost` markers do not count against the bound).
    flows: usize,
    /// Drops not yet announced with a `Lost` marker.
    pending_lost: u64,
    closed: bool,
}

impl SubQueue {
    /// Enqueues or drops `flow`; returns false when the receiver is gone.
    fn offer(&self, flow: &Arc<Flow>) -> bool {
        if self.receiver_gone.load(Ordering::Relaxed) {
            return false;
        }
        let was_empty;
        {
            let mut st = lock(&self.state);
            if st.closed {
                return true;
            }
            if st.flows >= self.capacity {
                st.pending_lost += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.name_dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            was_empty = st.items.is_empty();
            if st.pending_lost > 0 {
                let n = std::mem::take(&mut st.pending_lost);
                st.items.push_back(Item::Lost(n));
            }
            st.items.push_back(Item::Flow(Arc::clone(flow)));
            st.flows += 1;
        }
        // The receiver only waits after finding the queue empty, so only that
        // transition needs a wake-up (Notify keeps a permit if it is not yet
        // waiting).
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    fn mark_lost(&self, source: LostEventSource, count: u64) {
        let was_empty;
        {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            was_empty = st.items.is_empty();
            // Only a marker at the very back may absorb this one: merging
            // into an older marker would report the loss before flows that
            // came ahead of it.
            let merged = match st.items.back_mut() {
                Some(Item::LostUpstream {
                    source: s,
                    count: c,
                }) if *s == source => Some(c),
                _ => None,
            };
            match merged {
                Some(c) => *c += count,
                None => st.items.push_back(Item::LostUpstream { source, count }),
            }
        }
        if was_empty {
            self.notify.notify_one();
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.notify.notify_one();
    }

    fn pop(&self) -> Result<Item, TryRecvError> {
        let mut st = lock(&self.state);
        if let Some(item) = st.items.pop_front() {
            if matches!(item, Item::Flow(_)) {
                st.flows -= 1;
            }
            return Ok(item);
        }
        if st.pending_lost > 0 {
            return Ok(Item::Lost(std::mem::take(&mut st.pending_lost)));
        }
        if st.closed {
            Err(TryRecvError::Closed)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            len: lock(&self.state).flows,
            capacity: self.capacity,
            dropped: self.dropped.load(Ordering::Relaxed),
            subscribers: 1,
        }
    }
}

/// Why [`Subscription::try_recv`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing queued right now.
    #[error("subscription queue is empty")]
    Empty,
    /// The store was dropped or closed its subscribers, and the queue is drained.
    #[error("flow store closed")]
    Closed,
}

/// One consumer's end of the fan-out. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<SubQueue>,
}

impl Subscription {
    /// The next item, waiting if none is queued; `None` once the store is
    /// gone (or closed its subscribers) and the queue is drained.
    pub async fn recv(&mut self) -> Option<Item> {
        loop {
            match self.queue.pop() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Closed) => return None,
                Err(TryRecvError::Empty) => self.queue.notify.notified().await,
            }
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Item, TryRecvError> {
        self.queue.pop()
    }

    /// The name given at subscription.
    pub fn name(&self) -> &str {
        &self.queue.name
    }

    /// This queue's length, bound and drop count.
    pub fn stats(&self) -> QueueStats {
        self.queue.stats()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Relaxed);
    }
}
