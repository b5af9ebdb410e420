//! The compiler's output: exactly what the datapath's four policy maps must
//! hold, plus the attribution table, and the difference between two outputs
//! (what the agent writes).

use std::collections::BTreeMap;
use std::sync::Arc;

use weir_common::{EndpointPolicy, IpKey, PolicyKey, PolicyValue};

use crate::input::PolicyRef;

/// `POLICY` entries of one endpoint: (prefix length, key) -> value.
pub type EndpointEntries = BTreeMap<(u32, PolicyKey), PolicyValue>;

/// The contents of `POLICY_EP`, `POLICY`, `IPCACHE` and `CIDR_CELLS`, and
/// the attribution ids they use.
///
/// `POLICY` is kept per endpoint (each endpoint's entries shared with the
/// compiler's cache), so comparing two compilations skips every endpoint
/// whose entries did not change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub(crate) endpoints: BTreeMap<u32, EndpointPolicy>,
    pub(crate) policy: BTreeMap<u32, Arc<EndpointEntries>>,
    pub(crate) ipcache: BTreeMap<IpKey, u32>,
    pub(crate) cidr_cells: BTreeMap<(u32, IpKey), u32>,
    pub(crate) attributions: BTreeMap<u32, Arc<[PolicyRef]>>,
}

impl Compiled {
    /// `POLICY_EP`: host-side ifindex -> endpoint policy state.
    pub fn endpoints(&self) -> &BTreeMap<u32, EndpointPolicy> {
        &self.endpoints
    }

    /// `POLICY` entries of one endpoint.
    pub fn endpoint_entries(&self, ifindex: u32) -> Option<&EndpointEntries> {
        self.policy.get(&ifindex).map(|e| &**e)
    }

    /// `POLICY`, every entry: ((prefix length, key), value), ordered by
    /// endpoint, then prefix length, then key.
    pub fn policy_entries(&self) -> impl Iterator<Item = (&(u32, PolicyKey), &PolicyValue)> {
        self.policy.values().flat_map(|e| e.iter())
    }

    /// Number of `POLICY` entries.
    pub fn policy_len(&self) -> usize {
        self.policy.values().map(|e| e.len()).sum()
    }

    /// `IPCACHE`: address -> identity.
    pub fn ipcache(&self) -> &BTreeMap<IpKey, u32> {
        &self.ipcache
    }

    /// `CIDR_CELLS`: (prefix length, address) -> cell identity.
    pub fn cidr_cells(&self) -> &BTreeMap<(u32, IpKey), u32> {
        &self.cidr_cells
    }

    /// Attribution id -> the policies it names, for every id the maps use
    /// (ids of earlier compilations stay resolvable through
    /// [`crate::Compiler::attribution`]).
    pub fn attributions(&self) -> &BTreeMap<u32, Arc<[PolicyRef]>> {
        &self.attributions
    }

    /// The policies an attribution id names (id 0: none).
    pub fn attribution(&self, id: u32) -> Option<&[PolicyRef]> {
        self.attributions.get(&id).map(|a| &a[..])
    }

    /// What turns the maps holding `old` into maps holding `self`.
    pub fn diff(&self, old: &Compiled) -> MapChanges {
        let mut policy = Changes::default();
        let empty = EndpointEntries::new();
        let mut ifindexes: Vec<u32> = self
            .policy
            .keys()
            .chain(old.policy.keys())
            .copied()
            .collect();
        ifindexes.sort_unstable();
        ifindexes.dedup();
        for ifindex in ifindexes {
            let new = self.policy.get(&ifindex);
            let prev = old.policy.get(&ifindex);
            if let (Some(a), Some(b)) = (new, prev)
                && Arc::ptr_eq(a, b)
            {
                continue;
            }
            diff_maps(
                new.map_or(&empty, |e| &**e),
                prev.map_or(&empty, |e| &**e),
                &mut policy,
            );
        }
        let mut out = MapChanges {
            policy,
            ..MapChanges::default()
        };
        diff_maps(&self.endpoints, &old.endpoints, &mut out.policy_ep);
        diff_maps(&self.ipcache, &old.ipcache, &mut out.ipcache);
        diff_maps(&self.cidr_cells, &old.cidr_cells, &mut out.cidr_cells);
        out
    }
}

/// Writes and deletes for one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Entries to create or overwrite, in key order.
    pub upserts: Vec<(K, V)>,
    /// Keys to delete, in key order.
    pub deletes: Vec<K>,
}

impl<K, V> Default for Changes<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    /// Upserts plus deletes.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// Per-map changes between two compilations.
///
/// Applying them in this order never drops traffic that both the old and the
/// new policy allow: (1) upserts of `POLICY`, `CIDR_CELLS` and `IPCACHE`
/// (new allows exist before anything refers to them), (2) `POLICY_EP`
/// upserts and deletes (isolation switches on only once its allows are in
/// place, and off before they go), (3) deletes of `POLICY`, `CIDR_CELLS`
/// and `IPCACHE`. Then bump the datapath's policy generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapChanges {
    pub policy_ep: Changes<u32, EndpointPolicy>,
    pub policy: Changes<(u32, PolicyKey), PolicyValue>,
    pub ipcache: Changes<IpKey, u32>,
    pub cidr_cells: Changes<(u32, IpKey), u32>,
}

impl MapChanges {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.policy_ep.is_empty()
            && self.policy.is_empty()
            && self.ipcache.is_empty()
            && self.cidr_cells.is_empty()
    }

    /// Total writes and deletes over all maps.
    pub fn len(&self) -> usize {
        self.policy_ep.len() + self.policy.len() + self.ipcache.len() + self.cidr_cells.len()
    }
}

/// Merge-walks two ordered maps.
fn diff_maps<K: Ord + Clone, V: PartialEq + Clone>(
    new: &BTreeMap<K, V>,
    old: &BTreeMap<K, V>,
    out: &mut Changes<K, V>,
) {
    let mut a = new.iter().peekable();
    let mut b = old.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, v)), None) => {
                out.upserts.push(((*k).clone(), (*v).clone()));
                a.next();
            }
            (None, Some((k, _))) => {
                out.deletes.push((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.upserts.push(((*ka).clone(), (*va).clone()));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.deletes.push((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.upserts.push(((*ka).clone(), (*va).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}
