//! The connection a standalone Redis's emits go over: the batching task (`batch.rs`) writes each
//! batch's `emit_many` calls as RESP straight from the events, and one reading task parses the
//! replies and answers each event's caller.
//!
//! Every client event's reply is an emit, so this is the path of every round trip in cluster
//! mode. Through the `redis` crate's multiplexed connection an emit cost about as many
//! instructions on the node as the rest of the round trip (docs/performance.md, "Cluster
//! mode"): the call was built as a `Cmd`, copied into the pipeline's buffer, handed to the
//! connection's task, and its reply parsed into a tree of `Value`s by a general parser, then
//! handed to the batch's task and on to each caller. Here the call is written once into the
//! buffer the socket is written from, and a reply is read as what `emit_many` answers (an array
//! of integers, or an error line) with nothing allocated per reply. Everything else keeps the
//! `redis` crate's connection (`mod.rs`): its replies take every shape, and it does TLS.
//!
//! A connection that fails (a write, a read, a reply not in [`COMMAND_TIMEOUT`]) answers every
//! call written on it with the failure, and the next batch opens a new one, as the `redis`
//! crate's connection manager does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::timeout;

use super::COMMAND_TIMEOUT;

/// What an emit answers: the event's number and whether the emitting node holds the session's
/// transport; `None` when the session is gone.
pub(super) type Emitted = Option<(u64, bool)>;

/// Why an emit failed.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// Redis does not have the `emit_many` script (it restarted): load it, and emit again.
    NoScript,
    /// Redis answered an error, or could not be reached.
    Redis(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoScript => f.write_str("NOSCRIPT: the emit script is not loaded"),
            Failure::Redis(what) => f.write_str(what),
        }
    }
}

/// Where one event's answer goes.
pub(super) type Caller = oneshot::Sender<Result<Emitted, Failure>>;

/// Answers every caller of a call with `failure`.
pub(super) fn fail_all(calls: impl IntoIterator<Item = Vec<Caller>>, failure: &Failure) {
    for call in calls {
        for caller in call {
            let _ = caller.send(Err(failure.clone()));
        }
    }
}

/// Where and how to connect: a plain TCP Redis, its login and database.
#[derive(Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Target {
    /// From a client's URL; `None` for what this connection does not speak (TLS, a Unix
    /// socket): those keep the `redis` crate's connection for emits too.
    pub(super) fn of(client: &redis::Client) -> Option<Target> {
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else { return None };
        let settings = info.redis_settings();
        Some(Target {
            host: host.clone(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }
}

/// A batch written, waiting for its replies: one list of callers per call, in order, and its
/// place among the batches in flight (given back once it is answered).
struct Waiting {
    calls: Vec<Vec<Caller>>,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// One open connection, held by the batching task.
pub(super) struct Link {
    /// The writing half; dropped with the link, which tells Redis the connection is over.
    write: OwnedWriteHalf,
    /// To the reading task: each batch written, in order. Closed by the reader when the
    /// connection failed.
    waiting: mpsc::UnboundedSender<Waiting>,
    /// Set by the reader when the connection failed: the next batch opens a new one.
    dead: Arc<AtomicBool>,
}

impl Link {
    /// Connects, logs in and selects the database, within [`COMMAND_TIMEOUT`], and starts the
    /// reading task.
    pub(super) async fn open(target: &Target) -> Result<Link, Failure> {
        let connect = async {
            let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|err| err.to_string())?;
            tcp.set_nodelay(true).map_err(|err| err.to_string())?;
            let mut hello = Vec::new();
            let mut replies = 0;
            if let Some(password) = &target.password {
                match &target.username {
                    Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                    None => command(&mut hello, &[b"AUTH", password.as_bytes()]),
                }
                replies += 1;
            }
            if target.db != 0 {
                command(&mut hello, &[b"SELECT", target.db.to_string().as_bytes()]);
                replies += 1;
            }
            if replies > 0 {
                tcp.write_all(&hello).await.map_err(|err| err.to_string())?;
                let mut buf = BytesMut::new();
                while replies > 0 {
                    match line(&buf) {
                        Some((reply, used)) => {
                            if reply.first() != Some(&b'+') {
                                return Err(format!("Redis refused the connection: {}", String::from_utf8_lossy(reply)));
                            }
                            buf.advance(used);
                            replies -= 1;
                        }
                        None => {
                            if tcp.read_buf(&mut buf).await.map_err(|err| err.to_string())? == 0 {
                                return Err("Redis closed the connection".to_owned());
                            }
                        }
                    }
                }
            }
            Ok(tcp)
        };
        let tcp = match timeout(COMMAND_TIMEOUT, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(what)) => return Err(Failure::Redis(what)),
            Err(_) => return Err(Failure::Redis("connecting to Redis timed out".to_owned())),
        };
        let (read, write) = tcp.into_split();
        let (waiting, queue) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_replies(read, queue, dead.clone()));
        Ok(Link { write, waiting, dead })
    }

    /// Whether the connection failed.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Writes `out` (the calls, as RESP) and hands the calls' callers to the reader. On a
    /// failure the callers are answered with it, and the link is dead.
    pub(super) async fn send(&mut self, out: &[u8], calls: Vec<Vec<Caller>>, permit: Arc<OwnedSemaphorePermit>) {
        // Queued before the write, so that the reader has them when the replies come.
        if let Err(mpsc::error::SendError(back)) = self.waiting.send(Waiting { calls, _permit: permit }) {
            fail_all(back.calls, &Failure::Redis("the connection to Redis failed".to_owned()));
            self.dead.store(true, Ordering::Release);
            return;
        }
        let failure = match timeout(COMMAND_TIMEOUT, self.write.write_all(out)).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "writing to Redis timed out".to_owned(),
        };
        // The reader answers what was queued (the connection's end reaches it, or its timeout).
        tracing::debug!(failure, "cluster mode: the emit connection failed");
        self.dead.store(true, Ordering::Release);
        let _ = self.write.shutdown().await;
    }
}

