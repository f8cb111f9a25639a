//! Who may talk to the gateway from a browser: the `Origin` check and CORS.
//!
//! A browser attaches the page's origin to every WebSocket handshake and cross-origin request.
//! Without a check, any site a user visits could open a WebSocket to the gateway with the
//! user's cookies (cross-site WebSocket hijacking) or POST into a session. So every gateway
//! route refuses, with `403`, a request whose `Origin` is not allowed:
//!
//! * the server's own origin (the `Origin` host equals the `Host` header),
//! * loopback origins (`localhost`, `127.0.0.0/8`, `[::1]`), for development,
//! * the configured `--allowed-origins` (exact `scheme://host[:port]`, or `*` for any).
//!
//! Requests without `Origin` (curl, servers, native apps) are not browsers and pass. Allowed
//! cross-origin requests get CORS headers (tower-http's `CorsLayer`), including preflights;
//! only they go through it, since CORS work on every same-origin request measurably slowed the
//! POST path (about a fifth of its instructions).

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::Either;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins configured beyond the server's own and loopback ones.
///
/// Cloned for every request (the middleware's state), so it is two reference counts and a flag:
/// a `CorsLayer` held by value is a dozen fields with vectors and boxed closures, and cloning and
/// dropping one per request cost about 1,900 instructions of each POST's round trip.
#[derive(Clone)]
pub struct OriginPolicy {
    allowed: Arc<[String]>,
    any: bool,
    /// CORS for the cross-origin requests the policy allows (so it may mirror their origin).
    cors: Arc<CorsLayer>,
}

/// What the policy makes of a request's `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The page's own origin: no CORS needed.
    SameOrigin,
    /// Another origin the policy allows: answered with CORS headers.
    CrossOrigin,
    /// An origin the policy does not allow (`null` and non-HTTP schemes included): `403`.
    Refused,
}

impl OriginPolicy {
    /// The policy allowing `allowed` (exact `scheme://host[:port]` origins, or `*` for any)
    /// besides the server's own origin and loopback ones.
    pub fn new(allowed: &[String]) -> OriginPolicy {
        let allowed: Vec<String> =
            allowed.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).filter(|o| !o.is_empty()).collect();
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::mirror_request())
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::HeaderName::from_static("last-event-id")])
            .max_age(std::time::Duration::from_secs(600));
        OriginPolicy { any: allowed.iter().any(|o| o == "*"), allowed: allowed.into(), cors: Arc::new(cors) }
    }

    /// What the policy makes of `request`: `None` for a request without `Origin` (not a
    /// browser's), which passes.
    pub fn judge_request<B>(&self, request: &axum::http::Request<B>) -> Option<Verdict> {
        let origin = request.headers().get(header::ORIGIN)?;
        let Ok(origin) = origin.to_str() else { return Some(Verdict::Refused) };
        // HTTP/2 names the host in the `:authority` pseudo-header (the URI's authority), not `Host`.
        let host = match request.headers().get(header::HOST) {
            Some(host) => host.to_str().ok(),
            None => request.uri().authority().map(axum::http::uri::Authority::as_str),
        };
        Some(self.judge(origin, host))
    }

    /// Whether a request from `origin`, addressed to `host`, may proceed.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        self.judge(origin, host) != Verdict::Refused
    }

    /// What to do with a request from `origin`, addressed to `host`.
    pub fn judge(&self, origin: &str, host: Option<&str>) -> Verdict {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if authority.is_some_and(|a| host.is_some_and(|host| host.eq_ignore_ascii_case(a))) {
            return Verdict::SameOrigin;
        }
        if self.any || self.allowed.contains(&origin) || authority.is_some_and(is_loopback) {
            Verdict::CrossOrigin
        } else {
            // Includes "null" (sandboxed frames, file: pages) and other schemes.
            Verdict::Refused
        }
    }
}

/// `host[:port]` of an origin is a loopback address or `localhost`.
fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The layer that puts [`OriginGuard`] in front of the routes.
#[derive(Clone)]
pub struct OriginLayer {
    policy: OriginPolicy,
}

impl OriginLayer {
    /// The layer checking requests against `policy`.
    pub fn new(policy: OriginPolicy) -> OriginLayer {
        OriginLayer { policy }
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginGuard<S>;

    fn layer(&self, inner: S) -> OriginGuard<S> {
        OriginGuard { inner, policy: self.policy.clone() }
    }
}

/// Refuses requests whose `Origin` the policy does not allow, and runs allowed cross-origin
/// ones through CORS.
///
/// A tower service rather than `axum::middleware::from_fn`: a request without `Origin`, or from
/// the page's own origin, is passed to the routes in the same call, its future returned as it
/// is. `from_fn` boxes the routes' service and the middleware's future for every request, which
/// cost about 6,000 instructions of each POST's round trip (16 % of it; measured by leaving the
/// layer out in a scratch build).
#[derive(Clone)]
pub struct OriginGuard<S> {
    inner: S,
    policy: OriginPolicy,
}

type Boxed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for OriginGuard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Boxed>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.policy.judge_request(&request) {
            None | Some(Verdict::SameOrigin) => Either::Left(self.inner.call(request)),
            Some(Verdict::CrossOrigin) => {
                // The service that was made ready answers this request; a clone waits for the next.
                let ready = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, ready);
                let cors = self.policy.cors.layer(inner);
                Either::Right(Box::pin(async move {
                    match cors.oneshot(request).await {
                        Ok(response) => Ok(response.map(axum::body::Body::new)),
                        Err(never) => match never {},
                    }
                }))
            }
            Some(Verdict::Refused) => {
                let shown = request.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("<not text>");
                tracing::info!(origin = shown, path = request.uri().path(), "refused a request from a foreign origin");
                let body = json!({"error": format!("origin {shown} is not allowed to use this gateway")});
                let response = (StatusCode::FORBIDDEN, Json(body)).into_response();
                Either::Right(Box::pin(std::future::ready(Ok(response))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_loopback_and_configured_origins_pass_others_do_not() {
        let policy = OriginPolicy::new(&["https://app.example.com".to_owned()]);
        let host = Some("gateway.example.com:8080");
        assert!(policy.allows("http://gateway.example.com:8080", host));
        assert!(policy.allows("https://app.example.com", host));
        assert!(policy.allows("https://APP.example.com/", host));
        for loopback in ["http://localhost:3000", "http://127.0.0.1", "http://127.1.2.3:9", "http://[::1]:3000"] {
            assert!(policy.allows(loopback, host), "{loopback}");
        }
        for foreign in ["https://evil.example", "null", "http://gateway.example.com:9999", "http://localhost.evil.example",
                        "http://127.0.0.1.evil.example", "file://", "https://app.example.com.evil"] {
            assert!(!policy.allows(foreign, host), "{foreign}");
        }
        assert!(OriginPolicy::new(&["*".to_owned()]).allows("https://evil.example", host));
    }
}
