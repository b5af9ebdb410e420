//! `weir policy explain` and `weir policy what-if` from the outside, without
//! root: on a manifests directory written here (the upstream e2e model:
//! namespaces x, y, z with pods a, b, c, plus three policies), the exact
//! verdicts and rule paths, usage errors (64), invalid changes (65), and the
//! replay of a flow log. The agent's side of the local API is the real
//! route code (`policy_cli::routes`) served on a unix socket with the same
//! directory as its model, and the flow API is the real Observer service
//! over a flow store holding the flow log's flows: the answers through both
//! must equal the offline ones.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

async fn weir(args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(WEIR);
    c.arg("policy")
        .args(args)
        .env_remove("WEIR_SOCKET")
        .env_remove("WEIR_SERVER")
        .env_remove("HUBBLE_SERVER")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("weir policy finishes within a minute")
        .expect("weir runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn ip(ns: &str, pod: &str) -> String {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap() + 1;
    let p = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap() + 1;
    format!("10.0.{n}.{p}")
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The policies of the model:
/// - x/allow-y-80 isolates x/a for ingress: 80/TCP from namespace y
///   (rule 0), the named port serve-81-tcp from pod c of x (rule 1);
/// - z/dns-only isolates every pod of z for egress: 53/UDP to 10.0.0.0/16
///   except 10.0.1.0/24;
/// - y/default-deny isolates every pod of y for ingress, and namespace y
///   is in audit mode.
fn policies() -> Vec<Value> {
    vec![
        policy(
            "x",
            "allow-y-80",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                   "ingress": [
                       {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"port": 80, "protocol": "TCP"}]},
                       {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}],
                        "ports": [{"port": "serve-81-tcp"}]}]}),
        ),
        policy(
            "z",
            "dns-only",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}],
                 "ports": [{"port": 53, "protocol": "UDP"}]}]}),
        ),
        policy(
            "y",
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    ]
}

fn write_docs(path: &Path, docs: &[Value]) {
    let text: Vec<String> = docs.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n")).expect("write manifests");
}

/// The manifests directory: namespaces labelled `ns: <name>`, pods labelled
/// `pod: <name>` with IPv4 and IPv6 addresses and ports 80, 81 on TCP and
/// UDP named `serve-<port>-<proto>`.
fn model_dir(dir: &Path) -> PathBuf {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    let mut docs = Vec::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        let mut meta = json!({"name": ns, "labels": {"ns": ns}});
        if *ns == "y" {
            meta["annotations"] = json!({"policy.weir.dev/audit": "true"});
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}));
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            let ports: Vec<Value> = [80, 81]
                .iter()
                .flat_map(|port| {
                    ["TCP", "UDP"].iter().map(move |proto| {
                        json!({"name": format!("serve-{port}-{}", proto.to_lowercase()),
                               "containerPort": port, "protocol": proto})
                    })
                })
                .collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"containers": [{"name": "serve", "image": "serve", "ports": ports}]},
                "status": {"podIP": ip(ns, pod), "podIPs": [
                    {"ip": ip(ns, pod)}, {"ip": format!("fd00::{}:{}", n + 1, p + 1)}]}
            }));
        }
    }
    write_docs(&m.join("cluster.json"), &docs);
    write_docs(&m.join("policies.json"), &policies());
    m
}

