//! The processes of a run: servers started as their own processes (pinned to a core, so that
//! their CPU time and RSS can be read from `/proc/PID` and the load generator does not compete
//! with them for one), and what `/proc` tells about them.
//!
//! The baselines live in this bench binary itself: it re-executes
//! itself with `__serve KIND ADDR`, so every server is its own process that `taskset` can pin,
//! and nothing is built but `cargo bench` builds anyway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The release build of the switchyard binary: cargo builds a package's binaries before its
/// benches and tells the bench where it put them.
pub const SWITCHYARD_EXE: &str = env!("CARGO_BIN_EXE_switchyard");

/// `--switchyard-bin`: another build to run as "switchyard" in every scenario.
pub static SWITCHYARD_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The switchyard binary this run measures.
pub fn switchyard_exe() -> &'static str {
    SWITCHYARD_OVERRIDE.get().map_or(SWITCHYARD_EXE, String::as_str)
}

/// Flags switchyard runs with in every scenario. The per-session send limiter (200 POSTs/s by
/// default, to stop one abusive client) would otherwise turn a closed loop into 429s: its
/// threshold is lifted, its bookkeeping still runs on every POST.
pub const SWITCHYARD_ARGS: &[&str] = &["--send-rate", "1000000", "--send-burst", "1000000"];

/// Environment switchyard runs with in every scenario: the per-address limit on new sessions
/// (`--max-new-sessions-per-ip`, 120 a minute by default) is off, since every load-generator
/// session comes from one loopback address. Set through the environment rather than the flag
/// so that an older build given with `--alt-bin` or `--switchyard-bin`, which has no such flag,
/// still starts.
pub const SWITCHYARD_ENV: &[(&str, &str)] = &[("SWITCHYARD_MAX_NEW_SESSIONS_PER_IP", "0")];

/// The core servers run on; the load generator runs on core 0.
pub const SERVER_CORE: usize = 1;

/// `target/`, found from where cargo put the binary (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    let exe = Path::new(SWITCHYARD_EXE);
    exe.parent().and_then(Path::parent).map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// What to run as a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `target/release/switchyard` with its default app: what users run.
    Switchyard,
    /// tokio-tungstenite, one fixed frame per text frame.
    WsBaseline,
    /// axum SSE + POST (+ long-poll) over an in-memory map sid -> channel.
    SseBaseline,
    /// Another build of switchyard (`--alt-bin`), to measure a change against the current one.
    Alt,
    /// socketioxide 0.18 serving the seed's app (the `socketio` scenario).
    Socketioxide,
    /// Node's socket.io 4.8 serving the seed's app (`tests/client/socketio_server.mjs`).
    NodeSocketIo,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Switchyard => "switchyard",
            Kind::WsBaseline => "raw WS baseline",
            Kind::SseBaseline => "SSE+POST baseline",
            Kind::Alt => "switchyard (alt build)",
            Kind::Socketioxide => "socketioxide",
            Kind::NodeSocketIo => "Node socket.io",
        }
    }
}

/// A running server process; killed when dropped.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pid: u32,
    child: Child,
}

impl Server {
    /// Starts `kind` on a free loopback port, pinned to [`SERVER_CORE`] unless `pin` is false,
    /// and waits until it accepts connections.
    pub async fn start(kind: Kind, pin: bool, tag: &str) -> anyhow::Result<Server> {
        Server::start_exe(kind, None, pin, tag).await
    }

    /// Like [`Server::start`]; `exe` overrides the switchyard binary (for [`Kind::Alt`]).
    pub async fn start_exe(kind: Kind, exe: Option<&str>, pin: bool, tag: &str) -> anyhow::Result<Server> {
        Server::start_env(kind, exe, pin, tag, &[]).await
    }

