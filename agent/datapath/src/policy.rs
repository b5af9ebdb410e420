//! The policy maps as the agent writes them: per-endpoint state
//! (`POLICY_EP`), allow rules (`POLICY`), address identities (`IPCACHE`),
//! `ipBlock` cells (`CIDR_CELLS`), the endpoints of hostNetwork pods'
//! cgroups (`CGROUP_EP`) and the policy generation in `CONFIG`.
//!
//! Plain writes and deletes of entries the caller computed (the compiler
//! lives in weir-policy); nothing here knows what a NetworkPolicy is. The
//! caller orders its writes so that no window denies what both the old and
//! the new state allow (add, then delete, then [`PolicyMaps::bump_generation`]).

use aya::maps::{Array, HashMap, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use weir_common::{
    CgroupEndpoint, DatapathConfig, EndpointPolicy, IpKey, PolicyKey, PolicyValue, maps,
};

use crate::DatapathError;

/// Handles on the policy maps of a loaded datapath.
pub struct PolicyMaps {
    endpoints: HashMap<MapData, u32, EndpointPolicy>,
    rules: LpmTrie<MapData, PolicyKey, PolicyValue>,
    ipcache: HashMap<MapData, IpKey, u32>,
    cidr_cells: LpmTrie<MapData, IpKey, u32>,
    cgroups: HashMap<MapData, u64, CgroupEndpoint>,
    config: Array<MapData, DatapathConfig>,
    config_value: DatapathConfig,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps")
            .field("policy_gen", &self.config_value.policy_gen)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        source: Box::new(source),
    }
}

/// A delete of an absent key is not an error: the state converges either way.
fn absent_ok(result: Result<(), MapError>, map: &'static str) -> Result<(), DatapathError> {
    match result {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
            Ok(())
        }
        Err(source) => Err(map_err(map)(source)),
    }
}

const fn libc_enoent() -> i32 {
    2
}

