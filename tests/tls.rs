//! TLS on the public listener (`--tls-cert`, `--tls-key`): wss echo and push through
//! tungstenite over rustls, https for `/healthz` and the demo page, ALPN, TLS 1.2 and 1.3,
//! certificate chains and key types; bad input (plain HTTP, a truncated ClientHello, garbage
//! records, a client that stops mid-handshake) closed, counted, and harmless to an open wss
//! connection; bad files refused at start with exit code 2.

mod common;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{guarded, wait_until, ApiClient, TestServer};
use edgepush::config::{Config, TlsFiles};
use edgepush::metrics::TlsFailure;
use tls_support::*;

/// A TLS server with a fresh CA and P-256 leaf; returns the server and a client config.
fn tls_server(config: Config) -> (TestServer, Arc<rustls::ClientConfig>, TestCa) {
    let ca = TestCa::new();
    let leaf = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
    let dir = temp_dir("tls");
    let (cert, key) = leaf.write(&dir);
    let server = TestServer::start(Config {
        tls: Some(TlsFiles { cert, key }),
        ..config
    });
    let client = client_config(&ca.der, &[]);
    (server, client, ca)
}

fn failures(server: &TestServer, why: TlsFailure) -> u64 {
    server.stats().tls_failures.get(why)
}

#[test]
fn wss_echo_small_and_large_messages() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config::for_tests());
        let mut ws = wss(server.addr(), &client, "/echo");
        round_trip(&mut ws, "hello over TLS");
        ws.send(tungstenite::Message::text("ping")).unwrap();
        assert_eq!(recv_text(&mut ws), "pong");
        // Several records each way (16 KiB of plaintext per record at most).
        let big: String = (0..200_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        round_trip(&mut ws, &big);
        let binary: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        ws.send(tungstenite::Message::binary(binary.clone()))
            .unwrap();
        match ws.read().unwrap() {
            tungstenite::Message::Binary(b) => assert_eq!(&b[..], &binary[..]),
            other => panic!("expected binary, got {other:?}"),
        }
        // Many small messages in a burst: one read brings several records.
        for i in 0..200 {
            ws.write(tungstenite::Message::text(format!("m{i}")))
                .unwrap();
        }
        ws.flush().unwrap();
        for i in 0..200 {
            assert_eq!(recv_text(&mut ws), format!("m{i}"));
        }
        ws.close(None).unwrap();
        assert!(
            server
                .stats()
                .tls_handshakes
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    });
}

#[test]
fn wss_push_delivers_published_messages() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config {
            threads: 2,
            ..Config::for_tests()
        });
        let mut subscribers: Vec<Wss> = (0..4)
            .map(|i| {
                let mut ws = wss(server.addr(), &client, &format!("/ws?user=u{i}"));
                let first: serde_json::Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
                assert_eq!(first["channel"], "$user", "{first}");
                ws.send(tungstenite::Message::text(
                    r#"{"op":"subscribe","channel":"news"}"#,
                ))
                .unwrap();
                let answer: serde_json::Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
                assert_eq!(answer["op"], "subscribed", "{answer}");
                ws
            })
            .collect();
        let mut api = ApiClient::connect(server.api_addr());
        let answer = api.post(
            "/api/publish?wait=delivered",
            r#"{"channel":"news","data":{"headline":"over wss"}}"#,
        );
        assert_eq!(answer["delivered"], 4, "{answer}");
        for ws in &mut subscribers {
            let message: serde_json::Value = serde_json::from_str(&recv_text(ws)).unwrap();
            assert_eq!(message["data"]["headline"], "over wss", "{message}");
        }
        let answer = api.post(
            "/api/send?wait=delivered",
            r#"{"user":"u2","data":"just you"}"#,
        );
        assert_eq!(answer["delivered"], 1, "{answer}");
        let message: serde_json::Value =
            serde_json::from_str(&recv_text(&mut subscribers[2])).unwrap();
        assert_eq!(message["data"], "just you", "{message}");
        let stats = api.get("/api/stats");
        assert_eq!(stats["tls_handshakes"], 4, "{stats}");
        assert_eq!(stats["tls_handshake_failures"], 0, "{stats}");
        let metrics = api.call("GET", "/metrics", None).body_text();
        assert!(
            metrics.contains("edgepush_tls_handshakes_total 4"),
            "{metrics}"
        );
        assert!(
            metrics.contains("edgepush_tls_handshake_failures_total{reason=\"timeout\"} 0"),
            "{metrics}"
        );
    });
}

