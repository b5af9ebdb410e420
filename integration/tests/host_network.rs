//! hostNetwork pods in the lab: servers in the node's namespace inside a
//! cgroup of their own, probes to them at the node's addresses, probes from
//! them as processes inside that cgroup, and nothing left behind, neither by
//! shutdown nor by a killed run.
//!
//! Privileged (namespaces, cgroups). The tests marked so NEED THE AGENT
//! (target/debug/weir and weir-cni).

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::record::{self, RunRecord, Sweep};
use weir_integration::{
    Lab, LabError, NamespaceSpec, PodSpec, PortSpec, ProbeSpec, Protocol, cgroup,
};

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

/// (device, inode) of a namespace file, to compare namespaces.
fn ns_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.dev(), m.ino())
}

/// NEEDS THE AGENT. A regular pod and a hostNetwork pod reach each other
/// (TCP, UDP, ICMP; IPv4 and IPv6); the hostNetwork pod's server runs in the
/// node's namespace inside the pod's cgroup, and so do commands and probes
/// run "in" it; two hostNetwork pods may not share a port; shutdown removes
/// the cgroups with everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_serves_and_probes_from_its_own_cgroup() {
    let Some(mut options) =
        common::agent_lab_options("host_network_pod_serves_and_probes_from_its_own_cgroup")
    else {
        return;
    };
    options.settle = Duration::from_millis(300);
    let mut lab = Lab::start(options).await.expect("lab starts");
    let run_id = lab.run_id().to_string();
    lab.add_namespace(NamespaceSpec::new("x")).unwrap();
    lab.add_namespace(NamespaceSpec::new("y")).unwrap();
    lab.add_pods(vec![
        PodSpec::new("x", "a")
            .label("pod", "a")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(80)),
        PodSpec::new("y", "h")
            .label("pod", "h")
            .host_network()
            .port(PortSpec::tcp(8080))
            .port(PortSpec::udp(8081)),
    ])
    .await
    .expect("pods come up");

    // Its addresses are the node's, and its manifest says hostNetwork.
    let node_ips = lab.node_ips().to_vec();
    assert!(node_ips.iter().any(|ip| ip.is_ipv4()) && node_ips.iter().any(|ip| ip.is_ipv6()));
    assert_eq!(
        lab.pod_ip("y/h"),
        node_ips.iter().find(|ip| ip.is_ipv4()).copied()
    );
    assert_eq!(
        lab.pod_ip6("y/h"),
        node_ips.iter().find(|ip| ip.is_ipv6()).copied()
    );
    let manifest: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(lab.manifests_dir().join("pod-y-h.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["spec"]["hostNetwork"], true, "{manifest}");
    assert_eq!(manifest["status"]["phase"], "Running");
    assert_eq!(
        manifest["status"]["podIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["ip"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        node_ips.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert_eq!(
        lab.pod_netns_path("y/h"),
        Some(weir_integration::netns::path(lab.node_netns()))
    );
    assert_eq!(
        common::netns_of_run(&run_id).len(),
        2,
        "node + x/a: no namespace of its own"
    );

    // Both ways, every protocol, both families.
    let specs = vec![
        ProbeSpec::tcp("x/a", "y/h", 8080),
        ProbeSpec::tcp("x/a", "y/h", 8080).ipv6(),
        ProbeSpec::udp("x/a", "y/h", 8081),
        ProbeSpec::icmp("x/a", "y/h"),
        ProbeSpec::tcp("y/h", "x/a", 80),
        ProbeSpec::udp("y/h", "x/a", 80).ipv6(),
        ProbeSpec::icmp("y/h", "x/a"),
        ProbeSpec::icmp("y/h", "x/a").ipv6(),
    ];
    let results = lab.probe_all(&specs).await.unwrap();
    for r in &results {
        assert!(r.connected, "{r:?}");
        let want = match r.protocol {
            Protocol::Icmp => "",
            _ => r.to.rsplit('/').next().unwrap(),
        };
        assert_eq!(r.reply, want, "{r:?}");
    }
    assert_eq!(
        results[0].dst,
        lab.pod_ip("y/h"),
        "probes to it go to the node"
    );
    assert_eq!(results[1].dst, lab.pod_ip6("y/h"));
    let closed = lab.probe(&ProbeSpec::tcp("y/h", "x/a", 82)).await.unwrap();
    assert_eq!(closed.error.as_deref(), Some("refused"), "{closed:?}");

    // The server: in the node's namespace, inside the pod's cgroup.
    let dir = lab
        .pod_cgroup("y/h")
        .expect("a hostNetwork pod has a cgroup")
        .to_path_buf();
    assert!(lab.pod_cgroup("x/a").is_none());
    let root = cgroup::mount_point().unwrap();
    assert_eq!(
        dir.parent().unwrap(),
        root.join(format!("weirlab-{run_id}"))
    );
    let leaf = dir.file_name().unwrap().to_string_lossy().into_owned();
    let uid = leaf
        .strip_prefix("pod")
        .expect("named pod<UID>, as kubelet does");
    assert!(uuid::Uuid::parse_str(uid).is_ok(), "{leaf}");
    let rec = RunRecord::load(&run_id).unwrap();
    assert_eq!(
        rec.cgroups,
        vec![dir.parent().unwrap().to_path_buf(), dir.clone()],
        "run and pod cgroups are recorded"
    );
    let pids = cgroup::pids(&dir);
    assert_eq!(
        pids.len(),
        1,
        "one server process in {}: {pids:?}",
        dir.display()
    );
    let server = pids[0];
    assert!(
        rec.processes
            .iter()
            .any(|p| p.pid == server && p.what == "serve"),
        "the server is recorded: {:?}",
        rec.processes
    );
    let want_cgroup = format!("/weirlab-{run_id}/{leaf}");
    assert!(
        cgroup::of_pid(server).is_some_and(|c| c.ends_with(&want_cgroup)),
        "/proc/{server}/cgroup: {:?}",
        cgroup::of_pid(server)
    );
    assert_eq!(
        ns_id(Path::new(&format!("/proc/{server}/ns/net"))),
        ns_id(&weir_integration::netns::path(lab.node_netns())),
        "the server runs in the node's namespace"
    );

    // Commands (and probes, started the same way) run inside the cgroup too.
    let out = lab
        .exec_in_pod("y/h", &["cat", "/proc/self/cgroup"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&want_cgroup)),
        "{text}"
    );

    // hostNetwork pods share the node's ports.
    let err = lab
        .add_pod(
            PodSpec::new("y", "h2")
                .host_network()
                .port(PortSpec::tcp(8080)),
        )
        .await
        .expect_err("a second hostNetwork pod on 8080/TCP");
    assert!(
        matches!(&err, LabError::Spec(_)) && err.to_string().contains("8080/TCP"),
        "{err}"
    );

    lab.shutdown().await.expect("clean shutdown");
    assert!(!dir.exists(), "pod cgroup left");
    assert!(!dir.parent().unwrap().exists(), "run cgroup left");
    assert!(common::netns_of_run(&run_id).is_empty());
    for p in &rec.processes {
        assert!(!p.is_alive(), "{} {} survived shutdown", p.what, p.pid);
    }

    assert!(!RunRecord::dir_of(&run_id).exists());
}

/// NEEDS THE AGENT. A `weir-lab run` with a hostNetwork pod killed with
/// SIGKILL leaves its cgroup and server behind; the next lab removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_with_a_host_network_pod_is_removed_by_the_next_lab() {
    let Some(options) =
        common::agent_lab_options("killed_run_with_a_host_network_pod_is_removed_by_the_next_lab")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weirlab-hostkill-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("s.yaml");
    // The step changes the desired state, then settles for a minute.
    std::fs::write(
        &scenario,
        "namespaces: [{name: x}]\n\
         pods:\n  - {namespace: x, name: a, ports: [{port: 80}]}\n  - {namespace: x, name: h, hostNetwork: true, ports: [{port: 8080}]}\n\
         settle_ms: 60000\n\
         steps:\n  - apply: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: x}}]\n",
    )
    .unwrap();
    let mut child = common::spawn_weir_lab_run(&scenario, &options);
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(90);
    // Wait until both pods' servers run (agent + 2 servers recorded).
    let rec = loop {
        let found = record::run_ids()
            .into_iter()
            .filter_map(|id| RunRecord::load(&id).ok())
            .find(|r| r.owner.pid == pid && r.processes.len() >= 3 && r.cgroups.len() == 2);
        if let Some(r) = found {
            break r;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("weir-lab run never built its lab");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let pod_dir = rec.cgroups[1].clone();
    assert!(pod_dir.is_dir(), "a killed run leaves its cgroup");
    let server = cgroup::pids(&pod_dir);
    assert_eq!(server.len(), 1, "and the server inside: {server:?}");

    let lab = Lab::start(options).await.expect("lab starts");
    assert!(!pod_dir.exists(), "dead run's pod cgroup remains");
    assert!(!rec.cgroups[0].exists(), "dead run's cgroup remains");
    for p in &rec.processes {
        assert!(!p.is_alive(), "{} {} survived", p.what, p.pid);
    }
    assert!(common::netns_of_run(&rec.run_id).is_empty());
    assert!(!RunRecord::dir_of(&rec.run_id).exists());
    lab.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes a cgroup tree a test made, even when it panics.
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = cgroup::remove(&self.0);
    }
}

/// A cgroup directory of a run that has no record (died before writing
/// one) is removed by the sweep with the process inside; one of a live run
/// is left alone.
#[test]
fn orphan_lab_cgroups_are_swept_and_live_ones_kept() {
    if !common::require_root("orphan_lab_cgroups_are_swept_and_live_ones_kept") {
        return;
    }
    let root = cgroup::mount_point().expect("a cgroup2 hierarchy");
    let (orphan_id, live_id) = (new_id(), new_id());
    let orphan = cgroup::pod_dir(
        &cgroup::run_dir(&root, &orphan_id),
        "11111111-2222-3333-4444-555555555555",
    );
    let live = cgroup::pod_dir(
        &cgroup::run_dir(&root, &live_id),
        "66666666-7777-8888-9999-000000000000",
    );
    let _guards = [
        CgroupGuard(orphan.parent().unwrap().to_path_buf()),
        CgroupGuard(live.parent().unwrap().to_path_buf()),
    ];
    // Made under records (so no other test's sweep races the set-up); the
    // orphan's record then goes.
    RunRecord::new(&orphan_id).save().unwrap();
    let mut live_rec = RunRecord::new(&live_id);
    live_rec.cgroups = vec![live.parent().unwrap().to_path_buf(), live.clone()];
    live_rec.save().unwrap();
    cgroup::create(&orphan).unwrap();
    cgroup::create(&live).unwrap();
    assert!(matches!(
        cgroup::create(&live),
        Err(cgroup::CgroupError::Exists(_))
    ));
    let procs = cgroup::open_procs(&orphan).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("300").stdin(Stdio::null());
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || cgroup::enter_raw(&procs));
    }
    let mut sleeper = cmd.spawn().unwrap();
    assert_eq!(cgroup::pids(&orphan), vec![sleeper.id() as i32]);
    std::fs::remove_dir_all(RunRecord::dir_of(&orphan_id)).unwrap();

    let report = record::sweep(Sweep::DeadUnkept);
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        sleeper.try_wait().unwrap().is_some()
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(gone, "the process in the orphan cgroup survived");
    assert!(!orphan.parent().unwrap().exists(), "orphan cgroup remains");
    assert!(
        report
            .paths
            .contains(&orphan.parent().unwrap().to_path_buf()),
        "{report:?}"
    );
    assert!(live.is_dir(), "a live run's cgroup must stay");

    let mut report = record::CleanupReport::default();
    record::remove_run(&RunRecord::load(&live_id).unwrap(), &mut report);
    assert!(!live.parent().unwrap().exists(), "{report:?}");
}
