//! A real Prometheus scrapes a real agent in the lab under traffic, and every
//! dashboard panel's query runs through Prometheus's HTTP API.
//!
//! Prometheus (Debian's `prometheus` binary) gets its own storage directory
//! and a loopback port, scrapes the agent every second and loads
//! `dashboards/rules/weir.rules.yaml`. Lab pods exchange TCP, UDP and ICMP
//! for about 12 s; then each panel's targets run with Grafana's variables
//! substituted. A query error fails the test, and so does an empty result,
//! unless the panel is declared in [`NOT_FED_YET`] with the reason the lab
//! cannot feed it. A declared panel that returns data fails too, so the
//! table never outlives what it excuses. The recording rules are checked the
//! same way, the rules must evaluate without error, and a healthy lab must
//! raise no alert.
//!
//! Needs root, `weir`, `weir-cni` and `prometheus`: skips locally without
//! them, fails under CI=true.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

/// The agent's Hubble metric options in this test: the defaults plus the
/// contexts the per-namespace and per-pod drop panels need (see
/// dashboards/README.md).
const METRICS_CONFIG: &str = r#"metrics:
  flows:
    - flow
    - "drop:labelsContext=source_namespace,source_pod,destination_namespace,destination_pod"
    - tcp
    - port-distribution
    - icmp
    - policy
    - flows-to-world
"#;

/// Panels (by title, unique across dashboards) and recording rules (by
/// name) that the lab's traffic cannot feed yet, with the reason. Everything
/// else must return data.
const NOT_FED_YET: &[(&str, &str)] = &[];

/// Grafana's `$__rate_interval` for a 1 s scrape, with margin.
const RATE_INTERVAL: &str = "15s";
/// How long the lab's pods exchange traffic.
const TRAFFIC: Duration = Duration::from_secs(12);

