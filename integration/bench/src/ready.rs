//! The start-up handshake between a load generator ([`crate::conn::Churn`],
//! [`crate::traffic::Flood`]) and each thread it starts: the thread reports
//! once whether its set-up (namespace, socket) worked, and the starter waits
//! for that report, so nothing is counted before traffic can flow and a
//! failed set-up is an error, not a silent zero. Owns only that protocol.

use std::fmt::Display;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Result, bail};

/// How long a starter waits for one thread's report.
const TIMEOUT: Duration = Duration::from_secs(10);

/// In the thread: reports how `set_up` went and returns its value, or `None`
/// (the thread should end) when it failed.
pub fn report<T, E: Display>(
    set_up: Result<T, E>,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Option<T> {
    match set_up {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            Some(v)
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            None
        }
    }
}

/// In the starter: waits for the report of one thread of `what`.
pub fn wait(rx: &mpsc::Receiver<Result<(), String>>, what: &str) -> Result<()> {
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("{what}: {e}"),
        Err(_) => bail!("{what}: not ready after 10 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reaches_the_starter_with_the_whole_error_chain() {
        let (tx, rx) = mpsc::channel();
        assert_eq!(report(Ok::<_, anyhow::Error>(7), &tx), Some(7));
        wait(&rx, "flood sender").expect("a thread that set up is ready");
        let failed: Result<u8> =
            Err(anyhow::anyhow!("no such namespace")).map_err(|e| e.context("enter b"));
        assert_eq!(report(failed, &tx), None);
        let e = wait(&rx, "flood sender").expect_err("a failed set-up is an error");
        assert_eq!(e.to_string(), "flood sender: enter b: no such namespace");
    }
}
