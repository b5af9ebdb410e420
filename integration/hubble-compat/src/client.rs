//! [`HubbleClient`]: the tonic clients generated from the upstream protos,
//! driven with canonical protobuf JSON (see [`crate::json`]) so a test states
//! a request once for this client and the Python one and compares answers.
//!
//! Every call goes through the generated `ObserverClient` / `PeerClient` and
//! the generated message types; JSON is only the test-facing surface.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::ProtosMissing;
use crate::connect::{ConnectError, connect};
use crate::json::{self, JsonError};
use crate::observer::get_flows_response::ResponseTypes;
use crate::observer::observer_client::ObserverClient;
use crate::observer::{
    GetAgentEventsRequest, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest,
    GetNodesRequest, ServerStatusRequest,
};
use crate::peer::NotifyRequest;
use crate::peer::peer_client::PeerClient;

/// Key of the object that stands in for a flow's `extensions` when their
/// `Any` holds a type the upstream protos do not define: canonical JSON has
/// no form for it (Python's `json_format` raises, Go's `protojson` fails), so
/// both clients print `{"@type": <type URL>, "@unresolvable": true}` instead
/// and tests can count it.
pub const UNRESOLVABLE_ANY: &str = "@unresolvable";

/// The deadline of a call unless [`HubbleClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of a [`HubbleClient`] call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The crate was built without the upstream protos.
    #[error(transparent)]
    ProtosMissing(#[from] ProtosMissing),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A request or an answer did not map to or from JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The server answered the call with an error status.
    #[error("{method}: {:?}: {}", .status.code(), .status.message())]
    Rpc {
        method: &'static str,
        #[source]
        status: tonic::Status,
    },
    /// The call did not finish within the client's timeout.
    #[error("{method}: no answer within {after:?}")]
    Timeout {
        method: &'static str,
        after: Duration,
    },
    /// The bearer token is not valid as an HTTP header value.
    #[error("the bearer token is not a valid header value")]
    BadToken,
}

impl ClientError {
    /// The gRPC status code when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The server's message when it answered with an error.
    pub fn message(&self) -> Option<&str> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.message()),
            _ => None,
        }
    }
}

/// A stream of answers, each as canonical JSON.
pub type JsonStream = Pin<Box<dyn Stream<Item = Result<Value, ClientError>> + Send>>;

/// A connection to one Hubble-compatible server.
#[derive(Clone, Debug)]
pub struct HubbleClient {
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

impl HubbleClient {
    /// Connects to `server` (see [`crate::connect`]).
    pub async fn connect(server: &str) -> Result<Self, ClientError> {
        Ok(Self::new(connect(server).await?))
    }

    /// A client over an existing channel.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            authorization: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::BadToken)?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// Deadline of unary calls and of collecting a finite stream.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The generated Observer client on this channel (no token added).
    pub fn observer(&self) -> ObserverClient<Channel> {
        ObserverClient::new(self.channel.clone())
    }

