//! The kernel matrix and its cache: Debian cloud kernels fetched with
//! `apt-get download` through private sources lists (the host's apt
//! configuration and dpkg state are never touched), unpacked with
//! `dpkg-deb -x` under `target/vm-cache/kernels/<label>/`, plus the static
//! busybox of the guest. Versioned package names are resolved through the
//! meta packages each time the cache is (re)filled: ABI numbers move.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::host;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Archive names of the private sources lists; the URIs come from the
/// machine's own apt configuration ([`archive_uri`]), so the project names no
/// mirror of its own.
const DEBIAN: &str = "debian";
const SECURITY: &str = "debian-security";

/// One kernel of the matrix.
#[derive(Debug)]
pub struct KernelSpec {
    /// What `--kernel` takes; the resolved version must start with it.
    pub label: &'static str,
    /// Name of the private apt state under `target/vm-cache/apt/`.
    apt: &'static str,
    /// `(archive, suite)` pairs of that private sources list (component main).
    suites: &'static [(&'static str, &'static str)],
    /// The meta package whose dependency names the versioned image.
    meta: &'static str,
}

const BOOKWORM: &[(&str, &str)] = &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")];

/// The matrix: the oldest kernel we claim (5.10), the LTS most nodes run
/// (6.1), the first LTS with tcx (6.12) and the newest Debian ships (7.3).
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        apt: "bullseye-security",
        suites: &[(SECURITY, "bullseye-security")],
        meta: "linux-image-cloud-amd64",
    },
    KernelSpec {
        label: "6.1",
        apt: "bookworm",
        suites: BOOKWORM,
        meta: "linux-image-cloud-amd64",
    },
    KernelSpec {
        label: "6.12",
        apt: "bookworm",
        suites: BOOKWORM,
        meta: "linux-image-6.12-cloud-amd64",
    },
    KernelSpec {
        label: "7.3",
        apt: "trixie-backports",
        suites: &[(DEBIAN, "trixie-backports")],
        meta: "linux-image-cloud-amd64",
    },
];

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The versioned image package, e.g. `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-3`.
    pub version: String,
    /// `uname -r` of the guest, the directory name under lib/modules.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked packages.
    pub modules: PathBuf,
}

/// The label's spec, or an error listing the valid labels.
pub fn spec(label: &str) -> Result<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.label == label).with_context(|| {
        let known: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
        format!("unknown kernel {label:?}; known: {known:?} or all")
    })
}

/// A private apt configuration: its own sources list, package lists and
/// cache, so other suites can be read without editing /etc/apt.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Path, name: &str, suites: &[(&str, &str)]) -> Result<Self> {
        let dir = cache.join("apt").join(name);
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let mut list = String::new();
        for (archive, suite) in suites {
            let uri = archive_uri(archive)?;
            list.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
        }
        fs::write(dir.join("sources.list"), list)?;
        Ok(Self { dir })
    }

    fn options(&self, c: &mut Command) {
        let d = self.dir.display();
        for o in [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Only the package lists are needed, not the translations.
            "Acquire::Languages=none".into(),
            // `apt-get download` into a root-owned directory warns when it
            // drops to the _apt user; the files are ours anyway.
            "APT::Sandbox::User=root".into(),
        ] {
            c.args(["-o", &o]);
        }
    }

    fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.arg("-q");
        self.options(&mut c);
        c
    }

    fn apt_cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        self.options(&mut c);
        c
    }

    fn update(&self) -> Result<()> {
        host::quiet(self.apt_get().arg("update")).map(drop)
    }

    /// Updates unless package lists from an earlier update are there.
    fn ensure_lists(&self) -> Result<()> {
        let have = fs::read_dir(self.dir.join("lists"))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if have { Ok(()) } else { self.update() }
    }

    /// Names of the hard dependencies of the candidate version of `pkg`.
    fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let out = host::output(self.apt_cache().args(["depends", pkg]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(|n| n.trim().to_string())
            // `<name>` is a virtual package: nothing to download.
            .filter(|n| !n.starts_with('<'))
            .collect())
    }

    fn candidate(&self, pkg: &str) -> Result<String> {
        let out = host::output(self.apt_cache().args(["policy", pkg]))?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_string)
            .with_context(|| format!("{pkg} has no candidate in {}", self.dir.display()))
    }
}

