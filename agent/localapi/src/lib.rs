//! The agent's local API: what goes over `/var/run/weir/weir.sock`.
//!
//! HTTP/1.1 with JSON bodies on a unix socket, so `curl --unix-socket` works
//! for an operator at 3 a.m. This crate owns the request/response types and a
//! small client; the server lives in the agent. It must not depend on aya or
//! on any agent internals.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub mod policy;

/// Default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/var/run/weir/weir.sock";

/// Paths of the API, versioned.
pub mod paths {
    /// `GET`: [`Status`].
    pub const STATUS: &str = "/v1/status";
    /// `GET`: list of [`Endpoint`]; `POST` [`EndpointRegistration`]: register (idempotent).
    pub const ENDPOINTS: &str = "/v1/endpoints";
    /// `DELETE /v1/endpoints/{container_id}/{ifname}`: unregister (idempotent).
    pub const ENDPOINT_PREFIX: &str = "/v1/endpoints/";
    /// `GET`: [`FlowApiState`]; `PUT` [`FlowApiChange`]: turn the flow API on or off.
    pub const FLOW_API: &str = "/v1/flows/api";
    /// `GET ?from=NS/POD&to=NS/POD|IP&port=80/TCP`: [`crate::policy::PolicyExplanation`].
    pub const POLICY_EXPLAIN: &str = "/v1/policy/explain";
    /// `POST` [`crate::policy::WhatIfRequest`]: [`crate::policy::WhatIfReport`].
    pub const POLICY_WHAT_IF: &str = "/v1/policy/what-if";
}

/// The Hubble-compatible flow API's state, for `weir flows`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowApiState {
    /// Whether the flow API is serving.
    pub enabled: bool,
    /// Unix socket it serves on (empty when none or disabled).
    #[serde(default)]
    pub socket: String,
    /// TCP address it serves on (empty when none or disabled).
    #[serde(default)]
    pub address: String,
    /// `tls`, `mtls` or `insecure` for the TCP listener (empty when none).
    #[serde(default)]
    pub tcp_security: String,
    /// Streams open right now.
    #[serde(default)]
    pub streams: u64,
}

/// `PUT /v1/flows/api`: the wanted state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowApiChange {
    pub enabled: bool,
}

/// What weir-cni tells the agent after it created a pod's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRegistration {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME: the interface name inside the pod (usually eth0).
    pub ifname: String,
    /// CNI_NETNS: path of the pod's network namespace.
    pub netns: String,
    /// K8S_POD_NAMESPACE from CNI_ARGS (empty when not run by Kubernetes).
    pub namespace: String,
    /// K8S_POD_NAME from CNI_ARGS.
    pub pod: String,
    /// Name of the host-side veth, in the agent's network namespace.
    pub host_ifname: String,
    /// Index of the host-side veth.
    pub host_ifindex: u32,
    /// The pod's addresses on this interface.
    pub ips: Vec<IpAddr>,
    /// MAC address of the pod-side interface.
    #[serde(default)]
    pub mac: String,
}

/// An endpoint as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Agent-local endpoint id (stable for the endpoint's life).
    pub id: u64,
    #[serde(flatten)]
    pub registration: EndpointRegistration,
    /// Whether the datapath programs are attached to the host-side veth.
    pub attached: bool,
}

/// The agent's health and a few counters, for `weir status` and readiness.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub node_name: String,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub endpoints: u64,
    pub flows_seen: u64,
    pub flows_in_ring: u64,
    pub ring_capacity: u64,
    pub events_lost: u64,
    /// Kernel attach mode actually used (e.g. "tcx").
    #[serde(default)]
    pub attach_mode: String,
    /// Address the metrics listener is bound to (empty when metrics are off);
    /// lets a caller that asked for port 0 find the real port.
    #[serde(default)]
    pub metrics_addr: String,
    /// The flow API's state.
    #[serde(default)]
    pub flow_api: FlowApiState,
}

/// An error answer of the API: `{"error": "..."}` with a non-2xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Failures of a local API call, each saying what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not exist or nobody listens on it.
    #[error(
        "cannot reach the weir agent at {path}: {source} (is `weir agent` running? set --socket or WEIR_SOCKET)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed midway.
    #[error("local API request {method} {uri} failed: {source}")]
    Http {
        method: String,
        uri: String,
        #[source]
        source: hyper::Error,
    },
    /// The agent answered with an error status.
    #[error("agent refused {method} {uri} ({status}): {message}")]
    Refused {
        method: String,
        uri: String,
        status: u16,
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("agent answered {uri} with unexpected JSON: {source}")]
    Decode {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be formed (e.g. a path the HTTP library refuses).
    #[error("cannot form local API request {uri}: {message}")]
    InvalidRequest { uri: String, message: String },
    /// The call took longer than the client's timeout.
    #[error("local API request {method} {uri} timed out after {timeout:?}")]
    Timeout {
        method: String,
        uri: String,
        timeout: Duration,
    },
}