impl PolicyMaps {
    pub(crate) fn new(
        endpoints: aya::maps::Map,
        rules: aya::maps::Map,
        ipcache: aya::maps::Map,
        cidr_cells: aya::maps::Map,
        cgroups: aya::maps::Map,
        config: aya::maps::Map,
        config_value: DatapathConfig,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            endpoints: HashMap::try_from(endpoints).map_err(map_err(maps::POLICY_EP))?,
            rules: LpmTrie::try_from(rules).map_err(map_err(maps::POLICY))?,
            ipcache: HashMap::try_from(ipcache).map_err(map_err(maps::IPCACHE))?,
            cidr_cells: LpmTrie::try_from(cidr_cells).map_err(map_err(maps::CIDR_CELLS))?,
            cgroups: HashMap::try_from(cgroups).map_err(map_err(maps::CGROUP_EP))?,
            config: Array::try_from(config).map_err(map_err(maps::CONFIG))?,
            config_value,
        })
    }

    /// Sets the policy state of the endpoint on host-side interface `ifindex`.
    pub fn set_endpoint(
        &mut self,
        ifindex: u32,
        value: EndpointPolicy,
    ) -> Result<(), DatapathError> {
        self.endpoints
            .insert(ifindex, value, 0)
            .map_err(map_err(maps::POLICY_EP))
    }

    /// Removes an endpoint's policy state (it is no longer policed).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        absent_ok(self.endpoints.remove(&ifindex), maps::POLICY_EP)
    }

    /// Writes one allow rule.
    pub fn set_rule(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        self.rules
            .insert(&Key::new(prefix_len, key), value, 0)
            .map_err(map_err(maps::POLICY))
    }

    /// Deletes one allow rule.
    pub fn remove_rule(&mut self, prefix_len: u32, key: PolicyKey) -> Result<(), DatapathError> {
        absent_ok(self.rules.remove(&Key::new(prefix_len, key)), maps::POLICY)
    }

    /// Sets the identity of an address.
    pub fn set_ip(&mut self, key: IpKey, identity: u32) -> Result<(), DatapathError> {
        self.ipcache
            .insert(key, identity, 0)
            .map_err(map_err(maps::IPCACHE))
    }

    /// Forgets an address.
    pub fn remove_ip(&mut self, key: IpKey) -> Result<(), DatapathError> {
        absent_ok(self.ipcache.remove(&key), maps::IPCACHE)
    }

    /// Sets the cell identity of an `ipBlock` boundary prefix.
    pub fn set_cidr(
        &mut self,
        prefix_len: u32,
        key: IpKey,
        cell: u32,
    ) -> Result<(), DatapathError> {
        self.cidr_cells
            .insert(&Key::new(prefix_len, key), cell, 0)
            .map_err(map_err(maps::CIDR_CELLS))
    }

    /// Deletes an `ipBlock` boundary prefix.
    pub fn remove_cidr(&mut self, prefix_len: u32, key: IpKey) -> Result<(), DatapathError> {
        absent_ok(
            self.cidr_cells.remove(&Key::new(prefix_len, key)),
            maps::CIDR_CELLS,
        )
    }

    /// Makes the sockets of cgroup `cgroup_id` (see
    /// [`crate::cgroup::cgroup_id`]) the endpoint `value.endpoint` with
    /// identity `value.identity`: the cgroup hooks police and report their
    /// traffic under that synthetic endpoint id (give it a `POLICY_EP`
    /// entry and rules like any endpoint), and the tc hooks see their
    /// locally sent packets as that identity instead of HOST. Write the
    /// pod's cgroup and each existing descendant
    /// ([`crate::cgroup::descendants`]); later ones resolve to the pod
    /// through the nearest registered ancestor.
    pub fn set_cgroup(
        &mut self,
        cgroup_id: u64,
        value: CgroupEndpoint,
    ) -> Result<(), DatapathError> {
        self.cgroups
            .insert(cgroup_id, value, 0)
            .map_err(map_err(maps::CGROUP_EP))
    }

    /// Forgets a cgroup's endpoint (its sockets are node traffic again).
    /// See [`PolicyMaps::remove_cgroups_of`] for the entries the programs
    /// added themselves.
    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<(), DatapathError> {
        absent_ok(self.cgroups.remove(&cgroup_id), maps::CGROUP_EP)
    }

    /// Removes every `CGROUP_EP` entry of `endpoint` and returns how many
    /// there were. Besides the entries the agent wrote, the cgroup programs
    /// add one for each cgroup they resolved through a registered ancestor
    /// (a container cgroup created after the agent looked), copying the
    /// ancestor's value: remove an endpoint with this, and change its
    /// identity by removing and setting again, so none of those copies is
    /// left behind. O(entries in the map).
    pub fn remove_cgroups_of(&mut self, endpoint: u32) -> Result<usize, DatapathError> {
        let mut ids = Vec::new();
        for entry in self.cgroups.iter() {
            match entry {
                Ok((id, value)) if value.endpoint == endpoint => ids.push(id),
                Ok(_) => {}
                // Removed while we walked: nothing to do for it.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err(maps::CGROUP_EP)(source)),
            }
        }
        for id in &ids {
            self.remove_cgroup(*id)?;
        }
        Ok(ids.len())
    }

    /// Every `CGROUP_EP` entry: cgroup id and endpoint.
    pub fn cgroups(&self) -> Result<Vec<(u64, CgroupEndpoint)>, DatapathError> {
        self.cgroups
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::CGROUP_EP))
    }

    /// Starts a new policy generation: established connections have their
    /// forward direction checked again against the maps as they are now.
    /// Returns the new generation.
    pub fn bump_generation(&mut self) -> Result<u32, DatapathError> {
        let mut next = self.config_value;
        next.policy_gen = next.policy_gen.wrapping_add(1);
        self.config.set(0, next, 0).map_err(map_err(maps::CONFIG))?;
        self.config_value = next;
        Ok(next.policy_gen)
    }

    /// The current policy generation.
    pub fn generation(&self) -> u32 {
        self.config_value.policy_gen
    }
}
