//! How `weir observe` prints `GetFlows` responses: the `compact`, `dict`,
//! `jsonpb` (alias `json`) and `table` formats of `hubble observe`, line for
//! line, and the `hubble status` summary of a `ServerStatus` answer.
//!
//! Everything here works on the wire types of [`crate::proto`], so the output
//! is the same whoever the server is. Text formats print times in UTC (as
//! Hubble does), replace terminal control characters that come from the
//! server (`ESC` as `^[`, `CR` as `\r`) so a crafted pod name cannot drive
//! the terminal, and colour only when asked to. `jsonpb` is the protobuf
//! JSON mapping with the `.proto` field names, one compact object per line,
//! which is what Hubble prints. Pure formatting over `io::Write`: no network,
//! no global state.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use prost_types::Timestamp;

use crate::proto::flow as pf;
use crate::proto::observer::{GetFlowsResponse, ServerStatusResponse, get_flows_response};
use crate::proto::relay::{NodeState, NodeStatusEvent};

/// Separator between two `dict` records.
const DICT_SEPARATOR: &str = "------------";
/// Node lists in node status messages are cut after about this many bytes.
const NODE_NAMES_CUT_OFF: usize = 50;

/// Cilium's monitor message types (`event_type.type`) that the printer names.
mod message_type {
    pub const DROP: i32 = 1;
    pub const CAPTURE: i32 = 3;
    pub const TRACE: i32 = 4;
    pub const POLICY_VERDICT: i32 = 5;
    pub const TRACE_SOCK: i32 = 7;
}

/// Failures of printing.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// Writing to standard output or standard error failed (for example a
    /// closed pipe).
    #[error("writing the output failed: {0}")]
    Io(#[source] io::Error),
}

impl PrintError {
    /// Whether the reader went away (`weir observe | head`): not a failure
    /// worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, PrintError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<io::Error> for PrintError {
    fn from(e: io::Error) -> Self {
        PrintError::Io(e)
    }
}

/// Output format (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// One line per flow.
    #[default]
    Compact,
    /// `KEY: value` blocks separated by `------------`.
    Dict,
    /// The `GetFlowsResponse` in the protobuf JSON mapping, one per line
    /// (`json` is an alias, as in Hubble).
    JsonPb,
    /// Tab-aligned columns, printed when the stream ends.
    Table,
}

impl Output {
    /// The names `-o` accepts, for help and errors.
    pub const NAMES: &'static [&'static str] = &["compact", "dict", "json", "jsonpb", "table"];

    /// Whether this is one of the JSON formats.
    pub fn is_json(self) -> bool {
        self == Output::JsonPb
    }
}

impl std::str::FromStr for Output {
    type Err = String;

    /// Hubble's names: `compact`, `dict`, `json`/`JSON`/`jsonpb`,
    /// `table`/`tab`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "compact" => Ok(Output::Compact),
            "dict" => Ok(Output::Dict),
            "json" | "JSON" | "jsonpb" => Ok(Output::JsonPb),
            "table" | "tab" => Ok(Output::Table),
            other => Err(format!(
                "invalid output format: {other} (one of: {})",
                Output::NAMES.join(", ")
            )),
        }
    }
}

/// Time layout of the text formats (`--time-format`), Hubble's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeFormat {
    /// `Jan _2 15:04:05.000`.
    #[default]
    StampMilli,
    /// `2006-01-02`.
    YearMonthDay,
    /// `2006-01-02T15Z07:00`.
    YearMonthDayHour,
    /// `2006-01-02T15:04Z07:00`.
    YearMonthDayHourMinute,
    /// `2006-01-02T15:04:05Z07:00`.
    Rfc3339,
    /// RFC 3339 with up to 3 fractional digits, trailing zeros cut.
    Rfc3339Milli,
    /// RFC 3339 with up to 6 fractional digits, trailing zeros cut.
    Rfc3339Micro,
    /// RFC 3339 with up to 9 fractional digits, trailing zeros cut.
    Rfc3339Nano,
    /// `Mon, 02 Jan 2006 15:04:05 -0700`.
    Rfc1123Z,
}

impl TimeFormat {
    /// Every format's name, as `--time-format` takes it (case-insensitive).
    pub const NAMES: &'static [&'static str] = &[
        "StampMilli",
        "YearMonthDay",
        "YearMonthDayHour",
        "YearMonthDayHourMinute",
        "RFC3339",
        "RFC3339Milli",
        "RFC3339Micro",
        "RFC3339Nano",
        "RFC1123Z",
    ];

    /// Formats `ts` in UTC; `N/A` when absent or out of range, as Hubble.
    pub fn format(self, ts: Option<&Timestamp>) -> String {
        let Some(t) = ts.and_then(to_datetime) else {
            return "N/A".to_owned();
        };
        let mut s = String::with_capacity(32);
        let date = |s: &mut String| {
            let _ = write!(
                s,
                "{:04}-{:02}-{:02}",
                t.year(),
                u8::from(t.month()),
                t.day()
            );
        };
        let frac = |s: &mut String, digits: usize| {
            // Go's `.999` layouts truncate, then drop trailing zeros and the
            // dot when nothing is left.
            let n = format!("{:09}", t.nanosecond());
            let cut = n[..digits].trim_end_matches('0');
            if !cut.is_empty() {
                s.push('.');
                s.push_str(cut);
            }
        };
        match self {
            TimeFormat::StampMilli => {
                let _ = write!(
                    s,
                    "{} {:>2} {:02}:{:02}:{:02}.{:03}",
                    month_abbrev(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.millisecond()
                );
            }
            TimeFormat::YearMonthDay => date(&mut s),
            TimeFormat::YearMonthDayHour => {
                date(&mut s);
                let _ = write!(s, "T{:02}Z", t.hour());
            }
            TimeFormat::YearMonthDayHourMinute => {
                date(&mut s);
                let _ = write!(s, "T{:02}:{:02}Z", t.hour(), t.minute());
            }
            TimeFormat::Rfc3339
            | TimeFormat::Rfc3339Milli
            | TimeFormat::Rfc3339Micro
            | TimeFormat::Rfc3339Nano => {
                date(&mut s);
                let _ = write!(s, "T{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
                match self {
                    TimeFormat::Rfc3339Milli => frac(&mut s, 3),
                    TimeFormat::Rfc3339Micro => frac(&mut s, 6),
                    TimeFormat::Rfc3339Nano => frac(&mut s, 9),
                    _ => {}
                }
                s.push('Z');
            }
            TimeFormat::Rfc1123Z => {
                let _ = write!(
                    s,
                    "{}, {:02} {} {:04} {:02}:{:02}:{:02} +0000",
                    weekday_abbrev(t.weekday()),
                    t.day(),
                    month_abbrev(t.month()),
                    t.year(),
                    t.hour(),
                    t.minute(),
                    t.second()
                );
            }
        }
        s
    }
}

impl std::str::FromStr for TimeFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "stampmilli" => TimeFormat::StampMilli,
            "yearmonthday" => TimeFormat::YearMonthDay,
            "yearmonthdayhour" => TimeFormat::YearMonthDayHour,
            "yearmonthdayhourminute" => TimeFormat::YearMonthDayHourMinute,
            "rfc3339" => TimeFormat::Rfc3339,
            "rfc3339milli" => TimeFormat::Rfc3339Milli,
            "rfc3339micro" => TimeFormat::Rfc3339Micro,
            "rfc3339nano" => TimeFormat::Rfc3339Nano,
            "rfc1123z" => TimeFormat::Rfc1123Z,
            _ => {
                return Err(format!(
                    "unknown time format {s:?} (one of: {})",
                    TimeFormat::NAMES.join(", ")
                ));
            }
        })
    }
}

