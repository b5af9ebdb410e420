//! The `weir agent` child process of a lab: its command line, waiting until
//! its local API says it is ready, and stopping it (SIGTERM, then SIGKILL).
//!
//! Owns only the process; the agent's behaviour is the agent's business.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weir_localapi::{Client, Status};

use crate::process::stop_child;

/// Failures of the agent process.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The binary is missing.
    #[error(
        "weir binary not found at {0} (build it with `cargo build -p weir-agent --bin weir`, or pass --weir)"
    )]
    Missing(PathBuf),
    /// The process could not be started.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log file could not be created.
    #[error("cannot create agent log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent exited before it was ready.
    #[error("weir agent exited ({status}) before it was ready; last log lines:\n{log}")]
    Exited { status: ExitStatus, log: String },
    /// The agent did not become ready in time.
    #[error("weir agent not ready after {timeout:?} ({last}); last log lines:\n{log}")]
    NotReady {
        timeout: Duration,
        /// The last answer or error of the status call.
        last: String,
        log: String,
    },
}

/// Where the agent writes its flow log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLog {
    /// A file (the lab's default: `<lab dir>/flows.json`).
    File(PathBuf),
    /// The agent's stdout (the demo).
    Stdout,
    Off,
}

/// Where the agent's stdout goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentStdout {
    /// Discarded (the lab's default: flows go to a file).
    #[default]
    Null,
    /// Our stdout.
    Inherit,
    /// A pipe; take it with [`Agent::take_stdout`] (the demo holds flows
    /// back until its banner is printed).
    Piped,
}

/// The agent's command line, as `weir agent` takes it.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub weir_bin: PathBuf,
    pub manifests_dir: PathBuf,
    pub node_name: String,
    pub socket: PathBuf,
    pub metrics_addr: String,
    pub flow_log: FlowLog,
    /// `json` or `compact`.
    pub flow_log_format: String,
    /// `full` or `none`; None: the agent's default.
    pub aggregation: Option<String>,
    /// The node's network namespace (`--netns`).
    pub netns: PathBuf,
    /// The agent's stderr (its logs).
    pub log_file: PathBuf,
    /// Where the agent's stdout goes (the flow log, with `FlowLog::Stdout`).
    pub stdout: AgentStdout,
    pub extra_args: Vec<String>,
}

impl AgentConfig {
    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "agent".to_string(),
            "--manifests".into(),
            self.manifests_dir.display().to_string(),
            "--node-name".into(),
            self.node_name.clone(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--metrics-addr".into(),
            self.metrics_addr.clone(),
            "--flow-log".into(),
            match &self.flow_log {
                FlowLog::File(p) => p.display().to_string(),
                FlowLog::Stdout => "stdout".into(),
                FlowLog::Off => "off".into(),
            },
            "--flow-log-format".into(),
            self.flow_log_format.clone(),
            "--netns".into(),
            self.netns.display().to_string(),
        ];
        if let Some(a) = &self.aggregation {
            args.push("--aggregation".into());
            args.push(a.clone());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    log_file: PathBuf,
    client: Client,
}

impl Agent {
    /// Starts the agent.
    pub fn spawn(cfg: &AgentConfig) -> Result<Self, AgentError> {
        if !cfg.weir_bin.is_file() {
            return Err(AgentError::Missing(cfg.weir_bin.clone()));
        }
        // Appended to: a restarted agent (`Lab::restart_agent`) keeps the
        // first one's log above its own.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.log_file)
            .map_err(|source| AgentError::Log {
                path: cfg.log_file.clone(),
                source,
            })?;
        let mut cmd = Command::new(&cfg.weir_bin);
        cmd.args(cfg.args())
            .stdin(Stdio::null())
            .stdout(match cfg.stdout {
                AgentStdout::Null => Stdio::null(),
                AgentStdout::Inherit => Stdio::inherit(),
                AgentStdout::Piped => Stdio::piped(),
            })
            .stderr(log)
            // Ctrl-C on the terminal is for the lab, which stops the agent
            // after the pods are gone.
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().map_err(|source| AgentError::Spawn {
            bin: cfg.weir_bin.clone(),
            source,
        })?;
        tracing::info!(pid = child.id(), args = ?cfg.args(), "agent started");
        Ok(Self {
            child,
            log_file: cfg.log_file.clone(),
            client: Client::new(&cfg.socket).with_timeout(Duration::from_secs(5)),
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The read end of the agent's stdout, with [`AgentStdout::Piped`].
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// A client of the agent's local API.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits until the agent reports `ready: true`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Status, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AgentError::Exited {
                    status,
                    log: self.log_tail(30),
                });
            }
            let last = match self.client.status().await {
                Ok(s) if s.ready => return Ok(s),
                Ok(s) => format!("status says ready=false, endpoints={}", s.endpoints),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(AgentError::NotReady {
                    timeout,
                    last,
                    log: self.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited (and how).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, SIGKILL after `grace`; reaps the process. Blocking.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let status = stop_child(&mut self.child, grace);
        tracing::info!(?status, "agent stopped");
        status
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_matches_the_agent_interface() {
        let cfg = AgentConfig {
            weir_bin: "/x/weir".into(),
            manifests_dir: "/lab/manifests".into(),
            node_name: "n1".into(),
            socket: "/lab/weir.sock".into(),
            metrics_addr: "127.0.0.1:0".into(),
            flow_log: FlowLog::File("/lab/flows.json".into()),
            flow_log_format: "json".into(),
            aggregation: Some("none".into()),
            netns: "/run/netns/weirlab-x-node".into(),
            log_file: "/lab/agent.log".into(),
            stdout: AgentStdout::Null,
            extra_args: vec![],
        };
        let args = cfg.args().join(" ");
        assert_eq!(
            args,
            "agent --manifests /lab/manifests --node-name n1 --socket /lab/weir.sock \
             --metrics-addr 127.0.0.1:0 --flow-log /lab/flows.json --flow-log-format json \
             --netns /run/netns/weirlab-x-node --aggregation none"
        );
    }
}
