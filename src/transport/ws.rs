//! `GET /ws`: the session over one WebSocket, both directions. Over HTTP/2 the same route
//! takes the extended `CONNECT` of RFC 8441 (`:protocol websocket`), so that a browser's
//! WebSocket shares the connection of the page's other requests.
//!
//! One task per socket runs [`serve_socket`]: it writes what the attachment yields, reads client
//! frames (one envelope, or a JSON array of envelopes, per text frame) and hands them to the
//! gateway's handlers, and pings the peer so a dead one is found and the session detached. A
//! client that asked for it (`?heartbeat=1`) also gets a `heartbeat` text frame with each ping,
//! since a browser page cannot see pings and would otherwise not notice a dead path.
//! The loop is generic over a `Sink + Stream` of messages, so it does not care where the
//! frames come from.
//!
//! Handlers run in the socket's task. One that does not finish at once (it awaits the
//! application, or the client's answer to a request of the server) does not stop the socket:
//! while it runs, what the session is sent is written, and the client's frames are read: those
//! holding only answers to the server's requests (which the handler may be waiting for) are
//! taken at once, others are held, at most [`HELD_FRAMES`] of them, and handled in order once
//! the handler is done, so the session's events are still handled one at a time, in order.
//!
//! Close codes the client sees: `4000 superseded` (another transport took the session: do not
//! reconnect this one), `4001 slow consumer` (detached for reading too slowly: resume), `1001`
//! (server going away: resume), `1009` (message too big), `1007` (invalid UTF-8).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri, Version};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tungstenite::protocol::{CloseFrame, Message, WebSocketConfig};
use tungstenite::Utf8Bytes;

use super::{outgoing, AttachQuery, Endpoint, Handler};
use crate::admission::ClientAddr;
use crate::error::Error;
use crate::hub::{AttachRequest, Attachment, CloseReason, Event, SessionHandle, Transport, ACK_EVENT};
use crate::metrics;
use crate::protocol::{encode, parse_envelopes_with, ProtocolError, Sid};

mod handshake;

use handshake::{Handshake, OnSocket};

/// Most frames read and held while a handler runs (see the module's doc); beyond them the
/// socket is read no further until the handler is done.
const HELD_FRAMES: usize = 32;

/// Close code telling the client another transport holds its session now.
pub const CLOSE_SUPERSEDED: u16 = 4000;
/// Close code telling the client it read too slowly and was detached: resume.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INVALID_DATA: u16 = 1007;

pub async fn upgrade<H: Handler>(
    handshake: Handshake,
    State(gateway): State<Endpoint<H>>,
    client: ClientAddr,
    headers: HeaderMap,
    uri: Uri,
    version: Version,
    query: Result<AttachQuery, Error>,
) -> Result<Response, Error> {
    let query = query?;
    let max = gateway.config().max_body;
    let heartbeat = query.wants_heartbeat();
    // Attach before upgrading, so that a full server (503) or an address over its new-session
    // limit (429) is answered rather than accepted and closed.
    let request = AttachRequest::new(Transport::WebSocket, query.sid.as_deref(), query.last_event_id.as_deref())
        .heartbeat(heartbeat.then_some(gateway.config().ws_ping))
        .change(query.change(Transport::WebSocket));
    let attachment = gateway.attach(request, client).await?;
    gateway.admit(&attachment, &headers, uri.query()).await?;
    // Read buffer: see READ_BUFFER. Write buffer: none, each frame is written as it is sent.
    // tungstenite's buffer is a `Vec` that keeps the largest size it ever grew to, by doubling
    // from one frame: with 8 KiB asked for, a session that received bursts of 512-byte events
    // held 4.6 KiB from then on (4 KiB asked for holds the same: it still doubles past 4,096),
    // 4.5 bytes per buffered event per session in `history` (docs/performance.md). A round trip
    // writes one frame either way; a burst of N events costs N writes instead of one per 8 KiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    metrics::websocket_handshake(version);
    Ok(handshake.accept(config, Attached { gateway, attachment, heartbeat }))
}

/// What a socket is served with once the handshake is done (see [`serve_socket`]).
struct Attached<H> {
    gateway: Endpoint<H>,
    attachment: Attachment,
    heartbeat: bool,
}

impl<H: Handler> OnSocket for Attached<H> {
    fn serve<S>(self, socket: tokio_tungstenite::WebSocketStream<S>) -> impl Future<Output = ()> + Send + 'static
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Attached { gateway, attachment, heartbeat } = self;
        gateway.track_socket(serve_socket(gateway.clone(), attachment, socket, heartbeat))
    }
}

