//! Accepted connections as handed to the gRPC server: each is wrapped so
//! that it is counted while open, carries [`PeerInfo`] into request
//! extensions, and can be cut at shutdown once the grace period is over.
//!
//! The cut is needed because hyper's graceful shutdown waits for every
//! in-flight stream to end, and a follow-mode `GetFlows` never ends by
//! itself. After the cut, reads and writes fail, hyper drops the
//! connection, and with it the service's stream.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// The unix socket.
    Unix,
    /// The TCP listener (plaintext or TLS).
    Tcp,
}

/// Credentials of a unix socket peer (SO_PEERCRED), for audit logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    /// The peer's user id.
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
    /// The peer's process id, when the kernel reports it.
    pub pid: Option<i32>,
}

/// Who is on the other end of a request's connection. Available to services
/// as a request extension: `request.extensions().get::<PeerInfo>()`.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The listener the connection came through.
    pub listener: ListenerKind,
    /// The TCP peer address (None on the unix socket).
    pub remote_addr: Option<SocketAddr>,
    /// The unix peer's credentials (None on TCP).
    pub unix_peer: Option<UnixPeer>,
    /// The verified client certificate chain, leaf first (mTLS only).
    pub client_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

struct ConnShared {
    cut: AtomicBool,
    waker: AtomicWaker,
}

/// The open connections of one listener.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnShared>>> {
        // The map stays consistent across a panic elsewhere: every operation
        // on it is a single insert or remove.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of open connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Wraps an accepted connection.
    pub(crate) fn track<IO>(self: &Arc<Self>, io: IO, info: PeerInfo) -> Tracked<IO> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnShared {
            cut: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.lock().insert(id, shared.clone());
        Tracked {
            io,
            shared,
            registry: self.clone(),
            id,
            info,
        }
    }

    /// Cuts every open connection: their next read or write fails.
    pub(crate) fn cut_all(&self) {
        for conn in self.lock().values() {
            conn.cut.store(true, Ordering::SeqCst);
            conn.waker.wake();
        }
    }
}

/// An accepted connection as served by tonic.
pub(crate) struct Tracked<IO> {
    io: IO,
    shared: Arc<ConnShared>,
    registry: Arc<Registry>,
    id: u64,
    info: PeerInfo,
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl<IO> Tracked<IO> {
    fn check_cut(&self) -> io::Result<()> {
        if self.shared.cut.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed: server shutting down",
            ))
        } else {
            Ok(())
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Register before checking, so a cut between the two still wakes us.
        // hyper always keeps a read pending on an HTTP/2 connection, so this
        // is where an idle connection learns of the cut.
        self.shared.waker.register(cx.waker());
        self.check_cut()?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_cut()?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> tonic::transport::server::Connected for Tracked<IO> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}
