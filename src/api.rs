//! The publish API: how the application pushes to sessions when it wants, and manages rooms.
//!
//! | route | does |
//! |---|---|
//! | `POST /api/emit` | `{"to": {"sid": S} \| {"room": R} \| {"all": true}, "event": N, "data": D}` |
//! | `GET /api/rooms/{room}/members` | the room's member sids |
//! | `POST /api/rooms/{room}/members` | `{"sid": S}` joins the room |
//! | `DELETE /api/rooms/{room}/members/{sid}` | leaves it (also `DELETE .../members` with `{"sid": S}`) |
//! | `GET /api/sessions/{sid}` | transport, attached since, buffered count, last cursor, rooms |
//!
//! Every route wants `Authorization: Bearer KEY`. Without a configured key the API is served
//! only when the gateway listens on a loopback address (then only local processes reach it);
//! otherwise it answers `403` to everything, so it is never open to the network by accident.
//! Everything goes through the hub, so an event published to a session between transports is
//! buffered and delivered like any other.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::hub::{check_room_name, Hub, Target, Transport};
use crate::protocol::{check_event_name, reads_as_json, Cursor, Sid};

/// Who may call the API.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiAccess {
    /// Callers must send this bearer key.
    Key(Arc<str>),
    /// No key configured and bound to loopback: only local processes can reach the API.
    Loopback,
    /// No key configured and reachable from the network: the API refuses everything.
    Disabled,
}

impl ApiAccess {
    /// The access a gateway bound to `bind` gets with `key` (an empty key counts as none).
    pub fn new(key: Option<&str>, bind: SocketAddr) -> ApiAccess {
        match key.filter(|k| !k.is_empty()) {
            Some(key) => ApiAccess::Key(key.into()),
            None if bind.ip().is_loopback() => ApiAccess::Loopback,
            None => ApiAccess::Disabled,
        }
    }
}

impl std::fmt::Debug for ApiAccess {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiAccess::Key(_) => "Key(..)",
            ApiAccess::Loopback => "Loopback",
            ApiAccess::Disabled => "Disabled",
        })
    }
}

/// The API's routes, to nest under `/api`: they act on the sessions of `hub` (a gateway's,
/// `gateway.hub().clone()`), for the callers `access` lets in.
///
/// ```
/// use switchyard::api::{self, ApiAccess};
/// use switchyard::{server, Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default()).build();
/// // The key from the environment; without one the API answers only on a loopback address.
/// let key = std::env::var("MY_API_KEY").ok();
/// let access = ApiAccess::new(key.as_deref(), "127.0.0.1:3000".parse().unwrap());
/// let router = gateway.router().nest("/api", api::router(gateway.hub().clone(), access));
/// // Then, for instance: `server::run(listener, router, gateway, shutdown).await`.
/// # let _ = (router, server::CONNECTION_BUFFER);
/// # }
/// ```
pub fn router(hub: Hub, access: ApiAccess) -> Router {
    Router::new()
        .route("/emit", post(emit))
        .route("/rooms/{room}/members", get(members).post(join).delete(leave_by_body))
        .route("/rooms/{room}/members/{sid}", delete(leave))
        .route("/sessions/{sid}", get(session))
        .layer(middleware::from_fn_with_state(access, authorize))
        .with_state(hub)
}

async fn authorize(State(access): State<ApiAccess>, request: Request, next: Next) -> Response {
    match access.check(bearer(request.headers())) {
        Ok(()) => next.run(request).await,
        Err(Error::Unauthorized) => {
            let mut response = Error::Unauthorized.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"switchyard\""));
            response
        }
        Err(refused) => refused.into_response(),
    }
}

impl ApiAccess {
    /// Whether a request that offered `key` (`None`: it offered none) may pass: with a key
    /// configured, only the same key ([`Error::Unauthorized`] otherwise); without one, anyone on
    /// a loopback bind, and no one elsewhere ([`Error::ApiDisabled`]). The operator page
    /// (`admin`) is guarded by the same check.
    pub fn check(&self, offered: Option<&str>) -> Result<(), Error> {
        match self {
            ApiAccess::Loopback => Ok(()),
            ApiAccess::Disabled => Err(Error::ApiDisabled),
            ApiAccess::Key(key) if constant_time_eq(offered.unwrap_or("").as_bytes(), key.as_bytes()) => Ok(()),
            ApiAccess::Key(_) => Err(Error::Unauthorized),
        }
    }
}

