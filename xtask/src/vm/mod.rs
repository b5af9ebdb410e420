//! `cargo xtask vm-test`: the privileged tests on other kernels, each in a
//! QEMU guest booted from an initramfs made here.
//!
//! Steps: host packages and the musl target ([`host`]); static test
//! executables ([`binaries`]); Debian kernels and busybox fetched into
//! `target/vm-cache/` ([`kernel`]); one common and one per-kernel cpio
//! ([`initramfs`]); a boot per kernel with a timeout, the guest's markers
//! parsed into passed/failed ([`qemu`]). Scratch files (staging trees,
//! archives, console logs) go to `target/vm-test/`.
//!
//! This module owns nothing outside those two directories: it never
//! installs kernels on the host and never edits /etc/apt.

mod binaries;
mod host;
mod initramfs;
mod kernel;
mod qemu;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use qemu::Accel;

const USAGE: &str = "\
cargo xtask vm-test [OPTIONS] [-- TEST ARGS]
  Runs the privileged tests (weir-datapath, weir-cni) in QEMU guests on
  Debian kernels; TEST ARGS go to every libtest binary (a name filter,
  --exact, --skip NAME ...).
  --kernel K        5.10, 6.1, 6.12, 7.3, a comma list, or all (default all)
  --package P       test package instead of the defaults (repeatable;
                    weir-datapath, weir-cni, weir-integration)
  --timeout SECS    per kernel, boot included (default 600)
  --accel A         tcg, kvm or auto (default auto: KVM only where it works)
  --refresh         re-resolve and download the kernels and busybox again
  --host-build      use host-target (dynamic) test executables, whose
                    dependencies `cargo xtask test` already compiled, instead
                    of a static musl build (which compiles them all again);
                    the initramfs then carries their shared libraries
  --selftest-broken boot a deliberately broken eBPF program instead of the
                    tests and check that the run fails with the kernel name
                    and the verifier's message";

/// Parsed command line of `vm-test`.
#[derive(Debug)]
struct Options {
    kernels: Vec<&'static kernel::KernelSpec>,
    packages: Vec<String>,
    timeout: Duration,
    accel: Option<Accel>,
    refresh: bool,
    selftest_broken: bool,
    flavour: binaries::Flavour,
    test_args: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        kernels: Vec::new(),
        packages: Vec::new(),
        timeout: Duration::from_secs(600),
        accel: None,
        refresh: false,
        selftest_broken: false,
        flavour: binaries::Flavour::StaticMusl,
        test_args: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--" => {
                o.test_args = it.by_ref().cloned().collect();
            }
            "--kernel" => {
                for k in value("--kernel")?.split(',') {
                    if k == "all" {
                        o.kernels.extend(kernel::KERNELS.iter());
                    } else {
                        o.kernels.push(kernel::spec(k)?);
                    }
                }
            }
            "--package" | "-p" => o.packages.push(value("--package")?),
            "--timeout" => {
                let secs: u64 = value("--timeout")?
                    .parse()
                    .context("--timeout takes whole seconds")?;
                o.timeout = Duration::from_secs(secs);
            }
            "--accel" => {
                o.accel = match value("--accel")?.as_str() {
                    "tcg" => Some(Accel::Tcg),
                    "kvm" => Some(Accel::Kvm),
                    "auto" => None,
                    other => bail!("--accel {other}: tcg, kvm or auto"),
                }
            }
            "--refresh" => o.refresh = true,
            "--host-build" => o.flavour = binaries::Flavour::Host,
            "--selftest-broken" => o.selftest_broken = true,
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown vm-test option {other}\n{USAGE}"),
        }
    }
    if o.kernels.is_empty() {
        o.kernels.extend(kernel::KERNELS.iter());
    }
    let mut seen = BTreeSet::new();
    o.kernels.retain(|k| seen.insert(k.label));
    Ok(o)
}

