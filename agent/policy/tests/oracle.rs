//! Random policies over the e2e model, checked against a second, direct
//! implementation of the Kubernetes semantics (written here from the API
//! documentation, sharing nothing with the compiler but the parsed policy):
//! every verdict at both ends, for every ordered pair, protocol, port and
//! address family, and the attribution of every allowed and denied verdict.
//! The same run also checks that recompiling incrementally after each change
//! gives the same maps as compiling from scratch.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use weir_common::direction;
use weir_policy::{
    Compiled, Compiler, Input, NetworkPolicy, Peer, PodInput, PolicyRef, PortValue, Rule, evaluate,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

fn pod_selector(r: &mut Rng) -> Value {
    r.pick(&[
        json!({}),
        json!({"matchLabels": {"pod": "a"}}),
        json!({"matchLabels": {"pod": "b"}}),
        json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]}),
        json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]}),
        json!({"matchExpressions": [{"key": "pod", "operator": "Exists"}]}),
        json!({"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}),
    ])
}

fn namespace_selector(r: &mut Rng) -> Value {
    r.pick(&[
        json!({}),
        json!({"matchLabels": {"ns": "y"}}),
        json!({"matchLabels": {"kubernetes.io/metadata.name": "x"}}),
        json!({"matchExpressions": [{"key": "ns", "operator": "In", "values": ["x", "z"]}]}),
        json!({"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}),
    ])
}

fn ip_block(r: &mut Rng) -> Value {
    r.pick(&[
        json!({"cidr": "10.0.0.0/8"}),
        json!({"cidr": "10.0.0.0/8", "except": ["10.0.2.0/24"]}),
        json!({"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32", "10.0.1.3/32"]}),
        json!({"cidr": "10.0.2.0/23"}),
        json!({"cidr": "10.0.3.1/32"}),
        json!({"cidr": "0.0.0.0/0", "except": ["10.0.1.0/24"]}),
        json!({"cidr": "fd00::/16"}),
        json!({"cidr": "fd00::2:0/112", "except": ["fd00::2:1/128"]}),
        json!({"cidr": "::/0", "except": ["fd00::3:0/112"]}),
    ])
}

fn port(r: &mut Rng) -> Value {
    r.pick(&[
        json!({"port": 80}),
        json!({"port": 81, "protocol": "UDP"}),
        json!({"protocol": "UDP"}),
        json!({"protocol": "SCTP", "port": 80}),
        json!({"port": "serve-81-tcp"}),
        json!({"port": "serve-80-udp", "protocol": "UDP"}),
        json!({"port": "serve-80-udp"}),
        json!({"port": 79, "endPort": 81}),
        json!({"port": 81, "endPort": 82, "protocol": "SCTP"}),
    ])
}

fn rule(r: &mut Rng, peers_key: &str, with_blocks: bool) -> Value {
    let mut rule = serde_json::Map::new();
    let n_peers = r.below(3);
    if n_peers > 0 {
        let mut peers = Vec::new();
        for _ in 0..n_peers {
            peers.push(match r.below(if with_blocks { 4 } else { 3 }) {
                0 => json!({"podSelector": pod_selector(r)}),
                1 => json!({"namespaceSelector": namespace_selector(r)}),
                2 => json!({"podSelector": pod_selector(r), "namespaceSelector": namespace_selector(r)}),
                _ => json!({"ipBlock": ip_block(r)}),
            });
        }
        rule.insert(peers_key.into(), Value::Array(peers));
    }
    let n_ports = r.below(3);
    if n_ports > 0 {
        rule.insert(
            "ports".into(),
            Value::Array((0..n_ports).map(|_| port(r)).collect()),
        );
    }
    Value::Object(rule)
}

fn random_policy(r: &mut Rng, name: &str, with_blocks: bool) -> Arc<NetworkPolicy> {
    let mut spec = serde_json::Map::new();
    spec.insert("podSelector".into(), pod_selector(r));
    for (key, peers) in [("ingress", "from"), ("egress", "to")] {
        let n = r.below(3);
        if n > 0 || r.below(2) == 0 {
            let rules: Vec<Value> = (0..n).map(|_| rule(r, peers, with_blocks)).collect();
            spec.insert(key.into(), Value::Array(rules));
        }
    }
    match r.below(4) {
        0 => {}
        1 => {
            spec.insert("policyTypes".into(), json!(["Ingress"]));
        }
        2 => {
            spec.insert("policyTypes".into(), json!(["Egress"]));
        }
        _ => {
            spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
        }
    }
    let ns = r.pick(&NAMESPACES);
    policy(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

#[allow(clippy::too_many_arguments, reason = "test oracle")]
/// The reference: does `rule` allow traffic with `peer` (a pod at `peer_ip`)
/// to destination pod `dst` on (proto, port)?
fn rule_allows(
    input: &Input,
    policy: &NetworkPolicy,
    rule: &Rule,
    peer: &PodInput,
    peer_ip: IpAddr,
    dst: &PodInput,
    proto: u8,
    port: u16,
) -> bool {
    let ns_labels = |ns: &str| {
        input
            .namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| n.labels.clone())
            .unwrap_or_default()
    };
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|p| match p {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => {
                let ns_ok = match namespace_selector {
                    None => peer.namespace == policy.namespace,
                    Some(s) => s.matches(&ns_labels(&peer.namespace)),
                };
                ns_ok
                    && pod_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&peer.labels))
            }
            Peer::IpBlock(b) => b.contains_addr(peer_ip),
        });
    let port_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|p| {
            p.protocol.ip_proto() == proto
                && match &p.port {
                    None => true,
                    Some(PortValue::Number(lo)) => {
                        (*lo..=p.end_port.unwrap_or(*lo)).contains(&port)
                    }
                    Some(PortValue::Name(name)) => dst.ports.iter().any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol == p.protocol
                            && cp.port == port
                    }),
                }
        });
    peer_ok && port_ok
}

