//! Security identities: a number per distinct label set.
//!
//! Numbering follows Cilium so that Hubble clients and people reading flows
//! see familiar values: 0 is "unknown", 1..=255 are reserved identities
//! (1 host, 2 world, ...), and label sets of pods in this cluster get
//! cluster-local identities from 256 up to 65535 (Cilium keeps the upper bits
//! for the cluster id of a mesh, so the cluster-local range is 16 bits).
//!
//! This module owns only the allocation: label set in, number out, reference
//! counted so that a number is released once nothing uses its label set.
//! Which labels make up a set is decided by [`crate::ClusterState`].

use std::collections::HashMap;
use std::sync::Arc;

/// No identity known (Cilium: `unknown`).
pub const IDENTITY_UNKNOWN: u32 = 0;
/// The local host, including host-network pods (Cilium: `reserved:host`).
pub const IDENTITY_HOST: u32 = 1;
/// Anything outside the cluster (Cilium: `reserved:world`).
pub const IDENTITY_WORLD: u32 = 2;
/// Pods not managed by the CNI (Cilium: `reserved:unmanaged`).
pub const IDENTITY_UNMANAGED: u32 = 3;
/// Health-check endpoints (Cilium: `reserved:health`).
pub const IDENTITY_HEALTH: u32 = 4;
/// Endpoints whose labels are not known yet (Cilium: `reserved:init`).
pub const IDENTITY_INIT: u32 = 5;
/// Other nodes of the cluster (Cilium: `reserved:remote-node`).
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// The Kubernetes API server (Cilium: `reserved:kube-apiserver`).
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
/// First cluster-local identity (the reserved range ends below it).
pub const CLUSTER_LOCAL_MIN: u32 = 256;
/// Last cluster-local identity.
pub const CLUSTER_LOCAL_MAX: u32 = 65535;

/// Failures of identity allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Every cluster-local identity is in use by another label set.
    #[error(
        "all {} cluster-local identities ({CLUSTER_LOCAL_MIN}..={CLUSTER_LOCAL_MAX}) are in use",
        CLUSTER_LOCAL_MAX - CLUSTER_LOCAL_MIN + 1
    )]
    Exhausted,
}

#[derive(Debug)]
struct Slot {
    id: u32,
    refs: usize,
}

/// Reference-counted label set -> identity allocator.
///
/// The same label set gets the same identity for as long as something holds
/// it. Freed numbers are not handed out again until the counter wraps, so a
/// flow that still carries a just-released identity is not misattributed to a
/// label set that appeared a moment later.
#[derive(Debug)]
pub struct IdentityAllocator {
    by_labels: HashMap<Arc<[String]>, Slot>,
    by_id: HashMap<u32, Arc<[String]>>,
    next: u32,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityAllocator {
    /// An allocator with no identities in use.
    pub fn new() -> Self {
        Self {
            by_labels: HashMap::new(),
            by_id: HashMap::new(),
            next: CLUSTER_LOCAL_MIN,
        }
    }

    /// Takes a reference on the identity of `labels` (sorted, Hubble form),
    /// allocating a number if the set is new.
    pub fn acquire(&mut self, labels: &[String]) -> Result<u32, IdentityError> {
        if let Some(slot) = self.by_labels.get_mut(labels) {
            slot.refs += 1;
            return Ok(slot.id);
        }
        let id = self.free_id()?;
        let key: Arc<[String]> = labels.into();
        self.by_id.insert(id, key.clone());
        self.by_labels.insert(key, Slot { id, refs: 1 });
        Ok(id)
    }

    /// Drops one reference on the identity of `labels`; returns the identity
    /// if this released it (nothing holds it any more).
    pub fn release(&mut self, labels: &[String]) -> Option<u32> {
        let slot = self.by_labels.get_mut(labels)?;
        slot.refs -= 1;
        if slot.refs > 0 {
            return None;
        }
        let id = slot.id;
        self.by_labels.remove(labels);
        self.by_id.remove(&id);
        Some(id)
    }

    /// The identity currently held for `labels`, if any.
    pub fn get(&self, labels: &[String]) -> Option<u32> {
        self.by_labels.get(labels).map(|s| s.id)
    }

    /// The label set of an allocated identity.
    pub fn labels(&self, id: u32) -> Option<&[String]> {
        self.by_id.get(&id).map(|l| &l[..])
    }

    /// Number of identities in use.
    pub fn len(&self) -> usize {
        self.by_labels.len()
    }

    /// Whether no identity is in use.
    pub fn is_empty(&self) -> bool {
        self.by_labels.is_empty()
    }

    /// Every identity in use with its label set, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.by_id.iter().map(|(id, l)| (*id, &l[..]))
    }

    fn free_id(&mut self) -> Result<u32, IdentityError> {
        const SPAN: u32 = CLUSTER_LOCAL_MAX - CLUSTER_LOCAL_MIN + 1;
        if self.by_id.len() as u64 >= u64::from(SPAN) {
            return Err(IdentityError::Exhausted);
        }
        // Terminates: fewer than SPAN numbers are taken.
        loop {
            let id = self.next;
            self.next = if id == CLUSTER_LOCAL_MAX {
                CLUSTER_LOCAL_MIN
            } else {
                id + 1
            };
            if !self.by_id.contains_key(&id) {
                return Ok(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_set_same_identity_until_released() {
        let mut a = IdentityAllocator::new();
        let web = set(&["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"]);
        let db = set(&["k8s:app=db", "k8s:io.kubernetes.pod.namespace=default"]);
        let w1 = a.acquire(&web).unwrap();
        let w2 = a.acquire(&web).unwrap();
        let d = a.acquire(&db).unwrap();
        assert_eq!(
            w1, CLUSTER_LOCAL_MIN,
            "first identity is the first cluster-local one"
        );
        assert_eq!(w1, w2, "same label set, same identity");
        assert_ne!(w1, d, "different label sets, different identities");
        assert_eq!(a.labels(w1), Some(&web[..]));
        assert_eq!(a.len(), 2);

        assert_eq!(a.release(&web), None, "one holder left");
        assert_eq!(a.get(&web), Some(w1));
        assert_eq!(a.release(&web), Some(w1), "last holder gone: released");
        assert_eq!(a.get(&web), None);
        assert_eq!(a.labels(w1), None);
        assert_eq!(a.release(&web), None, "releasing an unknown set is a no-op");

        // A freed number is not reused right away.
        let again = a.acquire(&web).unwrap();
        assert_ne!(again, w1);
        assert!(again > d);
    }

    #[test]
    fn wraps_and_exhausts() {
        let mut a = IdentityAllocator::new();
        let span = (CLUSTER_LOCAL_MAX - CLUSTER_LOCAL_MIN + 1) as usize;
        let sets: Vec<Vec<String>> = (0..span).map(|i| vec![format!("k8s:i={i}")]).collect();
        for s in &sets {
            let id = a.acquire(s).unwrap();
            assert!((CLUSTER_LOCAL_MIN..=CLUSTER_LOCAL_MAX).contains(&id));
        }
        assert_eq!(
            a.acquire(&set(&["k8s:one=more"])),
            Err(IdentityError::Exhausted)
        );
        let freed = a.release(&sets[10]).unwrap();
        assert_eq!(
            a.acquire(&set(&["k8s:one=more"])),
            Ok(freed),
            "after wrapping, the only free number is found"
        );
    }
}
