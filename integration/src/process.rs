//! Child processes of the lab: identities that survive pid reuse, stopping
//! with a grace period, and running a short-lived command with a deadline.
//!
//! Owns no process itself; the lab and the run records decide what to stop.

use std::fs;
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Failures of running a short-lived command.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Talking to the program (stdin, stdout, wait) failed.
    #[error("{program}: {what}: {source}")]
    Io {
        program: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
}

/// A process identified by pid and start time, so a recycled pid is never
/// mistaken for the process a record talks about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start_time: u64,
    /// What the process is, for people reading the record.
    pub what: String,
}

impl ProcessRef {
    /// The process `pid` as it is now; `None` if it does not exist.
    pub fn of(pid: i32, what: &str) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
            what: what.to_string(),
        })
    }

    /// This process.
    pub fn current(what: &str) -> Self {
        let pid = std::process::id() as i32;
        Self {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            what: what.to_string(),
        }
    }

    /// Whether this very process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        match stat_fields(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends `signal` if this very process still runs.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal);
        }
    }

    /// SIGTERM, then SIGKILL if it still runs after `grace`; waits (bounded)
    /// until it is gone. For processes that are not our children.
    pub fn terminate(&self, grace: Duration) {
        use nix::sys::signal::Signal;
        self.signal(Signal::SIGTERM);
        if wait_until(grace, || !self.is_alive()) {
            return;
        }
        self.signal(Signal::SIGKILL);
        wait_until(Duration::from_secs(2), || !self.is_alive());
    }
}

/// State and start time of `pid` from `/proc/PID/stat`.
fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3 (state); start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Start time of `pid` (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, s)| s)
}

/// Polls `done` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Stops our child: SIGTERM, SIGKILL after `grace`, then reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    use nix::sys::signal::{Signal, kill};
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let mut status = None;
    if wait_until(grace, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        return status;
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Runs `cmd` with `stdin` as its input and returns its output, killing it if
/// it runs longer than `timeout`.
pub fn output_with_timeout(
    cmd: &mut Command,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Output, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let io = |what| {
        let program = program.clone();
        move |source| ProcessError::Io {
            program,
            what,
            source,
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    // Readers on their own threads: a child that fills one pipe while we
    // block on the other would otherwise deadlock.
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).map(|_| buf)
    });
    // A child that exits without reading its input makes this fail with
    // EPIPE; its exit status then tells the real story.
    let _ = input.write_all(stdin);
    drop(input);
    let mut status = None;
    let finished = wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ProcessError::Timeout { program, timeout });
    }
    let stdout = out_reader
        .join()
        .unwrap_or_else(|_| Ok(Vec::new()))
        .map_err(io("read stdout"))?;
    let stderr = err_reader
        .join()
        .unwrap_or_else(|_| Ok(Vec::new()))
        .map_err(io("read stderr"))?;
    Ok(Output {
        status: status.expect("finished implies a status"),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessRef::current("test");
        assert!(me.is_alive());
        let other = ProcessRef {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!other.is_alive(), "a recycled pid must not count as alive");
    }

    #[test]
    fn output_with_timeout_kills_a_hanging_command() {
        let started = Instant::now();
        let err = output_with_timeout(
            Command::new("sleep").arg("5"),
            b"",
            Duration::from_millis(200),
        )
        .expect_err("sleep 5 must time out");
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn output_with_timeout_passes_stdin_and_collects_stdout() {
        let out = output_with_timeout(&mut Command::new("cat"), b"hello", Duration::from_secs(5))
            .expect("cat runs");
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello");
    }
}
