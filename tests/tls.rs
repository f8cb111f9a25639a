//! The HTTPS listener (`server::run_tls`): ALPN, every route over HTTP/2 and HTTP/1.1, the
//! WebSocket over both (RFC 8441 over HTTP/2), and the plain listener's guards on it: header
//! timeout, origin checks, limits, drain.
//!
//! Also nginx terminating TLS with HTTP/2 in front of the plain gateway, as README.md
//! describes it.
//!
//! Certificates come from a CA the test makes (`common::tls::TestCa`); every client trusts that
//! CA and nothing else.

mod common;
mod harness;

use std::time::Duration;

use common::tls::{presented, TestCa};
use common::{hello_sid, within, Received, SseClient, TestServer, WsClient};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use switchyard::{app, server, Config, Gateway};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::Role;

/// An HTTP/2 connection of hyper's client over TLS to `server`.
async fn h2_connection(ca: &TestCa, server: &TestServer) -> http2::SendRequest<Full<bytes::Bytes>> {
    let tls = ca.connect(server.addr, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

/// `GET /sse` as one stream of the HTTP/2 connection `send`.
async fn h2_sse(send: &mut http2::SendRequest<Full<bytes::Bytes>>, server: &TestServer) -> SseStream {
    let request = hyper::Request::get(server.url("/sse")).body(Full::default()).unwrap();
    let response = within("an HTTP/2 SSE answer", send.send_request(request)).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, hyper::Version::HTTP_2));
    Box::pin(BodyDataStream::new(response.into_body()).eventsource())
}

type SseStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<hyper::Error>>> + Send>,
>;

async fn next_event(stream: &mut SseStream) -> Received {
    let event = within("an SSE event", stream.next()).await.expect("the stream goes on").expect("SSE parse");
    Received { event: event.event, data: serde_json::from_str(&event.data).unwrap(), id: event.id }
}

#[tokio::test]
async fn alpn_chooses_http2_or_http11_and_each_serves_the_page_and_the_gateway() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let tls = ca.connect(server.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 is preferred");
    assert_eq!(presented(&tls), ca.cert_der, "the configured certificate");
    let tls = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls = ca.connect(server.addr, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN: HTTP/1.1 by default");

    for (h2, version) in [(true, reqwest::Version::HTTP_2), (false, reqwest::Version::HTTP_11)] {
        let http = ca.reqwest(h2, server.addr);
        for path in ["/", "/switchyard.js", "/healthz"] {
            let response = within("an HTTPS answer", http.get(server.url(path)).send()).await.unwrap();
            assert_eq!((response.status().as_u16(), response.version()), (200, version), "GET {path}");
        }
        // A whole session: the stream, a POST into it, the reply on the stream.
        let response = within("SSE headers", http.get(server.url("/sse")).send()).await.unwrap();
        assert_eq!(response.version(), version);
        let mut sse = SseClient::from_response(response);
        let sid = sse.hello().await;
        let posted = within("POST", http.post(server.url(&format!("/sse?sid={sid}"))).json(&json!({"event": "message", "data": "hi"})).send())
            .await
            .unwrap();
        assert_eq!((posted.status().as_u16(), posted.version()), (202, version));
        let reply = sse.next().await;
        assert_eq!((reply.event.as_str(), &reply.data), ("response", &json!(app::REPLY)));
        let polled = within("a poll", http.get(server.url(&format!("/poll?sid={sid}"))).send()).await.unwrap();
        assert_eq!((polled.status().as_u16(), polled.version()), (200, version), "a poll of the session over HTTPS");
    }
}

#[tokio::test]
async fn sse_over_http2_starts_at_once_keeps_alive_and_is_not_compressed() {
    let ca = TestCa::new();
    let server = TestServer::https(Config { keepalive: Duration::from_millis(200), ..Config::default() }, &ca).await;
    let response = within(
        "SSE headers over HTTP/2",
        server.http.get(server.url("/sse")).header("accept-encoding", "gzip, br, deflate").send(),
    )
    .await
    .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
    assert!(response.headers().get("content-encoding").is_none(), "an event stream is never compressed: {:?}", response.headers());
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    // The hello comes at once (nothing waits for a buffer to fill), then keep-alive comments.
    within("the hello and two keep-alive comments over HTTP/2", async {
        while !(common::sid_in(&seen).is_some() && String::from_utf8_lossy(&seen).matches("\n:").count() + usize::from(seen.starts_with(b":")) >= 2) {
            let chunk = body.next().await.expect("the stream goes on").unwrap();
            seen.extend_from_slice(&chunk);
        }
    })
    .await;
}

#[tokio::test]
async fn one_http2_connection_carries_twenty_sessions_at_once() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let mut send = h2_connection(&ca, &server).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(h2_sse(&mut send, &server).await);
    }
    let mut sids = Vec::new();
    for stream in &mut streams {
        sids.push(hello_sid(next_event(stream).await, "sse"));
    }
    // Every session POSTs over the same connection, all at once; each gets its own reply.
    let posts = sids.iter().enumerate().map(|(i, sid)| {
        let mut send = send.clone();
        let uri = server.url(&format!("/sse?sid={sid}"));
        let body = Full::new(bytes::Bytes::from(json!({"event": "echo", "data": i}).to_string()));
        async move {
            let request = hyper::Request::post(uri).header("content-type", "application/json").body(body).unwrap();
            let response = within("POST over HTTP/2", send.send_request(request)).await.unwrap();
            response.status()
        }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(hyper::StatusCode::is_success), "{statuses:?}");
    for (i, stream) in streams.iter_mut().enumerate() {
        let reply = next_event(stream).await;
        assert_eq!((reply.event.as_str(), &reply.data), ("echo", &json!(i)), "session {i} gets its own reply");
    }
}

