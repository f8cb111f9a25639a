//! switchyard: a realtime gateway that keeps browsers live whatever their network allows.
//!
//! * [`protocol`]: envelopes, session ids, cursors (pure, no I/O).
//! * [`hub`]: sessions, their event buffers, attach/detach, expiry, routing.
//! * [`transport`]: WebSocket, SSE, long-polling and POST, each a thin loop over the hub.
//! * [`gateway`]: the library's front door: register handlers, get an axum `Router`.
//! * [`app`]: the default app (the seed's `message` -> `response`).
//! * [`server`]: the binary's router and `run(listener, shutdown)`.

pub mod app;
pub mod config;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod transport;

pub use config::Config;
pub use error::Error;
pub use gateway::{Context, Gateway, GatewayBuilder};
pub use hub::{Hub, Transport};
pub use protocol::{Cursor, Envelope, Sid};
