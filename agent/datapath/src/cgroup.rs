//! cgroup v2 directories as the datapath needs them: where the hierarchy is
//! mounted, the id of a cgroup (what `bpf_skb_cgroup_id` returns for its
//! sockets, the key of `CGROUP_EP`), the cgroups below one, and the cgroup
//! of a process.
//!
//! Read-only: nothing here creates, moves into or removes cgroups (the
//! agent's runtime and the lab do that), and nothing knows which cgroup
//! belongs to which pod.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h: `statfs(2)`'s `f_type` on a
/// cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Failures reading cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 hierarchy is mounted in this mount namespace.
    #[error("no cgroup v2 hierarchy is mounted")]
    NoCgroup2,
    /// The path exists but is not a directory of a cgroup v2 file system
    /// (a cgroup v1 hierarchy, or any other directory).
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    /// A file system call failed (the cgroup does not exist, no permission ...).
    #[error("cgroup {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// `/proc/PID/cgroup` has no cgroup v2 line (`0::/...`).
    #[error("process {pid} has no cgroup v2 membership in /proc/{pid}/cgroup")]
    NoMembership { pid: u32 },
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, what, source }
}

/// The id of the cgroup v2 directory `path`.
///
/// The kernel identifies a cgroup by its kernfs node id, which cgroupfs
/// exposes as the directory's inode number on 64-bit kernels (and as the
/// `name_to_handle_at` handle everywhere); that is the value
/// `bpf_skb_cgroup_id` and `bpf_sk_cgroup_id` return. Fails for anything
/// but a cgroup v2 directory, so a v1 hierarchy (whose inode numbers mean
/// nothing to BPF) is refused by name.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    let meta = fs::metadata(path).map_err(io_err(path, "stat"))?;
    if !meta.is_dir() || !is_cgroup2(path)? {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
        });
    }
    Ok(meta.ino())
}

/// Every cgroup below `path` (not `path` itself), depth first, with its id.
///
/// Cgroups come and go while the walk runs: one removed meanwhile is left
/// out instead of failing the walk.
pub fn descendants(path: &Path) -> Result<Vec<(PathBuf, u64)>, CgroupError> {
    if !is_cgroup2(path)? {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The root must be readable; a child may vanish under us.
            Err(e) if dir != path && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir, "read directory")(e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir, "read directory")(e)),
            };
            let child = entry.path();
            // Control files (cgroup.procs, memory.max ...) are files; only
            // directories are cgroups. metadata() rather than the entry's
            // d_type: it also yields the inode number.
            match fs::symlink_metadata(&child) {
                Ok(meta) if meta.is_dir() => {
                    out.push((child.clone(), meta.ino()));
                    stack.push(child);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&child, "stat")(e)),
            }
        }
    }
    Ok(out)
}

/// Where the cgroup v2 hierarchy is mounted in this mount namespace
/// (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mountinfo).map_err(io_err(mountinfo, "read"))?;
    cgroup2_mounts(&text)
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup v2 directory of process `pid`, under [`cgroup2_mount`].
pub fn process_cgroup(pid: u32) -> Result<PathBuf, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&file).map_err(io_err(&file, "read"))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(CgroupError::NoMembership { pid })?;
    let mut dir = cgroup2_mount()?;
    dir.push(relative.trim_start_matches('/'));
    Ok(dir)
}

fn is_cgroup2(path: &Path) -> Result<bool, CgroupError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        CgroupError::Io {
            path: path.to_path_buf(),
            what: "statfs",
            source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
        }
    })?;
    // SAFETY: statfs writes into a zeroed, properly sized struct; the path
    // is a valid NUL-terminated string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io_err(path, "statfs")(io::Error::last_os_error()));
    }
    // `f_type`'s integer type differs between libcs; the magic fits in all.
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on glibc x86_64 but not on every libc"
    )]
    Ok(buf.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// The mount points of cgroup2 file systems listed in `mountinfo` text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Optional fields end with " - ", then fstype, source, options.
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space ...) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_in_mountinfo() {
        let text = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
40 31 0:35 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
41 31 0:36 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
50 30 0:40 / /mnt/my\\040cg rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mounts(text),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/my cg")
            ]
        );
        assert!(cgroup2_mounts("1 2 0:3 / /proc rw - proc proc rw").is_empty());
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let dir = std::env::temp_dir();
        match cgroup_id(&dir) {
            Err(CgroupError::NotCgroup2 { path }) => assert_eq!(path, dir),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cgroup_id(Path::new("/nonexistent/weir")),
            Err(CgroupError::Io { what: "stat", .. })
        ));
    }

    #[test]
    fn own_cgroup_resolves_where_cgroup2_is_mounted() {
        // Skips quietly on machines without cgroup v2 (not a privilege matter).
        let Ok(mount) = cgroup2_mount() else {
            return;
        };
        let own = process_cgroup(std::process::id()).expect("own cgroup");
        assert!(own.starts_with(&mount), "{own:?} under {mount:?}");
        assert!(cgroup_id(&own).expect("own cgroup id") > 0);
        // The root's id is the hierarchy's root inode; descendants of our
        // own cgroup, if any, all have distinct ids.
        let below = descendants(&own).expect("descendants");
        let mut ids: Vec<u64> = below.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), below.len());
    }
}