    /// The generated Peer client on this channel (no token added).
    pub fn peer(&self) -> PeerClient<Channel> {
        PeerClient::new(self.channel.clone())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    async fn within<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                method,
                after: self.timeout,
            })?
    }

    /// `Observer.GetFlows` as a stream of `GetFlowsResponse` JSON objects
    /// (for `follow`; no deadline applies).
    pub async fn get_flows_stream(&self, request: &Value) -> Result<JsonStream, ClientError> {
        const METHOD: &str = "GetFlows";
        let message: GetFlowsRequest = json::from_json("observer.GetFlowsRequest", request)?;
        let request = self.request(message);
        let mut observer = self.observer();
        let stream = self
            .within(METHOD, async {
                observer
                    .get_flows(request)
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: METHOD,
                        status,
                    })
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|item| {
            let response = item.map_err(|status| ClientError::Rpc {
                method: METHOD,
                status,
            })?;
            flows_response_to_json(response)
        })))
    }

    /// `Observer.GetFlows` to the end of the stream (not for `follow`).
    pub async fn get_flows(&self, request: &Value) -> Result<Vec<Value>, ClientError> {
        self.within("GetFlows", async {
            let mut stream = self.get_flows_stream(request).await?;
            let mut all = Vec::new();
            while let Some(item) = stream.next().await {
                all.push(item?);
            }
            Ok(all)
        })
        .await
    }

    /// `Observer.GetAgentEvents` to the end of the stream.
    pub async fn get_agent_events(&self, request: &Value) -> Result<Vec<Value>, ClientError> {
        const METHOD: &str = "GetAgentEvents";
        let message: GetAgentEventsRequest =
            json::from_json("observer.GetAgentEventsRequest", request)?;
        let request = self.request(message);
        let mut observer = self.observer();
        self.within(METHOD, async move {
            let rpc = |status| ClientError::Rpc {
                method: METHOD,
                status,
            };
            let mut stream = observer
                .get_agent_events(request)
                .await
                .map_err(rpc)?
                .into_inner();
            let mut all = Vec::new();
            while let Some(item) = stream.next().await {
                let event = item.map_err(rpc)?;
                all.push(json::to_json("observer.GetAgentEventsResponse", &event)?);
            }
            Ok(all)
        })
        .await
    }

    /// `Observer.ServerStatus`.
    pub async fn server_status(&self) -> Result<Value, ClientError> {
        const METHOD: &str = "ServerStatus";
        let request = self.request(ServerStatusRequest {});
        let mut observer = self.observer();
        self.within(METHOD, async move {
            let answer =
                observer
                    .server_status(request)
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: METHOD,
                        status,
                    })?;
            Ok(json::to_json(
                "observer.ServerStatusResponse",
                answer.get_ref(),
            )?)
        })
        .await
    }

    /// `Observer.GetNodes`.
    pub async fn get_nodes(&self) -> Result<Value, ClientError> {
        const METHOD: &str = "GetNodes";
        let request = self.request(GetNodesRequest {});
        let mut observer = self.observer();
        self.within(METHOD, async move {
            let answer = observer
                .get_nodes(request)
                .await
                .map_err(|status| ClientError::Rpc {
                    method: METHOD,
                    status,
                })?;
            Ok(json::to_json(
                "observer.GetNodesResponse",
                answer.get_ref(),
            )?)
        })
        .await
    }

    /// `Observer.GetNamespaces`.
    pub async fn get_namespaces(&self) -> Result<Value, ClientError> {
        const METHOD: &str = "GetNamespaces";
        let request = self.request(GetNamespacesRequest {});
        let mut observer = self.observer();
        self.within(METHOD, async move {
            let answer =
                observer
                    .get_namespaces(request)
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: METHOD,
                        status,
                    })?;
            Ok(json::to_json(
                "observer.GetNamespacesResponse",
                answer.get_ref(),
            )?)
        })
        .await
    }

    /// `Peer.Notify`: the first `count` change notifications, then the
    /// call is dropped (the stream never ends by itself).
    pub async fn peer_notify(&self, count: usize) -> Result<Vec<Value>, ClientError> {
        const METHOD: &str = "Notify";
        let request = self.request(NotifyRequest {});
        let mut peer = self.peer();
        self.within(METHOD, async move {
            let rpc = |status| ClientError::Rpc {
                method: METHOD,
                status,
            };
            let mut stream = peer.notify(request).await.map_err(rpc)?.into_inner();
            let mut all = Vec::new();
            while all.len() < count {
                let Some(item) = stream.next().await else {
                    break;
                };
                let change = item.map_err(rpc)?;
                all.push(json::to_json("peer.ChangeNotification", &change)?);
            }
            Ok(all)
        })
        .await
    }
}

/// A `GetFlowsResponse` as canonical JSON, with a flow's `extensions` of a
/// type unknown to the upstream protos replaced as [`UNRESOLVABLE_ANY`] says.
fn flows_response_to_json(mut response: GetFlowsResponse) -> Result<Value, ClientError> {
    let mut unresolvable = None;
    if let Some(ResponseTypes::Flow(flow)) = response.response_types.as_mut()
        && let Some(any) = &flow.extensions
    {
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if json::descriptor(name).is_err() {
            unresolvable = flow.extensions.take().map(|a| a.type_url);
        }
    }
    let mut value = json::to_json("observer.GetFlowsResponse", &response)?;
    if let Some(type_url) = unresolvable {
        value["flow"]["extensions"] =
            serde_json::json!({"@type": type_url, UNRESOLVABLE_ANY: true});
    }
    Ok(value)
}
