//! The service hyper calls for each request of a connection: the peer's address put on the
//! request, then the gateway's `/socket.io/` endpoint or the router.
//!
//! Every request to the router carries `ConnectInfo<SocketAddr>`, as under axum's
//! `into_make_service_with_connect_info`: a cheap insert per request rather than a
//! `Router::layer` per connection, which would wrap every route again each time. The Engine.IO
//! endpoint is given the address to put on the requests that read it.
//!
//! Engine.IO requests (`GET`/`POST /socket.io/` that the origin layer would pass untouched; see
//! `transport/socketio/direct.rs`) go to the gateway's endpoint directly, without the router's
//! matching: two such requests make a long-polling round trip, and the router was a tenth of
//! each. Only when the gateway says its router is at the root (`socket_io_at_root`): a gateway
//! nested under a prefix, or behind layers that must see every request, has the route through
//! the router alone.
//!
//! A hyper `Service` of its own rather than a tower service behind `TowerToHyperService`, which
//! clones the service and runs a `Oneshot` for every request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use futures_util::future::Either;
use hyper::body::Incoming;
use tower::Service as _;

use crate::gateway::Gateway;
use crate::transport::socketio::EngineIo;

/// One connection's service.
#[derive(Clone)]
pub struct Routes {
    router: Router,
    engine_io: Option<EngineIo<Gateway>>,
    peer: SocketAddr,
}

impl Routes {
    /// `router` and, if the gateway's router is at the root, `engine_io` for the connection
    /// from `peer`.
    pub fn new(router: Router, engine_io: Option<EngineIo<Gateway>>, peer: SocketAddr) -> Routes {
        Routes { router, engine_io, peer }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<axum::http::Request<Incoming>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<axum::routing::future::RouteFuture<Infallible>, Answer>;

    fn call(&self, mut request: axum::http::Request<Incoming>) -> Self::Future {
        if let Some(engine_io) = self.engine_io.as_ref().filter(|engine_io| engine_io.takes(&request)) {
            // The endpoint puts the address on the requests that open a session, the only
            // ones that read it: an extension map per poll and post is some 400 instructions.
            return Either::Right(engine_io.serve(request, self.peer));
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready (axum's `Service` impl says so), and cloning it is a
        // reference count.
        Either::Left(self.router.clone().call(request))
    }
}
