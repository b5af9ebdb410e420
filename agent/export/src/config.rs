//! The exporters' config file: Hubble's dynamic flow-log config
//! (`hubble-flowlogs-config`, `--hubble-flowlogs-config-path`), in YAML (JSON
//! is YAML too):
//!
//! ```yaml
//! flowLogs:
//!   - name: all-drops
//!     filePath: /var/log/weir/drops.log
//!     fieldMask: [time, source.namespace, source.pod_name, destination, verdict, drop_reason_desc]
//!     includeFilters: [{verdict: [DROPPED]}]
//!     excludeFilters: [{source_pod: ["kube-system/"]}]
//!     end: "2026-12-31T00:00:00Z"
//!     fileMaxSizeMb: 10
//!     fileMaxBackups: 5
//!     fileCompress: false
//! ```
//!
//! Per entry:
//! - `name` (required, unique, non-empty): names the exporter in errors,
//!   metrics and the store subscription `export_<name>`.
//! - `filePath` (required, unique across entries as written): the log file.
//! - `fieldMask`: `flow.Flow` field paths to keep (see
//!   `weir_api::fieldmask`); empty keeps every field.
//! - `includeFilters`, `excludeFilters`: `flow.FlowFilter`s in protobuf JSON
//!   form; proto field names (`source_pod`) and JSON names (`sourcePod`) are
//!   both accepted, enums by name or number. A flow is written when no
//!   include filter is given or one matches, and no exclude filter matches
//!   (Hubble's whitelist/blacklist, `weir_api::filter`).
//! - `end`: RFC 3339 time after which the exporter stops.
//! - `fileMaxSizeMb` (default 10, at least 1; MB = 2^20 bytes as in
//!   lumberjack), `fileMaxBackups` (default 5; 0 keeps every backup, as
//!   lumberjack does), `fileCompress` (default false): rotation, which Hubble
//!   sets once with global flags (`--hubble-export-file-max-size-mb`, ...)
//!   and Weir per exporter, with Hubble's defaults.
//!
//! Hubble's `fieldAggregate` and `aggregationInterval` are refused (Weir does
//! not aggregate exporter output); any other unknown key is refused too, so a
//! typo is not silently ignored.
//!
//! An error in one entry refuses that entry only ([`EntryError`], naming the
//! exporter and the field); an error in the file as a whole ([`ConfigError`])
//! refuses the file. Pure: no I/O.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::SystemTime;

use prost_reflect::DynamicMessage;
use serde_json::{Map, Value};
use weir_api::fieldmask::FlowMask;
use weir_api::filter::{FilterError, FlowFilters, ListKind};
use weir_api::proto::{descriptor_pool, flow as pb};

/// Hubble's default `--hubble-export-file-max-size-mb`.
pub const DEFAULT_MAX_SIZE_MB: u64 = 10;
/// Hubble's default `--hubble-export-file-max-backups`.
pub const DEFAULT_MAX_BACKUPS: usize = 5;
/// lumberjack's megabyte.
const MB: u64 = 1024 * 1024;

/// Errors that refuse the whole file (the previous exporters keep running).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not YAML.
    #[error("flow log config is not valid YAML")]
    Yaml(#[source] serde_saphyr::Error),
    /// The document is not a mapping, or `flowLogs` is not a list.
    #[error("flow log config: {0}")]
    Shape(String),
}

/// Why one exporter entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow log exporter {exporter:?}: {field}: {message}")]
pub struct EntryError {
    /// The entry's `name`, or `flowLogs[<index>]` when it has none.
    pub exporter: String,
    /// The offending key, with an index or filter field where it helps
    /// (`includeFilters[0].source_ip`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One valid exporter entry, as written (compared to detect changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterSpec {
    pub name: String,
    pub file_path: PathBuf,
    pub field_mask: Vec<String>,
    pub include_filters: Vec<pb::FlowFilter>,
    pub exclude_filters: Vec<pb::FlowFilter>,
    pub end: Option<SystemTime>,
    /// Rotation threshold in bytes.
    pub max_size_bytes: u64,
    /// Backups kept; 0 keeps all.
    pub max_backups: usize,
    pub compress: bool,
}

