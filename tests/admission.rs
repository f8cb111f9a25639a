//! The per-client-address limit on new sessions (`--max-new-sessions-per-ip`), over real
//! sockets: what is counted, what is refused and how, whose address it is.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use switchyard::admission::IpBlock;
use switchyard::{Config, Sid};

fn limited(per_minute: u32) -> Config {
    Config { max_new_sessions_per_ip: per_minute, ..Config::default() }
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address is loopback).
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::from(source)).build().unwrap()
}

/// GETs `path` with the given `X-Forwarded-For` lines; returns the response (headers only: an
/// SSE body is left unread, and the stream stays open while the response is held).
async fn get(client: &reqwest::Client, server: &TestServer, path: &str, forwarded: &[&str]) -> reqwest::Response {
    let mut request = client.get(server.url(path));
    for value in forwarded {
        request = request.header("x-forwarded-for", *value);
    }
    within(&format!("an answer to GET {path}"), request.send()).await.unwrap()
}

/// Checks a refusal: 429, `Retry-After` of at least a second and at most a whole token's
/// refill time, and the error text naming the same wait.
fn assert_refused(what: &str, status: u16, retry_after: Option<&str>, body: &str, per_minute: u32) {
    assert_eq!(status, 429, "{what}: {body}");
    let seconds: u64 = retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After")).parse().unwrap();
    assert!((1..=u64::from(60 / per_minute).max(1)).contains(&seconds), "{what}: Retry-After {seconds}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: JSON body, got {body:?}"));
    assert_eq!(body["error"], format!("too many new sessions from this address; retry in {seconds} s"), "{what}");
}

async fn assert_http_refused(what: &str, response: reqwest::Response, per_minute: u32) {
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = within("a refusal's body", response.text()).await.unwrap();
    assert_refused(what, status, retry_after.as_deref(), &body, per_minute);
}

