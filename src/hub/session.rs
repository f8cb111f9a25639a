//! One session's state: its event ring, the numbers of what was sent and received, its inbox,
//! its send budget; and the per-event write path into it ([`Hub::emit`] and friends).
//!
//! A session is one `Mutex`ed [`State`] plus a few atomics beside it. The lock is held for a few
//! pointer copies and never across an `.await` or a socket write; what is read without it (the
//! highest client `seq` handled, the room count) is kept in atomics written under it, so the
//! common questions on the per-event path take no lock at all.
//!
//! **The buffer is the queue.** The ring keeps the session's most recent events whether or not
//! a transport wrote them, since the server cannot know what a dropped client really received;
//! an attachment keeps only a position in it (see `attachment.rs`). So appending is the whole
//! of an emit: one event into the ring and one wake-up, and a reader overtaken by the ring is
//! evicted here, where the loss happens.
//!
//! The inbox is a separate async lock: client events of one session are handled one at a time
//! in arrival order ([`SessionHandle::inbox`]), whichever transports they came over, without
//! holding the state lock while a handler runs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde_json::Value;
use tokio::time::Instant;

use crate::protocol::{Cursor, Sid};

use super::attachment::{evict, Attached, CloseReason};
use super::event::{validate_event_name, Body, Rendered};
use super::history::{History, SessionHistory};
use super::lease::{self, Lease};
use super::ring::Ring;
use super::cluster::Cluster;
use super::{Hub, HubError, SessionInfo, Transport};

pub(super) struct Session {
    pub(super) sid: Sid,
    pub(super) state: Mutex<State>,
    /// Held while the session's client events are handled, so that they are handled one at a
    /// time in arrival order, whichever transports they came over ([`SessionHandle::inbox`]).
    pub(super) inbox: tokio::sync::Mutex<()>,
    /// The highest client `seq` handled; told to the client in every `session` hello.
    pub(super) received: AtomicU64,
    /// How many rooms the session is in, kept beside `State::rooms` (written under the lock)
    /// so that asking a session in no room for its rooms, as the default app does on every
    /// message, takes no lock.
    pub(super) room_count: AtomicUsize,
    /// Cluster mode: the highest client `seq` accepted and not yet written to Redis (0: none).
    /// It goes with the next event emitted to the session, or in the background once the
    /// handler finished without one, so a reply and the record of what it answers are stored
    /// together (see `cluster/mod.rs` and `lease.rs`).
    pub(super) unsaved: AtomicU64,
    /// Cluster mode: when (ms since the hub was made) Redis last said the session exists; 0:
    /// never (see `mirror.rs`).
    pub(super) verified: AtomicU64,
    /// Cluster mode: whether `State::rooms` is the session's rooms as Redis has them (set while
    /// this node holds the inbox's lease: read when it was granted, kept by this node's own
    /// joins and leaves, dropped when another node changes them; see `lease.rs`).
    pub(super) rooms_current: AtomicBool,
    /// Cluster mode: the session's inbox as this node holds it in Redis (see `lease.rs`).
    pub(super) lease: Lease,
}

pub(super) struct State {
    /// The most recent events, oldest first, at most `HubConfig::buffer` of them, and the
    /// number of the last event emitted (see `ring.rs`). Allocated on the first emit and grown
    /// with what it holds, so idle sessions cost no ring.
    pub(super) ring: Ring,
    /// The highest event number handed to any attachment: where an attach without a cursor
    /// resumes.
    pub(super) delivered: u64,
    /// The transport holding the session, if any.
    pub(super) attached: Option<Attached>,
    /// The kind of the most recent attachment, so a long-poll that follows a long-poll is a
    /// continuation rather than a new transport.
    pub(super) last_transport: Option<Transport>,
    /// When the session lost its last transport; `None` while attached.
    pub(super) detached_at: Option<Instant>,
    /// Set, under this lock, when the expiry task removes the session, so that a caller that
    /// found the session just before treats it as gone.
    pub(super) removed: bool,
    /// When the current (or last) transport attached, for [`Hub::info`].
    pub(super) attached_since: Option<SystemTime>,
    /// The rooms this session is in; mirrored by the hub's room table (see `rooms.rs`).
    pub(super) rooms: BTreeSet<Arc<str>>,
    /// Who the client is, when auth is on: the subject of the token that opened the session.
    pub(super) subject: Option<Arc<str>>,
    /// The last attachment the hub detached on its own, and why; that attachment reports this
    /// reason instead of [`CloseReason::Superseded`].
    pub(super) evicted: Option<(u64, CloseReason)>,
    /// Token bucket of [`Hub::admit`]: tokens left, and when they were last topped up.
    pub(super) send_tokens: f64,
    pub(super) send_refill: Instant,
    /// Cluster mode: attaches of this node waiting for Redis's answer; while there are any,
    /// events published to the node are kept in `early` and applied once the ring is filled
    /// from Redis (see `mirror.rs`).
    pub(super) syncing: u32,
    pub(super) early: Option<Vec<(u64, Arc<Body>)>>,
    /// Cluster mode: the latest attachment generation another node took the session over with,
    /// as this node heard; an attach of this node with an older generation, answered after
    /// the takeover was heard, ends at once as superseded.
    pub(super) taken_over: u64,
    /// The session's last few attaches and detaches ([`Hub::history`]).
    pub(super) history: History,
}

