//! The cgroup programs (hostNetwork pods) on crafted packets through
//! BPF_PROG_TEST_RUN. The kernel runs them on an skb that starts at the
//! network header and belongs to a socket it creates in the test process's
//! own cgroup, so registering that cgroup in `CGROUP_EP` makes the test
//! process "the hostNetwork pod". Each case checks the return value (1
//! passes, 0 drops), the events (synthetic endpoint id, observation point,
//! verdict, attribution), the counters and conntrack. Runs happen inside a
//! network namespace the test makes (`wdphn-<pid>-...`): a veth there gives
//! a non-loopback device, and its loopback holds the sockets that loopback
//! packets are resolved against. Privileged (root).

mod common;

use std::net::{TcpListener, UdpSocket};

use common::*;
use weir_common::{
    CGROUP_ENDPOINT_BIT, CgroupEndpoint, EndpointPolicy, FlowEvent, PolicyKey, PolicyValue,
    direction, drop_reason, emit, ep_flag, family, flag, identity, obs, policy_prefix, stat, tcp,
    verdict,
};
use weir_datapath::{Datapath, DatapathOptions, cgroup, testing};

const ME: [u8; 4] = [10, 216, 0, 1];
const PEER: [u8; 4] = [10, 216, 0, 2];
const LOCAL: [u8; 4] = [127, 0, 0, 1];
const PEER_ID: u32 = 300;
const MY_ID: u32 = 500;
const EP: u32 = CGROUP_ENDPOINT_BIT | 7;
const PASS: i32 = 1;
const DROP: i32 = 0;

struct H {
    dp: Datapath,
    ns: Netns,
    /// A veth in `ns`: the skb's device for packets that are not loopback.
    dev: u32,
    own_cgroup: u64,
}

fn rule(identity: u32, dir: u8, proto: u8, port: u16) -> PolicyKey {
    PolicyKey {
        endpoint: EP,
        identity,
        direction: dir,
        proto,
        port: port.to_be_bytes(),
    }
}

impl H {
    fn new(tag: &str) -> Self {
        let ns = Netns::with_prefix("wdphn", tag);
        ns.ip(&[
            "link", "add", "whr0", "type", "veth", "peer", "name", "whr1",
        ]);
        ns.ip(&["link", "set", "whr0", "up"]);
        ns.ip(&["link", "set", "whr1", "up"]);
        let dev = ns.enter(|| {
            // SAFETY: a valid NUL-terminated name.
            unsafe { libc::if_nametoindex(c"whr0".as_ptr()) }
        });
        assert_ne!(dev, 0);
        let own = cgroup::process_cgroup(std::process::id()).expect("own cgroup");
        let own_cgroup = cgroup::cgroup_id(&own).expect("own cgroup id");
        let mut dp = Datapath::load(&DatapathOptions::default()).expect("load datapath");
        dp.policy_maps()
            .set_ip(mapped(PEER), PEER_ID)
            .expect("ipcache");
        Self {
            dp,
            ns,
            dev,
            own_cgroup,
        }
    }

    /// Makes this process's cgroup the endpoint `EP`.
    fn register(&mut self) {
        self.dp
            .policy_maps()
            .set_cgroup(
                self.own_cgroup,
                CgroupEndpoint {
                    endpoint: EP,
                    identity: MY_ID,
                },
            )
            .expect("set_cgroup");
    }

    fn police(&mut self, flags: u8) {
        self.dp
            .policy_maps()
            .set_endpoint(
                EP,
                EndpointPolicy {
                    identity: MY_ID,
                    flags,
                    _pad: [0; 3],
                    ingress_deny_attr: 61,
                    egress_deny_attr: 62,
                },
            )
            .expect("endpoint");
    }

    fn allow(&mut self, prefix: u32, key: PolicyKey, attr: u32) {
        self.dp
            .policy_maps()
            .set_rule(prefix, key, PolicyValue { attr, _pad: [0; 4] })
            .expect("rule");
    }

    /// Runs one frame through the cgroup hook of `obs_point` with the veth
    /// as the skb's device; returns the verdict and the events.
    fn run(&mut self, obs_point: u8, frame: &[u8]) -> (i32, Vec<FlowEvent>) {
        self.run_on(obs_point, frame, Some(self.dev))
    }

    /// Likewise on loopback (the test run's default device).
    fn run_lo(&mut self, obs_point: u8, frame: &[u8]) -> (i32, Vec<FlowEvent>) {
        self.run_on(obs_point, frame, None)
    }

    fn run_on(&mut self, obs_point: u8, frame: &[u8], dev: Option<u32>) -> (i32, Vec<FlowEvent>) {
        let dp = &self.dp;
        let out = self
            .ns
            .enter(|| testing::run_cgroup(dp, obs_point, frame, dev))
            .expect("test run");
        if dev.is_some() {
            assert!(out.ifindex_applied, "the kernel must accept ctx ifindex");
        }
        let evs = testing::drain_events(&mut self.dp).expect("drain");
        (out.return_value, evs)
    }

