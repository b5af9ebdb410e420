//! NetworkPolicy conformance: the upstream Kubernetes e2e NetworkPolicy suite
//! (kubernetes/kubernetes test/e2e/network/netpol/network_policy.go),
//! translated into the lab scenarios of `scenarios/netpol/` (their README.md
//! maps every upstream test to a file and step), run with `weir-lab run`
//! against the real agent and real traffic.
//!
//! One test per scenario file. Each needs root, `weir` and `weir-cni` (it
//! skips with a message locally, fails when `CI=true`), runs the file, and
//! asserts that every expectation held (exit code 0; on 3 the failing truth
//! tables are in the panic message) and that the number of probes judged
//! equals the number the file declares, counted here from the YAML, so that a
//! matrix that silently shrinks cannot pass. The unprivileged tests check the
//! files themselves: they parse, declare what they probe, and together cover
//! every upstream test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

/// The scenario files, one lab each; a file in the folder but not here fails
/// `the_folder_holds_exactly_the_known_files`.
const FILES: [&str; 6] = [
    "ingress.yaml",
    "egress.yaml",
    "ports.yaml",
    "protocols.yaml",
    "ipblock.yaml",
    "updates.yaml",
];

/// Number of `It` cases in upstream's network_policy.go (42 in the TCP
/// context, 3 using UDP, 3 using SCTP); step names start with their ordinal.
const UPSTREAM_TESTS: u32 = 48;

/// Labs run one at a time: their blocked probes wait out a 500 ms timeout,
/// and nine pods of several labs at once on a small machine could delay an
/// allowed probe past it.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/netpol")
}

