//! What every figure hands back, and how it is shown: a human table and one
//! JSON line (keys are only ever added), plus the facts about the machine the
//! figure was measured on. Owns no measurement.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// A measured quantity.
#[derive(Clone, Debug, Serialize)]
pub struct Quantity {
    /// What was measured, in words.
    pub what: String,
    pub value: f64,
    pub unit: String,
}

impl Quantity {
    pub fn new(what: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// Which number the target is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// `measured / baseline`.
    Ratio,
    /// The measured value itself.
    Measured,
}

/// Comparison of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
        }
    }
}

/// The figure's target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub subject: Subject,
    pub op: Op,
    pub value: f64,
    pub unit: String,
}

impl Target {
    pub fn new(subject: Subject, op: Op, value: f64, unit: impl Into<String>) -> Self {
        Self {
            subject,
            op,
            value,
            unit: unit.into(),
        }
    }

    /// Whether `measured` (and `ratio`) meet the target.
    pub fn check(&self, measured: f64, ratio: f64) -> bool {
        let x = match self.subject {
            Subject::Ratio => ratio,
            Subject::Measured => measured,
        };
        match self.op {
            Op::AtLeast => x >= self.value,
            Op::AtMost => x <= self.value,
        }
    }

    fn describe(&self) -> String {
        let subject = match self.subject {
            Subject::Ratio => "ratio",
            Subject::Measured => "measured",
        };
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        format!(
            "{subject} {} {}{unit}",
            self.op.as_str(),
            fmt_num(self.value)
        )
    }
}

/// Facts about the machine a figure was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// `/proc/loadavg`'s 1-minute figure when the figure started: how quiet
    /// the (shared) machine was.
    pub loadavg_1m_at_start: f64,
}

impl Machine {
    /// Reads the facts from /proc.
    pub fn current() -> Self {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Self {
            nproc,
            kernel,
            cpu_model,
            loadavg_1m_at_start: loadavg_1m(),
        }
    }
}

/// The 1-minute load average (0 when unreadable).
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The result of one figure.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub figure: String,
    pub baseline: Quantity,
    pub measured: Quantity,
    /// `measured.value / baseline.value` unless `ratio_what` says otherwise.
    pub ratio: f64,
    /// What `ratio` divides.
    pub ratio_what: String,
    pub target: Target,
    pub pass: bool,
    pub duration_s: f64,
    pub machine: Machine,
    /// UTC, RFC 3339.
    pub date: String,
    /// Figure-specific numbers (absolute rates, repetitions, counters).
    pub details: Map<String, Value>,
    /// Caveats worth reading next to the numbers.
    pub notes: Vec<String>,
}

impl Report {
    /// A report; `pass` is computed from the target.
    pub fn new(
        figure: &str,
        baseline: Quantity,
        measured: Quantity,
        target: Target,
        duration: Duration,
        machine: Machine,
    ) -> Self {
        let ratio = if baseline.value == 0.0 {
            f64::NAN
        } else {
            measured.value / baseline.value
        };
        let pass = target.check(measured.value, ratio);
        Self {
            figure: figure.to_string(),
            baseline,
            measured,
            ratio,
            ratio_what: "measured / baseline".to_string(),
            target,
            pass,
            duration_s: round3(duration.as_secs_f64()),
            machine,
            date: now_rfc3339(),
            details: Map::new(),
            notes: Vec::new(),
        }
    }

    /// Replaces the ratio by another quotient (described by `what`) and
    /// re-checks the target.
    pub fn set_ratio(&mut self, ratio: f64, what: &str) -> &mut Self {
        self.ratio = ratio;
        self.ratio_what = what.to_string();
        self.pass = self.target.check(self.measured.value, ratio);
        self
    }

    /// Marks the figure as missed whatever the target says (a precondition
    /// of the figure was not met), with the reason as a note.
    pub fn fail_because(&mut self, why: impl Into<String>) -> &mut Self {
        self.pass = false;
        self.notes.push(why.into());
        self
    }

