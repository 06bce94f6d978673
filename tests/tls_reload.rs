//! Reloading the TLS pair: while hundreds of wss clients stay connected, a new pair is
//! loaded (in process, as SIGHUP does, and through a real SIGHUP to the binary): new
//! handshakes see the new certificate, open connections go on, none is dropped; a broken
//! pair is refused and the one in force stays.

mod common;
mod tls_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{with_timeout, TestServer};
use edgepush::config::{Config, TlsFiles};
use tls_support::*;

/// Open wss clients held across the reloads (two descriptors each: client and server are in
/// this process; the open-files limit is raised first).
const CLIENTS: usize = 1000;

#[test]
fn reload_swaps_the_pair_for_new_handshakes_only() {
    with_timeout(Duration::from_secs(120), || {
        let limit = edgepush::server::raise_open_files_limit().unwrap_or(1024);
        assert!(limit > 2 * CLIENTS + 200, "open-files limit {limit}");
        let ca = TestCa::new();
        let first = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
        let dir = temp_dir("tls-reload");
        let (cert, key) = first.write(&dir);
        let server = TestServer::start(Config {
            tls: Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            threads: 2,
            ..Config::for_tests()
        });
        let client = without_resumption(&client_config(&ca.der, &[]));
        let mut clients: Vec<Wss> = (0..CLIENTS)
            .map(|_| wss(server.addr(), &client, "/echo"))
            .collect();
        assert_eq!(peer_leaf(clients[0].get_ref()), first.der);

        // A new pair: the next handshake gets it.
        let second = ca.leaf(&rcgen::PKCS_ED25519);
        second.write(&dir);
        server.reload_tls().expect("reload the new pair");
        let fresh = tls_connect(server.addr(), &client).expect("handshake");
        assert_eq!(peer_leaf(&fresh), second.der);

        // A broken pair (the key of another certificate): refused, the second pair stays.
        let third = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
        std::fs::write(&cert, &third.cert_pem).unwrap();
        let err = server.reload_tls().expect_err("a mismatched pair");
        assert!(err.contains("does not match"), "{err}");
        let fresh = tls_connect(server.addr(), &client).expect("handshake");
        assert_eq!(peer_leaf(&fresh), second.der);

        // Every client from before is still there, on its old certificate.
        for (i, ws) in clients.iter_mut().enumerate() {
            round_trip(ws, &format!("client {i}"));
            assert_eq!(peer_leaf(ws.get_ref()), first.der);
        }
        assert_eq!(server.stats().open(), CLIENTS);
    });
}

/// A child process killed (by its PID) and reaped when dropped, also when a test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on free ports with `args`; its public address, read from its log.
fn spawn_binary(
    args: &[&str],
) -> (
    Running,
    std::net::SocketAddr,
    BufReader<std::process::ChildStderr>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgepush"))
        .args(args)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start edgepush");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some((_, addr)) = line.trim_end().split_once(" listening on ") {
            let child = Running(child);
            let addr = addr.parse().expect("an address");
            return (child, addr, stderr);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no 'listening on' line; last: {line}");
}

/// Reads log lines until one contains `needle` (at most 50 lines).
fn wait_for_line(stderr: &mut BufReader<std::process::ChildStderr>, needle: &str) -> String {
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no log line with {needle:?}");
}

fn sighup(child: &Running) {
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn sighup_reloads_the_binary_and_a_broken_pair_keeps_the_old_one() {
    with_timeout(Duration::from_secs(60), || {
        let ca = TestCa::new();
        let first = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
        let dir = temp_dir("tls-sighup");
        let (cert, key) = first.write(&dir);
        let (child, addr, mut stderr) = spawn_binary(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        let client = without_resumption(&client_config(&ca.der, &[]));
        let mut held = wss(addr, &client, "/echo");
        round_trip(&mut held, "before");

        let second = ca.leaf(&rcgen::PKCS_ECDSA_P384_SHA384);
        second.write(&dir);
        sighup(&child);
        wait_for_line(&mut stderr, "TLS certificate reloaded");
        assert_eq!(peer_leaf(&tls_connect(addr, &client).unwrap()), second.der);

        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
        sighup(&child);
        let line = wait_for_line(&mut stderr, "not reloaded");
        assert!(line.contains("ERROR"), "{line}");
        assert_eq!(peer_leaf(&tls_connect(addr, &client).unwrap()), second.der);

        round_trip(&mut held, "after both");
        assert_eq!(peer_leaf(held.get_ref()), first.der);
        drop(child);
    });
}
