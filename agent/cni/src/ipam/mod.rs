//! Pod address management: which address a pod interface gets, and when it is free again.
//!
//! An attachment is identified by its [`Owner`] (container id + interface name),
//! exactly the key the CNI spec uses. Every mode implements [`Ipam`]; the
//! plugin only talks to the trait, so a second mode is a new module plus a
//! variant in [`crate::config::IpamConfig`]. This module must not touch the
//! kernel: addresses are only bookkeeping here.

pub mod overlay;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::config::IpamConfig;

pub use overlay::OverlayIpam;

/// The holder of an address: one interface of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl Owner {
    /// The owner for `container_id` / `ifname`.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// One address given to an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The pod's address.
    pub ip: IpAddr,
    /// The pod CIDR it was taken from.
    pub pod_cidr: IpNetwork,
}

/// Failures of address management.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of a pod CIDR is taken.
    #[error("pod CIDR {cidr} is exhausted: all {usable} usable addresses are allocated")]
    Exhausted {
        /// The full CIDR.
        cidr: IpNetwork,
        /// How many addresses it offers to pods.
        usable: u128,
    },
    /// The state directory or a file in it could not be read or written.
    #[error("IPAM state {}: {what}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What we were doing.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Taking the lock on the state directory failed.
    #[error("IPAM lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// An address manager. Implementations must be safe against concurrent plugin
/// processes (runtimes run ADDs for different pods in parallel).
pub trait Ipam {
    /// Gives `owner` one address from each configured range. Idempotent: an
    /// owner that already holds addresses gets the same ones back.
    fn allocate(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError>;
    /// Frees whatever `owner` holds; returns the freed addresses (empty if none).
    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError>;
    /// What `owner` holds now, without changing anything.
    fn lookup(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError>;
    /// Every allocation of this network, for garbage collection.
    fn list(&self) -> Result<Vec<(IpAddr, Owner)>, IpamError>;
}

/// The address manager that `config` selects, for network `network_name`.
pub fn from_config(config: &IpamConfig, network_name: &str) -> Box<dyn Ipam> {
    match config {
        IpamConfig::Overlay(o) => Box::new(OverlayIpam::new(
            o.data_dir.join(network_name),
            o.pod_cidrs.clone(),
        )),
    }
}
