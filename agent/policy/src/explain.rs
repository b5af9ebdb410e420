//! `weir policy explain`: for a connection from one pod to a pod or an
//! address, the verdict at each end (egress at the source, ingress at the
//! destination) and exactly which policies and rules decide it, computed by
//! the same compiler and the same lookups as the datapath.
//!
//! Runs offline on any [`Input`]: pods that are not local endpoints are
//! compiled as if they were (with a private interface number), and a fresh
//! compiler is used so that asking never disturbs a live compiler's state.

use std::net::IpAddr;

use serde::Serialize;
use weir_common::identity;

use crate::cidr::Cidr;
use crate::compile::{self, Compiler, Origin, Peers, Plan};
use crate::compiled::Compiled;
use crate::evaluate::{Verdict, cell_of, datapath_port, evaluate_parts, identity_of};
use crate::input::{Input, PodInput, PolicyRef};
use crate::ports::Block;
use crate::spec::Direction;

/// Interface numbers explain gives the two pods it compiles.
const SOURCE_IFINDEX: u32 = u32::MAX - 1;
const DEST_IFINDEX: u32 = u32::MAX - 2;

/// The far end of an explained connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ExplainTarget {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

/// What to explain: a new connection from pod `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplainQuery {
    /// (namespace, name) of the source pod.
    pub from: (String, String),
    pub to: ExplainTarget,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, ...).
    pub proto: u8,
    /// Destination port (ignored for protocols without ports).
    pub port: u16,
}

/// Why a question cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No pod of that name in the input.
    #[error("no pod {namespace}/{name}")]
    UnknownPod { namespace: String, name: String },
}

/// One side of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    /// `ns/name` when the side is a known pod.
    pub pod: Option<String>,
    /// The address used (a pod without addresses is matched by identity only).
    pub ip: Option<IpAddr>,
    /// The identity the datapath sees for it.
    pub identity: u32,
    /// The CIDR cell of the address, with its boundary prefix.
    pub cell: Option<(u32, Cidr)>,
    /// Host-side interface when the pod is a local endpoint.
    pub endpoint: Option<u32>,
}

/// How a matching rule reached the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// The peer's identity is selected by a pod/namespace selector.
    Identity,
    /// The peer's address is in an ipBlock.
    Cidr,
    /// The rule has no peers (any peer).
    Any,
    /// Weir's node rule (ingress from the local node).
    NodeRule,
}

/// One rule that allows the connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleMatch {
    pub policy: PolicyRef,
    /// `spec.ingress[1]` (empty for the node rule).
    pub rule: String,
    /// `spec.ingress[1].from[0]`; `None` when the rule has no peers.
    pub peer: Option<String>,
    /// `spec.ingress[1].ports[0]`; `None` when the rule has no ports.
    pub port: Option<String>,
    pub via: Via,
}

/// The decision at one end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionExplanation {
    pub direction: Direction,
    /// `ns/name` of the pod whose policy decides.
    pub endpoint: String,
    /// Some policy with this type selects the pod.
    pub enforced: bool,
    /// Those policies (what a denial is attributed to).
    pub isolated_by: Vec<PolicyRef>,
    pub verdict: Verdict,
    /// The policies the datapath would report for this verdict.
    pub attribution: Vec<PolicyRef>,
    /// Every rule allowing the connection (empty when denied or not enforced).
    pub rules: Vec<RuleMatch>,
    /// Why the datapath does not police this end, when it does not.
    pub note: Option<String>,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: Side,
    pub to: Side,
    pub proto: u8,
    pub port: u16,
    /// Egress at the source.
    pub egress: DirectionExplanation,
    /// Ingress at the destination; `None` when it is not a pod.
    pub ingress: Option<DirectionExplanation>,
    /// Both ends allow it.
    pub allowed: bool,
    /// It goes through (allowed, or denied only where audit mode passes it).
    pub passes: bool,
}

fn find_pod<'a>(input: &'a Input, ns: &str, name: &str) -> Result<&'a PodInput, ExplainError> {
    input
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .ok_or_else(|| ExplainError::UnknownPod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
}

/// Picks the addresses of a connection: the first source address whose
/// family the destination has, else the first of each.
fn pick(from: &[IpAddr], to: &[IpAddr]) -> (Option<IpAddr>, Option<IpAddr>) {
    for a in from {
        if let Some(b) = to.iter().find(|b| b.is_ipv4() == a.is_ipv4()) {
            return (Some(*a), Some(*b));
        }
    }
    (from.first().copied(), to.first().copied())
}

