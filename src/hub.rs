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
//! * **A seam for many nodes.** The interface speaks only in sids, cursors, [`Envelope`](crate::protocol::Envelope)-like
//!   values and async calls, so a Redis-backed hub (pub/sub for wake-ups, streams for the ring)
//!   can provide the same methods without touching transports or app code.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{check_event_name, Cursor, Sid};

/// Number of shards in the session table; a power of two well above the core count so that
/// session creation on one shard rarely waits for another.
const SHARDS: usize = 64;

/// How many events an attachment copies out of the ring per lock.
const BATCH: usize = 64;

/// Settings the hub needs; the rest of the configuration belongs to the transports.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a session outlives its last transport.
    pub grace: Duration,
    /// How many recent events each session keeps for replay.
    pub buffer: usize,
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
    pub max_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            grace: Duration::from_secs(30),
            buffer: 1024,
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
    WebSocket,
    Sse,
    Polling,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Polling => "polling",
        }
    }
}

/// What a transport asks of [`Hub::attach_with`]: the session and resume point, raw from the
/// request, and what the `session` hello tells about the transport.
#[derive(Debug, Clone, Copy)]
pub struct AttachRequest<'a> {
    pub transport: Transport,
    pub sid: Option<&'a str>,
    pub cursor: Option<&'a str>,
    /// The longest the transport stays silent (keep-alive, poll timeout, WebSocket heartbeat),
    /// told in the hello as `heartbeat` in milliseconds so a client knows when to give up on
    /// it; `None` leaves it out (a WebSocket whose client did not ask for heartbeats).
    pub heartbeat: Option<Duration>,
}

impl<'a> AttachRequest<'a> {
    pub fn new(transport: Transport, sid: Option<&'a str>, cursor: Option<&'a str>) -> AttachRequest<'a> {
        AttachRequest { transport, sid, cursor, heartbeat: None }
    }

    pub fn heartbeat(self, heartbeat: Option<Duration>) -> AttachRequest<'a> {
        AttachRequest { heartbeat, ..self }
    }
}

/// Why an attachment stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another transport attached to the same session; the client holds that one now.
    Superseded,
    /// The server is shutting down; the client should resume, here or elsewhere.
    Shutdown,
    /// The transport left events unread for too long, or the buffer moved past what it had
    /// read; the client should resume (and will get a `gap` notice if events were lost).
    SlowConsumer,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Superseded => "superseded",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow consumer",
        }
    }
}

/// Why an attach could not continue the session the client asked for. The client gets a fresh
/// session and a `gap` notice carrying this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The sid names no live session: it expired, or never existed.
    Expired,
    /// The sid is not of the shape this server hands out.
    InvalidSid,
    /// The cursor is malformed, names another session, or lies beyond what was ever sent.
    BadCursor,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::InvalidSid => "invalid_sid",
            GapReason::BadCursor => "bad_cursor",
        }
    }

    fn message(self) -> &'static str {
        match self {
            GapReason::Expired => "the session expired or never existed; this is a new session",
            GapReason::InvalidSid => "the session id is malformed; this is a new session",
            GapReason::BadCursor => "the cursor does not belong to this session's history; this is a new session",
        }
    }
}

