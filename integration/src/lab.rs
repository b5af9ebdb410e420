//! The lab: a node network namespace running `weir agent`, pods as network
//! namespaces networked by `weir-cni`, servers in the pods, probes between
//! them, and the agent's outputs (flow log, metrics, status).
//!
//! Owns the life of everything a run makes, from the run record written
//! before anything exists to the removal of all of it in [`Lab::shutdown`] or
//! `Drop`. Never touches the machine's own interfaces: the node namespace has
//! no link to the outside, and every name carries the `weirlab-` prefix.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use weir_localapi::{Client, ClientError, Status};

use crate::agent::{Agent, AgentConfig, AgentError, AgentStdout, FlowLog};
use crate::cgroup::{self, CgroupError};
use crate::cni::{self, CniError, Plugin};
use crate::manifests::{self, ManifestError};
use crate::netns::{self, NetnsError};
use crate::probe::{self, ProbeResult, ProbeSpec};
use crate::process::{ProcessRef, output_with_timeout, stop_child};
use crate::record::{self, PREFIX, RecordError, RunRecord, Sweep};
use crate::scenario::{self, ScenarioError, Target};
use crate::serve::{self, ServeError};
use crate::spec::{Family, NamespaceSpec, PodSpec, is_dns_label, split_pod_key};

/// Failures of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Reading or writing the run record failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A network namespace step failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The agent could not be started or did not become ready.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A CNI call failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Writing a manifest failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A spec, a placeholder or a probe is invalid (names the field).
    #[error(transparent)]
    Spec(#[from] ScenarioError),
    /// A hostNetwork pod's cgroup could not be made or removed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The agent's local API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// A pod's servers could not be bound (in-process servers).
    #[error("servers of pod {pod}: {source}")]
    Serve {
        pod: String,
        #[source]
        source: ServeError,
    },
    /// `weir-lab serve` did not start for a pod.
    #[error("servers of pod {pod}: {message}")]
    ServerProcess { pod: String, message: String },
    /// A file or process step failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// No pod of that name (`ns/name`).
    #[error("unknown pod {0:?}")]
    UnknownPod(String),
    /// No namespace of that name.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// A probe destination cannot be resolved to an address.
    #[error("probe to {to:?}: {message}")]
    Target { to: String, message: String },
    /// The `weir-lab probe` process of a hostNetwork pod's probe failed.
    #[error("probe from {from} to {to}: {message}")]
    ProbeProcess {
        from: String,
        to: String,
        message: String,
    },
    /// A hostNetwork pod cannot be set up as asked.
    #[error("hostNetwork pod {pod}: {message}")]
    HostNetwork { pod: String, message: String },
    /// No flow log record matched within the time given.
    #[error("no matching flow in the flow log within {0:?}")]
    NoMatchingFlow(Duration),
    /// The metrics endpoint could not be read.
    #[error("GET http://{addr}/metrics: {message}")]
    Metrics { addr: String, message: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Directory of the current executable with a trailing `deps` removed, i.e.
/// `target/debug` for binaries and for test executables alike.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// `name` in [`target_dir`].
pub fn sibling_binary(name: &str) -> PathBuf {
    target_dir().join(name)
}

/// How to build a lab. `Default` finds the binaries next to the current
/// executable (see [`target_dir`]).
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The `weir` binary (runs `weir agent`).
    pub weir_bin: PathBuf,
    /// The `weir-cni` binary.
    pub cni_bin: PathBuf,
    /// `weir-lab` to run pod servers as `weir-lab serve` processes inside
    /// the pods; None: serve from this process on sockets made in the pods
    /// (the servers then end with this process).
    pub serve_bin: Option<PathBuf>,
    /// Node name given to the agent and written into pods' `spec.nodeName`.
    pub node_name: String,
    /// Agent metrics address, in the machine's namespace (default `127.0.0.1:0`).
    pub metrics_addr: String,
    /// Agent socket; None: `<lab dir>/weir.sock`.
    pub socket: Option<PathBuf>,
    /// Flow log: None means `<lab dir>/flows.json` (what [`Lab::flows`] reads).
    pub flow_log: Option<FlowLog>,
    /// `json` (default) or `compact`.
    pub flow_log_format: String,
    /// Agent `--aggregation` (`full` or `none`); None: the agent's default.
    pub aggregation: Option<String>,
    /// Pod CIDRs of the node (IPv4 and IPv6).
    pub pod_cidrs: Vec<String>,
    /// The node's own addresses, on `lo` in the node namespace (default
    /// 172.31.0.1 and fd00:172:31::1); the addresses of hostNetwork pods.
    pub node_ips: Vec<IpAddr>,
    /// Default probe timeout (1 s).
    pub probe_timeout: Duration,
    /// Probes in flight at once (512: a step of 288 dropped probes, a 3x3
    /// matrix on four ports, takes one timeout).
    pub probe_concurrency: usize,
    /// Pods set up at once (8).
    pub setup_concurrency: usize,
    /// Time the agent gets to pick up changed manifests (1 s).
    pub settle: Duration,
    /// How long to wait for the agent's `ready` (60 s: a debug build loads slowly).
    pub agent_ready_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace for the agent (5 s).
    pub agent_stop_timeout: Duration,
    /// Where the agent's stdout goes (with `FlowLog::Stdout`, the flows).
    pub agent_stdout: AgentStdout,
    /// More arguments for `weir agent`.
    pub agent_args: Vec<String>,
}

impl LabOptions {
    /// Options with these binaries and defaults for everything else.
    pub fn new(weir_bin: impl Into<PathBuf>, cni_bin: impl Into<PathBuf>) -> Self {
        let serve = sibling_binary("weir-lab");
        Self {
            weir_bin: weir_bin.into(),
            cni_bin: cni_bin.into(),
            serve_bin: serve.is_file().then_some(serve),
            node_name: "weir-lab".into(),
            metrics_addr: "127.0.0.1:0".into(),
            socket: None,
            flow_log: None,
            flow_log_format: "json".into(),
            aggregation: None,
            pod_cidrs: vec!["10.244.0.0/24".into(), "fd00:10:244::/112".into()],
            node_ips: vec![
                IpAddr::from([172, 31, 0, 1]),
                IpAddr::from([0xfd00, 0x172, 0x31, 0, 0, 0, 0, 1]),
            ],
            probe_timeout: probe::DEFAULT_TIMEOUT,
            probe_concurrency: 512,
            setup_concurrency: 8,
            settle: Duration::from_secs(1),
            agent_ready_timeout: Duration::from_secs(60),
            agent_stop_timeout: Duration::from_secs(5),
            agent_stdout: AgentStdout::Null,
            agent_args: Vec::new(),
        }
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        Self::new(sibling_binary("weir"), sibling_binary("weir-cni"))
    }
}

/// A pod's servers.
#[derive(Debug)]
enum Servers {
    Process(Child),
    Task(tokio::task::JoinHandle<()>),
}

/// A pod as the lab keeps it. Every part is optional so that a pod whose
/// set-up failed halfway is still removed completely.
#[derive(Debug)]
struct Pod {
    spec: PodSpec,
    uid: String,
    /// Its network namespace: the node's for a hostNetwork pod.
    netns: String,
    /// A hostNetwork pod's cgroup directory (recorded; created in set-up).
    cgroup: Option<PathBuf>,
    container_id: String,
    /// CNI ADD was attempted: DEL is owed.
    added: bool,
    ips: Vec<IpAddr>,
    servers: Option<Servers>,
}

impl Pod {
    fn netns_path(&self) -> PathBuf {
        netns::path(&self.netns)
    }

    /// Where its processes run: inside its namespace, and for a hostNetwork
    /// pod also inside its cgroup.
    fn place(&self) -> Place {
        Place {
            netns: self.netns_path(),
            cgroup: self.cgroup.clone(),
        }
    }

    fn call(&self) -> (String, PathBuf) {
        (self.container_id.clone(), self.netns_path())
    }
}

/// Where a pod's processes run: the namespace to enter and, for a
/// hostNetwork pod, the cgroup to join (between fork and exec).
#[derive(Clone, Debug)]
struct Place {
    netns: PathBuf,
    cgroup: Option<PathBuf>,
}

impl Place {
    /// Makes `cmd` start inside this place.
    fn apply(&self, cmd: &mut Command) -> Result<(), LabError> {
        let fd = netns::open(&self.netns)?;
        let procs = self.cgroup.as_deref().map(cgroup::open_procs).transpose()?;
        // SAFETY: only setns(2) and write(2), both async-signal-safe, on
        // descriptors that stay open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(p) = &procs {
                    cgroup::enter_raw(p)?;
                }
                netns::setns_raw(&fd)
            });
        }
        Ok(())
    }
}

