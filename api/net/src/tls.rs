//! TLS material: reading PEM files and building rustls server and client
//! configurations. Every configuration is built with the `ring` provider
//! passed explicitly, so nothing depends on a process-wide default provider
//! (the agent also links crates that would make that choice ambiguous).
//! This module does no I/O on sockets.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The ALPN protocol gRPC runs on. Recent gRPC clients (grpc-go) refuse a
/// server that does not negotiate it.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Where the system's CA bundle usually is; used by the client when no CA
/// file is given (hubble uses the system pool in that case too).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The server's certificate files. All three are re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: PathBuf,
    /// PEM CA bundle for mTLS: when set, every client must present a
    /// certificate that verifies against it.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file of this set, for the reload watcher.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

/// Reading or using TLS material failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{} holds no PEM private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA file holds a certificate rustls cannot use as a trust anchor.
    #[error("{} holds an unusable CA certificate: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        #[source]
        source: rustls::Error,
    },
    /// The certificate chain and key do not form a usable pair (for example
    /// the key belongs to another certificate: files replaced one at a time).
    #[error("certificate {} and key {} do not match or are unusable: {source}", cert.display(), key.display())]
    KeyPair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' complaint.
        #[source]
        source: rustls::Error,
    },
    /// The client CA set could not be turned into a client verifier.
    #[error("client CA {} is unusable: {source}", path.display())]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// rustls' complaint.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The `ring` provider refused the default protocol versions (cannot happen
    /// with a stock rustls; kept so that it would be reported, not panic).
    #[error("TLS protocol versions: {source}")]
    Protocol {
        /// rustls' complaint.
        #[source]
        source: rustls::Error,
    },
    /// A client certificate was given without its key, or the reverse.
    #[error("a client certificate needs both --tls-client-cert-file and --tls-client-key-file")]
    ClientPairIncomplete,
    /// No CA file was given and no system CA bundle was found.
    #[error(
        "no CA to verify the server with: give --tls-ca-cert-files (no system bundle found in {})",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoTrustAnchors,
}

/// The one crypto provider of this crate.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_owned(),
        })
}

/// A trust store holding every certificate of every file.
pub(crate) fn load_roots(paths: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::BadCa {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(roots)
}

/// The server configuration for one set of files: TLS 1.2 and 1.3, ALPN
/// `h2`, and with a client CA, client certificates required.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Protocol { source })?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = load_roots(std::slice::from_ref(ca))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    // with_single_cert checks that the key matches the leaf certificate, which
    // is what rejects a half-replaced pair during a reload.
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What the client trusts and presents.
pub(crate) struct ClientMaterial<'a> {
    pub ca_files: &'a [PathBuf],
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
    pub allow_insecure: bool,
}

/// The client configuration: verify the server against `ca_files` (or the
/// system bundle), present a client certificate when given, ALPN `h2`.
pub(crate) fn client_config(m: &ClientMaterial<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Protocol { source })?;
    let builder = if m.allow_insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification { provider }))
    } else {
        let roots = if m.ca_files.is_empty() {
            system_roots()?
        } else {
            load_roots(m.ca_files)?
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (m.client_cert, m.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::KeyPair {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::ClientPairIncomplete),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let bundle = SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(TlsError::NoTrustAnchors)?;
    let mut roots = RootCertStore::empty();
    // A system bundle may carry a few certificates rustls cannot parse; skip
    // those rather than refuse the whole bundle.
    let (added, skipped) = roots.add_parsable_certificates(load_certs(bundle)?);
    tracing::debug!(bundle = %bundle.display(), added, skipped, "loaded the system CA bundle");
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(roots)
}

/// `--tls-allow-insecure`: accept any server certificate. Signatures are
/// still checked so the handshake itself stays sound; only the identity of
/// the server is not.
#[derive(Debug)]
struct NoServerVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
