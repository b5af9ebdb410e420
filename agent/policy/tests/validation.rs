//! Parsing and validation: every refusal names the object and the field,
//! `policyTypes` defaults like the API server, and the accepted forms parse
//! to what they mean.

mod common;

use serde_json::{Value, json};
use weir_policy::{
    Cidr, NetworkPolicy, Operator, Peer, PolicyError, PolicyPort, PortValue, Protocol,
};

fn with_spec(spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "x"},
        "spec": spec,
    })
}

/// The error for a spec, as (field, problem).
fn refused(spec: Value) -> (String, String) {
    refused_obj(with_spec(spec))
}

fn refused_obj(obj: Value) -> (String, String) {
    match NetworkPolicy::from_value(&obj) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => {
            let PolicyError::Invalid {
                object,
                field,
                problem,
            } = e.clone();
            assert!(
                e.to_string()
                    .starts_with(&format!("NetworkPolicy {object}: {field}: ")),
                "{e}"
            );
            (field, problem)
        }
    }
}

fn assert_refused(spec: Value, field: &str, problem_part: &str) {
    let (f, p) = refused(spec);
    assert_eq!(f, field, "field of: {p}");
    assert!(
        p.contains(problem_part),
        "problem {p:?} should contain {problem_part:?}"
    );
}

#[test]
fn error_names_object_and_field() {
    let e = NetworkPolicy::from_value(&with_spec(json!({
        "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/16"]}}]}]
    })))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "NetworkPolicy x/np: spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/16 is not inside \
         cidr 10.0.0.0/16 (must be a strict subset of `cidr`)"
    );
    // Without a namespace the object is in "default"; without a name it says so.
    let e = NetworkPolicy::from_value(&json!({"metadata": {}, "spec": {}})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "NetworkPolicy default/<unnamed>: metadata.name: required value"
    );
}

#[test]
fn metadata_and_kind() {
    let (f, _) = refused_obj(json!({"metadata": {"name": "Bad_Name"}}));
    assert_eq!(f, "metadata.name");
    let (f, _) = refused_obj(json!({"metadata": {"name": "ok", "namespace": "a.b"}}));
    assert_eq!(f, "metadata.namespace");
    let (f, p) =
        refused_obj(json!({"apiVersion": "networking.k8s.io/v1beta1", "metadata": {"name": "ok"}}));
    assert_eq!((f.as_str(), p.contains("expected")), ("apiVersion", true));
    let (f, _) = refused_obj(json!({"kind": "Pod", "metadata": {"name": "ok"}}));
    assert_eq!(f, "kind");
    let (f, p) = refused_obj(json!({"metadata": {"name": "ok"}, "spec": []}));
    assert_eq!(
        (f.as_str(), p.as_str()),
        ("spec", "expected a mapping, found a list")
    );
    assert!(NetworkPolicy::from_value(&json!([])).is_err());
}

#[test]
fn cidr_errors() {
    assert_refused(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "must be a valid CIDR",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "not-an-ip"}}]}]}),
        "spec.egress[0].to[0].ipBlock.cidr",
        "must be a valid CIDR",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {}}]}]}),
        "spec.egress[0].to[0].ipBlock.cidr",
        "required value",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}),
        "spec.egress[0].to[0].ipBlock.except[0]",
        "strict subset",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "fd00::/64"]}}]}]}),
        "spec.egress[0].to[0].ipBlock.except[1]",
        "is not inside cidr 10.0.0.0/8",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0"]}}]}]}),
        "spec.egress[0].to[0].ipBlock.except[0]",
        "must be a valid CIDR",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [5]}}]}]}),
        "spec.egress[0].to[0].ipBlock.except[0]",
        "expected a string",
    );
}

#[test]
fn peer_errors() {
    assert_refused(
        json!({"ingress": [{"from": [{}]}]}),
        "spec.ingress[0].from[0]",
        "must specify a peer",
    );
    assert_refused(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
        "spec.ingress[0].from[0]",
        "may not specify both ipBlock and another peer",
    );
    assert_refused(
        json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]}),
        "spec.egress[0].to[0]",
        "may not specify both ipBlock and another peer",
    );
    assert_refused(
        json!({"ingress": [{"from": {"podSelector": {}}}]}),
        "spec.ingress[0].from",
        "expected a list",
    );
}

