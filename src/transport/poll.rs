//! `GET /poll`: long-polling, the last rung for paths that hold streamed responses back.
//!
//! Each request attaches to the session like any transport (newest wins, cursors, resume),
//! answers at once with every pending event as a JSON array, or waits up to the poll timeout for
//! at least one and answers `[]` if none came. The client polls again with the last cursor it
//! saw; a poll that continues a poll gets no new `session` hello. A poll cut short because
//! another transport took the session answers `409`, so the client stops polling.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{outgoing, AttachQuery, Endpoint, Handler};
use crate::admission::ClientAddr;
use crate::error::Error;
use crate::hub::{AttachRequest, Attachment, CloseReason, Transport};
use crate::protocol::encode;

/// Most events one poll answer carries; the rest wait for the next poll.
const MAX_PER_POLL: usize = 256;

pub async fn poll<H: Handler>(
    State(gateway): State<Endpoint<H>>,
    client: ClientAddr,
    query: Result<AttachQuery, Error>,
    request: Request,
) -> Result<Response, Error> {
    let query = query?;
    // The request itself rather than `HeaderMap` and `Uri` extractors, which clone them: a
    // poll is a round trip's worth of requests.
    let (headers, uri) = (request.headers(), request.uri());
    // A poll answers within the poll timeout: the hello tells it as `heartbeat`.
    let request = AttachRequest::new(Transport::Polling, query.sid.as_deref(), query.last_event_id.as_deref())
        .heartbeat(Some(gateway.config().poll_timeout))
        .change(query.change(Transport::Polling));
    let mut attachment = gateway.attach(request, client).await?;
    gateway.admit(&attachment, headers, uri.query()).await?;
    let mut frames = Vec::new();
    drain(&mut attachment, &mut frames)?;
    if frames.is_empty() {
        match tokio::time::timeout(gateway.config().poll_timeout, attachment.recv()).await {
            Ok(Ok(event)) => {
                frames.push(encode::envelope(&outgoing(&event, attachment.sid())));
                drain(&mut attachment, &mut frames)?;
            }
            Ok(Err(CloseReason::Superseded)) => return Err(Error::Superseded),
            Ok(Err(CloseReason::Shutdown | CloseReason::SlowConsumer | CloseReason::Unavailable)) | Err(_) => {}
        }
    }
    for frame in &frames {
        crate::metrics::event_out(Transport::Polling, frame.len());
    }
    let body = encode::batch(&frames);
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    Ok(response)
}

/// Moves every ready event into `frames`. Superseded with nothing gathered is a 409; with events
/// gathered, they are still answered (the client drops any it sees again by cursor).
fn drain(attachment: &mut Attachment, frames: &mut Vec<String>) -> Result<(), Error> {
    while frames.len() < MAX_PER_POLL {
        match attachment.try_recv() {
            Ok(Some(event)) => frames.push(encode::envelope(&outgoing(&event, attachment.sid()))),
            Ok(None) | Err(CloseReason::Shutdown | CloseReason::SlowConsumer | CloseReason::Unavailable) => break,
            Err(CloseReason::Superseded) if frames.is_empty() => return Err(Error::Superseded),
            Err(CloseReason::Superseded) => break,
        }
    }
    Ok(())
}
