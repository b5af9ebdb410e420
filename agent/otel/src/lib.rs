//! OpenTelemetry export of Weir's flows and agent metrics over OTLP.
//!
//! Flows arrive through a [`weir_flows::store::Subscription`] and leave as
//! OTLP log records (one per flow, see [`logs`] for every attribute); the
//! agent's Prometheus registry is read every `metrics_interval` and leaves as
//! OTLP metrics (see [`metrics`]). Both go over OTLP/gRPC or OTLP/HTTP with
//! protobuf bodies ([`transport`]), batched, through a bounded queue, retried
//! with exponential backoff, and every record that does not arrive is counted
//! with a reason ([`OtelStats`]).
//!
//! # Attribute names
//!
//! OpenTelemetry's semantic conventions name the network side of a flow
//! (`source.address`, `source.port`, `destination.*`, `network.transport`,
//! `network.type`, `network.interface.name`) and those names are used as is.
//! For Kubernetes they only have resource-style names for *one* pod
//! (`k8s.pod.name`, `k8s.namespace.name`), with no source/destination
//! variants. The record therefore carries the plain `k8s.*` names for the
//! *observed* endpoint (the local pod on whose veth the flow was seen: the
//! source at FROM_ENDPOINT, the destination at TO_ENDPOINT), and both sides
//! in full under Weir's own namespace, `weir.source.*` and
//! `weir.destination.*` (`weir.source.k8s.pod.name`, ...`.k8s.namespace.name`,
//! `.labels`, `.identity`, `.workload.name`, `.workload.kind`), so nothing
//! pretends to be a convention it is not. Hubble's own fields are under
//! `weir.flow.*`; the flow's UUID is semconv's `log.record.uid`. The resource
//! is the node: `service.name=weir`, `service.version`, `k8s.node.name`,
//! `host.name`.
//!
//! # Limits
//!
//! Plain `http://` endpoints only (no TLS yet); compression is not used.

pub mod bench;
pub mod config;
pub mod exporter;
pub mod logs;
pub mod metrics;
pub mod transport;

pub use config::{ConfigError, OtelConfig, Protocol};
pub use exporter::{
    DROP_REASONS, OtelError, OtelHandle, OtelStats, SignalStats, start, start_with_registries,
};
