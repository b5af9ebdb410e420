//! The programs attached to a real veth: two network namespaces (a "host"
//! holding the endpoint's host-side veth and a "pod"), real UDP, TCP, ICMP
//! and malformed raw frames from the pod, events read through the tokio
//! `EventReader`, then detach and silence. Run in both attach modes.
//! Privileged (root); namespaces are named `wdp-<pid>-...` and removed on drop.

mod common;

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::*;
use weir_common::{FlowEvent, emit, family, flag, obs, parse_error, stat, tcp};
use weir_datapath::{AttachMode, Datapath, DatapathOptions, EventReader, testing};

const HOST_V4: [u8; 4] = [10, 213, 0, 1];
const POD_V4: [u8; 4] = [10, 213, 0, 2];
const HOST_V6: &str = "fd00:213::1";
const POD_V6: &str = "fd00:213::2";

/// A host namespace and a pod namespace joined by a veth pair.
struct Topology {
    // Field order: the veths vanish with their namespaces.
    host: Netns,
    pod: Netns,
    host_if: String,
    pod_if: String,
}

impl Topology {
    fn new(tag: char) -> Self {
        let host = Netns::new(&format!("{tag}-host"));
        let pod = Netns::new(&format!("{tag}-pod"));
        let id = std::process::id() % 100_000;
        let host_if = format!("wdp{id}{tag}h");
        let pod_if = format!("wdp{id}{tag}p");
        host.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &pod.name,
        ]);
        host.ip(&["addr", "add", "10.213.0.1/24", "dev", &host_if]);
        host.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:213::1/64",
            "dev",
            &host_if,
            "nodad",
        ]);
        host.ip(&["link", "set", &host_if, "up"]);
        pod.ip(&["addr", "add", "10.213.0.2/24", "dev", &pod_if]);
        pod.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:213::2/64",
            "dev",
            &pod_if,
            "nodad",
        ]);
        pod.ip(&["link", "set", &pod_if, "up"]);
        Self {
            host,
            pod,
            host_if,
            pod_if,
        }
    }
}

fn ifindex_in(ns: &Netns, ifname: &str) -> u32 {
    let name = CString::new(ifname).expect("name");
    // SAFETY: valid C string.
    let index = ns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
    assert_ne!(index, 0, "{ifname} not found in {}", ns.name);
    index
}

/// Sends one raw Ethernet frame out of `ifname` in `ns` (AF_PACKET).
fn send_raw(ns: &Netns, ifname: &str, frame: &[u8]) {
    let ifindex = ifindex_in(ns, ifname);
    ns.enter(|| {
        // SAFETY: plain socket calls on a fresh fd with a fully initialised sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(sent, frame.len() as isize, "raw send: {err}");
        }
    });
}

