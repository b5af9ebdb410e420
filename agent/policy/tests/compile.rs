//! What the compiler writes into each map, checked entry by entry and
//! through `evaluate`: IPCACHE, POLICY_EP flags and deny attribution, key
//! shape, attribution unions, the node rule, audit, named ports, port
//! ranges, ipBlock cells with except, and the IPv4/IPv6 split.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use serde_json::{Value, json};
use weir_common::{direction, ep_flag, identity, policy_prefix};
use weir_policy::{
    Compiled, Compiler, Lookup, Options, PodPort, PolicyRef, Protocol, Verdict, cidr::ip_key,
    evaluate,
};

fn np(ns: &str, name: &str, spec: Value) -> std::sync::Arc<weir_policy::NetworkPolicy> {
    policy(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn refs(names: &[&str]) -> Vec<PolicyRef> {
    let mut v: Vec<PolicyRef> = names
        .iter()
        .map(|n| {
            if *n == PolicyRef::NODE_RULE_NAME {
                return PolicyRef::node_rule();
            }
            let (ns, name) = n.split_once('/').unwrap();
            PolicyRef {
                namespace: ns.into(),
                name: name.into(),
            }
        })
        .collect();
    v.sort();
    v
}

fn attr_of(c: &Compiled, v: &Verdict) -> Vec<PolicyRef> {
    c.attribution(v.attr)
        .map(<[PolicyRef]>::to_vec)
        .unwrap_or_default()
}

fn ingress(m: &Model, c: &Compiled, to: &str, from: IpAddr, proto: u8, port: u16) -> Verdict {
    evaluate(
        c,
        m.pod(to).endpoint.unwrap(),
        direction::INGRESS,
        from,
        proto,
        port,
    )
}

fn egress(m: &Model, c: &Compiled, from: &str, to: IpAddr, proto: u8, port: u16) -> Verdict {
    evaluate(
        c,
        m.pod(from).endpoint.unwrap(),
        direction::EGRESS,
        to,
        proto,
        port,
    )
}

fn v4(m: &Model, pod: &str) -> IpAddr {
    m.pod(pod).ips[0]
}

/// Every POLICY key has an allowed prefix length, zero bits past it, and
/// belongs to the endpoint it is listed under; attributions resolve.
fn check_shape(c: &Compiled) {
    for ifindex in c.endpoints().keys() {
        for ((plen, key), value) in c.endpoint_entries(*ifindex).into_iter().flatten() {
            assert!(
                (policy_prefix::ANY_PROTO..=policy_prefix::FULL).contains(plen)
                    && (*plen == policy_prefix::ANY_PROTO || *plen >= policy_prefix::ANY_PORT),
                "prefix {plen}"
            );
            assert_eq!(key.endpoint, *ifindex);
            if *plen == policy_prefix::ANY_PROTO {
                assert_eq!((key.proto, key.port), (0, [0, 0]), "{key:?}");
            }
            let port = u16::from_be_bytes(key.port);
            let bits = plen.saturating_sub(policy_prefix::ANY_PORT);
            if *plen >= policy_prefix::ANY_PORT && bits < 16 {
                assert_eq!(
                    port & (0xFFFF >> bits),
                    0,
                    "port bits past prefix {plen}: {key:?}"
                );
            }
            assert!(
                c.attribution(value.attr).is_some_and(|a| !a.is_empty()),
                "attr {} resolves",
                value.attr
            );
        }
    }
    for (plen, key) in c.cidr_cells().keys() {
        let bits = u128::from_be_bytes(key.addr);
        let mask = if *plen == 0 {
            0
        } else {
            u128::MAX << (128 - plen)
        };
        assert_eq!(bits & !mask, 0, "cell key bits past /{plen}");
    }
}

#[test]
fn ipcache() {
    let mut m = Model::new();
    m.input.pods.push(weir_policy::PodInput {
        namespace: "x".into(),
        name: "hostnet".into(),
        identity: identity::HOST,
        ips: vec![ip(NODE_IP)],
        host_network: true,
        endpoint: None,
        ..Default::default()
    });
    // A stale pod claiming another node's address: the node wins.
    m.input.pods.push(weir_policy::PodInput {
        namespace: "z".into(),
        name: "stale".into(),
        identity: 999,
        ips: vec![ip(REMOTE_NODE_IP)],
        ..Default::default()
    });
    // A pod whose label set got no identity (0 would read as "any peer").
    m.input.pods.push(weir_policy::PodInput {
        namespace: "z".into(),
        name: "no-identity".into(),
        identity: 0,
        ips: vec![ip("10.0.3.99")],
        ..Default::default()
    });
    let c = m.compile();
    assert!(!c.ipcache().contains_key(&ip_key(ip("10.0.3.99"))));
    assert_eq!(c.ipcache()[&ip_key(v4(&m, "y/b"))], m.pod("y/b").identity);
    assert_eq!(c.ipcache()[&ip_key(ip("fd00::2:2"))], m.pod("y/b").identity);
    assert_eq!(c.ipcache()[&ip_key(ip(NODE_IP))], identity::HOST);
    assert_eq!(
        c.ipcache()[&ip_key(ip(REMOTE_NODE_IP))],
        identity::REMOTE_NODE
    );
    assert_eq!(
        c.ipcache().len(),
        9 * 2 + 2,
        "host-network pod adds nothing"
    );
    assert!(
        !c.endpoints().is_empty() && c.endpoints().len() == 9,
        "host-network pods are no endpoints"
    );
    let key = ip_key(ip("10.0.1.1"));
    assert_eq!(key.addr[10..12], [0xff, 0xff], "IPv4 is IPv4-mapped");
}

#[test]
fn endpoint_state() {
    let mut m = Model::new().with(vec![
        np(
            "x",
            "in-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
        ),
        np("x", "in-all", json!({"podSelector": {}, "ingress": [{}]})),
        np(
            "x",
            "out-b",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"]}),
        ),
    ]);
    m.ns_mut("y")
        .annotations
        .insert("policy.weir.dev/audit".into(), "true".into());
    let c = m.compile();
    let ep = |k: &str| c.endpoints()[&m.pod(k).endpoint.unwrap()];
    let a = ep("x/a");
    assert_eq!(a.identity, m.pod("x/a").identity);
    assert_eq!(a.flags, ep_flag::INGRESS_ENFORCED);
    assert_eq!(
        c.attribution(a.ingress_deny_attr).unwrap(),
        refs(&["x/in-a", "x/in-all"])
    );
    assert_eq!(a.egress_deny_attr, 0);
    let b = ep("x/b");
    assert_eq!(
        b.flags,
        ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED
    );
    assert_eq!(
        c.attribution(b.ingress_deny_attr).unwrap(),
        refs(&["x/in-all"])
    );
    assert_eq!(
        c.attribution(b.egress_deny_attr).unwrap(),
        refs(&["x/out-b"])
    );
    assert_eq!(
        ep("y/a").flags,
        ep_flag::AUDIT,
        "audit without isolation changes nothing"
    );
    assert_eq!(
        ep("z/a").flags,
        0,
        "unselected endpoints are listed, not enforced"
    );
    check_shape(&c);

    // Global audit.
    m.input.options.audit_all = true;
    let c = m.compile();
    assert!(
        c.endpoints()
            .values()
            .all(|e| e.flags & ep_flag::AUDIT != 0)
    );
}

#[test]
fn denial_attribution_and_audit() {
    let mut m = Model::new().with(vec![np("x", "deny", json!({"podSelector": {}}))]);
    let c = m.compile();
    let v = ingress(&m, &c, "x/a", v4(&m, "y/a"), TCP, 80);
    assert_eq!(
        (v.allowed, v.audit, v.lookup),
        (false, false, Lookup::Denied)
    );
    assert_eq!(attr_of(&c, &v), refs(&["x/deny"]));
    assert!(!v.passes());
    m.ns_mut("x")
        .annotations
        .insert("policy.weir.dev/audit".into(), "true".into());
    let c = m.compile();
    let v = ingress(&m, &c, "x/a", v4(&m, "y/a"), TCP, 80);
    assert_eq!(
        (v.allowed, v.audit),
        (false, true),
        "audit: denied but passes"
    );
    assert!(v.passes());
    assert_eq!(attr_of(&c, &v), refs(&["x/deny"]));
    // Unknown interface and unenforced direction.
    let v = evaluate(&c, 4242, direction::INGRESS, v4(&m, "y/a"), TCP, 80);
    assert_eq!((v.allowed, v.attr, v.lookup), (true, 0, Lookup::NoEndpoint));
    let v = egress(&m, &c, "x/a", v4(&m, "y/a"), TCP, 80);
    assert_eq!(
        (v.allowed, v.attr, v.lookup),
        (true, 0, Lookup::NotEnforced)
    );
}

#[test]
fn attribution_unions_over_containing_entries() {
    let m = Model::new().with(vec![
        np("x", "y-any-port", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})),
        np("x", "y-80", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]})),
        np("x", "y-tcp", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"protocol": "TCP"}]}]})),
        np("x", "y-range", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 64, "endPort": 127}]}]})),
    ]);
    let c = m.compile();
    check_shape(&c);
    let y = v4(&m, "y/b");
    let at = |proto, port| attr_of(&c, &ingress(&m, &c, "x/a", y, proto, port));
    assert_eq!(
        at(TCP, 80),
        refs(&["x/y-any-port", "x/y-80", "x/y-tcp", "x/y-range"])
    );
    assert_eq!(
        at(TCP, 100),
        refs(&["x/y-any-port", "x/y-tcp", "x/y-range"])
    );
    assert_eq!(at(TCP, 443), refs(&["x/y-any-port", "x/y-tcp"]));
    assert_eq!(at(UDP, 80), refs(&["x/y-any-port"]));
    assert_eq!(
        at(1, 0),
        refs(&["x/y-any-port"]),
        "ICMP: only a rule without ports"
    );
}

