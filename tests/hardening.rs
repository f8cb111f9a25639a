//! Hostile and careless clients: bad input, floods, foreign origins, stuck readers, shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard::{Config, Sid, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_cross_site_websocket_hijack_is_refused() {
    let server = TestServer::start().await;
    let mut request = server.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.expect_err("foreign origin must be refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("https://evil.example"), "{body}");
        }
        other => panic!("expected an HTTP 403, got {other}"),
    }
    // The page's own origin and loopback origins are fine.
    let mut request = server.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("origin", format!("http://{}", server.addr).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("own origin");
    assert!(matches!(socket.next().await, Some(Ok(Message::Text(_)))));
}

#[tokio::test]
async fn foreign_origins_cannot_stream_poll_or_post_and_allowed_ones_get_cors() {
    let server = TestServer::with_config(Config {
        allowed_origins: vec!["https://app.example.com".into()],
        ..Config::default()
    })
    .await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    for (method, path) in [("GET", "/sse".to_owned()), ("GET", "/poll".to_owned()), ("POST", format!("/sse?sid={sid}"))] {
        let response = server
            .http
            .request(method.parse().unwrap(), server.url(&path))
            .header("origin", "https://evil.example")
            .header("content-type", "text/plain")
            .body("hijack")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        assert!(response.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("not allowed"));
    }
    // Nothing reached the session.
    server.post_json(&sid, r#"{"event":"echo","data":"own"}"#).await;
    assert_eq!(sse.next().await.data, json!("own"));

    // A configured origin: preflight and the request itself carry CORS headers.
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url(&format!("/sse?sid={sid}")))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example.com");
    let response = server
        .http
        .post(server.url(&format!("/sse?sid={sid}")))
        .header("origin", "https://app.example.com")
        .header("content-type", "application/json")
        .body(r#"{"event":"echo","data":"cors"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(sse.next().await.data, json!("cors"));
}

#[tokio::test]
async fn websocket_frames_over_the_limit_or_not_utf8_get_the_rfc_close_codes() {
    let server = TestServer::with_config(Config { max_body: 1024, ..Config::default() }).await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(&json!({"event": "echo", "data": "x".repeat(2000)}).to_string()).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(u16::from(code), 1009);

    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    ws.socket.send(Message::Frame(frame)).await.unwrap();
    let (code, _) = ws.expect_close().await;
    assert_eq!(u16::from(code), 1007);

    // A binary frame is refused with an error event; the socket stays usable.
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let error = ws.next().await;
    assert_eq!(error.event, "error");
    assert!(error.data["error"].as_str().unwrap().contains("binary"));
    ws.send(r#"{"event":"echo","data":"still here"}"#).await;
    assert_eq!(ws.next().await.data, json!("still here"));
}

#[tokio::test]
async fn batch_size_and_nesting_limits_are_enforced_on_every_transport() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let batch = Value::Array(vec![json!({"event": "echo"}); 101]).to_string();
    let (status, body) = server.post_json(&sid, &batch).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("at most 100"), "{body}");
    let deep = format!(r#"{{"event":"echo","data":{}{}}}"#, "[".repeat(40), "]".repeat(40));
    let (status, body) = server.post_json(&sid, &deep).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("nested deeper than 32"), "{body}");
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    ws.send(&deep).await;
    let error = ws.next().await;
    assert_eq!(error.event, "error");
    assert!(error.data["error"].as_str().unwrap().contains("nested deeper"));
}

#[tokio::test]
async fn beyond_the_session_cap_new_sessions_get_503_with_retry_after() {
    let server = TestServer::with_config(Config { max_sessions: 2, ..Config::default() }).await;
    let mut a = server.sse("/sse").await;
    let sid_a = a.hello().await;
    let mut b = server.ws("/ws").await;
    b.hello().await;
    for path in ["/sse", "/poll"] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "5");
    }
    match tokio_tungstenite::connect_async(server.ws_url("/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "5");
        }
        other => panic!("expected a 503 handshake answer, got {other:?}"),
    }
    // Existing sessions keep working, and may switch transports.
    drop(a);
    let mut a = server.ws(&format!("/ws?sid={sid_a}")).await;
    assert_eq!(a.hello().await, sid_a);
}

