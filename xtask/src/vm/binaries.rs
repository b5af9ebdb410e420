//! Which test binaries run in the guest and how they are built, with
//! cargo's JSON messages naming the executables. By default they are built
//! statically for musl (the guest has no libc). With `--host-build` they
//! are the host target's own test executables, whose dependencies
//! `cargo xtask test` has already compiled; the initramfs then carries their
//! shared libraries. Either way the eBPF object inside
//! weir-datapath is built by its build.rs with the nightly for
//! bpfel-unknown-none, so both embed the same programs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::host::MUSL_TARGET;

/// A crate whose privileged integration tests run in the guest.
pub struct Suite {
    /// Cargo package name (what `--package` takes).
    pub package: &'static str,
    /// Packages whose binaries the tests run (beyond the package's own,
    /// which `cargo test` builds anyway).
    bin_packages: &'static [&'static str],
    /// Host programs the tests run (copied with their shared libraries).
    pub tools: &'static [&'static str],
    /// Kernel modules to load before the tests (with their dependencies).
    pub modules: &'static [&'static str],
    /// Part of the default run.
    default: bool,
}

/// Modules for tc programs on veths: clsact (sch_ingress), cls_bpf and
/// act_bpf are modules in Debian's cloud kernels, as is veth.
const TC_MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "act_bpf"];

pub const SUITES: &[Suite] = &[
    Suite {
        package: "weir-datapath",
        bin_packages: &[],
        // attach.rs: `ip netns`, `tc filter show` (clsact mode), `ping`.
        tools: &["ip", "tc", "ping"],
        modules: TC_MODULES,
        default: true,
    },
    Suite {
        package: "weir-cni",
        bin_packages: &[],
        // The tests read kernel state with `ip -j` (busybox ip has no JSON)
        // and ping between pods; weir-cni itself speaks netlink.
        tools: &["ip", "ping"],
        modules: &["veth"],
        default: true,
    },
    Suite {
        // The lab tests start `weir` and `weir-cni` found next to the test
        // executable (target/<triple>/debug), which is where they land here.
        package: "weir-integration",
        bin_packages: &["weir-agent", "weir-cni"],
        tools: &["ip", "tc", "ping"],
        modules: TC_MODULES,
        default: false,
    },
];

/// The package of the deliberately broken program (`--selftest-broken`).
pub const SELFTEST_PACKAGE: &str = "weir-vm-init";

/// A test executable for the guest.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `package/target`, e.g. `weir-datapath/attach`.
    pub name: String,
    /// Absolute host path; the guest uses the same path.
    pub path: PathBuf,
    /// The package directory: cargo runs tests from there.
    pub cwd: PathBuf,
}

/// What a build produced for the guest.
#[derive(Debug, Default)]
pub struct Built {
    pub tests: Vec<TestBinary>,
    /// Binaries the tests start (with their package), placed at their host
    /// paths in the guest (that is where `CARGO_BIN_EXE_*` and sibling
    /// lookups point).
    pub bins: Vec<(String, PathBuf)>,
}

pub fn suites(packages: &[String]) -> Result<Vec<&'static Suite>> {
    if packages.is_empty() {
        return Ok(SUITES.iter().filter(|s| s.default).collect());
    }
    packages
        .iter()
        .map(|p| {
            SUITES.iter().find(|s| s.package == p).with_context(|| {
                let known: Vec<_> = SUITES.iter().map(|s| s.package).collect();
                format!("no VM suite for package {p:?}; known: {known:?}")
            })
        })
        .collect()
}

/// How the guest's executables are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `--target x86_64-unknown-linux-musl`: static, a build of its own.
    StaticMusl,
    /// The host target: dynamic, and the dependencies are those that
    /// `cargo xtask test` already compiled.
    Host,
}

