//! The benchmark suite of issue 5: round trips, latency and memory per session, fan-out, and the
//! one-process limit, for switchyard and for the limit baselines, in one run.
//!
//! ```sh
//! cargo bench --bench gateway                         # every scenario at its default size
//! cargo bench --bench gateway -- rtt --sessions 50 --seconds 10
//! cargo bench --bench gateway -- idle --idle 2000     # a smaller run
//! cargo bench --bench gateway -- cluster              # cluster mode on its own redis-servers
//! cargo bench --bench gateway -- socketio             # /socket.io/ against socketioxide and Node
//! ```
//!
//! The load generator (this process, on one tokio thread) runs on core 0; every server is a
//! separate process pinned to core 1 with `taskset`, so its CPU time and RSS come from
//! `/proc/PID`. switchyard is `target/release/switchyard` with its default app (the send
//! limiter's threshold lifted and the per-address limit on new sessions off, see
//! `procs::SWITCHYARD_ARGS` and `procs::SWITCHYARD_ENV`); fan-out goes through its publish API
//! (`POST /api/emit` to all). The baselines are this same binary re-executed with
//! `__serve KIND ADDR` (see `servers.rs`); `scale` spreads its clients over
//! child processes (`__hold`) with their own 127.0.0.x source addresses, because one process may
//! hold at most 20,000 files and one source address has ~28,000 ephemeral ports. `cluster`
//! starts its own `redis-server`s, pinned like the servers (see `cluster.rs`).
//! `scale --scale-tls` holds the same population over HTTPS (see `tls.rs`).
//!
//! The tables are printed at the end and written to `target/bench-report.md`. Server and load
//! generator CPU shares are in the tables on purpose: a ratio near 1 with the server below ~90 %
//! of its core means the load generator, not the server, set the pace.

mod client;
mod cluster;
mod http;
mod procs;
mod servers;
mod socketio;
mod tls;
mod ws;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

use client::{closed_loop, histogram, open_many, Endpoints, Held, LoopResult, Transport};
use procs::{CpuWindow, Kind, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Rtt,
    Idle,
    Fanout,
    Scale,
    /// rtt of healthy sessions with and without clients that never read their stream while
    /// events flood them: one slow session must not delay the others.
    Stuck,
    /// rtt of switchyard against another build of it (`--alt-bin`): how a change (`TCP_NODELAY`,
    /// WebSocket buffer sizes, ...) is measured. Not part of the default set.
    Compare,
    /// RSS per buffered event per session: SSE sessions that read and sessions that never read,
    /// after B broadcasts to all, before and after their buffers are full.
    History,
    /// Cluster mode (`--redis`) against the same binary in memory, on redis-servers it starts
    /// itself: round trips (one node; stream and POSTs on two nodes), Redis commands and CPU
    /// per round trip, fan-out over several nodes, idle memory on the node and in Redis. Not
    /// part of the default set (it needs `redis-server`; about 2 minutes).
    Cluster,
    /// The operator page's cost (issue 18): the server's CPU while it holds idle sessions, with
    /// no page open, then with one and with ten pages' streams (`/admin/stream`) open.
    Admin,
    /// HTTPS (issue 16) against plain HTTP, same binary, same run: WebSocket round trips over
    /// TLS, SSE+POST over HTTP/2 (one connection) against HTTP/1.1, and idle memory per TLS
    /// WebSocket and per SSE stream on HTTP/2 (a connection each, and 50 streams per
    /// connection). Not part of the default set.
    Tls,
    /// Socket.IO clients (issue 17): `/socket.io/` against socketioxide 0.18 and Node's
    /// socket.io 4.8, round trips over WebSocket and long-polling and idle memory per session
    /// (see `socketio.rs`). Not part of the default set (it needs Node and `npm ci` in
    /// tests/client).
    Socketio,
}

/// A transport `rtt` measures (`--rtt-transports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RttTransport {
    Ws,
    Sse,
    Poll,
}

impl RttTransport {
    fn transport(self) -> Transport {
        match self {
            RttTransport::Ws => Transport::Ws,
            RttTransport::Sse => Transport::Sse,
            RttTransport::Poll => Transport::Poll,
        }
    }
}

