//! End-to-end tests of the exporter set: a real `FlowStore`, constructed
//! flows, real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir_export::{ExporterSet, ExporterState, WatchOptions};
use weir_flows::FlowStore;
use weir_flows::flow::{self as wf, Flow};

fn flow(i: u128, ns: &str, pod: &str, verdict: wf::Verdict) -> Flow {
    let mut f = weir_export::bench::sample_flow();
    // +1: the nil UUID is not printed.
    f.uuid = uuid::Uuid::from_u128(i + 1);
    f.time = Some(wf::Timestamp {
        seconds: 1_764_417_601,
        nanos: 0,
    });
    f.verdict = verdict;
    if verdict == wf::Verdict::Dropped {
        f.drop_reason_desc = wf::DropReason::PolicyDenied;
    }
    f.source = Some(Arc::new(wf::Endpoint {
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={pod}")],
        identity: 1000,
        ..wf::Endpoint::default()
    }));
    f
}

/// Every line of the log at `path` and its backups, oldest file first.
fn read_lines(path: &Path) -> Vec<Value> {
    let dir = path.parent().unwrap();
    let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(&format!("{stem}-"))
        })
        .collect();
    backups.sort();
    backups.push(path.to_owned());
    backups
        .iter()
        .filter(|p| p.exists())
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn uuids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l["flow"]["uuid"].as_str().map(str::to_owned))
        .collect()
}

fn u(i: u128) -> String {
    uuid::Uuid::from_u128(i + 1).to_string()
}

#[tokio::test]
async fn filters_and_field_mask_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops.log");
    let all = dir.path().join("all.log");
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "node-7");
    let cfg = format!(
        r#"
flowLogs:
  - name: all-drops
    filePath: {}
    fieldMask: [time, source.namespace, source.pod_name, destination, verdict, drop_reason_desc]
    includeFilters: [{{verdict: [DROPPED]}}]
    excludeFilters: [{{source_pod: ["kube-system/"]}}]
  - name: everything
    filePath: {}
"#,
        drops.display(),
        all.display()
    );
    let report = set.apply(&cfg);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.started, vec!["all-drops", "everything"]);

    let flows = [
        flow(1, "shop", "web", wf::Verdict::Dropped),
        flow(2, "kube-system", "coredns", wf::Verdict::Dropped),
        flow(3, "shop", "web", wf::Verdict::Forwarded),
        flow(4, "db", "pg", wf::Verdict::Dropped),
    ];
    for f in flows.iter().cloned() {
        store.push(f);
    }
    wait_for_lines(&set, "everything", 4).await;
    let dropped = set.status().iter().map(|s| s.queue_dropped).sum::<u64>();
    assert_eq!(
        set.status()[0].filtered_out,
        2,
        "one forwarded, one from kube-system"
    );
    set.stop_all().await;

    let d = read_lines(&drops);
    assert_eq!(d.len(), 2, "{d:?}");
    let mask_top = [
        "time",
        "source",
        "destination",
        "verdict",
        "drop_reason_desc",
    ];
    for (line, want_ns) in d.iter().zip(["shop", "db"]) {
        assert_eq!(line["node_name"], "node-7");
        assert_eq!(line["time"], "2025-11-29T12:00:01Z");
        let f = line["flow"].as_object().unwrap();
        for k in f.keys() {
            assert!(
                mask_top.contains(&k.as_str()),
                "field {k} is not in the mask: {line}"
            );
        }
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
        let src = f["source"].as_object().unwrap();
        assert_eq!(src.len(), 2, "only namespace and pod_name: {line}");
        assert_eq!(src["namespace"], want_ns);
        // `destination` is listed whole.
        assert_eq!(f["destination"]["pod_name"], "api-7f8d9c-p9k2m");
        assert_eq!(f["destination"]["labels"].as_array().unwrap().len(), 2);
    }
    let a = read_lines(&all);
    assert_eq!(uuids(&a), vec![u(1), u(2), u(3), u(4)]);
    // Without a mask the line is the protojson of the export event.
    for (line, f) in a.iter().zip(&flows) {
        let resp = weir_api::proto::observer::GetFlowsResponse {
            response_types: Some(
                weir_api::proto::observer::get_flows_response::ResponseTypes::Flow(
                    weir_api::convert::flow_to_proto(f),
                ),
            ),
            node_name: "node-7".into(),
            time: f.time.map(weir_api::convert::timestamp_to_proto),
        };
        assert_eq!(line, &weir_api::json::response_to_json(&resp));
    }
    assert_eq!(dropped, 0, "nothing dropped");
}

