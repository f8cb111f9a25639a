//! Configuration: every knob of the gateway, as command-line flags with environment fallbacks.
//!
//! [`Config`] is what the library needs and has sensible defaults for embedding; [`Cli`] is the
//! binary's view of it (clap), adding where to listen and what to serve beside the gateway.
//!
//! A setting belongs to the module that uses it: the hub's are a [`HubConfig`], the transports'
//! a [`TransportConfig`], the upstream client's an [`UpstreamConfig`], each defined where it is
//! used. This module assembles them: [`Config`] is the one flat set of knobs a user fills in, and
//! [`Config::hub`] and [`Config::transport`] cut it into what each part takes. So `config`
//! imports those modules and they never import it; only the top (the gateway, the server and
//! `main`) does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::admission::IpBlock;
use crate::hub::HubConfig;
use crate::protocol::Limits;
use crate::transport::socketio::SocketIoConfig;
use crate::transport::TransportConfig;
use crate::upstream::UpstreamConfig;

/// Settings of the gateway itself (hub and transports), with defaults fit for embedding: set
/// what differs and take the rest from [`Config::default`].
///
/// ```
/// use std::time::Duration;
/// use switchyard::{Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = Config {
///     // Mobile clients drop often and for long: keep their sessions a few minutes.
///     grace: Duration::from_secs(180),
///     buffer: 256,
///     allowed_origins: vec!["https://app.example.com".to_owned()],
///     ..Config::default()
/// };
/// let gateway = Gateway::builder(config).build();
/// assert_eq!(gateway.hub().config().grace, Duration::from_secs(180));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a session outlives its last transport.
    pub grace: Duration,
    /// How many recent events each session keeps for replay after a drop.
    pub buffer: usize,
    /// How old a kept event may get; `None`: no age bound, only the count.
    pub buffer_age: Option<Duration>,
    /// Interval of SSE keep-alive comments (they also find dead connections).
    pub keepalive: Duration,
    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    pub ws_ping: Duration,
    /// Longest a long-poll waits for an event before answering `[]`.
    pub poll_timeout: Duration,
    /// Largest accepted POST body and WebSocket message, in bytes.
    pub max_body: usize,
    /// Bounds on envelopes in one body or frame.
    pub limits: Limits,
    /// Most live sessions; new ones beyond it get 503.
    pub max_sessions: usize,
    /// How long an attached transport may leave events unread before it is detached.
    pub slow_client_timeout: Duration,
    /// Sustained POSTs per second per session, and the burst allowed above it (429 beyond).
    pub send_rate: u32,
    /// POSTs a session may send in a burst above `send_rate`.
    pub send_burst: u32,
    /// Browser origins allowed besides the server's own and loopback ones (exact
    /// `scheme://host[:port]` strings; `*` allows any).
    pub allowed_origins: Vec<String>,
    /// Longest a client may take to send a request's headers (slowloris guard).
    pub header_timeout: Duration,
    /// Most streams (requests) one HTTP/2 connection may have open at once: every SSE stream,
    /// poll and WebSocket of all of a browser's tabs of the site. A client that opens more has
    /// them refused (`REFUSED_STREAM`). HTTPS only: plain HTTP is HTTP/1.1.
    pub http2_max_streams: u32,
    /// On shutdown, longest to wait for connections to finish before returning.
    pub drain: Duration,
    /// With a secret, opening a session takes an HS256 JWT signed with it (see `auth`).
    pub auth_secret: Option<String>,
    /// Most new sessions one client address may open per minute (a token bucket that deep,
    /// refilled continuously); 0 turns the limit off. See `admission`: it needs the peer
    /// address (`ConnectInfo<SocketAddr>`), which `server::run` provides.
    pub max_new_sessions_per_ip: u32,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpBlock>,
    /// Socket.IO (`/socket.io/`): how often the server pings (Engine.IO `pingInterval`).
    pub sio_ping_interval: Duration,
    /// Socket.IO: how long the server waits for a pong before closing (`pingTimeout`).
    pub sio_ping_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: Duration::from_secs(30),
            buffer: 1024,
            buffer_age: None,
            keepalive: Duration::from_secs(15),
            ws_ping: Duration::from_secs(20),
            poll_timeout: Duration::from_secs(25),
            max_body: 64 * 1024,
            limits: Limits::default(),
            max_sessions: 100_000,
            slow_client_timeout: Duration::from_secs(30),
            send_rate: 200,
            send_burst: 400,
            allowed_origins: Vec::new(),
            header_timeout: Duration::from_secs(10),
            http2_max_streams: 256,
            drain: Duration::from_secs(10),
            auth_secret: None,
            max_new_sessions_per_ip: 120,
            trusted_proxies: Vec::new(),
            sio_ping_interval: Duration::from_secs(25),
            sio_ping_timeout: Duration::from_secs(20),
        }
    }
}

