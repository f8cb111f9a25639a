//! The operator page (issue 18) over HTTP: its guard (the publish API's, in the real binary on
//! a non-loopback bind too), its stream (a tick a second from the registry `/metrics` renders,
//! no session of its own), the transport changes clients report, the sid lookup and its
//! history, and the vendored chart library. The page itself, in Chromium under load, is
//! `tests/browser_admin.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{start_logged, wait_until, within, SseClient, TestServer};
use serde_json::{json, Value};
use switchyard::api::ApiAccess;
use switchyard::metrics::{parse, Sample};
use switchyard::{Config, Sid};

/// The metrics registry is the process's: tests that count run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn loopback() -> ApiAccess {
    ApiAccess::new(None, "127.0.0.1:3000".parse().unwrap())
}

/// `/metrics` of `server`, parsed.
async fn metrics(server: &TestServer) -> Vec<Sample> {
    let text = within("GET /metrics", server.http.get(server.url("/metrics")).send()).await.unwrap().text().await.unwrap();
    parse(&text)
}

/// The value of one series (0 when it has not been recorded yet).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

async fn open_stream(server: &TestServer) -> SseClient {
    let response = within("GET /admin/stream", server.http.get(server.url("/admin/stream")).send()).await.unwrap();
    assert_eq!(response.status(), 200);
    SseClient::from_response(response)
}

/// The next `tick` of the page's stream.
async fn tick(stream: &mut SseClient) -> Value {
    loop {
        let event = stream.next().await;
        if event.event == "tick" {
            return event.data;
        }
    }
}

#[tokio::test]
async fn the_guard_is_the_publish_apis_bearer_or_basic_key() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let basic = |user: &str, key: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}")))
    };
    // Not loopback, no key: refused, like the API.
    let closed = TestServer::with_admin(Config::default(), ApiAccess::new(None, "0.0.0.0:3000".parse().unwrap())).await;
    for path in ["/admin", "/admin/stream", "/admin/sessions/f8tQsHY6kkg4J-FuzZPBsw", "/api/rooms/lobby/members"] {
        let response = closed.http.get(closed.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("--api-key"), "{path}: {body}");
    }

    // A key: asked for with a Basic challenge (browsers show a password dialog), given as a
    // bearer key or as the Basic password of any user.
    let keyed = TestServer::with_admin(Config::default(), ApiAccess::new(Some("s3cret"), "0.0.0.0:3000".parse().unwrap())).await;
    for (authorization, status) in [
        (None, 401),
        (Some("Bearer wrong".to_owned()), 401),
        (Some(basic("ops", "wrong")), 401),
        (Some(basic("s3cret", "")), 401),
        (Some("Bearer s3cret".to_owned()), 200),
        (Some(basic("ops", "s3cret")), 200),
        (Some(basic("", "s3cret")), 200),
    ] {
        let mut request = keyed.http.get(keyed.url("/admin"));
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{authorization:?}");
        if status == 401 {
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Basic realm=\"switchyard admin\""), "{challenge}");
        } else {
            assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
            assert_eq!(response.headers()["cache-control"], "no-store");
            let page = response.text().await.unwrap();
            assert!(page.contains("uPlot") && page.contains("/stream"), "the page inlines uPlot and its script");
            assert!(!page.contains("/*{{"), "every part is inlined");
        }
    }
    for path in ["/admin/stream", "/admin/sessions/f8tQsHY6kkg4J-FuzZPBsw"] {
        let refused = keyed.http.get(keyed.url(path)).header("authorization", basic("ops", "nope")).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
    }
    let stream = keyed.http.get(keyed.url("/admin/stream")).header("authorization", basic("ops", "s3cret")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    // Loopback without a key: open, to local processes only.
    let local = TestServer::with_admin(Config::default(), loopback()).await;
    assert_eq!(local.http.get(local.url("/admin")).send().await.unwrap().status(), 200);
}

