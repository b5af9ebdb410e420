//! Every selector operator, on its own and as the compiler applies it to
//! pods and namespaces.

mod common;

use common::*;
use serde_json::json;
use weir_policy::{LabelSelector, Operator, Requirement};

fn req(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_expressions: vec![Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }],
        ..LabelSelector::default()
    }
}

#[test]
fn operators() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let db = labels(&[("app", "db")]);
    let none = labels(&[]);

    let s = req("app", Operator::In, &["web", "api"]);
    assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));

    let s = req("app", Operator::NotIn, &["web"]);
    assert!(!s.matches(&web) && s.matches(&db));
    assert!(s.matches(&none), "NotIn holds when the key is absent");

    let s = req("tier", Operator::Exists, &[]);
    assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));

    let s = req("tier", Operator::DoesNotExist, &[]);
    assert!(!s.matches(&web) && s.matches(&db) && s.matches(&none));

    let mut s = LabelSelector::default();
    assert!(s.is_everything() && s.matches(&none) && s.matches(&web));
    s.match_labels = labels(&[("app", "web")]);
    assert!(s.matches(&web) && !s.matches(&db));
    s.match_expressions = req("tier", Operator::In, &["back"]).match_expressions;
    assert!(
        !s.matches(&web),
        "matchLabels and expressions must all hold"
    );
}

/// Allowed ingress sources of x/a under one policy whose `from` is `peer`.
fn sources(peer: serde_json::Value) -> Vec<String> {
    let m = Model::new().with(vec![policy(json!({
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [peer]}]}
    }))]);
    let c = m.compile();
    Model::keys()
        .into_iter()
        .filter(|k| k != "x/a" && probe(&m, &c, k, "x/a", TCP, 80, false))
        .collect()
}

#[test]
fn operators_in_peers() {
    assert_eq!(
        sources(
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}})
        ),
        ["x/b", "x/c"],
        "podSelector alone: the policy's namespace only"
    );
    assert_eq!(
        sources(
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]}})
        ),
        ["x/c"]
    );
    assert_eq!(
        sources(
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}})
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        sources(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}})
        ),
        ["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
    );
    assert_eq!(
        sources(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "Exists"}]},
                       "podSelector": {"matchLabels": {"pod": "b"}}})
        ),
        ["x/b", "y/b", "z/b"],
        "both: matching pods in matching namespaces"
    );
    assert_eq!(
        sources(
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}})
        ),
        ["z/a", "z/b", "z/c"],
        "the name label the API server sets"
    );
    assert_eq!(
        sources(json!({"namespaceSelector": {}})).len(),
        8,
        "every pod of every namespace"
    );
    assert_eq!(sources(json!({"podSelector": {}})), ["x/b", "x/c"]);
}

#[test]
fn pod_selector_of_the_policy() {
    // Selects x/b and x/c (NotIn a) for a deny-all ingress: only x/a stays open.
    let m = Model::new().with(vec![policy(json!({
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}}
    }))]);
    let c = m.compile();
    assert_eq!(
        truth(&m, &c, TCP, 80),
        table(true, &pairs(&all_pods(), &["x/b", "x/c"]))
    );
}
