//! Test support: the Python OTLP receiver (tests/receiver/receiver.py, built
//! on PyPI's opentelemetry-proto + grpcio) run from target/pyenv, and flow
//! helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Receiver {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// The venv's python when it has the receiver's packages; `None` (after a
/// message) when it does not and CI is not set; a panic under CI=true.
pub fn python() -> Option<PathBuf> {
    let py = workspace_root().join("target/pyenv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args([
                "-c",
                "import grpc; from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "{} lacks grpcio/opentelemetry-proto: run `cargo xtask setup` (or pip install -r \
         agent/otel/tests/receiver/requirements.txt into it)",
        py.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

impl Receiver {
    /// Starts the receiver with extra arguments; `None` when skipped.
    pub fn start(args: &[&str]) -> Option<Self> {
        let py = python()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("received.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/receiver/receiver.py");
        let mut child = Command::new(py)
            .arg(script)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn receiver");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read READY line");
        let mut grpc_port = 0;
        let mut http_port = 0;
        for word in line.split_whitespace() {
            if let Some(p) = word.strip_prefix("grpc=") {
                grpc_port = p.parse().expect("grpc port");
            }
            if let Some(p) = word.strip_prefix("http=") {
                http_port = p.parse().expect("http port");
            }
        }
        assert!(
            line.starts_with("READY") && grpc_port != 0 && http_port != 0,
            "receiver did not start: {line:?}"
        );
        Some(Self {
            child,
            grpc_port,
            http_port,
            out,
            _dir: dir,
        })
    }

    pub fn endpoint(&self, protocol: weir_otel::Protocol) -> String {
        match protocol {
            weir_otel::Protocol::Grpc => format!("http://127.0.0.1:{}", self.grpc_port),
            weir_otel::Protocol::HttpProtobuf => format!("http://127.0.0.1:{}", self.http_port),
        }
    }

    /// Every request received so far.
    pub fn lines(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.out) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str(l).expect("receiver wrote JSON"))
            .collect()
    }

    /// Successful requests of `signal`.
    pub fn ok(&self, signal: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["signal"] == signal && l["outcome"] == "ok")
            .collect()
    }

    /// Every log record received, in order.
    pub fn records(&self) -> Vec<Value> {
        self.ok("logs")
            .iter()
            .flat_map(|l| l["records"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `pred` holds on the receiver (panics after `timeout`).
    pub async fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&Self) -> bool) {
        let until = Instant::now() + timeout;
        while !pred(self) {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; got {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
