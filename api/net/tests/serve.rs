//! End-to-end tests of the flow API's listeners and connectors: real unix
//! sockets and real TLS over loopback, certificates made at test time, and
//! a real gRPC service (grpc.health.v1.Health).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncReadExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use weir_api_net::{
    ClientTarget, ClientTls, ConnectFailure, Hooks, ListenerKind, NetError, PeerInfo, Refusal,
    ServeSpec, TcpSecurity, TcpSpec, TlsFiles, UnixError, UnixSpec, connect, connection_error,
    serve,
};

fn tls_client(ca: &std::path::Path) -> ClientTls {
    ClientTls {
        enabled: true,
        ca_files: vec![ca.to_owned()],
        ..ClientTls::default()
    }
}

fn unix_only(spec: UnixSpec) -> ServeSpec {
    ServeSpec {
        unix: Some(spec),
        ..ServeSpec::default()
    }
}

fn tcp_only(tcp: TcpSpec) -> ServeSpec {
    ServeSpec {
        tcp: Some(tcp),
        ..ServeSpec::default()
    }
}

fn connect_failure(outcome: &Outcome) -> Option<ConnectFailure> {
    match outcome {
        Outcome::ConnectError(NetError::Connect { failure, .. }) => Some(*failure),
        _ => None,
    }
}

