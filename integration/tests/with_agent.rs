//! End-to-end tests of the lab. EVERY TEST HERE NEEDS THE AGENT: root,
//! target/debug/weir and target/debug/weir-cni (CI builds them with
//! `cargo build --workspace --bins` first; locally they skip with a message
//! when missing, in CI they fail).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::process::ProcessRef;
use weir_integration::record::RunRecord;
use weir_integration::{Lab, LabOptions, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn four_ports(ns: &str, name: &str) -> PodSpec {
    PodSpec::new(ns, name)
        .label("pod", name)
        .port(PortSpec::tcp(80))
        .port(PortSpec::udp(80))
        .port(PortSpec::tcp(81))
        .port(PortSpec::udp(81))
}

/// Three pods with four ports each; settle times shortened for tests that
/// do not look at the agent's view of the pods.
async fn small_lab(mut options: LabOptions) -> Lab {
    options.settle = Duration::from_millis(300);
    lab_with(options).await
}

async fn lab_with(options: LabOptions) -> Lab {
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x").label("team", "a"))
        .unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        four_ports("x", "a"),
        four_ports("x", "b"),
        four_ports("y", "c"),
    ])
    .await
    .expect("pods come up");
    lab
}

/// Checks that nothing of run `run_id` is left: namespaces, processes,
/// directories, the record.
fn assert_nothing_left(run_id: &str, rec: &RunRecord) {
    assert!(
        common::netns_of_run(run_id).is_empty(),
        "namespaces left: {:?}",
        common::netns_of_run(run_id)
    );
    for p in &rec.processes {
        assert!(!p.is_alive(), "{} (pid {}) still runs", p.what, p.pid);
    }
    assert!(
        !rec.lab_dir.as_ref().unwrap().exists(),
        "lab directory left"
    );
    assert!(!RunRecord::dir_of(run_id).exists(), "run record left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_shutdown_and_drop_leave_nothing_behind() {
    let Some(options) = common::agent_lab_options("lab_shutdown_and_drop_leave_nothing_behind")
    else {
        return;
    };
    let started = Instant::now();
    let lab = small_lab(options.clone()).await;
    let run_id = lab.run_id().to_string();
    assert_eq!(common::netns_of_run(&run_id).len(), 4, "node + 3 pods");
    let rec = RunRecord::load(&run_id).unwrap();
    // Agent and three server processes, all running.
    assert_eq!(rec.processes.len(), 4, "{:?}", rec.processes);
    assert!(rec.processes.iter().all(ProcessRef::is_alive));
    assert!(lab.manifests_dir().join("pod-x-a.yaml").is_file());
    assert!(lab.agent_status().await.unwrap().ready);
    lab.shutdown().await.expect("clean shutdown");
    assert_nothing_left(&run_id, &rec);

    // Dropped without shutdown (as on a panic): the same.
    let lab = small_lab(options).await;
    let run_id = lab.run_id().to_string();
    let rec = RunRecord::load(&run_id).unwrap();
    drop(lab);
    assert_nothing_left(&run_id, &rec);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "two labs took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_reach_servers_over_tcp_udp_and_icmp_on_both_families() {
    let Some(options) =
        common::agent_lab_options("probes_reach_servers_over_tcp_udp_and_icmp_on_both_families")
    else {
        return;
    };
    let lab = small_lab(options).await;
    let ip_a = lab.pod_ip("x/a").expect("x/a has an IPv4 address");
    assert!(ip_a.is_ipv4());
    assert!(lab.pod_ip6("x/a").is_some_and(|ip| ip.is_ipv6()));
    let specs = vec![
        ProbeSpec::tcp("x/a", "x/b", 80),
        ProbeSpec::udp("x/a", "x/b", 81),
        ProbeSpec::tcp("x/a", "y/c", 81).ipv6(),
        ProbeSpec::udp("y/c", "x/a", 80).ipv6(),
        ProbeSpec::icmp("x/a", "y/c"),
        ProbeSpec::icmp("x/a", "y/c").ipv6(),
        ProbeSpec::tcp("y/c", &ip_a.to_string(), 80),
    ];
    let results = lab.probe_all(&specs).await.unwrap();
    for r in &results {
        assert!(r.connected, "{r:?}");
        let want = match (r.protocol, r.to.as_str()) {
            (weir_integration::Protocol::Icmp, _) => "",
            (_, to) if to == ip_a.to_string() => "a",
            (_, to) => to.rsplit('/').next().unwrap(),
        };
        assert_eq!(r.reply, want, "{r:?}");
    }
    let closed = lab.probe(&ProbeSpec::tcp("x/a", "x/b", 82)).await.unwrap();
    assert!(!closed.connected);
    assert_eq!(closed.error.as_deref(), Some("refused"));
    assert!(matches!(
        lab.probe(&ProbeSpec::tcp("x/a", "x/zz", 80)).await,
        Err(weir_integration::LabError::UnknownPod(_))
    ));

    let ping = lab
        .exec_in_pod("x/b", &["ping", "-c", "1", "-W", "2", &ip_a.to_string()])
        .await
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    lab.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_follow_labels_and_apply() {
    let Some(options) = common::agent_lab_options("manifests_follow_labels_and_apply") else {
        return;
    };
    let mut lab = small_lab(options).await;
    let ip_b = lab.pod_ip("x/b").unwrap().to_string();
    let pod_file = lab.manifests_dir().join("pod-x-b.yaml");
    let pod: Value = serde_saphyr::from_str(&std::fs::read_to_string(&pod_file).unwrap()).unwrap();
    assert_eq!(pod["status"]["podIP"], ip_b.as_str());
    assert_eq!(pod["spec"]["containers"][0]["ports"][1]["protocol"], "UDP");

    lab.set_labels("x/b", BTreeMap::from([("role".into(), "db".into())]))
        .await
        .unwrap();
    let pod: Value = serde_saphyr::from_str(&std::fs::read_to_string(&pod_file).unwrap()).unwrap();
    assert_eq!(pod["metadata"]["labels"]["role"], "db");
    assert!(
        pod["metadata"]["labels"].get("pod").is_none(),
        "labels are replaced"
    );
    lab.set_labels("y", BTreeMap::from([("env".into(), "prod".into())]))
        .await
        .unwrap();
    let ns: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(lab.manifests_dir().join("ns-y.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(ns["metadata"]["labels"]["env"], "prod");
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "y");

    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "x"},
        "spec": {"clusterIP": "10.96.0.10", "note": "${ip:x/b} in ${net:x/b/16}"}
    });
    lab.apply(&[svc]).await.unwrap();
    let applied: Vec<Value> = serde_saphyr::from_multiple(
        &std::fs::read_to_string(lab.manifests_dir().join("apply.yaml")).unwrap(),
    )
    .unwrap();
    let net16 = ipnetwork::Ipv4Network::new(ip_b.parse().unwrap(), 16).unwrap();
    assert_eq!(
        applied[0]["spec"]["note"],
        format!("{ip_b} in {}/16", net16.network())
    );
    lab.apply(&[]).await.unwrap();
    assert!(!lab.manifests_dir().join("apply.yaml").exists());
    lab.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unanswered_probes_take_about_one_timeout() {
    let Some(options) = common::agent_lab_options("many_unanswered_probes_take_about_one_timeout")
    else {
        return;
    };
    let lab = small_lab(options).await;
    // x/b's interface down: packets to it vanish, probes time out.
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
    let specs: Vec<ProbeSpec> = (0..72)
        .map(|i| {
            let from = ["x/a", "y/c"][i % 2];
            let s = if i % 3 == 0 {
                ProbeSpec::udp(from, "x/b", 80)
            } else {
                ProbeSpec::tcp(from, "x/b", 81)
            };
            s.timeout(timeout)
        })
        .collect();
    let started = Instant::now();
    let results = lab.probe_all(&specs).await.unwrap();
    let elapsed = started.elapsed();
    assert!(results.iter().all(|r| !r.connected), "{results:?}");
    assert!(
        elapsed < timeout * 2 + Duration::from_millis(500),
        "72 unanswered probes took {elapsed:?} with a {timeout:?} timeout"
    );
    assert!(
        elapsed >= timeout,
        "probes ended before their timeout: {elapsed:?}"
    );
    lab.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_flows_and_metrics_of_probe_traffic() {
    let Some(options) =
        common::agent_lab_options("agent_reports_flows_and_metrics_of_probe_traffic")
    else {
        return;
    };
    // The default settle: flows are only enriched once the agent has read
    // the pods' manifests.
    let lab = lab_with(options).await;
    let r = lab.probe(&ProbeSpec::tcp("x/a", "x/b", 80)).await.unwrap();
    assert!(r.connected, "{r:?}");
    let pod_is =
        |side: &Value, ns: &str, name: &str| side["namespace"] == ns && side["pod_name"] == name;
    let flows = match lab
        .wait_for_flows(
            |f| {
                pod_is(&f["flow"]["source"], "x", "a")
                    && pod_is(&f["flow"]["destination"], "x", "b")
            },
            Duration::from_secs(10),
        )
        .await
    {
        Ok(f) => f,
        Err(e) => panic!(
            "{e}: no flow x/a -> x/b among {:#?}",
            lab.flows().unwrap_or_default()
        ),
    };
    assert_eq!(flows[0]["node_name"], lab.options().node_name.as_str());
    let metrics = lab.metrics_text().await.unwrap();
    assert!(metrics.contains("weir_flows_processed_total"), "{metrics}");
    lab.shutdown().await.unwrap();
}

#[test]
fn weir_lab_run_prints_probe_results_as_json() {
    let Some(options) = common::agent_lab_options("weir_lab_run_prints_probe_results_as_json")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weirlab-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("small.yaml");
    std::fs::write(
        &scenario,
        r#"
namespaces:
  - {name: x, labels: {team: a}}
pods:
  - namespace: x
    name: a
    labels: {pod: a}
    ports:
      - {name: serve-80-tcp, port: 80, protocol: TCP}
      - {name: serve-80-udp, port: 80, protocol: UDP}
  - namespace: x
    name: b
    labels: {pod: b}
    ports:
      - {name: serve-80-tcp, port: 80, protocol: TCP}
      - {name: serve-80-udp, port: 80, protocol: UDP}
steps:
  - apply: []
    probes:
      - {from: x/a, to: x/b, port: 80, protocol: TCP}
      - {from: x/a, to: x/b, port: 80, protocol: UDP}
      - {from: x/b, to: x/a, port: 80, protocol: TCP}
      - {from: x/b, to: x/a, port: 80, protocol: UDP}
"#,
    )
    .unwrap();
    let out = Command::new(common::weir_lab_bin())
        .arg("run")
        .arg(&scenario)
        .arg("--weir")
        .arg(&options.weir_bin)
        .arg("--cni")
        .arg(&options.cni_bin)
        .arg("--flows")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir-lab run failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let probes = v["steps"][0]["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 4);
    for p in probes {
        assert_eq!(p["connected"], true, "{p}");
        let to = p["to"].as_str().unwrap();
        assert_eq!(p["reply"], to.rsplit('/').next().unwrap(), "{p}");
        assert_eq!(p["port"], 80);
        assert!(p["ms"].as_f64().unwrap() >= 0.0);
        let ip = p["dst"].as_str().unwrap();
        assert_eq!(v["pod_ips"][to], ip, "probes go to the pod's IPv4 address");
        assert!(ip.parse::<std::net::Ipv4Addr>().is_ok());
    }
    assert_eq!(probes[0]["protocol"], "TCP");
    assert_eq!(probes[1]["protocol"], "UDP");
    let flows = v["flows"].as_array().expect("--flows adds \"flows\"");
    assert!(
        flows
            .iter()
            .any(|f| f["flow"]["destination"]["pod_name"] == "b"),
        "no flow to x/b in {} flows",
        flows.len()
    );
}
