//! HTTP/1.1 connections that start with an event stream, read byte by byte off a raw socket.
//!
//! Such a connection's first request is served without hyper (`src/server/event_stream.rs`, for
//! memory per idle session), so these tests hold that path to what HTTP/1.1 requires of any
//! server: chunked framing and `Date`, `Content-Length` on sized answers, `Connection: close`
//! honoured, a keep-alive connection that carries on (pipelined requests included) once the
//! stream has ended, heads that arrive in pieces, a client leaving noticed at once, and a
//! client that stops reading dropped rather than held. And the bytes of the stream itself are
//! the ones hyper sends for the same events, when it serves the stream as a later request.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchyard::{Config, Sid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `tcp` until `buf` contains `needle`; returns the position just after it.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> usize {
    read_until_from(tcp, buf, 0, needle).await
}

/// [`read_until`], looking for `needle` only at or after `from`.
async fn read_until_from(tcp: &mut TcpStream, buf: &mut Vec<u8>, from: usize, needle: &[u8]) -> usize {
    within(&format!("{:?} on the raw connection", String::from_utf8_lossy(needle)), async {
        loop {
            if let Some(at) = buf.get(from..).and_then(|b| b.windows(needle.len()).position(|w| w == needle)) {
                return from + at + needle.len();
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before {:?}; got {:?}", String::from_utf8_lossy(needle), String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Reads from `tcp` until `buf` holds at least `len` bytes.
async fn read_to_len(tcp: &mut TcpStream, buf: &mut Vec<u8>, len: usize, what: &str) {
    within(what, async {
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before {what}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
}

/// The response head at the start of `buf` (status line and lower-cased header lines).
fn head_of(buf: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(buf);
    let head = &text[..text.find("\r\n\r\n").expect("a complete head")];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("name: value");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Ends the stream held by the raw connection by attaching the same session elsewhere.
async fn supersede(server: &TestServer, sid: &Sid) -> SseClient {
    let mut other = server.sse(&format!("/sse?sid={sid}")).await;
    other.hello().await;
    other
}

#[tokio::test]
async fn an_event_stream_is_chunked_dated_and_carries_its_headers() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let body_at = read_until(&mut tcp, &mut buf, b"\r\n\r\n").await;
    let (status, headers) = head_of(&buf);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache, no-transform"));
    assert_eq!(header(&headers, "x-accel-buffering"), Some("no"));
    assert_eq!(header(&headers, "content-length"), None);
    let date = header(&headers, "date").expect("a Date header (RFC 9110 section 6.6.1)");
    httpdate::parse_http_date(date).expect("an IMF-fixdate");

    // The first chunk is the hello: `SIZE\r\n` then exactly SIZE bytes then `\r\n`.
    let size_end = read_until_from(&mut tcp, &mut buf, body_at, b"\r\n").await;
    let size = usize::from_str_radix(std::str::from_utf8(&buf[body_at..size_end - 2]).unwrap(), 16).unwrap();
    read_to_len(&mut tcp, &mut buf, size_end + size + 2, "the first chunk").await;
    let chunk = String::from_utf8_lossy(&buf[size_end..size_end + size]);
    assert!(chunk.starts_with("id: ") && chunk.contains("\nevent: session\n") && chunk.ends_with("\n\n"), "{chunk:?}");
    assert_eq!(&buf[size_end + size..size_end + size + 2], b"\r\n");
}

#[tokio::test]
async fn a_keep_alive_connection_carries_on_after_its_stream_with_pipelined_requests() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The stream and, pipelined behind it, a request that must wait for the stream to end.
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"event: session").await;
    read_until(&mut tcp, &mut buf, b"\n\n").await;
    let sid = sid_in(&buf).expect("a hello with a sid");
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200 OK\r\ncontent-length"), "answered out of order");

    let _other = supersede(&server, &sid).await;
    let end = read_until(&mut tcp, &mut buf, b"\r\n0\r\n\r\n").await;
    let mut rest = buf.split_off(end);
    read_until(&mut tcp, &mut rest, b"\r\n\r\n").await;
    let (status, _) = head_of(&rest);
    assert_eq!(status, "HTTP/1.1 200 OK", "the pipelined request is answered after the stream");

    // And the connection still takes requests, now a POST to the session.
    let body = r#"{"event":"echo","data":"on the same connection"}"#;
    let post = format!(
        "POST /sse?sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(post.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    read_until(&mut tcp, &mut answer, b"\r\n\r\n").await;
    assert_eq!(head_of(&answer).0, "HTTP/1.1 202 Accepted");
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_the_socket_closed() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"event: session").await;
    read_until(&mut tcp, &mut buf, b"\n\n").await;
    assert_eq!(header(&head_of(&buf).1, "connection"), Some("close"));
    let _other = supersede(&server, &sid_in(&buf).expect("a hello with a sid")).await;
    let rest = within("the server to close", async {
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        rest
    })
    .await;
    buf.extend_from_slice(&rest);
    assert!(buf.ends_with(b"\r\n0\r\n\r\n"), "the stream ends with its last chunk, then the socket closes");
}

#[tokio::test]
async fn a_refused_stream_is_a_sized_answer_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: http://evil.example\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let body_at = read_until(&mut tcp, &mut buf, b"\r\n\r\n").await;
    let (status, headers) = head_of(&buf);
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    let length: usize = header(&headers, "content-length").expect("a sized answer").parse().unwrap();
    assert_eq!(header(&headers, "transfer-encoding"), None);
    read_to_len(&mut tcp, &mut buf, body_at + length, "the 403 body").await;
    let body: serde_json::Value = serde_json::from_slice(&buf[body_at..body_at + length]).unwrap();
    assert!(body["error"].as_str().unwrap().contains("origin"), "{body}");

    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut next = buf.split_off(body_at + length);
    read_until(&mut tcp, &mut next, b"\r\n\r\n").await;
    assert_eq!(head_of(&next).0, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_head_that_arrives_in_pieces_still_opens_the_stream() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    for piece in [&b"GE"[..], b"T /s", b"se HTTP/1.1\r\nHo", b"st: 127.0.0.1\r\n", b"\r\n"] {
        tcp.write_all(piece).await.unwrap();
        // The scenario, not a wait: a pause between pieces, so that each arrives in a read of
        // its own rather than coalesced with the next.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"event: session").await;
    assert_eq!(head_of(&buf).0, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_client_leaving_detaches_its_session_at_once() {
    // Keep-alive comments are far off: only reading the socket can notice the client leaving.
    let server = TestServer::with_config(Config { keepalive: Duration::from_secs(300), ..Config::default() }).await;
    let (tcp, sid) = server.raw_sse(None).await;
    server.wait_for_transport(&sid, Some(switchyard::Transport::Sse)).await;
    drop(tcp);
    server.wait_for_transport(&sid, None).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let server = TestServer::with_config(Config {
        slow_client_timeout: Duration::from_millis(500),
        keepalive: Duration::from_secs(300),
        ..Config::default()
    })
    .await;
    let (mut tcp, sid) = server.raw_sse(Some(4096)).await;
    // Far more than the socket buffers on both sides hold, so the server's writes block.
    let payload = json!("x".repeat(16 * 1024));
    let flooded = tokio::time::Instant::now();
    for _ in 0..400 {
        let _ = server.gateway.hub().emit(&sid, "flood", &payload).await;
    }
    // The server gives up on the connection once a write has been blocked for the write timeout;
    // ending its task detaches the session. (The hub's own check for readers that fall behind
    // would detach it too, but not before two of its once-a-second sweeps have seen it behind.)
    server.wait_for_transport(&sid, None).await;
    assert!(flooded.elapsed() < Duration::from_secs(2), "dropped {:?} after the flood", flooded.elapsed());
    // Had the server kept the connection, draining it now would unblock the writes, end the
    // stream with its last chunk, and leave the socket open (keep-alive): no end of file.
    until_closed("the server to have dropped the connection", &mut tcp).await;
}

/// Reads one chunked body from `buf[body_at..]` (reading more from `tcp` as needed) until at
/// least `count` chunks have arrived, or to its last chunk if `count` is `None`. Returns the
/// chunks' payloads and where the next unread chunk starts. Size lines in either case of hex:
/// hyper writes them in upper case, the lean writer in lower case.
async fn read_chunks(tcp: &mut TcpStream, buf: &mut Vec<u8>, mut at: usize, count: Option<usize>) -> (Vec<Vec<u8>>, usize) {
    let mut chunks = Vec::new();
    while count.is_none_or(|count| chunks.len() < count) {
        let size_end = read_until_from(tcp, buf, at, b"\r\n").await;
        let size = usize::from_str_radix(std::str::from_utf8(&buf[at..size_end - 2]).unwrap(), 16).unwrap();
        read_to_len(tcp, buf, size_end + size + 2, "a whole chunk").await;
        assert_eq!(&buf[size_end + size..size_end + size + 2], b"\r\n", "a chunk ends with CRLF");
        at = size_end + size + 2;
        if size == 0 {
            break;
        }
        chunks.push(buf[size_end..size_end + size].to_vec());
    }
    (chunks, at)
}

/// The events both streams are sent: names that need escaping in JSON, data that JSON escapes,
/// and pre-rendered data over several lines (LF, CR and CRLF), which SSE splits into `data:`
/// lines.
async fn emit_awkward_events(server: &TestServer, sid: &Sid) {
    let hub = server.gateway.hub();
    hub.emit(sid, "message", &json!("hi")).await.unwrap();
    hub.emit(sid, "quote\"and\\slash", &json!({"a": [1, "x"]})).await.unwrap();
    hub.emit(sid, "naïve ☃ name", &json!("a string\nwith\r\na line break")).await.unwrap();
    hub.emit_json(sid, "pretty", "{\n  \"a\": 1,\r\n  \"b\": [\r2\n]\n}\n".to_owned()).await.unwrap();
    hub.emit(sid, " spaced ", &json!("")).await.unwrap();
}

/// Everything an event stream sends for [`emit_awkward_events`], as chunk payloads with the sid
/// written `SID`: read off `tcp`, whose response head starts at `buf[0]`.
async fn awkward_stream(server: &TestServer, tcp: &mut TcpStream, mut buf: Vec<u8>) -> (Vec<(String, String)>, Vec<String>) {
    let body_at = read_until(tcp, &mut buf, b"\r\n\r\n").await;
    let (status, mut headers) = head_of(&buf);
    assert_eq!(status, "HTTP/1.1 200 OK");
    headers.retain(|(name, _)| name != "date");
    headers.sort();
    let (mut chunks, at) = read_chunks(tcp, &mut buf, body_at, Some(1)).await;
    let sid = sid_in(&chunks[0]).expect("a hello with a sid");
    emit_awkward_events(server, &sid).await;
    let (events, at) = read_chunks(tcp, &mut buf, at, Some(5)).await;
    chunks.extend(events);
    let _other = supersede(server, &sid).await;
    let (rest, _) = read_chunks(tcp, &mut buf, at, None).await;
    assert!(rest.is_empty(), "nothing after the events but the last chunk: {rest:?}");
    let chunks = chunks.iter().map(|c| String::from_utf8(c.clone()).unwrap().replace(sid.as_str(), "SID")).collect();
    (headers, chunks)
}

#[tokio::test]
async fn the_lean_writer_and_hyper_send_the_same_event_stream_byte_for_byte() {
    let server = TestServer::with_config(Config { keepalive: Duration::from_secs(300), ..Config::default() }).await;

    // A first request: served by the lean writer.
    let mut lean = TcpStream::connect(server.addr).await.unwrap();
    lean.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let (lean_headers, lean_chunks) = awkward_stream(&server, &mut lean, Vec::new()).await;

    // The same request as a connection's second: served by hyper.
    let mut hyper = TcpStream::connect(server.addr).await.unwrap();
    hyper.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let body_at = read_until(&mut hyper, &mut buf, b"\r\n\r\n").await;
    let length: usize = header(&head_of(&buf).1, "content-length").expect("a sized answer").parse().unwrap();
    read_to_len(&mut hyper, &mut buf, body_at + length, "the healthz body").await;
    let rest = buf.split_off(body_at + length);
    hyper.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let (hyper_headers, hyper_chunks) = awkward_stream(&server, &mut hyper, rest).await;

    assert_eq!(lean_headers, hyper_headers);
    assert_eq!(lean_chunks, hyper_chunks, "one SSE frame per chunk, the same bytes on both paths");
    // Today's bytes, which were axum's `Sse` framing before the encoder (protocol::encode).
    let expected = [
        r#"id: SID.0~
event: session
data: {"heartbeat":300000,"max_batch":100,"max_body":65536,"received":0,"resumed":false,"sid":"SID","transport":"sse"}

"#,
        "id: SID.1\nevent: message\ndata: \"hi\"\n\n",
        "id: SID.2\nevent: quote\"and\\slash\ndata: {\"a\":[1,\"x\"]}\n\n",
        "id: SID.3\nevent: naïve ☃ name\ndata: \"a string\\nwith\\r\\na line break\"\n\n",
        "id: SID.4\nevent: pretty\ndata: {\ndata:   \"a\": 1,\rdata: \ndata:   \"b\": [\rdata: 2\ndata: ]\ndata: }\ndata: \n\n",
        "id: SID.5\nevent:  spaced \ndata: \"\"\n\n",
    ];
    assert_eq!(lean_chunks, expected);
    assert_eq!(
        lean_headers,
        [("cache-control", "no-cache, no-transform"), ("content-type", "text/event-stream"), ("transfer-encoding", "chunked"), ("x-accel-buffering", "no")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
}

/// The default app on a loopback port, with 30 s header and drain timeouts (longer than any
/// test waits): its address, the sender that stops it, and its `run()` to wait for.
async fn serve_until_stopped() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let config = Config { header_timeout: Duration::from_secs(30), drain: Duration::from_secs(30), ..Config::default() };
    let gateway = switchyard::Gateway::builder(config).build();
    let router = switchyard::server::app(&gateway, std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static").as_path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(switchyard::server::run(listener, router, gateway, async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, served)
}

/// A connection that has sent no request yet does not hold up shutdown until its header timeout.
#[tokio::test]
async fn shutdown_closes_a_connection_that_never_sent_a_request() {
    let (addr, stop_tx, served) = serve_until_stopped().await;
    // Accepted and silent: the server is waiting for its first request head.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within("the probe's answer (both connections accepted)", probe.read_to_end(&mut answer)).await.unwrap();
    stop_tx.send(()).unwrap();
    within("run() to return well before the 30 s header timeout", served).await.unwrap().unwrap();
    let mut rest = Vec::new();
    let read = within("the idle connection to be closed", idle.read_to_end(&mut rest)).await;
    assert!(read.is_ok_and(|n| n == 0) || rest.is_empty(), "closed without an answer: {rest:?}");
}

/// A keep-alive connection that has been answered and waits for its next request head (served
/// by hyper, with the server's own shutdown wait, `cancelled_once`) is closed at shutdown, not
/// held until its header timeout.
#[tokio::test]
async fn shutdown_closes_a_keep_alive_connection_between_requests() {
    let (addr, stop_tx, served) = serve_until_stopped().await;
    let mut kept = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // Two requests, so that the second is read by hyper's loop (a first request is read ahead
    // of it, `src/server/event_stream.rs`), then the connection waits for a third.
    for _ in 0..2 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let from = buf.len();
        read_until_from(&mut kept, &mut buf, from, b"\"status\"").await;
    }
    stop_tx.send(()).unwrap();
    within("run() to return well before the 30 s header timeout", served).await.unwrap().unwrap();
    let mut rest = Vec::new();
    let read = within("the kept connection to be closed", kept.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "closed: {read:?}");
}

/// One server-to-client WebSocket frame of at most 64 KiB (unmasked), starting at `at` in
/// `buf`: its opcode and payload, and where the next frame starts.
async fn ws_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>, at: usize) -> (u8, String, usize) {
    read_to_len(tcp, buf, at + 2, "a frame header").await;
    let (opcode, len) = (buf[at] & 0x0f, usize::from(buf[at + 1] & 0x7f));
    assert_eq!(buf[at + 1] & 0x80, 0, "a server's frames are not masked");
    let (start, len) = if len == 126 {
        read_to_len(tcp, buf, at + 4, "a frame length").await;
        (at + 4, usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])))
    } else {
        (at + 2, len)
    };
    read_to_len(tcp, buf, start + len, "a frame payload").await;
    (opcode, String::from_utf8_lossy(&buf[start..start + len]).into_owned(), start + len)
}

#[tokio::test]
async fn a_websocket_frame_sent_with_the_handshake_is_read_after_it() {
    // The socket is taken back from hyper after the `101` (`src/transport/ws/handshake.rs`):
    // what hyper had read past the request head is the socket's first bytes.
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let text = br#"{"event":"echo","data":"sent with the handshake"}"#;
    let mask = [0x12, 0x34, 0x56, 0x78];
    bytes.extend_from_slice(&[0x81, 0x80 | u8::try_from(text.len()).unwrap()]);
    bytes.extend_from_slice(&mask);
    bytes.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    // One write: the frame reaches the server in the same segment as the request.
    tcp.write_all(&bytes).await.unwrap();

    let mut buf = Vec::new();
    let at = read_until(&mut tcp, &mut buf, b"\r\n\r\n").await;
    let (status, headers) = head_of(&buf);
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    assert_eq!(header(&headers, "connection"), Some("upgrade"));
    // The accept key of RFC 6455 section 1.3's example.
    assert_eq!(header(&headers, "sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    let (opcode, hello, at) = ws_frame(&mut tcp, &mut buf, at).await;
    assert_eq!(opcode, 1);
    assert!(hello.contains(r#""event":"session""#), "{hello}");
    let (opcode, echo, _) = ws_frame(&mut tcp, &mut buf, at).await;
    assert_eq!(opcode, 1);
    let echo: serde_json::Value = serde_json::from_str(&echo).unwrap();
    assert_eq!((echo["event"].as_str(), echo["data"].as_str()), (Some("echo"), Some("sent with the handshake")));
}
