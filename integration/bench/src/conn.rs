//! New TCP connections between two network namespaces, as fast as they go:
//! one accepting server thread inside the server namespace and client threads
//! inside the client namespace, each connecting, then closing with an RST
//! (`SO_LINGER` 0 on both sides, so no TIME_WAIT anywhere and every
//! connection has a fresh source port: a new conntrack entry, so a new
//! policy lookup). Also [`connect_once`], the single probe the latency
//! figure polls with. Owns those threads and their sockets; dropping a
//! [`Churn`] stops and joins them. Every loop ends at the stop flag or at the
//! churn's deadline, whichever comes first.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::ready;
use crate::sockopt::setsockopt;

/// Accept queue length asked for; `net.core.somaxconn` of the server's
/// namespace (the bench's own) is raised to it.
const BACKLOG: libc::c_int = 65_535;
/// How long a blocked accept waits before re-checking the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// What to churn.
#[derive(Clone, Debug)]
pub struct ChurnConfig {
    /// Namespace the clients run in.
    pub client_netns: PathBuf,
    /// Namespace the server runs in.
    pub server_netns: PathBuf,
    /// Where the server listens (`0.0.0.0:port`) and the clients connect.
    pub dst: SocketAddr,
    /// Client threads, at least 1.
    pub clients: usize,
    /// A connect that takes longer counts as failed.
    pub connect_timeout: Duration,
    /// Hard limit on the churn's life, whatever the caller does.
    pub max_duration: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    accepted: AtomicU64,
}

/// Running connection churn. Dropping it stops and joins its threads.
#[derive(Debug)]
pub struct Churn {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    clients: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

/// One sample of the counters.
#[derive(Clone, Copy, Debug)]
pub struct ChurnSample {
    pub at: Instant,
    /// Connects that completed.
    pub connected: u64,
    /// Connects that failed or timed out.
    pub failed: u64,
    /// Connections the server accepted.
    pub accepted: u64,
}

impl ChurnSample {
    /// Completed connections per second between `earlier` and `self`.
    pub fn rate_since(&self, earlier: &ChurnSample) -> f64 {
        crate::traffic::per_second(
            self.connected.saturating_sub(earlier.connected),
            self.at - earlier.at,
        )
    }
}

impl Churn {
    /// Starts the server, waits until it listens, then starts the clients.
    pub fn start(cfg: &ChurnConfig) -> Result<Churn> {
        let mut churn = Churn {
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            clients: Vec::new(),
            server: None,
        };
        let deadline = Instant::now() + cfg.max_duration;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        {
            let (ns, port) = (cfg.server_netns.clone(), cfg.dst.port());
            let (stop, counters, ready) =
                (churn.stop.clone(), churn.counters.clone(), ready_tx.clone());
            churn.server = Some(
                std::thread::Builder::new()
                    .name("wbench-accept".into())
                    .spawn(move || server(&ns, port, &stop, &counters, deadline, &ready))
                    .context("spawning the server thread")?,
            );
        }
        ready::wait(&ready_rx, "connection churn server")?;
        for _ in 0..cfg.clients.max(1) {
            let cfg = cfg.clone();
            let (stop, counters, ready) =
                (churn.stop.clone(), churn.counters.clone(), ready_tx.clone());
            churn.clients.push(
                std::thread::Builder::new()
                    .name("wbench-connect".into())
                    .spawn(move || client(&cfg, &stop, &counters, deadline, &ready))
                    .context("spawning a client thread")?,
            );
            ready::wait(&ready_rx, "connection churn client")?;
        }
        Ok(churn)
    }

    /// The counters now.
    pub fn sample(&self) -> ChurnSample {
        ChurnSample {
            at: Instant::now(),
            connected: self.counters.connected.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            accepted: self.counters.accepted.load(Ordering::Relaxed),
        }
    }

    /// Whether all threads still run.
    pub fn running(&self) -> bool {
        self.clients
            .iter()
            .chain(self.server.as_ref())
            .all(|t| !t.is_finished())
    }

