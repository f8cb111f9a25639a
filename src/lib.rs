//! switchyard: a realtime gateway that keeps browsers live whatever their network allows.
//!
//! The modules, bottom up; each imports only modules listed above it (`tests/layers.rs` holds
//! the table and fails on an import against it):
//!
//! * [`protocol`]: envelopes, session ids, cursors (pure, no I/O).
//! * [`tasks`]: the one owner of a gateway's background tasks.
//! * [`auth`], [`admission`]: tokens that open sessions; the per-client-address limit on new
//!   sessions, and whose address that is.
//! * [`hub`]: sessions, their event buffers, attach/detach, expiry, routing.
//! * [`metrics`]: what the gateway records, for Prometheus.
//! * [`handler`]: what a handler sees ([`Context`], [`Opening`]) and where it registers
//!   ([`Registry`]).
//! * [`error`]: the one error type of the HTTP surface.
//! * [`transport`]: WebSocket, SSE, long-polling and POST, each a thin loop over the hub.
//! * [`app`]: the default app (the seed's `message` -> `response`).
//! * [`upstream`]: forwarding events to an application over HTTP, and its lifecycle hooks.
//! * [`api`]: the publish API (`/api/...`): the application pushes to sessions and rooms.
//! * [`admin`]: the operator page (`/admin`): the gateway's live figures, guarded like the API.
//! * [`config`]: every knob, assembled from the settings each module above owns.
//! * [`gateway`]: the library's front door: register handlers, get an axum `Router`.
//! * [`server`]: the binary's router and `run(listener, shutdown)`.

pub mod admin;
pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod gateway;
pub mod handler;
pub mod hub;
pub mod metrics;
mod prefixed;
pub mod protocol;
pub mod server;
pub mod tasks;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use error::Error;
pub use gateway::{Gateway, GatewayBuilder};
pub use handler::{Context, IntoAck, Opening, Registry, Reply};
pub use hub::{Hub, Rendered, Target, Transport};
pub use protocol::{Cursor, Envelope, Sid};
pub use tasks::Tasks;

// The Rust blocks of the README and the docs, compiled (and run, unless marked `no_run`) as doc
// tests, so they cannot drift from the API. tests/docs.rs holds the other blocks to account.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../docs/design.md")]
mod design_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../docs/protocol.md")]
mod protocol_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../docs/client.md")]
mod client_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../docs/deploy.md")]
mod deploy_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../docs/performance.md")]
mod performance_doctests {}
