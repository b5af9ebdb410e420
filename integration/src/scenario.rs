//! The scenario file format of `weir-lab run` (an interface other test suites
//! are written against: extend it only compatibly; see README.md), its
//! validation, and the `${ip:..}` / `${net:..}` placeholders of `apply`.
//!
//! Pure: parsing and checking only, no namespaces or processes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::matrix::{Matrix, MatrixStep};
use crate::spec::{
    Expectation, Family, NamespaceSpec, PodSpec, Protocol, is_dns_label, split_pod_key,
};

/// Errors in a scenario: each names the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is not YAML of the scenario's shape.
    #[error("scenario is not valid: {source}")]
    Yaml {
        #[source]
        source: serde_saphyr::Error,
    },
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A field has a value the lab cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `steps[1].probes[0].from`.
        field: String,
        message: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A scenario: the lab to build and the steps to run in it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Default probe timeout in milliseconds for every probe (default 1000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Time in milliseconds given to the agent to pick up changed manifests
    /// before a step's probes run (default: the lab's, 1000).
    #[serde(default)]
    pub settle_ms: Option<u64>,
}

/// One step: label changes and the desired state, then probes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Optional label, echoed in the output.
    #[serde(default)]
    pub name: Option<String>,
    /// `ns/pod` or `ns` -> that object's complete new label set, applied
    /// live (manifests rewritten, pods not recreated) before `apply`.
    #[serde(default)]
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Full manifests making up this step's desired state (replacing the
    /// previous step's), with placeholders.
    #[serde(default)]
    pub apply: Vec<Value>,
    #[serde(default)]
    pub probes: Vec<ProbeStep>,
    /// Probe matrices, run after (and appended to) `probes`.
    #[serde(default)]
    pub matrix: Vec<MatrixStep>,
}

/// A probe as written in a scenario.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStep {
    /// Source pod, `ns/name`.
    pub from: String,
    /// Destination: a pod `ns/name`, a service `svc:ns/name`, or an IP.
    pub to: String,
    /// Destination port (ignored for ICMP).
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// IP family used to reach a pod or a service (4 or 6; default 4);
    /// ignored when `to` is an address.
    #[serde(default)]
    pub family: Family,
    /// This probe's timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What the probe must find; a run where it does not exits with 3.
    #[serde(default)]
    pub expect: Option<Expectation>,
}

/// Destination of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A pod of the lab, `ns/name`.
    Pod(String),
    /// A Service from the current desired state, `svc:ns/name`.
    Service { namespace: String, name: String },
    /// A literal address.
    Ip(IpAddr),
}

