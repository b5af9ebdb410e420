//! `weir observe`: `hubble observe`'s command line over Weir's flow API, and
//! the `hubble status` lines that `weir status` shows.
//!
//! The flags are Hubble's, with the same names, short options and meaning;
//! [`FilterBuilder`] turns the filter flags into `FlowFilter`s the way the
//! Hubble CLI does (flags of one kind OR their values, different flags AND,
//! an either-side flag such as `--pod` becomes two filters, `--not` sends the
//! next filter flag to the blacklist), so a request is what `hubble observe`
//! would send. Parsing, validation and request building are pure functions;
//! [`run`] adds the connection, the stream, Ctrl-C, and one-line errors with
//! exit status 64 for usage and 1 for connection or RPC failures.
//!
//! Owns the command only: the wire types, printer and JSON live in
//! `weir-api`, the connection in `weir-api-net`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Arg, ArgAction, ArgMatches, Command};
use weir_api::printer::{self, Output, PrintError, Printer, TimeFormat};
use weir_api::proto::flow as pf;
use weir_api::proto::observer::observer_client::ObserverClient;
use weir_api::proto::observer::{GetFlowsRequest, ServerStatusRequest};
use weir_api_net::{Address, ClientTarget, ClientTls, ConnectFailure, NetError};

/// Exit status of a usage error (a bad flag value, flags that conflict).
pub const EXIT_USAGE: u8 = crate::cli::EXIT_USAGE;
/// Exit status when the flow API cannot be reached or a call fails.
pub const EXIT_FAILURE: u8 = 1;
/// Default `--server`: the flow API's unix socket.
pub const DEFAULT_SERVER: &str = "unix:///var/run/weir/hubble.sock";
/// Flows printed when no selector is given (Hubble's default).
pub const DEFAULT_LAST: u64 = 20;
/// Fields requested by `--use-default-field-masks`: what the text formats
/// print (Hubble's list).
pub const DEFAULT_FIELD_MASK: &[&str] = &[
    "time",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "source_service",
    "destination_service",
    "l4",
    "IP",
    "ethernet",
    "l7",
    "Type",
    "node_name",
    "is_reply",
    "event_type",
    "verdict",
    "Summary",
];
/// The gRPC health service name Hubble checks.
const OBSERVER_SERVICE: &str = "observer.Observer";
/// How long `weir observe` waits for the local API when explaining why the
/// flow API is unreachable.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong, each with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A flag's value is wrong or flags contradict each other (exit 64).
    #[error("{0}")]
    Usage(String),
    /// A file named on the command line cannot be used (exit 64).
    #[error("cannot read {flag} {path}: {source}")]
    File {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The flow API could not be reached; the message says why and what to
    /// do (exit 1).
    #[error("{0}")]
    Unreachable(String),
    /// The server refused the call or the stream broke (exit 1).
    #[error("{0}")]
    Rpc(String),
    /// Writing the output failed (exit 1).
    #[error(transparent)]
    Print(#[from] PrintError),
}

impl ObserveError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ObserveError::Usage(_) | ObserveError::File { .. } => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

fn usage(msg: impl Into<String>) -> ObserveError {
    ObserveError::Usage(msg.into())
}

/// Observe flows through the flow API, with `hubble observe`'s flags and
/// output formats.
///
/// Without selectors it prints the last 20 flows; filter flags of one kind
/// match any of their values, different flags must all match, and `--not`
/// negates the filter flag after it. The flow API is off by default: turn it
/// on with `weir flows enable`.
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveOpts {
    /// Get every flow in the server's buffer (best with filters).
    #[arg(long, help_heading = "Selectors")]
    pub all: bool,
    /// Get the first N flows in the buffer.
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub first: Option<u64>,
    /// Keep printing new flows as they arrive.
    #[arg(long, short = 'f', help_heading = "Selectors")]
    pub follow: bool,
    /// Get the last N flows in the buffer [default: 20 when no other selector is given].
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub last: Option<u64>,
    /// Only flows since this time: relative (30s, 5m, 1h30m) or a date
    /// (2006-01-02, 2006-01-02T15Z, 2006-01-02T15:04Z, RFC 3339, RFC 1123Z).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub since: Option<String>,
    /// Only flows until this time (same forms as --since; ignored with --follow).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub until: Option<String>,

    /// Output format: compact, dict, json (= jsonpb), jsonpb or table.
    #[arg(
        long,
        short = 'o',
        default_value = "compact",
        value_name = "FORMAT",
        help_heading = "Formatting"
    )]
    pub output: String,
    /// Print the node name of each flow.
    #[arg(long, help_heading = "Formatting")]
    pub print_node_name: bool,
    /// Time layout of the text formats: StampMilli, YearMonthDay,
    /// YearMonthDayHour, YearMonthDayHourMinute, RFC3339, RFC3339Milli,
    /// RFC3339Micro, RFC3339Nano or RFC1123Z.
    #[arg(
        long,
        default_value = "StampMilli",
        value_name = "FORMAT",
        help_heading = "Formatting"
    )]
    pub time_format: String,
    /// Colour compact and dict output: auto, always or never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"], help_heading = "Formatting")]
    pub color: String,
    /// Show pod, service and DNS names instead of addresses when known.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "BOOL",
        help_heading = "Formatting"
    )]
    pub ip_translation: bool,
    /// Show addresses only (no names).
    #[arg(long, help_heading = "Formatting")]
    pub numeric: bool,

    /// Do not print warnings and node status events on standard error.
    #[arg(long, short = 's', help_heading = "Other")]
    pub silent_errors: bool,
    /// Print the request's allowlist and denylist filters and exit.
    #[arg(long, help_heading = "Other")]
    pub print_raw_filters: bool,
    /// Only these fields of each flow (comma-separated paths, e.g.
    /// time,source.pod_name,verdict); JSON output only.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PATHS",
        alias = "experimental-field-mask",
        help_heading = "Other"
    )]
    pub field_mask: Vec<String>,
    /// Ask only for the fields the text formats print.
    #[arg(
        long,
        alias = "experimental-use-default-field-masks",
        help_heading = "Other"
    )]
    pub use_default_field_masks: bool,
    /// Also print informational node status events.
    #[arg(long, short = 'D', help_heading = "Other")]
    pub debug: bool,

    /// Flow API to query: unix:///path, host:port or tls://host:port
    /// [env: WEIR_SERVER, else HUBBLE_SERVER] [default: unix:///var/run/weir/hubble.sock].
    #[arg(long, value_name = "ADDRESS", help_heading = "Server")]
    pub server: Option<String>,
    /// How long to wait for the connection (e.g. 5s, 1m).
    #[arg(
        long,
        default_value = "5s",
        value_name = "DURATION",
        help_heading = "Server"
    )]
    pub timeout: String,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// The agent's local API socket, asked why the flow API is unreachable.
    #[arg(long, env = "WEIR_SOCKET", default_value = weir_localapi::DEFAULT_SOCKET, help_heading = "Server")]
    pub socket: PathBuf,
}

/// How to reach a flow API over TLS and with a bearer token: the flags
/// `weir observe` and `weir policy what-if --server` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerTlsArgs {
    /// Use TLS (implied by a tls:// server).
    #[arg(long, help_heading = "Server")]
    pub tls: bool,
    /// Do not verify the server's certificate (unsafe; see --tls-server-name).
    #[arg(long, help_heading = "Server")]
    pub tls_allow_insecure: bool,
    /// PEM CA files to verify the server with (comma-separated or repeated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FILES",
        help_heading = "Server"
    )]
    pub tls_ca_cert_files: Vec<PathBuf>,
    /// PEM client certificate for mTLS (implies --tls).
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM key of the client certificate (implies --tls).
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Name to verify the server certificate against.
    #[arg(long, value_name = "NAME", help_heading = "Server")]
    pub tls_server_name: Option<String>,
    /// File holding the bearer token to send (first non-comment line).
    #[arg(
        long,
        env = "WEIR_TOKEN_FILE",
        value_name = "FILE",
        help_heading = "Server"
    )]
    pub token_file: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The client's TLS settings (without the token, read at run time from
    /// [`Self::token_file`] by [`Self::client_tls_with_token`]).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            enabled: self.tls
                || self.tls_client_cert_file.is_some()
                || self.tls_client_key_file.is_some(),
            ca_files: self.tls_ca_cert_files.clone(),
            client_cert: self.tls_client_cert_file.clone(),
            client_key: self.tls_client_key_file.clone(),
            server_name: self.tls_server_name.clone(),
            allow_insecure: self.tls_allow_insecure,
            token: None,
        }
    }

    /// [`Self::client_tls`] with the token of `--token-file` read now.
    pub fn client_tls_with_token(&self) -> Result<ClientTls, ObserveError> {
        let mut tls = self.client_tls();
        if let Some(path) = &self.token_file {
            tls.token = Some(read_token(path)?);
        }
        Ok(tls)
    }
}

/// One filter flag as given, in command-line order (`--not` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterArg {
    /// The flag's long name without dashes.
    pub flag: &'static str,
    /// Its value (the default for flags given without one).
    pub value: String,
}

/// The parsed `weir observe` command line.
#[derive(Debug, Clone)]
pub struct ObserveArgs {
    /// Every flag but the filters.
    pub opts: ObserveOpts,
    /// The filter flags in the order given, which `--not` depends on.
    pub filters: Vec<FilterArg>,
}

/// How a filter flag is declared.
struct FilterSpec {
    name: &'static str,
    short: Option<char>,
    /// The value used when the flag is given without one (flags like `-4`).
    implicit: Option<&'static str>,
    value_name: &'static str,
    help: &'static str,
}

const fn f(name: &'static str, value_name: &'static str, help: &'static str) -> FilterSpec {
    FilterSpec {
        name,
        short: None,
        implicit: None,
        value_name,
        help,
    }
}

const fn fs(
    name: &'static str,
    short: char,
    value_name: &'static str,
    help: &'static str,
) -> FilterSpec {
    FilterSpec {
        name,
        short: Some(short),
        implicit: None,
        value_name,
        help,
    }
}

const fn switch(
    name: &'static str,
    short: Option<char>,
    implicit: &'static str,
    help: &'static str,
) -> FilterSpec {
    FilterSpec {
        name,
        short,
        implicit: Some(implicit),
        value_name: "VALUE",
        help,
    }
}

