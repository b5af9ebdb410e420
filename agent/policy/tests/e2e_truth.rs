//! Truth tables of the upstream Kubernetes e2e NetworkPolicy suite
//! (test/e2e/network/netpol/network_policy.go), reproduced with `evaluate`
//! on the compiled maps: both ends of every ordered pair of the x/y/z x
//! a/b/c model, over IPv4 and IPv6.

mod common;

use common::*;
use serde_json::{Value, json};

fn np(ns: &str, name: &str, spec: Value) -> std::sync::Arc<weir_policy::NetworkPolicy> {
    policy(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

/// Everything connects except traffic into `targets` from pods not in `allowed`.
fn ingress_only(targets: &[&str], allowed: &[&str]) -> String {
    let mut blocked = Vec::new();
    for t in targets {
        for s in all_pods() {
            if !allowed.contains(&s) {
                blocked.push((s, *t));
            }
        }
    }
    table(true, &blocked)
}

/// Everything connects except traffic from `sources` to pods not in `allowed`.
fn egress_only(sources: &[&str], allowed: &[&str]) -> String {
    let mut blocked = Vec::new();
    for s in sources {
        for t in all_pods() {
            if !allowed.contains(&t) {
                blocked.push((*s, t));
            }
        }
    }
    table(true, &blocked)
}

fn check(m: &Model, proto: u8, port: u16, want: &str) {
    let c = m.compile();
    let got = truth(m, &c, proto, port);
    assert_eq!(got, want, "\n{proto}/{port} got:\n{got}\nwant:\n{want}");
}

const X: [&str; 3] = ["x/a", "x/b", "x/c"];
const Y: [&str; 3] = ["y/a", "y/b", "y/c"];
const Z: [&str; 3] = ["z/a", "z/b", "z/c"];

fn a_from(peers: Value) -> Model {
    Model::new().with(vec![np(
        "x",
        "allow-x-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": peers}]}),
    )])
}

#[test]
fn default_deny_ingress() {
    let m = Model::new().with(vec![np("x", "deny-ingress", json!({"podSelector": {}}))]);
    for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 80), (SCTP, 81)] {
        check(&m, proto, port, &ingress_only(&X, &[]));
    }
}

#[test]
fn default_deny_all() {
    let m = Model::new().with(vec![np(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )]);
    let mut blocked = pairs(&all_pods(), &X);
    blocked.extend(pairs(&X, &all_pods()));
    check(&m, TCP, 80, &table(true, &blocked));
    check(&m, UDP, 81, &table(true, &blocked));
}

#[test]
fn allow_all() {
    let m = Model::new().with(vec![np(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    )]);
    check(&m, TCP, 80, &table(true, &[]));
    check(&m, UDP, 81, &table(true, &[]));
}

#[test]
fn pod_selector_within_namespace() {
    check(
        &a_from(json!([{"podSelector": {"matchLabels": {"pod": "b"}}}])),
        TCP,
        80,
        &ingress_only(&["x/a"], &["x/b"]),
    );
    check(
        &a_from(
            json!([{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]),
        ),
        TCP,
        80,
        &ingress_only(&["x/a"], &["x/b"]),
    );
}

#[test]
fn namespace_selector() {
    check(
        &a_from(json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}])),
        TCP,
        80,
        &ingress_only(&["x/a"], &Y),
    );
    check(
        &a_from(
            json!([{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]}}]),
        ),
        TCP,
        81,
        &ingress_only(&["x/a"], &Y),
    );
    check(
        &a_from(
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]),
        ),
        TCP,
        80,
        &ingress_only(&["x/a"], &Y),
    );
    check(
        &a_from(json!([{"namespaceSelector": {}}])),
        TCP,
        80,
        &table(true, &[]),
    );
}

#[test]
fn pod_selector_or_namespace_selector() {
    let m = a_from(json!([
        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}
    ]));
    let mut allowed = vec!["x/b"];
    allowed.extend(Y);
    allowed.extend(Z);
    check(&m, TCP, 80, &ingress_only(&["x/a"], &allowed));
}

#[test]
fn pod_selector_and_namespace_selector() {
    let m = a_from(json!([{
        "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
        "podSelector": {"matchLabels": {"pod": "b"}}
    }]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &["y/b", "z/b"]));
    let m = a_from(json!([{
        "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}
    }]));
    check(
        &m,
        TCP,
        80,
        &ingress_only(&["x/a"], &["y/b", "y/c", "z/b", "z/c"]),
    );
    let m = a_from(json!([{
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "podSelector": {"matchLabels": {"pod": "a"}}
    }]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &["y/a"]));
}

