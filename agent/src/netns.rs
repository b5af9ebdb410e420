//! Entering a network namespace for the whole agent process.
//!
//! `setns(CLONE_NEWNET)` only moves the calling thread; threads created
//! afterwards inherit it. So the agent calls [`enter`] on its main thread
//! before it builds the tokio runtime, after it has bound the listeners that
//! must stay in the machine's own namespace (metrics).

use std::path::{Path, PathBuf};

/// Failure to enter a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened (missing, not a netns file).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// setns(2) refused.
    #[error("cannot enter network namespace {path}: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        NetnsError::Setns {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Whether an interface index exists in the calling thread's network namespace.
pub fn ifindex_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    !p.is_null()
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The network namespace the agent started in, kept open so that listeners
/// opened later (the flow API, turned on at runtime) still bind there and
/// not in the node namespace the datapath runs in.
#[derive(Debug)]
pub struct HomeNetns {
    file: std::fs::File,
}

impl HomeNetns {
    /// Opens the calling thread's current network namespace.
    pub fn current() -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open("/proc/thread-self/ns/net")?,
        })
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
        })
    }

    /// Moves the calling thread into this namespace (threads it creates
    /// afterwards inherit it).
    pub fn enter(&self) -> std::io::Result<()> {
        nix::sched::setns(&self.file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
    }

    /// Binds a TCP listener in this namespace. setns(2) moves only the
    /// calling thread, so a short-lived thread does it and the listener (a
    /// file descriptor, valid in any namespace) comes back.
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let file = self.file.try_clone()?;
        std::thread::Builder::new()
            .name("weir-bind".into())
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })?
            .join()
            .map_err(|_| std::io::Error::other("the bind thread panicked"))?
    }
}
