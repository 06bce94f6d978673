//! A byte stream through `message::Decoder`, fed the way a driver feeds reads: the decoder must
//! never panic, leave at most 139 bytes (an unfinished header or control frame) to carry into
//! the next read, and give exactly the same events and error whatever the chunking.
//!
//! Input layout: byte 0 picks the chunking pattern, byte 1 the `max_message_size`, bytes 2–3
//! seed the chunk sizes; the rest is the stream. Each stream runs as server and as client.

#![no_main]

use edgepush::protocol::frame::MAX_CONTROL_PAYLOAD;
use edgepush::protocol::message::{drive_chunks, DecoderConfig, Event, MessageKind, Role};
use edgepush::protocol::ProtocolError;
use libfuzzer_sys::fuzz_target;

const SIZES: [usize; 8] = [0, 1, 10, 125, 126, 1000, 65_536, 1 << 20];

/// An event with owned data, to compare runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn own(event: Event<'_>, config: &DecoderConfig) -> Owned {
    match event {
        Event::Message { kind, data } => {
            assert!(
                data.len() <= config.max_message_size,
                "message over the limit"
            );
            match kind {
                MessageKind::Text => {
                    assert!(std::str::from_utf8(data).is_ok(), "text that is not UTF-8");
                    Owned::Text(data.to_vec())
                }
                MessageKind::Binary => Owned::Binary(data.to_vec()),
            }
        }
        Event::Ping(p) => {
            assert!(p.len() <= MAX_CONTROL_PAYLOAD);
            Owned::Ping(p.to_vec())
        }
        Event::Pong(p) => {
            assert!(p.len() <= MAX_CONTROL_PAYLOAD);
            Owned::Pong(p.to_vec())
        }
        Event::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_string()))),
    }
}

/// The driver loop from the `message` module docs (leftover bytes go in front of the next
/// read), with its invariants checked by `drive_chunks`. Stops at the first error.
fn run(chunks: &[&[u8]], config: &DecoderConfig) -> (Vec<Owned>, Option<ProtocolError>) {
    let mut events = Vec::new();
    let result = drive_chunks(chunks, config, |event| events.push(own(event, config)));
    (events, result.err())
}

/// Splits `stream` into reads of the sizes the pattern gives.
fn chunk(stream: &[u8], pattern: u8, seed: u16) -> Vec<&[u8]> {
    let mut state = u64::from(seed) | 0x9e37_79b9_7f4a_7c00;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = match pattern % 6 {
            0 => 1,
            1 => usize::from(seed % 16) + 1,
            2 => usize::from(seed % 256) + 1,
            3 => (next() % 17) as usize, // empty reads included
            4 => (next() % 200) as usize + 1,
            _ => (next() % 3000) as usize + 1,
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        chunks.push(a);
        rest = b;
    }
    chunks
}

fuzz_target!(|data: &[u8]| {
    let [pattern, size, s0, s1, stream @ ..] = data else {
        return;
    };
    let seed = u16::from_le_bytes([*s0, *s1]);
    let max_message_size = SIZES[usize::from(size % 8)];
    let chunks = chunk(stream, *pattern, seed);
    for role in [Role::Server, Role::Client] {
        let config = DecoderConfig {
            role,
            max_message_size,
        };
        let whole = run(&[stream], &config);
        let chunked = run(&chunks, &config);
        assert_eq!(whole, chunked, "chunking changed the outcome ({role:?})");
    }
});