struct Expect {
    allowed: bool,
    /// Policies isolating the endpoint in this direction.
    isolating: BTreeSet<PolicyRef>,
    /// Policies with a rule allowing it.
    allowing: BTreeSet<PolicyRef>,
    /// Those allowing it through an ipBlock peer only.
    allowing_by_block: BTreeSet<PolicyRef>,
}

#[allow(clippy::too_many_arguments, reason = "test oracle")]
fn reference(
    input: &Input,
    ingress: bool,
    endpoint: &PodInput,
    peer: &PodInput,
    peer_ip: IpAddr,
    dst: &PodInput,
    proto: u8,
    port: u16,
) -> Expect {
    let mut e = Expect {
        allowed: false,
        isolating: BTreeSet::new(),
        allowing: BTreeSet::new(),
        allowing_by_block: BTreeSet::new(),
    };
    for p in &input.policies {
        let has = if ingress {
            p.ingress_type
        } else {
            p.egress_type
        };
        if p.namespace != endpoint.namespace || !has || !p.pod_selector.matches(&endpoint.labels) {
            continue;
        }
        e.isolating.insert(PolicyRef::of(p));
        let rules = if ingress { &p.ingress } else { &p.egress };
        let mut by_block_only = true;
        let mut any = false;
        for rule in rules {
            if rule_allows(input, p, rule, peer, peer_ip, dst, proto, port) {
                any = true;
                let mut without_blocks = rule.clone();
                without_blocks
                    .peers
                    .retain(|p| !matches!(p, Peer::IpBlock(_)));
                let blocks_only = !rule.peers.is_empty() && without_blocks.peers.is_empty();
                if !blocks_only
                    && (rule.peers.is_empty()
                        || rule_allows(input, p, &without_blocks, peer, peer_ip, dst, proto, port))
                {
                    by_block_only = false;
                }
            }
        }
        if any {
            e.allowing.insert(PolicyRef::of(p));
            if by_block_only {
                e.allowing_by_block.insert(PolicyRef::of(p));
            }
        }
    }
    e.allowed = e.isolating.is_empty() || !e.allowing.is_empty();
    e
}

fn set(c: &Compiled, attr: u32) -> BTreeSet<PolicyRef> {
    c.attribution(attr)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default()
}

