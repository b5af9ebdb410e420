//! What the server tells its owner about: refused clients and reloads of
//! certificates and tokens. This module owns the vocabulary (stable metric
//! labels) and the callbacks; it does no counting of its own, so the agent
//! decides which metrics exist.

use std::fmt;
use std::sync::Arc;

/// Why a client was refused. [`Refusal::as_str`] is a stable, snake_case
/// metric label: renaming one breaks dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The TLS handshake failed for a reason not listed below (no common
    /// protocol version or cipher suite, no `h2` in ALPN, a malformed
    /// message, the client hung up mid-handshake).
    TlsHandshake,
    /// mTLS: the client presented no certificate, or one that does not verify
    /// against the configured client CA (unknown issuer, expired, wrong usage).
    ClientCertificate,
    /// The client rejected our server certificate (it sent a certificate alert:
    /// it does not trust our CA, or our certificate expired or names another host).
    ServerCertificateRejected,
    /// The client spoke plaintext (for example h2c) to the TLS listener.
    PlaintextOnTls,
    /// The client started a TLS handshake on the plaintext (insecure) listener.
    TlsOnPlaintext,
    /// The client did not finish its handshake within the handshake timeout.
    HandshakeTimeout,
    /// Too many handshakes were in progress; the connection was closed at once.
    HandshakeLimit,
    /// Tokens are required and the request carried no `authorization` header.
    MissingToken,
    /// Tokens are required and the request's token is wrong or not a bearer token.
    InvalidToken,
}

impl Refusal {
    /// Every variant, for pre-registering metric label values.
    pub const ALL: [Refusal; 9] = [
        Refusal::TlsHandshake,
        Refusal::ClientCertificate,
        Refusal::ServerCertificateRejected,
        Refusal::PlaintextOnTls,
        Refusal::TlsOnPlaintext,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeLimit,
        Refusal::MissingToken,
        Refusal::InvalidToken,
    ];

    /// The stable metric label of this refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::ClientCertificate => "client_certificate",
            Refusal::ServerCertificateRejected => "server_certificate_rejected",
            Refusal::PlaintextOnTls => "plaintext_on_tls",
            Refusal::TlsOnPlaintext => "tls_on_plaintext",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::MissingToken => "missing_token",
            Refusal::InvalidToken => "invalid_token",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was reloaded after its files changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadKind {
    /// The server certificate, its key and the client CA.
    Tls,
    /// The bearer token file.
    Tokens,
}

impl ReloadKind {
    /// The stable metric label of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Tls => "tls",
            ReloadKind::Tokens => "tokens",
        }
    }
}

/// Callbacks the server invokes. They run on the server's tasks and must be
/// cheap (increment a counter); they must not block.
#[derive(Clone)]
pub struct Hooks {
    /// A client was refused.
    pub on_refused: Arc<dyn Fn(Refusal) + Send + Sync>,
    /// A reload was attempted: `true` when the new material is in use,
    /// `false` when it was rejected and the previous material is kept.
    pub on_reload: Arc<dyn Fn(ReloadKind, bool) + Send + Sync>,
}

impl Hooks {
    /// Hooks that call `on_refused` and ignore reloads.
    pub fn on_refused(f: impl Fn(Refusal) + Send + Sync + 'static) -> Self {
        Hooks {
            on_refused: Arc::new(f),
            ..Hooks::default()
        }
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        (self.on_refused)(refusal);
    }

    pub(crate) fn reloaded(&self, kind: ReloadKind, ok: bool) {
        (self.on_reload)(kind, ok);
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_refused: Arc::new(|_| {}),
            on_reload: Arc::new(|_, _| {}),
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: HashSet<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len(), "duplicate refusal label");
        for l in labels {
            assert!(
                l.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "label {l} is not snake_case"
            );
        }
    }
}
