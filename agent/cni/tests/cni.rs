//! weir-cni invoked as a container runtime invokes it: the built binary, the CNI
//! environment, the network configuration on stdin, the answer on stdout and the
//! exit status. The plugin runs inside a test-made "node" namespace and pods are
//! test-made namespaces; a fake agent serves the local API on a unix socket.
//!
//! Tests that need no kernel state (bad configuration, bad environment, VERSION)
//! run unprivileged; the others need root and skip without it (fail under CI=true).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Answer, Call, FakeAgent, Netns, allocated, has_route, invoke, netconf, privileged};
use serde_json::Value;
use weir_cni::host_veth_name;

/// A node namespace with forwarding on, a state directory and a running fake agent.
struct Fixture {
    agent: FakeAgent,
    node: Netns,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let node = Netns::new("node");
        // Every real node has lo up, and with it a local routing table; without
        // one the kernel resolves on-link neighbours as broadcast (NOARP).
        let out = node.exec(&["ip", "link", "set", "lo", "up"]);
        assert!(out.status.success(), "lo up in node: {out:?}");
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = FakeAgent::start(dir.path(), &node.name);
        Self { agent, node, dir }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn conf(&self, version: &str, cidrs: &[&str]) -> Value {
        netconf(version, &self.agent.socket, &self.data_dir(), cidrs)
    }

    fn run(&self, call: &Call) -> Answer {
        invoke(Some(&self.node), call)
    }

    /// weir-cni host veths in the node namespace.
    fn host_veths(&self) -> BTreeSet<String> {
        self.node
            .links()
            .into_iter()
            .filter(|l| l.starts_with("weir"))
            .collect()
    }
}

fn ip_of(result: &Value, i: usize) -> IpAddr {
    let s = result["ips"][i]["address"]
        .as_str()
        .expect("address string");
    s.split('/').next().expect("ip part").parse().expect("ip")
}

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':')
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

