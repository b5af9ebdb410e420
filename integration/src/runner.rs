//! `weir-lab run`: builds the lab a scenario describes, runs its steps
//! (label changes and desired state, then probes and probe matrices),
//! judges the probes that carry expectations, and returns the results in the
//! documented output shape (an interface: add keys only; see README.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::lab::{KeptLab, Lab, LabError, LabOptions};
use crate::matrix::MatrixOutput;
use crate::probe::{ProbeResult, ProbeSpec};
use crate::scenario::{Scenario, ScenarioError, Target, ips_by_family};
use crate::spec::{Expectation, Family, Protocol};

/// Failures of a run, split by exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scenario is wrong (exit code 2).
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The lab failed (exit code 1).
    #[error(transparent)]
    Lab(LabError),
}

impl From<LabError> for RunError {
    fn from(e: LabError) -> Self {
        // Spec errors found by the lab are the scenario's fault too.
        match e {
            LabError::Spec(s) => RunError::Scenario(s),
            other => RunError::Lab(other),
        }
    }
}

impl RunError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Scenario(_) => 2,
            RunError::Lab(_) => 1,
        }
    }
}

/// Options of `weir-lab run` beyond the lab's.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Leave the lab running and report where it is.
    pub keep: bool,
    /// Include the flow log in the output (`flows`).
    pub flows: bool,
}

/// One step's results.
#[derive(Clone, Debug, Serialize)]
pub struct StepOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The explicit probes, then every matrix's probes.
    pub probes: Vec<ProbeResult>,
    /// One summary per matrix, when the step has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Vec<MatrixOutput>>,
}

/// How many probes carried an expectation, and how many missed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Expectations {
    pub checked: usize,
    pub failed: usize,
}

/// The output of `weir-lab run`.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutput {
    pub steps: Vec<StepOutput>,
    /// `ns/name` -> IPv4 address.
    pub pod_ips: BTreeMap<String, String>,
    /// `ns/name` -> IPv6 address.
    pub pod_ips6: BTreeMap<String, String>,
    /// The flow log (with `--flows`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<Value>>,
    /// Where the kept lab is (with `--keep`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptLab>,
    /// Present when any probe carried an expectation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectations: Option<Expectations>,
}

impl RunOutput {
    /// Whether some probe missed its expectation (`weir-lab run` exits 3).
    pub fn expectations_failed(&self) -> bool {
        self.expectations.is_some_and(|e| e.failed > 0)
    }
}

/// Counts the probes of `steps` that carried an expectation; None if none did.
pub fn count_expectations(steps: &[StepOutput]) -> Option<Expectations> {
    let mut e = Expectations::default();
    for p in steps.iter().flat_map(|s| &s.probes) {
        if p.expect.is_some() {
            e.checked += 1;
            if p.ok == Some(false) {
                e.failed += 1;
            }
        }
    }
    (e.checked > 0).then_some(e)
}

/// `step[i] "name"` for messages.
fn step_label(i: usize, step: &StepOutput) -> String {
    match &step.name {
        Some(n) => format!("steps[{i}] {n:?}"),
        None => format!("steps[{i}]"),
    }
}

/// What `weir-lab run` prints to stderr when expectations failed: each
/// wrong probe, then the truth table of each matrix with a wrong probe.
pub fn failure_report(output: &RunOutput) -> String {
    let mut out = String::new();
    for (i, step) in output.steps.iter().enumerate() {
        for p in step.probes.iter().filter(|p| p.ok == Some(false)) {
            let what = match p.protocol {
                Protocol::Icmp => "ICMP".to_string(),
                proto => format!("{}/{proto}", p.port),
            };
            let dst = p.dst.map(|d| format!(" ({d})")).unwrap_or_default();
            let got = match (&p.error, p.connected) {
                (Some(e), false) => format!("blocked ({e})"),
                (_, true) => format!("connected (reply {:?})", p.reply),
                (None, false) => "blocked".to_string(),
            };
            out.push_str(&format!(
                "{}: {} -> {}{dst} {what}: expected {}, got {got}\n",
                step_label(i, step),
                p.from,
                p.to,
                p.expect.map(|e| e.to_string()).unwrap_or_default(),
            ));
        }
        for (m, matrix) in step.matrix.iter().flatten().enumerate() {
            if matrix.failed == 0 {
                continue;
            }
            out.push_str(&format!(
                "{} matrix[{m}]: {} of {} probes not as expected (. as expected, X not, - self)\n{}\n",
                step_label(i, step),
                matrix.failed,
                matrix.checked,
                matrix.table
            ));
        }
    }
    if let Some(e) = output.expectations {
        out.push_str(&format!(
            "expectations: {} of {} probes not as expected\n",
            e.failed, e.checked
        ));
    }
    out
}