#[tokio::test]
async fn unix_socket_applies_mode_and_group_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    // The parent does not exist yet: serve creates it.
    let path = dir.path().join("run/weir/hubble.sock");
    let server = serve(
        health_routes(),
        unix_only(UnixSpec::new(&path)),
        Hooks::default(),
    )
    .unwrap();
    assert_eq!(server.unix_path(), Some(path.as_path()));
    assert_eq!(server.tcp_addr(), None);

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o777, 0o755, "parent mode");

    let target =
        ClientTarget::parse(&format!("unix://{}", path.display()), ClientTls::default()).unwrap();
    let channel = connect(&target).await.unwrap();
    assert_eq!(check(channel.clone()).await.unwrap(), SERVING);
    assert_eq!(server.stats().unix_connections, 1);
    drop(channel);
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.stats().unix_connections == 0
        })
        .await,
        "closed connection still counted"
    );

    server.shutdown().await;
    assert!(!path.exists(), "socket file left behind after shutdown");

    // Enabled again on the same path, now with a group and mode 0660.
    if skip_unless_root("unix group part") {
        return;
    }
    let spec = UnixSpec {
        path: path.clone(),
        mode: 0o660,
        group: Some("4242".into()),
    };
    let server = serve(health_routes(), unix_only(spec), Hooks::default()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 4242, "numeric group applied");
    assert!(matches!(
        probe(&format!("unix://{}", path.display()), ClientTls::default()).await,
        Outcome::Serving
    ));
    server.shutdown().await;

    let spec = UnixSpec {
        path: path.clone(),
        mode: 0o660,
        group: Some("root".into()),
    };
    let server = serve(health_routes(), unix_only(spec), Hooks::default()).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(&path).unwrap().gid(),
        0,
        "group by name"
    );
    server.shutdown().await;

    let spec = UnixSpec {
        path: path.clone(),
        mode: 0o600,
        group: Some("no-such-group-weir".into()),
    };
    let err = serve(health_routes(), unix_only(spec), Hooks::default()).unwrap_err();
    assert!(
        matches!(err, NetError::Unix(UnixError::UnknownGroup { .. })),
        "{err}"
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn stale_socket_replaced_live_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hubble.sock");
    // A socket file nobody listens on (a crashed agent leaves this).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let server = serve(
        health_routes(),
        unix_only(UnixSpec::new(&path)),
        Hooks::default(),
    )
    .unwrap();
    let server_str = format!("unix://{}", path.display());
    assert!(matches!(
        probe(&server_str, ClientTls::default()).await,
        Outcome::Serving
    ));

    // A second server on the same path is refused, and does not disturb the first.
    let err = serve(
        health_routes(),
        unix_only(UnixSpec::new(&path)),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, NetError::Unix(UnixError::InUse { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(matches!(
        probe(&server_str, ClientTls::default()).await,
        Outcome::Serving
    ));
    server.shutdown().await;

    // Something that is not a socket is never removed.
    std::fs::write(&path, "precious").unwrap();
    let err = serve(
        health_routes(),
        unix_only(UnixSpec::new(&path)),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, NetError::Unix(UnixError::NotASocket { .. })),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn insecure_tcp_serves_and_spots_tls_clients() {
    let counts = Counts::default();
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Insecure)),
        counts.hooks(),
    )
    .unwrap();
    let addr = server.tcp_addr().unwrap();
    assert!(matches!(
        probe(&addr.to_string(), ClientTls::default()).await,
        Outcome::Serving
    ));

    // A TLS client on the plaintext port: refused and counted.
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &Ca::new("ca").pem);
    let outcome = probe(&format!("tls://{addr}"), tls_client(&ca)).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::ConnectionClosed),
        "{outcome:?}"
    );
    let Outcome::ConnectError(e) = outcome else {
        unreachable!()
    };
    assert!(e.to_string().contains("is the server using TLS?"), "{e}");
    counts.wait_for(Refusal::TlsOnPlaintext, 1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn tls_serves_with_ca_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let counts = Counts::default();
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        counts.hooks(),
    )
    .unwrap();
    let port = server.tcp_addr().unwrap().port();

    // By IP (tls:// forces TLS), by name (--tls), and by a server name override.
    assert!(matches!(
        probe(
            &format!("tls://127.0.0.1:{port}"),
            ClientTls {
                enabled: false,
                ..tls_client(&ca_path)
            }
        )
        .await,
        Outcome::Serving
    ));
    assert!(matches!(
        probe(&format!("localhost:{port}"), tls_client(&ca_path)).await,
        Outcome::Serving
    ));
    let named = ClientTls {
        server_name: Some("node1.weir.local".into()),
        ..tls_client(&ca_path)
    };
    assert!(matches!(
        probe(&format!("127.0.0.1:{port}"), named).await,
        Outcome::Serving
    ));

    // A name the certificate does not carry.
    let other = ClientTls {
        server_name: Some("node2.weir.local".into()),
        ..tls_client(&ca_path)
    };
    let outcome = probe(&format!("127.0.0.1:{port}"), other).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::CertificateVerifyFailed),
        "{outcome:?}"
    );
    let Outcome::ConnectError(e) = outcome else {
        unreachable!()
    };
    assert!(e.to_string().contains("node2.weir.local"), "{e}");
    counts.wait_for(Refusal::ServerCertificateRejected, 1).await;

    // A plaintext client on the TLS port: the server hangs up; the client
    // learns it on its first call.
    let plain = ClientTarget::parse(&format!("127.0.0.1:{port}"), ClientTls::default()).unwrap();
    let err = match connect(&plain).await {
        Err(e) => e,
        Ok(channel) => {
            let status = check(channel)
                .await
                .expect_err("plaintext client served by TLS port");
            connection_error(&plain, &status).expect("a connection error")
        }
    };
    let NetError::Connect { failure, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*failure, ConnectFailure::ConnectionClosed, "{err}");
    assert!(err.to_string().contains("try --tls"), "{err}");
    counts.wait_for(Refusal::PlaintextOnTls, 1).await;
    assert_eq!(server.stats().tcp_connections, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn tls_wrong_ca_is_a_clear_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let other_ca = write(dir.path(), "other-ca.pem", &Ca::new("unrelated ca").pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let counts = Counts::default();
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        counts.hooks(),
    )
    .unwrap();
    let server_str = format!("tls://127.0.0.1:{}", server.tcp_addr().unwrap().port());

    let outcome = probe(&server_str, tls_client(&other_ca)).await;
    let Outcome::ConnectError(e) = outcome else {
        panic!("expected a connect error, got {outcome:?}")
    };
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot connect to {server_str}: certificate verify failed"
        )),
        "{text}"
    );
    assert!(text.contains("unknown issuer"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    counts.wait_for(Refusal::ServerCertificateRejected, 1).await;

    // --tls-allow-insecure skips verification.
    let insecure = ClientTls {
        allow_insecure: true,
        ..tls_client(&other_ca)
    };
    assert!(matches!(
        probe(&server_str, insecure).await,
        Outcome::Serving
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn expired_server_certificate_is_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.expired_server());
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        Hooks::default(),
    )
    .unwrap();
    let outcome = probe(
        &format!("tls://127.0.0.1:{}", server.tcp_addr().unwrap().port()),
        tls_client(&ca_path),
    )
    .await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::CertificateVerifyFailed),
        "{outcome:?}"
    );
    let Outcome::ConnectError(e) = outcome else {
        unreachable!()
    };
    assert!(e.to_string().contains("expired"), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let other = Ca::new("unrelated ca");
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let (good_cert, good_key) = write_leaf(dir.path(), "client", &ca.client("observer"));
    let (rogue_cert, rogue_key) = write_leaf(dir.path(), "rogue", &other.client("observer"));
    let (old_cert, old_key) = write_leaf(dir.path(), "old", &ca.expired_client("observer"));
    let counts = Counts::default();
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(write(dir.path(), "client-ca.pem", &ca.pem)),
    };
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        counts.hooks(),
    )
    .unwrap();
    let server_str = format!("tls://127.0.0.1:{}", server.tcp_addr().unwrap().port());
    let with_cert = |cert: &std::path::Path, key: &std::path::Path| ClientTls {
        client_cert: Some(cert.to_owned()),
        client_key: Some(key.to_owned()),
        ..tls_client(&ca_path)
    };

    assert!(matches!(
        probe(&server_str, with_cert(&good_cert, &good_key)).await,
        Outcome::Serving
    ));

    let cases = [
        ("no client certificate", tls_client(&ca_path)),
        (
            "certificate from another CA",
            with_cert(&rogue_cert, &rogue_key),
        ),
        ("expired certificate", with_cert(&old_cert, &old_key)),
    ];
    for (n, (what, tls)) in cases.into_iter().enumerate() {
        let target = ClientTarget::parse(&server_str, tls).unwrap();
        // With TLS 1.3 the client finishes its side of the handshake before
        // the server judges its certificate, so the refusal may surface on
        // the first call rather than at connect.
        let err = match connect(&target).await {
            Err(e) => e,
            Ok(channel) => match check(channel).await {
                Ok(s) => panic!("{what}: served (status {s})"),
                Err(status) => connection_error(&target, &status)
                    .unwrap_or_else(|| panic!("{what}: not a connection error: {status:?}")),
            },
        };
        let NetError::Connect { failure, .. } = &err else {
            panic!("{what}: {err}")
        };
        assert_eq!(
            *failure,
            ConnectFailure::ClientCertificateRejected,
            "{what}: {err}"
        );
        counts.wait_for(Refusal::ClientCertificate, n + 1).await;
    }
    assert_eq!(counts.total(), 3, "only the three bad clients were refused");

    // The client CA reloads too: trust the other CA instead.
    write(dir.path(), "client-ca.pem", &other.pem);
    let rogue_target =
        ClientTarget::parse(&server_str, with_cert(&rogue_cert, &rogue_key)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            match connect(&rogue_target).await {
                Ok(channel) => check(channel).await.is_ok(),
                Err(_) => false,
            }
        })
        .await,
        "client CA never reloaded"
    );
    assert!(!matches!(
        probe(&server_str, with_cert(&good_cert, &good_key)).await,
        Outcome::Serving
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_are_required_on_tcp_only_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hubble.sock");
    let tokens = write(dir.path(), "tokens", "# operators\nalpha\n\n");
    let counts = Counts::default();
    let server = serve(
        health_routes(),
        ServeSpec {
            unix: Some(UnixSpec::new(&sock)),
            tcp: Some(TcpSpec {
                tokens: Some(tokens.clone()),
                ..TcpSpec::new(loopback(), TcpSecurity::Insecure)
            }),
            ..ServeSpec::default()
        },
        counts.hooks(),
    )
    .unwrap();
    let addr = server.tcp_addr().unwrap().to_string();
    let token = |t: &str| ClientTls {
        token: Some(t.into()),
        ..ClientTls::default()
    };
    let unauthenticated = |o: Outcome, message: &str| match o {
        Outcome::Status(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert_eq!(s.message(), message);
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    };

    unauthenticated(
        probe(&addr, ClientTls::default()).await,
        "missing bearer token",
    );
    assert_eq!(counts.get(Refusal::MissingToken), 1);
    unauthenticated(probe(&addr, token("beta")).await, "invalid bearer token");
    assert_eq!(counts.get(Refusal::InvalidToken), 1);
    assert!(matches!(
        probe(&addr, token("alpha")).await,
        Outcome::Serving
    ));
    // The unix socket does not ask for a token.
    let unix = format!("unix://{}", sock.display());
    assert!(matches!(
        probe(&unix, ClientTls::default()).await,
        Outcome::Serving
    ));

    // Rotate: beta in, alpha out.
    write(dir.path(), "tokens", "beta\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(probe(&addr, token("beta")).await, Outcome::Serving)
        })
        .await,
        "new token never accepted"
    );
    unauthenticated(probe(&addr, token("alpha")).await, "invalid bearer token");
    assert!(server.stats().token_reloads >= 1);

    // A broken file is rejected and the previous tokens stay.
    write(dir.path(), "tokens", "# nothing left\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.stats().token_reload_failures >= 1
        })
        .await,
        "bad token file not counted"
    );
    assert!(matches!(
        probe(&addr, token("beta")).await,
        Outcome::Serving
    ));
    server.shutdown().await;
    assert!(!sock.exists());
}

