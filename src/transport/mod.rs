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
//! yields, and hands what it reads to [`Gateway::dispatch`]. Session logic stays in the hub.

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

/// One event as a JSON envelope: `{"event":NAME,"data":DATA,"id":CURSOR}`. The data is already
/// JSON text, rendered once at emit time; only the frame around it is built per write.
pub fn envelope_json(event: &Event, sid: &Sid) -> String {
    let plain_name = event.name().bytes().all(|b| b != b'"' && b != b'\\');
    let mut seq = itoa::Buffer::new();
    let seq = seq.format(event.seq);
    let notice = if event.notice { "~" } else { "" };
    // Sized exactly: the frame's bytes are then handed on without a copy or a second allocation
    // (`Bytes::from` a `Vec` whose length is its capacity).
    let name_len = if plain_name { event.name().len() + 2 } else { 0 };
    let len = r#"{"event":,"data":,"id":"."}"#.len() + name_len + event.data().len() + sid.as_str().len() + seq.len() + notice.len();
    let mut out = String::with_capacity(len);
    out.push_str("{\"event\":");
    if plain_name {
        // Names hold no control characters (the hub refuses them); without quotes or
        // backslashes there is nothing to escape.
        out.push('"');
        out.push_str(event.name());
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(event.name()).expect("a string always serializes"));
    }
    out.push_str(",\"data\":");
    out.push_str(event.data());
    // Cursors are base64url, digits, '.' and '~': nothing to escape.
    out.push_str(",\"id\":\"");
    out.push_str(sid.as_str());
    out.push('.');
    out.push_str(seq);
    out.push_str(notice);
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Cursor;

    #[test]
    fn envelope_json_is_the_envelope_with_a_cursor_that_parses_back() {
        let sid = Sid::random();
        for (name, notice) in [("response", false), ("quote\"and\\slash", false), ("session", true)] {
            let event = Event::new(7, notice, name, r#"{"a":[1,"x"]}"#);
            let text = envelope_json(&event, &sid);
            if !name.contains('"') {
                assert_eq!(text.len(), text.capacity(), "sized exactly: {text}");
            }
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["event"], name);
            assert_eq!(value["data"], serde_json::json!({"a": [1, "x"]}));
            let cursor: Cursor = value["id"].as_str().unwrap().parse().unwrap();
            assert_eq!(cursor, event.cursor(&sid));
        }
    }
}
