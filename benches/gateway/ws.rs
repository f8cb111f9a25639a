//! The load generator's WebSocket client for closed loops: the upgrade written and read over
//! the bench's HTTP connection (`http.rs`), then frames written as prepared bytes and read in
//! place from the connection's buffer.
//!
//! Why not tokio-tungstenite here: with it the load generator spent about as much CPU per round
//! trip as the raw WebSocket baseline it measures (7.1 against 6.6 µs, issue 15), so a ratio
//! near 1 could mean the load generator set the pace. A closed loop sends one fixed message:
//! its masked frame is built once per session (a random mask key per session; the server unmasks
//! it the same whatever the key), and a reply needs only its header read and its payload searched
//! for the event name. Pings are answered with a pong, a close frame ends the session. The
//! sessions held open by other scenarios still use tokio-tungstenite (`client::ws_open`).

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use base64::Engine as _;

use crate::http::Conn;

/// A WebSocket connection after the upgrade, and the frame it sends in every round trip.
pub struct WsConn {
    conn: Conn,
    mask: [u8; 4],
    frame: Box<[u8]>,
}

/// A frame as read: its opcode and where its payload is in the connection's unread bytes.
struct Frame {
    opcode: u8,
    payload: std::ops::Range<usize>,
}

const TEXT: u8 = 1;
const CONTINUATION: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

impl WsConn {
    /// Opens `GET /ws` at `addr` and upgrades; `message` is what every [`WsConn::send`] sends.
    pub async fn open(addr: SocketAddr, message: &str) -> anyhow::Result<WsConn> {
        let mut conn = Conn::connect(addr, None).await?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
        );
        conn.send(request.as_bytes()).await?;
        let head = conn.read_head().await?;
        if head.status != 101 {
            bail!("GET /ws answered {} instead of 101", head.status);
        }
        let mask = rand::random::<[u8; 4]>();
        let frame = masked_frame(TEXT, message.as_bytes(), mask);
        Ok(WsConn { conn, mask, frame })
    }

    /// Writes the session's message.
    pub async fn send(&mut self) -> anyhow::Result<()> {
        self.conn.send(&self.frame).await
    }

    /// Reads frames until a text frame whose payload holds `needle` (answering pings on the
    /// way; a close frame is an error).
    pub async fn wait_for(&mut self, needle: &[u8]) -> anyhow::Result<()> {
        loop {
            let frame = self.next_frame().await?;
            let payload = &self.conn.unread()[frame.payload.clone()];
            let found = matches!(frame.opcode, TEXT | CONTINUATION) && memchr::memmem::find(payload, needle).is_some();
            let pong = (frame.opcode == PING).then(|| masked_frame(PONG, payload, self.mask));
            let close = (frame.opcode == CLOSE).then(|| String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned());
            self.conn.consume(frame.payload.end);
            if let Some(pong) = pong {
                self.conn.send(&pong).await?;
            }
            if let Some(reason) = close {
                bail!("closed by the server: {reason:?}");
            }
            if found {
                return Ok(());
            }
        }
    }

    /// Reads until a whole frame is buffered.
    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = parse_frame(self.conn.unread())? {
                return Ok(frame);
            }
            self.conn.fill().await?;
        }
    }
}

/// A whole frame at the start of `buf`, if it is all there. Frames from a server are not masked.
fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<Frame>> {
    let [first, second, rest @ ..] = buf else { return Ok(None) };
    if second & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (length, header) = match second & 0x7f {
        126 => {
            let Some(bytes) = rest.get(..2) else { return Ok(None) };
            (u64::from(u16::from_be_bytes(bytes.try_into()?)), 4)
        }
        127 => {
            let Some(bytes) = rest.get(..8) else { return Ok(None) };
            (u64::from_be_bytes(bytes.try_into()?), 10)
        }
        short => (u64::from(short), 2),
    };
    let end = header + usize::try_from(length).context("a frame larger than memory")?;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame { opcode: first & 0x0f, payload: header..end }))
}

/// A final frame of `opcode` carrying `payload`, masked with `mask` as a client's must be.
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Box<[u8]> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | u8::try_from(len).expect("at most 125")),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len).expect("at most 0xffff").to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
    frame.into_boxed_slice()
}
