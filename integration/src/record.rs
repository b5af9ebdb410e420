//! Crash safety: each lab run writes what it made (owner pid, namespaces,
//! processes, directories) to `/run/weir-lab/<run_id>/run.json` before it
//! makes it, so that whatever a dead run left behind can be found and removed.
//!
//! Owns the record format and the removal of dead runs. It only ever removes
//! things whose names carry the lab's prefix ([`PREFIX`]) or that a record
//! lists, and never touches a run whose owner process is alive.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::ProcessRef;
use crate::{cgroup, netns};

/// Directory holding one sub-directory per lab run.
pub const RUN_ROOT: &str = "/run/weir-lab";
/// Prefix of everything a lab names: network namespaces, lab directories,
/// container ids.
pub const PREFIX: &str = "weirlab-";
const RECORD_FILE: &str = "run.json";

/// Failures of reading or writing run records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing the record failed.
    #[error("run record {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record file is not valid JSON of the expected shape.
    #[error("run record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What one lab run made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The process that runs the lab; the run is dead once it is gone.
    pub owner: ProcessRef,
    /// Set by `--keep`: automatic clean-up at lab start leaves the run alone;
    /// `weir-lab cleanup` removes it.
    #[serde(default)]
    pub kept: bool,
    /// The lab's temporary directory (manifests, flow log, IPAM, logs).
    #[serde(default)]
    pub lab_dir: Option<PathBuf>,
    /// The agent's socket when it lives outside `lab_dir`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Named network namespaces, recorded before they are created.
    #[serde(default)]
    pub netns: Vec<String>,
    /// Processes started (agent, servers).
    #[serde(default)]
    pub processes: Vec<ProcessRef>,
    /// Directories the run created outside `lab_dir`; removed if empty.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
    /// cgroup v2 directories of hostNetwork pods (and the run's own above
    /// them), recorded before they are created; removed with whatever runs
    /// inside.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

