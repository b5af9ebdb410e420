//! Crash safety: what a dead run left (namespaces, processes inside them,
//! directories, records) is removed by the next lab start's sweep, kept runs
//! only by `weir-lab cleanup`, live runs never.
//!
//! Privileged (network namespaces). `killed_run_is_removed_by_the_next_lab`
//! also NEEDS THE AGENT (target/debug/weir).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_integration::netns;
use weir_integration::process::ProcessRef;
use weir_integration::record::{self, RunRecord, Sweep};

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

/// A `sleep` inside the named namespace, like an agent or a server.
fn sleeper_in(ns: &str) -> Child {
    let fd = netns::open(&netns::path(ns)).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("300").stdin(Stdio::null());
    // SAFETY: only setns(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || netns::setns_raw(&fd));
    }
    cmd.spawn().unwrap()
}

/// A run record owned by this process while the test builds the run (so
/// that sweeps of tests running alongside leave it alone).
fn live_record(id: &str, lab_dir: &Path) -> RunRecord {
    let mut rec = RunRecord::new(id);
    rec.lab_dir = Some(lab_dir.to_path_buf());
    rec
}

/// Makes the run's owner a process that no longer exists.
fn kill_owner(id: &str) {
    let mut rec = RunRecord::load(id).unwrap();
    rec.owner.start_time = u64::MAX; // not the start time of any process
    rec.save().unwrap();
}