/// Real traffic from the pod to the host. Sockets are created inside their
/// namespace and then used from this thread (a socket keeps its namespace).
/// Returns the client ports: (udp v4, tcp, udp v6).
fn traffic(t: &Topology) -> (u16, u16, u16) {
    let timeout = Some(Duration::from_secs(2));

    // UDP v4 request/response.
    let server = t
        .host
        .enter(|| UdpSocket::bind("10.213.0.1:7001"))
        .expect("udp bind");
    let client = t
        .pod
        .enter(|| UdpSocket::bind("10.213.0.2:0"))
        .expect("udp client");
    server.set_read_timeout(timeout).expect("timeout");
    client.set_read_timeout(timeout).expect("timeout");
    client
        .send_to(b"ping", "10.213.0.1:7001")
        .expect("udp send");
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).expect("udp recv");
    server.send_to(&buf[..n], from).expect("udp reply");
    client.recv_from(&mut buf).expect("udp reply recv");
    let udp_port = client.local_addr().expect("addr").port();

    // TCP: handshake, one exchange, client closes first.
    let listener = t
        .host
        .enter(|| TcpListener::bind("10.213.0.1:7002"))
        .expect("tcp bind");
    let mut conn = t
        .pod
        .enter(|| TcpStream::connect("10.213.0.1:7002"))
        .expect("tcp connect");
    let tcp_port = conn.local_addr().expect("addr").port();
    let (mut accepted, _) = listener.accept().expect("accept");
    accepted.set_read_timeout(timeout).expect("timeout");
    conn.set_read_timeout(timeout).expect("timeout");
    conn.write_all(b"hello").expect("write");
    let mut got = [0u8; 5];
    accepted.read_exact(&mut got).expect("read");
    accepted.write_all(b"world").expect("write");
    conn.read_exact(&mut got).expect("read");
    drop(conn);
    // Wait for the client's FIN before closing the server side.
    assert_eq!(accepted.read(&mut got).expect("read eof"), 0);
    drop(accepted);

    // UDP v6.
    let server6 = t
        .host
        .enter(|| UdpSocket::bind(format!("[{HOST_V6}]:7003")))
        .expect("udp6 bind");
    let client6 = t
        .pod
        .enter(|| UdpSocket::bind(format!("[{POD_V6}]:0")))
        .expect("udp6 client");
    server6.set_read_timeout(timeout).expect("timeout");
    client6
        .send_to(b"ping6", format!("[{HOST_V6}]:7003"))
        .expect("udp6 send");
    server6.recv_from(&mut buf).expect("udp6 recv");
    let udp6_port = client6.local_addr().expect("addr").port();

    // ICMP echo.
    t.pod
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.213.0.1"]);

    // Malformed frames the stack would drop later but tc sees first.
    let mut truncated_v4 = vec![0xff; 6];
    truncated_v4.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    truncated_v4.extend_from_slice(&ETH_P_IP.to_be_bytes());
    truncated_v4.extend_from_slice(&[0x45; 10]);
    send_raw(&t.pod, &t.pod_if, &truncated_v4);
    let mut truncated_v6 = truncated_v4[..12].to_vec();
    truncated_v6.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    truncated_v6.extend_from_slice(&[0x60; 20]);
    send_raw(&t.pod, &t.pod_if, &truncated_v6);

    (udp_port, tcp_port, udp6_port)
}

/// Reads events until `done` says the collection is complete, or fails after a deadline.
async fn collect_until(
    reader: &mut EventReader,
    done: impl Fn(&[FlowEvent]) -> bool,
) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.next_batch(256, |e| events.push(*e))).await {
            Ok(result) => {
                result.expect("next_batch");
            }
            Err(_) => panic!("timed out; events so far: {events:#?}"),
        }
    }
    events
}

fn find<'a>(
    events: &'a [FlowEvent],
    what: &str,
    pred: impl Fn(&FlowEvent) -> bool,
) -> &'a FlowEvent {
    events
        .iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("no {what} event in {events:#?}"))
}

