//! Policy enforcement in the programs, on crafted packets through
//! BPF_PROG_TEST_RUN: the maps are written exactly as the agent writes them
//! (through `PolicyMaps`), and each case checks the program's return value,
//! the event (verdict, drop reason, attribution), the counters and conntrack.
//! The endpoint is the test run's default device, loopback (ifindex 1).
//! Privileged (root); each test loads its own datapath.

mod common;

use common::*;
use weir_common::{
    EndpointPolicy, FlowEvent, IpKey, PolicyKey, PolicyValue, direction, drop_reason, emit,
    ep_flag, identity, obs, policy_prefix, stat, tcp, verdict,
};
use weir_datapath::{Datapath, DatapathOptions, testing};

/// Our endpoint (pod) and a peer.
const POD: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 0, 0, 2];
const OTHER: [u8; 4] = [192, 168, 7, 9];
const LO: u32 = 1;
const PEER_ID: u32 = 300;
const DROP: i32 = 2;

struct H {
    dp: Datapath,
}

fn rule(identity: u32, dir: u8, proto: u8, port: u16) -> PolicyKey {
    PolicyKey {
        endpoint: LO,
        identity,
        direction: dir,
        proto,
        port: port.to_be_bytes(),
    }
}

fn allow(attr: u32) -> PolicyValue {
    PolicyValue { attr, _pad: [0; 4] }
}

impl H {
    fn new() -> Self {
        let mut dp = Datapath::load(&DatapathOptions::default()).expect("load datapath");
        dp.policy_maps()
            .set_ip(mapped(PEER), PEER_ID)
            .expect("ipcache");
        Self { dp }
    }

    fn endpoint(&mut self, flags: u8) {
        self.dp
            .policy_maps()
            .set_endpoint(
                LO,
                EndpointPolicy {
                    identity: 400,
                    flags,
                    _pad: [0; 3],
                    ingress_deny_attr: 71,
                    egress_deny_attr: 72,
                },
            )
            .expect("endpoint");
    }

    fn rule(&mut self, prefix: u32, key: PolicyKey, attr: u32) {
        self.dp
            .policy_maps()
            .set_rule(prefix, key, allow(attr))
            .expect("rule");
    }

    /// Runs one packet; returns the program's verdict and the events.
    fn run(&mut self, obs_point: u8, pkt: &[u8]) -> (i32, Vec<FlowEvent>) {
        let out = testing::run(&self.dp, obs_point, pkt, None).expect("test run");
        let evs = testing::drain_events(&mut self.dp).expect("drain");
        (out.return_value, evs)
    }

    fn stat(&self, i: u32) -> u64 {
        self.dp.counters().expect("counters").stats[i as usize]
    }
}

fn ingress_syn(from: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(from, POD, 6, &tcp(sport, dport, tcp::SYN, &[]))
}

#[test]
fn unpoliced_endpoint_passes_everything() {
    if !privileged("unpoliced_endpoint_passes_everything") {
        return;
    }
    let mut h = H::new();
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 80));
    assert_eq!(rc, 0);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].verdict, verdict::FORWARDED);
    assert_eq!(evs[0].policy_attr, 0);
    // Enforced for egress only: ingress still passes, unattributed.
    h.endpoint(ep_flag::EGRESS_ENFORCED);
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40001, 80));
    assert_eq!(
        (rc, evs[0].verdict, evs[0].policy_attr),
        (0, verdict::FORWARDED, 0)
    );
    assert_eq!(h.stat(stat::POLICY_DENIED), 0);
}

