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
//! Acks map onto the hub's: a client event with ack id `ID` is an envelope asking for answer
//! `ID + 1` (Socket.IO counts from 0, the hub from 1), answered as `43ID[D]`; a request of the
//! server (an event carrying an ack) goes out as `42N[...]`, and the client's `43N[...]` is its
//! answer.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::engine::{Carrier, CloseCause, EngineSession, Inbound, MAX_QUEUED};
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
        attachment: None,
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
                None => break,
            },
            event = next_event(&mut task.attachment, &session) => {
                if task.on_event(event).is_break() {
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
    while let Some(handling) = task.next_handling() {
        handling.await;
    }
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
    async fn next(&mut self, _: &EngineSession) -> Option<Inbound> {
        self.recv().await
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

/// The next event of the hub session, once there is room in the queue; never, before the
/// client has connected.
async fn next_event(attachment: &mut Option<Attachment>, session: &EngineSession) -> Result<Event, CloseReason> {
    let Some(attachment) = attachment else {
        return std::future::pending().await;
    };
    while session.queued() >= MAX_QUEUED {
        session.drained().await;
    }
    attachment.recv().await
}

/// What the socket task keeps between packets.
struct Socket<'a, H> {
    endpoint: &'a Endpoint<H>,
    session: &'a EngineSession,
    /// The opening request, until a CONNECT succeeds.
    opening: Option<Opening>,
    /// The hub session, once the client has connected to the main namespace.
    attachment: Option<Attachment>,
    /// Binary packets still to skip: the attachments of refused binary events.
    skip_binary: usize,
    /// Events not handled yet, handled one at a time in order; at most [`MAX_HELD`] before the
    /// loop stops reading the client.
    held: VecDeque<(SessionHandle, Envelope)>,
}

/// The handling of one event. Its handler may wait (for the client's answer to a request, for
/// the application), so it runs beside the loop, which goes on writing the session's events and
/// taking the client's answers meanwhile.
type Handling = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    fn transport(&self) -> Transport {
        match self.session.carrier() {
            Carrier::Polling => Transport::Polling,
            Carrier::WebSocket => Transport::WebSocket,
        }
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
            SocketPacket::Disconnect { nsp } if nsp == "/" => self.attachment = None,
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

    async fn refuse_binary(&self, name: Option<&str>) {
        let Some(attachment) = &self.attachment else { return };
        let message = "binary attachments are not supported: send JSON (encode binary data as base64 text)";
        let data = serde_json::json!({ "error": message, "event": name });
        let _ = self.endpoint.hub().emit(attachment.sid(), "error", &data).await;
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
        let request = AttachRequest::new(self.transport(), pid, cursor.as_deref());
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
        self.attachment = Some(attachment);
    }

    /// ACK: the client's answer to a request of the server (an event it got with an ack id),
    /// handed to the gateway as the envelope `{"event": "ack", "ack": N, "data": D}`.
    async fn answer(&mut self, id: u64, args: Vec<Value>) {
        let Some(attachment) = &self.attachment else { return };
        if !Ack::in_range(id) {
            return; // no request of the server has this number
        }
        let envelope = Envelope { event: ACK_EVENT.into(), data: data_of(args), seq: None, ack: Some(id) };
        if let Err(err) = self.endpoint.dispatch_to(&attachment.session(), smallvec::smallvec![envelope]).await {
            tracing::debug!(sid = attachment.sid().short(), %err, "Socket.IO answer not taken");
        }
    }

    /// EVENT: one envelope to the gateway's handlers. Its data is the single argument, `null`
    /// for none, or the array of them for several. With an ack id (Socket.IO counts from 0),
    /// the envelope asks for an answer numbered one more (the hub counts from 1); the answer
    /// comes back as `43ID[D]`.
    async fn event(&mut self, id: Option<u64>, name: String, args: Vec<Value>) {
        let Some(attachment) = &self.attachment else { return };
        let sid = attachment.sid().clone();
        let hub = self.endpoint.hub();
        let polling = self.session.carrier() == Carrier::Polling;
        // Sends over HTTP are rate limited per request, as POSTs of switchyard's own clients are.
        if polling {
            if let Err(err) = hub.admit(&sid).await {
                return self.endpoint.report_error(&sid, err).await;
            }
        }
        let data = data_of(args);
        let ack = match id.map(|id| id.checked_add(1).filter(|n| Ack::in_range(*n))) {
            None => None,
            Some(Some(number)) => Some(number),
            Some(None) => return self.endpoint.report_error(&sid, "ack id out of range").await,
        };
        if let Err(why) = check_event_name(&name) {
            return self.endpoint.report_error(&sid, format!("event name {why}")).await;
        }
        if let Err(err) = check_data(&data, &self.endpoint.config().limits) {
            return self.endpoint.report_error(&sid, err).await;
        }
        if polling {
            crate::metrics::events_in_post(1);
        } else {
            crate::metrics::events_in_websocket(1);
        }
        self.held.push_back((attachment.session(), Envelope { event: name.into(), data, seq: None, ack }));
    }

    /// Starts handling the held events, in order, each polled once at once: a handler that
    /// finishes without waiting (the common case: it answers, or emits) is done in this turn of
    /// the loop, and what it emitted is queued in this turn too, so that a packet and its reply
    /// take one turn of the socket task rather than three (the select's own cost dominated a
    /// long-polling round trip's share of the task). The first handler that waits is left in
    /// `in_flight`, polled by the loop from then on.
    async fn handle_next(&mut self, in_flight: &mut Option<Handling>) -> ControlFlow<()> {
        let mut handled = false;
        while let Some(mut handling) = self.next_handling() {
            if futures_util::poll!(handling.as_mut()).is_pending() {
                *in_flight = Some(handling);
                break;
            }
            handled = true;
        }
        if handled {
            return self.on_ready();
        }
        ControlFlow::Continue(())
    }

    /// Queues the events the hub session has ready, if there is room.
    fn on_ready(&mut self) -> ControlFlow<()> {
        if self.session.queued() >= MAX_QUEUED {
            return ControlFlow::Continue(());
        }
        match self.attachment.as_mut().map(Attachment::try_recv) {
            Some(Ok(Some(event))) => self.on_event(Ok(event)),
            Some(Err(reason)) => self.on_detached(reason),
            _ => ControlFlow::Continue(()),
        }
    }

    /// The handling of the next held event, if there is one.
    fn next_handling(&mut self) -> Option<Handling> {
        let (session, envelope) = self.held.pop_front()?;
        let endpoint = self.endpoint.clone();
        Some(Box::pin(async move {
            if let Err(err) = endpoint.dispatch_to(&session, smallvec::smallvec![envelope]).await {
                tracing::debug!(sid = session.sid().short(), %err, "Socket.IO event not handled");
            }
        }))
    }

    /// What the hub session yields: events onto the queue (with whatever else is ready), or
    /// the end of the attachment.
    fn on_event(&mut self, event: Result<Event, CloseReason>) -> ControlFlow<()> {
        let mut event = match event {
            Ok(event) => event,
            Err(reason) => return self.on_detached(reason),
        };
        loop {
            self.write(&event);
            if self.session.queued() >= MAX_QUEUED {
                return ControlFlow::Continue(());
            }
            match self.attachment.as_mut().map(Attachment::try_recv) {
                Some(Ok(Some(next))) => event = next,
                Some(Err(reason)) => return self.on_detached(reason),
                _ => return ControlFlow::Continue(()),
            }
        }
    }

    /// One event as a Socket.IO packet: an EVENT with its number as the recovery offset; the
    /// answer to a client's request as its ACK (`43ID[D]`, or `43ID[{"error": E}]` for an error
    /// answer); a request of the server as an EVENT with an ack id. The `session` hello is the
    /// transport's business, not the client's; other notices (`gap`, `reconnect`) go out
    /// without an offset, as they are not resume points.
    fn write(&self, event: &Event) {
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
        crate::metrics::event_out(self.transport(), packet.len());
        self.session.push(packet);
    }

    /// The attachment ended. Superseded (another transport holds the session): the client is
    /// disconnected from the namespace and does not reconnect by itself. Anything else (shutdown,
    /// a slow consumer, the store lost): the Engine.IO session closes and the client reconnects
    /// and recovers.
    fn on_detached(&mut self, reason: CloseReason) -> ControlFlow<()> {
        self.attachment = None;
        if reason == CloseReason::Superseded {
            self.session.push(packet::DISCONNECT.to_owned());
            return ControlFlow::Continue(());
        }
        if self.session.carrier() == Carrier::Polling {
            self.session.push("1".to_owned());
        }
        self.session.close(CloseCause::Server);
        ControlFlow::Break(())
    }
}
