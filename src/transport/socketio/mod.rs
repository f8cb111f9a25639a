//! `/socket.io/`: Socket.IO clients (protocol v5 over Engine.IO v4) as sessions of the hub.
//!
//! A Socket.IO client connected to the main namespace holds a hub session like any other
//! transport: its events go to the gateway's handlers (and upstream), what the hub emits to it
//! (replies, rooms, the publish API) comes back as Socket.IO events, and it is counted and
//! limited like any session. Connection state recovery maps onto the hub's cursors: the CONNECT
//! answer's `pid` is the hub's session id, each event carries its number as the recovery offset,
//! and a client reconnecting with `{pid, offset}` resumes the session after that event.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the routes, the query, the settings |
//! | `direct.rs` | the endpoint the server calls ahead of the router (`GET`/`POST /socket.io/`) |
//! | `packet.rs` | the Engine.IO and Socket.IO codecs (pure, fuzzed) |
//! | `engine.rs` | an Engine.IO session's shared state (its queue, its hub attachment) and the table of them |
//! | `polling.rs` | long-polling: the GET that takes the queue, the POST that reads packets (and handles events) |
//! | `ws.rs` | WebSocket: from the start, or by upgrade from long-polling (the probe) |
//! | `socket.rs` | the socket task: pings, the Socket.IO packets, what the hub attachment yields; a POST's events |
//! | `forward.rs` | cluster mode: a request for a session another node holds, passed to that node |
//!
//! Why it is shaped so: an Engine.IO session outlives its requests and changes carrier on
//! upgrade, so one task per session (the socket task) owns what the packets mean and holds the
//! hub attachment, and the transports only move text in and out of it; the one exception, for
//! speed, is a long-polling POST that handles its events itself while nothing of the client
//! waits in that task (`socket::post_event`), in the order they were sent all the same. A session opened on a
//! WebSocket runs that task in the socket's own task, reading and writing the socket itself
//! (`socket::Link`), so that a frame and its reply cross no task boundary. Binary attachments are
//! refused (an `error` event naming the event; the attachments are skipped): the hub carries
//! JSON, and a silently mangled buffer is worse than a clear refusal. Only the main namespace
//! `/` exists: other namespaces get the `CONNECT_ERROR` `Invalid namespace`.
//! In cluster mode an Engine.IO session stays on the node that opened it, and the requests of
//! it that a balancer sends elsewhere are passed to that node (`forward.rs`): no sticky
//! sessions.

mod direct;
mod engine;
mod forward;
pub mod packet;
mod polling;
mod socket;
mod ws;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use serde::Deserialize;

pub(crate) use direct::EngineIo;
pub use engine::Engines;
use engine::{Carrier, EngineSession, Inbound};
use tokio::sync::mpsc;

use super::{Endpoint, Handler};
use crate::admission::ClientAddr;
use crate::error::{EngineIoError, Error};

/// Settings of `/socket.io/`; [`crate::Config`] assembles them with the rest.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// How often the server pings (the handshake's `pingInterval`).
    pub ping_interval: Duration,
    /// How long it waits for the pong before closing (`pingTimeout`).
    pub ping_timeout: Duration,
    /// Largest long-polling body or WebSocket message taken, in bytes (`maxPayload`).
    pub max_payload: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig { ping_interval: Duration::from_secs(25), ping_timeout: Duration::from_secs(20), max_payload: 64 * 1024 }
    }
}

/// The query of every Engine.IO request. Other parameters (`t`, the page's own) are ignored.
#[derive(Debug, Deserialize)]
struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// What the socket task needs of the request that opened its session: the client's address
/// (the per-address limit), and its headers and query (authentication, the open hook).
pub(crate) struct Opening {
    client: ClientAddr,
    headers: HeaderMap,
    query: Option<String>,
}

impl Opening {
    /// What the socket task keeps of the request `parts` opening a session. The client's
    /// address is read here, only where a session opens (the per-address limit): a poll
    /// needs none, so the server's direct path ([`EngineIo`]) does not put the connection's
    /// address (`peer`) on every request, as it does for the router, but hands it over for
    /// this.
    async fn of<H: Handler>(endpoint: &Endpoint<H>, parts: &mut axum::http::request::Parts, peer: Option<SocketAddr>) -> Opening {
        if let Some(peer) = peer {
            parts.extensions.insert(ConnectInfo(peer));
        }
        let client = match ClientAddr::from_request_parts(parts, endpoint).await {
            Ok(client) => client,
            Err(never) => match never {},
        };
        Opening { client, headers: parts.headers.clone(), query: parts.uri.query().map(str::to_owned) }
    }
}