    fn stat(&self, i: u32) -> u64 {
        self.dp.counters().expect("counters").stats[i as usize]
    }
}

fn syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(src, dst, 6, &tcp(sport, dport, tcp::SYN, &[]))
}

#[test]
fn a_cgroup_without_endpoint_passes_unobserved() {
    if !privileged("a_cgroup_without_endpoint_passes_unobserved") {
        return;
    }
    let mut h = H::new("u");
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &syn(ME, PEER, 40000, 80));
    assert_eq!(rc, PASS);
    assert!(evs.is_empty(), "{evs:#?}");
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &syn(PEER, ME, 40000, 80));
    assert_eq!((rc, evs.len()), (PASS, 0));
    assert_eq!(h.stat(stat::CGROUP_UNKNOWN), 2);
    assert_eq!(h.stat(stat::PACKETS), 2, "still counted as seen");
    assert!(testing::conntrack(&h.dp).unwrap().is_empty());
}

#[test]
fn the_cgroups_traffic_is_tracked_and_reported_as_its_endpoint() {
    if !privileged("the_cgroups_traffic_is_tracked_and_reported_as_its_endpoint") {
        return;
    }
    let mut h = H::new("t");
    h.register();

    // Egress: parsed from the network header (no Ethernet header here).
    let out = syn(ME, PEER, 40000, 80);
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &out);
    assert_eq!(rc, PASS);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    let e = &evs[0];
    assert_eq!(
        (e.ifindex, e.obs_point, e.emit_reason, e.verdict, e.flags),
        (EP, obs::FROM_ENDPOINT, emit::NEW, verdict::FORWARDED, 0)
    );
    assert_eq!(
        (
            e.src_addr, e.dst_addr, e.src_port, e.dst_port, e.family, e.proto
        ),
        (v4(ME), v4(PEER), 40000, 80, family::IPV4, 6)
    );
    assert_eq!(e.tcp_flags, tcp::SYN);
    assert_eq!(
        e.pkt_len as usize,
        out.len() - 14,
        "skb->len counts from the network header"
    );
    assert_eq!(e.policy_attr, 0, "not policed");

    // Ingress: the reply shares the connection (same endpoint key).
    let synack = ipv4(PEER, ME, 6, &tcp(80, 40000, tcp::SYN | tcp::ACK, &[]));
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &synack);
    assert_eq!(rc, PASS);
    assert_eq!(
        (
            evs[0].ifindex,
            evs[0].obs_point,
            evs[0].emit_reason,
            evs[0].flags
        ),
        (EP, obs::TO_ENDPOINT, emit::TCP_FLAG, flag::REPLY)
    );
    assert_eq!(evs[0].packets, [1, 1]);
    let ct = testing::conntrack(&h.dp).unwrap();
    assert_eq!(ct.len(), 1);
    assert_eq!(
        ct[0].0.ifindex, EP,
        "conntrack is scoped by the endpoint id"
    );

    // IPv6 with an extension header, UDP; and ICMP echo.
    let me6 = v6(1);
    let peer6 = v6(2);
    let dgram = ipv6(me6, peer6, &[(0, ipv6_opts8())], 17, &udp(5353, 53, b"q"));
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &dgram);
    assert_eq!(rc, PASS);
    assert_eq!(
        (
            evs[0].family,
            evs[0].proto,
            evs[0].src_addr,
            evs[0].dst_addr,
            evs[0].src_port,
            evs[0].dst_port
        ),
        (family::IPV6, 17, me6, peer6, 5353, 53)
    );
    let ping = ipv4(ME, PEER, 1, &icmp(8, 0, 9, 1));
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &ping);
    assert_eq!((rc, evs[0].proto, evs[0].icmp_type), (PASS, 1, 8));

    // A truncated header is a parse error and passes.
    let mut short = syn(ME, PEER, 1, 2);
    short.truncate(14 + 20 + 10);
    if let [_, _, hi, lo, ..] = &mut short[14..] {
        // Keep the IPv4 total length consistent with the frame.
        let total = (20u16 + 10).to_be_bytes();
        (*hi, *lo) = (total[0], total[1]);
    }
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &short);
    assert_eq!((rc, evs.len()), (PASS, 0));
    assert_eq!(
        h.dp.counters().unwrap().parse_errors[weir_common::parse_error::TRUNCATED_L4 as usize],
        1
    );
}

