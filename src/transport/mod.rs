//! The transports: how events cross the network in each direction.
//!
//! | route        | direction        | file       |
//! |--------------|------------------|------------|
//! | `GET /ws`    | both             | `ws.rs`    |
//! | `GET /sse`   | server to client | `sse.rs`   |
//! | `GET /poll`  | server to client | `poll.rs`  |
//! | `POST /sse`, `POST /poll` | client to server | `post.rs` |
//!
//! A transport only moves bytes: it asks the hub for an attachment, writes what the attachment
//! yields, and hands what it reads to [`Gateway::dispatch`]. Session logic stays in the hub, and
//! the bytes around each event (envelope, poll batch, SSE frame) come from
//! [`crate::protocol::encode`].

pub mod origin;
mod poll;
mod post;

pub(crate) use post::reads_as_json;
mod sse;
mod ws;

use axum::middleware;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::gateway::Gateway;
use crate::metrics;
use crate::hub::Event;
use crate::protocol::encode::Outgoing;
use crate::protocol::Sid;

pub fn router(gateway: Gateway) -> Router {
    let policy = origin::OriginPolicy::new(&gateway.config().allowed_origins);
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(sse::stream).post(post::send))
        .route("/poll", get(poll::poll).post(post::send))
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(metrics::healthz))
        .with_state(gateway)
        .layer(middleware::from_fn_with_state(policy, origin::guard))
}

/// The query of every attaching request: which session, and where to resume. Parameters not
/// named here (a page's own, `token`) are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct AttachQuery {
    pub sid: Option<String>,
    pub last_event_id: Option<String>,
    /// `heartbeat=1` (or `true`) on a WebSocket: send a `heartbeat` frame at every ping, for
    /// clients that cannot see protocol pings (browsers). Any other value is off.
    pub heartbeat: Option<String>,
}

impl AttachQuery {
    /// Whether the client asked for application-level heartbeats.
    pub fn wants_heartbeat(&self) -> bool {
        matches!(self.heartbeat.as_deref(), Some("1" | "true"))
    }
}

/// An event of the hub as the encoder ([`crate::protocol::encode`]) takes it: the frame around
/// the event's data is built per write, from its parts; the data is JSON text rendered once at
/// emit time.
#[inline]
pub(crate) fn outgoing<'a>(event: &'a Event, sid: &'a Sid) -> Outgoing<'a> {
    Outgoing { sid, seq: event.seq, notice: event.notice, name: event.name(), data: event.data() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Cursor;

    #[test]
    fn an_event_encodes_as_the_envelope_with_its_cursor() {
        let sid = Sid::random();
        for (name, notice) in [("response", false), ("quote\"and\\slash", false), ("session", true)] {
            let event = Event::new(7, notice, name, r#"{"a":[1,"x"]}"#);
            let text = crate::protocol::encode::envelope(&outgoing(&event, &sid));
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["event"], name);
            assert_eq!(value["data"], serde_json::json!({"a": [1, "x"]}));
            let cursor: Cursor = value["id"].as_str().unwrap().parse().unwrap();
            assert_eq!(cursor, event.cursor(&sid));
        }
    }
}
