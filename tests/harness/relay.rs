//! A TCP relay between the browser and the gateway that the test controls: it can hold back
//! what the server sends (so replies pile up "on the wire"), cut every connection at once,
//! refuse new connections, or refuse only WebSocket handshakes (as a path that blocks
//! WebSocket would).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the relay does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay everything.
    Pass,
    /// Close every new connection at once, as a dead network would.
    Refuse,
    /// Close connections whose first request is a WebSocket handshake; relay the rest.
    RefuseWebSocket,
    /// Relay WebSocket handshakes, then cut the connection as soon as the browser sends
    /// anything more (a path that drops whatever a client sends).
    CutOnSend,
}

pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// The tasks relaying live connections; `cut` aborts them, which closes both sockets.
    conns: Mutex<Vec<AbortHandle>>,
    /// True while server-to-browser bytes are held back. Receivers: every downstream pipe.
    stall_tx: watch::Sender<bool>,
    refused_websockets: AtomicUsize,
    websockets: AtomicUsize,
}

impl Relay {
    pub async fn start(upstream: SocketAddr, mode: Mode) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(mode),
            conns: Mutex::new(Vec::new()),
            stall_tx: watch::channel(false).0,
            refused_websockets: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((browser, _)) = listener.accept().await else { continue };
                let _ = browser.set_nodelay(true);
                let mode = *accepting.mode.lock().unwrap();
                if mode == Mode::Refuse {
                    drop(browser);
                    continue;
                }
                let shared = accepting.clone();
                let task = tokio::spawn(async move { relay(shared, browser, mode).await });
                let mut conns = accepting.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        })
        .abort_handle();
        Relay { addr, shared, accept }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Holds back (true) or releases (false) every byte the server sends to the browser.
    pub fn stall_downstream(&self, stalled: bool) {
        self.shared.stall_tx.send_replace(stalled);
    }

    /// Closes every live connection at once; bytes held back are lost.
    pub fn cut(&self) {
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// WebSocket handshakes refused so far.
    pub fn refused_websockets(&self) -> usize {
        self.shared.refused_websockets.load(Ordering::SeqCst)
    }

    /// WebSocket handshakes relayed so far.
    pub fn websockets(&self) -> usize {
        self.shared.websockets.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(shared: Arc<Shared>, mut browser: TcpStream, mode: Mode) {
    // Read the first request head to know whether this is a WebSocket handshake.
    let mut head = Vec::with_capacity(2048);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match browser.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let is_websocket = String::from_utf8_lossy(&head).to_ascii_lowercase().contains("upgrade: websocket");
    if is_websocket {
        if mode == Mode::RefuseWebSocket {
            shared.refused_websockets.fetch_add(1, Ordering::SeqCst);
            return; // dropping the socket closes it before any answer: close 1006 in the page
        }
        shared.websockets.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(server) = TcpStream::connect(shared.upstream).await else { return };
    let _ = server.set_nodelay(true);
    let (browser_rx, browser_tx) = browser.into_split();
    let (server_rx, mut server_tx) = server.into_split();
    if server_tx.write_all(&head).await.is_err() {
        return;
    }
    let down = pipe(server_rx, browser_tx, Some(shared.stall_tx.subscribe()));
    if is_websocket && mode == Mode::CutOnSend {
        // The first bytes the browser sends after its handshake end both directions.
        let mut browser_rx = browser_rx;
        let first = async move {
            let mut byte = [0u8; 1];
            let _ = browser_rx.read(&mut byte).await;
        };
        tokio::select! {
            () = first => {}
            () = down => {}
        }
        return;
    }
    let up = pipe(browser_rx, server_tx, None);
    tokio::join!(up, down);
}

/// Copies bytes until either side ends. Downstream, bytes read while stalled, and the end of
/// the stream, are held until the stall ends (or lost with the connection when it is cut).
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stall: Option<watch::Receiver<bool>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // A frozen path holds the end of the stream too: the browser learns of it
                // only once the stall ends (or never, if the connection is cut first).
                if let Some(stall) = stall.as_mut() {
                    let _ = stall.wait_for(|stalled| !stalled).await;
                }
                break;
            }
            Ok(n) => n,
        };
        if let Some(stall) = stall.as_mut() {
            if stall.wait_for(|stalled| !stalled).await.is_err() {
                break;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
