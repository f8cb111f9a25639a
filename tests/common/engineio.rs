//! A raw Engine.IO / Socket.IO client for tests of `/socket.io/`: long-polling over reqwest and
//! WebSocket over tokio-tungstenite, speaking the packets as the protocol documents write them.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{within, TestServer};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn path(query: &str) -> String {
    format!("/socket.io/?EIO=4&{query}")
}

/// A long-polling Engine.IO client.
pub struct Polling {
    http: reqwest::Client,
    /// The session's polling URL.
    url: String,
    pub sid: String,
    /// Packets of a poll answer not yet looked at.
    pending: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Polling {
    pub async fn open(server: &TestServer) -> (Polling, Value) {
        Polling::open_at(server.http.clone(), &server.url(&path("transport=polling"))).await
    }

    /// A session opened with a handshake at `handshake` (a `…/socket.io/?EIO=4&transport=polling`
    /// URL of any server, a cluster's node for one).
    pub async fn open_at(http: reqwest::Client, handshake: &str) -> (Polling, Value) {
        let response = within("the handshake", http.get(handshake).send()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let body = response.text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        let url = format!("{handshake}&sid={sid}");
        (Polling { http, url, sid, pending: Default::default() }, open)
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// One poll: its status and its packets.
    pub async fn get_raw(&self) -> (u16, String) {
        let response = within("a poll", self.http.get(self.url()).send()).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn get(&self) -> Vec<String> {
        let (status, body) = self.get_raw().await;
        assert_eq!(status, 200, "poll answered {body}");
        body.split('\x1e').map(str::to_owned).collect()
    }

    /// Polls until a packet other than a ping (answered with a pong) arrives.
    pub async fn next(&self) -> String {
        loop {
            let next = self.pending.lock().unwrap().pop_front();
            match next {
                Some(packet) if packet == "2" => self.post("3").await,
                Some(packet) => return packet,
                None => {
                    let packets = self.get().await;
                    self.pending.lock().unwrap().extend(packets);
                }
            }
        }
    }

    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (u16, String) {
        let response = within("a post", self.http.post(self.url()).body(body).send()).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn post(&self, body: &str) {
        let (status, text) = self.post_raw(body.to_owned()).await;
        assert_eq!((status, text.as_str()), (200, "ok"), "POST {body}");
    }

    /// CONNECT to the main namespace; the answer's `{sid, pid}`.
    pub async fn connect(&self, auth: Option<Value>) -> Value {
        self.post(&auth.map_or("40".to_owned(), |auth| format!("40{auth}"))).await;
        connect_answer(&self.next().await)
    }
}

pub fn connect_answer(packet: &str) -> Value {
    serde_json::from_str(packet.strip_prefix("40").unwrap_or_else(|| panic!("a CONNECT answer, got {packet}"))).unwrap()
}

/// A Socket.IO EVENT to the main namespace: its arguments (name first).
pub fn event(packet: &str) -> Vec<Value> {
    serde_json::from_str(packet.strip_prefix("42").unwrap_or_else(|| panic!("an EVENT, got {packet}"))).unwrap()
}

pub async fn error_code(server: &TestServer, request: reqwest::RequestBuilder) -> (u16, i64) {
    let response = within("an Engine.IO request", request.send()).await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    let _ = server;
    (status, body["code"].as_i64().unwrap())
}

pub async fn ws_open(server: &TestServer, query: &str) -> Ws {
    within("WebSocket handshake", tokio_tungstenite::connect_async(server.ws_url(&path(query)))).await.expect("WebSocket handshake").0
}

/// The next text frame that is not a ping (answered with a pong).
pub async fn ws_next(ws: &mut Ws) -> String {
    loop {
        match within("a WebSocket frame", ws.next()).await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    within("a WebSocket send", ws.send(Message::text(text))).await.unwrap();
}