fn v6_addr(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

/// Number of programs attached in `dir` on `ifname` in `ns`, by mode.
fn attached_programs(t: &Topology, mode: AttachMode, dir: TcAttachType) -> usize {
    match mode {
        AttachMode::Tcx => t.host.enter(|| {
            SchedClassifier::query_tcx(&t.host_if, dir)
                .expect("query tcx")
                .1
                .len()
        }),
        AttachMode::ClsAct => {
            let dir = if dir == TcAttachType::Ingress {
                "ingress"
            } else {
                "egress"
            };
            let out = t
                .host
                .exec(&["tc", "filter", "show", "dev", &t.host_if, dir]);
            // One line per filter, e.g. `... handle 0x1 weir_from_endpoint direct-action ...`.
            out.lines()
                .filter(|l| l.contains("weir_") && l.contains("direct-action"))
                .count()
        }
    }
}

async fn attach_and_observe(mode: AttachMode, tag: char) {
    let t = Topology::new(tag);
    let host_ifindex = ifindex_in(&t.host, &t.host_if);

    let started = Instant::now();
    let mut dp = Datapath::load_with_mode(&DatapathOptions::default(), mode).expect("load");
    let loaded = started.elapsed();
    let ifindex = t.host.enter(|| dp.attach(&t.host_if)).expect("attach");
    let attached = started.elapsed();
    eprintln!(
        "[{}] load {:?}, attach {:?}, load+attach {:?}",
        mode.as_str(),
        loaded,
        attached - loaded,
        attached
    );
    assert_eq!(dp.attach_mode(), mode);
    assert_eq!(ifindex, host_ifindex);
    // Idempotent: a second attach changes nothing.
    assert_eq!(
        t.host.enter(|| dp.attach(&t.host_if)).expect("re-attach"),
        ifindex
    );
    assert_eq!(dp.attached(), vec![t.host_if.clone()]);
    assert_eq!(attached_programs(&t, mode, TcAttachType::Ingress), 1);
    assert_eq!(attached_programs(&t, mode, TcAttachType::Egress), 1);
    // From the root namespace the interface does not exist.
    assert!(
        dp.attach(&t.host_if).is_err(),
        "attach must resolve names in the calling thread's netns"
    );

    let mut reader = dp.take_events().expect("reader");
    let (udp_port, tcp_port, udp6_port) = traffic(&t);

    let pod4 = v4(POD_V4);
    let host4 = v4(HOST_V4);
    let (pod6, host6) = (v6_addr(POD_V6), v6_addr(HOST_V6));
    let is_tcp_fin_pair = |evs: &[FlowEvent]| {
        evs.iter()
            .filter(|e| e.proto == 6 && e.tcp_flags & tcp::FIN != 0)
            .count()
            >= 2
    };
    let events = collect_until(&mut reader, |evs| {
        let icmp = evs.iter().any(|e| e.proto == 1);
        let udp6 = evs
            .iter()
            .any(|e| e.family == family::IPV6 && e.proto == 17 && e.dst_port == 7003);
        icmp && udp6 && is_tcp_fin_pair(evs)
    })
    .await;

    for e in &events {
        assert_eq!(
            e.ifindex, ifindex,
            "every event names the host-side veth: {e:?}"
        );
        let from_pod = e.src_addr == pod4 || e.src_addr == pod6;
        let to_pod = e.dst_addr == pod4 || e.dst_addr == pod6;
        if from_pod {
            assert_eq!(
                e.obs_point,
                obs::FROM_ENDPOINT,
                "pod-sent packets are seen at ingress: {e:?}"
            );
        }
        if to_pod {
            assert_eq!(
                e.obs_point,
                obs::TO_ENDPOINT,
                "pod-bound packets are seen at egress: {e:?}"
            );
        }
    }

    let udp = find(&events, "udp v4", |e| e.proto == 17 && e.dst_port == 7001);
    assert_eq!(
        (
            udp.src_addr,
            udp.dst_addr,
            udp.src_port,
            udp.family,
            udp.obs_point,
            udp.emit_reason,
            udp.flags
        ),
        (
            pod4,
            host4,
            udp_port,
            family::IPV4,
            obs::FROM_ENDPOINT,
            emit::NEW,
            0
        )
    );
    assert_eq!(udp.packets, [1, 0]);
    assert_eq!(udp.pkt_len, 14 + 20 + 8 + 4);

    let syn = find(&events, "tcp syn", |e| {
        e.proto == 6 && e.emit_reason == emit::NEW
    });
    assert_eq!(
        (
            syn.src_addr,
            syn.dst_addr,
            syn.src_port,
            syn.dst_port,
            syn.tcp_flags,
            syn.obs_point
        ),
        (pod4, host4, tcp_port, 7002, tcp::SYN, obs::FROM_ENDPOINT)
    );
    let synack = find(&events, "tcp syn-ack", |e| {
        e.proto == 6 && e.tcp_flags & (tcp::SYN | tcp::ACK) == (tcp::SYN | tcp::ACK)
    });
    assert_eq!(
        (
            synack.src_addr,
            synack.src_port,
            synack.dst_port,
            synack.obs_point,
            synack.emit_reason,
            synack.flags
        ),
        (
            host4,
            7002,
            tcp_port,
            obs::TO_ENDPOINT,
            emit::TCP_FLAG,
            flag::REPLY
        )
    );
    let fin = find(&events, "client fin", |e| {
        e.proto == 6 && e.tcp_flags & tcp::FIN != 0 && e.src_addr == pod4
    });
    assert_eq!(
        (fin.obs_point, fin.emit_reason, fin.flags),
        (obs::FROM_ENDPOINT, emit::TCP_FLAG, 0)
    );
    assert!(
        fin.packets[0] >= 3 && fin.packets[1] >= 2,
        "counters of the connection: {fin:?}"
    );
    let fin_back = find(&events, "server fin", |e| {
        e.proto == 6 && e.tcp_flags & tcp::FIN != 0 && e.src_addr == host4
    });
    assert_eq!(
        (fin_back.obs_point, fin_back.flags),
        (obs::TO_ENDPOINT, flag::REPLY)
    );
    assert_eq!(fin_back.tcp_flags_seen[0] & tcp::FIN, tcp::FIN);

    let udp6 = find(&events, "udp v6", |e| {
        e.family == family::IPV6 && e.proto == 17 && e.dst_port == 7003
    });
    assert_eq!(
        (
            udp6.src_addr,
            udp6.dst_addr,
            udp6.src_port,
            udp6.obs_point,
            udp6.emit_reason
        ),
        (pod6, host6, udp6_port, obs::FROM_ENDPOINT, emit::NEW)
    );

    let ping = find(&events, "icmp echo", |e| e.proto == 1);
    assert_eq!(
        (
            ping.src_addr,
            ping.dst_addr,
            ping.icmp_type,
            ping.obs_point,
            ping.emit_reason,
            ping.src_port
        ),
        (pod4, host4, 8, obs::FROM_ENDPOINT, emit::NEW, 0)
    );
    assert!(
        !events.iter().any(|e| e.proto == 1 && e.icmp_type == 0),
        "echo replies belong to the request's connection: no event under full aggregation"
    );

    let counters = dp.counters().expect("counters");
    assert_eq!(
        counters.parse_errors[parse_error::BAD_IPV4 as usize],
        1,
        "{counters:?}"
    );
    assert_eq!(
        counters.parse_errors[parse_error::BAD_IPV6 as usize],
        1,
        "{counters:?}"
    );
    assert!(
        counters.parse_errors[parse_error::NON_IP as usize] >= 1,
        "ARP seen: {counters:?}"
    );
    assert_eq!(counters.stats[stat::EVENTS_LOST as usize], 0);
    assert!(counters.stats[stat::EVENTS_EMITTED as usize] >= events.len() as u64);
    assert!(
        dp.conntrack_entries().expect("ct") >= 4,
        "udp, tcp, udp6, icmp tracked"
    );

    // Detach: the kernel no longer lists our programs, and nothing more arrives.
    t.host.enter(|| dp.detach(&t.host_if)).expect("detach");
    assert!(dp.attached().is_empty());
    assert_eq!(attached_programs(&t, mode, TcAttachType::Ingress), 0);
    assert_eq!(attached_programs(&t, mode, TcAttachType::Egress), 0);
    t.host
        .enter(|| dp.detach(&t.host_if))
        .expect("detach twice is fine");

    // Drain whatever was in flight before the detach, then expect silence.
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(200), reader.next_batch(256, |_| {})).await
    {}
    let before = dp.counters().expect("counters").stats[stat::PACKETS as usize];
    traffic_after_detach(&t);
    let quiet = tokio::time::timeout(
        Duration::from_millis(500),
        reader.next_batch(16, |e| panic!("event after detach: {e:?}")),
    )
    .await;
    assert!(quiet.is_err(), "no event may arrive after detach");
    assert_eq!(
        dp.counters().expect("counters").stats[stat::PACKETS as usize],
        before,
        "programs no longer run"
    );
}

