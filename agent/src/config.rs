//! The agent's configuration: one YAML file plus command-line flags.
//!
//! Owns the option names, their defaults and their validation. Every option
//! has a documented default; a bad value is refused with a [`ConfigError`]
//! that names the option, and the binary exits 64 (EX_USAGE). Nothing here
//! touches the system.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default address of the metrics listener (Hubble's metrics port).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9965";
/// Default capacity of the in-memory flow ring (as Hubble's).
pub const DEFAULT_FLOW_RING: usize = 4095;
/// Largest flow ring accepted (as Hubble's).
pub const MAX_FLOW_RING: usize = 65_535;

/// A configuration problem, naming the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema (unknown key, wrong type...).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// One option has a value out of range or of the wrong form.
    #[error("invalid option {option}: {message}")]
    Invalid { option: String, message: String },
}

impl ConfigError {
    fn invalid(option: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            option: option.to_string(),
            message: message.into(),
        }
    }
}

/// How much the kernel aggregates before it emits an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// One event per connection state change plus periodic reports (default).
    #[default]
    Full,
    /// One event per packet: for debugging, costly.
    None,
}

/// Format of the flow log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowLogFormat {
    /// Hubble's export shape, one JSON object per line (default).
    #[default]
    Json,
    /// One line per flow as `hubble observe` prints it.
    Compact,
}

/// Log line format of the agent's own logs (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole configuration, as the YAML file spells it (camelCase keys).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Name of this node in flows and metrics. Default: the machine's hostname.
    pub node_name: String,
    /// Path of the local API socket. Default: /var/run/weir/weir.sock.
    pub socket: PathBuf,
    /// Directory of Kubernetes manifests (the embedded default source). Default: none.
    pub manifests: Option<PathBuf>,
    /// Network namespace (path) to run the datapath in; listeners for metrics
    /// are opened in the agent's own namespace first. Default: none (the agent's own).
    pub netns: Option<PathBuf>,
    pub metrics: MetricsConfig,
    pub flow_log: FlowLogConfig,
    /// Hubble-style dynamic flow-log exporters: a YAML file with a `flowLogs:`
    /// list (name, filePath, includeFilters, excludeFilters, fieldMask, end,
    /// fileMaxSizeMb, fileMaxBackups, fileCompress), watched and applied
    /// without restart. Default: none.
    pub flow_logs_config: Option<PathBuf>,
    pub flows: FlowsConfig,
    pub flow_api: FlowApiConfig,
    pub otel: OtelSection,
    pub datapath: DatapathConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
}

/// `metrics:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve /metrics. Default: true (metrics are always on unless turned off explicitly).
    pub enabled: bool,
    /// Listen address. Default: 0.0.0.0:9965.
    pub address: String,
    /// Hubble-compatible flow metrics, in Hubble's option grammar
    /// (`drop:sourceContext=namespace;destinationContext=pod`). Default: the
    /// low-cardinality set `weir_flows::hubble_metrics::DEFAULT_METRICS`
    /// (no pod labels); an empty list turns them off.
    pub flows: Option<Vec<String>>,
    /// Series per Hubble metric family; flows that would add more are counted
    /// in `weir_metrics_series_dropped_total{family}`. Default: 10000.
    pub series_limit: usize,
}

/// `flowLog:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowLogConfig {
    /// `off`, `stdout`, or a file path. Default: off (per-flow detail leaves
    /// the agent only where configured).
    pub output: String,
    /// `json` (Hubble export shape) or `compact`. Default: json.
    pub format: FlowLogFormat,
    /// Bounded queue between the flow ring and the writer; what does not fit is
    /// dropped and counted. Default: 16384.
    pub queue: usize,
}

/// `flows:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowsConfig {
    /// Flows kept in memory. Default 4095, max 65535.
    pub ring_capacity: usize,
}

/// Default path of the flow API's unix socket (the default `--server` of `weir observe`).
pub const DEFAULT_FLOW_API_SOCKET: &str = "/var/run/weir/hubble.sock";
/// Default bound of each flow API stream's queue.
pub const DEFAULT_FLOW_API_STREAM_QUEUE: usize = 4096;

