//! Forwarding to an application over HTTP: the gateway holds the connections, the app keeps the
//! logic (the shape of Pushpin, or Centrifugo's proxy mode).
//!
//! * Every client event no built-in handler claims is POSTed to the app as
//!   `{"v":1,"type":"event","sid":..,"event":..,"data":..}` (plus `"subject"`, who the client is,
//!   when the gateway authenticates sessions); the app answers with a list of
//!   [`Action`]s (emit to this session, another session, a room or everyone; join or leave a
//!   room), which the gateway applies through the hub.
//! * Optional lifecycle hooks: `open` when a session is created (a non-2xx answer refuses the
//!   session) and `expire` when one runs out its grace period.
//!
//! Why it is shaped so:
//!
//! * **Per-session order.** The events of one session reach the app one at a time, in the order
//!   they arrived, and the actions answering one are applied before the next is sent: each
//!   session with events in flight has a queue and one worker task draining it (the gateway
//!   hands events over in arrival order, whichever transport they came by). Forwarding only
//!   queues, so a transport keeps reading and writing while the app thinks. Different sessions
//!   are forwarded concurrently.
//! * **Bounded.** At most [`UpstreamConfig::max_per_session`] events of one session are queued or
//!   in flight, and at most [`UpstreamConfig::max_in_flight`] requests are in flight in all. A
//!   full queue holds the client back (its transport stops reading) and a request waits for its
//!   turn, each up to the upstream timeout; past that the event is refused, visibly (`busy`).
//! * **Failures are never silent.** App down, timeout, non-2xx, malformed answer, or a full
//!   queue: the client gets an `error` event naming the event that failed and why, a log line
//!   says the details, and a counter counts it ([`Upstream::stats`], and the Prometheus counter
//!   `switchyard_upstream_requests_total{outcome}`). Only a request that never reached the app
//!   (connection refused) is retried, once: anything else may have had effects.
//! * **All or nothing.** An answer is parsed and checked whole before any action is applied, so a
//!   malformed answer changes nothing.
//! * **Owned by the gateway.** [`Upstream::install`] hands the upstream the gateway's
//!   [`Tasks`]: the per-session workers and the expire hooks are the gateway's tasks, stopped at
//!   its shutdown (a request in flight is abandoned; events still queued are not sent) and
//!   awaited by [`Gateway::drained`](crate::Gateway::drained).
//!
//! Where each part lives:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Upstream`] handle, its settings ([`UpstreamConfig`]), and [`Upstream::install`] |
//! | `schema.rs` | what the app receives (the `event`, `open` and `expire` requests) and may answer ([`Action`]s, [`parse_answer`], [`Upstream::apply`]) |
//! | `queue.rs` | the per-session queues and their workers: order, backpressure, `busy` ([`Upstream::forward`]) |
//! | `client.rs` | the HTTP client: timeouts, the in-flight limit, the one retry, [`Failure`]s and [`UpstreamStats`] |
//! | `hooks.rs` | the `open` hook (fails closed) and the `expire` hook |

mod client;
mod hooks;
mod queue;
mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::handler::{Registry, Reply};
use crate::protocol::Sid;
use crate::tasks::Tasks;

pub use client::{Failure, UpstreamStats};
pub use schema::{parse_answer, Action, SCHEMA_VERSION};

use client::Counters;
use queue::Queue;

/// Where and how to reach the application.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Where client events are POSTed; `None` leaves events to built-in handlers.
    pub events: Option<String>,
    /// Where `open` hooks are POSTed, if anywhere.
    pub on_open: Option<String>,
    /// Where `expire` hooks are POSTed, if anywhere.
    pub on_expire: Option<String>,
    /// Longest wait for a TCP connection to the app.
    pub connect_timeout: Duration,
    /// Longest wait for a whole answer (connect included).
    pub timeout: Duration,
    /// Most requests in flight to the app, over all sessions.
    pub max_in_flight: usize,
    /// Most events of one session waiting for, or in flight to, the app.
    pub max_per_session: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            events: None,
            on_open: None,
            on_expire: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
            max_per_session: 32,
        }
    }
}