fn traffic_after_detach(t: &Topology) {
    let server = t
        .host
        .enter(|| UdpSocket::bind("10.213.0.1:7011"))
        .expect("udp bind");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let client = t
        .pod
        .enter(|| UdpSocket::bind("10.213.0.2:0"))
        .expect("udp client");
    client.send_to(b"after", "10.213.0.1:7011").expect("send");
    let mut buf = [0u8; 16];
    server
        .recv_from(&mut buf)
        .expect("traffic still flows after detach");
    t.pod.exec(&["ping", "-c", "1", "-W", "2", "10.213.0.1"]);
}

#[tokio::test]
async fn tcx_attach_observe_detach() {
    if !privileged("tcx_attach_observe_detach") || !kernel_has_tcx("tcx_attach_observe_detach") {
        return;
    }
    attach_and_observe(AttachMode::Tcx, 't').await;
}

#[tokio::test]
async fn clsact_attach_observe_detach() {
    if !privileged("clsact_attach_observe_detach") {
        return;
    }
    attach_and_observe(AttachMode::ClsAct, 'c').await;
}

#[test]
fn detach_after_the_interface_is_gone() {
    if !privileged("detach_after_the_interface_is_gone") {
        return;
    }
    for (mode, tag) in [(AttachMode::Tcx, 'g'), (AttachMode::ClsAct, 'k')] {
        if mode == AttachMode::Tcx && !kernel_has_tcx("detach_after_the_interface_is_gone (tcx)") {
            continue;
        }
        let t = Topology::new(tag);
        let mut dp = Datapath::load_with_mode(&DatapathOptions::default(), mode).expect("load");
        t.host.enter(|| dp.attach(&t.host_if)).expect("attach");
        t.host.ip(&["link", "del", &t.host_if]);
        t.host
            .enter(|| dp.detach(&t.host_if))
            .unwrap_or_else(|e| panic!("[{}] detach: {e:?}", mode.as_str()));
        assert!(dp.attached().is_empty());
    }
}

