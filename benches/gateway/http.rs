//! The load generator's HTTP/1.1 client: a keep-alive connection over a raw tokio socket, a
//! request written as prepared bytes, a response read with httparse (`Content-Length` or
//! chunked), and a streaming SSE parser over a chunked body.
//!
//! Why not reqwest and eventsource-stream: a closed loop's round trip costs the load generator
//! about what it costs the server, and through a general client's connection pool, header maps,
//! body channels and boxed streams the load generator spent more per round trip than either
//! server, so the SSE+POST and long-polling ratios measured the load generator (issue 15). This
//! client does per request one `write` of bytes prepared when the session opened, and per
//! response the reads it needs into one buffer that is reused, parsing in place. It speaks only
//! what the servers of the bench answer: HTTP/1.1 responses framed by `Content-Length` or
//! chunked, never closed-delimited, no `100 Continue`, no compression.
//!
//! Every read here waits as long as the socket does: the callers put their waits under a
//! timeout (see `client.rs`).

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a connection reads into at first; it grows only for a response larger than this.
const READ_BUFFER: usize = 8 * 1024;

/// The largest response head or unread body a connection buffers before giving up.
const MAX_BUFFER: usize = 1024 * 1024;

/// Header lines a response head may have.
const MAX_HEADERS: usize = 32;

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: N`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A response head: the status and how the body is framed.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
}

/// One keep-alive connection and the bytes read from it and not yet consumed
/// (`buf[start..end]`).
pub struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects to `addr` (from `local`, a 127.0.0.x address, when given) with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = local {
            socket.bind((ip, 0).into()).with_context(|| format!("binding {ip}"))?;
        }
        let tcp = socket.connect(addr).await.context("connecting")?;
        tcp.set_nodelay(true)?;
        Ok(Conn { tcp, buf: vec![0; READ_BUFFER], start: 0, end: 0 })
    }

    /// Writes a whole request.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.tcp.write_all(request).await.context("writing a request")
    }

    /// The bytes read and not yet consumed.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` unread bytes consumed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
    }

    /// Reads at least one more byte from the socket behind the unread ones.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_BUFFER {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                bail!("more than {MAX_BUFFER} bytes of response buffered");
            }
        }
        let n = self.tcp.read(&mut self.buf[self.end..]).await.context("reading a response")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.end += n;
        Ok(())
    }

    /// Reads a response head.
    pub async fn read_head(&mut self) -> anyhow::Result<Head> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&self.buf[self.start..self.end]).context("parsing a response head")? {
                let status = response.code.unwrap_or(0);
                let mut framing = None;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        let length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok());
                        framing = Some(Framing::Length(length.context("a Content-Length that is not a number")?));
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") && header.value.eq_ignore_ascii_case(b"chunked") {
                        framing = Some(Framing::Chunked);
                    }
                }
                let framing = match framing {
                    Some(framing) => framing,
                    // 101 (the connection is upgraded), 204 and 304 have no body; nothing else
                    // here is framed by closing.
                    None if matches!(status, 101 | 204 | 304) => Framing::Length(0),
                    None => bail!("a {status} response without Content-Length or chunked framing"),
                };
                self.start += len;
                return Ok(Head { status, framing });
            }
            self.fill().await?;
        }
    }

    /// Reads a whole body into `out` (after what it holds).
    pub async fn read_body(&mut self, framing: Framing, out: &mut Vec<u8>) -> anyhow::Result<()> {
        match framing {
            Framing::Length(length) => {
                while self.end - self.start < length {
                    self.fill().await?;
                }
                out.extend_from_slice(&self.buf[self.start..self.start + length]);
                self.start += length;
            }
            Framing::Chunked => {
                let mut chunks = Dechunker::default();
                loop {
                    let used = chunks.decode(self.unread(), out)?;
                    self.start += used;
                    if chunks.done() {
                        break;
                    }
                    self.fill().await?;
                }
            }
        }
        Ok(())
    }

    /// Reads a whole response: its status and body (into `body`, cleared first).
    pub async fn read_response(&mut self, body: &mut Vec<u8>) -> anyhow::Result<u16> {
        body.clear();
        let head = self.read_head().await?;
        self.read_body(head.framing, body).await?;
        Ok(head.status)
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk's size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer (ended by an empty line).
    Trailer,
    /// The body has ended.
    Done,
}

/// Decodes an HTTP/1.1 chunked body as its bytes arrive, in pieces of any size.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
}

