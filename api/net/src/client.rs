//! Reaching a flow API server (for `weir observe`, `weir status` and tests):
//! parsing a hubble-style `--server` value, the TLS and unix connectors
//! behind tonic's `Channel`, the bearer-token interceptor, and turning
//! transport failures into one clear line.
//!
//! Accepted `--server` forms, as `hubble --server` accepts them:
//! `unix:///absolute/path`, `unix://relative/path`, `unix:path`,
//! `host:port`, `[::1]:port`, `tls://host:port` (forces TLS), and a bare
//! `host` or IP, which gets [`DEFAULT_PORT`] (4244: the port Weir and
//! Hubble serve on each node; Hubble Relay's 4245 is not a Weir port).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::NetError;
use crate::tls::{self, ClientMaterial};

/// The port used when a `--server` value has none.
pub const DEFAULT_PORT: u16 = 4244;
/// TCP connect plus TLS handshake must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS and token options of a client, mirroring hubble's flags.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `--tls`: use TLS (also implied by a `tls://` server).
    pub enabled: bool,
    /// `--tls-ca-cert-files`: CAs to verify the server with; when empty,
    /// the system CA bundle.
    pub ca_files: Vec<PathBuf>,
    /// `--tls-client-cert-file`: client certificate for mTLS.
    pub client_cert: Option<PathBuf>,
    /// `--tls-client-key-file`: its key.
    pub client_key: Option<PathBuf>,
    /// `--tls-server-name`: the name to verify the server certificate
    /// against, when it is not the host of the address.
    pub server_name: Option<String>,
    /// `--tls-allow-insecure`: do not verify the server certificate.
    pub allow_insecure: bool,
    /// A bearer token sent with every request.
    pub token: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("enabled", &self.enabled)
            .field("ca_files", &self.ca_files)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("server_name", &self.server_name)
            .field("allow_insecure", &self.allow_insecure)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP host (name or IP, without brackets) and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A parsed `--server` value with its TLS options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTarget {
    server: String,
    address: Address,
    tls: ClientTls,
}

impl fmt::Display for ClientTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.server)
    }
}

impl ClientTarget {
    /// Parses a `--server` value (see the module documentation for the forms).
    /// TLS over a unix socket is refused rather than silently ignored.
    pub fn parse(server: &str, mut tls: ClientTls) -> Result<ClientTarget, NetError> {
        let bad = |reason: &str| NetError::Target {
            server: server.to_owned(),
            reason: reason.to_owned(),
        };
        let s = server.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let address = if let Some(path) = s.strip_prefix("unix:") {
            // unix:///abs -> /abs, unix://rel -> rel, unix:rel -> rel.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("no socket path after unix:"));
            }
            if tls.enabled {
                return Err(bad(
                    "TLS over a unix socket is not supported; drop --tls or use a TCP address",
                ));
            }
            Address::Unix(PathBuf::from(path))
        } else {
            let rest = match s.strip_prefix("tls://") {
                Some(rest) => {
                    tls.enabled = true;
                    rest
                }
                None => s,
            };
            if let Some((scheme, _)) = rest.split_once("://") {
                return Err(bad(&format!(
                    "unknown scheme {scheme:?}: use unix://, tls:// or host:port"
                )));
            }
            let (host, port) = split_host_port(rest).map_err(|r| bad(&r))?;
            Address::Tcp { host, port }
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(bad(
                "a client certificate needs both --tls-client-cert-file and --tls-client-key-file",
            ));
        }
        if !tls.enabled && (!tls.ca_files.is_empty() || tls.client_cert.is_some()) {
            // hubble ignores TLS files without --tls; do the same but say so.
            tracing::debug!(%server, "TLS files given without --tls: not using TLS");
        }
        Ok(ClientTarget {
            server: server.to_owned(),
            address,
            tls,
        })
    }

    /// Where the server is.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.enabled && matches!(self.address, Address::Tcp { .. })
    }

    /// The TLS and token options.
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port {p:?}"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("missing ] after an IPv6 address")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => parse_port(p.strip_prefix(':').ok_or("expected :port after ]")?)?,
        };
        return Ok((host.to_owned(), port));
    }
    // A bare IP, including an unbracketed IPv6 address, has no port.
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s.to_owned(), DEFAULT_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (s, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if host.contains(['/', ':', ' ', '@', '[', ']']) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok((host.to_owned(), port))
}