/// `flowApi:` section: the Hubble-compatible gRPC flow API. Off by default:
/// with `enabled: false` there is no listener of any kind until
/// `weir flows enable`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowApiConfig {
    /// Serve the flow API from the start. Default: false.
    pub enabled: bool,
    /// Unix socket path; empty for none. Default: /var/run/weir/hubble.sock.
    pub socket: PathBuf,
    /// Octal mode of the unix socket. Default: "0600" (root only).
    pub socket_mode: String,
    /// Group (name or number) owning the unix socket; give it mode 0660 to
    /// let that group observe. Default: none.
    pub socket_group: String,
    /// TCP listen address (e.g. `0.0.0.0:4244`); empty for none. Default: none.
    pub address: String,
    /// Allow plain-text TCP (no TLS). Default: false: a TCP address needs `tls`.
    pub insecure: bool,
    pub tls: FlowApiTlsConfig,
    /// File of bearer tokens (one per line, `#` comments), reloaded on change;
    /// when set, every TCP request must carry `authorization: Bearer <token>`.
    /// The unix socket relies on its file permissions. Default: none.
    pub tokens_file: PathBuf,
    /// Flows queued per stream for a slow client; beyond it the client gets a
    /// `LostEvent` and the drop is counted. Default: 4096.
    pub stream_queue: usize,
    /// Address announced by the Peer service for Hubble Relay (`HOST:PORT`).
    /// Default: the TCP listener's address when it is not a wildcard.
    pub advertise_address: String,
    /// TLS server name announced by the Peer service. Default:
    /// `<nodeName>.default.hubble-grpc.cilium.io` (Hubble's scheme) when TLS is on.
    pub tls_server_name: String,
}

/// `flowApi.tls:` section. Certificates reload when their files change.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowApiTlsConfig {
    /// PEM server certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca_file: PathBuf,
}

impl Default for FlowApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            socket: PathBuf::from(DEFAULT_FLOW_API_SOCKET),
            socket_mode: "0600".to_string(),
            socket_group: String::new(),
            address: String::new(),
            insecure: false,
            tls: FlowApiTlsConfig::default(),
            tokens_file: PathBuf::new(),
            stream_queue: DEFAULT_FLOW_API_STREAM_QUEUE,
            advertise_address: String::new(),
            tls_server_name: String::new(),
        }
    }
}

/// The flow API's settings once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowApiSettings {
    pub enabled_at_start: bool,
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub tcp: Option<FlowApiTcp>,
    pub tokens_file: Option<PathBuf>,
    pub stream_queue: usize,
    pub advertise_address: String,
    pub tls_server_name: String,
}

/// The TCP listener of the flow API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowApiTcp {
    pub address: SocketAddr,
    /// None: plain text (`insecure: true`).
    pub tls: Option<FlowApiTlsFiles>,
}

