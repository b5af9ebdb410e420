//! Hubble's dynamic flow-log exporters for Weir: several named exporters,
//! each writing the flows that pass its include/exclude `FlowFilter`s, with
//! its field mask applied, as one protobuf-JSON export event per line into a
//! file rotated by size with a bounded number of backups. The set comes from
//! one YAML file in Hubble's `flowLogs` format and is reloaded without
//! restart; a bad entry is refused alone.
//!
//! - [`config`]: the file format and its validation.
//! - [`rotate`]: the size-rotated file with lumberjack-named backups.
//! - [`exporter`]: one exporter's task and counters.
//! - [`set`]: [`ExporterSet`], reloading and watching the file.
//! - [`bench`]: throughput of one exporter, for the benchmarks.
//!
//! Built on `weir_flows` (the store each exporter subscribes to, as
//! `export_<name>`) and `weir_api` (filters, field masks, protojson). The
//! static flow log (`weir_flows::export::FlowLogWriter`) is separate.

pub mod bench;
pub mod config;
pub mod exporter;
pub mod rotate;
pub mod set;

pub use config::{ConfigError, EntryError};
pub use exporter::{ExporterState, ExporterStats};
pub use set::{
    ApplyReport, ConfigWatcher, ExporterSet, ExporterStatus, Refused, WatchError, WatchOptions,
};