/// A client of the local API. Each call opens its own connection: calls are rare
/// (one per pod start/stop or CLI invocation) and this keeps the client stateless.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the socket at `socket`, with a 30 s timeout per call.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Changes the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, paths::STATUS, None::<&()>).await
    }

    /// `GET /v1/endpoints`.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.call(Method::GET, paths::ENDPOINTS, None::<&()>).await
    }

    /// `POST /v1/endpoints`: returns once the programs are attached.
    pub async fn register(&self, reg: &EndpointRegistration) -> Result<Endpoint, ClientError> {
        self.call(Method::POST, paths::ENDPOINTS, Some(reg)).await
    }

    /// `GET /v1/flows/api`.
    pub async fn flow_api(&self) -> Result<FlowApiState, ClientError> {
        self.call(Method::GET, paths::FLOW_API, None::<&()>).await
    }

    /// `PUT /v1/flows/api`: returns the state once the change took effect.
    pub async fn set_flow_api(&self, enabled: bool) -> Result<FlowApiState, ClientError> {
        self.call(
            Method::PUT,
            paths::FLOW_API,
            Some(&FlowApiChange { enabled }),
        )
        .await
    }

    /// `GET /v1/policy/explain`: the verdict of a connection and the rules
    /// deciding it, on the agent's live model.
    pub async fn policy_explain(
        &self,
        params: &policy::ExplainParams,
    ) -> Result<policy::PolicyExplanation, ClientError> {
        let uri = format!(
            "{}?from={}&to={}&port={}",
            paths::POLICY_EXPLAIN,
            encode_segment(&params.from),
            encode_segment(&params.to),
            encode_segment(&params.port)
        );
        self.call(Method::GET, &uri, None::<&()>).await
    }

    /// `POST /v1/policy/what-if`: replays flows against the agent's policies
    /// before and after a change.
    pub async fn policy_what_if(
        &self,
        request: &policy::WhatIfRequest,
    ) -> Result<policy::WhatIfReport, ClientError> {
        self.call(Method::POST, paths::POLICY_WHAT_IF, Some(request))
            .await
    }

    /// `DELETE /v1/endpoints/{container_id}/{ifname}`; succeeds if it is already gone.
    pub async fn unregister(&self, container_id: &str, ifname: &str) -> Result<(), ClientError> {
        let uri = format!(
            "{}{}/{}",
            paths::ENDPOINT_PREFIX,
            encode_segment(container_id),
            encode_segment(ifname)
        );
        let _: serde_json::Value = self.call(Method::DELETE, &uri, None::<&()>).await?;
        Ok(())
    }

    /// Any call with a JSON body and a JSON answer; public so that later
    /// subcommands can reach new paths without changing this crate's surface.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let fut = self.call_inner(method.clone(), uri, body);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                method: method.to_string(),
                uri: uri.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn call_inner<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let http_err = |source| ClientError::Http {
            method: method.to_string(),
            uri: uri.to_string(),
            source,
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http_err)?;
        let conn_task = tokio::spawn(conn);
        let payload = match body {
            Some(b) => serde_json::to_vec(b).expect("request types always serialize"),
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("host", "weir")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::InvalidRequest {
                uri: uri.to_string(),
                message: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        conn_task.abort();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Refused {
                method: method.to_string(),
                uri: uri.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            uri: uri.to_string(),
            source,
        })
    }
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved
/// characters, so names with `#`, `?`, `/` or `%` reach the agent intact.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("eth0"), "eth0");
        assert_eq!(encode_segment("net#1"), "net%231");
        assert_eq!(encode_segment("a?b/c%d<e>`"), "a%3Fb%2Fc%25d%3Ce%3E%60");
        let all: String = (0x21u8..0x7f).map(char::from).collect();
        let encoded = encode_segment(&all);
        assert!(
            format!("/v1/endpoints/{encoded}/x")
                .parse::<hyper::Uri>()
                .is_ok()
        );
    }
}