#[test]
fn add_ipv4_only_result_kernel_state_check_and_registration() {
    if !privileged("add_ipv4_only_result_kernel_state_check_and_registration") {
        return;
    }
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.1.0/24"]);
    let r = f
        .run(&Call::new("ADD", "c4only", &pod.path, &conf))
        .ok_json();
    let host = host_veth_name("c4only", "eth0");

    // Result, CNI 1.0.0 shape.
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 2);
    assert_eq!(ifaces[0]["name"], host.as_str());
    assert!(is_mac(ifaces[0]["mac"].as_str().expect("host mac")));
    assert!(
        ifaces[0].get("sandbox").is_none(),
        "host veth has no sandbox"
    );
    assert!(
        ifaces[0].get("mtu").is_none(),
        "mtu is only in 1.1.0 results"
    );
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], pod.path.display().to_string());
    let pod_mac = ifaces[1]["mac"].as_str().expect("pod mac").to_string();
    assert!(is_mac(&pod_mac));
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1);
    assert_eq!(
        ips[0]["address"], "10.99.1.2/32",
        "lowest address after network and router"
    );
    assert_eq!(ips[0]["gateway"], "169.254.1.1");
    assert_eq!(ips[0]["interface"], 1);
    assert!(ips[0].get("version").is_none(), "no version field in 1.0.0");
    let routes = r["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|x| x["dst"] == "0.0.0.0/0" && x["gw"] == "169.254.1.1")
    );
    assert!(
        routes.iter().all(|x| x["dst"] != "::/0"),
        "no IPv6 route in an IPv4-only pod"
    );

    // Node side.
    let hl = f.node.link(&host).expect("host veth exists");
    assert!(
        hl["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP")
    );
    assert_eq!(hl["mtu"], 1400);
    assert_eq!(hl["address"], ifaces[0]["mac"]);
    assert!(
        has_route(&f.node.routes("-4"), "10.99.1.2", None, &host),
        "{:?}",
        f.node.routes("-4")
    );
    assert_eq!(
        f.node
            .read_sysctl(&format!("net/ipv4/conf/{host}/proxy_arp")),
        "1"
    );

    // Pod side.
    let pl = pod.link("eth0").expect("eth0 in pod");
    assert!(
        pl["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP")
    );
    assert_eq!(pl["address"], pod_mac.as_str());
    assert_eq!(pl["mtu"], 1400);
    let lo = pod.link("lo").expect("lo");
    assert!(
        lo["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP"),
        "lo is up"
    );
    assert!(
        pod.addrs("eth0").contains("10.99.1.2/32"),
        "{:?}",
        pod.addrs("eth0")
    );
    let pr = pod.routes("-4");
    assert!(has_route(&pr, "169.254.1.1", None, "eth0"), "{pr:?}");
    assert!(
        pr.iter()
            .any(|x| x["dst"] == "169.254.1.1" && x["scope"] == "link"),
        "{pr:?}"
    );
    assert!(
        has_route(&pr, "default", Some("169.254.1.1"), "eth0"),
        "{pr:?}"
    );
    assert!(
        pod.routes("-6").iter().all(|x| x["dst"] != "default"),
        "no IPv6 default route"
    );

    // Agent registration.
    let regs = f.agent.registered();
    assert_eq!(regs.len(), 1);
    let reg = &regs[0].registration;
    assert!(
        regs[0].host_link_present,
        "the veth exists before the agent is asked"
    );
    assert_eq!(reg.container_id, "c4only");
    assert_eq!(reg.ifname, "eth0");
    assert_eq!(reg.netns, pod.path.display().to_string());
    assert_eq!(reg.namespace, "ns-c4only");
    assert_eq!(reg.pod, "pod-c4only");
    assert_eq!(reg.host_ifname, host);
    assert_eq!(
        u64::from(reg.host_ifindex),
        hl["ifindex"].as_u64().expect("ifindex")
    );
    assert_eq!(reg.ips, vec!["10.99.1.2".parse::<IpAddr>().expect("ip")]);
    assert_eq!(reg.mac, pod_mac);

    // CHECK passes on what ADD made, with or without prevResult...
    f.run(&Call::new("CHECK", "c4only", &pod.path, &conf))
        .ok_empty();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.clone();
    f.run(&Call::new("CHECK", "c4only", &pod.path, &with_prev))
        .ok_empty();
    // ...and fails, naming the route, once the pod's default route is gone.
    let out = pod.exec(&["ip", "route", "del", "default"]);
    assert!(out.status.success(), "{out:?}");
    let e = f
        .run(&Call::new("CHECK", "c4only", &pod.path, &conf))
        .err(102);
    assert!(
        e["msg"]
            .as_str()
            .expect("msg")
            .contains("0.0.0.0/0 via 169.254.1.1"),
        "{e}"
    );
    // A prevResult naming other addresses fails too.
    with_prev["prevResult"]["ips"][0]["address"] = "10.99.1.77/32".into();
    let e = f
        .run(&Call::new("CHECK", "c4only", &pod.path, &with_prev))
        .err(102);
    assert!(
        e["msg"].as_str().expect("msg").contains("prevResult"),
        "{e}"
    );
    // CHECK is not defined before 0.4.0.
    let old = f.conf("0.3.1", &["10.99.1.0/24"]);
    f.run(&Call::new("CHECK", "c4only", &pod.path, &old)).err(1);
}