#[test]
fn any_peer_rules_fold_into_identity_entries() {
    let m = Model::new().with(vec![
        np("x", "anyone-80", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]})),
        np("x", "from-y-a", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]})),
        np("x", "from-y-b-81", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}],
                         "ports": [{"protocol": "TCP"}]}]})),
    ]);
    let c = m.compile();
    check_shape(&c);
    let ya = v4(&m, "y/a");
    let v = ingress(&m, &c, "x/a", ya, TCP, 80);
    assert_eq!(v.lookup, Lookup::Identity(m.pod("y/a").identity));
    assert_eq!(
        attr_of(&c, &v),
        refs(&["x/anyone-80", "x/from-y-a"]),
        "ANY rule inside an identity's any-port entry"
    );
    let v = ingress(&m, &c, "x/a", ya, TCP, 81);
    assert_eq!(attr_of(&c, &v), refs(&["x/from-y-a"]));
    let v = ingress(&m, &c, "x/a", v4(&m, "y/b"), TCP, 80);
    assert_eq!(attr_of(&c, &v), refs(&["x/anyone-80", "x/from-y-b-81"]));
    let v = ingress(&m, &c, "x/a", v4(&m, "z/c"), TCP, 80);
    assert_eq!(v.lookup, Lookup::Any);
    assert_eq!(attr_of(&c, &v), refs(&["x/anyone-80"]));
    let v = ingress(&m, &c, "x/a", ip("8.8.8.8"), TCP, 80);
    assert_eq!(
        (v.allowed, v.lookup),
        (true, Lookup::Any),
        "no peers includes the world"
    );
    assert!(!ingress(&m, &c, "x/a", ip("8.8.8.8"), TCP, 81).allowed);
}

