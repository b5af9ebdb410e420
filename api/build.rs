//! Generates the protobuf types and the tonic client and server code for
//! Weir's own Hubble-compatible `.proto` files in `proto/`.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "proto/flow/flow.proto",
    "proto/relay/relay.proto",
    "proto/observer/observer.proto",
    "proto/peer/peer.proto",
    "proto/weir/flow/v1/extensions.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PROTOC_INCLUDE");

    let mut includes = vec![PathBuf::from("proto")];
    // The well-known types (google/protobuf/*.proto): Debian's protoc finds
    // them in /usr/include; PROTOC_INCLUDE overrides.
    match std::env::var_os("PROTOC_INCLUDE") {
        Some(dir) => includes.push(PathBuf::from(dir)),
        None if Path::new("/usr/include/google/protobuf/any.proto").exists() => {
            includes.push(PathBuf::from("/usr/include"));
        }
        None => {}
    }

    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` impls, so messages know their type URL (for `Any`).
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    tonic_prost_build::configure()
        // Embedded by src/json.rs, which prints messages as protobuf JSON.
        .file_descriptor_set_path(out_dir.join("weir_api_descriptor.bin"))
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
