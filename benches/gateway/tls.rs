//! The `tls` scenario (issue 16): switchyard over HTTPS against the same binary over plain HTTP,
//! in one run. Round trips: WebSocket over TLS against plain WebSocket, and SSE+POST over
//! HTTP/2 (every session's stream and POSTs multiplexed on one connection) against SSE+POST over
//! plain HTTP/1.1 (a connection per stream, pooled connections for the POSTs). Idle memory: a
//! TLS WebSocket per session, an HTTP/2 connection per SSE session, and 50 SSE streams per
//! HTTP/2 connection, each beside the plain transport's figure.
//!
//! The holders here (a TLS WebSocket per session, SSE streams on HTTP/2 connections) also hold
//! the population of `scale --scale-tls`, in its `__hold` children (`client::hold_main`): each
//! opens a bounded number at a time (the handshake burst), each within a timeout, and counts
//! what failed rather than stopping.
//!
//! The certificate is made here (a CA and a server certificate for `localhost`, rcgen) and
//! written under `target/bench-tls/`; the server reads it through `SWITCHYARD_TLS_CERT` and
//! `SWITCHYARD_TLS_KEY`, the clients trust that CA alone.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{sleep, timeout};

use crate::client::{self, Endpoints, LoopResult, Transport, OPEN_TIMEOUT};
use crate::procs::{self, Kind, Server};
use crate::{measure_loop, met, q, ratio, Args};

/// Writes a CA and a server certificate it signed under `target/bench-tls/`; returns the
/// certificate and key paths (PEM, for the server) and the CA's (DER, for [`client_config`]).
pub fn certificates() -> anyhow::Result<(String, String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?.signed_by(&key, &ca, &ca_key)?;
    let dir = procs::target_dir().join("bench-tls");
    std::fs::create_dir_all(&dir)?;
    let (cert_path, key_path, ca_path) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.der"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::write(&ca_path, ca.der())?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    Ok((path(cert_path), path(key_path), path(ca_path)))
}

/// A client configuration trusting the CA at `ca_der` (written by [`certificates`]) alone: what
/// this process and the `__hold` children of `scale --scale-tls` connect with.
pub fn client_config(ca_der: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(std::fs::read(ca_der).with_context(|| format!("reading {ca_der}"))?))?;
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn start_tls(args: &Args, tag: &str, cert: &str, key: &str) -> anyhow::Result<Server> {
    Server::start_env(Kind::Switchyard, None, !args.no_pin, tag, &tls_env(cert, key)).await
}

/// The environment that makes switchyard serve HTTPS with this certificate.
pub fn tls_env<'a>(cert: &'a str, key: &'a str) -> [(&'static str, &'a str); 2] {
    [("SWITCHYARD_TLS_CERT", cert), ("SWITCHYARD_TLS_KEY", key)]
}

pub async fn tls(args: &Args) -> anyhow::Result<String> {
    let (cert, key, ca) = certificates()?;
    client::set_tls(client_config(&ca)?);
    let mut out = String::new();
    rtt(args, &cert, &key, &mut out).await?;
    idle(args, &cert, &key, &mut out).await?;
    Ok(out)
}