/// Reads the replies of the batches written, in order, and answers their callers; at the
/// connection's first failure, answers every caller waiting with it.
async fn read_replies(mut read: OwnedReadHalf, mut queue: mpsc::UnboundedReceiver<Waiting>, dead: Arc<AtomicBool>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut ints = Vec::new();
    let (failure, left) = 'connection: loop {
        // Idle, the connection is watched too: one that Redis closed (a restart) is found dead
        // before the next batch is written on it.
        // Biased: a batch is queued before it is written, so data with none queued is unasked.
        let waiting = tokio::select! {
            biased;
            waiting = queue.recv() => match waiting {
                Some(waiting) => waiting,
                None => return,
            },
            read = read.read_buf(&mut buf) => match read {
                Ok(0) => break 'connection (Failure::Redis("Redis closed the connection".to_owned()), None),
                Ok(_) => break 'connection (Failure::Redis("Redis sent what nothing asked for".to_owned()), None),
                Err(err) => break 'connection (Failure::Redis(err.to_string()), None),
            },
        };
        let mut calls = waiting.calls.into_iter();
        while let Some(call) = calls.next() {
            let reply = loop {
                match parse(&buf, &mut ints) {
                    Ok(Some(reply)) => break reply,
                    Ok(None) => {}
                    Err(what) => break 'connection (Failure::Redis(what), Some((call, calls))),
                }
                match timeout(COMMAND_TIMEOUT, read.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => break 'connection (Failure::Redis("Redis closed the connection".to_owned()), Some((call, calls))),
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => break 'connection (Failure::Redis(err.to_string()), Some((call, calls))),
                    Err(_) => break 'connection (Failure::Redis("Redis did not answer in time".to_owned()), Some((call, calls))),
                }
            };
            match reply {
                Reply::Ints(used) => {
                    hand_out(call, &ints);
                    buf.advance(used);
                }
                Reply::Error(used) => {
                    let text = String::from_utf8_lossy(&buf[1..used - 2]).into_owned();
                    let failure = if text.starts_with("NOSCRIPT") { Failure::NoScript } else { Failure::Redis(text) };
                    fail_all([call], &failure);
                    buf.advance(used);
                }
            }
        }
    };
    dead.store(true, Ordering::Release);
    tracing::debug!(%failure, "cluster mode: the emit connection failed");
    if let Some((call, calls)) = left {
        fail_all(std::iter::once(call).chain(calls), &failure);
    }
    queue.close();
    while let Some(waiting) = queue.recv().await {
        fail_all(waiting.calls, &failure);
    }
}

