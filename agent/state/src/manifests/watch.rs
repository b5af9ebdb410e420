//! Watching the manifests directory: inotify (through `notify`) wakes a
//! rescan shortly after a change, and a periodic rescan makes sure a missed
//! event (overflowed queue, directory replaced, watch limit reached) is never
//! permanent. Consumers get a `tokio::sync::watch` of [`Snapshot`]s, published
//! only when the content changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{ManifestError, ManifestSource, Snapshot, SyncStatus};

/// Timing of the watcher.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Wait after the first change event before reading, so that an editor's
    /// write-rename-chmod sequence is usually read once (default 10 ms).
    /// Only changed files are read, so a second read is cheap; what arrives
    /// during a scan wakes one more scan right after it.
    pub debounce: Duration,
    /// Rescan this often even without events (default 2 s).
    pub rescan: Duration,
    /// Use inotify (default true); without it only periodic rescans see
    /// changes (for file systems where inotify says nothing, e.g. NFS).
    pub inotify: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            rescan: Duration::from_secs(2),
            inotify: true,
        }
    }
}

/// A running watch of a manifests directory. Dropping it stops the watch.
#[derive(Debug)]
pub struct ManifestWatch {
    rx: watch::Receiver<Arc<Snapshot>>,
    status: Arc<Mutex<SyncStatus>>,
    task: JoinHandle<()>,
}

impl ManifestWatch {
    /// A receiver of snapshots (its current value is the latest one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// The latest published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits for the next published snapshot; `None` if the watcher stopped.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Status as of the last scan (updated on every scan, unlike snapshots,
    /// so `last_success` shows that the watcher is alive).
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ManifestWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn check_dir(dir: &Path) -> Result<(), ManifestError> {
    let meta = std::fs::metadata(dir).map_err(|e| ManifestError::Directory {
        dir: dir.to_path_buf(),
        source: Arc::new(e),
    })?;
    if !meta.is_dir() {
        return Err(ManifestError::Directory {
            dir: dir.to_path_buf(),
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )),
        });
    }
    Ok(())
}

/// Starts an inotify watch that pokes `wake` on changes. Reads of our own
/// (access events) are ignored, or every scan would trigger the next.
fn start_inotify(dir: &Path, wake: &Arc<Notify>) -> Option<RecommendedWatcher> {
    let wake = wake.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
        Ok(_) => wake.notify_one(),
        Err(e) => {
            tracing::debug!(error = %e, "manifests watch event error; rescanning");
            wake.notify_one();
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::Recursive)?;
        Ok(w)
    });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot watch the manifests directory for changes; relying on periodic rescans"
            );
            None
        }
    }
}

impl ManifestSource {
    /// Reads `dir` now and keeps watching it with default timing.
    /// See [`Self::watch_with`].
    pub fn watch(dir: impl Into<PathBuf>) -> Result<ManifestWatch, ManifestError> {
        Self::watch_with(dir, WatchOptions::default())
    }

    /// Reads `dir` now (so the first snapshot is ready on return) and keeps
    /// watching it. Fails if `dir` is missing or not a directory; later
    /// failures show up as snapshot errors while the last good objects stay.
    /// Must be called within a Tokio runtime.
    pub fn watch_with(
        dir: impl Into<PathBuf>,
        options: WatchOptions,
    ) -> Result<ManifestWatch, ManifestError> {
        let dir = dir.into();
        check_dir(&dir)?;
        let mut source = ManifestSource::new(dir.clone());
        let wake = Arc::new(Notify::new());
        // Watch before the first read, so a change during it is not missed.
        let inotify = if options.inotify {
            start_inotify(&dir, &wake)
        } else {
            None
        };
        let first = source.reload();
        let status = Arc::new(Mutex::new(first.status.clone()));
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(run(source, tx, status.clone(), options, wake, inotify));
        Ok(ManifestWatch { rx, status, task })
    }
}

