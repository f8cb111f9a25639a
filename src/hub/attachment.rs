//! A transport's hold on a session: [`Hub::attach`], the [`Attachment`] it returns, and how an
//! attachment learns that it has something to write or must stop.
//!
//! * **Newest wins.** A session has at most one attachment. Attaching replaces whatever held the
//!   session before, and the old attachment ends with [`CloseReason::Superseded`] the next time
//!   it looks. Dropping an attachment detaches it and starts the session's grace period.
//! * **Hellos and gaps.** Every attachment starts with a `session` hello (sid, transport, what
//!   the client sent that was handled, the limits), then a `gap` notice if the session or cursor
//!   asked for could not be honoured (the client gets a fresh session instead), then a replay of
//!   everything after its cursor, then live events. A reader that the ring moved past gets a
//!   `gap` notice saying how many events it lost, never silence.
//! * **A position, not a queue.** An attachment keeps only the number of the last event it
//!   copied out of the session's ring and copies what lies after it, [`BATCH`] at a time, when
//!   woken: bodies only (a pointer each), numbered as they are handed out, so what it holds
//!   beyond the ring is one batch at most, whether or not its transport writes. Waking is a
//!   count bumped under the session lock plus a single waker slot ([`Signal`]): an attachment
//!   that has seen the current count knows without the lock that nothing changed, so the look
//!   after every write and before every wait costs one load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use serde_json::json;
use tokio::time::Instant;

use crate::protocol::{Cursor, CursorText, Sid};

use super::counters;
use super::event::{Body, Event};
use super::history::{Detail, HistoryKind, TransportChange};
use super::session::{lock, Session, SessionHandle, State};
use super::{Hub, HubError, Transport};

/// How many events an attachment copies out of the ring per lock.
pub(super) const BATCH: usize = 64;


/// What a transport asks of [`Hub::attach_with`]: the session and resume point, raw from the
/// request, and what the `session` hello tells about the transport.
#[derive(Debug, Clone, Copy)]
pub struct AttachRequest<'a> {
    /// The transport attaching.
    pub transport: Transport,
    /// The session asked for (`?sid=`), as the client sent it; `None` for a new one.
    pub sid: Option<&'a str>,
    /// Where to resume (`last_event_id`, `Last-Event-ID`), as the client sent it.
    pub cursor: Option<&'a str>,
    /// The longest the transport stays silent (keep-alive, poll timeout, WebSocket heartbeat),
    /// told in the hello as `heartbeat` in milliseconds so a client knows when to give up on
    /// it; `None` leaves it out (a WebSocket whose client did not ask for heartbeats).
    pub heartbeat: Option<Duration>,
    /// The transport change the client reports with this attach (`from`, `reason`), if any:
    /// counted and kept in the session's history, and nothing else.
    pub change: Option<TransportChange>,
}

impl<'a> AttachRequest<'a> {
    /// A request to attach `transport` to the session `sid` from `cursor` (either may be
    /// missing), with no `heartbeat` told.
    pub fn new(transport: Transport, sid: Option<&'a str>, cursor: Option<&'a str>) -> AttachRequest<'a> {
        AttachRequest { transport, sid, cursor, heartbeat: None, change: None }
    }

    /// The same request, telling the client `heartbeat` as the transport's longest silence.
    #[must_use]
    pub fn heartbeat(self, heartbeat: Option<Duration>) -> AttachRequest<'a> {
        AttachRequest { heartbeat, ..self }
    }

    /// The same request, reporting that the client came to this transport from another one
    /// (see [`TransportChange::parse`]).
    #[must_use]
    pub fn change(self, change: Option<TransportChange>) -> AttachRequest<'a> {
        AttachRequest { change, ..self }
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
    /// Cluster mode: Redis became unreachable, so events emitted on other nodes can no longer
    /// reach this transport; the client was told to resume (`reconnect`, reason `redis`).
    Unavailable,
}