fn check_all(m: &Model, c: &Compiled, case: usize) -> usize {
    let mut checked = 0;
    let input = &m.input;
    for from in &input.pods {
        for to in &input.pods {
            if from.name == to.name && from.namespace == to.namespace {
                continue;
            }
            for v6 in [false, true] {
                let pick = |p: &PodInput| *p.ips.iter().find(|a| a.is_ipv6() == v6).unwrap();
                let (src_ip, dst_ip) = (pick(from), pick(to));
                for (proto, port) in [
                    (TCP, 80),
                    (TCP, 81),
                    (TCP, 82),
                    (UDP, 80),
                    (UDP, 81),
                    (SCTP, 80),
                    (SCTP, 82),
                    (1, 0),
                ] {
                    for ingress in [false, true] {
                        let (endpoint, peer, peer_ip, dir) = if ingress {
                            (to, from, src_ip, direction::INGRESS)
                        } else {
                            (from, to, dst_ip, direction::EGRESS)
                        };
                        let want =
                            reference(input, ingress, endpoint, peer, peer_ip, to, proto, port);
                        let got =
                            evaluate(c, endpoint.endpoint.unwrap(), dir, peer_ip, proto, port);
                        let what = format!(
                            "case {case}: {} {}/{} -> {}/{} {proto}/{port} v6={v6}",
                            if ingress { "ingress" } else { "egress" },
                            from.namespace,
                            from.name,
                            to.namespace,
                            to.name
                        );
                        assert_eq!(
                            got.allowed, want.allowed,
                            "{what}\npolicies: {:#?}",
                            input.policies
                        );
                        if want.isolating.is_empty() {
                            assert_eq!(got.attr, 0, "{what}");
                        } else if !got.allowed {
                            assert_eq!(
                                set(c, got.attr),
                                want.isolating,
                                "{what}: denial names the isolating policies"
                            );
                        } else {
                            let got_set = set(c, got.attr);
                            assert!(
                                got_set.is_subset(&want.allowing),
                                "{what}: {got_set:?} names a policy that does not allow it"
                            );
                            let must: BTreeSet<PolicyRef> = want
                                .allowing
                                .difference(&want.allowing_by_block)
                                .cloned()
                                .collect();
                            assert!(
                                must.is_subset(&got_set),
                                "{what}: {got_set:?} misses some of {must:?}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    checked
}

/// Maps with attribution ids replaced by the policy sets they name, to
/// compare two compilers whose id histories differ.
fn semantic(c: &Compiled) -> String {
    let s = |id: u32| {
        set(c, id)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = String::new();
    for (i, ep) in c.endpoints() {
        out += &format!(
            "ep {i} {} {} [{}] [{}]\n",
            ep.identity,
            ep.flags,
            s(ep.ingress_deny_attr),
            s(ep.egress_deny_attr)
        );
    }
    // Cell ids depend on the compiler's history; name cells by their prefix.
    let cells: std::collections::BTreeMap<u32, String> = c
        .cidr_cells()
        .iter()
        .map(|((plen, k), id)| (*id, format!("{}/{plen}", std::net::Ipv6Addr::from(k.addr))))
        .collect();
    let mut lines: Vec<String> = c
        .policy_entries()
        .map(|((plen, k), v)| {
            let peer = cells
                .get(&k.identity)
                .cloned()
                .unwrap_or_else(|| k.identity.to_string());
            format!(
                "policy {} {plen} {peer} {} {} {:?} [{}]\n",
                k.endpoint,
                k.direction,
                k.proto,
                k.port,
                s(v.attr)
            )
        })
        .collect();
    lines.sort();
    out.extend(lines);
    for (k, v) in c.ipcache() {
        out += &format!("ipcache {k:?} {v}\n");
    }
    for (plen, k) in c.cidr_cells().keys() {
        out += &format!("cell {plen} {k:?}\n");
    }
    out
}

#[test]
fn random_policies_match_the_reference() {
    let mut r = Rng(0x2545_F491_4F6C_DD1D);
    let mut incremental = Compiler::new();
    let mut total = 0;
    let cases = 120;
    let mut m = Model::new();
    for case in 0..cases {
        // Half the cases without ipBlocks, where attribution must be exact.
        let with_blocks = case % 2 == 0;
        // Mutate the previous set a little (incremental path) or start over.
        if case % 5 == 0 {
            m.input.policies.clear();
        }
        let n = 1 + r.below(3);
        for i in 0..n {
            if !m.input.policies.is_empty() && r.below(2) == 0 {
                let at = r.below(m.input.policies.len());
                m.input.policies.remove(at);
            }
            m.input
                .policies
                .push(random_policy(&mut r, &format!("p{case}-{i}"), with_blocks));
        }
        let fresh = Compiler::new().compile(&m.input);
        let inc = incremental.compile(&m.input);
        assert_eq!(
            semantic(&inc),
            semantic(&fresh),
            "case {case}: incremental compile differs from a fresh one"
        );
        total += check_all(&m, &inc, case);
    }
    eprintln!("{total} verdicts checked against the reference");
}