/// Waits until exporter `name` has written `n` lines; returns its status.
async fn wait_for_lines(set: &ExporterSet, name: &str, n: u64) -> weir_export::ExporterStatus {
    for _ in 0..500 {
        if let Some(s) = set.status().into_iter().find(|s| s.name == name)
            && s.lines_written >= n
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} did not write {n} lines: {:?}", set.status());
}

#[tokio::test]
async fn filtered_out_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    let cfg = format!(
        "flowLogs: [{{name: f, filePath: {}, includeFilters: [{{source_pod: [shop/]}}]}}]",
        dir.path().join("f.log").display()
    );
    assert!(set.apply(&cfg).is_ok());
    for i in 0..10 {
        let ns = if i % 2 == 0 { "shop" } else { "other" };
        store.push(flow(i, ns, "web", wf::Verdict::Forwarded));
    }
    let s = wait_for_lines(&set, "f", 5).await;
    assert_eq!(s.state, ExporterState::Running);
    set.stop_all().await;
    assert_eq!(read_lines(&dir.path().join("f.log")).len(), 5);
    assert!(set.status().is_empty(), "stop_all empties the set");
    assert_eq!(s.filtered_out, 5);
}

#[tokio::test]
async fn rotation_keeps_every_line_once_and_respects_backups() {
    let dir = tempfile::tempdir().unwrap();
    let keep_all = dir.path().join("all/flows.log");
    let keep_two = dir.path().join("two/flows.log");
    let store = FlowStore::new();
    let set = ExporterSet::with_queue_capacity(store.clone(), "n", 100_000);
    let cfg = format!(
        r#"flowLogs:
  - {{name: all, filePath: {}, fileMaxSizeMb: 1, fileMaxBackups: 0}}
  - {{name: two, filePath: {}, fileMaxSizeMb: 1, fileMaxBackups: 2}}
"#,
        keep_all.display(),
        keep_two.display()
    );
    assert!(set.apply(&cfg).is_ok());
    let n: u128 = 8000; // ~800 bytes a line: about 6 MB, 5-6 rotations
    for i in 0..n {
        store.push(flow(i, "shop", "web", wf::Verdict::Forwarded));
    }
    wait_for_lines(&set, "all", n as u64).await;
    wait_for_lines(&set, "two", n as u64).await;
    let status = set.status();
    set.stop_all().await;

    let all = uuids(&read_lines(&keep_all));
    assert_eq!(
        all,
        (0..n).map(u).collect::<Vec<_>>(),
        "every line once, in order"
    );
    let files_all = std::fs::read_dir(keep_all.parent().unwrap())
        .unwrap()
        .count();
    let rot_all = status[0].rotations;
    assert!(rot_all >= 4, "rotations: {rot_all}");
    assert_eq!(files_all as u64, rot_all + 1);
    for e in std::fs::read_dir(keep_all.parent().unwrap()).unwrap() {
        let len = e.unwrap().metadata().unwrap().len();
        assert!(len <= 1024 * 1024, "a file is {len} bytes");
    }

    let files_two = std::fs::read_dir(keep_two.parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(files_two, 3, "live file plus 2 backups");
    let two = uuids(&read_lines(&keep_two));
    let first = n - two.len() as u128;
    assert_eq!(
        two,
        (first..n).map(u).collect::<Vec<_>>(),
        "the newest lines, each once"
    );
    assert_eq!(status[1].rotations, rot_all);
}

#[tokio::test]
async fn reload_adds_removes_and_changes_without_touching_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(format!("{n}.log"));
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    let v1 = format!(
        "flowLogs:\n  - {{name: a, filePath: {}}}\n  - {{name: b, filePath: {}}}\n  - {{name: c, filePath: {}}}\n",
        p("a").display(),
        p("b").display(),
        p("c").display()
    );
    assert_eq!(set.apply(&v1).started, vec!["a", "b", "c"]);
    for i in 0..10 {
        store.push(flow(i, "shop", "web", wf::Verdict::Forwarded));
    }
    let ino = |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    wait_for_lines(&set, "a", 10).await;
    let a_inode = ino(&p("a"));

    // b changes (only drops), c goes, d comes; a is written the same way
    // (reordered keys) and must not restart.
    let v2 = format!(
        "flowLogs:\n  - {{filePath: {}, name: a}}\n  - {{name: b, filePath: {}, includeFilters: [{{verdict: [DROPPED]}}]}}\n  - {{name: d, filePath: {}}}\n",
        p("a").display(),
        p("b").display(),
        p("d").display()
    );
    let r = set.apply(&v2);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.unchanged, vec!["a"]);
    assert_eq!(r.restarted, vec!["b"]);
    assert_eq!(r.stopped, vec!["c"]);
    assert_eq!(r.started, vec!["d"]);
    for i in 10..20 {
        let v = if i % 2 == 0 {
            wf::Verdict::Dropped
        } else {
            wf::Verdict::Forwarded
        };
        store.push(flow(i, "shop", "web", v));
    }
    wait_for_lines(&set, "a", 20).await;
    assert_eq!(set.names(), vec!["a", "b", "d"]);
    set.stop_all().await;

    assert_eq!(
        ino(&p("a")),
        a_inode,
        "a's file was not reopened or replaced"
    );
    assert_eq!(
        uuids(&read_lines(&p("a"))),
        (0..20).map(u).collect::<Vec<_>>()
    );
    assert_eq!(
        uuids(&read_lines(&p("c"))),
        (0..10).map(u).collect::<Vec<_>>(),
        "c stopped at the reload"
    );
    let b_want: Vec<String> = (0..10)
        .chain((10..20).filter(|i| i % 2 == 0))
        .map(u)
        .collect();
    assert_eq!(
        uuids(&read_lines(&p("b"))),
        b_want,
        "old b up to the reload, new b after, no duplicates"
    );
    assert_eq!(
        uuids(&read_lines(&p("d"))),
        (10..20).map(u).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_bad_exporter_is_refused_and_the_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(format!("{n}.log"));
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    let v1 = format!(
        "flowLogs:\n  - {{name: good, filePath: {}}}\n  - {{name: b, filePath: {}}}\n",
        p("good").display(),
        p("b").display()
    );
    assert!(set.apply(&v1).is_ok());
    store.push(flow(1, "shop", "web", wf::Verdict::Forwarded));

    // b gets a bad filter (keeps its previous config), new entries are bad
    // in several ways, and `good` must be untouched.
    let v2 = format!(
        r#"flowLogs:
  - {{name: good, filePath: {good}}}
  - {{name: b, filePath: {b}, includeFilters: [{{source_ip: [999.1.1.1]}}]}}
  - {{name: mask, filePath: {m}, fieldMask: [source.nope]}}
  - {{name: good, filePath: {g2}}}
  - {{name: nofile}}
  - {{name: late, filePath: {l}, end: "tomorrow"}}
  - {{name: unopenable, filePath: {u}}}
"#,
        good = p("good").display(),
        b = p("b").display(),
        m = p("mask").display(),
        g2 = p("good2").display(),
        l = p("late").display(),
        u = blocker.join("x.log").display(),
    );
    let r = set.apply(&v2);
    assert_eq!(r.unchanged, vec!["good"]);
    assert!(
        r.started.is_empty() && r.stopped.is_empty() && r.restarted.is_empty(),
        "{r:?}"
    );
    let refused: Vec<(String, String, bool)> = r
        .refused
        .iter()
        .map(|x| {
            (
                x.error.exporter.clone(),
                x.error.field.clone(),
                x.kept_previous,
            )
        })
        .collect();
    let want = [
        ("b", "includeFilters[0].source_ip", true),
        ("mask", "fieldMask", false),
        ("good", "name", false),
        ("nofile", "filePath", false),
        ("late", "end", false),
        ("unopenable", "filePath", false),
    ];
    assert_eq!(
        refused,
        want.iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
            .collect::<Vec<_>>()
    );
    for x in &r.refused {
        let msg = x.error.to_string();
        assert!(
            msg.contains(&x.error.exporter) && msg.contains(&x.error.field),
            "{msg}"
        );
    }
    store.push(flow(2, "shop", "web", wf::Verdict::Forwarded));
    wait_for_lines(&set, "good", 2).await;
    wait_for_lines(&set, "b", 2).await;
    assert_eq!(set.names(), vec!["b", "good"]);
    set.stop_all().await;
    assert_eq!(uuids(&read_lines(&p("good"))), vec![u(1), u(2)]);
    assert_eq!(
        uuids(&read_lines(&p("b"))),
        vec![u(1), u(2)],
        "b kept its previous config"
    );
    assert!(!p("mask").exists());
}

