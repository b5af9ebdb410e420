//! NetworkPolicy end to end, beyond the upstream conformance suite: what an
//! SRE sees of every verdict (drops as flows with their reason and their
//! policies, audit mode per namespace and globally, attribution of allowed
//! flows, metrics), ipBlock selecting the node's and pods' addresses, and a
//! bad policy that weakens nothing. Real agent, real traffic, real kernel.
//!
//! Needs root and the `weir`, `weir-cni`, `weir-lab` binaries (see
//! tests/common); skips locally without them, fails under CI=true.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{metrics, sum};
use serde_json::{Value, json};
use weir_integration::{Lab, LabOptions, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

fn flows(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| l.get("flow").cloned())
        .collect()
}

fn names(policies: &Value) -> Vec<String> {
    policies
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn from_to(f: &Value, src: &str, dst: &str) -> bool {
    let side = |s: &Value| {
        format!(
            "{}/{}",
            s["namespace"].as_str().unwrap_or(""),
            s["pod_name"].as_str().unwrap_or("")
        )
    };
    side(&f["source"]) == src && side(&f["destination"]) == dst
}

async fn wait_flows(lab: &Lab, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = flows(&lab.flows().expect("flow log readable"));
        if cond(&f) {
            return f;
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = f.iter().rev().take(30).map(|l| l.to_string()).collect();
            panic!(
                "{what}: not in the flow log within 10 s; last flows:\n{}",
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_metric(lab: &Lab, what: &str, cond: impl Fn(&BTreeMap<String, f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&lab.metrics_text().await.expect("metrics"));
        if cond(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: metrics never showed it");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn demo_lab(options: LabOptions) -> Lab {
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(
        NamespaceSpec::new("shop")
            .label("team", "shop")
            .annotation("policy.weir.dev/audit", "true"),
    )
    .unwrap();
    lab.add_namespace(NamespaceSpec::new("db").label("team", "data"))
        .unwrap();
    lab.add_pods(weir_integration::demo::pods())
        .await
        .expect("pods");
    lab.apply(&weir_integration::demo::policies())
        .await
        .expect("policies");
    lab
}

/// Writes `yaml` to a temporary agent config named after `name` and this
/// process, and has the lab's agent read it; the caller removes the file.
fn agent_config(options: &mut LabOptions, name: &str, yaml: &str) -> PathBuf {
    let config =
        std::env::temp_dir().join(format!("weir-policy-{name}-{}.yaml", std::process::id()));
    std::fs::write(&config, yaml).unwrap();
    options
        .agent_args
        .extend(["--config".to_string(), config.display().to_string()]);
    config
}

/// A lab with namespace `x`: one pod per name in `pods`, labelled
/// `{key}={name}` and serving TCP 80, then the hostNetwork pod `x/agent`
/// (`{key}=agent`) serving TCP 9100 on the node's address; with that
/// address (IPv4).
async fn hostnet_lab(options: LabOptions, key: &str, pods: &[&str]) -> (Lab, IpAddr) {
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    let mut specs: Vec<PodSpec> = pods
        .iter()
        .map(|name| {
            PodSpec::new("x", name)
                .label(key, name)
                .port(PortSpec::tcp(80))
        })
        .collect();
    specs.push(
        PodSpec::new("x", "agent")
            .label(key, "agent")
            .host_network()
            .port(PortSpec::tcp(9100)),
    );
    lab.add_pods(specs).await.expect("pods");
    let node_ip = lab
        .node_ips()
        .iter()
        .find(|ip| ip.is_ipv4())
        .copied()
        .expect("node IPv4");
    (lab, node_ip)
}

/// The demo's policies: every verdict kind shows in probes, flows (with
/// reason and policies) and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_audits_and_allows_are_flows_naming_their_policies() {
    let Some(options) =
        common::agent_lab_options("drops_audits_and_allows_are_flows_naming_their_policies")
    else {
        return;
    };
    let lab = demo_lab(options).await;
    let quick = |p: ProbeSpec| p.timeout(Duration::from_millis(500));
    // Allowed by db/postgres-from-cart.
    let r = lab
        .probe(&ProbeSpec::tcp("shop/cart", "db/postgres", 5432))
        .await
        .unwrap();
    assert!(r.connected, "cart -> postgres:5432 {r:?}");
    // Denied: not the cart, not the port.
    let r = lab
        .probe(&quick(ProbeSpec::tcp("shop/frontend", "db/postgres", 5432)))
        .await
        .unwrap();
    assert!(
        !r.connected,
        "frontend -> postgres:5432 must be dropped: {r:?}"
    );
    let r = lab
        .probe(&quick(ProbeSpec::icmp("shop/frontend", "db/postgres")))
        .await
        .unwrap();
    assert!(
        !r.connected,
        "frontend -> postgres ICMP must be dropped: {r:?}"
    );
    // Audit: shop's default deny would drop this; audit mode passes it.
    let r = lab
        .probe(&ProbeSpec::tcp("shop/cart", "shop/frontend", 80))
        .await
        .unwrap();
    assert!(r.connected, "audited traffic passes: {r:?}");
    // DNS from anywhere, over IPv6 too.
    let r = lab
        .probe(&ProbeSpec::udp("shop/frontend", "db/dns", 53).ipv6())
        .await
        .unwrap();
    assert!(r.connected, "dns over IPv6 {r:?}");

    let f = wait_flows(&lab, "a drop, an audit and attributed allows", |f| {
        f.iter()
            .any(|f| f["verdict"] == "DROPPED" && from_to(f, "shop/frontend", "db/postgres"))
            && f.iter().any(|f| f["verdict"] == "AUDIT")
            && f.iter().any(|f| f.get("ingress_allowed_by").is_some())
            && f.iter().any(|f| {
                f["l4"]["UDP"]["destination_port"] == 53
                    && f["IP"]["ipVersion"] == "IPv6"
                    && f["trace_observation_point"] == "TO_ENDPOINT"
            })
    })
    .await;

    let drop = f
        .iter()
        .find(|f| f["verdict"] == "DROPPED" && f["l4"]["TCP"]["destination_port"] == 5432)
        .expect("the TCP drop");
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED", "{drop}");
    assert_eq!(drop["event_type"]["type"], 1, "a drop event: {drop}");
    assert_eq!(drop["traffic_direction"], "INGRESS", "{drop}");
    assert!(from_to(drop, "shop/frontend", "db/postgres"), "{drop}");
    assert_eq!(
        names(&drop["ingress_denied_by"]),
        ["db/postgres-from-cart"],
        "{drop}"
    );
    assert!(drop.get("ingress_allowed_by").is_none() && drop.get("egress_denied_by").is_none());
    assert!(
        f.iter()
            .any(|f| f["verdict"] == "DROPPED" && f["l4"]["ICMPv4"]["type"] == 8),
        "the ICMP echo is a drop flow too"
    );

    let allowed = f
        .iter()
        .find(|f| {
            f["verdict"] == "FORWARDED"
                && from_to(f, "shop/cart", "db/postgres")
                && f["trace_observation_point"] == "TO_ENDPOINT"
                && f["is_reply"] == false
        })
        .expect("the allowed connection at postgres");
    assert_eq!(
        names(&allowed["ingress_allowed_by"]),
        ["db/postgres-from-cart"],
        "{allowed}"
    );
    assert_eq!(allowed["ingress_allowed_by"][0]["kind"], "NetworkPolicy");

    let dns = f
        .iter()
        .find(|f| {
            f["verdict"] == "FORWARDED"
                && f["l4"]["UDP"]["destination_port"] == 53
                && f["IP"]["ipVersion"] == "IPv6"
                && f["trace_observation_point"] == "TO_ENDPOINT"
        })
        .expect("dns at the dns pod");
    assert_eq!(
        names(&dns["ingress_allowed_by"]),
        ["db/dns-from-anywhere"],
        "{dns}"
    );

    let audit = f
        .iter()
        .find(|f| f["verdict"] == "AUDIT" && from_to(f, "shop/cart", "shop/frontend"))
        .expect("the audited connection");
    assert_eq!(
        names(&audit["ingress_denied_by"]),
        ["shop/default-deny-ingress"],
        "{audit}"
    );
    // The frontend's egress is not isolated: its flows name no egress policy.
    assert!(
        f.iter()
            .filter(|f| from_to(f, "shop/frontend", "db/dns"))
            .all(|f| f.get("egress_allowed_by").is_none())
    );

    wait_metric(&lab, "drop, audit and policy gauges", |m| {
        sum(
            m,
            "weir_datapath_drops_total",
            &[r#"reason="POLICY_DENIED""#],
        ) >= 2.0
            && sum(m, "weir_policy_audited_total", &[]) >= 1.0
            && sum(m, "weir_policy_policies", &[]) == 4.0
            && sum(m, "weir_policy_endpoints", &[]) == 4.0
            && sum(m, "weir_policy_rules", &[]) > 0.0
            && sum(m, "weir_policy_generation", &[]) >= 1.0
            && sum(m, "hubble_drop_total", &[r#"reason="POLICY_DENIED""#]) >= 2.0
            && sum(m, "weir_policy_invalid", &[]) == 0.0
    })
    .await;
}

/// `policy.audit: true` in the agent's config audits every namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_audit_passes_every_would_be_drop() {
    let Some(mut options) = common::agent_lab_options("global_audit_passes_every_would_be_drop")
    else {
        return;
    };
    let config = agent_config(&mut options, "audit", "policy:\n  audit: true\n");
    let lab = demo_lab(options).await;
    let r = lab
        .probe(&ProbeSpec::tcp("shop/frontend", "db/postgres", 5432))
        .await
        .unwrap();
    assert!(r.connected, "audited, not dropped: {r:?}");
    let f = wait_flows(&lab, "an AUDIT flow at postgres", |f| {
        f.iter()
            .any(|f| f["verdict"] == "AUDIT" && from_to(f, "shop/frontend", "db/postgres"))
    })
    .await;
    assert!(
        f.iter().all(|f| f["verdict"] != "DROPPED"),
        "nothing dropped under global audit"
    );
    let audit = f
        .iter()
        .find(|f| f["verdict"] == "AUDIT" && from_to(f, "shop/frontend", "db/postgres"))
        .unwrap();
    assert_eq!(
        names(&audit["ingress_denied_by"]),
        ["db/postgres-from-cart"]
    );
    let _ = std::fs::remove_file(&config);
}

/// ipBlock selects the node's own address and pod addresses (AKS cannot),
/// and a policy refused as invalid leaves the valid ones enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipblock_selects_node_and_pod_addresses_and_bad_policies_weaken_nothing() {
    let Some(options) = common::agent_lab_options(
        "ipblock_selects_node_and_pod_addresses_and_bad_policies_weaken_nothing",
    ) else {
        return;
    };
    let (mut lab, node_ip) = hostnet_lab(options, "pod", &["a", "b", "c"]).await;
    let egress = |cidrs: Vec<String>| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "a-egress"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": cidrs.iter().map(|c| json!({"ipBlock": {"cidr": c}})).collect::<Vec<_>>()}],
            }
        })
    };
    let quick = |p: ProbeSpec| p.timeout(Duration::from_millis(500));
    // Only the node's address: the hostNetwork server on it answers, pods do not.
    lab.apply(&[egress(vec![format!("{node_ip}/32")])])
        .await
        .unwrap();
    let to_node = quick(ProbeSpec::tcp("x/a", &node_ip.to_string(), 9100));
    assert!(
        lab.probe(&to_node).await.unwrap().connected,
        "node address allowed by ipBlock"
    );
    assert!(
        !lab.probe(&quick(ProbeSpec::tcp("x/a", "x/b", 80)))
            .await
            .unwrap()
            .connected
    );
    // A pod's own address, with the rest of its /24 excepted around it.
    let net = vec!["${net:x/b/24}".to_string()];
    let mut pol = egress(net);
    pol["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] = json!(["${ip:x/c}/32"]);
    lab.apply(&[pol.clone()]).await.unwrap();
    assert!(
        lab.probe(&quick(ProbeSpec::tcp("x/a", "x/b", 80)))
            .await
            .unwrap()
            .connected,
        "pod IP inside the block"
    );
    assert!(
        !lab.probe(&quick(ProbeSpec::tcp("x/a", "x/c", 80)))
            .await
            .unwrap()
            .connected,
        "the excepted pod"
    );
    assert!(
        !lab.probe(&to_node).await.unwrap().connected,
        "the node is outside this block"
    );

    // A bad policy next to the good one: refused (counted), the good one stays.
    let bad = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "broken"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}
    });
    lab.apply(&[pol, bad]).await.unwrap();
    wait_metric(&lab, "weir_policy_invalid", |m| {
        sum(m, "weir_policy_invalid", &[]) == 1.0
    })
    .await;
    assert!(
        !lab.probe(&quick(ProbeSpec::tcp("x/a", "x/c", 80)))
            .await
            .unwrap()
            .connected,
        "still denied"
    );
    assert!(
        lab.probe(&quick(ProbeSpec::tcp("x/a", "x/b", 80)))
            .await
            .unwrap()
            .connected,
        "still allowed"
    );
    // The broken policy would isolate every pod of x for ingress: it must not.
    assert!(
        lab.probe(&quick(ProbeSpec::tcp("x/b", "x/c", 80)))
            .await
            .unwrap()
            .connected,
        "no accidental isolation"
    );
}

