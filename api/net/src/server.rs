//! Serving one set of gRPC routes on the flow API's listeners: an optional
//! unix socket and an optional TCP listener (plaintext h2c, TLS, or mTLS),
//! with bearer tokens on TCP, certificate and token reload, refusal hooks,
//! and a shutdown that ends in-flight streams after a short grace.
//!
//! Accepting and handshaking happen here, in our own loops; tonic only sees
//! finished connections. That keeps a slow TLS handshake from holding up
//! the accept loop, lets us classify and count refusals, and lets us cut
//! connections at shutdown (see `conn`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::conn::{ListenerKind, PeerInfo, Registry, Tracked, UnixPeer};
use crate::error::NetError;
use crate::hooks::{Hooks, Refusal, ReloadKind};
use crate::reload::{FileWatch, watch_files};
use crate::tls::{self, TlsFiles};
use crate::tokens::{BearerAuthLayer, TokenStore, Tokens};
use crate::unix::{self, SocketFile, UnixSpec};

/// How long a TCP client may take to finish its TLS handshake (or, on the
/// plaintext listener, to send its first byte).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish at shutdown before their
/// connections are cut.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Handshakes in progress at once; beyond this a new connection is closed at
/// once (and counted), so a flood of idle connections costs little.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Accepted connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;
/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// After cutting connections, how long to wait for the server tasks to end
/// before aborting them.
const CUT_WAIT: Duration = Duration::from_secs(1);
/// HTTP/2 keepalive, so that clients that vanished (a follow-mode stream to
/// a laptop that went to sleep) do not hold a connection forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP listener's transport security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpSecurity {
    /// Plaintext HTTP/2 (h2c). The agent's configuration allows it only with
    /// an explicit `insecure: true`.
    Insecure,
    /// TLS with these files; with `client_ca`, mTLS.
    Tls(TlsFiles),
}

