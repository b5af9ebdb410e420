//! Wire compatibility of Weir's flow API with Hubble, proven by clients that
//! know nothing of Weir: a Rust client generated with tonic from the UPSTREAM
//! Hubble protos (weir-hubble-compat) and a Python client generated with
//! grpcio-tools from the same protos at run time. Both talk to a real agent
//! in the lab over its unix socket (`--flow-api --flow-api-socket`).
//!
//! The traffic is the test's own (TCP, UDP and ICMP probes between named
//! pods, IPv4 and IPv6) and the agent runs with `--aggregation none`, so each
//! probe yields every one of its packets as a flow: the request and the reply
//! direction, each at FROM_ENDPOINT of the sender and TO_ENDPOINT of the
//! receiver. Every answer is checked three ways:
//! - against the agent's own flow log (the ground truth, read before and
//!   after the calls): every flow the request selects by Hubble's filter
//!   semantics is returned, nothing else, with the same content;
//! - against the probes: the (source pod, destination pod, port, protocol,
//!   family, reply, observation point) classes returned are exactly those the
//!   probes the filter selects must produce;
//! - against the other client: the same flows, byte for byte the same JSON.
//!
//! Needs root, `target/debug/weir` and `weir-cni` (tests/common), the protos
//! (weir-hubble-compat's build) and `target/pyenv` (cargo xtask setup): each
//! missing piece skips locally and fails under CI=true.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use weir_hubble_compat::python::{PythonClient, PythonError, PythonFollow, python_client};
use weir_hubble_compat::{Code, HubbleClient, JsonStream, UNRESOLVABLE_ANY, in_ci};
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

/// The node name the agent gets (and flows carry).
const NODE: &str = "hc-node-1";
/// The address the Peer service is told to announce.
const ADVERTISED: &str = "192.0.2.10:4244";
const FROM: &str = "FROM_ENDPOINT";
const TO: &str = "TO_ENDPOINT";

// ---------------------------------------------------------------------------
// Lab and clients

/// The flow API of a running lab, and the two clients.
struct Api {
    /// Holds the socket; removed after the lab.
    _dir: tempfile::TempDir,
    server: String,
    rust: HubbleClient,
    /// None when the Python venv is missing (skipped locally, fatal in CI).
    python: Option<PythonClient>,
}

fn skip_or_fail(test: &str, why: impl std::fmt::Display) {
    if in_ci() {
        panic!("{test}: {why} (CI=true forbids skipping)");
    }
    eprintln!("skipping {test}: {why}");
}

/// Starts the lab with the flow API on a unix socket (plus `config`, YAML
/// for `weir agent --config`, when given) and three pods: x/a (app=web,
/// tier=front), x/b (app=db), y/c (app=web), each serving TCP 80, UDP 53
/// and TCP 8080. None when the test must be skipped.
async fn start(test: &str, config: Option<&str>) -> Option<(Lab, Api)> {
    let mut options = common::agent_lab_options(test)?;
    if let Err(e) = weir_hubble_compat::protos_dir() {
        skip_or_fail(test, e);
        return None;
    }
    let python = match python_client() {
        Ok(p) => Some(p.with_timeout(Duration::from_secs(10))),
        Err(e) if in_ci() => panic!("{test}: {e} (CI=true forbids skipping)"),
        Err(e) => {
            eprintln!("{test}: the Python client's half is skipped: {e}");
            None
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("weirhc-")
        .tempdir()
        .expect("temporary directory");
    let socket: PathBuf = dir.path().join("hubble.sock");
    options.node_name = NODE.into();
    options.aggregation = Some("none".into());
    options.agent_args = vec![
        "--flow-api".into(),
        "--flow-api-socket".into(),
        socket.display().to_string(),
    ];
    if let Some(yaml) = config {
        let file = dir.path().join("weir.yaml");
        std::fs::write(&file, yaml).expect("write the agent config");
        options.agent_args.push("--config".into());
        options.agent_args.push(file.display().to_string());
    }
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x").label("team", "a"))
        .unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    let pod = |ns: &str, name: &str| {
        PodSpec::new(ns, name)
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53))
            .port(PortSpec::tcp(8080))
    };
    lab.add_pods(vec![
        pod("x", "a").label("app", "web").label("tier", "front"),
        pod("x", "b").label("app", "db"),
        pod("y", "c").label("app", "web"),
    ])
    .await
    .expect("pods come up");

    let server = format!("unix://{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    let rust = loop {
        match HubbleClient::connect(&server).await {
            Ok(c) => break c.with_timeout(Duration::from_secs(10)),
            Err(e) if Instant::now() > deadline => panic!(
                "{test}: no flow API at {server} with --flow-api: {e}\nagent log:\n{}",
                std::fs::read_to_string(lab.agent_log_path()).unwrap_or_default()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Some((
        lab,
        Api {
            _dir: dir,
            server,
            rust,
            python,
        },
    ))
}

// ---------------------------------------------------------------------------
// Probes and the flow classes they must produce

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// One probe: a connection from `client` to `server`.
#[derive(Clone, Copy, Debug)]
struct Probe {
    client: &'static str,
    server: &'static str,
    proto: Proto,
    /// Server port (0 for ICMP).
    port: u16,
    v6: bool,
    phase: u8,
}

fn tcp(client: &'static str, server: &'static str, port: u16, v6: bool, phase: u8) -> Probe {
    Probe {
        client,
        server,
        proto: Proto::Tcp,
        port,
        v6,
        phase,
    }
}

fn udp(client: &'static str, server: &'static str, port: u16, v6: bool, phase: u8) -> Probe {
    Probe {
        proto: Proto::Udp,
        ..tcp(client, server, port, v6, phase)
    }
}

fn icmp(client: &'static str, server: &'static str, v6: bool, phase: u8) -> Probe {
    Probe {
        proto: Proto::Icmp,
        ..tcp(client, server, 0, v6, phase)
    }
}

impl Probe {
    fn spec(&self) -> ProbeSpec {
        let s = match self.proto {
            Proto::Tcp => ProbeSpec::tcp(self.client, self.server, self.port),
            Proto::Udp => ProbeSpec::udp(self.client, self.server, self.port),
            Proto::Icmp => ProbeSpec::icmp(self.client, self.server),
        };
        if self.v6 { s.ipv6() } else { s }
    }

    /// With aggregation none every packet is a flow: request and reply,
    /// each seen leaving the sender and arriving at the receiver.
    fn classes(&self) -> Vec<Class> {
        let mut all = Vec::new();
        for reply in [false, true] {
            for obs in [FROM, TO] {
                let (src, dst) = if reply {
                    (self.server, self.client)
                } else {
                    (self.client, self.server)
                };
                all.push(Class {
                    src: src.to_string(),
                    dst: dst.to_string(),
                    proto: self.proto,
                    v6: self.v6,
                    port: self.port,
                    reply,
                    obs,
                    phase: self.phase,
                });
            }
        }
        all
    }
}

/// What distinguishes the flows of the probes from each other. `port` is
/// the server's port; `phase` is not in the flow (ignored by `key`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Class {
    src: String,
    dst: String,
    proto: Proto,
    v6: bool,
    port: u16,
    reply: bool,
    obs: &'static str,
    phase: u8,
}

impl Class {
    fn key(&self) -> String {
        format!(
            "{}->{} {:?}{} :{} {} {}",
            self.src,
            self.dst,
            self.proto,
            if self.v6 { "/v6" } else { "/v4" },
            self.port,
            if self.reply { "reply" } else { "request" },
            self.obs
        )
    }
}

/// The class of a pod-to-pod flow (None for anything else, e.g. world).
fn class_of(f: &Value) -> Option<String> {
    let src = pod_of(&f["source"])?;
    let dst = pod_of(&f["destination"])?;
    let (proto, sport, dport) = l4_of(f)?;
    let reply = f["is_reply"].as_bool()?;
    let obs = match f["trace_observation_point"].as_str()? {
        FROM => FROM,
        TO => TO,
        _ => return None,
    };
    Some(
        Class {
            src,
            dst,
            proto,
            v6: f["IP"]["ipVersion"] == "IPv6",
            port: if reply { sport } else { dport },
            reply,
            obs,
            phase: 0,
        }
        .key(),
    )
}

async fn run_probes(lab: &Lab, probes: &[Probe]) {
    let specs: Vec<ProbeSpec> = probes.iter().map(Probe::spec).collect();
    let results = lab.probe_all(&specs).await.expect("probes run");
    for r in &results {
        assert!(r.connected, "probe failed: {r:?}");
    }
}

// ---------------------------------------------------------------------------
// Reading flows (flow log and API answers share the JSON mapping)

fn pod_of(side: &Value) -> Option<String> {
    let ns = side["namespace"].as_str().filter(|s| !s.is_empty())?;
    let pod = side["pod_name"].as_str().filter(|s| !s.is_empty())?;
    Some(format!("{ns}/{pod}"))
}

fn l4_of(f: &Value) -> Option<(Proto, u16, u16)> {
    let l4 = &f["l4"];
    let port = |v: &Value| v.as_u64().unwrap_or(0) as u16;
    if let Some(t) = l4.get("TCP") {
        Some((
            Proto::Tcp,
            port(&t["source_port"]),
            port(&t["destination_port"]),
        ))
    } else if let Some(u) = l4.get("UDP") {
        Some((
            Proto::Udp,
            port(&u["source_port"]),
            port(&u["destination_port"]),
        ))
    } else if l4.get("ICMPv4").is_some() || l4.get("ICMPv6").is_some() {
        Some((Proto::Icmp, 0, 0))
    } else {
        None
    }
}

fn ports(f: &Value) -> (u16, u16) {
    l4_of(f).map_or((0, 0), |(_, s, d)| (s, d))
}

fn ip(f: &Value, side: &str) -> Option<IpAddr> {
    f["IP"][side].as_str()?.parse().ok()
}

fn has_label(side: &Value, label: &str) -> bool {
    side["labels"]
        .as_array()
        .is_some_and(|ls| ls.iter().any(|l| l == label))
}

fn label_value<'a>(side: &'a Value, key: &str) -> Option<&'a str> {
    side["labels"].as_array()?.iter().find_map(|l| {
        let l = l.as_str()?;
        let (k, v) = l.split_once('=')?;
        let k = k.split_once(':').map_or(k, |(_, k)| k);
        (k == key).then_some(v)
    })
}

