//! The session hub: the only place a session is created, found, fed or removed.
//!
//! Every transport (WebSocket, SSE, long-polling) and the app reach sessions through the
//! [`Hub`] handle and nothing else:
//!
//! * [`Hub::attach`] gives a transport an [`Attachment`]: the session's outgoing events, starting
//!   with a `session` hello, then a replay of everything after the client's cursor, then live
//!   events. Attaching detaches whatever transport held the session before (newest wins).
//!   [`Hub::attach_with`] takes a gate it asks only when the attach would create a session, so
//!   a caller can refuse new sessions (the gateway's per-address limit) before one exists.
//! * [`Hub::emit`] appends an event to a session and wakes its attachment, if any.
//! * Dropping an [`Attachment`] detaches it; the session then lives for the grace period, and the
//!   expiry task ([`Hub::spawn_expiry`]) removes it when that runs out.
//!
//! Why it is shaped so:
//!
//! * **The buffer is the queue.** Each session keeps its most recent events in one bounded ring,
//!   whether or not a transport wrote them, because the server cannot know what a dropped client
//!   really received. An attachment does not have its own queue: it keeps a position in that ring
//!   and copies out what lies after it when woken. So a slow or stalled reader costs nothing but
//!   its position; when the ring moves past that position the reader gets an explicit `gap`
//!   notice instead of the lost events, never silence.
//! * **No global lock on the per-event path.** The session table is split into shards, each
//!   behind its own `RwLock` taken only briefly (read for lookups); each session has its own
//!   `Mutex`, held for a few pointer copies and never across an `.await` or a socket write.
//!   The one walk over every session, the expiry task's once-a-second sweep, goes a shard at a
//!   time and lets other tasks run in between, so no round trip waits for the whole table.
//! * **One interface, two homes for the truth.** The interface speaks only in sids, cursors,
//!   [`Envelope`](crate::protocol::Envelope)-like values and async calls. Built with a
//!   [`Cluster`] ([`Hub::clustered`], `--redis`), the hub keeps sessions in Redis and its table
//!   becomes this node's mirror of the sessions it serves, so any node serves any request of any
//!   session; transports, the app, upstream forwarding and the publish API do not know which
//!   runs (see `cluster/mod.rs`).
//!
//! Where each part lives:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Hub`] handle, its settings ([`HubConfig`]) and errors ([`HubError`]) |
//! | `table.rs` | the sharded session table: create, find, remove; the session limit |
//! | `session.rs` | one session's state (event ring, numbers sent and received, inbox, send budget) and the emit path into it |
//! | `ring.rs` | the event ring: the bodies of a session's recent events, numbered implicitly, grown no further than the buffer |
//! | `attachment.rs` | [`Hub::attach`] and the [`Attachment`]: newest wins, hellos and gaps, wake-ups |
//! | `rooms.rs` | rooms and broadcasts ([`Target`]) |
//! | `expiry.rs` | the grace period, slow readers, shutdown, and the task that runs them |
//! | `event.rs` | [`Event`], [`Rendered`], and the rules every emit follows |
//! | `acks.rs` | acknowledgements: answering a client's request ([`Hub::answer`]), and a request that waits for the client's answer ([`Hub::emit_with_ack`]) |
//! | `history.rs` | the transport changes clients report, and each session's recent attaches and detaches ([`Hub::history`]) |
//! | `counters.rs` | the metrics recorded on every attach and detach |
//! | `mirror.rs` | cluster mode, the hub's side: the table as this node's mirror of the sessions it serves |
//! | `lease.rs` | cluster mode: a session's inbox kept by the node that handled its last client event, handed over when another node asks |
//! | `cluster/` | cluster mode, the Redis side: the connection and one method per session operation (`mod.rs`), the Lua scripts and key layout (`scripts.rs`), the commands to a standalone Redis sent in batches (`batch.rs`), the emits' own connection to it (`link.rs`), the node's subscription, heartbeat, lease renewals, cluster-wide expiry and shutdown (`node.rs`), the nodes' addresses (`peers.rs`) |
//!
//! The hub imports nothing of the crate but [`protocol`](crate::protocol): it sits at the bottom,
//! under the transports, the app, upstream forwarding and the gateway, which all reach sessions
//! through it. (It records metrics with the `metrics` crate directly; which recorder receives
//! them is the application's business.)

