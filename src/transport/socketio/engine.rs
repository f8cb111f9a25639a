//! Engine.IO sessions: the table of them, and one session's state shared by its transports and
//! its socket task.
//!
//! An Engine.IO session outlives each long-polling request and survives the upgrade to
//! WebSocket, so its state lives here rather than in a request: the packets waiting to be
//! written, which transport writes them, and whether a poll or a post is in flight (the
//! protocol allows one of each). What the client's packets mean is the socket task's business
//! (`socket.rs`); long-polling and an upgraded WebSocket hand them over through a bounded
//! inbox, in order (a session opened on a WebSocket has its socket task read that socket). A
//! long-polling POST handles events itself when nothing waits ahead of them in the socket task
//! ([`EngineSession::quiet`]), so the hub attachment lives here too, behind a lock that whoever
//! writes the queue from it holds while writing (the order of the client's events).
//!
//! Why a queue of written-out packets and not the hub's ring directly: the same queue carries
//! the protocol's own packets (ping, noop, CONNECT answers) beside events, and either transport
//! drains it. It is kept short ([`MAX_QUEUED`]); beyond it the socket task stops taking
//! events from the hub, so a client that stops reading leaves its backlog in the session's ring,
//! where the hub's slow-consumer rule and the client's recovery offset apply.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::hub::Attachment;

/// Most packets waiting in a session's queue before its socket task stops taking events from
/// the hub.
pub const MAX_QUEUED: usize = 64;

/// The handling of one event: its handlers, run in order with the session's other events. A
/// handler may wait (for the client's answer to a request, for the application), so the
/// socket task polls it beside its loop.
pub type Handling = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a transport hands the socket task.
pub enum Inbound {
    /// The payload of an Engine.IO message: one Socket.IO packet.
    Message(Box<str>),
    /// A pong.
    Pong,
    /// A binary packet (an attachment of a binary event).
    Binary,
    /// An event a POST began to handle itself whose handler waits: the socket task finishes
    /// it, and handles the events after it once it has.
    Handling(Handling),
}

/// Which transport writes a session's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Long-polling GETs.
    Polling,
    /// One WebSocket (from the start, or after the upgrade).
    WebSocket,
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client sent a close packet or closed its WebSocket.
    Client,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The client broke the protocol (two polls at once, a malformed packet, a payload too large).
    ProtocolError,
    /// The server ends it (shutdown, a slow consumer, the session store lost): the client
    /// reconnects and recovers.
    Server,
}

/// One Engine.IO session.
pub struct EngineSession {
    /// Its Engine.IO id (not the hub's session id).
    pub id: String,
    state: Mutex<State>,
    /// Wakes whoever writes the queue (a waiting poll or the WebSocket) when packets are queued
    /// or the session closes. One writer at a time, so a stored permit is never lost.
    wake: Notify,
    /// Wakes the socket task when a writer has taken the queue (room for more events).
    drained: Notify,
    /// Cancelled when the session closes: its socket task, WebSocket and waiting poll end.
    closed: CancellationToken,
    /// Set when the session closes, before `closed` is cancelled: what [`EngineSession::is_closed`]
    /// reads, a plain load where the token's flag takes its lock (every lookup of the session
    /// asks, twice a long-polling round trip).
    closed_flag: AtomicBool,
    /// To the socket task; it holds the receiver and ends when the session closes.
    inbox_tx: mpsc::Sender<Inbound>,
    /// The hub attachment, once the client has connected to the main namespace: set and
    /// cleared by the socket task; written from (onto the queue) by the socket task and by a
    /// POST that handled its events itself, each holding this lock while it writes.
    attachment: Mutex<Option<Attachment>>,
}

struct State {
    queue: Vec<String>,
    carrier: Carrier,
    /// A WebSocket is probing to take over from long-polling.
    upgrading: bool,
    polling: bool,
    posting: bool,
    cause: Option<CloseCause>,
    /// Packets handed to the socket task's inbox that it has not taken yet.
    unread: usize,
    /// The socket task has events of the client in hand (held, or being handled).
    busy: bool,
}

