//! A compressed message (RFC 7692) through `message::Decoder::decode_inflating`, cut into
//! fragments and reads: inflating as the bytes arrive must never panic, never deliver more
//! than the limit or text that is not UTF-8, and end exactly as inflating the whole message at
//! once does (the same data, or an error with the same close code), whether the worker's
//! streaming inflater is free or held by another connection (then the message is kept
//! compressed and inflated at its end). Only the close code is compared for errors: a bad
//! byte of text may show before bad deflate data in one order of pieces and not in the other,
//! and both are 1007; and a message that passes the limit before bad data further on may get
//! either 1009 or 1007 (zlib may read ahead while the output is full), which is checked
//! against plain zlib.
//!
//! Input layout: byte 0 picks the read sizes, byte 1 the fragment size, byte 2 the limit,
//! byte 3 the flags (bit 0: compress the rest with the server's deflater, else the rest is the
//! compressed body as is; bit 1: a text message; bit 2: another connection holds the
//! streaming inflater); the rest is the payload.

#![no_main]

use edgepush::protocol::deflate::{Deflater, InflateError, Inflater};
use edgepush::protocol::frame::{write_masked_frame, OpCode};
use edgepush::protocol::message::{drive_chunks_with, DecoderConfig, Event, Role};
use edgepush::protocol::ProtocolError;
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 8] = [0, 1, 5, 100, 1000, 4096, 65_536, 1 << 20];

/// `body` as masked frames of at most `size` payload bytes, RSV1 on the first.
fn frames(opcode: OpCode, body: &[u8], size: usize) -> Vec<u8> {
    let pieces: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(size.max(1)).collect()
    };
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let start = out.len();
        let op = if i == 0 { opcode } else { OpCode::Continuation };
        write_masked_frame(&mut out, i + 1 == pieces.len(), op, piece, [1, 2, 3, 4]);
        if i == 0 {
            out[start] |= 0x40;
        }
    }
    out
}

/// The message inflates to more than `limit` bytes before any error in its data (checked
/// with plain zlib, not the code under test).
fn passes_limit(body: &[u8], limit: usize) -> bool {
    let mut inflate = flate2::Decompress::new(false);
    let mut out = vec![0u8; limit + 1];
    let input = [body, &[0, 0, 0xff, 0xff]].concat();
    let _ = inflate.decompress(&input, &mut out, flate2::FlushDecompress::Sync);
    inflate.total_out() > limit as u64
}

fn close_code(error: InflateError) -> u16 {
    match error {
        InflateError::TooBig => ProtocolError::InflatedTooBig { limit: 0 }.close_code(),
        InflateError::BadData => ProtocolError::BadCompressedData.close_code(),
        InflateError::InvalidUtf8 => ProtocolError::InvalidUtf8.close_code(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [reads, fragment, limit, flags, payload @ ..] = data else {
        return;
    };
    let limit = LIMITS[usize::from(limit % 8)];
    let text = flags & 2 != 0;
    let body = if flags & 1 != 0 {
        let mut out = Vec::new();
        Deflater::new().write_frame(&mut out, OpCode::Binary, payload, 0, 15);
        // The frame's payload: after a 2-, 4- or 10-byte server header.
        let header = match out.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        out.get(header..).unwrap_or_default().to_vec()
    } else {
        payload.to_vec()
    };
    // The compressed size may not pass the limit either (refused from the header).
    if body.len() > limit {
        return;
    }
    let whole = Inflater::new()
        .inflate_message(&body, text, limit)
        .map(<[u8]>::to_vec)
        .map_err(close_code);

    let opcode = if text { OpCode::Text } else { OpCode::Binary };
    let wire = frames(opcode, &body, usize::from(*fragment) + 1);
    let read = usize::from(*reads % 64) + 1;
    let chunks: Vec<&[u8]> = wire.chunks(read).collect();
    let config = DecoderConfig {
        role: Role::Server,
        max_message_size: limit,
    };
    let mut inflater = Inflater::new();
    // Another connection mid-message holds the streaming inflater.
    let _other = (flags & 4 != 0).then(|| inflater.claim(false, limit));
    let mut messages = Vec::new();
    let result = drive_chunks_with(&chunks, &config, Some(&mut inflater), |event| {
        if let Event::Message { data, .. } = event {
            assert!(data.len() <= limit, "past the limit");
            assert!(!text || std::str::from_utf8(data).is_ok(), "text not UTF-8");
            messages.push(data.to_vec());
        }
    });
    match (whole, result) {
        (Ok(data), Ok(())) => assert_eq!(messages, [data], "streamed != whole"),
        (Err(code), Err(error)) if code == error.close_code() => {}
        // A message that passes the limit and is bad data further on is both: which shows
        // first depends on where zlib stops with a full output, so on the reads.
        (Err(_), Err(error)) => assert!(passes_limit(&body, limit), "{error:?}"),
        (whole, streamed) => panic!("whole {whole:?} but streamed {streamed:?}"),
    }
});
