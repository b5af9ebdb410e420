//! Watching files for change: a notify (inotify) watcher on the directories
//! that hold them, debounced, calling a reload function on a tokio task.
//!
//! Directories are watched rather than the files because files are usually
//! replaced, not rewritten: `mv new cert.pem` or Kubernetes' secret volumes,
//! which swap a `..data` symlink. A watch on the old inode would go quiet
//! after the first replacement. This module knows nothing about what the
//! files mean.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Quiet time after the last change before reloading: writers often touch
/// a file several times (truncate, write, chmod) or replace a certificate
/// and its key one after the other.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Setting up a watch failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The inotify watcher could not be created.
    #[error("cannot create a file watcher: {source}")]
    Watcher {
        /// notify's complaint.
        #[source]
        source: notify::Error,
    },
    /// A directory could not be watched.
    #[error("cannot watch {}: {source}", dir.display())]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// notify's complaint.
        #[source]
        source: notify::Error,
    },
}

/// A running watch. Dropping it stops the watcher and the reload task.
pub(crate) struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Calls `reload` (on a tokio task) after any of `files` changes.
///
/// An event counts when it names one of the files, or a name starting with
/// `..` (a Kubernetes atomic-writer swap). When a file is a symlink, the
/// directory of its target is watched as well.
pub(crate) fn watch_files(
    files: &[PathBuf],
    reload: impl FnMut() + Send + 'static,
) -> Result<FileWatch, ReloadError> {
    let mut names: BTreeSet<OsString> = BTreeSet::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for file in files {
        for path in [Some(file.clone()), std::fs::canonicalize(file).ok()]
            .into_iter()
            .flatten()
        {
            if let Some(name) = path.file_name() {
                names.insert(name.to_owned());
            }
            dirs.insert(parent_dir(&path));
        }
    }

    let pending = Arc::new(Notify::new());
    let signal = pending.clone();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                // Opening and reading the files (our own reload does) must not
                // trigger another reload.
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                let relevant = event.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
                });
                if relevant {
                    signal.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watcher error"),
        })
        .map_err(|source| ReloadError::Watcher { source })?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| ReloadError::Watch {
                dir: dir.clone(),
                source,
            })?;
    }

    let task = tokio::spawn(debounce(pending, reload));
    Ok(FileWatch {
        _watcher: watcher,
        task,
    })
}

async fn debounce(pending: Arc<Notify>, mut reload: impl FnMut()) {
    loop {
        pending.notified().await;
        // Wait until the files have been quiet for DEBOUNCE.
        while tokio::time::timeout(DEBOUNCE, pending.notified())
            .await
            .is_ok()
        {}
        reload();
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