fn uuid(f: &Value) -> &str {
    f["uuid"].as_str().unwrap_or_default()
}

/// Nanoseconds since the epoch of a protojson timestamp.
fn nanos(t: &Value) -> i128 {
    t.as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .map_or(0, |t| t.unix_timestamp_nanos())
}

fn rfc3339(ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns)
        .expect("time in range")
        .format(&Rfc3339)
        .expect("formats")
}

/// The flows of the flow log, in the order written.
fn log_flows(lab: &Lab) -> Vec<Value> {
    lab.flows()
        .expect("flow log readable")
        .into_iter()
        .filter_map(|mut l| l.get_mut("flow").map(Value::take))
        .collect()
}

/// Waits until the flow log holds at least the classes of `probes` among
/// flows not in `old`, then a little longer for stragglers; returns the log.
async fn wait_for_probe_flows(lab: &Lab, probes: &[Probe], old: &BTreeSet<String>) -> Vec<Value> {
    let want: BTreeSet<String> = probes
        .iter()
        .flat_map(Probe::classes)
        .map(|c| c.key())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = log_flows(lab);
        let have: BTreeSet<String> = flows
            .iter()
            .filter(|f| !old.contains(uuid(f)))
            .filter_map(class_of)
            .collect();
        if want.is_subset(&have) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return log_flows(lab);
        }
        assert!(
            Instant::now() < deadline,
            "the flow log lacks these flows of the probes after 10 s: {:#?}",
            want.difference(&have).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Flow objects of GetFlows answers; anything else in the stream is noted.
fn flows_of(responses: &[Value], errors: &mut Vec<String>, what: &str) -> Vec<Value> {
    let mut flows = Vec::new();
    for r in responses {
        match r.get("flow") {
            Some(f) => flows.push(f.clone()),
            None => errors.push(format!("{what}: a response that is not a flow: {r}")),
        }
    }
    flows
}

/// `f` without Weir's `extensions` (printed or not, they are not Hubble's)
/// and without the deprecated `reply`, which Hubble still fills next to
/// `is_reply` (checked on its own) but the flow log leaves out.
fn comparable(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(o) = f.as_object_mut() {
        o.remove("extensions");
        o.remove("reply");
    }
    f
}

// ---------------------------------------------------------------------------
// Filter checks

type FlowPred = Box<dyn Fn(&Value) -> bool + Send + Sync>;
type ClassPred = Box<dyn Fn(&Class) -> bool + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Order {
    /// Every matching flow, in ring order.
    All,
    /// The last n matching flows, oldest first.
    Last(usize),
    /// The first n matching flows.
    First(usize),
}

struct Check {
    name: &'static str,
    request: Value,
    /// Which flows Hubble's semantics select, judged on the full flow.
    matches: FlowPred,
    /// The same on the probes' classes; None when it depends on details
    /// of single packets that classes do not carry.
    classes: Option<ClassPred>,
    order: Order,
    /// Paths of the field mask, when the request has one: the answers then
    /// carry only these (`a.b` as nested objects).
    mask: Option<&'static [&'static str]>,
}

