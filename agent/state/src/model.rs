//! The Kubernetes objects Weir needs, reduced to the fields it reads, plus
//! the agent's own `Endpoint` (a pod interface registered by weir-cni).
//!
//! Plain data: validation happens where objects are parsed
//! ([`crate::manifests`]); derived facts (labels in Hubble's form, identities)
//! are computed by [`crate::ClusterState`].
//!
//! NetworkPolicy is weir-policy's type (parsed and validated there, so the
//! compiler and the sources agree on what a valid policy is).
//!
//! Adding a kind (Service, EndpointSlice, Node): add its struct
//! here, a [`Kind`] variant, an [`Object`] variant and the arms of the
//! `match`es on them (the compiler lists every place), then its parser in
//! `manifests::parse`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_localapi::EndpointRegistration;
pub use weir_policy::NetworkPolicy;

/// Namespace used when a namespaced object does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label the API server puts on every namespace (since Kubernetes 1.21), which
/// namespace selectors commonly match on; the model adds it the same way.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels or annotations: sorted so that everything derived from them is stable.
pub type Labels = BTreeMap<String, String>;

/// A kind of object the state understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl Kind {
    /// Every kind, in a fixed order (for per-kind counters).
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        match self {
            Kind::Namespace => false,
            Kind::Pod | Kind::NetworkPolicy => true,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Pod ns/name` or `Namespace name`, as error messages name objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

/// A `v1 Namespace`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    /// Includes [`NAMESPACE_NAME_LABEL`]`=name`, as the API server sets it.
    pub labels: Labels,
    pub annotations: Labels,
}

/// L4 protocol of a container port (the same type NetworkPolicy ports use).
pub use weir_policy::Protocol;

/// One `spec.containers[].ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// Optional IANA service name (named ports, used by policies and services).
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// The controller that owns an object (`metadata.ownerReferences`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
}

/// A `v1 Pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid`; empty when the manifest has none.
    pub uid: String,
    pub labels: Labels,
    pub annotations: Labels,
    /// `metadata.ownerReferences`: the one marked `controller`, else the first.
    pub owner: Option<OwnerReference>,
    /// `spec.nodeName`; empty when not scheduled.
    pub node_name: String,
    /// `spec.serviceAccountName`; empty when not set.
    pub service_account: String,
    pub host_network: bool,
    /// `status.podIPs` (with `status.podIP` first), IPv4 and/or IPv6.
    pub pod_ips: Vec<IpAddr>,
    /// Ports of all containers, in manifest order.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The key of this pod.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Name of the workload that runs this pod, as Hubble reports it: the
    /// Deployment for a pod owned by one of its ReplicaSets (recognised by the
    /// `pod-template-hash` suffix), otherwise the owner's name.
    pub fn workload(&self) -> Option<&str> {
        let owner = self.owner.as_ref()?;
        if owner.kind == "ReplicaSet"
            && let Some(hash) = self.labels.get("pod-template-hash")
            && let Some(deployment) = owner
                .name
                .strip_suffix(hash.as_str())
                .and_then(|s| s.strip_suffix('-'))
            && !deployment.is_empty()
        {
            return Some(deployment);
        }
        Some(&owner.name)
    }
}

impl Namespace {
    /// The key of this namespace.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: self.name.clone(),
        }
    }
}

/// The key of a network policy.
pub fn network_policy_key(policy: &NetworkPolicy) -> ObjectKey {
    ObjectKey {
        kind: Kind::NetworkPolicy,
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
    }
}

/// One object of the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    /// Shared: the policy compiler and every snapshot hold the same one.
    NetworkPolicy(Arc<NetworkPolicy>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The object's key (kind, namespace, name).
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(ns) => ns.key(),
            Object::Pod(pod) => pod.key(),
            Object::NetworkPolicy(np) => network_policy_key(np),
        }
    }
}

/// A local pod interface that weir-cni registered with the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Agent-local endpoint id, stable for the endpoint's life (never 0).
    pub id: u64,
    pub container_id: String,
    /// Interface name inside the pod (usually eth0).
    pub ifname: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Pod namespace from CNI_ARGS (may be empty outside Kubernetes).
    pub namespace: String,
    /// Pod name from CNI_ARGS.
    pub pod: String,
    /// Host-side veth, in the agent's network namespace.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ips: Vec<IpAddr>,
    /// MAC address of the pod-side interface (may be empty).
    pub mac: String,
}

impl Endpoint {
    /// An endpoint with id `id` from what weir-cni registered.
    pub fn from_registration(id: u64, reg: &EndpointRegistration) -> Self {
        Self {
            id,
            container_id: reg.container_id.clone(),
            ifname: reg.ifname.clone(),
            netns: reg.netns.clone(),
            namespace: reg.namespace.clone(),
            pod: reg.pod.clone(),
            host_ifname: reg.host_ifname.clone(),
            host_ifindex: reg.host_ifindex,
            ips: reg.ips.clone(),
            mac: reg.mac.clone(),
        }
    }

    /// The registration this endpoint was made from (for the local API).
    pub fn registration(&self) -> EndpointRegistration {
        EndpointRegistration {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            host_ifname: self.host_ifname.clone(),
            host_ifindex: self.host_ifindex,
            ips: self.ips.clone(),
            mac: self.mac.clone(),
        }
    }
}
