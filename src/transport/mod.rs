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
        .layer(policy.cors())
        .layer(middleware::from_fn_with_state(policy, origin::guard))
}

/// The query of every attaching request: which session, and where to resume.
#[derive(Debug, Default, Deserialize)]
pub struct AttachQuery {
    pub sid: Option<String>,
    pub last_event_id: Option<String>,
}

/// One event as a JSON envelope: `{"event":NAME,"data":DATA,"id":CURSOR}`. The data is already
/// JSON text, rendered once at emit time; only the frame around it is built per write.
pub fn envelope_json(event: &Event, sid: &Sid) -> String {
    let name = serde_json::to_string(&*event.name).expect("a string always serializes");
    let cursor = event.cursor(sid);
    let mut out = String::with_capacity(name.len() + event.data.len() + 64);
    out.push_str("{\"event\":");
    out.push_str(&name);
    out.push_str(",\"data\":");
    out.push_str(&event.data);
    // Cursors are base64url, digits, '.' and '~': nothing to escape.
    out.push_str(&format!(",\"id\":\"{cursor}\"}}"));
    out
}
