//! Measurements of TLS against plain TCP (BENCHMARKS.md has the figures):
//!
//!     cargo build --release
//!     EDGEPUSH_TLS_MEASURE_FULL=1 taskset -c 1 cargo test --release --test tls_measure -- --nocapture
//!
//! Without `EDGEPUSH_TLS_MEASURE_FULL` (as in CI) each runs at about a thirtieth of the sizes
//! below: the same paths, every delivery and echo still checked, the figures only printed.
//!
//! Each figure starts a fresh release server (`--threads 1`, pinned to core 0 with `taskset`
//! when it exists) and runs plain and TLS interleaved, two rounds each:
//! - idle: server RSS growth per connection at 15,000 open echo connections;
//! - handshakes: 3,000 connect + (TLS handshake) + upgrade + close, one after another, from 4
//!   client threads: server CPU per connection and connections/s;
//! - fan-out burst: 5,000 push subscribers of one channel, 200 publishes of 64 bytes pipelined
//!   on one API connection, three bursts: from the first publish until the server's `bytes_out`
//!   last grows (every delivery queued, every byte taken by the transport), deliveries/s and
//!   server CPU; the clients read each burst only afterwards (the socket buffers hold it);
//! - echo: 20 connections, each sending batches of 50 messages of 64 bytes and reading the 50
//!   echoes, 2,000,000 messages in all: server CPU per message.
//!
//! The server's figures come from /proc (RSS, utime + stime) and its own /api/stats. With
//! `EDGEPUSH_TLS_MEASURE_TLS12` set the TLS clients speak TLS 1.2 instead of 1.3.

mod common;
mod tls_support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_support::*;

/// A release server process, killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    api: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(tls: Option<&(std::path::PathBuf, std::path::PathBuf)>) -> Proc {
    let bin = env!("CARGO_BIN_EXE_edgepush");
    let mut cmd = if std::path::Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", "0", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args([
        "--threads",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ])
    .args(["--max-connections", "100000", "--log", "info"]);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (mut addr, mut api) = (None, None);
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some((_, a)) = line.trim_end().split_once(" listening on ") {
            addr = a.parse().ok();
        }
        if let Some((_, a)) = line.trim_end().split_once("push API on http://") {
            api = a.parse().ok();
        }
        if addr.is_some() && api.is_some() {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    Proc {
        child,
        addr: addr.expect("listening line"),
        api: api.expect("API line"),
    }
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// utime + stime of `pid`, in seconds.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The server's pid (the child is the server itself, or taskset, which execs it).
fn pid(p: &Proc) -> u32 {
    p.child.id()
}

enum Conn {
    Plain(Box<tungstenite::WebSocket<TcpStream>>),
    Tls(Box<Wss>),
}

impl Conn {
    fn send(&mut self, m: tungstenite::Message) {
        match self {
            Conn::Plain(ws) => ws.write(m).unwrap(),
            Conn::Tls(ws) => ws.write(m).unwrap(),
        }
    }
    fn flush(&mut self) {
        match self {
            Conn::Plain(ws) => ws.flush().unwrap(),
            Conn::Tls(ws) => ws.flush().unwrap(),
        }
    }
    fn recv(&mut self) -> tungstenite::Message {
        match self {
            Conn::Plain(ws) => ws.read().unwrap(),
            Conn::Tls(ws) => ws.read().unwrap(),
        }
    }
}

fn open(addr: SocketAddr, client: Option<&Arc<rustls::ClientConfig>>, path: &str) -> Conn {
    match client {
        None => {
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            let (ws, _) =
                tungstenite::client::client(format!("ws://localhost{path}"), tcp).unwrap();
            Conn::Plain(Box::new(ws))
        }
        Some(config) => Conn::Tls(Box::new(wss(addr, config, path))),
    }
}

struct Setup {
    files: (std::path::PathBuf, std::path::PathBuf),
    client: Arc<rustls::ClientConfig>,
}

fn setup() -> Setup {
    edgepush::server::raise_open_files_limit().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256);
    let files = leaf.write(&temp_dir("tls-measure"));
    // EDGEPUSH_TLS_MEASURE_TLS12=1: the TLS clients speak TLS 1.2 (TLS 1.3 otherwise).
    let client = if std::env::var_os("EDGEPUSH_TLS_MEASURE_TLS12").is_some() {
        client_config_tls12(&ca.der)
    } else {
        client_config(&ca.der, &[])
    };
    Setup { files, client }
}

/// `full` with `EDGEPUSH_TLS_MEASURE_FULL` set (a measurement), else `quick` (a CI run).
fn size(full: usize, quick: usize) -> usize {
    if std::env::var_os("EDGEPUSH_TLS_MEASURE_FULL").is_some() {
        full
    } else {
        quick
    }
}

fn label(tls: bool) -> &'static str {
    if tls {
        "wss "
    } else {
        "ws  "
    }
}

#[test]
fn idle_bytes_per_connection() {
    let s = setup();
    let n = size(15_000, 500);
    for round in 0..2 {
        for tls in [false, true] {
            let server = spawn_server(tls.then_some(&s.files));
            let before = rss(pid(&server));
            let conns: Vec<Conn> = (0..n)
                .map(|_| open(server.addr, tls.then_some(&s.client), "/echo"))
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            let after = rss(pid(&server));
            println!(
                "round {round} idle {}: {} B/conn ({n} conns, RSS {} -> {} KiB)",
                label(tls),
                (after - before) / n as u64,
                before / 1024,
                after / 1024
            );
            drop(conns);
        }
    }
}