impl EngineQuery {
    /// Reads and checks the query: protocol version 4 and a known transport.
    /// The sid is borrowed from the query where it needed no decoding (the usual case): a poll
    /// or a post looks its session up by it and needs no copy.
    fn read(uri: &Uri) -> Result<(Carrier, Option<Cow<'_, str>>), EngineIoError> {
        let query = Params::parse(uri.query().unwrap_or(""))?;
        if query.eio.as_deref() != Some("4") {
            return Err(EngineIoError::UnsupportedVersion);
        }
        let carrier = match query.transport.as_deref() {
            Some("polling") => Carrier::Polling,
            Some("websocket") => Carrier::WebSocket,
            _ => return Err(EngineIoError::UnknownTransport),
        };
        Ok((carrier, query.sid))
    }
}

/// The parameters of [`EngineQuery`], borrowed from the query where nothing needed decoding.
struct Params<'a> {
    eio: Option<Cow<'a, str>>,
    transport: Option<Cow<'a, str>>,
    sid: Option<Cow<'a, str>>,
}

impl<'a> Params<'a> {
    /// The query's parameters, as `serde_urlencoded` reads them into [`EngineQuery`] (a
    /// parameter named twice is refused, others are ignored), without its cost on the common
    /// query: `EIO=4&transport=polling&t=...&sid=...` has nothing to decode, and splitting it by
    /// hand ([`super::query_pairs`], as [`super::AttachQuery::parse`] does) takes a few hundred
    /// instructions where `serde_urlencoded` took some 3,400 per request, a tenth of a
    /// long-polling round trip. A query with anything to decode (`%`, `+`) still goes through
    /// `serde_urlencoded`.
    fn parse(query: &'a str) -> Result<Params<'a>, EngineIoError> {
        if memchr::memchr2(b'%', b'+', query.as_bytes()).is_some() {
            let query: EngineQuery = serde_urlencoded::from_str(query).map_err(|_| EngineIoError::BadRequest)?;
            return Ok(Params { eio: query.eio.map(Cow::Owned), transport: query.transport.map(Cow::Owned), sid: query.sid.map(Cow::Owned) });
        }
        let mut parsed = Params { eio: None, transport: None, sid: None };
        for pair in super::query_pairs(query) {
            let (key, value) = super::key_value(pair);
            let slot = match key {
                "EIO" => &mut parsed.eio,
                "transport" => &mut parsed.transport,
                "sid" => &mut parsed.sid,
                _ => continue,
            };
            if slot.replace(Cow::Borrowed(value)).is_some() {
                return Err(EngineIoError::BadRequest);
            }
        }
        Ok(parsed)
    }
}

/// The routes, for [`super::router`].
pub(crate) fn routes<H: Handler>() -> axum::routing::MethodRouter<Endpoint<H>> {
    axum::routing::get(get_routed::<H>).post(post::<H>)
}

/// `GET` through the router: the request carries its peer's address (`ConnectInfo`), if the
/// server gave it one.
async fn get_routed<H: Handler>(State(endpoint): State<Endpoint<H>>, request: Request) -> Result<Response, Error> {
    get(endpoint, request, None).await
}

/// `GET`: the handshake (no sid), a poll, or a WebSocket (new, or an upgrade). A poll or an
/// upgrade for a session another node holds is passed to that node (`forward.rs`). `peer`, the
/// address of the connection, is given by a caller that left it off the request (see
/// [`Opening::of`]).
async fn get<H: Handler>(endpoint: Endpoint<H>, request: Request, peer: Option<SocketAddr>) -> Result<Response, Error> {
    let (mut parts, body) = request.into_parts();
    let (carrier, sid) = EngineQuery::read(&parts.uri)?;
    match (carrier, sid) {
        (Carrier::WebSocket, Some(sid)) if endpoint.engines().get(&sid).is_none() => {
            let sid = sid.into_owned();
            Box::pin(elsewhere(&endpoint, &sid, forward::Kind::Upgrade, Request::from_parts(parts, body))).await
        }
        (Carrier::WebSocket, sid) => {
            let sid = sid.map(Cow::into_owned);
            Box::pin(websocket(endpoint, parts, sid, peer)).await
        }
        (Carrier::Polling, None) => {
            let (session, inbox_rx) = open(&endpoint, Carrier::Polling)?;
            tokio::spawn(socket::run(endpoint.clone(), session.clone(), inbox_rx, Box::pin(Opening::of(&endpoint, &mut parts, peer)).await));
            Ok(text(handshake(&endpoint, &session, true)))
        }
        (Carrier::Polling, Some(sid)) => match endpoint.engines().get(&sid) {
            Some(session) => {
                // The request is done with before the wait: held across it, it would be part of
                // every poll's future (copied into its box) and of a waiting poll's memory.
                drop(sid);
                drop((parts, body));
                polling::poll(session).await
            }
            None => {
                let sid = sid.into_owned();
                Box::pin(elsewhere(&endpoint, &sid, forward::Kind::Poll, Request::from_parts(parts, body))).await
            }
        },
    }
}

/// A WebSocket, new (`sid` none) or an upgrade of session `sid`, from the request `parts`.
/// Boxed by [`get`], as [`elsewhere`] is: what it holds across its waits (the opening's
/// headers, the request) would otherwise be part of every poll's future.
async fn websocket<H: Handler>(endpoint: Endpoint<H>, mut parts: axum::http::request::Parts, sid: Option<String>, peer: Option<SocketAddr>) -> Result<Response, Error> {
    let opening = Opening::of(&endpoint, &mut parts, peer).await;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|_| EngineIoError::BadRequest)?;
    ws::upgrade(endpoint, upgrade, sid, opening)
}

