//! The named exporters of one config file, and reloading it.
//!
//! [`ExporterSet::apply`] compares the new file with what runs:
//! - an exporter no longer listed is stopped (it writes what it had queued);
//! - a new one is started, an unchanged one (same entry, field for field) is
//!   left alone, so its file keeps appending;
//! - a changed one is restarted: the new instance subscribes at once (no
//!   flow pushed after `apply` is missed) and opens its file only after the
//!   old one has closed it, so two writers never share a file. The stream is
//!   split by the store's `seen()` count read just before the new
//!   subscription: the old instance writes the flows before it, the new one
//!   those after, so a flow is not written twice (with pushes racing the
//!   reload on another thread, one flow at the boundary can be lost or
//!   doubled). A removed exporter stops at the same kind of boundary.
//! - a refused entry ([`EntryError`], or a file that cannot be opened) does
//!   not run; if an exporter of that name was running, it keeps running
//!   with its previous config. Every other exporter is unaffected.
//! - a file that does not parse ([`crate::config::ConfigError`]) changes
//!   nothing.
//!
//! An exporter whose `end` has passed is not started (reported as ended).
//! [`ExporterSet::watch`] follows the file. Owns the exporters' lifecycle;
//! it never touches the flow store beyond subscribing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use weir_flows::FlowStore;

use crate::config::{self, EntryError};
use crate::exporter::{self, ExporterState, ExporterStats, Running, error_chain};

/// Each exporter's store queue, in flows, when none is given: about 80 ms
/// at 100k flows/s, enough to ride out a rotation or a slow write.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// What one [`ExporterSet::apply`] did. Names are sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// New exporters now running.
    pub started: Vec<String>,
    /// Changed exporters replaced by their new config.
    pub restarted: Vec<String>,
    /// Exporters left as they were.
    pub unchanged: Vec<String>,
    /// Exporters no longer in the file, stopped.
    pub stopped: Vec<String>,
    /// Exporters not started because their `end` has passed.
    pub ended: Vec<String>,
    /// Entries refused, in file order.
    pub refused: Vec<Refused>,
    /// The whole file was refused (nothing changed): why.
    pub file_error: Option<String>,
}

impl ApplyReport {
    /// Whether nothing was refused.
    pub fn is_ok(&self) -> bool {
        self.refused.is_empty() && self.file_error.is_none()
    }
}

/// A refused entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What is wrong, naming the exporter and the field.
    pub error: EntryError,
    /// An exporter of this name was running and keeps its previous config.
    pub kept_previous: bool,
}

/// One exporter's state and counters, for metrics
/// (`weir_flow_export_lines_total{exporter}` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterStatus {
    pub name: String,
    pub file_path: PathBuf,
    pub state: ExporterState,
    /// Lines written (flows and lost-event lines).
    pub lines_written: u64,
    /// Open, write, rename and encoding failures.
    pub write_errors: u64,
    /// Lines an error kept out of the file.
    pub lines_lost: u64,
    pub rotations: u64,
    /// Flows the include/exclude filters kept out.
    pub filtered_out: u64,
    /// Flows dropped because the exporter's queue was full (counted by the
    /// store under `export_<name>`, cumulative).
    pub queue_dropped: u64,
    /// Flows waiting in the queue now.
    pub queue_len: usize,
}

/// Errors of [`ExporterSet::watch`].
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The file's directory cannot be watched.
    #[error("watching {path}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Several named exporters reading one [`FlowStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ExporterSet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: FlowStore,
    node_name: Arc<str>,
    queue_capacity: usize,
    rt: tokio::runtime::Handle,
    state: Mutex<SetState>,
}

#[derive(Debug, Default)]
struct SetState {
    running: BTreeMap<String, Running>,
    /// Tasks of stopped or replaced exporters, awaited by `stop_all`.
    retiring: Vec<JoinHandle<()>>,
    /// Counters per name, kept across restarts so they never go down.
    stats: HashMap<String, Arc<ExporterStats>>,
}

impl ExporterSet {
    /// An empty set; `node_name` goes into every line's envelope.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the exporters run on the current one).
    pub fn new(store: FlowStore, node_name: &str) -> Self {
        Self::with_queue_capacity(store, node_name, DEFAULT_QUEUE_CAPACITY)
    }