/// Certificate files of the TCP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowApiTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl FlowApiConfig {
    fn validate(&self, node_name: &str) -> Result<FlowApiSettings, ConfigError> {
        let socket = (!self.socket.as_os_str().is_empty()).then(|| self.socket.clone());
        let socket_mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "flowApi.socketMode",
                    format!(
                        "{:?} is not an octal file mode such as \"0600\"",
                        self.socket_mode
                    ),
                )
            })?;
        if socket_mode & 0o007 != 0 {
            return Err(ConfigError::invalid(
                "flowApi.socketMode",
                format!(
                    "{:?} gives every local user the flows; use a group (flowApi.socketGroup) and 0660",
                    self.socket_mode
                ),
            ));
        }
        let socket_group = (!self.socket_group.is_empty()).then(|| self.socket_group.clone());
        let tls_set =
            !self.tls.cert_file.as_os_str().is_empty() || !self.tls.key_file.as_os_str().is_empty();
        if tls_set
            && (self.tls.cert_file.as_os_str().is_empty()
                || self.tls.key_file.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                "flowApi.tls",
                "certFile and keyFile go together",
            ));
        }
        if !tls_set && !self.tls.client_ca_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "flowApi.tls.clientCaFile",
                "needs certFile and keyFile (mTLS is TLS with client certificates)",
            ));
        }
        let tcp = if self.address.is_empty() {
            if tls_set {
                return Err(ConfigError::invalid(
                    "flowApi.tls",
                    "set, but there is no TCP listener (flowApi.address)",
                ));
            }
            None
        } else {
            let address = self.address.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid(
                    "flowApi.address",
                    format!("{:?} is not HOST:PORT ({e})", self.address),
                )
            })?;
            let tls = if tls_set {
                if self.insecure {
                    return Err(ConfigError::invalid(
                        "flowApi.insecure",
                        "true together with flowApi.tls: choose one",
                    ));
                }
                Some(FlowApiTlsFiles {
                    cert: self.tls.cert_file.clone(),
                    key: self.tls.key_file.clone(),
                    client_ca: (!self.tls.client_ca_file.as_os_str().is_empty())
                        .then(|| self.tls.client_ca_file.clone()),
                })
            } else if self.insecure {
                None
            } else {
                return Err(ConfigError::invalid(
                    "flowApi.address",
                    "a TCP listener needs flowApi.tls (certFile, keyFile), or an explicit flowApi.insecure: true for plain text",
                ));
            };
            Some(FlowApiTcp { address, tls })
        };
        if socket.is_none() && tcp.is_none() {
            return Err(ConfigError::invalid(
                "flowApi",
                "neither socket nor address is set: the flow API would have no listener",
            ));
        }
        if self.stream_queue == 0 || self.stream_queue > 1 << 20 {
            return Err(ConfigError::invalid(
                "flowApi.streamQueue",
                format!("{} is outside 1..=1048576", self.stream_queue),
            ));
        }
        let advertise_address = if !self.advertise_address.is_empty() {
            self.advertise_address.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid(
                    "flowApi.advertiseAddress",
                    format!("{:?} is not HOST:PORT ({e})", self.advertise_address),
                )
            })?;
            self.advertise_address.clone()
        } else {
            match &tcp {
                Some(t) if !t.address.ip().is_unspecified() => t.address.to_string(),
                _ => String::new(),
            }
        };
        let tls_server_name = if !self.tls_server_name.is_empty() {
            self.tls_server_name.clone()
        } else if tcp.as_ref().is_some_and(|t| t.tls.is_some()) {
            format!("{node_name}.default.hubble-grpc.cilium.io")
        } else {
            String::new()
        };
        Ok(FlowApiSettings {
            enabled_at_start: self.enabled,
            socket,
            socket_mode,
            socket_group,
            tcp,
            tokens_file: (!self.tokens_file.as_os_str().is_empty())
                .then(|| self.tokens_file.clone()),
            stream_queue: self.stream_queue,
            advertise_address,
            tls_server_name,
        })
    }
}

/// `otel:` section: OpenTelemetry (OTLP) export of flows as log records and
/// of the agent's metrics. Off unless `endpoint` is set.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct OtelSection {
    /// `http://host:port` of an OTLP receiver (collector); empty: off. Default: off.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: String,
    /// Export flows as log records. Default: true.
    pub flows: bool,
    /// Export the agent's metrics. Default: true.
    pub metrics: bool,
    /// How often metrics are sent. Default: 30s.
    pub metrics_interval: String,
    /// Log records per request. Default: 512.
    pub batch_size: usize,
    /// Longest a record waits for its batch. Default: 1s.
    pub batch_delay: String,
    /// Flows queued for the exporter; beyond it they are dropped and counted. Default: 8192.
    pub queue: usize,
    /// Deadline of one request. Default: 10s.
    pub timeout: String,
    /// Extra request headers (e.g. an API key).
    pub headers: std::collections::BTreeMap<String, String>,
    /// How long a batch is retried before it is dropped and counted. Default: 60s.
    pub max_retry_elapsed: String,
}

impl Default for OtelSection {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: "grpc".into(),
            flows: true,
            metrics: true,
            metrics_interval: "30s".into(),
            batch_size: 512,
            batch_delay: "1s".into(),
            queue: 8192,
            timeout: "10s".into(),
            headers: Default::default(),
            max_retry_elapsed: "60s".into(),
        }
    }
}

