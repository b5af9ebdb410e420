//! Probe matrices of `weir-lab run` scenarios: every ordered pair of lab
//! pods (self excluded) on a list of ports, each with an expected result
//! (a default, then ordered overrides where a later match wins, as upstream's
//! e2e `Reachability.ExpectPeer` calls), expanded into probes and judged into
//! truth tables.
//!
//! Pure: pod patterns, expansion, judging and rendering. It never runs a
//! probe; the runner does, in the order [`Matrix::probes`] gives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probe::ProbeResult;
use crate::scenario::{ScenarioError, invalid};
use crate::spec::{Expectation, Family, PortProto, is_dns_label};

/// A pattern over pod keys (`ns/name`): `*` (or `*/*`), `NS/*`, `*/POD`,
/// or `NS/POD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPattern {
    /// Every pod.
    Any,
    /// Every pod of one namespace.
    Namespace(String),
    /// Pods of this name in every namespace.
    Name(String),
    /// One pod, `ns/name`.
    Pod(String),
}

impl PodPattern {
    /// Parses a pattern; the error says which forms exist.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a pod pattern (*, NS/*, */POD or NS/POD)");
        if s == "*" {
            return Ok(PodPattern::Any);
        }
        let (ns, name) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| p == "*" || is_dns_label(p);
        if !part(ns) || !part(name) {
            return Err(bad());
        }
        Ok(match (ns, name) {
            ("*", "*") => PodPattern::Any,
            ("*", name) => PodPattern::Name(name.to_string()),
            (ns, "*") => PodPattern::Namespace(ns.to_string()),
            _ => PodPattern::Pod(s.to_string()),
        })
    }

    /// Whether the pod `key` (`ns/name`) matches.
    pub fn matches(&self, key: &str) -> bool {
        let (ns, name) = key.split_once('/').unwrap_or((key, ""));
        match self {
            PodPattern::Any => true,
            PodPattern::Namespace(n) => n == ns,
            PodPattern::Name(n) => n == name,
            PodPattern::Pod(k) => k == key,
        }
    }
}

/// One `matrix:` entry of a step, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixStep {
    /// `PORT/PROTO` entries, e.g. `80/TCP`; at least one.
    pub ports: Vec<String>,
    /// Source pod patterns; None: every pod.
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// Destination pod patterns; None: every pod.
    #[serde(default)]
    pub to: Option<Vec<String>>,
    /// Which address of the destination (4 or 6; default 4).
    #[serde(default)]
    pub family: Family,
    /// Timeout of each probe; None: the scenario's.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The expectation of a pair no override matches (default `connected`).
    #[serde(default)]
    pub default: Option<Expectation>,
    /// Overrides in order; a later match wins.
    #[serde(default)]
    pub expect: Vec<ExpectRule>,
}

/// One override of a matrix's expectations, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRule {
    /// Source pod pattern.
    pub from: String,
    /// Destination pod pattern.
    pub to: String,
    /// Only this `PORT/PROTO` of the matrix; None: all of them.
    #[serde(default)]
    pub port: Option<String>,
    pub result: Expectation,
}

/// An override, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    from: PodPattern,
    to: PodPattern,
    port: Option<PortProto>,
    result: Expectation,
}

impl Rule {
    fn applies(&self, from: &str, to: &str, port: PortProto) -> bool {
        self.from.matches(from) && self.to.matches(to) && self.port.is_none_or(|p| p == port)
    }
}

/// A matrix checked against the lab's pods: what to probe and what to expect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub ports: Vec<PortProto>,
    /// Source pods, in key order.
    pub froms: Vec<String>,
    /// Destination pods, in key order.
    pub tos: Vec<String>,
    pub family: Family,
    pub timeout_ms: Option<u64>,
    pub default: Expectation,
    rules: Vec<Rule>,
}

/// One probe of a matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixProbe {
    pub from: String,
    pub to: String,
    pub port: PortProto,
    pub expect: Expectation,
}

/// A matrix's summary in `weir-lab run`'s output (an interface: add keys only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixOutput {
    /// The ports, as `PORT/PROTO` with the protocol upper-case.
    pub ports: Vec<String>,
    /// Probes judged.
    pub checked: usize,
    /// Probes whose result was not the expected one.
    pub failed: usize,
    /// One truth table per port: rows from, columns to; `.` as expected,
    /// `X` not, `-` not probed (self).
    pub table: String,
}

