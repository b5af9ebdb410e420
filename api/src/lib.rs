//! Weir's Hubble-compatible flow API.
//!
//! - [`proto`]: the generated types and tonic services of Weir's own `.proto`
//!   files (`api/proto/`), wire-compatible with Hubble's `flow`, `observer`,
//!   `peer` and `relay` packages, plus `weir.flow.v1.FlowExtensions`; a test
//!   checks every upstream field number and type.
//! - [`convert`]: `weir_flows::Flow` <-> `flow.Flow`, lost events.
//! - [`filter`]: Hubble's whitelist/blacklist `FlowFilter` semantics, compiled
//!   once per request and evaluated on `weir_flows::Flow` before conversion.
//! - [`fieldmask`]: `GetFlowsRequest.field_mask`, applied to converted flows.
//! - [`json`]: protobuf JSON of the generated messages (`-o json`, `-o jsonpb`).
//!   It is driven by the descriptors rather than by `weir_flows`' serde, so it
//!   prints every field a (possibly foreign) server sent; for Weir's own flows
//!   both give the same JSON (tested in `convert`).
//!
//! - [`observer`], [`peer`]: the Observer and Peer services.
//! - [`printer`]: how `weir observe` / `weir status` print answers.

pub mod convert;
pub mod fieldmask;
pub mod filter;
pub mod json;
pub mod observer;
pub mod peer;
pub mod printer;
pub mod proto;