/// What pod set-up needs, shared by the set-up tasks.
struct PodCtx {
    plugin: Plugin,
    manifests_dir: PathBuf,
    node_name: String,
    /// The node's addresses (those of hostNetwork pods).
    node_ips: Vec<IpAddr>,
    serve_bin: Option<PathBuf>,
    lab_dir: PathBuf,
    record: Arc<Mutex<RunRecord>>,
}

impl PodCtx {
    fn record_process(&self, p: ProcessRef) -> Result<(), RecordError> {
        let mut rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
        rec.processes.push(p);
        rec.save()
    }
}

/// Where a kept lab's parts are (`weir-lab run --keep`).
#[derive(Clone, Debug, Serialize)]
pub struct KeptLab {
    pub run_id: String,
    pub dir: PathBuf,
    pub node_netns: String,
    /// `ns/name` -> network namespace name.
    pub pod_netns: BTreeMap<String, String>,
    pub socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub agent_pid: Option<u32>,
    pub flow_log: Option<PathBuf>,
    pub agent_log: PathBuf,
}

/// A running lab. Dropping it removes everything it made.
pub struct Lab {
    run_id: String,
    dir: PathBuf,
    options: LabOptions,
    record: Arc<Mutex<RunRecord>>,
    node_netns: String,
    socket: PathBuf,
    flow_log: Option<PathBuf>,
    agent: Option<Agent>,
    /// How the agent was started, for [`Lab::restart_agent`].
    agent_cfg: Option<AgentConfig>,
    client: Client,
    metrics_addr: Option<SocketAddr>,
    namespaces: BTreeMap<String, NamespaceSpec>,
    pods: BTreeMap<String, Pod>,
    next_pod: usize,
    /// `weir-lab probe` processes of hostNetwork pods' probes at once.
    host_probes: Arc<tokio::sync::Semaphore>,
    /// The run's cgroup directory, once a hostNetwork pod needs it.
    cgroup_dir: Option<PathBuf>,
    applied: Vec<Value>,
    ctx: Arc<PodCtx>,
    /// Set once everything is removed (or handed over by `keep`).
    done: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("run_id", &self.run_id)
            .field("dir", &self.dir)
            .field("pods", &self.pods.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The link in the node namespace that carries the node's addresses (the
/// kernel here has no dummy links; an address on `lo` is just as local).
pub const NODE_LINK: &str = "lo";

/// `weir-lab probe` processes (hostNetwork pods' probes) at once: each costs
/// a process start and a few descriptors.
const HOST_PROBE_PROCESSES: usize = 128;

/// Raises this process's soft limit of open files to its hard limit: a step
/// of several hundred concurrent probes holds a socket (and briefly a
/// namespace descriptor) per probe. Best effort.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, soft, hard, "cannot raise the open files limit");
    }
}

fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

