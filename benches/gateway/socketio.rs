//! `socketio`: switchyard's `/socket.io/` against socketioxide 0.18 and Node's socket.io 4.8,
//! each serving the seed's app (`message` answered by `response` with `Message received!`) and
//! given the same load: Socket.IO round trips over WebSocket and over long-polling, sessions in
//! closed loops, and the memory an idle connected Socket.IO session holds.
//!
//! The load speaks Engine.IO v4 and Socket.IO v5 itself (tokio-tungstenite, reqwest), the same
//! bytes to every server: connect to `/`, then `42["message","hello"]` and wait for the
//! `response` event (answering pings). A long-polling round trip is one POST and the GETs until
//! the reply. socketioxide runs as `__serve socketioxide ADDR` (`servers.rs`), Node's server as
//! `tests/client/socketio_server.mjs`; every server is pinned to the server core.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::cell::RefCell;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::client::histogram;
use crate::procs::{CpuWindow, Kind, Server};
use crate::{q, ratio, Args};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(10);
const MESSAGE: &str = r#"42["message","hello"]"#;
const REPLY: &str = r#"42["response","Message received!""#;

/// A Socket.IO session over WebSocket, connected to `/`.
async fn ws_connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = timeout(LIMIT, tokio_tungstenite::connect_async(url)).await??;
    let open = ws_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected the open packet, got {open}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let packet = ws_text(&mut ws).await?;
        if packet.starts_with("40") {
            return Ok(ws);
        }
    }
}

/// The next text frame; pings are answered on the way.
async fn ws_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match timeout(LIMIT, ws.next()).await?.context("socket closed")?? {
            Message::Text(text) if text.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(_) => bail!("socket closed"),
            _ => {}
        }
    }
}

async fn ws_round_trip(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(Message::text(MESSAGE)).await?;
    loop {
        if ws_text(ws).await?.starts_with(REPLY) {
            return Ok(());
        }
    }
}

/// A Socket.IO session over long-polling, connected to `/`.
struct Polling {
    http: reqwest::Client,
    url: String,
}

impl Polling {
    async fn connect(http: reqwest::Client, addr: SocketAddr) -> anyhow::Result<Polling> {
        let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
        let open = timeout(LIMIT, http.get(&base).send()).await??.text().await?;
        let handshake: serde_json::Value = serde_json::from_str(open.strip_prefix('0').context("an open packet")?)?;
        let sid = handshake["sid"].as_str().context("a sid")?;
        let session = Polling { http, url: format!("{base}&sid={sid}") };
        session.post("40").await?;
        session.until(|p| p.starts_with("40")).await?;
        Ok(session)
    }

    async fn post(&self, body: &'static str) -> anyhow::Result<()> {
        let response = timeout(LIMIT, self.http.post(&self.url).body(body).send()).await??;
        if !response.status().is_success() {
            bail!("POST answered {}", response.status());
        }
        Ok(())
    }

    /// Polls until a packet for which `done` holds arrives; pings are answered on the way.
    async fn until(&self, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        loop {
            let body = timeout(LIMIT, self.http.get(&self.url).send()).await??.text().await?;
            let mut found = false;
            for packet in body.split('\x1e') {
                if packet == "2" {
                    self.post("3").await?;
                }
                found |= done(packet);
            }
            if found {
                return Ok(());
            }
        }
    }