impl CloseReason {
    /// A short fixed name, for logs, metrics labels and the operator page.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Superseded => "superseded",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Unavailable => "redis unreachable",
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
    /// The `reason` of the `gap` notice.
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

/// The transport holding a session, as the session sees it (`State::attached`); the
/// transport's side is its [`Attachment`].
pub(super) struct Attached {
    pub(super) id: u64,
    /// Cluster mode: the attachment's generation in Redis (a takeover with a later one
    /// supersedes it); 0 in memory.
    pub(super) gen: u64,
    /// Woken on every emit and when the attachment is superseded. The other end is held by the
    /// [`Attachment`] with the same id.
    pub(super) wake: Arc<Signal>,
    /// Number of the last event the attachment copied out of the ring.
    pub(super) read_upto: u64,
    /// Since when the expiry task has seen events waiting that the attachment has not read;
    /// `None` until then, and again after every read. The expiry task sets and checks it, once
    /// per tick, so that neither an emit nor a read needs the clock: a reader is detached as slow
    /// after at least `slow_client_timeout` without reading while behind, at most two ticks
    /// (each at most a second) later than that.
    pub(super) behind_since: Option<Instant>,
    /// An SSE attach's reported transport change, counted only once the stream has held the
    /// session for [`CONFIRM_SSE`] (the expiry task looks): see there. Boxed, as it is rare.
    pub(super) unconfirmed: Option<Box<(TransportChange, Instant)>>,
}

/// How long an SSE stream that reported a transport change must hold its session before the
/// change is counted. A proxy that holds streams back delivers nothing of the stream, the
/// `session` hello included; the client gives up on it after `sseTimeout` (4 s by default) and
/// polls, reporting that as the change it really made. Counted at once, that abandoned attempt
/// would show as a fallback to SSE as well. WebSocket and poll attaches are counted at once: a
/// socket upgraded end to end, or a complete poll answer, reaches the client.
pub(super) const CONFIRM_SSE: Duration = Duration::from_secs(5);

impl Hub {
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
        if let Some(cluster) = &self.inner.cluster {
            // Boxed: Redis's round trips would otherwise make every attach's future (every
            // poll's, in memory too) as large as theirs.
            return Box::pin(self.attach_clustered(cluster, &request, gate)).await;
        }
        let gap = match self.resolve(request.sid, request.cursor) {
            Ok(Some((session, start))) => match self.attach_to(session, &request, true, start, None, 0) {
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
            .attach_to(session, &request, false, None, gap, 0)
            .expect("a session just created is not expired: it is created attached"))
    }

    /// Attaches to a session `found` (resumed) or just created, from `start` (the cursor, or
    /// `None`: after what was last handed out); `gen` is the attachment's generation in
    /// cluster mode.
    pub(super) fn attach_to(
        &self,
        session: Arc<Session>,
        request: &AttachRequest<'_>,
        found: bool,
        start: Option<u64>,
        gap: Option<GapReason>,
        gen: u64,
    ) -> Option<Attachment> {
        let transport = request.transport;
        let id = self.inner.next_attachment.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Signal::new());
        let mut state = lock(&session.state);
        if state.removed {
            return None;
        }
        let position = start.unwrap_or(state.delivered);
        // A poll that resumes from a poll's cursor continues the same transport: no new hello.
        let continuation = transport == Transport::Polling
            && state.last_transport == Some(Transport::Polling)
            && start.is_some();
        let change = request.change.filter(|_| !continuation);
        let unconfirmed = change.filter(|_| transport == Transport::Sse).map(|change| Box::new((change, Instant::now())));
        let attached = Attached { id, gen, wake: wake.clone(), read_upto: position, behind_since: None, unconfirmed };
        if let Some(old) = state.attached.replace(attached) {
            metrics::counter!("switchyard_detaches_total", "reason" => "superseded").increment(1);
            old.wake.notify();
        }
        state.last_transport = Some(transport);
        state.detached_at = None;
        state.attached_since = Some(SystemTime::now());
        if continuation {
            state.history.continue_poll();
        } else {
            let kind = if found { HistoryKind::Resumed } else { HistoryKind::Created };
            let detail = match (gap, change) {
                (Some(reason), _) => Detail::Gap(reason),
                (None, Some(change)) => Detail::Change(change.reason),
                (None, None) => Detail::None,
            };
            state.history.push(kind, transport, change.map(|c| c.from), detail);
        }
        drop(state);