/// Explains a connection (see the module docs).
pub fn explain(input: &Input, query: &ExplainQuery) -> Result<Explanation, ExplainError> {
    let src = find_pod(input, &query.from.0, &query.from.1)?;
    let (dst_pod, dst_ips): (Option<&PodInput>, Vec<IpAddr>) = match &query.to {
        ExplainTarget::Pod { namespace, name } => {
            let p = find_pod(input, namespace, name)?;
            (Some(p), p.ips.clone())
        }
        ExplainTarget::Ip(ip) => {
            let ip = crate::cidr::canonical(*ip);
            let owner = input.pods.iter().find(|p| {
                !p.host_network && p.ips.iter().any(|a| crate::cidr::canonical(*a) == ip)
            });
            (owner, vec![ip])
        }
    };
    let (src_ip, dst_ip) = pick(&src.ips, &dst_ips);

    let mut compiler = Compiler::new();
    let mut prep = compiler.prepare(input);
    let src_plan = compile::plan(&mut prep, src);
    let dst_plan = dst_pod.map(|p| compile::plan(&mut prep, p));
    let mut compiled = Compiled {
        ipcache: compile::ipcache(input),
        cidr_cells: prep
            .cells
            .iter()
            .map(|(c, id)| ((c.trie_prefix(), c.ip_key()), *id))
            .collect(),
        ..Compiled::default()
    };
    let cells = prep.cells.clone();
    let attrs = compiler.attrs_mut();
    for (ifindex, plan) in [
        (SOURCE_IFINDEX, Some(&src_plan)),
        (DEST_IFINDEX, dst_plan.as_ref()),
    ] {
        let Some(plan) = plan else { continue };
        let (ep, entries, ids) = compile::entries_build(attrs, ifindex, plan);
        compiled.endpoints.insert(ifindex, ep);
        compiled.policy.insert(ifindex, entries.into());
        for id in ids {
            if let Some(set) = attrs.get(id) {
                compiled.attributions.insert(id, set.clone());
            }
        }
    }

    // A host-network pod's address is the node's. As a source the datapath
    // knows its packets by its cgroup and uses its own identity; as a
    // destination the sender sees only the node's address (HOST).
    let side = |pod: Option<&PodInput>, ip: Option<IpAddr>, source: bool| {
        let identity = match (ip, pod) {
            (_, Some(p)) if p.host_network && source => p.identity,
            (Some(ip), _) => identity_of(&compiled, ip),
            (None, Some(p)) => p.identity,
            (None, None) => identity::WORLD,
        };
        let cell = ip.and_then(|ip| {
            let id = cell_of(&compiled, ip)?;
            let c = cells.iter().find(|(_, cid)| *cid == id)?.0;
            Some((id, c))
        });
        Side {
            pod: pod.map(|p| format!("{}/{}", p.namespace, p.name)),
            ip,
            identity,
            cell,
            endpoint: pod.and_then(|p| p.endpoint),
        }
    };
    let from = side(Some(src), src_ip, true);
    let to = side(dst_pod, dst_ip, false);

    let egress = decide(
        &compiler,
        &compiled,
        src,
        &src_plan,
        SOURCE_IFINDEX,
        Direction::Egress,
        &to,
        query,
    );
    let ingress = dst_pod.zip(dst_plan.as_ref()).map(|(pod, plan)| {
        decide(
            &compiler,
            &compiled,
            pod,
            plan,
            DEST_IFINDEX,
            Direction::Ingress,
            &from,
            query,
        )
    });
    let allowed = egress.verdict.allowed && ingress.as_ref().is_none_or(|i| i.verdict.allowed);
    let passes = egress.verdict.passes() && ingress.as_ref().is_none_or(|i| i.verdict.passes());
    Ok(Explanation {
        from,
        to,
        proto: query.proto,
        port: query.port,
        egress,
        ingress,
        allowed,
        passes,
    })
}

#[allow(
    clippy::too_many_arguments,
    reason = "one private step of explain, called twice"
)]
fn decide(
    compiler: &Compiler,
    compiled: &Compiled,
    pod: &PodInput,
    plan: &Plan,
    ifindex: u32,
    d: Direction,
    peer: &Side,
    q: &ExplainQuery,
) -> DirectionExplanation {
    let attrs = compiler.attrs();
    let mut isolated_by: Vec<PolicyRef> = plan
        .isolating(d)
        .iter()
        .map(|&p| attrs.policy(p).clone())
        .collect();
    isolated_by.sort();
    let endpoint = format!("{}/{}", pod.namespace, pod.name);
    let verdict = evaluate_parts(
        compiled,
        ifindex,
        d.datapath(),
        peer.identity,
        peer.cell.map(|(id, _)| id),
        q.proto,
        q.port,
    );
    let enforced = !plan.isolating(d).is_empty();
    let mut rules = Vec::new();
    if enforced && verdict.allowed {
        let port = datapath_port(q.proto, q.port);
        for g in plan.grants.iter().filter(|g| g.origin.direction == d) {
            if !g
                .blocks
                .iter()
                .any(|b: &Block| b.contains_point(q.proto, port))
            {
                continue;
            }
            let via = match &g.peers {
                Peers::Any => Via::Any,
                Peers::Pods(ids) if ids.binary_search(&peer.identity).is_ok() => Via::Identity,
                Peers::Cells(ids)
                    if peer
                        .cell
                        .is_some_and(|(c, _)| ids.binary_search(&c).is_ok()) =>
                {
                    Via::Cidr
                }
                _ => continue,
            };
            rules.push(rule_match(compiler, g.origin, via));
        }
        if d == Direction::Ingress && plan.host_rule && peer.identity == identity::HOST {
            rules.push(RuleMatch {
                policy: PolicyRef::node_rule(),
                rule: String::new(),
                peer: None,
                port: None,
                via: Via::NodeRule,
            });
        }
        rules.sort();
        rules.dedup();
    }
    let attribution = compiled
        .attribution(verdict.attr)
        .map(<[PolicyRef]>::to_vec)
        .unwrap_or_default();
    DirectionExplanation {
        direction: d,
        endpoint,
        enforced,
        isolated_by,
        verdict,
        attribution,
        rules,
        note: None,
    }
}

fn rule_match(compiler: &Compiler, o: Origin, via: Via) -> RuleMatch {
    let rule = format!("{}[{}]", o.direction.spec_field(), o.rule);
    RuleMatch {
        policy: compiler.attrs().policy(o.pid).clone(),
        peer: o
            .peer
            .map(|j| format!("{rule}.{}[{j}]", o.direction.peers_field())),
        port: o.port.map(|k| format!("{rule}.ports[{k}]")),
        rule,
        via,
    }
}