#[tokio::test]
async fn a_websocket_over_tls_with_http11() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let tls = ca.connect(server.addr, &[b"http/1.1"]).await;
    let (socket, response) = within("WebSocket handshake over TLS", tokio_tungstenite::client_async(server.ws_url("/ws"), tls))
        .await
        .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    let mut ws = WsClient { socket };
    ws.hello().await;
    ws.send(r#"{"event":"message","data":"over TLS"}"#).await;
    let reply = ws.next().await;
    assert_eq!((reply.event.as_str(), &reply.data), ("response", &json!(app::REPLY)));
}

#[tokio::test]
async fn a_websocket_over_http2_is_an_extended_connect_on_the_shared_connection() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let mut send = h2_connection(&ca, &server).await;
    // An SSE stream of another session on the same connection, open the whole time.
    let mut other = h2_sse(&mut send, &server).await;
    let other_sid = hello_sid(next_event(&mut other).await, "sse");

    let request = hyper::Request::connect(server.url("/ws?heartbeat=0"))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Full::default())
        .unwrap();
    let response = within("the extended CONNECT's answer", send.send_request(request)).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, hyper::Version::HTTP_2), "RFC 8441: 200, not 101");
    let upgraded = within("the CONNECT stream", hyper::upgrade::on(response)).await.expect("an upgraded stream");
    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let mut ws = WsClient { socket };
    let sid = ws.hello().await;
    for i in 0..5 {
        ws.send(&json!({"event": "echo", "data": i}).to_string()).await;
        let reply = ws.next().await;
        assert_eq!((reply.event.as_str(), &reply.data), ("echo", &json!(i)));
    }
    server.wait_for_transport(&sid.parse().unwrap(), Some(switchyard::Transport::WebSocket)).await;
    let metrics = within("GET /metrics", server.http.get(server.url("/metrics")).send()).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_websocket_handshakes_total{http=\"2\"}")),
        "the HTTP/2 handshake is counted:\n{metrics}"
    );
    // The other stream on the connection was not disturbed.
    let posted = server.post_json(&other_sid, r#"{"event":"echo","data":"still here"}"#).await;
    assert_eq!(posted.0, 202);
    assert_eq!(next_event(&mut other).await.data, json!("still here"));
}

#[tokio::test]
async fn origins_are_checked_over_http2_against_the_authority() {
    let ca = TestCa::new();
    let server = TestServer::https(Config::default(), &ca).await;
    let own = format!("https://gateway.test:{}", server.addr.port());
    let url = format!("{own}/sse");
    // gateway.test is not loopback: only the same-origin rule lets it in, and HTTP/2 carries
    // the host in :authority, not Host.
    let response = within("same-origin SSE", server.http.get(&url).header("origin", &own).send()).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
    for foreign in ["https://evil.example", "https://gateway.test:1", "null"] {
        let response = within("foreign SSE", server.http.get(&url).header("origin", foreign).send()).await.unwrap();
        assert_eq!(response.status(), 403, "{foreign}");
        let response = within("foreign POST", server.http.post(&url).header("origin", foreign).body("{}").send()).await.unwrap();
        assert_eq!(response.status(), 403, "{foreign}");
    }
}

