//! `weir policy explain` and `weir policy what-if`: why a connection is
//! allowed or denied, and which recorded flows a policy change would turn
//! around, both computed by the same compiler as the datapath's maps
//! (`weir_policy::explain` / `weir_policy::evaluate`).
//!
//! The model (namespaces, pods, policies) comes from a manifests directory
//! (`--manifests`, offline: read with weir-state as the agent reads it) or
//! from the running agent over its local API, which answers with the same
//! functions ([`explain`], [`what_if`]) on its live model. Recorded flows
//! come from a flow log file or from the flow API.
//!
//! Owns the commands, their parsing (shared with the local API's routes)
//! and their output; it reads the model and never changes it.
//!
//! Exit statuses: 0 whatever the verdicts; 64 for usage errors (a bad
//! flag, an unknown pod or policy, an unreadable file); 65 for a change
//! file that is not valid NetworkPolicy; 1 when the agent or the flow API
//! cannot be asked, and, with `what-if --exit-code`, when a verdict would
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use weir_common::{direction, identity};
use weir_localapi::ErrorBody;
use weir_localapi::policy::{
    ALLOWED, AUDIT, DENIED, DirectionExplanation, EndVerdict, ExplainParams, PeerInfo, PolicyEdit,
    PolicyExplanation, RecordedFlow, Replayed, RuleRef, VerdictChange, WhatIfReport, WhatIfRequest,
};
use weir_policy::{
    Compiled, Compiler, ExplainError, ExplainQuery, ExplainTarget, Input, Lookup, NetworkPolicy,
    PodInput, PolicyRef, Via,
};

/// Exit status of a change file that is not valid (sysexits EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;
/// Exit status of `what-if --exit-code` when some verdict would change.
pub const EXIT_CHANGED: u8 = 1;

/// Interface numbers what-if gives every pod it polices: far above real
/// ones, so they never collide with the agent's endpoints in one model.
const REPLAY_IFINDEX_BASE: u32 = 0x4000_0000;

/// How long to wait for the agent or the flow API.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong, each with its exit status ([`PolicyCliError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    /// A flag or parameter value is wrong (exit 64; HTTP 400).
    #[error("{0}")]
    Usage(String),
    /// A pod named in the question is not in the model (exit 64; HTTP 404).
    #[error("{what} {pod}: no such pod in {model}{hint}")]
    UnknownPod {
        /// The flag (or parameter) naming it.
        what: String,
        /// `ns/name`.
        pod: String,
        /// Which model was asked.
        model: String,
        /// What the model does have there.
        hint: String,
    },
    /// `--delete` names a policy the model does not have (exit 64; HTTP 404).
    #[error("--delete {policy}: no NetworkPolicy {policy} in {model}")]
    UnknownPolicy {
        /// `ns/name`.
        policy: String,
        /// Which model was asked.
        model: String,
    },
    /// The change file (or a change sent to the agent) is not valid
    /// NetworkPolicy; the message names the document, object and field
    /// (exit 65; HTTP 422).
    #[error("{0}")]
    InvalidChange(String),
    /// A file named on the command line cannot be read (exit 64).
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// What the file is for (`--manifests`, `--flows`, `change file`).
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be asked (exit 1), or refused the question
    /// (exit 64 or 65, as the same question offline).
    #[error(transparent)]
    Agent(#[from] weir_localapi::ClientError),
    /// The flow API could not be reached or the call failed (exit 1).
    #[error("{0}")]
    FlowApi(String),
}

impl PolicyCliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        use weir_localapi::ClientError;
        match self {
            PolicyCliError::Usage(_)
            | PolicyCliError::UnknownPod { .. }
            | PolicyCliError::UnknownPolicy { .. }
            | PolicyCliError::File { .. } => crate::cli::EXIT_USAGE,
            PolicyCliError::InvalidChange(_) => EXIT_DATAERR,
            PolicyCliError::Agent(ClientError::Refused {
                status: 422,
                message,
                ..
            }) if !message.is_empty() => EXIT_DATAERR,
            PolicyCliError::Agent(ClientError::Refused {
                status: 400..=499,
                message,
                ..
            }) if !message.is_empty() => crate::cli::EXIT_USAGE,
            PolicyCliError::Agent(_) | PolicyCliError::FlowApi(_) => 1,
        }
    }

    /// The HTTP status the local API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            PolicyCliError::Usage(_) | PolicyCliError::File { .. } => 400,
            PolicyCliError::UnknownPod { .. } | PolicyCliError::UnknownPolicy { .. } => 404,
            PolicyCliError::InvalidChange(_) => 422,
            PolicyCliError::Agent(_) | PolicyCliError::FlowApi(_) => 500,
        }
    }

    /// One line for the terminal: the agent's own message when it refused
    /// the question (it is the same message the offline command gives).
    fn message(&self) -> String {
        match self {
            PolicyCliError::Agent(weir_localapi::ClientError::Refused {
                status: 400..=499,
                message,
                uri,
                ..
            }) => {
                if message.is_empty() {
                    // No route: an agent from before `weir policy` existed.
                    format!(
                        "the agent does not answer {uri}: is it older than this weir? \
                         (or ask offline with --manifests DIR)"
                    )
                } else {
                    message.clone()
                }
            }
            e => e.to_string(),
        }
    }
}

fn usage(msg: impl Into<String>) -> PolicyCliError {
    PolicyCliError::Usage(msg.into())
}

// ---------------------------------------------------------------------------
// Command line

/// `weir policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: PolicyAction,
}

#[derive(Subcommand, Debug)]
enum PolicyAction {
    /// The verdict of a new connection and the policies and rules that decide
    /// it (egress at the source, ingress at the destination).
    Explain(ExplainArgs),
    /// Replay recorded flows against the current policies and the policies
    /// after a change; list the flows whose verdict would change.
    WhatIf(WhatIfArgs),
}

/// Where the model comes from, and how to print.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Read namespaces, pods and policies from this manifests directory
    /// (offline) instead of asking the agent.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Local API socket of the agent (without --manifests).
    #[arg(long, env = "WEIR_SOCKET", default_value = weir_localapi::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

#[derive(Args, Debug)]
struct ExplainArgs {
    /// Source pod.
    #[arg(long, value_name = "NS/POD")]
    from: String,
    /// Destination pod or address.
    #[arg(long, value_name = "NS/POD|IP")]
    to: String,
    /// Destination port and protocol: 80/TCP, 53/UDP, 9000/SCTP, 80 (TCP),
    /// or ICMP / ICMPv6.
    #[arg(long, value_name = "PORT/PROTO")]
    port: String,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args, Debug)]
