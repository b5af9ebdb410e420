//! The unix socket listener: parent directory, stale-socket handling, and a
//! bind that applies the mode and group before the socket accepts anyone.
//!
//! Access control on this socket is the file's mode and group (default 0600,
//! owner only): the kernel checks write permission on connect. No bearer
//! token is asked for here.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

/// Where and how to serve on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSpec {
    /// The socket file.
    pub path: PathBuf,
    /// Permission bits of the socket file (only the 0o777 bits are allowed).
    pub mode: u32,
    /// Group owning the socket file: a group name or a numeric gid.
    pub group: Option<String>,
}

impl UnixSpec {
    /// The default mode: owner (the agent, normally root) only.
    pub const DEFAULT_MODE: u32 = 0o600;

    /// A spec with mode 0600 and no group change.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        UnixSpec {
            path: path.into(),
            mode: Self::DEFAULT_MODE,
            group: None,
        }
    }
}

/// Setting up the unix socket failed.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// The mode has bits outside 0o777.
    #[error("unix socket {}: mode {mode:#o} has bits outside 0o777", path.display())]
    BadMode {
        /// The socket path.
        path: PathBuf,
        /// The mode asked for.
        mode: u32,
    },
    /// The group name is not known to the system.
    #[error("unix socket {}: no group named {group:?}", path.display())]
    UnknownGroup {
        /// The socket path.
        path: PathBuf,
        /// The group asked for.
        group: String,
    },
    /// Another process is serving on this socket.
    #[error("unix socket {} is in use by another process (is another agent running?)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("unix socket {}: {what}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> UnixError + 'a {
    move |source| UnixError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

fn errno_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(Errno) -> UnixError + 'a {
    move |e| UnixError::Io {
        path: path.to_owned(),
        what,
        source: e.into(),
    }
}

/// A bound, listening socket and the identity of its file, so that only
/// our own file is removed at shutdown.
#[derive(Debug)]
pub(crate) struct BoundUnix {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundUnix {
    /// What is needed to remove the file later, without the listener.
    pub(crate) fn file_id(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
        }
    }
}

/// The identity of a socket file we created.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub(crate) fn remove(&self) {
        remove_if_ours(&self.path, self.dev, self.ino);
    }
}

fn remove_if_ours(path: &Path, dev: u64, ino: u64) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the unix socket");
            }
        }
        // Replaced by someone else (a newer server) or already gone.
        _ => {}
    }
}

/// Binds and listens on the socket of `spec`.
///
/// Order matters: bind creates the file, then its group and mode are set,
/// and only then does `listen` let clients connect. Until `listen`, a
/// connect is refused, so there is no moment when the socket accepts
/// connections under looser permissions.
pub(crate) fn bind(spec: &UnixSpec) -> Result<BoundUnix, UnixError> {
    let path = spec.path.as_path();
    if spec.mode & !0o777 != 0 {
        return Err(UnixError::BadMode {
            path: path.to_owned(),
            mode: spec.mode,
        });
    }
    let gid = spec
        .group
        .as_deref()
        .map(|g| resolve_group(path, g))
        .transpose()?;

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_err(path, "cannot create the parent directory"))?;
    }
    clear_stale(path)?;

    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno_err(path, "socket"))?;
    let addr = UnixAddr::new(path).map_err(errno_err(path, "bad socket path"))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
        Errno::EADDRINUSE => UnixError::InUse {
            path: path.to_owned(),
        },
        e => errno_err(path, "bind")(e),
    })?;

    let finish = || -> Result<BoundUnix, UnixError> {
        if let Some(gid) = gid {
            std::os::unix::fs::lchown(path, None, Some(gid))
                .map_err(io_err(path, "cannot set the group"))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(spec.mode))
            .map_err(io_err(path, "cannot set the mode"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path, "stat"))?;
        let backlog = Backlog::new(1024).map_err(errno_err(path, "backlog"))?;
        socket::listen(&fd, backlog).map_err(errno_err(path, "listen"))?;
        Ok(BoundUnix {
            listener: std::os::unix::net::UnixListener::from(fd),
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    };
    finish().inspect_err(|_| {
        // Do not leave a dead socket file behind a failed start.
        let _ = std::fs::remove_file(path);
    })
}

fn resolve_group(path: &Path, group: &str) -> Result<u32, UnixError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(UnixError::UnknownGroup {
            path: path.to_owned(),
            group: group.to_owned(),
        }),
        Err(e) => Err(errno_err(path, "cannot look up the group")(e)),
    }
}

/// Removes a socket file nobody listens on; refuses a live one and anything
/// that is not a socket.
fn clear_stale(path: &Path) -> Result<(), UnixError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(UnixError::NotASocket {
            path: path.to_owned(),
        });
    }
    // A non-blocking connect answers at once: refused means stale; success
    // or EAGAIN (a live listener with a full backlog) means in use.
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno_err(path, "socket"))?;
    let addr = UnixAddr::new(path).map_err(errno_err(path, "bad socket path"))?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Err(UnixError::InUse {
            path: path.to_owned(),
        }),
        Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => {
            tracing::info!(path = %path.display(), "removing a stale unix socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(path, "cannot remove the stale socket")(e)),
            }
        }
        Err(e) => Err(errno_err(path, "cannot probe the existing socket")(e)),
    }
}
