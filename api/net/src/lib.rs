//! How Weir's Hubble-compatible flow API is served and reached; not what it
//! serves (the gRPC services live in `weir-api`).
//!
//! Server side, [`serve`] runs one set of tonic routes on:
//! - a unix socket ([`UnixSpec`]): parent directory created, stale socket
//!   replaced, a live one refused, mode (default 0600) and group applied
//!   before the socket accepts anyone, file removed at shutdown. File
//!   permissions are its access control: no bearer token is asked for here;
//! - a TCP listener ([`TcpSpec`]) handed in already bound: plaintext h2c
//!   ([`TcpSecurity::Insecure`]) or TLS ([`TcpSecurity::Tls`], rustls with
//!   `ring`, ALPN h2), with mTLS when a client CA is given; certificates,
//!   key, CA and token file reload when their files change; optional bearer
//!   tokens required on every request.
//!
//! Refused clients are reported through [`Hooks`] with a stable
//! [`Refusal`] label. [`RunningServer::shutdown`] stops accepting, gives
//! in-flight streams a short grace and then cuts them, so the API can be
//! enabled and disabled at runtime.
//!
//! Client side, [`ClientTarget::parse`] understands hubble's `--server`
//! forms and [`connect`] returns an [`AuthChannel`] (a channel that adds the
//! bearer token, if any), with one-line errors ([`NetError::Connect`]).

mod client;
mod conn;
mod error;
mod hooks;
mod reload;
mod server;
mod tls;
mod tokens;
mod unix;

pub use client::{
    Address, AuthChannel, BearerToken, CONNECT_TIMEOUT, ClientTarget, ClientTls, ConnectFailure,
    DEFAULT_PORT, connect, connection_error, with_token,
};
pub use conn::{ListenerKind, PeerInfo, UnixPeer};
pub use error::NetError;
pub use hooks::{Hooks, Refusal, ReloadKind};
pub use reload::ReloadError;
pub use server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, RunningServer, ServeSpec, ServerStats,
    TcpSecurity, TcpSpec, serve,
};
pub use tls::{TlsError, TlsFiles};
pub use tokens::{TokenError, Tokens};
pub use unix::{UnixError, UnixSpec};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_cross_threads() {
        // The agent keeps the server in its state across awaits and threads.
        send_sync::<super::RunningServer>();
        send_sync::<super::ClientTarget>();
        send_sync::<super::AuthChannel>();
        send_sync::<super::Hooks>();
        send_sync::<super::NetError>();
    }
}