struct WhatIfArgs {
    /// NetworkPolicy documents (YAML or JSON) that would be applied: one with
    /// the namespace and name of a current policy replaces it.
    #[arg(value_name = "CHANGE.yaml")]
    change: PathBuf,
    /// Replay the flows of this flow log (the agent's JSON flow log, Hubble's
    /// export format).
    #[arg(long, value_name = "FLOWLOG", conflicts_with = "server")]
    flows: Option<PathBuf>,
    /// Replay the flows in the flow API's ring (default
    /// unix:///var/run/weir/hubble.sock, or WEIR_SERVER / HUBBLE_SERVER);
    /// host:port or tls://host:port for a TCP listener, with the TLS and
    /// token flags below as `weir observe` takes them.
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    #[command(flatten)]
    tls: crate::observe::ServerTlsArgs,
    /// Also remove this policy (repeatable).
    #[arg(long, value_name = "NS/NAME")]
    delete: Vec<String>,
    /// Exit with 1 when some verdict would change.
    #[arg(long)]
    exit_code: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// Runs `weir policy ...`.
pub fn run(args: PolicyArgs) -> ExitCode {
    let rt = match crate::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = match args.action {
        PolicyAction::Explain(a) => rt.block_on(run_explain(a)),
        PolicyAction::WhatIf(a) => rt.block_on(run_what_if(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run_explain(a: ExplainArgs) -> Result<ExitCode, PolicyCliError> {
    let params = ExplainParams {
        from: a.from,
        to: a.to,
        port: a.port,
    };
    // Checked here too, so that a bad flag is refused before asking anyone.
    parse_params(&params, Flags::Cli)?;
    let answer = match &a.model.manifests {
        Some(dir) => explain(&manifests_model(dir)?, &params, Flags::Cli)?,
        None => {
            weir_localapi::Client::new(&a.model.socket)
                .with_timeout(CALL_TIMEOUT)
                .policy_explain(&params)
                .await?
        }
    };
    if a.model.output == "json" {
        println!("{}", to_json(&answer));
    } else {
        print!("{}", explanation_text(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_what_if(a: WhatIfArgs) -> Result<ExitCode, PolicyCliError> {
    let docs = read_change_file(&a.change)?;
    for d in &a.delete {
        parse_policy_name(d)?;
    }
    let (flows, skipped, flows_from) = match &a.flows {
        Some(path) => {
            let tally = read_flow_log(path)?;
            let (f, s) = tally.finish();
            (f, s, path.display().to_string())
        }
        None => {
            let server = crate::observe::resolve_server(
                a.server.as_deref(),
                std::env::var("WEIR_SERVER")
                    .ok()
                    .or_else(|| std::env::var("HUBBLE_SERVER").ok()),
            );
            let tls = a
                .tls
                .client_tls_with_token()
                .map_err(|e| usage(e.to_string()))?;
            let tally = fetch_flows(&server, tls, &a.model.socket).await?;
            let (f, s) = tally.finish();
            (f, s, format!("the flow API at {server}"))
        }
    };
    let request = WhatIfRequest {
        changes: docs,
        deletes: a.delete.clone(),
        flows,
    };
    let mut report = match &a.model.manifests {
        Some(dir) => what_if(&manifests_model(dir)?, &request)?,
        None => {
            weir_localapi::Client::new(&a.model.socket)
                .with_timeout(CALL_TIMEOUT)
                .policy_what_if(&request)
                .await?
        }
    };
    report.flows_from = flows_from;
    report.skipped = skipped;
    if a.model.output == "json" {
        println!("{}", to_json(&report));
    } else {
        print!("{}", what_if_text(&report));
    }
    Ok(if a.exit_code && report.changed_connections > 0 {
        ExitCode::from(EXIT_CHANGED)
    } else {
        ExitCode::SUCCESS
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Parsing, shared by the command line and the local API

/// Whose names go into messages: the command line's flags or the local
/// API's query parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    /// `--from`, `--to`, `--port`.
    Cli,
    /// `from`, `to`, `port`.
    Api,
}

impl Flags {
    fn name(self, flag: &str) -> String {
        match self {
            Flags::Cli => format!("--{flag}"),
            Flags::Api => format!("parameter {flag}"),
        }
    }
}

/// `NS/POD`, checked against Kubernetes' name rules.
pub fn parse_pod(what: &str, v: &str) -> Result<(String, String), PolicyCliError> {
    let bad = |why: String| usage(format!("invalid {what} {v:?}: {why}"));
    let Some((ns, name)) = v.split_once('/') else {
        return Err(bad("expected NAMESPACE/POD, such as x/a".into()));
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(bad("expected NAMESPACE/POD, such as x/a".into()));
    }
    weir_policy::names::dns1123_label(ns).map_err(|p| bad(format!("namespace {p}")))?;
    weir_policy::names::dns1123_subdomain(name).map_err(|p| bad(format!("pod name {p}")))?;
    Ok((ns.to_owned(), name.to_owned()))
}

/// `NS/POD` or an IPv4/IPv6 address.
pub fn parse_target(what: &str, v: &str) -> Result<ExplainTarget, PolicyCliError> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(ExplainTarget::Ip(ip));
    }
    if !v.contains('/') {
        return Err(usage(format!(
            "invalid {what} {v:?}: expected NAMESPACE/POD (such as x/a) or an IP address"
        )));
    }
    let (namespace, name) = parse_pod(what, v)?;
    Ok(ExplainTarget::Pod { namespace, name })
}

/// `80/TCP`, `53/udp`, `80` (TCP, as a NetworkPolicy port without a
/// protocol), `ICMP` / `ICMPv4` / `ICMPv6`: (IP protocol number, port).
pub fn parse_port(what: &str, v: &str) -> Result<(u8, u16), PolicyCliError> {
    let bad = || {
        usage(format!(
            "invalid {what} {v:?}: expected PORT/PROTOCOL such as 80/TCP, 53/UDP or 9000/SCTP \
             (a port alone means TCP), or ICMP / ICMPv6"
        ))
    };
    match v.to_ascii_lowercase().as_str() {
        "icmp" | "icmpv4" => return Ok((1, 0)),
        "icmpv6" => return Ok((58, 0)),
        _ => {}
    }
    let (port, proto) = match v.split_once('/') {
        Some((p, proto)) => (p, proto),
        None => (v, "TCP"),
    };
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => return Err(bad()),
    };
    let port: u32 = port.parse().map_err(|_| bad())?;
    if !(1..=65535).contains(&port) {
        return Err(usage(format!(
            "invalid {what} {v:?}: port {port} is not between 1 and 65535"
        )));
    }
    Ok((proto, port as u16))
}

/// The compiler's question from explain's parameters.
pub fn parse_params(p: &ExplainParams, flags: Flags) -> Result<ExplainQuery, PolicyCliError> {
    let from = parse_pod(&flags.name("from"), &p.from)?;
    let to = parse_target(&flags.name("to"), &p.to)?;
    let (proto, port) = parse_port(&flags.name("port"), &p.port)?;
    Ok(ExplainQuery {
        from,
        to,
        proto,
        port,
    })
}

/// `NS/NAME` of a policy (`--delete`).
pub fn parse_policy_name(v: &str) -> Result<(String, String), PolicyCliError> {
    let bad = |why: String| usage(format!("invalid --delete {v:?}: {why}"));
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            weir_policy::names::dns1123_label(ns).map_err(|p| bad(format!("namespace {p}")))?;
            weir_policy::names::dns1123_subdomain(name)
                .map_err(|p| bad(format!("policy name {p}")))?;
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(bad("expected NAMESPACE/NAME of a NetworkPolicy".into())),
    }
}

// ---------------------------------------------------------------------------
// The model

/// The compiler's input and a name for it in messages.
#[derive(Clone, Debug)]
pub struct Model {
    pub input: Input,
    /// `the manifests in DIR`, `the agent's model (node N)`.
    pub name: String,
}

/// Reads a manifests directory as the agent does and builds the compiler's
/// input with the agent's own function; this machine's addresses are the
/// node's. Invalid objects are skipped, as the agent skips them, and
/// returned so that the command can say so.
pub fn model_from_manifests(
    dir: &Path,
) -> Result<(Model, Vec<weir_state::ManifestError>), PolicyCliError> {
    let loaded = weir_state::load_dir(dir);
    if !loaded.complete {
        let source = loaded
            .errors
            .iter()
            .find_map(|e| match e {
                weir_state::ManifestError::Directory { source, .. } => {
                    Some(std::io::Error::new(source.kind(), source.to_string()))
                }
                _ => None,
            })
            .unwrap_or_else(|| std::io::Error::other("cannot list the directory"));
        return Err(PolicyCliError::File {
            what: "--manifests",
            path: dir.to_path_buf(),
            source,
        });
    }
    let mut state = weir_state::ClusterState::new();
    state.set_manifests(loaded.objects.into_iter().map(|o| o.object));
    let input = crate::policy::input_from_state(
        &state,
        &weir_state::EndpointIndex::new(),
        crate::policy::local_addresses(),
        &weir_policy::Options::default(),
    );
    Ok((
        Model {
            input,
            name: format!("the manifests in {}", dir.display()),
        },
        loaded.errors,
    ))
}

/// [`model_from_manifests`] for a command: what was skipped goes to stderr
/// (diagnostics of the directory the user named, not logs).
fn manifests_model(dir: &Path) -> Result<Model, PolicyCliError> {
    let (model, skipped) = model_from_manifests(dir)?;
    for e in &skipped {
        eprintln!(
            "weir: warning: {}: {e} (skipped, as the agent skips it)",
            dir.display()
        );
    }
    Ok(model)
}

fn find_pod<'a>(input: &'a Input, ns: &str, name: &str) -> Option<&'a PodInput> {
    input
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
}

/// What the model has where a pod was not found, for the error message.
fn unknown_pod_hint(input: &Input, ns: &str) -> String {
    const SHOWN: usize = 10;
    let mut pods: Vec<&str> = input
        .pods
        .iter()
        .filter(|p| p.namespace == ns)
        .map(|p| p.name.as_str())
        .collect();
    pods.sort_unstable();
    if pods.is_empty() {
        let mut namespaces: BTreeSet<&str> =
            input.pods.iter().map(|p| p.namespace.as_str()).collect();
        namespaces.extend(input.namespaces.iter().map(|n| n.name.as_str()));
        let list: Vec<&str> = namespaces.into_iter().take(SHOWN).collect();
        return if list.is_empty() {
            " (it has no pods at all)".into()
        } else {
            format!(
                " (no pods in namespace {ns}; namespaces with pods or manifests: {})",
                list.join(", ")
            )
        };
    }
    let more = if pods.len() > SHOWN {
        format!(" and {} more", pods.len() - SHOWN)
    } else {
        String::new()
    };
    pods.truncate(SHOWN);
    format!(" (pods of namespace {ns} there: {}{more})", pods.join(", "))
}

// ---------------------------------------------------------------------------
// The local API's routes

/// Where the local API's policy routes get the model, fresh per question.
pub type ModelSource = Arc<dyn Fn() -> Model + Send + Sync>;

/// Largest `POST /v1/policy/what-if` body: recorded flows arrive grouped by
/// addresses, protocol and port, a few hundred bytes each.
const WHAT_IF_BODY_LIMIT: usize = 64 << 20;

/// `GET /v1/policy/explain` and `POST /v1/policy/what-if`, answered with
/// [`explain`] and [`what_if`] on the model `source` gives (the agent's
/// live model; a manifests directory in tests).
pub fn routes<S: Clone + Send + Sync + 'static>(source: ModelSource) -> axum::Router<S> {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post};
    use weir_localapi::paths;
    axum::Router::new()
        .route(paths::POLICY_EXPLAIN, get(explain_route))
        .route(
            paths::POLICY_WHAT_IF,
            post(what_if_route).layer(DefaultBodyLimit::max(WHAT_IF_BODY_LIMIT)),
        )
        .with_state(source)
}

type RouteResult<T> = Result<axum::Json<T>, (axum::http::StatusCode, axum::Json<ErrorBody>)>;

/// Runs `f` on the model off the async workers (building the model takes
/// the agent's locks; compiling takes CPU) and answers with its result.
async fn answer<T: Send + 'static>(
    source: ModelSource,
    f: impl FnOnce(&Model) -> Result<T, PolicyCliError> + Send + 'static,
) -> RouteResult<T> {
    use axum::http::StatusCode;
    let fail = |status: StatusCode, error: String| (status, axum::Json(ErrorBody { error }));
    match tokio::task::spawn_blocking(move || f(&source())).await {
        Ok(Ok(v)) => Ok(axum::Json(v)),
        Ok(Err(e)) => Err(fail(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_string(),
        )),
        Err(e) => Err(fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn explain_route(
    axum::extract::State(source): axum::extract::State<ModelSource>,
    axum::extract::Query(params): axum::extract::Query<ExplainParams>,
) -> RouteResult<PolicyExplanation> {
    answer(source, move |m| explain(m, &params, Flags::Api)).await
}

async fn what_if_route(
    axum::extract::State(source): axum::extract::State<ModelSource>,
    axum::Json(request): axum::Json<WhatIfRequest>,
) -> RouteResult<WhatIfReport> {
    answer(source, move |m| what_if(m, &request)).await
}

// ---------------------------------------------------------------------------
// explain

/// Explains a connection on `model` (the command's offline path and the
/// local API's `GET /v1/policy/explain`).
pub fn explain(
    model: &Model,
    params: &ExplainParams,
    flags: Flags,
) -> Result<PolicyExplanation, PolicyCliError> {
    let query = parse_params(params, flags)?;
    let e = weir_policy::explain(&model.input, &query).map_err(|e| match e {
        ExplainError::UnknownPod { namespace, name } => {
            let is_from = query.from == (namespace.clone(), name.clone());
            PolicyCliError::UnknownPod {
                // The command's words even from the local API: its answer
                // is what `weir policy explain` prints.
                what: Flags::Cli.name(if is_from { "from" } else { "to" }),
                pod: format!("{namespace}/{name}"),
                model: model.name.clone(),
                hint: unknown_pod_hint(&model.input, &namespace),
            }
        }
    })?;
    let verdict = if e.allowed {
        ALLOWED
    } else if e.passes {
        AUDIT
    } else {
        DENIED
    };
    Ok(PolicyExplanation {
        verdict: verdict.into(),
        from: peer_info(&model.input, &e.from),
        to: peer_info(&model.input, &e.to),
        protocol: protocol_name(e.proto),
        port: weir_policy::datapath_port(e.proto, e.port),
        egress: direction_view(&e.egress),
        ingress: e.ingress.as_ref().map(direction_view),
        model: model.name.clone(),
    })
}

fn reserved_name(id: u32) -> Option<&'static str> {
    match id {
        identity::HOST => Some("host"),
        identity::WORLD => Some("world"),
        identity::REMOTE_NODE => Some("remote-node"),
        _ => None,
    }
}

fn label_list(labels: &weir_policy::Labels) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn peer_info(input: &Input, side: &weir_policy::Side) -> PeerInfo {
    let pod = side.pod.as_deref().and_then(|key| {
        let (ns, name) = key.split_once('/')?;
        find_pod(input, ns, name)
    });
    let namespace_labels = pod
        .and_then(|p| input.namespaces.iter().find(|n| n.name == p.namespace))
        .map(|n| label_list(&n.labels))
        .unwrap_or_default();
    PeerInfo {
        pod: side.pod.clone(),
        ip: side.ip,
        identity: side.identity,
        reserved: reserved_name(side.identity).map(str::to_owned),
        labels: pod.map(|p| label_list(&p.labels)).unwrap_or_default(),
        namespace_labels,
        cidr_cell: side.cell.map(|(_, c)| c.to_string()),
        host_network: pod.is_some_and(|p| p.host_network),
    }
}

fn verdict_name(v: &weir_policy::Verdict) -> &'static str {
    if v.allowed {
        ALLOWED
    } else if v.audit {
        AUDIT
    } else {
        DENIED
    }
}

fn lookup_name(l: Lookup) -> &'static str {
    match l {
        Lookup::NoEndpoint => "not policed",
        Lookup::NotEnforced => "not isolated",
        Lookup::Identity(_) => "identity",
        Lookup::Cell(_) => "ipBlock",
        Lookup::Any => "any peer",
        Lookup::Denied => "no rule",
    }
}

fn refs(policies: &[PolicyRef]) -> Vec<String> {
    policies.iter().map(ToString::to_string).collect()
}

fn direction_view(d: &weir_policy::DirectionExplanation) -> DirectionExplanation {
    DirectionExplanation {
        direction: d.direction.as_str().to_ascii_lowercase(),
        endpoint: d.endpoint.clone(),
        enforced: d.enforced,
        verdict: verdict_name(&d.verdict).into(),
        decided_by: lookup_name(d.verdict.lookup).into(),
        isolated_by: refs(&d.isolated_by),
        attribution: refs(&d.attribution),
        rules: d
            .rules
            .iter()
            .map(|r| RuleRef {
                policy: r.policy.to_string(),
                rule: r.rule.clone(),
                peer: r.peer.clone(),
                port: r.port.clone(),
                via: match r.via {
                    Via::Identity => "identity",
                    Via::Cidr => "ipBlock",
                    Via::Any => "any",
                    Via::NodeRule => "node",
                }
                .into(),
            })
            .collect(),
        note: d.note.clone(),
    }
}

/// `TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6`, else `proto N`.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMPv4".into(),
        58 => "ICMPv6".into(),
        n => format!("proto {n}"),
    }
}

/// `80/TCP`, or the protocol alone when it has no ports.
fn port_text(protocol: &str, port: u16) -> String {
    if port == 0 {
        protocol.to_owned()
    } else {
        format!("{port}/{protocol}")
    }
}

fn port_text_num(proto: u8, port: u16) -> String {
    port_text(
        &protocol_name(proto),
        weir_policy::datapath_port(proto, port),
    )
}

/// `x/a (10.0.0.1)`, `10.0.0.1`.
fn peer_short(p: &PeerInfo) -> String {
    match (&p.pod, p.ip) {
        (Some(pod), Some(ip)) => format!("{pod} ({ip})"),
        (Some(pod), None) => pod.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "?".into(),
    }
}

/// `x/b (identity 12345, labels pod=b; namespace labels ns=x)`: what a
/// selector or ipBlock is matched against.
fn peer_detail(p: &PeerInfo) -> String {
    let name = match (&p.pod, p.ip) {
        (Some(pod), _) => pod.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "?".into(),
    };
    let mut parts = vec![match &p.reserved {
        Some(r) => format!("identity {} ({r})", p.identity),
        None => format!("identity {}", p.identity),
    }];
    if p.pod.is_some() {
        if let Some(ip) = p.ip {
            parts.push(format!("address {ip}"));
        }
        parts.push(if p.labels.is_empty() {
            "no labels".into()
        } else {
            format!("labels {}", p.labels.join(","))
        });
        if !p.namespace_labels.is_empty() {
            parts.push(format!("namespace labels {}", p.namespace_labels.join(",")));
        }
    }
    parts.push(match &p.cidr_cell {
        Some(c) => format!("in ipBlock boundary {c}"),
        None => "in no ipBlock".into(),
    });
    if p.host_network {
        parts.push("hostNetwork".into());
    }
    format!("{name} ({})", parts.join(", "))
}

/// `x/web spec.ingress[1].from[0] ports[0]`: the rule by its fields, the
/// port path shortened to what follows the rule.
fn rule_text(r: &RuleRef) -> String {
    if r.via == "node" {
        return format!(
            "{}: ingress from this node is always allowed (policy.allowHostIngress)",
            r.policy
        );
    }
    let peer = match &r.peer {
        Some(p) => p.clone(),
        None => format!("{} (any peer)", r.rule),
    };
    let port = match &r.port {
        Some(p) => p
            .strip_prefix(&format!("{}.", r.rule))
            .unwrap_or(p)
            .to_owned(),
        None => "(any port)".into(),
    };
    let via = match r.via.as_str() {
        "identity" => "  [selector matches the peer]",
        "ipBlock" => "  [ipBlock contains the peer]",
        _ => "",
    };
    format!("{} {peer} {port}{via}", r.policy)
}

fn direction_text(out: &mut String, e: &PolicyExplanation, d: &DirectionExplanation) {
    let ingress = d.direction == "ingress";
    let (peer, preposition) = if ingress {
        (&e.from, "from")
    } else {
        (&e.to, "to")
    };
    let head = format!("{} at {}", d.direction, d.endpoint);
    if let Some(note) = &d.note {
        out.push_str(&format!("{head}: {} ({note})\n", d.verdict));
        return;
    }
    if !d.enforced {
        out.push_str(&format!(
            "{head}: {} (not isolated: no NetworkPolicy of its namespace with policyType {} selects it)\n",
            d.verdict,
            if ingress { "Ingress" } else { "Egress" },
        ));
        return;
    }
    match d.verdict.as_str() {
        ALLOWED => out.push_str(&format!("{head}: ALLOWED\n")),
        AUDIT => out.push_str(&format!(
            "{head}: AUDIT (denied, but the pod is in audit mode: it passes and flows say AUDIT)\n"
        )),
        _ => out.push_str(&format!("{head}: DENIED\n")),
    }
    out.push_str(&format!("  isolated by: {}\n", d.isolated_by.join(", ")));
    if d.rules.is_empty() {
        out.push_str(&format!(
            "  no rule of these policies allows {} {preposition} {}\n",
            port_text(&e.protocol, e.port),
            peer_detail(peer),
        ));
    } else {
        out.push_str(&format!(
            "  allowed by ({preposition} {}):\n",
            peer_detail(peer)
        ));
        for r in &d.rules {
            out.push_str(&format!("    {}\n", rule_text(r)));
        }
    }
}

/// The text form: the verdict first, then each end.
pub fn explanation_text(e: &PolicyExplanation) -> String {
    let mut out = format!(
        "{}  {} -> {}  {}\n",
        e.verdict,
        peer_short(&e.from),
        peer_short(&e.to),
        port_text(&e.protocol, e.port)
    );
    direction_text(&mut out, e, &e.egress);
    match &e.ingress {
        Some(i) => direction_text(&mut out, e, i),
        None => out.push_str(&format!(
            "ingress: {} is not a pod, so no ingress policy applies\n",
            peer_short(&e.to)
        )),
    }
    out.push_str(&format!("model: {}\n", e.model));
    out
}

// ---------------------------------------------------------------------------
// what-if: the change

/// Reads CHANGE.yaml: multi-document YAML (YAML 1.2 booleans, as the
/// manifests source reads), or a JSON stream for `.json`; `List` and
/// `NetworkPolicyList` documents are flattened; every policy is validated
/// here, so an invalid change is refused before anything is asked.
pub fn read_change_file(path: &Path) -> Result<Vec<Value>, PolicyCliError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyCliError::File {
        what: "change file",
        path: path.to_path_buf(),
        source,
    })?;
    let is_json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let docs: Vec<Value> = if is_json {
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| {
                PolicyCliError::InvalidChange(format!(
                    "{}: line {}: invalid JSON: {e}",
                    path.display(),
                    e.line()
                ))
            })?
    } else {
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(&text, options).map_err(|e| {
            let e = e.without_snippet();
            let line = e.location().map_or(0, |l| l.line());
            PolicyCliError::InvalidChange(format!(
                "{}: line {line}: invalid YAML: {e}",
                path.display()
            ))
        })?
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let where_ = format!("{}: document {}", path.display(), i + 1);
        flatten_doc(doc, &where_, &mut out)?;
    }
    let (docs, origins): (Vec<Value>, Vec<String>) = out.into_iter().unzip();
    change_policies(&docs, &|i| origins[i].clone())?;
    Ok(docs)
}

