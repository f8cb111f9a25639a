//! A connection whose first request opens an event stream, served without hyper's buffers.
//!
//! An idle SSE session is a connection that waits, and under hyper most of what it holds is
//! hyper's: every HTTP/1 connection keeps a read buffer reserved at 8 KiB on each read (it reads
//! on to notice the client leaving) and a write buffer allocated at 8 KiB for response heads,
//! and the server has no option to shrink either. That put an idle SSE session at about
//! 12.9 KiB against the 10 KiB target (issue 5), where a WebSocket session, which leaves hyper
//! on upgrade, holds under 5 KiB. An event stream needs neither buffer: its request is read
//! once, and its response is a head followed by frames written as they come.
//!
//! So the accept loop reads each connection's first request head itself ([`first_request`])
//! into a buffer that lives only until the head is parsed. When it is `GET …/sse` over
//! HTTP/1.1 with no body and no upgrade, the request goes to the same router hyper would call,
//! and its response (the stream, or whatever error the router answers) is written here:
//! status line, headers and `Date`, then the body with `Content-Length` when its size is known
//! and chunked otherwise, each frame written as soon as the body yields it. While the stream is
//! idle the task holds the socket, the response body, and nothing else. The client closing its
//! end drops the body (and so detaches the session) as under hyper, and a client that stops
//! reading is dropped after `slow_client_timeout` of blocked writing.
//!
//! What an idle stream's task holds is kept small in the code as well: the response's parts
//! and head are let go once the head is written, and [`respond`] and its body loop are
//! `async` blocks returned by plain functions rather than `async fn`s, since an `async fn`
//! keeps room for its arguments and again for the locals they move into (rust-lang/rust#62958;
//! measured with `size_of_val`, some 80 bytes per stream here and 190 in `server::Serving`).
//!
//! Everything else (other methods and paths, a head that does not parse, HTTP/1.0, and the
//! rest of a keep-alive connection once the stream has ended) goes to hyper, with the bytes
//! already read put back in front of the socket (`crate::prefixed::Prefixed`). An SSE request that arrives
//! later on a reused keep-alive connection is therefore served by hyper: it works the same and
//! costs hyper's buffers.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use axum::Router;
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::prefixed::Prefixed;
use crate::protocol::encode;

/// Most header lines a first request may carry before it is left to hyper (which allows 100).
const MAX_HEADERS: usize = 64;

/// What a connection's first request head is read into at first; it grows (up to the
/// connection's buffer limit) only for larger heads and is freed once the head is parsed.
const HEAD_BUFFER: usize = 1024;

/// How the connection goes on after [`first_request`].
pub enum Next {
    /// The connection is finished (closed by either side, timed out, or told to close).
    Done,
    /// hyper serves the rest of it, starting with the bytes already read.
    Hyper(Prefixed),
}

/// The limits [`first_request`] works within (the same the hyper side is given).
#[derive(Clone, Copy)]
pub struct Limits {
    /// Time allowed for the whole first request head, counted from the accept.
    pub header_timeout: Duration,
    /// Largest request head read before handing over to hyper (which answers 431).
    pub max_head: usize,
    /// How long a write may stay blocked on a client that does not read.
    pub write_timeout: Duration,
}