/// Parsed `READY` file of a cached kernel.
fn read_ready(dir: &Path) -> Option<Kernel> {
    let text = fs::read_to_string(dir.join("READY")).ok()?;
    let kv: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let kernel = Kernel {
        package: kv.get("package")?.to_string(),
        version: kv.get("version")?.to_string(),
        release: kv.get("release")?.to_string(),
        vmlinuz: dir.join(kv.get("vmlinuz")?),
        modules: dir.join(kv.get("modules")?),
    };
    (kernel.vmlinuz.is_file() && kernel.modules.is_dir()).then_some(kernel)
}

/// The kernel `spec`, from the cache or fetched now (`refresh` re-resolves
/// the meta package and downloads again).
pub fn fetch(cache: &Path, spec: &KernelSpec, refresh: bool) -> Result<Kernel> {
    let dir = cache.join("kernels").join(spec.label);
    if !refresh && let Some(k) = read_ready(&dir) {
        return Ok(k);
    }
    eprintln!(
        "xtask vm-test: fetching kernel {} ({})",
        spec.label, spec.apt
    );
    let apt = PrivateApt::new(cache, spec.apt, spec.suites)?;
    apt.update()
        .with_context(|| format!("apt-get update for {}", spec.apt))?;

    let image = apt
        .depends(spec.meta)?
        .into_iter()
        .find(|d| {
            d.strip_prefix("linux-image-")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .with_context(|| format!("{} names no versioned linux-image", spec.meta))?;
    let version = apt.candidate(&image)?;
    if !version.starts_with(&format!("{}.", spec.label)) {
        bail!(
            "kernel {}: {} resolves to {image} {version}; the suite moved on, update KERNELS in xtask/src/vm/kernel.rs",
            spec.label,
            spec.meta
        );
    }
    // Since 7.x the image package is a stub: the kernel and the modules are
    // in linux-binary-<abi> and linux-modules-<abi>, which it depends on.
    let abi = image.trim_start_matches("linux-image-").to_string();
    let mut packages = vec![image.clone()];
    packages.extend(
        apt.depends(&image)?
            .into_iter()
            .filter(|d| d.ends_with(&format!("-{abi}"))),
    );

    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let debs = dir.join("debs");
    let root = dir.join("root");
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root)?;
    host::quiet(
        apt.apt_get()
            .arg("download")
            .args(&packages)
            .current_dir(&debs),
    )
    .with_context(|| format!("apt-get download {packages:?}"))?;
    for deb in fs::read_dir(&debs)? {
        let deb = deb?.path();
        host::quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    // The unpacked tree is what is cached; the .debs would double the space.
    fs::remove_dir_all(&debs)?;

    let modules_base = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_dir())
        .context("no lib/modules in the kernel packages")?;
    let release = fs::read_dir(&modules_base)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("{}.", spec.label)))
        .with_context(|| format!("no {}* under {}", spec.label, modules_base.display()))?;
    let modules = modules_base.join(&release);
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no vmlinuz for {release} in {packages:?}"))?;

    let rel = |p: &Path| p.strip_prefix(&dir).map(|r| r.display().to_string());
    fs::write(
        dir.join("READY"),
        format!(
            "package={image}\nversion={version}\nrelease={release}\nvmlinuz={}\nmodules={}\n",
            rel(&vmlinuz)?,
            rel(&modules)?
        ),
    )?;
    read_ready(&dir).context("cache entry unreadable right after writing it")
}

/// The static busybox of the guest, from Debian 12 through a private
/// sources list as well (the host's own sources may be another
/// distribution, or never updated in a fresh CI container).
pub fn busybox(cache: &Path, refresh: bool) -> Result<PathBuf> {
    let dir = cache.join("busybox");
    let bin = dir.join("root/bin/busybox");
    if !refresh && bin.is_file() {
        return Ok(bin);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let apt = PrivateApt::new(cache, "bookworm", BOOKWORM)?;
    if refresh {
        apt.update()?;
    } else {
        apt.ensure_lists()?;
    }
    host::quiet(
        apt.apt_get()
            .args(["download", "busybox-static"])
            .current_dir(&dir),
    )
    .context("apt-get download busybox-static")?;
    for deb in fs::read_dir(&dir)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            host::quiet(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(dir.join("root")),
            )?;
            fs::remove_file(&deb)?;
        }
    }
    if !bin.is_file() {
        bail!("busybox-static did not contain bin/busybox");
    }
    Ok(bin)
}