/// The key of an `Authorization: Bearer KEY` header, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares without an early exit, so the time taken says nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn emit(State(hub): State<Hub>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, Error> {
    let mut body = object(&headers, &body)?;
    let to = body.remove("to").ok_or_else(|| bad("missing field `to`: {\"sid\": SID}, {\"room\": ROOM} or {\"all\": true}"))?;
    let target = Target::from_json(to).map_err(Error::BadRequest)?;
    let event = match body.remove("event") {
        Some(Value::String(event)) => event,
        Some(_) => return Err(bad("field `event` must be a string")),
        None => return Err(bad("missing field `event`")),
    };
    check_event_name(&event).map_err(|why| Error::BadRequest(format!("field `event` {why}")))?;
    let data = body.remove("data").unwrap_or(Value::Null);
    no_more_fields(&body)?;
    let delivered = hub.publish(&target, &event, &data).await?;
    Ok(Json(json!({ "delivered": delivered })))
}

async fn members(State(hub): State<Hub>, Path(room): Path<String>) -> Result<Json<Value>, Error> {
    check_room_name(&room)?;
    let mut members: Vec<String> = hub.members(&room).await.iter().map(ToString::to_string).collect();
    members.sort();
    Ok(Json(json!({ "room": room, "members": members })))
}

async fn join(
    State(hub): State<Hub>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let sid = sid_from_body(&headers, &body)?;
    let joined = hub.join(&sid, &room).await?;
    Ok(Json(json!({ "room": room, "sid": sid.as_str(), "joined": joined })))
}

async fn leave(State(hub): State<Hub>, Path((room, sid)): Path<(String, String)>) -> Result<Json<Value>, Error> {
    let sid: Sid = sid.parse().map_err(|_| Error::NoSession)?;
    left(&hub, &room, &sid).await
}

async fn leave_by_body(
    State(hub): State<Hub>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let sid = sid_from_body(&headers, &body)?;
    left(&hub, &room, &sid).await
}

async fn left(hub: &Hub, room: &str, sid: &Sid) -> Result<Json<Value>, Error> {
    check_room_name(room)?;
    let left = hub.leave(sid, room).await?;
    Ok(Json(json!({ "room": room, "sid": sid.as_str(), "left": left })))
}

async fn session(State(hub): State<Hub>, Path(sid): Path<String>) -> Result<Json<Value>, Error> {
    let sid: Sid = sid.parse().map_err(|_| Error::NoSession)?;
    let info = hub.info(&sid).await.ok_or(Error::NoSession)?;
    let subject = hub.subject(&sid).await;
    Ok(Json(json!({
        "sid": sid.as_str(),
        "transport": info.transport.map(Transport::as_str),
        "connected_since": info.attached_since.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "detached_for_ms": info.detached_for.map(|d| d.as_millis() as u64),
        "buffered": info.buffered,
        "last_cursor": Cursor::event(sid.clone(), info.last_seq).to_string(),
        "rooms": info.rooms,
        "subject": subject.as_deref(),
    })))
}

fn sid_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Sid, Error> {
    let mut body = object(headers, body)?;
    let sid = match body.remove("sid") {
        Some(Value::String(sid)) => sid,
        Some(_) => return Err(bad("field `sid` must be a string")),
        None => return Err(bad("missing field `sid`")),
    };
    no_more_fields(&body)?;
    sid.parse().map_err(|_| Error::NoSession)
}

/// A JSON object body. As on the transports' POST, a body sent as
/// `application/x-www-form-urlencoded` (what `curl -d` says) or with no content type is read as
/// JSON too; any other content type is refused.
fn object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Error> {
    if !reads_as_json(headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str)) {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("<not text>");
        return Err(Error::ApiMediaType(content_type.to_owned()));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("expected a JSON object")),
        Err(err) => Err(Error::BadRequest(format!("malformed JSON: {err}"))),
    }
}

fn no_more_fields(body: &Map<String, Value>) -> Result<(), Error> {
    match body.keys().next() {
        Some(field) => Err(Error::BadRequest(format!("unknown field `{field}`"))),
        None => Ok(()),
    }
}

fn bad(message: &str) -> Error {
    Error::BadRequest(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_key_the_api_is_served_only_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(ApiAccess::new(None, addr("127.0.0.1:3000")), ApiAccess::Loopback);
        assert_eq!(ApiAccess::new(None, addr("[::1]:3000")), ApiAccess::Loopback);
        assert_eq!(ApiAccess::new(None, addr("0.0.0.0:3000")), ApiAccess::Disabled);
        assert_eq!(ApiAccess::new(Some(""), addr("10.0.0.1:3000")), ApiAccess::Disabled);
        assert_eq!(ApiAccess::new(Some("k"), addr("0.0.0.0:3000")), ApiAccess::Key("k".into()));
        assert_eq!(format!("{:?}", ApiAccess::new(Some("secret"), addr("0.0.0.0:1"))), "Key(..)");
    }

    #[test]
    fn key_comparison_needs_the_whole_key() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
