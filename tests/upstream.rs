//! `--upstream` end to end: push clients send binary actions, an in-test backend (std only,
//! one thread per connection) answers them in the way the URL's path asks for, and each
//! client checks what comes back: order, exactly-once, errors 502/504, `Edgepush-Close`,
//! back-pressure with bounded memory.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{guarded, push_client, with_timeout, RawClient, Received, TestServer};
use edgepush::protocol::frame::OpCode;
use edgepush::upstream::UpstreamConfig;
use rand::Rng;

/// What the backend saw: (Edgepush-Connection, body) of every request.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Starts a backend on a free port; returns its address and what it saw. It serves keep-alive
/// connections until the test process ends; `started` is when "hang-then-recover" starts.
fn backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let started = Instant::now();
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            thread::spawn(move || serve(stream, &log, started));
        }
    });
    (addr, seen)
}

/// A request as the backend reads it: path, headers (lowercase names), body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

/// One request; `None` at EOF.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    for _ in 0..10_000 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let path = lines.next()?.split(' ').nth(1)?.to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())?;
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some((path, headers, body));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    None
}

fn serve(mut stream: TcpStream, seen: &Seen, started: Instant) {
    let mut buf = Vec::new();
    let mut rng = rand::rng();
    while let Some((path, headers, body)) = read_request(&mut stream, &mut buf) {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        seen.lock()
            .expect("log")
            .push((header("edgepush-connection"), body.clone()));
        let ok = |body: &[u8]| {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(body);
            out
        };
        let answer: Vec<u8> = match path.as_str() {
            "/echo" => {
                thread::sleep(Duration::from_micros(rng.random_range(0..1500)));
                ok(&body)
            }
            "/whoami" => ok(format!(
                "{}|{}|{}|{}",
                header("edgepush-user"),
                header("edgepush-action"),
                header("edgepush-node"),
                header("content-type")
            )
            .as_bytes()),
            "/never" => {
                thread::sleep(Duration::from_secs(5));
                return;
            }
            "/hang-then-recover" => {
                let until = started + Duration::from_millis(1500);
                thread::sleep(until.saturating_duration_since(Instant::now()));
                ok(&body)
            }
            "/garbage" => b"this is not HTTP\r\n\r\n".to_vec(),
            "/huge" => b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\nxxxx".to_vec(),
            "/chunked" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec(),
            "/cut" => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
                return;
            }
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/close" => b"HTTP/1.1 200 OK\r\nEdgepush-Close: 4001 go away\r\nContent-Length: 3\r\n\r\nbye".to_vec(),
            "/500" => b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno".to_vec(),
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if stream.write_all(&answer).is_err() {
            return;
        }
    }
}

/// A server whose upstream is `addr` + `path`.
fn server_for(addr: SocketAddr, path: &str, timeout: Duration) -> TestServer {
    let mut config = common::config();
    let mut upstream =
        UpstreamConfig::new(&format!("http://{addr}{path}"), "test-node".to_owned()).expect("url");
    upstream.timeout = timeout;
    config.upstream = Some(upstream);
    config.max_message_size = 64 << 10;
    config.max_backlog = 1 << 20;
    TestServer::start(config)
}

fn action(code: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = code.to_be_bytes().to_vec();
    m.extend_from_slice(payload);
    m
}

/// The next data frame, answering pings on the way.
fn next(client: &mut RawClient) -> Received {
    for _ in 0..1000 {
        match client.recv() {
            Received::Ping(p) => {
                let _ = client.send_frame(true, OpCode::Pong, &p);
            }
            Received::Pong(_) => {}
            other => return other,
        }
    }
    panic!("only pings");
}