impl Target {
    /// Parses a `to:` value; the error says what forms are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(svc) = s.strip_prefix("svc:") {
            let (ns, name) = split_pod_key(svc)
                .ok_or_else(|| format!("{s:?}: a service is written svc:NAMESPACE/NAME"))?;
            return Ok(Target::Service {
                namespace: ns.to_string(),
                name: name.to_string(),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        if split_pod_key(s).is_some() {
            return Ok(Target::Pod(s.to_string()));
        }
        Err(format!(
            "{s:?} is neither a pod (NAMESPACE/NAME), a service (svc:NAMESPACE/NAME) nor an IP address"
        ))
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    pub fn parse(yaml: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario =
            // YAML 1.2 booleans only: a namespace called `y` stays a string
            // inside `apply` documents, which are untyped.
            serde_saphyr::from_str_with_options(
                yaml,
                serde_saphyr::options! { strict_booleans: true },
            )
            .map_err(|source| ScenarioError::Yaml { source })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates the scenario file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Checks everything that can be checked before the lab exists.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut namespaces = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let field = format!("namespaces[{i}].name");
            if !is_dns_label(&ns.name) {
                return Err(invalid(
                    field,
                    format!("{:?} is not a valid namespace name (DNS label)", ns.name),
                ));
            }
            if !namespaces.insert(ns.name.as_str()) {
                return Err(invalid(
                    field,
                    format!("namespace {:?} is declared twice", ns.name),
                ));
            }
        }
        let mut pods = BTreeSet::new();
        for (i, pod) in self.pods.iter().enumerate() {
            if !namespaces.contains(pod.namespace.as_str()) {
                return Err(invalid(
                    format!("pods[{i}].namespace"),
                    format!(
                        "namespace {:?} is not declared under namespaces",
                        pod.namespace
                    ),
                ));
            }
            if !is_dns_label(&pod.name) {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!("{:?} is not a valid pod name (DNS label)", pod.name),
                ));
            }
            if !pods.insert(pod.key()) {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!("pod {} is declared twice", pod.key()),
                ));
            }
            validate_ports(pod, &format!("pods[{i}].ports"))?;
        }
        validate_host_ports(&self.pods)?;
        let known = |key: &str| pods.contains(key);
        let keys = self.pod_keys();
        for (s, step) in self.steps.iter().enumerate() {
            for target in step.labels.keys() {
                let field = format!("steps[{s}].labels.{target}");
                if split_pod_key(target).is_some() {
                    if !known(target) {
                        return Err(invalid(field, format!("unknown pod {target:?}")));
                    }
                } else if !namespaces.contains(target.as_str()) {
                    return Err(invalid(
                        field,
                        format!(
                            "{target:?} is neither a declared pod (NAMESPACE/NAME) nor a declared namespace"
                        ),
                    ));
                }
            }
            for (m, matrix) in step.matrix.iter().enumerate() {
                Matrix::compile(matrix, &keys, &format!("steps[{s}].matrix[{m}]"))?;
            }
            for (a, doc) in step.apply.iter().enumerate() {
                check_placeholders(doc, &format!("steps[{s}].apply[{a}]"), &known)?;
            }
            for (p, probe) in step.probes.iter().enumerate() {
                let field = format!("steps[{s}].probes[{p}]");
                if !known(&probe.from) {
                    return Err(invalid(
                        format!("{field}.from"),
                        format!("unknown pod {:?} (pods are NAMESPACE/NAME)", probe.from),
                    ));
                }
                match Target::parse(&probe.to).map_err(|m| invalid(format!("{field}.to"), m))? {
                    Target::Pod(key) if !known(&key) => {
                        return Err(invalid(
                            format!("{field}.to"),
                            format!("unknown pod {key:?}"),
                        ));
                    }
                    _ => {}
                }
                if probe.protocol != Protocol::Icmp && probe.port == 0 {
                    return Err(invalid(
                        format!("{field}.port"),
                        format!("a {} probe needs a port (1-65535)", probe.protocol),
                    ));
                }
                if probe.timeout_ms == Some(0) {
                    return Err(invalid(
                        format!("{field}.timeout_ms"),
                        "must be greater than 0",
                    ));
                }
            }
        }
        if self.timeout_ms == Some(0) {
            return Err(invalid("timeout_ms", "must be greater than 0"));
        }
        Ok(())
    }

    /// The pods' keys (`ns/name`), sorted: the order of matrix probes and
    /// of truth tables.
    pub fn pod_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.pods.iter().map(PodSpec::key).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The matrices of step `s`, checked (see [`Matrix::compile`]).
    pub fn matrices(&self, s: usize) -> Result<Vec<Matrix>, ScenarioError> {
        let keys = self.pod_keys();
        self.steps
            .get(s)
            .map(|step| step.matrix.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(m, raw)| Matrix::compile(raw, &keys, &format!("steps[{s}].matrix[{m}]")))
            .collect()
    }
}

