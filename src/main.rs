//! The switchyard binary: the library, the seed's default app and the demo page.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use switchyard::config::Cli;
use switchyard::admin;
use switchyard::api::{self, ApiAccess};
use switchyard::hub::Cluster;
use switchyard::server::tls::Certificates;
use switchyard::upstream::Upstream;
use switchyard::{app, server, Gateway};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let upstream = cli.upstream.config().map(Upstream::new);
    let mut builder = Gateway::builder(cli.config());
    if let Some(url) = &cli.redis {
        let ca = match &cli.redis_ca {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading --redis-ca {}", path.display()))?),
            None => None,
        };
        builder = builder.cluster(connect(url, ca.as_deref()).await);
    }
    let builder = match &upstream {
        // With --upstream the application behind the gateway is the app: no built-in handlers.
        Some(upstream) if upstream.config().events.is_some() => upstream.install(builder),
        Some(upstream) => upstream.install(app::seed(builder)),
        None => app::seed(builder),
    };
    let gateway = builder.socket_io_at_root().build();
    if let Some(cluster) = gateway.hub().cluster() {
        if !cluster.ready(std::time::Duration::from_secs(10)).await {
            tracing::warn!("not subscribed to Redis yet; serving anyway (new sessions get 503 until it is)");
        }
    }
    if let Some(upstream) = &upstream {
        tracing::info!(events = ?upstream.config().events, on_open = ?upstream.config().on_open,
                       on_expire = ?upstream.config().on_expire, "forwarding to the application");
    }
    let access = ApiAccess::new(cli.upstream.api_key.as_deref(), cli.bind);
    if access == ApiAccess::Disabled {
        tracing::warn!("publish API and operator page (/admin) disabled: no --api-key and not bound to loopback");
    }
    // Certificates first: a bad file stops the start before anything listens.
    let tls = tls_certificates(&cli)?;
    let listener = server::bind(cli.bind).with_context(|| format!("binding {}", cli.bind))?;
    let router = server::app(&gateway, &cli.static_dir)
        .nest("/api", api::router(gateway.hub().clone(), access.clone()))
        .nest_service("/admin", admin::router_at(gateway.hub().clone(), access, gateway.tasks(), listener.local_addr()?));
    let addr = listener.local_addr()?;
    if let Some(cluster) = gateway.hub().cluster() {
        match cli.advertise.or_else(|| (!addr.ip().is_unspecified()).then_some(addr)) {
            Some(advertised) => cluster.advertise(advertised).await,
            None => tracing::warn!(%addr, "no --advertise: other nodes cannot pass this node's Socket.IO long-polling requests on to it"),
        }
    }
    match tls {
        None => {
            tracing::info!(%addr, "switchyard listening; demo page at http://{addr}/");
            server::run(listener, router, gateway, shutdown_signal()).await.context("serving")?;
        }
        Some(certificates) => {
            let config = certificates.server_config()?;
            tokio::spawn(reload_on_hangup(certificates));
            tracing::info!(%addr, "switchyard listening (HTTPS: HTTP/2 and HTTP/1.1); demo page at https://{addr}/");
            server::run_tls(listener, router, gateway, config, shutdown_signal()).await.context("serving")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The HTTPS listener's certificates, if `--tls-cert`/`--tls-key` or `--tls-self-signed` ask for
/// them. A file that cannot be used is an error naming it.
fn tls_certificates(cli: &Cli) -> anyhow::Result<Option<Arc<Certificates>>> {
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        return Ok(Some(Certificates::load(cert, key).context("loading the TLS certificate (--tls-cert, --tls-key)")?));
    }
    if cli.tls_self_signed {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), cli.bind.ip().to_string()];
        let made = Certificates::self_signed(names)?;
        tracing::warn!(
            fingerprint = %made.fingerprint,
            spki_sha256 = %made.spki_sha256,
            "serving a self-signed certificate for development (Chromium trusts it with --ignore-certificate-errors-spki-list=<spki_sha256>)"
        );
        return Ok(Some(made.certificates));
    }
    Ok(None)
}

/// Reads the certificate files again on every SIGHUP. Open connections keep the certificate
/// they were made with; a failed reload keeps the one in use and logs why.
#[cfg(unix)]
async fn reload_on_hangup(certificates: Arc<Certificates>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP: certificates will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match certificates.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded; new connections get it"),
            Err(err) => tracing::error!(%err, "SIGHUP: TLS certificate not reloaded; still serving the previous one"),
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: Arc<Certificates>) {}

/// Connects to cluster mode's Redis, trying again every second until it answers (a node
/// started before its Redis waits for it rather than exiting).
async fn connect(url: &str, ca: Option<&[u8]>) -> Cluster {
    let mut attempt = 0u32;
    loop {
        match Cluster::connect(url, ca).await {
            Ok(cluster) => return cluster,
            Err(err) => {
                attempt += 1;
                tracing::warn!(%err, attempt, "cannot connect to Redis; trying again in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received; draining");
}