/// Adds `authorization: Bearer <token>` to every request, or nothing when
/// there is no token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// An interceptor for `token` (None: adds nothing).
    pub fn new(token: Option<&str>) -> Result<Self, NetError> {
        let Some(token) = token else {
            return Ok(BearerToken(None));
        };
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(NetError::BadToken);
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| NetError::BadToken)?;
        // Keeps the secret out of HPACK's dynamic table.
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(<redacted>)"
        } else {
            "BearerToken(None)"
        })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// A channel that adds the bearer token (if any) to every call; generated
/// clients take it as they take a `Channel`.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Wraps a channel with a token interceptor.
pub fn with_token(channel: Channel, token: Option<&str>) -> Result<AuthChannel, NetError> {
    Ok(InterceptedService::new(channel, BearerToken::new(token)?))
}

/// Connects to `target` now (not lazily), so that an unreachable server,
/// a missing socket or a certificate problem is reported here as one line.
///
/// With TLS 1.3 a server that refuses the client certificate says so only
/// after the client considers the handshake done: that failure surfaces on
/// the first call; [`connection_error`] turns its status into the same kind
/// of line.
pub async fn connect(target: &ClientTarget) -> Result<AuthChannel, NetError> {
    let interceptor = BearerToken::new(target.tls.token.as_deref())?;
    let connected = match &target.address {
        Address::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
        Address::Tcp { host, port } => {
            let tls = if target.uses_tls() {
                Some(tls_setup(target, host)?)
            } else {
                None
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
                .map_err(|e| NetError::Target {
                    server: target.server.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(CONNECT_TIMEOUT);
            let (host, port) = (host.clone(), *port);
            match tls {
                None => {
                    endpoint
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let host = host.clone();
                            async move { tcp_connect(&host, port).await.map(TokioIo::new) }
                        }))
                        .await
                }
                Some((config, name)) => {
                    endpoint
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let (host, config, name) = (host.clone(), config.clone(), name.clone());
                            async move {
                                let tcp = tcp_connect(&host, port).await?;
                                let tls = tokio_rustls::TlsConnector::from(config)
                                    .connect(name, tcp)
                                    .await?;
                                Ok::<_, io::Error>(TokioIo::new(tls))
                            }
                        }))
                        .await
                }
            }
        }
    };
    let channel = connected.map_err(|e| {
        let (failure, detail) = classify(&e);
        NetError::Connect {
            target: target.server.clone(),
            failure,
            detail: detail.or_else(|| hint(target, failure)),
            source: Some(e),
        }
    })?;
    Ok(InterceptedService::new(channel, interceptor))
}

async fn tcp_connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn tls_setup(
    target: &ClientTarget,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), NetError> {
    let t = &target.tls;
    let config = tls::client_config(&ClientMaterial {
        ca_files: &t.ca_files,
        client_cert: t.client_cert.as_deref(),
        client_key: t.client_key.as_deref(),
        allow_insecure: t.allow_insecure,
    })?;
    let name = t.server_name.clone().unwrap_or_else(|| host.to_owned());
    let name = ServerName::try_from(name.clone()).map_err(|_| NetError::Target {
        server: target.server.clone(),
        reason: format!("{name:?} is not a valid TLS server name"),
    })?;
    Ok((config, name))
}