use common::in_ci;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `prometheus` from PATH; None (after saying why) when a local run must skip.
fn prometheus_bin(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg =
            format!("{test}: needs prometheus (apt-get install prometheus, or cargo xtask setup)");
        if in_ci() {
            panic!("{msg}; CI=true forbids skipping");
        }
        eprintln!("skipping {msg}");
    }
    found
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET over HTTP/1.0 (so the body is neither chunked nor kept alive):
/// status and body.
fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A Prometheus server of this test; killed and its storage removed on drop,
/// even when the test panics.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("weir-prometheus-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        // A free loopback port; the tiny window before Prometheus binds it is
        // harmless in a test.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a successful API answer; Err with the error otherwise.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) =
            http_get(self.addr, path_and_query).map_err(|e| format!("{path_and_query}: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{path_and_query}: HTTP {status}, not JSON ({e}): {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!(
                "HTTP {status}: {} {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// Series returned by a range query over [`start`, `end`] (or an
    /// instant query at `end`).
    fn series(&self, expr: &str, instant: bool, start: f64, end: f64) -> Result<usize, String> {
        let data = if instant {
            self.api(&format!("/api/v1/query?query={}&time={end}", encode(expr)))?
        } else {
            self.api(&format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step=1",
                encode(expr)
            ))?
        };
        match &data["result"] {
            Value::Array(a) => Ok(a.len()),
            // A scalar or string result always has a value.
            _ => Ok(1),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A panel's queries, with Grafana's variables as a user would get them.
struct PanelQueries {
    dashboard: String,
    title: String,
    /// (expression, instant?)
    targets: Vec<(String, bool)>,
}

fn dashboard_queries(node: &str) -> Vec<PanelQueries> {
    let dir = workspace_root().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = d["title"].as_str().unwrap_or_default().to_string();
        let mut all = Vec::new();
        for p in d["panels"].as_array().into_iter().flatten() {
            all.push(p);
            all.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in all.into_iter().filter(|p| p["type"] != "row") {
            let targets = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap_or_default()
                        .replace("$__rate_interval", RATE_INTERVAL)
                        .replace("$node", node);
                    assert!(
                        !expr.contains('$'),
                        "{name}: an unhandled Grafana variable in {expr}"
                    );
                    (expr, t["instant"] == true)
                })
                .collect();
            out.push(PanelQueries {
                dashboard: name.clone(),
                title: p["title"].as_str().unwrap_or_default().to_string(),
                targets,
            });
        }
    }
    out
}

/// Escapes regex metacharacters of a label value for `=~`.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push_str(r"\\");
        }
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_fed_by_the_lab_returns_data_from_a_real_prometheus() {
    const TEST: &str = "every_dashboard_panel_fed_by_the_lab_returns_data_from_a_real_prometheus";
    let Some(bin) = prometheus_bin(TEST) else {
        return;
    };
    let Some(mut options) = common::agent_lab_options(TEST) else {
        return;
    };
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("weir.yaml");
    std::fs::write(&cfg, METRICS_CONFIG).unwrap();
    options.agent_args = vec!["--config".into(), cfg.display().to_string()];
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a")
            .label("app", "a")
            .port(PortSpec::tcp(80)),
        PodSpec::new("y", "b")
            .label("app", "b")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53)),
        PodSpec::new("y", "c")
            .label("app", "c")
            .port(PortSpec::tcp(80)),
    ])
    .await
    .expect("pods come up");
    // Policy: y/b admits everything from namespace x (allowed verdicts),
    // y/c admits nothing (drops, denied verdicts).
    let policy = |name: &str, spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "y", "name": name}, "spec": spec,
        })
    };
    lab.apply(&[
        policy(
            "b-from-x",
            serde_json::json!({
                "podSelector": {"matchLabels": {"app": "b"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}],
            }),
        ),
        policy(
            "c-deny-all",
            serde_json::json!({"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Ingress"]}),
        ),
    ])
    .await
    .expect("policies applied");
    let target = lab.metrics_addr().expect("agent metrics address");
    let rules = workspace_root().join("dashboards/rules/weir.rules.yaml");
    let prom = Prometheus::start(&bin, target, &rules);

    // Traffic of every kind, in a loop: answered TCP (v4 and v6), UDP and
    // ICMP, a TCP connection refused with a RST, and one dropped by policy.
    let specs = [
        ProbeSpec::tcp("x/a", "y/b", 80),
        ProbeSpec::tcp("x/a", "y/b", 80).ipv6(),
        ProbeSpec::udp("x/a", "y/b", 53),
        ProbeSpec::icmp("x/a", "y/b"),
        ProbeSpec::tcp("y/b", "x/a", 81).timeout(Duration::from_millis(300)),
        ProbeSpec::tcp("x/a", "y/c", 80).timeout(Duration::from_millis(300)),
    ];
    let started = now();
    let until = Instant::now() + TRAFFIC;
    let mut rounds = 0;
    while Instant::now() < until {
        let results = lab.probe_all(&specs).await.expect("probes run");
        for r in &results[..4] {
            assert!(r.connected, "{r:?}");
        }
        assert!(!results[5].connected, "dropped by policy: {:?}", results[5]);
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rounds >= 10, "only {rounds} rounds of traffic");

    // The agent is a healthy target, found by the dashboards' node variable.
    let targets = prom.api("/api/v1/targets").unwrap();
    let active = targets["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "scrape of the agent: {targets}");
    let instance = active[0]["labels"]["instance"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(instance, target.to_string());
    let nodes = prom
        .api(&format!(
            "/api/v1/label/instance/values?match[]={}",
            encode("weir_build_info")
        ))
        .unwrap();
    assert_eq!(
        nodes,
        serde_json::json!([instance]),
        "label_values(weir_build_info, instance)"
    );

    // Every panel's queries.
    let end = now();
    let start = end - 10.0;
    assert!(start > started, "the queried range lies within the traffic");
    let node = regex_escape(&instance);
    let declared: BTreeMap<&str, &str> = NOT_FED_YET.iter().copied().collect();
    assert_eq!(
        declared.len(),
        NOT_FED_YET.len(),
        "NOT_FED_YET lists a title twice"
    );
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    let mut empty = Vec::new();
    let mut stale = Vec::new();
    let panels = dashboard_queries(&node);
    for p in &panels {
        seen.insert(p.title.as_str());
        let mut fed = Vec::new();
        for (expr, instant) in &p.targets {
            match prom.series(expr, *instant, start, end) {
                Ok(n) => fed.push(n > 0),
                Err(e) => errors.push(format!("{} / {}: {expr}: {e}", p.dashboard, p.title)),
            }
        }
        match declared.get(p.title.as_str()) {
            Some(reason) if fed.iter().any(|f| *f) => stale.push(format!(
                "{} / {}: declared not fed ({reason}) but returns data: remove it from NOT_FED_YET",
                p.dashboard, p.title
            )),
            None if fed.iter().any(|f| !f) => empty.push(format!(
                "{} / {}: {:?}",
                p.dashboard,
                p.title,
                p.targets
                    .iter()
                    .zip(&fed)
                    .filter(|(_, f)| !**f)
                    .map(|(t, _)| &t.0)
                    .collect::<Vec<_>>()
            )),
            _ => {}
        }
    }

    // The rules loaded and evaluate without error; each recording rule has
    // data, like a panel.
    let deadline = Instant::now() + Duration::from_secs(10);
    let groups = loop {
        let data = prom.api("/api/v1/rules").unwrap();
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let evaluated = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["health"] != "unknown");
        if (!groups.is_empty() && evaluated) || Instant::now() > deadline {
            break groups;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["weir.alerts", "weir.recording"], "{}", prom.log());
    let mut alerts = BTreeSet::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "rule {name}: {rule}");
        assert!(
            rule["lastError"].as_str().unwrap_or_default().is_empty(),
            "rule {name}: {rule}"
        );
        if rule["type"] == "alerting" {
            alerts.insert(name);
            // A healthy lab raises nothing, not even pending.
            assert_eq!(
                rule["state"], "inactive",
                "alert {name} in a healthy lab: {rule}"
            );
            continue;
        }
        seen.insert(name);
        let n = prom
            .series(&format!("{name}{{instance=~\"{node}\"}}"), true, start, end)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match declared.get(name) {
            Some(reason) if n > 0 => stale.push(format!(
                "rule {name}: declared not fed ({reason}) but returns data"
            )),
            None if n == 0 => empty.push(format!("recording rule {name}")),
            _ => {}
        }
    }
    for want in ["WeirLostEvents", "WeirDropSpike", "WeirStateSyncStale"] {
        assert!(alerts.contains(want), "alert {want} loaded: {alerts:?}");
    }

    let unknown: Vec<&str> = declared
        .keys()
        .copied()
        .filter(|t| !seen.contains(t))
        .collect();
    // All problems at once, so one run shows everything to fix.
    let mut problems = Vec::new();
    if !errors.is_empty() {
        problems.push(format!(
            "queries Prometheus rejects:\n{}",
            errors.join("\n")
        ));
    }
    if !empty.is_empty() {
        problems.push(format!(
            "no data although the lab feeds them (or declare them in NOT_FED_YET):\n{}",
            empty.join("\n")
        ));
    }
    if !stale.is_empty() {
        problems.push(stale.join("\n"));
    }
    if !unknown.is_empty() {
        problems.push(format!(
            "NOT_FED_YET names panels that do not exist: {unknown:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(panels.len() >= 40, "{} panels", panels.len());
    eprintln!(
        "{} panels: {} return data, {} declared not fed yet",
        panels.len(),
        panels.len() - NOT_FED_YET.len(),
        NOT_FED_YET.len()
    );
    drop(prom);
    lab.shutdown().await.unwrap();
}