#[tokio::test]
async fn the_plain_listeners_limits_hold_over_http2() {
    let ca = TestCa::new();
    let config = Config { max_body: 1024, max_new_sessions_per_ip: 2, ..Config::default() };
    let server = TestServer::https(config, &ca).await;
    let mut sse = server.sse("/sse").await;
    let sid = sse.hello().await;
    let big = format!(r#"{{"event":"message","data":"{}"}}"#, "x".repeat(4096));
    let (status, _) = server.post_json(&sid, &big).await;
    assert_eq!(status, 413, "a body over --max-body");
    // The per-address limit needs the peer address, which the HTTPS listener hands on too.
    let _second = server.sse("/sse").await;
    let third = within("a third session", server.http.get(server.url("/sse")).send()).await.unwrap();
    assert_eq!(third.status(), 429, "over --max-new-sessions-per-ip from one address");
    assert!(third.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_client_silent_before_or_after_the_handshake_is_dropped() {
    let ca = TestCa::new();
    let server = TestServer::https(Config { header_timeout: Duration::from_millis(300), ..Config::default() }, &ca).await;
    // No TLS hello at all.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(within("the server to drop a silent TCP client", tcp.read(&mut buf)).await.unwrap_or(0), 0);
    // A handshake, then no request: over HTTP/2 (no preface) and HTTP/1.1.
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut tls = ca.connect(server.addr, &[alpn]).await;
        let read = within("the server to drop a client that sends no request", tls.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{}: {read:?}", String::from_utf8_lossy(alpn));
    }
    // Meanwhile and after, others are served.
    assert_eq!(within("health", server.http.get(server.url("/healthz")).send()).await.unwrap().status(), 200);
}

#[tokio::test]
async fn shutdown_drains_http2_streams_and_websockets_then_returns() {
    let ca = TestCa::new();
    let gateway = app::seed(Gateway::builder(Config { max_new_sessions_per_ip: 0, ..Config::default() })).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::run_tls(listener, gateway.router(), gateway.clone(), ca.server_config(), async {
        let _ = stop_rx.await;
    }));
    let server = TestServer { addr, gateway, http: ca.reqwest(true, addr), scheme: "https" };
    let mut sse = server.sse("/sse").await;
    sse.hello().await;
    let mut send = h2_connection(&ca, &server).await;
    let request = hyper::Request::connect(server.url("/ws"))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Full::default())
        .unwrap();
    let response = within("extended CONNECT", send.send_request(request)).await.unwrap();
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut ws = WsClient { socket: tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await };
    ws.hello().await;

    stop_tx.send(()).unwrap();
    let farewell = sse.next().await;
    assert_eq!((farewell.event.as_str(), &farewell.data["reason"]), ("reconnect", &json!("shutdown")));
    sse.expect_end().await;
    let farewell = ws.next().await;
    assert_eq!((farewell.event.as_str(), &farewell.data["reason"]), ("reconnect", &json!("shutdown")));
    let (code, _) = ws.expect_close().await;
    assert_eq!(u16::from(code), 1001);
    within("run_tls to return once drained", served).await.unwrap().unwrap();
}

#[tokio::test]
async fn behind_nginx_with_http2_a_session_works_over_both_protocols() {
    let ca = TestCa::new();
    let server = TestServer::start().await;
    let certs = harness::TempDir::new("nginx-certs");
    let (cert, key) = ca.write(certs.path());
    let nginx = harness::proxies::Proxy::nginx_tls("nginx-http2.conf", server.addr, &cert, &key).await;
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let http = ca.reqwest(true, front);
    let response = within("SSE through nginx", http.get(format!("https://{front}/sse")).send()).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
    let mut sse = SseClient::from_response(response);
    let sid = sse.hello().await;
    let posted = within("POST through nginx", http.post(format!("https://{front}/sse?sid={sid}")).json(&json!({"event": "echo", "data": 1})).send())
        .await
        .unwrap();
    assert_eq!((posted.status().as_u16(), posted.version()), (202, reqwest::Version::HTTP_2));
    assert_eq!(sse.next().await.data, json!(1));
    // nginx has no WebSocket over HTTP/2: the WebSocket takes an HTTP/1.1 connection of its own.
    let tls = ca.connect(front, &[b"http/1.1"]).await;
    let (socket, _) = within("WebSocket through nginx", tokio_tungstenite::client_async(format!("wss://{front}/ws"), tls)).await.unwrap();
    let mut ws = WsClient { socket };
    ws.hello().await;
    ws.send(r#"{"event":"echo","data":2}"#).await;
    assert_eq!(ws.next().await.data, json!(2));
}
