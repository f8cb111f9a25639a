//! Cluster mode: a request for an Engine.IO session held by another node is passed to that node.
//!
//! An Engine.IO session (its sid, socket task, ping timers, packet queue and upgrade state)
//! lives on the node that opened it, but a round-robin balancer sends each long-polling
//! request, and the WebSocket that upgrades the session, to any node. So in cluster mode the
//! sid names its node (`NODE.RANDOM`, [`session_id`]), and a node that gets a request for a sid
//! it does not hold passes the request to the node named ([`to_holder`]), over HTTP/1.1 on
//! pooled keep-alive connections, and answers with what that node answered: status, headers and
//! body as they come (a poll that waits goes on waiting there). A WebSocket upgrade is passed on
//! the same way, and once the holder has answered `101` the two upgraded connections are joined
//! byte for byte: the session stays on its node, which is all the client's probe needs.
//!
//! Why forwarding rather than moving the session: the session is a running task with timers and
//! a hub attachment; forwarding keeps every rule of the Engine.IO code (one poll at a time, the
//! probe, the requests refused after an upgrade) in one place, on one node, and costs one
//! loopback or LAN hop per request. Why the node in the sid rather than a lookup table: nothing
//! is written per session, and the node's address is read from its liveness key
//! ([`crate::hub::Cluster::peer`]), which lives exactly as long as the node does.
//!
//! The guards: a request is passed on at most once (it carries [`FORWARDED`], and a request
//! carrying it is only ever served locally), only to an address a live node wrote into Redis for
//! itself, never to this node. When the holder is gone (its liveness key expired, its port
//! refuses, it dies mid-answer), the answer is Engine.IO's own for a session that does not exist
//! (`400`, `Session ID unknown`): the client opens a new Engine.IO session on any node and, with
//! connection state recovery, resumes its hub session there with nothing lost.
//!
//! A poll waiting at the holder through a node that shuts down is answered `6` (noop) at once:
//! the session is not this node's to close, and the client simply polls again, elsewhere.
//!
//! The `Origin` header is not passed on: this node has checked it and adds the CORS headers to
//! the answer, which the holder would otherwise add a second time.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::response::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::error::{EngineIoError, Error};
use crate::hub::Hub;

/// Marks a request one node passed to another; its value is the id of the node that did.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-switchyard-forwarded");

/// Longest a connection to the holder may take: on a LAN a live node answers at once, and a
/// client waiting on a dead one is better told to start again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a forwarded request was, for `switchyard_socketio_forwarded_total`.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A long-polling `GET`.
    Poll,
    /// A long-polling `POST`.
    Post,
    /// The WebSocket of an upgrade.
    Upgrade,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Poll => "poll",
            Kind::Post => "post",
            Kind::Upgrade => "upgrade",
        }
    }
}

/// The client of every forwarded request: one pool of keep-alive connections to the other
/// nodes, shared by the process (its connections are to peers, whichever gateway asks).
static CLIENT: LazyLock<Client<HttpConnector, Body>> = LazyLock::new(|| {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
});

/// The Engine.IO id of a new session on this node: `NODE.RANDOM` in cluster mode (the node
/// that holds it, for [`to_holder`]), the random part alone otherwise.
pub fn session_id(hub: &Hub) -> String {
    let random = crate::protocol::Sid::random();
    match hub.cluster() {
        Some(cluster) => format!("{}.{}", cluster.node(), random.as_str()),
        None => random.as_str().to_owned(),
    }
}