#[tokio::test]
async fn certificates_reload_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("first ca");
    let ca2 = Ca::new("second ca");
    let ca1_path = write(dir.path(), "ca1.pem", &ca1.pem);
    let ca2_path = write(dir.path(), "ca2.pem", &ca2.pem);
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let (cert, key) = write_leaf(&tls_dir, "server", &ca1.server());
    let reloads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reloads.clone();
    let hooks = Hooks {
        on_reload: std::sync::Arc::new(move |kind, ok| seen.lock().unwrap().push((kind, ok))),
        ..Hooks::default()
    };
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let server = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        hooks,
    )
    .unwrap();
    let server_str = format!("tls://127.0.0.1:{}", server.tcp_addr().unwrap().port());
    let target = ClientTarget::parse(&server_str, tls_client(&ca1_path)).unwrap();
    let old_channel = connect(&target).await.unwrap();
    assert_eq!(check(old_channel.clone()).await.unwrap(), SERVING);

    // Replace the key and certificate with ones from another CA.
    write_leaf(&tls_dir, "server", &ca2.server());
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(
                probe(&server_str, tls_client(&ca2_path)).await,
                Outcome::Serving
            )
        })
        .await,
        "new certificate never served"
    );
    let outcome = probe(&server_str, tls_client(&ca1_path)).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::CertificateVerifyFailed),
        "{outcome:?}"
    );
    // The connection made before the reload keeps working.
    assert_eq!(check(old_channel).await.unwrap(), SERVING);
    assert!(server.stats().tls_reloads >= 1);
    assert!(
        reloads
            .lock()
            .unwrap()
            .contains(&(weir_api_net::ReloadKind::Tls, true))
    );

    // A broken certificate file is refused; the second CA's material stays.
    write(
        &tls_dir,
        "server.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.stats().tls_reload_failures >= 1
        })
        .await,
        "bad certificate not counted"
    );
    assert!(
        reloads
            .lock()
            .unwrap()
            .contains(&(weir_api_net::ReloadKind::Tls, false))
    );
    assert!(matches!(
        probe(&server_str, tls_client(&ca2_path)).await,
        Outcome::Serving
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn idle_handshakes_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let counts = Counts::default();
    let mut tcp = TcpSpec::new(
        loopback(),
        TcpSecurity::Tls(TlsFiles {
            cert,
            key,
            client_ca: None,
        }),
    );
    tcp.handshake_timeout = Duration::from_millis(200);
    let server = serve(health_routes(), tcp_only(tcp), counts.hooks()).unwrap();

    // Connect and say nothing: the server hangs up after the timeout.
    let start = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("server never closed the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "closed too early"
    );
    counts.wait_for(Refusal::HandshakeTimeout, 1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_cuts_streams_after_grace_and_can_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hubble.sock");
    let listener = loopback();
    let addr = listener.local_addr().unwrap();
    let spec = ServeSpec {
        unix: Some(UnixSpec::new(&sock)),
        tcp: Some(TcpSpec::new(listener, TcpSecurity::Insecure)),
        shutdown_grace: Duration::from_millis(300),
    };
    let server = serve(health_routes(), spec, Hooks::default()).unwrap();

    // Watch is a server stream that never ends by itself, like follow mode.
    let target = ClientTarget::parse(&addr.to_string(), ClientTls::default()).unwrap();
    let mut client = HealthClient::new(connect(&target).await.unwrap());
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().status, SERVING);
    let unix_target =
        ClientTarget::parse(&format!("unix://{}", sock.display()), ClientTls::default()).unwrap();
    let mut unix_client = HealthClient::new(connect(&unix_target).await.unwrap());
    let mut unix_stream = unix_client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unix_stream.message().await.unwrap().unwrap().status,
        SERVING
    );

    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown hung");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "stream not given its grace: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "shutdown too slow: {took:?}");
    let next = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("stream still open after shutdown");
    assert!(
        !matches!(next, Ok(Some(_))),
        "stream still delivering: {next:?}"
    );
    let next = tokio::time::timeout(Duration::from_secs(2), unix_stream.message())
        .await
        .expect("unix stream still open after shutdown");
    assert!(
        !matches!(next, Ok(Some(_))),
        "unix stream still delivering: {next:?}"
    );
    assert!(!sock.exists(), "socket file left behind");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "TCP port still accepting after shutdown"
    );

    // Enabled again: same path, same port.
    let spec = ServeSpec {
        unix: Some(UnixSpec::new(&sock)),
        tcp: Some(TcpSpec::new(
            std::net::TcpListener::bind(addr).unwrap(),
            TcpSecurity::Insecure,
        )),
        ..ServeSpec::default()
    };
    let server = serve(health_routes(), spec, Hooks::default()).unwrap();
    assert!(matches!(
        probe(&addr.to_string(), ClientTls::default()).await,
        Outcome::Serving
    ));
    assert!(matches!(
        probe(&format!("unix://{}", sock.display()), ClientTls::default()).await,
        Outcome::Serving
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hubble.sock");
    let server = serve(
        health_routes(),
        unix_only(UnixSpec::new(&sock)),
        Hooks::default(),
    )
    .unwrap();
    assert!(sock.exists());
    drop(server);
    assert!(!sock.exists());
}

#[tokio::test]
async fn client_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let server = format!("unix://{}", missing.display());
    let outcome = probe(&server, ClientTls::default()).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::NoSuchSocket),
        "{outcome:?}"
    );
    let Outcome::ConnectError(e) = outcome else {
        unreachable!()
    };
    assert_eq!(
        e.to_string(),
        format!("cannot connect to {server}: no such socket")
    );

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let outcome = probe(&format!("unix://{}", stale.display()), ClientTls::default()).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::ConnectionRefused),
        "{outcome:?}"
    );

    let closed = loopback().local_addr().unwrap(); // dropped: nobody listens
    let outcome = probe(&closed.to_string(), ClientTls::default()).await;
    assert_eq!(
        connect_failure(&outcome),
        Some(ConnectFailure::ConnectionRefused),
        "{outcome:?}"
    );

    let missing_ca = ClientTls {
        enabled: true,
        ca_files: vec![dir.path().join("nope.pem")],
        ..ClientTls::default()
    };
    let outcome = probe(&closed.to_string(), missing_ca).await;
    let Outcome::ConnectError(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(e.to_string().contains("nope.pem"), "{e}");
}