/// Reads the connection's first request head; serves it here if it opens an event stream. The
/// request carries `ConnectInfo(peer)`, as the ones hyper serves do.
pub async fn first_request(
    mut tcp: TcpStream,
    peer: SocketAddr,
    router: &Router,
    shutdown: &CancellationToken,
    limits: Limits,
) -> Next {
    let read = tokio::time::timeout(limits.header_timeout, read_head(&mut tcp, limits.max_head));
    let head = tokio::select! {
        read = read => match read {
            Ok(Ok(head)) => head,
            // Nothing arrived in time (the slowloris case), or the client left: close, as
            // hyper does when its header timeout fires.
            Ok(Err(_)) | Err(_) => return Next::Done,
        },
        // Shutting down with no request begun: close, as hyper's graceful shutdown closes an
        // idle connection, rather than hold the drain up until the header timeout.
        () = shutdown.cancelled() => return Next::Done,
    };
    let (mut request, leftover, close) = match head {
        Head::Stream { request, leftover, close } => (request, leftover, close),
        Head::Other(bytes) => return Next::Hyper(Prefixed::new(bytes, tcp)),
    };
    request.extensions_mut().insert(ConnectInfo(peer));
    let Ok(response) = router.clone().oneshot(request).await;
    let close = close || shutdown.is_cancelled();
    let Some(leftover) = respond(&mut tcp, response, leftover, close, limits).await else {
        return Next::Done;
    };
    if close || shutdown.is_cancelled() {
        let _ = tcp.shutdown().await;
        return Next::Done;
    }
    Next::Hyper(Prefixed::new(leftover, tcp))
}

/// A first request head, read and classified. Lives only while the head is classified, so
/// the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// `GET …/sse`, to be served here; `leftover` is what the client sent after the head.
    Stream { request: Request<Body>, leftover: BytesMut, close: bool },
    /// Anything else, with every byte read so far.
    Other(BytesMut),
}

/// Reads until the request head is complete, or until it is clear hyper should have it.
async fn read_head(tcp: &mut TcpStream, max_head: usize) -> io::Result<Head> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(match stream_request(&parsed) {
                    Some((request, close)) => Head::Stream { request, leftover: BytesMut::from(&buf[len..]), close },
                    None => Head::Other(buf),
                });
            }
            Ok(httparse::Status::Partial) => {
                let decided_other = match (parsed.method, parsed.path) {
                    (Some(method), Some(path)) => !is_stream_target(method, path),
                    // The method alone already tells, once it is not GET.
                    (Some(method), None) => method != "GET",
                    _ => false,
                };
                if decided_other || buf.len() >= max_head {
                    return Ok(Head::Other(buf));
                }
            }
            // Malformed, or more header lines than MAX_HEADERS: hyper answers or accepts it.
            Err(_) => return Ok(Head::Other(buf)),
        }
    }
}

/// `GET` of a path ending in `/sse`: the SSE route wherever the gateway is mounted.
fn is_stream_target(method: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    method == "GET" && path.ends_with("/sse")
}

/// The request to serve here, and whether the client asked to close after it; `None` for
/// anything hyper should handle: HTTP/1.0, a body, an upgrade, `Expect`, or an unparsable
/// target or header.
fn stream_request(parsed: &httparse::Request<'_, '_>) -> Option<(Request<Body>, bool)> {
    let (method, path) = (parsed.method?, parsed.path?);
    if !is_stream_target(method, path) || parsed.version? != 1 {
        return None;
    }
    let mut request = Request::builder().method(Method::GET).uri(path).version(Version::HTTP_11);
    let mut close = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || (name.eq_ignore_ascii_case("content-length") && h.value != b"0")
        {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            close |= std::str::from_utf8(h.value)
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        }
        request = request.header(name, h.value);
    }
    Some((request.body(Body::empty()).ok()?, close))
}

/// Writes `response` to the client. Returns the bytes the client sent meanwhile (the start of
/// its next request) when the connection may go on, `None` when it must not.
#[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice: see the module doc")]
fn respond(
    tcp: &mut TcpStream,
    response: Response<Body>,
    mut leftover: BytesMut,
    close: bool,
    limits: Limits,
) -> impl Future<Output = Option<BytesMut>> + '_ {
    // An `async` block, not an `async fn`: see the module doc.
    async move {
        let (parts, mut body) = response.into_parts();
        let framing = Framing::of(parts.status, &body);
        let head = response_head(parts.status, &parts.headers, framing, close);
        // An idle stream holds its body and nothing more: the response's parts go now, the
        // head once written.
        drop(parts);
        write(tcp, &head, limits.write_timeout).await.ok()?;
        drop(head);
        if framing == Framing::Bodiless {
            return Some(leftover);
        }
        write_body(tcp, &mut body, framing, &mut leftover, &limits).await?;
        if framing == Framing::Chunked {
            write(tcp, encode::LAST_CHUNK, limits.write_timeout).await.ok()?;
        }
        Some(leftover)
    }
}

