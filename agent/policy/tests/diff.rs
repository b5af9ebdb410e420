//! Incremental output: the diff between two compilations holds only what
//! changed, one policy or pod change touches only the endpoints it affects,
//! unchanged endpoints are not rebuilt, and output is deterministic.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};
use weir_policy::{Compiled, Compiler, MapChanges};

fn np(ns: &str, name: &str, spec: Value) -> std::sync::Arc<weir_policy::NetworkPolicy> {
    policy(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn base() -> Model {
    Model::new().with(vec![
        np("x", "x-from-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]})),
        np("y", "y-a-egress", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.3.0/24"]}}]}]})),
        np("z", "z-b", json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {}}]}]})),
    ])
}

/// Endpoints (ifindexes) whose POLICY or POLICY_EP entries the changes touch.
fn touched(ch: &MapChanges) -> BTreeSet<u32> {
    let mut s = BTreeSet::new();
    s.extend(ch.policy.upserts.iter().map(|((_, k), _)| k.endpoint));
    s.extend(ch.policy.deletes.iter().map(|(_, k)| k.endpoint));
    s.extend(ch.policy_ep.upserts.iter().map(|(i, _)| *i));
    s.extend(ch.policy_ep.deletes.iter().copied());
    s
}

fn ifindexes(m: &Model, pods: &[&str]) -> BTreeSet<u32> {
    pods.iter().map(|p| m.pod(p).endpoint.unwrap()).collect()
}

/// Applying `ch` to `old`'s maps gives `new`'s.
fn apply_gives(old: &Compiled, ch: &MapChanges, new: &Compiled) {
    let mut policy: std::collections::BTreeMap<_, _> =
        old.policy_entries().map(|(k, v)| (*k, *v)).collect();
    for (k, v) in &ch.policy.upserts {
        policy.insert(*k, *v);
    }
    for k in &ch.policy.deletes {
        assert!(policy.remove(k).is_some(), "delete of a missing key {k:?}");
    }
    let want: std::collections::BTreeMap<_, _> =
        new.policy_entries().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(policy, want);
    let mut eps = old.endpoints().clone();
    for (k, v) in &ch.policy_ep.upserts {
        eps.insert(*k, *v);
    }
    for k in &ch.policy_ep.deletes {
        eps.remove(k);
    }
    assert_eq!(&eps, new.endpoints());
    let mut ipc = old.ipcache().clone();
    for (k, v) in &ch.ipcache.upserts {
        ipc.insert(*k, *v);
    }
    for k in &ch.ipcache.deletes {
        ipc.remove(k);
    }
    assert_eq!(&ipc, new.ipcache());
    let mut cells = old.cidr_cells().clone();
    for (k, v) in &ch.cidr_cells.upserts {
        cells.insert(*k, *v);
    }
    for k in &ch.cidr_cells.deletes {
        cells.remove(k);
    }
    assert_eq!(&cells, new.cidr_cells());
}

#[test]
fn first_diff_writes_everything_and_recompiling_writes_nothing() {
    let m = base();
    let mut compiler = Compiler::new();
    let c1 = compiler.compile(&m.input);
    let ch = c1.diff(&Compiled::default());
    assert_eq!(ch.policy.upserts.len(), c1.policy_len());
    assert_eq!(ch.policy_ep.upserts.len(), 9);
    assert_eq!(ch.ipcache.upserts.len(), c1.ipcache().len());
    assert_eq!(ch.cidr_cells.upserts.len(), 2);
    assert_eq!(ch.policy.deletes.len() + ch.policy_ep.deletes.len(), 0);
    apply_gives(&Compiled::default(), &ch, &c1);
    assert_eq!(compiler.stats().endpoints_rebuilt, 9);

    let c2 = compiler.compile(&m.input);
    assert!(c2.diff(&c1).is_empty(), "same input, nothing to write");
    assert_eq!(c2, c1);
    assert_eq!(
        compiler.stats().endpoints_rebuilt,
        0,
        "every endpoint reused"
    );

    // Everything removed: deletes only.
    let c3 = compiler.compile(&weir_policy::Input::default());
    let ch = c3.diff(&c2);
    assert!(ch.policy.upserts.is_empty());
    assert_eq!(ch.policy.deletes.len(), c2.policy_len());
    apply_gives(&c2, &ch, &c3);
}

