//! The session table: sid -> session, the one place a session is created, found or removed, and
//! where the session limit is kept.
//!
//! The table is split into [`SHARDS`] shards, each behind its own `RwLock` taken only briefly
//! (read for a lookup, write to insert or remove), so finding a session on the per-event path
//! never waits for a lock over the whole table. The count of live sessions sits beside the
//! table in an atomic, so the limit is checked without taking any shard lock. Sids are random
//! and server-chosen, so the table hashes them with a cheap fold ([`SidHash`]) rather than a
//! keyed hasher.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::time::Instant;

use crate::protocol::Sid;

use super::expiry::Expired;
use super::history::History;
use super::lease::Lease;
use super::ring::Ring;
use super::session::{lock, Session, SessionHandle, State};
use super::{Hub, HubError};

/// Number of shards in the session table; a power of two well above the core count so that
/// session creation on one shard rarely waits for another.
pub(super) const SHARDS: usize = 64;

/// One slice of the session table.
pub(super) type Shard = RwLock<HashMap<Sid, Arc<Session>, SidHash>>;

/// Hashing for the session table. A sid is 128 random bits chosen by the server, so its bytes
/// are already uniformly spread and no client can aim collisions at it: folding them is enough,
/// and far cheaper than SipHash on the per-event path. (Room names are client-chosen, so the room
/// table keeps the default, keyed hasher.)
#[derive(Clone, Copy, Default)]
pub(super) struct SidHash;

impl BuildHasher for SidHash {
    type Hasher = SidHasher;

    fn build_hasher(&self) -> SidHasher {
        SidHasher(0)
    }
}

pub(super) struct SidHasher(u64);

impl std::hash::Hasher for SidHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// An empty session table.
pub(super) fn shards() -> Box<[Shard]> {
    (0..SHARDS).map(|_| RwLock::new(HashMap::with_hasher(SidHash))).collect()
}

impl Hub {
    #[inline]
    fn shard(&self, sid: &Sid) -> &Shard {
        self.shard_of(sid.as_str())
    }

    /// The shard of a sid given by its text.
    #[inline]
    fn shard_of(&self, sid: &str) -> &Shard {
        let index = (SidHash.hash_one(sid) >> 32) as usize % SHARDS;
        &self.inner.shards[index]
    }

    #[inline]
    pub(super) fn find(&self, sid: &Sid) -> Option<Arc<Session>> {
        self.find_text(sid.as_str())
    }

    /// [`Hub::find`] by the sid's text, for a caller that holds no `Sid` (a `Sid` hashes and
    /// compares as its text).
    #[inline]
    pub(super) fn find_text(&self, sid: &str) -> Option<Arc<Session>> {
        self.shard_of(sid).read().unwrap_or_else(PoisonError::into_inner).get(sid).cloned()
    }

    /// A new session with a fresh random sid.
    pub(super) fn create(&self) -> Result<Arc<Session>, HubError> {
        self.insert(Sid::random())
    }

    /// A new session `sid` in the table (in cluster mode also this node's mirror of a session
    /// made elsewhere), within the session limit.
    pub(super) fn insert(&self, sid: Sid) -> Result<Arc<Session>, HubError> {
        let max = self.inner.config.max_sessions;
        if self.inner.live.fetch_add(1, Ordering::Relaxed) >= max {
            self.inner.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(max, "session limit reached; refusing a new session");
            return Err(HubError::Full);
        }
        let session = Arc::new(Session {
            sid: sid.clone(),
            inbox: tokio::sync::Mutex::new(()),
            received: AtomicU64::new(0),
            room_count: AtomicUsize::new(0),
            unsaved: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            rooms_current: AtomicBool::new(false),
            lease: Lease::default(),
            state: Mutex::new(State {
                ring: Ring::new(),
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
                syncing: 0,
                early: None,
                taken_over: 0,
                history: History::default(),
            }),
        });
        let previous = self.shard(&sid).write().unwrap_or_else(PoisonError::into_inner).insert(sid, session.clone());
        if let Some(previous) = previous {
            // A mirror removed and made again (cluster mode): the old one counted too.
            self.inner.live.fetch_sub(1, Ordering::Relaxed);
            lock(&previous.state).removed = true;
        }
        Ok(session)
    }

