//! The enrichment index: IP -> what a flow should say about that address.
//!
//! Built by the state from pods, namespaces and endpoints, published as an
//! immutable snapshot, and read on the per-event path by the flow decoder, so
//! lookups are one hash probe and the values are shared, never cloned deeply.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What a flow says about one side when its IP belongs to a known endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Agent-local endpoint id (0 when the pod is known but not local).
    pub endpoint_id: u64,
    /// Numeric security identity of the pod's label set.
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// Labels in Hubble's form, sorted: `k8s:key=value`, plus
    /// `k8s:io.kubernetes.pod.namespace=NS` and the namespace's labels as
    /// `k8s:io.cilium.k8s.namespace.labels.key=value`.
    pub labels: Vec<String>,
    pub node_name: String,
    /// Workload (owner) name if known, else empty.
    pub workload: String,
}

/// Immutable IP -> endpoint metadata map; cheap to share (`Arc`).
#[derive(Clone, Debug, Default)]
pub struct EndpointIndex {
    by_ip: HashMap<IpAddr, Arc<EndpointMeta>>,
    /// Endpoints known by the id their events carry instead of an address:
    /// hostNetwork pods, whose address is the node's, by the synthetic
    /// endpoint id of their cgroup hooks.
    by_endpoint: HashMap<u32, Arc<EndpointMeta>>,
}

impl EndpointIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `n` IPs.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            by_ip: HashMap::with_capacity(n),
            by_endpoint: HashMap::new(),
        }
    }

    /// Adds or replaces the entry for `ip`.
    pub fn insert(&mut self, ip: IpAddr, meta: Arc<EndpointMeta>) {
        self.by_ip.insert(ip, meta);
    }

    /// Adds the entry for `ip` unless the address is indexed already.
    pub fn insert_if_absent(&mut self, ip: IpAddr, meta: Arc<EndpointMeta>) {
        self.by_ip.entry(ip).or_insert(meta);
    }

    /// Adds or replaces the endpoint whose events carry `endpoint` as their
    /// interface (a hostNetwork pod's synthetic id).
    pub fn insert_endpoint(&mut self, endpoint: u32, meta: Arc<EndpointMeta>) {
        self.by_endpoint.insert(endpoint, meta);
    }

    /// The endpoint whose events carry `endpoint` as their interface.
    #[inline]
    pub fn lookup_endpoint(&self, endpoint: u32) -> Option<&Arc<EndpointMeta>> {
        self.by_endpoint.get(&endpoint)
    }

    /// The endpoint owning `ip`, if any.
    #[inline]
    pub fn lookup(&self, ip: &IpAddr) -> Option<&Arc<EndpointMeta>> {
        self.by_ip.get(ip)
    }

    /// Number of IPs indexed.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Arc<EndpointMeta>)> {
        self.by_ip.iter()
    }
}
