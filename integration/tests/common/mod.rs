//! Shared helpers of the lab's integration tests.
//!
//! Privileged tests skip with a message when not root, but fail when
//! `CI=true`. Tests that need the agent find `weir` and `weir-cni` next to
//! the test executable's parent (`target/debug/`, where CI builds them with
//! `cargo build --workspace --bins` before testing); `WEIR_LAB_WEIR` and
//! `WEIR_LAB_CNI` point elsewhere for local debugging.

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;

use weir_integration::{LabOptions, is_root, sibling_binary};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True if a privileged test can run; false (after saying why) if it must
/// be skipped. Panics when `CI=true`, where skipping is a failure.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root (network namespaces), and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root (network namespaces)");
    false
}

fn binary(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_binary(name))
}

/// Lab options for a test that needs root, `weir` and `weir-cni`; None
/// (after a message) when it must be skipped locally.
pub fn agent_lab_options(test: &str) -> Option<LabOptions> {
    if !require_root(test) {
        return None;
    }
    let weir = binary("WEIR_LAB_WEIR", "weir");
    let cni = binary("WEIR_LAB_CNI", "weir-cni");
    for bin in [&weir, &cni] {
        if !bin.is_file() {
            let msg = format!(
                "{test}: needs {} (cargo build --workspace --bins)",
                bin.display()
            );
            if in_ci() {
                panic!("{msg}; CI=true forbids skipping");
            }
            eprintln!("skipping {msg}");
            return None;
        }
    }
    let mut options = LabOptions::new(weir, cni);
    options.serve_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_weir-lab")));
    Some(options)
}

/// Path of the `weir-lab` binary under test.
pub fn weir_lab_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir-lab"))
}

/// Named namespaces of run `run_id`.
pub fn netns_of_run(run_id: &str) -> Vec<String> {
    weir_integration::netns::list(&format!("weirlab-{run_id}-"))
}
