//! The flow API's gate, end to end through the real agent and the real
//! `weir` CLI: no listener of any kind by default, on and off at runtime
//! without losing the flow ring, the unix socket's permissions, and a TLS
//! listener (in the machine's namespace while the datapath runs in the
//! lab's node namespace) that refuses every client it should and counts it.
//!
//! Needs root and the `weir` / `weir-cni` binaries (see tests/common).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use weir_integration::{Lab, LabOptions, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

/// A listening socket of a process: `tcp 127.0.0.1:9965` or `unix /path`.
fn listeners(pid: u32) -> BTreeSet<String> {
    // Socket inodes the process holds.
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds") {
        let Ok(fd) = fd else { continue };
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(n.to_string());
            }
        }
    }
    // Its sockets may live in this namespace (metrics, flow API TCP) or in
    // the node namespace it moved into: read both views.
    let mut out = BTreeSet::new();
    for base in ["/proc/self/net".to_string(), format!("/proc/{pid}/net")] {
        for file in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("{base}/{file}")) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // st 0A = LISTEN; field 9 is the inode.
                if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                    out.insert(format!("tcp {}", hex_addr(f[1])));
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(format!("{base}/unix")) {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // Flags 00010000 = __SO_ACCEPTCON (listening).
                if f.len() > 7 && f[3] == "00010000" && inodes.contains(f[6]) {
                    out.insert(format!("unix {}", f[7]));
                }
            }
        }
        for file in ["udp", "udp6"] {
            let Ok(text) = std::fs::read_to_string(format!("{base}/{file}")) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 9 && inodes.contains(f[9]) {
                    out.insert(format!("udp {}", hex_addr(f[1])));
                }
            }
        }
    }
    out
}

/// `0100007F:26DD` -> `127.0.0.1:9949` (IPv6 left in kernel hex, enough to compare).
fn hex_addr(s: &str) -> String {
    let (ip, port) = s.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    if ip.len() == 8 {
        let n = u32::from_str_radix(ip, 16).unwrap();
        format!("{}:{port}", std::net::Ipv4Addr::from(n.swap_bytes()))
    } else {
        format!("[{ip}]:{port}")
    }
}

fn weir(args: &[&str]) -> Output {
    common::run_weir(args)
}

use common::{observed_flows as observed, output_text as text};

fn metric(lab: &Lab, series: &str) -> f64 {
    common::metric(lab, series).unwrap_or_else(|| panic!("no series {series}"))
}

async fn two_pod_lab(options: LabOptions) -> Lab {
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a").label("app", "a"),
        PodSpec::new("y", "b")
            .label("app", "b")
            .port(PortSpec::tcp(80)),
    ])
    .await
    .expect("pods come up");
    let r = lab
        .probe(&ProbeSpec::tcp("x/a", "y/b", 80))
        .await
        .expect("probe runs");
    assert!(r.connected, "x/a -> y/b:80 connects: {r:?}");
    lab
}