/// The real binary, bound to every interface: without a key the page is refused (403), with
/// `SWITCHYARD_API_KEY` a wrong key is 401 and the right one 200.
#[tokio::test]
async fn the_binary_on_a_non_loopback_bind_wants_the_key() {
    let start = |key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command.args(["--bind", "0.0.0.0:0"]).env_remove("SWITCHYARD_API_KEY");
        if let Some(key) = key {
            command.env("SWITCHYARD_API_KEY", key);
        }
        let (binary, addr) = start_logged(command);
        let port = addr.rsplit_once(':').unwrap().1.to_owned();
        (binary, format!("http://127.0.0.1:{port}"))
    };
    let http = reqwest::Client::new();
    let get = |url: String, key: Option<&'static str>| {
        let mut request = http.get(url);
        if let Some(key) = key {
            request = request.basic_auth("ops", Some(key));
        }
        async move { within("an answer", request.send()).await.unwrap().status().as_u16() }
    };

    let (_open, base) = start(None);
    assert_eq!(get(format!("{base}/admin"), None).await, 403);
    assert_eq!(get(format!("{base}/admin/stream"), Some("anything")).await, 403);
    assert_eq!(get(format!("{base}/healthz"), None).await, 200, "the gateway itself serves");

    assert_eq!(get(format!("{base}/admin/"), None).await, 403, "with its trailing slash too");
    assert_eq!(get(format!("{base}/admin/cluster"), None).await, 403);

    let (_keyed, base) = start(Some("change-me"));
    assert_eq!(get(format!("{base}/admin"), None).await, 401);
    assert_eq!(get(format!("{base}/admin/"), None).await, 401);
    assert_eq!(get(format!("{base}/admin/cluster"), Some("wrong")).await, 401);
    assert_eq!(get(format!("{base}/admin/"), Some("change-me")).await, 200, "/admin/ is the page too");
    assert_eq!(get(format!("{base}/admin/cluster"), Some("change-me")).await, 200);
    assert_eq!(get(format!("{base}/admin"), Some("wrong")).await, 401);
    assert_eq!(get(format!("{base}/admin"), Some("change-me")).await, 200);
    assert_eq!(get(format!("{base}/admin/stream"), Some("change-me")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_the_history_then_a_tick_a_second_and_opens_no_session() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with_admin(Config::default(), loopback()).await;
    let before = metrics(&server).await;
    let mut stream = open_stream(&server).await;
    assert_eq!(stream.headers["cache-control"], "no-store");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    let history = stream.next().await;
    assert_eq!(history.event, "history");
    let fields: Vec<&str> = history.data["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(fields, switchyard::admin::POINT_FIELDS);
    assert!(history.data["points"].is_array());

    let single: Value = within("GET /admin/cluster", server.http.get(server.url("/admin/cluster")).send()).await.unwrap().json().await.unwrap();
    assert_eq!((&single["node"], &single["cluster"]), (&Value::Null, &Value::Null), "one node: no cluster view: {single}");
    let mut times = Vec::new();
    for _ in 0..4 {
        let tick = tick(&mut stream).await;
        assert_eq!(tick["point"].as_array().unwrap().len(), fields.len(), "{tick}");
        assert_eq!(tick["node"], Value::Null, "not in cluster mode");
        assert!(tick.get("cluster").is_none(), "not in cluster mode: {tick}");
        times.push(tick["t"].as_u64().unwrap());
    }
    // The latest tick at once, then one a second (the first two may be closer).
    for pair in times[1..].windows(2) {
        let apart = pair[1] - pair[0];
        assert!((500..=3000).contains(&apart), "ticks {apart} ms apart: {times:?}");
    }
    // Watching is not a session: nothing attached, nothing counted.
    assert_eq!(server.gateway.hub().len(), 0);
    let after = metrics(&server).await;
    for name in ["switchyard_attaches_total", "switchyard_sessions_created_total", "switchyard_transports_open"] {
        assert_eq!(value(&after, name, &[]), value(&before, name, &[]), "{name}");
    }

    // A second page costs no second sampler: both get the same tick.
    let mut other = open_stream(&server).await;
    assert_eq!(other.next().await.event, "history");
    let (mut a, mut b) = (tick(&mut stream).await, tick(&mut other).await);
    for _ in 0..5 {
        let t = |tick: &Value| tick["t"].as_u64().unwrap();
        if t(&a) < t(&b) {
            a = tick(&mut stream).await;
        } else if t(&b) < t(&a) {
            b = tick(&mut other).await;
        }
    }
    assert_eq!(a, b, "one tick, sent to both");
}

/// What a tick shows, read the way the page reads it, and the same figures from `/metrics`.
fn figures_of_tick(tick: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for t in ["websocket", "sse", "polling", "none"] {
        out.insert(format!("on {t}"), tick["on"][t].as_f64().unwrap());
    }
    out.insert("sessions".into(), tick["sessions"].as_f64().unwrap());
    for change in tick["changes"].as_array().unwrap() {
        let key = format!("change {} {} {}", change["from"].as_str().unwrap(), change["to"].as_str().unwrap(), change["reason"].as_str().unwrap());
        out.insert(key, change["total"].as_f64().unwrap());
    }
    for (kind, field) in [("gap", "gaps"), ("error", "errors"), ("post", "post"), ("detach", "detaches")] {
        for (key, pair) in tick[field].as_object().unwrap() {
            out.insert(format!("{kind} {key}"), pair[0].as_f64().unwrap());
        }
    }
    for key in ["attaches", "resumes", "created", "in", "out", "bytes"] {
        out.insert(format!("total {key}"), tick["totals"][key].as_f64().unwrap());
    }
    out
}

fn figures_of_metrics(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for t in ["websocket", "sse", "polling", "none"] {
        out.insert(format!("on {t}"), value(samples, "switchyard_sessions_by_transport", &[("transport", t)]));
    }
    out.insert("sessions".into(), value(samples, "switchyard_sessions", &[]));
    for s in samples {
        let label = |k: &str| s.label(k).unwrap_or_default().to_owned();
        let key = match s.name.as_str() {
            "switchyard_transport_changes_total" => format!("change {} {} {}", label("from"), label("to"), label("reason")),
            "switchyard_gaps_total" => format!("gap {}", label("reason")),
            "switchyard_errors_total" => format!("error {}", label("kind")),
            "switchyard_post_responses_total" => format!("post {}", label("status")),
            "switchyard_detaches_total" => format!("detach {}", label("reason")),
            _ => continue,
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    for (key, name) in [
        ("attaches", "switchyard_attaches_total"),
        ("resumes", "switchyard_resumes_total"),
        ("created", "switchyard_sessions_created_total"),
        ("in", "switchyard_events_in_total"),
        ("out", "switchyard_events_out_total"),
        ("bytes", "switchyard_bytes_out_total"),
    ] {
        out.insert(format!("total {key}"), value(samples, name, &[]));
    }
    out
}

/// The figures of a tick equal those of `/metrics` read between it and the next tick, when
/// nothing moved in between (the two ticks agree); asked again until they do.
async fn assert_tick_matches_metrics(server: &TestServer, stream: &mut SseClient) -> Value {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut last = None;
    for _ in 0..15 {
        let scraped_at = now();
        let samples = metrics(server).await;
        // The ticks on either side of the scrape (those read before are older ones, queued).
        let mut first = tick(stream).await;
        let mut second = tick(stream).await;
        while second["t"].as_u64().unwrap() <= scraped_at {
            first = second;
            second = tick(stream).await;
        }
        let (shown, scraped) = (figures_of_tick(&first), figures_of_metrics(&samples));
        if shown == figures_of_tick(&second) {
            assert_eq!(shown, scraped, "the page's figures are the /metrics figures");
            return second;
        }
        last = Some((shown, scraped));
    }
    panic!("the figures never held still for a second: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_transport_changes_are_counted_shown_and_kept_in_the_sessions_history() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A short grace, so that the sessions of the other tests here are gone before we count.
    let config = Config { grace: Duration::from_secs(1), poll_timeout: Duration::from_secs(1), ..Config::default() };
    let server = TestServer::with_admin(config, loopback()).await;
    let mut stream = open_stream(&server).await;
    let before = metrics(&server).await;
    let changes = |samples: &[Sample], from: &str, to: &str, reason: &str| {
        value(samples, "switchyard_transport_changes_total", &[("from", from), ("to", to), ("reason", reason)])
    };

    // A client that fell from WebSocket to SSE, one whose SSE attempt was abandoned at once
    // (as behind a proxy that holds streams back), one that came back up to WebSocket with a
    // probe, one that polled after its stream was held back, one with a reason this server
    // does not know, and two naming no change (not counted).
    let started = tokio::time::Instant::now();
    let mut sse = server.sse("/sse?from=websocket&reason=ws_blocked").await;
    let sse_sid: Sid = sse.hello().await.parse().unwrap();
    let mut abandoned = server.sse("/sse?from=websocket&reason=ws_blocked").await;
    let abandoned_sid: Sid = abandoned.hello().await.parse().unwrap();
    drop(abandoned);
    let mut ws = server.ws("/ws?from=sse&reason=probe").await;
    let ws_sid: Sid = ws.hello().await.parse().unwrap();
    let (status, events) = server.poll("?from=websocket&reason=sse_held_back").await;
    assert_eq!(status, 200);
    let poll_sid: Sid = events[0].data["sid"].as_str().unwrap().parse().unwrap();
    let (_, events) = server.poll("?from=sse&reason=a%20new%20client%27s%20reason").await;
    let odd_sid: Sid = events[0].data["sid"].as_str().unwrap().parse().unwrap();
    let _ = server.poll("?from=carrier-pigeon&reason=ws_blocked").await;
    let _ = server.poll("?from=polling&reason=probe").await;

    // The stream that stayed counts once it has held its session for 5 s; the abandoned one
    // never does.
    wait_until("the SSE change counted", || {
        let (server, before) = (&server, &before);
        async move { changes(&metrics(server).await, "websocket", "sse", "ws_blocked") > changes(before, "websocket", "sse", "ws_blocked") }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(5), "counted only after 5 s");
    let after = metrics(&server).await;
    for (from, to, reason) in
        [("websocket", "sse", "ws_blocked"), ("sse", "websocket", "probe"), ("websocket", "polling", "sse_held_back"), ("sse", "polling", "other")]
    {
        assert_eq!(changes(&after, from, to, reason) - changes(&before, from, to, reason), 1.0, "{from} -> {to} ({reason})");
    }
    let reported: f64 = after.iter().filter(|s| s.name == "switchyard_transport_changes_total").map(|s| s.value).sum::<f64>()
        - before.iter().filter(|s| s.name == "switchyard_transport_changes_total").map(|s| s.value).sum::<f64>();
    assert_eq!(reported, 4.0, "a `from` that is no transport, or the transport itself, is no change");

    // The page shows them, as /metrics counts them, with the last minute's share.
    let shown = assert_tick_matches_metrics(&server, &mut stream).await;
    let row = |from: &str, to: &str, reason: &str| {
        shown["changes"].as_array().unwrap().iter().find(|c| c["from"] == from && c["to"] == to && c["reason"] == reason).cloned()
    };
    let held_back = row("websocket", "polling", "sse_held_back").expect("the reason is shown");
    assert!(held_back["minute"].as_f64().unwrap() >= 1.0, "{held_back}");
    assert!(shown["minute"]["fallbacks"].as_f64().unwrap() >= 3.0, "{shown}");
    assert!(shown["minute"]["upgrades"].as_f64().unwrap() >= 1.0, "{shown}");
    // No sid of a session in what the page is sent.
    let text = shown.to_string();
    for sid in [&sse_sid, &abandoned_sid, &ws_sid, &poll_sid, &odd_sid] {
        assert!(!text.contains(sid.as_str()) && !text.contains(sid.short()), "{sid} in a tick");
    }

    // The lookup: the session's transport, cursors, rooms and history.
    server.gateway.hub().join(&sse_sid, "support").await.unwrap();
    server.gateway.hub().emit(&sse_sid, "n", &json!(1)).await.unwrap();
    let lookup = |sid: String| {
        let request = server.http.get(server.url(&format!("/admin/sessions/{sid}")));
        async move {
            let response = within("a lookup", request.send()).await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, found) = lookup(sse_sid.to_string()).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["sid"], sse_sid.as_str());
    assert_eq!(found["transport"], "sse");
    assert_eq!(found["rooms"], json!(["support"]));
    assert_eq!(found["buffered"], 1);
    assert_eq!(found["last_cursor"], format!("{sse_sid}.1"));
    let history = found["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{found}");
    assert_eq!(
        (&history[0]["what"], &history[0]["transport"], &history[0]["from"], &history[0]["detail"]),
        (&json!("created"), &json!("sse"), &json!("websocket"), &json!("ws_blocked"))
    );

    // The SSE client drops and comes back over polling, three polls in a row: one resume in the
    // history (polls continuing polls fold into it), after the detach of the stream.
    drop(sse);
    server.wait_for_transport(&sse_sid, None).await;
    let resume = format!("?sid={sse_sid}&from=sse&reason=sse_failed");
    let (_, events) = server.poll(&resume).await;
    let mut cursor = events.last().unwrap().id.clone();
    for _ in 0..2 {
        let (_, events) = server.poll(&format!("?sid={sse_sid}&last_event_id={cursor}")).await;
        if let Some(last) = events.last() {
            cursor = last.id.clone();
        }
    }
    let (_, found) = lookup(sse_sid.to_string()).await;
    let moments: Vec<(String, String, Option<String>)> = found["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["what"].as_str().unwrap().into(), m["transport"].as_str().unwrap().into(), m["detail"].as_str().map(Into::into)))
        .collect();
    assert_eq!(
        moments,
        [
            ("created".into(), "sse".into(), Some("ws_blocked".into())),
            ("detached".into(), "sse".into(), Some("closed".into())),
            ("resumed".into(), "polling".into(), Some("sse_failed".into())),
            ("detached".into(), "polling".into(), Some("closed".into())),
        ],
        "{found}"
    );
    let agos: Vec<u64> = found["history"].as_array().unwrap().iter().map(|m| m["ago_ms"].as_u64().unwrap()).collect();
    assert!(agos.windows(2).all(|w| w[0] >= w[1]), "oldest first: {agos:?}");

    // Unknown and malformed sids are the page's own 404, not a client error.
    let errors_before = value(&metrics(&server).await, "switchyard_errors_total", &[]);
    for sid in [Sid::random().to_string(), "not-a-sid".to_owned()] {
        let (status, body) = lookup(sid).await;
        assert_eq!((status, body), (404, json!({"error": "unknown or expired session"})));
    }
    assert_eq!(value(&metrics(&server).await, "switchyard_errors_total", &[]), errors_before);
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_by_transport_count_a_polling_session_between_its_polls() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = Config { grace: Duration::from_secs(30), poll_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::with_admin(config, loopback()).await;
    let mut stream = open_stream(&server).await;
    let (_, events) = server.poll("").await;
    let sid = events[0].data["sid"].as_str().unwrap().to_owned();
    let _ws = server.ws("/ws").await;
    // Between polls the session holds no transport, and still counts as on polling.
    let on = |tick: &Value, t: &str| tick["on"][t].as_f64().unwrap();
    within("a tick with the poller and the socket counted", async {
        loop {
            let t = tick(&mut stream).await;
            if on(&t, "polling") >= 1.0 && on(&t, "websocket") >= 1.0 {
                break;
            }
        }
    })
    .await;
    assert_eq!(server.gateway.hub().info(&sid.parse().unwrap()).await.unwrap().transport, None, "between polls");
    // Once the poller stops for good, its session is between transports, then gone.
    wait_until("the stopped poller counted as between transports", || {
        let server = &server;
        async move { value(&metrics(server).await, "switchyard_sessions_by_transport", &[("transport", "none")]) >= 1.0 }
    })
    .await;
}

/// `static/vendor/uplot` is the uPlot the lock file of `tests/client` names, unchanged
/// (`tests/client/vendor.sh` copies it from `npm ci`'s install).
#[test]
fn the_vendored_chart_library_is_the_locked_npm_package() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock: Value = serde_json::from_str(&std::fs::read_to_string(root.join("tests/client/package-lock.json")).unwrap()).unwrap();
    let version = lock["packages"]["node_modules/uplot"]["version"].as_str().expect("uplot in tests/client/package-lock.json");
    let installed = root.join("tests/client/node_modules/uplot");
    assert!(installed.exists(), "{} is missing: run `npm ci --prefix tests/client` (tests/run-all.sh does)", installed.display());
    let package: Value = serde_json::from_str(&std::fs::read_to_string(installed.join("package.json")).unwrap()).unwrap();
    assert_eq!(package["version"], version, "node_modules holds the locked uplot");
    for (vendored, from) in [("uPlot.iife.min.js", "dist/uPlot.iife.min.js"), ("uPlot.min.css", "dist/uPlot.min.css"), ("LICENSE", "LICENSE")] {
        let ours = std::fs::read(root.join("static/vendor/uplot").join(vendored)).unwrap();
        let theirs = std::fs::read(installed.join(from)).unwrap();
        assert!(ours == theirs, "static/vendor/uplot/{vendored} differs from uplot {version}'s {from}: run tests/client/vendor.sh");
    }
    let script = std::fs::read_to_string(root.join("static/vendor/uplot/uPlot.iife.min.js")).unwrap();
    assert!(script.starts_with(&format!("/*! https://github.com/leeoniya/uPlot (v{version}) */")));
}