#[test]
fn deny_ingress_from_other_namespaces() {
    let m = Model::new().with(vec![np(
        "x",
        "same-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&X, &X));
}

#[test]
fn ports() {
    let m = Model::new().with(vec![np(
        "x",
        "allow-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81}]}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
    check(&m, TCP, 81, &ingress_only(&["x/a"], &Y));
    check(&m, UDP, 81, &ingress_only(&["x/a"], &[]));
}

#[test]
fn stacked_policies_with_overlapping_pod_selectors() {
    let rule = |port: u16| {
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": port}]}]})
    };
    let one = Model::new().with(vec![np("x", "allow-80", rule(80))]);
    check(&one, TCP, 80, &ingress_only(&["x/a"], &Y));
    check(&one, TCP, 81, &ingress_only(&["x/a"], &[]));
    let both = Model::new().with(vec![
        np("x", "allow-80", rule(80)),
        np("x", "allow-81", rule(81)),
    ]);
    check(&both, TCP, 80, &ingress_only(&["x/a"], &Y));
    check(&both, TCP, 81, &ingress_only(&["x/a"], &Y));
}

#[test]
fn named_ports() {
    // Ingress on one named port, from everywhere.
    let m = Model::new().with(vec![np(
        "x",
        "allow-81-named",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    )]);
    check(&m, TCP, 81, &table(true, &[]));
    check(&m, TCP, 80, &ingress_only(&X, &[]));
    check(&m, UDP, 81, &ingress_only(&X, &[]));
    // From a namespace, on one named port.
    let m = Model::new().with(vec![np(
        "x",
        "allow-y-80-named",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                               "ports": [{"port": "serve-80-tcp"}]}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&X, &Y));
    check(&m, TCP, 81, &ingress_only(&X, &[]));
    // Egress on one named port (plus DNS, as upstream).
    let m = Model::new().with(vec![np(
        "x",
        "allow-egress-80-named",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"ports": [{"protocol": "UDP", "port": 53}]},
            {"ports": [{"port": "serve-80-tcp"}]}
        ]}),
    )]);
    check(&m, TCP, 80, &table(true, &[]));
    check(&m, TCP, 81, &egress_only(&X, &[]));
    // A named port with the wrong protocol matches nothing.
    let m = Model::new().with(vec![np(
        "x",
        "udp-name-as-tcp",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-udp", "protocol": "TCP"}]}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&X, &[]));
    check(&m, UDP, 80, &ingress_only(&X, &[]));
}

#[test]
fn egress_deny() {
    let m = Model::new().with(vec![np(
        "x",
        "deny-egress-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    )]);
    check(&m, TCP, 80, &egress_only(&["x/a"], &[]));
    let m = Model::new().with(vec![np(
        "x",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    check(&m, UDP, 80, &egress_only(&X, &[]));
}

#[test]
fn ingress_and_egress_together() {
    let m = Model::new().with(vec![np(
        "x",
        "both",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    let mut blocked: Vec<(&str, &str)> = all_pods()
        .into_iter()
        .filter(|s| *s != "x/b")
        .map(|s| (s, "x/a"))
        .collect();
    blocked.extend(
        all_pods()
            .into_iter()
            .filter(|t| *t != "x/b")
            .map(|t| ("x/a", t)),
    );
    check(&m, TCP, 80, &table(true, &blocked));
}

#[test]
fn egress_deny_wins_over_server_allow() {
    // The client's egress allows only y/a; y's servers allow everything from x/a.
    let m = Model::new().with(vec![
        np("x", "client", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]})),
        np("y", "servers", json!({"podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]})),
    ]);
    let mut blocked: Vec<(&str, &str)> = all_pods()
        .into_iter()
        .filter(|t| *t != "y/a")
        .map(|t| ("x/a", t))
        .collect();
    for s in all_pods() {
        if s != "x/a" {
            blocked.extend(Y.iter().map(|t| (s, *t)));
        }
    }
    check(&m, TCP, 80, &table(true, &blocked));
}

#[test]
fn egress_rules_isolate_ingress_too_by_default() {
    // No policyTypes and egress rules: the policy is Ingress and Egress, so
    // with no ingress rules x/a also takes no connections.
    let m = Model::new().with(vec![np(
        "x",
        "egress-only-rules",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
}

#[test]
fn protocol_only_ports() {
    let m = Model::new().with(vec![np(
        "x",
        "udp-any-port",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    )]);
    check(&m, UDP, 80, &table(true, &[]));
    check(&m, UDP, 81, &table(true, &[]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
    // SCTP is not TCP, and a UDP port does not allow TCP.
    let m = Model::new().with(vec![np(
        "x",
        "sctp-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
    )]);
    check(&m, SCTP, 80, &table(true, &[]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
    let m = Model::new().with(vec![np(
        "x",
        "udp-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}),
    )]);
    check(&m, TCP, 81, &ingress_only(&["x/a"], &[]));
    check(&m, UDP, 81, &table(true, &[]));
}

#[test]
fn allow_all_takes_precedence() {
    let only80 = np(
        "x",
        "only-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]}),
    );
    let m = Model::new().with(vec![only80.clone()]);
    check(&m, TCP, 81, &ingress_only(&["x/a"], &[]));
    let m = Model::new().with(vec![
        only80,
        np(
            "x",
            "allow-all",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
        ),
    ]);
    check(&m, TCP, 81, &table(true, &[]));

    let e80 = np(
        "x",
        "e-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
    );
    let m = Model::new().with(vec![e80.clone()]);
    check(&m, TCP, 81, &egress_only(&["x/a"], &[]));
    let m = Model::new().with(vec![e80, np("x", "e-all", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{}]}))]);
    check(&m, TCP, 81, &table(true, &[]));
}

#[test]
fn stop_enforcing_after_delete() {
    let mut m = Model::new().with(vec![np("x", "deny", json!({"podSelector": {}}))]);
    let mut compiler = weir_policy::Compiler::new();
    let c = compiler.compile(&m.input);
    assert_eq!(truth(&m, &c, TCP, 80), ingress_only(&X, &[]));
    m.input.policies.clear();
    let c = compiler.compile(&m.input);
    assert_eq!(truth(&m, &c, TCP, 80), table(true, &[]));
}

#[test]
fn egress_to_cidr() {
    // x/b's address as a /32.
    let m = Model::new().with(vec![np(
        "x",
        "to-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.2/32"}}, {"ipBlock": {"cidr": "fd00::1:2/128"}}]}]}),
    )]);
    check(&m, TCP, 80, &egress_only(&["x/a"], &["x/b"]));
    // x's /24 except x/b.
    let except = np(
        "x",
        "to-x-except-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32"]}},
                                  {"ipBlock": {"cidr": "fd00::1:0/112", "except": ["fd00::1:2/128"]}}]}]}),
    );
    let m = Model::new().with(vec![except.clone()]);
    check(&m, TCP, 80, &egress_only(&["x/a"], &["x/a", "x/c"]));
    // An address in one block's except and another block's cidr is allowed.
    let m = Model::new().with(vec![except, np(
        "x",
        "to-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.2/32"}}, {"ipBlock": {"cidr": "fd00::1:2/128"}}]}]}),
    )]);
    check(&m, TCP, 80, &egress_only(&["x/a"], &["x/a", "x/b", "x/c"]));
}

