//! The operator page: `GET /admin`, a live view of the gateway for a person (or a wall screen),
//! where `/metrics` is the same for Prometheus.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin` | the page: one HTML document with its script, its style and uPlot inlined, so it works offline and wherever the router is nested |
//! | `GET /admin/stream` | what the page shows, as Server-Sent Events: `history` (the chart points of the last 15 minutes) once, then a `tick` every second |
//! | `GET /admin/cluster` | cluster mode: every live node's report (id, address, age, its figures) and their sums, as the latest tick has them (`{"cluster": null}` on a single node) |
//! | `GET /admin/sessions/{sid}` | one session: its transport (`transport`, the one holding it; `on`, counting a long-poller between polls as on polling), buffer, cursors, rooms and its recent attaches and detaches |
//!
//! Why it is shaped so:
//!
//! * **The same numbers as `/metrics`.** Every figure comes from the registry `/metrics`
//!   renders, read back ([`crate::metrics::samples`]), by one sampling task a second
//!   (`sampler.rs`); the page adds nothing of its own but rates and per-minute differences of
//!   those counters. So the page and a Prometheus scrape agree, and the page costs the same
//!   whether one or ten people watch: each stream copies the tick the task rendered once.
//! * **The gateway watching itself, not a session of it.** The stream is a plain SSE response
//!   of this module: it opens no session, attaches nothing, and counts in no session metric.
//! * **Guarded like the publish API** ([`ApiAccess`]): with `--api-key`, the key, as
//!   `Authorization: Bearer KEY` or as the password of HTTP Basic auth (any user name), so a
//!   browser asks for it and then sends it with the page's own requests (an `EventSource` cannot
//!   set headers); without a key, only on a loopback bind; otherwise `403`.
//! * **No sid leaks.** Nothing the page is sent names a session but the one looked up; rooms
//!   are shown with member counts, never members.
//! * **Each node's numbers, and the cluster's.** In cluster mode each node serves its own page
//!   with its own counters and charts (and says which node it is). Its sampler also writes its
//!   figures once a second into one Redis hash, `sy:admin`, by node id (one key, so the same on
//!   a Redis Cluster), with its address and the time, and reads every node's back: the page
//!   lists the nodes heard from in the last few seconds and shows their sums ("all nodes").
//!   Reports older than a minute are deleted by whichever node reads them, so the hash holds
//!   only about the live nodes. The ages are told by the nodes' clocks, which are taken to agree
//!   within a second or so (NTP). The rooms listed are the cluster's, read from Redis (an index
//!   of room names, `sy:rooms`, kept by every join; up to a thousand rooms looked at).

mod sampler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiAccess};
use crate::error::Error;
use crate::hub::{HistoryKind, Hub, Transport, POLL_GAP};
use crate::protocol::{Cursor, Sid};
use crate::tasks::Tasks;

pub use sampler::{HISTORY, POINT_FIELDS};