impl Config {
    /// The hub's settings.
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            grace: self.grace,
            buffer: self.buffer,
            buffer_age: self.buffer_age,
            max_sessions: self.max_sessions,
            slow_client_timeout: self.slow_client_timeout,
            send_rate: self.send_rate,
            send_burst: self.send_burst,
            max_body: self.max_body,
            max_batch: self.limits.max_batch,
        }
    }

    /// The transports' settings.
    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            keepalive: self.keepalive,
            ws_ping: self.ws_ping,
            poll_timeout: self.poll_timeout,
            max_body: self.max_body,
            limits: self.limits.clone(),
            slow_client_timeout: self.slow_client_timeout,
            allowed_origins: self.allowed_origins.clone(),
            socketio: SocketIoConfig { ping_interval: self.sio_ping_interval, ping_timeout: self.sio_ping_timeout, max_payload: self.max_body },
        }
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

    /// Also drop kept events older than this (e.g. 5m; within a sixteenth more); a resume from
    /// before them gets a `gap`. Off by default: only --buffer bounds the history.
    #[arg(long, env = "SWITCHYARD_BUFFER_AGE", value_parser = humantime::parse_duration)]
    pub buffer_age: Option<Duration>,

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

    /// Most envelopes in one batch (JSON array).
    #[arg(long, env = "SWITCHYARD_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,

    /// Deepest nesting of arrays/objects inside an envelope's `data`.
    #[arg(long, env = "SWITCHYARD_MAX_DEPTH", default_value_t = 32)]
    pub max_depth: usize,

    /// Most live sessions (attached or in their grace period); beyond it new sessions get 503.
    #[arg(long, env = "SWITCHYARD_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// How long an attached transport may leave events unread before it is detached.
    #[arg(long, env = "SWITCHYARD_SLOW_CLIENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow_client_timeout: Duration,

    /// Sustained POST requests per second allowed per session (429 beyond the burst).
    #[arg(long, env = "SWITCHYARD_SEND_RATE", default_value_t = 200)]
    pub send_rate: u32,

    /// POST requests a session may send in a burst above the sustained rate.
    #[arg(long, env = "SWITCHYARD_SEND_BURST", default_value_t = 400)]
    pub send_burst: u32,

    /// Browser origins allowed besides the server's own and loopback ones, comma-separated
    /// (`https://app.example.com,https://admin.example.com`; `*` allows any).
    #[arg(long, env = "SWITCHYARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Longest a client may take to send a request's headers.
    #[arg(long, env = "SWITCHYARD_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Most streams one HTTP/2 connection may have open at once (HTTPS only); more are refused.
    #[arg(long, env = "SWITCHYARD_HTTP2_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_streams: u32,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this certificate chain (PEM, leaf first, then the
    /// intermediates); needs --tls-key. SIGHUP reads both files again.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SWITCHYARD_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a certificate made up at start-up for localhost (development only:
    /// browsers warn; its fingerprint is logged).
    #[arg(long, env = "SWITCHYARD_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,

    /// On SIGINT/SIGTERM, longest to wait for clients to leave before exiting.
    #[arg(long, env = "SWITCHYARD_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Most new sessions one client address may open per minute (a bucket that deep, refilled
    /// continuously; beyond it 429 with Retry-After); 0 turns the limit off. Resuming a live
    /// session is never limited.
    #[arg(long, env = "SWITCHYARD_MAX_NEW_SESSIONS_PER_IP", default_value_t = 120)]
    pub max_new_sessions_per_ip: u32,

    /// Proxies whose X-Forwarded-For names the client, comma-separated addresses or CIDR
    /// blocks (`10.0.0.0/8,192.0.2.7`). From any other peer the header is ignored.
    #[arg(long, env = "SWITCHYARD_TRUSTED_PROXIES", value_name = "LIST", value_parser = ip_blocks)]
    pub trusted_proxies: Option<IpBlocks>,

    /// Cluster mode: keep sessions in this Redis so that any node serves any request of any
    /// session (`redis://host:6379`; a Redis Cluster node is detected, or give several nodes
    /// comma-separated). Off by default: sessions live in this process
    #[arg(long, env = "SWITCHYARD_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// Certificate authority (a PEM file) that a `rediss://` Redis's certificate must chain to;
    /// without it, the system's roots
    #[arg(long, env = "SWITCHYARD_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// Cluster mode: the address other nodes reach this one at (`host:port`), to which they pass
    /// Socket.IO long-polling requests of the sessions it holds; default: the bound address,
    /// unless that is `0.0.0.0` or `[::]`
    #[arg(long, env = "SWITCHYARD_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,

    /// The application behind the gateway (forwarding, hooks) and the publish API's key.
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Secret of the HS256 JWTs that opening a session then requires (`Authorization: Bearer`
    /// or `?token=`); the token's `sub` is attached to the session.
    #[arg(long, env = "SWITCHYARD_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Socket.IO clients (`/socket.io/`): interval of Engine.IO pings (`pingInterval`).
    #[arg(long, env = "SWITCHYARD_SIO_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub sio_ping_interval: Duration,

    /// Socket.IO clients: how long a pong may take before the session closes (`pingTimeout`).
    #[arg(long, env = "SWITCHYARD_SIO_PING_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub sio_ping_timeout: Duration,

    /// Directory of the demo page and browser client.
    #[arg(long, env = "SWITCHYARD_STATIC_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/static"))]
    pub static_dir: PathBuf,
}

