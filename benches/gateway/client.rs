//! The load generator's clients: in closed loops, WebSocket, SSE+POST and long-polling over the
//! bench's own HTTP/1.1 client, SSE parser and WebSocket frames (`http.rs`, `ws.rs`); the
//! sessions other scenarios hold open, tokio-tungstenite and the same SSE parser;
//! each speaking the wire contract (docs/protocol.md) as a browser would.
//!
//! Every wait has a timeout, every loop a deadline: a server that stops answering costs a
//! counted error, never a hung bench.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt;
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
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""event":"session""#) => break,
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("reading the session event: {err}"),
                None => bail!("socket closed before the session event"),
            }
        }
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
}

impl Endpoints {
    /// Everything to one server.
    pub fn single(addr: SocketAddr) -> Endpoints {
        Endpoints { stream: addr, post: addr }
    }
}

/// One client session in a closed loop. SSE+POST and long-polling hold two keep-alive
/// connections each: the stream (or the polls) and the POSTs, each request prepared as bytes
/// when the session opens (see `http.rs`).
#[allow(clippy::large_enum_variant, reason = "held in place for a whole run; boxing the WebSocket would add a hop to every measured round trip")]
pub enum Session {
    Ws(WsConn),
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

/// `__hold ADDR LOCAL_IP CONCURRENCY`: a load-generator child for `scale`. Reads commands on
/// stdin: `open N` (hold N sessions in all, alternating WebSocket and SSE; answers
/// `held H failed F`), `count` (answers `received R`, the broadcasts its sessions have read, all
/// together), and ends on `quit` or end of input, closing every session.
pub fn hold_main(args: &[String]) -> anyhow::Result<()> {
    let [addr, local, concurrency] = args else { bail!("usage: __hold ADDR LOCAL_IP CONCURRENCY") };
    let addr: SocketAddr = addr.parse()?;
    let local: IpAddr = local.parse()?;
    let concurrency: usize = concurrency.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut held = Held::default();
        let mut failed = 0;
        let (received_tx, mut received_rx) = mpsc::unbounded_channel();
        let mut received = 0usize;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|n| n.parse::<usize>().ok())) {
                (Some("open"), Some(target)) => {
                    let more = target.saturating_sub(held.len());
                    let alternate = |i: usize| if i.is_multiple_of(2) { Transport::Ws } else { Transport::Sse };
                    let tx = Some(received_tx.clone());
                    failed += open_many(&mut held, alternate, more, &[addr], Some(local), concurrency, true, tx).await;
                    stdout.write_all(format!("held {} failed {failed}\n", held.len()).as_bytes()).await?;
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut open = Vec::new();
        for _ in 0..sessions {
            open.push(timeout(OPEN_TIMEOUT, Session::open(transport, Endpoints::single(addr), hello)).await??);
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