#[tokio::test]
async fn a_session_posting_too_fast_gets_429_with_retry_after() {
    let server = TestServer::with_config(Config { send_rate: 1, send_burst: 3, ..Config::default() }).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    for _ in 0..3 {
        assert_eq!(server.post_json(&sid, r#"{"event":"message"}"#).await.0, 202);
    }
    let response = server.http.post(server.url(&format!("/sse?sid={sid}"))).body(r#"{"event":"message"}"#).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    // Another session is not affected.
    let mut other = server.sse("/sse").await;
    let other_sid = other.hello().await;
    assert_eq!(server.post_json(&other_sid, r#"{"event":"message"}"#).await.0, 202);
}

#[tokio::test]
async fn a_client_that_sends_headers_slowly_is_dropped_and_others_are_served() {
    let server = TestServer::with_config(Config { header_timeout: Duration::from_millis(300), ..Config::default() }).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    // Meanwhile the server serves everyone else.
    let mut sse = server.sse("/sse").await;
    sse.hello().await;
    for conn in [&mut slow, &mut idle] {
        // Closed, or answered 408 Request Timeout and closed: either way the descriptor is freed.
        until_closed("the server to drop a slow client", conn).await;
    }
}

/// A kept-alive connection is held to the header timeout for each head after the first: one
/// that sends its next heads in time is served however long it lives, and one that then goes
/// quiet, or sends half a head, is dropped.
#[tokio::test]
async fn a_kept_alive_connection_is_timed_on_each_head() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let server = TestServer::with_config(Config { header_timeout: TIMEOUT, ..Config::default() }).await;
    let request = format!("GET /socket.io/?EIO=4&transport=polling&sid=unknown HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let answered = |tcp: TcpStream| {
        let request = request.clone();
        async move {
            let mut tcp = tcp;
            tcp.write_all(request.as_bytes()).await.unwrap();
            let head = within("an answer on the kept-alive connection", read_head(&mut tcp)).await;
            assert!(head.starts_with("HTTP/1.1 400"), "{head:?}");
            let length: usize = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().parse().unwrap()))
                .expect("a content-length");
            let mut body = vec![0u8; length];
            within("the answer's body", tcp.read_exact(&mut body)).await.unwrap();
            tcp
        }
    };
    let mut quiet = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    // Heads half a timeout apart, for three timeouts: each is timed from its own start.
    for _ in 0..6 {
        quiet = answered(quiet).await;
        half = answered(half).await;
        tokio::time::sleep(TIMEOUT / 2).await;
    }
    half.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n").await.unwrap();
    for conn in [&mut quiet, &mut half] {
        // Closed, or answered 408 and closed.
        until_closed("the server to drop a quiet or slow kept-alive connection", conn).await;
    }
}

#[tokio::test]
async fn stuck_readers_are_detached_and_memory_stays_bounded_while_others_are_served() {
    const STUCK: usize = 200;
    const EVENT: usize = 512;
    let server = TestServer::with_config(Config {
        buffer: 128,
        slow_client_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let hub = server.gateway.hub().clone();
    // 200 clients that open a stream, read its first bytes (to learn their sid), then never read.
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        stuck.push(server.raw_sse(Some(4096)).await);
    }
    let mut healthy = server.sse("/sse").await;
    let healthy_sid = healthy.hello().await;
    let payload = json!("x".repeat(EVENT));
    let flood = |rounds: usize| {
        let hub = hub.clone();
        let sids: Vec<Sid> = stuck.iter().map(|(_, sid)| sid.clone()).collect();
        let payload = payload.clone();
        async move {
            for _ in 0..rounds {
                for sid in &sids {
                    let _ = hub.emit(sid, "flood", &payload).await;
                }
            }
        }
    };
    let rss_before = rss_kib();
    flood(400).await; // three rings' worth per session
    let rss_after_first = rss_kib();
    // The healthy client is served while the stuck ones are flooded.
    server.post_json(&healthy_sid, r#"{"event":"echo","data":"alive"}"#).await;
    assert_eq!(healthy.next().await.data, json!("alive"));
    flood(400).await;
    let rss_after_second = rss_kib();
    // Twice the traffic, same memory: every ring is full and bounded.
    let growth = rss_after_second.saturating_sub(rss_after_first);
    // What each stuck session may pin: its ring (128 events of EVENT bytes of data plus their
    // framing and bookkeeping, well under 200 bytes each) and its connection's write buffer.
    let ring_bound_kib = (STUCK * (128 * (EVENT + 200) + switchyard::server::CONNECTION_BUFFER)) / 1024;
    println!(
        "RSS of server+test: {rss_before} KiB with {STUCK} stuck clients, {rss_after_first} KiB after 400 events \
         per session, {rss_after_second} KiB after 800 (rings and connection buffers may hold {ring_bound_kib} KiB)"
    );
    assert!(growth < ring_bound_kib / 10, "memory grew by {growth} KiB between floods");
    assert!(
        rss_after_second.saturating_sub(rss_before) < ring_bound_kib + 8 * 1024,
        "memory grew beyond the rings' bound"
    );
    // Each stuck session is detached as a slow consumer, and keeps its session for resuming.
    for (_, sid) in &stuck {
        server.wait_for_transport(sid, None).await;
    }
    let (_, sid) = &stuck[0];
    let mut resumed = server.sse(&format!("/sse?sid={sid}&last_event_id={sid}.0~")).await;
    resumed.hello().await;
    let gap = resumed.next().await;
    assert_eq!((gap.event.as_str(), &gap.data["reason"]), ("gap", &json!("overflow")));
    assert_eq!(gap.data["lost"], 800 - 128);
}

/// Resident set size of this process (server and clients), in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn shutdown_tells_every_transport_to_reconnect_then_closes_it() {
    let server = TestServer::start().await;
    let mut sse = server.sse("/sse").await;
    let sse_sid = sse.hello().await;
    let mut ws = server.ws("/ws").await;
    ws.hello().await;
    let (_, polled) = server.poll("").await;
    let poll_hello = polled[0].clone();
    let poll_sid = hello_sid(poll_hello.clone(), "polling");
    let waiting = {
        let url = server.url(&format!("/poll?sid={poll_sid}&last_event_id={}", poll_hello.id));
        let http = server.http.clone();
        tokio::spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    server.wait_for_transport(&poll_sid.parse().unwrap(), Some(Transport::Polling)).await;
    server.gateway.shutdown();
    let farewell = sse.next().await;
    assert_eq!((farewell.event.as_str(), &farewell.data["reason"]), ("reconnect", &json!("shutdown")));
    assert!(farewell.id.starts_with(&sse_sid) && farewell.id.ends_with('~'), "a resume point: {}", farewell.id);
    sse.expect_end().await;
    assert_eq!(ws.next().await.event, "reconnect");
    let (code, _) = ws.expect_close().await;
    assert_eq!(u16::from(code), 1001);
    let answer = within("the waiting poll", waiting).await.unwrap();
    assert_eq!(answer[0]["event"], "reconnect");
}

#[tokio::test]
async fn metrics_and_health_are_served_and_never_name_a_session() {
    let logs = capture_logs();
    let server = TestServer::with_config(Config { grace: Duration::from_millis(100), ..Config::default() }).await;
    let health: Value = server.http.get(server.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let mut ws = server.ws("/ws").await;
    let sid = ws.hello().await;
    ws.send(r#"{"event":"message","data":"hi"}"#).await;
    ws.next().await;
    assert_eq!(server.post_json("AAAAAAAAAAAAAAAAAAAAAA", r#"{"event":"message"}"#).await.0, 404);
    assert_eq!(server.post_json(&sid, r#"{"event":"message"}"#).await.0, 202);
    drop(ws);
    let parsed: Sid = sid.parse().unwrap();
    within("the session to expire", async {
        while server.gateway.hub().contains(&parsed).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let response = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for needle in [
        "switchyard_sessions ",
        "switchyard_attaches_total{transport=\"websocket\"}",
        "switchyard_transports_open{transport=\"websocket\"}",
        "switchyard_sessions_created_total",
        "switchyard_sessions_expired_total",
        "switchyard_events_in_total{via=\"websocket\"}",
        "switchyard_events_in_total{via=\"post\"}",
        "switchyard_events_out_total{transport=\"websocket\"}",
        "switchyard_bytes_out_total{transport=\"websocket\"}",
        "switchyard_post_responses_total{status=\"404\"}",
        "switchyard_post_responses_total{status=\"202\"}",
        "switchyard_errors_total{kind=\"no_session\"}",
        "switchyard_detaches_total{reason=\"closed\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    assert!(!text.contains(&sid), "a sid in the metrics");
    let logged = logs.lock().unwrap().clone();
    let logged = String::from_utf8_lossy(&logged);
    assert!(logged.contains(&sid[..6]), "the session's shortened sid is logged");
    assert!(!logged.contains(&sid), "the full sid must never be logged");
}

/// Sends this test binary's debug logs into a buffer, once.
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("switchyard=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn token(secret: &str, sub: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({"sub": sub, "exp": now + exp_offset});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn with_an_auth_secret_opening_a_session_takes_a_valid_token_whose_subject_handlers_see() {
    let secret = "correct horse battery staple";
    let server = TestServer::with_config(Config { auth_secret: Some(secret.into()), ..Config::default() }).await;
    let cases = [
        ("/sse".to_owned(), "token is required"),
        (format!("/sse?token={}", token(secret, "alice", -60)), "expired"),
        (format!("/poll?token={}", token("wrong secret", "alice", 60)), "not valid"),
        ("/poll?token=garbage".to_owned(), "not valid"),
    ];
    for (path, reason) in &cases {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(reason), "{path}: {body}");
    }
    let mut request = server.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", token(secret, "bob", -60)).parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(server.gateway.hub().len(), 0, "refused attempts leave no session behind");

    // A valid token in the query (what EventSource can send) or the header (WebSocket clients).
    let mut sse = server.sse(&format!("/sse?token={}", token(secret, "alice", 60))).await;
    let sid = sse.hello().await;
    server.post_json(&sid, r#"{"event":"whoami"}"#).await;
    assert_eq!(sse.next().await.data, json!("alice"));
    let mut request = server.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", token(secret, "bob", 60)).parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut ws = WsClient { socket };
    ws.hello().await;
    ws.send(r#"{"event":"whoami"}"#).await;
    assert_eq!(ws.next().await.data, json!("bob"));

    // Resuming takes the sid alone, and keeps the subject; another subject's token is refused.
    drop(sse);
    let mut sse = server.sse(&format!("/sse?sid={sid}")).await;
    assert_eq!(sse.hello().await, sid);
    server.post_json(&sid, r#"{"event":"whoami"}"#).await;
    assert_eq!(sse.next().await.data, json!("alice"));
    let response = server
        .http
        .get(server.url(&format!("/sse?sid={sid}&token={}", token(secret, "mallory", 60))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_websocket_peer_that_stops_reading_is_dropped() {
    let server = TestServer::with_config(Config {
        slow_client_timeout: Duration::from_millis(300),
        buffer: 4096,
        ..Config::default()
    })
    .await;
    let mut ws = server.ws("/ws").await;
    let sid: Sid = ws.hello().await.parse().unwrap();
    // Far more than the socket buffers hold, and never read.
    let payload = json!("y".repeat(4096));
    for _ in 0..3000 {
        server.gateway.hub().emit(&sid, "flood", &payload).await.unwrap();
    }
    server.wait_for_transport(&sid, None).await;
    drop(ws);
}