impl Cli {
    /// The gateway's settings these flags (and environment variables) give.
    pub fn config(&self) -> Config {
        Config {
            grace: self.grace,
            buffer: self.buffer as usize,
            // Zero is no bound at all, not "keep nothing".
            buffer_age: self.buffer_age.filter(|age| !age.is_zero()),
            keepalive: self.keepalive,
            ws_ping: self.ws_ping,
            poll_timeout: self.poll_timeout,
            max_body: self.max_body,
            limits: Limits { max_batch: self.max_batch, max_depth: self.max_depth },
            max_sessions: self.max_sessions,
            slow_client_timeout: self.slow_client_timeout,
            send_rate: self.send_rate,
            send_burst: self.send_burst,
            allowed_origins: self.allowed_origins.clone(),
            header_timeout: self.header_timeout,
            http2_max_streams: self.http2_max_streams,
            drain: self.drain,
            auth_secret: self.auth_secret.clone(),
            max_new_sessions_per_ip: self.max_new_sessions_per_ip,
            trusted_proxies: self.trusted_proxies.clone().map(|blocks| blocks.0).unwrap_or_default(),
            sio_ping_interval: self.sio_ping_interval,
            sio_ping_timeout: self.sio_ping_timeout,
        }
    }
}

/// The value of `--trusted-proxies`: addresses and CIDR blocks.
#[derive(Debug, Clone)]
pub struct IpBlocks(pub Vec<IpBlock>);

/// A comma-separated list of addresses and CIDR blocks. Empty entries are skipped, so an empty
/// `SWITCHYARD_TRUSTED_PROXIES` (as a deployment template may leave it) means none.
fn ip_blocks(raw: &str) -> Result<IpBlocks, String> {
    raw.split(',').filter(|entry| !entry.trim().is_empty()).map(str::parse).collect::<Result<_, _>>().map(IpBlocks)
}

