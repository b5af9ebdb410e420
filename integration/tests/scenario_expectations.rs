//! `weir-lab run` with the scenario additions for NetworkPolicy: `labels:`
//! changed live between steps, `expect:` on probes, probe `matrix:` with
//! truth tables, exit code 3 when an expectation fails; and steps of several
//! hundred probes.
//!
//! EVERY TEST HERE NEEDS THE AGENT: root, target/debug/weir and
//! target/debug/weir-cni. The datapath enforces no policy yet, so the
//! expectations here hold without one: everything connects, and a probe to
//! a closed port is blocked.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::record::{self, RunRecord};
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

/// Runs `weir-lab run SCENARIO ARGS` with the binaries under test.
fn weir_lab_run(
    options: &weir_integration::LabOptions,
    name: &str,
    yaml: &str,
    args: &[&str],
) -> (Output, Value) {
    let dir =
        std::env::temp_dir().join(format!("weirlab-expect-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join(format!("{name}.yaml"));
    std::fs::write(&scenario, yaml).unwrap();
    let out = Command::new(common::weir_lab_bin())
        .arg("run")
        .arg(&scenario)
        .arg("--weir")
        .arg(&options.weir_bin)
        .arg("--cni")
        .arg(&options.cni_bin)
        .args(args)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            common::output_text(&out)
        )
    });
    (out, v)
}

/// Removes a run left with `--keep`, even when the test panics.
struct KeptRun(String);

impl Drop for KeptRun {
    fn drop(&mut self) {
        if let Ok(rec) = RunRecord::load(&self.0) {
            let mut report = record::CleanupReport::default();
            record::remove_run(&rec, &mut report);
        }
    }
}

fn has_label(side: &Value, label: &str) -> bool {
    side["labels"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v == label))
}

const LABELS: &str = r#"
namespaces:
  - {name: x, labels: {ns: x}}
pods:
  - {namespace: x, name: a, labels: {pod: a}, ports: [{port: 80}]}
  - {namespace: x, name: b, labels: {pod: b}, ports: [{port: 80}]}
settle_ms: 1000
steps:
  - name: before
    probes:
      - {from: x/a, to: x/b, port: 80, expect: connected}
  - name: after
    labels:
      x/a: {pod: a, new: "yes"}
      x: {ns: x, env: prod}
    probes:
      - {from: x/a, to: x/b, port: 80, expect: connected}
"#;

