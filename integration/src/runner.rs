//! `weir-lab run`: builds the lab a scenario describes, runs its steps, and
//! returns the results in the documented output shape (an interface: add
//! keys only; see README.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::lab::{KeptLab, Lab, LabError, LabOptions};
use crate::probe::{ProbeResult, ProbeSpec};
use crate::scenario::{Scenario, ScenarioError, Target, ips_by_family};
use crate::spec::Family;

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
    pub probes: Vec<ProbeResult>,
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
        lab.apply(&docs).await?;
        let specs: Vec<ProbeSpec> = step
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
        let probes = lab.probe_all(&specs).await?;
        steps.push(StepOutput {
            name: step.name.clone(),
            probes,
        });
    }
    Ok(steps)
}