/// The upstream client: cheap to clone, one connection pool for every session.
///
/// Installed in a gateway ([`Upstream::install`]), it forwards the events no built-in handler
/// claims to the application and applies the [`Action`]s it answers with, and runs the `open`
/// and `expire` hooks the configuration names.
///
/// ```
/// use std::time::Duration;
/// use switchyard::upstream::{Upstream, UpstreamConfig};
/// use switchyard::{Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = Upstream::new(UpstreamConfig {
///     events: Some("http://127.0.0.1:5000/events".to_owned()),
///     on_open: Some("http://127.0.0.1:5000/open".to_owned()),
///     timeout: Duration::from_secs(5),
///     ..UpstreamConfig::default()
/// });
/// // Built-in handlers first; every other event goes to the application.
/// let builder = Gateway::builder(Config::default()).on("ping", |ctx, _| async move {
///     let _ = ctx.emit("pong", ()).await;
/// });
/// let gateway = upstream.install(builder).build();
/// assert_eq!(upstream.stats().failures(), 0);
/// # drop(gateway);
/// # }
/// ```
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    config: UpstreamConfig,
    client: reqwest::Client,
    /// Permits for requests in flight over all sessions; held for the length of one request.
    in_flight: Semaphore,
    /// Per-session queues of events bound for the app. An entry lives while an event of its
    /// session is queued or in flight, and is removed by its worker when the queue runs empty.
    queues: Mutex<HashMap<Sid, Queue>>,
    counters: Counters,
    /// The tasks of the gateway the upstream is installed in, where its workers run; set by
    /// [`Upstream::install`]. An upstream used without one runs them on tasks of its own that
    /// nothing stops.
    tasks: OnceLock<Tasks>,
}

impl Upstream {
    /// An upstream client for the application `config` names; nothing is sent until it is
    /// installed in a gateway ([`Upstream::install`]) or asked to forward.
    pub fn new(config: UpstreamConfig) -> Upstream {
        let client = client::http_client(&config);
        Upstream {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                config,
                client,
                queues: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                tasks: OnceLock::new(),
            }),
        }
    }

    /// The settings the upstream was made with.
    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    /// Registers what the configuration asks for on a gateway builder (a [`Registry`]): the
    /// fallback that forwards unclaimed events, the open hook and the expire hook; and makes the
    /// upstream's workers tasks of that gateway. An upstream is installed in one gateway.
    ///
    /// # Panics
    ///
    /// If the upstream is already installed in a gateway, or has already forwarded an event.
    pub fn install<R: Registry>(&self, mut builder: R) -> R {
        assert!(self.inner.tasks.set(builder.tasks()).is_ok(), "an Upstream is installed in one gateway, before it forwards");
        if self.inner.config.events.is_some() {
            let upstream = self.clone();
            builder = builder.fallback(move |ctx, data| {
                let upstream = upstream.clone();
                async move {
                    upstream.forward(ctx.hub(), ctx.sid(), ctx.subject(), ctx.event(), data, ctx.ack()).await;
                    // The application's answer (or the failure) answers the request, later.
                    Reply::Later
                }
            });
        }
        if self.inner.config.on_open.is_some() {
            let upstream = self.clone();
            builder = builder.on_open(move |opening| {
                let upstream = upstream.clone();
                async move { upstream.open(opening).await }
            });
        }
        if self.inner.config.on_expire.is_some() {
            // The gateway runs expire hooks as its tasks, a bounded number at once (see
            // `GatewayBuilder::on_expire`), so a slow app holds back neither the next expiry
            // nor memory.
            let upstream = self.clone();
            builder = builder.on_expire(move |hub, gone| {
                let upstream = upstream.clone();
                async move { upstream.expire(&hub, gone).await }
            });
        }
        builder
    }

    /// Where the workers run: the gateway's tasks once installed.
    fn tasks(&self) -> &Tasks {
        self.inner.tasks.get_or_init(Tasks::new)
    }
}