/// Runs `scenario` in a new lab.
pub async fn run(
    scenario: &Scenario,
    mut lab_options: LabOptions,
    opts: &RunOptions,
) -> Result<RunOutput, RunError> {
    scenario.validate()?;
    if let Some(ms) = scenario.timeout_ms {
        lab_options.probe_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = scenario.settle_ms {
        lab_options.settle = Duration::from_millis(ms);
    }
    let settle = lab_options.settle;
    let mut lab = Lab::start(lab_options).await?;
    let result = run_in(&mut lab, scenario).await;
    let mut output = match result {
        Ok(steps) => RunOutput {
            expectations: count_expectations(&steps),
            steps,
            pod_ips: ips_by_family(&lab.pod_ips(), Family::V4),
            pod_ips6: ips_by_family(&lab.pod_ips(), Family::V6),
            flows: None,
            kept: None,
        },
        Err(e) => {
            shut_down(lab, opts.keep).await;
            return Err(e);
        }
    };
    if opts.flows {
        // The agent writes flows shortly after the packets; give it time.
        tokio::time::sleep(settle).await;
        output.flows = Some(lab.flows()?);
    }
    if opts.keep {
        output.kept = Some(lab.keep()?);
    } else {
        lab.shutdown().await?;
    }
    Ok(output)
}

async fn shut_down(lab: Lab, keep: bool) {
    if keep {
        match lab.keep() {
            Ok(k) => {
                tracing::warn!(run_id = %k.run_id, dir = %k.dir.display(), "run failed; lab kept")
            }
            Err(e) => tracing::warn!(error = %e, "cannot mark the lab kept"),
        }
    } else if let Err(e) = lab.shutdown().await {
        tracing::warn!(error = %e, "lab clean-up incomplete");
    }
}

async fn run_in(lab: &mut Lab, scenario: &Scenario) -> Result<Vec<StepOutput>, RunError> {
    for ns in &scenario.namespaces {
        lab.add_namespace(ns.clone())?;
    }
    lab.add_pods(scenario.pods.clone()).await?;
    let mut steps = Vec::with_capacity(scenario.steps.len());
    for (s, step) in scenario.steps.iter().enumerate() {
        let docs = lab.resolve_placeholders(&step.apply, &format!("steps[{s}].apply"))?;
        // Labels first, then the desired state, then one settle.
        lab.set_state(&step.labels, &docs).await?;
        let matrices = scenario.matrices(s)?;
        let mut specs: Vec<ProbeSpec> = step
            .probes
            .iter()
            .map(|p| ProbeSpec {
                from: p.from.clone(),
                to: p.to.clone(),
                port: p.port,
                protocol: p.protocol,
                family: p.family,
                timeout: p.timeout_ms.map(Duration::from_millis),
            })
            .collect();
        let mut expects: Vec<Option<Expectation>> = step.probes.iter().map(|p| p.expect).collect();
        for m in &matrices {
            for p in m.probes() {
                specs.push(ProbeSpec {
                    from: p.from,
                    to: p.to,
                    port: p.port.port,
                    protocol: p.port.protocol,
                    family: m.family,
                    timeout: m.timeout_ms.map(Duration::from_millis),
                });
                expects.push(Some(p.expect));
            }
        }
        // Services exist only in the applied state: check them here, naming the field.
        for (p, probe) in step.probes.iter().enumerate() {
            if let Ok(Target::Service { namespace, name }) = Target::parse(&probe.to) {
                let ips = crate::manifests::service_ips(lab.applied(), &namespace, &name);
                let fits = ips.is_some_and(|ips| ips.iter().any(|ip| probe.family.matches(ip)));
                if !fits {
                    return Err(ScenarioError::Invalid {
                        field: format!("steps[{s}].probes[{p}].to"),
                        message: format!(
                            "no Service {namespace}/{name} with an IPv{} cluster IP in this step's apply",
                            u8::from(probe.family)
                        ),
                    }
                    .into());
                }
            }
        }
        // Explicit and matrix probes together: one step's probes run concurrently.
        let mut probes = lab.probe_all(&specs).await?;
        for (result, expect) in probes.iter_mut().zip(&expects) {
            if let Some(e) = expect {
                result.judge(*e);
            }
        }
        let matrix = (!matrices.is_empty()).then(|| {
            let mut at = step.probes.len();
            matrices
                .iter()
                .map(|m| {
                    let n = m.probes().len();
                    let judged = m.judge(&probes[at..at + n]);
                    at += n;
                    judged
                })
                .collect()
        });
        steps.push(StepOutput {
            name: step.name.clone(),
            probes,
            matrix,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Matrix, MatrixStep};

    fn probe(from: &str, to: &str, connected: bool) -> ProbeResult {
        ProbeResult {
            from: from.into(),
            to: to.into(),
            port: 80,
            protocol: Protocol::Tcp,
            connected,
            reply: if connected { "b".into() } else { String::new() },
            ms: 0.4,
            dst: Some("10.244.0.3".parse().unwrap()),
            error: (!connected).then(|| "timeout".to_string()),
            expect: None,
            ok: None,
        }
    }

    fn output(steps: Vec<StepOutput>) -> RunOutput {
        RunOutput {
            expectations: count_expectations(&steps),
            steps,
            pod_ips: BTreeMap::from([("x/a".into(), "10.244.0.2".into())]),
            pod_ips6: BTreeMap::new(),
            flows: None,
            kept: None,
        }
    }

    #[test]
    fn output_without_expectations_is_the_old_shape_byte_for_byte() {
        let out = output(vec![StepOutput {
            name: None,
            probes: vec![probe("x/a", "x/b", true)],
            matrix: None,
        }]);
        assert_eq!(out.expectations, None);
        assert!(!out.expectations_failed());
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"steps":[{"probes":[{"from":"x/a","to":"x/b","port":80,"protocol":"TCP","connected":true,"reply":"b","ms":0.4,"dst":"10.244.0.3"}]}],"pod_ips":{"x/a":"10.244.0.2"},"pod_ips6":{}}"#
        );
    }

    #[test]
    fn expectations_are_counted_reported_and_added_as_keys() {
        let mut good = probe("x/a", "x/b", true);
        good.judge(Expectation::Connected);
        let mut bad = probe("x/b", "x/a", true);
        bad.judge(Expectation::Blocked);
        let mut bad_too = probe("x/a", "x/c", false);
        bad_too.judge(Expectation::Connected);
        let raw: MatrixStep = serde_saphyr::from_str("{ports: [80/TCP], to: [x/a]}").unwrap();
        let keys = vec!["x/a".to_string(), "x/b".to_string()];
        let matrix = Matrix::compile(&raw, &keys, "m").unwrap();
        let judged = matrix.judge(&[bad.clone()]);
        let out = output(vec![
            StepOutput {
                name: Some("first".into()),
                probes: vec![good.clone(), probe("x/a", "x/b", false)],
                matrix: None,
            },
            StepOutput {
                name: None,
                probes: vec![bad_too, bad],
                matrix: Some(vec![judged]),
            },
        ]);
        assert_eq!(
            out.expectations,
            Some(Expectations {
                checked: 3,
                failed: 2
            })
        );
        assert!(out.expectations_failed());
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["steps"][0]["probes"][0]["expect"], "connected");
        assert_eq!(json["steps"][0]["probes"][0]["ok"], true);
        assert!(json["steps"][0]["probes"][1].get("ok").is_none());
        assert!(json["steps"][0].get("matrix").is_none());
        assert_eq!(
            json["steps"][1]["matrix"][0]["failed"], 0,
            "x/b -> x/a is connected as the matrix expects"
        );
        assert_eq!(
            json["expectations"],
            serde_json::json!({"checked": 3, "failed": 2})
        );
        let report = failure_report(&out);
        assert!(
            report.contains("steps[1]: x/b -> x/a (10.244.0.3) 80/TCP: expected blocked, got connected (reply \"b\")"),
            "{report}"
        );
        assert!(
            report.contains("steps[1]: x/a -> x/c (10.244.0.3) 80/TCP: expected connected, got blocked (timeout)"),
            "{report}"
        );
        assert!(
            !report.contains("first"),
            "nothing wrong in the first step: {report}"
        );
        assert!(
            !report.contains("matrix[0]"),
            "no wrong matrix probe: {report}"
        );
        assert!(
            report.ends_with("expectations: 2 of 3 probes not as expected\n"),
            "{report}"
        );
    }
}