#[test]
fn one_policy_change_touches_only_its_endpoints() {
    let mut m = base();
    let mut compiler = Compiler::new();
    let c1 = compiler.compile(&m.input);

    // Change z/z-b (selects z/b only): allow port 81 only.
    m.input.policies[2] = np(
        "z",
        "z-b",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 81}]}]}),
    );
    let c2 = compiler.compile(&m.input);
    let ch = c2.diff(&c1);
    assert_eq!(touched(&ch), ifindexes(&m, &["z/b"]));
    assert!(
        ch.policy_ep.is_empty(),
        "same isolation, same deny attribution"
    );
    assert!(ch.ipcache.is_empty() && ch.cidr_cells.is_empty());
    assert_eq!(compiler.stats().endpoints_rebuilt, 1);
    apply_gives(&c1, &ch, &c2);

    // A new policy in x selecting x/a.
    m.input.policies.push(np(
        "x",
        "x-a-deny-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    ));
    let c3 = compiler.compile(&m.input);
    let ch = c3.diff(&c2);
    assert_eq!(touched(&ch), ifindexes(&m, &["x/a"]));
    assert_eq!(
        ch.policy_ep.upserts.len(),
        1,
        "x/a's egress is now enforced"
    );
    apply_gives(&c2, &ch, &c3);

    // A namespace label change only affects endpoints whose peers it changes.
    m.ns_mut("z").labels.insert("ns".into(), "y".into());
    let c4 = compiler.compile(&m.input);
    let ch = c4.diff(&c3);
    assert_eq!(
        touched(&ch),
        ifindexes(&m, &["x/a", "x/b", "x/c"]),
        "only x-from-y's endpoints"
    );
    apply_gives(&c3, &ch, &c4);
}

#[test]
fn one_pod_change_touches_only_endpoints_that_see_it() {
    let mut m = base();
    let mut compiler = Compiler::new();
    let c1 = compiler.compile(&m.input);
    // A new pod in y (new identity): x's endpoints allow it; y/a's ipBlock
    // already covers its address; z/b selects only z pods.
    m.input.pods.push(weir_policy::PodInput {
        namespace: "y".into(),
        name: "d".into(),
        labels: labels(&[("pod", "d")]),
        identity: 500,
        ips: vec![ip("10.0.2.4")],
        ports: serve_ports(),
        host_network: false,
        endpoint: None,
    });
    let c2 = compiler.compile(&m.input);
    let ch = c2.diff(&c1);
    assert_eq!(touched(&ch), ifindexes(&m, &["x/a", "x/b", "x/c"]));
    assert_eq!(ch.ipcache.upserts.len(), 1);
    assert_eq!(
        ch.policy.upserts.len(),
        3,
        "one port-80 entry per x endpoint"
    );
    assert!(ch.policy.deletes.is_empty());
    apply_gives(&c1, &ch, &c2);

    // The endpoint of an unselected pod goes away: its POLICY_EP entry only.
    let gone = m.pod("z/c").endpoint;
    m.pod_mut("z/c").endpoint = None;
    let c3 = compiler.compile(&m.input);
    let ch = c3.diff(&c2);
    assert_eq!(ch.policy_ep.deletes, vec![gone.unwrap()]);
    assert_eq!(ch.len(), 1);
}

#[test]
fn deterministic() {
    let m = base();
    let a = Compiler::new().compile(&m.input);
    let b = Compiler::new().compile(&m.input);
    assert_eq!(a, b);
    // Input order does not matter either.
    let mut shuffled = m.clone();
    shuffled.input.policies.reverse();
    shuffled.input.pods.reverse();
    shuffled.input.namespaces.reverse();
    let c = Compiler::new().compile(&shuffled.input);
    assert_eq!(
        c.policy_entries().map(|(k, _)| *k).collect::<Vec<_>>(),
        a.policy_entries().map(|(k, _)| *k).collect::<Vec<_>>()
    );
    assert_eq!(c.ipcache(), a.ipcache());
    assert_eq!(c.cidr_cells(), a.cidr_cells());
    for ((k, va), (_, vc)) in a.policy_entries().zip(c.policy_entries()) {
        assert_eq!(a.attribution(va.attr), c.attribution(vc.attr), "{k:?}");
    }
}

#[test]
fn attribution_ids_are_stable_and_never_reused() {
    let mut m = base();
    let mut compiler = Compiler::new();
    let c1 = compiler.compile(&m.input);
    let ids1: BTreeSet<u32> = c1.attributions().keys().copied().collect();
    m.input.policies.remove(0);
    let c2 = compiler.compile(&m.input);
    m.input = base().input;
    let c3 = compiler.compile(&m.input);
    for (id, set) in c1.attributions() {
        assert_eq!(
            c3.attribution(*id),
            Some(&set[..]),
            "the same set keeps its id"
        );
        assert_eq!(compiler.attribution(*id).as_deref(), Some(&set[..]));
    }
    for (id, set) in c2.attributions() {
        if !ids1.contains(id) {
            assert!(
                c1.attributions().values().all(|s| s != set),
                "a new id is a new set"
            );
        }
    }
    assert!(compiler.attribution(0).is_none());
}
