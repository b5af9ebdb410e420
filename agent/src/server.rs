//! The agent's local API server: HTTP/1.1 + JSON on a unix socket.
//!
//! Owns the routes of `weir_localapi::paths` and the socket file's life
//! (stale socket replaced, removed on shutdown). Registering an endpoint
//! attaches the datapath before the answer, so the CNI ADD that asked returns
//! only when the first packet will be seen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use weir_localapi::{Endpoint, EndpointRegistration, ErrorBody, Status, paths};
use weir_localapi::{FlowApiChange, FlowApiState};

use crate::daemon::Shared;

/// Failures to serve the local API.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory could not be created.
    #[error("cannot create directory {path} for the local API socket: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a socket is at the path: never deleted.
    #[error("{0} exists and is not a socket (option socket); refusing to replace it")]
    NotASocket(PathBuf),
    /// Another agent is answering on the socket.
    #[error("another weir agent is already listening on {0}")]
    InUse(PathBuf),
    /// bind(2) failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An error answer: status code plus a message naming what is wrong.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// Binds the socket (replacing a stale one left by a dead agent) with mode 0660.
pub async fn bind(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_path_buf()));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        // A socket nobody answers on: left by an agent that died.
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// The router of the local API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::ENDPOINTS, get(list_endpoints).post(register))
        .route("/v1/endpoints/{container_id}/{ifname}", delete(unregister))
        .route(paths::FLOW_API, get(flow_api_state).put(flow_api_change))
        .merge(crate::policy_cli::routes(live_model(Arc::clone(&shared))))
        .with_state(shared)
}

/// `weir policy`'s model: the agent's live one.
fn live_model(shared: Arc<Shared>) -> crate::policy_cli::ModelSource {
    Arc::new(move || crate::policy_cli::Model {
        input: shared.policy_input(),
        name: format!("the agent's model (node {})", shared.node_name),
    })
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status())
}

async fn flow_api_state(State(shared): State<Arc<Shared>>) -> Json<FlowApiState> {
    Json(shared.flow_api.state())
}

async fn flow_api_change(
    State(shared): State<Arc<Shared>>,
    Json(change): Json<FlowApiChange>,
) -> Result<Json<FlowApiState>, ApiError> {
    if change.enabled {
        shared
            .flow_api
            .enable()
            .await
            .map(Json)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))
    } else {
        Ok(Json(shared.flow_api.disable().await))
    }
}

async fn list_endpoints(State(shared): State<Arc<Shared>>) -> Json<Vec<Endpoint>> {
    Json(shared.endpoints())
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Json(reg): Json<EndpointRegistration>,
) -> Result<Json<Endpoint>, ApiError> {
    if let Err(m) = validate(&reg) {
        return Err(ApiError(StatusCode::BAD_REQUEST, m));
    }
    // Attaching talks to the kernel and takes a lock held across a syscall:
    // keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || shared.register_endpoint(reg))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    result
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn unregister(
    State(shared): State<Arc<Shared>>,
    UrlPath((container_id, ifname)): UrlPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let removed =
        tokio::task::spawn_blocking(move || shared.unregister_endpoint(&container_id, &ifname))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

fn validate(reg: &EndpointRegistration) -> Result<(), String> {
    if reg.container_id.is_empty() {
        return Err("container_id is empty".into());
    }
    if reg.ifname.is_empty() {
        return Err("ifname is empty".into());
    }
    if reg.host_ifname.is_empty() || reg.host_ifname.len() > 15 {
        return Err(format!(
            "host_ifname {:?} is not an interface name (1 to 15 characters)",
            reg.host_ifname
        ));
    }
    if reg.ips.is_empty() {
        return Err("ips is empty: an endpoint needs at least one address".into());
    }
    Ok(())
}