/// Serves one attached socket until the peer leaves, goes silent, or the attachment ends.
/// With `heartbeat`, each ping is preceded by an [`encode::HEARTBEAT`] frame: browsers cannot
/// see protocol pings, so a page watches for this instead. It is not an event of the session:
/// no cursor, never buffered, never replayed.
///
/// A plain function returning an `async` block rather than an `async fn`, which would keep room
/// for its arguments twice (the socket and the attachment) in every socket's task.
#[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice")]
pub fn serve_socket<S, H: Handler>(gateway: Endpoint<H>, mut attachment: Attachment, mut socket: S, heartbeat: bool) -> impl Future<Output = ()>
where
    S: Sink<Message> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    async move {
        let every = gateway.config().ws_ping;
        let timer = std::pin::pin!(tokio::time::sleep(every));
        // Borrowed, not moved: this future keeps its arguments for its whole life, so a copy of
        // the socket moved into the connection would take room twice.
        let pings = Pings::new(timer, every, heartbeat);
        let mut connection = Connection::new(&gateway, &mut attachment, &mut socket, pings);
        let close = loop {
            let step = match connection.wait().await {
                Next::Event(event) => connection.on_event(event).await,
                Next::Frame(frame) => connection.on_frame(frame).await,
                Next::Ping => connection.on_ping().await,
            };
            if let ControlFlow::Break(close) = step {
                break close;
            }
        };
        connection.close(close).await;
    }
}

/// The close frame owed to the peer when the loop ends, if any: a code and a reason.
type Close = Option<(u16, &'static str)>;

/// What one wait of [`serve_socket`] ended with.
enum Next {
    Event(Result<Event, CloseReason>),
    Frame(Option<Result<Message, tungstenite::Error>>),
    Ping,
}

/// One socket being served: what [`serve_socket`]'s steps share.
struct Connection<'a, S, H> {
    socket: &'a mut S,
    attachment: &'a mut Attachment,
    gateway: &'a Endpoint<H>,
    session: SessionHandle,
    sid: Sid,
    write_timeout: Duration,
    pings: Pings<'a>,
    /// What a handler that took its time left for the loop (see [`Connection::handle_inline`]):
    /// the frames read while it ran that are not only answers, handled next, in order...
    held_frames: std::collections::VecDeque<Option<Result<Message, tungstenite::Error>>>,
    /// ...and the end of the attachment, if it came meanwhile (after what the handler emitted).
    held_end: Option<CloseReason>,
}

