//! The crate's error type, returned by [`crate::serve`], [`crate::connect`]
//! and [`crate::ClientTarget::parse`]. Each module's own error is wrapped
//! whole, so the message names the file or socket at fault.

use crate::client::ConnectFailure;
use crate::reload::ReloadError;
use crate::tls::TlsError;
use crate::tokens::TokenError;
use crate::unix::UnixError;

/// Serving or reaching the flow API failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `serve` was called outside a tokio runtime.
    #[error("the flow API server must be started inside a tokio runtime")]
    NoRuntime,
    /// `serve` was given neither a unix socket nor a TCP listener.
    #[error("the flow API server needs a unix socket or a TCP listener")]
    NoListener,
    /// The unix socket could not be set up.
    #[error(transparent)]
    Unix(#[from] UnixError),
    /// TLS material (server or client side) could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token file could not be loaded.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// Certificate or token files could not be watched for reloads.
    #[error(transparent)]
    Watch(#[from] ReloadError),
    /// The given TCP listener could not be used.
    #[error("TCP listener: {what}: {source}")]
    TcpListener {
        /// The step that failed.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A `--server` value could not be understood.
    #[error("invalid server address {server:?}: {reason}")]
    Target {
        /// The value given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bearer token cannot be sent as an HTTP header value.
    #[error("the bearer token must be printable ASCII without spaces")]
    BadToken,
    /// Connecting to the server failed.
    #[error("cannot connect to {target}: {failure}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Connect {
        /// The target as given (`unix:///path`, `host:port`, `tls://host:port`).
        target: String,
        /// What kind of failure, for callers that add advice.
        failure: ConnectFailure,
        /// The underlying reason, when it adds something.
        detail: Option<String>,
        /// The transport's error.
        #[source]
        source: Option<tonic::transport::Error>,
    },
}
