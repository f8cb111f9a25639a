//! The default app: the behaviour of the Flask-SocketIO chat switchyard started from.
//!
//! ```python
//! @socketio.on('message')
//! def handle_message(message):
//!     print('Received message: ', message)
//!     emit('response', 'Message received!')
//! ```
//!
//! Plus the demo's chat room: once a session has sent `join` with a room name, every `message` it
//! sends also goes to everyone else in its rooms as `chat` (`{"room", "from", "text"}`), over
//! whatever transport each member holds (like Socket.IO's `emit(..., to=room, skip_sid=sender)`:
//! the sender's page shows its own line already). Joining and leaving are silent, so a session's
//! own stream holds exactly the seed's events unless others talk to it; only a bad room name is
//! answered, with an `error` event.

use std::sync::LazyLock;

use serde_json::{json, Value};

use crate::handler::{Context, Registry};
use crate::hub::{Rendered, Target};

/// The seed's reply, byte for byte.
pub const REPLY: &str = "Message received!";

/// The `response` event with [`REPLY`], rendered once: every `message` gets the same bytes.
static RESPONSE: LazyLock<Rendered> = LazyLock::new(|| Rendered::new("response", &REPLY).expect("a valid event name"));

/// The room the demo page joins.
pub const LOBBY: &str = "lobby";

/// Registers the seed's handlers on a gateway builder (a [`Registry`]): on `message`, emit
/// `response` with [`REPLY`] to the sender (and `chat` to the others in the sender's rooms);
/// `join` and `leave` manage the sender's rooms.
pub fn seed<R: Registry>(registry: R) -> R {
    registry
        .on("message", |ctx, message| async move {
            tracing::debug!(sid = ctx.sid().short(), %message, "received message");
            // The reply first: the record that a numbered message was handled is stored with the
            // first event emitted to the sender (cluster mode, see docs/design.md), so a node
            // that dies after the reply has the re-send skipped. Were the chat first, a node dying
            // between the two would have the re-send handled again, and the room see it twice.
            if let Err(err) = ctx.emit_rendered(&RESPONSE).await {
                tracing::debug!(sid = ctx.sid().short(), %err, "reply not emitted");
            }
            let rooms = ctx.rooms().await;
            if !rooms.is_empty() {
                // Boxed: publishing's future is large, and the handler's future, moved into a
                // box for every `message`, would otherwise be as large for a session in no room.
                Box::pin(chat(&ctx, rooms, &message)).await;
            }
        })
        .on("join", |ctx, room| async move { membership(ctx, room, true).await })
        .on("leave", |ctx, room| async move { membership(ctx, room, false).await })
}

/// `message`'s text as `chat` to the others in each of `rooms`.
async fn chat(ctx: &Context, rooms: Vec<String>, message: &Value) {
    for room in rooms {
        let chat = json!({"room": room, "from": ctx.sid().short(), "text": message});
        let _ = ctx.hub().publish_except(&Target::Room(room), Some(ctx.sid()), "chat", &chat).await;
    }
}

/// `join`/`leave` with a room name as data: silent when it works, an `error` event saying what is
/// wrong with the name otherwise.
async fn membership(ctx: Context, room: Value, join: bool) {
    let Some(room) = room.as_str() else {
        let _ = ctx.emit("error", json!({"error": "data must be a room name (a string)", "event": ctx.event()})).await;
        return;
    };
    let hub = ctx.hub();
    let result = if join { hub.join(ctx.sid(), room).await } else { hub.leave(ctx.sid(), room).await };
    if let Err(err) = result {
        let _ = ctx.emit("error", json!({"error": err.to_string(), "event": ctx.event()})).await;
    }
}
