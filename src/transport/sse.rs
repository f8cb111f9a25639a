//! `GET /sse`: the session's events as a Server-Sent Events stream.
//!
//! Each event is written as `id: CURSOR`, `event: NAME`, `data: JSON` and a blank line
//! ([`encode::sse_event`]), the format a browser `EventSource` reads natively. A browser that
//! lost the stream reconnects by itself with `Last-Event-ID`, and since cursors name their
//! session, that header alone resumes the right session with nothing lost.
//!
//! The response is built for hostile paths: `Cache-Control: no-cache, no-transform` and
//! `X-Accel-Buffering: no` ask proxies not to hold it back, it is never compressed, the
//! `session` hello goes out at once so browsers fire `open` and proxies start forwarding, and a
//! comment line every keep-alive interval keeps idle proxies from cutting it and finds dead
//! connections (the write fails, the stream is dropped, the session is detached).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::time::Instant;

use super::{outgoing, AttachQuery, Endpoint, Handler};
use crate::admission::ClientAddr;
use crate::error::Error;
use crate::hub::{AttachRequest, Attachment, Transport};
use crate::metrics;
use crate::protocol::encode;

pub async fn stream<H: Handler>(
    State(gateway): State<Endpoint<H>>,
    client: ClientAddr,
    query: Result<AttachQuery, Error>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Error> {
    let query = query?;
    let change = query.change(Transport::Sse);
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
        .heartbeat(Some(gateway.config().keepalive))
        .change(change);
    let attachment = gateway.attach(request, client).await?;
    gateway.admit(&attachment, &headers, uri.query()).await?;
    let body = Body::from_stream(frames(attachment, gateway.config().keepalive));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform")),
        (HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
    ];
    Ok((headers, body).into_response())
}

/// The stream's bytes: each event as one SSE frame, and [`encode::SSE_KEEP_ALIVE`] whenever
/// `keepalive` passes without one. The frames are built here (not by axum's `Sse`) so that each
/// is one allocation of exactly its size; the bytes, and when keep-alives go out (`keepalive`
/// after the last frame of either kind), are what `Sse` with a `KeepAlive` sent.
fn frames(mut attachment: Attachment, keepalive: Duration) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let sid = attachment.sid().clone();
    async_stream::stream! {
        let mut quiet = std::pin::pin!(tokio::time::sleep(keepalive));
        loop {
            // Events first; the timer is looked at only while none is ready.
            let frame = tokio::select! {
                biased;
                event = attachment.recv() => match event {
                    Ok(event) => {
                        metrics::event_out(Transport::Sse, event.data().len());
                        Bytes::from(encode::sse_event(&outgoing(&event, &sid)))
                    }
                    Err(_) => break,
                },
                () = quiet.as_mut() => Bytes::from_static(encode::SSE_KEEP_ALIVE),
            };
            quiet.as_mut().reset(Instant::now() + keepalive);
            yield Ok(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::sse::{Event as SseEvent, Sse};
    use futures_util::StreamExt;
    use tokio_util::sync::CancellationToken;

    use crate::hub::{Hub, HubConfig};
    use crate::protocol::encode::Outgoing;
    use crate::protocol::Sid;

    /// The frames of a body, one per `poll_frame`.
    async fn body_frames(body: Body) -> Vec<Bytes> {
        let mut body = body.into_data_stream();
        let mut frames = Vec::new();
        while let Some(frame) = body.next().await {
            frames.push(frame.unwrap());
        }
        frames
    }

    /// What this module sends is what axum's `Sse` sent before, frame for frame: its event
    /// builder is the reference.
    #[tokio::test]
    async fn frames_are_the_bytes_axums_sse_writes() {
        let sid: Sid = "f8tQsHY6kkg4J-FuzZPBsw".parse().unwrap();
        let events = [
            (0, true, "session", r#"{"sid":"f8tQsHY6kkg4J-FuzZPBsw","transport":"sse"}"#),
            (1, false, "message", r#""hi""#),
            (2, false, "quote\"and\\slash", r#"{"a":[1,"x"]}"#),
            (3, false, " naïve ☃ name ", r#""a string\nwith\r\na line break""#),
            (4, false, "pretty", "{\n  \"a\": 1,\r\n  \"b\": [\r2\n]\n}\n"),
            (5, true, "gap", "\r\n\n\r"),
            (u64::MAX, false, "empty", ""),
        ];
        let ours: Vec<Bytes> = events
            .iter()
            .map(|&(seq, notice, name, data)| Bytes::from(encode::sse_event(&Outgoing { sid: &sid, seq, notice, name, data, ack: None })))
            .collect();
        let theirs: Vec<_> = events
            .iter()
            .map(|&(seq, notice, name, data)| {
                let cursor = crate::protocol::Cursor { sid: sid.clone(), seq, notice };
                Ok::<_, Infallible>(SseEvent::default().id(cursor.to_string()).event(name).data(data))
            })
            .collect();
        let theirs = body_frames(Sse::new(futures_util::stream::iter(theirs)).into_response().into_body()).await;
        assert_eq!(ours, theirs);

        let keep_alive = Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(SseEvent::default().comment("keep-alive"))]));
        assert_eq!(body_frames(keep_alive.into_response().into_body()).await, [encode::SSE_KEEP_ALIVE]);
    }

    /// Keep-alives come `keepalive` after the last frame, whether that was an event or a
    /// keep-alive, as under `Sse` with a `KeepAlive`; the stream ends with the attachment.
    #[tokio::test(start_paused = true)]
    async fn keep_alives_fill_each_quiet_interval() {
        let hub = Hub::new(HubConfig::default(), CancellationToken::new());
        let attachment = hub.attach(Transport::Sse, None, None).await.unwrap();
        let sid = attachment.sid().clone();
        let keepalive = Duration::from_secs(15);
        let mut frames = std::pin::pin!(frames(attachment, keepalive));
        let start = Instant::now();
        let mut next = async || {
            let frame = frames.next().await.map(Result::unwrap);
            (frame, start.elapsed())
        };
        let (hello, at) = next().await;
        assert!(hello.unwrap().starts_with(format!("id: {sid}.0~\nevent: session\n").as_bytes()));
        assert_eq!(at, Duration::ZERO);
        assert_eq!(next().await, (Some(Bytes::from_static(encode::SSE_KEEP_ALIVE)), keepalive));
        assert_eq!(next().await, (Some(Bytes::from_static(encode::SSE_KEEP_ALIVE)), 2 * keepalive));
        tokio::time::advance(Duration::from_secs(5)).await;
        hub.emit(&sid, "n", &serde_json::json!(1)).await.unwrap();
        let event = format!("id: {sid}.1\nevent: n\ndata: 1\n\n");
        assert_eq!(next().await, (Some(Bytes::from(event)), 2 * keepalive + Duration::from_secs(5)));
        assert_eq!(next().await, (Some(Bytes::from_static(encode::SSE_KEEP_ALIVE)), 3 * keepalive + Duration::from_secs(5)));
        drop(hub.attach(Transport::Sse, Some(sid.as_str()), None).await.unwrap());
        assert_eq!(next().await.0, None, "superseded: the stream ends");
    }
}