/// What kind of connection failure happened, so that a CLI can add advice
/// (for example "is the flow API enabled? `weir flows enable`").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The unix socket file does not exist.
    NoSuchSocket,
    /// Nobody listens there (or a stale socket file).
    ConnectionRefused,
    /// The socket's mode or group does not let this user in.
    PermissionDenied,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server's certificate did not verify.
    CertificateVerifyFailed,
    /// The server refused our client certificate (or the lack of one).
    ClientCertificateRejected,
    /// The TLS handshake failed otherwise (for example the server is not
    /// speaking TLS).
    TlsHandshake,
    /// The server closed the connection (for example a TLS server reached
    /// without `--tls`).
    ConnectionClosed,
    /// Anything else.
    Other,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectFailure::NoSuchSocket => "no such socket",
            ConnectFailure::ConnectionRefused => "connection refused",
            ConnectFailure::PermissionDenied => "permission denied",
            ConnectFailure::TimedOut => "timed out",
            ConnectFailure::CertificateVerifyFailed => "certificate verify failed",
            ConnectFailure::ClientCertificateRejected => {
                "the server rejected the client certificate"
            }
            ConnectFailure::TlsHandshake => "TLS handshake failed",
            ConnectFailure::ConnectionClosed => "connection closed by the server",
            ConnectFailure::Other => "connection failed",
        })
    }
}

/// When a call failed because of its connection (a TLS alert after the
/// handshake, a connection closed by the server), the same one-line error
/// [`connect`] gives; None when the status is the server's own answer
/// (UNAUTHENTICATED, NOT_FOUND, ...), whose message says it already.
pub fn connection_error(target: &ClientTarget, status: &tonic::Status) -> Option<NetError> {
    let source = StdError::source(status)?;
    let (failure, detail) = classify(source);
    Some(NetError::Connect {
        target: target.server.clone(),
        failure,
        detail: detail.or_else(|| hint(target, failure)),
        source: None,
    })
}

/// The likely cause of a connection the server closed on us: a TLS
/// mismatch (a TLS listener drops plaintext clients and the reverse).
fn hint(target: &ClientTarget, failure: ConnectFailure) -> Option<String> {
    if failure != ConnectFailure::ConnectionClosed || !matches!(target.address, Address::Tcp { .. })
    {
        return None;
    }
    Some(if target.uses_tls() {
        "is the server using TLS? (it closed the connection during the TLS handshake)".to_owned()
    } else {
        "does the server require TLS? try --tls".to_owned()
    })
}