mod acks;
mod attachment;
mod cluster;
mod counters;
mod event;
mod expiry;
mod history;
mod lease;
mod mirror;
mod ring;
mod rooms;
mod session;
mod table;

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use acks::{AckError, ACK_EVENT};
pub use attachment::{AttachRequest, Attachment, CloseReason, GapReason};
pub use cluster::Cluster;
pub use event::{render_data, validate_event_name, Event, Rendered};
pub use expiry::{Expired, POLL_GAP};
pub use history::{ChangeReason, HistoryEntry, HistoryKind, SessionHistory, TransportChange};
pub use rooms::{check_room_name, Target, MAX_ROOM_NAME};
pub use session::{Inbox, SessionHandle};

use rooms::RoomTable;
use table::Shard;

/// Settings the hub needs; the rest of the configuration belongs to the transports.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a session outlives its last transport.
    pub grace: Duration,
    /// How many recent events each session keeps for replay.
    pub buffer: usize,
    /// How old an event may get and still be kept for replay; `None`: as old as it likes (the
    /// count bound alone). Events are dropped between this age and a sixteenth more (see
    /// `ring.rs`); a resume from a cursor before them gets a `gap` (`overflow`), as when the
    /// count bound dropped them.
    pub buffer_age: Option<Duration>,
    /// Most live sessions; attaching beyond it is refused ([`HubError::Full`]).
    pub max_sessions: usize,
    /// How long an attached transport may leave ready events unread before it is detached as a
    /// slow consumer.
    pub slow_client_timeout: Duration,
    /// Sustained rate of client sends (POST requests) per session, per second; [`Hub::admit`].
    pub send_rate: u32,
    /// How many sends a session may make in a burst above `send_rate`.
    pub send_burst: u32,
    /// The largest client message (POST body or WebSocket message) in bytes, and the most
    /// envelopes in one batch: the transports enforce them; the hub only tells clients, in
    /// every `session` hello (`max_body`, `max_batch`), so they can size their batches.
    pub max_body: usize,
    /// See `max_body`.
    pub max_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            grace: Duration::from_secs(30),
            buffer: 1024,
            buffer_age: None,
            max_sessions: 100_000,
            slow_client_timeout: Duration::from_secs(30),
            send_rate: 200,
            send_burst: 400,
            max_body: 64 * 1024,
            max_batch: crate::protocol::Limits::default().max_batch,
        }
    }
}

/// The kinds of transport a client can hold a session with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`: both directions over one WebSocket.
    WebSocket,
    /// `GET /sse`: a Server-Sent Events stream, with sends POSTed beside it.
    Sse,
    /// `GET /poll`: long-polling, with sends POSTed beside it.
    Polling,
}

impl Transport {
    /// Every transport, in the order of [`Transport::index`].
    pub(crate) const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::Polling];

    /// The transport's place in [`Transport::ALL`], for tables indexed by transport.
    pub(crate) fn index(self) -> usize {
        match self {
            Transport::WebSocket => 0,
            Transport::Sse => 1,
            Transport::Polling => 2,
        }
    }

    /// The transport named `name` on the wire (`"websocket"`, `"sse"`, `"polling"`).
    pub fn from_name(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The transport's name on the wire (the hello's `transport`) and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Polling => "polling",
        }
    }
}

