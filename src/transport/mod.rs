//! The transports: how events cross the network in each direction.
//!
//! | route        | direction        | file       |
//! |--------------|------------------|------------|
//! | `GET /ws`    | both             | `ws.rs`    |
//! | `GET /sse`   | server to client | `sse.rs`   |
//! | `GET /poll`  | server to client | `poll.rs`  |
//! | `POST /sse`, `POST /poll` | client to server | `post.rs` |
//! | `/socket.io/` | both (Socket.IO clients) | `socketio/` |
//!
//! A transport only moves bytes: it asks the hub for an attachment, writes what the attachment
//! yields, and hands what it reads to [`Handler::dispatch_to`]. Session logic stays in the hub, and
//! the bytes around each event (envelope, poll batch, SSE frame) come from
//! [`crate::protocol::encode`].
//!
//! Why it is shaped so: the transports sit under the gateway and do not know it. What they
//! need from above is two calls, declared here as the [`Handler`] trait the gateway implements:
//! run the handlers of what a client sent, and admit (authenticate, open) a new attachment.
//! Everything else they need (the hub, their settings, the per-address limit, the tracker of
//! WebSocket tasks) the gateway hands them in an [`Endpoint`], the state of their routes. The
//! handler is a type parameter rather than a trait object, so a dispatched batch costs a direct
//! call, as when the transports called the gateway by name.

pub mod origin;
mod poll;
mod post;
pub mod socketio;
mod sse;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts as RequestParts;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, ClientAddr};
use crate::error::Error;
use crate::hub::{AttachRequest, Attachment, Event, Hub, HubError, SessionHandle, Transport, TransportChange};
use crate::protocol::encode::Outgoing;
use crate::protocol::{Envelopes, Limits, Sid};

/// What the transports need from the layer above them (the gateway): the two things a
/// transport cannot do with the hub alone.
pub trait Handler: Send + Sync + 'static {
    /// Runs the handlers of `envelopes`, in order, for the session they came from; completes
    /// when they have run. Called once per batch a client sent (a POST body, a WebSocket
    /// frame).
    fn dispatch_to(&self, session: &SessionHandle, envelopes: Envelopes) -> impl Future<Output = Result<(), HubError>> + Send;

    /// Decides whether a transport just attached may be served: authenticates the request and
    /// runs the open hook of a session it created. On `Err` the transport answers the error
    /// (a session the attachment created has been removed).
    fn admit(&self, attachment: &Attachment, headers: &HeaderMap, query: Option<&str>)
        -> impl Future<Output = Result<(), Error>> + Send;
}

/// Settings of the transports; [`crate::Config`] assembles them with the rest.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Interval of SSE keep-alive comments (they also find dead connections).
    pub keepalive: Duration,
    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    pub ws_ping: Duration,
    /// Longest a long-poll waits for an event before answering `[]`.
    pub poll_timeout: Duration,
    /// Largest accepted POST body and WebSocket message, in bytes.
    pub max_body: usize,
    /// Bounds on envelopes in one body or frame.
    pub limits: Limits,
    /// How long a WebSocket write may stay blocked on a peer that does not read.
    pub slow_client_timeout: Duration,
    /// Browser origins allowed besides the server's own and loopback ones (see [`origin`]).
    pub allowed_origins: Vec<String>,
    /// Settings of `/socket.io/`.
    pub socketio: socketio::SocketIoConfig,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keepalive: Duration::from_secs(15),
            ws_ping: Duration::from_secs(20),
            poll_timeout: Duration::from_secs(25),
            max_body: 64 * 1024,
            limits: Limits::default(),
            slow_client_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            socketio: socketio::SocketIoConfig::default(),
        }
    }
}

/// The state of the transport routes: what every transport handler is given. Cheap to clone
/// (one reference count), as axum clones it for every request.
pub struct Endpoint<H> {
    inner: Arc<Parts<H>>,
}