/// Pods (of `pods`, in that order) matching any of `patterns`; every pattern
/// must match at least one pod. None: all pods.
fn select(
    patterns: Option<&[String]>,
    pods: &[String],
    field: &str,
) -> Result<Vec<String>, ScenarioError> {
    let Some(patterns) = patterns else {
        return Ok(pods.to_vec());
    };
    if patterns.is_empty() {
        return Err(invalid(
            field,
            "an empty list selects nothing (leave it out for every pod)",
        ));
    }
    let mut parsed = Vec::with_capacity(patterns.len());
    for (i, p) in patterns.iter().enumerate() {
        let pat = PodPattern::parse(p).map_err(|m| invalid(format!("{field}[{i}]"), m))?;
        if !pods.iter().any(|k| pat.matches(k)) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("{p:?} matches no pod"),
            ));
        }
        parsed.push(pat);
    }
    Ok(pods
        .iter()
        .filter(|k| parsed.iter().any(|p| p.matches(k)))
        .cloned()
        .collect())
}

impl Matrix {
    /// Checks `raw` against the lab's pods (`pods`, keys in the order probes
    /// and tables use); errors name the field under `field`
    /// (e.g. `steps[2].matrix[0]`).
    pub fn compile(raw: &MatrixStep, pods: &[String], field: &str) -> Result<Self, ScenarioError> {
        if raw.ports.is_empty() {
            return Err(invalid(
                format!("{field}.ports"),
                "needs at least one PORT/PROTO",
            ));
        }
        let mut ports = Vec::with_capacity(raw.ports.len());
        for (i, p) in raw.ports.iter().enumerate() {
            let pp = PortProto::parse(p).map_err(|m| invalid(format!("{field}.ports[{i}]"), m))?;
            if ports.contains(&pp) {
                return Err(invalid(
                    format!("{field}.ports[{i}]"),
                    format!("{pp} is listed twice"),
                ));
            }
            ports.push(pp);
        }
        if raw.timeout_ms == Some(0) {
            return Err(invalid(
                format!("{field}.timeout_ms"),
                "must be greater than 0",
            ));
        }
        let froms = select(raw.from.as_deref(), pods, &format!("{field}.from"))?;
        let tos = select(raw.to.as_deref(), pods, &format!("{field}.to"))?;
        let mut matrix = Matrix {
            ports,
            froms,
            tos,
            family: raw.family,
            timeout_ms: raw.timeout_ms,
            default: raw.default.unwrap_or(Expectation::Connected),
            rules: Vec::with_capacity(raw.expect.len()),
        };
        if matrix.pairs().next().is_none() {
            return Err(invalid(
                field,
                "no pair of different pods to probe (self is never probed)",
            ));
        }
        for (i, e) in raw.expect.iter().enumerate() {
            let f = format!("{field}.expect[{i}]");
            let pattern = |s: &str, which: &str| {
                let pat = PodPattern::parse(s).map_err(|m| invalid(format!("{f}.{which}"), m))?;
                if pods.iter().any(|k| pat.matches(k)) {
                    Ok(pat)
                } else {
                    Err(invalid(
                        format!("{f}.{which}"),
                        format!("{s:?} matches no pod"),
                    ))
                }
            };
            let from = pattern(&e.from, "from")?;
            let to = pattern(&e.to, "to")?;
            let port = match &e.port {
                None => None,
                Some(p) => {
                    let pp = PortProto::parse(p).map_err(|m| invalid(format!("{f}.port"), m))?;
                    if !matrix.ports.contains(&pp) {
                        return Err(invalid(
                            format!("{f}.port"),
                            format!("{pp} is not one of this matrix's ports"),
                        ));
                    }
                    Some(pp)
                }
            };
            let rule = Rule {
                from,
                to,
                port,
                result: e.result,
            };
            // An override that selects nothing is a typo, not a no-op.
            let used = matrix.pairs().any(|(from, to)| {
                matrix
                    .ports
                    .iter()
                    .any(|port| rule.applies(from, to, *port))
            });
            if !used {
                return Err(invalid(
                    f,
                    format!(
                        "from {:?} to {:?} matches no probe of this matrix (self is never probed)",
                        e.from, e.to
                    ),
                ));
            }
            matrix.rules.push(rule);
        }
        Ok(matrix)
    }

