//! Weir's datapath: the only crate that touches aya.
//!
//! It owns the life of the kernel side: it embeds the eBPF object built from
//! `ebpf/programs` (by `build.rs`, through aya-build), loads it with the map
//! sizes the agent chose, writes the runtime configuration, attaches the two
//! tc programs to endpoint interfaces (tcx on kernels >= 6.6, else clsact +
//! direct-action cls_bpf) and the two cgroup programs to hostNetwork pods'
//! cgroup v2 directories, and hands out the ring-buffer reader and counters.
//!
//! It knows nothing about Kubernetes, pods or identities: callers speak in
//! interface names and cgroup paths, and get raw [`weir_common::FlowEvent`]s back.
//!
//! # Network namespaces and threads
//!
//! Interface names are resolved, and tcx links / tc filters are created, in
//! the network namespace of the *calling thread*. To attach to an interface
//! in another namespace, `setns()` the calling thread around
//! [`Datapath::attach`] (and, in clsact mode, [`Datapath::detach`]: its
//! netlink request also goes to the calling thread's namespace). In tcx mode
//! detaching closes the link's file descriptor and works from anywhere.
//!
//! [`EventReader`] must be created inside a tokio runtime (it registers the
//! ring buffer's fd with the runtime's reactor) and is `Send`, so it can move
//! into a task. [`Datapath`] is `Send` and is meant to be owned by one task or
//! behind a mutex.

pub mod cgroup;
mod datapath;
mod events;
mod policy;
mod ring_fill;
pub mod testing;

pub use datapath::{Aggregation, AttachMode, Counters, Datapath, DatapathError, DatapathOptions};
pub use events::EventReader;
pub use policy::PolicyMaps;