fn check(
    name: &'static str,
    request: Value,
    matches: FlowPred,
    classes: Option<ClassPred>,
) -> Check {
    Check {
        name,
        request,
        matches,
        classes,
        order: Order::All,
        mask: None,
    }
}

/// The lab's facts the checks are written against.
struct Facts {
    probes: Vec<Probe>,
    ip4: BTreeMap<&'static str, IpAddr>,
    ip6: BTreeMap<&'static str, IpAddr>,
    identity: BTreeMap<&'static str, u64>,
    /// Between the two traffic phases, and after the second.
    mid: i128,
    end: i128,
}

fn pod_pred(f: impl Fn(&str, &str) -> bool + Send + Sync + 'static) -> FlowPred {
    Box::new(move |v: &Value| {
        f(
            &pod_of(&v["source"]).unwrap_or_default(),
            &pod_of(&v["destination"]).unwrap_or_default(),
        )
    })
}

fn both_pods(f: &Value) -> bool {
    pod_of(&f["source"]).is_some() && pod_of(&f["destination"]).is_some()
}

const PODS_ONLY: &str = r#"{"source_pod": ["x/", "y/"], "destination_pod": ["x/", "y/"]}"#;

fn pods_only() -> Value {
    serde_json::from_str(PODS_ONLY).unwrap()
}