impl RunRecord {
    /// A record for a new run owned by this process.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_string(),
            owner: ProcessRef::current("lab"),
            kept: false,
            lab_dir: None,
            socket: None,
            netns: Vec::new(),
            processes: Vec::new(),
            created_dirs: Vec::new(),
            cgroups: Vec::new(),
        }
    }

    /// Directory of the record of run `run_id`.
    pub fn dir_of(run_id: &str) -> PathBuf {
        Path::new(RUN_ROOT).join(run_id)
    }

    /// Writes the record (atomically: readers never see half a file).
    pub fn save(&self) -> Result<(), RecordError> {
        // A sweep elsewhere removes RUN_ROOT when it is empty, possibly
        // between our two mkdirs; that race is retried, not reported.
        let mut attempts = 0;
        loop {
            match self.save_once() {
                Err(RecordError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempts < 5 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    fn save_once(&self) -> Result<(), RecordError> {
        let dir = Self::dir_of(&self.run_id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(".run.json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("records always serialize");
        fs::write(&tmp, json).map_err(io(&tmp))?;
        let file = dir.join(RECORD_FILE);
        fs::rename(&tmp, &file).map_err(io(&file))
    }

    /// Reads the record of run `run_id`.
    pub fn load(run_id: &str) -> Result<Self, RecordError> {
        let path = Self::dir_of(run_id).join(RECORD_FILE);
        let bytes = fs::read(&path).map_err(|source| RecordError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Corrupt { path, source })
    }

    /// Whether the owning process still runs.
    pub fn owner_alive(&self) -> bool {
        self.owner.is_alive()
    }
}

/// Ids of all recorded runs.
pub fn run_ids() -> Vec<String> {
    let Ok(entries) = fs::read_dir(RUN_ROOT) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

/// Run id embedded in a name made by a lab (`weirlab-<run_id>-...`).
pub fn run_id_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let id = rest.split('-').next()?;
    (!id.is_empty()).then_some(id)
}

/// What a clean-up removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Runs whose records were removed.
    pub runs: Vec<String>,
    /// Network namespaces deleted.
    pub netns: Vec<String>,
    /// Processes stopped.
    pub processes: Vec<i32>,
    /// Files and directories removed.
    pub paths: Vec<PathBuf>,
    /// Things that could not be removed, with the reason.
    pub errors: Vec<String>,
}

impl CleanupReport {
    /// Whether nothing was found to remove.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.netns.is_empty()
            && self.processes.is_empty()
            && self.paths.is_empty()
    }
}

/// Which runs a clean-up may remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Dead runs that were not kept (what a starting lab does).
    DeadUnkept,
    /// All dead runs, kept ones included (`weir-lab cleanup`).
    AllDead,
}

/// What a sweep may do with one run, judged from its record as it is now.
enum Verdict {
    /// Owner alive, kept (and not sweeping kept runs), or being created.
    Leave,
    /// Dead: remove everything the record lists.
    Remove(Box<RunRecord>),
    /// No record (and no run being set up): its namespaces are orphans.
    Orphan,
}

fn judge(id: &str, mode: Sweep, report: &mut CleanupReport) -> Verdict {
    match RunRecord::load(id) {
        Ok(rec) if rec.owner_alive() => Verdict::Leave,
        Ok(rec) if rec.kept && mode == Sweep::DeadUnkept => Verdict::Leave,
        Ok(rec) => Verdict::Remove(Box::new(rec)),
        Err(RecordError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            // A directory without a record: a run writing its first record
            // right now, or one that died before that. Only an old one goes.
            let dir = RunRecord::dir_of(id);
            match fs::metadata(&dir).and_then(|m| m.modified()) {
                Err(_) => Verdict::Orphan,
                Ok(t) if t.elapsed().unwrap_or_default() > Duration::from_secs(60) => {
                    remove_path(&dir, report);
                    Verdict::Orphan
                }
                Ok(_) => Verdict::Leave,
            }
        }
        Err(e) => {
            // A corrupt record cannot tell us its owner; leave the run alone
            // and say so.
            report.errors.push(e.to_string());
            Verdict::Leave
        }
    }
}

/// Removes what dead runs left behind: their processes, network namespaces,
/// directories and records, and any `weirlab-` namespace no live run owns.
pub fn sweep(mode: Sweep) -> CleanupReport {
    let mut report = CleanupReport::default();
    for id in run_ids() {
        if let Verdict::Remove(rec) = judge(&id, mode, &mut report) {
            remove_run(&rec, &mut report);
        }
    }
    // Namespaces are judged one by one from their run's record as it is
    // after the namespace was seen: a run writes its record before it makes
    // a namespace, so a run starting meanwhile is never mistaken for an orphan.
    for name in netns::list(PREFIX) {
        let Some(id) = run_id_of(&name) else {
            continue;
        };
        match judge(id, mode, &mut report) {
            Verdict::Leave => {}
            Verdict::Remove(rec) => remove_run(&rec, &mut report),
            Verdict::Orphan => remove_netns(&name, &mut report),
        }
    }
    // The same for cgroup directories (a run records them before making them).
    for (id, path) in cgroup::list_runs() {
        match judge(&id, mode, &mut report) {
            Verdict::Leave => {}
            Verdict::Remove(rec) => remove_run(&rec, &mut report),
            Verdict::Orphan => remove_cgroup(&path, &mut report),
        }
    }
    remove_dir_if_empty(Path::new(RUN_ROOT));
    report
}

/// Removes everything `rec` lists. The owner must be dead (or be the caller).
pub fn remove_run(rec: &RunRecord, report: &mut CleanupReport) {
    for p in &rec.processes {
        if p.is_alive() {
            p.terminate(Duration::from_secs(3));
            report.processes.push(p.pid);
        }
    }
    for name in &rec.netns {
        remove_netns(name, report);
    }
    // Pod directories were recorded after their run's: remove in reverse.
    for path in rec.cgroups.iter().rev() {
        remove_cgroup(path, report);
    }
    if let Some(dir) = &rec.lab_dir {
        // Only ever a directory named like ours, whatever the record says.
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX));
        if ours {
            remove_path(dir, report);
        } else {
            report.errors.push(format!(
                "not removing {}: not a lab directory",
                dir.display()
            ));
        }
    }
    if let Some(socket) = &rec.socket {
        let is_socket = fs::symlink_metadata(socket)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if is_socket {
            remove_path(socket, report);
        }
        // The agent's endpoints file beside its socket (a killed agent
        // leaves it; a stopped one removes it when no pod is left).
        if let Some(dir) = socket.parent() {
            remove_path(&dir.join("endpoints.json"), report);
        }
    }
    for dir in &rec.created_dirs {
        remove_dir_if_empty(dir);
    }
    remove_path(&RunRecord::dir_of(&rec.run_id), report);
    report.runs.push(rec.run_id.clone());
}

