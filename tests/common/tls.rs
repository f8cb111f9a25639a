//! A test certificate authority and the clients that trust it: certificates for the HTTPS
//! listener made by the test (rcgen), never a blanket "ignore certificate errors".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The names every test certificate is valid for: loopback, and a made-up host that tests
/// resolve to loopback themselves (for requests whose authority is not an address).
pub const NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", "gateway.test"];

/// A CA and one server certificate it signed.
pub struct TestCa {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The server certificate (PEM) and its key (PEM).
    pub cert_pem: String,
    pub key_pem: String,
    /// DER of the server certificate, to compare with what a handshake presented.
    pub cert_der: CertificateDer<'static>,
    /// Base64 SHA-256 of the server key's `SubjectPublicKeyInfo` (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "switchyard test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let mut made = TestCa { ca, ca_key, cert_pem: String::new(), key_pem: String::new(), cert_der: CertificateDer::from(vec![]), spki_sha256: String::new() };
        made.issue();
        made
    }

    /// Signs a fresh server certificate (new key) and makes it this CA's current one.
    pub fn issue(&mut self) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(NAMES.map(str::to_owned).to_vec()).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        self.cert_pem = cert.pem();
        self.key_pem = key.serialize_pem();
        self.cert_der = cert.der().clone();
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
        self.spki_sha256 = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    }

    /// Writes the server certificate and key into `dir` (`cert.pem`, `key.pem`); returns their
    /// paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// The server's rustls configuration with this certificate (the listener's own loader).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let dir = std::env::temp_dir().join(format!("switchyard-testca-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self.write(&dir);
        let certificates = switchyard::server::tls::Certificates::load(&cert, &key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        certificates.server_config().unwrap()
    }

    /// A rustls client configuration trusting this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A reqwest client trusting this CA, speaking HTTP/2 when the server offers it (`h2`) or
    /// HTTP/1.1 only; `gateway.test` resolves to `addr`.
    pub fn reqwest(&self, h2: bool, addr: std::net::SocketAddr) -> reqwest::Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2", b"http/1.1"] } else { &[b"http/1.1"] };
        let mut builder = reqwest::Client::builder().use_preconfigured_tls(self.client_config(alpn)).resolve("gateway.test", addr);
        if !h2 {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    /// A TLS connection to `addr` offering `alpn`, checked against `name`.
    pub async fn connect(&self, addr: std::net::SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(alpn)));
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake")
    }
}

/// The leaf certificate a TLS connection was given.
pub fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("the server sent a certificate")[0].clone()
}
