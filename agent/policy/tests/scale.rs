//! Compile time at scale (ignored by default; run with
//! `cargo test -p weir-policy --release --test scale -- --ignored --nocapture`):
//! 10 000 policies over 10 000 pods, with 100 local endpoints (one node of a
//! large cluster) and with every pod local, full and incremental.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use serde_json::json;
use weir_policy::{Compiler, Input, NamespaceInput, NetworkPolicy, PodInput};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 100;
const APPS: usize = 50;

fn ns_policy(ns: usize, k: usize) -> Arc<NetworkPolicy> {
    let app = k % APPS;
    let peer_app = (k * 7 + 3) % APPS;
    let spec = match k % 4 {
        0 => json!({"podSelector": {"matchLabels": {"app": format!("app{app}")}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app{peer_app}")}}}],
                                 "ports": [{"port": 8000 + k as u16}]}]}),
        1 => json!({"podSelector": {"matchLabels": {"app": format!("app{app}")}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 10)}},
                                           "podSelector": {"matchLabels": {"app": format!("app{peer_app}")}}}],
                                 "ports": [{"port": 9000, "endPort": 9100}]}]}),
        2 => {
            json!({"podSelector": {"matchLabels": {"app": format!("app{app}")}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": format!("172.{}.{}.0/24", ns % 256, k % 256)}}]},
                               {"ports": [{"port": 53, "protocol": "UDP"}]}]})
        }
        _ => {
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [format!("app{app}"), format!("app{peer_app}")]}]},
                    "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]})
        }
    };
    policy(
        json!({"metadata": {"name": format!("p{k}"), "namespace": format!("ns{ns}")}, "spec": spec}),
    )
}

fn input(local: usize) -> Input {
    let mut input = Input::default();
    for ns in 0..NAMESPACES {
        input.namespaces.push(NamespaceInput {
            name: format!("ns{ns}"),
            labels: labels(&[("team", &format!("t{}", ns % 10))]),
            annotations: Default::default(),
        });
        for p in 0..PODS_PER_NS {
            let i = ns * PODS_PER_NS + p;
            let app = p % APPS;
            input.pods.push(PodInput {
                namespace: format!("ns{ns}"),
                name: format!("pod{p}"),
                labels: labels(&[("app", &format!("app{app}")), ("tier", "web")]),
                identity: 256 + (ns * APPS + app) as u32,
                ips: vec![ip(&format!(
                    "10.{}.{}.{}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                ))],
                ports: serve_ports()
                    .into_iter()
                    .chain([weir_policy::PodPort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: weir_policy::Protocol::Tcp,
                    }])
                    .collect(),
                host_network: false,
                endpoint: i
                    .is_multiple_of(NAMESPACES * PODS_PER_NS / local)
                    .then_some(1000 + i as u32),
            });
        }
        for k in 0..POLICIES_PER_NS {
            input.policies.push(ns_policy(ns, k));
        }
    }
    input
}

fn run(local: usize) {
    let mut input = input(local);
    let mut compiler = Compiler::new();
    let t = Instant::now();
    let c1 = compiler.compile(&input);
    let full = t.elapsed();
    let s = compiler.stats();
    let t = Instant::now();
    let c2 = compiler.compile(&input);
    let same = t.elapsed();
    assert!(c2.diff(&c1).is_empty());
    input.policies[0] = ns_policy(0, 1);
    let t = Instant::now();
    let c3 = compiler.compile(&input);
    let one = t.elapsed();
    let changes = c3.diff(&c2);
    let rebuilt = compiler.stats().endpoints_rebuilt;
    eprintln!(
        "{} policies, {} pods, {} local endpoints: full {full:?} ({} POLICY entries, {} cells, {} attribution ids); \
         unchanged {same:?}; one policy changed {one:?} ({rebuilt} endpoints rebuilt, {} map writes)",
        input.policies.len(),
        input.pods.len(),
        s.endpoints,
        s.policy_entries,
        s.cells,
        s.attribution_ids,
        changes.len(),
    );
}

#[test]
#[ignore = "timing; run in release"]
fn ten_thousand_policies_one_node() {
    run(100);
}

#[test]
#[ignore = "timing; run in release"]
fn ten_thousand_policies_every_pod_local() {
    run(NAMESPACES * PODS_PER_NS);
}
