//! Cluster mode: a session's inbox kept by the node that handled its last client event, as a
//! lease, so that the events that keep arriving at that node take no Redis request to be
//! ordered.
//!
//! The inbox is a ticket lock in the session's hash (see `cluster/scripts.rs`). A node whose
//! ticket was served does not release it after its event: it keeps it as a **lease**
//! ([`INBOX_LEASE`] from when the granting request was sent, by this node's clock, so never
//! longer than Redis counts it), and its next events of the session take only the local lock
//! while at least [`FAST_LEFT`] of the lease is left. Whatever else the lease needs travels
//! with what the node does anyway:
//!
//! * **Another node takes a ticket**: the script asks the holder to hand the inbox over (`h` with
//!   the ticket, on the holder's channel). The holder marks the ask; the handler running then,
//!   if any, releases the ticket when it finishes, or the node releases it at once if none
//!   runs. Handlers already waiting on the local lock then take tickets like any other node's
//!   events, behind the asking one. A lost ask costs the asker one lease at most.
//! * **A node killed** holding the lease holds the session up until the lease runs out in Redis,
//!   as a node killed inside a handler did before leases: one lease at most.
//! * **A long handler**: the node's ticket task renews the lease in Redis while a handler runs
//!   ([`Hub::busy_leases`]); the node's own view is not extended, so its next event takes the
//!   ticket again (one request, the ticket kept if no other node waits).
//! * **The client `seq` mark** (`recv`) goes with the first reply as before, and with every
//!   release and every ticket taken; a handler that emitted nothing to its session has the mark
//!   written in the background when it finishes.
//! * **The rooms snapshot** (what a handler's `rooms()` answers) is read with each grant, kept by
//!   this node's joins and leaves, and dropped when the lease goes or another node changes the
//!   session's rooms (`r` from the join or leave script to the holder): the next event then
//!   takes the ticket again, which reads the rooms.
//!
//! The handshake between an ask and a finishing handler: the ask stores `asked`, then tries the
//! local lock; a handler releases the local lock, then reads `asked`. With a fence on each side,
//! at least one of them sees the other, so an ask is never left unanswered while the node
//! idles.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Sid;

use super::cluster::{millis, Cluster, INBOX_LEASE};
use super::session::{lock, Session};
use super::{Hub, HubError};

/// How much of its lease a node needs left to handle an event under it without asking Redis:
/// the rest covers the handler until the ticket task's first renewal lands.
const FAST_LEFT: Duration = Duration::from_millis(1000);

/// A session's inbox lease as this node sees it. Changed only while the session's local inbox
/// lock is held (`asked` and `rooms_epoch` excepted).
#[derive(Default)]
pub(super) struct Lease {
    /// The ticket this node holds (0: none).
    ticket: AtomicU64,
    /// Until when the lease is surely this node's, in [`Cluster::clock_ms`].
    until: AtomicU64,
    /// The highest ticket another node asked this node to hand over.
    asked: AtomicU64,
    /// Bumped when another node changes the session's rooms.
    rooms_epoch: AtomicU32,
    /// Whether a handler runs under the lease (the ticket task renews those).
    busy: AtomicBool,
}

/// The session's inbox under the lease this node holds, its local lock being held, if enough
/// of the lease is left to handle an event: the ticket, with no request to Redis. `None`: take
/// it with [`take`]. Not async, so that the caller awaits (and boxes) nothing on the path most
/// events take.
pub(super) fn held(session: &Session, cluster: &Cluster) -> Option<u64> {
    let lease = &session.lease;
    let mine = lease.ticket.load(Ordering::Acquire);
    if mine != 0
        && lease.asked.load(Ordering::SeqCst) < mine
        && session.rooms_current.load(Ordering::Acquire)
        && cluster.clock_ms() + millis(FAST_LEFT) <= lease.until.load(Ordering::Acquire)
    {
        lease.busy.store(true, Ordering::Release);
        return Some(mine);
    }
    None
}

/// Takes the session's inbox in Redis for a client event, its local lock being held, by a
/// ticket: what a caller does when [`held`] found no lease to use. Returns the ticket.
pub(super) async fn take(session: &Session, cluster: &Cluster) -> Result<u64, HubError> {
    let lease = &session.lease;
    let mine = lease.ticket.load(Ordering::Acquire);
    // Whatever happens in Redis now, the old lease is not to be used again.
    lease.ticket.store(0, Ordering::Release);
    let epoch = lease.rooms_epoch.load(Ordering::Acquire);
    let mark = session.received.load(Ordering::Acquire);
    let granted = Box::pin(cluster.enter(&session.sid, mine, mark)).await?;
    session.received.fetch_max(granted.received, Ordering::AcqRel);
    // The rooms as the grant found them, for the handler (the default app asks on every
    // message): kept current by this node's joins and leaves while the lease lasts.
    let mut state = lock(&session.state);
    state.rooms = granted.rooms.into_iter().map(Arc::from).collect();
    session.room_count.store(state.rooms.len(), Ordering::Relaxed);
    drop(state);
    session.rooms_current.store(lease.rooms_epoch.load(Ordering::Acquire) == epoch, Ordering::Release);
    lease.until.store(granted.sent + millis(INBOX_LEASE), Ordering::Release);
    lease.ticket.store(granted.ticket, Ordering::Release);
    lease.busy.store(true, Ordering::Release);
    Ok(granted.ticket)
}

