//! Arbitrary bytes as an HTTP request head: `parse_request` must never panic, whatever the
//! caps, and what it returns must be consistent:
//! - `Ok(None)` (read more) only while the input is under `max_head_size`;
//! - a parsed request's head lies within the input and the cap, and parsing exactly the head
//!   (or the head plus anything after it) gives the same request, while the head less its last
//!   byte is still incomplete — a driver re-parses as bytes arrive and must see the same thing;
//! - an upgrade's 101 response starts with `HTTP/1.1 101` and ends with the blank line;
//! - every error renders a complete HTTP response with its status.

#![no_main]

use edgepush::protocol::handshake::{self, HandshakeConfig, HandshakeError, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data, &HandshakeConfig::default());
    check(
        data,
        &HandshakeConfig {
            max_head_size: 96,
            max_headers: 3,
            subprotocols: vec!["chat".into(), "superchat".into()],
            permessage_deflate: true,
        },
    );
    check(
        data,
        &HandshakeConfig {
            max_head_size: 16,
            max_headers: 0,
            subprotocols: Vec::new(),
            permessage_deflate: false,
        },
    );
    // More headers than the stack array holds: the heap path.
    check(
        data,
        &HandshakeConfig {
            max_headers: 100,
            ..HandshakeConfig::default()
        },
    );
});

fn check(data: &[u8], config: &HandshakeConfig) {
    match handshake::parse_request(data, config) {
        Ok(None) => assert!(
            data.len() < config.max_head_size,
            "partial at {} bytes with max_head_size {}",
            data.len(),
            config.max_head_size
        ),
        Ok(Some(request)) => {
            assert!(request.head_len <= data.len());
            assert!(request.head_len <= config.max_head_size);
            let head = &data[..request.head_len];
            let again = handshake::parse_request(head, config);
            assert_eq!(
                again,
                Ok(Some(request.clone())),
                "head alone parses differently"
            );
            if request.head_len > 0 {
                let short = handshake::parse_request(&head[..request.head_len - 1], config);
                assert_eq!(short, Ok(None), "head less one byte is not incomplete");
            }
            exercise(&request);
        }
        Err(e) => {
            let mut out = Vec::new();
            e.write_response(&mut out);
            let status = format!("HTTP/1.1 {} ", e.status());
            assert!(out.starts_with(status.as_bytes()), "{e:?}");
            assert!(e.status() >= 400);
            if let HandshakeError::HeadTooLarge = e {
                assert!(data.len() >= config.max_head_size);
            }
        }
    }
}

fn exercise(request: &Request<'_>) {
    let _ = request.query_param("token");
    let _ = request.query_param("");
    let _ = request.cookie_value("session");
    let _ = request.bearer_token();
    if let Some(upgrade) = request.upgrade {
        assert_eq!(request.method, "GET");
        assert_eq!(upgrade.key.len(), 24);
        let mut out = Vec::new();
        handshake::write_accept_response(&mut out, &upgrade);
        assert!(out.starts_with(b"HTTP/1.1 101"), "{out:?}");
        assert!(out.ends_with(b"\r\n\r\n"));
        // One blank line only: the head we send is well formed.
        assert_eq!(out.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    }
}