/// The parts of a scenario file that decide how many probes it declares, read
/// with types (not as untyped YAML, where a bare `y` would be a boolean);
/// everything else (policies, labels, ...) is the lab's to check.
#[derive(Debug, Deserialize)]
struct File {
    pods: Vec<Pod>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Pod {
    namespace: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Step {
    name: Option<String>,
    #[serde(default)]
    probes: Vec<Probe>,
    #[serde(default)]
    matrix: Vec<MatrixEntry>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    expect: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MatrixEntry {
    ports: Vec<String>,
    from: Option<Vec<String>>,
    to: Option<Vec<String>>,
    family: Option<u8>,
    #[serde(default)]
    expect: Vec<ExpectRule>,
}

#[derive(Debug, Deserialize)]
struct ExpectRule {
    from: String,
    to: String,
    port: Option<String>,
    result: String,
}

fn read_scenario(file: &str) -> (String, File) {
    let path = scenario_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let parsed = parse_file(file, &text);
    (text, parsed)
}

fn parse_file(file: &str, text: &str) -> File {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{file}: not a scenario: {e}"))
}

/// What a scenario file declares: its steps and how many probes carry an
/// expectation (explicit probes with `expect`, plus every matrix pair).
#[derive(Debug, PartialEq, Eq)]
struct Declared {
    step_names: Vec<String>,
    expectations: u64,
}

/// Whether pod `key` (`ns/name`) matches a matrix pattern (`*`, `NS/*`,
/// `*/POD`, `NS/POD`).
fn pattern_matches(pattern: &str, key: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some((pns, pname)), Some((ns, name))) = (pattern.split_once('/'), key.split_once('/'))
    else {
        return false;
    };
    (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

/// Counts, independently of the lab's own parser, what `file` declares; panics
/// naming the field on anything a count would silently get wrong (a pattern
/// matching no pod, a port not of the matrix, ...).
fn declared(file: &str, scenario: &File) -> Declared {
    let pods: Vec<String> = scenario
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut step_names = Vec::new();
    let mut expectations = 0u64;
    for (s, step) in scenario.steps.iter().enumerate() {
        let name = step
            .name
            .clone()
            .unwrap_or_else(|| panic!("{file}: steps[{s}] has no name"));
        step_names.push(name);
        expectations += step.probes.iter().filter(|p| p.expect.is_some()).count() as u64;
        for (m, matrix) in step.matrix.iter().enumerate() {
            let field = format!("{file}: steps[{s}].matrix[{m}]");
            let select = |key: &str, patterns: &Option<Vec<String>>| -> Vec<&String> {
                let patterns = patterns.clone().unwrap_or_else(|| vec!["*".to_string()]);
                for p in &patterns {
                    assert!(
                        pods.iter().any(|k| pattern_matches(p, k)),
                        "{field}.{key}: {p:?} matches no pod"
                    );
                }
                pods.iter()
                    .filter(|k| patterns.iter().any(|p| pattern_matches(p, k)))
                    .collect()
            };
            let froms = select("from", &matrix.from);
            let tos = select("to", &matrix.to);
            assert!(!matrix.ports.is_empty(), "{field}.ports is empty");
            for port in &matrix.ports {
                let (number, proto) = port
                    .split_once('/')
                    .unwrap_or_else(|| panic!("{field}.ports: {port:?} is not PORT/PROTO"));
                assert!(
                    number.parse::<u16>().is_ok_and(|n| n > 0)
                        && ["TCP", "UDP"].contains(&proto.to_ascii_uppercase().as_str()),
                    "{field}.ports: {port:?} is not PORT/TCP or PORT/UDP"
                );
            }
            for (e, rule) in matrix.expect.iter().enumerate() {
                let f = format!("{field}.expect[{e}]");
                for (key, p, set) in [("from", &rule.from, &froms), ("to", &rule.to, &tos)] {
                    assert!(
                        set.iter().any(|k| pattern_matches(p, k)),
                        "{f}.{key}: {p:?} matches no pod of the matrix"
                    );
                }
                if let Some(port) = &rule.port {
                    assert!(
                        matrix.ports.contains(port),
                        "{f}.port: {port:?} is not probed"
                    );
                }
                assert!(
                    matches!(rule.result.as_str(), "connected" | "blocked"),
                    "{f}.result: {:?}",
                    rule.result
                );
            }
            let pairs = froms.len() * tos.len() - froms.iter().filter(|k| tos.contains(k)).count();
            expectations += (pairs * matrix.ports.len()) as u64;
        }
    }
    Declared {
        step_names,
        expectations,
    }
}

/// The truth tables of the matrices with wrong results, for a failure message
/// (the IP family from the scenario: the output does not repeat it).
fn failed_tables(output: &Value, scenario: &File) -> String {
    let mut text = String::new();
    for (s, step) in output["steps"].as_array().into_iter().flatten().enumerate() {
        for (m, matrix) in step["matrix"].as_array().into_iter().flatten().enumerate() {
            if matrix["failed"].as_u64().unwrap_or(0) > 0 {
                let family = scenario
                    .steps
                    .get(s)
                    .and_then(|st| st.matrix.get(m))
                    .and_then(|mx| mx.family)
                    .unwrap_or(4);
                text.push_str(&format!(
                    "--- {} matrix[{m}] {} IPv{family} ({} of {} wrong)\n{}\n",
                    step["name"].as_str().unwrap_or("?"),
                    matrix["ports"],
                    matrix["failed"],
                    matrix["checked"],
                    matrix["table"].as_str().unwrap_or("")
                ));
            }
        }
    }
    text
}

/// The last `n` characters of `s`: enough of the lab's stderr to explain a
/// failure without burying it.
fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Runs one scenario file through `weir-lab run` and checks its verdict.
fn run_file(file: &str) {
    let test = format!("netpol_conformance {file}");
    if common::agent_lab_options(&test).is_none() {
        return;
    }
    let (_, scenario) = read_scenario(file);
    let declared = declared(file, &scenario);
    let _one = ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let out = Command::new(common::weir_lab_bin())
        .arg("run")
        .arg(scenario_dir().join(file))
        .arg("--pretty")
        .arg("--weir")
        .arg(common::binary("WEIR_LAB_WEIR", "weir"))
        .arg("--cni")
        .arg(common::binary("WEIR_LAB_CNI", "weir-cni"))
        .output()
        .expect("weir-lab runs");
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    // 0: every expectation held; 3: the run completed and some did not. Both
    // print the whole result, which is checked for completeness first.
    if !matches!(code, Some(0 | 3)) {
        panic!(
            "{file}: weir-lab run exited {code:?}\nstderr (end):\n{}\nstdout (end):\n{}",
            tail(&stderr, 20_000),
            tail(&stdout, 5_000)
        );
    }
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{file}: output is not JSON ({e}):\n{}",
            tail(&stdout, 5_000)
        )
    });
    let ran: Vec<&str> = output["steps"]
        .as_array()
        .expect("output has steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ran, declared.step_names, "{file}: the steps that ran");
    assert_eq!(
        output["expectations"]["checked"].as_u64(),
        Some(declared.expectations),
        "{file}: probes judged vs probes declared"
    );
    let failed = output["expectations"]["failed"].as_u64();
    assert!(
        code == Some(0) && failed == Some(0),
        "{file}: expectations failed (exit code {code:?}, {} of {} probes wrong)\n{}\nstderr (end):\n{}",
        output["expectations"]["failed"],
        output["expectations"]["checked"],
        failed_tables(&output, &scenario),
        tail(&stderr, 20_000)
    );
}

#[test]
fn netpol_ingress() {
    run_file("ingress.yaml");
}

#[test]
fn netpol_egress() {
    run_file("egress.yaml");
}

#[test]
fn netpol_ports() {
    run_file("ports.yaml");
}

#[test]
fn netpol_protocols() {
    run_file("protocols.yaml");
}

#[test]
fn netpol_ipblock() {
    run_file("ipblock.yaml");
}

#[test]
fn netpol_updates() {
    run_file("updates.yaml");
}

// Unprivileged checks of the files themselves.

#[test]
fn the_folder_holds_exactly_the_known_files() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(scenario_dir())
        .expect("scenarios/netpol exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let known: BTreeSet<String> = FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(on_disk, known, "every scenario file needs its test here");
}

#[test]
fn every_file_parses_and_declares_probes() {
    for file in FILES {
        let (text, scenario) = read_scenario(file);
        weir_integration::Scenario::parse(&text)
            .unwrap_or_else(|e| panic!("{file}: the lab refuses it: {e}"));
        let d = declared(file, &scenario);
        assert!(d.expectations > 0, "{file} declares no expectation");
        let unique: BTreeSet<&String> = d.step_names.iter().collect();
        assert_eq!(
            unique.len(),
            d.step_names.len(),
            "{file}: step names repeat"
        );
        for name in &d.step_names {
            let ordinal = name.split_whitespace().next().unwrap_or("");
            let upstream = ordinal
                .split('.')
                .next()
                .and_then(|n| n.trim_end_matches(char::is_alphabetic).parse::<u32>().ok())
                .is_some_and(|n| n <= UPSTREAM_TESTS);
            assert!(
                upstream || (ordinal.starts_with('W') && name.contains("(weir)")),
                "{file}: step {name:?} starts with neither an upstream ordinal nor Wn (weir)"
            );
        }
    }
}

#[test]
fn every_upstream_test_has_a_step() {
    let mut covered = BTreeSet::new();
    for file in FILES {
        let (_, scenario) = read_scenario(file);
        for name in declared(file, &scenario).step_names {
            let ordinal = name.split(['.', ' ']).next().unwrap_or("");
            if let Ok(n) = ordinal.parse::<u32>() {
                covered.insert(n);
            }
        }
    }
    let missing: Vec<u32> = (1..=UPSTREAM_TESTS)
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "upstream tests without a step: {missing:?}"
    );
}

#[test]
fn declared_counts_pairs_without_self_and_every_port() {
    // The count the privileged tests compare against must itself be right.
    let scenario = parse_file(
        "inline",
        "pods: [{namespace: x, name: a}, {namespace: x, name: b}, {namespace: y, name: a}]\n\
         steps:\n\
         \x20 - name: s\n\
         \x20   probes: [{from: x/a, to: x/b, port: 80, expect: blocked}, {from: x/a, to: y/a, port: 80}]\n\
         \x20   matrix:\n\
         \x20     - {ports: [80/TCP, 81/UDP]}\n\
         \x20     - {ports: [80/TCP], from: [\"x/*\"], to: [\"*/a\"]}\n",
    );
    // 1 explicit probe with an expectation; 3x3-3 pairs x 2 ports; x/{a,b} to
    // {x/a, y/a} minus x/a->x/a = 3 pairs x 1 port.
    assert_eq!(
        declared("inline", &scenario),
        Declared {
            step_names: vec!["s".into()],
            expectations: 1 + 12 + 3
        }
    );
}

#[test]
#[should_panic(expected = "matches no pod")]
fn declared_refuses_a_pattern_matching_nothing() {
    let scenario = parse_file(
        "inline",
        "pods: [{namespace: x, name: a}, {namespace: x, name: b}]\n\
         steps: [{name: s, matrix: [{ports: [80/TCP], to: [\"q/*\"]}]}]\n",
    );
    declared("inline", &scenario);
}