#[tokio::test]
async fn bad_specs_fail_early_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hubble.sock");
    let err = serve(health_routes(), ServeSpec::default(), Hooks::default()).unwrap_err();
    assert!(matches!(err, NetError::NoListener), "{err}");

    let files = TlsFiles {
        cert: dir.path().join("missing.crt"),
        key: dir.path().join("missing.key"),
        client_ca: None,
    };
    let spec = ServeSpec {
        unix: Some(UnixSpec::new(&sock)),
        tcp: Some(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        ..ServeSpec::default()
    };
    let err = serve(health_routes(), spec, Hooks::default()).unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
    assert!(!sock.exists(), "socket created although the start failed");

    // A key that does not belong to the certificate.
    let ca = Ca::new("ca");
    let (cert, _) = write_leaf(dir.path(), "a", &ca.server());
    let (_, other_key) = write_leaf(dir.path(), "b", &ca.server());
    let files = TlsFiles {
        cert,
        key: other_key,
        client_ca: None,
    };
    let err = serve(
        health_routes(),
        tcp_only(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");

    let spec = tcp_only(TcpSpec {
        tokens: Some(write(dir.path(), "tokens", "# empty\n")),
        ..TcpSpec::new(loopback(), TcpSecurity::Insecure)
    });
    let err = serve(health_routes(), spec, Hooks::default()).unwrap_err();
    assert!(err.to_string().contains("holds no token"), "{err}");

    let bad_mode = UnixSpec {
        mode: 0o4755,
        ..UnixSpec::new(&sock)
    };
    assert!(serve(health_routes(), unix_only(bad_mode), Hooks::default()).is_err());
}

#[test]
fn serve_needs_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve(
        health_routes(),
        unix_only(UnixSpec::new(dir.path().join("s.sock"))),
        Hooks::default(),
    )
    .unwrap_err();
    assert!(matches!(err, NetError::NoRuntime), "{err}");
}

/// Forwards to the health service and records who called: proves that
/// services see [`PeerInfo`] in their request extensions.
#[derive(Clone)]
struct Spy<S> {
    inner: S,
    seen: std::sync::Arc<std::sync::Mutex<Vec<PeerInfo>>>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Spy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Spy<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(peer) = req.extensions().get::<PeerInfo>() {
            self.seen.lock().unwrap().push(peer.clone());
        }
        self.inner.call(req)
    }
}

