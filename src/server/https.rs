//! One HTTPS connection: the TLS handshake, then HTTP/2 or HTTP/1.1 as ALPN chose.
//!
//! The accept loop, descriptor reserve and drain are the plain listener's (`server.rs`); what
//! differs is per connection, so it lives here:
//!
//! * the **TLS handshake** must finish within the header timeout, or the connection is dropped
//!   (a client that opens a socket and sends nothing costs a descriptor for that long, no more);
//! * **HTTP/2** (ALPN `h2`) carries every route: SSE streams, POSTs and polls of all of a
//!   browser's tabs multiplex on one connection, and a WebSocket rides it too as an extended
//!   `CONNECT` (RFC 8441; `SETTINGS_ENABLE_CONNECT_PROTOCOL` is on). hyper's HTTP/2 server has no
//!   header read timeout (and hyper's HTTP/1 one starts at the first byte), so until the first
//!   request arrives the header timeout is applied here, on either protocol; after that an idle connection is normal (a browser keeps it for the next request)
//!   and keep-alive pings find a dead peer;
//! * HTTP/2's own abuse cases get explicit limits ([`H2_MAX_HEADER_LIST`], reset limits, send
//!   buffer), and the concurrent-stream limit is `Config::http2_max_streams`;
//! * **HTTP/1.1** over TLS is hyper's, with the plain listener's header timeout and buffer
//!   bound. The lean SSE path of `event_stream.rs` works on a bare TCP socket and is not used
//!   here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::util::MapRequest;

use super::CONNECTION_BUFFER;
use crate::gateway::Gateway;

/// Largest header block (decoded, as HTTP/2 counts it) a request may carry; larger ones are
/// answered `431`. The same bound as an HTTP/1.1 request head.
pub const H2_MAX_HEADER_LIST: u32 = CONNECTION_BUFFER as u32;

/// Streams a client may reset before the server has even looked at them (a "rapid reset"
/// flood, CVE-2023-44487); beyond it the connection is closed with `ENHANCE_YOUR_CALM`.
pub const H2_MAX_PENDING_RESETS: usize = 32;

/// Streams the server may have to reset for a client's protocol errors before it closes the
/// connection (the "made you reset" flood, CVE-2025-8671).
pub const H2_MAX_LOCAL_RESETS: usize = 256;

/// What every HTTPS connection is served with.
pub struct Https {
    acceptor: TlsAcceptor,
    /// For connections that chose HTTP/1.1 (or nothing) in ALPN.
    h1: auto::Builder<TokioExecutor>,
    /// For connections that chose `h2`.
    h2: auto::Builder<TokioExecutor>,
    header_timeout: Duration,
}

impl Https {
    /// The settings of `gateway`'s config over the rustls configuration `tls`.
    pub fn new(tls: Arc<rustls::ServerConfig>, gateway: &Gateway) -> Https {
        let config = gateway.config();
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .keep_alive(true)
            .max_buf_size(CONNECTION_BUFFER);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(config.http2_max_streams)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            // hyper keeps up to 400 KiB per stream for a peer that reads slower than we write;
            // the plain listener's per-connection bound is the right size for a stream too.
            .max_send_buf_size(CONNECTION_BUFFER)
            // Request bodies are at most --max-body; a window that size (at least HTTP/2's
            // default) lets one arrive without waiting for a window update.
            .initial_stream_window_size((config.max_body as u32).max(65_535))
            .keep_alive_interval(config.ws_ping)
            .keep_alive_timeout(config.ws_ping);
        Https { acceptor: TlsAcceptor::from(tls), h1, h2, header_timeout: config.header_timeout }
    }

    /// Serves one connection until it ends or `token` is cancelled (then the requests in
    /// flight finish and it closes).
    pub async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, router: Router, token: CancellationToken) {
        let handshake = tokio::time::timeout(self.header_timeout, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%err, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = token.cancelled() => return,
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let requested = Arc::new(AtomicBool::new(false));
        let seen = requested.clone();
        let with_peer = MapRequest::new(router, move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            seen.store(true, Ordering::Relaxed);
            request
        });
        let service = TowerToHyperService::new(with_peer);
        let builder = if h2 { &self.h2 } else { &self.h1 };
        let mut connection = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(tls), service));
        let first_request = tokio::time::sleep(self.header_timeout);
        tokio::pin!(first_request);
        // Until the first request, this timer is the header timeout: hyper's HTTP/2 server has
        // none, and its HTTP/1 one starts at the first byte, not at the connection's start.
        let mut waiting = true;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = token.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    break connection.await;
                }
                _ = first_request.as_mut(), if waiting => {
                    if !requested.load(Ordering::Relaxed) {
                        // Nothing in flight: drop it (a graceful close would wait for the
                        // client's HTTP/2 preface, which is what never came).
                        tracing::debug!(%peer, "no request within the header timeout");
                        return;
                    }
                    waiting = false;
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, "connection ended with an error");
        }
    }
}