/// A handler under ticket `ticket` finished; `guard` is the session's local inbox lock. The
/// lease is kept, unless another node asked for the inbox: then it is released (in the
/// background: the caller goes on without waiting a round trip, and the asking node is served
/// once the release is in).
pub(super) fn finish<G>(session: &Arc<Session>, cluster: &Cluster, ticket: u64, guard: G) {
    let lease = &session.lease;
    lease.busy.store(false, Ordering::Release);
    // A numbered event accepted and nothing emitted to the session since: its mark goes now.
    let unsaved = session.unsaved.swap(0, Ordering::AcqRel) > 0;
    if lease.asked.load(Ordering::SeqCst) >= ticket && lease.ticket.load(Ordering::Acquire) == ticket {
        give_up(session, cluster, ticket);
        drop(guard);
        return;
    }
    drop(guard);
    fence(Ordering::SeqCst);
    if !hand_over(session, cluster) && unsaved {
        spawn_release(session, cluster, 0);
    }
}

/// Hands the inbox over if another node asked for it and no handler of this node runs (nor
/// waits) for the session. Returns whether it did.
fn hand_over(session: &Arc<Session>, cluster: &Cluster) -> bool {
    let lease = &session.lease;
    let mine = lease.ticket.load(Ordering::Acquire);
    if mine == 0 || lease.asked.load(Ordering::SeqCst) < mine {
        return false;
    }
    // A handler holding or waiting for the local lock sees the ask itself.
    let Ok(guard) = session.inbox.try_lock() else { return false };
    let mine = lease.ticket.load(Ordering::Acquire);
    if mine == 0 || lease.asked.load(Ordering::SeqCst) < mine {
        return false;
    }
    give_up(session, cluster, mine);
    drop(guard);
    true
}

/// Drops the lease on `ticket` here and releases it in Redis in the background, with the mark
/// of every client event handled. The local inbox lock is held.
fn give_up(session: &Arc<Session>, cluster: &Cluster, ticket: u64) {
    session.lease.ticket.store(0, Ordering::Release);
    session.rooms_current.store(false, Ordering::Release);
    spawn_release(session, cluster, ticket);
}

/// Releases `ticket` (0: the mark alone) in the background, recording the highest client `seq`
/// handled: every event accepted so far has been handled (the local inbox lock was held when
/// this was decided).
fn spawn_release(session: &Arc<Session>, cluster: &Cluster, ticket: u64) {
    let mark = session.received.load(Ordering::Acquire);
    let (cluster, session) = (cluster.clone(), session.clone());
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = cluster.release(&session.sid, ticket, mark).await;
        });
    }
}

impl Hub {
    /// Another node asks for the inbox of `sid`, whose ticket `ticket` this node holds (`h`).
    pub(super) fn asked_to_hand_over(&self, sid: &Sid, ticket: u64) {
        let (Some(session), Some(cluster)) = (self.find(sid), self.inner.cluster.as_ref()) else { return };
        session.lease.asked.fetch_max(ticket, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        hand_over(&session, cluster);
    }

    /// Another node changed the rooms of `sid`, whose inbox this node may hold (`r`): they are
    /// read again with the next ticket.
    pub(super) fn rooms_changed(&self, sid: &Sid) {
        if let Some(session) = self.find(sid) {
            session.lease.rooms_epoch.fetch_add(1, Ordering::AcqRel);
            session.rooms_current.store(false, Ordering::Release);
        }
    }

    /// The sessions whose handlers run under a lease of this node, with the tickets: the ticket
    /// task renews them. One pass over the session table, with no session lock taken.
    pub(super) fn busy_leases(&self) -> Vec<(Sid, u64)> {
        let mut busy = Vec::new();
        self.each_session_lockless(|session| {
            let ticket = session.lease.ticket.load(Ordering::Acquire);
            if ticket != 0 && session.lease.busy.load(Ordering::Acquire) {
                busy.push((session.sid.clone(), ticket));
            }
        });
        busy
    }

    /// Forgets every lease of this node (Redis was lost: the node comes back under a new id,
    /// and what Redis says the old one holds runs out by itself).
    pub(super) fn forget_leases(&self) {
        self.each_session_lockless(|session| {
            session.lease.ticket.store(0, Ordering::Release);
            session.rooms_current.store(false, Ordering::Release);
        });
    }
}