impl OtelSection {
    fn validate(&self) -> Result<Option<weir_otel::OtelConfig>, ConfigError> {
        if self.endpoint.is_empty() {
            return Ok(None);
        }
        let dur =
            |v: &str, option: &str| parse_duration(v).map_err(|m| ConfigError::invalid(option, m));
        let cfg = weir_otel::OtelConfig {
            endpoint: self.endpoint.clone(),
            protocol: self.protocol.parse().map_err(|e: weir_otel::ConfigError| {
                ConfigError::invalid("otel.protocol", e.to_string())
            })?,
            flows: self.flows,
            metrics: self.metrics,
            metrics_interval: dur(&self.metrics_interval, "otel.metricsInterval")?,
            batch_size: self.batch_size,
            batch_delay: dur(&self.batch_delay, "otel.batchDelay")?,
            queue: self.queue,
            timeout: dur(&self.timeout, "otel.timeout")?,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_retry_elapsed: dur(&self.max_retry_elapsed, "otel.maxRetryElapsed")?,
        };
        // The crate's messages start with the option's name already.
        cfg.validate().map_err(|e| ConfigError::Invalid {
            option: "otel".into(),
            message: e.to_string(),
        })?;
        Ok(Some(cfg))
    }
}

/// `datapath:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DatapathConfig {
    /// `full` (default) or `none` (one event per packet).
    pub aggregation: Aggregation,
    /// Report interval of long-lived connections, e.g. `5s`. Default: 5s.
    pub report_interval: String,
    /// Kernel ring buffer size in bytes: a power of two, at least the page size. Default: 4 MiB.
    pub ring_buffer_bytes: u32,
    /// Connection-tracking entries (LRU). Default: 65536.
    pub conntrack_entries: u32,
}

/// `policy:` section: NetworkPolicy enforcement.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Audit every namespace: would-be drops pass with verdict AUDIT
    /// (per namespace: annotation `policy.weir.dev/audit: "true"`). Default: false.
    pub audit: bool,
    /// Ingress from the local node (kubelet probes, host processes) is
    /// always allowed, as Cilium does by default. Default: true.
    pub allow_host_ingress: bool,
    /// Size of the policy rule map (LPM trie entries, allocated as used).
    /// Default: 262144.
    pub map_entries: u32,
    /// Where hostNetwork pods' cgroups (`pod<UID>`, as kubelet names them)
    /// are looked for. Default: the cgroup v2 mount.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            audit: false,
            allow_host_ingress: true,
            map_entries: weir_common::defaults::POLICY_ENTRIES,
            cgroup_root: None,
        }
    }
}

/// `log:` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `weir=debug`. Default: info (RUST_LOG overrides).
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            socket: PathBuf::from(weir_localapi::DEFAULT_SOCKET),
            manifests: None,
            netns: None,
            metrics: MetricsConfig::default(),
            flow_log: FlowLogConfig::default(),
            flow_logs_config: None,
            flows: FlowsConfig::default(),
            flow_api: FlowApiConfig::default(),
            otel: OtelSection::default(),
            datapath: DatapathConfig::default(),
            policy: PolicyConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: DEFAULT_METRICS_ADDR.to_string(),
            flows: None,
            series_limit: weir_flows::hubble_metrics::DEFAULT_SERIES_LIMIT,
        }
    }
}

impl Default for FlowLogConfig {
    fn default() -> Self {
        Self {
            output: "off".to_string(),
            format: FlowLogFormat::Json,
            queue: 16_384,
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            ring_capacity: DEFAULT_FLOW_RING,
        }
    }
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            aggregation: Aggregation::Full,
            report_interval: "5s".to_string(),
            ring_buffer_bytes: weir_common::defaults::EVENTS_RING_BYTES,
            conntrack_entries: weir_common::defaults::CONNTRACK_ENTRIES,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Where the flow log goes, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogOutput {
    Off,
    Stdout,
    File(PathBuf),
}

/// A configuration that passed validation, with parsed values.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    pub node_name: String,
    pub metrics_addr: Option<SocketAddr>,
    pub flow_log: FlowLogOutput,
    pub report_interval: Duration,
    pub flow_api: FlowApiSettings,
    /// OTLP export, when configured.
    pub otel: Option<weir_otel::OtelConfig>,
    /// Hubble metric families, parsed.
    pub hubble_metrics: Vec<weir_flows::hubble_metrics::MetricSpec>,
}

