//! Shared helpers of the lab's integration tests.
//!
//! Privileged tests skip with a message when not root, but fail when
//! `CI=true`. Tests that need the agent find `weir` and `weir-cni` next to
//! the test executable's parent (`target/debug/`, where CI builds them with
//! `cargo build --workspace --bins` before testing); `WEIR_LAB_WEIR` and
//! `WEIR_LAB_CNI` point elsewhere for local debugging.

#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;

use weir_integration::{LabOptions, is_root, sibling_binary};

pub fn in_ci() -> bool {
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

pub fn binary(env: &str, name: &str) -> PathBuf {
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

/// `weir-lab run SCENARIO` with the lab's agent and plugin, in the
/// background and with its output discarded: for the crash-safety tests
/// that kill it mid-run.
pub fn spawn_weir_lab_run(scenario: &std::path::Path, options: &LabOptions) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(weir_lab_bin())
        .arg("run")
        .arg(scenario)
        .arg("--weir")
        .arg(&options.weir_bin)
        .arg("--cni")
        .arg(&options.cni_bin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir-lab run starts")
}

/// Named namespaces of run `run_id`.
pub fn netns_of_run(run_id: &str) -> Vec<String> {
    weir_integration::netns::list(&format!("weirlab-{run_id}-"))
}

/// Runs the `weir` binary under test (`WEIR_LAB_WEIR` or next to the tests)
/// with `args`, as a user runs it.
pub fn run_weir<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(binary("WEIR_LAB_WEIR", "weir"))
        .args(args)
        .output()
        .expect("run weir")
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The flows `weir observe -o json` (or `jsonpb`) printed, one per line.
pub fn observed_flows(o: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .map(|v| v.get("flow").cloned().unwrap_or(v))
        .collect()
}

/// The value of one series (`name{labels}` exactly as exposed) on the lab
/// agent's /metrics, read with a plain blocking GET so that it can be used
/// from synchronous polling closures; None when absent or unreachable.
pub fn metric(lab: &weir_integration::Lab, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(lab.metrics_addr()?).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// `name{labels} value` lines of a Prometheus exposition, keyed by the whole
/// series.
pub fn metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `family` whose labels contain all of `labels`.
pub fn sum(m: &BTreeMap<String, f64>, family: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == family || k.starts_with(&format!("{family}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}
