//! `weir-lab run` rejects bad scenarios before building anything: exit code 2
//! and a message naming the field. Unprivileged: validation runs first.

mod common;

use std::process::Command;

fn run_scenario(yaml: &str) -> (i32, String, String) {
    // One directory per call: tests run in parallel, and each removes its own.
    let dir = std::env::temp_dir().join(format!(
        "weirlab-scen-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(common::weir_lab_bin())
        .arg("run")
        .arg(&file)
        // A binary that does not exist: a valid scenario would fail with
        // exit code 1 when starting the lab, never with 2.
        .args(["--weir", "/nonexistent/weir"])
        .output()
        .expect("weir-lab runs");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_pod_in_a_probe_exits_2_naming_the_field() {
    let (code, stdout, stderr) = run_scenario(
        "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80}]}]\n\
         steps:\n  - probes: [{from: x/a, to: x/b, port: 80}]\n",
    );
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    assert!(
        stderr.contains("steps[0].probes[0].to") && stderr.contains("x/b"),
        "{stderr}"
    );
}

#[test]
fn bad_yaml_and_unknown_fields_exit_2() {
    let (code, _, stderr) = run_scenario("steps: [\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 1"), "says where: {stderr}");
    let (code, _, stderr) = run_scenario("namespaces: [{name: x, lables: {a: b}}]\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lables"), "{stderr}");
}

#[test]
fn bad_placeholder_exits_2_naming_the_field() {
    let (code, _, stderr) = run_scenario(
        "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\n\
         steps:\n  - apply:\n      - {kind: NetworkPolicy, spec: {cidr: '${net:x/a/40}'}}\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("steps[0].apply[0].spec.cidr"), "{stderr}");
}

#[test]
fn matrix_and_labels_errors_exit_2_naming_the_field() {
    let base = "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80}]}, {namespace: x, name: b}]\n";
    let (code, stdout, stderr) = run_scenario(&format!(
        "{base}steps:\n  - matrix: [{{ports: [80/TCP], expect: [{{from: '*', to: 'y/*', result: blocked}}]}}]\n"
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("steps[0].matrix[0].expect[0].to") && stderr.contains("matches no pod"),
        "{stderr}"
    );
    let (code, _, stderr) =
        run_scenario(&format!("{base}steps:\n  - labels: {{x/zz: {{a: b}}}}\n"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("steps[0].labels.x/zz"), "{stderr}");
    let (code, _, stderr) = run_scenario(&format!(
        "{base}steps:\n  - probes: [{{from: x/a, to: x/b, port: 80, expect: maybe}}]\n"
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("maybe"), "{stderr}");
}

#[test]
fn missing_scenario_file_exits_2() {
    let out = Command::new(common::weir_lab_bin())
        .args(["run", "/nonexistent/scenario.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/scenario.yaml"));
}

#[test]
fn a_valid_scenario_gets_past_validation() {
    // With a missing weir binary the run fails later, as a lab error (1);
    // without root it fails earlier, still as a lab error.
    let (code, _, stderr) = run_scenario(
        "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80}]}]\n\
         steps:\n  - probes: [{from: x/a, to: x/a, port: 80}]\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("steps["), "{stderr}");
}
