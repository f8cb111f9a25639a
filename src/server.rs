//! The served application: the gateway's routes plus the demo page, and the accept loop.
//!
//! `main` and the tests serve the same [`app`] through the same [`run`], so a test that binds
//! 127.0.0.1:0 exercises exactly what the binary serves.

use std::future::Future;
use std::io;
use std::path::Path;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::services::ServeDir;

use crate::gateway::Gateway;

/// The gateway's routes at the root, with the demo page and client served from `static_dir`.
pub fn app(gateway: &Gateway, static_dir: &Path) -> Router {
    gateway.router().fallback_service(ServeDir::new(static_dir))
}

/// Serves `router` on `listener` until `shutdown` completes, then shuts the gateway down (every
/// transport ends, telling clients to resume) and waits for connections to finish.
pub async fn run(
    listener: TcpListener,
    router: Router,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Replies are small and latency matters more than packet count.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "could not set TCP_NODELAY");
        }
    });
    let token = gateway.shutdown_token().clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = token.cancelled() => {}
            }
            gateway.shutdown();
        })
        .await
}