/// Appends the NetworkPolicies of one document (a policy or a list of
/// them), each with where it was for messages.
fn flatten_doc(
    doc: Value,
    where_: &str,
    out: &mut Vec<(Value, String)>,
) -> Result<(), PolicyCliError> {
    if doc.is_null() {
        return Ok(());
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "List" | "NetworkPolicyList" => {
            let items = match doc.get("items") {
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => {
                    return Err(PolicyCliError::InvalidChange(format!(
                        "{where_}: field items: expected a list"
                    )));
                }
            };
            for (j, item) in items.into_iter().enumerate() {
                let inner = format!("{where_}, item {}", j + 1);
                let k = item.get("kind").and_then(Value::as_str).unwrap_or_default();
                if k != weir_policy::spec::KIND && !(kind == "NetworkPolicyList" && k.is_empty()) {
                    return Err(not_a_policy(&inner, k));
                }
                out.push((item, inner));
            }
            Ok(())
        }
        k if k == weir_policy::spec::KIND => {
            out.push((doc, where_.to_owned()));
            Ok(())
        }
        k => Err(not_a_policy(where_, k)),
    }
}

fn not_a_policy(where_: &str, kind: &str) -> PolicyCliError {
    let found = if kind.is_empty() {
        "no kind".to_owned()
    } else {
        format!("kind {kind:?}")
    };
    PolicyCliError::InvalidChange(format!(
        "{where_}: expected a NetworkPolicy (networking.k8s.io/v1), found {found}: a change file holds NetworkPolicy documents only"
    ))
}