/// One call's `[seq, mine]` pairs to its callers, in order.
fn hand_out(call: Vec<Caller>, ints: &[i64]) {
    if ints.len() != call.len() * 2 {
        fail_all([call], &Failure::Redis("emit_many answered the wrong count".to_owned()));
        return;
    }
    for (caller, pair) in call.into_iter().zip(ints.chunks_exact(2)) {
        let _ = caller.send(Ok(emitted(pair[0], pair[1])));
    }
}

/// What one event's `[seq, mine]` pair of `emit_many`'s answer says (a `seq` of 0 or less: the
/// session is gone).
pub(super) fn emitted(seq: i64, mine: i64) -> Emitted {
    (seq > 0).then(|| (seq.unsigned_abs(), mine == 1))
}

/// A whole reply at the front of the buffer, and the bytes it takes.
enum Reply {
    /// An array of integers, read into the caller's list.
    Ints(usize),
    /// An error line (`-...\r\n`).
    Error(usize),
}

/// Parses the reply at the front of `buf`: `Ok(None)` while it is incomplete, `Err` for a reply
/// `emit_many` never gives.
fn parse(buf: &[u8], ints: &mut Vec<i64>) -> Result<Option<Reply>, String> {
    let Some((head, mut used)) = line(buf) else { return Ok(None) };
    match head.first() {
        Some(b'-') => Ok(Some(Reply::Error(used))),
        Some(b'*') => {
            let count = number(&head[1..]).filter(|n| *n >= 0).ok_or("a malformed array from Redis")?;
            ints.clear();
            for _ in 0..count {
                let Some((item, len)) = line(&buf[used..]) else { return Ok(None) };
                if item.first() != Some(&b':') {
                    return Err(format!("an unexpected reply from Redis: {}", String::from_utf8_lossy(item)));
                }
                ints.push(number(&item[1..]).ok_or("a malformed integer from Redis")?);
                used += len;
            }
            Ok(Some(Reply::Ints(used)))
        }
        _ => Err(format!("an unexpected reply from Redis: {}", String::from_utf8_lossy(head))),
    }
}

/// The line at the front of `buf` (without its `\r\n`) and its length with it.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = memchr::memchr(b'\n', buf)?;
    (end > 0 && buf[end - 1] == b'\r').then(|| (&buf[..end - 1], end + 1))
}

fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Writes one command as RESP: `*N`, then each argument as a bulk string.
pub(super) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array(out, args.len());
    for arg in args {
        bulk(out, arg);
    }
}

/// Writes an array's header: `*N\r\n`.
pub(super) fn array(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes one bulk string: `$LEN\r\nBYTES\r\n`.
pub(super) fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::{command, parse, Reply};

    #[test]
    fn replies_are_read_whole_or_not_at_all() {
        let mut ints = Vec::new();
        let whole = b"*4\r\n:7\r\n:1\r\n:-1\r\n:0\r\n";
        for cut in 0..whole.len() {
            assert!(matches!(parse(&whole[..cut], &mut ints), Ok(None)), "{cut} bytes are not a reply");
        }
        assert!(matches!(parse(whole, &mut ints), Ok(Some(Reply::Ints(n))) if n == whole.len()));
        assert_eq!(ints, [7, 1, -1, 0]);
        assert!(matches!(parse(b"-NOSCRIPT No matching script\r\n:1", &mut ints), Ok(Some(Reply::Error(30)))));
        assert!(parse(b"$3\r\nabc\r\n", &mut ints).is_err(), "emit_many never answers a string");
        assert!(parse(b"*1\r\n+OK\r\n", &mut ints).is_err());
    }

    #[test]
    fn commands_are_written_as_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &[b"SELECT", b"2"]);
        assert_eq!(out, b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n");
    }
}
