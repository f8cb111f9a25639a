//! The WebSocket handshake of `/ws`, and the socket it leaves.
//!
//! axum's `WebSocketUpgrade` checks the request (and answers a bad one), but the socket its
//! `on_upgrade` hands over is hyper's `Upgraded` behind `TokioIo`: every read and write goes
//! through a boxed trait object and the `Rewind` of the bytes hyper had read, some 300
//! instructions of each round trip. So [`Handshake`] runs axum's checks, keeps hyper's upgrade
//! future, and answers the handshake itself (`101` with `Sec-WebSocket-Accept` over HTTP/1.1,
//! `200` over HTTP/2, as axum does). Once hyper lets go of the connection, [`serve_upgraded`]
//! takes it back as the socket the plain listener served it on (`TokioIo<Prefixed>`, with
//! hyper's `Upgraded::downcast`) and runs tokio-tungstenite straight on it, with the bytes hyper
//! had read after the request put in front. Any other connection (TLS, HTTP/2's extended
//! `CONNECT`) keeps the `Upgraded` socket, as under axum.

use std::future::Future;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Version};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::prefixed::Prefixed;

/// A checked WebSocket handshake, not yet answered.
pub struct Handshake {
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Key` over HTTP/1.1; none over HTTP/2.
    key: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // axum's extractor takes hyper's upgrade future out of the request: keep a handle first.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let _checked: WebSocketUpgrade = WebSocketUpgrade::from_request_parts(parts, state).await?;
        // It rejects a request without one (`ConnectionNotUpgradable`), so there was one.
        let Some(on_upgrade) = on_upgrade else { unreachable!("axum's extractor accepted a request it cannot upgrade") };
        let key = if parts.version <= Version::HTTP_11 { parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() } else { None };
        Ok(Handshake { on_upgrade, key })
    }
}

/// What runs on the socket once the handshake is done. Generic over the socket's type, so each
/// kind of socket gets its own copy of the loop rather than a match on every read and write.
pub trait OnSocket: Send + 'static {
    fn serve<S>(self, socket: WebSocketStream<S>) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

impl Handshake {
    /// Answers the handshake, and spawns `on_socket` with the socket once hyper has sent the
    /// answer and let go of the connection.
    pub fn accept(self, config: WebSocketConfig, on_socket: impl OnSocket) -> Response {
        let response = match &self.key {
            Some(key) => {
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let mut response = Response::new(axum::body::Body::empty());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Ok(accept) = HeaderValue::from_str(&accept) {
                    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
                }
                response
            }
            // HTTP/2 (RFC 8441): a 2xx with no body accepts the extended CONNECT.
            None => Response::new(axum::body::Body::empty()),
        };
        tokio::spawn(serve_upgraded(self.on_upgrade, config, on_socket));
        response
    }
}

/// Waits for hyper to hand the connection over, then spawns `on_socket` on it (see the module
/// doc).
async fn serve_upgraded(on_upgrade: OnUpgrade, config: WebSocketConfig, on_socket: impl OnSocket) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(%err, "websocket upgrade failed");
            return;
        }
    };
    // The socket is served in a task of its own, sized for its socket type alone: this
    // task, which would hold room for either, ends here. tokio-tungstenite's constructors
    // are `async` but do no I/O, so they are ready at once.
    match upgraded.downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            let read = parts.read_buf.to_vec();
            let socket = WebSocketStream::from_partially_read(parts.io.into_inner(), read, Role::Server, Some(config)).await;
            tokio::spawn(on_socket.serve(socket));
        }
        Err(upgraded) => {
            let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
            tokio::spawn(on_socket.serve(socket));
        }
    }
}
