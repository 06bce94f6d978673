//! TLS on the public listener (`--tls-cert`, `--tls-key`): the certificate pair, read from PEM
//! files and checked at start; the rustls server configuration every worker shares (TLS 1.2
//! and 1.3, rustls's safe default cipher suites, ALPN `http/1.1`); and [`CertStore`], the
//! certificate resolver whose pair SIGHUP swaps while open connections go on untouched.
//!
//! The crypto provider is *ring*: it builds with a C compiler alone, which every machine that
//! builds this crate has; aws-lc-rs (rustls's default) may need cmake and builds a much larger
//! C library. The per-connection transport is [`stream::TlsStream`]; a connection's records,
//! after the handshake, are [`record::RecordLayer`]'s.

pub mod record;
pub mod stream;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use stream::TlsStream;

/// The one ALPN protocol offered (RFC 7301): a client that offers ALPN without it fails the
/// handshake with `no_application_protocol`.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider: rustls's *ring* provider with its default (safe) cipher suites and
/// key-exchange groups, AES-128-GCM put first (the server chooses, see [`ServerTls::new`]):
/// browsers list it first too, and it is the fastest with AES instructions. (It does not
/// change the memory an idle connection keeps: measured the same as with AES-256-GCM.)
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let name = format!("{:?}", suite.suite());
        (
            suite.version() != &rustls::version::TLS13,
            !name.contains("AES_128_GCM"),
        )
    });
    Arc::new(provider)
}

/// Reads a certificate chain and its private key from PEM files and checks that the key
/// belongs to the first certificate. The cert file holds the end-entity certificate first,
/// then any intermediates; the key file one PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key: RSA,
/// ECDSA (P-256, P-384) and Ed25519 are accepted.
///
/// # Errors
/// One line naming the file and what is wrong: missing or unreadable, no certificate, no key,
/// a key type rustls cannot sign with, or a key that does not match the certificate.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {}", cert.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {}", cert.display(), pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block in the file",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {}", key.display(), pem_error(&e)))?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {} does not match the certificate in --tls-cert {}",
            key.display(),
            cert.display()
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) => {
            format!("--tls-cert {}: {e}", cert.display())
        }
        e => format!("--tls-key {}: {e}", key.display()),
    })?;
    Ok(Arc::new(certified))
}

/// A PEM error as a short phrase.
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM block of the expected kind in the file".to_owned(),
        e => format!("not valid PEM ({e})"),
    }
}

/// The certificate pair in force, behind a lock that a reload swaps: rustls asks it once per
/// handshake ([`ResolvesServerCert`]), so a new pair applies to the next handshake and never to
/// a connection already open.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair from `cert` and `key` ([`load_pair`]'s errors).
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, String> {
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(load_pair(cert, key)?),
        })
    }

    /// Reads both files again; on success the new pair serves every later handshake. On
    /// error the pair in force stays and the error is returned (for the log).
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }

    /// The pair in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for CertStore {
    /// One certificate for every server name (SNI is not used to choose).
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a TLS listener shares between its workers: the rustls configuration and the store a
/// reload swaps.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration each new connection starts from.
    pub config: Arc<ServerConfig>,
    /// The certificate pair, reloadable.
    pub certs: Arc<CertStore>,
}

impl ServerTls {
    /// Loads the pair and builds the configuration: TLS 1.2 and 1.3, no client
    /// authentication, ALPN `http/1.1`.
    ///
    /// # Errors
    /// [`load_pair`]'s, or rustls refusing the protocol versions (not expected).
    pub fn new(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let certs = Arc::new(CertStore::load(cert, key)?);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        // Our order of cipher suites, not the client's (see [`provider`]).
        config.ignore_client_order = true;
        // A connection's keys move to our record layer after the handshake ([`record`]):
        // rustls's per-connection state is freed.
        config.enable_secret_extraction = true;
        Ok(ServerTls {
            config: Arc::new(config),
            certs,
        })
    }
}

/// Why a TLS handshake failed, for `edgepush_tls_handshake_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// No certificate to present (the resolver had none).
    NoCertificate,
    /// The client offers no TLS version we speak (1.2, 1.3).
    ProtocolVersion,
    /// The client offers ALPN protocols but not `http/1.1` (e.g. only `h2`).
    NoApplicationProtocol,
    /// Bytes that are not TLS records (garbage) or do not decrypt.
    BadRecord,
    /// A plain HTTP request on the TLS listener (`http://` or `ws://` to a TLS port): answered
    /// with a plain-text 400 that says to use `https://` or `wss://`.
    PlainHttp,
    /// The client sent a fatal alert (e.g. it does not trust our certificate).
    Alert,
    /// No finished handshake within `--handshake-timeout`.
    Timeout,
    /// The client closed the connection in the middle of the handshake.
    Eof,
    /// Anything else (no cipher suite in common, a socket error, a misbehaving peer).
    Other,
}

impl TlsFailure {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [TlsFailure; 9] = [
        TlsFailure::NoCertificate,
        TlsFailure::ProtocolVersion,
        TlsFailure::NoApplicationProtocol,
        TlsFailure::BadRecord,
        TlsFailure::PlainHttp,
        TlsFailure::Alert,
        TlsFailure::Timeout,
        TlsFailure::Eof,
        TlsFailure::Other,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::NoApplicationProtocol => "no_application_protocol",
            TlsFailure::BadRecord => "bad_record",
            TlsFailure::PlainHttp => "plain_http",
            TlsFailure::Alert => "alert",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Eof => "eof",
            TlsFailure::Other => "other",
        }
    }

    /// The reason a rustls error stands for.
    pub fn of(error: &rustls::Error) -> TlsFailure {
        use rustls::{Error, PeerIncompatible};
        match error {
            Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            Error::General(m) if m.contains("certificate") => TlsFailure::NoCertificate,
            Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::ServerDoesNotSupportTls12Or13,
            ) => TlsFailure::ProtocolVersion,
            Error::NoApplicationProtocol => TlsFailure::NoApplicationProtocol,
            Error::InvalidMessage(_)
            | Error::DecryptError
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. } => TlsFailure::BadRecord,
            Error::AlertReceived(_) => TlsFailure::Alert,
            _ => TlsFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_have_distinct_labels() {
        let mut labels: Vec<_> = TlsFailure::ALL.iter().map(|f| f.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), TlsFailure::ALL.len());
        for (i, f) in TlsFailure::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "ALL is in declaration order");
        }
        assert_eq!(
            TlsFailure::of(&rustls::Error::NoApplicationProtocol),
            TlsFailure::NoApplicationProtocol
        );
        assert_eq!(
            TlsFailure::of(&rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            )),
            TlsFailure::Alert
        );
    }

    #[test]
    fn aes_128_gcm_comes_first_in_each_version() {
        let suites = provider().cipher_suites.clone();
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let first_tls12 = suites
            .iter()
            .find(|s| s.version() == &rustls::version::TLS12)
            .map(|s| format!("{:?}", s.suite()));
        assert!(
            first_tls12
                .as_deref()
                .is_some_and(|n| n.contains("AES_128_GCM")),
            "{first_tls12:?}"
        );
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::DEFAULT_CIPHER_SUITES.len()
        );
    }

    #[test]
    fn missing_files_name_the_flag_and_the_path() {
        let e = load_pair(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
        )
        .expect_err("no such file");
        assert!(e.starts_with("--tls-cert /nonexistent/cert.pem: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
