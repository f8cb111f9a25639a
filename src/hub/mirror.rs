//! Cluster mode, the hub's side: this node's table as a mirror of the sessions it serves.
//!
//! In cluster mode a session's truth is in Redis (see `cluster/mod.rs`). A node keeps a local
//! session (the same [`Session`] the in-memory hub uses) for each session it touched lately:
//!
//! * one it **holds** (a transport of this node is attached) has a ring holding the events
//!   after its attachment's start, filled from Redis on attach and then by the events published
//!   to this node, in number order: a missing number is fetched from the buffer, a repeated one
//!   dropped. Its attachment reads that ring exactly as in memory.
//! * one it only **sends into** (a POST that landed here, a handler emitting to it) is a name
//!   known to exist, checked against Redis again after [`VERIFIED_FOR`].
//!
//! A local session not attached here is dropped after the grace period, with no hook: expiry,
//! and the hooks, happen once per session for the whole cluster (`cluster/node.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Sid;

use super::attachment::{evict, parse_request, AttachRequest, Attachment, CloseReason, GapReason};
use super::cluster::{Attached, Cluster};
use super::event::Body;
use super::session::{lock, Session, State};
use super::{Hub, HubError};

/// How long a local session that this node does not hold is trusted to exist without asking
/// Redis again. A session that expired meanwhile is then still sent into for at most this
/// long, and what is sent is refused by Redis (`NoSession`) rather than lost silently.
const VERIFIED_FOR: Duration = Duration::from_secs(1);

/// How long a local session only sent into (not held here) is kept after Redis last said it
/// exists.
const MIRROR_IDLE: Duration = Duration::from_secs(5);

impl Hub {
    /// How long a session's keys live in Redis without being touched: past its grace period,
    /// and past two checks of a held session by the expiry index. A safety net only: sessions
    /// are removed by the expiry index; this removes those whose every node vanished.
    pub(super) fn cluster_ttl(&self) -> Duration {
        self.inner.config.grace + self.cluster_recheck() * 2 + Duration::from_secs(60)
    }

    /// How often the expiry index looks again at a session held by a live node.
    pub(super) fn cluster_recheck(&self) -> Duration {
        self.inner.config.grace.max(Duration::from_secs(10))
    }

