//! The bench's own network namespaces (`wbench-<pid>-<role>`) and the veth
//! pair between two of them. Owns their life: a [`Namespaces`] guard deletes
//! them on drop (which also destroys the veths inside), and [`sweep_stale`]
//! removes what a killed run left behind. Never touches the machine's own
//! network namespace or its interfaces.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use weir_integration::netns;

/// Prefix of every namespace the bench makes.
pub const PREFIX: &str = "wbench-";

/// Namespaces made by this process; deleted on drop.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `wbench-<pid>-<role>` and returns its path.
    pub fn create(&mut self, role: &str) -> Result<PathBuf> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        // Recorded before it exists, so a half-made one is removed as well.
        self.names.push(name.clone());
        netns::create(&name).with_context(|| format!("creating netns {name}"))
    }

    /// The name of the namespace of `role`.
    pub fn name(&self, role: &str) -> String {
        format!("{PREFIX}{}-{role}", std::process::id())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            if let Err(e) = netns::delete(&name) {
                tracing::warn!(netns = %name, error = %e, "deleting a bench namespace");
            }
        }
    }
}

/// Deletes `wbench-<pid>-*` namespaces whose process is gone (a run that was
/// killed before its guards ran). Returns their names.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in netns::list(PREFIX) {
        let pid = name[PREFIX.len()..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                // The binary, or its test executable (`weir_bench-<hash>`).
                .is_ok_and(|c| c.starts_with("weir-bench") || c.starts_with("weir_bench"))
        });
        if !alive && netns::delete(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Runs `f` on a thread inside namespace `ns`; an error names the namespace.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    netns::run_in(ns, f).with_context(|| format!("entering {}", ns.display()))
}

/// Runs `ip ARGS`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Two namespaces joined by one veth pair: `wb0` (`10.201.0.1/24`) in `a`,
/// `wb1` (`10.201.0.2/24`) in `b`.
#[derive(Debug)]
pub struct Pair {
    /// Deleting the namespaces destroys the veth pair with them.
    _namespaces: Namespaces,
    pub a: PathBuf,
    pub b: PathBuf,
}

/// Interface in `a`.
pub const IF_A: &str = "wb0";
/// Interface in `b`.
pub const IF_B: &str = "wb1";
pub const ADDR_A: &str = "10.201.0.1";
pub const ADDR_B: &str = "10.201.0.2";

impl Pair {
    /// The first pair of a process is `wbench-<pid>-a|b`; pairs made while
    /// it exists (the crate's tests run in parallel) get `a2|b2`, `a3|b3`...
    pub fn create() -> Result<Pair> {
        static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let suffix = if n == 1 { String::new() } else { n.to_string() };
        let (role_a, role_b) = (format!("a{suffix}"), format!("b{suffix}"));
        let mut namespaces = Namespaces::default();
        let a = namespaces.create(&role_a)?;
        let b = namespaces.create(&role_b)?;
        let (na, nb) = (namespaces.name(&role_a), namespaces.name(&role_b));
        ip(&[
            "-n", &na, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns", &nb,
        ])?;
        ip(&[
            "-n",
            &na,
            "addr",
            "add",
            &format!("{ADDR_A}/24"),
            "dev",
            IF_A,
        ])?;
        ip(&[
            "-n",
            &nb,
            "addr",
            "add",
            &format!("{ADDR_B}/24"),
            "dev",
            IF_B,
        ])?;
        ip(&["-n", &na, "link", "set", IF_A, "up"])?;
        ip(&["-n", &nb, "link", "set", IF_B, "up"])?;
        Ok(Pair {
            _namespaces: namespaces,
            a,
            b,
        })
    }
}
