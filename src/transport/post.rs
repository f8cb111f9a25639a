//! `POST /sse?sid=SID` (and its alias `POST /poll`): events from the client over plain HTTP.
//!
//! The body is one envelope or a JSON array of envelopes, or, as `text/plain`, the text of one
//! `message` event, so that `curl -d` is enough to talk to a session. Envelopes are handled in
//! order before the answer (`202`), so a client that waits for each answer keeps its order.

use std::borrow::Cow;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{AttachQuery, Endpoint, Handler};
use crate::error::Error;
use crate::protocol::{parse_envelopes_with, reads_as_json, Envelope, Envelopes, Limits, Sid};

pub async fn send<H: Handler>(State(gateway): State<Endpoint<H>>, query: Result<AttachQuery, Error>, request: Request) -> Response {
    // The request itself rather than a `HeaderMap` extractor, which clones the headers.
    let (parts, body) = request.into_parts();
    let response = accept(gateway, query, parts.headers, body).await.into_response();
    crate::metrics::post_response(response.status());
    response
}

async fn accept<H: Handler>(
    gateway: Endpoint<H>,
    query: Result<AttachQuery, Error>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let query = query?;
    let sid = query.sid.ok_or_else(|| Error::BadRequest("missing query parameter `sid`".into()))?;
    let sid: Sid = sid.parse().map_err(|_| Error::NoSession)?;
    let session = gateway.hub().admit(&sid).await?;
    let limit = gateway.config().max_body;
    let bytes = to_bytes(body, limit).await.map_err(|err| {
        if is_length_limit(&err) {
            Error::TooLarge(limit)
        } else {
            Error::BadRequest(format!("could not read the request body: {err}"))
        }
    })?;
    let envelopes = parse_body(&headers, &bytes, &gateway.config().limits)?;
    let accepted = envelopes.len();
    crate::metrics::events_in_post(accepted);
    gateway.dispatch_to(&session, envelopes).await?;
    // The usual POST holds one event: its answer is a constant, not a `format!` (some 480
    // instructions per round trip, callgrind).
    let body: Cow<'static, str> = match accepted {
        1 => Cow::Borrowed("{\"accepted\":1}"),
        n => Cow::Owned(format!("{{\"accepted\":{n}}}")),
    };
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Reads the body according to its content type. `curl -d` sends
/// `application/x-www-form-urlencoded`; its body is read as JSON too, so the bare command works.
fn parse_body(headers: &HeaderMap, bytes: &[u8], limits: &Limits) -> Result<Envelopes, Error> {
    let text = || std::str::from_utf8(bytes).map_err(|_| Error::BadRequest("body is not valid UTF-8".into()));
    // JSON first: it is the common case, and is read straight from the body.
    if reads_as_json(headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str)) {
        return parse_json(text()?, limits);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.parse::<mime::Mime>().ok().filter(|m| m.essence_str().eq_ignore_ascii_case("text/plain"));
    let Some(mime) = mime else {
        return Err(Error::UnsupportedMediaType(content_type.to_owned()));
    };
    let charset = mime.get_param(mime::CHARSET).map(|c| c.as_str().to_ascii_lowercase());
    if let Some(charset) = charset.filter(|c| c != "utf-8" && c != "us-ascii") {
        return Err(Error::UnsupportedMediaType(format!("text/plain; charset={charset}")));
    }
    Ok(smallvec::smallvec![Envelope::new("message", Value::String(text()?.to_owned()))])
}

fn parse_json(text: &str, limits: &Limits) -> Result<Envelopes, Error> {
    parse_envelopes_with(text, limits).map_err(|err| Error::BadRequest(err.to_string()))
}

/// `to_bytes` reports an over-long body as an error whose chain holds a `LengthLimitError`,
/// whether the client sent a `Content-Length` or streamed the body chunked.
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