/// Every filter flag of `hubble observe`, in its help order.
const FILTER_FLAGS: &[FilterSpec] = &[
    switch(
        "not",
        None,
        "true",
        "Send the next filter flag to the blacklist: --not --from-ip 10.0.0.1",
    ),
    f("uuid", "UUID", "The flow with this identifier"),
    f(
        "node-name",
        "PATTERN",
        "Flows observed on these nodes ([cluster/]name, * wildcards)",
    ),
    f(
        "node-label",
        "SELECTOR",
        "Flows observed on nodes with these labels",
    ),
    f(
        "cluster",
        "NAME",
        "Flows from or to endpoints of this cluster",
    ),
    f(
        "from-cluster",
        "NAME",
        "Flows from endpoints of this cluster",
    ),
    f("to-cluster", "NAME", "Flows to endpoints of this cluster"),
    f(
        "protocol",
        "PROTOCOL",
        "Flows of this L4 or L7 protocol (tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns, kafka)",
    ),
    f(
        "tcp-flags",
        "FLAGS",
        "Flows with all of these TCP flags (comma-separated: syn,ack,fin,rst,psh,urg,ece,cwr,ns)",
    ),
    fs(
        "type",
        't',
        "TYPE[:SUBTYPE]",
        "Flows of this event type: trace[:to-endpoint|from-endpoint|...], drop, capture, l7, policy-verdict, trace-sock, or numbers",
    ),
    f(
        "verdict",
        "VERDICT",
        "Flows with this verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED)",
    ),
    f(
        "drop-reason-desc",
        "REASON",
        "Dropped flows with this drop reason (e.g. POLICY_DENIED)",
    ),
    f(
        "http-status",
        "CODE",
        "HTTP flows with this status code prefix (404, 5+)",
    ),
    f("http-method", "METHOD", "HTTP flows with this method"),
    f("http-path", "REGEX", "HTTP flows whose path matches"),
    f("http-url", "REGEX", "HTTP flows whose URL matches"),
    f("http-header", "KEY:VALUE", "HTTP flows with this header"),
    f("trace-id", "ID", "Flows with this trace id"),
    f("ip-trace-id", "ID", "Flows with this IP trace id"),
    f(
        "fqdn",
        "NAME",
        "Flows from or to this DNS name (* wildcards)",
    ),
    f("from-fqdn", "NAME", "Flows from this DNS name"),
    f("to-fqdn", "NAME", "Flows to this DNS name"),
    f("ip", "IP|CIDR", "Flows from or to this address or CIDR"),
    f("from-ip", "IP|CIDR", "Flows from this address or CIDR"),
    f("to-ip", "IP|CIDR", "Flows to this address or CIDR"),
    f(
        "snat-ip",
        "IP|CIDR",
        "Flows source-NATed to this address or CIDR",
    ),
    switch("ipv4", Some('4'), "v4", "IPv4 flows only"),
    switch("ipv6", Some('6'), "v6", "IPv6 flows only"),
    f(
        "ip-version",
        "VERSION",
        "Flows of this IP version: v4, v6 or none (non-IP)",
    ),
    f(
        "pod",
        "[NS/]POD",
        "Flows from or to pods with this name prefix (namespace default when none is given)",
    ),
    f(
        "from-pod",
        "[NS/]POD",
        "Flows from pods with this name prefix",
    ),
    f("to-pod", "[NS/]POD", "Flows to pods with this name prefix"),
    fs(
        "namespace",
        'n',
        "NAMESPACE",
        "Flows from or to this namespace",
    ),
    f("from-namespace", "NAMESPACE", "Flows from this namespace"),
    f("to-namespace", "NAMESPACE", "Flows to this namespace"),
    switch(
        "all-namespaces",
        Some('A'),
        "true",
        "Flows from or to any namespace",
    ),
    switch(
        "from-all-namespaces",
        None,
        "true",
        "Flows from any namespace",
    ),
    switch("to-all-namespaces", None, "true", "Flows to any namespace"),
    fs(
        "label",
        'l',
        "SELECTOR",
        "Flows from or to endpoints with these labels (app=web, reserved:world)",
    ),
    f(
        "from-label",
        "SELECTOR",
        "Flows from endpoints with these labels",
    ),
    f(
        "to-label",
        "SELECTOR",
        "Flows to endpoints with these labels",
    ),
    f("service", "[NS/]SERVICE", "Flows from or to this service"),
    f("from-service", "[NS/]SERVICE", "Flows from this service"),
    f("to-service", "[NS/]SERVICE", "Flows to this service"),
    f("port", "PORT", "Flows with this source or destination port"),
    f("from-port", "PORT", "Flows with this source port"),
    f("to-port", "PORT", "Flows with this destination port"),
    f(
        "workload",
        "[KIND/]NAME",
        "Flows from or to endpoints of this workload",
    ),
    f(
        "from-workload",
        "[KIND/]NAME",
        "Flows from endpoints of this workload",
    ),
    f(
        "to-workload",
        "[KIND/]NAME",
        "Flows to endpoints of this workload",
    ),
    f(
        "identity",
        "IDENTITY",
        "Flows from or to this security identity (number or reserved name: host, world, ...)",
    ),
    f(
        "from-identity",
        "IDENTITY",
        "Flows from this security identity",
    ),
    f("to-identity", "IDENTITY", "Flows to this security identity"),
    f(
        "traffic-direction",
        "DIRECTION",
        "Flows of this traffic direction: ingress or egress",
    ),
    f(
        "cel-expression",
        "EXPR",
        "Flows matching this CEL expression",
    ),
    f("interface", "NAME", "Flows observed at this interface"),
];

