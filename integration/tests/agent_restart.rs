//! NEEDS THE AGENT. An agent restart re-attaches the pods networked before
//! it (weir-cni tells the agent about a pod once, at CNI ADD) from the
//! endpoints file, with their policy in force from the first packet; a pod
//! whose interface went while no agent ran is forgotten, and the file goes
//! with the last pod.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn np(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "x", "name": name}, "spec": spec})
}

async fn connects(lab: &Lab, from: &str, to: &str) -> bool {
    let spec = ProbeSpec::tcp(from, to, 80).timeout(Duration::from_millis(700));
    lab.probe(&spec).await.expect("probe runs").connected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reattaches_pods_with_their_policy() {
    let Some(options) = common::agent_lab_options("restart_reattaches_pods_with_their_policy")
    else {
        return;
    };
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a")
            .label("app", "a")
            .port(PortSpec::tcp(80)),
        PodSpec::new("x", "b").label("app", "b"),
        PodSpec::new("x", "c").label("app", "c"),
        PodSpec::new("x", "d").label("app", "d"),
    ])
    .await
    .expect("pods");
    // a admits only b.
    lab.apply(&[np(
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
    )])
    .await
    .unwrap();
    assert!(connects(&lab, "x/b", "x/a").await, "b -> a allowed");
    assert!(!connects(&lab, "x/c", "x/a").await, "c -> a denied");
    let file = lab.dir().join("endpoints.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).expect("endpoints file"))
        .expect("endpoints file is JSON");
    assert_eq!(
        saved["endpoints"].as_array().map(Vec::len),
        Some(4),
        "{saved}"
    );

    let before = lab.client().endpoints().await.expect("endpoints");
    let d_if = before
        .iter()
        .find(|e| e.registration.pod == "d")
        .map(|e| e.registration.host_ifname.clone())
        .expect("d's endpoint");

    // The agent stops; d's interface goes meanwhile (its pod deleted while
    // no agent ran); the agent starts again.
    lab.stop_agent().await.expect("agent stops");
    assert!(file.exists(), "a stopped agent with pods keeps the file");
    let out = std::process::Command::new("ip")
        .args(["-n", lab.node_netns(), "link", "del", &d_if])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.start_agent().await.expect("agent starts again");

    // a, b and c are back, with the registrations they had; d is forgotten.
    let after = lab.client().endpoints().await.expect("endpoints");
    let regs = |eps: &[weir_localapi::Endpoint]| {
        let mut v: Vec<_> = eps
            .iter()
            .filter(|e| e.registration.pod != "d")
            .map(|e| {
                let mut r = e.registration.clone();
                r.host_ifindex = 0;
                r
            })
            .collect();
        v.sort_by(|x, y| x.pod.cmp(&y.pod));
        v
    };
    assert_eq!(regs(&after), regs(&before));
    assert!(after.iter().all(|e| e.attached), "{after:?}");
    assert_eq!(
        common::metric(&lab, "weir_endpoints_restored_total"),
        Some(3.0)
    );
    assert_eq!(common::metric(&lab, "weir_endpoints"), Some(3.0));
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        saved["endpoints"].as_array().map(Vec::len),
        Some(3),
        "d is dropped from the file: {saved}"
    );

    // The policy is enforced by the new agent's programs and maps.
    assert!(connects(&lab, "x/b", "x/a").await, "b -> a allowed again");
    assert!(!connects(&lab, "x/c", "x/a").await, "c -> a denied again");
    // Kernel counters reach /metrics once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let drops = loop {
        let drops = common::metric(&lab, "weir_datapath_drops_total{reason=\"POLICY_DENIED\"}")
            .unwrap_or(0.0);
        if drops >= 1.0 || std::time::Instant::now() > deadline {
            break drops;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        drops >= 1.0,
        "the new agent's programs dropped c's SYN: {drops}"
    );

    lab.shutdown().await.expect("clean shutdown");
    assert!(
        !file.exists(),
        "the last pod gone, the file goes with the agent"
    );
}