#[test]
fn node_rule() {
    let deny = np(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let mut m = Model::new().with(vec![deny.clone()]);
    let c = m.compile();
    let v = ingress(&m, &c, "x/a", ip(NODE_IP), TCP, 8080);
    assert_eq!(
        (v.allowed, v.lookup),
        (true, Lookup::Identity(identity::HOST))
    );
    assert_eq!(attr_of(&c, &v), vec![PolicyRef::node_rule()]);
    assert!(attr_of(&c, &v)[0].is_node_rule());
    assert!(
        ingress(&m, &c, "x/a", ip(NODE_IP), 1, 0).allowed,
        "every protocol"
    );
    assert!(
        !ingress(&m, &c, "x/a", ip(REMOTE_NODE_IP), TCP, 80).allowed,
        "only the local node"
    );
    assert!(
        !egress(&m, &c, "x/a", ip(NODE_IP), TCP, 80).allowed,
        "only ingress"
    );
    // Together with a policy allowing anyone on 80: both named.
    m.input.policies.push(np(
        "x",
        "anyone-80",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    ));
    let c = m.compile();
    let v = ingress(&m, &c, "x/a", ip(NODE_IP), TCP, 80);
    assert_eq!(
        attr_of(&c, &v),
        refs(&[PolicyRef::NODE_RULE_NAME, "x/anyone-80"])
    );
    // Off: node traffic is like any other.
    m.input.options = Options {
        allow_host_ingress: false,
        ..Options::default()
    };
    m.input.policies = vec![deny];
    let c = m.compile();
    assert!(!ingress(&m, &c, "x/a", ip(NODE_IP), TCP, 8080).allowed);
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Aligned power-of-two blocks covering lo..=hi, counted on the binary tree
/// of the port space: a node inside the range is one block.
fn min_blocks(lo: u32, hi: u32, start: u32, size: u32) -> usize {
    let end = start + size - 1;
    if hi < start || lo > end {
        0
    } else if lo <= start && end <= hi {
        1
    } else {
        min_blocks(lo, hi, start, size / 2) + min_blocks(lo, hi, start + size / 2, size / 2)
    }
}

#[test]
fn end_port_ranges_match_exactly() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..300 {
        let lo = 1 + rng.below(65535) as u16;
        let span = match case % 4 {
            0 => rng.below(4),
            1 => rng.below(300),
            2 => rng.below(5000),
            _ => rng.below(65536),
        };
        let hi = (u64::from(lo) + span).min(65535) as u16;
        let m = Model::new().with(vec![np(
            "x",
            "range",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"podSelector": {}}], "ports": [{"protocol": "UDP", "port": lo, "endPort": hi}]}]}),
        )]);
        let c = m.compile();
        let src = v4(&m, "x/b");
        let allowed = |port: u16| ingress(&m, &c, "x/a", src, UDP, port).allowed;
        // Every port inside (all of them for small ranges, a sample otherwise).
        let step = (u32::from(hi - lo) / 500).max(1);
        let mut p = u32::from(lo);
        while p <= u32::from(hi) {
            assert!(allowed(p as u16), "{lo}..={hi}: {p} inside must match");
            p += step;
        }
        assert!(allowed(hi), "{lo}..={hi}: last port");
        if lo > 1 {
            assert!(
                !allowed(lo - 1),
                "{lo}..={hi}: {} just below must not",
                lo - 1
            );
        }
        if hi < 65535 {
            assert!(
                !allowed(hi + 1),
                "{lo}..={hi}: {} just above must not",
                hi + 1
            );
        }
        for _ in 0..50 {
            let q = rng.below(65536) as u16;
            assert_eq!(
                allowed(q),
                (lo..=hi).contains(&q),
                "{lo}..={hi}: random port {q}"
            );
        }
        assert!(
            !ingress(&m, &c, "x/a", src, TCP, lo).allowed,
            "other protocol"
        );
        // Entries: the fewest aligned blocks, once per peer identity (x/a,
        // x/b, x/c), plus the node rule's one.
        let n = c
            .endpoint_entries(m.pod("x/a").endpoint.unwrap())
            .unwrap()
            .len();
        assert_eq!(
            n,
            3 * min_blocks(u32::from(lo), u32::from(hi), 0, 1 << 16) + 1,
            "{lo}..={hi}"
        );
        check_shape(&c);
    }
}

