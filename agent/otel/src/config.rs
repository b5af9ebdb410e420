//! The exporter's configuration ([`OtelConfig`]) and its validation. Owns
//! option names, defaults and the checks that name the offending option; no
//! I/O.

use std::time::Duration;

use hyper::Uri;

/// Which OTLP transport to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`LogsService/Export`, `MetricsService/Export`), usually port 4317.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/logs`,
    /// `{endpoint}/v1/metrics`), usually port 4318.
    HttpProtobuf,
}

impl Protocol {
    /// The name used in configuration (`grpc`, `http/protobuf`, as
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` spells them).
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(ConfigError::Invalid {
                option: "otel.protocol",
                reason: format!("{other:?} is not one of \"grpc\", \"http/protobuf\""),
            }),
        }
    }
}

/// OTLP exporter settings. Plain `http://` endpoints only: TLS is not
/// implemented yet, and `https://` is refused by [`OtelConfig::validate`]
/// rather than silently sent in clear text.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelConfig {
    /// `http://host:port`. For gRPC the service paths are fixed by OTLP; for
    /// HTTP `/v1/logs` and `/v1/metrics` are appended to this (with any path
    /// it has), as `OTEL_EXPORTER_OTLP_ENDPOINT` does.
    pub endpoint: String,
    /// Transport; default gRPC.
    pub protocol: Protocol,
    /// Export flows as log records (needs a subscription passed to `start`).
    pub flows: bool,
    /// Export the agent's metrics (needs a registry passed to `start`).
    pub metrics: bool,
    /// How often the registry is read and sent; default 30 s.
    pub metrics_interval: Duration,
    /// Most log records in one export request; default 512 (the OTel SDK's).
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill; default 1 s.
    pub batch_delay: Duration,
    /// Bound of the exporter's own flow queue (records waiting for a batch
    /// while others are in flight or retried); default 8192. Records that do
    /// not fit are dropped and counted (`queue_full`). Beyond it, at most one
    /// batch waits for a send slot and 4 batches are in flight (encoded), so
    /// memory is bounded by `queue + 5 * batch_size` records.
    pub queue: usize,
    /// Deadline of one export request (connect included); default 10 s.
    pub timeout: Duration,
    /// Extra request headers / gRPC metadata (e.g. an API key).
    pub headers: Vec<(String, String)>,
    /// How long one batch is retried before it is dropped and counted
    /// (`retry_exhausted`); default 60 s.
    pub max_retry_elapsed: Duration,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".to_owned(),
            protocol: Protocol::Grpc,
            flows: true,
            metrics: true,
            metrics_interval: Duration::from_secs(30),
            batch_size: 512,
            batch_delay: Duration::from_secs(1),
            queue: 8192,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            max_retry_elapsed: Duration::from_secs(60),
        }
    }
}

/// Largest accepted `otel.batch_size`: keeps one request well under the
/// 4 MiB default message limit of gRPC receivers (a flow record is ~0.5 KiB).
pub const MAX_BATCH_SIZE: usize = 4096;
/// Largest accepted `otel.queue`.
pub const MAX_QUEUE: usize = 1 << 20;