#[tokio::test]
async fn an_invalid_file_keeps_the_previous_set() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    assert!(
        set.apply(&format!(
            "flowLogs: [{{name: a, filePath: {}}}]",
            a.display()
        ))
        .is_ok()
    );
    for bad in [
        "flowLogs: [{name: a",
        "flowLogs: {name: a}",
        "exporters: []",
    ] {
        let r = set.apply(bad);
        assert!(r.file_error.is_some(), "{bad}: {r:?}");
        assert!(r.stopped.is_empty());
        assert_eq!(set.names(), vec!["a"]);
    }
    store.push(flow(1, "shop", "web", wf::Verdict::Forwarded));
    wait_for_lines(&set, "a", 1).await;
    set.stop_all().await;
}

#[tokio::test]
async fn end_time_stops_an_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(format!("{n}.log"));
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(400);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let cfg = format!(
        "flowLogs:\n  - {{name: brief, filePath: {}, end: \"{soon}\"}}\n  - {{name: past, filePath: {}, end: \"2020-01-01T00:00:00Z\"}}\n  - {{name: keep, filePath: {}}}\n",
        p("brief").display(),
        p("past").display(),
        p("keep").display()
    );
    let r = set.apply(&cfg);
    assert_eq!(r.started, vec!["brief", "keep"]);
    assert_eq!(r.ended, vec!["past"]);
    store.push(flow(1, "shop", "web", wf::Verdict::Forwarded));
    wait_for_lines(&set, "brief", 1).await;
    let mut ended = false;
    for _ in 0..300 {
        let s = set.status();
        if s.iter()
            .any(|s| s.name == "brief" && s.state == ExporterState::Ended)
        {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ended, "{:?}", set.status());
    store.push(flow(2, "shop", "web", wf::Verdict::Forwarded));
    wait_for_lines(&set, "keep", 2).await;
    // The same config again does not revive it.
    assert_eq!(set.apply(&cfg).unchanged, vec!["brief", "keep", "past"]);
    set.stop_all().await;
    assert_eq!(uuids(&read_lines(&p("brief"))), vec![u(1)]);
    assert!(read_lines(&p("past")).is_empty());
    assert_eq!(uuids(&read_lines(&p("keep"))), vec![u(1), u(2)]);
}