fn md(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `weir policy explain --from FROM --to TO --port PORT`, then `rest` (the
/// model: `--manifests` or `--socket`, and options).
async fn explain(from: &str, to: &str, port: &str, rest: &[&str]) -> Output {
    weir(
        &[
            &["explain", "--from", from, "--to", to, "--port", port][..],
            rest,
        ]
        .concat(),
    )
    .await
}

/// `weir policy what-if CHANGE --flows FLOWS --manifests M`, then `extra`.
async fn what_if(change: &Path, flows: &Path, m: &Path, extra: &[&str]) -> Output {
    weir(
        &[
            &[
                "what-if",
                md(change),
                "--flows",
                md(flows),
                "--manifests",
                md(m),
            ][..],
            extra,
        ]
        .concat(),
    )
    .await
}

/// Writes [`CHANGE`] to `change.yaml` in `dir`.
fn write_change(dir: &Path) -> PathBuf {
    let change = dir.join("change.yaml");
    std::fs::write(&change, CHANGE).unwrap();
    change
}

async fn explain_json(m: &Path, from: &str, to: &str, port: &str) -> Value {
    let out = explain(from, to, port, &["--manifests", md(m), "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

#[tokio::test]
async fn explain_names_the_verdict_and_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());

    // Allowed by a namespace selector; egress not isolated.
    let out = explain("y/b", "x/a", "80/TCP", &["--manifests", md(&m)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0],
        "ALLOWED  y/b (10.0.2.2) -> x/a (10.0.1.1)  80/TCP"
    );
    assert_eq!(
        lines[1],
        "egress at y/b: ALLOWED (not isolated: no NetworkPolicy of its namespace with policyType Egress selects it)"
    );
    assert_eq!(lines[2], "ingress at x/a: ALLOWED");
    assert_eq!(lines[3], "  isolated by: x/allow-y-80");
    assert!(
        lines[4].starts_with("  allowed by (from y/b (identity ")
            && lines[4].contains("labels pod=b")
            && lines[4].contains("namespace labels kubernetes.io/metadata.name=y,ns=y"),
        "{t}"
    );
    assert_eq!(
        lines[5],
        "    x/allow-y-80 spec.ingress[0].from[0] ports[0]  [selector matches the peer]"
    );
    assert_eq!(lines[6], format!("model: the manifests in {}", m.display()));
    assert_eq!(lines.len(), 7, "{t}");

    // Denied at both ends: each end names its isolating policies and the peer.
    let out = explain("z/b", "x/a", "80/tcp", &["--manifests", md(&m)]).await;
    assert_eq!(out.status.code(), Some(0), "a verdict is not an error");
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "DENIED  z/b (10.0.3.2) -> x/a (10.0.1.1)  80/TCP");
    assert_eq!(lines[1], "egress at z/b: DENIED");
    assert_eq!(lines[2], "  isolated by: z/dns-only");
    assert!(
        lines[3].starts_with("  no rule of these policies allows 80/TCP to x/a (identity ")
            && lines[3].ends_with("in ipBlock boundary 10.0.1.0/24)"),
        "{t}"
    );
    assert_eq!(lines[4], "ingress at x/a: DENIED");
    assert_eq!(lines[5], "  isolated by: x/allow-y-80");
    assert!(
        lines[6].starts_with("  no rule of these policies allows 80/TCP from z/b (identity ")
            && lines[6].contains("labels pod=b"),
        "{t}"
    );

    // The exact rule of a named port, in JSON.
    let e = explain_json(&m, "x/c", "x/a", "81").await;
    assert_eq!(e["verdict"], "ALLOWED");
    assert_eq!(e["protocol"], "TCP");
    assert_eq!(e["port"], 81);
    assert_eq!(e["egress"]["enforced"], false);
    assert_eq!(e["egress"]["decided_by"], "not isolated");
    assert_eq!(
        e["ingress"]["rules"],
        json!([{"policy": "x/allow-y-80", "rule": "spec.ingress[1]",
                "peer": "spec.ingress[1].from[0]", "port": "spec.ingress[1].ports[0]",
                "via": "identity"}])
    );
    assert_eq!(e["ingress"]["attribution"], json!(["x/allow-y-80"]));
    // The same pod on UDP: the named port is TCP only.
    let e = explain_json(&m, "x/c", "x/a", "81/UDP").await;
    assert_eq!(e["verdict"], "DENIED");
    assert_eq!(e["ingress"]["decided_by"], "no rule");
    assert_eq!(e["ingress"]["rules"], json!([]));

    // Audit mode: denied at the destination, passes as AUDIT.
    let out = explain("x/a", "y/b", "80", &["--manifests", md(&m)]).await;
    let t = text(&out.stdout);
    assert!(
        t.starts_with("AUDIT  x/a (10.0.1.1) -> y/b (10.0.2.2)  80/TCP\n"),
        "{t}"
    );
    assert!(
        t.contains("ingress at y/b: AUDIT (denied, but the pod is in audit mode"),
        "{t}"
    );

    // To an address: the pod owning it is found; ipBlock with except.
    let e = explain_json(&m, "z/a", "10.0.2.2", "53/UDP").await;
    assert_eq!(e["to"]["pod"], "y/b");
    assert_eq!(e["egress"]["verdict"], "ALLOWED");
    assert_eq!(e["egress"]["decided_by"], "ipBlock");
    assert_eq!(
        e["egress"]["rules"][0]["peer"], "spec.egress[0].to[0]",
        "{e}"
    );
    assert_eq!(e["egress"]["rules"][0]["via"], "ipBlock");
    assert_eq!(e["ingress"]["verdict"], "AUDIT");
    assert_eq!(e["verdict"], "AUDIT");
    let e = explain_json(&m, "z/a", "10.0.1.2", "53/UDP").await;
    assert_eq!(e["egress"]["verdict"], "DENIED", "inside the except: {e}");
    assert_eq!(e["to"]["cidr_cell"], "10.0.1.0/24");
    // Outside the cluster: no ingress side.
    let out = explain("z/a", "8.8.8.8", "53/UDP", &["--manifests", md(&m)]).await;
    let t = text(&out.stdout);
    assert!(
        t.starts_with("DENIED  z/a (10.0.3.1) -> 8.8.8.8  53/UDP\n"),
        "{t}"
    );
    assert!(
        t.contains(
            "no rule of these policies allows 53/UDP to 8.8.8.8 (identity 2 (world), in no ipBlock)"
        ),
        "{t}"
    );
    assert!(
        t.contains("ingress: 8.8.8.8 is not a pod, so no ingress policy applies"),
        "{t}"
    );
    // IPv6 and ICMP: a rule without ports allows ICMP; z/dns-only does not.
    let e = explain_json(&m, "y/a", "fd00::1:2", "ICMPv6").await;
    assert_eq!(e["to"]["pod"], "x/b");
    assert_eq!(e["protocol"], "ICMPv6");
    assert_eq!(e["port"], 0);
    assert_eq!(e["verdict"], "ALLOWED", "x/b is not isolated: {e}");
}

#[tokio::test]
async fn an_invalid_manifest_is_skipped_as_the_agent_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    // Would deny everything into x/b, but is invalid: refused, as by the agent.
    let mut broken = policy(
        "x",
        "broken",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "tcp"}]}]}),
    );
    write_docs(&m.join("broken.json"), &[broken.take()]);
    let out = explain("y/b", "x/b", "80/TCP", &["--manifests", md(&m)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).starts_with("ALLOWED  y/b"),
        "{}",
        show(&out)
    );
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("weir: warning: ")
            && err.contains("(NetworkPolicy x/broken): field spec.ingress[0].ports[0].protocol")
            && err.trim_end().ends_with("(skipped, as the agent skips it)"),
        "{err}"
    );
}

