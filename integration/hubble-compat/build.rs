//! Generates gRPC clients from the UPSTREAM Hubble protos (never from Weir's
//! own api/ protos: the point of this crate is an independent client).
//!
//! Where the protos are: `WEIR_HUBBLE_API_PROTOS`, else the first ancestor of
//! this crate holding `shared/reference/hubble-api`. When they are nowhere,
//! the build still succeeds (the whole workspace builds in CI) with
//! `cfg(hubble_protos_missing)`: the crate's API then answers with an error
//! naming where it looked, and the tests fail under CI=true or skip.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The proto files, relative to the proto root (imports use these paths).
const PROTOS: [&str; 4] = [
    "flow/flow.proto",
    "observer/observer.proto",
    "peer/peer.proto",
    "relay/relay.proto",
];
const ENV: &str = "WEIR_HUBBLE_API_PROTOS";
const RELATIVE: &str = "shared/reference/hubble-api";

fn find_protos(manifest_dir: &Path) -> (Option<PathBuf>, String) {
    if let Some(dir) = std::env::var_os(ENV) {
        let dir = PathBuf::from(dir);
        let searched = format!("{} (from {ENV})", dir.display());
        return (has_protos(&dir).then_some(dir), searched);
    }
    let found = manifest_dir
        .ancestors()
        .map(|a| a.join(RELATIVE))
        .find(|d| has_protos(d));
    let searched = format!(
        "{RELATIVE} in every ancestor of {} (or set {ENV})",
        manifest_dir.display()
    );
    (found, searched)
}

fn has_protos(dir: &Path) -> bool {
    PROTOS.iter().all(|p| dir.join(p).is_file())
}

fn main() -> Result<()> {
    println!("cargo::rustc-check-cfg=cfg(hubble_protos_missing)");
    println!("cargo::rerun-if-env-changed={ENV}");
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let (found, searched) = find_protos(&manifest_dir);
    let Some(dir) = found else {
        println!("cargo::rustc-cfg=hubble_protos_missing");
        println!("cargo::rustc-env=WEIR_HUBBLE_API_PROTOS_SEARCHED={searched}");
        return Ok(());
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolve {}", dir.display()))?;
    println!(
        "cargo::rustc-env=WEIR_HUBBLE_API_PROTOS_DIR={}",
        dir.display()
    );
    for p in PROTOS {
        println!("cargo::rerun-if-changed={}", dir.join(p).display());
    }
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| dir.join(p)).collect();
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // The descriptor set (with the well-known types it imports) lets the
        // crate print and parse messages as canonical protobuf JSON, the same
        // mapping the Python client uses.
        .file_descriptor_set_path(out_dir.join("hubble_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&dir))
        .with_context(|| {
            format!(
                "compile the upstream Hubble protos in {} (protoc from PROTOC or PATH; Debian: protobuf-compiler)",
                dir.display()
            )
        })?;
    Ok(())
}