    async fn round_trip(&self) -> anyhow::Result<()> {
        self.post(MESSAGE).await?;
        self.until(|p| p.starts_with(REPLY)).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    WebSocket,
    Polling,
}

/// Round trips per second and their latency, with the CPU shares of the measured window.
struct Loop {
    per_second: f64,
    latency: Histogram<u64>,
    errors: u64,
    server_cpu: f64,
}

/// `sessions` sessions, each in a closed loop, for `warmup` then `seconds`.
async fn closed_loop(server: &Server, way: Way, sessions: usize, warmup: Duration, seconds: Duration) -> anyhow::Result<Loop> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).tcp_nodelay(true).build()?;
    let start = Instant::now() + warmup + Duration::from_millis(200);
    let end = start + seconds;
    let latency = Rc::new(RefCell::new(histogram()));
    let counts = Rc::new(RefCell::new((0u64, 0u64)));
    let local = tokio::task::LocalSet::new();
    for _ in 0..sessions {
        let (latency, counts, http, addr) = (latency.clone(), counts.clone(), http.clone(), server.addr);
        local.spawn_local(async move {
            let mut ws = None;
            let mut polling = None;
            let connected = match way {
                Way::WebSocket => ws_connect(addr).await.map(|s| ws = Some(s)),
                Way::Polling => Polling::connect(http, addr).await.map(|s| polling = Some(s)),
            };
            if connected.is_err() {
                counts.borrow_mut().1 += 1;
                return;
            }
            while Instant::now() < end {
                let began = Instant::now();
                let done = match (&mut ws, &polling) {
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
    let cpu = local
        .run_until(async move {
            tokio::time::sleep_until(start).await;
            let window = CpuWindow::start(pid);
            tokio::time::sleep_until(end).await;
            window.share()
        })
        .await;
    // Let the loops see the end and finish their last round trip.
    let _ = timeout(LIMIT, local).await;
    let (done, errors) = *counts.borrow();
    let latency = latency.borrow().clone();
    Ok(Loop { per_second: done as f64 / seconds.as_secs_f64(), latency, errors, server_cpu: cpu })
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

pub async fn socketio(args: &Args) -> anyhow::Result<String> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds.max(3.0));
    let idle = args.idle.min(5_000);
    let mut rows = Vec::new();
    for kind in [Kind::Switchyard, Kind::Socketioxide, Kind::NodeSocketIo] {
        let server = Server::start(kind, !args.no_pin, &format!("socketio-{}", kind.label().replace(' ', "-"))).await?;
        let ws = closed_loop(&server, Way::WebSocket, args.sessions, warmup, seconds).await?;
        let polling = closed_loop(&server, Way::Polling, args.sessions, warmup, seconds).await?;
        drop(server);
        let server = Server::start(kind, !args.no_pin, &format!("socketio-idle-{}", kind.label().replace(' ', "-"))).await?;
        let idle = idle_kib(&server, idle).await?;
        eprintln!("{}: ws {:.0}/s, polling {:.0}/s, idle {idle:.2} KiB", kind.label(), ws.per_second, polling.per_second);
        rows.push(Row { kind, ws, polling, idle });
    }
    let mut out = String::new();
    writeln!(out, "### socketio\n")?;
    writeln!(
        out,
        "Socket.IO clients: {} sessions in closed loops for {:.0} s per transport and server (after {:.1} s of warm-up); idle: {idle} connected WebSocket sessions held. Ratios against socketioxide.\n",
        args.sessions,
        seconds.as_secs_f64(),
        warmup.as_secs_f64()
    )?;
    writeln!(out, "| server | WS round trips/s | WS p50 / p99 µs | polling round trips/s | polling p50 / p99 µs | errors | server CPU (WS / polling) | idle KiB/session |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in &rows {
        writeln!(
            out,
            "| {} | {:.0} | {} / {} | {:.0} | {} / {} | {} | {:.0} % / {:.0} % | {:.2} |",
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
            row.idle
        )?;
    }
    let (ours, theirs) = (&rows[0], &rows[1]);
    let ws = ratio(ours.ws.per_second, theirs.ws.per_second);
    let polling = ratio(ours.polling.per_second, theirs.polling.per_second);
    writeln!(out)?;
    writeln!(out, "| target | measured | |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(out, "| WebSocket round trips ≥ 1.0 × socketioxide | {ws:.2} × | {} |", crate::met(ws >= 1.0))?;
    writeln!(out, "| long-polling round trips ≥ 1.2 × socketioxide | {polling:.2} × | {} |", crate::met(polling >= 1.2))?;
    writeln!(out, "| idle memory per Socket.IO session ≤ 8 KiB | {:.2} KiB | {} |", ours.idle, crate::met(ours.idle <= 8.0))?;
    Ok(out)
}