impl Config {
    /// Reads a YAML config file; unknown keys are errors (a typo must not be ignored).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML text; an empty document is the default configuration.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every option and parses the ones with a textual form.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let node_name = if self.node_name.is_empty() {
            hostname()
        } else {
            self.node_name.clone()
        };
        if node_name.is_empty() || node_name.len() > 253 {
            return Err(ConfigError::invalid(
                "nodeName",
                "must be 1 to 253 characters",
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::invalid("socket", "must not be empty"));
        }
        let metrics_addr = if self.metrics.enabled {
            Some(self.metrics.address.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid(
                    "metrics.address",
                    format!("{:?} is not HOST:PORT ({e})", self.metrics.address),
                )
            })?)
        } else {
            None
        };
        let flow_log = match self.flow_log.output.as_str() {
            "" | "off" => FlowLogOutput::Off,
            "stdout" | "-" => FlowLogOutput::Stdout,
            path => FlowLogOutput::File(PathBuf::from(path)),
        };
        if self.flow_log.queue == 0 || self.flow_log.queue > 1 << 20 {
            return Err(ConfigError::invalid(
                "flowLog.queue",
                format!("{} is outside 1..=1048576", self.flow_log.queue),
            ));
        }
        if self.flows.ring_capacity == 0 || self.flows.ring_capacity > MAX_FLOW_RING {
            return Err(ConfigError::invalid(
                "flows.ringCapacity",
                format!(
                    "{} is outside 1..={MAX_FLOW_RING}",
                    self.flows.ring_capacity
                ),
            ));
        }
        let report_interval = parse_duration(&self.datapath.report_interval)
            .map_err(|m| ConfigError::invalid("datapath.reportInterval", m))?;
        if report_interval.is_zero() {
            return Err(ConfigError::invalid(
                "datapath.reportInterval",
                "must be greater than 0",
            ));
        }
        let rb = self.datapath.ring_buffer_bytes;
        let page = page_size();
        if rb < page || !rb.is_power_of_two() {
            return Err(ConfigError::invalid(
                "datapath.ringBufferBytes",
                format!("{rb} is not a power of two of at least the page size ({page})"),
            ));
        }
        if self.datapath.conntrack_entries < 1024 {
            return Err(ConfigError::invalid(
                "datapath.conntrackEntries",
                format!(
                    "{} is below the minimum of 1024",
                    self.datapath.conntrack_entries
                ),
            ));
        }
        if !(1024..=16 << 20).contains(&self.policy.map_entries) {
            return Err(ConfigError::invalid(
                "policy.mapEntries",
                format!("{} is outside 1024..=16777216", self.policy.map_entries),
            ));
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::invalid(
                "log.level",
                format!("{:?}: {e}", self.log.level),
            ));
        }
        if let Some(dir) = &self.manifests
            && dir.as_os_str().is_empty()
        {
            return Err(ConfigError::invalid("manifests", "must not be empty"));
        }
        let flow_api = self.flow_api.validate(&node_name)?;
        let otel = self.otel.validate()?;
        let hubble_metrics = match &self.metrics.flows {
            None => weir_flows::hubble_metrics::default_specs(),
            Some(entries) => weir_flows::hubble_metrics::parse(entries)
                .map_err(|e| ConfigError::invalid("metrics.flows", e.to_string()))?,
        };
        if self.metrics.series_limit == 0 {
            return Err(ConfigError::invalid(
                "metrics.seriesLimit",
                "must be at least 1",
            ));
        }
        Ok(Validated {
            otel,
            hubble_metrics,
            flow_api,
            node_name,
            metrics_addr,
            flow_log,
            report_interval,
            config: self,
        })
    }
}

