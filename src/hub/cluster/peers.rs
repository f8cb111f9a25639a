//! Where each node of the cluster can be reached, for requests that must be served by one
//! particular node (a Socket.IO long-polling request is served by the node holding its
//! Engine.IO session; see `transport/socketio/forward.rs`).
//!
//! A node's address is the value of its liveness key `sy:alive:NODE`, which the heartbeat
//! renews (`node.rs`): so an address is known exactly as long as the node is taken to be
//! alive, and a node that dies takes its address with it one lease later. A node that was not
//! told its address ([`Cluster::advertise`]) writes `1`, and no request is sent to it.

use std::net::SocketAddr;

use super::{millis, text, Cluster, NODE_LEASE};
use crate::hub::HubError;

impl Cluster {
    /// Tells the other nodes that this node serves on `addr` (an address they can connect to,
    /// not `0.0.0.0`): written into its liveness key now and at every heartbeat. The first
    /// address given counts.
    pub async fn advertise(&self, addr: SocketAddr) {
        if self.inner.advertised.set(addr).is_err() {
            return;
        }
        let key = format!("sy:alive:{}", self.node());
        let _ = self.cmd("heartbeat", redis::cmd("SET").arg(&key).arg(addr.to_string()).arg("PX").arg(millis(NODE_LEASE))).await;
    }

    /// The value of this node's liveness key: its address, or `1` when it has none.
    pub(super) fn liveness(&self) -> String {
        self.inner.advertised.get().map_or_else(|| "1".to_owned(), SocketAddr::to_string)
    }

    /// The address of the live node `node` (an id as [`Cluster::node`] gives them), if it is
    /// alive and told one. Ids that no node could have are not looked up.
    pub async fn peer(&self, node: &str) -> Result<Option<SocketAddr>, HubError> {
        if node.len() != 16 || !node.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let value = self.cmd("peer", redis::cmd("GET").arg(format!("sy:alive:{node}"))).await?;
        Ok(text(&value).parse().ok())
    }
}