impl clap::FromArgMatches for ObserveArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ObserveArgs {
            opts: ObserveOpts::from_arg_matches(m)?,
            filters: ordered_filters(m),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ObserveArgs {
    fn augment_args(cmd: Command) -> Command {
        add_filter_args(ObserveOpts::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        add_filter_args(ObserveOpts::augment_args_for_update(cmd))
    }
}

fn add_filter_args(cmd: Command) -> Command {
    FILTER_FLAGS.iter().fold(cmd, |cmd, spec| {
        let mut arg = Arg::new(spec.name)
            .long(spec.name)
            .help(spec.help)
            .value_name(spec.value_name)
            .action(ArgAction::Append)
            .help_heading("Filters");
        if let Some(c) = spec.short {
            arg = arg.short(c);
        }
        arg = match spec.implicit {
            // Like Hubble's flags with a default: `-4`, `--not`, `-A`.
            Some(v) => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value(v),
            None => arg.num_args(1).allow_hyphen_values(false),
        };
        cmd.arg(arg)
    })
}

/// The filter flags in command-line order.
fn ordered_filters(m: &ArgMatches) -> Vec<FilterArg> {
    let mut all: Vec<(usize, FilterArg)> = Vec::new();
    for spec in FILTER_FLAGS {
        let (Some(indices), Some(values)) =
            (m.indices_of(spec.name), m.get_many::<String>(spec.name))
        else {
            continue;
        };
        for (i, v) in indices.zip(values) {
            all.push((
                i,
                FilterArg {
                    flag: spec.name,
                    value: v.clone(),
                },
            ));
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, a)| a).collect()
}

/// Groups of filter flags that cannot be used together (within the
/// whitelist or within the blacklist), as Hubble defines them.
const CONFLICTS: &[&[&str]] = &[
    &[
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ],
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    &[
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-all-namespaces",
        "all-namespaces",
    ],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    &["to-pod", "namespace", "all-namespaces"],
    &["from-pod", "namespace", "all-namespaces"],
    &["to-service", "namespace", "all-namespaces"],
    &["from-service", "namespace", "all-namespaces"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
];

/// The filters of one list (whitelist or blacklist) being built: a "left"
/// filter and a "right" one whose union is the list, as in the Hubble CLI.
/// Flags that name a side (`--from-pod`) go into both; flags that name
/// either side (`--pod`) put the source form left and the destination form
/// right. Namespaces are applied at the end to the pod and service filters.
#[derive(Debug, Default)]
struct Tracker {
    left: Option<pf::FlowFilter>,
    right: Option<pf::FlowFilter>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: Vec<&'static str>,
}

impl Tracker {
    fn both(&mut self, update: impl Fn(&mut pf::FlowFilter)) {
        update(self.left.get_or_insert_with(Default::default));
        update(self.right.get_or_insert_with(Default::default));
    }

    fn sides(
        &mut self,
        left: impl FnOnce(&mut pf::FlowFilter),
        right: impl FnOnce(&mut pf::FlowFilter),
    ) {
        left(self.left.get_or_insert_with(Default::default));
        right(self.right.get_or_insert_with(Default::default));
    }

    fn check_conflicts(&self) -> Result<(), ObserveError> {
        for group in CONFLICTS {
            for a in group.iter().filter(|a| self.changed.contains(a)) {
                if let Some(b) = group.iter().find(|b| *b != a && self.changed.contains(b)) {
                    return Err(usage(format!("filters --{a} and --{b} cannot be combined")));
                }
            }
        }
        Ok(())
    }

    fn check_namespaces(&self, ff: Option<&pf::FlowFilter>) -> Result<(), ObserveError> {
        let Some(ff) = ff else { return Ok(()) };
        let conflicts = |ns: &[String], names: &[String]| -> Result<(), ObserveError> {
            for n in ns {
                for name in names {
                    if let Some((prefix, _)) = name.split_once('/')
                        && prefix != n
                    {
                        return Err(usage(format!(
                            "namespace conflict: {n:?} does not contain {name:?}"
                        )));
                    }
                }
            }
            Ok(())
        };
        conflicts(&self.ns, &ff.source_pod)?;
        conflicts(&self.ns, &ff.source_service)?;
        conflicts(&self.ns, &ff.destination_pod)?;
        conflicts(&self.ns, &ff.destination_service)?;
        conflicts(&self.src_ns, &ff.source_pod)?;
        conflicts(&self.src_ns, &ff.source_service)?;
        conflicts(&self.dst_ns, &ff.destination_pod)?;
        conflicts(&self.dst_ns, &ff.destination_service)?;
        let inconsistent = |pods: &[String], services: &[String]| -> Result<(), ObserveError> {
            for pod in pods {
                let Some((pod_ns, _)) = pod.split_once('/') else {
                    continue;
                };
                for svc in services {
                    let svc_ns = svc.split_once('/').map_or("", |(ns, _)| ns);
                    if svc_ns != pod_ns {
                        return Err(usage(format!(
                            "namespace of service {svc:?} conflicts with pod namespace {pod_ns:?}"
                        )));
                    }
                }
            }
            Ok(())
        };
        inconsistent(&ff.source_pod, &ff.source_service)?;
        inconsistent(&ff.destination_pod, &ff.destination_service)
    }

    /// The list's filters: none, one (left and right equal) or two.
    fn into_filters(mut self) -> Vec<pf::FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.ns.is_empty()
            && self.src_ns.is_empty()
            && self.dst_ns.is_empty()
        {
            return Vec::new();
        }
        let mut left = self.left.take().unwrap_or_default();
        let mut right = self.right.take().unwrap_or_default();
        if !self.dst_ns.is_empty() {
            apply_dst_ns(&mut left, &self.dst_ns);
            apply_dst_ns(&mut right, &self.dst_ns);
        }
        if !self.src_ns.is_empty() {
            apply_src_ns(&mut left, &self.src_ns);
            apply_src_ns(&mut right, &self.src_ns);
        }
        if !self.ns.is_empty() {
            apply_src_ns(&mut left, &self.ns);
            apply_dst_ns(&mut right, &self.ns);
        }
        if left == right {
            vec![left]
        } else {
            vec![left, right]
        }
    }
}

/// A namespace alone selects the whole namespace (`ns/`); pod and service
/// names without one get each namespace given.
fn apply_src_ns(ff: &mut pf::FlowFilter, ns: &[String]) {
    if ff.source_pod.is_empty() && ff.source_service.is_empty() {
        ff.source_pod = vec![String::new()];
    }
    ff.source_pod = add_namespaces(&ff.source_pod, ns);
    ff.source_service = add_namespaces(&ff.source_service, ns);
}

fn apply_dst_ns(ff: &mut pf::FlowFilter, ns: &[String]) {
    if ff.destination_pod.is_empty() && ff.destination_service.is_empty() {
        ff.destination_pod = vec![String::new()];
    }
    ff.destination_pod = add_namespaces(&ff.destination_pod, ns);
    ff.destination_service = add_namespaces(&ff.destination_service, ns);
}

fn add_namespaces(names: &[String], ns: &[String]) -> Vec<String> {
    if ns.is_empty() || names.is_empty() {
        return names.to_vec();
    }
    let mut out = Vec::new();
    for name in names {
        if name.contains('/') {
            out.push(name.clone());
        } else {
            out.extend(ns.iter().map(|n| format!("{n}/{name}")));
        }
    }
    out
}

/// Turns filter flags, in command-line order, into the request's whitelist
/// and blacklist.
#[derive(Debug, Default)]
pub struct FilterBuilder {
    whitelist: Option<Tracker>,
    blacklist: Option<Tracker>,
    blacklisting: bool,
}

impl FilterBuilder {
    /// Builds both lists from `args`.
    pub fn build(
        args: &[FilterArg],
    ) -> Result<(Vec<pf::FlowFilter>, Vec<pf::FlowFilter>), ObserveError> {
        let mut b = FilterBuilder::default();
        for a in args {
            b.set(a.flag, &a.value)?;
        }
        b.finish()
    }

    /// Applies one flag.
    pub fn set(&mut self, flag: &'static str, value: &str) -> Result<(), ObserveError> {
        if flag == "not" {
            if self.blacklisting {
                return Err(usage(
                    "consecutive --not flags: each --not negates the one filter flag after it",
                ));
            }
            self.blacklisting = true;
            return Ok(());
        }
        let tracker = if std::mem::take(&mut self.blacklisting) {
            self.blacklist.get_or_insert_with(Default::default)
        } else {
            self.whitelist.get_or_insert_with(Default::default)
        };
        if !tracker.changed.contains(&flag) {
            tracker.changed.push(flag);
        }
        tracker.check_conflicts()?;
        apply(tracker, flag, value)?;
        tracker.check_namespaces(tracker.left.as_ref())?;
        tracker.check_namespaces(tracker.right.as_ref())
    }

    /// The whitelist and blacklist.
    pub fn finish(self) -> Result<(Vec<pf::FlowFilter>, Vec<pf::FlowFilter>), ObserveError> {
        if self.blacklisting {
            return Err(usage(
                "trailing --not: it must be followed by the filter flag to negate",
            ));
        }
        Ok((
            self.whitelist
                .map(Tracker::into_filters)
                .unwrap_or_default(),
            self.blacklist
                .map(Tracker::into_filters)
                .unwrap_or_default(),
        ))
    }
}

fn invalid(flag: &str, value: &str, expected: &str) -> ObserveError {
    usage(format!("invalid --{flag} value {value:?}: {expected}"))
}

/// Applies one filter flag to a list's filters.
fn apply(t: &mut Tracker, flag: &'static str, v: &str) -> Result<(), ObserveError> {
    let s = v.to_owned();
    match flag {
        "uuid" => t.both(|f| f.uuid.push(s.clone())),
        "fqdn" => t.sides(
            |f| f.source_fqdn.push(s.clone()),
            |f| f.destination_fqdn.push(s.clone()),
        ),
        "from-fqdn" => t.both(|f| f.source_fqdn.push(s.clone())),
        "to-fqdn" => t.both(|f| f.destination_fqdn.push(s.clone())),
        "pod" => t.sides(
            |f| f.source_pod.push(s.clone()),
            |f| f.destination_pod.push(s.clone()),
        ),
        "from-pod" => t.both(|f| f.source_pod.push(s.clone())),
        "to-pod" => t.both(|f| f.destination_pod.push(s.clone())),
        "ip" | "from-ip" | "to-ip" | "snat-ip" => {
            check_ip_or_cidr(flag, v)?;
            match flag {
                "ip" => t.sides(
                    |f| f.source_ip.push(s.clone()),
                    |f| f.destination_ip.push(s.clone()),
                ),
                "from-ip" => t.both(|f| f.source_ip.push(s.clone())),
                "to-ip" => t.both(|f| f.destination_ip.push(s.clone())),
                _ => t.both(|f| f.source_ip_xlated.push(s.clone())),
            }
        }
        "ipv4" => t.both(|f| f.ip_version.push(pf::IpVersion::IPv4 as i32)),
        "ipv6" => t.both(|f| f.ip_version.push(pf::IpVersion::IPv6 as i32)),
        "ip-version" => {
            let version =
                ip_version(v).ok_or_else(|| invalid(flag, v, "expected v4, v6 or none"))?;
            t.both(|f| f.ip_version.push(version as i32));
        }
        "label" => t.sides(
            |f| f.source_label.push(s.clone()),
            |f| f.destination_label.push(s.clone()),
        ),
        "from-label" => t.both(|f| f.source_label.push(s.clone())),
        "to-label" => t.both(|f| f.destination_label.push(s.clone())),
        "namespace" => t.ns.push(s),
        "from-namespace" => t.src_ns.push(s),
        "to-namespace" => t.dst_ns.push(s),
        // An empty namespace matches any (the filter becomes `/` + name).
        "all-namespaces" => t.ns.push(String::new()),
        "from-all-namespaces" => t.src_ns.push(String::new()),
        "to-all-namespaces" => t.dst_ns.push(String::new()),
        "service" => t.sides(
            |f| f.source_service.push(s.clone()),
            |f| f.destination_service.push(s.clone()),
        ),
        "from-service" => t.both(|f| f.source_service.push(s.clone())),
        "to-service" => t.both(|f| f.destination_service.push(s.clone())),
        "port" | "from-port" | "to-port" => {
            if v.parse::<u16>().is_err() {
                return Err(invalid(flag, v, "expected a port number (0-65535)"));
            }
            match flag {
                "port" => t.sides(
                    |f| f.source_port.push(s.clone()),
                    |f| f.destination_port.push(s.clone()),
                ),
                "from-port" => t.both(|f| f.source_port.push(s.clone())),
                _ => t.both(|f| f.destination_port.push(s.clone())),
            }
        }
        "trace-id" => t.both(|f| f.trace_id.push(s.clone())),
        "ip-trace-id" => {
            let id = v
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| invalid(flag, v, "expected a number greater than 0"))?;
            t.both(|f| f.ip_trace_id.push(id));
        }
        "verdict" => {
            let verdict = pf::Verdict::from_str_name(&v.to_ascii_uppercase()).ok_or_else(|| {
                invalid(
                    flag,
                    v,
                    "expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED",
                )
            })?;
            t.both(|f| f.verdict.push(verdict as i32));
        }
        "drop-reason-desc" => {
            let reason = pf::DropReason::from_str_name(&v.to_ascii_uppercase())
                .filter(|_| !v.is_empty())
                .ok_or_else(|| {
                    invalid(flag, v, "expected a drop reason name such as POLICY_DENIED")
                })?;
            t.both(|f| f.drop_reason_desc.push(reason as i32));
        }
        "http-status" => t.both(|f| f.http_status_code.push(s.clone())),
        "http-method" => t.both(|f| f.http_method.push(s.clone())),
        "http-path" => t.both(|f| f.http_path.push(s.clone())),
        "http-url" => t.both(|f| f.http_url.push(s.clone())),
        "http-header" => {
            let (key, value) = v
                .split_once(':')
                .ok_or_else(|| invalid(flag, v, "expected NAME:VALUE"))?;
            let header = pf::HttpHeader {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            t.both(|f| f.http_header.push(header.clone()));
        }
        "type" => {
            let et = event_type_filter(v)?;
            t.both(|f| f.event_type.push(et));
        }
        "protocol" => t.both(|f| f.protocol.push(s.clone())),
        "workload" => {
            let w = workload(v);
            t.sides(
                |f| f.source_workload.push(w.clone()),
                |f| f.destination_workload.push(w.clone()),
            );
        }
        "from-workload" => {
            let w = workload(v);
            t.both(|f| f.source_workload.push(w.clone()));
        }
        "to-workload" => {
            let w = workload(v);
            t.both(|f| f.destination_workload.push(w.clone()));
        }
        "identity" | "from-identity" | "to-identity" => {
            let id = parse_identity(v).ok_or_else(|| {
                let names: Vec<&str> = printer::RESERVED_IDENTITIES
                    .iter()
                    .filter(|(n, _)| *n != 0)
                    .map(|(_, name)| *name)
                    .collect();
                invalid(
                    flag,
                    v,
                    &format!("expected a number or one of {}", names.join(", ")),
                )
            })?;
            match flag {
                "identity" => t.sides(
                    |f| f.source_identity.push(id),
                    |f| f.destination_identity.push(id),
                ),
                "from-identity" => t.both(|f| f.source_identity.push(id)),
                _ => t.both(|f| f.destination_identity.push(id)),
            }
        }
        "node-name" => t.both(|f| f.node_name.push(s.clone())),
        "node-label" => t.both(|f| f.node_labels.push(s.clone())),
        "cluster" => t.sides(
            |f| f.source_cluster_name.push(s.clone()),
            |f| f.destination_cluster_name.push(s.clone()),
        ),
        "from-cluster" => t.both(|f| f.source_cluster_name.push(s.clone())),
        "to-cluster" => t.both(|f| f.destination_cluster_name.push(s.clone())),
        "tcp-flags" => {
            let flags = tcp_flags(v).map_err(|bad| {
                invalid(
                    flag,
                    v,
                    &format!(
                        "unknown TCP flag {bad:?} (use syn, ack, fin, rst, psh, urg, ece, cwr, ns)"
                    ),
                )
            })?;
            t.both(|f| f.tcp_flags.push(flags));
        }
        "traffic-direction" => {
            let d = match v.to_ascii_lowercase().as_str() {
                "ingress" => pf::TrafficDirection::Ingress,
                "egress" => pf::TrafficDirection::Egress,
                _ => return Err(invalid(flag, v, "expected ingress or egress")),
            };
            t.both(|f| f.traffic_direction.push(d as i32));
        }
        "cel-expression" => t.both(|f| {
            f.experimental
                .get_or_insert_with(Default::default)
                .cel_expression
                .push(s.clone())
        }),
        "interface" => t.both(|f| {
            f.interface.push(pf::NetworkInterface {
                index: 0,
                name: s.clone(),
            })
        }),
        other => return Err(usage(format!("unknown filter --{other}"))),
    }
    Ok(())
}

/// An address or a CIDR, checked here so a typo is reported before any
/// connection is made.
fn check_ip_or_cidr(flag: &str, v: &str) -> Result<(), ObserveError> {
    let ok = match v.split_once('/') {
        None => v.parse::<std::net::IpAddr>().is_ok(),
        Some((addr, len)) => match (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            flag,
            v,
            "expected an IP address (10.0.0.1) or a CIDR (10.0.0.0/24)",
        ))
    }
}

fn ip_version(v: &str) -> Option<pf::IpVersion> {
    match v.to_ascii_lowercase().as_str() {
        "4" | "v4" | "ipv4" | "ip4" => Some(pf::IpVersion::IPv4),
        "6" | "v6" | "ipv6" | "ip6" => Some(pf::IpVersion::IPv6),
        "none" | "0" | "" => Some(pf::IpVersion::IpNotUsed),
        _ => None,
    }
}

/// `[kind/]name`.
fn workload(v: &str) -> pf::Workload {
    match v.split_once('/') {
        Some((kind, name)) => pf::Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        },
        None => pf::Workload {
            kind: String::new(),
            name: v.to_owned(),
        },
    }
}

