//! Engine.IO long-polling: `GET` takes what is queued for the client (waiting until something
//! is), `POST` handles the client's events itself while nothing waits ahead of them in the
//! socket task (see `socket.rs`), and hands the socket task every other packet.
//!
//! The protocol allows one poll and one post in flight per session; a second of either is a
//! protocol error that closes the session. After an upgrade to WebSocket, polling requests get
//! `400` (`Bad request`) and the session goes on over the WebSocket.

use std::sync::Arc;

use axum::body::{Body, Bytes, HttpBody};
use http_body_util::BodyExt;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::engine::{Carrier, CloseCause, EngineSession, Inbound};
use super::packet::{decode_payload, EnginePacket, SEPARATOR};
use super::socket::{post_event, Posted};
use super::super::{Endpoint, Handler};
use crate::error::{EngineIoError, Error};

/// Ends a poll or a post however its request ends (a client that drops a poll cancels it).
struct InFlight<'a>(&'a EngineSession, fn(&EngineSession));

impl<'a> InFlight<'a> {
    /// Takes the session's one slot of this kind (`begin`, given back by `end` when the request
    /// ends): polling requests once the session is on WebSocket get `400`, and a second request
    /// of a kind at once is a protocol error that closes the session too.
    fn begin(session: &'a EngineSession, begin: fn(&EngineSession) -> bool, end: fn(&EngineSession)) -> Result<InFlight<'a>, Error> {
        if session.carrier() != Carrier::Polling {
            return Err(EngineIoError::BadRequest.into());
        }
        if !begin(session) {
            session.close(CloseCause::ProtocolError);
            return Err(EngineIoError::BadRequest.into());
        }
        Ok(InFlight(session, end))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

/// `GET ?sid=`: every queued packet, separated by `\x1e`; waits until there is one. A session
/// closed by the client answers `6` (noop) to the poll it left waiting. The session is its own,
/// not borrowed, as [`post`]'s is: the direct path (`direct.rs`) boxes this future as it is.
pub async fn poll(session: Arc<EngineSession>) -> Result<Response, Error> {
    let _in_flight = InFlight::begin(&session, EngineSession::begin_poll, EngineSession::end_poll)?;
    let packets = loop {
        let packets = session.take();
        if !packets.is_empty() {
            break packets;
        }
        if session.is_closed() || session.carrier() != Carrier::Polling {
            break vec!["6".to_owned()];
        }
        session.woken().await;
    };
    if let [_] = packets[..] {
        // One packet (a reply, a ping): it is the body as it is, not copied.
        return Ok(super::text(packets.into_iter().next().expect("one packet")));
    }
    let mut body = String::with_capacity(packets.iter().map(|p| p.len() + 1).sum());
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            body.push(SEPARATOR);
        }
        body.push_str(packet);
    }
    Ok(super::text(body))
}

/// `POST ?sid=`: the client's packets, in order. Answers `ok` once they are handled or handed
/// over. The body is axum's through the router, hyper's own on the server's direct path
/// (`direct.rs`). The endpoint and the session are its own, not borrowed, so that the direct
/// path's box holds no `async` wrapper keeping them a second time.
pub async fn post<H: Handler, B: HttpBody<Data = Bytes> + Unpin>(endpoint: Endpoint<H>, session: Arc<EngineSession>, body: B) -> Result<Response, Error> {
    let max_payload = endpoint.config().socketio.max_payload;
    let _in_flight = InFlight::begin(&session, EngineSession::begin_post, EngineSession::end_post)?;
    let Ok(bytes) = read_body(body, max_payload).await else {
        // Over maxPayload (or a body that broke off): the protocol closes the session.
        session.close(CloseCause::ProtocolError);
        return Err(Error::TooLarge(max_payload));
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        session.close(CloseCause::ProtocolError);
        return Err(EngineIoError::BadRequest.into());
    };
    for packet in decode_payload(text) {
        let inbound = match packet {
            Ok(EnginePacket::Message(message)) if session.quiet() => match post_event(&endpoint, &session, message).await {
                Posted::Handled => continue,
                Posted::Waiting(handling) => Inbound::Handling(handling),
                Posted::Theirs => Inbound::Message(message.into()),
                Posted::Closed => break,
            },
            Ok(EnginePacket::Message(message)) => Inbound::Message(message.into()),
            Ok(EnginePacket::Pong(_)) => Inbound::Pong,
            Ok(EnginePacket::Binary(_)) => Inbound::Binary,
            Ok(EnginePacket::Noop) => continue,
            Ok(EnginePacket::Close) => {
                session.close(CloseCause::Client);
                break;
            }
            Ok(EnginePacket::Open | EnginePacket::Ping(_) | EnginePacket::Upgrade) | Err(_) => {
                session.close(CloseCause::ProtocolError);
                return Err(EngineIoError::BadRequest.into());
            }
        };
        if !session.deliver(inbound).await {
            break;
        }
    }
    Ok(ok())
}

/// The body of a POST, at most `max` bytes; `Err` for a larger one or one that broke off.
///
/// A client's POST body (small, with a `Content-Length`) comes in one frame: taken as it is,
/// where `to_bytes`'s `Limited` and `Collect` adapters cost some 1,400 instructions a POST
/// (callgrind). A body in several frames is gathered, the bound checked as it grows.
async fn read_body<B: HttpBody<Data = Bytes> + Unpin>(mut body: B, max: usize) -> Result<Bytes, ()> {
    if body.size_hint().lower() > max as u64 {
        return Err(());
    }
    let mut gathered: Option<Vec<u8>> = None;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        let so_far = gathered.as_ref().map_or(0, Vec::len);
        if so_far + data.len() > max {
            return Err(());
        }
        match &mut gathered {
            None if body.is_end_stream() => return Ok(data),
            None => gathered = Some(data.to_vec()),
            Some(gathered) => gathered.extend_from_slice(&data),
        }
    }
    Ok(gathered.map(Bytes::from).unwrap_or_default())
}

/// A post's answer: `ok`, as `text/html` (as Socket.IO's own server answers), built directly,
/// with room for the `Content-Length` axum adds (a map that grows costs a rehash).
fn ok() -> Response {
    let mut response = Response::new(Body::from("ok"));
    let mut headers = axum::http::HeaderMap::with_capacity(4);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    *response.headers_mut() = headers;
    response
}
