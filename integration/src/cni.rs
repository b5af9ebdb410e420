//! Invoking the `weir-cni` plugin the way a container runtime does: CNI
//! environment variables, the network configuration on stdin, the result on
//! stdout, run inside the node's network namespace.
//!
//! Owns the lab's network configuration and the parsing of CNI results and
//! errors; what the plugin does is the plugin's business.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::netns;
use crate::process::{ProcessError, output_with_timeout};

/// How long one plugin call may take (it talks to the agent, which may be
/// attaching programs).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Failures of a plugin call.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin could not be run or did not finish.
    #[error("weir-cni {command} for {container_id}: {source}")]
    Run {
        command: &'static str,
        container_id: String,
        #[source]
        source: ProcessError,
    },
    /// The node namespace could not be opened.
    #[error("weir-cni {command} for {container_id}: {source}")]
    Netns {
        command: &'static str,
        container_id: String,
        #[source]
        source: netns::NetnsError,
    },
    /// The plugin reported an error (CNI error object, or a bare exit status).
    #[error("weir-cni {command} for {container_id} failed ({status}): {message}")]
    Failed {
        command: &'static str,
        container_id: String,
        status: String,
        message: String,
    },
    /// ADD printed something that is not a CNI result with addresses.
    #[error("weir-cni ADD for {container_id} printed an unusable result: {message}")]
    BadResult {
        container_id: String,
        message: String,
    },
}

/// The plugin, configured for one lab.
#[derive(Clone, Debug)]
pub struct Plugin {
    bin: PathBuf,
    netconf: Vec<u8>,
    node_netns: PathBuf,
}

/// Which pod a call is about.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
}

impl Plugin {
    /// The plugin at `bin`, with the lab's network configuration.
    pub fn new(
        bin: &Path,
        agent_socket: &Path,
        pod_cidrs: &[String],
        ipam_dir: &Path,
        node_netns: &Path,
    ) -> Self {
        let netconf = json!({
            "cniVersion": "1.0.0",
            "name": "weir-lab",
            "type": "weir-cni",
            "agentSocket": agent_socket,
            "ipam": {
                "mode": "overlay",
                "podCIDRs": pod_cidrs,
                "dataDir": ipam_dir,
            },
        });
        Self {
            bin: bin.to_path_buf(),
            netconf: serde_json::to_vec(&netconf).expect("JSON values serialize"),
            node_netns: node_netns.to_path_buf(),
        }
    }

    fn invoke(&self, command: &'static str, call: &Call<'_>) -> Result<Vec<u8>, CniError> {
        let node_fd = netns::open(&self.node_netns).map_err(|source| CniError::Netns {
            command,
            container_id: call.container_id.to_string(),
            source,
        })?;
        let mut cmd = Command::new(&self.bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_NETNS", call.netns)
            .env("CNI_IFNAME", call.ifname)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    call.pod_namespace, call.pod_name, call.container_id
                ),
            )
            .env(
                "CNI_PATH",
                self.bin.parent().unwrap_or_else(|| Path::new("/")),
            )
            // Ctrl-C on the terminal is for the lab, which then DELs in order.
            .process_group(0);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // on a descriptor that stays open until after spawn returns.
        unsafe {
            cmd.pre_exec(move || netns::setns_raw(&node_fd));
        }
        let out = output_with_timeout(&mut cmd, &self.netconf, CALL_TIMEOUT).map_err(|source| {
            CniError::Run {
                command,
                container_id: call.container_id.to_string(),
                source,
            }
        })?;
        if !out.status.success() {
            // CNI errors are a JSON object on stdout: {"code", "msg", "details"}.
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let mut message = match (&err["msg"], &err["details"]) {
                (Value::String(m), Value::String(d)) if !d.is_empty() => format!("{m}: {d}"),
                (Value::String(m), _) => m.clone(),
                _ => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            if !stderr.is_empty() {
                message = format!("{message} (stderr: {stderr})");
            }
            return Err(CniError::Failed {
                command,
                container_id: call.container_id.to_string(),
                status: out.status.to_string(),
                message,
            });
        }
        Ok(out.stdout)
    }

    /// CNI ADD; returns the pod's addresses.
    pub fn add(&self, call: &Call<'_>) -> Result<Vec<IpAddr>, CniError> {
        let stdout = self.invoke("ADD", call)?;
        parse_result(&stdout).map_err(|message| CniError::BadResult {
            container_id: call.container_id.to_string(),
            message,
        })
    }

    /// CNI DEL.
    pub fn del(&self, call: &Call<'_>) -> Result<(), CniError> {
        self.invoke("DEL", call).map(|_| ())
    }
}

/// Addresses from a CNI result's `ips[].address` (`"10.244.0.2/32"`).
pub fn parse_result(stdout: &[u8]) -> Result<Vec<IpAddr>, String> {
    let result: Value = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(stdout)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })?;
    let ips = result["ips"]
        .as_array()
        .ok_or_else(|| "no \"ips\" list".to_string())?;
    let parsed: Vec<IpAddr> = ips
        .iter()
        .map(|entry| {
            let address = entry["address"]
                .as_str()
                .ok_or_else(|| format!("ips entry without address: {entry}"))?;
            let ip = address.split('/').next().unwrap_or(address);
            ip.parse()
                .map_err(|e| format!("ips address {address:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err("\"ips\" is empty".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_of_a_result() {
        let out = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"10.244.0.2/32","interface":0},{"address":"fd00:10:244::2/128"}]}"#;
        assert_eq!(
            parse_result(out).unwrap(),
            vec![
                "10.244.0.2".parse::<IpAddr>().unwrap(),
                "fd00:10:244::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn rejects_results_without_addresses() {
        assert!(parse_result(b"{}").is_err());
        assert!(parse_result(br#"{"ips":[]}"#).is_err());
        assert!(parse_result(br#"{"ips":[{"address":"nope/32"}]}"#).is_err());
        assert!(parse_result(b"garbage").is_err());
    }
}