fn checks(facts: &Facts, uuids: [String; 2]) -> Vec<Check> {
    let ip_a4 = facts.ip4["x/a"];
    let ip_c6 = facts.ip6["y/c"];
    let id_a = facts.identity["x/a"];
    let id_b = facts.identity["x/b"];
    let (mid, end) = (facts.mid, facts.end);
    let v6net: ipnetwork::IpNetwork = "fd00:10:244::/112".parse().unwrap();
    let mut all = vec![
        check(
            "source_ip exact (IPv4 and IPv6)",
            json!({"whitelist": [{"source_ip": [ip_a4.to_string(), ip_c6.to_string()]}]}),
            Box::new(move |f| ip(f, "source") == Some(ip_a4) || ip(f, "source") == Some(ip_c6)),
            Some(Box::new(|c| {
                (c.src == "x/a" && !c.v6) || (c.src == "y/c" && c.v6)
            })),
        ),
        check(
            "destination_ip CIDR",
            json!({"whitelist": [{"destination_ip": [v6net.to_string()]}]}),
            Box::new(move |f| ip(f, "destination").is_some_and(|a| v6net.contains(a))),
            Some(Box::new(|c| c.v6)),
        ),
        check(
            "source_pod ns/name",
            json!({"whitelist": [{"source_pod": ["x/a"]}]}),
            pod_pred(|s, _| s == "x/a"),
            Some(Box::new(|c| c.src == "x/a")),
        ),
        check(
            "source_pod ns/prefix",
            json!({"whitelist": [{"source_pod": ["x/b", "y/"]}]}),
            pod_pred(|s, _| s == "x/b" || s.starts_with("y/")),
            Some(Box::new(|c| c.src == "x/b" || c.src == "y/c")),
        ),
        check(
            "destination_pod namespace only",
            json!({"whitelist": [{"destination_pod": ["y/"]}]}),
            pod_pred(|_, d| d.starts_with("y/")),
            Some(Box::new(|c| c.dst == "y/c")),
        ),
        check(
            "source_label k8s:app=web",
            json!({"whitelist": [{"source_label": ["k8s:app=web"]}]}),
            Box::new(|f| has_label(&f["source"], "k8s:app=web")),
            Some(Box::new(|c| c.src == "x/a" || c.src == "y/c")),
        ),
        check(
            "destination_label app=db (no source prefix)",
            json!({"whitelist": [{"destination_label": ["app=db"]}]}),
            Box::new(|f| label_value(&f["destination"], "app") == Some("db")),
            Some(Box::new(|c| c.dst == "x/b")),
        ),
        check(
            "source_label set-based: tier in (front, back)",
            json!({"whitelist": [{"source_label": ["tier in (front, back)"]}]}),
            Box::new(|f| matches!(label_value(&f["source"], "tier"), Some("front" | "back"))),
            Some(Box::new(|c| c.src == "x/a")),
        ),
        check(
            "destination_label, two requirements: k8s:app=web,k8s:tier=front",
            json!({"whitelist": [{"destination_label": ["k8s:app=web,k8s:tier=front"]}]}),
            Box::new(|f| {
                has_label(&f["destination"], "k8s:app=web")
                    && has_label(&f["destination"], "k8s:tier=front")
            }),
            Some(Box::new(|c| c.dst == "x/a")),
        ),
        check(
            "destination_port",
            json!({"whitelist": [{"destination_port": ["80"]}]}),
            Box::new(|f| ports(f).1 == 80),
            Some(Box::new(|c| c.port == 80 && !c.reply)),
        ),
        check(
            "source_port",
            json!({"whitelist": [{"source_port": ["8080"]}]}),
            Box::new(|f| ports(f).0 == 8080),
            Some(Box::new(|c| c.port == 8080 && c.reply)),
        ),
        check(
            "protocol udp",
            json!({"whitelist": [{"protocol": ["udp"]}]}),
            Box::new(|f| f["l4"].get("UDP").is_some()),
            Some(Box::new(|c| c.proto == Proto::Udp)),
        ),
        check(
            "protocol icmp (v4 and v6)",
            json!({"whitelist": [{"protocol": ["icmp"]}]}),
            Box::new(|f| f["l4"].get("ICMPv4").is_some() || f["l4"].get("ICMPv6").is_some()),
            Some(Box::new(|c| c.proto == Proto::Icmp)),
        ),
        check(
            "verdict FORWARDED",
            json!({"whitelist": [{"verdict": ["FORWARDED"]}]}),
            Box::new(|f| f["verdict"] == "FORWARDED"),
            Some(Box::new(|_| true)),
        ),
        check(
            "verdict DROPPED",
            json!({"whitelist": [{"verdict": ["DROPPED"]}]}),
            Box::new(|f| f["verdict"] == "DROPPED"),
            Some(Box::new(|_| false)),
        ),
        check(
            "event_type trace",
            json!({"whitelist": [{"event_type": [{"type": 4}]}]}),
            Box::new(|f| f["event_type"]["type"] == 4),
            Some(Box::new(|_| true)),
        ),
        check(
            "event_type trace with sub_type 0 (to endpoint)",
            json!({"whitelist": [{"event_type": [{"type": 4, "match_sub_type": true, "sub_type": 0}]}]}),
            Box::new(|f| {
                f["event_type"]["type"] == 4
                    && f["event_type"]["sub_type"].as_i64().unwrap_or(0) == 0
            }),
            Some(Box::new(|c| c.obs == TO)),
        ),
        check(
            "tcp_flags SYN",
            json!({"whitelist": [{"tcp_flags": [{"SYN": true}]}]}),
            Box::new(|f| f["l4"]["TCP"]["flags"]["SYN"] == true),
            Some(Box::new(|c| c.proto == Proto::Tcp)),
        ),
        check(
            "tcp_flags SYN+ACK",
            json!({"whitelist": [{"tcp_flags": [{"SYN": true, "ACK": true}]}]}),
            Box::new(|f| {
                f["l4"]["TCP"]["flags"]["SYN"] == true && f["l4"]["TCP"]["flags"]["ACK"] == true
            }),
            Some(Box::new(|c| c.proto == Proto::Tcp && c.reply)),
        ),
        check(
            "traffic_direction INGRESS",
            json!({"whitelist": [{"traffic_direction": ["INGRESS"]}]}),
            Box::new(|f| f["traffic_direction"] == "INGRESS"),
            None,
        ),
        check(
            "reply true",
            json!({"whitelist": [{"reply": [true]}]}),
            Box::new(|f| f["is_reply"] == true),
            Some(Box::new(|c| c.reply)),
        ),
        check(
            "reply false",
            json!({"whitelist": [{"reply": [false]}]}),
            Box::new(|f| f["is_reply"] == false),
            Some(Box::new(|c| !c.reply)),
        ),
        check(
            "node_name exact",
            json!({"whitelist": [{"node_name": [NODE]}]}),
            Box::new(|f| f["node_name"] == NODE),
            Some(Box::new(|_| true)),
        ),
        check(
            "node_name pattern",
            json!({"whitelist": [{"node_name": ["hc-node-*"]}]}),
            Box::new(|f| f["node_name"] == NODE),
            Some(Box::new(|_| true)),
        ),
        check(
            "node_name pattern of another node",
            json!({"whitelist": [{"node_name": ["other-*"]}]}),
            Box::new(|_| false),
            Some(Box::new(|_| false)),
        ),
        check(
            "ip_version IPv6",
            json!({"whitelist": [{"ip_version": ["IPv6"]}]}),
            Box::new(|f| f["IP"]["ipVersion"] == "IPv6"),
            Some(Box::new(|c| c.v6)),
        ),
        check(
            "source_identity and destination_identity",
            json!({"whitelist": [{"source_identity": [id_a]}, {"destination_identity": [id_b]}]}),
            Box::new(move |f| {
                f["source"]["identity"].as_u64() == Some(id_a)
                    || f["destination"]["identity"].as_u64() == Some(id_b)
            }),
            Some(Box::new(|c| c.src == "x/a" || c.dst == "x/b")),
        ),
        {
            let [u1, u2] = uuids.clone();
            check(
                "uuid",
                json!({"whitelist": [{"uuid": [u1, u2]}]}),
                Box::new(move |f| uuid(f) == uuids[0] || uuid(f) == uuids[1]),
                None,
            )
        },
        check(
            "blacklist only",
            json!({"blacklist": [{"source_pod": ["x/"]}]}),
            Box::new(|f| f["source"]["namespace"] != "x"),
            Some(Box::new(|c| !c.src.starts_with("x/"))),
        ),
        check(
            "whitelist minus blacklist",
            json!({"whitelist": [{"source_label": ["k8s:app=web"]}], "blacklist": [{"protocol": ["tcp"]}, {"ip_version": ["IPv6"]}]}),
            Box::new(|f| {
                has_label(&f["source"], "k8s:app=web")
                    && f["l4"].get("TCP").is_none()
                    && f["IP"]["ipVersion"] != "IPv6"
            }),
            Some(Box::new(|c| {
                (c.src == "x/a" || c.src == "y/c") && c.proto != Proto::Tcp && !c.v6
            })),
        ),
        check(
            "two whitelist filters (either)",
            json!({"whitelist": [{"source_pod": ["x/a"]}, {"destination_pod": ["y/c"]}]}),
            pod_pred(|s, d| s == "x/a" || d == "y/c"),
            Some(Box::new(|c| c.src == "x/a" || c.dst == "y/c")),
        ),
        check(
            "fields of one filter (all)",
            json!({"whitelist": [{"source_pod": ["x/"], "protocol": ["tcp"], "ip_version": ["IPv4"]}]}),
            Box::new(|f| {
                f["source"]["namespace"] == "x"
                    && f["l4"].get("TCP").is_some()
                    && f["IP"]["ipVersion"] == "IPv4"
            }),
            Some(Box::new(|c| {
                c.src.starts_with("x/") && c.proto == Proto::Tcp && !c.v6
            })),
        ),
        check(
            "since (second phase)",
            json!({"since": rfc3339(mid)}),
            Box::new(move |f| nanos(&f["time"]) >= mid),
            Some(Box::new(|c| c.phase == 2)),
        ),
        check(
            "until (first phase)",
            json!({"until": rfc3339(mid)}),
            Box::new(move |f| nanos(&f["time"]) <= mid),
            Some(Box::new(|c| c.phase == 1)),
        ),
        check(
            "since and until window, pods only",
            json!({"since": rfc3339(mid), "until": rfc3339(end), "whitelist": [pods_only()]}),
            Box::new(move |f| both_pods(f) && (mid..=end).contains(&nanos(&f["time"]))),
            Some(Box::new(|c| c.phase == 2)),
        ),
    ];
    all.push(Check {
        order: Order::Last(3),
        ..check(
            "number: the last 3",
            json!({"number": 3, "whitelist": [pods_only()]}),
            Box::new(both_pods),
            None,
        )
    });
    all.push(Check {
        order: Order::First(4),
        ..check(
            "number with first: the first 4",
            json!({"number": 4, "first": true, "whitelist": [pods_only()]}),
            Box::new(both_pods),
            None,
        )
    });
    all.push(Check {
        mask: Some(&[
            "uuid",
            "time",
            "source.pod_name",
            "destination.namespace",
            "l4",
        ]),
        ..check(
            "field_mask",
            json!({
                "whitelist": [{"source_pod": ["x/a"]}],
                "field_mask": "uuid,time,source.podName,destination.namespace,l4"
            }),
            pod_pred(|s, _| s == "x/a"),
            Some(Box::new(|c| c.src == "x/a")),
        )
    });
    all
}

/// `full` reduced to the masked paths.
fn masked(full: &Value, paths: &[&str]) -> Value {
    let mut out = json!({});
    for p in paths {
        let mut src = full;
        let mut dst = &mut out;
        let parts: Vec<&str> = p.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            src = &src[*part];
            if src.is_null() {
                break;
            }
            if i + 1 == parts.len() {
                dst[*part] = src.clone();
            } else {
                if dst.get(*part).is_none() {
                    dst[*part] = json!({});
                }
                dst = &mut dst[*part];
            }
        }
    }
    out
}