/// Validates the change's policies with the compiler's parser; `origin`
/// names the i-th for messages. One `ns/name` twice is refused.
fn change_policies(
    docs: &[Value],
    origin: &dyn Fn(usize) -> String,
) -> Result<Vec<Arc<NetworkPolicy>>, PolicyCliError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let p = NetworkPolicy::from_value(doc)
            .map_err(|e| PolicyCliError::InvalidChange(format!("{}: {e}", origin(i))))?;
        if let Some(first) = seen.insert(p.key(), i) {
            return Err(PolicyCliError::InvalidChange(format!(
                "{}: NetworkPolicy {} is already in the change ({}): give each policy once",
                origin(i),
                p.key(),
                origin(first)
            )));
        }
        out.push(Arc::new(p));
    }
    Ok(out)
}

/// The model's input after the change, and what the change did.
fn apply_change(
    model: &Model,
    changes: &[Arc<NetworkPolicy>],
    deletes: &[String],
) -> Result<(Input, Vec<PolicyEdit>), PolicyCliError> {
    let mut input = model.input.clone();
    let mut edits = Vec::new();
    for d in deletes {
        let (ns, name) = parse_policy_name(d)?;
        let before = input.policies.len();
        input
            .policies
            .retain(|p| !(p.namespace == ns && p.name == name));
        if input.policies.len() == before {
            return Err(PolicyCliError::UnknownPolicy {
                policy: d.clone(),
                model: model.name.clone(),
            });
        }
        if changes.iter().any(|c| c.namespace == ns && c.name == name) {
            return Err(usage(format!(
                "--delete {d}: the change file also holds NetworkPolicy {d}: delete it or change it, not both"
            )));
        }
        edits.push(PolicyEdit {
            policy: d.clone(),
            action: "deleted".into(),
        });
    }
    for c in changes {
        let action = match input
            .policies
            .iter_mut()
            .find(|p| p.namespace == c.namespace && p.name == c.name)
        {
            Some(slot) => {
                *slot = Arc::clone(c);
                "replaced"
            }
            None => {
                input.policies.push(Arc::clone(c));
                "added"
            }
        };
        edits.push(PolicyEdit {
            policy: c.key(),
            action: action.into(),
        });
    }
    Ok((input, edits))
}