/// A reserved identity's name or a number (decimal, 0x hex, 0o or leading
/// 0 octal, 0b binary), as Hubble parses it.
fn parse_identity(v: &str) -> Option<u32> {
    if let Some((id, _)) = printer::RESERVED_IDENTITIES
        .iter()
        .find(|(id, name)| *id != 0 && *name == v)
    {
        return Some(*id);
    }
    let digits: String = v.chars().filter(|c| *c != '_').collect();
    let (radix, body) = match digits.as_bytes() {
        [b'0', b'x' | b'X', ..] => (16, &digits[2..]),
        [b'0', b'o' | b'O', ..] => (8, &digits[2..]),
        [b'0', b'b' | b'B', ..] => (2, &digits[2..]),
        [b'0', _, ..] => (8, &digits[1..]),
        _ => (10, digits.as_str()),
    };
    if body.is_empty() {
        return None;
    }
    u32::from_str_radix(body, radix).ok()
}

fn tcp_flags(v: &str) -> Result<pf::TcpFlags, String> {
    let mut flags = pf::TcpFlags::default();
    for name in v.split(',') {
        match name.to_ascii_uppercase().as_str() {
            "SYN" => flags.syn = true,
            "FIN" => flags.fin = true,
            "RST" => flags.rst = true,
            "PSH" => flags.psh = true,
            "ACK" => flags.ack = true,
            "URG" => flags.urg = true,
            "ECE" => flags.ece = true,
            "CWR" => flags.cwr = true,
            "NS" => flags.ns = true,
            _ => return Err(name.to_owned()),
        }
    }
    Ok(flags)
}

/// Cilium's monitor message type names, as `--type` takes them.
const MESSAGE_TYPES: &[(&str, i32)] = &[
    ("drop", 1),
    ("debug", 2),
    ("capture", 3),
    ("trace", 4),
    ("policy-verdict", 5),
    ("recorder", 6),
    ("trace-sock", 7),
    ("l7", 129),
    ("agent", 130),
];

/// Agent event sub-types by the names Hubble accepts.
const AGENT_SUBTYPES: &[(&str, i32)] = &[
    ("unspecified", 0),
    ("message", 1),
    ("agent-started", 2),
    ("policy-updated", 5),
    ("policy-deleted", 6),
    ("endpoint-regenerate-success", 3),
    ("endpoint-regenerate-failure", 4),
    ("endpoint-created", 7),
    ("endpoint-deleted", 8),
    ("ipcache-upserted", 9),
    ("ipcache-deleted", 10),
];

/// `TYPE[:SUBTYPE]` with names or numbers.
fn event_type_filter(v: &str) -> Result<pf::EventTypeFilter, ObserveError> {
    let (ty, sub) = match v.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (v, None),
    };
    let type_names = || {
        MESSAGE_TYPES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let r#type = match MESSAGE_TYPES.iter().find(|(n, _)| *n == ty) {
        Some((_, n)) => *n,
        None => ty
            .parse::<u32>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                invalid(
                    "type",
                    v,
                    &format!("unknown type {ty:?} (use {} or a number)", type_names()),
                )
            })?,
    };
    let mut filter = pf::EventTypeFilter {
        r#type,
        match_sub_type: false,
        sub_type: 0,
    };
    if let Some(sub) = sub {
        let named = match r#type {
            4 => printer::TRACE_POINTS
                .iter()
                .find(|(_, n)| *n == sub)
                .map(|(k, _)| i32::from(*k)),
            130 => AGENT_SUBTYPES
                .iter()
                .find(|(n, _)| *n == sub)
                .map(|(_, k)| *k),
            _ => None,
        };
        let sub_type = match named {
            Some(k) => k,
            None => sub
                .parse::<u32>()
                .ok()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    let hint = if r#type == 4 {
                        let names: Vec<&str> =
                            printer::TRACE_POINTS.iter().map(|(_, n)| *n).collect();
                        format!(" (trace sub-types: {})", names.join(", "))
                    } else {
                        String::new()
                    };
                    invalid("type", v, &format!("unknown sub-type {sub:?}{hint}"))
                })?,
        };
        filter.match_sub_type = true;
        filter.sub_type = sub_type;
    }
    Ok(filter)
}

/// Go's `time.ParseDuration`: a signed sequence of decimal numbers with
/// units (`300ms`, `-1.5h`, `2h45m`, `0`).
pub fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += value * scale;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return None;
    }
    Some((negative, Duration::from_nanos(total_ns.round() as u64)))
}

/// A `--since`/`--until` value as an instant: a duration before `now`, or
/// one of Hubble's date layouts (UTC unless an offset is given).
pub fn parse_time(s: &str, now: SystemTime) -> Option<SystemTime> {
    if let Some((negative, d)) = parse_go_duration(s) {
        return if negative {
            now.checked_add(d)
        } else {
            now.checked_sub(d)
        };
    }
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let to_system = |t: time::OffsetDateTime| -> Option<SystemTime> {
        let ns = t.unix_timestamp_nanos();
        if ns >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_nanos(u64::try_from(ns).ok()?))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_nanos(u64::try_from(-ns).ok()?))
        }
    };
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return to_system(t);
    }
    if let Ok(d) = time::Date::parse(s, format_description!("[year]-[month]-[day]")) {
        return to_system(d.midnight().assume_utc());
    }
    // 2006-01-02T15Z07:00 and 2006-01-02T15:04Z07:00: an hour (and minute)
    // followed by Z or a numeric offset.
    if let Some((date, rest)) = s.split_once('T') {
        let date = time::Date::parse(date, format_description!("[year]-[month]-[day]")).ok()?;
        let split = rest.find(['Z', '+', '-'])?;
        let (clock, zone) = rest.split_at(split);
        let (hour, minute) = match clock.split_once(':') {
            Some((h, m)) if m.len() == 2 => (h, m.parse::<u8>().ok()?),
            None => (clock, 0),
            _ => return None,
        };
        if hour.len() != 2 {
            return None;
        }
        let hour = hour.parse::<u8>().ok()?;
        let offset = if zone == "Z" {
            time::UtcOffset::UTC
        } else {
            time::UtcOffset::parse(
                zone,
                format_description!("[offset_hour sign:mandatory]:[offset_minute]"),
            )
            .ok()?
        };
        let t = date.with_hms(hour, minute, 0).ok()?.assume_offset(offset);
        return to_system(t);
    }
    // RFC 1123 with a numeric zone: Mon, 02 Jan 2006 15:04:05 -0700.
    let rfc1123z = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    time::OffsetDateTime::parse(s, rfc1123z)
        .ok()
        .and_then(to_system)
}