/// Verifies one client's answer to `check`; failures are appended as text
/// naming the request, what was expected and what came.
fn verify(
    client: &str,
    check: &Check,
    responses: &[Value],
    before: &[Value],
    after: &BTreeMap<String, Value>,
    facts: &Facts,
    errors: &mut Vec<String>,
) {
    let what = format!("[{client}] {} (request {})", check.name, check.request);
    let got = flows_of(responses, errors, &what);
    let got_ids: Vec<&str> = got.iter().map(uuid).collect();
    let unique: BTreeSet<&str> = got_ids.iter().copied().collect();
    if unique.len() != got_ids.len() {
        errors.push(format!("{what}: a flow came twice"));
    }
    let mut full_of_got = Vec::new();
    for f in &got {
        match after.get(uuid(f)) {
            None => errors.push(format!("{what}: got a flow the flow log never had: {f}")),
            Some(full) => {
                if !(check.matches)(full) {
                    errors.push(format!(
                        "{what}: got a flow the filter excludes: {}",
                        summary(full)
                    ));
                }
                match check.mask {
                    None if comparable(f) != comparable(full) => errors.push(format!(
                        "{what}: flow differs from the flow log:\n  api: {}\n  log: {}",
                        comparable(f),
                        comparable(full)
                    )),
                    None if f["reply"].as_bool().unwrap_or(false) != (f["is_reply"] == true) => {
                        errors.push(format!(
                            "{what}: the deprecated `reply` ({}) is not `is_reply` ({}), as Hubble fills it",
                            f["reply"], f["is_reply"]
                        ))
                    }
                    Some(paths) if *f != masked(full, paths) => errors.push(format!(
                        "{what}: masked flow is not the listed fields of the flow log's:\n  api: {f}\n  want: {}",
                        masked(full, paths)
                    )),
                    _ => {}
                }
                full_of_got.push(full);
            }
        }
    }

    let selected: Vec<&Value> = before.iter().filter(|f| (check.matches)(f)).collect();
    let before_ids: BTreeSet<&str> = before.iter().map(uuid).collect();
    match check.order {
        Order::All => {
            let missing: Vec<String> = selected
                .iter()
                .filter(|f| !unique.contains(uuid(f)))
                .map(|f| summary(f))
                .collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "{what}: {} of {} selected flows missing (got {}), e.g.:\n  {}",
                    missing.len(),
                    selected.len(),
                    got.len(),
                    missing
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ));
            }
            // Ring order is the flow log's order.
            let order: Vec<&str> = got_ids
                .iter()
                .copied()
                .filter(|u| before_ids.contains(u))
                .collect();
            let want: Vec<&str> = before
                .iter()
                .map(uuid)
                .filter(|u| unique.contains(u))
                .collect();
            if order != want {
                errors.push(format!("{what}: flows not in the order they were observed"));
            }
        }
        Order::Last(n) | Order::First(n) => {
            let want: Vec<&str> = if let Order::Last(_) = check.order {
                selected[selected.len().saturating_sub(n)..]
                    .iter()
                    .map(|f| uuid(f))
                    .collect()
            } else {
                selected.iter().take(n).map(|f| uuid(f)).collect()
            };
            if got_ids != want {
                errors.push(format!(
                    "{what}: want {:?}\n  got {:?}\n  i.e. {:#?}",
                    want,
                    got_ids,
                    full_of_got.iter().map(|f| summary(f)).collect::<Vec<_>>()
                ));
            }
        }
    }

    if let Some(cp) = &check.classes {
        let want: BTreeSet<String> = facts
            .probes
            .iter()
            .flat_map(Probe::classes)
            .filter(|c| cp(c))
            .map(|c| c.key())
            .collect();
        let have: BTreeSet<String> = full_of_got
            .iter()
            .filter(|f| before_ids.contains(uuid(f)))
            .filter_map(|f| class_of(f))
            .collect();
        if want != have {
            errors.push(format!(
                "{what}: flows of the probes differ from what the probes produce:\n  missing {:#?}\n  unexpected {:#?}",
                want.difference(&have).collect::<Vec<_>>(),
                have.difference(&want).collect::<Vec<_>>()
            ));
        }
    }
}

/// One line describing a flow, for failure messages.
fn summary(f: &Value) -> String {
    format!(
        "{} {} {}:{} -> {}:{} {} reply={} {} {}",
        uuid(f),
        f["time"].as_str().unwrap_or("?"),
        pod_of(&f["source"]).unwrap_or_else(|| f["IP"]["source"].to_string()),
        ports(f).0,
        pod_of(&f["destination"]).unwrap_or_else(|| f["IP"]["destination"].to_string()),
        ports(f).1,
        f["Summary"].as_str().unwrap_or(""),
        f["is_reply"],
        f["trace_observation_point"].as_str().unwrap_or(""),
        f["traffic_direction"].as_str().unwrap_or(""),
    )
}

