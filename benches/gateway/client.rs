//! The load generator's clients: in closed loops, WebSocket, SSE+POST and long-polling over the
//! bench's own HTTP/1.1 client, SSE parser and WebSocket frames (`http.rs`, `ws.rs`); the
//! sessions other scenarios hold open, tokio-tungstenite and the same SSE parser;
//! each speaking the wire contract (docs/protocol.md) as a browser would.
//!
//! Every wait has a timeout, every loop a deadline: a server that stops answering costs a
//! counted error, never a hung bench.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use eventsource_stream::{Event as SseEvent, EventStreamError, Eventsource};
use futures_util::{SinkExt, Stream, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http::{Conn, SseStream};
use crate::ws::WsConn;

/// What each round trip sends: the seed's `message` event.
pub const MESSAGE: &str = r#"{"event":"message","data":"hello"}"#;

/// Longest wait for any one answer before the session counts as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one session to open (connect, handshake, `session` event).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "WebSocket",
            Transport::Sse => "SSE+POST",
            Transport::Poll => "long-polling",
        }
    }
}

/// Latencies in microseconds, 1 µs to 60 s at three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

type Ws = WebSocketStream<TcpStream>;
type WsTls = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;
/// An SSE stream over HTTPS (HTTP/2, through reqwest), parsed by eventsource-stream.
type H2Sse = Pin<Box<dyn Stream<Item = Result<SseEvent, EventStreamError<reqwest::Error>>> + Send>>;

/// The TLS client configuration of the `tls` scenario (trusting the certificate it made), set
/// once before any session with [`Endpoints::tls`] opens.
static TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// The HTTPS client of the closed loops over TLS ([`tls_http_client`]), made once: every stream
/// and POST of a run shares its one HTTP/2 connection.
static H2_CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();

/// Sets the TLS client configuration ([`TLS`]); its ALPN is set per use.
pub fn set_tls(config: rustls::ClientConfig) {
    let _ = TLS.set(std::sync::Arc::new(config));
}

/// [`TLS`] offering `alpn`.
pub fn tls_config(alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    let mut config = (**TLS.get().expect("client::set_tls was called")).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// A TLS connection to `addr` offering `alpn`, from `local` (a 127.0.0.x address) when given.
pub async fn tls_connect(addr: SocketAddr, local: Option<IpAddr>, alpn: &[&[u8]]) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        socket.bind((ip, 0).into()).with_context(|| format!("binding {ip}"))?;
    }
    let tcp = socket.connect(addr).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    tokio_rustls::TlsConnector::from(tls_config(alpn)).connect(name, tcp).await.context("TLS handshake")
}

/// An HTTPS client speaking HTTP/2: every stream and POST of a run on one connection.
pub fn tls_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .use_preconfigured_tls((*tls_config(&[b"h2"])).clone())
        .build()
        .expect("an HTTPS client with these settings builds")
}

/// Opens a WebSocket over TLS (HTTP/1.1) to `addr`, from `local` when given, and waits for the
/// `session` event.
pub async fn ws_open_tls(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<WsTls> {
    let tls = tls_connect(addr, local, &[b"http/1.1"]).await?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(format!("wss://{addr}/ws"), tls, Some(ws_config()))
        .await
        .context("WebSocket handshake")?;
    wait_hello(&mut ws).await?;
    Ok(ws)
}

async fn wait_hello<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""event":"session""#) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(err)) => bail!("reading the session event: {err}"),
            None => bail!("socket closed before the session event"),
        }
    }
}

/// One `message` over a tungstenite WebSocket (the TLS one) and its `response`.
async fn ws_round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> anyhow::Result<()> {
    ws.send(Message::text(MESSAGE)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""event":"response""#) => return Ok(()),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("socket closed"),
        }
    }
}

/// Opens an SSE stream over HTTPS at `url` with `client` and reads its first event, `session`;
/// returns the sid.
async fn h2_sse_open(client: &reqwest::Client, url: &str) -> anyhow::Result<(String, H2Sse)> {
    let response = client.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET /sse answered {status}");
    }
    let mut events: H2Sse = Box::pin(response.bytes_stream().eventsource());
    let first = events.next().await.ok_or_else(|| anyhow!("stream ended before the session event"))??;
    if first.event != "session" {
        bail!("first event was {:?}, not session", first.event);
    }
    let data: Value = serde_json::from_str(&first.data)?;
    data["sid"].as_str().map(|sid| (sid.to_owned(), events)).ok_or_else(|| anyhow!("session event without a sid"))
}

