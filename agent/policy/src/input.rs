//! What the compiler is given: policies, namespaces, pods (with identities
//! already assigned), the nodes' addresses, and options; and how it names a
//! policy in attribution ([`PolicyRef`]).
//!
//! Plain data built by the caller (the agent from weir-state's model, tests
//! by hand); nothing here is derived.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::selector::Labels;
use crate::spec::{NetworkPolicy, Protocol};

/// Namespace annotation that puts every endpoint of the namespace in audit
/// mode (value `"true"`).
pub const AUDIT_ANNOTATION: &str = "policy.weir.dev/audit";

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A policy as attribution names it.
///
/// Besides NetworkPolicies there is one built-in rule, the node rule
/// (ingress from the local node is always allowed while
/// [`Options::allow_host_ingress`] is on). It is named by
/// [`PolicyRef::node_rule`]: an empty namespace, which no NetworkPolicy can
/// have, and the name [`PolicyRef::NODE_RULE_NAME`]. An attribution set
/// holding it means "allowed by the node rule" (possibly together with
/// policies that also allow the traffic).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    /// Name of the built-in node rule.
    pub const NODE_RULE_NAME: &'static str = "weir:allow-host-ingress";

    /// The built-in node rule.
    pub fn node_rule() -> Self {
        Self {
            namespace: String::new(),
            name: Self::NODE_RULE_NAME.to_owned(),
        }
    }

    /// Whether this names the built-in node rule, not a NetworkPolicy.
    pub fn is_node_rule(&self) -> bool {
        self.namespace.is_empty() && self.name == Self::NODE_RULE_NAME
    }

    /// The reference of a policy.
    pub fn of(policy: &NetworkPolicy) -> Self {
        Self {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        }
    }
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One container port of a pod (named ports are resolved against these).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as the compiler needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInput {
    pub namespace: String,
    pub name: String,
    /// The pod's own labels (selectors are evaluated on these).
    pub labels: Labels,
    /// Security identity of the pod's label set (assigned by weir-state).
    /// Identities below 256 are reserved and never matched by a selector.
    pub identity: u32,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PodPort>,
    /// Host-network pods: their address is the node's, so it is not put in
    /// IPCACHE as theirs, and they are never endpoints.
    pub host_network: bool,
    /// Host-side interface index when the pod is a local endpoint.
    pub endpoint: Option<u32>,
}

/// A namespace as the compiler needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInput {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name` (added by the compiler when missing).
    pub labels: Labels,
    pub annotations: Labels,
}

/// The cluster's node addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInput {
    /// This node's addresses: identity HOST.
    pub local_ips: Vec<IpAddr>,
    /// Other nodes' addresses: identity REMOTE_NODE.
    pub remote_ips: Vec<IpAddr>,
}

/// Compiler options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Options {
    /// Every endpoint in audit mode (default false).
    pub audit_all: bool,
    /// Ingress from the local node (kubelet probes) is always allowed to
    /// isolated endpoints, as Cilium does by default (default true).
    pub allow_host_ingress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            audit_all: false,
            allow_host_ingress: true,
        }
    }
}

/// Everything one compilation reads.
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub policies: Vec<Arc<NetworkPolicy>>,
    pub namespaces: Vec<NamespaceInput>,
    pub pods: Vec<PodInput>,
    pub nodes: NodeInput,
    pub options: Options,
}