/// The outcome on one kernel.
struct KernelOutcome {
    label: String,
    /// Package and version, when the kernel could be fetched.
    kernel: Option<kernel::Kernel>,
    report: qemu::GuestReport,
    boot: Option<qemu::Boot>,
    /// Why the run failed before or outside the tests.
    error: Option<String>,
    expected_binaries: usize,
}

impl KernelOutcome {
    fn passed(&self) -> bool {
        self.error.is_none()
            && self.report.done
            && self.report.setup_error.is_none()
            && self.report.binaries.len() == self.expected_binaries
            && self.report.binaries.iter().all(|b| b.rc == 0)
    }

    /// Tests passed and failed; a binary that never finished counts as one failure.
    fn counts(&self) -> (u32, u32) {
        let (p, f) = self
            .report
            .binaries
            .iter()
            .map(qemu::BinaryResult::counts)
            .fold((0, 0), |(p, f), (bp, bf)| (p + bp, f + bf));
        (p, f + u32::from(self.report.unfinished.is_some()))
    }
}

/// Entry point of `cargo xtask vm-test`.
pub fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let o = parse_args(args)?;
    host::ensure()?;
    let accel = o.accel.unwrap_or(if host::kvm_usable() {
        Accel::Kvm
    } else {
        Accel::Tcg
    });

    let build_start = Instant::now();
    let (built, suites) = if o.selftest_broken {
        (binaries::build_selftest()?, Vec::new())
    } else {
        let suites = binaries::suites(&o.packages)?;
        (binaries::build(&suites, o.flavour)?, suites)
    };
    let build_time = build_start.elapsed();
    let tools: BTreeSet<&'static str> = suites.iter().flat_map(|s| s.tools).copied().collect();
    let modules: BTreeSet<String> = suites
        .iter()
        .flat_map(|s| s.modules)
        .map(|m| m.to_string())
        .collect();

    let cache = crate::target_dir().join("vm-cache");
    let scratch = crate::target_dir().join("vm-test");
    fs::create_dir_all(&scratch)?;
    let busybox = kernel::busybox(&cache, o.refresh)?;
    let common = scratch.join("common.cpio");
    initramfs::common(
        &scratch.join("stage-common"),
        &common,
        &initramfs::Contents {
            busybox: &busybox,
            tests: &built.tests,
            bins: &built.bins,
            tools: &tools,
            test_args: &o.test_args,
            // Leaves the host's limit room to collect the report.
            binary_timeout_secs: o.timeout.as_secs().saturating_sub(20).max(10),
        },
    )?;
    eprintln!(
        "xtask vm-test: {} test executable(s) built in {:.1} s, initramfs {:.1} MB; accel {accel:?}",
        built.tests.len(),
        build_time.as_secs_f64(),
        fs::metadata(&common)?.len() as f64 / 1e6
    );

    let mut outcomes = Vec::new();
    for spec in &o.kernels {
        let outcome = run_kernel(
            spec,
            &o,
            accel,
            &cache,
            &scratch,
            &common,
            &busybox,
            &modules,
            built.tests.len(),
        );
        print_outcome(&outcome);
        outcomes.push(outcome);
    }
    print_summary(&outcomes, build_time, started.elapsed(), accel);

    if o.selftest_broken {
        return check_selftest(&outcomes);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|k| !k.passed())
        .map(|k| k.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the arguments"
)]
fn run_kernel(
    spec: &kernel::KernelSpec,
    o: &Options,
    accel: Accel,
    cache: &Path,
    scratch: &Path,
    common: &Path,
    busybox: &Path,
    modules: &BTreeSet<String>,
    expected_binaries: usize,
) -> KernelOutcome {
    let mut outcome = KernelOutcome {
        label: spec.label.to_string(),
        kernel: None,
        report: qemu::GuestReport::default(),
        boot: None,
        error: None,
        expected_binaries,
    };
    let result = (|| -> Result<()> {
        let k = kernel::fetch(cache, spec, o.refresh)?;
        outcome.kernel = Some(k.clone());
        let dir = scratch.join(spec.label);
        fs::create_dir_all(&dir)?;
        let mods = dir.join("modules.cpio");
        initramfs::modules(&dir.join("stage-modules"), &mods, busybox, &k, modules)?;
        let initrd = dir.join("initrd.cpio");
        concat(&[common, &mods], &initrd)?;
        eprintln!(
            "xtask vm-test: booting {} ({} {})",
            spec.label, k.package, k.version
        );
        let boot = qemu::boot(
            &k.vmlinuz,
            &initrd,
            accel,
            o.timeout,
            &dir.join("console.log"),
        );
        // common.cpio + modules.cpio stay for a manual boot (`cat` them).
        fs::remove_file(&initrd)?;
        let boot = boot?;
        outcome.report = qemu::parse(&boot.console);
        outcome.boot = Some(boot);
        Ok(())
    })();
    if let Err(e) = result {
        outcome.error = Some(format!("{e:#}"));
    }
    outcome
}

fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend(fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn print_outcome(k: &KernelOutcome) {
    let name = match &k.kernel {
        Some(kernel) => format!("{} ({})", k.label, kernel.release),
        None => k.label.clone(),
    };
    let mut s = String::new();
    for b in &k.report.binaries {
        let (p, f) = b.counts();
        let verdict = if b.rc == 0 { "ok" } else { "FAILED" };
        let _ = writeln!(
            s,
            "  {:<32} {verdict:<6} {p} passed, {f} failed, {:.1} s (rc={})",
            b.name, b.seconds, b.rc
        );
    }
    eprintln!(
        "\n== kernel {name}: {} ==\n{s}",
        if k.passed() { "PASS" } else { "FAIL" }
    );
    for b in k.report.binaries.iter().filter(|b| b.rc != 0) {
        eprintln!(
            "---- kernel {name}: {} failed (rc={}); its output (tail) ----\n{}\n---- end of {} on {name} ----\n",
            b.name,
            b.rc,
            b.output.join("\n"),
            b.name
        );
    }
    if let Some(e) = &k.error {
        eprintln!("kernel {name}: {e}");
    }
    if let Some(e) = &k.report.setup_error {
        eprintln!("kernel {name}: guest setup failed: {e}");
    }
    if let Some(boot) = &k.boot {
        let why = if boot.timed_out {
            Some(format!(
                "timed out after {:.0} s",
                boot.elapsed.as_secs_f64()
            ))
        } else if !k.report.done {
            Some(
                "the guest stopped before its end marker (kernel panic, crash or dead /init)"
                    .to_string(),
            )
        } else if k.report.binaries.len() != k.expected_binaries {
            Some(format!(
                "{} of {} test executables reported",
                k.report.binaries.len(),
                k.expected_binaries
            ))
        } else {
            None
        };
        if let Some(why) = why {
            if let Some(u) = &k.report.unfinished {
                eprintln!("kernel {name}: {u} never finished");
            }
            eprintln!(
                "kernel {name}: {why}; console tail (whole log in target/vm-test/{}/console.log):\n{}\n{}",
                k.label,
                tail(&boot.console, 60),
                boot.qemu_stderr.trim()
            );
        }
    }
}

fn print_summary(outcomes: &[KernelOutcome], build: Duration, total: Duration, accel: Accel) {
    let mut s = format!(
        "\nvm-test summary ({accel:?}; static build {:.1} s; total {:.1} s)\n\
         {:<6} {:<28} {:<6} {:>7} {:>7} {:>10} {:>10}\n",
        build.as_secs_f64(),
        total.as_secs_f64(),
        "kernel",
        "release",
        "result",
        "passed",
        "failed",
        "boot->end",
        "tests"
    );
    for k in outcomes {
        let (p, f) = k.counts();
        let release = k
            .report
            .release
            .clone()
            .or_else(|| k.kernel.as_ref().map(|x| x.release.clone()))
            .unwrap_or_else(|| "-".into());
        let boot = k
            .boot
            .as_ref()
            .map_or("-".into(), |b| format!("{:.1} s", b.elapsed.as_secs_f64()));
        let tests: f64 = k.report.binaries.iter().map(|b| b.seconds.max(0.0)).sum();
        let _ = writeln!(
            s,
            "{:<6} {:<28} {:<6} {p:>7} {f:>7} {boot:>10} {:>8.1} s",
            k.label,
            release,
            if k.passed() { "PASS" } else { "FAIL" },
            tests
        );
    }
    eprintln!("{s}");
}

/// `--selftest-broken` passes when every kernel's run failed and the
/// report names the kernel and carries the verifier's message.
fn check_selftest(outcomes: &[KernelOutcome]) -> Result<()> {
    let mut problems = Vec::new();
    for k in outcomes {
        let failing = k.report.binaries.iter().find(|b| b.rc != 0);
        let message = failing.and_then(|b| verifier_message(&b.output));
        match (k.passed(), message, &k.report.release) {
            (false, Some(msg), Some(release)) => eprintln!(
                "selftest-broken: OK on {} ({release}): the run failed with the verifier's message {msg:?}",
                k.label
            ),
            (true, _, _) => problems.push(format!(
                "{}: the broken program passed, so a verifier rejection would go unnoticed",
                k.label
            )),
            (false, None, _) => problems.push(format!(
                "{}: failed without a verifier message (see above): the harness lost it",
                k.label
            )),
            (false, Some(_), None) => problems.push(format!(
                "{}: the guest did not report its kernel release",
                k.label
            )),
        }
    }
    if !problems.is_empty() {
        bail!("selftest-broken failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// The verifier's own complaint in a failing test's output: the first line
/// of the log after "verifier log" that is neither an instruction or state
/// dump (`N: ...`), nor a `func#` header, nor the statistics line. Its
/// wording is stable across 5.10-7.3 even where newer kernels add an
/// explanation after it.
fn verifier_message(output: &[String]) -> Option<String> {
    let start = output.iter().position(|l| l.contains("verifier log"))?;
    output[start + 1..]
        .iter()
        .map(|l| l.trim())
        .find(|l| {
            let dump = l
                .split_once(':')
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            !l.is_empty() && !dump && !l.starts_with("func#") && !l.starts_with("processed ")
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options_parse() {
        let o = parse_args(&args("--kernel 6.1,5.10 --timeout 30 -- attach --exact")).unwrap();
        let labels: Vec<_> = o.kernels.iter().map(|k| k.label).collect();
        assert_eq!(labels, ["6.1", "5.10"]);
        assert_eq!(o.timeout, Duration::from_secs(30));
        assert_eq!(o.test_args, ["attach", "--exact"]);
        let all = parse_args(&args("--kernel all --kernel 6.1")).unwrap();
        assert_eq!(all.kernels.len(), kernel::KERNELS.len());
        assert!(parse_args(&args("--kernel 4.4")).is_err());
        assert!(parse_args(&args("--bogus")).is_err());
        assert!(parse_args(&args("--timeout")).is_err());
    }

    #[test]
    fn the_verifier_message_is_found() {
        let out: Vec<String> = [
            "BPF_PROG_LOAD of weir_broken (sched_cls) failed: Permission denied (os error 13)",
            "verifier log:",
            "0: R1=ctx() R10=fp0",
            "0: (61) r2 = *(u32 *)(r1 +76)",
            "1: (71) r0 = *(u8 *)(r2 +0)",
            "invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)",
            "R2 offset is outside of the packet",
            "processed 2 insns (limit 1000000) max_states_per_insn 0",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            verifier_message(&out).as_deref(),
            Some("invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)")
        );
        assert_eq!(verifier_message(&out[..1]), None);
    }
}