/// How a response's body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// None at all: 1xx, 204 and 304 answers.
    Bodiless,
    /// `Content-Length`, then the body's bytes as they are.
    Sized(u64),
    /// `Transfer-Encoding: chunked`: each frame of the body one chunk, then the last chunk. For
    /// bodies of unknown length, such as event streams.
    Chunked,
}

impl Framing {
    fn of(status: StatusCode, body: &Body) -> Framing {
        if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Framing::Bodiless;
        }
        match body.size_hint().exact() {
            Some(length) => Framing::Sized(length),
            None => Framing::Chunked,
        }
    }

    /// One frame of a body as it goes on the wire: as a chunk when chunked (size line, data
    /// and the closing CRLF together, for one write).
    fn frame<'d>(&self, data: &'d [u8]) -> Cow<'d, [u8]> {
        match self {
            Framing::Chunked => Cow::Owned(encode::chunk(data)),
            Framing::Sized(_) | Framing::Bodiless => Cow::Borrowed(data),
        }
    }
}

/// Writes each frame of `body` as soon as the body yields it, reading what the client sends
/// meanwhile into `leftover`. `Some` once the body has ended; `None` if the body failed or the
/// client left (or cannot be written to, or sent too much).
#[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice: see the module doc")]
fn write_body<'a>(
    tcp: &'a mut TcpStream,
    body: &'a mut Body,
    framing: Framing,
    leftover: &'a mut BytesMut,
    limits: &'a Limits,
) -> impl Future<Output = Option<()>> + 'a {
    // An `async` block, not an `async fn`: see the module doc.
    async move {
        loop {
            tokio::select! {
                // What the body has goes out before anything from the client is looked at.
                biased;
                frame = body.frame() => match frame {
                    None => return Some(()),
                    Some(Ok(frame)) => {
                        // An empty frame writes nothing: as a chunk, it would end the body.
                        if let Some(data) = frame.into_data().ok().filter(|data| !data.is_empty()) {
                            write(tcp, &framing.frame(&data), limits.write_timeout).await.ok()?;
                        }
                    }
                    Some(Err(err)) => {
                        // The client must not take a cut-off body for a whole one: close without
                        // the final chunk.
                        tracing::debug!(%err, "response body failed");
                        return None;
                    }
                },
                // Reading on while the stream runs is how a client leaving is noticed.
                readable = tcp.readable() => {
                    readable.ok()?;
                    if !read_ahead(tcp, leftover, limits.max_head) {
                        return None;
                    }
                }
            }
        }
    }
}

/// Reads what the client has sent (the start of its next request) into `leftover`, without
/// waiting. Returns whether the connection may go on: not once the client has closed its end,
/// failed, or sent more than a request head may hold.
fn read_ahead(tcp: &TcpStream, leftover: &mut BytesMut, max_head: usize) -> bool {
    if leftover.capacity() == leftover.len() {
        leftover.reserve(HEAD_BUFFER);
    }
    match tcp.try_read_buf(leftover) {
        Ok(0) => false,
        Ok(_) => leftover.len() <= max_head,
        Err(err) => err.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The status line and headers, with the framing headers this writer decides.
fn response_head(status: StatusCode, headers: &HeaderMap, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).as_bytes());
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        head.extend_from_slice(format!("date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes());
    }
    match framing {
        Framing::Sized(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Bodiless => {}
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes all of `bytes`. The first attempt is made without a timer, since a client that
/// reads has room in its socket; only a write that blocks waits, and for at most `timeout`.
async fn write(tcp: &mut TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let written = match tcp.try_write(bytes) {
        Ok(n) => n,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        Err(err) => return Err(err),
    };
    if written < bytes.len() {
        tokio::time::timeout(timeout, tcp.write_all(&bytes[written..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
    }
    Ok(())
}