#[tokio::test]
async fn explain_usage_errors_exit_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let base = |from: &str, to: &str, port: &str| -> Vec<String> {
        [
            "explain",
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--manifests",
            md(&m),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            base("xa", "x/b", "80/TCP"),
            "weir: invalid --from \"xa\": expected NAMESPACE/POD, such as x/a".into(),
        ),
        (
            base("X/a", "x/b", "80/TCP"),
            "weir: invalid --from \"X/a\": namespace \"X\": a lowercase RFC 1123 label".into(),
        ),
        (
            base("x/a", "nowhere", "80/TCP"),
            "weir: invalid --to \"nowhere\": expected NAMESPACE/POD (such as x/a) or an IP address"
                .into(),
        ),
        (
            base("x/a", "x/zz", "80/TCP"),
            format!(
                "weir: --to x/zz: no such pod in the manifests in {} (pods of namespace x there: a, b, c)",
                m.display()
            ),
        ),
        (
            base("w/a", "x/b", "80/TCP"),
            format!(
                "weir: --from w/a: no such pod in the manifests in {} (no pods in namespace w; namespaces with pods or manifests: x, y, z)",
                m.display()
            ),
        ),
        (
            base("x/a", "x/b", "80/HTTP"),
            "weir: invalid --port \"80/HTTP\": expected PORT/PROTOCOL such as 80/TCP".into(),
        ),
        (
            base("x/a", "x/b", "0/TCP"),
            "weir: invalid --port \"0/TCP\": port 0 is not between 1 and 65535".into(),
        ),
        (
            base("x/a", "x/b", "70000/UDP"),
            "weir: invalid --port \"70000/UDP\": port 70000 is not between 1 and 65535".into(),
        ),
        (
            vec![
                "explain".into(),
                "--from".into(),
                "x/a".into(),
                "--to".into(),
                "x/b".into(),
            ],
            "--port".into(),
        ),
        (
            {
                let mut v = base("x/a", "x/b", "80/TCP");
                v[8] = dir.path().join("missing").display().to_string();
                v
            },
            format!(
                "weir: cannot read --manifests {}: No such file or directory",
                dir.path().join("missing").display()
            ),
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = weir(&args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", show(&out));
        assert!(err.contains(&want), "{args:?}: {err:?} lacks {want:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", show(&out));
        if want.starts_with("weir:") {
            assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        }
    }
}

#[tokio::test]
async fn without_an_agent_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("weir.sock");
    let out = explain("x/a", "x/b", "80/TCP", &["--socket", md(&sock)]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(err.contains("cannot reach the weir agent"), "{err}");
    assert!(err.contains("is `weir agent` running?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

// ---------------------------------------------------------------------------
// what-if

/// One flow log line (Hubble export format, as the agent writes it).
fn flow_line(src: &str, dst: &str, proto: &str, sport: u16, dport: u16, verdict: &str) -> String {
    flow_line_with(src, dst, proto, sport, dport, verdict, false)
}

fn flow_line_with(
    src: &str,
    dst: &str,
    proto: &str,
    sport: u16,
    dport: u16,
    verdict: &str,
    reply: bool,
) -> String {
    let side = |s: &str| {
        let (ns, pod) = s.split_once('/').unwrap();
        (json!({"namespace": ns, "pod_name": pod}), ip(ns, pod))
    };
    let (src_ep, src_ip) = side(src);
    let (dst_ep, dst_ip) = side(dst);
    let l4 = match proto {
        "TCP" => {
            json!({"TCP": {"source_port": sport, "destination_port": dport, "flags": {"SYN": true}}})
        }
        "UDP" => json!({"UDP": {"source_port": sport, "destination_port": dport}}),
        "ICMPv4" => json!({"ICMPv4": {"type": if reply { 0 } else { 8 }}}),
        other => panic!("{other}"),
    };
    json!({
        "flow": {
            "time": "2026-11-29T12:00:00.5Z", "verdict": verdict,
            "IP": {"source": src_ip, "destination": dst_ip, "ipVersion": "IPv4"},
            "l4": l4, "source": src_ep, "destination": dst_ep, "Type": "L3_L4",
            "node_name": "node-1", "is_reply": reply,
            "traffic_direction": "EGRESS"
        },
        "node_name": "node-1", "time": "2026-11-29T12:00:00.5Z"
    })
    .to_string()
}

/// A recorded log: y/b -> x/a 80/TCP three times (each with its reply and
/// one repeated observation of the same connection), x/c -> x/a 81/TCP,
/// x/b -> x/a 80/TCP dropped, z/a -> y/b 53/UDP audited, x/a -> y/c ICMP
/// (audited) with its echo reply, an ICMP error, a lost-events line and a
/// line of garbage.
fn flow_log(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for sport in [40000, 40001, 40002] {
        lines.push(flow_line("y/b", "x/a", "TCP", sport, 80, "FORWARDED"));
        lines.push(flow_line_with(
            "x/a",
            "y/b",
            "TCP",
            80,
            sport,
            "FORWARDED",
            true,
        ));
    }
    lines.push(flow_line("y/b", "x/a", "TCP", 40000, 80, "FORWARDED"));
    lines.push(flow_line("x/c", "x/a", "TCP", 41000, 81, "FORWARDED"));
    lines.push(flow_line("x/b", "x/a", "TCP", 42000, 80, "DROPPED"));
    lines.push(flow_line("z/a", "y/b", "UDP", 43000, 53, "AUDIT"));
    lines.push(flow_line("x/a", "y/c", "ICMPv4", 0, 0, "AUDIT"));
    lines.push(flow_line_with("y/c", "x/a", "ICMPv4", 0, 0, "AUDIT", true));
    // Destination unreachable about some connection: never policed.
    let mut err: Value =
        serde_json::from_str(&flow_line("x/b", "y/a", "ICMPv4", 0, 0, "FORWARDED")).unwrap();
    err["flow"]["l4"] = json!({"ICMPv4": {"type": 3, "code": 3}});
    lines.push(err.to_string());
    lines.push(
        json!({"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "3"}, "node_name": "node-1"})
            .to_string(),
    );
    lines.push("not json".into());
    let path = dir.join("flows.json");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The change: x/allow-y-80 no longer allows namespace y but allows pod b
/// of x on any port (replaced), and a new z/lock-a with no egress rules
/// (z/dns-only still allows z/a's DNS, so it changes nothing there).
const CHANGE: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
    ports: [{port: serve-81-tcp}]
  - from: [{podSelector: {matchLabels: {pod: b}}}]
---
kind: NetworkPolicyList
apiVersion: networking.k8s.io/v1
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: lock-a, namespace: z}
  spec:
    podSelector: {matchLabels: {pod: a}}
    policyTypes: [Egress]
";

/// (source, destination, port, before, after, connections) of each listed change.
fn change_rows(report: &Value) -> Vec<(String, String, u64, String, String, u64)> {
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
                c["flow"]["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(
    s: &str,
    d: &str,
    port: u64,
    b: &str,
    a: &str,
    n: u64,
) -> (String, String, u64, String, String, u64) {
    (s.into(), d.into(), port, b.into(), a.into(), n)
}

#[tokio::test]
async fn what_if_lists_exactly_the_flows_whose_verdict_changes() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let log = flow_log(dir.path());
    let change = write_change(dir.path());

    let out = what_if(&change, &log, &m, &["-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        change_rows(&r),
        vec![
            row("x/b", "x/a", 80, "DENIED", "ALLOWED", 1),
            row("y/b", "x/a", 80, "ALLOWED", "DENIED", 3),
        ]
    );
    // y/b -> x/a: three connections (the repeated observation counted once).
    assert_eq!(r["connections"], 7, "{r}");
    assert_eq!(r["changed_connections"], 4);
    assert_eq!(r["flows"], 5);
    assert_eq!(r["policies_before"], 3);
    assert_eq!(r["policies_after"], 4);
    assert_eq!(
        r["edits"],
        json!([{"policy": "x/allow-y-80", "action": "replaced"},
               {"policy": "z/lock-a", "action": "added"}])
    );
    assert_eq!(
        r["skipped"],
        json!({"replies": 4, "ICMP errors and neighbour discovery (never policed)": 1,
               "lines that are not flow log JSON": 1,
               "lines without a flow (lost events, other events)": 1})
    );
    let c = &r["changes"][1];
    assert_eq!(c["flow"]["recorded"], json!(["FORWARDED"]));
    assert_eq!(
        c["before"]["ingress"],
        json!({"endpoint": "x/a", "verdict": "ALLOWED", "enforced": true, "policies": ["x/allow-y-80"]})
    );
    assert_eq!(
        c["after"]["ingress"],
        json!({"endpoint": "x/a", "verdict": "DENIED", "enforced": true, "policies": ["x/allow-y-80"]})
    );
    assert_eq!(c["before"]["egress"]["enforced"], false);

    // Text: the changed flows, and the summary line last.
    let out = what_if(&change, &log, &m, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let t = text(&out.stdout);
    assert!(
        t.contains("\nALLOWED -> DENIED  y/b (10.0.2.2) -> x/a (10.0.1.1)  80/TCP  (3 connections, recorded FORWARDED)\n"),
        "{t}"
    );
    assert!(
        t.contains("  after:  egress y/b ALLOWED (not isolated); ingress x/a DENIED (isolated by x/allow-y-80)\n"),
        "{t}"
    );
    assert!(
        t.contains("\nDENIED -> ALLOWED  x/b (10.0.1.2) -> x/a (10.0.1.1)  80/TCP  (1 connection, recorded DROPPED)\n"),
        "{t}"
    );
    assert!(
        t.starts_with("change: x/allow-y-80 replaced, z/lock-a added (policies: 3 -> 4)\n"),
        "{t}"
    );
    assert_eq!(
        t.lines().last(),
        Some("7 connections replayed, 4 would change"),
        "{t}"
    );

    // --exit-code: 1 when something changes.
    let out = what_if(&change, &log, &m, &["--exit-code"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    // Deleting the audited namespace's policy turns its AUDIT flows to ALLOWED.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let out = what_if(
        &empty,
        &log,
        &m,
        &["--delete", "y/default-deny", "--exit-code", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        change_rows(&r),
        vec![
            row("x/a", "y/c", 0, "AUDIT", "ALLOWED", 1),
            row("z/a", "y/b", 53, "AUDIT", "ALLOWED", 1),
        ]
    );
    assert_eq!(
        r["edits"],
        json!([{"policy": "y/default-deny", "action": "deleted"}])
    );

    // A change that changes no verdict: exit 0 even with --exit-code.
    let same = dir.path().join("same.json");
    std::fs::write(&same, policies()[1].to_string()).unwrap();
    let out = what_if(&same, &log, &m, &["--exit-code"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        text(&out.stdout).lines().last(),
        Some("7 connections replayed, 0 would change")
    );
}

#[tokio::test]
async fn what_if_refuses_an_invalid_change_naming_document_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let log = flow_log(dir.path());
    let cases: &[(&str, &str, i32, &str)] = &[
        (
            "bad.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok, namespace: x}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: x}\n\
             spec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]\n",
            65,
            "bad.yaml: document 2: NetworkPolicy x/broken: spec.ingress[0].from[0].ipBlock.except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16",
        ),
        (
            "proto.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: y}\n\
             spec:\n  ingress:\n  - ports: [{port: 80, protocol: tcp}]\n",
            65,
            "proto.yaml: document 1: NetworkPolicy y/p: spec.ingress[0].ports[0].protocol: \"tcp\": supported values",
        ),
        (
            "pod.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n",
            65,
            "pod.yaml: document 1: expected a NetworkPolicy (networking.k8s.io/v1), found kind \"Pod\"",
        ),
        (
            "twice.yaml",
            "kind: NetworkPolicy\nmetadata: {name: t, namespace: x}\n---\nkind: NetworkPolicy\nmetadata: {name: t, namespace: x}\n",
            65,
            "twice.yaml: document 1): give each policy once",
        ),
        (
            "syntax.yaml",
            "kind: [NetworkPolicy\n",
            65,
            "syntax.yaml: line ",
        ),
    ];
    for (name, body, code, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = what_if(&path, &log, &m, &[]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{name}: {}", show(&out));
        assert!(err.contains(want), "{name}: {err:?} lacks {want:?}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err:?}");
        assert!(out.stdout.is_empty(), "{name}");
    }

    let change = write_change(dir.path());
    let usage: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--delete".into(), "y/nope".into()],
            "--delete y/nope: no NetworkPolicy y/nope in the manifests in",
        ),
        (
            vec!["--delete".into(), "default-deny".into()],
            "invalid --delete \"default-deny\": expected NAMESPACE/NAME",
        ),
        (
            vec!["--delete".into(), "x/allow-y-80".into()],
            "--delete x/allow-y-80: the change file also holds NetworkPolicy x/allow-y-80",
        ),
        (
            vec!["--server".into(), "unix:///nowhere.sock".into()],
            "cannot be used with",
        ),
    ];
    for (extra, want) in usage {
        let mut args = vec![
            "what-if",
            md(&change),
            "--flows",
            md(&log),
            "--manifests",
            md(&m),
        ];
        args.extend(extra.iter().map(String::as_str));
        let out = weir(&args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", show(&out));
        assert!(text(&out.stderr).contains(want), "{args:?}: {}", show(&out));
    }
    let missing = dir.path().join("missing.yaml");
    let out = what_if(&missing, &log, &m, &[]).await;
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("cannot read change file"),
        "{}",
        show(&out)
    );
    let out = what_if(&change, &missing, &m, &[]).await;
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("cannot read --flows"),
        "{}",
        show(&out)
    );
}

/// A hostNetwork pod's packets carry the node's address; the replay must
/// decide them as the compiler's explain does (whatever the compiler makes
/// of hostNetwork pods), before and after a change.
#[tokio::test]
async fn what_if_agrees_with_explain_for_a_host_network_source() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let node_ip = "172.31.0.1";
    write_docs(
        &m.join("host.json"),
        &[json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "h", "namespace": "x", "labels": {"pod": "h"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "agent", "image": "agent"}]},
            "status": {"podIP": node_ip, "podIPs": [{"ip": node_ip}]}
        })],
    );
    let only_h = policy(
        "y",
        "only-h",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                       "podSelector": {"matchLabels": {"pod": "h"}}}],
             "ports": [{"port": 80}]}]}),
    );
    let change = dir.path().join("change.json");
    std::fs::write(&change, only_h.to_string()).unwrap();
    // The model after the change, for explain.
    let after = dir.path().join("after");
    std::fs::create_dir(&after).unwrap();
    for f in std::fs::read_dir(&m).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, after.join(f.file_name().unwrap())).unwrap();
    }
    write_docs(&after.join("change.json"), &[only_h]);

    let mut line: Value =
        serde_json::from_str(&flow_line("x/a", "y/b", "TCP", 45000, 80, "FORWARDED")).unwrap();
    line["flow"]["IP"]["source"] = json!(node_ip);
    line["flow"]["source"]["pod_name"] = json!("h");
    let log = dir.path().join("flows.json");
    std::fs::write(&log, line.to_string() + "\n").unwrap();

    let out = what_if(&change, &log, &m, &["-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connections"], 1, "{r}");
    let before = explain_json(&m, "x/h", "10.0.2.2", "80/TCP").await;
    let after = explain_json(&after, "x/h", "10.0.2.2", "80/TCP").await;
    if before["verdict"] == after["verdict"] {
        assert_eq!(r["changes"], json!([]), "{r}");
    } else {
        let c = &r["changes"][0];
        assert_eq!(c["before"]["verdict"], before["verdict"], "{r}\n{before}");
        assert_eq!(c["after"]["verdict"], after["verdict"], "{r}\n{after}");
        assert_eq!(
            c["after"]["ingress"]["verdict"], after["ingress"]["verdict"],
            "{r}\n{after}"
        );
    }
}

