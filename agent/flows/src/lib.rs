//! Weir's flows: the Hubble-shaped [`Flow`] type, the decoder that
//! turns kernel `FlowEvent`s into enriched flows, the in-memory flow ring with
//! bounded fan-out to consumers, the JSON / compact flow log, and every
//! Prometheus metric of the agent.
//!
//! Pipeline: `FlowEvent` -> [`decode::Decoder::decode`] -> [`store::FlowStore::push`]
//! -> [`store::Subscription`]s (e.g. [`export::FlowLogWriter`]), with
//! [`metrics::Metrics::observe_flow`] on the side. No aya here: events arrive
//! as plain `weir_common::FlowEvent` values.

pub mod attribution;
pub mod compact;
pub mod decode;
pub mod export;
pub mod flow;
pub mod hubble_metrics;
pub mod metrics;
mod pbjson;
pub mod store;

pub use attribution::Attribution;
pub use decode::Decoder;
pub use export::{ExportEvent, FlowLogTarget, FlowLogWriter, OutputFormat};
pub use flow::Flow;
pub use metrics::Metrics;
pub use store::{FlowStore, Item, Subscription};