    /// Adds a detail.
    pub fn detail(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "baseline".into(),
                format!(
                    "{} {}  ({})",
                    fmt_num(self.baseline.value),
                    self.baseline.unit,
                    self.baseline.what
                ),
            ),
            (
                "measured".into(),
                format!(
                    "{} {}  ({})",
                    fmt_num(self.measured.value),
                    self.measured.unit,
                    self.measured.what
                ),
            ),
            (
                "ratio".into(),
                format!("{}  ({})", fmt_ratio(self.ratio), self.ratio_what),
            ),
            ("target".into(), self.target.describe()),
            (
                "result".into(),
                if self.pass { "PASS" } else { "MISS" }.into(),
            ),
        ];
        for (k, v) in &self.details {
            let v = match v {
                Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push((k.clone(), v));
        }
        rows.push(("duration".into(), format!("{:.1} s", self.duration_s)));
        rows.push((
            "machine".into(),
            format!(
                "{} vCPU, kernel {}, {}, load {:.2} at start",
                self.machine.nproc,
                self.machine.kernel,
                self.machine.cpu_model,
                self.machine.loadavg_1m_at_start
            ),
        ));
        rows.push(("date".into(), self.date.clone()));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("== {} ==\n", self.figure);
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }

    /// The JSON line (no trailing newline).
    pub fn json_line(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        // NaN is not JSON: serde writes null, which is what a reader should see.
        if self.ratio.is_finite()
            && let Some(o) = v.as_object_mut()
        {
            let r = if self.ratio.abs() >= 1e-3 {
                round6(self.ratio)
            } else {
                self.ratio
            };
            o.insert("ratio".into(), Value::from(r));
        }
        v.to_string()
    }
}

/// A number for people: thousands separated for large values, 3 significant
/// decimals for small ones.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() >= 1000.0 {
        let n = x.round() as i128;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(' ');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_ratio(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// `x` rounded to `digits` decimals for a report's details; null when `x`
/// is not finite (JSON has no NaN or infinity).
pub fn round(x: f64, digits: i32) -> Value {
    if x.is_finite() {
        let p = 10f64.powi(digits);
        Value::from((x * p).round() / p)
    } else {
        Value::Null
    }
}

/// The median (NaN for no values).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Spread of `values` around their median: (max - min) / median.
pub fn spread(values: &[f64]) -> f64 {
    let m = median(values);
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    if m == 0.0 || !m.is_finite() {
        return f64::NAN;
    }
    (hi - lo) / m
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert!((spread(&[90.0, 100.0, 110.0]) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn round_keeps_the_digits_asked_for_and_writes_null_for_nan() {
        assert_eq!(round(1.23456, 2), Value::from(1.23));
        assert_eq!(round(62.649, 1), Value::from(62.6));
        assert_eq!(round(0.123456, 4), Value::from(0.1235));
        assert_eq!(round(f64::NAN, 2), Value::Null);
        assert_eq!(round(f64::INFINITY, 2), Value::Null);
    }

    #[test]
    fn target_checks_the_right_subject() {
        let t = Target::new(Subject::Ratio, Op::AtLeast, 0.95, "");
        assert!(t.check(1.0, 0.96));
        assert!(!t.check(1e9, 0.94));
        let t = Target::new(Subject::Measured, Op::AtMost, 50.0, "MiB");
        assert!(t.check(49.9, 100.0));
        assert!(!t.check(50.1, 0.1));
    }

    #[test]
    fn json_line_has_the_agreed_keys() {
        let r = Report::new(
            "x",
            Quantity::new("b", 2.0, "u"),
            Quantity::new("m", 1.0, "u"),
            Target::new(Subject::Ratio, Op::AtLeast, 0.95, ""),
            Duration::from_millis(1500),
            Machine::current(),
        );
        let v: Value = serde_json::from_str(&r.json_line()).expect("valid JSON");
        for key in [
            "figure",
            "baseline",
            "measured",
            "ratio",
            "target",
            "pass",
            "duration_s",
            "machine",
            "date",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["pass"], false);
        assert!(v["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(fmt_num(1_234_567.4), "1 234 567");
        assert_eq!(fmt_num(0.9512), "0.951");
        assert_eq!(fmt_num(12.0), "12");
    }
}