/// `POST`: packets over long-polling (passed to the node holding the session, if another does).
async fn post<H: Handler>(State(endpoint): State<Endpoint<H>>, request: Request) -> Result<Response, Error> {
    let (carrier, sid) = EngineQuery::read(request.uri())?;
    let sid = sid.ok_or(EngineIoError::BadHandshakeMethod)?;
    if carrier != Carrier::Polling {
        return Err(EngineIoError::BadRequest.into());
    }
    match endpoint.engines().get(&sid) {
        Some(session) => polling::post(endpoint, session, request.into_body()).await,
        None => {
            let sid = sid.into_owned();
            Box::pin(elsewhere(&endpoint, &sid, forward::Kind::Post, request)).await
        }
    }
}

/// A request for session `sid`, which this node does not hold: cluster mode passes it to the
/// node that does; otherwise, and when that node is gone, `Session ID unknown`. The wait for
/// the holder's answer is bounded by what a poll may take there (a ping interval) and the ping
/// timeout.
///
/// Its callers box it, as they box [`Opening::of`]: the state of a forwarded request is large,
/// and held inline it would make every poll's and post's future as large, copied at each move
/// (the direct path's box of a poll or post cost some 800 instructions of copying; callgrind).
async fn elsewhere<H: Handler>(endpoint: &Endpoint<H>, sid: &str, kind: forward::Kind, request: Request) -> Result<Response, Error> {
    let config = &endpoint.config().socketio;
    forward::to_holder(endpoint.hub(), sid, kind, request, config.ping_interval + config.ping_timeout).await
}

/// Opens an Engine.IO session written by `carrier`, and the receiving end of its inbox.
fn open<H: Handler>(endpoint: &Endpoint<H>, carrier: Carrier) -> Result<(Arc<EngineSession>, mpsc::Receiver<Inbound>), Error> {
    if endpoint.engines().len() >= endpoint.hub().config().max_sessions {
        return Err(Error::Full);
    }
    let (session, inbox_rx) = EngineSession::with_id(carrier, forward::session_id(endpoint.hub()));
    endpoint.engines().insert(session.clone());
    Ok((session, inbox_rx))
}

/// The open packet of `session`.
fn handshake<H: Handler>(endpoint: &Endpoint<H>, session: &EngineSession, upgrade: bool) -> String {
    let config = &endpoint.config().socketio;
    packet::encode_open(&packet::Handshake {
        sid: &session.id,
        upgrade,
        ping_interval: config.ping_interval.as_millis(),
        ping_timeout: config.ping_timeout.as_millis(),
        max_payload: config.max_payload,
    })
}

/// A long-polling answer: Engine.IO text.
fn text(body: String) -> Response {
    // Built directly: `into_response` sets a content type, then the tuple's headers replace
    // it. Room for four, so that the `Content-Length` axum adds does not grow the map.
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut response = Response::new(axum::body::Body::from(body));
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::{EngineQuery, Params};

    /// The hand-split query reads as `serde_urlencoded` reads it, duplicates refused included.
    #[test]
    fn the_query_reads_as_serde_urlencoded_reads_it() {
        let queries = [
            "",
            "EIO=4&transport=polling",
            "EIO=4&transport=polling&t=PX1a2b&sid=abc-DEF_123",
            "EIO=4&transport=websocket&sid=abc&&",
            "EIO&transport=polling",
            "EIO=4&EIO=3&transport=polling",
            "sid=a&sid=b",
            "EIO=4&transport=polling&sid=a%2Bb",
            "EIO=4&transport=poll+ing",
            "transport=polling&EIO=4&page=1&page=2",
            "EIO=4=4&transport=",
            "sid=a&sid=b&x=%41",
            "sid=%zz&sid=b",
            "=x&EIO=4&=",
            "&EIO=4&transport=polling&sid=abc&",
            "sid=a&SID=b",
            "t=1+2&EIO=4",
            "EIO=4&transport=polling&sid=a&b=%",
            "sid",
            "sid=&sid",
        ];
        for query in queries {
            let ours = Params::parse(query).map(|q| (q.eio.map(Into::into), q.transport.map(Into::into), q.sid.map(Into::into)));
            let theirs = serde_urlencoded::from_str::<EngineQuery>(query).map(|q| (q.eio, q.transport, q.sid));
            let ours: Result<(Option<String>, Option<String>, Option<String>), _> = ours;
            assert_eq!(ours.ok(), theirs.ok(), "query {query:?}");
        }
    }
}