    /// Runs `visit` on every session's state, a shard at a time, each under its session lock
    /// (shutdown, Redis lost, the sessions a node holds).
    pub(super) fn each_session(&self, mut visit: impl FnMut(&Sid, &mut State)) {
        for shard in &self.inner.shards {
            for session in shard.read().unwrap_or_else(PoisonError::into_inner).values() {
                visit(&session.sid, &mut lock(&session.state));
            }
        }
    }

    /// Runs `visit` on every session, a shard at a time, taking no session lock (what it reads
    /// are atomics: the node's inbox leases in cluster mode).
    pub(super) fn each_session_lockless(&self, mut visit: impl FnMut(&Session)) {
        for shard in &self.inner.shards {
            for session in shard.read().unwrap_or_else(PoisonError::into_inner).values() {
                visit(session);
            }
        }
    }

    /// Number of live sessions (attached or in their grace period). In cluster mode: the
    /// sessions this node mirrors (holds, or sent into lately), not the cluster's count.
    pub fn len(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `sid` names a live session. Transports that only send (POST) use this to answer
    /// 404 before running any handler.
    pub async fn contains(&self, sid: &Sid) -> bool {
        if self.inner.cluster.is_some() {
            return self.local(sid).await.is_ok();
        }
        self.find(sid).is_some_and(|s| !lock(&s.state).removed)
    }

    /// The live session `sid` names, to hold on to: its [`SessionHandle::inbox`], its rooms.
    /// In cluster mode, a session of the cluster, made on any node.
    pub async fn session(&self, sid: &Sid) -> Result<SessionHandle, HubError> {
        self.local(sid).await.map(|session| self.handle(session))
    }

    /// Removes a session at once, without a grace period and without telling
    /// [`Hub::watch_expired`] (used when an open hook refuses a session that never opened).
    /// In cluster mode it is removed from Redis too.
    pub async fn remove(&self, sid: &Sid) -> bool {
        if let Some(cluster) = &self.inner.cluster {
            let _ = Box::pin(cluster.remove(sid)).await;
        }
        self.acks_gone(sid);
        self.remove_local(sid)
    }

    /// Removes a session from this node's table only.
    pub(super) fn remove_local(&self, sid: &Sid) -> bool {
        let Some(session) = self.shard(sid).write().unwrap_or_else(PoisonError::into_inner).remove(sid) else {
            return false;
        };
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        let rooms = {
            let mut state = lock(&session.state);
            state.removed = true;
            state.ring.clear();
            if let Some(attached) = state.attached.take() {
                attached.wake.notify();
            }
            std::mem::take(&mut state.rooms)
        };
        self.forget(vec![(sid.clone(), rooms)], false);
        true
    }

    /// Takes removed sessions out of the room table and, for expiries, tells the watchers.
    /// Requests waiting for an answer from a session that expired (in cluster mode: cluster-wide)
    /// or was removed are rejected ([`Hub::emit_with_ack`]); a mirror dropped by this node
    /// alone is not an end of its session.
    pub(super) fn forget(&self, gone: Vec<(Sid, BTreeSet<Arc<str>>)>, expired: bool) {
        for (sid, _) in gone.iter().filter(|_| expired) {
            self.acks_gone(sid);
        }
        for (sid, rooms) in &gone {
            for room in rooms {
                self.drop_member(sid, room);
            }
        }
        if expired && !gone.is_empty() {
            let mut txs = self.inner.expired_txs.lock().unwrap_or_else(PoisonError::into_inner);
            txs.retain(|tx| {
                gone.iter().all(|(sid, rooms)| {
                    let rooms = rooms.iter().map(ToString::to_string).collect();
                    tx.send(Expired { sid: sid.clone(), rooms }).is_ok()
                })
            });
        }
    }
}