/// A protobuf timestamp as a UTC date-time, when it is a valid one
/// (years 1 to 9999, nanos in range), as Go's `Timestamp.IsValid`.
fn to_datetime(ts: &Timestamp) -> Option<time::OffsetDateTime> {
    const MIN: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(ts.seconds).ok()?;
    t.replace_nanosecond(ts.nanos as u32).ok()
}

fn month_abbrev(m: time::Month) -> &'static str {
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    M[usize::from(u8::from(m)) - 1]
}

fn weekday_abbrev(d: time::Weekday) -> &'static str {
    match d {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    }
}

/// What to print and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The format.
    pub output: Output,
    /// Time layout of the text formats.
    pub time_format: TimeFormat,
    /// Print the node name (`--print-node-name`).
    pub node_name: bool,
    /// Show pod, service or DNS names instead of addresses when known
    /// (`--ip-translation`, off with `--numeric`).
    pub ip_translation: bool,
    /// Colour the compact and dict formats (never the table).
    pub color: bool,
    /// Also print informational node status events (`--debug`).
    pub debug: bool,
    /// Print nothing on standard error (`--silent-errors`).
    pub ignore_stderr: bool,
}

impl Default for Options {
    /// Hubble's defaults: compact, `StampMilli`, names instead of addresses,
    /// no colour.
    fn default() -> Self {
        Self {
            output: Output::Compact,
            time_format: TimeFormat::StampMilli,
            node_name: false,
            ip_translation: true,
            color: false,
            debug: false,
            ignore_stderr: false,
        }
    }
}

/// Prints a stream of `GetFlowsResponse`s: flows and lost events to `out`,
/// node status events to `err`. The table format holds its rows until
/// [`Printer::finish`], because columns are as wide as their widest cell.
pub struct Printer<W: Write, E: Write> {
    opts: Options,
    out: W,
    err: E,
    /// Records printed so far (header and separator decisions, as Hubble).
    line: u64,
    table: TabWriter,
    paint: Paint,
}

impl<W: Write, E: Write> Printer<W, E> {
    /// A printer writing to `out` and `err`.
    pub fn new(opts: Options, out: W, err: E) -> Self {
        let paint = Paint {
            on: opts.color && matches!(opts.output, Output::Compact | Output::Dict),
        };
        Self {
            opts,
            out,
            err,
            line: 0,
            table: TabWriter::default(),
            paint,
        }
    }

    /// Prints one response.
    pub fn write_response(&mut self, res: &GetFlowsResponse) -> Result<(), PrintError> {
        match &res.response_types {
            Some(get_flows_response::ResponseTypes::Flow(f)) => self.write_flow(res, f),
            Some(get_flows_response::ResponseTypes::LostEvents(l)) => self.write_lost(res, l),
            Some(get_flows_response::ResponseTypes::NodeStatus(s)) => {
                self.write_node_status(res, s)
            }
            None => Ok(()),
        }
    }

    /// Flushes what is buffered (the table) and returns the writers.
    pub fn finish(mut self) -> Result<(W, E), PrintError> {
        if self.opts.output == Output::Table {
            self.out.write_all(self.table.render().as_bytes())?;
        }
        self.out.flush()?;
        self.err.flush()?;
        Ok((self.out, self.err))
    }

    fn write_flow(&mut self, res: &GetFlowsResponse, f: &pf::Flow) -> Result<(), PrintError> {
        let o = &self.opts;
        let p = self.paint;
        match o.output {
            Output::JsonPb => {
                self.out.write_all(json_line(res).as_bytes())?;
                return Ok(());
            }
            Output::Table => {
                let (src, dst) = host_names(f, o.ip_translation, p);
                if self.line == 0 {
                    let mut header = vec!["TIMESTAMP".to_owned()];
                    if o.node_name {
                        header.push("NODE".to_owned());
                    }
                    header.extend(
                        ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(String::from),
                    );
                    self.table.push(header);
                }
                let mut row = vec![o.time_format.format(f.time.as_ref())];
                if o.node_name {
                    row.push(clean(&f.node_name).into_owned());
                }
                row.extend([
                    src,
                    dst,
                    flow_type(f),
                    verdict(f, p),
                    clean(&summary(f, p)).into_owned(),
                ]);
                self.table.push(row);
            }
            Output::Dict => {
                let (src, dst) = host_names(f, o.ip_translation, p);
                let mut s = String::with_capacity(256);
                if self.line != 0 {
                    s.push_str(DICT_SEPARATOR);
                    s.push('\n');
                }
                let _ = writeln!(s, "  TIMESTAMP: {}", o.time_format.format(f.time.as_ref()));
                if o.node_name {
                    let _ = writeln!(s, "       NODE: {}", clean(&f.node_name));
                }
                let _ = writeln!(s, "     SOURCE: {src}");
                let _ = writeln!(s, "DESTINATION: {dst}");
                let _ = writeln!(s, "       TYPE: {}", flow_type(f));
                let _ = writeln!(s, "    VERDICT: {}", verdict(f, p));
                let _ = writeln!(s, "    SUMMARY: {}", clean(&summary(f, p)));
                self.out.write_all(s.as_bytes())?;
            }
            Output::Compact => {
                let mut s = String::with_capacity(192);
                s.push_str(&compact_line(f, o, p));
                s.push('\n');
                self.out.write_all(s.as_bytes())?;
            }
        }
        self.line += 1;
        Ok(())
    }

