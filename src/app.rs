//! The default app: the behaviour of the Flask-SocketIO chat switchyard started from.
//!
//! ```python
//! @socketio.on('message')
//! def handle_message(message):
//!     print('Received message: ', message)
//!     emit('response', 'Message received!')
//! ```
//!
//! Plus the demo's chat room: a session that sent `join` with a room name gets `joined`, and from
//! then on every `message` it sends is also broadcast to everyone in its rooms (itself included)
//! as `chat` (`{"room", "from", "text"}`), before the seed's `response`, over whatever transport
//! each member holds. A client that never
//! joins sees exactly the seed's behaviour.

use serde_json::{json, Value};

use crate::gateway::{Context, GatewayBuilder};

/// The seed's reply, byte for byte.
pub const REPLY: &str = "Message received!";

/// The room the demo page joins.
pub const LOBBY: &str = "lobby";

/// Registers the seed's handlers: on `message`, emit `response` with [`REPLY`] to the sender
/// (and `chat` to the sender's rooms); `join` and `leave` manage the sender's rooms.
pub fn seed(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        .on("message", |ctx, message| async move {
            tracing::debug!(sid = ctx.sid().short(), %message, "received message");
            // The room's line first, then the sender's acknowledgement: when the sender has its
            // `response`, its own `chat` line is already in its stream.
            let rooms = ctx.hub().info(ctx.sid()).map(|info| info.rooms).unwrap_or_default();
            for room in rooms {
                let chat = json!({"room": room, "from": ctx.sid().short(), "text": message});
                let _ = ctx.hub().emit_room(&room, "chat", &chat).await;
            }
            if let Err(err) = ctx.emit("response", REPLY).await {
                tracing::debug!(sid = ctx.sid().short(), %err, "reply not emitted");
            }
        })
        .on("join", |ctx, room| async move { membership(ctx, room, true).await })
        .on("leave", |ctx, room| async move { membership(ctx, room, false).await })
}

/// `join`/`leave` with a room name as data; answers `joined`/`left` with `{"room": ROOM}`, or an
/// `error` event saying what is wrong with the name.
async fn membership(ctx: Context, room: Value, join: bool) {
    let Some(room) = room.as_str() else {
        let _ = ctx.emit("error", json!({"error": "data must be a room name (a string)", "event": ctx.event()})).await;
        return;
    };
    let hub = ctx.hub();
    let result = if join { hub.join(ctx.sid(), room) } else { hub.leave(ctx.sid(), room) };
    match result {
        Ok(_) => {
            let _ = ctx.emit(if join { "joined" } else { "left" }, json!({ "room": room })).await;
        }
        Err(err) => {
            let _ = ctx.emit("error", json!({"error": err.to_string(), "event": ctx.event()})).await;
        }
    }
}
