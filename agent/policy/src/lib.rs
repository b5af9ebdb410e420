//! Weir's NetworkPolicy model and compiler.
//!
//! Pure: no I/O, no aya, no async. Kubernetes `networking.k8s.io/v1`
//! NetworkPolicies, pods (with identities already assigned), namespaces and
//! node addresses go in; the exact contents of the datapath's policy maps
//! (`POLICY_EP`, `POLICY`, `IPCACHE`, `CIDR_CELLS`, see `weir_common`) and an
//! attribution table come out. [`evaluate`] replays the datapath's lookups on
//! that output, and [`explain()`] says which rules decide a connection.
//!
//! - [`spec`]: the policy object, parsed and validated as the API server does.
//! - [`selector`]: label selectors.
//! - [`cidr`]: ipBlock prefixes and the datapath's address keys.
//! - [`input`]: what the compiler reads.
//! - [`Compiler`] / [`Compiled`] / [`MapChanges`]: compile, and what to write.
//! - [`evaluate`](evaluate()) / [`explain()`]: ask the compiled maps.
//! - [`names`]: Kubernetes name and label syntax.
//!
//! # Semantics compiled for
//!
//! An endpoint (a local pod's host-side veth) is isolated for a direction
//! exactly when a policy of its namespace selects it and has that type;
//! then a new connection passes only if a rule of one of those policies
//! allows it (egress checked at the source with the destination as peer,
//! ingress at the destination with the source as peer). Peers are matched
//! by security identity (pod and namespace selectors), by the CIDR cell of
//! the address (ipBlock; pod and node addresses included), or by
//! `identity::ANY` (a rule without peers). Ingress from the local node is
//! always allowed to isolated endpoints unless [`Options::allow_host_ingress`]
//! is off; that is attributed to [`PolicyRef::node_rule`].

mod compile;
mod compiled;
mod evaluate;
mod explain;
mod ports;

pub mod cidr;
pub mod fields;
pub mod input;
pub mod names;
pub mod selector;
pub mod spec;

pub use cidr::Cidr;
pub use compile::{CompileStats, Compiler};
pub use compiled::{Changes, Compiled, EndpointEntries, MapChanges};
pub use evaluate::{Lookup, Verdict, cell_of, datapath_port, evaluate, identity_of};
pub use explain::{
    DirectionExplanation, ExplainError, ExplainQuery, ExplainTarget, Explanation, RuleMatch, Side,
    Via, explain,
};
pub use input::{
    AUDIT_ANNOTATION, Input, NamespaceInput, NodeInput, Options, PodInput, PodPort, PolicyRef,
};
pub use selector::{LabelSelector, Labels, Operator, Requirement};
pub use spec::{
    Direction, IpBlock, NetworkPolicy, Peer, PolicyError, PolicyPort, PortValue, Protocol, Rule,
};