/// One `POST` of [`MESSAGE`] over HTTPS, which must be answered `202`.
async fn h2_send_message(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let response = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(MESSAGE).send().await?;
    let status = response.status();
    response.bytes().await?;
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("POST answered {status}");
    }
    Ok(())
}

/// An HTTP client for a load-generator process: no proxy, no pool limit, connections from
/// `local` (a 127.0.0.x address) when given, so one process can hold more connections to one
/// server port than one source address has ephemeral ports.
pub fn http_client(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .local_address(local)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client with these settings builds")
}

/// tungstenite's default read buffer is 128 KiB, and every read zero-fills the unused part of
/// it: per message that is real CPU, and per idle socket 128 KiB of resident memory. Frames here
/// are under 100 bytes; a larger one still grows the buffer as it needs. The load generator and
/// the WebSocket baseline both use this (see `servers.rs`).
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

/// Opens a WebSocket to `addr` (`GET /ws`); with `hello`, waits for the `session` event.
pub async fn ws_open(addr: SocketAddr, local: Option<IpAddr>, hello: bool) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        socket.bind((ip, 0).into()).with_context(|| format!("binding {ip}"))?;
    }
    let tcp = socket.connect(addr).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(ws_config()))
        .await
        .context("WebSocket handshake")?;
    if hello {
        wait_hello(&mut ws).await?;
    }
    Ok(ws)
}

/// Opens an SSE stream (`GET /sse`, from `local` when given) and reads its first event,
/// `session`; returns the sid.
pub async fn sse_open(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<(String, SseStream)> {
    let mut conn = Conn::connect(addr, local).await?;
    conn.send(format!("GET /sse HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n").as_bytes()).await?;
    let head = conn.read_head().await?;
    if head.status != 200 {
        bail!("GET /sse answered {}", head.status);
    }
    let mut events = SseStream::new(conn, head.framing);
    let first = events.next_event().await?;
    if first.name != "session" {
        bail!("first event was {:?}, not session", first.name);
    }
    let data: Value = serde_json::from_str(first.data)?;
    let sid = data["sid"].as_str().ok_or_else(|| anyhow!("session event without sid"))?.to_owned();
    Ok((sid, events))
}

/// Where a closed loop's sessions go: the stream (the WebSocket, the SSE stream, the long polls)
/// and the POSTs that carry client events. The same address for both on one server; two nodes
/// of a cluster for a session whose stream and sends land on different nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub stream: SocketAddr,
    /// Where SSE and long-polling POSTs go (a WebSocket sends on its own socket).
    pub post: SocketAddr,
    /// HTTPS (the server has `--tls-cert`): WebSockets over TLS, HTTP over HTTP/2.
    pub tls: bool,
}

impl Endpoints {
    /// Everything to one server.
    pub fn single(addr: SocketAddr) -> Endpoints {
        Endpoints { stream: addr, post: addr, tls: false }
    }

    /// Everything to one HTTPS server.
    pub fn tls(addr: SocketAddr) -> Endpoints {
        Endpoints { stream: addr, post: addr, tls: true }
    }
}

/// One client session in a closed loop. SSE+POST and long-polling hold two keep-alive
/// connections each: the stream (or the polls) and the POSTs, each request prepared as bytes
/// when the session opens (see `http.rs`).
#[allow(clippy::large_enum_variant, reason = "held in place for a whole run; boxing the WebSocket would add a hop to every measured round trip")]
pub enum Session {
    Ws(WsConn),
    /// A WebSocket over TLS (tungstenite; the bench's own frames speak plain TCP only).
    WsTls(WsTls),
    /// SSE+POST over HTTPS: HTTP/2 through reqwest, one connection shared by the run.
    SseH2 { client: reqwest::Client, post_url: String, events: H2Sse },
    Sse { post: Conn, post_request: Box<[u8]>, events: SseStream, body: Vec<u8> },
    Poll { post: Conn, post_request: Box<[u8]>, poll: Conn, poll_request: PollRequest, body: Vec<u8> },
}

/// `GET /poll?sid=SID&last_event_id=CURSOR`, rewritten in place as the cursor moves: the bytes
/// before the cursor, and where they end.
pub struct PollRequest {
    bytes: Vec<u8>,
    cursor_at: usize,
    tail: &'static [u8],
}

