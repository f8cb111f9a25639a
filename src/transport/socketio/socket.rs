//! The socket task: one per Engine.IO session, from the handshake until the session closes.
//! It runs in a task of its own for a session opened over long-polling (fed by the [`Link`] of
//! its inbox), and in the socket's task for a session opened on a WebSocket (the link reads and
//! writes that socket, `ws.rs`).
//!
//! It pings the client and closes the session when a pong does not come in time, reads the
//! client's Socket.IO packets in order (CONNECT, EVENT, DISCONNECT, binary refusal), and, once
//! the client has connected to the main namespace, holds the hub attachment and turns what it
//! yields into Socket.IO events on the session's queue. Holding the attachment here, not in a
//! transport, is what lets the session change carrier (the upgrade) without detaching.
//!
//! Recovery: the CONNECT answer's `pid` is the hub session id, and each event carries its
//! number as the offset (the last argument). A CONNECT with `{pid, offset}` attaches to that
//! session from cursor `pid.offset`, so the hub replays what came after it; a session that is
//! gone gives a fresh one, whose new `pid` tells the client it did not recover.
//!
//! An event's handler runs beside the loop (one at a time, in arrival order, later events held),
//! so a handler that waits for the client's answer to a request gets it: the loop goes on
//! reading the client's packets and writing the session's events meanwhile.
//!
//! A long-polling POST handles an event itself ([`post_event`]) when nothing of the client
//! waits in this task: it runs the handler, and writes what the hub session then has ready
//! onto the queue for the waiting poll, so a round trip takes no turn of this task (which cost
//! some 3,700 instructions of a round trip's 48,000, callgrind). A handler that waits is handed
//! to this task, and the events after it follow through the inbox, in order.
//!
//! Acks map onto the hub's: a client event with ack id `ID` is an envelope asking for answer
//! `ID + 1` (Socket.IO counts from 0, the hub from 1), answered as `43ID[D]`; a request of the
//! server (an event carrying an ack) goes out as `42N[...]`, and the client's `43N[...]` is its
//! answer.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::Poll;