#[test]
fn reattach_follows_a_recreated_interface() {
    if !privileged("reattach_follows_a_recreated_interface") {
        return;
    }
    let t = Topology::new('r');
    let mut dp = Datapath::load(&DatapathOptions::default()).expect("load");
    let first = t.host.enter(|| dp.attach(&t.host_if)).expect("attach");
    t.host.ip(&["link", "del", &t.host_if]);
    t.host.ip(&[
        "link",
        "add",
        &t.host_if,
        "type",
        "veth",
        "peer",
        "name",
        &t.pod_if,
        "netns",
        &t.pod.name,
    ]);
    let second = t
        .host
        .enter(|| dp.attach(&t.host_if))
        .expect("attach again");
    assert_ne!(first, second, "a new interface has a new ifindex");
    assert_eq!(
        attached_programs(&t, dp.attach_mode(), TcAttachType::Ingress),
        1
    );
    assert_eq!(dp.attached(), vec![t.host_if.clone()]);
}

#[test]
fn test_run_uses_the_given_ifindex() {
    if !privileged("test_run_uses_the_given_ifindex") {
        return;
    }
    let t = Topology::new('i');
    let ifindex = ifindex_in(&t.host, &t.host_if);
    assert_ne!(ifindex, 1);
    let mut dp = Datapath::load(&DatapathOptions::default()).expect("load");
    let pkt = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, &udp(1, 2, b"x"));
    let out = t
        .host
        .enter(|| testing::run(&dp, obs::TO_ENDPOINT, &pkt, Some(ifindex)))
        .expect("run");
    assert_eq!(out.return_value, 0);
    assert!(out.ifindex_applied);
    let events = testing::drain_events(&mut dp).expect("drain");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].ifindex, events[0].obs_point),
        (ifindex, obs::TO_ENDPOINT)
    );
    // The same packet on another interface is another conntrack entry.
    testing::run(&dp, obs::TO_ENDPOINT, &pkt, None).expect("run on lo");
    let events = testing::drain_events(&mut dp).expect("drain");
    assert_eq!(
        (events.len(), events[0].ifindex, events[0].emit_reason),
        (1, 1, emit::NEW)
    );
    assert_eq!(dp.conntrack_entries().expect("ct"), 2);
}

/// tcx exists from Linux 6.6; before it only clsact + cls_bpf can be tested.
/// A missing kernel feature is not a missing privilege: this skip is fine
/// under CI=true, and the clsact variant of each test still runs.
fn kernel_has_tcx(test: &str) -> bool {
    if AttachMode::detect() == AttachMode::Tcx {
        return true;
    }
    eprintln!("skipping {test}: this kernel has no tcx (before 6.6); the clsact variant runs");
    false
}

/// cls_bpf filters outlive their process: an agent killed before it could
/// detach leaves them behind. The next attach replaces them instead of
/// piling a second pair of programs on the same hooks.
#[test]
fn clsact_attach_replaces_filters_left_by_a_killed_agent() {
    if !privileged("clsact_attach_replaces_filters_left_by_a_killed_agent") {
        return;
    }
    let t = Topology::new('z');
    let mut old = Datapath::load_with_mode(&DatapathOptions::default(), AttachMode::ClsAct)
        .expect("load the first datapath");
    t.host
        .enter(|| old.attach(&t.host_if))
        .expect("first attach");
    // As if the process died: nothing runs its detach.
    std::mem::forget(old);
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(attached_programs(&t, AttachMode::ClsAct, dir), 1, "{dir:?}");
    }
    let mut dp = Datapath::load_with_mode(&DatapathOptions::default(), AttachMode::ClsAct)
        .expect("load the second datapath");
    t.host
        .enter(|| dp.attach(&t.host_if))
        .expect("second attach");
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(
            attached_programs(&t, AttachMode::ClsAct, dir),
            1,
            "{dir:?}: the stale filter is replaced, not joined"
        );
    }
    t.host.enter(|| dp.detach(&t.host_if)).expect("detach");
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(attached_programs(&t, AttachMode::ClsAct, dir), 0, "{dir:?}");
    }
}
