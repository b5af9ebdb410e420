//! A plain gRPC channel to a Hubble-compatible server, the way the `hubble`
//! CLI takes `--server`: `unix:///path/to/hubble.sock`, `http://host:port`
//! or a bare `host:port`. TLS is out of scope here (tested elsewhere).

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures to connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server string is not `unix:///path`, `http://host:port` or `host:port`.
    #[error("server {server:?}: {reason}")]
    BadServer { server: String, reason: String },
    /// The connection (or the HTTP/2 set-up) failed.
    #[error("connect to {server}: {source}")]
    Transport {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
}

enum Target {
    Unix(PathBuf),
    Http(String),
}

fn parse(server: &str) -> Result<Target, ConnectError> {
    let bad = |reason: &str| ConnectError::BadServer {
        server: server.to_string(),
        reason: reason.to_string(),
    };
    if let Some(path) = server.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("a unix socket needs an absolute path: unix:///path"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if server.starts_with("http://") {
        return Ok(Target::Http(server.to_string()));
    }
    if server.contains("://") {
        return Err(bad(
            "only unix:// and http:// (plain) are supported by this client",
        ));
    }
    if server.is_empty() {
        return Err(bad("empty"));
    }
    Ok(Target::Http(format!("http://{server}")))
}

/// Connects (eagerly: a missing socket or a closed port is an error here)
/// to `server`.
pub async fn connect(server: &str) -> Result<Channel, ConnectError> {
    let transport = |source| ConnectError::Transport {
        server: server.to_string(),
        source,
    };
    match parse(server)? {
        Target::Http(uri) => Endpoint::from_shared(uri)
            .map_err(transport)?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(transport),
        Target::Unix(path) => {
            // The URI only fills the :authority of requests; the connector
            // ignores it and dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .map_err(transport)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn server_strings_are_parsed_like_the_hubble_cli() {
        assert!(
            matches!(parse("unix:///run/h.sock"), Ok(Target::Unix(p)) if p == Path::new("/run/h.sock"))
        );
        assert!(
            matches!(parse("localhost:4245"), Ok(Target::Http(u)) if u == "http://localhost:4245")
        );
        assert!(
            matches!(parse("http://[::1]:4245"), Ok(Target::Http(u)) if u == "http://[::1]:4245")
        );
        for bad in ["unix://relative.sock", "https://x:1", "ftp://x", ""] {
            assert!(
                matches!(parse(bad), Err(ConnectError::BadServer { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let server = format!("unix://{}/none.sock", dir.path().display());
        let err = connect(&server).await.expect_err("nothing listens there");
        assert!(err.to_string().contains("none.sock"), "{err}");
        assert!(matches!(err, ConnectError::Transport { .. }), "{err:?}");
    }
}