/// switchyard's load generator and baselines (issue 5).
#[derive(Debug, Parser)]
#[command(name = "gateway")]
struct Args {
    /// Scenarios to run, in this order; all of them when none is named.
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// rtt, nodelay: concurrent sessions, each in a closed loop.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// rtt, nodelay: measured seconds per transport, server and round.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// rtt: paired rounds (baseline then switchyard, then the other way round) per transport;
    /// the ratio reported is the median of the rounds' ratios. Many short rounds rather than a
    /// few long ones: a pair measured within seconds of each other sees the same machine, and
    /// the median of nine shrugs off the odd round the host slowed in the middle of.
    #[arg(long, default_value_t = 9)]
    alternations: usize,
    /// rtt: the transports measured, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws,sse,poll")]
    rtt_transports: Vec<RttTransport>,
    /// rtt, nodelay: warm-up seconds before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// idle: sessions to open and hold, per transport and server.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// fanout: SSE sessions that each get the event.
    #[arg(long, default_value_t = 8_000)]
    fanout: usize,
    /// fanout: events sent, one at a time.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// scale: sessions to hold in one server process (half WebSocket, half SSE).
    #[arg(long, default_value_t = 19_000)]
    scale: usize,
    /// scale: load-generator processes holding them, each with its own 127.0.0.x address.
    #[arg(long, default_value_t = 4)]
    scale_procs: usize,
    /// scale: WebSocket sessions of the small rtt load measured at each population.
    #[arg(long, default_value_t = 10)]
    scale_rtt: usize,
    /// scale: pause between one rtt session's round trips, in ms (a small load, not saturation).
    #[arg(long, default_value_t = 5)]
    scale_pause_ms: u64,
    /// scale: measured seconds of the rtt load at each population.
    #[arg(long, default_value_t = 3.0)]
    scale_seconds: f64,
    /// scale: broadcasts of `--history-payload` bytes sent to all once the population is held
    /// (then RSS and rtt again, with every session's buffer holding them); 0 for none.
    #[arg(long, default_value_t = 0)]
    scale_broadcasts: usize,
    /// scale: serve HTTPS (a certificate the bench makes, as `tls` does) and hold the sessions
    /// over it: half WebSockets over TLS, half SSE streams multiplexed on HTTP/2 connections
    /// (`--tls-streams-per-connection` to a connection); the rtt load's WebSockets over TLS too.
    #[arg(long)]
    scale_tls: bool,
    /// scale: extra connections tried once the population is held, to run into the file limit.
    #[arg(long, default_value_t = 1_500)]
    overflow: usize,
    /// stuck: clients that open an SSE stream and never read it.
    #[arg(long, default_value_t = 200)]
    stuck: usize,
    /// stuck: measured seconds of the healthy sessions' rtt, per phase.
    #[arg(long, default_value_t = 3.0)]
    stuck_seconds: f64,
    /// stuck: healthy WebSocket sessions measured (paced like scale's rtt load).
    #[arg(long, default_value_t = 20)]
    stuck_rtt: usize,
    /// history: SSE sessions that read every broadcast.
    #[arg(long, default_value_t = 1_000)]
    history_readers: usize,
    /// history: SSE sessions that never read their stream (a 4 KiB receive buffer, never read).
    #[arg(long, default_value_t = 200)]
    history_stalled: usize,
    /// history: WebSocket sessions that never read theirs (likewise).
    #[arg(long, default_value_t = 200)]
    history_stalled_ws: usize,
    /// history: broadcasts to all sent in total at each step (comma-separated, increasing).
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    history_steps: Vec<usize>,
    /// admin: idle sessions held (half WebSocket, half SSE) while the page's cost is measured.
    #[arg(long, default_value_t = 10_000)]
    admin_sessions: usize,
    /// admin: measured seconds of server CPU for each number of pages open.
    #[arg(long, default_value_t = 30.0)]
    admin_seconds: f64,
    /// tls: idle sessions held per layout (TLS WebSocket, SSE over HTTP/2, and their plain
    /// counterparts).
    #[arg(long, default_value_t = 2_000)]
    tls_idle: usize,
    /// tls: SSE streams per HTTP/2 connection in the shared-connection layout.
    #[arg(long, default_value_t = 50)]
    tls_streams_per_connection: usize,
    /// history, and scale's broadcasts: each broadcast's data, in bytes of JSON.
    #[arg(long, default_value_t = 512)]
    history_payload: usize,
    /// history, scale: the server's `--buffer` (events kept per session).
    #[arg(long, default_value_t = 1024)]
    history_buffer: usize,
    /// idle, fanout, scale: sessions being opened at once (per process).
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// idle, fanout, scale: seconds to wait after opening before reading RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// cluster: the parts to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rtt,fanout,idle")]
    cluster_parts: Vec<cluster::Part>,
    /// cluster: `--redis` nodes the fan-out's sessions are spread over (`--fanout` sessions,
    /// `--rounds` publishes).
    #[arg(long, default_value_t = 3)]
    cluster_nodes: usize,
    /// cluster: idle sessions to open and hold, per transport and setup.
    #[arg(long, default_value_t = 5_000)]
    cluster_idle: usize,
    /// cluster: the `redis-server` to run.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Run this switchyard binary instead of the one cargo built (e.g. a scratch build).
    #[arg(long)]
    switchyard_bin: Option<String>,
    /// compare: the other switchyard binary (e.g. a scratch build with one change).
    #[arg(long)]
    alt_bin: Option<String>,
    /// compare: what the other binary changes, for the table.
    #[arg(long, default_value = "alt build")]
    alt_label: String,
    /// Do not pin the load generator and servers to cores.
    #[arg(long)]
    no_pin: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("__serve") => return servers::main(&argv[2..]),
        Some("__hold") => return client::hold_main(&argv[2..]),
        Some("__drive") => return client::drive_main(&argv[2..]),
        _ => {}
    }
    let args = Args::parse();
    if let Some(bin) = &args.switchyard_bin {
        let _ = procs::SWITCHYARD_OVERRIDE.set(bin.clone());
    }
    if !args.no_pin {
        procs::pin_self(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut scenarios = args.scenarios.clone();
    if scenarios.is_empty() {
        scenarios = vec![Scenario::Rtt, Scenario::Idle, Scenario::Fanout, Scenario::Scale, Scenario::Stuck, Scenario::History, Scenario::Admin];
    }
    let load_before = loadavg();
    let started = Instant::now();
    let mut sections = Vec::new();
    for scenario in &scenarios {
        eprintln!("== {scenario:?}");
        let section = match scenario {
            Scenario::Rtt => rtt(&args).await,
            Scenario::Idle => idle(&args).await,
            Scenario::Fanout => fanout(&args).await,
            Scenario::Scale => scale(&args).await,
            Scenario::Stuck => stuck(&args).await,
            Scenario::Compare => compare(&args).await,
            Scenario::History => history(&args).await,
            Scenario::Cluster => cluster::cluster(&args).await,
            Scenario::Admin => admin(&args).await,
            Scenario::Tls => tls::tls(&args).await,
            Scenario::Socketio => socketio::socketio(&args).await,
        };
        match section {
            Ok(text) => {
                eprintln!("{text}");
                sections.push(text);
            }
            Err(err) => {
                let text = format!("### {scenario:?}\n\nFAILED: {err:#}\n");
                eprintln!("{text}");
                sections.push(text);
            }
        }
    }
    let mut report = String::new();
    writeln!(report, "## Benchmark report\n")?;
    writeln!(report, "- command: `{}`", command_line())?;
    writeln!(report, "- when: {} (took {:.0} s)", utc_now(), started.elapsed().as_secs_f64())?;
    writeln!(report, "- machine: {}", machine())?;
    let env: Vec<String> = procs::SWITCHYARD_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(report, "- switchyard: `{} {} {}`", env.join(" "), procs::switchyard_exe(), procs::SWITCHYARD_ARGS.join(" "))?;
    writeln!(report, "- load average before / after: {load_before} / {}", loadavg())?;
    writeln!(
        report,
        "- pinning: {}\n",
        if args.no_pin { "none".into() } else { format!("load generator on core 0, servers on core {}", procs::SERVER_CORE) }
    )?;
    for section in sections {
        writeln!(report, "{section}")?;
    }
    println!("\n{report}");
    let path = procs::target_dir().join("bench-report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rtt

struct RttRow {
    transport: Transport,
    server: Kind,
    result: LoopResult,
    server_cpu: f64,
    loadgen_cpu: f64,
}

/// Runs one closed loop against `server`, with the CPU shares of the measured window.
async fn measure_loop(
    server: &Server,
    to: Endpoints,
    transport: Transport,
    sessions: usize,
    warmup: Duration,
    seconds: Duration,
    pause: Duration,
) -> RttRow {
    // The raw WebSocket baseline sends no `session` hello; everything else does.
    let hello = !(server.kind == Kind::WsBaseline);
    let mut windows: Option<(CpuWindow, CpuWindow)> = None;
    let mut shares = (0.0, 0.0);
    let result = closed_loop(transport, to, sessions, hello, warmup, seconds, pause, |start| {
        if start {
            windows = Some((CpuWindow::start(server.pid()), CpuWindow::start(std::process::id())));
        } else if let Some((srv, me)) = &windows {
            shares = (srv.share(), me.share());
        }
    })
    .await;
    RttRow { transport, server: server.kind, result, server_cpu: shares.0, loadgen_cpu: shares.1 }
}

fn q(h: &Histogram<u64>, quantile: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(quantile)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

async fn rtt(args: &Args) -> anyhow::Result<String> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);
    let pin = !args.no_pin;
    let switchyard = Server::start(Kind::Switchyard, pin, "rtt-switchyard").await?;
    let ws_base = Server::start(Kind::WsBaseline, pin, "rtt-ws-baseline").await?;
    let sse_base = Server::start(Kind::SseBaseline, pin, "rtt-sse-baseline").await?;
    // The machine's speed drifts over a run (other tenants of the host), by more than the
    // differences measured here. So each transport is measured in paired rounds, the order
    // swapped every round, and the ratio reported is the median of the rounds' ratios; the
    // table's figures are all rounds together.
    let rounds = args.alternations.max(1);
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut per_round_rows = Vec::new();
    let mut loads = Vec::new();
    for transport in args.rtt_transports.iter().map(|t| t.transport()) {
        let baseline = if transport == Transport::Ws { &ws_base } else { &sse_base };
        let load_before = loadavg();
        let (mut base_rounds, mut sy_rounds) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 { [baseline, &switchyard] } else { [&switchyard, baseline] };
            for server in order {
                eprintln!("  {} against {} (round {}/{rounds}) ...", transport.label(), server.kind.label(), round + 1);
                let row = measure_loop(server, Endpoints::single(server.addr), transport, args.sessions, warmup, seconds, Duration::ZERO).await;
                if server.kind == Kind::Switchyard { sy_rounds.push(row) } else { base_rounds.push(row) }
            }
        }
        loads.push((load_before, loadavg()));
        for (i, (b, s)) in base_rounds.iter().zip(&sy_rounds).enumerate() {
            per_round_rows.push(RoundRow {
                label: transport.label(),
                round: i + 1,
                base: (b.result.rate(), b.server_cpu, b.loadgen_cpu),
                sy: (s.result.rate(), s.server_cpu, s.loadgen_cpu),
            });
        }
        let mut per_round: Vec<f64> =
            base_rounds.iter().zip(&sy_rounds).map(|(b, s)| ratio(s.result.rate(), b.result.rate())).collect();
        per_round.sort_by(f64::total_cmp);
        ratios.push(per_round);
        rows.push(merge_rounds(base_rounds));
        rows.push(merge_rounds(sy_rounds));
    }
    let mut out = String::new();
    writeln!(
        out,
        "### rtt: {} sessions in closed loops, {rounds} paired rounds of {} s measured after {} s warm-up\n",
        args.sessions, args.seconds, args.warmup
    )?;
    out.push_str(&rtt_table(&rows));
    writeln!(
        out,
        "\n| transport | rt/s ratio (median of rounds) | rounds' ratios | target | p99 ratio | target | | at the baseline's rate: loadgen CPU / server CPU | load average before / after |\n|---|---:|---|---:|---:|---:|---|---:|---|"
    )?;
    for ((pair, per_round), (load_before, load_after)) in rows.chunks(2).zip(&ratios).zip(&loads) {
        let [base, sy] = pair else { continue };
        let rate = per_round[per_round.len() / 2];
        let p99 = ratio(q(&sy.result.latencies, 0.99) as f64, q(&base.result.latencies, 0.99) as f64);
        let (rate_target, p99_target) = (0.95, 1.2);
        let listed: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        let client_share = ratio(base.loadgen_cpu, base.server_cpu);
        writeln!(
            out,
            "| {} | {:.2} | {} | >= {rate_target} | {:.2} | <= {p99_target} | {} | {:.2} ({}) | {load_before} / {load_after} |",
            sy.transport.label(),
            rate,
            listed.join(", "),
            p99,
            met(rate >= rate_target && p99 <= p99_target),
            client_share,
            if client_share < 1.0 { "client below the server" } else { "client NOT below the server" },
        )?;
    }
    out.push_str(&rounds_table("baseline", &per_round_rows));
    Ok(out)
}

/// One paired round of `rtt` (or `socketio`): (round trips/s, server CPU share, load-generator
/// CPU share) of the baseline and of switchyard.
struct RoundRow {
    /// What was measured (the transport).
    label: &'static str,
    round: usize,
    base: (f64, f64, f64),
    sy: (f64, f64, f64),
}

/// The table of paired rounds, one line per round: each server's rate with the server's and the
/// load generator's CPU, and the round's ratio. `baseline` names the server switchyard is paired
/// with.
fn rounds_table(baseline: &str, rows: &[RoundRow]) -> String {
    let mut out = format!(
        "\nEach round: round trips/s, server CPU and load-generator CPU (share of one core each, over the measured window), {baseline} then switchyard.\n\n| transport | round | {baseline} rt/s | server | loadgen | switchyard rt/s | server | loadgen | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} % | {:.0} % | {:.0} | {:.0} % | {:.0} % | {:.2} |",
            row.label,
            row.round,
            row.base.0,
            row.base.1 * 100.0,
            row.base.2 * 100.0,
            row.sy.0,
            row.sy.1 * 100.0,
            row.sy.2 * 100.0,
            ratio(row.sy.0, row.base.0)
        );
    }
    out
}

