//! The served application and its accept loop.
//!
//! `main` and the tests serve the same [`app`] through the same [`run`], so a test that binds
//! 127.0.0.1:0 exercises exactly what the binary serves.
//!
//! The accept loop is hyper-util's connection builder rather than `axum::serve`, for three things
//! a gateway on the open internet needs and `axum::serve` does not offer:
//!
//! * a **header read timeout**, so a client that opens a connection and sends headers slowly,
//!   or nothing at all (slowloris), is dropped instead of holding a file descriptor forever
//!   (timed with one timer per connection, `server/head_timer.rs`);
//! * a clean answer when the process runs out of **file descriptors**: one descriptor is kept in
//!   reserve, and on `EMFILE` it is released to accept the waiting connection, answer `503` with
//!   `Retry-After`, close it and take the reserve back, so the accept loop neither spins nor
//!   leaves clients hanging;
//! * a **drain** on shutdown that covers upgraded WebSockets as well as HTTP connections;
//! * **lean SSE connections**: a connection whose first request opens an event stream is
//!   served by `server/event_stream.rs` without hyper's two 8 KiB connection buffers.
//!
//! [`run_tls`] is the same loop with a TLS handshake in front of each connection and HTTP/2
//! beside HTTP/1.1 (`server/https.rs`); its certificates come from `server/tls.rs`. The limits,
//! descriptor reserve, origin checks, metrics and drain are this module's and the router's, so
//! they hold on both listeners alike.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

use crate::gateway::Gateway;
use crate::transport::socketio::EngineIo;

mod event_stream;
mod head_timer;
mod https;
mod service;
pub mod tls;

pub use https::{H2_MAX_HEADER_LIST, H2_MAX_LOCAL_RESETS, H2_MAX_PENDING_RESETS};

/// Pending connections the kernel may queue before `accept`. `TcpListener::bind` asks for 128,
/// and a burst of clients (a reconnect storm after a restart, the benchmark opening sessions 256
/// at a time) overflows that: each dropped SYN costs its client a one-second retry.
const BACKLOG: u32 = 4096;

/// Binds a listener with a backlog fit for bursts of connections (see `BACKLOG`).
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The gateway's routes at the root, with the demo page and client served from `static_dir`.
pub fn app(gateway: &Gateway, static_dir: &Path) -> Router {
    gateway.router().fallback_service(ServeDir::new(static_dir))
}

/// Serves `router` on `listener` until `shutdown` completes (or the gateway is shut down), then
/// stops accepting, shuts the gateway down (every client is told to reconnect and its transport
/// closed) and waits for connections to finish. Returns once they have.
///
/// Every request `router` sees carries `axum::extract::ConnectInfo<SocketAddr>`, the peer's
/// address, in its extensions: the per-address limit on new sessions reads it, and so may the
/// app's handlers.
///
/// With [`GatewayBuilder::socket_io_at_root`](crate::GatewayBuilder::socket_io_at_root),
/// `GET` and `POST /socket.io/` (Socket.IO clients), when not from a foreign origin, are
/// answered by `gateway`'s Socket.IO endpoint ahead of `router`, as the route of
/// [`Gateway::router`] at the root would answer them, without the router's matching (see
/// docs/design.md); layers added to `router` do not see those requests. Without it, every
/// request goes through `router`.
///
/// ```no_run
/// use switchyard::{server, Config, Gateway};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let gateway = Gateway::builder(Config::default())
///         .on("message", |ctx, data| async move {
///             let _ = ctx.emit("response", data).await;
///         })
///         .build();
///     let listener = server::bind("127.0.0.1:3000".parse().unwrap())?;
///     let ctrl_c = async {
///         let _ = tokio::signal::ctrl_c().await;
///     };
///     // Returns once Ctrl-C came and the clients were told to reconnect and have left.
///     server::run(listener, gateway.router(), gateway, ctrl_c).await
/// }
/// ```
pub async fn run(
    listener: TcpListener,
    router: Router,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve(listener, router, gateway, None, shutdown).await
}

/// [`run`] over TLS: each connection's handshake with `tls` (see [`tls::Certificates`]), then
/// HTTP/2 or HTTP/1.1 as the client chose in ALPN. Everything else is as in [`run`].
pub async fn run_tls(
    listener: TcpListener,
    router: Router,
    gateway: Gateway,
    tls: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let https = std::sync::Arc::new(https::Https::new(tls, &gateway));
    serve(listener, router, gateway, Some(https), shutdown).await
}