// ---------------------------------------------------------------------------
// what-if: replay

/// A model compiled with every pod policed (each on a private interface
/// number), so that any recorded connection can be decided at both ends.
struct Replay {
    compiled: Compiled,
    /// (namespace, name) -> pod index.
    by_name: HashMap<(String, String), usize>,
    /// Canonical address -> pod index (not hostNetwork; first by name wins).
    by_ip: HashMap<IpAddr, usize>,
    input: Input,
}

impl Replay {
    fn new(input: &Input) -> Self {
        let mut input = input.clone();
        // Every pod, hostNetwork ones included: the compiler decides which
        // it polices (a pod it does not compile answers "no endpoint").
        for (i, p) in input.pods.iter_mut().enumerate() {
            p.endpoint = Some(REPLAY_IFINDEX_BASE + i as u32);
        }
        let compiled = Compiler::new().compile(&input);
        let mut order: Vec<usize> = (0..input.pods.len()).collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (&input.pods[a], &input.pods[b]);
            (&pa.namespace, &pa.name).cmp(&(&pb.namespace, &pb.name))
        });
        let mut by_name = HashMap::new();
        let mut by_ip = HashMap::new();
        for i in order {
            let p = &input.pods[i];
            by_name
                .entry((p.namespace.clone(), p.name.clone()))
                .or_insert(i);
            if !p.host_network {
                for ip in &p.ips {
                    by_ip.entry(weir_policy::cidr::canonical(*ip)).or_insert(i);
                }
            }
        }
        Self {
            compiled,
            by_name,
            by_ip,
            input,
        }
    }

    /// The pod a recorded side is: by the name the flow gave, else by address.
    fn pod_of(&self, named: Option<&str>, ip: IpAddr) -> Option<usize> {
        named
            .and_then(|k| k.split_once('/'))
            .and_then(|(ns, name)| self.by_name.get(&(ns.to_owned(), name.to_owned())))
            .copied()
            .or_else(|| self.by_ip.get(&weir_policy::cidr::canonical(ip)).copied())
    }

    fn end(&self, pod: usize, dir: u8, peer: IpAddr, proto: u8, port: u16) -> Option<EndVerdict> {
        let p = &self.input.pods[pod];
        let ifindex = p.endpoint?;
        let v = weir_policy::evaluate(&self.compiled, ifindex, dir, peer, proto, port);
        end_verdict(
            format!("{}/{}", p.namespace, p.name),
            &v,
            self.compiled.attribution(v.attr).map(refs),
        )
    }

    fn decide(&self, f: &RecordedFlow) -> Replayed {
        let src = self.pod_of(f.source_pod.as_deref(), f.source_ip);
        if let Some(i) = src
            && self.input.pods[i].host_network
            && let Some(r) = self.decide_from_host_network(i, f)
        {
            return r;
        }
        let egress =
            src.and_then(|p| self.end(p, direction::EGRESS, f.destination_ip, f.protocol, f.port));
        let ingress = self
            .pod_of(f.destination_pod.as_deref(), f.destination_ip)
            .and_then(|p| self.end(p, direction::INGRESS, f.source_ip, f.protocol, f.port));
        combine(egress, ingress)
    }

    /// A hostNetwork pod's packets carry the node's address, yet the
    /// datapath knows them by the pod's cgroup: the peer identity is not the
    /// address's, so ask the compiler's own explain, which knows that.
    fn decide_from_host_network(&self, src: usize, f: &RecordedFlow) -> Option<Replayed> {
        let p = &self.input.pods[src];
        let q = ExplainQuery {
            from: (p.namespace.clone(), p.name.clone()),
            to: ExplainTarget::Ip(f.destination_ip),
            proto: f.protocol,
            port: f.port,
        };
        let e = weir_policy::explain(&self.input, &q).ok()?;
        let end = |d: &weir_policy::DirectionExplanation| {
            end_verdict(d.endpoint.clone(), &d.verdict, Some(refs(&d.attribution)))
        };
        Some(combine(end(&e.egress), e.ingress.as_ref().and_then(end)))
    }
}

