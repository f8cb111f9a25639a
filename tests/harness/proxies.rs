//! squid and nginx, each started by a test on its own loopback port from a config template
//! under `tests/proxies/`, with its pid file, logs and temp files in a temp dir, and stopped by
//! pid when the handle drops.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, render_template, stop_child, wait_for_port, TempDir};

pub const SQUID: &str = "/usr/sbin/squid";
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running proxy.
pub struct Proxy {
    pub name: String,
    pub port: u16,
    child: Child,
    /// Holds the config, pid file and logs; removed after the process is stopped.
    dir: TempDir,
}

impl Proxy {
    /// squid as a forward proxy with Debian's stock rules (`tests/proxies/squid.conf`).
    pub async fn squid() -> Proxy {
        let dir = TempDir::new("squid");
        // squid started as root drops to the `proxy` user, which must write its logs here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = free_port();
        let conf = render_template(
            "squid.conf",
            &[("DIR", dir.path().display().to_string()), ("PORT", port.to_string())],
        );
        let conf_path = dir.path().join("squid.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(SQUID)
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {SQUID}: {err} (tests/run-all.sh installs it)"));
        let proxy = Proxy { name: "squid".into(), port, child, dir };
        proxy.until_listening().await;
        proxy
    }

    /// nginx as a reverse proxy in front of `upstream`, from the template `conf` (e.g.
    /// `nginx-plain.conf`).
    pub async fn nginx(conf: &str, upstream: SocketAddr) -> Proxy {
        Proxy::nginx_from(conf, &[("UPSTREAM", upstream.to_string())]).await
    }

    /// nginx terminating TLS (with HTTP/2) in front of `upstream`, from the template `conf`
    /// (`nginx-http2.conf`), with the certificate and key files given.
    pub async fn nginx_tls(conf: &str, upstream: SocketAddr, cert: &std::path::Path, key: &std::path::Path) -> Proxy {
        let values = [
            ("UPSTREAM", upstream.to_string()),
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
        ];
        Proxy::nginx_from(conf, &values).await
    }

    /// nginx as a plain round-robin load balancer over `upstreams`
    /// (`tests/proxies/nginx-cluster.conf`): no affinity of any kind, a node that refuses
    /// connections skipped for the next, and an `X-Upstream` header naming the node that
    /// answered.
    pub async fn nginx_round_robin(upstreams: &[SocketAddr]) -> Proxy {
        assert!(!upstreams.is_empty(), "a load balancer needs at least one upstream");
        let servers: Vec<String> = upstreams.iter().map(|addr| format!("server {addr} max_fails=1 fail_timeout=1s;")).collect();
        Proxy::nginx_from("nginx-cluster.conf", &[("UPSTREAMS", servers.join("\n        "))]).await
    }

    /// nginx from the template `conf`, with `values` filled in besides `DIR` and `PORT`.
    async fn nginx_from(conf: &str, values: &[(&str, String)]) -> Proxy {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let mut all = vec![("DIR", dir.path().display().to_string()), ("PORT", port.to_string())];
        all.extend(values.iter().cloned());
        let text = render_template(conf, &all);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, text).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {NGINX}: {err} (tests/run-all.sh installs it)"));
        let proxy = Proxy { name: format!("nginx ({conf})"), port, child, dir };
        proxy.until_listening().await;
        proxy
    }

    async fn until_listening(&self) {
        let what = format!("{} (logs in {})", self.name, self.dir.path().display());
        wait_for_port(self.port, Duration::from_secs(15), &what).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The proxy's access log as it is now.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits until the access log has a line for which `pred` holds; returns the whole log.
    pub async fn wait_for_log_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if log.lines().any(&pred) {
                return log;
            }
            assert!(Instant::now() < deadline, "{}'s access log never showed {what}; it holds:\n{log}", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
        if std::thread::panicking() {
            // The proxy's view of a failed scenario, before its temp dir goes.
            for log in ["access.log", "error.log", "cache.log"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.path().join(log)) {
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    eprintln!("--- {} {log} (last 40 lines) ---\n{}", self.name, tail.join("\n"));
                }
            }
        }
    }
}
