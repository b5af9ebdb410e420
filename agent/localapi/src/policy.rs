//! What `weir policy explain` and `weir policy what-if` exchange with the
//! agent: the question (query parameters, a replay request) and the answer,
//! in a form that is the same whether the agent's live model or a manifests
//! directory answered.
//!
//! Plain data only: the agent fills these from its policy compiler's
//! output; this crate does not know the compiler.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Verdict of a connection, or of one end of it: a rule allows it (or
/// nothing isolates that end).
pub const ALLOWED: &str = "ALLOWED";
/// Denied by policy: dropped.
pub const DENIED: &str = "DENIED";
/// Denied by policy but passed by audit mode (Hubble's verdict AUDIT).
pub const AUDIT: &str = "AUDIT";

/// `GET /v1/policy/explain` query parameters, exactly as on the command
/// line: `from=NS/POD`, `to=NS/POD` or an address, `port=80/TCP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainParams {
    pub from: String,
    pub to: String,
    pub port: String,
}

/// One end of an explained connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// `ns/name` when the end is a known pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address the connection uses (none for a pod without addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Security identity the datapath sees for it.
    pub identity: u32,
    /// Name of a reserved identity (`host`, `world`, `remote-node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<String>,
    /// The pod's labels, `key=value`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Its namespace's labels, `key=value`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_labels: Vec<String>,
    /// The ipBlock cell its address falls in (the narrowest boundary of
    /// any policy's ipBlock containing it), e.g. `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_cell: Option<String>,
    /// A hostNetwork pod (its address is the node's).
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A rule that allows the connection, by field path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `ns/name` of the policy (`weir:allow-host-ingress` for the node rule).
    pub policy: String,
    /// `spec.ingress[1]` (empty for the node rule).
    pub rule: String,
    /// `spec.ingress[1].from[0]`; absent when the rule allows any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `spec.ingress[1].ports[0]`; absent when the rule allows any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// How the peer matched: `identity` (pod/namespace selector), `ipBlock`,
    /// `any` (no peers in the rule), `node` (the node rule).
    pub via: String,
}

/// The decision at one end: egress at the source, ingress at the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    /// `egress` or `ingress`.
    pub direction: String,
    /// `ns/name` of the pod whose policies decide.
    pub endpoint: String,
    /// Some policy of this type selects the pod (it is isolated).
    pub enforced: bool,
    /// [`ALLOWED`], [`DENIED`] or [`AUDIT`].
    pub verdict: String,
    /// Which lookup decided: `not isolated`, `identity`, `ipBlock`,
    /// `any peer`, `no rule`, `not policed`.
    pub decided_by: String,
    /// The policies isolating the pod in this direction.
    #[serde(default)]
    pub isolated_by: Vec<String>,
    /// The policies the datapath names in the flow (allowed_by / denied_by).
    #[serde(default)]
    pub attribution: Vec<String>,
    /// Every rule allowing the connection (empty when denied or not isolated).
    #[serde(default)]
    pub rules: Vec<RuleRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The answer of `GET /v1/policy/explain` (and of `weir policy explain
/// --manifests`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyExplanation {
    /// [`ALLOWED`], [`DENIED`] or [`AUDIT`] for the whole connection.
    pub verdict: String,
    pub from: PeerInfo,
    pub to: PeerInfo,
    /// `TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6` (or the protocol number).
    pub protocol: String,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    pub egress: DirectionExplanation,
    /// Absent when the destination is not a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<DirectionExplanation>,
    /// Which model answered: `agent on node N` or `manifests in DIR`.
    pub model: String,
}

/// Recorded connections with the same addresses, protocol and destination
/// port (their verdict cannot differ), as replayed by what-if.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFlow {
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// `ns/name` the flow named for the source, when it is a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_pod: Option<String>,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    /// Distinct connections (5-tuples) recorded.
    pub connections: u64,
    /// Verdicts the flows carried when recorded (`FORWARDED`, `DROPPED`, `AUDIT`).
    #[serde(default)]
    pub recorded: Vec<String>,
}

/// `POST /v1/policy/what-if`: a change to the agent's policies and the
/// recorded flows to replay against the policies before and after it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WhatIfRequest {
    /// NetworkPolicy manifests to apply: one with the `ns/name` of a
    /// current policy replaces it, others are added.
    #[serde(default)]
    pub changes: Vec<serde_json::Value>,
    /// `ns/name` of policies to remove.
    #[serde(default)]
    pub deletes: Vec<String>,
    #[serde(default)]
    pub flows: Vec<RecordedFlow>,
}

/// The verdict of one end, replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndVerdict {
    /// `ns/name` of the pod.
    pub endpoint: String,
    /// [`ALLOWED`], [`DENIED`] or [`AUDIT`].
    pub verdict: String,
    pub enforced: bool,
    /// The deciding policies: those whose rules allow it, or, when denied,
    /// those isolating the pod.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// A replayed verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// [`ALLOWED`], [`DENIED`] or [`AUDIT`].
    pub verdict: String,
    /// Absent when the source is not a policed pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EndVerdict>,
    /// Absent when the destination is not a policed pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<EndVerdict>,
}

/// A flow whose verdict the change would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictChange {
    pub flow: RecordedFlow,
    pub before: Replayed,
    pub after: Replayed,
}

/// What the change does to the policy set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEdit {
    /// `ns/name`.
    pub policy: String,
    /// `added`, `replaced` or `deleted`.
    pub action: String,
}

/// The answer of `POST /v1/policy/what-if` (and of `weir policy what-if
/// --manifests`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIfReport {
    /// Which model answered: `agent on node N` or `manifests in DIR`.
    pub model: String,
    /// Where the flows came from (filled in by the command).
    #[serde(default)]
    pub flows_from: String,
    /// Policies before and after the change.
    pub policies_before: usize,
    pub policies_after: usize,
    pub edits: Vec<PolicyEdit>,
    /// Distinct connections replayed.
    pub connections: u64,
    /// Connections whose verdict would change.
    pub changed_connections: u64,
    /// Distinct (addresses, protocol, port) replayed.
    pub flows: usize,
    /// Those whose verdict would change, with both verdicts.
    pub changes: Vec<VerdictChange>,
    /// Recorded flows not replayed, by reason (filled in by the command).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u64>,
}
