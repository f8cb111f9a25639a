//! `GET /sse`: the session's events as a Server-Sent Events stream.
//!
//! Each event is written as `id: CURSOR`, `event: NAME`, `data: JSON` and a blank line, the
//! format a browser `EventSource` reads natively. A browser that lost the stream reconnects by
//! itself with `Last-Event-ID`, and since cursors name their session, that header alone resumes
//! the right session with nothing lost.
//!
//! The response is built for hostile paths: `Cache-Control: no-cache, no-transform` and
//! `X-Accel-Buffering: no` ask proxies not to hold it back, it is never compressed, the
//! `session` hello goes out at once so browsers fire `open` and proxies start forwarding, and a
//! comment line every keep-alive interval keeps idle proxies from cutting it and finds dead
//! connections (the write fails, the stream is dropped, the session is detached).

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::{AttachQuery, Endpoint, Handler};
use crate::admission::ClientAddr;
use crate::error::Error;
use crate::hub::{AttachRequest, Transport};
use crate::metrics;

pub async fn stream<H: Handler>(
    State(gateway): State<Endpoint<H>>,
    client: ClientAddr,
    query: Result<Query<AttachQuery>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Error> {
    let Query(query) = query?;
    // A browser's own reconnect carries the newest cursor in the header; the URL may still hold
    // the one the page started from.
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or(query.last_event_id);
    // The keep-alive is the longest the stream stays silent: the hello tells it as `heartbeat`.
    let request = AttachRequest::new(Transport::Sse, query.sid.as_deref(), cursor.as_deref())
        .heartbeat(Some(gateway.config().keepalive));
    let mut attachment = gateway.attach(request, client).await?;
    gateway.admit(&attachment, &headers, uri.query()).await?;
    let sid = attachment.sid().clone();
    let events = async_stream::stream! {
        while let Ok(event) = attachment.recv().await {
            metrics::event_out(Transport::Sse, event.data().len());
            yield Ok::<_, Infallible>(
                SseEvent::default()
                    .id(event.cursor(&sid).to_string())
                    .event(event.name())
                    .data(event.data()),
            );
        }
    };
    let keep_alive = KeepAlive::new().interval(gateway.config().keepalive).text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
