//! The cluster model: namespaces, pods and network policies from the desired
//! state, endpoints from weir-cni, and what is derived from them (labels in
//! Hubble's form, security identities, the IP enrichment index).
//!
//! Derived facts are recomputed when the inputs change, not when the index is
//! read, so [`ClusterState::endpoint_index`] only copies shared pointers into
//! a fresh map and is cheap enough to rebuild on every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weir_localapi::EndpointRegistration;

use crate::identity::{CLUSTER_LOCAL_MIN, IDENTITY_INIT, IDENTITY_UNKNOWN, IdentityAllocator};
use crate::index::{EndpointIndex, EndpointMeta};
use crate::model::{
    Endpoint, Kind, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Object, Pod,
};

/// Prefix of every label in Hubble's form for Kubernetes-sourced labels.
pub const LABEL_SOURCE_K8S: &str = "k8s:";
/// Label key (after `k8s:`) carrying the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Key prefix (after `k8s:`) of the namespace's own labels.
pub const LABEL_NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Pod label keys that are left out of identities (and so of flow labels), as
/// Cilium's default label filter does: they differ per pod or per rollout,
/// so keeping them would give nearly every pod its own identity.
const NON_IDENTITY_LABELS: &[&str] = &[
    "pod-template-hash",
    "pod-template-generation",
    "controller-revision-hash",
    "controller-uid",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
];

/// Pod label key prefixes that are dropped because the agent sets labels under
/// them itself: a pod must not be able to claim another namespace.
const RESERVED_LABEL_PREFIXES: &[&str] = &["io.kubernetes.", "io.cilium.k8s."];

