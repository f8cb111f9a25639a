//! `cluster`: switchyard in cluster mode (`--redis`), measured in one run against the same binary
//! in memory, on `redis-server`s the scenario starts itself ([`Redis`]: free loopback ports, no
//! persistence, pinned to the servers' core, killed at the end).
//!
//! 1. **Round trips**: one `--redis` node against an in-memory node, in paired rounds with the
//!    order swapped (the median of the rounds' ratios, as `rtt`), for WebSocket and SSE+POST;
//!    then SSE+POST with each session's stream on node A and its POSTs to node B (two `--redis`
//!    nodes on the same Redis) against the in-memory node again. Beside them: Redis's commands
//!    per round trip (`INFO commandstats` over each measured window), the CPU of the node(s),
//!    Redis and the load generator in every round, and the latencies.
//! 2. **Fan-out**: SSE sessions opened round robin over several `--redis` nodes, one publish to
//!    all through one node's publish API, time until the last session has it.
//! 3. **Idle memory**: RSS growth of a `--redis` node per held idle session, and Redis's
//!    `used_memory` growth per session.
//!
//! The node(s) and Redis share the servers' core: what a round trip costs Redis is counted
//! against the same one core the in-memory node has to itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use crate::client::{self, closed_loop, histogram, open_many, Endpoints, Held, LoopResult, Transport};
use crate::procs::{self, CommandStats, CpuWindow, Kind, Redis, Server};
use crate::{fanout_line, fanout_round, met, q, ratio, Args, FanoutRow};

/// The parts of the scenario (`--cluster-parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Rtt,
    Fanout,
    Idle,
}

pub async fn cluster(args: &Args) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "### cluster: switchyard with `--redis` (redis-server {}, `--save \"\" --appendonly no`, on the servers' core) against the same binary in memory\n",
        redis_version(&args.redis_server)
    )?;
    for part in &args.cluster_parts {
        let section = match part {
            Part::Rtt => rtt(args).await,
            Part::Fanout => fanout(args).await,
            Part::Idle => idle(args).await,
        };
        match section {
            Ok(text) => out.push_str(&text),
            Err(err) => writeln!(out, "#### {part:?}\n\nFAILED: {err:#}\n")?,
        }
        out.push('\n');
    }
    Ok(out)
}

fn redis_version(exe: &str) -> String {
    std::process::Command::new(exe)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().find_map(|w| w.strip_prefix("v=").map(str::to_owned)))
        .unwrap_or_else(|| "?".into())
}

