//! `weir observe` end to end: each flag `hubble observe` has, run as a user
//! runs it, against the real agent serving flows of real lab traffic; every
//! flow printed must satisfy the flag and the flag must select something.
//!
//! Needs root and the `weir` / `weir-cni` binaries (see tests/common).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::{Lab, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn weir_bin() -> PathBuf {
    common::binary("WEIR_LAB_WEIR", "weir")
}

fn run(args: &[String]) -> Output {
    common::run_weir(args)
}

use common::{observed_flows as flows_of, output_text as text};

fn side<'a>(f: &'a Value, s: &str) -> &'a Value {
    &f[s]
}

fn pod(f: &Value, s: &str) -> String {
    format!(
        "{}/{}",
        side(f, s)["namespace"].as_str().unwrap_or(""),
        side(f, s)["pod_name"].as_str().unwrap_or("")
    )
}

fn ip(f: &Value, s: &str) -> String {
    f["IP"][s].as_str().unwrap_or("").to_string()
}

fn dport(f: &Value) -> Option<u64> {
    let l4 = &f["l4"];
    l4["TCP"]["destination_port"]
        .as_u64()
        .or_else(|| l4["UDP"]["destination_port"].as_u64())
}

fn proto(f: &Value) -> String {
    f["l4"]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default()
}

