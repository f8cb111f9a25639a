//! `socketio`: switchyard's `/socket.io/` against socketioxide 0.18 and Node's socket.io 4.8,
//! each serving the seed's app (`message` answered by `response` with `Message received!`) and
//! given the same load: Socket.IO round trips over WebSocket and over long-polling, sessions in
//! closed loops, and the memory an idle connected Socket.IO session holds.
//!
//! The load speaks Engine.IO v4 and Socket.IO v5 itself (tokio-tungstenite, `http.rs`), the same
//! bytes to every server: connect to `/`, then `42["message","hello"]` and wait for the
//! `response` event (answering pings). A long-polling round trip is one POST and the GETs until
//! the reply. socketioxide runs as `__serve socketioxide ADDR` (`servers.rs`), Node's server as
//! `tests/client/socketio_server.mjs`; every server is pinned to the server core.
//!
//! switchyard and socketioxide are measured as `rtt` measures its pairs (see there): paired
//! rounds per transport, the order swapped every round, the ratio reported the median of the
//! rounds' ratios, each round with the server's and the load generator's CPU (the load generator
//! must stay below the server, or it is what is measured). Node's server, a reference rather
//! than a target, gets one round per transport.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::cell::RefCell;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{histogram, ws_config};
use crate::http::Conn;
use crate::procs::{CpuWindow, Kind, Server};
use crate::{loadavg, median_ratio, met, q, ratio, rounds_table, Args, RoundRow};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(10);
const MESSAGE: &str = r#"42["message","hello"]"#;
const REPLY: &str = r#"42["response","Message received!""#;

/// A Socket.IO session over WebSocket, connected to `/`.
async fn ws_connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = timeout(LIMIT, tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)).await??;
    let open = timeout(LIMIT, ws_text(&mut ws)).await??;
    if !open.starts_with('0') {
        bail!("expected the open packet, got {}", open.as_str());
    }
    ws.send(Message::Text(Utf8Bytes::from_static("40"))).await?;
    loop {
        let packet = timeout(LIMIT, ws_text(&mut ws)).await??;
        if packet.starts_with("40") {
            return Ok(ws);
        }
    }
}

/// The next text frame, as it came (no copy); pings are answered on the way. The caller bounds
/// the wait: one timer per round trip rather than one per frame keeps the load generator lean.
async fn ws_text(ws: &mut Ws) -> anyhow::Result<Utf8Bytes> {
    loop {
        match ws.next().await.context("socket closed")?? {
            Message::Text(text) if text.as_str() == "2" => ws.send(Message::Text(Utf8Bytes::from_static("3"))).await?,
            Message::Text(text) => return Ok(text),
            Message::Close(_) => bail!("socket closed"),
            _ => {}
        }
    }
}

async fn ws_round_trip(ws: &mut Ws) -> anyhow::Result<()> {
    timeout(LIMIT, async {
        ws.send(Message::Text(Utf8Bytes::from_static(MESSAGE))).await?;
        loop {
            if ws_text(ws).await?.starts_with(REPLY) {
                return Ok(());
            }
        }
    })
    .await?
}

/// A Socket.IO session over long-polling, connected to `/`: a keep-alive connection for the
/// POSTs and one for the GETs, each request written as bytes prepared when the session opened
/// (`http.rs`, as `rtt` does: through reqwest the load generator spent more CPU per round trip
/// than the servers it measured).
struct Polling {
    post: Conn,
    poll: Conn,
    /// `POST` of the `message` event, of a pong, and the `GET`.
    post_message: Vec<u8>,
    post_pong: Vec<u8>,
    get: Vec<u8>,
    body: Vec<u8>,
}

