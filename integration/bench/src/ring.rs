//! The event-ring drain the datapath figures run beside their traffic: a
//! task reading every batch and counting the events, so the programs never
//! find the ring full and the figure can report how many events it read.
//! Owns that task; the [`Drain`] guard aborts it when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use weir_datapath::Datapath;

/// Events read per batch.
const BATCH: usize = 4096;

/// Aborts the ring reader task when dropped.
pub struct Drain(tokio::task::JoinHandle<()>);

impl Drop for Drain {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes `dp`'s event reader and drains it in a task on the current tokio
/// runtime, adding each batch's event count to `count`.
pub fn drain(dp: &mut Datapath, count: Arc<AtomicU64>) -> Result<Drain> {
    let mut reader = dp.take_events().context("taking the event reader")?;
    Ok(Drain(tokio::spawn(async move {
        // Ends with an error only if the ring's fd breaks; the abort ends it otherwise.
        while let Ok(n) = reader.next_batch(BATCH, |_| {}).await {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    })))
}