/// A spec with its filters and mask compiled, ready to run.
#[derive(Debug, Clone)]
pub struct CompiledExporter {
    pub spec: ExporterSpec,
    pub filters: FlowFilters,
    /// The mask as compiled against the descriptors (validation, and the
    /// reference the JSON mask is tested against).
    pub mask: FlowMask,
    /// The same mask applied to the JSON form.
    pub json_mask: crate::exporter::JsonMask,
}

/// The parsed file: entries in file order, each valid or refused.
#[derive(Debug)]
pub struct ParsedConfig {
    pub entries: Vec<Result<CompiledExporter, EntryError>>,
}

const KEYS: &[&str] = &[
    "name",
    "filePath",
    "fieldMask",
    "includeFilters",
    "excludeFilters",
    "end",
    "fileMaxSizeMb",
    "fileMaxBackups",
    "fileCompress",
];

/// Parses and validates the whole config text. Whitespace only (or
/// `flowLogs` absent or null) means no exporters.
pub fn parse(text: &str) -> Result<ParsedConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ParsedConfig {
            entries: Vec::new(),
        });
    }
    let doc: Value = serde_saphyr::from_str(text).map_err(ConfigError::Yaml)?;
    let list = match doc {
        Value::Null => Vec::new(),
        Value::Object(mut top) => {
            if let Some(k) = top.keys().find(|k| *k != "flowLogs") {
                return Err(ConfigError::Shape(format!(
                    "unknown top-level key {k:?} (only flowLogs)"
                )));
            }
            match top.remove("flowLogs") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a,
                Some(_) => return Err(ConfigError::Shape("flowLogs must be a list".into())),
            }
        }
        _ => return Err(ConfigError::Shape("the document must be a mapping".into())),
    };
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let entries = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let c = parse_entry(i, v)?;
            // First entry wins: a later duplicate must not replace an
            // exporter that is already writing.
            if !names.insert(c.spec.name.clone()) {
                return Err(err(
                    &c.spec.name,
                    "name",
                    "duplicate name; the first entry with it is used",
                ));
            }
            if !paths.insert(c.spec.file_path.clone()) {
                return Err(err(
                    &c.spec.name,
                    "filePath",
                    &format!(
                        "{} is already the file of another exporter",
                        c.spec.file_path.display()
                    ),
                ));
            }
            Ok(c)
        })
        .collect();
    Ok(ParsedConfig { entries })
}