/// Round trips over TLS against plain, in alternating rounds (plain first, then TLS first), the
/// ratio the median of the rounds'.
async fn rtt(args: &Args, cert: &str, key: &str, out: &mut String) -> anyhow::Result<()> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let seconds = Duration::from_secs_f64(args.seconds);
    let plain = Server::start(Kind::Switchyard, !args.no_pin, "tls-rtt-plain").await?;
    let tls = start_tls(args, "tls-rtt-tls", cert, key).await?;
    writeln!(
        out,
        "### tls: round trips, {} sessions in closed loops, {} alternating rounds of {:.1} s (median ratio)\n",
        args.sessions, args.alternations, args.seconds
    )?;
    writeln!(
        out,
        "| transport | plain (HTTP/1.1) rt/s | p99 | TLS rt/s | p99 | errors | TLS / plain | target | | server CPU µs per round trip, plain / TLS | loadgen CPU, plain / TLS | server CPU ratio, plain / TLS |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")?;
    for (transport, label) in [(Transport::Ws, "WebSocket (TLS: HTTP/1.1 upgrade)"), (Transport::Sse, "SSE+POST (TLS: HTTP/2, one connection)")] {
        let mut ratios = Vec::new();
        let (mut plain_all, mut tls_all) = (Vec::<LoopResult>::new(), Vec::<LoopResult>::new());
        // Each side's server and load-generator CPU shares, summed over the rounds.
        let (mut plain_cpu, mut tls_cpu) = ((0.0, 0.0), (0.0, 0.0));
        let mut errors = 0;
        for round in 0..args.alternations {
            eprintln!("  {} round {} ...", transport.label(), round + 1);
            let plain_run = || measure_loop(&plain, Endpoints::single(plain.addr), transport, args.sessions, warmup, seconds, Duration::ZERO);
            let tls_run = || measure_loop(&tls, Endpoints::tls(tls.addr), transport, args.sessions, warmup, seconds, Duration::ZERO);
            let (p, t) = if round % 2 == 0 {
                let p = plain_run().await;
                (p, tls_run().await)
            } else {
                let t = tls_run().await;
                (plain_run().await, t)
            };
            errors += p.result.errors + t.result.errors;
            ratios.push(ratio(t.result.rate(), p.result.rate()));
            plain_cpu = (plain_cpu.0 + p.server_cpu, plain_cpu.1 + p.loadgen_cpu);
            tls_cpu = (tls_cpu.0 + t.server_cpu, tls_cpu.1 + t.loadgen_cpu);
            plain_all.push(p.result);
            tls_all.push(t.result);
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let sum = |all: &[LoopResult]| {
            let mut h = client::histogram();
            let mut rate = 0.0;
            for r in all {
                h.add(&r.latencies).expect("same bounds");
                rate += r.rate();
            }
            (rate / all.len().max(1) as f64, h)
        };
        let ((p_rate, p_h), (t_rate, t_h)) = (sum(&plain_all), sum(&tls_all));
        // CPU per round trip from the mean share of a core and the mean rate; their ratio is
        // the rate ratio to expect where the server's core is the limit, not the load generator.
        let rounds = args.alternations.max(1) as f64;
        let (p_us, t_us) = (plain_cpu.0 / rounds * 1e6 / p_rate.max(1.0), tls_cpu.0 / rounds * 1e6 / t_rate.max(1.0));
        writeln!(
            out,
            "| {label} | {p_rate:.0} | {} µs | {t_rate:.0} | {} µs | {errors} | {median:.2} | >= 0.8 | {} | {p_us:.1} / {t_us:.1} | {:.0} % / {:.0} % | {:.2} |",
            q(&p_h, 0.99),
            q(&t_h, 0.99),
            met(median >= 0.8 && errors == 0),
            plain_cpu.1 / rounds * 100.0,
            tls_cpu.1 / rounds * 100.0,
            ratio(p_us, t_us)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// One idle layout's server RSS growth.
struct IdleRow {
    label: &'static str,
    held: usize,
    connections: usize,
    per_kib: f64,
    target: Option<f64>,
}

async fn idle(args: &Args, cert: &str, key: &str, out: &mut String) -> anyhow::Result<()> {
    let n = args.tls_idle;
    let per_conn = args.tls_streams_per_connection.max(1);
    let settle = Duration::from_secs_f64(args.settle);
    let mut rows = Vec::new();
    for layout in 0..5 {
        let tls = layout != 0 && layout != 3;
        let server = if tls { start_tls(args, &format!("tls-idle-{layout}"), cert, key).await? } else {
            Server::start(Kind::Switchyard, !args.no_pin, &format!("tls-idle-{layout}")).await?
        };
        sleep(Duration::from_millis(300)).await;
        let before = server.rss_kib();
        let (label, target, connections, holding) = match layout {
            0 => ("WebSocket, plain", None, n, hold_ws(server.addr, None, n, false, args.open_concurrency).await.all()?),
            1 => ("WebSocket, TLS, a connection each", Some(16.0), n, hold_ws(server.addr, None, n, true, args.open_concurrency).await.all()?),
            2 => ("SSE, HTTP/2, a connection each", None, n, hold_sse_h2(server.addr, None, n, 1, args.open_concurrency).await.all()?),
            3 => ("SSE, plain HTTP/1.1, a connection each", None, n, hold_sse_plain(server.addr, n, args.open_concurrency).await?),
            _ => (
                "SSE, HTTP/2, 50 streams per connection",
                Some(12.0),
                n.div_ceil(per_conn),
                hold_sse_h2(server.addr, None, n, per_conn, args.open_concurrency).await.all()?,
            ),
        };
        sleep(settle).await;
        let after = server.rss_kib();
        let per_kib = after.saturating_sub(before) as f64 / n.max(1) as f64;
        eprintln!("  {label}: {per_kib:.2} KiB/session");
        rows.push(IdleRow { label, held: n, connections, per_kib, target });
        drop(holding);
        drop(server);
        sleep(Duration::from_millis(500)).await;
    }
    writeln!(out, "### tls: idle memory, server RSS growth per session ({n} sessions held)\n")?;
    writeln!(out, "| layout | sessions | connections | KiB/session | target | |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---|")?;
    for row in rows {
        let (target, verdict) = match row.target {
            Some(t) => (format!("<= {t}"), met(row.per_kib <= t)),
            None => ("-".to_owned(), "for comparison"),
        };
        writeln!(out, "| {} | {} | {} | {:.2} | {target} | {verdict} |", row.label, row.held, row.connections, row.per_kib)?;
    }
    writeln!(out)?;
    Ok(())
}

/// What holds idle sessions open: reader tasks (aborted on drop) and connection handles.
pub type Holding = Vec<Box<dyn std::any::Any + Send>>;

/// Sessions opened by [`hold_ws`] or [`hold_sse_h2`]: what holds them, and the failures.
#[derive(Default)]
pub struct Opened {
    pub holding: Holding,
    /// Sessions open (an HTTP/2 connection holds several).
    pub sessions: usize,
    /// Sessions that failed or timed out opening (all of a connection's when it failed).
    pub failed: usize,
    pub first_error: Option<String>,
}

impl Opened {
    /// What holds the sessions, or the first failure if any failed (the idle figures need all).
    pub fn all(self) -> anyhow::Result<Holding> {
        match self.first_error {
            Some(err) => Err(anyhow!("{} sessions failed to open; first: {err}", self.failed)),
            None => Ok(self.holding),
        }
    }

    fn add(&mut self, result: anyhow::Result<(usize, Holding)>, sessions: usize) {
        match result {
            Ok((open, holding)) => {
                self.sessions += open;
                self.holding.extend(holding);
            }
            Err(err) => {
                self.failed += sessions;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
}

/// `n` WebSocket sessions (over TLS or not) from `local` when given, `concurrency` opening at a
/// time (the handshake burst bounded), each within [`OPEN_TIMEOUT`] and read by a task (pings
/// answered).
pub async fn hold_ws(addr: SocketAddr, local: Option<IpAddr>, n: usize, tls: bool, concurrency: usize) -> Opened {
    let mut opening = futures_util::stream::iter(0..n)
        .map(|_| async move {
            timeout(OPEN_TIMEOUT, async move {
                let task: Box<dyn std::any::Any + Send> = if tls {
                    let mut ws = client::ws_open_tls(addr, local).await?;
                    Box::new(Aborting(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })))
                } else {
                    let mut ws = client::ws_open(addr, local, true).await?;
                    Box::new(Aborting(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })))
                };
                Ok::<_, anyhow::Error>((1, vec![task]))
            })
            .await
            .map_err(|_| anyhow!("not open within {OPEN_TIMEOUT:?}"))?
        })
        .buffer_unordered(concurrency.max(1));
    let mut opened = Opened::default();
    while let Some(result) = opening.next().await {
        opened.add(result, 1);
    }
    opened
}

/// `n` SSE sessions over plain HTTP/1.1, a connection each, each read by a task.
async fn hold_sse_plain(addr: SocketAddr, n: usize, concurrency: usize) -> anyhow::Result<Holding> {
    let opened: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| async move {
            let (_, mut events) = timeout(OPEN_TIMEOUT, client::sse_open(addr, None)).await.map_err(|_| anyhow!("not open in time"))??;
            let task: Box<dyn std::any::Any + Send> = Box::new(Aborting(tokio::spawn(async move { while events.next_event().await.is_ok() {} })));
            Ok::<_, anyhow::Error>(task)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    opened.into_iter().collect()
}

/// `n` SSE sessions over HTTP/2 from `local` when given, `per_conn` streams on each
/// connection, each stream read by a task until its `session` event and on; `concurrency`
/// sessions opening at a time (at least one connection), each connection within three
/// [`OPEN_TIMEOUT`]s.
pub async fn hold_sse_h2(addr: SocketAddr, local: Option<IpAddr>, n: usize, per_conn: usize, concurrency: usize) -> Opened {
    let per_conn = per_conn.max(1);
    let connections = n.div_ceil(per_conn);
    let mut opening = futures_util::stream::iter(0..connections)
        .map(|c| async move {
            let streams = per_conn.min(n - c * per_conn);
            let result = timeout(OPEN_TIMEOUT * 3, h2_streams(addr, local, streams))
                .await
                .map_err(|_| anyhow!("connection {c} not open in time"))
                .and_then(|r| r)
                .map(|holding| (streams, holding));
            (result, streams)
        })
        .buffer_unordered((concurrency / per_conn).max(1));
    let mut opened = Opened::default();
    while let Some((result, streams)) = opening.next().await {
        opened.add(result, streams);
    }
    opened
}

/// One HTTP/2 connection with `streams` SSE sessions on it, each past its `session` event.
async fn h2_streams(addr: SocketAddr, local: Option<IpAddr>, streams: usize) -> anyhow::Result<Holding> {
    let tls = client::tls_connect(addr, local, &[b"h2"]).await?;
    let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.context("HTTP/2 handshake")?;
    let mut held: Vec<Box<dyn std::any::Any + Send>> = vec![Box::new(Aborting(tokio::spawn(async move {
        let _ = connection.await;
    })))];
    let opening = (0..streams).map(|_| {
        let mut send = send.clone();
        async move {
            let request = hyper::Request::get(format!("https://{addr}/sse")).body(Empty::<bytes::Bytes>::new())?;
            let response = send.send_request(request).await?;
            let mut events = BodyDataStream::new(response.into_body()).eventsource();
            match events.next().await {
                Some(Ok(event)) if event.event == "session" => {}
                other => anyhow::bail!("no session event: {other:?}"),
            }
            Ok::<Box<dyn std::any::Any + Send>, anyhow::Error>(Box::new(Aborting(tokio::spawn(async move {
                while let Some(Ok(_)) = events.next().await {}
            }))))
        }
    });
    for task in futures_util::future::join_all(opening).await {
        held.push(task?);
    }
    held.push(Box::new(send));
    Ok(held)
}

/// A task aborted when this is dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}
