//! End-to-end: real traffic between lab pods, through the real eBPF
//! datapath and the real agent, checked in the flow log and in /metrics.
//!
//! Every test here needs root and the `weir` and `weir-cni` binaries (see
//! tests/common); they skip locally without them and fail under CI=true.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metrics, sum};
use serde_json::Value;
use weir_integration::{Lab, LabOptions, NamespaceSpec, PodSpec, PortSpec, ProbeSpec};

/// Runs `f` on a thread that lives in the network namespace at `netns`, so
/// sockets it makes belong to that pod.
fn in_netns<T: Send + 'static>(netns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open pod netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into pod");
        f()
    })
    .join()
    .expect("netns thread")
}

fn flows_only(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter_map(|l| l.get("flow")).collect()
}

fn is_pod(side: &Value, ns: &str, pod: &str) -> bool {
    side["namespace"] == ns && side["pod_name"] == pod
}

fn two_pods() -> Vec<PodSpec> {
    vec![
        PodSpec::new("x", "a")
            .label("app", "a")
            .port(PortSpec::tcp(80)),
        PodSpec::new("y", "b")
            .label("app", "b")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53)),
    ]
}

async fn lab(options: LabOptions) -> Lab {
    let mut lab = Lab::start(options).await.expect("lab starts");
    lab.add_namespace(NamespaceSpec::new("x").label("team", "a"))
        .unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(two_pods()).await.expect("pods come up");
    lab
}