#[test]
fn overlapping_ranges_union_attribution() {
    let m = Model::new().with(vec![
        np("x", "r1", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 1000, "endPort": 2000}]}]})),
        np("x", "r2", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 1500, "endPort": 3000}]}]})),
    ]);
    let c = m.compile();
    check_shape(&c);
    let src = v4(&m, "y/a");
    for (port, want) in [
        (999, vec![]),
        (1000, vec!["x/r1"]),
        (1499, vec!["x/r1"]),
        (1500, vec!["x/r1", "x/r2"]),
        (2000, vec!["x/r1", "x/r2"]),
        (2001, vec!["x/r2"]),
        (3000, vec!["x/r2"]),
        (3001, vec![]),
    ] {
        let v = ingress(&m, &c, "x/a", src, TCP, port);
        assert_eq!(v.allowed, !want.is_empty(), "port {port}");
        if v.allowed {
            assert_eq!(attr_of(&c, &v), refs(&want), "port {port}");
        }
    }
}

#[test]
fn ip_blocks_except_and_overlaps() {
    let m = Model::new().with(vec![
        np("x", "world-but-10", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}]}]})),
        np("x", "y-subnet", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.2.0/24", "except": ["10.0.2.3/32"]}}], "ports": [{"port": 80}]}]})),
        np("x", "nodes", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.1/32"}}]}]})),
    ]);
    let c = m.compile();
    check_shape(&c);
    // Boundaries: 0/0, 10/8, 192.168/16, 10.0.2/24, 10.0.2.3/32, 192.168.0.1/32.
    assert_eq!(c.cidr_cells().len(), 6);
    let cells: BTreeSet<u32> = c.cidr_cells().values().copied().collect();
    assert_eq!(cells.len(), 6, "one cell per boundary");
    assert!(cells.iter().all(|&i| i >= identity::CIDR_BASE));
    assert!(
        c.cidr_cells()
            .contains_key(&(96 + 8, ip_key(ip("10.0.0.0"))))
    );

    let e = |to: &str, port: u16| egress(&m, &c, "x/a", ip(to), TCP, port);
    let v = e("8.8.8.8", 443);
    assert!(v.allowed && matches!(v.lookup, Lookup::Cell(_)));
    assert_eq!(attr_of(&c, &v), refs(&["x/world-but-10"]));
    assert!(!e("10.9.9.9", 443).allowed, "excepted");
    assert!(e("10.0.2.1", 80).allowed, "pod address (y/a) by ipBlock");
    assert_eq!(attr_of(&c, &e("10.0.2.1", 80)), refs(&["x/y-subnet"]));
    assert!(!e("10.0.2.1", 81).allowed);
    assert!(!e("10.0.2.3", 80).allowed, "y/c is in the except");
    assert!(
        e(NODE_IP, 22).allowed,
        "node address by ipBlock although its identity is HOST"
    );
    assert!(
        !e(REMOTE_NODE_IP, 22).allowed,
        "192.168/16 is excepted from the world rule"
    );
    assert!(!e("fd00::2:1", 80).allowed, "IPv4 blocks never allow IPv6");
}