async fn serve(
    listener: TcpListener,
    router: Router,
    gateway: Gateway,
    https: Option<std::sync::Arc<https::Https>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let serving = Serving::new(router, &gateway);
    let connections = TaskTracker::new();
    let mut reserve = Reserve::take(https.is_none());
    tokio::pin!(shutdown);
    while let Some((tcp, peer)) = accept(&listener, shutdown.as_mut(), &serving.token, &mut reserve).await {
        // Two tasks of their own types: a plain connection's task keeps its own (small) size.
        match &https {
            None => connections.spawn(serving.clone().connection(tcp, peer)),
            Some(https) => connections.spawn(https.clone().connection(tcp, peer, serving.router.clone(), serving.token.clone())),
        };
    }
    drop(listener);
    drain(&gateway, connections).await;
    Ok(())
}

/// The next connection, with `TCP_NODELAY` set; `None` once `shutdown` completes or `token`
/// is cancelled. Running out of file descriptors is answered (see [`Reserve`]); other accept
/// errors concern one connection and are skipped.
async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    token: &CancellationToken,
    reserve: &mut Reserve,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.as_mut() => return None,
            _ = token.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_out_of_descriptors(&err) => {
                    reserve.refuse_one(listener).await;
                    continue;
                }
                Err(err) => {
                    // Per-connection failures (the peer reset before accept): nothing to do.
                    tracing::debug!(%err, "accept failed");
                    continue;
                }
            },
        };
        // Replies are small and latency matters more than packet count.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
        return Some((tcp, peer));
    }
}

/// Shuts the gateway down and waits, up to its drain time, for `connections` and its sockets.
async fn drain(gateway: &Gateway, connections: TaskTracker) {
    gateway.shutdown();
    // HTTP connections (SSE streams, polls, POSTs) finish their responses; upgraded sockets are
    // not connections hyper still tracks, so the gateway's own task tracker covers them.
    let drain = gateway.config().drain;
    connections.close();
    let drained = async { tokio::join!(connections.wait(), gateway.drained()) };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(?drain, "connections still open after the drain time; leaving them");
    }
}

/// What every connection is served with: cloned into each connection's task.
#[derive(Clone)]
struct Serving {
    router: Router,
    /// The gateway's `/socket.io/`, served ahead of `router` (see `server/service.rs`).
    engine_io: Option<EngineIo<Gateway>>,
    builder: http1::Builder,
    /// The first request's limits, when [`event_stream::first_request`] reads it.
    limits: event_stream::Limits,
    /// The gateway's shutdown token: connections finish their request in flight and close.
    token: CancellationToken,
}

impl Serving {
    fn new(router: Router, gateway: &Gateway) -> Serving {
        // HTTP/1.1 only: browsers speak HTTP/2 only over TLS, which a terminating proxy in
        // front of the gateway handles; and hyper's HTTP/1 server applies the header timeout
        // from the first byte on, where version sniffing would wait unbounded for that byte.
        // The timer is set per connection (`head_timer.rs`).
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(gateway.config().header_timeout)
            .keep_alive(true)
            // A response's head and body copied into one buffer and sent with one `send`, not
            // a `writev` of the two: the kernel's vectored path (the iovec's import and checks,
            // the copy from it) cost some 0.4 µs of a long-polling round trip's two responses
            // more than the copy saves (`perf`, docs/performance.md). Bodies here are small, and a
            // larger one is copied through the connection buffer a piece at a time.
            .writev(false)
            // hyper buffers up to ~400 KiB per connection by default when the peer reads slower
            // than we write; a stuck reader would pin that much. 64 KiB holds many events, still
            // bounds a stuck connection's cost, and caps request headers at a sane size.
            .max_buf_size(CONNECTION_BUFFER);
        let limits = event_stream::Limits {
            header_timeout: gateway.config().header_timeout,
            max_head: CONNECTION_BUFFER,
            write_timeout: gateway.config().slow_client_timeout,
        };
        Serving { router, engine_io: gateway.engine_io(), builder, limits, token: gateway.shutdown_token().clone() }
    }