/// One end's replayed verdict; `None` when the compiler does not police it.
fn end_verdict(
    endpoint: String,
    v: &weir_policy::Verdict,
    policies: Option<Vec<String>>,
) -> Option<EndVerdict> {
    if v.lookup == Lookup::NoEndpoint {
        return None;
    }
    Some(EndVerdict {
        endpoint,
        verdict: verdict_name(v).into(),
        enforced: v.lookup != Lookup::NotEnforced,
        policies: policies.unwrap_or_default(),
    })
}

/// The connection's verdict from its two ends.
fn combine(egress: Option<EndVerdict>, ingress: Option<EndVerdict>) -> Replayed {
    let any = |v: &str| {
        [&egress, &ingress]
            .iter()
            .any(|e| e.as_ref().is_some_and(|e| e.verdict == v))
    };
    let verdict = if any(DENIED) {
        DENIED
    } else if any(AUDIT) {
        AUDIT
    } else {
        ALLOWED
    };
    Replayed {
        verdict: verdict.into(),
        egress,
        ingress,
    }
}

/// Gives pods named by the flows the addresses the flows saw them with,
/// when the model lacks them (a Pod manifest without `status.podIPs`) and
/// no other pod has them, so that the peer identity is the pod's, as it was
/// in the datapath that recorded the flow.
fn learn_addresses(input: &mut Input, flows: &[RecordedFlow]) {
    let mut owned: HashSet<IpAddr> = input
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(|ip| weir_policy::cidr::canonical(*ip)))
        .collect();
    for f in flows {
        for (named, ip) in [
            (&f.source_pod, f.source_ip),
            (&f.destination_pod, f.destination_ip),
        ] {
            let Some((ns, name)) = named.as_deref().and_then(|k| k.split_once('/')) else {
                continue;
            };
            let ip = weir_policy::cidr::canonical(ip);
            if owned.contains(&ip) {
                continue;
            }
            if let Some(p) = input
                .pods
                .iter_mut()
                .find(|p| p.namespace == ns && p.name == name && !p.host_network)
            {
                p.ips.push(ip);
                owned.insert(ip);
            }
        }
    }
}

/// Replays `request.flows` on `model` before and after the change (the
/// command's offline path and the local API's `POST /v1/policy/what-if`).
pub fn what_if(model: &Model, request: &WhatIfRequest) -> Result<WhatIfReport, PolicyCliError> {
    let changes = change_policies(&request.changes, &|i| format!("changes[{i}]"))?;
    let mut base = model.clone();
    learn_addresses(&mut base.input, &request.flows);
    let (after_input, edits) = apply_change(&base, &changes, &request.deletes)?;
    let before = Replay::new(&base.input);
    let after = Replay::new(&after_input);
    let mut report = WhatIfReport {
        model: model.name.clone(),
        policies_before: base.input.policies.len(),
        policies_after: after_input.policies.len(),
        edits,
        flows: request.flows.len(),
        ..WhatIfReport::default()
    };
    for f in &request.flows {
        report.connections += f.connections;
        let b = before.decide(f);
        let a = after.decide(f);
        if a.verdict != b.verdict {
            report.changed_connections += f.connections;
            report.changes.push(VerdictChange {
                flow: f.clone(),
                before: b,
                after: a,
            });
        }
    }
    report.changes.sort_by(|x, y| {
        let key = |c: &VerdictChange| {
            (
                c.flow.source_pod.clone(),
                c.flow.source_ip,
                c.flow.destination_pod.clone(),
                c.flow.destination_ip,
                c.flow.protocol,
                c.flow.port,
            )
        };
        key(x).cmp(&key(y))
    });
    Ok(report)
}