/// Parses `500ms`, `5s`, `1m`, `1h` (an integer and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let too_long = || format!("{text:?} is too long");
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(p).unwrap_or(4096)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let v = Config::default().validate().expect("defaults are valid");
        assert_eq!(v.metrics_addr, Some("0.0.0.0:9965".parse().unwrap()));
        assert_eq!(v.flow_log, FlowLogOutput::Off);
        assert_eq!(v.report_interval, Duration::from_secs(5));
        assert_eq!(v.config.flows.ring_capacity, 4095);
        assert_eq!(v.config.socket, PathBuf::from("/var/run/weir/weir.sock"));
        assert!(
            !v.flow_api.enabled_at_start,
            "the flow API is off by default"
        );
        assert_eq!(
            v.flow_api.socket.as_deref(),
            Some(Path::new("/var/run/weir/hubble.sock"))
        );
        assert_eq!(v.flow_api.socket_mode, 0o600);
        assert_eq!(v.flow_api.tcp, None);
    }

    #[test]
    fn yaml_sets_options() {
        let c = Config::from_yaml(
            "nodeName: n1\nflowLog: {output: stdout, format: compact}\ndatapath: {aggregation: none, reportInterval: 250ms}\nflows: {ringCapacity: 65535}\n",
        )
        .unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.node_name, "n1");
        assert_eq!(v.flow_log, FlowLogOutput::Stdout);
        assert_eq!(v.config.flow_log.format, FlowLogFormat::Compact);
        assert_eq!(v.config.datapath.aggregation, Aggregation::None);
        assert_eq!(v.report_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = Config::from_yaml("flowlog: {output: stdout}\n").unwrap_err();
        assert!(e.contains("flowlog"), "{e}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let cases = [
            ("flows: {ringCapacity: 65536}", "flows.ringCapacity"),
            ("datapath: {reportInterval: 5}", "datapath.reportInterval"),
            (
                "datapath: {reportInterval: 5 parsecs}",
                "datapath.reportInterval",
            ),
            (
                "datapath: {ringBufferBytes: 5000}",
                "datapath.ringBufferBytes",
            ),
            (
                "datapath: {conntrackEntries: 10}",
                "datapath.conntrackEntries",
            ),
            ("metrics: {address: nowhere}", "metrics.address"),
            ("flowLog: {queue: 0}", "flowLog.queue"),
            ("metrics: {flows: [\"dns\"]}", "metrics.flows"),
            (
                "metrics: {flows: [\"drop:sourceContext=nope\"]}",
                "metrics.flows",
            ),
            ("metrics: {seriesLimit: 0}", "metrics.seriesLimit"),
            (
                "otel: {endpoint: \"http://127.0.0.1:4317\", protocol: udp}",
                "otel.protocol",
            ),
            (
                "otel: {endpoint: \"https://collector:4317\"}",
                "otel.endpoint",
            ),
            (
                "otel: {endpoint: \"http://127.0.0.1:4317\", batchDelay: soon}",
                "otel.batchDelay",
            ),
            ("flowApi: {socketMode: \"0999\"}", "flowApi.socketMode"),
            ("flowApi: {socketMode: \"0666\"}", "flowApi.socketMode"),
            ("flowApi: {address: \"0.0.0.0:4244\"}", "flowApi.address"),
            ("policy: {mapEntries: 10}", "policy.mapEntries"),
            (
                "flowApi: {address: \"nowhere\", insecure: true}",
                "flowApi.address",
            ),
            ("flowApi: {tls: {certFile: /c}}", "flowApi.tls"),
            (
                "flowApi: {tls: {clientCaFile: /ca}}",
                "flowApi.tls.clientCaFile",
            ),
            (
                "flowApi: {address: \"127.0.0.1:1\", tls: {certFile: /c, keyFile: /k}}",
                "x",
            ),
            ("flowApi: {socket: \"\"}", "flowApi"),
            ("flowApi: {streamQueue: 0}", "flowApi.streamQueue"),
            (
                "flowApi: {address: \"127.0.0.1:1\", insecure: true, tls: {certFile: /c, keyFile: /k}}",
                "flowApi.insecure",
            ),
        ];
        for (yaml, option) in cases {
            if option == "x" {
                // A valid TLS listener, as a control for the cases around it.
                let v = Config::from_yaml(yaml).unwrap().validate().unwrap();
                let tcp = v.flow_api.tcp.unwrap();
                assert_eq!(tcp.tls.unwrap().client_ca, None);
                assert_eq!(v.flow_api.advertise_address, "127.0.0.1:1");
                assert!(
                    v.flow_api
                        .tls_server_name
                        .ends_with(".default.hubble-grpc.cilium.io")
                );
                continue;
            }
            let err = Config::from_yaml(yaml).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(option), "{yaml}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
