//! Runs the Python client (`python/hubble_client.py`, stubs generated with
//! grpcio-tools from the upstream protos at each run) with the interpreter
//! of `target/pyenv`, which `cargo xtask setup` creates with
//! `python3 -m venv` and `pip install -r python/requirements.txt`.
//!
//! Answers come back as the canonical protobuf JSON the script prints, one
//! value per line, directly comparable with [`crate::HubbleClient`]'s.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::{ProtosMissing, protos_dir};

/// Exit status of the script when the RPC failed.
const EXIT_RPC: i32 = 3;
/// Slack on top of the script's own deadline before it is killed.
const KILL_SLACK: Duration = Duration::from_secs(15);

/// Failures of the Python client.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// The crate was built without the upstream protos.
    #[error(transparent)]
    ProtosMissing(#[from] ProtosMissing),
    /// `target/pyenv` has no interpreter.
    #[error("no Python client environment at {}: run cargo xtask setup", .python.display())]
    VenvMissing { python: PathBuf },
    /// The interpreter could not be started.
    #[error("start {}: {source}", .python.display())]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Talking to the script's pipes failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The server answered the call with an error status (exit 3).
    #[error("{command}: {code} {details}")]
    Rpc {
        command: String,
        /// The gRPC status code's name, e.g. `UNIMPLEMENTED`.
        code: String,
        details: String,
    },
    /// The script failed otherwise (usage, JSON printing, stub generation).
    #[error("{command}: exit {status}: {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The script did not finish in time and was killed.
    #[error("{command}: still running after {after:?}, killed")]
    Timeout { command: String, after: Duration },
    /// The output is not what the command prints.
    #[error("{command}: unexpected output: {what}")]
    Unexpected { command: String, what: String },
    /// A line of output is not JSON.
    #[error("{command}: output line {line:?} is not JSON: {source}")]
    Output {
        command: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

impl PythonError {
    /// The gRPC status code name when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PythonError::Rpc { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The target directory: `CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        // This crate sits at <workspace>/integration/hubble-compat.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// The script this crate ships.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hubble_client.py")
}

/// The Python client, if the venv and the protos are there.
pub fn python_client() -> Result<PythonClient, PythonError> {
    let protos = protos_dir()?.to_path_buf();
    let python = target_dir().join("pyenv/bin/python");
    if !python.is_file() {
        return Err(PythonError::VenvMissing { python });
    }
    Ok(PythonClient {
        python,
        script: script(),
        protos,
        timeout: Duration::from_secs(10),
        token: None,
    })
}

/// How to run `hubble_client.py`.
#[derive(Clone, Debug)]
pub struct PythonClient {
    python: PathBuf,
    script: PathBuf,
    protos: PathBuf,
    timeout: Duration,
    token: Option<String>,
}

/// What one finite run printed.
#[derive(Debug)]
struct Run {
    stdout: String,
}

impl PythonClient {
    /// The script's `--timeout` (deadline of each call).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    fn command(&self, server: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg("--protos")
            .arg(&self.protos)
            .arg("--server")
            .arg(server)
            .arg("--timeout")
            .arg(self.timeout.as_secs_f64().to_string());
        if let Some(token) = &self.token {
            cmd.arg("--token").arg(token);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(
        &self,
        server: &str,
        args: &[&str],
        stdin: Option<String>,
    ) -> Result<Run, PythonError> {
        let command = args.first().copied().unwrap_or_default().to_string();
        let mut cmd = self.command(server, args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        tracing::debug!(?args, "running the Python client");
        let mut child = cmd.spawn().map_err(|source| PythonError::Spawn {
            python: self.python.clone(),
            source,
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|source| PythonError::Io {
                    what: "write the requests to the Python client",
                    source,
                })?;
        }
        let after = self.timeout + KILL_SLACK;
        let output = tokio::time::timeout(after, child.wait_with_output())
            .await
            .map_err(|_| PythonError::Timeout {
                command: command.clone(),
                after,
            })?
            .map_err(|source| PythonError::Io {
                what: "wait for the Python client",
                source,
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.code() == Some(EXIT_RPC) {
            return Err(rpc_error(&command, &stderr));
        }
        if !output.status.success() {
            return Err(PythonError::Failed {
                command,
                status: output.status,
                stderr,
            });
        }
        Ok(Run {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }

    async fn run_json(&self, server: &str, args: &[&str]) -> Result<Vec<Value>, PythonError> {
        let command = args.first().copied().unwrap_or_default();
        let run = self.run(server, args, None).await?;
        parse_lines(command, &run.stdout)
    }

    async fn run_one(&self, server: &str, args: &[&str]) -> Result<Value, PythonError> {
        let command = args.first().copied().unwrap_or_default();
        let mut values = self.run_json(server, args).await?;
        match values.len() {
            1 => Ok(values.remove(0)),
            n => Err(PythonError::Unexpected {
                command: command.to_string(),
                what: format!("{n} lines where one answer was expected"),
            }),
        }
    }

    /// `get-flows`: the `GetFlowsResponse`s of a finite request.
    pub async fn get_flows(
        &self,
        server: &str,
        request: &Value,
    ) -> Result<Vec<Value>, PythonError> {
        self.run_json(server, &["get-flows", "--request", &request.to_string()])
            .await
    }

    /// `batch`: many finite GetFlows requests in one run; one result per
    /// request, in order (an `Rpc` error for a request the server refused).
    pub async fn get_flows_batch(
        &self,
        server: &str,
        requests: &[Value],
    ) -> Result<Vec<Result<Vec<Value>, PythonError>>, PythonError> {
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        let run = self
            .run(server, &["batch", "--requests", "-"], Some(input))
            .await?;
        let lines = parse_lines("batch", &run.stdout)?;
        if lines.len() != requests.len() {
            return Err(PythonError::Unexpected {
                command: "batch".into(),
                what: format!("{} results for {} requests", lines.len(), requests.len()),
            });
        }
        Ok(lines
            .into_iter()
            .map(|mut line| match line.get_mut("responses") {
                Some(Value::Array(responses)) => Ok(std::mem::take(responses)),
                _ => Err(PythonError::Rpc {
                    command: "batch".into(),
                    code: line["error"]["code"].as_str().unwrap_or_default().into(),
                    details: line["error"]["details"].as_str().unwrap_or_default().into(),
                }),
            })
            .collect())
    }

    /// `get-flows` with a `follow` request, running in the background for
    /// at most `duration`; read what arrives with [`PythonFollow::next`].
    pub async fn follow(
        &self,
        server: &str,
        request: &Value,
        duration: Duration,
    ) -> Result<PythonFollow, PythonError> {
        let request = request.to_string();
        let duration = duration.as_secs_f64().to_string();
        let mut child = self
            .command(
                server,
                &["get-flows", "--request", &request, "--duration", &duration],
            )
            .spawn()
            .map_err(|source| PythonError::Spawn {
                python: self.python.clone(),
                source,
            })?;
        let stdout = child.stdout.take().ok_or_else(|| PythonError::Io {
            what: "the Python client's stdout",
            source: std::io::Error::other("not piped"),
        })?;
        let stderr = child.stderr.take().ok_or_else(|| PythonError::Io {
            what: "the Python client's stderr",
            source: std::io::Error::other("not piped"),
        })?;
        let mut stderr = BufReader::new(stderr).lines();
        // The script says `# started` once the server has accepted the call.
        let started = tokio::time::timeout(self.timeout, async {
            let mut said = String::new();
            while let Ok(Some(line)) = stderr.next_line().await {
                if line == "# started" {
                    return Ok(());
                }
                said.push_str(&line);
                said.push('\n');
            }
            Err(said)
        })
        .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(said)) => {
                let status = child.wait().await.map_err(|source| PythonError::Io {
                    what: "wait for the Python client",
                    source,
                })?;
                return Err(if status.code() == Some(EXIT_RPC) {
                    rpc_error("get-flows", &said)
                } else {
                    PythonError::Failed {
                        command: "get-flows".into(),
                        status,
                        stderr: said,
                    }
                });
            }
            Err(_) => {
                return Err(PythonError::Timeout {
                    command: "get-flows (follow)".into(),
                    after: self.timeout,
                });
            }
        }
        Ok(PythonFollow {
            child,
            stdout: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// `server-status`.
    pub async fn server_status(&self, server: &str) -> Result<Value, PythonError> {
        self.run_one(server, &["server-status"]).await
    }

    /// `get-nodes`.
    pub async fn get_nodes(&self, server: &str) -> Result<Value, PythonError> {
        self.run_one(server, &["get-nodes"]).await
    }

    /// `get-namespaces`.
    pub async fn get_namespaces(&self, server: &str) -> Result<Value, PythonError> {
        self.run_one(server, &["get-namespaces"]).await
    }

    /// `get-agent-events` with `request` (a GetAgentEventsRequest).
    pub async fn get_agent_events(
        &self,
        server: &str,
        request: &Value,
    ) -> Result<Vec<Value>, PythonError> {
        self.run_json(
            server,
            &["get-agent-events", "--request", &request.to_string()],
        )
        .await
    }

    /// `peer-notify --count N`.
    pub async fn peer_notify(&self, server: &str, count: usize) -> Result<Vec<Value>, PythonError> {
        self.run_json(server, &["peer-notify", "--count", &count.to_string()])
            .await
    }

    /// `encode`: the wire bytes Python's generated code makes of a message
    /// given as JSON (no server involved).
    pub async fn encode(&self, message: &str, json: &Value) -> Result<Vec<u8>, PythonError> {
        let run = self
            .run(
                "unix:///dev/null",
                &["encode", "--message", message, "--json", &json.to_string()],
                None,
            )
            .await?;
        let hex = run.stdout.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
                    .ok_or_else(|| PythonError::Unexpected {
                        command: "encode".into(),
                        what: format!("{hex:?} is not hex"),
                    })
            })
            .collect()
    }
}

/// A running `get-flows` follow call of the Python client.
#[derive(Debug)]
pub struct PythonFollow {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl PythonFollow {
    /// The next response, None when nothing arrived within `wait` or the
    /// call has ended normally (its `--duration` passed); an error when the
    /// call failed.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Value>, PythonError> {
        match tokio::time::timeout(wait, self.stdout.next_line()).await {
            Err(_) => Ok(None),
            Ok(Ok(None)) => self.ended().await.map(|()| None),
            Ok(Ok(Some(line))) => {
                serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|source| PythonError::Output {
                        command: "get-flows (follow)".into(),
                        line,
                        source,
                    })
            }
            Ok(Err(source)) => Err(PythonError::Io {
                what: "read the Python client's output",
                source,
            }),
        }
    }

    /// The client closed its output: find out why.
    async fn ended(&mut self) -> Result<(), PythonError> {
        let mut said = String::new();
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                said.push_str(&line);
                said.push('\n');
            }
            self.child.wait().await
        })
        .await;
        let command = "get-flows (follow)".to_string();
        match rest {
            Err(_) => Err(PythonError::Timeout {
                command,
                after: Duration::from_secs(5),
            }),
            Ok(Err(source)) => Err(PythonError::Io {
                what: "wait for the Python client",
                source,
            }),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) if status.code() == Some(EXIT_RPC) => Err(rpc_error(&command, &said)),
            Ok(Ok(status)) => Err(PythonError::Failed {
                command,
                status,
                stderr: said,
            }),
        }
    }

    /// Ends the call (kills the client).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn rpc_error(command: &str, stderr: &str) -> PythonError {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ERROR "))
        .unwrap_or_default();
    let (code, details) = line.split_once(' ').unwrap_or((line, ""));
    PythonError::Rpc {
        command: command.to_string(),
        code: code.to_string(),
        details: details.to_string(),
    }
}

fn parse_lines(command: &str, stdout: &str) -> Result<Vec<Value>, PythonError> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|source| PythonError::Output {
                command: command.to_string(),
                line: line.to_string(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_are_read_from_stderr() {
        let e = rpc_error("get-nodes", "noise\nERROR UNIMPLEMENTED not here: use x\n");
        assert_eq!(e.code(), Some("UNIMPLEMENTED"));
        assert!(matches!(e, PythonError::Rpc { details, .. } if details == "not here: use x"));
    }
}
