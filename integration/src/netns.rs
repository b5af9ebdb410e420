//! Named network namespaces, laid out as `ip netns` lays them out
//! (`/run/netns/NAME`, a bind mount of a namespace file), and running code
//! inside one.
//!
//! Owns: creating and deleting named namespaces, entering one from a thread
//! made for that purpose, finding the processes that live in one, per-namespace
//! sysctls, bringing an interface up, and adding addresses to an interface
//! (the node namespace's own). It never changes the machine's own
//! network namespace: every `setns` happens on a thread that exits afterwards,
//! or in a child process between fork and exec.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where named network namespaces live (shared with `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Failures of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A filesystem step or syscall failed.
    #[error("netns {name}: {what}: {source}")]
    Io {
        /// Namespace name (or path).
        name: String,
        /// The step that failed.
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A namespace of that name already exists.
    #[error("netns {0} already exists")]
    Exists(String),
    /// The thread that entered the namespace panicked.
    #[error("netns {0}: the thread working inside it panicked")]
    ThreadPanicked(String),
}

fn io_err(name: &str, what: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    let name = name.to_string();
    move |source| NetnsError::Io { name, what, source }
}

fn nix_err(name: &str, what: &'static str) -> impl FnOnce(nix::Error) -> NetnsError {
    let name = name.to_string();
    move |errno| NetnsError::Io {
        name,
        what,
        source: io::Error::from(errno),
    }
}

/// Path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Serializes the one-time set-up of [`NETNS_DIR`] within this process.
static RUN_DIR_SETUP: Mutex<bool> = Mutex::new(false);

/// Makes [`NETNS_DIR`] a shared mount point, as `ip netns add` does, so that
/// namespace mounts made later are seen by mount namespaces created later
/// (e.g. by `ip netns exec`).
fn ensure_run_dir() -> Result<(), NetnsError> {
    let mut done = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    fs::create_dir_all(NETNS_DIR).map_err(io_err(NETNS_DIR, "create directory"))?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => {}
        // Not a mount point yet: bind it onto itself, then share it.
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(nix_err(NETNS_DIR, "bind-mount onto itself"))?;
            shared().map_err(nix_err(NETNS_DIR, "make shared"))?;
        }
        Err(e) => return Err(nix_err(NETNS_DIR, "make shared")(e)),
    }
    *done = true;
    Ok(())
}

/// Creates the named namespace `name` with `lo` up and returns its path.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    ensure_run_dir()?;
    let target = path(name);
    // create_new: two runs must never end up sharing a namespace.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(name.to_string()));
        }
        Err(e) => return Err(io_err(name, "create mount point")(e)),
    }
    let mount_target = target.clone();
    let owned_name = name.to_string();
    let made = std::thread::Builder::new()
        .name("weirlab-netns".into())
        .spawn(move || -> Result<(), NetnsError> {
            // This thread gets its own namespace and exits afterwards; the
            // bind mount keeps the namespace alive.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(nix_err(&owned_name, "unshare"))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &mount_target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_err(&owned_name, "bind-mount namespace"))?;
            set_link_up("lo").map_err(io_err(&owned_name, "bring lo up"))
        })
        .map_err(io_err(name, "spawn thread"))?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(name.to_string()))
        .and_then(|r| r);
    if let Err(e) = made {
        let _ = delete(name);
        return Err(e);
    }
    Ok(target)
}

/// Deletes the named namespace `name`; succeeds if it does not exist. The
/// namespace itself goes away once no process lives in it any more.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let target = path(name);
    match nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made namespace); ENOENT: gone.
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_err(name, "unmount")(e)),
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(name, "remove mount point")(e)),
    }
}

/// Names of the named namespaces starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Opens a namespace file (close-on-exec).
pub fn open(ns_path: &Path) -> Result<OwnedFd, NetnsError> {
    let file = fs::File::open(ns_path).map_err(io_err(&ns_path.to_string_lossy(), "open"))?;
    Ok(OwnedFd::from(file))
}

/// Moves the calling thread into the namespace at `ns_path`. Only for threads
/// made for that purpose: the thread stays there.
pub fn enter(ns_path: &Path) -> Result<(), NetnsError> {
    let fd = open(ns_path)?;
    nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
        .map_err(nix_err(&ns_path.to_string_lossy(), "setns"))
}

/// Runs `f` on a new thread inside the namespace at `ns_path` and returns its
/// result. Blocks the caller until `f` returns.
pub fn run_in<T, F>(ns_path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns_path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(ns_path.to_string_lossy().into_owned()))?
    })
}

/// Like [`run_in`], without blocking an async runtime's thread.
pub async fn run_in_async<T, F>(ns_path: PathBuf, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = ns_path.to_string_lossy().into_owned();
    std::thread::Builder::new()
        .name("weirlab-in-netns".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let r = enter(&ns_path).map(|()| f());
            let _ = tx.send(r);
        })
        .map_err(io_err(&name, "spawn thread"))?;
    rx.await.map_err(|_| NetnsError::ThreadPanicked(name))?
}

/// `setns` into `fd` for use in `pre_exec`: between fork and exec only
/// async-signal-safe calls are allowed, and `setns` is a bare syscall.
pub fn setns_raw(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns on a valid descriptor; no memory is touched.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets interface `ifname` up in the calling thread's namespace.
pub fn set_link_up(ifname: &str) -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `req`, which
    // lives for the whole call.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Adds `addrs` as host prefixes (/32, /128; IPv6 without duplicate address
/// detection) to the existing link `name` in the calling thread's namespace:
/// how the lab gives its node namespace addresses of its own (on `lo`: the
/// kernel here has no dummy links, and an address on `lo` is just as local).
pub fn add_addresses(name: &str, addrs: &[IpAddr]) -> io::Result<()> {
    use futures::TryStreamExt;
    use netlink_packet_route::address::AddressHeaderFlags;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // The netlink socket is made here, in this thread's namespace.
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let conn = tokio::spawn(conn);
        let result = async {
            let err =
                |what: String| move |e: rtnetlink::Error| io::Error::other(format!("{what}: {e}"));
            let link = handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
                .map_err(err(format!("get link {name}")))?
                .ok_or_else(|| io::Error::other(format!("link {name} vanished")))?;
            for ip in addrs {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                let mut req = handle.address().add(link.header.index, *ip, prefix);
                if ip.is_ipv6() {
                    req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
                }
                req.execute()
                    .await
                    .map_err(err(format!("add {ip}/{prefix} to {name}")))?;
            }
            Ok(())
        }
        .await;
        conn.abort();
        result
    })
}

/// Writes sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) in the calling
/// thread's namespace: `/proc/sys/net` shows the namespace of whoever opens it.
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(file, value)
}

/// Ids of the processes (other than this one) with at least one thread in the
/// namespace at `ns_path`.
pub fn pids_in(ns_path: &Path) -> Vec<i32> {
    let Ok(meta) = fs::metadata(ns_path) else {
        return Vec::new();
    };
    let wanted = (meta.dev(), meta.ino());
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(tasks) = fs::read_dir(entry.path().join("task")) else {
            continue;
        };
        let inside = tasks.filter_map(|t| t.ok()).any(|t| {
            fs::metadata(t.path().join("ns/net"))
                .map(|m| (m.dev(), m.ino()) == wanted)
                .unwrap_or(false)
        });
        if inside {
            pids.push(pid);
        }
    }
    pids
}

/// Whether the calling thread is in the same namespace as `ns_path`.
pub fn current_is(ns_path: &Path) -> bool {
    match (
        fs::metadata("/proc/thread-self/ns/net"),
        fs::metadata(ns_path),
    ) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}
