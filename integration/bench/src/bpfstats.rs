//! The kernel's own run-time statistics of the BPF programs this process
//! loaded: `BPF_ENABLE_STATS` (held by a file descriptor: closing it turns
//! the statistics off again, also when the process dies) and each program's
//! `run_time_ns` / `run_cnt` from `/proc/self/fdinfo`, named through
//! `bpftool`. Owns the statistics descriptor only; reads nothing but this
//! process's own program descriptors. While held, the kernel times every
//! BPF program run on the machine (two clock reads each), so callers hold
//! it only around windows that measure nothing else.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{Context, Result};

/// `BPF_ENABLE_STATS` (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics are on while this lives.
#[derive(Debug)]
pub struct StatsEnabled {
    _fd: OwnedFd,
}

impl StatsEnabled {
    pub fn enable() -> io::Result<Self> {
        // union bpf_attr, `enable_stats.type` first, the rest zero.
        let mut attr = [0u8; 64];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) reads `attr.len()` bytes from a live buffer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(Self {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// One program's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    /// Average nanoseconds per run between `earlier` and `self`.
    pub fn ns_per_run_since(&self, earlier: &ProgStats) -> Option<f64> {
        let runs = self.run_cnt.checked_sub(earlier.run_cnt)?;
        let ns = self.run_time_ns.checked_sub(earlier.run_time_ns)?;
        (runs > 0).then(|| ns as f64 / runs as f64)
    }
}

/// `prog_id`, `run_time_ns` and `run_cnt` of a program descriptor's fdinfo.
pub fn parse_fdinfo(text: &str) -> Option<(u32, ProgStats)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|r| r.trim().parse::<u64>().ok())
        })
    };
    Some((
        u32::try_from(field("prog_id")?).ok()?,
        ProgStats {
            run_time_ns: field("run_time_ns")?,
            run_cnt: field("run_cnt")?,
        },
    ))
}

/// The statistics of every BPF program this process holds, by program id.
pub fn own_programs() -> Result<BTreeMap<u32, ProgStats>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let is_prog =
            std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        if let Some((id, stats)) = std::fs::read_to_string(&info)
            .ok()
            .and_then(|t| parse_fdinfo(&t))
        {
            out.insert(id, stats);
        }
    }
    Ok(out)
}

/// A program's name, as `bpftool -j prog show id ID` reports it.
pub fn program_name(id: u32) -> Result<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
    v["name"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no name for program {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_program_is_parsed() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1044\nprog_type:\t3\n\
                    prog_jited:\t1\nprog_tag:\ta71d8577f4682f11\nmemlock:\t20480\nprog_id:\t7152\n\
                    run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\n";
        let (id, s) = parse_fdinfo(text).expect("parsed");
        assert_eq!(id, 7152);
        assert_eq!(
            s,
            ProgStats {
                run_time_ns: 123_456,
                run_cnt: 789
            }
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n"), None, "not a program");
        let later = ProgStats {
            run_time_ns: 223_456,
            run_cnt: 1_789,
        };
        assert_eq!(later.ns_per_run_since(&s), Some(100.0));
        assert_eq!(s.ns_per_run_since(&s), None, "no runs, no average");
    }
}
