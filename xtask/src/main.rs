//! `cargo xtask`: the developer commands of Weir.
//!
//! - `cargo xtask setup`: install what is missing (Debian packages, rust-src
//!   for the nightly, bpf-linker) — idempotent, quiet when all is there.
//! - `cargo xtask demo [-- ARGS]`: setup, build, run `weir demo`.
//! - `cargo xtask test`: setup, build, format and lint checks, every test.
//! - `cargo xtask bench [NAME]`: setup, build (release), run the benchmarks
//!   behind BENCHMARKS.md.
//!
//! Everything here shells out to the real tools; nothing is mocked.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod vm;

/// Debian packages the build and the tests need (tool -> package).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("ping", "iputils-ping"),
    ("nc", "netcat-openbsd"),
    ("bpftool", "bpftool"),
    ("protoc", "protobuf-compiler"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];
const BPF_LINKER_VERSION: &str = "0.10.4";

fn main() {
    // No anyhow backtrace: CI logs keep only their head and tail, and the
    // tail must be the failure itself (see `run_tests`), not stack frames.
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| "help".to_string());
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => setup(),
        "build" => {
            setup()?;
            build(false)
        }
        "demo" => {
            setup()?;
            build(false)?;
            let weir = target_dir().join("debug/weir");
            let mut c = Command::new(&weir);
            c.arg("demo").args(rest.iter().filter(|a| *a != "--"));
            run(&mut c)
        }
        "test" => {
            setup()?;
            test(&rest)
        }
        "bench" => {
            setup()?;
            bench(&rest)
        }
        "vm-test" => {
            setup()?;
            vm::run(&rest)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|build|demo|test|bench>\n\
                 \n  setup   install missing Debian packages, rust-src (nightly), bpf-linker\
                 \n  demo    build and run `weir demo` (needs root)\
                 \n  test    build, fmt/clippy checks, every test (privileged ones need root),\
                 \n          then the privileged tests on kernel 6.1 in QEMU (--no-vm skips that locally)\
                 \n  bench   run the benchmarks of BENCHMARKS.md\
                 \n  vm-test run the privileged tests in QEMU on kernels 5.10-7.3 (vm-test --help)"
            );
            if cmd == "help" {
                Ok(())
            } else {
                bail!("unknown command {cmd}")
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(c: &mut Command) -> Result<()> {
    eprintln!("xtask: {c:?}");
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed with {st}");
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    let mut missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    // protoc needs the well-known types too.
    if !Path::new("/usr/include/google/protobuf/timestamp.proto").exists() {
        missing.push("libprotobuf-dev");
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}; run as root or install them: apt-get install -y {}",
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing {missing:?}");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // aya-build compiles the programs with the nightly and build-std=core.
    let src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (the nightly toolchain is required for eBPF)")?;
    if !String::from_utf8_lossy(&src.stdout).contains("rust-src") {
        // Never update the nightly itself: a newer one brings an LLVM that bpf-linker 0.10 does not match.
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about 75 s)");
        run(cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    python_env()
}

/// The Python environment of the compatibility tests: a venv in
/// target/pyenv with grpcio, grpcio-tools and opentelemetry-proto from PyPI,
/// so a client generated from the upstream Hubble protos can talk to the
/// agent and an OTLP receiver built from the official protos can check what
/// the agent exports.
fn python_env() -> Result<()> {
    let reqs = [
        root().join("integration/hubble-compat/python/requirements.txt"),
        root().join("agent/otel/tests/receiver/requirements.txt"),
    ];
    let venv = target_dir().join("pyenv");
    let stamp = venv.join("weir-requirements.txt");
    let mut wanted = String::new();
    for req in &reqs {
        wanted.push_str(
            &std::fs::read_to_string(req).with_context(|| format!("reading {}", req.display()))?,
        );
    }
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    if !have("python3") {
        bail!("python3 is missing: install it (Debian: apt-get install -y python3 python3-venv)");
    }
    eprintln!(
        "xtask: creating {} (grpcio, grpcio-tools, opentelemetry-proto)",
        venv.display()
    );
    let created = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !created.success() {
        if !is_root() {
            bail!("python3 -m venv failed; install python3-venv (apt-get install -y python3-venv)");
        }
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "python3-venv",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "-q", "--disable-pip-version-check"]);
    for req in &reqs {
        pip.arg("-r").arg(req);
    }
    run(&mut pip)?;
    std::fs::write(&stamp, wanted).context("writing the venv stamp")?;
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--workspace", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

fn test(rest: &[String]) -> Result<()> {
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    if ci && !is_root() {
        bail!("CI=true but not root: privileged tests would not run");
    }
    // `--no-vm` is for a quick local loop; CI always runs the VM kernel.
    let no_vm = rest.iter().any(|a| a == "--no-vm");
    if ci && no_vm {
        bail!("CI=true: the VM kernel run cannot be skipped");
    }
    let rest: Vec<String> = rest.iter().filter(|a| *a != "--no-vm").cloned().collect();
    run(cargo().args(["fmt", "--all", "--check"]))?;
    build(false)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if !no_vm {
        // Proof that a verifier rejection in a guest fails the run (its
        // deliberately failing test prints FAILED: expected), then the
        // datapath on another kernel than the host's: 6.1 (clsact, no tcx).
        // Before the native tests, so the run ends on their results.
        vm::run(&[
            "--kernel".to_string(),
            "6.1".to_string(),
            "--selftest-broken".to_string(),
        ])?;
        vm::run(&["--kernel".to_string(), "6.1".to_string()])?;
    }
    // Privileged tests use unique netns names, so they may run in parallel.
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast"]);
    c.args(rest.iter().filter(|a| *a != "--"));
    run_tests(&mut c)
}

/// Runs `cargo test`, passing its output through, and on failure ends with a
/// short summary of what failed (test names, panic messages, the binaries to
/// rerun): a CI log cut to its head and tail must still name the failure.
fn run_tests(c: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    eprintln!("xtask: {c:?}");
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {c:?}"))?;
    let summary = Arc::new(Mutex::new(Vec::<String>::new()));
    let pump = |stream: Box<dyn std::io::Read + Send>, to_stderr: bool| {
        let summary = Arc::clone(&summary);
        std::thread::spawn(move || {
            let mut panic_next = false;
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                if to_stderr {
                    let _ = writeln!(std::io::stderr(), "{line}");
                } else {
                    let _ = writeln!(std::io::stdout(), "{line}");
                }
                let keep = panic_next
                    || (line.starts_with("test ") && line.ends_with(" FAILED"))
                    || line.contains("panicked at")
                    || line.starts_with("error: test failed")
                    || line.starts_with("error: could not compile")
                    || line.starts_with("error[");
                panic_next = line.contains("panicked at");
                if keep {
                    let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < 60 {
                        s.push(line.chars().take(300).collect());
                    }
                }
            }
        })
    };
    let out = pump(Box::new(child.stdout.take().context("stdout")?), false);
    let err = pump(Box::new(child.stderr.take().context("stderr")?), true);
    let st = child.wait().context("waiting for cargo test")?;
    let _ = out.join();
    let _ = err.join();
    if st.success() {
        return Ok(());
    }
    let s = summary.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("\n==== xtask test: FAILED ({st}); what failed: ====");
    for line in s.iter() {
        eprintln!("  {line}");
    }
    bail!("cargo test failed ({st}); see the summary above")
}

fn bench(rest: &[String]) -> Result<()> {
    build(true)?;
    let mut c = cargo();
    c.args(["run", "--release", "-p", "weir-bench", "--"]);
    c.args(rest.iter().filter(|a| *a != "--"));
    run(&mut c)
}