struct Parts<H> {
    hub: Hub,
    config: TransportConfig,
    /// Asked before an attach creates a session (the per-address limit).
    admission: Admission,
    /// Where WebSocket tasks are tracked, so that the gateway's drain waits for them: its
    /// owner (the gateway) closes and awaits it at shutdown.
    sockets: TaskTracker,
    handler: H,
    /// The Engine.IO sessions of `/socket.io/`, shared by every endpoint of one gateway.
    engines: Arc<socketio::Engines>,
}

impl<H> Clone for Endpoint<H> {
    fn clone(&self) -> Self {
        Endpoint { inner: self.inner.clone() }
    }
}

impl<H: Handler> Endpoint<H> {
    /// The state of the routes of a gateway: its hub, the transports' settings, its
    /// per-address limit on new sessions, the tracker of its WebSocket tasks, its table of
    /// Engine.IO sessions, and itself as the [`Handler`] of what the transports read.
    pub fn new(
        hub: Hub,
        config: TransportConfig,
        admission: Admission,
        sockets: TaskTracker,
        engines: Arc<socketio::Engines>,
        handler: H,
    ) -> Endpoint<H> {
        Endpoint { inner: Arc::new(Parts { hub, config, admission, sockets, handler, engines }) }
    }

    /// The hub the transports attach to.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The transports' settings.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// The Engine.IO sessions of `/socket.io/`.
    pub(crate) fn engines(&self) -> &socketio::Engines {
        &self.inner.engines
    }

    /// Attaches a transport for `client`: a new session (none asked for, or the one asked for
    /// cannot be honoured) only if the client's address may open one now, else
    /// [`Error::TooManyNewSessions`] and no session is created. Resuming is never limited.
    pub async fn attach(&self, request: AttachRequest<'_>, client: ClientAddr) -> Result<Attachment, Error> {
        attach(&self.inner.hub, &self.inner.admission, request, client).await
    }

    /// See [`Handler::admit`].
    pub async fn admit(&self, attachment: &Attachment, headers: &HeaderMap, query: Option<&str>) -> Result<(), Error> {
        self.inner.handler.admit(attachment, headers, query).await
    }

    /// Runs the handlers of `envelopes` for the session `sid`, if it is still live.
    pub async fn dispatch(&self, sid: &Sid, envelopes: Envelopes) -> Result<(), HubError> {
        let session = self.inner.hub.session(sid).await?;
        self.dispatch_to(&session, envelopes).await
    }

    /// See [`Handler::dispatch_to`]. The handler's own future, not one of an `async fn` around
    /// it, which would hold `envelopes` a second time: a Socket.IO event's handling is boxed,
    /// and that copy took its box over the allocator's per-thread cache limit (1,032 bytes).
    pub fn dispatch_to<'a>(&'a self, session: &'a SessionHandle, envelopes: Envelopes) -> impl Future<Output = Result<(), HubError>> + Send + 'a {
        self.inner.handler.dispatch_to(session, envelopes)
    }

    /// Tells the session, in its own event stream, that something it sent was refused.
    pub async fn report_error(&self, sid: &Sid, error: impl std::fmt::Display) {
        report_error(&self.inner.hub, sid, error).await;
    }

    /// Runs a WebSocket's task so that the gateway's drain waits for it. Not cancelled at
    /// shutdown: the socket ends by itself once the hub has told its attachment to say goodbye.
    pub(crate) fn track_socket<F: Future<Output = ()>>(&self, task: F) -> impl Future<Output = ()> {
        self.inner.sockets.track_future(task)
    }
}

/// What [`ClientAddr`] needs from the state of the transport routes.
impl<H> FromRef<Endpoint<H>> for Admission {
    fn from_ref(endpoint: &Endpoint<H>) -> Admission {
        endpoint.inner.admission.clone()
    }
}