/// `labels:` rewrites the manifests without recreating the pod (same
/// namespace, address and endpoint), and the agent's flows of the next
/// probes carry the new pod and namespace labels.
#[test]
fn labels_change_live_and_the_agents_flows_show_them() {
    let Some(options) =
        common::agent_lab_options("labels_change_live_and_the_agents_flows_show_them")
    else {
        return;
    };
    let (out, v) = weir_lab_run(&options, "labels", LABELS, &["--flows", "--keep"]);
    let kept = &v["kept"];
    let _cleanup = KeptRun(kept["run_id"].as_str().unwrap_or_default().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(v["expectations"]["checked"], 2);
    assert_eq!(v["expectations"]["failed"], 0);
    let ip_a = v["pod_ips"]["x/a"].as_str().unwrap().to_string();
    for step in v["steps"].as_array().unwrap() {
        let p = &step["probes"][0];
        assert_eq!(p["connected"], true, "{p}");
        assert_eq!(p["expect"], "connected");
        assert_eq!(p["ok"], true);
        assert!(step.get("matrix").is_none(), "no matrix, no key: {step}");
    }

    // Not recreated: the lab's pod namespaces are still the first two it
    // made, and x/a's still holds its address.
    let run_id = kept["run_id"].as_str().unwrap();
    let mut netns: Vec<&str> = kept["pod_netns"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_str().unwrap())
        .collect();
    netns.sort();
    assert_eq!(
        netns,
        vec![
            format!("weirlab-{run_id}-p0"),
            format!("weirlab-{run_id}-p1")
        ]
    );
    let ns_a = kept["pod_netns"]["x/a"].as_str().unwrap();
    let addr = Command::new("ip")
        .args(["-n", ns_a, "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{ip_a}/")),
        "{}",
        common::output_text(&addr)
    );

    // The manifests carry the complete new label sets.
    let manifests = Path::new(kept["dir"].as_str().unwrap()).join("manifests");
    let pod: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(manifests.join("pod-x-a.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        pod["metadata"]["labels"],
        serde_json::json!({"pod": "a", "new": "yes"})
    );
    let ns: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(manifests.join("ns-x.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        ns["metadata"]["labels"],
        serde_json::json!({"ns": "x", "env": "prod", "kubernetes.io/metadata.name": "x"})
    );

    // Flows from x/a: the first probe's with the old labels, the second's
    // with the new ones; the same endpoint and address throughout.
    let from_a: Vec<&Value> = v["flows"]
        .as_array()
        .expect("--flows")
        .iter()
        .map(|f| &f["flow"])
        .filter(|f| f["source"]["pod_name"] == "a" && f["destination"]["pod_name"] == "b")
        .collect();
    let old = from_a
        .iter()
        .find(|f| has_label(&f["source"], "k8s:pod=a") && !has_label(&f["source"], "k8s:new=yes"));
    let new = from_a.iter().find(|f| {
        has_label(&f["source"], "k8s:new=yes")
            && has_label(&f["source"], "k8s:io.cilium.k8s.namespace.labels.env=prod")
    });
    let (Some(old), Some(new)) = (old, new) else {
        panic!("flows x/a -> x/b before and after the label change: {from_a:#?}");
    };
    assert_eq!(old["IP"]["source"], ip_a.as_str());
    assert_eq!(new["IP"]["source"], ip_a.as_str());
    assert_eq!(
        old["source"]["ID"], new["source"]["ID"],
        "the same endpoint: the pod was not recreated"
    );
}

const MATRIX: &str = r#"
namespaces:
  - {name: x}
  - {name: y}
pods:
  - {namespace: x, name: a, ports: [{port: 80}, {port: 80, protocol: UDP}, {port: 81}]}
  - {namespace: x, name: b, ports: [{port: 80}, {port: 80, protocol: UDP}, {port: 81}]}
  - {namespace: y, name: c, ports: [{port: 80}, {port: 80, protocol: UDP}]}
settle_ms: 300
timeout_ms: 500
steps:
  - name: holds
    probes:
      - {from: x/a, to: y/c, port: 81, expect: blocked}
      - {from: x/a, to: y/c, port: 80}
    matrix:
      - ports: [80/TCP, 80/udp, 81/TCP, 82/TCP]
        expect:
          - {from: "*", to: "*", port: 82/TCP, result: blocked}
          - {from: "*", to: y/c, port: 81/TCP, result: blocked}
      - ports: [80/TCP]
        from: ["x/*"]
        to: ["*/c"]
        family: 6
  - name: fails
    matrix:
      - ports: [80/TCP]
        default: blocked
        expect:
          - {from: x/a, to: "*", result: connected}
"#;

/// Expectations that hold (exit 0 for that step's share), one matrix that
/// does not: exit 3, the wrong probes and the table on stderr, everything
/// judged in stdout.
#[test]
fn matrix_expectations_hold_and_a_failing_one_exits_3() {
    let Some(options) =
        common::agent_lab_options("matrix_expectations_hold_and_a_failing_one_exits_3")
    else {
        return;
    };
    let (out, v) = weir_lab_run(&options, "matrix", MATRIX, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", common::output_text(&out));

    let holds = &v["steps"][0];
    let probes = holds["probes"].as_array().unwrap();
    // 2 explicit, then 6 pairs x 4 ports, then x/a,x/b -> y/c on IPv6.
    assert_eq!(probes.len(), 2 + 24 + 2);
    assert_eq!(probes[0]["expect"], "blocked");
    assert_eq!(probes[0]["ok"], true, "{}", probes[0]);
    assert!(
        probes[1].get("expect").is_none() && probes[1].get("ok").is_none(),
        "a probe without expect gets neither key: {}",
        probes[1]
    );
    let first = &probes[2];
    assert_eq!(
        (
            &first["from"],
            &first["to"],
            &first["port"],
            &first["protocol"]
        ),
        (
            &Value::from("x/a"),
            &Value::from("x/b"),
            &Value::from(80),
            &Value::from("TCP")
        ),
        "from-major, to, port order"
    );
    assert_eq!(probes[3]["protocol"], "UDP");
    assert_eq!(probes[5]["port"], 82);
    assert_eq!(probes[5]["expect"], "blocked");
    assert_eq!(probes[5]["error"], "refused");
    for p in &probes[2..] {
        assert_eq!(p["ok"], true, "{p}");
    }
    let v6 = &probes[26];
    assert_eq!(v6["to"], "y/c");
    assert!(
        v6["dst"].as_str().unwrap().contains(':'),
        "family 6 probes the IPv6 address: {v6}"
    );
    let m = holds["matrix"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0]["ports"],
        serde_json::json!(["80/TCP", "80/UDP", "81/TCP", "82/TCP"])
    );
    assert_eq!(
        (m[0]["checked"].as_u64(), m[0]["failed"].as_u64()),
        (Some(24), Some(0))
    );
    assert_eq!(
        (m[1]["checked"].as_u64(), m[1]["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(m[1]["table"], "80/TCP\n    y/c\nx/a .\nx/b .");

    let fails = &v["steps"][1];
    let m = &fails["matrix"][0];
    assert_eq!(
        (m["checked"].as_u64(), m["failed"].as_u64()),
        (Some(6), Some(4))
    );
    let table = "80/TCP\n    x/a x/b y/c\nx/a -   .   .\nx/b X   -   X\ny/c X   X   -";
    assert_eq!(m["table"], table);
    assert_eq!(
        v["expectations"],
        serde_json::json!({"checked": 1 + 26 + 6, "failed": 4})
    );

    // stderr: every wrong probe, the table, the total.
    for wrong in ["x/b -> x/a", "x/b -> y/c", "y/c -> x/a", "y/c -> x/b"] {
        assert!(
            stderr.contains(&format!("steps[1] \"fails\": {wrong} (")),
            "{wrong} missing from:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("expected blocked, got connected"),
        "{stderr}"
    );
    assert!(stderr.contains(table), "{stderr}");
    assert!(stderr.contains("4 of 33 probes"), "{stderr}");
}

/// A step of 300+ probes whose destination drops everything takes about one
/// timeout: they all run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_dropped_probes_take_about_one_timeout() {
    let Some(mut options) =
        common::agent_lab_options("three_hundred_dropped_probes_take_about_one_timeout")
    else {
        return;
    };
    options.settle = Duration::from_millis(300);
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a"),
        PodSpec::new("x", "b")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(80)),
    ])
    .await
    .unwrap();
    let out = lab
        .exec_in_pod("x/b", &["ip", "link", "set", "eth0", "down"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timeout = Duration::from_millis(700);
    let specs: Vec<ProbeSpec> = (0..320)
        .map(|i| {
            if i % 2 == 0 {
                ProbeSpec::tcp("x/a", "x/b", 80)
            } else {
                ProbeSpec::udp("x/a", "x/b", 80)
            }
            .timeout(timeout)
        })
        .collect();
    let started = Instant::now();
    let results = lab.probe_all(&specs).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 320);
    assert!(results.iter().all(|r| !r.connected), "{results:?}");
    assert!(
        elapsed < timeout * 2 + Duration::from_millis(800),
        "320 dropped probes took {elapsed:?} with a {timeout:?} timeout"
    );
    lab.shutdown().await.unwrap();
}
