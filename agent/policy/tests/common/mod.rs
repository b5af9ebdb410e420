//! Shared test fixtures: policies from JSON, and the upstream e2e model
//! (namespaces x, y, z; pods a, b, c in each, labelled `pod: <name>`,
//! namespaces labelled `ns: <name>`, serving 80 and 81 on TCP and UDP with
//! ports named `serve-80-tcp` and so on).
#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use weir_common::direction;
use weir_policy::{
    Compiled, Compiler, Input, Labels, NamespaceInput, NetworkPolicy, NodeInput, PodInput, PodPort,
    Protocol, evaluate,
};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// A policy from JSON; panics with the error when it is refused.
pub fn policy(v: Value) -> Arc<NetworkPolicy> {
    Arc::new(NetworkPolicy::from_value(&v).unwrap_or_else(|e| panic!("policy refused: {e}")))
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// This node's address in the model.
pub const NODE_IP: &str = "192.168.0.1";
/// Another node's address.
pub const REMOTE_NODE_IP: &str = "192.168.0.2";

/// The e2e model as compiler input.
#[derive(Clone)]
pub struct Model {
    pub input: Input,
}

impl Model {
    pub fn new() -> Self {
        let mut input = Input::default();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            input.namespaces.push(NamespaceInput {
                name: ns.to_string(),
                labels: labels(&[("ns", ns), ("kubernetes.io/metadata.name", ns)]),
                annotations: Labels::new(),
            });
            for (p, pod) in PODS.iter().enumerate() {
                let i = (n * 3 + p) as u32;
                input.pods.push(PodInput {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    labels: labels(&[("pod", pod)]),
                    identity: 256 + i,
                    ips: vec![
                        ip(&format!("10.0.{}.{}", n + 1, p + 1)),
                        ip(&format!("fd00::{}:{}", n + 1, p + 1)),
                    ],
                    ports: serve_ports(),
                    host_network: false,
                    endpoint: Some(100 + i),
                });
            }
        }
        input.nodes = NodeInput {
            local_ips: vec![ip(NODE_IP)],
            remote_ips: vec![ip(REMOTE_NODE_IP)],
        };
        Model { input }
    }

    pub fn with(mut self, policies: Vec<Arc<NetworkPolicy>>) -> Self {
        self.input.policies = policies;
        self
    }

    pub fn pod(&self, key: &str) -> &PodInput {
        let (ns, name) = key.split_once('/').unwrap();
        self.input
            .pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    pub fn pod_mut(&mut self, key: &str) -> &mut PodInput {
        let (ns, name) = key.split_once('/').unwrap();
        self.input
            .pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    pub fn ns_mut(&mut self, name: &str) -> &mut NamespaceInput {
        self.input
            .namespaces
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap()
    }

    /// Every pod as `ns/name`, in e2e order.
    pub fn keys() -> Vec<String> {
        NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
            .collect()
    }

    pub fn compile(&self) -> Compiled {
        Compiler::new().compile(&self.input)
    }
}

pub fn serve_ports() -> Vec<PodPort> {
    let mut v = Vec::new();
    for port in [80u16, 81] {
        for (proto, name) in [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Sctp, "sctp"),
        ] {
            v.push(PodPort {
                name: Some(format!("serve-{port}-{name}")),
                port,
                protocol: proto,
            });
        }
    }
    v
}

/// Whether a new connection from pod `from` to pod `to` gets through both
/// ends (egress at the source, ingress at the destination), IPv4 or IPv6.
pub fn probe(
    m: &Model,
    c: &Compiled,
    from: &str,
    to: &str,
    proto: u8,
    port: u16,
    v6: bool,
) -> bool {
    let (f, t) = (m.pod(from), m.pod(to));
    let pick = |p: &PodInput| *p.ips.iter().find(|a| a.is_ipv6() == v6).unwrap();
    let egress = evaluate(
        c,
        f.endpoint.unwrap(),
        direction::EGRESS,
        pick(t),
        proto,
        port,
    );
    let ingress = evaluate(
        c,
        t.endpoint.unwrap(),
        direction::INGRESS,
        pick(f),
        proto,
        port,
    );
    egress.allowed && ingress.allowed
}

/// The e2e truth table: one line per source, `X` connected / `.` blocked,
/// self-traffic shown as `-` (not asserted upstream).
pub fn truth(m: &Model, c: &Compiled, proto: u8, port: u16) -> String {
    let keys = Model::keys();
    let mut out = String::new();
    for from in &keys {
        out.push_str(from);
        out.push(' ');
        for to in &keys {
            let v4 = probe(m, c, from, to, proto, port, false);
            let v6 = probe(m, c, from, to, proto, port, true);
            assert_eq!(
                v4, v6,
                "IPv4 and IPv6 disagree for {from} -> {to} {proto}/{port}"
            );
            out.push(if from == to {
                '-'
            } else if v4 {
                'X'
            } else {
                '.'
            });
        }
        out.push('\n');
    }
    out
}

/// A truth table where every pair is `all` except the listed pairs.
pub fn table(all: bool, except: &[(&str, &str)]) -> String {
    let keys = Model::keys();
    let mut out = String::new();
    for from in &keys {
        out.push_str(from);
        out.push(' ');
        for to in &keys {
            let flip = except.iter().any(|(f, t)| f == from && t == to);
            out.push(if from == to {
                '-'
            } else if all != flip {
                'X'
            } else {
                '.'
            });
        }
        out.push('\n');
    }
    out
}

/// Pairs (from, to) where `to` is in `dst` and `from` is any pod in `src`.
pub fn pairs<'a>(src: &[&'a str], dst: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut v = Vec::new();
    for s in src {
        for d in dst {
            v.push((*s, *d));
        }
    }
    v
}

pub fn all_pods() -> Vec<&'static str> {
    vec![
        "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
    ]
}
