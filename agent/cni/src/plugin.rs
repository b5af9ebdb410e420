//! The CNI commands: ADD, DEL, CHECK and VERSION, tying IPAM, kernel setup and
//! the agent together, and the mapping of every failure to a CNI error code.
//!
//! ADD: allocate addresses, wire the veth pair, register the endpoint with the
//! agent (which attaches its programs before answering), answer the result. Any
//! failure after allocation undoes everything this invocation did, so a failed
//! ADD leaks neither a veth nor an address.
//!
//! DEL: unregister (best effort: an agent that is down garbage-collects
//! endpoints whose interface vanished), delete the host veth, release the
//! addresses. Deleting what is already gone succeeds.
//!
//! CHECK: compare the kernel and IPAM state (and `prevResult`, when given) with
//! what ADD makes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use weir_localapi::{Client, ClientError, EndpointRegistration};

use crate::config::{CniVersion, ConfigError, NetConf, peek_version};
use crate::env::{CniEnv, Command, EnvError};
use crate::ipam::{self, Allocation, IpamError, Owner};
use crate::netns::{Netns, NetnsError};
use crate::result::{CniError, CniResult, Interface, IpConfig, Route, codes, version_json};
use crate::setup::{self, SetupError, WireSpec, Wired};
use crate::{GATEWAY_V4, GATEWAY_V6, host_veth_name};

/// How long DEL waits for the agent: DEL must not hang a pod's teardown on a
/// wedged agent, and the agent cleans up after vanished interfaces anyway.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Any failure of a command, carrying what decides its CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Bad or missing environment variable (code 4).
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Bad network configuration (code 1, 6 or 7).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Address management failed (code 100 when exhausted, else 5).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The pod's namespace could not be used (code 3 when it does not exist).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Kernel setup failed or CHECK found a difference (code 5 or 102).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The agent did not take the endpoint (code 11 when unreachable, else 101).
    #[error("registering the endpoint with the weir agent: {source}")]
    Agent {
        #[source]
        source: ClientError,
    },
    /// The node-side netlink socket could not be opened (code 5).
    #[error("cannot open a netlink socket: {source}")]
    NetlinkSocket {
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not be built (code 5).
    #[error("cannot start the async runtime: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    /// stdin could not be read (code 5).
    #[error("cannot read the network configuration from stdin: {source}")]
    Stdin {
        #[source]
        source: std::io::Error,
    },
    /// CHECK is only defined from CNI 0.4.0 on (code 1).
    #[error("CHECK needs cniVersion 0.4.0 or later, got {0}")]
    CheckUnsupported(CniVersion),
    /// CHECK on an attachment that holds no address, or whose addresses differ
    /// from `prevResult` (code 102).
    #[error("{0}")]
    CheckFailed(String),
}

impl PluginError {
    /// The CNI error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            Self::Env(_) => codes::INVALID_ENV,
            Self::Config(ConfigError::Decode { .. }) => codes::DECODE,
            Self::Config(ConfigError::IncompatibleVersion(_)) | Self::CheckUnsupported(_) => {
                codes::INCOMPATIBLE_VERSION
            }
            Self::Config(ConfigError::Invalid { .. }) => codes::INVALID_NETCONF,
            Self::Ipam(IpamError::Exhausted { .. }) => codes::IPAM_EXHAUSTED,
            Self::Ipam(_) => codes::IO,
            Self::Netns(NetnsError::NotFound { .. })
            | Self::Setup(SetupError::Netns(NetnsError::NotFound { .. })) => {
                codes::UNKNOWN_CONTAINER
            }
            Self::Netns(NetnsError::SameAsOwn { .. }) => codes::INVALID_ENV,
            Self::Netns(_) => codes::IO,
            Self::Setup(SetupError::Mismatch { .. }) | Self::CheckFailed(_) => codes::CHECK_FAILED,
            Self::Setup(_) => codes::IO,
            Self::Agent {
                source: ClientError::Connect { .. } | ClientError::Timeout { .. },
            } => codes::TRY_AGAIN_LATER,
            Self::Agent { .. } => codes::AGENT_REFUSED,
            Self::NetlinkSocket { .. } | Self::Runtime { .. } | Self::Stdin { .. } => codes::IO,
        }
    }

    /// The spec's error object; `details` holds the whole chain of causes.
    pub fn to_cni_error(&self, cni_version: &str) -> CniError {
        let mut details = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = Some(self);
        while let Some(e) = cur {
            let s = e.to_string();
            if details.last() != Some(&s) {
                details.push(s);
            }
            cur = e.source();
        }
        CniError {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: details.join(": "),
        }
    }
}