impl<'a, S, H: Handler> Connection<'a, S, H>
where
    S: Sink<Message> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    fn new(gateway: &'a Endpoint<H>, attachment: &'a mut Attachment, socket: &'a mut S, pings: Pings<'a>) -> Self {
        Connection {
            sid: attachment.sid().clone(),
            session: attachment.session(),
            write_timeout: gateway.config().slow_client_timeout,
            socket,
            attachment,
            gateway,
            pings,
            held_frames: std::collections::VecDeque::new(),
            held_end: None,
        }
    }

    /// One wait on three things, polled in this order: outgoing events first (what is owed to
    /// the client goes out before more is read), then the client's frames, then the ping
    /// timer. A `poll_fn` rather than `select!` so that one socket serves as both the sink and
    /// the stream: split halves would take a lock on every read and write.
    async fn wait(&mut self) -> Next {
        if let Some(frame) = self.held_frames.pop_front() {
            return Next::Frame(frame);
        }
        if let Some(reason) = self.held_end.take() {
            return Next::Event(Err(reason));
        }
        std::future::poll_fn(|cx| {
            if let Poll::Ready(event) = self.attachment.poll_recv(cx) {
                return Poll::Ready(Next::Event(event));
            }
            if let Poll::Ready(frame) = self.socket.poll_next_unpin(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
            self.pings.poll_due(cx).map(|()| Next::Ping)
        })
        .await
    }

    /// Writes an event (and whatever else is ready), or ends with the close code its end calls
    /// for.
    async fn on_event(&mut self, event: Result<Event, CloseReason>) -> ControlFlow<Close> {
        match event {
            Ok(event) => self.deliver(event).await,
            Err(CloseReason::Superseded) => ControlFlow::Break(Some((CLOSE_SUPERSEDED, "superseded"))),
            Err(CloseReason::Shutdown) => ControlFlow::Break(Some((CLOSE_GOING_AWAY, "server shutting down"))),
            Err(CloseReason::Unavailable) => ControlFlow::Break(Some((CLOSE_GOING_AWAY, "session store unreachable"))),
            Err(CloseReason::SlowConsumer) => ControlFlow::Break(Some((CLOSE_SLOW_CONSUMER, "slow consumer"))),
        }
    }

    /// Handles what the client sent: any frame is a sign of life; text frames hold envelopes.
    async fn on_frame(&mut self, frame: Option<Result<Message, tungstenite::Error>>) -> ControlFlow<Close> {
        self.pings.heard = true;
        match frame {
            Some(Ok(Message::Text(text))) => self.handle_inline(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                self.gateway.report_error(&self.sid, "binary frames are not supported: send JSON envelopes as text frames").await;
                ControlFlow::Continue(())
            }
            // Pongs only prove the peer is alive; pings are answered by the socket layer (which
            // yields no raw frames when reading).
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => ControlFlow::Continue(()),
            Some(Ok(Message::Close(_))) | None => ControlFlow::Break(None),
            Some(Err(err)) => {
                tracing::debug!(sid = self.sid.short(), %err, "websocket read failed");
                ControlFlow::Break(read_error_close(&err))
            }
        }
    }

    /// Runs the handlers of a text frame here, in this task, and writes their first reply
    /// right after: their emits need not wake this task, and the common request-reply case
    /// takes no other turn of the loop.
    async fn handle_inline(&mut self, text: &str) -> ControlFlow<Close> {
        self.attachment.begin_handling();
        let (handled, writable) = {
            // The fields are borrowed where they are used, not taken apart up front: references
            // held across the first poll would be stored in this future for every frame.
            let gateway: &Endpoint<H> = self.gateway;
            let mut handling = std::pin::pin!(handle_text(gateway, &self.session, text));
            match futures_util::poll!(handling.as_mut()) {
                Poll::Ready(handled) => (handled, true),
                Poll::Pending => {
                    // Boxed: the loop's state (a write in progress) would otherwise make every
                    // socket's task larger, for the rare handler that waits.
                    let parts = Waiting {
                        socket: &mut *self.socket,
                        attachment: &mut *self.attachment,
                        pings: &mut self.pings,
                        held_frames: &mut self.held_frames,
                        held_end: &mut self.held_end,
                        sid: &self.sid,
                        write_timeout: self.write_timeout,
                    };
                    Box::pin(parts.run(handling, gateway, &self.session)).await
                }
            }
        };
        if !writable {
            return ControlFlow::Break(None);
        }
        self.attachment.end_handling();
        match handled {
            Ok(()) => match self.attachment.try_recv() {
                Ok(Some(event)) => self.deliver(event).await,
                _ => ControlFlow::Continue(()),
            },
            Err(err) => {
                self.gateway.report_error(&self.sid, err).await;
                ControlFlow::Continue(())
            }
        }
    }

    /// A ping tick: drops a peer silent for two ticks, else sends the heartbeat frame (if
    /// asked for) and a ping.
    async fn on_ping(&mut self) -> ControlFlow<Close> {
        if !self.pings.tick() {
            tracing::debug!(sid = self.sid.short(), "websocket peer silent; dropping it");
            return ControlFlow::Break(None);
        }
        if self.pings.heartbeat && self.socket.feed(Message::Text(Utf8Bytes::from_static(encode::HEARTBEAT))).await.is_err() {
            return ControlFlow::Break(None);
        }
        if self.socket.send(Message::Ping(Default::default())).await.is_err() {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// [`deliver`], as a step: a socket that can no longer be written ends the loop.
    async fn deliver(&mut self, event: Event) -> ControlFlow<Close> {
        if deliver(self.socket, event, self.attachment, &self.sid, self.write_timeout).await {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(None)
        }
    }

    /// Stops waiting for events, then sends the close frame owed (if any) and completes the
    /// closing handshake.
    async fn close(&mut self, close: Close) {
        self.attachment.stop_waiting();
        if let Some((code, reason)) = close {
            let frame = CloseFrame { code: code.into(), reason: reason.into() };
            if let Ok(Ok(())) = tokio::time::timeout(CLOSING, self.socket.send(Message::Close(Some(frame)))).await {
                finish_closing(self.gateway, &self.session, self.socket).await;
            }
        }
    }
}

/// The ping timer, and what the peer did between its ticks.
///
/// The timer is polled, which registers the task with it, once each time it is set; until it
/// fires, a wait only looks at whether it has (a load, where a poll is some 140 instructions:
/// a round trip would otherwise pay for a timer it never uses). Each ping sets it again from
/// the time of that ping.
struct Pings<'t> {
    timer: Pin<&'t mut Sleep>,
    every: Duration,
    /// Whether the timer has been polled since it was last set.
    registered: bool,
    /// Whether anything arrived since the last tick, and for how many ticks nothing has: a flag
    /// per frame rather than a clock reading per frame.
    heard: bool,
    silent_ticks: u32,
    /// Whether the client asked for heartbeat frames.
    heartbeat: bool,
}

impl<'t> Pings<'t> {
    /// Pings every `every`, starting with `timer`, set to fire `every` from now.
    fn new(timer: Pin<&'t mut Sleep>, every: Duration, heartbeat: bool) -> Pings<'t> {
        Pings { timer, every, registered: false, heard: false, silent_ticks: 0, heartbeat }
    }

    /// Ready when the next ping is due.
    fn poll_due(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.registered {
            return if self.timer.is_elapsed() { Poll::Ready(()) } else { Poll::Pending };
        }
        self.registered = true;
        self.timer.as_mut().poll(cx)
    }

    /// Sets the timer for the next ping; returns whether the peer is still alive (it has not
    /// been silent for two ticks).
    fn tick(&mut self) -> bool {
        self.timer.as_mut().reset(Instant::now() + self.every);
        self.registered = false;
        self.silent_ticks = if std::mem::take(&mut self.heard) { 0 } else { self.silent_ticks + 1 };
        self.silent_ticks < 2
    }
}

/// Bytes tungstenite reads per call. Its default is 128 KiB per socket, allocated up front and
/// zero-filled before every read, so it costs memory per idle socket and CPU per message in
/// proportion (measured with callgrind: 93 % of a round trip at 128 KiB). Client frames are
/// small, so 1 KiB reads take a whole frame in one call; a larger frame (up to `max_body`) still
/// arrives, in more reads.
pub(crate) const READ_BUFFER: usize = 1024;

/// What a handler that waits needs of its connection (see [`Connection::handle_inline`]).
struct Waiting<'b, 'a, S> {
    socket: &'b mut S,
    attachment: &'b mut Attachment,
    pings: &'b mut Pings<'a>,
    held_frames: &'b mut std::collections::VecDeque<Option<Result<Message, tungstenite::Error>>>,
    held_end: &'b mut Option<CloseReason>,
    sid: &'b Sid,
    write_timeout: Duration,
}

impl<S> Waiting<'_, '_, S>
where
    S: Sink<Message> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    /// Runs `handling` to its end while writing what the session is sent and reading the
    /// client's frames: answers are taken at once, others held. Returns what the handler gave
    /// and whether the socket can still be written.
    async fn run<H: Handler, F>(self, mut handling: Pin<&mut F>, gateway: &Endpoint<H>, session: &SessionHandle) -> (Result<(), ProtocolError>, bool)
    where
        F: Future<Output = Result<(), ProtocolError>>,
    {
        let Waiting { socket, attachment, pings, held_frames, held_end, sid, write_timeout } = self;
        // The handler waits for something: the emits meanwhile must wake this task.
        attachment.end_handling();
        let mut writable = true;
        let handled = loop {
            let next = std::future::poll_fn(|cx| {
                if let Poll::Ready(handled) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Err(handled));
                }
                if held_end.is_none() && writable {
                    if let Poll::Ready(event) = attachment.poll_recv(cx) {
                        return Poll::Ready(Ok(Next::Event(event)));
                    }
                }
                // Not past the socket's end, nor past the bound.
                let readable = held_frames.back().is_none_or(|frame| matches!(frame, Some(Ok(Message::Text(_) | Message::Binary(_)))));
                if readable && held_frames.len() < HELD_FRAMES {
                    if let Poll::Ready(frame) = socket.poll_next_unpin(cx) {
                        return Poll::Ready(Ok(Next::Frame(frame)));
                    }
                }
                Poll::Pending
            })
            .await;
            match next {
                Err(handled) => break handled,
                Ok(Next::Event(Ok(event))) => writable = deliver(socket, event, attachment, sid, write_timeout).await,
                // The close comes after what the handler emits.
                Ok(Next::Event(Err(reason))) => *held_end = Some(reason),
                Ok(Next::Frame(Some(Ok(Message::Text(text))))) if only_answers(gateway, text.as_str()) => {
                    let _ = handle_text(gateway, session, text.as_str()).await;
                }
                // Pongs prove the peer alive; pings are answered by the socket layer.
                Ok(Next::Frame(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))))) => pings.heard = true,
                Ok(Next::Frame(frame)) => held_frames.push_back(frame),
                Ok(Next::Ping) => {}
            }
        };
        (handled, writable)
    }
}