async fn assert_ws_refused(server: &TestServer, path: &str, per_minute: u32) {
    let err = within("a WebSocket handshake answer", tokio_tungstenite::connect_async(server.ws_url(path)))
        .await
        .expect_err("the handshake must be refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else { panic!("expected an HTTP answer, got {err}") };
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert_refused(&format!("GET {path}"), response.status().as_u16(), retry_after.as_deref(), &body, per_minute);
}

#[tokio::test]
async fn the_sixth_new_session_from_one_address_is_refused_on_every_transport() {
    let server = TestServer::with_config(limited(5)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut sse = server.sse("/sse").await;
        sse.hello().await;
        held.push(sse);
    }
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut ws = server.ws("/ws").await;
        ws.hello().await;
        sockets.push(ws);
    }
    let (status, events) = server.poll("").await;
    assert_eq!(status, 200);
    hello_sid(events[0].clone(), "polling");
    assert_eq!(server.gateway.hub().len(), 5);

    assert_ws_refused(&server, "/ws", 5).await;
    // A stream on a fresh connection (served by the event-stream path), a poll, then a stream
    // on the poll's kept-alive connection (served by hyper).
    assert_http_refused("GET /sse, fresh connection", get(&reqwest::Client::new(), &server, "/sse", &[]).await, 5).await;
    let client = reqwest::Client::new();
    assert_http_refused("GET /poll", get(&client, &server, "/poll", &[]).await, 5).await;
    assert_http_refused("GET /sse, reused connection", get(&client, &server, "/sse", &[]).await, 5).await;
    assert_eq!(server.gateway.hub().len(), 5, "a refused request leaves no session behind");

    let metrics = within("metrics", async { server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap() }).await;
    assert!(metrics.contains(r#"switchyard_errors_total{kind="too_many_new_sessions"}"#), "{metrics}");
}

#[tokio::test]
async fn resuming_a_live_session_is_never_limited() {
    let server = TestServer::with_config(limited(2)).await;
    let mut sse = server.sse("/sse").await;
    let a = sse.hello().await;
    let (_, events) = server.poll("").await;
    let b = hello_sid(events[0].clone(), "polling");
    assert_ws_refused(&server, "/ws", 2).await;

    // Each transport resumes a live session, with or without a cursor, while new ones are refused.
    let mut ws = server.ws(&format!("/ws?sid={a}&heartbeat=1")).await;
    let hello = ws.next().await;
    assert_eq!(hello_sid(hello.clone(), "websocket"), a);
    assert_eq!(hello.data["resumed"], true);
    let mut sse = server.sse_with(&format!("/sse?sid={a}"), Some(&hello.id)).await;
    assert_eq!(sse.hello().await, a);
    let (status, events) = server.poll(&format!("?sid={b}")).await;
    assert_eq!(status, 200);
    assert_eq!((hello_sid(events[0].clone(), "polling"), &events[0].data["resumed"]), (b.clone(), &true.into()));
    let (status, events) = server.poll(&format!("?sid={a}&last_event_id={}", hello.id)).await;
    assert_eq!(status, 200);
    assert_eq!((hello_sid(events[0].clone(), "polling"), &events[0].data["resumed"]), (a.clone(), &true.into()));
    assert_eq!(server.gateway.hub().len(), 2);
    assert_http_refused("GET /poll, new", get(&server.http, &server, "/poll", &[]).await, 2).await;
}

#[tokio::test]
async fn an_unknown_expired_or_unplaceable_session_counts_as_new() {
    let server = TestServer::with_config(Config { grace: Duration::from_millis(100), ..limited(2) }).await;
    let (tcp, a) = server.raw_sse(None).await;
    drop(tcp);
    within("the first session to expire", async {
        while server.gateway.hub().contains(&a).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Resuming the expired session takes the second token: a fresh session, and a gap.
    let mut sse = server.sse(&format!("/sse?sid={a}")).await;
    let b = sse.hello().await;
    assert_ne!(b, a.as_str());
    assert_eq!(sse.next().await.data["reason"], "expired");

    // Now every attach that would create a session is refused, and creates none.
    assert_http_refused("the expired sid again", get(&server.http, &server, &format!("/poll?sid={a}"), &[]).await, 2).await;
    assert_ws_refused(&server, &format!("/ws?sid={}", Sid::random()), 2).await;
    assert_http_refused("a malformed sid", get(&server.http, &server, "/sse?sid=not-a-sid", &[]).await, 2).await;
    let beyond = format!("/poll?sid={b}&last_event_id={b}.99");
    assert_http_refused("a cursor beyond the session", get(&server.http, &server, &beyond, &[]).await, 2).await;
    assert_eq!(server.gateway.hub().len(), 1);
    // The live session itself still resumes.
    let (status, events) = server.poll(&format!("?sid={b}")).await;
    assert_eq!((status, events[0].data["resumed"].clone()), (200, true.into()));
}

#[tokio::test]
async fn another_source_address_has_its_own_bucket() {
    let server = TestServer::with_config(limited(1)).await;
    let one = client_from([127, 0, 0, 1]);
    let two = client_from([127, 0, 0, 2]);
    assert_eq!(get(&one, &server, "/poll", &[]).await.status(), 200);
    assert_http_refused("127.0.0.1's second", get(&one, &server, "/poll", &[]).await, 1).await;
    let stream = get(&two, &server, "/sse", &[]).await;
    assert_eq!(stream.status(), 200, "127.0.0.2 has a bucket of its own");
    assert_http_refused("127.0.0.2's second", get(&two, &server, "/poll", &[]).await, 1).await;
    assert_eq!(server.gateway.hub().len(), 2);
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_an_untrusted_peer() {
    let server = TestServer::with_config(limited(1)).await;
    assert_eq!(get(&server.http, &server, "/poll", &["203.0.113.1"]).await.status(), 200);
    let spoofed = get(&server.http, &server, "/poll", &["203.0.113.2"]).await;
    assert_http_refused("another X-Forwarded-For from the same untrusted peer", spoofed, 1).await;
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_behind_a_trusted_proxy() {
    let trusted: IpBlock = "127.0.0.1".parse().unwrap();
    let server = TestServer::with_config(Config { trusted_proxies: vec![trusted], ..limited(1) }).await;
    let http = &server.http;
    assert_eq!(get(http, &server, "/poll", &["203.0.113.1"]).await.status(), 200);
    assert_eq!(get(http, &server, "/poll", &["203.0.113.2"]).await.status(), 200, "a second client, a second bucket");
    // A stream opening its connection (the event-stream path) is keyed the same way.
    let stream = get(&reqwest::Client::new(), &server, "/sse", &["203.0.113.3"]).await;
    assert_eq!(stream.status(), 200);
    assert_http_refused("203.0.113.3 again", get(&reqwest::Client::new(), &server, "/sse", &["203.0.113.3"]).await, 1).await;
    assert_http_refused("203.0.113.1 again", get(http, &server, "/poll", &["203.0.113.1"]).await, 1).await;
    // The right-most address that is not a trusted proxy counts; what the client put left of
    // it does not.
    assert_http_refused("a claimed address left of the real one", get(http, &server, "/poll", &["198.51.100.7, 203.0.113.2"]).await, 1).await;
    assert_http_refused("a trusted hop right of the client", get(http, &server, "/poll", &["203.0.113.1", "127.0.0.1"]).await, 1).await;
    // Without the header, the proxy's own address is the client.
    assert_eq!(get(http, &server, "/poll", &[]).await.status(), 200);
    assert_eq!(server.gateway.hub().len(), 4);
}
