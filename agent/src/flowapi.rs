//! The flow API's life in the agent: off by default, turned on and off at
//! runtime (`weir flows enable|disable`) without touching the flow ring.
//!
//! Owns the listeners' settings, the running server and the stop signal of
//! its streams. Enabling binds every configured listener before it reports
//! success; disabling stops accepting, ends open streams and removes the unix
//! socket. The gRPC services themselves live in `weir-api`, the listeners
//! (unix permissions, TLS, tokens) in `weir-api-net`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{info, warn};
use weir_api::observer::{NamespaceSource, NodeInfo, ObserverService};
use weir_api::peer::PeerService;
use weir_api::proto::observer::observer_server::ObserverServer;
use weir_api::proto::peer::peer_server::PeerServer;
use weir_flows::metrics::Metrics;
use weir_flows::store::FlowStore;
use weir_localapi::FlowApiState;

use crate::config::FlowApiSettings;
use crate::netns::HomeNetns;

/// Largest gRPC message a client may send us (requests are small).
const MAX_DECODE: usize = 4 << 20;

/// The flow API of one agent.
pub struct FlowApi {
    settings: FlowApiSettings,
    home: Option<HomeNetns>,
    node_name: String,
    store: FlowStore,
    metrics: Arc<Metrics>,
    namespaces: NamespaceSource,
    /// Serialises enable/disable; holds the running server.
    running: tokio::sync::Mutex<Option<Running>>,
    /// The last published state, for status calls that must not wait.
    state: Mutex<FlowApiState>,
}

struct Running {
    server: weir_api_net::RunningServer,
    stop: watch::Sender<bool>,
}

impl FlowApi {
    /// A flow API that is off. `home` is the namespace TCP listeners bind in
    /// (the agent's original one, when the datapath runs in another).
    pub fn new(
        settings: FlowApiSettings,
        home: Option<HomeNetns>,
        node_name: String,
        store: FlowStore,
        metrics: Arc<Metrics>,
        namespaces: NamespaceSource,
    ) -> Self {
        metrics.flow_api_enabled.set(0);
        metrics.flow_api_refused_reasons(&weir_api_net::Refusal::ALL.map(|r| r.as_str()));
        Self {
            settings,
            home,
            node_name,
            store,
            metrics,
            namespaces,
            running: tokio::sync::Mutex::new(None),
            state: Mutex::new(FlowApiState::default()),
        }
    }

    /// Whether the configuration asks for the API at start.
    pub fn enabled_at_start(&self) -> bool {
        self.settings.enabled_at_start
    }

    /// The current state (streams counted now).
    pub fn state(&self) -> FlowApiState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.streams = self.metrics.flow_api_streams.get().max(0) as u64;
        s
    }

    /// Starts serving; a no-op when already on. Every listener is bound
    /// before this returns, so a client may connect right after.
    pub async fn enable(&self) -> Result<FlowApiState, String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(self.state());
        }
        let s = &self.settings;
        let tcp = match &s.tcp {
            None => None,
            Some(t) => {
                let bound = match &self.home {
                    Some(home) => home.bind_tcp(t.address),
                    None => std::net::TcpListener::bind(t.address).and_then(|l| {
                        l.set_nonblocking(true)?;
                        Ok(l)
                    }),
                }
                .map_err(|e| {
                    format!(
                        "cannot listen on {} (option flowApi.address): {e}",
                        t.address
                    )
                })?;
                let security = match &t.tls {
                    None => weir_api_net::TcpSecurity::Insecure,
                    Some(f) => weir_api_net::TcpSecurity::Tls(weir_api_net::TlsFiles {
                        cert: f.cert.clone(),
                        key: f.key.clone(),
                        client_ca: f.client_ca.clone(),
                    }),
                };
                let mut spec = weir_api_net::TcpSpec::new(bound, security);
                spec.tokens = s.tokens_file.clone();
                Some(spec)
            }
        };
        let unix = s.socket.as_ref().map(|path| weir_api_net::UnixSpec {
            path: path.clone(),
            mode: s.socket_mode,
            group: s.socket_group.clone(),
        });
        let spec = weir_api_net::ServeSpec {
            unix,
            tcp,
            ..Default::default()
        };
        let tcp_addr = s.tcp.as_ref().map(|t| t.address);
        let node = NodeInfo {
            name: self.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: s.advertise_address.clone(),
            tls: s.tcp.as_ref().is_some_and(|t| t.tls.is_some()),
            tls_server_name: s.tls_server_name.clone(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let observer = ObserverService::new(
            self.store.clone(),
            node.clone(),
            s.stream_queue,
            self.metrics.clone(),
            self.namespaces.clone(),
            stop_rx.clone(),
        );
        let peer = PeerService::new(node, stop_rx);
        // gRPC health, as Hubble serves it: `hubble status` and `weir status`
        // start with a health check.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ObserverServer<ObserverService>>()
            .await;
        health.set_serving::<PeerServer<PeerService>>().await;
        let routes = tonic::service::Routes::new(
            ObserverServer::new(observer).max_decoding_message_size(MAX_DECODE),
        )
        .add_service(PeerServer::new(peer).max_decoding_message_size(MAX_DECODE))
        .add_service(health_service);
        let metrics = self.metrics.clone();
        let hooks = weir_api_net::Hooks::on_refused(move |r| metrics.flow_api_refused(r.as_str()));
        let server = weir_api_net::serve(routes, spec, hooks)
            .map_err(|e| format!("cannot start the flow API: {e}"))?;
        let state = FlowApiState {
            enabled: true,
            socket: server
                .unix_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            address: server
                .tcp_addr()
                .or(tcp_addr)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            tcp_security: match &s.tcp {
                None => String::new(),
                Some(t) => match &t.tls {
                    None => "insecure".into(),
                    Some(f) if f.client_ca.is_some() => "mtls".into(),
                    Some(_) => "tls".into(),
                },
            },
            streams: 0,
        };
        info!(
            socket = %state.socket,
            address = %state.address,
            security = %state.tcp_security,
            "flow API enabled"
        );
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.metrics.flow_api_enabled.set(1);
        *running = Some(Running {
            server,
            stop: stop_tx,
        });
        Ok(self.state())
    }

    /// Stops serving; a no-op when already off. Open streams end (followers
    /// see the stream close), listeners close, the unix socket is removed.
    pub async fn disable(&self) -> FlowApiState {
        let mut running = self.running.lock().await;
        if let Some(r) = running.take() {
            let _ = r.stop.send(true);
            r.server.shutdown().await;
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = FlowApiState::default();
            self.metrics.flow_api_enabled.set(0);
            info!("flow API disabled");
        }
        self.state()
    }

    /// Unix socket path configured.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.settings.socket.clone()
    }
}

impl Drop for FlowApi {
    fn drop(&mut self) {
        if self
            .running
            .try_lock()
            .map(|r| r.is_some())
            .unwrap_or(false)
        {
            warn!("flow API dropped while running; its listeners close with the runtime");
        }
    }
}