/// A kernel module found in the unpacked packages.
struct ModuleFile {
    path: PathBuf,
    /// Path below lib/modules/<release>, without a compression suffix.
    rel: PathBuf,
}

/// The modules `wanted` and everything they depend on, decompressed, in
/// load order (dependencies first). Names built into the kernel are
/// skipped; an unknown name is an error.
pub fn module_closure(
    kernel: &Kernel,
    wanted: &BTreeSet<String>,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut index: BTreeMap<String, ModuleFile> = BTreeMap::new();
    index_modules(&kernel.modules, &kernel.modules, &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(kernel.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|n| canonical(&n.to_string_lossy()))
        .collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(&canonical(name), &index, &builtin, &mut seen, &mut order)
            .with_context(|| format!("module {name} on {}", kernel.release))?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, ModuleFile>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(file) = index.get(name) else {
        if builtin.contains(name) {
            return Ok(());
        }
        bail!("{name} is neither a module nor built in");
    };
    let bytes = decompress(&file.path)?;
    for dep in depends_of(&bytes) {
        visit(&canonical(&dep), index, builtin, seen, order)?;
    }
    order.push((file.rel.clone(), bytes));
    Ok(())
}

/// Module names treat `-` and `_` alike; file names keep either.
fn canonical(file_name: &str) -> String {
    let stem = file_name.split(".ko").next().unwrap_or(file_name);
    stem.replace('-', "_")
}

fn index_modules(base: &Path, dir: &Path, index: &mut BTreeMap<String, ModuleFile>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index_modules(base, &path, index)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pos) = name.find(".ko") else {
            continue;
        };
        let rel_dir = path
            .parent()
            .and_then(|p| p.strip_prefix(base).ok())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        index.insert(
            canonical(&name),
            ModuleFile {
                rel: rel_dir.join(format!("{}.ko", &name[..pos])),
                path,
            },
        );
    }
    Ok(())
}

/// The bytes of a module, decompressed with the host tool for its suffix.
fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("ko") => return fs::read(path).with_context(|| format!("{}", path.display())),
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        other => bail!("{}: unknown module suffix {other:?}", path.display()),
    };
    let out = host::quiet(Command::new(tool).arg("-dc").arg(path))?;
    Ok(out.stdout)
}

/// The `depends=` entry of a module's .modinfo section (a NUL-separated
/// list of key=value strings; finding the key in the bytes is enough).
fn depends_of(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[start + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The URI of Debian archive `name` ("debian" or "debian-security") as this
/// machine's apt already uses it: `WEIR_VM_DEBIAN_ARCHIVE` /
/// `WEIR_VM_DEBIAN_SECURITY_ARCHIVE` if set, else the first URI in
/// /etc/apt/sources.list{,.d/*} whose path ends in `/NAME`.
fn archive_uri(name: &str) -> Result<String> {
    let var = format!(
        "WEIR_VM_{}_ARCHIVE",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Ok(v) = std::env::var(&var)
        && !v.is_empty()
    {
        return Ok(v);
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let suffix = format!("/{name}");
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !(ext == "list" || ext == "sources" || f.ends_with("sources.list")) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let words: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                line.split_whitespace()
                    .filter(|w| w.contains("://"))
                    .collect()
            } else {
                continue;
            };
            if let Some(uri) = words
                .iter()
                .map(|w| w.trim_end_matches('/'))
                .find(|w| w.ends_with(&suffix))
            {
                return Ok(uri.to_string());
            }
        }
    }
    bail!(
        "no apt source of this machine points at a Debian archive ending in {suffix}; \
         set {var} to its URI"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=nf_conntrack,nf_defrag_ipv6\0intree=Y\0";
        assert_eq!(depends_of(ko), vec!["nf_conntrack", "nf_defrag_ipv6"]);
        assert!(depends_of(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends_of(b"no modinfo").is_empty());
    }

    #[test]
    fn module_names_are_canonical() {
        assert_eq!(canonical("sch_ingress.ko.xz"), "sch_ingress");
        assert_eq!(canonical("nf-nat.ko"), "nf_nat");
    }

    #[test]
    fn every_label_is_known_once() {
        let labels: BTreeSet<_> = KERNELS.iter().map(|k| k.label).collect();
        assert_eq!(labels.len(), KERNELS.len());
        assert!(spec("6.1").is_ok());
        assert!(spec("4.19").is_err());
    }
}