/// The median of the rounds' ratios (switchyard's rate over the baseline's), and the ratios
/// sorted.
fn median_ratio<'a>(rows: impl IntoIterator<Item = &'a RoundRow>) -> (f64, Vec<f64>) {
    let mut ratios: Vec<f64> = rows.into_iter().map(|r| ratio(r.sy.0, r.base.0)).collect();
    ratios.sort_by(f64::total_cmp);
    (ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN), ratios)
}

/// One server's rounds as one row: round trips and latencies of all rounds, CPU shares averaged.
fn merge_rounds(rounds: Vec<RttRow>) -> RttRow {
    let n = rounds.len() as f64;
    let mut rounds = rounds.into_iter();
    let mut merged = rounds.next().expect("at least one round");
    merged.server_cpu /= n;
    merged.loadgen_cpu /= n;
    for row in rounds {
        merged.result.latencies.add(&row.result.latencies).expect("histograms with the same bounds");
        merged.result.errors += row.result.errors;
        merged.result.seconds += row.result.seconds;
        merged.server_cpu += row.server_cpu / n;
        merged.loadgen_cpu += row.loadgen_cpu / n;
    }
    merged
}

fn rtt_table(rows: &[RttRow]) -> String {
    let mut out = String::from(
        "| transport | server | round trips/s | p50 µs | p99 µs | p99.9 µs | errors | server CPU | loadgen CPU | server CPU µs per round trip | loadgen CPU µs per round trip |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let h = &row.result.latencies;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0} % | {:.0} % | {:.1} | {:.1} |",
            row.transport.label(),
            row.server.label(),
            row.result.rate(),
            q(h, 0.5),
            q(h, 0.99),
            q(h, 0.999),
            row.result.errors,
            row.server_cpu * 100.0,
            row.loadgen_cpu * 100.0,
            ratio(row.server_cpu * 1e6, row.result.rate()),
            ratio(row.loadgen_cpu * 1e6, row.result.rate())
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// idle

async fn idle(args: &Args) -> anyhow::Result<String> {
    let settle = Duration::from_secs_f64(args.settle);
    let mut out = String::new();
    writeln!(out, "### idle: {} sessions opened ({} at a time) and held, RSS growth from /proc/PID/status\n", args.idle, args.open_concurrency)?;
    writeln!(out, "Listen overflows: connections the kernel dropped because the server's accept queue was full while opening (machine-wide count); each costs its client a 1 s SYN retry.\n")?;
    writeln!(out, "| transport | server | held | failed | time to open | listen overflows | RSS before | RSS held | KiB/session | target | |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for (transport, baseline, target) in [(Transport::Ws, Kind::WsBaseline, 8.0), (Transport::Sse, Kind::SseBaseline, 10.0)] {
        for kind in [baseline, Kind::Switchyard] {
            eprintln!("  {} idle against {} ...", transport.label(), kind.label());
            let tag = format!("idle-{}-{}", transport.label(), kind.label()).replace([' ', '+'], "-");
            let mut server = Server::start(kind, !args.no_pin, &tag).await?;
            sleep(Duration::from_millis(300)).await;
            let before = server.rss_kib();
            let mut held = Held::default();
            let opened_at = Instant::now();
            let overflows = procs::listen_overflows();
            let hello = kind != Kind::WsBaseline;
            let failed =
                open_many(&mut held, |_| transport, args.idle, &[server.addr], None, args.open_concurrency, hello, None).await;
            let took = opened_at.elapsed();
            let overflows = procs::listen_overflows().saturating_sub(overflows);
            sleep(settle).await;
            let after = server.rss_kib();
            let alive = server.alive();
            let per = (after.saturating_sub(before)) as f64 / held.len().max(1) as f64;
            let verdict = if kind == Kind::Switchyard { met(per <= target && failed == 0 && alive) } else { "baseline" };
            writeln!(
                out,
                "| {} | {}{} | {} | {} | {:.2} s | {overflows} | {:.1} MiB | {:.1} MiB | {:.2} | {} | {} |",
                transport.label(),
                kind.label(),
                if alive { "" } else { " (DIED)" },
                held.len(),
                failed,
                took.as_secs_f64(),
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                per,
                if kind == Kind::Switchyard { format!("<= {target}") } else { "-".into() },
                verdict
            )?;
            drop(held);
            drop(server);
            // Let the closed sockets go before the next server starts.
            sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// admin

/// The operator page's cost: switchyard holding `--admin-sessions` idle sessions, its CPU over
/// `--admin-seconds` with no page open (the expiry sweep and the page's sampling task, which
/// runs whether or not anyone watches), then with 1 and 10 pages' streams read. Issue 18's
/// target: the page costs less than 1 % of a core with 10,000 sessions held.
async fn admin(args: &Args) -> anyhow::Result<String> {
    let window = Duration::from_secs_f64(args.admin_seconds);
    let mut server = Server::start(Kind::Switchyard, !args.no_pin, "admin").await?;
    let client = client::http_client(None);
    let mut held = Held::default();
    eprintln!("  holding {} sessions ...", args.admin_sessions);
    let transports = |i: usize| if i.is_multiple_of(2) { Transport::Ws } else { Transport::Sse };
    let failed = open_many(&mut held, transports, args.admin_sessions, &[server.addr], None, args.open_concurrency, true, None).await;
    // The opening burst's work (and the first sweeps of a full table) out of the way.
    sleep(Duration::from_secs_f64(args.settle) + Duration::from_secs(2)).await;
    let mut rows = Vec::new();
    for pages in [0usize, 1, 10] {
        let (bytes_tx, mut bytes_rx) = mpsc::unbounded_channel::<usize>();
        let mut readers = Vec::new();
        for _ in 0..pages {
            let (client, url, bytes_tx) = (client.clone(), format!("http://{}/admin/stream", server.addr), bytes_tx.clone());
            readers.push(tokio::spawn(async move {
                let Ok(response) = client.get(url).send().await else { return };
                let mut body = response.bytes_stream();
                while let Some(Ok(chunk)) = body.next().await {
                    let _ = bytes_tx.send(chunk.len());
                }
            }));
        }
        drop(bytes_tx);
        // Every page has its history and a first tick before the window starts.
        sleep(Duration::from_secs(2)).await;
        while bytes_rx.try_recv().is_ok() {}
        eprintln!("  {pages} page(s) open: measuring {} s ...", window.as_secs_f64());
        let cpu = CpuWindow::start(server.pid());
        sleep(window).await;
        let share = cpu.share();
        let mut bytes = 0;
        while let Ok(n) = bytes_rx.try_recv() {
            bytes += n;
        }
        for reader in readers {
            reader.abort();
        }
        rows.push((pages, share, bytes as f64 / window.as_secs_f64()));
        sleep(Duration::from_millis(500)).await;
    }
    let alive = server.alive();
    let none = rows[0].1;
    let mut out = String::new();
    writeln!(
        out,
        "### admin: the operator page's cost, {} idle sessions held (half WebSocket, half SSE; {failed} failed to open), server CPU over {:.0} s each
",
        held.len(),
        window.as_secs_f64()
    )?;
    writeln!(out, "| pages open | server CPU | more than with none | stream bytes/s (all pages) | target | |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|---|")?;
    for (pages, share, rate) in &rows {
        let more = share - none;
        let verdict = if *pages == 0 { "baseline".to_owned() } else { met(more < 0.01 && alive).to_owned() };
        writeln!(
            out,
            "| {pages} | {:.3} % | {:+.3} % | {rate:.0} | {} | {verdict} |",
            share * 100.0,
            more * 100.0,
            if *pages == 0 { "-" } else { "< 1 %" }
        )?;
    }
    writeln!(out, "
With no page open the figure includes the expiry task's sweep of every session and the page's sampling task (once a second each).")?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// fanout

struct FanoutRow {
    kind: Kind,
    /// Published to a room every session joined, rather than to all sessions.
    room: bool,
    held: usize,
    /// Per round: (sessions that got it within the deadline, time until the last one had it).
    rounds: Vec<(usize, Duration)>,
    latencies: Histogram<u64>,
}

async fn fanout(args: &Args) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    // switchyard twice: to everyone, and to a room all the sessions joined (issue 6's target).
    for (kind, room) in [(Kind::SseBaseline, false), (Kind::Switchyard, false), (Kind::Switchyard, true)] {
        eprintln!("  fanout to {} SSE sessions of {}{} ...", args.fanout, kind.label(), if room { " in a room" } else { "" });
        let tag = format!("fanout-{}{}", kind.label(), if room { "-room" } else { "" }).replace([' ', '+', '(', ')'], "-");
        let server = Server::start(kind, !args.no_pin, &tag).await?;
        let client = client::http_client(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut held = Held::default();
        open_many(&mut held, |_| Transport::Sse, args.fanout, &[server.addr], None, args.open_concurrency, true, Some(tx))
            .await;
        // The baseline's broadcast route, or switchyard's publish API (loopback needs no key).
        let (trigger, body) = match (kind, room) {
            (Kind::SseBaseline, _) => (format!("http://{}/broadcast", server.addr), String::new()),
            (_, false) => (
                format!("http://{}/api/emit", server.addr),
                r#"{"to":{"all":true},"event":"fanout","data":"tick"}"#.to_string(),
            ),
            (_, true) => (
                format!("http://{}/api/emit", server.addr),
                r#"{"to":{"room":"fan"},"event":"fanout","data":"tick"}"#.to_string(),
            ),
        };
        if room {
            // Every held session joins the room through the membership API.
            let url = format!("http://{}/api/rooms/fan/members", server.addr);
            let joins = futures_util::stream::iter(held.sids.clone())
                .map(|sid| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let body = serde_json::json!({ "sid": sid }).to_string();
                        client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await
                    }
                })
                .buffer_unordered(64)
                .filter(|r| std::future::ready(r.as_ref().is_ok_and(|r| r.status().is_success())))
                .count()
                .await;
            if joins != held.sids.len() {
                bail!("only {joins} of {} sessions joined the room", held.sids.len());
            }
        }
        sleep(Duration::from_secs_f64(args.settle)).await;
        let mut row = FanoutRow { kind, room, held: held.len(), rounds: Vec::new(), latencies: histogram() };
        for _ in 0..args.rounds {
            fanout_round(&client, &trigger, &body, &mut rx, &mut row).await?;
            sleep(Duration::from_millis(300)).await;
        }
        rows.push(row);
        drop(held);
        drop(server);
        sleep(Duration::from_millis(500)).await;
    }
    let mut out = String::new();
    writeln!(out, "### fanout: one event to each of {} SSE sessions, {} rounds\n", args.fanout, args.rounds)?;
    writeln!(out, "Triggered by `POST /api/emit` with `{{\"to\":{{\"all\":true}}}}`, or (room) `{{\"to\":{{\"room\":\"fan\"}}}}` after every session joined `fan` through `POST /api/rooms/fan/members` (the baseline: `POST /broadcast`); times run from sending that request until the load generator has parsed the event on each stream.\n")?;
    writeln!(out, "| server | sessions | received (all rounds) | median time to last | worst time to last | p50 | p99 | target | |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    let mut medians = Vec::new();
    for row in &rows {
        let label = if row.room { format!("{} (room)", row.kind.label()) } else { row.kind.label().to_string() };
        let target = (row.kind != Kind::SseBaseline).then_some(Duration::from_millis(200));
        let (line, median) = fanout_line(&label, row, args.fanout, target, "baseline");
        writeln!(out, "{line}")?;
        medians.push(median);
    }
    if let [base, sy, sy_room] = medians[..] {
        writeln!(
            out,
            "\nswitchyard / baseline, median time to last: {:.2} to all, {:.2} to the room",
            ratio(sy.as_secs_f64(), base.as_secs_f64()),
            ratio(sy_room.as_secs_f64(), base.as_secs_f64())
        )?;
    }
    Ok(out)
}

/// One fan-out round: sends `body` to `trigger` (the publish API, or the baseline's broadcast
/// route), then waits (up to 10 s) until each of `row.held` sessions has reported the event on
/// `rx`; records the round (sessions reached, time to the last) and every latency in `row`.
/// Returns the trigger's answer.
async fn fanout_round(
    client: &reqwest::Client,
    trigger: &str,
    body: &str,
    rx: &mut mpsc::UnboundedReceiver<Instant>,
    row: &mut FanoutRow,
) -> anyhow::Result<String> {
    while rx.try_recv().is_ok() {}
    let sent = Instant::now();
    let response = client
        .post(trigger)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await?
        .error_for_status()?;
    let answer = String::from_utf8_lossy(&response.bytes().await?).into_owned();
    let deadline = sent + Duration::from_secs(10);
    let mut got = 0;
    let mut last = Duration::ZERO;
    while got < row.held {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(at)) => {
                got += 1;
                let latency = at.saturating_duration_since(sent);
                last = last.max(latency);
                let _ = row.latencies.record(latency.as_micros().max(1) as u64);
            }
            _ => break,
        }
    }
    row.rounds.push((got, last));
    Ok(answer)
}

/// A fan-out table row (server or setup, sessions, received, median and worst time to the last
/// session, p50, p99, target, verdict) and the median time to the last. Without a target the
/// verdict column says `untargeted`.
fn fanout_line(label: &str, row: &FanoutRow, wanted: usize, target: Option<Duration>, untargeted: &str) -> (String, Duration) {
    let mut lasts: Vec<Duration> = row.rounds.iter().map(|r| r.1).collect();
    lasts.sort();
    let median = lasts.get(lasts.len() / 2).copied().unwrap_or_default();
    let worst = lasts.last().copied().unwrap_or_default();
    let received: usize = row.rounds.iter().map(|r| r.0).sum();
    let expected = row.held * row.rounds.len();
    let line = format!(
        "| {label} | {} | {received} / {expected} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
        row.held,
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        q(&row.latencies, 0.5) as f64 / 1e3,
        q(&row.latencies, 0.99) as f64 / 1e3,
        target.map_or("-".into(), |t| format!("<= {} ms", t.as_millis())),
        match target {
            Some(t) => met(median <= t && received == expected && row.held == wanted),
            None => untargeted,
        }
    );
    (line, median)
}

// ---------------------------------------------------------------------------------------------
// scale

/// A `__hold` child process and its command pipe.
struct Holder {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Holder {
    /// A child holding sessions at `addr` from `local`; with `tls` (the CA's path and the SSE
    /// streams per HTTP/2 connection), HTTPS ones.
    fn spawn(addr: std::net::SocketAddr, local: IpAddr, concurrency: usize, tls: Option<(&str, usize)>) -> anyhow::Result<Holder> {
        let mut argv = vec![addr.to_string(), local.to_string(), concurrency.to_string()];
        if let Some((ca, per_conn)) = tls {
            argv.extend([ca.to_owned(), per_conn.to_string()]);
        }
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("__hold")
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
        Ok(Holder { child, stdin, lines })
    }

    async fn send(&mut self, target: usize) -> anyhow::Result<()> {
        self.stdin.write_all(format!("open {target}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    /// How many broadcasts the child's sessions have read, all together.
    async fn received(&mut self) -> anyhow::Result<usize> {
        self.stdin.write_all(b"count\n").await?;
        self.stdin.flush().await?;
        let line = timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .context("a load-generator child did not answer within 30 s")??
            .ok_or_else(|| anyhow!("a load-generator child exited"))?;
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["received", n] => Ok(n.parse()?),
            _ => bail!("unexpected answer {line:?}"),
        }
    }

    /// `(held, failed)` once the child has opened what it was told to.
    async fn answer(&mut self) -> anyhow::Result<(usize, usize)> {
        let line = timeout(Duration::from_secs(180), self.lines.next_line())
            .await
            .context("a load-generator child did not answer within 180 s")??
            .ok_or_else(|| anyhow!("a load-generator child exited"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["held", held, "failed", failed] => Ok((held.parse()?, failed.parse()?)),
            _ => bail!("unexpected answer {line:?}"),
        }
    }
}

async fn scale(args: &Args) -> anyhow::Result<String> {
    if args.scale_tls && args.scale_broadcasts > 0 {
        bail!("--scale-broadcasts is not counted over TLS (--scale-tls); run them apart");
    }
    let buffer = args.history_buffer.to_string();
    let mut env = vec![("SWITCHYARD_BUFFER", buffer.as_str())];
    let (cert, key, ca) = if args.scale_tls { tls::certificates()? } else { Default::default() };
    if args.scale_tls {
        client::set_tls(tls::client_config(&ca)?);
        env.extend(tls::tls_env(&cert, &key));
    }
    let tag = if args.scale_tls { "scale-switchyard-tls" } else { "scale-switchyard" };
    let mut server = Server::start_env(Kind::Switchyard, None, !args.no_pin, tag, &env).await?;
    let to = if args.scale_tls { Endpoints::tls(server.addr) } else { Endpoints::single(server.addr) };
    let per_conn = args.tls_streams_per_connection.max(1);
    let procs = args.scale_procs.max(1);
    let mut holders = (0..procs)
        .map(|k| {
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + k as u8));
            Holder::spawn(server.addr, local, args.open_concurrency, args.scale_tls.then_some((ca.as_str(), per_conn)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pause = Duration::from_millis(args.scale_pause_ms);
    let measured = Duration::from_secs_f64(args.scale_seconds);
    let settle = Duration::from_secs_f64(args.settle);
    sleep(Duration::from_millis(300)).await;
    let rss0 = server.rss_kib();
    let mut out = String::new();
    if args.scale_tls {
        writeln!(
            out,
            "### scale over HTTPS: up to {} sessions (half WebSockets over TLS, half SSE streams on HTTP/2 connections, {per_conn} to a connection) from {procs} load-generator processes, with {} WebSocket sessions over TLS doing round trips ({} ms apart)\n",
            args.scale, args.scale_rtt, args.scale_pause_ms
        )?;
    } else {
        writeln!(
            out,
            "### scale: up to {} sessions (half WebSocket, half SSE) from {procs} load-generator processes, with {} WebSocket sessions doing round trips ({} ms apart)\n",
            args.scale, args.scale_rtt, args.scale_pause_ms
        )?;
    }
    writeln!(out, "| population | held | failed | time to open step | RSS | KiB/session | rtt/s | p50 µs | p99 µs | p99.9 µs | p99 / p99 at 0 | errors |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut p99_at_zero = None;
    let mut summary = (0usize, 0.0f64, f64::NAN);
    let mut descriptors = 0;
    for percent in [0usize, 25, 50, 100] {
        let target = args.scale * percent / 100;
        let step_started = Instant::now();
        let (mut held, mut failed) = (0, 0);
        if target > 0 {
            let share = target.div_ceil(procs);
            for holder in &mut holders {
                holder.send(share).await?;
            }
            for holder in &mut holders {
                let (h, f) = holder.answer().await?;
                held += h;
                failed += f;
            }
        }
        let took = step_started.elapsed();
        eprintln!("  population {percent} %: {held} held, {failed} failed; measuring rtt ...");
        sleep(settle).await;
        let rss = server.rss_kib();
        let row = measure_loop(&server, to, Transport::Ws, args.scale_rtt, Duration::from_millis(500), measured, pause).await;
        let p99 = q(&row.result.latencies, 0.99);
        let base = *p99_at_zero.get_or_insert(p99);
        let per = if held > 0 { rss.saturating_sub(rss0) as f64 / held as f64 } else { f64::NAN };
        writeln!(
            out,
            "| {percent} % | {held} | {failed} | {:.1} s | {:.1} MiB | {:.2} | {:.0} | {} | {p99} | {} | {:.2} | {} |",
            took.as_secs_f64(),
            rss as f64 / 1024.0,
            per,
            row.result.rate(),
            q(&row.result.latencies, 0.5),
            q(&row.result.latencies, 0.999),
            ratio(p99 as f64, base as f64),
            row.result.errors
        )?;
        if percent == 100 {
            summary = (held, per, ratio(p99 as f64, base as f64));
            descriptors = procs::open_files(server.pid());
        }
        if !server.alive() {
            writeln!(out, "\nThe server process DIED at this population; see {}", server.log.display())?;
            return Ok(out);
        }
    }
    let (held, per, p99_ratio) = summary;
    writeln!(
        out,
        "\nTargets: {} sessions held: {}; RSS/session {:.2} KiB (no higher than idle; see the idle table); p99 at full population {:.2} x p99 at 0 (<= 2): {}. The server's open descriptors at full population: {descriptors}.",
        held,
        met(held >= 19_000),
        per,
        p99_ratio,
        met(p99_ratio <= 2.0)
    )?;
    if args.scale_broadcasts > 0 {
        scale_broadcasts(args, &server, &mut holders, held, &mut out).await?;
        if !server.alive() {
            writeln!(out, "\nThe server process DIED with full buffers; see {}", server.log.display())?;
            return Ok(out);
        }
    }

    // Past the file limit: what does a client see, and does the server come back?
    eprintln!("  trying {} more connections, past the process's file limit ...", args.overflow);
    let client = client::http_client(None);
    let url = format!("http://{}/sse", server.addr);
    let probes = futures_util::future::join_all((0..args.overflow).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let started = Instant::now();
            // An accepted stream is kept open until every probe is done, so that each one the
            // server takes holds its descriptor, as a real client would.
            let mut kept: Option<Box<dyn std::any::Any>> = None;
            let outcome = if args.scale_tls {
                // Over TLS a refused connection is closed, not answered (see `server/https.rs`).
                match timeout(Duration::from_secs(5), client::ws_open_tls(server.addr, None)).await {
                    Ok(Ok(ws)) => {
                        kept = Some(Box::new(ws));
                        "TLS WebSocket opened".to_string()
                    }
                    Ok(Err(err)) => format!("TLS WebSocket failed ({})", io_kind(err.as_ref())),
                    Err(_) => "no answer within 5 s".to_string(),
                }
            } else {
                match timeout(Duration::from_secs(5), client.get(&url).send()).await {
                    Ok(Ok(response)) => {
                        let status = format!("HTTP {}", response.status().as_u16());
                        kept = Some(Box::new(response));
                        status
                    }
                    Ok(Err(err)) => format!("{} ({})", if err.is_connect() { "connect error" } else { "connection error" }, io_kind(&err)),
                    Err(_) => "no answer within 5 s".to_string(),
                }
            };
            (outcome, started.elapsed(), kept)
        }
    }))
    .await;
    let mut outcomes: std::collections::BTreeMap<String, (usize, Duration)> = Default::default();
    let mut kept = Vec::new();
    for (outcome, took, response) in probes {
        let entry = outcomes.entry(outcome).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(took);
        kept.extend(response);
    }
    drop(kept);
    drop(client);
    sleep(Duration::from_secs(1)).await;
    let recovered_at = Instant::now();
    let recovered = if args.scale_tls {
        timeout(Duration::from_secs(10), client::ws_open_tls(server.addr, None)).await.map(|r| r.map(drop))
    } else {
        timeout(Duration::from_secs(10), client::ws_open(server.addr, None, true)).await.map(|r| r.map(drop))
    };
    let recovery = match recovered {
        Ok(Ok(())) => format!("a new WebSocket session opened {:.0} ms after the probes closed", recovered_at.elapsed().as_secs_f64() * 1e3),
        Ok(Err(err)) => format!("a new WebSocket session FAILED after the probes closed: {err:#}"),
        Err(_) => "a new WebSocket session did NOT open within 10 s after the probes closed".into(),
    };
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let limit_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            // (" 503": a bare "503" also matches timestamps.)
            l.contains("open files") || l.contains("file descriptor") || l.contains("emfile") || l.contains(" 503")
        })
        .collect();
    let probe = if args.scale_tls { "TLS WebSockets" } else { "SSE requests" };
    writeln!(out, "\nPast the limit ({} more {probe} with {} held): ", args.overflow, held)?;
    for (outcome, (count, slowest)) in &outcomes {
        writeln!(out, "- {outcome}: {count} (slowest {:.1} s)", slowest.as_secs_f64())?;
    }
    writeln!(out, "- server {}; {recovery}", if server.alive() { "still running" } else { "DIED" })?;
    writeln!(
        out,
        "- server log lines about the limit: {}{}",
        limit_lines.len(),
        limit_lines.first().map_or(String::new(), |l| format!(", first: `{}`", l.trim()))
    )?;
    if args.scale_tls {
        // Refused TLS connections are closed; short of the limit, none is refused.
        let refused: usize = outcomes.iter().filter(|(o, _)| o.starts_with("TLS WebSocket failed")).map(|(_, c)| c.0).sum();
        writeln!(out, "- refused connections closed: {refused}; a clear log line for them: {}", met(refused == 0 || !limit_lines.is_empty()))?;
    } else {
        let refused_503 = outcomes.get("HTTP 503").map_or(0, |o| o.0);
        writeln!(
            out,
            "- a clear log line and a 503 at the limit: {}",
            met(refused_503 > 0 && !limit_lines.is_empty() && server.alive())
        )?;
    }
    for holder in &mut holders {
        let _ = holder.stdin.write_all(b"quit\n").await;
    }
    for holder in &mut holders {
        let _ = timeout(Duration::from_secs(10), holder.child.wait()).await;
    }
    Ok(out)
}

/// `scale --scale-broadcasts B`: B broadcasts to all, sent 64 at a time and each chunk waited
/// for until every held session has read it (so that no reader falls a buffer behind), then RSS
/// and the rtt load again with every buffer holding min(B, buffer) of them.
async fn scale_broadcasts(args: &Args, server: &Server, holders: &mut [Holder], held: usize, out: &mut String) -> anyhow::Result<()> {
    let client = client::http_client(None);
    let data = "x".repeat(args.history_payload.saturating_sub(2));
    let body = serde_json::json!({"to": {"all": true}, "event": "history", "data": data}).to_string();
    let pause = Duration::from_millis(args.scale_pause_ms);
    let rss_before = server.rss_kib();
    let started = Instant::now();
    let mut sent = 0;
    eprintln!("  {} broadcasts to the {held} sessions held ...", args.scale_broadcasts);
    while sent < args.scale_broadcasts {
        let n = 64.min(args.scale_broadcasts - sent);
        publish_all(&client, server.addr, &body, n).await?;
        sent += n;
        let expected = held * sent;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut got = 0;
            for holder in holders.iter_mut() {
                got += holder.received().await?;
            }
            if got >= expected {
                break;
            }
            if Instant::now() > deadline {
                bail!("the held sessions read {got} of {expected} broadcasts within 180 s");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
    let took = started.elapsed();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss = server.rss_kib();
    let row = measure_loop(server, Endpoints::single(server.addr), Transport::Ws, args.scale_rtt, Duration::from_millis(500), Duration::from_secs_f64(args.scale_seconds), pause).await;
    let buffered = args.scale_broadcasts.min(args.history_buffer);
    let per_event = rss.saturating_sub(rss_before) as f64 * 1024.0 / (held * buffered).max(1) as f64;
    writeln!(
        out,
        "\nWith full buffers: {} broadcasts of {} bytes to all, read by every held session, in {:.1} s: RSS {:.1} MiB (<= 600 MiB: {}), {:.1} bytes per buffered event per session over the RSS before them ({:.1} MiB); rtt then {:.0}/s, p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors.",
        args.scale_broadcasts,
        args.history_payload,
        took.as_secs_f64(),
        rss as f64 / 1024.0,
        met(rss <= 600 * 1024),
        per_event,
        rss_before as f64 / 1024.0,
        row.result.rate(),
        q(&row.result.latencies, 0.5),
        q(&row.result.latencies, 0.99),
        q(&row.result.latencies, 0.999),
        row.result.errors
    )?;
    Ok(())
}

/// The kind of the I/O error under `err` (`ConnectionReset`, ...) or, without one, the root
/// cause's text: enough to tell a reset from a refusal or a connection closed mid-answer.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return format!("{:?}", io.kind());
        }
        if e.source().is_none() {
            return e.to_string();
        }
        source = e.source();
    }
    "unknown".into()
}

// ---------------------------------------------------------------------------------------------
// compare

async fn compare(args: &Args) -> anyhow::Result<String> {
    let alt = args.alt_bin.as_deref().ok_or_else(|| anyhow!("compare needs --alt-bin PATH"))?;
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);
    let current = Server::start(Kind::Switchyard, !args.no_pin, "compare-current").await?;
    let other = Server::start_exe(Kind::Alt, Some(alt), !args.no_pin, "compare-alt").await?;
    let mut rows = Vec::new();
    for transport in [Transport::Ws, Transport::Sse] {
        for server in [&current, &other] {
            eprintln!("  {} against {} ...", transport.label(), server.kind.label());
            rows.push(measure_loop(server, Endpoints::single(server.addr), transport, args.sessions, warmup, seconds, Duration::ZERO).await);
        }
    }
    let mut out = String::new();
    writeln!(out, "### compare: switchyard against `{alt}` ({}), {} sessions, {:.0} s\n", args.alt_label, args.sessions, args.seconds)?;
    out.push_str(&rtt_table(&rows));
    writeln!(out, "\n| transport | alt / current rt/s | alt / current p99 |\n|---|---:|---:|")?;
    for pair in rows.chunks(2) {
        let [cur, alt] = pair else { continue };
        writeln!(
            out,
            "| {} | {:.2} | {:.2} |",
            cur.transport.label(),
            ratio(alt.result.rate(), cur.result.rate()),
            ratio(q(&alt.result.latencies, 0.99) as f64, q(&cur.result.latencies, 0.99) as f64)
        )?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// the report's header

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() {
        "cargo bench --bench gateway".into()
    } else {
        format!("cargo bench --bench gateway -- {}", args.join(" "))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nofile = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{} ({} cores visible to the load generator; the machine has {}), {:.0} GiB RAM, Linux {}, open-file limit {}",
        model.unwrap_or_else(|| "unknown CPU".into()),
        cores,
        std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default().trim(),
        mem_gib,
        kernel.trim(),
        nofile
    )
}

// ---------------------------------------------------------------------------------------------
// stuck

/// A client that opened an SSE stream, joined the `stuck` room, and then never reads: the
/// kernel buffers fill and the server's writes to it block.
async fn open_stuck(addr: std::net::SocketAddr, client: &reqwest::Client) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await?;
    let mut head = Vec::new();
    let sid = loop {
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("stream closed before its hello");
        }
        head.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&head);
        if let Some(at) = text.find("\"sid\":\"") {
            if text.len() >= at + 7 + 22 {
                break text[at + 7..at + 7 + 22].to_owned();
            }
        }
    };
    let joined = client
        .post(format!("http://{addr}/sse?sid={sid}"))
        .header("content-type", "application/json")
        .body(r#"{"event":"join","data":"stuck"}"#)
        .send()
        .await?;
    if joined.status() != 202 {
        bail!("join answered {}", joined.status());
    }
    Ok(tcp)
}

/// Publishes 1 KiB events to the `stuck` room every 5 ms until `end`; returns how many.
fn spawn_flood(client: &reqwest::Client, addr: std::net::SocketAddr, end: Instant) -> tokio::task::JoinHandle<u64> {
    let client = client.clone();
    let url = format!("http://{addr}/api/emit");
    let body = serde_json::json!({"to": {"room": "stuck"}, "event": "flood", "data": "x".repeat(1024)}).to_string();
    tokio::spawn(async move {
        let mut sent = 0u64;
        while Instant::now() < end {
            let ok = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                sent += 1;
            }
            sleep(Duration::from_millis(5)).await;
        }
        sent
    })
}

async fn stuck(args: &Args) -> anyhow::Result<String> {
    let pin = !args.no_pin;
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.stuck_seconds);
    let pause = Duration::from_millis(args.scale_pause_ms);
    let client = client::http_client(None);
    let mut rows = Vec::new();
    // Three phases, each on a fresh server: the healthy sessions alone; beside clients that read
    // the flood (what the flood itself costs); beside clients that never read it.
    for phase in ["alone", "beside readers", "beside stuck"] {
        let server = Server::start(Kind::Switchyard, pin, &format!("stuck-{}", phase.replace(' ', "-"))).await?;
        let mut held = Vec::new();
        let mut readers = Vec::new();
        let mut floods = None;
        if phase != "alone" {
            for _ in 0..args.stuck {
                let tcp = open_stuck(server.addr, &client).await?;
                if phase == "beside readers" {
                    readers.push(tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut tcp = tcp;
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    }));
                } else {
                    held.push(tcp);
                }
            }
            floods = Some(spawn_flood(&client, server.addr, Instant::now() + warmup + seconds + Duration::from_secs(1)));
        }
        eprintln!("  healthy sessions {phase} ...");
        let row = measure_loop(&server, Endpoints::single(server.addr), Transport::Ws, args.stuck_rtt, warmup, seconds, pause).await;
        let sent = match floods {
            Some(task) => task.await.unwrap_or(0),
            None => 0,
        };
        let rss = server.rss_kib();
        for reader in readers {
            reader.abort();
        }
        drop(held);
        rows.push((phase, row, sent, rss));
    }
    let mut out = String::new();
    writeln!(
        out,
        "### stuck: {} paced WebSocket sessions ({} ms apart), alone, beside {} clients reading a flood of 1 KiB events (every 5 ms to each), and beside {} that never read it\n",
        args.stuck_rtt, args.scale_pause_ms, args.stuck, args.stuck
    )?;
    writeln!(out, "| healthy sessions | round trips/s | p50 µs | p99 µs | p99.9 µs | errors | flood events | server CPU | server RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (phase, row, sent, rss) in &rows {
        let h = &row.result.latencies;
        writeln!(
            out,
            "| {phase} | {:.0} | {} | {} | {} | {} | {sent} | {:.0} % | {:.1} MiB |",
            row.result.rate(),
            q(h, 0.5),
            q(h, 0.99),
            q(h, 0.999),
            row.result.errors,
            row.server_cpu * 100.0,
            *rss as f64 / 1024.0
        )?;
    }
    let p99 = |i: usize| q(&rows[i].1.result.latencies, 0.99) as f64;
    writeln!(
        out,
        "\np99 beside stuck clients / p99 beside reading clients (same flood): {:.2}; / p99 alone: {:.2}.",
        ratio(p99(2), p99(1)),
        ratio(p99(2), p99(0))
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// history

/// One group of the history scenario at one step.
struct HistoryRow {
    group: &'static str,
    sessions: usize,
    broadcasts: usize,
    rss_kib: u64,
    /// The anonymous part of `rss_kib` (see `procs::anon_kib`): what the figures are of.
    anon_kib: u64,
    /// Kernel TCP buffers, machine-wide.
    tcp_kib: u64,
    /// Broadcasts the readers received, all sessions together (readers only).
    received: Option<usize>,
}

/// What each history server runs with: the buffer asked for, and timeouts long enough that no
/// session is detached or removed by time while it is measured (a stalled reader overtaken by
/// its ring is still detached as a slow consumer, and its session kept for the grace period,
/// buffer and all; its blocked write is kept until the slow-client timeout).
fn history_env(buffer: &str) -> [(&'static str, &str); 3] {
    [("SWITCHYARD_BUFFER", buffer), ("SWITCHYARD_SLOW_CLIENT_TIMEOUT", "1h"), ("SWITCHYARD_GRACE", "1h")]
}

/// Opens an SSE stream (or, with `ws`, a WebSocket) that is never read after its hello: a
/// 4 KiB receive buffer, so the kernel holds little on the client's side and the server's
/// writes soon block.
async fn open_stalled(addr: std::net::SocketAddr, ws: bool) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr).await?;
    let request: &[u8] = if ws {
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    } else {
        b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    };
    tcp.write_all(request).await?;
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("\"sid\":\"") {
        let mut buf = [0u8; 1024];
        let n = timeout(client::OPEN_TIMEOUT, tcp.read(&mut buf)).await.context("no hello within the open timeout")??;
        if n == 0 {
            bail!("stream closed before its hello");
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(tcp)
}

/// Publishes `count` broadcasts of `body` through the publish API, four requests at a time.
async fn publish_all(client: &reqwest::Client, addr: std::net::SocketAddr, body: &str, count: usize) -> anyhow::Result<()> {
    let url = format!("http://{addr}/api/emit");
    let failed = futures_util::stream::iter(0..count)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_owned()).send().await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                Ok::<bool, reqwest::Error>(ok)
            }
        })
        .buffer_unordered(4)
        .filter(|r| std::future::ready(!matches!(r, Ok(true))))
        .count()
        .await;
    if failed > 0 {
        bail!("{failed} of {count} broadcasts failed");
    }
    Ok(())
}