fn sock_path(lab: &Lab) -> String {
    lab.socket().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_api_is_off_by_default_and_turns_on_and_off_at_runtime() {
    let Some(mut options) = common::agent_lab_options("flow_api_gating::runtime") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hubble = tmp.path().join("hubble.sock");
    // Only where the socket would go: nothing turns the API on.
    options.agent_args = vec!["--flow-api-socket".into(), hubble.display().to_string()];
    let lab = two_pod_lab(options).await;
    let pid = lab.agent_pid().expect("agent runs");
    let sock = sock_path(&lab);

    // Default: the metrics listener and the local API, nothing else.
    let metrics_addr = lab.metrics_addr().unwrap();
    let base: BTreeSet<String> = [format!("tcp {metrics_addr}"), format!("unix {sock}")].into();
    assert_eq!(listeners(pid), base, "no flow API listener by default");
    assert!(!hubble.exists());
    assert_eq!(metric(&lab, "weir_flow_api_enabled"), 0.0);
    let o = weir(&["flows", "status", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("disabled"), "{}", text(&o));
    let server = format!("unix://{}", hubble.display());
    let o = weir(&["observe", "--server", &server]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("weir flows enable"),
        "the error says what to do next: {}",
        text(&o)
    );
    // Flows flow as before: the flow log has the probe.
    let logged = lab.flows().unwrap();
    assert!(
        logged
            .iter()
            .any(|l| l["flow"]["l4"]["TCP"]["destination_port"] == 80),
        "flow log works with the API off"
    );

    // On at runtime: the ring made before is there.
    let o = weir(&["flows", "enable", "--socket", &sock, "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let state: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(state["enabled"], true);
    assert_eq!(state["socket"], hubble.display().to_string());
    let meta = std::fs::symlink_metadata(&hubble).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode 0600");
    assert_eq!(meta.uid(), 0);
    let mut with_api = base.clone();
    with_api.insert(format!("unix {}", hubble.display()));
    assert_eq!(listeners(pid), with_api);
    assert_eq!(metric(&lab, "weir_flow_api_enabled"), 1.0);
    let o = weir(&[
        "observe",
        "--server",
        &server,
        "--last",
        "1000",
        "-o",
        "json",
        "--from-pod",
        "x/a",
        "--to-pod",
        "y/b",
        "--port",
        "80",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let flows = observed(&o);
    assert!(
        flows
            .iter()
            .any(|f| f["l4"]["TCP"]["destination_port"] == 80
                && f["source"]["pod_name"] == "a"
                && f["destination"]["pod_name"] == "b"),
        "flows from before enabling are served: {}",
        text(&o)
    );
    let o = weir(&["status", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("Healthcheck (via {server}): Ok")),
        "{t}"
    );
    assert!(t.contains("Connected Nodes: 1/1"), "{t}");

    // Off again: the socket and the listener are gone; on again works.
    let o = weir(&["flows", "disable", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!hubble.exists(), "socket removed");
    assert_eq!(listeners(pid), base);
    assert_eq!(metric(&lab, "weir_flow_api_enabled"), 0.0);
    let o = weir(&["flows", "enable", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o));
    let o = weir(&["observe", "--server", &server, "--last", "1", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(observed(&o).len(), 1);
    lab.shutdown().await.expect("lab stops");
    assert!(!hubble.exists(), "the agent removes its socket on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_group_and_mode_come_from_the_config() {
    let Some(mut options) = common::agent_lab_options("flow_api_gating::group") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hubble = tmp.path().join("h.sock");
    let cfg = tmp.path().join("weir.yaml");
    std::fs::write(
        &cfg,
        format!(
            "flowApi:\n  enabled: true\n  socket: {}\n  socketMode: \"0660\"\n  socketGroup: \"daemon\"\n",
            hubble.display()
        ),
    )
    .unwrap();
    options.agent_args = vec!["--config".into(), cfg.display().to_string()];
    let lab = Lab::start(options).await.expect("lab starts");
    let meta = std::fs::symlink_metadata(&hubble).expect("socket exists at start");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let daemon_gid = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .expect("group daemon exists")
        .gid
        .as_raw();
    assert_eq!(meta.gid(), daemon_gid);
    lab.shutdown().await.expect("lab stops");

    // A world-readable mode is refused with the option named, exit 64.
    std::fs::write(&cfg, "flowApi:\n  enabled: true\n  socketMode: \"0666\"\n").unwrap();
    let o = weir(&["agent", "--config", &cfg.display().to_string()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("flowApi.socketMode"), "{}", text(&o));
}

/// A CA that issues server and client certificates, as PEM files.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join(format!("{name}-ca.pem")), pem).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    fn ca(&self) -> String {
        self.dir
            .join(format!("{}-ca.pem", self.name))
            .display()
            .to_string()
    }

    /// Writes `<name>-<leaf>.crt/.key`; returns their paths.
    fn leaf(&self, leaf: &str, names: &[&str], server: bool, expired: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.join(format!("{}-{leaf}.crt", self.name));
        let k = self.dir.join(format!("{}-{leaf}.key", self.name));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_refuses_whoever_it_should_and_counts_it() {
    let Some(mut options) = common::agent_lab_options("flow_api_gating::tls") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = Pki::new(d, "good");
    let other = Pki::new(d, "other");
    let (srv_crt, srv_key) = pki.leaf("server", &["localhost", "127.0.0.1"], true, false);
    let (cli_crt, cli_key) = pki.leaf("client", &["observer"], false, false);
    let (old_crt, old_key) = pki.leaf("expired", &["observer"], false, true);
    let (bad_crt, bad_key) = other.leaf("client", &["observer"], false, false);
    let tokens = d.join("tokens");
    std::fs::write(&tokens, "# flow API readers\ns3cret-token\n").unwrap();
    let token = d.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let wrong_token = d.join("wrong-token");
    std::fs::write(&wrong_token, "guess\n").unwrap();
    let hubble = d.join("hubble.sock");
    let cfg = d.join("weir.yaml");
    std::fs::write(
        &cfg,
        format!(
            "flowApi:\n  enabled: true\n  socket: {}\n  address: \"127.0.0.1:0\"\n  tokensFile: {}\n  tls:\n    certFile: {srv_crt}\n    keyFile: {srv_key}\n    clientCaFile: {}\n",
            hubble.display(),
            tokens.display(),
            pki.ca()
        ),
    )
    .unwrap();
    options.agent_args = vec!["--config".into(), cfg.display().to_string()];
    let lab = two_pod_lab(options).await;
    let sock = sock_path(&lab);
    let o = weir(&["flows", "status", "--socket", &sock, "-o", "json"]);
    let state: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(state["tcp_security"], "mtls");
    let addr = state["address"].as_str().unwrap().to_string();
    assert!(!addr.ends_with(":0"), "the bound port is reported: {addr}");
    // The TCP listener is in the machine's namespace although the agent
    // runs in the node's: this process can reach it on loopback.
    let pid = lab.agent_pid().unwrap();
    assert!(listeners(pid).contains(&format!("tcp {addr}")));

    let ca = pki.ca();
    let tok = token.display().to_string();
    let observe = |extra: &[&str]| {
        let mut args = vec!["observe", "--server", &addr, "--last", "3", "-o", "json"];
        args.extend_from_slice(extra);
        weir(&args)
    };
    let refused = |reason: &str| -> f64 {
        metric(
            &lab,
            &format!("weir_flow_api_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    let mut before = BTreeMap::new();
    for r in [
        "client_certificate",
        "missing_token",
        "invalid_token",
        "plaintext_on_tls",
        "server_certificate_rejected",
    ] {
        before.insert(r, refused(r));
    }

    // The right CA, client certificate and token: flows.
    let good = [
        "--tls",
        "--tls-ca-cert-files",
        &ca,
        "--tls-client-cert-file",
        &cli_crt,
        "--tls-client-key-file",
        &cli_key,
        "--token-file",
        &tok,
    ];
    let o = observe(&good);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!observed(&o).is_empty(), "{}", text(&o));

    // `weir policy what-if --server` takes the same flags: it replays the
    // ring's flows through the TLS listener (a change isolating y/b turns
    // x/a -> y/b:80 around), and without the token it is refused by name.
    let change = d.join("isolate-b.yaml");
    std::fs::write(
        &change,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: y, name: isolate-b}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    let change = change.display().to_string();
    let what_if = |extra: &[&str]| {
        let mut args = vec![
            "policy", "what-if", &change, "--server", &addr, "--socket", &sock, "-o", "json",
        ];
        args.extend_from_slice(extra);
        weir(&args)
    };
    let o = what_if(&good);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(
        report["flows_from"],
        format!("the flow API at {addr}"),
        "{report}"
    );
    let turned: Vec<(&str, &str, &str)> = report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["flow"]["source_pod"].as_str().unwrap_or("-"),
                c["flow"]["destination_pod"].as_str().unwrap_or("-"),
                c["after"]["verdict"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert!(turned.contains(&("x/a", "y/b", "DENIED")), "{report}");
    let before_missing = refused("missing_token");
    let o = what_if(&good[..7]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--token-file"), "{}", text(&o));
    assert_eq!(refused("missing_token"), before_missing + 1.0);
    before.insert("missing_token", refused("missing_token"));

    // No client certificate.
    let o = observe(&["--tls", "--tls-ca-cert-files", &ca, "--token-file", &tok]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A client certificate from another CA.
    let o = observe(&[
        "--tls",
        "--tls-ca-cert-files",
        &ca,
        "--tls-client-cert-file",
        &bad_crt,
        "--tls-client-key-file",
        &bad_key,
        "--token-file",
        &tok,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // An expired client certificate.
    let o = observe(&[
        "--tls",
        "--tls-ca-cert-files",
        &ca,
        "--tls-client-cert-file",
        &old_crt,
        "--tls-client-key-file",
        &old_key,
        "--token-file",
        &tok,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let after = refused("client_certificate");
    assert!(
        after >= before["client_certificate"] + 3.0,
        "three client-certificate refusals counted: {} -> {after}",
        before["client_certificate"]
    );

    // The token missing, then wrong.
    let o = observe(&good[..7]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("token"), "{}", text(&o));
    assert_eq!(refused("missing_token"), before["missing_token"] + 1.0);
    let wt = wrong_token.display().to_string();
    let mut wrong = good.to_vec();
    wrong[8] = &wt;
    let o = observe(&wrong);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("token"), "{}", text(&o));
    assert_eq!(refused("invalid_token"), before["invalid_token"] + 1.0);

    // Plain text to the TLS port.
    let o = observe(&["--token-file", &tok]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A client that does not trust the server's CA.
    let other_ca = other.ca();
    let mut distrust = good.to_vec();
    distrust[2] = &other_ca;
    let o = observe(&distrust);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).to_lowercase().contains("certificate"),
        "the client says the certificate is the problem: {}",
        text(&o)
    );
    assert!(refused("server_certificate_rejected") > before["server_certificate_rejected"]);
    assert!(refused("plaintext_on_tls") > before["plaintext_on_tls"]);

    // The unix socket needs no token: its permissions are the gate.
    let o = weir(&[
        "observe",
        "--server",
        &format!("unix://{}", hubble.display()),
        "--last",
        "1",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    lab.shutdown().await.expect("lab stops");
}
