//! The guest's root file system: an uncompressed newc cpio made of two
//! archives back to back (the kernel unpacks both). The common one holds
//! static busybox with its applet links, the test executables and the
//! binaries they start (stripped of debug info, at their host paths), the
//! host tools the tests call with their shared libraries, and `/init`. The
//! per-kernel one holds that kernel's modules, decompressed, with a
//! `modules.dep` made by busybox depmod.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::binaries::TestBinary;
use super::host;
use super::kernel::Kernel;

/// Markers of the guest's report; the host parses lines starting with them.
pub const MARK: &str = "VMTEST";

/// Where host tools go in the guest (before busybox in PATH).
const TOOLS_DIR: &str = "usr/local/bin";

/// What goes into the common archive.
pub struct Contents<'a> {
    pub busybox: &'a Path,
    pub tests: &'a [TestBinary],
    pub bins: &'a [(String, PathBuf)],
    pub tools: &'a BTreeSet<&'static str>,
    /// Arguments for every test executable (the `-- FILTER` of vm-test).
    pub test_args: &'a [String],
    /// The guest stops a test executable after this many seconds, so a
    /// hang is reported with the output so far (the name of the test that
    /// hangs is its last line).
    pub binary_timeout_secs: u64,
}

/// Builds the common archive from a fresh staging directory `stage`.
pub fn common(stage: &Path, out: &Path, c: &Contents<'_>) -> Result<()> {
    reset(stage)?;
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "run", "root", "etc", TOOLS_DIR,
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    // Kernel usermode helpers (modprobe) and scripts expect these paths.
    symlink("bin", stage.join("sbin"))?;
    fs::create_dir_all(stage.join("var"))?;
    symlink("/run", stage.join("var/run"))?;
    fs::write(
        stage.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(stage.join("etc/group"), "root:x:0:\n")?;

    copy_exec(c.busybox, &stage.join("bin/busybox"), false)?;
    let applets = host::output(Command::new(c.busybox).arg("--list"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = stage.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", link)?;
        }
    }
    for tool in c.tools {
        add_host_tool(stage, tool)?;
    }
    for t in c.tests {
        copy_exec(&t.path, &under(stage, &t.path), true)?;
        add_libraries(stage, &t.path)?;
        fs::create_dir_all(under(stage, &t.cwd))?;
    }
    for (_, b) in c.bins {
        copy_exec(b, &under(stage, b), true)?;
        add_libraries(stage, b)?;
    }
    let init = stage.join("init");
    fs::write(
        &init,
        init_script(c.tests, c.test_args, c.binary_timeout_secs),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    cpio(stage, out)
}

/// Builds the per-kernel archive with the closure of `modules`.
pub fn modules(
    stage: &Path,
    out: &Path,
    busybox: &Path,
    kernel: &Kernel,
    modules: &BTreeSet<String>,
) -> Result<()> {
    reset(stage)?;
    let dir = stage.join("lib/modules").join(&kernel.release);
    fs::create_dir_all(&dir)?;
    let mut order = String::new();
    for (rel, bytes) in super::kernel::module_closure(kernel, modules)? {
        let dest = dir.join(&rel);
        fs::create_dir_all(dest.parent().context("module path")?)?;
        fs::write(&dest, bytes)?;
        writeln!(order, "{}", rel.display())?;
    }
    // /init loads these in this order (dependencies first); modules.dep also
    // lets the kernel's own module requests find them through modprobe.
    fs::write(stage.join("lib/modules/load-order"), &order)?;
    if let Ok(b) = fs::read(kernel.modules.join("modules.builtin")) {
        fs::write(dir.join("modules.builtin"), b)?;
    }
    host::quiet(
        Command::new(busybox)
            .arg("depmod")
            .arg("-b")
            .arg(stage)
            .arg(&kernel.release),
    )?;
    cpio(stage, out)?;
    fs::remove_dir_all(stage)?;
    Ok(())
}

fn reset(stage: &Path) -> Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(stage)?;
    Ok(())
}

/// `path` (absolute) re-rooted under `stage`.
fn under(stage: &Path, path: &Path) -> PathBuf {
    stage.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies an executable; `strip` drops debug info (a debug test binary is
/// 40-70 MB, 7 MB without it; the initramfs lives in guest RAM).
fn copy_exec(src: &Path, dest: &Path, strip: bool) -> Result<()> {
    fs::create_dir_all(dest.parent().context("destination has a parent")?)?;
    if strip {
        host::quiet(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(dest)
                .arg(src),
        )?;
    } else {
        fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copies host program `tool` (from PATH) to the tools directory, with its
/// shared libraries.
fn add_host_tool(stage: &Path, tool: &str) -> Result<()> {
    let path = host::output(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
        .ok()
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| p.is_absolute())
        .with_context(|| {
            format!("host tool {tool} not found (the lead's `cargo xtask setup` installs it)")
        })?;
    let real = fs::canonicalize(&path)?;
    copy_exec(&real, &stage.join(TOOLS_DIR).join(tool), false)?;
    add_libraries(stage, &real)
}

/// Copies the shared libraries and the loader that `ldd` lists for `exe`,
/// at their host paths; nothing for a static executable.
fn add_libraries(stage: &Path, exe: &Path) -> Result<()> {
    let ldd = Command::new("ldd").arg(exe).stdin(Stdio::null()).output()?;
    // Static: ldd says "statically linked" or "not a dynamic executable"
    // (then with a non-zero status); neither lists a path.
    if !ldd.status.success() {
        return Ok(());
    }
    for lib in ldd_paths(&String::from_utf8_lossy(&ldd.stdout)) {
        let dest = under(stage, &lib);
        if !dest.exists() {
            fs::create_dir_all(dest.parent().context("library path")?)?;
            // Follows symlinks: the guest gets the file under the name the
            // loader looks for.
            fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    Ok(())
}

/// Library paths in `ldd` output: `name => /path (addr)` and `/loader (addr)`.
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = l.split_once("=> ").map_or(l, |(_, r)| r);
            let p = p.split_whitespace().next()?;
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

fn cpio(stage: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out)?;
    // Sorted names make the archive reproducible; newc, owned by root.
    let st = Command::new("sh")
        .args([
            "-c",
            "find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0",
        ])
        .current_dir(stage)
        .stdout(file)
        .status()
        .context("running cpio")?;
    if !st.success() {
        bail!("cpio failed with {st}");
    }
    Ok(())
}

/// Single-quotes `s` for the guest's sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's /init: mounts (the initramfs root is itself a writable
/// tmpfs, so /tmp and /run stay plain directories: a target directory
/// under /tmp must not be hidden by a mount), modules, then each test executable with
/// CI=true. A passing executable reports its `test ...` lines, a failing one
/// the tail of its whole output; the serial console is slow, so nothing
/// else is printed. `reboot -f` ends QEMU (-no-reboot); if /init dies
/// instead, the kernel panics, QEMU exits too and the missing end marker
/// tells the host.
fn init_script(tests: &[TestBinary], args: &[String], timeout_secs: u64) -> String {
    let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    let args = args.join(" ");
    let mut s = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test` (xtask/src/vm/initramfs.rs).
export PATH=/{TOOLS_DIR}:/bin HOME=/root CI=true RUST_BACKTRACE=1 TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "{MARK}_KERNEL $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -f /lib/modules/load-order ]; then
  for m in $(cat /lib/modules/load-order); do
    out=$(insmod "/lib/modules/$(uname -r)/$m" 2>&1) || {{ echo "{MARK}_SETUP_ERROR insmod $m: $out"; reboot -f; }}
  done
fi
ip link set lo up
run() {{
  name=$1; dir=$2; shift 2
  echo "{MARK}_BEGIN $name"
  start=$(cut -d' ' -f1 /proc/uptime)
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" timeout -s TERM {timeout_secs} "$@" >/tmp/out 2>&1)
  rc=$?
  [ $rc = 143 ] && printf '\n%s\n' "{MARK}_TIMEOUT $name after {timeout_secs} s" >>/tmp/out
  end=$(cut -d' ' -f1 /proc/uptime)
  if [ $rc = 0 ]; then grep -E '^(test |running [0-9])' /tmp/out; else tail -c 65536 /tmp/out; fi
  echo "{MARK}_END $name rc=$rc start=$start end=$end"
}}
"#
    );
    for t in tests {
        let _ = writeln!(
            s,
            "run {} {} {} {args}",
            sh_quote(&t.name),
            sh_quote(&t.cwd.display().to_string()),
            sh_quote(&t.path.display().to_string()),
        );
    }
    let _ = writeln!(
        s,
        "echo \"{MARK}_DONE uptime=$(cut -d' ' -f1 /proc/uptime)\"\nreboot -f"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text),
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn init_quotes_filters_and_runs_each_binary() {
        let t = TestBinary {
            name: "weir-cni/cni".into(),
            path: "/w/target/x/debug/deps/cni-1".into(),
            cwd: "/w/agent/cni".into(),
        };
        let s = init_script(&[t], &["it's".into(), "--exact".into()], 60);
        assert!(s.contains(
            "run 'weir-cni/cni' '/w/agent/cni' '/w/target/x/debug/deps/cni-1' 'it'\\''s' '--exact'"
        ));
        assert!(s.contains("CI=true"));
        assert!(s.contains("timeout -s TERM 60 \"$@\""));
        assert!(s.trim_end().ends_with("reboot -f"));
    }
}
