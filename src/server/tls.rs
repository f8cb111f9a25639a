//! The HTTPS listener's certificates: read from PEM files, swapped on reload, or made up for
//! development.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate of every handshake, so the
//! listener's configuration holds a [`Certificates`] rather than a fixed chain: a reload
//! (`SIGHUP` in the binary) reads the files again and swaps one `Arc` in an [`ArcSwap`].
//! Handshakes from then on get the new certificate; connections already open keep theirs,
//! since a TLS session never looks at its certificate again after the handshake. A reload that
//! fails (a file half written by a renewal tool, a key that does not match) keeps the old
//! certificate and says why.
//!
//! Every error names the file it is about, since "no private key" without a path is of no use
//! to whoever wrote the deployment's unit file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, most preferred first: HTTP/2 lets every tab of a site share one
/// connection, HTTP/1.1 is for clients that do not speak it.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What can go wrong reading a certificate and its key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or is not PEM.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{0}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks, the full chain)")]
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    #[error("{0}: no private key in it (expected a PEM `BEGIN PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)")]
    NoKey(PathBuf),
    /// The key is of a kind rustls cannot sign with, or does not belong to the certificate.
    #[error("{key} does not fit {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// Making a self-signed certificate failed.
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Config(String),
}

/// The certificate handshakes get, swappable while the server runs.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    /// The files it was read from; `None` for a self-signed certificate, which has none.
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").field("files", &self.files).finish_non_exhaustive()
    }
}

/// A self-signed certificate made at start-up, with what a developer needs to trust it.
pub struct SelfSigned {
    /// The certificate, ready to serve.
    pub certificates: Arc<Certificates>,
    /// SHA-256 of the certificate (DER), as colon-separated hex: what browsers show.
    pub fingerprint: String,
    /// Base64 of the SHA-256 of its public key (SPKI): Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl Certificates {
    /// Reads the chain in `cert` (PEM, leaf first) and the private key in `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = read(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            current: ArcSwap::from_pointee(certified),
            files: Some((cert.to_owned(), key.to_owned())),
            provider,
        }))
    }

    /// A fresh self-signed certificate for `names` (host names or addresses), for development.
    pub fn self_signed(names: Vec<String>) -> Result<SelfSigned, TlsError> {
        let err = |e: rcgen::Error| TlsError::SelfSigned(e.to_string());
        let key_pair = rcgen::KeyPair::generate().map_err(err)?;
        let cert = rcgen::CertificateParams::new(names).map_err(err)?.self_signed(&key_pair).map_err(err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|e| TlsError::SelfSigned(e.to_owned()))?;
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], key, &provider)
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        let fingerprint = sha256(cert.der()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(sha256(&key_pair.public_key_der()));
        let certificates = Arc::new(Certificates { current: ArcSwap::from_pointee(certified), files: None, provider });
        Ok(SelfSigned { certificates, fingerprint, spki_sha256 })
    }

    /// Reads the files again and serves what they hold from the next handshake on. On an error
    /// the certificate in use stays. A self-signed certificate has no files: nothing happens.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else { return Ok(()) };
        self.current.store(Arc::new(read(cert, key, &self.provider)?));
        Ok(())
    }

    /// The leaf certificate handshakes get now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }

    /// The rustls configuration of the HTTPS listener: these certificates, ALPN [`ALPN`], TLS
    /// 1.2 and 1.3 with the ring provider's safe defaults.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The chain in `cert` and the key in `key`, checked to belong together.
fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls_pki_types::pem::Error| TlsError::Read { path, reason: pem_reason(e) }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read_err(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = match PrivateKeyDer::from_pem_file(key) {
        Ok(private) => private,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key.to_owned())),
        Err(e) => return Err(read_err(key)(e)),
    };
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A PEM error as a sentence (the I/O error's own text for a file that cannot be opened).
fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("switchyard-tls-unit-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn errors_name_the_file() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = temp("cert.pem", &made.cert.pem());
        let key = temp("key.pem", &made.key_pair.serialize_pem());
        let wrong_key = temp("wrong.pem", &other.serialize_pem());
        let junk = temp("junk.pem", "not pem at all\n");
        let missing = std::env::temp_dir().join("switchyard-tls-unit-missing.pem");

        assert!(Certificates::load(&cert, &key).is_ok());
        let message = |c: &Path, k: &Path| Certificates::load(c, k).unwrap_err().to_string();
        assert!(message(&missing, &key).contains(&missing.display().to_string()));
        assert!(message(&missing, &key).contains("No such file"), "{}", message(&missing, &key));
        assert!(message(&cert, &missing).contains(&missing.display().to_string()));
        assert!(message(&junk, &key).contains("junk.pem") && message(&junk, &key).contains("no certificate"));
        assert!(message(&cert, &junk).contains("junk.pem") && message(&cert, &junk).contains("no private key"));
        assert!(message(&cert, &wrong_key).contains("wrong.pem"), "{}", message(&cert, &wrong_key));
        for path in [cert, key, wrong_key, junk] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_use() {
        let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = temp("reload-cert.pem", &first.cert.pem());
        let key = temp("reload-key.pem", &first.key_pair.serialize_pem());
        let certificates = Certificates::load(&cert, &key).unwrap();
        assert_eq!(certificates.leaf(), *first.cert.der());

        // The certificate renewed but its key not yet: refused, the old pair stays.
        std::fs::write(&cert, second.cert.pem()).unwrap();
        assert!(certificates.reload().is_err());
        assert_eq!(certificates.leaf(), *first.cert.der());

        std::fs::write(&key, second.key_pair.serialize_pem()).unwrap();
        certificates.reload().unwrap();
        assert_eq!(certificates.leaf(), *second.cert.der());
        let _ = std::fs::remove_file(cert);
        let _ = std::fs::remove_file(key);
    }

    #[test]
    fn a_self_signed_certificate_reports_its_hashes() {
        let made = Certificates::self_signed(vec!["localhost".to_owned()]).unwrap();
        assert_eq!(made.fingerprint.len(), 32 * 3 - 1);
        let spki = base64::engine::general_purpose::STANDARD.decode(&made.spki_sha256).unwrap();
        assert_eq!(spki.len(), 32);
        let leaf = made.certificates.leaf();
        let hex: String = sha256(&leaf).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        assert_eq!(hex, made.fingerprint);
    }
}