/// The page's parts, inlined into one document when it is first served.
const PAGE: &str = include_str!("page/index.html");
const PAGE_SCRIPT: &str = include_str!("page/admin.js");
const PAGE_STYLE: &str = include_str!("page/admin.css");
/// uPlot, vendored from npm (`tests/client/package.json`; copied by `tests/client/vendor.sh`).
const UPLOT_SCRIPT: &str = include_str!("../../static/vendor/uplot/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("../../static/vendor/uplot/uPlot.min.css");

/// The state of the page's routes.
#[derive(Clone)]
struct Admin {
    hub: Hub,
    sampler: Arc<sampler::Sampler>,
    /// The gateway's token: streams end when it is cancelled, so a page never holds the
    /// drain up.
    shutdown: CancellationToken,
}

/// The page's routes, to nest under `/admin` (with `nest_service`, so that `/admin/` is the
/// page too): they show the gateway of `hub` (a gateway's,
/// `gateway.hub().clone()`) to the callers `access` lets in. Starts the sampling task on
/// `tasks` (the gateway's, `gateway.tasks()`), which ends with the gateway.
///
/// ```
/// use switchyard::admin;
/// use switchyard::api::ApiAccess;
/// use switchyard::{Config, Gateway};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gateway = Gateway::builder(Config::default()).build();
/// let access = ApiAccess::new(std::env::var("MY_API_KEY").ok().as_deref(), "127.0.0.1:3000".parse().unwrap());
/// // `nest_service`, not `nest`: then `/admin/` answers as `/admin` does.
/// let app = gateway.router().nest_service("/admin", admin::router(gateway.hub().clone(), access, gateway.tasks()));
/// # drop(app);
/// # }
/// ```
pub fn router(hub: Hub, access: ApiAccess, tasks: &Tasks) -> Router {
    build(hub, access, tasks, None)
}

/// [`router`], for a gateway serving at `addr`: in cluster mode, the address this node's report
/// gives the other nodes' pages (the binary's is the address it is bound to).
pub fn router_at(hub: Hub, access: ApiAccess, tasks: &Tasks, addr: SocketAddr) -> Router {
    build(hub, access, tasks, Some(addr.to_string()))
}

fn build(hub: Hub, access: ApiAccess, tasks: &Tasks, addr: Option<String>) -> Router {
    let sampler = sampler::Sampler::new(hub.clone(), addr);
    tasks.spawn(sampler.clone().run());
    let state = Admin { hub, sampler, shutdown: tasks.shutdown_token().clone() };
    Router::new()
        .route("/", get(page))
        .route("/stream", get(stream))
        .route("/cluster", get(cluster))
        .route("/sessions/{sid}", get(lookup))
        .layer(middleware::from_fn_with_state(access, guard))
        .with_state(state)
}

/// Lets in what [`ApiAccess::check`] lets in, with the key from a bearer header or from Basic
/// auth; a wrong or missing key is asked for with a Basic challenge, which browsers answer
/// with a password dialog.
async fn guard(State(access): State<ApiAccess>, request: Request, next: Next) -> Response {
    let offered = api::bearer(request.headers()).map(str::to_owned).or_else(|| basic_password(request.headers()));
    match access.check(offered.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(Error::Unauthorized) => {
            let mut response = Error::Unauthorized.into_response();
            let challenge = HeaderValue::from_static("Basic realm=\"switchyard admin\", charset=\"UTF-8\"");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// The password of an `Authorization: Basic` header (the user name is ignored).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let encoded = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    credentials.split_once(':').map(|(_user, password)| password.to_owned())
}

/// Headers of everything this module answers: never cached, never framed, no referrer.
fn private(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `GET /admin`.
async fn page() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        PAGE.replace("/*{{uplot.css}}*/", UPLOT_STYLE)
            .replace("/*{{admin.css}}*/", PAGE_STYLE)
            .replace("/*{{uplot.js}}*/", UPLOT_SCRIPT)
            .replace("/*{{admin.js}}*/", PAGE_SCRIPT)
    });
    private(Html(document.as_str()).into_response())
}

/// `GET /admin/stream`: `history` once, then the latest `tick` and every one after it, until
/// the page goes or the gateway shuts down.
async fn stream(State(admin): State<Admin>) -> Response {
    let history = admin.sampler.history();
    let mut ticks = admin.sampler.subscribe();
    let shutdown = admin.shutdown;
    let events = async_stream::stream! {
        yield Ok::<_, Infallible>(Event::default().event("history").data(history));
        loop {
            let tick = ticks.borrow_and_update().clone();
            if let Some(tick) = tick {
                yield Ok(Event::default().event("tick").data(&*tick));
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = ticks.changed() => if changed.is_err() { break },
            }
        }
    };
    let mut response = private(Sse::new(events).into_response());
    response.headers_mut().insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    response
}

/// `GET /admin/cluster`: the cluster part of the latest tick, with this node's id.
async fn cluster(State(admin): State<Admin>) -> Response {
    let tick = admin.sampler.subscribe().borrow().clone();
    let tick: Value = tick.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    let node = admin.hub.cluster().map(|c| c.node().to_string());
    private(Json(json!({ "node": node, "t": tick["t"], "cluster": tick["cluster"] })).into_response())
}

/// `GET /admin/sessions/{sid}`. A session nobody knows is a `404` of this page's own (not the
/// gateway's error, so that an operator's typo is not counted among the clients' errors).
async fn lookup(State(admin): State<Admin>, Path(sid): Path<String>) -> Response {
    let not_found = || private((StatusCode::NOT_FOUND, Json(json!({ "error": "unknown or expired session" }))).into_response());
    let Ok(sid) = sid.trim().parse::<Sid>() else { return not_found() };
    let (info, history) = (admin.hub.info(&sid).await, admin.hub.history(&sid).await);
    if info.is_none() && history.is_none() {
        return not_found();
    }
    // The transport it is on, as the page counts sessions: a long-polling session between two
    // polls holds no transport, and is still on polling.
    let detached_for = info.as_ref().and_then(|i| i.detached_for);
    let last = history.as_ref().and_then(|h| h.entries.last());
    let on = info.as_ref().and_then(|i| i.transport).or_else(|| {
        last.filter(|m| m.kind == HistoryKind::Detached && m.transport == Transport::Polling && detached_for.is_some_and(|d| d < POLL_GAP))
            .map(|m| m.transport)
    });
    let moments: Vec<Value> = history
        .as_ref()
        .map(|h| {
            h.entries
                .iter()
                .map(|e| {
                    json!({
                        "ago_ms": e.ago.as_millis() as u64,
                        "what": e.kind.as_str(),
                        "transport": e.transport.as_str(),
                        "from": e.from.map(Transport::as_str),
                        "detail": e.detail,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let body = json!({
        "sid": sid.as_str(),
        "short": sid.short(),
        "node": admin.hub.cluster().map(|c| c.node().to_string()),
        "transport": info.as_ref().and_then(|i| i.transport).map(Transport::as_str),
        "on": on.map(Transport::as_str),
        "attached_since": info.as_ref().and_then(|i| i.attached_since).map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "detached_for_ms": detached_for.map(|d| d.as_millis() as u64),
        "buffered": info.as_ref().map(|i| i.buffered),
        "last_cursor": info.as_ref().map(|i| Cursor::event(sid.clone(), i.last_seq).to_string()),
        "delivered_cursor": history.as_ref().map(|h| Cursor::event(sid.clone(), h.delivered).to_string()),
        "rooms": info.as_ref().map(|i| i.rooms.clone()).unwrap_or_default(),
        "history": moments,
    });
    private(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_password_is_the_key_whatever_the_user() {
        let mut headers = HeaderMap::new();
        let basic = |credentials: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        headers.insert(header::AUTHORIZATION, basic("ops:s3cret:with:colons").parse().unwrap());
        assert_eq!(basic_password(&headers).as_deref(), Some("s3cret:with:colons"));
        headers.insert(header::AUTHORIZATION, basic(":k").parse().unwrap());
        assert_eq!(basic_password(&headers).as_deref(), Some("k"));
        headers.insert(header::AUTHORIZATION, basic("no colon").parse().unwrap());
        assert_eq!(basic_password(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic not base64!".parse().unwrap());
        assert_eq!(basic_password(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert_eq!(basic_password(&headers), None);
    }

    #[test]
    fn the_page_inlines_its_parts() {
        for placeholder in ["/*{{uplot.css}}*/", "/*{{admin.css}}*/", "/*{{uplot.js}}*/", "/*{{admin.js}}*/"] {
            assert!(PAGE.contains(placeholder), "the page template has {placeholder}");
        }
        for part in [PAGE_SCRIPT, UPLOT_SCRIPT] {
            assert!(!part.contains("</script"), "an inlined script must not end its element early");
        }
    }
}