fn to_timestamp(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        },
        Err(e) => {
            let d = e.duration();
            let mut seconds = -(d.as_secs() as i64);
            let mut nanos = -(d.subsec_nanos() as i32);
            if nanos < 0 {
                seconds -= 1;
                nanos += 1_000_000_000;
            }
            prost_types::Timestamp { seconds, nanos }
        }
    }
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// When standard output is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Everything `weir observe` will do, decided from the command line alone.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The request to send.
    pub request: GetFlowsRequest,
    /// How to print the answers (colour decided at run time for `auto`).
    pub print: printer::Options,
    /// `--color`.
    pub color: ColorMode,
    /// `--server`, resolved.
    pub server: String,
    /// TLS options (the token is read from `token_file` at run time).
    pub tls: ClientTls,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--timeout`.
    pub dial_timeout: Duration,
    /// The agent's local API socket, for diagnosis.
    pub local_socket: PathBuf,
}

/// `--server`, else WEIR_SERVER (through clap), else HUBBLE_SERVER, else the
/// default socket.
pub fn resolve_server(flag: Option<&str>, hubble_env: Option<String>) -> String {
    match flag {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => hubble_env
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
    }
}

/// Checks the command line and builds the request, as the Hubble CLI does:
/// no selector means the last 20 flows; `--until` is ignored when
/// following; `--all` asks for everything.
pub fn plan(args: &ObserveArgs, server: String, now: SystemTime) -> Result<Plan, ObserveError> {
    let o = &args.opts;
    let output: Output = o.output.parse().map_err(usage)?;
    let time_format: TimeFormat = o
        .time_format
        .parse()
        .map_err(|e: String| usage(format!("invalid --time-format: {e}")))?;
    if output == Output::Table && o.follow {
        return Err(usage(
            "the table output format cannot follow (it aligns columns at the end): use -o compact or dict with --follow",
        ));
    }
    let first = o.first.filter(|n| *n > 0);
    let mut last = o.last.filter(|n| *n > 0);
    match (first.is_some(), last.is_some(), o.all, o.follow) {
        (true, true, _, _) => return Err(usage("cannot set both --first and --last")),
        (true, _, true, _) => return Err(usage("cannot set both --first and --all")),
        (true, _, _, true) => return Err(usage("cannot set both --first and --follow")),
        (_, true, true, _) => return Err(usage("cannot set both --last and --all")),
        _ => {}
    }
    let time_flag = |flag: &str, v: &str| {
        parse_time(v, now).map(to_timestamp).ok_or_else(|| {
            invalid(
                flag,
                v,
                "expected a duration ago (30s, 5m, 1h30m) or a time (2024-11-29, 2024-11-29T15:04:05Z, RFC 3339)",
            )
        })
    };
    let since = o
        .since
        .as_deref()
        .map(|v| time_flag("since", v))
        .transpose()?;
    let until = match (&o.until, o.follow) {
        (Some(v), false) => Some(time_flag("until", v)?),
        _ => None,
    };
    if since.is_none() && until.is_none() && first.is_none() {
        if o.all {
            last = Some(u64::MAX);
        } else if last.is_none() && !o.follow {
            last = Some(DEFAULT_LAST);
        }
    }
    let (whitelist, blacklist) = FilterBuilder::build(&args.filters)?;

    let mut mask: Vec<String> = o
        .field_mask
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    if !output.is_json() {
        if !mask.is_empty() {
            return Err(usage(format!(
                "--field-mask needs JSON output (-o jsonpb): the {} format prints fields a mask would remove",
                o.output
            )));
        }
        if o.use_default_field_masks {
            mask = DEFAULT_FIELD_MASK.iter().map(|s| (*s).to_owned()).collect();
        }
    }
    let request = GetFlowsRequest {
        number: first.or(last).unwrap_or(0),
        first: first.is_some(),
        follow: o.follow,
        blacklist,
        whitelist,
        since,
        until,
        field_mask: (!mask.is_empty()).then_some(prost_types::FieldMask { paths: mask }),
        ..Default::default()
    };

    let dial_timeout = match parse_go_duration(&o.timeout) {
        Some((false, d)) if !d.is_zero() => d,
        _ => {
            return Err(invalid(
                "timeout",
                &o.timeout,
                "expected a positive duration such as 5s",
            ));
        }
    };
    let tls = o.tls.client_tls();
    let color = match o.color.as_str() {
        "always" => ColorMode::Always,
        "never" => ColorMode::Never,
        _ => ColorMode::Auto,
    };
    Ok(Plan {
        request,
        print: printer::Options {
            output,
            time_format,
            node_name: o.print_node_name,
            ip_translation: o.ip_translation && !o.numeric,
            color: false,
            debug: o.debug,
            ignore_stderr: o.silent_errors,
        },
        color,
        server,
        tls,
        token_file: o.tls.token_file.clone(),
        dial_timeout,
        local_socket: o.socket.clone(),
    })
}

/// The bearer token in `path`: its first line that is neither empty nor a
/// `#` comment.
pub fn read_token(path: &Path) -> Result<String, ObserveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ObserveError::File {
        flag: "--token-file",
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .ok_or_else(|| usage(format!("--token-file {} holds no token", path.display())))
}

/// `--print-raw-filters`: the lists as YAML of JSON filters, as Hubble
/// prints them.
pub fn raw_filters_yaml(req: &GetFlowsRequest) -> String {
    let mut out = String::new();
    for (key, list) in [("allowlist", &req.whitelist), ("denylist", &req.blacklist)] {
        if list.is_empty() {
            continue;
        }
        out.push_str(key);
        out.push_str(":\n");
        for filter in list {
            let json = weir_api::json::message_to_json(filter)
                .map(|v| v.to_string())
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
            out.push_str("    - '");
            out.push_str(&json.replace('\'', "''"));
            out.push_str("'\n");
        }
    }
    if out.is_empty() {
        out.push_str("{}\n");
    }
    out
}

/// Runs `weir observe` and returns the process exit status.
pub fn run(args: ObserveArgs) -> ExitCode {
    let server = resolve_server(
        args.opts.server.as_deref(),
        std::env::var("WEIR_SERVER")
            .ok()
            .or_else(|| std::env::var("HUBBLE_SERVER").ok()),
    );
    let mut plan = match plan(&args, server, SystemTime::now()) {
        Ok(p) => p,
        Err(e) => return report(&e),
    };
    if args.opts.print_raw_filters {
        print!("{}", raw_filters_yaml(&plan.request));
        return ExitCode::SUCCESS;
    }
    plan.print.color = match plan.color {
        ColorMode::Always => true,
        ColorMode::Never => false,
        ColorMode::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none()
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    };
    if let Some(path) = &plan.token_file {
        match read_token(path) {
            Ok(t) => plan.tls.token = Some(t),
            Err(e) => return report(&e),
        }
    }
    let rt = match crate::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(observe(plan)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ObserveError::Print(e)) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn report(e: &ObserveError) -> ExitCode {
    eprintln!("weir: {e}");
    ExitCode::from(e.exit_code())
}

/// Connects, streams and prints until the stream ends or Ctrl-C.
async fn observe(plan: Plan) -> Result<(), ObserveError> {
    let target = ClientTarget::parse(&plan.server, plan.tls.clone())
        .map_err(|e| usage(format!("invalid --server: {e}")))?;
    let channel = connect(&target, plan.dial_timeout, &plan.local_socket).await?;
    let mut client = ObserverClient::new(channel);
    let mut printer = Printer::new(plan.print.clone(), std::io::stdout(), std::io::stderr());

    let interrupted = interrupt();
    tokio::pin!(interrupted);
    let mut stream = tokio::select! {
        r = client.get_flows(plan.request.clone()) => {
            r.map_err(|s| rpc_error(&target, &plan, "GetFlows", &s))?.into_inner()
        }
        () = &mut interrupted => return Ok(()),
    };
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(res)) => printer.write_response(&res)?,
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::Cancelled => break,
                Err(s) => {
                    // Print what came before the failure (the table).
                    let _ = printer.finish();
                    return Err(rpc_error(&target, &plan, "GetFlows", &s));
                }
            },
            () = &mut interrupted => break,
        }
    }
    printer.finish()?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupt() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Connects within `timeout`, turning failures into one line that says
/// what to do next; for the local unix socket it asks the agent whether the
/// flow API is enabled at all.
async fn connect(
    target: &ClientTarget,
    timeout: Duration,
    local_socket: &Path,
) -> Result<weir_api_net::AuthChannel, ObserveError> {
    let result = match tokio::time::timeout(timeout, weir_api_net::connect(target)).await {
        Ok(r) => r,
        Err(_) => {
            return Err(ObserveError::Unreachable(format!(
                "the flow API at {target} did not answer within {timeout:?}: check --server (`weir flows status` shows where it listens) or raise --timeout"
            )));
        }
    };
    match result {
        Ok(c) => Ok(c),
        Err(e) => Err(explain_connect(target, &e, local_socket).await),
    }
}

async fn explain_connect(target: &ClientTarget, e: &NetError, local_socket: &Path) -> ObserveError {
    let failure = match e {
        NetError::Connect { failure, .. } => failure,
        // Problems with what the command line named: usage errors.
        NetError::Tls(_) => {
            return usage(format!(
                "{e} (check --tls-ca-cert-files, --tls-client-cert-file and --tls-client-key-file)"
            ));
        }
        NetError::BadToken => return usage(format!("--token-file: {e}")),
        NetError::Target { .. } => return usage(format!("invalid --server: {e}")),
        _ => return ObserveError::Unreachable(e.to_string()),
    };
    match (target.address(), failure) {
        (Address::Unix(path), ConnectFailure::NoSuchSocket | ConnectFailure::ConnectionRefused) => {
            let state = weir_localapi::Client::new(local_socket)
                .with_timeout(DIAGNOSE_TIMEOUT)
                .flow_api()
                .await
                .ok();
            ObserveError::Unreachable(unreachable_socket_message(
                target,
                path,
                *failure,
                state.as_ref(),
            ))
        }
        (Address::Unix(path), ConnectFailure::PermissionDenied) => {
            ObserveError::Unreachable(format!(
                "the flow API at {target} refused this user (permission denied on {}): run as root, or have the agent give the socket a group (flowApi.socketGroup, flowApi.socketMode: \"0660\") and join it",
                path.display()
            ))
        }
        (_, ConnectFailure::CertificateVerifyFailed) => ObserveError::Unreachable(format!(
            "{e}: check --tls-ca-cert-files (the CA that signed the server certificate) and --tls-server-name"
        )),
        (_, ConnectFailure::ClientCertificateRejected) => ObserveError::Unreachable(format!(
            "{e}: check --tls-client-cert-file and --tls-client-key-file (a certificate signed by the server's client CA)"
        )),
        (Address::Tcp { .. }, ConnectFailure::ConnectionRefused) => {
            ObserveError::Unreachable(format!(
                "{e}: nothing listens there; `weir flows status` shows where the flow API listens"
            ))
        }
        _ => ObserveError::Unreachable(e.to_string()),
    }
}