    /// Stops and joins every thread; returns the final counters.
    pub fn stop(mut self) -> ChurnSample {
        self.halt();
        self.sample()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.clients.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.halt();
    }
}

fn server(
    ns: &std::path::Path,
    port: u16,
    stop: &AtomicBool,
    counters: &Counters,
    deadline: Instant,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let Some(listener) = ready::report(listen_in(ns, port), ready) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Accepted and reset at once. A plain close would send a FIN when
        // it runs before the client's RST arrives, and a server socket left
        // in TIME_WAIT answers a later SYN that reuses its ports with an
        // ACK: that client waits 1 s for its SYN to be retransmitted.
        if let Ok((stream, _)) = listener.accept() {
            let _ = reset_on_close(&stream);
            counters.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A listener on `0.0.0.0:port` inside `ns` (the calling thread stays
/// there) whose accept wakes every [`ACCEPT_POLL`].
fn listen_in(ns: &std::path::Path, port: u16) -> Result<TcpListener> {
    weir_integration::netns::enter(ns)?;
    weir_integration::netns::write_sysctl("net.core.somaxconn", &BACKLOG.to_string())
        .context("net.core.somaxconn")?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("bind 0.0.0.0:{port}"))?;
    // A deep accept queue: the clients complete handshakes in softirq while
    // this thread waits for a CPU (at 40k connections/s, 100 ms off the CPU
    // queue 4 000), and a full queue drops SYNs: a 1 s stall of that client.
    // listen(2) again only changes the backlog.
    // SAFETY: listen on a socket this function owns.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    // SO_RCVTIMEO bounds accept(2) on Linux.
    set_timeval(listener.as_raw_fd(), libc::SO_RCVTIMEO, ACCEPT_POLL).context("SO_RCVTIMEO")?;
    Ok(listener)
}

fn client(
    cfg: &ChurnConfig,
    stop: &AtomicBool,
    counters: &Counters,
    deadline: Instant,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    if let Err(e) = weir_integration::netns::enter(&cfg.client_netns) {
        let _ = ready.send(Err(e.to_string()));
        return;
    }
    // One connect proves the path before the caller starts counting.
    match handshake(cfg.dst, cfg.connect_timeout) {
        Ok(()) => {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(format!("first connect to {}: {e}", cfg.dst)));
            return;
        }
    }
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match handshake(cfg.dst, cfg.connect_timeout) {
            Ok(()) => counters.connected.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// [`connect_once`] against the churn's server, which resets what it
/// accepts: when its RST overtakes connect's check of the socket, the
/// handshake did complete.
fn handshake(dst: SocketAddr, timeout: Duration) -> io::Result<()> {
    match connect_once(dst, timeout) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        other => other,
    }
}

/// One new TCP connection to `dst` from the calling thread's namespace,
/// closed at once with an RST. Err: it did not complete within `timeout`
/// (a dropped SYN is never retransmitted that early) or was refused.
pub fn connect_once(dst: SocketAddr, timeout: Duration) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(&dst, timeout)?;
    reset_on_close(&stream)
}

/// `SO_LINGER` {on, 0}: close sends an RST and leaves no TIME_WAIT.
fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
    )
}

fn set_timeval(fd: libc::c_int, name: libc::c_int, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, name, &tv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::privileged;
    use crate::topo::{self, Pair};

    #[test]
    fn connections_churn_across_the_pair_and_leave_no_time_wait() {
        if !privileged("network namespaces") {
            return;
        }
        let pair = Pair::create().expect("creating the namespace pair");
        let churn = Churn::start(&ChurnConfig {
            client_netns: pair.a.clone(),
            server_netns: pair.b.clone(),
            dst: format!("{}:9000", topo::ADDR_B).parse().expect("address"),
            clients: 2,
            connect_timeout: Duration::from_secs(1),
            max_duration: Duration::from_secs(10),
        })
        .expect("starting the churn");
        let s0 = churn.sample();
        std::thread::sleep(Duration::from_millis(500));
        let s1 = churn.stop();
        let made = s1.connected - s0.connected;
        assert!(made > 200, "only {made} connections in 0.5 s");
        // Rarely (about 1 in 300 000 here) a SYN that reuses a 4-tuple
        // meets the previous connection's server socket before its reset
        // was processed and waits for a retransmission; never more.
        assert!(
            s1.failed * 1000 <= s1.connected,
            "{} of {} connects failed on an idle pair",
            s1.failed,
            s1.connected
        );
        assert!(
            s1.accepted as f64 >= 0.9 * s1.connected as f64,
            "the server accepted {} of {} connections",
            s1.accepted,
            s1.connected
        );
        // RST close: nothing lingers in TIME_WAIT on the client side.
        let tw = weir_integration::netns::run_in(&pair.a, || {
            std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default()
        })
        .expect("reading /proc/net/tcp in a");
        let time_wait = tw
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(3) == Some("06"))
            .count();
        assert!(
            time_wait < 10,
            "{time_wait} sockets in TIME_WAIT after {made} RST-closed connections"
        );
        // A port nobody listens on is refused, not timed out.
        let refused = weir_integration::netns::run_in(&pair.a, || {
            connect_once(
                format!("{}:9001", topo::ADDR_B).parse().expect("address"),
                Duration::from_secs(1),
            )
        })
        .expect("probe in a");
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused)
        );
    }
}