#[test]
fn the_endpoints_policy_drops_at_the_cgroup_hooks() {
    if !privileged("the_endpoints_policy_drops_at_the_cgroup_hooks") {
        return;
    }
    let mut h = H::new("p");
    h.register();
    h.police(ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED);
    h.allow(
        policy_prefix::FULL,
        rule(PEER_ID, direction::EGRESS, 6, 80),
        11,
    );
    h.allow(
        policy_prefix::FULL,
        rule(PEER_ID, direction::INGRESS, 6, 9091),
        12,
    );

    // Egress to a port no rule allows: dropped (connect() gets EPERM).
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &syn(ME, PEER, 40000, 81));
    assert_eq!(rc, DROP);
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (
            evs[0].ifindex,
            evs[0].obs_point,
            evs[0].verdict,
            evs[0].drop_reason,
            evs[0].policy_attr
        ),
        (
            EP,
            obs::FROM_ENDPOINT,
            verdict::DROPPED,
            drop_reason::POLICY_DENIED,
            62
        )
    );
    assert!(testing::conntrack(&h.dp).unwrap().is_empty());
    // Allowed egress, and its reply through the enforced ingress.
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &syn(ME, PEER, 40001, 80));
    assert_eq!(
        (rc, evs[0].verdict, evs[0].policy_attr),
        (PASS, verdict::FORWARDED, 11)
    );
    let synack = ipv4(PEER, ME, 6, &tcp(80, 40001, tcp::SYN | tcp::ACK, &[]));
    assert_eq!(h.run(obs::TO_ENDPOINT, &synack).0, PASS);

    // Ingress to the endpoint's listener: only 9091 from the peer.
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &syn(PEER, ME, 50000, 9090));
    assert_eq!(
        (rc, evs[0].obs_point, evs[0].verdict, evs[0].policy_attr),
        (DROP, obs::TO_ENDPOINT, verdict::DROPPED, 61)
    );
    let (rc, evs) = h.run(obs::TO_ENDPOINT, &syn(PEER, ME, 50000, 9091));
    assert_eq!((rc, evs[0].policy_attr), (PASS, 12));
    // An address no one registered is WORLD, not the peer.
    let (rc, _) = h.run(obs::TO_ENDPOINT, &syn([192, 0, 2, 1], ME, 50000, 9091));
    assert_eq!(rc, DROP);
    assert_eq!(h.stat(stat::POLICY_DENIED), 3);
    assert_eq!(h.stat(stat::DROPPED), 3);
}

#[test]
fn loopback_peers_are_resolved_by_their_socket() {
    if !privileged("loopback_peers_are_resolved_by_their_socket") {
        return;
    }
    let mut h = H::new("l");
    h.register();
    h.police(ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED);
    // Sockets of this process (so of the endpoint) on the namespace's loopback.
    let (tcp_port, udp_port, _listener, _udp) = h.ns.enter(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        let u = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        (
            l.local_addr().unwrap().port(),
            u.local_addr().unwrap().port(),
            l,
            u,
        )
    });

    // To its own listener: own traffic, neither policed nor tracked nor
    // reported, in both hooks and both directions.
    for (obs_point, frame) in [
        (obs::FROM_ENDPOINT, syn(LOCAL, LOCAL, 40000, tcp_port)),
        (
            obs::TO_ENDPOINT,
            ipv4(
                LOCAL,
                LOCAL,
                6,
                &tcp(tcp_port, 40000, tcp::SYN | tcp::ACK, &[]),
            ),
        ),
        (
            obs::FROM_ENDPOINT,
            ipv4(LOCAL, LOCAL, 17, &udp(40001, udp_port, b"x")),
        ),
    ] {
        let (rc, evs) = h.run_lo(obs_point, &frame);
        assert_eq!(rc, PASS, "own traffic passes");
        assert!(evs.is_empty(), "own traffic is not reported: {evs:#?}");
    }
    assert!(testing::conntrack(&h.dp).unwrap().is_empty());

    // A loopback port without a socket of the endpoint: the node (HOST),
    // which no rule allows.
    let closed = if tcp_port == 1 { 2 } else { tcp_port - 1 };
    let (rc, evs) = h.run_lo(obs::FROM_ENDPOINT, &syn(LOCAL, LOCAL, 40002, closed));
    assert_eq!(
        (rc, evs[0].ifindex, evs[0].verdict, evs[0].policy_attr),
        (DROP, EP, verdict::DROPPED, 62)
    );
    h.allow(
        policy_prefix::FULL,
        rule(identity::HOST, direction::EGRESS, 6, closed),
        13,
    );
    let (rc, evs) = h.run_lo(obs::FROM_ENDPOINT, &syn(LOCAL, LOCAL, 40002, closed));
    assert_eq!((rc, evs[0].policy_attr), (PASS, 13), "HOST is allowed now");

    // The same own-traffic tuple on a device that is not loopback is
    // ordinary traffic: looked up by address.
    let (rc, evs) = h.run(obs::FROM_ENDPOINT, &syn(LOCAL, LOCAL, 40003, tcp_port));
    assert_eq!((rc, evs[0].policy_attr), (DROP, 62));
}