    /// Ordered (from, to) pairs of different pods, from-major.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.froms.iter().flat_map(move |from| {
            self.tos
                .iter()
                .filter(move |to| *to != from)
                .map(move |to| (from.as_str(), to.as_str()))
        })
    }

    /// What `from` -> `to` on `port` is expected to find: the last override
    /// that matches, else the default.
    pub fn expected(&self, from: &str, to: &str, port: PortProto) -> Expectation {
        self.rules
            .iter()
            .rev()
            .find(|r| r.applies(from, to, port))
            .map_or(self.default, |r| r.result)
    }

    /// The probes, in from, to, port order.
    pub fn probes(&self) -> Vec<MatrixProbe> {
        self.pairs()
            .flat_map(|(from, to)| {
                self.ports.iter().map(move |port| MatrixProbe {
                    from: from.to_string(),
                    to: to.to_string(),
                    port: *port,
                    expect: self.expected(from, to, *port),
                })
            })
            .collect()
    }

    /// Judges `results`, which are the results of [`Matrix::probes`] in
    /// that order.
    pub fn judge(&self, results: &[ProbeResult]) -> MatrixOutput {
        let mut ok: BTreeMap<(&str, &str, PortProto), bool> = BTreeMap::new();
        let probes = self.probes();
        for (probe, result) in probes.iter().zip(results) {
            ok.insert(
                (&probe.from, &probe.to, probe.port),
                probe.expect.holds(result.connected),
            );
        }
        MatrixOutput {
            ports: self.ports.iter().map(ToString::to_string).collect(),
            checked: ok.len(),
            failed: ok.values().filter(|good| !**good).count(),
            table: render_tables(&self.froms, &self.tos, &self.ports, |from, to, port| {
                ok.get(&(from, to, port)).copied()
            }),
        }
    }
}

