//! Shared helpers of the datapath tests: the privilege gate, packet
//! builders for BPF_PROG_TEST_RUN, and network-namespace guards.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs::File,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    process::Command,
};

use nix::sched::{CloneFlags, setns};

/// The `IPCACHE` / `CIDR_CELLS` key of an IPv4 address (IPv4-mapped).
pub fn mapped(a: [u8; 4]) -> weir_common::IpKey {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&a);
    weir_common::IpKey { addr }
}

/// True when the test may run. Without root it skips locally and fails in CI.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root (CAP_BPF, CAP_NET_ADMIN) and CI=true forbids skipping"
    );
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN)");
    false
}

/// CLOCK_BOOTTIME in ns, the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------- packets

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv4 packet (no Ethernet header). `frag` is the flags+offset field
/// (0x2000 = MF, low 13 bits = offset in 8-byte units). `options` must be a
/// multiple of 4 bytes.
pub fn ipv4_raw(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut p = vec![(4 << 4) | ihl as u8, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(ETH_P_IP, &ipv4_raw(src, dst, proto, &[], 0, l4))
}

/// An IPv6 frame. `ext` are the extension headers, each `(type, bytes)`
/// with `bytes` excluding the next-header byte (it is filled in); the
/// caller sizes them correctly.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], ext: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        body.push(next);
        body.extend_from_slice(bytes);
    }
    body.extend_from_slice(l4);
    let first = ext.first().map_or(proto, |(t, _)| *t);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&body);
    eth(ETH_P_IPV6, &p)
}

/// Hop-by-hop / destination options header of 8 bytes (PadN), without the next-header byte.
pub fn ipv6_opts8() -> Vec<u8> {
    vec![0, 1, 4, 0, 0, 0, 0]
}

/// Fragment header without the next-header byte: offset in 8-byte units, M flag.
pub fn ipv6_frag(offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut v = vec![0];
    v.extend_from_slice(&field.to_be_bytes());
    v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    v
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        5 << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn icmp(ty: u8, code: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(b"weir-ping");
    h
}

pub fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

pub fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1] = 0x77;
    a[15] = last;
    a
}

// ---------------------------------------------------------------- netns

/// Runs `cmd` (argv) and panics with its stderr when it fails.
pub fn sh(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` and returns its stdout.
pub fn sh_out(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace named `wdp-<pid>-<tag>` (or another prefix),
/// deleted on drop (even on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        Self::with_prefix("wdp", tag)
    }

    /// A namespace named `<prefix>-<pid>-<tag>`.
    pub fn with_prefix(prefix: &str, tag: &str) -> Self {
        let name = format!("{prefix}-{}-{tag}", std::process::id());
        // A leftover from a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        sh(&argv);
    }

    /// `ip netns exec <ns> argv...`, returning stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh_out(&full)
    }

    /// Runs `f` on the calling thread inside this namespace, then returns
    /// the thread to the namespace it was in (also when `f` panics).
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open target netns");
        setns(&target, CloneFlags::CLONE_NEWNET).expect("setns into test netns");
        let result = catch_unwind(AssertUnwindSafe(f));
        setns(&original, CloneFlags::CLONE_NEWNET).expect("setns back");
        match result {
            Ok(v) => v,
            Err(panic) => resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