    fn write_lost(&mut self, res: &GetFlowsResponse, l: &pf::LostEvent) -> Result<(), PrintError> {
        let o = &self.opts;
        let source = clean(&enum_name(
            pf::LostEventSource::try_from(l.source)
                .ok()
                .map(|e| e.as_str_name()),
            l.source,
        ))
        .into_owned();
        let cpu = l.cpu.unwrap_or(0);
        match o.output {
            Output::JsonPb => {
                self.out.write_all(json_line(res).as_bytes())?;
                return Ok(());
            }
            Output::Table => {
                if self.line == 0 {
                    let mut header = vec!["TIMESTAMP".to_owned()];
                    if o.node_name {
                        header.push("NODE".to_owned());
                    }
                    header.extend(
                        ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(String::from),
                    );
                    self.table.push(header);
                }
                let mut row = vec![String::new()];
                if o.node_name {
                    row.push(String::new());
                }
                row.extend([
                    source,
                    String::new(),
                    "EVENTS LOST".to_owned(),
                    String::new(),
                    format!("CPU({cpu}) - {}", l.num_events_lost),
                ]);
                self.table.push(row);
            }
            Output::Dict => {
                let mut s = String::with_capacity(128);
                if self.line != 0 {
                    s.push_str(DICT_SEPARATOR);
                    s.push('\n');
                }
                s.push_str("  TIMESTAMP: \n");
                if o.node_name {
                    s.push_str("       NODE: \n");
                }
                let _ = writeln!(s, "     SOURCE: {source}");
                s.push_str("       TYPE: EVENTS LOST\n");
                s.push_str("    VERDICT: \n");
                let _ = writeln!(s, "    SUMMARY: CPU({cpu}) - {}", l.num_events_lost);
                self.out.write_all(s.as_bytes())?;
            }
            Output::Compact => {
                let s = format!("EVENTS LOST: {source} CPU({cpu}) {}\n", l.num_events_lost);
                self.out.write_all(s.as_bytes())?;
            }
        }
        self.line += 1;
        Ok(())
    }

    /// Node status events come from Hubble Relay; like Hubble, only errors
    /// and unavailable nodes are shown unless debugging, and on stderr.
    fn write_node_status(
        &mut self,
        res: &GetFlowsResponse,
        s: &NodeStatusEvent,
    ) -> Result<(), PrintError> {
        let state = NodeState::try_from(s.state_change).ok();
        if !self.opts.debug
            && !matches!(
                state,
                Some(NodeState::NodeError | NodeState::NodeUnavailable)
            )
        {
            return Ok(());
        }
        if self.opts.ignore_stderr {
            return Ok(());
        }
        let o = &self.opts;
        let ts = o.time_format.format(res.time.as_ref());
        let names = clean(&join_with_cut_off(&s.node_names, ", ", NODE_NAMES_CUT_OFF)).into_owned();
        let text = match o.output {
            Output::JsonPb => json_line(res),
            Output::Dict => {
                let mut t = String::new();
                if self.line != 0 {
                    t.push_str(DICT_SEPARATOR);
                    t.push('\n');
                } else {
                    self.line += 1;
                }
                let message = if s.message.is_empty() {
                    "N/A".to_owned()
                } else {
                    clean(&go_quote(&s.message)).into_owned()
                };
                let _ = writeln!(t, "  TIMESTAMP: {ts}");
                let _ = writeln!(
                    t,
                    "      STATE: {}",
                    enum_name(state.map(|v| v.as_str_name()), s.state_change)
                );
                let _ = writeln!(t, "      NODES: {names}");
                let _ = writeln!(t, "    MESSAGE: {message}");
                t
            }
            Output::Compact | Output::Table => {
                let n = s.node_names.len();
                let prefix = format!("{ts} [{}]", clean(&res.node_name));
                let line = match state {
                    Some(NodeState::NodeConnected) => {
                        format!("{prefix}: Receiving flows from {n} nodes: {names}")
                    }
                    Some(NodeState::NodeUnavailable) => {
                        format!("{prefix}: {n} nodes are unavailable: {names}")
                    }
                    Some(NodeState::NodeGone) => {
                        format!("{prefix}: {n} nodes removed from cluster: {names}")
                    }
                    Some(NodeState::NodeError) => format!(
                        "{prefix}: Error {} on {n} nodes: {names}",
                        clean(&go_quote(&s.message))
                    ),
                    _ => format!(
                        "{prefix}: unknown node status event: state {} nodes [{names}]",
                        s.state_change
                    ),
                };
                line + "\n"
            }
        };
        self.err.write_all(text.as_bytes())?;
        Ok(())
    }
}

/// A response as one line of protobuf JSON (the `.proto` field names, as
/// Hubble's `jsonpb`), with its newline.
fn json_line(res: &GetFlowsResponse) -> String {
    let mut s = crate::json::response_to_json(res).to_string();
    s.push('\n');
    s
}

/// The compact line of a flow, without the newline.
pub fn compact_line(f: &pf::Flow, o: &Options, p: Paint) -> String {
    let (mut src, mut dst) = host_names(f, o.ip_translation, p);
    let mut src_id = p.identity(&identity_text(f.source.as_ref().map_or(0, |e| e.identity)));
    let mut dst_id = p.identity(&identity_text(
        f.destination.as_ref().map_or(0, |e| e.identity),
    ));
    let arrow = match f.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            // A reply is printed from the initiator's side.
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
    };
    let node = if o.node_name {
        format!(" [{}]", clean(&f.node_name))
    } else {
        String::new()
    };
    format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
        o.time_format.format(f.time.as_ref()),
        flow_type(f),
        verdict(f, p),
        clean(&summary(f, p)),
    )
}

/// ANSI colours as Hubble uses them (fatih/color sequences); a no-op when off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Paint {
    /// Whether to colour.
    pub on: bool,
}

impl Paint {
    fn wrap(self, code: u8, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn red(self, s: &str) -> String {
        self.wrap(31, s)
    }
    fn green(self, s: &str) -> String {
        self.wrap(32, s)
    }
    fn yellow(self, s: &str) -> String {
        self.wrap(33, s)
    }
    fn magenta(self, s: &str) -> String {
        self.wrap(35, s)
    }
    fn cyan(self, s: &str) -> String {
        self.wrap(36, s)
    }
    fn host(self, s: &str) -> String {
        self.cyan(s)
    }
    fn port(self, s: &str) -> String {
        self.yellow(s)
    }
    fn identity(self, s: &str) -> String {
        self.magenta(s)
    }
}

/// Replaces what could steer a terminal (`ESC`, `CR`) in text from the
/// server, as Hubble's terminal escaper does.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.contains(['\x1b', '\r']) {
        Cow::Owned(s.replace('\x1b', "^[").replace('\r', "\\r"))
    } else {
        Cow::Borrowed(s)
    }
}

/// An enum's `.proto` name, or its number when this build does not know it
/// (what Go's `String()` prints).
fn enum_name(name: Option<&'static str>, number: i32) -> Cow<'static, str> {
    match name {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(number.to_string()),
    }
}

/// Cilium's reserved security identities, by number.
pub const RESERVED_IDENTITIES: &[(u32, &str)] = &[
    (0, "unknown"),
    (1, "host"),
    (2, "world"),
    (3, "unmanaged"),
    (4, "health"),
    (5, "init"),
    (6, "remote-node"),
    (7, "kube-apiserver"),
    (8, "ingress"),
    (9, "world-ipv4"),
    (10, "world-ipv6"),
    (11, "encrypted-overlay"),
];

/// `(name)` for a reserved identity, `(ID:n)` otherwise.
pub fn identity_text(identity: u32) -> String {
    match RESERVED_IDENTITIES.iter().find(|(n, _)| *n == identity) {
        Some((_, name)) => format!("({name})"),
        None => format!("(ID:{identity})"),
    }
}

/// L4 ports as text; empty for protocols without ports.
fn ports(f: &pf::Flow) -> (String, String) {
    use pf::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (t.source_port.to_string(), t.destination_port.to_string()),
        Some(Protocol::Udp(u)) => (u.source_port.to_string(), u.destination_port.to_string()),
        Some(Protocol::Sctp(s)) => (s.source_port.to_string(), s.destination_port.to_string()),
        _ => (String::new(), String::new()),
    }
}