/// Builds the test executables of `suites` (and the binaries they start).
pub fn build(suites: &[&Suite], flavour: Flavour) -> Result<Built> {
    let wanted: BTreeSet<&str> = suites.iter().map(|s| s.package).collect();
    let bin_packages: BTreeSet<&str> = suites
        .iter()
        .flat_map(|s| s.bin_packages)
        .copied()
        .collect();
    let mut built = Built::default();
    let mut c = cargo_json(&["test", "--no-run"], flavour);
    for p in &wanted {
        c.args(["-p", p]);
    }
    collect(&mut c, &mut built)?;
    // Unit tests of the libraries are not privileged and run on the host;
    // the guest gets the integration tests (`tests/*.rs`).
    built
        .tests
        .retain(|t| wanted.contains(t.name.split('/').next().unwrap_or_default()));
    built.tests.sort_by(|a, b| a.name.cmp(&b.name));

    if !bin_packages.is_empty() {
        let mut c = cargo_json(&["build", "--bins"], flavour);
        for p in &bin_packages {
            c.args(["-p", p]);
        }
        let mut extra = Built::default();
        collect(&mut c, &mut extra)?;
        built.bins.extend(extra.bins);
    }
    // Only the binaries the chosen tests can start go to the guest.
    built.bins.retain(|(package, _)| {
        wanted.contains(package.as_str()) || bin_packages.contains(package.as_str())
    });
    built.bins.sort();
    built.bins.dedup();
    if built.tests.is_empty() {
        bail!(
            "the build produced no test executable for {:?}",
            suites.iter().map(|s| s.package).collect::<Vec<_>>()
        );
    }
    Ok(built)
}

/// Builds the broken-program binary; it is the only "test" of the run.
pub fn build_selftest() -> Result<Built> {
    let mut out = Built::default();
    let mut c = cargo_json(&["build", "--bins"], Flavour::StaticMusl);
    c.args(["-p", SELFTEST_PACKAGE]);
    collect(&mut c, &mut out)?;
    let (_, path) = out.bins.pop().context("weir-vm-init built no binary")?;
    Ok(Built {
        tests: vec![TestBinary {
            name: format!("{SELFTEST_PACKAGE}/weir-vm-broken-program"),
            cwd: crate::root(),
            path,
        }],
        bins: Vec::new(),
    })
}

fn cargo_json(args: &[&str], flavour: Flavour) -> Command {
    let mut c = crate::cargo();
    c.args(args);
    if flavour == Flavour::StaticMusl {
        c.args(["--target", MUSL_TARGET]);
    }
    // Diagnostics stay readable on stderr; stdout carries the JSON.
    c.arg("--message-format=json-render-diagnostics");
    c
}

/// Runs a cargo build and records the executables its messages name.
fn collect(c: &mut Command, into: &mut Built) -> Result<()> {
    eprintln!("xtask vm-test: {c:?}");
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("the static build failed ({})", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds: Vec<&str> = msg["target"]["kind"]
            .as_array()
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
        let package = package_name(&msg).unwrap_or_default();
        if is_test && kinds.contains(&"test") {
            let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
            into.tests.push(TestBinary {
                name: format!(
                    "{package}/{}",
                    msg["target"]["name"].as_str().unwrap_or("?")
                ),
                path: PathBuf::from(exe),
                cwd: manifest
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(crate::root),
            });
        } else if !is_test && kinds.contains(&"bin") {
            into.bins.push((package, PathBuf::from(exe)));
        }
    }
    Ok(())
}

/// The package name in a message's `package_id`: either the old
/// `name version (source)` form or the newer `path+file:///dir#name@version`
/// (where `#version` alone means the name is the directory's).
fn package_name(msg: &Value) -> Option<String> {
    let id = msg["package_id"].as_str()?;
    if !id.contains('#') {
        return id.split_whitespace().next().map(str::to_string);
    }
    let (path, frag) = id.rsplit_once('#')?;
    match frag.split_once('@') {
        Some((name, _)) => Some(name.to_string()),
        None => path.rsplit('/').next().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_from_ids() {
        let m = |id: &str| serde_json::json!({ "package_id": id });
        assert_eq!(
            package_name(&m("path+file:///work/main/agent/cni#weir-cni@0.1.0")).as_deref(),
            Some("weir-cni")
        );
        assert_eq!(
            package_name(&m("path+file:///work/main/xtask#0.1.0")).as_deref(),
            Some("xtask")
        );
        assert_eq!(
            package_name(&m("weir-cni 0.1.0 (path+file:///x)")).as_deref(),
            Some("weir-cni")
        );
    }

    #[test]
    fn default_suites_are_datapath_and_cni() {
        let names: Vec<_> = suites(&[]).unwrap().iter().map(|s| s.package).collect();
        assert_eq!(names, ["weir-datapath", "weir-cni"]);
        assert!(suites(&["weir-integration".into()]).is_ok());
        assert!(suites(&["nope".into()]).is_err());
    }
}
