//! Everything a client or a backend can send to the push layer, as raw bytes: the push API's
//! HTTP parser (with and without a key, tiny and default limits) and the client protocol's op
//! parser. Neither may panic; a parsed request must lie within the input; a rejection renders
//! a complete HTTP answer.
#![no_main]

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
    if let Err(e) = parse_client_op(data) {
        assert!(matches!(e.code, 400..=599), "{e:?}");
    }
});
