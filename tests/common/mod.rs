//! Test support: a real switchyard on 127.0.0.1:0, and real clients for each transport.
//!
//! Every wait is bounded by [`WAIT`] and says what it waited for when it fails.
#![allow(dead_code)]

pub mod tls;
pub mod engineio;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::Value;
use switchyard::api::{self, ApiAccess};
use switchyard::{admin, app, server, Config, Gateway, Sid, Transport};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Reads and discards what `tcp` still gets until the server closes it (end of file or a reset),
/// failing after [`WAIT`] as [`within`] does.
pub async fn until_closed(what: &str, tcp: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt as _;
    within(what, async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Reads one response head (up to its blank line) from `tcp`, byte by byte so that nothing after
/// it is consumed; empty if the connection ends first.
pub async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::io::AsyncReadExt::read_u8(tcp).await {
            Ok(byte) => head.push(byte),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Waits until `condition` holds, asking again every 10 ms, for at most [`WAIT`]; panics naming
/// `what` if it never does. For states nothing announces and a test can only ask about (which
/// transport holds a session, whether a sid still answers): the wait ends as soon as the state
/// is there, however fast or slow the machine.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A server event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub event: String,
    pub data: Value,
    pub id: String,
}

/// A running server: the binary's app (seed handlers plus an `echo` handler that answers with
/// the data it got, so tests can tell replies apart).
pub struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    /// A client for this server: over HTTPS (HTTP/2 preferred, trusting the test CA) for a
    /// server started with [`TestServer::https`].
    pub http: reqwest::Client,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config(Config::default()).await
    }

    /// Serves `config`, with one change: the per-address limit on new sessions is off unless
    /// the test set a limit of its own (any other than the default), since every test client
    /// comes from one loopback address and some open hundreds of sessions.
    pub async fn with_config(config: Config) -> TestServer {
        TestServer::serve(config, None, None).await
    }

    /// [`TestServer::with_config`] over HTTPS (`server::run_tls`) with `ca`'s certificate.
    pub async fn https(config: Config, ca: &tls::TestCa) -> TestServer {
        TestServer::serve(config, None, Some(ca)).await
    }

    /// [`TestServer::with_config`], serving the files of `static_dir` instead of `static/`
    /// (a page under test that is not the demo page).
    pub async fn with_static(config: Config, static_dir: &Path) -> TestServer {
        TestServer::serve_from(config, None, None, static_dir).await
    }

    /// [`TestServer::with_config`], with the operator page under `/admin` and the publish API
    /// under `/api`, both guarded by `access`, as the binary serves them.
    pub async fn with_admin(config: Config, access: ApiAccess) -> TestServer {
        TestServer::serve(config, Some(access), None).await
    }

    async fn serve(config: Config, admin: Option<ApiAccess>, ca: Option<&tls::TestCa>) -> TestServer {
        TestServer::serve_from(config, admin, ca, &Path::new(env!("CARGO_MANIFEST_DIR")).join("static")).await
    }

    async fn serve_from(mut config: Config, admin: Option<ApiAccess>, ca: Option<&tls::TestCa>, static_dir: &Path) -> TestServer {
        if config.max_new_sessions_per_ip == Config::default().max_new_sessions_per_ip {
            config.max_new_sessions_per_ip = 0;
        }
        let gateway = app::seed(Gateway::builder(config))
            .on("echo", |ctx, data| async move {
                ctx.emit("echo", data).await.expect("session is live");
            })
            .on("whoami", |ctx, _| async move {
                let subject = ctx.subject().map(str::to_owned);
                ctx.emit("whoami", subject).await.expect("session is live");
            })
            // Acks: `sum` answers the sum of a list of integers, or fails; `ask` asks the
            // client `question` (data `{"q", "timeout_ms"}`) in a task of its own, and tells it
            // what came of it in `told`: `{"answer"}` or `{"error"}`.
            .on("sum", |_ctx, data| async move {
                let terms: Vec<i64> = serde_json::from_value(data).map_err(|err| format!("not a list of integers: {err}"))?;
                Ok::<Value, String>(Value::from(terms.iter().sum::<i64>()))
            })
            // `confirm` asks the client `question` with its data and waits for the answer in the
            // handler itself: the answer (or why none came) answers the client's request.
            .on("confirm", |ctx, data| async move {
                ctx.emit_with_ack("question", data, Duration::from_secs(5)).await.map_err(|err| err.to_string())
            })
            .on("ask", |ctx, data| async move {
                let timeout = Duration::from_millis(data["timeout_ms"].as_u64().unwrap_or(5000));
                tokio::spawn(async move {
                    let told = match ctx.emit_with_ack("question", &data["q"], timeout).await {
                        Ok(answer) => serde_json::json!({ "answer": answer }),
                        Err(err) => serde_json::json!({ "error": err.to_string() }),
                    };
                    let _ = ctx.emit("told", told).await;
                });
            })
            // As the binary does: the router below is the gateway's at the root.
            .socket_io_at_root()
            .build();
        let mut router = server::app(&gateway, static_dir);
        if let Some(access) = admin {
            router = router
                .nest("/api", api::router(gateway.hub().clone(), access.clone()))
                .nest_service("/admin", admin::router(gateway.hub().clone(), access, gateway.tasks()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = gateway.clone();
        let Some(ca) = ca else {
            tokio::spawn(async move {
                server::run(listener, router, served, std::future::pending()).await.unwrap();
            });
            return TestServer { addr, gateway, http: reqwest::Client::new(), scheme: "http" };
        };
        let tls = ca.server_config();
        tokio::spawn(async move {
            server::run_tls(listener, router, served, tls, std::future::pending()).await.unwrap();
        });
        TestServer { addr, gateway, http: ca.reqwest(true, addr), scheme: "https" }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.scheme == "https" { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    pub async fn sse(&self, path: &str) -> SseClient {
        self.sse_with(path, None).await
    }

    pub async fn sse_with(&self, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = self.http.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = within("SSE response headers", request.send()).await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        SseClient::from_response(response)
    }

    pub async fn ws(&self, path: &str) -> WsClient {
        let (socket, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(self.ws_url(path)))
            .await
            .expect("WebSocket handshake");
        WsClient { socket }
    }

    /// POSTs a JSON body to a session; returns the status and the JSON answer.
    pub async fn post_json(&self, sid: &str, body: &str) -> (u16, Value) {
        self.post(sid, "application/json", body.to_owned()).await
    }

    pub async fn post(&self, sid: &str, content_type: &str, body: String) -> (u16, Value) {
        let response = within(
            "POST answer",
            self.http.post(self.url(&format!("/sse?sid={sid}"))).header("content-type", content_type).body(body).send(),
        )
        .await
        .unwrap();
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// One long-poll; returns the status and the envelopes as they came (every field).
    pub async fn poll_envelopes(&self, query: &str) -> (u16, Vec<Value>) {
        let response = within("poll answer", self.http.get(self.url(&format!("/poll{query}"))).send()).await.unwrap();
        let status = response.status().as_u16();
        match response.json().await.unwrap() {
            Value::Array(items) => (status, items),
            _ => (status, Vec::new()),
        }
    }

    /// A `GET /sse` read frame by frame, every field kept (see [`SseFrames`]).
    pub async fn sse_frames(&self, path: &str, last_event_id: Option<&str>) -> SseFrames {
        let mut request = self.http.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = within("SSE response headers", request.send()).await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        SseFrames { body: Box::pin(response.bytes_stream()), buffer: String::new() }
    }

    /// One long-poll; returns the status and the events.
    pub async fn poll(&self, query: &str) -> (u16, Vec<Received>) {
        let response = within("poll answer", self.http.get(self.url(&format!("/poll{query}"))).send()).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let events = match body {
            Value::Array(items) => items.into_iter().map(received_from_envelope).collect(),
            _ => Vec::new(),
        };
        (status, events)
    }
}

impl TestServer {
    /// Waits until the session is held by `transport` (`None`: by no transport).
    pub async fn wait_for_transport(&self, sid: &Sid, transport: Option<Transport>) {
        let what = match transport {
            Some(t) => format!("{} to hold the session", t.as_str()),
            None => "the session to be detached".to_owned(),
        };
        wait_until(&what, || async { self.gateway.hub().info(sid).await.and_then(|i| i.transport) == transport }).await;
    }

    /// A bare `GET /sse` over a plain TCP socket (with a receive buffer of `recv_buffer` bytes if
    /// given), read only up to the hello: for clients that then stop reading, or vanish.
    pub async fn raw_sse(&self, recv_buffer: Option<u32>) -> (TcpStream, Sid) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(self.addr).await.unwrap();
        tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let sid = within("a raw stream's hello", async {
            let mut buf = [0u8; 1024];
            loop {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended before its hello");
                head.extend_from_slice(&buf[..n]);
                if let Some(sid) = sid_in(&head) {
                    return sid;
                }
            }
        })
        .await;
        (tcp, sid)
    }
}

/// The sid of the first `"sid":"…"` in raw bytes read off a stream (the hello's), once all of it
/// has arrived.
pub fn sid_in(buf: &[u8]) -> Option<Sid> {
    let text = String::from_utf8_lossy(buf);
    let at = text.find("\"sid\":\"")? + "\"sid\":\"".len();
    let sid = text.get(at..at + switchyard::protocol::SID_LEN)?;
    Some(sid.parse().expect("a sid in the hello"))
}

pub fn received_from_envelope(v: Value) -> Received {
    Received {
        event: v["event"].as_str().expect("event name").to_owned(),
        data: v["data"].clone(),
        id: v["id"].as_str().expect("event id").to_owned(),
    }
}


/// An SSE client parsing the stream with a spec-following EventSource parser.
pub struct SseClient {
    pub headers: reqwest::header::HeaderMap,
    events: Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>> + Send>>,
}

impl SseClient {
    /// Reads the events of a `GET /sse` answer (whatever server or proxy sent it).
    pub fn from_response(response: reqwest::Response) -> SseClient {
        SseClient { headers: response.headers().clone(), events: Box::pin(response.bytes_stream().eventsource()) }
    }

    pub async fn next(&mut self) -> Received {
        self.try_next().await.expect("SSE stream ended")
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn try_next(&mut self) -> Option<Received> {
        let event = within("an SSE event", self.events.next()).await?;
        let event = event.expect("SSE parse");
        Some(Received { event: event.event, data: serde_json::from_str(&event.data).expect("data is JSON"), id: event.id })
    }

    /// The next event, or `None` when the stream ended or was cut (its server was killed, say):
    /// for tests where either may happen.
    pub async fn next_unless_cut(&mut self) -> Option<Received> {
        let event = within("an SSE event or the stream's end", self.events.next()).await?.ok()?;
        Some(Received { event: event.event, data: serde_json::from_str(&event.data).expect("data is JSON"), id: event.id })
    }

    /// The session hello, checked; returns the sid.
    pub async fn hello(&mut self) -> String {
        hello_sid(self.next().await, "sse")
    }

    /// Waits until the server ends the stream, failing if an event arrives first.
    pub async fn expect_end(&mut self) {
        if let Some(event) = self.try_next().await {
            panic!("expected the stream to end, got {event:?}");
        }
    }
}

pub fn hello_sid(event: Received, transport: &str) -> String {
    assert_eq!(event.event, "session", "first event must be the session hello: {event:?}");
    assert_eq!(event.data["transport"], transport);
    event.data["sid"].as_str().expect("sid in hello").to_owned()
}

/// An SSE stream read with every field of each event kept, `ack` and `ack-error` included,
/// which readers following the EventSource spec drop (as they must drop fields they do not
/// know). Lines are split and fields read as the spec says (`field: value`, one optional space
/// after the colon, `data` lines joined with LF, comments skipped).
pub struct SseFrames {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseFrames {
    /// The next event as the JSON envelope the other transports send: `event`, `id`, `data`
    /// (`error` for an `ack-error` frame) and `ack` when the frame had one.
    pub async fn next_envelope(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut envelope = serde_json::Map::new();
                let (mut data, mut error) = (Vec::new(), false);
                for line in frame.lines().filter(|line| !line.is_empty() && !line.starts_with(':')) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "data" => data.push(value.to_owned()),
                        "event" | "id" => {
                            envelope.insert(field.to_owned(), Value::String(value.to_owned()));
                        }
                        "ack" | "ack-error" => {
                            error = field == "ack-error";
                            envelope.insert("ack".to_owned(), Value::from(value.parse::<u64>().expect("an ack number")));
                        }
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data.join("\n")).expect("SSE data is JSON");
                envelope.insert(if error { "error" } else { "data" }.to_owned(), data);
                return Value::Object(envelope);
            }
            let chunk = within("an SSE frame", self.body.next()).await.expect("SSE stream ended").expect("SSE read");
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }
}

/// A WebSocket client (tokio-tungstenite), over plain TCP unless a test hands it another
/// stream (TLS, an HTTP/2 stream).
pub struct WsClient<S = MaybeTlsStream<TcpStream>> {
    pub socket: WebSocketStream<S>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsClient<S> {
    pub async fn send(&mut self, text: &str) {
        within("WebSocket send", self.socket.send(Message::text(text))).await.unwrap();
    }

    pub async fn next(&mut self) -> Received {
        loop {
            let message = within("a WebSocket frame", self.socket.next()).await.expect("socket open").expect("frame");
            match message {
                Message::Text(text) => return received_from_envelope(serde_json::from_str(text.as_str()).expect("JSON frame")),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn hello(&mut self) -> String {
        hello_sid(self.next().await, "websocket")
    }

    /// The next envelope as it came (every field).
    pub async fn next_envelope(&mut self) -> Value {
        loop {
            let message = within("a WebSocket frame", self.socket.next()).await.expect("socket open").expect("frame");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (CloseCode, String) {
        loop {
            match within("a close frame", self.socket.next()).await {
                Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// An HS256 JWT for `sub`, valid for ten minutes, signed with `secret` (`--auth-secret`).
pub fn jwt(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The sequence number in an event cursor `SID.N`.
pub fn seq(id: &str) -> u64 {
    id.rsplit_once('.').unwrap().1.trim_end_matches('~').parse().unwrap()
}

/// The real `switchyard` binary, killed (by its pid) when the test ends, however it ends; with
/// the lines of its log so far.
pub struct Binary(pub std::process::Child, pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free loopback port with `args` (its open-file limit lowered to
/// `fd_limit` through the shell's `ulimit` if given); returns it and the address it logged.
pub fn start_binary<S: AsRef<std::ffi::OsStr>>(args: &[S], fd_limit: Option<u32>) -> (Binary, String) {
    use std::process::Command;
    let mut command = match fd_limit {
        Some(limit) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_switchyard")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_switchyard")),
    };
    command.args(["--bind", "127.0.0.1:0"]).args(args);
    start_logged(command)
}

/// Starts `command` (the binary, directly or through a shell) with `RUST_LOG=info`, echoing its
/// log to the test's stderr; returns it and the address it logged it listens on.
pub fn start_logged(mut command: std::process::Command) -> (Binary, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the switchyard binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let (Some(at), true) = (line.find("addr="), line.contains("listening")) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line[at + 5..].split_whitespace().next().unwrap().to_owned());
                }
            }
            eprintln!("[switchyard] {line}");
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("the binary logs its listening address");
    (Binary(child, log), addr)
}
