//! Probes: one TCP connect and read, one UDP request and answer, or one ICMP
//! echo, made from a socket created inside the source pod's network namespace.
//!
//! Owns the probe wire protocol (what a client sends, what counts as an
//! answer) and the result shape printed by `weir-lab run`. The functions here
//! block; the lab runs each on a thread that has entered the pod's namespace.

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};

use crate::spec::{Expectation, Family, Protocol};

/// What a UDP probe sends; servers answer any datagram, this only makes
/// probe traffic recognisable in captures.
pub const UDP_REQUEST: &[u8] = b"weir-lab probe\n";
/// Default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A probe to run from a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Source pod, `ns/name`.
    pub from: String,
    /// Destination: pod `ns/name`, service `svc:ns/name`, or an IP address.
    pub to: String,
    /// Destination port (ignored for ICMP).
    pub port: u16,
    pub protocol: Protocol,
    /// Family used to reach a pod or service (ignored when `to` is an IP).
    pub family: Family,
    /// None: the lab's default.
    pub timeout: Option<Duration>,
}

impl ProbeSpec {
    fn new(from: &str, to: &str, port: u16, protocol: Protocol) -> Self {
        Self {
            from: from.to_string(),
            to: to.to_string(),
            port,
            protocol,
            family: Family::V4,
            timeout: None,
        }
    }

    /// A TCP probe.
    pub fn tcp(from: &str, to: &str, port: u16) -> Self {
        Self::new(from, to, port, Protocol::Tcp)
    }

    /// A UDP probe.
    pub fn udp(from: &str, to: &str, port: u16) -> Self {
        Self::new(from, to, port, Protocol::Udp)
    }

    /// An ICMP echo probe.
    pub fn icmp(from: &str, to: &str) -> Self {
        Self::new(from, to, 0, Protocol::Icmp)
    }

    /// Over IPv6.
    pub fn ipv6(mut self) -> Self {
        self.family = Family::V6;
        self
    }

    /// With this timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The result of one probe, as printed by `weir-lab run` (an interface: add
/// fields only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// TCP: the connection was established; UDP / ICMP: an answer came back.
    pub connected: bool,
    /// The server's answer, trimmed (the pod's name); empty for ICMP.
    pub reply: String,
    /// Time until the answer (or the failure), in milliseconds.
    pub ms: f64,
    /// The address actually probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// Why the probe did not get an answer: `timeout`, `refused`,
    /// `unreachable`, or an OS error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the scenario expected (`connected` or `blocked`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
    /// Whether the probe met `expect` (present exactly when `expect` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

impl ProbeResult {
    /// Records that `expect` was expected and whether it held.
    pub fn judge(&mut self, expect: Expectation) {
        self.expect = Some(expect);
        self.ok = Some(expect.holds(self.connected));
    }
}

/// Outcome of a probe on the wire, before the lab adds names.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub connected: bool,
    pub reply: String,
    pub elapsed: Duration,
    pub error: Option<String>,
}

/// One [`Outcome`] as the line `weir-lab probe` prints (JSON): the lab runs
/// the probes of hostNetwork pods as such short-lived processes, so that
/// their sockets belong to the pod's cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeLine {
    pub connected: bool,
    pub reply: String,
    /// Time until the answer or the failure, in microseconds.
    pub elapsed_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Outcome> for OutcomeLine {
    fn from(o: Outcome) -> Self {
        Self {
            connected: o.connected,
            reply: o.reply,
            elapsed_us: o.elapsed.as_micros().min(u128::from(u64::MAX)) as u64,
            error: o.error,
        }
    }
}

impl From<OutcomeLine> for Outcome {
    fn from(l: OutcomeLine) -> Self {
        Self {
            connected: l.connected,
            reply: l.reply,
            elapsed: Duration::from_micros(l.elapsed_us),
            error: l.error,
        }
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable".into(),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable".into(),
            Some(libc::EPERM) | Some(libc::EACCES) => "denied".into(),
            _ => e.to_string(),
        },
    }
}

