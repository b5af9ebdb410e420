//! `weir policy explain` and `weir policy what-if` against a real agent in
//! the lab. NEEDS THE AGENT (root, target/debug/weir, weir-cni, weir-lab).
//!
//! With a policy applied through the lab: explain, asked of the agent over
//! its socket and offline on the lab's manifests directory, agrees with
//! what real probes see (one connection allowed, one denied). Then, with
//! traffic recorded, what-if of a change that denies part of it lists
//! exactly the recorded flows the change denies, from the flow log and from
//! the flow API (enabled at runtime), with the agent's model and offline;
//! finally the change is applied for real and probes confirm it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn weir(args: &[&str]) -> std::process::Output {
    common::run_weir(args)
}

fn pod(ns: &str, name: &str) -> PodSpec {
    PodSpec::new(ns, name)
        .label("pod", name)
        .port(PortSpec::tcp(80))
        .port(PortSpec::tcp(81))
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The policy in force: x/a accepts 80/TCP from anyone, nothing else.
fn current() -> Value {
    np(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
               "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
    )
}

/// The change: x/a accepts 80/TCP only from pods of x (y/c loses it), and
/// every pod of y is isolated for ingress (x/b loses y/c:81).
fn change() -> Vec<Value> {
    vec![
        np(
            "x",
            "web",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {}}],
                                "ports": [{"port": 80, "protocol": "TCP"}]}]}),
        ),
        np(
            "y",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    ]
}

fn explain(model: &[&str], from: &str, to: &str, port: &str) -> Value {
    let mut args = vec![
        "policy", "explain", "--from", from, "--to", to, "--port", port, "-o", "json",
    ];
    args.extend_from_slice(model);
    let out = weir(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        common::output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::output_text(&out)))
}

/// What must agree between the agent's answer and the offline one
/// (identity numbers may differ: each model allocates its own).
fn decision(e: &Value) -> Value {
    let side = |d: &Value| {
        if d.is_null() {
            return Value::Null;
        }
        json!({"verdict": d["verdict"], "enforced": d["enforced"], "decided_by": d["decided_by"],
               "isolated_by": d["isolated_by"], "rules": d["rules"]})
    };
    json!({"verdict": e["verdict"], "from": e["from"]["pod"], "to": e["to"]["pod"],
           "to_ip": e["to"]["ip"], "egress": side(&e["egress"]), "ingress": side(&e["ingress"])})
}