/// [`Endpoint::attach`], for whoever holds a hub and an admission (the gateway too).
pub(crate) async fn attach(hub: &Hub, admission: &Admission, request: AttachRequest<'_>, client: ClientAddr) -> Result<Attachment, Error> {
    let gate = || {
        admission.admit(client.0).map_err(|limited| {
            tracing::debug!(client = ?client.0, retry_after = limited.retry_after, "too many new sessions from this address");
            Error::from(limited)
        })
    };
    hub.attach_with(request, gate).await
}

/// [`Endpoint::report_error`], for whoever holds a hub (the gateway too).
pub(crate) async fn report_error(hub: &Hub, sid: &Sid, error: impl std::fmt::Display) {
    let _ = hub.emit(sid, "error", &json!({ "error": error.to_string() })).await;
}

/// The transports' routes: `/ws`, `/sse` (GET stream, POST send), `/poll` (GET, and POST as
/// an alias of `POST /sse`) and `/socket.io/` (Socket.IO clients), with the routes of `beside` (the gateway's own), all behind the
/// `Origin` check of [`origin`].
pub fn router<H: Handler>(endpoint: Endpoint<H>, beside: Router) -> Router {
    let policy = origin::OriginPolicy::new(&endpoint.config().allowed_origins);
    Router::new()
        // CONNECT: a WebSocket over HTTP/2 (RFC 8441) is an extended CONNECT, not a GET.
        .route("/ws", get(ws::upgrade::<H>).connect(ws::upgrade::<H>))
        .route("/sse", get(sse::stream::<H>).post(post::send::<H>))
        .route("/poll", get(poll::poll::<H>).post(post::send::<H>))
        .route("/socket.io/", socketio::routes::<H>())
        .with_state(endpoint)
        .merge(beside)
        .layer(origin::OriginLayer::new(policy))
}

/// The query of every attaching request: which session, and where to resume. Parameters not
/// named here (a page's own, `token`) are accepted and ignored; one named twice is refused
/// (`400`).
///
/// Extracted by [`AttachQuery::parse`] rather than axum's `Query`, which runs `serde_urlencoded`
/// under `serde_path_to_error` and percent-decodes every pair into a new string: about 2,400
/// instructions of every POST's and every poll's round trip for a query that is a sid and a
/// cursor, neither of which needs decoding.
#[derive(Debug, Default, Deserialize)]
pub struct AttachQuery {
    /// The session to resume, if any.
    pub sid: Option<String>,
    /// Where to resume it: the cursor of the last event the client saw.
    pub last_event_id: Option<String>,
    /// `heartbeat=1` (or `true`) on a WebSocket: send a `heartbeat` frame at every ping, for
    /// clients that cannot see protocol pings (browsers). Any other value is off.
    pub heartbeat: Option<String>,
    /// The transport the client comes from, when it changed transport to attach with this one
    /// (`websocket`, `sse`, `polling`); with `reason`, counted and kept in the session's history.
    pub from: Option<String>,
    /// Why it changed (`ws_blocked`, `sse_held_back`, `probe`, ...; see [`ChangeReason`](crate::hub::ChangeReason)).
    pub reason: Option<String>,
}

/// The non-empty `&`-separated pairs of a query string, not decoded. Split with `memchr` rather
/// than `str::split`, whose searcher cost some 160 instructions a pair on the attach and
/// Engine.IO paths; `&` and `=` are ASCII, so every cut is on a char boundary.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = &str> {
    let mut rest = query;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let pair = match memchr::memchr(b'&', rest.as_bytes()) {
            Some(at) => {
                let pair = &rest[..at];
                rest = &rest[at + 1..];
                pair
            }
            None => std::mem::take(&mut rest),
        };
        if !pair.is_empty() {
            return Some(pair);
        }
    })
}

/// A query pair's key and value, cut at its first `=` (no `=`: the value is empty).
pub(crate) fn key_value(pair: &str) -> (&str, &str) {
    match memchr::memchr(b'=', pair.as_bytes()) {
        Some(at) => (&pair[..at], &pair[at + 1..]),
        None => (pair, ""),
    }
}