/// Why the flow API's unix socket cannot be reached, from what the agent
/// says about the flow API (`None`: the agent did not answer either).
pub fn unreachable_socket_message(
    target: &ClientTarget,
    path: &Path,
    failure: ConnectFailure,
    state: Option<&weir_localapi::FlowApiState>,
) -> String {
    let head = format!("the flow API is not reachable at {target} ({failure})");
    match state {
        Some(s) if !s.enabled => {
            format!("{head}: it is disabled; enable it with `weir flows enable`")
        }
        Some(s) if !s.socket.is_empty() && Path::new(&s.socket) != path => format!(
            "{head}: the agent serves it at unix://{}; use --server unix://{}",
            s.socket, s.socket
        ),
        Some(s) if s.socket.is_empty() && !s.address.is_empty() => format!(
            "{head}: the agent serves it on TCP only, at {}; use --server {} (with --tls and its flags if it uses TLS)",
            s.address, s.address
        ),
        Some(_) => format!(
            "{head}: the agent reports it enabled; check the socket path and `weir flows status`"
        ),
        None => format!("{head}: it is off by default; enable it with `weir flows enable`"),
    }
}

fn rpc_error(target: &ClientTarget, plan: &Plan, method: &str, s: &tonic::Status) -> ObserveError {
    if let Some(e) = weir_api_net::connection_error(target, s) {
        return ObserveError::Unreachable(e.to_string());
    }
    let msg = s.message();
    match s.code() {
        tonic::Code::Unauthenticated => {
            let what = match &plan.token_file {
                Some(p) => format!(
                    "the bearer token in {} was not accepted; check --token-file",
                    p.display()
                ),
                None => "it needs a bearer token: pass --token-file".to_owned(),
            };
            ObserveError::Rpc(format!(
                "the flow API at {target} refused the request (UNAUTHENTICATED: {msg}): {what}"
            ))
        }
        tonic::Code::PermissionDenied => ObserveError::Rpc(format!(
            "the flow API at {target} refused the request (PERMISSION_DENIED: {msg}): check --token-file and the client certificate"
        )),
        tonic::Code::Unimplemented => ObserveError::Rpc(format!(
            "the server at {target} does not implement {method}: {msg}"
        )),
        tonic::Code::InvalidArgument => {
            ObserveError::Rpc(format!("the flow API rejected the request: {msg}"))
        }
        tonic::Code::Unavailable => {
            ObserveError::Unreachable(format!("the flow API at {target} is unavailable: {msg}"))
        }
        code => ObserveError::Rpc(format!("{method} failed: {}: {msg}", code_name(code))),
    }
}

