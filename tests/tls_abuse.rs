//! HTTP/2 abuse on the HTTPS listener: more concurrent streams than allowed, a rapid-reset
//! burst, a flood of malformed requests the server must reset, oversized header blocks and a
//! CONTINUATION flood. Repeated rapid-reset bursts leave the server's memory flat. Each gets a clear refusal (a
//! `REFUSED_STREAM` reset, a `GOAWAY` with its reason, a `431`), and the server keeps serving
//! other clients meanwhile.
//!
//! A well-behaved client cannot commit most of these (the `h2` crate waits for a free stream
//! slot and validates what it sends), so the abusive client writes HTTP/2 frames itself: a
//! handful of frame types, with header blocks made of HPACK's static table and literals. The
//! `h2` crate is the well-behaved client for the oversized header block, which it lets through.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::tls::TestCa;
use common::{within, TestServer};
use switchyard::server::{H2_MAX_HEADER_LIST, H2_MAX_LOCAL_RESETS, H2_MAX_PENDING_RESETS};
use switchyard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Bytes,
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.put_uint(payload.len() as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

/// An HPACK literal header field without indexing, its name indexed in the static table.
fn literal(block: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    assert!(name_index < 16);
    block.push(name_index);
    hpack_length(block, value.len());
    block.extend_from_slice(value);
}

/// An HPACK string length (7-bit prefix integer, Huffman off).
fn hpack_length(block: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        block.push(n as u8);
        return;
    }
    block.push(127);
    n -= 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
}

/// The header block of `GET path` on `localhost`.
fn get(path: &str) -> Vec<u8> {
    // :method GET (2), :scheme https (7): fully indexed; :path and :authority: literals.
    let mut block = vec![0x82, 0x87];
    literal(&mut block, 4, path.as_bytes());
    literal(&mut block, 1, b"localhost");
    block
}

/// A raw HTTP/2 connection over TLS that has exchanged settings with the server.
struct Raw {
    tls: TlsStream<TcpStream>,
    read: BytesMut,
}

impl Raw {
    async fn connect(ca: &TestCa, server: &TestServer) -> Raw {
        Raw::connect_to(ca, server.addr).await
    }

