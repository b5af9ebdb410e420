//! Running netlink work inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, and a netlink
//! socket belongs to the namespace it was opened in. So work for a pod's
//! namespace runs on a dedicated OS thread that enters the namespace, opens its
//! own netlink connection and runs its own single-threaded tokio runtime; the
//! thread ends afterwards, so no thread of the process is ever left in a pod's
//! namespace. This module owns that dance and nothing else.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Failures entering or working in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace path does not exist (the container is gone).
    #[error("network namespace {} does not exist", path.display())]
    NotFound {
        /// CNI_NETNS.
        path: PathBuf,
    },
    /// The path exists but could not be opened.
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open {
        /// CNI_NETNS.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path is the namespace the plugin itself runs in; working there would
    /// put the pod's interface on the node.
    #[error("network namespace {} is the plugin's own (node) namespace", path.display())]
    SameAsOwn {
        /// CNI_NETNS.
        path: PathBuf,
    },
    /// `setns` refused (not a network namespace, or no privilege).
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Enter {
        /// CNI_NETNS.
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// The worker thread could not be started or set up its runtime or netlink socket.
    #[error("cannot set up a worker in network namespace {}: {source}", path.display())]
    Worker {
        /// CNI_NETNS.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The worker thread panicked.
    #[error("worker in network namespace {} panicked", path.display())]
    Panicked {
        /// CNI_NETNS.
        path: PathBuf,
    },
}

/// An open handle on a network namespace (keeps it alive while held).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    fd: OwnedFd,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NetnsError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                NetnsError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let open_err = |source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        };
        let theirs = file.metadata().map_err(open_err)?;
        let ours = std::fs::metadata("/proc/thread-self/ns/net").map_err(open_err)?;
        if theirs.dev() == ours.dev() && theirs.ino() == ours.ino() {
            return Err(NetnsError::SameAsOwn {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            fd: file.into(),
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file descriptor (for `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `work` with a netlink handle opened inside this namespace, on a
    /// fresh thread, and returns its output.
    pub async fn run<T, F, Fut>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = self.path.clone();
        let fd = self.fd.try_clone().map_err(|source| NetnsError::Worker {
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("weir-cni-netns".to_string())
            .spawn(move || {
                let _ = tx.send(run_on_this_thread(&thread_path, fd, work));
            })
            .map_err(|source| NetnsError::Worker {
                path: path.clone(),
                source,
            })?;
        // A dropped sender means the thread panicked before answering.
        rx.await.map_err(|_| NetnsError::Panicked { path })?
    }
}

fn run_on_this_thread<T, F, Fut>(path: &Path, fd: OwnedFd, work: F) -> Result<T, NetnsError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: Future<Output = T>,
{
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_path_buf(),
        source,
    })?;
    let worker_err = |source| NetnsError::Worker {
        path: path.to_path_buf(),
        source,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(worker_err)?;
    rt.block_on(async {
        // Opened after setns, so the socket lives in the pod's namespace.
        let (conn, handle, _) = rtnetlink::new_connection().map_err(worker_err)?;
        let conn_task = tokio::spawn(conn);
        let out = work(handle).await;
        conn_task.abort();
        Ok(out)
    })
}
