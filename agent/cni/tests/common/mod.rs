//! Test harness for weir-cni: network namespaces with Drop guards, a fake agent
//! serving the local API on a unix socket, and a runner that invokes the built
//! plugin binary exactly as a container runtime does.
//!
//! Every namespace a test makes is named `wcni-<pid>-<n>-<tag>`; everything the
//! plugin creates lives inside those namespaces, so deleting them (on Drop, even
//! on panic) removes it all.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::Value;
use weir_localapi::{Endpoint, EndpointRegistration, ErrorBody};

/// True if the test may run; false (after saying why) when it must skip.
/// Panics under CI=true: there a skipped privileged test is a failure.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root for network namespaces, and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs root for network namespaces");
    false
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    deleted: bool,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let name = format!("wcni-{}-{n}-{tag}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        Self {
            path: PathBuf::from("/run/netns").join(&name),
            name,
            deleted: false,
        }
    }

    /// Deletes it now (to simulate a container that is gone).
    pub fn delete(&mut self) {
        if !self.deleted {
            run_ok("ip", &["netns", "del", &self.name]);
            self.deleted = true;
        }
    }

    /// Runs a command inside (via `ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .expect("ip netns exec runs")
    }

    /// Writes a sysctl inside.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.exec(&["sh", "-c", &format!("echo {value} > {path}")]);
        assert!(
            out.status.success(),
            "sysctl {key}={value} in {}: {out:?}",
            self.name
        );
    }

    /// Reads a file under /proc/sys inside.
    pub fn read_sysctl(&self, path: &str) -> String {
        let out = self.exec(&["cat", &format!("/proc/sys/{path}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `ip -j -n <ns> <args>` parsed (an empty answer is an empty array).
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        let out = Command::new("ip").args(&full).output().expect("ip runs");
        assert!(out.status.success(), "ip {full:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str::<Vec<Value>>(&text)
            .unwrap_or_else(|e| panic!("ip {full:?} gave non-JSON {text:?}: {e}"))
    }

    /// Names of all links.
    pub fn links(&self) -> BTreeSet<String> {
        self.ip_json(&["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// One link by name, if present.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.ip_json(&["link", "show"])
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    /// Addresses of a link as "ip/prefix".
    pub fn addrs(&self, dev: &str) -> BTreeSet<String> {
        self.ip_json(&["addr", "show", "dev", dev])
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
            .collect()
    }

    /// Routes of one family (`-4` / `-6`).
    pub fn routes(&self, family: &str) -> Vec<Value> {
        self.ip_json(&[family, "route", "show"])
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(&self.path).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("command runs");
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
}

/// A route in `ip -j route` output matching `dst` (e.g. "default", "10.0.0.2"),
/// optionally `gateway`, and `dev`.
pub fn has_route(routes: &[Value], dst: &str, gateway: Option<&str>, dev: &str) -> bool {
    routes.iter().any(|r| {
        r["dst"] == dst
            && r["dev"] == dev
            && match gateway {
                Some(g) => r["gateway"] == g,
                None => r.get("gateway").is_none(),
            }
    })
}

/// What the fake agent saw for one registration.
#[derive(Clone, Debug)]
pub struct Registered {
    pub registration: EndpointRegistration,
    /// Whether the host veth existed in the node namespace when the request arrived.
    pub host_link_present: bool,
}

#[derive(Default)]
struct AgentState {
    node_ns: String,
    registered: Mutex<Vec<Registered>>,
    unregistered: Mutex<Vec<(String, String)>>,
}

/// An in-test HTTP server implementing the local API's endpoint calls.
pub struct FakeAgent {
    pub socket: PathBuf,
    state: Arc<AgentState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    /// Serves on `dir/agent.sock`; checks host links in namespace `node_ns`.
    pub fn start(dir: &Path, node_ns: &str) -> Self {
        let socket = dir.join("agent.sock");
        let state = Arc::new(AgentState {
            node_ns: node_ns.to_string(),
            ..Default::default()
        });
        let app = Router::new()
            .route(weir_localapi::paths::ENDPOINTS, post(register))
            .route("/v1/endpoints/{cid}/{ifname}", delete(unregister))
            .with_state(Arc::clone(&state));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sock = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&sock).expect("bind agent socket");
                ready_tx.send(()).expect("signal ready");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        ready_rx.recv().expect("agent started");
        Self {
            socket,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn registered(&self) -> Vec<Registered> {
        self.state.registered.lock().expect("lock").clone()
    }

    pub fn unregistered(&self) -> Vec<(String, String)> {
        self.state.unregistered.lock().expect("lock").clone()
    }

    /// Stops serving and removes the socket (the agent is "down" afterwards).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("agent thread");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers and answers like the agent; refuses (HTTP 500) container ids
/// starting with `refuse`, after recording them, like an agent whose attach failed.
async fn register(
    State(state): State<Arc<AgentState>>,
    Json(reg): Json<EndpointRegistration>,
) -> Result<Json<Endpoint>, (StatusCode, Json<ErrorBody>)> {
    let present = tokio::process::Command::new("ip")
        .args([
            "-n",
            &state.node_ns,
            "link",
            "show",
            "dev",
            &reg.host_ifname,
        ])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut all = state.registered.lock().expect("lock");
    all.push(Registered {
        registration: reg.clone(),
        host_link_present: present,
    });
    if reg.container_id.starts_with("refuse") {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ErrorBody {
                error: "attaching programs failed".to_string(),
            }),
        ));
    }
    Ok(Json(Endpoint {
        id: all.len() as u64,
        registration: reg,
        attached: true,
    }))
}

async fn unregister(
    State(state): State<Arc<AgentState>>,
    UrlPath((cid, ifname)): UrlPath<(String, String)>,
) -> Json<Value> {
    state.unregistered.lock().expect("lock").push((cid, ifname));
    Json(serde_json::json!({}))
}

/// One plugin invocation.
#[derive(Clone, Debug)]
pub struct Call {
    pub env: Vec<(String, String)>,
    pub stdin: String,
}

impl Call {
    /// The usual environment for `command` on container `cid` in `netns`, interface eth0.
    pub fn new(command: &str, cid: &str, netns: &Path, conf: &Value) -> Self {
        Self {
            env: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_CONTAINERID".into(), cid.into()),
                ("CNI_NETNS".into(), netns.display().to_string()),
                ("CNI_IFNAME".into(), "eth0".into()),
                (
                    "CNI_ARGS".into(),
                    format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-{cid};K8S_POD_NAME=pod-{cid};K8S_POD_INFRA_CONTAINER_ID={cid}"
                    ),
                ),
                ("CNI_PATH".into(), "/opt/cni/bin".into()),
            ],
            stdin: conf.to_string(),
        }
    }

    /// Sets (or with `None` removes) a variable.
    pub fn var(mut self, key: &str, value: Option<&str>) -> Self {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
        self
    }
}

/// What the plugin answered.
#[derive(Debug)]
pub struct Answer {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the stdout JSON.
    pub fn ok_json(&self) -> Value {
        assert!(self.success, "plugin failed: {self:#?}");
        self.json()
    }

    /// Asserts success with nothing on stdout (DEL, CHECK).
    pub fn ok_empty(&self) {
        assert!(self.success, "plugin failed: {self:#?}");
        assert!(
            self.stdout.trim().is_empty(),
            "unexpected stdout: {self:#?}"
        );
    }

    /// Asserts a failure with CNI error `code` and returns the error object.
    pub fn err(&self, code: u64) -> Value {
        assert!(!self.success, "plugin should have failed: {self:#?}");
        let v = self.json();
        assert_eq!(v["code"], code, "wrong error code: {self:#?}");
        for key in ["cniVersion", "msg", "details"] {
            assert!(v[key].is_string(), "error object lacks {key}: {v}");
        }
        v
    }
}

/// Runs the built binary with a clean environment, `call.env`, stdin; inside
/// `node` (the plugin's "node" namespace) when given.
pub fn invoke(node: Option<&Netns>, call: &Call) -> Answer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-cni"));
    cmd.env_clear()
        .envs(call.env.iter().map(|(k, v)| (k, v)))
        .env("WEIR_CNI_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let node_file = node.map(|n| File::open(&n.path).expect("open node netns"));
    if let Some(f) = &node_file {
        let fd = f.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn weir-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(call.stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait weir-cni");
    drop(node_file);
    Answer {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The network configuration used by the tests.
pub fn netconf(version: &str, socket: &Path, data_dir: &Path, cidrs: &[&str]) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "wcni",
        "type": "weir-cni",
        "agentSocket": socket,
        "mtu": 1400,
        "ipam": { "mode": "overlay", "podCIDRs": cidrs, "dataDir": data_dir }
    })
}

/// Addresses with an allocation file under `data_dir/wcni`.
pub fn allocated(data_dir: &Path) -> BTreeSet<IpAddr> {
    let Ok(rd) = std::fs::read_dir(data_dir.join("wcni")) else {
        return BTreeSet::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}