/// Source and destination as Hubble prints them: `namespace/pod:port`, the
/// service, DNS names or the address, `[v6]:port`; MAC addresses for
/// non-IP flows.
pub fn host_names(f: &pf::Flow, translate: bool, p: Paint) -> (String, String) {
    let Some(ip) = &f.ip else {
        return match &f.ethernet {
            Some(eth) => (
                p.host(&clean(&eth.source)),
                p.host(&clean(&eth.destination)),
            ),
            None => (String::new(), String::new()),
        };
    };
    let (sport, dport) = ports(f);
    let side = |addr: &str,
                port: &str,
                ep: Option<&pf::Endpoint>,
                svc: Option<&pf::Service>,
                names: &[String]| {
        let (mut ns, pod) = ep.map_or(("", ""), |e| (e.namespace.as_str(), e.pod_name.as_str()));
        let mut svc_name = "";
        if let Some(s) = svc {
            ns = s.namespace.as_str();
            svc_name = s.name.as_str();
        }
        let host = if !translate {
            addr.to_owned()
        } else if !pod.is_empty() {
            join_path(ns, pod)
        } else if !svc_name.is_empty() {
            join_path(ns, svc_name)
        } else if !names.is_empty() {
            names.join(",")
        } else {
            addr.to_owned()
        };
        let host = clean(&host).into_owned();
        let text = if !port.is_empty() && port != "0" {
            join_host_port(&host, &p.port(port))
        } else {
            host
        };
        p.host(&text)
    };
    (
        side(
            &ip.source,
            &sport,
            f.source.as_ref(),
            f.source_service.as_ref(),
            &f.source_names,
        ),
        side(
            &ip.destination,
            &dport,
            f.destination.as_ref(),
            f.destination_service.as_ref(),
            &f.destination_names,
        ),
    )
}

/// `ns/name`, or `name` without a namespace (Go's `path.Join` for these).
fn join_path(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}/{name}")
    }
}

/// `host:port`, `[host]:port` when the host holds a colon (IPv6).
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The TYPE column: the observation point of a trace, the reason of a drop,
/// the L7 record type, and so on, with Cilium's names.
pub fn flow_type(f: &pf::Flow) -> String {
    if let Some(l7) = &f.l7 {
        use pf::layer7::Record;
        let mut l7_type = enum_name(
            pf::L7FlowType::try_from(l7.r#type)
                .ok()
                .map(|t| t.as_str_name()),
            l7.r#type,
        )
        .to_lowercase();
        #[allow(deprecated)]
        let protocol = match &l7.record {
            Some(Record::Http(_)) => "http",
            Some(Record::Dns(d)) => {
                l7_type.push(' ');
                l7_type.push_str(&clean(&d.observation_source));
                "dns"
            }
            Some(Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        return format!("{protocol}-{l7_type}");
    }
    let Some(et) = &f.event_type else {
        return "UNKNOWN".to_owned();
    };
    let sub = et.sub_type as u8;
    match et.r#type {
        message_type::TRACE => trace_point_name(sub)
            .map(str::to_owned)
            .unwrap_or_else(|| sub.to_string()),
        message_type::DROP => match drop_reason_text(sub) {
            Some(text) => text.to_owned(),
            None => format!("{sub}, 0"),
        },
        message_type::POLICY_VERDICT => format!(
            "policy-verdict:{} {}",
            policy_match_name(f.policy_match_type),
            enum_name(
                pf::TrafficDirection::try_from(f.traffic_direction)
                    .ok()
                    .map(|d| d.as_str_name()),
                f.traffic_direction
            )
        ),
        message_type::CAPTURE => enum_name(
            pf::DebugCapturePoint::try_from(f.debug_capture_point)
                .ok()
                .map(|d| d.as_str_name()),
            f.debug_capture_point,
        )
        .into_owned(),
        message_type::TRACE_SOCK => {
            use pf::SocketTranslationPoint as X;
            match X::try_from(f.sock_xlate_point) {
                Ok(X::SockXlatePointPostDirectionFwd) => "post-xlate-fwd".to_owned(),
                Ok(X::SockXlatePointPostDirectionRev) => "post-xlate-rev".to_owned(),
                Ok(X::SockXlatePointPreDirectionFwd) => "pre-xlate-fwd".to_owned(),
                Ok(X::SockXlatePointPreDirectionRev) => "pre-xlate-rev".to_owned(),
                other => {
                    enum_name(other.ok().map(|x| x.as_str_name()), f.sock_xlate_point).into_owned()
                }
            }
        }
        _ => "UNKNOWN".to_owned(),
    }
}

/// Cilium's names of trace observation points (`event_type.sub_type` of
/// trace events), as `hubble observe --type trace:NAME` takes them.
pub const TRACE_POINTS: &[(u8, &str)] = &[
    (0, "to-endpoint"),
    (1, "to-proxy"),
    (2, "to-host"),
    (3, "to-stack"),
    (4, "to-overlay"),
    (5, "from-endpoint"),
    (6, "from-proxy"),
    (7, "from-host"),
    (8, "from-stack"),
    (9, "from-overlay"),
    (10, "from-network"),
    (11, "to-network"),
    (12, "from-crypto"),
    (13, "to-crypto"),
];

fn trace_point_name(sub: u8) -> Option<&'static str> {
    TRACE_POINTS
        .iter()
        .find(|(n, _)| *n == sub)
        .map(|(_, s)| *s)
}

fn policy_match_name(m: u32) -> &'static str {
    match m {
        0 => "none",
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "unknown",
    }
}

/// Cilium's text for a drop reason code (the sub-type of drop events).
fn drop_reason_text(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "Success",
        2 => "Invalid packet",
        3 => "Interface",
        4 => "Interface Decrypted",
        5 => "LB, sock cgroup: No backend slot entry found",
        6 => "LB, sock cgroup: No backend entry found",
        7 => "LB, sock cgroup: Reverse entry update failed",
        8 => "LB, sock cgroup: Reverse entry stale",
        9 => "Fragmented packet",
        10 => "Fragmented packet entry update failed",
        11 => "Missed tail call to custom program",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        148 => "Error retrieving tunnel options",
        149 => "Invalid Geneve option",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        195 => "Traffic is unencrypted",
        196 => "TTL exceeded",
        197 => "No node ID found",
        198 => "Rate limited",
        _ => return None,
    })
}