impl Dechunker {
    /// Whether the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can of `input`, appending the body's bytes to `out`; returns how much of
    /// `input` it used (the rest is an incomplete size or trailer line, or past the body's end).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        pos += used;
                        let size = usize::try_from(size).context("a chunk larger than memory")?;
                        self.state = if size == 0 { ChunkState::Trailer } else { ChunkState::Data(size) };
                    }
                    Ok(httparse::Status::Partial) => return Ok(pos),
                    Err(_) => bail!("a malformed chunk size line"),
                },
                ChunkState::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        return Ok(pos);
                    }
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = if take == left { ChunkState::DataEnd } else { ChunkState::Data(left - take) };
                }
                ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(newline) = memchr::memchr(b'\n', rest) else { return Ok(pos) };
                    let line = &rest[..newline];
                    let empty = line.is_empty() || line == b"\r";
                    pos += newline + 1;
                    if self.state == ChunkState::DataEnd {
                        if !empty {
                            bail!("chunk data longer than its size");
                        }
                        self.state = ChunkState::Size;
                    } else if empty {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(pos),
            }
        }
    }
}

/// An event stream read from a response whose head has been read: its body decoded (chunked or
/// with a length) and parsed into events as the bytes arrive (the `text/event-stream` rules of
/// the HTML standard: `event` and `data` fields (`id` and `retry` are read past), comments, an empty line ending an event).
pub struct SseStream {
    conn: Conn,
    framing: Framing,
    chunks: Dechunker,
    /// Decoded body bytes not yet parsed into lines: `body[pos..]`.
    body: Vec<u8>,
    pos: usize,
    /// The event being read, and whether the one in these fields was already returned.
    name: String,
    data: String,
    returned: bool,
}

/// One event of an [`SseStream`], borrowed until the next is read.
pub struct SseEvent<'a> {
    /// The `event` field, `message` when the event had none.
    pub name: &'a str,
    pub data: &'a str,
}

impl SseStream {
    pub fn new(conn: Conn, framing: Framing) -> SseStream {
        SseStream {
            conn,
            framing,
            chunks: Dechunker::default(),
            body: Vec::with_capacity(READ_BUFFER),
            pos: 0,
            name: String::new(),
            data: String::new(),
            returned: false,
        }
    }

    /// Reads until the next event ends, and returns it.
    pub async fn next_event(&mut self) -> anyhow::Result<SseEvent<'_>> {
        if self.returned {
            self.name.clear();
            self.data.clear();
            self.returned = false;
        }
        loop {
            while let Some(newline) = memchr::memchr(b'\n', &self.body[self.pos..]) {
                let line_end = self.pos + newline;
                let mut line = &self.body[self.pos..line_end];
                self.pos = line_end + 1;
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.is_empty() {
                    if self.data.is_empty() {
                        // An event without data is not dispatched (nor is a keep-alive comment).
                        self.name.clear();
                        continue;
                    }
                    if self.data.ends_with('\n') {
                        self.data.pop();
                    }
                    self.returned = true;
                    let name = if self.name.is_empty() { "message" } else { self.name.as_str() };
                    return Ok(SseEvent { name, data: &self.data });
                }
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(0) => continue,
                    Some(colon) => {
                        let value = &line[colon + 1..];
                        (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                let value = std::str::from_utf8(value).context("an SSE line that is not UTF-8")?;
                match field {
                    b"event" => value.clone_into(&mut self.name),
                    b"data" => {
                        self.data.push_str(value);
                        self.data.push('\n');
                    }
                    _ => {}
                }
            }
            self.body.drain(..self.pos);
            self.pos = 0;
            self.read_more().await?;
        }
    }

    /// Moves more of the body from the connection into `body`.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        loop {
            let unread = self.conn.unread();
            match &mut self.framing {
                Framing::Chunked => {
                    if self.chunks.done() {
                        bail!("the event stream ended");
                    }
                    let used = self.chunks.decode(unread, &mut self.body)?;
                    self.conn.start += used;
                }
                Framing::Length(left) => {
                    if *left == 0 {
                        bail!("the event stream ended");
                    }
                    let take = unread.len().min(*left);
                    self.body.extend_from_slice(&unread[..take]);
                    self.conn.start += take;
                    *left -= take;
                }
            }
            if memchr::memchr(b'\n', &self.body).is_some() {
                return Ok(());
            }
            self.conn.fill().await?;
        }
    }
}