/// How long the closing handshake may take before the socket is dropped.
const CLOSING: Duration = Duration::from_secs(1);

/// RFC 6455 closing handshake, server side: after our Close, the peer may still have frames in
/// flight (it sent them before it saw our Close). They are handled, not dropped, until the
/// peer's Close arrives or [`CLOSING`] runs out.
async fn finish_closing<R, H: Handler>(gateway: &Endpoint<H>, session: &SessionHandle, stream: &mut R)
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + CLOSING;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await {
        match message {
            // Too late to tell the client what was wrong with a bad frame: it is closing.
            Message::Text(text) => {
                let _ = handle_text(gateway, session, text.as_str()).await;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// Whether a text frame holds only the client's answers to requests of the server
/// (`{"event": "ack", "ack": N, ...}`), which are taken at once, whatever handler runs.
fn only_answers<H: Handler>(gateway: &Endpoint<H>, text: &str) -> bool {
    parse_envelopes_with(text, &gateway.config().limits)
        .is_ok_and(|envelopes| envelopes.iter().all(|envelope| envelope.ack.is_some() && envelope.event == ACK_EVENT))
}

/// Hands the envelopes of one text frame to the handlers, or says what is wrong with it.
async fn handle_text<H: Handler>(gateway: &Endpoint<H>, session: &SessionHandle, text: &str) -> Result<(), ProtocolError> {
    let envelopes = parse_envelopes_with(text, &gateway.config().limits)?;
    metrics::events_in_websocket(envelopes.len());
    if let Err(err) = gateway.dispatch_to(session, envelopes).await {
        // The session is gone or Redis is unreachable: the attachment ends on its own (it was
        // removed, or told to resume), which closes the socket with the reason.
        tracing::debug!(sid = session.sid().short(), %err, "events not handled");
    }
    Ok(())
}

/// Writes `first` and whatever else is ready. A peer that stops reading blocks these writes;
/// past the slow-client timeout it is dropped like any slow consumer (it resumes from its
/// cursor). The timer is armed only if the socket does not take the batch at once, so the usual
/// write costs no timer. Returns whether the socket is still usable.
async fn deliver<W: Sink<Message> + Unpin>(
    sink: &mut W,
    first: Event,
    attachment: &mut Attachment,
    sid: &Sid,
    write_timeout: Duration,
) -> bool {
    let mut write = std::pin::pin!(write_ready(sink, first, attachment, sid));
    let written = match futures_util::poll!(write.as_mut()) {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => tokio::time::timeout(write_timeout, write).await,
    };
    match written {
        Ok(result) => result.is_ok(),
        Err(_) => {
            tracing::info!(sid = sid.short(), "websocket peer stopped reading; dropping it");
            false
        }
    }
}

/// Writes `first` and whatever else is ready, then flushes once.
async fn write_ready<W: Sink<Message> + Unpin>(sink: &mut W, first: Event, attachment: &mut Attachment, sid: &Sid) -> Result<(), ()> {
    sink.feed(frame(&first, sid)).await.map_err(drop)?;
    while let Ok(Some(event)) = attachment.try_recv() {
        sink.feed(frame(&event, sid)).await.map_err(drop)?;
    }
    sink.flush().await.map_err(drop)
}

/// One event as a text frame, counted.
fn frame(event: &Event, sid: &Sid) -> Message {
    let text = encode::envelope(&outgoing(event, sid));
    metrics::event_out(Transport::WebSocket, text.len());
    Message::Text(text.into())
}

/// The close frame owed to a peer whose frame could not be read: RFC 6455 names a code for a
/// message over the size limit (1009) and for text that is not UTF-8 (1007). Other read errors
/// mean the connection is gone; nothing is owed.
fn read_error_close(err: &tungstenite::Error) -> Close {
    match err {
        tungstenite::Error::Capacity(_) => Some((CLOSE_TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => Some((CLOSE_INVALID_DATA, "text frame is not valid UTF-8")),
        _ => None,
    }
}
