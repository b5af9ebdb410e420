//! The pods' servers: on each declared port, TCP and/or UDP, over IPv4 and
//! IPv6, answer with the pod's name (one line). A TCP server writes the line
//! and closes; a UDP server answers every datagram.
//!
//! Owns binding (in the calling thread's network namespace) and serving. Run
//! as `weir-lab serve` inside a pod's namespace, or in the lab's own process
//! on sockets created inside the pod's namespace.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::io::AsyncWriteExt;

use crate::spec::{PortSpec, Protocol};

/// Failures of the servers.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A port could not be bound.
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Bind {
        protocol: Protocol,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The runtime or a signal handler could not be set up.
    #[error("server runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// A bound socket, ready to serve.
#[derive(Debug)]
pub enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn bind_one(protocol: Protocol, addr: SocketAddr) -> Result<Bound, ServeError> {
    let err = |source| ServeError::Bind {
        protocol,
        addr,
        source,
    };
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = match protocol {
        Protocol::Udp => (Type::DGRAM, SockProto::UDP),
        _ => (Type::STREAM, SockProto::TCP),
    };
    let sock = Socket::new(domain, ty, Some(proto)).map_err(err)?;
    if addr.is_ipv6() {
        // A separate IPv4 socket owns the IPv4 side of the port.
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    Ok(match protocol {
        Protocol::Udp => Bound::Udp(sock.into()),
        _ => {
            sock.listen(1024).map_err(err)?;
            Bound::Tcp(sock.into())
        }
    })
}

/// Binds every port on `0.0.0.0` and `[::]`, in the calling thread's
/// network namespace.
pub fn bind_all(ports: &[PortSpec]) -> Result<Vec<Bound>, ServeError> {
    let mut out = Vec::with_capacity(ports.len() * 2);
    for p in ports {
        for ip in [
            Ipv4Addr::UNSPECIFIED.into(),
            std::net::IpAddr::from(Ipv6Addr::UNSPECIFIED),
        ] {
            out.push(bind_one(p.protocol, SocketAddr::new(ip, p.port))?);
        }
    }
    Ok(out)
}

/// Serves `sockets`, answering with `name`, until the future is dropped.
/// Must run inside a tokio runtime.
pub async fn serve(name: String, sockets: Vec<Bound>) {
    let line: Arc<[u8]> = format!("{name}\n").into_bytes().into();
    let mut tasks = tokio::task::JoinSet::new();
    for s in sockets {
        let line = line.clone();
        match s {
            Bound::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tasks.spawn(serve_tcp(l, line));
                }
                Err(e) => tracing::warn!(error = %e, "cannot register TCP listener"),
            },
            Bound::Udp(u) => match tokio::net::UdpSocket::from_std(u) {
                Ok(u) => {
                    tasks.spawn(serve_udp(u, line));
                }
                Err(e) => tracing::warn!(error = %e, "cannot register UDP socket"),
            },
        }
    }
    // Dropping this future drops the JoinSet, which aborts the servers.
    while tasks.join_next().await.is_some() {}
}

async fn serve_tcp(listener: tokio::net::TcpListener, line: Arc<[u8]>) {
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let line = line.clone();
                tokio::spawn(async move {
                    // The client may be gone already (a probe that timed
                    // out); nothing to do about it.
                    let _ = stream.write_all(&line).await;
                    let _ = stream.shutdown().await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_udp(sock: tokio::net::UdpSocket, line: Arc<[u8]>) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                let _ = sock.send_to(&line, peer).await;
            }
            Err(e) => {
                // ECONNREFUSED from an earlier answer's ICMP error, etc.
                tracing::debug!(error = %e, "UDP receive failed");
            }
        }
    }
}

/// Line `weir-lab serve` writes to stdout once every port is bound.
pub const READY_LINE: &str = "ready";

/// `weir-lab serve`: binds in the current namespace, writes [`READY_LINE`]
/// to `ready`, serves until SIGTERM or SIGINT.
pub fn run_process(
    name: &str,
    ports: &[PortSpec],
    mut ready: impl io::Write,
) -> Result<(), ServeError> {
    let sockets = bind_all(ports)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServeError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Runtime)?;
        let servers = serve(name.to_string(), sockets);
        writeln!(ready, "{READY_LINE}")
            .and_then(|()| ready.flush())
            .map_err(ServeError::Runtime)?;
        drop(ready);
        tokio::select! {
            () = servers => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
