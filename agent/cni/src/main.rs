//! `weir-cni`: the CNI plugin binary. Reads the environment and stdin as the CNI
//! spec says, prints the result (or the spec's error object) on stdout, exits
//! non-zero on failure, and logs to stderr (level from `WEIR_CNI_LOG`, default
//! `warn`).

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;
use weir_cni::CniEnv;
use weir_cni::plugin::{self, PluginError};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|source| PluginError::Stdin { source })
        .and_then(|_| run(&stdin));
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(json)) => match print_json(&json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the result to stdout");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "failed");
            let body = e.to_cni_error(&plugin::error_version(&stdin));
            if let Err(w) = serde_json::to_value(&body)
                .map_err(std::io::Error::other)
                .and_then(|v| print_json(&v))
            {
                tracing::error!(error = %w, "cannot write the error to stdout");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<Value>, PluginError> {
    let env = CniEnv::from_process()?;
    // One thread is enough: a CNI call is a short sequence of netlink requests,
    // and pod-namespace work gets its own thread anyway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PluginError::Runtime { source })?;
    rt.block_on(plugin::run(&env, stdin))
}

fn print_json(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}