impl EngineSession {
    /// A session written by `carrier`, and the receiving end of its inbox.
    pub fn new(carrier: Carrier) -> (Arc<EngineSession>, mpsc::Receiver<Inbound>) {
        Self::with_id(carrier, crate::protocol::Sid::random().as_str().to_owned())
    }

    /// A session named `id` (in cluster mode, an id naming this node: see `forward.rs`).
    pub fn with_id(carrier: Carrier, id: String) -> (Arc<EngineSession>, mpsc::Receiver<Inbound>) {
        let (inbox_tx, inbox_rx) = mpsc::channel(32);
        let session = EngineSession {
            id,
            state: Mutex::new(State {
                queue: Vec::new(),
                carrier,
                upgrading: false,
                polling: false,
                posting: false,
                cause: None,
                unread: 0,
                busy: false,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            closed: CancellationToken::new(),
            closed_flag: AtomicBool::new(false),
            inbox_tx,
            attachment: Mutex::new(None),
        };
        (Arc::new(session), inbox_rx)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a packet for the client.
    pub fn push(&self, packet: String) {
        self.state().queue.push(packet);
        self.wake.notify_one();
    }

    /// Takes every queued packet.
    pub fn take(&self) -> Vec<String> {
        let taken = std::mem::take(&mut self.state().queue);
        if !taken.is_empty() {
            self.drained.notify_one();
        }
        taken
    }

    /// How many packets wait.
    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Completes when packets are queued or the session closes (or at once if that happened
    /// since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Completes when a writer has taken the queue.
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    /// The transport writing the session's packets.
    pub fn carrier(&self) -> Carrier {
        self.state().carrier
    }

    /// Hands a packet to the socket task, waiting while its inbox is full. `false` once the
    /// session is closed.
    pub async fn deliver(&self, inbound: Inbound) -> bool {
        self.state().unread += 1;
        // Counted back if the packet does not get there: the inbox closed, or the wait for room
        // given up (a client that drops its POST), which would otherwise leave the session
        // looking busy for good.
        let undelivered = Undelivered(self);
        let delivered = self.inbox_tx.send(inbound).await.is_ok();
        if delivered {
            std::mem::forget(undelivered);
        }
        delivered
    }

    /// The socket task took a packet from its inbox: it is busy with it until it says
    /// otherwise ([`EngineSession::settle`]).
    pub fn took(&self) {
        let mut state = self.state();
        state.unread = state.unread.saturating_sub(1);
        state.busy = true;
    }

    /// The socket task ends a turn, with events of the client still in hand (`busy`) or none.
    pub fn settle(&self, busy: bool) {
        self.state().busy = busy;
    }

    /// Whether no event of the client waits in the socket task (in its inbox, held, or being
    /// handled): a POST may then handle the next one itself without overtaking any.
    pub fn quiet(&self) -> bool {
        let state = self.state();
        state.unread == 0 && !state.busy
    }

    /// The hub attachment, locked (see the field's comment for who holds it).
    pub fn attachment(&self) -> MutexGuard<'_, Option<Attachment>> {
        self.attachment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a poll: `false` if one is already in flight (the protocol allows one).
    pub fn begin_poll(&self) -> bool {
        !std::mem::replace(&mut self.state().polling, true)
    }

    /// Ends a poll.
    pub fn end_poll(&self) {
        self.state().polling = false;
    }

    /// Starts a post: `false` if one is already in flight.
    pub fn begin_post(&self) -> bool {
        !std::mem::replace(&mut self.state().posting, true)
    }

    /// Ends a post.
    pub fn end_post(&self) {
        self.state().posting = false;
    }

    /// Starts an upgrade: `false` unless the session is on long-polling with no upgrade under
    /// way.
    pub fn begin_upgrade(&self) -> bool {
        let mut state = self.state();
        if state.carrier != Carrier::Polling || state.upgrading {
            return false;
        }
        state.upgrading = true;
        true
    }

    /// Ends an upgrade: the WebSocket writes from now on (`done`), or the probe failed and
    /// long-polling goes on.
    pub fn end_upgrade(&self, done: bool) {
        let mut state = self.state();
        state.upgrading = false;
        if done {
            state.carrier = Carrier::WebSocket;
        }
    }

    /// Closes the session (the first cause counts): its socket task, WebSocket and waiting
    /// poll end.
    pub fn close(&self, cause: CloseCause) {
        self.state().cause.get_or_insert(cause);
        self.closed_flag.store(true, Ordering::Release);
        self.closed.cancel();
        self.wake.notify_one();
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.closed_flag.load(Ordering::Acquire)
    }

    /// Why it closed, once it has.
    pub fn cause(&self) -> Option<CloseCause> {
        self.state().cause
    }

    /// Completes when the session closes.
    pub async fn closing(&self) {
        self.closed.cancelled().await;
    }
}

/// A packet counted in [`State::unread`] that has not reached the inbox (yet): uncounted when
/// dropped.
struct Undelivered<'a>(&'a EngineSession);

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.unread = state.unread.saturating_sub(1);
    }
}

/// The live Engine.IO sessions, by id: looked up on every long-polling request, so hashed
/// with foldhash (seeded per process) rather than SipHash, which cost some 300 instructions
/// a lookup of a 22-character sid.
#[derive(Default)]
pub struct Engines {
    map: Mutex<SessionMap>,
}

type SessionMap = HashMap<String, Arc<EngineSession>, foldhash::fast::RandomState>;

impl Engines {
    fn map(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session.
    pub fn insert(&self, session: Arc<EngineSession>) {
        self.map().insert(session.id.clone(), session);
    }

    /// The live session `id`.
    pub fn get(&self, id: &str) -> Option<Arc<EngineSession>> {
        self.map().get(id).filter(|s| !s.is_closed()).cloned()
    }

    /// Removes a session (its socket task does, when it ends).
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_poll_and_one_post_at_a_time() {
        let (session, _inbox) = EngineSession::new(Carrier::Polling);
        assert!(session.begin_poll());
        assert!(!session.begin_poll());
        session.end_poll();
        assert!(session.begin_poll());
        assert!(session.begin_post());
        assert!(!session.begin_post());
    }

    #[test]
    fn an_upgrade_moves_the_writing_to_the_websocket_once() {
        let (session, _inbox) = EngineSession::new(Carrier::Polling);
        assert!(session.begin_upgrade());
        assert!(!session.begin_upgrade(), "one probe at a time");
        session.end_upgrade(false);
        assert_eq!(session.carrier(), Carrier::Polling);
        assert!(session.begin_upgrade());
        session.end_upgrade(true);
        assert_eq!(session.carrier(), Carrier::WebSocket);
        assert!(!session.begin_upgrade(), "no upgrade from a WebSocket");
    }

    /// A POST that gives up waiting for room in the inbox leaves no packet counted: once the
    /// socket task has taken what did arrive, the session is quiet again.
    #[tokio::test]
    async fn a_delivery_given_up_is_not_counted_as_waiting() {
        let (session, mut inbox) = EngineSession::new(Carrier::Polling);
        let room = inbox.max_capacity();
        for _ in 0..room {
            assert!(session.deliver(Inbound::Pong).await);
        }
        let full = tokio::time::timeout(std::time::Duration::from_millis(20), session.deliver(Inbound::Pong)).await;
        assert!(full.is_err(), "the inbox is full, so the delivery waits and is given up");
        assert!(!session.quiet());
        for _ in 0..room {
            assert!(inbox.try_recv().is_ok());
            session.took();
        }
        session.settle(false);
        assert!(session.quiet(), "nothing waits in the socket task");
    }

    #[test]
    fn the_first_close_cause_counts() {
        let (session, _inbox) = EngineSession::new(Carrier::Polling);
        session.close(CloseCause::PingTimeout);
        session.close(CloseCause::Client);
        assert_eq!(session.cause(), Some(CloseCause::PingTimeout));
        assert!(session.is_closed());
    }
}
