//! The Peer service: Hubble's `peer.Peer`, which Hubble Relay asks which
//! nodes to aggregate.
//!
//! Weir answers with this node (name, flow API address, TLS server name) as
//! `PEER_ADDED`, then keeps the stream open until the client leaves or the
//! API stops, as Hubble does. Once a Kubernetes source exists, every node
//! running Weir is announced here the same way.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use crate::observer::NodeInfo;
use crate::proto::peer::{self as pp, peer_server::Peer};

/// The Peer service.
#[derive(Clone)]
pub struct PeerService {
    node: NodeInfo,
    stop: watch::Receiver<bool>,
}

impl PeerService {
    /// A service announcing `node`; open streams end when `stop` turns true.
    pub fn new(node: NodeInfo, stop: watch::Receiver<bool>) -> Self {
        Self { node, stop }
    }

    /// The notification that announces this node.
    pub fn announcement(&self) -> pp::ChangeNotification {
        pp::ChangeNotification {
            name: self.node.name.clone(),
            address: self.node.address.clone(),
            r#type: pp::ChangeNotificationType::PeerAdded as i32,
            tls: (self.node.tls).then(|| pp::Tls {
                server_name: self.node.tls_server_name.clone(),
            }),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = Pin<Box<dyn Stream<Item = Result<pp::ChangeNotification, Status>> + Send>>;

    async fn notify(
        &self,
        _request: Request<pp::NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let first = self.announcement();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
