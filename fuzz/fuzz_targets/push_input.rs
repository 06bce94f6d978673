//! Everything a client or a backend can send to the push layer, as raw bytes: the push API's
//! HTTP parser (with and without a key, tiny and default limits) and the client protocol's op
//! parser, and under them the HTTP module's pieces: request heads with every target form,
//! body framing, chunked decoding (the scan and the decode must agree; the decoded size stays
//! within the limit) and the origin comparison (symmetric). Nothing may panic; a parsed
//! request must lie within the input; a rejection renders a complete HTTP answer.
#![no_main]

use edgepush::http::body::{chunked_body, chunked_extent};
use edgepush::http::origin::origin_matches;
use edgepush::http::request::{parse_request, split_target};
use edgepush::http::{Status, EMPTY_HEADER, MAX_HEADERS};
use edgepush::push::api::{self, ApiLimits, Parsed};
use edgepush::push::client_protocol::parse_client_op;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tiny = ApiLimits {
        max_head: 64,
        max_body: 16,
    };
    for (key, limits) in [
        (None, ApiLimits::default()),
        (Some("k3y"), ApiLimits::default()),
        (None, tiny),
    ] {
        match api::parse(data, key, &limits) {
            Parsed::Partial => {}
            Parsed::Request { consumed, .. } => assert!(consumed > 0 && consumed <= data.len()),
            Parsed::Reject {
                consumed, response, ..
            } => {
                assert!(consumed <= data.len());
                assert!(response.starts_with(b"HTTP/1.1 "), "{response:?}");
                assert!(response.windows(4).any(|w| w == b"\r\n\r\n"));
            }
        }
    }
    // The HTTP module directly: a head, its target and framing, then the bytes after it as
    // a chunked body.
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let body_at = match parse_request(data, &mut headers, 16 * 1024) {
        Ok(Status::Complete(head)) => {
            assert!(head.len <= data.len());
            assert!(split_target(head.target).is_ok());
            assert!(head.path.starts_with('/'));
            let _ = head.framing();
            head.len
        }
        _ => 0,
    };
    for limit in [0, 16, 1 << 20] {
        let rest = &data[body_at..];
        let mut out = Vec::new();
        let decoded = chunked_body(rest, limit, &mut out);
        assert_eq!(decoded, chunked_extent(rest, limit));
        match decoded {
            Ok(Status::Complete(n)) => assert!(n <= rest.len() && out.len() <= limit),
            _ => assert!(out.is_empty()),
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let (a, b) = text.split_at(text.find('|').unwrap_or(0));
        assert_eq!(origin_matches(a, b), origin_matches(b, a));
        assert!(origin_matches(a, a));
    }
    if let Err(e) = parse_client_op(data) {
        assert!(matches!(e.code, 400..=599), "{e:?}");
    }
});
