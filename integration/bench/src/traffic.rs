//! A UDP flood between two network namespaces: one sender thread inside the
//! source namespace (sendmmsg, optionally paced to a packet rate) and one
//! receiver thread inside the destination namespace (recvmmsg), each counting
//! into atomics the caller samples. Owns those two threads and their sockets;
//! dropping a [`Flood`] stops and joins both. Every loop ends at the stop
//! flag or at the flood's deadline, whichever comes first.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::ready;
use crate::sockopt::setsockopt;

/// Messages per sendmmsg / recvmmsg call.
const BATCH: usize = 32;
/// Receive buffer asked for (SO_RCVBUFFORCE, root only; falls back to SO_RCVBUF).
const RCVBUF_BYTES: libc::c_int = 32 << 20;
/// How long a blocked receive waits before re-checking the stop flag.
const RECV_POLL: Duration = Duration::from_millis(50);

/// What to flood.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    /// Namespace the sender runs in.
    pub sender_netns: PathBuf,
    /// Namespace the receiver runs in.
    pub receiver_netns: PathBuf,
    /// Where the receiver binds (`0.0.0.0:port`) and the sender sends.
    pub dst: SocketAddr,
    /// UDP payload bytes per packet.
    pub payload: usize,
    /// Packets per second to pace the senders to (together); None: as fast
    /// as they go.
    pub rate_pps: Option<u64>,
    /// Sender threads (each its own socket, so its own flow), at least 1.
    pub senders: usize,
    /// Whether the receiver reads. When false it only keeps the port bound
    /// (so no ICMP port-unreachable comes back): datagrams fill its buffer
    /// and the kernel drops the rest at the socket, which spares the CPU
    /// the copies to user space.
    pub read: bool,
    /// Hard limit on the flood's life, whatever the caller does.
    pub max_duration: Duration,
}

/// Counters shared with the threads.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
}

/// A running flood. Dropping it stops and joins its threads.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    senders: Vec<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

/// One sample of the counters.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
}

impl Sample {
    /// Received packets per second between `earlier` and `self`.
    pub fn received_pps_since(&self, earlier: &Sample) -> f64 {
        per_second(
            self.received.saturating_sub(earlier.received),
            self.at - earlier.at,
        )
    }

    /// Sent packets per second between `earlier` and `self`.
    pub fn sent_pps_since(&self, earlier: &Sample) -> f64 {
        per_second(self.sent.saturating_sub(earlier.sent), self.at - earlier.at)
    }
}

pub fn per_second(count: u64, over: Duration) -> f64 {
    let s = over.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

impl Flood {
    /// Starts the receiver, waits until it is bound, then starts the sender.
    pub fn start(cfg: &FloodConfig) -> Result<Flood> {
        let mut flood = Flood {
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            senders: Vec::new(),
            receiver: None,
        };
        let deadline = Instant::now() + cfg.max_duration;

        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        {
            let (ns, port) = (cfg.receiver_netns.clone(), cfg.dst.port());
            let (stop, counters, ready) =
                (flood.stop.clone(), flood.counters.clone(), ready_tx.clone());
            let (ipv6, read) = (cfg.dst.is_ipv6(), cfg.read);
            flood.receiver = Some(
                std::thread::Builder::new()
                    .name("wbench-recv".into())
                    .spawn(move || {
                        receiver(&ns, port, ipv6, read, &stop, &counters, deadline, &ready)
                    })
                    .context("spawning the receiver thread")?,
            );
        }
        ready::wait(&ready_rx, "flood receiver")?;
        let senders = cfg.senders.max(1);
        for _ in 0..senders {
            let mut cfg = cfg.clone();
            cfg.rate_pps = cfg.rate_pps.map(|r| r.div_ceil(senders as u64));
            let (stop, counters, ready) =
                (flood.stop.clone(), flood.counters.clone(), ready_tx.clone());
            flood.senders.push(
                std::thread::Builder::new()
                    .name("wbench-send".into())
                    .spawn(move || sender(&cfg, &stop, &counters, deadline, &ready))
                    .context("spawning a sender thread")?,
            );
            ready::wait(&ready_rx, "flood sender")?;
        }
        Ok(flood)
    }

    /// The counters now.
    pub fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            sent: self.counters.sent.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
            send_errors: self.counters.send_errors.load(Ordering::Relaxed),
        }
    }

    /// Whether all threads still run (they end at the deadline or on error).
    pub fn running(&self) -> bool {
        self.senders
            .iter()
            .chain(self.receiver.as_ref())
            .all(|t| !t.is_finished())
    }

    /// Stops the senders first (so in-flight packets still arrive), then the
    /// receiver; returns the final counters, timed when the senders stopped.
    pub fn stop(mut self) -> Sample {
        let stopped = self.halt();
        Sample {
            at: stopped,
            ..self.sample()
        }
    }

    /// Stops everything; returns when the senders had stopped.
    fn halt(&mut self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.senders.drain(..) {
            let _ = t.join();
        }
        let stopped = Instant::now();
        if let Some(t) = self.receiver.take() {
            // Let what is in flight arrive before the receiver stops counting.
            std::thread::sleep(Duration::from_millis(100));
            let _ = t.join();
        }
        stopped
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "a thread body; its arguments are the flood's shared parts"
)]
fn receiver(
    ns: &std::path::Path,
    port: u16,
    ipv6: bool,
    read: bool,
    stop: &AtomicBool,
    counters: &Counters,
    deadline: Instant,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let Some(sock) = ready::report(open_receiver(ns, port, ipv6), ready) else {
        return;
    };
    if !read {
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(RECV_POLL);
        }
        return;
    }
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid starting value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // SAFETY: `msgs` holds BATCH headers whose iovecs point into `bufs`,
        // all alive and unaliased for the call. MSG_WAITFORONE blocks (up to
        // SO_RCVTIMEO) for the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn open_receiver(ns: &std::path::Path, port: u16, ipv6: bool) -> Result<UdpSocket> {
    weir_integration::netns::enter(ns)?;
    let bind: SocketAddr = if ipv6 {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    sock.set_read_timeout(Some(RECV_POLL))?;
    let fd = sock.as_raw_fd();
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF_BYTES).is_err() {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF_BYTES).context("SO_RCVBUF")?;
    }
    Ok(sock)
}

