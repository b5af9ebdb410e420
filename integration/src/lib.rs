//! Weir's lab: a small cluster made of network namespaces on this machine.
//!
//! A [`Lab`] is a node namespace running `weir agent`, pods (namespaces
//! networked by `weir-cni`, each with servers on its declared ports), and
//! probes between them; [`runner`] runs the scenario files of `weir-lab run`
//! and [`demo`] is `weir demo`. Everything a run makes carries the `weirlab-`
//! prefix and is recorded under `/run/weir-lab/<run_id>/` before it exists,
//! so that a crashed run is cleaned up by the next one (or `weir-lab cleanup`).
//!
//! This crate must not depend on weir-agent: the `weir` binary depends on it.

pub mod agent;
pub mod cgroup;
pub mod cni;
pub mod demo;
pub mod lab;
pub mod manifests;
pub mod matrix;
pub mod netns;
pub mod probe;
pub mod process;
pub mod record;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod spec;

pub use agent::{AgentStdout, FlowLog};
pub use lab::{KeptLab, Lab, LabError, LabOptions, sibling_binary, target_dir};
pub use probe::{ProbeResult, ProbeSpec};
pub use scenario::Scenario;
pub use spec::{Expectation, Family, NamespaceSpec, PodSpec, PortProto, PortSpec, Protocol};

/// Whether this process may build labs (root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