/// (source pod, destination pod, port, before, after) of each listed change.
fn changes(report: &Value) -> BTreeSet<(String, String, u64, String, String)> {
    report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["flow"]["source_pod"].as_str().unwrap_or("-").to_owned(),
                c["flow"]["destination_pod"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned(),
                c["flow"]["port"].as_u64().unwrap(),
                c["before"]["verdict"].as_str().unwrap().to_owned(),
                c["after"]["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn what_if(change: &Path, flows: &[&str], model: &[&str]) -> Value {
    let mut args = vec!["policy", "what-if", change.to_str().unwrap(), "-o", "json"];
    args.extend_from_slice(flows);
    args.extend_from_slice(model);
    let out = weir(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        common::output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::output_text(&out)))
}

/// Whether each probe connected, in order.
async fn connected(lab: &weir_integration::Lab, probes: &[ProbeSpec]) -> Vec<bool> {
    lab.probe_all(probes)
        .await
        .unwrap()
        .iter()
        .map(|r| r.connected)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_what_if_agree_with_the_datapath() {
    let Some(mut options) =
        common::agent_lab_options("explain_and_what_if_agree_with_the_datapath")
    else {
        return;
    };
    // The flow API's socket in a directory of this test, not the machine's default.
    let tmp = tempfile::tempdir().unwrap();
    let hubble = tmp.path().join("hubble.sock");
    options.agent_args = vec!["--flow-api-socket".into(), hubble.display().to_string()];
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![pod("x", "a"), pod("x", "b"), pod("y", "c")])
        .await
        .expect("pods come up");
    lab.apply(&[current()]).await.expect("policy applied");

    // The datapath: y/c reaches x/a on 80, not on 81.
    let probes = [
        ProbeSpec::tcp("y/c", "x/a", 80),
        ProbeSpec::tcp("y/c", "x/a", 81),
        ProbeSpec::tcp("x/b", "x/a", 80),
        ProbeSpec::tcp("x/b", "y/c", 81),
    ];
    let seen = connected(&lab, &probes).await;
    assert_eq!(
        seen,
        vec![true, false, true, true],
        "probes before the change"
    );

    // explain, from the agent and offline, says the same as the probes.
    let sock = lab.socket().display().to_string();
    let dir = lab.manifests_dir().display().to_string();
    for (port, want) in [("80/TCP", "ALLOWED"), ("81/TCP", "DENIED")] {
        let agent = explain(&["--socket", &sock], "y/c", "x/a", port);
        let offline = explain(&["--manifests", &dir], "y/c", "x/a", port);
        assert_eq!(agent["verdict"], want, "{agent}");
        assert!(
            agent["model"]
                .as_str()
                .is_some_and(|m| m.starts_with("the agent's model")),
            "{agent}"
        );
        assert_eq!(decision(&agent), decision(&offline), "{port}");
        assert_eq!(agent["ingress"]["isolated_by"], json!(["x/web"]));
    }
    let allowed = explain(&["--socket", &sock], "y/c", "x/a", "80/TCP");
    assert_eq!(
        allowed["ingress"]["rules"],
        json!([{"policy": "x/web", "rule": "spec.ingress[0]",
                "port": "spec.ingress[0].ports[0]", "via": "any"}])
    );
    // By address, as an SRE copies it from a flow.
    let ip_a = lab.pod_ip("x/a").unwrap().to_string();
    let by_ip = explain(&["--socket", &sock], "y/c", &ip_a, "81/TCP");
    assert_eq!(by_ip["to"]["pod"], "x/a");
    assert_eq!(by_ip["verdict"], "DENIED");
    // The text form's first line is the verdict.
    let out = weir(&[
        "policy", "explain", "--from", "y/c", "--to", "x/a", "--port", "81/TCP", "--socket", &sock,
    ]);
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(t.starts_with("DENIED  y/c ("), "{t}");
    assert!(
        t.contains("  no rule of these policies allows 81/TCP from y/c (identity "),
        "{t}"
    );

    // The recorded flows: wait until the flow log has each probe.
    let flow_log = lab.flow_log_path().expect("lab flow log").to_path_buf();
    for (src, dst, port) in [
        ("c", "a", 80),
        ("c", "a", 81),
        ("b", "a", 80),
        ("b", "c", 81),
    ] {
        lab.wait_for_flows(
            |l| {
                let f = &l["flow"];
                f["source"]["pod_name"] == src
                    && f["destination"]["pod_name"] == dst
                    && f["l4"]["TCP"]["destination_port"] == port
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("flow {src} -> {dst}:{port} not logged: {e}"));
    }
    let change_file = tmp.path().join("change.json");
    std::fs::write(
        &change_file,
        change()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let expected: BTreeSet<(String, String, u64, String, String)> = [
        ("y/c", "x/a", 80, "ALLOWED", "DENIED"),
        ("x/b", "y/c", 81, "ALLOWED", "DENIED"),
    ]
    .iter()
    .map(|(s, d, p, b, a)| {
        (
            s.to_string(),
            d.to_string(),
            *p,
            b.to_string(),
            a.to_string(),
        )
    })
    .collect();

    // From the flow log, with the agent's model and offline.
    let log = flow_log.display().to_string();
    let from_log = what_if(&change_file, &["--flows", &log], &["--socket", &sock]);
    assert_eq!(changes(&from_log), expected, "{from_log}");
    assert!(from_log["connections"].as_u64().unwrap() >= 4, "{from_log}");
    let offline = what_if(&change_file, &["--flows", &log], &["--manifests", &dir]);
    assert_eq!(changes(&offline), expected, "{offline}");

    // From the flow API, once enabled.
    let out = weir(&["flows", "enable", "--socket", &sock, "-o", "json"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["socket"], hubble.display().to_string());
    let server = format!("unix://{}", hubble.display());
    let from_api = what_if(&change_file, &["--server", &server], &["--socket", &sock]);
    assert_eq!(changes(&from_api), expected, "{from_api}");
    assert_eq!(from_api["flows_from"], format!("the flow API at {server}"));
    let from_api = what_if(&change_file, &["--server", &server], &["--manifests", &dir]);
    assert_eq!(changes(&from_api), expected, "{from_api}");

    // Applied for real: the probes confirm exactly that.
    lab.apply(&change()).await.expect("change applied");
    let seen = connected(&lab, &probes).await;
    assert_eq!(
        seen,
        vec![false, false, true, false],
        "probes after the change"
    );
    // And explain on the agent now agrees.
    let now = explain(&["--socket", &sock], "y/c", "x/a", "80/TCP");
    assert_eq!(now["verdict"], "DENIED", "{now}");
    lab.shutdown().await.expect("lab shuts down");
}
