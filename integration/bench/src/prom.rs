//! Reading the agent's `/metrics` page (Prometheus text format 0.0.4) into
//! numbers: every sample as (name, labels, value), and sums over a family.
//! Owns nothing else; no HTTP here.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed page.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub samples: Vec<Sample>,
}

impl Page {
    /// Parses a page; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Page {
        Page {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name_end, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (open, labels, after)
        }
        None => {
            let end = line.find(char::is_whitespace)?;
            (end, BTreeMap::new(), &line[end..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: line[..name_end].to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_sums_families() {
        let page = Page::parse(
            "# HELP weir_x help\n# TYPE weir_x counter\n\
             weir_flows_processed_total{protocol=\"UDP\",type=\"Trace\",verdict=\"FORWARDED\"} 10\n\
             weir_flows_processed_total{protocol=\"TCP\",type=\"Trace\",verdict=\"FORWARDED\"} 5\n\
             weir_lost_events_total{source=\"kernel_ring_buffer\"} 3\n\
             weir_lost_events_total{source=\"agent_queue\"} 0\n\
             weir_datapath_packets_total 1.5e6\n\
             weir_odd{a=\"x\\\"y,z\"} 2\n",
        );
        assert_eq!(page.sum("weir_flows_processed_total", &[]), 15.0);
        assert_eq!(
            page.sum("weir_flows_processed_total", &[("protocol", "UDP")]),
            10.0
        );
        assert_eq!(
            page.sum(
                "weir_lost_events_total",
                &[("source", "kernel_ring_buffer")]
            ),
            3.0
        );
        assert_eq!(page.sum("weir_datapath_packets_total", &[]), 1.5e6);
        assert_eq!(page.sum("weir_odd", &[("a", "x\"y,z")]), 2.0);
        assert!(!page.has("weir_missing"));
    }
}
