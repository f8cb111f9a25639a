//! The real binary as an operator runs it: start, serve, SIGTERM, drain, exit.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_drains_clients_with_a_reconnect_notice_and_exits_cleanly() {
    let (mut binary, addr) = start_binary(&["--drain", "5s"], None);
    let child = &mut binary.0;
    let http = reqwest::Client::new();
    let page = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the demo page is served");
    // Read whole, so that its connection is free again: the SSE request below then takes it,
    // rather than racing it against a new connection that the client would leave idle in its
    // pool. (A connection that never sends a request holds the drain up to the header timeout:
    // the server waits for its first head without watching for shutdown.)
    let page = page.text().await.unwrap();
    assert!(page.contains("switchyard.js"), "the demo page loads the client");

    let response = http.get(format!("http://{addr}/sse")).send().await.unwrap();
    let mut sse = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    let hello = within("SSE hello", sse.next()).await.unwrap().unwrap();
    let sid = serde_json::from_str::<serde_json::Value>(&hello.data).unwrap()["sid"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    within("WS hello", ws.next()).await.unwrap().unwrap();

    // A POST whose body is still arriving when the signal comes: it must be finished, not cut.
    // It asks `Expect: 100-continue`, so the server says when the handler starts reading the
    // body: from then on the request is the server's to finish.
    let (head, rest) = (br#"{"event":"message","#, br#""data":"late"}"#);
    let mut post = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /sse?sid={sid} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        head.len() + rest.len()
    );
    post.write_all(request.as_bytes()).await.unwrap();
    let interim = within("100 Continue: the handler reads the POST's body", read_head(&mut post)).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    post.write_all(head).await.unwrap();

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());

    // Every attached client is told to resume, then its transport is closed cleanly.
    let farewell = within("SSE reconnect notice", sse.next()).await.unwrap().unwrap();
    assert_eq!(farewell.event, "reconnect");
    assert!(within("SSE end", sse.next()).await.is_none(), "the stream ends after the notice");
    let frame = within("WS reconnect notice", ws.next()).await.unwrap().unwrap();
    assert!(frame.to_text().unwrap().contains(r#""event":"reconnect""#), "{frame:?}");
    match within("WS close", ws.next()).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // The in-flight POST completes.
    post.write_all(rest).await.unwrap();
    let answer = within("the in-flight POST's answer", read_head(&mut post)).await;
    assert!(answer.starts_with("HTTP/1.1 202 "), "{answer:?}");

    let status = wait_exit(child, Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
    assert!(http.get(format!("http://{addr}/sse")).send().await.is_err(), "nothing listens any more");
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_answers_503_and_keeps_serving() {
    let (mut binary, addr) = start_binary::<&str>(&[], Some(64));
    let child = &mut binary.0;
    // Far more streams than 64 descriptors allow; each reads its status line.
    let mut held = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..100 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut head = [0u8; 512];
        let n = within("a status line", tcp.read(&mut head)).await.unwrap_or(0);
        let text = String::from_utf8_lossy(&head[..n]).to_string();
        if text.starts_with("HTTP/1.1 200") {
            ok += 1;
            held.push(tcp);
        } else {
            assert!(text.starts_with("HTTP/1.1 503"), "a clean refusal, got {text:?}");
            assert!(text.contains("Retry-After: 5"), "{text:?}");
            refused += 1;
        }
    }
    println!("{ok} streams held, {refused} refused with 503");
    assert!(ok > 20 && refused > 0, "{ok} held, {refused} refused");
    // Once descriptors come back, new clients are served again: the accept loop is alive.
    drop(held);
    wait_until("a new session after the descriptors came back", || async {
        reqwest::get(format!("http://{addr}/healthz")).await.is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "the server is still running");
}