#[test]
fn https_serves_healthz_and_the_demo_page() {
    guarded(|| {
        let (server, client, ca) = tls_server(Config::for_tests());
        let answer = https_get(server.addr(), &client, "/healthz");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with("ok\n") || answer.ends_with("ok"),
            "{answer}"
        );
        let page = https_get(server.addr(), &client, "/");
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "{}",
            &page[..page.len().min(200)]
        );
        assert!(
            page.contains("<html") || page.contains("<!DOCTYPE"),
            "a page"
        );
        // ALPN: http/1.1 offered alongside h2 is chosen.
        let alpn = client_config(&ca.der, &[b"h2", b"http/1.1"]);
        let stream = tls_connect(server.addr(), &alpn).expect("handshake");
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        // The server's order of suites: AES-128-GCM, though rustls clients list AES-256 first.
        assert_eq!(
            stream.conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // TLS 1.2 works too.
        let tls12 = client_config_tls12(&ca.der);
        let stream = tls_connect(server.addr(), &tls12).expect("TLS 1.2 handshake");
        assert_eq!(
            stream.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let mut ws = {
            let (ws, _) = tungstenite::client::client("wss://localhost/echo", stream).unwrap();
            ws
        };
        round_trip(&mut ws, "over TLS 1.2");
    });
}

#[test]
fn a_client_offering_only_h2_is_refused_in_the_handshake() {
    guarded(|| {
        let (server, _client, ca) = tls_server(Config::for_tests());
        let h2 = client_config(&ca.der, &[b"h2"]);
        let err = tls_connect(server.addr(), &h2).expect_err("no common protocol");
        assert!(
            err.contains("NoApplicationProtocol") || err.contains("no_application_protocol"),
            "{err}"
        );
        assert!(wait_until(Duration::from_secs(5), || failures(
            &server,
            TlsFailure::NoApplicationProtocol
        ) == 1));
    });
}

#[test]
fn ed25519_and_p384_keys_are_served() {
    guarded(|| {
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let ca = TestCa::new();
            let leaf = ca.leaf(alg);
            let (cert, key) = leaf.write(&temp_dir("tls-alg"));
            let server = TestServer::start(Config {
                tls: Some(TlsFiles { cert, key }),
                ..Config::for_tests()
            });
            let client = client_config(&ca.der, &[]);
            let mut ws = wss(server.addr(), &client, "/echo");
            round_trip(&mut ws, "any key type");
            assert_eq!(peer_leaf(ws.get_ref()), leaf.der);
        }
    });
}

/// A real ClientHello (from rustls), as bytes.
fn client_hello(ca: &TestCa) -> Vec<u8> {
    let config = client_config(&ca.der, &[]);
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a ClientHello");
    hello
}