#[test]
fn port_range() {
    let m = Model::new().with(vec![np(
        "x",
        "range",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80, "endPort": 81}]}]}),
    )]);
    check(&m, TCP, 80, &ingress_only(&["x/a"], &Y));
    check(&m, TCP, 81, &ingress_only(&["x/a"], &Y));
    check(&m, TCP, 82, &ingress_only(&["x/a"], &[]));
    check(&m, TCP, 79, &ingress_only(&["x/a"], &[]));
}

#[test]
fn label_updates() {
    // Ingress from an updated namespace.
    let mut m = a_from(json!([{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
    m.ns_mut("y").labels.insert("ns2".into(), "updated".into());
    check(&m, TCP, 80, &ingress_only(&["x/a"], &Y));

    // Ingress from an updated pod (its identity changes with its labels).
    let mut m =
        a_from(json!([{"podSelector": {"matchLabels": {"pod": "b", "replica": "updated"}}}]));
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
    let b = m.pod_mut("x/b");
    b.labels.insert("replica".into(), "updated".into());
    b.identity = 1000;
    check(&m, TCP, 80, &ingress_only(&["x/a"], &["x/b"]));

    // Deny ingress to an updated pod: the policy starts selecting it.
    let mut m = Model::new().with(vec![np(
        "x",
        "isolate",
        json!({"podSelector": {"matchLabels": {"target": "isolated"}}}),
    )]);
    check(&m, TCP, 80, &table(true, &[]));
    let a = m.pod_mut("x/a");
    a.labels.insert("target".into(), "isolated".into());
    a.identity = 1001;
    check(&m, TCP, 80, &ingress_only(&["x/a"], &[]));
}
