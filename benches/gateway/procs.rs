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
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Switchyard => "switchyard",
            Kind::WsBaseline => "raw WS baseline",
            Kind::SseBaseline => "SSE+POST baseline",
            Kind::Alt => "switchyard (alt build)",
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
            _ => {
                let me = std::env::current_exe()?.to_string_lossy().into_owned();
                let name = match kind {
                    Kind::WsBaseline => "ws-baseline",
                    Kind::SseBaseline => "sse-baseline",
                    Kind::Switchyard | Kind::Alt => unreachable!(),
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

/// Resident set size from `/proc/PID/status` (`VmRSS`, in KiB); 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
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