    /// Same as [`ExporterSet::new`] with each exporter's queue bound.
    pub fn with_queue_capacity(store: FlowStore, node_name: &str, queue_capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                node_name: Arc::from(node_name),
                queue_capacity: queue_capacity.max(1),
                rt: tokio::runtime::Handle::current(),
                state: Mutex::new(SetState::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SetState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a config text (see the module documentation). Never fails as
    /// a whole: what was refused is in the report, and logged.
    pub fn apply(&self, cfg_text: &str) -> ApplyReport {
        let mut report = ApplyReport::default();
        let parsed = match config::parse(cfg_text) {
            Ok(p) => p,
            Err(e) => {
                let why = error_chain(&e);
                tracing::warn!(error = %why, "flow log config refused; previous exporters keep running");
                report.file_error = Some(why);
                return report;
            }
        };
        let inner = &self.inner;
        let mut guard = self.lock();
        let st = &mut *guard;

        let listed: HashSet<&str> = parsed
            .entries
            .iter()
            .map(|e| match e {
                Ok(c) => c.spec.name.as_str(),
                Err(e) => e.exporter.as_str(),
            })
            .collect();
        let gone: Vec<String> = st
            .running
            .keys()
            .filter(|n| !listed.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut r) = st.running.remove(&name) {
                st.retiring.extend(r.stop(inner.store.seen()));
            }
            st.stats.remove(&name);
            report.stopped.push(name);
        }

        let mut refused = Vec::new();
        let mut valid = HashSet::new();
        for entry in parsed.entries {
            let c = match entry {
                Ok(c) => c,
                Err(e) => {
                    refused.push(e);
                    continue;
                }
            };
            let name = c.spec.name.clone();
            valid.insert(name.clone());
            let old = st.running.get(&name);
            let old_failed = old.is_some_and(|r| {
                matches!(
                    *r.state.lock().unwrap_or_else(|e| e.into_inner()),
                    ExporterState::Failed(_)
                )
            });
            if old.is_some_and(|r| r.compiled.spec == c.spec) && !old_failed {
                report.unchanged.push(name);
                continue;
            }
            let stats = Arc::clone(st.stats.entry(name.clone()).or_default());
            if c.spec.end.is_some_and(|end| end <= SystemTime::now()) {
                if let Some(mut r) = st.running.remove(&name) {
                    st.retiring.extend(r.stop(inner.store.seen()));
                }
                st.running.insert(
                    name.clone(),
                    exporter::not_started(c, stats, ExporterState::Ended),
                );
                report.ended.push(name);
                continue;
            }
            // The old instance has the same file open (and may rotate it):
            // only a new path is checked here.
            let same_path = old.is_some_and(|r| r.compiled.spec.file_path == c.spec.file_path);
            if !same_path && let Err(e) = check_openable(&c.spec.file_path) {
                valid.remove(&name);
                refused.push(EntryError {
                    exporter: name,
                    field: "filePath".into(),
                    message: e,
                });
                continue;
            }
            // Read before subscribing: the predecessor handles flows before
            // this count, the new instance those from it on.
            let seen = inner.store.seen();
            let sub = inner
                .store
                .subscribe(&format!("export_{name}"), inner.queue_capacity);
            let after = st.running.get_mut(&name).and_then(|r| r.stop(seen));
            let restarted = st.running.contains_key(&name);
            let r = exporter::spawn(
                &inner.rt,
                c,
                sub,
                seen,
                Arc::clone(&inner.node_name),
                stats,
                after,
            );
            st.running.insert(name.clone(), r);
            if restarted {
                report.restarted.push(name);
            } else {
                report.started.push(name);
            }
        }
        for error in refused {
            let kept_previous =
                !valid.contains(&error.exporter) && st.running.contains_key(&error.exporter);
            tracing::warn!(exporter = %error.exporter, field = %error.field, error = %error.message, kept_previous, "flow log exporter refused");
            report.refused.push(Refused {
                error,
                kept_previous,
            });
        }
        // Finished tasks need no waiting.
        st.retiring.retain(|t| !t.is_finished());
        drop(guard);
        for v in [
            &mut report.started,
            &mut report.restarted,
            &mut report.unchanged,
            &mut report.stopped,
            &mut report.ended,
        ] {
            v.sort();
        }
        tracing::info!(
            started = ?report.started,
            restarted = ?report.restarted,
            stopped = ?report.stopped,
            unchanged = report.unchanged.len(),
            refused = report.refused.len(),
            "flow log config applied"
        );
        report
    }

    /// The names of the exporters in the set (running, ended or failed).
    pub fn names(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// Every exporter's state and counters, sorted by name.
    pub fn status(&self) -> Vec<ExporterStatus> {
        let queues = self.inner.store.subscriber_stats();
        let st = self.lock();
        st.running
            .iter()
            .map(|(name, r)| {
                let sub = format!("export_{name}");
                let q = queues.iter().find(|q| q.name == sub);
                ExporterStatus {
                    name: name.clone(),
                    file_path: r.compiled.spec.file_path.clone(),
                    state: r.state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    lines_written: r.stats.lines_written(),
                    write_errors: r.stats.write_errors(),
                    lines_lost: r.stats.lines_lost(),
                    rotations: r.stats.rotations(),
                    filtered_out: r.stats.filtered_out(),
                    queue_dropped: q.map_or(0, |q| q.dropped),
                    queue_len: q.map_or(0, |q| q.len),
                }
            })
            .collect()
    }

    /// Stops every exporter, waits until each has written what it had
    /// queued, and empties the set (for shutdown; `apply` may start again).
    pub async fn stop_all(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut st = self.lock();
            let mut tasks = std::mem::take(&mut st.retiring);
            let seen = self.inner.store.seen();
            for (_, mut r) in std::mem::take(&mut st.running) {
                tasks.extend(r.stop(seen));
            }
            st.stats.clear();
            tasks
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Follows the config file at `path` with default timings (see
    /// [`WatchOptions`]). Applies it at once, then on every change.
    pub fn watch(&self, path: impl Into<PathBuf>) -> Result<ConfigWatcher, WatchError> {
        self.watch_with(path, WatchOptions::default())
    }

    /// Follows the config file at `path`: filesystem events on its directory
    /// (which also catches a Kubernetes ConfigMap's symlink swap) plus a
    /// rescan every `rescan`; after an event, waits `debounce` for the
    /// writer to finish. The file is applied only when its bytes changed. A
    /// missing or unreadable file keeps the current exporters (logged).
    pub fn watch_with(
        &self,
        path: impl Into<PathBuf>,
        opts: WatchOptions,
    ) -> Result<ConfigWatcher, WatchError> {
        use notify::Watcher as _;
        let path = path.into();
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = Arc::clone(&wake);
        let mut watcher =
            notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                // Any event re-reads the file; the content decides.
                w.notify_one();
            })
            .map_err(|source| WatchError::Notify {
                path: path.clone(),
                source,
            })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let set = self.clone();
        let task = self.inner.rt.spawn(watch_loop(set, path, opts, wake, tx));
        Ok(ConfigWatcher {
            _watcher: watcher,
            task,
            reports: rx,
        })
    }
}

/// Timings of [`ExporterSet::watch_with`].
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet time after a filesystem event before reading (default 200 ms).
    pub debounce: Duration,
    /// Reread at least this often, in case an event was missed (default 10 s).
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            rescan: Duration::from_secs(10),
        }
    }
}

