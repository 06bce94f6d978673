//! Protocol violations get the exact close code RFC 6455 asks for, then the server closes TCP;
//! and bad input on one connection never harms another.

mod common;

use std::io::Write;

use common::{assert_server_healthy, guarded, RawClient, TestServer};
use edgepush::config::Config;
use edgepush::protocol::frame::{write_frame_part, OpCode};

/// Small limit so that "oversize" is cheap to provoke.
const MAX_MESSAGE: usize = 64 * 1024;

fn server() -> TestServer {
    TestServer::start(Config {
        max_message_size: MAX_MESSAGE,
        max_backlog: 4 * MAX_MESSAGE,
        ..common::config()
    })
}

/// Upgrades, lets `send` misbehave, expects Close `code` then EOF, then checks that a fresh
/// client on the same server still works and the error was counted.
fn expect_failure(code: u16, send: impl FnOnce(&mut RawClient) + Send + 'static) {
    guarded(move || {
        let server = server();
        let mut client = RawClient::connect(server.addr(), "/echo");
        // One good exchange first: the connection is fine until the bad frame.
        client.round_trip("before");
        send(&mut client);
        client.expect_close_code(code);
        assert_eq!(
            server
                .stats()
                .protocol_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        drop(client);
        assert_server_healthy(server.addr());
    });
}

/// A client frame with full control over the first byte (FIN, RSV, opcode) and masking.
fn raw_frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x11, 0x22, 0x33, 0x44];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

#[test]
fn unmasked_frame_is_1002() {
    expect_failure(1002, |c| {
        let mut frame = Vec::new();
        write_frame_part(&mut frame, true, OpCode::Text, b"not masked");
        c.send_raw(&frame).unwrap();
    });
}

#[test]
fn rsv_bits_are_1002() {
    for rsv in [0x40u8, 0x20, 0x10] {
        expect_failure(1002, move |c| {
            c.send_raw(&raw_frame(0x80 | rsv | 0x1, true, b"rsv"))
                .unwrap();
        });
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    for opcode in [0x3u8, 0x7, 0xB, 0xF] {
        expect_failure(1002, move |c| {
            c.send_raw(&raw_frame(0x80 | opcode, true, b"x")).unwrap();
        });
    }
}

#[test]
fn oversize_message_is_1009_from_the_header_alone() {
    expect_failure(1009, |c| {
        // Only the header of a frame one byte over the limit: the server must decide without
        // waiting for the payload.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        c.send_raw(&header).unwrap();
    });
}

#[test]
fn oversize_across_fragments_is_1009() {
    expect_failure(1009, |c| {
        let half = vec![b'a'; MAX_MESSAGE / 2];
        c.send_frame(false, OpCode::Text, &half).unwrap();
        c.send_frame(false, OpCode::Continuation, &half).unwrap();
        // The limit is exactly reached; one more byte is over.
        c.send_frame(true, OpCode::Continuation, b"b").unwrap();
    });
}

#[test]
fn message_at_the_limit_is_fine() {
    guarded(|| {
        let server = server();
        let mut client = RawClient::connect(server.addr(), "/echo");
        let data = vec![7u8; MAX_MESSAGE];
        client.send_binary(&data);
        assert_eq!(client.recv(), common::Received::Binary(data));
    });
}

#[test]
fn huge_64_bit_length_is_refused() {
    // Top bit set (1002) and merely enormous (1009).
    expect_failure(1002, |c| {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 63).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        c.send_raw(&header).unwrap();
    });
    expect_failure(1009, |c| {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        c.send_raw(&header).unwrap();
    });
}

#[test]
fn invalid_utf8_in_one_frame_is_1007() {
    expect_failure(1007, |c| {
        c.send_frame(true, OpCode::Text, b"ok so far \xff\xfe")
            .unwrap();
    });
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    // A character split across fragments whose continuation byte is wrong.
    expect_failure(1007, |c| {
        c.send_frame(false, OpCode::Text, b"caf\xc3").unwrap();
        c.send_frame(true, OpCode::Continuation, b"(").unwrap();
    });
    // A message that ends in the middle of a character.
    expect_failure(1007, |c| {
        c.send_frame(false, OpCode::Text, b"abc").unwrap();
        c.send_frame(true, OpCode::Continuation, b"\xe2\x82")
            .unwrap();
    });
}

#[test]
fn invalid_utf8_fails_fast_before_the_message_ends() {
    // §8.1 / the design: fail on the first bad byte, not at the end of the message.
    expect_failure(1007, |c| {
        c.send_frame(false, OpCode::Text, b"\xf8 bad from the start")
            .unwrap();
        // No final fragment is ever sent.
    });
    // Inside one frame whose payload has not fully arrived.
    expect_failure(1007, |c| {
        let mut payload = vec![b'a'; 60_000];
        payload[10] = 0xff;
        let frame = c.frame(true, OpCode::Text, &payload);
        // The header (8 bytes with the 16-bit length and key) and 100 payload bytes only.
        c.send_raw(&frame[..108]).unwrap();
    });
}

#[test]
fn continuation_without_start_is_1002() {
    expect_failure(1002, |c| {
        c.send_frame(true, OpCode::Continuation, b"orphan").unwrap();
    });
}

