//! End of input is not a reason to drop output (issue: "close, then half-close"): a peer that
//! half-closes (FIN) can still read, so what the server owes it — an echo, the Close reply
//! (RFC 6455 §5.5.1), an HTTP answer — still goes out before the server closes. And the
//! lingering close after an early HTTP answer is bounded in amount.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{guarded, RawClient, Received, TestServer};
use edgepush::config::Config;
use edgepush::protocol::frame::OpCode;

fn server() -> TestServer {
    TestServer::start(Config {
        close_timeout: Duration::from_secs(3),
        ..common::config()
    })
}

#[test]
fn close_then_half_close_still_gets_the_echo_and_the_close_reply() {
    guarded(|| {
        let server = server();
        for round in 0..10 {
            let mut client = RawClient::connect(server.addr(), "/echo");
            // An echo queued just before, the Close, and our FIN, in one go.
            let mut bytes = client.frame(true, OpCode::Text, format!("last {round}").as_bytes());
            bytes.extend(client.frame(true, OpCode::Close, &1000u16.to_be_bytes()));
            client.send_raw(&bytes).unwrap();
            client.shutdown_write();
            assert_eq!(client.recv(), Received::Text(format!("last {round}")));
            assert_eq!(client.recv(), Received::Close(Some((1000, String::new()))));
            client.expect_eof();
        }
        assert!(common::wait_until(Duration::from_secs(2), || server
            .stats()
            .open()
            == 0));
    });
}

#[test]
fn half_close_without_a_close_still_gets_what_was_queued() {
    guarded(|| {
        let server = server();
        let mut client = RawClient::connect(server.addr(), "/echo");
        let mut bytes = Vec::new();
        for i in 0..50 {
            bytes.extend(client.frame(true, OpCode::Text, format!("m{i}").as_bytes()));
        }
        client.send_raw(&bytes).unwrap();
        client.shutdown_write();
        for i in 0..50 {
            assert_eq!(client.recv(), Received::Text(format!("m{i}")));
        }
        // No closing handshake was asked for: the server just closes.
        client.expect_eof();
        assert!(common::wait_until(Duration::from_secs(2), || server
            .stats()
            .open()
            == 0));
    });
}

#[test]
fn a_plain_request_then_fin_still_gets_its_answer() {
    guarded(|| {
        let server = server();
        let mut stream = common::connect(server.addr());
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let response = common::read_full_response(&mut stream);
        assert_eq!(response.status, 200);
    });
}

/// An upgrade refused before its body was read: the client that goes on writing its body in
/// full (as Python's `urllib` does) still reads the answer instead of a reset.
#[test]
fn an_early_refusal_lingers_so_the_client_reads_it() {
    guarded(|| {
        let server = server();
        let mut stream = common::connect(server.addr());
        let body = vec![b'x'; 16 << 20];
        let head = format!(
            "GET /nowhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).expect("the server keeps reading");
        let response = common::read_full_response(&mut stream);
        // An upgrade may not carry a body (its bytes would be read as frames): 400.
        assert_eq!(response.status, 400);
    });
}

/// The lingering is bounded: a client that keeps sending after the answer is reset once it
/// passed the bound, long before the close timeout.
#[test]
fn lingering_is_bounded_in_amount() {
    guarded(|| {
        let server = TestServer::start(Config {
            close_timeout: Duration::from_secs(30),
            ..common::config()
        });
        let mut stream = common::connect(server.addr());
        stream
            .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        let refused = (0..4096).any(|_| match stream.write(&chunk) {
            Ok(n) => {
                sent += n;
                false
            }
            Err(_) => true,
        });
        assert!(refused, "still accepted after {sent} bytes");
        assert!(sent < 160 << 20, "reset only after {sent} bytes");
        // The answer came before the reset (it may or may not still be readable).
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(common::wait_until(Duration::from_secs(2), || server
            .stats()
            .open()
            == 0));
    });
}