#[test]
fn add_dual_stack_result_and_kernel_state() {
    if !privileged("add_dual_stack_result_and_kernel_state") {
        return;
    }
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.1.0", &["10.99.2.0/24", "fd00:99:2::/64"]);
    let r = f
        .run(&Call::new("ADD", "cdual", &pod.path, &conf))
        .ok_json();
    let host = host_veth_name("cdual", "eth0");

    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(
        r["interfaces"][0]["mtu"], 1400,
        "1.1.0 results carry the MTU"
    );
    assert_eq!(r["interfaces"][1]["mtu"], 1400);
    assert_eq!(r["ips"][0]["address"], "10.99.2.2/32");
    assert_eq!(r["ips"][1]["address"], "fd00:99:2::2/128");
    assert_eq!(r["ips"][1]["gateway"], "fe80::1");
    assert_eq!(r["ips"][1]["interface"], 1);
    let routes = r["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|x| x["dst"] == "::/0" && x["gw"] == "fe80::1"),
        "{routes:?}"
    );

    assert!(
        f.node.addrs(&host).contains("fe80::1/64"),
        "{:?}",
        f.node.addrs(&host)
    );
    assert!(
        has_route(&f.node.routes("-6"), "fd00:99:2::2", None, &host),
        "{:?}",
        f.node.routes("-6")
    );
    assert!(has_route(&f.node.routes("-4"), "10.99.2.2", None, &host));

    let pa = pod.addrs("eth0");
    assert!(
        pa.contains("10.99.2.2/32") && pa.contains("fd00:99:2::2/128"),
        "{pa:?}"
    );
    // nodad: the address is usable at once, never tentative.
    let raw = pod.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    let info = raw[0]["addr_info"].as_array().expect("addr_info");
    let global = info
        .iter()
        .find(|a| a["local"] == "fd00:99:2::2")
        .expect("global address");
    assert!(global.get("tentative").is_none(), "{global}");
    assert!(
        has_route(&pod.routes("-6"), "default", Some("fe80::1"), "eth0"),
        "{:?}",
        pod.routes("-6")
    );
    assert!(has_route(
        &pod.routes("-4"),
        "default",
        Some("169.254.1.1"),
        "eth0"
    ));

    let reg = &f.agent.registered()[0].registration;
    assert_eq!(reg.ips.len(), 2);

    f.run(&Call::new("CHECK", "cdual", &pod.path, &conf))
        .ok_empty();

    // The 0.3.x/0.4.0 shape adds ips[].version.
    let pod2 = Netns::new("pod");
    let old = f.conf("0.4.0", &["10.99.2.0/24", "fd00:99:2::/64"]);
    let r2 = f
        .run(&Call::new("ADD", "cdual2", &pod2.path, &old))
        .ok_json();
    assert_eq!(r2["cniVersion"], "0.4.0");
    assert_eq!(r2["ips"][0]["version"], "4");
    assert_eq!(r2["ips"][1]["version"], "6");
    assert_eq!(r2["ips"][1]["address"], "fd00:99:2::3/128");
}

/// Connects from `from` to `to_ip:port` served in `to`, sends a line and expects it back.
fn tcp_echo(from: &Netns, to: &Netns, to_ip: IpAddr, port: u16) {
    let addr = SocketAddr::new(to_ip, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn_in(move || {
        let l = TcpListener::bind(addr).expect("bind in pod");
        ready_tx.send(()).expect("ready");
        let (mut s, peer) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
        peer
    });
    ready_rx.recv().expect("server ready");
    let client = from.spawn_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read echo");
        buf
    });
    assert_eq!(&client.join().expect("client"), b"hello");
    let peer = server.join().expect("server");
    assert_ne!(
        peer.ip(),
        to_ip,
        "the peer is the other pod, not a local socket"
    );
}