use axum::http::{header, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::engine::{Carrier, CloseCause, EngineSession, Handling, Inbound, MAX_QUEUED};
use super::packet::{self, decode_socket, SocketPacket};
use super::{Endpoint, Handler, Opening};
use crate::hub::{AttachRequest, Attachment, CloseReason, Event, SessionHandle, Transport, ACK_EVENT};
use crate::protocol::{check_data, check_event_name, Ack, Envelope, Sid};

/// Runs the socket task of `session` until it closes, then removes it from the table (which
/// detaches its hub session, if it had one: the session lives on for the grace period).
pub async fn run<H: Handler, L: Link>(endpoint: Endpoint<H>, session: Arc<EngineSession>, mut link: L, opening: Opening) {
    let config = endpoint.config().socketio.clone();
    let mut task = Socket {
        endpoint: &endpoint,
        session: &session,
        opening: Some(opening),
        skip_binary: 0,
        held: VecDeque::new(),
    };
    let mut in_flight: Option<Handling> = None;
    // One timer, set again when its deadline changes, rather than a new one each turn of the
    // loop (which would register with the timer wheel and leave it on every packet): the next
    // ping while no pong is due, else the pong's deadline.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now() + config.ping_interval));
    let mut pong_due = false;
    // Made once, like the timer: a new cancellation wait each turn cost some 250 instructions.
    let mut closing = std::pin::pin!(session.closing());
    loop {
        tokio::select! {
            biased;
            () = closing.as_mut() => break,
            () = handled(&mut in_flight) => in_flight = None,
            inbound = link.next(&session), if task.held.len() < MAX_HELD => match inbound {
                Some(Inbound::Pong) => {
                    pong_due = false;
                    timer.as_mut().reset(Instant::now() + config.ping_interval);
                }
                Some(Inbound::Message(text)) => {
                    // Boxed: handling a packet (attaching, dispatching) takes a large future,
                    // which would otherwise be part of every idle session's task.
                    if Box::pin(task.on_message(&text)).await.is_break() {
                        break;
                    }
                }
                Some(Inbound::Binary) => task.on_binary(),
                Some(Inbound::Handling(handling)) => task.held.push_back(handling),
                None => break,
            },
            flow = hub_ready(&session) => {
                if flow.is_break() {
                    break;
                }
            }
            () = timer.as_mut() => {
                if pong_due {
                    tracing::debug!(engine = %session.id, "no pong in time; closing the Engine.IO session");
                    session.close(CloseCause::PingTimeout);
                    break;
                }
                session.push("2".to_owned());
                pong_due = true;
                timer.as_mut().reset(Instant::now() + config.ping_timeout);
            }
        }
        if in_flight.is_none() && task.handle_next(&mut in_flight).await.is_break() {
            break;
        }
        session.settle(in_flight.is_some() || !task.held.is_empty());
        if !link.write(&session).await {
            break;
        }
    }
    endpoint.engines().remove(&session.id);
    link.finish(&session).await;
    // What the client sent before the end is still handled, as on `/ws`.
    if let Some(handling) = in_flight {
        handling.await;
    }
    while let Some(handling) = task.held.pop_front() {
        handling.await;
    }
    // Detaches the hub session (it lives on for the grace period), whoever still holds the
    // Engine.IO session.
    drop(session.attachment().take());
}

/// What carries a session's packets for the socket task: the inbox that long-polling and an
/// upgraded WebSocket feed (they write the queue themselves, woken by it), or a WebSocket the
/// session opened on, which the socket task reads and writes itself (`ws.rs`), so that a frame
/// and its reply take no turn of another task.
pub trait Link: Send {
    /// The client's next packet; `None` once it has gone (or broke the protocol, which closes
    /// the session). Cancel-safe: a packet is never lost to a dropped wait.
    fn next(&mut self, session: &EngineSession) -> impl Future<Output = Option<Inbound>> + Send;

    /// Writes what the session's queue holds, if this link writes it; `false` once the client
    /// can no longer be written to.
    fn write(&mut self, session: &EngineSession) -> impl Future<Output = bool> + Send;

    /// Ends the link once the session has closed: writes what is left and closes the socket.
    fn finish(&mut self, session: &EngineSession) -> impl Future<Output = ()> + Send;
}

/// The inbox: the transports write the queue.
impl Link for mpsc::Receiver<Inbound> {
    async fn next(&mut self, session: &EngineSession) -> Option<Inbound> {
        let inbound = self.recv().await;
        if inbound.is_some() {
            session.took();
        }
        inbound
    }

    async fn write(&mut self, _: &EngineSession) -> bool {
        true
    }

    async fn finish(&mut self, _: &EngineSession) {}
}

/// The data of an envelope from a Socket.IO event's arguments: the single argument, `null` for
/// none, or the array of them for several.
fn data_of(mut args: Vec<Value>) -> Value {
    match args.len() {
        0 => Value::Null,
        1 => args.pop().expect("one argument"),
        _ => Value::Array(args),
    }
}

/// Completes once the hub session had events, written onto the queue (with whatever else was
/// ready, as room allows), or ended (`Break` if that closed the Engine.IO session); never,
/// before the client has connected. Waits for room in the queue first.
async fn hub_ready(session: &EngineSession) -> ControlFlow<()> {
    while session.queued() >= MAX_QUEUED {
        session.drained().await;
    }
    // Unregistered when the wait ends or is abandoned, as `Attachment::recv` does, so that
    // emits while the task is busy elsewhere do not wake it for nothing.
    let _stop = StopWaiting(session);
    std::future::poll_fn(|cx| {
        let mut attachment = session.attachment();
        let Some(hub) = attachment.as_mut() else {
            return Poll::Pending;
        };
        match hub.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(event)) => {
                write(session, &event);
                Poll::Ready(flush_locked(session, &mut attachment))
            }
            Poll::Ready(Err(reason)) => Poll::Ready(detached(session, &mut attachment, reason)),
        }
    })
    .await
}

