//! The one-line "compact" flow format of `hubble observe`:
//!
//! ```text
//! Nov 29 12:00:01.123: x/a:34567 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)
//! ```
//!
//! Pod sides print as `namespace/pod:port`, other addresses as `ip:port`
//! (`[ip]:port` for IPv6), ICMP and port-less flows without ports. Reserved
//! identities print by name (`(world)`), others as `(ID:n)`. A reply is printed
//! from the initiator's side with `<-`, as Hubble does; `<>` when it is unknown
//! whether the packet is a reply. Times are UTC (Hubble uses the local zone).
//! Pure formatting: no I/O.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::flow::{Endpoint, Flow, Verdict};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats `flow` as one compact line (no trailing newline).
pub fn format(flow: &Flow) -> String {
    let mut out = String::with_capacity(160);
    write_line(flow, &mut out);
    out
}

/// Appends the compact line for `flow` to `out` (no trailing newline).
pub fn write_line(flow: &Flow, out: &mut String) {
    if let Some(t) = flow.time.and_then(|t| t.to_datetime()) {
        let _ = write!(
            out,
            "{} {:>2} {:02}:{:02}:{:02}.{:03}: ",
            MONTHS[usize::from(t.month() as u8 - 1)],
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        );
    }

    let ip = flow.ip.unwrap_or_default();
    let (sport, dport) = (flow.source_port(), flow.destination_port());
    let mut left = (ip.source, sport, flow.source.as_deref());
    let mut right = (ip.destination, dport, flow.destination.as_deref());
    let arrow = match flow.is_reply {
        Some(true) => {
            std::mem::swap(&mut left, &mut right);
            "<-"
        }
        Some(false) => "->",
        None => "<>",
    };
    write_side(out, left.0, left.1, left.2);
    let _ = write!(out, " {arrow} ");
    write_side(out, right.0, right.1, right.2);

    out.push(' ');
    if flow.verdict == Verdict::Dropped {
        out.push_str(flow.drop_reason_desc.description());
    } else {
        out.push_str(flow.trace_observation_point.hubble_short_name());
    }
    out.push(' ');
    out.push_str(flow.verdict.as_str_name());
    if !flow.summary.is_empty() {
        let _ = write!(out, " ({})", flow.summary);
    }
}

fn write_side(out: &mut String, ip: Option<IpAddr>, port: u16, ep: Option<&Endpoint>) {
    match ep.filter(|e| !e.pod_name.is_empty()) {
        Some(e) => {
            let _ = write!(out, "{}/{}", e.namespace, e.pod_name);
            if port != 0 {
                let _ = write!(out, ":{port}");
            }
        }
        None => match (ip, port) {
            (Some(IpAddr::V6(v6)), p) if p != 0 => {
                let _ = write!(out, "[{v6}]:{p}");
            }
            (Some(a), 0) => {
                let _ = write!(out, "{a}");
            }
            (Some(a), p) => {
                let _ = write!(out, "{a}:{p}");
            }
            (None, _) => out.push_str("N/A"),
        },
    }
    if let Some(e) = ep.filter(|e| e.identity != 0) {
        match reserved_identity_name(e.identity) {
            Some(name) => {
                let _ = write!(out, " ({name})");
            }
            None => {
                let _ = write!(out, " (ID:{})", e.identity);
            }
        }
    }
}

/// Cilium's reserved identities, which Hubble prints by name.
fn reserved_identity_name(identity: u32) -> Option<&'static str> {
    Some(match identity {
        1 => "host",
        2 => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        6 => "remote-node",
        7 => "kube-apiserver",
        8 => "ingress",
        9 => "world-ipv4",
        10 => "world-ipv6",
        _ => return None,
    })
}