/// hostNetwork pods share the node's ports: no two may declare the same
/// port and protocol.
pub fn validate_host_ports(pods: &[PodSpec]) -> Result<(), ScenarioError> {
    let mut owner: BTreeMap<(u16, Protocol), String> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        if !pod.host_network {
            continue;
        }
        for (j, port) in pod.ports.iter().enumerate() {
            if let Some(other) = owner.insert((port.port, port.protocol), pod.key()) {
                return Err(invalid(
                    format!("pods[{i}].ports[{j}].port"),
                    format!(
                        "{}/{} is already served by hostNetwork pod {other} (hostNetwork pods share the node's ports)",
                        port.port, port.protocol
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks the ports of one pod; `field` is the path of its `ports`.
pub fn validate_ports(pod: &PodSpec, field: &str) -> Result<(), ScenarioError> {
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (j, port) in pod.ports.iter().enumerate() {
        let f = format!("{field}[{j}]");
        if port.port == 0 {
            return Err(invalid(format!("{f}.port"), "port must be 1-65535"));
        }
        if port.protocol == Protocol::Icmp {
            return Err(invalid(
                format!("{f}.protocol"),
                "a server port is TCP or UDP",
            ));
        }
        if !seen.insert((port.port, port.protocol)) {
            return Err(invalid(
                format!("{f}.port"),
                format!("{}/{} is declared twice", port.port, port.protocol),
            ));
        }
        if let Some(name) = &port.name {
            if name.is_empty() || name.len() > 15 || !is_dns_label(name) {
                return Err(invalid(
                    format!("{f}.name"),
                    format!("{name:?} is not a valid port name (lowercase, at most 15 characters)"),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(invalid(
                    format!("{f}.name"),
                    format!("port name {name:?} is used twice"),
                ));
            }
        }
    }
    Ok(())
}

/// One `${...}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// `${ip:ns/pod}` (IPv4) or `${ip6:ns/pod}` (IPv6): the pod's address.
    Ip { pod: String, family: Family },
    /// `${net:ns/pod/len}` (IPv4) or `${net6:ns/pod/len}` (IPv6): the
    /// network of that prefix length containing the pod's address, as CIDR.
    Net {
        pod: String,
        family: Family,
        prefix: u8,
    },
}

impl Placeholder {
    fn parse(inner: &str) -> Result<Self, String> {
        let (kind, arg) = inner
            .split_once(':')
            .ok_or_else(|| format!("placeholder ${{{inner}}} needs KIND:ARGUMENT"))?;
        let pod_of = |a: &str| -> Result<String, String> {
            split_pod_key(a)
                .map(|_| a.to_string())
                .ok_or_else(|| format!("placeholder ${{{inner}}}: {a:?} is not NAMESPACE/POD"))
        };
        match kind {
            "ip" | "ip6" => Ok(Placeholder::Ip {
                pod: pod_of(arg)?,
                family: if kind == "ip" { Family::V4 } else { Family::V6 },
            }),
            "net" | "net6" => {
                let family = if kind == "net" {
                    Family::V4
                } else {
                    Family::V6
                };
                let max = if family == Family::V4 { 32 } else { 128 };
                let (pod, len) = arg.rsplit_once('/').ok_or_else(|| {
                    format!(
                        "placeholder ${{{inner}}} is written ${{{kind}:NAMESPACE/POD/PREFIXLEN}}"
                    )
                })?;
                let prefix = len
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| {
                        format!("placeholder ${{{inner}}}: prefix length {len:?} is not 0-{max}")
                    })?;
                Ok(Placeholder::Net {
                    pod: pod_of(pod)?,
                    family,
                    prefix,
                })
            }
            other => Err(format!(
                "unknown placeholder kind {other:?} in ${{{inner}}} (known: ip, ip6, net, net6)"
            )),
        }
    }

    /// The pod this placeholder refers to.
    pub fn pod(&self) -> &str {
        match self {
            Placeholder::Ip { pod, .. } | Placeholder::Net { pod, .. } => pod,
        }
    }

    fn family(&self) -> Family {
        match self {
            Placeholder::Ip { family, .. } | Placeholder::Net { family, .. } => *family,
        }
    }

    /// The text replacing this placeholder, given the pod's address.
    pub fn render(&self, ip: IpAddr) -> String {
        match self {
            Placeholder::Ip { .. } => ip.to_string(),
            Placeholder::Net { prefix, .. } => {
                let net = ipnetwork::IpNetwork::new(ip, *prefix)
                    .expect("prefix length checked against the family at parse time");
                format!("{}/{}", net.network(), prefix)
            }
        }
    }
}

/// Replaces the placeholders in `s`, asking `lookup` for pod addresses.
fn substitute_str(
    s: &str,
    field: &str,
    lookup: &mut dyn FnMut(&str, Family) -> Option<IpAddr>,
) -> Result<String, ScenarioError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| invalid(field, format!("unterminated placeholder in {s:?}")))?;
        let ph = Placeholder::parse(&after[..end]).map_err(|m| invalid(field, m))?;
        let ip = lookup(ph.pod(), ph.family()).ok_or_else(|| {
            invalid(
                field,
                format!(
                    "placeholder ${{{}}}: pod {:?} has no IPv{} address",
                    &after[..end],
                    ph.pod(),
                    u8::from(ph.family())
                ),
            )
        })?;
        out.push_str(&ph.render(ip));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every placeholder in the strings (values and keys) of `doc`.
/// `field` names `doc` in errors; `lookup` gives a pod's address.
pub fn substitute(
    doc: &Value,
    field: &str,
    lookup: &mut dyn FnMut(&str, Family) -> Option<IpAddr>,
) -> Result<Value, ScenarioError> {
    Ok(match doc {
        Value::String(s) => Value::String(substitute_str(s, field, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| substitute(v, &format!("{field}[{i}]"), lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let f = format!("{field}.{k}");
                out.insert(substitute_str(k, &f, lookup)?, substitute(v, &f, lookup)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Checks the placeholders of `doc` refer to known pods and are well formed,
/// without addresses (before the lab exists).
pub fn check_placeholders(
    doc: &Value,
    field: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<(), ScenarioError> {
    let mut unknown: Option<String> = None;
    // A stand-in address lets the same code path check syntax and prefix lengths.
    let mut lookup = |pod: &str, family: Family| {
        if !known(pod) {
            unknown.get_or_insert_with(|| pod.to_string());
            return None;
        }
        Some(match family {
            Family::V4 => IpAddr::from([10, 0, 0, 1]),
            Family::V6 => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
        })
    };
    match substitute(doc, field, &mut lookup) {
        Ok(_) => Ok(()),
        Err(ScenarioError::Invalid { field, .. }) if unknown.is_some() => Err(invalid(
            field,
            format!(
                "placeholder refers to unknown pod {:?}",
                unknown.unwrap_or_default()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Pod IPs as printed under `pod_ips` (IPv4) and `pod_ips6` (IPv6).
pub fn ips_by_family(
    ips: &BTreeMap<String, Vec<IpAddr>>,
    family: Family,
) -> BTreeMap<String, String> {
    ips.iter()
        .filter_map(|(k, v)| {
            v.iter()
                .find(|ip| family.matches(ip))
                .map(|ip| (k.clone(), ip.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
namespaces:
  - {name: x, labels: {team: a}}
  - {name: y}
pods:
  - namespace: x
    name: a
    labels: {pod: a}
    ports:
      - {name: serve-80-tcp, port: 80, protocol: TCP}
      - {name: serve-80-udp, port: 80, protocol: UDP}
  - {namespace: y, name: b, ports: [{port: 81}]}
steps:
  - apply: []
    probes:
      - {from: x/a, to: y/b, port: 81, protocol: TCP}
      - {from: y/b, to: x/a, port: 80, protocol: UDP, timeout_ms: 300}
  - name: second
    apply:
      - kind: NetworkPolicy
        spec: {ingress: [{from: [{ipBlock: {cidr: "${net:y/b/24}"}}]}]}
    probes:
      - {from: x/a, to: 10.1.2.3, port: 80}
      - {from: x/a, to: "svc:y/web", port: 80, family: 6}
      - {from: x/a, to: y/b, protocol: ICMP}
"#;

    fn field_of(err: ScenarioError) -> String {
        match err {
            ScenarioError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn parses_the_documented_format() {
        let s = Scenario::parse(GOOD).expect("valid scenario");
        assert_eq!(s.namespaces.len(), 2);
        assert_eq!(s.namespaces[0].labels["team"], "a");
        assert_eq!(s.pods[0].ports[1].protocol, Protocol::Udp);
        assert_eq!(
            s.pods[1].ports[0].protocol,
            Protocol::Tcp,
            "TCP is the default"
        );
        assert_eq!(s.steps[0].probes[1].timeout_ms, Some(300));
        assert_eq!(s.steps[1].name.as_deref(), Some("second"));
        assert_eq!(s.steps[1].probes[1].family, Family::V6);
        assert_eq!(s.steps[1].probes[2].protocol, Protocol::Icmp);
        assert_eq!(s.steps[1].apply[0]["kind"], "NetworkPolicy");
    }

    #[test]
    fn unknown_pod_in_a_probe_names_the_field() {
        let bad = GOOD.replace(
            "{from: x/a, to: y/b, port: 81",
            "{from: x/zz, to: y/b, port: 81",
        );
        let err = Scenario::parse(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x/zz"), "{msg}");
        assert_eq!(field_of(err), "steps[0].probes[0].from");
        let bad = GOOD.replace("to: y/b, port: 81", "to: y/nope, port: 81");
        assert_eq!(
            field_of(Scenario::parse(&bad).unwrap_err()),
            "steps[0].probes[0].to"
        );
    }

    #[test]
    fn unknown_field_and_bad_yaml_are_reported() {
        let err = Scenario::parse("pods:\n  - {namespace: x, name: a, prots: []}\n").unwrap_err();
        assert!(matches!(err, ScenarioError::Yaml { .. }));
        assert!(err.to_string().contains("prots"), "{err}");
        let err = Scenario::parse("steps: [\n").unwrap_err();
        assert!(matches!(err, ScenarioError::Yaml { .. }), "{err}");
        let err = Scenario::parse(
            "pods:\n  - {namespace: x, name: a, ports: [{port: 80, protocol: SCTP}]}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("SCTP"), "{err}");
    }

    #[test]
    fn structural_errors_name_their_field() {
        let cases = [
            ("namespaces: [{name: x}, {name: x}]", "namespaces[1].name"),
            ("namespaces: [{name: X_Y}]", "namespaces[0].name"),
            ("pods: [{namespace: nope, name: a}]", "pods[0].namespace"),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80}, {port: 80}]}]",
                "pods[0].ports[1].port",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80, name: this-name-is-too-long}]}]",
                "pods[0].ports[0].name",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\nsteps: [{probes: [{from: x/a, to: x/a}]}]",
                "steps[0].probes[0].port",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\nsteps: [{probes: [{from: x/a, to: 'a b', port: 1}]}]",
                "steps[0].probes[0].to",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\nsteps: [{apply: [{spec: {cidr: '${net:x/a/33}'}}]}]",
                "steps[0].apply[0].spec.cidr",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\nsteps: [{apply: [{spec: {ip: '${ip:x/b}'}}]}]",
                "steps[0].apply[0].spec.ip",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a}]\nsteps: [{apply: [{list: ['${pi:x/a}']}]}]",
                "steps[0].apply[0].list[0]",
            ),
        ];
        for (yaml, field) in cases {
            let err = Scenario::parse(yaml).expect_err(yaml);
            assert_eq!(field_of(err), field, "for {yaml}");
        }
    }

    fn lookup(pod: &str, family: Family) -> Option<IpAddr> {
        match (pod, family) {
            ("x/a", Family::V4) => Some("10.244.0.7".parse().unwrap()),
            ("x/a", Family::V6) => Some("fd00:10:244::7".parse().unwrap()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_ips_and_canonical_networks() {
        let doc = serde_json::json!({
            "ip": "${ip:x/a}",
            "cidr": "${ip:x/a}/32",
            "net24": "${net:x/a/24}",
            "net4": "${net:x/a/4}",
            "net0": "${net:x/a/0}",
            "ip6": "${ip6:x/a}",
            "net6": "${net6:x/a/64}",
            "list": ["from ${ip:x/a} to ${net:x/a/16}", 5, true],
            "${ip:x/a}": "keys too"
        });
        let out = substitute(&doc, "apply[0]", &mut lookup).unwrap();
        assert_eq!(out["ip"], "10.244.0.7");
        assert_eq!(out["cidr"], "10.244.0.7/32");
        assert_eq!(out["net24"], "10.244.0.0/24");
        assert_eq!(out["net4"], "0.0.0.0/4");
        assert_eq!(out["net0"], "0.0.0.0/0");
        assert_eq!(out["ip6"], "fd00:10:244::7");
        assert_eq!(out["net6"], "fd00:10:244::/64");
        assert_eq!(out["list"][0], "from 10.244.0.7 to 10.244.0.0/16");
        assert_eq!(out["list"][1], 5);
        assert_eq!(out["10.244.0.7"], "keys too");
    }

    #[test]
    fn substitution_errors_name_the_field() {
        let doc = serde_json::json!({"spec": {"peers": ["${ip:x/b}"]}});
        let err = substitute(&doc, "steps[2].apply[1]", &mut lookup).unwrap_err();
        assert_eq!(field_of(err), "steps[2].apply[1].spec.peers[0]");
        let doc = serde_json::json!({"a": "${ip:x/a"});
        let err = substitute(&doc, "apply[0]", &mut lookup).unwrap_err();
        assert!(err.to_string().contains("unterminated"), "{err}");
    }

    const NETPOL: &str = r#"
namespaces:
  - {name: x, labels: {ns: x}}
  - {name: y, labels: {ns: y}}
pods:
  - {namespace: x, name: a, labels: {pod: a}, ports: [{port: 80}]}
  - {namespace: x, name: b, labels: {pod: b}, ports: [{port: 80}]}
  - {namespace: y, name: h, hostNetwork: true, ports: [{port: 8080}]}
steps:
  - name: relabel
    labels:
      x/a: {pod: a, new: "yes"}
      y: {ns: y}
    probes:
      - {from: x/a, to: x/b, port: 80, expect: blocked}
      - {from: y/h, to: x/b, port: 80, expect: connected}
    matrix:
      - ports: [80/TCP, 8080/tcp]
        from: ["x/*"]
        to: ["*"]
        family: 6
        timeout_ms: 300
        default: blocked
        expect:
          - {from: "*", to: x/a, result: connected}
          - {from: x/b, to: x/a, port: 80/TCP, result: blocked}
"#;

    #[test]
    fn parses_labels_expectations_matrices_and_host_network_pods() {
        let s = Scenario::parse(NETPOL).expect("valid scenario");
        assert!(s.pods[2].host_network && !s.pods[0].host_network);
        let step = &s.steps[0];
        assert_eq!(step.labels["x/a"]["new"], "yes");
        assert_eq!(step.labels["y"].len(), 1);
        assert_eq!(step.probes[0].expect, Some(Expectation::Blocked));
        assert_eq!(step.probes[1].expect, Some(Expectation::Connected));
        assert_eq!(s.pod_keys(), vec!["x/a", "x/b", "y/h"]);
        let m = &s.matrices(0).unwrap()[0];
        assert_eq!(m.family, Family::V6);
        assert_eq!(m.timeout_ms, Some(300));
        assert_eq!(m.ports[1].to_string(), "8080/TCP");
        // x/a -> x/b, x/a -> y/h, x/b -> x/a, x/b -> y/h; two ports each.
        let probes = m.probes();
        assert_eq!(probes.len(), 8);
        let expect = |from: &str, to: &str, port: &str| {
            probes
                .iter()
                .find(|p| p.from == from && p.to == to && p.port.to_string() == port)
                .unwrap()
                .expect
        };
        assert_eq!(expect("x/a", "x/b", "80/TCP"), Expectation::Blocked);
        assert_eq!(expect("x/b", "x/a", "8080/TCP"), Expectation::Connected);
        assert_eq!(expect("x/b", "x/a", "80/TCP"), Expectation::Blocked);
        // Without the new keys a step is what it always was.
        let old = Scenario::parse(GOOD).unwrap();
        assert!(
            old.steps
                .iter()
                .all(|s| s.labels.is_empty() && s.matrix.is_empty())
        );
        assert!(old.steps[0].probes.iter().all(|p| p.expect.is_none()));
    }

    #[test]
    fn new_fields_name_the_field_in_errors() {
        let cases = [
            (
                NETPOL.replace("x/a: {pod: a, new", "x/zz: {pod: a, new"),
                "steps[0].labels.x/zz",
            ),
            (NETPOL.replace("y: {ns: y}", "q: {ns: y}"), "steps[0].labels.q"),
            (
                NETPOL.replace("from: [\"x/*\"]", "from: [\"q/*\"]"),
                "steps[0].matrix[0].from[0]",
            ),
            (
                NETPOL.replace("{from: x/b, to: x/a, port", "{from: x/b, to: \"z/*\", port"),
                "steps[0].matrix[0].expect[1].to",
            ),
            (
                NETPOL.replace("ports: [80/TCP, 8080/tcp]", "ports: [80/SCTP]"),
                "steps[0].matrix[0].ports[0]",
            ),
            (
                NETPOL.replace("{port: 8080}]}", "{port: 8080}]}\n  - {namespace: y, name: g, hostNetwork: true, ports: [{port: 81}, {port: 8080}]}"),
                "pods[3].ports[1].port",
            ),
        ];
        for (yaml, field) in cases {
            let err = Scenario::parse(&yaml).expect_err(field);
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
        }
        // Two regular pods may use the same port; a regular and a hostNetwork one too.
        let ok = NETPOL.replace(
            "{port: 8080}]}",
            "{port: 8080}]}\n  - {namespace: y, name: g, ports: [{port: 8080}]}",
        );
        Scenario::parse(&ok).expect("only hostNetwork pods share the node's ports");
        for bad in [
            NETPOL.replace("expect: blocked}", "expect: dropped}"),
            NETPOL.replace("default: blocked", "default: maybe"),
            NETPOL.replace("timeout_ms: 300", "timeout: 300"),
            NETPOL.replace("hostNetwork: true", "host_network: true"),
        ] {
            let err = Scenario::parse(&bad).expect_err("closed vocabularies and unknown keys");
            assert!(matches!(err, ScenarioError::Yaml { .. }), "{err}");
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("x/a"), Ok(Target::Pod("x/a".into())));
        assert_eq!(
            Target::parse("svc:x/web"),
            Ok(Target::Service {
                namespace: "x".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            Target::parse("fd00::1"),
            Ok(Target::Ip("fd00::1".parse().unwrap()))
        );
        assert!(Target::parse("svc:web").is_err());
        assert!(Target::parse("x/a/b").is_err());
    }
}