/// Ends a wait of [`hub_ready`].
struct StopWaiting<'a>(&'a EngineSession);

impl Drop for StopWaiting<'_> {
    fn drop(&mut self) {
        if let Some(hub) = self.0.attachment().as_ref() {
            hub.stop_waiting();
        }
    }
}

/// Writes what the hub session has ready onto the queue, as room allows. `Break` when the
/// attachment ended in a way that closed the Engine.IO session.
fn flush(session: &EngineSession) -> ControlFlow<()> {
    flush_locked(session, &mut session.attachment())
}

/// [`flush`] with the attachment's lock held: whoever writes from the attachment holds it,
/// so two writers (the socket task, a POST) cannot swap events.
fn flush_locked(session: &EngineSession, attachment: &mut Option<Attachment>) -> ControlFlow<()> {
    loop {
        if session.queued() >= MAX_QUEUED {
            return ControlFlow::Continue(());
        }
        let Some(hub) = attachment.as_mut() else {
            return ControlFlow::Continue(());
        };
        match hub.try_recv() {
            Ok(Some(event)) => write(session, &event),
            Ok(None) => return ControlFlow::Continue(()),
            Err(reason) => return detached(session, attachment, reason),
        }
    }
}

/// The transport a session's events are counted under.
fn transport(session: &EngineSession) -> Transport {
    match session.carrier() {
        Carrier::Polling => Transport::Polling,
        Carrier::WebSocket => Transport::WebSocket,
    }
}

/// One event as a Socket.IO packet: an EVENT with its number as the recovery offset; the
/// answer to a client's request as its ACK (`43ID[D]`, or `43ID[{"error": E}]` for an error
/// answer); a request of the server as an EVENT with an ack id. The `session` hello is the
/// transport's business, not the client's; other notices (`gap`, `reconnect`) go out
/// without an offset, as they are not resume points.
fn write(session: &EngineSession, event: &Event) {
    let packet = match (event.notice, event.ack()) {
        (true, _) if event.name() == "session" => return,
        (true, _) => packet::encode_event(event.name(), event.data(), None),
        (false, Some(ack)) if event.name() == ACK_EVENT && ack.is_error() => {
            packet::encode_ack(ack.number() - 1, &format!("{{\"error\":{}}}", event.data()))
        }
        (false, Some(ack)) if event.name() == ACK_EVENT => packet::encode_ack(ack.number() - 1, event.data()),
        (false, Some(ack)) => packet::encode_request(event.name(), event.data(), ack.number()),
        (false, None) => packet::encode_event(event.name(), event.data(), Some(event.seq)),
    };
    crate::metrics::event_out(transport(session), packet.len());
    session.push(packet);
}

/// The attachment ended. Superseded (another transport holds the session): the client is
/// disconnected from the namespace and does not reconnect by itself. Anything else (shutdown,
/// a slow consumer, the store lost): the Engine.IO session closes and the client reconnects
/// and recovers.
fn detached(session: &EngineSession, attachment: &mut Option<Attachment>, reason: CloseReason) -> ControlFlow<()> {
    *attachment = None;
    if reason == CloseReason::Superseded {
        session.push(packet::DISCONNECT.to_owned());
        return ControlFlow::Continue(());
    }
    if session.carrier() == Carrier::Polling {
        session.push("1".to_owned());
    }
    session.close(CloseCause::Server);
    ControlFlow::Break(())
}