/// A running watch; dropping it stops watching (the exporters keep running).
#[derive(Debug)]
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
    reports: tokio::sync::watch::Receiver<Option<ApplyReport>>,
}

impl ConfigWatcher {
    /// The report of the last apply, if any.
    pub fn last_report(&self) -> Option<ApplyReport> {
        self.reports.borrow().clone()
    }

    /// Waits for the next apply and returns its report.
    pub async fn next_report(&mut self) -> Option<ApplyReport> {
        self.reports.changed().await.ok()?;
        self.reports.borrow_and_update().clone()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_loop(
    set: ExporterSet,
    path: PathBuf,
    opts: WatchOptions,
    wake: Arc<tokio::sync::Notify>,
    reports: tokio::sync::watch::Sender<Option<ApplyReport>>,
) {
    let mut last: Option<Vec<u8>> = None;
    let mut missing_logged = false;
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                missing_logged = false;
                if last.as_ref() != Some(&bytes) {
                    let text = String::from_utf8_lossy(&bytes);
                    let s = set.clone();
                    let text = text.into_owned();
                    // `apply` checks files with blocking calls.
                    match tokio::task::spawn_blocking(move || s.apply(&text)).await {
                        Ok(report) => {
                            let _ = reports.send(Some(report));
                        }
                        Err(e) => tracing::error!(error = %e, "flow log config apply failed"),
                    }
                    last = Some(bytes);
                }
            }
            Err(e) => {
                if !missing_logged {
                    tracing::warn!(file = %path.display(), error = %e, "flow log config unreadable; exporters unchanged");
                    missing_logged = true;
                }
            }
        }
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(opts.debounce).await,
            () = tokio::time::sleep(opts.rescan) => {}
        }
    }
}

/// Whether `path` can be opened for appending (creating it and its
/// directories, as the exporter would).
fn check_openable(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))
}
