//! The default app: the behaviour of the Flask-SocketIO chat switchyard started from.
//!
//! ```python
//! @socketio.on('message')
//! def handle_message(message):
//!     print('Received message: ', message)
//!     emit('response', 'Message received!')
//! ```

use crate::gateway::GatewayBuilder;

/// The seed's reply, byte for byte.
pub const REPLY: &str = "Message received!";

/// Registers the seed's handlers: on `message`, emit `response` with [`REPLY`] to the sender.
pub fn seed(builder: GatewayBuilder) -> GatewayBuilder {
    builder.on("message", |ctx, message| async move {
        tracing::debug!(sid = ctx.sid().short(), %message, "received message");
        if let Err(err) = ctx.emit("response", REPLY).await {
            tracing::debug!(sid = ctx.sid().short(), %err, "reply not emitted");
        }
    })
}
