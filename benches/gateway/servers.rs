//! The limit baselines, each started as its own process by
//! re-executing the bench binary with `__serve KIND ADDR`:
//!
//! * `ws-baseline`: the limit for WebSocket. tokio-tungstenite and nothing else: each text frame
//!   is answered with one fixed frame the size of switchyard's reply. Its one setting is a 4 KiB
//!   read buffer instead of tungstenite's 128 KiB, which is zero-filled on every read and resident
//!   for every socket (measured here: 137 KiB per idle socket with the default, for this baseline
//!   as for switchyard); a limit should be what a careful minimal server reaches.
//! * `sse-baseline`: the limit for SSE+POST and long-polling. axum with one global
//!   `Mutex<HashMap<sid, channel>>`: `GET /sse` (or `GET /poll` without a sid) creates a session,
//!   `POST /sse?sid=` pushes one event onto that sid's channel, `GET /poll?sid=` waits for it.
//!   `POST /broadcast` pushes one event to every session (the fan-out baseline).
//!
//! * `socketioxide`: socketioxide 0.18 with the seed's app, the `socketio` scenario's
//!   reference.
//!
//! The baselines use the same runtime configuration as switchyard's `main` (`#[tokio::main]`,
//! one worker per core the process may use: one, when pinned), so the ratio compares the
//! gateway's work per event, not runtime settings.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_tungstenite::tungstenite::Message;

/// The baseline's reply: the same bytes switchyard sends, with a cursor of the same length.
pub const FIXED_REPLY: &str = r#"{"event":"response","data":"Message received!","id":"AAAAAAAAAAAAAAAAAAAAAA.1"}"#;

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [kind, addr] = args else { bail!("usage: __serve KIND ADDR") };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        match kind.as_str() {
            "ws-baseline" => ws_baseline(listener).await,
            "sse-baseline" => {
                let router = sse_baseline();
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router).await?;
                Ok(())
            }
            "socketioxide" => socketioxide(listener).await,
            other => bail!("unknown server kind {other}"),
        }
    })
}

/// socketioxide 0.18 with the seed's app on `/`: `message` answered with `response`.
async fn socketioxide(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use socketioxide::extract::{Data, SocketRef};

    let (layer, io) = socketioxide::SocketIo::new_layer();
    io.ns("/", async |socket: SocketRef| {
        socket.on("message", async |socket: SocketRef, Data(_): Data<Value>| {
            let _ = socket.emit("response", "Message received!");
        });
    });
    let router = Router::new().layer(layer);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

async fn ws_baseline(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(crate::client::ws_config())).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() && ws.send(Message::text(FIXED_REPLY)).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// One baseline session: the sending half of its channel, and the receiving half until a
/// stream takes it (SSE) or shared by successive polls (long-polling).
struct BaseSession {
    tx: mpsc::UnboundedSender<(String, String)>,
    poll_rx: Option<SharedReceiver>,
}

/// The receiving half of a baseline session's channel, shared by successive polls.
type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, String)>>>;

#[derive(Clone, Default)]
struct BaseState {
    sessions: Arc<Mutex<HashMap<String, BaseSession>>>,
    next: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct SidQuery {
    sid: Option<String>,
}

fn sse_baseline() -> Router {
    Router::new()
        .route("/sse", get(base_sse).post(base_post))
        .route("/poll", get(base_poll).post(base_post))
        .route("/broadcast", post(base_broadcast))
        .with_state(BaseState::default())
}

impl BaseState {
    fn create(&self, for_poll: bool) -> (String, Option<mpsc::UnboundedReceiver<(String, String)>>) {
        let sid = format!("{:022}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        let (poll_rx, rx) = if for_poll { (Some(Arc::new(tokio::sync::Mutex::new(rx))), None) } else { (None, Some(rx)) };
        self.sessions.lock().unwrap().insert(sid.clone(), BaseSession { tx, poll_rx });
        (sid, rx)
    }
}

async fn base_sse(State(state): State<BaseState>) -> impl IntoResponse {
    let (sid, rx) = state.create(false);
    let hello = SseEvent::default().event("session").data(json!({"sid": sid}).to_string());
    let events = UnboundedReceiverStream::new(rx.expect("an SSE session owns its receiver"))
        .map(|(name, data)| Ok::<_, Infallible>(SseEvent::default().event(name).data(data)));
    let stream = futures_util::stream::once(async move { Ok(hello) }).chain(events);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn base_post(State(state): State<BaseState>, Query(q): Query<SidQuery>, _body: String) -> impl IntoResponse {
    let sessions = state.sessions.lock().unwrap();
    match q.sid.as_ref().and_then(|sid| sessions.get(sid)) {
        Some(session) => {
            let _ = session.tx.send(("response".into(), "\"Message received!\"".into()));
            (StatusCode::ACCEPTED, Json(json!({"accepted": 1})))
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "unknown session"}))),
    }
}

async fn base_poll(State(state): State<BaseState>, Query(q): Query<SidQuery>) -> impl IntoResponse {
    let Some(sid) = q.sid else {
        let (sid, _) = state.create(true);
        return (StatusCode::OK, Json(json!([{"event": "session", "data": {"sid": sid}, "id": "0"}])));
    };
    let rx = state.sessions.lock().unwrap().get(&sid).and_then(|s| s.poll_rx.clone());
    let Some(rx) = rx else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "unknown session"})));
    };
    let mut rx = rx.lock().await;
    let mut out = Vec::new();
    if let Ok(Some(first)) = tokio::time::timeout(std::time::Duration::from_secs(25), rx.recv()).await {
        out.push(first);
        while let Ok(next) = rx.try_recv() {
            out.push(next);
        }
    }
    let body: Vec<Value> = out
        .into_iter()
        .map(|(name, data)| json!({"event": name, "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null), "id": "1"}))
        .collect();
    (StatusCode::OK, Json(Value::Array(body)))
}

async fn base_broadcast(State(state): State<BaseState>) -> impl IntoResponse {
    let sessions = state.sessions.lock().unwrap();
    let mut sent = 0;
    for session in sessions.values() {
        if session.tx.send(("fanout".into(), "\"tick\"".into())).is_ok() {
            sent += 1;
        }
    }
    (StatusCode::ACCEPTED, Json(json!({"emitted": sent})))
}
