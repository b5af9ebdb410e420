//! `explain`: the verdict at both ends and the exact rules behind it, for
//! local and non-local pods and for addresses.

mod common;

use common::*;
use serde_json::{Value, json};
use weir_policy::{
    ExplainError, ExplainQuery, ExplainTarget, Lookup, PolicyRef, RuleMatch, Via, explain,
};

fn np(ns: &str, name: &str, spec: Value) -> std::sync::Arc<weir_policy::NetworkPolicy> {
    policy(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn q(from: &str, to: ExplainTarget, proto: u8, port: u16) -> ExplainQuery {
    let (ns, name) = from.split_once('/').unwrap();
    ExplainQuery {
        from: (ns.into(), name.into()),
        to,
        proto,
        port,
    }
}

fn pod(key: &str) -> ExplainTarget {
    let (ns, name) = key.split_once('/').unwrap();
    ExplainTarget::Pod {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn r(ns: &str, name: &str) -> PolicyRef {
    PolicyRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// policy, rule, peer, port, via
type RuleRow = (String, String, Option<String>, Option<String>, Via);

fn model() -> Model {
    let mut m = Model::new().with(vec![
        np("x", "web", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}, {"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
             "ports": [{"port": 81}, {"port": "serve-80-tcp"}]},
            {"from": [{"ipBlock": {"cidr": "10.0.2.0/24"}}], "ports": [{"port": 80}]}
        ]})),
        np("x", "all-80", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]})),
        np("y", "egress", json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}
        ]})),
    ]);
    // x/a is not a local endpoint: explain computes it anyway.
    m.pod_mut("x/a").endpoint = None;
    m
}

#[test]
fn allowed_with_every_rule_named() {
    let m = model();
    let e = explain(&m.input, &q("y/b", pod("x/a"), TCP, 80)).unwrap();
    assert!(e.allowed && e.passes);
    assert_eq!(e.from.pod.as_deref(), Some("y/b"));
    assert_eq!(e.to.identity, m.pod("x/a").identity);
    assert_eq!(e.to.endpoint, None);

    assert_eq!(e.egress.endpoint, "y/b");
    assert!(e.egress.enforced && e.egress.verdict.allowed);
    assert_eq!(e.egress.isolated_by, vec![r("y", "egress")]);
    assert_eq!(
        e.egress.rules,
        vec![RuleMatch {
            policy: r("y", "egress"),
            rule: "spec.egress[0]".into(),
            peer: Some("spec.egress[0].to[0]".into()),
            port: None,
            via: Via::Identity,
        }]
    );

    let i = e.ingress.as_ref().unwrap();
    assert_eq!(i.isolated_by, vec![r("x", "all-80"), r("x", "web")]);
    assert_eq!(i.verdict.lookup, Lookup::Identity(m.pod("y/b").identity));
    let got: Vec<RuleRow> = i
        .rules
        .iter()
        .map(|m| {
            (
                m.policy.to_string(),
                m.rule.clone(),
                m.peer.clone(),
                m.port.clone(),
                m.via,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "x/all-80".into(),
                "spec.ingress[0]".into(),
                None,
                Some("spec.ingress[0].ports[0]".into()),
                Via::Any
            ),
            (
                "x/web".into(),
                "spec.ingress[0]".into(),
                Some("spec.ingress[0].from[1]".into()),
                Some("spec.ingress[0].ports[1]".into()),
                Via::Identity
            ),
            (
                "x/web".into(),
                "spec.ingress[1]".into(),
                Some("spec.ingress[1].from[0]".into()),
                Some("spec.ingress[1].ports[0]".into()),
                Via::Cidr
            ),
        ]
    );
    // What the datapath reports: the identity lookup's entry (with the ANY
    // rule folded in; the ipBlock rule is reached only by lookup 2).
    assert_eq!(i.attribution, vec![r("x", "all-80"), r("x", "web")]);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json["ingress"]["rules"][1]["peer"],
        "spec.ingress[0].from[1]"
    );
}

