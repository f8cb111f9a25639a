//! Cluster mode's part of server-to-client acks: a client's answer may reach any node, while
//! only the node that sent the request waits for it.
//!
//! The waiting node records itself as the request's owner under `sy:{SID}:k:N` (a key in the
//! session's hash slot, living as long as the request may wait, so nothing is left to clean
//! up). A node that takes an answer it does not wait for reads the owner and publishes the
//! answer on the owner's node channel as `a\nSID\nN\nDATA` (the data is JSON on one line); the
//! owner hands it to its waiting request (see `Hub::on_message`). An answer whose owner key is
//! gone (its request timed out) is dropped, as an answer that came too late on one node is.

use std::time::Duration;

use redis::Value;

use crate::protocol::Sid;

use super::{millis, text, Cluster};
use crate::hub::HubError;

/// The key naming the node that waits for the answer to request `number` of `sid`.
fn owner_key(sid: &Sid, number: u64) -> String {
    format!("sy:{{{}}}:k:{number}", sid.as_str())
}

impl Cluster {
    /// Records this node as the owner of request `number` of `sid`, for `timeout` (and a second
    /// more, so that an answer racing the timeout still finds its way).
    pub(in crate::hub) async fn own_request(&self, sid: &Sid, number: u64, timeout: Duration) -> Result<(), HubError> {
        let ttl = millis(timeout).saturating_add(1000);
        let set = redis::cmd("SET").arg(owner_key(sid, number)).arg(&*self.node()).arg("PX").arg(ttl).clone();
        self.cmd("ack_owner", &set).await.map(drop)
    }

    /// Hands an answer this node does not wait for on to the node that does. Returns whether
    /// such a node was found (and is not this one).
    pub(in crate::hub) async fn hand_on_answer(&self, sid: &Sid, number: u64, data: &serde_json::Value) -> bool {
        let Ok(owner) = self.cmd("ack_owner", redis::cmd("GET").arg(owner_key(sid, number))).await else { return false };
        if matches!(owner, Value::Nil) {
            return false;
        }
        let owner = text(&owner);
        if owner == *self.node() {
            return false;
        }
        let message = format!("a\n{}\n{number}\n{data}", sid.as_str());
        let publish = redis::cmd("PUBLISH").arg(format!("sy:node:{owner}")).arg(message).clone();
        self.cmd("ack_hand_on", &publish).await.is_ok()
    }
}
