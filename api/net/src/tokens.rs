//! Bearer tokens for the TCP listener: the token file format, the
//! constant-time check, and the tower layer that refuses every gRPC request
//! (all services, all methods) without a valid `authorization: Bearer`
//! header. The unix socket does not use this layer: its file mode and group
//! are its access control.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use ring::digest::{SHA256, digest};
use tonic::body::Body;

use crate::hooks::{Hooks, Refusal};

/// Reading or parsing a token file failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A line holds something that cannot be sent as a bearer token.
    #[error("token file {}: line {line}: a token must be printable ASCII without spaces", path.display())]
    BadToken {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The file holds no token: with tokens required nobody could connect,
    /// which is more likely a mistake than the intent.
    #[error("token file {} holds no token (one per line; # starts a comment)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A set of accepted bearer tokens. Only SHA-256 digests are kept, so a
/// comparison takes the same time whatever the length or content of the
/// presented token, and the secrets themselves do not stay in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    /// Reads a token file: one token per line, surrounding whitespace
    /// ignored, blank lines and lines starting with `#` skipped.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text, path)
    }

    /// Parses the content of a token file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokenError> {
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokenError::BadToken {
                    path: path.to_owned(),
                    line: i + 1,
                });
            }
            digests.push(token_digest(token));
        }
        if digests.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { digests })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Always false for a set built by [`Tokens::load`] or [`Tokens::parse`].
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is accepted. Every stored digest is compared in full,
    /// without an early exit, so timing tells nothing about which or how much
    /// matched.
    pub fn contains(&self, token: &str) -> bool {
        let presented = token_digest(token);
        let mut found = 0u8;
        for stored in &self.digests {
            let mut diff = 0u8;
            for (a, b) in stored.iter().zip(presented.iter()) {
                diff |= a ^ b;
            }
            found |= u8::from(diff == 0);
        }
        found == 1
    }

    /// Checks a request's headers.
    pub(crate) fn check(&self, headers: &http::HeaderMap) -> Result<(), Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Refusal::MissingToken);
        };
        let value = value.to_str().map_err(|_| Refusal::InvalidToken)?;
        // The scheme name is case-insensitive (RFC 9110 section 11.1).
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Refusal::InvalidToken),
        };
        if self.contains(token) {
            Ok(())
        } else {
            Err(Refusal::InvalidToken)
        }
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.digests.len())
            .finish()
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let d = digest(&SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The token set in use, swapped whole on reload.
#[derive(Clone, Debug)]
pub(crate) struct TokenStore(Arc<RwLock<Arc<Tokens>>>);

impl TokenStore {
    pub(crate) fn new(tokens: Tokens) -> Self {
        TokenStore(Arc::new(RwLock::new(Arc::new(tokens))))
    }

    pub(crate) fn get(&self) -> Arc<Tokens> {
        // A poisoned lock only means a writer panicked between two whole
        // values; the value inside is still a complete token set.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, tokens: Tokens) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
    }
}

/// Tower layer requiring a bearer token on every request; with no token
/// store (the unix socket, or TCP without a token file) it lets everything
/// through. One layer type for both keeps a single server type.
#[derive(Clone, Debug)]
pub(crate) struct BearerAuthLayer {
    tokens: Option<TokenStore>,
    hooks: Hooks,
}

impl BearerAuthLayer {
    pub(crate) fn new(tokens: Option<TokenStore>, hooks: Hooks) -> Self {
        BearerAuthLayer { tokens, hooks }
    }
}

impl<S> tower::Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            tokens: self.tokens.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

/// The service made by [`BearerAuthLayer`].
#[derive(Clone, Debug)]
pub(crate) struct BearerAuth<S> {
    inner: S,
    tokens: Option<TokenStore>,
    hooks: Hooks,
}

impl<S, B> tower::Service<http::Request<B>> for BearerAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let verdict = match &self.tokens {
            Some(tokens) => tokens.get().check(req.headers()),
            None => Ok(()),
        };
        match verdict {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refusal) => {
                self.hooks.refused(refusal);
                let message = match refusal {
                    Refusal::MissingToken => "missing bearer token",
                    _ => "invalid bearer token",
                };
                tracing::debug!(path = %req.uri().path(), reason = refusal.as_str(), "request refused");
                Either::Left(ready(Ok(
                    tonic::Status::unauthenticated(message).into_http()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("tokens")
    }

    #[test]
    fn parses_comments_blanks_and_whitespace() {
        let t = Tokens::parse("# ops\n\n  alpha  \nbeta\n   # indented comment\n", p()).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.contains("alpha"));
        assert!(t.contains("beta"));
        assert!(!t.contains("gamma"));
        assert!(!t.contains("alph"));
        assert!(!t.contains(""));
    }

    #[test]
    fn rejects_empty_and_bad_files() {
        assert!(matches!(
            Tokens::parse("# nothing\n\n", p()),
            Err(TokenError::Empty { .. })
        ));
        let err = Tokens::parse("ok\nnot ok\n", p()).unwrap_err();
        assert!(matches!(err, TokenError::BadToken { line: 2, .. }), "{err}");
        assert!(Tokens::parse("caf\u{e9}\n", p()).is_err());
    }

    #[test]
    fn checks_headers() {
        let t = Tokens::parse("s3cret\n", p()).unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(t.check(&h), Err(Refusal::MissingToken));
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(t.check(&h), Ok(()));
        h.insert("authorization", "bearer s3cret".parse().unwrap());
        assert_eq!(t.check(&h), Ok(()));
        h.insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(t.check(&h), Err(Refusal::InvalidToken));
        h.insert("authorization", "Basic s3cret".parse().unwrap());
        assert_eq!(t.check(&h), Err(Refusal::InvalidToken));
        h.insert("authorization", "s3cret".parse().unwrap());
        assert_eq!(t.check(&h), Err(Refusal::InvalidToken));
    }
}