/// Errors the hub reports to its callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("unknown or expired session")]
    NoSession,
    #[error("too many sessions")]
    Full,
    #[error("too many sends for this session; slow down")]
    RateLimited,
    #[error("invalid event name: {0}")]
    EventName(&'static str),
    #[error("invalid room name: {0}")]
    RoomName(&'static str),
}

/// One outgoing event or notice. Its name and JSON data are rendered once into one body,
/// shared by every copy (ring, replay, every member of a room): a copy is one reference
/// count, and the ring holds events by value, so appending one allocates nothing of its own.
#[derive(Debug, Clone)]
pub struct Event {
    /// For events, the event's number (1, 2, ...). For notices, the number of the last event
    /// before it: the notice's cursor is the resume point just after that event.
    pub seq: u64,
    /// Notices (`session`, `gap`) are per transport: never buffered, never replayed.
    pub notice: bool,
    body: Arc<Body>,
}

/// An event's name and its data as JSON text, behind one reference count: each copy of an event
/// made on the per-event path (append, read, write) is then one atomic add, not two.
#[derive(Debug)]
struct Body {
    name: Box<str>,
    data: Box<str>,
}

impl Body {
    /// `data` is JSON text.
    fn shared(name: &str, data: impl Into<Box<str>>) -> Arc<Body> {
        Arc::new(Body { name: name.into(), data: data.into() })
    }
}

impl Event {
    pub fn name(&self) -> &str {
        &self.body.name
    }

    /// The event's data as JSON text.
    pub fn data(&self) -> &str {
        &self.body.data
    }

    pub fn cursor(&self, sid: &Sid) -> Cursor {
        Cursor { sid: sid.clone(), seq: self.seq, notice: self.notice }
    }

    /// An event of `name` with `data` (JSON text), as the hub would hand it out.
    pub(crate) fn new(seq: u64, notice: bool, name: &str, data: &str) -> Event {
        Event { seq, notice, body: Body::shared(name, data) }
    }

    fn notice(seq: u64, name: &str, data: Value) -> Event {
        Event::new(seq, true, name, &data.to_string())
    }
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

/// One slice of the session table.
type Shard = RwLock<HashMap<Sid, Arc<Session>, SidHash>>;

/// Hashing for the session table. A sid is 128 random bits chosen by the server, so its bytes
/// are already uniformly spread and no client can aim collisions at it: folding them is enough,
/// and far cheaper than SipHash on the per-event path. (Room names are client-chosen, so the room
/// table keeps the default, keyed hasher.)
#[derive(Clone, Copy, Default)]
struct SidHash;

impl BuildHasher for SidHash {
    type Hasher = SidHasher;

    fn build_hasher(&self) -> SidHasher {
        SidHasher(0)
    }
}

struct SidHasher(u64);

impl std::hash::Hasher for SidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The cheap, cloneable handle to the session table.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    shards: Box<[Shard]>,
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
    /// Room name -> members, sharded like the session table (see the rooms section).
    rooms: Box<[RwLock<RoomTable>]>,
    /// Senders of [`Hub::watch_expired`]: each is told of every session the expiry task
    /// removes. A sender whose receiver is gone is dropped at the next expiry.
    expired_txs: Mutex<Vec<mpsc::UnboundedSender<Expired>>>,
}

struct Session {
    sid: Sid,
    state: Mutex<State>,
    /// Held while the session's client events are handled, so that they are handled one at a
    /// time in arrival order, whichever transports they came over ([`SessionHandle::inbox`]).
    inbox: tokio::sync::Mutex<()>,
    /// The highest client `seq` handled; told to the client in every `session` hello.
    received: AtomicU64,
    /// How many rooms the session is in, kept beside `State::rooms` (written under the lock)
    /// so that asking a session in no room for its rooms, as the default app does on every
    /// message, takes no lock.
    room_count: AtomicUsize,
}

struct State {
    /// Number of the last event emitted (0: none yet).
    last_seq: u64,
    /// The most recent events, oldest first, at most `HubConfig::buffer` of them. Allocated on
    /// the first emit, not at creation, so idle sessions cost no ring.
    ring: VecDeque<Event>,
    /// The highest event number handed to any attachment: where an attach without a cursor
    /// resumes.
    delivered: u64,
    /// The transport holding the session, if any.
    attached: Option<Attached>,
    /// The kind of the most recent attachment, so a long-poll that follows a long-poll is a
    /// continuation rather than a new transport.
    last_transport: Option<Transport>,
    /// When the session lost its last transport; `None` while attached.
    detached_at: Option<Instant>,
    /// Set, under this lock, when the expiry task removes the session, so that a caller that
    /// found the session just before treats it as gone.
    removed: bool,
    /// When the current (or last) transport attached, for [`Hub::info`].
    attached_since: Option<SystemTime>,
    /// The rooms this session is in; mirrored by the hub's room table (see the rooms section).
    rooms: BTreeSet<Arc<str>>,
    /// Who the client is, when auth is on: the subject of the token that opened the session.
    subject: Option<Arc<str>>,
    /// The last attachment the hub detached on its own, and why; that attachment reports this
    /// reason instead of [`CloseReason::Superseded`].
    evicted: Option<(u64, CloseReason)>,
    /// Token bucket of [`Hub::admit`]: tokens left, and when they were last topped up.
    send_tokens: f64,
    send_refill: Instant,
}

struct Attached {
    id: u64,
    /// Woken on every emit and when the attachment is superseded. The other end is held by the
    /// [`Attachment`] with the same id.
    wake: Arc<Signal>,
    /// Number of the last event the attachment copied out of the ring.
    read_upto: u64,
    /// Since when the expiry task has seen events waiting that the attachment has not read;
    /// `None` until then, and again after every read. The expiry task sets and checks it, once
    /// per tick, so that neither an emit nor a read needs the clock: a reader is detached as slow
    /// after at least `slow_client_timeout` without reading while behind, at most two ticks
    /// (each at most a second) later than that.
    behind_since: Option<Instant>,
}

impl Hub {
    pub fn new(config: HubConfig, shutdown: CancellationToken) -> Hub {
        assert!(config.buffer > 0, "the session buffer must hold at least one event");
        let shards = (0..SHARDS).map(|_| RwLock::new(HashMap::with_hasher(SidHash))).collect();
        Hub {
            inner: Arc::new(Inner {
                config,
                shards,
                hasher: RandomState::new(),
                next_attachment: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                shutdown,
                closing: AtomicBool::new(false),
                rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                expired_txs: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    fn shard(&self, sid: &Sid) -> &Shard {
        let index = (SidHash.hash_one(sid) >> 32) as usize % SHARDS;
        &self.inner.shards[index]
    }

    fn find(&self, sid: &Sid) -> Option<Arc<Session>> {
        self.shard(sid).read().unwrap_or_else(|e| e.into_inner()).get(sid).cloned()
    }

    fn create(&self) -> Result<Arc<Session>, HubError> {
        let max = self.inner.config.max_sessions;
        if self.inner.live.fetch_add(1, Ordering::Relaxed) >= max {
            self.inner.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(max, "session limit reached; refusing a new session");
            return Err(HubError::Full);
        }
        let sid = Sid::random();
        let session = Arc::new(Session {
            sid: sid.clone(),
            inbox: tokio::sync::Mutex::new(()),
            received: AtomicU64::new(0),
            room_count: AtomicUsize::new(0),
            state: Mutex::new(State {
                last_seq: 0,
                ring: VecDeque::new(),
                delivered: 0,
                attached: None,
                last_transport: None,
                // Created for an attach that follows at once: not in a grace period yet.
                detached_at: None,
                removed: false,
                attached_since: None,
                rooms: BTreeSet::new(),
                evicted: None,
                send_tokens: f64::from(self.inner.config.send_burst),
                send_refill: Instant::now(),
                subject: None,
            }),
        });
        self.shard(&sid).write().unwrap_or_else(|e| e.into_inner()).insert(sid, session.clone());
        Ok(session)
    }

    /// Number of live sessions (attached or in their grace period).
    pub fn len(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Takes one send from the session's budget (a token bucket of `send_rate` per second and
    /// `send_burst` deep), or refuses it with [`HubError::RateLimited`].
    pub fn admit(&self, sid: &Sid) -> Result<(), HubError> {
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let mut state = lock(&session.state);
        if state.removed {
            return Err(HubError::NoSession);
        }
        let config = &self.inner.config;
        let now = Instant::now();
        let refill = now.duration_since(state.send_refill).as_secs_f64() * f64::from(config.send_rate);
        state.send_tokens = (state.send_tokens + refill).min(f64::from(config.send_burst));
        state.send_refill = now;
        if state.send_tokens < 1.0 {
            return Err(HubError::RateLimited);
        }
        state.send_tokens -= 1.0;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `sid` names a live session. Transports that only send (POST) use this to answer
    /// 404 before running any handler.
    pub async fn contains(&self, sid: &Sid) -> bool {
        self.find(sid).is_some_and(|s| !lock(&s.state).removed)
    }

    /// The live session `sid` names, to hold on to: its [`SessionHandle::inbox`], its rooms.
    pub fn session(&self, sid: &Sid) -> Result<SessionHandle, HubError> {
        self.find(sid).map(|session| SessionHandle { session }).ok_or(HubError::NoSession)
    }

    /// Records who opened the session (the auth subject); handlers see it in their context.
    pub fn set_subject(&self, sid: &Sid, subject: Arc<str>) -> Result<(), HubError> {
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        lock(&session.state).subject = Some(subject);
        Ok(())
    }

    /// Who opened the session, if auth is on.
    pub fn subject(&self, sid: &Sid) -> Option<Arc<str>> {
        let session = self.find(sid)?;
        let subject = lock(&session.state).subject.clone();
        subject
    }

    /// A snapshot of one session, for debugging and tests.
    pub fn info(&self, sid: &Sid) -> Option<SessionInfo> {
        let session = self.find(sid)?;
        let state = lock(&session.state);
        if state.removed {
            return None;
        }
        Some(SessionInfo {
            transport: state.attached.as_ref().and(state.last_transport),
            last_seq: state.last_seq,
            buffered: state.ring.len(),
            detached_for: state.detached_at.map(|t| t.elapsed()),
            attached_since: state.attached.as_ref().and(state.attached_since),
            rooms: state.rooms.iter().map(|r| r.to_string()).collect(),
        })
    }

    /// Appends an event to a session's ring and wakes its transport. Returns the event's cursor.
    pub async fn emit(&self, sid: &Sid, name: &str, data: &Value) -> Result<Cursor, HubError> {
        self.emit_json(sid, name, data.to_string()).await
    }

    /// [`Hub::emit`] with the data already rendered as JSON text (saves a `Value` in between
    /// when the caller serializes its own type). `data` must be valid JSON.
    pub async fn emit_json(&self, sid: &Sid, name: &str, data: String) -> Result<Cursor, HubError> {
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        self.emit_json_to(&SessionHandle { session }, name, data).await
    }

    /// [`Hub::emit_json`] to a session already in hand: no table lookup.
    pub async fn emit_json_to(&self, handle: &SessionHandle, name: &str, data: String) -> Result<Cursor, HubError> {
        validate_event_name(name)?;
        let seq = self.append(&handle.session, Body::shared(name, data)).ok_or(HubError::NoSession)?;
        Ok(Cursor::event(handle.session.sid.clone(), seq))
    }

    /// Emits an event rendered ahead of time to a session already in hand: the event shares the
    /// rendered name and data rather than validating, serializing and allocating its own.
    /// Returns the event's number in the session; the per-event path of a constant reply, so it
    /// leaves building a [`Cursor`] (a count on the sid) to the caller that wants one.
    pub fn emit_rendered_to(&self, handle: &SessionHandle, event: &Rendered) -> Result<u64, HubError> {
        self.append(&handle.session, event.0.clone()).ok_or(HubError::NoSession)
    }

    /// Appends an event to a session's ring and wakes its transport; `None` if the session is
    /// gone. The one write path of every emit, to one session or many (rooms).
    fn append(&self, session: &Session, body: Arc<Body>) -> Option<u64> {
        let mut state = lock(&session.state);
        if state.removed {
            return None;
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        if state.ring.len() == self.inner.config.buffer {
            let dropped = state.ring.pop_front().map_or(0, |e| e.seq);
            // The attached reader has not even copied out the event now lost: it cannot keep up.
            if state.attached.as_ref().is_some_and(|a| a.read_upto < dropped) {
                evict(&mut state, CloseReason::SlowConsumer, &session.sid);
            }
        }
        state.ring.push_back(Event { seq, notice: false, body });
        if let Some(attached) = &state.attached {
            attached.wake.notify();
        }
        Some(seq)
    }

    /// Attaches a transport to a session.
    ///
    /// * No `sid` and no `cursor`: a new session.
    /// * A `sid` (or only a `cursor`, which names its session): that session, resumed after the
    ///   cursor, or, without a cursor, after the last event any transport was handed.
    /// * A sid or cursor that cannot be honoured: a new session whose first events are `session`
    ///   and a `gap` notice saying why.
    ///
    /// `sid` and `cursor` are the raw strings from the request: parsing them is part of the
    /// decision, since a malformed one still gets the client a working session.
    ///
    /// Fails only when a new session is needed and the session limit is reached.
    pub async fn attach(
        &self,
        transport: Transport,
        sid: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Attachment, HubError> {
        self.attach_with(AttachRequest::new(transport, sid, cursor), || Ok(())).await
    }

    /// [`Hub::attach`], with `gate` asked first whenever the attach would create a session (no
    /// sid, or one that cannot be honoured): its error is returned and nothing is created.
    /// Resuming a live session never calls it. The gateway's per-address limit is such a gate;
    /// the hub knows nothing of addresses.
    pub async fn attach_with<E: From<HubError>>(
        &self,
        request: AttachRequest<'_>,
        gate: impl FnOnce() -> Result<(), E>,
    ) -> Result<Attachment, E> {
        let gap = match self.resolve(request.sid, request.cursor) {
            Ok(Some((session, start))) => match self.attach_to(session, &request, Some(start), None) {
                Some(attachment) => return Ok(attachment),
                // The expiry task removed the session between lookup and lock.
                None => Some(GapReason::Expired),
            },
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        gate()?;
        let session = self.create()?;
        Ok(self
            .attach_to(session, &request, None, gap)
            .expect("a session just created is not expired: it is created attached"))
    }

    /// Attaches to a session found (`found` is `Some(start)`) or just created (`None`).
    fn attach_to(
        &self,
        session: Arc<Session>,
        request: &AttachRequest<'_>,
        found: Option<Option<u64>>,
        gap: Option<GapReason>,
    ) -> Option<Attachment> {
        let transport = request.transport;
        let id = self.inner.next_attachment.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Signal::new());
        let mut state = lock(&session.state);
        if state.removed {
            return None;
        }
        let start = found.flatten();
        let position = start.unwrap_or(state.delivered);
        // A poll that resumes from a poll's cursor continues the same transport: no new hello.
        let continuation = transport == Transport::Polling
            && state.last_transport == Some(Transport::Polling)
            && start.is_some();
        let attached = Attached { id, wake: wake.clone(), read_upto: position, behind_since: None };
        if let Some(old) = state.attached.replace(attached) {
            metrics::counter!("switchyard_detaches_total", "reason" => "superseded").increment(1);
            old.wake.notify();
        }
        state.last_transport = Some(transport);
        state.detached_at = None;
        state.attached_since = Some(SystemTime::now());
        drop(state);

        let mut pending = VecDeque::new();
        if !continuation {
            let config = &self.inner.config;
            let mut hello = json!({"sid": session.sid.as_str(), "transport": transport.as_str(), "resumed": found.is_some(),
                                   "received": session.received.load(Ordering::Acquire),
                                   "max_body": config.max_body, "max_batch": config.max_batch});
            if let Some(heartbeat) = request.heartbeat {
                hello["heartbeat"] = json!(u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX));
            }
            pending.push_back(Event::notice(position, "session", hello));
        }
        if let Some(reason) = gap {
            pending.push_back(Event::notice(
                position,
                "gap",
                json!({"reason": reason.as_str(), "message": reason.message()}),
            ));
        }
        tracing::debug!(sid = session.sid.short(), transport = transport.as_str(), position, ?gap, "attached");
        let fresh = found.is_none();
        crate::metrics::transport_attached(transport, fresh, !continuation);
        if let Some(reason) = gap {
            metrics::counter!("switchyard_gaps_total", "reason" => reason.as_str()).increment(1);
        }
        Some(Attachment {
            hub: self.clone(),
            session,
            id,
            wake,
            position,
            seen: 0,
            pending,
            transport,
            fresh,
            said_goodbye: false,
        })
    }

    /// Finds the session and start position an attach asks for. `Ok(None)`: a new session was
    /// asked for. `Err`: the request cannot be honoured and why.
    #[allow(clippy::type_complexity)]
    fn resolve(&self, sid: Option<&str>, cursor: Option<&str>) -> Result<Option<(Arc<Session>, Option<u64>)>, GapReason> {
        let cursor = match cursor {
            None => None,
            Some(raw) => Some(raw.parse::<Cursor>().map_err(|_| GapReason::BadCursor)?),
        };
        let sid = match (sid, &cursor) {
            (Some(raw), _) => raw.parse::<Sid>().map_err(|_| GapReason::InvalidSid)?,
            (None, Some(cursor)) => cursor.sid.clone(),
            (None, None) => return Ok(None),
        };
        let session = self.find(&sid).ok_or(GapReason::Expired)?;
        let Some(cursor) = cursor else {
            return Ok(Some((session, None)));
        };
        let placeable = cursor.sid == sid && cursor.seq <= lock(&session.state).last_seq;
        if !placeable {
            return Err(GapReason::BadCursor);
        }
        Ok(Some((session, Some(cursor.seq))))
    }

    /// Removes every session whose grace period has run out, and detaches readers stalled past
    /// the slow-client timeout. Returns how many sessions were removed.
    pub fn expire(&self, now: Instant) -> usize {
        let removed = self.inner.shards.iter().map(|shard| self.expire_shard(shard, now)).sum();
        metrics::counter!("switchyard_sessions_expired_total").increment(removed as u64);
        removed
    }

    /// [`Hub::expire`] for the expiry task: one shard at a time, letting the runtime run other
    /// tasks between shards. The sweep visits every session, so in one go it would hold the
    /// worker thread for time in proportion to the session count (about 1 ms per 19,000
    /// sessions here, once a second: every round trip in flight meanwhile waited that long);
    /// a shard at a time, a round trip waits at most one shard's share of it.
    async fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.inner.shards.iter() {
            removed += self.expire_shard(shard, now);
            tokio::task::yield_now().await;
        }
        metrics::counter!("switchyard_sessions_expired_total").increment(removed as u64);
        removed
    }

    fn expire_shard(&self, shard: &Shard, now: Instant) -> usize {
        let grace = self.inner.config.grace;
        let slow = self.inner.config.slow_client_timeout;
        let mut gone = Vec::new();
        shard.write().unwrap_or_else(|e| e.into_inner()).retain(|_, session| {
            let mut state = lock(&session.state);
            let last_seq = state.last_seq;
            let stalled = match &mut state.attached {
                Some(attached) if attached.read_upto < last_seq => {
                    let since = *attached.behind_since.get_or_insert(now);
                    now.duration_since(since) >= slow
                }
                Some(attached) => {
                    attached.behind_since = None;
                    false
                }
                None => false,
            };
            if stalled {
                evict(&mut state, CloseReason::SlowConsumer, &session.sid);
            }
            let expired = state.detached_at.is_some_and(|t| now.duration_since(t) >= grace);
            if expired {
                state.removed = true;
                state.ring = VecDeque::new();
                gone.push((session.sid.clone(), std::mem::take(&mut state.rooms)));
                tracing::debug!(sid = session.sid.short(), "session expired");
            }
            !expired
        });
        let removed = gone.len();
        if removed > 0 {
            self.inner.live.fetch_sub(removed, Ordering::Relaxed);
            // Room tables and watchers are touched with no session table lock held.
            self.forget(gone, true);
        }
        removed
    }

    /// Starts the hub's background task: it expires sessions, checking a few times per grace
    /// period, and when the shutdown token is cancelled it tells every attachment to say goodbye
    /// ([`Hub::close_all`]) and stops. A hub without this task never expires nor closes.
    pub fn spawn_expiry(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let period = (self.inner.config.grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = hub.inner.shutdown.cancelled() => {
                        hub.close_all();
                        break;
                    }
                    _ = tick.tick() => {
                        hub.sweep(Instant::now()).await;
                        crate::metrics::sync();
                    }
                }
            }
        })
    }

    /// Shutdown: every attachment hands out what is ready, then a `reconnect` notice, then ends;
    /// attachments made from now on do the same at once.
    pub fn close_all(&self) {
        self.inner.closing.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            for session in shard.read().unwrap_or_else(|e| e.into_inner()).values() {
                if let Some(attached) = &lock(&session.state).attached {
                    attached.wake.notify();
                }
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Rooms
//
// A room is a name and a set of sessions. Membership is kept twice: in each session's state (so
// it goes when the session goes, and `info` shows it) and in the sharded room table (so a
// broadcast finds its members without scanning every session). Both copies change together and
// only here, always taking the session lock first and the room shard second; nothing takes a
// session lock while holding a room shard, so the two cannot deadlock.
//
// A broadcast copies its member list out of the room shard (one pointer clone per member),
// releases the shard, then appends to each member's ring. No lock is held from one member to the
// next, and nothing here writes a socket: an append only wakes the member's attachment, whose
// transport writes in its own task. So a broadcast costs O(members) and one slow reader slows
// no one else. Membership belongs to the session, not to a transport, so it survives switches.
// -------------------------------------------------------------------------------------------

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// Room names travel in URLs and JSON; like event names they are bounded and free of control
/// characters.
pub fn check_room_name(name: &str) -> Result<(), HubError> {
    if name.is_empty() {
        Err(HubError::RoomName("is empty"))
    } else if name.len() > MAX_ROOM_NAME {
        Err(HubError::RoomName("is longer than 128 bytes"))
    } else if name.chars().any(char::is_control) {
        Err(HubError::RoomName("contains control characters"))
    } else {
        Ok(())
    }
}

/// Where a published event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One session.
    Sid(Sid),
    /// Every member of a room.
    Room(String),
    /// Every live session.
    All,
}

/// A session the expiry task removed, as [`Hub::watch_expired`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub sid: Sid,
    /// The rooms it was in when it expired (it is in none now).
    pub rooms: Vec<String>,
}

type RoomTable = HashMap<Arc<str>, HashMap<Sid, Arc<Session>>>;

impl Hub {
    fn room_shard(&self, room: &str) -> &RwLock<RoomTable> {
        let index = self.inner.hasher.hash_one(room) as usize % SHARDS;
        &self.inner.rooms[index]
    }

    /// Adds a session to a room. Returns `false` if it was a member already.
    pub fn join(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        check_room_name(room)?;
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let mut state = lock(&session.state);
        if state.removed {
            return Err(HubError::NoSession);
        }
        let room: Arc<str> = room.into();
        if !state.rooms.insert(room.clone()) {
            return Ok(false);
        }
        session.room_count.store(state.rooms.len(), Ordering::Relaxed);
        let mut table = self.room_shard(&room).write().unwrap_or_else(|e| e.into_inner());
        table.entry(room).or_default().insert(sid.clone(), session.clone());
        Ok(true)
    }

    /// Takes a session out of a room. Returns `false` if it was not a member.
    pub fn leave(&self, sid: &Sid, room: &str) -> Result<bool, HubError> {
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        let mut state = lock(&session.state);
        if state.removed {
            return Err(HubError::NoSession);
        }
        if !state.rooms.remove(room) {
            return Ok(false);
        }
        session.room_count.store(state.rooms.len(), Ordering::Relaxed);
        self.drop_member(sid, room);
        Ok(true)
    }

    /// The sids of a room's members, in no particular order (empty for an unknown room).
    pub fn members(&self, room: &str) -> Vec<Sid> {
        let table = self.room_shard(room).read().unwrap_or_else(|e| e.into_inner());
        table.get(room).map(|members| members.keys().cloned().collect()).unwrap_or_default()
    }

    /// Emits an event to every member of a room. Returns how many sessions it was appended to.
    pub async fn emit_room(&self, room: &str, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(&Target::Room(room.to_owned()), None, name, data).await
    }

    /// Emits an event to every live session. Returns how many sessions it was appended to.
    pub async fn emit_all(&self, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(&Target::All, None, name, data).await
    }

    /// Emits to a [`Target`]. Returns how many sessions the event was appended to; a `Sid`
    /// target that is gone is [`HubError::NoSession`], an empty room is `Ok(0)`.
    pub async fn publish(&self, target: &Target, name: &str, data: &Value) -> Result<usize, HubError> {
        self.publish_except(target, None, name, data).await
    }

    /// [`Hub::publish`] to everyone targeted but `except` (typically the sender of a chat line).
    pub async fn publish_except(&self, target: &Target, except: Option<&Sid>, name: &str, data: &Value) -> Result<usize, HubError> {
        validate_event_name(name)?;
        match target {
            Target::Sid(sid) if Some(sid) == except => Ok(0),
            Target::Sid(sid) => self.emit(sid, name, data).await.map(|_| 1),
            Target::Room(room) => {
                let members: Vec<Arc<Session>> = {
                    let table = self.room_shard(room).read().unwrap_or_else(|e| e.into_inner());
                    table.get(room.as_str()).map(|members| members.values().cloned().collect()).unwrap_or_default()
                };
                Ok(self.fan_out(&members, except, name, data))
            }
            Target::All => {
                let mut count = 0;
                for shard in self.inner.shards.iter() {
                    let sessions: Vec<Arc<Session>> = shard.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
                    count += self.fan_out(&sessions, except, name, data);
                }
                Ok(count)
            }
        }
    }

    /// Removes a session at once, without a grace period and without telling
    /// [`Hub::watch_expired`] (used when an open hook refuses a session that never opened).
    pub fn remove(&self, sid: &Sid) -> bool {
        let Some(session) = self.shard(sid).write().unwrap_or_else(|e| e.into_inner()).remove(sid) else {
            return false;
        };
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        let rooms = {
            let mut state = lock(&session.state);
            state.removed = true;
            state.ring = VecDeque::new();
            if let Some(attached) = state.attached.take() {
                attached.wake.notify();
            }
            std::mem::take(&mut state.rooms)
        };
        self.forget(vec![(sid.clone(), rooms)], false);
        true
    }

    /// A stream of the sessions the expiry task removes, for lifecycle hooks. Each call makes a
    /// new subscriber; dropping the receiver unsubscribes.
    pub fn watch_expired(&self) -> mpsc::UnboundedReceiver<Expired> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.expired_txs.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Takes removed sessions out of the room table and, for expiries, tells the watchers.
    fn forget(&self, gone: Vec<(Sid, BTreeSet<Arc<str>>)>, expired: bool) {
        for (sid, rooms) in &gone {
            for room in rooms {
                self.drop_member(sid, room);
            }
        }
        if expired && !gone.is_empty() {
            let mut txs = self.inner.expired_txs.lock().unwrap_or_else(|e| e.into_inner());
            txs.retain(|tx| {
                gone.iter().all(|(sid, rooms)| {
                    let rooms = rooms.iter().map(|r| r.to_string()).collect();
                    tx.send(Expired { sid: sid.clone(), rooms }).is_ok()
                })
            });
        }
    }

    fn drop_member(&self, sid: &Sid, room: &str) {
        let mut table = self.room_shard(room).write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = table.get_mut(room) {
            members.remove(sid);
            if members.is_empty() {
                table.remove(room);
            }
        }
    }

    /// Appends one event to each session; the data is rendered once.
    fn fan_out(&self, sessions: &[Arc<Session>], except: Option<&Sid>, name: &str, data: &Value) -> usize {
        // Rendered once and shared by every member's ring: a broadcast costs one copy of the
        // data, not one per member.
        let body = Body::shared(name, data.to_string());
        sessions
            .iter()
            .filter(|session| Some(&session.sid) != except)
            .filter(|session| self.append(session, body.clone()).is_some())
            .count()
    }
}

/// Exclusive right to handle one session's client events, from [`SessionHandle::inbox`]. It
/// borrows the handle rather than holding a count of its own: taking and releasing it is then
/// the lock alone, on the per-event path.
pub struct Inbox<'a> {
    handle: &'a SessionHandle,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

/// One session, already found: what a handler's context holds, so that answering the session
/// it serves costs no lookup in the session table.
#[derive(Clone)]
pub struct SessionHandle {
    session: Arc<Session>,
}

impl SessionHandle {
    pub fn sid(&self) -> &Sid {
        &self.session.sid
    }

    /// Takes the session's inbox: until the returned guard drops, no other client event of the
    /// session is handled. Waiters are served in arrival order.
    pub async fn inbox(&self) -> Inbox<'_> {
        Inbox { handle: self, _guard: self.session.inbox.lock().await }
    }

    /// The rooms the session is in.
    pub fn rooms(&self) -> Vec<String> {
        if self.session.room_count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        lock(&self.session.state).rooms.iter().map(|room| room.to_string()).collect()
    }

    /// Who opened the session, if auth is on.
    pub fn subject(&self) -> Option<Arc<str>> {
        lock(&self.session.state).subject.clone()
    }
}

impl<'a> Inbox<'a> {
    /// The session whose inbox this is.
    pub fn session(&self) -> &'a SessionHandle {
        self.handle
    }

    /// Whether an event numbered `seq` is new and should be handled; records it if so. Events
    /// without a number are always handled; a number at or below the highest handled one is a
    /// re-send of something already handled.
    pub fn accept(&self, seq: Option<u64>) -> bool {
        let Some(seq) = seq else { return true };
        let received = &self.handle.session.received;
        if seq <= received.load(Ordering::Acquire) {
            return false;
        }
        received.store(seq, Ordering::Release);
        true
    }
}

/// A transport's hold on a session: the stream of what to write to the client.
///
/// Dropping it detaches the transport (if it still holds the session) and starts the grace
/// period.
pub struct Attachment {
    hub: Hub,
    session: Arc<Session>,
    id: u64,
    /// Shared with the session's [`Attached`] entry while this attachment holds the session.
    wake: Arc<Signal>,
    /// Number of the last event handed out.
    position: u64,
    /// The [`Signal`] count as of the last look under the session lock.
    seen: u64,
    /// Events copied out of the ring (or notices), not yet handed out.
    pending: VecDeque<Event>,
    transport: Transport,
    /// Whether this attach created the session (rather than resuming one).
    fresh: bool,
    /// Whether the `reconnect` notice of a shutdown has been handed out.
    said_goodbye: bool,
}

impl Attachment {
    pub fn sid(&self) -> &Sid {
        &self.session.sid
    }

    /// The attached session, for sending into it without a lookup by sid.
    pub fn session(&self) -> SessionHandle {
        SessionHandle { session: self.session.clone() }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether this attach created its session (a new client, or one whose session could not be
    /// resumed), as opposed to resuming a live one. Open hooks run only for fresh sessions.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The next event to write, waiting for one if need be. Ends when the attachment is
    /// superseded or the server shuts down.
    ///
    /// Woken by emits, by being superseded or evicted, and by `close_all` (after which
    /// `try_recv` flushes what is ready, then says goodbye). Each of those changes the session
    /// under its lock and then wakes, and this registers before it looks, so no wake-up is lost.
    /// The waker is a single slot (one attachment, one waiting task) rather than a `Notify`:
    /// registering costs an atomic exchange instead of a lock on a waiter list, per wait.
    pub async fn recv(&mut self) -> Result<Event, CloseReason> {
        let wake = self.wake.clone();
        // Unregistered when the wait ends or is abandoned, so that emits arriving while the
        // transport is busy elsewhere (writing what it got) do not wake its task for nothing;
        // it looks again with `try_recv` before its next wait.
        let _unregister = Unregister(&wake.waker);
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Attachment::recv`] as a poll, for a transport that waits on several things in one
    /// `poll_fn`. It stays registered for wake-ups until [`Attachment::stop_waiting`].
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Event, CloseReason>> {
        self.wake.waker.register(cx.waker());
        match self.try_recv() {
            Ok(Some(event)) => Poll::Ready(Ok(event)),
            Ok(None) => Poll::Pending,
            Err(reason) => Poll::Ready(Err(reason)),
        }
    }

    /// Ends a wait begun with [`Attachment::poll_recv`]: emits no longer wake the task.
    pub fn stop_waiting(&self) {
        self.wake.waker.take();
    }

    /// The transport is about to run handlers in its own task and will look for what they emit
    /// with [`Attachment::try_recv`] after [`Attachment::end_handling`]: emits meanwhile need
    /// not wake it (the reply to a request would otherwise schedule the task once for nothing).
    pub fn begin_handling(&self) {
        self.wake.handling.store(true, Ordering::Relaxed);
    }

    /// Ends [`Attachment::begin_handling`]; call it before looking for the handlers' emits.
    pub fn end_handling(&self) {
        self.wake.handling.store(false, Ordering::SeqCst);
    }

    /// The next event to write if one is ready, without waiting.
    ///
    /// When the server shuts down, the attachment hands out what is ready, then a `reconnect`
    /// notice (so clients resume, here or on another instance), then ends.
    pub fn try_recv(&mut self) -> Result<Option<Event>, CloseReason> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(Some(event));
        }
        if self.said_goodbye {
            return Err(CloseReason::Shutdown);
        }
        // Read before the lock: a change made after this load bumps the count past `seen`.
        let changes = self.wake.changes.load(Ordering::SeqCst);
        if changes == self.seen && !self.hub.inner.closing.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.seen = changes;
        let mut state = lock(&self.session.state);
        if state.attached.as_ref().map(|a| a.id) != Some(self.id) {
            // An end is final: every later look must find it again, not take the change as seen.
            self.seen = 0;
            return Err(match state.evicted {
                Some((id, reason)) if id == self.id => reason,
                _ => CloseReason::Superseded,
            });
        }
        if state.last_seq > self.position {
            // A non-empty ring holds events up to `last_seq`, the oldest being `first`.
            let first = state.ring.front().map_or(state.last_seq + 1, |e| e.seq);
            if self.position + 1 < first {
                let lost = first - 1 - self.position;
                metrics::counter!("switchyard_gaps_total", "reason" => "overflow").increment(1);
                self.position = first - 1;
                self.pending.push_back(Event::notice(
                    self.position,
                    "gap",
                    json!({"reason": "overflow", "lost": lost,
                           "message": format!("{lost} events were dropped from the session buffer before they could be delivered")}),
                ));
            }
            let skip = (self.position + 1 - first) as usize;
            self.pending.extend(state.ring.iter().skip(skip).take(BATCH).cloned());
            if let Some(last) = self.pending.back() {
                self.position = self.position.max(last.seq);
            }
            state.delivered = state.delivered.max(self.position);
            let (position, caught_up) = (self.position, self.position == state.last_seq);
            if let Some(attached) = &mut state.attached {
                attached.read_upto = position;
                // A read is progress: the stall clock starts again at the next tick if need be.
                attached.behind_since = None;
            }
            if !caught_up {
                // More than one batch was waiting: the rest is there to read with no new change.
                self.seen = 0;
            }
        }
        drop(state);
        if self.pending.is_empty() && self.hub.inner.closing.load(Ordering::Acquire) {
            self.said_goodbye = true;
            self.pending.push_back(Event::notice(
                self.position,
                "reconnect",
                json!({"reason": "shutdown", "message": "the server is restarting; resume from your last cursor"}),
            ));
        }
        Ok(self.pending.pop_front())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut state = lock(&self.session.state);
        let holds = state.attached.as_ref().is_some_and(|a| a.id == self.id);
        crate::metrics::transport_closed(self.transport, holds);
        if holds {
            state.attached = None;
            state.detached_at = Some(Instant::now());
            tracing::debug!(sid = self.session.sid.short(), transport = self.transport.as_str(), "detached");
        }
    }
}

/// Detaches the attached transport on the hub's own initiative; it ends with `reason`.
fn evict(state: &mut State, reason: CloseReason, sid: &Sid) {
    if let Some(attached) = state.attached.take() {
        tracing::info!(sid = sid.short(), reason = reason.as_str(), "detaching transport");
        metrics::counter!("switchyard_detaches_total", "reason" => reason.as_str()).increment(1);
        state.evicted = Some((attached.id, reason));
        state.detached_at = Some(Instant::now());
        attached.wake.notify();
    }
}

/// How the hub tells an attachment that something changed for it (an event, being superseded
/// or evicted, the session removed, shutdown): a count bumped after every such change, made
/// under the session lock, then a wake-up. An attachment that has seen the current count knows,
/// without the lock, that nothing changed, so looking for more and finding none (once after
/// every write, once before every wait) costs a load instead of a lock.
///
/// While the transport runs handlers inline (`handling`), it reads what they emit right after
/// they return, so changes need not wake its task. `notify` bumps the count and then reads the
/// flag; the transport clears the flag and then reads the count; both sequentially consistent,
/// so at least one of them sees the other: a change made while the flag was still set is found
/// by the transport's look after clearing it.
struct Signal {
    changes: AtomicU64,
    handling: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn new() -> Signal {
        // Starts at 1: a new attachment, having seen 0, looks under the lock at once.
        Signal { changes: AtomicU64::new(1), handling: AtomicBool::new(false), waker: AtomicWaker::new() }
    }

    fn notify(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if !self.handling.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }
}

/// Takes the waker out of an attachment's slot when its wait ends or is abandoned.
struct Unregister<'a>(&'a AtomicWaker);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// An event whose name is checked and whose data is rendered to JSON once, to be emitted many
/// times (a constant reply): see [`Hub::emit_rendered_to`] and [`crate::Context::emit_rendered`].
#[derive(Clone, Debug)]
pub struct Rendered(Arc<Body>);

impl Rendered {
    /// Checks `name` and renders `data` (see [`render_data`]).
    pub fn new(name: &str, data: &impl serde::Serialize) -> Result<Rendered, HubError> {
        validate_event_name(name)?;
        Ok(Rendered(Body::shared(name, render_data(data))))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The data as JSON text.
    pub fn data(&self) -> &str {
        &self.0.data
    }
}

/// An event's data as JSON text. Data that cannot be JSON (a map with non-string keys) renders
/// as `null`: the one rule for every emit that takes a serializable value.
pub fn render_data(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned())
}

/// Refuses names that would break SSE framing or are unbounded (see [`check_event_name`]).
pub fn validate_event_name(name: &str) -> Result<(), HubError> {
    check_event_name(name).map_err(HubError::EventName)
}

/// Session locks are never held across a panic-prone call, but a poisoned lock must not take
/// the whole hub down with it.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize) -> Hub {
        Hub::new(HubConfig { buffer, ..HubConfig::default() }, CancellationToken::new())
    }

    async fn next(attachment: &mut Attachment) -> (String, u64, bool, String) {
        let event = tokio::time::timeout(Duration::from_secs(1), attachment.recv()).await.expect("an event").expect("attached");
        (event.name().to_owned(), event.seq, event.notice, event.data().to_owned())
    }

    #[tokio::test]
    async fn events_get_strictly_increasing_cursors_and_replay_after_a_cursor() {
        let hub = hub(16);
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        assert_eq!(next(&mut a).await.0, "session");
        let mut cursors = Vec::new();
        for i in 0..5 {
            cursors.push(hub.emit(&sid, "n", &json!(i)).await.unwrap());
        }
        assert!(cursors.windows(2).all(|w| w[0].seq < w[1].seq));
        for i in 0..5 {
            assert_eq!(next(&mut a).await.3, i.to_string());
        }
        drop(a);
        let cursor = cursors[1].to_string();
        let mut b = hub.attach(Transport::WebSocket, Some(sid.as_str()), Some(&cursor)).await.unwrap();
        let hello = next(&mut b).await;
        assert_eq!((hello.0.as_str(), hello.1, hello.2), ("session", 2, true));
        for i in 2..5 {
            assert_eq!(next(&mut b).await.3, i.to_string());
        }
        assert!(b.try_recv().unwrap().is_none(), "nothing beyond the last event");
    }

    #[tokio::test]
    async fn a_reader_overtaken_by_the_ring_is_detached_and_told_what_it_lost_on_resume() {
        let hub = hub(3);
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        let hello = a.recv().await.unwrap().cursor(&sid).to_string();
        for i in 1..=10 {
            hub.emit(&sid, "n", &json!(i)).await.unwrap();
        }
        // Event 1 left the ring before the reader copied it out: it is too slow to keep.
        assert_eq!(a.recv().await.unwrap_err(), CloseReason::SlowConsumer);
        assert_eq!(hub.info(&sid).unwrap().transport, None);
        drop(a);
        let mut b = hub.attach(Transport::Sse, Some(sid.as_str()), Some(&hello)).await.unwrap();
        next(&mut b).await;
        let gap = next(&mut b).await;
        assert_eq!((gap.0.as_str(), gap.1, gap.2), ("gap", 7, true));
        assert!(gap.3.contains("\"lost\":7"), "{}", gap.3);
        for i in 8..=10 {
            assert_eq!(next(&mut b).await.1, i);
        }
        assert_eq!(hub.info(&sid).unwrap().buffered, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_leaves_events_unread_is_detached_after_the_timeout() {
        let hub = Hub::new(
            HubConfig { slow_client_timeout: Duration::from_secs(5), ..HubConfig::default() },
            CancellationToken::new(),
        );
        // The expiry task's ticks, one a second.
        let ticks = |seconds: u64| {
            let hub = hub.clone();
            async move {
                for _ in 0..seconds {
                    tokio::time::advance(Duration::from_secs(1)).await;
                    hub.expire(Instant::now());
                }
            }
        };
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        next(&mut a).await;
        hub.emit(&sid, "n", &json!(1)).await.unwrap();
        ticks(4).await;
        // Reading in time keeps it attached.
        assert_eq!(next(&mut a).await.1, 1);
        hub.emit(&sid, "n", &json!(2)).await.unwrap();
        ticks(5).await;
        assert!(matches!(a.try_recv(), Ok(Some(_))), "not yet 5 s since a tick saw it behind");
        hub.emit(&sid, "n", &json!(3)).await.unwrap();
        ticks(5).await;
        assert!(hub.info(&sid).unwrap().transport.is_some(), "reading restarted the clock");
        ticks(1).await;
        let end = tokio::time::timeout(Duration::from_secs(1), a.recv()).await.expect("detached by now");
        assert_eq!(end.unwrap_err(), CloseReason::SlowConsumer);
        assert!(hub.contains(&sid).await, "the session stays for its grace period");
    }

    #[tokio::test]
    async fn what_is_waiting_is_read_to_the_end_without_further_changes_then_the_goodbye() {
        let hub = hub(BATCH * 4);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        next(&mut a).await;
        // More than a batch waiting: all of it is read with nothing emitted in between.
        let total = (BATCH * 2 + 3) as u64;
        for i in 0..total {
            hub.emit(a.sid(), "n", &json!(i)).await.unwrap();
        }
        for seq in 1..=total {
            assert_eq!(a.try_recv().unwrap().expect("an event still in the ring").seq, seq);
        }
        assert!(a.try_recv().unwrap().is_none());
        // Shutdown seen while events were still being handed out: the goodbye follows them.
        for i in 0..5 {
            hub.emit(a.sid(), "n", &json!(i)).await.unwrap();
        }
        hub.close_all();
        for seq in total + 1..=total + 5 {
            assert_eq!(a.try_recv().unwrap().expect("an event before the goodbye").seq, seq);
        }
        assert_eq!(a.try_recv().unwrap().expect("the goodbye").name(), "reconnect");
        assert_eq!(a.try_recv().unwrap_err(), CloseReason::Shutdown);
    }

    #[tokio::test]
    async fn an_end_is_reported_on_every_look_after_it() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        next(&mut a).await;
        let _b = hub.attach(Transport::Sse, Some(a.sid().as_str()), None).await.unwrap();
        // A transport may ignore the first answer (it was only looking for replies to write)
        // and must still be told when it next waits.
        assert_eq!(a.try_recv().unwrap_err(), CloseReason::Superseded);
        assert_eq!(a.try_recv().unwrap_err(), CloseReason::Superseded);
        assert_eq!(a.recv().await.unwrap_err(), CloseReason::Superseded);
    }

    #[tokio::test]
    async fn what_is_emitted_while_handling_is_found_after_it() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        next(&mut a).await;
        // Nothing found: the look is recorded as seen.
        assert!(a.try_recv().unwrap().is_none());
        a.begin_handling();
        hub.emit(a.sid(), "n", &json!(1)).await.unwrap();
        a.end_handling();
        assert_eq!(a.try_recv().unwrap().expect("the emit made while handling").seq, 1);
        // And after handling, emits wake a waiting transport again.
        let sid = a.sid().clone();
        let waiting = tokio::spawn(async move { a.recv().await.map(|e| e.seq) });
        tokio::task::yield_now().await;
        hub.emit(&sid, "n", &json!(2)).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_rendered_event_is_the_same_event_as_an_emitted_one() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        next(&mut a).await;
        let rendered = Rendered::new("response", &"Message received!").unwrap();
        hub.emit_rendered_to(&a.session(), &rendered).unwrap();
        hub.emit(a.sid(), "response", &json!("Message received!")).await.unwrap();
        let (x, y) = (a.recv().await.unwrap(), a.recv().await.unwrap());
        assert_eq!((x.name(), x.data()), (y.name(), y.data()));
        assert_eq!((x.seq, y.seq), (1, 2));
        assert!(Rendered::new("", &1).is_err(), "names are checked as for any emit");
    }

    #[tokio::test]
    async fn the_gate_is_asked_only_when_a_session_would_be_created() {
        let hub = hub(8);
        let refuse = || Err::<(), HubError>(HubError::RateLimited);
        let new = AttachRequest::new(Transport::Sse, None, None);
        assert_eq!(hub.attach_with(new, refuse).await.err(), Some(HubError::RateLimited));
        assert_eq!(hub.len(), 0, "a refused attach leaves no session behind");

        let mut asked = 0;
        let mut a = hub.attach_with(new, || { asked += 1; Ok::<(), HubError>(()) }).await.unwrap();
        assert_eq!((asked, hub.len()), (1, 1));
        let sid = a.sid().clone();
        let hello = a.try_recv().unwrap().unwrap().cursor(&sid).to_string();
        // Resuming a live session, with or without a cursor, never asks.
        for cursor in [None, Some(hello.as_str())] {
            let resume = AttachRequest::new(Transport::WebSocket, Some(sid.as_str()), cursor);
            let b = hub.attach_with(resume, || -> Result<(), HubError> { panic!("asked on a resume") }).await.unwrap();
            assert_eq!(b.sid(), &sid);
        }
        // What cannot be honoured would create a session: asked, and refused here.
        let unknown = Sid::random();
        let bad_cursor = format!("{sid}.99");
        for (sid, cursor) in [(Some(unknown.as_str()), None), (Some("not-a-sid"), None), (Some(sid.as_str()), Some(bad_cursor.as_str()))] {
            let request = AttachRequest::new(Transport::Polling, sid, cursor);
            assert_eq!(hub.attach_with(request, refuse).await.err(), Some(HubError::RateLimited), "{sid:?} {cursor:?}");
        }
        assert_eq!(hub.len(), 1);
    }

    #[tokio::test]
    async fn the_hello_tells_the_limits_and_the_heartbeat_asked_for() {
        let config = HubConfig { max_body: 1000, max_batch: 7, ..HubConfig::default() };
        let hub = Hub::new(config, CancellationToken::new());
        let request = AttachRequest::new(Transport::Sse, None, None).heartbeat(Some(Duration::from_secs(15)));
        let mut a = hub.attach_with(request, || Ok::<(), HubError>(())).await.unwrap();
        let hello = a.try_recv().unwrap().unwrap();
        let data: Value = serde_json::from_str(hello.data()).unwrap();
        let expected = json!({"sid": a.sid().as_str(), "transport": "sse", "resumed": false, "received": 0,
                              "max_body": 1000, "max_batch": 7, "heartbeat": 15000});
        assert_eq!(data, expected);
        let mut b = hub.attach(Transport::WebSocket, Some(a.sid().as_str()), None).await.unwrap();
        let data: Value = serde_json::from_str(b.try_recv().unwrap().unwrap().data()).unwrap();
        assert_eq!(data.get("heartbeat"), None, "no heartbeat asked for, none told");
        assert_eq!((&data["resumed"], &data["max_body"]), (&json!(true), &json!(1000)));
    }

    #[tokio::test]
    async fn a_new_attachment_supersedes_the_old_one() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        let sid = a.sid().clone();
        next(&mut a).await;
        let mut b = hub.attach(Transport::Sse, Some(sid.as_str()), None).await.unwrap();
        assert_eq!(a.recv().await.unwrap_err(), CloseReason::Superseded);
        hub.emit(&sid, "n", &json!(1)).await.unwrap();
        next(&mut b).await;
        assert_eq!(next(&mut b).await.3, "1");
        // Dropping the superseded attachment does not detach the new one.
        drop(a);
        assert_eq!(hub.info(&sid).unwrap().transport, Some(Transport::Sse));
    }

    #[tokio::test(start_paused = true)]
    async fn detached_sessions_expire_after_the_grace_period_and_attached_ones_never() {
        let hub = hub(8);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let kept = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        drop(a);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(hub.expire(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(hub.expire(Instant::now()), 1);
        assert!(!hub.contains(&sid).await);
        assert_eq!(hub.emit(&sid, "n", &json!(1)).await, Err(HubError::NoSession));
        assert!(hub.contains(kept.sid()).await);
        assert_eq!(hub.len(), 1);
    }

    /// The expiry task's sweep must not hold the worker thread for the whole table: on one
    /// thread, another task gets turns while it runs, and it still removes what has expired.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_expiry_sweep_lets_other_tasks_run_between_shards() {
        let hub = hub(8);
        let mut held = Vec::new();
        for _ in 0..SHARDS * 4 {
            held.push(hub.attach(Transport::Sse, None, None).await.unwrap());
        }
        let gone: Vec<Sid> = held.drain(..SHARDS).map(|a| a.sid().clone()).collect();
        tokio::time::advance(Duration::from_secs(31)).await;

        let done = Arc::new(AtomicBool::new(false));
        let turns = tokio::spawn({
            let done = done.clone();
            async move {
                let mut turns = 0;
                while !done.load(Ordering::Relaxed) {
                    turns += 1;
                    tokio::task::yield_now().await;
                }
                turns
            }
        });
        let removed = hub.sweep(Instant::now()).await;
        done.store(true, Ordering::Relaxed);
        let turns = turns.await.unwrap();

        assert_eq!(removed, SHARDS);
        assert_eq!(hub.len(), SHARDS * 3);
        for sid in &gone {
            assert!(!hub.contains(sid).await);
        }
        assert!(turns >= SHARDS / 2, "the other task ran {turns} times during a sweep of {SHARDS} shards");
    }

    #[tokio::test]
    async fn shutdown_flushes_then_asks_clients_to_reconnect() {
        let token = CancellationToken::new();
        let hub = Hub::new(HubConfig::default(), token.clone());
        let task = hub.spawn_expiry();
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        next(&mut a).await;
        hub.emit(a.sid(), "n", &json!("last words")).await.unwrap();
        token.cancel();
        task.await.unwrap();
        // An attachment made during the shutdown says goodbye at once.
        let mut late = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        assert_eq!(next(&mut late).await.0, "session");
        assert_eq!(next(&mut late).await.0, "reconnect");
        // What was ready still goes out, then the notice to resume, then the end.
        assert_eq!(next(&mut a).await.3, "\"last words\"");
        let farewell = next(&mut a).await;
        assert_eq!((farewell.0.as_str(), farewell.1, farewell.2), ("reconnect", 1, true));
        assert_eq!(a.recv().await.unwrap_err(), CloseReason::Shutdown);
    }

    #[tokio::test]
    async fn event_names_that_would_break_framing_are_refused() {
        let hub = hub(8);
        let a = hub.attach(Transport::Sse, None, None).await.unwrap();
        for bad in ["", "a\nb", "a\rb", &"x".repeat(129)] {
            assert!(matches!(hub.emit(a.sid(), bad, &json!(1)).await, Err(HubError::EventName(_))), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(HubConfig { grace: Duration::from_secs(30), buffer: 8, ..HubConfig::default() }, CancellationToken::new())
    }

    async fn session(hub: &Hub) -> (Sid, Attachment) {
        let mut attachment = hub.attach(Transport::Sse, None, None).await.expect("room for a session");
        attachment.try_recv().unwrap().expect("hello");
        (attachment.sid().clone(), attachment)
    }

    fn names(attachment: &mut Attachment) -> Vec<String> {
        std::iter::from_fn(|| attachment.try_recv().ok().flatten()).map(|e| e.data().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_room_broadcast_reaches_members_only_and_membership_is_mirrored() {
        let hub = hub();
        let (a, mut a_att) = session(&hub).await;
        let (b, mut b_att) = session(&hub).await;
        let (_, mut c_att) = session(&hub).await;
        assert_eq!(hub.join(&a, "r"), Ok(true));
        assert_eq!(hub.join(&a, "r"), Ok(false));
        assert_eq!(hub.join(&b, "r"), Ok(true));
        assert_eq!(hub.emit_room("r", "m", &json!(1)).await, Ok(2));
        assert_eq!((names(&mut a_att), names(&mut b_att), names(&mut c_att)), (vec!["1".into()], vec!["1".into()], vec![]));
        assert_eq!(hub.info(&a).unwrap().rooms, vec!["r".to_owned()]);
        assert_eq!(hub.leave(&a, "r"), Ok(true));
        assert_eq!(hub.leave(&a, "r"), Ok(false));
        assert_eq!(hub.members("r"), vec![b.clone()]);
        assert_eq!(hub.emit_all("m", &json!(2)).await, Ok(3));
        assert_eq!(hub.publish_except(&Target::Room("r".into()), Some(&b), "m", &json!(3)).await, Ok(0));
        assert_eq!(hub.publish_except(&Target::All, Some(&b), "m", &json!(4)).await, Ok(2));
        assert!(matches!(hub.join(&a, ""), Err(HubError::RoomName(_))));
        assert_eq!(hub.join(&Sid::random(), "r"), Err(HubError::NoSession));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_and_removal_drop_membership_and_expiry_is_reported() {
        let hub = hub();
        let mut expired = hub.watch_expired();
        let (a, a_att) = session(&hub).await;
        let (b, _b_att) = session(&hub).await;
        hub.join(&a, "r").unwrap();
        hub.join(&a, "s").unwrap();
        hub.join(&b, "r").unwrap();
        drop(a_att);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(hub.expire(Instant::now()), 1);
        assert_eq!(expired.try_recv().unwrap(), Expired { sid: a.clone(), rooms: vec!["r".into(), "s".into()] });
        assert_eq!(hub.members("r"), vec![b.clone()]);
        assert!(hub.members("s").is_empty());
        assert!(hub.remove(&b));
        assert!(hub.members("r").is_empty());
        assert!(expired.try_recv().is_err(), "a removal is not an expiry");
        assert_eq!(hub.len(), 0);
    }
}