/// Waits until `cond` holds on the flow log, or panics showing the log.
async fn wait_flows(lab: &Lab, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = lab.flows().expect("flow log readable");
        if cond(&lines) {
            return lines;
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = lines.iter().rev().take(40).map(|l| l.to_string()).collect();
            panic!(
                "{what}: not in the flow log within 10 s; last lines:\n{}",
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(lab: &Lab) -> BTreeMap<String, f64> {
    metrics(&lab.metrics_text().await.expect("metrics served"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_log_and_metrics_describe_real_traffic() {
    let Some(options) = common::agent_lab_options("flow_log_and_metrics_describe_real_traffic")
    else {
        return;
    };
    let lab = lab(options).await;
    let node = lab.options().node_name.clone();
    for (spec, reply) in [
        (ProbeSpec::tcp("x/a", "y/b", 80), Some("b")),
        (ProbeSpec::udp("x/a", "y/b", 53), Some("b")),
        (ProbeSpec::icmp("x/a", "y/b"), None),
        (ProbeSpec::tcp("x/a", "y/b", 80).ipv6(), Some("b")),
    ] {
        let r = lab.probe(&spec).await.unwrap();
        assert!(r.connected, "{spec:?}: {r:?}");
        if let Some(reply) = reply {
            assert_eq!(r.reply, reply, "{r:?}");
        }
    }

    let tcp_v4 = |f: &Value| {
        f["IP"]["ipVersion"] == "IPv4"
            && (f["l4"]["TCP"]["destination_port"] == 80 || f["l4"]["TCP"]["source_port"] == 80)
    };
    let lines = wait_flows(&lab, "TCP, UDP, ICMP and IPv6 flows", |lines| {
        let flows = flows_only(lines);
        flows
            .iter()
            .any(|f| tcp_v4(f) && f["l4"]["TCP"]["flags"]["FIN"] == true)
            && flows
                .iter()
                .any(|f| f["l4"]["UDP"]["destination_port"] == 53)
            && flows.iter().any(|f| f["l4"]["ICMPv4"]["type"] == 8)
            && flows
                .iter()
                .any(|f| f["IP"]["ipVersion"] == "IPv6" && f["l4"]["TCP"]["destination_port"] == 80)
    })
    .await;
    let flows = flows_only(&lines);

    // The SYN leaving x/a, enriched on both sides, field by field.
    let syn_out = flows
        .iter()
        .find(|f| {
            tcp_v4(f)
                && f["trace_observation_point"] == "FROM_ENDPOINT"
                && f["l4"]["TCP"]["flags"] == serde_json::json!({"SYN": true})
        })
        .expect("SYN at x/a's interface");
    assert_eq!(syn_out["verdict"], "FORWARDED");
    assert_eq!(syn_out["Type"], "L3_L4");
    assert_eq!(syn_out["node_name"], node.as_str());
    assert_eq!(syn_out["traffic_direction"], "EGRESS");
    assert_eq!(syn_out["is_reply"], false);
    assert_eq!(syn_out["event_type"]["type"], 4);
    assert_eq!(
        syn_out["IP"]["source"],
        lab.pod_ip("x/a").unwrap().to_string()
    );
    assert_eq!(
        syn_out["IP"]["destination"],
        lab.pod_ip("y/b").unwrap().to_string()
    );
    assert!(is_pod(&syn_out["source"], "x", "a"), "{syn_out}");
    assert!(is_pod(&syn_out["destination"], "y", "b"), "{syn_out}");
    let labels = syn_out["source"]["labels"].as_array().unwrap();
    for want in [
        "k8s:app=a",
        "k8s:io.kubernetes.pod.namespace=x",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
    ] {
        assert!(labels.iter().any(|l| l == want), "{want} in {labels:?}");
    }
    assert!(syn_out["source"]["identity"].as_u64().unwrap() >= 256);
    assert_ne!(
        syn_out["source"]["identity"], syn_out["destination"]["identity"],
        "different label sets, different identities"
    );
    assert_eq!(syn_out["Summary"], "TCP Flags: SYN");

    // The same SYN delivered to y/b: the ingress side of the connection.
    assert!(flows.iter().any(|f| tcp_v4(f)
        && f["trace_observation_point"] == "TO_ENDPOINT"
        && f["traffic_direction"] == "INGRESS"
        && f["l4"]["TCP"]["flags"] == serde_json::json!({"SYN": true})
        && is_pod(&f["destination"], "y", "b")));
    // The SYN-ACK is a reply from y/b.
    let syn_ack = flows
        .iter()
        .find(|f| {
            tcp_v4(f)
                && f["l4"]["TCP"]["flags"]["SYN"] == true
                && f["l4"]["TCP"]["flags"]["ACK"] == true
        })
        .expect("SYN-ACK flow");
    assert_eq!(syn_ack["is_reply"], true);
    assert!(is_pod(&syn_ack["source"], "y", "b"), "{syn_ack}");
    assert_eq!(syn_ack["l4"]["TCP"]["source_port"], 80);
    // The ICMP echo request opens a connection; its reply is counted in the
    // same conntrack entry (aggregated), not emitted on its own.
    assert!(flows.iter().any(|f| f["l4"]["ICMPv4"]["type"] == 8
        && f["is_reply"] == false
        && f["extensions"]["emit_reason"] == "NEW"
        && is_pod(&f["source"], "x", "a")
        && is_pod(&f["destination"], "y", "b")));
    // Every line is in Hubble's export shape.
    for l in &lines {
        assert!(
            l.get("flow").is_some() || l.get("lost_events").is_some(),
            "{l}"
        );
        assert_eq!(l["node_name"], node.as_str(), "{l}");
        assert!(l["time"].is_string(), "{l}");
    }

    // Metrics agree with the flow log once traffic is idle and the writer
    // has flushed (TCP and UDP only: IPv6 neighbour discovery keeps adding
    // ICMPv6 flows on its own schedule).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = scrape(&lab).await;
    let flows_now = lab.flows().unwrap();
    let count = |proto: &str| {
        flows_only(&flows_now)
            .iter()
            .filter(|f| f["l4"].get(proto).is_some())
            .count() as f64
    };
    for proto in ["TCP", "UDP"] {
        assert_eq!(
            sum(
                &m,
                "weir_flows_processed_total",
                &[&format!("protocol=\"{proto}\"")]
            ),
            count(proto),
            "{proto} flows in /metrics vs the flow log"
        );
    }
    // The Hubble-compatible families (the default set) by value, against the
    // same flow log.
    let logged = flows_only(&flows_now);
    let count_if = |pred: &dyn Fn(&Value) -> bool| logged.iter().filter(|f| pred(f)).count() as f64;
    for proto in ["TCP", "UDP"] {
        assert_eq!(
            sum(
                &m,
                "hubble_flows_processed_total",
                &[
                    &format!("protocol=\"{proto}\""),
                    "type=\"Trace\"",
                    "verdict=\"FORWARDED\""
                ]
            ),
            count(proto),
            "hubble_flows_processed_total{{protocol={proto}}} vs the flow log"
        );
    }
    let flag = |f: &Value, name: &str| f["l4"]["TCP"]["flags"][name] == true;
    assert_eq!(
        sum(&m, "hubble_tcp_flags_total", &["flag=\"SYN\""]),
        count_if(&|f| flag(f, "SYN") && !flag(f, "ACK")),
        "SYN flows"
    );
    assert_eq!(
        sum(&m, "hubble_tcp_flags_total", &["flag=\"SYN-ACK\""]),
        count_if(&|f| flag(f, "SYN") && flag(f, "ACK")),
        "SYN-ACK flows"
    );
    assert_eq!(
        sum(&m, "hubble_tcp_flags_total", &["flag=\"FIN\""]),
        count_if(&|f| flag(f, "FIN")),
        "FIN flows"
    );
    assert!(sum(&m, "hubble_tcp_flags_total", &["flag=\"SYN\""]) >= 4.0);
    assert_eq!(
        sum(
            &m,
            "hubble_port_distribution_total",
            &["port=\"80\"", "protocol=\"TCP\""]
        ),
        count_if(&|f| f["l4"]["TCP"]["destination_port"] == 80 && f["is_reply"] == false),
        "requests to port 80"
    );
    assert_eq!(
        sum(
            &m,
            "hubble_port_distribution_total",
            &["port=\"53\"", "protocol=\"UDP\""]
        ),
        count_if(&|f| f["l4"]["UDP"]["destination_port"] == 53 && f["is_reply"] == false),
        "requests to port 53"
    );
    assert!(
        sum(
            &m,
            "hubble_icmp_total",
            &["family=\"IPv4\"", "type=\"EchoRequest\""]
        ) >= 2.0,
        "echo requests seen leaving and arriving"
    );
    assert!(
        sum(
            &m,
            "weir_flows_processed_total",
            &["protocol=\"ICMPv4\"", "verdict=\"FORWARDED\""]
        ) >= 2.0
    );
    assert_eq!(sum(&m, "weir_endpoints", &[]), 2.0);
    assert_eq!(sum(&m, "weir_lost_events_total", &[]), 0.0);
    assert_eq!(sum(&m, "weir_state_objects", &["kind=\"Pod\""]), 2.0);
    assert_eq!(sum(&m, "weir_state_objects", &["kind=\"Namespace\""]), 2.0);
    assert!(sum(&m, "weir_datapath_packets_total", &[]) >= count("TCP") + count("UDP"));
    // Kernel counters reach /metrics once a second and IPv6 neighbour
    // discovery keeps emitting meanwhile: compare with the idle TCP/UDP flows.
    assert!(sum(&m, "weir_datapath_events_emitted_total", &[]) >= count("TCP") + count("UDP"));
    assert!(sum(&m, "weir_state_last_sync_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(sum(&m, "weir_build_info", &[]), 1.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("process_resident_memory_bytes"))
    );
    // How the datapath runs on this kernel is visible: tcx from 6.6, else clsact.
    let release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let want_mode = if (major, minor) >= (6, 6) {
        "tcx"
    } else {
        "clsact"
    };
    assert_eq!(
        sum(
            &m,
            "weir_datapath_info",
            &[
                &format!("attach_mode=\"{want_mode}\""),
                &format!("kernel=\"{release}\"")
            ]
        ),
        1.0
    );
    let status = lab.agent_status().await.unwrap();
    assert_eq!(status.attach_mode, want_mode);
    assert_eq!(status.endpoints, 2);
    assert!(status.flows_seen >= flows_only(&flows_now).len() as u64);
    lab.shutdown().await.unwrap();
}

/// Builds an Ethernet frame from `payload` (an IP packet) with `ethertype`.
fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4_header(ihl: u8, total_len: u16, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// Sends raw frames out of `eth0` of the pod at `netns`.
fn send_raw(netns: PathBuf, frames: Vec<Vec<u8>>) {
    in_netns(netns, move || {
        // SAFETY: plain socket/ioctl/sendto calls with valid buffers and lengths.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0, "eth0 in pod");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n,
                    f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_counted_passed_and_never_crash_the_agent() {
    let Some(options) =
        common::agent_lab_options("malformed_packets_are_counted_passed_and_never_crash_the_agent")
    else {
        return;
    };
    let lab = lab(options).await;
    let before = scrape(&lab).await;
    let IpAddr::V4(a) = lab.pod_ip("x/a").unwrap() else {
        panic!("v4")
    };
    let IpAddr::V4(b) = lab.pod_ip("y/b").unwrap() else {
        panic!("v4")
    };
    let (a, b) = (a.octets(), b.octets());
    let mut bad_ihl = ipv4_header(4, 40, 6, a, b); // IHL 4 < 5
    bad_ihl.resize(40, 0);
    let mut short_tcp = ipv4_header(5, 30, 6, a, b); // 10 bytes of a 20-byte TCP header
    short_tcp.extend_from_slice(&[0x12, 0x34, 0, 80, 0, 0, 0, 1, 0, 0]);
    let mut short_udp = ipv4_header(5, 24, 17, a, b); // 4 bytes of an 8-byte UDP header
    short_udp.extend_from_slice(&[0x12, 0x34, 0, 53]);
    let mut short_v6 = vec![0x60, 0, 0, 0, 0, 8, 0, 64]; // hop-by-hop next, header cut short
    short_v6.extend_from_slice(&[0xfd; 32]);
    short_v6.extend_from_slice(&[6, 4]);
    let frames = vec![
        frame(0x0800, &bad_ihl),
        frame(0x0800, &short_tcp),
        frame(0x0800, &short_tcp),
        frame(0x0800, &short_udp),
        frame(0x86dd, &short_v6),
    ];
    send_raw(lab.pod_netns_path("x/a").unwrap(), frames);
    // Counters are copied into /metrics once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = |m: &BTreeMap<String, f64>, r: &str| {
        sum(
            m,
            "weir_datapath_parse_errors_total",
            &[&format!("reason=\"{r}\"")],
        )
    };
    loop {
        let m = scrape(&lab).await;
        let got = [
            reason(&m, "bad_ipv4") - reason(&before, "bad_ipv4"),
            reason(&m, "truncated_l4") - reason(&before, "truncated_l4"),
            reason(&m, "bad_ipv6") - reason(&before, "bad_ipv6"),
        ];
        if got == [1.0, 3.0, 1.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "parse errors (bad_ipv4, truncated_l4, bad_ipv6) grew by {got:?}, want [1, 3, 1]"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The agent is alive and still sees real traffic.
    let r = lab.probe(&ProbeSpec::tcp("x/a", "y/b", 80)).await.unwrap();
    assert!(r.connected, "{r:?}");
    assert!(lab.agent_status().await.unwrap().ready);
    lab.shutdown().await.unwrap();
}

/// Sends `n` UDP datagrams from one socket in `from_ns` to `to:port`; returns the source port.
fn udp_burst(from_ns: PathBuf, to: SocketAddr, n: usize, gap: Duration) -> u16 {
    in_netns(from_ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            s.send_to(format!("p{i}").as_bytes(), to).unwrap();
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        s.local_addr().unwrap().port()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_none_emits_one_event_per_packet() {
    let Some(mut options) =
        common::agent_lab_options("aggregation_none_emits_one_event_per_packet")
    else {
        return;
    };
    options.aggregation = Some("none".into());
    let lab = lab(options).await;
    let b = lab.pod_ip("y/b").unwrap();
    let sport = udp_burst(
        lab.pod_netns_path("x/a").unwrap(),
        SocketAddr::new(b, 53),
        20,
        Duration::from_millis(5),
    );
    let of_burst = |f: &Value| {
        f["l4"]["UDP"]["source_port"] == sport && f["l4"]["UDP"]["destination_port"] == 53
    };
    // Every datagram is seen leaving x/a and arriving at y/b: 40 events.
    let lines = wait_flows(&lab, "40 per-packet events", |lines| {
        flows_only(lines).iter().filter(|f| of_burst(f)).count() >= 40
    })
    .await;
    let burst: Vec<_> = flows_only(&lines)
        .into_iter()
        .filter(|f| of_burst(f))
        .collect();
    assert_eq!(
        burst.len(),
        40,
        "exactly one event per packet and observation point"
    );
    let from = burst
        .iter()
        .filter(|f| f["trace_observation_point"] == "FROM_ENDPOINT")
        .count();
    assert_eq!(from, 20);
    assert!(
        burst
            .iter()
            .all(|f| f["extensions"]["emit_reason"] == "PACKET"),
        "{:?}",
        burst[0]
    );
    lab.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_are_reported_once_per_interval() {
    let Some(mut options) =
        common::agent_lab_options("long_lived_connections_are_reported_once_per_interval")
    else {
        return;
    };
    options.agent_args = vec!["--report-interval".into(), "1s".into()];
    let lab = lab(options).await;
    let b = lab.pod_ip("y/b").unwrap();
    // A server of our own in y/b that keeps the connection open.
    let listener = in_netns(lab.pod_netns_path("y/b").unwrap(), || {
        TcpListener::bind("0.0.0.0:9000").unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let sport = in_netns(lab.pod_netns_path("x/a").unwrap(), move || {
        let mut s = TcpStream::connect(SocketAddr::new(b, 9000)).unwrap();
        let port = s.local_addr().unwrap().port();
        // 3.5 s of one packet every 100 ms.
        for _ in 0..35 {
            s.write_all(b"tick").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    });
    server.join().unwrap();
    let of_conn = |f: &Value| {
        f["l4"]["TCP"]["source_port"] == sport || f["l4"]["TCP"]["destination_port"] == sport
    };
    let lines = wait_flows(&lab, "FIN of the long-lived connection", |lines| {
        flows_only(lines)
            .iter()
            .any(|f| of_conn(f) && f["l4"]["TCP"]["flags"]["FIN"] == true)
    })
    .await;
    let conn: Vec<_> = flows_only(&lines)
        .into_iter()
        .filter(|f| of_conn(f))
        .collect();
    for point in ["FROM_ENDPOINT", "TO_ENDPOINT"] {
        let reports = conn
            .iter()
            .filter(|f| {
                f["trace_observation_point"] == point && f["extensions"]["emit_reason"] == "REPORT"
            })
            .count();
        // 3.5 s at one report per second at most: 2 or 3 (never one per packet).
        assert!(
            (2..=4).contains(&reports),
            "{point}: {reports} REPORT events in {conn:#?}"
        );
    }
    // Without reports the 35 data packets would have produced no events at all.
    assert!(
        conn.len() < 35,
        "aggregated: {} events for 35+ packets",
        conn.len()
    );
    lab.shutdown().await.unwrap();
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("weir.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_kernel_ring_is_counted_and_reported_as_lost() {
    let Some(mut options) =
        common::agent_lab_options("a_full_kernel_ring_is_counted_and_reported_as_lost")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The smallest ring (about 36 records) and one event per packet.
    let cfg = write_config(
        dir.path(),
        "datapath:\n  ringBufferBytes: 4096\n  aggregation: none\n",
    );
    options.agent_args = vec!["--config".into(), cfg.display().to_string()];
    let lab = lab(options).await;
    let b = lab.pod_ip("y/b").unwrap();
    udp_burst(
        lab.pod_netns_path("x/a").unwrap(),
        SocketAddr::new(b, 53),
        20_000,
        Duration::ZERO,
    );
    // After the burst: every event the kernel tried is either emitted or
    // counted lost, and what is lost is reported in /metrics, status and
    // the flow log alike. (Generous: under emulation in the VM tests the
    // agent drains the burst slowly.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let m = scrape(&lab).await;
        let lost = sum(
            &m,
            "weir_lost_events_total",
            &["source=\"kernel_ring_buffer\""],
        );
        let emitted = sum(&m, "weir_datapath_events_emitted_total", &[]);
        let packets = sum(&m, "weir_datapath_packets_total", &[]);
        let logged: f64 = lab
            .flows()
            .unwrap()
            .iter()
            .filter(|l| l["lost_events"]["source"] == "PERF_EVENT_RING_BUFFER")
            .map(|l| {
                let n = &l["lost_events"]["num_events_lost"];
                n.as_str()
                    .map_or_else(|| n.as_f64().unwrap(), |s| s.parse().unwrap())
            })
            .sum();
        let status = lab.agent_status().await.unwrap();
        let settled = lost > 0.0 && logged == lost && status.events_lost as f64 == lost;
        if settled {
            let unparsed = sum(&m, "weir_datapath_parse_errors_total", &[]);
            assert_eq!(
                emitted + lost + unparsed,
                packets,
                "with aggregation none every parsed packet is one event attempt"
            );
            assert!(
                packets >= 40_000.0,
                "20 000 datagrams seen twice: {packets}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost {lost} (metrics) vs {logged} (flow log) vs {} (status); emitted {emitted}, packets {packets}",
            status.events_lost
        );
    }
    lab.shutdown().await.unwrap();
}