// ---------------------------------------------------------------------------
// what-if: recorded flows

type FiveTuple = (IpAddr, IpAddr, u8, u16, u16);
type FlowKey = (IpAddr, IpAddr, u8, u16);

/// Recorded flows reduced to connections: replies skipped, one entry per
/// 5-tuple, grouped by what decides a verdict (addresses, protocol, port).
#[derive(Debug, Default)]
pub struct FlowTally {
    tuples: HashSet<FiveTuple>,
    groups: BTreeMap<FlowKey, RecordedFlow>,
    skipped: BTreeMap<String, u64>,
}

impl FlowTally {
    /// Counts one recorded item not replayed, by reason.
    pub fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_owned()).or_default() += 1;
    }

    /// Adds one recorded flow.
    pub fn add(&mut self, f: &weir_flows::Flow) {
        use weir_flows::flow::Layer4;
        if f.is_reply == Some(true) {
            return self.skip("replies");
        }
        let (Some(src), Some(dst)) = (
            f.ip.as_ref().and_then(|i| i.source),
            f.ip.as_ref().and_then(|i| i.destination),
        ) else {
            return self.skip("without IP addresses");
        };
        let Some(l4) = &f.l4 else {
            return self.skip("without an L4 protocol");
        };
        let (proto, sport, dport) = match l4 {
            Layer4::Tcp(t) => (6, t.source_port as u16, t.destination_port as u16),
            Layer4::Udp(u) => (17, u.source_port as u16, u.destination_port as u16),
            Layer4::Sctp(u) => (132, u.source_port as u16, u.destination_port as u16),
            Layer4::Icmpv4(i) => {
                // The datapath never polices ICMP errors (see icmp_infrastructure
                // in the eBPF programs); echo replies are replies.
                if matches!(i.r#type, 3 | 11 | 12) {
                    return self.skip("ICMP errors and neighbour discovery (never policed)");
                }
                if i.r#type == 0 {
                    return self.skip("replies");
                }
                (1, 0, 0)
            }
            Layer4::Icmpv6(i) => {
                if matches!(i.r#type, 1..=4 | 130..=137 | 143) {
                    return self.skip("ICMP errors and neighbour discovery (never policed)");
                }
                if i.r#type == 129 {
                    return self.skip("replies");
                }
                (58, 0, 0)
            }
            Layer4::Vrrp(_) => (112, 0, 0),
            Layer4::Igmp(_) => (2, 0, 0),
        };
        let (src, dst) = (
            weir_policy::cidr::canonical(src),
            weir_policy::cidr::canonical(dst),
        );
        let pod = |e: &Option<Arc<weir_flows::flow::Endpoint>>| {
            e.as_ref()
                .filter(|e| !e.pod_name.is_empty() && !e.namespace.is_empty())
                .map(|e| format!("{}/{}", e.namespace, e.pod_name))
        };
        let group = self
            .groups
            .entry((src, dst, proto, dport))
            .or_insert_with(|| RecordedFlow {
                source_ip: src,
                destination_ip: dst,
                source_pod: None,
                destination_pod: None,
                protocol: proto,
                port: dport,
                connections: 0,
                recorded: Vec::new(),
            });
        if group.source_pod.is_none() {
            group.source_pod = pod(&f.source);
        }
        if group.destination_pod.is_none() {
            group.destination_pod = pod(&f.destination);
        }
        let verdict = f.verdict.as_str_name();
        if !group.recorded.iter().any(|v| v == verdict) {
            group.recorded.push(verdict.to_owned());
            group.recorded.sort();
        }
        if self.tuples.insert((src, dst, proto, sport, dport)) {
            group.connections += 1;
        }
    }

    /// The grouped connections and what was skipped, by reason.
    pub fn finish(self) -> (Vec<RecordedFlow>, BTreeMap<String, u64>) {
        (self.groups.into_values().collect(), self.skipped)
    }
}

/// Reads a flow log (one export event per line; other lines are counted
/// as skipped).
pub fn read_flow_log(path: &Path) -> Result<FlowTally, PolicyCliError> {
    let file_err = |source| PolicyCliError::File {
        what: "--flows",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_err)?;
    let mut tally = FlowTally::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(file_err)?;
        if line.trim().is_empty() {
            continue;
        }
        match weir_flows::export::ExportEvent::parse(&line) {
            Ok(ev) => match &ev.flow {
                Some(f) => tally.add(f),
                None => tally.skip("lines without a flow (lost events, other events)"),
            },
            Err(_) => tally.skip("lines that are not flow log JSON"),
        }
    }
    Ok(tally)
}

/// Reads every flow in the flow API's ring (oldest first).
pub async fn fetch_flows(
    server: &str,
    tls: weir_api_net::ClientTls,
    local_socket: &Path,
) -> Result<FlowTally, PolicyCliError> {
    use weir_api::proto::observer::get_flows_response::ResponseTypes;
    use weir_api::proto::observer::observer_client::ObserverClient;
    use weir_api_net::{Address, ClientTarget, ConnectFailure, NetError};

    let has_token = tls.token.is_some();
    let target =
        ClientTarget::parse(server, tls).map_err(|e| usage(format!("invalid --server: {e}")))?;
    let channel = match tokio::time::timeout(CALL_TIMEOUT, weir_api_net::connect(&target)).await {
        Err(_) => {
            return Err(PolicyCliError::FlowApi(format!(
                "the flow API at {target} did not answer within {CALL_TIMEOUT:?}: check --server"
            )));
        }
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(PolicyCliError::FlowApi(match (&e, target.address()) {
                (
                    NetError::Connect {
                        failure:
                            f @ (ConnectFailure::NoSuchSocket | ConnectFailure::ConnectionRefused),
                        ..
                    },
                    Address::Unix(path),
                ) => {
                    let state = weir_localapi::Client::new(local_socket)
                        .with_timeout(Duration::from_secs(2))
                        .flow_api()
                        .await
                        .ok();
                    crate::observe::unreachable_socket_message(&target, path, *f, state.as_ref())
                }
                _ => format!("{e} (or replay a flow log with --flows FILE)"),
            }));
        }
    };
    let request = weir_api::proto::observer::GetFlowsRequest {
        // number 0 with first: every flow of the ring, oldest first.
        first: true,
        number: 0,
        ..Default::default()
    };
    let rpc_err = |s: tonic::Status| {
        PolicyCliError::FlowApi(match weir_api_net::connection_error(&target, &s) {
            Some(e) => e.to_string(),
            None if s.code() == tonic::Code::Unauthenticated => format!(
                "the flow API at {target} refused the request (UNAUTHENTICATED: {}): {}",
                s.message(),
                if has_token {
                    "the bearer token was not accepted; check --token-file"
                } else {
                    "it needs a bearer token: pass --token-file"
                }
            ),
            None => format!("GetFlows at {target} failed: {}", s.message()),
        })
    };
    let mut stream = ObserverClient::new(channel)
        .get_flows(request)
        .await
        .map_err(rpc_err)?
        .into_inner();
    let mut tally = FlowTally::default();
    loop {
        let msg = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                PolicyCliError::FlowApi(format!(
                    "the flow API at {target} stopped answering for {CALL_TIMEOUT:?}"
                ))
            })?
            .map_err(rpc_err)?;
        let Some(res) = msg else { break };
        match res.response_types {
            Some(ResponseTypes::Flow(f)) => tally.add(&weir_api::convert::flow_from_proto(&f)),
            Some(ResponseTypes::LostEvents(_)) => tally.skip("lost events"),
            _ => tally.skip("other events"),
        }
    }
    Ok(tally)
}