fn err(exporter: &str, field: &str, message: &str) -> EntryError {
    EntryError {
        exporter: exporter.to_owned(),
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

fn parse_entry(index: usize, v: Value) -> Result<CompiledExporter, EntryError> {
    let anon = format!("flowLogs[{index}]");
    let Value::Object(mut m) = v else {
        return Err(err(
            &anon,
            "(entry)",
            "each flowLogs entry must be a mapping",
        ));
    };
    let name = match m.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(err(&anon, "name", "missing or empty"));
        }
        Some(other) => {
            return Err(err(
                &anon,
                "name",
                &format!("must be a string, got {other}"),
            ));
        }
    };
    let e = |field: &str, message: &str| err(&name, field, message);
    for k in m.keys() {
        if !KEYS.contains(&k.as_str()) {
            let why = match k.as_str() {
                "fieldAggregate" | "aggregationInterval" => {
                    "Hubble's aggregation is not supported by Weir; remove this key".to_owned()
                }
                _ => format!("unknown key (known: {})", KEYS.join(", ")),
            };
            return Err(e(k, &why));
        }
    }
    let file_path = match take::<String>(&mut m, "filePath", &name)? {
        Some(p) if !p.trim().is_empty() => PathBuf::from(p),
        _ => return Err(e("filePath", "missing or empty")),
    };
    let field_mask = take::<Vec<String>>(&mut m, "fieldMask", &name)?.unwrap_or_default();
    let field_mask_paths = field_mask.clone();
    let mask = FlowMask::compile(&prost_types::FieldMask {
        paths: field_mask.clone(),
    })
    .map_err(|x| e("fieldMask", &x.to_string()))?;
    let include_filters = filters(&mut m, "includeFilters", &name)?;
    let exclude_filters = filters(&mut m, "excludeFilters", &name)?;
    let compiled = FlowFilters::compile(&include_filters, &exclude_filters).map_err(|x| {
        let (list, index, field, message) = match &x {
            FilterError::Invalid {
                list,
                index,
                field,
                value,
                reason,
            } => (*list, *index, *field, format!("{value:?} {reason}")),
            FilterError::Unsupported {
                list,
                index,
                field,
                why,
            } => (
                *list,
                *index,
                *field,
                format!("not supported by Weir ({why})"),
            ),
        };
        let key = match list {
            ListKind::Whitelist => "includeFilters",
            ListKind::Blacklist => "excludeFilters",
        };
        e(&format!("{key}[{index}].{field}"), &message)
    })?;
    let end = match take::<String>(&mut m, "end", &name)? {
        None => None,
        Some(s) => {
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|x| e("end", &format!("{s:?} is not an RFC 3339 time: {x}")))?;
            Some(SystemTime::from(t))
        }
    };
    let size_mb = take::<u64>(&mut m, "fileMaxSizeMb", &name)?.unwrap_or(DEFAULT_MAX_SIZE_MB);
    if size_mb == 0 {
        return Err(e("fileMaxSizeMb", "must be at least 1"));
    }
    let max_size_bytes = size_mb
        .checked_mul(MB)
        .ok_or_else(|| e("fileMaxSizeMb", "too large"))?;
    let max_backups =
        take::<usize>(&mut m, "fileMaxBackups", &name)?.unwrap_or(DEFAULT_MAX_BACKUPS);
    let compress = take::<bool>(&mut m, "fileCompress", &name)?.unwrap_or(false);
    Ok(CompiledExporter {
        spec: ExporterSpec {
            name,
            file_path,
            field_mask,
            include_filters,
            exclude_filters,
            end,
            max_size_bytes,
            max_backups,
            compress,
        },
        filters: compiled,
        mask,
        json_mask: crate::exporter::JsonMask::new(&field_mask_paths),
    })
}

/// Removes `key` and reads it as `T`; null counts as absent.
fn take<T: serde::de::DeserializeOwned>(
    m: &mut Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<Option<T>, EntryError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|x| err(name, key, &x.to_string())),
    }
}