/// The TCP side of the flow API.
#[derive(Debug)]
pub struct TcpSpec {
    /// An already bound (and listening) socket; the agent may have bound it
    /// in another network namespace.
    pub listener: std::net::TcpListener,
    /// Plaintext or TLS.
    pub security: TcpSecurity,
    /// A token file: when set, every request on this listener needs
    /// `authorization: Bearer <token>` with one of its tokens. (The unix
    /// socket never asks for one.)
    pub tokens: Option<PathBuf>,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl TcpSpec {
    /// A spec without tokens and with the default handshake timeout.
    pub fn new(listener: std::net::TcpListener, security: TcpSecurity) -> Self {
        TcpSpec {
            listener,
            security,
            tokens: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Everything [`serve`] listens on.
#[derive(Debug)]
pub struct ServeSpec {
    /// The unix socket (no tokens: file permissions are its access control).
    pub unix: Option<UnixSpec>,
    /// The TCP listener.
    pub tcp: Option<TcpSpec>,
    /// See [`DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
}

impl Default for ServeSpec {
    fn default() -> Self {
        ServeSpec {
            unix: None,
            tcp: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Open connections on the unix socket.
    pub unix_connections: usize,
    /// Open (handshaken) connections on the TCP listener.
    pub tcp_connections: usize,
    /// Successful TLS reloads.
    pub tls_reloads: u64,
    /// TLS reloads rejected (previous material kept).
    pub tls_reload_failures: u64,
    /// Successful token file reloads.
    pub token_reloads: u64,
    /// Token file reloads rejected (previous tokens kept).
    pub token_reload_failures: u64,
}

#[derive(Default)]
struct Shared {
    unix_conns: Arc<Registry>,
    tcp_conns: Arc<Registry>,
    tls_reloads: AtomicU64,
    tls_reload_failures: AtomicU64,
    token_reloads: AtomicU64,
    token_reload_failures: AtomicU64,
}

impl Shared {
    fn count_reload(&self, kind: ReloadKind, ok: bool) {
        let counter = match (kind, ok) {
            (ReloadKind::Tls, true) => &self.tls_reloads,
            (ReloadKind::Tls, false) => &self.tls_reload_failures,
            (ReloadKind::Tokens, true) => &self.token_reloads,
            (ReloadKind::Tokens, false) => &self.token_reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server TLS configuration in use, swapped whole on reload; each new
/// connection takes the current one.
#[derive(Clone)]
struct TlsStore(Arc<RwLock<Arc<ServerConfig>>>);

impl TlsStore {
    fn get(&self) -> Arc<ServerConfig> {
        // Poisoning cannot leave a half-written value: writes swap an Arc.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// A running flow API server. Dropping it without [`RunningServer::shutdown`]
/// stops it abruptly (connections cut at once) and removes the socket file.
pub struct RunningServer {
    inner: Option<Inner>,
    unix_path: Option<PathBuf>,
    tcp_addr: Option<SocketAddr>,
    grace: Duration,
    shared: Arc<Shared>,
}

struct Inner {
    stop: watch::Sender<bool>,
    acceptors: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
    socket_file: Option<SocketFile>,
    _watches: Vec<FileWatch>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("unix_path", &self.unix_path)
            .field("tcp_addr", &self.tcp_addr)
            .field("running", &self.inner.is_some())
            .finish()
    }
}

impl RunningServer {
    /// The unix socket's path, if serving on one.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// The TCP listener's local address, if serving on one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            unix_connections: s.unix_conns.len(),
            tcp_connections: s.tcp_conns.len(),
            tls_reloads: s.tls_reloads.load(Ordering::Relaxed),
            tls_reload_failures: s.tls_reload_failures.load(Ordering::Relaxed),
            token_reloads: s.token_reloads.load(Ordering::Relaxed),
            token_reload_failures: s.token_reload_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting (the TCP listener is closed and the socket file
    /// removed at once), lets in-flight requests run for the grace period,
    /// then cuts what is left. Returns when everything has stopped.
    pub async fn shutdown(mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let _ = inner.stop.send(true);
        for acceptor in inner.acceptors.drain(..) {
            let abort = acceptor.abort_handle();
            if tokio::time::timeout(CUT_WAIT, acceptor).await.is_err() {
                abort.abort();
            }
        }
        if let Some(file) = &inner.socket_file {
            file.remove();
        }

        let aborts: Vec<AbortHandle> = inner.servers.iter().map(|s| s.abort_handle()).collect();
        let mut servers = pin!(futures::future::join_all(inner.servers.drain(..)));
        if tokio::time::timeout(self.grace, &mut servers)
            .await
            .is_err()
        {
            let open = self.shared.unix_conns.len() + self.shared.tcp_conns.len();
            tracing::info!(
                open,
                grace = ?self.grace,
                "flow API: cutting connections still open after the grace period"
            );
            self.shared.unix_conns.cut_all();
            self.shared.tcp_conns.cut_all();
            if tokio::time::timeout(CUT_WAIT, &mut servers).await.is_err() {
                tracing::warn!("flow API: server tasks did not stop after the cut; aborting them");
                aborts.iter().for_each(AbortHandle::abort);
            }
        }
        tracing::info!("flow API server stopped");
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _ = inner.stop.send(true);
            self.shared.unix_conns.cut_all();
            self.shared.tcp_conns.cut_all();
            inner
                .acceptors
                .iter()
                .chain(inner.servers.iter())
                .for_each(JoinHandle::abort);
            if let Some(file) = &inner.socket_file {
                file.remove();
            }
        }
    }
}

/// Serves `routes` on the listeners of `spec`. Must be called inside a tokio
/// runtime; returns once every listener is accepting.
///
/// The same routes are served on both listeners. On TCP, when a token file
/// is given, every request of every service needs a valid bearer token; the
/// unix socket never asks for one (its mode and group are its access
/// control). Certificate, key, client CA and token files are watched and
/// reloaded when they change; a reload that fails keeps the previous
/// material, logs an error and is counted.
pub fn serve(routes: Routes, spec: ServeSpec, hooks: Hooks) -> Result<RunningServer, NetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetError::NoRuntime);
    }
    if spec.unix.is_none() && spec.tcp.is_none() {
        return Err(NetError::NoListener);
    }
    let shared = Arc::new(Shared::default());
    let mut watches = Vec::new();

    // Everything that can fail comes before the socket file is created, so
    // a failed start leaves nothing behind.
    let tcp = match spec.tcp {
        Some(tcp) => Some(prepare_tcp(tcp, &hooks, &shared, &mut watches)?),
        None => None,
    };
    let unix = match &spec.unix {
        Some(u) => {
            let bound = unix::bind(u)?;
            let file = bound.file_id();
            bound
                .listener
                .set_nonblocking(true)
                .and_then(|()| UnixListener::from_std(bound.listener))
                .map(|listener| Some((listener, file.clone())))
                .map_err(|source| {
                    file.remove();
                    NetError::Unix(unix::UnixError::Io {
                        path: file.path.clone(),
                        what: "cannot register the socket with tokio",
                        source,
                    })
                })?
        }
        None => None,
    };

    let (stop, _) = watch::channel(false);
    let mut acceptors = Vec::new();
    let mut servers = Vec::new();
    let mut unix_path = None;
    let mut socket_file = None;
    let mut tcp_addr = None;

    if let Some((listener, file)) = unix {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        acceptors.push(tokio::spawn(accept_unix(
            listener,
            shared.unix_conns.clone(),
            tx,
            stop.subscribe(),
        )));
        servers.push(spawn_server(
            routes.clone(),
            None,
            hooks.clone(),
            rx,
            stop.subscribe(),
            "unix",
        ));
        tracing::info!(path = %file.path.display(), "flow API listening on a unix socket");
        unix_path = Some(file.path.clone());
        socket_file = Some(file);
    }
    if let Some(tcp) = tcp {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tcp_addr = Some(tcp.addr);
        tracing::info!(
            addr = %tcp.addr,
            tls = tcp.tls.is_some(),
            tokens = tcp.tokens.is_some(),
            "flow API listening on TCP"
        );
        let ctx = Arc::new(TcpCtx {
            tls: tcp.tls,
            registry: shared.tcp_conns.clone(),
            tx,
            hooks: hooks.clone(),
            handshake_timeout: tcp.handshake_timeout,
            permits: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        });
        acceptors.push(tokio::spawn(accept_tcp(
            tcp.listener,
            ctx,
            stop.subscribe(),
        )));
        servers.push(spawn_server(
            routes,
            tcp.tokens,
            hooks,
            rx,
            stop.subscribe(),
            "tcp",
        ));
    }

    Ok(RunningServer {
        inner: Some(Inner {
            stop,
            acceptors,
            servers,
            socket_file,
            _watches: watches,
        }),
        unix_path,
        tcp_addr,
        grace: spec.shutdown_grace,
        shared,
    })
}

struct PreparedTcp {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<TlsStore>,
    tokens: Option<TokenStore>,
    handshake_timeout: Duration,
}

fn prepare_tcp(
    tcp: TcpSpec,
    hooks: &Hooks,
    shared: &Arc<Shared>,
    watches: &mut Vec<FileWatch>,
) -> Result<PreparedTcp, NetError> {
    let tls = match &tcp.security {
        TcpSecurity::Insecure => None,
        TcpSecurity::Tls(files) => {
            let store = TlsStore(Arc::new(RwLock::new(tls::server_config(files)?)));
            let (files2, store2, hooks2, shared2) =
                (files.clone(), store.clone(), hooks.clone(), shared.clone());
            watches.push(watch_files(&files.paths(), move || {
                let ok = match tls::server_config(&files2) {
                    Ok(config) => {
                        store2.set(config);
                        tracing::info!(cert = %files2.cert.display(), "flow API: TLS material reloaded");
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "flow API: TLS reload failed; keeping the previous certificates");
                        false
                    }
                };
                shared2.count_reload(ReloadKind::Tls, ok);
                hooks2.reloaded(ReloadKind::Tls, ok);
            })?);
            Some(store)
        }
    };
    let tokens = match &tcp.tokens {
        Some(path) => {
            let store = TokenStore::new(Tokens::load(path)?);
            let (path2, store2, hooks2, shared2) =
                (path.clone(), store.clone(), hooks.clone(), shared.clone());
            watches.push(watch_files(std::slice::from_ref(path), move || {
                let ok = match Tokens::load(&path2) {
                    Ok(tokens) => {
                        tracing::info!(path = %path2.display(), count = tokens.len(), "flow API: tokens reloaded");
                        store2.set(tokens);
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "flow API: token reload failed; keeping the previous tokens");
                        false
                    }
                };
                shared2.count_reload(ReloadKind::Tokens, ok);
                hooks2.reloaded(ReloadKind::Tokens, ok);
            })?);
            if tls.is_none() {
                tracing::warn!(
                    "flow API: bearer tokens on a plaintext TCP listener travel in clear text"
                );
            }
            Some(store)
        }
        None => None,
    };
    tcp.listener
        .set_nonblocking(true)
        .map_err(|source| NetError::TcpListener {
            what: "set_nonblocking",
            source,
        })?;
    let listener = tokio::net::TcpListener::from_std(tcp.listener).map_err(|source| {
        NetError::TcpListener {
            what: "cannot register with tokio",
            source,
        }
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| NetError::TcpListener {
            what: "local_addr",
            source,
        })?;
    Ok(PreparedTcp {
        listener,
        addr,
        tls,
        tokens,
        handshake_timeout: tcp.handshake_timeout,
    })
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn spawn_server<IO>(
    routes: Routes,
    tokens: Option<TokenStore>,
    hooks: Hooks,
    rx: mpsc::Receiver<Tracked<IO>>,
    mut stop: watch::Receiver<bool>,
    listener: &'static str,
) -> JoinHandle<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let incoming = ReceiverStream::new(rx).map(Ok::<_, io::Error>);
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(BearerAuthLayer::new(tokens, hooks));
    let router = builder.add_routes(routes);
    tokio::spawn(async move {
        let signal = async move { stopped(&mut stop).await };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(listener, error = %e, "flow API server failed");
        }
    })
}

async fn accept_unix(
    listener: UnixListener,
    registry: Arc<Registry>,
    tx: mpsc::Sender<Tracked<tokio::net::UnixStream>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let unix_peer = stream.peer_cred().ok().map(|c| UnixPeer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                });
                let info = PeerInfo {
                    listener: ListenerKind::Unix,
                    remote_addr: None,
                    unix_peer,
                    client_certificates: None,
                };
                if tx.send(registry.track(stream, info)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow API: unix accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

struct TcpCtx {
    tls: Option<TlsStore>,
    registry: Arc<Registry>,
    tx: mpsc::Sender<Tracked<TcpConn>>,
    hooks: Hooks,
    handshake_timeout: Duration,
    permits: Arc<Semaphore>,
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    ctx: Arc<TcpCtx>,
    mut stop: watch::Receiver<bool>,
) {
    // Dropping this set (when the loop ends) aborts handshakes in progress.
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        while handshakes.try_join_next().is_some() {}
        match accepted {
            Ok((stream, remote)) => {
                let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
                    refuse(&ctx.hooks, Refusal::HandshakeLimit, remote, None);
                    continue;
                };
                let ctx = ctx.clone();
                handshakes.spawn(async move {
                    let _permit = permit;
                    ctx.handshake(stream, remote).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow API: TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn refuse(hooks: &Hooks, refusal: Refusal, remote: SocketAddr, error: Option<&io::Error>) {
    tracing::debug!(
        %remote,
        reason = refusal.as_str(),
        error = error.map(tracing::field::display),
        "flow API: connection refused"
    );
    hooks.refused(refusal);
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

impl TcpCtx {
    async fn handshake(&self, stream: TcpStream, remote: SocketAddr) {
        // Without nodelay, small gRPC frames wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let established = tokio::time::timeout(self.handshake_timeout, self.establish(stream))
            .await
            .unwrap_or(Err(Some((Refusal::HandshakeTimeout, None))));
        match established {
            Ok((conn, client_certificates)) => {
                let info = PeerInfo {
                    listener: ListenerKind::Tcp,
                    remote_addr: Some(remote),
                    unix_peer: None,
                    client_certificates,
                };
                let _ = self.tx.send(self.registry.track(conn, info)).await;
            }
            Err(Some((refusal, error))) => refuse(&self.hooks, refusal, remote, error.as_ref()),
            // Closed before saying anything (a TCP health probe, a port scan).
            Err(None) => {
                tracing::trace!(%remote, "flow API: connection closed before the handshake")
            }
        }
    }

    async fn establish(&self, stream: TcpStream) -> Result<Established, NotEstablished> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        let speaks_tls = first[0] == TLS_HANDSHAKE_RECORD;
        let Some(tls) = &self.tls else {
            if speaks_tls {
                return Err(Some((Refusal::TlsOnPlaintext, None)));
            }
            return Ok((TcpConn::Plain(stream), None));
        };
        if !speaks_tls {
            return Err(Some((Refusal::PlaintextOnTls, None)));
        }
        match tokio_rustls::TlsAcceptor::from(tls.get())
            .accept(stream)
            .await
        {
            Ok(stream) => {
                let certs = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                Ok((TcpConn::Tls(Box::new(stream)), certs))
            }
            Err(e) => Err(Some((classify_handshake_error(&e), Some(e)))),
        }
    }
}

/// A handshaken connection and the client's verified certificate chain.
type Established = (
    TcpConn,
    Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
);
/// Why not: a refusal (with the TLS error, if any), or None when the client
/// left without a word.
type NotEstablished = Option<(Refusal, Option<io::Error>)>;

/// Sorts a failed server-side handshake into a refusal.
fn classify_handshake_error(e: &io::Error) -> Refusal {
    use rustls::AlertDescription as A;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            Refusal::ClientCertificate
        }
        Some(rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA,
        )) => Refusal::ServerCertificateRejected,
        _ => Refusal::TlsHandshake,
    }
}

/// A handshaken TCP connection, plaintext or TLS.
pub(crate) enum TcpConn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for TcpConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            TcpConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            TcpConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpConn::Plain(s) => Pin::new(s).poll_flush(cx),
            TcpConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TcpConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpConn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TcpConn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpConn::Plain(s) => s.is_write_vectored(),
            TcpConn::Tls(s) => s.is_write_vectored(),
        }
    }
}