fn sender(
    cfg: &FloodConfig,
    stop: &AtomicBool,
    counters: &Counters,
    deadline: Instant,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let Some(sock) = ready::report(open_sender(cfg), ready) else {
        return;
    };
    let mut payload = vec![0u8; cfg.payload.max(1)];
    let tag = &b"wbench"[..payload.len().min(6)];
    payload[..tag.len()].copy_from_slice(tag);
    let mut iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid starting value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(rate) = cfg.rate_pps.filter(|r| *r > 0) {
            // Absolute schedule: being late once does not lower the average.
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
        }
        // SAFETY: every header's iovec points at `payload`, alive for the call;
        // the socket is connected, so no address is given.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += n as u64;
            counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
            // ENOBUFS and friends: give the receiving side a moment.
            std::thread::yield_now();
        }
    }
}

fn open_sender(cfg: &FloodConfig) -> Result<UdpSocket> {
    weir_integration::netns::enter(&cfg.sender_netns)?;
    let bind: SocketAddr = if cfg.dst.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).context("bind the sender")?;
    sock.connect(cfg.dst)
        .with_context(|| format!("connect to {}", cfg.dst))?;
    // A first datagram proves the route before the caller starts counting.
    sock.send(b"wbench-hello")
        .map_err(|e| anyhow!("first datagram to {}: {e}", cfg.dst))?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::privileged;
    use crate::topo::{self, Pair};

    #[test]
    fn a_paced_flood_crosses_the_pair_and_nothing_is_left() {
        if !privileged("network namespaces") {
            return;
        }
        let pair = Pair::create().expect("creating the namespace pair");
        let (a, b) = (pair.a.clone(), pair.b.clone());
        let flood = Flood::start(&FloodConfig {
            sender_netns: a.clone(),
            receiver_netns: b.clone(),
            dst: format!("{}:9000", topo::ADDR_B).parse().expect("address"),
            payload: 18,
            rate_pps: Some(20_000),
            senders: 2,
            read: true,
            max_duration: Duration::from_secs(10),
        })
        .expect("starting the flood");
        let s0 = flood.sample();
        std::thread::sleep(Duration::from_millis(500));
        let s1 = flood.stop();
        let sent = s1.sent - s0.sent;
        assert!(sent > 5_000, "paced at 20k pps, 0.5 s sent only {sent}");
        assert!(
            sent < 15_000,
            "pacing did not hold: {sent} sent in ~0.5 s at 20k pps"
        );
        assert!(
            s1.received + 100 >= s1.sent,
            "a paced flood on an idle pair is received: sent {}, received {}",
            s1.sent,
            s1.received
        );
        drop(pair);
        assert!(!a.exists() && !b.exists(), "namespaces removed on drop");
    }
}