impl Lab {
    /// Removes what dead runs left, then builds the node namespace and starts
    /// the agent; returns once the agent is ready.
    pub async fn start(options: LabOptions) -> Result<Lab, LabError> {
        let swept = tokio::task::spawn_blocking(|| record::sweep(Sweep::DeadUnkept))
            .await
            .unwrap_or_default();
        if !swept.is_empty() {
            tracing::info!(runs = ?swept.runs, netns = ?swept.netns, "removed what dead lab runs left");
        }
        for e in &swept.errors {
            tracing::warn!(error = %e, "clean-up of a dead lab run");
        }

        let run_id = new_run_id();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{run_id}"));
        let node_netns = format!("{PREFIX}{run_id}-node");
        let socket = options
            .socket
            .clone()
            .unwrap_or_else(|| dir.join("weir.sock"));
        let flow_log_target = options
            .flow_log
            .clone()
            .unwrap_or_else(|| FlowLog::File(dir.join("flows.json")));
        let flow_log = match &flow_log_target {
            FlowLog::File(p) => Some(p.clone()),
            _ => None,
        };

        let mut rec = RunRecord::new(&run_id);
        rec.lab_dir = Some(dir.clone());
        rec.netns.push(node_netns.clone());
        if !socket.starts_with(&dir) {
            rec.socket = Some(socket.clone());
            // Record missing parents first, so a crash never leaves them.
            let mut missing = Vec::new();
            let mut p = socket.parent();
            while let Some(d) = p {
                if d.as_os_str().is_empty() || d.exists() {
                    break;
                }
                missing.push(d.to_path_buf());
                p = d.parent();
            }
            rec.created_dirs = missing;
        }
        rec.save()?;
        let record = Arc::new(Mutex::new(rec));
        let manifests_dir = dir.join("manifests");
        let node_path = netns::path(&node_netns);
        let plugin = Plugin::new(
            &options.cni_bin,
            &socket,
            &options.pod_cidrs,
            &dir.join("ipam"),
            &node_path,
        );
        let ctx = Arc::new(PodCtx {
            plugin,
            manifests_dir: manifests_dir.clone(),
            node_name: options.node_name.clone(),
            node_ips: options.node_ips.clone(),
            serve_bin: options.serve_bin.clone(),
            lab_dir: dir.clone(),
            record: record.clone(),
        });
        // From here on, an error drops `lab`, which removes what exists.
        let mut lab = Lab {
            run_id,
            dir: dir.clone(),
            client: Client::new(&socket).with_timeout(Duration::from_secs(10)),
            options,
            record,
            node_netns: node_netns.clone(),
            socket: socket.clone(),
            flow_log,
            agent: None,
            agent_cfg: None,
            metrics_addr: None,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            next_pod: 0,
            host_probes: Arc::new(tokio::sync::Semaphore::new(HOST_PROBE_PROCESSES)),
            cgroup_dir: None,
            applied: Vec::new(),
            ctx,
            done: false,
        };

        for d in [&dir, &manifests_dir, &dir.join("ipam")] {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        let name = node_netns.clone();
        tokio::task::spawn_blocking(move || netns::create(&name))
            .await
            .map_err(|_| NetnsError::ThreadPanicked(node_netns.clone()))??;
        netns::run_in(&node_path, || -> io::Result<()> {
            netns::write_sysctl("net.ipv4.ip_forward", "1")?;
            netns::write_sysctl("net.ipv6.conf.all.forwarding", "1")
        })?
        .map_err(io_err("enable forwarding in the node namespace"))?;
        // The node's own addresses: pods reach hostNetwork pods there, and
        // the node's traffic to pods comes from there.
        let node_ips = lab.options.node_ips.clone();
        netns::run_in(&node_path, move || {
            netns::add_addresses(NODE_LINK, &node_ips)
        })?
        .map_err(io_err("give the node namespace its addresses"))?;
        // A node name that cannot be a file name gets no Node manifest
        // rather than no lab: the agent does not need one today.
        let node_name = &lab.options.node_name;
        if !node_name.is_empty() && !node_name.contains('/') && !node_name.starts_with('.') {
            manifests::write(
                &lab.ctx.manifests_dir,
                &manifests::node_file(node_name),
                &[manifests::node(
                    node_name,
                    &lab.options.pod_cidrs,
                    &lab.options.node_ips,
                )],
            )?;
        } else {
            tracing::warn!(%node_name, "no Node manifest: the node name is not a file name");
        }
        raise_open_files_limit();

        let cfg = AgentConfig {
            weir_bin: lab.options.weir_bin.clone(),
            manifests_dir,
            node_name: lab.options.node_name.clone(),
            socket,
            metrics_addr: lab.options.metrics_addr.clone(),
            flow_log: flow_log_target,
            flow_log_format: lab.options.flow_log_format.clone(),
            aggregation: lab.options.aggregation.clone(),
            netns: node_path,
            log_file: dir.join("agent.log"),
            stdout: lab.options.agent_stdout,
            extra_args: lab.options.agent_args.clone(),
        };
        lab.agent_cfg = Some(cfg);
        lab.start_agent().await?;
        tracing::info!(run_id = %lab.run_id, dir = %dir.display(), "lab ready");
        Ok(lab)
    }

    /// Starts the agent (again, after [`Lab::stop_agent`]) and waits until
    /// it is ready.
    pub async fn start_agent(&mut self) -> Result<(), LabError> {
        let cfg = self
            .agent_cfg
            .as_ref()
            .expect("the agent's configuration is set at start");
        let agent = Agent::spawn(cfg)?;
        if let Some(p) = ProcessRef::of(agent.pid() as i32, "agent") {
            self.ctx.record_process(p)?;
        }
        let agent = self.agent.insert(agent);
        let status = agent.wait_ready(self.options.agent_ready_timeout).await?;
        self.metrics_addr = status.metrics_addr.parse().ok();
        Ok(())
    }

    /// Restarts the agent as a node's service manager does: stops it
    /// ([`Lab::stop_agent`]) and starts it again with the same options, its
    /// log appended to the same file; returns when the new agent is ready.
    /// Pods and their interfaces stay as they are.
    pub async fn restart_agent(&mut self) -> Result<(), LabError> {
        self.stop_agent().await?;
        self.start_agent().await
    }

    /// Stops the agent (SIGTERM, then SIGKILL after the stop timeout); the
    /// pods stay. [`Lab::start_agent`] starts it again.
    pub async fn stop_agent(&mut self) -> Result<(), LabError> {
        if let Some(mut old) = self.agent.take() {
            let grace = self.options.agent_stop_timeout;
            tokio::task::spawn_blocking(move || old.stop(grace))
                .await
                .map_err(|e| LabError::Io {
                    what: "stopping the agent".into(),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        Ok(())
    }

    /// This run's id (in every name the lab makes).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The lab's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent's manifests directory.
    pub fn manifests_dir(&self) -> &Path {
        &self.ctx.manifests_dir
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The flow log file, if the flow log goes to a file.
    pub fn flow_log_path(&self) -> Option<&Path> {
        self.flow_log.as_deref()
    }

    /// The agent's log (its stderr).
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Name of the node's network namespace.
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The agent's bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Agent::pid)
    }

    /// The agent's stdout pipe (with `agent_stdout: AgentStdout::Piped`);
    /// whoever takes it must keep reading it.
    pub fn take_agent_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.agent.as_mut()?.take_stdout()
    }

    /// Whether the agent process still runs.
    pub fn agent_running(&self) -> bool {
        let rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
        rec.processes
            .iter()
            .any(|p| p.what == "agent" && p.is_alive())
    }

    /// The options the lab was started with.
    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// Adds a namespace (writes its manifest).
    pub fn add_namespace(&mut self, ns: NamespaceSpec) -> Result<(), LabError> {
        if !is_dns_label(&ns.name) {
            return Err(ScenarioError::Invalid {
                field: "namespace.name".into(),
                message: format!("{:?} is not a valid namespace name", ns.name),
            }
            .into());
        }
        manifests::write(
            &self.ctx.manifests_dir,
            &manifests::namespace_file(&ns.name),
            &[manifests::namespace(&ns)],
        )?;
        self.namespaces.insert(ns.name.clone(), ns);
        Ok(())
    }

    /// Adds one pod; see [`Lab::add_pods`].
    pub async fn add_pod(&mut self, pod: PodSpec) -> Result<(), LabError> {
        self.add_pods(vec![pod]).await
    }

    /// Adds pods, several at once: network namespace, Pod manifest, CNI ADD,
    /// manifest with the pod's IPs, servers listening; then lets the agent
    /// settle. Pods whose set-up failed are still removed by shutdown; the
    /// first error is returned.
    pub async fn add_pods(&mut self, pods: Vec<PodSpec>) -> Result<(), LabError> {
        let mut staged = Vec::with_capacity(pods.len());
        for spec in pods {
            if !self.namespaces.contains_key(&spec.namespace) {
                return Err(LabError::UnknownNamespace(spec.namespace));
            }
            if !is_dns_label(&spec.name) {
                return Err(ScenarioError::Invalid {
                    field: "pod.name".into(),
                    message: format!("{:?} is not a valid pod name", spec.name),
                }
                .into());
            }
            scenario::validate_ports(&spec, &format!("pod {}.ports", spec.key()))?;
            let key = spec.key();
            if self.pods.contains_key(&key) || staged.iter().any(|p: &Pod| p.spec.key() == key) {
                return Err(ScenarioError::Invalid {
                    field: "pod.name".into(),
                    message: format!("pod {key} exists already"),
                }
                .into());
            }
            if spec.host_network {
                let others = self.pods.values().chain(staged.iter()).map(|p| &p.spec);
                self.check_host_pod(&spec, others)?;
                let dir = match &self.cgroup_dir {
                    Some(d) => d.clone(),
                    None => cgroup::run_dir(&cgroup::mount_point()?, &self.run_id),
                };
                self.cgroup_dir = Some(dir.clone());
                let uid = uuid::Uuid::new_v4().to_string();
                staged.push(Pod {
                    container_id: String::new(),
                    netns: self.node_netns.clone(),
                    cgroup: Some(cgroup::pod_dir(&dir, &uid)),
                    uid,
                    spec,
                    added: false,
                    ips: Vec::new(),
                    servers: None,
                });
                continue;
            }
            let netns = format!("{PREFIX}{}-p{}", self.run_id, self.next_pod);
            self.next_pod += 1;
            staged.push(Pod {
                container_id: netns.clone(),
                netns,
                cgroup: None,
                uid: uuid::Uuid::new_v4().to_string(),
                spec,
                added: false,
                ips: Vec::new(),
                servers: None,
            });
        }
        {
            // Recorded before they exist, so a crash never leaves one unlisted.
            let mut rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
            for pod in &staged {
                match &pod.cgroup {
                    None => rec.netns.push(pod.netns.clone()),
                    Some(dir) => {
                        // The run's directory before the first pod's.
                        if let Some(run_dir) = &self.cgroup_dir
                            && !rec.cgroups.contains(run_dir)
                        {
                            rec.cgroups.push(run_dir.clone());
                        }
                        rec.cgroups.push(dir.clone());
                    }
                }
            }
            rec.save()?;
        }
        let ctx = self.ctx.clone();
        let results: Vec<(Pod, Result<(), LabError>)> = futures::stream::iter(staged)
            .map(|pod| set_up_pod(ctx.clone(), pod))
            .buffer_unordered(self.options.setup_concurrency.max(1))
            .collect()
            .await;
        let mut first_err = None;
        for (pod, result) in results {
            if let Err(e) = result {
                tracing::warn!(pod = %pod.spec.key(), error = %e, "pod set-up failed");
                first_err.get_or_insert(e);
            }
            self.pods.insert(pod.spec.key(), pod);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // The agent learns labels and addresses from the manifests just
        // written; until it has, flows of these pods are not enriched.
        self.settle().await;
        Ok(())
    }

    /// Removes one pod: servers, CNI DEL, namespace, manifest.
    pub async fn remove_pod(&mut self, key: &str) -> Result<(), LabError> {
        let pod = self
            .pods
            .remove(key)
            .ok_or_else(|| LabError::UnknownPod(key.to_string()))?;
        let ctx = self.ctx.clone();
        tokio::task::spawn_blocking(move || tear_down_pod(&ctx, pod))
            .await
            .map_err(|e| LabError::Io {
                what: format!("remove pod {key}"),
                source: io::Error::other(e.to_string()),
            })?
    }

    /// Keys (`ns/name`) of the pods.
    pub fn pods(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// The pod's IPv4 address (or its only address if it has no IPv4).
    pub fn pod_ip(&self, pod: &str) -> Option<IpAddr> {
        let p = self.pods.get(pod)?;
        p.ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(p.ips.first())
            .copied()
    }

    /// The pod's IPv6 address.
    pub fn pod_ip6(&self, pod: &str) -> Option<IpAddr> {
        self.pod_ip_of(pod, Family::V6)
    }

    /// The pod's address of `family`.
    pub fn pod_ip_of(&self, pod: &str, family: Family) -> Option<IpAddr> {
        self.pods
            .get(pod)?
            .ips
            .iter()
            .find(|ip| family.matches(ip))
            .copied()
    }

    /// All pods' addresses.
    pub fn pod_ips(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.pods
            .iter()
            .map(|(k, p)| (k.clone(), p.ips.clone()))
            .collect()
    }

    /// Path of the pod's network namespace (the node's for a hostNetwork pod).
    pub fn pod_netns_path(&self, pod: &str) -> Option<PathBuf> {
        self.pods.get(pod).map(Pod::netns_path)
    }

    /// The cgroup v2 directory of a hostNetwork pod
    /// (`<cgroup2 mount>/weirlab-<run_id>/pod<UID>`); None for other pods.
    pub fn pod_cgroup(&self, pod: &str) -> Option<&Path> {
        self.pods.get(pod)?.cgroup.as_deref()
    }

    /// The node's own addresses (also those of hostNetwork pods).
    pub fn node_ips(&self) -> &[IpAddr] {
        &self.options.node_ips
    }

    /// Checks that a hostNetwork pod can be added next to `others`: its
    /// processes need `weir-lab` (they must start inside its cgroup), and
    /// hostNetwork pods share the node's ports.
    fn check_host_pod<'a>(
        &self,
        spec: &PodSpec,
        others: impl Iterator<Item = &'a PodSpec>,
    ) -> Result<(), LabError> {
        let err = |message: String| LabError::HostNetwork {
            pod: spec.key(),
            message,
        };
        if self.options.serve_bin.is_none() {
            return Err(err(
                "its servers and probes run as `weir-lab` processes inside its cgroup: \
                 set LabOptions::serve_bin"
                    .into(),
            ));
        }
        if self.options.node_ips.is_empty() {
            return Err(err(
                "the node has no addresses (LabOptions::node_ips)".into()
            ));
        }
        for other in others.filter(|o| o.host_network) {
            if let Some(p) = spec.ports.iter().find(|p| {
                other
                    .ports
                    .iter()
                    .any(|q| q.port == p.port && q.protocol == p.protocol)
            }) {
                return Err(ScenarioError::Invalid {
                    field: format!("pod {}.ports", spec.key()),
                    message: format!(
                        "{}/{} is already served by hostNetwork pod {} (hostNetwork pods share the node's ports)",
                        p.port,
                        p.protocol,
                        other.key()
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Replaces the labels of a namespace (`target` = `ns`) or a pod
    /// (`target` = `ns/name`), rewrites its manifest, and lets the agent settle.
    pub async fn set_labels(
        &mut self,
        target: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        self.write_labels(target, labels)?;
        self.settle().await;
        Ok(())
    }

    /// Makes a step's desired state: first the complete new label sets of
    /// pods (`ns/name`) and namespaces (`ns`), rewriting their manifests
    /// (pods are not recreated: they keep their namespace and addresses),
    /// then `apply` as [`Lab::apply`] does; then one settle if anything
    /// changed. Returns whether anything changed.
    pub async fn set_state(
        &mut self,
        labels: &BTreeMap<String, BTreeMap<String, String>>,
        apply: &[Value],
    ) -> Result<bool, LabError> {
        let mut changed = false;
        for (target, set) in labels {
            changed |= self.write_labels(target, set.clone())?;
        }
        changed |= self.write_apply(apply)?;
        if changed {
            self.settle().await;
        }
        Ok(changed)
    }

    /// Replaces the labels of a pod or namespace and rewrites its manifest
    /// if they differ; returns whether they did.
    fn write_labels(
        &mut self,
        target: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<bool, LabError> {
        if split_pod_key(target).is_some() {
            let pod = self
                .pods
                .get_mut(target)
                .ok_or_else(|| LabError::UnknownPod(target.to_string()))?;
            if pod.spec.labels == labels {
                return Ok(false);
            }
            pod.spec.labels = labels;
            manifests::write(
                &self.ctx.manifests_dir,
                &manifests::pod_file(&pod.spec.namespace, &pod.spec.name),
                &[manifests::pod(
                    &pod.spec,
                    &pod.uid,
                    &self.ctx.node_name,
                    &pod.ips,
                )],
            )?;
        } else {
            let ns = self
                .namespaces
                .get_mut(target)
                .ok_or_else(|| LabError::UnknownNamespace(target.to_string()))?;
            if ns.labels == labels {
                return Ok(false);
            }
            ns.labels = labels;
            manifests::write(
                &self.ctx.manifests_dir,
                &manifests::namespace_file(&ns.name),
                &[manifests::namespace(ns)],
            )?;
        }
        Ok(true)
    }

    /// Replaces placeholders (`${ip:ns/pod}` ...) in `docs`; errors name
    /// `field[i]...`.
    pub fn resolve_placeholders(
        &self,
        docs: &[Value],
        field: &str,
    ) -> Result<Vec<Value>, ScenarioError> {
        let mut lookup = |pod: &str, family: Family| self.pod_ip_of(pod, family);
        docs.iter()
            .enumerate()
            .map(|(i, d)| scenario::substitute(d, &format!("{field}[{i}]"), &mut lookup))
            .collect()
    }

    /// Makes `manifests` (placeholders allowed) the desired state, replacing
    /// the previous `apply`, and lets the agent settle if anything changed.
    pub async fn apply(&mut self, manifests: &[Value]) -> Result<(), LabError> {
        if self.write_apply(manifests)? {
            self.settle().await;
        }
        Ok(())
    }

    /// Writes `apply.yaml` if the resolved documents differ from the
    /// current ones; returns whether they did.
    fn write_apply(&mut self, manifests: &[Value]) -> Result<bool, LabError> {
        let docs = self.resolve_placeholders(manifests, "apply")?;
        if docs == self.applied {
            return Ok(false);
        }
        manifests::write(&self.ctx.manifests_dir, manifests::APPLY_FILE, &docs)?;
        self.applied = docs;
        Ok(true)
    }

    /// The current `apply` state, placeholders resolved.
    pub fn applied(&self) -> &[Value] {
        &self.applied
    }

    /// Waits the settle time: the agent has no "caught up with the
    /// manifests" signal, so the lab gives it time.
    pub async fn settle(&self) {
        tokio::time::sleep(self.options.settle).await;
    }

    fn resolve(&self, spec: &ProbeSpec) -> Result<(Place, IpAddr), LabError> {
        let src = self
            .pods
            .get(&spec.from)
            .ok_or_else(|| LabError::UnknownPod(spec.from.clone()))?;
        let target_err = |message: String| LabError::Target {
            to: spec.to.clone(),
            message,
        };
        let dst = match Target::parse(&spec.to).map_err(target_err)? {
            Target::Ip(ip) => ip,
            Target::Pod(key) => {
                if !self.pods.contains_key(&key) {
                    return Err(LabError::UnknownPod(key));
                }
                self.pod_ip_of(&key, spec.family).ok_or_else(|| {
                    target_err(format!("pod has no IPv{} address", u8::from(spec.family)))
                })?
            }
            Target::Service { namespace, name } => {
                let ips =
                    manifests::service_ips(&self.applied, &namespace, &name).ok_or_else(|| {
                        target_err(format!(
                            "no Service {namespace}/{name} in the applied manifests"
                        ))
                    })?;
                ips.into_iter()
                    .find(|ip| spec.family.matches(ip))
                    .ok_or_else(|| {
                        target_err(format!(
                            "Service {namespace}/{name} has no IPv{} cluster IP",
                            u8::from(spec.family)
                        ))
                    })?
            }
        };
        Ok((src.place(), dst))
    }

    /// Runs one probe from inside the source pod (for a hostNetwork pod: from
    /// a `weir-lab probe` process inside its cgroup, in the node's namespace).
    pub async fn probe(&self, spec: &ProbeSpec) -> Result<ProbeResult, LabError> {
        let (src, dst) = self.resolve(spec)?;
        self.run_probe(spec, src, dst).await
    }

    async fn run_probe(
        &self,
        spec: &ProbeSpec,
        src: Place,
        dst: IpAddr,
    ) -> Result<ProbeResult, LabError> {
        let timeout = spec.timeout.unwrap_or(self.options.probe_timeout);
        let (port, protocol) = (spec.port, spec.protocol);
        let out = if src.cgroup.is_some() {
            self.probe_process(spec, &src, dst, timeout).await?
        } else {
            netns::run_in_async(src.netns, move || probe::run(dst, port, protocol, timeout)).await?
        };
        Ok(ProbeResult {
            from: spec.from.clone(),
            to: spec.to.clone(),
            port: spec.port,
            protocol: spec.protocol,
            connected: out.connected,
            reply: out.reply,
            ms: (out.elapsed.as_secs_f64() * 1e6).round() / 1e3,
            dst: Some(dst),
            error: out.error,
            expect: None,
            ok: None,
        })
    }

    /// Runs one probe as a `weir-lab probe` child process started in `src`
    /// (a hostNetwork pod's cgroup in the node's namespace), so that its
    /// socket belongs to the pod's cgroup.
    async fn probe_process(
        &self,
        spec: &ProbeSpec,
        src: &Place,
        dst: IpAddr,
        timeout: Duration,
    ) -> Result<probe::Outcome, LabError> {
        let err = |message: String| LabError::ProbeProcess {
            from: spec.from.clone(),
            to: spec.to.clone(),
            message,
        };
        let bin = self
            .options
            .serve_bin
            .as_ref()
            .ok_or_else(|| err("no weir-lab binary (LabOptions::serve_bin)".into()))?;
        let _slot = self
            .host_probes
            .acquire()
            .await
            .map_err(|_| err("the lab is shutting down".into()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("probe")
            .args(["--dst", &dst.to_string()])
            .args(["--port", &spec.port.to_string()])
            .args(["--protocol", &spec.protocol.to_string()])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        src.apply(&mut cmd)?;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        // The probe ends itself at its timeout; the margin covers a slow start.
        let out = tokio::time::timeout(timeout + Duration::from_secs(10), cmd.output())
            .await
            .map_err(|_| err(format!("{} probe did not finish", bin.display())))?
            .map_err(|e| err(format!("cannot run {} probe: {e}", bin.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        match serde_json::from_str::<probe::OutcomeLine>(line) {
            Ok(l) if out.status.success() => Ok(l.into()),
            _ => Err(err(format!(
                "{} probe failed ({}); stdout: {:?}; stderr: {:?}",
                bin.display(),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }

    /// Runs probes concurrently (at most `probe_concurrency` at once);
    /// results are in the order of `specs`. Every destination is resolved
    /// before any probe runs.
    pub async fn probe_all(&self, specs: &[ProbeSpec]) -> Result<Vec<ProbeResult>, LabError> {
        let resolved = specs
            .iter()
            .map(|s| self.resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        futures::stream::iter(specs.iter().zip(resolved))
            .map(|(spec, (src, dst))| self.run_probe(spec, src, dst))
            .buffered(self.options.probe_concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// The flow log's records so far (one JSON object per line; a partly
    /// written last line is skipped). Empty when the flow log is not a file.
    pub fn flows(&self) -> Result<Vec<Value>, LabError> {
        let Some(path) = &self.flow_log else {
            return Ok(Vec::new());
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        let mut flows = Vec::new();
        for line in io::BufReader::new(file).lines() {
            let line = line.map_err(io_err(format!("read {}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(v) => flows.push(v),
                Err(e) => tracing::debug!(error = %e, "skipping a flow log line that is not JSON"),
            }
        }
        Ok(flows)
    }

    /// Waits until the flow log holds a record for which `matches` holds
    /// and returns all such records; an error after `timeout`.
    pub async fn wait_for_flows(
        &self,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>, LabError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self.flows()?.into_iter().filter(|f| matches(f)).collect();
            if !found.is_empty() {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LabError::NoMatchingFlow(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent's `/metrics` page.
    pub async fn metrics_text(&self) -> Result<String, LabError> {
        let addr = self.metrics_addr.ok_or_else(|| LabError::Metrics {
            addr: self.options.metrics_addr.clone(),
            message: "the agent reports no metrics address".into(),
        })?;
        http_get(addr, "/metrics")
            .await
            .map_err(|message| LabError::Metrics {
                addr: addr.to_string(),
                message,
            })
    }

    /// The agent's status.
    pub async fn agent_status(&self) -> Result<Status, LabError> {
        Ok(self.client.status().await?)
    }

    /// A client of the agent's local API.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `argv` inside the pod's network namespace (e.g. `ping`; for a
    /// hostNetwork pod: in the node's namespace, inside the pod's cgroup) and
    /// returns its output; killed after 60 s.
    pub async fn exec_in_pod(&self, pod: &str, argv: &[&str]) -> Result<Output, LabError> {
        let place = self
            .pods
            .get(pod)
            .map(Pod::place)
            .ok_or_else(|| LabError::UnknownPod(pod.to_string()))?;
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Io {
            what: "exec_in_pod".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        place.apply(&mut cmd)?;
        let what = format!("run {argv:?} in pod {pod}");
        tokio::task::spawn_blocking(move || {
            output_with_timeout(&mut cmd, b"", Duration::from_secs(60))
        })
        .await
        .map_err(|e| LabError::Io {
            what: what.clone(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(|e| LabError::Io {
            what,
            source: io::Error::other(e.to_string()),
        })
    }

    /// Leaves everything running (for a person to look at) and marks the run
    /// as kept, so that only `weir-lab cleanup` removes it.
    pub fn keep(mut self) -> Result<KeptLab, LabError> {
        {
            let mut rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
            rec.kept = true;
            rec.save()?;
        }
        self.done = true;
        Ok(KeptLab {
            run_id: self.run_id.clone(),
            dir: self.dir.clone(),
            node_netns: self.node_netns.clone(),
            pod_netns: self
                .pods
                .iter()
                .map(|(k, p)| (k.clone(), p.netns.clone()))
                .collect(),
            socket: self.socket.clone(),
            metrics_addr: self.metrics_addr,
            agent_pid: self.agent_pid(),
            flow_log: self.flow_log.clone(),
            agent_log: self.agent_log_path(),
        })
    }

    /// Removes everything: servers, pods (CNI DEL), the agent (SIGTERM, then
    /// SIGKILL), namespaces, the lab directory and the run record.
    pub async fn shutdown(mut self) -> Result<(), LabError> {
        let mut parts = self.take_for_teardown();
        tokio::task::spawn_blocking(move || parts.run())
            .await
            .map_err(|e| LabError::Io {
                what: "lab shutdown".into(),
                source: io::Error::other(e.to_string()),
            })?
    }

    fn take_for_teardown(&mut self) -> Teardown {
        self.done = true;
        Teardown {
            pods: std::mem::take(&mut self.pods).into_values().collect(),
            agent: self.agent.take(),
            agent_grace: self.options.agent_stop_timeout,
            ctx: self.ctx.clone(),
            record: self.record.clone(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut parts = self.take_for_teardown();
        if let Err(e) = parts.run() {
            tracing::warn!(error = %e, run_id = %self.run_id, "lab clean-up incomplete");
        }
    }
}

/// Everything shutdown removes, detached from the `Lab` so it can run on a
/// blocking thread.
struct Teardown {
    pods: Vec<Pod>,
    agent: Option<Agent>,
    agent_grace: Duration,
    ctx: Arc<PodCtx>,
    record: Arc<Mutex<RunRecord>>,
}

impl Teardown {
    fn run(&mut self) -> Result<(), LabError> {
        let mut first_err: Option<LabError> = None;
        // Pods first, while the agent can still take the unregistrations.
        let pods = std::mem::take(&mut self.pods);
        let ctx = &self.ctx;
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks(pods, 8)
                .into_iter()
                .map(|batch| {
                    s.spawn(move || {
                        batch
                            .into_iter()
                            .filter_map(|p| tear_down_pod(ctx, p).err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for e in h.join().unwrap_or_default() {
                    tracing::warn!(error = %e, "pod removal");
                    first_err.get_or_insert(e);
                }
            }
        });
        if let Some(mut agent) = self.agent.take() {
            agent.stop(self.agent_grace);
        }
        // The record lists everything else: namespaces (with anything still
        // in them), the directory, a socket outside it, the record itself.
        let rec = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut report = record::CleanupReport::default();
        record::remove_run(&rec, &mut report);
        record::remove_dir_if_empty(Path::new(record::RUN_ROOT));
        if let Some(e) = report.errors.first() {
            first_err.get_or_insert(LabError::Io {
                what: "lab clean-up".into(),
                source: io::Error::other(e.clone()),
            });
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn chunks<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i % n].push(item);
    }
    out.retain(|b| !b.is_empty());
    out
}

/// Stops a pod's servers, DELs it, deletes its namespace and manifest.
/// Blocking.
fn tear_down_pod(ctx: &PodCtx, mut pod: Pod) -> Result<(), LabError> {
    match pod.servers.take() {
        Some(Servers::Process(mut child)) => {
            stop_child(&mut child, Duration::from_secs(2));
        }
        Some(Servers::Task(handle)) => handle.abort(),
        None => {}
    }
    let mut result = Ok(());
    if let Some(dir) = &pod.cgroup {
        // Anything still inside (a command or probe that outlived its call)
        // goes with it; the node namespace is the agent's, not the pod's.
        if let Err(e) = cgroup::remove(dir) {
            result = Err(e.into());
        }
        manifests::remove(
            &ctx.manifests_dir,
            &manifests::pod_file(&pod.spec.namespace, &pod.spec.name),
        )?;
        return result;
    }
    if pod.added {
        let (container_id, ns_path) = pod.call();
        let call = cni::Call {
            container_id: &container_id,
            netns: &ns_path,
            ifname: "eth0",
            pod_namespace: &pod.spec.namespace,
            pod_name: &pod.spec.name,
        };
        if let Err(e) = ctx.plugin.del(&call) {
            result = Err(e.into());
        }
    }
    let mut report = record::CleanupReport::default();
    record::remove_netns(&pod.netns, &mut report);
    if let Some(e) = report.errors.into_iter().next() {
        result = result.and(Err(LabError::Io {
            what: format!("delete netns {}", pod.netns),
            source: io::Error::other(e),
        }));
    }
    manifests::remove(
        &ctx.manifests_dir,
        &manifests::pod_file(&pod.spec.namespace, &pod.spec.name),
    )?;
    result
}

/// Sets one pod up; always hands the pod back so that whatever exists of it
/// is removed later.
async fn set_up_pod(ctx: Arc<PodCtx>, mut pod: Pod) -> (Pod, Result<(), LabError>) {
    let result = set_up_pod_inner(&ctx, &mut pod).await;
    (pod, result)
}

async fn set_up_pod_inner(ctx: &Arc<PodCtx>, pod: &mut Pod) -> Result<(), LabError> {
    if let Some(dir) = pod.cgroup.clone() {
        return set_up_host_pod(ctx, pod, &dir).await;
    }
    let name = pod.netns.clone();
    tokio::task::spawn_blocking(move || netns::create(&name))
        .await
        .map_err(|_| NetnsError::ThreadPanicked(pod.netns.clone()))??;
    let file = manifests::pod_file(&pod.spec.namespace, &pod.spec.name);
    // Before ADD: the agent knows the pod's labels when its endpoint registers.
    manifests::write(
        &ctx.manifests_dir,
        &file,
        &[manifests::pod(&pod.spec, &pod.uid, &ctx.node_name, &[])],
    )?;
    pod.added = true;
    let (container_id, ns_path) = pod.call();
    let (c, spec) = (ctx.clone(), pod.spec.clone());
    let ips = tokio::task::spawn_blocking(move || {
        c.plugin.add(&cni::Call {
            container_id: &container_id,
            netns: &ns_path,
            ifname: "eth0",
            pod_namespace: &spec.namespace,
            pod_name: &spec.name,
        })
    })
    .await
    .map_err(|e| LabError::Io {
        what: format!("CNI ADD for {}", pod.spec.key()),
        source: io::Error::other(e.to_string()),
    })??;
    pod.ips = ips;
    manifests::write(
        &ctx.manifests_dir,
        &file,
        &[manifests::pod(
            &pod.spec,
            &pod.uid,
            &ctx.node_name,
            &pod.ips,
        )],
    )?;
    if !pod.spec.ports.is_empty() {
        pod.servers = Some(start_servers(ctx, pod).await?);
    }
    tracing::debug!(pod = %pod.spec.key(), ips = ?pod.ips, "pod ready");
    Ok(())
}

/// Sets a hostNetwork pod up: its cgroup, its manifest (the node's
/// addresses, `Running` at once: there is no CNI ADD to wait for), its
/// servers in the node's namespace inside the cgroup.
async fn set_up_host_pod(ctx: &Arc<PodCtx>, pod: &mut Pod, dir: &Path) -> Result<(), LabError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || cgroup::create(&d))
        .await
        .map_err(|e| LabError::Io {
            what: format!("create cgroup {}", dir.display()),
            source: io::Error::other(e.to_string()),
        })??;
    pod.ips = ctx.node_ips.clone();
    manifests::write(
        &ctx.manifests_dir,
        &manifests::pod_file(&pod.spec.namespace, &pod.spec.name),
        &[manifests::pod(
            &pod.spec,
            &pod.uid,
            &ctx.node_name,
            &pod.ips,
        )],
    )?;
    if !pod.spec.ports.is_empty() {
        pod.servers = Some(start_servers(ctx, pod).await?);
    }
    tracing::debug!(pod = %pod.spec.key(), cgroup = %dir.display(), "hostNetwork pod ready");
    Ok(())
}

/// Starts the pod's servers and returns once every port is bound.
async fn start_servers(ctx: &Arc<PodCtx>, pod: &Pod) -> Result<Servers, LabError> {
    let key = pod.spec.key();
    let Some(bin) = &ctx.serve_bin else {
        let ports = pod.spec.ports.clone();
        let sockets = netns::run_in_async(pod.netns_path(), move || serve::bind_all(&ports))
            .await?
            .map_err(|source| LabError::Serve {
                pod: key.clone(),
                source,
            })?;
        return Ok(Servers::Task(tokio::spawn(serve::serve(
            pod.spec.name.clone(),
            sockets,
        ))));
    };
    let log_path = ctx.lab_dir.join(match &pod.cgroup {
        None => format!("serve-{}.log", pod.netns),
        Some(_) => format!("serve-host-{}-{}.log", pod.spec.namespace, pod.spec.name),
    });
    let log = std::fs::File::create(&log_path)
        .map_err(io_err(format!("create {}", log_path.display())))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg("--name").arg(&pod.spec.name);
    for p in &pod.spec.ports {
        cmd.arg(format!("--{}", p.protocol.to_string().to_lowercase()))
            .arg(p.port.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0);
    pod.place().apply(&mut cmd)?;
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("start {} serve", bin.display())))?;
    if let Some(p) = ProcessRef::of(child.id() as i32, "serve") {
        ctx.record_process(p)?;
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        }),
    )
    .await;
    match line {
        Ok(Ok(Ok(l))) if l.trim() == serve::READY_LINE => Ok(Servers::Process(child)),
        other => {
            stop_child(&mut child, Duration::from_millis(500));
            let why = match other {
                Err(_) => "not ready after 20 s".to_string(),
                _ => "exited before it was ready".to_string(),
            };
            Err(LabError::ServerProcess {
                pod: key,
                message: format!(
                    "{} serve {why}: {}",
                    bin.display(),
                    crate::agent::log_tail(&log_path, 10)
                ),
            })
        }
    }
}

/// A plain HTTP/1.1 GET; the body as text.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.abort();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(format!("status {status}: {text}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
}