// ---------------------------------------------------------------------------
// what-if: output

fn side_name(pod: &Option<String>, ip: IpAddr) -> String {
    match pod {
        Some(p) => format!("{p} ({ip})"),
        None => ip.to_string(),
    }
}

fn end_text(dir: &str, e: &Option<EndVerdict>) -> String {
    match e {
        None => format!("{dir} not policed"),
        Some(e) if !e.enforced => format!("{dir} {} {} (not isolated)", e.endpoint, e.verdict),
        Some(e) => {
            let by = if e.verdict == ALLOWED {
                "allowed by"
            } else {
                "isolated by"
            };
            format!(
                "{dir} {} {} ({by} {})",
                e.endpoint,
                e.verdict,
                e.policies.join(", ")
            )
        }
    }
}

fn replayed_text(r: &Replayed) -> String {
    format!(
        "{}; {}",
        end_text("egress", &r.egress),
        end_text("ingress", &r.ingress)
    )
}

/// The text form: what was compared, each changed flow with both verdicts,
/// and the summary line last.
pub fn what_if_text(r: &WhatIfReport) -> String {
    let mut out = String::new();
    let edits: Vec<String> = r
        .edits
        .iter()
        .map(|e| format!("{} {}", e.policy, e.action))
        .collect();
    out.push_str(&format!(
        "change: {} (policies: {} -> {})\n",
        if edits.is_empty() {
            "nothing".to_owned()
        } else {
            edits.join(", ")
        },
        r.policies_before,
        r.policies_after
    ));
    out.push_str(&format!("model: {}\n", r.model));
    out.push_str(&format!("flows: {}", r.flows_from));
    if !r.skipped.is_empty() {
        let s: Vec<String> = r.skipped.iter().map(|(k, v)| format!("{v} {k}")).collect();
        out.push_str(&format!(" (skipped: {})", s.join(", ")));
    }
    out.push('\n');
    for c in &r.changes {
        let f = &c.flow;
        out.push_str(&format!(
            "\n{} -> {}  {} -> {}  {}  ({} connection{}, recorded {})\n",
            c.before.verdict,
            c.after.verdict,
            side_name(&f.source_pod, f.source_ip),
            side_name(&f.destination_pod, f.destination_ip),
            port_text_num(f.protocol, f.port),
            f.connections,
            if f.connections == 1 { "" } else { "s" },
            if f.recorded.is_empty() {
                "-".to_owned()
            } else {
                f.recorded.join(", ")
            },
        ));
        out.push_str(&format!("  before: {}\n", replayed_text(&c.before)));
        out.push_str(&format!("  after:  {}\n", replayed_text(&c.after)));
    }
    if !r.changes.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!(
        "{} connections replayed, {} would change\n",
        r.connections, r.changed_connections
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_pods_parse_as_documented() {
        assert_eq!(parse_port("--port", "80/TCP").unwrap(), (6, 80));
        assert_eq!(parse_port("--port", "53/udp").unwrap(), (17, 53));
        assert_eq!(parse_port("--port", "9000/SCTP").unwrap(), (132, 9000));
        assert_eq!(parse_port("--port", "8080").unwrap(), (6, 8080));
        assert_eq!(parse_port("--port", "icmp").unwrap(), (1, 0));
        assert_eq!(parse_port("--port", "ICMPv6").unwrap(), (58, 0));
        for bad in ["", "/TCP", "80/", "80/ICMP", "-1/TCP", "80/TCP/x", "http"] {
            assert!(parse_port("--port", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_pod("--from", "x/a").unwrap(),
            ("x".to_owned(), "a".to_owned())
        );
        for bad in ["x", "/a", "x/", "x/a/b", "X/a", "x/A"] {
            assert!(parse_pod("--from", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_target("--to", "fd00::1").unwrap(),
            ExplainTarget::Ip("fd00::1".parse().unwrap())
        );
        assert!(parse_policy_name("x/web").is_ok());
        assert!(parse_policy_name("web").is_err());
    }

    fn flow(src: &str, dst: &str, l4: weir_flows::flow::Layer4, reply: bool) -> weir_flows::Flow {
        weir_flows::Flow {
            ip: Some(weir_flows::flow::Ip {
                source: Some(src.parse().unwrap()),
                destination: Some(dst.parse().unwrap()),
                ..Default::default()
            }),
            l4: Some(l4),
            is_reply: Some(reply),
            ..Default::default()
        }
    }

    #[test]
    fn tally_counts_connections_once_and_skips_what_is_never_policed() {
        use weir_flows::flow::{Icmp, Layer4, Tcp};
        let tcp = |sport, dport| {
            Layer4::Tcp(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: None,
            })
        };
        let icmp6 = |t| Layer4::Icmpv6(Icmp { r#type: t, code: 0 });
        let mut t = FlowTally::default();
        t.add(&flow("10.0.0.1", "10.0.0.2", tcp(40000, 80), false));
        t.add(&flow("10.0.0.1", "10.0.0.2", tcp(40000, 80), false));
        // The same connection seen with IPv4-mapped addresses.
        t.add(&flow(
            "::ffff:10.0.0.1",
            "::ffff:10.0.0.2",
            tcp(40000, 80),
            false,
        ));
        t.add(&flow("10.0.0.1", "10.0.0.2", tcp(40001, 80), false));
        t.add(&flow("10.0.0.2", "10.0.0.1", tcp(80, 40000), true));
        t.add(&flow("fd00::1", "fd00::2", icmp6(128), false));
        t.add(&flow("fd00::2", "fd00::1", icmp6(129), false));
        t.add(&flow("fd00::1", "ff02::1:ff00:2", icmp6(135), false));
        t.add(&flow("fd00::1", "fd00::2", icmp6(1), false));
        t.add(&weir_flows::Flow::default());
        let (flows, skipped) = t.finish();
        assert_eq!(flows.len(), 2, "{flows:?}");
        assert_eq!(flows[0].protocol, 6);
        assert_eq!(flows[0].port, 80);
        assert_eq!(flows[0].connections, 2);
        assert_eq!(flows[0].source_ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(flows[1].protocol, 58);
        assert_eq!(flows[1].connections, 1);
        assert_eq!(skipped["replies"], 2);
        assert_eq!(
            skipped["ICMP errors and neighbour discovery (never policed)"],
            2
        );
        assert_eq!(skipped["without IP addresses"], 1);
    }
}