    async fn connect_to(ca: &TestCa, addr: std::net::SocketAddr) -> Raw {
        let tls = ca.connect(addr, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw { tls, read: BytesMut::new() };
        let mut out = BytesMut::from(PREFACE);
        frame(&mut out, SETTINGS, 0, 0, &[]);
        raw.send(&out).await;
        // The server's settings, acknowledged, so its limits are in force on both sides.
        loop {
            let f = raw.next().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                let mut ack = BytesMut::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                raw.send(&ack).await;
                return raw;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("writing frames", self.tls.write_all(bytes)).await.expect("the server takes the frames");
    }

    /// The next frame; `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let len = (usize::from(self.read[0]) << 16) | (usize::from(self.read[1]) << 8) | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let head = self.read.split_to(9);
                    let payload = self.read.split_to(len).freeze();
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some(Frame { kind: head[3], flags: head[4], stream, payload });
                }
            }
            let mut buf = [0u8; 16 * 1024];
            match within("a frame from the server", self.tls.read(&mut buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Frames until `done` says so or the connection ends.
    async fn until(&mut self, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            let stop = done(&f);
            frames.push(f);
            if stop {
                break;
            }
        }
        frames
    }
}

fn error_code(f: &Frame) -> u32 {
    let at = if f.kind == GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(f.payload[at..at + 4].try_into().unwrap())
}

/// Another client, meanwhile: a fresh HTTP/2 connection gets a whole session.
async fn others_are_served(server: &TestServer) {
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let (status, _) = server.post_json(&sid, r#"{"event":"echo","data":"fine"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(sse.next().await.data, serde_json::json!("fine"));
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_and_the_others_served() {
    let ca = TestCa::new();
    let server = TestServer::https(Config { http2_max_streams: 8, ..Config::default() }, &ca).await;
    let mut raw = Raw::connect(&ca, &server).await;
    // Twelve event streams at once, in one write: four more than the server allows.
    let mut out = BytesMut::new();
    for i in 0..12u32 {
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &get("/sse"));
    }
    raw.send(&out).await;
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    raw.until(|f| {
        match f.kind {
            HEADERS => answered.push(f.stream),
            RST_STREAM if error_code(f) == REFUSED_STREAM => refused.push(f.stream),
            GOAWAY => panic!("the connection itself was closed: {f:?}"),
            _ => {}
        }
        answered.len() + refused.len() == 12
    })
    .await;
    assert_eq!((answered.len(), refused.len()), (8, 4), "answered {answered:?}, refused {refused:?}");
    assert_eq!(refused, [17, 19, 21, 23], "the streams over the limit");
    // The eight streams are live sessions.
    assert_eq!(server.gateway.hub().len(), 8);
    others_are_served(&server).await;
}

#[tokio::test]
async fn a_rapid_reset_burst_closes_the_connection_with_enhance_your_calm() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let mut raw = Raw::connect(&ca, &server).await;
    // Streams opened and cancelled at once, many more than the server lets pile up.
    let burst = 20 * H2_MAX_PENDING_RESETS as u32;
    let mut out = BytesMut::new();
    for i in 0..burst {
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &get("/healthz"));
        frame(&mut out, RST_STREAM, 0, 2 * i + 1, &CANCEL.to_be_bytes());
    }
    // The server may close before it has read all of it.
    let _ = tokio::time::timeout(common::WAIT, raw.tls.write_all(&out)).await;
    let frames = raw.until(|f| f.kind == GOAWAY).await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY).unwrap_or_else(|| panic!("no GOAWAY; frames: {frames:?}"));
    assert_eq!(error_code(goaway), ENHANCE_YOUR_CALM, "{goaway:?}");
    others_are_served(&server).await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One rapid-reset burst on a fresh connection, until the server's GOAWAY.
async fn rapid_reset_burst(ca: &TestCa, addr: std::net::SocketAddr) {
    let mut raw = Raw::connect_to(ca, addr).await;
    let mut out = BytesMut::new();
    for i in 0..20 * H2_MAX_PENDING_RESETS as u32 {
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &get("/sse"));
        frame(&mut out, RST_STREAM, 0, 2 * i + 1, &CANCEL.to_be_bytes());
    }
    let _ = tokio::time::timeout(common::WAIT, raw.tls.write_all(&out)).await;
    let frames = raw.until(|f| f.kind == GOAWAY).await;
    assert!(frames.iter().any(|f| f.kind == GOAWAY && error_code(f) == ENHANCE_YOUR_CALM), "{frames:?}");
}

