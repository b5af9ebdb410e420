//! hostNetwork pods on a real kernel: a "node" network namespace joined by
//! a veth to a "pod" namespace (pod B, tc programs on the node side), and a
//! hostNetwork pod: a child process in the node namespace living in a cgroup
//! v2 directory of its own (`<cgroup2>/wdphn-<pid>/pod/ctr`; the pod's
//! cgroup `pod` is registered and carries the cgroup programs).
//!
//! It shows, with real sockets: the pod's egress policy refuses its connect
//! at its own socket and allows another port; ingress to its listener is
//! policed; pod B's ingress policy sees the pod's process as the pod's
//! identity and a process outside the cgroup as HOST; loopback traffic is
//! the pod's own (free) or the node's (policed); each verdict comes back
//! as an event naming the synthetic endpoint id; and detaching frees the
//! cgroup again. Privileged (root); namespaces `wdphn-<pid>-...` and the
//! cgroup tree are removed on drop, also when a step fails.
//!
//! The child is this test binary run again with one test selected
//! (`hostnet_child_process`) and `WDPHN_CHILD` set: it opens sockets only
//! when told to on stdin, after the parent has moved it into the cgroup,
//! and answers on stdout.

mod common;

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::{BufRead, BufReader, ErrorKind, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;
use weir_common::{
    CGROUP_ENDPOINT_BIT, CgroupEndpoint, EndpointPolicy, FlowEvent, PolicyKey, PolicyValue,
    direction, drop_reason, ep_flag, identity, obs, policy_prefix, stat, verdict,
};
use weir_datapath::{Datapath, DatapathOptions, cgroup, testing};

/// Set in the child's environment; the child test does nothing without it.
const CHILD_ENV: &str = "WDPHN_CHILD";
/// Prefix of the child's answers (libtest prints its own lines too).
const REPLY: &str = "WDPHN ";

const NODE: [u8; 4] = [10, 215, 0, 1];
const POD_B: [u8; 4] = [10, 215, 0, 2];
const POD_B_ID: u32 = 300;
/// The hostNetwork pod's identity and synthetic endpoint id.
const AGENT_ID: u32 = 500;
const EP: u32 = CGROUP_ENDPOINT_BIT | 1;
/// Attribution ids: what denies each direction, and each allow rule.
const EP_INGRESS_DENY: u32 = 82;
const EP_EGRESS_DENY: u32 = 81;
const B_INGRESS_DENY: u32 = 91;
const EP_EGRESS_TO_B: u32 = 11;
const EP_INGRESS_FROM_B: u32 = 12;
const B_INGRESS_FROM_AGENT: u32 = 21;
const EPERM: i32 = 1;

// ------------------------------------------------------------- the child

/// The hostNetwork pod's process when run as the child; a no-op otherwise.
#[test]
fn hostnet_child_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let mut listeners: HashMap<u16, TcpListener> = HashMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read command");
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["connect", addr, ms] => child_connect(addr, ms),
            ["udp", addr] => child_udp(addr),
            ["listen", addr] => match TcpListener::bind(addr) {
                Ok(l) => {
                    listeners.insert(l.local_addr().expect("addr").port(), l);
                    "ok".to_owned()
                }
                Err(e) => err_reply(&e),
            },
            ["accept", port, ms] => match listeners.get(&port.parse::<u16>().expect("port")) {
                Some(l) => child_accept(l, ms),
                None => "err no such listener".to_owned(),
            },
            ["exit"] => break,
            _ => format!("err unknown command {line:?}"),
        };
        // Straight to the file descriptor: libtest captures print!.
        writeln!(out, "{REPLY}{reply}").expect("reply");
        out.flush().expect("flush");
    }
}

fn err_reply(e: &std::io::Error) -> String {
    format!("err {} {:?}", e.raw_os_error().unwrap_or(-1), e.kind())
}

fn child_connect(addr: &str, ms: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("address");
    let timeout = Duration::from_millis(ms.parse().expect("ms"));
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            let port = s.local_addr().expect("addr").port();
            let _ = s.write_all(b"x");
            format!("ok {port}")
        }
        Err(e) => err_reply(&e),
    }
}

fn child_udp(addr: &str) -> String {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("udp bind");
    match socket.send_to(b"hostnet", addr) {
        Ok(_) => "ok".to_owned(),
        Err(e) => err_reply(&e),
    }
}