// ---------------------------------------------------------------------------
// Through the agent's routes and the flow API

/// Serves the local API's policy routes with the manifests directory as
/// the model, on a unix socket in `dir`.
fn serve_local_api(dir: &Path, manifests: &Path) -> PathBuf {
    let path = dir.join("weir.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the local API socket");
    let m = manifests.to_path_buf();
    let source: weir_agent::policy_cli::ModelSource = Arc::new(move || {
        let (mut model, skipped) = weir_agent::policy_cli::model_from_manifests(&m).expect("model");
        assert!(skipped.is_empty(), "{skipped:?}");
        model.name = "the agent's model (node test)".into();
        model
    });
    let app: axum::Router = weir_agent::policy_cli::routes(source);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    path
}

/// Serves the real Observer over a flow store holding the flow log's
/// flows, on a unix socket in `dir`.
fn serve_flow_api(dir: &Path, log: &Path) -> PathBuf {
    let store = weir_flows::store::FlowStore::with_capacity(1024).unwrap();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        if let Ok(ev) = weir_flows::export::ExportEvent::parse(line)
            && let Some(f) = ev.flow
        {
            store.push(f);
        }
    }
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let service = weir_api::observer::ObserverService::new(
        store,
        weir_api::observer::NodeInfo {
            name: "node-1".into(),
            ..Default::default()
        },
        1024,
        Arc::new(weir_flows::metrics::Metrics::new().unwrap()),
        Arc::new(Vec::new),
        stop,
    );
    let path = dir.join("hubble.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the flow API socket");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let _keep = _stop_tx;
        let _ = tonic::transport::Server::builder()
            .add_service(weir_api::proto::observer::observer_server::ObserverServer::new(service))
            .serve_with_incoming(incoming)
            .await;
    });
    path
}

