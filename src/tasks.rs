//! The gateway's background tasks: one owner for all of them.
//!
//! Every task a gateway starts (the hub's expiry task, WebSocket tasks, expire hooks, upstream
//! workers, and whatever a user starts with [`Tasks::spawn`]) lives in one task tracker under one
//! cancellation token, so that shutting the gateway down, or dropping it, stops them all and
//! [`Tasks::drained`] can wait for them. It sits at the bottom, importing nothing of the crate:
//! the gateway creates it, and what plugs into the gateway (an upstream through
//! [`Registry::tasks`](crate::Registry::tasks)) starts its work here without knowing the gateway.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The gateway's background work: one task tracker and the token that stops everything in it.
/// Cheap to clone; holding a clone keeps nothing running (only `Gateway` handles do).
#[derive(Clone)]
pub struct Tasks {
    /// Every task the gateway owns: the hub's expiry task, WebSocket tasks, expire hooks and
    /// their dispatcher, upstream workers, and tasks started with [`Tasks::spawn`]. Closed (and
    /// then waited for) by [`Tasks::drained`], or when the last `Gateway` handle drops.
    pub(crate) tracker: TaskTracker,
    /// The gateway's own token, also held by the hub. Cancelled by
    /// [`Gateway::shutdown`](crate::Gateway::shutdown), by the parent token given to
    /// [`GatewayBuilder::shutdown_token`](crate::GatewayBuilder::shutdown_token), or when the
    /// last `Gateway` handle drops. Every task in `tracker` then ends: those started with [`Tasks::spawn`] are
    /// dropped, the expiry task tells every attachment to say goodbye and stops, and WebSocket
    /// tasks close their sockets once their attachment has said it.
    pub(crate) shutdown: CancellationToken,
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks { tracker: TaskTracker::new(), shutdown: CancellationToken::new() }
    }

    /// Runs `task` as one of the gateway's tasks: [`Gateway::drained`](crate::Gateway::drained)
    /// waits for it, and once the gateway shuts down it is dropped at its next `.await` if it has
    /// not finished.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Whether the gateway has shut down (or was dropped).
    pub fn is_shut_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The gateway's token; see [`Gateway::shutdown_token`](crate::Gateway::shutdown_token).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// How many of the gateway's tasks are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether none of the gateway's tasks is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Completes once the gateway has shut down and every one of its tasks has ended.
    pub async fn drained(&self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}