/// hostNetwork pods are policed by their cgroup: their own ingress and
/// egress policies apply, and other pods' policies select them by their
/// labels, while plain node processes stay `reserved:host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_are_policed_by_their_cgroup() {
    let Some(mut options) =
        common::agent_lab_options("host_network_pods_are_policed_by_their_cgroup")
    else {
        return;
    };
    // Without the node rule, a node process's ingress is judged like any peer.
    let config = agent_config(
        &mut options,
        "hostnet",
        "policy:\n  allowHostIngress: false\n",
    );
    let (mut lab, node_ip) = hostnet_lab(options, "app", &["a", "b"]).await;
    let np = |name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"namespace": "x", "name": name}, "spec": spec})
    };
    let sel = |app: &str| json!({"matchLabels": {"app": app}});
    lab.apply(&[
        // b admits only the hostNetwork agent (by its labels).
        np(
            "b-from-agent",
            json!({"podSelector": sel("b"),
            "ingress": [{"from": [{"podSelector": sel("agent")}]}]}),
        ),
        // The agent may reach a:80 only, and be reached on 9100 from a only.
        np(
            "agent",
            json!({"podSelector": sel("agent"), "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": sel("a")}], "ports": [{"port": 9100}]}],
            "egress": [{"to": [{"podSelector": sel("a")}], "ports": [{"port": 80}]}]}),
        ),
    ])
    .await
    .unwrap();
    let quick = |p: ProbeSpec| p.timeout(Duration::from_millis(700));
    let to_agent = |from: &str| quick(ProbeSpec::tcp(from, &node_ip.to_string(), 9100));
    // Wait until the agent found the pod's cgroup (it retries every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.probe(&to_agent("x/b")).await.unwrap().connected {
        assert!(
            Instant::now() < deadline,
            "x/b -> agent:9100 never got policed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        lab.probe(&to_agent("x/a")).await.unwrap().connected,
        "a -> agent:9100 allowed"
    );
    assert!(
        !lab.probe(&to_agent("x/b")).await.unwrap().connected,
        "b -> agent:9100 denied"
    );
    // The agent's egress policy.
    assert!(
        lab.probe(&quick(ProbeSpec::tcp("x/agent", "x/a", 80)))
            .await
            .unwrap()
            .connected
    );
    assert!(
        !lab.probe(&quick(ProbeSpec::tcp("x/agent", "x/b", 80)))
            .await
            .unwrap()
            .connected,
        "agent egress to b denied"
    );
    // b's ingress sees the agent's identity, not the node's: lift the agent's
    // egress isolation and the agent reaches b while a node process does not.
    lab.apply(&[np(
        "b-from-agent",
        json!({"podSelector": sel("b"),
            "ingress": [{"from": [{"podSelector": sel("agent")}]}]}),
    )])
    .await
    .unwrap();
    assert!(
        lab.probe(&quick(ProbeSpec::tcp("x/agent", "x/b", 80)))
            .await
            .unwrap()
            .connected,
        "b admits the agent pod"
    );
    let b_ip = lab
        .pod_ips()
        .get("x/b")
        .and_then(|v| v.iter().find(|ip| ip.is_ipv4()).copied())
        .expect("b's IPv4");
    let node_proc = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.node_netns(),
            "timeout",
            "1",
            "bash",
            "-c",
            &format!("echo > /dev/tcp/{b_ip}/80"),
        ])
        .status()
        .unwrap();
    assert!(
        !node_proc.success(),
        "a node process (reserved:host) is not the agent pod"
    );
    let f = wait_flows(&lab, "drops of the hostNetwork pod's traffic", |f| {
        f.iter()
            .any(|f| f["verdict"] == "DROPPED" && f["l4"]["TCP"]["destination_port"] == 9100)
    })
    .await;
    let d = f
        .iter()
        .find(|f| f["verdict"] == "DROPPED" && f["l4"]["TCP"]["destination_port"] == 9100)
        .unwrap();
    assert_eq!(names(&d["ingress_denied_by"]), ["x/agent"], "{d}");
    // The flows name the hostNetwork pod, not the node's address.
    assert!(from_to(d, "x/b", "x/agent"), "{d}");
    assert!(
        f.iter()
            .any(|f| from_to(f, "x/agent", "x/a") && f["verdict"] == "FORWARDED"),
        "the agent's allowed egress names it as the source"
    );
    let _ = std::fs::remove_file(&config);
}