/// The version to put in an error answer: the caller's, if stdin says, else the latest.
pub fn error_version(stdin: &[u8]) -> String {
    peek_version(stdin).unwrap_or_else(|| CniVersion::LATEST.as_str().to_string())
}

/// Runs one invocation; `Ok(Some(json))` is what goes to stdout, `Ok(None)` means
/// success with nothing to print (DEL, CHECK).
pub async fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, PluginError> {
    if env.command == Command::Version {
        return Ok(Some(version_json(&error_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    tracing::debug!(command = %env.command, container_id = %env.container_id, ifname = %env.ifname, network = %conf.name, "invoked");
    match env.command {
        Command::Add => add(env, &conf)
            .await
            .map(|r| Some(r.to_json(conf.cni_version))),
        Command::Del => del(env, &conf).await.map(|()| None),
        Command::Check => check(env, &conf).await.map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

fn node_handle() -> Result<rtnetlink::Handle, PluginError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| PluginError::NetlinkSocket { source })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn owner(env: &CniEnv) -> Owner {
    Owner::new(&env.container_id, &env.ifname)
}

fn wire_spec(env: &CniEnv, conf: &NetConf, ips: Vec<IpAddr>) -> WireSpec {
    WireSpec {
        host_ifname: host_veth_name(&env.container_id, &env.ifname),
        pod_ifname: env.ifname.clone(),
        ips,
        mtu: conf.mtu,
    }
}

async fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult, PluginError> {
    let netns_path = env
        .netns
        .as_deref()
        .ok_or(EnvError::Missing { var: "CNI_NETNS" })?;
    // Before allocating: a container that is already gone must not cost an address.
    let netns = Netns::open(netns_path)?;
    let host = node_handle()?;
    let ipam = ipam::from_config(&conf.ipam, &conf.name);
    let owner = owner(env);
    let allocations = ipam.allocate(&owner)?;
    let spec = wire_spec(env, conf, allocations.iter().map(|a| a.ip).collect());

    match add_after_ipam(env, conf, &host, &netns, &spec, &allocations).await {
        Ok(result) => Ok(result),
        Err(e) => {
            tracing::warn!(error = %e, container_id = %env.container_id, "ADD failed; rolling back");
            if let PluginError::Agent { source } = &e
                && !matches!(source, ClientError::Connect { .. })
            {
                // The agent may have half-taken the endpoint before failing.
                let client = Client::new(&conf.agent_socket).with_timeout(UNREGISTER_TIMEOUT);
                if let Err(u) = client.unregister(&env.container_id, &env.ifname).await {
                    tracing::warn!(error = %u, "rollback: unregister failed");
                }
            }
            if let Err(u) = setup::unwire(&host, &spec.host_ifname).await {
                tracing::error!(error = %u, ifname = %spec.host_ifname, "rollback: cannot delete host veth");
            }
            if let Err(r) = ipam.release(&owner) {
                tracing::error!(error = %r, "rollback: cannot release addresses");
            }
            Err(e)
        }
    }
}

async fn add_after_ipam(
    env: &CniEnv,
    conf: &NetConf,
    host: &rtnetlink::Handle,
    netns: &Netns,
    spec: &WireSpec,
    allocations: &[Allocation],
) -> Result<CniResult, PluginError> {
    let wired = setup::wire(host, netns, spec).await?;
    let registration = EndpointRegistration {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.path().display().to_string(),
        namespace: env.args.pod_namespace().to_string(),
        pod: env.args.pod_name().to_string(),
        host_ifname: wired.host.name.clone(),
        host_ifindex: wired.host.index,
        ips: spec.ips.clone(),
        mac: wired.pod.mac.clone(),
    };
    let endpoint = Client::new(&conf.agent_socket)
        .register(&registration)
        .await
        .map_err(|source| PluginError::Agent { source })?;
    tracing::info!(endpoint_id = endpoint.id, attached = endpoint.attached, host_ifname = %wired.host.name, "endpoint registered");
    Ok(build_result(netns, &wired, allocations))
}

/// The ADD result for a wired attachment (host veth = interface 0, pod = 1).
pub fn build_result(netns: &Netns, wired: &Wired, allocations: &[Allocation]) -> CniResult {
    let interfaces = vec![
        Interface {
            name: wired.host.name.clone(),
            mac: wired.host.mac.clone(),
            mtu: wired.host.mtu,
            sandbox: None,
        },
        Interface {
            name: wired.pod.name.clone(),
            mac: wired.pod.mac.clone(),
            mtu: wired.pod.mtu,
            sandbox: Some(netns.path().display().to_string()),
        },
    ];
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for a in allocations {
        let gateway = match a.ip {
            IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
            IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
        };
        ips.push(IpConfig {
            address: setup::host_prefix(a.ip),
            gateway: Some(gateway),
            interface: Some(1),
        });
        if a.ip.is_ipv4() {
            routes.push(Route {
                dst: setup::host_prefix(gateway),
                gw: None,
            });
        }
        let any = match a.ip {
            IpAddr::V4(_) => "0.0.0.0/0",
            IpAddr::V6(_) => "::/0",
        };
        routes.push(Route {
            dst: any.parse().expect("static CIDR"),
            gw: Some(gateway),
        });
    }
    CniResult {
        interfaces,
        ips,
        routes,
    }
}

async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), PluginError> {
    let client = Client::new(&conf.agent_socket).with_timeout(UNREGISTER_TIMEOUT);
    if let Err(e) = client.unregister(&env.container_id, &env.ifname).await {
        // Local cleanup still happens; the agent forgets endpoints whose interface vanished.
        tracing::warn!(error = %e, container_id = %env.container_id, "cannot unregister the endpoint from the agent; cleaning up locally");
    }
    let host = node_handle()?;
    let host_ifname = host_veth_name(&env.container_id, &env.ifname);
    let deleted = setup::unwire(&host, &host_ifname).await?;
    let released = ipam::from_config(&conf.ipam, &conf.name).release(&owner(env))?;
    tracing::info!(host_ifname, deleted, released = ?released, "DEL done");
    Ok(())
}

async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), PluginError> {
    if conf.cni_version < CniVersion::V0_4_0 {
        return Err(PluginError::CheckUnsupported(conf.cni_version));
    }
    let netns_path = env
        .netns
        .as_deref()
        .ok_or(EnvError::Missing { var: "CNI_NETNS" })?;
    let netns = Netns::open(netns_path)?;
    let allocations = ipam::from_config(&conf.ipam, &conf.name).lookup(&owner(env))?;
    if allocations.is_empty() {
        return Err(PluginError::CheckFailed(format!(
            "no address is allocated to container {} interface {}",
            env.container_id, env.ifname
        )));
    }
    let ips: Vec<IpAddr> = allocations.iter().map(|a| a.ip).collect();
    if let Some(prev) = &conf.prev_result {
        let prev = CniResult::from_json(prev).map_err(|e| ConfigError::Invalid {
            field: "prevResult".to_string(),
            reason: e.to_string(),
        })?;
        let theirs: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
        let ours: BTreeSet<IpAddr> = ips.iter().copied().collect();
        if theirs != ours {
            return Err(PluginError::CheckFailed(format!(
                "prevResult lists addresses {theirs:?} but IPAM holds {ours:?}"
            )));
        }
    }
    let host = node_handle()?;
    setup::check(&host, &netns, &wire_spec(env, conf, ips)).await?;
    Ok(())
}