#[test]
fn ipv6_blocks_do_not_catch_ipv4() {
    let m = Model::new().with(vec![np(
        "x",
        "v6-world",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "::/0"}}]}]}),
    )]);
    let c = m.compile();
    check_shape(&c);
    let e = |to: &str| egress(&m, &c, "x/a", ip(to), TCP, 80).allowed;
    assert!(e("2001:db8::1") && e("fd00::2:1"));
    assert!(
        !e("8.8.8.8") && !e("10.0.2.1"),
        "an IPv6 block does not select IPv4"
    );
    assert_eq!(
        c.cidr_cells().len(),
        2,
        "::/0 plus the IPv4 boundary that keeps IPv4 out"
    );

    let m = Model::new().with(vec![np(
        "x",
        "v4-world",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
    )]);
    let c = m.compile();
    let e = |to: &str| egress(&m, &c, "x/a", ip(to), TCP, 80).allowed;
    assert!(e("8.8.8.8") && e("10.0.2.1"));
    assert!(!e("2001:db8::1"));
}

#[test]
fn cell_identities_are_stable() {
    let block = |name: &str, cidr: &str| {
        np(
            "x",
            name,
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": cidr}}]}]}),
        )
    };
    let mut m = Model::new().with(vec![block("a", "10.0.0.0/8"), block("b", "172.16.0.0/12")]);
    let mut compiler = Compiler::new();
    let c1 = compiler.compile(&m.input);
    m.input.policies.insert(0, block("c", "10.1.0.0/16"));
    let c2 = compiler.compile(&m.input);
    for (k, id) in c1.cidr_cells() {
        assert_eq!(
            c2.cidr_cells().get(k),
            Some(id),
            "unchanged prefix keeps its cell"
        );
    }
    assert_eq!(c2.cidr_cells().len(), 3);
    m.input.policies.remove(1);
    let c3 = compiler.compile(&m.input);
    assert_eq!(c3.cidr_cells().len(), 2);
    assert!(!c3.cidr_cells().contains_key(&(104, ip_key(ip("10.0.0.0")))));
    assert_eq!(
        c3.cidr_cells()[&(108, ip_key(ip("172.16.0.0")))],
        c1.cidr_cells()[&(108, ip_key(ip("172.16.0.0")))]
    );
    let ids: Vec<u32> = c2.cidr_cells().values().copied().collect();
    assert!(ids.iter().all(|&id| id >= identity::CIDR_BASE));
}