/// Errors the hub reports to its callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The sid names no live session (it expired, was removed, or never existed).
    #[error("unknown or expired session")]
    NoSession,
    /// Creating a session would pass [`HubConfig::max_sessions`].
    #[error("too many sessions")]
    Full,
    /// The session's send budget is spent ([`Hub::admit`]).
    #[error("too many sends for this session; slow down")]
    RateLimited,
    /// An event name the hub refuses, and why.
    #[error("invalid event name: {0}")]
    EventName(&'static str),
    /// A room name the hub refuses, and why.
    #[error("invalid room name: {0}")]
    RoomName(&'static str),
    /// Cluster mode: Redis cannot be reached (or did not answer in time); try again shortly.
    #[error("the session store (Redis) is unreachable; try again shortly")]
    Unavailable,
    /// An ack number out of range (1 to 2^53 - 1).
    #[error("an ack number must be from 1 to 2^53 - 1")]
    AckNumber,
}

/// What [`Hub::info`] tells about a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The transport holding the session, if one does.
    pub transport: Option<Transport>,
    /// Number of the last event emitted to it.
    pub last_seq: u64,
    /// How many events its buffer holds.
    pub buffered: usize,
    /// How long it has been without a transport.
    pub detached_for: Option<Duration>,
    /// When the transport holding the session attached, if one does.
    pub attached_since: Option<SystemTime>,
    /// The rooms the session is a member of, sorted.
    pub rooms: Vec<String>,
}

/// The cheap, cloneable handle to the session table: every session is reached through it.
///
/// Emitting appends to a session's buffer and wakes its transport, whichever it is, and
/// whether or not one is attached right now: a session between transports gets the event on
/// resume. A gateway's hub is [`Gateway::hub`](crate::Gateway::hub); handlers reach it as
/// [`Context::hub`](crate::Context::hub).
///
/// ```
/// use serde_json::json;
/// use switchyard::hub::{Hub, HubConfig, HubError};
/// use switchyard::{Target, Transport};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), HubError> {
/// let hub = Hub::new(HubConfig::default(), CancellationToken::new());
/// // Two clients attach (a transport does this for each request or socket).
/// let mut alice = hub.attach(Transport::WebSocket, None, None).await?;
/// let mut bob = hub.attach(Transport::Sse, None, None).await?;
/// let (a, b) = (alice.sid().clone(), bob.sid().clone());
///
/// // To one session; the cursor names the event, for a client to resume after it.
/// let cursor = hub.emit(&a, "welcome", &json!({ "n": 1 })).await?;
/// assert_eq!(cursor.seq, 1);
///
/// // Rooms: membership belongs to the session and survives switching transports.
/// hub.join(&a, "lobby").await?;
/// hub.join(&b, "lobby").await?;
/// let reached = hub.publish(&Target::Room("lobby".into()), "chat", &json!("hello")).await?;
/// assert_eq!(reached, 2);
/// hub.publish_except(&Target::Room("lobby".into()), Some(&a), "chat", &json!("not to a")).await?;
/// hub.emit_all("news", &json!(null)).await?;
/// assert_eq!(hub.members("lobby").await.len(), 2);
///
/// // What bob's transport writes: the `session` hello, then his events in order.
/// let names: Vec<String> = std::iter::from_fn(|| bob.try_recv().ok().flatten()).map(|e| e.name().to_owned()).collect();
/// assert_eq!(names, ["session", "chat", "chat", "news"]);
/// # let _ = alice.try_recv();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    /// The session table (see `table.rs`).
    shards: Box<[Shard]>,
    /// Keyed hasher of the room table: room names are chosen by clients.
    hasher: RandomState,
    /// Source of attachment ids; an attachment compares its id with the session's to learn
    /// whether it has been superseded.
    next_attachment: AtomicU64,
    /// Number of sessions in the table, kept beside it so the cap check takes no shard lock.
    live: AtomicUsize,
    /// Cancelled when the server shuts down. The expiry task watches it: it sets `closing` and
    /// wakes every attachment, which then says goodbye ([`CloseReason::Shutdown`]).
    shutdown: CancellationToken,
    /// Set once the shutdown token is cancelled. Attachments read this flag rather than the token,
    /// whose every check takes a lock: it is read on each event.
    closing: AtomicBool,
    /// Room name -> members, sharded like the session table (see `rooms.rs`).
    rooms: Box<[RwLock<RoomTable>]>,
    /// Senders of [`Hub::watch_expired`]: each is told of every session the expiry task
    /// removes. A sender whose receiver is gone is dropped at the next expiry.
    expired_txs: Mutex<Vec<mpsc::UnboundedSender<Expired>>>,
    /// When the hub was made: tick 0 of the age bound ([`Hub::age_tick`]).
    epoch: tokio::time::Instant,
    /// Cluster mode: Redis holds the sessions, and the table is this node's mirror of those it
    /// serves (see `cluster/mod.rs` and `mirror.rs`). `None`: the table is the truth.
    cluster: Option<Cluster>,
    /// This hub's share of `switchyard_sessions_by_transport`, as the expiry task last counted
    /// it; taken back out of the gauge when the hub goes.
    by_transport: Mutex<[usize; 4]>,
    /// The requests of [`Hub::emit_with_ack`] waiting for the client's answer (see `acks.rs`).
    acks: acks::Pending,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let last = *self.by_transport.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters::sessions_by_transport(last, [0; 4]);
    }
}

