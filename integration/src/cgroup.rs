//! cgroup v2 directories of the lab's hostNetwork pods: each such pod's
//! processes (servers, probes, commands) live in
//! `<cgroup2 mount>/weirlab-<run_id>/pod<UID>/`, so that their sockets
//! belong to the pod's cgroup even though they share the node's network
//! namespace.
//!
//! Owns finding the cgroup2 mount, creating the directories, moving a child
//! process into one between fork and exec, and removing them with whatever
//! still runs inside. It only ever removes directories on a cgroup2 file
//! system below a `weirlab-` directory.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::process::{ProcessRef, wait_until};
use crate::record::PREFIX;

/// Failures of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 hierarchy is mounted on this machine.
    #[error("no cgroup v2 hierarchy is mounted (hostNetwork pods need one)")]
    NoCgroup2,
    /// A file system step failed.
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The directory exists already (a leftover of this very run).
    #[error("cgroup {0} exists already")]
    Exists(PathBuf),
    /// Processes stayed inside after they were killed.
    #[error("cgroup {path}: processes {pids:?} are still inside")]
    Busy { path: PathBuf, pids: Vec<i32> },
    /// Not a directory this lab may remove.
    #[error("not removing {0}: not a lab cgroup (cgroup2, below a weirlab- directory)")]
    NotOurs(PathBuf),
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, what, source }
}

/// Undoes the octal escapes (`\040` for a space ...) of /proc/self/mountinfo.
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

/// The mount points of cgroup2 file systems listed in `mountinfo` text.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a pure v2
/// machine, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo"), "read"))?;
    cgroup2_mounts(&text)
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup directory of run `run_id` under the mount point `root`.
pub fn run_dir(root: &Path, run_id: &str) -> PathBuf {
    root.join(format!("{PREFIX}{run_id}"))
}

/// The cgroup directory of the pod with UID `uid` inside its run's
/// directory, named `pod<UID>` as kubelet's cgroupfs driver names a pod's
/// cgroup (the agent finds a hostNetwork pod's cgroup by that name).
pub fn pod_dir(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join(format!("pod{uid}"))
}

/// Creates the pod directory `path` (and its run directory if missing).
pub fn create(path: &Path) -> Result<(), CgroupError> {
    if let Some(parent) = path.parent() {
        match fs::create_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(parent, "create directory")(e)),
        }
    }
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(CgroupError::Exists(path.to_path_buf()))
        }
        Err(e) => Err(io_err(path, "create directory")(e)),
    }
}

/// Opens `path/cgroup.procs` for [`enter_raw`] (close-on-exec).
pub fn open_procs(path: &Path) -> Result<OwnedFd, CgroupError> {
    let procs = path.join("cgroup.procs");
    let file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&procs)
        .map_err(io_err(&procs, "open"))?;
    Ok(OwnedFd::from(file))
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open
/// as `fd`, for use in `pre_exec`: writing `0` moves the writer, and
/// write(2) is async-signal-safe.
pub fn enter_raw(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: write(2) of a static one-byte buffer on a valid descriptor.
    let rc = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
    if rc == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The processes in the cgroup `path` (not its sub-directories).
pub fn pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroup v2 path of process `pid` (the `0::` line of
/// `/proc/PID/cgroup`), e.g. `/weirlab-ab12cd/x-h`.
pub fn of_pid(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Whether `path` is a directory this lab may remove: on a cgroup2 file
/// system, with a `weirlab-` component.
pub fn is_ours(path: &Path) -> bool {
    let named = path.components().any(|c| match c {
        Component::Normal(n) => n.to_str().is_some_and(|n| n.starts_with(PREFIX)),
        _ => false,
    });
    named
        && nix::sys::statfs::statfs(path)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Run cgroup directories (`weirlab-<run_id>`) under the cgroup2 mount, as
/// (run id, path).
pub fn list_runs() -> Vec<(String, PathBuf)> {
    let Ok(root) = mount_point() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix(PREFIX)?.to_string();
            (!id.is_empty()).then(|| (id, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Kills everything in the cgroup `path` and its sub-cgroups and removes
/// them all; succeeds if `path` does not exist. Only lab cgroups
/// ([`is_ours`]).
pub fn remove(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    if !is_ours(path) {
        return Err(CgroupError::NotOurs(path.to_path_buf()));
    }
    let children: Vec<PathBuf> = fs::read_dir(path)
        .map_err(io_err(path, "list"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    for child in children {
        remove(&child)?;
    }
    kill_all(path);
    // Killed processes leave the cgroup once the kernel has torn them down:
    // rmdir says EBUSY until then.
    let mut last = None;
    let removed = wait_until(Duration::from_secs(5), || match fs::remove_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            last = Some(e);
            false
        }
    });
    if removed {
        return Ok(());
    }
    let pids = pids(path);
    if !pids.is_empty() {
        return Err(CgroupError::Busy {
            path: path.to_path_buf(),
            pids,
        });
    }
    Err(io_err(path, "remove directory")(
        last.unwrap_or_else(|| io::Error::other("rmdir kept failing")),
    ))
}

/// SIGKILLs every process in the cgroup `path`: through `cgroup.kill` where
/// the kernel has it (5.14+), one by one otherwise.
fn kill_all(path: &Path) {
    if pids(path).is_empty() {
        return;
    }
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        for pid in pids(path) {
            if let Some(p) = ProcessRef::of(pid, "in lab cgroup") {
                p.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    wait_until(Duration::from_secs(5), || pids(path).is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_in_mountinfo() {
        let text = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
45 35 0:40 / /mnt/with\\040space rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mounts(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
        assert!(cgroup2_mounts("1 2 0:1 / / rw - ext4 /dev/sda rw").is_empty());
    }

    #[test]
    fn directories_are_named_after_run_and_pod() {
        let run = run_dir(Path::new("/sys/fs/cgroup"), "ab12cd");
        assert_eq!(run, Path::new("/sys/fs/cgroup/weirlab-ab12cd"));
        assert_eq!(
            pod_dir(&run, "0b6f0c2e-1c1b-4b8e-9d55-6f0f2c3e9a01"),
            Path::new("/sys/fs/cgroup/weirlab-ab12cd/pod0b6f0c2e-1c1b-4b8e-9d55-6f0f2c3e9a01")
        );
    }

    #[test]
    fn only_lab_cgroups_are_ours() {
        // Not on cgroup2, or without the prefix: never removed.
        assert!(!is_ours(Path::new("/tmp")));
        assert!(!is_ours(&std::env::temp_dir().join("weirlab-x")));
        if let Ok(root) = mount_point() {
            assert!(!is_ours(&root), "the hierarchy's root has no weirlab- part");
        }
        assert!(matches!(
            remove(Path::new("/tmp")),
            Err(CgroupError::NotOurs(_))
        ));
    }
}