#[test]
fn named_ports_resolve_against_the_destination() {
    let mut m = Model::new();
    let http = |port: u16| PodPort {
        name: Some("http".into()),
        port,
        protocol: Protocol::Tcp,
    };
    m.pod_mut("y/a").ports = vec![http(8080)];
    m.pod_mut("y/b").ports = vec![http(9090)];
    m.pod_mut("x/a").ports = vec![http(7070)];
    m.pod_mut("x/b").ports = vec![http(6060)];
    m.input.policies = vec![
        np(
            "x",
            "egress-http",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "http"}]}]}),
        ),
        np(
            "x",
            "ingress-http",
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
            "ingress": [{"ports": [{"port": "http"}]}]}),
        ),
        np(
            "z",
            "egress-http-any",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "http"}]}]}),
        ),
    ];
    let c = m.compile();
    check_shape(&c);
    let (ya, yb) = (v4(&m, "y/a"), v4(&m, "y/b"));
    assert!(egress(&m, &c, "x/c", ya, TCP, 8080).allowed);
    assert!(
        !egress(&m, &c, "x/c", ya, TCP, 9090).allowed,
        "y/a's http is 8080"
    );
    assert!(egress(&m, &c, "x/c", yb, TCP, 9090).allowed);
    assert!(!egress(&m, &c, "x/c", yb, TCP, 8080).allowed);
    assert!(
        !egress(&m, &c, "x/c", v4(&m, "y/c"), TCP, 80).allowed,
        "y/c has no port named http"
    );
    let src = v4(&m, "z/c");
    assert!(
        ingress(&m, &c, "x/a", src, TCP, 7070).allowed
            && !ingress(&m, &c, "x/a", src, TCP, 6060).allowed
    );
    assert!(
        ingress(&m, &c, "x/b", src, TCP, 6060).allowed
            && !ingress(&m, &c, "x/b", src, TCP, 7070).allowed
    );
    // A rule without peers resolves against every pod's port of that name.
    for port in [6060, 7070, 8080, 9090] {
        assert!(
            egress(&m, &c, "z/a", ip("8.8.8.8"), TCP, port).allowed,
            "{port}"
        );
    }
    assert!(!egress(&m, &c, "z/a", ip("8.8.8.8"), TCP, 80).allowed);
}

#[test]
fn host_network_pods_are_not_selected_by_their_reserved_identity() {
    let mut m = Model::new();
    m.input.pods.push(weir_policy::PodInput {
        namespace: "y".into(),
        name: "agent".into(),
        labels: labels(&[("pod", "agent")]),
        identity: identity::HOST,
        ips: vec![ip(NODE_IP)],
        host_network: true,
        ..Default::default()
    });
    m.input.policies = vec![np(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )];
    m.input.options = Options {
        allow_host_ingress: false,
        ..Options::default()
    };
    let c = m.compile();
    assert!(ingress(&m, &c, "x/a", v4(&m, "y/a"), TCP, 80).allowed);
    assert!(
        !ingress(&m, &c, "x/a", ip(NODE_IP), TCP, 80).allowed,
        "selecting a host-network pod must not allow the whole node"
    );
}

#[test]
fn icmp_and_other_protocols() {
    let m = Model::new().with(vec![
        np("x", "all", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})),
        np("x", "tcp", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"protocol": "TCP"}]}]})),
    ]);
    let c = m.compile();
    assert!(
        ingress(&m, &c, "x/a", v4(&m, "x/b"), 1, 0).allowed,
        "ICMP by a rule without ports"
    );
    assert!(
        ingress(&m, &c, "x/a", ip("fd00::1:2"), 58, 0).allowed,
        "ICMPv6"
    );
    assert!(
        !ingress(&m, &c, "x/a", v4(&m, "x/c"), 1, 0).allowed,
        "ports rules never allow ICMP"
    );
    assert!(
        !ingress(&m, &c, "x/a", v4(&m, "x/c"), 47, 1234).allowed,
        "GRE"
    );
    // The port of a portless protocol is ignored, as the datapath keys it 0.
    assert_eq!(
        ingress(&m, &c, "x/a", v4(&m, "x/b"), 1, 777),
        ingress(&m, &c, "x/a", v4(&m, "x/b"), 1, 0)
    );
}
