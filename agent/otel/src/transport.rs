//! The two OTLP transports: gRPC (tonic clients generated from the official
//! protos) and HTTP/1.1 with protobuf bodies (hyper). One request per call;
//! the answer is classified as accepted (with the receiver's partial-success
//! rejected count), retryable (with the receiver's requested delay, if any)
//! or rejected for good. Retrying and counting belong to the exporter, not
//! here. Plain `http://` only: there is no TLS yet.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use prost::bytes::BufMut;
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::{OtelConfig, Protocol};

/// Largest response body read from an OTLP/HTTP receiver (responses are a
/// few bytes; anything bigger is not an OTLP answer).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why one export request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The receiver is unavailable or overloaded (gRPC UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, ...; HTTP 429, 502, 503, 504; connection
    /// failure; timeout): the same request may be sent again.
    #[error("retryable: {reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// The delay the receiver asked for (gRPC `RetryInfo`, HTTP `Retry-After` seconds).
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request for good (bad request, auth, ...).
    #[error("rejected: {reason}")]
    Rejected {
        /// What happened.
        reason: String,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build the OTLP client for {endpoint}")]
    Client {
        /// The endpoint.
        endpoint: String,
        /// tonic's complaint.
        #[source]
        source: tonic::transport::Error,
    },
}

/// What an accepted request reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Records (or data points) the receiver says it rejected (OTLP partial success).
    pub rejected: u64,
}

/// gRPC path of the logs service's Export method.
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// gRPC path of the metrics service's Export method.
const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// An OTLP client for both signals over one transport. Requests are
/// encoded once by the caller and sent as bytes, so a retry does not
/// re-encode (or clone) a batch.
#[derive(Clone, Debug)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc {
        /// The unary client on a lazily connected channel.
        grpc: Box<tonic::client::Grpc<Channel>>,
        /// Extra metadata sent with every request.
        metadata: MetadataMap,
    },
    /// OTLP/HTTP with protobuf bodies.
    Http {
        /// The pooled HTTP/1 client.
        client: Box<HttpClient<HttpConnector, Full<Bytes>>>,
        /// `{endpoint}/v1/logs`.
        logs_uri: Uri,
        /// `{endpoint}/v1/metrics`.
        metrics_uri: Uri,
        /// Extra headers sent with every request.
        headers: HeaderMap,
    },
}

fn join_path(base: &Uri, suffix: &str) -> Uri {
    let path = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = format!("{path}{suffix}").parse().ok();
    // Validated config: scheme and authority exist, the path is ASCII.
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// A tonic codec sending an already encoded protobuf message and decoding
/// the answer as `U`.
struct EncodedCodec<U>(PhantomData<U>);

impl<U: Message + Default + Send + 'static> Codec for EncodedCodec<U> {
    type Encode = Bytes;
    type Decode = U;
    type Encoder = BytesEncoder;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        U::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable OTLP response: {e}")))
    }
}