async fn run(
    mut source: ManifestSource,
    tx: watch::Sender<Arc<Snapshot>>,
    status: Arc<Mutex<SyncStatus>>,
    options: WatchOptions,
    wake: Arc<Notify>,
    mut inotify: Option<RecommendedWatcher>,
) {
    let mut rescan = tokio::time::interval(options.rescan);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate; the first read is done
    let mut published = tx.borrow().generation;
    let mut dir_was_missing = false;
    loop {
        tokio::select! {
            () = tx.closed() => break,
            () = wake.notified() => tokio::time::sleep(options.debounce).await,
            _ = rescan.tick() => {}
        }
        let scanned = tokio::task::spawn_blocking(move || {
            let snapshot = source.reload();
            (source, snapshot)
        })
        .await;
        let snapshot;
        (source, snapshot) = match scanned {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "manifests scan panicked; watcher stopped");
                return;
            }
        };
        *status.lock().unwrap_or_else(PoisonError::into_inner) = snapshot.status.clone();

        // A directory that was removed and recreated has lost its inotify watch.
        let missing = snapshot
            .errors
            .iter()
            .any(|e| matches!(e, ManifestError::Directory { .. }));
        if missing {
            dir_was_missing = true;
            inotify = None;
        } else if dir_was_missing && options.inotify {
            dir_was_missing = false;
            inotify = start_inotify(source.dir(), &wake);
        }

        if snapshot.generation != published {
            published = snapshot.generation;
            tracing::debug!(
                generation = published,
                objects = snapshot.objects.len(),
                errors = snapshot.errors.len(),
                "manifests changed"
            );
            if tx.send(Arc::new(snapshot)).is_err() {
                break;
            }
        }
    }
    drop(inotify);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Object, ObjectKey};

    const WAIT: Duration = Duration::from_secs(1);

    fn pod_key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn pod_yaml(name: &str, app: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\n")
    }

    /// Waits until a published snapshot satisfies `pred` (intermediate ones,
    /// e.g. of a half-written file, are allowed), failing after `WAIT`.
    async fn wait_for(
        w: &mut ManifestWatch,
        what: &str,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let latest = w.latest();
            if pred(&latest) {
                return latest;
            }
            match tokio::time::timeout_at(deadline, w.changed()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("watcher stopped while waiting for {what}"),
                Err(_) => panic!("no snapshot with {what} within {WAIT:?}; last: {latest:?}"),
            }
        }
    }

    fn app_of(s: &Snapshot, name: &str) -> Option<String> {
        match s.get(&pod_key(name)) {
            Some(Object::Pod(p)) => p.labels.get("app").cloned(),
            _ => None,
        }
    }

    async fn watch_sees_changes(options: WatchOptions) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ManifestSource::watch_with(dir.path(), options).unwrap();
        let first = w.latest();
        assert_eq!(first.generation, 1);
        assert!(first.objects.is_empty() && first.errors.is_empty());

        std::fs::write(dir.path().join("pods.yaml"), pod_yaml("a", "one")).unwrap();
        wait_for(&mut w, "pod a", |s| {
            app_of(s, "a").as_deref() == Some("one")
        })
        .await;

        std::fs::write(dir.path().join("pods.yaml"), pod_yaml("a", "\"not valid\"")).unwrap();
        let s = wait_for(&mut w, "the error", |s| !s.errors.is_empty()).await;
        assert!(
            s.errors[0]
                .to_string()
                .starts_with("pods.yaml: document 1 (Pod default/a): field metadata.labels[app]"),
            "{}",
            s.errors[0]
        );
        assert_eq!(app_of(&s, "a").as_deref(), Some("one"), "old object kept");

        std::fs::write(dir.path().join("pods.yaml"), pod_yaml("a", "two")).unwrap();
        let s = wait_for(&mut w, "the fix", |s| {
            app_of(s, "a").as_deref() == Some("two")
        })
        .await;
        assert!(s.errors.is_empty());
        let status = w.status();
        assert!(status.scans_total >= 4, "{status:?}");
        assert_eq!(status.objects[&Kind::Pod], 1);
        assert!(status.last_success.is_some());
    }

    #[tokio::test]
    async fn inotify_picks_up_changes() {
        // A rescan period far beyond the wait: only inotify can deliver in time.
        watch_sees_changes(WatchOptions {
            debounce: Duration::from_millis(100),
            rescan: Duration::from_secs(3600),
            inotify: true,
        })
        .await;
    }

    #[tokio::test]
    async fn periodic_rescan_alone_picks_up_changes() {
        watch_sees_changes(WatchOptions {
            debounce: Duration::from_millis(100),
            rescan: Duration::from_millis(150),
            inotify: false,
        })
        .await;
    }

    #[tokio::test]
    async fn unchanged_content_is_not_republished() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), pod_yaml("a", "one")).unwrap();
        let options = WatchOptions {
            rescan: Duration::from_millis(50),
            ..WatchOptions::default()
        };
        let mut w = ManifestSource::watch_with(dir.path(), options).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(400), w.changed())
                .await
                .is_err()
        );
        assert_eq!(w.latest().generation, 1);
        assert!(w.status().scans_total >= 3, "rescans ran: {:?}", w.status());
    }

    #[tokio::test]
    async fn missing_directory_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = ManifestSource::watch(&missing).unwrap_err();
        assert!(matches!(e, ManifestError::Directory { .. }));
        assert!(e.to_string().contains("nope"), "{e}");
        let file = dir.path().join("file.yaml");
        std::fs::write(&file, "").unwrap();
        let e = ManifestSource::watch(&file).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[tokio::test]
    async fn directory_recreated_is_watched_again() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("pods.yaml"), pod_yaml("a", "one")).unwrap();
        let options = WatchOptions {
            rescan: Duration::from_millis(200),
            ..WatchOptions::default()
        };
        let mut w = ManifestSource::watch_with(&dir, options).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let s = wait_for(&mut w, "the directory error", |s| {
            s.errors
                .iter()
                .any(|e| matches!(e, ManifestError::Directory { .. }))
        })
        .await;
        assert_eq!(
            app_of(&s, "a").as_deref(),
            Some("one"),
            "objects kept while the directory is gone"
        );
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("pods.yaml"), pod_yaml("b", "two")).unwrap();
        let s = wait_for(&mut w, "pod b", |s| app_of(s, "b").is_some()).await;
        assert!(app_of(&s, "a").is_none(), "pod a removed with its file");
    }
}