/// What [`post_event`] did with a Socket.IO packet.
pub enum Posted {
    /// Handled, and what the hub session had ready written onto the queue.
    Handled,
    /// Handled as far as a handler that waits: the socket task is to finish it.
    Waiting(Handling),
    /// Not an event this POST may handle (another packet, or no connected client): the socket
    /// task's.
    Theirs,
    /// The Engine.IO session closed meanwhile (its hub session ended).
    Closed,
}

/// An EVENT of the main namespace from a long-polling POST, handled in the POST's own task:
/// checked as the socket task checks it, its handlers run, and what the hub session then has
/// ready written onto the queue. For a POST to call only when the session is
/// [quiet](EngineSession::quiet), so that no earlier event of the client is overtaken.
pub async fn post_event<H: Handler>(endpoint: &Endpoint<H>, session: &EngineSession, text: &str) -> Posted {
    let Ok(SocketPacket::Event { nsp, id, name, args }) = decode_socket(text) else {
        return Posted::Theirs;
    };
    if nsp != "/" {
        return Posted::Theirs;
    }
    let hub = {
        let attachment = session.attachment();
        let Some(hub) = attachment.as_ref() else {
            return Posted::Theirs;
        };
        // What the handlers emit is written below: no need to wake the socket task for it.
        hub.begin_handling();
        hub.session()
    };
    let mut waiting = None;
    if let Some(envelope) = envelope(endpoint, session, &hub, id, name, args).await {
        let mut handling = handling(endpoint, hub, envelope);
        if futures_util::poll!(handling.as_mut()).is_pending() {
            waiting = Some(handling);
        }
    }
    let mut attachment = session.attachment();
    if let Some(hub) = attachment.as_ref() {
        hub.end_handling();
    }
    let flow = flush_locked(session, &mut attachment);
    if session.queued() >= MAX_QUEUED {
        // Left in the hub session for lack of room: the socket task, which the handlers'
        // emits did not wake, takes it from there once the queue drains.
        if let Some(hub) = attachment.as_ref() {
            hub.wake();
        }
    }
    drop(attachment);
    match (flow, waiting) {
        (ControlFlow::Break(()), _) => Posted::Closed,
        (ControlFlow::Continue(()), Some(handling)) => Posted::Waiting(handling),
        (ControlFlow::Continue(()), None) => Posted::Handled,
    }
}

/// The envelope of an EVENT, once it passes the checks (the rate limit over HTTP, the ack id,
/// the event name, the data): its data is the single argument, `null` for none, or the array of
/// them for several. With an ack id (Socket.IO counts from 0), the envelope asks for an answer
/// numbered one more (the hub counts from 1). A refusal is reported to the client's session,
/// and gives `None`; its report is boxed, as it is rare: held inline, an emit's future made
/// this future 688 bytes rather than about 300, and a long-polling POST's (which holds it) too
/// large for the allocator's per-thread cache (1,032 bytes; docs/performance.md).
async fn envelope<H: Handler>(
    endpoint: &Endpoint<H>,
    session: &EngineSession,
    hub_session: &SessionHandle,
    id: Option<u64>,
    name: String,
    args: Vec<Value>,
) -> Option<Envelope> {
    let sid = hub_session.sid();
    let polling = session.carrier() == Carrier::Polling;
    // Sends over HTTP are rate limited per request, as POSTs of switchyard's own clients are.
    if polling {
        if let Err(err) = endpoint.hub().admit_to(hub_session).await {
            Box::pin(endpoint.report_error(sid, err)).await;
            return None;
        }
    }
    let data = data_of(args);
    let ack = match id.map(|id| id.checked_add(1).filter(|n| Ack::in_range(*n))) {
        None => None,
        Some(Some(number)) => Some(number),
        Some(None) => {
            Box::pin(endpoint.report_error(sid, "ack id out of range")).await;
            return None;
        }
    };
    if let Err(why) = check_event_name(&name) {
        Box::pin(endpoint.report_error(sid, format!("event name {why}"))).await;
        return None;
    }
    if let Err(err) = check_data(&data, &endpoint.config().limits) {
        Box::pin(endpoint.report_error(sid, err)).await;
        return None;
    }
    if polling {
        crate::metrics::events_in_post(1);
    } else {
        crate::metrics::events_in_websocket(1);
    }
    Some(Envelope { event: name.into(), data, seq: None, ack })
}