#[test]
fn new_message_inside_a_fragmented_one_is_1002() {
    expect_failure(1002, |c| {
        c.send_frame(false, OpCode::Text, b"first").unwrap();
        c.send_frame(true, OpCode::Binary, b"second").unwrap();
    });
}

#[test]
fn bad_close_codes_are_1002() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        expect_failure(1002, move |c| c.send_close(code));
    }
}

#[test]
fn good_close_codes_are_echoed() {
    guarded(|| {
        let server = server();
        // 1012–1014 are in the IANA registry (service restart, try again later, bad gateway).
        for code in [
            1000u16, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let mut client = RawClient::connect(server.addr(), "/echo");
            client.send_close(code);
            client.expect_close_code(code);
        }
        // An empty close payload gets an empty close back.
        let mut client = RawClient::connect(server.addr(), "/echo");
        client.send_frame(true, OpCode::Close, b"").unwrap();
        assert_eq!(client.recv(), common::Received::Close(None));
        client.expect_eof();
    });
}

#[test]
fn close_payload_of_one_byte_is_1002() {
    expect_failure(1002, |c| {
        c.send_frame(true, OpCode::Close, &[0x03]).unwrap();
    });
}

#[test]
fn close_reason_with_invalid_utf8_is_1007() {
    expect_failure(1007, |c| {
        c.send_frame(true, OpCode::Close, b"\x03\xe8bad \xff")
            .unwrap();
    });
}

#[test]
fn fragmented_ping_is_1002() {
    expect_failure(1002, |c| {
        c.send_frame(false, OpCode::Ping, b"frag").unwrap();
    });
}

#[test]
fn ping_payload_of_126_is_1002() {
    expect_failure(1002, |c| {
        c.send_frame(true, OpCode::Ping, &[0u8; 126]).unwrap();
    });
}

#[test]
fn garbage_instead_of_a_handshake_is_400() {
    guarded(|| {
        let server = server();
        let mut request = b"\x00\xff\x13\x37garbage\r\n".to_vec();
        request.extend_from_slice(common::upgrade_request("/echo").as_bytes());
        let response = common::http_exchange(server.addr(), &request);
        assert_eq!(response.status, 400, "{response:?}");
        assert_eq!(response.header("connection"), Some("close"));
        assert_server_healthy(server.addr());
    });
}

#[test]
fn garbage_after_the_upgrade_is_a_protocol_error_not_a_crash() {
    guarded(|| {
        let server = server();
        for seed in 0u8..16 {
            let mut client = RawClient::connect(server.addr(), "/echo");
            // Bytes that cannot be a masked client frame: the mask bit is clear in byte 1.
            let garbage: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(seed) & 0x7F)
                .collect();
            client.stream.write_all(&garbage).unwrap();
            match client.expect_close() {
                Some(code) => assert!(
                    code == 1002 || code == 1009,
                    "garbage seed {seed}: close {code}"
                ),
                None => panic!("empty close for garbage"),
            }
        }
        assert_server_healthy(server.addr());
    });
}

#[test]
fn frames_split_byte_by_byte_still_work() {
    guarded(|| {
        let server = server();
        let mut client = RawClient::connect(server.addr(), "/echo");
        let mut bytes = client.frame(true, OpCode::Ping, b"split ping");
        bytes.extend(client.frame(true, OpCode::Text, "split text é".as_bytes()));
        for b in bytes {
            client.send_raw(&[b]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            client.recv(),
            common::Received::Pong(b"split ping".to_vec())
        );
        assert_eq!(client.recv(), common::Received::Text("split text é".into()));
    });
}

#[test]
fn client_that_sends_and_closes_at_once_leaks_nothing_to_others() {
    // A client writes its upgrade request and a message and closes its side at once, so the
    // server reads the request, the frame and the EOF in one go. Whatever the server had
    // produced for it (the 101, the echo) must never reach another connection.
    guarded(|| {
        let server = server();
        for round in 0..20 {
            let mut hasty = common::connect(server.addr());
            let mut bytes = common::upgrade_request("/echo").into_bytes();
            let mut framer = RawClient::from_parts(hasty.try_clone().unwrap(), Vec::new());
            bytes.extend(framer.frame(true, OpCode::Text, b"from the hasty client"));
            hasty.write_all(&bytes).unwrap();
            hasty.shutdown(std::net::Shutdown::Write).unwrap();
            drop(framer);
            // Give the server time to read it all (and the FIN) in one turn.
            std::thread::sleep(std::time::Duration::from_millis(20));

            // A bystander upgrading next on the same worker must see its own 101 first, then
            // nothing but its own echo.
            let mut other = common::connect(server.addr());
            other
                .write_all(common::upgrade_request("/echo").as_bytes())
                .unwrap();
            let (response, rest) = common::read_response_head(&mut other);
            assert_eq!(response.status, 101, "round {round}");
            assert!(
                rest.is_empty(),
                "round {round}: bytes after our 101 before we sent anything: {:?}",
                String::from_utf8_lossy(&rest)
            );
            let mut other = RawClient::from_parts(other, rest);
            other.round_trip(&format!("bystander {round}"));
            drop(hasty);
        }
    });
}