/// A configuration that cannot work; each names the option.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The option's value is out of range or malformed.
    #[error("{option}: {reason}")]
    Invalid {
        /// The option, e.g. `otel.endpoint`.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `otel.endpoint` does not parse as a URI.
    #[error("otel.endpoint: {endpoint:?} is not a valid URI")]
    Endpoint {
        /// The value given.
        endpoint: String,
        /// The parser's complaint.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

impl OtelConfig {
    /// Checks every option; the first problem found is returned, naming
    /// the option. Returns the parsed endpoint.
    pub fn validate(&self) -> Result<Uri, ConfigError> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|source| ConfigError::Endpoint {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "otel.endpoint",
                    "https is not supported yet (no TLS in the OTLP exporter); use http:// \
                     to a local collector",
                ));
            }
            _ => {
                return Err(invalid(
                    "otel.endpoint",
                    format!("{:?} must start with http://", self.endpoint),
                ));
            }
        }
        if uri.authority().is_none_or(|a| a.host().is_empty()) {
            return Err(invalid(
                "otel.endpoint",
                format!("{:?} has no host", self.endpoint),
            ));
        }
        if uri.query().is_some() {
            return Err(invalid(
                "otel.endpoint",
                format!("{:?} must not have a query", self.endpoint),
            ));
        }
        if self.protocol == Protocol::Grpc && uri.path() != "/" && !uri.path().is_empty() {
            return Err(invalid(
                "otel.endpoint",
                format!(
                    "{:?}: an OTLP/gRPC endpoint has no path (the service paths are fixed)",
                    self.endpoint
                ),
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(invalid(
                "otel.batch_size",
                format!("{} is out of range 1..={MAX_BATCH_SIZE}", self.batch_size),
            ));
        }
        if self.queue < self.batch_size || self.queue > MAX_QUEUE {
            return Err(invalid(
                "otel.queue",
                format!(
                    "{} is out of range {}..={MAX_QUEUE} (at least otel.batch_size)",
                    self.queue, self.batch_size
                ),
            ));
        }
        if self.batch_delay.is_zero() || self.batch_delay > Duration::from_secs(60) {
            return Err(invalid(
                "otel.batch_delay",
                format!("{:?} is out of range (0, 60 s]", self.batch_delay),
            ));
        }
        if self.metrics_interval < Duration::from_millis(10)
            || self.metrics_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "otel.metrics_interval",
                format!("{:?} is out of range [10 ms, 1 h]", self.metrics_interval),
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err(invalid(
                "otel.timeout",
                format!("{:?} is out of range (0, 300 s]", self.timeout),
            ));
        }
        if self.max_retry_elapsed > Duration::from_secs(3600) {
            return Err(invalid(
                "otel.max_retry_elapsed",
                format!("{:?} is over 1 h", self.max_retry_elapsed),
            ));
        }
        if !self.flows && !self.metrics {
            return Err(invalid(
                "otel.flows",
                "both otel.flows and otel.metrics are off: nothing to export",
            ));
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                    name.to_ascii_lowercase().as_bytes(),
                )
                .is_err()
            {
                return Err(invalid(
                    "otel.headers",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    "otel.headers",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cfg: &OtelConfig) -> String {
        cfg.validate()
            .expect_err("config must be refused")
            .to_string()
    }

    #[test]
    fn defaults_are_valid() {
        OtelConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn errors_name_the_option() {
        let base = OtelConfig::default();
        let cases: Vec<(OtelConfig, &str)> = vec![
            (
                OtelConfig {
                    endpoint: "not a uri".into(),
                    ..base.clone()
                },
                "otel.endpoint",
            ),
            (
                OtelConfig {
                    endpoint: "https://collector:4317".into(),
                    ..base.clone()
                },
                "otel.endpoint: https is not supported",
            ),
            (
                OtelConfig {
                    endpoint: "collector:4317".into(),
                    ..base.clone()
                },
                "otel.endpoint",
            ),
            (
                OtelConfig {
                    endpoint: "http://collector:4317/x".into(),
                    ..base.clone()
                },
                "otel.endpoint",
            ),
            (
                OtelConfig {
                    batch_size: 0,
                    ..base.clone()
                },
                "otel.batch_size",
            ),
            (
                OtelConfig {
                    queue: 10,
                    ..base.clone()
                },
                "otel.queue",
            ),
            (
                OtelConfig {
                    batch_delay: Duration::ZERO,
                    ..base.clone()
                },
                "otel.batch_delay",
            ),
            (
                OtelConfig {
                    metrics_interval: Duration::from_millis(1),
                    ..base.clone()
                },
                "otel.metrics_interval",
            ),
            (
                OtelConfig {
                    timeout: Duration::ZERO,
                    ..base.clone()
                },
                "otel.timeout",
            ),
            (
                OtelConfig {
                    headers: vec![("bad header".into(), "v".into())],
                    ..base.clone()
                },
                "otel.headers",
            ),
            (
                OtelConfig {
                    flows: false,
                    metrics: false,
                    ..base.clone()
                },
                "otel.flows",
            ),
        ];
        for (cfg, want) in cases {
            let e = err(&cfg);
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }

    #[test]
    fn http_endpoint_may_have_a_path() {
        let cfg = OtelConfig {
            endpoint: "http://collector:4318/otlp".into(),
            protocol: Protocol::HttpProtobuf,
            ..OtelConfig::default()
        };
        cfg.validate().expect("path allowed for http/protobuf");
        assert_eq!(
            "http/protobuf".parse::<Protocol>().unwrap(),
            Protocol::HttpProtobuf
        );
        assert!(
            "thrift"
                .parse::<Protocol>()
                .unwrap_err()
                .to_string()
                .starts_with("otel.protocol")
        );
    }
}
