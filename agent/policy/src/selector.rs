//! Kubernetes label selectors (`metav1.LabelSelector`): parsing with the API
//! server's validation, and matching against a label set.
//!
//! Semantics as in apimachinery: every `matchLabels` pair and every
//! `matchExpressions` requirement must hold; `NotIn` and `DoesNotExist` hold
//! when the key is absent; the empty selector `{}` matches everything.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fields::{FieldError, describe, err, join, map, opt_list, opt_map, req_str};
use crate::names;

/// Labels (or annotations), sorted so that everything derived from them is stable.
pub type Labels = BTreeMap<String, String>;

/// Operator of one `matchExpressions` requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }

    /// Parses the Kubernetes spelling (case-sensitive, as the API server).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// As written (order kept for explain output); empty for Exists/DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector `{}`, which matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether this is `{}` (matches everything).
    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every pair and every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Parses and validates a selector found at `path`.
    pub(crate) fn parse(obj: &Map<String, Value>, path: &str) -> Result<Self, FieldError> {
        let mut out = LabelSelector::default();
        if let Some(labels) = opt_map(obj, "matchLabels", path)? {
            let lpath = join(path, "matchLabels");
            for (k, v) in labels {
                names::qualified_name(k).map_err(|p| err(&lpath, p))?;
                let entry = format!("{lpath}[{k}]");
                let Value::String(s) = v else {
                    return Err(err(
                        entry,
                        format!("expected a string, found {}", describe(v)),
                    ));
                };
                names::label_value(s).map_err(|p| err(&entry, p))?;
                out.match_labels.insert(k.clone(), s.clone());
            }
        }
        for (i, expr) in opt_list(obj, "matchExpressions", path)?.iter().enumerate() {
            let base = format!("{}[{i}]", join(path, "matchExpressions"));
            out.match_expressions
                .push(parse_requirement(map(expr, &base)?, &base)?);
        }
        Ok(out)
    }
}

fn parse_requirement(obj: &Map<String, Value>, base: &str) -> Result<Requirement, FieldError> {
    let key = req_str(obj, "key", base)?;
    names::qualified_name(key).map_err(|p| err(join(base, "key"), p))?;
    let op_text = req_str(obj, "operator", base)?;
    let operator = Operator::parse(op_text).ok_or_else(|| {
        err(
            join(base, "operator"),
            format!(
                "{op_text:?}: not a valid selector operator (supported: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\")"
            ),
        )
    })?;
    let vpath = join(base, "values");
    let mut values = Vec::new();
    for (i, v) in opt_list(obj, "values", base)?.iter().enumerate() {
        let path = format!("{vpath}[{i}]");
        let Value::String(s) = v else {
            return Err(err(
                path,
                format!("expected a string, found {}", describe(v)),
            ));
        };
        names::label_value(s).map_err(|p| err(&path, p))?;
        values.push(s.clone());
    }
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => Err(err(
            vpath,
            "must be specified when `operator` is 'In' or 'NotIn'",
        )),
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Err(err(
            vpath,
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        )),
        _ => Ok(Requirement {
            key: key.to_owned(),
            operator,
            values,
        }),
    }
}

/// Parses the optional selector `key` of `obj` (absent or null: `None`).
pub(crate) fn opt_selector(
    obj: &Map<String, Value>,
    key: &str,
    base: &str,
) -> Result<Option<LabelSelector>, FieldError> {
    let path = join(base, key);
    opt_map(obj, key, base)?
        .map(|m| LabelSelector::parse(m, &path))
        .transpose()
}