/// `POST path` with a text body, as the Socket.IO client sends it.
fn post_request(addr: SocketAddr, path: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

impl Polling {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Polling> {
        let base = "/socket.io/?EIO=4&transport=polling";
        let mut poll = timeout(LIMIT, Conn::connect(addr, None)).await??;
        poll.send(format!("GET {base} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut body = Vec::new();
        let status = timeout(LIMIT, poll.read_response(&mut body)).await??;
        if status != 200 {
            bail!("the handshake answered {status}");
        }
        let open = std::str::from_utf8(&body)?;
        let handshake: serde_json::Value = serde_json::from_str(open.strip_prefix('0').context("an open packet")?)?;
        let sid = handshake["sid"].as_str().context("a sid")?;
        let path = format!("{base}&sid={sid}");
        let mut session = Polling {
            post: timeout(LIMIT, Conn::connect(addr, None)).await??,
            poll,
            post_message: post_request(addr, &path, MESSAGE),
            post_pong: post_request(addr, &path, "3"),
            get: format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes(),
            body,
        };
        let connect = post_request(addr, &path, "40");
        session.post(&connect).await?;
        session.until(|p| p.starts_with("40")).await?;
        Ok(session)
    }

    /// Sends a prepared POST and reads its answer.
    async fn post(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.post.send(request).await?;
        let status = timeout(LIMIT, self.post.read_response(&mut self.body)).await??;
        if !(200..300).contains(&status) {
            bail!("POST answered {status}");
        }
        Ok(())
    }

    /// Polls until a packet for which `done` holds arrives; pings are answered on the way.
    async fn until(&mut self, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        loop {
            self.poll.send(&self.get).await?;
            let status = timeout(LIMIT, self.poll.read_response(&mut self.body)).await??;
            if status != 200 {
                bail!("GET answered {status}");
            }
            let mut found = false;
            let mut ping = false;
            for packet in std::str::from_utf8(&self.body)?.split('\x1e') {
                ping |= packet == "2";
                found |= done(packet);
            }
            if ping {
                let pong = std::mem::take(&mut self.post_pong);
                let posted = self.post(&pong).await;
                self.post_pong = pong;
                posted?;
            }
            if found {
                return Ok(());
            }
        }
    }

    async fn round_trip(&mut self) -> anyhow::Result<()> {
        let message = std::mem::take(&mut self.post_message);
        let posted = self.post(&message).await;
        self.post_message = message;
        posted?;
        self.until(|p| p.starts_with(REPLY)).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    WebSocket,
    Polling,
}

/// Round trips per second and their latency, with the CPU shares (server, load generator) of
/// the measured window.
struct Loop {
    per_second: f64,
    latency: Histogram<u64>,
    errors: u64,
    server_cpu: f64,
    loadgen_cpu: f64,
}

impl Loop {
    /// The round's figures as [`crate::RoundRow`] takes them.
    fn shares(&self) -> (f64, f64, f64) {
        (self.per_second, self.server_cpu, self.loadgen_cpu)
    }

    /// Several rounds as one: round trips and latencies together, CPU shares averaged.
    fn merge(rounds: &[Loop]) -> Loop {
        let n = rounds.len().max(1) as f64;
        let mut merged = Loop { per_second: 0.0, latency: histogram(), errors: 0, server_cpu: 0.0, loadgen_cpu: 0.0 };
        for round in rounds {
            merged.per_second += round.per_second / n;
            merged.latency.add(&round.latency).expect("histograms with the same bounds");
            merged.errors += round.errors;
            merged.server_cpu += round.server_cpu / n;
            merged.loadgen_cpu += round.loadgen_cpu / n;
        }
        merged
    }
}

/// `sessions` sessions, each in a closed loop, for `warmup` then `seconds`.
async fn closed_loop(server: &Server, way: Way, sessions: usize, warmup: Duration, seconds: Duration) -> anyhow::Result<Loop> {
    let start = Instant::now() + warmup + Duration::from_millis(200);
    let end = start + seconds;
    let latency = Rc::new(RefCell::new(histogram()));
    let counts = Rc::new(RefCell::new((0u64, 0u64)));
    let local = tokio::task::LocalSet::new();
    for _ in 0..sessions {
        let (latency, counts, addr) = (latency.clone(), counts.clone(), server.addr);
        local.spawn_local(async move {
            let mut ws = None;
            let mut polling = None;
            let connected = match way {
                Way::WebSocket => ws_connect(addr).await.map(|s| ws = Some(s)),
                Way::Polling => Polling::connect(addr).await.map(|s| polling = Some(s)),
            };
            if connected.is_err() {
                counts.borrow_mut().1 += 1;
                return;
            }
            while Instant::now() < end {
                let began = Instant::now();
                let done = match (&mut ws, &mut polling) {
                    (Some(ws), _) => ws_round_trip(ws).await,
                    (_, Some(polling)) => polling.round_trip().await,
                    _ => unreachable!("connected"),
                };
                if began >= start && Instant::now() <= end {
                    match done {
                        Ok(()) => {
                            counts.borrow_mut().0 += 1;
                            let _ = latency.borrow_mut().record(began.elapsed().as_micros() as u64);
                        }
                        Err(_) => counts.borrow_mut().1 += 1,
                    }
                }
                if done.is_err() {
                    return;
                }
            }
        });
    }
    let pid = server.pid();
    let (server_cpu, loadgen_cpu) = local
        .run_until(async move {
            tokio::time::sleep_until(start).await;
            let (server, me) = (CpuWindow::start(pid), CpuWindow::start(std::process::id()));
            tokio::time::sleep_until(end).await;
            (server.share(), me.share())
        })
        .await;
    // Let the loops see the end and finish their last round trip.
    let _ = timeout(LIMIT, local).await;
    let (done, errors) = *counts.borrow();
    let latency = latency.borrow().clone();
    Ok(Loop { per_second: done as f64 / seconds.as_secs_f64(), latency, errors, server_cpu, loadgen_cpu })
}

/// KiB of the server's RSS per idle connected WebSocket session, `n` of them held.
async fn idle_kib(server: &Server, n: usize) -> anyhow::Result<f64> {
    sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(50) {
        let opened = futures_util::future::join_all((chunk * 50..n.min(chunk * 50 + 50)).map(|_| ws_connect(server.addr))).await;
        for ws in opened {
            held.push(ws?);
        }
    }
    sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

struct Row {
    kind: Kind,
    ws: Loop,
    polling: Loop,
    idle: f64,
}

/// Paired rounds of `way` against switchyard and socketioxide, the order swapped every round:
/// each server's rounds, and the rounds as [`RoundRow`]s.
async fn paired(args: &Args, way: Way, servers: [&Server; 2], warmup: Duration, seconds: Duration) -> anyhow::Result<[Vec<Loop>; 2]> {
    let mut rounds = [Vec::new(), Vec::new()];
    for round in 0..args.alternations.max(1) {
        let order = if round % 2 == 0 { [1, 0] } else { [0, 1] };
        for i in order {
            eprintln!("  {} against {} (round {}/{}) ...", way.label(), servers[i].kind.label(), round + 1, args.alternations.max(1));
            rounds[i].push(closed_loop(servers[i], way, args.sessions, warmup, seconds).await?);
        }
    }
    Ok(rounds)
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::WebSocket => "Socket.IO WebSocket",
            Way::Polling => "Socket.IO long-polling",
        }
    }
}

pub async fn socketio(args: &Args) -> anyhow::Result<String> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);
    let idle = args.idle.min(5_000);
    let pin = !args.no_pin;
    let switchyard = Server::start(Kind::Switchyard, pin, "socketio-switchyard").await?;
    let socketioxide = Server::start(Kind::Socketioxide, pin, "socketio-socketioxide").await?;
    let node = Server::start(Kind::NodeSocketIo, pin, "socketio-Node-socket.io").await?;
    let mut round_rows = Vec::new();
    let mut merged: [Vec<Loop>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut loads = Vec::new();
    for way in [Way::WebSocket, Way::Polling] {
        let load_before = loadavg();
        let [sy, sio] = paired(args, way, [&switchyard, &socketioxide], warmup, seconds).await?;
        for (i, (s, b)) in sy.iter().zip(&sio).enumerate() {
            round_rows.push(RoundRow { label: way.label(), round: i + 1, base: b.shares(), sy: s.shares() });
        }
        eprintln!("  {} against {} ...", way.label(), node.kind.label());
        let on_node = closed_loop(&node, way, args.sessions, warmup, seconds).await?;
        loads.push((load_before, loadavg()));
        merged[0].push(Loop::merge(&sy));
        merged[1].push(Loop::merge(&sio));
        merged[2].push(on_node);
    }
    drop((switchyard, socketioxide, node));
    let mut rows = Vec::new();
    for (kind, mut loops) in [Kind::Switchyard, Kind::Socketioxide, Kind::NodeSocketIo].into_iter().zip(merged) {
        let server = Server::start(kind, pin, &format!("socketio-idle-{}", kind.label().replace(' ', "-"))).await?;
        let idle = idle_kib(&server, idle).await?;
        let polling = loops.pop().context("the polling rounds")?;
        let ws = loops.pop().context("the WebSocket rounds")?;
        eprintln!("{}: ws {:.0}/s, polling {:.0}/s, idle {idle:.2} KiB", kind.label(), ws.per_second, polling.per_second);
        rows.push(Row { kind, ws, polling, idle });
    }
    let mut out = String::new();
    writeln!(out, "### socketio\n")?;
    writeln!(
        out,
        "Socket.IO clients: {} sessions in closed loops; switchyard and socketioxide in {} paired rounds of {:.1} s per transport (after {:.1} s of warm-up each), Node's socket.io in one; idle: {idle} connected WebSocket sessions held. Rates are the mean of the rounds; the ratios against socketioxide the median of the rounds' ratios.\n",
        args.sessions,
        args.alternations.max(1),
        seconds.as_secs_f64(),
        warmup.as_secs_f64()
    )?;
    writeln!(out, "| server | WS round trips/s | WS p50 / p99 µs | polling round trips/s | polling p50 / p99 µs | errors | server CPU (WS / polling) | loadgen CPU (WS / polling) | server CPU µs per round trip (WS / polling) | idle KiB/session |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in &rows {
        writeln!(
            out,
            "| {} | {:.0} | {} / {} | {:.0} | {} / {} | {} | {:.0} % / {:.0} % | {:.0} % / {:.0} % | {:.1} / {:.1} | {:.2} |",
            row.kind.label(),
            row.ws.per_second,
            q(&row.ws.latency, 0.5),
            q(&row.ws.latency, 0.99),
            row.polling.per_second,
            q(&row.polling.latency, 0.5),
            q(&row.polling.latency, 0.99),
            row.ws.errors + row.polling.errors,
            row.ws.server_cpu * 100.0,
            row.polling.server_cpu * 100.0,
            row.ws.loadgen_cpu * 100.0,
            row.polling.loadgen_cpu * 100.0,
            ratio(row.ws.server_cpu * 1e6, row.ws.per_second),
            ratio(row.polling.server_cpu * 1e6, row.polling.per_second),
            row.idle
        )?;
    }
    let (ws, ws_all) = median_ratio(round_rows.iter().filter(|r| r.label == Way::WebSocket.label()));
    let (polling, polling_all) = median_ratio(round_rows.iter().filter(|r| r.label == Way::Polling.label()));
    let listed = |all: &[f64]| all.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
    let ours = &rows[0];
    writeln!(out)?;
    writeln!(out, "| target | measured (median of rounds) | rounds' ratios | load average before / after | |")?;
    writeln!(out, "|---|---:|---|---|---|")?;
    writeln!(out, "| WebSocket round trips ≥ 1.0 × socketioxide | {ws:.2} × | {} | {} / {} | {} |", listed(&ws_all), loads[0].0, loads[0].1, met(ws >= 1.0))?;
    writeln!(
        out,
        "| long-polling round trips ≥ 1.2 × socketioxide | {polling:.2} × | {} | {} / {} | {} |",
        listed(&polling_all),
        loads[1].0,
        loads[1].1,
        met(polling >= 1.2)
    )?;
    writeln!(out, "| idle memory per Socket.IO session ≤ 8 KiB | {:.2} KiB | | | {} |", ours.idle, met(ours.idle <= 8.0))?;
    out.push_str(&rounds_table("socketioxide", &round_rows));
    Ok(out)
}