impl Hub {
    /// An empty hub. `shutdown` ends it: once cancelled, its expiry task tells every attachment
    /// to say goodbye. Nothing runs until that task does ([`Hub::expiry_task`]); a gateway
    /// makes its own hub and runs it.
    ///
    /// # Panics
    ///
    /// If `config.buffer` is 0: a session keeps at least its newest event.
    pub fn new(config: HubConfig, shutdown: CancellationToken) -> Hub {
        Hub::build(config, shutdown, None)
    }

    /// A hub in cluster mode: sessions live in the Redis behind `cluster`, shared with every
    /// other node connected to it, and any node may serve any request of any session.
    ///
    /// # Panics
    ///
    /// If `config.buffer` is 0.
    pub fn clustered(config: HubConfig, shutdown: CancellationToken, cluster: Cluster) -> Hub {
        Hub::build(config, shutdown, Some(cluster))
    }

    fn build(config: HubConfig, shutdown: CancellationToken, cluster: Option<Cluster>) -> Hub {
        assert!(config.buffer > 0, "the session buffer must hold at least one event");
        Hub {
            inner: Arc::new(Inner {
                config,
                shards: table::shards(),
                hasher: RandomState::new(),
                next_attachment: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                shutdown,
                closing: AtomicBool::new(false),
                rooms: (0..table::SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                expired_txs: Mutex::new(Vec::new()),
                epoch: tokio::time::Instant::now(),
                cluster,
                by_transport: Mutex::new([0; 4]),
                acks: acks::Pending::default(),
            }),
        }
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The Redis connection of cluster mode, if the hub runs in it.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// Completes once the server is shutting down (the token the hub was made with is
    /// cancelled): for a request that waits on something other than an attachment of this hub.
    pub async fn shutting_down(&self) {
        self.inner.shutdown.cancelled().await;
    }

    /// With an age bound, the tick of the age bound `now` falls in (ticks of a sixteenth of the
    /// age since the hub was made, see `ring.rs`); `None` without one.
    #[inline]
    fn age_tick(&self, now: tokio::time::Instant) -> Option<u32> {
        let age = self.inner.config.buffer_age.filter(|age| !age.is_zero())?;
        let tick = (age / ring::AGE_TICKS).as_nanos().max(1);
        Some(u32::try_from(now.saturating_duration_since(self.inner.epoch).as_nanos() / tick).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod testing {
    //! What the tests of every part share: a hub, and the next event of an attachment.

    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{Attachment, Hub, HubConfig};

    pub(super) fn hub(buffer: usize) -> Hub {
        Hub::new(HubConfig { buffer, ..HubConfig::default() }, CancellationToken::new())
    }

    pub(super) async fn next(attachment: &mut Attachment) -> (String, u64, bool, String) {
        let event = tokio::time::timeout(Duration::from_secs(1), attachment.recv()).await.expect("an event").expect("attached");
        (event.name().to_owned(), event.seq, event.notice, event.data().to_owned())
    }

    /// Waits, at most a second, until `condition` holds.
    pub(super) async fn wait_for(mut condition: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(1), async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the condition to hold");
    }
}