#[tokio::test]
async fn repeated_rapid_reset_bursts_leave_the_servers_memory_flat() {
    // The binary, so that its resident memory is the server's alone.
    let ca = TestCa::new();
    let dir = std::env::temp_dir().join(format!("switchyard-abuse-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca.write(&dir);
    let (binary, addr) = common::start_binary(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()], None);
    let _ = std::fs::remove_dir_all(&dir);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let pid = binary.0.id();
    // Two bursts first, so that the allocator and the runtime have grown to their working size.
    for _ in 0..2 {
        rapid_reset_burst(&ca, addr).await;
    }
    let before = rss_kib(pid);
    // Each burst opens and cancels 640 streams of GET /sse (a session each, had they lived).
    for _ in 0..20 {
        rapid_reset_burst(&ca, addr).await;
    }
    let after = rss_kib(pid);
    println!("server RSS {before} KiB before 20 rapid-reset bursts, {after} KiB after");
    assert!(after < before + 4 * 1024, "RSS grew from {before} KiB to {after} KiB over 20 bursts");
    let http = ca.reqwest(true, addr);
    let health = within("health after the bursts", http.get(format!("https://{addr}/healthz")).send()).await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    println!("sessions left by the bursts (in their grace period): {}", body["sessions"]);
}

#[tokio::test]
async fn a_client_that_makes_the_server_reset_stream_after_stream_is_cut_off() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let mut raw = Raw::connect(&ca, &server).await;
    // Malformed requests (no :path), each of which the server must reset: more than it resets
    // for one client before closing the connection.
    let burst = 2 * H2_MAX_LOCAL_RESETS as u32;
    let mut out = BytesMut::new();
    for i in 0..burst {
        let mut block = vec![0x82, 0x87];
        literal(&mut block, 1, b"localhost");
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block);
    }
    let _ = tokio::time::timeout(common::WAIT, raw.tls.write_all(&out)).await;
    let frames = raw.until(|f| f.kind == GOAWAY).await;
    let resets = frames.iter().filter(|f| f.kind == RST_STREAM).count();
    let goaway = frames.iter().find(|f| f.kind == GOAWAY).unwrap_or_else(|| panic!("no GOAWAY after {resets} resets"));
    assert_eq!(error_code(goaway), ENHANCE_YOUR_CALM, "{:?}", String::from_utf8_lossy(&goaway.payload[8..]));
    assert!(resets <= H2_MAX_LOCAL_RESETS, "{resets} resets before the GOAWAY");
    others_are_served(&server).await;
}

#[tokio::test]
async fn an_oversized_header_block_gets_431_and_the_connection_goes_on() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let tls = ca.connect(server.addr, &[b"h2"]).await;
    let (mut client, connection) = within("HTTP/2 handshake", h2::client::handshake(tls)).await.unwrap();
    let driver = tokio::spawn(connection);
    let big = "x".repeat(H2_MAX_HEADER_LIST as usize + 1024);
    let request = axum::http::Request::get(server.url("/healthz")).header("x-big", big).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = within("the answer to a huge header block", response).await.expect("an answer, not a reset");
    assert_eq!(response.status(), 431);
    // The same connection serves the next request.
    let mut client = within("the connection to be ready", client.ready()).await.unwrap();
    let request = axum::http::Request::get(server.url("/healthz")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(within("a normal request after it", response).await.unwrap().status(), 200);
    drop(client);
    driver.abort();
    others_are_served(&server).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_long_before_it_ends() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let mut raw = Raw::connect(&ca, &server).await;
    // A header block that never ends: HEADERS, then CONTINUATION frames of 16 KiB each, up to
    // 16 MiB (256 times the largest block allowed), never END_HEADERS. The block itself is
    // valid HPACK: header fields of 1 KiB each.
    let mut first = BytesMut::new();
    frame(&mut first, HEADERS, END_STREAM, 1, &get("/healthz"));
    raw.send(&first).await;
    let mut flood = Vec::new();
    while flood.len() < 16 * 1024 * 1024 {
        flood.push(0x00); // literal without indexing, new name
        hpack_length(&mut flood, 7);
        flood.extend_from_slice(b"x-flood");
        hpack_length(&mut flood, 1024);
        flood.extend(std::iter::repeat_n(b'a', 1024));
    }
    let mut sent = 0usize;
    let mut cut = false;
    for chunk in flood.chunks(16 * 1024) {
        let mut out = BytesMut::new();
        frame(&mut out, CONTINUATION, 0, 1, chunk);
        match tokio::time::timeout(Duration::from_secs(5), raw.tls.write_all(&out)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => {
                cut = true;
                break;
            }
        }
    }
    let frames = raw.until(|f| f.kind == GOAWAY).await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY).unwrap_or_else(|| panic!("no GOAWAY after {sent} bytes: {frames:?}"));
    assert_eq!(error_code(goaway), ENHANCE_YOUR_CALM, "{:?}", String::from_utf8_lossy(&goaway.payload[8..]));
    assert!(cut, "the flood was cut off (sent {sent} bytes)");
    others_are_served(&server).await;
}