/// The handling of one event: its handlers, for the hub session it came from.
fn handling<H: Handler>(endpoint: &Endpoint<H>, session: SessionHandle, envelope: Envelope) -> Handling {
    let endpoint = endpoint.clone();
    Box::pin(async move {
        if let Err(err) = endpoint.dispatch_to(&session, smallvec::smallvec![envelope]).await {
            tracing::debug!(sid = session.sid().short(), %err, "Socket.IO event not handled");
        }
    })
}

/// What the socket task keeps between packets.
struct Socket<'a, H> {
    endpoint: &'a Endpoint<H>,
    session: &'a EngineSession,
    /// The opening request, until a CONNECT succeeds.
    opening: Option<Opening>,
    /// Binary packets still to skip: the attachments of refused binary events.
    skip_binary: usize,
    /// Events not handled yet, handled one at a time in order; at most [`MAX_HELD`] before the
    /// loop stops reading the client. A handler may wait (for the client's answer to a
    /// request, for the application), so it runs beside the loop, which goes on writing the
    /// session's events and taking the client's answers meanwhile.
    held: VecDeque<Handling>,
}

/// Most events held while one is being handled.
const MAX_HELD: usize = 32;

/// Completes when the event being handled has been; never, when none is.
async fn handled(in_flight: &mut Option<Handling>) {
    match in_flight.as_mut() {
        Some(handling) => handling.await,
        None => std::future::pending().await,
    }
}