fn error_of(received: Received) -> serde_json::Value {
    match received {
        Received::Text(t) => serde_json::from_str(&t).expect("json"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn answers_come_back_in_order_exactly_once() {
    with_timeout(Duration::from_secs(120), || {
        let (addr, seen) = backend();
        let server = server_for(addr, "/echo", Duration::from_secs(10));
        let server_addr = server.addr();
        const CLIENTS: usize = 50;
        const ACTIONS: u32 = 200;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                thread::spawn(move || {
                    let mut client = push_client(server_addr, &format!("u{c}"));
                    let mut reader = client.reader();
                    let writer = thread::spawn(move || {
                        for seq in 0..ACTIONS {
                            client.send_binary(&action(110, format!("{c}:{seq}").as_bytes()));
                        }
                        client
                    });
                    for seq in 0..ACTIONS {
                        match next(&mut reader) {
                            Received::Binary(b) => {
                                assert_eq!(b, action(110, format!("{c}:{seq}").as_bytes()))
                            }
                            other => panic!("client {c} action {seq}: {other:?}"),
                        }
                    }
                    writer.join().expect("writer")
                })
            })
            .collect();
        let clients: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect();
        let seen = seen.lock().expect("log");
        assert_eq!(seen.len(), CLIENTS * ACTIONS as usize, "each action once");
        let distinct: HashSet<_> = seen.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(distinct.len(), seen.len(), "no action twice");
        let ids: HashSet<_> = seen.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids.len(), CLIENTS, "one Edgepush-Connection per client");
        let figures = server.stats();
        assert_eq!(
            figures
                .upstream_outcomes
                .get(edgepush::upstream::Outcome::Ok),
            (CLIENTS * ACTIONS as usize) as u64
        );
        drop(clients);
    });
}

#[test]
fn headers_and_answers_of_every_kind() {
    guarded(|| {
        let (addr, _) = backend();
        let expect = |path: &str, check: &dyn Fn(&mut RawClient)| {
            let server = server_for(addr, path, Duration::from_secs(2));
            let mut client = push_client(server.addr(), "zo%C3%AB");
            client.send_binary(&action(111, b"x"));
            check(&mut client);
            // The connection keeps working after errors: a short message is 400.
            if path != "/close" {
                client.send_binary(b"ab");
                let e = error_of(next(&mut client));
                assert_eq!(e["code"], 400, "{path}: {e}");
            }
        };
        expect("/whoami", &|c| {
            assert_eq!(
                next(c),
                Received::Binary(b"zo%C3%AB|111|test-node|application/octet-stream".to_vec())
            )
        });
        expect("/chunked", &|c| {
            assert_eq!(next(c), Received::Binary(b"abcde".to_vec()))
        });
        for (path, code) in [
            ("/garbage", 502),
            ("/huge", 502),
            ("/cut", 502),
            ("/500", 502),
        ] {
            expect(path, &|c| {
                let e = error_of(next(c));
                assert_eq!(
                    (e["code"].as_u64(), e["action"].as_u64()),
                    (Some(code), Some(111)),
                    "{path}: {e}"
                );
            });
        }
        expect("/204", &|c| {
            // Nothing for the 204: the next thing is the answer to what follows.
            c.send_text("ping");
            assert_eq!(next(c), Received::Text("pong".to_owned()));
        });
        expect("/close", &|c| {
            assert_eq!(next(c), Received::Binary(b"bye".to_vec()));
            assert_eq!(next(c), Received::Close(Some((4001, "go away".to_owned()))));
        });
    });
}

#[test]
fn backend_down_is_502() {
    guarded(|| {
        let free = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let server = server_for(addr, "/", Duration::from_secs(2));
        let mut client = push_client(server.addr(), "a");
        for _ in 0..3 {
            client.send_binary(&action(7, b""));
            let e = error_of(next(&mut client));
            assert_eq!(
                (e["code"].as_u64(), e["action"].as_u64()),
                (Some(502), Some(7)),
                "{e}"
            );
        }
    });
}

#[test]
fn no_answer_is_504_within_the_timeout_and_the_connection_goes_on() {
    guarded(|| {
        let (addr, _) = backend();
        let timeout = Duration::from_millis(300);
        let never = server_for(addr, "/never", timeout);
        let mut client = push_client(never.addr(), "a");
        let sent = Instant::now();
        client.send_binary(&action(9, b""));
        let e = error_of(next(&mut client));
        let took = sent.elapsed();
        assert_eq!(
            (e["code"].as_u64(), e["action"].as_u64()),
            (Some(504), Some(9)),
            "{e}"
        );
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(50),
            "{took:?}"
        );
        client.send_text("ping");
        assert_eq!(next(&mut client), Received::Text("pong".to_owned()));
        client.send_binary(&action(9, b""));
        assert_eq!(error_of(next(&mut client))["code"], 504);
    });
}