/// Starts a switchyard node, in cluster mode on `redis` if given, and (then) waits until its
/// `/healthz` says Redis is reachable: a node answers 503 to new sessions until it has
/// subscribed to its channel.
async fn start_node(redis: Option<&Redis>, pin: bool, tag: &str) -> anyhow::Result<Server> {
    let url = redis.map(Redis::url);
    let env: Vec<(&str, &str)> = url.as_deref().map(|u| ("SWITCHYARD_REDIS", u)).into_iter().collect();
    let server = Server::start_env(Kind::Switchyard, None, pin, tag, &env).await?;
    if redis.is_some() {
        let client = client::http_client(None);
        let healthz = format!("http://{}/healthz", server.addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !client.get(&healthz).send().await.is_ok_and(|r| r.status().is_success()) {
            if Instant::now() > deadline {
                bail!("node {} not healthy within 15 s; see {}", server.addr, server.log.display());
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(server)
}

/// The node's log lines at WARN or above (or a panic), and the first of them.
fn log_trouble(server: &Server) -> (usize, Option<String>) {
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let bad: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked")).collect();
    (bad.len(), bad.first().map(|l| l.trim().to_owned()))
}

/// A line on what the nodes logged at WARN or above, and whether they and Redis are still
/// running.
fn nodes_health(nodes: &mut [&mut Server], redis: Option<&mut Redis>) -> String {
    let mut parts = Vec::new();
    for node in nodes.iter_mut() {
        let alive = node.alive();
        let (count, first) = log_trouble(node);
        parts.push(format!(
            "{} {}: {count} WARN/ERROR log lines{}",
            node.addr,
            if alive { "running" } else { "DIED" },
            first.map_or(String::new(), |l| format!(" (first: `{l}`)"))
        ));
    }
    let redis = match redis.map(Redis::alive) {
        Some(true) => " Redis running.",
        Some(false) => " Redis DIED.",
        None => "",
    };
    format!("Nodes after the part: {}.{redis}", parts.join("; "))
}

// ---------------------------------------------------------------------------------------------
// round trips

/// One measured closed loop.
struct Side {
    result: LoopResult,
    /// CPU over the measured window, as a share of one core: the node(s) serving the loop
    /// together, Redis (0 without), the load generator.
    node_cpu: f64,
    redis_cpu: f64,
    loadgen_cpu: f64,
    /// Redis's commands over the measured window (empty without Redis).
    stats: CommandStats,
    /// The node(s)' Redis requests over the measured window, from their `/metrics`.
    requests: NodeRequests,
}

impl Side {
    fn rate(&self) -> f64 {
        self.result.rate()
    }
}

/// Runs one closed loop at `to`, reading the CPU of `nodes`, of `redis` and of the load
/// generator, Redis's command counts and the nodes' Redis requests, at the edges of the
/// measured window.
async fn measure(args: &Args, transport: Transport, to: Endpoints, nodes: &[&Server], redis: Option<&Redis>) -> Side {
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    type Start = (Option<(CommandStats, NodeRequests)>, Vec<CpuWindow>, Option<CpuWindow>, CpuWindow);
    let mut start: Option<Start> = None;
    let mut window = (0.0, 0.0, 0.0, CommandStats::default(), NodeRequests::default());
    let result = closed_loop(transport, to, args.sessions, true, warmup, seconds, Duration::ZERO, |begin| {
        if begin {
            let counts = redis.and_then(|r| r.commandstats().ok()).map(|stats| (stats, NodeRequests::scrape(&addrs)));
            let windows = nodes.iter().map(|n| CpuWindow::start(n.pid())).collect();
            start = Some((counts, windows, redis.map(|r| CpuWindow::start(r.pid())), CpuWindow::start(std::process::id())));
        } else if let Some((counts, windows, redis_window, me)) = &start {
            let node: f64 = windows.iter().map(CpuWindow::share).sum();
            let red = redis_window.as_ref().map_or(0.0, CpuWindow::share);
            let me = me.share();
            let (stats, requests) = match (redis, counts) {
                (Some(r), Some((stats, requests))) => (
                    r.commandstats().map(|after| after.since(stats)).unwrap_or_default(),
                    NodeRequests::scrape(&addrs).since(requests),
                ),
                _ => Default::default(),
            };
            window = (node, red, me, stats, requests);
        }
    })
    .await;
    let (node_cpu, redis_cpu, loadgen_cpu, stats, requests) = window;
    Side { result, node_cpu, redis_cpu, loadgen_cpu, stats, requests }
}

/// What nodes report of their Redis requests on `/metrics`: per op, the requests and the
/// seconds they waited for the answers (`switchyard_redis_command_seconds`), and the failed
/// ones (`switchyard_redis_errors_total`).
#[derive(Debug, Clone, Default)]
struct NodeRequests {
    ops: BTreeMap<String, (f64, f64)>,
    errors: f64,
}

impl NodeRequests {
    /// Reads and adds up the `/metrics` of every node in `addrs` (blocking, like
    /// [`Redis::command`]: called at the edges of a measured window). A node that does not
    /// answer adds nothing.
    fn scrape(addrs: &[SocketAddr]) -> NodeRequests {
        let mut all = NodeRequests::default();
        for addr in addrs {
            if let Ok(text) = http_get(*addr, "/metrics") {
                all.add(&NodeRequests::parse(&text));
            }
        }
        all
    }

    fn parse(text: &str) -> NodeRequests {
        let mut out = NodeRequests::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let op = || name.split_once("op=\"").and_then(|(_, rest)| rest.split_once('"')).map(|(op, _)| op.to_owned());
            if name.starts_with("switchyard_redis_command_seconds_count{") {
                out.ops.entry(op().unwrap_or_default()).or_default().0 += value;
            } else if name.starts_with("switchyard_redis_command_seconds_sum{") {
                out.ops.entry(op().unwrap_or_default()).or_default().1 += value;
            } else if name.starts_with("switchyard_redis_errors_total") {
                out.errors += value;
            }
        }
        out
    }

    fn since(&self, before: &NodeRequests) -> NodeRequests {
        let mut out = NodeRequests { ops: BTreeMap::new(), errors: self.errors - before.errors };
        for (op, &(count, sum)) in &self.ops {
            let (c0, s0) = before.ops.get(op).copied().unwrap_or_default();
            if count > c0 {
                out.ops.insert(op.clone(), (count - c0, sum - s0));
            }
        }
        out
    }

    fn add(&mut self, other: &NodeRequests) {
        for (op, &(count, sum)) in &other.ops {
            let entry = self.ops.entry(op.clone()).or_default();
            entry.0 += count;
            entry.1 += sum;
        }
        self.errors += other.errors;
    }

    fn total(&self) -> f64 {
        self.ops.values().map(|v| v.0).sum()
    }
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the answer), blocking;
/// returns the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer without a head")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// One comparison: the in-memory node against a cluster setup, round by round.
struct Pairing {
    transport: Transport,
    /// What the cluster side is.
    setup: &'static str,
    target: f64,
    memory: Vec<Side>,
    cluster: Vec<Side>,
    /// Per round: whether the in-memory side ran first.
    memory_first: Vec<bool>,
}

/// All rounds of one side together: round trips, latencies, errors, and the CPU in seconds.
struct Merged {
    latencies: hdrhistogram::Histogram<u64>,
    errors: u64,
    seconds: f64,
    node_cpu_s: f64,
    redis_cpu_s: f64,
    loadgen_cpu_s: f64,
    stats: CommandStats,
    requests: NodeRequests,
}

impl Merged {
    fn of(sides: &[Side]) -> Merged {
        let mut m = Merged {
            latencies: histogram(),
            errors: 0,
            seconds: 0.0,
            node_cpu_s: 0.0,
            redis_cpu_s: 0.0,
            loadgen_cpu_s: 0.0,
            stats: CommandStats::default(),
            requests: NodeRequests::default(),
        };
        for side in sides {
            m.latencies.add(&side.result.latencies).expect("histograms with the same bounds add");
            m.errors += side.result.errors;
            m.seconds += side.result.seconds;
            m.node_cpu_s += side.node_cpu * side.result.seconds;
            m.redis_cpu_s += side.redis_cpu * side.result.seconds;
            m.loadgen_cpu_s += side.loadgen_cpu * side.result.seconds;
            m.stats.add(&side.stats);
            m.requests.add(&side.requests);
        }
        m
    }

    fn round_trips(&self) -> u64 {
        self.latencies.len()
    }

    fn rate(&self) -> f64 {
        ratio(self.round_trips() as f64, self.seconds)
    }

    /// A CPU total as µs per round trip.
    fn per_rt_us(&self, cpu_s: f64) -> f64 {
        ratio(cpu_s * 1e6, self.round_trips() as f64)
    }

    /// A count over the window as a figure per round trip.
    fn per_rt(&self, count: u64) -> f64 {
        ratio(count as f64, self.round_trips() as f64)
    }

    /// A count (of the nodes' metrics) per round trip.
    fn per_rt_f(&self, count: f64) -> f64 {
        ratio(count, self.round_trips() as f64)
    }
}

async fn rtt(args: &Args) -> anyhow::Result<String> {
    let pin = !args.no_pin;
    let mut redis = Redis::start(&args.redis_server, pin, "cluster-rtt-redis").await?;
    let mut memory = start_node(None, pin, "cluster-rtt-memory").await?;
    let mut a = start_node(Some(&redis), pin, "cluster-rtt-node-a").await?;
    let mut b = start_node(Some(&redis), pin, "cluster-rtt-node-b").await?;
    let rounds = args.alternations.max(1);
    let mut pairings = vec![
        (Pairing { transport: Transport::Ws, setup: "--redis", target: 0.5, memory: vec![], cluster: vec![], memory_first: vec![] }, Endpoints::single(a.addr), vec![&a]),
        (Pairing { transport: Transport::Sse, setup: "--redis", target: 0.5, memory: vec![], cluster: vec![], memory_first: vec![] }, Endpoints::single(a.addr), vec![&a]),
        (
            Pairing {
                transport: Transport::Sse,
                setup: "--redis, stream on A, POSTs to B",
                target: 0.4,
                memory: vec![],
                cluster: vec![],
                memory_first: vec![],
            },
            Endpoints { stream: a.addr, post: b.addr, tls: false },
            vec![&a, &b],
        ),
    ];
    for (pairing, to, nodes) in &mut pairings {
        for round in 0..rounds {
            let memory_first = round % 2 == 0;
            pairing.memory_first.push(memory_first);
            for memory_turn in if memory_first { [true, false] } else { [false, true] } {
                eprintln!(
                    "  {} {} (round {}/{rounds}) ...",
                    pairing.transport.label(),
                    if memory_turn { "in memory" } else { pairing.setup },
                    round + 1
                );
                if memory_turn {
                    pairing.memory.push(measure(args, pairing.transport, Endpoints::single(memory.addr), &[&memory], None).await);
                } else {
                    pairing.cluster.push(measure(args, pairing.transport, *to, nodes, Some(&redis)).await);
                }
            }
        }
    }
    let pairings: Vec<Pairing> = pairings.into_iter().map(|(p, _, _)| p).collect();

    let mut out = String::new();
    writeln!(
        out,
        "#### cluster round trips: {} sessions in closed loops, {rounds} paired rounds of {} s measured after {} s warm-up\n",
        args.sessions, args.seconds, args.warmup
    )?;
    writeln!(out, "In memory: one node without `--redis`, alone on the servers' core. `--redis`: node A with Redis on that core (and node B, idle, beside them); split: each SSE session's stream on node A and its POSTs to node B, both on the same Redis. CPU is the share of one core over the measured windows; node CPU of the split is A and B together.\n")?;
    writeln!(out, "| transport | setup | round trips/s | p50 µs | p99 µs | p99.9 µs | errors | node CPU | Redis CPU | loadgen CPU |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for pairing in &pairings {
        for (setup, sides, clustered) in [("in memory", &pairing.memory, false), (pairing.setup, &pairing.cluster, true)] {
            let m = Merged::of(sides);
            let h = &m.latencies;
            writeln!(
                out,
                "| {} | {setup} | {:.0} | {} | {} | {} | {} | {:.0} % | {} | {:.0} % |",
                pairing.transport.label(),
                m.rate(),
                q(h, 0.5),
                q(h, 0.99),
                q(h, 0.999),
                m.errors,
                ratio(m.node_cpu_s, m.seconds) * 100.0,
                if clustered { format!("{:.0} %", ratio(m.redis_cpu_s, m.seconds) * 100.0) } else { "-".into() },
                ratio(m.loadgen_cpu_s, m.seconds) * 100.0
            )?;
        }
    }

    writeln!(out, "\n| comparison | rt/s ratio (median of rounds) | rounds' ratios | target | p50 ratio | p99 ratio | errors | | CPU per round trip, in memory / cluster |")?;
    writeln!(out, "|---|---:|---|---:|---:|---:|---:|---|---:|")?;
    for pairing in &pairings {
        let mut per_round: Vec<f64> = pairing.memory.iter().zip(&pairing.cluster).map(|(m, c)| ratio(c.rate(), m.rate())).collect();
        per_round.sort_by(f64::total_cmp);
        let median = per_round.get(per_round.len() / 2).copied().unwrap_or(f64::NAN);
        let (mem, clu) = (Merged::of(&pairing.memory), Merged::of(&pairing.cluster));
        let errors = mem.errors + clu.errors;
        let listed: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
        writeln!(
            out,
            "| {} {} / in memory | {median:.2} | {} | >= {} | {:.2} | {:.2} | {errors} | {} | {:.2} |",
            pairing.transport.label(),
            pairing.setup,
            listed.join(", "),
            pairing.target,
            ratio(q(&clu.latencies, 0.5) as f64, q(&mem.latencies, 0.5) as f64),
            ratio(q(&clu.latencies, 0.99) as f64, q(&mem.latencies, 0.99) as f64),
            met(median >= pairing.target && errors == 0),
            ratio(mem.per_rt_us(mem.node_cpu_s), clu.per_rt_us(clu.node_cpu_s + clu.redis_cpu_s))
        )?;
    }
    writeln!(out, "\nThe last column divides the in-memory node's CPU time per round trip by the cluster's (node(s) and Redis together): the rate ratio to expect where the servers' core is the limit. Unlike the rates, it hardly moves when other processes take the cores for a while.")?;

    writeln!(out, "\nCPU per round (share of one core over the measured window):\n")?;
    writeln!(out, "| comparison | round | first | in memory rt/s | server CPU | loadgen CPU | cluster rt/s | node CPU | Redis CPU | loadgen CPU | ratio |")?;
    writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for pairing in &pairings {
        for (i, ((mem, clu), memory_first)) in pairing.memory.iter().zip(&pairing.cluster).zip(&pairing.memory_first).enumerate() {
            writeln!(
                out,
                "| {} {} | {} | {} | {:.0} | {:.0} % | {:.0} % | {:.0} | {:.0} % | {:.0} % | {:.0} % | {:.2} |",
                pairing.transport.label(),
                pairing.setup,
                i + 1,
                if *memory_first { "in memory" } else { "cluster" },
                mem.rate(),
                mem.node_cpu * 100.0,
                mem.loadgen_cpu * 100.0,
                clu.rate(),
                clu.node_cpu * 100.0,
                clu.redis_cpu * 100.0,
                clu.loadgen_cpu * 100.0,
                ratio(clu.rate(), mem.rate())
            )?;
        }
    }

    // Where the time goes: CPU per round trip on each side, and Redis's commands.
    writeln!(out, "\nPer round trip, over all measured windows (`INFO commandstats` deltas divided by the round trips recorded; the commands scripts run are counted under their own names as well as in the script's call):\n")?;
    let merged: Vec<(Merged, Merged)> = pairings.iter().map(|p| (Merged::of(&p.memory), Merged::of(&p.cluster))).collect();
    let head: Vec<String> = pairings.iter().map(|p| format!("{} {}", p.transport.label(), p.setup)).collect();
    writeln!(out, "| per round trip | {} |", head.join(" | "))?;
    writeln!(out, "|---|{}", "---:|".repeat(pairings.len()))?;
    let row = |out: &mut String, name: &str, f: &dyn Fn(&Merged, &Merged) -> String| {
        let cells: Vec<String> = merged.iter().map(|(m, c)| f(m, c)).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    };
    row(&mut out, "round trips recorded (cluster side)", &|_, c| c.round_trips().to_string());
    row(&mut out, "in-memory node CPU, µs", &|m, _| format!("{:.1}", m.per_rt_us(m.node_cpu_s)));
    row(&mut out, "cluster node(s) CPU, µs", &|_, c| format!("{:.1}", c.per_rt_us(c.node_cpu_s)));
    row(&mut out, "Redis CPU, µs", &|_, c| format!("{:.1}", c.per_rt_us(c.redis_cpu_s)));
    row(&mut out, "load generator CPU (cluster rounds), µs", &|_, c| format!("{:.1}", c.per_rt_us(c.loadgen_cpu_s)));
    row(&mut out, "Redis requests from the node(s) (their `/metrics`)", &|_, c| format!("{:.2}", c.per_rt_f(c.requests.total())));
    // Ops and commands under 0.01 per round trip everywhere are the nodes' background work
    // (heartbeat, expiry) and session opening and closing: shown together as one row.
    let frequent = |per_rt: &dyn Fn(&Merged) -> f64| merged.iter().any(|(_, c)| per_rt(c) >= 0.01);
    let mut ops: Vec<String> = merged.iter().flat_map(|(_, c)| c.requests.ops.keys().cloned()).collect();
    ops.sort();
    ops.dedup();
    let (ops, rare_ops): (Vec<String>, Vec<String>) =
        ops.into_iter().partition(|op| frequent(&|c: &Merged| c.per_rt_f(c.requests.ops.get(op).map_or(0.0, |v| v.0))));
    for op in &ops {
        row(&mut out, &format!("- `{op}` requests (mean wait for the answer)"), &|_, c| match c.requests.ops.get(op) {
            Some(&(count, seconds)) => format!("{:.2} ({:.0} µs)", c.per_rt_f(count), ratio(seconds * 1e6, count)),
            None => "0".into(),
        });
    }
    if !rare_ops.is_empty() {
        row(&mut out, &format!("- others ({})", rare_ops.join(", ")), &|_, c| {
            format!("{:.3}", c.per_rt_f(rare_ops.iter().filter_map(|op| c.requests.ops.get(op)).map(|v| v.0).sum()))
        });
    }
    row(&mut out, "Redis errors (the nodes' `switchyard_redis_errors_total`, all windows)", &|_, c| format!("{:.0}", c.requests.errors));
    row(&mut out, "scripts run (EVALSHA + EVAL)", &|_, c| format!("{:.2}", c.per_rt(c.stats.calls("evalsha") + c.stats.calls("eval"))));
    row(&mut out, "Redis time in scripts (commandstats), µs", &|_, c| format!("{:.1}", c.per_rt(c.stats.usec("evalsha") + c.stats.usec("eval"))));
    row(&mut out, "commands (all, inside scripts too)", &|_, c| format!("{:.2}", c.per_rt(c.stats.total_calls())));
    let mut names: Vec<(String, u64)> = Vec::new();
    for (_, c) in &merged {
        for (name, &(calls, _)) in &c.stats.0 {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 += calls,
                None => names.push((name.clone(), calls)),
            }
        }
    }
    names.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    let (names, rare): (Vec<String>, Vec<String>) =
        names.into_iter().map(|(name, _)| name).partition(|name| frequent(&|c: &Merged| c.per_rt(c.stats.calls(name))));
    for name in &names {
        row(&mut out, &format!("- `{}`", name.to_uppercase()), &|_, c| format!("{:.2}", c.per_rt(c.stats.calls(name))));
    }
    if !rare.is_empty() {
        let listed: Vec<String> = rare.iter().map(|n| format!("`{}`", n.to_uppercase())).collect();
        row(&mut out, &format!("- others ({})", listed.join(", ")), &|_, c| {
            format!("{:.3}", c.per_rt(rare.iter().map(|n| c.stats.calls(n)).sum()))
        });
    }

    writeln!(out)?;
    writeln!(out, "{}", nodes_health(&mut [&mut memory, &mut a, &mut b], Some(&mut redis)))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// fan-out

/// CPU spent by the nodes, Redis and the load generator during one fan-out round, in seconds.
struct RoundCpu {
    answer: String,
    /// The nodes' Redis requests during the round, all ops together, and those that failed.
    requests: f64,
    errors: f64,
    nodes: f64,
    redis: f64,
    loadgen: f64,
}

async fn fanout(args: &Args) -> anyhow::Result<String> {
    let pin = !args.no_pin;
    let count = args.cluster_nodes.max(1);
    let target = Duration::from_millis(250);
    let body = r#"{"to":{"all":true},"event":"fanout","data":"tick"}"#;
    let client = client::http_client(None);

    // The cluster: a fresh Redis, `count` nodes, the sessions' opens going round robin.
    eprintln!("  fanout to {} SSE sessions over {count} --redis nodes ...", args.fanout);
    let mut redis = Redis::start(&args.redis_server, pin, "cluster-fanout-redis").await?;
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(start_node(Some(&redis), pin, &format!("cluster-fanout-node-{}", i + 1)).await?);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut held = Held::default();
    let opened_at = Instant::now();
    let failed = open_many(&mut held, |_| Transport::Sse, args.fanout, &addrs, None, args.open_concurrency, true, Some(tx)).await;
    let took = opened_at.elapsed();
    let in_redis = redis.command(&["SCARD", "sy:sessions"]).unwrap_or_else(|e| format!("? ({e})"));
    sleep(Duration::from_secs_f64(args.settle)).await;
    let trigger = format!("http://{}/api/emit", nodes[0].addr);
    let mut row = FanoutRow { kind: Kind::Switchyard, room: false, held: held.len(), rounds: Vec::new(), latencies: histogram() };
    let mut cpu = Vec::new();
    for round in 0..args.rounds {
        eprintln!("    round {}/{} ...", round + 1, args.rounds);
        let node_cpu = |nodes: &[Server]| nodes.iter().map(|n| procs::cpu_seconds(n.pid())).sum::<f64>();
        let requests_before = NodeRequests::scrape(&addrs);
        let before = (node_cpu(&nodes), procs::cpu_seconds(redis.pid()), procs::cpu_seconds(std::process::id()));
        let answer = fanout_round(&client, &trigger, body, &mut rx, &mut row).await?;
        let requests = NodeRequests::scrape(&addrs).since(&requests_before);
        cpu.push(RoundCpu {
            answer,
            requests: requests.total(),
            errors: requests.errors,
            nodes: node_cpu(&nodes) - before.0,
            redis: procs::cpu_seconds(redis.pid()) - before.1,
            loadgen: procs::cpu_seconds(std::process::id()) - before.2,
        });
        sleep(Duration::from_millis(300)).await;
    }
    drop(held);
    let mut node_refs: Vec<&mut Server> = nodes.iter_mut().collect();
    let health = nodes_health(&mut node_refs, Some(&mut redis));
    drop(nodes);
    drop(redis);
    sleep(Duration::from_millis(500)).await;

    // The reference: the same sessions on one node in memory.
    eprintln!("  fanout to {} SSE sessions of one in-memory node ...", args.fanout);
    let memory = start_node(None, pin, "cluster-fanout-memory").await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut held = Held::default();
    open_many(&mut held, |_| Transport::Sse, args.fanout, &[memory.addr], None, args.open_concurrency, true, Some(tx)).await;
    sleep(Duration::from_secs_f64(args.settle)).await;
    let trigger = format!("http://{}/api/emit", memory.addr);
    let mut reference = FanoutRow { kind: Kind::Switchyard, room: false, held: held.len(), rounds: Vec::new(), latencies: histogram() };
    for _ in 0..args.rounds {
        fanout_round(&client, &trigger, body, &mut rx, &mut reference).await?;
        sleep(Duration::from_millis(300)).await;
    }
    drop(held);
    drop(memory);
    sleep(Duration::from_millis(500)).await;

    let mut out = String::new();
    writeln!(
        out,
        "#### cluster fan-out: one event to each of {} SSE sessions over {count} `--redis` nodes, {} rounds\n",
        args.fanout, args.rounds
    )?;
    writeln!(
        out,
        "The sessions' opens go round robin over the nodes ({} failed, {:.1} s to open; `SCARD sy:sessions` then: {in_redis}); each round is one `POST /api/emit` with `{{\"to\":{{\"all\":true}}}}` to node 1, timed from sending it until the load generator has parsed the event on each stream. The reference is the same sessions on one node in memory.\n",
        failed,
        took.as_secs_f64()
    )?;
    writeln!(out, "| setup | sessions | received (all rounds) | median time to last | worst time to last | p50 | p99 | target | |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    let (line, cluster_median) = fanout_line(&format!("--redis, {count} nodes"), &row, args.fanout, Some(target), "");
    writeln!(out, "{line}")?;
    let (line, memory_median) = fanout_line("in memory, 1 node", &reference, args.fanout, None, "reference");
    writeln!(out, "{line}")?;
    writeln!(out, "\n`--redis` / in memory, median time to last: {:.2}.\n", ratio(cluster_median.as_secs_f64(), memory_median.as_secs_f64()))?;
    writeln!(out, "Per round of the cluster: the publish API's answer, the nodes' Redis requests (their `/metrics`), and the CPU time each party spent from the request until the last session had the event (in clock ticks of 10 ms).\n")?;
    writeln!(out, "| round | answer | received | time to last | nodes' Redis requests | Redis errors | nodes CPU | Redis CPU | loadgen CPU |")?;
    writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (i, ((got, last), cpu)) in row.rounds.iter().zip(&cpu).enumerate() {
        writeln!(
            out,
            "| {} | `{}` | {got} | {:.1} ms | {:.0} | {:.0} | {:.0} ms | {:.0} ms | {:.0} ms |",
            i + 1,
            cpu.answer.trim(),
            last.as_secs_f64() * 1e3,
            cpu.requests,
            cpu.errors,
            cpu.nodes * 1e3,
            cpu.redis * 1e3,
            cpu.loadgen * 1e3
        )?;
    }
    writeln!(out, "\n{health}")?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// idle memory

struct IdleRow {
    transport: Transport,
    clustered: bool,
    held: usize,
    failed: usize,
    took: Duration,
    rss: (u64, u64),
    /// Redis `used_memory` and key count before opening and with the sessions held.
    redis: Option<((u64, u64), (u64, u64))>,
    alive: bool,
}

async fn idle(args: &Args) -> anyhow::Result<String> {
    let pin = !args.no_pin;
    let settle = Duration::from_secs_f64(args.settle);
    let sessions = args.cluster_idle;
    let mut rows = Vec::new();
    let mut health = Vec::new();
    for transport in [Transport::Ws, Transport::Sse] {
        for clustered in [false, true] {
            eprintln!("  {} idle, {} ...", transport.label(), if clustered { "--redis" } else { "in memory" });
            let tag = format!("cluster-idle-{}-{}", transport.label(), if clustered { "redis" } else { "memory" }).replace('+', "-");
            let mut redis = if clustered { Some(Redis::start(&args.redis_server, pin, &format!("{tag}-redis")).await?) } else { None };
            let mut node = start_node(redis.as_ref(), pin, &tag).await?;
            sleep(Duration::from_millis(300)).await;
            let redis_now = |r: &Redis| -> anyhow::Result<(u64, u64)> {
                Ok((r.used_memory()?, r.command(&["DBSIZE"])?.parse().context("DBSIZE")?))
            };
            let before = (node.rss_kib(), redis.as_ref().map(redis_now).transpose()?);
            let mut held = Held::default();
            let opened_at = Instant::now();
            let failed = open_many(&mut held, |_| transport, sessions, &[node.addr], None, args.open_concurrency, true, None).await;
            let took = opened_at.elapsed();
            sleep(settle).await;
            let after = (node.rss_kib(), redis.as_ref().map(redis_now).transpose()?);
            let alive = node.alive();
            rows.push(IdleRow {
                transport,
                clustered,
                held: held.len(),
                failed,
                took,
                rss: (before.0, after.0),
                redis: before.1.zip(after.1),
                alive,
            });
            if clustered {
                health.push(format!("{}: {}", transport.label(), nodes_health(&mut [&mut node], redis.as_mut())));
            }
            drop(held);
            drop(node);
            drop(redis);
            sleep(Duration::from_millis(500)).await;
        }
    }

    let mut out = String::new();
    writeln!(out, "#### cluster idle memory: {sessions} sessions opened ({} at a time) and held on one node\n", args.open_concurrency)?;
    writeln!(out, "The node's RSS growth (`/proc/PID/status`) and, in cluster mode, Redis's `used_memory` (`INFO memory`) and key count (`DBSIZE`) growth, over the sessions held; each row with a fresh node (and Redis).\n")?;
    writeln!(out, "| transport | setup | held | failed | time to open | node RSS before | node RSS held | KiB/session on the node | target | Redis used_memory before | held | KiB/session in Redis | target | Redis keys/session | |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for row in &rows {
        let per_node = row.rss.1.saturating_sub(row.rss.0) as f64 / row.held.max(1) as f64;
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let (redis_cells, per_redis) = match row.redis {
            Some(((m0, k0), (m1, k1))) => {
                let per = m1.saturating_sub(m0) as f64 / 1024.0 / row.held.max(1) as f64;
                let keys = k1.saturating_sub(k0) as f64 / row.held.max(1) as f64;
                (
                    format!("{} | {} | {per:.2} | <= 2 | {keys:.2}", mib(m0 / 1024), mib(m1 / 1024)),
                    Some(per),
                )
            }
            None => ("- | - | - | - | -".into(), None),
        };
        let verdict = match per_redis {
            Some(per) => met(per_node <= 8.0 && per <= 2.0 && row.failed == 0 && row.held == sessions && row.alive),
            None => "reference",
        };
        writeln!(
            out,
            "| {} | {}{} | {} | {} | {:.2} s | {} | {} | {per_node:.2} | {} | {redis_cells} | {verdict} |",
            row.transport.label(),
            if row.clustered { "--redis" } else { "in memory" },
            if row.alive { "" } else { " (DIED)" },
            row.held,
            row.failed,
            row.took.as_secs_f64(),
            mib(row.rss.0),
            mib(row.rss.1),
            if row.clustered { "<= 8" } else { "-" },
        )?;
    }
    writeln!(out)?;
    for line in health {
        writeln!(out, "{line}")?;
    }
    Ok(out)
}