fn child_accept(l: &TcpListener, ms: &str) -> String {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
    loop {
        match l.accept() {
            Ok((_, peer)) => return format!("ok {peer}"),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                sleep(Duration::from_millis(10));
            }
            Err(e) => return err_reply(&e),
        }
    }
}

/// The parent's handle on the child: killed and reaped on drop.
struct PodProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PodProcess {
    /// Starts the child in `netns` and moves it into `cgroup` before it
    /// opens any socket.
    fn spawn(netns: &Netns, cgroup: &Path) -> Self {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = netns
            .enter(|| {
                Command::new(&exe)
                    .args(["--exact", "hostnet_child_process", "--nocapture"])
                    .args(["--test-threads", "1", "-q"])
                    .env(CHILD_ENV, "1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .expect("spawn the pod process");
        let procs = cgroup.join("cgroup.procs");
        if let Err(e) = fs::write(&procs, child.id().to_string()) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moving the child into {}: {e}", procs.display());
        }
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command; `Ok(rest)` for "ok rest", `Err(rest)` for "err rest".
    fn cmd(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}").expect("send command");
        self.stdin.flush().expect("flush");
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = self.stdout.read_line(&mut buf).expect("read reply");
            assert_ne!(n, 0, "the child exited while running {line:?}");
            if let Some(reply) = buf.trim_end().strip_prefix(REPLY) {
                return match reply.strip_prefix("ok") {
                    Some(rest) => Ok(rest.trim().to_owned()),
                    None => Err(reply.strip_prefix("err ").unwrap_or(reply).to_owned()),
                };
            }
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an "err ERRNO KIND" reply is connect_timeout()'s own timeout.
fn timed_out(reply: &str) -> bool {
    reply.ends_with("TimedOut")
}

/// The errno of an "err ERRNO KIND" reply.
fn errno(reply: &str) -> i32 {
    reply
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an error reply: {reply:?}"))
}

// ------------------------------------------------------------- cgroups

/// `<cgroup2 mount>/wdphn-<pid>` and what the test creates below it;
/// removed on drop (processes still inside are killed first).
struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    fn new() -> Self {
        let mount = cgroup::cgroup2_mount().expect("a cgroup v2 hierarchy");
        let root = mount.join(format!("wdphn-{}", std::process::id()));
        let tree = Self { root };
        if tree.root.exists() {
            // A leftover of a killed run with the same pid.
            tree.remove();
        }
        fs::create_dir(&tree.root).expect("create the test cgroup");
        tree
    }

    fn mkdir(&self, relative: &str) -> PathBuf {
        let dir = self.root.join(relative);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    fn remove(&self) {
        let mut dirs = vec![self.root.clone()];
        if let Ok(below) = cgroup::descendants(&self.root) {
            dirs.extend(below.into_iter().map(|(path, _)| path));
        }
        for dir in &dirs {
            // cgroup.kill (5.14+) kills everything below; else one by one.
            if fs::write(dir.join("cgroup.kill"), "1").is_err()
                && let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs"))
            {
                for pid in pids.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    // SAFETY: kill(2) on a pid read from our own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Deepest first; a killed process leaves its cgroup a moment later.
        for dir in dirs.iter().rev() {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(_) => sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.remove();
    }
}

// ------------------------------------------------------------- the test

fn rule(endpoint: u32, identity: u32, dir: u8, port: u16) -> PolicyKey {
    PolicyKey {
        endpoint,
        identity,
        direction: dir,
        proto: 6,
        port: port.to_be_bytes(),
    }
}

fn allow(dp: &mut Datapath, key: PolicyKey, attr: u32) {
    dp.policy_maps()
        .set_rule(policy_prefix::FULL, key, PolicyValue { attr, _pad: [0; 4] })
        .expect("rule");
}

fn endpoint_policy(
    identity: u32,
    flags: u8,
    ingress_deny: u32,
    egress_deny: u32,
) -> EndpointPolicy {
    EndpointPolicy {
        identity,
        flags,
        _pad: [0; 3],
        ingress_deny_attr: ingress_deny,
        egress_deny_attr: egress_deny,
    }
}

/// Events so far (the programs write them before the sending syscall
/// returns; a short grace covers replies delivered in softirq).
fn events(dp: &mut Datapath) -> Vec<FlowEvent> {
    sleep(Duration::from_millis(50));
    testing::drain_events(dp).expect("drain")
}

fn find<'a>(evs: &'a [FlowEvent], what: &str, pred: impl Fn(&FlowEvent) -> bool) -> &'a FlowEvent {
    evs.iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("no {what} event in {evs:#?}"))
}

/// A TCP connect from the calling thread's cgroup, in namespace `ns`.
fn connect(ns: &Netns, addr: &str, ms: u64) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("address");
    ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(ms)))
}

fn ifindex_in(ns: &Netns, ifname: &str) -> u32 {
    let name = CString::new(ifname).expect("name");
    // SAFETY: a valid C string.
    let index = ns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
    assert_ne!(index, 0, "{ifname} not found in {}", ns.name);
    index
}

#[test]
fn host_network_pod_is_policed_by_its_cgroup() {
    if !privileged("host_network_pod_is_policed_by_its_cgroup") {
        return;
    }
    // Declaration order of the guards: the process dies before its cgroup
    // is removed, the namespaces go last.
    let node = Netns::with_prefix("wdphn", "node");
    let pod = Netns::with_prefix("wdphn", "pod");
    let id = std::process::id() % 100_000;
    let (host_if, pod_if) = (format!("whn{id}h"), format!("whn{id}p"));
    node.ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &pod.name,
    ]);
    node.ip(&["addr", "add", "10.215.0.1/24", "dev", &host_if]);
    node.ip(&["link", "set", &host_if, "up"]);
    pod.ip(&["addr", "add", "10.215.0.2/24", "dev", &pod_if]);
    pod.ip(&["link", "set", &pod_if, "up"]);
    // Pod B's servers (the kernel completes handshakes without accept()).
    let _b_servers: Vec<TcpListener> = [8080, 8081]
        .iter()
        .map(|port| {
            pod.enter(|| TcpListener::bind(format!("10.215.0.2:{port}")))
                .expect("pod B listener")
        })
        .collect();

    let tree = CgroupTree::new();
    let pod_cg = tree.mkdir("pod");
    let ctr_cg = tree.mkdir("pod/ctr");
    let pod_cg_id = cgroup::cgroup_id(&pod_cg).expect("pod cgroup id");
    let ctr_cg_id = cgroup::cgroup_id(&ctr_cg).expect("container cgroup id");
    assert_eq!(
        cgroup::descendants(&pod_cg).expect("descendants"),
        vec![(ctr_cg.clone(), ctr_cg_id)]
    );
    let mut agent = PodProcess::spawn(&node, &ctr_cg);
    assert_eq!(
        cgroup::process_cgroup(agent.child.id()).expect("child cgroup"),
        ctr_cg,
        "the child lives in the container cgroup"
    );

    // The datapath: tc on pod B's veth, the cgroup programs on the pod's
    // cgroup. Only the pod's cgroup is registered: the container's is found
    // through it (and then cached by the programs).
    let mut dp = Datapath::load(&DatapathOptions::default()).expect("load datapath");
    let veth = node.enter(|| dp.attach(&host_if)).expect("attach tc");
    assert_eq!(veth, ifindex_in(&node, &host_if));
    {
        let maps = dp.policy_maps();
        maps.set_ip(mapped(NODE), identity::HOST).expect("ipcache");
        maps.set_ip(mapped(POD_B), POD_B_ID).expect("ipcache");
        maps.set_cgroup(
            pod_cg_id,
            CgroupEndpoint {
                endpoint: EP,
                identity: AGENT_ID,
            },
        )
        .expect("set_cgroup");
        // The hostNetwork pod: isolated both ways; egress to B:8081,
        // ingress from B on 9091.
        maps.set_endpoint(
            EP,
            endpoint_policy(
                AGENT_ID,
                ep_flag::INGRESS_ENFORCED | ep_flag::EGRESS_ENFORCED,
                EP_INGRESS_DENY,
                EP_EGRESS_DENY,
            ),
        )
        .expect("endpoint");
        // Pod B: ingress only from the hostNetwork pod's identity, on 8081.
        maps.set_endpoint(
            veth,
            endpoint_policy(POD_B_ID, ep_flag::INGRESS_ENFORCED, B_INGRESS_DENY, 0),
        )
        .expect("endpoint");
    }
    allow(
        &mut dp,
        rule(EP, POD_B_ID, direction::EGRESS, 8081),
        EP_EGRESS_TO_B,
    );
    allow(
        &mut dp,
        rule(EP, POD_B_ID, direction::INGRESS, 9091),
        EP_INGRESS_FROM_B,
    );
    allow(
        &mut dp,
        rule(veth, AGENT_ID, direction::INGRESS, 8081),
        B_INGRESS_FROM_AGENT,
    );
    let attached_id = dp.attach_cgroup(&pod_cg).expect("attach to the pod cgroup");
    assert_eq!(attached_id, pod_cg_id);
    assert_eq!(
        dp.attach_cgroup(&pod_cg).expect("attach again"),
        pod_cg_id,
        "idempotent"
    );
    assert_eq!(dp.attached_cgroups(), vec![(pod_cg.clone(), pod_cg_id)]);
    let _ = events(&mut dp);

    // 1. The pod's egress policy, enforced at its own socket.
    // TCP's connect() does not see the drop: tcp_connect() ignores any
    // transmit error but ECONNREFUSED, so the SYN is retransmitted (and
    // dropped, and reported, again) until the connect times out.
    let refused = agent
        .cmd("connect 10.215.0.2:8080 700")
        .expect_err("egress to B:8080 is denied");
    assert!(timed_out(&refused), "{refused}");
    let evs = events(&mut dp);
    let denied = find(&evs, "egress drop", |e| e.dst_port == 8080);
    assert_eq!(
        (
            denied.ifindex,
            denied.obs_point,
            denied.verdict,
            denied.drop_reason,
            denied.policy_attr
        ),
        (
            EP,
            obs::FROM_ENDPOINT,
            verdict::DROPPED,
            drop_reason::POLICY_DENIED,
            EP_EGRESS_DENY
        )
    );
    assert_eq!((denied.src_addr, denied.dst_addr), (v4(NODE), v4(POD_B)));
    assert!(
        !evs.iter().any(|e| e.ifindex == veth && e.proto == 6),
        "the denied SYN never reached the veth: {evs:#?}"
    );
    // A datagram's sender does see it: sendto() fails with EPERM.
    let refused = agent.cmd("udp 10.215.0.2:5353").expect_err("udp is denied");
    assert_eq!(errno(&refused), EPERM, "sendto() fails: {refused}");
    let evs = events(&mut dp);
    let udp_drop = find(&evs, "udp drop", |e| e.proto == 17 && e.dst_port == 5353);
    assert_eq!((udp_drop.ifindex, udp_drop.verdict), (EP, verdict::DROPPED));

    // ...and allows B:8081, where pod B's ingress (3.) sees the pod's
    // identity for a packet from the node's address.
    let port = agent
        .cmd("connect 10.215.0.2:8081 2000")
        .expect("egress to B:8081 is allowed and B admits the pod");
    let port: u16 = port.parse().expect("local port");
    let evs = events(&mut dp);
    let out = find(&evs, "egress allowed", |e| {
        e.ifindex == EP && e.dst_port == 8081 && e.src_port == port
    });
    assert_eq!(
        (out.obs_point, out.verdict, out.policy_attr),
        (obs::FROM_ENDPOINT, verdict::FORWARDED, EP_EGRESS_TO_B)
    );
    let into_b = find(&evs, "B ingress allowed", |e| {
        e.ifindex == veth && e.dst_port == 8081 && e.src_port == port
    });
    assert_eq!(
        (
            into_b.obs_point,
            into_b.verdict,
            into_b.policy_attr,
            into_b.src_addr
        ),
        (
            obs::TO_ENDPOINT,
            verdict::FORWARDED,
            B_INGRESS_FROM_AGENT,
            v4(NODE)
        )
    );
    // The container's cgroup, never registered, was resolved through the
    // pod's and cached for the tc hook.
    let cached = dp.policy_maps().cgroups().expect("cgroups");
    assert!(
        cached.contains(&(
            ctr_cg_id,
            CgroupEndpoint {
                endpoint: EP,
                identity: AGENT_ID
            }
        )),
        "{cached:?}"
    );

    // 3. A node process outside any pod cgroup is HOST to pod B: denied.
    let host = connect(&node, "10.215.0.2:8081", 600);
    assert!(host.is_err(), "a plain node process is not the pod");
    let evs = events(&mut dp);
    let host_drop = find(&evs, "B ingress drop of HOST", |e| {
        e.ifindex == veth && e.dst_port == 8081 && e.verdict == verdict::DROPPED
    });
    assert_eq!(
        (
            host_drop.obs_point,
            host_drop.drop_reason,
            host_drop.policy_attr
        ),
        (obs::TO_ENDPOINT, drop_reason::POLICY_DENIED, B_INGRESS_DENY)
    );

    // 2. Ingress to the pod's listeners: from B on 9091 only.
    agent.cmd("listen 10.215.0.1:9090").expect("listen");
    agent.cmd("listen 10.215.0.1:9091").expect("listen");
    assert!(
        connect(&pod, "10.215.0.1:9090", 600).is_err(),
        "ingress to 9090 is denied"
    );
    let evs = events(&mut dp);
    let in_drop = find(&evs, "ingress drop", |e| {
        e.ifindex == EP && e.dst_port == 9090
    });
    assert_eq!(
        (
            in_drop.obs_point,
            in_drop.verdict,
            in_drop.policy_attr,
            in_drop.src_addr
        ),
        (
            obs::TO_ENDPOINT,
            verdict::DROPPED,
            EP_INGRESS_DENY,
            v4(POD_B)
        )
    );
    let _b = connect(&pod, "10.215.0.1:9091", 2000).expect("ingress to 9091 is allowed");
    agent
        .cmd("accept 9091 2000")
        .expect("the pod accepts the connection");
    let evs = events(&mut dp);
    let in_ok = find(&evs, "ingress allowed", |e| {
        e.ifindex == EP && e.dst_port == 9091 && e.obs_point == obs::TO_ENDPOINT
    });
    assert_eq!(
        (in_ok.verdict, in_ok.policy_attr),
        (verdict::FORWARDED, EP_INGRESS_FROM_B)
    );

    // 4. Loopback: the pod's traffic with itself is free and unreported;
    // with a node process it is HOST, which no rule allows either way.
    agent.cmd("listen 127.0.0.1:9092").expect("listen");
    agent
        .cmd("connect 127.0.0.1:9092 1000")
        .expect("the pod reaches itself");
    let evs = events(&mut dp);
    assert!(
        !evs.iter().any(|e| e.ifindex == EP),
        "own loopback traffic is not reported: {evs:#?}"
    );
    let node_listener = node
        .enter(|| TcpListener::bind("127.0.0.1:0"))
        .expect("node listener");
    let node_port = node_listener.local_addr().expect("addr").port();
    let refused = agent
        .cmd(&format!("connect 127.0.0.1:{node_port} 700"))
        .expect_err("egress to a node process is denied");
    assert!(timed_out(&refused), "{refused}");
    assert!(
        connect(&node, "127.0.0.1:9092", 600).is_err(),
        "a node process may not reach the pod"
    );
    let evs = events(&mut dp);
    let lo_out = find(&evs, "loopback egress drop", |e| {
        e.ifindex == EP && e.dst_port == node_port
    });
    assert_eq!(
        (lo_out.obs_point, lo_out.verdict, lo_out.policy_attr),
        (obs::FROM_ENDPOINT, verdict::DROPPED, EP_EGRESS_DENY)
    );
    let lo_in = find(&evs, "loopback ingress drop", |e| {
        e.ifindex == EP && e.dst_port == 9092
    });
    assert_eq!(
        (lo_in.obs_point, lo_in.verdict, lo_in.policy_attr),
        (obs::TO_ENDPOINT, verdict::DROPPED, EP_INGRESS_DENY)
    );
    let counters = dp.counters().expect("counters");
    assert!(
        counters.stats[stat::POLICY_DENIED as usize] >= 6,
        "{counters:?}"
    );
    assert_eq!(counters.stats[stat::CGROUP_UNKNOWN as usize], 0);

    // Detached: the pod's own policy no longer applies at its sockets.
    dp.detach_cgroup(&pod_cg).expect("detach");
    assert!(dp.attached_cgroups().is_empty());
    agent
        .cmd("udp 10.215.0.2:5353")
        .expect("no cgroup hook after detach");
    agent
        .cmd(&format!("connect 127.0.0.1:{node_port} 1000"))
        .expect("no cgroup hook after detach");
    dp.detach_cgroup(&pod_cg).expect("detach twice is fine");
    // Removing the endpoint removes the cached container entry with it.
    assert_eq!(dp.policy_maps().remove_cgroups_of(EP).expect("remove"), 2);
    assert!(dp.policy_maps().cgroups().expect("cgroups").is_empty());
    drop(agent);
    drop(tree);
}