impl Hub {
    /// Takes one send from the session's budget (a token bucket of `send_rate` per second and
    /// `send_burst` deep), or refuses it with [`HubError::RateLimited`].
    /// In cluster mode the budget is this node's: a client spreading its sends over `n` nodes
    /// gets up to `n` times the rate.
    ///
    /// Returns the session, so that the send it admitted is dispatched without looking the
    /// session up again.
    pub async fn admit(&self, sid: &Sid) -> Result<SessionHandle, HubError> {
        let session = self.local(sid).await?;
        self.take_send(&session)?;
        Ok(self.handle(session))
    }

    /// [`Hub::admit`] for a session already in hand (a transport's attached session): no
    /// table lookup, which was a tenth of the hub's share of a Socket.IO long-polling POST
    /// (`perf`). In cluster mode the session is looked up as [`Hub::admit`] does.
    pub async fn admit_to(&self, handle: &SessionHandle) -> Result<(), HubError> {
        if self.inner.cluster.is_some() {
            return Box::pin(self.admit(handle.sid())).await.map(drop);
        }
        self.take_send(&handle.session)
    }

    /// Takes one send from `session`'s budget (see [`Hub::admit`]).
    fn take_send(&self, session: &Session) -> Result<(), HubError> {
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

    /// Records who opened the session (the auth subject); handlers see it in their context.
    pub async fn set_subject(&self, sid: &Sid, subject: Arc<str>) -> Result<(), HubError> {
        let session = self.local(sid).await?;
        if let Some(cluster) = &self.inner.cluster {
            Box::pin(cluster.set_subject(sid, &subject)).await?;
        }
        lock(&session.state).subject = Some(subject);
        Ok(())
    }

    /// Who opened the session, if auth is on.
    pub async fn subject(&self, sid: &Sid) -> Option<Arc<str>> {
        let session = self.local(sid).await.ok()?;
        let subject = lock(&session.state).subject.clone();
        subject
    }

    /// The local session of `sid`: in memory, the session; in cluster mode, this node's mirror
    /// of it, known to exist in Redis (see `mirror.rs`).
    pub(super) async fn local(&self, sid: &Sid) -> Result<Arc<Session>, HubError> {
        match &self.inner.cluster {
            Some(cluster) => Box::pin(self.cluster_session(cluster, sid)).await,
            None => self.find(sid).ok_or(HubError::NoSession),
        }
    }

    /// A snapshot of one session, for debugging and tests. In cluster mode it is the
    /// cluster's view, the same on every node; `None` also when Redis cannot be reached.
    pub async fn info(&self, sid: &Sid) -> Option<SessionInfo> {
        if let Some(cluster) = &self.inner.cluster {
            let info = Box::pin(cluster.info(sid, self.inner.config.buffer)).await.ok()??;
            return Some(SessionInfo {
                transport: info.transport,
                last_seq: info.last_seq,
                buffered: info.buffered,
                detached_for: info.detached_for,
                attached_since: info.attached_since,
                rooms: info.rooms,
            });
        }
        let session = self.find(sid)?;
        let state = lock(&session.state);
        if state.removed {
            return None;
        }
        Some(SessionInfo {
            transport: state.attached.as_ref().and(state.last_transport),
            last_seq: state.ring.last_seq(),
            buffered: state.ring.len(),
            detached_for: state.detached_at.map(|t| t.elapsed()),
            attached_since: state.attached.as_ref().and(state.attached_since),
            rooms: state.rooms.iter().map(ToString::to_string).collect(),
        })
    }

    /// The session's last few attaches and detaches, and how far its transports got, for the
    /// operator page. In cluster mode, what this node saw of it (`None` if it never served it).
    pub async fn history(&self, sid: &Sid) -> Option<SessionHistory> {
        let session = self.find(sid)?;
        let state = lock(&session.state);
        if state.removed {
            return None;
        }
        Some(SessionHistory { delivered: state.delivered, entries: state.history.entries() })
    }

    /// Appends an event to a session's ring and wakes its transport. Returns the event's cursor.
    ///
    /// `data` is any JSON value; the event name must be non-empty, at most 128 bytes and free
    /// of control characters ([`HubError::EventName`] otherwise). A sid that names no live
    /// session is [`HubError::NoSession`].
    ///
    /// ```
    /// # use serde_json::json;
    /// # use switchyard::hub::{Hub, HubConfig};
    /// # use switchyard::Transport;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let hub = Hub::new(HubConfig::default(), tokio_util::sync::CancellationToken::new());
    /// # let attachment = hub.attach(Transport::Sse, None, None).await.unwrap();
    /// # let sid = attachment.sid().clone();
    /// let cursor = hub.emit(&sid, "score", &json!({ "home": 2, "away": 1 })).await.unwrap();
    /// assert_eq!(cursor.to_string(), format!("{sid}.1"));
    /// # }
    /// ```
    pub async fn emit(&self, sid: &Sid, name: &str, data: &Value) -> Result<Cursor, HubError> {
        self.emit_json(sid, name, data.to_string()).await
    }

    /// [`Hub::emit`] with the data already rendered as JSON text (saves a `Value` in between
    /// when the caller serializes its own type). `data` must be valid JSON.
    pub async fn emit_json(&self, sid: &Sid, name: &str, data: String) -> Result<Cursor, HubError> {
        if let Some(cluster) = &self.inner.cluster {
            validate_event_name(name)?;
            let local = self.find(sid);
            let seq = Box::pin(self.cluster_append(cluster, sid, local.as_ref(), Body::shared(name, data))).await?;
            return Ok(Cursor::event(sid.clone(), seq));
        }
        let session = self.find(sid).ok_or(HubError::NoSession)?;
        self.emit_json_to(&self.handle(session), name, data).await
    }

    /// [`Hub::emit_json`] to a session already in hand: no table lookup.
    pub async fn emit_json_to(&self, handle: &SessionHandle, name: &str, data: String) -> Result<Cursor, HubError> {
        validate_event_name(name)?;
        let seq = self.append_to(&handle.session, Body::shared(name, data)).await?;
        Ok(Cursor::event(handle.session.sid.clone(), seq))
    }

    /// Emits an event rendered ahead of time to a session already in hand: the event shares the
    /// rendered name and data rather than validating, serializing and allocating its own.
    /// Returns the event's number in the session; the per-event path of a constant reply, so it
    /// leaves building a [`Cursor`] (a count on the sid) to the caller that wants one.
    pub async fn emit_rendered_to(&self, handle: &SessionHandle, event: &Rendered) -> Result<u64, HubError> {
        self.append_to(&handle.session, event.0.clone()).await
    }

    /// Appends an event to a session in hand: to its ring in memory, through Redis in cluster
    /// mode.
    #[inline]
    pub(super) async fn append_to(&self, session: &Arc<Session>, body: Arc<Body>) -> Result<u64, HubError> {
        match &self.inner.cluster {
            // Boxed: the in-memory path's future stays as small as it was before cluster mode
            // (a future holds every future it awaits; moving it costs its size).
            Some(cluster) => Box::pin(self.cluster_append(cluster, &session.sid, Some(session), body)).await,
            None => self.append(session, body).ok_or(HubError::NoSession),
        }
    }

    /// Appends an event to a session's ring and wakes its transport; `None` if the session is
    /// gone. The one write path of every emit in memory, to one session or many (rooms).
    #[inline]
    pub(super) fn append(&self, session: &Session, body: Arc<Body>) -> Option<u64> {
        let mut state = lock(&session.state);
        if state.removed {
            return None;
        }
        Some(self.push_locked(&mut state, session, body))
    }

    /// Appends an event to a ring whose lock is held, dropping the oldest if full (and
    /// detaching a reader that had not copied it out), and wakes the attachment.
    #[inline]
    pub(super) fn push_locked(&self, state: &mut State, session: &Session, body: Arc<Body>) -> u64 {
        // The clock is read only with an age bound.
        let tick = if self.inner.config.buffer_age.is_some() { self.age_tick(Instant::now()) } else { None };
        let (seq, dropped) = state.ring.push(body, self.inner.config.buffer, tick);
        // The attached reader has not even copied out the event now lost: it cannot keep up.
        if let Some(dropped) = dropped {
            if state.attached.as_ref().is_some_and(|a| a.read_upto < dropped) {
                evict(state, CloseReason::SlowConsumer, &session.sid);
            }
        }
        if let Some(attached) = &state.attached {
            attached.wake.notify();
        }
        seq
    }

    /// A handle on a session found in the table.
    pub(super) fn handle(&self, session: Arc<Session>) -> SessionHandle {
        SessionHandle { session, cluster: self.inner.cluster.clone() }
    }
}

/// Exclusive right to handle one session's client events, from [`SessionHandle::inbox`]. It
/// borrows the handle rather than holding a count of its own: taking and releasing it is then
/// the lock alone, on the per-event path. In cluster mode it also holds the session's ticket
/// in Redis, which this node keeps as a lease after the event until another node asks for the
/// inbox (see `lease.rs`); what was handled is recorded with the first reply, or in the
/// background after the handler.
pub struct Inbox<'a> {
    handle: &'a SessionHandle,
    /// Taken out when the inbox is dropped in cluster mode, to be released before the lease is
    /// looked at again.
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// Cluster mode: the session's granted ticket in Redis (the node's ticket task renews its
    /// lease while the handler runs).
    ticket: Option<u64>,
}