    /// Like [`Server::start_exe`], with more environment for switchyard (settings of one
    /// scenario, such as `SWITCHYARD_BUFFER`; older builds read them too).
    pub async fn start_env(kind: Kind, exe: Option<&str>, pin: bool, tag: &str, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let logs = target_dir().join("bench-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{tag}.log"));
        let mut argv: Vec<String> = match kind {
            Kind::Switchyard | Kind::Alt => {
                let mut argv = vec![exe.unwrap_or(switchyard_exe()).to_string(), "--bind".into(), addr.to_string()];
                argv.extend(SWITCHYARD_ARGS.iter().map(ToString::to_string));
                argv
            }
            Kind::NodeSocketIo => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/socketio_server.mjs");
                vec!["node".into(), script.to_string_lossy().into_owned(), addr.port().to_string()]
            }
            _ => {
                let me = std::env::current_exe()?.to_string_lossy().into_owned();
                let name = match kind {
                    Kind::WsBaseline => "ws-baseline",
                    Kind::SseBaseline => "sse-baseline",
                    Kind::Socketioxide => "socketioxide",
                    Kind::Switchyard | Kind::Alt | Kind::NodeSocketIo => unreachable!(),
                };
                vec![me, "__serve".into(), name.into(), addr.to_string()]
            }
        };
        if pin {
            let mut pinned = vec!["taskset".to_string(), "-c".into(), SERVER_CORE.to_string()];
            pinned.append(&mut argv);
            argv = pinned;
        }
        let mut command = Command::new(&argv[0]);
        if matches!(kind, Kind::Switchyard | Kind::Alt) {
            command.envs(SWITCHYARD_ENV.iter().copied()).envs(env.iter().copied());
        }
        command
            .args(&argv[1..])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {argv:?}"))?;
        // taskset execs the program, so the child's pid is the server's.
        let pid = child.id().context("child has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{} exited before listening ({status}); see {}", kind.label(), log.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 15 s; see {}", kind.label(), log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Server { kind, addr, log, pid, child })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// [`anon_kib`] of the server.
    pub fn anon_kib(&self) -> u64 {
        anon_kib(self.pid)
    }

    /// Whether the process is still running (a crash under load is a finding, not a hang).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`); 0 if unreadable.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Resident set size from `/proc/PID/status` (`VmRSS`, in KiB); 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of a process's RSS in KiB (`RssAnon`): its heap, stacks and other
/// private memory, without the pages of its executable and libraries (`RssFile`), which grow as
/// code runs for the first time, not with what the process holds.
pub fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start at field 3, so utime (14) and stime (15) are the 12th and 13th of them.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Pins this process (every thread it has and will have) to `core`. Called before the runtime
/// starts, so the runtime's threads inherit it; child processes inherit it too unless started
/// through `taskset`.
pub fn pin_self(core: usize) {
    let pid = std::process::id().to_string();
    match std::process::Command::new("taskset").args(["-a", "-p", "-c", &core.to_string(), &pid]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("warning: taskset failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(err) => eprintln!("warning: taskset not available ({err}); load generator not pinned"),
    }
}

/// CPU use of a process over a window, as a fraction of one core.
pub struct CpuWindow {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> CpuWindow {
        CpuWindow { pid, cpu: cpu_seconds(pid), at: Instant::now() }
    }

    pub fn share(&self) -> f64 {
        let wall = self.at.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (cpu_seconds(self.pid) - self.cpu) / wall
    }
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`, machine-wide). A client whose SYN is dropped
/// retries after a second, so a rise here explains a slow "time to open".
pub fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Memory the kernel holds in TCP socket buffers, machine-wide (`TCP: ... mem` of
/// `/proc/net/sockstat`, in pages), in KiB. Not part of any process's RSS: what a client that
/// stops reading costs the kernel rather than the server process.
pub fn tcp_mem_kib() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).find(|w| w[0] == "mem").and_then(|w| w[1].parse().ok())
        })
        .unwrap_or(0);
    // Pages of the kernel's accounting, 4 KiB on the machines this runs on.
    pages * 4
}

/// A `redis-server` of the run (cluster mode's store): its own process on a free loopback port,
/// pinned like the servers, with nothing written to disk (`--save "" --appendonly no`); killed
/// when dropped. Asked about itself with plain RESP requests over TCP ([`Redis::command`]).
pub struct Redis {
    pub addr: SocketAddr,
    pub log: PathBuf,
    pid: u32,
    child: Child,
}

impl Redis {
    /// Starts `exe` (a `redis-server`) on a free loopback port, pinned to [`SERVER_CORE`] unless
    /// `pin` is false, and waits until it answers `PING`.
    pub async fn start(exe: &str, pin: bool, tag: &str) -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let logs = target_dir().join("bench-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{tag}.log"));
        // Redis appends to its log file: start each run's afresh.
        std::fs::File::create(&log)?;
        let mut argv: Vec<String> = vec![exe.to_string()];
        let port = port.to_string();
        let dir = logs.to_string_lossy().into_owned();
        let logfile = log.to_string_lossy().into_owned();
        for (flag, value) in [
            ("--port", port.as_str()),
            ("--bind", "127.0.0.1"),
            ("--save", ""),
            ("--appendonly", "no"),
            ("--daemonize", "no"),
            ("--dir", dir.as_str()),
            ("--logfile", logfile.as_str()),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        if pin {
            let mut pinned = vec!["taskset".to_string(), "-c".into(), SERVER_CORE.to_string()];
            pinned.append(&mut argv);
            argv = pinned;
        }
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        let pid = child.id().context("child has no pid")?;
        let mut redis = Redis { addr, log, pid, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if matches!(redis.command(&["PING"]), Ok(ref pong) if pong == "PONG") {
                return Ok(redis);
            }
            if let Some(status) = redis.child.try_wait()? {
                bail!("redis-server exited before answering ({status}); see {}", redis.log.display());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on {addr} within 15 s; see {}", redis.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URL switchyard's `--redis` takes.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends one command as a RESP array of bulk strings on a new connection and returns the
    /// reply: a simple or bulk string as it is, an integer in decimal, an error as `Err`.
    /// Blocking, and quick on loopback: it is called at the edges of measured windows, where
    /// an await is not available.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        tcp.write_all(&request)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(parsed) = parse_reply(&reply) {
                return parsed;
            }
            let n = tcp.read(&mut buf)?;
            if n == 0 {
                bail!("Redis closed the connection mid-reply");
            }
            reply.extend_from_slice(&buf[..n]);
        }
    }

    /// `INFO SECTION` as `name -> value` (comment and blank lines left out).
    pub fn info(&self, section: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let text = self.command(&["INFO", section])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// `used_memory` of `INFO memory`: what Redis's allocator has handed out, in bytes.
    pub fn used_memory(&self) -> anyhow::Result<u64> {
        let info = self.info("memory")?;
        info.get("used_memory").context("INFO memory without used_memory")?.parse().context("used_memory")
    }

    /// `INFO commandstats`: per command, calls and microseconds so far (commands run inside
    /// scripts are counted too, under their own names).
    pub fn commandstats(&self) -> anyhow::Result<CommandStats> {
        let mut stats = CommandStats::default();
        for (key, value) in self.info("commandstats")? {
            let Some(name) = key.strip_prefix("cmdstat_") else { continue };
            let field = |f: &str| {
                value.split(',').find_map(|kv| kv.strip_prefix(f).and_then(|v| v.strip_prefix('='))).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            };
            stats.0.insert(name.to_owned(), (field("calls"), field("usec")));
        }
        Ok(stats)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Parses one RESP reply (simple string, error, integer, bulk string); `None` while incomplete.
fn parse_reply(buf: &[u8]) -> Option<anyhow::Result<String>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf.first()? {
        b'+' | b':' => Some(Ok(line)),
        b'-' => Some(Err(anyhow::anyhow!("Redis answered an error: {line}"))),
        b'$' => {
            let Ok(len) = line.parse::<i64>() else { return Some(Err(anyhow::anyhow!("bad bulk length {line:?}"))) };
            let Ok(len) = usize::try_from(len) else { return Some(Ok(String::new())) };
            let body = buf.get(end + 2..end + 2 + len)?;
            Some(Ok(String::from_utf8_lossy(body).into_owned()))
        }
        other => Some(Err(anyhow::anyhow!("unexpected RESP reply type {:?}", char::from(*other)))),
    }
}

/// Calls and microseconds per command name, from `INFO commandstats`.
#[derive(Debug, Clone, Default)]
pub struct CommandStats(pub std::collections::BTreeMap<String, (u64, u64)>);

impl CommandStats {
    /// What happened between `before` and `self`, leaving out `INFO` (the bench's own).
    pub fn since(&self, before: &CommandStats) -> CommandStats {
        let mut delta = CommandStats::default();
        for (name, &(calls, usec)) in &self.0 {
            if name == "info" {
                continue;
            }
            let (c0, u0) = before.0.get(name).copied().unwrap_or((0, 0));
            if calls > c0 {
                delta.0.insert(name.clone(), (calls - c0, usec.saturating_sub(u0)));
            }
        }
        delta
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &CommandStats) {
        for (name, &(calls, usec)) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }

    pub fn calls(&self, name: &str) -> u64 {
        self.0.get(name).map_or(0, |c| c.0)
    }

    pub fn usec(&self, name: &str) -> u64 {
        self.0.get(name).map_or(0, |c| c.1)
    }

    pub fn total_calls(&self) -> u64 {
        self.0.values().map(|c| c.0).sum()
    }
}
