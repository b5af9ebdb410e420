//! Builds the eBPF object (ebpf/programs, crate `weir-ebpf`) with the nightly
//! toolchain through aya-build and leaves it in OUT_DIR, where `src/lib.rs`
//! embeds it with `include_bytes_aligned!`.
//!
//! Why the working directory changes: aya-build 0.2.0 runs
//! `rustup run nightly cargo build --package weir-ebpf --target bpfel-unknown-none`
//! in the build script's working directory and takes no manifest path. From
//! here that cargo would find the root workspace, which excludes
//! ebpf/programs (it cannot build for the host), and fail to find the
//! package. ebpf/programs has a `[workspace]` table of its own, so running
//! the inner cargo from that directory resolves exactly that crate, with its
//! own lock file and release profile. The build script is its own process,
//! so changing its working directory affects nothing else.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_root = manifest_dir.join("../../ebpf");
    let programs = ebpf_root
        .join("programs")
        .canonicalize()
        .context("ebpf/programs not found")?;
    let common = ebpf_root
        .join("common")
        .canonicalize()
        .context("ebpf/common not found")?;

    // aya-build asks for a rerun when the programs' directory changes; the
    // shared ABI crate is a dependency of the programs, so watch it as well.
    println!("cargo:rerun-if-changed={}", common.display());

    env::set_current_dir(&programs)
        .with_context(|| format!("cannot enter {}", programs.display()))?;
    let root_dir = programs
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", programs.display()))?;
    // aya-build echoes every line of the inner cargo as `cargo:warning=`,
    // so its progress lines ("Compiling ...") would read as build warnings.
    // A quiet inner cargo prints only real diagnostics, which still surface.
    // SAFETY: the build script is single-threaded; nothing reads the
    // environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "weir-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;

    // With AYA_BUILD_SKIP=1 (e.g. a docs-only build) aya-build builds
    // nothing; an empty object keeps this crate compiling and makes
    // `Datapath::load` fail with a clear error instead.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("weir-ebpf");
    if !object.exists() {
        fs::write(&object, []).with_context(|| format!("cannot write {}", object.display()))?;
    }
    Ok(())
}