#[test]
fn two_pods_ping_and_tcp_through_the_node_v4_and_v6() {
    if !privileged("two_pods_ping_and_tcp_through_the_node_v4_and_v6") {
        return;
    }
    let f = Fixture::new();
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let conf = f.conf("1.0.0", &["10.99.3.0/24", "fd00:99:3::/64"]);
    let ra = f.run(&Call::new("ADD", "cpa", &a.path, &conf)).ok_json();
    let rb = f.run(&Call::new("ADD", "cpb", &b.path, &conf)).ok_json();
    let (a4, a6, b4, b6) = (ip_of(&ra, 0), ip_of(&ra, 1), ip_of(&rb, 0), ip_of(&rb, 1));
    assert_ne!(a4, b4);

    for (from, to) in [(&a, b4), (&a, b6), (&b, a4), (&b, a6)] {
        let out = from.exec(&["ping", "-c", "2", "-W", "3", &to.to_string()]);
        assert!(
            out.status.success(),
            "ping {to} from {}: {}{}",
            from.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tcp_echo(&a, &b, b4, 18080);
    tcp_echo(&b, &a, a6, 18081);
}

#[test]
fn add_twice_is_idempotent() {
    if !privileged("add_twice_is_idempotent") {
        return;
    }
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.4.0/24", "fd00:99:4::/64"]);
    let call = Call::new("ADD", "cidem", &pod.path, &conf);
    let r1 = f.run(&call).ok_json();
    let r2 = f.run(&call).ok_json();
    assert_eq!(r1["ips"], r2["ips"], "same addresses on a repeated ADD");
    assert_eq!(f.host_veths().len(), 1, "{:?}", f.node.links());
    assert_eq!(allocated(&f.data_dir()).len(), 2);
    assert_eq!(
        pod.links(),
        BTreeSet::from(["lo".to_string(), "eth0".to_string()])
    );
    assert_eq!(
        f.agent.registered().len(),
        2,
        "each ADD registers (the agent's register is idempotent)"
    );
    f.run(&Call::new("CHECK", "cidem", &pod.path, &conf))
        .ok_empty();
}

#[test]
fn del_removes_veth_releases_ips_and_can_repeat() {
    if !privileged("del_removes_veth_releases_ips_and_can_repeat") {
        return;
    }
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.5.0/24", "fd00:99:5::/64"]);
    let r = f.run(&Call::new("ADD", "cdel", &pod.path, &conf)).ok_json();
    assert_eq!(allocated(&f.data_dir()).len(), 2);

    f.run(&Call::new("DEL", "cdel", &pod.path, &conf))
        .ok_empty();
    assert!(f.host_veths().is_empty(), "{:?}", f.node.links());
    assert!(
        pod.link("eth0").is_none(),
        "the peer goes with the host veth"
    );
    assert!(allocated(&f.data_dir()).is_empty());
    assert_eq!(
        f.agent.unregistered(),
        vec![("cdel".to_string(), "eth0".to_string())]
    );
    assert!(
        f.node.routes("-4").iter().all(|x| x["dst"] != "10.99.5.2"),
        "host route gone"
    );

    // Twice: still success.
    f.run(&Call::new("DEL", "cdel", &pod.path, &conf))
        .ok_empty();
    // CHECK of a deleted attachment fails.
    f.run(&Call::new("CHECK", "cdel", &pod.path, &conf))
        .err(102);

    // The released address is handed out again.
    let pod2 = Netns::new("pod");
    let r2 = f
        .run(&Call::new("ADD", "cdel2", &pod2.path, &conf))
        .ok_json();
    assert_eq!(r2["ips"][0]["address"], r["ips"][0]["address"]);
}

#[test]
fn del_with_gone_or_missing_netns_succeeds_and_releases() {
    if !privileged("del_with_gone_or_missing_netns_succeeds_and_releases") {
        return;
    }
    let f = Fixture::new();
    let mut pod = Netns::new("pod");
    let pod2 = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.6.0/24"]);
    f.run(&Call::new("ADD", "cgone", &pod.path, &conf))
        .ok_json();
    f.run(&Call::new("ADD", "cnons", &pod2.path, &conf))
        .ok_json();
    assert_eq!(allocated(&f.data_dir()).len(), 2);

    pod.delete();
    f.run(&Call::new("DEL", "cgone", &pod.path, &conf))
        .ok_empty();
    assert_eq!(allocated(&f.data_dir()).len(), 1);
    assert!(!f.host_veths().contains(&host_veth_name("cgone", "eth0")));

    let call = Call::new("DEL", "cnons", &pod2.path, &conf).var("CNI_NETNS", None);
    f.run(&call).ok_empty();
    assert!(allocated(&f.data_dir()).is_empty());
    assert!(f.host_veths().is_empty(), "{:?}", f.node.links());
    // ADD and CHECK on a namespace that is gone: "unknown container", nothing allocated.
    f.run(&Call::new("ADD", "cgone", &pod.path, &conf)).err(3);
    f.run(&Call::new("CHECK", "cgone", &pod.path, &conf)).err(3);
    assert!(allocated(&f.data_dir()).is_empty());
}

#[test]
fn del_with_agent_down_still_cleans_up() {
    if !privileged("del_with_agent_down_still_cleans_up") {
        return;
    }
    let mut f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.7.0/24"]);
    f.run(&Call::new("ADD", "cdown", &pod.path, &conf))
        .ok_json();
    f.agent.stop();
    let a = f.run(&Call::new("DEL", "cdown", &pod.path, &conf));
    a.ok_empty();
    assert!(
        a.stderr.contains("cannot unregister"),
        "the failure is logged: {}",
        a.stderr
    );
    assert!(f.host_veths().is_empty());
    assert!(allocated(&f.data_dir()).is_empty());
}

#[test]
fn add_with_agent_down_fails_and_leaks_nothing() {
    if !privileged("add_with_agent_down_fails_and_leaks_nothing") {
        return;
    }
    let mut f = Fixture::new();
    f.agent.stop();
    let pod = Netns::new("pod");
    let conf = f.conf("0.4.0", &["10.99.8.0/24", "fd00:99:8::/64"]);
    let e = f
        .run(&Call::new("ADD", "cnoagent", &pod.path, &conf))
        .err(11);
    assert_eq!(e["cniVersion"], "0.4.0", "error in the caller's version");
    assert!(
        e["msg"].as_str().expect("msg").contains("weir agent"),
        "{e}"
    );
    assert_eq!(
        f.node.links(),
        BTreeSet::from(["lo".to_string()]),
        "no veth left"
    );
    assert_eq!(
        pod.links(),
        BTreeSet::from(["lo".to_string()]),
        "no pod interface left"
    );
    assert!(
        allocated(&f.data_dir()).is_empty(),
        "no address left allocated"
    );
    assert!(f.node.routes("-4").is_empty(), "{:?}", f.node.routes("-4"));
}

#[test]
fn add_refused_by_agent_rolls_back_and_unregisters() {
    if !privileged("add_refused_by_agent_rolls_back_and_unregisters") {
        return;
    }
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.12.0/24", "fd00:99:12::/64"]);
    let e = f
        .run(&Call::new("ADD", "refuse1", &pod.path, &conf))
        .err(101);
    assert!(
        e["msg"]
            .as_str()
            .expect("msg")
            .contains("attaching programs failed"),
        "{e}"
    );
    assert_eq!(f.agent.registered().len(), 1, "the agent was asked");
    assert_eq!(
        f.agent.unregistered(),
        vec![("refuse1".to_string(), "eth0".to_string())],
        "a refused registration is withdrawn in case the agent kept part of it"
    );
    assert!(f.host_veths().is_empty(), "{:?}", f.node.links());
    assert!(pod.link("eth0").is_none());
    assert!(allocated(&f.data_dir()).is_empty());
}

#[test]
fn ipam_exhaustion_on_a_slash_30() {
    if !privileged("ipam_exhaustion_on_a_slash_30") {
        return;
    }
    let f = Fixture::new();
    let p1 = Netns::new("pod");
    let p2 = Netns::new("pod");
    let conf = f.conf("1.0.0", &["10.99.9.0/30"]);
    let r = f.run(&Call::new("ADD", "cx1", &p1.path, &conf)).ok_json();
    assert_eq!(
        r["ips"][0]["address"], "10.99.9.2/32",
        "the only usable address of a /30"
    );
    let e = f.run(&Call::new("ADD", "cx2", &p2.path, &conf)).err(100);
    let msg = e["msg"].as_str().expect("msg");
    assert!(
        msg.contains("10.99.9.0/30") && msg.contains("exhausted"),
        "{e}"
    );
    assert_eq!(f.host_veths().len(), 1);
    assert!(p2.link("eth0").is_none());
    assert_eq!(allocated(&f.data_dir()).len(), 1);
}

#[test]
fn concurrent_adds_get_distinct_ips() {
    if !privileged("concurrent_adds_get_distinct_ips") {
        return;
    }
    let f = Fixture::new();
    let conf = f.conf("1.0.0", &["10.99.10.0/24", "fd00:99:10::/64"]);
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("pod")).collect();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let call = Call::new("ADD", &format!("cc{i}"), &p.path, &conf);
                let f = &f;
                s.spawn(move || f.run(&call))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for a in &answers {
        let r = a.ok_json();
        v4.insert(ip_of(&r, 0));
        v6.insert(ip_of(&r, 1));
    }
    assert_eq!(v4.len(), 8, "distinct IPv4 addresses: {v4:?}");
    assert_eq!(v6.len(), 8, "distinct IPv6 addresses: {v6:?}");
    let expected: BTreeSet<IpAddr> = (2..10)
        .map(|i| format!("10.99.10.{i}").parse().expect("ip"))
        .collect();
    assert_eq!(v4, expected, "the 8 lowest addresses");
    assert_eq!(f.host_veths().len(), 8);
    assert_eq!(allocated(&f.data_dir()).len(), 16);
    assert_eq!(f.agent.registered().len(), 8);
}

// ---- Unprivileged: failures found before any kernel or IPAM work. ----

fn plain_conf(dir: &Path) -> Value {
    netconf(
        "1.0.0",
        &dir.join("no.sock"),
        &dir.join("ipam"),
        &["10.99.11.0/24"],
    )
}

fn run_plain(call: &Call) -> Answer {
    invoke(None, call)
}

#[test]
fn bad_netconf_is_code_7_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = Path::new("/run/netns/wcni-does-not-exist");
    let cases: Vec<(&str, Value)> = vec![
        ("ipam.podCIDRs[0]", {
            let mut c = plain_conf(dir.path());
            c["ipam"]["podCIDRs"] = serde_json::json!(["10.99.11.0/33"]);
            c
        }),
        ("ipam.podCIDRs[1]", {
            let mut c = plain_conf(dir.path());
            c["ipam"]["podCIDRs"] = serde_json::json!(["10.99.11.0/24", "fd00::zz/64"]);
            c
        }),
        ("ipam", {
            let mut c = plain_conf(dir.path());
            c.as_object_mut().expect("object").remove("ipam");
            c
        }),
        ("ipam.mode", {
            let mut c = plain_conf(dir.path());
            c["ipam"]["mode"] = "host-local".into();
            c
        }),
        ("mtu", {
            let mut c = plain_conf(dir.path());
            c["mtu"] = 10.into();
            c
        }),
    ];
    for (field, conf) in cases {
        let e = run_plain(&Call::new("ADD", "cbad", ns, &conf)).err(7);
        let msg = e["msg"].as_str().expect("msg");
        assert!(msg.starts_with(&format!("{field}:")), "{field}: {e}");
        assert_eq!(e["cniVersion"], "1.0.0");
    }
    // Not JSON: decode error 6. Unsupported version: 1.
    let mut call = Call::new("ADD", "cbad", ns, &plain_conf(dir.path()));
    call.stdin = "{not json".into();
    run_plain(&call).err(6);
    let mut c = plain_conf(dir.path());
    c["cniVersion"] = "0.2.0".into();
    let e = run_plain(&Call::new("ADD", "cbad", ns, &c)).err(1);
    assert_eq!(e["cniVersion"], "0.2.0");
    // DEL with a bad configuration is refused the same way.
    let mut c = plain_conf(dir.path());
    c["ipam"]["mode"] = "host-local".into();
    run_plain(&Call::new("DEL", "cbad", ns, &c)).err(7);
    assert!(allocated(&dir.path().join("ipam")).is_empty());
}