/// Finds the most telling error in a chain.
fn classify(err: &(dyn StdError + 'static)) -> (ConnectFailure, Option<String>) {
    // Flatten the chain. io::Error::source skips the error it wraps, and
    // wrappers (the connect timeout) put io errors inside io errors, so
    // descend into every wrapped error explicitly: that is where rustls'
    // errors sit.
    let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        chain.push(e);
        let mut inner = e;
        loop {
            // A failed call's status carries an h2 error, whose I/O error
            // (with the TLS alert inside) is not its source().
            let wrapped: Option<&(dyn StdError + 'static)> =
                if let Some(io) = inner.downcast_ref::<io::Error>() {
                    io.get_ref().map(|w| w as &(dyn StdError + 'static))
                } else if let Some(h2) = inner.downcast_ref::<h2::Error>() {
                    h2.get_io().map(|w| w as &(dyn StdError + 'static))
                } else {
                    None
                };
            let Some(wrapped) = wrapped else { break };
            chain.push(wrapped);
            inner = wrapped;
        }
        current = e.source();
    }
    if let Some(r) = chain.iter().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return classify_rustls(r);
    }
    // An alert received after the handshake (TLS 1.3: the server refusing
    // our client certificate) reaches us only as text.
    if let Some(alert) = chain.iter().find_map(|e| {
        e.to_string()
            .strip_prefix("received fatal alert: ")
            .map(str::to_owned)
    }) {
        return classify_alert_name(&alert);
    }
    let ios: Vec<&io::Error> = chain
        .iter()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .collect();
    let telling = ios
        .iter()
        .rev()
        .find(|io| io.kind() != io::ErrorKind::Other)
        .or(ios.first());
    match telling {
        Some(io) => {
            let failure = match io.kind() {
                io::ErrorKind::NotFound => ConnectFailure::NoSuchSocket,
                io::ErrorKind::ConnectionRefused => ConnectFailure::ConnectionRefused,
                io::ErrorKind::PermissionDenied => ConnectFailure::PermissionDenied,
                io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => ConnectFailure::ConnectionClosed,
                _ => return (ConnectFailure::Other, Some(io.to_string())),
            };
            (failure, None)
        }
        None => (ConnectFailure::Other, Some(chain_text(err))),
    }
}

fn classify_rustls(e: &rustls::Error) -> (ConnectFailure, Option<String>) {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => (
            ConnectFailure::CertificateVerifyFailed,
            Some("unknown issuer: the server certificate is not signed by a trusted CA (see --tls-ca-cert-files)".to_owned()),
        ),
        rustls::Error::InvalidCertificate(c) => {
            (ConnectFailure::CertificateVerifyFailed, Some(c.to_string()))
        }
        rustls::Error::AlertReceived(a) => classify_alert_name(&format!("{a:?}")),
        rustls::Error::InvalidMessage(_) => (
            ConnectFailure::TlsHandshake,
            Some(format!("{e} (is the server using TLS?)")),
        ),
        other => (ConnectFailure::TlsHandshake, Some(other.to_string())),
    }
}

fn classify_alert_name(alert: &str) -> (ConnectFailure, Option<String>) {
    const CERTIFICATE_ALERTS: &[&str] = &[
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateExpired",
        "CertificateRevoked",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "AccessDenied",
    ];
    let failure = if CERTIFICATE_ALERTS.contains(&alert) {
        ConnectFailure::ClientCertificateRejected
    } else {
        ConnectFailure::TlsHandshake
    };
    (failure, Some(format!("alert {alert}")))
}

fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        current = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientTarget, NetError> {
        ClientTarget::parse(s, ClientTls::default())
    }

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_hubble_server_forms() {
        assert_eq!(
            parse("unix:///var/run/weir/hubble.sock").unwrap().address(),
            &Address::Unix("/var/run/weir/hubble.sock".into())
        );
        assert_eq!(
            parse("unix://rel/x.sock").unwrap().address(),
            &Address::Unix("rel/x.sock".into())
        );
        assert_eq!(
            parse("unix:x.sock").unwrap().address(),
            &Address::Unix("x.sock".into())
        );
        assert_eq!(
            parse("localhost:4245").unwrap().address(),
            &tcp("localhost", 4245)
        );
        assert_eq!(
            parse("node1.weir.local").unwrap().address(),
            &tcp("node1.weir.local", DEFAULT_PORT)
        );
        assert_eq!(parse("[::1]:4244").unwrap().address(), &tcp("::1", 4244));
        assert_eq!(parse("[::1]").unwrap().address(), &tcp("::1", DEFAULT_PORT));
        assert_eq!(parse("::1").unwrap().address(), &tcp("::1", DEFAULT_PORT));
        assert_eq!(
            parse("10.0.0.1:80").unwrap().address(),
            &tcp("10.0.0.1", 80)
        );
        let t = parse("tls://10.0.0.1:4244").unwrap();
        assert!(t.uses_tls());
        assert_eq!(t.address(), &tcp("10.0.0.1", 4244));
        assert!(!parse("10.0.0.1:4244").unwrap().uses_tls());
        assert_eq!(parse("tls://x").unwrap().to_string(), "tls://x");
    }

    #[test]
    fn rejects_bad_server_values() {
        for bad in [
            "",
            "unix://",
            "http://x:1",
            "x:notaport",
            "x:0",
            "x:70000",
            "[::1",
            "[::1]x",
            "[nope]:1",
            ":4244",
            "a/b:1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let tls = ClientTls {
            enabled: true,
            ..ClientTls::default()
        };
        let err = ClientTarget::parse("unix:///x", tls).unwrap_err();
        assert!(err.to_string().contains("unix socket"), "{err}");
        let half = ClientTls {
            enabled: true,
            client_cert: Some("c.pem".into()),
            ..ClientTls::default()
        };
        assert!(ClientTarget::parse("x:1", half).is_err());
    }

    #[test]
    fn token_interceptor_adds_header_and_redacts() {
        let mut t = BearerToken::new(Some("abc")).unwrap();
        let req = t.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer abc"
        );
        assert!(!format!("{t:?}").contains("abc"));
        let mut none = BearerToken::new(None).unwrap();
        assert!(
            none.call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
        assert!(BearerToken::new(Some("a b")).is_err());
        let tls = ClientTls {
            token: Some("secret".into()),
            ..ClientTls::default()
        };
        assert!(!format!("{tls:?}").contains("secret"));
    }
}
