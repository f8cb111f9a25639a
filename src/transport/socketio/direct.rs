//! `/socket.io/` served ahead of the router: what the server's own listener calls for an
//! Engine.IO request instead of passing it through axum's `Router`.
//!
//! Why: a long-polling round trip is two HTTP requests, and the router's share of each (path
//! matching, its extension inserts and `MatchedPath`, the method router, the per-route boxes and
//! `Content-Length` fix-up) was some 3,000 instructions, a tenth of what the request costs
//! (callgrind; see docs/performance.md). socketioxide serves `/socket.io/` as a layer in front
//! of the router for the same reason.
//!
//! What it takes is narrow on purpose, so that it behaves as the route does: `GET` and `POST`
//! of exactly `/socket.io/`, with no `Origin` or the page's own (the origin layer passes those
//! to the route untouched). Everything else (another method, an allowed cross-origin request
//! with its CORS, a refused origin's `403`) goes to the router, whose route stays for that and
//! for applications that nest [`crate::Gateway::router`] under a prefix.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use hyper::body::Incoming;

use super::super::origin::{OriginPolicy, Verdict};
use super::super::{Endpoint, Handler};
use super::engine::Carrier;
use super::{polling, EngineQuery};

/// The path served.
pub const PATH: &str = "/socket.io/";

/// The Engine.IO endpoint of a gateway, for the server to call directly.
pub struct EngineIo<H> {
    endpoint: Endpoint<H>,
    /// The router's origin policy: requests it would send through CORS or refuse are left to it.
    origins: OriginPolicy,
}

impl<H> Clone for EngineIo<H> {
    fn clone(&self) -> Self {
        EngineIo { endpoint: self.endpoint.clone(), origins: self.origins.clone() }
    }
}

impl<H: Handler> EngineIo<H> {
    /// The endpoint of `endpoint`'s Engine.IO sessions, with the router's origin policy.
    pub fn new(endpoint: Endpoint<H>) -> EngineIo<H> {
        let origins = OriginPolicy::new(&endpoint.config().allowed_origins);
        EngineIo { endpoint, origins }
    }

    /// Whether `request` is one to [`serve`](Self::serve) here: `GET` or `POST` of
    /// `/socket.io/`, from no browser or from the page's own origin.
    pub fn takes<B>(&self, request: &axum::http::Request<B>) -> bool {
        request.uri().path() == PATH
            && matches!(*request.method(), Method::GET | Method::POST)
            && matches!(self.origins.judge_request(request), None | Some(Verdict::SameOrigin))
    }

    /// Answers a request [`takes`](Self::takes) accepted, as the route would, for the
    /// connection from `peer`. The request need not carry `ConnectInfo`: the address is put on
    /// it only where a session opens (the per-address limit reads it), not on every poll.
    ///
    /// A poll or a post of a session this node holds (all but a session's first and last
    /// requests) has its session looked up here, and the request's head is dropped before this
    /// returns: hyper reads on (to see a client that goes away) before it polls the future, and
    /// the head's URI and header values are slices of its read buffer, which, while they live,
    /// it cannot reuse for that read, so it allocated a new 8 KiB buffer per request (callgrind,
    /// gdb: docs/performance.md). The body is read as hyper's `Incoming`, not boxed into an
    /// axum `Body`. Every other request (a handshake, a WebSocket, a session another node
    /// holds, a malformed query) goes the route's way.
    ///
    /// Boxed here, where the future is made, rather than by the caller: a future this size
    /// (it holds a poll's and a post's state) is copied at every move, and the moves into a
    /// caller's box cost some 450 instructions a request (callgrind).
    ///
    /// A box for each kind, each the size of its own request's state: a `GET`'s is not
    /// carried (and copied) by every `POST`, nor the reverse. The request's future is boxed as
    /// it is (mapped), not inside an `async` block, which would keep a second room for the
    /// request it moves on: a poll's box fits the allocator's per-thread cache (at most 1,032
    /// bytes), where 1,048 bytes took its slow path, some 400 instructions (gdb, callgrind).
    pub fn serve(&self, request: axum::http::Request<Incoming>, peer: SocketAddr) -> Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> {
        let endpoint = self.endpoint.clone();
        let held = match EngineQuery::read(request.uri()) {
            Ok((Carrier::Polling, Some(sid))) => endpoint.engines().get(&sid),
            _ => None,
        };
        match (held, request.method() == Method::GET) {
            (Some(session), true) => {
                drop(request);
                Box::pin(polling::poll(session).map(answer))
            }
            (Some(session), false) => Box::pin(polling::post(endpoint, session, request.into_body()).map(answer)),
            (None, true) => Box::pin(super::get(endpoint, request.map(axum::body::Body::new), Some(peer)).map(answer)),
            (None, false) => Box::pin(super::post(State(endpoint), request.map(axum::body::Body::new)).map(answer)),
        }
    }
}

/// A request's answer as the server's service gives it.
#[allow(clippy::unnecessary_wraps, reason = "the service's result, whose error never occurs")]
fn answer(answer: Result<Response, crate::error::Error>) -> Result<Response, Infallible> {
    Ok(answer.into_response())
}