#[tokio::test]
async fn queue_overflow_is_counted_and_reported_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.log");
    let store = FlowStore::new();
    let set = ExporterSet::with_queue_capacity(store.clone(), "n", 4);
    assert!(
        set.apply(&format!(
            "flowLogs: [{{name: q, filePath: {}}}]",
            path.display()
        ))
        .is_ok()
    );
    // Pushed with no await in between: the exporter cannot run, 4 fit.
    for i in 0..10 {
        store.push(flow(i, "shop", "web", wf::Verdict::Forwarded));
    }
    let s = set.status();
    assert_eq!(s[0].queue_dropped, 6);
    set.stop_all().await;
    let lines = read_lines(&path);
    assert_eq!(uuids(&lines).len(), 4);
    let lost: u64 = lines
        .iter()
        .filter_map(|l| l["lost_events"]["num_events_lost"].as_str())
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(lost, 6, "{lines:?}");
}

#[tokio::test]
async fn watch_follows_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("flowlogs.yaml");
    let p = |n: &str| dir.path().join(format!("{n}.log"));
    std::fs::write(
        &cfg_path,
        format!("flowLogs: [{{name: a, filePath: {}}}]", p("a").display()),
    )
    .unwrap();
    let store = FlowStore::new();
    let set = ExporterSet::new(store.clone(), "n");
    let mut w = set
        .watch_with(
            &cfg_path,
            WatchOptions {
                debounce: Duration::from_millis(50),
                rescan: Duration::from_secs(3600),
            },
        )
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), w.next_report())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.started, vec!["a"]);

    // Replace the file as editors and ConfigMaps do (write aside, rename).
    let tmp = dir.path().join(".flowlogs.yaml.tmp");
    std::fs::write(
        &tmp,
        format!(
            "flowLogs: [{{name: a, filePath: {}}}, {{name: b, filePath: {}}}]",
            p("a").display(),
            p("b").display()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &cfg_path).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), w.next_report())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.started.clone(), r.unchanged.clone()),
        (vec!["b".to_owned()], vec!["a".to_owned()])
    );

    // A broken file changes nothing.
    std::fs::write(&cfg_path, "flowLogs: [").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), w.next_report())
        .await
        .unwrap()
        .unwrap();
    assert!(r.file_error.is_some());
    assert_eq!(set.names(), vec!["a", "b"]);
    store.push(flow(1, "shop", "web", wf::Verdict::Forwarded));
    wait_for_lines(&set, "b", 1).await;
    drop(w);
    set.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_accounts_for_every_flow() {
    let dir = tempfile::tempdir().unwrap();
    let r = weir_export::bench::run(
        dir.path(),
        &weir_export::bench::BenchOptions {
            flows: 20_000,
            rate: None,
            queue: 1024,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.flows_written + r.dropped, r.pushed, "{r:?}");
    assert!(r.flows_written > 0);
}