/// A gRPC status code as the protocol spells it (`UNAUTHENTICATED`).
fn code_name(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `hubble status`'s lines for the flow API at `server` (no TLS, no token):
/// `Healthcheck (via ...): Ok`, `Current/Max Flows`, `Flows/s`,
/// `Connected Nodes`. The error is one line saying what failed.
pub async fn flow_api_status_text(server: &str) -> Result<String, String> {
    let target = ClientTarget::parse(server, ClientTls::default()).map_err(|e| e.to_string())?;
    flow_api_status_text_for(&target, Duration::from_secs(5)).await
}

/// [`flow_api_status_text`] for a parsed target (with its TLS and token).
pub async fn flow_api_status_text_for(
    target: &ClientTarget,
    timeout: Duration,
) -> Result<String, String> {
    let channel = tokio::time::timeout(timeout, weir_api_net::connect(target))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let via = target.to_string();
    let via = via.strip_prefix("tls://").unwrap_or(&via);
    let call_error = |what: &str, s: &tonic::Status| match weir_api_net::connection_error(target, s)
    {
        Some(e) => e.to_string(),
        None => format!("{what}: {}: {}", code_name(s.code()), s.message()),
    };

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest {
        service: OBSERVER_SERVICE.to_owned(),
    };
    let health_state = match tokio::time::timeout(timeout, health.check(request)).await {
        Err(_) => {
            return Err(format!(
                "health check of {via}: no answer within {timeout:?}"
            ));
        }
        Ok(Ok(r)) => {
            use tonic_health::pb::health_check_response::ServingStatus;
            let status = r.into_inner().status;
            match ServingStatus::try_from(status) {
                Ok(ServingStatus::Serving) => Some("Ok".to_owned()),
                Ok(other) => Some(format!("Unavailable: {}", other.as_str_name())),
                Err(_) => Some(format!("Unavailable: {status}")),
            }
        }
        // A server without the health service: its ServerStatus answer
        // below is the health check.
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => None,
        Ok(Err(s)) => return Err(call_error("health check", &s)),
    };
    if let Some(state) = &health_state
        && state != "Ok"
    {
        return Err(format!("Healthcheck (via {via}): {state}"));
    }
    let mut observer = ObserverClient::new(channel);
    let status = tokio::time::timeout(timeout, observer.server_status(ServerStatusRequest {}))
        .await
        .map_err(|_| format!("ServerStatus of {via}: no answer within {timeout:?}"))?
        .map_err(|s| call_error("ServerStatus", &s))?
        .into_inner();
    let mut text = format!("Healthcheck (via {via}): Ok\n");
    text.push_str(&printer::server_status_compact(&status));
    Ok(text.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn parse(argv: &[&str]) -> Result<ObserveArgs, clap::Error> {
        let mut full = vec!["observe"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    /// 2024-11-29T15:04:05Z.
    const NOW_S: u64 = 1_732_892_645;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_S)
    }

    fn plan_of(argv: &[&str]) -> Result<Plan, ObserveError> {
        let args = parse(argv).expect("the command line parses");
        plan(&args, DEFAULT_SERVER.to_owned(), now())
    }

    fn request(argv: &[&str]) -> GetFlowsRequest {
        plan_of(argv).expect("a valid command line").request
    }

    fn usage_error(argv: &[&str]) -> String {
        match plan_of(argv) {
            Err(e @ ObserveError::Usage(_)) => {
                assert_eq!(e.exit_code(), EXIT_USAGE);
                e.to_string()
            }
            other => panic!("{argv:?}: expected a usage error, got {other:?}"),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_last_20_flows_unfiltered() {
        let r = request(&[]);
        assert_eq!(r.number, DEFAULT_LAST);
        assert!(!r.first && !r.follow);
        assert!(r.whitelist.is_empty() && r.blacklist.is_empty());
        assert!(r.since.is_none() && r.until.is_none() && r.field_mask.is_none());
        let p = plan_of(&[]).expect("valid");
        assert_eq!(p.print.output, Output::Compact);
        assert!(p.print.ip_translation);
        assert_eq!(p.server, DEFAULT_SERVER);
        assert_eq!(p.dial_timeout, Duration::from_secs(5));
    }

    #[test]
    fn selectors() {
        let r = request(&["--follow"]);
        assert!(r.follow);
        assert_eq!(r.number, 0, "following without --last sends only new flows");
        let r = request(&["-f", "--last", "5"]);
        assert!(r.follow);
        assert_eq!(r.number, 5);
        let r = request(&["--first", "7"]);
        assert!(r.first);
        assert_eq!(r.number, 7);
        let r = request(&["--all"]);
        assert_eq!(r.number, u64::MAX);
        let r = request(&["--since", "5m"]);
        assert_eq!(r.number, 0, "a time window replaces the default count");
        assert_eq!(
            r.since,
            Some(prost_types::Timestamp {
                seconds: NOW_S as i64 - 300,
                nanos: 0
            })
        );
        let r = request(&["--since", "2024-11-29T15:00:00Z", "--until", "1h30m"]);
        assert_eq!(r.since.map(|t| t.seconds), Some(NOW_S as i64 - 245));
        assert_eq!(r.until.map(|t| t.seconds), Some(NOW_S as i64 - 5400));
        let r = request(&["--follow", "--until", "1m"]);
        assert!(r.until.is_none(), "--until is ignored when following");
        assert!(usage_error(&["--first", "1", "--last", "2"]).contains("--first and --last"));
        assert!(usage_error(&["--first", "1", "--all"]).contains("--first and --all"));
        assert!(usage_error(&["--first", "1", "-f"]).contains("--first and --follow"));
        assert!(usage_error(&["--last", "1", "--all"]).contains("--last and --all"));
        assert!(
            usage_error(&["--since", "yesterday"]).contains("invalid --since value \"yesterday\"")
        );
        assert!(usage_error(&["--until", "5 min"]).contains("--until"));
    }

    #[test]
    fn time_values() {
        let t = |s: &str| {
            parse_time(s, now())
                .map(|t| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs())
        };
        assert_eq!(t("30s"), Some(NOW_S - 30));
        assert_eq!(t("1h43m"), Some(NOW_S - 6180));
        assert_eq!(t("1.5h"), Some(NOW_S - 5400));
        assert_eq!(t("-1m"), Some(NOW_S + 60));
        assert_eq!(t("0"), Some(NOW_S));
        assert_eq!(t("2024-11-29"), Some(1_732_838_400));
        assert_eq!(t("2024-11-29T15Z"), Some(1_732_892_400));
        assert_eq!(t("2024-11-29T15:04Z"), Some(1_732_892_640));
        assert_eq!(t("2024-11-29T16:04+01:00"), Some(1_732_892_640));
        assert_eq!(t("2024-11-29T15:04:05Z"), Some(NOW_S));
        assert_eq!(t("2024-11-29T15:04:05.999-07:00"), Some(NOW_S + 7 * 3600));
        assert_eq!(t("Fri, 29 Nov 2024 15:04:05 +0000"), Some(NOW_S));
        for bad in [
            "",
            "5",
            "5x",
            "h",
            "2024-13-01",
            "yesterday",
            "2024-11-29T15",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_go_duration("300ms"),
            Some((false, Duration::from_millis(300)))
        );
        assert_eq!(
            parse_go_duration("2h45m"),
            Some((false, Duration::from_secs(9900)))
        );
        assert_eq!(
            parse_go_duration("1µs"),
            Some((false, Duration::from_micros(1)))
        );
    }

    #[test]
    fn either_side_flags_become_two_filters_and_others_and_into_both() {
        let r = request(&[
            "--pod",
            "default/xwing",
            "--protocol",
            "tcp",
            "--port",
            "80",
        ]);
        assert_eq!(r.whitelist.len(), 2);
        let (l, rt) = (&r.whitelist[0], &r.whitelist[1]);
        assert_eq!(l.source_pod, strings(&["default/xwing"]));
        assert!(l.destination_pod.is_empty());
        assert_eq!(rt.destination_pod, strings(&["default/xwing"]));
        assert!(rt.source_pod.is_empty());
        for ff in [l, rt] {
            assert_eq!(ff.protocol, strings(&["tcp"]));
        }
        assert_eq!(l.source_port, strings(&["80"]));
        assert_eq!(rt.destination_port, strings(&["80"]));

        let r = request(&["--ip", "10.0.0.1", "--ip", "10.0.1.0/24"]);
        assert_eq!(
            r.whitelist[0].source_ip,
            strings(&["10.0.0.1", "10.0.1.0/24"])
        );
        assert_eq!(
            r.whitelist[1].destination_ip,
            strings(&["10.0.0.1", "10.0.1.0/24"])
        );

        let r = request(&["-l", "app=web"]);
        assert_eq!(r.whitelist[0].source_label, strings(&["app=web"]));
        assert_eq!(r.whitelist[1].destination_label, strings(&["app=web"]));

        let r = request(&["--identity", "world"]);
        assert_eq!(r.whitelist[0].source_identity, vec![2]);
        assert_eq!(r.whitelist[1].destination_identity, vec![2]);
    }

    #[test]
    fn from_and_to_flags_make_one_filter() {
        let r = request(&[
            "--from-pod",
            "x/a",
            "--to-ip",
            "10.0.0.2",
            "--from-port",
            "1234",
            "--to-port",
            "80",
            "--from-label",
            "app=a",
            "--to-identity",
            "0x10",
            "--from-service",
            "x/svc",
        ]);
        assert_eq!(r.whitelist.len(), 1, "{:?}", r.whitelist);
        let ff = &r.whitelist[0];
        assert_eq!(ff.source_pod, strings(&["x/a"]));
        assert_eq!(ff.destination_ip, strings(&["10.0.0.2"]));
        assert_eq!(ff.source_port, strings(&["1234"]));
        assert_eq!(ff.destination_port, strings(&["80"]));
        assert_eq!(ff.source_label, strings(&["app=a"]));
        assert_eq!(ff.destination_identity, vec![16]);
        assert_eq!(ff.source_service, strings(&["x/svc"]));
    }

    #[test]
    fn namespaces_apply_to_pods_as_hubble_does() {
        let r = request(&["-n", "kube-system"]);
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, strings(&["kube-system/"]));
        assert_eq!(r.whitelist[1].destination_pod, strings(&["kube-system/"]));

        let r = request(&["--from-namespace", "x", "--to-namespace", "y"]);
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].source_pod, strings(&["x/"]));
        assert_eq!(r.whitelist[0].destination_pod, strings(&["y/"]));

        // A pod without a namespace gets each namespace given.
        let r = request(&[
            "--pod",
            "web",
            "--from-namespace",
            "a",
            "--from-namespace",
            "b",
        ]);
        assert_eq!(r.whitelist[0].source_pod, strings(&["a/web", "b/web"]));
        assert_eq!(r.whitelist[1].source_pod, strings(&["a/", "b/"]));
        assert_eq!(r.whitelist[1].destination_pod, strings(&["web"]));

        let r = request(&["-A"]);
        assert_eq!(r.whitelist[0].source_pod, strings(&["/"]));
        assert_eq!(r.whitelist[1].destination_pod, strings(&["/"]));

        let e = usage_error(&["--pod", "other/web", "--from-namespace", "x"]);
        assert!(e.contains("namespace conflict"), "{e}");
    }

    #[test]
    fn not_negates_only_the_next_filter() {
        let r = request(&[
            "--verdict",
            "DROPPED",
            "--not",
            "--to-port",
            "53",
            "--not",
            "--pod",
            "x/a",
            "--protocol",
            "udp",
        ]);
        // --verdict and --protocol stay in the whitelist.
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].verdict, vec![pf::Verdict::Dropped as i32]);
        assert_eq!(r.whitelist[0].protocol, strings(&["udp"]));
        // --to-port and --pod go to the blacklist, combined as Hubble does.
        assert_eq!(r.blacklist.len(), 2);
        assert_eq!(r.blacklist[0].destination_port, strings(&["53"]));
        assert_eq!(r.blacklist[0].source_pod, strings(&["x/a"]));
        assert_eq!(r.blacklist[1].destination_port, strings(&["53"]));
        assert_eq!(r.blacklist[1].destination_pod, strings(&["x/a"]));

        // Order matters: the flag after --not is the negated one.
        let r = request(&["--not", "--ip", "10.0.0.1", "--to-port", "80"]);
        assert_eq!(r.blacklist[0].source_ip, strings(&["10.0.0.1"]));
        assert!(r.blacklist.iter().all(|f| f.destination_port.is_empty()));
        assert!(
            r.whitelist
                .iter()
                .all(|f| f.destination_port == strings(&["80"]))
        );

        assert!(usage_error(&["--not"]).contains("trailing --not"));
        assert!(usage_error(&["--not", "--not", "--pod", "a"]).contains("consecutive --not"));
        // --not=true is accepted (Hubble's flag takes an optional value).
        let r = request(&["--not=true", "--uuid", "u1"]);
        assert_eq!(r.blacklist[0].uuid, strings(&["u1"]));
    }

    #[test]
    fn every_simple_filter_flag_reaches_its_field() {
        let r = request(&[
            "--uuid",
            "u1",
            "--node-name",
            "kind-*",
            "--node-label",
            "zone=a",
            "--cluster",
            "c1",
            "--tcp-flags",
            "syn,ACK",
            "-t",
            "trace:to-endpoint",
            "--type",
            "drop",
            "--verdict",
            "forwarded",
            "--drop-reason-desc",
            "policy_denied",
            "--http-status",
            "5+",
            "--http-method",
            "GET",
            "--http-path",
            "/a",
            "--http-url",
            "http://x",
            "--http-header",
            "x-a:b",
            "--trace-id",
            "t1",
            "--ip-trace-id",
            "42",
            "--fqdn",
            "*.example.com",
            "--snat-ip",
            "192.0.2.1",
            "-4",
            "--ip-version",
            "v6",
            "--workload",
            "Deployment/web",
            "--traffic-direction",
            "EGRESS",
            "--cel-expression",
            "true",
            "--interface",
            "eth0",
        ]);
        let ff = &r.whitelist[0];
        assert_eq!(ff.uuid, strings(&["u1"]));
        assert_eq!(ff.node_name, strings(&["kind-*"]));
        assert_eq!(ff.node_labels, strings(&["zone=a"]));
        assert_eq!(ff.source_cluster_name, strings(&["c1"]));
        assert_eq!(r.whitelist[1].destination_cluster_name, strings(&["c1"]));
        assert_eq!(ff.tcp_flags.len(), 1);
        assert!(ff.tcp_flags[0].syn && ff.tcp_flags[0].ack && !ff.tcp_flags[0].fin);
        assert_eq!(
            ff.event_type,
            vec![
                pf::EventTypeFilter {
                    r#type: 4,
                    match_sub_type: true,
                    sub_type: 0
                },
                pf::EventTypeFilter {
                    r#type: 1,
                    match_sub_type: false,
                    sub_type: 0
                },
            ]
        );
        assert_eq!(ff.verdict, vec![pf::Verdict::Forwarded as i32]);
        assert_eq!(
            ff.drop_reason_desc,
            vec![pf::DropReason::PolicyDenied as i32]
        );
        assert_eq!(ff.http_status_code, strings(&["5+"]));
        assert_eq!(ff.http_method, strings(&["GET"]));
        assert_eq!(ff.http_path, strings(&["/a"]));
        assert_eq!(ff.http_url, strings(&["http://x"]));
        assert_eq!(
            ff.http_header,
            vec![pf::HttpHeader {
                key: "x-a".into(),
                value: "b".into()
            }]
        );
        assert_eq!(ff.trace_id, strings(&["t1"]));
        assert_eq!(ff.ip_trace_id, vec![42]);
        assert_eq!(ff.source_fqdn, strings(&["*.example.com"]));
        assert_eq!(r.whitelist[1].destination_fqdn, strings(&["*.example.com"]));
        assert_eq!(ff.source_ip_xlated, strings(&["192.0.2.1"]));
        assert_eq!(
            ff.ip_version,
            vec![pf::IpVersion::IPv4 as i32, pf::IpVersion::IPv6 as i32]
        );
        assert_eq!(
            ff.source_workload,
            vec![pf::Workload {
                name: "web".into(),
                kind: "Deployment".into()
            }]
        );
        assert_eq!(
            ff.traffic_direction,
            vec![pf::TrafficDirection::Egress as i32]
        );
        assert_eq!(
            ff.experimental.as_ref().map(|e| e.cel_expression.clone()),
            Some(strings(&["true"]))
        );
        assert_eq!(ff.interface.len(), 1);
        assert_eq!(ff.interface[0].name, "eth0");
        let r = request(&["-6"]);
        assert_eq!(r.whitelist[0].ip_version, vec![pf::IpVersion::IPv6 as i32]);
        let r = request(&["--type", "4:5", "--type", "policy-verdict"]);
        assert_eq!(
            r.whitelist[0].event_type[0],
            pf::EventTypeFilter {
                r#type: 4,
                match_sub_type: true,
                sub_type: 5
            }
        );
        assert_eq!(r.whitelist[0].event_type[1].r#type, 5);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--verdict", "ALLOWED"],
                "invalid --verdict value \"ALLOWED\"",
            ),
            (&["--ip", "10.0.0.300"], "invalid --ip value"),
            (&["--from-ip", "10.0.0.0/33"], "invalid --from-ip value"),
            (&["--to-ip", "host.example"], "invalid --to-ip value"),
            (&["--port", "http"], "invalid --port value \"http\""),
            (&["--to-port", "70000"], "invalid --to-port value"),
            (&["--tcp-flags", "syn,bogus"], "unknown TCP flag \"bogus\""),
            (&["--type", "nonsense"], "invalid --type value"),
            (&["--type", "trace:to-mars"], "unknown sub-type \"to-mars\""),
            (
                &["--identity", "nobody"],
                "invalid --identity value \"nobody\"",
            ),
            (
                &["--traffic-direction", "up"],
                "invalid --traffic-direction value",
            ),
            (&["--ip-version", "7"], "invalid --ip-version value"),
            (&["--http-header", "nocolon"], "invalid --http-header value"),
            (&["--ip-trace-id", "0"], "invalid --ip-trace-id value"),
            (
                &["--drop-reason-desc", "SLEEPY"],
                "invalid --drop-reason-desc value",
            ),
            (&["-o", "yaml"], "invalid output format: yaml"),
            (&["--time-format", "Kitchen"], "invalid --time-format"),
            (&["--timeout", "soon"], "invalid --timeout value"),
            (
                &["-o", "table", "--follow"],
                "table output format cannot follow",
            ),
            (&["--field-mask", "time"], "--field-mask needs JSON output"),
            (&["--pod", "a", "--from-pod", "b"], "filters --"),
            (
                &["--label", "a=b", "--to-label", "c=d"],
                "cannot be combined",
            ),
            (&["--port", "1", "--from-port", "2"], "cannot be combined"),
        ];
        for (argv, want) in cases {
            let e = usage_error(argv);
            assert!(
                e.contains(want),
                "{argv:?}: {e:?} does not contain {want:?}"
            );
        }
        // Conflicts are per list: a negated --from-pod may go with --pod.
        let r = request(&["--pod", "a", "--not", "--from-pod", "b"]);
        assert_eq!(r.blacklist[0].source_pod, strings(&["b"]));
        // clap itself rejects unknown flags and missing values.
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--pod"]).is_err());
    }

    #[test]
    fn output_and_server_options() {
        let p = plan_of(&[
            "-o",
            "json",
            "--field-mask",
            "time,verdict",
            "--print-node-name",
            "--numeric",
        ])
        .expect("valid");
        assert_eq!(p.print.output, Output::JsonPb);
        assert!(p.print.node_name && !p.print.ip_translation);
        assert_eq!(
            p.request.field_mask.map(|m| m.paths),
            Some(strings(&["time", "verdict"]))
        );
        let p = plan_of(&[
            "--use-default-field-masks",
            "--ip-translation=false",
            "--time-format",
            "rfc3339",
        ])
        .expect("valid");
        assert_eq!(
            p.request.field_mask.map(|m| m.paths.len()),
            Some(DEFAULT_FIELD_MASK.len())
        );
        assert!(!p.print.ip_translation);
        assert_eq!(p.print.time_format, TimeFormat::Rfc3339);
        let p = plan_of(&[
            "--tls-client-cert-file",
            "c.pem",
            "--tls-client-key-file",
            "k.pem",
            "--tls-ca-cert-files",
            "a.pem,b.pem",
            "--tls-server-name",
            "n1",
            "--tls-allow-insecure",
            "--timeout",
            "1m30s",
            "--color",
            "never",
            "-s",
            "-D",
        ])
        .expect("valid");
        assert!(p.tls.enabled, "a client certificate implies TLS");
        assert_eq!(
            p.tls.ca_files,
            vec![PathBuf::from("a.pem"), PathBuf::from("b.pem")]
        );
        assert_eq!(p.tls.server_name.as_deref(), Some("n1"));
        assert!(p.tls.allow_insecure);
        assert_eq!(p.dial_timeout, Duration::from_secs(90));
        assert_eq!(p.color, ColorMode::Never);
        assert!(p.print.ignore_stderr && p.print.debug);

        assert_eq!(resolve_server(Some("x:1"), Some("y:2".into())), "x:1");
        assert_eq!(resolve_server(None, Some("y:2".into())), "y:2");
        assert_eq!(resolve_server(None, None), DEFAULT_SERVER);
        assert_eq!(resolve_server(Some(""), None), DEFAULT_SERVER);
    }

    #[test]
    fn identities_parse_like_hubble() {
        assert_eq!(parse_identity("host"), Some(1));
        assert_eq!(parse_identity("kube-apiserver"), Some(7));
        assert_eq!(parse_identity("12345"), Some(12345));
        assert_eq!(parse_identity("0x100"), Some(256));
        assert_eq!(parse_identity("0o17"), Some(15));
        assert_eq!(parse_identity("017"), Some(15));
        assert_eq!(parse_identity("0b101"), Some(5));
        assert_eq!(parse_identity("0"), Some(0));
        assert_eq!(parse_identity("unknown"), None);
        assert_eq!(parse_identity("4294967296"), None);
    }

    #[test]
    fn raw_filters_print_as_yaml() {
        let r = request(&["--from-pod", "x/a", "--not", "--verdict", "DROPPED"]);
        let y = raw_filters_yaml(&r);
        assert_eq!(
            y,
            "allowlist:\n    - '{\"source_pod\":[\"x/a\"]}'\ndenylist:\n    - '{\"verdict\":[\"DROPPED\"]}'\n"
        );
        assert_eq!(raw_filters_yaml(&request(&[])), "{}\n");
    }

    #[test]
    fn token_file_first_real_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("token");
        std::fs::write(&p, "# comment\n\n  s3cret  \nother\n").expect("write");
        assert_eq!(read_token(&p).expect("a token"), "s3cret");
        std::fs::write(&p, "# only a comment\n").expect("write");
        assert!(matches!(read_token(&p), Err(ObserveError::Usage(_))));
        let missing = dir.path().join("missing");
        let e = read_token(&missing).expect_err("missing file");
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("--token-file"), "{e}");
    }

    #[test]
    fn unreachable_messages_say_what_to_do() {
        let target = ClientTarget::parse(DEFAULT_SERVER, ClientTls::default()).expect("valid");
        let path = Path::new("/var/run/weir/hubble.sock");
        let m = unreachable_socket_message(&target, path, ConnectFailure::NoSuchSocket, None);
        assert_eq!(
            m,
            "the flow API is not reachable at unix:///var/run/weir/hubble.sock (no such socket): \
             it is off by default; enable it with `weir flows enable`"
        );
        let disabled = weir_localapi::FlowApiState::default();
        let m = unreachable_socket_message(
            &target,
            path,
            ConnectFailure::ConnectionRefused,
            Some(&disabled),
        );
        assert!(
            m.ends_with("it is disabled; enable it with `weir flows enable`"),
            "{m}"
        );
        let elsewhere = weir_localapi::FlowApiState {
            enabled: true,
            socket: "/run/other.sock".into(),
            ..Default::default()
        };
        let m = unreachable_socket_message(
            &target,
            path,
            ConnectFailure::NoSuchSocket,
            Some(&elsewhere),
        );
        assert!(m.ends_with("use --server unix:///run/other.sock"), "{m}");
        let tcp_only = weir_localapi::FlowApiState {
            enabled: true,
            address: "127.0.0.1:4244".into(),
            ..Default::default()
        };
        let m = unreachable_socket_message(
            &target,
            path,
            ConnectFailure::NoSuchSocket,
            Some(&tcp_only),
        );
        assert!(m.contains("use --server 127.0.0.1:4244"), "{m}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--pod <[NS/]POD>",
            "-t, --type",
            "--not[=<VALUE>]",
            "-4, --ipv4",
            "--tls-ca-cert-files",
        ] {
            assert!(help.contains(flag), "help lacks {flag:?}");
        }
    }

    /// Every declared filter flag changes the request, and `--not` moves it
    /// to the blacklist.
    #[test]
    fn every_filter_flag_is_wired() {
        let sample = |flag: &str| -> &str {
            match flag {
                "ip" | "from-ip" | "to-ip" | "snat-ip" => "10.0.0.0/8",
                "port" | "from-port" | "to-port" => "53",
                "ip-trace-id" => "7",
                "verdict" => "DROPPED",
                "drop-reason-desc" => "POLICY_DENIED",
                "http-header" => "a:b",
                "type" => "trace",
                "identity" | "from-identity" | "to-identity" => "world",
                "tcp-flags" => "syn",
                "traffic-direction" => "ingress",
                "ip-version" => "v4",
                _ => "x",
            }
        };
        for spec in FILTER_FLAGS.iter().filter(|s| s.name != "not") {
            let flag = format!("--{}", spec.name);
            let argv: Vec<&str> = match spec.implicit {
                Some(_) => vec![flag.as_str()],
                None => vec![flag.as_str(), sample(spec.name)],
            };
            let r = request(&argv);
            assert!(!r.whitelist.is_empty(), "{argv:?} made no filter");
            assert!(r.blacklist.is_empty(), "{argv:?}");
            let mut negated = vec!["--not"];
            negated.extend(&argv);
            let r = request(&negated);
            assert!(r.whitelist.is_empty(), "{negated:?}");
            assert!(
                !r.blacklist.is_empty(),
                "{negated:?} made no blacklist filter"
            );
        }
        let r = request(&[
            "--service",
            "shop/web",
            "--to-workload",
            "web",
            "--from-cluster",
            "c",
        ]);
        assert_eq!(r.whitelist[0].source_service, strings(&["shop/web"]));
        assert_eq!(r.whitelist[1].destination_service, strings(&["shop/web"]));
        assert!(r.whitelist.iter().all(|f| f.destination_workload
            == vec![pf::Workload {
                name: "web".into(),
                kind: String::new()
            }]));
        assert!(
            r.whitelist
                .iter()
                .all(|f| f.source_cluster_name == strings(&["c"]))
        );
        let r = request(&["--from-all-namespaces", "--to-namespace", "y"]);
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].source_pod, strings(&["/"]));
        assert_eq!(r.whitelist[0].destination_pod, strings(&["y/"]));
    }

    #[test]
    fn status_codes_are_spelled_as_grpc_does() {
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn filter_flags_keep_command_line_order() {
        let args =
            parse(&["--to-port", "1", "-n", "x", "--not", "-4", "--pod", "p"]).expect("parses");
        let got: Vec<(&str, &str)> = args
            .filters
            .iter()
            .map(|a| (a.flag, a.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("to-port", "1"),
                ("namespace", "x"),
                ("not", "true"),
                ("ipv4", "v4"),
                ("pod", "p")
            ]
        );
    }
}