        let mut notices = Notices::new();
        if !continuation {
            let config = &self.inner.config;
            let mut hello = json!({"sid": session.sid.as_str(), "transport": transport.as_str(), "resumed": found,
                                   "received": session.received.load(Ordering::Acquire),
                                   "max_body": config.max_body, "max_batch": config.max_batch});
            if let Some(heartbeat) = request.heartbeat {
                hello["heartbeat"] = json!(u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX));
            }
            notices.push(Event::notice(position, "session", hello));
        }
        if let Some(reason) = gap {
            notices.push(Event::notice(
                position,
                "gap",
                json!({"reason": reason.as_str(), "message": reason.message()}),
            ));
        }
        tracing::debug!(sid = session.sid.short(), transport = transport.as_str(), position, ?gap, "attached");
        let fresh = !found;
        counters::transport_attached(transport, fresh, !continuation);
        if let Some(change) = change.filter(|_| transport != Transport::Sse) {
            counters::transport_changed(change, transport);
        }
        if let Some(reason) = gap {
            metrics::counter!("switchyard_gaps_total", "reason" => reason.as_str()).increment(1);
        }
        Some(Attachment {
            hub: self.clone(),
            session,
            id,
            gen,
            wake,
            position,
            seen: 0,
            notices,
            pending: VecDeque::new(),
            transport,
            fresh,
            said_goodbye: false,
        })
    }

    /// Finds the session and start position an attach asks for. `Ok(None)`: a new session was
    /// asked for. `Err`: the request cannot be honoured and why.
    #[allow(clippy::type_complexity)]
    fn resolve(&self, sid: Option<&str>, cursor: Option<&str>) -> Result<Option<(Arc<Session>, Option<u64>)>, GapReason> {
        // As `parse_request`, without a `Sid` made for either: the lookup takes the text.
        let cursor = cursor.map(|raw| CursorText::parse(raw).map_err(|_| GapReason::BadCursor)).transpose()?;
        let sid = match (sid, &cursor) {
            (Some(raw), _) if Sid::is_valid(raw) => raw,
            (Some(_), _) => return Err(GapReason::InvalidSid),
            (None, Some(cursor)) => cursor.sid,
            (None, None) => return Ok(None),
        };
        let session = self.find_text(sid).ok_or(GapReason::Expired)?;
        let Some(cursor) = cursor else {
            return Ok(Some((session, None)));
        };
        let placeable = cursor.sid == sid && cursor.seq <= lock(&session.state).ring.last_seq();
        if !placeable {
            return Err(GapReason::BadCursor);
        }
        Ok(Some((session, Some(cursor.seq))))
    }
}

/// The session and cursor an attach asks for, as the client sent them, parsed: `Ok(None)` asks
/// for a new session (neither given); a cursor alone names its session.
pub(super) fn parse_request(sid: Option<&str>, cursor: Option<&str>) -> Result<Option<(Sid, Option<Cursor>)>, GapReason> {
    let cursor = match cursor {
        None => None,
        Some(raw) => Some(raw.parse::<Cursor>().map_err(|_| GapReason::BadCursor)?),
    };
    let sid = match (sid, &cursor) {
        (Some(raw), _) => raw.parse::<Sid>().map_err(|_| GapReason::InvalidSid)?,
        (None, Some(cursor)) => cursor.sid.clone(),
        (None, None) => return Ok(None),
    };
    Ok(Some((sid, cursor)))
}

/// A transport's hold on a session: the stream of what to write to the client.
///
/// Dropping it detaches the transport (if it still holds the session) and starts the grace
/// period.
pub struct Attachment {
    hub: Hub,
    session: Arc<Session>,
    id: u64,
    /// Cluster mode: the generation of this attachment in Redis; 0 in memory.
    gen: u64,
    /// Shared with the session's [`Attached`] entry while this attachment holds the session.
    wake: Arc<Signal>,
    /// Number of the last event copied out of the ring: handed out, or waiting in `pending`.
    position: u64,
    /// The [`Signal`] count as of the last look under the session lock.
    seen: u64,
    /// Notices to hand out before anything in `pending` (the hello and a gap, or the goodbye).
    /// Made only while `pending` is empty, so they never overtake an event.
    notices: Notices,
    /// Bodies of the events up to `position` copied out of the ring and not yet handed out
    /// (the first is event `position - len + 1`): at most a [`BATCH`], and the storage no
    /// larger than the largest batch copied.
    pending: VecDeque<Arc<Body>>,
    transport: Transport,
    /// Whether this attach created the session (rather than resuming one).
    fresh: bool,
    /// Whether the `reconnect` notice of a shutdown has been handed out.
    said_goodbye: bool,
}

impl Attachment {
    /// The attached session's id.
    pub fn sid(&self) -> &Sid {
        &self.session.sid
    }

    /// The attached session, for sending into it without a lookup by sid.
    pub fn session(&self) -> SessionHandle {
        self.hub.handle(self.session.clone())
    }

    /// The transport holding the attachment.
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