#[test]
fn port_errors() {
    let port = |p: Value| json!({"ingress": [{"ports": [p]}]});
    assert_refused(
        port(json!({"protocol": "tcp"})),
        "spec.ingress[0].ports[0].protocol",
        "supported values",
    );
    assert_refused(
        port(json!({"protocol": "ICMP"})),
        "spec.ingress[0].ports[0].protocol",
        "supported values",
    );
    assert_refused(
        port(json!({"protocol": ""})),
        "spec.ingress[0].ports[0].protocol",
        "supported values",
    );
    assert_refused(
        port(json!({"port": 0})),
        "spec.ingress[0].ports[0].port",
        "between 1 and 65535",
    );
    assert_refused(
        port(json!({"port": 65536})),
        "spec.ingress[0].ports[0].port",
        "between 1 and 65535",
    );
    assert_refused(
        port(json!({"port": 8.5})),
        "spec.ingress[0].ports[0].port",
        "expected an integer or a port name",
    );
    assert_refused(
        port(json!({"port": "80"})),
        "spec.ingress[0].ports[0].port",
        "at least one letter",
    );
    assert_refused(
        port(json!({"port": "Http"})),
        "spec.ingress[0].ports[0].port",
        "lowercase",
    );
    assert_refused(
        port(json!({"port": "a--b"})),
        "spec.ingress[0].ports[0].port",
        "consecutive hyphens",
    );
    assert_refused(
        port(json!({"port": "averyveryverylongname"})),
        "spec.ingress[0].ports[0].port",
        "between 1 and 15",
    );
    assert_refused(
        port(json!({"endPort": 90})),
        "spec.ingress[0].ports[0].port",
        "must be specified when `endPort` is specified",
    );
    assert_refused(
        port(json!({"port": "http", "endPort": 90})),
        "spec.ingress[0].ports[0].endPort",
        "non-numeric",
    );
    assert_refused(
        port(json!({"port": 90, "endPort": 80})),
        "spec.ingress[0].ports[0].endPort",
        "greater than or equal to `port`",
    );
    assert_refused(
        port(json!({"port": 90, "endPort": 70000})),
        "spec.ingress[0].ports[0].endPort",
        "between 1 and 65535",
    );
    assert_refused(
        port(json!({"port": 90, "endPort": "100"})),
        "spec.ingress[0].ports[0].endPort",
        "expected an integer",
    );
}

#[test]
fn policy_types_errors() {
    assert_refused(
        json!({"policyTypes": ["ingress"]}),
        "spec.policyTypes[0]",
        "supported values",
    );
    assert_refused(
        json!({"policyTypes": ["Ingress", "Both"]}),
        "spec.policyTypes[1]",
        "supported values",
    );
    assert_refused(
        json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}),
        "spec.policyTypes",
        "more than two",
    );
    assert_refused(
        json!({"policyTypes": "Ingress"}),
        "spec.policyTypes",
        "expected a list",
    );
}

#[test]
fn selector_errors() {
    let sel = |s: Value| json!({"podSelector": s});
    let expr = |e: Value| sel(json!({"matchExpressions": [e]}));
    assert_refused(
        expr(json!({"key": "app", "operator": "Equals", "values": ["a"]})),
        "spec.podSelector.matchExpressions[0].operator",
        "not a valid selector operator",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "in", "values": ["a"]})),
        "spec.podSelector.matchExpressions[0].operator",
        "not a valid selector operator",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "In", "values": []})),
        "spec.podSelector.matchExpressions[0].values",
        "must be specified when `operator` is 'In' or 'NotIn'",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "NotIn"})),
        "spec.podSelector.matchExpressions[0].values",
        "must be specified",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "Exists", "values": ["a"]})),
        "spec.podSelector.matchExpressions[0].values",
        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "DoesNotExist", "values": ["a"]})),
        "spec.podSelector.matchExpressions[0].values",
        "may not be specified",
    );
    assert_refused(
        expr(json!({"key": "bad key", "operator": "Exists"})),
        "spec.podSelector.matchExpressions[0].key",
        "name part must consist of",
    );
    assert_refused(
        expr(json!({"operator": "Exists"})),
        "spec.podSelector.matchExpressions[0].key",
        "required value",
    );
    assert_refused(
        expr(json!({"key": "app", "operator": "In", "values": ["bad value"]})),
        "spec.podSelector.matchExpressions[0].values[0]",
        "a valid label must be",
    );
    assert_refused(
        sel(json!({"matchLabels": {"Example.com/app": "a"}})),
        "spec.podSelector.matchLabels",
        "prefix part must be a lowercase RFC 1123 subdomain",
    );
    assert_refused(
        sel(json!({"matchLabels": {"app": "-a"}})),
        "spec.podSelector.matchLabels[app]",
        "a valid label must be",
    );
    assert_refused(
        sel(json!({"matchLabels": {"app": 5}})),
        "spec.podSelector.matchLabels[app]",
        "expected a string",
    );
    // Selectors in peers are checked the same way, with their path.
    assert_refused(
        json!({"egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In"}]}}]}]}),
        "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values",
        "must be specified",
    );
}

