//! Handshake, ping, pong and close-handshake deadlines, with short flag values.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{connect, guarded, wait_until, RawClient, Received, TestServer};
use edgepush::config::Config;
use edgepush::protocol::frame::OpCode;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Reads until EOF or reset, discarding data; returns when that happened. Panics on a read
/// timeout.
fn wait_for_close(stream: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn handshake_timeout_drops_a_silent_connection() {
    guarded(|| {
        let server = TestServer::start(Config {
            handshake_timeout: MS(300),
            ..common::config()
        });
        let start = Instant::now();
        let mut silent = connect(server.addr());
        let closed = wait_for_close(&mut silent) - start;
        assert!(
            closed >= MS(250) && closed < MS(2000),
            "closed after {closed:?}"
        );
        assert!(server.stats().handshake_failures.load(Ordering::Relaxed) >= 1);
        common::assert_server_healthy(server.addr());
    });
}

#[test]
fn handshake_timeout_drops_a_half_sent_head() {
    guarded(|| {
        let server = TestServer::start(Config {
            handshake_timeout: MS(300),
            ..common::config()
        });
        let start = Instant::now();
        let mut half = connect(server.addr());
        half.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: webs")
            .unwrap();
        let closed = wait_for_close(&mut half) - start;
        assert!(
            closed >= MS(250) && closed < MS(2000),
            "closed after {closed:?}"
        );
        // Trickling bytes does not extend the deadline (slowloris).
        let start = Instant::now();
        let mut trickle = connect(server.addr());
        trickle.set_read_timeout(Some(MS(50))).unwrap();
        let head = common::upgrade_request("/echo");
        let mut closed = None;
        for b in head.bytes().take(head.len() - 1) {
            if trickle.write_all(&[b]).is_err() {
                closed = Some(Instant::now());
                break;
            }
            let mut buf = [0u8; 64];
            match trickle.read(&mut buf) {
                Ok(0) => {
                    closed = Some(Instant::now());
                    break;
                }
                Ok(n) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    closed = Some(Instant::now());
                    break;
                }
                Err(_) => {} // timeout: keep trickling
            }
        }
        let closed = closed.expect("the trickling client was never dropped") - start;
        assert!(closed < MS(2000), "closed after {closed:?}");
    });
}

// "An upgraded connection is not subject to the handshake timeout" and "traffic postpones the
// ping" are rules of the session's deadlines: tested in simulated time in src/session/tests.rs
// (`the_upgrade_replaces_the_handshake_deadline`, `traffic_postpones_the_ping`) instead of
// sleeping here. The tests below check the wiring: that the worker arms and fires them.

#[test]
fn idle_client_receives_pings() {
    guarded(|| {
        let server = TestServer::start(Config {
            ping_interval: MS(200),
            pong_timeout: Duration::from_secs(5),
            ..common::config()
        });
        let start = Instant::now();
        let mut client = RawClient::connect(server.addr(), "/echo");
        assert_eq!(client.recv(), Received::Ping(Vec::new()));
        let elapsed = start.elapsed();
        assert!(
            elapsed >= MS(150) && elapsed < MS(1500),
            "first ping after {elapsed:?}"
        );
    });
}

#[test]
fn pong_timeout_closes_a_dead_client() {
    guarded(|| {
        let server = TestServer::start(Config {
            ping_interval: MS(200),
            pong_timeout: MS(200),
            ..common::config()
        });
        let start = Instant::now();
        let mut client = RawClient::connect(server.addr(), "/echo");
        // Never answer: the ping arrives, then the connection ends.
        let mut saw_ping = false;
        loop {
            match client.recv() {
                Received::Ping(_) => saw_ping = true,
                Received::Eof | Received::Reset => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let elapsed = start.elapsed();
        assert!(saw_ping, "closed without pinging first");
        assert!(
            elapsed >= MS(350) && elapsed < MS(2500),
            "closed after {elapsed:?}"
        );
        assert!(wait_until(MS(1000), || server.stats().open() == 0));
        assert_eq!(server.stats().pong_timeouts.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn client_that_answers_pings_stays_open() {
    guarded(|| {
        let server = TestServer::start(Config {
            ping_interval: MS(200),
            pong_timeout: MS(200),
            ..common::config()
        });
        let mut client = RawClient::connect(server.addr(), "/echo");
        client.stream.set_read_timeout(Some(MS(100))).unwrap();
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < MS(1600) {
            match client.try_recv() {
                Ok(Received::Ping(payload)) => {
                    pings += 1;
                    client.send_frame(true, OpCode::Pong, &payload).unwrap();
                }
                Ok(other) => panic!("unexpected {other:?} after {:?}", start.elapsed()),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(
            pings >= 3,
            "only {pings} pings in 1.6 s at a 200 ms interval"
        );
        client
            .stream
            .set_read_timeout(Some(common::READ_TIMEOUT))
            .unwrap();
        client.round_trip("alive");
        assert_eq!(server.stats().pong_timeouts.load(Ordering::Relaxed), 0);
        assert_eq!(server.stats().open(), 1);
    });
}

#[test]
fn any_frame_counts_as_an_answer_to_a_ping() {
    guarded(|| {
        let server = TestServer::start(Config {
            ping_interval: MS(200),
            pong_timeout: MS(200),
            ..common::config()
        });
        let mut client = RawClient::connect(server.addr(), "/echo");
        for i in 0..4 {
            assert_eq!(client.recv(), Received::Ping(Vec::new()));
            // Answer with data instead of a pong.
            client.round_trip(&format!("answer {i}"));
        }
        assert_eq!(server.stats().pong_timeouts.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn close_timeout_drops_a_peer_that_never_closes_tcp() {
    guarded(|| {
        let server = TestServer::start(Config {
            close_timeout: MS(500),
            ..common::config()
        });
        let mut client = RawClient::connect(server.addr(), "/echo");
        client.send_close(1000);
        let sent = Instant::now();
        client.expect_close_code(1000); // the echo, then the server's FIN
                                        // We keep our side open. Until the close timeout the server holds the connection...
        assert_eq!(server.stats().open(), 1);
        // ...and what we send meanwhile is discarded, not answered with a reset.
        client.send_raw(b"\x81\x80\x00\x00\x00\x00").unwrap();
        std::thread::sleep(MS(100));
        assert_eq!(server.stats().open(), 1);
        // Then it lets go.
        assert!(
            wait_until(MS(2000), || server.stats().open() == 0),
            "still open {:?} after our Close",
            sent.elapsed()
        );
        let elapsed = sent.elapsed();
        assert!(elapsed >= MS(400), "dropped after only {elapsed:?}");
        // The socket is really gone: writing to it now draws a reset.
        let reset = wait_until(MS(2000), || {
            client.send_raw(b"\x81\x80\x00\x00\x00\x00").is_err()
        });
        assert!(reset, "the server still holds the socket");
    });
}

#[test]
fn close_timeout_after_a_protocol_error() {
    guarded(|| {
        let server = TestServer::start(Config {
            close_timeout: MS(300),
            ..common::config()
        });
        let mut client = RawClient::connect(server.addr(), "/echo");
        client.send_frame(true, OpCode::Continuation, b"x").unwrap();
        client.expect_close_code(1002);
        assert!(wait_until(MS(2000), || server.stats().open() == 0));
        // The same for a plain HTTP answer whose client never closes.
        let mut stream = connect(server.addr());
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let response = common::read_full_response(&mut stream);
        assert_eq!(response.status, 200);
        let reset = wait_until(MS(2000), || stream.write_all(b"x").is_err());
        assert!(reset, "the server still holds the HTTP socket");
    });
}