fn report(test: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{test}: {} failures:\n\n{}",
        errors.len(),
        errors.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_clients_get_exactly_the_flows_each_filter_selects() {
    const TEST: &str = "upstream_clients_get_exactly_the_flows_each_filter_selects";
    let Some((lab, api)) = start(TEST, None).await else {
        return;
    };
    let phase1 = vec![
        tcp("x/a", "x/b", 80, false, 1),
        udp("x/a", "y/c", 53, false, 1),
        tcp("y/c", "x/a", 8080, true, 1),
        udp("x/b", "y/c", 53, true, 1),
        icmp("x/a", "y/c", false, 1),
        icmp("y/c", "x/b", true, 1),
        tcp("x/b", "y/c", 80, false, 1),
    ];
    let phase2 = vec![
        tcp("y/c", "x/b", 8080, false, 2),
        udp("x/b", "x/a", 53, true, 2),
        icmp("x/b", "x/a", false, 2),
    ];
    run_probes(&lab, &phase1).await;
    let log1 = wait_for_probe_flows(&lab, &phase1, &BTreeSet::new()).await;
    let old: BTreeSet<String> = log1.iter().map(|f| uuid(f).to_string()).collect();
    let last1 = log1
        .iter()
        .filter(|f| both_pods(f))
        .map(|f| nanos(&f["time"]))
        .max()
        .unwrap();
    // A gap between the phases, so a time between them splits them.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    run_probes(&lab, &phase2).await;
    let before = wait_for_probe_flows(&lab, &phase2, &old).await;
    let first2 = before
        .iter()
        .filter(|f| both_pods(f) && !old.contains(uuid(f)))
        .map(|f| nanos(&f["time"]))
        .min()
        .unwrap();
    assert!(first2 > last1, "the phases overlap in time");
    let end = before.iter().map(|f| nanos(&f["time"])).max().unwrap() + 1;

    let mut probes = phase1.clone();
    probes.extend(&phase2);
    // The flow log itself shows exactly the classes of the probes.
    let log_classes: BTreeSet<String> = before.iter().filter_map(class_of).collect();
    let probe_classes: BTreeSet<String> = probes
        .iter()
        .flat_map(Probe::classes)
        .map(|c| c.key())
        .collect();
    assert_eq!(
        log_classes, probe_classes,
        "the flow log's pod-to-pod flows are the probes'"
    );

    let identity_of = |pod: &str| {
        before
            .iter()
            .find(|f| pod_of(&f["source"]).as_deref() == Some(pod))
            .and_then(|f| f["source"]["identity"].as_u64())
            .unwrap_or_else(|| panic!("no identity of {pod} in the flow log"))
    };
    let facts = Facts {
        ip4: ["x/a", "x/b", "y/c"]
            .into_iter()
            .map(|p| (p, lab.pod_ip(p).unwrap()))
            .collect(),
        ip6: ["x/a", "x/b", "y/c"]
            .into_iter()
            .map(|p| (p, lab.pod_ip6(p).unwrap()))
            .collect(),
        identity: ["x/a", "x/b", "y/c"]
            .into_iter()
            .map(|p| (p, identity_of(p)))
            .collect(),
        probes,
        mid: last1 + (first2 - last1) / 2,
        end,
    };
    let pod_flows: Vec<&Value> = before.iter().filter(|f| both_pods(f)).collect();
    let picked = [
        uuid(pod_flows[1]).to_string(),
        uuid(pod_flows[pod_flows.len() - 2]).to_string(),
    ];
    let checks = checks(&facts, picked);

    let mut rust_answers = Vec::new();
    let mut errors = Vec::new();
    for c in &checks {
        match api.rust.get_flows(&c.request).await {
            Ok(r) => rust_answers.push(Some(r)),
            Err(e) => {
                errors.push(format!("[rust] {} (request {}): {e}", c.name, c.request));
                rust_answers.push(None);
            }
        }
    }
    let py_answers: Vec<Option<Vec<Value>>> = match &api.python {
        None => vec![None; checks.len()],
        Some(py) => {
            let requests: Vec<Value> = checks.iter().map(|c| c.request.clone()).collect();
            match py.get_flows_batch(&api.server, &requests).await {
                Ok(all) => all
                    .into_iter()
                    .zip(&checks)
                    .map(|(r, c)| match r {
                        Ok(r) => Some(r),
                        Err(e) => {
                            errors
                                .push(format!("[python] {} (request {}): {e}", c.name, c.request));
                            None
                        }
                    })
                    .collect(),
                Err(e) => {
                    errors.push(format!("[python] batch: {e}"));
                    vec![None; checks.len()]
                }
            }
        }
    };

    // Everything the API returned must reach the flow log as well.
    let returned: BTreeSet<String> = rust_answers
        .iter()
        .chain(&py_answers)
        .flatten()
        .flatten()
        .filter_map(|r| r["flow"]["uuid"].as_str().map(str::to_string))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let after: BTreeMap<String, Value> = loop {
        let after: BTreeMap<String, Value> = log_flows(&lab)
            .into_iter()
            .map(|f| (uuid(&f).to_string(), f))
            .collect();
        if returned.iter().all(|u| after.contains_key(u)) || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Flows must print as canonical JSON with the upstream descriptors alone.
    for (who, answers) in [("rust", &rust_answers), ("python", &py_answers)] {
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        for r in answers.iter().flatten().flatten() {
            let ext = &r["flow"]["extensions"];
            if ext[UNRESOLVABLE_ANY] == true {
                *types.entry(ext["@type"].to_string()).or_default() += 1;
            }
        }
        if !types.is_empty() {
            errors.push(format!(
                "[{who}] flows carry `extensions`, a google.protobuf.Any of a type the upstream protos do \
                 not define ({types:?} flows): a client generated from the upstream protos cannot print them \
                 as JSON (Python json_format raises TypeError; Go protojson, as in `hubble observe -o jsonpb`, \
                 fails with \"unable to resolve\")"
            ));
        }
    }
    for (i, c) in checks.iter().enumerate() {
        if let Some(r) = &rust_answers[i] {
            verify("rust", c, r, &before, &after, &facts, &mut errors);
        }
        if let Some(p) = &py_answers[i] {
            verify("python", c, p, &before, &after, &facts, &mut errors);
        }
        // Both clients decode the same bytes into the same canonical JSON.
        if let (Some(r), Some(p)) = (&rust_answers[i], &py_answers[i]) {
            let by_id = |rs: &[Value]| -> BTreeMap<String, Value> {
                rs.iter()
                    .map(|x| {
                        (
                            x["flow"]["uuid"].as_str().unwrap_or("").to_string(),
                            x.clone(),
                        )
                    })
                    .collect()
            };
            let (r, p) = (by_id(r), by_id(p));
            for (id, rv) in &r {
                if let Some(pv) = p.get(id)
                    && rv != pv
                {
                    errors.push(format!(
                        "{}: the clients print flow {id} differently:\n  rust:   {rv}\n  python: {pv}",
                        c.name
                    ));
                }
            }
        }
    }
    report(TEST, &errors);
    lab.shutdown().await.unwrap();
}

/// True when the responses include every uuid of `want`.
fn has_all(got: &[Value], want: &BTreeSet<String>) -> bool {
    let have: BTreeSet<&str> = got
        .iter()
        .filter_map(|r| r["flow"]["uuid"].as_str())
        .collect();
    want.iter().all(|u| have.contains(u.as_str()))
}

/// What a follow call must have streamed.
struct Followed<'a> {
    /// Flows in the flow log before the calls started.
    old: &'a BTreeSet<String>,
    /// The new traffic's pod-to-pod flows.
    want: &'a BTreeSet<String>,
}

impl Followed<'_> {
    /// `prefix`: the old flows the call must send first (`number`);
    /// `exact`: nothing but the new traffic may follow them.
    fn judge(
        &self,
        errors: &mut Vec<String>,
        who: &str,
        got: &[Value],
        prefix: &[&str],
        exact: bool,
    ) {
        let flows = flows_of(got, errors, who);
        let ids: Vec<&str> = flows.iter().map(uuid).collect();
        let (head, rest) = ids.split_at(prefix.len().min(ids.len()));
        if head != prefix {
            errors.push(format!(
                "{who}: first flows {head:?}, want the last old ones {prefix:?}"
            ));
        }
        let olds: Vec<&&str> = rest.iter().filter(|u| self.old.contains(**u)).collect();
        if !olds.is_empty() {
            errors.push(format!(
                "{who}: old flows streamed after the start: {olds:?}"
            ));
        }
        let rest: BTreeSet<String> = rest.iter().map(|u| u.to_string()).collect();
        let missing: Vec<&String> = self.want.difference(&rest).collect();
        if !missing.is_empty() {
            errors.push(format!("{who}: new flows never arrived: {missing:?}"));
        }
        if exact {
            let extra: Vec<&String> = rest.difference(self.want).collect();
            if !extra.is_empty() {
                errors.push(format!(
                    "{who}: flows that are not the new traffic's: {extra:?}"
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_flows_and_nothing_old_to_both_clients() {
    const TEST: &str = "follow_streams_new_flows_and_nothing_old_to_both_clients";
    let Some((lab, api)) = start(TEST, None).await else {
        return;
    };
    let old_traffic = vec![tcp("x/a", "x/b", 80, false, 1), icmp("y/c", "x/a", true, 1)];
    run_probes(&lab, &old_traffic).await;
    let before = wait_for_probe_flows(&lab, &old_traffic, &BTreeSet::new()).await;
    let old: BTreeSet<String> = before.iter().map(|f| uuid(f).to_string()).collect();
    let old_pods: Vec<&str> = before.iter().filter(|f| both_pods(f)).map(uuid).collect();

    let filtered = json!({"follow": true, "whitelist": [pods_only()]});
    let mut rust_filtered = api
        .rust
        .get_flows_stream(&filtered)
        .await
        .expect("follow (rust)");
    let mut rust_last2 = api
        .rust
        .get_flows_stream(&json!({"follow": true, "number": 2, "whitelist": [pods_only()]}))
        .await
        .expect("follow with number (rust)");
    let mut rust_all = api
        .rust
        .get_flows_stream(&json!({"follow": true}))
        .await
        .expect("follow (rust)");
    let mut py_filtered = match &api.python {
        Some(py) => Some(
            py.follow(&api.server, &filtered, Duration::from_secs(30))
                .await
                .expect("follow (python)"),
        ),
        None => None,
    };
    let mut py_all = match &api.python {
        Some(py) => Some(
            py.follow(
                &api.server,
                &json!({"follow": true}),
                Duration::from_secs(30),
            )
            .await
            .expect("follow (python)"),
        ),
        None => None,
    };

    let new_traffic = vec![
        tcp("x/a", "y/c", 80, false, 2),
        udp("y/c", "x/b", 53, true, 2),
        icmp("x/b", "x/a", false, 2),
    ];
    run_probes(&lab, &new_traffic).await;
    let log = wait_for_probe_flows(&lab, &new_traffic, &old).await;
    let new_pods: Vec<String> = log
        .iter()
        .filter(|f| both_pods(f) && !old.contains(uuid(f)))
        .map(|f| uuid(f).to_string())
        .collect();
    let new_classes: BTreeSet<String> = log
        .iter()
        .filter(|f| !old.contains(uuid(f)))
        .filter_map(class_of)
        .collect();
    let want_classes: BTreeSet<String> = new_traffic
        .iter()
        .flat_map(Probe::classes)
        .map(|c| c.key())
        .collect();
    assert_eq!(
        new_classes, want_classes,
        "the new traffic's flows in the flow log"
    );
    let want: BTreeSet<String> = new_pods.iter().cloned().collect();

    let mut errors = Vec::new();
    let read_rust = async |stream: &mut JsonStream| -> Result<Vec<Value>, String> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wait = if has_all(&got, &want) {
                Duration::from_millis(300)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(Ok(r))) => got.push(r),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(got)
    };
    let read_py = async |f: &mut PythonFollow| -> Result<Vec<Value>, PythonError> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wait = if has_all(&got, &want) {
                Duration::from_millis(300)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match f.next(wait).await? {
                Some(r) => got.push(r),
                None => break,
            }
        }
        Ok(got)
    };

    let ctx = Followed {
        old: &old,
        want: &want,
    };
    match read_rust(&mut rust_filtered).await {
        Ok(got) => ctx.judge(&mut errors, "[rust] follow, pods only", &got, &[], true),
        Err(e) => errors.push(format!("[rust] follow, pods only: {e}")),
    }
    let last2 = &old_pods[old_pods.len() - 2..];
    match read_rust(&mut rust_last2).await {
        Ok(got) => ctx.judge(
            &mut errors,
            "[rust] follow with number 2",
            &got,
            last2,
            true,
        ),
        Err(e) => errors.push(format!("[rust] follow with number 2: {e}")),
    }
    match read_rust(&mut rust_all).await {
        Ok(got) => ctx.judge(&mut errors, "[rust] follow, no filter", &got, &[], false),
        Err(e) => errors.push(format!("[rust] follow, no filter: {e}")),
    }
    if let Some(f) = py_filtered.as_mut() {
        match read_py(f).await {
            Ok(got) => ctx.judge(&mut errors, "[python] follow, pods only", &got, &[], true),
            Err(e) => errors.push(format!("[python] follow, pods only: {e}")),
        }
    }
    if let Some(f) = py_all.as_mut() {
        match read_py(f).await {
            Ok(got) => ctx.judge(&mut errors, "[python] follow, no filter", &got, &[], false),
            Err(e) => errors.push(format!("[python] follow, no filter: {e}")),
        }
    }
    drop((rust_filtered, rust_last2, rust_all));
    for f in [py_filtered, py_all].into_iter().flatten() {
        f.stop().await;
    }
    report(TEST, &errors);
    lab.shutdown().await.unwrap();
}

/// `name{labels} value` of the metrics exposition, summed over series.
fn metric(text: &str, family: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| l[family.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_status_nodes_namespaces_peers_and_unimplemented_methods() {
    const TEST: &str = "server_status_nodes_namespaces_peers_and_unimplemented_methods";
    // A unix socket has no address to announce; Relay would need the one
    // configured here.
    let config = format!("flowApi:\n  advertiseAddress: \"{ADVERTISED}\"\n");
    let Some((lab, api)) = start(TEST, Some(&config)).await else {
        return;
    };
    let traffic = vec![
        tcp("x/a", "y/c", 80, false, 1),
        udp("y/c", "x/b", 53, true, 1),
    ];
    run_probes(&lab, &traffic).await;
    wait_for_probe_flows(&lab, &traffic, &BTreeSet::new()).await;
    let mut errors = Vec::new();

    // ServerStatus, bracketed by the agent's own status (flows may keep
    // arriving: IPv6 neighbour discovery), from both clients.
    let capacity_metric = metric(
        &lab.metrics_text().await.unwrap(),
        "weir_flow_ring_capacity",
    );
    // (client, answer, within the bracket, status before, status after)
    let mut statuses = Vec::new();
    for attempt in 0..5 {
        let s1 = lab.agent_status().await.unwrap();
        let rust = api.rust.server_status().await;
        let py = match &api.python {
            Some(p) => Some(p.server_status(&api.server).await),
            None => None,
        };
        let s2 = lab.agent_status().await.unwrap();
        let mut answers = Vec::new();
        match rust {
            Ok(v) => answers.push(("rust", v)),
            Err(e) => errors.push(format!("[rust] ServerStatus: {e}")),
        }
        match py {
            Some(Ok(v)) => answers.push(("python", v)),
            Some(Err(e)) => errors.push(format!("[python] ServerStatus: {e}")),
            None => {}
        }
        let within = |v: &Value| {
            let seen = u64_of(&v["seen_flows"]).unwrap_or(0);
            let num = u64_of(&v["num_flows"]).unwrap_or(0);
            (s1.flows_seen..=s2.flows_seen).contains(&seen)
                && (s1.flows_in_ring..=s2.flows_in_ring).contains(&num)
        };
        let all_within = answers.iter().all(|(_, v)| within(v));
        statuses = answers
            .into_iter()
            .map(|(who, v)| (who, within(&v), v, s1.clone(), s2.clone()))
            .collect();
        if all_within || !errors.is_empty() || attempt == 4 {
            break;
        }
    }
    let log_count = log_flows(&lab).len() as u64;
    for (who, ok, v, s1, s2) in &statuses {
        let what = format!("[{who}] ServerStatus {v}");
        if !ok {
            errors.push(format!(
                "{what}: seen_flows/num_flows not between the agent's status before ({} seen, {} in ring) and after ({} seen, {} in ring)",
                s1.flows_seen, s1.flows_in_ring, s2.flows_seen, s2.flows_in_ring
            ));
        }
        let max = u64_of(&v["max_flows"]);
        if max != Some(s2.ring_capacity) || capacity_metric != Some(s2.ring_capacity as f64) {
            errors.push(format!(
                "{what}: max_flows {max:?}, want the ring capacity {} (status) = {capacity_metric:?} (weir_flow_ring_capacity)",
                s2.ring_capacity
            ));
        }
        let seen = u64_of(&v["seen_flows"]).unwrap_or(0);
        let num = u64_of(&v["num_flows"]).unwrap_or(0);
        if seen < s2.ring_capacity && num != seen {
            errors.push(format!(
                "{what}: the ring has not wrapped, yet num_flows {num} != seen_flows {seen}"
            ));
        }
        if seen < log_count.saturating_sub(50) || seen == 0 {
            errors.push(format!(
                "{what}: seen_flows {seen} but the flow log has {log_count} flows"
            ));
        }
        let uptime = u64_of(&v["uptime_ns"]).unwrap_or(0) as f64 / 1e9;
        if uptime <= 0.0 || (uptime - s2.uptime_seconds).abs() > 5.0 {
            errors.push(format!(
                "{what}: uptime {uptime} s, the agent says {} s",
                s2.uptime_seconds
            ));
        }
        if v["flows_rate"].as_f64().unwrap_or(0.0) <= 0.0 {
            errors.push(format!("{what}: flows_rate is not positive after traffic"));
        }
        if let Some(n) = v.get("num_connected_nodes")
            && n != 1
        {
            errors.push(format!("{what}: num_connected_nodes {n}, one node here"));
        }
        if v["version"].as_str().unwrap_or("").is_empty() {
            errors.push(format!("{what}: no version"));
        }
    }

    // GetNodes: this node, connected.
    let mut nodes = vec![(
        "rust",
        api.rust.get_nodes().await.map_err(|e| e.to_string()),
    )];
    if let Some(p) = &api.python {
        nodes.push((
            "python",
            p.get_nodes(&api.server).await.map_err(|e| e.to_string()),
        ));
    }
    let status = lab.agent_status().await.unwrap();
    for (who, answer) in nodes {
        match answer {
            Err(e) => errors.push(format!("[{who}] GetNodes: {e}")),
            Ok(v) => {
                let list = v["nodes"].as_array().cloned().unwrap_or_default();
                let fine = list.len() == 1
                    && list[0]["name"] == NODE
                    && list[0]["state"] == "NODE_CONNECTED"
                    && u64_of(&list[0]["max_flows"]) == Some(status.ring_capacity)
                    && u64_of(&list[0]["seen_flows"])
                        .is_some_and(|s| s > 0 && s <= status.flows_seen);
                if !fine {
                    errors.push(format!(
                        "[{who}] GetNodes {v}: want one node {NODE}, NODE_CONNECTED, max_flows {}, 0 < seen_flows <= {}",
                        status.ring_capacity, status.flows_seen
                    ));
                }
            }
        }
    }

    // GetNamespaces: the namespaces with flows, sorted.
    let mut namespaces = vec![(
        "rust",
        api.rust.get_namespaces().await.map_err(|e| e.to_string()),
    )];
    if let Some(p) = &api.python {
        namespaces.push((
            "python",
            p.get_namespaces(&api.server)
                .await
                .map_err(|e| e.to_string()),
        ));
    }
    for (who, answer) in namespaces {
        match answer {
            Err(e) => errors.push(format!("[{who}] GetNamespaces: {e}")),
            Ok(v) => {
                let names: Vec<&str> = v["namespaces"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n["namespace"].as_str()).collect())
                    .unwrap_or_default();
                if names != ["x", "y"] {
                    errors.push(format!("[{who}] GetNamespaces {v}: want x and y"));
                }
            }
        }
    }

    // Peer.Notify: this node, added, with an address.
    let mut peers = vec![(
        "rust",
        api.rust.peer_notify(1).await.map_err(|e| e.to_string()),
    )];
    if let Some(p) = &api.python {
        peers.push((
            "python",
            p.peer_notify(&api.server, 1)
                .await
                .map_err(|e| e.to_string()),
        ));
    }
    for (who, answer) in peers {
        match answer {
            Err(e) => errors.push(format!("[{who}] Peer.Notify: {e}")),
            Ok(v) => {
                let fine = v.len() == 1
                    && v[0]["name"] == NODE
                    && v[0]["type"] == "PEER_ADDED"
                    && !v[0]["address"].as_str().unwrap_or("").is_empty();
                if !fine {
                    errors.push(format!(
                        "[{who}] Peer.Notify {v:?}: want {NODE}, PEER_ADDED, with an address"
                    ));
                }
            }
        }
    }

    // GetAgentEvents: not implemented, and saying so.
    match api.rust.get_agent_events(&json!({"number": 1})).await {
        Err(e)
            if e.code() == Some(Code::Unimplemented)
                && !e.message().unwrap_or("").trim().is_empty() => {}
        other => errors.push(format!(
            "[rust] GetAgentEvents: want UNIMPLEMENTED with a message, got {other:?}"
        )),
    }
    if let Some(p) = &api.python {
        match p.get_agent_events(&api.server, &json!({"number": 1})).await {
            Err(PythonError::Rpc { code, details, .. })
                if code == "UNIMPLEMENTED" && !details.trim().is_empty() => {}
            other => errors.push(format!(
                "[python] GetAgentEvents: want UNIMPLEMENTED with a message, got {other:?}"
            )),
        }
    }
    report(TEST, &errors);
    lab.shutdown().await.unwrap();
}
