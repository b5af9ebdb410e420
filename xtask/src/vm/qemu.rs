//! Boots one kernel with QEMU (serial console on stdio, isa-debug-exit
//! device, no reboot), enforces the per-kernel timeout, and parses the
//! guest's marker lines into a result. The marker lines are authoritative:
//! no end marker means a hang, a panic or a dead /init, never a pass.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::initramfs::MARK;

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Plain emulation: slower per instruction, works everywhere.
    Tcg,
    /// Hardware virtualisation, only where it really works (see `host::kvm_usable`).
    Kvm,
}

/// What came back from one boot.
pub struct Boot {
    /// Everything the guest wrote to the serial console.
    pub console: String,
    /// QEMU start to QEMU exit (or to the kill at the timeout).
    pub elapsed: Duration,
    pub timed_out: bool,
    /// QEMU's own stderr (bad options, missing firmware).
    pub qemu_stderr: String,
}

/// Boots `kernel` with `initrd`, writing the console to `log` as well.
pub fn boot(
    kernel: &Path,
    initrd: &Path,
    accel: Accel,
    timeout: Duration,
    log: &Path,
) -> Result<Boot> {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Tcg => c.args(["-machine", "pc,accel=tcg", "-cpu", "qemu64"]),
        Accel::Kvm => c.args(["-machine", "pc,accel=kvm", "-cpu", "host"]),
    };
    c.args(["-bios", "/usr/share/qemu/qboot.rom"])
        // One vCPU: -smp 2 measured no faster for these tests under TCG.
        .args(["-m", "1024M", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // quiet: kernel messages below warning stay off the slow console.
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 oops=panic quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let out_reader = {
        let mut stdout = child.stdout.take().context("qemu stdout")?;
        let console = Arc::clone(&console);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console
                    .lock()
                    .expect("console lock")
                    .extend_from_slice(&buf[..n]);
            }
        })
    };
    let err_reader = {
        let mut stderr = child.stderr.take().context("qemu stderr")?;
        thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        })
    };
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let _ = out_reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let bytes = console.lock().expect("console lock").clone();
    std::fs::write(log, &bytes).with_context(|| format!("writing {}", log.display()))?;
    Ok(Boot {
        console: String::from_utf8_lossy(&bytes).replace('\r', ""),
        elapsed,
        timed_out,
        qemu_stderr,
    })
}

/// One test executable's outcome in the guest.
#[derive(Debug, Default)]
pub struct BinaryResult {
    pub name: String,
    pub rc: i32,
    /// Its `test ...` lines when it passed, the tail of its output when not.
    pub output: Vec<String>,
    /// Guest seconds from start to exit.
    pub seconds: f64,
}

impl BinaryResult {
    /// (passed, failed) from libtest's `test result:` line.
    pub fn counts(&self) -> (u32, u32) {
        let Some(line) = self
            .output
            .iter()
            .rev()
            .find(|l| l.starts_with("test result:"))
        else {
            return (0, u32::from(self.rc != 0));
        };
        let num = |word: &str| {
            line.split(';')
                .find(|part| part.trim_end().ends_with(word))
                .and_then(|part| part.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("passed"), num("failed"))
    }
}

/// The guest's report, parsed from the console.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    pub binaries: Vec<BinaryResult>,
    /// The end marker was seen.
    pub done: bool,
    /// A setup step (module load) failed before the tests.
    pub setup_error: Option<String>,
    /// A binary that began but never ended (hang, panic, crash of the VM).
    pub unfinished: Option<String>,
    /// Guest uptime when /init started (kernel boot and initramfs unpacking).
    pub init_uptime: Option<f64>,
    /// Guest uptime at the end marker.
    pub uptime: Option<f64>,
}

pub fn parse(console: &str) -> GuestReport {
    let mut r = GuestReport::default();
    let mut current: Option<BinaryResult> = None;
    let begin = format!("{MARK}_BEGIN ");
    let end = format!("{MARK}_END ");
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{MARK}_KERNEL ")) {
            let mut words = rest.split_whitespace();
            r.release = words.next().map(str::to_string);
            r.init_uptime = words
                .find_map(|w| w.strip_prefix("uptime="))
                .and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix(&format!("{MARK}_SETUP_ERROR ")) {
            r.setup_error = Some(rest.trim().to_string());
        } else if let Some(name) = line.strip_prefix(&begin) {
            current = Some(BinaryResult {
                name: name.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(rest) = line.strip_prefix(&end) {
            if let Some(mut b) = current.take() {
                let field = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key))
                        .map(str::to_string)
                };
                b.rc = field("rc=").and_then(|v| v.parse().ok()).unwrap_or(-1);
                let t = |k| field(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                b.seconds = t("end=") - t("start=");
                r.binaries.push(b);
            }
        } else if let Some(rest) = line.strip_prefix(&format!("{MARK}_DONE")) {
            r.done = true;
            r.uptime = rest
                .trim()
                .strip_prefix("uptime=")
                .and_then(|v| v.parse().ok());
        } else if let Some(b) = current.as_mut() {
            b.output.push(line.to_string());
        }
    }
    r.unfinished = current.map(|b| b.name);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.5] some kernel warning
VMTEST_KERNEL 6.1.0-57-cloud-amd64 uptime=1.25
VMTEST_BEGIN weir-datapath/attach
running 5 tests
test a ... ok
test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.00s
VMTEST_END weir-datapath/attach rc=0 start=1.50 end=5.25
VMTEST_BEGIN weir-cni/cni
test b ... FAILED
test result: FAILED. 11 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out
VMTEST_END weir-cni/cni rc=101 start=5.25 end=9.00
VMTEST_DONE uptime=9.10
";

    #[test]
    fn a_full_report_is_parsed() {
        let r = parse(CONSOLE);
        assert_eq!(r.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert!(r.done);
        assert_eq!(r.uptime, Some(9.10));
        assert_eq!(r.init_uptime, Some(1.25));
        assert_eq!(r.binaries.len(), 2);
        assert_eq!(r.binaries[0].rc, 0);
        assert_eq!(r.binaries[0].counts(), (5, 0));
        assert!((r.binaries[0].seconds - 3.75).abs() < 1e-9);
        assert_eq!(r.binaries[1].rc, 101);
        assert_eq!(r.binaries[1].counts(), (11, 2));
        assert!(r.unfinished.is_none());
    }

    #[test]
    fn a_hang_leaves_an_unfinished_binary_and_no_done() {
        let cut = &CONSOLE[..CONSOLE.find("VMTEST_END weir-cni").unwrap()];
        let r = parse(cut);
        assert!(!r.done);
        assert_eq!(r.unfinished.as_deref(), Some("weir-cni/cni"));
        assert_eq!(r.binaries.len(), 1);
    }

    #[test]
    fn a_crash_without_summary_counts_one_failure() {
        let b = BinaryResult {
            rc: 139,
            ..Default::default()
        };
        assert_eq!(b.counts(), (0, 1));
    }
}
