//! [`HubbleClient`] when the build found no upstream protos: the same API,
//! whose constructors answer [`ClientError::ProtosMissing`] naming where the
//! build looked, so dependent tests compile and then fail (CI) or skip.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;

use crate::connect::ConnectError;
use crate::{ProtosMissing, protos_dir};

/// Key of the object standing in for an `Any` of a type the upstream protos
/// do not define (see the real client).
pub const UNRESOLVABLE_ANY: &str = "@unresolvable";

/// Failures of a [`HubbleClient`] call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The crate was built without the upstream protos.
    #[error(transparent)]
    ProtosMissing(#[from] ProtosMissing),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl ClientError {
    /// The gRPC status code when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        None
    }

    /// The server's message when it answered with an error.
    pub fn message(&self) -> Option<&str> {
        None
    }
}

/// A stream of answers, each as canonical JSON.
pub type JsonStream = Pin<Box<dyn Stream<Item = Result<Value, ClientError>> + Send>>;

/// Never constructed: there are no generated clients.
#[derive(Clone, Debug)]
pub struct HubbleClient {
    never: Infallible,
}

fn missing() -> ClientError {
    match protos_dir() {
        Err(e) => ClientError::ProtosMissing(e),
        Ok(dir) => unreachable!("protos at {} but built without them", dir.display()),
    }
}

impl HubbleClient {
    /// Always [`ClientError::ProtosMissing`].
    pub async fn connect(_server: &str) -> Result<Self, ClientError> {
        Err(missing())
    }

    /// Unreachable: no client exists.
    pub fn with_token(self, _token: &str) -> Result<Self, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub fn with_timeout(self, _timeout: Duration) -> Self {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn get_flows_stream(&self, _request: &Value) -> Result<JsonStream, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn get_flows(&self, _request: &Value) -> Result<Vec<Value>, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn get_agent_events(&self, _request: &Value) -> Result<Vec<Value>, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn server_status(&self) -> Result<Value, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn get_nodes(&self) -> Result<Value, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn get_namespaces(&self) -> Result<Value, ClientError> {
        match self.never {}
    }

    /// Unreachable: no client exists.
    pub async fn peer_notify(&self, _count: usize) -> Result<Vec<Value>, ClientError> {
        match self.never {}
    }
}