    /// Wakes the task waiting for this attachment's events, if one is: for a transport that
    /// took events from another task while handling ([`Attachment::begin_handling`]) and left
    /// some there for the waiting task to take.
    pub fn wake(&self) {
        self.wake.waker.wake();
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
        if let Some(event) = self.next_pending() {
            return Ok(Some(event));
        }
        if self.said_goodbye {
            let state = lock(&self.session.state);
            return Err(match state.evicted {
                Some((id, CloseReason::Unavailable)) if id == self.id => CloseReason::Unavailable,
                _ => CloseReason::Shutdown,
            });
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
            let reason = match state.evicted {
                Some((id, reason)) if id == self.id => reason,
                _ => CloseReason::Superseded,
            };
            if reason == CloseReason::Unavailable && !self.said_goodbye {
                // Told, not left in silence: resume (elsewhere, or here once Redis is back).
                self.said_goodbye = true;
                return Ok(Some(Event::notice(
                    self.position,
                    "reconnect",
                    json!({"reason": "redis", "message": "the session store is unreachable from this server; resume from your last cursor"}),
                )));
            }
            return Err(reason);
        }
        let last_seq = state.ring.last_seq();
        let mut direct = None;
        if last_seq > self.position {
            // The ring holds events `first..=last_seq` (none if `first` is past `last_seq`).
            let first = state.ring.first_seq();
            if self.position + 1 < first {
                let lost = first - 1 - self.position;
                metrics::counter!("switchyard_gaps_total", "reason" => "overflow").increment(1);
                state.history.push(HistoryKind::Gap, self.transport, None, Detail::Overflow);
                self.position = first - 1;
                self.notices.push(Event::notice(
                    self.position,
                    "gap",
                    json!({"reason": "overflow", "lost": lost,
                           "message": format!("{lost} events were dropped from the session buffer before they could be delivered")}),
                ));
            }
            {
                let mut batch = state.ring.bodies_after(self.position, BATCH);
                self.position += batch.len() as u64;
                // The usual case, one new event with nothing before it, is handed out as it is:
                // the queue's reserve, extend and pop cost about 100 instructions (callgrind).
                if batch.len() == 1 && self.pending.is_empty() && self.notices.is_empty() {
                    direct = batch.next().cloned();
                } else {
                    // Exactly the batch (the queue is empty here): the storage is never larger
                    // than the largest batch, where `VecDeque`'s own growth could double it.
                    self.pending.reserve_exact(batch.len());
                    self.pending.extend(batch.cloned());
                }
            }
            state.delivered = state.delivered.max(self.position);
            let (position, caught_up) = (self.position, self.position == last_seq);
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
        if let Some(body) = direct {
            return Ok(Some(Event { seq: self.position, notice: false, body }));
        }
        if self.pending.is_empty() && self.notices.is_empty() && self.hub.inner.closing.load(Ordering::Acquire) {
            self.said_goodbye = true;
            self.notices.push(Event::notice(
                self.position,
                "reconnect",
                json!({"reason": "shutdown", "message": "the server is restarting; resume from your last cursor"}),
            ));
        }
        Ok(self.next_pending())
    }

    /// The next notice, or else the next event copied out of the ring, numbered.
    #[inline]
    fn next_pending(&mut self) -> Option<Event> {
        if !self.notices.is_empty() {
            return Some(self.notices.remove(0));
        }
        let seq = self.position + 1 - self.pending.len() as u64;
        self.pending.pop_front().map(|body| Event { seq, notice: false, body })
    }
}

/// An attachment's notices: two at most (a hello and a gap), kept inline.
type Notices = smallvec::SmallVec<[Event; 2]>;

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut state = lock(&self.session.state);
        let holds = state.attached.as_ref().is_some_and(|a| a.id == self.id);
        let evicted = matches!(state.evicted, Some((id, _)) if id == self.id);
        counters::transport_closed(self.transport, holds);
        if (holds || evicted) && self.hub.inner.cluster.is_some() {
            // Detached in Redis too (a transport the hub evicted here still holds it there).
            let (hub, sid, gen, delivered) = (self.hub.clone(), self.session.sid.clone(), self.gen, self.position);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { hub.cluster_detach(&sid, gen, delivered).await });
            }
        }
        if holds {
            let why = if self.hub.inner.closing.load(Ordering::Relaxed) { Detail::Close(CloseReason::Shutdown) } else { Detail::Closed };
            state.history.push(HistoryKind::Detached, self.transport, None, why);
            state.attached = None;
            state.detached_at = Some(Instant::now());
            tracing::debug!(sid = self.session.sid.short(), transport = self.transport.as_str(), "detached");
        }
    }
}