#[test]
fn without_upstream_binary_is_501_naming_the_action() {
    guarded(|| {
        let server = TestServer::start(common::config());
        let mut client = push_client(server.addr(), "a");
        client.send_binary(&action(110, b"hi"));
        let e = error_of(next(&mut client));
        assert_eq!(
            (e["code"].as_u64(), e["action"].as_u64()),
            (Some(501), Some(110)),
            "{e}"
        );
        client.send_binary(b"x");
        assert_eq!(error_of(next(&mut client))["code"], 400);
    });
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A backend that hangs for 1.5 s then answers; 200 clients send 100 actions each at once,
/// with a ping every 200 ms and a 200 ms pong timeout: paused connections are not dropped,
/// every action is answered or errored (504 while it hangs) in order, memory stays bounded.
#[test]
fn back_pressure_keeps_memory_bounded_and_answers_everything() {
    with_timeout(Duration::from_secs(120), || {
        let (addr, seen) = backend();
        let mut config = common::config();
        let mut upstream =
            UpstreamConfig::new(&format!("http://{addr}/hang-then-recover"), "n".to_owned())
                .expect("url");
        upstream.timeout = Duration::from_millis(1000);
        upstream.max_inflight = 64;
        config.upstream = Some(upstream);
        config.ping_interval = Duration::from_millis(200);
        config.pong_timeout = Duration::from_millis(200);
        let server = TestServer::start(config);
        let server_addr = server.addr();
        let before = rss_kib();
        let peak = Arc::new(Mutex::new(before));
        const CLIENTS: usize = 200;
        const ACTIONS: u32 = 100;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                thread::spawn(move || {
                    let mut client = push_client(server_addr, &format!("b{c}"));
                    let mut reader = client.reader();
                    let writer = thread::spawn(move || {
                        for seq in 0..ACTIONS {
                            client.send_binary(&action(1000 + seq, &[0u8; 200]));
                        }
                        client
                    });
                    let (mut ok, mut timed_out) = (0, 0);
                    for seq in 0..ACTIONS {
                        match next(&mut reader) {
                            Received::Binary(b) => {
                                assert_eq!(b[..4], (1000 + seq).to_be_bytes());
                                ok += 1;
                            }
                            Received::Text(t) => {
                                let e: serde_json::Value = serde_json::from_str(&t).expect("json");
                                assert_eq!(e["code"], 504, "{e}");
                                assert_eq!(e["action"], 1000 + seq, "in order: {e}");
                                timed_out += 1;
                            }
                            other => panic!("client {c} action {seq}: {other:?}"),
                        }
                    }
                    let _client = writer.join().expect("writer");
                    (ok, timed_out)
                })
            })
            .collect();
        let sampler_peak = Arc::clone(&peak);
        let sampling = thread::spawn(move || {
            for _ in 0..200 {
                let rss = rss_kib();
                let mut p = sampler_peak.lock().expect("peak");
                *p = (*p).max(rss);
                drop(p);
                thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut ok, mut timed_out) = (0, 0);
        for t in threads {
            let (o, e) = t.join().expect("client");
            ok += o;
            timed_out += e;
        }
        assert_eq!(ok + timed_out, CLIENTS * ACTIONS as usize);
        assert!(ok > 0 && timed_out > 0, "ok {ok}, timed out {timed_out}");
        let peak = *peak.lock().expect("peak");
        eprintln!(
            "back-pressure: {ok} answered, {timed_out} timed out; test-process RSS {before} KiB before, peak {peak} KiB (+{} KiB, clients included); backend saw {}",
            peak.saturating_sub(before),
            seen.lock().expect("log").len()
        );
        assert!(
            peak.saturating_sub(before) < 256 << 10,
            "RSS grew by {} KiB",
            peak - before
        );
        assert_eq!(
            server
                .stats()
                .pong_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        drop(sampling);
    });
}