fn is_identity_label(key: &str) -> bool {
    !NON_IDENTITY_LABELS.contains(&key)
        && !RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The labels a flow shows for a pod, sorted, in Hubble's form:
/// `k8s:key=value` for the pod's identity-relevant labels,
/// `k8s:io.kubernetes.pod.namespace=NS`, and the namespace's labels as
/// `k8s:io.cilium.k8s.namespace.labels.key=value`. When the Namespace object
/// is not known, its labels are taken to be the one the API server always
/// sets (`kubernetes.io/metadata.name=NS`).
pub fn hubble_labels(
    namespace: &str,
    namespace_labels: Option<&Labels>,
    pod_labels: &Labels,
) -> Vec<String> {
    let mut out = Vec::with_capacity(pod_labels.len() + 4);
    for (k, v) in pod_labels {
        if is_identity_label(k) {
            out.push(format!("{LABEL_SOURCE_K8S}{k}={v}"));
        }
    }
    out.push(format!(
        "{LABEL_SOURCE_K8S}{LABEL_POD_NAMESPACE}={namespace}"
    ));
    match namespace_labels {
        Some(labels) => {
            for (k, v) in labels {
                out.push(format!(
                    "{LABEL_SOURCE_K8S}{LABEL_NAMESPACE_LABELS_PREFIX}{k}={v}"
                ));
            }
        }
        None => out.push(format!(
            "{LABEL_SOURCE_K8S}{LABEL_NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}={namespace}"
        )),
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sizes of the model, for metrics and `weir status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Objects from the desired state, by kind.
    pub objects: BTreeMap<Kind, usize>,
    /// Local endpoints registered by weir-cni.
    pub endpoints: usize,
    /// Cluster-local identities in use.
    pub identities: usize,
    /// Label sets that got no identity because the range was exhausted.
    pub identity_errors_total: u64,
}

type PodKey = (String, String);
type EndpointKey = (String, String);
type PolicyKey = (String, String);

/// Namespaces, pods, network policies and local endpoints, with derived
/// labels and identities.
#[derive(Debug)]
pub struct ClusterState {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<PodKey, Pod>,
    /// Shared with the manifests snapshot and the policy compiler's input.
    policies: BTreeMap<PolicyKey, Arc<NetworkPolicy>>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    next_endpoint_id: u64,
    identities: IdentityAllocator,
    identity_errors_total: u64,
    /// Derived per pod (endpoint id 0, node name from the pod). Each entry
    /// with a cluster-local identity holds one reference on it.
    pod_meta: HashMap<PodKey, Arc<EndpointMeta>>,
    /// Derived per endpoint whose Pod object is not known, from its
    /// registration; holds identity references like `pod_meta`.
    orphan_meta: HashMap<EndpointKey, Arc<EndpointMeta>>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterState {
    /// An empty model.
    pub fn new() -> Self {
        Self {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            next_endpoint_id: 1,
            identities: IdentityAllocator::new(),
            identity_errors_total: 0,
            pod_meta: HashMap::new(),
            orphan_meta: HashMap::new(),
        }
    }

    /// Replaces the desired state (all namespaces, pods and network
    /// policies) with `objects`. Returns whether anything changed. A later
    /// duplicate of a key wins.
    pub fn set_manifests(&mut self, objects: impl IntoIterator<Item = Object>) -> bool {
        let mut namespaces = BTreeMap::new();
        let mut pods = BTreeMap::new();
        let mut policies = BTreeMap::new();
        for object in objects {
            match object {
                Object::Namespace(ns) => {
                    namespaces.insert(ns.name.clone(), ns);
                }
                Object::Pod(pod) => {
                    pods.insert((pod.namespace.clone(), pod.name.clone()), pod);
                }
                Object::NetworkPolicy(np) => {
                    policies.insert((np.namespace.clone(), np.name.clone()), np);
                }
            }
        }
        let labels_same = namespaces == self.namespaces && pods == self.pods;
        if labels_same && policies == self.policies {
            return false;
        }
        self.policies = policies;
        // Policies derive nothing here: identities are recomputed only when
        // namespaces or pods changed.
        if !labels_same {
            self.namespaces = namespaces;
            self.pods = pods;
            self.refresh_all();
        }
        true
    }

    /// Registers a local endpoint, or updates it if `container_id`+`ifname`
    /// is already known (then its id is kept).
    pub fn upsert_endpoint(&mut self, reg: &EndpointRegistration) -> Endpoint {
        let key = (reg.container_id.clone(), reg.ifname.clone());
        let id = match self.endpoints.get(&key) {
            Some(existing) => existing.id,
            None => {
                let id = self.next_endpoint_id;
                self.next_endpoint_id += 1;
                id
            }
        };
        let endpoint = Endpoint::from_registration(id, reg);
        self.endpoints.insert(key.clone(), endpoint.clone());
        self.refresh_orphan(&key);
        endpoint
    }

    /// Unregisters a local endpoint; `None` if it was not registered.
    pub fn remove_endpoint(&mut self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        let key = (container_id.to_owned(), ifname.to_owned());
        let removed = self.endpoints.remove(&key)?;
        self.refresh_orphan(&key);
        Some(removed)
    }

    /// Local endpoints, ordered by container id and interface name.
    pub fn endpoints(&self) -> impl ExactSizeIterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// One local endpoint.
    pub fn endpoint(&self, container_id: &str, ifname: &str) -> Option<&Endpoint> {
        self.endpoints
            .get(&(container_id.to_owned(), ifname.to_owned()))
    }

    /// Namespaces of the desired state, ordered by name.
    pub fn namespaces(&self) -> impl ExactSizeIterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// One namespace.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Pods of the desired state, ordered by namespace and name.
    pub fn pods(&self) -> impl ExactSizeIterator<Item = &Pod> {
        self.pods.values()
    }

    /// One pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Network policies of the desired state, ordered by namespace and name.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Arc<NetworkPolicy>> {
        self.policies.values()
    }

    /// One network policy.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&Arc<NetworkPolicy>> {
        self.policies.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// What flows say about a pod (endpoint id 0, node from the pod object).
    pub fn pod_meta(&self, namespace: &str, name: &str) -> Option<&Arc<EndpointMeta>> {
        self.pod_meta.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The identity allocator (identities in use and their label sets).
    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    /// Sizes for metrics.
    pub fn counts(&self) -> StateCounts {
        let mut objects = BTreeMap::new();
        objects.insert(Kind::Namespace, self.namespaces.len());
        objects.insert(Kind::Pod, self.pods.len());
        objects.insert(Kind::NetworkPolicy, self.policies.len());
        StateCounts {
            objects,
            endpoints: self.endpoints.len(),
            identities: self.identities.len(),
            identity_errors_total: self.identity_errors_total,
        }
    }

    /// IP -> metadata for every IP of every local endpoint and every pod
    /// with status IPs (host-network pods excepted: their IP is the node's).
    /// A local endpoint's entry wins over a pod's for the same IP, carries
    /// its endpoint id and `node_name`, and falls back to the namespace and
    /// pod name from the CNI registration when its Pod object is unknown.
    pub fn endpoint_index(&self, node_name: &str) -> EndpointIndex {
        let mut index = EndpointIndex::with_capacity(self.pod_meta.len() + self.endpoints.len());
        for (key, pod) in &self.pods {
            if pod.host_network {
                continue;
            }
            if let Some(meta) = self.pod_meta.get(key) {
                for ip in &pod.pod_ips {
                    index.insert(*ip, meta.clone());
                }
            }
        }
        for (key, ep) in &self.endpoints {
            let base = self
                .pod_meta
                .get(&(ep.namespace.clone(), ep.pod.clone()))
                .or_else(|| self.orphan_meta.get(key));
            let mut meta = base.map(|m| EndpointMeta::clone(m)).unwrap_or_default();
            meta.endpoint_id = ep.id;
            meta.node_name = node_name.to_owned();
            let meta = Arc::new(meta);
            for ip in &ep.ips {
                index.insert(*ip, meta.clone());
            }
        }
        index
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace).map(|n| &n.labels)
    }

    /// Builds the metadata of a labelled workload and takes an identity
    /// reference for it (released by `release`).
    fn derive(&mut self, namespace: &str, pod_name: &str, pod: Option<&Pod>) -> EndpointMeta {
        let empty = Labels::new();
        let labels = match pod {
            Some(p) => hubble_labels(namespace, self.namespace_labels(namespace), &p.labels),
            None => hubble_labels(namespace, self.namespace_labels(namespace), &empty),
        };
        let identity = match pod {
            // The CNI did not say which pod this is: labels are unknown.
            None if namespace.is_empty() => IDENTITY_INIT,
            _ => match self.identities.acquire(&labels) {
                Ok(id) => id,
                Err(e) => {
                    self.identity_errors_total += 1;
                    tracing::warn!(%namespace, pod = %pod_name, error = %e, "no identity for pod");
                    IDENTITY_UNKNOWN
                }
            },
        };
        let labels = if identity == IDENTITY_INIT {
            Vec::new()
        } else {
            labels
        };
        EndpointMeta {
            endpoint_id: 0,
            identity,
            namespace: namespace.to_owned(),
            pod_name: pod_name.to_owned(),
            labels,
            node_name: pod.map(|p| p.node_name.clone()).unwrap_or_default(),
            workload: pod.and_then(Pod::workload).unwrap_or_default().to_owned(),
        }
    }

    fn release(identities: &mut IdentityAllocator, meta: &EndpointMeta) {
        if meta.identity >= CLUSTER_LOCAL_MIN {
            identities.release(&meta.labels);
        }
    }

    /// Recomputes everything derived. New references are taken before the
    /// old ones are dropped, so an unchanged label set keeps its identity.
    fn refresh_all(&mut self) {
        let mut pod_meta = HashMap::with_capacity(self.pods.len());
        let pods = std::mem::take(&mut self.pods);
        for (key, pod) in &pods {
            let meta = self.derive(&pod.namespace, &pod.name, Some(pod));
            pod_meta.insert(key.clone(), Arc::new(meta));
        }
        self.pods = pods;
        let old_pods = std::mem::replace(&mut self.pod_meta, pod_meta);

        let mut orphan_meta = HashMap::new();
        let endpoints = std::mem::take(&mut self.endpoints);
        for (key, ep) in &endpoints {
            if !self
                .pods
                .contains_key(&(ep.namespace.clone(), ep.pod.clone()))
            {
                let meta = self.derive(&ep.namespace, &ep.pod, None);
                orphan_meta.insert(key.clone(), Arc::new(meta));
            }
        }
        self.endpoints = endpoints;
        let old_orphans = std::mem::replace(&mut self.orphan_meta, orphan_meta);

        for meta in old_pods.values().chain(old_orphans.values()) {
            Self::release(&mut self.identities, meta);
        }
    }

    /// Recomputes the derived metadata of one endpoint (after it was added,
    /// changed or removed).
    fn refresh_orphan(&mut self, key: &EndpointKey) {
        let new = match self.endpoints.get(key) {
            Some(ep)
                if !self
                    .pods
                    .contains_key(&(ep.namespace.clone(), ep.pod.clone())) =>
            {
                let (ns, pod) = (ep.namespace.clone(), ep.pod.clone());
                Some(Arc::new(self.derive(&ns, &pod, None)))
            }
            _ => None,
        };
        let old = match new {
            Some(meta) => self.orphan_meta.insert(key.clone(), meta),
            None => self.orphan_meta.remove(key),
        };
        if let Some(old) = old {
            Self::release(&mut self.identities, &old);
        }
    }
}

#[cfg(test)]
mod tests;
