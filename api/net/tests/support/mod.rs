//! Test fixtures: a throwaway PKI made with rcgen, a real gRPC service
//! (grpc.health.v1.Health), refusal counting, and polling helpers.

#![allow(dead_code)] // reason: each test uses a different subset

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weir_api_net::{AuthChannel, ClientTarget, ClientTls, Hooks, NetError, Refusal};

pub const SERVING: i32 = ServingStatus::Serving as i32;

/// A certificate authority that issues leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, as PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn leaf(&self, names: &[&str], eku: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for localhost, 127.0.0.1 and node1.weir.local.
    pub fn server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1", "node1.weir.local"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    pub fn expired_server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        )
    }

    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    pub fn expired_client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth, true)
    }
}

/// Writes `content` to `dir/name` by rename, as secret updaters do.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Writes a leaf's certificate and key; returns (cert, key).
pub fn write_leaf(dir: &Path, prefix: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{prefix}.crt"), &leaf.cert),
        write(dir, &format!("{prefix}.key"), &leaf.key),
    )
}

/// The health service, serving, as the routes under test.
pub fn health_routes() -> Routes {
    let (_reporter, service) = tonic_health::server::health_reporter();
    Routes::new(service)
}

/// Refusals seen by the server, by kind.
#[derive(Clone, Default)]
pub struct Counts(Arc<Mutex<HashMap<Refusal, usize>>>);

impl Counts {
    pub fn hooks(&self) -> Hooks {
        let counts = self.clone();
        Hooks::on_refused(move |r| *counts.0.lock().unwrap().entry(r).or_default() += 1)
    }

    pub fn get(&self, r: Refusal) -> usize {
        self.0.lock().unwrap().get(&r).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }

    /// Waits until `r` was counted at least `n` times.
    pub async fn wait_for(&self, r: Refusal, n: usize) {
        let ok = eventually(Duration::from_secs(5), || async { self.get(r) >= n }).await;
        assert!(
            ok,
            "refusal {r} counted {} times, expected {n}; all: {:?}",
            self.get(r),
            self.0.lock().unwrap()
        );
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `grpc.health.v1.Health/Check` for the whole server.
pub async fn check(channel: AuthChannel) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(reply.into_inner().status)
}

/// Outcome of connect + Check, flattened for assertions.
#[derive(Debug)]
pub enum Outcome {
    Serving,
    ConnectError(NetError),
    Status(tonic::Status),
}

/// Parses, connects and calls Check.
pub async fn probe(server: &str, tls: ClientTls) -> Outcome {
    let target = ClientTarget::parse(server, tls).expect("target parses");
    match weir_api_net::connect(&target).await {
        Err(e) => Outcome::ConnectError(e),
        Ok(channel) => match check(channel).await {
            Ok(s) if s == SERVING => Outcome::Serving,
            Ok(s) => panic!("unexpected health status {s}"),
            Err(status) => Outcome::Status(status),
        },
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (returns true) when not root, but fails under CI=true.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root and CI=true");
    }
    eprintln!("skipping {test}: needs root");
    true
}

/// A loopback TCP listener on a free port.
pub fn loopback() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}