/// The VERDICT column, policy-verdict events in their own words, coloured
/// as Hubble does.
fn verdict(f: &pf::Flow, p: Paint) -> String {
    use pf::Verdict as V;
    let policy = f
        .event_type
        .as_ref()
        .is_some_and(|e| e.r#type == message_type::POLICY_VERDICT);
    let v = V::try_from(f.verdict).ok();
    let name = enum_name(v.map(|v| v.as_str_name()), f.verdict);
    match v {
        Some(V::Forwarded | V::Redirected) => p.green(if policy { "ALLOWED" } else { &name }),
        Some(V::Dropped | V::Error) => p.red(if policy { "DENIED" } else { &name }),
        Some(V::Audit) => p.yellow(if policy { "AUDITED" } else { &name }),
        Some(V::Traced | V::Translated) => p.yellow(&name),
        _ => name.into_owned(),
    }
}

/// The SUMMARY column: the IP trace id, the flow's summary, the auth type.
fn summary(f: &pf::Flow, p: Paint) -> String {
    let mut s = String::new();
    if let Some(t) = &f.ip_trace_id
        && t.trace_id > 0
    {
        let _ = write!(s, "IP Trace ID: {}; ", t.trace_id);
    }
    s.push_str(&f.summary);
    match pf::AuthType::try_from(f.auth_type) {
        Ok(pf::AuthType::Disabled) => {}
        Ok(pf::AuthType::TestAlwaysFail) => {
            s.push_str("; ");
            s.push_str(&p.red("TEST_ALWAYS_FAIL"));
        }
        other => {
            let name = enum_name(other.ok().map(|a| a.as_str_name()), f.auth_type);
            s.push_str("; ");
            s.push_str(&p.green(&name));
        }
    }
    s
}

/// Joins names, leaving out those past `target` bytes (always one at least)
/// and saying how many were left out.
fn join_with_cut_off(elems: &[String], sep: &str, target: usize) -> String {
    let mut len = 0;
    let mut end = elems.len();
    for (i, e) in elems.iter().enumerate() {
        len += e.len() + sep.len();
        if len > target && i > 0 {
            end = i;
            break;
        }
    }
    let joined = elems[..end].join(sep);
    match elems.len() - end {
        0 => joined,
        n => format!("{joined} (and {n} more)"),
    }
}

/// A double-quoted string with Go's `%q` escapes for the common cases.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `1,234,567`.
pub fn uint64_grouping(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The lines `hubble status` prints for a `ServerStatus` answer
/// (`Current/Max Flows`, `Flows/s`, `Connected Nodes`, unavailable nodes),
/// each ending in a newline.
pub fn server_status_compact(res: &ServerStatusResponse) -> String {
    let mut s = String::new();
    let ratio = if res.max_flows > 0 {
        format!(
            " ({:.2}%)",
            res.num_flows as f64 / res.max_flows as f64 * 100.0
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Current/Max Flows: {}/{}{ratio}",
        uint64_grouping(res.num_flows),
        uint64_grouping(res.max_flows)
    );
    let uptime = res.uptime_ns as f64 / 1e9;
    let rate = if res.flows_rate > 0.0 {
        format!("{:.2}", res.flows_rate)
    } else if uptime > 0.0 {
        format!("{:.2}", res.seen_flows as f64 / uptime)
    } else {
        "N/A".to_owned()
    };
    let _ = writeln!(s, "Flows/s: {rate}");
    if let Some(connected) = res.num_connected_nodes {
        let total = res
            .num_unavailable_nodes
            .map(|u| format!("/{}", u64::from(u) + u64::from(connected)))
            .unwrap_or_default();
        let _ = writeln!(s, "Connected Nodes: {connected}{total}");
    }
    if let Some(unavailable) = res.num_unavailable_nodes.filter(|n| *n > 0) {
        if res.unavailable_nodes.is_empty() {
            let _ = writeln!(s, "Unavailable Nodes: {unavailable}");
        } else {
            let mut nodes: Vec<String> = res
                .unavailable_nodes
                .iter()
                .map(|n| clean(n).into_owned())
                .collect();
            nodes.sort();
            if unavailable as usize > nodes.len() {
                nodes.push(format!(
                    "and {} more...",
                    unavailable as usize - nodes.len()
                ));
            }
            let _ = writeln!(
                s,
                "Unavailable Nodes: {unavailable}\n  - {}",
                nodes.join("\n  - ")
            );
        }
    }
    s
}

/// Go's `text/tabwriter` as Hubble configures it (minimum width 2, padding
/// 3, spaces): cells end at a tab, a column is as wide as its widest cell
/// plus the padding across the run of lines that have it, and the last cell
/// of a line is not aligned.
#[derive(Default)]
struct TabWriter {
    /// Each line's cells; all but the last were tab-terminated.
    lines: Vec<Vec<String>>,
}

impl TabWriter {
    const MIN_WIDTH: usize = 2;
    const PADDING: usize = 3;

    fn push(&mut self, cells: Vec<String>) {
        self.lines.push(cells);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let mut widths = Vec::new();
        self.format(&mut out, &mut widths, 0, self.lines.len());
        out
    }

    /// Lays out lines `[line0, line1)` whose first `widths.len()` columns
    /// are already sized (the recursion of Go's `format`).
    fn format(&self, out: &mut String, widths: &mut Vec<usize>, line0: usize, line1: usize) {
        let column = widths.len();
        let mut start = line0;
        let mut this = line0;
        while this < line1 {
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            // A run of lines that have a cell in this column.
            self.write_lines(out, widths, start, this);
            start = this;
            let mut width = Self::MIN_WIDTH;
            while this < line1 && column + 1 < self.lines[this].len() {
                let w = self.lines[this][column].chars().count() + Self::PADDING;
                width = width.max(w);
                this += 1;
            }
            widths.push(width);
            self.format(out, widths, start, this);
            widths.pop();
            start = this;
        }
        self.write_lines(out, widths, start, line1);
    }

    fn write_lines(&self, out: &mut String, widths: &[usize], line0: usize, line1: usize) {
        for line in &self.lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if j < widths.len() && j + 1 < line.len() {
                    let w = cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', widths[j].saturating_sub(w)));
                }
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::layer4::Protocol;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    /// 2024-11-29T15:04:05.123Z.
    const T0: i64 = 1_732_892_645;

    fn ep(ns: &str, pod: &str, identity: u32) -> Option<pf::Endpoint> {
        Some(pf::Endpoint {
            id: 0,
            identity,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: vec![format!("k8s:app={pod}")],
            ..Default::default()
        })
    }

    fn tcp(sport: u32, dport: u32, flags: pf::TcpFlags) -> Option<pf::Layer4> {
        Some(pf::Layer4 {
            protocol: Some(Protocol::Tcp(pf::Tcp {
                source_port: sport,
                destination_port: dport,
                flags: Some(flags),
            })),
        })
    }

    fn v4(src: &str, dst: &str) -> Option<pf::Ip> {
        Some(pf::Ip {
            source: src.into(),
            destination: dst.into(),
            ip_version: pf::IpVersion::IPv4 as i32,
            ..Default::default()
        })
    }

    fn trace(sub: i32) -> Option<pf::CiliumEventType> {
        Some(pf::CiliumEventType {
            r#type: message_type::TRACE,
            sub_type: sub,
        })
    }

    fn syn_flow() -> pf::Flow {
        pf::Flow {
            time: ts(T0, 123_000_000),
            uuid: "2f5fd1a0-6d3e-4b8e-9c1f-0a9b8c7d6e5f".into(),
            verdict: pf::Verdict::Forwarded as i32,
            ip: v4("10.0.0.1", "10.0.0.2"),
            l4: tcp(
                43210,
                80,
                pf::TcpFlags {
                    syn: true,
                    ..Default::default()
                },
            ),
            source: ep("x", "a", 1234),
            destination: ep("y", "b", 5678),
            r#type: pf::FlowType::L3L4 as i32,
            node_name: "node-1".into(),
            event_type: trace(0),
            traffic_direction: pf::TrafficDirection::Ingress as i32,
            trace_observation_point: pf::TraceObservationPoint::ToEndpoint as i32,
            is_reply: Some(false),
            summary: "TCP Flags: SYN".into(),
            ..Default::default()
        }
    }

    fn reply_flow() -> pf::Flow {
        pf::Flow {
            ip: v4("10.0.0.2", "10.0.0.1"),
            l4: tcp(
                80,
                43210,
                pf::TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                },
            ),
            source: ep("y", "b", 5678),
            destination: ep("x", "a", 1234),
            event_type: trace(5),
            trace_observation_point: pf::TraceObservationPoint::FromEndpoint as i32,
            is_reply: Some(true),
            summary: "TCP Flags: SYN, ACK".into(),
            ..syn_flow()
        }
    }

    fn udp_world_flow() -> pf::Flow {
        pf::Flow {
            time: ts(T0 + 1, 5_000_000),
            ip: v4("10.0.0.1", "1.1.1.1"),
            l4: Some(pf::Layer4 {
                protocol: Some(Protocol::Udp(pf::Udp {
                    source_port: 53000,
                    destination_port: 53,
                })),
            }),
            source: ep("x", "a", 1234),
            destination: Some(pf::Endpoint {
                identity: 2,
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            event_type: trace(5),
            trace_observation_point: pf::TraceObservationPoint::FromEndpoint as i32,
            is_reply: None,
            summary: "UDP".into(),
            ..syn_flow()
        }
    }

    fn icmp6_flow() -> pf::Flow {
        pf::Flow {
            ip: Some(pf::Ip {
                source: "fd00::1".into(),
                destination: "fd00::2".into(),
                ip_version: pf::IpVersion::IPv6 as i32,
                ..Default::default()
            }),
            l4: Some(pf::Layer4 {
                protocol: Some(Protocol::IcmPv6(pf::IcmPv6 {
                    r#type: 128,
                    code: 0,
                })),
            }),
            source: None,
            destination: None,
            summary: "ICMPv6 EchoRequest".into(),
            ..syn_flow()
        }
    }

    #[allow(deprecated)]
    fn dropped_flow() -> pf::Flow {
        pf::Flow {
            verdict: pf::Verdict::Dropped as i32,
            event_type: Some(pf::CiliumEventType {
                r#type: message_type::DROP,
                sub_type: 133,
            }),
            drop_reason: 133,
            drop_reason_desc: pf::DropReason::PolicyDenied as i32,
            trace_observation_point: 0,
            ..syn_flow()
        }
    }

    fn flow_res(f: pf::Flow) -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(get_flows_response::ResponseTypes::Flow(f)),
        }
    }

    fn lost_res() -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: "node-1".into(),
            time: ts(T0, 0),
            response_types: Some(get_flows_response::ResponseTypes::LostEvents(
                pf::LostEvent {
                    source: pf::LostEventSource::HubbleRingBuffer as i32,
                    num_events_lost: 12,
                    cpu: Some(0),
                    ..Default::default()
                },
            )),
        }
    }

    fn print_all(opts: Options, items: &[GetFlowsResponse]) -> (String, String) {
        let mut p = Printer::new(opts, Vec::new(), Vec::new());
        for r in items {
            p.write_response(r).expect("printing to memory");
        }
        let (out, err) = p.finish().expect("flushing to memory");
        (
            String::from_utf8(out).expect("utf-8 output"),
            String::from_utf8(err).expect("utf-8 output"),
        )
    }

    fn opts(output: Output) -> Options {
        Options {
            output,
            ..Default::default()
        }
    }

    fn representative() -> Vec<GetFlowsResponse> {
        vec![
            flow_res(syn_flow()),
            flow_res(reply_flow()),
            flow_res(udp_world_flow()),
            flow_res(icmp6_flow()),
            flow_res(dropped_flow()),
            lost_res(),
        ]
    }

    #[test]
    fn compact_matches_hubble_lines() {
        let (out, err) = print_all(opts(Output::Compact), &representative());
        let expected = "\
Nov 29 15:04:05.123: x/a:43210 (ID:1234) -> y/b:80 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)
Nov 29 15:04:05.123: x/a:43210 (ID:1234) <- y/b:80 (ID:5678) from-endpoint FORWARDED (TCP Flags: SYN, ACK)
Nov 29 15:04:06.005: x/a:53000 (ID:1234) <> 1.1.1.1:53 (world) from-endpoint FORWARDED (UDP)
Nov 29 15:04:05.123: fd00::1 (unknown) -> fd00::2 (unknown) to-endpoint FORWARDED (ICMPv6 EchoRequest)
Nov 29 15:04:05.123: x/a:43210 (ID:1234) -> y/b:80 (ID:5678) Policy denied DROPPED (TCP Flags: SYN)
EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12
";
        assert_eq!(out, expected);
        assert!(err.is_empty());
    }

    #[test]
    fn compact_with_node_name_numeric_and_v6_ports() {
        let mut f = syn_flow();
        f.ip = Some(pf::Ip {
            source: "fd00::1".into(),
            destination: "fd00::2".into(),
            ip_version: 2,
            ..Default::default()
        });
        let o = Options {
            node_name: true,
            ip_translation: false,
            ..Default::default()
        };
        let (out, _) = print_all(o, &[flow_res(f)]);
        assert_eq!(
            out,
            "Nov 29 15:04:05.123 [node-1]: [fd00::1]:43210 (ID:1234) -> [fd00::2]:80 (ID:5678) \
             to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
    }

    #[test]
    fn compact_names_services_and_dns_names() {
        let mut f = syn_flow();
        f.destination = Some(pf::Endpoint {
            identity: 2,
            ..Default::default()
        });
        f.destination_names = vec!["example.com".into()];
        f.source = None;
        f.source_service = Some(pf::Service {
            name: "web".into(),
            namespace: "shop".into(),
        });
        let (out, _) = print_all(opts(Output::Compact), &[flow_res(f)]);
        assert!(
            out.contains(": shop/web:43210 (unknown) -> example.com:80 (world) "),
            "{out}"
        );
    }

    #[test]
    fn colours_and_terminal_escapes() {
        let mut f = syn_flow();
        f.source = ep("x", "evil\x1b[2Jpod\r", 1234);
        let o = Options {
            color: true,
            ..Default::default()
        };
        let (out, _) = print_all(o, &[flow_res(f)]);
        assert!(out.contains("evil^[[2Jpod\\r"), "{out:?}");
        assert!(!out.contains("\x1b[2J"), "{out:?}");
        // Host in cyan with the port in yellow inside it, identity in
        // magenta, verdict in green.
        assert!(
            out.contains("\x1b[36mx/evil^[[2Jpod\\r:\x1b[33m43210\x1b[0m\x1b[0m"),
            "{out:?}"
        );
        assert!(out.contains("\x1b[35m(ID:1234)\x1b[0m"), "{out:?}");
        assert!(out.contains("\x1b[32mFORWARDED\x1b[0m"), "{out:?}");
        // The table never colours.
        let o = Options {
            color: true,
            output: Output::Table,
            ..Default::default()
        };
        let (out, _) = print_all(o, &[flow_res(syn_flow())]);
        assert!(!out.contains('\x1b'), "{out:?}");
    }

    #[test]
    fn dict_blocks_with_separators() {
        let (out, _) = print_all(opts(Output::Dict), &representative()[..2]);
        let expected = "  TIMESTAMP: Nov 29 15:04:05.123
     SOURCE: x/a:43210
DESTINATION: y/b:80
       TYPE: to-endpoint
    VERDICT: FORWARDED
    SUMMARY: TCP Flags: SYN
------------
  TIMESTAMP: Nov 29 15:04:05.123
     SOURCE: y/b:80
DESTINATION: x/a:43210
       TYPE: from-endpoint
    VERDICT: FORWARDED
    SUMMARY: TCP Flags: SYN, ACK
";
        assert_eq!(out, expected);
        let (out, _) = print_all(opts(Output::Dict), &representative()[4..]);
        let expected = "  TIMESTAMP: Nov 29 15:04:05.123
     SOURCE: x/a:43210
DESTINATION: y/b:80
       TYPE: Policy denied
    VERDICT: DROPPED
    SUMMARY: TCP Flags: SYN
------------
  TIMESTAMP: 
     SOURCE: HUBBLE_RING_BUFFER
       TYPE: EVENTS LOST
    VERDICT: 
    SUMMARY: CPU(0) - 12
";
        assert_eq!(out, expected);
    }

    #[test]
    fn table_aligns_columns_like_go_tabwriter() {
        let (out, _) = print_all(opts(Output::Table), &representative());
        // Each column is as wide as its widest cell plus 3: TIMESTAMP 19+3,
        // SOURCE 18 (HUBBLE_RING_BUFFER)+3, DESTINATION 11+3, TYPE 13+3,
        // VERDICT 9+3; the last column is not padded.
        let row = |c: [&str; 6]| {
            format!(
                "{:<22}{:<21}{:<14}{:<16}{:<12}{}\n",
                c[0], c[1], c[2], c[3], c[4], c[5]
            )
        };
        let t = "Nov 29 15:04:05.123";
        let expected = [
            row([
                "TIMESTAMP",
                "SOURCE",
                "DESTINATION",
                "TYPE",
                "VERDICT",
                "SUMMARY",
            ]),
            row([
                t,
                "x/a:43210",
                "y/b:80",
                "to-endpoint",
                "FORWARDED",
                "TCP Flags: SYN",
            ]),
            row([
                t,
                "y/b:80",
                "x/a:43210",
                "from-endpoint",
                "FORWARDED",
                "TCP Flags: SYN, ACK",
            ]),
            row([
                "Nov 29 15:04:06.005",
                "x/a:53000",
                "1.1.1.1:53",
                "from-endpoint",
                "FORWARDED",
                "UDP",
            ]),
            row([
                t,
                "fd00::1",
                "fd00::2",
                "to-endpoint",
                "FORWARDED",
                "ICMPv6 EchoRequest",
            ]),
            row([
                t,
                "x/a:43210",
                "y/b:80",
                "Policy denied",
                "DROPPED",
                "TCP Flags: SYN",
            ]),
            row([
                "",
                "HUBBLE_RING_BUFFER",
                "",
                "EVENTS LOST",
                "",
                "CPU(0) - 12",
            ]),
        ]
        .concat();
        assert_eq!(out, expected);
        assert!(out.starts_with("TIMESTAMP             SOURCE               DESTINATION   "));
    }

    #[test]
    fn table_is_empty_without_records_and_has_node_column() {
        let (out, _) = print_all(opts(Output::Table), &[]);
        assert_eq!(out, "");
        let o = Options {
            output: Output::Table,
            node_name: true,
            ..Default::default()
        };
        let (out, _) = print_all(o, &[flow_res(syn_flow())]);
        assert_eq!(
            out.lines().next(),
            Some(
                "TIMESTAMP             NODE     SOURCE      DESTINATION   TYPE          VERDICT     SUMMARY"
            )
        );
    }

    #[test]
    fn jsonpb_is_one_protojson_response_per_line() {
        let (out, _) = print_all(opts(Output::JsonPb), &representative());
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 6, "{out}");
        let syn = &lines[0];
        assert_eq!(syn["node_name"], "node-1");
        assert_eq!(syn["time"], "2024-11-29T15:04:05.123Z");
        let f = &syn["flow"];
        assert_eq!(f["verdict"], "FORWARDED");
        assert_eq!(f["IP"]["ipVersion"], "IPv4");
        assert_eq!(f["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(f["source"]["pod_name"], "a");
        assert_eq!(f["Type"], "L3_L4");
        assert_eq!(f["is_reply"], false);
        assert_eq!(f["Summary"], "TCP Flags: SYN");
        assert_eq!(lines[1]["flow"]["is_reply"], true);
        assert!(
            lines[2]["flow"].get("is_reply").is_none(),
            "unknown is_reply is left out"
        );
        assert_eq!(lines[2]["flow"]["l4"]["UDP"]["destination_port"], 53);
        assert_eq!(lines[3]["flow"]["l4"]["ICMPv6"]["type"], 128);
        assert_eq!(lines[4]["flow"]["drop_reason_desc"], "POLICY_DENIED");
        let lost = &lines[5]["lost_events"];
        assert_eq!(lost["source"], "HUBBLE_RING_BUFFER");
        assert_eq!(lost["num_events_lost"], "12");
        assert_eq!(lost["cpu"], 0);
        // Nothing else is printed around the objects.
        assert!(out.ends_with("}\n") && !out.contains("}{"), "{out}");
    }

    #[test]
    fn time_formats() {
        let t = Timestamp {
            seconds: T0,
            nanos: 120_450_000,
        };
        let cases = [
            (TimeFormat::StampMilli, "Nov 29 15:04:05.120"),
            (TimeFormat::YearMonthDay, "2024-11-29"),
            (TimeFormat::YearMonthDayHour, "2024-11-29T15Z"),
            (TimeFormat::YearMonthDayHourMinute, "2024-11-29T15:04Z"),
            (TimeFormat::Rfc3339, "2024-11-29T15:04:05Z"),
            (TimeFormat::Rfc3339Milli, "2024-11-29T15:04:05.12Z"),
            (TimeFormat::Rfc3339Micro, "2024-11-29T15:04:05.12045Z"),
            (TimeFormat::Rfc3339Nano, "2024-11-29T15:04:05.12045Z"),
            (TimeFormat::Rfc1123Z, "Fri, 29 Nov 2024 15:04:05 +0000"),
        ];
        for (f, want) in cases {
            assert_eq!(f.format(Some(&t)), want, "{f:?}");
        }
        // Single-digit days are space padded.
        let early = Timestamp {
            seconds: 1_733_011_200, // 2024-12-01T00:00:00Z
            nanos: 0,
        };
        assert_eq!(
            TimeFormat::StampMilli.format(Some(&early)),
            "Dec  1 00:00:00.000"
        );
        assert_eq!(
            TimeFormat::Rfc3339Milli.format(Some(&early)),
            "2024-12-01T00:00:00Z"
        );
        assert_eq!(TimeFormat::StampMilli.format(None), "N/A");
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(TimeFormat::StampMilli.format(Some(&bad)), "N/A");
        assert_eq!("rfc3339nano".parse(), Ok(TimeFormat::Rfc3339Nano));
        assert!("bogus".parse::<TimeFormat>().is_err());
    }

    #[test]
    fn flow_types_of_other_events() {
        let mut f = syn_flow();
        f.event_type = Some(pf::CiliumEventType {
            r#type: message_type::POLICY_VERDICT,
            sub_type: 0,
        });
        f.policy_match_type = 2;
        f.traffic_direction = pf::TrafficDirection::Egress as i32;
        assert_eq!(flow_type(&f), "policy-verdict:L3-L4 EGRESS");
        assert_eq!(verdict(&f, Paint::default()), "ALLOWED");
        f.event_type = trace(42);
        assert_eq!(flow_type(&f), "42");
        f.event_type = Some(pf::CiliumEventType {
            r#type: message_type::DROP,
            sub_type: 250,
        });
        assert_eq!(flow_type(&f), "250, 0");
        f.event_type = None;
        assert_eq!(flow_type(&f), "UNKNOWN");
        f.l7 = Some(pf::Layer7 {
            r#type: pf::L7FlowType::Request as i32,
            record: Some(pf::layer7::Record::Dns(pf::Dns {
                query: "example.com.".into(),
                observation_source: "proxy".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        assert_eq!(flow_type(&f), "dns-request proxy");
    }

    #[test]
    fn non_ip_flows_print_mac_addresses() {
        let mut f = syn_flow();
        f.ip = None;
        f.l4 = None;
        f.ethernet = Some(pf::Ethernet {
            source: "aa:bb:cc:dd:ee:01".into(),
            destination: "ff:ff:ff:ff:ff:ff".into(),
        });
        let line = compact_line(&f, &Options::default(), Paint::default());
        assert!(
            line.contains(": aa:bb:cc:dd:ee:01 (ID:1234) -> ff:ff:ff:ff:ff:ff (ID:5678) "),
            "{line}"
        );
    }

    #[test]
    fn node_status_goes_to_stderr_when_it_matters() {
        let status = |state: NodeState| GetFlowsResponse {
            node_name: "relay".into(),
            time: ts(T0, 0),
            response_types: Some(get_flows_response::ResponseTypes::NodeStatus(
                NodeStatusEvent {
                    state_change: state as i32,
                    node_names: vec!["n1".into(), "n2".into()],
                    message: "boom".into(),
                },
            )),
        };
        let items = [
            status(NodeState::NodeConnected),
            status(NodeState::NodeUnavailable),
            status(NodeState::NodeError),
        ];
        let (out, err) = print_all(opts(Output::Compact), &items);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "Nov 29 15:04:05.000 [relay]: 2 nodes are unavailable: n1, n2\n\
             Nov 29 15:04:05.000 [relay]: Error \"boom\" on 2 nodes: n1, n2\n"
        );
        let o = Options {
            debug: true,
            ..Default::default()
        };
        let (_, err) = print_all(o, &items[..1]);
        assert_eq!(
            err,
            "Nov 29 15:04:05.000 [relay]: Receiving flows from 2 nodes: n1, n2\n"
        );
        let o = Options {
            ignore_stderr: true,
            ..Default::default()
        };
        let (_, err) = print_all(o, &items);
        assert_eq!(err, "");
    }

    #[test]
    fn server_status_lines() {
        let res = ServerStatusResponse {
            num_flows: 4095,
            max_flows: 4095,
            seen_flows: 123_456,
            uptime_ns: 10_000_000_000,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            flows_rate: 12.344,
            ..Default::default()
        };
        assert_eq!(
            server_status_compact(&res),
            "Current/Max Flows: 4,095/4,095 (100.00%)\nFlows/s: 12.34\nConnected Nodes: 1/1\n"
        );
        let res = ServerStatusResponse {
            num_flows: 0,
            max_flows: 0,
            seen_flows: 50,
            uptime_ns: 20_000_000_000,
            num_connected_nodes: None,
            num_unavailable_nodes: Some(3),
            unavailable_nodes: vec!["b".into(), "a".into()],
            ..Default::default()
        };
        assert_eq!(
            server_status_compact(&res),
            "Current/Max Flows: 0/0\nFlows/s: 2.50\nUnavailable Nodes: 3\n  - a\n  - b\n  - and 1 more...\n"
        );
        assert_eq!(uint64_grouping(0), "0");
        assert_eq!(uint64_grouping(999), "999");
        assert_eq!(uint64_grouping(1000), "1,000");
        assert_eq!(uint64_grouping(65_535_000), "65,535,000");
    }

    #[test]
    fn output_names() {
        assert_eq!("json".parse(), Ok(Output::JsonPb));
        assert_eq!("jsonpb".parse(), Ok(Output::JsonPb));
        assert_eq!("tab".parse(), Ok(Output::Table));
        let err = "yaml".parse::<Output>().expect_err("unknown format");
        assert!(err.contains("invalid output format: yaml"), "{err}");
    }
}
