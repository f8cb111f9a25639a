//! Redis for the cluster tests: a standalone `redis-server`, or a three-master Redis Cluster,
//! each process on its own free loopback port with its files (log, cluster config) in a temp
//! dir, and killed by pid when its handle drops.
//!
//! Nothing is ever saved (`--save ""`, `--appendonly no`), so [`RedisServer::restart`] is a
//! Redis that lost its data: what a node must survive. Readiness is asked over the wire (RESP
//! `PING`, `CLUSTER INFO`) with [`command`], so only the cluster's creation needs `redis-cli`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_port, TempDir};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// Longest a Redis process may take to answer `PING` after it was started, and a cluster to say
/// `cluster_state:ok` after it was created.
const READY: Duration = Duration::from_secs(20);

/// One `redis-server` on 127.0.0.1.
pub struct RedisServer {
    pub port: u16,
    /// Extra arguments it was started with (the cluster ones), given again on a restart.
    extra: Vec<String>,
    /// The running process; reaped, and a new one put in its place, by `kill` and `restart`.
    child: Child,
    /// The working dir (`--dir`): its log, and a cluster node's `nodes-PORT.conf`.
    dir: TempDir,
}

impl RedisServer {
    /// A standalone Redis on a free loopback port, answering `PING`.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(free_port(), Vec::new()).await
    }

    /// A standalone Redis started with `extra` configuration (`--user ...`, say), given again on
    /// a restart.
    pub async fn start_with_args(extra: &[&str]) -> RedisServer {
        RedisServer::start_with(free_port(), extra.iter().map(|&a| a.to_owned()).collect()).await
    }

    async fn start_with(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = TempDir::new("redis");
        let child = spawn(port, &extra, &dir);
        let mut server = RedisServer { port, extra, child, dir };
        server.until_ready().await;
        server
    }

    /// A standalone Redis that also serves TLS on a second free port, with a certificate for
    /// 127.0.0.1 issued by a test CA made here; returns it, its `rediss://` URL and the CA's
    /// PEM file (what `--redis-ca` takes). The plain port stays, for the readiness check.
    pub async fn start_tls(certs: &TempDir) -> (RedisServer, String, PathBuf) {
        let (ca, cert, key) = test_ca(certs);
        let tls_port = free_port();
        let extra = ["--tls-port", &tls_port.to_string(), "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"];
        let server = RedisServer::start_with(free_port(), extra.iter().map(|&a| a.to_owned()).collect()).await;
        (server, format!("rediss://127.0.0.1:{tls_port}"), PathBuf::from(ca))
    }

    /// `redis://127.0.0.1:PORT`, what `--redis` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, by pid, and reaps it: Redis is gone at once, without a word to its clients.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (killing it first if it still runs), empty: nothing was
    /// saved. A cluster node keeps its `nodes-PORT.conf`, so it comes back as the same node.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.extra, &self.dir);
        self.until_ready().await;
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn until_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            match command(self.port, &["PING"]).await {
                Ok(reply) if reply == "PONG" => return,
                _ => {}
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("redis-server on port {} exited ({status}) before answering PING; its log:\n{}", self.port, self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {READY:?}; its log:\n{}",
                self.port,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- redis-server :{} log (last 20 lines) ---\n{}", self.port, self.log_tail(20));
        }
        self.kill();
    }
}

/// A test certificate authority and a server certificate for 127.0.0.1 it issued, made with
/// `openssl` in `dir`: (CA PEM, server certificate PEM, server key PEM) paths.
fn test_ca(dir: &TempDir) -> (String, String, String) {
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (path("ca.pem"), path("ca.key"), path("server.pem"), path("server.key"), path("server.csr"), path("ext.cnf"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    let steps: [&[&str]; 3] = [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", "/CN=switchyard test CA"],
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
        &["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial", "-out", &cert, "-days", "2", "-extfile", &ext],
    ];
    for args in steps {
        let out = Command::new("openssl").args(args).stdin(Stdio::null()).output().expect("openssl (Debian package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (ca, cert, key)
}

/// Starts `redis-server` on 127.0.0.1:`port`, saving nothing, working in `dir`.
fn spawn(port: u16, extra: &[String], dir: &TempDir) -> Child {
    let dir_arg = dir.path().display().to_string();
    let log = dir.path().join("redis.log").display().to_string();
    Command::new(REDIS_SERVER)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--dir", &dir_arg, "--logfile", &log])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("starting {REDIS_SERVER}: {err} (tests/run-all.sh installs it: Debian packages redis-server and redis-tools)")
        })
}

/// A Redis Cluster of three masters (no replicas), every slot covered, on 127.0.0.1.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`, once
    /// every node says `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            // The bus port is chosen too: the default, port + 10000, may be taken or above 65535.
            let bus = free_port();
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
                "--cluster-port".to_owned(),
                bus.to_string(),
            ];
            nodes.push(RedisServer::start_with(port, extra.to_vec()).await);
        }
        let cluster = RedisCluster { nodes };
        cluster.create().await;
        cluster.until_ok().await;
        cluster
    }

    /// `redis://127.0.0.1:P1,redis://127.0.0.1:P2,redis://127.0.0.1:P3`, the seed list
    /// `--redis` takes.
    pub fn seed_url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    async fn create(&self) {
        let mut create = tokio::process::Command::new(REDIS_CLI);
        create.args(["--cluster", "create"]);
        create.args(self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        create.stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(READY, create.output())
            .await
            .unwrap_or_else(|_| panic!("`redis-cli --cluster create` did not finish within {READY:?}"))
            .unwrap_or_else(|err| {
                panic!("starting {REDIS_CLI}: {err} (tests/run-all.sh installs it: Debian package redis-tools)")
            });
        assert!(
            output.status.success(),
            "`redis-cli --cluster create` failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn until_ok(&self) {
        let deadline = Instant::now() + READY;
        for node in &self.nodes {
            loop {
                let info = command(node.port, &["CLUSTER", "INFO"]).await.unwrap_or_else(|err| err);
                if info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster node on port {} never said cluster_state:ok; CLUSTER INFO:\n{info}",
                    node.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends one command to the Redis on 127.0.0.1:`port` over a fresh connection and returns its
/// reply: a simple or bulk string, an integer as text, `(nil)` for a null; `Err` with the
/// error reply, or with why it could not be asked. Gives up after 2 s.
pub async fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let ask = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|err| err.to_string())?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
        }
        tcp.write_all(request.as_bytes()).await.map_err(|err| err.to_string())?;
        let mut reply = Vec::new();
        loop {
            if let Some(parsed) = parse_reply(&reply) {
                return parsed;
            }
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).await.map_err(|err| err.to_string())?;
            if n == 0 {
                return Err(format!("connection closed after {:?}", String::from_utf8_lossy(&reply)));
            }
            reply.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from 127.0.0.1:{port} within 2 s")))
}

/// One whole RESP reply from the start of `buf`, or `None` if more bytes are needed.
fn parse_reply(buf: &[u8]) -> Option<Result<String, String>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf[0] {
        b'+' | b':' => Some(Ok(line)),
        b'-' => Some(Err(line)),
        b'$' => {
            let Ok(len) = line.parse::<i64>() else { return Some(Err(format!("bad bulk length {line:?}"))) };
            let Ok(len) = usize::try_from(len) else { return Some(Ok("(nil)".to_owned())) };
            let body = buf.get(end + 2..end + 2 + len)?;
            Some(Ok(String::from_utf8_lossy(body).into_owned()))
        }
        other => Some(Err(format!("unsupported reply type {:?}", char::from(other)))),
    }
}
