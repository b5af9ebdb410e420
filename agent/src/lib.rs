//! The `weir` binary's library: the node agent and its subcommands.
//!
//! `main.rs` only parses arguments and calls [`cli::main`]. The modules here
//! wire the crates under `agent/` together; the datapath crate is the only
//! one that touches aya.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod flowapi;
pub mod metrics_http;
pub mod netns;
pub mod observe;
pub mod policy;
pub mod policy_cli;
pub mod restore;
pub mod server;