async fn history(args: &Args) -> anyhow::Result<String> {
    let settle = Duration::from_secs_f64(args.settle);
    let buffer = args.history_buffer.max(1);
    let buffer_text = buffer.to_string();
    let env = history_env(&buffer_text);
    let data = "x".repeat(args.history_payload.saturating_sub(2));
    let body = serde_json::json!({"to": {"all": true}, "event": "history", "data": data}).to_string();
    let mut steps = args.history_steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let client = client::http_client(None);
    let mut rows: Vec<HistoryRow> = Vec::new();
    let groups = [
        ("SSE reading", args.history_readers),
        ("SSE never reading", args.history_stalled),
        ("WebSocket never reading", args.history_stalled_ws),
    ];
    for (group, sessions) in groups {
        if sessions == 0 {
            continue;
        }
        eprintln!("  history: {sessions} sessions {group} ...");
        let tag = format!("history-{}", group.replace(' ', "-"));
        let server = Server::start_env(Kind::Switchyard, None, !args.no_pin, &tag, &env).await?;
        sleep(Duration::from_millis(300)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut held = Held::default();
        let mut stalled = Vec::new();
        if group == "SSE reading" {
            let failed =
                open_many(&mut held, |_| Transport::Sse, sessions, &[server.addr], None, args.open_concurrency, true, Some(tx)).await;
            if failed > 0 {
                bail!("{failed} reading sessions failed to open");
            }
        } else {
            drop(tx);
            let opened: Vec<_> = futures_util::stream::iter(0..sessions)
                .map(|_| open_stalled(server.addr, group.starts_with("WebSocket")))
                .buffer_unordered(args.open_concurrency.max(1))
                .collect()
                .await;
            for tcp in opened {
                stalled.push(tcp?);
            }
        }
        sleep(settle).await;
        rows.push(HistoryRow {
            group,
            sessions,
            broadcasts: 0,
            rss_kib: server.rss_kib(),
            anon_kib: server.anon_kib(),
            tcp_kib: procs::tcp_mem_kib(),
            received: None,
        });
        let mut sent = 0;
        let mut received = 0usize;
        for &step in &steps {
            eprintln!("    up to {step} broadcasts ...");
            // Readers are given a chunk at a time and waited for, so that they keep up (a reader
            // the ring overtakes is detached); stalled sessions are sent everything at once.
            let chunk = if group == "SSE reading" { 32 } else { usize::MAX };
            while sent < step {
                let n = chunk.min(step - sent);
                publish_all(&client, server.addr, &body, n).await?;
                sent += n;
                if group == "SSE reading" {
                    let expected = sent * sessions;
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while received < expected {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(_)) => received += 1,
                            _ => bail!("the readers got {received} of {expected} broadcasts within 60 s"),
                        }
                    }
                }
            }
            sleep(settle).await;
            rows.push(HistoryRow {
                group,
                sessions,
                broadcasts: step,
                rss_kib: server.rss_kib(),
                anon_kib: server.anon_kib(),
                tcp_kib: procs::tcp_mem_kib(),
                received: (group == "SSE reading").then_some(received),
            });
        }
        drop(held);
        drop(stalled);
        drop(server);
        sleep(Duration::from_millis(500)).await;
    }

    let mut out = String::new();
    writeln!(
        out,
        "### history: {} SSE sessions reading, {} never reading, and {} WebSocket sessions never reading; broadcasts of {} bytes to all (`POST /api/emit`), `--buffer {buffer}`\n",
        args.history_readers, args.history_stalled, args.history_stalled_ws, args.history_payload
    )?;
    writeln!(out, "The growth of the server's anonymous memory (`RssAnon`: heap and stacks) from the sessions' opening (buffers empty) to each step, over sessions x events buffered per session (min(broadcasts, buffer)); then the growth since the previous step, per session; the growth of the executable's pages in RSS (`RssFile`: code run for the first time, not memory the sessions hold, and not counted); and the kernel's TCP buffers (machine-wide, not in any RSS), where most of what a client that stops reading is sent waits.\n")?;
    writeln!(out, "| sessions | broadcasts | buffered each | RSS | anonymous | growth | bytes per buffered event per session | KiB per session since previous step | executable pages since opening | kernel TCP buffers |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut verdicts = Vec::new();
    let mut full_per_session: Vec<(&str, f64)> = Vec::new();
    for group_rows in rows.chunk_by(|a, b| a.group == b.group) {
        let open = &group_rows[0];
        let mut to_full = None;
        let mut past_full = 0.0f64;
        let mut worst = 0.0f64;
        for (i, row) in group_rows.iter().enumerate() {
            let buffered = row.broadcasts.min(buffer);
            let growth = row.anon_kib.saturating_sub(open.anon_kib) as f64 * 1024.0;
            let per_event = if buffered > 0 { growth / (row.sessions * buffered) as f64 } else { f64::NAN };
            let since = if i > 0 {
                (row.anon_kib as f64 - group_rows[i - 1].anon_kib as f64) / row.sessions as f64
            } else {
                f64::NAN
            };
            let file = |row: &HistoryRow| row.rss_kib.saturating_sub(row.anon_kib) as f64;
            let code = (file(row) - file(open)) / 1024.0;
            if buffered > 0 && row.broadcasts <= buffer {
                worst = worst.max(per_event);
            }
            if row.broadcasts >= buffer && to_full.is_none() && buffered > 0 {
                to_full = Some((growth / row.sessions as f64 / 1024.0, per_event));
                worst = worst.max(per_event);
            } else if row.broadcasts > buffer {
                past_full += since.max(0.0);
            }
            let received = row.received.map_or(String::new(), |r| format!(" ({r} received)"));
            writeln!(
                out,
                "| {} {}{received} | {} | {buffered} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {code:.2} MiB | {:.1} MiB |",
                row.sessions,
                row.group,
                row.broadcasts,
                row.rss_kib as f64 / 1024.0,
                row.anon_kib as f64 / 1024.0,
                growth / 1024.0 / 1024.0,
                if per_event.is_nan() { "-".into() } else { format!("{per_event:.1}") },
                if since.is_nan() { "-".into() } else { format!("{since:.2}") },
                row.tcp_kib as f64 / 1024.0,
            )?;
        }
        if let Some((kib, per_event)) = to_full {
            full_per_session.push((open.group, kib));
            // Once full, the buffers stop growing: what still grows is counted against the
            // events buffered, and anything past a byte per event (1/16 of the budget) is growth.
            let past_per_event = past_full * 1024.0 / buffer as f64;
            verdicts.push(format!(
                "{}: {per_event:.1} bytes per buffered event per session with full buffers ({kib:.1} KiB per session; worst step {worst:.1}; <= 16: {}); {past_full:.2} KiB per session more once full, {past_per_event:.2} bytes per buffered event (growth stops, <= 1: {})",
                open.group,
                met(worst <= 16.0),
                met(past_per_event <= 1.0)
            ));
        }
    }
    writeln!(out)?;
    for verdict in verdicts {
        writeln!(out, "- {verdict}")?;
    }
    if let Some((_, reading)) = full_per_session.iter().find(|(group, _)| *group == "SSE reading") {
        for (group, kib) in full_per_session.iter().filter(|(group, _)| *group != "SSE reading") {
            writeln!(out, "- a session {group} costs {:.1} KiB more than one that reads, with full buffers", kib - reading)?;
        }
    }
    Ok(out)
}