#[test]
fn denied_names_the_isolating_policies() {
    let m = model();
    let e = explain(&m.input, &q("z/b", pod("x/a"), TCP, 81)).unwrap();
    assert!(!e.allowed && !e.passes);
    assert!(!e.egress.enforced && e.egress.verdict.allowed);
    assert_eq!(e.egress.verdict.lookup, Lookup::NotEnforced);
    let i = e.ingress.unwrap();
    assert_eq!(i.verdict.lookup, Lookup::Denied);
    assert!(i.rules.is_empty());
    assert_eq!(i.attribution, vec![r("x", "all-80"), r("x", "web")]);

    // Egress denied at the source, to an address outside the cluster.
    let e = explain(
        &m.input,
        &q("y/b", ExplainTarget::Ip(ip("8.8.8.8")), UDP, 53),
    )
    .unwrap();
    assert!(!e.allowed);
    assert!(e.ingress.is_none(), "not a pod: no ingress side");
    assert_eq!(e.to.identity, weir_common::identity::WORLD);
    assert_eq!(e.egress.attribution, vec![r("y", "egress")]);
}

#[test]
fn addresses_of_pods_are_pods() {
    let m = model();
    let e = explain(
        &m.input,
        &q("x/c", ExplainTarget::Ip(ip("fd00::1:1")), TCP, 81),
    )
    .unwrap();
    assert_eq!(e.to.pod.as_deref(), Some("x/a"));
    assert_eq!(
        e.from.ip,
        Some(ip("fd00::1:3")),
        "source address of the same family"
    );
    assert!(e.allowed);
    let i = e.ingress.unwrap();
    assert_eq!(i.rules.len(), 1);
    assert_eq!(i.rules[0].peer.as_deref(), Some("spec.ingress[0].from[0]"));
    assert_eq!(i.rules[0].port.as_deref(), Some("spec.ingress[0].ports[0]"));
}

#[test]
fn audit_and_node_rule() {
    let mut m = model();
    m.ns_mut("x")
        .annotations
        .insert("policy.weir.dev/audit".into(), "true".into());
    let e = explain(&m.input, &q("z/b", pod("x/a"), TCP, 81)).unwrap();
    assert!(!e.allowed && e.passes, "audit mode passes the denial");
    assert!(e.ingress.unwrap().verdict.audit);

    // The node's host-network agent probing x/a.
    m.input.pods.push(weir_policy::PodInput {
        namespace: "y".into(),
        name: "node-agent".into(),
        identity: weir_common::identity::HOST,
        ips: vec![ip(NODE_IP)],
        host_network: true,
        ..Default::default()
    });
    let e = explain(&m.input, &q("y/node-agent", pod("x/a"), TCP, 8080)).unwrap();
    // Host-network pods are policed like any pod (by their cgroup); no
    // policy of y isolates this one.
    assert!(!e.egress.enforced && e.egress.verdict.allowed);
    let i = e.ingress.unwrap();
    assert!(i.verdict.allowed);
    assert_eq!(i.rules.len(), 1);
    assert_eq!(i.rules[0].via, Via::NodeRule);
    assert_eq!(i.attribution, vec![PolicyRef::node_rule()]);
}

#[test]
fn unknown_pod() {
    let m = model();
    assert_eq!(
        explain(&m.input, &q("x/nope", pod("x/a"), TCP, 80)).unwrap_err(),
        ExplainError::UnknownPod {
            namespace: "x".into(),
            name: "nope".into()
        }
    );
    assert!(explain(&m.input, &q("x/a", pod("q/a"), TCP, 80)).is_err());
}

#[test]
fn agrees_with_compile_for_local_endpoints() {
    let m = Model::new().with(model().input.policies);
    let c = m.compile();
    for from in Model::keys() {
        for to in Model::keys() {
            for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 80)] {
                let e = explain(&m.input, &q(&from, pod(&to), proto, port)).unwrap();
                assert_eq!(
                    e.allowed,
                    probe(&m, &c, &from, &to, proto, port, false),
                    "{from} -> {to} {proto}/{port}"
                );
                if e.egress.enforced {
                    assert_eq!(e.egress.verdict.allowed, !e.egress.rules.is_empty());
                }
                if let Some(i) = &e.ingress
                    && i.enforced
                {
                    assert_eq!(
                        i.verdict.allowed,
                        !i.rules.is_empty(),
                        "allowed exactly when a rule matches"
                    );
                }
            }
        }
    }
}
