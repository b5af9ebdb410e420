//! A read-only view of the ring buffer's consumer and producer positions, so
//! the datapath can report how full the ring is while the reader (which owns
//! aya's `RingBuf`) lives in another task. Reads only; never moves a position.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    ptr::{self, NonNull},
};

use crate::datapath::page_size;

/// The first two pages of a BPF ring-buffer map's mmap layout: page 0 holds
/// the consumer position, page 1 the producer position. The kernel allows
/// read-only mappings of any part of the ring, independent of aya's own.
pub(crate) struct RingFill {
    base: NonNull<u8>,
    page: usize,
}

// SAFETY: the mapping is read-only shared memory only read; it
// is valid until `drop` unmaps it, whichever thread owns the struct.
unsafe impl Send for RingFill {}
// SAFETY: as above; `pending_bytes` only reads.
unsafe impl Sync for RingFill {}

impl RingFill {
    pub(crate) fn new(ring: &impl AsFd) -> io::Result<Self> {
        let page = page_size();
        // SAFETY: mapping a valid ring-buffer fd read-only and shared; the
        // kernel keeps the pages alive for the mapping's lifetime, even after
        // the fd closes.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { base, page })
    }

    /// Producer position minus consumer position, in bytes (see
    /// `Counters::ring_pending_bytes` for what that includes).
    pub(crate) fn pending_bytes(&self) -> u64 {
        // SAFETY: both positions are 8-byte aligned u64s at the start of
        // their page inside the live mapping. The kernel and the reader update
        // them concurrently; an aligned 8-byte volatile read is a single load
        // on 64-bit targets, and a stale value is acceptable for a gauge.
        let (consumer, producer) = unsafe {
            (
                ptr::read_volatile(self.base.as_ptr().cast::<u64>()),
                ptr::read_volatile(self.base.as_ptr().add(self.page).cast::<u64>()),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`, once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), 2 * self.page) };
    }
}