#[test]
fn isolated_ingress_drops_what_no_rule_allows_and_reports_it() {
    if !privileged("isolated_ingress_drops_what_no_rule_allows_and_reports_it") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED);
    h.rule(
        policy_prefix::FULL,
        rule(PEER_ID, direction::INGRESS, 6, 80),
        11,
    );

    // Not port 81: dropped, with a DROPPED event naming the reason and the
    // isolating policies, and no conntrack entry left behind.
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 81));
    assert_eq!(rc, DROP);
    assert_eq!(evs.len(), 1, "one event per dropped packet");
    let e = &evs[0];
    assert_eq!(
        (e.verdict, e.drop_reason, e.policy_attr, e.emit_reason),
        (
            verdict::DROPPED,
            drop_reason::POLICY_DENIED,
            71,
            emit::PACKET
        )
    );
    assert_eq!(
        (e.src_port, e.dst_port, e.obs_point),
        (40000, 81, obs::TO_ENDPOINT)
    );
    assert!(testing::conntrack(&h.dp).unwrap().is_empty());
    // A retransmission is dropped and reported again.
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 81));
    assert_eq!((rc, evs.len()), (DROP, 1));
    assert_eq!(h.stat(stat::POLICY_DENIED), 2);
    assert_eq!(h.stat(stat::DROPPED), 2);

    // An unknown address is WORLD: the identity rule does not cover it.
    let (rc, _) = h.run(obs::TO_ENDPOINT, &ingress_syn(OTHER, 40000, 80));
    assert_eq!(rc, DROP);

    // Port 80 from the peer: allowed, attributed; the reply passes through
    // conntrack, and egress is not enforced anyway.
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40002, 80));
    assert_eq!(rc, 0);
    assert_eq!(
        (evs[0].verdict, evs[0].policy_attr),
        (verdict::FORWARDED, 11)
    );
    let synack = ipv4(POD, PEER, 6, &tcp(80, 40002, tcp::SYN | tcp::ACK, &[]));
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &synack);
    assert_eq!(rc, 0);
    assert_eq!(
        evs[0].policy_attr, 11,
        "the connection keeps its attribution"
    );
    assert_eq!(h.stat(stat::POLICY_DENIED), 3);
}

#[test]
fn replies_of_allowed_egress_pass_isolated_ingress() {
    if !privileged("replies_of_allowed_egress_pass_isolated_ingress") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED);
    h.rule(
        policy_prefix::ANY_PORT,
        rule(identity::ANY, direction::EGRESS, 17, 0),
        5,
    );
    let q = ipv4(POD, PEER, 17, &udp(5353, 53, b"q"));
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &q);
    assert_eq!((rc, evs[0].policy_attr), (0, 5));
    let a = ipv4(PEER, POD, 17, &udp(53, 5353, b"a"));
    let (rc, _) = h.run(obs::TO_ENDPOINT, &a);
    assert_eq!(rc, 0, "the reply is not new ingress");
    // TCP egress is not allowed by a UDP rule.
    let (rc, evs) = h.run(
        obs::FROM_ENDPOINT,
        &ipv4(POD, PEER, 6, &tcp(40000, 53, tcp::SYN, &[])),
    );
    assert_eq!((rc, evs[0].policy_attr), (DROP, 72));
    // The same UDP datagram arriving as NEW ingress (another source port) is denied.
    let (rc, _) = h.run(obs::TO_ENDPOINT, &ipv4(PEER, POD, 17, &udp(53, 5354, b"x")));
    assert_eq!(rc, DROP);
}

#[test]
fn port_ranges_protocol_wildcards_and_icmp() {
    if !privileged("port_ranges_protocol_wildcards_and_icmp") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED);
    // 8080-8083 as one aligned block of 4 ports: prefix 80 + 14.
    h.rule(
        policy_prefix::ANY_PORT + 14,
        rule(PEER_ID, direction::INGRESS, 6, 8080),
        3,
    );
    for (port, want) in [(8079, DROP), (8080, 0), (8083, 0), (8084, DROP)] {
        let (rc, _) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 41000 + port, port));
        assert_eq!(rc, want, "port {port}");
    }
    // ICMP has no port: a TCP rule does not allow it, an any-protocol rule does.
    let ping = ipv4(PEER, POD, 1, &icmp(8, 0, 77, 1));
    assert_eq!(h.run(obs::TO_ENDPOINT, &ping).0, DROP);
    h.rule(
        policy_prefix::ANY_PROTO,
        rule(PEER_ID, direction::INGRESS, 0, 0),
        4,
    );
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ping);
    assert_eq!((rc, evs[0].policy_attr), (0, 4));
}

