//! Engine.IO over WebSocket: a session opened on a WebSocket (its first frame is the open
//! packet), or the upgrade of a long-polling session.
//!
//! The upgrade follows the protocol: the client opens a WebSocket with the session's sid and
//! sends `2probe`; the server answers `3probe` and answers the waiting poll with `6` (noop) so
//! the client can pause polling; the client sends `5` and from then on the WebSocket carries
//! the session (polling requests get `400`). A probe that fails leaves polling as it was.
//! Each text frame is one Engine.IO packet.
//!
//! A session opened on a WebSocket is carried by the [`Direct`] link: its socket task reads the
//! frames and writes the queue itself, so a packet and its reply take no turn of another task
//! (as on `/ws`). An upgraded session already has a socket task, fed through its inbox by the
//! long-polling requests; the WebSocket that takes over keeps doing so ([`serve`]): it writes
//! whatever the queue holds and hands every frame it reads to the socket task.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::SinkExt;
use std::task::Poll;

use super::engine::{Carrier, CloseCause, EngineSession, Inbound};
use super::packet::{decode_engine, EnginePacket};
use super::socket::{self, Link};
use super::{handshake, open, Endpoint, Handler, Opening};
use crate::transport::ws::READ_BUFFER;
use crate::error::{EngineIoError, Error};

/// Answers a WebSocket request: a new session (no sid), or the upgrade of session `sid`.
pub fn upgrade<H: Handler>(endpoint: Endpoint<H>, upgrade: WebSocketUpgrade, sid: Option<String>, opening: Opening) -> Result<Response, Error> {
    let max = endpoint.config().socketio.max_payload;
    // Small read and write buffers, as on `/ws` (see `READ_BUFFER` there): tungstenite's
    // default read buffer is 128 KiB per socket, resident while the socket is idle.
    let upgrade = upgrade.read_buffer_size(READ_BUFFER).write_buffer_size(8 * 1024).max_message_size(max).max_frame_size(max);
    let Some(sid) = sid else {
        // Nothing feeds the inbox: the socket task reads this WebSocket itself.
        let (session, _) = open(&endpoint, Carrier::WebSocket)?;
        let first = handshake(&endpoint, &session, false);
        let write_limit = endpoint.config().socketio.ping_timeout;
        return Ok(upgrade.on_upgrade(move |mut socket: WebSocket| {
            let tracker = endpoint.clone();
            tracker.track_socket(async move {
                if socket.send(Message::Text(first.into())).await.is_ok() {
                    let link = Direct { socket, write_limit, gone: false };
                    socket::run(endpoint, session, link, opening).await;
                } else {
                    session.close(CloseCause::Client);
                    endpoint.engines().remove(&session.id);
                }
            })
        }));
    };
    let session = endpoint.engines().get(&sid).ok_or(EngineIoError::UnknownSid)?;
    if !session.begin_upgrade() {
        return Err(EngineIoError::BadRequest.into());
    }
    let probe_limit = endpoint.config().socketio.ping_timeout;
    Ok(upgrade.on_upgrade(move |mut socket: WebSocket| {
        endpoint.track_socket(async move {
            let upgraded = probe(&session, &mut socket, probe_limit).await;
            session.end_upgrade(upgraded);
            if upgraded {
                serve(&session, &mut socket).await;
            }
        })
    }))
}

/// The probe: `2probe` answered `3probe` (and the waiting poll released with a noop), until
/// the client's `5`. Anything else, or nothing within `limit`, fails the upgrade.
async fn probe(session: &Arc<EngineSession>, socket: &mut WebSocket, limit: Duration) -> bool {
    loop {
        let Ok(Some(Ok(message))) = tokio::time::timeout(limit, socket.recv()).await else {
            return false;
        };
        let Message::Text(text) = message else {
            continue; // pings and pongs of the WebSocket itself
        };
        match decode_engine(text.as_str()) {
            Ok(EnginePacket::Ping("probe")) => {
                if socket.send(Message::Text("3probe".into())).await.is_err() {
                    return false;
                }
                session.push("6".to_owned());
            }
            Ok(EnginePacket::Upgrade) => return !session.is_closed(),
            _ => return false,
        }
    }
}