/// Sends `bytes` (then FIN if `finish`) and waits for the server to close: returns whether it
/// did (EOF or reset) within the limit.
fn closed_after(addr: std::net::SocketAddr, bytes: &[u8], finish: bool, limit: Duration) -> bool {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(limit)).unwrap();
    tcp.write_all(bytes).unwrap();
    if finish {
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an alert, then the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn bad_input_is_closed_counted_and_harms_no_open_connection() {
    guarded(|| {
        let (server, client, ca) = tls_server(Config {
            handshake_timeout: Duration::from_millis(600),
            ..Config::for_tests()
        });
        let addr = server.addr();
        let mut open = wss(addr, &client, "/echo");
        round_trip(&mut open, "before");

        // Plain HTTP to the TLS port: a plain 400 that says what to use, then the close (in
        // two writes, the method cut in the middle, as a slow client may send it).
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        plain.write_all(b"GE").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        plain
            .write_all(b"T /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        plain.read_to_string(&mut answer).unwrap();
        assert_eq!(
            answer,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 45\r\nConnection: close\r\n\r\n\
             this port speaks TLS: use https:// or wss://\n"
        );
        assert!(wait_until(Duration::from_secs(5), || failures(
            &server,
            TlsFailure::PlainHttp
        ) == 1));

        // Garbage records: a handshake record header with a nonsense body, then random bytes.
        let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x10];
        garbage.extend_from_slice(&[0xff; 16]);
        garbage.extend((0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert!(closed_after(addr, &garbage, false, Duration::from_secs(5)));
        assert!(wait_until(Duration::from_secs(5), || failures(
            &server,
            TlsFailure::BadRecord
        ) == 1));

        // A truncated ClientHello, then FIN: the client gave up mid-record.
        let hello = client_hello(&ca);
        assert!(closed_after(
            addr,
            &hello[..hello.len() / 2],
            true,
            Duration::from_secs(5)
        ));
        assert!(wait_until(Duration::from_secs(5), || failures(
            &server,
            TlsFailure::Eof
        ) == 1));

        // A truncated ClientHello that stays open, and a whole ClientHello that never gets an
        // answer read: both dropped by the handshake timeout.
        let t0 = std::time::Instant::now();
        assert!(closed_after(
            addr,
            &hello[..40],
            false,
            Duration::from_secs(5)
        ));
        assert!(closed_after(addr, &hello, false, Duration::from_secs(5)));
        assert!(
            t0.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        assert!(wait_until(Duration::from_secs(5), || failures(
            &server,
            TlsFailure::Timeout
        ) == 2));

        // The open connection noticed nothing.
        round_trip(&mut open, "after");
        assert_eq!(
            server
                .stats()
                .tls_handshakes
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(server.stats().tls_failures.total(), 5);
        let mut fresh = wss(addr, &client, "/echo");
        round_trip(&mut fresh, "a new connection");
    });
}

/// Runs the binary with `args`; its exit code and stderr.
fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgepush"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .output()
        .expect("run edgepush");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_files_at_start_exit_2_with_one_line() {
    let ca = TestCa::new();
    let a = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
    let b = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
    let dir = temp_dir("tls-bad");
    let (cert, key) = a.write(&dir);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let cert = cert.to_str().unwrap();
    let key = key.to_str().unwrap();
    let other_key = other_key.to_str().unwrap();
    let garbage = garbage.to_str().unwrap();
    let missing = "/nonexistent/edgepush/cert.pem";
    let cases: [(&[&str], &str); 6] = [
        (&["--tls-cert", missing, "--tls-key", key], "--tls-cert"),
        (&["--tls-cert", cert, "--tls-key", missing], "--tls-key"),
        (
            &["--tls-cert", cert, "--tls-key", other_key],
            "does not match",
        ),
        (&["--tls-cert", garbage, "--tls-key", key], "--tls-cert"),
        (&["--tls-cert", cert, "--tls-key", garbage], "--tls-key"),
        (&["--tls-cert", cert], "--tls-cert needs --tls-key"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_binary(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Random damage to real handshakes, seeded: bit flips, truncation and trailing garbage in
/// the ClientHello, and garbage or cut records after a finished handshake. Each connection
/// ends (the client sends FIN), nothing panics, and an open wss connection keeps working.
#[test]
fn damaged_handshakes_and_records_never_harm_the_server() {
    use rand::{Rng, SeedableRng};
    with_timeout_secs(60, || {
        let (server, client, ca) = tls_server(Config {
            handshake_timeout: Duration::from_secs(3),
            ..Config::for_tests()
        });
        let addr = server.addr();
        let mut open = wss(addr, &client, "/echo");
        let hello = client_hello(&ca);
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for case in 0..300 {
            let mut bytes = hello.clone();
            match case % 3 {
                0 => {
                    for _ in 0..rng.random_range(1..8) {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                1 => bytes.truncate(rng.random_range(1..hello.len())),
                _ => bytes.extend((0..rng.random_range(1..600)).map(|_| rng.random::<u8>())),
            }
            // Closed promptly at the FIN, not by the handshake timeout.
            let t = std::time::Instant::now();
            let closed = closed_after(addr, &bytes, true, Duration::from_secs(5));
            assert!(
                t.elapsed() < Duration::from_millis(450),
                "case {case}: {:?}",
                t.elapsed()
            );
            assert!(closed, "case {case}: the server did not close");
        }
        // After the handshake: a wss connection whose next bytes are garbage, a cut record
        // or a record with a flipped bit.
        for case in 0..30 {
            let mut victim = tls_connect(addr, &client).expect("handshake");
            let mut record = Vec::new();
            victim
                .conn
                .writer()
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .unwrap();
            victim.conn.write_tls(&mut record).unwrap();
            match case % 3 {
                0 => record = (0..200).map(|_| rng.random::<u8>()).collect(),
                1 => record.truncate(rng.random_range(1..record.len())),
                _ => {
                    let i = rng.random_range(5..record.len());
                    record[i] ^= 0x40;
                }
            }
            victim.sock.write_all(&record).unwrap();
            victim.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..100 {
                match victim.sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        round_trip(&mut open, "still here");
        let mut fresh = wss(addr, &client, "/echo");
        round_trip(&mut fresh, "and new ones work");
        assert!(server.stats().tls_failures.total() >= 250);
    });
}

/// A wss client that stops reading while its echoes pile up: the encrypted records the
/// socket refuses wait in the connection (and its queue) and arrive whole and in order once
/// it reads again.
#[test]
fn a_slow_wss_reader_gets_every_record_in_order() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config::for_tests());
        let mut ws = wss(server.addr(), &client, "/echo");
        let messages: Vec<String> = (0..40)
            .map(|i| format!("{i:04}-{}", "x".repeat(50_000 + i * 17)))
            .collect();
        for m in &messages {
            ws.write(tungstenite::Message::text(m.as_str())).unwrap();
        }
        ws.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        for m in &messages {
            assert_eq!(&recv_text(&mut ws), m);
        }
        round_trip(&mut ws, "done");
    });
}

fn with_timeout_secs<F: FnOnce() + Send + 'static>(secs: u64, body: F) {
    common::with_timeout(Duration::from_secs(secs), body);
}

/// A close started by the server (the API disconnects a user): Close 4000, then close_notify
/// and FIN; the client's Close reply is still read, so the connection ends cleanly on both
/// sides (no reset), and the TLS close is not counted as a failure.
#[test]
fn a_server_initiated_close_ends_cleanly_over_tls() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config::for_tests());
        let mut ws = wss(server.addr(), &client, "/ws?user=leaving");
        let first: serde_json::Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
        assert_eq!(first["channel"], "$user");
        let mut api = ApiClient::connect(server.api_addr());
        let answer = api.post("/api/disconnect?wait=delivered", r#"{"user":"leaving"}"#);
        assert_eq!(answer["closed"], 1, "{answer}");
        let code = loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(Some(frame))) => break u16::from(frame.code),
                Ok(_) => continue,
                Err(e) => panic!("before the Close frame: {e}"),
            }
        };
        assert_eq!(code, 4000);
        // tungstenite answers the Close; then the server's close_notify and FIN end the stream.
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("expected a clean end, got {other:?}"),
        }
        assert!(wait_until(Duration::from_secs(5), || server.stats().open() == 0));
        // The server read our Close reply before closing its socket: no reset follows.
        std::thread::sleep(Duration::from_millis(200));
        let mut rest = [0u8; 64];
        match ws.get_mut().sock.read(&mut rest) {
            Ok(0) => {}
            other => panic!("expected EOF on the socket, got {other:?}"),
        }
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}

/// A burst of small records in one TCP segment (a client sending many short messages at
/// once, each `send` its own record): rustls hands out one record per state, and every one
/// of them is read, not taken for a state machine that made no progress.
#[test]
fn a_burst_of_small_records_is_read_whole() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config::for_tests());
        let mut ws = wss(server.addr(), &client, "/echo");
        const COUNT: usize = 500;
        let stream = ws.get_mut();
        let mut wire = Vec::new();
        for i in 0..COUNT {
            // A masked text frame (RFC 6455 §5.2) with a zero mask, in a record of its own.
            let text = format!("m{i:04}");
            let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
            frame.extend_from_slice(text.as_bytes());
            stream.conn.writer().write_all(&frame).unwrap();
            while stream.conn.wants_write() {
                stream.conn.write_tls(&mut wire).unwrap();
            }
        }
        assert!(
            wire.len() > COUNT * 30,
            "{COUNT} records: {} bytes",
            wire.len()
        );
        stream.sock.write_all(&wire).unwrap();
        for i in 0..COUNT {
            assert_eq!(recv_text(&mut ws), format!("m{i:04}"));
        }
        round_trip(&mut ws, "after the burst");
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}

/// A wss client that sends and never reads: the echoes' records the socket refuses wait in
/// the connection (one send's worth), the rest in its queue, and once that passes
/// `--max-backlog` the connection is closed as a slow consumer, as on plain TCP; another
/// wss connection notices nothing.
#[test]
fn a_wss_client_that_never_reads_is_closed_as_a_slow_consumer() {
    use std::sync::atomic::Ordering;
    guarded(|| {
        let (server, client, _ca) = tls_server(Config {
            max_backlog: 256 << 10,
            ..Config::for_tests()
        });
        let addr = server.addr();
        let mut open = wss(addr, &client, "/echo");
        let mut slow = wss(addr, &client, "/echo");
        let big = "x".repeat(60_000);
        let mut sent = 0;
        while server.stats().slow_consumers.load(Ordering::Relaxed) == 0 && sent < 2000 {
            if slow.send(tungstenite::Message::text(big.as_str())).is_err() {
                break; // the server dropped us
            }
            sent += 1;
        }
        assert!(
            wait_until(Duration::from_secs(5), || server
                .stats()
                .slow_consumers
                .load(Ordering::Relaxed)
                == 1),
            "not a slow consumer after {sent} unread echoes of 60 kB"
        );
        round_trip(&mut open, "unharmed");
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}

/// TLS 1.3 KeyUpdate (RFC 8446 §4.6.3): a client that asks for a key update before each
/// message gets every echo under the right keys (the server's own KeyUpdate goes out before
/// the data it protects); one that asks again and again with no data between is closed
/// (32 in a row are answered, as rustls allows: `tls::record::MAX_KEY_UPDATES`), alone.
#[test]
fn key_updates_are_answered_and_a_flood_of_them_is_closed() {
    guarded(|| {
        let (server, client, _ca) = tls_server(Config::for_tests());
        let addr = server.addr();
        let mut ws = wss(addr, &client, "/echo");
        for i in 0..100 {
            ws.get_mut().conn.refresh_traffic_keys().unwrap();
            round_trip(&mut ws, &format!("after key update {i}"));
        }

        let mut open = wss(addr, &client, "/echo");
        let mut flood = wss(addr, &client, "/echo");
        let stream = flood.get_mut();
        let mut wire = Vec::new();
        for _ in 0..200 {
            stream.conn.refresh_traffic_keys().unwrap();
            while stream.conn.wants_write() {
                stream.conn.write_tls(&mut wire).unwrap();
            }
        }
        let _ = stream.sock.write_all(&wire);
        let mut buf = [0u8; 4096];
        let mut closed = false;
        for _ in 0..100 {
            match stream.sock.read(&mut buf) {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => {} // the alert
            }
        }
        assert!(closed, "a KeyUpdate flood was not closed");
        round_trip(&mut open, "unharmed");
    });
}

/// A client configuration like `client` but offering only the TLS 1.3 cipher suite `suite`.
fn only_suite(ca: &TestCa, suite: rustls::CipherSuite) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// After the handshake a TLS 1.3 connection runs on the server's own record layer: in every
/// suite, messages of one and of many records go both ways, and a KeyUpdate(update_requested)
/// from the client mid-stream switches both directions (the client reads what the server
/// sends after its own KeyUpdate, and the server reads under the client's new key), again and
/// again.
#[test]
fn key_updates_mid_stream_switch_both_directions_in_every_suite() {
    guarded(|| {
        let (server, _client, ca) = tls_server(Config::for_tests());
        let big: String = (0..100_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for suite in [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let config = only_suite(&ca, suite);
            let mut ws = wss(server.addr(), &config, "/echo");
            assert_eq!(
                ws.get_ref()
                    .conn
                    .negotiated_cipher_suite()
                    .map(|s| s.suite()),
                Some(suite)
            );
            round_trip(&mut ws, "before");
            round_trip(&mut ws, &big);
            for i in 0..5 {
                ws.get_mut().conn.refresh_traffic_keys().unwrap();
                round_trip(&mut ws, &format!("after key update {i}"));
                round_trip(&mut ws, &big);
            }
            ws.close(None).unwrap();
            loop {
                match ws.read() {
                    Ok(_) => continue,
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("{suite:?}: expected a clean close, got {e}"),
                }
            }
        }
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}

/// TLS 1.2 connections move to the server's own record layer too (AES-GCM with its explicit
/// nonce here): echo of small and large messages, a clean close.
#[test]
fn tls12_clients_echo_and_close_cleanly() {
    guarded(|| {
        let (server, _client, ca) = tls_server(Config::for_tests());
        let config = client_config_tls12(&ca.der);
        let mut ws = wss(server.addr(), &config, "/echo");
        assert_eq!(
            ws.get_ref().conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        round_trip(&mut ws, "hello over TLS 1.2");
        let big: String = (0..100_000)
            .map(|i| char::from(b'0' + (i % 10) as u8))
            .collect();
        round_trip(&mut ws, &big);
        // A second connection resumes the session (the abbreviated handshake, where the
        // server's Finished goes first).
        let mut again = wss(server.addr(), &config, "/echo");
        assert_eq!(
            again.get_ref().conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        round_trip(&mut again, "resumed");
        for ws in [&mut ws, &mut again] {
            ws.close(None).unwrap();
            loop {
                match ws.read() {
                    Ok(_) => continue,
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("expected a clean close, got {e}"),
                }
            }
        }
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}

/// `openssl s_client` run against the server, its output collected by two threads.
struct SClient {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: Arc<std::sync::Mutex<Vec<u8>>>,
    err: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl SClient {
    /// s_client to `addr` trusting `ca_pem`, with `args` choosing version and suite.
    fn start(addr: std::net::SocketAddr, ca_pem: &std::path::Path, args: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .args(["-connect", &addr.to_string(), "-servername", "localhost"])
            .arg("-CAfile")
            .arg(ca_pem)
            .arg("-verify_return_error")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        let collect = |mut from: Box<dyn Read + Send>| {
            let sink = Arc::new(std::sync::Mutex::new(Vec::new()));
            let to = Arc::clone(&sink);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    to.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            sink
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        SClient {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        }
    }

    /// Writes `bytes` to s_client's standard input (what it sends, or a command line).
    fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        if let Err(e) = stdin.write_all(bytes).and_then(|()| stdin.flush()) {
            std::thread::sleep(Duration::from_millis(100));
            panic!("s_client's input: {e}; {}", self.output());
        }
    }

    /// Waits (at most 10 s) until `needle` appears `count` times in its standard output
    /// (`stderr`: in its diagnostics).
    fn wait_for(&self, needle: &str, count: usize, stderr: bool) -> bool {
        let from = if stderr { &self.err } else { &self.out };
        wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&from.lock().unwrap())
                .matches(needle)
                .count()
                >= count
        })
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.out.lock().unwrap()),
            String::from_utf8_lossy(&self.err.lock().unwrap())
        )
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenSSL's client against the server's own record layer: TLS 1.2 with AES-256-GCM (RFC
/// 5288's explicit nonce) and ChaCha20-Poly1305 (RFC 7905), TLS 1.3 in each suite with
/// KeyUpdates from the client (`K`: update_requested, which the server answers; `k`: not
/// requested) between WebSocket echoes; each ends with s_client's close_notify. A TLS 1.2
/// renegotiation (`R`) is answered with a fatal unexpected_message alert. Skipped
/// without `openssl` on the PATH, except under CI (`.ci/run` installs it).
#[test]
fn openssl_s_client_interoperates_in_every_suite_with_key_updates() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and openssl is missing"
        );
        eprintln!("skipped: no openssl");
        return;
    }
    guarded(|| {
        let (server, _client, ca) = tls_server(Config::for_tests());
        let dir = temp_dir("s_client");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        // A masked text frame (mask key 0: the payload as is) the echo sends back unmasked.
        let frame = |text: &str| {
            let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
            f.extend_from_slice(text.as_bytes());
            f
        };
        let cases: [(&[&str], &[&str]); 5] = [
            (
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
                &[],
            ),
            (
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
                &[],
            ),
            (
                &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
                &["K\n", "k\n", "K\n"],
            ),
            (
                &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
                &["K\n", "K\n"],
            ),
            (
                &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
                &["k\n", "K\n"],
            ),
        ];
        for (args, commands) in cases {
            let mut s = SClient::start(server.addr(), &ca_pem, args);
            s.type_in(common::upgrade_request("/echo").as_bytes());
            assert!(
                s.wait_for("HTTP/1.1 101", 1, false),
                "{args:?}: {}",
                s.output()
            );
            s.type_in(&frame("echo-0"));
            assert!(s.wait_for("echo-0", 1, false), "{args:?}: {}", s.output());
            for (i, command) in commands.iter().enumerate() {
                s.type_in(command.as_bytes());
                // The command must be read alone (s_client drops the rest of its read).
                assert!(
                    s.wait_for("KEYUPDATE", i + 1, true),
                    "{args:?}: {}",
                    s.output()
                );
                std::thread::sleep(Duration::from_millis(50));
                let text = format!("echo-{}", i + 1);
                s.type_in(&frame(&text));
                assert!(
                    s.wait_for(&text, 1, false),
                    "{args:?} after {command:?}: {}",
                    s.output()
                );
            }
            // End of input: s_client sends its close_notify and exits.
            drop(s.stdin.take());
            let exited = wait_until(Duration::from_secs(10), || {
                matches!(s.child.try_wait(), Ok(Some(_)))
            });
            assert!(exited, "{args:?}: s_client did not exit: {}", s.output());
            let out = s.output();
            assert!(!out.contains("KEYUPDATE FAILED"), "{args:?}: {out}");
            assert!(!out.contains(":error:"), "{args:?}: {out}");
        }
        // A renegotiation (TLS 1.2, `R`) is refused with a fatal unexpected_message alert.
        let mut s = SClient::start(
            server.addr(),
            &ca_pem,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        );
        s.type_in(common::upgrade_request("/echo").as_bytes());
        assert!(s.wait_for("HTTP/1.1 101", 1, false), "{}", s.output());
        s.type_in(b"R\n");
        let exited = wait_until(Duration::from_secs(10), || {
            matches!(s.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            exited,
            "renegotiation: s_client did not exit: {}",
            s.output()
        );
        assert!(
            s.wait_for("alert unexpected message", 1, true),
            "{}",
            s.output()
        );
        assert_eq!(server.stats().tls_failures.total(), 0);
    });
}