/// Flags of the application behind the gateway: where events and lifecycle hooks go, and the
/// publish API's key.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Forward every client event no built-in handler claims to this URL (HTTP POST, JSON); the
    /// answer is a list of actions. With it, the binary runs no default app: the upstream is the app.
    #[arg(long = "upstream", env = "SWITCHYARD_UPSTREAM", value_name = "URL", value_parser = http_url)]
    pub events: Option<String>,

    /// POST an `open` hook here when a session is created; a non-2xx answer refuses the session.
    #[arg(long = "upstream-on-open", env = "SWITCHYARD_UPSTREAM_ON_OPEN", value_name = "URL", value_parser = http_url)]
    pub on_open: Option<String>,

    /// POST an `expire` hook here when a session expires.
    #[arg(long = "upstream-on-expire", env = "SWITCHYARD_UPSTREAM_ON_EXPIRE", value_name = "URL", value_parser = http_url)]
    pub on_expire: Option<String>,

    /// Longest wait for a whole answer from the application.
    #[arg(long = "upstream-timeout", env = "SWITCHYARD_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Longest wait for a TCP connection to the application.
    #[arg(long = "upstream-connect-timeout", env = "SWITCHYARD_UPSTREAM_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Most requests in flight to the application, over all sessions.
    #[arg(long = "upstream-max-in-flight", env = "SWITCHYARD_UPSTREAM_MAX_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Most events of one session waiting for, or in flight to, the application.
    #[arg(long = "upstream-max-per-session", env = "SWITCHYARD_UPSTREAM_MAX_PER_SESSION", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_session: u32,

    /// Key of the publish API (`/api/...`) and the operator page (`/admin`). Without one they
    /// are served only when bound to a loopback address. Prefer the environment variable: flags
    /// show in `ps`.
    #[arg(long = "api-key", env = "SWITCHYARD_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// An application URL: plain `http://` (this build has no TLS client), checked at startup rather
/// than at the first event.
fn http_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(raw.to_owned()),
        "http" => Err("the URL has no host".into()),
        other => Err(format!("scheme `{other}` is not supported: use http:// (put a TLS proxy next to the app if needed)")),
    }
}

impl UpstreamArgs {
    /// The upstream client's settings, or `None` when no application URL is configured.
    pub fn config(&self) -> Option<UpstreamConfig> {
        if self.events.is_none() && self.on_open.is_none() && self.on_expire.is_none() {
            return None;
        }
        Some(UpstreamConfig {
            events: self.events.clone(),
            on_open: self.on_open.clone(),
            on_expire: self.on_expire.clone(),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight as usize,
            max_per_session: self.max_per_session as usize,
        })
    }
}

#[cfg(test)]
mod upstream_args_tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked_at_startup() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["switchyard"], args].concat());
        let cli = parse(&["--upstream", "http://127.0.0.1:5000/events", "--api-key", "k"]).unwrap();
        let upstream = cli.upstream.config().expect("an upstream is configured");
        assert_eq!(upstream.events.as_deref(), Some("http://127.0.0.1:5000/events"));
        assert_eq!((upstream.on_open, upstream.on_expire), (None, None));
        assert_eq!(cli.upstream.api_key.as_deref(), Some("k"));
        assert!(parse(&[]).unwrap().upstream.config().is_none());
        for bad in ["https://app/events", "127.0.0.1:5000", "http://", "ftp://x/"] {
            assert!(parse(&["--upstream", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn admission_flags_parse_addresses_and_blocks() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["switchyard"], args].concat());
        let config = parse(&[]).unwrap().config();
        assert_eq!((config.max_new_sessions_per_ip, config.trusted_proxies.len()), (120, 0));
        let cli = parse(&["--max-new-sessions-per-ip", "0", "--trusted-proxies", "127.0.0.1,10.0.0.0/8, 2001:db8::/32"]).unwrap();
        let config = cli.config();
        assert_eq!(config.max_new_sessions_per_ip, 0);
        let blocks: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(blocks, ["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"]);
        assert!(parse(&["--trusted-proxies", "10.0.0.0/40"]).is_err());
        assert!(parse(&["--trusted-proxies", "10.0.0.1,example.com"]).is_err());
        assert!(parse(&["--trusted-proxies", ""]).unwrap().config().trusted_proxies.is_empty());
        assert!(parse(&["--max-new-sessions-per-ip", "-1"]).is_err());
    }
}