/// Carries the session: writes its queue, reads its packets, until either side closes.
async fn serve(session: &EngineSession, socket: &mut WebSocket) {
    loop {
        let packets = session.take();
        if !packets.is_empty() {
            for packet in packets {
                if socket.feed(Message::Text(packet.into())).await.is_err() {
                    return session.close(CloseCause::Client);
                }
            }
            if socket.flush().await.is_err() {
                return session.close(CloseCause::Client);
            }
            continue;
        }
        if session.is_closed() {
            break;
        }
        tokio::select! {
            () = session.woken() => {}
            frame = socket.recv() => {
                let inbound = match frame {
                    Some(Ok(Message::Text(text))) => match decode_engine(text.as_str()) {
                        Ok(EnginePacket::Message(message)) => Inbound::Message(message.into()),
                        Ok(EnginePacket::Pong(_)) => Inbound::Pong,
                        // A probe ping arriving late, or a noop: nothing to do.
                        Ok(EnginePacket::Ping(_) | EnginePacket::Noop) => continue,
                        Ok(EnginePacket::Close) => return session.close(CloseCause::Client),
                        Ok(EnginePacket::Open | EnginePacket::Upgrade | EnginePacket::Binary(_)) | Err(_) => {
                            session.close(CloseCause::ProtocolError);
                            break;
                        }
                    },
                    Some(Ok(Message::Binary(_))) => Inbound::Binary,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The client left, or sent a message over maxPayload (the socket layer
                    // refuses it).
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return session.close(CloseCause::Client),
                };
                if !session.deliver(inbound).await {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
}

/// The WebSocket a session opened on, read and written by the session's socket task itself.
struct Direct {
    socket: WebSocket,
    /// How long a write may wait for a client that does not read before the session closes.
    write_limit: Duration,
    /// Whether the client has gone (closed, or cannot be written to): no close frame is owed.
    gone: bool,
}

impl Link for Direct {
    async fn next(&mut self, session: &EngineSession) -> Option<Inbound> {
        loop {
            // Cancel-safe: each frame is taken whole by one poll of `recv`, and handled
            // before the next await.
            let inbound = match self.socket.recv().await {
                Some(Ok(Message::Text(text))) => match decode_engine(text.as_str()) {
                    Ok(EnginePacket::Message(message)) => Inbound::Message(message.into()),
                    Ok(EnginePacket::Pong(_)) => Inbound::Pong,
                    // A noop, or a ping (the client does not ping): nothing to do.
                    Ok(EnginePacket::Ping(_) | EnginePacket::Noop) => continue,
                    Ok(EnginePacket::Close) => {
                        self.gone = true;
                        session.close(CloseCause::Client);
                        return None;
                    }
                    Ok(EnginePacket::Open | EnginePacket::Upgrade | EnginePacket::Binary(_)) | Err(_) => {
                        session.close(CloseCause::ProtocolError);
                        return None;
                    }
                },
                Some(Ok(Message::Binary(_))) => Inbound::Binary,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // The client left, or sent a message over maxPayload (the socket layer refuses
                // it).
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    self.gone = true;
                    session.close(CloseCause::Client);
                    return None;
                }
            };
            return Some(inbound);
        }
    }

    /// Writes the queue in one flush. A client that stops reading blocks the write; past the
    /// ping timeout (the protocol's own limit for a silent client) the session closes. The timer
    /// is armed only if the socket does not take the batch at once.
    async fn write(&mut self, session: &EngineSession) -> bool {
        let packets = session.take();
        if packets.is_empty() {
            return true;
        }
        let limit = self.write_limit;
        let mut writing = std::pin::pin!(write_all(&mut self.socket, packets));
        let written = match futures_util::poll!(writing.as_mut()) {
            Poll::Ready(written) => written,
            Poll::Pending => tokio::time::timeout(limit, writing).await.unwrap_or(false),
        };
        if !written {
            self.gone = true;
            session.close(CloseCause::Client);
        }
        written
    }

    /// Writes what the session queued before it closed, then the close frame, within a second.
    async fn finish(&mut self, session: &EngineSession) {
        if self.gone {
            return;
        }
        let packets = session.take();
        let socket = &mut self.socket;
        let _ = tokio::time::timeout(Duration::from_secs(1), async move {
            if write_all(socket, packets).await {
                let _ = socket.send(Message::Close(None)).await;
            }
        })
        .await;
    }
}

/// Writes `packets` as text frames and flushes once; `false` if the socket failed.
async fn write_all(socket: &mut WebSocket, packets: Vec<String>) -> bool {
    for packet in packets {
        if socket.feed(Message::Text(packet.into())).await.is_err() {
            return false;
        }
    }
    socket.flush().await.is_ok()
}