impl PollRequest {
    fn new(addr: SocketAddr, sid: &str, cursor: &str) -> PollRequest {
        let mut bytes = format!("GET /poll?sid={sid}&last_event_id=").into_bytes();
        let cursor_at = bytes.len();
        let tail: &'static [u8] = Box::leak(format!(" HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes().into_boxed_slice());
        bytes.extend_from_slice(cursor.as_bytes());
        bytes.extend_from_slice(tail);
        PollRequest { bytes, cursor_at, tail }
    }

    fn set_cursor(&mut self, cursor: &str) {
        self.bytes.truncate(self.cursor_at);
        self.bytes.extend_from_slice(cursor.as_bytes());
        self.bytes.extend_from_slice(self.tail);
    }
}

/// A `POST` of [`MESSAGE`] to `path`, as bytes.
fn post_request(addr: SocketAddr, path: &str) -> Box<[u8]> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{MESSAGE}",
        MESSAGE.len()
    )
    .into_bytes()
    .into_boxed_slice()
}

/// The events of one poll answer, as much of them as a round trip needs.
#[derive(serde::Deserialize)]
struct Polled<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
}

impl Session {
    pub async fn open(transport: Transport, to: Endpoints, hello: bool) -> anyhow::Result<Session> {
        let (addr, post) = (to.stream, to.post);
        match transport {
            Transport::Ws if to.tls => Ok(Session::WsTls(ws_open_tls(addr, None).await?)),
            Transport::Sse if to.tls => {
                let client = H2_CLIENT.get_or_init(tls_http_client).clone();
                let (sid, events) = h2_sse_open(&client, &format!("https://{addr}/sse")).await?;
                Ok(Session::SseH2 { client, post_url: format!("https://{post}/sse?sid={sid}"), events })
            }
            Transport::Poll if to.tls => bail!("the bench runs long-polling over plain HTTP only"),
            Transport::Ws => {
                let mut ws = WsConn::open(addr, MESSAGE).await?;
                if hello {
                    ws.wait_for(br#""event":"session""#).await?;
                }
                Ok(Session::Ws(ws))
            }
            Transport::Sse => {
                let (sid, events) = sse_open(addr, None).await?;
                let post_request = post_request(post, &format!("/sse?sid={sid}"));
                Ok(Session::Sse { post: Conn::connect(post, None).await?, post_request, events, body: Vec::new() })
            }
            Transport::Poll => {
                let mut poll = Conn::connect(addr, None).await?;
                poll.send(format!("GET /poll HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await?;
                let mut body = Vec::new();
                let status = poll.read_response(&mut body).await?;
                if status != 200 {
                    bail!("GET /poll answered {status}");
                }
                let answer: Vec<Value> = serde_json::from_slice(&body)?;
                let hello = answer.iter().find(|e| e["event"] == "session").ok_or_else(|| anyhow!("first poll without session"))?;
                let sid = hello["data"]["sid"].as_str().ok_or_else(|| anyhow!("session without sid"))?.to_owned();
                let cursor = hello["id"].as_str().unwrap_or("");
                Ok(Session::Poll {
                    post: Conn::connect(post, None).await?,
                    post_request: post_request(post, &format!("/poll?sid={sid}")),
                    poll,
                    poll_request: PollRequest::new(addr, &sid, cursor),
                    body,
                })
            }
        }
    }

    /// Sends one `message` and waits for its `response` (and, over HTTP, the POST's 202).
    pub async fn round_trip(&mut self) -> anyhow::Result<()> {
        match self {
            Session::Ws(ws) => {
                ws.send().await?;
                ws.wait_for(br#""event":"response""#).await
            }
            Session::WsTls(ws) => ws_round_trip(ws).await,
            Session::SseH2 { client, post_url, events } => {
                let sent = h2_send_message(client, post_url);
                let reply = async {
                    loop {
                        match events.next().await {
                            Some(Ok(event)) if event.event == "response" => return Ok(()),
                            Some(Ok(_)) => continue,
                            Some(Err(err)) => bail!("SSE stream: {err}"),
                            None => bail!("SSE stream ended"),
                        }
                    }
                };
                let (sent, replied) = tokio::join!(sent, reply);
                sent.and(replied)
            }
            Session::Sse { post, post_request, events, body } => {
                let sent = send_message(post, post_request, body);
                let reply = async {
                    loop {
                        if events.next_event().await?.name == "response" {
                            return Ok(());
                        }
                    }
                };
                let (sent, replied) = tokio::join!(sent, reply);
                sent.and(replied)
            }
            Session::Poll { post, post_request, poll, poll_request, body } => {
                let sent = async {
                    let mut answer = Vec::new();
                    send_message(post, post_request, &mut answer).await
                };
                let reply = async {
                    loop {
                        poll.send(&poll_request.bytes).await?;
                        let status = poll.read_response(body).await?;
                        if status != 200 {
                            bail!("poll answered {status}");
                        }
                        let answer: Vec<Polled<'_>> = serde_json::from_slice(body)?;
                        if let Some(id) = answer.last().and_then(|e| e.id.as_deref()) {
                            poll_request.set_cursor(id);
                        }
                        if answer.iter().any(|e| e.event == "response") {
                            return Ok::<_, anyhow::Error>(());
                        }
                    }
                };
                let (sent, replied) = tokio::join!(sent, reply);
                sent.and(replied)
            }
        }
    }
}

/// Sends one prepared POST and reads its answer, which must be `202`.
async fn send_message(post: &mut Conn, request: &[u8], body: &mut Vec<u8>) -> anyhow::Result<()> {
    post.send(request).await?;
    let status = post.read_response(body).await?;
    if status != 202 {
        bail!("POST answered {status}: {}", String::from_utf8_lossy(body));
    }
    Ok(())
}

/// What a closed-loop run measured.
pub struct LoopResult {
    pub latencies: Histogram<u64>,
    /// Sessions that failed to open, or failed or timed out mid-run (then stopped).
    pub errors: u64,
    pub seconds: f64,
}

impl LoopResult {
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
}

/// Opens `sessions` sessions (streams at `to.stream`, POSTs to `to.post`), then runs each in a
/// closed loop (send, wait for the reply, pause, repeat) for `warmup` plus `seconds`; round trips
/// that start after the warm-up and end before the deadline are recorded. `on_window` is called
/// when the measured window starts and ends.
#[allow(clippy::too_many_arguments, reason = "the eight knobs of a closed-loop run, each set by some scenario")]
pub async fn closed_loop(
    transport: Transport,
    to: Endpoints,
    sessions: usize,
    hello: bool,
    warmup: Duration,
    seconds: Duration,
    pause: Duration,
    mut on_window: impl FnMut(bool),
) -> LoopResult {
    let opened = futures_util::future::join_all(
        (0..sessions).map(|_| async { timeout(OPEN_TIMEOUT, Session::open(transport, to, hello)).await }),
    )
    .await;
    let mut errors = 0;
    let mut open = Vec::new();
    for result in opened {
        match result {
            Ok(Ok(session)) => open.push(session),
            Ok(Err(err)) => {
                errors += 1;
                eprintln!("  {} session failed to open: {err:#}", transport.label());
            }
            Err(_) => {
                errors += 1;
                eprintln!("  {} session did not open within {OPEN_TIMEOUT:?}", transport.label());
            }
        }
    }
    let warm_end = Instant::now() + warmup;
    let end = warm_end + seconds;
    let loops = open.into_iter().map(|mut session| async move {
        let mut latencies = histogram();
        let mut failed = 0u64;
        while Instant::now() < end {
            let started = Instant::now();
            match timeout(ANSWER_TIMEOUT, session.round_trip()).await {
                Ok(Ok(())) => {
                    let done = Instant::now();
                    if started >= warm_end && done <= end {
                        let _ = latencies.record((done - started).as_micros().max(1) as u64);
                    }
                }
                Ok(Err(err)) => {
                    eprintln!("  {} round trip failed: {err:#}", transport.label());
                    failed += 1;
                    break;
                }
                Err(_) => {
                    eprintln!("  {} round trip unanswered after {ANSWER_TIMEOUT:?}", transport.label());
                    failed += 1;
                    break;
                }
            }
            if !pause.is_zero() {
                sleep(pause).await;
            }
        }
        (latencies, failed)
    });
    let window = async {
        tokio::time::sleep_until(warm_end).await;
        on_window(true);
        tokio::time::sleep_until(end).await;
        on_window(false);
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(loops), window);
    let mut latencies = histogram();
    for (h, failed) in results {
        latencies.add(&h).expect("histograms with the same bounds add");
        errors += failed;
    }
    LoopResult { latencies, errors, seconds: seconds.as_secs_f64() }
}

/// Sessions held open by reader tasks; dropping it closes them all.
#[derive(Default)]
pub struct Held {
    tasks: Vec<JoinHandle<()>>,
    /// The sids of the SSE sessions held (for putting them in a room).
    pub sids: Vec<String>,
}

impl Held {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens one session and spawns the task that holds it: it keeps reading (so pings are
/// answered and keep-alives drained) and reports each broadcast's arrival (events named
/// `fanout` or `history`) on `fanout_tx`.
async fn open_held(
    transport: Transport,
    addr: SocketAddr,
    local: Option<IpAddr>,
    hello: bool,
    fanout_tx: Option<mpsc::UnboundedSender<Instant>>,
) -> anyhow::Result<(JoinHandle<()>, Option<String>)> {
    match transport {
        Transport::Ws => {
            let mut ws = ws_open(addr, local, hello).await?;
            Ok((tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let (Some(tx), Message::Text(text)) = (&fanout_tx, &message) {
                        if text.contains(r#""event":"fanout""#) || text.contains(r#""event":"history""#) {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
            }), None))
        }
        Transport::Sse => {
            let (sid, mut events) = sse_open(addr, local).await?;
            Ok((tokio::spawn(async move {
                    while let Ok(event) = events.next_event().await {
                        if event.name == "fanout" || event.name == "history" {
                            if let Some(tx) = &fanout_tx {
                                let _ = tx.send(Instant::now());
                            }
                        }
                    }
                }), Some(sid)))
        }
        Transport::Poll => bail!("long-polling sessions are not held open"),
    }
}

/// Opens `count` more sessions into `held`, `concurrency` at a time, the opens going round robin
/// over `addrs` (the nodes of a cluster; one address for one server). Returns failures.
#[allow(clippy::too_many_arguments)]
pub async fn open_many(
    held: &mut Held,
    transports: impl Fn(usize) -> Transport,
    count: usize,
    addrs: &[SocketAddr],
    local: Option<IpAddr>,
    concurrency: usize,
    hello: bool,
    fanout_tx: Option<mpsc::UnboundedSender<Instant>>,
) -> usize {
    assert!(!addrs.is_empty(), "open_many needs an address to open sessions at");
    let base = held.len();
    let mut failures = 0;
    let mut first_error: Option<String> = None;
    let mut opening = futures_util::stream::iter(0..count)
        .map(|i| {
            let transport = transports(base + i);
            let addr = addrs[(base + i) % addrs.len()];
            let fanout_tx = fanout_tx.clone();
            async move { timeout(OPEN_TIMEOUT, open_held(transport, addr, local, hello, fanout_tx)).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = opening.next().await {
        match result {
            Ok(Ok((task, sid))) => {
                held.tasks.push(task);
                held.sids.extend(sid);
            }
            Ok(Err(err)) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{err:#}"));
            }
            Err(_) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("not open within {OPEN_TIMEOUT:?}"));
            }
        }
    }
    if let Some(err) = first_error {
        eprintln!("  {failures} of {count} sessions failed to open; first: {err}");
    }
    failures
}

/// `__hold ADDR LOCAL_IP CONCURRENCY [CA_DER STREAMS_PER_CONNECTION]`: a load-generator child
/// for `scale`. Reads commands on stdin: `open N` (hold N sessions in all, alternating WebSocket
/// and SSE; answers `held H failed F`), `count` (answers `received R`, the broadcasts its
/// sessions have read, all together), and ends on `quit` or end of input, closing every session.
/// With a CA (`scale --scale-tls`) the sessions are HTTPS ones trusting that CA: each step's
/// new sessions half WebSockets over TLS, half SSE streams on HTTP/2 connections,
/// `STREAMS_PER_CONNECTION` to a connection (see `tls.rs`); broadcasts are not counted then.
pub fn hold_main(args: &[String]) -> anyhow::Result<()> {
    let (addr, local, concurrency, tls) = match args {
        [addr, local, concurrency] => (addr, local, concurrency, None),
        [addr, local, concurrency, ca, per_conn] => (addr, local, concurrency, Some((ca, per_conn.parse::<usize>()?))),
        _ => bail!("usage: __hold ADDR LOCAL_IP CONCURRENCY [CA_DER STREAMS_PER_CONNECTION]"),
    };
    let addr: SocketAddr = addr.parse()?;
    let local: IpAddr = local.parse()?;
    let concurrency: usize = concurrency.parse()?;
    if let Some((ca, _)) = tls {
        set_tls(crate::tls::client_config(ca)?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut held = Held::default();
        let mut held_tls = crate::tls::Opened::default();
        let mut failed = 0;
        let (received_tx, mut received_rx) = mpsc::unbounded_channel();
        let mut received = 0usize;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|n| n.parse::<usize>().ok())) {
                (Some("open"), Some(target)) => {
                    if let Some((_, per_conn)) = tls {
                        let more = target.saturating_sub(held_tls.sessions);
                        let ws = more.div_ceil(2);
                        for opened in [
                            crate::tls::hold_ws(addr, Some(local), ws, true, concurrency).await,
                            crate::tls::hold_sse_h2(addr, Some(local), more - ws, per_conn, concurrency).await,
                        ] {
                            if let Some(err) = &opened.first_error {
                                eprintln!("  {} sessions failed to open; first: {err}", opened.failed);
                            }
                            held_tls.sessions += opened.sessions;
                            held_tls.failed += opened.failed;
                            held_tls.holding.extend(opened.holding);
                        }
                        stdout.write_all(format!("held {} failed {}\n", held_tls.sessions, held_tls.failed).as_bytes()).await?;
                    } else {
                        let more = target.saturating_sub(held.len());
                        let alternate = |i: usize| if i.is_multiple_of(2) { Transport::Ws } else { Transport::Sse };
                        let tx = Some(received_tx.clone());
                        failed += open_many(&mut held, alternate, more, &[addr], Some(local), concurrency, true, tx).await;
                        stdout.write_all(format!("held {} failed {failed}\n", held.len()).as_bytes()).await?;
                    }
                    stdout.flush().await?;
                }
                (Some("count"), _) => {
                    while received_rx.try_recv().is_ok() {
                        received += 1;
                    }
                    stdout.write_all(format!("received {received}\n").as_bytes()).await?;
                    stdout.flush().await?;
                }
                (Some("quit"), _) => break,
                _ => eprintln!("__hold: unknown command {line:?}"),
            }
        }
        drop(held);
        drop(held_tls);
        Ok(())
    })
}

/// `__drive ADDR ws|sse|poll SESSIONS ROUND_TRIPS [nohello]`: opens SESSIONS sessions to a
/// server already running at ADDR and makes `ROUND_TRIPS` round trips in all, spread over them,
/// then prints how long that took. For profiling a server under valgrind or perf with a fixed
/// amount of work (instructions per round trip do not depend on what else the machine runs).
pub fn drive_main(args: &[String]) -> anyhow::Result<()> {
    let (addr, transport, sessions, total, hello) = match args {
        [addr, transport, sessions, total, rest @ ..] => (addr, transport, sessions, total, rest.first().map(String::as_str) != Some("nohello")),
        _ => bail!("usage: __drive ADDR ws|sse|poll SESSIONS ROUND_TRIPS [nohello]"),
    };
    let addr: SocketAddr = addr.parse()?;
    let transport = match transport.as_str() {
        "ws" => Transport::Ws,
        "sse" => Transport::Sse,
        "poll" => Transport::Poll,
        other => bail!("unknown transport {other}"),
    };
    let sessions: usize = sessions.parse()?;
    let total: usize = total.parse()?;
    // `BENCH_TLS_CA=target/bench-tls/ca.der`: the server is HTTPS (the `tls` scenario's).
    let endpoints = match std::env::var("BENCH_TLS_CA") {
        Ok(ca) => {
            set_tls(crate::tls::client_config(&ca)?);
            Endpoints::tls(addr)
        }
        Err(_) => Endpoints::single(addr),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut open = Vec::new();
        for _ in 0..sessions {
            open.push(timeout(OPEN_TIMEOUT, Session::open(transport, endpoints, hello)).await??);
        }
        let started = Instant::now();
        let per = total.div_ceil(sessions.max(1));
        let results = futures_util::future::join_all(open.into_iter().map(|mut session| async move {
            for _ in 0..per {
                timeout(Duration::from_secs(60), session.round_trip()).await??;
            }
            Ok::<_, anyhow::Error>(())
        }))
        .await;
        for result in results {
            result?;
        }
        println!("{} round trips in {:.3} s", per * sessions, started.elapsed().as_secs_f64());
        Ok(())
    })
}
