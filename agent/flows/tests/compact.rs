//! The compact `hubble observe` line.

mod common;

use common::*;
use weir_common::{flag, verdict};
use weir_flows::Decoder;
use weir_flows::compact;
use weir_flows::flow::Flow;

fn decode(ev: &weir_common::FlowEvent) -> Flow {
    Decoder::with_fixed_clock("node-1", OFFSET_NS).decode(ev, &index())
}

#[test]
fn pod_to_pod_tcp() {
    assert_eq!(
        compact::format(&decode(&tcp_v4_syn())),
        "Nov 29 12:00:01.123: x/a:34567 (ID:256) -> x/b:80 (ID:257) from-endpoint FORWARDED (TCP Flags: SYN)"
    );
    let mut ev = tcp_v4_syn();
    ev.obs_point = weir_common::obs::TO_ENDPOINT;
    assert_eq!(
        compact::format(&decode(&ev)),
        "Nov 29 12:00:01.123: x/a:34567 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn world_side_and_icmp_without_ports() {
    assert_eq!(
        compact::format(&decode(&icmpv4(8, 0))),
        "Nov 29 12:00:01.123: x/a (ID:256) -> 93.184.216.34 (world) from-endpoint FORWARDED (ICMPv4 EchoRequest)"
    );
    let mut ev = udp_v6();
    ev.dst_addr = "2001:db8::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    assert_eq!(
        compact::format(&decode(&ev)),
        "Nov 29 12:00:01.123: x/a:40000 (ID:256) -> [2001:db8::1]:53 (world) to-endpoint FORWARDED (UDP)"
    );
}

#[test]
fn reply_printed_from_initiator_side() {
    // ICMPv6 echo reply from b to a, delivered to a.
    assert_eq!(
        compact::format(&decode(&icmpv6(129, 0))),
        "Nov 29 12:00:01.123: x/a (ID:256) <- x/b (ID:257) to-endpoint FORWARDED (ICMPv6 EchoReply)"
    );
}

#[test]
fn drop_shows_reason() {
    let mut ev = tcp_v4_syn();
    ev.verdict = verdict::DROPPED;
    ev.drop_reason = 133;
    assert_eq!(
        compact::format(&decode(&ev)),
        "Nov 29 12:00:01.123: x/a:34567 (ID:256) -> x/b:80 (ID:257) Policy denied DROPPED (TCP Flags: SYN)"
    );
}

#[test]
fn unknown_reply_state_and_single_digit_day() {
    let mut f = decode(&tcp_v4_syn());
    f.is_reply = None;
    f.time = Some(weir_flows::flow::Timestamp::from_unix_nanos(
        1_780_000_000_000_000_000,
    ));
    let line = compact::format(&f);
    assert!(line.starts_with("May 28 20:26:40.000: "), "{line}");
    assert!(line.contains(" <> "), "{line}");
    f.time = Some(weir_flows::flow::Timestamp::from_unix_nanos(
        1_775_001_600_000_000_000,
    ));
    assert!(compact::format(&f).starts_with("Apr  1 00:00:00.000: "));
    let mut ev = tcp_v4_syn();
    ev.flags = flag::NO_L4;
    assert!(
        compact::format(&decode(&ev))
            .ends_with("x/a (ID:256) -> x/b (ID:257) from-endpoint FORWARDED (IPv4)")
    );
}