#[test]
fn cidr_cells_and_ipv6_peers() {
    if !privileged("cidr_cells_and_ipv6_peers") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED);
    // 192.168.0.0/16 except 192.168.7.0/24: two cells, the rule allows the first.
    let cell = identity::CIDR_BASE;
    let except = identity::CIDR_BASE + 1;
    h.dp.policy_maps()
        .set_cidr(96 + 16, mapped([192, 168, 0, 0]), cell)
        .unwrap();
    h.dp.policy_maps()
        .set_cidr(96 + 24, mapped([192, 168, 7, 0]), except)
        .unwrap();
    h.rule(
        policy_prefix::FULL,
        rule(cell, direction::INGRESS, 6, 80),
        9,
    );
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn([192, 168, 1, 1], 40000, 80));
    assert_eq!((rc, evs[0].policy_attr), (0, 9));
    assert_eq!(
        h.run(obs::TO_ENDPOINT, &ingress_syn(OTHER, 40000, 80)).0,
        DROP,
        "in the except"
    );
    // The cell also covers a pod address (PEER has its own identity too).
    h.dp.policy_maps()
        .set_cidr(96 + 8, mapped([10, 0, 0, 0]), cell + 2)
        .unwrap();
    h.rule(
        policy_prefix::FULL,
        rule(cell + 2, direction::INGRESS, 6, 81),
        10,
    );
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 81));
    assert_eq!(
        (rc, evs[0].policy_attr),
        (0, 10),
        "ipBlock selects a pod IP"
    );

    // IPv6: identity from IPCACHE by the full address.
    let pod6 = v6(1);
    let peer6 = v6(2);
    h.dp.policy_maps()
        .set_ip(IpKey { addr: peer6 }, PEER_ID)
        .unwrap();
    h.rule(
        policy_prefix::FULL,
        rule(PEER_ID, direction::INGRESS, 6, 80),
        12,
    );
    let syn6 = ipv6(peer6, pod6, &[], 6, &tcp(40000, 80, tcp::SYN, &[]));
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &syn6);
    assert_eq!((rc, evs[0].policy_attr), (0, 12));
    let stranger = ipv6(v6(9), pod6, &[], 6, &tcp(40000, 80, tcp::SYN, &[]));
    assert_eq!(h.run(obs::TO_ENDPOINT, &stranger).0, DROP);
}

#[test]
fn audit_mode_passes_would_be_drops_as_audit() {
    if !privileged("audit_mode_passes_would_be_drops_as_audit") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED | ep_flag::AUDIT);
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 80));
    assert_eq!(rc, 0);
    assert_eq!(
        (evs[0].verdict, evs[0].policy_attr, evs[0].drop_reason),
        (verdict::AUDIT, 71, 0)
    );
    // The connection is tracked; its later events stay AUDIT.
    let synack = ipv4(POD, PEER, 6, &tcp(80, 40000, tcp::SYN | tcp::ACK, &[]));
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &synack);
    assert_eq!((rc, evs[0].verdict), (0, verdict::AUDIT));
    assert_eq!(h.stat(stat::POLICY_AUDITED), 1);
    assert_eq!(h.stat(stat::DROPPED), 0);
}