/// One session, already found: what a handler's context holds, so that answering the session
/// it serves costs no lookup in the session table.
#[derive(Clone)]
pub struct SessionHandle {
    pub(super) session: Arc<Session>,
    pub(super) cluster: Option<Cluster>,
}

impl SessionHandle {
    /// The session's id.
    pub fn sid(&self) -> &Sid {
        &self.session.sid
    }

    /// Takes the session's inbox: until the returned guard is finished or dropped, no other
    /// client event of the session is handled, on this node or (cluster mode) any other.
    /// Waiters are served in arrival order.
    ///
    /// Fails in cluster mode only: the session is gone ([`HubError::NoSession`]) or Redis
    /// cannot be reached ([`HubError::Unavailable`]).
    pub async fn inbox(&self) -> Result<Inbox<'_>, HubError> {
        // Tried first without a wait: tokio's lock hands a released inbox to its first waiter
        // directly, so an inbox that is free has no one waiting for it, and the order is kept;
        // the wait's future costs about 60 instructions per event more (callgrind).
        let guard = match self.session.inbox.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.session.inbox.lock().await,
        };
        let ticket = match &self.cluster {
            None => None,
            Some(cluster) => Some(match lease::held(&self.session, cluster) {
                Some(ticket) => ticket,
                None => Box::pin(lease::take(&self.session, cluster)).await?,
            }),
        };
        Ok(Inbox { handle: self, guard: Some(guard), ticket })
    }

    /// The rooms the session is in (in cluster mode, as Redis has them; none if it cannot be
    /// reached).
    pub async fn rooms(&self) -> Vec<String> {
        if let Some(cluster) = &self.cluster {
            if !self.session.rooms_current.load(Ordering::Acquire) {
                return Box::pin(cluster.rooms(&self.session.sid)).await.unwrap_or_default();
            }
        }
        if self.session.room_count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        lock(&self.session.state).rooms.iter().map(ToString::to_string).collect()
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
        let session = &self.handle.session;
        if seq <= session.received.load(Ordering::Acquire) {
            return false;
        }
        session.received.store(seq, Ordering::Release);
        if self.ticket.is_some() {
            session.unsaved.fetch_max(seq, Ordering::AcqRel);
        }
        true
    }
}