fn without_model(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("model");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_the_flow_api_answer_as_the_offline_commands() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let log = flow_log(dir.path());
    let sock = serve_local_api(dir.path(), &m);
    let hubble = serve_flow_api(dir.path(), &log);
    let change = write_change(dir.path());

    for (from, to, port) in [
        ("y/b", "x/a", "80/TCP"),
        ("z/b", "x/a", "80/TCP"),
        ("x/c", "x/a", "81"),
        ("z/a", "10.0.1.2", "53/UDP"),
        ("x/a", "y/b", "80/TCP"),
    ] {
        let args = [
            "explain", "--from", from, "--to", to, "--port", port, "-o", "json",
        ];
        let via_agent = weir(&[&args[..], &["--socket", md(&sock)]].concat()).await;
        assert_eq!(via_agent.status.code(), Some(0), "{}", show(&via_agent));
        let offline = weir(&[&args[..], &["--manifests", md(&m)]].concat()).await;
        let a: Value = serde_json::from_slice(&via_agent.stdout).unwrap();
        let o: Value = serde_json::from_slice(&offline.stdout).unwrap();
        assert_eq!(a["model"], "the agent's model (node test)");
        assert_eq!(without_model(a), without_model(o), "{from} -> {to} {port}");
    }
    // The agent's refusals keep their exit status and message.
    let out = explain("x/a", "x/zz", "80/TCP", &["--socket", md(&sock)]).await;
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "weir: --to x/zz: no such pod in the agent's model (node test) (pods of namespace x there: a, b, c)"
    );
    // What the CLI checks first, the agent checks too (curl users).
    let body = weir_localapi::Client::new(&sock)
        .policy_explain(&weir_localapi::policy::ExplainParams {
            from: "x/a".into(),
            to: "x/b".into(),
            port: "80/HTTP".into(),
        })
        .await
        .expect_err("refused");
    assert!(
        matches!(&body, weir_localapi::ClientError::Refused { status: 400, message, .. }
            if message.contains("invalid parameter port \"80/HTTP\"")),
        "{body}"
    );
    let sent = weir_localapi::Client::new(&sock)
        .policy_what_if(&weir_localapi::policy::WhatIfRequest {
            changes: vec![json!({"kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "x"},
                                 "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}})],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert!(
        matches!(&sent, weir_localapi::ClientError::Refused { status: 422, message, .. }
            if message.contains("changes[0]: NetworkPolicy x/n: spec.podSelector.matchExpressions[0].operator")),
        "{sent}"
    );

    // what-if: the same report from the flow log and from the flow API,
    // offline and through the agent.
    let run = |flows: Vec<String>, model: Vec<String>| {
        let change = change.clone();
        async move {
            let mut args: Vec<String> = vec![
                "what-if".into(),
                md(&change).into(),
                "-o".into(),
                "json".into(),
            ];
            args.extend(flows);
            args.extend(model);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = weir(&args).await;
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        }
    };
    let flows_file = vec!["--flows".to_owned(), md(&log).to_owned()];
    let flows_api = vec![
        "--server".to_owned(),
        format!("unix://{}", hubble.display()),
    ];
    let offline = vec!["--manifests".to_owned(), md(&m).to_owned()];
    let agent = vec!["--socket".to_owned(), md(&sock).to_owned()];
    let reference = run(flows_file.clone(), offline.clone()).await;
    assert_eq!(reference["changed_connections"], 4);
    for (flows, model) in [
        (flows_file, agent.clone()),
        (flows_api.clone(), offline),
        (flows_api, agent),
    ] {
        let r = run(flows.clone(), model.clone()).await;
        assert_eq!(r["changes"], reference["changes"], "{flows:?} {model:?}");
        assert_eq!(r["connections"], reference["connections"]);
        assert_eq!(r["changed_connections"], reference["changed_connections"]);
        assert_eq!(r["edits"], reference["edits"]);
        if flows[0] == "--server" {
            assert_eq!(r["flows_from"], format!("the flow API at {}", flows[1]));
            // The ring holds flows only: no garbage or lost-event lines.
            assert_eq!(
                r["skipped"],
                json!({"replies": 4, "ICMP errors and neighbour discovery (never policed)": 1})
            );
        }
    }
}

#[tokio::test]
async fn what_if_without_the_flow_api_says_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let change = write_change(dir.path());
    let server = format!("unix://{}", dir.path().join("hubble.sock").display());
    let out = weir(&[
        "what-if",
        md(&change),
        "--server",
        &server,
        "--manifests",
        md(&m),
        "--socket",
        md(&dir.path().join("weir.sock")),
    ])
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        err.trim_end(),
        format!(
            "weir: the flow API is not reachable at {server} (no such socket): it is off by default; enable it with `weir flows enable`"
        )
    );
}