async fn grpc_unary<U: Message + Default + Send + 'static>(
    grpc: &tonic::client::Grpc<Channel>,
    metadata: &MetadataMap,
    path: &'static str,
    body: Bytes,
    timeout: Duration,
) -> Result<U, TransportError> {
    let mut grpc = grpc.clone();
    grpc.ready().await.map_err(|e| TransportError::Retryable {
        reason: format!("gRPC channel not ready: {e}"),
        retry_after: None,
    })?;
    let mut r = tonic::Request::new(body);
    *r.metadata_mut() = metadata.clone();
    r.set_timeout(timeout);
    grpc.unary(
        r,
        PathAndQuery::from_static(path),
        EncodedCodec::<U>(PhantomData),
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(classify_status)
}

impl Transport {
    /// Builds the client (no connection is made until the first request).
    /// `cfg` must have passed [`OtelConfig::validate`], which returned `endpoint`.
    pub fn new(cfg: &OtelConfig, endpoint: &Uri) -> Result<Self, TransportError> {
        match cfg.protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from(endpoint.clone())
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                let mut metadata = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    if let (Ok(k), Ok(v)) = (
                        MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        MetadataValue::try_from(v.as_str()),
                    ) {
                        metadata.insert(k, v);
                    }
                }
                Ok(Transport::Grpc {
                    grpc: Box::new(tonic::client::Grpc::new(channel)),
                    metadata,
                })
            }
            Protocol::HttpProtobuf => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(cfg.timeout));
                connector.set_nodelay(true);
                let client = HttpClient::builder(TokioExecutor::new()).build(connector);
                let mut headers = HeaderMap::new();
                for (k, v) in &cfg.headers {
                    if let (Ok(k), Ok(v)) = (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        headers.insert(k, v);
                    }
                }
                Ok(Transport::Http {
                    client: Box::new(client),
                    logs_uri: join_path(endpoint, "/v1/logs"),
                    metrics_uri: join_path(endpoint, "/v1/metrics"),
                    headers,
                })
            }
        }
    }

    /// Sends one encoded `ExportLogsServiceRequest` within `timeout`.
    pub async fn export_logs(
        &self,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Accepted, TransportError> {
        let resp: ExportLogsServiceResponse = match self {
            Transport::Grpc { grpc, metadata } => {
                grpc_unary(grpc, metadata, LOGS_PATH, body, timeout).await?
            }
            Transport::Http {
                client,
                logs_uri,
                headers,
                ..
            } => {
                let answer = http_post(client, logs_uri, headers, body, timeout).await?;
                ExportLogsServiceResponse::decode(answer).unwrap_or_default()
            }
        };
        Ok(Accepted {
            rejected: resp
                .partial_success
                .map_or(0, |p| p.rejected_log_records.max(0) as u64),
        })
    }

    /// Sends one encoded `ExportMetricsServiceRequest` within `timeout`.
    pub async fn export_metrics(
        &self,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Accepted, TransportError> {
        let resp: ExportMetricsServiceResponse = match self {
            Transport::Grpc { grpc, metadata } => {
                grpc_unary(grpc, metadata, METRICS_PATH, body, timeout).await?
            }
            Transport::Http {
                client,
                metrics_uri,
                headers,
                ..
            } => {
                let answer = http_post(client, metrics_uri, headers, body, timeout).await?;
                ExportMetricsServiceResponse::decode(answer).unwrap_or_default()
            }
        };
        Ok(Accepted {
            rejected: resp
                .partial_success
                .map_or(0, |p| p.rejected_data_points.max(0) as u64),
        })
    }
}

async fn http_post(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, TransportError> {
    let mut req = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| TransportError::Rejected {
            reason: format!("cannot build request: {e}"),
        })?;
    req.headers_mut()
        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| TransportError::Retryable {
                reason: format!("POST {uri}: {e}"),
                retry_after: None,
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, TransportError>((status, retry_after, body))
    };
    let (status, retry_after, body) =
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Retryable {
                reason: format!("POST {uri}: no answer within {timeout:?}"),
                retry_after: None,
            })??;
    if status.is_success() {
        return Ok(body);
    }
    let reason = format!(
        "POST {uri}: HTTP {status}{}",
        if body.is_empty() {
            ""
        } else {
            " (body withheld)"
        }
    );
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    ) {
        Err(TransportError::Retryable {
            reason,
            retry_after,
        })
    } else {
        Err(TransportError::Rejected { reason })
    }
}

/// `google.rpc.Status`, enough of it to find a `RetryInfo` in its details.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The delay of a `RetryInfo` in a status' details, if there is one.
pub(crate) fn retry_info(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        u64::try_from(d.seconds).ok()?,
        u32::try_from(d.nanos).ok()?,
    ))
}

/// OTLP's retryable gRPC codes (the spec's list; RESOURCE_EXHAUSTED is
/// retried even without RetryInfo, as collectors send it for back-pressure).
fn classify_status(s: tonic::Status) -> TransportError {
    use tonic::Code;
    let reason = format!("gRPC {:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => TransportError::Retryable {
            reason,
            retry_after: retry_info(s.details()),
        },
        _ => TransportError::Rejected { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_is_read_from_status_details() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                ProtoAny {
                    type_url: RETRY_INFO_TYPE.into(),
                    value: info.encode_to_vec(),
                },
            ],
        };
        let s = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            status.encode_to_vec().into(),
        );
        match classify_status(s) {
            TransportError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_millis(2500)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_status(tonic::Status::invalid_argument("bad")),
            TransportError::Rejected { .. }
        ));
        assert!(matches!(
            classify_status(tonic::Status::unavailable("down")),
            TransportError::Retryable {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn http_paths_are_appended() {
        let u: Uri = "http://h:4318".parse().unwrap();
        assert_eq!(
            join_path(&u, "/v1/logs").to_string(),
            "http://h:4318/v1/logs"
        );
        let u: Uri = "http://h:4318/otlp/".parse().unwrap();
        assert_eq!(
            join_path(&u, "/v1/metrics").to_string(),
            "http://h:4318/otlp/v1/metrics"
        );
    }
}