impl<H: Handler> Socket<'_, H> {
    /// The hub session, once the client has connected to the main namespace.
    fn hub_session(&self) -> Option<SessionHandle> {
        self.session.attachment().as_ref().map(Attachment::session)
    }

    /// One Socket.IO packet. A malformed one closes the session, as the protocol asks.
    async fn on_message(&mut self, text: &str) -> ControlFlow<()> {
        let packet = match decode_socket(text) {
            Ok(packet) => packet,
            Err(err) => {
                tracing::debug!(engine = %self.session.id, %err, "malformed Socket.IO packet; closing");
                self.session.close(CloseCause::ProtocolError);
                return ControlFlow::Break(());
            }
        };
        match packet {
            SocketPacket::Connect { nsp, auth } => self.connect(&nsp, auth).await,
            SocketPacket::Disconnect { nsp } if nsp == "/" => drop(self.session.attachment().take()),
            SocketPacket::Event { nsp, id, name, args } if nsp == "/" => self.event(id, name, args).await,
            SocketPacket::Ack { nsp, id, args } if nsp == "/" => self.answer(id, args).await,
            SocketPacket::Binary { nsp, name, attachments } => {
                self.skip_binary += attachments;
                if nsp == "/" {
                    self.refuse_binary(name.as_deref()).await;
                }
            }
            SocketPacket::ConnectError { .. } => {
                self.session.close(CloseCause::ProtocolError);
                return ControlFlow::Break(());
            }
            // Packets for a namespace the client is not connected to are ignored, as
            // Socket.IO servers do.
            SocketPacket::Disconnect { .. } | SocketPacket::Event { .. } | SocketPacket::Ack { .. } => {}
        }
        ControlFlow::Continue(())
    }

    /// A binary packet: an attachment of a refused binary event, skipped. One nobody announced
    /// is a protocol error.
    fn on_binary(&mut self) {
        if self.skip_binary == 0 {
            self.session.close(CloseCause::ProtocolError);
        } else {
            self.skip_binary -= 1;
        }
    }

    async fn refuse_binary(&mut self, name: Option<&str>) {
        let Some(hub_session) = self.hub_session() else { return };
        let message = "binary attachments are not supported: send JSON (encode binary data as base64 text)";
        let data = serde_json::json!({ "error": message, "event": name });
        let _ = self.endpoint.hub().emit(hub_session.sid(), "error", &data).await;
    }

    /// CONNECT: the main namespace attaches to the hub (a new session, or the one `auth.pid`
    /// names, from `auth.offset`); any other namespace is refused.
    async fn connect(&mut self, nsp: &str, auth: Option<Value>) {
        if nsp != "/" {
            self.session.push(packet::encode_connect_error(nsp, "Invalid namespace"));
            return;
        }
        let Some(opening) = self.opening.as_ref() else {
            return; // already connected
        };
        let auth = auth.unwrap_or(Value::Null);
        let pid = auth.get("pid").and_then(Value::as_str);
        let offset = auth.get("offset").and_then(Value::as_str).unwrap_or("0");
        let cursor = pid.map(|pid| format!("{pid}.{offset}"));
        let request = AttachRequest::new(transport(self.session), pid, cursor.as_deref());
        let attachment = match self.endpoint.attach(request, opening.client).await {
            Ok(attachment) => attachment,
            Err(err) => return self.session.push(packet::encode_connect_error("/", &err.to_string())),
        };
        let mut headers = opening.headers.clone();
        if let Some(bearer) = auth.get("token").and_then(Value::as_str).and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
            headers.insert(header::AUTHORIZATION, bearer);
        }
        if let Err(err) = self.endpoint.admit(&attachment, &headers, opening.query.as_deref()).await {
            return self.session.push(packet::encode_connect_error("/", &err.to_string()));
        }
        self.session.push(packet::encode_connect(Sid::random().as_str(), attachment.sid().as_str()));
        self.opening = None;
        *self.session.attachment() = Some(attachment);
    }

    /// ACK: the client's answer to a request of the server (an event it got with an ack id),
    /// handed to the gateway as the envelope `{"event": "ack", "ack": N, "data": D}`.
    async fn answer(&mut self, id: u64, args: Vec<Value>) {
        let Some(hub_session) = self.hub_session() else { return };
        if !Ack::in_range(id) {
            return; // no request of the server has this number
        }
        let envelope = Envelope { event: ACK_EVENT.into(), data: data_of(args), seq: None, ack: Some(id) };
        if let Err(err) = self.endpoint.dispatch_to(&hub_session, smallvec::smallvec![envelope]).await {
            tracing::debug!(sid = hub_session.sid().short(), %err, "Socket.IO answer not taken");
        }
    }

    /// EVENT: one envelope to the gateway's handlers (see [`envelope`]), held to be handled
    /// in order; the answer to an ack id comes back as `43ID[D]`.
    async fn event(&mut self, id: Option<u64>, name: String, args: Vec<Value>) {
        let Some(hub_session) = self.hub_session() else { return };
        if let Some(envelope) = envelope(self.endpoint, self.session, &hub_session, id, name, args).await {
            self.held.push_back(handling(self.endpoint, hub_session, envelope));
        }
    }

    /// Starts handling the held events, in order, each polled once at once: a handler that
    /// finishes without waiting (the common case: it answers, or emits) is done in this turn of
    /// the loop, and what it emitted is queued in this turn too, so that a packet and its reply
    /// take one turn of the socket task rather than three (the select's own cost dominated a
    /// long-polling round trip's share of the task). The first handler that waits is left in
    /// `in_flight`, polled by the loop from then on.
    async fn handle_next(&mut self, in_flight: &mut Option<Handling>) -> ControlFlow<()> {
        let mut handled = false;
        while let Some(mut handling) = self.held.pop_front() {
            if futures_util::poll!(handling.as_mut()).is_pending() {
                *in_flight = Some(handling);
                break;
            }
            handled = true;
        }
        if handled {
            return flush(self.session);
        }
        ControlFlow::Continue(())
    }
}