#[test]
fn handshakes_per_second() {
    let s = setup();
    let n = size(3_000, 200);
    const THREADS: usize = 4;
    for round in 0..2 {
        for tls in [false, true] {
            let server = spawn_server(tls.then_some(&s.files));
            let cpu0 = cpu(pid(&server));
            let t0 = Instant::now();
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let client = s.client.clone();
                    let addr = server.addr;
                    std::thread::spawn(move || {
                        for _ in 0..n / THREADS {
                            let mut c = open(addr, tls.then_some(&client), "/echo");
                            c.send(tungstenite::Message::Close(None));
                            c.flush();
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            let wall = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(300));
            let used = cpu(pid(&server)) - cpu0;
            println!(
                "round {round} handshakes {}: {:.0}/s, server CPU {:.1} µs per connection",
                label(tls),
                n as f64 / wall,
                used * 1e6 / n as f64
            );
        }
    }
}

/// `GET /api/stats` field `name`.
fn stat(api: SocketAddr, name: &str) -> u64 {
    let mut c = common::ApiClient::connect(api);
    c.get("/api/stats")[name].as_u64().unwrap()
}

#[test]
fn fanout_burst() {
    let s = setup();
    let subscribers = size(5_000, 200);
    const BURSTS: usize = 3;
    let messages = size(200, 20);
    for round in 0..2 {
        for tls in [false, true] {
            let server = spawn_server(tls.then_some(&s.files));
            let mut subs: Vec<Conn> = (0..subscribers)
                .map(|i| {
                    let mut c = open(
                        server.addr,
                        tls.then_some(&s.client),
                        &format!("/ws?user=u{i}"),
                    );
                    c.recv();
                    c.send(tungstenite::Message::text(
                        r#"{"op":"subscribe","channel":"bench"}"#,
                    ));
                    c.flush();
                    c.recv();
                    c
                })
                .collect();
            let payload = format!(r#"{{"channel":"bench","data":"{}"}}"#, "x".repeat(64));
            let mut api = common::ApiClient::connect(server.api);
            let (mut span, mut used, mut bytes) = (Duration::ZERO, 0.0, 0);
            for _ in 0..BURSTS {
                let bytes0 = stat(server.api, "bytes_out");
                let deliveries0 = stat(server.api, "deliveries");
                let cpu0 = cpu(pid(&server));
                let mut batch = Vec::new();
                for _ in 0..messages {
                    batch.extend(api.request("POST", "/api/publish", Some(&payload)));
                }
                let t0 = Instant::now();
                api.send_raw(&batch);
                for _ in 0..messages {
                    assert_eq!(api.read_response().status, 200);
                }
                // Done when every delivery is queued and the bytes written stop growing
                // for 100 ms; the span ends at the last growth.
                let (mut last, mut last_change) = (bytes0, t0.elapsed());
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let d = stat(server.api, "deliveries") - deliveries0;
                    let b = stat(server.api, "bytes_out");
                    if b != last {
                        last = b;
                        last_change = t0.elapsed();
                    } else if d == (subscribers * messages) as u64
                        && b > bytes0
                        && t0.elapsed() > last_change + Duration::from_millis(100)
                    {
                        break;
                    }
                    assert!(Instant::now() < deadline);
                    std::thread::sleep(Duration::from_micros(500));
                }
                used += cpu(pid(&server)) - cpu0;
                span += last_change;
                bytes += last - bytes0;
                // Every subscriber gets every message before the next burst.
                for c in subs.iter_mut() {
                    for _ in 0..messages {
                        assert!(matches!(c.recv(), tungstenite::Message::Text(_)));
                    }
                }
            }
            let n = (subscribers * messages * BURSTS) as f64;
            println!(
                "round {round} fan-out {}: {:.2} M deliveries/s ({:.0} ms for {BURSTS} bursts; {bytes} bytes out), server CPU {:.3} µs per delivery",
                label(tls),
                n / span.as_secs_f64() / 1e6,
                span.as_secs_f64() * 1e3,
                used * 1e6 / n
            );
        }
    }
}

#[test]
fn echo_cpu_per_message() {
    let s = setup();
    const CONNS: usize = 20;
    const BATCH: usize = 50;
    let batches = size(2_000, 40);
    for round in 0..2 {
        for tls in [false, true] {
            let server = spawn_server(tls.then_some(&s.files));
            let mut conns: Vec<Conn> = (0..CONNS)
                .map(|_| open(server.addr, tls.then_some(&s.client), "/echo"))
                .collect();
            let message = "m".repeat(64);
            let cpu0 = cpu(pid(&server));
            let t0 = Instant::now();
            for _ in 0..batches {
                for c in conns.iter_mut() {
                    for _ in 0..BATCH {
                        c.send(tungstenite::Message::text(message.as_str()));
                    }
                    c.flush();
                }
                for c in conns.iter_mut() {
                    for _ in 0..BATCH {
                        c.recv();
                    }
                }
            }
            let wall = t0.elapsed().as_secs_f64();
            let used = cpu(pid(&server)) - cpu0;
            let n = (CONNS * BATCH * batches) as f64;
            println!(
                "round {round} echo {}: server CPU {:.2} µs per message ({:.0} msg/s)",
                label(tls),
                used * 1e6 / n,
                n / wall
            );
        }
    }
}