#[test]
fn policy_types_default() {
    let p = |spec: Value| NetworkPolicy::from_value(&with_spec(spec)).unwrap();
    let x = p(json!({}));
    assert_eq!(
        (x.ingress_type, x.egress_type),
        (true, false),
        "empty spec: Ingress only"
    );
    let x = p(json!({"egress": [{}]}));
    assert_eq!(
        (x.ingress_type, x.egress_type),
        (true, true),
        "egress rules add Egress"
    );
    let x = p(json!({"egress": []}));
    assert_eq!(
        (x.ingress_type, x.egress_type),
        (true, false),
        "an empty egress list does not"
    );
    let x = p(json!({"ingress": [{}], "egress": [{}], "policyTypes": ["Egress"]}));
    assert_eq!(
        (x.ingress_type, x.egress_type),
        (false, true),
        "explicit types win"
    );
    let x = p(json!({"policyTypes": []}));
    assert_eq!(
        (x.ingress_type, x.egress_type),
        (true, false),
        "empty list defaults too"
    );
    let x = p(json!({"policyTypes": ["Ingress", "Egress"]}));
    assert_eq!((x.ingress_type, x.egress_type), (true, true));
}

#[test]
fn accepted_forms() {
    let p = NetworkPolicy::from_value(&with_spec(json!({
        "podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
        "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": {"pod": "a"}}},
                {"namespaceSelector": {}},
                {"podSelector": {}, "namespaceSelector": {"matchLabels": {"ns": "y"}}},
                {"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.5.0/24"]}}
            ],
            "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"}, {"protocol": "SCTP"}, {"port": 8000, "endPort": 8080}]
        }],
        "someFutureField": {"ignored": true},
    })))
    .unwrap();
    assert_eq!(p.pod_selector.match_labels["app"], "web");
    assert_eq!(
        p.pod_selector.match_expressions[0].operator,
        Operator::NotIn
    );
    let r = &p.ingress[0];
    assert_eq!(r.peers.len(), 4);
    assert!(matches!(
        &r.peers[0],
        Peer::Pods {
            pod_selector: Some(_),
            namespace_selector: None
        }
    ));
    assert!(
        matches!(&r.peers[1], Peer::Pods { pod_selector: None, namespace_selector: Some(s) } if s.is_everything())
    );
    let Peer::IpBlock(b) = &r.peers[3] else {
        panic!()
    };
    assert_eq!(
        b.cidr,
        Cidr::parse("10.1.0.0/16").unwrap(),
        "host bits cleared"
    );
    assert_eq!(b.except, vec![Cidr::parse("10.1.5.0/24").unwrap()]);
    assert_eq!(
        r.ports,
        vec![
            PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortValue::Number(80)),
                end_port: None
            },
            PolicyPort {
                protocol: Protocol::Udp,
                port: Some(PortValue::Name("dns".into())),
                end_port: None
            },
            PolicyPort {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None
            },
            PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortValue::Number(8000)),
                end_port: Some(8080)
            },
        ]
    );
    // Null counts as absent; no spec means `{}`: select all, deny ingress.
    let p = NetworkPolicy::from_value(
        &json!({"metadata": {"name": "deny"}, "spec": {"ingress": null, "podSelector": null}}),
    )
    .unwrap();
    assert!(p.pod_selector.is_everything() && p.ingress.is_empty() && p.ingress_type);
    assert_eq!(p.namespace, "default");
    // Serializable (explain output), and round-trips.
    let text = serde_json::to_string(&p).unwrap();
    let back: NetworkPolicy = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
}