#[tokio::test]
async fn services_see_who_is_calling() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("weir test ca");
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = write_leaf(dir.path(), "server", &ca.server());
    let (client_cert, client_key) = write_leaf(dir.path(), "client", &ca.client("observer"));
    let sock = dir.path().join("hubble.sock");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(Spy {
        inner: health,
        seen: seen.clone(),
    });
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(ca_path.clone()),
    };
    let spec = ServeSpec {
        unix: Some(UnixSpec::new(&sock)),
        tcp: Some(TcpSpec::new(loopback(), TcpSecurity::Tls(files))),
        ..ServeSpec::default()
    };
    let server = serve(routes, spec, Hooks::default()).unwrap();
    let mtls = ClientTls {
        client_cert: Some(client_cert),
        client_key: Some(client_key),
        ..tls_client(&ca_path)
    };
    let tcp = format!("tls://127.0.0.1:{}", server.tcp_addr().unwrap().port());
    assert!(matches!(probe(&tcp, mtls).await, Outcome::Serving));
    assert!(matches!(
        probe(&format!("unix://{}", sock.display()), ClientTls::default()).await,
        Outcome::Serving
    ));
    server.shutdown().await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].listener, ListenerKind::Tcp);
    assert_eq!(seen[0].remote_addr.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(
        seen[0].client_certificates.as_ref().map(|c| c.len()),
        Some(1)
    );
    assert_eq!(seen[1].listener, ListenerKind::Unix);
    let peer = seen[1].unix_peer.expect("unix peer credentials");
    assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(peer.pid, Some(std::process::id() as i32));
}