    /// Milliseconds since the hub was made, for [`Session::verified`].
    fn stamp(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The local session of `sid` in cluster mode, known to exist in Redis: a session held
    /// here, or one checked less than [`VERIFIED_FOR`] ago, or else asked of Redis now.
    pub(super) async fn cluster_session(&self, cluster: &Cluster, sid: &Sid) -> Result<Arc<Session>, HubError> {
        if let Some(session) = self.find(sid) {
            let held = {
                let state = lock(&session.state);
                !state.removed && state.attached.is_some()
            };
            let checked = session.verified.load(Ordering::Relaxed);
            if held || (checked > 0 && self.stamp().saturating_sub(checked) < super::cluster::millis(VERIFIED_FOR)) {
                return Ok(session);
            }
        }
        let Some(subject) = cluster.lookup(sid).await? else {
            if self.find(sid).is_some_and(|s| lock(&s.state).attached.is_none()) {
                self.remove_local(sid);
            }
            return Err(HubError::NoSession);
        };
        let session = self.mirror(sid)?;
        session.verified.store(self.stamp(), Ordering::Relaxed);
        let mut state = lock(&session.state);
        if state.subject.is_none() {
            state.subject = subject;
        }
        if state.attached.is_none() {
            // Only sent into from here: the local sweep drops it within a few seconds of the
            // last check rather than after a whole grace period, so that a node taking the sends
            // of many sessions held elsewhere does not fill its session limit with them.
            let grace = self.inner.config.grace;
            let keep = grace.min(MIRROR_IDLE);
            state.detached_at = Instant::now().checked_sub(grace - keep).or(state.detached_at);
        }
        drop(state);
        Ok(session)
    }

    /// The local session of `sid`, made (detached, so the local sweep drops it after the
    /// grace period unless a transport attaches) if there is none.
    fn mirror(&self, sid: &Sid) -> Result<Arc<Session>, HubError> {
        if let Some(session) = self.find(sid) {
            if !lock(&session.state).removed {
                return Ok(session);
            }
        }
        let session = self.insert(sid.clone())?;
        lock(&session.state).detached_at = Some(Instant::now());
        Ok(session)
    }

    /// Attaches in cluster mode: the session is looked up, taken over and replayed from Redis;
    /// a new one is recorded there first. See [`Hub::attach_with`].
    pub(super) async fn attach_clustered<E: From<HubError>>(
        &self,
        cluster: &Cluster,
        request: &AttachRequest<'_>,
        gate: impl FnOnce() -> Result<(), E>,
    ) -> Result<Attachment, E> {
        if !cluster.is_reachable() {
            return Err(HubError::Unavailable.into());
        }
        let gap = match parse(request.sid, request.cursor) {
            Ok(None) => None,
            Err(reason) => Some(reason),
            Ok(Some((sid, cursor))) => {
                let session = self.mirror(&sid)?;
                {
                    let mut state = lock(&session.state);
                    state.syncing += 1;
                    state.early.get_or_insert_with(Vec::new);
                }
                let result = cluster.attach(&sid, request.transport, cursor, self.cluster_ttl(), self.inner.config.buffer).await;
                let held = match result {
                    Ok(Attached::Held(held)) => held,
                    other => {
                        let idle = {
                            let mut state = lock(&session.state);
                            end_sync(&mut state);
                            state.attached.is_none()
                        };
                        match other {
                            Err(err) => return Err(err.into()),
                            Ok(Attached::Missing) => {
                                if idle {
                                    self.remove_local(&sid);
                                }
                                return self.attach_fresh(cluster, request, Some(GapReason::Expired), gate).await;
                            }
                            _ => return self.attach_fresh(cluster, request, Some(GapReason::BadCursor), gate).await,
                        }
                    }
                };
                // Never lowered: with the inbox's lease this node may have handled events whose
                // mark is on its way to Redis (see `lease.rs`), and the hello tells this number.
                session.received.fetch_max(held.received, Ordering::AcqRel);
                session.verified.store(self.stamp(), Ordering::Relaxed);
                let behind = {
                    let mut state = lock(&session.state);
                    let buffer = self.inner.config.buffer;
                    state.ring.reset(held.first - 1);
                    for body in held.events {
                        state.ring.push(body, buffer, None);
                    }
                    state.last_transport = held.previous;
                    // Where an attach without a cursor starts: what Redis says was handed out.
                    state.delivered = held.start;
                    if held.subject.is_some() {
                        state.subject = held.subject;
                    }
                    let behind = self.apply_early(&mut state);
                    end_sync(&mut state);
                    behind
                };
                if let Some(after) = behind {
                    self.spawn_catch_up(session.clone(), after);
                }
                let attachment = self.attach_to(session.clone(), request, true, cursor.map(|_| held.start), None, held.gen);
                let attachment = attachment.expect("a session attached in Redis is not removed locally meanwhile");
                // Another node may have taken the session over while this attach was answered:
                // its takeover message found no attachment to end, so this one ends now.
                let mut state = lock(&session.state);
                if state.taken_over > held.gen && state.attached.as_ref().is_some_and(|a| a.gen == held.gen) {
                    evict(&mut state, CloseReason::Superseded, &sid);
                }
                drop(state);
                return Ok(attachment);
            }
        };
        self.attach_fresh(cluster, request, gap, gate).await
    }

    /// A new session, recorded in Redis before it is attached.
    async fn attach_fresh<E: From<HubError>>(
        &self,
        cluster: &Cluster,
        request: &AttachRequest<'_>,
        gap: Option<GapReason>,
        gate: impl FnOnce() -> Result<(), E>,
    ) -> Result<Attachment, E> {
        gate()?;
        let session = self.create()?;
        if let Err(err) = cluster.create(&session.sid, request.transport, self.cluster_ttl(), self.cluster_recheck()).await {
            self.remove_local(&session.sid);
            return Err(err.into());
        }
        session.verified.store(self.stamp(), Ordering::Relaxed);
        Ok(self.attach_to(session, request, false, None, gap, 1).expect("a session just created is not expired"))
    }

    /// Applies the events that arrived while an attach was being answered: those after the
    /// ring's last, in order. Returns where to fetch from if one is missing.
    fn apply_early(&self, state: &mut State) -> Option<u64> {
        let mut early = std::mem::take(state.early.as_mut()?);
        early.sort_by_key(|(seq, _)| *seq);
        for (seq, body) in early {
            let last = state.ring.last_seq();
            if seq == last + 1 {
                state.ring.push(body, self.inner.config.buffer, None);
            } else if seq > last + 1 {
                return Some(last);
            }
        }
        None
    }

    /// Appends an event to session `sid` in Redis; `session` is its local session when the
    /// caller has it (its unsaved client `seq` mark goes with the event). If this node holds
    /// the session, the event goes into the local ring at once.
    pub(super) async fn cluster_append(&self, cluster: &Cluster, sid: &Sid, session: Option<&Arc<Session>>, body: Arc<Body>) -> Result<u64, HubError> {
        let mark = session.map_or(0, |s| s.unsaved.swap(0, Ordering::AcqRel));
        match cluster.emit(sid, &body, self.inner.config.buffer, mark).await {
            Ok((seq, mine)) => {
                if mine {
                    if let Some(local) = session.cloned().or_else(|| self.find(sid)) {
                        self.ingest(&local, seq, body);
                    }
                }
                Ok(seq)
            }
            Err(err) => {
                if let Some(session) = session.filter(|_| mark > 0) {
                    session.unsaved.fetch_max(mark, Ordering::AcqRel);
                }
                Err(err)
            }
        }
    }

    /// A message on this node's channel: an event for a session it holds (`e`), a takeover
    /// of one by another node (`s`), an ask for the inbox of a session whose lease it holds
    /// (`h`), changed rooms of such a session (`r`), or a client's answer to a request of this
    /// node (`a`).
    pub(super) fn on_message(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else { return };
        let mut parts = text.splitn(5, '\n');
        let (Some(kind), Some(sid), Some(number)) = (parts.next(), parts.next(), parts.next()) else { return };
        let (Ok(sid), Ok(number)) = (sid.parse::<Sid>(), number.parse::<u64>()) else { return };
        match kind {
            // A client's answer to a request of this node, taken by another (see `acks.rs`).
            "a" => return self.answer_from_node(&sid, number, parts.next().unwrap_or("null")),
            "h" => return self.asked_to_hand_over(&sid, number),
            "r" => return self.rooms_changed(&sid),
            _ => {}
        }
        let Some(session) = self.find(&sid) else { return };
        match kind {
            "e" => {
                let (Some(name), Some(data)) = (parts.next(), parts.next()) else { return };
                self.ingest(&session, number, Body::from_entry(name, data));
            }
            "s" => {
                let mut state = lock(&session.state);
                state.taken_over = state.taken_over.max(number);
                if state.attached.as_ref().is_some_and(|a| a.gen < number) {
                    evict(&mut state, CloseReason::Superseded, &sid);
                }
            }
            _ => {}
        }
    }

    /// Puts event `seq` into the local ring of a session this node holds, if it is the next one;
    /// fetches what is missing if it is further on; drops it if the ring has it.
    fn ingest(&self, session: &Arc<Session>, seq: u64, body: Arc<Body>) {
        let mut state = lock(&session.state);
        if state.removed {
            return;
        }
        if let Some(early) = &mut state.early {
            early.push((seq, body));
            return;
        }
        let last = state.ring.last_seq();
        if seq <= last {
            return;
        }
        if seq > last + 1 {
            drop(state);
            self.spawn_catch_up(session.clone(), last);
            return;
        }
        self.push_locked(&mut state, session, body);
    }

    /// Fetches from Redis what a local ring misses after `after`, in the background.
    fn spawn_catch_up(&self, session: Arc<Session>, after: u64) {
        let Some(cluster) = self.inner.cluster.clone() else { return };
        let hub = self.clone();
        tokio::spawn(async move {
            let Ok(Some((first, events))) = cluster.fetch(&session.sid, after, hub.inner.config.buffer).await else { return };
            let mut state = lock(&session.state);
            if state.removed || state.early.is_some() {
                return;
            }
            if first > state.ring.last_seq() + 1 {
                // Trimmed from the buffer meanwhile: the reader gets a `gap` for them.
                state.ring.reset(first - 1);
            }
            for (i, body) in events.into_iter().enumerate() {
                if first + i as u64 == state.ring.last_seq() + 1 {
                    hub.push_locked(&mut state, &session, body);
                }
            }
        });
    }

    /// Redis is unreachable: every transport of this node is told to resume and ends, since
    /// events emitted on other nodes could no longer reach it.
    pub(super) fn redis_lost(&self) {
        let mut count = 0;
        self.each_session(|sid, state| {
            if state.attached.is_some() {
                evict(state, CloseReason::Unavailable, sid);
                count += 1;
            }
        });
        tracing::warn!(transports = count, "Redis unreachable: every transport told to resume");
        self.forget_leases();
    }

    /// A session expired cluster-wide, settled by this node: its local session goes, and the
    /// expire hooks run.
    pub(super) fn expired_in_cluster(&self, sid: &Sid, rooms: Vec<String>) {
        self.remove_local(sid);
        let rooms: BTreeSet<Arc<str>> = rooms.into_iter().map(Arc::from).collect();
        self.forget(vec![(sid.clone(), rooms)], true);
    }

    /// The sessions this node holds: sid, attachment generation, highest event handed out.
    pub(super) fn held(&self) -> Vec<(Sid, u64, u64)> {
        let mut held = Vec::new();
        self.each_session(|sid, state| {
            if let Some(attached) = &state.attached {
                held.push((sid.clone(), attached.gen, state.delivered));
            }
        });
        held
    }

    /// Detaches attachment `gen` of `sid` in Redis (if it still holds the session there).
    pub(super) async fn cluster_detach(&self, sid: &Sid, gen: u64, delivered: u64) {
        if let Some(cluster) = &self.inner.cluster {
            let _ = cluster.detach(sid, gen, delivered, self.cluster_ttl(), self.inner.config.grace).await;
        }
    }
}

/// An attach that stopped waiting for Redis is no longer syncing.
fn end_sync(state: &mut State) {
    state.syncing = state.syncing.saturating_sub(1);
    if state.syncing == 0 {
        state.early = None;
    }
}

/// The session and cursor an attach asks for: [`parse_request`], and a cursor of another
/// session than the sid given is one that cannot be placed.
fn parse(sid: Option<&str>, cursor: Option<&str>) -> Result<Option<(Sid, Option<u64>)>, GapReason> {
    match parse_request(sid, cursor)? {
        None => Ok(None),
        Some((sid, Some(cursor))) if cursor.sid != sid => Err(GapReason::BadCursor),
        Some((sid, cursor)) => Ok(Some((sid, cursor.map(|c| c.seq)))),
    }
}

