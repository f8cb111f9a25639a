//! The binary's HTTPS flags as an operator uses them: `--tls-cert`/`--tls-key` (a bad file
//! stops the start with its name), a certificate renewed and `SIGHUP` sent while clients are
//! connected, and `--tls-self-signed`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{presented, TestCa};
use common::{hello_sid, start_binary, wait_until, within, SseClient, WsClient};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;

/// A temp dir of this test's own, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(what: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("switchyard-{what}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with `args` expecting it to refuse to start; returns its stderr.
fn failed_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the binary kept running with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "{args:?} must not start: {stderr}");
    assert!(!stderr.contains("listening"), "nothing listens with {args:?}: {stderr}");
    stderr
}

#[test]
fn a_missing_or_bad_certificate_file_stops_the_start_naming_it() {
    let dir = Dir::new("tls-bad");
    let ca = TestCa::new();
    let (cert, key) = ca.write(&dir.0);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN NOTHING-----\n").unwrap();
    let junk = junk.to_str().unwrap();
    let other = TestCa::new();
    let wrong_key = dir.0.join("wrong-key.pem");
    std::fs::write(&wrong_key, &other.key_pem).unwrap();
    let wrong_key = wrong_key.to_str().unwrap();

    for (args, named) in [
        (vec!["--tls-cert", missing, "--tls-key", key], missing),
        (vec!["--tls-cert", cert, "--tls-key", missing], missing),
        (vec!["--tls-cert", junk, "--tls-key", key], junk),
        (vec!["--tls-cert", cert, "--tls-key", junk], junk),
        (vec!["--tls-cert", cert, "--tls-key", wrong_key], wrong_key),
    ] {
        let stderr = failed_start(&args);
        assert!(stderr.contains(named), "the message names {named}: {stderr}");
    }
    // One without the other is a usage error.
    let stderr = failed_start(&["--tls-cert", cert]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_connections_and_live_sessions_go_on() {
    let dir = Dir::new("tls-reload");
    let mut ca = TestCa::new();
    let (cert, key) = ca.write(&dir.0);
    let (binary, addr) = start_binary(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()], None);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let first = ca.cert_der.clone();

    // A live WebSocket session (HTTP/1.1 over TLS) and an SSE session over HTTP/2.
    let tls = ca.connect(addr, &[b"http/1.1"]).await;
    assert_eq!(presented(&tls), first);
    let (socket, _) = within("WebSocket handshake", tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls)).await.unwrap();
    let mut ws = WsClient { socket };
    ws.hello().await;
    let http = ca.reqwest(true, addr);
    let response = within("SSE over HTTP/2", http.get(format!("https://{addr}/sse")).send()).await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut sse = SseClient::from_response(response);
    let sid = hello_sid(sse.next().await, "sse");

    // The renewal: new files, then SIGHUP.
    ca.issue();
    ca.write(&dir.0);
    assert_ne!(ca.cert_der, first);
    let status = Command::new("kill").args(["-HUP", &binary.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_until("a new connection to get the renewed certificate", || async {
        presented(&ca.connect(addr, &[b"h2"]).await) == ca.cert_der
    })
    .await;
    assert!(binary.1.lock().unwrap().iter().any(|l| l.contains("certificate reloaded")), "the reload is logged");

    // Both sessions go on, on the connections made with the old certificate.
    for i in 0..3 {
        ws.send(&json!({"event": "message", "data": i}).to_string()).await;
        assert_eq!(ws.next().await.event, "response");
        let posted = within("POST", http.post(format!("https://{addr}/sse?sid={sid}")).header("content-type", "text/plain").body(format!("hello {i}")).send()).await.unwrap();
        assert_eq!(posted.status(), 202);
        assert_eq!(sse.next().await.event, "response");
    }
}

#[tokio::test]
async fn out_of_file_descriptors_the_https_listener_refuses_and_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Dir::new("tls-fds");
    let ca = TestCa::new();
    let (cert, key) = ca.write(&dir.0);
    let (binary, addr) = start_binary(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()], Some(64));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(&[b"http/1.1"])));
    // Far more streams than 64 descriptors allow. One refused is closed before or during its
    // handshake (a client in a TLS handshake reads no plain-text 503).
    let mut held = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..100 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let Ok(Ok(mut tls)) = tokio::time::timeout(common::WAIT, connector.connect(name, tcp)).await else {
            refused += 1;
            continue;
        };
        let _ = tls.write_all(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let mut head = [0u8; 512];
        let n = within("a status line or the end", tls.read(&mut head)).await.unwrap_or(0);
        if head[..n].starts_with(b"HTTP/1.1 200") {
            ok += 1;
            held.push(tls);
        } else {
            refused += 1;
        }
    }
    assert!(ok > 20 && refused > 0, "{ok} held, {refused} refused");
    drop(held);
    let http = ca.reqwest(true, addr);
    wait_until("a new HTTPS request after the descriptors came back", || async {
        http.get(format!("https://{addr}/healthz")).send().await.is_ok_and(|response| response.status() == 200)
    })
    .await;
    let mut binary = binary;
    assert!(binary.0.try_wait().unwrap().is_none(), "the server is still running");
}

/// Accepts exactly the certificate whose SHA-256 is `fingerprint` (colon-separated hex).
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity);
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        if hex.join(":") == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("fingerprint {} is not the logged {}", hex.join(":"), self.fingerprint)))
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn tls_self_signed_serves_https_with_the_logged_fingerprint() {
    let (binary, addr) = start_binary(&["--tls-self-signed"], None);
    let log = binary.1.lock().unwrap().join("\n");
    let fingerprint = log
        .split("fingerprint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the fingerprint is logged:\n{log}"))
        .to_owned();
    assert!(log.contains("spki_sha256="), "the SPKI hash for Chromium is logged:\n{log}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let http = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
    let response = within("GET /healthz over the self-signed HTTPS", http.get(format!("https://{addr}/healthz")).send()).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
}
