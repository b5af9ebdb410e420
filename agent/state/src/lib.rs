//! Weir's cluster model: namespaces, pods, network policies, endpoints and
//! their identities, and the manifests-directory source that feeds it.
//!
//! Pure: no aya, no sockets. The datapath never sees these types; the agent
//! turns them into map entries and enrichment indexes.
//!
//! - [`model`]: the objects (Namespace, Pod, NetworkPolicy, Endpoint) and their keys.
//! - [`identity`]: label set -> security identity numbers.
//! - [`cluster`]: [`ClusterState`], the one model, and the labels in Hubble's form.
//! - [`index`]: [`EndpointIndex`], the IP -> metadata map flows are enriched from.
//! - [`manifests`]: desired state from a directory of YAML/JSON manifests.

pub mod cluster;
pub mod identity;
pub mod index;
pub mod manifests;
pub mod model;

pub use cluster::{ClusterState, StateCounts, hubble_labels};
pub use identity::{IdentityAllocator, IdentityError};
pub use index::{EndpointIndex, EndpointMeta};
pub use manifests::{
    LoadResult, LoadedObject, ManifestError, ManifestSource, ManifestWatch, Position, Snapshot,
    SyncStatus, WatchOptions, load_dir,
};
pub use model::{
    ContainerPort, Endpoint, Kind, Labels, Namespace, NetworkPolicy, Object, ObjectKey,
    OwnerReference, Pod, Protocol,
};