/// Detaches the attached transport on the hub's own initiative; it ends with `reason`.
pub(super) fn evict(state: &mut State, reason: CloseReason, sid: &Sid) {
    if let Some(attached) = state.attached.take() {
        tracing::info!(sid = sid.short(), reason = reason.as_str(), "detaching transport");
        metrics::counter!("switchyard_detaches_total", "reason" => reason.as_str()).increment(1);
        if let Some(transport) = state.last_transport {
            state.history.push(HistoryKind::Detached, transport, None, Detail::Close(reason));
        }
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
pub(super) struct Signal {
    changes: AtomicU64,
    handling: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn new() -> Signal {
        // Starts at 1: a new attachment, having seen 0, looks under the lock at once.
        Signal { changes: AtomicU64::new(1), handling: AtomicBool::new(false), waker: AtomicWaker::new() }
    }

    #[inline]
    pub(super) fn notify(&self) {
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    use super::super::testing::{hub, next};
    use super::super::HubConfig;
    use super::*;

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

    /// What an attachment holds beyond the ring is one batch of pointers at most, however far
    /// behind it is, and the events it hands out are numbered as the ring numbered them, across
    /// the ring's wrap and, on a resume from a cursor the ring moved past, after a gap.
    #[tokio::test]
    async fn an_attachment_holds_at_most_a_batch_and_numbers_what_it_hands_out() {
        let buffer = BATCH * 2;
        let hub = hub(buffer);
        let mut a = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = a.sid().clone();
        assert_eq!(next(&mut a).await.0, "session");
        let total = (BATCH * 5 / 2) as u64;
        for i in 1..=total {
            hub.emit(&sid, "n", &json!(i)).await.unwrap();
            if i == (BATCH / 2) as u64 {
                // A few read: the first batch (all emitted so far) is copied out.
                for seq in 1..=4 {
                    assert_eq!(a.try_recv().unwrap().unwrap().seq, seq);
                }
            }
        }
        // The ring (2 batches) has wrapped past what was copied out, but not past anything the
        // reader had yet to copy: still attached, it gets every event in order.
        for seq in 5..=total {
            let event = a.try_recv().unwrap().expect("an event");
            assert_eq!((event.seq, event.notice, event.data()), (seq, false, seq.to_string().as_str()));
            assert!(a.pending.capacity() <= BATCH, "pending storage {} past a batch", a.pending.capacity());
        }
        assert!(a.try_recv().unwrap().is_none());
        drop(a);

        let cursor = Cursor::event(sid.clone(), 10).to_string();
        let mut b = hub.attach(Transport::Sse, Some(sid.as_str()), Some(&cursor)).await.unwrap();
        assert_eq!(next(&mut b).await.0, "session");
        let first = total - buffer as u64 + 1;
        let gap = next(&mut b).await;
        assert_eq!((gap.0.as_str(), gap.1, gap.2), ("gap", first - 1, true));
        assert!(gap.3.contains(&format!("\"lost\":{}", first - 11)), "{}", gap.3);
        for seq in first..=total {
            assert_eq!(next(&mut b).await.1, seq);
        }
        assert!(b.try_recv().unwrap().is_none());
    }

    /// The usual round trip (one reply, nothing else waiting) hands the event out as it is: the
    /// queue is not used, so it never holds storage; two at once go through it, in order.
    #[tokio::test]
    async fn a_lone_new_event_is_handed_out_without_the_queue() {
        let hub = hub(8);
        let mut a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        let sid = a.sid().clone();
        assert_eq!(next(&mut a).await.0, "session");
        for seq in 1..=3 {
            hub.emit(&sid, "n", &json!(seq)).await.unwrap();
            let event = a.try_recv().unwrap().expect("the new event");
            assert_eq!((event.seq, event.notice, event.data()), (seq, false, seq.to_string().as_str()));
            assert!(a.try_recv().unwrap().is_none());
        }
        assert_eq!(a.pending.capacity(), 0, "the queue was used for a lone event");
        hub.emit(&sid, "n", &json!(4)).await.unwrap();
        hub.emit(&sid, "n", &json!(5)).await.unwrap();
        assert_eq!(a.try_recv().unwrap().map(|e| e.seq), Some(4));
        assert_eq!(a.try_recv().unwrap().map(|e| e.seq), Some(5));
        assert!(a.try_recv().unwrap().is_none());
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
        assert_eq!(hub.info(&sid).await.unwrap().transport, Some(Transport::Sse));
    }
}