fn labels(f: &Value, s: &str) -> Vec<String> {
    side(f, s)["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_observe_flag_selects_exactly_what_it_says() {
    let Some(mut options) = common::agent_lab_options("flow_api_observe") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hubble = tmp.path().join("hubble.sock");
    options.agent_args = vec![
        "--flow-api".into(),
        "--flow-api-socket".into(),
        hubble.display().to_string(),
    ];
    let node = options.node_name.clone();
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a").label("app", "a"),
        PodSpec::new("x", "b")
            .label("app", "b")
            .port(PortSpec::tcp(8080)),
        PodSpec::new("y", "c")
            .label("app", "c")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53)),
    ])
    .await
    .expect("pods come up");
    let before_traffic = time::OffsetDateTime::now_utc();
    for p in [
        ProbeSpec::tcp("x/a", "y/c", 80),
        ProbeSpec::udp("x/b", "y/c", 53),
        ProbeSpec::tcp("x/a", "x/b", 8080),
        ProbeSpec::icmp("x/a", "y/c"),
        ProbeSpec::tcp("x/b", "y/c", 80).ipv6(),
    ] {
        let r = lab.probe(&p).await.expect("probe runs");
        assert!(r.connected, "{p:?}: {r:?}");
    }
    let a_ip = lab.pod_ip("x/a").unwrap().to_string();
    let c_ip = lab.pod_ip("y/c").unwrap().to_string();
    let server = format!("unix://{}", hubble.display());
    let observe = |flags: &[&str]| -> Vec<Value> {
        let mut args: Vec<String> = ["observe", "--server", &server, "-o", "json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !flags
            .iter()
            .any(|f| ["--last", "--first", "--since", "--all"].contains(f))
        {
            args.push("--all".into());
        }
        args.extend(flags.iter().map(|s| s.to_string()));
        let o = run(&args);
        assert!(o.status.success(), "{flags:?}: {}", text(&o));
        flows_of(&o)
    };
    // Each flag: flows printed, and each satisfies the flag.
    type Check = Box<dyn Fn(&Value) -> bool>;
    let a_ip2 = a_ip.clone();
    let a_ip3 = a_ip.clone();
    let c_ip2 = c_ip.clone();
    let node2 = node.clone();
    let since = (before_traffic - time::Duration::seconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let cases: Vec<(Vec<&str>, Check)> = vec![
        (
            vec!["--pod", "x/a"],
            Box::new(|f| pod(f, "source") == "x/a" || pod(f, "destination") == "x/a"),
        ),
        (
            vec!["--from-pod", "x/a"],
            Box::new(|f| pod(f, "source") == "x/a"),
        ),
        (
            vec!["--to-pod", "y/c"],
            Box::new(|f| pod(f, "destination") == "y/c"),
        ),
        (
            vec!["--namespace", "y"],
            Box::new(|f| {
                side(f, "source")["namespace"] == "y" || side(f, "destination")["namespace"] == "y"
            }),
        ),
        (
            vec!["--ip", &a_ip],
            Box::new(move |f| ip(f, "source") == a_ip2 || ip(f, "destination") == a_ip2),
        ),
        (
            vec!["--from-ip", &a_ip],
            Box::new(move |f| ip(f, "source") == a_ip3),
        ),
        (
            vec!["--to-ip", "10.244.0.0/24"],
            Box::new(|f| ip(f, "destination").starts_with("10.244.0.")),
        ),
        (
            vec!["--to-ip", &c_ip],
            Box::new(move |f| ip(f, "destination") == c_ip2),
        ),
        (
            vec!["--port", "53"],
            Box::new(|f| {
                dport(f) == Some(53) || f["l4"]["UDP"]["source_port"].as_u64() == Some(53)
            }),
        ),
        (vec!["--protocol", "udp"], Box::new(|f| proto(f) == "UDP")),
        // As Hubble: `icmp` is either version.
        (
            vec!["--protocol", "icmp"],
            Box::new(|f| proto(f) == "ICMPv4" || proto(f) == "ICMPv6"),
        ),
        (
            vec!["--protocol", "icmpv4"],
            Box::new(|f| proto(f) == "ICMPv4"),
        ),
        (
            vec!["--verdict", "FORWARDED"],
            Box::new(|f| f["verdict"] == "FORWARDED"),
        ),
        (
            vec!["--type", "trace:to-endpoint"],
            Box::new(|f| f["trace_observation_point"] == "TO_ENDPOINT"),
        ),
        (
            vec!["--label", "app=a"],
            Box::new(|f| {
                labels(f, "source").contains(&"k8s:app=a".to_string())
                    || labels(f, "destination").contains(&"k8s:app=a".to_string())
            }),
        ),
        (
            vec!["--not", "--protocol", "tcp"],
            Box::new(|f| proto(f) != "TCP"),
        ),
        (
            vec!["--node-name", &node],
            Box::new(move |f| f["node_name"] == node2.as_str()),
        ),
        (
            vec!["--from-pod", "x/b", "--ipv6"],
            Box::new(|f| pod(f, "source") == "x/b" && ip(f, "source").contains(':')),
        ),
        (
            vec!["--since", &since, "--to-pod", "x/b"],
            Box::new(|f| pod(f, "destination") == "x/b"),
        ),
        (
            vec!["--traffic-direction", "ingress", "--to-pod", "y/c"],
            Box::new(|f| f["traffic_direction"] == "INGRESS"),
        ),
        (
            vec!["--tcp-flags", "SYN", "--from-pod", "x/a"],
            Box::new(|f| f["l4"]["TCP"]["flags"]["SYN"] == true),
        ),
    ];
    for (flags, check) in &cases {
        let flows = observe(flags);
        assert!(!flows.is_empty(), "{flags:?} selects the lab's traffic");
        for f in &flows {
            assert!(check(f), "{flags:?} printed a flow it excludes: {f}");
        }
    }
    // --not inverts: nothing TCP left, and every other flow is there (the
    // node keeps adding IPv6 neighbour discovery flows: compare by uuid).
    let all = observe(&[]);
    let not_tcp = observe(&["--not", "--protocol", "tcp"]);
    let uuids = |v: &[Value]| -> std::collections::BTreeSet<String> {
        v.iter()
            .map(|f| f["uuid"].as_str().unwrap().to_string())
            .collect()
    };
    let not_tcp_ids = uuids(&not_tcp);
    let want: Vec<&Value> = all.iter().filter(|f| proto(f) != "TCP").collect();
    assert!(
        want.iter()
            .all(|f| not_tcp_ids.contains(f["uuid"].as_str().unwrap())),
        "--not --protocol tcp keeps every non-TCP flow"
    );
    // --last and --first: exactly N, the newest (consecutive in the ring,
    // as read right after) and the oldest.
    let last = observe(&["--last", "2"]);
    assert_eq!(last.len(), 2);
    let after = observe(&[]);
    let pos = |f: &Value| after.iter().position(|g| g["uuid"] == f["uuid"]).unwrap();
    assert_eq!(pos(&last[1]), pos(&last[0]) + 1, "the last two, in order");
    let newer = &after[pos(&last[1]) + 1..];
    assert!(
        !newer
            .iter()
            .any(|f| uuids(&all).contains(f["uuid"].as_str().unwrap())),
        "nothing that existed before is newer than --last's flows"
    );
    let first = observe(&["--first", "2"]);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["uuid"], all[0]["uuid"]);
    assert_eq!(first[1]["uuid"], all[1]["uuid"]);
    // --until before the traffic: none of the lab's traffic flows.
    let until = (before_traffic - time::Duration::seconds(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let old = observe(&["--since", "2000-01-01T00:00:00Z", "--until", &until]);
    assert!(old.iter().all(|f| dport(f) != Some(80)), "{old:?}");

    // Each output format prints the same flows.
    for fmt in ["compact", "dict", "table", "jsonpb"] {
        let o = run(&[
            "observe".into(),
            "--server".into(),
            server.clone(),
            "--last".into(),
            "3".into(),
            "-o".into(),
            fmt.into(),
            "--from-pod".into(),
            "x/a".into(),
            "--to-pod".into(),
            "y/c".into(),
            "--port".into(),
            "80".into(),
        ]);
        assert!(o.status.success(), "{fmt}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("x/a") || out.contains("\"pod_name\":\"a\""),
            "{fmt}: {out}"
        );
        assert!(
            out.contains("y/c:80") || out.contains("\"destination_port\":80"),
            "{fmt}: {out}"
        );
    }

    // --follow: new traffic arrives, old does not.
    let mut child = Command::new(weir_bin())
        .args([
            "observe", "--server", &server, "-o", "json", "--follow", "--to-pod", "x/b", "--port",
            "8080",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = lab
        .probe(&ProbeSpec::tcp("x/a", "x/b", 8080))
        .await
        .unwrap();
    assert!(r.connected);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "Ctrl-C ends a follow cleanly: {status:?}");
    let followed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| v.get("flow").cloned().unwrap_or(v))
        .collect();
    assert!(!followed.is_empty(), "the new connection is followed");
    let old_sport: Vec<u64> = all
        .iter()
        .filter(|f| dport(f) == Some(8080))
        .filter_map(|f| f["l4"]["TCP"]["source_port"].as_u64())
        .collect();
    for f in &followed {
        assert_eq!(pod(f, "destination"), "x/b");
        let sport = f["l4"]["TCP"]["source_port"].as_u64().unwrap();
        assert!(
            !old_sport.contains(&sport),
            "only new flows when following: {f}"
        );
    }
    lab.shutdown().await.expect("lab stops");
}