impl AttachQuery {
    /// Reads a query string. A pair with nothing to decode (no `%`, no `+`) is taken as it is;
    /// any other is decoded by `serde_urlencoded`.
    pub fn parse(query: &str) -> Result<AttachQuery, Error> {
        let mut parsed = AttachQuery::default();
        for pair in query_pairs(query) {
            if memchr::memchr2(b'%', b'+', pair.as_bytes()).is_some() {
                let decoded: Vec<(String, String)> = serde_urlencoded::from_str(pair)
                    .map_err(|err| Error::BadRequest(format!("Failed to deserialize query string: {err}")))?;
                for (key, value) in decoded {
                    parsed.set(&key, value)?;
                }
            } else {
                let (key, value) = key_value(pair);
                parsed.set(key, value.to_owned())?;
            }
        }
        Ok(parsed)
    }

    /// Sets the parameter `key`, if it is one of ours.
    fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        let slot = match key {
            "sid" => &mut self.sid,
            "last_event_id" => &mut self.last_event_id,
            "heartbeat" => &mut self.heartbeat,
            "from" => &mut self.from,
            "reason" => &mut self.reason,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(Error::BadRequest(format!("Failed to deserialize query string: duplicate field `{key}`")));
        }
        *slot = Some(value);
        Ok(())
    }

    /// Whether the client asked for application-level heartbeats.
    pub fn wants_heartbeat(&self) -> bool {
        matches!(self.heartbeat.as_deref(), Some("1" | "true"))
    }

    /// The transport change the client reports on attaching `to`, if any.
    pub fn change(&self, to: Transport) -> Option<TransportChange> {
        TransportChange::parse(self.from.as_deref(), self.reason.as_deref(), to)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AttachQuery {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut RequestParts, _state: &S) -> Result<Self, Self::Rejection> {
        AttachQuery::parse(parts.uri.query().unwrap_or_default())
    }
}

/// An event of the hub as the encoder ([`crate::protocol::encode`]) takes it: the frame around
/// the event's data is built per write, from its parts; the data is JSON text rendered once at
/// emit time.
#[inline]
pub(crate) fn outgoing<'a>(event: &'a Event, sid: &'a Sid) -> Outgoing<'a> {
    Outgoing { sid, seq: event.seq, notice: event.notice, name: event.name(), data: event.data(), ack: event.ack() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Cursor;

    #[test]
    fn the_attach_query_takes_plain_and_encoded_pairs_and_refuses_a_parameter_twice() {
        let query = AttachQuery::parse("sid=abc_-1&last_event_id=abc_-1.7&page=x&&heartbeat").unwrap();
        assert_eq!(query.sid.as_deref(), Some("abc_-1"));
        assert_eq!(query.last_event_id.as_deref(), Some("abc_-1.7"));
        assert_eq!(query.heartbeat.as_deref(), Some(""));
        assert!(query.from.is_none() && query.reason.is_none());
        let query = AttachQuery::parse("s%69d=a%2Fb&reason=ws+blocked&from=sse").unwrap();
        assert_eq!(query.sid.as_deref(), Some("a/b"));
        assert_eq!(query.reason.as_deref(), Some("ws blocked"));
        assert_eq!(query.from.as_deref(), Some("sse"));
        assert_eq!(AttachQuery::parse("").unwrap().sid, None);
        let query = AttachQuery::parse("&from=a=b&").unwrap();
        assert_eq!(query.from.as_deref(), Some("a=b"));
        for twice in ["sid=a&sid=b", "sid=a&s%69d=b"] {
            let err = AttachQuery::parse(twice).unwrap_err();
            assert!(matches!(&err, Error::BadRequest(m) if m.contains("duplicate field `sid`")), "{twice}: {err:?}");
        }
    }

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