/// Stops every process inside namespace `name`, then deletes it.
pub fn remove_netns(name: &str, report: &mut CleanupReport) {
    let path = netns::path(name);
    if !path.exists() {
        return;
    }
    for pid in netns::pids_in(&path) {
        if let Some(p) = ProcessRef::of(pid, "in lab netns") {
            p.terminate(Duration::from_secs(3));
            report.processes.push(pid);
        }
    }
    match netns::delete(name) {
        Ok(()) => report.netns.push(name.to_string()),
        Err(e) => report.errors.push(e.to_string()),
    }
}

/// Kills whatever runs in the lab cgroup `path` and removes it (with its
/// sub-directories).
pub fn remove_cgroup(path: &Path, report: &mut CleanupReport) {
    if !path.exists() {
        return;
    }
    for pid in cgroup::pids(path) {
        report.processes.push(pid);
    }
    match cgroup::remove(path) {
        Ok(()) => report.paths.push(path.to_path_buf()),
        Err(e) => report.errors.push(e.to_string()),
    }
}

fn remove_path(path: &Path, report: &mut CleanupReport) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return,
    };
    match result {
        Ok(()) => report.paths.push(path.to_path_buf()),
        // Another sweep (a lab starting, `weir-lab cleanup`) removed it, or
        // part of it, meanwhile: gone is what we wanted.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => report
            .errors
            .push(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Removes `dir` if it is empty; quietly does nothing otherwise.
pub fn remove_dir_if_empty(dir: &Path) {
    // remove_dir refuses non-empty directories, which is what we want.
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sweeps removing the same dead run at once (a lab starting while
    /// `weir-lab cleanup` runs) must both succeed: what the other removed
    /// first is not an error.
    #[test]
    fn concurrent_removals_of_one_path_report_no_error() {
        let base = std::env::temp_dir().join(format!("weirlab-rm-{}", std::process::id()));
        let barrier = std::sync::Barrier::new(2);
        let mut failures = Vec::new();
        for round in 0..2000 {
            let dir = base.join(round.to_string());
            fs::create_dir_all(dir.join("x")).unwrap();
            let errors: Vec<String> = std::thread::scope(|s| {
                let sweep = || {
                    let mut r = CleanupReport::default();
                    barrier.wait();
                    remove_path(&dir, &mut r);
                    r.errors
                };
                let a = s.spawn(sweep);
                let mut errors = sweep();
                errors.extend(a.join().unwrap());
                errors
            });
            assert!(!dir.exists());
            failures.extend(errors);
        }
        let _ = fs::remove_dir_all(&base);
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            failures.first()
        );
    }

    #[test]
    fn run_id_is_taken_from_lab_names_only() {
        assert_eq!(run_id_of("weirlab-ab12cd-node"), Some("ab12cd"));
        assert_eq!(run_id_of("weirlab-ab12cd-p3"), Some("ab12cd"));
        assert_eq!(run_id_of("weirlab-"), None);
        assert_eq!(run_id_of("weircni-ab12cd-node"), None);
    }

    #[test]
    fn record_round_trips_through_json_and_old_records_get_defaults() {
        let mut rec = RunRecord::new("abc123");
        rec.netns.push("weirlab-abc123-node".into());
        let json = serde_json::to_string(&rec).unwrap();
        let back: RunRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        let minimal: RunRecord =
            serde_json::from_str(r#"{"run_id":"x","owner":{"pid":1,"start_time":2,"what":"lab"}}"#)
                .unwrap();
        assert!(!minimal.kept && minimal.netns.is_empty());
    }
}