fn domain(ip: &IpAddr) -> Domain {
    if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// Runs one probe in the calling thread's network namespace.
pub fn run(dst: IpAddr, port: u16, protocol: Protocol, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + timeout;
    let result = match protocol {
        Protocol::Tcp => tcp(SocketAddr::new(dst, port), deadline),
        Protocol::Udp => udp(SocketAddr::new(dst, port), deadline),
        Protocol::Icmp => icmp(dst, deadline),
    };
    let elapsed = start.elapsed();
    match result {
        Ok((connected, reply, error)) => Outcome {
            connected,
            reply,
            elapsed,
            error,
        },
        Err(e) => Outcome {
            connected: false,
            reply: String::new(),
            elapsed,
            error: Some(describe(&e)),
        },
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

type Answer = (bool, String, Option<String>);

fn tcp(addr: SocketAddr, deadline: Instant) -> io::Result<Answer> {
    let sock = Socket::new(domain(&addr.ip()), Type::STREAM, Some(SockProto::TCP))?;
    sock.connect_timeout(&addr.into(), remaining(deadline)?)?;
    // Connected: from here on a failure still counts as connected.
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    let mut stream = std::net::TcpStream::from(sock);
    let error = loop {
        let left = match remaining(deadline) {
            Ok(l) => l,
            Err(_) => break Some("timeout waiting for reply".to_string()),
        };
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                // Servers send one line and close; stop at the line's end.
                if reply.contains(&b'\n') || reply.len() >= 4096 {
                    break None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(describe(&e)),
        }
    };
    let text = String::from_utf8_lossy(&reply).trim().to_string();
    let error = if text.is_empty() {
        error.or_else(|| Some("closed without reply".into()))
    } else {
        error
    };
    Ok((true, text, error))
}

fn recv_until(sock: &Socket, deadline: Instant, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    loop {
        sock.set_read_timeout(Some(remaining(deadline)?))?;
        match sock.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn filled(buf: &[MaybeUninit<u8>], n: usize) -> Vec<u8> {
    // SAFETY: recv initialised the first n bytes.
    buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect()
}

fn udp(addr: SocketAddr, deadline: Instant) -> io::Result<Answer> {
    let sock = Socket::new(domain(&addr.ip()), Type::DGRAM, Some(SockProto::UDP))?;
    // connect() so that an ICMP port unreachable surfaces as ECONNREFUSED
    // and answers from anyone else are filtered out.
    sock.connect(&addr.into())?;
    sock.send(UDP_REQUEST)?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let n = recv_until(&sock, deadline, &mut buf)?;
    let reply = String::from_utf8_lossy(&filled(&buf, n)).trim().to_string();
    Ok((true, reply, None))
}

/// Ids of our echo requests; raw sockets see every echo reply in the
/// namespace, so each probe matches on its own id and sequence.
static ICMP_ID: AtomicU16 = AtomicU16::new(0);

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp(dst: IpAddr, deadline: Instant) -> io::Result<Answer> {
    let v4 = dst.is_ipv4();
    let (proto, request_type, reply_type) = if v4 {
        (SockProto::ICMPV4, 8u8, 0u8)
    } else {
        (SockProto::ICMPV6, 128u8, 129u8)
    };
    let sock = Socket::new(domain(&dst), Type::RAW, Some(proto))?;
    // On a raw socket connect() filters replies by source address.
    sock.connect(&SockAddr::from(SocketAddr::new(dst, 0)))?;
    let id = ICMP_ID
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id() as u16);
    let seq: u16 = 1;
    let mut pkt = vec![request_type, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"weir-lab");
    if v4 {
        // The kernel fills in ICMPv6 checksums (pseudo-header); ICMPv4 is ours.
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    sock.send(&pkt)?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let n = recv_until(&sock, deadline, &mut buf)?;
        let data = filled(&buf, n);
        // IPv4 raw sockets deliver the IP header too.
        let icmp = if v4 {
            let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
            data.get(ihl..).unwrap_or(&[])
        } else {
            &data[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok((true, String::new(), None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, id 1, seq 1, no payload: ~(0x0800 + 0x0001 + 0x0001) = 0xf7fd
        let pkt = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&pkt), 0xf7fd);
        let mut with = pkt;
        with[2..4].copy_from_slice(&0xf7fdu16.to_be_bytes());
        assert_eq!(
            checksum(&with),
            0,
            "a packet with its checksum sums to zero"
        );
    }

    #[test]
    fn tcp_probe_reads_the_line_of_a_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"pod-b\n").unwrap();
        });
        let out = run(
            addr.ip(),
            addr.port(),
            Protocol::Tcp,
            Duration::from_secs(2),
        );
        server.join().unwrap();
        assert!(out.connected, "{out:?}");
        assert_eq!(out.reply, "pod-b");
        assert_eq!(out.error, None);
    }

    #[test]
    fn tcp_probe_to_a_closed_port_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = run(
            "127.0.0.1".parse().unwrap(),
            port,
            Protocol::Tcp,
            Duration::from_secs(1),
        );
        assert!(!out.connected);
        assert_eq!(out.error.as_deref(), Some("refused"));
    }

    #[test]
    fn udp_probe_gets_an_answer_or_times_out() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], UDP_REQUEST);
            server.send_to(b"pod-c\n", peer).unwrap();
            // Second request is never answered.
            let _ = server.recv_from(&mut buf);
        });
        let out = run(
            addr.ip(),
            addr.port(),
            Protocol::Udp,
            Duration::from_secs(2),
        );
        assert!(out.connected, "{out:?}");
        assert_eq!(out.reply, "pod-c");
        let started = Instant::now();
        let out = run(
            addr.ip(),
            addr.port(),
            Protocol::Udp,
            Duration::from_millis(200),
        );
        assert!(!out.connected);
        assert_eq!(out.error.as_deref(), Some("timeout"));
        assert!(started.elapsed() < Duration::from_secs(1));
        t.join().unwrap();
    }
}
