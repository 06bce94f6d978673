//! Shared helpers of the TLS tests: a test certificate authority and leaf certificates made
//! with rcgen (written as PEM files the server reads), a rustls client configuration that
//! trusts the authority, and connections over it (raw TLS, HTTP, WebSocket through
//! tungstenite).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SignatureAlgorithm};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A TLS client stream as the tests use it.
pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A WebSocket over it.
pub type Wss = tungstenite::WebSocket<TlsClient>;

/// A fresh directory under the target's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, which clients trust.
    pub der: CertificateDer<'static>,
    pem: String,
}

/// A leaf certificate for `localhost` and 127.0.0.1 with its key, as PEM.
pub struct Leaf {
    /// The chain: the leaf, then the CA.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// The leaf's DER, to recognise it in a client's view.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// The CA certificate as PEM (for clients that read a file: Python, Chromium).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn new() -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgepush test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with a key of algorithm `alg` (ECDSA P-256/P-384 or Ed25519; ring makes no
    /// RSA keys).
    pub fn leaf(&self, alg: &'static SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).expect("leaf key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A client configuration trusting `ca`, offering `alpn` (none when empty).
pub fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client configuration limited to TLS 1.2.
pub fn client_config_tls12(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A finished TLS handshake with the server at `addr` (server name `localhost`).
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsClient, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(stream)
}

/// The certificate the server presented.
pub fn peer_leaf(stream: &TlsClient) -> CertificateDer<'static> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// A WebSocket over TLS to `path` (e.g. `/echo`, `/ws?user=alice`).
pub fn wss(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> Wss {
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let (ws, response) = tungstenite::client::client(format!("wss://localhost{path}"), stream)
        .unwrap_or_else(|e| panic!("wss upgrade to {path}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Reads the next data message as text.
pub fn recv_text(ws: &mut Wss) -> String {
    loop {
        match ws.read().expect("read a message") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        }
    }
}

/// Echoes `text` through `/echo` and checks it comes back.
pub fn round_trip(ws: &mut Wss, text: &str) {
    ws.send(tungstenite::Message::text(text))
        .expect("send a message");
    assert_eq!(recv_text(ws), text);
}

/// One HTTP/1.1 request over TLS (`Connection: close`); the whole answer as text.
pub fn https_get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> String {
    let mut stream = tls_connect(addr, config).expect("TLS handshake");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = Vec::new();
    // The server ends with close_notify or just FIN: either way what came is the answer.
    let mut chunk = [0u8; 16384];
    for _ in 0..10_000 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// `config` without session resumption: every handshake is a full one, so the client sees the
/// certificate the server presents now (a resumed session keeps the one it began with).
pub fn without_resumption(config: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = (**config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
