//! Configuration: every knob of the gateway, as command-line flags with environment fallbacks.
//!
//! [`Config`] is what the library needs and has sensible defaults for embedding; [`Cli`] is the
//! binary's view of it (clap), adding where to listen and what to serve beside the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::hub::HubConfig;

/// Settings of the gateway itself (hub and transports).
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a session outlives its last transport.
    pub grace: Duration,
    /// How many recent events each session keeps for replay after a drop.
    pub buffer: usize,
    /// Interval of SSE keep-alive comments (they also find dead connections).
    pub keepalive: Duration,
    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    pub ws_ping: Duration,
    /// Longest a long-poll waits for an event before answering `[]`.
    pub poll_timeout: Duration,
    /// Largest accepted POST body and WebSocket message, in bytes.
    pub max_body: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: Duration::from_secs(30),
            buffer: 1024,
            keepalive: Duration::from_secs(15),
            ws_ping: Duration::from_secs(20),
            poll_timeout: Duration::from_secs(25),
            max_body: 64 * 1024,
        }
    }
}

impl Config {
    pub fn hub(&self) -> HubConfig {
        HubConfig { grace: self.grace, buffer: self.buffer }
    }
}

/// switchyard: a realtime gateway (WebSocket, SSE+POST, long-polling over one session hub).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "SWITCHYARD_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,

    /// How long a session outlives a dropped transport (e.g. 30s, 500ms).
    #[arg(long, env = "SWITCHYARD_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,

    /// Events each session keeps for replay after a drop (at least 1).
    #[arg(long, env = "SWITCHYARD_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub buffer: u32,

    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,

    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    #[arg(long, env = "SWITCHYARD_WS_PING", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ws_ping: Duration,

    /// Longest a long-poll request waits for an event.
    #[arg(long, env = "SWITCHYARD_POLL_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub poll_timeout: Duration,

    /// Largest accepted POST body and WebSocket message, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_BODY", default_value_t = 65536)]
    pub max_body: usize,

    /// Directory of the demo page and browser client.
    #[arg(long, env = "SWITCHYARD_STATIC_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/static"))]
    pub static_dir: PathBuf,
}

impl Cli {
    pub fn config(&self) -> Config {
        Config {
            grace: self.grace,
            buffer: self.buffer as usize,
            keepalive: self.keepalive,
            ws_ping: self.ws_ping,
            poll_timeout: self.poll_timeout,
            max_body: self.max_body,
        }
    }
}