#[test]
fn bad_or_missing_env_is_code_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = Path::new("/run/netns/wcni-does-not-exist");
    let good = Call::new("ADD", "cenv", ns, &plain_conf(dir.path()));
    let cases = [
        ("CNI_CONTAINERID", good.clone().var("CNI_CONTAINERID", None)),
        (
            "CNI_IFNAME",
            good.clone()
                .var("CNI_IFNAME", Some("waytoolonginterfacename")),
        ),
        ("CNI_NETNS", good.clone().var("CNI_NETNS", None)),
        (
            "CNI_NETNS",
            good.clone().var("CNI_NETNS", Some("relative/path")),
        ),
        (
            "CNI_ARGS",
            good.clone().var("CNI_ARGS", Some("K8S_POD_NAME=x;garbage")),
        ),
        ("CNI_COMMAND", good.clone().var("CNI_COMMAND", None)),
        ("CNI_COMMAND", good.clone().var("CNI_COMMAND", Some("FROB"))),
    ];
    for (var, call) in cases {
        let e = run_plain(&call).err(4);
        assert!(e["msg"].as_str().expect("msg").contains(var), "{var}: {e}");
    }
}

#[test]
fn version_command() {
    let call = Call {
        env: vec![("CNI_COMMAND".into(), "VERSION".into())],
        stdin: r#"{"cniVersion":"1.0.0"}"#.into(),
    };
    let v = run_plain(&call).ok_json();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let empty = Call {
        env: vec![("CNI_COMMAND".into(), "VERSION".into())],
        stdin: String::new(),
    };
    assert_eq!(run_plain(&empty).ok_json()["cniVersion"], "1.1.0");
}

#[test]
fn add_on_missing_netns_is_unknown_container_and_allocates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = plain_conf(dir.path());
    let ns = Path::new("/run/netns/wcni-does-not-exist");
    let e = run_plain(&Call::new("ADD", "cmissing", ns, &conf)).err(3);
    assert!(
        e["msg"].as_str().expect("msg").contains("does not exist"),
        "{e}"
    );
    assert!(allocated(&dir.path().join("ipam")).is_empty());
}