impl Drop for Inbox<'_> {
    fn drop(&mut self) {
        if let (Some(ticket), Some(cluster)) = (self.ticket.take(), &self.handle.cluster) {
            lease::finish(&self.handle.session, cluster, ticket, self.guard.take());
        }
    }
}

/// Session locks are never held across a panic-prone call, but a poisoned lock must not take
/// the whole hub down with it.
#[inline]
pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{hub, next};
    use super::super::{CloseReason, Transport};

    /// The inbox is taken without a wait when it is free, and that never jumps the queue: a
    /// released inbox goes to the first that waited for it, not to a later taker.
    #[tokio::test]
    async fn an_inbox_goes_to_its_waiters_in_order_before_a_later_taker() {
        use std::task::Poll;
        let hub = hub(8);
        let a = hub.attach(Transport::WebSocket, None, None).await.unwrap();
        let session = a.session();
        let held = session.inbox().await.unwrap();
        let mut first = std::pin::pin!(session.inbox());
        assert!(futures_util::poll!(first.as_mut()).is_pending(), "the inbox is held");
        drop(held);
        let mut later = std::pin::pin!(session.inbox());
        assert!(futures_util::poll!(later.as_mut()).is_pending(), "a later taker went ahead of a waiter");
        let Poll::Ready(first) = futures_util::poll!(first.as_mut()) else { panic!("the waiter did not get the released inbox") };
        drop(first.unwrap());
        assert!(matches!(futures_util::poll!(later.as_mut()), Poll::Ready(Ok(_))), "the later taker gets it next");
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
        assert_eq!(hub.info(&sid).await.unwrap().transport, None);
        drop(a);
        let mut b = hub.attach(Transport::Sse, Some(sid.as_str()), Some(&hello)).await.unwrap();
        next(&mut b).await;
        let gap = next(&mut b).await;
        assert_eq!((gap.0.as_str(), gap.1, gap.2), ("gap", 7, true));
        assert!(gap.3.contains("\"lost\":7"), "{}", gap.3);
        for i in 8..=10 {
            assert_eq!(next(&mut b).await.1, i);
        }
        assert_eq!(hub.info(&sid).await.unwrap().buffered, 3);
    }
}