#[test]
fn a_new_generation_rechecks_established_connections() {
    if !privileged("a_new_generation_rechecks_established_connections") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED);
    let key = rule(PEER_ID, direction::INGRESS, 6, 80);
    h.rule(policy_prefix::FULL, key, 11);
    assert_eq!(h.run(obs::TO_ENDPOINT, &ingress_syn(PEER, 40000, 80)).0, 0);
    let data = ipv4(PEER, POD, 6, &tcp(40000, 80, tcp::ACK, b"x"));
    assert_eq!(h.run(obs::TO_ENDPOINT, &data).0, 0);
    // The rule goes; without a new generation the connection keeps flowing.
    h.dp.policy_maps()
        .remove_rule(policy_prefix::FULL, key)
        .unwrap();
    assert_eq!(h.run(obs::TO_ENDPOINT, &data).0, 0);
    // With one, its next forward packet is checked and dropped...
    assert_eq!(h.dp.policy_maps().bump_generation().unwrap(), 1);
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &data);
    assert_eq!(
        (rc, evs[0].verdict, evs[0].drop_reason),
        (DROP, verdict::DROPPED, drop_reason::POLICY_DENIED)
    );
    // ...while the same connection's replies still pass.
    let reply = ipv4(POD, PEER, 6, &tcp(80, 40000, tcp::ACK, b"y"));
    assert_eq!(h.run(obs::FROM_ENDPOINT, &reply).0, 0);
    // Allowed again: the connection resumes under the new attribution.
    h.rule(policy_prefix::FULL, key, 13);
    h.dp.policy_maps().bump_generation().unwrap();
    assert_eq!(h.run(obs::TO_ENDPOINT, &data).0, 0);
    let fin = ipv4(PEER, POD, 6, &tcp(40000, 80, tcp::FIN | tcp::ACK, &[]));
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &fin);
    assert_eq!((rc, evs[0].policy_attr), (0, 13));
    // Deleting an absent entry is not an error (the agent's state converges).
    h.dp.policy_maps()
        .remove_rule(policy_prefix::FULL, rule(1, 1, 1, 1))
        .unwrap();
    h.dp.policy_maps().remove_endpoint(99).unwrap();
}

#[test]
fn neighbour_discovery_and_icmp_errors_are_never_policed() {
    if !privileged("neighbour_discovery_and_icmp_errors_are_never_policed") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED);
    let (pod6, peer6) = (v6(1), v6(2));
    // Neighbour solicitation and advertisement, both ways: pass.
    for (ty, obs_point, src, dst) in [
        (135, obs::FROM_ENDPOINT, pod6, peer6),
        (136, obs::TO_ENDPOINT, peer6, pod6),
        (135, obs::TO_ENDPOINT, peer6, pod6),
        (133, obs::FROM_ENDPOINT, pod6, peer6),
        (2, obs::TO_ENDPOINT, peer6, pod6),
    ] {
        let pkt = ipv6(src, dst, &[], 58, &icmp(ty, 0, 0, 0));
        let (rc, evs) = h.run(obs_point, &pkt);
        assert_eq!(rc, 0, "ICMPv6 type {ty}");
        assert!(evs.iter().all(|e| e.verdict == verdict::FORWARDED));
    }
    // ICMP errors pass; an echo request does not.
    let unreach = ipv4(PEER, POD, 1, &icmp(3, 1, 0, 0));
    assert_eq!(h.run(obs::TO_ENDPOINT, &unreach).0, 0);
    let echo6 = ipv6(peer6, pod6, &[], 58, &icmp(128, 0, 5, 1));
    assert_eq!(h.run(obs::TO_ENDPOINT, &echo6).0, DROP);
    assert_eq!(h.stat(stat::POLICY_DENIED), 1);
}

#[test]
fn sctp_ports_are_policed_like_udp_ports() {
    if !privileged("sctp_ports_are_policed_like_udp_ports") {
        return;
    }
    let mut h = H::new();
    h.endpoint(ep_flag::INGRESS_ENFORCED);
    h.rule(
        policy_prefix::FULL,
        rule(PEER_ID, direction::INGRESS, 132, 5000),
        21,
    );
    // SCTP common header (ports, verification tag, checksum) + an INIT chunk header.
    let sctp = |sport: u16, dport: u16| {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&[0; 8]);
        l4.extend_from_slice(&[1, 0, 0, 4]);
        ipv4(PEER, POD, 132, &l4)
    };
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &sctp(40000, 5000));
    assert_eq!(rc, 0);
    assert_eq!(
        (evs[0].src_port, evs[0].dst_port, evs[0].policy_attr),
        (40000, 5000, 21)
    );
    assert_eq!(h.run(obs::TO_ENDPOINT, &sctp(40001, 5001)).0, DROP);
    // Shorter than SCTP's 12-byte common header: a parse error, passed.
    let short = ipv4(PEER, POD, 132, &[0x9c, 0x40, 0x13, 0x88]);
    assert_eq!(h.run(obs::TO_ENDPOINT, &short).0, 0);
}