/// One truth table per port: a `PORT/PROTO` line, a header of the `tos`,
/// then a row per `froms` entry. `cell` says whether a probe met its
/// expectation (`.`), did not (`X`), or was not made (None: `-`).
pub fn render_tables(
    froms: &[String],
    tos: &[String],
    ports: &[PortProto],
    cell: impl Fn(&str, &str, PortProto) -> Option<bool>,
) -> String {
    let row_width = froms.iter().map(String::len).max().unwrap_or(0);
    let col_width = tos.iter().map(String::len).max().unwrap_or(1).max(1);
    let mut blocks = Vec::with_capacity(ports.len());
    for port in ports {
        let mut lines = vec![port.to_string()];
        let mut header = format!("{:row_width$}", "");
        for to in tos {
            header.push_str(&format!(" {to:col_width$}"));
        }
        lines.push(header.trim_end().to_string());
        for from in froms {
            let mut line = format!("{from:row_width$}");
            for to in tos {
                let mark = match cell(from, to, *port) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                };
                line.push_str(&format!(" {mark:col_width$}"));
            }
            lines.push(line.trim_end().to_string());
        }
        blocks.push(lines.join("\n"));
    }
    blocks.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Protocol;

    fn pods() -> Vec<String> {
        ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn raw(yaml: &str) -> MatrixStep {
        serde_saphyr::from_str(yaml).expect("matrix YAML")
    }

    fn field_of(err: ScenarioError) -> String {
        match err {
            ScenarioError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    fn pp(s: &str) -> PortProto {
        PortProto::parse(s).unwrap()
    }

    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(PodPattern::parse("*"), Ok(PodPattern::Any));
        assert_eq!(PodPattern::parse("*/*"), Ok(PodPattern::Any));
        assert_eq!(
            PodPattern::parse("x/*"),
            Ok(PodPattern::Namespace("x".into()))
        );
        assert_eq!(PodPattern::parse("*/a"), Ok(PodPattern::Name("a".into())));
        assert_eq!(PodPattern::parse("x/a"), Ok(PodPattern::Pod("x/a".into())));
        for bad in ["", "x", "x/", "/a", "x/a/b", "x*/a", "X/a", "**", "x/a*"] {
            assert!(PodPattern::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let ns = PodPattern::parse("x/*").unwrap();
        assert!(ns.matches("x/a") && ns.matches("x/zz") && !ns.matches("y/a"));
        let name = PodPattern::parse("*/a").unwrap();
        assert!(name.matches("x/a") && name.matches("y/a") && !name.matches("x/ab"));
        let pod = PodPattern::parse("x/a").unwrap();
        assert!(pod.matches("x/a") && !pod.matches("x/b") && !pod.matches("y/a"));
        assert!(PodPattern::Any.matches("q/r"));
    }

    #[test]
    fn ports_parse_in_any_case_and_print_upper_case() {
        assert_eq!(
            pp("80/tcp"),
            PortProto {
                port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(pp("81/Udp").to_string(), "81/UDP");
        for bad in [
            "80",
            "80/ICMP",
            "0/TCP",
            "65536/TCP",
            "x/TCP",
            "/TCP",
            "80/",
        ] {
            assert!(PortProto::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn expands_every_ordered_pair_but_self_in_from_to_port_order() {
        let m = Matrix::compile(
            &raw("{ports: [80/TCP, 81/UDP], from: [x/a, y/a], to: ['x/*']}"),
            &pods(),
            "m",
        )
        .unwrap();
        assert_eq!(m.froms, vec!["x/a", "y/a"]);
        assert_eq!(m.tos, vec!["x/a", "x/b", "x/c"]);
        let order: Vec<String> = m
            .probes()
            .iter()
            .map(|p| format!("{}>{} {}", p.from, p.to, p.port))
            .collect();
        assert_eq!(
            order,
            [
                "x/a>x/b 80/TCP",
                "x/a>x/b 81/UDP",
                "x/a>x/c 80/TCP",
                "x/a>x/c 81/UDP",
                "y/a>x/a 80/TCP",
                "y/a>x/a 81/UDP",
                "y/a>x/b 80/TCP",
                "y/a>x/b 81/UDP",
                "y/a>x/c 80/TCP",
                "y/a>x/c 81/UDP",
            ]
        );
        assert!(
            m.probes()
                .iter()
                .all(|p| p.expect == Expectation::Connected)
        );
        let all = Matrix::compile(&raw("{ports: [80/TCP]}"), &pods(), "m").unwrap();
        assert_eq!(all.probes().len(), 6 * 5, "every ordered pair of 6 pods");
    }

    #[test]
    fn a_later_override_wins_and_port_filters_apply() {
        let m = Matrix::compile(
            &raw("{ports: [80/TCP, 81/TCP], default: connected, expect: [\
                   {from: '*', to: x/a, result: blocked},\
                   {from: x/b, to: x/a, port: 80/tcp, result: connected},\
                   {from: 'y/*', to: '*/a', result: blocked}]}"),
            &pods(),
            "m",
        )
        .unwrap();
        let b = Expectation::Blocked;
        let c = Expectation::Connected;
        assert_eq!(m.expected("x/c", "x/a", pp("80/TCP")), b);
        assert_eq!(m.expected("x/b", "x/a", pp("80/TCP")), c, "later rule wins");
        assert_eq!(m.expected("x/b", "x/a", pp("81/TCP")), b, "port filter");
        assert_eq!(m.expected("y/b", "x/a", pp("80/TCP")), b);
        assert_eq!(m.expected("y/b", "y/a", pp("80/TCP")), b);
        assert_eq!(m.expected("x/a", "x/b", pp("80/TCP")), c, "default");
        // Reversed order: the generic rule now overrides the specific one.
        let m = Matrix::compile(
            &raw("{ports: [80/TCP], default: blocked, expect: [\
                   {from: x/b, to: x/a, result: blocked},\
                   {from: '*', to: x/a, result: connected}]}"),
            &pods(),
            "m",
        )
        .unwrap();
        assert_eq!(m.expected("x/b", "x/a", pp("80/TCP")), c);
        assert_eq!(m.expected("x/b", "x/c", pp("80/TCP")), b, "default");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{ports: []}", "m.ports"),
            ("{ports: [80]}", "m.ports[0]"),
            ("{ports: [80/TCP, 80/tcp]}", "m.ports[1]"),
            ("{ports: [80/TCP], from: []}", "m.from"),
            ("{ports: [80/TCP], from: [x/a, 'q/*']}", "m.from[1]"),
            ("{ports: [80/TCP], to: ['*/zz']}", "m.to[0]"),
            ("{ports: [80/TCP], to: [x]}", "m.to[0]"),
            ("{ports: [80/TCP], from: [x/a], to: [x/a]}", "m"),
            ("{ports: [80/TCP], timeout_ms: 0}", "m.timeout_ms"),
            (
                "{ports: [80/TCP], expect: [{from: '*', to: x/a, result: blocked}, {from: x/zz, to: '*', result: blocked}]}",
                "m.expect[1].from",
            ),
            (
                "{ports: [80/TCP], expect: [{from: '*', to: 'a', result: blocked}]}",
                "m.expect[0].to",
            ),
            (
                "{ports: [80/TCP], expect: [{from: '*', to: x/a, port: 81/TCP, result: blocked}]}",
                "m.expect[0].port",
            ),
            (
                "{ports: [80/TCP], from: ['x/*'], expect: [{from: 'y/*', to: x/a, result: blocked}]}",
                "m.expect[0]",
            ),
            (
                "{ports: [80/TCP], expect: [{from: x/a, to: x/a, result: blocked}]}",
                "m.expect[0]",
            ),
        ];
        for (yaml, field) in cases {
            let err = Matrix::compile(&raw(yaml), &pods(), "m").expect_err(yaml);
            assert_eq!(field_of(err), field, "for {yaml}");
        }
        // Closed vocabularies and unknown keys are refused by the parser.
        for yaml in [
            "{ports: [80/TCP], default: open}",
            "{ports: [80/TCP], expect: [{from: '*', to: x/a, result: maybe}]}",
            "{ports: [80/TCP], expect: [{from: '*', to: x/a, result: blocked, why: x}]}",
            "{ports: [80/TCP], family: 5}",
            "{port: [80/TCP]}",
        ] {
            assert!(
                serde_saphyr::from_str::<MatrixStep>(yaml).is_err(),
                "{yaml} must be refused"
            );
        }
    }

    fn result(from: &str, to: &str, connected: bool) -> ProbeResult {
        ProbeResult {
            from: from.into(),
            to: to.into(),
            port: 80,
            protocol: Protocol::Tcp,
            connected,
            reply: String::new(),
            ms: 0.0,
            dst: None,
            error: None,
            expect: None,
            ok: None,
        }
    }

    #[test]
    fn judges_and_renders_truth_tables() {
        let pods: Vec<String> = ["x/a", "x/b", "y/c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = Matrix::compile(
            &raw("{ports: [80/TCP, 81/UDP], expect: [{from: '*', to: x/a, result: blocked}]}"),
            &pods,
            "m",
        )
        .unwrap();
        let probes = m.probes();
        assert_eq!(probes.len(), 12);
        // Everything connects: the probes to x/a are wrong (they expected blocked),
        // and so is y/c -> x/b on 81/UDP, which is blocked.
        let results: Vec<ProbeResult> = probes
            .iter()
            .map(|p| {
                let connected = !(p.from == "y/c" && p.to == "x/b" && p.port == pp("81/UDP"));
                result(&p.from, &p.to, connected)
            })
            .collect();
        let out = m.judge(&results);
        assert_eq!(out.ports, vec!["80/TCP", "81/UDP"]);
        assert_eq!(out.checked, 12);
        assert_eq!(out.failed, 2 * 2 + 1);
        let want = "\
80/TCP
    x/a x/b y/c
x/a -   .   .
x/b X   -   .
y/c X   .   -

81/UDP
    x/a x/b y/c
x/a -   .   .
x/b X   -   .
y/c X   X   -";
        assert_eq!(out.table, want, "\n{}", out.table);
    }

    #[test]
    fn tables_pad_to_the_longest_key() {
        let froms = vec!["ns/a".to_string()];
        let tos = vec!["ns/a".to_string(), "longer/b".to_string()];
        let t = render_tables(&froms, &tos, &[pp("80/TCP")], |_, to, _| {
            (to != "ns/a").then_some(true)
        });
        assert_eq!(t, "80/TCP\n     ns/a     longer/b\nns/a -        .");
    }
}