/// Guard removing whatever a test made, even when it panics.
struct Leftovers {
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.netns {
            let _ = netns::delete(n);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn gone(child: &mut Child) -> bool {
    // Killed by the sweep: it exits (we reap it here).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn dead_run_is_removed_with_its_processes() {
    if !common::require_root("dead_run_is_removed_with_its_processes") {
        return;
    }
    let id = new_id();
    let node = format!("weirlab-{id}-node");
    let pod = format!("weirlab-{id}-p0");
    let lab_dir = std::env::temp_dir().join(format!("weirlab-{id}"));
    let mut guard = Leftovers {
        netns: vec![node.clone(), pod.clone()],
        dirs: vec![lab_dir.clone(), RunRecord::dir_of(&id)],
        children: vec![],
    };
    let mut rec = live_record(&id, &lab_dir);
    rec.netns = vec![node.clone(), pod.clone()];
    rec.save().unwrap();
    std::fs::create_dir_all(lab_dir.join("manifests")).unwrap();
    std::fs::write(lab_dir.join("manifests/ns-x.yaml"), "kind: Namespace\n").unwrap();
    netns::create(&node).unwrap();
    netns::create(&pod).unwrap();
    // One recorded process, one only found by its namespace (an agent that
    // died before its record was updated, say).
    let server = sleeper_in(&pod);
    let agent = sleeper_in(&node);
    let mut rec = RunRecord::load(&id).unwrap();
    rec.processes
        .push(ProcessRef::of(server.id() as i32, "serve").unwrap());
    rec.save().unwrap();
    guard.children = vec![server, agent];
    kill_owner(&id);

    let report = record::sweep(Sweep::DeadUnkept);
    assert!(
        report.errors.is_empty(),
        "sweep errors: {:?}",
        report.errors
    );
    assert!(
        common::netns_of_run(&id).is_empty(),
        "namespaces of the dead run remain"
    );
    assert!(!lab_dir.exists(), "lab directory remains");
    assert!(!RunRecord::dir_of(&id).exists(), "run record remains");
    for child in &mut guard.children {
        assert!(
            gone(child),
            "process {} in a dead run's namespace survived",
            child.id()
        );
    }
}

#[test]
fn kept_run_survives_lab_starts_and_goes_with_weir_lab_cleanup() {
    if !common::require_root("kept_run_survives_lab_starts_and_goes_with_weir_lab_cleanup") {
        return;
    }
    let id = new_id();
    let node = format!("weirlab-{id}-node");
    let lab_dir = std::env::temp_dir().join(format!("weirlab-{id}"));
    let _guard = Leftovers {
        netns: vec![node.clone()],
        dirs: vec![lab_dir.clone(), RunRecord::dir_of(&id)],
        children: vec![],
    };
    let mut rec = live_record(&id, &lab_dir);
    rec.kept = true;
    rec.netns = vec![node.clone()];
    rec.save().unwrap();
    std::fs::create_dir_all(&lab_dir).unwrap();
    netns::create(&node).unwrap();
    kill_owner(&id);

    record::sweep(Sweep::DeadUnkept);
    assert_eq!(
        common::netns_of_run(&id),
        vec![node.clone()],
        "a kept run must survive"
    );
    assert!(lab_dir.exists());

    let out = Command::new(common::weir_lab_bin())
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::netns_of_run(&id).is_empty(),
        "cleanup must remove kept runs"
    );
    assert!(!lab_dir.exists());
    assert!(!RunRecord::dir_of(&id).exists());
}

#[test]
fn live_runs_are_left_alone_and_orphan_namespaces_removed() {
    if !common::require_root("live_runs_are_left_alone_and_orphan_namespaces_removed") {
        return;
    }
    let live_id = new_id();
    let orphan_id = new_id();
    let live_ns = format!("weirlab-{live_id}-node");
    let orphan_ns = format!("weirlab-{orphan_id}-p3");
    let _guard = Leftovers {
        netns: vec![live_ns.clone(), orphan_ns.clone()],
        dirs: vec![RunRecord::dir_of(&live_id)],
        children: vec![],
    };
    // Owned by this (live) process.
    let mut rec = RunRecord::new(&live_id);
    rec.netns = vec![live_ns.clone()];
    rec.save().unwrap();
    netns::create(&live_ns).unwrap();
    // No record at all: left by a run that died before writing one. (Made
    // under a record, which then goes, so no other test's sweep races it.)
    RunRecord::new(&orphan_id).save().unwrap();
    netns::create(&orphan_ns).unwrap();
    std::fs::remove_dir_all(RunRecord::dir_of(&orphan_id)).unwrap();

    record::sweep(Sweep::AllDead);
    assert_eq!(common::netns_of_run(&live_id), vec![live_ns.clone()]);
    assert!(RunRecord::dir_of(&live_id).exists());
    assert!(
        common::netns_of_run(&orphan_id).is_empty(),
        "orphan namespace remains"
    );

    let mut report = record::CleanupReport::default();
    record::remove_run(&RunRecord::load(&live_id).unwrap(), &mut report);
    assert!(common::netns_of_run(&live_id).is_empty());
}

/// NEEDS THE AGENT: a `weir-lab run` killed with SIGKILL mid-run leaves its
/// lab behind; the next `Lab::start` removes all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_is_removed_by_the_next_lab() {
    let Some(options) = common::agent_lab_options("killed_run_is_removed_by_the_next_lab") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weirlab-kill-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("s.yaml");
    // The second step changes the desired state, then settles for a minute:
    // plenty of time to kill the run while its lab is complete.
    std::fs::write(
        &scenario,
        "namespaces: [{name: x}]\n\
         pods:\n  - {namespace: x, name: a, ports: [{port: 80}]}\n  - {namespace: x, name: b, ports: [{port: 80, protocol: UDP}]}\n\
         settle_ms: 60000\n\
         steps:\n  - apply: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: x}}]\n",
    )
    .unwrap();
    let mut child = common::spawn_weir_lab_run(&scenario, &options);
    let pid = child.id() as i32;
    // Find its run and wait until both pods exist.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_id = loop {
        let found = record::run_ids()
            .into_iter()
            .find(|id| RunRecord::load(id).is_ok_and(|r| r.owner.pid == pid && r.netns.len() == 3));
        if let Some(id) = found
            && common::netns_of_run(&id).len() == 3
            && RunRecord::load(&id).is_ok_and(|r| r.processes.len() >= 3)
        {
            break id;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("weir-lab run never built its lab");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rec = RunRecord::load(&run_id).unwrap();
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    assert_eq!(
        common::netns_of_run(&run_id).len(),
        3,
        "a killed run leaves its namespaces"
    );
    assert!(
        rec.processes.iter().any(|p| p.is_alive()),
        "and its agent and servers"
    );

    let lab = weir_integration::Lab::start(options)
        .await
        .expect("lab starts");
    assert!(
        common::netns_of_run(&run_id).is_empty(),
        "dead run's namespaces remain"
    );
    for p in &rec.processes {
        assert!(!p.is_alive(), "{} {} survived", p.what, p.pid);
    }
    assert!(!rec.lab_dir.as_ref().unwrap().exists());
    assert!(!RunRecord::dir_of(&run_id).exists());
    lab.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