/// Reads a list of `flow.FlowFilter`s in protobuf JSON form.
fn filters(
    m: &mut Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<Vec<pb::FlowFilter>, EntryError> {
    let list = match m.remove(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err(name, key, "must be a list of FlowFilters")),
    };
    let desc = descriptor_pool()
        .get_message_by_name("flow.FlowFilter")
        .expect("flow.FlowFilter is in Weir's descriptor set");
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("{key}[{i}]");
            let dynamic = DynamicMessage::deserialize(desc.clone(), v)
                .map_err(|x| err(name, &field, &x.to_string()))?;
            dynamic
                .transcode_to::<pb::FlowFilter>()
                .map_err(|x| err(name, &field, &x.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(text: &str) -> Result<CompiledExporter, EntryError> {
        let mut p = parse(text).expect("file parses");
        assert_eq!(p.entries.len(), 1);
        p.entries.remove(0)
    }

    #[test]
    fn full_entry() {
        let c = only(
            r#"
flowLogs:
  - name: all-drops
    filePath: /var/log/weir/drops.log
    fieldMask: [time, source.namespace, source.pod_name, destination, verdict, drop_reason_desc]
    includeFilters: [{verdict: [DROPPED]}, {sourcePod: ["x/"], event_type: [{type: 1}]}]
    excludeFilters: [{source_pod: ["kube-system/"]}]
    end: "2026-12-31T00:00:00Z"
    fileMaxSizeMb: 3
    fileMaxBackups: 0
    fileCompress: true
"#,
        )
        .unwrap();
        let s = &c.spec;
        assert_eq!(s.name, "all-drops");
        assert_eq!(s.file_path, PathBuf::from("/var/log/weir/drops.log"));
        assert_eq!(s.field_mask.len(), 6);
        assert_eq!(s.include_filters.len(), 2);
        assert_eq!(
            s.include_filters[0].verdict,
            vec![pb::Verdict::Dropped as i32]
        );
        assert_eq!(s.include_filters[1].source_pod, vec!["x/".to_owned()]);
        assert_eq!(s.include_filters[1].event_type[0].r#type, 1);
        assert_eq!(
            s.exclude_filters[0].source_pod,
            vec!["kube-system/".to_owned()]
        );
        assert_eq!(
            s.end
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_798_675_200
        );
        assert_eq!(s.max_size_bytes, 3 * MB);
        assert_eq!(s.max_backups, 0);
        assert!(s.compress);
        assert!(!c.mask.is_empty());
    }

    #[test]
    fn defaults() {
        let c = only("flowLogs: [{name: a, filePath: /tmp/a.log}]").unwrap();
        assert_eq!(c.spec.max_size_bytes, 10 * MB);
        assert_eq!(c.spec.max_backups, 5);
        assert!(!c.spec.compress && c.spec.end.is_none() && c.mask.is_empty());
        assert!(c.filters.is_empty());
    }

    #[test]
    fn entry_errors_name_exporter_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("{filePath: /a}", "flowLogs[0]", "name"),
            ("{name: x}", "x", "filePath"),
            (
                "{name: x, filePath: /a, fieldMask: [source.nope]}",
                "x",
                "fieldMask",
            ),
            (
                "{name: x, filePath: /a, includeFilters: [{nope: [1]}]}",
                "x",
                "includeFilters[0]",
            ),
            (
                "{name: x, filePath: /a, includeFilters: [{verdict: [MAYBE]}]}",
                "x",
                "includeFilters[0]",
            ),
            (
                "{name: x, filePath: /a, excludeFilters: [{}, {source_ip: [not-an-ip]}]}",
                "x",
                "excludeFilters[1].source_ip",
            ),
            ("{name: x, filePath: /a, end: yesterday}", "x", "end"),
            (
                "{name: x, filePath: /a, fileMaxSizeMb: 0}",
                "x",
                "fileMaxSizeMb",
            ),
            (
                "{name: x, filePath: /a, fileMaxBackups: -1}",
                "x",
                "fileMaxBackups",
            ),
            (
                "{name: x, filePath: /a, fieldAggregate: [verdict]}",
                "x",
                "fieldAggregate",
            ),
            ("{name: x, filePath: /a, filepath: /b}", "x", "filepath"),
        ];
        for (entry, exporter, field) in cases {
            let e = only(&format!("flowLogs: [{entry}]")).expect_err(entry);
            assert_eq!(
                (e.exporter.as_str(), e.field.as_str()),
                (*exporter, *field),
                "{entry}: {e}"
            );
            let shown = e.to_string();
            assert!(shown.contains(exporter) && shown.contains(field), "{shown}");
        }
    }

    #[test]
    fn duplicates_refuse_the_later_entry() {
        let p = parse(
            "flowLogs: [{name: a, filePath: /a}, {name: a, filePath: /b}, {name: c, filePath: /a}]",
        )
        .unwrap();
        assert!(p.entries[0].is_ok());
        let e1 = p.entries[1].as_ref().unwrap_err();
        assert_eq!((e1.exporter.as_str(), e1.field.as_str()), ("a", "name"));
        let e2 = p.entries[2].as_ref().unwrap_err();
        assert_eq!((e2.exporter.as_str(), e2.field.as_str()), ("c", "filePath"));
    }

    #[test]
    fn whole_file_errors() {
        assert!(matches!(parse("flowLogs: [a"), Err(ConfigError::Yaml(_))));
        assert!(matches!(parse("flowLogs: 3"), Err(ConfigError::Shape(_))));
        assert!(matches!(parse("- a"), Err(ConfigError::Shape(_))));
        assert!(matches!(parse("flowlogs: []"), Err(ConfigError::Shape(_))));
        assert!(parse("").unwrap().entries.is_empty());
        assert!(parse("flowLogs:").unwrap().entries.is_empty());
    }
}
