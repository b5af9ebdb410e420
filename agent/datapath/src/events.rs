//! The asynchronous ring-buffer reader. Owns the `EVENTS` ring buffer once
//! the datapath hands it out, and turns its records into
//! [`FlowEvent`]s. It does not interpret events: that is the flows crate's job.

use std::{io, mem::size_of, ptr};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;
use weir_common::FlowEvent;

/// Reads flow events from the kernel's ring buffer, waking on epoll readiness.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records whose size is not a `FlowEvent` (a mismatched object): skipped.
    malformed: u64,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl EventReader {
    /// Registers the ring buffer with the current tokio reactor.
    pub(crate) fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns the map's fd (through MapData) and keeps it
        // open and unchanged until the AsyncFd, which owns the RingBuf, drops.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Waits until the ring has data, then hands up to `max` events to `f`;
    /// returns how many. Returns `Ok(0)` only when `max` is 0.
    ///
    /// Cancel safe: an event is consumed only after `f` has seen it, and no
    /// await point lies between taking an event and handing it over.
    pub async fn next_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(&FlowEvent),
    ) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut handed = 0;
            let mut drained = false;
            while handed < max {
                let Some(item) = ring.next() else {
                    drained = true;
                    break;
                };
                match decode(&item) {
                    Some(event) => {
                        f(&event);
                        handed += 1;
                    }
                    None => {
                        self.malformed += 1;
                        if self.malformed.is_power_of_two() {
                            warn!(
                                len = item.len(),
                                total = self.malformed,
                                "skipping ring record of unexpected size"
                            );
                        }
                    }
                }
            }
            if drained {
                // Tokio only clears readiness if no new wake-up arrived since
                // this guard was taken, so a record committed after the last
                // `next()` is not missed.
                guard.clear_ready();
            }
            if handed > 0 {
                return Ok(handed);
            }
        }
    }

    /// Records skipped because their size did not match [`FlowEvent`].
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// Decodes one ring record; `None` when its size is not a `FlowEvent`'s.
pub(crate) fn decode(record: &[u8]) -> Option<FlowEvent> {
    if record.len() != size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the length matches, FlowEvent is repr(C) plain integers (any
    // bit pattern is valid), and read_unaligned has no alignment requirement.
    Some(unsafe { ptr::read_unaligned(record.as_ptr().cast::<FlowEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_takes_exactly_one_record() {
        let event = FlowEvent {
            ts_ns: 7,
            src_port: 80,
            dst_port: 4242,
            tcp_flags_seen: [2, 18],
            ..FlowEvent::default()
        };
        // SAFETY: FlowEvent is repr(C) plain integers without padding.
        let bytes: [u8; size_of::<FlowEvent>()] = unsafe { std::mem::transmute(event) };
        assert_eq!(decode(&bytes), Some(event));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        // Unaligned input is fine.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode(&shifted[1..]), Some(event));
    }
}