/// Serves `request`, for the Engine.IO session `sid` that this node does not hold, by passing
/// it to the node that does; `limit` bounds the wait for that node's answer (a poll is answered
/// within a ping interval). [`EngineIoError::UnknownSid`] when there is no such node to ask
/// (not cluster mode, an id naming no live node or this one, a request already passed on) or
/// it does not answer.
pub async fn to_holder(hub: &Hub, sid: &str, kind: Kind, request: Request, limit: Duration) -> Result<Response, Error> {
    let Some(cluster) = hub.cluster() else { return Err(EngineIoError::UnknownSid.into()) };
    if request.headers().contains_key(&FORWARDED) {
        return Err(EngineIoError::UnknownSid.into());
    }
    let Some((node, _)) = sid.split_once('.') else { return Err(EngineIoError::UnknownSid.into()) };
    let here = cluster.node();
    if node == &*here {
        return Err(EngineIoError::UnknownSid.into());
    }
    let Ok(Some(peer)) = cluster.peer(node).await else {
        count(kind, "gone");
        return Err(EngineIoError::UnknownSid.into());
    };
    let (mut parts, body) = request.into_parts();
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let upgrading = parts.headers.contains_key(header::UPGRADE);
    // The path as the client sent it, before any `nest` took a prefix off: the holder serves
    // the same routes.
    let original = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |o| &o.0);
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::try_from(format!("http://{peer}{path}")) else { return Err(EngineIoError::BadRequest.into()) };
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = pass_on(parts.headers, upgrading);
    outgoing.headers_mut().remove(header::ORIGIN);
    if let Ok(value) = HeaderValue::from_str(&here) {
        outgoing.headers_mut().insert(FORWARDED, value);
    }
    let waiting = Waiting::start();
    let asked = tokio::time::timeout(limit, CLIENT.request(outgoing));
    let answered = if matches!(kind, Kind::Poll) {
        tokio::select! {
            answered = asked => answered,
            () = hub.shutting_down() => {
                // This node is going away, the session is not: the poll is dropped at the holder
                // (its connection closes) and the client, told `6` (noop), polls again, through
                // another node. The node's drain waits for none of the sessions it does not hold.
                count(kind, "shutdown");
                return Ok(super::text("6".to_owned()));
            }
        }
    } else {
        asked.await
    };
    let mut answer = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => {
            tracing::debug!(%err, %peer, node, "the node holding an Engine.IO session did not answer");
            count(kind, "unreachable");
            return Err(EngineIoError::UnknownSid.into());
        }
        Err(_) => {
            tracing::debug!(%peer, node, "the node holding an Engine.IO session did not answer in time");
            count(kind, "unreachable");
            return Err(EngineIoError::UnknownSid.into());
        }
    };
    drop(waiting);
    count(kind, "ok");
    let switched = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let Some(client_upgrade) = client_upgrade else { return Err(EngineIoError::BadRequest.into()) };
        let peer_upgrade = hyper::upgrade::on(&mut answer);
        // Not tracked by the gateway's drain: the session lives on the holder, which says
        // goodbye to it; this node going away only cuts the pipe, and the client recovers.
        tokio::spawn(async move {
            let (Ok(client), Ok(holder)) = tokio::join!(client_upgrade, peer_upgrade) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(holder)).await;
        });
    }
    let (mut parts, body) = answer.into_parts();
    parts.headers = pass_on(parts.headers, switched);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// `headers` without the hop-by-hop ones (RFC 9110, section 7.6.1), which are about one
/// connection, not the request; `Connection` and `Upgrade` stay on an upgrade.
fn pass_on(mut headers: HeaderMap, upgrade: bool) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::PROXY_AUTHENTICATE, header::PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers
}

/// One request passed on whose answer has not come yet, in `switchyard_socketio_forwarding`
/// while it lives (a poll waiting at the holder, mostly).
struct Waiting;

impl Waiting {
    fn start() -> Waiting {
        metrics::gauge!("switchyard_socketio_forwarding").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("switchyard_socketio_forwarding").decrement(1.0);
    }
}

fn count(kind: Kind, outcome: &'static str) {
    metrics::counter!("switchyard_socketio_forwarded_total", "request" => kind.label(), "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind_and_an_upgrade_keeps_its_own() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let passed = pass_on(headers, false);
        assert_eq!(passed.len(), 1, "{passed:?}");
        assert!(passed.contains_key(header::CONTENT_TYPE));

        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        let passed = pass_on(headers, true);
        assert_eq!(passed.len(), 3, "{passed:?}");
    }
}