    /// Serves one connection: its first request here if it opens an event stream, the rest
    /// (or all of it) with hyper.
    ///
    /// An `async` block, not an `async fn`, which would keep room for its arguments twice
    /// (see `server/event_stream.rs`): some 190 bytes more per connection while it is open.
    #[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice")]
    fn connection(self, tcp: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> {
        async move {
            let io = match event_stream::first_request(tcp, peer, &self.router, &self.token, self.limits).await {
                event_stream::Next::Done => return,
                event_stream::Next::Hyper(io) => io,
            };
            let service = service::Routes::new(self.router, self.engine_io, peer);
            let mut builder = self.builder;
            builder.timer(head_timer::HeadTimer::new(self.limits.header_timeout));
            // Boxed so that a connection served by `first_request` alone (an SSE stream) does
            // not carry room for hyper's connection state in its task.
            let mut connection = Box::pin(builder.serve_connection(TokioIo::new(io), service).with_upgrades());
            let result = tokio::select! {
                biased;
                result = connection.as_mut() => result,
                () = cancelled_once(&self.token) => {
                    // Finish the request in flight (an SSE stream ends once the gateway has
                    // said goodbye), then close instead of waiting for another.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "connection ended with an error");
            }
        }
    }
}

/// Most bytes hyper buffers per connection, in either direction.
pub const CONNECTION_BUFFER: usize = 64 * 1024;

/// `EMFILE` (this process) or `ENFILE` (the whole system) from `accept`.
fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(24) | Some(23))
}

/// One file descriptor held back for answering when all others are in use.
struct Reserve {
    file: Option<std::fs::File>,
    /// Whether the refused connection gets a plain-text `503` (the plain listener); over TLS it
    /// is closed at once, since a client in the middle of a handshake reads no plain text.
    answer: bool,
    /// Refusals since the last log line, and when that line was written: one line a second
    /// says what is happening without flooding the log at the worst moment.
    refused: u64,
    logged: Option<tokio::time::Instant>,
}

impl Reserve {
    fn take(answer: bool) -> Reserve {
        Reserve { file: std::fs::File::open("/dev/null").ok(), answer, refused: 0, logged: None }
    }

    /// Accepts one waiting connection with the reserved descriptor, answers 503 (on the plain
    /// listener) and closes it.
    async fn refuse_one(&mut self, listener: &TcpListener) {
        self.refused += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let how = if self.answer { "with 503" } else { "by closing them (TLS)" };
            tracing::warn!(
                refused = self.refused,
                "out of file descriptors: refusing connections {how} (raise the open-file limit or lower --max-sessions)"
            );
            self.refused = 0;
            self.logged = Some(tokio::time::Instant::now());
        }
        if self.file.take().is_some() {
            let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
            if let (Ok(Ok((mut tcp, _))), true) = (accepted, self.answer) {
                // Read the request head first: an HTTP client takes an answer that comes before
                // its request as a protocol error rather than as the 503 it is.
                let _ = tokio::time::timeout(Duration::from_millis(200), read_head(&mut tcp)).await;
                let body = r#"{"error":"the server is out of connections; retry later"}"#;
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(Duration::from_millis(100), tcp.write_all(response.as_bytes())).await;
            }
            self.file = std::fs::File::open("/dev/null").ok();
        }
        if self.file.is_none() {
            // Nothing to answer with: wait for descriptors to come back rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.file = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// Reads until the end of a request head (a blank line), or 8 KiB, or the end of the stream.
async fn read_head(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 8 * 1024 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

/// `token`'s cancellation, for a wait polled at every wake-up of its task: it registers with the
/// token on its first poll only, through a waker that notes it was woken ([`Noted`]), and
/// later polls read that note, a plain load. A `cancelled()` future polled again takes the
/// token's lock to check its waker each time, which an HTTP/1 connection's task paid on every
/// wake-up (some 540 instructions per long-polling round trip, callgrind); reading the token's
/// flag (`is_cancelled`) takes the same lock, some 0.1 µs of a long-polling round trip
/// (`perf`, docs/performance.md). Sound only where the future stays in one task, whose waker
/// does not change: the wake-up the first poll registered is the one the cancellation sends.
async fn cancelled_once(token: &CancellationToken) {
    let mut wait = std::pin::pin!(token.cancelled());
    let mut noted: Option<Arc<Noted>> = None;
    std::future::poll_fn(|cx| {
        if noted.as_ref().is_some_and(|noted| !noted.woken.load(Ordering::Acquire)) {
            return std::task::Poll::Pending;
        }
        let noted = noted.get_or_insert_with(|| Arc::new(Noted { woken: AtomicBool::new(false), task: cx.waker().clone() }));
        noted.woken.store(false, Ordering::Relaxed);
        let waker = std::task::Waker::from(noted.clone());
        wait.as_mut().poll(&mut std::task::Context::from_waker(&waker))
    })
    .await;
}

/// The waker [`cancelled_once`] registers: wakes the connection's task, noting that it did.
struct Noted {
    /// Set by the wake-up; cleared when the wait is polled again.
    woken: AtomicBool,
    /// The connection's task.
    task: std::task::Waker,
}

impl std::task::Wake for Noted {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}
