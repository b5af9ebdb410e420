//! What `vm-test` needs on the host: Debian packages (QEMU, cpio and the
//! small tools used to unpack kernels and strip binaries), the musl target,
//! and the way host programs are run and checked. Nothing here touches the
//! guest.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Host tools of the VM runner and the Debian package that provides each.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    // Kernel modules of 6.12 and later ship as .ko.xz.
    ("xz", "xz-utils"),
    // Test binaries are stripped of debug info before they go to the guest.
    ("strip", "binutils"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

/// The static target the guest binaries are built for.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Installs the missing host packages (as root) and the musl target.
pub fn ensure() -> Result<()> {
    let mut missing: Vec<&str> = VM_PACKAGES
        .iter()
        .filter(|(tool, _)| !crate::have(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !Path::new("/usr/share/qemu/qboot.rom").exists() {
        // qboot comes with qemu-system-data, a dependency of qemu-system-x86.
        missing.push("qemu-system-x86");
    }
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        if !crate::is_root() {
            bail!(
                "vm-test needs the Debian packages {missing:?}; run as root or: apt-get install -y {}",
                missing.join(" ")
            );
        }
        eprintln!("xtask vm-test: installing {missing:?}");
        checked(Command::new("apt-get").args(["update", "-q"]))?;
        checked(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        checked(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }
    Ok(())
}

/// Runs `c` with its output shown; fails unless it exits with 0.
pub fn checked(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed with {st}");
    }
    Ok(())
}

/// Runs `c` quietly; returns its stdout, or fails with its stderr.
pub fn output(c: &mut Command) -> Result<String> {
    let out = quiet(c)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `c` quietly and fails with its stderr unless it exits with 0.
pub fn quiet(c: &mut Command) -> Result<Output> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The accelerator QEMU should use: KVM only where it really works.
///
/// A `/dev/kvm` can exist on top of software nested virtualisation
/// (`kvm_pvm`, no vmx/svm in the CPU flags), where unmodified kernels abort
/// or crawl; plain TCG is then faster and reliable.
pub fn kvm_usable() -> bool {
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    writable && flags && !Path::new("/sys/module/kvm_pvm").exists()
}
